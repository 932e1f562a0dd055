//! Autoscaling: one thread watches every cluster with `[clusters.autoscale]` (LBaaS instances
//! with auto-scaling included: theirs is a cluster table like any other), and when the load
//! calls for it, asks for more or fewer backends by running a hook program or calling a
//! webhook. The hook (or whoever the webhook reaches) adds or removes backends through the
//! admin API; the autoscaler never edits the config itself.
//!
//! Every tick ([`TICK`]) it samples each cluster — request and connection totals (and the
//! latency histogram for `p99_ms`) from the stats aggregator, open connections from the
//! snapshot's live counters — and lets [`decide::Tracker`] decide. Actions run on threads of
//! their own ([`action`]), bounded by 10 s, so neither traffic nor the control plane ever
//! waits for one. Decisions and outcomes are logged and shown in `/stats` and `/metrics`
//! ([`status`]).

pub mod action;
pub mod decide;
pub mod status;

use crate::config::autoscale::{Action, AutoscaleConfig, Metric};
use crate::config::Protocol;
use crate::control::{ApiError, Control};
use crate::snapshot::SharedSnapshot;
use crate::stats::StatsHandle;
use crossbeam_channel::{Receiver, Sender};
use decide::{Decision, Direction, Sample, Shape, Tracker};
use serde_json::{json, Value as Json};
use status::{Last, Status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often clusters are sampled and decided on.
pub const TICK: Duration = Duration::from_millis(500);

/// What hooks are told about where to reach the admin API.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The admin API's bound address (`SWITCHYARD_ADMIN`).
    pub admin: Option<SocketAddr>,
    /// `server.admin_token_file` (`SWITCHYARD_TOKEN_FILE`, which `switchyard ctl` reads).
    pub token_file: Option<PathBuf>,
}

/// An API change may keep a cluster's hook but not set a new one: a hook runs a program on
/// this node, which only the config file may ask for (a webhook is fine).
pub fn guard_api_put(old: Option<&toml::Value>, new: &toml::Value) -> Result<(), ApiError> {
    let hook = |v: &toml::Value| v.get("autoscale").and_then(|a| a.get("hook")).cloned();
    let new_hook = hook(new);
    if new_hook.is_some() && new_hook != old.and_then(hook) {
        return Err(ApiError::new(
            422,
            "invalid",
            "autoscale.hook runs a program on this node, so only the config file can set it \
             (a change through the API may keep the hook a cluster has); use autoscale.webhook",
        )
        .field("autoscale.hook"));
    }
    Ok(())
}

/// An autoscaled cluster as the running config has it.
struct Target {
    cluster: String,
    cfg: AutoscaleConfig,
    /// Configured backends: (as written, address, draining).
    backends: Vec<(String, SocketAddr, bool)>,
    http: bool,
    /// The LBaaS instance it belongs to (id, summary).
    instance: Option<(u64, Json)>,
}

/// An action that ended.
struct Done {
    cluster: String,
    outcome: action::Outcome,
    took: Duration,
}

pub struct Autoscaler {
    control: Arc<Control>,
    snapshot: SharedSnapshot,
    stats: StatsHandle,
    status: Arc<Status>,
    settings: Settings,
    trackers: HashMap<String, Tracker>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    stop: Arc<AtomicBool>,
}

/// Starts the autoscaler thread; it ends when `stop` is set (checked every [`TICK`]).
pub fn start(
    control: Arc<Control>,
    snapshot: SharedSnapshot,
    stats: StatsHandle,
    status: Arc<Status>,
    settings: Settings,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let mut a = Autoscaler {
        control,
        snapshot,
        stats,
        status,
        settings,
        trackers: HashMap::new(),
        done_tx,
        done_rx,
        stop,
    };
    std::thread::Builder::new()
        .name("autoscale".into())
        .spawn(move || a.run())
}

fn unix_ms_at(t: Instant) -> u64 {
    let now = Instant::now();
    let ms = crate::snapshot::unix_ms();
    match t.checked_duration_since(now) {
        Some(ahead) => ms + ahead.as_millis() as u64,
        None => ms.saturating_sub(now.duration_since(t).as_millis() as u64),
    }
}

