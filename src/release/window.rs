//! A sliding window of request and error counts (auto-rollback's evidence): ten slots, each a
//! tenth of the window wide; old slots are cleared as time moves on. Sans-I/O: the caller
//! gives the time.

use std::time::Duration;

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    requests: u64,
    errors: u64,
}

#[derive(Debug, Clone)]
pub struct Window {
    width: Duration,
    slot_ms: u64,
    slots: [Slot; SLOTS],
    /// Absolute number (time / slot width) of the newest slot.
    head: u64,
}

impl Window {
    pub fn new(width: Duration) -> Window {
        Window {
            width,
            slot_ms: (width.as_millis() as u64 / SLOTS as u64).max(1),
            slots: [Slot::default(); SLOTS],
            head: 0,
        }
    }

    pub fn width(&self) -> Duration {
        self.width
    }

    fn advance(&mut self, now_ms: u64) {
        let abs = now_ms / self.slot_ms;
        if abs <= self.head {
            return;
        }
        let gap = (abs - self.head).min(SLOTS as u64);
        for k in 1..=gap {
            self.slots[((self.head + k) % SLOTS as u64) as usize] = Slot::default();
        }
        self.head = abs;
    }

    /// Counts `requests` (of which `errors` failed) at `now_ms`. Counts that arrive late (a
    /// clock step back) go to the newest slot.
    pub fn add(&mut self, now_ms: u64, requests: u64, errors: u64) {
        self.advance(now_ms);
        let s = &mut self.slots[(self.head % SLOTS as u64) as usize];
        s.requests += requests;
        s.errors += errors.min(requests);
    }

    /// (requests, errors) within the window ending at `now_ms`.
    pub fn totals(&mut self, now_ms: u64) -> (u64, u64) {
        self.advance(now_ms);
        self.slots
            .iter()
            .fold((0, 0), |(r, e), s| (r + s.requests, e + s.errors))
    }

    pub fn clear(&mut self) {
        self.slots = [Slot::default(); SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_slot_by_slot() {
        let mut w = Window::new(Duration::from_secs(10));
        w.add(1_000, 10, 2);
        w.add(5_500, 10, 8);
        assert_eq!(w.totals(9_999), (20, 10));
        // At 11.0 s the slot of 1.0 s is gone, the one of 5.5 s is not.
        assert_eq!(w.totals(11_000), (10, 8));
        assert_eq!(w.totals(15_999), (0, 0));
        // Errors never exceed requests; late counts land in the newest slot.
        w.add(16_000, 1, 5);
        w.add(3_000, 1, 0);
        assert_eq!(w.totals(16_000), (2, 1));
        // A long silence clears everything at once.
        assert_eq!(w.totals(1_000_000), (0, 0));
        w.add(1_000_000, 4, 4);
        w.clear();
        assert_eq!(w.totals(1_000_000), (0, 0));
        assert_eq!(Window::new(Duration::from_millis(5)).slot_ms, 1);
    }
}
