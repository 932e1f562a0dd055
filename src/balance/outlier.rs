//! Passive outlier detection: per worker, per cluster, from live traffic. `consecutive`
//! failures in a row (connect errors, timeouts, 5xx) eject a backend for
//! `base_ejection × 2^(times ejected before)`, capped at `max_ejection`; no more than
//! `max_ejected_percent` of a cluster's backends are ejected at once (but always at least one
//! may be). An ejected backend gets no new picks until its time is up; then it is tried again,
//! and one more failure ejects it again for longer. A success resets the streak, and a backend
//! that stays clean for a while earns its backoff down again.
//!
//! Each worker decides for itself (no shared state, no locks): a worker sees its own share of
//! the traffic, so it ejects on its own evidence. Plain integers, no allocation after build.

use super::Renumber;
use crate::config::resilience::OutlierConfig;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
struct State {
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far (the backoff exponent); decays after clean periods.
    times: u32,
    /// When `times` last moved (for the decay).
    since: Option<Instant>,
}

/// What [`Outliers::observe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    /// The backend was ejected for this long.
    Ejected(Duration),
    /// It would have been ejected, but the cap on ejected backends was reached.
    Capped,
}

#[derive(Debug, Clone)]
pub struct Outliers {
    cfg: OutlierConfig,
    states: Vec<State>,
}

impl Outliers {
    pub fn new(cfg: OutlierConfig, backends: usize) -> Outliers {
        Outliers {
            cfg,
            states: vec![State::default(); backends],
        }
    }

    /// Is backend `i` out of rotation now?
    #[inline]
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.states
            .get(i)
            .and_then(|s| s.ejected_until)
            .is_some_and(|t| now < t)
    }

    pub fn ejected_count(&self, now: Instant) -> usize {
        (0..self.states.len())
            .filter(|&i| self.is_ejected(i, now))
            .count()
    }

    /// Reports one outcome for backend `i`.
    pub fn observe(&mut self, i: usize, ok: bool, now: Instant) -> Verdict {
        let n = self.states.len();
        let allowed = ((n as u64 * u64::from(self.cfg.max_ejected_percent)) / 100).max(1) as usize;
        let ejected = self.ejected_count(now);
        let Some(s) = self.states.get_mut(i) else {
            return Verdict::Nothing;
        };
        // Earned back: one step of backoff per base_ejection × 4 of clean running.
        if let (Some(since), true) = (s.since, s.times > 0) {
            if s.ejected_until.is_none_or(|t| now >= t)
                && now.duration_since(since) >= self.cfg.base_ejection * 4
            {
                s.times -= 1;
                s.since = Some(now);
            }
        }
        if ok {
            s.failures = 0;
            return Verdict::Nothing;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures < self.cfg.consecutive || s.ejected_until.is_some_and(|t| now < t) {
            return Verdict::Nothing;
        }
        if ejected >= allowed {
            return Verdict::Capped;
        }
        let factor = 1u32 << s.times.min(16);
        let d = self
            .cfg
            .base_ejection
            .saturating_mul(factor)
            .min(self.cfg.max_ejection);
        s.ejected_until = Some(now + d);
        s.times = s.times.saturating_add(1);
        s.since = Some(now);
        // After the ejection one more failure is enough to eject again.
        s.failures = self.cfg.consecutive.saturating_sub(1);
        Verdict::Ejected(d)
    }

    /// New settings (a config change); the counts go on.
    pub fn configure(&mut self, cfg: &OutlierConfig) {
        if self.cfg != *cfg {
            self.cfg = cfg.clone();
        }
    }

    /// Carries the states over to another numbering of the backends (same address, same
    /// state; new backends start clean).
    pub fn renumber(&mut self, r: &Renumber) {
        r.carry(&mut self.states, State::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_with_growing_backoff() {
        let t0 = Instant::now();
        let mut o = Outliers::new(cfg(), 4);
        assert_eq!(o.observe(0, false, t0), Verdict::Nothing);
        assert_eq!(o.observe(0, true, t0), Verdict::Nothing); // success resets
        assert_eq!(o.observe(0, false, t0), Verdict::Nothing);
        assert_eq!(o.observe(0, false, t0), Verdict::Nothing);
        assert_eq!(
            o.observe(0, false, t0),
            Verdict::Ejected(Duration::from_secs(10))
        );
        assert!(o.is_ejected(0, t0 + Duration::from_secs(9)));
        assert!(!o.is_ejected(0, t0 + Duration::from_secs(10)));
        // Back, fails once more: ejected for twice as long, then capped at max_ejection.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(
            o.observe(0, false, t1),
            Verdict::Ejected(Duration::from_secs(20))
        );
        let t2 = t1 + Duration::from_secs(21);
        assert_eq!(
            o.observe(0, false, t2),
            Verdict::Ejected(Duration::from_secs(35))
        );
    }

    #[test]
    fn never_more_than_the_cap_and_always_at_least_one() {
        let t0 = Instant::now();
        let mut o = Outliers::new(cfg(), 4); // 50% of 4 = 2
        for i in 0..3 {
            for _ in 0..2 {
                o.observe(i, false, t0);
            }
        }
        assert!(matches!(o.observe(0, false, t0), Verdict::Ejected(_)));
        assert!(matches!(o.observe(1, false, t0), Verdict::Ejected(_)));
        assert_eq!(o.observe(2, false, t0), Verdict::Capped);
        assert_eq!(o.ejected_count(t0), 2);
        let mut one = Outliers::new(cfg(), 1);
        for _ in 0..2 {
            one.observe(0, false, t0);
        }
        assert!(matches!(one.observe(0, false, t0), Verdict::Ejected(_)));
    }

    #[test]
    fn state_follows_addresses_across_rebuilds() {
        use crate::balance::{test_backends, SelectionTable};
        use crate::config::BalanceKind;
        let t0 = Instant::now();
        let mut a = test_backends(&[1, 1, 1, 1]);
        let old = SelectionTable::build("c", BalanceKind::Weighted, &a[..2]);
        let mut o = Outliers::new(cfg(), 2);
        for _ in 0..3 {
            o.observe(1, false, t0);
        }
        // [9001, 9003]: the ejected backend moved to index 0.
        a.swap(0, 1);
        a.swap(1, 3);
        let new = SelectionTable::build("c", BalanceKind::Weighted, &a[..2]);
        o.renumber(&Renumber::new(&old, &new));
        assert!(o.is_ejected(0, t0));
        assert!(!o.is_ejected(1, t0));
        let mut cfg2 = cfg();
        cfg2.consecutive = 1;
        cfg2.max_ejected_percent = 100;
        o.configure(&cfg2);
        assert!(matches!(o.observe(1, false, t0), Verdict::Ejected(_)));
    }
}
