//! A worker's mutable selection state for one cluster: the algorithm's cursor, running
//! scores or latency estimates and the passive outlier counts, numbered like the cluster's
//! [`SelectionTable`] and carried over by backend address when a snapshot renumbers them.
//!
//! A snapshot change costs a worker O(1) per cluster ([`PickState::follow`]: an `Arc`
//! comparison, and an `Arc` clone when the table changed); the O(n) carry-over happens at the
//! cluster's next pick or feedback, and only if the backend addresses moved (a weight change
//! or slow-start step keeps the numbering, so nothing is carried). Nothing here is ever
//! proportional to a Maglev table. HOT PATH otherwise: no allocation, no lock.

use super::outlier::{Outliers, Verdict};
use super::table::{Algo, AlgoTag};
use super::{
    LeastConn, Outcome, P2cEwma, PickCtx, Renumber, RoundRobin, SelectionTable, SmoothWeighted,
    Tried,
};
use crate::config::resilience::OutlierConfig;
use crate::snapshot::Backend;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The per-algorithm part of [`PickState`]; matches the table's [`Algo`].
#[derive(Debug, Clone)]
enum AlgoState {
    RoundRobin(RoundRobin),
    Smooth(SmoothWeighted),
    LeastConn(LeastConn),
    P2c(P2cEwma),
    /// The order of picks without a hash key.
    Hash(RoundRobin),
}

impl AlgoState {
    fn new(table: &SelectionTable) -> AlgoState {
        match table.tag() {
            AlgoTag::RoundRobin => AlgoState::RoundRobin(RoundRobin::default()),
            AlgoTag::Smooth => AlgoState::Smooth(SmoothWeighted::new(table.len())),
            AlgoTag::LeastConn => AlgoState::LeastConn(LeastConn::default()),
            AlgoTag::P2c => AlgoState::P2c(P2cEwma::new(table.len())),
            AlgoTag::Hash => AlgoState::Hash(RoundRobin::default()),
        }
    }

    fn tag(&self) -> AlgoTag {
        match self {
            AlgoState::RoundRobin(_) => AlgoTag::RoundRobin,
            AlgoState::Smooth(_) => AlgoTag::Smooth,
            AlgoState::LeastConn(_) => AlgoTag::LeastConn,
            AlgoState::P2c(_) => AlgoTag::P2c,
            AlgoState::Hash(_) => AlgoTag::Hash,
        }
    }

    /// Cursors are positions, kept as they are (picks take them modulo the count).
    fn renumber(&mut self, r: &Renumber) {
        match self {
            AlgoState::Smooth(s) => s.renumber(r),
            AlgoState::P2c(p) => p.renumber(r),
            AlgoState::RoundRobin(_) | AlgoState::LeastConn(_) | AlgoState::Hash(_) => {}
        }
    }
}

/// One worker's state for one cluster (see the module comment).
#[derive(Debug, Clone)]
pub struct PickState {
    /// The cluster's table in the latest snapshot this state follows: what indices mean.
    table: Arc<SelectionTable>,
    /// The table `algo` and `outliers` are numbered for: lags behind `table` after a snapshot
    /// change until the next use carries them over.
    numbered_for: Arc<SelectionTable>,
    algo: AlgoState,
    /// Passive outlier detection, for clusters that configure it.
    outliers: Option<Outliers>,
}

impl PickState {
    /// Fresh state for a cluster's table.
    pub fn new(table: Arc<SelectionTable>, outlier: Option<&OutlierConfig>) -> PickState {
        PickState {
            algo: AlgoState::new(&table),
            outliers: outlier.map(|cfg| Outliers::new(cfg.clone(), table.len())),
            numbered_for: table.clone(),
            table,
        }
    }

    /// Follows the same cluster into a new snapshot: its table there and its outlier
    /// settings. O(1): the state itself is carried over lazily.
    pub fn follow(&mut self, table: &Arc<SelectionTable>, outlier: Option<&OutlierConfig>) {
        if !Arc::ptr_eq(&self.table, table) {
            self.table = table.clone();
        }
        match (&mut self.outliers, outlier) {
            (Some(o), Some(cfg)) => o.configure(cfg),
            (None, None) => {}
            (o @ Some(_), None) => *o = None,
            // Numbered for the table the rest of the state is numbered for (it is carried
            // over with it).
            (o @ None, Some(cfg)) => *o = Some(Outliers::new(cfg.clone(), self.numbered_for.len())),
        }
    }

    /// The table picks use.
    #[inline]
    pub fn table(&self) -> &Arc<SelectionTable> {
        &self.table
    }

    /// Whether [`PickState::observe`] or [`PickState::verdict`] may change anything: a
    /// latency-aware balancer learns, outlier detection counts, or the state still waits to
    /// be carried over (which either would do first). When false both are no-ops.
    #[inline]
    pub fn learns(&self) -> bool {
        matches!(self.algo, AlgoState::P2c(_)) || self.outliers.is_some() || self.is_behind()
    }

