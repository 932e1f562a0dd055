//! Zero-downtime binary upgrade (`switchyard ctl upgrade`, `POST /v1/upgrade`, the control
//! socket). The running process (the *predecessor*) starts the binary at the path it was
//! started from, with the same arguments, and hands it every listening socket over a
//! [`link::Link`] (`SCM_RIGHTS`): the same kernel sockets, so no connection waiting in a
//! backlog is lost and no port is ever unbound.
//!
//! ```text
//!  predecessor                                   successor
//!  spawn(exe, args, SWITCHYARD_UPGRADE_FD=n) ──►  load + validate config, replay state
//!  Hello{listeners, admin, control} + fds ─────►  adopt the sockets, bind the rest, start
//!                                          ◄─────  Ready{pid}   (or Failed / exit / timeout)
//!  stop accepting; MAINPID=<new> READY=1
//!  Go{stats totals} ───────────────────────────►  add the totals, act as the main process
//!  drain (≤ shutdown_timeout)
//!  Final{totals since Go} ─────────────────────►  add them
//!  exit 0
//! ```
//!
//! Until `Ready`, nothing has changed for the predecessor: any failure (missing binary, bad
//! config, crash, no `Ready` within `server.upgrade_timeout`) kills the successor if needed,
//! and the predecessor keeps serving as before.

pub mod link;
pub mod socket;

