//! Regression tests for what adversarial testing found (issue 19): each one failed before its
//! fix. Keep-alive error answers, chunk-size overflow, h2c, the 504 count, the admin API under
//! slow clients and token guessing, If-Match, names and ports, the access log after a crash,
//! and an unusable state_dir.
//!

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use util::client::{call, call_h};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

fn http_proxy(listener_extra: &str, cluster_extra: &str, backends: &[SocketAddr]) -> Proxy {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    Proxy::start(&format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n{listener_extra}\n\n[[clusters]]\nname = \"app\"\n\
         backends = [{}]\n{cluster_extra}\n",
        list.join(", ")
    ))
}

/// One response read off `s`: status, head, body (Content-Length framing; our local answers
/// and the demo backend always send one). Bytes read past it stay in `pending`.
fn read_response_buffered(
    s: &mut TcpStream,
    pending: &mut Vec<u8>,
) -> Option<(u16, String, Vec<u8>)> {
    let mut b = [0u8; 4096];
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&b[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while pending.len() < end + len {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&b[..n]),
        }
    }
    let body = pending[end..end + len].to_vec();
    pending.drain(..end + len);
    Some((status, head, body))
}

fn read_response(s: &mut TcpStream) -> Option<(u16, String, Vec<u8>)> {
    read_response_buffered(s, &mut Vec::new())
}

/// How the peer ended the connection after what was read.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A FIN: every byte sent before it arrived.
    Clean,
    Reset,
    /// Still open after the timeout.
    Open,
}

fn end_of(s: &mut TcpStream, within: Duration) -> End {
    let _ = s.set_read_timeout(Some(within));
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return End::Clean,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return End::Reset,
            Err(_) => return End::Open,
        }
    }
}

/// A backend that records every byte it receives and answers each connection with `reply`
/// once it has seen a request head.
struct Recorder {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn new(reply: &'static [u8]) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let g = g.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut seen = Vec::new();
                    let mut replied = false;
                    let mut b = [0u8; 4096];
                    loop {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                g.lock().unwrap().extend_from_slice(&b[..n]);
                                seen.extend_from_slice(&b[..n]);
                            }
                        }
                        if !replied && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            replied = true;
                            if s.write_all(reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Recorder { addr, got }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }
}

// ---- item 1: a malformed request after a good one on a keep-alive connection --------------

#[test]
fn a_malformed_second_request_gets_its_error_answer_then_a_clean_close() {
    let b = demo("b");
    let p = http_proxy("", "", &[b.addr("demo-backend")]);
    let web = p.addr("web");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9 * 1024));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("bad method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (
            "CL+TE",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("bare LF", b"GET / HTTP/1.1\nHost: x\n\n".to_vec(), 400),
        ("9 KB URI", long_uri.into_bytes(), 414),
        ("150 headers", many_headers.into_bytes(), 431),
    ];
    for (what, bad, want) in cases {
        for pipelined in [false, true] {
            let mut s = connect(web);
            let mut pending = Vec::new();
            let good = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            if pipelined {
                let mut both = good.to_vec();
                both.extend_from_slice(&bad);
                s.write_all(&both).unwrap();
            } else {
                s.write_all(good).unwrap();
            }
            let (st, _, body) =
                read_response_buffered(&mut s, &mut pending).expect("first response");
            assert_eq!(st, 200, "{what}: first request");
            assert_eq!(body, b"b\n");
            if !pipelined {
                s.write_all(&bad).unwrap();
            }
            let r = read_response_buffered(&mut s, &mut pending);
            assert_eq!(
                r.as_ref().map(|r| r.0),
                Some(want),
                "{what} (pipelined: {pipelined}): the second request's answer; got {:?}",
                r.map(|r| r.1)
            );
            assert_eq!(
                end_of(&mut s, Duration::from_secs(5)),
                End::Clean,
                "{what} (pipelined: {pipelined}): then a clean close"
            );
        }
    }
}

// ---- item 3: a first-byte 504 is counted once ------------------------------------------------

