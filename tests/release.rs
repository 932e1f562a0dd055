//! Release strategies end to end: the real binary, demo-backend versions, and clients with
//! real cookie jars (Python's http.cookiejar on keep-alive http.client connections, see
//! tests/scripts/cookie_clients.py): session stickiness with a sliding expiry, per-request
//! switching on one keep-alive connection, gradual's share and one-way moves (exactly and
//! within binomial bounds), canary weights and stickiness, the forcing header, the admin API
//! of services (versions, promote, rollback, ETags, persistence) and per-version metrics.

mod util;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use util::client::{call, Client};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// Two demo backends `v1` and `v2` in clusters `c1` and `c2`, a service `shop` (the given
/// TOML lines) behind an http listener `web`.
fn shop(service: &str, server_extra: &str) -> (Proxy, Proxy, Proxy) {
    let b1 = demo("v1");
    let b2 = demo("v2");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 2\n{server_extra}\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\nservice = \"shop\"\n\n[[clusters]]\nname = \"c1\"\nbackends = [\"{}\"]\n\n\
         [[clusters]]\nname = \"c2\"\nbackends = [\"{}\"]\n\n[[services]]\nname = \"shop\"\n{service}\n",
        b1.addr("demo-backend"),
        b2.addr("demo-backend")
    ));
    (p, b1, b2)
}

/// FNV-1 64 (Go's hash/fnv.New64) of a transition id, mod 100: the original's bucket.
fn bucket(id: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h = h.wrapping_mul(0x100000001b3);
        h ^= u64::from(b);
    }
    h % 100
}

/// The value of cookie `name` in a list of Set-Cookie headers.
fn set_value(set: &Value, name: &str) -> Option<String> {
    set.as_array()?.iter().find_map(|h| {
        let first = h.as_str()?.split(';').next()?;
        let (n, v) = first.split_once('=')?;
        (n.trim() == name).then(|| v.trim().to_string())
    })
}

