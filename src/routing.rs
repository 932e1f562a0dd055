//! Request routing for HTTP listeners: compiled routes (built once per snapshot) and the
//! per-request matcher. First match wins; then FaaS dynamic routing when the listener has it;
//! then the listener's fallback; otherwise no route (404). A route or fallback targets a
//! cluster, or a service whose release strategy then picks the cluster ([`crate::release`]).
//!
//! HOT PATH (`route`): no allocation, no panics on input; all comparisons on bytes.
//!
//! Path prefixes are segment-aware: `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`
//! (a prefix ending in `/` is a plain prefix). Hosts compare case-insensitively, without port.

use crate::config::routes::{HostMatch, RouteConfig};
use std::collections::HashMap;

/// Where a route or a listener sends requests: a cluster, or a service (by snapshot index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cluster(usize),
    Service(usize),
}

impl Target {
    /// Resolves a config target: `service` when set, else `cluster`.
    pub fn resolve(
        cluster: Option<&str>,
        service: Option<&str>,
        clusters: &HashMap<String, usize>,
        services: &HashMap<String, usize>,
    ) -> Option<Target> {
        match service {
            Some(s) => services.get(s).copied().map(Target::Service),
            None => clusters.get(cluster?).copied().map(Target::Cluster),
        }
    }
}

/// A route with byte-level conditions and its target resolved to an index.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub host: Option<HostMatch>,
    pub prefix: Option<Box<[u8]>>,
    pub strip: bool,
    pub methods: Vec<Box<[u8]>>,
    pub header: Option<HeaderCond>,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub struct HeaderCond {
    /// Lowercase.
    pub name: Box<[u8]>,
    /// `None`: presence is enough.
    pub value: Option<Box<[u8]>>,
}

impl CompiledRoute {
    /// `None` when the route names a cluster or service that does not exist (validation
    /// prevents it).
    pub fn compile(
        r: &RouteConfig,
        cluster_index: &HashMap<String, usize>,
        service_index: &HashMap<String, usize>,
    ) -> Option<Self> {
        Some(CompiledRoute {
            host: r.host.clone(),
            prefix: r.path_prefix.as_ref().map(|p| p.as_bytes().into()),
            strip: r.strip_prefix,
            methods: r.methods.iter().map(|m| m.as_bytes().into()).collect(),
            header: r.header.as_ref().map(|h| HeaderCond {
                name: h.name.as_bytes().into(),
                value: h.value.as_ref().map(|v| v.as_bytes().into()),
            }),
            target: Target::resolve(
                Some(&r.cluster),
                r.service.as_deref(),
                cluster_index,
                service_index,
            )?,
        })
    }
}

/// What the matcher needs from a parsed request.
pub struct RequestView<'a, H> {
    /// Host header (or absolute-form authority), possibly with a port.
    pub host: &'a [u8],
    /// Origin-form target: path and query.
    pub target: &'a [u8],
    pub method: &'a [u8],
    /// Looks a header up by lowercase name.
    pub header: H,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaasError {
    /// The first path segment is not `[a-z0-9]+` followed by `/`, `?` or the end.
    InvalidUrl,
    /// No first segment at all (`/` or empty).
    NeedKey,
    /// A well-formed key naming no cluster; the key is `target[1..1 + len]`.
    NoService { len: usize },
}

impl FaasError {
    /// The FaaS gateway's error message (400, `{"Data":{"Msg":..,"Code":10000}}`).
    pub fn message(self) -> &'static str {
        match self {
            FaasError::InvalidUrl => "invalid route url",
            FaasError::NeedKey => "need a route key to route",
            FaasError::NoService { .. } => "no service found for key = ",
        }
    }

    /// Writes the complete JSON body into `out`; the key (ASCII `[a-z0-9]`) is taken from
    /// `target`. Returns the length, or `None` when `out` is too small.
    pub fn write_body(self, target: &[u8], out: &mut [u8]) -> Option<usize> {
        let key = match self {
            FaasError::NoService { len } => target.get(1..1 + len).unwrap_or_default(),
            _ => b"",
        };
        let parts: [&[u8]; 4] = [
            b"{\"Data\":{\"Msg\":\"",
            self.message().as_bytes(),
            key,
            b"\",\"Code\":10000}}",
        ];
        let mut n = 0;
        for p in parts {
            out.get_mut(n..n + p.len())?.copy_from_slice(p);
            n += p.len();
        }
        Some(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send to this cluster, after removing `strip` bytes from the start of the path.
    Cluster {
        cluster: usize,
        strip: usize,
    },
    /// Send to this service (its strategy picks the cluster), after removing `strip` bytes.
    Service {
        service: usize,
        strip: usize,
    },
    Faas(FaasError),
    NoRoute,
}

/// Strips the port from a Host value (`example.com:80`, `[::1]:80`).
pub fn host_without_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

fn host_matches(m: &HostMatch, host: &[u8]) -> bool {
    match m {
        HostMatch::Exact(e) => host.eq_ignore_ascii_case(e.as_bytes()),
        HostMatch::Suffix(s) => {
            let s = s.as_bytes();
            host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

fn path_of(target: &[u8]) -> &[u8] {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => &target[..i],
        None => target,
    }
}

fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix)
        && (prefix.last() == Some(&b'/')
            || path.len() == prefix.len()
            || path[prefix.len()] == b'/')
}

/// The FaaS gateway's rule: `^/[a-z0-9]+` is the key, followed by `/`, `?` or the end.
/// Returns the key's length.
pub fn faas_key(target: &[u8]) -> Result<usize, FaasError> {
    let rest = match target.strip_prefix(b"/") {
        Some(r) => r,
        None => return Err(FaasError::InvalidUrl),
    };
    let len = rest
        .iter()
        .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit()))
        .unwrap_or(rest.len());
    match rest.get(len) {
        _ if len == 0 && matches!(rest.first(), None | Some(b'?') | Some(b'/')) => {
            Err(FaasError::NeedKey)
        }
        None | Some(b'/') | Some(b'?') if len > 0 => Ok(len),
        _ => Err(FaasError::InvalidUrl),
    }
}

