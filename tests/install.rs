//! `make install DESTDIR=... PREFIX=/usr` lays out every file (binary, man pages, shell
//! completions, README and examples, unit, config, admin token), the installed unit passes
//! `systemd-analyze verify`, the installed config passes `check`, and `make uninstall` takes
//! back what it put under the prefix. Uses the debug binary (`BIN=`), so no release build.
mod util;

use std::path::Path;
use std::process::Command;

fn make(args: &[&str]) -> std::process::Output {
    Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("--no-print-directory")
        .args(args)
        .output()
        .expect("run make")
}

#[test]
fn make_install_lays_out_every_file_and_the_unit_verifies() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().display().to_string();
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let common = [
        format!("DESTDIR={dest}"),
        "PREFIX=/usr".to_string(),
        format!("BIN={bin}"),
    ];
    let refs: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut args = vec!["install"];
    args.extend(&refs);
    let out = make(&args);
    assert!(
        out.status.success(),
        "make install: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = root.path();
    let files = [
        "usr/bin/switchyard",
        "usr/share/man/man1/switchyard.1",
        "usr/share/man/man1/switchyard-run.1",
        "usr/share/man/man1/switchyard-check.1",
        "usr/share/man/man1/switchyard-ctl.1",
        "usr/share/man/man1/switchyard-ctl-backend-drain.1",
        "usr/share/bash-completion/completions/switchyard",
        "usr/share/zsh/site-functions/_switchyard",
        "usr/share/fish/vendor_completions.d/switchyard.fish",
        "usr/share/doc/switchyard/README.md",
        "usr/share/doc/switchyard/examples/production.toml",
        "usr/lib/systemd/system/switchyard.service",
        "usr/lib/systemd/system/switchyard.socket",
        "usr/lib/sysusers.d/switchyard.conf",
        "usr/lib/tmpfiles.d/switchyard.conf",
        "etc/switchyard/switchyard.toml",
        "etc/switchyard/admin.token",
    ];
    for f in files {
        let len = std::fs::metadata(r.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    // Nothing under /usr/local when PREFIX=/usr.
    assert!(!r.join("usr/local").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.join("etc/switchyard/admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the token is private: {mode:o}");
    let token = std::fs::read_to_string(r.join("etc/switchyard/admin.token")).unwrap();
    assert_eq!(token.len(), 64, "{token:?}");
    let man = std::fs::read_to_string(r.join("usr/share/man/man1/switchyard.1")).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH switchyard"),
        "{man}"
    );
    let bash = std::fs::read_to_string(r.join("usr/share/bash-completion/completions/switchyard"))
        .unwrap();
    assert!(bash.contains("demo-backend") && bash.contains("--recovery-path"));

    // The unit names the installed paths, and systemd accepts it.
    let unit_path = r.join("usr/lib/systemd/system/switchyard.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/switchyard run -c /etc/switchyard/switchyard.toml"));
    assert!(unit.contains("LogsDirectory=switchyard"), "{unit}");
    assert!(
        unit.contains("LoadCredential=admin.token:/etc/switchyard/admin.token"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    // Verify inside DESTDIR as the root: give it the system's targets and /bin/kill, which a
    // real root has (removed again before `make uninstall` is checked).
    let sys = r.join("usr/lib/systemd/system");
    let mut borrowed = Vec::new();
    for e in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd units on this machine") {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if p.is_file() && sys.join(&name) != unit_path {
            std::fs::copy(&p, sys.join(&name)).unwrap();
            borrowed.push(sys.join(&name));
        }
    }
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).expect("/bin/kill");
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={dest}"))
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("switchyard.service:"),
        "warnings about the unit: {err}"
    );

    for b in borrowed {
        std::fs::remove_file(b).unwrap();
    }
    // The installed production config is valid.
    let c = Command::new(bin)
        .args(["check", "--config-only", "-c"])
        .arg(r.join("etc/switchyard/switchyard.toml"))
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));

    // Installing again keeps an edited config and the token.
    std::fs::write(r.join("etc/switchyard/switchyard.toml"), "# mine\n").unwrap();
    assert!(make(&args).status.success());
    assert_eq!(
        std::fs::read_to_string(r.join("etc/switchyard/switchyard.toml")).unwrap(),
        "# mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/switchyard/admin.token")).unwrap(),
        token
    );

    let mut un = vec!["uninstall"];
    un.extend(&refs);
    let out = make(&un);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &files[..files.len() - 2] {
        assert!(!r.join(f).exists(), "{f} left after uninstall");
    }
    assert!(r.join("etc/switchyard/switchyard.toml").exists());
    let _ = Path::new(&dest);
}
