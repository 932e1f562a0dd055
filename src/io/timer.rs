//! A hashed timing wheel for connect and idle timeouts.
//!
//! Entries are `(slab key, generation)`. Sessions keep their true deadline themselves and only
//! arm one entry at a time: when an entry fires the worker compares it with the session's
//! current deadline and re-inserts it if the deadline moved later. Activity therefore costs a
//! field store, never a wheel operation. Deadlines beyond one revolution simply come round
//! again. Stale entries (closed session, or generation changed) are ignored.
//!
//! Hot path: slot vectors keep a small capacity ([`SLOT_KEEP`]); no allocation in steady
//! state. A slot that fired more entries than that (a connection storm armed thousands in one
//! tick) gives the excess back: otherwise every one of the 4,096 slots would keep the largest
//! burst it ever saw, and the wheel's memory would creep up with uptime (perf/soak).

use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;
/// Entries' worth of capacity a slot keeps after it fires.
const SLOT_KEEP: usize = 16;

pub struct TimerWheel {
    slots: Vec<Vec<(usize, u32)>>,
    origin: Instant,
    /// Ticks fully processed.
    cursor: u64,
    len: usize,
}

impl TimerWheel {
    pub fn new(now: Instant) -> TimerWheel {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            origin: now,
            cursor: 0,
            len: 0,
        }
    }

    #[inline]
    fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.origin).as_micros() / TICK.as_micros()) as u64
    }

    /// The instant tick `tick` starts (u64 arithmetic: no wrap however long the uptime).
    #[inline]
    fn instant_of(&self, tick: u64) -> Instant {
        let micros = tick.saturating_mul(TICK.as_micros() as u64);
        self.origin
            .checked_add(Duration::from_micros(micros))
            .unwrap_or(self.origin)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms an entry that fires at the first tick boundary at or after `deadline`.
    pub fn insert(&mut self, key: usize, generation: u32, deadline: Instant) {
        let mut tick = self.tick_of(deadline);
        if deadline > self.instant_of(tick) {
            tick += 1; // round up: never fire early
        }
        let tick = tick.max(self.cursor + 1);
        self.slots[(tick % SLOTS as u64) as usize].push((key, generation));
        self.len += 1;
    }

    /// Moves every entry whose tick has passed into `out`.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<(usize, u32)>) {
        let target = self.tick_of(now);
        if target <= self.cursor {
            return;
        }
        // More than one revolution behind: each slot needs visiting once only.
        let steps = (target - self.cursor).min(SLOTS as u64);
        for i in 1..=steps {
            let slot = &mut self.slots[((self.cursor + i) % SLOTS as u64) as usize];
            self.len -= slot.len();
            out.append(slot);
            if slot.capacity() > SLOT_KEEP {
                slot.shrink_to(SLOT_KEEP);
            }
        }
        self.cursor = target;
    }

    /// How long until the next armed tick (None when nothing is armed). Scans at most one
    /// revolution; the result is a lower bound, which is all a poll timeout needs.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.next_timeout_within(now, TICK * SLOTS as u32)
    }

    /// [`TimerWheel::next_timeout`] looking only `horizon` ahead: `None` also when nothing
    /// fires before then. A poll loop that never sleeps longer than `horizon` needs no more,
    /// and with few, far deadlines (lazily armed keep-alive timers) it saves scanning
    /// thousands of empty slots on every wake-up.
    pub fn next_timeout_within(&self, now: Instant, horizon: Duration) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let limit = ((horizon.as_millis() / TICK.as_millis()) as u64 + 2).min(SLOTS as u64);
        let mut ticks = 1u64;
        loop {
            if ticks >= limit {
                if limit < SLOTS as u64 {
                    return None;
                }
                break;
            }
            if !self.slots[((self.cursor + ticks) % SLOTS as u64) as usize].is_empty() {
                break;
            }
            ticks += 1;
        }
        Some(
            self.instant_of(self.cursor + ticks)
                .saturating_duration_since(now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_gives_back_the_capacity_of_a_burst() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let at = t0 + Duration::from_millis(25);
        for key in 0..5000 {
            w.insert(key, 0, at);
        }
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(30), &mut out);
        assert_eq!(out.len(), 5000);
        let held: usize = w.slots.iter().map(Vec::capacity).sum();
        assert!(
            held <= SLOT_KEEP,
            "the wheel still holds {held} entries' worth"
        );
        // Small slots keep theirs: steady traffic does not allocate.
        w.insert(1, 0, t0 + Duration::from_millis(45));
        let slot = w.slots.iter().position(|s| !s.is_empty()).expect("armed");
        let cap = w.slots[slot].capacity();
        out.clear();
        w.advance(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(w.slots[slot].capacity(), cap);
    }

    #[test]
    fn fires_not_before_deadline() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(1, 0, t0 + Duration::from_millis(35));
        w.insert(2, 0, t0 + Duration::from_millis(5));
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(9), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + Duration::from_millis(10), &mut out);
        assert_eq!(out, vec![(2, 0)]);
        out.clear();
        w.advance(t0 + Duration::from_millis(39), &mut out);
        assert!(out.is_empty());
        assert!(
            w.next_timeout(t0 + Duration::from_millis(39))
                .expect("armed")
                <= Duration::from_millis(1)
        );
        w.advance(t0 + Duration::from_millis(40), &mut out);
        assert_eq!(out, vec![(1, 0)]);
        assert!(w.is_empty());
        assert_eq!(w.next_timeout(t0), None);
    }

    #[test]
    fn horizon_bounds_the_scan_but_never_hides_a_near_deadline() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let horizon = Duration::from_millis(100);
        w.insert(1, 0, t0 + Duration::from_secs(30));
        assert_eq!(w.next_timeout_within(t0, horizon), None);
        assert!(w.next_timeout(t0).expect("armed") >= Duration::from_secs(30));
        w.insert(2, 0, t0 + Duration::from_millis(95));
        let d = w
            .next_timeout_within(t0, horizon)
            .expect("within the horizon");
        assert!(d <= Duration::from_millis(100), "{d:?}");
        assert_eq!(d, w.next_timeout(t0).expect("armed"));
    }

    #[test]
    fn tick_arithmetic_does_not_wrap_after_long_uptime() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        // Pretend ~500 days of uptime have passed: beyond u32 ticks.
        let late = t0 + Duration::from_secs(500 * 24 * 3600);
        let mut out = Vec::new();
        w.advance(late, &mut out);
        w.insert(1, 0, late + Duration::from_millis(25));
        assert!(w.next_timeout(late).expect("armed") <= Duration::from_millis(30));
        w.advance(late + Duration::from_millis(20), &mut out);
        assert!(out.is_empty(), "fired early");
        w.advance(late + Duration::from_millis(30), &mut out);
        assert_eq!(out, vec![(1, 0)]);
    }

    #[test]
    fn far_deadlines_come_round_early_and_big_jumps_are_bounded() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        // Beyond one revolution: fires after a revolution; the owner re-inserts.
        w.insert(7, 3, t0 + TICK * (SLOTS as u32 + 5));
        let mut out = Vec::new();
        w.advance(t0 + TICK * 10, &mut out);
        assert_eq!(out, vec![(7, 3)]);
        w.insert(8, 0, t0 + Duration::from_millis(500));
        out.clear();
        w.advance(t0 + Duration::from_secs(3600), &mut out);
        assert_eq!(out, vec![(8, 0)]);
        assert_eq!(w.len(), 0);
    }
}
