//! Statistics: workers count into plain local structs and ship deltas over a crossbeam channel
//! to one aggregator thread, every [`FLUSH_INTERVAL`] and on demand (a dump asks every worker
//! to flush first, so a dump is never stale). No atomics or locks on the hot path.
//!
//! Workers keep, besides the process-wide [`ConnCounters`] and [`HttpCounters`], a
//! [`WorkerStats`]: per-listener, per-cluster and per-backend [`Traffic`] counters indexed by
//! the snapshot's small integers, Foo message counts, and `hdrhistogram`s per cluster (request
//! latency, backend connect time, time to first byte). The aggregator names them (by cluster
//! name and backend address, so stats survive snapshot swaps), keeps totals, moving-window
//! rates and merged histograms, and renders:
//!
//! - the SIGUSR2 dump and `GET /stats`: one JSON object, the Foo keys first (see
//!   [`Aggregator::to_json`]);
//! - `GET /metrics`: Prometheus text ([`prom`]), or the Foo JSON in Foo quick mode;
//! - the recovery file ([`recovery`]), about once a second.
//!
//! The admin server reaches the aggregator through a [`StatsHandle`].

pub mod foo;
mod hist;
pub mod prom;
pub mod recovery;
pub mod window;

pub use foo::FooCounts;
use hist::Recorder;
pub use hist::{HistKind, Hists};

use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::worker::{Ctrl, WorkerHandle};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a dump waits for workers to answer a flush request.
const FLUSH_WAIT: Duration = Duration::from_millis(250);

/// Declares a counter struct once: fields, merge and JSON come from the same list.
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $field: u64),* }
        impl $name {
            pub fn merge(&mut self, o: &Self) { $(self.$field += o.$field;)* }
            pub fn is_zero(&self) -> bool { *self == Self::default() }
            pub fn to_json(&self, out: &mut Map<String, Value>) {
                $(out.insert(stringify!($field).to_string(), Value::from(self.$field));)*
            }
            /// Reads the fields `to_json` wrote (missing or invalid ones are 0).
            pub fn from_json(m: &Map<String, Value>) -> Self {
                Self { $($field: m.get(stringify!($field)).and_then(Value::as_u64).unwrap_or(0)),* }
            }
            /// (field name, value) pairs, in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); [$(stringify!($field)),*].len()] {
                [$((stringify!($field), self.$field)),*]
            }
        }
    };
}

counters! {
    /// Connection counters of both protocols (one instance per worker; deltas merged by the
    /// aggregator). Shown under the `tcp` key, the name the Foo-era tools read.
    pub struct ConnCounters {
        /// Client connections accepted.
        accepted,
        /// Client connections closed (for any reason).
        closed,
        bytes_client_to_backend,
        bytes_backend_to_client,
        /// Backend connect attempts that failed (refused, unreachable, error).
        connect_failed,
        /// Connect attempts after the first for one client connection.
        connect_retries,
        connect_timeouts,
        idle_timeouts,
        /// Client connections closed because no backend could be reached.
        no_backend,
        backend_resets,
        client_resets,
        /// Times a session had to wait for a pool buffer (back-pressure).
        buffer_waits,
        /// ... of which new work (a request head, a new connection's first bytes) waited
        /// because the pool was down to its reserve (`buffers_reserve`): the pool is too small
        /// for the requests in flight, raise `buffers_per_worker`.
        buffer_reserve_waits,
        /// Times a bounded loop hit its bound and yielded (fairness).
        loop_bound_hits,
        accept_errors,
        /// Sessions force-closed at the shutdown deadline.
        shutdown_aborted,
        /// Bulk flows handed to a kernel pipe (zero-copy splice).
        splice_starts,
        /// Backends ejected by passive outlier detection (per worker: each worker decides).
        outlier_ejections,
        /// Connections or requests turned away by a connection limit (listener, cluster,
        /// backend) or a full pending queue.
        limit_rejects,
        /// Picks made while every candidate was out of rotation (all ejected, or all down by
        /// their health checks): traffic went to one of them anyway (fail open).
        fail_open,
        /// TLS handshakes completed (client side and upstream side).
        tls_handshakes,
        /// ... of which resumed a session (ticket or session id).
        tls_resumed,
        /// TLS handshakes that failed (garbage, no shared version or cipher, a refused
        /// client certificate, a backend certificate that did not verify).
        tls_handshake_failures,
        /// Client connections closed because their handshake (or PROXY header) took longer
        /// than the listener allows.
        tls_handshake_timeouts,
        /// Client connections closed for a missing or malformed PROXY protocol header.
        proxy_header_errors,
        /// Client connections refused because they came from outside `trusted_proxies`.
        proxy_untrusted,
        /// L4 fault toxics applied to a connection (after its toxicity draw), by kind.
        fault_latency,
        fault_bandwidth,
        fault_slicer,
        fault_slow_close,
        fault_timeout,
        fault_reset_peer,
        fault_limit_data,
        /// Connection-log lines dropped because the writer fell behind.
        connection_log_dropped,
    }
}

/// The counters' earlier name (they were TCP-only once).
pub type TcpCounters = ConnCounters;

counters! {
    /// HTTP counters (one instance per worker).
    pub struct HttpCounters {
        /// Request heads received and accepted.
        requests,
        responses_1xx,
        responses_2xx,
        responses_3xx,
        responses_4xx,
        responses_5xx,
        /// Malformed or refused requests (400/414/431/505), smuggling attempts included.
        bad_requests,
        /// No route (404) or FaaS routing errors (400).
        no_route,
        /// No backend could be had (503).
        no_backend,
        /// The backend failed: unreachable, broken or malformed response (502, or an aborted
        /// response).
        upstream_errors,
        /// Backend timeouts (504).
        timeouts,
        /// Requests sent again after a reused upstream connection died.
        retries,
        /// Upstream connections opened.
        upstream_new,
        /// Requests sent on a pooled upstream connection.
        upstream_reused,
        /// Access-log lines dropped because the writer fell behind.
        access_log_dropped,
        /// L7 faults injected into requests, by kind (rules, header-triggered and the chaos
        /// broker's draws alike).
        fault_abort,
        fault_delay,
        fault_drop,
        fault_duplicate,
        fault_corrupt,
        /// Release strategy `concurrent`: requests also sent to the previous version (mirror
        /// exchanges started).
        mirrors,
        /// Mirror exchanges that got no answer (unreachable, reset, timed out, malformed).
        mirror_failures,
        /// Clients answered with a mirror's answer because the newest version failed.
        mirror_answers,
    }
}

counters! {
    /// Per service version, besides its [`Traffic`]: what release strategy `concurrent` did
    /// with it.
    pub struct VersionCounts {
        /// Requests this version failed (5xx, unreachable, timeout) that the previous version
        /// answered.
        fallbacks,
        /// Requests mirrored to this version (as the previous one of the newest).
        mirrored,
        /// Mirrored requests where this version (the newest) and the previous one answered
        /// with different statuses (no answer counts as status 0).
        mirror_status_mismatches,
        /// ... and, both answered whole, different bodies (length or hash).
        mirror_body_mismatches,
    }
}

impl HttpCounters {
    /// Counts a response status by class.
    pub fn count_status(&mut self, status: u16) {
        match status / 100 {
            1 => self.responses_1xx += 1,
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            5 => self.responses_5xx += 1,
            _ => {}
        }
    }
}

counters! {
    /// Traffic of one listener, cluster or backend.
    pub struct Traffic {
        /// Listener: client connections accepted. Cluster/backend: backend connections
        /// established.
        connections,
        /// Listener: client connections closed.
        closed,
        /// Bytes from clients towards backends (TCP/Foo).
        bytes_in,
        /// Bytes towards clients (TCP/Foo: from the backend; HTTP: responses as sent).
        bytes_out,
        /// HTTP requests finished (answered, failed or abandoned).
        requests,
        responses_1xx,
        responses_2xx,
        responses_3xx,
        responses_4xx,
        responses_5xx,
        /// Backend connects refused or failed.
        connect_errors,
        connect_timeouts,
        /// HTTP: the backend failed (502).
        upstream_errors,
        /// HTTP: the backend timed out (504).
        timeouts,
        /// HTTP: requests sent again on a fresh connection.
        retries,
    }
}

impl Traffic {
    /// Adds what a request's end counts ([`WorkerStats::request_done`]: requests, status
    /// classes, 502s and 504s, bytes out) of `o` (a cluster's, to the version alone on it).
    fn add_requests_of(&mut self, o: &Traffic) {
        self.requests += o.requests;
        self.responses_1xx += o.responses_1xx;
        self.responses_2xx += o.responses_2xx;
        self.responses_3xx += o.responses_3xx;
        self.responses_4xx += o.responses_4xx;
        self.responses_5xx += o.responses_5xx;
        self.upstream_errors += o.upstream_errors;
        self.timeouts += o.timeouts;
        self.bytes_out += o.bytes_out;
    }

