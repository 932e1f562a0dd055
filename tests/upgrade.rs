//! Zero-downtime binary upgrades, end to end: real processes, real clients (wrk, a Python
//! WebSocket client, a Foo connection), systemd's side played by a real `NOTIFY_SOCKET`.

mod util;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use util::client::call;
use util::sd::{alive, NotifySocket, Pids};
use util::*;

const WS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/ws_echo.py");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ws_server() -> (Kill, SocketAddr) {
    let mut server = Command::new("python3")
        .args([WS_SCRIPT, "server"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed for this test");
    let out = server.stdout.take().expect("stdout");
    let server = Kill(server);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("port");
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("ws server did not start (is `websockets` installed?): {line:?}")
        });
    (server, format!("127.0.0.1:{port}").parse().unwrap())
}

/// One long-lived WebSocket connection (the `websockets` library, through the proxy).
struct WsSession {
    _child: Kill,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl WsSession {
    fn open(url: &str) -> WsSession {
        let mut child = Command::new("python3")
            .args([WS_SCRIPT, "session", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        spawn_small("ws-session", move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let s = WsSession {
            _child: Kill(child),
            stdin,
            lines,
        };
        let first = s.lines.recv_timeout(Duration::from_secs(10));
        assert_eq!(first.as_deref(), Ok("open"), "websocket did not open");
        s
    }

    fn echo(&mut self, msg: &str) {
        let stdin = self.stdin.as_mut().expect("open");
        writeln!(stdin, "{msg}").expect("write to the ws client");
        stdin.flush().unwrap();
        let got = self.lines.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(format!("echo {msg}")), "websocket echo");
    }

    fn close(mut self) {
        drop(self.stdin.take());
        let got = self.lines.recv_timeout(Duration::from_secs(10));
        assert_eq!(got.as_deref(), Ok("closed"));
    }
}

/// A Foo line round trip on an open connection (the backend echoes).
fn foo_roundtrip(s: &mut TcpStream, n: u32) {
    let msg = format!("REQ {n} hello\n");
    s.write_all(msg.as_bytes()).unwrap();
    assert_eq!(read_line(s), msg.trim_end(), "Foo connection");
}

struct Wrk {
    child: Child,
}

impl Wrk {
    fn start(url: &str, conns: u32, secs: u32) -> Wrk {
        let child = Command::new("wrk")
            .args(["-t2", &format!("-c{conns}"), &format!("-d{secs}s"), url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk is needed for this test (.ci/run installs it)");
        Wrk { child }
    }

    /// Waits for wrk; returns (completed requests, its report). Panics on any failure.
    fn finish_clean(mut self, within: Duration) -> (u64, String) {
        let d = Deadline::after(within);
        while self.child.try_wait().unwrap().is_none() {
            if d.expired() {
                let _ = self.child.kill();
                panic!("wrk did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut text).unwrap();
        assert!(!text.contains("Non-2xx"), "{text}");
        assert!(!text.contains("Socket errors"), "{text}");
        let requests: u64 = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (requests, text)
    }
}

fn ctl(args: &[&str]) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    run_to_exit(args, dir.path(), Duration::from_secs(60))
}

/// `upgraded: process A -> B` → (A, B).
fn upgraded(f: &Finished) -> (i32, i32) {
    assert!(
        f.status.success(),
        "upgrade failed ({}): {}{}",
        f.status,
        f.stdout,
        f.stderr
    );
    let rest = f
        .stdout
        .trim()
        .strip_prefix("upgraded: process ")
        .unwrap_or_else(|| panic!("{:?}", f.stdout));
    let (a, b) = rest.split_once(" -> ").expect("A -> B");
    (a.parse().unwrap(), b.parse().unwrap())
}

fn start(
    program: &std::ffi::OsStr,
    dir: tempfile::TempDir,
    config: &str,
    env: &[(&str, OsString)],
) -> Proxy {
    util::sd::start_run(program, dir, config, env)
}

/// Two workers and one http listener `web` in front of `demo`; `server`: more `[server]` lines.
fn web_config(server: &str, demo: SocketAddr) -> String {
    format!(
        r#"[server]
workers = 2
{server}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{demo}"]
"#
    )
}

#[test]
fn ten_upgrades_under_load_drop_nothing_and_long_connections_stay_on_the_old_process() {
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "d1"],
        &["demo-backend"],
    );
    let foo = Backend::echo();
    let (_ws, ws_backend) = ws_server();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = format!(
        r#"[server]
workers = 2
admin = "127.0.0.1:0"
runtime_dir = "{run}"
state_dir = "{state}"
shutdown_timeout = "120s"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[listeners]]
name = "foo"
bind = "127.0.0.1:0"
protocol = "foo"
cluster = "foo"

[[listeners]]
name = "ws"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "ws"

[[clusters]]
name = "app"
backends = ["{demo}"]

[[clusters]]
name = "foo"
backends = ["{foo}"]

[[clusters]]
name = "ws"
backends = ["{ws_backend}"]
"#,
        run = run.display(),
        state = dir.path().join("state").display(),
        demo = demo.addr("demo-backend"),
        foo = foo.addr,
    );
    let notify = NotifySocket::abstract_socket();
    let p0 = start(BIN.as_ref(), dir, &config, &[notify.env()]);
    let mut pids = Pids::default();
    notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));
    let (web, admin) = (p0.addr("web"), p0.addr("admin"));
    let socket = run.join("switchyard.sock");
    let socket = socket.to_str().unwrap();

    // A listener added at run time (persisted in state_dir) is handed over like the others.
    let r = call(
        admin,
        "PUT",
        "/v1/listeners/side",
        Some(r#"{"bind":"127.0.0.1:0","protocol":"http","cluster":"app"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let side: SocketAddr = call(admin, "GET", "/v1/listeners/side", None).json()["status"]
        ["local_addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("side's address");

    // Long-lived connections, opened before the first upgrade.
    let mut foo_conn = connect(p0.addr("foo"));
    foo_roundtrip(&mut foo_conn, 0);
    let mut ws = WsSession::open(&format!("ws://{}/chat", p0.addr("ws")));
    ws.echo("before");

    let wrk = Wrk::start(&format!("http://{web}/"), 16, 18);
    std::thread::sleep(Duration::from_millis(1000));
    let mut main = p0.pid;
    let mut generations = vec![p0.pid];
    for i in 0..10 {
        let from = notify.len();
        // Alternately through the control socket and the admin API.
        let f = if i % 2 == 0 {
            ctl(&["ctl", "--socket", socket, "upgrade"])
        } else {
            ctl(&["ctl", "--admin", &admin.to_string(), "upgrade"])
        };
        let (old, new) = upgraded(&f);
        pids.add(new);
        assert_eq!(old, main, "upgrade {i} was answered by the main process");
        // The old main process hands the service over: MAINPID=<new> with READY=1.
        let (_, n) = notify.wait_for(from, Duration::from_secs(10), "MAINPID=", |n| {
            n.get("MAINPID").is_some()
        });
        assert_eq!(n.get("MAINPID"), Some(new.to_string().as_str()), "{n:?}");
        assert!(n.has("READY=1"), "{n:?}");
        // NotifyAccess=main: the hand-over comes from the main process itself.
        assert_eq!(n.pid, old, "MAINPID= sent by the old main process: {n:?}");
        generations.push(new);
        main = new;
        // The previous process (not the first: it holds the long-lived connections) drains
        // the wrk connections and exits.
        if old != p0.pid {
            wait_until(
                Duration::from_secs(20),
                "the old process to drain and exit",
                || !alive(old),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (requests, report) = wrk.finish_clean(Duration::from_secs(60));
    assert!(requests > 1000, "{report}");
    eprintln!("ten upgrades under load: {report}");

    // Under NotifyAccess=main, every notification must come from the process that is main
    // when it is sent: a successor is silent until its MAINPID=, a predecessor after it.
    let all = notify.all();
    let mut current = p0.pid;
    for n in &all {
        assert_eq!(
            n.pid, current,
            "notification from a non-main process: {n:?}"
        );
        if let Some(m) = n.get("MAINPID") {
            current = m.parse().unwrap();
        }
    }

    // The long-lived connections still work, on the first process.
    foo_roundtrip(&mut foo_conn, 1);
    ws.echo("after ten upgrades");
    assert!(
        alive(p0.pid),
        "the first process serves its long-lived connections"
    );
    for &g in &generations[1..10] {
        assert!(!alive(g), "process {g} drained and exited");
    }
    assert_eq!(
        foo.accepted(),
        1,
        "the Foo connection was never re-established"
    );
    assert!(alive(main));

    // Closing them lets the first process finish and exit.
    ws.close();
    drop(foo_conn);
    wait_until(Duration::from_secs(20), "the first process to exit", || {
        p0.try_wait().is_some()
    });
    assert!(p0.try_wait().unwrap().success());

    // The stats totals came along, including what each old process counted while it drained
    // (the first one's arrive through the control socket, ten upgrades later): the newest
    // process counts every request wrk made and the long-lived Foo connection, now closed.
    let stats = poll_until(Duration::from_secs(10), "the carried totals", || {
        let s = call(admin, "GET", "/stats", None).json();
        let n = u64_at(&s, "/http/requests");
        let foo_closed = u64_at(&s, "/listeners/foo/closed");
        (n >= requests && foo_closed == 1).then_some(s)
    });
    assert_eq!(
        stats["process"]["pid"].as_i64(),
        Some(main as i64),
        "{stats}"
    );
    assert_eq!(stats["listeners"]["foo"]["connections"].as_u64(), Some(1));
    // The newest one carries on, on the same sockets (the run-time listener too), and stops
    // cleanly.
    for addr in [web, side] {
        let r = call(addr, "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "d1"), "{addr}");
    }
    let listed = call(admin, "GET", "/v1/listeners/side", None).json();
    assert_eq!(
        listed["status"]["local_addr"].as_str(),
        Some(side.to_string().as_str())
    );
    let from = notify.len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notify.wait_for(from, Duration::from_secs(10), "STOPPING=1", |n| {
        n.has("STOPPING=1")
    });
    wait_until(
        Duration::from_secs(20),
        "the newest process to exit",
        || !alive(main),
    );
}

#[test]
fn failed_upgrades_leave_the_old_process_serving() {
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "d1"],
        &["demo-backend"],
    );
    let dir = tempfile::tempdir().unwrap();
    // A copy of the binary that the test can break: upgrades start the path the process was
    // started from.
    let exe = dir.path().join("switchyard");
    std::fs::copy(BIN, &exe).unwrap();
    let run = dir.path().join("run");
    let config = web_config(
        &format!(
            "admin = \"127.0.0.1:0\"\nruntime_dir = \"{}\"\nupgrade_timeout = \"2s\"",
            run.display()
        ),
        demo.addr("demo-backend"),
    );
    let notify = NotifySocket::abstract_socket();
    let p = start(exe.as_os_str(), dir, &config, &[notify.env()]);
    let mut pids = Pids::default();
    notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));
    let socket = run.join("switchyard.sock");
    let socket = socket.to_str().unwrap().to_string();
    let config_path = p.config_path.clone().unwrap();
    let wrk = Wrk::start(&format!("http://{}/", p.addr("web")), 8, 9);
    std::thread::sleep(Duration::from_millis(500));

    let script = |body: &str| {
        std::fs::remove_file(&exe).ok();
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Breakage<'_>> = vec![
        (
            "missing binary",
            Box::new(|| std::fs::remove_file(&exe).unwrap()),
            "cannot start",
        ),
        (
            "a binary that exits at once",
            Box::new(|| script("exit 3")),
            "exited with status 3",
        ),
        (
            "a bad config",
            Box::new(|| {
                std::fs::remove_file(&exe).ok();
                std::fs::copy(BIN, &exe).unwrap();
                let c = std::fs::read_to_string(&config_path).unwrap();
                std::fs::write(
                    &config_path,
                    c.replace("protocol = \"http\"", "protocol = 1"),
                )
                .unwrap();
            }),
            "exited with status 64",
        ),
        (
            "a binary that never reports ready",
            Box::new(|| {
                std::fs::write(&config_path, &config).unwrap();
                script("exec sleep 30");
            }),
            "did not report ready within 2s",
        ),
    ];
    for (what, breakage, expect) in &cases {
        breakage();
        let from = notify.len();
        let f = ctl(&["ctl", "--socket", &socket, "upgrade"]);
        assert_eq!(
            f.status.code(),
            Some(70),
            "{what}: {}{}",
            f.stdout,
            f.stderr
        );
        assert!(f.stderr.contains(expect), "{what}: {}", f.stderr);
        let (_, n) = notify.wait_for(
            from,
            Duration::from_secs(10),
            "STATUS=upgrade failed",
            |n| {
                n.get("STATUS")
                    .is_some_and(|s| s.contains("upgrade failed"))
            },
        );
        assert!(n.get("STATUS").unwrap().contains(expect), "{what}: {n:?}");
        assert!(
            !notify.all()[from..]
                .iter()
                .any(|n| n.get("MAINPID").is_some()),
            "{what}: no hand-over"
        );
        assert!(p.try_wait().is_none(), "{what}: the old process still runs");
        // The control plane is usable again.
        let r = call(p.addr("admin"), "POST", "/v1/reload", None);
        assert_eq!(
            r.status,
            if *what == "a bad config" { 422 } else { 200 },
            "{what}: {}",
            r.text()
        );
        assert!(p
            .stderr_text()
            .contains("upgrade failed, this process keeps serving"));
    }
    let (requests, report) = wrk.finish_clean(Duration::from_secs(60));
    assert!(requests > 100, "{report}");

    // Fixed again: the upgrade goes through.
    std::fs::remove_file(&exe).ok();
    std::fs::copy(BIN, &exe).unwrap();
    let f = ctl(&["ctl", "--socket", &socket, "upgrade"]);
    let (old, new) = upgraded(&f);
    pids.add(new);
    assert_eq!(old, p.pid);
    wait_until(Duration::from_secs(20), "the old process to exit", || {
        p.try_wait().is_some()
    });
    let r = call(p.addr("web"), "GET", "/", None);
    assert_eq!(r.status, 200);
}

#[test]
fn upgrade_with_the_admin_api_off_goes_through_the_control_socket() {
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "d1"],
        &["demo-backend"],
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = web_config(
        &format!("admin = \"off\"\nruntime_dir = \"{}\"", run.display()),
        demo.addr("demo-backend"),
    );
    let notify = NotifySocket::abstract_socket();
    let p = start(BIN.as_ref(), dir, &config, &[notify.env()]);
    let mut pids = Pids::default();
    notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));
    assert!(
        !p.stderr_text().contains("name=admin"),
        "the admin API is off: {}",
        p.stderr_text()
    );
    let web = p.addr("web");
    let config_path = p.config_path.clone().unwrap();
    let config_path = config_path.to_str().unwrap();
    let wrk = Wrk::start(&format!("http://{web}/"), 8, 8);
    std::thread::sleep(Duration::from_millis(500));
    let mut main = p.pid;
    // Twice: the successor, started from the same config, has its control socket too.
    for i in 0..2 {
        let from = notify.len();
        // No --socket and no admin address: `ctl -c` finds the control socket in the
        // config's runtime_dir because the config turns the admin API off.
        let f = ctl(&["ctl", "-c", config_path, "upgrade"]);
        let (old, new) = upgraded(&f);
        pids.add(new);
        assert_eq!(old, main, "upgrade {i} was answered by the main process");
        let (_, n) = notify.wait_for(from, Duration::from_secs(10), "MAINPID=", |n| {
            n.get("MAINPID").is_some()
        });
        assert_eq!(n.get("MAINPID"), Some(new.to_string().as_str()), "{n:?}");
        assert!(n.has("READY=1"), "{n:?}");
        assert_eq!(n.pid, old, "MAINPID= sent by the old main process: {n:?}");
        wait_until(
            Duration::from_secs(20),
            "the old process to drain and exit",
            || !alive(old) || (old == p.pid && p.try_wait().is_some()),
        );
        main = new;
    }
    let (requests, report) = wrk.finish_clean(Duration::from_secs(60));
    assert!(requests > 100, "{report}");
    let r = call(web, "GET", "/", None);
    assert_eq!((r.status, r.text().trim()), (200, "d1"));
    let from = notify.len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notify.wait_for(from, Duration::from_secs(10), "STOPPING=1", |n| {
        n.has("STOPPING=1")
    });
    wait_until(
        Duration::from_secs(20),
        "the newest process to exit",
        || !alive(main),
    );
}
