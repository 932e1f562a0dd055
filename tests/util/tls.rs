//! TLS test material made at test time with the `openssl` command (ECDSA P-256), and the real
//! clients the TLS tests drive: `openssl s_client`, `curl` and Python's `ssl` module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A directory of certificates: a CA, server certificates signed by it, and a client CA with
/// a client certificate.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is needed for the TLS tests (make deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// `ca` (servers), `a` (a.example, *.a.example), `b` (b.example, *.b.example), both for
    /// 127.0.0.1 too; `client_ca` and `client` (signed by it); `other_ca` and `stranger` (a
    /// client certificate nobody trusts).
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Certs { dir };
        c.ca("ca");
        c.ca("client_ca");
        c.ca("other_ca");
        c.leaf(
            "a",
            "ca",
            "a.example",
            "DNS:a.example,DNS:*.a.example,IP:127.0.0.1",
            30,
        );
        c.leaf(
            "b",
            "ca",
            "b.example",
            "DNS:b.example,DNS:*.b.example,IP:127.0.0.1",
            30,
        );
        c.leaf("client", "client_ca", "client", "DNS:client", 30);
        c.leaf("stranger", "other_ca", "stranger", "DNS:stranger", 30);
        c
    }

    pub fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
    }

    /// A certificate `name.pem`/`name.key` for `cn` with `san`, valid `days`, signed by `ca`.
    pub fn leaf(&self, name: &str, ca: &str, cn: &str, san: &str, days: u32) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!("subjectAltName={san}\n"),
        )
        .expect("ext file");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                &days.to_string(),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `path` as a TOML string.
    pub fn p(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// `notAfter` of a certificate file, Unix seconds (as `openssl x509 -enddate` says).
    pub fn not_after(&self, file: &str) -> i64 {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
            .arg(self.path(file))
            .output()
            .expect("openssl x509");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // notAfter=2026-12-30 06:48:28Z
        let v = text
            .trim()
            .trim_start_matches("notAfter=")
            .trim_end_matches('Z');
        let out = Command::new("date")
            .args(["-u", "-d", v, "+%s"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("date of {text:?}"))
    }

    /// The serial number of a certificate file (hex, as openssl prints it).
    pub fn serial(&self, file: &str) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(self.path(file))
            .output()
            .expect("openssl x509");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    }
}

/// Output of a command, stdout and stderr together, killed after `timeout`.
pub fn run(cmd: &mut Command, input: &[u8], timeout: Duration) -> (bool, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input);
        // s_client keeps the connection while stdin is open: keep it a moment so the answer
        // arrives, then close.
        let input_done = std::time::Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700).saturating_sub(input_done.elapsed()));
            drop(i);
        });
    }
    let d = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > d {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl s_client` to `addr` with `args`, sending `input`.
pub fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args);
    run(&mut cmd, input, Duration::from_secs(10)).1
}

/// `curl` over HTTPS to `https://{host}:{port}{path}` resolved to `addr`, with `args`.
pub fn curl(addr: SocketAddr, host: &str, path: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("curl");
    cmd.arg("-sS")
        .arg("--max-time")
        .arg("10")
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .args(args)
        .arg(format!("https://{host}:{}{path}", addr.port()));
    run(&mut cmd, b"", Duration::from_secs(15))
}

/// Runs a Python 3 program (its stdout and stderr, and whether it exited 0).
pub fn python(program: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(program).args(args);
    run(&mut cmd, b"", Duration::from_secs(30))
}
