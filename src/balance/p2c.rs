//! Power of two choices over peak-EWMA latency (the Finagle / linkerd "P2C + PeakEWMA" balancer).
//!
//! Each worker keeps, per backend, an estimate of its latency:
//! - a sample above the estimate replaces it at once ("peak": a backend that slows down is
//!   noticed on its first slow answer);
//! - a lower sample pulls it down gradually: the estimate is a time-weighted moving average
//!   with time constant [`DECAY`], so a weight of `1 - e^(-Δt/DECAY)` goes to the sample;
//! - when the estimate is read at a pick it also decays towards zero with the same constant,
//!   so a backend that was avoided (slow or failing) gets probed again after a while instead
//!   of being shunned forever;
//! - a failure (connect error or timeout; for HTTP also a 5xx) counts as a sample of
//!   [`FAILURE_FACTOR`] × the larger of its duration and the current estimate, at least
//!   [`FAILURE_MIN`] and at most [`FAILURE_MAX`], so a backend that fails fast does not look
//!   fast and attract traffic;
//! - a backend with no sample yet is assumed to cost half the mean of the other estimates
//!   (or [`DEFAULT_RTT`] when nothing is known): it wins against an average backend while it
//!   has no connection, so a new backend gets traffic at once, but about one connect at a
//!   time until its first sample arrives (a new backend that hangs does not swallow a burst).
//!
//! A pick draws two distinct untried backends at random (with probability proportional to
//! their weights) and takes the one with the lower `estimate × (active + 1)`, where `active`
//! is the process-wide count of open connections (`BackendLive::active`). One untried
//! backend left: that one. The random numbers come from a per-worker xorshift generator,
//! seeded differently in every worker. A first attempt draws from the weight prefix sums of
//! the cluster's [`P2cTable`] (built once per snapshot by the control plane); retries walk
//! the untried backends. Nothing allocates after construction.

