//! Moving-window rates from per-second slots keyed by Unix second.
//!
//! Counts are added to the slot of the second they arrive in. The rate over a window of `w`
//! seconds at time `t` (fractional Unix seconds) counts the current, partial second in full
//! and the oldest second in the window by the part of it still inside: a sliding window
//! without keeping every event. Before the first whole window has passed, only the time
//! since `origin` (the start, or the age of a restored window) is divided by.

/// Slots kept: enough for the longest window (60 s) plus the current second.
pub const SLOTS: usize = 61;

#[derive(Debug, Clone)]
pub struct Window {
    /// (Unix second, count); a slot belongs to second `s` only if it says so.
    slots: [(u64, u64); SLOTS],
    /// Counting began here (fractional Unix seconds).
    origin: f64,
}

impl Window {
    pub fn new(origin: f64) -> Window {
        Window {
            slots: [(u64::MAX, 0); SLOTS],
            origin,
        }
    }

    pub fn add(&mut self, now: f64, n: u64) {
        if n == 0 {
            return;
        }
        let sec = now.max(0.0) as u64;
        let slot = &mut self.slots[(sec % SLOTS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += n;
    }

    /// Adds `n` events that happened evenly between `from` and `to`: each second gets its
    /// share (whole events; the remainder goes to the last second).
    pub fn add_span(&mut self, from: f64, to: f64, n: u64) {
        let span = to - from;
        if n == 0 || span.is_nan() || span <= 0.0 || from.floor() == to.floor() {
            return self.add(to, n);
        }
        let mut left = n;
        let mut sec = from.max(0.0).floor();
        while sec < to.floor() && left > 0 {
            let overlap = (sec + 1.0).min(to) - from.max(sec);
            let share = ((n as f64) * overlap / span).floor() as u64;
            let share = share.min(left);
            self.add(sec, share);
            left -= share;
            sec += 1.0;
        }
        self.add(to, left);
    }

    /// The count of second `sec` (0 when that slot was overwritten or never used).
    pub fn at(&self, sec: u64) -> u64 {
        let s = self.slots[(sec % SLOTS as u64) as usize];
        if s.0 == sec {
            s.1
        } else {
            0
        }
    }

    /// Restores second `sec` (recovery); windows reach back to `origin`.
    pub fn restore(&mut self, sec: u64, n: u64, origin: f64) {
        self.slots[(sec % SLOTS as u64) as usize] = (sec, n);
        self.origin = self.origin.min(origin);
    }

    /// Events per second over the last `w` seconds (1..=60).
    pub fn rate(&self, now: f64, w: u64) -> f64 {
        let w = w.clamp(1, SLOTS as u64 - 1);
        let sec = now.max(0.0) as u64;
        let frac = (now - sec as f64).clamp(0.0, 1.0);
        let mut sum = 0.0;
        for i in 0..w {
            sum += self.at(sec.wrapping_sub(i)) as f64;
        }
        // The oldest second: only the part still inside the window.
        sum += self.at(sec.wrapping_sub(w)) as f64 * (1.0 - frac);
        let span = (now - self.origin).clamp(0.0, w as f64);
        if span <= 0.0 {
            0.0
        } else if span < w as f64 {
            // Young process: spread over the time actually covered (at least 1 s, so a burst
            // in the first milliseconds does not look like a huge rate).
            sum / span.max(1.0).min(w as f64)
        } else {
            sum / w as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_is_measured_over_each_window() {
        let mut w = Window::new(1000.0);
        // 200 events per second for 70 seconds, delivered every 100 ms.
        let mut t = 1000.0;
        while t < 1070.0 {
            t += 0.1;
            w.add(t, 20);
        }
        for win in [1, 10, 60] {
            let r = w.rate(t + 0.05, win);
            assert!((r - 200.0).abs() < 200.0 * 0.05, "{win}s: {r}");
        }
    }

    #[test]
    fn spans_are_spread_over_the_seconds_they_cover() {
        let mut w = Window::new(0.0);
        w.add_span(99.9, 100.1, 100);
        assert_eq!(w.at(99), 50);
        assert_eq!(w.at(100), 50);
        w.add_span(100.5, 103.5, 7);
        assert_eq!(w.at(100) + w.at(101) + w.at(102) + w.at(103), 57);
        assert_eq!(w.at(101), 2);
        w.add_span(104.0, 104.0, 3);
        assert_eq!(w.at(104), 3);
    }

    #[test]
    fn old_slots_do_not_count() {
        let mut w = Window::new(0.0);
        w.add(100.5, 1000);
        assert_eq!(w.rate(200.0, 60), 0.0);
        assert_eq!(w.rate(100.9, 1), 1000.0);
        assert_eq!(w.at(100), 1000);
        assert_eq!(w.at(161), 0);
    }

    #[test]
    fn young_windows_divide_by_the_time_covered() {
        let mut w = Window::new(50.0);
        w.add(51.0, 100);
        w.add(52.5, 100);
        let r = w.rate(53.0, 10);
        assert!((r - 200.0 / 3.0).abs() < 1e-9, "{r}");
    }
}
