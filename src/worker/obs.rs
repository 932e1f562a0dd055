//! The worker's stats hooks: one-line calls from the event loop and the HTTP side into
//! [`crate::stats::WorkerStats`]. HOT PATH: plain adds, no allocation, lock or atomic.

use super::http::HttpEntry;
use super::Worker;
use crate::balance::Outcome;
use crate::http::session::State;
use crate::snapshot::Snapshot;
use crate::stats::RequestDone;
use crate::stats::WorkerStats;
use std::sync::Arc;
use std::time::Duration;

/// Byte counters before a pump, to attribute what it moved.
pub(super) type BytesBefore = (u64, u64);

impl Worker {
    /// After a TCP/Foo pump: bytes per listener/cluster/backend, Foo message counts.
    #[inline]
    pub(super) fn obs_pumped(&mut self, key: usize, before: BytesBefore) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let up = self.stats.bytes_client_to_backend - before.0;
        let down = self.stats.bytes_backend_to_client - before.1;
        self.obs
            .bytes(&s.snapshot, s.listener, s.cluster, s.backend, up, down);
        s.take_foo(&mut self.obs.foo);
    }

    /// A TCP connect attempt ended (success, failure or timeout).
    pub(super) fn obs_connect(&mut self, key: usize, outcome: Outcome) {
        if let Some(s) = self.sessions.get(key) {
            let took = self.now.saturating_duration_since(s.connect_started);
            connect_ended(
                &mut self.obs,
                &s.snapshot,
                s.cluster,
                s.backend,
                took,
                outcome,
            );
        }
    }

    /// An HTTP upstream connect ended (failures count only while connecting).
    pub(super) fn obs_http_connect(&mut self, key: usize, outcome: Outcome) {
        let Some(HttpEntry::Session(s)) = self.http.get(key) else {
            return;
        };
        if outcome == Outcome::Failure && s.state != State::Connecting {
            return;
        }
        let took = self.now.saturating_duration_since(s.upstream_started);
        connect_ended(
            &mut self.obs,
            &s.snapshot,
            s.cluster,
            s.backend,
            took,
            outcome,
        );
    }

    pub(super) fn obs_http_retry(&mut self, key: usize) {
        if let Some(HttpEntry::Session(s)) = self.http.get(key) {
            self.obs.retry(&s.snapshot, s.cluster);
        }
    }

    /// An HTTP request ended (answered, failed or abandoned); called once per request.
    pub(super) fn obs_request_done(&mut self, key: usize) {
        let Some(HttpEntry::Session(s)) = self.http.get(key) else {
            return;
        };
        let tried = s.backend.is_some() || s.attempts > 0;
        let r = RequestDone {
            listener: s.listener,
            cluster: tried.then_some(s.cluster),
            backend: s.backend,
            status: s.status,
            bytes_out: s.log.bytes,
            latency: self.now.saturating_duration_since(s.request_started),
            ttfb: s
                .response_started()
                .then(|| s.first_byte_at.saturating_duration_since(s.request_started)),
            release: s.release,
        };
        self.obs.request_done(&s.snapshot, &r);
    }
}

fn connect_ended(
    obs: &mut WorkerStats,
    snap: &Arc<Snapshot>,
    cluster: u32,
    backend: Option<u32>,
    took: Duration,
    outcome: Outcome,
) {
    match outcome {
        Outcome::Success => obs.connected(snap, cluster, backend, took),
        Outcome::Failure => {
            // A failure that took the whole connect timeout was that timeout.
            let timeout = snap
                .clusters
                .get(cluster as usize)
                .is_some_and(|c| took >= c.connect_timeout);
            obs.connect_failed(snap, cluster, backend, timeout);
        }
    }
}
