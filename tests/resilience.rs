//! Resilience over real sockets: passive ejection after consecutive 5xx, retries on 5xx and
//! on first-byte timeouts (idempotent methods only) within a retry budget, cluster connection
//! limits with a pending queue and `503 Retry-After`, listener connection limits, and a
//! cluster whose backends are all down answering a clear, counted 503.

mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};
use util::client::{call, call_h, Client};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// One worker (so per-worker decisions are deterministic), one HTTP listener `web` in front
/// of cluster `app` with `backends` and the extra cluster keys.
fn proxy(backends: &[SocketAddr], cluster_extra: &str, listener_extra: &str) -> Proxy {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    Proxy::start(&format!(
        "[server]\nworkers = 1\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n{listener_extra}\n\
         [[clusters]]\nname = \"app\"\nbackends = [{}]\n{cluster_extra}\n",
        list.join(", ")
    ))
}

#[test]
fn consecutive_5xx_eject_a_backend() {
    let good = demo("good");
    let bad = fixed_backend("bad", 500, Duration::ZERO);
    let p = proxy(
        &[good.addr("demo-backend"), bad],
        "retries = 0\n[clusters.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"30s\"",
        "",
    );
    let web = p.addr("web");
    let mut bad_answers = 0;
    for _ in 0..40 {
        let r = call(web, "GET", "/", None);
        if r.status == 500 {
            bad_answers += 1;
        } else {
            assert_eq!(r.text().trim(), "good");
        }
    }
    assert_eq!(bad_answers, 3, "ejected after exactly 3 consecutive 5xx");
    let st = p.stats();
    assert_eq!(tcp_of(&st, "outlier_ejections"), 1);
    assert_eq!(
        st["clusters"]["app"]["backends"][bad.to_string()]["state"],
        "ejected",
        "{st}"
    );
    let good_addr = good.addr("demo-backend").to_string();
    assert_eq!(st["clusters"]["app"]["backends"][good_addr]["state"], "up");
    assert!(
        p.stderr_text().contains("ejected for 30s"),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn a_5xx_backend_is_retried_for_gets_but_not_for_posts() {
    let good = demo("good");
    let bad = fixed_backend("bad", 503, Duration::ZERO);
    let p = proxy(
        &[good.addr("demo-backend"), bad],
        "retries = 1\nretry_on = [\"5xx\"]\nretry_budget = 1.0",
        "",
    );
    let web = p.addr("web");
    for i in 0..30 {
        let r = call(web, "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "good"), "GET {i}");
    }
    // Round robin counts retries as picks too, so how many GETs meet the bad backend first
    // depends on the order; every one of them was retried.
    let retries = http_stat(&p, "retries");
    assert!(
        retries >= 10,
        "GETs met the bad backend and were retried: {retries}"
    );
    // POST is not idempotent: the backend's own 5xx reaches the client.
    let mut posts_503 = 0;
    for _ in 0..10 {
        let r = call(web, "POST", "/echo", Some("{}"));
        posts_503 += usize::from(r.status == 503);
    }
    assert!(
        posts_503 >= 3,
        "POSTs were retried: {posts_503} of 10 saw the 503"
    );
    assert_eq!(http_stat(&p, "retries"), retries, "no POST retried");
}

#[test]
fn the_retry_budget_stops_a_retry_storm() {
    let good = demo("good");
    let bad = fixed_backend("bad", 500, Duration::ZERO);
    // Budget 0: only the few starting tokens; after them the 5xx goes to the client.
    let p = proxy(
        &[good.addr("demo-backend"), bad],
        "retries = 1\nretry_on = [\"5xx\"]\nretry_budget = 0.0",
        "",
    );
    let web = p.addr("web");
    let mut errors = 0;
    for _ in 0..40 {
        errors += usize::from(call(web, "GET", "/", None).status == 500);
    }
    assert_eq!(
        http_stat(&p, "retries"),
        3,
        "the starting tokens, then none"
    );
    assert!(errors >= 15, "{errors}");
}

#[test]
fn a_first_byte_timeout_is_retried_on_another_backend() {
    let good = demo("good");
    let slow = fixed_backend("slow", 200, Duration::from_secs(3));
    let p = proxy(
        &[slow, good.addr("demo-backend")],
        "first_byte_timeout = \"200ms\"\nretries = 1\nretry_on = [\"timeout\"]\nretry_budget = 1.0",
        "",
    );
    for _ in 0..6 {
        let t = Instant::now();
        let r = call(p.addr("web"), "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "good"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(http_stat(&p, "retries") >= 2);
}

#[test]
fn cluster_limit_queues_one_then_answers_503_with_retry_after() {
    let b = demo("b");
    let p = proxy(
        &[b.addr("demo-backend")],
        "max_connections = 1\nmax_pending = 1",
        "",
    );
    let web = p.addr("web");
    // Three slow requests at once: one runs, one waits for the slot, one is turned away.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(60 * i));
                let t = Instant::now();
                let r = call(web, "GET", "/?delay_ms=400", None);
                (
                    r.status,
                    r.header("retry-after").map(str::to_string),
                    t.elapsed(),
                )
            })
        })
        .collect();
    let mut res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    res.sort_by_key(|r| r.0);
    assert_eq!(res.iter().filter(|r| r.0 == 200).count(), 2, "{res:?}");
    let rejected = res.iter().find(|r| r.0 == 503).expect("one 503");
    assert_eq!(rejected.1.as_deref(), Some("1"), "Retry-After");
    assert!(
        rejected.2 < Duration::from_millis(300),
        "a fast 503: {:?}",
        rejected.2
    );
    assert_eq!(tcp_of(&p.stats(), "limit_rejects"), 1);
}

#[test]
fn listener_limit_turns_extra_clients_away_with_503() {
    let b = demo("b");
    let p = proxy(&[b.addr("demo-backend")], "", "max_connections = 2");
    let web = p.addr("web");
    let mut c1 = Client::new(web);
    let mut c2 = Client::new(web);
    assert_eq!(c1.request("GET", "/", &[], None).unwrap().status, 200);
    assert_eq!(c2.request("GET", "/", &[], None).unwrap().status, 200);
    let mut third = connect(web);
    let mut answer = String::new();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("Retry-After: 1"), "{answer:?}");
    drop(c1);
    // The slot frees up once the proxy sees the close.
    wait_until(Duration::from_secs(5), "a new client is served", || {
        let mut c = Client::new(web);
        matches!(c.request("GET", "/", &[], None), Ok(r) if r.status == 200)
    });
    assert_eq!(c2.request("GET", "/", &[], None).unwrap().status, 200);
    assert!(tcp_of(&p.stats(), "limit_rejects") >= 1);
}

