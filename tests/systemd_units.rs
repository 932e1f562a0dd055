//! The files in `systemd/`, checked with systemd's own tools (Debian package `systemd`;
//! `.ci/run` installs it): `systemd-analyze verify` and `security`, `systemd-sysusers` and
//! `systemd-tmpfiles` applied to a scratch root.

mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// The units with the installed binary's path pointing at the binary under test (verify
/// checks that every Exec*= command exists).
fn units_in(dir: &Path, edit: impl Fn(String) -> String) -> (PathBuf, PathBuf) {
    let service = dir.join("switchyard.service");
    let socket = dir.join("switchyard.socket");
    let s = std::fs::read_to_string(unit_dir().join("switchyard.service")).unwrap();
    std::fs::write(
        &service,
        edit(s.replace("/usr/local/bin/switchyard", util::BIN)),
    )
    .unwrap();
    std::fs::copy(unit_dir().join("switchyard.socket"), &socket).unwrap();
    (service, socket)
}

fn analyze(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed for this test");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn units_pass_systemd_analyze_verify_and_a_broken_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (service, socket) = units_in(dir.path(), |s| s);
    let (ok, report) = analyze(&["verify".as_ref(), service.as_os_str(), socket.as_os_str()]);
    assert!(ok && report.trim().is_empty(), "verify: {report}");

    // The check has teeth: a typo in a value fails it.
    let bad = tempfile::tempdir().unwrap();
    let (service, _) = units_in(bad.path(), |s| s.replace("Type=notify", "Type=notifyy"));
    let (ok, report) = analyze(&["verify".as_ref(), service.as_os_str()]);
    assert!(
        !ok || report.contains("notifyy"),
        "verify accepted Type=notifyy: {report}"
    );
}

#[test]
fn service_is_rated_ok_or_better_by_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = units_in(dir.path(), |s| s);
    let (_, report) = analyze(&[
        "security".as_ref(),
        "--offline=true".as_ref(),
        service.as_os_str(),
    ]);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating in: {report}"));
    let mut words = line.split(':').nth(1).unwrap_or("").split_whitespace();
    let score: f64 = words.next().and_then(|w| w.parse().ok()).expect("score");
    let rating = words.next().unwrap_or("");
    assert!(
        matches!(rating, "SAFE" | "OK") && score < 5.0,
        "rated {score} {rating}: {line}"
    );
}

#[test]
fn service_has_the_lifecycle_settings_the_readme_promises() {
    let s = std::fs::read_to_string(unit_dir().join("switchyard.service")).unwrap();
    let has = |l: &str| s.lines().any(|x| x.trim() == l);
    for l in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=10s",
        "ExecStartPre=/usr/local/bin/switchyard check -c /etc/switchyard/switchyard.toml",
        "ExecReload=/usr/local/bin/switchyard check --skip-bind -c /etc/switchyard/switchyard.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=1048576",
        "StateDirectory=switchyard",
        "RuntimeDirectory=switchyard",
        "ProtectSystem=strict",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=io_uring_setup io_uring_enter io_uring_register",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(has(l), "switchyard.service lacks {l}");
    }
    // The validate-then-signal order matters: a bad file must never be signalled.
    let check = s
        .find("ExecReload=/usr/local/bin/switchyard check")
        .unwrap();
    let hup = s.find("ExecReload=/bin/kill -HUP").unwrap();
    assert!(check < hup);
}

#[test]
fn sysusers_and_tmpfiles_snippets_apply_to_a_scratch_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let run = |tool: &str, args: &[&std::ffi::OsStr]| {
        let out = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let root_arg = format!("--root={}", root.path().display());
    run(
        "systemd-sysusers",
        &[
            root_arg.as_ref(),
            unit_dir().join("switchyard.sysusers").as_os_str(),
        ],
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("switchyard:"))
        .unwrap_or_else(|| panic!("no switchyard user: {passwd}"));
    let uid: u32 = entry.split(':').nth(2).unwrap().parse().unwrap();
    assert!(
        entry.ends_with(":/var/lib/switchyard:/usr/sbin/nologin"),
        "{entry}"
    );
    run(
        "systemd-tmpfiles",
        &[
            "--create".as_ref(),
            root_arg.as_ref(),
            unit_dir().join("switchyard.tmpfiles").as_os_str(),
        ],
    );
    for (dir, mode) in [
        ("etc/switchyard", 0o755),
        ("var/lib/switchyard", 0o750),
        ("run/switchyard", 0o750),
    ] {
        let m = std::fs::metadata(root.path().join(dir)).unwrap();
        assert!(m.is_dir(), "{dir}");
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{dir}");
        if dir != "etc/switchyard" {
            assert_eq!(m.uid(), uid, "{dir} belongs to the switchyard user");
        }
    }
}
