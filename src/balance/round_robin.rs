//! Plain round robin: weights ignored.

use super::{PickCtx, Tried};
use crate::snapshot::Backend;

#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// The next backend not in `tried`; `None` when every one was tried.
    pub fn pick(&mut self, backends: &[Backend], tried: Tried, _ctx: &PickCtx) -> Option<usize> {
        let n = backends.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            if !tried.contains(idx) {
                self.next = (idx + 1) % n;
                return Some(idx);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_backends;

    #[test]
    fn cycles_and_skips_tried() {
        let b = test_backends(&[1, 5, 1]);
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&b, Tried::default(), &PickCtx::NONE).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let mut t = Tried::default();
        t.insert(0);
        t.insert(1);
        assert_eq!(rr.pick(&b, t, &PickCtx::NONE), Some(2));
        t.insert(2);
        assert_eq!(rr.pick(&b, t, &PickCtx::NONE), None);
        assert_eq!(rr.pick(&[], Tried::default(), &PickCtx::NONE), None);
    }
}
