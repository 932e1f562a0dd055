//! Process limits and placement: `max_connections` holds extra clients in the kernel backlog
//! (never refused, never failed) until a slot frees; `pin_workers` pins each worker thread.
mod util;

use std::io::Read;
use std::time::Duration;

use util::*;

#[test]
fn max_connections_queues_extra_clients_until_a_slot_frees() {
    let backend = Backend::id("b");
    let proxy = Proxy::start(&simple_config(
        "workers = 1\nmax_connections = 4",
        "",
        &[backend.addr],
    ));
    let addr = proxy.addr("front");
    let mut served: Vec<_> = (0..4)
        .map(|_| {
            let mut c = connect(addr);
            assert_eq!(read_line(&mut c), "b");
            c
        })
        .collect();
    // The fifth connects (kernel backlog) but is not proxied while four sessions are open.
    let mut waiting = connect(addr);
    waiting
        .set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    match waiting.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("fifth client should wait in the backlog, got {other:?}"),
    }
    assert_eq!(
        backend.accepted(),
        4,
        "only four sessions may reach the backend"
    );
    assert_eq!(proxy.tcp("active"), 4);
    // One leaves: the waiting client is accepted and proxied promptly.
    drop(served.remove(0));
    waiting
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    assert_eq!(read_line(&mut waiting), "b");
    wait_until(
        Duration::from_secs(3),
        "backend sees the fifth client",
        || backend.accepted() == 5,
    );
    let st = proxy.stats();
    assert_eq!(tcp_of(&st, "accept_errors"), 0, "{st}");
}

#[test]
fn pin_workers_pins_each_worker_to_its_own_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let backend = Backend::id("p");
    let proxy = Proxy::start(&simple_config(
        &format!("workers = {cpus}\npin_workers = true"),
        "",
        &[backend.addr],
    ));
    // Workers pin themselves as they start: poll until every one has.
    let read_pins = || {
        let mut pins = Vec::new();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", proxy.pid)).expect("task dir");
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let Some(id) = comm.trim().strip_prefix("worker-") else {
                continue;
            };
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap_or("")
                .trim()
                .to_string();
            pins.push((id.to_string(), allowed));
        }
        pins
    };
    let mut last = Vec::new();
    let all_pinned = (0..60).any(|_| {
        last = read_pins();
        let ok = last.len() == cpus && last.iter().all(|(id, cpu)| id == cpu);
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(
        all_pinned,
        "each worker-N should be pinned to CPU N: {last:?}"
    );
}

/// Descriptor exhaustion: with its open-file limit cut to a few spare descriptors, the proxy
/// keeps serving the connections it has, logs the condition once, pauses accepting briefly
/// instead of spinning, and serves the waiting clients as descriptors free up.
#[test]
fn fd_exhaustion_pauses_accepting_and_recovers() {
    let backend = Backend::id("e");
    let proxy = Proxy::start(&simple_config(
        "workers = 1",
        "connect_timeout = \"10s\"",
        &[backend.addr],
    ));
    let addr = proxy.addr("front");
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid))
        .expect("fd dir")
        .count();
    // Room for about five proxied connections (two descriptors each).
    let limit = open_fds + 10;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &proxy.pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(status.success(), "prlimit failed");

    const CLIENTS: usize = 16;
    let mut pending: Vec<(usize, std::net::TcpStream)> =
        (0..CLIENTS).map(|i| (i, connect(addr))).collect();
    let mut served = 0;
    let mut closed_unserved = 0;
    let mut rounds = 0;
    let deadline = Deadline::after(Duration::from_secs(20));
    // Serve in waves: whoever has its greeting is done and hangs up, freeing descriptors.
    while !pending.is_empty() && !deadline.expired() {
        rounds += 1;
        let mut still = Vec::new();
        // Served clients stay connected until the wave ends, holding their descriptors.
        let mut wave = Vec::new();
        for (i, mut c) in pending {
            c.set_read_timeout(Some(Duration::from_millis(60)))
                .expect("timeout");
            let mut buf = [0u8; 2];
            match c.read(&mut buf) {
                Ok(2) if &buf == b"e\n" => {
                    served += 1;
                    wave.push(c);
                }
                Ok(0) => closed_unserved += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    still.push((i, c))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed_unserved += 1,
                other => panic!("client {i}: unexpected {other:?}"),
            }
        }
        pending = still;
        drop(wave);
    }
    assert!(
        pending.is_empty(),
        "{} clients never served or closed",
        pending.len()
    );
    assert!(rounds > 1, "the limit never held anyone back");
    assert_eq!(
        (served, closed_unserved),
        (CLIENTS, 0),
        "every client is served once descriptors free up; none is dropped"
    );
    assert!(proxy.try_wait().is_none(), "the proxy died");
    // Descriptors are free again: a new client is served at once.
    let mut c = connect(addr);
    assert_eq!(read_line(&mut c), "e");
    let st = proxy.stats();
    assert!(
        tcp_of(&st, "accept_errors") > 0,
        "exhaustion was never hit: {st}"
    );
    assert_eq!(tcp_of(&st, "no_backend"), 0, "{st}");
    let warnings = proxy
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("pausing accepts"))
        .count();
    assert!(
        warnings <= 1,
        "the condition is logged once, not per accept: {warnings}"
    );
}

/// A capped cluster's connection slots are shared by every worker, and so is its queue: a
/// request waiting for a slot in one worker is served when a slot frees in another, oldest
/// first (not only when its own worker frees one, which let the worker holding the slot keep
/// it while the other worker's requests waited their connect timeout for a 503). Two workers,
/// one connection to a backend that answers after 20 ms, 16 keep-alive clients spread over
/// both workers by SO_REUSEPORT, each sending requests for 5 s: every request is answered
/// 200, after a wait of about 16 × 20 ms, far below the 3 s connect timeout.
#[test]
fn waiting_requests_are_served_oldest_first_across_workers() {
    const CLIENTS: usize = 16;
    const SENDING: Duration = Duration::from_secs(5);
    let (_demo, cfg) = slow_demo_config(
        "workers = 2",
        "max_connections_per_backend = 1\nmax_pending = 1000\nconnect_timeout = \"3s\"",
    );
    let proxy = Proxy::start(&cfg);
    let web = proxy.addr("web");
    let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let start = start.clone();
            spawn_small("client", move || -> (u32, Vec<String>) {
                let mut c = util::client::Client::new(web);
                start.wait();
                let until = std::time::Instant::now() + SENDING;
                let (mut ok, mut bad) = (0, Vec::new());
                while std::time::Instant::now() < until {
                    match c.request("GET", "/?delay_ms=20", &[], None) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => bad.push(format!("client {i}: status {}", r.status)),
                        Err(e) => bad.push(format!("client {i}: {e}")),
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut failures = Vec::new();
    for c in clients {
        let (ok, bad) = join_timeout(c, Duration::from_secs(60), "client");
        served.push(ok);
        failures.extend(bad);
    }
    let st = proxy.stats();
    assert!(
        failures.is_empty(),
        "{} failed requests (first: {}); served per client {served:?}; stats {st}",
        failures.len(),
        failures[0]
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "every client is served: {served:?}; stats {st}"
    );
    assert_eq!(tcp_of(&st, "limit_rejects"), 0, "{st}");
    eprintln!("served per client: {served:?}");
}
