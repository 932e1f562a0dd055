//! connect_timeout and idle_timeout fire at their configured values (timer wheel, 10 ms ticks).
mod util;

use std::thread;
use std::time::{Duration, Instant};

use util::*;

const LOW_SLACK: Duration = Duration::from_millis(20);

#[test]
fn connect_timeout_fires_at_configured_value_and_is_counted() {
    const N: usize = 3;
    let bh = Blackhole::new();
    let proxy = Proxy::start(&simple_config(
        "workers = 1",
        "connect_timeout = \"200ms\"\nconnect_attempts = 1",
        &[bh.addr],
    ));
    let addr = proxy.addr("front");
    let clients: Vec<_> = (0..N)
        .map(|_| {
            spawn_small("client", move || {
                let mut c = connect(addr);
                expect_closed(&mut c, Duration::from_secs(3))
            })
        })
        .collect();
    for h in clients {
        let (how, took) = join_timeout(h, Duration::from_secs(5), "client");
        eprintln!("client closed ({how:?}) after {took:?}");
        assert!(
            took >= Duration::from_millis(200) - LOW_SLACK,
            "closed too early: {took:?} < 200ms connect_timeout"
        );
        assert!(
            took <= Duration::from_millis(1500),
            "closed too late: {took:?}"
        );
    }
    proxy.wait_tcp("connect_timeouts", Duration::from_secs(5), |v| {
        v == N as u64
    });
    proxy.wait_tcp("no_backend", Duration::from_secs(5), |v| v == N as u64);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
}

#[test]
fn connect_timeout_then_next_backend_serves_the_client() {
    let bh = Blackhole::new();
    let echo = Backend::echo();
    let proxy = Proxy::start(&simple_config(
        "workers = 1",
        "balance = \"round_robin\"\nconnect_timeout = \"200ms\"\nconnect_attempts = 2",
        &[bh.addr, echo.addr],
    ));
    let mut slow = 0;
    for i in 0..4 {
        let t0 = Instant::now();
        let mut c = connect(proxy.addr("front"));
        echo_roundtrip(&mut c, format!("msg {i}").as_bytes());
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "round trip took {took:?}"
        );
        if took >= Duration::from_millis(180) {
            slow += 1;
        }
    }
    assert_eq!(echo.accepted(), 4);
    let st = proxy.stats();
    let timeouts = tcp_of(&st, "connect_timeouts");
    assert!(
        timeouts >= 1,
        "round robin never tried the blackholed backend? {st}"
    );
    assert_eq!(
        timeouts, slow,
        "each connect timeout should delay exactly one client by ~200ms: {st}"
    );
    assert!(tcp_of(&st, "connect_retries") >= timeouts, "{st}");
    assert_eq!(tcp_of(&st, "no_backend"), 0, "{st}");
}

#[test]
fn idle_timeout_closes_idle_connection_but_not_a_trickling_one() {
    let echo = Backend::echo();
    let cfg = format!(
        r#"[server]
workers = 1

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"
idle_timeout = "300ms"

[[clusters]]
name = "app"
backends = ["{}"]
"#,
        echo.addr
    );
    let proxy = Proxy::start(&cfg);
    let addr = proxy.addr("front");

    // A connection that sends a byte every 100 ms (and gets it back) for 1.2 s: 4x the timeout.
    let trickle = spawn_small("trickle", move || {
        let mut c = connect(addr);
        let t0 = Instant::now();
        let mut i = 0u8;
        while t0.elapsed() < Duration::from_millis(1200) {
            echo_roundtrip(&mut c, &[b'a' + (i % 26)]);
            i = i.wrapping_add(1);
            thread::sleep(Duration::from_millis(100));
        }
        c
    });

    let mut idle = connect(addr);
    echo_roundtrip(&mut idle, b"hello");
    let (how, took) = expect_closed(&mut idle, Duration::from_secs(3));
    eprintln!("idle connection closed ({how:?}) after {took:?}");
    assert!(
        took >= Duration::from_millis(300) - LOW_SLACK,
        "closed too early: {took:?} < 300ms idle_timeout"
    );
    assert!(
        took <= Duration::from_millis(1500),
        "closed too late: {took:?}"
    );

    let mut c = join_timeout(trickle, Duration::from_secs(10), "trickle");
    // Still alive after 1.2 s of activity.
    echo_roundtrip(&mut c, b"still here");
    assert_eq!(proxy.tcp("idle_timeouts"), 1);
    drop(c);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
}
