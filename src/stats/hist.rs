//! Latency histograms (`hdrhistogram`, microseconds, 2 significant digits: 1% precision, from
//! 1 µs to 1 hour). Workers record locally into a [`Recorder`] (hdrhistogram's bucket layout,
//! counted without its bookkeeping) and ship sparse deltas; the aggregator merges them into
//! [`Hists`].

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

    pub fn add_sparse(&mut self, kind: HistKind, values: &[(u64, u64)]) {
        let h = &mut self.0[kind as usize];
        for &(v, n) in values {
            let _ = h.record_n(v.clamp(1, MAX_US), n);
        }
    }
}

// hdrhistogram's layout for (lowest 1, highest MAX_US, SIGFIG 2): 256 sub-buckets per bucket
// (the lower half used by bucket 0 only), unit magnitude 0. `Recorder` counts into the same
// indices, so the values it ships are exactly the ones `iter_recorded` would report.
const SUB_BUCKET_HALF_MAGNITUDE: u32 = 7;
const SUB_BUCKET_HALF: u64 = 1 << SUB_BUCKET_HALF_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = 2 * SUB_BUCKET_HALF - 1;
/// 64 - unit magnitude (0) - sub-bucket count magnitude (8).
const LEADING_ZERO_COUNT_BASE: u32 = 56;
/// Counts per kind: up to the index of `MAX_US` (values are clamped to it).
const LEN: usize = index_of(MAX_US) + 1;

/// hdrhistogram's counts index of `v` (1 ..= `MAX_US`).
#[inline]
const fn index_of(v: u64) -> usize {
    let bucket = LEADING_ZERO_COUNT_BASE - (v | SUB_BUCKET_MASK).leading_zeros();
    let sub = v >> bucket;
    (((bucket as u64 + 1) << SUB_BUCKET_HALF_MAGNITUDE) + sub - SUB_BUCKET_HALF) as usize
}

/// Where a [`Recorder`] counts duration `d` (its microseconds, clamped to the range).
#[inline]
pub fn index(d: Duration) -> usize {
    index_of((d.as_micros() as u64).clamp(1, MAX_US))
}

/// The highest value counted at `index` (what hdrhistogram's iterators report for it).
const fn value_of(index: usize) -> u64 {
    let bucket = (index >> SUB_BUCKET_HALF_MAGNITUDE) as u64;
    let sub = index as u64 & (SUB_BUCKET_HALF - 1);
    if bucket == 0 {
        sub
    } else {
        let shift = bucket - 1;
        ((sub + SUB_BUCKET_HALF) << shift) + (1 << shift) - 1
    }
}

/// A worker's latencies since its last flush, one count array per [`HistKind`] in
/// hdrhistogram's layout. Recording is an index computation and an add (no min/max/total
/// bookkeeping); a flush walks only the span of indices recorded since the last one and zeroes
/// just that span.
pub struct Recorder {
    /// `LEN` counts per kind, kinds one after the other.
    counts: Box<[u64]>,
    /// Per kind: the lowest and highest index recorded since the last take (`lo > hi`: none).
    span: [(u32, u32); 3],
}

const NO_SPAN: (u32, u32) = (u32::MAX, 0);

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            counts: vec![0; 3 * LEN].into_boxed_slice(),
            span: [NO_SPAN; 3],
        }
    }

    #[inline]
    pub fn record(&mut self, kind: HistKind, d: Duration) {
        self.record_index(kind, index(d));
    }

    /// [`Recorder::record`] of a duration whose [`index`] is `i` (one computed for several
    /// recorders).
    #[inline]
    pub fn record_index(&mut self, kind: HistKind, i: usize) {
        let k = kind as usize;
        if let Some(c) = self.counts.get_mut(k * LEN + i) {
            *c = c.saturating_add(1);
        }
        let s = &mut self.span[k];
        s.0 = s.0.min(i as u32);
        s.1 = s.1.max(i as u32);
    }

    pub fn is_empty(&self) -> bool {
        self.span.iter().all(|s| s.0 > s.1)
    }

    /// The recorded (value, count) pairs of each kind, in increasing value order, then
    /// resets.
    pub fn take_sparse(&mut self) -> [Vec<(u64, u64)>; 3] {
        let mut out: [Vec<(u64, u64)>; 3] = Default::default();
        for (k, o) in out.iter_mut().enumerate() {
            let (lo, hi) = std::mem::replace(&mut self.span[k], NO_SPAN);
            if lo > hi {
                continue;
            }
            let (lo, hi) = (lo as usize, hi as usize);
            let Some(span) = self.counts.get_mut(k * LEN + lo..=k * LEN + hi) else {
                continue;
            };
            for (j, c) in span.iter_mut().enumerate() {
                if *c != 0 {
                    o.push((value_of(lo + j), *c));
                    *c = 0;
                }
            }
        }
        out
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
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
        let mut w = Recorder::new();
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

    /// The recorder ships exactly what an hdrhistogram recording the same values reports,
    /// over the whole range (every bucket's edges, the clamps at both ends).
    #[test]
    fn recorder_matches_hdrhistogram() {
        let mut values = vec![0u64, 1, 2, 127, 128, 129, 255, 256, 257, 511, 512, 513];
        for shift in 8..32 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1, p + p / 3, p + p / 2 + 7]);
        }
        values.extend([MAX_US - 1, MAX_US, MAX_US + 1, 10 * MAX_US]);
        let mut hdr = Histogram::<u64>::new_with_bounds(1, MAX_US, SIGFIG).unwrap();
        let mut rec = Recorder::new();
        for (n, &us) in values.iter().enumerate() {
            // Some values twice: counts add up.
            for _ in 0..1 + n % 2 {
                hdr.saturating_record(us.clamp(1, MAX_US));
                rec.record(HistKind::Ttfb, Duration::from_micros(us));
            }
            let v = us.clamp(1, MAX_US);
            assert_eq!(value_of(index_of(v)), hdr.highest_equivalent(v), "{v}");
        }
        let want: Vec<(u64, u64)> = hdr
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        assert!(!rec.is_empty());
        let got = rec.take_sparse();
        let t = HistKind::Ttfb as usize;
        assert!(got.iter().enumerate().all(|(k, v)| k == t || v.is_empty()));
        assert_eq!(got[t], want);
        assert!(rec.is_empty());
        assert_eq!(rec.take_sparse(), [vec![], vec![], vec![]]);
        // Reset for real: the next delta holds only what came after.
        rec.record(HistKind::Ttfb, Duration::from_micros(300));
        assert_eq!(rec.take_sparse()[t], vec![(301, 1)]);
    }
}