    #[inline]
    pub fn count_status(&mut self, status: u16) {
        self.count_class(status / 100, status);
    }

    /// [`Traffic::count_status`] with the status's class (`status / 100`) worked out by the
    /// caller: once for a request's listener, cluster and backend.
    #[inline]
    fn count_class(&mut self, class: u16, status: u16) {
        match class {
            1 => self.responses_1xx += 1,
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            5 => {
                self.responses_5xx += 1;
                match status {
                    502 => self.upstream_errors += 1,
                    504 => self.timeouts += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Whether the counters of a request's version come from its cluster's (at flush) rather
/// than from counting the version too: the version is alone on its cluster
/// ([`crate::release::service::Version::shares_cluster`]), and the cluster is counted
/// (not with minimal stats, which keep versions only, for auto-rollback).
#[inline]
fn derived(tag: &crate::release::Tag, minimal: bool) -> bool {
    !tag.own_stats && !minimal
}

/// A finished HTTP request, as the worker reports it.
pub struct RequestDone {
    pub listener: u32,
    /// Set when a backend of this cluster was tried.
    pub cluster: Option<u32>,
    pub backend: Option<u32>,
    /// 0 when no response was sent.
    pub status: u16,
    pub bytes_out: u64,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// The service version that served it, if it was routed through a service.
    pub release: crate::release::Tag,
}

/// Counters and histograms indexed by one snapshot's listener/cluster/backend numbers.
pub struct StatSet {
    snap: Arc<Snapshot>,
    dirty: bool,
    listeners: Vec<Traffic>,
    clusters: Vec<Traffic>,
    backends: Vec<Vec<Traffic>>,
    /// Created on first use (a few tens of KiB each).
    hists: Vec<Option<Box<Recorder>>>,
    /// Per listener, likewise.
    listener_hists: Vec<Option<Box<Recorder>>>,
    /// Per service, per version (in version order).
    versions: Vec<Vec<Traffic>>,
    version_hists: Vec<Vec<Option<Box<Recorder>>>>,
    /// concurrent: fallbacks and mirrors.
    version_counts: Vec<Vec<VersionCounts>>,
}

impl StatSet {
    fn new(snap: &Arc<Snapshot>) -> StatSet {
        StatSet {
            snap: Arc::clone(snap),
            dirty: true,
            listeners: vec![Traffic::default(); snap.listeners.len()],
            clusters: vec![Traffic::default(); snap.clusters.len()],
            backends: snap
                .clusters
                .iter()
                .map(|c| vec![Traffic::default(); c.backends.len()])
                .collect(),
            hists: (0..snap.clusters.len()).map(|_| None).collect(),
            listener_hists: (0..snap.listeners.len()).map(|_| None).collect(),
            versions: snap
                .services
                .iter()
                .map(|s| vec![Traffic::default(); s.versions.len()])
                .collect(),
            version_hists: snap
                .services
                .iter()
                .map(|s| (0..s.versions.len()).map(|_| None).collect())
                .collect(),
            version_counts: snap
                .services
                .iter()
                .map(|s| vec![VersionCounts::default(); s.versions.len()])
                .collect(),
        }
    }

    #[inline]
    pub fn version(&mut self, tag: &crate::release::Tag) -> Option<&mut Traffic> {
        self.versions
            .get_mut(tag.service as usize)?
            .get_mut(tag.version as usize)
    }

    /// A request routed through a service: its version's counters (and, concurrent, those of
    /// the version that failed it first). A version alone on its cluster that reached it is
    /// not counted here: its figures are its cluster's, copied at flush ([`StatSet::take`]).
    #[inline]
    fn version_done(&mut self, r: &RequestDone, minimal: bool) {
        if r.release.failed != crate::release::service::NONE {
            self.version_failed(&r.release);
        }
        if derived(&r.release, minimal) && r.cluster.is_some() {
            return;
        }
        if let Some(t) = self.version(&r.release) {
            t.requests += 1;
            t.count_status(r.status);
            t.bytes_out += r.bytes_out;
        }
        // A version alone on its cluster reads the cluster's histogram.
        if !minimal && r.status != 0 && r.release.own_stats {
            self.record_version(&r.release, HistKind::Request, r.latency);
        }
    }

    /// concurrent: the version that failed a request another one answered.
    #[cold]
    fn version_failed(&mut self, tag: &crate::release::Tag) {
        let failed = crate::release::Tag {
            version: tag.failed,
            ..*tag
        };
        if let Some(t) = self.version(&failed) {
            t.requests += 1;
            t.responses_5xx += 1;
        }
        if let Some(n) = self.version_counts(&failed) {
            n.fallbacks += 1;
        }
    }

    #[inline]
    pub fn version_counts(&mut self, tag: &crate::release::Tag) -> Option<&mut VersionCounts> {
        self.version_counts
            .get_mut(tag.service as usize)?
            .get_mut(tag.version as usize)
    }

    #[inline]
    fn record_version(&mut self, tag: &crate::release::Tag, kind: HistKind, d: Duration) {
        let slot = self
            .version_hists
            .get_mut(tag.service as usize)
            .and_then(|v| v.get_mut(tag.version as usize));
        if let Some(slot) = slot {
            slot.get_or_insert_with(Box::default).record(kind, d);
        }
    }

    #[inline]
    pub fn listener(&mut self, i: u32) -> Option<&mut Traffic> {
        self.listeners.get_mut(i as usize)
    }

    #[inline]
    pub fn cluster(&mut self, i: u32) -> Option<&mut Traffic> {
        self.clusters.get_mut(i as usize)
    }

    #[inline]
    pub fn backend(&mut self, c: u32, b: u32) -> Option<&mut Traffic> {
        self.backends.get_mut(c as usize)?.get_mut(b as usize)
    }

    /// [`StatSet::record`] of a duration whose [`hist::index`] is `i`.
    #[inline]
    fn record_index(&mut self, cluster: u32, kind: HistKind, i: usize) {
        if let Some(slot) = self.hists.get_mut(cluster as usize) {
            slot.get_or_insert_with(Box::default).record_index(kind, i);
        }
    }

    /// [`StatSet::record_listener`] of a duration whose [`hist::index`] is `i`.
    #[inline]
    fn record_listener_index(&mut self, l: u32, kind: HistKind, i: usize) {
        if let Some(slot) = self.listener_hists.get_mut(l as usize) {
            slot.get_or_insert_with(Box::default).record_index(kind, i);
        }
    }

    #[inline]
    pub fn record(&mut self, cluster: u32, kind: HistKind, d: Duration) {
        if let Some(slot) = self.hists.get_mut(cluster as usize) {
            slot.get_or_insert_with(Box::default).record(kind, d);
        }
    }

    /// A latency of listener `l` (its requests, or its TCP connections' connects).
    #[inline]
    pub fn record_listener(&mut self, l: u32, kind: HistKind, d: Duration) {
        if let Some(slot) = self.listener_hists.get_mut(l as usize) {
            slot.get_or_insert_with(Box::default).record(kind, d);
        }
    }

    fn take(&mut self, minimal: bool) -> SetDelta {
        let zero = |v: &mut Vec<Traffic>| {
            let out = v.clone();
            v.iter_mut().for_each(|t| *t = Traffic::default());
            out
        };
        let listeners = zero(&mut self.listeners);
        let clusters = zero(&mut self.clusters);
        let backends = self.backends.iter_mut().map(zero).collect();
        let mut versions: Vec<Vec<Traffic>> = self.versions.iter_mut().map(zero).collect();
        // A version alone on its cluster: the cluster counted its requests (the layout, and so
        // this set, fixes each version's cluster and whether it shares it).
        if !minimal {
            for (s, list) in self.snap.services.iter().zip(&mut versions) {
                for (v, t) in s.versions.iter().zip(list.iter_mut()) {
                    if !v.shares_cluster {
                        if let Some(c) = clusters.get(v.cluster) {
                            t.add_requests_of(c);
                        }
                    }
                }
            }
        }
        let version_counts = self
            .version_counts
            .iter_mut()
            .map(|v| std::mem::replace(v, vec![VersionCounts::default(); v.len()]))
            .collect();
        let mut version_hists = Vec::new();
        for (si, list) in self.version_hists.iter_mut().enumerate() {
            for (vi, h) in list.iter_mut().enumerate() {
                if let Some(h) = h.as_mut().filter(|h| !h.is_empty()) {
                    for (k, values) in HistKind::ALL.into_iter().zip(h.take_sparse()) {
                        if !values.is_empty() {
                            version_hists.push((si as u32, vi as u32, k, values));
                        }
                    }
                }
            }
        }
        let sparse = |all: &mut Vec<Option<Box<Recorder>>>| {
            let mut out = Vec::new();
            for (i, h) in all.iter_mut().enumerate() {
                if let Some(h) = h.as_mut().filter(|h| !h.is_empty()) {
                    for (k, values) in HistKind::ALL.into_iter().zip(h.take_sparse()) {
                        if !values.is_empty() {
                            out.push((i as u32, k, values));
                        }
                    }
                }
            }
            out
        };
        let hists = sparse(&mut self.hists);
        let listener_hists = sparse(&mut self.listener_hists);
        self.dirty = false;
        SetDelta {
            snap: Arc::clone(&self.snap),
            listeners,
            clusters,
            backends,
            hists,
            listener_hists,
            versions,
            version_hists,
            version_counts,
        }
    }
}

/// A worker's detailed stats. HOT PATH: every method is a few adds on plain fields; a new
/// [`StatSet`] is allocated only the first time a snapshot is seen.
#[derive(Default)]
pub struct WorkerStats {
    /// Foo messages seen on Foo listeners.
    pub foo: FooCounts,
    sets: Vec<StatSet>,
    /// `server.stats = "minimal"`: only the process-wide counters; no per-listener,
    /// cluster or backend figures and no histograms (for measuring what the detail costs).
    pub minimal: bool,
}

impl WorkerStats {
    pub fn new(minimal: bool) -> WorkerStats {
        WorkerStats {
            minimal,
            ..WorkerStats::default()
        }
    }

    /// The counters for `snap`'s numbering (sessions keep the snapshot they started with).
    #[inline]
    pub fn set(&mut self, snap: &Arc<Snapshot>) -> &mut StatSet {
        // Same layout, same numbering: a weight change or a slow-start step (a new snapshot
        // each) does not start a new set.
        let i = match self
            .sets
            .iter()
            .rposition(|s| Arc::ptr_eq(&s.snap, snap) || s.snap.layout == snap.layout)
        {
            Some(i) => i,
            None => {
                self.sets.push(StatSet::new(snap));
                self.sets.len() - 1
            }
        };
        let s = &mut self.sets[i];
        s.dirty = true;
        s
    }

    pub fn accepted(&mut self, snap: &Arc<Snapshot>, listener: u32) {
        if self.minimal {
            return;
        }
        if let Some(t) = self.set(snap).listener(listener) {
            t.connections += 1;
        }
    }

    pub fn closed(&mut self, snap: &Arc<Snapshot>, listener: u32) {
        if self.minimal {
            return;
        }
        if let Some(t) = self.set(snap).listener(listener) {
            t.closed += 1;
        }
    }

    /// Bytes a TCP/Foo session moved in one pump.
    pub fn bytes(
        &mut self,
        snap: &Arc<Snapshot>,
        l: u32,
        c: u32,
        b: Option<u32>,
        up: u64,
        down: u64,
    ) {
        if (up == 0 && down == 0) || self.minimal {
            return;
        }
        let set = self.set(snap);
        let add = |t: &mut Traffic| {
            t.bytes_in += up;
            t.bytes_out += down;
        };
        set.listener(l).map(add);
        set.cluster(c).map(add);
        b.and_then(|b| set.backend(c, b)).map(add);
    }

    /// A backend connection was established after `took`.
    pub fn connected(
        &mut self,
        snap: &Arc<Snapshot>,
        l: u32,
        c: u32,
        b: Option<u32>,
        took: Duration,
    ) {
        if self.minimal {
            return;
        }
        let set = self.set(snap);
        set.record_listener(l, HistKind::Connect, took);
        if let Some(t) = set.cluster(c) {
            t.connections += 1;
        }
        if let Some(t) = b.and_then(|b| set.backend(c, b)) {
            t.connections += 1;
        }
        set.record(c, HistKind::Connect, took);
    }

    /// A backend connect failed (refused, error) or timed out.
    pub fn connect_failed(&mut self, snap: &Arc<Snapshot>, c: u32, b: Option<u32>, timeout: bool) {
        if self.minimal {
            return;
        }
        let set = self.set(snap);
        let count = |t: &mut Traffic| {
            if timeout {
                t.connect_timeouts += 1
            } else {
                t.connect_errors += 1
            }
        };
        if let Some(t) = set.cluster(c) {
            count(t);
        }
        if let Some(t) = b.and_then(|b| set.backend(c, b)) {
            count(t);
        }
    }

    pub fn retry(&mut self, snap: &Arc<Snapshot>, c: u32) {
        if self.minimal {
            return;
        }
        if let Some(t) = self.set(snap).cluster(c) {
            t.retries += 1;
        }
    }

    /// A mirror exchange (release strategy `concurrent`) to version `tag` ended: `status` 0
    /// when it got no answer. Counted on the version, its cluster and backend (not on the
    /// listener: no client sent it).
    pub fn mirror_done(
        &mut self,
        snap: &Arc<Snapshot>,
        tag: &crate::release::Tag,
        c: u32,
        b: u32,
        status: u16,
        latency: Duration,
    ) {
        let minimal = self.minimal;
        let set = self.set(snap);
        let count = |t: &mut Traffic| {
            t.requests += 1;
            t.count_status(status);
            if status == 0 {
                t.upstream_errors += 1;
            }
        };
        // A version alone on its cluster gets the cluster's figures at flush.
        if !derived(tag, minimal) {
            if let Some(t) = set.version(tag) {
                count(t);
            }
        }
        if minimal {
            return;
        }
        if let Some(t) = set.cluster(c) {
            count(t);
        }
        if let Some(t) = set.backend(c, b) {
            count(t);
        }
        if status != 0 {
            set.record(c, HistKind::Request, latency);
        }
    }

    /// A request was mirrored to version `mirror`; comparing the newest version's answer
    /// with the mirror's found `m` (`None`: nothing to compare, the client went away).
    pub fn mirrored(
        &mut self,
        snap: &Arc<Snapshot>,
        mirror: &crate::release::Tag,
        newest: &crate::release::Tag,
        m: Option<crate::session::mirror::Mismatch>,
    ) {
        let set = self.set(snap);
        if let Some(n) = set.version_counts(mirror) {
            n.mirrored += 1;
        }
        let Some(m) = m.filter(|m| m.status || m.body) else {
            return;
        };
        if let Some(n) = set.version_counts(newest) {
            n.mirror_status_mismatches += u64::from(m.status);
            n.mirror_body_mismatches += u64::from(m.body);
        }
    }

    pub fn request_done(&mut self, snap: &Arc<Snapshot>, r: &RequestDone) {
        let service = !r.release.is_none();
        // Versions are counted even with minimal stats: auto-rollback judges them by these.
        if self.minimal && !service {
            return;
        }
        let minimal = self.minimal;
        let set = self.set(snap);
        if service {
            set.version_done(r, minimal);
        }
        if minimal {
            return;
        }
        let class = r.status / 100;
        let count = |t: &mut Traffic| {
            t.requests += 1;
            t.count_class(class, r.status);
            t.bytes_out += r.bytes_out;
        };
        if let Some(t) = set.listener(r.listener) {
            count(t);
        }
        // Each latency's histogram index is worked out once for the listener and the cluster.
        let latency = (r.status != 0).then(|| hist::index(r.latency));
        let ttfb = r.ttfb.map(hist::index);
        if let Some(i) = latency {
            set.record_listener_index(r.listener, HistKind::Request, i);
        }
        if let Some(i) = ttfb {
            set.record_listener_index(r.listener, HistKind::Ttfb, i);
        }
        let Some(c) = r.cluster else {
            return;
        };
        if let Some(t) = set.cluster(c) {
            count(t);
        }
        if let Some(t) = r.backend.and_then(|b| set.backend(c, b)) {
            count(t);
        }
        if let Some(i) = latency {
            set.record_index(c, HistKind::Request, i);
        }
        if let Some(i) = ttfb {
            set.record_index(c, HistKind::Ttfb, i);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.foo.is_zero() && !self.sets.iter().any(|s| s.dirty)
    }

    /// What changed since the last call (allocates: called at flush time only). Sets of
    /// snapshots nobody else holds any more are dropped.
    pub fn take_delta(&mut self) -> Option<Box<Detail>> {
        if self.is_zero() {
            self.sets.retain(|s| Arc::strong_count(&s.snap) > 1);
            return None;
        }
        let sets = self
            .sets
            .iter_mut()
            .filter(|s| s.dirty)
            .map(|s| s.take(self.minimal))
            .collect();
        self.sets.retain(|s| Arc::strong_count(&s.snap) > 1);
        Some(Box::new(Detail {
            foo: std::mem::take(&mut self.foo),
            sets,
        }))
    }
}

/// The per-worker detail of one delta.
pub struct Detail {
    pub foo: FooCounts,
    pub sets: Vec<SetDelta>,
}

type SparseHist = (u32, HistKind, Vec<(u64, u64)>);
/// (service, version, kind, recorded (value, count) pairs).
type SparseVersionHist = (u32, u32, HistKind, Vec<(u64, u64)>);

pub struct SetDelta {
    snap: Arc<Snapshot>,
    listeners: Vec<Traffic>,
    clusters: Vec<Traffic>,
    backends: Vec<Vec<Traffic>>,
    /// (cluster, kind, recorded (value, count) pairs).
    hists: Vec<SparseHist>,
    /// (listener, kind, recorded (value, count) pairs).
    listener_hists: Vec<SparseHist>,
    versions: Vec<Vec<Traffic>>,
    version_hists: Vec<SparseVersionHist>,
    version_counts: Vec<Vec<VersionCounts>>,
}

/// Figures of another module shown in `/stats` (under its own key) and `/metrics` (the
/// autoscaler's decisions, for one). Rendered on the stats thread: keep them quick.
pub trait Section: Send + Sync {
    /// The key in the stats object.
    fn key(&self) -> &'static str;
    /// Its value (`None`: leave the key out).
    fn json(&self) -> Option<Value>;
    /// Adds its families to the Prometheus text.
    fn prometheus(&self, out: &mut prom::Out);
}

/// A cluster's running totals, for modules that watch the load ([`StatsHandle::sample`]).
#[derive(Debug, Clone)]
pub struct ClusterSample {
    pub name: String,
    /// HTTP requests finished.
    pub requests: u64,
    /// Backend connections established.
    pub connections: u64,
    /// Request latency (µs) recorded so far, when asked for.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
}

/// What a [`StatsHandle`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Json,
    Prometheus,
    /// The totals the recovery file keeps (JSON), for a binary upgrade's hand-over.
    Totals,
}

// Deltas are the common message; boxing them would allocate on every flush for no gain.
#[allow(clippy::large_enum_variant)]
pub enum StatsMsg {
    Delta {
        worker: usize,
        /// The highest flush request this delta answers (0 for periodic ones).
        seq: u64,
        /// The counts were made between this (the previous flush) and the send.
        since: Instant,
        tcp: ConnCounters,
        http: HttpCounters,
        detail: Option<Box<Detail>>,
        /// What the worker's engine holds now (replaces the worker's previous figures).
        gauges: crate::engine::Gauges,
    },
    /// Print the dump to stdout (SIGUSR2).
    Dump,
    /// Render for the admin API; the answer goes to `reply`.
    Query {
        what: Query,
        reply: Sender<String>,
    },
    /// Binary upgrade, successor side: add the predecessor's totals (same shape as
    /// [`Query::Totals`]).
    Adopt(Map<String, Value>),
    /// Binary upgrade, predecessor side: the successor keeps the totals and the recovery
    /// file from now on.
    StopSaving,
    /// Running totals of these clusters (name, with the latency histogram), answered at once
    /// from what the aggregator has (workers flush every [`FLUSH_INTERVAL`]).
    Sample {
        clusters: Vec<(String, bool)>,
        reply: Sender<Vec<ClusterSample>>,
    },
    Stop,
}

/// How long a [`StatsHandle`] waits for the aggregator.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// The recovery file is rewritten this often.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How stats are served and kept (set from the command line, not the config file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsConfig {
    /// Foo quick mode: `/metrics` answers the Foo JSON, as the original did.
    pub foo_compat: bool,
    /// Where totals and the 10 s window are saved about once a second and restored from
    /// (quick mode: `-recovery-path`; config mode: `state_dir/stats.json`).
    pub recovery_path: Option<PathBuf>,
    /// Started by a binary upgrade: the totals come from the previous process
    /// ([`StatsMsg::Adopt`]), not from the recovery file.
    pub inherit: bool,
}

/// The admin server's way in: cheap to clone, safe to use from any thread.
#[derive(Clone)]
pub struct StatsHandle {
    tx: Sender<StatsMsg>,
    foo_compat: bool,
}

impl StatsHandle {
    fn query(&self, what: Query) -> Option<String> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.tx.send(StatsMsg::Query { what, reply }).ok()?;
        rx.recv_timeout(QUERY_TIMEOUT).ok()
    }

    /// Fresh (asks workers to flush first, bounded wait); same object as the SIGUSR2 line.
    pub fn stats_json(&self) -> String {
        self.query(Query::Json)
            .unwrap_or_else(|| r#"{"error":"stats unavailable"}"#.to_string())
    }

    /// The totals, fresh (see [`Query::Totals`]).
    pub fn totals(&self) -> Option<Map<String, Value>> {
        let text = self.query(Query::Totals)?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        }
    }

    /// See [`StatsMsg::Adopt`].
    pub fn adopt(&self, totals: Map<String, Value>) {
        let _ = self.tx.send(StatsMsg::Adopt(totals));
    }

    /// See [`StatsMsg::StopSaving`].
    pub fn stop_saving(&self) {
        let _ = self.tx.send(StatsMsg::StopSaving);
    }

    /// Running totals of `clusters` (name, whether to include the latency histogram); `None`
    /// when the aggregator does not answer within a second.
    pub fn sample(&self, clusters: Vec<(String, bool)>) -> Option<Vec<ClusterSample>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.tx.send(StatsMsg::Sample { clusters, reply }).ok()?;
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }

    /// Body and content type for GET /metrics: Prometheus text (`text/plain; version=0.0.4`)
    /// in config mode, the Foo JSON in Foo quick mode.
    pub fn metrics(&self) -> (&'static str, String) {
        if self.foo_compat {
            return ("application/json", self.stats_json());
        }
        let body = self
            .query(Query::Prometheus)
            .unwrap_or_else(|| "# stats unavailable\n".to_string());
        ("text/plain; version=0.0.4", body)
    }
}

impl crate::admin::StatsSource for StatsHandle {
    fn stats_json(&self) -> String {
        StatsHandle::stats_json(self)
    }
    fn metrics(&self) -> (&'static str, String) {
        StatsHandle::metrics(self)
    }
}

/// Aggregated per-cluster state, by name.
#[derive(Default)]
pub(crate) struct ClusterAgg {
    pub(crate) traffic: Traffic,
    pub(crate) hists: Option<Hists>,
    /// By backend address (`host:port`).
    pub(crate) backends: BTreeMap<String, Traffic>,
}

/// Aggregated state of one service version, by (service name, version id).
#[derive(Default)]
pub(crate) struct VersionAgg {
    pub(crate) traffic: Traffic,
    pub(crate) hists: Option<Hists>,
    /// concurrent: fallbacks and mirrors.
    pub(crate) counts: VersionCounts,
}

/// Auto-rollback: the aggregator feeds per-version counts to the monitor and sends its
/// verdicts to the release controller.
struct ReleaseLink {
    monitor: crate::release::monitor::Monitor,
    triggers: Sender<crate::release::monitor::Trigger>,
    releases: Arc<crate::release::api::Releases>,
}

/// Moving windows of the rates the dump shows.
pub(crate) struct Windows {
    pub(crate) foo_req: window::Window,
    pub(crate) foo_resp: window::Window,
    pub(crate) connections: window::Window,
    pub(crate) http_requests: window::Window,
    pub(crate) bytes: window::Window,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct Aggregator {
    rx: Receiver<StatsMsg>,
    tx: Sender<StatsMsg>,
    workers: Vec<WorkerHandle>,
    answered: Vec<u64>,
    /// Each worker's latest engine gauges.
    pub(crate) gauges: Vec<crate::engine::Gauges>,
    /// The engine the workers run (set at start; the gauges name it too).
    engine: &'static str,
    seq: u64,
    pub(crate) tcp: ConnCounters,
    pub(crate) http: HttpCounters,
    pub(crate) foo: FooCounts,
    pub(crate) listeners: BTreeMap<String, Traffic>,
    /// Latency per listener, by name.
    pub(crate) listener_hists: BTreeMap<String, Hists>,
    pub(crate) clusters: BTreeMap<String, ClusterAgg>,
    /// By (service, version id).
    pub(crate) versions: BTreeMap<(String, String), VersionAgg>,
    release: Option<ReleaseLink>,
    /// All clusters merged.
    pub(crate) hists: Option<Hists>,
    pub(crate) windows: Windows,
    pub(crate) snapshot: SharedSnapshot,
    foo_compat: bool,
    recovery_path: Option<PathBuf>,
    last_save: Instant,
    save_failed: bool,
    pub(crate) started: Instant,
    pub(crate) started_unix: f64,
    pub(crate) sections: Vec<Arc<dyn Section>>,
}

impl Aggregator {
    /// `tx` is the sending half of `rx` (kept for [`Aggregator::handle`]). With a recovery
    /// path, a recent recovery file is restored here.
    pub fn new(
        rx: Receiver<StatsMsg>,
        tx: Sender<StatsMsg>,
        workers: Vec<WorkerHandle>,
        snapshot: SharedSnapshot,
        opts: &StatsConfig,
    ) -> Aggregator {
        let n = workers.len();
        let now = unix_now();
        let w = || window::Window::new(now);
        let mut a = Aggregator {
            rx,
            tx,
            workers,
            answered: vec![0; n],
            gauges: vec![crate::engine::Gauges::default(); n],
            engine: "",
            seq: 0,
            tcp: ConnCounters::default(),
            http: HttpCounters::default(),
            foo: FooCounts::default(),
            listeners: BTreeMap::new(),
            listener_hists: BTreeMap::new(),
            clusters: BTreeMap::new(),
            versions: BTreeMap::new(),
            release: None,
            hists: None,
            windows: Windows {
                foo_req: w(),
                foo_resp: w(),
                connections: w(),
                http_requests: w(),
                bytes: w(),
            },
            snapshot,
            foo_compat: opts.foo_compat,
            recovery_path: opts.recovery_path.clone(),
            last_save: Instant::now(),
            save_failed: false,
            started: Instant::now(),
            started_unix: now,
            sections: Vec::new(),
        };
        if !opts.inherit {
            a.restore();
        }
        a
    }

    /// Connects auto-rollback: verdicts go to `triggers`; the history of rollbacks shows in
    /// `/stats` and `/metrics`.
    pub fn attach_release(
        &mut self,
        triggers: Sender<crate::release::monitor::Trigger>,
        releases: Arc<crate::release::api::Releases>,
    ) {
        self.release = Some(ReleaseLink {
            monitor: crate::release::monitor::Monitor::default(),
            triggers,
            releases,
        });
    }

    /// A version's latency: its own histograms, or its cluster's when it is the cluster's
    /// only user ([`crate::release::service::Version::shares_cluster`]).
    pub(crate) fn version_hists<'a>(
        &'a self,
        v: &crate::release::service::Version,
        agg: &'a VersionAgg,
    ) -> Option<&'a Hists> {
        if v.shares_cluster {
            agg.hists.as_ref()
        } else {
            self.clusters
                .get(&v.cluster_name)
                .and_then(|c| c.hists.as_ref())
        }
    }

    pub(crate) fn release_history(&self, service: &str) -> crate::release::api::History {
        self.release
            .as_ref()
            .map(|r| r.releases.history(service))
            .unwrap_or_default()
    }

    /// Shows `s` in the dump, `/stats` and `/metrics`.
    pub fn add_section(&mut self, s: Arc<dyn Section>) {
        self.sections.push(s);
    }

    fn answer_sample(&self, clusters: &[(String, bool)], reply: &Sender<Vec<ClusterSample>>) {
        let out = clusters
            .iter()
            .map(|(name, latency)| {
                let agg = self.clusters.get(name);
                ClusterSample {
                    name: name.clone(),
                    requests: agg.map_or(0, |a| a.traffic.requests),
                    connections: agg.map_or(0, |a| a.traffic.connections),
                    latency: latency
                        .then(|| {
                            agg.and_then(|a| a.hists.as_ref())
                                .map(|h| h.get(HistKind::Request).clone())
                        })
                        .flatten(),
                }
            })
            .collect();
        let _ = reply.send(out);
    }

    /// A handle for the admin server (`GET /stats`, `GET /metrics`).
    pub fn handle(&self) -> StatsHandle {
        StatsHandle {
            tx: self.tx.clone(),
            foo_compat: self.foo_compat,
        }
    }

    pub fn run(mut self) {
        loop {
            let wait = SAVE_INTERVAL.saturating_sub(self.last_save.elapsed());
            match self.rx.recv_timeout(wait) {
                Ok(m @ StatsMsg::Delta { .. }) => self.apply(m),
                Ok(m @ (StatsMsg::Dump | StatsMsg::Query { .. })) => self.serve(vec![m]),
                Ok(StatsMsg::Adopt(t)) => self.adopt(&t),
                Ok(StatsMsg::StopSaving) => self.recovery_path = None,
                Ok(StatsMsg::Sample { clusters, reply }) => self.answer_sample(&clusters, &reply),
                Ok(StatsMsg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.last_save.elapsed() >= SAVE_INTERVAL {
                self.save();
            }
        }
        // Drain what the workers sent last, then save once more.
        while let Ok(m) = self.rx.try_recv() {
            self.apply(m);
        }
        self.save();
    }

    /// Unix time (fractional seconds) of an `Instant`.
    fn unix_at(&self, t: Instant) -> f64 {
        match t.checked_duration_since(self.started) {
            Some(d) => self.started_unix + d.as_secs_f64(),
            None => self.started_unix - self.started.duration_since(t).as_secs_f64(),
        }
    }

    /// Merges a worker delta (other messages are ignored).
    fn apply(&mut self, m: StatsMsg) {
        let StatsMsg::Delta {
            worker,
            seq,
            since,
            tcp,
            http,
            detail,
            gauges,
        } = m
        else {
            return;
        };
        if self.gauges.len() <= worker {
            self.gauges
                .resize(worker + 1, crate::engine::Gauges::default());
        }
        self.gauges[worker] = gauges;
        // The delta's counts happened between the worker's previous flush and now: spread
        // them over that span, so flush timing does not bend the 1 s rate.
        let now = unix_now();
        let from = self.unix_at(since).min(now);
        self.tcp.merge(&tcp);
        self.http.merge(&http);
        let w = &mut self.windows;
        w.connections.add_span(from, now, tcp.accepted);
        w.http_requests.add_span(from, now, http.requests);
        w.bytes.add_span(
            from,
            now,
            tcp.bytes_client_to_backend + tcp.bytes_backend_to_client,
        );
        if let Some(a) = self.answered.get_mut(worker) {
            *a = (*a).max(seq);
        }
        let Some(d) = detail else {
            return;
        };
        self.foo.merge(&d.foo);
        w.foo_req.add_span(from, now, d.foo.req);
        w.foo_resp.add_span(from, now, d.foo.ack + d.foo.nak);
        for set in d.sets {
            self.apply_set(set);
        }
        if let Some(link) = self.release.as_mut() {
            let snap = self.snapshot.load();
            for t in link.monitor.check(&snap, crate::snapshot::unix_ms()) {
                let _ = link.triggers.send(t);
            }
        }
    }

    fn apply_set(&mut self, d: SetDelta) {
        let snap = &d.snap;
        for (l, t) in snap.listeners.iter().zip(&d.listeners) {
            if let (Some(l), false) = (l, t.is_zero()) {
                self.listeners.entry(l.name.clone()).or_default().merge(t);
            }
        }
        for (l, kind, values) in &d.listener_hists {
            let Some(l) = snap.listeners.get(*l as usize).and_then(Option::as_ref) else {
                continue;
            };
            if !self.listener_hists.contains_key(&l.name) {
                let Some(h) = Hists::new() else { continue };
                self.listener_hists.insert(l.name.clone(), h);
            }
            if let Some(h) = self.listener_hists.get_mut(&l.name) {
                h.add_sparse(*kind, values);
            }
        }
        for (i, c) in snap.clusters.iter().enumerate() {
            let ct = d.clusters.get(i).copied().unwrap_or_default();
            let bts = d.backends.get(i).map(Vec::as_slice).unwrap_or(&[]);
            if ct.is_zero() && bts.iter().all(Traffic::is_zero) {
                continue;
            }
            let agg = self.clusters.entry(c.name.clone()).or_default();
            agg.traffic.merge(&ct);
            for (b, t) in c.backends.iter().zip(bts) {
                if !t.is_zero() {
                    agg.backends.entry(b.addr.to_string()).or_default().merge(t);
                }
            }
        }
        let now_ms = crate::snapshot::unix_ms();
        for (si, svc) in snap.services.iter().enumerate() {
            let Some(list) = d.versions.get(si) else {
                continue;
            };
            for (vi, (v, t)) in svc.versions.iter().zip(list).enumerate() {
                let counts = d
                    .version_counts
                    .get(si)
                    .and_then(|f| f.get(vi))
                    .copied()
                    .unwrap_or_default();
                if t.is_zero() && counts.is_zero() {
                    continue;
                }
                let key = (
                    svc.name.clone(),
                    String::from_utf8_lossy(&v.id).into_owned(),
                );
                let agg = self.versions.entry(key).or_default();
                agg.traffic.merge(t);
                agg.counts.merge(&counts);
                if let Some(link) = self.release.as_mut() {
                    link.monitor
                        .record(snap, si, vi, now_ms, t.requests, t.responses_5xx);
                }
            }
        }
        for (si, vi, kind, values) in &d.version_hists {
            let Some((svc, v)) = snap
                .services
                .get(*si as usize)
                .and_then(|s| Some((s, s.versions.get(*vi as usize)?)))
            else {
                continue;
            };
            let key = (
                svc.name.clone(),
                String::from_utf8_lossy(&v.id).into_owned(),
            );
            let agg = self.versions.entry(key).or_default();
            if agg.hists.is_none() {
                agg.hists = Hists::new();
            }
            if let Some(h) = agg.hists.as_mut() {
                h.add_sparse(*kind, values);
            }
        }
        for (c, kind, values) in &d.hists {
            let Some(cl) = snap.clusters.get(*c as usize) else {
                continue;
            };
            let agg = self.clusters.entry(cl.name.clone()).or_default();
            if agg.hists.is_none() {
                agg.hists = Hists::new();
            }
            if let Some(h) = agg.hists.as_mut() {
                h.add_sparse(*kind, values);
            }
            if self.hists.is_none() {
                self.hists = Hists::new();
            }
            if let Some(h) = self.hists.as_mut() {
                h.add_sparse(*kind, values);
            }
        }
    }

    /// Asks every worker for its latest counters and waits (bounded) for the answers. Dumps
    /// and queries that arrive meanwhile are returned, to be served after a later refresh.
    fn refresh(&mut self) -> Vec<StatsMsg> {
        self.seq += 1;
        let seq = self.seq;
        for w in &self.workers {
            w.send(Ctrl::FlushStats(seq));
        }
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut later = Vec::new();
        while self.answered.iter().any(|&a| a < seq) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m @ StatsMsg::Delta { .. }) => self.apply(m),
                Ok(m @ (StatsMsg::Dump | StatsMsg::Query { .. })) => later.push(m),
                Ok(StatsMsg::Adopt(t)) => self.adopt(&t),
                Ok(StatsMsg::StopSaving) => self.recovery_path = None,
                Ok(StatsMsg::Sample { clusters, reply }) => self.answer_sample(&clusters, &reply),
                Ok(StatsMsg::Stop) => {
                    // Put it back for the main loop.
                    let _ = self.tx.send(StatsMsg::Stop);
                    break;
                }
                Err(_) => break,
            }
        }
        later
    }

