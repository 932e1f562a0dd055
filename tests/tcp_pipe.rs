//! TCP pipe: bytes pass unchanged both ways, at every size and under concurrency; half-close is
//! propagated in both directions.
mod util;

use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use util::*;

/// Asserts that what the backend received (per connection) is exactly the multiset of payloads.
fn assert_backend_received(backend: &Backend, payloads: &[Vec<u8>]) {
    let recs = backend.wait_records(payloads.len(), Duration::from_secs(10));
    let mut want: HashMap<(u64, u64), i64> = HashMap::new();
    for p in payloads {
        *want.entry((p.len() as u64, checksum(p))).or_default() += 1;
    }
    for r in &recs {
        assert_eq!(
            r.end,
            End::Eof,
            "backend connection did not end with a clean EOF: {r:?}"
        );
        *want.entry((r.received, r.received_sum)).or_default() -= 1;
    }
    let diff: Vec<_> = want.iter().filter(|(_, v)| **v != 0).collect();
    assert!(
        diff.is_empty(),
        "client->backend bytes differ from what was sent (len, checksum) -> surplus: {diff:?}"
    );
}

#[test]
fn payload_sizes_1b_to_64mib_pass_unchanged_both_ways() {
    let st = sizes_round_trip("workers = 2");
    assert!(
        tcp_of(&st, "splice_starts") > 0,
        "bulk flows should splice: {st}"
    );
}

#[test]
fn payload_sizes_pass_unchanged_through_buffers_when_splice_is_off() {
    let st = sizes_round_trip("workers = 2\nsplice_pipes_per_worker = 0\nbuffer_size = \"4KiB\"");
    assert_eq!(tcp_of(&st, "splice_starts"), 0, "{st}");
}

/// Sends payloads of 1 B to 64 MiB through an echo backend and checks both directions by
/// checksum and by the proxy's byte counters; returns the final stats.
fn sizes_round_trip(server: &str) -> serde_json::Value {
    let echo = Backend::echo();
    let proxy = Proxy::start(&simple_config(server, "", &[echo.addr]));
    let sizes = [1usize, 100, 16383, 16384, 16385, MIB, 64 * MIB];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(100 + i as u64, n))
        .collect();
    let res = echo_check(
        proxy.addr("front"),
        payloads.clone(),
        Duration::from_secs(60),
    );
    for (r, n) in res.iter().zip(sizes) {
        assert_eq!(r.received, n as u64);
    }
    // The backend saw exactly what the clients sent (client->backend direction on its own).
    assert_backend_received(&echo, &payloads);

    let total: u64 = sizes.iter().map(|&n| n as u64).sum();
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    proxy.wait_tcp("bytes_client_to_backend", Duration::from_secs(5), |v| {
        v == total
    });
    proxy.wait_tcp("bytes_backend_to_client", Duration::from_secs(5), |v| {
        v == total
    });
    let st = proxy.stats();
    assert_eq!(tcp_of(&st, "accepted"), sizes.len() as u64, "{st}");
    assert_eq!(tcp_of(&st, "closed"), sizes.len() as u64, "{st}");
    assert_eq!(tcp_of(&st, "connect_failed"), 0, "{st}");
    assert_eq!(tcp_of(&st, "backend_resets"), 0, "{st}");
    assert_eq!(tcp_of(&st, "client_resets"), 0, "{st}");
    st
}

