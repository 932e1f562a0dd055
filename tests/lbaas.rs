//! The load-balancer-as-a-service API (compat.md §4) over real sockets: the seed's JSON
//! shapes from project to instance to traffic through the instance's own port; health
//! criteria taking an entity down and back; an update that keeps live connections; every
//! 4xx the API gives (400 401 403 404 405 408 409 411 413 422 429 431, each with its body);
//! the admin token; restore after `kill -9` on the same ports; and a node that starts with no
//! listeners at all.
//!
//! Each test takes its own `[lbaas] port_range`, so tests running side by side never race
//! for a port.

mod util;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use util::client::{call, call_h, Resp};
use util::*;

fn lb(admin: SocketAddr, path: &str, body: &Value) -> Resp {
    call(admin, "POST", path, Some(&body.to_string()))
}

/// A successful call: `200 {"status":"successful", ...}`; returns `info`.
fn ok(admin: SocketAddr, path: &str, body: Value) -> Value {
    let r = lb(admin, path, &body);
    let v = r.json();
    assert_eq!(
        (r.status, v["status"].as_str()),
        (200, Some("successful")),
        "{body} -> {}",
        r.text()
    );
    assert_eq!(v["action"], body["action"], "{v}");
    v["info"].clone()
}

/// A failed call: the status, `"status":"fail"`, and the error code.
fn fails(admin: SocketAddr, path: &str, body: &str, status: u16, code: &str) -> Value {
    let r = call(admin, "POST", path, Some(body));
    let v = r.json();
    assert_eq!(r.status, status, "{body} -> {}", r.text());
    assert_eq!(v["status"], "fail", "{v}");
    assert_eq!(v["error"]["code"], code, "{body} -> {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

/// A failure in the LBaaS shape, all of it: status, `action`, `type`, code, message (the
/// same at the top and in `error`) and field.
fn exact_fail(
    r: &Resp,
    status: u16,
    (action, kind): (Option<&str>, Option<&str>),
    code: &str,
    message: &str,
    field: Option<&str>,
) {
    let v = r.json();
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        v,
        json!({"status": "fail", "action": action, "type": kind, "message": message,
               "error": {"code": code, "message": message, "field": field}}),
        "status {status}"
    );
}

/// Sends `req` as is on a new connection and reads the answer to the end (the admin server
/// closes after these errors): status, headers, body.
fn raw(addr: SocketAddr, req: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (and close) before it has read all of a refused request.
    let _ = s.write_all(req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// Project `p` of user `u`.
fn project_p(admin: SocketAddr) {
    ok(
        admin,
        "/lbaas",
        json!({"action": "create", "type": "project", "info": {"name": "p", "user": "u"}}),
    );
}

/// Creates an instance; returns its view.
fn new_instance(admin: SocketAddr, info: Value) -> Value {
    ok(
        admin,
        "/lbaas",
        json!({"action": "create", "type": "instance", "info": info}),
    )
}

fn node(range: &str, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nworkers = 2\n{extra}\n[lbaas]\nport_range = \"{range}\"\n"
    ))
}

fn demo_at(id: &str, listen: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", listen, "--id", id],
        &["demo-backend"],
    )
}

fn get_body(addr: SocketAddr) -> String {
    call(addr, "GET", "/", None).text().trim_end().to_string()
}

fn instance_info(admin: SocketAddr, id: u64) -> Value {
    ok(
        admin,
        "/LB/instance/",
        json!({"action": "info", "info": {"id": id}}),
    )
}