impl Autoscaler {
    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            self.tick(started);
            // Wake early when an action ends, so its outcome shows at once.
            let wait = TICK.saturating_sub(started.elapsed());
            if let Ok(d) = self.done_rx.recv_timeout(wait) {
                self.finished(d);
            }
        }
    }

    fn targets(&self) -> Vec<Target> {
        self.control.view(|v| {
            v.config
                .clusters
                .iter()
                .filter_map(|c| {
                    let cfg = c.autoscale.clone()?;
                    let http = v.config.listeners.iter().any(|l| {
                        l.protocol == Protocol::Http
                            && (l.faas
                                || l.cluster.as_deref() == Some(c.name.as_str())
                                || l.routes.iter().any(|r| r.cluster == c.name))
                    });
                    Some(Target {
                        cluster: c.name.clone(),
                        cfg,
                        backends: c
                            .backends
                            .iter()
                            .map(|b| (b.name.clone(), b.addr, b.drain))
                            .collect(),
                        http,
                        instance: crate::lbaas::instance_of_cluster(v.ext, &c.name),
                    })
                })
                .collect()
        })
    }

    fn tick(&mut self, now: Instant) {
        while let Ok(d) = self.done_rx.try_recv() {
            self.finished(d);
        }
        let targets = self.targets();
        self.trackers
            .retain(|k, _| targets.iter().any(|t| &t.cluster == k));
        self.status
            .lock()
            .retain(|k, _| targets.iter().any(|t| &t.cluster == k));
        if targets.is_empty() {
            return;
        }
        let wanted = targets
            .iter()
            .map(|t| (t.cluster.clone(), t.cfg.metric == Metric::P99Ms))
            .collect();
        let Some(samples) = self.stats.sample(wanted) else {
            log::debug!("autoscale: the stats aggregator did not answer; skipping a tick");
            return;
        };
        let snap = self.snapshot.load();
        for (t, s) in targets.iter().zip(samples) {
            let live = snap.clusters.iter().find(|c| c.name == t.cluster);
            let (active, in_rotation) = live.map_or((0, 0), |c| {
                let active = c
                    .backends
                    .iter()
                    .chain(&c.down)
                    .chain(&c.draining)
                    .map(|b| u64::from(b.live.active.load(Ordering::Relaxed)))
                    .sum();
                (active, c.backends.len() as u32)
            });
            let shape = Shape {
                backends: t.backends.iter().filter(|b| !b.2).count() as u32,
                in_rotation,
                http: t.http,
            };
            let tracker = self.trackers.entry(t.cluster.clone()).or_default();
            tracker.push(
                Sample {
                    at: now,
                    requests: s.requests,
                    connections: s.connections,
                    active,
                    latency: s.latency,
                },
                t.cfg.window,
            );
            let value = tracker.measure(&t.cfg, shape);
            let decision = tracker.decide(&t.cfg, shape, now);
            let cooling = tracker.cooling_until(&t.cfg, now).map(unix_ms_at);
            {
                let mut st = self.status.lock();
                let cs = st.entry(t.cluster.clone()).or_default();
                cs.metric = t.cfg.metric.as_str();
                if value.is_some() {
                    cs.value = value;
                }
                cs.scale_up_above = t.cfg.scale_up_above;
                cs.scale_down_below = t.cfg.scale_down_below;
                cs.window_s = t.cfg.window.as_secs_f64();
                cs.cooldown_s = t.cfg.cooldown.as_secs_f64();
                cs.backends = shape.backends;
                cs.min_backends = t.cfg.min_backends;
                cs.max_backends = t.cfg.max_backends;
                cs.action = match t.cfg.action {
                    Action::Hook(_) => "hook",
                    Action::Webhook(_) => "webhook",
                };
                cs.cooldown_until_ms = cooling;
                cs.instance = t.instance.as_ref().map(|(id, _)| *id);
            }
            if let Some(d) = decision {
                self.act(t, shape, d, &snap);
            }
        }
    }

    /// Logs and counts a decision, then runs its action on a thread of its own.
    fn act(&mut self, t: &Target, shape: Shape, d: Decision, snap: &crate::snapshot::Snapshot) {
        let cfg = &t.cfg;
        let (program, kind) = match &cfg.action {
            Action::Hook(argv) => (argv.join(" "), "hook"),
            Action::Webhook(w) => (w.url.clone(), "webhook"),
        };
        let measured = match d.value {
            Some(v) => format!(
                "{} = {v} over {:?} (scale up above {}, down below {})",
                cfg.metric.as_str(),
                cfg.window,
                cfg.scale_up_above,
                cfg.scale_down_below
            ),
            None => "not measured yet".to_string(),
        };
        log::info!(
            "autoscale: cluster {}: {} ({}; {measured}; {} backend(s), min {}, max {}): running {kind} {program}",
            t.cluster,
            d.direction.as_str(),
            d.reason.as_str(),
            shape.backends,
            cfg.min_backends,
            cfg.max_backends
        );
        let event = event_json(t, shape, d, snap, self.settings.admin);
        let mut env = vec![
            ("SWITCHYARD_ACTION".to_string(), d.direction.as_str().into()),
            ("SWITCHYARD_CLUSTER".to_string(), t.cluster.clone()),
            (
                "SWITCHYARD_BACKENDS".to_string(),
                shape.backends.to_string(),
            ),
            ("SWITCHYARD_REASON".to_string(), d.reason.as_str().into()),
            ("SWITCHYARD_METRIC".to_string(), cfg.metric.as_str().into()),
            (
                "SWITCHYARD_VALUE".to_string(),
                d.value.map(|v| v.to_string()).unwrap_or_default(),
            ),
        ];
        if let Some(c) = event.get("candidate").and_then(Json::as_str) {
            env.push(("SWITCHYARD_CANDIDATE".into(), c.to_string()));
        }
        if let Some(a) = self.settings.admin {
            env.push(("SWITCHYARD_ADMIN".into(), a.to_string()));
        }
        if let Some(f) = &self.settings.token_file {
            env.push(("SWITCHYARD_TOKEN_FILE".into(), f.display().to_string()));
        }
        if let Ok(exe) = std::env::current_exe() {
            env.push(("SWITCHYARD_EXE".into(), exe.display().to_string()));
        }
        if let Some((id, _)) = &t.instance {
            env.push(("SWITCHYARD_LBAAS_INSTANCE".into(), id.to_string()));
        }
        {
            let mut st = self.status.lock();
            let cs = st.entry(t.cluster.clone()).or_default();
            match d.direction {
                Direction::Up => cs.scale_up += 1,
                Direction::Down => cs.scale_down += 1,
            }
            cs.running = true;
            cs.last = Some(Last {
                action: d.direction.as_str(),
                reason: d.reason.as_str(),
                value: d.value,
                backends: shape.backends,
                at_unix_ms: crate::snapshot::unix_ms(),
                outcome: None,
                detail: None,
                took_ms: None,
            });
        }
        if let Some(tr) = self.trackers.get_mut(&t.cluster) {
            tr.started();
        }
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let action = cfg.action.clone();
        let tx = self.done_tx.clone();
        let cluster = t.cluster.clone();
        let spawned = std::thread::Builder::new()
            .name("autoscale-action".into())
            .spawn(move || {
                let t0 = Instant::now();
                let outcome = action::run(&action, &env, &body);
                let _ = tx.send(Done {
                    cluster,
                    outcome,
                    took: t0.elapsed(),
                });
            });
        if let Err(e) = spawned {
            self.finished(Done {
                cluster: t.cluster.clone(),
                outcome: action::Outcome::Failed(format!("cannot start a thread: {e}")),
                took: Duration::ZERO,
            });
        }
    }

    fn finished(&mut self, d: Done) {
        let now = Instant::now();
        if let Some(t) = self.trackers.get_mut(&d.cluster) {
            t.ended(now);
        }
        let took_ms = d.took.as_millis() as u64;
        match &d.outcome {
            action::Outcome::Ok => log::info!(
                "autoscale: cluster {}: action done in {took_ms} ms",
                d.cluster
            ),
            action::Outcome::Failed(why) => log::warn!(
                "autoscale: cluster {}: action failed after {took_ms} ms: {why}",
                d.cluster
            ),
            action::Outcome::TimedOut => log::warn!(
                "autoscale: cluster {}: action timed out after {:?}: killed (hook) or abandoned (webhook)",
                d.cluster,
                crate::config::autoscale::defaults::ACTION_TIMEOUT
            ),
        }
        let mut st = self.status.lock();
        if let Some(cs) = st.get_mut(&d.cluster) {
            cs.running = false;
            match &d.outcome {
                action::Outcome::Ok => cs.ok += 1,
                action::Outcome::Failed(_) => cs.failed += 1,
                action::Outcome::TimedOut => cs.timeouts += 1,
            }
            if let Some(last) = cs.last.as_mut() {
                last.outcome = Some(d.outcome.as_str());
                last.took_ms = Some(took_ms);
                if let action::Outcome::Failed(why) = &d.outcome {
                    last.detail = Some(why.clone());
                }
            }
        }
    }
}