#[test]
fn all_backends_down_is_a_clear_counted_503() {
    let p = proxy(
        &[dead_addr(), dead_addr()],
        "[clusters.health]\nprotocol = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 1",
        "",
    );
    wait_until(Duration::from_secs(5), "both down", || {
        p.stderr_text().contains("failing open")
    });
    let r = call_h(p.addr("web"), "GET", "/", &[], None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "no backend available\n");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(http_stat(&p, "no_backend") >= 1);
    assert!(
        tcp_of(&p.stats(), "fail_open") >= 1,
        "fail-open picks are counted"
    );
    let mut s = connect(p.addr("web"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
}

#[test]
fn a_backend_that_dies_with_many_requests_in_flight_gets_its_gets_retried() {
    // Backend "hold" answers normally until armed; then it holds every request it gets and,
    // once many are held, dies with them (closes every connection without an answer), as a
    // killed process would. The GETs it held go to "good": a busy cluster's retry budget
    // saves up a second's worth of its earnings, not a fixed 100 tokens.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let armed = Arc::new(AtomicBool::new(false));
    let dead = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let (a, d, h) = (Arc::clone(&armed), Arc::clone(&dead), Arc::clone(&held));
    let hold = Backend::spawn(Arc::new(
        move |mut s: std::net::TcpStream, _st: &BackendState| {
            let mut buf = Vec::new();
            let mut b = [0u8; 4096];
            loop {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                buf.clear();
                if d.load(Ordering::SeqCst) {
                    return;
                }
                if a.load(Ordering::SeqCst) {
                    h.fetch_add(1, Ordering::SeqCst);
                    let end = Instant::now() + Duration::from_secs(20);
                    while !d.load(Ordering::SeqCst) && Instant::now() < end {
                        thread::sleep(Duration::from_millis(5));
                    }
                    return;
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhold\n")
                    .is_err()
                {
                    return;
                }
            }
        },
    ));
    let good = demo("good");
    let p = proxy(
        &[hold.addr, good.addr("demo-backend")],
        "balance = \"round_robin\"\nretries = 1\nretry_budget = 1.0",
        "",
    );
    let web = p.addr("web");
    // A busy second or two: the cluster earns a token per request.
    let warm: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::new(web);
                let end = Instant::now() + Duration::from_millis(2500);
                let mut n = 0;
                while Instant::now() < end {
                    let r = c.request("GET", "/", &[], None).expect("warm-up GET");
                    assert_eq!(r.status, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let warmed: usize = warm.into_iter().map(|t| t.join().expect("warm-up")).sum();
    assert!(
        warmed > 600,
        "warm-up too slow to test the budget: {warmed} requests"
    );
    armed.store(true, Ordering::SeqCst);
    let retries_before = http_stat(&p, "retries");
    let burst: Vec<_> = (0..300)
        .map(|_| thread::spawn(move || call(web, "GET", "/", None).status))
        .collect();
    wait_until(
        Duration::from_secs(20),
        "half the burst held by the backend",
        || held.load(Ordering::SeqCst) >= 140,
    );
    dead.store(true, Ordering::SeqCst);
    let statuses: Vec<u16> = burst
        .into_iter()
        .map(|t| t.join().expect("burst client"))
        .collect();
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    let retried = http_stat(&p, "retries") - retries_before;
    assert_eq!(
        failed,
        0,
        "{failed} of 300 GETs failed; {} held, {retried} retried",
        held.load(Ordering::SeqCst)
    );
    assert!(retried >= 140, "{retried}");
}
