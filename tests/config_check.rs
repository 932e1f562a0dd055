//! Config validation: every kind of error is reported with its field path and exit 64, by both
//! `switchyard check -c` and `switchyard run -c` (which must refuse to start).
mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use util::*;

const T: Duration = Duration::from_secs(10);

const VALID: &str = r#"[server]
workers = 2
pin_workers = false
buffer_size = "16KiB"
buffers_per_worker = 4096
max_connections = 100000
backlog = 1024
shutdown_timeout = "30s"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"
idle_timeout = "10m"

[[listeners]]
name = "foo"
bind = "127.0.0.1:0"
protocol = "foo"
cluster = "other"

[[clusters]]
name = "app"
balance = "round_robin"
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
connect_timeout = "2s"
connect_attempts = 3

[[clusters]]
name = "other"
balance = "least_conn"
backends = ["127.0.0.1:9003"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Replaces `from` (which must occur exactly once in VALID) with `to`.
fn mutate(from: &str, to: &str) -> String {
    assert_eq!(
        VALID.matches(from).count(),
        1,
        "test bug: {from:?} must occur once in VALID"
    );
    VALID.replacen(from, to, 1)
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// Runs `check -c` and `run -c` on `text`; both must exit 64 and report an error line starting
/// with `error: <prefix>` for every prefix.
fn expect_errors(text: &str, prefixes: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", text);
    for sub in ["check", "run"] {
        let out = run_to_exit(
            &[sub.as_ref(), "-c".as_ref(), path.as_os_str()],
            dir.path(),
            T,
        );
        let lines = error_lines(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "`switchyard {sub} -c` on a bad config: want exit 64, got {:?}; stderr:\n{}",
            out.status,
            out.stderr
        );
        for p in prefixes {
            let want = format!("error: {p}");
            assert!(
                lines.iter().any(|l| l.starts_with(&want)),
                "`switchyard {sub} -c`: no line starting with {want:?}; stderr:\n{}\n--- config:\n{text}",
                out.stderr
            );
        }
        if sub == "check" {
            // One line per error, nothing else.
            let stray: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("error: "))
                .collect();
            assert!(
                stray.is_empty(),
                "`switchyard check`: every stderr line should be one `error: path: message`; \
                 these are not: {stray:?}; stderr:\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stderr.contains("listening name="),
            "`switchyard {sub}` started listening with an invalid config:\n{}",
            out.stderr
        );
    }
}

#[test]
fn valid_config_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", VALID);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("ok: {}", path.display())),
        "stdout: {:?}",
        out.stdout
    );
    assert!(error_lines(&out.stderr).is_empty(), "{}", out.stderr);
}

#[test]
fn minimal_config_with_defaults_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"c\"\n\n[[clusters]]\nname = \"c\"\nbackends = [\"127.0.0.1:1\"]\n";
    let path = write(dir.path(), "min.toml", text);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", out.stderr);
}

#[test]
fn unknown_keys() {
    expect_errors(
        &mutate(
            "idle_timeout = \"10m\"",
            "idle_timeout = \"10m\"\nbogus_key = 1",
        ),
        &["listeners[0].bogus_key: unknown key"],
    );
    expect_errors(
        &mutate(
            "pin_workers = false",
            "pin_workers = false\nfrobnicate = true",
        ),
        &["server.frobnicate: unknown key"],
    );
    expect_errors(
        &mutate(
            "connect_attempts = 3",
            "connect_attempts = 3\nretry_forever = 2",
        ),
        &["clusters[0].retry_forever: unknown key"],
    );
    expect_errors(&format!("{VALID}\n[tuning]\nfast = true\n"), &["tuning"]);
}

#[test]
fn wrong_types() {
    expect_errors(
        &mutate("workers = 2", "workers = \"two\""),
        &["server.workers: "],
    );
    expect_errors(
        &mutate("pin_workers = false", "pin_workers = \"no\""),
        &["server.pin_workers: "],
    );
    expect_errors(
        &mutate("connect_attempts = 3", "connect_attempts = [3]"),
        &["clusters[0].connect_attempts: "],
    );
}

#[test]
fn invalid_addresses() {
    expect_errors(
        &mutate(
            "bind = \"127.0.0.1:0\"\nprotocol = \"tcp\"",
            "bind = \"not-an-address\"\nprotocol = \"tcp\"",
        ),
        &["listeners[0].bind: "],
    );
    expect_errors(
        &mutate(
            "{ addr = \"127.0.0.1:9002\", weight = 3 }",
            "{ addr = \"127.0.0.1\", weight = 3 }",
        ),
        &["clusters[0].backends[1].addr: "],
    );
    expect_errors(
        &mutate(
            "backends = [\"127.0.0.1:9003\"]",
            "backends = [\"127.0.0.1:99999\"]",
        ),
        &["clusters[1].backends[0]"],
    );
}

