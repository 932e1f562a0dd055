//! Signal handling: the handlers (installed by signal-hook) only queue; one thread turns each
//! signal into an event for the control loop (`server::control_loop`), which acts on it.
//!
//! - SIGTERM / SIGINT: graceful shutdown (a second one shortens the deadline to now).
//! - SIGUSR2: stats dump to stdout (the aggregator prints it). Not a reload, unlike HAProxy.
//! - SIGHUP: config reload, framed by `RELOADING=1` / `READY=1` for systemd, then log files
//!   reopened.
//! - SIGUSR1: log files reopened (nginx's habit, which logrotate scripts rely on).
//!
//! Binary upgrades have no signal: they are asked for through the admin API or the control
//! socket, which can answer whether they worked (see `crate::upgrade`).

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};
use std::io;

pub enum SignalEvent {
    Shutdown { again: bool },
    DumpStats,
    Reload,
    ReopenLogs,
}

/// Installs the handlers. Call this first thing: until then SIGUSR2 would still have its
/// default action (terminate). Signals that arrive before [`spawn`] are kept and delivered.
pub fn register() -> io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGUSR2, SIGHUP, SIGUSR1])
}

/// Starts the signal thread; `on` is called on that thread for each signal.
pub fn spawn(
    mut signals: Signals,
    mut on: impl FnMut(SignalEvent) + Send + 'static,
) -> io::Result<Handle> {
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut shutdowns = 0;
            for sig in signals.forever() {
                match sig {
                    SIGTERM | SIGINT => {
                        shutdowns += 1;
                        on(SignalEvent::Shutdown {
                            again: shutdowns > 1,
                        });
                    }
                    SIGUSR2 => on(SignalEvent::DumpStats),
                    SIGHUP => on(SignalEvent::Reload),
                    SIGUSR1 => on(SignalEvent::ReopenLogs),
                    _ => {}
                }
            }
        })?;
    Ok(handle)
}
