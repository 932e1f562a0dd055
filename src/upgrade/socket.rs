//! The control socket: `<runtime dir>/switchyard.sock` (mode 0600), so an upgrade can be asked
//! for even when the admin API is off (`server.admin = "off"`). One command per connection,
//! one line each way:
//!
//! - `upgrade` → `{"old_pid":N,"pid":M}` or `{"error":{"code":"...","message":"..."}}`
//! - `status`  → `{"pid":N,"status":"<the STATUS= line>"}`
//! - `totals <JSON>` → `{"ok":true}`: a previous process that finished draining after an
//!   upgrade adds what it counted meanwhile to the stats of whichever process serves now (the
//!   socket is shared, and only the serving process accepts on it).
//!
//! The socket is handed to the successor with the listeners, so its path never goes away
//! during an upgrade.

use crate::lifecycle::Lifecycle;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The socket's file name in the runtime directory.
pub const FILE_NAME: &str = "switchyard.sock";
const MAX_CONNECTIONS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest command line (a `totals` object with many backends).
const MAX_LINE: u64 = 16 << 20;

pub fn path_in(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(FILE_NAME)
}

/// Creates the socket at `path`. A socket file left behind by a process that is gone is
/// replaced; one that a live process answers on is an error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the socket on its own thread until `stop` is set (checked every 250 ms).
pub fn serve(
    listener: UnixListener,
    lifecycle: Arc<Lifecycle>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("control-socket".into())
        .spawn(move || accept_loop(listener, lifecycle, stop))?;
    Ok(())
}

fn accept_loop(listener: UnixListener, lifecycle: Arc<Lifecycle>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        if !crate::sys::wait_readable(&listener, Duration::from_millis(250)) {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            break; // handed over while we waited: the successor takes this connection
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue; // dropping it closes it
        }
        let lc = lifecycle.clone();
        let act = active.clone();
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                serve_one(stream, &lc);
                act.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_one(stream: UnixStream, lifecycle: &Lifecycle) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut line = String::new();
    let mut r = BufReader::new(stream).take(MAX_LINE);
    if r.read_line(&mut line).is_err() {
        return;
    }
    let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let reply = match cmd {
        "totals" => match serde_json::from_str::<serde_json::Value>(arg) {
            Ok(serde_json::Value::Object(t)) => {
                lifecycle.adopt_totals(t);
                serde_json::json!({"ok": true})
            }
            _ => serde_json::json!({"error": {"code": "bad_request",
                "message": "totals takes a JSON object"}}),
        },
        "upgrade" => match lifecycle.upgrade("control socket") {
            Ok((old, new)) => serde_json::json!({"old_pid": old, "pid": new}),
            Err(e) => serde_json::json!({"error": {"code": e.code, "message": e.message}}),
        },
        "status" => {
            serde_json::json!({"pid": std::process::id(), "status": lifecycle.status_line()})
        }
        other => serde_json::json!({"error": {"code": "unknown_command",
            "message": format!("unknown command {other:?} (upgrade, status, totals)")}}),
    };
    let _ = out.set_write_timeout(Some(IO_TIMEOUT));
    let _ = writeln!(out, "{reply}");
}

/// Client side (`switchyard ctl --socket`): sends `command`, returns the JSON answer.
pub fn call(path: &Path, command: &str, timeout: Duration) -> io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a control-socket answer ({e}): {line:?}"),
        )
    })
}
