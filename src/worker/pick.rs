//! Backend choice for one worker: the cluster's pick state, passive outlier detection,
//! retry budgets and connection limits, shared by the TCP and HTTP engines. HOT PATH: no
//! allocation, no lock; the per-backend `active` atomics are read (they change once per
//! connection anyway).
//!
//! The selection tables themselves (Maglev, weight sums) come built in the snapshot; here is
//! only this worker's mutable state, carried from snapshot to snapshot by cluster name and
//! backend address. A snapshot change costs O(clusters) ([`Balancers::update`]); a cluster's
//! state is renumbered at its next use, in O(backends), and only when addresses moved.

use crate::balance::outlier::Verdict;
use crate::balance::{Outcome, PickCtx, PickState, Tried};
use crate::snapshot::{Cluster, Snapshot};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A worker's per-cluster selection state, for the snapshot generation `version`.
#[derive(Clone)]
pub(super) struct Balancers {
    pub(super) version: u64,
    /// Indexed like the clusters of snapshot `version`.
    pub(super) by_cluster: Vec<PickState>,
    /// Retry budget per cluster.
    budgets: Vec<Budget>,
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
/// Fewest tokens a cluster may save up; busier clusters save up what they earned in the last
/// [`Balancers::roll_budgets`] period (a second): a backend that dies with a second's worth
/// of requests in flight gets them all retried, while a backend that keeps failing still
/// costs at most the budget's fraction of extra requests.
const BUDGET_CAP_MIN: f64 = 100.0;

/// One cluster's retry budget on one worker: a token bucket.
#[derive(Clone, Copy, Debug)]
struct Budget {
    tokens: f64,
    /// Tokens earned since the last roll.
    earned: f64,
    /// Most tokens it may hold: what it earned in the last period, at least `BUDGET_CAP_MIN`.
    cap: f64,
}

impl Budget {
    const START: Budget = Budget {
        tokens: BUDGET_START,
        earned: 0.0,
        cap: BUDGET_CAP_MIN,
    };
}

impl Balancers {
    /// Balancers for `snap`, carrying over the pick state, outlier state and retry budgets
    /// of `prev` for clusters and backends that are still there. Clones `prev` (O(backends));
    /// [`Balancers::update`] does the same in place, without the copy.
    pub(super) fn build(snap: &Snapshot, prev: Option<&Balancers>) -> Balancers {
        let mut b = prev.cloned().unwrap_or(Balancers {
            version: snap.version,
            by_cluster: Vec::new(),
            budgets: Vec::new(),
        });
        b.follow(snap);
        b
    }

    /// Moves on to `snap` (nothing to do when it is the snapshot these follow already).
    /// O(clusters): no selection table is built, and a cluster's per-backend state is
    /// carried over at its next use.
    pub(super) fn update(&mut self, snap: &Snapshot) {
        if self.version != snap.version || self.by_cluster.len() != snap.clusters.len() {
            self.follow(snap);
        }
    }

    fn follow(&mut self, snap: &Snapshot) {
        self.version = snap.version;
        let same_clusters = self.by_cluster.len() == snap.clusters.len()
            && self
                .by_cluster
                .iter()
                .zip(&snap.clusters)
                .all(|(s, c)| s.table().cluster() == c.name);
        if !same_clusters {
            self.regroup(snap);
        }
        for (s, c) in self.by_cluster.iter_mut().zip(&snap.clusters) {
            s.follow(&c.table, c.outlier.as_ref());
        }
    }

