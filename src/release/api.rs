//! The control-plane side of services: edits of the running document (add or remove a
//! version, promote, roll back, and the DSU API's multi-object replacements), the read-only
//! `status` of a service, and the history of rollbacks and promotions that `/stats`,
//! `/metrics` and the admin API show.
//!
//! Edits go through [`crate::control::Control::apply`] like every other change: the whole
//! document is validated, persisted and swapped in one snapshot.

use crate::config::Config;
use crate::control::doc::{self, Kind};
use crate::control::ApiError;
use crate::snapshot::Snapshot;
use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use toml::{Table, Value};

/// A change to one service.
#[derive(Debug, Clone)]
pub enum ServiceOp {
    /// `{"version":"1.2","cluster":"shop-1-2"}` (optionally `"id"`): a new version. A new
    /// rollout starts, so a promotion is cleared.
    AddVersion(Json),
    /// By version string or id.
    RemoveVersion(String),
    /// Every request goes to this version (by version string or id; it is live again if it
    /// was rolled back).
    Promote(String),
    /// New and sticky requests leave this version (by version string or id).
    Rollback(String),
    /// Several objects at once (the DSU API): these clusters put and removed, and the service
    /// replaced (or removed when `None`).
    Replace {
        service: Option<Value>,
        put_clusters: Vec<Value>,
        remove_clusters: Vec<String>,
    },
}

impl ServiceOp {
    pub fn describe(&self, service: &str) -> String {
        match self {
            ServiceOp::AddVersion(b) => format!(
                "add version {} to service {service}",
                b.get("version").map_or("?".into(), |v| v.to_string())
            ),
            ServiceOp::RemoveVersion(v) => format!("remove version {v} of service {service}"),
            ServiceOp::Promote(v) => format!("promote version {v} of service {service}"),
            ServiceOp::Rollback(v) => format!("roll back version {v} of service {service}"),
            ServiceOp::Replace {
                put_clusters,
                remove_clusters,
                ..
            } => format!(
                "replace service {service} (clusters put: {}, removed: {})",
                put_clusters.len(),
                remove_clusters.len()
            ),
        }
    }
}

fn bad(status: u16, code: &'static str, m: impl Into<String>) -> ApiError {
    ApiError::new(status, code, m)
}

/// The document's entry of a version: by version string first, then by id.
fn find_entry(versions: &[Value], v: &str) -> Option<usize> {
    let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
    versions
        .iter()
        .position(|e| field(e, "version").as_deref() == Some(v))
        .or_else(|| {
            versions
                .iter()
                .position(|e| field(e, "id").or_else(|| field(e, "version")).as_deref() == Some(v))
        })
}

fn service_table<'a>(d: &'a mut Table, name: &str) -> Result<&'a mut Table, ApiError> {
    doc::find_mut(d, Kind::Service, name)
        .and_then(Value::as_table_mut)
        .ok_or_else(|| bad(404, "not_found", format!("no service named {name:?}")))
}

fn versions_mut(t: &mut Table) -> Result<&mut Vec<Value>, ApiError> {
    t.entry("versions")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| {
            bad(422, "invalid", "the service's versions are not a list").field("versions")
        })
}

/// The version a promote or rollback without a version means: for a rollback the one new
/// requests go to now; for a promotion the highest version (rolled back or not).
pub fn default_version(snap: &Snapshot, service: &str, rollback: bool) -> Result<String, ApiError> {
    let Some(s) = snap.service(service) else {
        return Err(bad(
            404,
            "not_found",
            format!("no service named {service:?}"),
        ));
    };
    let i = if rollback {
        s.newest as usize
    } else {
        s.versions.len().saturating_sub(1)
    };
    s.versions
        .get(i)
        .map(|v| v.version.clone())
        .ok_or_else(|| bad(409, "no_version", "the service has no version"))
}

/// The entry of version `v` (string or id) in a service's list, or 404.
fn entry_index(list: &[Value], service: &str, v: &str) -> Result<usize, ApiError> {
    find_entry(list, v).ok_or_else(|| {
        bad(
            404,
            "not_found",
            format!("service {service:?} has no version {v:?}"),
        )
    })
}

