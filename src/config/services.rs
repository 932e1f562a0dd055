//! Services (`[[services]]`): an ordered set of versions, each a cluster plus a version string,
//! and the release strategy that splits requests between them (see [`crate::release`]).
//! Listeners and routes target one with `service = "NAME"` instead of `cluster = "NAME"`.
//!
//! ```toml
//! [[services]]
//! name = "shop"
//! strategy = "gradual"              # instant | session | gradual | concurrent | canary
//! versions = [{ version = "1.0", cluster = "shop-1-0" }, { version = "1.1", cluster = "shop-1-1" }]
//! percentage_per_request = 0.5      # gradual: or ramp = "10m"
//! [services.rollback]
//! max_error_rate = 0.2
//! ```

use super::{duration_field, int_field, is_token, raw_part, valid_name, Errors};
use crate::release::version;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub mod defaults {
    use std::time::Duration;
    /// Lifetime of the version cookie; it slides on every response.
    pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(30);
    pub const ROLLBACK_MIN_REQUESTS: u64 = 20;
    pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Most versions one service may hold.
pub const MAX_VERSIONS: usize = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawService {
    pub name: Option<String>,
    pub strategy: Option<String>,
    /// Kept as values so that each version reports its own errors.
    pub versions: Option<Vec<toml::Value>>,
    pub session_timeout: Option<String>,
    pub percentage_per_request: Option<f64>,
    pub ramp: Option<String>,
    pub weights: Option<toml::Table>,
    pub force_header: Option<String>,
    pub promoted: Option<String>,
    pub rollback: Option<toml::Value>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawVersion {
    version: Option<toml::Value>,
    cluster: Option<String>,
    id: Option<String>,
    rolled_back: Option<bool>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawRollback {
    max_error_rate: Option<f64>,
    window: Option<String>,
    min_requests: Option<u64>,
    hook_exec: Option<Vec<String>>,
    hook_url: Option<String>,
    hook_timeout: Option<String>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Everything to the newest version.
    Instant,
    /// A client whose cookie names a live version stays there; others go to the newest.
    Session,
    /// Clients move to the newest version as its share grows (per request or over time).
    Gradual,
    /// Idempotent requests go to the two newest versions; the newest answers unless it fails.
    Concurrent,
    /// Fixed weights per version, sticky by cookie.
    Canary,
}

impl Strategy {
    pub const NAMES: &'static str = "instant, session, gradual, concurrent, canary";
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "instant" => Some(Strategy::Instant),
            "session" => Some(Strategy::Session),
            "gradual" => Some(Strategy::Gradual),
            "concurrent" => Some(Strategy::Concurrent),
            "canary" => Some(Strategy::Canary),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Instant => "instant",
            Strategy::Session => "session",
            Strategy::Gradual => "gradual",
            Strategy::Concurrent => "concurrent",
            Strategy::Canary => "canary",
        }
    }
    /// Strategies that keep a client on its version with the version cookie.
    #[inline]
    pub fn sticky(self) -> bool {
        matches!(
            self,
            Strategy::Session | Strategy::Gradual | Strategy::Canary
        )
    }
}

/// How the newest version's share grows under `gradual`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ramp {
    /// Percentage points per routed request (the original's `percentageTransitionPerRequest`).
    PerRequest(f64),
    /// From 0 to 100% over this long after the version became the newest.
    Over(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConfig {
    /// As written; compared numerically ([`version::compare`]).
    pub version: String,
    pub cluster: String,
    /// The version cookie's value (default: the version string; the DSU API uses uuids).
    pub id: String,
    /// Rolled back: no new or sticky requests go here (only forced ones).
    pub rolled_back: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// argv; the event JSON arrives on stdin.
    Exec(Vec<String>),
    /// `http://host:port/path`: the event JSON is POSTed there.
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RollbackConfig {
    /// Failed requests (5xx, connect failures, timeouts) / requests over `window`, above
    /// which the newest version is rolled back.
    pub max_error_rate: f64,
    pub window: Duration,
    /// Requests the window must hold before the rate counts.
    pub min_requests: u64,
    pub hook: Option<Hook>,
    pub hook_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub strategy: Strategy,
    /// In the order written (the snapshot sorts them by version).
    pub versions: Vec<VersionConfig>,
    pub session_timeout: Duration,
    /// Set exactly for `gradual`.
    pub ramp: Option<Ramp>,
    /// `canary`: the weight of each version (aligned with `versions`; unnamed ones get 0).
    pub weights: Vec<u32>,
    /// Lowercase name of the header that forces a version (for testers); none by default.
    pub force_header: Option<String>,
    /// Index into `versions` of a promoted version: every request goes there.
    pub promoted: Option<usize>,
    pub rollback: Option<RollbackConfig>,
}

impl ServiceConfig {
    /// Finds a version by its version string or its cookie id.
    pub fn find_version(&self, v: &str) -> Option<usize> {
        self.versions
            .iter()
            .position(|x| x.version == v)
            .or_else(|| self.versions.iter().position(|x| x.id == v))
    }
}

fn version_string(p: &str, v: Option<&toml::Value>, errs: &mut Errors) -> Option<String> {
    match v {
        None => {
            errs.add(format!("{p}.version"), "missing");
            None
        }
        Some(toml::Value::String(s)) if version::is_valid(s) => Some(s.clone()),
        Some(toml::Value::String(s)) => {
            errs.add(
                format!("{p}.version"),
                format!("invalid version {s:?}: use 1-64 of [0-9A-Za-z._+-]"),
            );
            None
        }
        Some(other) => {
            errs.add(
                format!("{p}.version"),
                format!("expected a string such as \"1.1\", found {other}"),
            );
            None
        }
    }
}

/// `http://host:port/path` (plain HTTP: hooks are for local notifiers and gateways).
pub fn valid_hook_url(u: &str) -> Result<(), String> {
    let rest = u.strip_prefix("http://").ok_or_else(|| {
        format!("hook_url {u:?} must start with http:// (https is not supported)")
    })?;
    let authority = rest.split('/').next().unwrap_or("");
    if !authority.contains(':') || authority.ends_with(':') {
        return Err(format!("hook_url {u:?} needs host:port"));
    }
    if u.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "hook_url {u:?} may not contain spaces or control characters"
        ));
    }
    Ok(())
}

