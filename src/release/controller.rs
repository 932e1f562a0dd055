//! The release controller thread: acts on auto-rollback verdicts (from the stats aggregator's
//! [`super::monitor`]) through the control plane, like an operator would through the API, and
//! runs the rollback hooks (each on a thread of its own, so a slow hook delays nothing).

use super::api::{serving, unix_ms, Event, ServiceOp};
use super::hook;
use super::monitor::Trigger;
use crate::control::{Change, Control};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// A rollback that could not be applied (say, the state file was not writable) is tried
/// again this often, this many times.
const RETRY_EVERY: Duration = Duration::from_secs(1);
const RETRIES: u32 = 10;

/// Starts the controller; returns where verdicts go.
pub fn start(control: Arc<Control>) -> std::io::Result<Sender<Trigger>> {
    let (tx, rx) = crossbeam_channel::unbounded::<Trigger>();
    let (hooks_tx, hooks_rx) = crossbeam_channel::unbounded::<Event>();
    control.releases().set_hooks(hooks_tx);
    std::thread::Builder::new()
        .name("release".into())
        .spawn(move || run(control, rx, hooks_rx))?;
    Ok(tx)
}

fn run(control: Arc<Control>, triggers: Receiver<Trigger>, hooks: Receiver<Event>) {
    loop {
        crossbeam_channel::select! {
            recv(triggers) -> t => match t {
                Ok(t) => roll_back(&control, &t),
                Err(_) => return, // the aggregator is gone: shutting down
            },
            recv(hooks) -> e => {
                if let Ok(e) = e {
                    run_hook(&control, e);
                }
            }
        }
    }
}

fn roll_back(control: &Control, t: &Trigger) {
    for attempt in 0..=RETRIES {
        let change = Change::Service {
            name: t.service.clone(),
            op: ServiceOp::Rollback(t.version.clone()),
        };
        match control.apply(change, None, "auto-rollback") {
            Ok(a) => {
                control.releases().record(Event {
                    event: "rollback",
                    service: t.service.clone(),
                    version: t.version.clone(),
                    now_serving: serving(&control.snapshot(), &t.service),
                    reason: "auto",
                    at_unix_ms: unix_ms(),
                    config_version: a.version,
                    requests: Some(t.requests),
                    errors: Some(t.errors),
                    error_rate: Some(t.rate),
                    max_error_rate: Some(t.max_rate),
                    window_s: Some(t.window.as_secs_f64()),
                });
                return;
            }
            // Rolled back or removed meanwhile, or nothing left to fall back to.
            Err(e) if e.status == 409 || e.status == 404 || e.status == 422 => {
                log::warn!(
                    "release: auto-rollback of service {} version {} not applied: {}",
                    t.service,
                    t.version,
                    e.message
                );
                return;
            }
            Err(e) => {
                log::error!(
                    "release: auto-rollback of service {} version {} failed (attempt {}): {}",
                    t.service,
                    t.version,
                    attempt + 1,
                    e.message
                );
                std::thread::sleep(RETRY_EVERY);
            }
        }
    }
}

fn run_hook(control: &Control, e: Event) {
    let snap = control.snapshot();
    let Some(rb) = snap.service(&e.service).and_then(|s| s.rollback.clone()) else {
        return;
    };
    let Some(h) = rb.hook else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("release-hook".into())
        .spawn(move || hook::run(&h, &e, rb.hook_timeout));
    if let Err(err) = spawned {
        log::error!("release: cannot start a hook thread: {err}");
    }
}