/// The cookie clients script, driven round by round.
struct Cookies {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Cookies {
    fn start(spec: Value) -> Cookies {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/scripts/cookie_clients.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Cookies {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for `PAUSE k`.
    fn paused(&mut self, k: u32) {
        let want = format!("PAUSE {k}");
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("cookie clients: no pause line");
            if l == want {
                return;
            }
        }
    }

    fn resume(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Per client, per request.
    fn result(mut self) -> Vec<Vec<Value>> {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .expect("cookie clients: no result");
            if let Some(j) = l.strip_prefix("RESULT ") {
                let _ = self.child.wait();
                let v: Value = serde_json::from_str(j).unwrap();
                return v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_array().unwrap().clone())
                    .collect();
            }
        }
    }
}

impl Drop for Cookies {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(p: &Proxy, clients: usize, rounds: u32) -> Value {
    let web = p.addr("web");
    json!({"host": "127.0.0.1", "port": web.port(), "path": "/", "clients": clients, "rounds": rounds})
}

#[test]
fn session_many_clients_stay_while_their_cookie_slides_then_expire_to_the_newest() {
    let (p, _b1, _b2) = shop(
        "strategy = \"session\"\nsession_timeout = \"2s\"\nversions = [{ version = \"1.0\", cluster = \"c1\" }]",
        "",
    );
    let admin = p.addr("admin");
    let mut s = spec(&p, 30, 7);
    s["interval"] = json!(0.5);
    s["pause_after"] = json!([1, 6]);
    let mut c = Cookies::start(s);
    c.paused(1);
    // Every client is on 1.0 now; 1.1 arrives.
    let r = call(
        admin,
        "POST",
        "/v1/services/shop/versions",
        Some(r#"{"version":"1.1","cluster":"c2"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A client without a cookie goes to the newest at once.
    let fresh = call(p.addr("web"), "GET", "/", None);
    assert_eq!(fresh.text().trim(), "v2");
    c.resume();
    c.paused(6);
    // Rounds 2-6 took about 2.5 s: past the first cookie's 2 s, so only a sliding expiry kept
    // the clients on 1.0. Now let every cookie expire.
    std::thread::sleep(Duration::from_millis(2600));
    c.resume();
    let res = c.result();
    assert_eq!(res.len(), 30);
    for (i, reqs) in res.iter().enumerate() {
        let bodies: Vec<&str> = reqs.iter().map(|r| r["body"].as_str().unwrap()).collect();
        assert_eq!(
            bodies,
            ["v1", "v1", "v1", "v1", "v1", "v1", "v2"],
            "client {i}: {reqs:?}"
        );
        assert!(reqs.iter().all(|r| r["status"] == 200));
        // Real Set-Cookie headers on every response; the jar sent them back.
        assert_eq!(
            reqs[0]["set"][0],
            "dynsoftup=1.0; Path=/; Max-Age=2; HttpOnly; SameSite=Lax"
        );
        assert_eq!(reqs[0]["sent"], Value::Null);
        for r in &reqs[1..6] {
            assert_eq!(r["sent"], "dynsoftup=1.0");
            assert_eq!(set_value(&r["set"], "dynsoftup").as_deref(), Some("1.0"));
        }
        assert_eq!(reqs[6]["sent"], Value::Null, "expired in the jar");
        assert_eq!(
            set_value(&reqs[6]["set"], "dynsoftup").as_deref(),
            Some("1.1")
        );
        // One keep-alive connection per client throughout.
        let port = &reqs[0]["port"];
        assert!(
            reqs.iter().all(|r| &r["port"] == port),
            "client {i}: {reqs:?}"
        );
    }
    // The time between a client's first and sixth request exceeded the timeout.
    let t = |r: &Value| r["t"].as_f64().unwrap();
    assert!(t(&res[0][5]) - t(&res[0][0]) > 2.1, "{:?}", res[0]);
}

/// Sends `GET /` with `extra` header lines on `s`; returns (body, Set-Cookie lines).
fn get_on(s: &mut TcpStream, extra: &str) -> (String, Vec<String>) {
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    while buf.len() < end + len {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&b[..n]);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let cookies = head
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .map(str::to_string)
        .collect();
    (
        String::from_utf8_lossy(&buf[end..end + len])
            .trim()
            .to_string(),
        cookies,
    )
}

#[test]
fn every_request_on_one_keepalive_connection_is_decided_on_its_own() {
    let (p, _b1, _b2) = shop(
        "strategy = \"session\"\nforce_header = \"X-Version\"\n\
         versions = [{ version = \"1.0\", cluster = \"c1\" }, { version = \"1.1\", cluster = \"c2\" }]",
        "",
    );
    let mut s = TcpStream::connect(p.addr("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (b, set) = get_on(&mut s, "");
    assert_eq!(b, "v2");
    assert_eq!(
        set,
        ["dynsoftup=1.1; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax"]
    );
    for _ in 0..3 {
        assert_eq!(get_on(&mut s, "Cookie: dynsoftup=1.0\r\n").0, "v1");
        assert_eq!(get_on(&mut s, "Cookie: dynsoftup=1.1\r\n").0, "v2");
        assert_eq!(get_on(&mut s, "Cookie: a=b; dynsoftup=9.9\r\n").0, "v2");
        // The forcing header wins over the cookie and makes nobody sticky.
        let (b, set) = get_on(&mut s, "Cookie: dynsoftup=1.1\r\nx-version: 1.0\r\n");
        assert_eq!(b, "v1");
        assert!(set.is_empty(), "{set:?}");
    }
    // A rollback is seen by the next request on the same connection.
    let r = call(p.addr("admin"), "POST", "/v1/services/shop/rollback", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let (b, set) = get_on(&mut s, "Cookie: dynsoftup=1.1\r\n");
    assert_eq!(b, "v1", "sticky requests leave a rolled-back version");
    assert_eq!(
        set,
        ["dynsoftup=1.0; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax"]
    );
    // Testers can still reach it.
    assert_eq!(get_on(&mut s, "X-VERSION: 1.1\r\n").0, "v2");
    let stats = p.stats();
    assert_eq!(
        stats["listeners"]["web"]["connections"], 1,
        "one connection"
    );
    assert_eq!(stats["listeners"]["web"]["requests"], 15);
}

#[test]
fn gradual_moves_clients_exactly_by_bucket_and_share_and_never_back() {
    // share = 0.125 × (routed requests): 100 at the 800th.
    let (p, _b1, _b2) = shop(
        "strategy = \"gradual\"\npercentage_per_request = 0.125\n\
         versions = [{ version = \"1.0\", cluster = \"c1\" }, { version = \"1.1\", cluster = \"c2\" }]",
        "",
    );
    let clients = 100;
    let rounds = 8;
    let res = Cookies::start(spec(&p, clients, rounds)).result();
    let mut on_new_after_round = vec![0u64; rounds as usize];
    let mut expected = vec![0f64; rounds as usize];
    let mut variance = vec![0f64; rounds as usize];
    for (c, reqs) in res.iter().enumerate() {
        let id = set_value(&reqs[0]["set"], "transition").expect("a transition cookie");
        assert_eq!(id.len(), 36, "{id}");
        let b = bucket(&id);
        let mut moved = false;
        for (r, q) in reqs.iter().enumerate() {
            // Requests go one at a time: client c's request in round r is number r*100+c+1.
            let n = (r * clients + c + 1) as f64;
            let share = (n * 0.125).min(100.0);
            let new = q["body"] == "v2";
            assert_eq!(
                new,
                moved || (b as f64) < share,
                "client {c} round {r}: bucket {b}, share {share}"
            );
            moved |= new;
            if r > 0 {
                assert!(q["sent"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("transition={id}")));
                assert!(
                    set_value(&q["set"], "transition").is_none(),
                    "kept, not renewed"
                );
            }
            let version = if new { "1.1" } else { "1.0" };
            assert_eq!(set_value(&q["set"], "dynsoftup").as_deref(), Some(version));
            let p_new = share / 100.0;
            expected[r] += p_new;
            variance[r] += p_new * (1.0 - p_new);
            on_new_after_round[r] += u64::from(new);
        }
    }
    // The share's growth within binomial bounds (buckets of fresh ids are uniform).
    for r in 0..rounds as usize {
        let dev = (on_new_after_round[r] as f64 - expected[r]).abs();
        assert!(
            dev <= 5.0 * variance[r].sqrt() + 1.0,
            "round {r}: {on_new_after_round:?} vs {expected:?}"
        );
    }
    let st = call(p.addr("admin"), "GET", "/v1/services/shop", None).json();
    assert_eq!(st["status"]["share"], 100.0);
}

#[test]
fn canary_shares_within_binomial_bounds_and_sticky() {
    let (p, _b1, _b2) = shop(
        "strategy = \"canary\"\nweights = { \"1.0\" = 80, \"1.1\" = 20 }\n\
         versions = [{ version = \"1.0\", cluster = \"c1\" }, { version = \"1.1\", cluster = \"c2\" }]",
        "",
    );
    let n = 600;
    let res = Cookies::start(spec(&p, n, 3)).result();
    let mut canary = 0u64;
    for reqs in &res {
        let first = reqs[0]["body"].as_str().unwrap().to_string();
        canary += u64::from(first == "v2");
        for q in reqs {
            assert_eq!(q["body"], first.as_str(), "sticky: {reqs:?}");
        }
    }
    // Binomial(600, 0.2): mean 120, sigma 9.8.
    assert!((71..=169).contains(&canary), "{canary} of {n}");
    let m = call(p.addr("admin"), "GET", "/metrics", None).text();
    let line = |v: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "switchyard_version_requests_total{{service=\"shop\",version=\"{v}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no version {v} in\n{m}"))
    };
    assert_eq!(line("1.1"), canary * 3);
    assert_eq!(line("1.0"), (n as u64 - canary) * 3);
    promtool_check(&m);
}

#[test]
fn instant_everything_to_the_newest_and_version_stats() {
    let (p, _b1, _b2) = shop(
        "versions = [{ version = \"1.9\", cluster = \"c1\" }, { version = \"1.10\", cluster = \"c2\" }]",
        "",
    );
    let mut c = Client::new(p.addr("web"));
    for _ in 0..20 {
        let r = c
            .request("GET", "/", &[("Cookie", "dynsoftup=1.9")], None)
            .unwrap();
        assert_eq!(r.text().trim(), "v2", "1.10 is newer than 1.9");
        assert!(r.header("set-cookie").is_none());
    }
    let st = p.stats();
    let v = &st["services"]["shop"];
    assert_eq!(v["strategy"], "instant");
    assert_eq!(v["serving"], "1.10");
    assert_eq!(v["versions"]["1.10"]["requests"], 20);
    assert_eq!(v["versions"]["1.10"]["responses_2xx"], 20);
    assert_eq!(v["versions"]["1.10"]["cluster"], "c2");
    assert_eq!(v["versions"]["1.9"]["requests"], 0);
    assert!(
        v["versions"]["1.10"]["latency_ms"]["request"]["count"]
            .as_u64()
            .unwrap_or(0)
            == 20
    );
}

/// A concurrent service: `v1` (older) and a newest version at `newest`, whose cluster has
/// these extra settings.
fn concurrent(newest: std::net::SocketAddr, newest_extra: &str) -> (Proxy, Proxy) {
    let b1 = demo("v1");
    let p = concurrent_on(b1.addr("demo-backend"), "", newest, newest_extra);
    (p, b1)
}

/// A concurrent service: version 1.0 on `older` and 1.1 on `newest` (one backend each), each
/// cluster with its extra settings.
fn concurrent_on(
    older: std::net::SocketAddr,
    older_extra: &str,
    newest: std::net::SocketAddr,
    newest_extra: &str,
) -> Proxy {
    Proxy::start(&format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\nservice = \"shop\"\n\n[[clusters]]\nname = \"c1\"\nbackends = [\"{older}\"]\n{older_extra}\n\n\
         [[clusters]]\nname = \"c2\"\nbackends = [\"{newest}\"]\nretries = 0\nconnect_attempts = 1\n{newest_extra}\n\n\
         [[services]]\nname = \"shop\"\nstrategy = \"concurrent\"\n\
         versions = [{{ version = \"1.0\", cluster = \"c1\" }}, {{ version = \"1.1\", cluster = \"c2\" }}]\n"
    ))
}

/// A keep-alive HTTP/1.1 backend answering every request with `status` and body `id` after
/// `delay`, counting the connections and requests it gets (its own counters, not the
/// proxy's).
struct Counting {
    addr: std::net::SocketAddr,
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Counting {
    fn start(id: &'static str, status: u16, delay: Duration) -> Counting {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (Arc::clone(&conns), Arc::clone(&requests));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    loop {
                        // One head (and its Content-Length body) at a time.
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut b) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            match s.read(&mut b) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        buf.drain(..end + len);
                        r.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(delay);
                        let ok = write!(
                            s,
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{id}",
                            id.len()
                        );
                        if ok.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Counting {
            addr,
            conns,
            requests,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

#[test]
fn concurrent_newest_answering_500_gives_the_older_answer_for_idempotent_requests() {
    let bad = fixed_backend("bad", 500, Duration::ZERO);
    let (p, _b1) = concurrent(bad, "");
    let web = p.addr("web");
    for _ in 0..5 {
        let r = call(web, "GET", "/", None);
        assert_eq!(
            (r.status, r.text().trim()),
            (200, "v1"),
            "the older one's answer"
        );
    }
    // Not idempotent: the newest only, its answer as it is.
    let r = call(web, "POST", "/", Some("{}"));
    assert_eq!((r.status, r.text().trim()), (500, "bad"));
    let s = p.stats();
    let v = &s["services"]["shop"]["versions"];
    assert_eq!(v["1.1"]["fallbacks"], 5);
    assert_eq!(v["1.1"]["responses_5xx"], 6);
    assert_eq!(v["1.0"]["responses_2xx"], 5);
}

#[test]
fn concurrent_newest_hanging_or_unreachable_gives_the_older_answer() {
    let slow = fixed_backend("slow", 200, Duration::from_secs(5));
    let (p, _b1) = concurrent(slow, "first_byte_timeout = \"300ms\"");
    let t = std::time::Instant::now();
    let r = call(p.addr("web"), "GET", "/", None);
    assert_eq!((r.status, r.text().trim()), (200, "v1"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(p);
    let (p, _b1) = concurrent(dead_addr(), "");
    for _ in 0..3 {
        let r = call(p.addr("web"), "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "v1"));
    }
    let s = p.stats();
    assert_eq!(s["services"]["shop"]["versions"]["1.1"]["fallbacks"], 3);
}

#[test]
fn concurrent_mirrors_idempotent_requests_to_both_versions_and_counts_mismatches() {
    let b2 = demo("v2");
    let (p, b1) = concurrent(b2.addr("demo-backend"), "");
    let web = p.addr("web");
    for _ in 0..10 {
        let r = call(web, "GET", "/", None);
        assert_eq!(r.text().trim(), "v2", "the newest answers");
    }
    // Both versions served every GET; their bodies differ (v1 vs v2): 10 body mismatches. (A
    // mirror may finish just after its client's answer: wait for the last comparison.)
    let s = poll_until(Duration::from_secs(10), "10 mirrors compared", || {
        let s = p.stats();
        (s["services"]["shop"]["versions"]["1.0"]["mirrored"] == 10).then_some(s)
    });
    let v = &s["services"]["shop"]["versions"];
    assert_eq!(v["1.0"]["requests"], 10, "mirrored");
    assert_eq!(v["1.0"]["responses_2xx"], 10);
    assert_eq!(v["1.1"]["requests"], 10);
    assert_eq!(v["1.1"]["mirror_body_mismatches"], 10);
    assert_eq!(v["1.1"]["mirror_status_mismatches"], 0);
    assert_eq!(v["1.1"]["fallbacks"], 0);
    assert_eq!(s["http"]["mirrors"], 10);
    assert_eq!(s["http"]["mirror_answers"], 0);
    assert_eq!(
        s["listeners"]["web"]["requests"], 10,
        "mirrors are not client requests"
    );
    let m = call(p.addr("admin"), "GET", "/metrics", None).text();
    for (name, v, n) in [
        ("switchyard_version_mirror_body_mismatches_total", "1.1", 10),
        (
            "switchyard_version_mirror_status_mismatches_total",
            "1.1",
            0,
        ),
        ("switchyard_version_mirrored_total", "1.0", 10),
    ] {
        let line = format!("{name}{{service=\"shop\",version=\"{v}\"}} {n}");
        assert!(m.lines().any(|l| l == line), "no {line} in\n{m}");
    }
    promtool_check(&m);
    drop(b1);
}

#[test]
fn concurrent_newest_500_gets_the_mirror_answer_with_one_request_per_backend() {
    let old = Counting::start("old", 200, Duration::ZERO);
    let bad = Counting::start("bad", 500, Duration::ZERO);
    let p = concurrent_on(old.addr, "", bad.addr, "");
    let web = p.addr("web");
    for i in 1..=5 {
        let r = call(web, "GET", "/", None);
        assert_eq!(
            (r.status, r.text().trim()),
            (200, "old"),
            "the mirror's answer"
        );
        // Both versions got the request once; nobody got it a second time.
        assert_eq!((bad.requests(), old.requests()), (i, i));
    }
    let s = p.stats();
    let v = &s["services"]["shop"]["versions"];
    assert_eq!(s["http"]["mirror_answers"], 5, "{s}");
    assert_eq!(v["1.1"]["fallbacks"], 5);
    assert_eq!(v["1.1"]["responses_5xx"], 5);
    assert_eq!(v["1.1"]["mirror_status_mismatches"], 5, "500 against 200");
    assert_eq!(
        v["1.1"]["mirror_body_mismatches"], 0,
        "a discarded body is not compared"
    );
    assert_eq!(
        (
            v["1.0"]["requests"].clone(),
            v["1.0"]["responses_2xx"].clone()
        ),
        (json!(5), json!(5)),
        "counted once"
    );
    assert_eq!(v["1.0"]["mirrored"], 5);
    drop(p);

    // The newest fails at once, the mirror is still running: the request waits for it.
    let slow_old = Counting::start("old", 200, Duration::from_millis(400));
    let bad = Counting::start("bad", 500, Duration::ZERO);
    let p = concurrent_on(slow_old.addr, "", bad.addr, "");
    let t = std::time::Instant::now();
    let r = call(p.addr("web"), "GET", "/", None);
    assert_eq!((r.status, r.text().trim()), (200, "old"));
    assert!(
        t.elapsed() >= Duration::from_millis(390),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((bad.requests(), slow_old.requests()), (1, 1));
    assert_eq!(p.stats()["http"]["mirror_answers"], 1);
}

#[test]
fn concurrent_newest_hanging_gets_the_mirror_answer_at_the_first_byte_timeout() {
    let old = Counting::start("old", 200, Duration::ZERO);
    let slow = Counting::start("slow", 200, Duration::from_secs(5));
    let p = concurrent_on(old.addr, "", slow.addr, "first_byte_timeout = \"300ms\"");
    let t = std::time::Instant::now();
    let r = call(p.addr("web"), "GET", "/", None);
    let took = t.elapsed();
    assert_eq!((r.status, r.text().trim()), (200, "old"));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        (slow.requests(), old.requests()),
        (1, 1),
        "no third exchange"
    );
    let s = p.stats();
    assert_eq!(s["http"]["mirror_answers"], 1, "{s}");
    assert_eq!(s["services"]["shop"]["versions"]["1.1"]["fallbacks"], 1);
    assert_eq!(
        s["services"]["shop"]["versions"]["1.1"]["mirror_status_mismatches"],
        1
    );

    // The mirror is the slow one: the newest answers when it is ready, without waiting.
    let fast = Counting::start("new", 200, Duration::ZERO);
    let slow_old = Counting::start("old", 200, Duration::from_millis(1500));
    let p = concurrent_on(slow_old.addr, "", fast.addr, "");
    let t = std::time::Instant::now();
    let r = call(p.addr("web"), "GET", "/", None);
    assert_eq!((r.status, r.text().trim()), (200, "new"));
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    wait_until(
        Duration::from_secs(10),
        "the mirror to finish in the background",
        || p.stats()["services"]["shop"]["versions"]["1.0"]["mirrored"] == 1,
    );
    let v = &p.stats()["services"]["shop"]["versions"];
    assert_eq!(v["1.1"]["mirror_body_mismatches"], 1, "new against old");
    assert_eq!(v["1.0"]["responses_2xx"], 1);
}

#[test]
fn concurrent_non_idempotent_requests_go_to_the_newest_only() {
    let old = Counting::start("old", 200, Duration::ZERO);
    let new = Counting::start("new", 200, Duration::ZERO);
    let p = concurrent_on(old.addr, "", new.addr, "");
    let mut c = Client::new(p.addr("web"));
    for _ in 0..5 {
        let r = c.request("POST", "/", &[], Some("{}")).unwrap();
        assert_eq!(r.text().trim(), "new");
        let r = c.request("PATCH", "/", &[], Some("{}")).unwrap();
        assert_eq!(r.text().trim(), "new");
    }
    // Idempotent, but with a body: not mirrored either (only body-less requests are).
    let r = c.request("PUT", "/", &[], Some("x")).unwrap();
    assert_eq!(r.text().trim(), "new");
    assert_eq!((new.requests(), old.requests()), (11, 0));
    // A body-less DELETE is mirrored.
    let r = c.request("DELETE", "/", &[], None).unwrap();
    assert_eq!(r.text().trim(), "new");
    wait_until(Duration::from_secs(10), "the DELETE mirrored", || {
        old.requests() == 1
    });
    assert_eq!(p.stats()["http"]["mirrors"], 1);
}

#[test]
fn concurrent_mirrors_reuse_one_keepalive_connection() {
    let old = Counting::start("old", 200, Duration::ZERO);
    let new = Counting::start("new", 200, Duration::ZERO);
    let p = concurrent_on(old.addr, "", new.addr, "");
    let mut c = Client::new(p.addr("web"));
    let n = 100;
    for _ in 0..n {
        let r = c.request("GET", "/", &[], None).unwrap();
        assert_eq!(r.text().trim(), "new");
    }
    // The old version saw every mirror; the proxy counts one once its answer is in and
    // compared, a moment later.
    wait_until(Duration::from_secs(10), "every mirror", || {
        old.requests() == n
            && p.stats()["services"]["shop"]["versions"]["1.0"]["mirrored"] == n as u64
    });
    assert_eq!(new.requests(), n);
    // A mirror still running when the next request comes takes a second connection: a few at
    // most, never one per request.
    assert!(
        old.conns() <= 3,
        "{} connections for {n} mirrors",
        old.conns()
    );
    assert_eq!(new.conns(), 1);
    let s = p.stats();
    assert_eq!(
        s["services"]["shop"]["versions"]["1.0"]["mirrored"],
        n as u64
    );
    assert_eq!(
        s["services"]["shop"]["versions"]["1.1"]["mirror_body_mismatches"],
        n as u64
    );
}

#[test]
fn concurrent_mirrors_leak_nothing_when_clients_leave_early() {
    let old = Counting::start("old", 200, Duration::from_millis(300));
    let new = Counting::start("new", 200, Duration::from_millis(100));
    let p = concurrent_on(
        old.addr,
        "pool_idle_timeout = \"500ms\"",
        new.addr,
        "pool_idle_timeout = \"500ms\"",
    );
    let web = p.addr("web");
    let n = 60u64;
    let mut held = Vec::new();
    for i in 0..n {
        let mut c = TcpStream::connect(web).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        if i % 3 == 0 {
            // Gone before any answer.
            drop(c);
        } else {
            held.push(c);
        }
    }
    // The rest leave after the newest answered, while their mirrors still run.
    std::thread::sleep(Duration::from_millis(150));
    drop(held);
    // (A client gone before the proxy read its request sent none.)
    wait_until(Duration::from_secs(15), "every mirror to end", || {
        let s = p.stats();
        let routed = s["listeners"]["web"]["requests"].as_u64().unwrap_or(0);
        routed >= 2 * n / 3
            && s["services"]["shop"]["versions"]["1.0"]["mirrored"] == routed
            && old.requests() as u64 == routed
    });
    let mut last = Value::Null;
    let settled = (0..100).any(|_| {
        let s = p.stats();
        let e = &s["engine"];
        let zero = ["connections", "ops_in_flight", "buffers_in_use"]
            .iter()
            .all(|k| e[*k].as_u64() == Some(0));
        last = e.clone();
        if !zero {
            std::thread::sleep(Duration::from_millis(100));
        }
        zero
    });
    assert!(settled, "the engine did not give everything back: {last}");
}

#[test]
fn plain_cluster_requests_after_service_requests_set_no_cookie() {
    // Per-request state is recycled between requests (and connections): a request routed to a
    // plain cluster must not inherit the cookies of the service request before it.
    let b1 = demo("v1");
    let b2 = demo("v2");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"c1\"\n\n[[listeners.routes]]\npath_prefix = \"/shop\"\n\
         strip_prefix = true\nservice = \"shop\"\n\n[[clusters]]\nname = \"c1\"\nbackends = [\"{}\"]\n\n\
         [[clusters]]\nname = \"c2\"\nbackends = [\"{}\"]\n\n[[services]]\nname = \"shop\"\n\
         strategy = \"gradual\"\npercentage_per_request = 1.0\n\
         versions = [{{ version = \"1\", cluster = \"c1\" }}, {{ version = \"2\", cluster = \"c2\" }}]\n",
        b1.addr("demo-backend"),
        b2.addr("demo-backend")
    ));
    let mut c = Client::new(p.addr("web"));
    for _ in 0..20 {
        let r = c.request("GET", "/shop/", &[], None).unwrap();
        let cookies = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .count();
        assert_eq!(cookies, 2, "a new gradual client gets both cookies");
        let r = c.request("GET", "/", &[], None).unwrap();
        assert_eq!(r.text().trim(), "v1");
        assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
    }
}
