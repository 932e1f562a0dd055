//! An instance as the LBaaS API describes it (compat.md §4) → the listener and cluster tables
//! that implement it. Every field is checked here, with its path in the request
//! (`info.backend.entities[1]`), before the control plane validates the result again.

use crate::config::{self, autoscale, Errors};
use crate::control::ApiError;
use serde_json::{json, Map, Value as Json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use toml::{Table, Value};

/// The health check of an instance created without one: the seed's example criteria on a TCP
/// check of each entity's own port.
pub const DEFAULT_INTERVAL_S: u64 = 5;
pub const DEFAULT_TIMEOUT_S: u64 = 5;
pub const DEFAULT_THRESHOLD: u64 = 2;
/// Entities per instance.
pub const MAX_ENTITIES: usize = 1000;

pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(422, "invalid", message).field(field)
}

/// A project, instance or user name: 1-128 characters, no control characters.
pub fn name(v: Option<&Json>, field: &str) -> Result<String, ApiError> {
    match v {
        None => Err(invalid(field, "missing")),
        Some(Json::String(s)) => {
            let t = s.trim();
            if t.is_empty() || t.chars().count() > 128 || t.chars().any(char::is_control) {
                return Err(invalid(
                    field,
                    format!("invalid name {s:?}: 1-128 characters, no control characters"),
                ));
            }
            Ok(t.to_string())
        }
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficType {
    Tcp,
    Http,
}

impl TrafficType {
    pub fn parse(v: &Json, field: &str) -> Result<TrafficType, ApiError> {
        match v.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("tcp") => Ok(TrafficType::Tcp),
            Some("http") => Ok(TrafficType::Http),
            _ => Err(invalid(
                field,
                format!("expected \"tcp\" or \"http\", got {v}"),
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Tcp => "tcp",
            TrafficType::Http => "http",
        }
    }
}

/// One entity: `"ip"` (port 80), `"ip:port"`, `"host[:port]"` or `"http://host[:port]/"`.
/// Returns the backend as the cluster writes it (`host:port`) and its address.
pub fn entity(s: &str) -> Result<(String, SocketAddr), String> {
    let t = s.trim();
    let t = t.strip_prefix("http://").unwrap_or(t);
    let t = t.strip_suffix('/').unwrap_or(t);
    if t.is_empty() || t.contains('/') || t.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "invalid entity {s:?} (expected \"ip\", \"ip:port\" or \"host:port\")"
        ));
    }
    let written = if t.parse::<SocketAddr>().is_ok() {
        t.to_string()
    } else if let Ok(ip) = t.parse::<IpAddr>() {
        SocketAddr::new(ip, 80).to_string()
    } else if t.starts_with('[') && t.ends_with(']') {
        format!("{t}:80")
    } else if t.contains(':') {
        t.to_string()
    } else {
        format!("{t}:80")
    };
    let addr = config::parse_backend_addr(&written)?;
    Ok((written, addr))
}

pub fn entities(v: &Json, field: &str) -> Result<Vec<(String, SocketAddr)>, ApiError> {
    let Json::Array(list) = v else {
        return Err(invalid(
            field,
            "expected a list of entities, e.g. [\"10.0.0.5\", \"10.0.0.6:8080\"]",
        ));
    };
    if list.is_empty() {
        return Err(invalid(
            field,
            "empty (an instance needs at least one entity)",
        ));
    }
    if list.len() > MAX_ENTITIES {
        return Err(invalid(field, format!("more than {MAX_ENTITIES} entities")));
    }
    let mut out: Vec<(String, SocketAddr)> = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let s = e.as_str().ok_or_else(|| invalid(&f, "expected a string"))?;
        let (w, a) = entity(s).map_err(|m| invalid(&f, m))?;
        if out.iter().any(|(_, b)| *b == a) {
            return Err(invalid(&f, format!("duplicate entity {s:?}")));
        }
        out.push((w, a));
    }
    Ok(out)
}

/// `a.b.c.d/n` (or IPv6): the network an instance's entities must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    net: IpAddr,
    prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let bad = || format!("invalid subnet {s:?} (expected e.g. \"10.1.1.0/24\")");
        let (ip, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Subnet { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((n, w), (a, wa)) = (bits(self.net), bits(ip));
        if w != wa {
            return false;
        }
        let shift = w - u32::from(self.prefix);
        shift >= w || (n >> shift) == (a >> shift)
    }
}