#[test]
fn invalid_durations() {
    expect_errors(
        &mutate("idle_timeout = \"10m\"", "idle_timeout = \"10 parsecs\""),
        &["listeners[0].idle_timeout: "],
    );
    expect_errors(
        &mutate("connect_timeout = \"2s\"", "connect_timeout = \"soon\""),
        &["clusters[0].connect_timeout: "],
    );
    expect_errors(
        &mutate("shutdown_timeout = \"30s\"", "shutdown_timeout = \"-5s\""),
        &["server.shutdown_timeout: "],
    );
}

#[test]
fn invalid_sizes() {
    expect_errors(
        &mutate("buffer_size = \"16KiB\"", "buffer_size = \"16 lightyears\""),
        &["server.buffer_size: "],
    );
}

#[test]
fn unknown_balance() {
    expect_errors(
        &mutate("balance = \"round_robin\"", "balance = \"random_walk\""),
        &["clusters[0].balance: "],
    );
}

#[test]
fn unknown_protocol() {
    expect_errors(
        &mutate("protocol = \"foo\"", "protocol = \"udp\""),
        &["listeners[1].protocol: "],
    );
}

#[test]
fn listener_naming_unknown_cluster() {
    expect_errors(
        &mutate("cluster = \"other\"", "cluster = \"ghost\""),
        &["listeners[1].cluster: "],
    );
}

#[test]
fn duplicate_names() {
    expect_errors(
        &mutate("name = \"other\"", "name = \"app\""),
        &["clusters[1].name: "],
    );
    expect_errors(
        &mutate("name = \"foo\"", "name = \"front\""),
        &["listeners[1].name: "],
    );
}

#[test]
fn empty_backends() {
    expect_errors(
        &mutate("backends = [\"127.0.0.1:9003\"]", "backends = []"),
        &["clusters[1].backends: "],
    );
}

#[test]
fn workers_out_of_range() {
    expect_errors(
        &mutate("workers = 2", "workers = 100000"),
        &["server.workers: "],
    );
    expect_errors(
        &mutate("workers = 2", "workers = -1"),
        &["server.workers: "],
    );
}

#[test]
fn buffers_reserve_must_leave_buffers_for_new_requests() {
    expect_errors(
        &mutate(
            "buffers_per_worker = 4096",
            "buffers_per_worker = 4096\nbuffers_reserve = 4096",
        ),
        &["server.buffers_reserve: 4096 must be less than buffers_per_worker (4096)"],
    );
    expect_errors(
        &mutate(
            "buffers_per_worker = 4096",
            "buffers_per_worker = 4096\nbuffers_reserve = -1",
        ),
        &["server.buffers_reserve: "],
    );
    let dir = tempfile::tempdir().unwrap();
    let ok = mutate(
        "buffers_per_worker = 4096",
        "buffers_per_worker = 4096\nbuffers_reserve = 0",
    );
    let path = write(dir.path(), "ok.toml", &ok);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(0), "0 turns it off: {}", out.stderr);
}

#[test]
fn connect_attempts_zero_rejected() {
    expect_errors(
        &mutate("connect_attempts = 3", "connect_attempts = 0"),
        &["clusters[0].connect_attempts: "],
    );
}

/// Several independent value errors in one file: every one is reported.
#[test]
fn several_errors_all_reported() {
    let text = VALID
        .replacen("workers = 2", "workers = 100000", 1)
        .replacen("buffer_size = \"16KiB\"", "buffer_size = \"huge\"", 1)
        .replacen(
            "bind = \"127.0.0.1:0\"\nprotocol = \"tcp\"",
            "bind = \"nowhere\"\nprotocol = \"tcp\"",
            1,
        )
        .replacen("idle_timeout = \"10m\"", "idle_timeout = \"forever\"", 1)
        .replacen("protocol = \"foo\"", "protocol = \"sctp\"", 1)
        .replacen("cluster = \"other\"", "cluster = \"ghost\"", 1)
        .replacen("balance = \"round_robin\"", "balance = \"dice\"", 1)
        .replacen("backends = [\"127.0.0.1:9003\"]", "backends = []", 1);
    let want = [
        "server.workers: ",
        "server.buffer_size: ",
        "listeners[0].bind: ",
        "listeners[0].idle_timeout: ",
        "listeners[1].protocol: ",
        "listeners[1].cluster: ",
        "clusters[0].balance: ",
        "clusters[1].backends: ",
    ];
    expect_errors(&text, &want);
}