/// A promotion naming one of `entry`'s names (version string, id) ends.
fn clear_promotion_of(service: &mut Table, entry: &Value) -> Vec<String> {
    let names: Vec<String> = ["version", "id"]
        .iter()
        .filter_map(|k| entry.get(*k).and_then(Value::as_str).map(str::to_string))
        .collect();
    if service
        .get("promoted")
        .and_then(Value::as_str)
        .is_some_and(|p| names.iter().any(|n| n == p))
    {
        service.remove("promoted");
    }
    names
}

fn live_count(versions: &[Value]) -> usize {
    versions
        .iter()
        .filter(|e| e.get("rolled_back").and_then(Value::as_bool) != Some(true))
        .count()
}

/// Applies `op` to service `name` in `d`. Returns (created, the object edited).
pub fn edit(
    d: &mut Table,
    name: &str,
    op: &ServiceOp,
) -> Result<(bool, Option<(Kind, String)>), ApiError> {
    let target = Some((Kind::Service, name.to_string()));
    match op {
        ServiceOp::AddVersion(body) => {
            let Json::Object(m) = body else {
                return Err(bad(
                    400,
                    "bad_request",
                    "a version must be a JSON object, e.g. {\"version\":\"1.2\",\"cluster\":\"shop-1-2\"}",
                ));
            };
            let mut t = Table::new();
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("version" | "cluster" | "id", Json::String(s)) => {
                        t.insert(k.clone(), Value::String(s.clone()));
                    }
                    ("version" | "cluster" | "id", _) => {
                        return Err(bad(422, "invalid", "expected a string").field(k.as_str()))
                    }
                    _ => return Err(bad(422, "invalid", "unknown key").field(k.as_str())),
                }
            }
            for k in ["version", "cluster"] {
                if !t.contains_key(k) {
                    return Err(bad(422, "invalid", "missing").field(k));
                }
            }
            let s = service_table(d, name)?;
            let list = versions_mut(s)?;
            let key = t
                .get("id")
                .or_else(|| t.get("version"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if find_entry(list, key).is_some() {
                return Err(bad(
                    409,
                    "exists",
                    format!("service {name:?} already has version {key:?}"),
                )
                .field("version"));
            }
            list.push(Value::Table(t));
            s.remove("promoted");
            Ok((true, target))
        }
        ServiceOp::RemoveVersion(v) => {
            let s = service_table(d, name)?;
            let list = versions_mut(s)?;
            let i = entry_index(list, name, v)?;
            let removed = list.remove(i);
            let live_left = live_count(list);
            if list.is_empty() || live_left == 0 {
                return Err(bad(
                    409,
                    "last_version",
                    format!("{v} is the last version of service {name:?} that takes traffic; a service needs one (delete the service instead)"),
                ));
            }
            let names = clear_promotion_of(s, &removed);
            if let Some(w) = s.get_mut("weights").and_then(Value::as_table_mut) {
                for n in &names {
                    w.remove(n);
                }
            }
            Ok((false, target))
        }
        ServiceOp::Promote(v) => {
            let s = service_table(d, name)?;
            let list = versions_mut(s)?;
            let i = entry_index(list, name, v)?;
            if let Some(e) = list[i].as_table_mut() {
                e.remove("rolled_back");
            }
            s.insert("promoted".into(), Value::String(v.clone()));
            Ok((false, target))
        }
        ServiceOp::Rollback(v) => {
            let s = service_table(d, name)?;
            let list = versions_mut(s)?;
            let i = entry_index(list, name, v)?;
            if list[i].get("rolled_back").and_then(Value::as_bool) == Some(true) {
                return Err(bad(
                    409,
                    "rolled_back",
                    format!("version {v} of service {name:?} is already rolled back"),
                ));
            }
            if live_count(list) <= 1 {
                return Err(bad(
                    409,
                    "last_version",
                    format!("{v} is the only version of service {name:?} that takes traffic; there is nothing to roll back to"),
                ));
            }
            let Some(e) = list[i].as_table_mut() else {
                return Err(bad(422, "invalid", "a version must be a table").field("versions"));
            };
            e.insert("rolled_back".into(), Value::Boolean(true));
            let entry = list[i].clone();
            clear_promotion_of(s, &entry);
            Ok((false, target))
        }
        ServiceOp::Replace {
            service,
            put_clusters,
            remove_clusters,
        } => {
            for c in remove_clusters {
                doc::remove(d, Kind::Cluster, c);
            }
            for c in put_clusters {
                let n = doc::name_of(c).unwrap_or_default().to_string();
                doc::put(d, Kind::Cluster, &n, c.clone());
            }
            let created = match service {
                Some(v) => doc::put(d, Kind::Service, name, v.clone()),
                None => {
                    doc::remove(d, Kind::Service, name);
                    false
                }
            };
            Ok((created, target))
        }
    }
}

