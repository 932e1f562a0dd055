//! Foo stats end to end: a Foo client (concurrent connections, pipelined random messages,
//! every reply validated) through quick mode against `demo-backend --protocol foo`, then the
//! SIGUSR2 dump (exact counts, rates, key order), and the recovery file across `kill -9`.
mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::Value;
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

fn demo_foo_backend() -> Proxy {
    Proxy::start_args(
        &[
            "demo-backend",
            "--protocol",
            "foo",
            "--listen",
            "127.0.0.1:0",
        ],
        &["demo-backend"],
    )
}

fn quick(backend: &Proxy, recovery: &Path) -> Proxy {
    Proxy::start_args(
        &[
            "-listen".into(),
            "127.0.0.1:0".into(),
            "-forward".into(),
            backend.addr("demo-backend").to_string(),
            "-protocol".into(),
            "foo".into(),
            "-recovery-path".into(),
            recovery.display().to_string(),
            "-http".into(),
            "127.0.0.1:0".into(),
        ],
        &["quick", "admin"],
    )
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_data(rng: &mut Rng) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/=+ ";
    let len = 1 + rng.below(40) as usize;
    let mut s: Vec<u8> = (0..len)
        .map(|_| ALPHA[rng.below(ALPHA.len() as u64) as usize])
        .collect();
    // No leading space: the data follows the seq after exactly one space.
    s[0] = b'x';
    String::from_utf8(s).unwrap()
}

/// What one client sent; replies are counted by the proxy as ACK or NAK.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    /// Lines whose type token is `REQ` (valid or not).
    req: u64,
    /// Lines with another type token.
    invalid: u64,
    ack: u64,
    nak: u64,
}

/// When each batch went out: (time, REQs, lines).
type SendLog = Arc<Mutex<Vec<(Instant, u64, u64)>>>;

/// Lines per batch: 8 valid REQs, 1 REQ with a bad seq (answered NAK), 1 unknown type (NAK).
const BATCH: u64 = 10;
const REQ_PER_BATCH: u64 = 9;

/// One client: `batches` batches of pipelined lines, one batch every `period` on a fixed
/// schedule (late batches catch up), each batch written in two pieces cut at a random byte.
/// A reader thread checks every reply, in order.
fn foo_client(
    addr: SocketAddr,
    seed: u64,
    batches: u64,
    period: Duration,
    start: Instant,
    log: SendLog,
) -> Result<Sent, String> {
    let mut rng = Rng(seed | 1);
    let mut c = connect(addr);
    let rd = c.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = spawn_small("foo-reader", move || -> Result<u64, String> {
        let mut r = BufReader::new(rd);
        let mut line = Vec::new();
        let mut n = 0;
        for want in rx {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => return Err(format!("EOF after {n} replies")),
                Ok(_) => {}
                Err(e) => return Err(format!("read error after {n} replies: {e}")),
            }
            let got = String::from_utf8_lossy(&line);
            if got != want {
                return Err(format!("reply {}: got {got:?}, want {want:?}", n + 1));
            }
            n += 1;
        }
        Ok(n)
    });
    let mut sent = Sent::default();
    let mut seq = 0u64;
    for b in 0..batches {
        let at = start + period * b as u32;
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let mut wire = Vec::new();
        let bad = rng.below(BATCH);
        let mut odd = rng.below(BATCH);
        if odd == bad {
            odd = (odd + 1) % BATCH;
        }
        for i in 0..BATCH {
            seq += 1;
            let data = random_data(&mut rng);
            let (line, reply) = if i == bad {
                sent.req += 1;
                sent.nak += 1;
                (
                    format!("REQ x{seq} {data}\n"),
                    format!("NAK x{seq} {data}\n"),
                )
            } else if i == odd {
                let kind = ["FOO", "req", "REQX", "HELLO"][rng.below(4) as usize];
                sent.invalid += 1;
                sent.nak += 1;
                (
                    format!("{kind} {seq} {data}\n"),
                    format!("NAK {seq} {data}\n"),
                )
            } else {
                sent.req += 1;
                sent.ack += 1;
                (format!("REQ {seq} {data}\n"), format!("ACK {seq} {data}\n"))
            };
            wire.extend_from_slice(line.as_bytes());
            tx.send(reply).map_err(|_| "reader gone".to_string())?;
        }
        let cut = rng.below(wire.len() as u64) as usize;
        c.write_all(&wire[..cut])
            .map_err(|e| format!("write: {e}"))?;
        c.write_all(&wire[cut..])
            .map_err(|e| format!("write: {e}"))?;
        if let Ok(mut l) = log.lock() {
            l.push((Instant::now(), REQ_PER_BATCH, BATCH));
        }
    }
    drop(tx);
    let n = join_timeout(reader, Duration::from_secs(30), "foo-reader")?;
    if n != sent.ack + sent.nak {
        return Err(format!("{n} replies for {} lines", sent.ack + sent.nak));
    }
    Ok(sent)
}