/// ALL errors means unknown keys and type errors too, alongside value errors.
#[test]
fn unknown_key_and_wrong_type_reported_alongside_other_errors() {
    let text = VALID
        .replacen(
            "idle_timeout = \"10m\"",
            "idle_timeout = \"10m\"\nbogus_key = 1",
            1,
        )
        .replacen("backlog = 1024", "backlog = \"lots\"", 1)
        .replacen("workers = 2", "workers = 100000", 1)
        .replacen("balance = \"round_robin\"", "balance = \"dice\"", 1);
    expect_errors(
        &text,
        &[
            "listeners[0].bogus_key: unknown key",
            "server.backlog: ",
            "server.workers: ",
            "clusters[0].balance: ",
        ],
    );
}

#[test]
fn toml_syntax_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "broken.toml", "[server\nworkers = 2\n");
    for sub in ["check", "run"] {
        let out = run_to_exit(
            &[sub.as_ref(), "-c".as_ref(), path.as_os_str()],
            dir.path(),
            T,
        );
        assert_eq!(
            out.status.code(),
            Some(64),
            "{sub}: stderr:\n{}",
            out.stderr
        );
        // file:line:column, then the offending line with a caret under the column.
        let want = format!("error: {}:1:8: TOML syntax: ", path.display());
        assert!(
            out.stderr.contains(" 1 | [server\n"),
            "{sub}: {}",
            out.stderr
        );
        assert!(
            error_lines(&out.stderr)
                .iter()
                .any(|l| l.starts_with(&want)),
            "{sub}: no {want:?} line:\n{}",
            out.stderr
        );
    }
}

#[test]
fn missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.toml");
    for sub in ["check", "run"] {
        let out = run_to_exit(
            &[sub.as_ref(), "-c".as_ref(), path.as_os_str()],
            dir.path(),
            T,
        );
        assert_eq!(
            out.status.code(),
            Some(64),
            "{sub}: stderr:\n{}",
            out.stderr
        );
        let want = format!("error: {}: ", path.display());
        assert!(
            error_lines(&out.stderr)
                .iter()
                .any(|l| l.starts_with(&want)),
            "{sub}: no {want:?} line:\n{}",
            out.stderr
        );
    }
}

#[test]
fn bare_dash_c_form_also_refuses_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        &mutate("balance = \"round_robin\"", "balance = \"dice\""),
    );
    let out = run_to_exit(&["-c".as_ref(), path.as_os_str()], dir.path(), T);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{}", out.stderr);
    assert!(
        error_lines(&out.stderr)
            .iter()
            .any(|l| l.starts_with("error: clusters[0].balance: ")),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_usage_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(&["check", "--no-such-flag"], dir.path(), T);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{}", out.stderr);
}

#[test]
fn cannot_bind_exits_70() {
    // A plain listener (no SO_REUSEPORT) holds the port, so the proxy's bind fails.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[listeners]]\nname = \"a\"\nbind = \"{taken}\"\nprotocol = \"tcp\"\ncluster = \"c\"\n\n[[clusters]]\nname = \"c\"\nbackends = [\"127.0.0.1:1\"]\n"
    );
    let path = write(dir.path(), "taken.toml", &text);
    let out = run_to_exit(
        &["run".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(70), "stderr:\n{}", out.stderr);
    drop(holder);
}

#[test]
fn shipped_examples_pass_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut checked = 0;
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        // The config alone: the examples name paths and ports of a real install.
        let out = run_to_exit(
            &[
                "check".as_ref(),
                "--config-only".as_ref(),
                "-c".as_ref(),
                p.as_os_str(),
            ],
            &dir,
            T,
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails check:\n{}",
            p.display(),
            out.stderr
        );
        checked += 1;
    }
    eprintln!("checked {checked} example configs");
}

const SMALL: &str =
    "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"c\"\n\n\
                     [[clusters]]\nname = \"c\"\nbackends = [\"127.0.0.1:1\"]\n";