    /// Serves dumps and queries, each from counters refreshed after it arrived.
    fn serve(&mut self, mut batch: Vec<StatsMsg>) {
        while !batch.is_empty() {
            let later = self.refresh();
            for m in batch {
                match m {
                    StatsMsg::Dump => self.dump(),
                    StatsMsg::Query { what, reply } => {
                        let text = match what {
                            Query::Json => self.to_json().to_string(),
                            Query::Prometheus => prom::render(self),
                            Query::Totals => Value::Object(self.totals_json()).to_string(),
                        };
                        let _ = reply.send(text);
                    }
                    _ => {}
                }
            }
            batch = later;
        }
    }

    fn dump(&self) {
        let line = self.to_json().to_string();
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the proxy down; there is nobody to tell.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    pub(crate) fn rate(&self, w: &window::Window, secs: u64) -> f64 {
        // Rounded to 3 decimals: the dump stays short and stable.
        (w.rate(unix_now(), secs) * 1000.0).round() / 1000.0
    }

    /// The dump: the Foo keys first, in the original order, then the full tree.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let f = &self.foo;
        let w = &self.windows;
        m.insert("msg_total".into(), Value::from(f.req + f.ack + f.nak));
        m.insert("msg_req".into(), Value::from(f.req));
        m.insert("msg_ack".into(), Value::from(f.ack));
        m.insert("msg_nak".into(), Value::from(f.nak));
        for (k, win, s) in [
            ("request_rate_1s", &w.foo_req, 1),
            ("request_rate_10s", &w.foo_req, 10),
            ("response_rate_1s", &w.foo_resp, 1),
            ("response_rate_10s", &w.foo_resp, 10),
        ] {
            m.insert(k.into(), Value::from(self.rate(win, s)));
        }
        m.insert("msg_invalid".into(), Value::from(f.invalid));
        m.insert(
            "request_rate_60s".into(),
            Value::from(self.rate(&w.foo_req, 60)),
        );
        m.insert(
            "response_rate_60s".into(),
            Value::from(self.rate(&w.foo_resp, 60)),
        );
        m.insert(
            "uptime_s".into(),
            Value::from(self.started.elapsed().as_secs_f64()),
        );
        m.insert("workers".into(), Value::from(self.workers.len()));
        m.insert("process".into(), self.process_json());
        m.insert("engine".into(), self.engine_json());
        let mut rates = Map::new();
        for (name, win) in [
            ("connections", &w.connections),
            ("http_requests", &w.http_requests),
            ("bytes", &w.bytes),
        ] {
            for s in [1, 10, 60] {
                rates.insert(format!("{name}_{s}s"), Value::from(self.rate(win, s)));
            }
        }
        m.insert("rates".into(), Value::Object(rates));
        let mut tcp = Map::new();
        self.tcp.to_json(&mut tcp);
        tcp.insert(
            "active".into(),
            Value::from(self.tcp.accepted.saturating_sub(self.tcp.closed)),
        );
        m.insert("tcp".into(), Value::Object(tcp));
        let mut http = Map::new();
        self.http.to_json(&mut http);
        m.insert("http".into(), Value::Object(http));
        m.insert("latency_ms".into(), hists_json(self.hists.as_ref()));
        let snap = self.snapshot.load();
        let mut listeners = Map::new();
        for l in snap.listeners.iter().flatten() {
            let t = self.listeners.get(&l.name).copied().unwrap_or_default();
            let mut o = Map::new();
            o.insert("protocol".into(), Value::from(l.protocol.as_str()));
            o.insert(
                "active".into(),
                Value::from(t.connections.saturating_sub(t.closed)),
            );
            t.to_json(&mut o);
            o.insert(
                "latency_ms".into(),
                hists_json(self.listener_hists.get(&l.name)),
            );
            if let Some(tls) = &l.tls {
                o.insert("tls_certificates".into(), certs_json(&tls.certs));
            }
            listeners.insert(l.name.clone(), Value::Object(o));
        }
        m.insert("listeners".into(), Value::Object(listeners));
        let mut clusters = Map::new();
        let empty = ClusterAgg::default();
        for c in &snap.clusters {
            let agg = self.clusters.get(&c.name).unwrap_or(&empty);
            let mut o = Map::new();
            o.insert("balance".into(), Value::from(c.balance.as_str()));
            agg.traffic.to_json(&mut o);
            o.insert("latency_ms".into(), hists_json(agg.hists.as_ref()));
            let mut backends = Map::new();
            for (b, state) in backend_states(c) {
                let addr = b.addr.to_string();
                let t = agg.backends.get(&addr).copied().unwrap_or_default();
                let mut bo = Map::new();
                bo.insert("state".into(), Value::from(state));
                bo.insert("weight".into(), weight_json(b.weight));
                bo.insert(
                    "active".into(),
                    Value::from(b.live.active.load(std::sync::atomic::Ordering::Relaxed)),
                );
                let check = b.live.last_check.load(std::sync::atomic::Ordering::Relaxed);
                if check != 0 {
                    bo.insert(
                        "last_check".into(),
                        serde_json::json!({
                            "ok": check == 1,
                            "at_unix_ms": b.live.last_check_at_ms.load(std::sync::atomic::Ordering::Relaxed),
                        }),
                    );
                }
                t.to_json(&mut bo);
                backends.insert(addr, Value::Object(bo));
            }
            o.insert("backends".into(), Value::Object(backends));
            if let Some(tls) = c.tls.as_ref().filter(|t| !t.certs.is_empty()) {
                o.insert("tls_certificates".into(), certs_json(&tls.certs));
            }
            clusters.insert(c.name.clone(), Value::Object(o));
        }
        m.insert("clusters".into(), Value::Object(clusters));
        m.insert("services".into(), self.services_json(&snap));
        for s in &self.sections {
            if let Some(v) = s.json() {
                m.insert(s.key().into(), v);
            }
        }
        Value::Object(m)
    }

