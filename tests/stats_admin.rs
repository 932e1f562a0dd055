//! Stats over the admin API, end to end: in Foo quick mode `/stats` and `/metrics` answer the
//! same object as SIGUSR2 (save for moving figures) with the original headers, and so do the
//! health endpoints; in config mode `/metrics` is Prometheus text that passes
//! `promtool check metrics` while traffic flows, and the recovery file lives in `state_dir`.
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use util::client::{call, Resp};
use util::*;

const FOO_KEYS: [&str; 8] = [
    "msg_total",
    "msg_req",
    "msg_ack",
    "msg_nak",
    "request_rate_1s",
    "request_rate_10s",
    "response_rate_1s",
    "response_rate_10s",
];

fn demo(args: &[&str]) -> Proxy {
    let mut a = vec!["demo-backend", "--listen", "127.0.0.1:0"];
    a.extend_from_slice(args);
    Proxy::start_args(&a, &["demo-backend"])
}

/// `n` pipelined REQs on one connection, every ACK checked.
fn foo_round(addr: SocketAddr, n: usize) {
    let mut c = connect(addr);
    let mut wire = String::new();
    for i in 1..=n {
        wire.push_str(&format!("REQ {i} data {i}\n"));
    }
    c.write_all(wire.as_bytes()).unwrap();
    let mut r = BufReader::new(c);
    for i in 1..=n {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, format!("ACK {i} data {i}\n"));
    }
}

/// The object without the figures that move between two looks (rates, uptime, process, the
/// workers' longest loop turn).
fn steady(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.contains("rate") && k != "uptime_s" && k != "process");
        if let Some(e) = o.get_mut("engine").and_then(Value::as_object_mut) {
            e.remove("loop_max_ms");
        }
    }
    v
}

fn assert_foo_json(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}");
    let v = r.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..8], &FOO_KEYS, "{what}: {v}");
    v
}