/// What `run` would trip on, `check` reports first: files it reads or writes, directories,
/// addresses another process serves. One line each, with the field's path, exit 64.
#[test]
fn check_reports_files_directories_and_addresses_run_would_trip_on() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let admin_holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_taken = admin_holder.local_addr().unwrap();
    std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
    std::fs::write(dir.path().join("plainfile"), "x").unwrap();
    let d = dir.path().display();
    let text = format!(
        "[server]\nadmin = \"{admin_taken}\"\naccess_log = \"{d}/no-such-dir/access.log\"\n\
         connection_log = \"{d}/no-such-dir/conn.log\"\n\
         admin_token_file = \"{d}/empty.token\"\nstate_dir = \"{d}/plainfile/state\"\n\n\
         [[listeners]]\nname = \"a\"\nbind = \"{taken}\"\nprotocol = \"tcp\"\ncluster = \"c\"\n\n\
         [[clusters]]\nname = \"c\"\nbackends = [\"127.0.0.1:1\"]\n"
    );
    let path = write(dir.path(), "env.toml", &text);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let lines = error_lines(&out.stderr);
    for want in [
        "error: server.access_log: cannot create ",
        "error: server.connection_log: cannot create ",
        "error: server.admin_token_file: ",
        "error: server.state_dir: cannot create ",
        "error: listeners[0].bind: cannot bind ",
        "error: server.admin: cannot bind ",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(want)).count(),
            1,
            "want exactly one {want:?}:\n{}",
            out.stderr
        );
    }
    assert_eq!(lines.len(), 6, "{}", out.stderr);
    assert!(out.stderr.contains("is empty"), "{}", out.stderr);
    assert!(
        out.stderr.contains("another process already serves"),
        "{}",
        out.stderr
    );
    // --skip-bind leaves the addresses alone (a config checked beside its running proxy).
    let out = run_to_exit(
        &[
            "check".as_ref(),
            "--skip-bind".as_ref(),
            "-c".as_ref(),
            path.as_os_str(),
        ],
        dir.path(),
        T,
    );
    assert_eq!(error_lines(&out.stderr).len(), 4, "{}", out.stderr);
    // Fixed, it passes.
    std::fs::write(dir.path().join("good.token"), "secret\n").unwrap();
    let fixed = text
        .replace("no-such-dir/", "")
        .replace("empty.token", "good.token")
        .replace("plainfile/state", "state")
        .replace(&taken.to_string(), "127.0.0.1:0")
        .replace(&admin_taken.to_string(), "127.0.0.1:0");
    let path = write(dir.path(), "fixed.toml", &fixed);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        !dir.path().join("access.log").exists(),
        "check created a file"
    );
    drop((holder, admin_holder));
}

/// SO_REUSEPORT would let a second proxy join the first one's address silently: `run` refuses
/// unless the listener says `share = true`.
#[test]
fn run_refuses_an_address_another_process_serves_unless_shared() {
    let first = util::Proxy::start(SMALL);
    let addr = first.addr("a");
    let dir = tempfile::tempdir().unwrap();
    let text = SMALL.replace("127.0.0.1:0", &addr.to_string());
    let path = write(dir.path(), "second.toml", &with_test_admin(&text).0);
    let out = run_to_exit(
        &["run".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(70), "{}", out.stderr);
    assert!(
        out.stderr.contains("another process already serves"),
        "{}",
        out.stderr
    );
    let shared = text.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nshare = true");
    let first_shared = util::Proxy::start(
        &SMALL.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nshare = true"),
    );
    let a2 = first_shared.addr("a");
    let second = util::Proxy::start(&shared.replace(&addr.to_string(), &a2.to_string()));
    assert_eq!(second.addr("a"), a2);
}

/// An address a previous instance is still letting go of (killed a moment ago: the kernel
/// can hold its listener briefly) is probed again for up to 2 s: here a listener that closes
/// 500 ms after `run` starts does not stop it.
#[test]
fn run_waits_briefly_for_an_address_being_released() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let text = SMALL.replace("127.0.0.1:0", &addr.to_string());
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(held);
    });
    let p = util::Proxy::start(&text);
    assert_eq!(p.addr("a"), addr);
    release.join().unwrap();
}

