//! Foo message statistics: the counts the [line sniffer](crate::proto::foo) gathers per
//! session, accumulated per worker and in the aggregator.

use crate::proto::foo::SniffCounts;

/// Message counts (a per-session accumulator, drained into the worker's counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FooCounts {
    pub req: u64,
    pub ack: u64,
    pub nak: u64,
    pub invalid: u64,
}

impl FooCounts {
    pub fn is_zero(&self) -> bool {
        *self == FooCounts::default()
    }

    pub fn merge(&mut self, o: &FooCounts) {
        self.req += o.req;
        self.ack += o.ack;
        self.nak += o.nak;
        self.invalid += o.invalid;
    }
}

impl SniffCounts {
    /// Adds `self` into `into` and zeroes `self` (a session's counts into the worker's).
    #[inline]
    pub fn drain_into(&mut self, into: &mut FooCounts) {
        into.req += u64::from(self.req);
        into.ack += u64::from(self.ack);
        into.nak += u64::from(self.nak);
        into.invalid += u64::from(self.invalid);
        *self = SniffCounts::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::foo::LineSniffer;

    #[test]
    fn session_counts_drain_into_worker_counts() {
        let mut s = LineSniffer::default();
        s.feed(b"REQ 1\nACK 1\nNAK 2\nX\n");
        let mut total = FooCounts::default();
        s.counts.drain_into(&mut total);
        assert!(s.counts.is_zero());
        s.feed(b"REQ 3\n");
        s.counts.drain_into(&mut total);
        assert_eq!(
            total,
            FooCounts {
                req: 2,
                ack: 1,
                nak: 1,
                invalid: 1
            }
        );
        let mut sum = FooCounts::default();
        sum.merge(&total);
        sum.merge(&total);
        assert_eq!(sum.req, 4);
        assert!(!sum.is_zero() && FooCounts::default().is_zero());
    }
}
