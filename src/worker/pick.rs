//! Backend choice for one worker: the cluster's balancer, passive outlier detection and
//! connection limits, shared by the TCP and HTTP engines. HOT PATH: no allocation, no lock;
//! the per-backend `active` atomics are read (they change once per connection anyway).

use crate::balance::outlier::{Outliers, Verdict};
use crate::balance::{new_balancer, Balancer, Outcome, PickCtx, Tried};
use crate::snapshot::{Cluster, Snapshot};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A worker's per-cluster selection state for one snapshot generation.
pub(super) struct Balancers {
    pub(super) version: u64,
    pub(super) by_cluster: Vec<Box<dyn Balancer>>,
    /// Passive outlier detection, for clusters that configure it.
    outliers: Vec<Option<Outliers>>,
    /// Retry budget tokens per cluster.
    budgets: Vec<f64>,
    /// Cluster names and backend addresses, to carry state over to the next generation.
    names: Vec<String>,
    addrs: Vec<Vec<SocketAddr>>,
}

/// The outcome of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pick {
    Backend(usize),
    /// Every candidate is out of rotation (ejected by outlier detection, or all down by
    /// their health checks): this one is used anyway rather than none (fail open).
    FailOpen(usize),
    /// Every remaining candidate is at its connection limit (or the cluster is).
    Full,
    /// Nothing left to try.
    Exhausted,
}

/// Retry tokens a cluster starts with (so a worker that just started may retry a little).
const BUDGET_START: f64 = 3.0;
/// Most tokens a cluster can save up.
const BUDGET_CAP: f64 = 100.0;

impl Balancers {
    /// Balancers for `snap`, keeping outlier state and retry budgets from `prev` for clusters
    /// and backends that are still there.
    pub(super) fn build(snap: &Snapshot, prev: Option<&Balancers>) -> Balancers {
        let mut outliers = Vec::with_capacity(snap.clusters.len());
        let mut budgets = Vec::with_capacity(snap.clusters.len());
        let mut addrs = Vec::with_capacity(snap.clusters.len());
        for c in &snap.clusters {
            let a: Vec<SocketAddr> = c.backends.iter().map(|b| b.addr).collect();
            let old = prev.and_then(|p| {
                let i = p.names.iter().position(|n| *n == c.name)?;
                Some((i, p))
            });
            outliers.push(c.outlier.as_ref().map(|cfg| {
                match old.and_then(|(i, p)| Some((p.outliers.get(i)?.as_ref()?, &p.addrs[i]))) {
                    Some((o, old_addrs)) => o.rebuilt(old_addrs, &a, cfg.clone()),
                    None => Outliers::new(cfg.clone(), a.len()),
                }
            }));
            budgets.push(
                old.and_then(|(i, p)| p.budgets.get(i).copied())
                    .unwrap_or(BUDGET_START),
            );
            addrs.push(a);
        }
        Balancers {
            version: snap.version,
            by_cluster: snap
                .clusters
                .iter()
                .map(|c| new_balancer(c.balance, &c.backends))
                .collect(),
            outliers,
            budgets,
            names: snap.clusters.iter().map(|c| c.name.clone()).collect(),
            addrs,
        }
    }

    /// Picks a backend of cluster `ci` (of the snapshot these balancers were built for),
    /// not in `tried`. Ejected backends are skipped unless every remaining candidate is
    /// ejected (then the first of them is used: fail open); backends at their connection
    /// limit are skipped.
    pub(super) fn pick(
        &mut self,
        c: &Cluster,
        ci: usize,
        tried: Tried,
        ctx: &PickCtx,
        now: Instant,
    ) -> Pick {
        if let Some(max) = c.limits.max_connections {
            let open: u32 = c
                .backends
                .iter()
                .map(|b| b.live.active.load(Ordering::Relaxed))
                .sum();
            if open >= max {
                return Pick::Full;
            }
        }
        let Some(bal) = self.by_cluster.get_mut(ci) else {
            return Pick::Exhausted;
        };
        let outliers = self.outliers.get(ci).and_then(Option::as_ref);
        let per_backend = c.limits.max_connections_per_backend;
        let mut t = tried;
        let mut ejected_fallback = None;
        let mut saw_full = false;
        // Bounded: each round marks one more backend tried (indices past 64 cannot be
        // marked, so the bound also stops a balancer that keeps offering one of those).
        for _ in 0..=c.backends.len() {
            let Some(i) = bal.pick(&c.backends, t, ctx) else {
                break;
            };
            t.insert(i);
            if per_backend.is_some_and(|m| c.backends[i].live.active.load(Ordering::Relaxed) >= m) {
                saw_full = true;
                continue;
            }
            if outliers.is_some_and(|o| o.is_ejected(i, now)) {
                ejected_fallback.get_or_insert(i);
                continue;
            }
            return if c.panic {
                Pick::FailOpen(i)
            } else {
                Pick::Backend(i)
            };
        }
        match ejected_fallback {
            Some(i) => Pick::FailOpen(i),
            None if saw_full => Pick::Full,
            None => Pick::Exhausted,
        }
    }

    /// Feedback after using backend `i` of cluster `ci`: latency-aware balancers learn from
    /// it, and outlier detection counts failures. Returns an ejection, if this caused one.
    ///
    /// `verdict`: the outcome is a final one for outlier detection (a TCP connect, an HTTP
    /// exchange or failure); an HTTP connect success is not (the answer may still be a 5xx).
    pub(super) fn observe(
        &mut self,
        ci: usize,
        i: usize,
        rtt: Duration,
        outcome: Outcome,
        now: Instant,
        verdict: bool,
    ) -> Option<Duration> {
        if let Some(b) = self.by_cluster.get_mut(ci) {
            b.observe(i, rtt, outcome);
        }
        if !verdict {
            return None;
        }
        let o = self.outliers.get_mut(ci)?.as_mut()?;
        match o.observe(i, outcome == Outcome::Success, now) {
            Verdict::Ejected(d) => Some(d),
            Verdict::Nothing | Verdict::Capped => None,
        }
    }

    /// Earns retry tokens for one request routed to cluster `ci` (`budget` per request).
    #[inline]
    pub(super) fn earn(&mut self, ci: usize, budget: f64) {
        if let Some(t) = self.budgets.get_mut(ci) {
            *t = (*t + budget).min(BUDGET_CAP);
        }
    }

    /// Whether cluster `ci` has a retry token to spend.
    #[inline]
    pub(super) fn has_budget(&self, ci: usize) -> bool {
        self.budgets.get(ci).is_some_and(|&t| t >= 1.0)
    }

    /// Spends one retry token of cluster `ci`; false when the budget is used up.
    #[inline]
    pub(super) fn spend(&mut self, ci: usize) -> bool {
        match self.budgets.get_mut(ci) {
            Some(t) if *t >= 1.0 => {
                *t -= 1.0;
                true
            }
            _ => false,
        }
    }

    /// Address and cluster name of backend `i` of cluster `ci` (for logs).
    pub(super) fn describe(&self, ci: usize, i: usize) -> (&str, Option<SocketAddr>) {
        (
            self.names.get(ci).map_or("?", String::as_str),
            self.addrs.get(ci).and_then(|a| a.get(i)).copied(),
        )
    }
}
