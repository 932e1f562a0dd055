//! Smooth weighted round robin (the nginx algorithm): every pick adds each backend's weight to
//! its running score, takes the highest, and subtracts the total from the winner. Weights 5,1,1
//! give a,a,b,a,c,a,a — interleaved, not bursts.
//!
//! The weights are read from the snapshot's backends at each pick (the walk is O(n) anyway),
//! so the state is only the running scores: a weight change (a slow-start step) builds
//! nothing, and the scores carry over by address when the backend list changes.

use super::{PickCtx, Renumber, Tried};
use crate::snapshot::Backend;

#[derive(Debug, Clone, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// Sized for `n` backends up front, so the first pick does not allocate.
    pub fn new(n: usize) -> SmoothWeighted {
        SmoothWeighted {
            current: vec![0; n],
        }
    }

    /// Carries the scores over to another numbering of the backends.
    pub(super) fn renumber(&mut self, r: &Renumber) {
        r.carry(&mut self.current, 0);
    }

    /// The next backend not in `tried`; `None` when every one was tried.
    pub fn pick(&mut self, backends: &[Backend], tried: Tried, _ctx: &PickCtx) -> Option<usize> {
        if self.current.len() != backends.len() {
            self.current.clear();
            self.current.resize(backends.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, b) in backends.iter().enumerate() {
            if tried.contains(i) {
                continue;
            }
            let w = i64::from(b.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|j| self.current[i] > self.current[j]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_backends;

    #[test]
    fn smooth_sequence_and_shares() {
        let b = test_backends(&[5, 1, 1]);
        let mut w = SmoothWeighted::default();
        let seq: Vec<_> = (0..7)
            .map(|_| w.pick(&b, Tried::default(), &PickCtx::NONE).unwrap())
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        let b = test_backends(&[1, 3]);
        let mut w = SmoothWeighted::default();
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[w.pick(&b, Tried::default(), &PickCtx::NONE).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn skips_tried() {
        let b = test_backends(&[5, 1]);
        let mut w = SmoothWeighted::default();
        let mut t = Tried::default();
        t.insert(0);
        assert_eq!(w.pick(&b, t, &PickCtx::NONE), Some(1));
        t.insert(1);
        assert_eq!(w.pick(&b, t, &PickCtx::NONE), None);
    }
}