fn entity_state(info: &Value, entity: &str) -> String {
    info["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == entity)
        .and_then(|e| e["state"].as_str())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn lifecycle_with_the_seed_shapes() {
    let a = demo_at("A", "127.0.0.1:0");
    let b = demo_at("B", "127.0.0.1:0");
    let (ea, eb) = (a.addr("demo-backend"), b.addr("demo-backend"));
    let p = node("21100-21149", "");
    let admin = p.addr("admin");

    // Projects: the seed's Project object, through both paths.
    let proj = ok(
        admin,
        "/lbaas",
        json!({"action": "create", "type": "project",
               "info": {"type": "project", "user": "john", "name": "john's project", "instances": []}}),
    );
    assert_eq!(proj["name"], "john's project");
    assert_eq!(proj["user"], "john");
    assert_eq!(proj["instances"], json!([]));
    let pid = proj["id"].as_u64().expect("project id");
    let other = ok(
        admin,
        "/LB/project/",
        json!({"action": "create", "info": {"user": "mary", "name": "mary's"}}),
    );
    assert_ne!(other["id"].as_u64(), Some(pid));
    let mine = ok(
        admin,
        "/LB/project/",
        json!({"action": "list", "info": {"user": "john"}}),
    );
    assert_eq!(mine["projects"].as_array().unwrap().len(), 1, "{mine}");
    let renamed = ok(
        admin,
        "/lbaas",
        json!({"action": "update", "type": "project", "info": {"id": pid, "name": "shop", "user": "johnny"}}),
    );
    assert_eq!(
        (renamed["name"].as_str(), renamed["user"].as_str()),
        (Some("shop"), Some("johnny"))
    );

    // An instance: the seed's Instance object with its health check.
    let inst = ok(
        admin,
        "/LB/instance/",
        json!({"action": "create", "info": {
        "type": "instance", "project": "shop", "name": "web", "traffic_type": "http",
        "subnet": "127.0.0.0/8",
        "backend": {
            "entities": [ea.to_string(), eb.to_string()],
            "health-check": {"protocol": "HTTP", "request-path": "/health",
                             "criteria": {"interval": 1, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}},
            "auto-scaling": false
        }}}),
    );
    let id = inst["id"].as_u64().expect("instance id");
    assert_eq!(inst["name"], "web");
    assert_eq!(inst["project"], "shop");
    assert_eq!(inst["traffic_type"], "http");
    // Entities are out of rotation until their first check, which runs at once.
    for e in inst["entities"].as_array().unwrap() {
        assert!(e["state"] == "unknown" || e["state"] == "up", "{inst}");
    }
    wait_until(Duration::from_secs(5), "the instance healthy", || {
        instance_info(admin, inst["id"].as_u64().unwrap())["status"] == "healthy"
    });
    let inst = instance_info(admin, inst["id"].as_u64().unwrap());
    assert_eq!(inst["subnet"], "127.0.0.0/8");
    assert_eq!(
        inst["backend"]["health-check"]["criteria"]["unhealth-threshold"],
        2
    );
    let address: SocketAddr = inst["address"].as_str().unwrap().parse().unwrap();
    assert!((21100..=21149).contains(&address.port()), "{address}");
    assert_eq!(inst["backend"]["entities"].as_array().unwrap().len(), 2);
    for e in inst["entities"].as_array().unwrap() {
        assert_eq!(e["state"], "up", "{inst}");
    }

    // Real traffic, balanced over both entities.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(get_body(address));
    }
    assert_eq!(seen, ["A".to_string(), "B".to_string()].into(), "{seen:?}");
    // It is an ordinary listener and cluster underneath.
    let l = call(admin, "GET", &format!("/v1/listeners/lbaas-{id}"), None).json();
    assert_eq!(l["protocol"], "http");
    let c = call(admin, "GET", &format!("/v1/clusters/lbaas-{id}"), None).json();
    assert_eq!(c["health"]["protocol"], "http", "{c}");

    // Info by project and name; list; the project shows its instance.
    let same = ok(
        admin,
        "/lbaas",
        json!({"action": "info", "type": "instance", "info": {"project": "shop", "name": "web"}}),
    );
    assert_eq!(same["id"].as_u64(), Some(id));
    let list = ok(
        admin,
        "/LB/instance/",
        json!({"action": "list", "info": {"project": pid}}),
    );
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    let proj = ok(
        admin,
        "/LB/project/",
        json!({"action": "info", "info": {"id": pid}}),
    );
    assert_eq!(
        proj["instances"][0]["address"],
        address.to_string(),
        "{proj}"
    );
    // A GET with a JSON body works as in the seed; a GET without one lists.
    let r = call(
        admin,
        "GET",
        "/LB/instance/",
        Some(&json!({"action": "info", "info": {"id": id}}).to_string()),
    );
    assert_eq!(r.json()["info"]["id"].as_u64(), Some(id));
    let r = call(admin, "GET", "/LB/project/", None);
    assert_eq!(r.json()["action"], "list", "{}", r.text());

    // A backend added through the admin API (as a scaling hook does) is an entity.
    let c = demo_at("C", "127.0.0.1:0");
    let ec = c.addr("demo-backend");
    let r = call(
        admin,
        "POST",
        &format!("/v1/clusters/lbaas-{id}/backends"),
        Some(&json!({"addr": ec.to_string()}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let info = instance_info(admin, id);
    assert_eq!(
        info["backend"]["entities"].as_array().unwrap().len(),
        3,
        "{info}"
    );
    // The LBaaS API owns the listener: the admin API may not delete it.
    let r = call(admin, "DELETE", &format!("/v1/listeners/lbaas-{id}"), None);
    assert_eq!(
        (r.status, r.code()),
        (409, "managed".to_string()),
        "{}",
        r.text()
    );

    // Delete: the instance's port closes, the project can go.
    let del = ok(
        admin,
        "/LB/instance/",
        json!({"action": "delete", "info": {"project": "shop", "name": "web"}}),
    );
    assert_eq!(del["deleted"], true);
    wait_until(Duration::from_secs(5), "the instance port closes", || {
        TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err()
    });
    assert_eq!(
        call(admin, "GET", &format!("/v1/clusters/lbaas-{id}"), None).status,
        404
    );
    ok(
        admin,
        "/LB/project/",
        json!({"action": "delete", "info": {"name": "shop"}}),
    );
    let all = ok(admin, "/LB/project/", json!({"action": "list"}));
    assert_eq!(all["projects"].as_array().unwrap().len(), 1, "{all}");
}

#[test]
fn health_criteria_take_an_entity_down_and_back() {
    let a = demo_at("A", "127.0.0.1:0");
    let ea = a.addr("demo-backend");
    let b = demo_at("B", "127.0.0.1:0");
    let eb = b.addr("demo-backend");
    let p = node("21150-21159", "");
    let admin = p.addr("admin");
    project_p(admin);
    // Criteria in seconds as the seed writes them (fractions allowed).
    let inst = new_instance(
        admin,
        json!({
            "project": "p", "name": "i", "traffic_type": "http",
            "backend": {"entities": [ea.to_string(), eb.to_string()],
                        "health-check": {"protocol": "HTTP", "request-path": "/health",
                                         "criteria": {"interval": 0.2, "timeout": 0.2,
                                                      "health-threshold": 2, "unhealth-threshold": 3}}}}),
    );
    let id = inst["id"].as_u64().unwrap();
    let address: SocketAddr = inst["address"].as_str().unwrap().parse().unwrap();
    let (sa, sb) = (ea.to_string(), eb.to_string());
    wait_until(
        Duration::from_secs(5),
        "both entities checked and up",
        || {
            let i = instance_info(admin, id);
            entity_state(&i, &sa) == "up" && entity_state(&i, &sb) == "up"
        },
    );

    // B dies: after unhealth-threshold failed checks it is down; the instance stays healthy.
    drop(b);
    let t0 = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "entity B down", || {
        entity_state(&instance_info(admin, id), &sb) == "down"
    });
    let took = t0.elapsed();
    // 3 failures 0.2 s apart: not before ~0.4 s.
    assert!(took >= Duration::from_millis(350), "down after {took:?}");
    let info = instance_info(admin, id);
    assert_eq!(info["status"], "healthy", "{info}");
    assert_eq!(info["entities_up"], 1);
    let last = info["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == sb.as_str())
        .unwrap()["last_check"]
        .clone();
    assert_eq!(last["ok"], false, "{info}");
    for _ in 0..10 {
        assert_eq!(get_body(address), "A", "traffic avoids the down entity");
    }

    // A dies too: the instance is unhealthy.
    drop(a);
    wait_until(Duration::from_secs(5), "instance unhealthy", || {
        instance_info(admin, id)["status"] == "unhealthy"
    });
    assert_eq!(entity_state(&instance_info(admin, id), &sa), "down");

    // B comes back on its port: health-threshold good checks bring it up again.
    let _b2 = demo_at("B2", &sb);
    wait_until(Duration::from_secs(5), "entity B up again", || {
        entity_state(&instance_info(admin, id), &sb) == "up"
    });
    assert_eq!(instance_info(admin, id)["status"], "healthy");
    wait_until(Duration::from_secs(5), "traffic reaches B2", || {
        get_body(address) == "B2"
    });
}

/// Reads one echo of `msg` on `s`.
fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn an_update_replaces_entities_and_criteria_without_dropping_connections() {
    let old = Backend::echo();
    let new = Backend::echo();
    let p = node("21160-21169", "");
    let admin = p.addr("admin");
    project_p(admin);
    let inst = new_instance(
        admin,
        json!({
            "project": "p", "name": "tcp", "traffic_type": "tcp",
            "backend": {"entities": [old.addr.to_string()]}}),
    );
    let id = inst["id"].as_u64().unwrap();
    let address: SocketAddr = inst["address"].as_str().unwrap().parse().unwrap();
    // Without a health-check, the seed's criteria on a TCP check.
    assert_eq!(
        inst["backend"]["health-check"],
        json!({"protocol": "TCP", "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}})
    );

    let mut live: Vec<TcpStream> = (0..4).map(|_| connect(address)).collect();
    for s in &mut live {
        echo(s, b"before\n");
    }
    // (Health checks open connections too, but never send bytes: count bytes. The backend
    // counts a write just after making it: wait for the count.)
    let written = |b: &Backend, n: u64| {
        wait_until(Duration::from_secs(5), "the echo counted", || {
            b.written() == n
        })
    };
    let before = 4 * 7;
    written(&old, before);

    let up = ok(
        admin,
        "/lbaas",
        json!({"action": "update", "type": "instance", "info": {
            "id": id,
            "backend": {"entities": [new.addr.to_string()],
                        "health-check": {"protocol": "TCP", "criteria": {"interval": 2, "timeout": 1}}}}}),
    );
    assert_eq!(up["backend"]["entities"], json!([new.addr.to_string()]));
    assert_eq!(up["backend"]["health-check"]["criteria"]["interval"], 2);
    assert_eq!(up["address"], address.to_string(), "same port");
    let c = call(admin, "GET", &format!("/v1/clusters/lbaas-{id}"), None).json();
    assert_eq!(c["health"]["interval"], "2000ms", "{c}");
    // The live connections carry on, still to the old entity.
    for s in &mut live {
        echo(s, b"after the update\n");
    }
    written(&old, before + 4 * 17);
    assert!(old.active() >= 4);
    // New connections go to the new entity.
    let mut fresh = connect(address);
    echo(&mut fresh, b"new\n");
    written(&new, 4);
    assert_eq!(old.written(), before + 4 * 17);
    // traffic_type can change too, on the same port.
    let up = ok(
        admin,
        "/lbaas",
        json!({"action": "update", "type": "instance", "info": {"id": id, "traffic_type": "http", "name": "renamed"}}),
    );
    assert_eq!(
        (up["traffic_type"].as_str(), up["name"].as_str()),
        (Some("http"), Some("renamed"))
    );
    for s in &mut live {
        echo(s, b"still here\n");
    }
    drop(live);
    drop(fresh);
}

#[test]
fn every_4xx() {
    let be = Backend::echo();
    // A range of one port: the second instance finds none free.
    let p = node("21170-21170", "admin_max_body = \"4KiB\"");
    let admin = p.addr("admin");
    // 408: a body that never comes whole. The server waits 10 s for it; meanwhile the rest.
    let slow = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let r = raw(
            admin,
            b"POST /LB/instance/ HTTP/1.1\r\nHost: lb\r\nContent-Length: 100\r\n\r\n{\"action\":",
        );
        (r, started.elapsed())
    });
    let e = be.addr.to_string();
    let create_instance = |name: &str, entities: Value, extra: Value| {
        let mut info = json!({"project": "p", "name": name, "traffic_type": "tcp",
                              "backend": {"entities": entities}});
        if let (Value::Object(i), Value::Object(x)) = (&mut info, extra) {
            for (k, v) in x {
                if k == "backend" {
                    for (bk, bv) in v.as_object().unwrap() {
                        i["backend"][bk] = bv.clone();
                    }
                } else {
                    i.insert(k, v);
                }
            }
        }
        json!({"action": "create", "type": "instance", "info": info}).to_string()
    };

    // 400: the envelope.
    fails(admin, "/lbaas", "{not json", 400, "bad_json");
    fails(admin, "/lbaas", "[1,2]", 400, "bad_request");
    fails(
        admin,
        "/lbaas",
        r#"{"type":"project","info":{}}"#,
        400,
        "bad_request",
    );
    fails(
        admin,
        "/lbaas",
        r#"{"action":"create","info":{}}"#,
        400,
        "bad_request",
    );
    fails(
        admin,
        "/lbaas",
        r#"{"action":"explode","type":"project"}"#,
        400,
        "bad_request",
    );
    fails(
        admin,
        "/lbaas",
        r#"{"action":"list","type":"vm"}"#,
        400,
        "bad_request",
    );
    fails(
        admin,
        "/lbaas",
        r#"{"action":"list","type":"project","extra":1}"#,
        400,
        "bad_request",
    );
    fails(
        admin,
        "/lbaas",
        r#"{"action":"list","type":"project","info":[]}"#,
        400,
        "bad_request",
    );
    fails(
        admin,
        "/LB/project/",
        r#"{"action":"list","type":"instance"}"#,
        400,
        "bad_request",
    );
    let v = call(admin, "POST", "/lbaas", None);
    assert_eq!(v.status, 400, "{}", v.text());
    // 405.
    let r = call(admin, "PUT", "/lbaas", Some("{}"));
    exact_fail(
        &r,
        405,
        (None, None),
        "method_not_allowed",
        "PUT is not allowed here (use POST)",
        None,
    );
    assert_eq!(r.header("allow"), Some("POST, GET"));
    let r = call(admin, "DELETE", "/LB/project/", None);
    exact_fail(
        &r,
        405,
        (None, Some("project")),
        "method_not_allowed",
        "DELETE is not allowed here (use POST)",
        None,
    );

    // Refused before the body is read, still in the LBaaS shape: 411, 413, 431.
    let r = call_h(
        admin,
        "POST",
        "/LB/project/",
        &[("Transfer-Encoding", "chunked")],
        None,
    );
    exact_fail(
        &r,
        411,
        (None, Some("project")),
        "length_required",
        "send the body with Content-Length (chunked bodies are not accepted here)",
        None,
    );
    let big = json!({"action": "create", "type": "project",
                     "info": {"name": "big", "user": "x".repeat(5000)}})
    .to_string();
    let r = raw(
        admin,
        format!(
            "POST /lbaas HTTP/1.1\r\nHost: lb\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    );
    exact_fail(
        &r,
        413,
        (None, None),
        "body_too_large",
        &format!(
            "request body of {} bytes exceeds admin_max_body (4096 bytes)",
            big.len()
        ),
        None,
    );
    let huge = "y".repeat(70 * 1024);
    let r = raw(
        admin,
        format!("GET /LB/instance/?verbose=1 HTTP/1.1\r\nHost: lb\r\nX-Padding: {huge}\r\n\r\n")
            .as_bytes(),
    );
    exact_fail(
        &r,
        431,
        (None, Some("instance")),
        "head_too_large",
        "request head over 64KiB",
        None,
    );
    // Nothing was made of them.
    let l = ok(
        admin,
        "/lbaas",
        json!({"action": "list", "type": "project"}),
    );
    assert_eq!(l["projects"], json!([]));

    // 422: invalid fields, each named.
    let v = fails(
        admin,
        "/LB/project/",
        r#"{"action":"create","info":{"name":"p"}}"#,
        422,
        "invalid",
    );
    assert_eq!(v["error"]["field"], "info.user");
    let v = fails(
        admin,
        "/LB/project/",
        r#"{"action":"create","info":{"name":"p","user":"u","colour":"red"}}"#,
        422,
        "invalid",
    );
    assert_eq!(v["error"]["field"], "info.colour");
    ok(
        admin,
        "/LB/project/",
        json!({"action": "create", "info": {"name": "p", "user": "u"}}),
    );
    for (body, field) in [
        (
            create_instance("i", json!(["10.0.0.1/24"]), json!({})),
            "info.backend.entities[0]",
        ),
        (
            create_instance("i", json!([]), json!({})),
            "info.backend.entities",
        ),
        (
            create_instance("i", json!([e]), json!({"traffic_type": "udp"})),
            "info.traffic_type",
        ),
        (
            create_instance(
                "i",
                json!([e]),
                json!({"backend": {"health-check": {"criteria": {"interval": 1, "timeout": 3}}}}),
            ),
            "info.backend.health-check.criteria.timeout",
        ),
        (
            create_instance(
                "i",
                json!([e]),
                json!({"backend": {"health-check": {"protocol": "ICMP"}}}),
            ),
            "info.backend.health-check.protocol",
        ),
        (
            create_instance("i", json!([e]), json!({"backend": {"auto-scaling": true}})),
            "info.backend.auto-scaling",
        ),
        (
            create_instance(
                "i",
                json!([e]),
                json!({"backend": {"auto-scaling": {"hook": "/bin/sh", "scale_up_above": 1, "scale_down_below": 0}}}),
            ),
            "info.backend.auto-scaling.hook",
        ),
        (
            create_instance(
                "i",
                json!([e]),
                json!({"backend": {"auto-scaling": {"webhook": "http://127.0.0.1:9/", "scale_up_above": 1, "scale_down_below": 5}}}),
            ),
            "info.backend.auto-scaling.scale_down_below",
        ),
        (
            create_instance("i", json!([e]), json!({"subnet": "10.0.0.0/8"})),
            "info.backend.entities",
        ),
        (
            create_instance("i", json!([e]), json!({"port": 80})),
            "info.port",
        ),
        (
            create_instance("i", json!([e]), json!({"backend": {"sizes": 1}})),
            "info.backend.sizes",
        ),
    ] {
        let v = fails(admin, "/lbaas", &body, 422, "invalid");
        assert_eq!(v["error"]["field"], field, "{body} -> {v}");
    }
    // Nothing half-made by the failures.
    let l = ok(
        admin,
        "/lbaas",
        json!({"action": "list", "type": "instance"}),
    );
    assert_eq!(l["instances"], json!([]));
    assert_eq!(
        call(admin, "GET", "/v1/listeners", None).json()["listeners"],
        json!([])
    );

    // 404.
    let v = fails(
        admin,
        "/lbaas",
        &create_instance("i", json!([e]), json!({"project": "nope"})),
        404,
        "not_found",
    );
    assert_eq!(v["error"]["field"], "info.project");
    fails(
        admin,
        "/LB/instance/",
        r#"{"action":"info","info":{"id":99}}"#,
        404,
        "not_found",
    );
    fails(
        admin,
        "/LB/instance/",
        r#"{"action":"delete","info":{"project":"p","name":"x"}}"#,
        404,
        "not_found",
    );
    fails(
        admin,
        "/LB/project/",
        r#"{"action":"info","info":{"name":"x"}}"#,
        404,
        "not_found",
    );
    fails(
        admin,
        "/LB/project/",
        r#"{"action":"update","info":{"id":42,"user":"v"}}"#,
        404,
        "not_found",
    );

    // 409.
    fails(
        admin,
        "/LB/project/",
        r#"{"action":"create","info":{"name":"p","user":"v"}}"#,
        409,
        "exists",
    );
    // port_in_use: the port asked for is held by another program; with none asked for,
    // the range has no free port.
    let holder = std::net::TcpListener::bind("127.0.0.1:21170").expect("port 21170 free");
    let in_use = |r: &Resp| {
        exact_fail(
            r,
            409,
            (Some("create"), Some("instance")),
            "port_in_use",
            "port 21170 is already in use",
            Some("info.port"),
        )
    };
    in_use(&call(
        admin,
        "POST",
        "/lbaas",
        Some(&create_instance("i", json!([e]), json!({"port": 21170}))),
    ));
    exact_fail(
        &call(
            admin,
            "POST",
            "/lbaas",
            Some(&create_instance("i", json!([e]), json!({}))),
        ),
        409,
        (Some("create"), Some("instance")),
        "no_free_port",
        "no free port left in [lbaas] port_range (21170-21170) on 127.0.0.1",
        None,
    );
    drop(holder);
    let i = ok(
        admin,
        "/lbaas",
        serde_json::from_str(&create_instance("i", json!([e]), json!({"port": 21170}))).unwrap(),
    );
    assert_eq!(i["address"], "127.0.0.1:21170", "{i}");
    // Held by an instance of this node now.
    in_use(&call(
        admin,
        "POST",
        "/LB/instance/",
        Some(&create_instance("j", json!([e]), json!({"port": 21170}))),
    ));
    fails(
        admin,
        "/lbaas",
        &create_instance("i", json!([e]), json!({})),
        409,
        "exists",
    );
    fails(
        admin,
        "/lbaas",
        &create_instance("j", json!([e]), json!({})),
        409,
        "no_free_port",
    );
    fails(
        admin,
        "/LB/project/",
        r#"{"action":"delete","info":{"name":"p"}}"#,
        409,
        "has_instances",
    );
    // Forced, the project goes with its instances.
    let d = ok(
        admin,
        "/LB/project/",
        json!({"action": "delete", "info": {"name": "p", "force": true}}),
    );
    assert_eq!(d["instances_deleted"].as_array().unwrap().len(), 1);
    assert_eq!(
        call(admin, "GET", "/v1/listeners", None).json()["listeners"],
        json!([])
    );

    // 403: a read-only admin API refuses every change; reads stay open.
    let ro = node("21190-21194", "admin_read_only = true");
    let ro_admin = ro.addr("admin");
    let create_p =
        json!({"action": "create", "type": "project", "info": {"name": "p", "user": "u"}})
            .to_string();
    exact_fail(
        &call(ro_admin, "POST", "/lbaas", Some(&create_p)),
        403,
        (Some("create"), Some("project")),
        "read_only",
        "this admin API is read-only (admin_read_only, or quick mode on a public address)",
        None,
    );
    exact_fail(
        &call(
            ro_admin,
            "POST",
            "/LB/instance/",
            Some(r#"{"action":"delete","info":{"id":1}}"#),
        ),
        403,
        (Some("delete"), Some("instance")),
        "read_only",
        "this admin API is read-only (admin_read_only, or quick mode on a public address)",
        None,
    );
    let l = ok(
        ro_admin,
        "/lbaas",
        json!({"action": "list", "type": "project"}),
    );
    assert_eq!(l["projects"], json!([]));

    // 401 without the token or with a wrong one; 429 once an address has failed too often,
    // and then even the right token is not looked at.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let t = node(
        "21195-21199",
        &format!("admin_token_file = \"{}\"", token.display()),
    );
    let t_admin = t.addr("admin");
    let r = call(t_admin, "POST", "/LB/project/", Some(&create_p));
    exact_fail(
        &r,
        401,
        (Some("create"), Some("project")),
        "unauthorized",
        "this change needs Authorization: Bearer <token> (see admin_token_file)",
        None,
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"switchyard\"")
    );
    let wrong = [("Authorization", "Bearer wrong")];
    let r = call_h(t_admin, "POST", "/lbaas", &wrong, Some(&create_p));
    exact_fail(
        &r,
        401,
        (Some("create"), Some("project")),
        "unauthorized",
        "wrong token",
        None,
    );
    let mut statuses = vec![401];
    let limited = loop {
        let r = call_h(t_admin, "POST", "/lbaas", &wrong, Some(&create_p));
        statuses.push(r.status);
        if r.status != 401 || statuses.len() > 40 {
            break r;
        }
    };
    assert!(
        (5..=15).contains(&(statuses.len() - 1)),
        "429 after {} failures: {statuses:?}",
        statuses.len() - 1
    );
    let locked = |r: &Resp| {
        exact_fail(
            r,
            429,
            (Some("create"), Some("project")),
            "too_many_attempts",
            "too many failed authentications from 127.0.0.1; try again in 1s",
            None,
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    };
    locked(&limited);
    let right = [("Authorization", "Bearer s3cret")];
    locked(&call_h(
        t_admin,
        "POST",
        "/LB/project/",
        &right,
        Some(&create_p),
    ));
    let l = ok(
        t_admin,
        "/lbaas",
        json!({"action": "list", "type": "project"}),
    );
    assert_eq!(l["projects"], json!([]));

    // 408, sent at the start.
    let (r, took) = slow.join().unwrap();
    exact_fail(
        &r,
        408,
        (None, Some("instance")),
        "timeout",
        "request not complete in time",
        None,
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(25),
        "408 after {took:?}"
    );
}

#[test]
fn changes_need_the_admin_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let p = node(
        "21171-21179",
        &format!("admin_token_file = \"{}\"", token.display()),
    );
    let admin = p.addr("admin");
    let create = json!({"action": "create", "type": "project", "info": {"name": "p", "user": "u"}})
        .to_string();
    let r = call(admin, "POST", "/lbaas", Some(&create));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["status"], "fail");
    assert!(r.header("www-authenticate").is_some());
    let r = call_h(
        admin,
        "POST",
        "/lbaas",
        &[("Authorization", "Bearer wrong")],
        Some(&create),
    );
    assert_eq!(r.status, 401);
    // Reads stay open.
    let r = call(
        admin,
        "POST",
        "/lbaas",
        Some(r#"{"action":"list","type":"project"}"#),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["info"]["projects"], json!([]));
    let r = call_h(
        admin,
        "POST",
        "/LB/project/",
        &[("Authorization", "Bearer s3cret")],
        Some(&create),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(Duration::from_secs(5), "the audit line", || {
        p.stderr_text().contains("(token): lbaas: create project")
    });
}

#[test]
fn instances_are_restored_after_kill_9_on_the_same_ports() {
    let a = demo_at("A", "127.0.0.1:0");
    let ea = a.addr("demo-backend");
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nworkers = 2\nstate_dir = \"{}\"\n[lbaas]\nport_range = \"21180-21189\"\n",
        state.path().display()
    );
    let p = Proxy::start(&config);
    let admin = p.addr("admin");
    project_p(admin);
    let mut addrs = Vec::new();
    for (name, traffic) in [("web", "http"), ("raw", "tcp")] {
        let i = new_instance(
            admin,
            json!({
                "project": "p", "name": name, "traffic_type": traffic,
                "backend": {"entities": [ea.to_string()],
                            "health-check": {"protocol": "HTTP", "criteria": {"interval": 0.5, "timeout": 0.5}}}}),
        );
        addrs.push((
            i["id"].as_u64().unwrap(),
            i["address"].as_str().unwrap().to_string(),
        ));
    }
    // One deleted before the crash stays deleted.
    let gone = new_instance(
        admin,
        json!({
            "project": "p", "name": "gone", "traffic_type": "tcp", "backend": {"entities": [ea.to_string()]}}),
    );
    ok(
        admin,
        "/lbaas",
        json!({"action": "delete", "type": "instance", "info": {"id": gone["id"]}}),
    );
    let web: SocketAddr = addrs[0].1.parse().unwrap();
    assert_eq!(get_body(web), "A");

    p.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(p.wait_exit(Duration::from_secs(5)).is_some());
    drop(p);

    // The same config again; the restored instances announce themselves before the admin
    // API does, so wait for all of them by name.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, with_test_admin(&config).0).unwrap();
    let mut names: Vec<String> = addrs.iter().map(|(id, _)| format!("lbaas-{id}")).collect();
    names.push("admin".into());
    let p = Proxy::spawn(
        vec!["run".into(), "-c".into(), path.clone().into()],
        dir,
        Some(path),
        WaitFor::Names(names),
    );
    let admin = p.addr("admin");
    assert_eq!(
        p.addr(&format!("lbaas-{}", addrs[0].0)).to_string(),
        addrs[0].1
    );
    wait_until(Duration::from_secs(5), "the instance answers again", || {
        TcpStream::connect_timeout(&web, Duration::from_millis(200)).is_ok()
    });
    assert_eq!(get_body(web), "A", "same port, same entity");
    let list = ok(
        admin,
        "/lbaas",
        json!({"action": "list", "type": "instance"}),
    );
    let got: Vec<(u64, String)> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap(),
                i["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, addrs, "{list}");
    let info = instance_info(admin, addrs[1].0);
    assert_eq!(info["traffic_type"], "tcp");
    assert_eq!(info["backend"]["health-check"]["criteria"]["interval"], 0.5);
    wait_until(Duration::from_secs(5), "health checks run again", || {
        instance_info(admin, addrs[0].0)["entities"][0]["last_check"]["ok"] == true
    });
    // Ids are not reused.
    let next = new_instance(
        admin,
        json!({
            "project": "p", "name": "next", "traffic_type": "tcp", "backend": {"entities": [ea.to_string()]}}),
    );
    assert!(
        next["id"].as_u64().unwrap() > gone["id"].as_u64().unwrap(),
        "{next}"
    );
    let raw: SocketAddr = addrs[1].1.parse().unwrap();
    let mut s = connect(raw);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.trim_end().ends_with('A'), "{got}");
}

#[test]
fn a_config_without_listeners_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let only_server = dir.path().join("lb.toml");
    std::fs::write(
        &only_server,
        // The admin on a port of its own: `check` tries the address, and the default 8088
        // may be taken by another Switchyard on this machine (a benchmark's).
        "[server]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n[lbaas]\nbind = \"127.0.0.1\"\n",
    )
    .unwrap();
    let out = run_to_exit(
        &["check", "-c", only_server.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", out.stderr);
    // Nothing at all could serve: refused.
    let useless = dir.path().join("off.toml");
    std::fs::write(&useless, "[server]\nadmin = \"off\"\n").unwrap();
    let out = run_to_exit(
        &["check", "-c", useless.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        out.stderr
            .contains("error: listeners: no listener configured"),
        "{}",
        out.stderr
    );
    // A bad [lbaas] table is a config error like any other.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[lbaas]\nport_range = \"9-1\"\ncolour = 1\n").unwrap();
    let out = run_to_exit(
        &["check", "-c", bad.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        out.stderr.contains("error: lbaas.port_range:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("error: lbaas.colour: unknown key"),
        "{}",
        out.stderr
    );

    // The empty node runs, answers, and gets a listener at run time.
    let p = Proxy::start("[server]\nworkers = 1\n");
    wait_until(Duration::from_secs(5), "the empty start logged", || {
        p.stderr_text().contains("no listeners configured")
    });
    let admin = p.addr("admin");
    assert_eq!(call(admin, "GET", "/health", None).status, 200);
    let be = Backend::echo();
    let r = call(
        admin,
        "PUT",
        "/v1/clusters/app",
        Some(&json!({"backends": [be.addr.to_string()]}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(
        admin,
        "PUT",
        "/v1/listeners/front",
        Some(r#"{"bind":"127.0.0.1:0","cluster":"app"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let addr: SocketAddr = r.json()["status"]["local_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut s = connect(addr);
    echo(&mut s, b"hello\n");
}
