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
