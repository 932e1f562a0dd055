//! Selection tables: the immutable half of backend selection, built once per snapshot by the
//! control plane (`Snapshot::build*`) and shared by every worker through the snapshot's `Arc`.
//!
//! A table is derived from one cluster's backends in rotation (names, addresses, weights) and
//! its algorithm: the Maglev lookup table for `hash`, the weight prefix sums for `p2c_ewma`, and
//! for every algorithm the backend addresses in index order plus an index sorted by address.
//! The next snapshot reuses a table (`Arc::clone`) when what it was built from did not change,
//! so a health flap in another cluster rebuilds no 65,537-slot Maglev table, and a slow-start
//! step of a round-robin or least-connections cluster (which read weights at pick time) builds
//! nothing at all.
//!
//! Workers keep the mutable half ([`super::PickState`]: cursors, current weights, latency
//! estimates, outlier counts) keyed by backend address; [`Renumber`] carries it from one
//! table's numbering to another's by binary search in the sorted address index.

use super::{Maglev, P2cTable};
use crate::config::BalanceKind;
use crate::snapshot::Backend;
use std::net::SocketAddr;
use std::sync::Arc;

/// What picks, as chosen from the configured [`BalanceKind`] and the backend weights.
#[derive(Debug)]
pub(super) enum Algo {
    RoundRobin,
    /// Smooth weighted round robin: `weighted` clusters, and `round_robin` ones while a
    /// backend is in slow start (its weight is then below the others').
    Smooth,
    LeastConn,
    P2c(P2cTable),
    Hash(Maglev),
}

/// Which [`Algo`] a cluster picks with (without building its tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AlgoTag {
    RoundRobin,
    Smooth,
    LeastConn,
    P2c,
    Hash,
}

impl AlgoTag {
    fn choose(kind: BalanceKind, backends: &[Backend]) -> AlgoTag {
        match kind {
            // Round robin ignores weights, except while a backend is in slow start: smooth
            // weighted round robin over equal weights is round robin, and it honours the ramp.
            BalanceKind::RoundRobin if backends.windows(2).any(|w| w[0].weight != w[1].weight) => {
                AlgoTag::Smooth
            }
            BalanceKind::RoundRobin => AlgoTag::RoundRobin,
            BalanceKind::Weighted => AlgoTag::Smooth,
            BalanceKind::LeastConn => AlgoTag::LeastConn,
            BalanceKind::P2cEwma => AlgoTag::P2c,
            BalanceKind::Hash => AlgoTag::Hash,
        }
    }

    /// The table holds figures derived from the weights (the others read `Backend::weight`
    /// at pick time, so a weight change keeps their table).
    fn uses_weights(self) -> bool {
        matches!(self, AlgoTag::P2c | AlgoTag::Hash)
    }

    /// The table holds figures derived from the backend names.
    fn uses_names(self) -> bool {
        matches!(self, AlgoTag::Hash)
    }
}

/// One cluster's immutable selection table (see the module comment).
#[derive(Debug)]
pub struct SelectionTable {
    cluster: String,
    kind: BalanceKind,
    pub(super) algo: Algo,
    /// Backend addresses, in the snapshot's index order.
    addrs: Box<[SocketAddr]>,
    /// `(address, index)` sorted by address, for [`SelectionTable::index_of`].
    by_addr: Box<[(SocketAddr, u32)]>,
}

