//! What `run` needs from the machine, checked without starting anything: the files it reads,
//! the files and directories it writes, the addresses it binds. `switchyard check` reports
//! these like config errors (field path + message), so `ExecStartPre=switchyard check`
//! catches what `run` would otherwise trip on; `run` uses [`probe_bind`] itself before
//! binding, to refuse an address another process already serves.
//!
//! Nothing here creates or changes a file: writability is asked of the kernel with
//! `access(2)`, bindability by binding a socket that never listens and is closed at once.

use crate::config::{Config, ConfigError};
use nix::unistd::{access, AccessFlags};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::path::Path;

/// Every problem `run` would meet with this config on this machine.
pub fn environment(cfg: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let mut add = |path: &str, message: String| {
        errs.push(ConfigError {
            path: path.to_string(),
            message,
        })
    };
    if let Some(a) = &cfg.server.access_log {
        if let Err(m) = writable_file(&a.path) {
            add("server.access_log", m);
        }
    }
    if let Some(a) = &cfg.server.connection_log {
        if let Err(m) = writable_file(&a.path) {
            add("server.connection_log", m);
        }
    }
    if let Some(t) = &cfg.server.admin_token_file {
        if let Err(m) = token_file(t) {
            add("server.admin_token_file", m);
        }
    }
    if let Some(d) = &cfg.server.state_dir {
        if let Err(m) = crate::control::persist::check_dir(d) {
            add("server.state_dir", m);
        }
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Err(m) = probe_bind(l.bind, l.share) {
            add(&format!("listeners[{i}].bind"), m);
        }
    }
    if let Some(a) = cfg.server.admin {
        if let Err(m) = probe_bind(a, false) {
            add("server.admin", m);
        }
    }
    errs
}

/// Certificates and keys, read and checked as start-up does (with `--skip-bind` too).
pub fn tls(cfg: &Config) -> Vec<ConfigError> {
    crate::tls::Store::load(cfg, None, true)
        .err()
        .unwrap_or_default()
}

/// The admin token file: readable, not empty (what `run` reads at start).
pub fn token_file(p: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", p.display()));
    }
    Ok(t.to_string())
}

fn writable(p: &Path) -> bool {
    access(p, AccessFlags::W_OK).is_ok()
}

/// A file `run` appends to: an existing writable file, or a new one in a writable directory.
fn writable_file(p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory", p.display())),
        Ok(_) if !writable(p) => Err(format!("{} is not writable", p.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", dir.display())),
                Ok(_) if !writable(dir) => Err(format!(
                    "cannot create {}: directory {} is not writable",
                    p.display(),
                    dir.display()
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "cannot create {}: directory {}: {e}",
                    p.display(),
                    dir.display()
                )),
            }
        }
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// The lowest port an unprivileged process may bind (Linux sysctl; 1024 by default).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Can this process bind `addr`, and is no other process serving it? The probe socket has
/// SO_REUSEADDR (so connections of a previous run in TIME_WAIT do not count) but not
/// SO_REUSEPORT, so it fails while anyone listens there, SO_REUSEPORT or not. `share`: the
/// config says another process listens there on purpose (SO_REUSEPORT groups); then only
/// the permission is checked. Port 0 always binds.
pub fn probe_bind(addr: SocketAddr, share: bool) -> Result<(), String> {
    probe(addr, share).map_err(|(_, m)| m)
}

/// [`probe_bind`], but an address found in use is probed again for up to `patience`: a
/// previous instance killed a moment ago (`kill -9`, then an immediate restart) can still hold
/// its listener while the kernel tears it down — an io_uring ring releases the sockets its
/// pending accepts reference only after the process is gone. Another live process serving the
/// address still fails, after `patience`.
pub fn probe_bind_waiting(
    addr: SocketAddr,
    share: bool,
    patience: std::time::Duration,
) -> Result<(), String> {
    let until = std::time::Instant::now() + patience;
    loop {
        match probe(addr, share) {
            Err((true, _)) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r.map_err(|(_, m)| m),
        }
    }
}

/// The probe; the error says whether the address was in use.
fn probe(addr: SocketAddr, share: bool) -> Result<(), (bool, String)> {
    let refuse = |m: String| (false, m);
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| refuse(format!("cannot create a socket: {e}")))?;
    s.set_reuse_address(true)
        .map_err(|e| refuse(format!("cannot set SO_REUSEADDR: {e}")))?;
    if share {
        s.set_reuse_port(true)
            .map_err(|e| refuse(format!("cannot set SO_REUSEPORT: {e}")))?;
    }
    match s.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(refuse(format!(
            "cannot bind {addr}: permission denied (ports below {} need root or \
             CAP_NET_BIND_SERVICE)",
            unprivileged_port_start()
        ))),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err((
            true,
            if share {
                format!("cannot bind {addr}: in use by a socket that does not share it")
            } else {
                format!(
                    "cannot bind {addr}: another process already serves this address (set \
                     share = true on the listener if sharing it is intended)"
                )
            },
        )),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(refuse(format!(
            "cannot bind {addr}: no such local address on this machine"
        ))),
        Err(e) => Err(refuse(format!("cannot bind {addr}: {e}"))),
    }
}

/// Things `run` will do differently from what the config says, worth a line but not an
/// error: a listen backlog the kernel caps.
pub fn notes(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let Some(cap) = crate::sys::somaxconn() else {
        return out;
    };
    for (i, l) in cfg.listeners.iter().enumerate() {
        let want = l.backlog(&cfg.server);
        if want > cap as i32 {
            out.push(format!(
                "listeners[{i}]: listen backlog {want} is capped at {cap} by net.core.somaxconn \
                 (raise it, e.g. sysctl -w net.core.somaxconn={want}, so bursts of new \
                 connections wait in the kernel instead of retrying their SYNs)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_address_is_refused_unless_shared() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = probe_bind(addr, false).unwrap_err();
        assert!(e.contains("another process already serves"), "{e}");
        assert!(probe_bind("127.0.0.1:0".parse().unwrap(), false).is_ok());
        drop(taken);
        assert!(probe_bind(addr, false).is_ok());
    }

    #[test]
    fn files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(writable_file(&d.path().join("new.log")).is_ok());
        let e = writable_file(&d.path().join("missing/new.log")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let e = writable_file(d.path()).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        assert!(crate::control::persist::check_dir(&d.path().join("a/b/c")).is_ok());
        std::fs::write(d.path().join("f"), "x").unwrap();
        let e = crate::control::persist::check_dir(&d.path().join("f/sub")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let e = token_file(&d.path().join("nope")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