/// Who uses an object that is about to be deleted: a listener or route using a service, a
/// service version using a cluster.
pub fn user_of(cfg: &Config, kind: Kind, name: &str) -> Option<String> {
    match kind {
        Kind::Service => cfg
            .listeners
            .iter()
            .find(|l| {
                l.service.as_deref() == Some(name)
                    || l.routes.iter().any(|r| r.service.as_deref() == Some(name))
            })
            .map(|l| format!("listener {:?}", l.name)),
        Kind::Cluster => cfg
            .services
            .iter()
            .find(|s| s.versions.iter().any(|v| v.cluster == name))
            .map(|s| format!("service {:?}", s.name)),
        Kind::Listener => None,
    }
}

/// A rollback or promotion, as logged, counted and sent to hooks.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `rollback` or `promote`.
    pub event: &'static str,
    pub service: String,
    pub version: String,
    /// The version new requests go to after the change.
    pub now_serving: String,
    /// `auto` (error rate over the threshold) or `manual` (API, ctl).
    pub reason: &'static str,
    pub at_unix_ms: u64,
    pub config_version: u64,
    /// auto: the evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct History {
    pub rollbacks: u64,
    pub auto_rollbacks: u64,
    pub promotions: u64,
    pub last_rollback: Option<Event>,
    pub last_promotion: Option<Event>,
}

/// The release history of every service since start-up, and the way to the hook runner.
#[derive(Debug, Default)]
pub struct Releases {
    history: Mutex<HashMap<String, History>>,
    hooks: Mutex<Option<Sender<Event>>>,
}

impl Releases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where rollback events go to have their hooks run (set by the controller).
    pub fn set_hooks(&self, tx: Sender<Event>) {
        *self.hooks.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Records an applied rollback or promotion: counted, logged, and (rollbacks) handed to
    /// the hook runner.
    pub fn record(&self, e: Event) {
        if e.event == "rollback" {
            log::warn!(
                "release: service {} version {} rolled back ({}{}); requests now go to {} (config version {})",
                e.service,
                e.version,
                e.reason,
                match (e.error_rate, e.requests) {
                    (Some(r), Some(n)) => format!(
                        ": {:.1}% of {n} requests failed in {:.0} s, above {:.1}%",
                        r * 100.0,
                        e.window_s.unwrap_or(0.0),
                        e.max_error_rate.unwrap_or(0.0) * 100.0
                    ),
                    _ => String::new(),
                },
                e.now_serving,
                e.config_version
            );
        } else {
            log::info!(
                "release: service {} version {} promoted ({}): every request goes there (config version {})",
                e.service,
                e.version,
                e.reason,
                e.config_version
            );
        }
        {
            let mut h = self.lock();
            let rec = h.entry(e.service.clone()).or_default();
            if e.event == "rollback" {
                rec.rollbacks += 1;
                if e.reason == "auto" {
                    rec.auto_rollbacks += 1;
                }
                rec.last_rollback = Some(e.clone());
            } else {
                rec.promotions += 1;
                rec.last_promotion = Some(e.clone());
            }
        }
        if e.event == "rollback" {
            if let Some(tx) = self
                .hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                let _ = tx.send(e);
            }
        }
    }

    pub fn history(&self, service: &str) -> History {
        self.lock().get(service).cloned().unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    crate::snapshot::unix_ms()
}

