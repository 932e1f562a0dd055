//! Latency histograms (`hdrhistogram`, microseconds, 2 significant digits: 1% precision, from
//! 1 µs to 1 hour). Workers record locally and ship sparse deltas; the aggregator merges.

use hdrhistogram::Histogram;
use serde_json::{Map, Value};
use std::time::Duration;

/// Highest trackable value (µs); larger values are clamped to it.
pub const MAX_US: u64 = 3_600_000_000;
pub const SIGFIG: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistKind {
    /// Request start (head complete) to response complete.
    Request = 0,
    /// Backend connect time.
    Connect = 1,
    /// Request start to the first byte of the backend's response.
    Ttfb = 2,
}

impl HistKind {
    pub const ALL: [HistKind; 3] = [HistKind::Request, HistKind::Connect, HistKind::Ttfb];
    pub fn json_key(self) -> &'static str {
        match self {
            HistKind::Request => "request",
            HistKind::Connect => "connect",
            HistKind::Ttfb => "ttfb",
        }
    }
}

/// One histogram per [`HistKind`].
#[derive(Debug, Clone)]
pub struct Hists([Histogram<u64>; 3]);

impl Hists {
    /// `None` only if the (constant) bounds were rejected, which they are not.
    pub fn new() -> Option<Hists> {
        let h = || Histogram::<u64>::new_with_bounds(1, MAX_US, SIGFIG).ok();
        Some(Hists([h()?, h()?, h()?]))
    }

    #[inline]
    pub fn record(&mut self, kind: HistKind, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_US);
        self.0[kind as usize].saturating_record(us);
    }

    pub fn get(&self, kind: HistKind) -> &Histogram<u64> {
        &self.0[kind as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|h| h.is_empty())
    }

    /// The recorded (value, count) pairs of each kind, then resets (no reallocation).
    pub fn take_sparse(&mut self) -> [Vec<(u64, u64)>; 3] {
        let mut out: [Vec<(u64, u64)>; 3] = Default::default();
        for (i, h) in self.0.iter_mut().enumerate() {
            if !h.is_empty() {
                out[i] = h
                    .iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value()))
                    .collect();
                h.reset();
            }
        }
        out
    }

    pub fn add_sparse(&mut self, kind: HistKind, values: &[(u64, u64)]) {
        let h = &mut self.0[kind as usize];
        for &(v, n) in values {
            let _ = h.record_n(v.clamp(1, MAX_US), n);
        }
    }
}

/// `{"count","mean","p50","p90","p99","p99_9","max"}`, milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| Value::from(us as f64 / 1000.0);
    let mut m = Map::new();
    m.insert("count".into(), Value::from(h.len()));
    if h.is_empty() {
        for k in ["mean", "p50", "p90", "p99", "p99_9", "max"] {
            m.insert(k.into(), Value::from(0.0));
        }
        return Value::Object(m);
    }
    m.insert("mean".into(), Value::from(h.mean() / 1000.0));
    m.insert("p50".into(), ms(h.value_at_quantile(0.50)));
    m.insert("p90".into(), ms(h.value_at_quantile(0.90)));
    m.insert("p99".into(), ms(h.value_at_quantile(0.99)));
    m.insert("p99_9".into(), ms(h.value_at_quantile(0.999)));
    m.insert("max".into(), ms(h.max()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_deltas_merge_within_precision() {
        let mut w = Hists::new().unwrap();
        for ms in 1..=100u64 {
            w.record(HistKind::Request, Duration::from_millis(ms));
        }
        let sparse = w.take_sparse();
        assert!(w.is_empty());
        let mut agg = Hists::new().unwrap();
        agg.add_sparse(HistKind::Request, &sparse[0]);
        let h = agg.get(HistKind::Request);
        assert_eq!(h.len(), 100);
        let p50 = h.value_at_quantile(0.5) as f64;
        assert!((p50 - 50_000.0).abs() <= 50_000.0 * 0.01 + 1.0, "{p50}");
        let s = summary(h);
        assert!((s["max"].as_f64().unwrap() - 100.0).abs() <= 1.0, "{s}");
    }
}
