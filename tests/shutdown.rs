//! SIGTERM/SIGINT: stop accepting, let live connections finish (up to shutdown_timeout), exit 0.
mod util;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use util::*;

fn config(shutdown_timeout: &str, backend: SocketAddr) -> String {
    format!(
        r#"[server]
workers = 2
shutdown_timeout = "{shutdown_timeout}"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{backend}"]
"#
    )
}

/// Polls connects until one is refused; returns how long that took.
fn wait_refused(addr: SocketAddr, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return t0.elapsed(),
            Ok(s) => drop(s), // still accepting (or queued); try again
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < within,
            "new connections still not refused {within:?} after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_during_slow_transfer_refuses_new_then_completes_then_exits_0() {
    const LEN: usize = 32 * MIB;
    const READ_OVER: Duration = Duration::from_millis(1200);
    let source = Backend::source(LEN, 5);
    let proxy = Proxy::start(&config("10s", source.addr));
    let addr = proxy.addr("front");

    let progress = Arc::new(AtomicU64::new(0));
    let client = {
        let progress = progress.clone();
        spawn_small("slow-reader", move || {
            let mut c = connect(addr);
            let mut sum = Checksum::new();
            let mut buf = vec![0u8; 64 * KIB];
            let t0 = Instant::now();
            while sum.len() < LEN as u64 {
                let want = (LEN - sum.len() as usize).min(buf.len());
                match c.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => {
                        sum.update(&buf[..n]);
                        progress.store(sum.len(), Ordering::SeqCst);
                        // Pace the reading to spread LEN over READ_OVER.
                        let due = READ_OVER.mul_f64(sum.len() as f64 / LEN as f64);
                        if let Some(wait) = due.checked_sub(t0.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("slow reader: read error after {} bytes: {e}", sum.len()),
                }
            }
            let (n, sum) = (sum.len(), sum.finish());
            if n == LEN as u64 {
                // The backend shut down its write side after LEN bytes: EOF must follow.
                expect_eof(&mut c, &format!("all {LEN} bytes"));
            }
            (n, sum, c)
        })
    };
    wait_until(
        Duration::from_secs(10),
        "the slow transfer to be under way",
        || progress.load(Ordering::SeqCst) >= 2 * MIB as u64,
    );
    let t_sig = Instant::now();
    proxy.sigterm();

    let refused_after = wait_refused(addr, Duration::from_secs(1));
    eprintln!("new connections refused {refused_after:?} after SIGTERM");
    assert!(
        progress.load(Ordering::SeqCst) < LEN as u64,
        "test precondition: the transfer should still be in flight when listeners close"
    );
    assert!(
        proxy.try_wait().is_none(),
        "the proxy exited while a transfer was in flight"
    );

    let (n, sum, c) = join_timeout(client, Duration::from_secs(15), "slow-reader");
    assert_eq!(n, LEN as u64, "transfer cut short by shutdown");
    assert_eq!(sum, pattern_checksum(5, LEN), "transfer corrupted");
    let t_done = Instant::now();
    drop(c);

    let st = proxy.wait_exit(Duration::from_secs(3));
    let st =
        st.unwrap_or_else(|| panic!("proxy still running 3 s after its last connection closed"));
    assert_eq!(st.code(), Some(0), "exit status {st}");
    eprintln!(
        "transfer done {:?} after SIGTERM; exit {:?} after that",
        t_done - t_sig,
        t_done.elapsed()
    );
    assert!(
        t_sig.elapsed() < Duration::from_secs(10),
        "exit took longer than shutdown_timeout"
    );
}

#[test]
fn sigterm_with_idle_connection_exits_0_after_short_shutdown_timeout() {
    let echo = Backend::echo();
    let proxy = Proxy::start(&config("300ms", echo.addr));
    let mut c = connect(proxy.addr("front"));
    echo_roundtrip(&mut c, b"hello");
    let t0 = Instant::now();
    proxy.sigterm();
    let st = proxy.wait_exit(Duration::from_secs(3));
    let took = t0.elapsed();
    let st = st.unwrap_or_else(|| {
        panic!("proxy still running 3 s after SIGTERM with shutdown_timeout = 300ms")
    });
    eprintln!("exited {st} after {took:?}");
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(took <= Duration::from_millis(1000), "exit took {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "exited after {took:?}: did not wait for the live connection"
    );
    // The idle client's connection is gone with the process.
    expect_closed(&mut c, Duration::from_secs(1));
}

#[test]
fn sigint_without_connections_exits_0_promptly() {
    let echo = Backend::echo();
    let proxy = Proxy::start(&config("10s", echo.addr));
    let mut c = connect(proxy.addr("front"));
    echo_roundtrip(&mut c, b"x");
    drop(c);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let t0 = Instant::now();
    proxy.signal(Signal::SIGINT);
    let st = proxy
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("proxy still running 3 s after SIGINT with no connections"));
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "exit took {:?}",
        t0.elapsed()
    );
}
