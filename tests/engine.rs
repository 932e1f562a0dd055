//! The I/O engines: choosing one (`server.engine`, `SWITCHYARD_ENGINE`, the io_uring probe and
//! its refusal), and what an engine must never leak — after closes with operations in flight,
//! peer resets, connection storms and descriptor exhaustion, the engine's gauges in `/stats`
//! (connections, operations in flight, buffers, pipes) and the process's descriptors return
//! to where they were.
//!
//! The leak tests run on the engine under test (`SWITCHYARD_ENGINE`; `make test` runs the
//! suite once per engine).

mod util;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use util::client::call;
use util::*;

const REFUSE: &str = "SWITCHYARD_TEST_URING_REFUSE";

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until the engine holds nothing (no connection, op, buffer or pipe in use) and the
/// process has `fds` descriptors again (plus two per empty pipe the pool keeps for reuse);
/// returns the stats then.
fn assert_settles(p: &Proxy, fds: usize, what: &str) -> Value {
    let mut last;
    let mut last_fds;
    let d = Deadline::after(Duration::from_secs(15));
    loop {
        let st = p.stats();
        let e = &st["engine"];
        last_fds = open_fds(p.pid);
        let zero = [
            "connections",
            "ops_in_flight",
            "buffers_in_use",
            "pipes_in_use",
        ]
        .iter()
        .all(|k| e[*k].as_u64() == Some(0));
        let pooled = 2 * u64_at(e, "/pipes_idle") as usize;
        if zero && last_fds == fds + pooled {
            return st;
        }
        last = e.clone();
        if d.expired() {
            panic!(
                "{what}: the engine did not give everything back: {last} (descriptors {last_fds}, \
                 {fds} before)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tcp_config(backend: SocketAddr) -> String {
    simple_config(
        "workers = 1\nbuffers_per_worker = 256",
        "connect_timeout = \"2s\"",
        &[backend],
    )
}

fn http_config(backend: SocketAddr) -> String {
    format!(
        r#"[server]
workers = 1
buffers_per_worker = 256

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{backend}"]
pool_max_idle = 0
"#
    )
}

fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// The proxy's own view once it has started: fds and an engine with nothing in it.
fn baseline(p: &Proxy) -> usize {
    wait_until(Duration::from_secs(5), "the start line", || {
        p.stderr_text().contains(" started: ")
    });
    // Let the workers reach their first wait.
    std::thread::sleep(Duration::from_millis(100));
    let fds = open_fds(p.pid);
    assert_settles(p, fds, "start");
    fds
}

#[test]
fn auto_falls_back_to_mio_with_one_log_line_when_io_uring_is_refused() {
    let b = Backend::id("m");
    let p = Proxy::start_env(
        &simple_config("workers = 2", "", &[b.addr]),
        &[("SWITCHYARD_ENGINE", None), (REFUSE, Some("seccomp-test"))],
    );
    let mut c = connect(p.addr("front"));
    assert_eq!(read_line(&mut c), "m");
    wait_until(Duration::from_secs(5), "the start line", || {
        p.stderr_text().contains(" started: ")
    });
    let lines = p.stderr_lines();
    let why: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("io_uring is not available"))
        .collect();
    assert_eq!(why.len(), 1, "one line says why: {lines:#?}");
    assert!(
        why[0].contains("WARN")
            && why[0].contains("refused for testing (SWITCHYARD_TEST_URING_REFUSE=seccomp-test)")
            && why[0].contains("using mio"),
        "{}",
        why[0]
    );
    let start = lines.iter().find(|l| l.contains(" started: ")).unwrap();
    assert!(start.contains("engine=mio workers=2"), "{start}");
    assert_eq!(p.stats()["engine"]["name"], "mio");
}

#[test]
fn explicit_io_uring_refused_by_the_kernel_exits_70_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        simple_config("engine = \"io_uring\"\nadmin = \"off\"", "", &[dead_addr()]),
    )
    .unwrap();
    let out = run_to_exit_env(
        &["run".as_ref(), "-c".as_ref(), cfg.as_os_str()],
        dir.path(),
        Duration::from_secs(10),
        &[
            ("SWITCHYARD_ENGINE", None),
            (REFUSE, Some("old-kernel-test")),
        ],
    );
    assert_eq!(out.status.code(), Some(70), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(
            "engine io_uring refused by the kernel: refused for testing \
             (SWITCHYARD_TEST_URING_REFUSE=old-kernel-test)"
        ),
        "{}",
        out.stderr
    );
    // Refused before anything started serving.
    assert!(!out.stderr.contains(" started: "), "{}", out.stderr);
    // The same through the environment override.
    std::fs::write(&cfg, simple_config("admin = \"off\"", "", &[dead_addr()])).unwrap();
    let out = run_to_exit_env(
        &["run".as_ref(), "-c".as_ref(), cfg.as_os_str()],
        dir.path(),
        Duration::from_secs(10),
        &[("SWITCHYARD_ENGINE", Some("io_uring")), (REFUSE, Some("x"))],
    );
    assert_eq!(out.status.code(), Some(70), "stderr: {}", out.stderr);
}

