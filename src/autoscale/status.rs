//! What the autoscaler shows: per cluster, the metric, the bounds, every decision and every
//! action's outcome — the `autoscale` key of `/stats` and the `switchyard_autoscale_*`
//! families of `/metrics`. Written by the autoscaler thread, read by the stats thread.

use crate::stats::{prom, Section};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// The last decision of a cluster.
#[derive(Debug, Clone)]
pub struct Last {
    pub action: &'static str,
    pub reason: &'static str,
    pub value: Option<f64>,
    pub backends: u32,
    pub at_unix_ms: u64,
    /// `ok`, `failed` or `timeout` once the action ended.
    pub outcome: Option<&'static str>,
    pub detail: Option<String>,
    pub took_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    pub metric: &'static str,
    /// The metric over the last full window.
    pub value: Option<f64>,
    pub scale_up_above: f64,
    pub scale_down_below: f64,
    pub window_s: f64,
    pub cooldown_s: f64,
    pub backends: u32,
    pub min_backends: u32,
    pub max_backends: u32,
    /// `hook` or `webhook`.
    pub action: &'static str,
    pub scale_up: u64,
    pub scale_down: u64,
    pub ok: u64,
    pub failed: u64,
    pub timeouts: u64,
    pub running: bool,
    /// Unix ms when the running cooldown ends.
    pub cooldown_until_ms: Option<u64>,
    pub last: Option<Last>,
    /// The LBaaS instance the cluster belongs to.
    pub instance: Option<u64>,
}

impl ClusterStatus {
    fn json(&self) -> Value {
        let last = self.last.as_ref().map(|l| {
            json!({
                "action": l.action,
                "reason": l.reason,
                "value": l.value,
                "backends": l.backends,
                "at_unix_ms": l.at_unix_ms,
                "outcome": l.outcome,
                "detail": l.detail,
                "took_ms": l.took_ms,
            })
        });
        let mut v = json!({
            "metric": self.metric,
            "value": self.value,
            "scale_up_above": self.scale_up_above,
            "scale_down_below": self.scale_down_below,
            "window_s": self.window_s,
            "cooldown_s": self.cooldown_s,
            "backends": self.backends,
            "min_backends": self.min_backends,
            "max_backends": self.max_backends,
            "action": self.action,
            "decisions": {"scale_up": self.scale_up, "scale_down": self.scale_down},
            "outcomes": {"ok": self.ok, "failed": self.failed, "timeout": self.timeouts},
            "running": self.running,
            "cooldown_until_unix_ms": self.cooldown_until_ms,
            "last_decision": last,
        });
        if let Some(id) = self.instance {
            v["lbaas_instance"] = json!(id);
        }
        v
    }
}

/// Every autoscaled cluster's status, by cluster name.
#[derive(Debug, Default)]
pub struct Status(Mutex<BTreeMap<String, ClusterStatus>>);

impl Status {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ClusterStatus>> {
        // Plain data: a panic elsewhere cannot leave it half-written in a harmful way.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One cluster's status as JSON (for the LBaaS API's instance view).
    pub fn cluster_json(&self, cluster: &str) -> Option<Value> {
        self.lock().get(cluster).map(ClusterStatus::json)
    }
}

impl Section for Status {
    fn key(&self) -> &'static str {
        "autoscale"
    }

    fn json(&self) -> Option<Value> {
        let m = self.lock();
        if m.is_empty() {
            return None;
        }
        Some(Value::Object(
            m.iter().map(|(k, s)| (k.clone(), s.json())).collect(),
        ))
    }

    fn prometheus(&self, o: &mut prom::Out) {
        let m = self.lock();
        if m.is_empty() {
            return;
        }
        o.family(
            "switchyard_autoscale_metric_value",
            "gauge",
            "The autoscaling metric over its last full window (label metric: which one).",
        );
        for (c, s) in m.iter() {
            if let Some(v) = s.value {
                o.sample(
                    "switchyard_autoscale_metric_value",
                    &[("cluster", c), ("metric", s.metric)],
                    v,
                );
            }
        }
        o.family(
            "switchyard_autoscale_backends",
            "gauge",
            "Backends of an autoscaled cluster (configured, not draining).",
        );
        for (c, s) in m.iter() {
            o.sample(
                "switchyard_autoscale_backends",
                &[("cluster", c)],
                f64::from(s.backends),
            );
        }
        o.family(
            "switchyard_autoscale_decisions_total",
            "counter",
            "Autoscaling decisions, by action.",
        );
        for (c, s) in m.iter() {
            for (a, n) in [("scale_up", s.scale_up), ("scale_down", s.scale_down)] {
                o.sample(
                    "switchyard_autoscale_decisions_total",
                    &[("cluster", c), ("action", a)],
                    n as f64,
                );
            }
        }
        o.family(
            "switchyard_autoscale_actions_total",
            "counter",
            "Autoscaling hooks and webhooks that ended, by outcome (ok, failed, timeout).",
        );
        for (c, s) in m.iter() {
            for (out, n) in [("ok", s.ok), ("failed", s.failed), ("timeout", s.timeouts)] {
                o.sample(
                    "switchyard_autoscale_actions_total",
                    &[("cluster", c), ("outcome", out)],
                    n as f64,
                );
            }
        }
        o.family(
            "switchyard_autoscale_action_running",
            "gauge",
            "1 while an autoscaling hook or webhook runs.",
        );
        for (c, s) in m.iter() {
            o.sample(
                "switchyard_autoscale_action_running",
                &[("cluster", c)],
                if s.running { 1.0 } else { 0.0 },
            );
        }
    }
}
