//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4).
//!
//! A lookup table of `M` entries (a prime, at least [`MIN_TABLE`] and at least 100 × the
//! number of backends) is filled once per snapshot, by the control plane (it is part of the
//! cluster's [`SelectionTable`](super::SelectionTable), shared by every worker): every backend has its own
//! permutation of the slots, `(offset + j × skip) mod M`, with `offset` and `skip` taken from
//! two independent hashes of its name, and the backends take turns claiming the next free
//! slot of their permutation until the table is full. A heavier backend takes more turns
//! (the heaviest one claims a slot every round; one of weight `w` claims `w / max_weight` of a
//! slot per round), so its share of slots, and of keys, follows its weight. Because each
//! backend's preferences do not depend on the others, adding or removing a backend moves
//! few keys between the remaining ones.
//!
//! A pick is `table[hash mod M]`. On a retry (that backend already tried) it walks on to the
//! next entries until one names an untried backend, so a given key always retries the same
//! way. Without a hash (`PickCtx::hash` is `None`: the header is absent, ...) picks go round
//! robin, with the worker's own cursor.

use super::{hash_bytes_seeded, PickCtx, RoundRobin, Tried};
use crate::snapshot::Backend;

/// Smallest table size: 65537 entries (a prime) keep every share within 0.01% of its target
/// for small clusters, for 256 KiB per cluster (shared by the workers).
pub const MIN_TABLE: usize = 65_537;
const SEED_OFFSET: u64 = 0x5851_F42D_4C95_7F2D;
const SEED_SKIP: u64 = 0x1405_7B7E_F767_814F;

/// The lookup table (immutable once built).
#[derive(Debug)]
pub struct Maglev {
    /// Backend indices; empty when there are no backends.
    table: Box<[u32]>,
    /// The number of backends the table was built for.
    n: usize,
}

impl Maglev {
    pub fn new(backends: &[Backend]) -> Maglev {
        Maglev {
            table: build_table(backends).into_boxed_slice(),
            n: backends.len(),
        }
    }

    /// The backend `hash` maps to when nothing was tried (`None` without backends).
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        self.table.get((hash % m) as usize).map(|&b| b as usize)
    }

    /// The table size.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Picks for `ctx.hash`, skipping `tried`; `rr` orders picks without a hash (and picks
    /// from a backend list the table was not built for).
    pub fn pick(
        &self,
        rr: &mut RoundRobin,
        backends: &[Backend],
        tried: Tried,
        ctx: &PickCtx,
    ) -> Option<usize> {
        let n = backends.len();
        let (Some(hash), false) = (ctx.hash, self.table.is_empty() || n != self.n) else {
            return rr.pick(backends, tried, ctx);
        };
        let m = self.table.len();
        let start = (hash % m as u64) as usize;
        let first = self.table.get(start).map(|&b| b as usize)?;
        if !tried.contains(first) {
            return Some(first);
        }
        if (0..n).all(|i| tried.contains(i)) {
            return None;
        }
        // Retry: the next entry that names an untried backend.
        let (after, before) = (self.table.get(start + 1..)?, self.table.get(..start)?);
        after
            .iter()
            .chain(before)
            .map(|&b| b as usize)
            .find(|&b| !tried.contains(b))
    }
}

/// The smallest prime `>= n`.
fn next_prime(n: usize) -> usize {
    fn is_prime(n: usize) -> bool {
        if n < 2 {
            return false;
        }
        let mut d = 2;
        while d * d <= n {
            if n % d == 0 {
                return false;
            }
            d += 1;
        }
        true
    }
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}

