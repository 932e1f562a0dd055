//! `[clusters.health]`: active health checks (TCP connect or HTTP GET), with the load balancer
//! service's names (`health-threshold`, `unhealth-threshold`, `request-path`) as aliases.

use super::{duration_field, int_field, raw_part, Errors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub mod defaults {
    use std::time::Duration;
    pub const INTERVAL: Duration = Duration::from_secs(5);
    pub const TIMEOUT: Duration = Duration::from_secs(2);
    pub const RISE: u64 = 2;
    pub const FALL: u64 = 3;
    pub const PATH: &str = "/health";
    /// Fraction of the interval by which each check is randomly moved, so checks of many
    /// backends (and of many proxies) do not fire in lockstep.
    pub const JITTER: f64 = 0.1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: CheckKind,
    /// http: the request path (with query, if any).
    pub path: String,
    /// http: the Host header (default: the backend address).
    pub host: Option<String>,
    /// http: accepted statuses as inclusive ranges (default 200–399).
    pub expect: Vec<(u16, u16)>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Check this port instead of the backend's own.
    pub port: Option<u16>,
    pub jitter: f64,
    /// A backend not yet checked (at start-up, or added at runtime) is out of rotation until
    /// its first check says up (HAProxy's `init-state`); false: in rotation until checks
    /// take it down.
    pub init_unknown: bool,
}

impl HealthConfig {
    pub fn accepts(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawHealth {
    protocol: Option<String>,
    #[serde(alias = "request-path")]
    path: Option<String>,
    host: Option<String>,
    expect: Option<Vec<toml::Value>>,
    interval: Option<String>,
    timeout: Option<String>,
    #[serde(alias = "health-threshold")]
    rise: Option<u64>,
    #[serde(alias = "unhealth-threshold")]
    fall: Option<u64>,
    port: Option<u64>,
    jitter: Option<f64>,
    init_state: Option<String>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

/// `200`, `"2xx"` or `"200-299"`.
fn status_range(v: &toml::Value) -> Option<(u16, u16)> {
    let ok = |n: i64| (100..=599).contains(&n).then_some(n as u16);
    match v {
        toml::Value::Integer(n) => ok(*n).map(|s| (s, s)),
        toml::Value::String(s) => {
            let s = s.trim();
            if let Some(d) = s.strip_suffix("xx").and_then(|d| d.parse::<i64>().ok()) {
                return ok(d * 100).map(|lo| (lo, lo + 99));
            }
            let (a, b) = s.split_once('-')?;
            let (lo, hi) = (ok(a.trim().parse().ok()?)?, ok(b.trim().parse().ok()?)?);
            (lo <= hi).then_some((lo, hi))
        }
        _ => None,
    }
}

pub(crate) fn validate_health(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<HealthConfig> {
    let h = raw_part::<RawHealth>(p, v.clone(), errs)?;
    errs.unknown::<RawHealth>(p, &h.unknown);
    let kind = match h
        .protocol
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("tcp") => CheckKind::Tcp,
        Some("http") => CheckKind::Http,
        Some(other) => {
            errs.add(
                format!("{p}.protocol"),
                format!("unknown check protocol {other:?} (expected tcp or http)"),
            );
            CheckKind::Tcp
        }
    };
    if kind == CheckKind::Tcp {
        for (key, set) in [
            ("path", h.path.is_some()),
            ("host", h.host.is_some()),
            ("expect", h.expect.is_some()),
        ] {
            if set {
                errs.add(format!("{p}.{key}"), "for protocol = \"http\" checks only");
            }
        }
    }
    let path = h.path.clone().unwrap_or_else(|| defaults::PATH.into());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        errs.add(
            format!("{p}.path"),
            format!("invalid path {path:?} (must start with / and have no spaces or controls)"),
        );
    }
    if let Some(host) = &h.host {
        if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            errs.add(format!("{p}.host"), format!("invalid host {host:?}"));
        }
    }
    let mut expect = Vec::new();
    for (i, e) in h.expect.iter().flatten().enumerate() {
        match status_range(e) {
            Some(r) => expect.push(r),
            None => errs.add(
                format!("{p}.expect[{i}]"),
                "expected a status (200), a class (\"2xx\") or a range (\"200-299\")",
            ),
        }
    }
    if h.expect.as_ref().is_some_and(|e| e.is_empty()) {
        errs.add(format!("{p}.expect"), "empty (leave it out for 200-399)");
    }
    if expect.is_empty() {
        expect.push((200, 399));
    }
    let interval = duration_field(
        format!("{p}.interval"),
        h.interval.as_ref(),
        defaults::INTERVAL,
        errs,
    );
    let timeout = duration_field(
        format!("{p}.timeout"),
        h.timeout.as_ref(),
        defaults::TIMEOUT,
        errs,
    );
    if interval < Duration::from_millis(10) {
        errs.add(format!("{p}.interval"), "at least 10ms");
    }
    if timeout > interval {
        errs.add(
            format!("{p}.timeout"),
            format!("{timeout:?} is longer than the interval ({interval:?})"),
        );
    }
    let rise = int_field(&format!("{p}.rise"), h.rise, defaults::RISE, 1, 100, errs) as u32;
    let fall = int_field(&format!("{p}.fall"), h.fall, defaults::FALL, 1, 100, errs) as u32;
    let port = h
        .port
        .map(|n| int_field(&format!("{p}.port"), Some(n), 1, 1, 65535, errs) as u16);
    let jitter = h.jitter.unwrap_or(defaults::JITTER);
    if !(0.0..=0.5).contains(&jitter) {
        errs.add(
            format!("{p}.jitter"),
            "a fraction of the interval in 0.0..=0.5",
        );
    }
    let init_unknown = match h.init_state.as_deref() {
        None | Some("unknown") => true,
        Some("up") => false,
        Some(other) => {
            errs.add(
                format!("{p}.init_state"),
                format!("unknown init_state {other:?} (expected \"unknown\" or \"up\")"),
            );
            true
        }
    };
    Some(HealthConfig {
        init_unknown,
        kind,
        path,
        host: h.host,
        expect,
        interval,
        timeout,
        rise,
        fall,
        port,
        jitter: jitter.clamp(0.0, 0.5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (Option<HealthConfig>, Vec<String>) {
        let v: toml::Value = toml::from_str::<toml::Table>(text).unwrap().into();
        let mut errs = Errors::default();
        let h = validate_health("h", &v, &mut errs);
        (h, errs.0.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn defaults_aliases_and_errors() {
        let (h, e) = check("");
        assert!(e.is_empty());
        let h = h.unwrap();
        assert_eq!((h.kind, h.rise, h.fall), (CheckKind::Tcp, 2, 3));
        assert!(h.accepts(302) && !h.accepts(404));

        let (h, e) = check(
            "protocol = \"HTTP\"\nrequest-path = \"/ping\"\nhealth-threshold = 4\nunhealth-threshold = 5\nexpect = [204, \"3xx\", \"500-501\"]\ninterval = \"1s\"\ntimeout = \"500ms\"",
        );
        assert!(e.is_empty(), "{e:?}");
        let h = h.unwrap();
        assert_eq!(
            (h.kind, h.path.as_str(), h.rise, h.fall),
            (CheckKind::Http, "/ping", 4, 5)
        );
        assert!(h.accepts(204) && h.accepts(301) && h.accepts(501) && !h.accepts(200));

        let (_, e) = check(
            "protocol = \"udp\"\npath = \"x\"\nexpect = [\"9xx\"]\ninterval = \"1s\"\ntimeout = \"2s\"\nrise = 0\nbogus = 1",
        );
        for want in [
            "h.protocol",
            "h.path",
            "h.expect[0]",
            "h.timeout",
            "h.rise",
            "h.bogus",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want} in {e:?}");
        }
    }
}
