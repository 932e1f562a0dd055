//! HTTP routes: the `[[listeners.routes]]` tables of an `http` listener, tried in order, first
//! match wins. Each condition that is present must hold: host (exact or `*.suffix`), path
//! prefix (segment-aware), methods, and one header. `strip_prefix` removes the matched prefix
//! before the request goes upstream.

use super::{raw_part, Errors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawHeaderMatch {
    pub name: Option<String>,
    pub value: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: Option<bool>,
    pub methods: Option<Vec<String>>,
    pub header: Option<RawHeaderMatch>,
    pub cluster: Option<String>,
    /// Instead of `cluster`: a service (versions and a release strategy).
    pub service: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// Host condition, lowercase, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: it matches `a.example.com` and
    /// `a.b.example.com`, not `example.com` itself.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    /// `None`: the header only has to be present.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
    pub strip_prefix: bool,
    /// Empty: any method. Compared exactly (methods are case-sensitive).
    pub methods: Vec<String>,
    pub header: Option<HeaderMatch>,
    /// Empty when `service` is set.
    pub cluster: String,
    /// Instead of `cluster`: a service, whose release strategy picks the cluster.
    pub service: Option<String>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_host(s: &str) -> Result<HostMatch, String> {
    let lower = s.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "invalid host {s:?} (expected a host name such as \"api.example.com\" or \"*.example.com\", without port)"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn check_prefix(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("path_prefix {s:?} must start with '/'"));
    }
    if s.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        return Err(format!(
            "path_prefix {s:?} may not contain spaces, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

/// Validates the routes of listener `path` (e.g. `listeners[0]`). `declared` says whether a
/// cluster name exists in the file, `declared_service` the same of a service.
pub(crate) fn validate_routes(
    path: &str,
    raw: &[toml::Value],
    declared: &dyn Fn(&str) -> bool,
    declared_service: &dyn Fn(&str) -> bool,
    errs: &mut Errors,
) -> Vec<RouteConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        let p = format!("{path}.routes[{i}]");
        let Some(r) = raw_part::<RawRoute>(&p, v.clone(), errs) else {
            continue;
        };
        errs.unknown::<RawRoute>(&p, &r.unknown);
        let host = r.host.as_deref().and_then(|h| {
            parse_host(h)
                .map_err(|e| errs.add(format!("{p}.host"), e))
                .ok()
        });
        if let Some(pp) = &r.path_prefix {
            if let Err(e) = check_prefix(pp) {
                errs.add(format!("{p}.path_prefix"), e);
            }
        }
        let strip_prefix = r.strip_prefix.unwrap_or(false);
        if strip_prefix && r.path_prefix.is_none() {
            errs.add(format!("{p}.strip_prefix"), "needs a path_prefix to strip");
        }
        let methods = r.methods.clone().unwrap_or_default();
        for (j, m) in methods.iter().enumerate() {
            if !is_token(m) {
                errs.add(format!("{p}.methods[{j}]"), format!("invalid method {m:?}"));
            }
        }
        let header = r.header.as_ref().and_then(|h| {
            errs.unknown::<RawHeaderMatch>(&format!("{p}.header"), &h.unknown);
            match &h.name {
                Some(n) if is_token(n) => {
                    if let Some(v) = &h.value {
                        if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                            errs.add(
                                format!("{p}.header.value"),
                                "control characters are not allowed",
                            );
                        }
                    }
                    Some(HeaderMatch {
                        name: n.to_ascii_lowercase(),
                        value: h.value.clone(),
                    })
                }
                Some(n) => {
                    errs.add(
                        format!("{p}.header.name"),
                        format!("invalid header name {n:?}"),
                    );
                    None
                }
                None => {
                    errs.add(format!("{p}.header.name"), "missing");
                    None
                }
            }
        });
        let service = match (&r.service, &r.cluster) {
            (Some(_), Some(_)) => {
                errs.add(format!("{p}.service"), "give cluster or service, not both");
                None
            }
            (Some(s), None) => {
                if !declared_service(s) {
                    errs.add(format!("{p}.service"), format!("unknown service {s:?}"));
                }
                Some(s.clone())
            }
            (None, _) => None,
        };
        let cluster = match &r.cluster {
            None if r.service.is_some() => String::new(),
            None => {
                errs.add(format!("{p}.cluster"), "missing (or service)");
                String::new()
            }
            Some(c) => {
                if !declared(c) {
                    errs.add(format!("{p}.cluster"), format!("unknown cluster {c:?}"));
                }
                c.clone()
            }
        };
        out.push(RouteConfig {
            host,
            path_prefix: r.path_prefix.clone(),
            strip_prefix,
            methods,
            header,
            cluster,
            service,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> (Vec<RouteConfig>, Vec<String>) {
        let v: toml::Table = text.parse().expect("toml");
        let list = v["routes"].as_array().expect("array").clone();
        let mut errs = Errors::default();
        let r = validate_routes(
            "listeners[0]",
            &list,
            &|c| c == "app" || c == "api",
            &|s| s == "shop",
            &mut errs,
        );
        (r, errs.0.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn good_routes() {
        let (r, e) = routes(
            r#"
[[routes]]
host = "API.example.com"
path_prefix = "/v1"
strip_prefix = true
methods = ["GET", "POST"]
header = { name = "X-Canary", value = "1" }
cluster = "api"
[[routes]]
host = "*.Example.com"
cluster = "app"
"#,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(r[0].host, Some(HostMatch::Exact("api.example.com".into())));
        assert_eq!(
            r[0].header.as_ref().map(|h| h.name.as_str()),
            Some("x-canary")
        );
        assert_eq!(r[1].host, Some(HostMatch::Suffix(".example.com".into())));
    }

    #[test]
    fn every_route_error_has_a_path() {
        let (_, e) = routes(
            r#"
[[routes]]
host = "bad host:80"
path_prefix = "v1"
cluster = "nope"
[[routes]]
strip_prefix = true
methods = ["G E T"]
header = { value = "x", colour = 1 }
extra = true
[[routes]]
path_prefix = "/a?b"
strip_prefix = "yes"
"#,
        );
        for want in [
            "listeners[0].routes[0].host:",
            "listeners[0].routes[0].path_prefix:",
            "listeners[0].routes[0].cluster: unknown cluster",
            "listeners[0].routes[1].strip_prefix:",
            "listeners[0].routes[1].methods[0]:",
            "listeners[0].routes[1].header.name: missing",
            "listeners[0].routes[1].header.colour: unknown key",
            "listeners[0].routes[1].extra: unknown key",
            "listeners[0].routes[1].cluster: missing",
            "listeners[0].routes[2].strip_prefix:",
            "listeners[0].routes[2].path_prefix:",
        ] {
            assert!(
                e.iter().any(|x| x.starts_with(want)),
                "missing {want} in {e:#?}"
            );
        }
    }
}