fn rollback(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<RollbackConfig> {
    let r = raw_part::<RawRollback>(p, v.clone(), errs)?;
    errs.unknown::<RawRollback>(p, &r.unknown);
    let max_error_rate = match r.max_error_rate {
        None => {
            errs.add(
                format!("{p}.max_error_rate"),
                "missing (the failed fraction of requests that triggers a rollback, e.g. 0.2)",
            );
            0.5
        }
        Some(x) if x > 0.0 && x <= 1.0 => x,
        Some(x) => {
            errs.add(
                format!("{p}.max_error_rate"),
                format!("{x} is out of range (a fraction above 0, at most 1)"),
            );
            0.5
        }
    };
    let hook = match (&r.hook_exec, &r.hook_url) {
        (Some(_), Some(_)) => {
            errs.add(
                format!("{p}.hook_url"),
                "give hook_exec or hook_url, not both",
            );
            None
        }
        (Some(argv), None) => {
            if argv.is_empty() || argv[0].is_empty() {
                errs.add(
                    format!("{p}.hook_exec"),
                    "expected [\"/path/to/program\", \"args\"...]",
                );
                None
            } else {
                Some(Hook::Exec(argv.clone()))
            }
        }
        (None, Some(u)) => match valid_hook_url(u) {
            Ok(()) => Some(Hook::Url(u.clone())),
            Err(e) => {
                errs.add(format!("{p}.hook_url"), e);
                None
            }
        },
        (None, None) => {
            if r.hook_timeout.is_some() {
                errs.add(format!("{p}.hook_timeout"), "only used with a hook");
            }
            None
        }
    };
    Some(RollbackConfig {
        max_error_rate,
        window: duration_field(
            format!("{p}.window"),
            r.window.as_ref(),
            defaults::ROLLBACK_WINDOW,
            errs,
        ),
        min_requests: int_field(
            &format!("{p}.min_requests"),
            r.min_requests,
            defaults::ROLLBACK_MIN_REQUESTS,
            1,
            1_000_000_000,
            errs,
        ),
        hook,
        hook_timeout: duration_field(
            format!("{p}.hook_timeout"),
            r.hook_timeout.as_ref(),
            defaults::HOOK_TIMEOUT,
            errs,
        ),
    })
}

/// Validates `[[services]]`. `declared` says whether a cluster name exists in the document.
pub(crate) fn validate_services(
    raw: &[Option<RawService>],
    declared: &dyn Fn(&str) -> bool,
    errs: &mut Errors,
) -> Vec<ServiceConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, s) in raw.iter().enumerate() {
        let Some(s) = s else { continue };
        let p = format!("services[{i}]");
        errs.unknown::<RawService>(&p, &s.unknown);
        let name = valid_name(format!("{p}.name"), s.name.as_ref(), errs);
        if !name.is_empty() && !names.insert(name.clone()) {
            errs.add(
                format!("{p}.name"),
                format!("duplicate service name {name:?}"),
            );
        }
        let strategy = match s.strategy.as_deref() {
            None => Strategy::Instant,
            Some(x) => Strategy::parse(x).unwrap_or_else(|| {
                errs.add(
                    format!("{p}.strategy"),
                    format!(
                        "unknown strategy {x:?} (expected one of: {})",
                        Strategy::NAMES
                    ),
                );
                Strategy::Instant
            }),
        };
        let mut versions: Vec<VersionConfig> = Vec::new();
        match &s.versions {
            None => errs.add(
                format!("{p}.versions"),
                "missing (a service needs at least one version: [{ version = \"1.0\", cluster = \"NAME\" }])",
            ),
            Some(list) if list.is_empty() => {
                errs.add(format!("{p}.versions"), "empty (a service needs at least one version)")
            }
            Some(list) if list.len() > MAX_VERSIONS => errs.add(
                format!("{p}.versions"),
                format!("{} versions; at most {MAX_VERSIONS}", list.len()),
            ),
            Some(list) => {
                let mut ids = HashSet::new();
                for (j, v) in list.iter().enumerate() {
                    let vp = format!("{p}.versions[{j}]");
                    let Some(rv) = raw_part::<RawVersion>(&vp, v.clone(), errs) else {
                        continue;
                    };
                    errs.unknown::<RawVersion>(&vp, &rv.unknown);
                    let ver = version_string(&vp, rv.version.as_ref(), errs);
                    let cluster = match &rv.cluster {
                        None => {
                            errs.add(format!("{vp}.cluster"), "missing");
                            None
                        }
                        Some(c) if !declared(c) => {
                            errs.add(format!("{vp}.cluster"), format!("unknown cluster {c:?}"));
                            None
                        }
                        Some(c) => Some(c.clone()),
                    };
                    let id = match (&rv.id, &ver) {
                        (Some(id), _) if !version::is_valid(id) => {
                            errs.add(
                                format!("{vp}.id"),
                                format!("invalid id {id:?}: use 1-64 of [0-9A-Za-z._+-]"),
                            );
                            None
                        }
                        (Some(id), _) => Some(id.clone()),
                        (None, v) => v.clone(),
                    };
                    if let Some(id) = &id {
                        if !ids.insert(id.clone()) {
                            errs.add(
                                format!("{vp}.{}", if rv.id.is_some() { "id" } else { "version" }),
                                format!(
                                    "duplicate version {id:?} (give each version its own id when two share a version string)"
                                ),
                            );
                        }
                    }
                    if let (Some(version), Some(cluster), Some(id)) = (ver, cluster, id) {
                        versions.push(VersionConfig {
                            version,
                            cluster,
                            id,
                            rolled_back: rv.rolled_back.unwrap_or(false),
                        });
                    }
                }
                if !versions.is_empty() && versions.iter().all(|v| v.rolled_back) {
                    errs.add(
                        format!("{p}.versions"),
                        "every version is rolled back; at least one must take traffic",
                    );
                }
            }
        }
        let only = |key: &str, present: bool, ok: bool, errs: &mut Errors, what: &str| {
            if present && !ok {
                errs.add(format!("{p}.{key}"), format!("only used by {what}"));
            }
        };
        only(
            "session_timeout",
            s.session_timeout.is_some(),
            strategy.sticky(),
            errs,
            "the session, gradual and canary strategies",
        );
        let gradual = strategy == Strategy::Gradual;
        only(
            "percentage_per_request",
            s.percentage_per_request.is_some(),
            gradual,
            errs,
            "strategy = \"gradual\"",
        );
        only(
            "ramp",
            s.ramp.is_some(),
            gradual,
            errs,
            "strategy = \"gradual\"",
        );
        only(
            "weights",
            s.weights.is_some(),
            strategy == Strategy::Canary,
            errs,
            "strategy = \"canary\"",
        );
        let session_timeout = duration_field(
            format!("{p}.session_timeout"),
            s.session_timeout.as_ref(),
            defaults::SESSION_TIMEOUT,
            errs,
        );
        let ramp = match (gradual, s.percentage_per_request, &s.ramp) {
            (false, _, _) => None,
            (true, Some(_), Some(_)) => {
                errs.add(
                    format!("{p}.ramp"),
                    "give percentage_per_request or ramp, not both",
                );
                None
            }
            (true, Some(x), None) if x > 0.0 && x <= 100.0 => Some(Ramp::PerRequest(x)),
            (true, Some(x), None) => {
                errs.add(
                    format!("{p}.percentage_per_request"),
                    format!("{x} is out of range (above 0, at most 100)"),
                );
                None
            }
            (true, None, Some(r)) => Some(Ramp::Over(duration_field(
                format!("{p}.ramp"),
                Some(r),
                Duration::from_secs(1),
                errs,
            ))),
            (true, None, None) => {
                errs.add(
                    format!("{p}.percentage_per_request"),
                    "missing (strategy = \"gradual\" needs percentage_per_request or ramp)",
                );
                None
            }
        };
        let mut weights = vec![0u32; versions.len()];
        if strategy == Strategy::Canary {
            match &s.weights {
                None => errs.add(
                    format!("{p}.weights"),
                    "missing (strategy = \"canary\" needs weights, e.g. { \"1.0\" = 95, \"1.1\" = 5 })",
                ),
                Some(w) => {
                    for (k, v) in w {
                        let wp = format!("{p}.weights.{k}");
                        let idx = versions
                            .iter()
                            .position(|x| &x.version == k)
                            .or_else(|| versions.iter().position(|x| &x.id == k));
                        let n = match v.as_integer() {
                            Some(n) if (0..=10_000).contains(&n) => n as u32,
                            _ => {
                                errs.add(wp.clone(), format!("expected an integer in 0..=10000, found {v}"));
                                continue;
                            }
                        };
                        match idx {
                            Some(i) => weights[i] = n,
                            None => errs.add(wp, format!("no version {k:?} in this service")),
                        }
                    }
                    let live_weight: u64 = versions
                        .iter()
                        .zip(&weights)
                        .filter(|(v, _)| !v.rolled_back)
                        .map(|(_, &w)| u64::from(w))
                        .sum();
                    if !versions.is_empty() && live_weight == 0 {
                        errs.add(
                            format!("{p}.weights"),
                            "no version that takes traffic has a weight above 0",
                        );
                    }
                }
            }
        }
        let force_header = s.force_header.as_ref().and_then(|h| {
            if is_token(h) {
                Some(h.to_ascii_lowercase())
            } else {
                errs.add(
                    format!("{p}.force_header"),
                    format!("invalid header name {h:?}"),
                );
                None
            }
        });
        let promoted = s.promoted.as_ref().and_then(|v| {
            let idx = versions
                .iter()
                .position(|x| &x.version == v)
                .or_else(|| versions.iter().position(|x| &x.id == v));
            match idx {
                Some(i) if versions[i].rolled_back => {
                    errs.add(
                        format!("{p}.promoted"),
                        format!("version {v:?} is rolled back; it cannot also be promoted"),
                    );
                    None
                }
                Some(i) => Some(i),
                None => {
                    errs.add(
                        format!("{p}.promoted"),
                        format!("no version {v:?} in this service"),
                    );
                    None
                }
            }
        });
        let rollback = s
            .rollback
            .as_ref()
            .and_then(|r| rollback(&format!("{p}.rollback"), r, errs));
        out.push(ServiceConfig {
            name,
            strategy,
            versions,
            session_timeout,
            ramp,
            weights,
            force_header,
            promoted,
            rollback,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (Vec<ServiceConfig>, Vec<String>) {
        let t: toml::Table = text.parse().expect("toml");
        let list: Vec<Option<RawService>> = t["services"]
            .as_array()
            .expect("array")
            .iter()
            .enumerate()
            .map(|(i, v)| {
                raw_part::<RawService>(&format!("services[{i}]"), v.clone(), &mut Errors::default())
            })
            .collect();
        let mut errs = Errors::default();
        let s = validate_services(&list, &|c| c.starts_with("app"), &mut errs);
        (s, errs.0.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn good_services() {
        let (s, e) = check(
            r#"
[[services]]
name = "shop"
strategy = "gradual"
versions = [{ version = "1.0", cluster = "app1" }, { version = "1.1", cluster = "app2", id = "abc" }]
ramp = "10m"
force_header = "X-Version"
[services.rollback]
max_error_rate = 0.25
hook_url = "http://127.0.0.1:9/x"
[[services]]
name = "c"
strategy = "canary"
versions = [{ version = "1.0", cluster = "app1" }, { version = "1.1", cluster = "app2", rolled_back = true }]
weights = { "1.0" = 95, "1.1" = 5 }
promoted = "1.0"
"#,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s[0].ramp, Some(Ramp::Over(Duration::from_secs(600))));
        assert_eq!(s[0].versions[1].id, "abc");
        assert_eq!(s[0].versions[0].id, "1.0");
        assert_eq!(s[0].force_header.as_deref(), Some("x-version"));
        let rb = s[0].rollback.as_ref().unwrap();
        assert_eq!(rb.window, defaults::ROLLBACK_WINDOW);
        assert_eq!(rb.hook, Some(Hook::Url("http://127.0.0.1:9/x".into())));
        assert_eq!(s[1].weights, vec![95, 5]);
        assert_eq!(s[1].promoted, Some(0));
        assert!(s[1].versions[1].rolled_back);
    }

    #[test]
    fn every_service_error_has_a_path() {
        let (_, e) = check(
            r#"
[[services]]
name = "a b"
strategy = "blue-green"
versions = [{ version = 1.1, cluster = "app" }, { version = "1.0", cluster = "ghost", colour = 1 }, { cluster = "app" }, { version = "2", cluster = "app", id = "x y" }]
session_timeout = "5m"
weights = { "1.0" = 1 }
percentage_per_request = 3.0
extra = 1
[[services]]
name = "g"
strategy = "gradual"
versions = [{ version = "1", cluster = "app", rolled_back = true }, { version = "1", cluster = "app" }]
percentage_per_request = 0.0
promoted = "9"
force_header = "bad header"
[services.rollback]
max_error_rate = 2.0
hook_exec = []
min_requests = 0
window = "never"
nope = true
[[services]]
name = "c"
strategy = "canary"
versions = [{ version = "1", cluster = "app" }]
weights = { "1" = 0, "7" = 3, "x" = "heavy" }
[[services]]
name = "d"
strategy = "gradual"
versions = []
[[services]]
name = "d"
strategy = "session"
versions = [{ version = "1", cluster = "app", rolled_back = true }]
ramp = "1m"
[services.rollback]
max_error_rate = 0.1
hook_url = "https://x:1/"
"#,
        );
        for want in [
            "services[0].name: invalid name",
            "services[0].strategy: unknown strategy",
            "services[0].versions[0].version: expected a string",
            "services[0].versions[1].cluster: unknown cluster",
            "services[0].versions[1].colour: unknown key",
            "services[0].versions[2].version: missing",
            "services[0].versions[3].id: invalid id",
            "services[0].session_timeout: only used by",
            "services[0].weights: only used by",
            "services[0].percentage_per_request: only used by",
            "services[0].extra: unknown key",
            "services[1].versions[1].version: duplicate version",
            "services[1].percentage_per_request: 0 is out of range",
            "services[1].promoted: no version",
            "services[1].force_header: invalid header name",
            "services[1].rollback.max_error_rate: 2 is out of range",
            "services[1].rollback.hook_exec:",
            "services[1].rollback.min_requests: 0 is out of range",
            "services[1].rollback.window:",
            "services[1].rollback.nope: unknown key",
            "services[2].weights.7: no version",
            "services[2].weights.x: expected an integer",
            "services[2].weights: no version that takes traffic",
            "services[3].versions: empty",
            "services[3].percentage_per_request: missing",
            "services[4].name: duplicate service name",
            "services[4].versions: every version is rolled back",
            "services[4].ramp: only used by",
            "services[4].rollback.hook_url: hook_url \"https://x:1/\" must start with http://",
        ] {
            assert!(
                e.iter().any(|x| x.starts_with(want)),
                "missing {want} in {e:#?}"
            );
        }
    }
}