    /// Per service: where requests go, the rollback history, and each version's traffic.
    fn services_json(&self, snap: &Snapshot) -> Value {
        let mut services = Map::new();
        let empty = VersionAgg::default();
        for s in &snap.services {
            let h = self.release_history(&s.name);
            let mut o = Map::new();
            o.insert("strategy".into(), Value::from(s.strategy.as_str()));
            o.insert(
                "serving".into(),
                Value::from(s.versions[s.newest as usize].version.clone()),
            );
            if s.strategy == crate::config::services::Strategy::Gradual {
                let share = s.share(Instant::now());
                o.insert("share".into(), Value::from((share * 100.0).round() / 100.0));
            }
            o.insert("rollbacks".into(), Value::from(h.rollbacks));
            o.insert("auto_rollbacks".into(), Value::from(h.auto_rollbacks));
            o.insert("promotions".into(), Value::from(h.promotions));
            o.insert(
                "last_rollback".into(),
                serde_json::to_value(&h.last_rollback).unwrap_or(Value::Null),
            );
            let mut versions = Map::new();
            for (i, v) in s.versions.iter().enumerate() {
                let id = String::from_utf8_lossy(&v.id).into_owned();
                let agg = self
                    .versions
                    .get(&(s.name.clone(), id.clone()))
                    .unwrap_or(&empty);
                let mut vo = Map::new();
                vo.insert("id".into(), Value::from(id));
                vo.insert("cluster".into(), Value::from(v.cluster_name.clone()));
                vo.insert("state".into(), Value::from(s.state_of(i)));
                agg.traffic.to_json(&mut vo);
                if s.strategy == crate::config::services::Strategy::Concurrent {
                    for (k, n) in agg.counts.fields() {
                        vo.insert(k.into(), Value::from(n));
                    }
                }
                vo.insert("latency_ms".into(), hists_json(self.version_hists(v, agg)));
                versions.insert(version_label(s, i), Value::Object(vo));
            }
            o.insert("versions".into(), Value::Object(versions));
            services.insert(s.name.clone(), Value::Object(o));
        }
        Value::Object(services)
    }

