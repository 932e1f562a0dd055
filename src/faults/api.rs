//! The fault APIs on the admin address, all applied through
//! [`crate::control::Control::apply_faults`] (validated whole, nothing half-applied):
//!
//! - ours: `GET/PUT/DELETE /v1/faults`, `PUT/PATCH/DELETE /v1/faults/listeners/{name}`
//!   (`{"enabled":false,"toxics":[...]}`), `POST /v1/faults/listeners/{name}/toxics`,
//!   `DELETE /v1/faults/listeners/{name}/toxics/{toxic}`, `POST /v1/faults/http`,
//!   `DELETE /v1/faults/http/{name}`, `PUT /v1/faults/header/{listener}` (on) and `DELETE`
//!   (off);
//! - toxiproxy 2.x: `/proxies`, `/populate`, `/proxies/{p}`, `/proxies/{p}/toxics[/{t}]`,
//!   `/reset`, `/version`, with its JSON shapes, status codes and errors
//!   (`{"error":"proxy not found","status":404}`);
//! - the chaos broker: `GET/PATCH /broker[?listener=NAME]` and
//!   `PATCH /broker/{duplicate|delete|salt|slowdown|nothing}/percentage` (a bare number).
//!
//! Writes need the admin token when one is configured, as every change does.

use super::{toxic_from_json, toxic_update, BrokerWeights, FaultState, L7Fault, Proxy};
use crate::admin::api::{authorize, error_response};
use crate::admin::{Request, Response, Shared};
use crate::control::doc::{self, Kind};
use crate::control::ApiError;
use serde_json::{json, Map, Value as Json};

/// The toxiproxy version `GET /version` reports (the API level served).
pub const TOXIPROXY_VERSION: &str = "2.12.0";

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_request", msg)
}

fn body(req: &Request) -> Result<Json, ApiError> {
    if req.body.is_empty() {
        return Err(bad("a JSON body is required"));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::new(400, "bad_json", format!("invalid JSON: {e}")))
}

fn method_not_allowed(allow: &'static str) -> Result<Response, ApiError> {
    Ok(error_response(&ApiError::new(
        405,
        "method_not_allowed",
        format!("allowed: {allow}"),
    ))
    .with("Allow", allow.into()))
}

fn query<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    let q = req.path.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// Routes the fault endpoints; `None` when the path is none of them.
pub fn route(shared: &Shared, req: &Request, segs: &[&str]) -> Option<Response> {
    let r = match segs {
        ["v1", "faults", ..] => ours(shared, req, &segs[2..]),
        ["broker", ..] => broker(shared, req, &segs[1..]),
        ["proxies", ..] | ["populate"] | ["reset"] | ["version"] => {
            return Some(toxiproxy(shared, req, segs).unwrap_or_else(|e| toxiproxy_error(&e)))
        }
        _ => return None,
    };
    Some(r.unwrap_or_else(|e| error_response(&e)))
}

fn state_response(status: u16, fs: &FaultState) -> Response {
    Response::json(status, &fs.to_json())
}

