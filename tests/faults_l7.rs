//! L7 faults on real HTTP traffic: each fault's effect (abort with a status or a reset,
//! drop, delay before forwarding and before answering, duplicate, corrupt), every probability
//! against binomial bounds, header-triggered faults (off unless enabled), the chaos broker's
//! `/broker` in both forms with its per-request draw, and the counters and access log.
mod util;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::client::{call, call_h};
use util::*;

/// An HTTP backend that counts the requests it answers (`ok` to each, keep-alive).
fn counting_backend() -> (Backend, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let b = Backend::spawn(Arc::new(move |mut s, _| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..p + 4);
                c.fetch_add(1, Ordering::SeqCst);
                let body = "{\"ok\":true,\"padding\":\"0123456789\"}";
                let r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(r.as_bytes()).is_err() {
                    return;
                }
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }));
    (b, count)
}

fn start(backend: SocketAddr, log: &std::path::Path) -> Proxy {
    Proxy::start(&format!(
        r#"
[server]
workers = 1
access_log = "{}"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[[listeners.routes]]
path_prefix = "/api"
cluster = "app"
[[clusters]]
name = "app"
backends = ["{backend}"]
"#,
        log.display()
    ))
}

fn add(p: &Proxy, f: Value) {
    let r = call(
        p.addr("admin"),
        "POST",
        "/v1/faults/http",
        Some(&f.to_string()),
    );
    assert_eq!(r.status, 201, "{f}: {}", r.text());
}

fn clear(p: &Proxy) {
    assert_eq!(
        call(p.addr("admin"), "DELETE", "/v1/faults", None).status,
        200
    );
}

/// What one GET on a fresh connection got: a status, or nothing (closed or reset).
/// (One try: the test client's reconnect-and-retry would hide a drop.)
fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = connect(addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head = std::str::from_utf8(out.get(..12)?).ok()?;
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// `k` successes in `n` trials is within 5 standard deviations of Binomial(n, p).
fn binomial_ok(k: usize, n: usize, p: f64) -> bool {
    let (k, n) = (k as f64, n as f64);
    let sd = (n * p * (1.0 - p)).sqrt();
    (k - n * p).abs() <= 5.0 * sd + 0.5
}

#[test]
fn abort_drop_and_reset_with_their_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let addr = p.addr("web");
    add(
        &p,
        json!({"type": "abort", "status": 418, "probability": 0.3, "listener": "web"}),
    );
    let n = 300;
    let aborted = (0..n).filter(|_| get(addr, "/") == Some(418)).count();
    assert!(
        binomial_ok(aborted, n, 0.3),
        "abort p=0.3: {aborted} of {n}"
    );
    clear(&p);
    add(
        &p,
        json!({"type": "drop", "probability": 0.2, "listener": "web"}),
    );
    let dropped = (0..n).filter(|_| get(addr, "/").is_none()).count();
    assert!(binomial_ok(dropped, n, 0.2), "drop p=0.2: {dropped} of {n}");
    clear(&p);
    add(
        &p,
        json!({"type": "abort", "reset": true, "listener": "web"}),
    );
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (how, _) = expect_closed(&mut s, Duration::from_secs(3));
    assert!(
        matches!(how, Closed::Reset),
        "abort with reset: the client is reset"
    );
    // Probability 0 never fires; 1 always.
    clear(&p);
    add(
        &p,
        json!({"type": "abort", "status": 503, "probability": 0.0, "listener": "web"}),
    );
    assert!((0..50).all(|_| get(addr, "/") == Some(200)));
    assert!(
        http_stat(&p, "fault_abort") > aborted as u64,
        "the reset abort counts too"
    );
    assert!(http_stat(&p, "fault_drop") >= dropped as u64);
    // The access log names the fault.
    let log = poll_until(Duration::from_secs(5), "access log lines", || {
        let t = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
        (t.lines().count() >= n).then_some(t)
    });
    let faults: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["fault"].clone())
        .collect();
    assert!(faults.contains(&json!("abort")), "{faults:?}");
    assert!(faults.contains(&json!(null)));
    let metrics = call(p.addr("admin"), "GET", "/metrics", None).text();
    assert!(
        metrics.contains("switchyard_http_fault_abort_total"),
        "metrics"
    );
}

