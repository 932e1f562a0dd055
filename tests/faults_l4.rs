//! L4 fault toxics on real connections: a TCP listener in front of an echo backend, toxics
//! set through `/v1/faults`, and their effect measured from the client (and the backend) in
//! each direction: added latency, throughput, slices, byte limits, hangs, resets, slow
//! closes, a listener that is down, toxicity drawn per connection, and live connections
//! following a change.
mod util;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use util::client::call;
use util::*;

fn start(backend: SocketAddr) -> Proxy {
    Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
cluster = "echo"
[[clusters]]
name = "echo"
backends = ["{backend}"]
"#
    ))
}

/// Sets listener `t`'s toxics.
fn toxics(p: &Proxy, list: Value) {
    let r = call(
        p.addr("admin"),
        "PUT",
        "/v1/faults/listeners/t",
        Some(&json!({ "toxics": list }).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn toxic(ty: &str, stream: &str, attrs: Value) -> Value {
    json!({"type": ty, "stream": stream, "attributes": attrs})
}

/// One echo round trip of `n` bytes on a fresh connection: how long it took.
fn round_trip(addr: SocketAddr, n: usize) -> Duration {
    let mut s = connect(addr);
    let msg = payload(7, n);
    let t0 = Instant::now();
    s.write_all(&msg).expect("write");
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(got, msg);
    t0.elapsed()
}

#[test]
fn latency_each_direction() {
    let b = Backend::echo();
    let p = start(b.addr);
    let base = round_trip(p.addr("t"), 100);
    for stream in ["downstream", "upstream"] {
        toxics(
            &p,
            json!([toxic(
                "latency",
                stream,
                json!({"latency": 200, "jitter": 20})
            )]),
        );
        let t = round_trip(p.addr("t"), 100);
        assert!(
            t >= Duration::from_millis(180) && t < base + Duration::from_millis(1500),
            "{stream}: {t:?} (base {base:?})"
        );
    }
    // Both at once add up.
    toxics(
        &p,
        json!([
            toxic("latency", "downstream", json!({"latency": 150})),
            toxic("latency", "upstream", json!({"latency": 150}))
        ]),
    );
    let t = round_trip(p.addr("t"), 100);
    assert!(t >= Duration::from_millis(300), "{t:?}");
    toxics(&p, json!([]));
    assert!(round_trip(p.addr("t"), 100) < Duration::from_millis(150));
    assert!(tcp_of(&p.stats(), "fault_latency") >= 4);
}

#[test]
fn bandwidth_each_direction() {
    let b = Backend::echo();
    let p = start(b.addr);
    for stream in ["downstream", "upstream"] {
        // 100 KB/s: 60 kB take at least ~0.5 s (the first 100 ms worth goes at once).
        toxics(
            &p,
            json!([toxic("bandwidth", stream, json!({"rate": 100}))]),
        );
        let t = round_trip(p.addr("t"), 60_000);
        assert!(
            t >= Duration::from_millis(450) && t < Duration::from_secs(5),
            "{stream}: {t:?}"
        );
    }
    toxics(&p, json!([]));
    assert!(round_trip(p.addr("t"), 60_000) < Duration::from_millis(400));
}

#[test]
fn slicer_each_direction() {
    let b = Backend::echo();
    let p = start(b.addr);
    // Downstream: the client receives small slices, 20 ms apart.
    toxics(
        &p,
        json!([toxic(
            "slicer",
            "downstream",
            json!({"average_size": 10, "size_variation": 5, "delay": 20000})
        )]),
    );
    let mut s = connect(p.addr("t"));
    s.write_all(&[b'x'; 200]).unwrap();
    let t0 = Instant::now();
    let (mut got, mut reads, mut largest) = (0, 0, 0);
    let mut buf = [0u8; 4096];
    while got < 200 {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "EOF after {got}");
        got += n;
        reads += 1;
        largest = largest.max(n);
    }
    let t = t0.elapsed();
    assert!(reads >= 5, "{reads} reads");
    assert!(t >= Duration::from_millis(200), "{t:?}");
    assert!(largest < 200, "one read took it all");
    // Upstream: the backend gets slices; the echo comes back no faster than the slices.
    toxics(
        &p,
        json!([toxic(
            "slicer",
            "upstream",
            json!({"average_size": 10, "delay": 20000})
        )]),
    );
    let t = round_trip(p.addr("t"), 200);
    assert!(t >= Duration::from_millis(300), "{t:?}");
}

#[test]
fn limit_data_each_direction() {
    let b = Backend::echo();
    let p = start(b.addr);
    for stream in ["downstream", "upstream"] {
        toxics(
            &p,
            json!([toxic("limit_data", stream, json!({"bytes": 10}))]),
        );
        let mut s = connect(p.addr("t"));
        s.write_all(&[b'y'; 100]).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert_eq!(
            got,
            vec![b'y'; 10],
            "{stream}: exactly the limit, then the close"
        );
    }
}

#[test]
fn timeout_hangs_then_closes_and_zero_hangs_for_good() {
    let b = Backend::echo();
    let p = start(b.addr);
    for stream in ["downstream", "upstream"] {
        toxics(
            &p,
            json!([toxic("timeout", stream, json!({"timeout": 400}))]),
        );
        let mut s = connect(p.addr("t"));
        let t0 = Instant::now();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = s.read(&mut buf);
        let t = t0.elapsed();
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "{stream}: data got through: {r:?}"
        );
        assert!(
            t >= Duration::from_millis(350) && t < Duration::from_secs(3),
            "{stream}: closed after {t:?}"
        );
    }
    toxics(
        &p,
        json!([toxic("timeout", "downstream", json!({"timeout": 0}))]),
    );
    let mut s = connect(p.addr("t"));
    s.write_all(b"hello").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "timeout 0 holds the data and the connection: {r:?}"
    );
    // Removing the toxic lets the held data through, on the same connection.
    toxics(&p, json!([]));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got)
        .expect("held data after the toxic is gone");
    assert_eq!(&got, b"hello");
}