#[test]
fn a_first_byte_timeout_is_counted_once() {
    let slow = fixed_backend("slow", 200, Duration::from_secs(5));
    let p = http_proxy("", "first_byte_timeout = \"300ms\"\nretries = 0", &[slow]);
    let r = call(p.addr("web"), "GET", "/", None);
    assert_eq!(r.status, 504);
    // The per-listener figures are counted when the session ends, after the client has its
    // answer (a completion engine may see the client's close a loop turn later than the
    // client's stats request arrives).
    wait_until(
        Duration::from_secs(5),
        "the 504 in the listener's stats",
        || p.stats()["listeners"]["web"]["timeouts"] != 0,
    );
    let st = p.stats();
    assert_eq!(st["http"]["timeouts"], 1, "http: {}", st["http"]);
    assert_eq!(st["http"]["responses_5xx"], 1);
    assert_eq!(st["listeners"]["web"]["timeouts"], 1, "{st}");
    let metrics = call(p.addr("admin"), "GET", "/metrics", None).text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "switchyard_http_timeouts_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("timeouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---- item 4: chunk sizes a signed reader would take as negative ------------------------------

#[test]
fn a_chunk_size_of_2_pow_64_minus_1_gets_400_and_never_reaches_the_backend() {
    // It never answers: the 400 must come from the proxy.
    let rec = Recorder::new(b"");
    let p = http_proxy("", "", &[rec.addr]);
    let web = p.addr("web");
    let head = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for size in ["ffffffffffffffff", "8000000000000000", "FFFFFFFFFFFFFFFF"] {
        // In the same packet as the head, and after it (the head may then have gone up).
        for split in [false, true] {
            let mut s = connect(web);
            if split {
                s.write_all(head.as_bytes()).unwrap();
                thread::sleep(Duration::from_millis(200));
                s.write_all(format!("{size}\r\nhello\r\n").as_bytes())
                    .unwrap();
            } else {
                s.write_all(format!("{head}{size}\r\nhello\r\n").as_bytes())
                    .unwrap();
            }
            let r = read_response(&mut s);
            assert_eq!(r.map(|r| r.0), Some(400), "{size} split={split}");
        }
    }
    // A size that fits in an i64 still goes through (the data just never ends here).
    thread::sleep(Duration::from_millis(200));
    let got = rec.received().to_ascii_lowercase();
    for size in ["ffffffffffffffff", "8000000000000000"] {
        assert!(!got.contains(size), "{size} reached the backend:\n{got}");
    }
    assert!(!got.contains("hello"));
}

// ---- item 5: h2c -------------------------------------------------------------------------

#[test]
fn an_h2c_upgrade_is_stripped_and_a_101_answering_it_is_a_502() {
    let rec = Recorder::new(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    );
    let p = http_proxy("", "", &[rec.addr]);
    let mut s = connect(p.addr("web"));
    s.write_all(
        b"GET /internal HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s).expect("an answer");
    assert_eq!(r.0, 502, "a 101 to an upgrade we did not pass on: {}", r.1);
    // Whatever the client sends next never reaches the backend as a tunnel.
    let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    thread::sleep(Duration::from_millis(300));
    let got = rec.received();
    let lower = got.to_ascii_lowercase();
    assert!(lower.starts_with("get /internal http/1.1\r\n"), "{got}");
    assert!(!lower.contains("upgrade: h2c"), "Upgrade forwarded:\n{got}");
    assert!(!lower.contains("http2-settings"), "{got}");
    assert!(!got.contains("PRI * HTTP/2.0"), "tunnel opened:\n{got}");

    // A WebSocket upgrade still works (the demo backend does not speak it: its answer is
    // the usual 200, and the request went up with its Upgrade header).
    let b = demo("ws");
    let p = http_proxy("", "", &[b.addr("demo-backend")]);
    let r = call_h(
        p.addr("web"),
        "GET",
        "/echo",
        &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains(r#"["Upgrade","websocket"]"#),
        "{}",
        r.text()
    );
}

// ---- item 2: slow admin clients ---------------------------------------------------------------

/// A proxy whose admin API is what the test is about (one TCP listener, as a config needs).
fn admin_only(server_extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nworkers = 1\n{server_extra}\n\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
         cluster = \"base\"\n\n[[clusters]]\nname = \"base\"\nbackends = [\"127.0.0.1:9\"]\n"
    ))
}

/// Opens `n` admin connections that send part of a request head and then one byte every
/// `every`, for `for_how_long`. Returns the thread.
fn slowloris(
    admin: SocketAddr,
    n: usize,
    every: Duration,
    for_how_long: Duration,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut conns: Vec<TcpStream> = (0..n)
            .filter_map(|_| TcpStream::connect(admin).ok())
            .collect();
        for c in &mut conns {
            let _ = c.write_all(b"GET /health HTTP/1.1\r\n");
        }
        let end = Instant::now() + for_how_long;
        while Instant::now() < end {
            thread::sleep(every);
            for c in &mut conns {
                let _ = c.write_all(b"X");
            }
        }
        conns.len()
    })
}