#[test]
fn delays_before_forwarding_and_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (b, count) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let addr = p.addr("web");
    add(&p, json!({"type": "delay", "ms": 400, "listener": "web"}));
    let t0 = Instant::now();
    let before = count.load(Ordering::SeqCst);
    let h = std::thread::spawn(move || get(addr, "/"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        count.load(Ordering::SeqCst),
        before,
        "held before forwarding"
    );
    assert_eq!(h.join().unwrap(), Some(200));
    assert!(
        t0.elapsed() >= Duration::from_millis(380),
        "{:?}",
        t0.elapsed()
    );
    clear(&p);
    add(
        &p,
        json!({"type": "delay", "ms": 400, "when": "answer", "route": 0, "listener": "web"}),
    );
    let t0 = Instant::now();
    let before = count.load(Ordering::SeqCst);
    let h = std::thread::spawn(move || get(addr, "/api/x"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        count.load(Ordering::SeqCst),
        before + 1,
        "forwarded at once"
    );
    assert_eq!(h.join().unwrap(), Some(200));
    assert!(
        t0.elapsed() >= Duration::from_millis(380),
        "{:?}",
        t0.elapsed()
    );
    // The route's fault leaves other requests alone.
    let t0 = Instant::now();
    assert_eq!(get(addr, "/other"), Some(200));
    assert!(t0.elapsed() < Duration::from_millis(300));
}

#[test]
fn duplicate_sends_twice_and_answers_once() {
    let dir = tempfile::tempdir().unwrap();
    let (b, count) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let addr = p.addr("web");
    add(&p, json!({"type": "duplicate", "cluster": "app"}));
    let mut c = util::client::Client::new(addr);
    let before = count.load(Ordering::SeqCst);
    let r = c.request("GET", "/d", &[], None).expect("answer");
    assert_eq!(r.status, 200);
    wait_until(
        Duration::from_secs(3),
        "the backend sees both copies",
        || count.load(Ordering::SeqCst) == before + 2,
    );
    // One answer: the next request on the same client connection gets its own.
    let r = c.request("GET", "/d2", &[], None).expect("second answer");
    assert_eq!(r.status, 200);
    // POST is not idempotent: sent once unless forced.
    clear(&p);
    add(&p, json!({"type": "duplicate", "listener": "web"}));
    let before = count.load(Ordering::SeqCst);
    assert_eq!(call(addr, "POST", "/p", None).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count.load(Ordering::SeqCst), before + 1, "POST sent once");
    clear(&p);
    add(
        &p,
        json!({"type": "duplicate", "force": true, "listener": "web"}),
    );
    let before = count.load(Ordering::SeqCst);
    assert_eq!(call(addr, "POST", "/p", None).status, 200);
    wait_until(Duration::from_secs(3), "forced: POST sent twice", || {
        count.load(Ordering::SeqCst) == before + 2
    });
    assert!(http_stat(&p, "fault_duplicate") >= 2);
}

#[test]
fn corrupt_flips_response_body_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let addr = p.addr("web");
    let clean = call(addr, "GET", "/", None).body;
    add(
        &p,
        json!({"type": "corrupt", "bytes": 3, "listener": "web"}),
    );
    let bad = call(addr, "GET", "/", None).body;
    assert_eq!(bad.len(), clean.len(), "same length");
    let flipped = bad.iter().zip(&clean).filter(|(a, b)| a != b).count();
    assert_eq!(flipped, 3, "three bytes flipped");
    assert!(serde_json::from_slice::<Value>(&bad).is_err());
}