/// The index of the first explicit route that matches the request, if any.
pub fn matched_route<'a, H: Fn(&[u8]) -> Option<&'a [u8]>>(
    routes: &[CompiledRoute],
    req: &RequestView<'a, H>,
) -> Option<usize> {
    let host = host_without_port(req.host);
    let path = path_of(req.target);
    routes.iter().position(|r| {
        if let Some(h) = &r.host {
            if !host_matches(h, host) {
                return false;
            }
        }
        if let Some(p) = &r.prefix {
            if !prefix_matches(p, path) {
                return false;
            }
        }
        if !r.methods.is_empty() && !r.methods.iter().any(|m| **m == *req.method) {
            return false;
        }
        if let Some(HeaderCond { name, value }) = &r.header {
            match ((req.header)(name), value) {
                (None, _) => return false,
                (Some(v), Some(w)) if v != &**w => return false,
                _ => {}
            }
        }
        true
    })
}

/// Routes one request.
pub fn route<'a, H: Fn(&[u8]) -> Option<&'a [u8]>>(
    routes: &[CompiledRoute],
    faas: Option<&HashMap<String, usize>>,
    fallback: Option<Target>,
    req: &RequestView<'a, H>,
) -> Decision {
    route_matched(routes, faas, fallback, req).0
}

/// [`route`], also giving the index of the route that matched (none: FaaS or the fallback).
pub fn route_matched<'a, H: Fn(&[u8]) -> Option<&'a [u8]>>(
    routes: &[CompiledRoute],
    faas: Option<&HashMap<String, usize>>,
    fallback: Option<Target>,
    req: &RequestView<'a, H>,
) -> (Decision, Option<usize>) {
    if let Some((i, r)) = matched_route(routes, req).and_then(|i| Some((i, routes.get(i)?))) {
        let strip = match (&r.prefix, r.strip) {
            (Some(p), true) => p.len(),
            _ => 0,
        };
        return (decision(r.target, strip), Some(i));
    }
    (route_unmatched(faas, fallback, req), None)
}

/// No route matched: FaaS mode, else the fallback.
fn route_unmatched<'a, H: Fn(&[u8]) -> Option<&'a [u8]>>(
    faas: Option<&HashMap<String, usize>>,
    fallback: Option<Target>,
    req: &RequestView<'a, H>,
) -> Decision {
    if let Some(index) = faas {
        return match faas_key(req.target) {
            Err(e) => Decision::Faas(e),
            // The key is ASCII [a-z0-9], so it is valid UTF-8.
            Ok(len) => match std::str::from_utf8(&req.target[1..1 + len])
                .ok()
                .and_then(|k| index.get(k))
            {
                Some(&cluster) => Decision::Cluster {
                    cluster,
                    strip: 1 + len,
                },
                None => Decision::Faas(FaasError::NoService { len }),
            },
        };
    }
    match fallback {
        Some(t) => decision(t, 0),
        None => Decision::NoRoute,
    }
}

