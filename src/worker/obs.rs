//! The worker's stats hooks: one-line calls from the event loop into
//! [`crate::stats::WorkerStats`]. HOT PATH: plain adds, no allocation, lock or atomic.

use super::Worker;
use crate::balance::Outcome;
use crate::engine::Engine;
use crate::session::http::Phase;
use crate::session::Session;
use crate::stats::RequestDone;
use std::time::Duration;

impl<E: Engine> Worker<E> {
    /// An upstream connect ended (success, failure or timeout). HTTP failures count only
    /// while connecting (a reused connection that dies is not a connect failure).
    pub(super) fn obs_connect(&mut self, key: usize, outcome: Outcome) {
        let now = self.env.now;
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if let Session::Http(s) = &mut e.session {
            if outcome == Outcome::Failure && !matches!(s.phase(), Phase::Connecting(_)) {
                return;
            }
            if let Some(x) = s.exchange_mut() {
                x.log.connect_us =
                    now.saturating_duration_since(x.target.started).as_micros() as u64;
            }
        }
        let Some(t) = e.session.target() else {
            return;
        };
        let snap = e.session.snapshot();
        let took = self.env.now.saturating_duration_since(t.started);
        match outcome {
            Outcome::Success => {
                let l = e.session.listener();
                self.obs.connected(snap, l, t.cluster, t.backend, took)
            }
            Outcome::Failure => {
                // A failure that took the whole connect timeout was that timeout.
                let timeout = snap
                    .clusters
                    .get(t.cluster as usize)
                    .is_some_and(|c| took >= c.connect_timeout);
                self.obs.connect_failed(snap, t.cluster, t.backend, timeout);
            }
        }
    }

    pub(super) fn obs_retry(&mut self, key: usize) {
        if let Some(e) = self.sessions.get(key) {
            if let Some(t) = e.session.target() {
                self.obs.retry(e.session.snapshot(), t.cluster);
            }
        }
    }

    /// An HTTP request ended (answered, failed or abandoned); called once per request.
    /// Returns how long it took (from the request's start to now), which the balancer's
    /// feedback reuses.
    pub(super) fn obs_request_done(&mut self, key: usize) -> Option<Duration> {
        let e = self.sessions.get(key)?;
        let Session::Http(s) = &e.session else {
            return None;
        };
        let x = s.exchange()?;
        let tried = x.target.backend.is_some() || x.target.attempts > 0;
        // The same as `now - request_started`, in integers (both are stamps of the same clock).
        let latency = Duration::from_nanos(self.env.now_ns.saturating_sub(x.request_started_ns));
        let r = RequestDone {
            listener: s.listener,
            cluster: tried.then_some(x.target.cluster),
            backend: x.target.backend,
            status: x.status,
            bytes_out: x.sent,
            latency,
            // A response whose first byte came in this loop turn (a small one, read whole):
            // its time to first byte is the latency, without a second subtraction.
            ttfb: x.got_response_byte.then(|| {
                if x.first_byte_at == self.env.now {
                    latency
                } else {
                    x.first_byte_at.saturating_duration_since(x.request_started)
                }
            }),
            release: x.release_tag,
        };
        self.obs.request_done(&s.snapshot, &r);
        Some(latency)
    }
}