#[test]
fn reset_peer_each_direction() {
    let b = Backend::echo();
    let p = start(b.addr);
    toxics(
        &p,
        json!([toxic("reset_peer", "downstream", json!({"timeout": 200}))]),
    );
    let mut s = connect(p.addr("t"));
    let t0 = Instant::now();
    s.write_all(b"ping").unwrap();
    let (how, _) = expect_closed(&mut s, Duration::from_secs(3));
    assert!(matches!(how, Closed::Reset), "the client is reset");
    assert!(
        t0.elapsed() >= Duration::from_millis(180),
        "{:?}",
        t0.elapsed()
    );
    // Upstream: the backend connection is reset at its first data.
    toxics(
        &p,
        json!([toxic("reset_peer", "upstream", json!({"timeout": 100}))]),
    );
    let mut s = connect(p.addr("t"));
    s.write_all(b"ping").unwrap();
    let _ = expect_closed(&mut s, Duration::from_secs(3));
    let recs = b.wait_records(2, Duration::from_secs(3));
    assert!(
        matches!(recs[1].end, End::Reset),
        "backend saw {:?}",
        recs[1].end
    );
    assert!(tcp_of(&p.stats(), "fault_reset_peer") >= 2);
}

#[test]
fn slow_close_each_direction() {
    let b = Backend::echo();
    let p = start(b.addr);
    for stream in ["downstream", "upstream"] {
        toxics(
            &p,
            json!([toxic("slow_close", stream, json!({"delay": 400}))]),
        );
        let mut s = connect(p.addr("t"));
        s.write_all(b"bye").unwrap();
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        let t0 = Instant::now();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (how, t) = expect_closed(&mut s, Duration::from_secs(3));
        assert!(matches!(how, Closed::Eof), "{stream}");
        assert!(
            t >= Duration::from_millis(350),
            "{stream}: FIN after {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn listener_down_refuses_then_comes_back() {
    let b = Backend::echo();
    let p = start(b.addr);
    let addr = p.addr("t");
    let mut live = connect(addr);
    echo_roundtrip(&mut live, b"before");
    let r = call(
        p.addr("admin"),
        "PATCH",
        "/v1/faults/listeners/t",
        Some(r#"{"enabled":false}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let e =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect_err("refused while down");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let r = call(
        p.addr("admin"),
        "PATCH",
        "/v1/faults/listeners/t",
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    echo_roundtrip(&mut connect(addr), b"after");
}

#[test]
fn toxicity_is_drawn_per_connection() {
    let b = Backend::echo();
    let p = start(b.addr);
    toxics(
        &p,
        json!([{"type": "latency", "toxicity": 0.5, "attributes": {"latency": 60}}]),
    );
    let n = 60;
    let slow = (0..n)
        .filter(|_| round_trip(p.addr("t"), 10) >= Duration::from_millis(55))
        .count() as f64;
    // Binomial(60, 0.5): mean 30, sd 3.9; 4 sd either way.
    assert!(
        (14.0..=46.0).contains(&slow),
        "{slow} of {n} connections delayed"
    );
    toxics(
        &p,
        json!([{"type": "latency", "toxicity": 0.0, "attributes": {"latency": 300}}]),
    );
    assert!(round_trip(p.addr("t"), 10) < Duration::from_millis(250));
}

#[test]
fn bad_toxics_are_refused_and_change_nothing() {
    let b = Backend::echo();
    let p = start(b.addr);
    toxics(
        &p,
        json!([toxic("latency", "downstream", json!({"latency": 100}))]),
    );
    let before = call(p.addr("admin"), "GET", "/v1/faults", None).json();
    for (body, needle) in [
        (json!({"toxics": [{"type": "lag"}]}), "invalid toxic type"),
        (
            json!({"toxics": [toxic("latency", "downstream", json!({"latency": -5}))]}),
            "negative",
        ),
        (
            json!({"toxics": [{"type": "latency", "toxicity": 1.5}]}),
            "outside 0",
        ),
        (
            json!({"toxics": [{"type": "latency", "stream": "sideways"}]}),
            "stream",
        ),
        (
            json!({"toxics": [toxic("latency", "downstream", json!({"latncy": 5}))]}),
            "unknown attribute",
        ),
        (
            json!({"toxics": [toxic("slicer", "downstream", json!({"average_size": 5, "size_variation": 9}))]}),
            "size_variation",
        ),
    ] {
        let r = call(
            p.addr("admin"),
            "PUT",
            "/v1/faults/listeners/t",
            Some(&body.to_string()),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: {}", r.text());
    }
    let r = call(
        p.addr("admin"),
        "PUT",
        "/v1/faults/listeners/t",
        Some("{not json"),
    );
    assert_eq!(r.status, 400);
    let r = call(
        p.addr("admin"),
        "PUT",
        "/v1/faults/listeners/nope",
        Some(r#"{"enabled":false}"#),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        call(p.addr("admin"), "GET", "/v1/faults", None).json(),
        before,
        "nothing half-applied"
    );
}

/// `switchyard ctl` against the proxy's admin API.
fn ctl(p: &Proxy, args: &[&str]) -> (bool, String) {
    let admin = p.addr("admin").to_string();
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &admin])
        .args(args)
        .output()
        .expect("run ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn ctl_verbs() {
    let b = Backend::echo();
    let p = start(b.addr);
    let (ok, out) = ctl(
        &p,
        &[
            "fault",
            "toxic",
            "t",
            r#"{"type":"latency","attributes":{"latency":200}}"#,
        ],
    );
    assert!(ok, "{out}");
    assert!(round_trip(p.addr("t"), 10) >= Duration::from_millis(180));
    let (ok, out) = ctl(&p, &["faults"]);
    assert!(ok && out.contains("latency_downstream"), "{out}");
    let (ok, out) = ctl(&p, &["fault", "untoxic", "t", "latency_downstream"]);
    assert!(ok, "{out}");
    assert!(round_trip(p.addr("t"), 10) < Duration::from_millis(150));
    let (ok, out) = ctl(&p, &["fault", "toxic", "t", r#"{"type":"bogus"}"#]);
    assert!(!ok && out.contains("invalid toxic type"), "{out}");
    let (ok, out) = ctl(&p, &["fault", "down", "t"]);
    assert!(ok, "{out}");
    assert!(TcpStream::connect_timeout(&p.addr("t"), Duration::from_secs(2)).is_err());
    let (ok, out) = ctl(&p, &["fault", "up", "t"]);
    assert!(ok, "{out}");
    echo_roundtrip(&mut connect(p.addr("t")), b"up again");
    let (ok, out) = ctl(&p, &["broker"]);
    assert!(ok && out.contains("\"pNothing\": 100"), "{out}");
    let (ok, out) = ctl(&p, &["broker", "pDelete=60", "pSlow=50"]);
    assert!(!ok && out.contains("more than 100"), "{out}");
    let (ok, out) = ctl(&p, &["fault", "clear"]);
    assert!(ok, "{out}");
}

// ------------------------------------------------------------- under TLS and the PROXY protocol
//
// Toxics act on the bytes on the wire, under TLS and the PROXY protocol: they apply to TLS
// listeners, `accept_proxy` listeners, and upstream connections with `[clusters.tls]` or
// `send_proxy` as they do to plain ones.

/// Sets listener `name`'s toxics.
fn toxics_on(p: &Proxy, name: &str, list: Value) {
    let r = call(
        p.addr("admin"),
        "PUT",
        &format!("/v1/faults/listeners/{name}"),
        Some(&json!({ "toxics": list }).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// `GET /` with `Connection: close` on `s` after `before` (a PROXY header): the whole answer
/// and how long it took from the first byte written.
fn get_close(mut s: TcpStream, before: &[u8]) -> (String, Duration) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let t0 = Instant::now();
    let mut req = before.to_vec();
    req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&req).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).to_string(), t0.elapsed())
}

/// HTTP listeners in front of `backend`: `tls` (TLS, certificate `a`) and `pp`
/// (`accept_proxy`).
fn tls_and_proxy_listeners(c: &util::tls::Certs, backend: SocketAddr) -> Proxy {
    Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[listeners.tls]
certificates = [{{ cert = "{a}", key = "{ak}" }}]
[[listeners]]
name = "pp"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
accept_proxy = true
[[clusters]]
name = "app"
backends = ["{backend}"]
"#,
        a = c.p("a.pem"),
        ak = c.p("a.key"),
    ))
}

#[test]
fn latency_applies_under_tls_and_proxy_protocol_listeners() {
    let c = util::tls::Certs::new();
    let be = demo("be");
    let p = tls_and_proxy_listeners(&c, be.addr("demo-backend"));
    let ca = c.p("ca.pem");
    // A real TLS client (curl), timed from outside.
    let tls_get = || {
        let t0 = Instant::now();
        let (ok, out) = util::tls::curl(p.addr("tls"), "a.example", "/", &["--cacert", &ca]);
        assert!(ok && out.contains("be"), "{out}");
        t0.elapsed()
    };
    let pp_get = || {
        let s = connect(p.addr("pp"));
        let port = s.local_addr().expect("local").port();
        let header = format!("PROXY TCP4 192.0.2.7 127.0.0.1 {port} 80\r\n");
        let (out, t) = get_close(s, header.as_bytes());
        assert!(
            out.starts_with("HTTP/1.1 200") && out.contains("be"),
            "{out}"
        );
        t
    };
    tls_get();
    pp_get();
    let lat = json!([toxic("latency", "downstream", json!({"latency": 600}))]);
    toxics_on(&p, "tls", lat.clone());
    toxics_on(&p, "pp", lat);
    let t = tls_get();
    assert!(t >= Duration::from_millis(600), "TLS listener: {t:?}");
    let t = pp_get();
    assert!(
        t >= Duration::from_millis(600),
        "accept_proxy listener: {t:?}"
    );
    assert!(p.tcp("fault_latency") >= 2, "{}", p.stats()["tcp"]);
    // The handshake still counts, and the PROXY header was still read.
    assert!(p.tcp("tls_handshakes") >= 2, "{}", p.stats()["tcp"]);
    assert_eq!(p.tcp("proxy_header_errors"), 0);
}

#[test]
fn limit_data_applies_under_send_proxy_upstream() {
    // The backend captures what reaches it, up to the close.
    let cap = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let cap_addr = cap.local_addr().expect("addr");
    let (tx, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in cap.incoming().take(2) {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = tx.send(buf);
        }
    });
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
cluster = "pp"
[[clusters]]
name = "pp"
backends = ["{cap_addr}"]
send_proxy = "v1"
"#
    ));
    // Without toxics: the header, then every byte.
    let mut s = connect(p.addr("t"));
    s.write_all(&[b'z'; 1000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let first = got.recv_timeout(Duration::from_secs(10)).expect("captured");
    assert!(first.starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "));
    let header = first.iter().position(|&b| b == b'\n').expect("header end") + 1;
    assert_eq!(first.len(), header + 1000);
    // limit_data upstream: exactly 100 bytes reach the backend, the header counted (it is on
    // the wire), then the FIN.
    toxics(
        &p,
        json!([toxic("limit_data", "upstream", json!({"bytes": 100}))]),
    );
    let mut s = connect(p.addr("t"));
    s.write_all(&[b'z'; 1000]).unwrap();
    let second = got.recv_timeout(Duration::from_secs(10)).expect("captured");
    assert_eq!(second.len(), 100, "{:?}", String::from_utf8_lossy(&second));
    assert!(second.starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "));
    assert!(second[header..].iter().all(|&b| b == b'z'));
    assert!(p.tcp("fault_limit_data") >= 1);
}

#[test]
fn latency_applies_under_upstream_tls() {
    let c = util::tls::Certs::new();
    let be = demo("be");
    // The TLS backend: a Switchyard TLS listener in front of the demo backend.
    let back = tls_and_proxy_listeners(&c, be.addr("demo-backend"));
    let front = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "tls"
[[clusters]]
name = "tls"
backends = ["{back}"]
[clusters.tls]
ca = "{ca}"
server_name = "a.example"
"#,
        back = back.addr("tls"),
        ca = c.p("ca.pem"),
    ));
    let (out, _) = get_close(connect(front.addr("t")), b"");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("be"),
        "{out}"
    );
    toxics(
        &front,
        json!([toxic("latency", "upstream", json!({"latency": 500}))]),
    );
    // The first request's TLS connection was pooled: reused, it goes under the toxics (the
    // request waits 500 ms), and is not pooled again.
    let (out, t) = get_close(connect(front.addr("t")), b"");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("be"),
        "{out}"
    );
    assert!(t >= Duration::from_millis(500), "{t:?}");
    // A new TLS connection: the ClientHello and the client's Finished (with the request)
    // each wait 500 ms.
    let (out, t) = get_close(connect(front.addr("t")), b"");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("be"),
        "{out}"
    );
    assert!(t >= Duration::from_millis(1000), "{t:?}");
    assert_eq!(front.stats()["http"]["upstream_reused"], 1);
    assert!(front.tcp("fault_latency") >= 1);
    assert_eq!(front.tcp("tls_handshake_failures"), 0);
}