#[test]
fn slow_admin_clients_cannot_lock_out_health_stats_or_changes() {
    let p = admin_only("");
    let admin = p.addr("admin");
    let attack = slowloris(
        admin,
        100,
        Duration::from_millis(500),
        Duration::from_secs(6),
    );
    thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let t = Instant::now();
        let r = call(admin, "GET", "/health", None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(call(admin, "GET", "/stats", None).status, 200);
        let put = call(
            admin,
            "PUT",
            "/v1/clusters/extra",
            Some(r#"{"backends":["127.0.0.1:9"]}"#),
        );
        assert!(put.status == 200 || put.status == 201, "{}", put.text());
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        join_timeout(attack, Duration::from_secs(20), "slowloris"),
        100
    );
}

#[test]
fn an_admin_request_dribbled_byte_by_byte_gets_408_after_the_whole_request_deadline() {
    let p = admin_only("");
    let mut s = connect(p.addr("admin"));
    let start = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    // One byte a second: every read is well within any per-read timeout.
    let writer = {
        let mut w = s.try_clone().unwrap();
        thread::spawn(move || {
            for _ in 0..30 {
                thread::sleep(Duration::from_secs(1));
                if w.write_all(b"X").is_err() {
                    return;
                }
            }
        })
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(25)));
    let r = read_response(&mut s).expect("a 408 before the connection closes");
    assert_eq!(r.0, 408, "{}", r.1);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(16),
        "408 after {took:?} (deadline 10 s from the first byte)"
    );
    drop(s);
    join_timeout(writer, Duration::from_secs(40), "writer");
}

// ---- item 7: If-Match with a tag that is not ours ---------------------------------------------