impl SelectionTable {
    /// Builds the table of cluster `cluster` for these backends (indices into this list).
    /// Control plane only: a `hash` cluster's table costs milliseconds.
    pub fn build(cluster: &str, kind: BalanceKind, backends: &[Backend]) -> SelectionTable {
        let algo = match AlgoTag::choose(kind, backends) {
            AlgoTag::RoundRobin => Algo::RoundRobin,
            AlgoTag::Smooth => Algo::Smooth,
            AlgoTag::LeastConn => Algo::LeastConn,
            AlgoTag::P2c => Algo::P2c(P2cTable::new(backends)),
            AlgoTag::Hash => Algo::Hash(Maglev::new(backends)),
        };
        let addrs: Box<[SocketAddr]> = backends.iter().map(|b| b.addr).collect();
        let mut by_addr: Vec<(SocketAddr, u32)> = addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| (a, i as u32))
            .collect();
        by_addr.sort_unstable();
        SelectionTable {
            cluster: cluster.to_string(),
            kind,
            algo,
            addrs,
            by_addr: by_addr.into_boxed_slice(),
        }
    }

    /// The table for `backends`: `prev` (the same cluster's table in the previous snapshot,
    /// with the backends it was built for) when it still fits, else a new one.
    pub fn reuse_or_build(
        cluster: &str,
        kind: BalanceKind,
        backends: &[Backend],
        prev: Option<(&Arc<SelectionTable>, &[Backend])>,
    ) -> Arc<SelectionTable> {
        match prev {
            Some((table, old)) if table.fits(cluster, kind, old, backends) => table.clone(),
            _ => Arc::new(SelectionTable::build(cluster, kind, backends)),
        }
    }

    /// Whether this table, built for `old`, also serves `new`.
    fn fits(&self, cluster: &str, kind: BalanceKind, old: &[Backend], new: &[Backend]) -> bool {
        let tag = self.tag();
        self.cluster == cluster
            && self.kind == kind
            && old.len() == self.addrs.len()
            && old.len() == new.len()
            && AlgoTag::choose(kind, new) == tag
            && old.iter().zip(new).all(|(o, n)| {
                o.addr == n.addr
                    && (!tag.uses_weights() || o.weight == n.weight)
                    && (!tag.uses_names() || o.name == n.name)
            })
    }

    pub(super) fn tag(&self) -> AlgoTag {
        match self.algo {
            Algo::RoundRobin => AlgoTag::RoundRobin,
            Algo::Smooth => AlgoTag::Smooth,
            Algo::LeastConn => AlgoTag::LeastConn,
            Algo::P2c(_) => AlgoTag::P2c,
            Algo::Hash(_) => AlgoTag::Hash,
        }
    }

    /// The cluster's name.
    #[inline]
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The configured algorithm.
    #[inline]
    pub fn kind(&self) -> BalanceKind {
        self.kind
    }

    /// The number of backends.
    #[inline]
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The address of backend `i`.
    #[inline]
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        self.addrs.get(i).copied()
    }

    /// The index of the backend at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        let k = self.by_addr.binary_search_by(|(a, _)| a.cmp(&addr)).ok()?;
        self.by_addr.get(k).map(|&(_, i)| i as usize)
    }

    /// The Maglev table of a `hash` cluster.
    pub fn maglev(&self) -> Option<&Maglev> {
        match &self.algo {
            Algo::Hash(m) => Some(m),
            _ => None,
        }
    }
}

/// Carries per-backend values from one table's numbering to another's, by address.
pub struct Renumber<'a> {
    old: &'a SelectionTable,
    new: &'a SelectionTable,
    /// Same addresses in the same order (a weight change): nothing moves.
    same: bool,
}

