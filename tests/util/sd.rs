//! Playing systemd's side in tests: a real unix datagram `NOTIFY_SOCKET` that records every
//! notification with its arrival time, and a guard for processes that a test learns about
//! only through notifications (the successors of binary upgrades), killed when it drops.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{spawn_small, Deadline};

/// One datagram: when it arrived, who sent it (the kernel's `SCM_CREDENTIALS`, as systemd
/// reads them to apply `NotifyAccess=`), and its `KEY=VALUE` lines.
#[derive(Clone, Debug)]
pub struct Notification {
    pub at: Instant,
    pub pid: i32,
    pub lines: Vec<String>,
}

impl Notification {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
    pub fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

/// The service manager's notification socket.
pub struct NotifySocket {
    /// The value for `NOTIFY_SOCKET`.
    pub env_value: String,
    log: Arc<Mutex<Vec<Notification>>>,
    _dir: Option<tempfile::TempDir>,
    sock: UnixDatagram,
}

impl NotifySocket {
    /// An abstract socket (`@name`), as systemd can use.
    pub fn abstract_socket() -> NotifySocket {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "switchyard-test-notify-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            rand_seed()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        NotifySocket::with(sock, format!("@{name}"), None)
    }

    /// A socket file (`/run/systemd/notify` style).
    pub fn path_socket() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket::with(sock, path.display().to_string(), Some(dir))
    }

    fn with(sock: UnixDatagram, env_value: String, dir: Option<tempfile::TempDir>) -> NotifySocket {
        use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
        use std::os::fd::AsRawFd;
        let log = Arc::new(Mutex::new(Vec::new()));
        let rx = sock.try_clone().expect("clone notify socket");
        setsockopt(&rx, sockopt::PassCred, &true).expect("SO_PASSCRED");
        let l = log.clone();
        spawn_small("notify-socket", move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let Ok(m) = recvmsg::<()>(
                    rx.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                ) else {
                    break;
                };
                let n = m.bytes;
                let pid = m
                    .cmsgs()
                    .ok()
                    .and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::ScmCredentials(u) => Some(u.pid()),
                            _ => None,
                        })
                    })
                    .unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text == "\u{0}close" {
                    break;
                }
                let lines = text.lines().map(str::to_string).collect();
                l.lock().unwrap().push(Notification {
                    at: Instant::now(),
                    pid,
                    lines,
                });
            }
        });
        NotifySocket {
            env_value,
            log,
            _dir: dir,
            sock,
        }
    }

    pub fn env(&self) -> (&'static str, std::ffi::OsString) {
        ("NOTIFY_SOCKET", self.env_value.clone().into())
    }

    pub fn all(&self) -> Vec<Notification> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a notification (at index `from` or later) that satisfies `pred`; returns its
    /// index and the notification.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Notification) -> bool,
    ) -> (usize, Notification) {
        let d = Deadline::after(timeout);
        loop {
            {
                let log = self.log.lock().unwrap();
                if let Some((i, n)) = log.iter().enumerate().skip(from).find(|(_, n)| pred(n)) {
                    return (i, n.clone());
                }
            }
            if d.expired() {
                panic!(
                    "no notification {what} within {timeout:?}; got: {:#?}",
                    self.all().iter().map(|n| &n.lines).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn len(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // Wake the reader so its thread ends.
        if let Ok(addr) = self.sock.local_addr() {
            if let Ok(s) = UnixDatagram::unbound() {
                let _ = s.send_to_addr(b"\0close", &addr);
            }
        }
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Processes a test did not spawn itself (upgrade successors): SIGKILLed on drop.
#[derive(Default)]
pub struct Pids(pub Vec<i32>);

impl Pids {
    pub fn add(&mut self, pid: i32) {
        if !self.0.contains(&pid) {
            self.0.push(pid);
        }
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// `CLOCK_MONOTONIC` now, in microseconds (what `MONOTONIC_USEC=` is measured on).
pub fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// `<program> run -c <dir>/switchyard.toml` with extra environment (a `NOTIFY_SOCKET`, a
/// watchdog), waiting for every listener of `config` and the admin API to be announced.
/// `config` gets a test admin address unless it names one (`admin = "off"`: no admin API to
/// wait for).
pub fn start_run(
    program: &std::ffi::OsStr,
    dir: tempfile::TempDir,
    config: &str,
    env: &[(&str, std::ffi::OsString)],
) -> super::Proxy {
    let (config, admin) = super::with_test_admin(config);
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, &config).expect("write config");
    let n = config
        .lines()
        .filter(|l| l.trim() == "[[listeners]]")
        .count()
        + usize::from(admin);
    super::Proxy::spawn_with(
        program,
        vec!["run".into(), "-c".into(), path.clone().into()],
        env,
        dir,
        Some(path),
        super::WaitFor::Listeners(n),
    )
}