#[test]
fn header_triggered_faults_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let addr = p.addr("web");
    let h = [("x-switchyard-fault", "abort=451")];
    assert_eq!(
        call_h(addr, "GET", "/", &h, None).status,
        200,
        "off by default"
    );
    let r = call(p.addr("admin"), "PUT", "/v1/faults/header/web", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(call_h(addr, "GET", "/", &h, None).status, 451);
    let t0 = Instant::now();
    let r = call_h(
        addr,
        "GET",
        "/",
        &[("x-switchyard-fault", "delay=300")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(280));
    assert_eq!(
        call(addr, "GET", "/", None).status,
        200,
        "no header, no fault"
    );
    assert_eq!(
        call(p.addr("admin"), "DELETE", "/v1/faults/header/web", None).status,
        200
    );
    assert_eq!(call_h(addr, "GET", "/", &h, None).status, 200);
}

#[test]
fn broker_api_in_both_forms_and_its_draw() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let (admin, addr) = (p.addr("admin"), p.addr("web"));
    let g = call(admin, "GET", "/broker", None).json();
    assert_eq!(
        g,
        json!({"pDuplicate": 0, "pDelete": 0, "pSalt": 0, "pSlow": 0, "pNothing": 100, "slowMs": 5000})
    );
    let r = call(
        admin,
        "PATCH",
        "/broker",
        Some(r#"{"pDelete": 25, "pSlow": 10, "slowMs": 50}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pNothing"], 65);
    let r = call(admin, "PATCH", "/broker/salt/percentage", Some("5"));
    assert_eq!(r.status, 200, "{}", r.text());
    let g = call(admin, "GET", "/broker", None).json();
    assert_eq!(
        (
            g["pSalt"].clone(),
            g["pDelete"].clone(),
            g["pNothing"].clone()
        ),
        (json!(5), json!(25), json!(60))
    );
    // Bad input: 400 with the reason, nothing applied.
    for (path, body) in [
        ("/broker", r#"{"pDuplicate": 70}"#),
        ("/broker", r#"{"pDelete": -1}"#),
        ("/broker", r#"{"pBogus": 1}"#),
        ("/broker", "{nope"),
        ("/broker/duplicate/percentage", "lots"),
        ("/broker/slowdown/percentage", "101"),
    ] {
        let r = call(admin, "PATCH", path, Some(body));
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
    }
    assert_eq!(
        call(admin, "PATCH", "/broker/sideways/percentage", Some("1")).status,
        404
    );
    assert_eq!(
        call(admin, "GET", "/broker", None).json(),
        g,
        "nothing half-applied"
    );
    // The draw: each request one mode.
    let n = 400;
    let t0 = Instant::now();
    let dropped = (0..n).filter(|_| get(addr, "/").is_none()).count();
    assert!(
        binomial_ok(dropped, n, 0.25),
        "pDelete 25: {dropped} of {n}"
    );
    let slowed = http_stat(&p, "fault_delay") as usize;
    assert!(binomial_ok(slowed, n, 0.10), "pSlow 10: {slowed} of {n}");
    assert!(t0.elapsed() >= Duration::from_millis(50 * slowed as u64 / 2));
    let salted = http_stat(&p, "fault_corrupt") as usize;
    assert!(binomial_ok(salted, n, 0.05), "pSalt 5: {salted} of {n}");
    // Per listener.
    let r = call(
        admin,
        "PATCH",
        "/broker?listener=web",
        Some(r#"{"pDelete": 0, "pSlow": 0, "pSalt": 0}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        (0..40).all(|_| get(addr, "/") == Some(200)),
        "the listener's own weights win"
    );
    assert_eq!(
        call(admin, "GET", "/broker", None).json()["pDelete"],
        25,
        "global ones kept"
    );
    assert_eq!(
        call(admin, "GET", "/broker?listener=nope", None).status,
        200
    );
    assert_eq!(
        call(
            admin,
            "PATCH",
            "/broker?listener=nope",
            Some(r#"{"pDelete":1}"#)
        )
        .status,
        404
    );
}

#[test]
fn bad_http_faults_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let admin = p.addr("admin");
    for f in [
        json!({"type": "explode", "listener": "web"}),
        json!({"type": "abort", "probability": 2, "listener": "web"}),
        json!({"type": "abort", "probability": -0.1, "listener": "web"}),
        json!({"type": "delay", "ms": -5, "listener": "web"}),
        json!({"type": "delay", "listener": "web"}),
        json!({"type": "abort", "status": 99, "listener": "web"}),
        json!({"type": "abort"}),
        json!({"type": "abort", "listener": "nope"}),
        json!({"type": "abort", "listener": "web", "route": 5}),
        json!({"type": "abort", "cluster": "nope"}),
    ] {
        let r = call(admin, "POST", "/v1/faults/http", Some(&f.to_string()));
        assert_eq!(r.status, 400, "{f}: {}", r.text());
        assert!(!r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .is_empty());
    }
    add(
        &p,
        json!({"name": "one", "type": "drop", "probability": 0.1, "listener": "web"}),
    );
    let r = call(
        admin,
        "POST",
        "/v1/faults/http",
        Some(r#"{"name":"one","type":"drop","listener":"web"}"#),
    );
    assert_eq!(r.status, 409);
    assert_eq!(
        call(admin, "GET", "/v1/faults", None).json()["http"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The body of one GET on a fresh connection (`Connection: close`), if it was answered.
fn get_body(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut s = connect(addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let at = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(out[at..].to_vec())
}

/// The draws are not seeded (each is a hash of the worker's request id, which starts from the
/// clock), so each count is held to 5 standard deviations of its binomial: a probability off
/// by a third fails (e.g. 0.3 vs 0.2 or 0.4 is more than 5 sd away at n = 250).
#[test]
fn delay_duplicate_corrupt_and_broker_duplicate_with_their_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let (b, count) = counting_backend();
    let p = start(b.addr, &dir.path().join("access.log"));
    let (admin, addr) = (p.addr("admin"), p.addr("web"));
    let n = 250;
    // delay p=0.3: counted, and the time they took is there.
    add(
        &p,
        json!({"type": "delay", "ms": 20, "probability": 0.3, "listener": "web"}),
    );
    let t0 = Instant::now();
    assert!((0..n).all(|_| get(addr, "/") == Some(200)));
    let delayed = http_stat(&p, "fault_delay") as usize;
    assert!(
        binomial_ok(delayed, n, 0.3),
        "delay p=0.3: {delayed} of {n}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(20 * delayed as u64));
    clear(&p);
    // duplicate p=0.3: the backend sees the extra copies.
    add(
        &p,
        json!({"type": "duplicate", "probability": 0.3, "listener": "web"}),
    );
    let dups = |p: &Proxy, before: usize, base: u64| {
        assert!((0..n).all(|_| get(addr, "/") == Some(200)));
        let counted = (http_stat(p, "fault_duplicate") - base) as usize;
        wait_until(
            Duration::from_secs(5),
            "the backend sees every copy",
            || count.load(Ordering::SeqCst) - before == n + counted,
        );
        counted
    };
    let dup = dups(&p, count.load(Ordering::SeqCst), 0);
    assert!(binomial_ok(dup, n, 0.3), "duplicate p=0.3: {dup} of {n}");
    clear(&p);
    // corrupt p=0.3: bodies that differ from the clean one.
    let clean = get_body(addr, "/").expect("clean body");
    add(
        &p,
        json!({"type": "corrupt", "bytes": 2, "probability": 0.3, "listener": "web"}),
    );
    let salted = (0..n)
        .filter(|_| get_body(addr, "/").expect("answered") != clean)
        .count();
    assert!(
        binomial_ok(salted, n, 0.3),
        "corrupt p=0.3: {salted} of {n}"
    );
    assert_eq!(http_stat(&p, "fault_corrupt") as usize, salted);
    clear(&p);
    // The broker's pDuplicate 20 (the others 0).
    let r = call(admin, "PATCH", "/broker", Some(r#"{"pDuplicate": 20}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pNothing"], 80);
    let base = http_stat(&p, "fault_duplicate");
    let dup = dups(&p, count.load(Ordering::SeqCst), base);
    assert!(binomial_ok(dup, n, 0.2), "pDuplicate 20: {dup} of {n}");
}
