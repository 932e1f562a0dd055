//! The service's life as the service manager sees it: ready, reloading, upgrading, stopping,
//! and what `STATUS=` says meanwhile. One object, shared by the control thread (signals,
//! periodic status), the admin API and the control socket.
//!
//! Notifications (no-ops without `NOTIFY_SOCKET`):
//!
//! | when | sent |
//! |---|---|
//! | every listener bound, state replayed, workers started | `READY=1`, `STATUS=` |
//! | SIGHUP / `POST /v1/reload` | `RELOADING=1` + `MONOTONIC_USEC=`, then `READY=1` + `STATUS=` (the error, when the file is rejected) |
//! | upgrade: the new process is ready | (old process) `MAINPID=<new>`, `READY=1`, `STATUS=` |
//! | upgrade failed | `STATUS=` says why; the old process keeps serving |
//! | SIGTERM / SIGINT | `STOPPING=1` |
//! | every few seconds | `STATUS=<workers>, <listeners>, <connections>, config version <n>` |
//!
//! A successor says nothing until its predecessor has passed it `MAINPID` (the service
//! manager, with `NotifyAccess=main`, only listens to the main process), and a predecessor
//! says nothing after that.

use crate::control::{ApiError, Control};
use crate::sd::notify::{self, Notifier};
use crate::stats::StatsHandle;
use crate::upgrade::{self, HandedAdmin, HandedListener, Plan, Successor};
use crate::worker::{Ctrl, WorkerHandle};
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How the process was started and what it hands over in an upgrade.
pub struct Settings {
    /// The binary this process was started from (resolved at start-up), and its arguments.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub workers: usize,
    pub shutdown_timeout: Duration,
    pub upgrade_timeout: Duration,
    /// The admin socket (a duplicate), with its configured and bound addresses.
    pub admin: Option<(HandedAdmin, TcpListener)>,
    /// The control socket (a duplicate) and its path.
    pub control_socket: Option<(PathBuf, UnixListener)>,
}

struct HandedOver {
    successor: Successor,
    totals_at_go: Map<String, Value>,
}

#[derive(Default)]
struct State {
    /// This process speaks for the service (false in a successor until its predecessor's
    /// `Go`, and after this process handed over).
    main: bool,
    handed_over: Option<HandedOver>,
    stopping: bool,
    /// Shown after the status line until the next reload or upgrade (e.g. why an upgrade
    /// failed).
    note: Option<String>,
}

pub struct Lifecycle {
    notifier: Notifier,
    control: Arc<Control>,
    workers: Vec<WorkerHandle>,
    stats: StatsHandle,
    settings: Settings,
    /// Set when this process stops accepting on the admin and control sockets (after an
    /// upgrade handed them over).
    pub stop_accepting: Arc<AtomicBool>,
    upgrade_lock: Mutex<()>,
    state: Mutex<State>,
}

