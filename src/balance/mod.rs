//! Backend selection, in two halves:
//!
//! - [`SelectionTable`] (`table.rs`): the immutable half, derived from a cluster's backend
//!   list and weights (the Maglev lookup table, P2C's weight prefix sums, the backend
//!   addresses). The control plane builds it once per snapshot, reusing the previous
//!   snapshot's when the backends did not change, and every worker reads it through the
//!   snapshot's `Arc`.
//! - [`PickState`] (`state.rs`): the mutable half, one per worker and cluster (round-robin
//!   cursors, smooth-WRR scores, P2C latency estimates and random generator, outlier counts),
//!   keyed by backend address so that it survives snapshot changes. No shared mutable state
//!   between cores. Algorithms that need global figures read the per-backend atomics in the
//!   snapshot (`BackendLive::active`), which change once per connection.
//!
//! One file per algorithm: `round_robin.rs`, `weighted.rs` (smooth weighted round robin),
//! `least_conn.rs`, `p2c.rs` (P2C over peak EWMA), `maglev.rs` (consistent hashing). The table
//! and the state dispatch on a closed enum rather than a trait object: the two halves must be
//! the same algorithm, the enum keeps the state by value in the worker (no box per cluster),
//! and a match costs less than a virtual call.
//!
//! Per pick the caller passes a [`PickCtx`] (today: the request's hash for `hash` clusters);
//! after a connect (TCP) or a response (HTTP) it reports the outcome with
//! [`PickState::observe`], which latency-aware algorithms use and the others ignore.

mod least_conn;
mod maglev;
pub mod outlier;
mod p2c;
mod round_robin;
mod state;
mod table;
mod weighted;

pub use least_conn::LeastConn;
pub use maglev::Maglev;
pub use p2c::{P2cEwma, P2cTable};
pub use round_robin::RoundRobin;
pub use state::PickState;
pub use table::{Renumber, SelectionTable};
pub use weighted::SmoothWeighted;

use std::net::IpAddr;

/// Backends already tried for one client connection (indices below 64; retries beyond that
/// many distinct backends may repeat one, which is harmless).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    #[inline]
    pub fn contains(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
    #[inline]
    pub fn insert(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
    #[inline]
    pub fn remove(&mut self, i: usize) {
        if i < 64 {
            self.0 &= !(1 << i);
        }
    }
}

/// Per-pick input from the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickCtx {
    /// The request's key for consistent hashing ([`hash_ip`] of the client address, or
    /// [`hash_bytes`] of a header or cookie value). `None` when the cluster does not hash or
    /// the key is absent: `hash` clusters then fall back to round robin.
    pub hash: Option<u64>,
}

impl PickCtx {
    /// No per-request input.
    pub const NONE: PickCtx = PickCtx { hash: None };
}

/// How a use of a backend ended, as reported to [`PickState::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// TCP: the connect failed or timed out. HTTP: also a 5xx or a broken response.
    Failure,
}

// ------------------------------------------------------------------------------- hashing
//
// Hand-written rather than `std`'s `DefaultHasher`: consistent hashing needs a function that
// never changes, so the same key maps to the same backend in every worker, every process and
// every future build. `std` documents its algorithm as unspecified (it may change between
// Rust releases), and SipHash is also slower than needed for short keys. No new crate either.
//
// The construction: the input is consumed 8 bytes at a time (little-endian, the tail padded
// with zeros, the length folded into the initial state); each word is mixed in with
// `h = (h ^ w) * K; h ^= h >> 29`, where every step is a bijection of `h`, so inputs of the same
// length that differ in one word never collide; a murmur3 `fmix64` finaliser then gives full
// avalanche, so `hash % M` is evenly spread for any `M`. The seed is a fixed constant on
// purpose: it is not a defence against chosen keys (a client can always send the same key
// many times anyway), only a way to make the output stable.

const HASH_SEED: u64 = 0x243F_6A88_85A3_08D3; // π's fraction digits
const HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / φ, odd

#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[inline]
fn mix_word(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(HASH_MUL);
    h ^ (h >> 29)
}

/// [`hash_bytes`] with another seed (Maglev needs two independent hashes of a name).
pub(crate) fn hash_bytes_seeded(b: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ (b.len() as u64).wrapping_mul(HASH_MUL);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix_word(h, u64::from_le_bytes(w));
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut w = [0u8; 8];
        w[..rem.len()].copy_from_slice(rem);
        h = mix_word(h, u64::from_le_bytes(w));
    }
    fmix64(h)
}

