//! Health checking and resilience over real sockets: HTTP checks that see a wrong status or
//! time out take a backend down; a backend killed under steady load is ejected within
//! interval × fall + timeout while GETs see no errors, and when it comes back it rejoins after
//! `rise` good checks with its share ramping up (slow start).

mod util;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use util::client::{call, Client};
use util::*;

fn demo_at(id: &str, listen: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", listen, "--id", id],
        &["demo-backend"],
    )
}

fn backend_states(admin: SocketAddr, cluster: &str) -> HashMap<String, Value> {
    let v = call(admin, "GET", &format!("/v1/clusters/{cluster}"), None).json();
    v["status"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["addr"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

fn state(admin: SocketAddr, cluster: &str, addr: &str) -> String {
    backend_states(admin, cluster)
        .get(addr)
        .and_then(|b| b["state"].as_str())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn http_checks_with_a_wrong_status_or_a_timeout_take_backends_down() {
    let good = demo_at("good", "127.0.0.1:0");
    let bad = fixed_backend("bad", 500, Duration::ZERO);
    // The check timeout leaves the 500 backend plenty of time on a busy machine (a check of
    // it that timed out would be "down" for the wrong reason), and the slow one none.
    let slow = fixed_backend("slow", 200, Duration::from_millis(1500));
    let g = good.addr("demo-backend");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 2\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\
         [[clusters]]\nname = \"app\"\nbackends = [\"{g}\", \"{bad}\", \"{slow}\"]\n\
         [clusters.health]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nrise = 2\nfall = 2\n"
    ));
    let admin = p.addr("admin");
    wait_until(Duration::from_secs(8), "bad and slow marked down", || {
        state(admin, "app", &bad.to_string()) == "down"
            && state(admin, "app", &slow.to_string()) == "down"
    });
    let st = backend_states(admin, "app");
    assert_eq!(st[&g.to_string()]["state"], "up");
    let detail = |a: SocketAddr| {
        st[&a.to_string()]["last_check"]["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(detail(bad).contains("status 500"), "{}", detail(bad));
    assert!(detail(slow).contains("timeout"), "{}", detail(slow));
    assert!(p.stderr_text().contains("is DOWN"));
    // Traffic goes to the healthy backend only.
    for _ in 0..20 {
        let r = call(p.addr("web"), "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "good"));
    }
}

#[test]
fn killed_backend_is_ejected_under_load_and_rejoins_with_slow_start() {
    let a = demo_at("A", "127.0.0.1:0");
    let b = demo_at("B", "127.0.0.1:0");
    let (aa, ba) = (a.addr("demo-backend"), b.addr("demo-backend"));
    // interval 200ms, timeout 100ms, fall 2: ejected within ~0.5 s.
    let p = Proxy::start(&format!(
        "[server]\nworkers = 2\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\
         [[clusters]]\nname = \"app\"\nbackends = [\"{aa}\", \"{ba}\"]\nslow_start = \"3s\"\n\
         [clusters.health]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\njitter = 0.0\n"
    ));
    let admin = p.addr("admin");
    let web = p.addr("web");

    // Steady GET load, recording who answered and when.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, failed, log) = (stop.clone(), failed.clone(), log.clone());
            thread::spawn(move || {
                let mut c = Client::new(web);
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    match c.request("GET", "/", &[], None) {
                        Ok(r) if r.status == 200 => log
                            .lock()
                            .unwrap()
                            .push((Instant::now(), r.text().trim() == "B")),
                        Ok(r) => {
                            eprintln!("GET: {} {}", r.status, r.text());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("GET: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));

    // Kill B: ejected within interval × fall + timeout (plus a little scheduling slack).
    b.signal(Signal::SIGKILL);
    let killed = Instant::now();
    wait_until(Duration::from_secs(5), "B down", || {
        state(admin, "app", &ba.to_string()) == "down"
    });
    let ejected_after = killed.elapsed();
    eprintln!("B ejected after {ejected_after:?}");
    assert!(
        ejected_after < Duration::from_millis(200 * 2 + 100 + 400),
        "{ejected_after:?}"
    );
    drop(b);

    // Bring B back on the same address: up after `rise` good checks, then a slow start.
    let b2 = demo_at("B", &ba.to_string());
    let restarted = Instant::now();
    wait_until(Duration::from_secs(5), "B up again", || {
        state(admin, "app", &ba.to_string()) == "up"
    });
    let up_at = Instant::now();
    eprintln!("B up after {:?}", up_at.duration_since(restarted));
    thread::sleep(Duration::from_millis(4000));
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "GETs failed while a backend died"
    );
    let log = log.lock().unwrap();
    let share = |from: Duration, to: Duration| {
        let w: Vec<bool> = log
            .iter()
            .filter(|(t, _)| *t >= up_at + from && *t < up_at + to)
            .map(|(_, b)| *b)
            .collect();
        let n = w.len().max(1);
        (w.iter().filter(|b| **b).count() as f64 / n as f64, w.len())
    };
    let (early, n1) = share(Duration::ZERO, Duration::from_millis(700));
    let (late, n2) = share(Duration::from_millis(3200), Duration::from_millis(4000));
    eprintln!("B's share: first 0.7 s {early:.2} of {n1}; after 3.2 s {late:.2} of {n2}");
    assert!(n1 > 20 && n2 > 20, "too few requests: {n1}, {n2}");
    assert!(
        early < 0.25,
        "slow start: B took {early:.2} right after rejoining"
    );
    assert!(
        late > 0.35,
        "after the ramp B should be back near half: {late:.2}"
    );
    drop(b2);
}

/// HAProxy's `init-state`: after a (re)start, a health-checked cluster's backends are
/// `unknown` and the proxy serves only after one check round, so a dead backend gets no
/// connect attempt at all; traffic sent the moment the listener is announced all succeeds.
#[test]
fn restart_with_a_dead_backend_makes_no_connect_to_it_before_its_first_check() {
    let good = demo_at("good", "127.0.0.1:0");
    let g = good.addr("demo-backend");
    let dead = dead_addr();
    let state_dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nworkers = 2\nstate_dir = {:?}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n[[clusters]]\nname = \"app\"\nbackends = [\"{g}\", \"{dead}\"]\n\
         [clusters.health]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"2s\"\ntimeout = \"1s\"\n",
        state_dir.path().display().to_string()
    );
    for round in 0..2 {
        let p = Proxy::start(&cfg);
        let web = p.addr("web");
        let mut c = Client::new(web);
        for i in 0..200 {
            let r = c.request("GET", "/", &[], None).expect("request");
            assert_eq!(
                (r.status, r.text().trim()),
                (200, "good"),
                "round {round}, request {i}"
            );
        }
        let st = p.stats();
        let d = &st["clusters"]["app"]["backends"][dead.to_string()];
        assert_eq!(d["state"], "down", "round {round}: {d}");
        assert_eq!(d["connections"], 0, "round {round}: {d}");
        assert_eq!(d["connect_errors"], 0, "round {round}: {d}");
        assert_eq!(
            st["tcp"]["connect_failed"], 0,
            "round {round}: {}",
            st["tcp"]
        );
        wait_until(Duration::from_secs(15), "the first round logged", || {
            p.stderr_text().contains("first health check round done")
        });
        p.sigterm();
        p.wait_exit(Duration::from_secs(10)).expect("exits");
    }
}

#[test]
fn init_state_up_keeps_unchecked_backends_in_rotation() {
    let good = demo_at("good", "127.0.0.1:0");
    let g = good.addr("demo-backend");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n[[clusters]]\nname = \"app\"\nbackends = [\"{g}\"]\n\
         [clusters.health]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"1h\"\ntimeout = \"1s\"\ninit_state = \"up\"\n"
    ));
    assert!(!p.stderr_text().contains("first health check round"));
    assert_eq!(state(p.addr("admin"), "app", &g.to_string()), "up");
}