fn build_table(backends: &[Backend]) -> Vec<u32> {
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    let m = next_prime(MIN_TABLE.max(n.saturating_mul(100)));
    let m64 = m as u64;
    // (position in its permutation, skip, turn credit) per backend. The position walks
    // `offset, offset + skip, offset + 2 × skip, ... (mod m)` by one addition and one
    // conditional subtraction per probe rather than a 64-bit division (the fill makes about
    // m × ln(m) probes: a division each made the build several times slower).
    let mut perm: Vec<(u64, u64, u64)> = backends
        .iter()
        .map(|b| {
            let name = b.name.as_bytes();
            let offset = hash_bytes_seeded(name, SEED_OFFSET) % m64;
            let skip = hash_bytes_seeded(name, SEED_SKIP) % (m64 - 1) + 1;
            (offset, skip, 0)
        })
        .collect();
    let weights: Vec<u64> = backends
        .iter()
        .map(|b| u64::from(b.weight.max(1)))
        .collect();
    let max_w = weights.iter().copied().max().unwrap_or(1);
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; m];
    let mut filled = 0usize;
    // Terminates: the heaviest backend claims a slot every round, and each permutation visits
    // every slot (m is prime and 0 < skip < m), so a free slot is always found.
    while filled < m {
        for (i, p) in perm.iter_mut().enumerate() {
            p.2 += weights[i];
            if p.2 < max_w {
                continue;
            }
            p.2 -= max_w;
            loop {
                let slot = p.0 as usize;
                p.0 += p.1;
                if p.0 >= m64 {
                    p.0 -= m64;
                }
                if let Some(e) = table.get_mut(slot).filter(|e| **e == EMPTY) {
                    *e = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{hash_bytes, test_backends};
    use std::collections::HashMap;

    fn key(i: u32) -> u64 {
        hash_bytes(format!("client-{i}").as_bytes())
    }

    fn ctx(h: u64) -> PickCtx {
        PickCtx { hash: Some(h) }
    }

    fn named(names: &[&str], weights: &[u32]) -> Vec<Backend> {
        let mut b = test_backends(weights);
        for (b, n) in b.iter_mut().zip(names) {
            b.name = n.to_string();
        }
        b
    }

    #[test]
    fn table_size_is_a_prime_at_least_100_per_backend() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100_000), 100_003);
        assert_eq!(Maglev::new(&test_backends(&[1; 5])).table_len(), 65_537);
        assert_eq!(Maglev::new(&test_backends(&[1; 1000])).table_len(), 100_003);
        assert_eq!(Maglev::new(&[]).table_len(), 0);
    }

    #[test]
    fn same_key_same_backend_in_every_instance() {
        let b = test_backends(&[1, 1, 1, 1]);
        let m1 = Maglev::new(&b);
        let m2 = Maglev::new(&b); // another process
        let (mut rr1, mut rr2) = (RoundRobin::default(), RoundRobin::default()); // two workers
        for i in 0..1000 {
            let p = m1.pick(&mut rr1, &b, Tried::default(), &ctx(key(i)));
            assert_eq!(p, m1.pick(&mut rr2, &b, Tried::default(), &ctx(key(i))));
            assert_eq!(p, m2.pick(&mut rr1, &b, Tried::default(), &ctx(key(i))));
        }
    }

    #[test]
    fn even_spread_over_five() {
        let b = test_backends(&[1; 5]);
        let m = Maglev::new(&b);
        let mut rr = RoundRobin::default();
        let mut c = [0u32; 5];
        for i in 0..100_000 {
            c[m.pick(&mut rr, &b, Tried::default(), &ctx(key(i))).unwrap()] += 1;
        }
        for n in c {
            assert!((19_000..=21_000).contains(&n), "{c:?}");
        }
    }

    #[test]
    fn weights_one_to_three() {
        let b = test_backends(&[1, 3]);
        let m = Maglev::new(&b);
        let slots = m.table.iter().filter(|&&x| x == 0).count();
        assert!(
            (16_300..=16_500).contains(&slots),
            "weight 1 of 4 holds {slots} of 65537 slots"
        );
        let mut c = [0u32; 2];
        for i in 0..100_000 {
            c[m.lookup(key(i)).unwrap()] += 1;
        }
        assert!((24_000..=26_000).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn removing_a_backend_moves_few_other_keys() {
        let names = ["app-1:80", "app-2:80", "app-3:80", "app-4:80", "app-5:80"];
        let before = named(&names, &[1; 5]);
        let after = named(&[names[0], names[1], names[3], names[4]], &[1; 4]); // app-3 gone
        let m1 = Maglev::new(&before);
        let m2 = Maglev::new(&after);
        let (mut kept, mut total) = (0, 0);
        let mut moved_to: HashMap<&str, u32> = HashMap::new();
        for i in 0..100_000 {
            let old = &before[m1.lookup(key(i)).unwrap()].name;
            let new = &after[m2.lookup(key(i)).unwrap()].name;
            if old == "app-3:80" {
                *moved_to.entry(new.as_str()).or_default() += 1;
                continue;
            }
            total += 1;
            kept += u32::from(old == new);
        }
        let share = f64::from(kept) / f64::from(total);
        assert!(share >= 0.95, "only {share:.4} of unaffected keys kept");
        // The removed backend's keys spread over all the others.
        assert_eq!(moved_to.len(), 4, "{moved_to:?}");
    }

    #[test]
    fn retry_walks_to_an_untried_backend() {
        let b = test_backends(&[1, 1, 1]);
        let m = Maglev::new(&b);
        let rr = &mut RoundRobin::default();
        for i in 0..200 {
            let h = key(i);
            let first = m.pick(rr, &b, Tried::default(), &ctx(h)).unwrap();
            let mut t = Tried::default();
            t.insert(first);
            let second = m.pick(rr, &b, t, &ctx(h)).unwrap();
            assert_ne!(second, first);
            assert_eq!(
                m.pick(rr, &b, t, &ctx(h)),
                Some(second),
                "retries are stable"
            );
            t.insert(second);
            let third = m.pick(rr, &b, t, &ctx(h)).unwrap();
            assert!(third != first && third != second);
            t.insert(third);
            assert_eq!(m.pick(rr, &b, t, &ctx(h)), None);
        }
    }

    #[test]
    fn tables_never_change() {
        // Every worker, process and future build must map a key to the same backend: these
        // checksums pin the tables of a few backend sets (any change to the fill moves keys).
        let mut ramp = test_backends(&[100; 64]);
        for (i, b) in ramp.iter_mut().enumerate() {
            b.weight = 1 + (i as u32 * 37) % 100;
        }
        let sum = |b: &[Backend]| {
            let t = Maglev::new(b);
            let bytes: Vec<u8> = t.table.iter().flat_map(|x| x.to_le_bytes()).collect();
            (t.table_len(), hash_bytes(&bytes))
        };
        assert_eq!(
            sum(&test_backends(&[1; 5])),
            (65_537, 0x9940_2af7_f922_f856)
        );
        assert_eq!(
            sum(&test_backends(&[1, 3])),
            (65_537, 0x1743_8fef_f7cd_98b4)
        );
        assert_eq!(sum(&ramp), (65_537, 0xde7c_96d0_a5d5_56f0));
        assert_eq!(
            sum(&test_backends(&[1; 1000])),
            (100_003, 0x366f_7184_9ff8_8a58)
        );
    }

    #[test]
    fn no_hash_means_round_robin() {
        let b = test_backends(&[1, 1, 1]);
        let m = Maglev::new(&b);
        let mut rr = RoundRobin::default();
        let seq: Vec<_> = (0..6)
            .map(|_| {
                m.pick(&mut rr, &b, Tried::default(), &PickCtx::NONE)
                    .unwrap()
            })
            .collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
        // A backend list the table was not built for (it cannot happen within one
        // snapshot): round robin rather than an index out of range.
        let more = test_backends(&[1, 1, 1, 1]);
        for i in 0..100 {
            let p = m.pick(&mut rr, &more, Tried::default(), &ctx(key(i)));
            assert!(p.is_some_and(|p| p < 4));
        }
    }
}
