//! Compatibility with the dynamic-software-update proxy (compat.md §2): its quick mode
//! `switchyard -configFile config.json [-logLevel LEVEL]` and its REST API on
//! `configService.port`.
//!
//! The config file's `proxy.port` becomes an http listener `proxy`, its `cluster` the first
//! version of a service `dsu`, and every cluster added through the API another version (a
//! cluster `dsu-<uuid>`, the uuid being the version cookie's value, as the original's
//! `dynsoftup` cookie carried the cluster uuid). The newest live cluster's
//! `upgradeTransition` decides the strategy, as in the original.
//!
//! REST API (paths, status codes and bodies as the original):
//! - `PUT /configuration/cluster` `{"cluster":{...}}` → 202, plain-text body: the new uuid;
//! - `GET /configuration/cluster/{uuid}` → 200 `{"cluster":{...}}` or 404;
//! - `GET /configuration/cluster[/]` → 200, every cluster, newest first;
//! - `DELETE /configuration/cluster/{uuid}` → 202 or 404;
//! - bad input → 400 with the reason as plain text.
//!
//! Better than the original: routing per request (not per connection), numeric version
//! order, `Set-Cookie` as proper header lines, automatic rollback of a failing newest version
//! (the original deleted a cluster on its first dial error), an initial cluster may have an
//! `upgradeTransition`, the last cluster cannot be deleted, and `/stats`, `/metrics` and the
//! `/v1` API (read-only unless the port is loopback) are served on the same port.

use super::api::ServiceOp;
use crate::admin::{Request, Response, Shared};
use crate::config::ConfigError;
use crate::control::{ApiError, Change};
use serde_json::{json, Map, Value as Json};
use std::collections::HashSet;
use std::sync::Mutex;
use toml::{Table, Value};

/// The service that holds the clusters, and the listener in front of it.
pub const SERVICE: &str = "dsu";
pub const LISTENER: &str = "proxy";

/// Auto-rollback of the DSU service (the original's "delete the cluster on a dial error",
/// done right): more than half of the newest cluster's requests failing over 30 s, at least
/// 20 requests.
const ROLLBACK: (f64, &str, i64) = (0.5, "30s", 20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Instant,
    Session,
    Gradual,
    Concurrent,
}

impl Mode {
    fn code(self) -> &'static str {
        match self {
            Mode::Instant => "INSTANT",
            Mode::Session => "SESSION",
            Mode::Gradual => "GRADUAL",
            Mode::Concurrent => "CONCURRENT",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub uuid: String,
    /// The version as text (`1.1` for the JSON number 1.1).
    pub version: String,
    /// (hostname, port) as given.
    pub servers: Vec<(String, u16)>,
    pub mode: Mode,
    pub session_timeout: Option<u64>,
    pub percentage: Option<f64>,
    /// Order of arrival: among equal versions the later one is newer.
    seq: u64,
}

impl Cluster {
    fn name(&self) -> String {
        format!("dsu-{}", self.uuid)
    }