    /// Names the engine the workers run (shown before their first stats flush).
    pub fn set_engine(&mut self, name: &'static str) {
        self.engine = name;
    }

    /// The engine the workers run.
    pub(crate) fn engine_name(&self) -> &'static str {
        if self.engine.is_empty() {
            self.engine_total().engine
        } else {
            self.engine
        }
    }

    /// All workers' engine gauges summed.
    pub(crate) fn engine_total(&self) -> crate::engine::Gauges {
        let mut t = crate::engine::Gauges::default();
        for g in &self.gauges {
            t.add(g);
        }
        t
    }

    fn engine_json(&self) -> Value {
        let g = self.engine_total();
        let mut m = Map::new();
        m.insert("name".into(), Value::from(self.engine_name()));
        m.insert("connections".into(), Value::from(g.connections));
        m.insert("ops_in_flight".into(), Value::from(g.ops_in_flight));
        m.insert("buffers_in_use".into(), Value::from(g.buffers_in_use));
        m.insert("buffers_provided".into(), Value::from(g.buffers_provided));
        m.insert("buffers_warm".into(), Value::from(g.buffers_warm));
        m.insert("pipes_in_use".into(), Value::from(g.pipes_in_use));
        m.insert("pipes_idle".into(), Value::from(g.pipes_idle));
        m.insert(
            "loop_max_ms".into(),
            Value::from(g.loop_max_us as f64 / 1000.0),
        );
        m.insert("slow_turns".into(), Value::from(g.slow_turns));
        Value::Object(m)
    }

    fn process_json(&self) -> Value {
        let p = ProcessFigures::now();
        let mut m = Map::new();
        m.insert("pid".into(), Value::from(std::process::id()));
        m.insert("cpu_seconds".into(), Value::from(p.cpu_seconds));
        m.insert("rss_bytes".into(), Value::from(p.rss_bytes));
        m.insert("open_fds".into(), Value::from(p.open_fds));
        m.insert("max_fds".into(), Value::from(p.max_fds));
        if let Some(h) = crate::heap::figures() {
            m.insert("heap_allocated_bytes".into(), Value::from(h.allocated));
            m.insert("heap_resident_bytes".into(), Value::from(h.resident));
        }
        m.insert("start_time_s".into(), Value::from(self.started_unix));
        Value::Object(m)
    }

    /// The totals the recovery file keeps.
    fn totals_json(&self) -> Map<String, Value> {
        let f = &self.foo;
        let mut m = Map::new();
        m.insert("msg_total".into(), Value::from(f.req + f.ack + f.nak));
        m.insert("msg_req".into(), Value::from(f.req));
        m.insert("msg_ack".into(), Value::from(f.ack));
        m.insert("msg_nak".into(), Value::from(f.nak));
        m.insert("msg_invalid".into(), Value::from(f.invalid));
        let mut tcp = Map::new();
        self.tcp.to_json(&mut tcp);
        m.insert("tcp".into(), Value::Object(tcp));
        let mut http = Map::new();
        self.http.to_json(&mut http);
        m.insert("http".into(), Value::Object(http));
        let traffic = |t: &Traffic| {
            let mut o = Map::new();
            t.to_json(&mut o);
            Value::Object(o)
        };
        let listeners: Map<String, Value> = self
            .listeners
            .iter()
            .map(|(k, t)| (k.clone(), traffic(t)))
            .collect();
        m.insert("listeners".into(), Value::Object(listeners));
        let mut clusters = Map::new();
        for (name, c) in &self.clusters {
            let mut o = Map::new();
            o.insert("traffic".into(), traffic(&c.traffic));
            let b: Map<String, Value> = c
                .backends
                .iter()
                .map(|(k, t)| (k.clone(), traffic(t)))
                .collect();
            o.insert("backends".into(), Value::Object(b));
            clusters.insert(name.clone(), Value::Object(o));
        }
        m.insert("clusters".into(), Value::Object(clusters));
        m
    }

    /// Sets every total from a totals object (the shape of [`Aggregator::totals_json`]).
    /// `gone`: the process that counted them has ended (a recovery file), so its connections
    /// count as closed.
    fn set_totals(&mut self, t: &Map<String, Value>, gone: bool) {
        let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.foo = FooCounts {
            req: n("msg_req"),
            ack: n("msg_ack"),
            nak: n("msg_nak"),
            invalid: n("msg_invalid"),
        };
        let obj = |k: &str| t.get(k).and_then(Value::as_object);
        if let Some(m) = obj("tcp") {
            self.tcp = ConnCounters::from_json(m);
        }
        if let Some(m) = obj("http") {
            self.http = HttpCounters::from_json(m);
        }
        if gone {
            self.tcp.closed = self.tcp.closed.max(self.tcp.accepted);
        }
        let traffic = |v: &Value| v.as_object().map(Traffic::from_json).unwrap_or_default();
        if let Some(ls) = obj("listeners") {
            for (k, v) in ls {
                let mut tr = traffic(v);
                if gone {
                    tr.closed = tr.closed.max(tr.connections);
                }
                self.listeners.insert(k.clone(), tr);
            }
        }
        if let Some(cs) = obj("clusters") {
            for (k, v) in cs {
                let agg = self.clusters.entry(k.clone()).or_default();
                if let Some(tr) = v.get("traffic") {
                    agg.traffic = traffic(tr);
                }
                if let Some(bs) = v.get("backends").and_then(Value::as_object) {
                    for (addr, tr) in bs {
                        agg.backends.insert(addr.clone(), traffic(tr));
                    }
                }
            }
        }
    }

    /// Adds a previous process's totals (binary upgrade). Its connections that are still
    /// open stay counted as open until its final totals arrive.
    fn adopt(&mut self, add: &Map<String, Value>) {
        let mut t = self.totals_json();
        crate::upgrade::add_totals(&mut t, add);
        self.set_totals(&t, false);
    }

    fn save(&mut self) {
        self.last_save = Instant::now();
        let Some(path) = self.recovery_path.as_ref() else {
            return;
        };
        let now = unix_now();
        let sec = now as u64;
        let w = &self.windows;
        let text = recovery::render(
            sec,
            (now * 1000.0) as u64,
            |s| (w.foo_req.at(s), w.foo_resp.at(s)),
            self.totals_json(),
        );
        match recovery::write_atomic(path, &text) {
            Ok(()) => {
                if self.save_failed {
                    log::info!("recovery file {} written again", path.display());
                    self.save_failed = false;
                }
            }
            Err(e) => {
                // Logged once per failure streak; the proxy keeps running.
                if !self.save_failed {
                    log::warn!("cannot write recovery file {}: {e}", path.display());
                    self.save_failed = true;
                }
            }
        }
    }

    fn restore(&mut self) {
        let Some(path) = self.recovery_path.clone() else {
            return;
        };
        let now = unix_now();
        match recovery::load(&path, now as u64) {
            recovery::Loaded::Missing => {}
            recovery::Loaded::TooOld(age) => log::info!(
                "recovery file {} is {age} s old (more than {} s): starting fresh",
                path.display(),
                recovery::MAX_AGE_S
            ),
            recovery::Loaded::Bad(why) => log::warn!(
                "recovery file {} is unreadable, ignored (starting fresh): {why}",
                path.display()
            ),
            recovery::Loaded::Restored(s) => {
                let n = |k: &str| s.rest.get(k).and_then(Value::as_u64).unwrap_or(0);
                // Connections of the previous process are closed now.
                self.set_totals(&s.rest, true);
                // The saved window was a full one; the seconds since the save are lost (0).
                let origin = s.time_stamp as f64 - recovery::SLOTS as f64;
                for &(sec, req, resp) in &s.seconds {
                    self.windows.foo_req.restore(sec, req, origin);
                    self.windows.foo_resp.restore(sec, resp, origin);
                }
                log::info!(
                    "recovery file {} restored: saved {} s ago, msg_total={}",
                    path.display(),
                    (now as u64).saturating_sub(s.time_stamp),
                    n("msg_total")
                );
            }
        }
    }
}