/// Runs `clients` paced clients and returns what they sent in total.
fn run_clients(addr: SocketAddr, clients: usize, batches: u64, period: Duration) -> Sent {
    run_clients_logged(addr, clients, batches, period, SendLog::default())
}

fn run_clients_logged(
    addr: SocketAddr,
    clients: usize,
    batches: u64,
    period: Duration,
    log: SendLog,
) -> Sent {
    let start = Instant::now() + Duration::from_millis(50);
    let hs: Vec<_> = (0..clients)
        .map(|i| {
            let log = log.clone();
            spawn_small("foo-client", move || {
                foo_client(addr, 0xf00d + i as u64 * 7919, batches, period, start, log)
            })
        })
        .collect();
    let mut total = Sent::default();
    let mut errs = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        match join_timeout(h, Duration::from_secs(60), "foo-client") {
            Ok(s) => {
                total.req += s.req;
                total.invalid += s.invalid;
                total.ack += s.ack;
                total.nak += s.nak;
            }
            Err(e) => errs.push(format!("client {i}: {e}")),
        }
    }
    assert!(errs.is_empty(), "Foo clients failed: {errs:#?}");
    total
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no integer {k:?} in {v}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("no number {k:?} in {v}"))
}

fn assert_counts(st: &Value, sent: &Sent) {
    assert_eq!(u(st, "msg_req"), sent.req, "msg_req: {st}");
    assert_eq!(u(st, "msg_ack"), sent.ack, "msg_ack: {st}");
    assert_eq!(u(st, "msg_nak"), sent.nak, "msg_nak: {st}");
    assert_eq!(u(st, "msg_invalid"), sent.invalid, "msg_invalid: {st}");
    assert_eq!(
        u(st, "msg_total"),
        sent.req + sent.ack + sent.nak,
        "msg_total: {st}"
    );
}