impl<'a> Renumber<'a> {
    pub fn new(old: &'a SelectionTable, new: &'a SelectionTable) -> Renumber<'a> {
        Renumber {
            old,
            new,
            same: std::ptr::eq(old, new) || old.addrs == new.addrs,
        }
    }

    /// The old index of new backend `i` (`None` for a backend that joined).
    #[inline]
    pub fn old_index(&self, i: usize) -> Option<usize> {
        if self.same {
            return (i < self.new.len()).then_some(i);
        }
        self.old.index_of(self.new.addr(i)?)
    }

    /// Rewrites `values` (numbered for the old table) in the new numbering; backends that
    /// joined get `fill`. O(n log n); allocates only when the numbering changed.
    pub fn carry<T: Copy>(&self, values: &mut Vec<T>, fill: T) {
        if self.same {
            values.resize(self.new.len(), fill);
            return;
        }
        let moved: Vec<T> = (0..self.new.len())
            .map(|i| {
                self.old_index(i)
                    .and_then(|j| values.get(j).copied())
                    .unwrap_or(fill)
            })
            .collect();
        *values = moved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_backends;

    #[test]
    fn index_by_address() {
        let mut b = test_backends(&[1, 1, 1]);
        b.reverse(); // addresses out of order
        let t = SelectionTable::build("c", BalanceKind::RoundRobin, &b);
        for (i, be) in b.iter().enumerate() {
            assert_eq!(t.index_of(be.addr), Some(i));
            assert_eq!(t.addr(i), Some(be.addr));
        }
        assert_eq!(t.index_of(([127, 0, 0, 2], 1).into()), None);
        assert_eq!(t.addr(3), None);
        assert_eq!(t.cluster(), "c");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn reuse_follows_what_the_table_is_built_from() {
        let reuse = |kind, old: &[Backend], new: &[Backend]| {
            let t = Arc::new(SelectionTable::build("c", kind, old));
            Arc::ptr_eq(
                &t,
                &SelectionTable::reuse_or_build("c", kind, new, Some((&t, old))),
            )
        };
        let a = test_backends(&[2, 2, 2]);
        let a2 = test_backends(&[2, 2, 2]);
        let weights = test_backends(&[2, 1, 2]);
        let fewer = test_backends(&[2, 2]);
        let mut renamed = test_backends(&[2, 2, 2]);
        renamed[1].name = "app-2".into();
        for kind in [
            BalanceKind::RoundRobin,
            BalanceKind::Weighted,
            BalanceKind::LeastConn,
            BalanceKind::P2cEwma,
            BalanceKind::Hash,
        ] {
            assert!(reuse(kind, &a, &a2), "{kind:?}: unchanged backends");
            assert!(!reuse(kind, &a, &fewer), "{kind:?}: a backend less");
        }
        // Weight-free tables survive a weight change; Maglev and P2C's prefix sums do not.
        assert!(reuse(BalanceKind::Weighted, &a, &weights));
        assert!(reuse(BalanceKind::LeastConn, &a, &weights));
        assert!(!reuse(BalanceKind::P2cEwma, &a, &weights));
        assert!(!reuse(BalanceKind::Hash, &a, &weights));
        // Round robin switches to smooth weighted round robin while weights differ, and keeps
        // that table along the ramp.
        assert!(!reuse(BalanceKind::RoundRobin, &a, &weights));
        assert!(reuse(
            BalanceKind::RoundRobin,
            &weights,
            &test_backends(&[2, 1, 1])
        ));
        // Maglev hashes names.
        assert!(!reuse(BalanceKind::Hash, &a, &renamed));
        assert!(reuse(BalanceKind::LeastConn, &a, &renamed));
        // Another algorithm, another table.
        let t = Arc::new(SelectionTable::build("c", BalanceKind::LeastConn, &a));
        let n = SelectionTable::reuse_or_build("c", BalanceKind::Weighted, &a, Some((&t, &a)));
        assert!(!Arc::ptr_eq(&t, &n));
    }

    #[test]
    fn renumber_carries_by_address() {
        let old_b = test_backends(&[1, 1, 1, 1]); // ports 9000..9003
        let old = SelectionTable::build("c", BalanceKind::Weighted, &old_b);
        // 9001 removed, 9003 first, a new 9009 in the middle.
        let mut all: Vec<Option<Backend>> = test_backends(&[1; 10]).into_iter().map(Some).collect();
        let new_b: Vec<Backend> = [3usize, 0, 9, 2]
            .iter()
            .filter_map(|&i| all[i].take())
            .collect();
        let new = SelectionTable::build("c", BalanceKind::Weighted, &new_b);
        let r = Renumber::new(&old, &new);
        let mut v = vec![10, 11, 12, 13];
        r.carry(&mut v, -1);
        assert_eq!(v, [13, 10, -1, 12]);
        // Same numbering: nothing moves (a short vector is padded).
        let same = SelectionTable::build("c", BalanceKind::Weighted, &old_b);
        let mut v = vec![1, 2, 3];
        Renumber::new(&old, &same).carry(&mut v, 0);
        assert_eq!(v, [1, 2, 3, 0]);
    }
}
