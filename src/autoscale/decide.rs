//! The decision, apart from any I/O: a cluster's samples over its window, its bounds, its
//! cooldown and whether an action is still running → scale up, scale down or nothing.
//!
//! What keeps it from flapping:
//! - two thresholds with a gap (`scale_down_below < scale_up_above`, checked by the config);
//! - the metric is measured over a whole `window`, and no decision is taken before a full
//!   window of samples exists;
//! - one action at a time; after it ends, `cooldown` passes and the samples start over, so the
//!   next decision measures the cluster as the action left it.

use crate::config::autoscale::{AutoscaleConfig, Metric};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One look at a cluster.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// Running totals (they only grow; a drop is read as no traffic).
    pub requests: u64,
    pub connections: u64,
    /// Open backend connections now.
    pub active: u64,
    /// Running request-latency histogram (µs), for `p99_ms` only.
    pub latency: Option<Histogram<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "scale_up",
            Direction::Down => "scale_down",
        }
    }
}

/// Why a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The metric passed `scale_up_above`.
    Above,
    /// The metric fell under `scale_down_below`.
    Below,
    /// Fewer backends than `min_backends`.
    BelowMin,
    /// More backends than `max_backends`.
    AboveMax,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Above => "metric_above_threshold",
            Reason::Below => "metric_below_threshold",
            Reason::BelowMin => "below_min_backends",
            Reason::AboveMax => "above_max_backends",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub direction: Direction,
    pub reason: Reason,
    /// The metric over the window (when measured).
    pub value: Option<f64>,
}

/// The cluster as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Backends configured and not draining (what min/max bound).
    pub backends: u32,
    /// Backends taking traffic now (the per-backend divisor; at least 1 is used).
    pub in_rotation: u32,
    /// The cluster serves HTTP: rates count requests; otherwise backend connections.
    pub http: bool,
}

/// One cluster's state between decisions.
#[derive(Debug, Default)]
pub struct Tracker {
    samples: VecDeque<Sample>,
    /// An action (hook or webhook) is running.
    pub running: bool,
    /// When the last action ended (cooldown runs from there).
    pub last_end: Option<Instant>,
}

impl Tracker {
    /// Adds a sample and drops those no longer needed: one at or before the window's start
    /// is kept as the base the rates are measured from.
    pub fn push(&mut self, s: Sample, window: Duration) {
        let start = s.at.checked_sub(window);
        self.samples.push_back(s);
        if let Some(start) = start {
            while self.samples.len() > 2 && self.samples[1].at <= start {
                self.samples.pop_front();
            }
        }
    }

    /// An action was decided: nothing more until it ends.
    pub fn started(&mut self) {
        self.running = true;
    }

    /// The action ended: the cooldown starts, and so does a new window.
    pub fn ended(&mut self, at: Instant) {
        self.running = false;
        self.last_end = Some(at);
        self.samples.clear();
    }

    /// The end of the cooldown, if one runs at `now`.
    pub fn cooling_until(&self, cfg: &AutoscaleConfig, now: Instant) -> Option<Instant> {
        self.last_end
            .map(|t| t + cfg.cooldown)
            .filter(|&until| until > now)
    }

    /// The metric over the window ending at the newest sample; `None` until a full window of
    /// samples exists.
    pub fn measure(&self, cfg: &AutoscaleConfig, shape: Shape) -> Option<f64> {
        let newest = self.samples.back()?;
        let base = self.samples.front()?;
        let span = newest.at.checked_duration_since(base.at)?;
        // A little slack: samples are taken on a tick, not exactly `window` apart.
        if span + Duration::from_millis(250) < cfg.window || span.is_zero() {
            return None;
        }
        let per = f64::from(shape.in_rotation.max(1));
        let v = match cfg.metric {
            Metric::RpsPerBackend => {
                let (now, then) = if shape.http {
                    (newest.requests, base.requests)
                } else {
                    (newest.connections, base.connections)
                };
                now.saturating_sub(then) as f64 / span.as_secs_f64() / per
            }
            Metric::ActivePerBackend => {
                // Every sample after the base: the window's share of time.
                let n = self.samples.len().saturating_sub(1).max(1);
                let sum: u64 = self.samples.iter().skip(1).map(|s| s.active).sum();
                sum as f64 / n as f64 / per
            }
            Metric::P99Ms => match (&newest.latency, &base.latency) {
                (Some(now), then) => {
                    let mut h = now.clone();
                    if let Some(then) = then {
                        if h.subtract(then).is_err() {
                            // The totals went backwards (restarted counters): use what is there.
                            h = now.clone();
                        }
                    }
                    if h.is_empty() {
                        0.0
                    } else {
                        h.value_at_quantile(0.99) as f64 / 1000.0
                    }
                }
                (None, _) => 0.0,
            },
        };
        Some((v * 1000.0).round() / 1000.0)
    }

