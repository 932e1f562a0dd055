//! Backend failures: resets, refused connects, retries, all backends down; client resets.
mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use util::*;

const PROMPT: Duration = Duration::from_secs(1);

#[test]
fn backend_reset_after_reading_closes_client_promptly_and_is_counted() {
    let backend = Backend::resetting(5);
    let proxy = Proxy::start(&simple_config(
        "workers = 1",
        "connect_attempts = 1",
        &[backend.addr],
    ));
    for _ in 0..3 {
        let mut c = connect(proxy.addr("front"));
        c.write_all(b"hello world\n").expect("write");
        let (how, took) = expect_closed(&mut c, PROMPT);
        eprintln!("client saw {how:?} after {took:?}");
    }
    let recs = backend.wait_records(3, Duration::from_secs(5));
    assert!(
        recs.iter().all(|r| r.received >= 5),
        "backend did not get the client's bytes: {recs:?}"
    );
    proxy.wait_tcp("backend_resets", Duration::from_secs(5), |v| v == 3);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let st = proxy.stats();
    assert_eq!(tcp_of(&st, "client_resets"), 0, "{st}");
    assert_eq!(tcp_of(&st, "no_backend"), 0, "{st}");
}

#[test]
fn backend_reset_right_after_accept_closes_client_promptly() {
    let backend = Backend::resetting(0);
    let proxy = Proxy::start(&simple_config(
        "workers = 1",
        "connect_attempts = 1",
        &[backend.addr],
    ));
    // The proxy may accept, hit the reset and reset the client before our connect() even
    // returns: a reset reported by connect() is the same outcome.
    let t0 = std::time::Instant::now();
    match std::net::TcpStream::connect_timeout(&proxy.addr("front"), Duration::from_secs(3)) {
        Ok(mut c) => {
            let (how, took) = expect_closed(&mut c, PROMPT);
            eprintln!("client saw {how:?} after {took:?}");
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            eprintln!("client's connect() saw the reset after {:?}", t0.elapsed());
        }
        Err(e) => panic!("connect: {e}"),
    }
    backend.wait_records(1, Duration::from_secs(5));
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let st = proxy.stats();
    assert!(
        tcp_of(&st, "backend_resets") + tcp_of(&st, "connect_failed") >= 1,
        "the backend's reset was counted nowhere: {st}"
    );
}

#[test]
fn client_reset_is_propagated_to_backend_and_counted() {
    let echo = Backend::echo();
    let proxy = Proxy::start(&simple_config("workers = 1", "", &[echo.addr]));
    let mut c = connect(proxy.addr("front"));
    echo_roundtrip(&mut c, b"ping");
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c); // RST
    let recs = echo.wait_records(1, PROMPT);
    eprintln!("backend saw {:?}", recs[0].end);
    assert!(matches!(recs[0].end, End::Reset | End::Eof), "{recs:?}");
    proxy.wait_tcp("client_resets", Duration::from_secs(5), |v| v == 1);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    assert_eq!(proxy.tcp("backend_resets"), 0);
}

#[test]
fn refused_backend_closes_client_while_other_listener_is_unaffected() {
    const BAD: usize = 20;
    let dead = dead_addr();
    let echo = Backend::echo();
    let cfg = format!(
        r#"[server]
workers = 2

[[listeners]]
name = "bad"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "dead"

[[listeners]]
name = "good"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"

[[clusters]]
name = "dead"
backends = ["{dead}"]
connect_attempts = 1

[[clusters]]
name = "app"
backends = ["{}"]
"#,
        echo.addr
    );
    let proxy = Proxy::start(&cfg);
    let bad_addr = proxy.addr("bad");
    let bad = spawn_small("bad-clients", move || {
        for _ in 0..BAD {
            connect_expect_closed(bad_addr, PROMPT);
        }
    });
    // Meanwhile, clients of the good listener see no difference.
    for round in 0..3 {
        let payloads = (0..30)
            .map(|i| payload(round * 100 + i, 64 * KIB + i as usize))
            .collect();
        echo_check_no_half_close(proxy.addr("good"), payloads, Duration::from_secs(20));
    }
    join_timeout(bad, Duration::from_secs(30), "bad-clients");

    proxy.wait_tcp("no_backend", Duration::from_secs(5), |v| v == BAD as u64);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let st = proxy.stats();
    assert_eq!(tcp_of(&st, "connect_failed"), BAD as u64, "{st}");
    assert_eq!(tcp_of(&st, "accepted"), (BAD + 90) as u64, "{st}");
    assert_eq!(echo.accepted(), 90);
}

#[test]
fn dead_then_good_backend_with_two_attempts_every_client_succeeds() {
    const N: usize = 20;
    let dead = dead_addr();
    let echo = Backend::echo();
    let proxy = Proxy::start(&simple_config(
        "workers = 1",
        "balance = \"round_robin\"\nconnect_attempts = 2",
        &[dead, echo.addr],
    ));
    for i in 0..N {
        let mut c = connect(proxy.addr("front"));
        echo_roundtrip(&mut c, format!("hello {i}\n").as_bytes());
    }
    assert_eq!(echo.accepted(), N);
    let st = proxy.stats();
    let failed = tcp_of(&st, "connect_failed");
    let retries = tcp_of(&st, "connect_retries");
    assert!(
        failed >= 1,
        "round robin over [dead, good] never tried the dead backend? {st}"
    );
    assert!(failed <= N as u64, "{st}");
    assert_eq!(
        retries, failed,
        "each failed attempt on the dead backend should be followed by one retry: {st}"
    );
    assert_eq!(tcp_of(&st, "no_backend"), 0, "{st}");
}

#[test]
fn all_backends_down_every_client_closed_and_counted() {
    const N: usize = 20;
    let dead: Vec<SocketAddr> = vec![dead_addr(), dead_addr()];
    let proxy = Proxy::start(&simple_config("workers = 2", "connect_attempts = 2", &dead));
    let addr = proxy.addr("front");
    let clients: Vec<_> = (0..N)
        .map(|_| spawn_small("client", move || connect_expect_closed(addr, PROMPT)))
        .collect();
    for h in clients {
        join_timeout(h, Duration::from_secs(5), "client");
    }
    proxy.wait_tcp("no_backend", Duration::from_secs(5), |v| v == N as u64);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let st = proxy.stats();
    assert!(tcp_of(&st, "connect_failed") >= N as u64, "{st}");
    assert_eq!(tcp_of(&st, "accepted"), N as u64, "{st}");
}