    /// Clusters were added, removed or reordered: states move to their cluster's new index
    /// (by name), new clusters start fresh.
    #[cold]
    fn regroup(&mut self, snap: &Snapshot) {
        let mut moved: Vec<Option<(PickState, Budget)>> = Vec::new();
        moved.resize_with(snap.clusters.len(), || None);
        for (s, budget) in self.by_cluster.drain(..).zip(self.budgets.drain(..)) {
            if let Some(&i) = snap.cluster_index.get(s.table().cluster()) {
                if let Some(slot @ None) = moved.get_mut(i) {
                    *slot = Some((s, budget));
                }
            }
        }
        for (m, c) in moved.into_iter().zip(&snap.clusters) {
            let (s, budget) = m.unwrap_or_else(|| {
                (
                    PickState::new(c.table.clone(), c.outlier.as_ref()),
                    Budget::START,
                )
            });
            self.by_cluster.push(s);
            self.budgets.push(budget);
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
        let Some(state) = self.by_cluster.get_mut(ci) else {
            return Pick::Exhausted;
        };
        let per_backend = c.limits.max_connections_per_backend;
        let mut t = tried;
        let mut ejected_fallback = None;
        let mut saw_full = false;
        // Bounded: each round marks one more backend tried (indices past 64 cannot be
        // marked, so the bound also stops a balancer that keeps offering one of those).
        for _ in 0..=c.backends.len() {
            let Some(i) = state.pick(&c.backends, t, ctx) else {
                break;
            };
            t.insert(i);
            if per_backend.is_some_and(|m| c.backends[i].live.active.load(Ordering::Relaxed) >= m) {
                saw_full = true;
                continue;
            }
            if state.is_ejected(i, now) {
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
        let state = self.by_cluster.get_mut(ci)?;
        state.observe(i, rtt, outcome);
        if !verdict {
            return None;
        }
        match state.verdict(i, outcome == Outcome::Success, now) {
            Verdict::Ejected(d) => Some(d),
            Verdict::Nothing | Verdict::Capped => None,
        }
    }

    /// Whether feedback on cluster `ci`'s backends ([`Balancers::observe`]) may change
    /// anything (a latency-aware balancer, outlier detection): most clusters have neither,
    /// and their per-request feedback is skipped.
    #[inline]
    pub(super) fn learns(&self, ci: usize) -> bool {
        self.by_cluster.get(ci).is_some_and(PickState::learns)
    }

    /// The index, in these balancers, of cluster `c`: cluster `ci` of snapshot `version`,
    /// which may be older than these balancers' (a request that started before a config
    /// change). `Some` when the cluster is still there with the same backends in the same
    /// order (only weights, limits or settings changed): picks, outlier counts and the retry
    /// budget then carry on across the change. `None` when it changed shape.
    #[inline]
    pub(super) fn index_for(&self, version: u64, c: &Cluster, ci: usize) -> Option<usize> {
        if version == self.version {
            return Some(ci);
        }
        self.follow_index(c, ci)
    }

    #[cold]
    fn follow_index(&self, c: &Cluster, ci: usize) -> Option<usize> {
        let i = self.follow_name(&c.name, ci)?;
        let table = self.by_cluster.get(i)?.table();
        let same_backends = table.len() == c.backends.len()
            && c.backends
                .iter()
                .enumerate()
                .all(|(j, b)| table.addr(j) == Some(b.addr));
        same_backends.then_some(i)
    }

    /// The index, in these balancers, of cluster `c` (cluster `ci` of snapshot `version`) by
    /// name alone, whatever happened to its backends (a health check took one out): what
    /// the cluster's retry budget is found by.
    #[inline]
    pub(super) fn budget_index(&self, version: u64, c: &Cluster, ci: usize) -> Option<usize> {
        if version == self.version {
            return Some(ci);
        }
        self.follow_name(&c.name, ci)
    }

    #[cold]
    fn follow_name(&self, name: &str, ci: usize) -> Option<usize> {
        match self.by_cluster.get(ci) {
            Some(s) if s.table().cluster() == name => Some(ci),
            _ => self
                .by_cluster
                .iter()
                .position(|s| s.table().cluster() == name),
        }
    }

    /// Earns retry tokens for one request routed to cluster `ci` (`budget` per request).
    #[inline]
    pub(super) fn earn(&mut self, ci: usize, budget: f64) {
        if let Some(b) = self.budgets.get_mut(ci) {
            b.tokens = (b.tokens + budget).min(b.cap);
            b.earned += budget;
        }
    }

    /// Whether cluster `ci` has a retry token to spend.
    #[inline]
    pub(super) fn has_budget(&self, ci: usize) -> bool {
        self.budgets.get(ci).is_some_and(|b| b.tokens >= 1.0)
    }

    /// Spends one retry token of cluster `ci`; false when the budget is used up.
    #[inline]
    pub(super) fn spend(&mut self, ci: usize) -> bool {
        match self.budgets.get_mut(ci) {
            Some(b) if b.tokens >= 1.0 => {
                b.tokens -= 1.0;
                true
            }
            _ => false,
        }
    }

    /// Once a period (the worker's one-second housekeeping tick): each cluster may save up
    /// what it earned during the period, at least `BUDGET_CAP_MIN` tokens.
    pub(super) fn roll_budgets(&mut self) {
        for b in &mut self.budgets {
            b.cap = b.earned.max(BUDGET_CAP_MIN);
            b.tokens = b.tokens.min(b.cap);
            b.earned = 0.0;
        }
    }

    /// Address and cluster name of backend `i` of cluster `ci` (for logs).
    pub(super) fn describe(&self, ci: usize, i: usize) -> (&str, Option<SocketAddr>) {
        match self.by_cluster.get(ci) {
            Some(s) => (s.table().cluster(), s.table().addr(i)),
            None => ("?", None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::snapshot::Runtime;
    use std::sync::Arc;

    fn config(clusters: &[(&str, &str, &[u16])]) -> crate::config::Config {
        let mut t =
            String::from("[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncluster = \"a\"\n");
        for (name, balance, ports) in clusters {
            let b: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
            t.push_str(&format!(
                "[[clusters]]\nname = \"{name}\"\nbalance = \"{balance}\"\nbackends = [{}]\n\
                 [clusters.outlier]\nconsecutive_failures = 1\n",
                b.join(", ")
            ));
        }
        parse_str(&t).expect("config")
    }

    fn snap(v: u64, cfg: &crate::config::Config, prev: Option<&Snapshot>) -> Snapshot {
        Snapshot::build_with_slots(cfg, v, prev, &[0], &Runtime::default())
    }

    fn addr(p: u16) -> SocketAddr {
        ([127, 0, 0, 1], p).into()
    }

    #[test]
    fn state_follows_clusters_by_name_and_backends_by_address() {
        let now = Instant::now();
        let c1 = config(&[("a", "weighted", &[1, 2, 3]), ("b", "least_conn", &[4, 5])]);
        let s1 = snap(1, &c1, None);
        let mut b = Balancers::build(&s1, None);
        // Eject a's 127.0.0.1:2 and b's 127.0.0.1:5; spend a's budget.
        let ej = b.observe(0, 1, Duration::ZERO, Outcome::Failure, now, true);
        assert!(ej.is_some());
        assert!(b
            .observe(1, 1, Duration::ZERO, Outcome::Failure, now, true)
            .is_some());
        while b.spend(0) {}
        assert!(!b.has_budget(0) && b.has_budget(1));
        // Clusters swapped, one added; backends of a reordered, one removed, one added.
        let c2 = config(&[
            ("new", "round_robin", &[9]),
            ("b", "least_conn", &[4, 5]),
            ("a", "weighted", &[3, 7, 2]),
        ]);
        let s2 = snap(2, &c2, Some(&s1));
        b.update(&s2);
        assert_eq!(b.version, 2);
        assert_eq!(b.describe(2, 2), ("a", Some(addr(2))));
        assert_eq!(b.describe(0, 0), ("new", Some(addr(9))));
        assert!(b.by_cluster[2].is_behind(), "a is renumbered lazily");
        assert!(!b.by_cluster[1].is_behind(), "b kept its table");
        assert!(!b.has_budget(2) && b.has_budget(1) && b.has_budget(0));
        // 127.0.0.1:2 is still ejected in a (now index 2): picks skip it.
        let a = &s2.clusters[2];
        for _ in 0..20 {
            let p = b.pick(a, 2, Tried::default(), &PickCtx::NONE, now);
            assert!(matches!(p, Pick::Backend(0 | 1)), "{p:?}");
        }
        assert!(!b.by_cluster[2].is_behind());
        let bc = &s2.clusters[1];
        for _ in 0..10 {
            assert_eq!(
                b.pick(bc, 1, Tried::default(), &PickCtx::NONE, now),
                Pick::Backend(0)
            );
        }
    }

    #[test]
    fn a_cluster_of_an_older_snapshot_maps_to_its_index_while_its_backends_stay() {
        let c1 = config(&[("a", "round_robin", &[1, 2]), ("b", "round_robin", &[3, 4])]);
        let s1 = snap(1, &c1, None);
        let mut b = Balancers::build(&s1, None);
        assert_eq!(b.index_for(1, &s1.clusters[1], 1), Some(1));
        // Reordered clusters, same backends: b is found by name.
        let c2 = config(&[("b", "round_robin", &[3, 4]), ("a", "round_robin", &[1, 2])]);
        let s2 = snap(2, &c2, Some(&s1));
        b.update(&s2);
        assert_eq!(b.index_for(1, &s1.clusters[1], 1), Some(0));
        assert_eq!(b.index_for(1, &s1.clusters[0], 0), Some(1));
        // a's backends changed: a session of snapshot 1 cannot use the new numbering.
        let c3 = config(&[("b", "round_robin", &[3, 4]), ("a", "round_robin", &[2, 1])]);
        let s3 = snap(3, &c3, Some(&s2));
        b.update(&s3);
        assert_eq!(b.index_for(1, &s1.clusters[0], 0), None);
        assert_eq!(
            b.budget_index(1, &s1.clusters[0], 0),
            Some(1),
            "same budget"
        );
        assert_eq!(b.index_for(1, &s1.clusters[1], 1), Some(0));
        // A cluster that is gone.
        let c4 = config(&[("a", "round_robin", &[2, 1])]);
        let s4 = snap(4, &c4, Some(&s3));
        b.update(&s4);
        assert_eq!(b.index_for(1, &s1.clusters[1], 1), None);
        assert_eq!(b.budget_index(1, &s1.clusters[1], 1), None);
    }

    #[test]
    fn a_busy_cluster_saves_up_a_period_of_retry_tokens() {
        let c = config(&[("a", "round_robin", &[1, 2]), ("b", "round_robin", &[3, 4])]);
        let mut b = Balancers::build(&snap(1, &c, None), None);
        let spend_all = |b: &mut Balancers, ci| {
            let mut n = 0;
            while b.spend(ci) {
                n += 1;
            }
            n
        };
        // Before any period: at most BUDGET_CAP_MIN.
        for _ in 0..5000 {
            b.earn(0, 0.2);
            b.earn(1, 0.2);
        }
        assert_eq!(spend_all(&mut b, 0), 100);
        // a earned 1,000 tokens in the period: it may hold that many now; b earns little.
        b.roll_budgets();
        for _ in 0..5000 {
            b.earn(0, 0.2);
        }
        for _ in 0..100 {
            b.earn(1, 0.2);
        }
        b.roll_budgets();
        for _ in 0..10_000 {
            b.earn(0, 0.2);
        }
        for _ in 0..10_000 {
            b.earn(1, 0.2);
        }
        assert_eq!(spend_all(&mut b, 0), 1000);
        assert_eq!(
            spend_all(&mut b, 1),
            100,
            "a quiet cluster keeps the minimum"
        );
        // A quiet period lowers the cap again, and what it held above it.
        b.roll_budgets();
        b.roll_budgets();
        for _ in 0..10_000 {
            b.earn(0, 0.2);
        }
        assert_eq!(spend_all(&mut b, 0), 100);
    }

    #[test]
    fn a_snapshot_change_that_keeps_the_tables_moves_nothing() {
        let c1 = config(&[("a", "round_robin", &[1, 2]), ("b", "p2c_ewma", &[3, 4])]);
        let s1 = snap(1, &c1, None);
        let mut b = Balancers::build(&s1, None);
        let s2 = snap(2, &c1, Some(&s1));
        for (x, y) in s1.clusters.iter().zip(&s2.clusters) {
            assert!(Arc::ptr_eq(&x.table, &y.table));
        }
        b.update(&s2);
        assert!(b.by_cluster.iter().all(|s| !s.is_behind()));
        assert_eq!(b.version, 2);
        // `build` with a previous state carries it too (a copy).
        let copy = Balancers::build(&s2, Some(&b));
        assert_eq!(copy.by_cluster.len(), 2);
    }
}