impl Lifecycle {
    pub fn new(
        notifier: Notifier,
        control: Arc<Control>,
        workers: Vec<WorkerHandle>,
        stats: StatsHandle,
        settings: Settings,
        stop_accepting: Arc<AtomicBool>,
        main: bool,
    ) -> Lifecycle {
        Lifecycle {
            notifier,
            control,
            workers,
            stats,
            settings,
            stop_accepting,
            upgrade_lock: Mutex::new(()),
            state: Mutex::new(State {
                main,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `lines` when this process speaks for the service.
    fn notify(&self, lines: &[&str]) {
        // Checked and sent under the state lock: a hand-over (`MAINPID=`, see `upgrade`)
        // cannot slip in between, so nothing is sent after it.
        let st = self.state();
        if st.main {
            self.notifier.send(lines);
        }
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The `STATUS=` text: the figures, then any note.
    pub fn status_line(&self) -> String {
        let listeners = self.control.listener_addrs().len();
        let active = self
            .stats
            .totals()
            .and_then(|t| {
                let tcp = t.get("tcp")?;
                let n = |k: &str| tcp.get(k).and_then(Value::as_u64).unwrap_or(0);
                Some(n("accepted").saturating_sub(n("closed")))
            })
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        let st = self.state();
        let what = if st.handed_over.is_some() {
            "draining after an upgrade: "
        } else if st.stopping {
            "stopping: "
        } else {
            ""
        };
        let mut s = format!(
            "{what}{} worker(s), {listeners} listener(s), {active} connection(s), config version {}",
            self.settings.workers,
            self.control.version()
        );
        if let Some(n) = &st.note {
            s.push_str("; ");
            s.push_str(n);
        }
        s
    }

    /// Re-sends `STATUS=` (periodically, from the control thread).
    pub fn refresh_status(&self) {
        if self.notifier.enabled() && self.state().main {
            let line = self.status_line();
            self.notify(&[&format!("STATUS={line}")]);
        }
    }

    /// `WATCHDOG=1` (the control thread checked that every worker makes progress).
    pub fn watchdog_ping(&self) {
        self.notify(&["WATCHDOG=1"]);
    }

    /// Start-up done: every listener is bound, the state replayed, the workers running.
    pub fn ready(&self) {
        if self.notifier.enabled() && self.state().main {
            let line = self.status_line();
            self.notify(&["READY=1", &format!("STATUS={line}")]);
        }
    }

    /// A previous process's totals (see the control socket's `totals`).
    pub fn adopt_totals(&self, totals: Map<String, Value>) {
        log::info!("upgrade: a previous process finished draining; its last counts are added");
        self.stats.adopt(totals);
    }

    /// A successor becomes the main process once its predecessor sent `MAINPID`.
    pub fn promoted(&self, predecessor: u32) {
        self.state().main = true;
        log::info!(
            "upgrade: this process (pid {}) now serves alone; process {predecessor} drains",
            std::process::id()
        );
        self.refresh_status();
    }

    /// SIGHUP or `POST /v1/reload`: the config file through the control plane, framed by
    /// `RELOADING=1` and `READY=1`.
    pub fn reload(&self, if_match: Option<&crate::control::IfMatch>) -> Result<u64, ApiError> {
        if self.notifier.enabled() {
            let reloading = notify::reloading_lines();
            let lines: Vec<&str> = reloading.iter().map(String::as_str).collect();
            self.notify(&lines);
        }
        let r = self.control.reload_if(if_match);
        {
            let mut st = self.state();
            st.note = match &r {
                Ok(_) => None,
                Err(e) => Some(format!("reload rejected: {}", e.message)),
            };
        }
        if self.notifier.enabled() {
            let line = self.status_line();
            self.notify(&["READY=1", &format!("STATUS={line}")]);
        }
        r
    }

    /// SIGTERM / SIGINT: stop accepting and drain (`again`: close everything now).
    pub fn shutdown(&self, again: bool) {
        let deadline = if again {
            log::warn!("second shutdown signal: closing all connections now");
            Instant::now()
        } else {
            log::info!(
                "shutdown requested: no new connections, draining for up to {:?}",
                self.settings.shutdown_timeout
            );
            Instant::now() + self.settings.shutdown_timeout
        };
        let first = {
            let mut st = self.state();
            let first = !st.stopping;
            st.stopping = true;
            first
        };
        if first {
            self.notify(&["STOPPING=1"]);
            self.control.release_sockets();
        }
        for h in &self.workers {
            h.send(Ctrl::Shutdown { deadline });
        }
    }

    /// A binary upgrade (see [`crate::upgrade`]). `who` asked for it (for the log). Returns
    /// (this pid, the new pid) once the new process serves and this one stopped accepting.
    pub fn upgrade(&self, who: &str) -> Result<(u32, u32), ApiError> {
        let Ok(_only_one) = self.upgrade_lock.try_lock() else {
            return Err(ApiError::new(
                409,
                "upgrade_in_progress",
                "an upgrade is already in progress",
            ));
        };
        {
            let st = self.state();
            if let Some(h) = &st.handed_over {
                return Err(ApiError::new(
                    409,
                    "handed_over",
                    format!(
                        "this process already handed over to process {}",
                        h.successor.pid
                    ),
                ));
            }
            if st.stopping {
                return Err(ApiError::new(
                    409,
                    "stopping",
                    "the process is shutting down",
                ));
            }
        }
        let exe = self.settings.exe.display().to_string();
        log::info!("upgrade requested by {who}: starting {exe}");
        self.control.freeze(format!(
            "a binary upgrade is in progress (pid {}); changes are refused until it ends",
            std::process::id()
        ));
        self.state().note = Some(format!("upgrading: starting {exe}"));
        self.refresh_status();

        let outcome = self.plan().and_then(upgrade::launch);
        let successor = match outcome {
            Ok(s) => s,
            Err(why) => {
                log::error!("upgrade failed, this process keeps serving: {why}");
                self.control.thaw();
                self.state().note = Some(format!("upgrade failed: {why}"));
                self.refresh_status();
                return Err(ApiError::new(500, "upgrade_failed", why));
            }
        };
        let new_pid = successor.pid;

        // The successor serves: stop accepting, give it the service, drain.
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        for h in &self.workers {
            h.send(Ctrl::Shutdown { deadline });
        }
        self.stop_accepting.store(true, Ordering::Relaxed);
        self.control.release_sockets();
        self.control.freeze(format!(
            "this process handed over to process {new_pid}; send changes there"
        ));
        self.state().note = None;
        let status = format!(
            "STATUS=upgraded: process {new_pid} serves; process {} drains",
            std::process::id()
        );
        {
            // From the hand-over on this process is silent (`NotifyAccess=main`): a periodic
            // STATUS= or WATCHDOG=1 of the control thread must not follow the MAINPID=.
            let mut st = self.state();
            if st.main {
                self.notifier
                    .send(&[&format!("MAINPID={new_pid}"), "READY=1", &status]);
            }
            st.main = false;
        }
        let totals = self.stats.totals().unwrap_or_default();
        self.stats.stop_saving();
        if let Err(e) = successor.link.send(
            &upgrade::Msg::Go {
                totals: totals.clone(),
            },
            &[],
        ) {
            log::warn!("upgrade: cannot pass the stats totals to process {new_pid}: {e}");
        }
        {
            let mut st = self.state();
            st.main = false;
            st.handed_over = Some(HandedOver {
                successor,
                totals_at_go: totals,
            });
        }
        log::info!(
            "upgrade: process {new_pid} took over; this process (pid {}) stopped accepting and \
             drains for up to {:?}",
            std::process::id(),
            self.settings.shutdown_timeout
        );
        Ok((std::process::id(), new_pid))
    }

    /// The sockets to hand over, as duplicates.
    fn plan(&self) -> Result<Plan, String> {
        let dup_err = |e: std::io::Error| format!("cannot duplicate a listening socket: {e}");
        let listeners = self
            .control
            .handover_sockets()
            .map_err(dup_err)?
            .into_iter()
            .map(|(name, r, fds)| {
                (
                    HandedListener {
                        name,
                        bind: r.bind,
                        local: r.local,
                        sockets: fds.len(),
                    },
                    fds,
                )
            })
            .collect();
        let admin = match &self.settings.admin {
            Some((h, l)) => Some((h.clone(), OwnedFd::from(l.try_clone().map_err(dup_err)?))),
            None => None,
        };
        let control = match &self.settings.control_socket {
            Some((p, l)) => Some((p.clone(), OwnedFd::from(l.try_clone().map_err(dup_err)?))),
            None => None,
        };
        Ok(Plan {
            exe: self.settings.exe.clone(),
            args: self.settings.args.clone(),
            timeout: self.settings.upgrade_timeout,
            listeners,
            admin,
            control,
        })
    }

    /// At exit, after the workers stopped. A process that handed over sends what it counted
    /// while draining to the process that serves now: through the control socket (only the
    /// serving process accepts on it, however many upgrades happened since), else to its own
    /// successor over the hand-over channel. Any other removes the control socket file.
    pub fn finish(&self) {
        // An upgrade that is handing over right now stops the workers before it records the
        // hand-over: wait for it to finish.
        let _upgrade_done = self.upgrade_lock.lock().unwrap_or_else(|e| e.into_inner());
        let handed = self.state().handed_over.take();
        match handed {
            Some(h) => {
                let now = self.stats.totals().unwrap_or_default();
                let delta = upgrade::sub_totals(&now, &h.totals_at_go);
                let via_socket = self.settings.control_socket.as_ref().is_some_and(|(p, _)| {
                    let cmd = format!("totals {}", Value::Object(delta.clone()));
                    matches!(
                        upgrade::socket::call(p, &cmd, Duration::from_secs(2)),
                        Ok(v) if v.get("ok").is_some()
                    )
                });
                if !via_socket {
                    if let Err(e) = h
                        .successor
                        .link
                        .send(&upgrade::Msg::Final { totals: delta }, &[])
                    {
                        log::warn!("upgrade: the counts made while draining are lost: {e}");
                    }
                }
                log::info!("drained; process {} carries on", h.successor.pid);
            }
            None => {
                if let Some((path, _)) = &self.settings.control_socket {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}
