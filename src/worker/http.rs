//! The worker's HTTP side: HTTP sessions and upstream connections live in their own slab
//! (`Worker::http`), addressed by `token::http` tokens and by timer keys with the low bit set.
//!
//! An upstream connection has its own slab entry for its whole life, so its token never
//! changes and it is registered with epoll exactly once. While a session uses it, the session
//! holds the socket and the entry names the session as its owner (events are routed there);
//! between requests it sits in the per-worker pool for its backend address, still registered,
//! so a backend closing it is noticed at once.
//!
//! HOT PATH. No allocation (beyond slab/queue growth), lock, blocking call or info-level log.

use super::pick::Pick;
use super::{is_resource_exhaustion, reset_on_close, Worker};
use crate::balance::{Outcome, PickCtx};
use crate::http::session::{HttpClose, HttpCtx, HttpSession, HttpStep, HttpTimeouts, State};
use crate::ready::Ready;
use crate::token::{self, Side};
use mio::net::TcpStream;
use mio::Interest;
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Passes through one drive before the session is queued for the next loop iteration.
const MAX_STEPS: usize = 16;

pub(super) enum HttpEntry {
    Session(Box<HttpSession>),
    Upstream(Upstream),
}

/// An upstream connection: lent to its owner session, or idle in the pool.
pub(super) struct Upstream {
    /// `None` while lent to `owner`.
    sock: Option<TcpStream>,
    owner: Option<usize>,
    addr: SocketAddr,
    /// Pool idle deadline (meaningful while pooled).
    deadline: Instant,
    timer_gen: u32,
    /// When the live timer entry (generation `timer_gen`) fires, if one is armed. The entry
    /// stays in the wheel while the connection is lent: reuse costs no wheel operation.
    timer_at: Option<Instant>,
}

impl HttpEntry {
    pub(super) fn deadline(&self) -> Instant {
        match self {
            HttpEntry::Session(s) => s.deadline(),
            HttpEntry::Upstream(u) => u.deadline,
        }
    }
    pub(super) fn timer_gen(&self) -> u32 {
        match self {
            HttpEntry::Session(s) => s.timer_gen,
            HttpEntry::Upstream(u) => u.timer_gen,
        }
    }
    /// Records the live timer entry: generation `g`, firing at `at`.
    fn set_timer(&mut self, g: u32, at: Instant) {
        match self {
            HttpEntry::Session(s) => {
                s.timer_gen = g;
                s.timer_at = at;
                s.timer_armed = true;
            }
            HttpEntry::Upstream(u) => {
                u.timer_gen = g;
                u.timer_at = Some(at);
            }
        }
    }

    /// The live timer entry was re-inserted to fire at `at`.
    pub(super) fn timer_moved(&mut self, at: Instant) {
        match self {
            HttpEntry::Session(s) => s.timer_at = at,
            HttpEntry::Upstream(u) => u.timer_at = Some(at),
        }
    }

    /// The live timer entry fired and is not re-inserted.
    pub(super) fn timer_fired(&mut self) {
        match self {
            HttpEntry::Session(s) => s.timer_armed = false,
            HttpEntry::Upstream(u) => u.timer_at = None,
        }
    }

    /// A lent upstream connection: its timer entry is meaningless until it is pooled again
    /// (the owning session's timer covers the exchange).
    pub(super) fn is_lent_upstream(&self) -> bool {
        matches!(self, HttpEntry::Upstream(u) if u.owner.is_some())
    }
}