/// A fast, well-distributed, stable 64-bit hash of a key (header or cookie value, ...).
#[inline]
pub fn hash_bytes(b: &[u8]) -> u64 {
    hash_bytes_seeded(b, HASH_SEED)
}

/// The hash of a client address. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as seen on a
/// dual-stack listener) hash like the IPv4 address.
#[inline]
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
pub(crate) fn test_backends(weights: &[u32]) -> Vec<crate::snapshot::Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| crate::snapshot::Backend {
            name: format!("127.0.0.1:{}", 9000 + i),
            addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
            weight: w,
            live: Default::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BalanceKind;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::time::Duration;

    fn state(kind: BalanceKind, b: &[crate::snapshot::Backend]) -> PickState {
        PickState::new(Arc::new(SelectionTable::build("c", kind, b)), None)
    }

    #[test]
    fn every_algorithm_handles_an_empty_cluster() {
        // Every backend drained: the list is empty, and a pick must say so, not panic.
        for kind in [
            BalanceKind::RoundRobin,
            BalanceKind::Weighted,
            BalanceKind::LeastConn,
            BalanceKind::P2cEwma,
            BalanceKind::Hash,
        ] {
            let mut b = state(kind, &[]);
            let ctx = PickCtx { hash: Some(42) };
            assert_eq!(b.pick(&[], Tried::default(), &ctx), None, "{kind:?}");
            assert_eq!(
                b.pick(&[], Tried::default(), &PickCtx::NONE),
                None,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn hash_is_stable_and_spreads() {
        // Pinned values: a change here remaps every hashed client.
        assert_eq!(hash_bytes(b""), 0x7acd_bb98_b134_4213);
        assert_eq!(hash_bytes(b"switchyard"), 0xa35b_3507_ecd0_eaa6);
        assert_eq!(
            hash_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            0xad01_086c_d1fb_901c
        );
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_ne!(
            hash_bytes(b"a"),
            hash_bytes(b"a\0"),
            "length is part of the hash"
        );
        assert_ne!(hash_bytes(b"12345678"), hash_bytes(b"12345679"));
        // Low bits are even over sequential keys (what `% M` sees).
        let mut buckets = [0u32; 16];
        for i in 0..160_000u32 {
            buckets[(hash_bytes(&i.to_le_bytes()) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..=10_500).contains(&b), "{buckets:?}");
        }
        // Single-bit input changes flip about half the output bits.
        let mut flips = 0u32;
        for i in 0..1000u64 {
            let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
            let mut k2 = k;
            k2[(i % 8) as usize] ^= 1 << (i % 7);
            flips += (hash_bytes(&k) ^ hash_bytes(&k2)).count_ones();
        }
        let avg = f64::from(flips) / 1000.0;
        assert!((28.0..=36.0).contains(&avg), "avalanche {avg}");
    }

    #[test]
    fn mapped_v6_hashes_like_v4() {
        let v4 = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(
            hash_ip(IpAddr::V4(v4)),
            hash_ip(IpAddr::V6(v4.to_ipv6_mapped()))
        );
        assert_ne!(
            hash_ip(IpAddr::V4(v4)),
            hash_ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4)))
        );
        assert_ne!(
            hash_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            hash_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn every_kind_picks_and_observes() {
        let b = test_backends(&[1, 2, 3]);
        for kind in [
            BalanceKind::RoundRobin,
            BalanceKind::Weighted,
            BalanceKind::LeastConn,
            BalanceKind::P2cEwma,
            BalanceKind::Hash,
        ] {
            let mut bal = state(kind, &b);
            let ctx = PickCtx { hash: Some(7) };
            let i = bal.pick(&b, Tried::default(), &ctx).expect("a backend");
            assert!(i < 3);
            bal.observe(i, Duration::from_micros(100), Outcome::Success);
            bal.observe(99, Duration::from_micros(100), Outcome::Failure); // out of range: ignored
            let mut t = Tried::default();
            (0..3).for_each(|i| t.insert(i));
            assert_eq!(bal.pick(&b, t, &ctx), None, "{}", kind.as_str());
            assert_eq!(bal.pick(&[], Tried::default(), &ctx), None);
        }
    }
}