/// The read-only `status` of a service: where requests go now and each version's state.
pub fn status_json(snap: &Snapshot, releases: &Releases, name: &str) -> Json {
    let Some(s) = snap.service(name) else {
        return Json::Null;
    };
    let versions: Vec<Json> = s
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let state = s.state_of(i);
            let mut o = json!({
                "version": v.version,
                "id": String::from_utf8_lossy(&v.id),
                "cluster": v.cluster_name,
                "state": state,
            });
            if s.strategy == crate::config::services::Strategy::Canary {
                o["weight"] = json!(v.weight);
            }
            o
        })
        .collect();
    let h = releases.history(name);
    let mut o = json!({
        "strategy": s.strategy.as_str(),
        "serving": s.versions[s.newest as usize].version,
        "previous": s.previous.map(|p| s.versions[p as usize].version.clone()),
        "versions": versions,
        "rollbacks": h.rollbacks,
        "auto_rollbacks": h.auto_rollbacks,
        "promotions": h.promotions,
        "last_rollback": h.last_rollback,
    });
    if s.strategy == crate::config::services::Strategy::Gradual {
        o["share"] = json!((s.share(Instant::now()) * 100.0).round() / 100.0);
    }
    o
}

/// `/v1/services/{name}/...`: `versions` (POST), `versions/{version}` (DELETE), `promote`
/// and `rollback` (POST, body `{"version":"1.1"}` or none for the default version).
pub fn route(
    shared: &crate::admin::Shared,
    req: &crate::admin::Request,
    name: &str,
    rest: &[&str],
) -> Result<crate::admin::Response, ApiError> {
    use crate::admin::api::{authorize, body_json, decode, if_match, method_not_allowed, ok};
    use crate::control::Change;
    let c = &shared.control;
    let m = req.method.as_str();
    // Every change here: the service edit, authorized, with the client's If-Match.
    let apply = |op: ServiceOp| -> Result<crate::control::Applied, ApiError> {
        let who = authorize(shared, req)?;
        c.apply(
            Change::Service {
                name: name.to_string(),
                op,
            },
            if_match(req).as_ref(),
            &who,
        )
    };
    let reply = |version: u64| -> Result<crate::admin::Response, ApiError> {
        let (_, j) = c.get(Kind::Service, name)?;
        Ok(ok(200, &j, version))
    };
    match rest {
        ["versions"] => match m {
            "POST" => {
                authorize(shared, req)?; // before reading the body: 401 beats 400
                let body = body_json(req)?;
                let op = ServiceOp::AddVersion(body);
                apply(op)?;
                let (v, j) = c.get(Kind::Service, name)?;
                Ok(ok(201, &j, v))
            }
            _ => Ok(method_not_allowed("POST")),
        },
        ["versions", version] => match m {
            "DELETE" => {
                authorize(shared, req)?; // before reading the body: 401 beats 400
                let op = ServiceOp::RemoveVersion(decode(version)?);
                let a = apply(op)?;
                reply(a.version)
            }
            _ => Ok(method_not_allowed("DELETE")),
        },
        [verb @ ("promote" | "rollback")] => {
            if m != "POST" {
                return Ok(method_not_allowed("POST"));
            }
            authorize(shared, req)?; // before reading the body: 401 beats 400
            let rollback = *verb == "rollback";
            let version = match req.body.is_empty() {
                true => None,
                false => match body_json(req)? {
                    Json::Object(o) => {
                        if let Some(k) = o.keys().find(|k| k.as_str() != "version") {
                            return Err(bad(422, "invalid", "unknown key").field(k.as_str()));
                        }
                        match o.get("version") {
                            None => None,
                            Some(Json::String(v)) => Some(v.clone()),
                            Some(_) => {
                                return Err(
                                    bad(422, "invalid", "expected a string").field("version")
                                )
                            }
                        }
                    }
                    _ => {
                        return Err(bad(
                            400,
                            "bad_request",
                            "expected {\"version\":\"1.1\"} or no body",
                        ))
                    }
                },
            };
            let version = match version {
                Some(v) => v,
                None => default_version(&c.snapshot(), name, rollback)?,
            };
            let op = if rollback {
                ServiceOp::Rollback(version.clone())
            } else {
                ServiceOp::Promote(version.clone())
            };
            let a = apply(op)?;
            let snap = c.snapshot();
            c.releases().record(Event {
                event: if rollback { "rollback" } else { "promote" },
                service: name.to_string(),
                version,
                now_serving: serving(&snap, name),
                reason: "manual",
                at_unix_ms: unix_ms(),
                config_version: a.version,
                requests: None,
                errors: None,
                error_rate: None,
                max_error_rate: None,
                window_s: None,
            });
            reply(a.version)
        }
        _ => Err(bad(
            404,
            "not_found",
            format!(
                "no such endpoint: {}",
                req.path.split('?').next().unwrap_or("")
            ),
        )),
    }
}