    /// What to do at `now` (the newest sample pushed). `None`: nothing.
    pub fn decide(&self, cfg: &AutoscaleConfig, shape: Shape, now: Instant) -> Option<Decision> {
        if self.running || self.cooling_until(cfg, now).is_some() {
            return None;
        }
        let value = self.measure(cfg, shape);
        let decision = |direction, reason| {
            Some(Decision {
                direction,
                reason,
                value,
            })
        };
        if shape.backends < cfg.min_backends {
            return decision(Direction::Up, Reason::BelowMin);
        }
        if shape.backends > cfg.max_backends {
            return decision(Direction::Down, Reason::AboveMax);
        }
        let v = value?;
        if v > cfg.scale_up_above && shape.backends < cfg.max_backends {
            return decision(Direction::Up, Reason::Above);
        }
        if v < cfg.scale_down_below && shape.backends > cfg.min_backends {
            return decision(Direction::Down, Reason::Below);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::autoscale::Action;

    fn cfg(metric: Metric) -> AutoscaleConfig {
        AutoscaleConfig {
            metric,
            scale_up_above: 100.0,
            scale_down_below: 20.0,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            min_backends: 1,
            max_backends: 3,
            action: Action::Hook(vec!["/bin/true".into()]),
        }
    }

    fn shape(backends: u32) -> Shape {
        Shape {
            backends,
            in_rotation: backends,
            http: true,
        }
    }

    /// Feeds `secs` seconds of samples at `rps` total requests per second, every 500 ms.
    fn feed(t: &mut Tracker, t0: Instant, from_s: f64, secs: f64, rps: f64, total: &mut u64) {
        let mut s = from_s;
        while s < from_s + secs {
            s += 0.5;
            *total += (rps * 0.5) as u64;
            t.push(
                Sample {
                    at: t0 + Duration::from_secs_f64(s),
                    requests: *total,
                    connections: 0,
                    active: 0,
                    latency: None,
                },
                Duration::from_secs(10),
            );
        }
    }

    #[test]
    fn needs_a_full_window_then_scales_up_and_respects_max() {
        let c = cfg(Metric::RpsPerBackend);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let mut total = 0;
        feed(&mut t, t0, 0.0, 5.0, 1000.0, &mut total);
        assert_eq!(t.measure(&c, shape(1)), None, "half a window");
        assert_eq!(t.decide(&c, shape(1), t0 + Duration::from_secs(5)), None);
        feed(&mut t, t0, 5.0, 6.0, 1000.0, &mut total);
        let now = t0 + Duration::from_secs(11);
        let d = t.decide(&c, shape(1), now).expect("decision");
        assert_eq!((d.direction, d.reason), (Direction::Up, Reason::Above));
        assert!((d.value.unwrap() - 1000.0).abs() < 1.0, "{d:?}");
        // At max: 1000 rps over 3 backends is still above, but no more backends.
        assert_eq!(t.decide(&c, shape(3), now), None);
    }

    #[test]
    fn between_the_thresholds_nothing_happens() {
        let c = cfg(Metric::RpsPerBackend);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let mut total = 0;
        // 120 rps over 2 backends = 60 per backend: inside the 20..100 band.
        feed(&mut t, t0, 0.0, 30.0, 120.0, &mut total);
        assert_eq!(t.decide(&c, shape(2), t0 + Duration::from_secs(30)), None);
        // The same load on one backend is above the band; on three... 40 each, still inside.
        assert!(t
            .decide(&c, shape(1), t0 + Duration::from_secs(30))
            .is_some());
        assert_eq!(t.decide(&c, shape(3), t0 + Duration::from_secs(30)), None);
    }

    #[test]
    fn one_action_at_a_time_then_cooldown_then_a_fresh_window() {
        let c = cfg(Metric::RpsPerBackend);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let mut total = 0;
        feed(&mut t, t0, 0.0, 11.0, 0.0, &mut total);
        let d = t
            .decide(&c, shape(2), t0 + Duration::from_secs(11))
            .unwrap();
        assert_eq!((d.direction, d.reason), (Direction::Down, Reason::Below));
        t.started();
        feed(&mut t, t0, 11.0, 5.0, 0.0, &mut total);
        assert_eq!(
            t.decide(&c, shape(2), t0 + Duration::from_secs(16)),
            None,
            "running"
        );
        t.ended(t0 + Duration::from_secs(16));
        // Cooldown (30 s) hides everything, even a full window of idle samples.
        feed(&mut t, t0, 16.0, 20.0, 0.0, &mut total);
        assert_eq!(t.decide(&c, shape(2), t0 + Duration::from_secs(36)), None);
        assert!(t.cooling_until(&c, t0 + Duration::from_secs(36)).is_some());
        feed(&mut t, t0, 36.0, 11.0, 0.0, &mut total);
        assert!(t
            .decide(&c, shape(2), t0 + Duration::from_secs(47))
            .is_some());
        // Never below min.
        assert_eq!(t.decide(&c, shape(1), t0 + Duration::from_secs(47)), None);
    }

    #[test]
    fn bounds_come_first() {
        let c = cfg(Metric::RpsPerBackend);
        let t = Tracker::default();
        let now = Instant::now();
        let mut s = shape(0);
        let d = t.decide(&c, s, now).unwrap();
        assert_eq!((d.direction, d.reason), (Direction::Up, Reason::BelowMin));
        s.backends = 5;
        let d = t.decide(&c, s, now).unwrap();
        assert_eq!((d.direction, d.reason), (Direction::Down, Reason::AboveMax));
    }

    #[test]
    fn active_and_p99_metrics() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2).unwrap();
        for i in 0..=22 {
            if i > 10 {
                // Only the second half of the samples sees slow requests: they count, the
                // fast ones recorded before the window do not.
                for _ in 0..100 {
                    h.record(250_000).unwrap();
                }
            } else {
                for _ in 0..1000 {
                    h.record(1_000).unwrap();
                }
            }
            t.push(
                Sample {
                    at: t0 + Duration::from_millis(500 * i),
                    requests: 0,
                    connections: 0,
                    active: 12,
                    latency: Some(h.clone()),
                },
                Duration::from_secs(5),
            );
        }
        let mut c = cfg(Metric::ActivePerBackend);
        c.window = Duration::from_secs(5);
        assert_eq!(t.measure(&c, shape(4)), Some(3.0));
        c.metric = Metric::P99Ms;
        let p99 = t.measure(&c, shape(4)).unwrap();
        assert!((p99 - 250.0).abs() < 5.0, "{p99}");
    }
}
