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
