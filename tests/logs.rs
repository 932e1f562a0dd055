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