impl Worker {
    pub(super) fn open_http(&mut self, li: usize, mut stream: TcpStream, peer: SocketAddr) {
        let snap = self.snapshot.load_full();
        let Some(route) = snap.listener(li) else {
            self.stats.closed += 1;
            return;
        };
        let timeouts = HttpTimeouts {
            request_header: route.http.request_header_timeout,
            keepalive: route.http.keepalive_timeout,
            connect: crate::config::defaults::CONNECT_TIMEOUT,
            first_byte: crate::config::defaults::FIRST_BYTE_TIMEOUT,
            backend_idle: crate::config::defaults::BACKEND_IDLE_TIMEOUT,
            tunnel_idle: route.idle_timeout,
        };
        let entry = self.http.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                token::http(key, Side::Front),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            super::listener_closed(&snap, li);
            self.stats.closed += 1;
            return;
        }
        if self.balancers.version != snap.version {
            self.balancers = super::Balancers::build(&snap, Some(&self.balancers));
        }
        self.obs.accepted(&snap, li as u32);
        let s = HttpSession::new(stream, snap, li as u32, peer.ip(), timeouts, self.now);
        entry.insert(HttpEntry::Session(Box::new(s)));
        self.http_sessions += 1;
        self.arm_http_timer(key);
        self.drive_http(key);
    }

    pub(super) fn on_http_event(&mut self, key: usize, side: Side, r: Ready) {
        match self.http.get_mut(key) {
            Some(HttpEntry::Session(s)) => {
                s.on_event(side, r);
                self.drive_http(key);
            }
            Some(HttpEntry::Upstream(u)) => match u.owner {
                Some(owner) => {
                    if let Some(HttpEntry::Session(s)) = self.http.get_mut(owner) {
                        s.on_event(Side::Back, r);
                        self.drive_http(owner);
                    }
                }
                None => self.check_pooled(key),
            },
            None => {}
        }
    }

    /// An idle pooled connection became readable: the backend closed it (or sent bytes it
    /// should not have). Either way it is no longer reusable.
    fn check_pooled(&mut self, key: usize) {
        let Some(HttpEntry::Upstream(u)) = self.http.get_mut(key) else {
            return;
        };
        let Some(sock) = u.sock.as_mut() else {
            return;
        };
        let mut probe = [0u8; 1];
        match sock.read(&mut probe) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => self.drop_pooled(key),
        }
    }

    /// Removes an idle pooled connection (closing it).
    fn drop_pooled(&mut self, key: usize) {
        if let Some(HttpEntry::Upstream(u)) = self.http.get(key) {
            if u.owner.is_some() {
                return; // lent out: its session decides
            }
            if let HttpEntry::Upstream(u) = self.http.remove(key) {
                if let Some(list) = self.upstream_pool.get_mut(&u.addr) {
                    list.retain(|&k| k != key);
                }
            }
        }
    }

    /// Arms a new timer entry at the entry's deadline (the previous one goes stale).
    pub(super) fn arm_http_timer(&mut self, key: usize) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        if let Some(e) = self.http.get_mut(key) {
            let deadline = e.deadline();
            e.set_timer(gen, deadline);
            self.timers.insert((key << 1) | 1, gen, deadline);
        }
    }

    /// Arms a timer only when none is armed or the deadline moved before the armed one.
    /// Deadlines that move later (every request on a keep-alive connection) are handled
    /// lazily when the entry fires, so steady traffic costs no wheel operation.
    pub(super) fn rearm_if_earlier(&mut self, key: usize) {
        let arm = match self.http.get(key) {
            Some(HttpEntry::Session(s)) => !s.timer_armed || s.deadline() < s.timer_at,
            Some(HttpEntry::Upstream(u)) => {
                u.owner.is_none() && u.timer_at.is_none_or(|at| u.deadline < at)
            }
            None => false,
        };
        if arm {
            self.arm_http_timer(key);
        }
    }

    pub(super) fn drive_http(&mut self, key: usize) {
        for _ in 0..MAX_STEPS {
            let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
                return;
            };
            let limits = s.limits();
            let mut cx = HttpCtx {
                pool: &mut self.pool,
                pipes: &mut self.pipes,
                stats: &mut self.http_stats,
                now: self.now,
                limits: &limits,
                request_ids: &mut self.request_ids,
                shared: &self.snapshot,
            };
            match s.pump(&mut cx) {
                HttpStep::Idle => return self.rearm_if_earlier(key),
                HttpStep::Yield => {
                    self.stats.loop_bound_hits += 1;
                    self.queue_http(key, false);
                    return self.rearm_if_earlier(key);
                }
                HttpStep::WaitBuffer => {
                    self.stats.buffer_waits += 1;
                    self.queue_http(key, true);
                    return self.rearm_if_earlier(key);
                }
                HttpStep::NeedUpstream { .. } => {
                    self.http_upstream(key, false);
                    if self.http_pending.contains(&key) {
                        return; // parked until a connection slot frees up (or its timer)
                    }
                }
                HttpStep::UpstreamFailed => self.http_upstream_failed(key, 502),
                HttpStep::RetryElsewhere => self.http_retry_elsewhere(key),
                HttpStep::Connected => {
                    self.obs_http_connect(key, Outcome::Success);
                    self.observe_http(key, Outcome::Success);
                    self.rearm_if_earlier(key);
                }
                HttpStep::ExchangeDone { reusable } => {
                    self.log_request(key);
                    // 5xx answers count against the backend for P2C, like failures.
                    let failed = matches!(self.http.get(key), Some(HttpEntry::Session(s)) if s.status >= 500);
                    if failed {
                        self.observe_http(key, Outcome::Failure);
                    }
                    self.release_upstream(key, reusable, failed);
                    let close = match self.http.get(key) {
                        Some(HttpEntry::Session(s)) => s.wants_close() || self.shutdown.is_some(),
                        _ => true,
                    };
                    if close {
                        self.close_http(key, HttpClose::Done);
                        return;
                    }
                    self.rearm_if_earlier(key);
                }
                HttpStep::Close(why) => {
                    self.close_http(key, why);
                    return;
                }
            }
        }
        self.stats.loop_bound_hits += 1;
        self.queue_http(key, false);
    }

    fn queue_http(&mut self, key: usize, starved: bool) {
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        if !s.queued {
            s.queued = true;
            if starved {
                self.http_starved.push_back(key);
            } else {
                self.http_ready.push_back(key);
            }
        }
    }

    pub(super) fn resume_http(&mut self, key: usize) {
        if let Some(HttpEntry::Session(s)) = self.http.get_mut(key) {
            s.queued = false;
            self.drive_http(key);
        }
    }

    /// Finds an upstream for the session's routed request: a pooled connection to the picked
    /// backend, or a new connect. `fresh`: skip the pool (a retry after a reused connection
    /// died).
    fn http_upstream(&mut self, key: usize, fresh: bool) {
        loop {
            let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
                return;
            };
            let snap = s.snapshot.clone();
            let Some(cluster) = snap.clusters.get(s.cluster as usize) else {
                return self.fail_http(key, 503);
            };
            s.timeouts.connect = cluster.connect_timeout;
            s.timeouts.first_byte = cluster.first_byte_timeout;
            s.timeouts.backend_idle = cluster.idle_timeout;
            if s.attempts >= cluster.connect_attempts {
                if self.http_fall_back(key) {
                    continue;
                }
                return self.fail_http(key, 502);
            }
            if self.balancers.version < snap.version {
                // A keep-alive session routed this request on a newer snapshot.
                self.balancers = super::Balancers::build(&snap, Some(&self.balancers));
            }
            let pick = if self.balancers.version == snap.version {
                let ctx = PickCtx { hash: s.hash };
                self.balancers
                    .pick(cluster, s.cluster as usize, s.tried, &ctx, self.now)
            } else {
                (0..cluster.backends.len())
                    .find(|&i| !s.tried.contains(i))
                    .map_or(Pick::Exhausted, Pick::Backend)
            };
            let idx = match pick {
                Pick::Backend(i) => i,
                Pick::FailOpen(i) => {
                    self.stats.fail_open += 1;
                    i
                }
                Pick::Full => return self.http_full(key),
                // Nothing could be reached: when the cluster is failing open (every backend
                // down by its health checks) or has no backend, that is "unavailable".
                Pick::Exhausted => {
                    if self.http_fall_back(key) {
                        continue;
                    }
                    let Some(HttpEntry::Session(s)) = self.http.get(key) else {
                        return;
                    };
                    let status = if s.attempts == 0 || cluster.panic {
                        503
                    } else {
                        502
                    };
                    return self.fail_http(key, status);
                }
            };
            let ci = s.cluster as usize;
            let same = self.balancers.version == snap.version;
            if same && s.attempts == 0 && s.retries_used == 0 {
                self.balancers.earn(ci, cluster.retry.budget);
            }
            s.tried.insert(idx);
            s.attempts += 1;
            // May this attempt be given up for another backend (5xx, first-byte timeout)?
            let policy = &cluster.retry;
            let another = (0..cluster.backends.len()).any(|i| !s.tried.contains(i));
            let allowed = s.retries_used < policy.retries
                && another
                && (policy.non_idempotent || s.idempotent())
                && same
                && self.balancers.has_budget(ci);
            let fall_back = crate::release::can_fall_back(&s.release);
            s.retry_5xx = (allowed && policy.on_5xx) || fall_back;
            s.retry_timeout = (allowed && policy.on_timeout) || fall_back;
            let backend = &cluster.backends[idx];
            // A pooled connection to this backend?
            let pooled = if fresh {
                None
            } else {
                self.upstream_pool.get_mut(&backend.addr).and_then(Vec::pop)
            };
            if let Some(uk) = pooled {
                let sock = match self.http.get_mut(uk) {
                    Some(HttpEntry::Upstream(u)) if u.owner.is_none() => {
                        u.owner = Some(key);
                        // Its pool timer entry stays armed: when it fires while the
                        // connection is lent it is dropped, otherwise re-checked.
                        u.sock.take()
                    }
                    _ => None,
                };
                let Some(sock) = sock else {
                    continue;
                };
                backend.live.active.fetch_add(1, Ordering::Relaxed);
                self.http_stats.upstream_reused += 1;
                if let Some(HttpEntry::Session(s)) = self.http.get_mut(key) {
                    // Another attempt on the same backend stays allowed: this one only
                    // reused a connection.
                    s.attempts -= 1;
                    s.tried.remove(idx);
                    s.upstream = Some(uk);
                    s.set_upstream(idx as u32, sock, true, self.now);
                }
                self.rearm_if_earlier(key);
                return;
            }
            match TcpStream::connect(backend.addr) {
                Ok(mut sock) => {
                    let entry = self.http.vacant_entry();
                    let uk = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut sock,
                            token::http(uk, Side::Back),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.stats.connect_failed += 1;
                        continue;
                    }
                    entry.insert(HttpEntry::Upstream(Upstream {
                        sock: None,
                        owner: Some(key),
                        addr: backend.addr,
                        deadline: self.now,
                        timer_gen: 0,
                        timer_at: None,
                    }));
                    backend.live.active.fetch_add(1, Ordering::Relaxed);
                    self.http_stats.upstream_new += 1;
                    if let Some(HttpEntry::Session(s)) = self.http.get_mut(key) {
                        s.upstream = Some(uk);
                        s.set_upstream(idx as u32, sock, false, self.now);
                    }
                    self.rearm_if_earlier(key);
                    return;
                }
                Err(e) => {
                    self.stats.connect_failed += 1;
                    if is_resource_exhaustion(&e) {
                        self.descriptors_exhausted(&e);
                        return self.fail_http(key, 503);
                    }
                }
            }
        }
    }

    /// The upstream connect failed or timed out, or a reused connection died before
    /// answering: drop it and try again (fresh connection, next backend) within the cluster's
    /// connect attempts; otherwise answer `status`.
    fn http_upstream_failed(&mut self, key: usize, status: u16) {
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        let was_reused = s.reused;
        let connecting = s.state == State::Connecting;
        let retryable = s.retryable();
        self.obs_http_connect(key, Outcome::Failure);
        self.observe_http(key, Outcome::Failure);
        self.drop_upstream(key);
        if connecting {
            self.stats.connect_failed += 1;
        }
        if was_reused && retryable {
            self.http_stats.retries += 1;
            self.obs_http_retry(key);
            return self.http_upstream(key, true);
        }
        if connecting {
            return self.http_upstream(key, false);
        }
        self.fail_http(key, status);
    }

    fn fail_http(&mut self, key: usize, status: u16) {
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        let limits = s.limits();
        let mut cx = HttpCtx {
            pool: &mut self.pool,
            pipes: &mut self.pipes,
            stats: &mut self.http_stats,
            now: self.now,
            limits: &limits,
            request_ids: &mut self.request_ids,
            shared: &self.snapshot,
        };
        let step = s.fail_upstream(&mut cx, status);
        self.drop_upstream(key);
        match step {
            HttpStep::Close(why) => self.close_http(key, why),
            _ => self.arm_http_timer(key),
        }
    }

    fn observe_http(&mut self, key: usize, outcome: Outcome) {
        let Some(HttpEntry::Session(s)) = self.http.get(key) else {
            return;
        };
        let (Some(idx), true) = (s.backend, self.balancers.version == s.snapshot.version) else {
            return;
        };
        // A finished exchange (back in Head) is measured from the request's start; a
        // connect outcome from when the upstream was handed over. A connect success is not a
        // verdict on the backend yet (its answer may be a 5xx).
        let (since, verdict) = match (s.state, outcome) {
            (State::Head, _) => (s.request_started, true),
            (_, Outcome::Failure) => (s.upstream_started, true),
            (_, Outcome::Success) => (s.upstream_started, false),
        };
        let rtt = self.now.saturating_duration_since(since);
        let ci = s.cluster as usize;
        if let Some(d) = self
            .balancers
            .observe(ci, idx as usize, rtt, outcome, self.now, verdict)
        {
            self.ejected(ci, idx as usize, d);
        }
    }

    /// Closes the session's upstream connection (if any) and updates the backend's count.
    fn drop_upstream(&mut self, key: usize) {
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        let uk = s.upstream.take();
        let mut freed = false;
        if let Some((idx, sock)) = s.take_upstream() {
            if let Some(b) = s
                .snapshot
                .clusters
                .get(s.cluster as usize)
                .and_then(|c| c.backends.get(idx as usize))
            {
                b.live.active.fetch_sub(1, Ordering::Relaxed);
                freed = true;
            }
            drop(sock);
        }
        if let Some(uk) = uk {
            if let Some(HttpEntry::Upstream(u)) = self.http.get(uk) {
                if u.owner == Some(key) {
                    self.http.remove(uk);
                }
            }
        }
        if freed && !self.http_pending.is_empty() {
            self.wake_pending();
        }
    }

    /// After a complete exchange: pool the upstream connection when it can be reused.
    fn release_upstream(&mut self, key: usize, reusable: bool, failed: bool) {
        if !failed {
            self.observe_http(key, Outcome::Success);
        }
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        let snap = Arc::clone(&s.snapshot);
        let cluster_idx = s.cluster as usize;
        let (Some(cluster), Some(backend_idx)) = (snap.clusters.get(cluster_idx), s.backend) else {
            return self.drop_upstream(key);
        };
        let Some(backend) = cluster.backends.get(backend_idx as usize) else {
            return self.drop_upstream(key);
        };
        let room = self
            .upstream_pool
            .get(&backend.addr)
            .is_none_or(|v| v.len() < cluster.pool_max_idle);
        if !reusable || !room || self.shutdown.is_some() || cluster.pool_max_idle == 0 {
            return self.drop_upstream(key); // closed
        }
        let Some(uk) = s.upstream.take() else {
            return self.drop_upstream(key);
        };
        let Some((_, sock)) = s.take_upstream() else {
            return;
        };
        backend.live.active.fetch_sub(1, Ordering::Relaxed);
        let deadline = self.now + cluster.pool_idle_timeout;
        match self.http.get_mut(uk) {
            Some(HttpEntry::Upstream(u)) if u.owner == Some(key) => {
                u.sock = Some(sock);
                u.owner = None;
                u.deadline = deadline;
            }
            _ => return, // should not happen; the socket closes on drop
        }
        self.upstream_pool.entry(backend.addr).or_default().push(uk);
        self.rearm_if_earlier(uk);
        if !self.http_pending.is_empty() {
            self.wake_pending();
        }
    }

    pub(super) fn close_http(&mut self, key: usize, why: HttpClose) {
        match self.http.get(key) {
            Some(HttpEntry::Session(_)) => {}
            Some(HttpEntry::Upstream(_)) => return self.drop_pooled(key),
            None => return,
        }
        self.log_request(key);
        self.drop_upstream(key);
        if !self.http_pending.is_empty() {
            // Its key may be reused by a new session: it must not be woken in its place.
            self.http_pending.retain(|&k| k != key);
        }
        let HttpEntry::Session(mut s) = self.http.remove(key) else {
            return;
        };
        s.release_resources(&mut self.pool, &mut self.pipes);
        self.obs.closed(&s.snapshot, s.listener);
        super::listener_closed(&s.snapshot, s.listener as usize);
        match why {
            HttpClose::Done => {}
            HttpClose::ClientGone => self.stats.client_resets += 1,
            HttpClose::Abort => {
                self.stats.backend_resets += 1;
                reset_on_close(&s.front);
            }
        }
        self.http_sessions -= 1;
        self.stats.closed += 1;
        drop(s);
        self.after_session_closed();
    }

    /// Queues the access-log record of the session's current request, once.
    fn log_request(&mut self, key: usize) {
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        if s.logged {
            return;
        }
        s.logged = true;
        self.obs_request_done(key);
        let (Some(tx), Some(HttpEntry::Session(s))) =
            (self.access_log.as_ref(), self.http.get(key))
        else {
            return;
        };
        let mut rec = s.log;
        rec.status = s.status;
        rec.duration_us = self
            .now
            .saturating_duration_since(s.request_started)
            .as_micros() as u64;
        let wall = self.wall_start + self.now.saturating_duration_since(self.started);
        rec.time_ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        rec.backend = s.backend.and_then(|i| {
            s.snapshot
                .clusters
                .get(s.cluster as usize)
                .and_then(|c| c.backends.get(i as usize))
                .map(|b| b.addr)
        });
        rec.worker = self.id as u16;
        if tx.try_send(rec).is_err() {
            self.http_stats.access_log_dropped += 1;
        }
    }

    /// The cluster (or every candidate backend) is at its connection limit: wait in the
    /// pending queue for a slot (up to the connect timeout), or, when the queue is full,
    /// answer 503 with Retry-After at once.
    fn http_full(&mut self, key: usize) {
        let Some(HttpEntry::Session(s)) = self.http.get(key) else {
            return;
        };
        let Some(cluster) = s.snapshot.clusters.get(s.cluster as usize) else {
            return self.fail_http(key, 503);
        };
        let max = cluster.limits.max_pending as usize;
        let name = cluster.name.as_str();
        let waiting = if max == 0 {
            0
        } else {
            self.http_pending
                .iter()
                .filter(|&&k| {
                    matches!(self.http.get(k), Some(HttpEntry::Session(o))
                        if o.snapshot.clusters.get(o.cluster as usize).is_some_and(|c| c.name == name))
                })
                .count()
        };
        if waiting < max {
            if !self.http_pending.contains(&key) {
                self.http_pending.push_back(key);
            }
            return self.arm_http_timer(key);
        }
        self.stats.limit_rejects += 1;
        self.fail_http(key, 503);
    }

    /// An upstream connection slot freed up: the oldest waiting request tries again.
    fn wake_pending(&mut self) {
        while let Some(key) = self.http_pending.pop_front() {
            if matches!(self.http.get(key), Some(HttpEntry::Session(s)) if s.state == State::NeedUpstream)
            {
                // drive_http asks for the upstream, and then uses it at once (a pooled
                // connection gives no writable event).
                return self.drive_http(key);
            }
        }
    }

    /// The backend answered 5xx or timed out, and the cluster's retry policy sends the
    /// request to another backend: a failure for this one, a retry token spent.
    fn http_retry_elsewhere(&mut self, key: usize) {
        self.observe_http(key, Outcome::Failure);
        if self.http_fall_back(key) {
            return self.http_upstream(key, false);
        }
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return;
        };
        let ci = s.cluster as usize;
        s.retries_used += 1;
        if !self.balancers.spend(ci) {
            // Gated at hand-over; only a snapshot change in between gets here.
            self.drop_upstream(key);
            return self.fail_http(key, 502);
        }
        self.http_stats.retries += 1;
        self.obs_http_retry(key);
        self.drop_upstream(key);
        self.http_upstream(key, false);
    }

    /// Release strategy `concurrent`: the newest version failed this request; it goes to the
    /// older version's cluster instead (its upstream, if any, is dropped first).
    fn http_fall_back(&mut self, key: usize) -> bool {
        match self.http.get(key) {
            Some(HttpEntry::Session(s)) if crate::release::can_fall_back(&s.release) => {}
            _ => return false,
        }
        self.drop_upstream(key);
        let Some(HttpEntry::Session(s)) = self.http.get_mut(key) else {
            return false;
        };
        let snap = s.snapshot.clone();
        let Some(cluster) = crate::release::fall_back(&snap, &mut s.release) else {
            return false;
        };
        s.cluster = cluster as u32;
        s.tried = crate::balance::Tried::default();
        s.attempts = 0;
        s.retries_used = 0;
        true
    }

    fn drive_if_session(&mut self, key: usize) {
        if matches!(self.http.get(key), Some(HttpEntry::Session(_))) {
            self.drive_http(key);
        }
    }

    /// A timer of the HTTP slab fired and the deadline has passed.
    pub(super) fn http_timeout(&mut self, key: usize) {
        let state = match self.http.get(key) {
            Some(HttpEntry::Upstream(_)) => return self.drop_pooled(key),
            Some(HttpEntry::Session(s)) => (s.state, s.response_started()),
            None => return,
        };
        match state {
            (State::Head, _) | (State::Local, _) | (State::Tunnel, _) => {
                self.stats.idle_timeouts += 1;
                self.close_http(key, HttpClose::Done);
            }
            (State::NeedUpstream, _) if self.http_pending.contains(&key) => {
                // Waited its connect timeout for a connection slot.
                self.http_pending.retain(|&k| k != key);
                self.stats.limit_rejects += 1;
                self.fail_http(key, 503);
            }
            (State::NeedUpstream, _) | (State::Connecting, _) => {
                self.stats.connect_timeouts += 1;
                self.http_upstream_failed(key, 504);
                // A pooled connection handed over now is writable already: no event will
                // say so.
                self.drive_if_session(key);
            }
            (State::Exchange, false) if matches!(self.http.get(key), Some(HttpEntry::Session(s)) if s.retry_timeout && s.can_resend()) =>
            {
                self.http_stats.timeouts += 1;
                self.http_retry_elsewhere(key);
                self.drive_if_session(key);
            }
            (State::Exchange, false) => {
                self.http_stats.timeouts += 1;
                self.observe_http(key, Outcome::Failure);
                self.fail_http(key, 504);
            }
            (State::Exchange, true) => {
                self.http_stats.timeouts += 1;
                self.close_http(key, HttpClose::Abort);
            }
        }
    }

    /// At shutdown: idle keep-alive clients and pooled connections are closed at once; busy
    /// sessions finish their exchange and close after it.
    pub(super) fn shutdown_http(&mut self) {
        let idle: Vec<usize> = self
            .http
            .iter()
            .filter(|(_, e)| match e {
                HttpEntry::Upstream(u) => u.owner.is_none(),
                HttpEntry::Session(s) => s.idle_between_requests(),
            })
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close_http(key, HttpClose::Done);
        }
        self.upstream_pool.clear();
    }

    pub(super) fn abort_http(&mut self) {
        let keys: Vec<usize> = self
            .http
            .iter()
            .filter(|(_, e)| matches!(e, HttpEntry::Session(_)))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.stats.shutdown_aborted += 1;
            self.close_http(key, HttpClose::Done);
        }
        let rest: Vec<usize> = self.http.iter().map(|(k, _)| k).collect();
        for key in rest {
            self.drop_pooled(key);
        }
    }
}