/// A duration given in seconds (the seed's integers; fractions allowed) or as a string such as
/// `"500ms"`. At least 1 ms, at most a day.
pub fn seconds(v: &Json, field: &str) -> Result<Duration, ApiError> {
    let d = match v {
        Json::Number(n) => {
            let s = n.as_f64().unwrap_or(-1.0);
            if !(s > 0.0 && s <= 86_400.0) {
                return Err(invalid(field, "expected seconds in (0, 86400]"));
            }
            Duration::from_secs_f64(s)
        }
        Json::String(s) => config::units::parse_duration(s).map_err(|e| invalid(field, e))?,
        _ => {
            return Err(invalid(
                field,
                "expected a number of seconds (or a string such as \"500ms\")",
            ))
        }
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
        return Err(invalid(field, "out of range (1ms to 1 day)"));
    }
    Ok(d)
}

fn duration_value(d: Duration) -> Value {
    Value::String(format!("{}ms", d.as_millis()))
}

fn int(v: &Json, field: &str, lo: u64, hi: u64) -> Result<u64, ApiError> {
    v.as_u64()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| invalid(field, format!("expected an integer in {lo}..={hi}")))
}

/// A health check: what the API shows, and the `[clusters.health]` table (none: no checks).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub show: Json,
    pub table: Option<Table>,
}

/// `{"protocol":"HTTP|TCP","port":80,"request-path":"/","criteria":{"interval":5,"timeout":5,
/// "health-threshold":2,"unhealth-threshold":2}}`; `false` disables checks; absent or `true`:
/// a TCP check with the seed's criteria.
pub fn health(v: Option<&Json>, field: &str) -> Result<Health, ApiError> {
    let empty = Map::new();
    let o = match v {
        None | Some(Json::Bool(true)) => &empty,
        Some(Json::Bool(false)) | Some(Json::Null) => {
            return Ok(Health {
                show: Json::Bool(false),
                table: None,
            })
        }
        Some(Json::Object(o)) => o,
        Some(_) => {
            return Err(invalid(
                field,
                "expected a health-check object (or false to disable checks)",
            ))
        }
    };
    for k in o.keys() {
        if !["protocol", "port", "request-path", "criteria"].contains(&k.as_str()) {
            return Err(invalid(
                &format!("{field}.{k}"),
                "unknown key (expected protocol, port, request-path, criteria)",
            ));
        }
    }
    let http = match o.get("protocol") {
        None => false,
        Some(p) => match p.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => true,
            Some("tcp") => false,
            _ => {
                return Err(invalid(
                    &format!("{field}.protocol"),
                    "expected \"HTTP\" or \"TCP\"",
                ))
            }
        },
    };
    let port = o
        .get("port")
        .map(|p| int(p, &format!("{field}.port"), 1, 65535))
        .transpose()?;
    let path = match o.get("request-path") {
        None => "/".to_string(),
        Some(Json::String(p))
            if p.starts_with('/') && !p.bytes().any(|b| b <= b' ' || b == 0x7f) =>
        {
            p.clone()
        }
        Some(_) => {
            return Err(invalid(
                &format!("{field}.request-path"),
                "expected a path starting with / (no spaces or control characters)",
            ))
        }
    };
    let cf = format!("{field}.criteria");
    let c = match o.get("criteria") {
        None => &empty,
        Some(Json::Object(c)) => c,
        Some(_) => return Err(invalid(&cf, "expected an object")),
    };
    for k in c.keys() {
        if ![
            "interval",
            "timeout",
            "health-threshold",
            "unhealth-threshold",
        ]
        .contains(&k.as_str())
        {
            return Err(invalid(
                &format!("{cf}.{k}"),
                "unknown key (expected interval, timeout, health-threshold, unhealth-threshold)",
            ));
        }
    }
    let dur = |k: &str, default: u64| -> Result<(Json, Duration), ApiError> {
        match c.get(k) {
            None => Ok((json!(default), Duration::from_secs(default))),
            Some(v) => Ok((v.clone(), seconds(v, &format!("{cf}.{k}"))?)),
        }
    };
    let (interval_show, interval) = dur("interval", DEFAULT_INTERVAL_S)?;
    let (timeout_show, timeout) = dur("timeout", DEFAULT_TIMEOUT_S)?;
    if interval < Duration::from_millis(10) {
        return Err(invalid(&format!("{cf}.interval"), "at least 10ms"));
    }
    if timeout > interval {
        return Err(invalid(
            &format!("{cf}.timeout"),
            "must not be longer than the interval",
        ));
    }
    let threshold = |k: &str| -> Result<u64, ApiError> {
        c.get(k).map_or(Ok(DEFAULT_THRESHOLD), |v| {
            int(v, &format!("{cf}.{k}"), 1, 100)
        })
    };
    let rise = threshold("health-threshold")?;
    let fall = threshold("unhealth-threshold")?;

    let mut show = Map::new();
    show.insert("protocol".into(), json!(if http { "HTTP" } else { "TCP" }));
    if let Some(p) = port {
        show.insert("port".into(), json!(p));
    }
    if http || o.contains_key("request-path") {
        show.insert("request-path".into(), json!(path));
    }
    show.insert(
        "criteria".into(),
        json!({
            "interval": interval_show,
            "timeout": timeout_show,
            "health-threshold": rise,
            "unhealth-threshold": fall,
        }),
    );
    let mut t = Table::new();
    t.insert(
        "protocol".into(),
        Value::from(if http { "http" } else { "tcp" }),
    );
    if http {
        // The request path is for HTTP checks; a TCP check only opens a connection.
        t.insert("path".into(), Value::String(path));
    }
    if let Some(p) = port {
        t.insert("port".into(), Value::Integer(p as i64));
    }
    t.insert("interval".into(), duration_value(interval));
    t.insert("timeout".into(), duration_value(timeout));
    t.insert("rise".into(), Value::Integer(rise as i64));
    t.insert("fall".into(), Value::Integer(fall as i64));
    Ok(Health {
        show: Json::Object(show),
        table: Some(t),
    })
}