#[test]
fn a_bad_engine_name_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        simple_config("engine = \"epoll\"", "", &[dead_addr()]),
    )
    .unwrap();
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), cfg.as_os_str()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("server.engine: unknown engine \"epoll\" (expected auto, mio or io_uring)"),
        "{}",
        out.stderr
    );
}

/// Each engine asked for by name runs, and says so in the start line, `/stats` and
/// `/metrics`.
#[test]
fn the_engine_in_use_shows_in_the_start_line_stats_and_metrics() {
    let b = Backend::id("s");
    for engine in ["mio", "io_uring"] {
        let p = Proxy::start_env(
            &simple_config("workers = 1", "", &[b.addr]),
            &[("SWITCHYARD_ENGINE", Some(engine))],
        );
        let mut c = connect(p.addr("front"));
        assert_eq!(read_line(&mut c), "s", "{engine}");
        wait_until(Duration::from_secs(5), "the start line", || {
            p.stderr_text().contains(" started: ")
        });
        let text = p.stderr_text();
        assert!(
            text.contains(&format!("engine={engine} workers=1")),
            "{text}"
        );
        let admin = p.addr("admin");
        let st = call(admin, "GET", "/stats", None).json();
        assert_eq!(st["engine"]["name"], engine, "{st}");
        assert!(st["engine"]["connections"].as_u64().is_some(), "{st}");
        let m = call(admin, "GET", "/metrics", None).text();
        assert!(
            m.contains(&format!(
                "switchyard_engine_info{{engine=\"{engine}\"}} 1\n"
            )),
            "{m}"
        );
    }
}