fn ours(shared: &Shared, req: &Request, rest: &[&str]) -> Result<Response, ApiError> {
    let c = &shared.control;
    let m = req.method.as_str();
    match rest {
        [] => match m {
            "GET" => Ok(state_response(200, &c.faults())),
            "PUT" => {
                let who = authorize(shared, req)?;
                let new = FaultState::from_json(&body(req)?)?;
                c.apply_faults(&who, "replace all", |fs, _| {
                    // Proxies come and go through the toxiproxy API or with this document.
                    *fs = new;
                    Ok(())
                })?;
                Ok(state_response(200, &c.faults()))
            }
            "DELETE" => {
                let who = authorize(shared, req)?;
                c.apply_faults(&who, "clear all", |fs, _| {
                    let proxies = std::mem::take(&mut fs.proxies);
                    *fs = FaultState {
                        proxies,
                        ..FaultState::default()
                    };
                    Ok(())
                })?;
                Ok(state_response(200, &c.faults()))
            }
            _ => method_not_allowed("GET, PUT, DELETE"),
        },
        ["listeners", name] => {
            let name = name.to_string();
            match m {
                "GET" => {
                    let l = c.faults().listener(&name);
                    Ok(Response::json(200, &listener_json(&l)))
                }
                "PUT" | "PATCH" => {
                    let who = authorize(shared, req)?;
                    let b = body(req)?;
                    let o = b.as_object().ok_or_else(|| bad("expected a JSON object"))?;
                    if let Some(k) = o.keys().find(|k| *k != "enabled" && *k != "toxics") {
                        return Err(ApiError::new(
                            400,
                            "bad_fault",
                            format!("{k}: unknown key (enabled, toxics)"),
                        ));
                    }
                    let put = m == "PUT";
                    c.apply_faults(&who, &format!("listener {name}: {b}"), |fs, _| {
                        let mut l = if put {
                            Default::default()
                        } else {
                            fs.listener(&name)
                        };
                        if let Some(e) = o.get("enabled") {
                            l.enabled = e.as_bool().ok_or_else(|| {
                                ApiError::new(400, "bad_fault", "enabled: expected true or false")
                            })?;
                        }
                        if let Some(t) = o.get("toxics") {
                            let arr = t.as_array().ok_or_else(|| {
                                ApiError::new(400, "bad_fault", "toxics must be a list")
                            })?;
                            l.toxics = arr.iter().map(toxic_from_json).collect::<Result<_, _>>()?;
                        }
                        fs.listeners.insert(name.clone(), l);
                        Ok(())
                    })?;
                    Ok(Response::json(
                        200,
                        &listener_json(&c.faults().listener(&name)),
                    ))
                }
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    c.apply_faults(&who, &format!("listener {name}: cleared"), |fs, _| {
                        fs.listeners.remove(&name);
                        Ok(())
                    })?;
                    Ok(Response::json(
                        200,
                        &listener_json(&c.faults().listener(&name)),
                    ))
                }
                _ => method_not_allowed("GET, PUT, PATCH, DELETE"),
            }
        }
        ["listeners", name, "toxics"] => {
            let name = name.to_string();
            match m {
                "GET" => Ok(Response::json(
                    200,
                    &json!(c
                        .faults()
                        .listener(&name)
                        .toxics
                        .iter()
                        .map(super::Toxic::to_json)
                        .collect::<Vec<_>>()),
                )),
                "POST" => {
                    let who = authorize(shared, req)?;
                    let t = toxic_from_json(&body(req)?)?;
                    let shown = t.to_json();
                    c.apply_faults(
                        &who,
                        &format!("listener {name}: add toxic {}", t.name),
                        |fs, _| add_toxic(fs, &name, t),
                    )?;
                    Ok(Response::json(201, &shown))
                }
                _ => method_not_allowed("GET, POST"),
            }
        }
        ["listeners", name, "toxics", toxic] => {
            let (name, toxic) = (name.to_string(), toxic.to_string());
            match m {
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    c.apply_faults(
                        &who,
                        &format!("listener {name}: remove toxic {toxic}"),
                        |fs, _| remove_toxic(fs, &name, &toxic),
                    )?;
                    Ok(Response::json(200, &json!({"deleted": toxic})))
                }
                _ => method_not_allowed("DELETE"),
            }
        }
        ["http"] => match m {
            "GET" => Ok(Response::json(
                200,
                &json!(c
                    .faults()
                    .http
                    .iter()
                    .map(L7Fault::to_json)
                    .collect::<Vec<_>>()),
            )),
            "POST" => {
                let who = authorize(shared, req)?;
                let f = L7Fault::from_json(&body(req)?)?;
                let shown = f.to_json();
                c.apply_faults(&who, &format!("add http fault {}", f.name), |fs, _| {
                    if fs.http.iter().any(|o| o.name == f.name) {
                        return Err(ApiError::new(
                            409,
                            "exists",
                            format!("an http fault named {:?} exists", f.name),
                        ));
                    }
                    fs.http.push(f);
                    Ok(())
                })?;
                Ok(Response::json(201, &shown))
            }
            _ => method_not_allowed("GET, POST"),
        },
        ["http", name] => {
            let name = name.to_string();
            match m {
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    c.apply_faults(&who, &format!("remove http fault {name}"), |fs, _| {
                        let before = fs.http.len();
                        fs.http.retain(|f| f.name != name);
                        if fs.http.len() == before {
                            return Err(ApiError::new(
                                404,
                                "not_found",
                                format!("no http fault named {name:?}"),
                            ));
                        }
                        Ok(())
                    })?;
                    Ok(Response::json(200, &json!({"deleted": name})))
                }
                _ => method_not_allowed("DELETE"),
            }
        }
        ["header", listener] => {
            let listener = listener.to_string();
            let on = match m {
                "PUT" => true,
                "DELETE" => false,
                _ => return method_not_allowed("PUT, DELETE"),
            };
            let who = authorize(shared, req)?;
            c.apply_faults(
                &who,
                &format!(
                    "x-switchyard-fault on listener {listener}: {}",
                    if on { "on" } else { "off" }
                ),
                |fs, _| {
                    fs.header_faults.retain(|n| *n != listener);
                    if on {
                        fs.header_faults.push(listener.clone());
                    }
                    Ok(())
                },
            )?;
            Ok(Response::json(
                200,
                &json!({"listener": listener, "header_faults": on}),
            ))
        }
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such endpoint: {}", req.path),
        )),
    }
}