/// Auto-scaling: what the API shows (as given) and the `[clusters.autoscale]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub show: Json,
    pub table: Option<Table>,
}

fn check_autoscale(field: &str, t: &Table) -> Result<(), ApiError> {
    let mut errs = Errors::default();
    autoscale::validate(field, &Value::Table(t.clone()), false, &mut errs);
    let errs = errs.into_vec();
    match errs.is_empty() {
        true => Ok(()),
        false => Err(crate::control::invalid(&errs)),
    }
}

/// `false`; `true` (the policy of `[lbaas.autoscale]`); or a policy object laid over
/// `[lbaas.autoscale]`: `metric`, `scale_up_above`, `scale_down_below`, `window` and
/// `cooldown` (seconds or "30s"), `min_backends`, `max_backends`, `webhook`. A `hook` runs a
/// program on this node, so only the config file may name one.
pub fn auto_scaling(
    v: Option<&Json>,
    defaults: Option<&Table>,
    field: &str,
) -> Result<Scaling, ApiError> {
    let o = match v {
        None | Some(Json::Null) | Some(Json::Bool(false)) => {
            return Ok(Scaling {
                show: Json::Bool(false),
                table: None,
            })
        }
        Some(Json::Bool(true)) => {
            let Some(d) = defaults else {
                return Err(invalid(
                    field,
                    "auto-scaling: true takes its policy from [lbaas.autoscale] in the config \
                     file, and there is none; give a policy object instead (with a webhook)",
                ));
            };
            check_autoscale("[lbaas.autoscale]", d).map_err(|e| {
                invalid(
                    field,
                    format!(
                        "auto-scaling: true takes its policy from [lbaas.autoscale], which is \
                         incomplete: {}",
                        e.message
                    ),
                )
            })?;
            return Ok(Scaling {
                show: Json::Bool(true),
                table: Some(d.clone()),
            });
        }
        Some(Json::Object(o)) => o,
        Some(_) => return Err(invalid(field, "expected true, false or a policy object")),
    };
    let mut t = defaults.cloned().unwrap_or_default();
    for (k, v) in o {
        let key = k.replace('-', "_");
        let f = format!("{field}.{k}");
        if key == "hook" {
            return Err(invalid(
                &f,
                "a hook runs a program on this node, so only the config file can name one \
                 ([lbaas.autoscale] hook, used by auto-scaling: true); use webhook",
            ));
        }
        if !autoscale::KEYS.contains(&key.as_str()) {
            return Err(invalid(
                &f,
                format!(
                    "unknown key (expected one of: {})",
                    autoscale::KEYS.join(", ")
                ),
            ));
        }
        let value = match key.as_str() {
            "metric" | "webhook" => Value::String(
                v.as_str()
                    .ok_or_else(|| invalid(&f, "expected a string"))?
                    .to_string(),
            ),
            "scale_up_above" | "scale_down_below" => {
                Value::Float(v.as_f64().ok_or_else(|| invalid(&f, "expected a number"))?)
            }
            "window" | "cooldown" => duration_value(seconds(v, &f)?),
            _ => Value::Integer(int(v, &f, 1, 1000)? as i64),
        };
        if key == "webhook" {
            t.remove("hook");
        }
        t.insert(key, value);
    }
    check_autoscale(field, &t)?;
    Ok(Scaling {
        show: Json::Object(o.clone()),
        table: Some(t),
    })
}