/// Closing with operations in flight: clients that stop reading while a backend floods them,
/// then reset; half-sent HTTP heads; requests abandoned while the backend thinks; downloads
/// cut off mid-body (spliced). Nothing stays behind.
#[test]
fn closes_with_operations_in_flight_leak_nothing() {
    // TCP: the backend floods, the client never reads, then resets.
    let flood = Backend::source(64 * MIB, 7);
    let p = Proxy::start(&tcp_config(flood.addr));
    let fds = baseline(&p);
    let addr = p.addr("front");
    let mut clients = Vec::new();
    for _ in 0..20 {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        clients.push(c);
    }
    // Wait until bytes flow (the proxy's sends to the clients are stuck in flight).
    wait_until(Duration::from_secs(10), "the backend to write", || {
        flood.written() > 20 * 256 * KIB as u64
    });
    std::thread::sleep(Duration::from_millis(200));
    let st = p.stats();
    assert!(
        u64_at(&st, "/engine/ops_in_flight") > 0,
        "ops should be in flight: {st}"
    );
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            reset(c);
        } else {
            drop(c);
        }
    }
    assert_settles(&p, fds, "tcp clients gone mid-flood");
    drop(p);

    // TCP without splicing: the clients read nothing, so the proxy's sends to them stay in
    // flight until the idle timeout closes the sessions (the sends are cancelled).
    let flood = Backend::source(64 * MIB, 8);
    let p = Proxy::start(&format!(
        r#"[server]
workers = 1
buffers_per_worker = 256
splice_pipes_per_worker = 0

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"
idle_timeout = "1s"

[[clusters]]
name = "app"
backends = ["{}"]
"#,
        flood.addr
    ));
    let fds = baseline(&p);
    let addr = p.addr("front");
    let clients: Vec<TcpStream> = (0..20)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            socket2::SockRef::from(&c)
                .set_recv_buffer_size(4096)
                .unwrap();
            c
        })
        .collect();
    wait_until(Duration::from_secs(10), "sends in flight", || {
        u64_at(&p.stats(), "/engine/buffers_in_use") >= 20
    });
    let st = assert_settles(&p, fds, "idle timeouts with sends in flight");
    assert!(tcp_of(&st, "idle_timeouts") >= 20, "{st}");
    drop(clients);
    drop(p);

    // HTTP: a slow backend (requests in flight upstream), a demo backend for big bodies.
    let slow = fixed_backend("slow", 200, Duration::from_millis(800));
    let p = Proxy::start(&http_config(slow));
    let fds = baseline(&p);
    let web = p.addr("web");
    let mut held = Vec::new();
    for i in 0..30 {
        let mut c = TcpStream::connect(web).unwrap();
        if i % 3 == 0 {
            // Half a head: the proxy's receive holds a partial buffer.
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Part: ")
                .unwrap();
        } else {
            // A whole request: it waits upstream.
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        }
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, c) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            reset(c);
        } else {
            drop(c);
        }
    }
    assert_settles(&p, fds, "http clients gone with requests in flight");
    drop(p);

    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "d"],
        &["demo-backend"],
    );
    let p = Proxy::start(&http_config(demo.addr("demo-backend")));
    let fds = baseline(&p);
    let web = p.addr("web");
    for i in 0..12 {
        let mut c = TcpStream::connect(web).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(b"GET /bytes?n=8388608 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Read part of the body, then go away.
        let mut buf = vec![0u8; 256 * KIB];
        let mut got = 0;
        while got < 512 * KIB {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(got >= 512 * KIB, "download {i} stalled at {got}");
        if i % 2 == 0 {
            reset(c);
        } else {
            drop(c);
        }
    }
    let st = assert_settles(&p, fds, "downloads cut off mid-body");
    assert!(
        st["tcp"]["splice_starts"].as_u64().is_some(),
        "stats have splice counters: {st}"
    );
}

/// Backends that reset mid-request and clients that reset mid-stream.
#[test]
fn peer_resets_leak_nothing() {
    let rst = Backend::resetting(1000);
    let p = Proxy::start(&tcp_config(rst.addr));
    let fds = baseline(&p);
    let addr = p.addr("front");
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = c.write_all(&payload(3, 4096));
        let mut buf = [0u8; 64];
        // The backend's reset reaches the client as a reset or an end.
        let _ = c.read(&mut buf);
    }
    assert_settles(&p, fds, "backends resetting");
    drop(p);

    let echo = Backend::echo();
    let p = Proxy::start(&tcp_config(echo.addr));
    let fds = baseline(&p);
    let addr = p.addr("front");
    for i in 0..40 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(&payload(i, 300 * KIB)).unwrap();
        let mut buf = vec![0u8; 64 * KIB];
        let _ = c.read(&mut buf);
        reset(c);
    }
    assert_settles(&p, fds, "clients resetting mid-echo");
}