fn decision(t: Target, strip: usize) -> Decision {
    match t {
        Target::Cluster(cluster) => Decision::Cluster { cluster, strip },
        Target::Service(service) => Decision::Service { service, strip },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routes::HeaderMatch;

    fn rc(cluster: &str) -> RouteConfig {
        RouteConfig {
            host: None,
            path_prefix: None,
            strip_prefix: false,
            methods: vec![],
            header: None,
            cluster: cluster.into(),
            service: None,
        }
    }

    fn index() -> HashMap<String, usize> {
        [("app", 0), ("api", 1), ("multiply", 2), ("v2", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn go(
        routes: &[CompiledRoute],
        faas: bool,
        fallback: Option<usize>,
        host: &str,
        target: &str,
        method: &str,
        hdr: &[(&str, &str)],
    ) -> Decision {
        let idx = index();
        let lookup = |n: &[u8]| {
            hdr.iter()
                .find(|(k, _)| k.as_bytes() == n)
                .map(|(_, v)| v.as_bytes())
        };
        let req = RequestView {
            host: host.as_bytes(),
            target: target.as_bytes(),
            method: method.as_bytes(),
            header: lookup,
        };
        route(
            routes,
            faas.then_some(&idx),
            fallback.map(Target::Cluster),
            &req,
        )
    }

    fn compile(list: Vec<RouteConfig>) -> Vec<CompiledRoute> {
        let idx = index();
        let services: HashMap<String, usize> = [("shop".to_string(), 0)].into();
        list.iter()
            .map(|r| CompiledRoute::compile(r, &idx, &services).expect("cluster"))
            .collect()
    }

    #[test]
    fn first_match_wins_with_every_condition() {
        let mut api = rc("api");
        api.host = Some(HostMatch::Exact("api.example.com".into()));
        api.path_prefix = Some("/v1".into());
        api.strip_prefix = true;
        api.methods = vec!["GET".into()];
        let mut canary = rc("v2");
        canary.header = Some(HeaderMatch {
            name: "x-canary".into(),
            value: Some("1".into()),
        });
        let mut wild = rc("app");
        wild.host = Some(HostMatch::Suffix(".example.com".into()));
        let routes = compile(vec![api, canary, wild]);
        let c = |cluster, strip| Decision::Cluster { cluster, strip };
        assert_eq!(
            go(
                &routes,
                false,
                None,
                "API.Example.com:8080",
                "/v1/users?id=1",
                "GET",
                &[]
            ),
            c(1, 3)
        );
        assert_eq!(
            go(&routes, false, None, "api.example.com", "/v1", "GET", &[]),
            c(1, 3)
        );
        assert_eq!(
            go(&routes, false, None, "api.example.com", "/v1x", "GET", &[]),
            c(0, 0),
            "segment-aware"
        );
        assert_eq!(
            go(
                &routes,
                false,
                None,
                "api.example.com",
                "/v1/a",
                "POST",
                &[]
            ),
            c(0, 0),
            "method"
        );
        assert_eq!(
            go(
                &routes,
                false,
                None,
                "x.y",
                "/",
                "GET",
                &[("x-canary", "1")]
            ),
            c(3, 0)
        );
        assert_eq!(
            go(
                &routes,
                false,
                None,
                "x.y",
                "/",
                "GET",
                &[("x-canary", "2")]
            ),
            Decision::NoRoute
        );
        assert_eq!(
            go(&routes, false, Some(0), "example.com", "/", "GET", &[]),
            c(0, 0),
            "suffix excludes bare domain; fallback"
        );
        assert_eq!(
            go(&routes, false, None, "a.b.example.com", "/", "GET", &[]),
            c(0, 0)
        );
    }

    #[test]
    fn faas_dynamic_routing_and_errors() {
        let c = |cluster, strip| Decision::Cluster { cluster, strip };
        assert_eq!(
            go(
                &[],
                true,
                None,
                "h",
                "/multiply/api/v1/add?x=10&y=25",
                "GET",
                &[]
            ),
            c(2, 9)
        );
        assert_eq!(
            go(&[], true, None, "h", "/multiply?x=1", "GET", &[]),
            c(2, 9)
        );
        assert_eq!(go(&[], true, None, "h", "/multiply", "GET", &[]), c(2, 9));
        assert_eq!(
            go(&[], true, None, "h", "/", "GET", &[]),
            Decision::Faas(FaasError::NeedKey)
        );
        assert_eq!(
            go(&[], true, None, "h", "/?x=1", "GET", &[]),
            Decision::Faas(FaasError::NeedKey)
        );
        assert_eq!(
            go(&[], true, None, "h", "/Multiply/x", "GET", &[]),
            Decision::Faas(FaasError::InvalidUrl)
        );
        assert_eq!(
            go(&[], true, None, "h", "/multi-ply/x", "GET", &[]),
            Decision::Faas(FaasError::InvalidUrl)
        );
        assert_eq!(
            go(&[], true, None, "h", "*", "OPTIONS", &[]),
            Decision::Faas(FaasError::InvalidUrl)
        );
        let d = go(&[], true, None, "h", "/divide/x", "GET", &[]);
        assert_eq!(d, Decision::Faas(FaasError::NoService { len: 6 }));
        let mut body = [0u8; 128];
        let Decision::Faas(e) = d else { unreachable!() };
        let n = e.write_body(b"/divide/x", &mut body).expect("fits");
        assert_eq!(
            &body[..n],
            br#"{"Data":{"Msg":"no service found for key = divide","Code":10000}}"#
        );
        let n = FaasError::InvalidUrl
            .write_body(b"", &mut body)
            .expect("fits");
        assert_eq!(
            &body[..n],
            br#"{"Data":{"Msg":"invalid route url","Code":10000}}"#
        );
        assert_eq!(
            FaasError::NeedKey.write_body(b"", &mut body[..10]),
            None,
            "too small"
        );
    }

    #[test]
    fn hosts_without_ports() {
        assert_eq!(host_without_port(b"a.b:80"), b"a.b");
        assert_eq!(host_without_port(b"a.b"), b"a.b");
        assert_eq!(host_without_port(b"[::1]:8080"), b"[::1]");
        assert_eq!(host_without_port(b"[::1"), b"[::1");
        assert_eq!(host_without_port(b""), b"");
    }
}