/// The listener of instance `name` on `bind`.
pub fn listener_table(name: &str, bind: SocketAddr, traffic: TrafficType) -> Value {
    let mut t = Table::new();
    t.insert("name".into(), Value::String(name.into()));
    t.insert("bind".into(), Value::String(bind.to_string()));
    t.insert("protocol".into(), Value::from(traffic.as_str()));
    t.insert("cluster".into(), Value::String(name.into()));
    Value::Table(t)
}

/// The cluster of instance `name`. With `existing`, its other settings are kept, and so are
/// the weight and drain state of entities that stay.
pub fn cluster_table(
    name: &str,
    existing: Option<&Value>,
    entities: Option<&[(String, SocketAddr)]>,
    health: Option<&Health>,
    scaling: Option<&Scaling>,
) -> Value {
    let mut t = existing
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();
    t.insert("name".into(), Value::String(name.into()));
    if let Some(list) = entities {
        let old: Vec<Value> = t
            .get("backends")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let same = |v: &Value, addr: SocketAddr| {
            crate::control::doc::backend_addr(v).and_then(|a| config::parse_backend_addr(a).ok())
                == Some(addr)
        };
        let backends = list
            .iter()
            .map(|(w, a)| {
                old.iter()
                    .find(|v| same(v, *a))
                    .cloned()
                    .unwrap_or_else(|| Value::String(w.clone()))
            })
            .collect();
        t.insert("backends".into(), Value::Array(backends));
    }
    if let Some(h) = health {
        match &h.table {
            Some(ht) => t.insert("health".into(), Value::Table(ht.clone())),
            None => t.remove("health"),
        };
    }
    if let Some(s) = scaling {
        match &s.table {
            Some(st) => t.insert("autoscale".into(), Value::Table(st.clone())),
            None => t.remove("autoscale"),
        };
    }
    Value::Table(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_take_the_seed_forms() {
        assert_eq!(
            entity("10.0.0.5").unwrap(),
            ("10.0.0.5:80".to_string(), "10.0.0.5:80".parse().unwrap())
        );
        assert_eq!(entity("10.0.0.5:8080").unwrap().0, "10.0.0.5:8080");
        assert_eq!(entity("http://127.0.0.1:81/").unwrap().0, "127.0.0.1:81");
        assert_eq!(entity("::1").unwrap().0, "[::1]:80");
        assert_eq!(entity("localhost").unwrap().0, "localhost:80");
        for bad in ["", "10.0.0.5/24", "a b", "http://x/y"] {
            assert!(entity(bad).is_err(), "{bad}");
        }
        let e = entities(&json!(["10.0.0.5", "10.0.0.5:80"]), "e").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("e[1]"));
        assert!(entities(&json!([]), "e").is_err());
        assert_eq!(
            entities(&json!(["10.0.0.5", 3]), "e")
                .unwrap_err()
                .field
                .as_deref(),
            Some("e[1]")
        );
    }

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.1.1.0/24").unwrap();
        assert!(s.contains("10.1.1.200".parse().unwrap()));
        assert!(!s.contains("10.1.2.1".parse().unwrap()));
        assert!(!s.contains("::1".parse().unwrap()));
        assert!(Subnet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Subnet::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in ["10.1.1.0", "10.1.1.0/33", "x/8"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_check_as_the_seed_writes_it() {
        let h = health(
            Some(
                &json!({"protocol":"HTTP","port":8080,"request-path":"/ping",
                "criteria":{"interval":5,"timeout":2,"health-threshold":3,"unhealth-threshold":4}}),
            ),
            "h",
        )
        .unwrap();
        let t = h.table.unwrap();
        assert_eq!(t["protocol"].as_str(), Some("http"));
        assert_eq!(t["path"].as_str(), Some("/ping"));
        assert_eq!(t["port"].as_integer(), Some(8080));
        assert_eq!(t["interval"].as_str(), Some("5000ms"));
        assert_eq!(t["timeout"].as_str(), Some("2000ms"));
        assert_eq!(
            (t["rise"].as_integer(), t["fall"].as_integer()),
            (Some(3), Some(4))
        );
        assert_eq!(h.show["criteria"]["interval"], 5);
        // Defaults: TCP, 5 s, 5 s, 2, 2.
        let d = health(None, "h").unwrap();
        let t = d.table.unwrap();
        assert_eq!(t["protocol"].as_str(), Some("tcp"));
        assert!(t.get("path").is_none());
        assert_eq!(d.show["criteria"]["timeout"], 5);
        assert_eq!(health(Some(&json!(false)), "h").unwrap().table, None);
        for (bad, field) in [
            (json!({"protocol":"UDP"}), "h.protocol"),
            (
                json!({"criteria":{"interval":1,"timeout":2}}),
                "h.criteria.timeout",
            ),
            (
                json!({"criteria":{"health-threshold":0}}),
                "h.criteria.health-threshold",
            ),
            (json!({"criteria":{"interval":-1}}), "h.criteria.interval"),
            (json!({"criteria":{"every":1}}), "h.criteria.every"),
            (json!({"request-path":"ping"}), "h.request-path"),
            (json!({"colour":1}), "h.colour"),
            (json!({"port":0}), "h.port"),
        ] {
            let e = health(Some(&bad), "h").unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{bad}: {e:?}");
        }
    }

    #[test]
    fn auto_scaling_policies() {
        let defaults: Table = toml::from_str(
            "scale_up_above = 100\nscale_down_below = 10\nhook = \"/usr/local/bin/scale\"",
        )
        .unwrap();
        assert_eq!(
            auto_scaling(Some(&json!(false)), None, "a").unwrap().table,
            None
        );
        let t = auto_scaling(Some(&json!(true)), Some(&defaults), "a")
            .unwrap()
            .table
            .unwrap();
        assert_eq!(t["hook"].as_str(), Some("/usr/local/bin/scale"));
        assert!(auto_scaling(Some(&json!(true)), None, "a").is_err());
        // A policy over the defaults, dashed keys and seconds accepted.
        let s = auto_scaling(
            Some(&json!({"metric":"p99_ms","scale-up-above":250,"scale_down_below":50,"window":10,"max_backends":4})),
            Some(&defaults),
            "a",
        )
        .unwrap();
        let t = s.table.unwrap();
        assert_eq!(t["metric"].as_str(), Some("p99_ms"));
        assert_eq!(t["window"].as_str(), Some("10000ms"));
        assert_eq!(t["hook"].as_str(), Some("/usr/local/bin/scale"));
        // A webhook replaces the default hook; a hook from the API is refused.
        let t = auto_scaling(
            Some(&json!({"webhook":"http://127.0.0.1:9/x"})),
            Some(&defaults),
            "a",
        )
        .unwrap()
        .table
        .unwrap();
        assert!(t.get("hook").is_none());
        let e = auto_scaling(Some(&json!({"hook":"/bin/sh"})), Some(&defaults), "a").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a.hook"));
        let e = auto_scaling(
            Some(&json!({"scale_up_above":5,"scale_down_below":50})),
            Some(&defaults),
            "a",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a.scale_down_below"), "{e:?}");
        // Without defaults, a policy must be complete.
        let e = auto_scaling(Some(&json!({"scale_up_above":5})), None, "a").unwrap_err();
        assert_eq!(e.status, 422);
    }

    #[test]
    fn cluster_updates_keep_what_stays() {
        let old: Value = toml::from_str::<Table>(
            "name = \"lbaas-1\"\nbalance = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:1\", weight = 5 }, \"127.0.0.1:2\"]",
        )
        .unwrap()
        .into();
        let list = vec![
            ("127.0.0.1:1".to_string(), "127.0.0.1:1".parse().unwrap()),
            ("127.0.0.1:3".to_string(), "127.0.0.1:3".parse().unwrap()),
        ];
        let v = cluster_table("lbaas-1", Some(&old), Some(&list), None, None);
        assert_eq!(v["balance"].as_str(), Some("least_conn"));
        let b = v["backends"].as_array().unwrap();
        assert_eq!(b[0]["weight"].as_integer(), Some(5));
        assert_eq!(b[1].as_str(), Some("127.0.0.1:3"));
    }
}