/// Every backend of a cluster with its state: in rotation (`up`, or `down` when the cluster
/// fails open because all are down), ejected by passive outlier detection in some worker
/// (`ejected`), taken out by health checks (`down`), or `draining`.
pub(crate) fn backend_states(
    c: &crate::snapshot::Cluster,
) -> impl Iterator<Item = (&crate::snapshot::Backend, &'static str)> {
    let rotation = if c.panic { "down" } else { "up" };
    let now = crate::snapshot::unix_ms();
    c.backends
        .iter()
        .map(move |b| {
            let ejected = b
                .live
                .ejected_until_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                > now;
            (
                b,
                if ejected && rotation == "up" {
                    "ejected"
                } else {
                    rotation
                },
            )
        })
        .chain(c.down.iter().map(|b| (b, "down")))
        .chain(c.unknown.iter().map(|b| (b, "unknown")))
        .chain(c.draining.iter().map(|b| (b, "draining")))
}

/// How a version is named in `/stats` and `/metrics`: its version string, or, when another
/// version of the service has the same string (the DSU API allows it), `string/id`.
pub(crate) fn version_label(s: &crate::release::Service, i: usize) -> String {
    let v = &s.versions[i];
    let shared = s
        .versions
        .iter()
        .enumerate()
        .any(|(j, o)| j != i && o.version == v.version);
    if shared {
        format!("{}/{}", v.version, String::from_utf8_lossy(&v.id))
    } else {
        v.version.clone()
    }
}

