//! `hash` (Maglev on the client IP) and `p2c_ewma` over real sockets, with one and two workers.
mod util;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use util::*;

fn config(workers: usize, balance: &str, extra: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"[server]
workers = {workers}

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"

[[clusters]]
name = "app"
balance = "{balance}"
backends = [{}]
{extra}
"#,
        list.join(", ")
    )
}

/// Connects from `src` (any 127.0.0.0/8 address works on Linux loopback) and returns the id
/// line of the backend that answered.
fn id_from(proxy: SocketAddr, src: Ipv4Addr) -> String {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&proxy.into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    read_line(&mut s)
}

fn hash_on_client_ip(workers: usize) {
    let ids = ["a", "b", "c"];
    let b: Vec<Backend> = ids.iter().map(|id| Backend::id(id)).collect();
    let addrs: Vec<SocketAddr> = b.iter().map(|b| b.addr).collect();
    let proxy = Proxy::start(&config(workers, "hash", "hash_on = \"client_ip\"", &addrs));
    let front = proxy.addr("front");

    // Every connection from 127.0.0.1 lands on the same backend, whichever worker accepts it.
    let home: HashSet<String> = (0..30)
        .map(|_| id_from(front, Ipv4Addr::LOCALHOST))
        .collect();
    assert_eq!(home.len(), 1, "127.0.0.1 went to {home:?}");

    // Other client addresses spread over the backends, each one sticking to its own.
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for i in 2..=61u8 {
        let src = Ipv4Addr::new(127, 0, 0, i);
        let first = id_from(front, src);
        for _ in 0..2 {
            assert_eq!(id_from(front, src), first, "{src} moved");
        }
        *per_backend.entry(first).or_default() += 1;
    }
    eprintln!("workers={workers}: 60 client addresses per backend: {per_backend:?}");
    for id in ids {
        let n = per_backend.get(id).copied().unwrap_or(0);
        assert!(
            (8..=32).contains(&n),
            "backend {id} got {n} of 60 client addresses: {per_backend:?}"
        );
    }
}

#[test]
fn hash_client_ip_one_worker() {
    hash_on_client_ip(1);
}

#[test]
fn hash_client_ip_two_workers() {
    hash_on_client_ip(2);
}

/// A backend that accepts one connection every 50 ms (its accept queue holds 4 more), writes
/// `slow\n` and closes.
struct SlowAcceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SlowAcceptor {
    fn start() -> SlowAcceptor {
        let listener = listen_local(4);
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            spawn_small("slow-acceptor", move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                            let _ = s.write_all(b"slow\n");
                            drop(s);
                            thread::sleep(Duration::from_millis(50));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        SlowAcceptor {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowAcceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            join_timeout(t, Duration::from_secs(2), "slow-acceptor");
        }
    }
}

fn p2c_avoids_slow_acceptor(workers: usize) {
    let fast: Vec<Backend> = ["a", "b"].iter().map(|id| Backend::id(id)).collect();
    let slow = SlowAcceptor::start();
    let addrs = [fast[0].addr, slow.addr, fast[1].addr];
    let proxy = Proxy::start(&config(
        workers,
        "p2c_ewma",
        "connect_timeout = \"300ms\"",
        &addrs,
    ));
    let front = proxy.addr("front");

    // 12 clients, each opening connection after connection for 1.5 s and reading the id.
    let until = Instant::now() + Duration::from_millis(1500);
    let clients: Vec<JoinHandle<HashMap<String, usize>>> = (0..12)
        .map(|_| {
            spawn_small("client", move || {
                let mut counts = HashMap::new();
                while Instant::now() < until {
                    let mut c = connect(front);
                    *counts.entry(read_line(&mut c)).or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for c in clients {
        for (id, n) in join_timeout(c, Duration::from_secs(15), "client") {
            *counts.entry(id).or_default() += n;
        }
    }
    let total: usize = counts.values().sum();
    let n_slow = counts.get("slow").copied().unwrap_or(0);
    eprintln!("workers={workers}: p2c_ewma counts {counts:?}");
    assert!(total >= 100, "too few connections went through: {counts:?}");
    // Round robin would send it a third.
    assert!(
        n_slow * 10 < total,
        "slow backend got {n_slow} of {total} connections: {counts:?}"
    );
    for id in ["a", "b"] {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!(
            n * 4 > total,
            "fast backend {id} got {n} of {total}: {counts:?}"
        );
    }
}

#[test]
fn p2c_ewma_avoids_slow_backend_one_worker() {
    p2c_avoids_slow_acceptor(1);
}

#[test]
fn p2c_ewma_avoids_slow_backend_two_workers() {
    p2c_avoids_slow_acceptor(2);
}