/// The event a hook reads on stdin and a webhook receives.
fn event_json(
    t: &Target,
    shape: Shape,
    d: Decision,
    snap: &crate::snapshot::Snapshot,
    admin: Option<SocketAddr>,
) -> Json {
    let live = snap.clusters.iter().find(|c| c.name == t.cluster);
    let state_of = |addr: SocketAddr| -> (&'static str, u32) {
        let Some(c) = live else {
            return ("unknown", 0);
        };
        crate::stats::backend_states(c)
            .find(|(b, _)| b.addr == addr)
            .map_or(("unknown", 0), |(b, st)| {
                (st, b.live.active.load(Ordering::Relaxed))
            })
    };
    let list: Vec<Json> = t
        .backends
        .iter()
        .map(|(name, addr, _)| {
            let (state, active) = state_of(*addr);
            json!({"addr": name, "state": state, "active": active})
        })
        .collect();
    // Scale down: suggest the backend with the fewest open connections (the newest on a tie).
    let candidate = (d.direction == Direction::Down)
        .then(|| {
            t.backends
                .iter()
                .filter(|b| !b.2)
                .map(|(name, addr, _)| (name, state_of(*addr).1))
                .rev()
                .min_by_key(|(_, active)| *active)
                .map(|(name, _)| name.clone())
        })
        .flatten();
    let cfg = &t.cfg;
    let mut e = json!({
        "action": d.direction.as_str(),
        "reason": d.reason.as_str(),
        "cluster": t.cluster,
        "metric": cfg.metric.as_str(),
        "value": d.value,
        "scale_up_above": cfg.scale_up_above,
        "scale_down_below": cfg.scale_down_below,
        "window_s": cfg.window.as_secs_f64(),
        "backends": shape.backends,
        "min_backends": cfg.min_backends,
        "max_backends": cfg.max_backends,
        "backend_list": list,
        "at_unix_ms": crate::snapshot::unix_ms(),
    });
    if let Some(c) = candidate {
        e["candidate"] = json!(c);
    }
    if let Some(a) = admin {
        e["admin"] = json!(a.to_string());
    }
    if let Some((_, inst)) = &t.instance {
        e["lbaas_instance"] = inst.clone();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_may_keep_a_hook_but_not_set_one() {
        let t = |s: &str| -> toml::Value { toml::from_str::<toml::Table>(s).unwrap().into() };
        let with = t("name = \"a\"\n[autoscale]\nhook = \"/bin/scale\"");
        let other = t("name = \"a\"\n[autoscale]\nhook = \"/bin/evil\"");
        let web = t("name = \"a\"\n[autoscale]\nwebhook = \"http://127.0.0.1:1/\"");
        assert!(guard_api_put(None, &web).is_ok());
        assert!(guard_api_put(Some(&with), &with).is_ok());
        assert!(guard_api_put(Some(&with), &web).is_ok());
        let e = guard_api_put(None, &with).unwrap_err();
        assert_eq!(
            (e.status, e.field.as_deref()),
            (422, Some("autoscale.hook"))
        );
        assert!(guard_api_put(Some(&with), &other).is_err());
    }
}