#[test]
fn quick_mode_stats_and_metrics_are_the_sigusr2_object_and_health_is_the_original() {
    let backend = demo(&["--protocol", "foo"]);
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start_args(
        &[
            "-listen".to_string(),
            "127.0.0.1:0".into(),
            "-forward".into(),
            backend.addr("demo-backend").to_string(),
            "-protocol".into(),
            "foo".into(),
            "-http".into(),
            "127.0.0.1:0".into(),
            "-recovery-path".into(),
            dir.path().join("r.json").display().to_string(),
        ],
        &["quick", "admin"],
    );
    let admin = p.addr("admin");
    for i in 0..3 {
        foo_round(p.addr("quick"), 50 + i);
    }
    p.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let dump = p.stats();
    let stats = assert_foo_json(&call(admin, "GET", "/stats", None), "/stats");
    let metrics = assert_foo_json(&call(admin, "GET", "/metrics", None), "/metrics");
    assert_eq!(dump["msg_req"], 153, "{dump}");
    assert_eq!(steady(&stats), steady(&dump), "/stats vs SIGUSR2");
    assert_eq!(steady(&metrics), steady(&dump), "/metrics vs SIGUSR2");
    // Only the SIGUSR2 went to stdout.
    assert!(p.stdout_lines(Duration::from_millis(200)).is_empty());

    for path in ["/health", "/heartbeat", "/status"] {
        let r = call(admin, "GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), "{\"status\":\"OK!\"}", "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
    }
}

/// Keep-alive GETs until `stop`; returns how many succeeded.
fn http_load(addr: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0;
    let mut s = connect(addr);
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let path = if n % 7 == 6 { "/?status=503" } else { "/" };
        if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .is_err()
        {
            break;
        }
        // Responses are small; read until a whole one is in.
        let done = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= p + 4 + len {
                    buf.drain(..p + 4 + len);
                    break true;
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break false,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        if !done {
            break;
        }
        n += 1;
    }
    n
}

#[test]
fn config_mode_metrics_under_traffic_pass_promtool() {
    let web = demo(&["--id", "w1"]);
    let foo = demo(&["--protocol", "foo"]);
    let state = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"[server]
workers = 2
state_dir = "{state}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[listeners]]
name = "legacy"
bind = "127.0.0.1:0"
protocol = "foo"
cluster = "foo"

[[clusters]]
name = "app"
backends = ["{w}", {{ addr = "127.0.0.1:1", weight = 2, drain = true }}]

[[clusters]]
name = "foo"
backends = ["{f}"]
"#,
        state = state.path().display(),
        w = web.addr("demo-backend"),
        f = foo.addr("demo-backend"),
    );
    let p = Proxy::start(&cfg);
    let admin = p.addr("admin");
    let stop = Arc::new(AtomicBool::new(false));
    let addr = p.addr("web");
    let loads: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            spawn_small("http-load", move || http_load(addr, stop))
        })
        .collect();
    foo_round(p.addr("legacy"), 20);
    wait_until(Duration::from_secs(10), "requests under way", || {
        http_stat(&p, "requests") > 100
    });
    // Taken while the load runs.
    let mut texts = Vec::new();
    for _ in 0..3 {
        let r = call(admin, "GET", "/metrics", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
        texts.push(r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let done: u64 = loads
        .into_iter()
        .map(|h| join_timeout(h, Duration::from_secs(10), "http-load"))
        .sum();
    assert!(done > 100, "{done}");
    for t in &texts {
        promtool_check(t);
    }
    let text = texts.last().unwrap();
    let wb = web.addr("demo-backend");
    for want in [
        "switchyard_listener_requests_total{listener=\"web\",protocol=\"http\"} ".to_string(),
        format!("switchyard_backend_up{{cluster=\"app\",backend=\"{wb}\"}} 1\n"),
        "switchyard_backend_up{cluster=\"app\",backend=\"127.0.0.1:1\"} 0\n".to_string(),
        "switchyard_cluster_responses_total{cluster=\"app\",class=\"5xx\"} ".to_string(),
        "switchyard_foo_messages_total{type=\"req\"} 20\n".to_string(),
        "switchyard_request_duration_seconds_bucket{cluster=\"app\",le=\"+Inf\"} ".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let count: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_request_duration_seconds_count{cluster=\"app\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request duration count for app in:\n{text}"));
    assert!(count > 100, "histogram count {count}");
    // The allocator's figures: some live heap, and at least that much resident.
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let (allocated, resident) = (
        gauge("switchyard_heap_allocated_bytes"),
        gauge("switchyard_heap_resident_bytes"),
    );
    assert!(
        allocated > 0.0 && resident >= allocated,
        "{allocated} {resident}"
    );
    // /stats is the SIGUSR2 object; the draining backend shows as such.
    let st = call(admin, "GET", "/stats", None).json();
    assert!(
        st["process"]["heap_allocated_bytes"].as_u64() > Some(0),
        "{st}"
    );
    assert_eq!(
        st["clusters"]["app"]["backends"]["127.0.0.1:1"]["state"], "draining",
        "{st}"
    );
    assert_eq!(st["msg_req"], 20, "{st}");
    // The recovery file sits in the state directory.
    let path = state.path().join("stats.json");
    let saved: Value = poll_until(Duration::from_secs(5), "stats.json", || {
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()
    });
    assert_eq!(saved["msg_req"], 20, "{saved}");
}

#[test]
fn backend_health_and_weights_show_in_stats_and_metrics() {
    let live = demo(&["--id", "live"]);
    let la = live.addr("demo-backend");
    let dead = dead_addr();
    let p = Proxy::start(&format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\n\
         [[clusters]]\nname = \"app\"\nbalance = \"weighted\"\n\
         backends = [{{ addr = \"{la}\", weight = 3 }}, \"{dead}\"]\n\
         [clusters.health]\nprotocol = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\n"
    ));
    let admin = p.addr("admin");
    let st = poll_until(Duration::from_secs(5), "dead backend marked down", || {
        let st = call(admin, "GET", "/stats", None).json();
        (st["clusters"]["app"]["backends"][dead.to_string()]["state"] == "down").then_some(st)
    });
    let b = &st["clusters"]["app"]["backends"];
    assert_eq!(b[la.to_string()]["state"], "up", "{st}");
    assert_eq!(b[la.to_string()]["weight"], 3, "{st}");
    assert_eq!(b[dead.to_string()]["weight"], 1, "{st}");
    // And the last health check of each.
    assert_eq!(b[dead.to_string()]["last_check"]["ok"], false, "{st}");
    let st = poll_until(Duration::from_secs(5), "live backend checked", || {
        let st = call(admin, "GET", "/stats", None).json();
        (st["clusters"]["app"]["backends"][la.to_string()]["last_check"]["ok"] == true)
            .then_some(st)
    });
    assert!(
        st["clusters"]["app"]["backends"][la.to_string()]["last_check"]["at_unix_ms"].as_u64()
            > Some(0)
    );
    // The SIGUSR2 line says the same.
    assert_eq!(
        p.stats()["clusters"]["app"]["backends"][dead.to_string()]["state"],
        "down"
    );
    let text = call(admin, "GET", "/metrics", None).text();
    for want in [
        format!("switchyard_backend_up{{cluster=\"app\",backend=\"{la}\"}} 1\n"),
        format!("switchyard_backend_up{{cluster=\"app\",backend=\"{dead}\"}} 0\n"),
        format!("switchyard_backend_weight{{cluster=\"app\",backend=\"{la}\"}} 3\n"),
        format!("switchyard_backend_last_check_ok{{cluster=\"app\",backend=\"{la}\"}} 1\n"),
        format!("switchyard_backend_last_check_ok{{cluster=\"app\",backend=\"{dead}\"}} 0\n"),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    promtool_check(&text);
}

#[test]
fn backend_totals_follow_the_address_across_runtime_changes() {
    let b1 = demo(&["--id", "b1"]);
    let b2 = demo(&["--id", "b2"]);
    let (a1, a2) = (b1.addr("demo-backend"), b2.addr("demo-backend"));
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n\n[[clusters]]\nname = \"app\"\n\
         backends = [\"{a1}\", \"{a2}\"]\n"
    ));
    let (admin, web) = (p.addr("admin"), p.addr("web"));
    let get = |answered: &mut std::collections::HashMap<String, u64>, n: usize| {
        for _ in 0..n {
            let r = call(web, "GET", "/", None);
            assert_eq!(r.status, 200);
            *answered.entry(r.text().trim().to_string()).or_default() += 1;
        }
    };
    let mut answered = std::collections::HashMap::<String, u64>::new();
    get(&mut answered, 10);
    let reqs = |st: &Value, a: SocketAddr| {
        st["clusters"]["app"]["backends"][a.to_string()]["requests"].as_u64()
    };
    let st = call(admin, "GET", "/stats", None).json();
    assert_eq!(reqs(&st, a1), Some(answered["b1"]), "{st}");
    assert_eq!(reqs(&st, a2), Some(answered["b2"]), "{st}");
    // b1 goes: b2 moves to index 0 of the new snapshot.
    let r = call(
        admin,
        "DELETE",
        &format!("/v1/clusters/app/backends/{a1}"),
        None,
    );
    assert!(r.status < 300, "{} {}", r.status, r.text());
    get(&mut answered, 6);
    assert_eq!(
        answered.get("b2").copied().unwrap_or(0) + answered["b1"],
        16
    );
    let st = call(admin, "GET", "/stats", None).json();
    assert_eq!(reqs(&st, a2), Some(answered["b2"]), "{st}");
    assert_eq!(reqs(&st, a1), None, "a removed backend is not listed: {st}");
    assert_eq!(st["clusters"]["app"]["requests"].as_u64(), Some(16), "{st}");
    // Back again, with its old totals.
    let body = format!("{{\"addr\":\"{a1}\"}}");
    let r = call(admin, "POST", "/v1/clusters/app/backends", Some(&body));
    assert!(r.status < 300, "{} {}", r.status, r.text());
    let st = call(admin, "GET", "/stats", None).json();
    assert_eq!(reqs(&st, a1), Some(answered["b1"]), "{st}");
    promtool_check(&call(admin, "GET", "/metrics", None).text());
}
