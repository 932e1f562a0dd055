//! sd_notify, played from systemd's side: a real unix datagram socket as `NOTIFY_SOCKET`
//! (abstract and path), `WATCHDOG_USEC`, and signals. PID 1 here is not systemd; these tests
//! are the service manager.

mod util;

use nix::sys::signal::Signal;
use std::ffi::OsString;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use util::client::{call, Client};
use util::sd::{monotonic_usec, NotifySocket};
use util::*;

fn demo_backend() -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "b1"],
        &["demo-backend"],
    )
}

fn config(backend: std::net::SocketAddr, server_extra: &str) -> String {
    format!(
        r#"[server]
workers = 2
{server_extra}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{backend}"]
"#
    )
}

/// Starts `run -c` on `cfg` written into `dir`, with extra environment.
fn start_env(dir: tempfile::TempDir, cfg: &str, env: &[(&str, OsString)]) -> Proxy {
    util::sd::start_run(BIN.as_ref(), dir, cfg, env)
}

#[test]
fn ready_only_once_listeners_accept_and_state_is_replayed_then_status_and_stopping() {
    let backend = demo_backend();
    let b = backend.addr("demo-backend");
    let state = tempfile::tempdir().unwrap();
    let server = format!("state_dir = \"{}\"", state.path().display());

    // First run, without a service manager: add a listener through the API (persisted).
    {
        let p = Proxy::start(&config(b, &server));
        let r = call(
            p.addr("admin"),
            "PUT",
            "/v1/listeners/side",
            Some(r#"{"bind":"127.0.0.1:0","protocol":"http","cluster":"app"}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        p.sigterm();
        assert!(p
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()));
    }

    // Second run under "systemd": READY=1 must mean both listeners, the replayed one too,
    // accept and proxy at that very moment.
    let notify = NotifySocket::abstract_socket();
    let p = start_env(
        tempfile::tempdir().unwrap(),
        &config(b, &server),
        &[notify.env()],
    );
    wait_until(Duration::from_secs(10), "the replayed listener", || {
        p.stderr_text().contains("name=side")
    });
    let side = p
        .stderr_lines()
        .iter()
        .find_map(|l| parse_listening(l).filter(|(n, _)| n == "side"))
        .map(|(_, a)| a)
        .unwrap();
    let (i, ready) = notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));
    // Nothing before READY=1 but... nothing: no STATUS or watchdog before start-up is done.
    assert_eq!(
        i,
        0,
        "READY=1 is the first notification: {:?}",
        notify.all()
    );
    for (name, addr) in [("web", p.addr("web")), ("side", side)] {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{name} ({addr}) refuses right after READY=1: {e}"));
        let r = call(addr, "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "b1"), "{name}");
    }
    let status = ready
        .get("STATUS")
        .expect("STATUS= with READY=1")
        .to_string();
    assert!(
        status.contains("2 worker(s)")
            && status.contains("2 listener(s)")
            && status.contains("config version"),
        "{status}"
    );
    // STATUS= is refreshed with the live connection count.
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.request("GET", "/", &[], None).unwrap().status, 200);
    notify.wait_for(i + 1, Duration::from_secs(15), "a STATUS= refresh", |n| {
        n.get("STATUS")
            .is_some_and(|s| s.contains("1 connection(s)"))
    });

    let before = notify.len();
    p.sigterm();
    notify.wait_for(before, Duration::from_secs(5), "STOPPING=1", |n| {
        n.has("STOPPING=1")
    });
    drop(c);
    let st = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(st.success(), "{st}");
    // No READY=1 after STOPPING=1.
    let all = notify.all();
    let stop = all.iter().position(|n| n.has("STOPPING=1")).unwrap();
    assert!(!all[stop..].iter().any(|n| n.has("READY=1")), "{all:?}");
}

