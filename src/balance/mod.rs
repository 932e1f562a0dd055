//! Backend selection behind one small trait, shared by the TCP and (later) HTTP engines.
//!
//! Each worker owns one balancer per cluster (its own cursor and weights: no shared mutable
//! state between cores). Algorithms that need global figures read the per-backend atomics
//! in the snapshot (`BackendLive::active`), which change once per connection.

mod least_conn;
mod round_robin;
mod weighted;

pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use crate::config::BalanceKind;
use crate::snapshot::Backend;

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

pub trait Balancer: Send {
    /// Picks a backend index, skipping `tried`. `None` when every backend was tried.
    fn pick(&mut self, backends: &[Backend], tried: Tried) -> Option<usize>;
}

pub fn new_balancer(kind: BalanceKind) -> Box<dyn Balancer> {
    match kind {
        BalanceKind::RoundRobin => Box::new(RoundRobin::default()),
        BalanceKind::Weighted => Box::new(SmoothWeighted::default()),
        BalanceKind::LeastConn => Box::new(LeastConn::default()),
        // Not accepted by the config parser yet: their balancers are being written.
        BalanceKind::P2cEwma | BalanceKind::Hash => Box::new(RoundRobin::default()),
    }
}

#[cfg(test)]
pub(crate) fn test_backends(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Backend {
            name: format!("127.0.0.1:{}", 9000 + i),
            addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
            weight: w,
            live: Default::default(),
        })
        .collect()
}
