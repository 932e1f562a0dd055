//! Admin API routing (DESIGN §4): paths → [`Control`] calls, errors as
//! `{"error":{"code","message","field"}}`.
//!
//! | path | methods |
//! |---|---|
//! | `/v1/config` | GET |
//! | `/v1/clusters` | GET |
//! | `/v1/clusters/{name}` | GET, PUT, DELETE |
//! | `/v1/clusters/{name}/backends` | GET, POST |
//! | `/v1/clusters/{name}/backends/{addr}` | PATCH, DELETE |
//! | `/v1/listeners` | GET |
//! | `/v1/listeners/{name}` | GET, PUT, DELETE |
//! | `/v1/services` | GET |
//! | `/v1/services/{name}` | GET, PUT, DELETE |
//! | `/v1/services/{name}/versions` | POST |
//! | `/v1/services/{name}/versions/{version}` | DELETE |
//! | `/v1/services/{name}/promote`, `/v1/services/{name}/rollback` | POST |
//! | `/v1/reload` | POST (same as SIGHUP) |
//! | `/v1/upgrade` | POST (binary upgrade, see [`crate::upgrade`]) |
//! | `/v1/discovery` | GET (each provider's last sync, error and services) |
//! | `/stats`, `/metrics` | GET |
//! | `/health`, `/heartbeat`, `/status` | GET (Foo compatible) |
//! | `/lbaas`, `/LB/project/`, `/LB/instance/` | POST, GET (the LBaaS API, [`crate::lbaas::api`]) |
//! | `/v1/faults/...`, toxiproxy's `/proxies`, `/populate`, `/reset`, `/version`, the broker's `/broker` | see [`crate::faults::api`] |
//!
//! Reads return `ETag: "<version>"`; writes accept `If-Match` (412 when stale) and answer with
//! the new version's ETag. With a token configured, writes need `Authorization: Bearer`.

use super::{Request, Response, Shared};
use crate::control::doc::Kind;
use crate::control::{ApiError, Change, IfMatch};
use serde_json::{json, Value as Json};

pub fn error_response(e: &ApiError) -> Response {
    let r = Response::json(
        e.status,
        &json!({"error": {"code": e.code, "message": e.message, "field": e.field}}),
    );
    match e.status {
        401 => r.with("WWW-Authenticate", "Bearer realm=\"switchyard\"".into()),
        429 => r.with("Retry-After", "1".into()),
        _ => r,
    }
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

pub(crate) fn ok(status: u16, v: &Json, version: u64) -> Response {
    Response::json(status, v).with("ETag", etag(version))
}

/// Percent-decodes a path segment (`127.0.0.1%3A9001` → `127.0.0.1:9001`).
pub(crate) fn decode(seg: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            400,
            "bad_request",
            format!("bad escape in path segment {seg:?}"),
        )
    };
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
            // Two hex digits exactly: `from_str_radix` alone would take "+1" too.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad());
            }
            let s = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `If-Match`: `*` (or no header) → no precondition. Otherwise a list of entity tags; ours are
/// `"<version>"` (`W/"7"` and a bare `7` are taken too). Tags that are not ours match nothing:
/// the change then fails with 412, never 400 (RFC 9110 §13.1.1).
pub fn if_match(req: &Request) -> Option<IfMatch> {
    let raw = req.header("if-match")?;
    if raw.trim() == "*" {
        return None;
    }
    let versions = raw
        .split(',')
        .filter_map(|tag| {
            let t = tag.trim();
            let t = t.strip_prefix("W/").unwrap_or(t);
            let t = t
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(t);
            // Digits only: `u64::from_str` would also take a leading `+`.
            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        })
        .collect();
    Some(IfMatch {
        versions,
        raw: raw.to_string(),
    })
}

/// Constant-time comparison (length aside), so the token cannot be guessed byte by byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks that `req` may change things (read-only mode, token). Returns who asked, for the
/// audit line.
pub(crate) fn authorize(shared: &Shared, req: &Request) -> Result<String, ApiError> {
    if shared.settings.read_only {
        return Err(ApiError::new(
            403,
            "read_only",
            "this admin API is read-only (admin_read_only, or quick mode on a public address)",
        ));
    }
    let who = req.peer.to_string();
    let Some(token) = &shared.settings.token else {
        return Ok(who);
    };
    let now = std::time::Instant::now();
    let ip = req.peer.ip();
    if let Some(wait) = shared.auth_failures.check(ip, now) {
        // Locked out: the token is not even looked at, so guessing learns nothing.
        let secs = wait.as_secs().max(1);
        return Err(ApiError::new(
            429,
            "too_many_attempts",
            format!("too many failed authentications from {ip}; try again in {secs}s"),
        ));
    }
    let given = req
        .header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => Ok(format!("{who} (token)")),
        Some(_) => {
            shared.auth_failures.failed(ip, now);
            if let Some(held_back) = shared.auth_log.due(now) {
                log::warn!(
                    "admin: authentication failed: wrong token from {who} for {} {}{}",
                    req.method,
                    req.path.chars().take(128).collect::<String>(),
                    if held_back > 0 {
                        format!(" ({held_back} more since the last such line)")
                    } else {
                        String::new()
                    }
                );
            }
            Err(ApiError::new(401, "unauthorized", "wrong token"))
        }
        None => Err(ApiError::new(
            401,
            "unauthorized",
            "this change needs Authorization: Bearer <token> (see admin_token_file)",
        )),
    }
}

