//! Back-pressure: a client that never reads must not make the proxy buffer the backend's stream;
//! the proxy's memory stays bounded and other clients are served normally meanwhile.
mod util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

#[test]
fn client_that_never_reads_does_not_grow_proxy_memory() {
    const STREAM: usize = 256 * MIB;
    const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;
    let source = Backend::source(STREAM, 3);
    let echo = Backend::echo();
    let cfg = format!(
        r#"[server]
workers = 2

[[listeners]]
name = "stream"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "source"

[[listeners]]
name = "echo"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"

[[clusters]]
name = "source"
backends = ["{}"]

[[clusters]]
name = "echo"
backends = ["{}"]
"#,
        source.addr, echo.addr
    );
    let proxy = Proxy::start(&cfg);

    // Warm up (buffers, allocator) with the same kind of traffic we will check later.
    let warm = (0..20).map(|i| payload(i, MIB)).collect();
    echo_check_no_half_close(proxy.addr("echo"), warm, Duration::from_secs(30));
    let baseline = proxy.rss_kib();

    // Sample RSS in the background from here on.
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), proxy.pid);
        spawn_small("rss-sampler", move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The client that never reads.
    let lazy = connect(proxy.addr("stream"));
    // Wait until the backend is stalled: its written count stops moving for 500 ms.
    let t0 = Instant::now();
    let mut last = (source.written(), Instant::now());
    loop {
        thread::sleep(Duration::from_millis(50));
        let w = source.written();
        assert!(
            w < STREAM as u64,
            "the backend wrote all {STREAM} bytes to a client that never reads: no back-pressure"
        );
        if w != last.0 {
            last = (w, Instant::now());
        } else if w > 0 && last.1.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "backend never stalled (written {w})"
        );
    }
    let stalled_at = source.written();
    eprintln!("backend stalled after writing {} KiB", stalled_at / 1024);

    // Other clients are served normally while the stalled stream is held.
    let t1 = Instant::now();
    let payloads = (0..20).map(|i| payload(100 + i, MIB)).collect();
    echo_check_no_half_close(proxy.addr("echo"), payloads, Duration::from_secs(30));
    eprintln!(
        "20 x 1 MiB echo transfers alongside the stalled stream took {:?}",
        t1.elapsed()
    );

    stop.store(true, Ordering::SeqCst);
    join_timeout(sampler, Duration::from_secs(2), "rss-sampler");
    let peak = peak.load(Ordering::SeqCst).max(proxy.rss_kib());
    eprintln!("proxy RSS: baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "proxy RSS grew by {} KiB (baseline {baseline}, peak {peak}) with a non-reading client",
        peak - baseline
    );
    // The stream is still stalled (nothing got buffered in the meantime).
    assert!(source.written() < STREAM as u64);
    assert!(
        source.written() - stalled_at < 8 * MIB as u64,
        "backend kept writing while the client never read"
    );
    drop(lazy);
}

/// A buffer pool far smaller than the demand: sessions wait for buffers (counted) instead of
/// failing, and every byte still arrives once readers catch up.
#[test]
fn exhausted_buffer_pool_is_back_pressure_not_failure() {
    const CONNS: usize = 40;
    const LEN: usize = 4 * 1024 * 1024;
    let source = Backend::source(LEN, 77);
    let proxy = Proxy::start(&simple_config(
        "workers = 1\nbuffers_per_worker = 16\nbuffer_size = \"1KiB\"\nsplice_pipes_per_worker = 0",
        "",
        &[source.addr],
    ));
    // Clients that do not read yet: each session's backend→client buffer stays full, so 40
    // sessions want 40 buffers from a pool of 16.
    // Small receive windows keep the kernel from absorbing the streams on the client side.
    let clients: Vec<std::net::TcpStream> = (0..CONNS)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            s.connect_timeout(&proxy.addr("front").into(), Duration::from_secs(3))
                .expect("connect");
            let s: std::net::TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s
        })
        .collect();
    proxy.wait_tcp("buffer_waits", Duration::from_secs(10), |v| v > 0);
    // Now read everything: every stream must arrive complete and unchanged.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut sum = Checksum::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match std::io::Read::read(&mut c, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => sum.update(&buf[..n]),
                        Err(e) => panic!("read failed after {} bytes: {e}", sum.len()),
                    }
                }
                (sum.len(), sum.finish())
            })
        })
        .collect();
    let want = pattern_checksum(77, LEN);
    for r in readers {
        let (len, sum) = join_timeout(r, Duration::from_secs(60), "reader");
        assert_eq!(len, LEN as u64);
        assert_eq!(sum, want, "stream corrupted");
    }
    let st = proxy.stats();
    assert_eq!(
        tcp_of(&st, "client_resets") + tcp_of(&st, "backend_resets"),
        0,
        "{st}"
    );
    assert_eq!(
        tcp_of(&st, "bytes_backend_to_client"),
        (CONNS * LEN) as u64,
        "{st}"
    );
}

/// A pool far smaller than the requests waiting for an upstream: 48 keep-alive clients, 16
/// buffers, 2 upstream connections to a slow backend. The requests that wait hold buffers
/// with their heads; without a reserve for the exchanges in progress those could not read
/// their answers until the waiting requests timed out (503s). With it every request is
/// answered, only later, and the stats say that new requests waited at the reserve.
#[test]
fn more_waiting_requests_than_buffers_slow_down_not_stall() {
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 3;
    let (_demo, cfg) = slow_demo_config(
        "workers = 1\nbuffers_per_worker = 16",
        "max_connections_per_backend = 2\nmax_pending = 1000\nconnect_timeout = \"20s\"",
    );
    let proxy = Proxy::start(&cfg);
    let web = proxy.addr("web");
    let t0 = Instant::now();
    let start = Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let start = start.clone();
            spawn_small("client", move || -> Result<(), String> {
                let mut c = util::client::Client::new(web);
                start.wait();
                for r in 0..ROUNDS {
                    let resp = c
                        .request("GET", "/?delay_ms=20", &[], None)
                        .map_err(|e| format!("client {i} request {r}: {e}"))?;
                    if resp.status != 200 {
                        return Err(format!("client {i} request {r}: status {}", resp.status));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for c in clients {
        if let Err(e) = join_timeout(c, Duration::from_secs(90), "client") {
            failures.push(e);
        }
    }
    let took = t0.elapsed();
    let st = proxy.stats();
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed after {took:?} (first: {}); stats {st}",
        failures.len(),
        failures[0]
    );
    // 144 answers of 20 ms over 2 connections take about 1.5 s; the bound is generous for a
    // loaded machine but far below the stall, which ends only at the 20 s timeouts.
    assert!(
        took < Duration::from_secs(15),
        "{CLIENTS} x {ROUNDS} requests took {took:?}: stalled until timeouts? {st}"
    );
    assert_eq!(
        http_of(&st, "timeouts") + http_of(&st, "no_backend"),
        0,
        "{st}"
    );
    // The client reconnects once after an error: every request went on its first connection.
    assert_eq!(
        tcp_of(&st, "accepted"),
        CLIENTS as u64,
        "no connection broke: {st}"
    );
    assert!(
        tcp_of(&st, "buffer_reserve_waits") > 0,
        "new requests waited at the reserve, and the stats say so: {st}"
    );
    eprintln!(
        "{} requests in {took:?}; buffer_waits {}, buffer_reserve_waits {}",
        CLIENTS * ROUNDS,
        tcp_of(&st, "buffer_waits"),
        tcp_of(&st, "buffer_reserve_waits")
    );
}