    fn addrs(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|(h, p)| {
                if h.contains(':') && !h.starts_with('[') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect()
    }

    /// The original's JSON for this cluster.
    fn to_json(&self, state: &str) -> Json {
        let servers: Vec<Json> = self
            .servers
            .iter()
            .map(|(h, p)| json!({"hostname": h, "port": p}))
            .collect();
        let mut t = Map::new();
        t.insert("mode".into(), json!(self.mode.code()));
        if let Some(s) = self.session_timeout {
            t.insert("sessionTimeout".into(), json!(s));
        }
        if let Some(p) = self.percentage {
            t.insert("percentageTransitionPerRequest".into(), json!(p));
        }
        json!({"cluster": {
            "servers": servers,
            "upgradeTransition": Json::Object(t),
            "uuid": self.uuid,
            "version": self.version,
            "state": state,
        }})
    }
}

const INVALID: &str = "Invalid cluster configuration - ";

/// Why a cluster payload is refused: 400 with the message, or 501 (not supported yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// A lowercase uuid `8-4-4-4-12`.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A new random (version 4) uuid.
pub fn new_uuid() -> String {
    let a = super::entropy();
    let id = super::cookie::client_id(a ^ super::entropy().rotate_left(17));
    String::from_utf8_lossy(&id).into_owned()
}

/// Parses one `cluster` object (config file or PUT body), with the original's rules and
/// messages. `newest` is the cluster now deciding (for CONCURRENT's address check).
pub fn parse_cluster(
    v: &Json,
    newest: Option<&Cluster>,
    taken: &dyn Fn(&str) -> bool,
) -> Result<Cluster, Refusal> {
    let Json::Object(c) = v else {
        return Err(refuse(format!("{INVALID}\"cluster\" must be an object")));
    };
    let uuid = match c.get("uuid") {
        None | Some(Json::Null) => new_uuid(),
        Some(Json::String(u)) if is_uuid(u) => {
            let u = u.to_ascii_lowercase();
            if taken(&u) {
                return Err(refuse(format!("{INVALID}a cluster with uuid {u} already exists")));
            }
            u
        }
        Some(other) => {
            return Err(refuse(format!(
                "{INVALID}\"uuid\" must be a uuid such as \"1dcbb083-257f-11e4-bcbc-600308a8245e\", found {other}"
            )))
        }
    };
    let version = match c.get("version") {
        None | Some(Json::Null) => "0.0".to_string(),
        Some(Json::Number(n)) => n.to_string(),
        Some(Json::String(s)) if super::version::is_valid(s) => s.clone(),
        Some(other) => {
            return Err(refuse(format!(
                "{INVALID}\"version\" must be a number or a string such as \"1.1\", found {other}"
            )))
        }
    };
    let (mode, session_timeout, percentage) = match c.get("upgradeTransition") {
        None | Some(Json::Null) => (Mode::Instant, None, None),
        Some(Json::Object(t)) => {
            let mode = match t.get("mode") {
                None | Some(Json::Null) => Mode::Session,
                Some(Json::String(m)) => match m.to_ascii_uppercase().as_str() {
                    "INSTANT" => Mode::Instant,
                    "SESSION" => Mode::Session,
                    "GRADUAL" => Mode::Gradual,
                    "CONCURRENT" => Mode::Concurrent,
                    _ => return Err(bad_mode()),
                },
                Some(_) => return Err(bad_mode()),
            };
            let timeout = t.get("sessionTimeout").filter(|v| !v.is_null());
            let session_timeout = match (mode, timeout) {
                (Mode::Session, None) => {
                    return Err(refuse(format!(
                        "{INVALID}\"sessionTimeout\" must be specified in \"upgradeTransition\" for mode \"SESSION\""
                    )))
                }
                (Mode::Session, Some(s)) => match s.as_f64() {
                    Some(x) if (1.0..=30.0 * 86400.0).contains(&x) => Some(x as u64),
                    _ => {
                        return Err(refuse(format!(
                            "{INVALID}\"sessionTimeout\" must be a number of seconds from 1 to 2592000, found {s}"
                        )))
                    }
                },
                (_, Some(_)) => {
                    return Err(refuse(format!(
                        "{INVALID}\"sessionTimeout\" should not be specified when \"mode\" is not \"SESSION\""
                    )))
                }
                (_, None) => None,
            };
            let pct = t
                .get("percentageTransitionPerRequest")
                .filter(|v| !v.is_null());
            let percentage = match (mode, pct) {
                (Mode::Gradual, None) => {
                    return Err(refuse(format!(
                        "{INVALID}\"percentageTransitionPerRequest\" must be specified in \"upgradeTransition\" for mode \"GRADUAL\""
                    )))
                }
                (Mode::Gradual, Some(p)) => match p.as_f64() {
                    Some(x) if x > 0.0 && x <= 100.0 => Some(x),
                    _ => {
                        return Err(refuse(format!(
                            "{INVALID}\"percentageTransitionPerRequest\" must be a number above 0 and at most 100, found {p}"
                        )))
                    }
                },
                (_, Some(_)) => {
                    return Err(refuse(format!(
                        "{INVALID}\"percentageTransitionPerRequest\" should not be specified when \"mode\" is not \"GRADUAL\""
                    )))
                }
                (_, None) => None,
            };
            (mode, session_timeout, percentage)
        }
        Some(other) => {
            return Err(refuse(format!(
                "{INVALID}\"upgradeTransition\" must be an object, found {other}"
            )))
        }
    };
    let servers = match (c.get("servers"), c.get("containers")) {
        (Some(Json::Array(list)), _) if list.is_empty() => {
            return Err(refuse(format!(
                "{INVALID}\"servers\" list must contain at least one entry"
            )))
        }
        (Some(Json::Array(list)), _) => {
            let mut out = Vec::with_capacity(list.len());
            for s in list {
                out.push(server(s)?);
            }
            out
        }
        (Some(_), _) => {
            return Err(refuse(format!(
                "{INVALID}\"servers\" list must contain at least one entry"
            )))
        }
        (None, Some(_)) => {
            return Err(Refusal {
                status: 501,
                message: format!(
                    "{INVALID}\"containers\" are not supported by switchyard yet (there is no \
                     docker discovery to start them); list the running \"servers\" instead"
                ),
            })
        }
        (None, None) => {
            return Err(refuse(format!(
                "{INVALID}\"cluster\" must contain \"servers\" or \"containers\" list"
            )))
        }
    };
    let cluster = Cluster {
        uuid,
        version,
        servers,
        mode,
        session_timeout,
        percentage,
        seq: 0,
    };
    if let (Mode::Concurrent, Some(n)) = (mode, newest) {
        let existing: HashSet<String> = n.addrs().into_iter().collect();
        if let Some(a) = cluster.addrs().into_iter().find(|a| existing.contains(a)) {
            return Err(refuse(format!(
                "{INVALID}new cluster has a conflicting address [{a}] with existing highest version cluster [{}] (this is not allowed in \"CONCURRENT\" mode)",
                n.uuid
            )));
        }
    }
    Ok(cluster)
}

fn bad_mode() -> Refusal {
    refuse(format!(
        "{INVALID}\"upgradeTransition.mode\" should be \"INSTANT\", \"SESSION\", \"GRADUAL\" or \"CONCURRENT\""
    ))
}

/// `{"hostname": h, "port": p}` (the earliest original said `ip`).
fn server(s: &Json) -> Result<(String, u16), Refusal> {
    let host = s
        .get("hostname")
        .or_else(|| s.get("ip"))
        .and_then(Json::as_str)
        .unwrap_or("");
    let port = s.get("port");
    let shown = format!(
        "{}:{}",
        host,
        port.map_or("<missing>".to_string(), |p| p.to_string())
    );
    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == b'/' || b == b'"') {
        return Err(refuse(format!(
            "Invalid server address [{shown}] - expected {{\"hostname\": \"10.0.0.7\", \"port\": 8080}}"
        )));
    }
    match port.and_then(Json::as_u64) {
        Some(p) if (1..=65535).contains(&p) => Ok((host.to_string(), p as u16)),
        _ => Err(refuse(format!(
            "Invalid server address [{shown}] - the port must be a number from 1 to 65535"
        ))),
    }
}

/// Versions oldest to newest (numeric order; among equal versions, order of arrival).
fn ordered(list: &[Cluster]) -> Vec<&Cluster> {
    let mut v: Vec<&Cluster> = list.iter().collect();
    v.sort_by(|a, b| super::version::compare(&a.version, &b.version).then(a.seq.cmp(&b.seq)));
    v
}

/// The `[[services]]` table for these clusters: the newest live one decides the strategy.
fn service_value(list: &[Cluster], rolled_back: &HashSet<String>) -> Value {
    let order = ordered(list);
    let decider = order
        .iter()
        .rev()
        .find(|c| !rolled_back.contains(&c.uuid))
        .or(order.last())
        .copied();
    let mut t = Table::new();
    t.insert("name".into(), Value::String(SERVICE.into()));
    let versions: Vec<Value> = order
        .iter()
        .map(|c| {
            let mut v = Table::new();
            v.insert("version".into(), Value::String(c.version.clone()));
            v.insert("cluster".into(), Value::String(c.name()));
            v.insert("id".into(), Value::String(c.uuid.clone()));
            if rolled_back.contains(&c.uuid) {
                v.insert("rolled_back".into(), Value::Boolean(true));
            }
            Value::Table(v)
        })
        .collect();
    t.insert("versions".into(), Value::Array(versions));
    if let Some(d) = decider {
        let strategy = match d.mode {
            Mode::Instant => "instant",
            Mode::Session => "session",
            Mode::Gradual => "gradual",
            Mode::Concurrent => "concurrent",
        };
        t.insert("strategy".into(), Value::String(strategy.into()));
        if let Some(s) = d.session_timeout {
            t.insert("session_timeout".into(), Value::String(format!("{s}s")));
        }
        if let Some(p) = d.percentage {
            t.insert("percentage_per_request".into(), Value::Float(p));
        }
    }
    let mut rb = Table::new();
    rb.insert("max_error_rate".into(), Value::Float(ROLLBACK.0));
    rb.insert("window".into(), Value::String(ROLLBACK.1.into()));
    rb.insert("min_requests".into(), Value::Integer(ROLLBACK.2));
    t.insert("rollback".into(), Value::Table(rb));
    Value::Table(t)
}

fn cluster_value(c: &Cluster) -> Value {
    let mut t = Table::new();
    t.insert("name".into(), Value::String(c.name()));
    t.insert(
        "backends".into(),
        Value::Array(c.addrs().into_iter().map(Value::String).collect()),
    );
    Value::Table(t)
}

/// The DSU API's state: the clusters as the original described them.
#[derive(Debug, Default)]
pub struct Dsu {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    clusters: Vec<Cluster>,
    next_seq: u64,
}

fn plain(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

fn not_found() -> Response {
    plain(404, "404 page not found\n")
}

impl Dsu {
    fn with_first(first: Cluster) -> Dsu {
        Dsu {
            state: Mutex::new(State {
                clusters: vec![Cluster { seq: 0, ..first }],
                next_seq: 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The DSU REST API's answer, or `None` when the path is not one of its paths.
    pub fn handle(&self, shared: &Shared, req: &Request) -> Option<Response> {
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        let rest = path.strip_prefix("/configuration/cluster")?;
        let id = match rest {
            "" | "/" => None,
            r => Some(r.strip_prefix('/')?.trim_end_matches('/')),
        };
        let r = match (req.method.as_str(), id) {
            ("PUT", None) => self.put(shared, req),
            ("GET", None) => self.list(shared),
            ("GET", Some(id)) => self.get(shared, id),
            ("DELETE", Some(id)) => self.delete(shared, req, id),
            (_, None) => {
                plain(405, "method not allowed: PUT or GET\n").with("Allow", "GET, PUT".into())
            }
            (_, Some(_)) => plain(405, "method not allowed: GET or DELETE\n")
                .with("Allow", "GET, DELETE".into()),
        };
        Some(r)
    }

    fn rolled_back(shared: &Shared) -> HashSet<String> {
        let snap = shared.control.snapshot();
        snap.service(SERVICE)
            .map(|s| {
                s.versions
                    .iter()
                    .filter(|v| v.rolled_back)
                    .map(|v| String::from_utf8_lossy(&v.id).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn put(&self, shared: &Shared, req: &Request) -> Response {
        let body: Json = match serde_json::from_slice(&req.body) {
            Ok(j) => j,
            Err(e) => {
                return plain(
                    400,
                    &format!(
                        "Error {e} while decoding json {}\n",
                        String::from_utf8_lossy(&req.body)
                    ),
                )
            }
        };
        let Some(c) = body.get("cluster").filter(|c| !c.is_null()) else {
            return plain(400, &format!("{INVALID}\"cluster\" config missing\n"));
        };
        let mut st = self.lock();
        let rolled_back = Self::rolled_back(shared);
        let newest = ordered(&st.clusters)
            .into_iter()
            .rev()
            .find(|c| !rolled_back.contains(&c.uuid))
            .cloned();
        let taken = |u: &str| st.clusters.iter().any(|c| c.uuid == u);
        let mut cluster = match parse_cluster(c, newest.as_ref(), &taken) {
            Ok(c) => c,
            Err(r) => {
                return plain(
                    r.status,
                    &format!("Error parsing cluster configuration - {}\n", r.message),
                )
            }
        };
        cluster.seq = st.next_seq;
        let mut next = st.clusters.clone();
        next.push(cluster.clone());
        let op = ServiceOp::Replace {
            service: Some(service_value(&next, &rolled_back)),
            put_clusters: vec![cluster_value(&cluster)],
            remove_clusters: Vec::new(),
        };
        match apply(shared, req, op) {
            Ok(()) => {
                st.clusters = next;
                st.next_seq += 1;
                log::info!(
                    "dsu: cluster {} (version {}, {}) added",
                    cluster.uuid,
                    cluster.version,
                    cluster.mode.code()
                );
                plain(202, &cluster.uuid)
            }
            Err(e) => plain(
                if e.status >= 500 { 500 } else { 400 },
                &format!("Error parsing cluster configuration - {}\n", e.message),
            ),
        }
    }

    fn list(&self, shared: &Shared) -> Response {
        let st = self.lock();
        let rolled_back = Self::rolled_back(shared);
        let all: Vec<Json> = ordered(&st.clusters)
            .into_iter()
            .rev()
            .map(|c| c.to_json(state(&rolled_back, c)))
            .collect();
        json_response(&Json::Array(all))
    }

    fn get(&self, shared: &Shared, id: &str) -> Response {
        let st = self.lock();
        let id = id.to_ascii_lowercase();
        match st.clusters.iter().find(|c| c.uuid == id) {
            Some(c) => json_response(&c.to_json(state(&Self::rolled_back(shared), c))),
            None => not_found(),
        }
    }

    fn delete(&self, shared: &Shared, req: &Request, id: &str) -> Response {
        let mut st = self.lock();
        let id = id.to_ascii_lowercase();
        let Some(i) = st.clusters.iter().position(|c| c.uuid == id) else {
            return not_found();
        };
        if st.clusters.len() == 1 {
            return plain(
                409,
                "the last cluster cannot be deleted: the proxy would have nowhere to send requests (add another first)\n",
            );
        }
        let rolled_back = Self::rolled_back(shared);
        let mut next = st.clusters.clone();
        let gone = next.remove(i);
        if next.iter().all(|c| rolled_back.contains(&c.uuid)) {
            return plain(
                409,
                "every other cluster is rolled back: deleting this one would leave nowhere to send requests\n",
            );
        }
        let op = ServiceOp::Replace {
            service: Some(service_value(&next, &rolled_back)),
            put_clusters: Vec::new(),
            remove_clusters: vec![gone.name()],
        };
        match apply(shared, req, op) {
            Ok(()) => {
                st.clusters = next;
                log::info!("dsu: cluster {} deleted", gone.uuid);
                plain(202, "")
            }
            Err(e) => plain(
                if e.status >= 500 { 500 } else { 400 },
                &format!("{}\n", e.message),
            ),
        }
    }
}

fn state(rolled_back: &HashSet<String>, c: &Cluster) -> &'static str {
    if rolled_back.contains(&c.uuid) {
        "rolled_back"
    } else {
        "live"
    }
}

fn json_response(v: &Json) -> Response {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Response {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        body,
    }
}

fn apply(shared: &Shared, req: &Request, op: ServiceOp) -> Result<(), ApiError> {
    let who = format!("{} (dsu api)", req.peer);
    shared
        .control
        .apply(
            Change::Service {
                name: SERVICE.into(),
                op,
            },
            None,
            &who,
        )
        .map(|_| ())
}

impl crate::admin::Extension for Dsu {
    fn handle(&self, shared: &Shared, req: &Request) -> Option<Response> {
        Dsu::handle(self, shared, req)
    }
}

/// What the quick mode runs: the document and the DSU API's state.
#[derive(Debug)]
pub struct Quick {
    pub doc: Table,
    pub api: Dsu,
    /// The config file asked for something we accept but do not act on (logged at start).
    pub warnings: Vec<String>,
}

fn port_of(v: Option<&Json>, origin: &str, key: &str, errs: &mut Vec<ConfigError>) -> u16 {
    match v.and_then(|o| o.get("port")) {
        Some(p) => match p.as_u64() {
            Some(n) if n <= 65535 => n as u16,
            _ => {
                errs.push(ConfigError {
                    path: format!("{origin}: {key}.port"),
                    message: format!("expected a port number (0-65535), found {p}"),
                });
                0
            }
        },
        None => {
            errs.push(ConfigError {
                path: format!("{origin}: {key}.port"),
                message: match v {
                    None => format!("missing (\"{key}\": {{\"port\": 9090}})"),
                    Some(_) => "missing".into(),
                },
            });
            0
        }
    }
}

/// `ip` or `hostname` of a `proxy` / `configService` object (all interfaces by default, as
/// the original's `:port`).
fn host_of(v: Option<&Json>) -> String {
    v.and_then(|o| o.get("ip").or_else(|| o.get("hostname")))
        .and_then(Json::as_str)
        .map(|h| match h {
            "localhost" => "127.0.0.1".to_string(),
            h => h.to_string(),
        })
        .unwrap_or_else(|| "0.0.0.0".into())
}

/// Reads the original's `config.json` (`level`: from `-logLevel`). Errors are
/// `error: <file>: <key>: <message>` lines.
pub fn quick(
    text: &str,
    origin: &str,
    level: Option<log::LevelFilter>,
) -> Result<Quick, Vec<ConfigError>> {
    let err = |path: &str, message: String| ConfigError {
        path: format!("{origin}: {path}")
            .trim_end_matches(": ")
            .to_string(),
        message,
    };
    let j: Json =
        serde_json::from_str(text).map_err(|e| vec![err("", format!("invalid JSON: {e}"))])?;
    let Json::Object(top) = &j else {
        return Err(vec![err("", "expected a JSON object".into())]);
    };
    let mut errs = Vec::new();
    let mut warnings = Vec::new();
    for k in top.keys() {
        if !matches!(
            k.as_str(),
            "proxy" | "configService" | "cluster" | "dockerHost" | "logLevel"
        ) {
            errs.push(err(k, "unknown key".into()));
        }
    }
    let proxy = top.get("proxy");
    let service = top.get("configService");
    let proxy_port = port_of(proxy, origin, "proxy", &mut errs);
    let api_port = port_of(service, origin, "configService", &mut errs);
    if top.contains_key("dockerHost") {
        warnings.push(
            "config: \"dockerHost\" is ignored: docker is not supported by switchyard yet \
             (clusters need \"servers\")"
                .to_string(),
        );
    }
    let first = match top.get("cluster") {
        None => {
            errs.push(err("cluster", "missing (\"cluster\": {\"servers\": [{\"hostname\": \"127.0.0.1\", \"port\": 1034}], \"version\": \"1.0\"})".into()));
            None
        }
        Some(c) => match parse_cluster(c, None, &|_| false) {
            Ok(c) => Some(c),
            Err(r) => {
                let m = r.message.strip_prefix(INVALID).unwrap_or(&r.message);
                errs.push(err("cluster", m.to_string()));
                None
            }
        },
    };
    let (Some(first), true) = (first, errs.is_empty()) else {
        return Err(errs);
    };
    let api_host = host_of(service);
    let admin = format!("{api_host}:{api_port}");
    let public = crate::config::parse_bind(&admin).is_ok_and(|a| !a.ip().is_loopback());
    if public {
        warnings.push(format!(
            "the DSU REST API on {admin} takes changes without authentication, as the original \
             did (the /v1 API there is read-only); set \"configService\": {{\"ip\": \"127.0.0.1\"}} \
             to keep it local"
        ));
    }
    let mut server = Table::new();
    server.insert("admin".into(), Value::String(admin));
    server.insert("admin_read_only".into(), Value::Boolean(public));
    if let Some(l) = level {
        server.insert(
            "log_level".into(),
            Value::String(l.as_str().to_ascii_lowercase()),
        );
    }
    let mut listener = Table::new();
    listener.insert("name".into(), Value::String(LISTENER.into()));
    listener.insert(
        "bind".into(),
        Value::String(format!("{}:{proxy_port}", host_of(proxy))),
    );
    listener.insert("protocol".into(), Value::String("http".into()));
    listener.insert("service".into(), Value::String(SERVICE.into()));
    let mut doc = Table::new();
    doc.insert("server".into(), Value::Table(server));
    doc.insert(
        "listeners".into(),
        Value::Array(vec![Value::Table(listener)]),
    );
    doc.insert("clusters".into(), Value::Array(vec![cluster_value(&first)]));
    doc.insert(
        "services".into(),
        Value::Array(vec![service_value(
            std::slice::from_ref(&first),
            &HashSet::new(),
        )]),
    );
    // Everything else (addresses, names) is checked as any config is.
    crate::config::parse_table(doc.clone()).map_err(|e| {
        e.into_iter()
            .map(|e| ConfigError {
                path: format!("{origin}: {}", e.path),
                message: e.message,
            })
            .collect::<Vec<_>>()
    })?;
    Ok(Quick {
        doc,
        api: Dsu::with_first(first),
        warnings,
    })
}

/// The original's `-logLevel` values as `log` levels.
pub fn log_level(s: &str) -> Option<log::LevelFilter> {
    use log::LevelFilter::*;
    Some(match s.to_ascii_uppercase().as_str() {
        "CRITICAL" | "ERROR" => Error,
        "WARNING" | "WARN" => Warn,
        "NOTICE" | "INFO" => Info,
        "DEBUG" => Debug,
        "TRACE" => Trace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Json) -> Result<Cluster, Refusal> {
        parse_cluster(&v, None, &|_| false)
    }

    #[test]
    fn defaults_and_every_refusal() {
        let c =
            parse(json!({"servers":[{"hostname":"127.0.0.1","port":1034}],"version":1.1})).unwrap();
        assert_eq!((c.mode, c.version.as_str()), (Mode::Instant, "1.1"));
        assert!(is_uuid(&c.uuid), "{}", c.uuid);
        let c = parse(
            json!({"servers":[{"ip":"::1","port":1}],"upgradeTransition":{"sessionTimeout":60}}),
        )
        .unwrap();
        assert_eq!(
            (c.mode, c.session_timeout, c.version.as_str()),
            (Mode::Session, Some(60), "0.0")
        );
        assert_eq!(c.addrs(), ["[::1]:1"]);
        let c = parse(json!({"servers":[{"hostname":"h","port":1}],"uuid":"1DCBB083-257F-11E4-BCBC-600308A8245E","upgradeTransition":{"mode":"gradual","percentageTransitionPerRequest":0.5}})).unwrap();
        assert_eq!((c.mode, c.percentage), (Mode::Gradual, Some(0.5)));
        assert_eq!(c.uuid, "1dcbb083-257f-11e4-bcbc-600308a8245e");
        let servers = json!([{"hostname":"127.0.0.1","port":1}]);
        for (body, want) in [
            (json!({"servers":servers,"upgradeTransition":{"mode":"SESSION"}}), "\"sessionTimeout\" must be specified in \"upgradeTransition\" for mode \"SESSION\""),
            (json!({"servers":servers,"upgradeTransition":{"mode":"GRADUAL"}}), "\"percentageTransitionPerRequest\" must be specified in \"upgradeTransition\" for mode \"GRADUAL\""),
            (json!({"servers":servers,"upgradeTransition":{"mode":"INSTANT","sessionTimeout":5}}), "\"sessionTimeout\" should not be specified when \"mode\" is not \"SESSION\""),
            (json!({"servers":servers,"upgradeTransition":{"mode":"SESSION","sessionTimeout":5,"percentageTransitionPerRequest":1}}), "\"percentageTransitionPerRequest\" should not be specified when \"mode\" is not \"GRADUAL\""),
            (json!({"servers":servers,"upgradeTransition":{"mode":"BLUE"}}), "\"upgradeTransition.mode\" should be \"INSTANT\", \"SESSION\", \"GRADUAL\" or \"CONCURRENT\""),
            (json!({"servers":servers,"upgradeTransition":{"mode":7}}), "\"upgradeTransition.mode\" should be"),
            (json!({"servers":servers,"upgradeTransition":"x"}), "\"upgradeTransition\" must be an object"),
            (json!({"servers":servers,"upgradeTransition":{"mode":"SESSION","sessionTimeout":0}}), "\"sessionTimeout\" must be a number of seconds"),
            (json!({"servers":servers,"upgradeTransition":{"mode":"GRADUAL","percentageTransitionPerRequest":101}}), "\"percentageTransitionPerRequest\" must be a number above 0"),
            (json!({"version":1}), "\"cluster\" must contain \"servers\" or \"containers\" list"),
            (json!({"servers":[]}), "\"servers\" list must contain at least one entry"),
            (json!({"servers":{}}), "\"servers\" list must contain at least one entry"),
            (json!({"servers":[{"port":1}]}), "Invalid server address [:1]"),
            (json!({"servers":[{"hostname":"h","port":0}]}), "Invalid server address [h:0]"),
            (json!({"servers":[{"hostname":"h","port":"80"}]}), "Invalid server address [h:\"80\"]"),
            (json!({"servers":servers,"version":[1]}), "\"version\" must be a number or a string"),
            (json!({"servers":servers,"version":"1 1"}), "\"version\" must be a number or a string"),
            (json!({"servers":servers,"uuid":"nope"}), "\"uuid\" must be a uuid"),
            (json!([1]), "\"cluster\" must be an object"),
        ] {
            let r = parse(body.clone()).unwrap_err();
            assert_eq!(r.status, 400, "{body}");
            assert!(r.message.contains(want), "{body}: {}", r.message);
        }
        let r = parse(json!({"containers":[{"image":"x"}]})).unwrap_err();
        assert_eq!(r.status, 501);
        let taken = parse_cluster(
            &json!({"servers":servers,"uuid":"1dcbb083-257f-11e4-bcbc-600308a8245e"}),
            None,
            &|u| u == "1dcbb083-257f-11e4-bcbc-600308a8245e",
        )
        .unwrap_err();
        assert!(taken.message.contains("already exists"));
        let newest = parse(json!({"servers":servers})).unwrap();
        let r = parse_cluster(
            &json!({"servers":[{"hostname":"127.0.0.1","port":1},{"hostname":"127.0.0.1","port":2}],"upgradeTransition":{"mode":"CONCURRENT"}}),
            Some(&newest),
            &|_| false,
        )
        .unwrap_err();
        assert!(
            r.message.contains("conflicting address [127.0.0.1:1]"),
            "{}",
            r.message
        );
    }

    #[test]
    fn quick_mode_config_and_errors() {
        let q = quick(
            r#"{"proxy":{"port":1235},"configService":{"port":9090},"dockerHost":{"ip":"1.2.3.4"},
               "cluster":{"servers":[{"hostname":"127.0.0.1","port":1034},{"hostname":"127.0.0.1","port":1035}],"version":1.0}}"#,
            "config.json",
            Some(log::LevelFilter::Warn),
        )
        .unwrap();
        let cfg = crate::config::parse_table(q.doc.clone()).unwrap();
        assert_eq!(cfg.listeners[0].bind.to_string(), "0.0.0.0:1235");
        assert_eq!(cfg.listeners[0].service.as_deref(), Some(SERVICE));
        assert_eq!(cfg.server.admin.unwrap().to_string(), "0.0.0.0:9090");
        assert!(cfg.server.admin_read_only);
        assert_eq!(cfg.services[0].versions[0].version, "1.0");
        assert_eq!(cfg.clusters[0].backends.len(), 2);
        assert!(cfg.services[0].rollback.is_some());
        assert_eq!(cfg.server.log_level, Some(log::LevelFilter::Warn));
        assert_eq!(q.warnings.len(), 2, "{:?}", q.warnings);
        let errs = quick(
            r#"{"proxy":{},"cluster":{"servers":[]},"extra":1}"#,
            "c.json",
            None,
        )
        .unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        for want in [
            "c.json: extra: unknown key",
            "c.json: proxy.port: missing",
            "c.json: configService.port: missing (\"configService\": {\"port\": 9090})",
            "c.json: cluster: \"servers\" list must contain at least one entry",
        ] {
            assert!(
                shown.iter().any(|s| s == want || s.starts_with(want)),
                "{want} in {shown:?}"
            );
        }
        assert_eq!(quick("{", "c.json", None).unwrap_err()[0].path, "c.json");
        assert_eq!(log_level("warning"), Some(log::LevelFilter::Warn));
        assert_eq!(log_level("NOTICE"), Some(log::LevelFilter::Info));
        assert_eq!(log_level("loud"), None);
    }

    #[test]
    fn newest_live_cluster_decides_the_strategy() {
        let mut a =
            parse(json!({"servers":[{"hostname":"127.0.0.1","port":1}],"version":"1.9"})).unwrap();
        a.seq = 0;
        let mut b = parse(json!({"servers":[{"hostname":"127.0.0.1","port":2}],"version":"1.10","upgradeTransition":{"mode":"SESSION","sessionTimeout":60}})).unwrap();
        b.seq = 1;
        let v = service_value(&[a.clone(), b.clone()], &HashSet::new());
        assert_eq!(v["strategy"].as_str(), Some("session"));
        assert_eq!(v["session_timeout"].as_str(), Some("60s"));
        assert_eq!(v["versions"][1]["id"].as_str(), Some(b.uuid.as_str()));
        let rolled: HashSet<String> = [b.uuid.clone()].into();
        let v = service_value(&[a, b], &rolled);
        assert_eq!(v["strategy"].as_str(), Some("instant"));
        assert_eq!(v["versions"][1]["rolled_back"].as_bool(), Some(true));
    }
}