/// Certificates in use: file, names, `not_after` (Unix seconds) and seconds left.
fn certs_json(certs: &[crate::tls::CertInfo]) -> Value {
    let now = crate::snapshot::unix_ms() as i64 / 1000;
    Value::Array(
        certs
            .iter()
            .map(|c| {
                serde_json::json!({
                    "file": c.file.display().to_string(),
                    "names": c.names,
                    "not_after": c.not_after,
                    "expires_in_s": c.not_after - now,
                })
            })
            .collect(),
    )
}

/// A snapshot weight (scaled by `WEIGHT_SCALE`) as the configured one.
pub(crate) fn weight_value(w: u32) -> f64 {
    f64::from(w) / f64::from(crate::snapshot::WEIGHT_SCALE)
}

fn weight_json(w: u32) -> Value {
    let v = weight_value(w);
    if v.fract() == 0.0 {
        Value::from(v as u64)
    } else {
        Value::from((v * 100.0).round() / 100.0)
    }
}

fn hists_json(h: Option<&Hists>) -> Value {
    let mut m = Map::new();
    let empty = Hists::new();
    for k in HistKind::ALL {
        let v = match h.or(empty.as_ref()) {
            Some(h) => hist::summary(h.get(k)),
            None => Value::Null,
        };
        m.insert(k.json_key().into(), v);
    }
    Value::Object(m)
}