#[test]
fn if_match_with_a_foreign_or_stale_tag_is_412_and_a_list_holding_ours_passes() {
    let p = admin_only("");
    let admin = p.addr("admin");
    let body = Some(r#"{"backends":["127.0.0.1:9"]}"#);
    let r = call(admin, "GET", "/v1/config", None);
    let etag = r.etag();
    for tag in [
        "\"stale-version\"",
        "\"0\"",
        "W/\"x\"",
        "garbage",
        "\"99999\"",
    ] {
        let r = call_h(admin, "PUT", "/v1/clusters/c1", &[("If-Match", tag)], body);
        assert_eq!(r.status, 412, "If-Match {tag}: {}", r.text());
        assert_eq!(r.code(), "version_mismatch");
    }
    let list = format!("\"stale-version\", {etag}");
    let r = call_h(
        admin,
        "PUT",
        "/v1/clusters/c1",
        &[("If-Match", &list)],
        body,
    );
    assert_eq!(r.status, 201, "If-Match {list}: {}", r.text());
    let r = call_h(
        admin,
        "DELETE",
        "/v1/clusters/c1",
        &[("If-Match", "*")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---- item 8: admin authentication failures ----------------------------------------------------

#[test]
fn failed_admin_authentication_is_logged_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "right-token\n").unwrap();
    let p = admin_only(&format!("admin_token_file = \"{}\"", token.display()));
    let admin = p.addr("admin");
    let body = Some(r#"{"backends":["127.0.0.1:9"]}"#);
    let wrong = [("Authorization", "Bearer wrong")];
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(call_h(admin, "PUT", "/v1/clusters/c", &wrong, body).status);
    }
    let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert!(
        (5..=15).contains(&unauthorized) && unauthorized + limited == 40,
        "{statuses:?}"
    );
    // Locked out: even the right token is not looked at.
    let right = [("Authorization", "Bearer right-token")];
    let r = call_h(admin, "PUT", "/v1/clusters/c", &right, body);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "too_many_attempts");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Reads stay open.
    assert_eq!(call(admin, "GET", "/health", None).status, 200);
    // Logged, but not once per failure.
    wait_until(Duration::from_secs(5), "a log line", || {
        p.stderr_text().contains("authentication failed")
    });
    let lines = p
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("authentication failed"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines for 40 failures"
    );
    assert!(p.stderr_text().contains("wrong token from 127.0.0.1"));
    // The allowance comes back (one failure a second).
    thread::sleep(Duration::from_millis(1500));
    let r = call_h(admin, "PUT", "/v1/clusters/c", &right, body);
    assert_eq!(r.status, 201, "{}", r.text());
}

// ---- item 8: names and ports that cannot work ------------------------------------------------

#[test]
fn a_cluster_named_dot_dot_and_a_backend_on_port_0_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \".\"\nbind = \"127.0.0.1:0\"\ncluster = \"..\"\n\n\
         [[clusters]]\nname = \"..\"\nbackends = [\"127.0.0.1:0\", \":0\"]\n",
    )
    .unwrap();
    let out = run_to_exit(
        &["check", "-c", path.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    for want in [
        "error: listeners[0].name: invalid name \".\"",
        "error: clusters[0].name: invalid name \"..\"",
        "error: clusters[0].backends[0]: invalid backend address \"127.0.0.1:0\": port 0",
        "error: clusters[0].backends[1]: invalid backend address \":0\": port 0",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in:\n{}",
            out.stderr
        );
    }
    // Through the API too.
    let p = admin_only("");
    let admin = p.addr("admin");
    let r = call(
        admin,
        "PUT",
        "/v1/clusters/..",
        Some(r#"{"backends":["127.0.0.1:9"]}"#),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = call(
        admin,
        "PUT",
        "/v1/clusters/ok",
        Some(r#"{"backends":["127.0.0.1:0"]}"#),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("port 0"), "{}", r.text());
}

// ---- item 8: state_dir that cannot hold state -------------------------------------------------

const MINIMAL: &str = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncluster = \"c\"\n\
                       [[clusters]]\nname = \"c\"\nbackends = [\"127.0.0.1:9\"]\n";

#[test]
fn a_state_dir_that_is_a_file_is_refused_by_check_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for (state_dir, want) in [
        (file.clone(), "is not a directory".to_string()),
        (
            file.join("sub"),
            format!(": {} is not a directory", file.display()),
        ),
    ] {
        let path = dir.path().join("sw.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{MINIMAL}",
                state_dir.display()
            ),
        )
        .unwrap();
        for cmd in ["check", "run"] {
            let out = run_to_exit(
                &[cmd, "-c", path.to_str().unwrap()],
                dir.path(),
                Duration::from_secs(10),
            );
            assert_eq!(out.status.code(), Some(64), "{cmd}: {}", out.stderr);
            assert!(
                out.stderr.contains("error: server.state_dir: ") && out.stderr.contains(&want),
                "{cmd}: {}",
                out.stderr
            );
        }
    }
    // A directory that does not exist yet, in one that does, is fine (created at start).
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"{}\"\n{MINIMAL}",
            dir.path().join("new/state").display()
        ),
    )
    .unwrap();
    let out = run_to_exit(
        &["check", "-c", path.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

// ---- item 8: a torn access-log line left by kill -9 --------------------------------------------

#[test]
fn after_a_crash_left_a_torn_access_log_line_the_next_process_starts_a_fresh_line() {
    let b = demo("b");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // What a kill -9 in the middle of a write leaves.
    std::fs::write(
        &log,
        "{\"time\":\"2026-01-01T00:00:00Z\",\"client\":\"127.0.0.1\",\"meth",
    )
    .unwrap();
    let list = format!("\"{}\"", b.addr("demo-backend"));
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\naccess_log = \"{}\"\n\n[[listeners]]\nname = \"web\"\n\
         bind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\n[[clusters]]\n\
         name = \"app\"\nbackends = [{list}]\n",
        log.display()
    ));
    for _ in 0..3 {
        assert_eq!(
            call(p.addr("web"), "GET", "/?after-crash", None).status,
            200
        );
    }
    wait_until(Duration::from_secs(5), "three log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.matches("/?after-crash").count() == 3)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].ends_with("\"meth"),
        "the torn line is left as it was"
    );
    for l in &lines[1..] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["path"], "/?after-crash");
    }
}