fn within(got: f64, want: f64, tol: f64, what: &str, st: &Value) {
    assert!(
        (got - want).abs() <= want * tol,
        "{what} = {got}, expected {want} ± {:.0}%; stats: {st}",
        tol * 100.0
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn foo_dump_counts_every_message_and_rates_match_the_send_rate() {
    const CLIENTS: usize = 3;
    const PERIOD: Duration = Duration::from_millis(50);
    const BATCHES: u64 = 230; // 11.5 s
    let backend = demo_foo_backend();
    let dir = tempfile::tempdir().unwrap();
    let proxy = quick(&backend, &dir.path().join("recovery.json"));
    let addr = proxy.addr("quick");

    let log = SendLog::default();
    let traffic_log = log.clone();
    let traffic = spawn_small("foo-traffic", move || {
        run_clients_logged(addr, CLIENTS, BATCHES, PERIOD, traffic_log)
    });
    // Mid-traffic, once the 10 s window is full of it.
    std::thread::sleep(Duration::from_millis(10_700));
    let at = Instant::now();
    let mid = proxy.stats();
    // The known send rate: planned, and as actually sent over the same windows (a loaded
    // machine can stall the senders, who then catch up).
    let per_s = 1.0 / PERIOD.as_secs_f64() * CLIENTS as f64;
    let planned = per_s * REQ_PER_BATCH as f64;
    let sent_rate = |secs: u64, lines: bool| {
        let from = at - Duration::from_secs(secs);
        let l = log.lock().unwrap();
        let n: u64 = l
            .iter()
            .filter(|(t, _, _)| *t > from && *t <= at)
            .map(|(_, r, b)| if lines { *b } else { *r })
            .sum();
        n as f64 / secs as f64
    };
    let r10 = sent_rate(10, false);
    assert!(
        (r10 - planned).abs() <= planned * 0.25,
        "the senders fell far behind their schedule: {r10}/s for {planned}/s planned"
    );
    for (k, secs, lines) in [
        ("request_rate_1s", 1, false),
        ("request_rate_10s", 10, false),
        ("response_rate_1s", 1, true),
        ("response_rate_10s", 10, true),
    ] {
        within(f(&mid, k), sent_rate(secs, lines), 0.10, k, &mid);
    }

    let sent = join_timeout(traffic, Duration::from_secs(60), "foo-traffic");
    assert_eq!(sent.req, CLIENTS as u64 * BATCHES * REQ_PER_BATCH);
    // Every reply has reached the client, so the proxy has read (and counted) every line.
    let _ = proxy.stdout_lines(Duration::ZERO);
    let st = proxy.stats();
    assert_counts(&st, &sent);
    // Exactly one line per SIGUSR2.
    let extra = proxy.stdout_lines(Duration::from_millis(300));
    assert!(
        extra.is_empty(),
        "more than one stdout line per SIGUSR2: {extra:?}"
    );
    // The Foo keys first, in the original order; rates are floats.
    let keys: Vec<&str> = st.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..8], &FOO_KEYS, "{st}");
    for k in &FOO_KEYS[4..] {
        assert!(st[k].is_f64(), "{k} is not a float: {st}");
    }
    // The per-listener and per-backend trees agree with the process-wide counters.
    let l = &st["listeners"]["quick"];
    assert_eq!(u(l, "connections"), CLIENTS as u64, "{st}");
    assert_eq!(l["protocol"], "foo");
    let b = &st["clusters"]["forward"]["backends"][backend.addr("demo-backend").to_string()];
    assert_eq!(u(b, "connections"), CLIENTS as u64, "{st}");
    assert_eq!(
        u(b, "bytes_in"),
        tcp_of(&st, "bytes_client_to_backend"),
        "{st}"
    );
    assert_eq!(
        u(&st["latency_ms"]["connect"], "count"),
        CLIENTS as u64,
        "{st}"
    );
}

/// Waits until the recovery file holds `msg_req == want`; returns its contents.
fn wait_saved(path: &Path, want: u64) -> Value {
    poll_until(
        Duration::from_secs(5),
        "recovery file with all messages",
        || {
            let text = std::fs::read_to_string(path).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            (v["msg_req"].as_u64() == Some(want)).then_some(v)
        },
    )
}