use super::{Outcome, Renumber, Tried};
use crate::snapshot::Backend;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time constant of the moving average (how fast a lower latency, or an idle backend's
/// estimate, is believed).
pub const DECAY: Duration = Duration::from_secs(10);
/// Estimate of a backend nothing is known about, when no backend has a sample yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// A failure counts as this many times the larger of its duration and the estimate...
pub const FAILURE_FACTOR: f64 = 10.0;
/// ...but at least this...
pub const FAILURE_MIN: Duration = Duration::from_millis(10);
/// ...and at most this (unless the failure itself took longer).
pub const FAILURE_MAX: Duration = Duration::from_secs(10);
/// Estimates never go below this, so in-flight counts still separate backends whose
/// estimates have decayed to nothing.
const FLOOR_NS: f64 = 1_000.0;

#[derive(Debug, Clone, Copy)]
struct Estimate {
    ns: f64,
    /// When `ns` was last updated; `None` until the first sample.
    at: Option<Instant>,
}

/// The immutable part, built once per snapshot with the cluster's selection table: weight
/// prefix sums, so a first attempt draws in O(log n) even while the weights differ (slow
/// start), and O(1) when they are all equal.
#[derive(Debug)]
pub struct P2cTable {
    /// `prefix[i]`: the total weight of backends `0..i` (n + 1 entries; weights count as at
    /// least 1).
    prefix: Box<[u64]>,
    /// Every backend has the same weight.
    uniform: bool,
}

impl P2cTable {
    pub fn new(backends: &[Backend]) -> P2cTable {
        let mut prefix = Vec::with_capacity(backends.len() + 1);
        let mut sum = 0u64;
        prefix.push(0);
        for b in backends {
            sum += u64::from(b.weight.max(1));
            prefix.push(sum);
        }
        P2cTable {
            prefix: prefix.into_boxed_slice(),
            uniform: backends.windows(2).all(|w| w[0].weight == w[1].weight),
        }
    }

    /// The number of backends.
    fn len(&self) -> usize {
        self.prefix.len().saturating_sub(1)
    }

    fn total(&self) -> u64 {
        self.prefix.last().copied().unwrap_or(0)
    }

    /// The backend whose share of `0..total` holds `r`.
    fn locate(&self, r: u64) -> usize {
        self.prefix
            .get(1..)
            .map_or(0, |p| p.partition_point(|&s| s <= r))
    }

    fn weight(&self, i: usize) -> u64 {
        match (self.prefix.get(i), self.prefix.get(i + 1)) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }
}

/// One worker's state: latency estimates per backend (carried over by address from snapshot
/// to snapshot) and its random number generator.
#[derive(Debug, Clone)]
pub struct P2cEwma {
    est: Vec<Estimate>,
    rng: u64,
    decay_ns: f64,
}

const UNKNOWN: Estimate = Estimate { ns: 0.0, at: None };

impl P2cEwma {
    /// For `n` backends, with a seed of its own (different in every worker).
    pub fn new(n: usize) -> P2cEwma {
        P2cEwma::with_seed(n, fresh_seed())
    }

    /// Deterministic picks for a given seed.
    pub fn with_seed(n: usize, seed: u64) -> P2cEwma {
        let rng = splitmix64(seed);
        P2cEwma {
            est: vec![UNKNOWN; n],
            // xorshift's state must not be zero.
            rng: if rng == 0 { 0x9E37_79B9_7F4A_7C15 } else { rng },
            decay_ns: DECAY.as_nanos() as f64,
        }
    }

    /// Another time constant than [`DECAY`].
    pub fn with_decay(mut self, decay: Duration) -> P2cEwma {
        self.decay_ns = (decay.as_nanos() as f64).max(1.0);
        self
    }

    /// Carries the estimates over to another numbering of the backends (new ones start
    /// unknown); the generator goes on.
    pub(super) fn renumber(&mut self, r: &Renumber) {
        r.carry(&mut self.est, UNKNOWN);
    }

    /// A pick at a given time, from `table` (built for `backends`).
    pub fn pick_at(
        &mut self,
        table: &P2cTable,
        backends: &[Backend],
        tried: Tried,
        now: Instant,
    ) -> Option<usize> {
        let n = backends.len();
        if n >= 2 && n == self.est.len() && n == table.len() && tried == Tried::default() {
            // The common case, a first attempt: two distinct draws from the table.
            let (a, b) = if table.uniform {
                let a = self.below(n as u64) as usize;
                let mut b = self.below(n as u64 - 1) as usize;
                if b >= a {
                    b += 1;
                }
                (a, b)
            } else {
                let total = table.total();
                let a = table.locate(self.below(total));
                let wa = table.weight(a);
                // Draw from the others: skip over `a`'s share.
                let mut r = self.below(total - wa);
                if r >= table.prefix.get(a).copied().unwrap_or(0) {
                    r += wa;
                }
                (a, table.locate(r))
            };
            return Some(self.better(backends, a, b, now));
        }
        let mut untried = 0usize;
        let mut total_w = 0u64;
        let mut only = 0usize;
        for (i, b) in backends.iter().enumerate() {
            if !tried.contains(i) {
                untried += 1;
                total_w += u64::from(b.weight.max(1));
                only = i;
            }
        }
        match untried {
            0 => return None,
            1 => return Some(only),
            _ => {}
        }
        let a = self.draw(backends, tried, None, total_w)?;
        let wa = u64::from(backends[a].weight.max(1));
        let b = self.draw(backends, tried, Some(a), total_w - wa)?;
        Some(self.better(backends, a, b, now))
    }

    /// The cheaper of `a` and `b`; `a` (the first random draw) on a tie.
    fn better(&mut self, backends: &[Backend], a: usize, b: usize, now: Instant) -> usize {
        let mut neutral = None;
        let ca = self.cost(backends, a, now, &mut neutral);
        let cb = self.cost(backends, b, now, &mut neutral);
        if cb < ca {
            b
        } else {
            a
        }
    }

    /// Feedback on backend `backend` at a given time (see the module comment).
    pub fn observe_at(&mut self, backend: usize, rtt: Duration, outcome: Outcome, now: Instant) {
        let neutral = self.neutral();
        let decay_ns = self.decay_ns;
        let Some(e) = self.est.get_mut(backend) else {
            return;
        };
        let rtt_ns = rtt.as_nanos() as f64;
        let sample = match outcome {
            Outcome::Success => rtt_ns,
            Outcome::Failure => {
                let current = if e.at.is_some() { e.ns } else { neutral };
                (FAILURE_FACTOR * rtt_ns.max(current))
                    .clamp(FAILURE_MIN.as_nanos() as f64, FAILURE_MAX.as_nanos() as f64)
                    .max(rtt_ns)
            }
        };
        match e.at {
            Some(at) if sample <= e.ns => {
                let dt = now.saturating_duration_since(at).as_nanos() as f64;
                let w = (-dt / decay_ns).exp();
                e.ns = e.ns * w + sample * (1.0 - w);
            }
            // Peak: a higher sample (or the first one) is believed at once.
            _ => e.ns = sample,
        }
        e.at = Some(now);
    }

    /// Picks an untried backend other than `except`, with probability proportional to its
    /// weight; `total_w` is the weight of the candidates.
    fn draw(
        &mut self,
        backends: &[Backend],
        tried: Tried,
        except: Option<usize>,
        total_w: u64,
    ) -> Option<usize> {
        let mut r = self.below(total_w);
        let mut last = None;
        for (i, b) in backends.iter().enumerate() {
            if tried.contains(i) || except == Some(i) {
                continue;
            }
            let w = u64::from(b.weight.max(1));
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        last
    }

    /// The estimate (decayed to `now`) times the backend's load. `neutral` caches
    /// [`Self::neutral`] for the pick.
    fn cost(
        &mut self,
        backends: &[Backend],
        i: usize,
        now: Instant,
        neutral: &mut Option<f64>,
    ) -> f64 {
        let active = backends
            .get(i)
            .map_or(0, |b| b.live.active.load(Ordering::Relaxed));
        let est = match self.decayed(i, now) {
            Some(ns) => ns,
            None => *neutral.get_or_insert_with(|| self.neutral()),
        };
        est.max(FLOOR_NS) * (f64::from(active) + 1.0)
    }

    /// The estimate of backend `i`, decayed towards zero up to `now`; `None` without samples.
    fn decayed(&mut self, i: usize, now: Instant) -> Option<f64> {
        let decay_ns = self.decay_ns;
        let e = self.est.get_mut(i)?;
        let at = e.at?;
        let dt = now.saturating_duration_since(at).as_nanos() as f64;
        if dt > 0.0 {
            e.ns *= (-dt / decay_ns).exp();
            e.at = Some(now);
        }
        Some(e.ns)
    }

    /// What a backend without samples is assumed to cost: half the mean of the known
    /// estimates (see the module comment).
    fn neutral(&self) -> f64 {
        let (sum, n) = self
            .est
            .iter()
            .filter(|e| e.at.is_some())
            .fold((0.0, 0u32), |(s, n), e| (s + e.ns, n + 1));
        if n == 0 {
            DEFAULT_RTT.as_nanos() as f64
        } else {
            0.5 * sum / f64::from(n)
        }
    }

    /// xorshift64*.
    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`0` when `n` is 0), without a division.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A different seed for every balancer built in this process (workers must not draw in
/// lockstep), also different between runs.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(t ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_backends;

    const MS: Duration = Duration::from_millis(1);

    /// Runs `picks` picks one `step` apart from `t0`, reporting `rtt(i)` after each, and
    /// returns how often each backend was picked.
    fn simulate(
        p: &mut P2cEwma,
        backends: &[Backend],
        t0: Instant,
        picks: usize,
        step: Duration,
        mut rtt: impl FnMut(usize) -> (Duration, Outcome),
    ) -> Vec<usize> {
        let table = P2cTable::new(backends);
        let mut counts = vec![0; backends.len()];
        for k in 0..picks {
            let now = t0 + step * k as u32;
            let i = p.pick_at(&table, backends, Tried::default(), now).unwrap();
            counts[i] += 1;
            let (d, o) = rtt(i);
            p.observe_at(i, d, o, now + d);
        }
        counts
    }

    #[test]
    fn prefers_the_faster_backend() {
        let b = test_backends(&[1, 1, 1]);
        let mut p = P2cEwma::with_seed(b.len(), 1);
        let c = simulate(&mut p, &b, Instant::now(), 20_000, MS, |i| {
            (if i == 2 { 10 * MS } else { MS }, Outcome::Success)
        });
        assert!(c[2] < 2_000, "10× slower backend got {c:?}");
        assert!(c[0] > 7_000 && c[1] > 7_000, "fast ones share: {c:?}");
    }

    #[test]
    fn in_flight_connections_count() {
        let b = test_backends(&[1, 1]);
        let mut p = P2cEwma::with_seed(b.len(), 2);
        let t0 = Instant::now();
        p.observe_at(0, MS, Outcome::Success, t0);
        p.observe_at(1, MS, Outcome::Success, t0);
        b[0].live.active.store(5, Ordering::Relaxed);
        for k in 0..100 {
            let now = t0 + MS * k;
            assert_eq!(
                p.pick_at(&P2cTable::new(&b), &b, Tried::default(), now),
                Some(1)
            );
        }
    }

    #[test]
    fn fast_failures_are_penalised_then_forgiven() {
        let b = test_backends(&[1, 1, 1]);
        let t0 = Instant::now();
        // Without the penalty a backend that refuses in 50 µs would look 20× faster.
        let mut p = P2cEwma::with_seed(b.len(), 3);
        let c = simulate(&mut p, &b, t0, 5_000, MS, |i| {
            if i == 2 {
                (MS / 20, Outcome::Success)
            } else {
                (MS, Outcome::Success)
            }
        });
        assert!(c[2] > 2_500, "control: fast successes attract: {c:?}");

        let mut p = P2cEwma::with_seed(b.len(), 3);
        let step = 10 * MS;
        let failing = simulate(&mut p, &b, t0, 1_000, step, |i| {
            if i == 2 {
                (MS / 20, Outcome::Failure)
            } else {
                (MS, Outcome::Success)
            }
        });
        assert!(
            failing[2] <= 10,
            "failing backend picked {failing:?} in 10 s"
        );
        // It recovers: after enough time without failures, it shares again.
        let t1 = t0 + step * 1_000;
        let healthy = |_| (MS, Outcome::Success);
        simulate(&mut p, &b, t1, 9_000, step, healthy); // 90 s
        let c = simulate(&mut p, &b, t1 + step * 9_000, 3_000, step, healthy);
        assert!(
            (700..=1_300).contains(&c[2]),
            "recovered backend's share of 3000: {c:?}"
        );
    }

    #[test]
    fn slow_backend_is_probed_again_after_it_recovers() {
        let b = test_backends(&[1, 1]);
        let mut p = P2cEwma::with_seed(b.len(), 4);
        let t0 = Instant::now();
        let step = 10 * MS;
        let c = simulate(&mut p, &b, t0, 1_000, step, |i| {
            (if i == 1 { 50 * MS } else { MS }, Outcome::Success)
        });
        assert!(c[1] < 20, "50× slower backend: {c:?}");
        // Now as fast as the other: the decayed estimate gets it probed, then it shares.
        let fast = |_| (MS, Outcome::Success);
        let t1 = t0 + step * 1_000;
        simulate(&mut p, &b, t1, 6_000, step, fast); // 60 s
        let c = simulate(&mut p, &b, t1 + step * 6_000, 2_000, step, fast);
        assert!((600..=1_400).contains(&c[1]), "{c:?}");
    }

    #[test]
    fn never_picks_tried_and_takes_the_last_one() {
        let b = test_backends(&[1, 2, 3, 4, 5]);
        let mut p = P2cEwma::with_seed(b.len(), 5);
        let now = Instant::now();
        for mask in 0u32..32 {
            let mut t = Tried::default();
            for i in 0..5 {
                if mask & (1 << i) != 0 {
                    t.insert(i);
                }
            }
            for _ in 0..20 {
                match p.pick_at(&P2cTable::new(&b), &b, t, now) {
                    Some(i) => assert!(!t.contains(i), "picked tried {i} (mask {mask:b})"),
                    None => assert_eq!(mask, 31),
                }
            }
            if mask.count_ones() == 4 {
                let left = (0..5).find(|&i| !t.contains(i));
                assert_eq!(p.pick_at(&P2cTable::new(&b), &b, t, now), left);
            }
        }
        assert_eq!(
            p.pick_at(&P2cTable::new(&[]), &[], Tried::default(), now),
            None
        );
    }

    #[test]
    fn deterministic_for_a_seed() {
        let b = test_backends(&[1, 1, 1, 1]);
        let t0 = Instant::now();
        let run = |seed| {
            let mut p = P2cEwma::with_seed(b.len(), seed);
            (0..500u32)
                .map(|k| {
                    let now = t0 + MS * k;
                    let i = p
                        .pick_at(&P2cTable::new(&b), &b, Tried::default(), now)
                        .unwrap();
                    p.observe_at(i, MS * (i as u32 + 1), Outcome::Success, now);
                    i
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn unknown_backends_get_traffic() {
        let b = test_backends(&[1, 1, 1]);
        let mut p = P2cEwma::with_seed(b.len(), 6);
        let t0 = Instant::now();
        // 0 and 1 are known (1 ms), 2 has never been used.
        p.observe_at(0, MS, Outcome::Success, t0);
        p.observe_at(1, MS, Outcome::Success, t0);
        let first = (0..50)
            .find(|&k| p.pick_at(&P2cTable::new(&b), &b, Tried::default(), t0 + MS * k) == Some(2));
        assert!(first.is_some(), "new backend never picked");
    }

    #[test]
    fn weights_bias_the_draw() {
        let b = test_backends(&[1, 3]);
        let mut p = P2cEwma::with_seed(b.len(), 7);
        let now = Instant::now();
        // Equal costs (nothing known): the weight-biased first draw decides.
        let mut c = [0; 2];
        for _ in 0..4_000 {
            c[p.pick_at(&P2cTable::new(&b), &b, Tried::default(), now)
                .unwrap()] += 1;
        }
        assert!((850..=1_150).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn prefix_sums_draw_in_proportion_to_weight() {
        // Weights 1..4 (a slow start in progress): with equal costs the first draw wins, so
        // the shares are the draw's.
        let b = test_backends(&[1, 2, 3, 4]);
        let t = P2cTable::new(&b);
        assert!(!t.uniform);
        assert_eq!(&*t.prefix, &[0, 1, 3, 6, 10]);
        assert_eq!(
            (t.locate(0), t.locate(1), t.locate(2), t.locate(9)),
            (0, 1, 1, 3)
        );
        let mut p = P2cEwma::with_seed(b.len(), 8);
        let now = Instant::now();
        let mut c = [0usize; 4];
        for _ in 0..10_000 {
            c[p.pick_at(&t, &b, Tried::default(), now).unwrap()] += 1;
        }
        for (i, n) in c.iter().enumerate() {
            let want = 1_000 * (i + 1);
            assert!(n.abs_diff(want) < 250, "{c:?}");
        }
    }
}