pub(crate) fn body_json(req: &Request) -> Result<Json, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::new(400, "bad_request", "a JSON body is required"));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::new(400, "bad_json", format!("invalid JSON: {e}")))
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response {
    error_response(&ApiError::new(
        405,
        "method_not_allowed",
        format!("allowed: {allow}"),
    ))
    .with("Allow", allow.into())
}

fn kind_of(segment: &str) -> Kind {
    match segment {
        "clusters" => Kind::Cluster,
        "services" => Kind::Service,
        _ => Kind::Listener,
    }
}

pub fn handle(shared: &Shared, req: &Request) -> Response {
    for e in &shared.settings.extensions {
        if let Some(r) = e.handle(shared, req) {
            return r;
        }
    }
    match route(shared, req) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn foo_ok() -> Response {
    // The Foo proxy's exact answer and headers.
    Response {
        status: 200,
        content_type: "application/json",
        headers: vec![("Access-Control-Allow-Origin", "*".into())],
        body: b"{\"status\":\"OK!\"}".to_vec(),
    }
}

fn route(shared: &Shared, req: &Request) -> Result<Response, ApiError> {
    let path = req.path.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let m = req.method.as_str();
    let c = &shared.control;
    if let Some(implied) = crate::lbaas::api::path_type(path) {
        return Ok(crate::lbaas::api::handle(shared, req, implied));
    }
    match segs.as_slice() {
        ["ui"] => match m {
            "GET" | "HEAD" => Ok(Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                headers: vec![
                    ("Cache-Control", "no-cache".into()),
                    // The page is self-contained: nothing may load from elsewhere.
                    (
                        "Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; style-src \
                         'unsafe-inline'; connect-src 'self'; img-src 'self' data:"
                            .into(),
                    ),
                ],
                body: super::UI_PAGE.as_bytes().to_vec(),
            }),
            _ => Ok(method_not_allowed("GET, HEAD")),
        },
        ["health" | "heartbeat" | "status"] => match m {
            "GET" | "HEAD" => Ok(foo_ok()),
            _ => Ok(method_not_allowed("GET, HEAD")),
        },
        ["stats"] | ["metrics"] => {
            if m != "GET" && m != "HEAD" {
                return Ok(method_not_allowed("GET, HEAD"));
            }
            let Some(stats) = &shared.stats else {
                return Err(ApiError::new(503, "unavailable", "stats are not available"));
            };
            if segs[0] == "stats" {
                let mut r = Response::json(200, &Json::Null);
                r.body = stats.stats_json().into_bytes();
                r.body.push(b'\n');
                r.headers.push(("Access-Control-Allow-Origin", "*".into()));
                Ok(r)
            } else {
                let (ct, body) = stats.metrics();
                Ok(Response {
                    status: 200,
                    content_type: ct,
                    headers: vec![("Access-Control-Allow-Origin", "*".into())],
                    body: body.into_bytes(),
                })
            }
        }
        ["v1", "config"] => match m {
            "GET" => {
                let (v, j) = c.config_json();
                let mut j = j;
                if let Json::Object(o) = &mut j {
                    o.insert("version".into(), json!(v));
                }
                Ok(ok(200, &j, v))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["v1", "discovery"] => match m {
            "GET" => {
                let conflicts = c.discovery_conflicts();
                let j = match &shared.settings.discovery {
                    Some(r) => r.json(&conflicts),
                    None => json!({"providers": []}),
                };
                Ok(ok(200, &j, c.version()))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["v1", "reload"] => match m {
            "POST" => {
                let who = authorize(shared, req)?;
                log::info!("admin: reload requested by {who}");
                let m = if_match(req);
                let v = match &shared.lifecycle {
                    Some(lc) => lc.reload(m.as_ref())?,
                    None => c.reload_if(m.as_ref())?,
                };
                Ok(ok(200, &json!({"version": v}), v))
            }
            _ => Ok(method_not_allowed("POST")),
        },
        ["v1", "upgrade"] => match m {
            "POST" => {
                let who = authorize(shared, req)?;
                let Some(lc) = &shared.lifecycle else {
                    return Err(ApiError::new(
                        409,
                        "unavailable",
                        "upgrades are not available in this process",
                    ));
                };
                log::info!("admin: binary upgrade requested by {who}");
                let (old, new) = lc.upgrade(&format!("admin API ({who})"))?;
                let v = c.version();
                Ok(ok(200, &json!({"old_pid": old, "pid": new}), v))
            }
            _ => Ok(method_not_allowed("POST")),
        },
        ["v1", kind @ ("clusters" | "listeners" | "services")] => {
            let kind = kind_of(kind);
            match m {
                "GET" => {
                    let (v, items) = c.list(kind);
                    Ok(ok(200, &json!({"version": v, kind.key(): items}), v))
                }
                _ => Ok(method_not_allowed("GET")),
            }
        }
        ["v1", kind @ ("clusters" | "listeners" | "services"), name] => {
            let kind = kind_of(kind);
            let name = decode(name)?;
            match m {
                "GET" => {
                    let (v, j) = c.get(kind, &name)?;
                    Ok(ok(200, &j, v))
                }
                "PUT" => {
                    let who = authorize(shared, req)?;
                    let body = body_json(req)?;
                    let a = c.apply(
                        Change::Put(kind, name.clone(), body),
                        if_match(req).as_ref(),
                        &who,
                    )?;
                    let (v, j) = c.get(kind, &name)?;
                    Ok(ok(if a.created { 201 } else { 200 }, &j, v))
                }
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    let a = c.apply(
                        Change::Delete(kind, name.clone()),
                        if_match(req).as_ref(),
                        &who,
                    )?;
                    Ok(ok(
                        200,
                        &json!({"deleted": name, "version": a.version}),
                        a.version,
                    ))
                }
                _ => Ok(method_not_allowed("GET, PUT, DELETE")),
            }
        }
        ["v1", "services", name, rest @ ..] => {
            let name = decode(name)?;
            crate::release::api::route(shared, req, &name, rest)
        }
        ["v1", "clusters", name, "backends"] => {
            let name = decode(name)?;
            match m {
                "GET" => {
                    let (v, j) = c.get(Kind::Cluster, &name)?;
                    let backends = j.get("backends").cloned().unwrap_or(json!([]));
                    Ok(ok(200, &json!({"version": v, "backends": backends}), v))
                }
                "POST" => {
                    let who = authorize(shared, req)?;
                    let body = body_json(req)?;
                    c.apply(
                        Change::AddBackend {
                            cluster: name.clone(),
                            body,
                        },
                        if_match(req).as_ref(),
                        &who,
                    )?;
                    let (v, j) = c.get(Kind::Cluster, &name)?;
                    Ok(ok(201, &j, v))
                }
                _ => Ok(method_not_allowed("GET, POST")),
            }
        }
        ["v1", "clusters", name, "backends", addr] => {
            let name = decode(name)?;
            let addr = decode(addr)?;
            match m {
                "PATCH" => {
                    let who = authorize(shared, req)?;
                    let body = body_json(req)?;
                    c.apply(
                        Change::PatchBackend {
                            cluster: name.clone(),
                            addr,
                            body,
                        },
                        if_match(req).as_ref(),
                        &who,
                    )?;
                    let (v, j) = c.get(Kind::Cluster, &name)?;
                    Ok(ok(200, &j, v))
                }
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    c.apply(
                        Change::DeleteBackend {
                            cluster: name.clone(),
                            addr,
                        },
                        if_match(req).as_ref(),
                        &who,
                    )?;
                    let (v, j) = c.get(Kind::Cluster, &name)?;
                    Ok(ok(200, &j, v))
                }
                _ => Ok(method_not_allowed("PATCH, DELETE")),
            }
        }
        _ => match crate::faults::api::route(shared, req, &segs) {
            Some(r) => Ok(r),
            None => Err(ApiError::new(
                404,
                "not_found",
                format!("no such endpoint: {path}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_secrets() {
        assert_eq!(decode("127.0.0.1%3A9001").unwrap(), "127.0.0.1:9001");
        assert_eq!(decode("%5B%3A%3A1%5D:80").unwrap(), "[::1]:80");
        assert!(decode("%zz").is_err());
        assert!(decode("%4").is_err());
        assert!(
            decode("%+1").is_err(),
            "from_str_radix takes a sign; a path escape does not"
        );
        assert!(decode("%-1").is_err());
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