/// Adds toxic `t` to listener (or proxy) `name`; `409` when the name is taken.
fn add_toxic(fs: &mut FaultState, name: &str, t: super::Toxic) -> Result<(), ApiError> {
    let l = fs.listeners.entry(name.to_string()).or_default();
    if l.toxics.iter().any(|o| o.name == t.name) {
        return Err(ApiError::new(409, "exists", "toxic already exists"));
    }
    l.toxics.push(t);
    Ok(())
}

fn listener_json(l: &super::ListenerFaults) -> Json {
    json!({"enabled": l.enabled, "toxics": l.toxics.iter().map(super::Toxic::to_json).collect::<Vec<_>>()})
}

fn remove_toxic(fs: &mut FaultState, listener: &str, toxic: &str) -> Result<(), ApiError> {
    let l = fs
        .listeners
        .get_mut(listener)
        .ok_or_else(|| ApiError::new(404, "not_found", "toxic not found"))?;
    let before = l.toxics.len();
    l.toxics.retain(|t| t.name != toxic);
    if l.toxics.len() == before {
        return Err(ApiError::new(404, "not_found", "toxic not found"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------ broker

/// The original's mode names in `PATCH /broker/{mode}/percentage`.
fn broker_key(mode: &str) -> Option<&'static str> {
    Some(match mode {
        "duplicate" => "pDuplicate",
        "delete" => "pDelete",
        "salt" => "pSalt",
        "slowdown" | "slow" => "pSlow",
        "nothing" => "pNothing",
        _ => return None,
    })
}

fn broker(shared: &Shared, req: &Request, rest: &[&str]) -> Result<Response, ApiError> {
    let c = &shared.control;
    let listener = query(req, "listener")
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    let weights = |fs: &FaultState| match &listener {
        Some(l) => fs.broker_by_listener.get(l).copied().unwrap_or(fs.broker),
        None => fs.broker,
    };
    let patch = match (rest, req.method.as_str()) {
        ([], "GET") => return Ok(Response::json(200, &weights(&c.faults()).to_json())),
        ([], "PATCH" | "PUT" | "POST") => body(req)?,
        ([], _) => return method_not_allowed("GET, PATCH"),
        ([mode, "percentage"], "PATCH" | "PUT" | "POST") => {
            let key = broker_key(mode).ok_or_else(|| {
                ApiError::new(
                    404,
                    "not_found",
                    format!("no broker mode {mode:?} (duplicate, delete, salt, slowdown, nothing)"),
                )
            })?;
            let text = std::str::from_utf8(&req.body).unwrap_or("").trim();
            let n: f64 = text.parse().map_err(|_| {
                ApiError::new(
                    400,
                    "bad_fault",
                    format!("expected a bare number as the body, got {text:?}"),
                )
            })?;
            let mut m = Map::new();
            m.insert(key.into(), json!(n));
            Json::Object(m)
        }
        ([_, "percentage"], _) => return method_not_allowed("PATCH"),
        _ => {
            return Err(ApiError::new(
                404,
                "not_found",
                format!("no such endpoint: {}", req.path),
            ))
        }
    };
    let who = authorize(shared, req)?;
    let w = c.apply_faults(&who, &format!("broker {patch}"), |fs, _| {
        let cur = weights(fs);
        let w: BrokerWeights = cur.patch(&patch).map_err(|mut e| {
            e.code = "bad_fault";
            e
        })?;
        match &listener {
            Some(l) => {
                fs.broker_by_listener.insert(l.clone(), w);
            }
            None => fs.broker = w,
        }
        Ok(w)
    })?;
    Ok(Response::json(200, &w.to_json()))
}

// ------------------------------------------------------------------------------ toxiproxy

fn toxiproxy_error(e: &ApiError) -> Response {
    // toxiproxy's messages for the cases its clients look at.
    let msg = match (e.status, e.code) {
        (404, _) if e.message.contains("toxic") => "toxic not found".to_string(),
        (404, _) => "proxy not found".to_string(),
        _ => e.message.clone(),
    };
    Response::json(e.status, &json!({"error": msg, "status": e.status}))
}

fn proxy_json(name: &str, p: &Proxy, fs: &FaultState) -> Json {
    let l = fs.listener(name);
    json!({
        "name": name,
        "listen": p.listen,
        "upstream": p.upstream,
        "enabled": l.enabled,
        "toxics": l.toxics.iter().map(super::Toxic::to_json).collect::<Vec<_>>(),
    })
}

fn not_found_proxy() -> ApiError {
    ApiError::new(404, "not_found", "proxy not found")
}

/// toxiproxy accepts host names in `listen` (`localhost:26379`); listeners bind addresses.
fn listen_addr(s: &str) -> String {
    if s.is_empty() {
        return "127.0.0.1:0".into();
    }
    match s.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_string(),
    }
}

/// A proxy from toxiproxy's JSON: `(name, proxy, enabled)`.
fn proxy_input(v: &Json) -> Result<(String, Proxy, bool), ApiError> {
    let o = v.as_object().ok_or_else(|| {
        ApiError::new(
            400,
            "bad_request",
            "bad request body: expected a JSON object",
        )
    })?;
    let s = |k: &str| o.get(k).and_then(Json::as_str).unwrap_or("").to_string();
    let name = s("name");
    if name.is_empty() {
        return Err(ApiError::new(
            400,
            "bad_request",
            "missing required field: name",
        ));
    }
    super::check_name(&name, "proxy name")?;
    let upstream = s("upstream");
    if upstream.is_empty() {
        return Err(ApiError::new(
            400,
            "bad_request",
            "missing required field: upstream",
        ));
    }
    let enabled = match o.get("enabled") {
        None => true,
        Some(Json::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::new(
                400,
                "bad_request",
                format!("bad request body: enabled: {other}"),
            ))
        }
    };
    Ok((
        name,
        Proxy {
            listen: listen_addr(&s("listen")),
            upstream,
        },
        enabled,
    ))
}

/// A proxy's name may not be taken by the operator's listeners or clusters.
fn taken(d: &toml::Table, name: &str) -> bool {
    doc::find(d, Kind::Listener, name).is_some() || doc::find(d, Kind::Cluster, name).is_some()
}

fn add_proxy(
    fs: &mut FaultState,
    d: &toml::Table,
    name: &str,
    p: Proxy,
    enabled: bool,
) -> Result<(), ApiError> {
    if taken(d, name) {
        return Err(ApiError::new(409, "exists", "proxy already exists"));
    }
    fs.proxies.insert(name.to_string(), p);
    let l = fs.listeners.entry(name.to_string()).or_default();
    l.enabled = enabled;
    Ok(())
}

fn toxiproxy(shared: &Shared, req: &Request, segs: &[&str]) -> Result<Response, ApiError> {
    let c = &shared.control;
    let m = req.method.as_str();
    let proxies_map = |fs: &FaultState| -> Json {
        let mut out = Map::new();
        for (n, p) in &fs.proxies {
            out.insert(n.clone(), proxy_json(n, p, fs));
        }
        Json::Object(out)
    };
    match segs {
        ["version"] => match m {
            "GET" => Ok(Response::json(
                200,
                &json!({ "version": TOXIPROXY_VERSION }),
            )),
            _ => method_not_allowed("GET"),
        },
        ["reset"] => match m {
            "POST" => {
                let who = authorize(shared, req)?;
                c.apply_faults(&who, "toxiproxy reset", |fs, _| {
                    let names: Vec<String> = fs.proxies.keys().cloned().collect();
                    for n in names {
                        fs.listeners.insert(n, Default::default());
                    }
                    Ok(())
                })?;
                Ok(no_content())
            }
            _ => method_not_allowed("POST"),
        },
        ["proxies"] => match m {
            "GET" => Ok(Response::json(200, &proxies_map(&c.faults()))),
            "POST" => {
                let who = authorize(shared, req)?;
                let (name, p, enabled) = proxy_input(&body(req)?)?;
                c.apply_faults(&who, &format!("toxiproxy create proxy {name}"), |fs, d| {
                    if fs.proxies.contains_key(&name) {
                        return Err(ApiError::new(409, "exists", "proxy already exists"));
                    }
                    add_proxy(fs, d, &name, p, enabled)
                })?;
                let fs = c.faults();
                let p = fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                Ok(Response::json(201, &proxy_json(&name, p, &fs)))
            }
            _ => method_not_allowed("GET, POST"),
        },
        ["populate"] => match m {
            "POST" => {
                let who = authorize(shared, req)?;
                let b = body(req)?;
                let list = match &b {
                    Json::Array(a) => a.clone(),
                    // Some clients send {"proxies": [...]}.
                    Json::Object(o) => match o.get("proxies") {
                        Some(Json::Array(a)) => a.clone(),
                        _ => return Err(bad("bad request body: expected a list of proxies")),
                    },
                    _ => return Err(bad("bad request body: expected a list of proxies")),
                };
                let inputs = list
                    .iter()
                    .map(proxy_input)
                    .collect::<Result<Vec<_>, _>>()?;
                let names: Vec<String> = inputs.iter().map(|(n, ..)| n.clone()).collect();
                c.apply_faults(
                    &who,
                    &format!("toxiproxy populate {}", names.join(",")),
                    |fs, d| {
                        for (name, p, enabled) in inputs {
                            match fs.proxies.get(&name) {
                                // Same proxy: kept as it is (its toxics too), enabled as asked.
                                Some(old)
                                    if old.upstream == p.upstream
                                        && (listen_addr(&p.listen) == old.listen
                                            || p.listen.ends_with(":0")) =>
                                {
                                    fs.listeners.entry(name.clone()).or_default().enabled = enabled;
                                }
                                Some(_) => {
                                    fs.proxies.insert(name.clone(), p);
                                    fs.listeners.insert(
                                        name.clone(),
                                        super::ListenerFaults {
                                            enabled,
                                            toxics: Vec::new(),
                                        },
                                    );
                                }
                                None => add_proxy(fs, d, &name, p, enabled)?,
                            }
                        }
                        Ok(())
                    },
                )?;
                let fs = c.faults();
                let out: Vec<Json> = names
                    .iter()
                    .filter_map(|n| fs.proxies.get(n).map(|p| proxy_json(n, p, &fs)))
                    .collect();
                Ok(Response::json(201, &json!({ "proxies": out })))
            }
            _ => method_not_allowed("POST"),
        },
        ["proxies", name] => {
            let name = name.to_string();
            match m {
                "GET" => {
                    let fs = c.faults();
                    let p = fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                    Ok(Response::json(200, &proxy_json(&name, p, &fs)))
                }
                "POST" | "PATCH" => {
                    let who = authorize(shared, req)?;
                    let b = body(req)?;
                    let o = b
                        .as_object()
                        .ok_or_else(|| bad("bad request body: expected a JSON object"))?
                        .clone();
                    c.apply_faults(
                        &who,
                        &format!("toxiproxy update proxy {name}: {b}"),
                        |fs, _| {
                            let p = fs.proxies.get_mut(&name).ok_or_else(not_found_proxy)?;
                            if let Some(l) = o.get("listen").and_then(Json::as_str) {
                                p.listen = listen_addr(l);
                            }
                            if let Some(u) = o.get("upstream").and_then(Json::as_str) {
                                if u.is_empty() {
                                    return Err(bad("missing required field: upstream"));
                                }
                                p.upstream = u.to_string();
                            }
                            if let Some(e) = o.get("enabled") {
                                let e = e
                                    .as_bool()
                                    .ok_or_else(|| bad("bad request body: enabled"))?;
                                fs.listeners.entry(name.clone()).or_default().enabled = e;
                            }
                            Ok(())
                        },
                    )?;
                    let fs = c.faults();
                    let p = fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                    Ok(Response::json(200, &proxy_json(&name, p, &fs)))
                }
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    c.apply_faults(&who, &format!("toxiproxy delete proxy {name}"), |fs, _| {
                        fs.proxies.remove(&name).ok_or_else(not_found_proxy)?;
                        fs.listeners.remove(&name);
                        Ok(())
                    })?;
                    Ok(no_content())
                }
                _ => method_not_allowed("GET, POST, PATCH, DELETE"),
            }
        }
        ["proxies", name, "toxics"] => {
            let name = name.to_string();
            match m {
                "GET" => {
                    let fs = c.faults();
                    fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                    let l = fs.listener(&name);
                    Ok(Response::json(
                        200,
                        &json!(l
                            .toxics
                            .iter()
                            .map(super::Toxic::to_json)
                            .collect::<Vec<_>>()),
                    ))
                }
                "POST" => {
                    let who = authorize(shared, req)?;
                    if !c.faults().proxies.contains_key(&name) {
                        return Err(not_found_proxy());
                    }
                    let t = toxic_from_json(&body(req)?)?;
                    let shown = t.to_json();
                    c.apply_faults(
                        &who,
                        &format!("toxiproxy {name}: add toxic {}", t.name),
                        |fs, _| {
                            fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                            add_toxic(fs, &name, t)
                        },
                    )?;
                    Ok(Response::json(200, &shown))
                }
                _ => method_not_allowed("GET, POST"),
            }
        }
        ["proxies", name, "toxics", toxic] => {
            let (name, toxic) = (name.to_string(), toxic.to_string());
            let find = |fs: &FaultState| -> Result<super::Toxic, ApiError> {
                fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                fs.listener(&name)
                    .toxics
                    .into_iter()
                    .find(|t| t.name == toxic)
                    .ok_or_else(|| ApiError::new(404, "not_found", "toxic not found"))
            };
            match m {
                "GET" => Ok(Response::json(200, &find(&c.faults())?.to_json())),
                "POST" | "PATCH" => {
                    let who = authorize(shared, req)?;
                    let b = body(req)?;
                    let updated = c.apply_faults(
                        &who,
                        &format!("toxiproxy {name}: update toxic {toxic}: {b}"),
                        |fs, _| {
                            let old = find(fs)?;
                            let t = toxic_update(&old, &b)?;
                            let l = fs.listeners.entry(name.clone()).or_default();
                            for x in l.toxics.iter_mut().filter(|x| x.name == toxic) {
                                *x = t.clone();
                            }
                            Ok(t)
                        },
                    )?;
                    Ok(Response::json(200, &updated.to_json()))
                }
                "DELETE" => {
                    let who = authorize(shared, req)?;
                    c.apply_faults(
                        &who,
                        &format!("toxiproxy {name}: remove toxic {toxic}"),
                        |fs, _| {
                            fs.proxies.get(&name).ok_or_else(not_found_proxy)?;
                            remove_toxic(fs, &name, &toxic)
                        },
                    )?;
                    Ok(no_content())
                }
                _ => method_not_allowed("GET, POST, PATCH, DELETE"),
            }
        }
        _ => Err(ApiError::new(404, "not_found", "not found")),
    }
}

fn no_content() -> Response {
    Response {
        status: 204,
        content_type: "application/json",
        headers: Vec::new(),
        body: Vec::new(),
    }
}