use link::Link;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The hand-over protocol.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Predecessor → successor, with the descriptors: each listener's sockets in order, then
    /// the admin socket, then the control socket.
    Hello {
        pid: u32,
        listeners: Vec<HandedListener>,
        admin: Option<HandedAdmin>,
        control: Option<PathBuf>,
    },
    /// Successor → predecessor: serving, waiting for `Go`.
    Ready { pid: u32 },
    /// Successor → predecessor: it gives up (the reason), and exits.
    Failed { error: String },
    /// Predecessor → successor: it stopped accepting and told the service manager; the
    /// stats totals so far.
    Go { totals: Map<String, Value> },
    /// Predecessor → successor, as it exits: what it counted after `Go`.
    Final { totals: Map<String, Value> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedListener {
    pub name: String,
    /// As configured (`bind`), and as bound (`local`, differs for port 0).
    pub bind: SocketAddr,
    pub local: SocketAddr,
    /// Descriptors that follow for it (one per worker).
    pub sockets: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedAdmin {
    pub bind: SocketAddr,
    pub local: SocketAddr,
}

// ------------------------------------------------------------------ the successor's side

/// What a successor received from its predecessor.
pub struct Inheritance {
    link: Link,
    predecessor: u32,
    listeners: Vec<(HandedListener, Vec<TcpListener>)>,
    admin: Option<(HandedAdmin, TcpListener)>,
    control: Option<(PathBuf, UnixListener)>,
}

/// How long a successor waits for `Hello` (the predecessor sends it right after the spawn).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl Inheritance {
    /// `Ok(None)` when this process was not started by an upgrade.
    pub fn receive() -> Result<Option<Inheritance>, String> {
        let Some(link) = Link::inherited() else {
            return Ok(None);
        };
        let link = link.map_err(|e| format!("upgrade: the hand-over channel: {e}"))?;
        let (msg, fds) = match link.recv::<Msg>(Some(HELLO_TIMEOUT)) {
            Ok(Some(m)) => m,
            Ok(None) => return Err("upgrade: the previous process went away".into()),
            Err(e) => {
                return Err(format!(
                    "upgrade: no hand-over from the previous process: {e}"
                ))
            }
        };
        let Msg::Hello {
            pid,
            listeners,
            admin,
            control,
        } = msg
        else {
            return Err(format!("upgrade: unexpected first message {msg:?}"));
        };
        let want = listeners.iter().map(|l| l.sockets).sum::<usize>()
            + usize::from(admin.is_some())
            + usize::from(control.is_some());
        if fds.len() != want {
            return Err(format!(
                "upgrade: {} descriptors received, {want} announced",
                fds.len()
            ));
        }
        let mut fds = fds.into_iter();
        let mut tcp = |n: usize| -> Result<Vec<TcpListener>, String> {
            (0..n)
                .map(|_| {
                    let fd = fds.next().ok_or("upgrade: descriptors missing")?;
                    Ok(TcpListener::from(fd))
                })
                .collect()
        };
        let mut got = Vec::with_capacity(listeners.len());
        for l in listeners {
            let socks = tcp(l.sockets)?;
            got.push((l, socks));
        }
        let admin = match admin {
            Some(a) => Some((a, tcp(1)?.pop().ok_or("upgrade: admin socket missing")?)),
            None => None,
        };
        let control = match control {
            Some(p) => {
                let fd: OwnedFd = fds.next().ok_or("upgrade: control socket missing")?;
                Some((p, UnixListener::from(fd)))
            }
            None => None,
        };
        log::info!(
            "upgrade: took over {} listener(s) from process {pid}",
            got.len()
        );
        Ok(Some(Inheritance {
            link,
            predecessor: pid,
            listeners: got,
            admin,
            control,
        }))
    }

    /// The sockets of the predecessor's listener `name`, if it listened where `bind` says
    /// (a listener whose address changed in the config is bound anew).
    pub fn claim_listener(&mut self, name: &str, bind: SocketAddr) -> Option<Vec<TcpListener>> {
        let i = self
            .listeners
            .iter()
            .position(|(h, _)| h.name == name && (h.bind == bind || h.local == bind))?;
        Some(self.listeners.remove(i).1)
    }

    pub fn claim_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        match &self.admin {
            Some((h, _)) if h.bind == addr || h.local == addr => self.admin.take().map(|a| a.1),
            _ => None,
        }
    }

    pub fn claim_control(&mut self, path: &std::path::Path) -> Option<UnixListener> {
        match &self.control {
            Some((p, _)) if p == path => self.control.take().map(|c| c.1),
            _ => None,
        }
    }

    /// The most sockets any inherited listener has (the predecessor's worker count).
    pub fn max_sockets(&self) -> usize {
        self.listeners
            .iter()
            .map(|(_, s)| s.len())
            .max()
            .unwrap_or(0)
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The channel to the predecessor and its pid; the sockets nobody claimed are closed.
    pub fn into_link(self) -> (Link, u32) {
        (self.link, self.predecessor)
    }

    /// Listeners of the predecessor that the new config no longer has (closed when dropped).
    pub fn unclaimed(&self) -> Vec<String> {
        self.listeners.iter().map(|(h, _)| h.name.clone()).collect()
    }
}

// ------------------------------------------------------------------ the predecessor's side

/// Everything the predecessor hands over.
pub struct Plan {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub timeout: Duration,
    pub listeners: Vec<(HandedListener, Vec<OwnedFd>)>,
    pub admin: Option<(HandedAdmin, OwnedFd)>,
    pub control: Option<(PathBuf, OwnedFd)>,
}

/// A successor that reported ready.
pub struct Successor {
    pub pid: u32,
    pub link: Link,
    /// Kept so the successor is reaped if it exits before us; never waited on otherwise.
    pub child: Child,
}

/// Environment variables that describe *this* process to its service manager and must not
/// be taken by the child as its own.
const NOT_INHERITED: [&str; 4] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID"];

/// Starts the successor, hands it the sockets and waits for its `Ready`. On any failure the
/// successor is gone (killed if it still ran) and the error says why.
pub fn launch(plan: Plan) -> Result<Successor, String> {
    let (link, child_end) =
        Link::pair().map_err(|e| format!("cannot create the hand-over channel: {e}"))?;
    crate::sys::set_cloexec(child_end.as_fd(), false)
        .map_err(|e| format!("cannot prepare the hand-over channel: {e}"))?;
    let child_fd = std::os::fd::AsRawFd::as_raw_fd(&child_end);
    let mut cmd = Command::new(&plan.exe);
    cmd.args(&plan.args)
        .env(link::ENV, child_fd.to_string())
        .stdin(Stdio::null());
    for k in NOT_INHERITED {
        cmd.env_remove(k);
    }
    let spawned = cmd.spawn();
    // Our copy of the child's end: closing it lets us see EOF when the child exits.
    drop(child_end);
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", plan.exe.display()))?;
    let pid = child.id();
    log::info!("upgrade: started {} as process {pid}", plan.exe.display());
    let fail = |child: &mut Child, why: String| -> String {
        let _ = child.kill();
        let _ = child.wait();
        why
    };

    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    let mut listeners = Vec::with_capacity(plan.listeners.len());
    for (h, socks) in &plan.listeners {
        listeners.push(HandedListener {
            sockets: socks.len(),
            ..h.clone()
        });
        fds.extend(socks.iter().map(|s| s.as_fd()));
    }
    if let Some((_, s)) = &plan.admin {
        fds.push(s.as_fd());
    }
    if let Some((_, s)) = &plan.control {
        fds.push(s.as_fd());
    }
    let hello = Msg::Hello {
        pid: std::process::id(),
        listeners,
        admin: plan.admin.as_ref().map(|a| a.0.clone()),
        control: plan.control.as_ref().map(|c| c.0.clone()),
    };
    if let Err(e) = link.send(&hello, &fds) {
        let status = wait_briefly(&mut child);
        let why = match status {
            Some(st) => format!(
                "the new process {} before taking the sockets (its log says why)",
                describe_exit(st)
            ),
            None => format!("cannot hand the sockets over: {e}"),
        };
        return Err(fail(&mut child, why));
    }

    // Wait for Ready, watching for an early exit. The link reports EOF when the child exits;
    // polling in short steps also catches a child that hangs without closing it.
    let deadline = Instant::now() + plan.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(
                &mut child,
                format!(
                    "the new process did not report ready within {:?} (killed)",
                    plan.timeout
                ),
            ));
        }
        match link.recv::<Msg>(Some(left.min(Duration::from_millis(200)))) {
            Ok(Some((Msg::Ready { pid: p }, _))) => {
                if p != pid {
                    log::warn!("upgrade: process {pid} reported ready as pid {p}");
                }
                return Ok(Successor { pid, link, child });
            }
            Ok(Some((Msg::Failed { error }, _))) => {
                return Err(fail(&mut child, format!("the new process failed: {error}")));
            }
            Ok(Some((other, _))) => {
                return Err(fail(
                    &mut child,
                    format!("the new process sent {other:?} instead of ready"),
                ));
            }
            Ok(None) => {
                // EOF: it exited (or closed the channel, which is as bad).
                let st = wait_briefly(&mut child);
                let how = match st {
                    Some(s) => describe_exit(s),
                    None => "closed the hand-over channel".to_string(),
                };
                return Err(fail(
                    &mut child,
                    format!("the new process {how} before it was ready (its log says why)"),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!(
                        "the new process {} before it was ready (its log says why)",
                        describe_exit(st)
                    ));
                }
            }
            Err(e) => {
                return Err(fail(
                    &mut child,
                    format!("the hand-over channel failed: {e}"),
                ))
            }
        }
    }
}