#[test]
fn five_hundred_concurrent_connections_all_open_then_transfer() {
    const N: usize = 500;
    let echo = Backend::echo();
    let proxy = Proxy::start(&simple_config("workers = 2", "", &[echo.addr]));
    let addr = proxy.addr("front");

    // Open them all first...
    let streams: Vec<_> = (0..N).map(|_| connect(addr)).collect();
    let established = Deadline::after(Duration::from_secs(10));
    while echo.active() < N {
        assert!(
            !established.expired(),
            "only {} of {N} connections reached the backend within 10 s (backend accepted {}); proxy stats: {}",
            echo.active(),
            echo.accepted(),
            proxy.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == N as u64);
    assert_eq!(echo.accepted(), N);

    // ...then transfer on all of them at once.
    let cycle = [1usize, 100, 16383, 16384, 16385, 65536, 100_000, 262_144];
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| payload(1000 + i as u64, cycle[i % cycle.len()]))
        .collect();
    let res = echo_many(streams, payloads.clone(), Duration::from_secs(60));
    assert_all_echoed(&res);
    assert_backend_received(&echo, &payloads);

    let total: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let st = proxy.stats();
    assert_eq!(tcp_of(&st, "accepted"), N as u64, "{st}");
    assert_eq!(tcp_of(&st, "bytes_client_to_backend"), total, "{st}");
    assert_eq!(tcp_of(&st, "bytes_backend_to_client"), total, "{st}");
}

/// (a) The client writes, then shuts down its write side; the backend reads to EOF, then replies
/// and closes; the client gets the whole reply.
#[test]
fn half_close_client_first_reply_still_flows() {
    const REQ: usize = MIB;
    const REPLY: usize = 2 * MIB;
    let backend = Backend::sink_then_reply(REPLY, 77);
    let proxy = Proxy::start(&simple_config("workers = 1", "", &[backend.addr]));
    let mut c = connect(proxy.addr("front"));
    let req = payload(76, REQ);
    c.write_all(&req).expect("write request");
    c.shutdown(Shutdown::Write).expect("shutdown(Write)");
    wait_until(
        Duration::from_secs(5),
        "the backend to see EOF after the client's shutdown(Write) (client FIN passed on)",
        || backend.eofs() == 1,
    );
    let sum = read_len_then_eof(&mut c, REPLY as u64);
    assert_eq!(sum, pattern_checksum(77, REPLY), "reply content");

    let recs = backend.wait_records(1, Duration::from_secs(5));
    assert_eq!(recs[0].received, REQ as u64);
    assert_eq!(recs[0].received_sum, checksum(&req));
    assert_eq!(recs[0].end, End::Eof);
    // Both directions are finished: the proxy ends the session without the client closing.
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    drop(c);
    proxy.wait_tcp("bytes_client_to_backend", Duration::from_secs(5), |v| {
        v == REQ as u64
    });
    proxy.wait_tcp("bytes_backend_to_client", Duration::from_secs(5), |v| {
        v == REPLY as u64
    });
}

/// (b) The backend writes, then shuts down its write side; the client reads EOF, then still sends
/// data, which the backend receives; then the client closes.
#[test]
fn half_close_backend_first_client_still_sends() {
    const DOWN: usize = MIB;
    const UP: usize = MIB + 17;
    let backend = Backend::source(DOWN, 55);
    let proxy = Proxy::start(&simple_config("workers = 1", "", &[backend.addr]));
    let mut c = connect(proxy.addr("front"));
    let sum = read_len_then_eof(&mut c, DOWN as u64);
    assert_eq!(sum, pattern_checksum(55, DOWN));

    // The client saw EOF; the other direction must still be open.
    let up = payload(56, UP);
    c.write_all(&up).expect("client write after receiving EOF");
    c.shutdown(Shutdown::Write).expect("shutdown(Write)");
    wait_until(
        Duration::from_secs(5),
        "the backend to see EOF after the client's shutdown(Write) (client FIN passed on)",
        || backend.eofs() == 1,
    );
    let recs = backend.wait_records(1, Duration::from_secs(5));
    assert_eq!(
        recs[0].received, UP as u64,
        "backend got {} of {UP} bytes sent after the half-close",
        recs[0].received
    );
    assert_eq!(recs[0].received_sum, checksum(&up));
    assert_eq!(recs[0].end, End::Eof);
    // Both directions are finished: the proxy ends the session without the client closing.
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    drop(c);
    proxy.wait_tcp("bytes_client_to_backend", Duration::from_secs(5), |v| {
        v == UP as u64
    });
    proxy.wait_tcp("bytes_backend_to_client", Duration::from_secs(5), |v| {
        v == DOWN as u64
    });
}
