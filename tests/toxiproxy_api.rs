//! The toxiproxy 2.x HTTP API on the admin address: every endpoint with the status codes and
//! JSON shapes toxiproxy answers (raw HTTP), then toxiproxy's own Python client
//! (toxiproxy-python, unchanged) driving a proxy end to end.
mod util;

use serde_json::{json, Value};
use std::time::Duration;
use util::client::call;
use util::*;

const CONFIG: &str = r#"
[server]
workers = 1
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[[clusters]]
name = "app"
backends = ["127.0.0.1:9"]
"#;

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[test]
fn every_endpoint_status_and_shape() {
    let b = Backend::echo();
    let p = Proxy::start(CONFIG);
    let a = p.addr("admin");
    let up = b.addr.to_string();

    let v = call(a, "GET", "/version", None);
    assert_eq!(v.status, 200);
    assert!(
        v.json()["version"].as_str().unwrap_or("").starts_with("2."),
        "{}",
        v.text()
    );
    assert_eq!(call(a, "GET", "/proxies", None).json(), json!({}));

    // POST /proxies: 201 with the proxy; the bound address replaces port 0.
    let r = call(
        a,
        "POST",
        "/proxies",
        Some(&json!({"name": "db", "listen": "127.0.0.1:0", "upstream": up}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let px = r.json();
    assert_eq!(
        keys(&px),
        ["enabled", "listen", "name", "toxics", "upstream"]
    );
    assert_eq!(
        (
            px["name"].clone(),
            px["enabled"].clone(),
            px["toxics"].clone()
        ),
        (json!("db"), json!(true), json!([]))
    );
    let listen: std::net::SocketAddr = px["listen"].as_str().unwrap().parse().unwrap();
    assert_ne!(listen.port(), 0);
    echo_roundtrip(&mut connect(listen), b"through the proxy");
    // 409 for an existing proxy (and for a name a listener has); 400 for missing fields.
    for body in [
        json!({"name": "db", "upstream": up}),
        json!({"name": "web", "upstream": up}),
    ] {
        let r = call(a, "POST", "/proxies", Some(&body.to_string()));
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": "proxy already exists", "status": 409})
        );
    }
    let r = call(
        a,
        "POST",
        "/proxies",
        Some(&json!({"upstream": up}).to_string()),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "missing required field: name");
    let r = call(a, "POST", "/proxies", Some(r#"{"name":"x"}"#));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("missing required field: upstream"))
    );
    assert_eq!(call(a, "POST", "/proxies", Some("{bad")).status, 400);

    // GET /proxies and /proxies/{p}; 404 shape.
    let all = call(a, "GET", "/proxies", None).json();
    assert_eq!(keys(&all), ["db"]);
    assert_eq!(all["db"], px);
    assert_eq!(call(a, "GET", "/proxies/db", None).json(), px);
    let r = call(a, "GET", "/proxies/nope", None);
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "proxy not found", "status": 404}))
    );

    // Toxics: create (200 with the toxic; defaults filled in), 409, 400, list, show, update.
    let r = call(
        a,
        "POST",
        "/proxies/db/toxics",
        Some(r#"{"type":"latency","attributes":{"latency":100}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1.0,
               "attributes": {"latency": 100, "jitter": 0}})
    );
    let r = call(
        a,
        "POST",
        "/proxies/db/toxics",
        Some(r#"{"type":"latency"}"#),
    );
    assert_eq!(
        (r.status, r.json()),
        (409, json!({"error": "toxic already exists", "status": 409}))
    );
    for bad in [
        r#"{"type":"warp"}"#,
        r#"{"type":"latency","name":"n2","stream":"sideways"}"#,
        r#"{"type":"latency","name":"n3","toxicity":7}"#,
        r#"{"type":"timeout","name":"n4","attributes":{"timeout":-1}}"#,
        "[not json",
    ] {
        let r = call(a, "POST", "/proxies/db/toxics", Some(bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["status"], 400);
    }
    assert_eq!(
        call(
            a,
            "POST",
            "/proxies/nope/toxics",
            Some(r#"{"type":"latency"}"#)
        )
        .status,
        404
    );
    let list = call(a, "GET", "/proxies/db/toxics", None);
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().map(Vec::len), Some(1));
    let t = call(a, "GET", "/proxies/db/toxics/latency_downstream", None);
    assert_eq!(t.status, 200);
    let r = call(a, "GET", "/proxies/db/toxics/nope", None);
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "toxic not found", "status": 404}))
    );
    for m in ["POST", "PATCH"] {
        let r = call(
            a,
            m,
            "/proxies/db/toxics/latency_downstream",
            Some(r#"{"attributes":{"jitter":5},"toxicity":0.5}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["attributes"],
            json!({"latency": 100, "jitter": 5}),
            "unchanged attributes kept"
        );
        assert_eq!(r.json()["toxicity"], 0.5);
    }
    assert_eq!(
        call(a, "GET", "/proxies/db", None).json()["toxics"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Update the proxy (POST and PATCH): disable refuses connections, enable serves again.
    let r = call(a, "POST", "/proxies/db", Some(r#"{"enabled":false}"#));
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(false)));
    assert!(std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(2)).is_err());
    let r = call(a, "PATCH", "/proxies/db", Some(r#"{"enabled":true}"#));
    assert_eq!(
        (r.status, r.json()["listen"].clone()),
        (200, json!(listen.to_string()))
    );
    echo_roundtrip(&mut connect(listen), b"back on the same port");

    // Populate: 201 {"proxies":[...]}, all or nothing.
    let r = call(a, "POST", "/populate", Some(&json!([{"name": "db", "upstream": up, "listen": listen.to_string()}, {"name": "cache", "upstream": up}]).to_string()));
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    let names: Vec<&str> = body["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["db", "cache"]);
    assert_eq!(
        r.json()["proxies"][0]["toxics"].as_array().map(Vec::len),
        Some(1),
        "an unchanged proxy keeps its toxics"
    );
    let r = call(
        a,
        "POST",
        "/populate",
        Some(&json!([{"name": "third", "upstream": up}, {"name": "broken"}]).to_string()),
    );
    assert_eq!(r.status, 400);
    assert!(
        call(a, "GET", "/proxies/third", None).status == 404,
        "nothing half-applied"
    );

    // Reset: 204, every proxy enabled, every toxic gone.
    call(a, "POST", "/proxies/cache", Some(r#"{"enabled":false}"#));
    let r = call(a, "POST", "/reset", None);
    assert_eq!((r.status, r.body.len()), (204, 0));
    let all = call(a, "GET", "/proxies", None).json();
    assert!(
        all.as_object()
            .unwrap()
            .values()
            .all(|p| p["enabled"] == true && p["toxics"] == json!([])),
        "{all}"
    );

    // Delete toxic and proxy: 204, then 404.
    call(
        a,
        "POST",
        "/proxies/db/toxics",
        Some(r#"{"type":"slow_close","attributes":{"delay":10}}"#),
    );
    let r = call(
        a,
        "DELETE",
        "/proxies/db/toxics/slow_close_downstream",
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        call(
            a,
            "DELETE",
            "/proxies/db/toxics/slow_close_downstream",
            None
        )
        .status,
        404
    );
    assert_eq!(call(a, "DELETE", "/proxies/cache", None).status, 204);
    assert_eq!(call(a, "DELETE", "/proxies/cache", None).status, 404);
    assert_eq!(keys(&call(a, "GET", "/proxies", None).json()), ["db"]);
    // Our own view shows the proxy too.
    assert!(call(a, "GET", "/v1/faults", None).json()["proxies"]["db"].is_object());
}

#[test]
fn toxiproxy_python_client_works_unchanged() {
    let b = Backend::echo();
    let p = Proxy::start(CONFIG);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scripts/toxiproxy_client.py"
    );
    let out = std::process::Command::new("python3")
        .args([script, &p.addr("admin").to_string(), &b.addr.to_string()])
        .output()
        .expect("python3 (tests/deps.sh installs toxiproxy-python)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "toxiproxy-python failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