#[test]
fn watchdog_pings_at_half_the_interval_and_stop_while_a_worker_is_stalled() {
    let backend = demo_backend();
    let notify = NotifySocket::path_socket();
    let start = Instant::now();
    let p = start_env(
        tempfile::tempdir().unwrap(),
        &config(backend.addr("demo-backend"), ""),
        &[
            notify.env(),
            ("WATCHDOG_USEC", "600000".into()),
            // Test-only switch: worker 1 blocks 3 s after start, for 3 s.
            ("SWITCHYARD_TEST_STALL_WORKER", "1:3s:3s".into()),
        ],
    );
    // Until after the stall and a little more.
    wait_until(Duration::from_secs(20), "the stall to end", || {
        p.stderr_text().contains("stall over")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let pings: Vec<Instant> = notify
        .all()
        .iter()
        .filter(|n| n.has("WATCHDOG=1"))
        .map(|n| n.at)
        .collect();
    let stall_at = Duration::from_secs(3);
    let gaps: Vec<(Duration, Duration)> = pings
        .windows(2)
        .map(|w| (w[0].duration_since(start), w[1] - w[0]))
        .collect();
    // Before the stall: every 300 ms (half of 600 ms); generous bounds for a busy machine.
    let before: Vec<_> = gaps
        .iter()
        .filter(|(at, g)| *at + *g < stall_at - Duration::from_millis(100))
        .collect();
    assert!(before.len() >= 4, "pings before the stall: {gaps:?}");
    for (at, g) in &before {
        assert!(
            *g >= Duration::from_millis(150) && *g <= Duration::from_millis(1000),
            "gap of {g:?} at {at:?}: {gaps:?}"
        );
    }
    // The stall (3 s) shows as one long silence...
    let longest = gaps.iter().map(|(_, g)| *g).max().unwrap_or_default();
    assert!(longest >= Duration::from_millis(2200), "{gaps:?}");
    // ...and pings come back once the worker turns again.
    let last = *pings.last().expect("pings");
    assert!(
        last > start + Duration::from_secs(6),
        "no ping after the stall: {gaps:?}"
    );
    assert!(
        p.stderr_text().contains("made no progress"),
        "{}",
        p.stderr_text()
    );
}

/// The control thread sends `WATCHDOG=1` itself, so when it stalls the pings stop even though
/// every worker turns. The stall is a real one, caused from outside with no test switch:
/// SIGHUP makes the control thread read the config file, and a FIFO that nobody writes to
/// blocks that read (in `open`) until the test writes the file into it.
#[test]
fn watchdog_pings_stop_while_the_control_thread_is_stalled() {
    let backend = demo_backend();
    let notify = NotifySocket::path_socket();
    let p = start_env(
        tempfile::tempdir().unwrap(),
        &config(backend.addr("demo-backend"), ""),
        &[notify.env(), ("WATCHDOG_USEC", "600000".into())],
    );
    let pings = |from: usize| -> Vec<Instant> {
        notify.all()[from..]
            .iter()
            .filter(|n| n.has("WATCHDOG=1"))
            .map(|n| n.at)
            .collect()
    };
    wait_until(Duration::from_secs(10), "three pings", || {
        pings(0).len() >= 3
    });

    let path = p.config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let from = notify.len();
    p.signal(Signal::SIGHUP);
    // RELOADING=1 goes out before the file is read: from then on the control thread waits.
    let (j, reloading) = notify.wait_for(from, Duration::from_secs(10), "RELOADING=1", |n| {
        n.has("RELOADING=1")
    });
    // For 3 s the workers keep serving...
    let mut served = 0;
    while reloading.at.elapsed() < Duration::from_secs(3) {
        let r = call(p.addr("web"), "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "b1"));
        served += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(served >= 5, "{served} requests during the stall");
    // ...but systemd hears nothing: no ping since RELOADING=1.
    assert_eq!(
        pings(j),
        Vec::<Instant>::new(),
        "pings while the control thread is stuck"
    );
    // Unblocked: the reload finishes (READY=1) and the pings come back.
    {
        let mut fifo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut fifo, text.as_bytes()).unwrap();
    }
    let (k, _) = notify.wait_for(j + 1, Duration::from_secs(10), "READY=1", |n| {
        n.has("READY=1")
    });
    notify.wait_for(k, Duration::from_secs(10), "WATCHDOG=1 again", |n| {
        n.has("WATCHDOG=1")
    });
    let before = *pings(0)
        .iter()
        .filter(|t| **t <= reloading.at)
        .max()
        .expect("pings before the stall");
    let after = pings(j)[0];
    assert!(
        after - before >= Duration::from_millis(2900),
        "silence of {:?}",
        after - before
    );
    // The workers were never stuck: the silence is the control thread's alone.
    assert!(
        !p.stderr_text().contains("made no progress"),
        "{}",
        p.stderr_text()
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, text).unwrap();
}

#[test]
fn watchdog_pid_of_another_process_means_no_pings() {
    let backend = demo_backend();
    let notify = NotifySocket::abstract_socket();
    let _p = start_env(
        tempfile::tempdir().unwrap(),
        &config(backend.addr("demo-backend"), ""),
        &[
            notify.env(),
            ("WATCHDOG_USEC", "200000".into()),
            ("WATCHDOG_PID", "1".into()),
        ],
    );
    notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !notify.all().iter().any(|n| n.has("WATCHDOG=1")),
        "{:?}",
        notify.all()
    );
}

#[test]
fn reloading_and_ready_around_a_good_and_a_bad_sighup() {
    let backend = demo_backend();
    let b = backend.addr("demo-backend");
    let notify = NotifySocket::path_socket();
    let p = start_env(
        tempfile::tempdir().unwrap(),
        &config(b, ""),
        &[notify.env()],
    );
    let (i, _) = notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));
    let path = p.config_path.clone().unwrap();

    // A good change: a second listener.
    let good = std::fs::read_to_string(&path).unwrap()
        + "\n[[listeners]]\nname = \"more\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n";
    std::fs::write(&path, &good).unwrap();
    let t0 = monotonic_usec();
    p.signal(Signal::SIGHUP);
    let (j, reloading) = notify.wait_for(i + 1, Duration::from_secs(10), "RELOADING=1", |n| {
        n.has("RELOADING=1")
    });
    let usec: u64 = reloading
        .get("MONOTONIC_USEC")
        .expect("MONOTONIC_USEC= with RELOADING=1")
        .parse()
        .unwrap();
    let t1 = monotonic_usec();
    assert!(t0 <= usec && usec <= t1, "{t0} <= {usec} <= {t1}");
    let (k, ready) = notify.wait_for(j + 1, Duration::from_secs(10), "READY=1", |n| {
        n.has("READY=1")
    });
    let status = ready.get("STATUS").unwrap_or_default().to_string();
    assert!(
        status.contains("2 listener(s)") && status.contains("config version 2"),
        "{status}"
    );

    // A bad file: RELOADING=1, then READY=1 with the error in STATUS=; still serving.
    std::fs::write(
        &path,
        good.replace("protocol = \"http\"", "protocol = \"htp\""),
    )
    .unwrap();
    p.signal(Signal::SIGHUP);
    let (l, _) = notify.wait_for(k + 1, Duration::from_secs(10), "RELOADING=1", |n| {
        n.has("RELOADING=1")
    });
    let (_, ready) = notify.wait_for(l + 1, Duration::from_secs(10), "READY=1", |n| {
        n.has("READY=1")
    });
    let status = ready.get("STATUS").unwrap_or_default();
    assert!(
        status.contains("reload rejected") && status.contains("htp"),
        "{status}"
    );
    assert!(status.contains("config version 2"), "{status}");
    let r = call(p.addr("web"), "GET", "/", None);
    assert_eq!(r.status, 200);
}