    /// Whether the state still waits to be carried over to the current table's numbering.
    pub fn is_behind(&self) -> bool {
        !Arc::ptr_eq(&self.table, &self.numbered_for)
    }

    #[inline]
    fn settle(&mut self) {
        if self.is_behind() {
            self.carry_over();
        }
    }

    /// Carries the state over to the current table's numbering, by backend address.
    #[cold]
    fn carry_over(&mut self) {
        let r = Renumber::new(&self.numbered_for, &self.table);
        if self.algo.tag() == self.table.tag() {
            self.algo.renumber(&r);
        } else {
            // Another algorithm (a round-robin cluster entering or leaving slow start, or a
            // config change): its state starts afresh.
            self.algo = AlgoState::new(&self.table);
        }
        if let Some(o) = &mut self.outliers {
            o.renumber(&r);
        }
        self.numbered_for = self.table.clone();
    }

    /// Picks a backend of `backends` (the list the current table was built for) not in
    /// `tried`; `None` when every one was tried.
    #[inline]
    pub fn pick(&mut self, backends: &[Backend], tried: Tried, ctx: &PickCtx) -> Option<usize> {
        self.settle();
        match (&mut self.algo, &self.table.algo) {
            (AlgoState::RoundRobin(rr), _) => rr.pick(backends, tried, ctx),
            (AlgoState::Smooth(s), _) => s.pick(backends, tried, ctx),
            (AlgoState::LeastConn(lc), _) => lc.pick(backends, tried, ctx),
            (AlgoState::P2c(p), Algo::P2c(t)) => p.pick_at(t, backends, tried, Instant::now()),
            (AlgoState::Hash(rr), Algo::Hash(m)) => m.pick(rr, backends, tried, ctx),
            // Cannot happen after `settle` (the state follows the table's algorithm).
            (AlgoState::P2c(_) | AlgoState::Hash(_), _) => {
                (0..backends.len()).find(|&i| !tried.contains(i))
            }
        }
    }

    /// Feedback on backend `i`: `rtt` is the connect time for TCP (time to first byte or
    /// the exchange for HTTP). Latency-aware algorithms learn from it; the others ignore it.
    pub fn observe(&mut self, i: usize, rtt: Duration, outcome: Outcome) {
        self.settle();
        if let AlgoState::P2c(p) = &mut self.algo {
            p.observe_at(i, rtt, outcome, Instant::now());
        }
    }

    /// Is backend `i` ejected by passive outlier detection now?
    #[inline]
    pub fn is_ejected(&mut self, i: usize, now: Instant) -> bool {
        self.settle();
        self.outliers.as_ref().is_some_and(|o| o.is_ejected(i, now))
    }

    /// A final outcome for outlier detection (`Verdict::Nothing` when the cluster has none).
    pub fn verdict(&mut self, i: usize, ok: bool, now: Instant) -> Verdict {
        self.settle();
        match &mut self.outliers {
            Some(o) => o.observe(i, ok, now),
            None => Verdict::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_backends;
    use crate::config::BalanceKind;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn table(kind: BalanceKind, b: &[Backend]) -> Arc<SelectionTable> {
        Arc::new(SelectionTable::build("c", kind, b))
    }

    /// Backends at ports `9000 + p` for each `p`, with these weights.
    fn at(ports: &[u16], weights: &[u32]) -> Vec<Backend> {
        let mut b = test_backends(weights);
        for (b, &p) in b.iter_mut().zip(ports) {
            b.addr = ([127, 0, 0, 1], 9000 + p).into();
            b.name = b.addr.to_string();
        }
        b
    }

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 100,
        }
    }

    #[test]
    fn smooth_scores_follow_addresses_across_reorder_add_remove() {
        // Weights 5,1,1 give a,a,b,a,c,a,a; after three picks the scores are mid-cycle.
        let b1 = at(&[0, 1, 2], &[5, 1, 1]);
        let mut s = PickState::new(table(BalanceKind::Weighted, &b1), None);
        let first: Vec<_> = (0..3)
            .map(|_| s.pick(&b1, Tried::default(), &PickCtx::NONE).unwrap())
            .collect();
        assert_eq!(first, [0, 0, 1]);
        // Reordered (c, a, b), and a new backend d of weight 0 that never wins.
        let b2 = at(&[2, 0, 1, 3], &[1, 5, 1, 0]);
        s.follow(&table(BalanceKind::Weighted, &b2), None);
        assert!(s.is_behind(), "carried over lazily");
        let rest: Vec<SocketAddr> = (0..4)
            .map(|_| b2[s.pick(&b2, Tried::default(), &PickCtx::NONE).unwrap()].addr)
            .collect();
        assert!(!s.is_behind());
        let want: Vec<SocketAddr> = [0, 2, 0, 0].iter().map(|&i| b1[i].addr).collect();
        assert_eq!(rest, want, "the cycle goes on as a, c, a, a");
        // b removed: a and c keep their scores.
        let b3 = at(&[0, 2], &[5, 1]);
        s.follow(&table(BalanceKind::Weighted, &b3), None);
        let n: usize = (0..6)
            .filter(|_| s.pick(&b3, Tried::default(), &PickCtx::NONE) == Some(0))
            .count();
        assert_eq!(n, 5);
    }

