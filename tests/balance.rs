//! Distribution of client connections over backends with `workers = 1` (exact per-worker order).
mod util;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use util::*;

fn config(balance: &str, backends: &[(SocketAddr, u32)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        r#"[server]
workers = 1

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"

[[clusters]]
name = "app"
balance = "{balance}"
backends = [{}]
"#,
        list.join(", ")
    )
}

/// Opens a connection and returns it with the id of the backend that answered.
fn open(addr: SocketAddr) -> (TcpStream, String) {
    let mut c = connect(addr);
    let id = read_line(&mut c);
    (c, id)
}

fn count_sequential(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (c, id) = open(addr);
        drop(c);
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[test]
fn round_robin_spreads_evenly_over_three_backends() {
    let b: Vec<Backend> = ["a", "b", "c"].iter().map(|id| Backend::id(id)).collect();
    // Weights must be ignored by round_robin.
    let proxy = Proxy::start(&config(
        "round_robin",
        &[(b[0].addr, 1), (b[1].addr, 5), (b[2].addr, 1)],
    ));
    let counts = count_sequential(proxy.addr("front"), 300);
    eprintln!("round_robin counts: {counts:?}");
    for id in ["a", "b", "c"] {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!(
            (98..=102).contains(&n),
            "backend {id} got {n} of 300 (want 100 ± 2): {counts:?}"
        );
    }
    // And in order: with one worker, a, b, c repeat.
    let seq: Vec<String> = (0..6).map(|_| open(proxy.addr("front")).1).collect();
    for i in 3..6 {
        assert_eq!(
            seq[i],
            seq[i - 3],
            "round robin order not periodic: {seq:?}"
        );
    }
    assert_ne!(seq[0], seq[1]);
    assert_ne!(seq[1], seq[2]);
    assert_ne!(seq[0], seq[2]);
}

#[test]
fn weighted_one_to_three() {
    let a = Backend::id("a");
    let b = Backend::id("b");
    let proxy = Proxy::start(&config("weighted", &[(a.addr, 1), (b.addr, 3)]));
    let counts = count_sequential(proxy.addr("front"), 400);
    eprintln!("weighted counts: {counts:?}");
    let na = counts.get("a").copied().unwrap_or(0);
    let nb = counts.get("b").copied().unwrap_or(0);
    assert_eq!(na + nb, 400, "{counts:?}");
    // 25% / 75% within ±3 percentage points (±12 of 400).
    assert!(
        (88..=112).contains(&na),
        "a got {na} of 400 (want 100 ± 12): {counts:?}"
    );
    // Smooth weighted round robin: never more than 3 b's in a row.
    let seq: Vec<String> = (0..16).map(|_| open(proxy.addr("front")).1).collect();
    let longest_b = seq.split(|s| s == "a").map(|run| run.len()).max().unwrap();
    assert!(
        longest_b <= 3,
        "b picked {longest_b} times in a row: {seq:?}"
    );
}

#[test]
fn least_conn_follows_open_connections() {
    let a = Backend::id("a");
    let b = Backend::id("b");
    let proxy = Proxy::start(&config("least_conn", &[(a.addr, 1), (b.addr, 1)]));
    let addr = proxy.addr("front");

    // Hold four connections open: 2 / 2.
    let held: Vec<(TcpStream, String)> = (0..4).map(|_| open(addr)).collect();
    let on = |id: &str, v: &[(TcpStream, String)]| v.iter().filter(|(_, x)| x == id).count();
    assert_eq!(
        (on("a", &held), on("b", &held)),
        (2, 2),
        "4 held connections not split 2/2"
    );

    // Close the two on a, and wait until the proxy has noticed.
    let (on_a, mut keep): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, id)| id == "a");
    drop(on_a);
    wait_until(
        Duration::from_secs(5),
        "backend a sees its connections closed",
        || a.active() == 0,
    );
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 2);

    // The next two go to a (0 active) rather than b (2 active).
    keep.push(open(addr));
    keep.push(open(addr));
    let ids: Vec<&str> = keep[2..].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["a", "a"],
        "least_conn sent new connections to the busier backend"
    );

    // Now 2 / 2 again: of the next two connections, one goes to each.
    let (c1, id1) = open(addr);
    let (c2, id2) = open(addr);
    assert_ne!(
        id1, id2,
        "with 2/2 active, two more connections should go one to each"
    );
    drop((c1, c2, keep));
    proxy.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
}