#[test]
fn foo_kill_9_and_restart_within_10s_restores_totals_and_window() {
    let backend = demo_foo_backend();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/recovery.json");
    let proxy = quick(&backend, &path);
    let sent = run_clients(proxy.addr("quick"), 4, 20, Duration::from_millis(20));
    // One connection is still open when the process dies.
    let _open = connect(proxy.addr("quick"));
    proxy.wait_tcp("accepted", Duration::from_secs(5), |v| v == 5);
    wait_until(Duration::from_secs(5), "the open connection saved", || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["tcp"]["accepted"] == 5)
    });
    let saved = wait_saved(&path, sent.req);
    // The original keys are there.
    assert_eq!(
        saved["requests_10s"].as_array().map(Vec::len),
        Some(10),
        "{saved}"
    );
    assert_eq!(
        saved["responses_10s"].as_array().map(Vec::len),
        Some(10),
        "{saved}"
    );
    let slots: u64 = saved["requests_10s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        slots, sent.req,
        "all REQs fall in the saved 10 s window: {saved}"
    );
    assert_eq!(u(&saved, "index"), u(&saved, "time_stamp") % 10);
    let before = proxy.stats();
    assert_counts(&before, &sent);
    proxy.signal(Signal::SIGKILL);
    assert!(proxy.wait_exit(Duration::from_secs(5)).is_some());
    drop(proxy);

    let proxy = quick(&backend, &path);
    let st = proxy.stats();
    assert!(
        unix_now() - u(&saved, "time_stamp") <= 10,
        "the test itself took too long to check the window"
    );
    assert_counts(&st, &sent);
    assert_eq!(tcp_of(&st, "accepted"), 5, "tcp totals come back too: {st}");
    // The dead process's connections are not active in the new one.
    assert_eq!(tcp_of(&st, "active"), 0, "{st}");
    let l = &st["listeners"]["quick"];
    assert_eq!((u(l, "connections"), u(l, "active")), (5, 0), "{st}");
    let b = &st["clusters"]["forward"]["backends"][backend.addr("demo-backend").to_string()];
    assert_eq!(u(b, "connections"), 5, "{st}");
    assert_eq!(
        u(b, "bytes_in"),
        tcp_of(&before, "bytes_client_to_backend"),
        "{st}"
    );
    // The window came back: the REQs are still inside the last 10 seconds.
    let r10 = f(&st, "request_rate_10s") * 10.0;
    assert!(
        (r10 - sent.req as f64).abs() <= 1.0,
        "request_rate_10s × 10 = {r10}, sent {}: {st}",
        sent.req
    );
    let p10 = f(&st, "response_rate_10s") * 10.0;
    assert!((p10 - (sent.ack + sent.nak) as f64).abs() <= 1.0, "{st}");
    assert!(
        proxy.stderr_text().contains("restored"),
        "{}",
        proxy.stderr_text()
    );
    // New traffic adds to the restored totals.
    let more = run_clients(proxy.addr("quick"), 1, 3, Duration::from_millis(10));
    let st = proxy.stats();
    assert_eq!(u(&st, "msg_req"), sent.req + more.req, "{st}");
}

#[test]
fn foo_restart_after_11s_starts_fresh() {
    let backend = demo_foo_backend();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recovery.json");
    let proxy = quick(&backend, &path);
    let sent = run_clients(proxy.addr("quick"), 2, 5, Duration::from_millis(10));
    wait_saved(&path, sent.req);
    proxy.signal(Signal::SIGKILL);
    assert!(proxy.wait_exit(Duration::from_secs(5)).is_some());
    drop(proxy);
    std::thread::sleep(Duration::from_secs(11));

    let proxy = quick(&backend, &path);
    let st = proxy.stats();
    for k in FOO_KEYS {
        assert_eq!(st[k].as_f64(), Some(0.0), "{k} after 11 s: {st}");
    }
    assert_eq!(tcp_of(&st, "accepted"), 0, "{st}");
    assert!(
        proxy.stderr_text().contains("starting fresh"),
        "{}",
        proxy.stderr_text()
    );
}

#[test]
fn foo_torn_or_corrupt_recovery_file_starts_fresh_with_a_warning() {
    let backend = demo_foo_backend();
    let now = unix_now();
    for (what, text) in [
        (
            "torn",
            format!("{{\"index\":{},\"time_stamp\":{now},\"requests_10s\":[1,2,3", now % 10),
        ),
        (
            "corrupt",
            format!(
                "{{\"index\":{},\"time_stamp\":{now},\"requests_10s\":\"many\",\"responses_10s\":[],\"msg_req\":7}}",
                now % 10
            ),
        ),
        ("binary", "\u{0}\u{1}garbage".to_string()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recovery.json");
        std::fs::write(&path, text).unwrap();
        let proxy = quick(&backend, &path);
        let st = proxy.stats();
        assert_eq!(u(&st, "msg_total"), 0, "{what}: {st}");
        assert_eq!(u(&st, "msg_req"), 0, "{what}: {st}");
        let warn = proxy
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("WARN") && l.contains("recovery file"));
        assert!(warn.is_some(), "{what}: no warning:\n{}", proxy.stderr_text());
        // It keeps working, and the next save replaces the bad file with a good one.
        let sent = run_clients(proxy.addr("quick"), 1, 2, Duration::from_millis(10));
        wait_saved(&path, sent.req);
    }
}