fn wait_briefly(child: &mut Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(64), _) => "exited with status 64 (usage or configuration error)".into(),
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({st})"),
    }
}

/// `a + b`, recursively: numbers add, objects merge key by key, anything else keeps `a`.
pub fn add_totals(a: &mut Map<String, Value>, b: &Map<String, Value>) {
    for (k, bv) in b {
        match (a.get_mut(k), bv) {
            (Some(Value::Object(ao)), Value::Object(bo)) => add_totals(ao, bo),
            (Some(Value::Number(an)), Value::Number(bn)) => {
                if let (Some(x), Some(y)) = (an.as_u64(), bn.as_u64()) {
                    *an = x.saturating_add(y).into();
                }
            }
            (None, v) => {
                a.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

/// `a - b`, recursively, for counters that only grow (saturating at 0).
pub fn sub_totals(a: &Map<String, Value>, b: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, av) in a {
        let v = match (av, b.get(k)) {
            (Value::Object(ao), Some(Value::Object(bo))) => Value::Object(sub_totals(ao, bo)),
            (Value::Number(an), Some(Value::Number(bn))) => match (an.as_u64(), bn.as_u64()) {
                (Some(x), Some(y)) => Value::from(x.saturating_sub(y)),
                _ => av.clone(),
            },
            _ => av.clone(),
        };
        out.insert(k.clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn totals_arithmetic() {
        let obj = |v: Value| v.as_object().cloned().unwrap();
        let mut a =
            obj(json!({"tcp":{"accepted":5,"closed":3},"listeners":{"web":{"requests":2}}}));
        let b = obj(
            json!({"tcp":{"accepted":1,"closed":4},"listeners":{"api":{"requests":7}},"msg_req":3}),
        );
        add_totals(&mut a, &b);
        assert_eq!(
            Value::Object(a.clone()),
            json!({"tcp":{"accepted":6,"closed":7},"listeners":{"web":{"requests":2},"api":{"requests":7}},"msg_req":3})
        );
        let d = sub_totals(
            &a,
            &obj(json!({"tcp":{"accepted":6,"closed":3},"msg_req":9})),
        );
        assert_eq!(d["tcp"], json!({"accepted":0,"closed":4}));
        assert_eq!(d["msg_req"], json!(0));
        assert_eq!(d["listeners"]["api"]["requests"], json!(7));
    }
}