/// CPU, memory and descriptors of this process.
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl ProcessFigures {
    pub fn now() -> ProcessFigures {
        ProcessFigures {
            cpu_seconds: crate::sys::cpu_seconds().unwrap_or(0.0),
            rss_bytes: crate::sys::rss_kib().unwrap_or(0) * 1024,
            open_fds: crate::sys::open_fds().unwrap_or(0),
            max_fds: crate::sys::nofile_limit().map_or(0, |(soft, _)| soft),
        }
    }
}

/// The sending half workers hold.
pub type StatsSender = Sender<StatsMsg>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{service::NONE, Tag};

    /// A service of two versions on clusters `a` and `b`; `shared`: a second listener targets
    /// `b` directly.
    fn release_snap(shared: bool) -> Arc<Snapshot> {
        let mut text = String::from(
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
strategy = "concurrent"
versions = [{ version = "1.0", cluster = "a" }, { version = "1.1", cluster = "b" }]
"#,
        );
        if shared {
            text.push_str(
                "[[listeners]]\nname = \"direct\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"b\"\n",
            );
        }
        let cfg = crate::config::parse_str(&text).expect("valid");
        Arc::new(Snapshot::build(&cfg, 1, None))
    }

    /// Every kind of request end a version sees, counted on a version alone on its cluster
    /// (its figures copied from the cluster's at flush), with minimal stats, and on a version
    /// sharing its cluster (counted one by one): the versions' figures are the same.
    #[test]
    fn a_version_alone_on_its_cluster_gets_the_same_figures() {
        let run = |shared: bool, minimal: bool| {
            let snap = release_snap(shared);
            let tag = |v: u16| Tag {
                service: 0,
                version: v,
                own_stats: snap.services[0].versions[v as usize].shares_cluster,
                ..Tag::NONE
            };
            assert!(!tag(0).own_stats);
            assert_eq!(tag(1).own_stats, shared);
            let mut w = WorkerStats::new(minimal);
            let done = |w: &mut WorkerStats, status, cluster, release| {
                w.request_done(
                    &snap,
                    &RequestDone {
                        listener: 0,
                        cluster,
                        backend: cluster.map(|_| 0),
                        status,
                        bytes_out: u64::from(status) * 3,
                        latency: Duration::from_millis(2),
                        ttfb: None,
                        release,
                    },
                )
            };
            for (status, v) in [(200, 1), (404, 1), (502, 1), (504, 0), (101, 0), (0, 1)] {
                done(&mut w, status, Some(v), tag(v as u16));
            }
            // Never reached a backend: counted on the version only.
            done(&mut w, 503, None, tag(1));
            // Fell back: 1.1 failed it, 1.0 answered.
            let fell = Tag {
                failed: 1,
                ..tag(0)
            };
            assert_ne!(fell.failed, NONE);
            done(&mut w, 200, Some(0), fell);
            // Mirrored to 1.0: answered, and not.
            w.mirror_done(&snap, &tag(0), 0, 0, 200, Duration::from_millis(1));
            w.mirror_done(&snap, &tag(0), 0, 0, 0, Duration::from_millis(1));
            let d = w.take_delta().expect("counted");
            assert_eq!(d.sets.len(), 1);
            let set = &d.sets[0];
            (set.versions.clone(), set.clusters.clone())
        };
        let (counted, clusters) = run(true, false);
        let v = |requests, r1, r2, r4, r5, up, to, bytes| Traffic {
            requests,
            responses_1xx: r1,
            responses_2xx: r2,
            responses_4xx: r4,
            responses_5xx: r5,
            upstream_errors: up,
            timeouts: to,
            bytes_out: bytes,
            ..Traffic::default()
        };
        let expected = vec![vec![
            v(5, 1, 2, 0, 1, 1, 1, 1_512 + 303 + 600),
            v(6, 0, 1, 1, 3, 1, 0, 600 + 1_212 + 1_506 + 1_509),
        ]];
        assert_eq!(counted, expected);
        assert_eq!(clusters[0].requests, 5, "{clusters:?}");
        assert_eq!(run(false, false).0, expected, "alone on their clusters");
        assert_eq!(run(false, true).0, expected, "minimal stats");
        assert_eq!(run(true, true).0, expected, "minimal stats, shared");
    }

    #[test]
    fn merge_and_json() {
        let mut a = ConnCounters {
            accepted: 2,
            closed: 1,
            ..Default::default()
        };
        a.merge(&ConnCounters {
            accepted: 3,
            no_backend: 1,
            ..Default::default()
        });
        assert_eq!(a.accepted, 5);
        assert_eq!(a.no_backend, 1);
        let mut m = Map::new();
        a.to_json(&mut m);
        assert_eq!(m["accepted"], 5);
        assert_eq!(m["closed"], 1);
        assert!(!a.is_zero());
        assert!(ConnCounters::default().is_zero());
    }
}