    #[test]
    fn outlier_state_and_estimates_follow_addresses() {
        let t0 = Instant::now();
        let b1 = at(&[0, 1, 2], &[1, 1, 1]);
        let mut s = PickState::new(table(BalanceKind::P2cEwma, &b1), Some(&cfg()));
        // Backend 1 (port 9001) fails twice: ejected.
        assert_eq!(s.verdict(1, false, t0), Verdict::Nothing);
        assert!(matches!(s.verdict(1, false, t0), Verdict::Ejected(_)));
        // Backend 2 (9002) is known to be slow.
        s.observe(2, Duration::from_millis(50), Outcome::Success);
        // Reorder and add: 9002, 9005, 9001, 9000.
        let b2 = at(&[2, 5, 1, 0], &[1, 1, 1, 1]);
        s.follow(&table(BalanceKind::P2cEwma, &b2), Some(&cfg()));
        let ejected: Vec<bool> = (0..4).map(|i| s.is_ejected(i, t0)).collect();
        assert_eq!(ejected, [false, false, true, false]);
        // The slow backend (now index 0) is avoided; the others share.
        let mut picks = [0; 4];
        for _ in 0..300 {
            picks[s.pick(&b2, Tried::default(), &PickCtx::NONE).unwrap()] += 1;
        }
        assert!(picks[0] < 30, "{picks:?}");
        // Outlier detection switched off, then on again: fresh counts.
        s.follow(&table(BalanceKind::P2cEwma, &b2), None);
        assert!(!s.is_ejected(2, t0));
        s.follow(&table(BalanceKind::P2cEwma, &b2), Some(&cfg()));
        assert!(!s.is_ejected(2, t0));
        assert_eq!(s.verdict(2, false, t0), Verdict::Nothing, "count restarted");
    }

    #[test]
    fn a_weight_change_builds_and_carries_nothing_for_rr_and_least_conn() {
        for kind in [
            BalanceKind::Weighted,
            BalanceKind::LeastConn,
            BalanceKind::RoundRobin,
        ] {
            // Backend 2 in slow start (round robin then picks by weight too).
            let old = at(&[0, 1, 2], &[300, 300, 30]);
            let t1 = table(kind, &old);
            let mut s = PickState::new(t1.clone(), Some(&cfg()));
            s.pick(&old, Tried::default(), &PickCtx::NONE);
            // A slow-start step: the control plane reuses the table...
            let new = at(&[0, 1, 2], &[300, 300, 60]);
            let t2 = SelectionTable::reuse_or_build("c", kind, &new, Some((&t1, &old)));
            assert!(Arc::ptr_eq(&t1, &t2), "{kind:?}");
            // ...and the worker has nothing to do.
            s.follow(&t2, Some(&cfg()));
            assert!(!s.is_behind(), "{kind:?}");
        }
    }

    #[test]
    fn a_maglev_step_keeps_the_numbering() {
        // A weight step rebuilds a hash cluster's table (in the control plane), but the
        // addresses are the same: the worker keeps its state as it is.
        let old = at(&[0, 1, 2], &[100, 100, 100]);
        let new = at(&[0, 1, 2], &[100, 100, 10]);
        let t1 = table(BalanceKind::Hash, &old);
        let t2 = SelectionTable::reuse_or_build("c", BalanceKind::Hash, &new, Some((&t1, &old)));
        assert!(!Arc::ptr_eq(&t1, &t2));
        let mut s = PickState::new(t1, Some(&cfg()));
        let now = Instant::now();
        s.verdict(2, false, now);
        s.verdict(2, false, now);
        s.follow(&t2, Some(&cfg()));
        assert!(s.is_ejected(2, now));
        // Keys now follow the new table.
        let m = t2.maglev().unwrap();
        for k in 0..100u64 {
            let ctx = PickCtx { hash: Some(k) };
            assert_eq!(s.pick(&new, Tried::default(), &ctx), m.lookup(k));
        }
    }

    #[test]
    fn switching_algorithms_starts_afresh() {
        // A round-robin cluster enters slow start (smooth weighted) and leaves it.
        let even = at(&[0, 1], &[100, 100]);
        let ramp = at(&[0, 1, 2], &[100, 100, 1]);
        let after = at(&[0, 1, 2], &[100, 100, 100]);
        let mut s = PickState::new(table(BalanceKind::RoundRobin, &even), None);
        for (b, n) in [(&ramp, 3), (&after, 3), (&even, 2)] {
            s.follow(&table(BalanceKind::RoundRobin, b), None);
            let mut seen: HashMap<usize, u32> = HashMap::new();
            for _ in 0..(n * 100) {
                *seen
                    .entry(s.pick(b, Tried::default(), &PickCtx::NONE).unwrap())
                    .or_default() += 1;
            }
            assert_eq!(seen.len(), n, "{seen:?}");
        }
    }
}