// ---- Data-plane behaviour the session-core rewrite must bring (failing today) ---------------

/// Item 6. Two health-checked backends under keep-alive load; one is killed (SIGKILL) while it
/// holds requests in flight. Expected: every request gets a 2xx — the ones in flight on the
/// dead backend are sent again to the other one (`retry_on = ["reset"]`, the default: "the
/// connection broke before any response byte"; GETs without a body). Three rounds.
///
/// Root cause today: `RetryPolicy::on_reset` is parsed and never read. A reset before any
/// response byte is retried only when the upstream connection came from the pool
/// (`http_upstream_failed`: `was_reused && retryable`); on a fresh connection it is a 502.
/// wrk hit the window in one run of four because most of its requests ride pooled
/// connections; `?delay_ms` here keeps requests in flight on fresh ones too.
#[test]
fn killing_one_of_two_health_checked_backends_under_load_fails_no_request() {
    for round in 0..3 {
        let a = demo("a");
        let b = demo("b");
        let p = http_proxy(
            "",
            // No pooling: every request on a fresh upstream connection, the case wrk hits
            // whenever its concurrency outgrows the pool.
            "pool_max_idle = 0\n[clusters.health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1",
            &[a.addr("demo-backend"), b.addr("demo-backend")],
        );
        let web = p.addr("web");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut c = util::client::Client::new(web);
                    let (mut ok, mut bad) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match c.request("GET", "/?delay_ms=20", &[], None) {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => bad.push(format!("{} {}", r.status, r.text().trim())),
                            Err(e) => bad.push(format!("transport: {e}")),
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(700));
        a.signal(nix::sys::signal::Signal::SIGKILL);
        thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut ok = 0;
        let mut bad = Vec::new();
        for c in clients {
            let (o, b) = join_timeout(c, Duration::from_secs(20), "client");
            ok += o;
            bad.extend(b);
        }
        assert!(ok > 50, "round {round}: only {ok} answers");
        assert!(bad.is_empty(), "round {round}: {ok} ok, failed: {bad:?}");
    }
}

/// Item 8. A request head not complete within `request_header_timeout` is answered `408
/// Request Timeout` (as HAProxy does), then the connection closes cleanly. Today it is closed
/// without a word.
#[test]
fn a_request_head_too_slow_gets_408() {
    let b = demo("b");
    let p = http_proxy(
        "request_header_timeout = \"1s\"",
        "",
        &[b.addr("demo-backend")],
    );
    let mut s = connect(p.addr("web"));
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.as_ref().map(|r| r.0), Some(408), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_eq!(end_of(&mut s, Duration::from_secs(3)), End::Clean);
}

