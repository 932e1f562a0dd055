//! Logs as operators handle them: logrotate-style rotation (rename, then SIGUSR1 or SIGHUP)
//! loses no line and new lines go to the new file; `access_log` and `log_level` change on
//! reload; the combined format; journald priority prefixes; a bad SWITCHYARD_LOG is warned
//! about; the start line.
mod util;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::client::{call, Client};
use util::*;

fn demo() -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "b"],
        &["demo-backend"],
    )
}

fn config(backend: SocketAddr, server_extra: &str) -> String {
    format!(
        "[server]\nworkers = 2\n{server_extra}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n[[clusters]]\nname = \"app\"\nbackends = [\"{backend}\"]\n"
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sends `n` requests tagged `/tag/i` and returns when all are answered.
fn send(web: SocketAddr, tag: &str, n: usize) {
    let mut c = Client::new(web);
    for i in 0..n {
        let r = c
            .request("GET", &format!("/?{tag}/{i}"), &[], None)
            .expect("request");
        assert_eq!(r.status, 200);
    }
}

fn paths_of(ls: &[String]) -> Vec<String> {
    ls.iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            v["path"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

fn rotate_with(sig: Signal) {
    let b = demo();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = Proxy::start(&config(
        b.addr("demo-backend"),
        &format!("access_log = {:?}", log.display().to_string()),
    ));
    let web = p.addr("web");
    send(web, "before", 50);
    // logrotate: rename, then signal; requests keep coming in between.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    send(web, "between", 20);
    p.signal(sig);
    wait_until(Duration::from_secs(5), "the new file", || log.exists());
    send(web, "after", 30);
    let all = poll_until(Duration::from_secs(5), "100 lines in the two files", || {
        let (old, new) = (lines(&rotated), lines(&log));
        (old.len() + new.len() >= 100).then_some((old, new))
    });
    let (old, new) = all;
    let (old, new) = (paths_of(&old), paths_of(&new));
    assert_eq!(old.len() + new.len(), 100, "no line lost or doubled");
    assert!(old.iter().all(|p| !p.starts_with("/?after/")), "{old:?}");
    assert!(new.iter().all(|p| !p.starts_with("/?before/")), "{new:?}");
    assert_eq!(
        new.iter().filter(|p| p.starts_with("/?after/")).count(),
        30,
        "{new:?}"
    );
    assert!(p.stderr_text().contains("access log reopened"));
}

#[test]
fn logrotate_with_sigusr1_loses_no_line() {
    rotate_with(Signal::SIGUSR1);
}

#[test]
fn logrotate_with_sighup_loses_no_line() {
    rotate_with(Signal::SIGHUP);
}

/// A request whose head arrived while the access log was off, and which ends after a reload
/// turned it on, is not logged half-filled (an empty path): only requests that began with the
/// log on are written.
#[test]
fn a_request_begun_before_the_log_was_turned_on_is_not_logged_half_filled() {
    use std::io::{Read, Write};
    let b = demo();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = Proxy::start(&config(b.addr("demo-backend"), ""));
    let path = p.config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut c = std::net::TcpStream::connect(p.addr("web")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /?begun-off HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(
        &path,
        text.replace(
            "[server]\n",
            &format!("[server]\naccess_log = {:?}\n", log.display().to_string()),
        ),
    )
    .unwrap();
    assert_eq!(
        call(p.addr("admin"), "POST", "/v1/reload", None).status,
        200
    );
    wait_until(Duration::from_secs(5), "the log on", || {
        p.stderr_text().contains("access log: ") && log.exists()
    });
    c.write_all(b"cd").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = c.read(&mut buf).expect("the first response");
        assert!(n > 0, "closed before the first response");
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    send(p.addr("web"), "begun-on", 1);
    wait_until(Duration::from_secs(5), "one line", || {
        !lines(&log).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        paths_of(&lines(&log)),
        vec!["/?begun-on/0".to_string()],
        "{:?}",
        lines(&log)
    );
}

#[test]
fn access_log_and_log_level_change_on_reload() {
    let b = demo();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.log");
    let second = dir.path().join("second.log");
    let p = Proxy::start(&config(b.addr("demo-backend"), ""));
    let path = p.config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let web = p.addr("web");
    let admin = p.addr("admin");
    send(web, "off", 5);
    // On, JSON.
    std::fs::write(
        &path,
        text.replace(
            "[server]\n",
            &format!("[server]\naccess_log = {:?}\n", first.display().to_string()),
        ),
    )
    .unwrap();
    assert_eq!(call(admin, "POST", "/v1/reload", None).status, 200);
    send(web, "json", 5);
    wait_until(Duration::from_secs(15), "5 JSON lines", || {
        lines(&first).len() == 5
    });
    let v: Value = serde_json::from_str(&lines(&first)[0]).unwrap();
    assert_eq!(v["path"], "/?json/0");
    assert_eq!(v["listener"], "web");
    assert_eq!(v["cluster"], "app");
    assert!(
        v["request_id"].as_str().is_some_and(|s| s.len() == 16),
        "{v}"
    );
    assert!(v["first_byte_ms"].as_f64().is_some(), "{v}");
    assert!(v["connect_ms"].as_f64().is_some(), "{v}");
    // Moved, combined format, and a quieter log level.
    std::fs::write(
        &path,
        text.replace(
            "[server]\n",
            &format!(
                "[server]\nlog_level = \"warn\"\naccess_log = {{ path = {:?}, format = \"combined\" }}\n",
                second.display().to_string()
            ),
        ),
    )
    .unwrap();
    p.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "reload", || {
        p.stderr_text().contains("access log: ") && second.exists()
    });
    send(web, "combined", 3);
    wait_until(Duration::from_secs(5), "3 combined lines", || {
        lines(&second).len() == 3
    });
    let l = &lines(&second)[0];
    assert!(
        l.starts_with("127.0.0.1 - - [") && l.contains("\"GET /?combined/0 HTTP/1.1\" 200 "),
        "{l}"
    );
    assert_eq!(lines(&first).len(), 5, "the old file gets nothing more");
    // log_level = warn: the next SIGUSR1's info line is not written.
    let before = p.stderr_lines().len();
    p.signal(Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    let after = p.stderr_lines();
    assert!(
        !after[before..].iter().any(|l| l.contains("SIGUSR1")),
        "{after:?}"
    );
    // Off again.
    std::fs::write(&path, &text).unwrap();
    assert_eq!(call(admin, "POST", "/v1/reload", None).status, 200);
    send(web, "off-again", 3);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(lines(&second).len(), 3);
}

#[test]
fn start_line_names_version_config_engine_and_workers() {
    let b = demo();
    let p = Proxy::start(&config(b.addr("demo-backend"), ""));
    let path = p.config_path.clone().unwrap();
    // Logged once the workers run, just after the listeners are announced.
    wait_until(Duration::from_secs(5), "the start line", || {
        p.stderr_text().contains(" started: ")
    });
    let text = p.stderr_text();
    let line = text
        .lines()
        .find(|l| l.contains(" started: "))
        .expect("start line");
    assert!(line.contains(&format!("switchyard {}", env!("CARGO_PKG_VERSION"))));
    assert!(
        line.contains(&format!("config={}", path.display())),
        "{line}"
    );
    let engine = match util::engine_under_test() {
        Some(e) => format!("engine={e} "),
        // `auto`: whichever the kernel allows.
        None => "engine=".to_string(),
    };
    assert!(
        line.contains(&engine) && line.contains("workers=2"),
        "{line}"
    );
}

/// Runs `switchyard run` with `env` until its admin listener is announced, then stops it;
/// returns its stderr lines.
fn stderr_of_run(config: &str, env: &[(&str, &str)], stderr_file: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, with_test_admin(config).0).unwrap();
    let err = std::fs::File::create(stderr_file).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(&cfg)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    // At level warn there is no start line: give it the time a start takes instead.
    let d = Deadline::after(Duration::from_secs(10));
    let quiet = env
        .iter()
        .any(|(k, v)| *k == "SWITCHYARD_LOG" && *v == "warn");
    if quiet {
        std::thread::sleep(Duration::from_millis(1500));
    }
    while !quiet
        && !d.expired()
        && !std::fs::read_to_string(stderr_file)
            .unwrap_or_default()
            .contains("started")
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let _ = child.wait();
    lines(stderr_file)
}

#[test]
fn journald_priority_prefixes_when_journal_stream_is_stderr() {
    use std::os::unix::fs::MetadataExt;
    let b = demo();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stderr");
    std::fs::write(&file, "").unwrap();
    let m = std::fs::metadata(&file).unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    let cfg = config(b.addr("demo-backend"), "");
    let got = stderr_of_run(&cfg, &[("JOURNAL_STREAM", &stream)], &file);
    assert!(
        got.iter().any(|l| l.starts_with("<6>listening name=web")),
        "{got:?}"
    );
    assert!(got.iter().all(|l| l.starts_with('<')), "{got:?}");
    // Another stream (stderr redirected elsewhere): plain lines.
    let other = dir.path().join("stderr2");
    let got = stderr_of_run(&cfg, &[("JOURNAL_STREAM", &stream)], &other);
    assert!(
        got.iter().any(|l| l.contains(" INFO listening name=web")),
        "{got:?}"
    );
}

#[test]
fn bad_switchyard_log_is_warned_about() {
    let b = demo();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(b.addr("demo-backend"), "");
    let got = stderr_of_run(&cfg, &[("SWITCHYARD_LOG", "loud")], &dir.path().join("e"));
    assert!(
        got.iter()
            .any(|l| l.contains("WARN SWITCHYARD_LOG=\"loud\" is not a log level")),
        "{got:?}"
    );
    let got = stderr_of_run(&cfg, &[("SWITCHYARD_LOG", "warn")], &dir.path().join("f"));
    assert!(!got.iter().any(|l| l.contains(" INFO ")), "{got:?}");
}

/// A backend that accepts and never answers: the 504's access-log line still names it.
#[test]
fn access_log_names_the_backend_of_a_504() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\naccess_log = {:?}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n[[clusters]]\nname = \"app\"\nbackends = [\"{addr}\"]\n\
         first_byte_timeout = \"200ms\"\nretries = 0\n",
        log.display().to_string()
    ));
    let r = call(p.addr("web"), "GET", "/slow", None);
    assert_eq!(r.status, 504);
    wait_until(Duration::from_secs(5), "one line", || {
        lines(&log).len() == 1
    });
    let v: Value = serde_json::from_str(&lines(&log)[0]).unwrap();
    assert_eq!(v["status"], 504, "{v}");
    assert_eq!(v["backend"], addr.to_string(), "{v}");
    assert_eq!(v["cluster"], "app", "{v}");
    assert!(v["first_byte_ms"].is_null(), "{v}");
    drop(silent);
}

/// A reload whose file changed an object that was also changed through the API takes the
/// file's definition, and says so for each runtime change it drops (what, old → new).
#[test]
fn reload_logs_each_runtime_change_it_overrides() {
    let b = demo();
    let a1 = b.addr("demo-backend");
    let p = Proxy::start(&config(a1, ""));
    let admin = p.addr("admin");
    let path = p.config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let r = call(
        admin,
        "POST",
        "/v1/clusters/app/backends",
        Some("{\"addr\":\"127.0.0.1:9\",\"weight\":2}"),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    std::fs::write(
        &path,
        text.replace("name = \"app\"\n", "name = \"app\"\nretries = 1\n"),
    )
    .unwrap();
    let r = call(admin, "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    // The log lines reach the test through a reader thread: wait for the last one.
    wait_until(Duration::from_secs(10), "the override lines", || {
        p.stderr_text().contains("retries: (unset) → 1")
    });
    let log = p.stderr_text();
    assert!(
        log.contains("reload overrides a runtime change: cluster app: backend 127.0.0.1:9 dropped"),
        "{log}"
    );
    assert!(
        log.contains("reload overrides a runtime change: cluster app: retries: (unset) → 1"),
        "{log}"
    );
}

/// One request with the given Host header on its own connection; the response's status.
fn get_with_host(addr: SocketAddr, host: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// The access log names the matched route (its index in the listener; none for the
/// fallback) and the Host, and names the backend of a 502 whose backend read the request and
/// reset the connection without answering.
#[test]
fn access_log_names_route_host_and_the_backend_of_a_502() {
    let b = demo();
    let breaker = Backend::spawn(std::sync::Arc::new(
        |mut s: std::net::TcpStream, _: &BackendState| {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        },
    ));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\naccess_log = {:?}\n\
         [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\
         [[listeners.routes]]\nhost = \"api.example.com\"\ncluster = \"app\"\n\
         [[listeners.routes]]\npath_prefix = \"/broken\"\ncluster = \"broken\"\n\
         [[clusters]]\nname = \"app\"\nbackends = [\"{}\"]\n\
         [[clusters]]\nname = \"broken\"\nbackends = [\"{}\"]\nretries = 0\n",
        log.display().to_string(),
        b.addr("demo-backend"),
        breaker.addr
    ));
    let web = p.addr("web");
    assert_eq!(get_with_host(web, "api.example.com", "/?a"), 200);
    assert_eq!(get_with_host(web, "www.example.com", "/broken/x"), 502);
    assert_eq!(get_with_host(web, "www.example.com", "/?other"), 200);
    let ls = poll_until(Duration::from_secs(15), "three lines", || {
        let l = lines(&log);
        (l.len() >= 3).then_some(l)
    });
    assert_eq!(ls.len(), 3, "{ls:?}");
    let v: Vec<Value> = ls
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(v[0]["route"], 0, "{}", v[0]);
    assert_eq!(v[0]["host"], "api.example.com", "{}", v[0]);
    assert_eq!(v[0]["cluster"], "app", "{}", v[0]);
    assert_eq!(
        v[0]["backend"],
        b.addr("demo-backend").to_string(),
        "{}",
        v[0]
    );
    assert_eq!(v[1]["route"], 1, "{}", v[1]);
    assert_eq!(v[1]["host"], "www.example.com", "{}", v[1]);
    assert_eq!(v[1]["status"], 502, "{}", v[1]);
    assert_eq!(v[1]["cluster"], "broken", "{}", v[1]);
    assert_eq!(v[1]["backend"], breaker.addr.to_string(), "{}", v[1]);
    assert!(v[1]["first_byte_ms"].is_null(), "{}", v[1]);
    assert!(
        v[2]["route"].is_null(),
        "the fallback is no route: {}",
        v[2]
    );
    assert_eq!(v[2]["cluster"], "app", "{}", v[2]);
    assert!(breaker.accepted() >= 1);
}

fn tcp_config(backend: SocketAddr, dead: SocketAddr, server_extra: &str) -> String {
    format!(
        "[server]\nworkers = 2\n{server_extra}\n\
         [[listeners]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\ncluster = \"pg\"\n\
         [[listeners]]\nname = \"gone\"\nbind = \"127.0.0.1:0\"\ncluster = \"dead\"\n\
         [[clusters]]\nname = \"pg\"\nbackends = [\"{backend}\"]\n\
         [[clusters]]\nname = \"dead\"\nbackends = [\"{dead}\"]\n"
    )
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Sends `n` bytes to the `id` backend through `addr`, reads its 2-byte greeting, then
/// closes (`reset`: with an RST). Returns the client's own address.
fn tcp_exchange(addr: SocketAddr, n: usize, reset: bool) -> SocketAddr {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(&vec![b'x'; n]).unwrap();
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"b\n");
    if reset {
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    } else {
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
    }
    me
}

fn json_lines(p: &Path, n: usize) -> Vec<Value> {
    let ls = poll_until(Duration::from_secs(15), &format!("{n} lines"), || {
        let l = lines(p);
        (l.len() >= n).then_some(l)
    });
    assert_eq!(ls.len(), n, "{ls:?}");
    ls.iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// `connection_log`: one line per closed TCP connection with its time, listener, client,
/// cluster, backend, bytes each way, duration and close reason.
#[test]
fn connection_log_has_one_line_per_closed_tcp_connection() {
    let backend = Backend::id("b");
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("conn.log");
    let access = dir.path().join("access.log");
    let p = Proxy::start(&tcp_config(
        backend.addr,
        dead,
        &format!(
            "connection_log = {:?}\naccess_log = {:?}",
            log.display().to_string(),
            access.display().to_string()
        ),
    ));
    let db = p.addr("db");
    let started = std::time::SystemTime::now();
    let clean = tcp_exchange(db, 1000, false);
    let v = json_lines(&log, 1);
    let l = &v[0];
    assert_eq!(l["listener"], "db", "{l}");
    assert_eq!(l["client"], clean.to_string(), "{l}");
    assert_eq!(l["cluster"], "pg", "{l}");
    assert_eq!(l["backend"], backend.addr.to_string(), "{l}");
    assert_eq!(l["bytes_client_to_backend"], 1000, "{l}");
    assert_eq!(l["bytes_backend_to_client"], 2, "{l}");
    assert_eq!(l["reason"], "done", "{l}");
    let ms = l["duration_ms"].as_f64().expect("duration_ms");
    assert!(ms > 0.0 && ms < 15_000.0, "{l}");
    let t = humantime::parse_rfc3339(l["time"].as_str().expect("time")).expect("RFC 3339 time");
    let skew = |a: std::time::SystemTime, b: std::time::SystemTime| {
        a.duration_since(b).unwrap_or_else(|e| e.duration())
    };
    assert!(skew(t, started) < Duration::from_secs(30), "{l}");

    let reset = tcp_exchange(db, 10, true);
    let v = json_lines(&log, 2);
    assert_eq!(v[1]["client"], reset.to_string(), "{}", v[1]);
    assert_eq!(v[1]["reason"], "client_reset", "{}", v[1]);
    assert_eq!(v[1]["bytes_client_to_backend"], 10, "{}", v[1]);

    // No backend answers: the line names the one tried.
    let mut s = std::net::TcpStream::connect(p.addr("gone")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    let v = json_lines(&log, 3);
    assert_eq!(v[2]["listener"], "gone", "{}", v[2]);
    assert_eq!(v[2]["reason"], "no_backend", "{}", v[2]);
    assert_eq!(v[2]["backend"], dead.to_string(), "{}", v[2]);
    assert_eq!(v[2]["bytes_backend_to_client"], 0, "{}", v[2]);
    // TCP connections are not HTTP requests.
    assert!(lines(&access).is_empty());
    assert_eq!(tcp_of(&p.stats(), "connection_log_dropped"), 0);
}

/// The connection log rotates like the access log (rename, SIGUSR1: new lines in the new
/// file, none lost), and a reload switches it to the text format elsewhere, then off.
#[test]
fn connection_log_rotates_and_changes_on_reload() {
    let backend = Backend::id("b");
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("conn.log");
    let text_log = dir.path().join("conn.txt");
    let p = Proxy::start(&tcp_config(backend.addr, dead, ""));
    let path = p.config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let db = p.addr("db");
    tcp_exchange(db, 5, false);
    // Off by default: nothing written anywhere.
    assert!(!log.exists());
    let with = |extra: String| text.replace("[server]\n", &format!("[server]\n{extra}\n"));
    std::fs::write(
        &path,
        with(format!("connection_log = {:?}", log.display().to_string())),
    )
    .unwrap();
    p.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(15), "the log", || log.exists());
    for _ in 0..3 {
        tcp_exchange(db, 7, false);
    }
    json_lines(&log, 3);
    let rotated = dir.path().join("conn.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    tcp_exchange(db, 8, false);
    // The proxy logs a connection when it has closed both sides, which may be just after the
    // client saw its answer: wait for that line (in the renamed file, still the open one)
    // before the reopen, or it would rightly go to the new file.
    json_lines(&rotated, 4);
    p.signal(Signal::SIGUSR1);
    wait_until(Duration::from_secs(15), "the new file", || log.exists());
    let after = tcp_exchange(db, 9, false);
    let old = json_lines(&rotated, 4);
    let new = json_lines(&log, 1);
    assert!(
        old.iter().all(|v| v["bytes_client_to_backend"] != 9),
        "{old:?}"
    );
    assert_eq!(new[0]["client"], after.to_string());
    assert!(p.stderr_text().contains("connection log reopened"));
    // Text format, elsewhere.
    std::fs::write(
        &path,
        with(format!(
            "connection_log = {{ path = {:?}, format = \"text\" }}",
            text_log.display().to_string()
        )),
    )
    .unwrap();
    p.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(15), "the text log", || {
        text_log.exists()
    });
    let client = tcp_exchange(db, 11, false);
    let l = poll_until(Duration::from_secs(15), "a text line", || {
        lines(&text_log).into_iter().next()
    });
    let expect = format!(
        " listener=db client={client} cluster=pg backend={} bytes_client_to_backend=11 \
         bytes_backend_to_client=2 duration_ms=",
        backend.addr
    );
    assert!(l.contains(&expect), "{l}\n{expect}");
    assert!(l.contains(" reason=done worker="), "{l}");
    assert_eq!(lines(&log).len(), 1, "the old file gets nothing more");
    // Off again.
    std::fs::write(&path, &text).unwrap();
    p.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(15), "off", || {
        p.stderr_text().contains("connection log: off")
    });
    tcp_exchange(db, 12, false);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(lines(&text_log).len(), 1);
}
