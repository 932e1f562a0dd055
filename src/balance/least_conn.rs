//! Least connections, weighted: the backend with the lowest `active / weight` wins; ties go
//! round robin so equal backends share new connections evenly. `active` is the process-wide
//! count every worker maintains in the snapshot's per-backend atomics.

use super::{PickCtx, Tried};
use crate::snapshot::Backend;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Default)]
pub struct LeastConn {
    next: usize,
}

impl LeastConn {
    /// The next backend not in `tried`; `None` when every one was tried.
    pub fn pick(&mut self, backends: &[Backend], tried: Tried, _ctx: &PickCtx) -> Option<usize> {
        let n = backends.len();
        let mut best: Option<(usize, u64, u64)> = None; // (index, active, weight)
        for i in 0..n {
            let idx = (self.next + i) % n;
            if tried.contains(idx) {
                continue;
            }
            let b = &backends[idx];
            let active = u64::from(b.live.active.load(Ordering::Relaxed));
            let weight = u64::from(b.weight.max(1));
            // active/weight < best_active/best_weight, without division.
            if best.is_none_or(|(_, ba, bw)| active * bw < ba * weight) {
                best = Some((idx, active, weight));
            }
        }
        let (idx, _, _) = best?;
        self.next = (idx + 1) % n;
        Some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_backends;

    #[test]
    fn fewest_active_wins_ties_rotate() {
        let b = test_backends(&[1, 1, 1]);
        let mut lc = LeastConn::default();
        assert_eq!(lc.pick(&b, Tried::default(), &PickCtx::NONE), Some(0));
        assert_eq!(lc.pick(&b, Tried::default(), &PickCtx::NONE), Some(1));
        b[0].live.active.store(2, Ordering::Relaxed);
        b[1].live.active.store(1, Ordering::Relaxed);
        b[2].live.active.store(1, Ordering::Relaxed);
        assert_eq!(lc.pick(&b, Tried::default(), &PickCtx::NONE), Some(2));
        assert_eq!(lc.pick(&b, Tried::default(), &PickCtx::NONE), Some(1));
        let mut t = Tried::default();
        t.insert(1);
        t.insert(2);
        assert_eq!(lc.pick(&b, t, &PickCtx::NONE), Some(0));
    }

    #[test]
    fn weight_scales_capacity() {
        let b = test_backends(&[1, 4]);
        b[0].live.active.store(1, Ordering::Relaxed);
        b[1].live.active.store(3, Ordering::Relaxed);
        let mut lc = LeastConn::default();
        assert_eq!(
            lc.pick(&b, Tried::default(), &PickCtx::NONE),
            Some(1),
            "3/4 < 1/1"
        );
    }
}