/// Item 8. A 431 or 414 refuses a request while the client is still sending it. Expected: the
/// whole error response, then a *lingering* close — the proxy shuts down its sending side and
/// reads (and discards) what the client still sends for a short while, as nginx's
/// `lingering_close` does — so the client reads the answer and a FIN. Today the socket is
/// closed with unread bytes in it: the kernel sends a RST, which can destroy the response
/// before the client reads it.
#[test]
fn a_431_or_414_is_followed_by_a_lingering_close_not_a_reset() {
    let b = demo("b");
    let p = http_proxy(
        "max_header_bytes = \"16KiB\"",
        "",
        &[b.addr("demo-backend")],
    );
    let web = p.addr("web");
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}",
        (0..4000)
            .map(|i| format!("X-Filler-{i}: vvvvvvvvvvvvvvvvvvvvvvvv\r\n"))
            .collect::<String>()
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(150_000));
    for (what, req, want) in [("431", big_head, 431), ("414", long_uri, 414)] {
        let mut s = connect(web);
        let mut w = s.try_clone().unwrap();
        let req = req.into_bytes();
        let writer = thread::spawn(move || {
            // The client keeps sending the rest of its request for a moment.
            w.write_all(&req)?;
            for _ in 0..4 {
                thread::sleep(Duration::from_millis(150));
                w.write_all(&[b'z'; 16 * 1024])?;
            }
            Ok::<(), std::io::Error>(())
        });
        thread::sleep(Duration::from_millis(400));
        let r = read_response(&mut s);
        assert_eq!(
            r.map(|r| r.0),
            Some(want),
            "{what}: the whole error response"
        );
        assert_eq!(
            end_of(&mut s, Duration::from_secs(5)),
            End::Clean,
            "{what}: then a FIN"
        );
        // The proxy read and dropped the rest of the request instead of resetting: on Linux
        // the reset shows to the sender (the reader may still find the answer queued).
        let sent = writer.join().unwrap();
        assert!(
            sent.is_ok(),
            "{what}: the client's sending was reset: {sent:?}"
        );
    }
}

/// A backend that counts connections and records, per connection, the bytes it received and
/// whether it saw the end of the stream; it answers 200 once `want` body bytes arrived.
struct BodySink {
    addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    eofs: Arc<std::sync::atomic::AtomicUsize>,
}

impl BodySink {
    fn new(want: usize) -> BodySink {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let eofs = Arc::new(AtomicUsize::new(0));
        let (acc, eo) = (accepted.clone(), eofs.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                acc.fetch_add(1, SeqCst);
                let eo = eo.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut got = Vec::new();
                    let mut b = [0u8; 65536];
                    loop {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => {
                                eo.fetch_add(1, SeqCst);
                                return;
                            }
                            Ok(n) => got.extend_from_slice(&b[..n]),
                        }
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            if got.len() - (i + 4) >= want {
                                let _ =
                                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                                got.clear();
                            }
                        }
                    }
                });
            }
        });
        BodySink {
            addr,
            accepted,
            eofs,
        }
    }
}

/// Item 8. `request_body_timeout` (listener): a request body that stalls this long is answered
/// `408` and its upstream connection is closed, instead of holding a backend connection until
/// the cluster's `first_byte_timeout` (60 s by default).
#[test]
fn a_stalled_request_body_is_408_after_request_body_timeout_and_frees_the_backend() {
    use std::sync::atomic::Ordering::SeqCst;
    let sink = BodySink::new(100_000);
    let p = http_proxy("request_body_timeout = \"1s\"", "", &[sink.addr]);
    let mut s = connect(p.addr("web"));
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
        .unwrap();
    let start = Instant::now();
    let r = read_response(&mut s);
    assert_eq!(r.map(|r| r.0), Some(408));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    wait_until(
        Duration::from_secs(3),
        "the backend connection closed",
        || sink.eofs.load(SeqCst) >= sink.accepted.load(SeqCst),
    );
}

/// Item 8. Bounded request buffering (listener `request_buffering = "64KiB"`, as nginx's
/// `proxy_request_buffering on` with a bounded buffer): a body up to that size is read whole
/// before a backend is picked, so a slow client holds no backend connection; the request then
/// goes up with its body in one piece.
#[test]
fn a_slow_body_within_the_buffering_limit_holds_no_backend_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let sink = BodySink::new(10_000);
    let p = http_proxy("request_buffering = \"64KiB\"", "", &[sink.addr]);
    let mut s = connect(p.addr("web"));
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'a'; 5000]).unwrap();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sink.accepted.load(SeqCst),
        0,
        "a backend connection while the body trickles"
    );
    s.write_all(&[b'b'; 5000]).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.map(|r| r.0), Some(200));
    assert_eq!(sink.accepted.load(SeqCst), 1);
}