/// Thousands of connections opened and closed at once, in every manner.
#[test]
fn connection_storms_leak_nothing() {
    let echo = Backend::echo();
    let p = Proxy::start(&tcp_config(echo.addr));
    let fds = baseline(&p);
    let addr = p.addr("front");
    const THREADS: usize = 8;
    const EACH: usize = 250;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut ok = 0;
                for i in 0..EACH {
                    let Ok(mut c) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                    match (t + i) % 4 {
                        0 => drop(c),
                        1 => reset(c),
                        2 => {
                            let _ = c.write_all(b"ping");
                            let mut b = [0u8; 4];
                            if c.read_exact(&mut b).is_ok() && &b == b"ping" {
                                ok += 1;
                            }
                        }
                        _ => {
                            let _ = c.write_all(&[7u8; 20000]);
                            reset(c);
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let echoed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(echoed > THREADS * EACH / 4 / 2, "echoes: {echoed}");
    let st = assert_settles(&p, fds, "after the storm");
    assert_eq!(
        st["tcp"]["accepted"], st["tcp"]["closed"],
        "every accepted connection was closed: {st}"
    );
    assert!(p.try_wait().is_none());
}

/// Out of descriptors under a flood: the proxy pauses accepting and keeps serving; once the
/// flood is gone every descriptor, buffer and op is back.
#[test]
fn descriptor_exhaustion_leaks_nothing() {
    let echo = Backend::echo();
    let p = Proxy::start(&tcp_config(echo.addr));
    let fds = baseline(&p);
    let addr = p.addr("front");
    let limit = fds + 24;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &p.pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(status.success());
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Ok(c) = TcpStream::connect(addr) {
            flood.push(c);
        }
    }
    wait_until(Duration::from_secs(10), "descriptor exhaustion", || {
        tcp_of(&p.stats(), "accept_errors") > 0
    });
    // Some of the flood is served meanwhile.
    let mut served = 0;
    for c in flood.iter_mut().take(8) {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if c.write_all(b"x").is_ok() {
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                served += 1;
            }
        }
    }
    assert!(served > 0, "nothing served while descriptors ran out");
    for (i, c) in flood.into_iter().enumerate() {
        if i % 2 == 0 {
            reset(c);
        } else {
            drop(c);
        }
    }
    // Every waiting client, accepted late or never, is gone: the proxy settles.
    assert_settles(&p, fds, "after the flood");
    let mut c = connect(addr);
    echo_roundtrip(&mut c, b"after");
    drop(c);
    assert_settles(&p, fds, "after a last client");
}

/// `sqpoll = true`: a kernel thread polls the submission queue; traffic and shutdown work
/// the same.
#[test]
fn sqpoll_mode_serves_and_shuts_down() {
    let echo = Backend::echo();
    let p = Proxy::start_env(
        &simple_config("workers = 1\nsqpoll = true", "", &[echo.addr]),
        &[("SWITCHYARD_ENGINE", Some("io_uring"))],
    );
    wait_until(Duration::from_secs(5), "the start line", || {
        p.stderr_text().contains(" started: ")
    });
    let text = p.stderr_text();
    assert!(
        text.contains("engine=io_uring workers=1 io_uring_setup=sqpoll"),
        "{text}"
    );
    let res = echo_check(
        p.addr("front"),
        (0..8).map(|i| payload(i, 200 * KIB)).collect(),
        Duration::from_secs(20),
    );
    assert_all_echoed(&res);
    p.sigterm();
    let st = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(st.success(), "{st}");
}

/// A worker stall shows in `/stats` (`engine.loop_max_ms`, `engine.slow_turns`) and in
/// `/metrics`: the proxy is stopped (SIGSTOP, 200 ms) while its one worker is kept busy in user
/// space — three clients asking back to back for a path no route serves, each answered `404`
/// by the worker itself — so the loop turn it was in lasts at least that long. Only a stop
/// that lands in the worker's own code is held for 200 ms (its thread's `/proc/.../syscall`
/// says so); one that lands in a system call is released at once and tried again: on io_uring
/// most of a busy worker's time is in `io_uring_enter`, whose wait is not part of a turn.
#[test]
fn a_worker_stall_shows_as_a_slow_loop_turn() {
    use nix::sys::signal::Signal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let b = Backend::echo();
    let p = Proxy::start(&format!(
        r#"[server]
workers = 1

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[listeners.routes]]
path_prefix = "/app"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{}"]
"#,
        b.addr
    ));
    let admin = p.addr("admin");
    let web = p.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            spawn_small("busy-client", move || {
                // 16 pipelined requests per write; the answers are counted (a connection the
                // proxy closes after its local answer is opened again).
                let batch = "GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n".repeat(16);
                let mut answers = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let mut c = connect(web);
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut tail: Vec<u8> = Vec::new();
                    'conn: while !stop.load(Ordering::Relaxed) {
                        if c.write_all(batch.as_bytes()).is_err() {
                            break;
                        }
                        let mut seen = 0;
                        while seen < 16 {
                            match c.read(&mut buf) {
                                Ok(n) if n > 0 => {
                                    // A status line split between two reads counts once:
                                    // keep the last 11 bytes (one short of a status line).
                                    tail.extend_from_slice(&buf[..n]);
                                    let found =
                                        tail.windows(12).filter(|w| w == b"HTTP/1.1 404").count();
                                    seen += found;
                                    answers += found as u64;
                                    let keep = tail.len().saturating_sub(11);
                                    tail.drain(..keep);
                                }
                                _ => break 'conn,
                            }
                        }
                    }
                }
                answers
            })
        })
        .collect();
    let slow = |st: &Value| st["engine"]["slow_turns"].as_u64();
    let st = call(admin, "GET", "/stats", None).json();
    let before = slow(&st).unwrap_or_else(|| panic!("no engine.slow_turns: {st}"));
    assert!(st["engine"]["loop_max_ms"].as_f64().is_some(), "{st}");
    // The worker's thread; a stop counts only where it lands in the worker's own code: its
    // `syscall` file then says `-1` (stopped from user space, not at a system call's exit,
    // e.g. `io_uring_enter`'s, which ends the turn's wait rather than its work).
    let tid = std::fs::read_dir(format!("/proc/{}/task", p.pid))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "worker-0")
        })
        .map(|e| e.path())
        .expect("the worker-0 thread");
    let stopped = || {
        std::fs::read_to_string(tid.join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    let mut seen = None;
    let mut held = 0;
    let d = Deadline::after(Duration::from_secs(30));
    while seen.is_none() && held < 40 && !d.expired() {
        std::thread::sleep(Duration::from_millis(5));
        p.signal(Signal::SIGSTOP);
        wait_until(Duration::from_secs(5), "the worker stopped", stopped);
        // (Unreadable, e.g. under a stricter ptrace policy: every stop is held, as before.)
        let in_user =
            std::fs::read_to_string(tid.join("syscall")).map_or(true, |s| s.starts_with("-1"));
        if !in_user {
            p.signal(Signal::SIGCONT);
            continue;
        }
        held += 1;
        std::thread::sleep(Duration::from_millis(200));
        p.signal(Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(30));
        let st = call(admin, "GET", "/stats", None).json();
        if slow(&st).unwrap_or(0) > before {
            seen = Some(st);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let answers = join_timeout(c, Duration::from_secs(20), "a busy client");
        assert!(answers > 0, "a client got no answer");
    }
    let st = seen.unwrap_or_else(|| {
        panic!("{held} stops of 200 ms in the worker's code and no slow loop turn counted")
    });
    let max = st["engine"]["loop_max_ms"].as_f64().unwrap_or(0.0);
    assert!(
        max >= 150.0,
        "longest turn {max} ms after a 200 ms stop: {st}"
    );
    let m = call(admin, "GET", "/metrics", None).text();
    let line = m
        .lines()
        .find(|l| l.starts_with("switchyard_engine_slow_turns_total "))
        .unwrap_or_else(|| panic!("no switchyard_engine_slow_turns_total: {m}"));
    let n: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(n >= 1.0, "{line}");
    assert!(m.contains("switchyard_engine_loop_max_seconds "), "{m}");
}

/// Whether the proxy's io_uring ring gives back the pages of idle lent buffers (it runs with
/// `DEFER_TASKRUN`: the start line says so).
fn lent_buffers_cool(p: &Proxy) -> bool {
    p.stderr_text().contains("defer_taskrun")
}

/// Waits until no more than two pool buffers may hold memory (plus, where lent buffers keep
/// their pages, the lent ones); returns the stats then.
fn wait_buffers_cold(p: &Proxy) -> Value {
    let lent_cool = lent_buffers_cool(p);
    let mut last = Value::Null;
    wait_until(Duration::from_secs(15), "warm buffers given back", || {
        last = p.stats();
        let e = &last["engine"];
        let lent = if lent_cool {
            0
        } else {
            u64_at(e, "/buffers_provided")
        };
        u64_at(e, "/buffers_warm") <= lent + 2
    });
    last
}

/// A burst of uploads warms many pool buffers (each held full while its backend does not
/// read); once the proxy is idle again the worker's trim gives their pages back: the
/// `buffers_warm` gauge drops to what the engine keeps lent (io_uring's buffer ring after it
/// shrank back) and the process's RSS falls by at least half of the buffers' memory.
#[test]
fn an_idle_proxy_gives_back_the_buffer_memory_of_a_burst() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 48;
    const BUF: u64 = 16 * 1024;
    let release = Arc::new(AtomicBool::new(false));
    let hold = release.clone();
    // Takes the uploads' connections and reads nothing until told to let go.
    let backend = Backend::spawn(Arc::new(move |s: TcpStream, _: &BackendState| {
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4096);
        let d = Deadline::after(Duration::from_secs(30));
        while !hold.load(Ordering::SeqCst) && !d.expired() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }));
    let p = Proxy::start(&simple_config(
        "workers = 1\nbuffers_per_worker = 256\nbuffer_size = \"16KiB\"\nsplice_pipes_per_worker = 0",
        "connect_timeout = \"2s\"",
        &[backend.addr],
    ));
    baseline(&p);
    let addr = p.addr("front");
    let uploads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            spawn_small("upload", move || {
                let Ok(mut c) = TcpStream::connect(addr) else {
                    return;
                };
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                let chunk = payload(i as u64, 64 * 1024);
                // Until the socket stays full (the proxy holds a full buffer by then): up to
                // 16 MiB, more than the kernel's buffers between here and the backend can
                // take (the proxy's upstream send buffer alone grows to 4 MiB, `tcp_wmem`), or
                // the proxy could pass everything on and hold nothing.
                for _ in 0..256 {
                    if c.write_all(&chunk).is_err() {
                        break;
                    }
                }
                // Until the proxy closes the connection (the backend let go).
                let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                let d = Deadline::after(Duration::from_secs(30));
                let mut b = [0u8; 1];
                while !d.expired() {
                    match c.read(&mut b) {
                        Ok(0) => break,
                        Err(e)
                            if !matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            break
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    let d = Deadline::after(Duration::from_secs(20));
    loop {
        let st = p.stats();
        if u64_at(&st, "/engine/buffers_in_use") >= CLIENTS as u64 * 3 / 4 {
            break;
        }
        assert!(
            !d.expired(),
            "the uploads hold no buffers: {}",
            st["engine"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let peak_rss = p.rss_kib();
    let peak_warm = u64_at(&p.stats(), "/engine/buffers_warm");
    assert!(peak_warm >= CLIENTS as u64 * 3 / 4, "{}", p.stats());
    // The burst ends: the backend lets go, the proxy closes both sides.
    release.store(true, Ordering::SeqCst);
    for u in uploads {
        join_timeout(u, Duration::from_secs(40), "upload client");
    }
    wait_until(Duration::from_secs(15), "sessions closed", || {
        p.tcp("active") == 0
    });
    // Idle: the trim runs every second; what stayed unused for a whole interval goes.
    let last = wait_buffers_cold(&p);
    let warm = u64_at(&last["engine"], "/buffers_warm");
    let given_back_kib = (peak_warm - warm) * BUF / 1024;
    let idle_rss = p.rss_kib();
    assert!(
        idle_rss + given_back_kib / 2 <= peak_rss,
        "RSS {peak_rss} KiB with {peak_warm} warm buffers, {idle_rss} KiB idle with {warm}: \
         less than half of {given_back_kib} KiB given back ({last})"
    );
    assert!(p.try_wait().is_none());
}

/// The pages of the io_uring ring's lent buffers that no receive took for a whole trim
/// interval are given back while the buffers stay lent; receives that take them later (under
/// load, many at once) must get every byte. Three rounds of: 96 echo clients at once (the ring
/// grows), idle until no buffer holds memory (on io_uring with `DEFER_TASKRUN` that includes the
/// lent ones), checksummed echoes. On mio the same load and idle checks apply (nothing is lent).
#[test]
fn receives_into_lent_buffers_whose_pages_were_given_back_get_every_byte() {
    let backend = Backend::echo();
    let p = Proxy::start(&simple_config(
        "workers = 1\nbuffers_per_worker = 1024\nbuffer_size = \"16KiB\"",
        "",
        &[backend.addr],
    ));
    baseline(&p);
    let addr = p.addr("front");
    let lent_cool = lent_buffers_cool(&p);
    for round in 0..3u64 {
        let payloads: Vec<Vec<u8>> = (0..96)
            .map(|i| payload(round * 1000 + i, 48 * 1024 + i as usize * 97))
            .collect();
        echo_check_no_half_close(addr, payloads, Duration::from_secs(30));
        wait_until(Duration::from_secs(15), "sessions closed", || {
            p.tcp("active") == 0
        });
        let last = wait_buffers_cold(&p);
        if lent_cool {
            assert!(
                u64_at(&last, "/engine/buffers_provided") > 0,
                "lent buffers stay lent: {}",
                last["engine"]
            );
        }
    }
    assert!(
        !p.stderr_text().contains("taken outside an enter"),
        "{}",
        p.stderr_text()
    );
    assert!(p.try_wait().is_none());
}
