//! Auto-rollback accounting: per version of every service with `[services.rollback]`, a
//! sliding window of finished requests and failed ones (5xx answers, which include the
//! proxy's own 502/503/504 for connect failures and timeouts). The stats aggregator feeds it
//! the per-version counts the workers ship every 100 ms, and asks for triggers after each
//! batch. Only the version new requests go to is judged, and only while an older live
//! version is there to take over. Sans-I/O: no threads, no clock.

use super::window::Window;
use crate::snapshot::Snapshot;
use std::collections::HashMap;
use std::time::Duration;

/// The evidence that a version must be rolled back.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub service: String,
    pub version: String,
    /// The live version that takes over.
    pub previous: String,
    pub requests: u64,
    pub errors: u64,
    pub rate: f64,
    pub max_rate: f64,
    pub window: Duration,
}

#[derive(Debug)]
struct Tracked {
    window: Window,
    /// A trigger went out for this version; no second one until it is live again after
    /// having been rolled back (or its window changes).
    fired: bool,
}

#[derive(Debug, Default)]
pub struct Monitor {
    /// By (service name, version id).
    tracked: HashMap<(String, Box<[u8]>), Tracked>,
}

impl Monitor {
    /// Counts `requests` finished by version `version` of service `service` (snapshot
    /// indices), `errors` of them failed.
    pub fn record(
        &mut self,
        snap: &Snapshot,
        service: usize,
        version: usize,
        now_ms: u64,
        requests: u64,
        errors: u64,
    ) {
        let Some(svc) = snap.services.get(service) else {
            return;
        };
        let (Some(rb), Some(v)) = (&svc.rollback, svc.versions.get(version)) else {
            return;
        };
        if requests == 0 {
            return;
        }
        let t = self
            .tracked
            .entry((svc.name.clone(), v.id.clone()))
            .or_insert_with(|| Tracked {
                window: Window::new(rb.window),
                fired: false,
            });
        if t.window.width() != rb.window {
            *t = Tracked {
                window: Window::new(rb.window),
                fired: false,
            };
        }
        t.window.add(now_ms, requests, errors);
    }

    /// The versions whose error rate passed their service's threshold. Forgets versions that
    /// are gone or rolled back, so one that is live again starts from a clean window.
    pub fn check(&mut self, snap: &Snapshot, now_ms: u64) -> Vec<Trigger> {
        self.tracked.retain(|(name, id), _| {
            snap.service(name).is_some_and(|s| {
                s.rollback.is_some() && s.versions.iter().any(|v| v.id == *id && !v.rolled_back)
            })
        });
        let mut out = Vec::new();
        for svc in &snap.services {
            let (Some(rb), Some(prev)) = (&svc.rollback, svc.previous) else {
                continue;
            };
            let newest = &svc.versions[svc.newest as usize];
            let Some(t) = self.tracked.get_mut(&(svc.name.clone(), newest.id.clone())) else {
                continue;
            };
            if t.fired {
                continue;
            }
            let (requests, errors) = t.window.totals(now_ms);
            if requests < rb.min_requests {
                continue;
            }
            let rate = errors as f64 / requests as f64;
            if rate > rb.max_error_rate {
                t.fired = true;
                out.push(Trigger {
                    service: svc.name.clone(),
                    version: newest.version.clone(),
                    previous: svc.versions[prev as usize].version.clone(),
                    requests,
                    errors,
                    rate,
                    max_rate: rb.max_error_rate,
                    window: rb.window,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rolled_back: bool, min: u64) -> Snapshot {
        let text = format!(
            r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
service = "shop"
[[clusters]]
name = "a"
backends = ["127.0.0.1:1"]
[[clusters]]
name = "b"
backends = ["127.0.0.1:2"]
[[services]]
name = "shop"
strategy = "session"
versions = [{{ version = "1.0", cluster = "a" }}, {{ version = "1.1", cluster = "b", rolled_back = {rolled_back} }}]
[services.rollback]
max_error_rate = 0.2
window = "10s"
min_requests = {min}
"#
        );
        let cfg = crate::config::parse_str(&text).expect("valid");
        Snapshot::build(&cfg, 1, None)
    }

    #[test]
    fn judges_the_newest_over_its_window_once() {
        let s = snap(false, 10);
        let mut m = Monitor::default();
        // Below the minimum: no verdict however bad.
        m.record(&s, 0, 1, 1_000, 9, 9);
        assert!(m.check(&s, 1_000).is_empty());
        // 10 requests, 2 failed: 20% is not above 20%.
        m.record(&s, 0, 1, 1_100, 1, 0);
        m.record(&s, 0, 1, 1_100, 0, 0);
        let mut m2 = Monitor::default();
        m2.record(&s, 0, 1, 1_000, 10, 2);
        assert!(m2.check(&s, 1_000).is_empty());
        m2.record(&s, 0, 1, 1_200, 10, 3);
        let t = m2.check(&s, 1_200);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].version.as_str(), t[0].previous.as_str()),
            ("1.1", "1.0")
        );
        assert_eq!((t[0].requests, t[0].errors), (20, 5));
        assert!(m2.check(&s, 1_300).is_empty(), "fires once");
        // The older version is never judged (nothing to fall back to).
        let mut m3 = Monitor::default();
        m3.record(&s, 0, 0, 1_000, 100, 100);
        assert!(m3.check(&s, 1_000).is_empty());
        // Errors age out of the window.
        let mut m4 = Monitor::default();
        m4.record(&s, 0, 1, 1_000, 100, 100);
        assert!(m4.check(&s, 20_000).is_empty());
        // Once rolled back it is forgotten; live again, it starts clean.
        let rolled = snap(true, 10);
        assert!(m2.check(&rolled, 1_400).is_empty());
        assert!(m2.tracked.is_empty());
        m2.record(&s, 0, 1, 2_000, 10, 1);
        assert!(m2.check(&s, 2_000).is_empty());
        m.record(&s, 0, 1, 1_200, 100, 100);
        assert_eq!(m.check(&s, 1_200).len(), 1);
    }
}
