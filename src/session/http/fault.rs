//! L7 fault injection in the HTTP session: the per-request draw (a request header when the
//! listener obeys them, then the rules of the listener, the matched route and the cluster,
//! then the chaos broker's weights) and the small helpers the phases call to carry a fault
//! out. Only reached when the snapshot holds an [`L7Table`]: with no fault set, a request
//! pays one `Option` check.
//!
//! Draws are uniform 64-bit values from splitmix64 over the request id (unique per worker and
//! restart), one per rule, so probabilities are independent per request and per rule.
//!
//! HOT PATH (for requests under faults). No allocation, lock or log.

use super::{HttpSession, Phase};
use crate::faults::{mix, BrokerDraw, FaultCode, L7Kind, L7Rule, L7Table};
use crate::http::head::Method;
use crate::session::{CloseReason, Cx, Signal, Up, Want};
use std::time::Duration;

impl HttpSession {
    /// Carries out the fault drawn for the request just routed (the session is in `Routed`
    /// with its exchange ready to go upstream).
    pub(super) fn inject(&mut self, cx: &mut Cx<'_>, kind: L7Kind) -> Want {
        let Phase::Routed(x) = &mut self.phase else {
            return Want::Upstream(Up::Need);
        };
        let h = &mut cx.env.http;
        match kind {
            L7Kind::Abort { status: 0 } => {
                h.fault_abort += 1;
                x.fault = FaultCode::Abort;
                // The client is reset, as when a backend breaks mid-response.
                Want::Close(CloseReason::UpstreamReset)
            }
            L7Kind::Abort { status } => {
                h.fault_abort += 1;
                x.fault = FaultCode::Abort;
                self.local_response(cx, status, b"text/plain", b"fault injected\n")
                    .map_or_else(|| self.next_local(), Want::from)
            }
            L7Kind::Drop => {
                h.fault_drop += 1;
                x.fault = FaultCode::Drop;
                Want::Close(CloseReason::Done)
            }
            L7Kind::Delay { ms, answer } => {
                h.fault_delay += 1;
                x.fault = FaultCode::Delay;
                let at = cx.now + Duration::from_millis(ms);
                if answer {
                    x.answer_at = Some(at);
                    Want::Upstream(Up::Need)
                } else {
                    // Held in `Routed` until the timer; then the upstream is asked for.
                    x.fault_until = Some(at);
                    Want::Idle
                }
            }
            L7Kind::Duplicate { .. } => {
                // The head was written twice when the request allows it.
                if x.fault == FaultCode::Duplicate {
                    h.fault_duplicate += 1;
                }
                Want::Upstream(Up::Need)
            }
            L7Kind::Corrupt { bytes } => {
                h.fault_corrupt += 1;
                x.fault = FaultCode::Corrupt;
                x.corrupt_left = bytes;
                Want::Upstream(Up::Need)
            }
        }
    }

    /// A timer of an injected delay is due. `true`: it was that (and nothing else is due).
    pub(super) fn fault_timer(&mut self, cx: &mut Cx<'_>) -> bool {
        match &mut self.phase {
            Phase::Routed(x) if x.fault_until.is_some_and(|t| t <= cx.now) => {
                x.fault_until = None;
                x.target.started = cx.now;
                self.pending = Some(Signal::Upstream(Up::Need));
                true
            }
            Phase::Exchange(x) if x.answer_at.is_some_and(|t| t <= cx.now) => {
                x.answer_at = None;
                self.deadline() > cx.now
            }
            _ => false,
        }
    }
}

/// The first rule of `rules` that fires (each drawn on its own).
fn first(rules: &[L7Rule], seed: u64, k: &mut u64) -> Option<L7Kind> {
    for r in rules {
        *k += 1;
        if r.threshold == u64::MAX
            || mix(seed ^ k.wrapping_mul(0x2545_f491_4f6c_dd1d)) < r.threshold
        {
            return Some(r.kind);
        }
    }
    None
}

fn broker(b: &BrokerDraw, seed: u64) -> Option<L7Kind> {
    let x = mix(seed ^ 0x6a09_e667_f3bc_c908);
    let [dup, del, salt, slow] = b.cumulative;
    if x < dup {
        Some(L7Kind::Duplicate { force: false })
    } else if x < del {
        Some(L7Kind::Drop)
    } else if x < salt {
        Some(L7Kind::Corrupt { bytes: 4 })
    } else if x < slow {
        Some(L7Kind::Delay {
            ms: b.slow.as_millis() as u64,
            answer: false,
        })
    } else {
        None
    }
}

