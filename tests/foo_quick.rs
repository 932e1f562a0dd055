//! Foo protocol through quick mode (`switchyard -listen ... -forward ... -protocol foo`) against
//! the built-in `demo-backend --protocol foo`: pipelined REQs, every ACK in order, data intact.
mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::Duration;

use util::*;

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

fn quick(dash: &str, forward: &str) -> Proxy {
    quick_with(dash, forward, Some("foo"))
}

/// Quick mode; `protocol: None` leaves `-protocol` out (the default must be foo).
fn quick_with(dash: &str, forward: &str, protocol: Option<&str>) -> Proxy {
    let a = |s: &str| format!("{dash}{s}");
    let mut args = vec![
        a("listen"),
        "127.0.0.1:0".into(),
        a("forward"),
        forward.to_string(),
        a("http"),
        "127.0.0.1:0".into(),
        a("recovery-path"),
        "recovery.json".into(),
    ];
    if let Some(p) = protocol {
        args.extend([a("protocol"), p.to_string()]);
    }
    Proxy::start_args(&args, &["quick"])
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

/// Random Foo data: printable, may contain inner spaces, never a newline.
fn random_data(rng: &mut Rng) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/=+";
    let len = 1 + rng.below(60) as usize;
    let mut s: Vec<u8> = (0..len)
        .map(|_| ALPHA[rng.below(ALPHA.len() as u64) as usize])
        .collect();
    if len > 4 && rng.below(3) == 0 {
        let i = 1 + rng.below(len as u64 - 2) as usize;
        s[i] = b' ';
    }
    String::from_utf8(s).unwrap()
}

/// One client: pipelines `n` REQ lines in a few writes while a reader thread checks every reply.
fn foo_client(addr: SocketAddr, seed: u64, n: usize) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let data: Vec<String> = (0..n).map(|_| random_data(&mut rng)).collect();
    let mut wire = Vec::new();
    for (i, d) in data.iter().enumerate() {
        wire.extend_from_slice(format!("REQ {} {}\n", i + 1, d).as_bytes());
    }
    let mut c = connect(addr);
    let rd = c.try_clone().map_err(|e| e.to_string())?;
    let expected = data.clone();
    let reader = spawn_small("foo-reader", move || -> Result<(), String> {
        let mut r = BufReader::new(rd);
        let mut line = Vec::new();
        for (i, d) in expected.iter().enumerate() {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => return Err(format!("EOF after {i} of {} replies", expected.len())),
                Ok(_) => {}
                Err(e) => return Err(format!("read error after {i} replies: {e}")),
            }
            let got = String::from_utf8_lossy(&line);
            let want = format!("ACK {} {}\n", i + 1, d);
            if got != want {
                return Err(format!("reply {}: got {got:?}, want {want:?}", i + 1));
            }
        }
        Ok(())
    });
    // A few writes, cut at random points (lines span writes).
    let mut cuts: Vec<usize> = (0..3)
        .map(|_| rng.below(wire.len() as u64) as usize)
        .collect();
    cuts.push(0);
    cuts.push(wire.len());
    cuts.sort_unstable();
    for w in cuts.windows(2) {
        c.write_all(&wire[w[0]..w[1]])
            .map_err(|e| format!("write: {e}"))?;
    }
    join_timeout(reader, Duration::from_secs(20), "foo-reader")
}

fn run_clients(addr: SocketAddr, clients: usize, lines: usize) {
    let hs: Vec<_> = (0..clients)
        .map(|i| {
            spawn_small("foo-client", move || {
                foo_client(addr, 0x5eed_0000 + i as u64 * 7919, lines)
            })
        })
        .collect();
    let errs: Vec<String> = hs
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            join_timeout(h, Duration::from_secs(30), "foo-client")
                .err()
                .map(|e| format!("client {i}: {e}"))
        })
        .collect();
    assert!(
        errs.is_empty(),
        "{} of {clients} Foo clients failed: {errs:#?}",
        errs.len()
    );
}

#[test]
fn foo_quick_mode_fifty_pipelining_clients() {
    const CLIENTS: usize = 50;
    const LINES: usize = 200;
    let backend = demo_foo_backend();
    let proxy = quick("-", &backend.addr("demo-backend").to_string());
    run_clients(proxy.addr("quick"), CLIENTS, LINES);

    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    let st = proxy.stats();
    assert_eq!(tcp_of(&st, "accepted"), CLIENTS as u64, "{st}");
    expect_foo_counts(&st, CLIENTS * LINES);
}

/// The Foo message counters (part of the compat spec) must be there and exact.
fn expect_foo_counts(st: &serde_json::Value, lines: usize) {
    let want = [
        ("msg_req", lines),
        ("msg_ack", lines),
        ("msg_nak", 0),
        ("msg_total", 2 * lines),
    ];
    for (k, v) in want {
        let got = st
            .get(k)
            .and_then(|g| g.as_u64())
            .unwrap_or_else(|| panic!("stats have no integer {k}: {st}"));
        assert_eq!(got, v as u64, "{k}: {st}");
    }
}

/// Quick mode replaces the Foo proxy: without -protocol it speaks (and counts) Foo.
#[test]
fn foo_quick_mode_counts_foo_without_a_protocol_flag() {
    let backend = demo_foo_backend();
    let proxy = quick_with("-", &backend.addr("demo-backend").to_string(), None);
    assert!(
        proxy.stderr_text().contains("protocol=foo"),
        "{}",
        proxy.stderr_text()
    );
    run_clients(proxy.addr("quick"), 4, 25);
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    expect_foo_counts(&proxy.stats(), 100);
}

#[test]
fn foo_quick_mode_double_dash_flags() {
    let backend = demo_foo_backend();
    let proxy = quick("--", &backend.addr("demo-backend").to_string());
    run_clients(proxy.addr("quick"), 5, 50);
}

#[test]
fn foo_quick_mode_forward_colon_port_means_localhost() {
    let backend = demo_foo_backend();
    let port = backend.addr("demo-backend").port();
    let proxy = quick("-", &format!(":{port}"));
    run_clients(proxy.addr("quick"), 3, 20);
}