/// A port below ip_unprivileged_port_start without CAP_NET_BIND_SERVICE: checked as an
/// unprivileged user (root drops to nobody with setpriv for this).
#[test]
fn check_reports_a_privileged_port_without_the_capability() {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    assert!(start > 1, "this machine lets anyone bind any port");
    let port = start - 1;
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "[server]\nadmin = \"off\"\n{}",
        SMALL.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    );
    let path = write(dir.path(), "low.toml", &text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            bin,
        ]);
        c
    } else {
        std::process::Command::new(bin)
    };
    let out = cmd
        .args(["check", "-c"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("run check (setpriv from util-linux when root)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("listeners[0].bind: cannot bind")
            && stderr.contains("permission denied")
            && stderr.contains("CAP_NET_BIND_SERVICE"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_get_did_you_mean_and_each_problem_is_reported_once() {
    let text = mutate("pin_workers = false", "pin_workers = false\nbufer_size = 1")
        .replace("connect_attempts = 3", "connect_atempts = 3")
        .replace("workers = 2", "workers = \"two\"");
    expect_errors(
        &text,
        &[
            "server.bufer_size: unknown key (did you mean \"buffer_size\"?)",
            "clusters[0].connect_atempts: unknown key (did you mean \"connect_attempts\"?)",
            "server.workers: invalid type: string \"two\", expected a whole number",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", &text);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    let lines = error_lines(&out.stderr);
    let mut dedup = lines.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(lines.len(), 3, "{}", out.stderr);
    assert_eq!(dedup.len(), lines.len(), "{}", out.stderr);
    // A wrong shape is one problem, not two.
    expect_errors(
        "listeners = 3\n",
        &["listeners: expected an array of tables"],
    );
    let out = run_to_exit(
        &[
            "check".as_ref(),
            "-c".as_ref(),
            write(dir.path(), "l.toml", "listeners = 3\n").as_os_str(),
        ],
        dir.path(),
        T,
    );
    assert_eq!(error_lines(&out.stderr).len(), 1, "{}", out.stderr);
}

#[test]
fn sizes_have_one_grammar() {
    for (text, ok) in [
        ("16KiB", true),
        ("16KB", true),
        ("1 MiB", true),
        ("16K", false),
        ("16kib", false),
        ("16kB", false),
    ] {
        let cfg = mutate(
            "buffer_size = \"16KiB\"",
            &format!("buffer_size = \"{text}\""),
        );
        if ok {
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), "s.toml", &cfg);
            let out = run_to_exit(
                &[
                    "check".as_ref(),
                    "--config-only".as_ref(),
                    "-c".as_ref(),
                    path.as_os_str(),
                ],
                dir.path(),
                T,
            );
            assert_eq!(out.status.code(), Some(0), "{text}: {}", out.stderr);
        } else {
            expect_errors(&cfg, &["server.buffer_size: invalid size \""]);
        }
    }
}

#[test]
fn bare_switchyard_prints_help_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit::<&str>(&[], dir.path(), T);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("Usage: switchyard"), "{}", out.stderr);
    for flag in [
        "--listen",
        "--forward",
        "--protocol",
        "check",
        "ctl",
        "version",
    ] {
        assert!(
            out.stderr.contains(flag),
            "help lacks {flag}: {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("listening name="), "{}", out.stderr);
    let out = run_to_exit(&["version"], dir.path(), T);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stdout.starts_with(&format!(
            "switchyard {}\ncommit: ",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        out.stdout
    );
}

/// The listen backlog follows the connection limit; `check` says when the kernel caps it.
#[test]
fn check_notes_a_backlog_the_kernel_caps() {
    let Some(cap) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return; // no /proc: nothing to compare with
    };
    let dir = tempfile::tempdir().unwrap();
    let over = cap + 1;
    let text = format!(
        "[server]\nadmin = \"off\"\n\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"tcp\"\ncluster = \"c\"\nmax_connections = {over}\n\n\
         [[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"c\"\n\
         max_connections = 100\n\n[[clusters]]\nname = \"c\"\nbackends = [\"127.0.0.1:1\"]\n"
    );
    let path = write(dir.path(), "b.toml", &text);
    let out = run_to_exit(
        &["check".as_ref(), "-c".as_ref(), path.as_os_str()],
        dir.path(),
        T,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "note: listeners[0]: listen backlog {over} is capped at {cap} by net.core.somaxconn"
        )),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("listeners[1]"),
        "a small limit is not capped: {}",
        out.stderr
    );
}

/// Each log takes its own formats: `combined` is the access log's, `text` the connection
/// log's; the error names the accepted ones.
#[test]
fn log_formats_are_checked_per_log() {
    expect_errors(
        &mutate(
            "buffer_size = \"16KiB\"",
            "buffer_size = \"16KiB\"\naccess_log = { path = \"/tmp/a.log\", format = \"text\" }\n\
             connection_log = { path = \"/tmp/c.log\", format = \"combined\" }",
        ),
        &[
            "server.access_log.format: expected \"json\" or \"combined\"",
            "server.connection_log.format: expected \"json\" or \"text\"",
        ],
    );
}