/// The version new requests of a service go to.
pub fn serving(snap: &Snapshot, name: &str) -> String {
    snap.service(name)
        .map(|s| s.versions[s.newest as usize].version.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Table {
        r#"
[[clusters]]
name = "a"
backends = ["127.0.0.1:1"]
[[clusters]]
name = "b"
backends = ["127.0.0.1:2"]
[[services]]
name = "shop"
strategy = "canary"
versions = [{ version = "1.0", cluster = "a" }, { version = "1.1", cluster = "b", id = "x" }]
weights = { "1.0" = 9, "x" = 1 }
promoted = "x"
"#
        .parse()
        .unwrap()
    }

    fn versions(d: &Table) -> Vec<Value> {
        doc::find(d, Kind::Service, "shop").unwrap()["versions"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn rollback_promote_add_remove() {
        let mut d = doc();
        edit(&mut d, "shop", &ServiceOp::Rollback("1.1".into())).unwrap();
        assert_eq!(versions(&d)[1]["rolled_back"].as_bool(), Some(true));
        let s = doc::find(&d, Kind::Service, "shop").unwrap();
        assert!(
            s.get("promoted").is_none(),
            "rolling back the promoted one clears it"
        );
        let e = edit(&mut d, "shop", &ServiceOp::Rollback("x".into())).unwrap_err();
        assert_eq!((e.status, e.code), (409, "rolled_back"));
        let e = edit(&mut d, "shop", &ServiceOp::Rollback("1.0".into())).unwrap_err();
        assert_eq!((e.status, e.code), (409, "last_version"));
        edit(&mut d, "shop", &ServiceOp::Promote("x".into())).unwrap();
        assert!(
            versions(&d)[1].get("rolled_back").is_none(),
            "promoting makes it live again"
        );
        assert_eq!(
            doc::find(&d, Kind::Service, "shop").unwrap()["promoted"].as_str(),
            Some("x")
        );
        let e = edit(
            &mut d,
            "shop",
            &ServiceOp::AddVersion(json!({"version":"1.1","cluster":"a"})),
        )
        .unwrap_err();
        assert_eq!(e.status, 409, "1.1 exists (by version string)");
        let e = edit(
            &mut d,
            "shop",
            &ServiceOp::AddVersion(json!({"version":"2","cluster":"a","x":1})),
        )
        .unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("x")));
        let e = edit(
            &mut d,
            "shop",
            &ServiceOp::AddVersion(json!({"cluster":"a"})),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("version"));
        let e = edit(&mut d, "shop", &ServiceOp::AddVersion(json!(["x"]))).unwrap_err();
        assert_eq!(e.status, 400);
        let (created, _) = edit(
            &mut d,
            "shop",
            &ServiceOp::AddVersion(json!({"version":"2.0","cluster":"b"})),
        )
        .unwrap();
        assert!(created);
        assert!(
            doc::find(&d, Kind::Service, "shop")
                .unwrap()
                .get("promoted")
                .is_none(),
            "a new rollout"
        );
        edit(&mut d, "shop", &ServiceOp::RemoveVersion("x".into())).unwrap();
        let s = doc::find(&d, Kind::Service, "shop").unwrap();
        assert!(s["weights"].get("x").is_none(), "its weight goes too");
        assert_eq!(versions(&d).len(), 2);
        let e = edit(&mut d, "shop", &ServiceOp::RemoveVersion("9".into())).unwrap_err();
        assert_eq!(e.status, 404);
        let e = edit(&mut d, "nope", &ServiceOp::Promote("1".into())).unwrap_err();
        assert_eq!(e.status, 404);
        edit(&mut d, "shop", &ServiceOp::RemoveVersion("2.0".into())).unwrap();
        let e = edit(&mut d, "shop", &ServiceOp::RemoveVersion("1.0".into())).unwrap_err();
        assert_eq!((e.status, e.code), (409, "last_version"));
    }
}