/// `x-switchyard-fault: abort=503 | reset | drop | delay=MS | delay-answer=MS | duplicate |
/// corrupt[=N]`.
pub fn from_header(v: &[u8]) -> Option<L7Kind> {
    let v = v.trim_ascii();
    let (name, arg) = match v.iter().position(|&b| b == b'=') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let num = |a: Option<&[u8]>| -> Option<u64> {
        let a = a?.trim_ascii();
        if a.is_empty() || a.len() > 12 || !a.iter().all(u8::is_ascii_digit) {
            return None;
        }
        a.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    };
    Some(match name {
        b"abort" => {
            let s = num(arg).unwrap_or(503);
            if !(200..=599).contains(&s) {
                return None;
            }
            L7Kind::Abort { status: s as u16 }
        }
        b"reset" => L7Kind::Abort { status: 0 },
        b"drop" => L7Kind::Drop,
        b"delay" => L7Kind::Delay {
            ms: num(arg)?.min(60_000),
            answer: false,
        },
        b"delay-answer" => L7Kind::Delay {
            ms: num(arg)?.min(60_000),
            answer: true,
        },
        b"duplicate" => L7Kind::Duplicate { force: true },
        b"corrupt" => L7Kind::Corrupt {
            bytes: num(arg).unwrap_or(1).clamp(1, 1 << 20) as u32,
        },
        _ => return None,
    })
}

/// The fault for one routed request, if any. `route`: the explicit route that matched;
/// `header`: the `x-switchyard-fault` value, when present.
pub fn draw(
    t: &L7Table,
    listener: usize,
    route: Option<usize>,
    cluster: usize,
    header: Option<&[u8]>,
    seed: u64,
) -> Option<L7Kind> {
    let l = t.listeners.get(listener).and_then(Option::as_ref);
    if let (Some(l), Some(h)) = (l, header) {
        if l.header {
            if let Some(k) = from_header(h) {
                return Some(k);
            }
        }
    }
    let mut k = 0u64;
    if let Some(l) = l {
        if let Some(f) = first(&l.rules, seed, &mut k) {
            return Some(f);
        }
        if let Some(r) = route {
            for (i, rules) in &l.routes {
                if *i == r {
                    if let Some(f) = first(rules, seed, &mut k) {
                        return Some(f);
                    }
                }
            }
        }
        for (c, rules) in &l.by_cluster {
            if *c == cluster {
                if let Some(f) = first(rules, seed, &mut k) {
                    return Some(f);
                }
            }
        }
    }
    if let Some(rules) = t.clusters.get(cluster) {
        if let Some(f) = first(rules, seed, &mut k) {
            return Some(f);
        }
    }
    broker(l?.broker.as_ref()?, seed)
}

/// A duplicate goes out only for a request that can be replayed: no body, and an idempotent
/// method unless forced.
pub fn can_duplicate(kind: L7Kind, method: Method, has_body: bool) -> bool {
    matches!(kind, L7Kind::Duplicate { force } if !has_body && (force || method.is_idempotent()))
}

/// Flips up to `*left` bytes of `data`, spread over it.
pub fn corrupt(data: &mut [u8], left: &mut u32) {
    let n = (*left as usize).min(data.len());
    if n == 0 {
        return;
    }
    for i in 0..n {
        let at = i * data.len() / n;
        data[at] ^= 0xff;
    }
    *left -= n as u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_grammar() {
        assert_eq!(
            from_header(b"abort=418"),
            Some(L7Kind::Abort { status: 418 })
        );
        assert_eq!(from_header(b"abort"), Some(L7Kind::Abort { status: 503 }));
        assert_eq!(from_header(b"abort=99"), None);
        assert_eq!(from_header(b"reset"), Some(L7Kind::Abort { status: 0 }));
        assert_eq!(from_header(b" drop "), Some(L7Kind::Drop));
        assert_eq!(
            from_header(b"delay=250"),
            Some(L7Kind::Delay {
                ms: 250,
                answer: false
            })
        );
        assert_eq!(from_header(b"delay=x"), None);
        assert_eq!(
            from_header(b"delay-answer=5"),
            Some(L7Kind::Delay {
                ms: 5,
                answer: true
            })
        );
        assert_eq!(
            from_header(b"corrupt=3"),
            Some(L7Kind::Corrupt { bytes: 3 })
        );
        assert_eq!(from_header(b"nonsense"), None);
    }

    #[test]
    fn corruption_flips_exactly_the_bytes_asked_for() {
        let mut d = *b"hello world";
        let mut left = 3;
        corrupt(&mut d, &mut left);
        assert_eq!(left, 0);
        let changed = d.iter().zip(b"hello world").filter(|(a, b)| a != b).count();
        assert_eq!(changed, 3);
        let mut left = 20;
        let mut e = *b"ab";
        corrupt(&mut e, &mut left);
        assert_eq!((left, e), (18, [!b'a', !b'b']));
    }

    #[test]
    fn rule_draws_follow_their_probability() {
        let rule = |p: f64| L7Rule {
            kind: L7Kind::Drop,
            threshold: crate::faults::threshold(p),
        };
        for p in [0.0, 0.01, 0.3, 0.5, 0.99, 1.0] {
            let rules = [rule(p)];
            let n = 100_000u64;
            let hits = (0..n)
                .filter(|&i| {
                    let mut k = 0;
                    first(&rules, (7u64 << 56) ^ i, &mut k).is_some()
                })
                .count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (hits - n as f64 * p).abs() <= 5.0 * sd + 1e-9,
                "p={p}: {hits} of {n}"
            );
        }
    }
}
