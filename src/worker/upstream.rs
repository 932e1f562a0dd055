//! Upstreams, the same for TCP and HTTP sessions: pick the next backend, take a pooled
//! connection (HTTP) or connect, queue for a connection slot or a descriptor when there is
//! none, learn from how each attempt ends (balancers, outlier detection, retries), and pool
//! or close the connection afterwards.
//!
//! HOT PATH (per connection or request). No lock, blocking call or info-level log.

use super::mirror::FallBack;
use super::pick::Pick;
use super::slots::Pending;
use super::{cx, is_resource_exhaustion, Owner, Waiting, Worker};
use crate::balance::{Outcome, PickCtx};
use crate::engine::{ConnId, Engine, Linger, Op, Slot};
use crate::session::http::{Phase, Retry, UpstreamTimeouts};
use crate::session::{Session, Side, Up};
use crate::transport::Transport;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The PROXY protocol header an upstream connection starts with.
type ProxyHeader = (
    crate::proto::proxy_protocol::Version,
    Option<(std::net::SocketAddr, std::net::SocketAddr)>,
);

impl<E: Engine> Worker<E> {
    /// Acts on an upstream step a session asked for. Inlined into [`Worker::drive`] with only
    /// the `Need` of every request: the end of a request and the rare steps are calls, which
    /// keeps `drive`'s frame (and the prologue of its calls) small.
    #[inline(always)]
    pub(super) fn upstream_step(&mut self, key: usize, up: Up) {
        match up {
            Up::Need => {
                self.start_mirror(key);
                self.connect_upstream(key, false)
            }
            Up::Release { reusable } => self.release_step(key, reusable),
            up => self.upstream_rare(key, up),
        }
    }

    /// The upstream steps other than `Need` and `Release`: connected, failed, retry, drop.
    #[inline(never)]
    fn upstream_rare(&mut self, key: usize, up: Up) {
        match up {
            // Taken by `upstream_step` before it calls here.
            Up::Need | Up::Release { .. } => self.upstream_step(key, up),
            Up::Connected => {
                self.obs_connect(key, Outcome::Success);
                self.observe(key, Outcome::Success, Since::Upstream);
            }
            Up::Failed => {
                let (connecting, reused) = match self.sessions.get(key).map(|e| &e.session) {
                    Some(Session::Http(s)) => (
                        matches!(s.phase(), Phase::Connecting(_)),
                        s.exchange()
                            .is_some_and(|x| x.reused && x.upstream.is_some()),
                    ),
                    Some(Session::Tcp(_)) => (true, false),
                    None => return,
                };
                if connecting {
                    self.obs_connect(key, Outcome::Failure);
                }
                self.observe(key, Outcome::Failure, Since::Upstream);
                self.drop_upstream(key, Linger::Graceful);
                if reused {
                    // A pooled connection died before answering: the request goes again on
                    // a fresh connection.
                    self.env.http.retries += 1;
                    self.obs_retry(key);
                }
                self.connect_upstream(key, reused);
            }
            Up::Retry => {
                self.observe(key, Outcome::Failure, Since::Upstream);
                match self.fall_back(key) {
                    FallBack::Connect => return self.connect_upstream(key, false),
                    FallBack::Handled => return,
                    FallBack::No => {}
                }
                let (ci, snap) = match self.sessions.get_mut(key).map(|e| &mut e.session) {
                    Some(Session::Http(s)) => {
                        let snap = Arc::clone(&s.snapshot);
                        match s.exchange_mut() {
                            Some(x) => {
                                x.retry.used += 1;
                                (x.target.cluster as usize, snap)
                            }
                            None => return,
                        }
                    }
                    _ => return,
                };
                self.drop_upstream(key, Linger::Graceful);
                let bi = snap
                    .clusters
                    .get(ci)
                    .and_then(|c| self.balancers.budget_index(snap.version, c, ci));
                if !bi.is_some_and(|bi| self.balancers.spend(bi)) {
                    // Gated at hand-over; only a snapshot change in between gets here.
                    return self.no_upstream(key, 502);
                }
                self.env.http.retries += 1;
                self.obs_retry(key);
                self.connect_upstream(key, false);
            }
            Up::Drop { failure } => {
                if failure {
                    self.observe(key, Outcome::Failure, Since::Upstream);
                }
                self.drop_upstream(key, Linger::Graceful);
            }
        }
    }

    /// The exchange of session `key` is over (`Up::Release`): log it, tell the balancer,
    /// pool or close the upstream connection, and end the exchange.
    #[inline(never)]
    fn release_step(&mut self, key: usize, reusable: bool) {
        let latency = self.log_request(key);
        self.mirror_primary_done(key, true);
        // 5xx answers count against the backend, like failures.
        let failed = matches!(
            self.sessions.get(key).map(|e| &e.session),
            Some(Session::Http(s)) if s.exchange().is_some_and(|x| x.status >= 500)
        );
        let outcome = if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        self.observe(key, outcome, Since::Request(latency));
        self.release_upstream(key, reusable);
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if let Session::Http(s) = &mut e.session {
            let mut cx = cx!(self);
            s.end_exchange(&mut cx);
        }
        // Draining (shutdown, upgrade): the session closes itself after a response
        // that said `Connection: close`, or after DRAIN_IDLE of silence.
    }

    /// Release strategy `concurrent`: the newest version failed this request (5xx,
    /// unreachable, no answer in time). The mirror's answer goes to the client when it can
    /// ([`Worker::mirror_fall_back`]); otherwise the previous version's cluster gets the
    /// request ([`FallBack::Connect`]).
    fn fall_back(&mut self, key: usize) -> FallBack {
        let can = matches!(
            self.sessions.get(key).map(|e| &e.session),
            Some(Session::Http(s)) if s.exchange().is_some_and(|x| crate::release::can_fall_back(&x.release_tag))
        );
        if !can {
            return FallBack::No;
        }
        if self.mirror_fall_back(key) == FallBack::Handled {
            return FallBack::Handled;
        }
        if self.sequential_fall_back(key) {
            FallBack::Connect
        } else {
            FallBack::No
        }
    }

    /// The request moves to the previous version's cluster (the failed upstream, if any, is
    /// dropped first). False when there is nothing to fall back to.
    pub(super) fn sequential_fall_back(&mut self, key: usize) -> bool {
        self.drop_upstream(key, Linger::Graceful);
        let Some(e) = self.sessions.get_mut(key) else {
            return false;
        };
        let snap = Arc::clone(e.session.snapshot());
        let Session::Http(s) = &mut e.session else {
            return false;
        };
        let Some(x) = s.exchange_mut() else {
            return false;
        };
        let Some(cluster) = crate::release::fall_back(&snap, &mut x.release_tag) else {
            return false;
        };
        x.target = crate::session::Target::new(cluster as u32, x.target.hash, self.env.now);
        x.retry.used = 0;
        true
    }

    /// Finds an upstream for session `key`: a pooled connection to the picked backend (HTTP,
    /// unless `fresh`), or a new connect. When none can be had now the session waits in a
    /// queue (connection slot, descriptor) or is told (`no_upstream`).
    pub(super) fn connect_upstream(&mut self, key: usize, fresh: bool) {
        loop {
            let Some(e) = self.sessions.get_mut(key) else {
                return;
            };
            let http = e.session.is_http();
            let snap = Arc::clone(e.session.snapshot());
            let Some(t) = e.session.target() else {
                return;
            };
            let (ci, tried, attempts, hash) = (t.cluster as usize, t.tried, t.attempts, t.hash);
            let Some(cluster) = snap.clusters.get(ci) else {
                return self.no_upstream(key, 503);
            };
            if attempts >= cluster.connect_attempts {
                match self.fall_back(key) {
                    FallBack::Connect => continue,
                    FallBack::Handled => return,
                    FallBack::No => return self.no_upstream(key, 502),
                }
            }
            if cluster.queue.has_waiters() && self.slot_ticket.is_none() {
                // Requests wait for a slot of this cluster (in some worker): this one waits
                // behind them, not ahead.
                return self.wait_for_slot(key);
            }
            if self.balancers.version < snap.version {
                // A session routed on a snapshot newer than the balancers.
                self.balancers.update(&snap);
            }
            // The balancers' index of this cluster: its own, or, for a session that started
            // before a config change, the same cluster in the newer snapshot when its backends
            // are unchanged (picks then follow the new weights). Its retry budget is found by
            // the cluster's name alone (`budget`): a request that began before a weight change
            // or a health verdict keeps its retries.
            let bi = self.balancers.index_for(snap.version, cluster, ci);
            let pick = if let Some(bi) = bi {
                let ctx = PickCtx { hash };
                self.balancers.pick(cluster, bi, tried, &ctx, self.env.now)
            } else {
                // The cluster changed shape since the session started: any untried backend
                // of its own.
                (0..cluster.backends.len())
                    .find(|&i| !tried.contains(i))
                    .map_or(Pick::Exhausted, Pick::Backend)
            };
            let idx = match pick {
                Pick::Backend(i) => i,
                Pick::FailOpen(i) => {
                    self.env.conns.fail_open += 1;
                    i
                }
                Pick::Full => return self.wait_for_slot(key),
                // Nothing could be reached: when the cluster is failing open (every backend
                // down by its health checks) or has no backend, that is "unavailable".
                Pick::Exhausted => {
                    match self.fall_back(key) {
                        FallBack::Connect => continue,
                        FallBack::Handled => return,
                        FallBack::No => {}
                    }
                    let status = if attempts == 0 || cluster.panic {
                        503
                    } else {
                        502
                    };
                    return self.no_upstream(key, status);
                }
            };
            let Some(backend) = cluster.backends.get(idx) else {
                return self.no_upstream(key, 503);
            };
            // Per attempt: the cluster's timeouts and (HTTP) whether this attempt may be given
            // up for another backend.
            if let Session::Http(s) = &mut e.session {
                if let Some(x) = s.exchange_mut() {
                    let budget = self.balancers.budget_index(snap.version, cluster, ci);
                    if let (Some(b), 0, 0) = (budget, x.target.attempts, x.retry.used) {
                        self.balancers.earn(b, cluster.retry.budget);
                    }
                    let policy = &cluster.retry;
                    let another = (0..cluster.backends.len())
                        .any(|i| i != idx && !x.target.tried.contains(i));
                    let allowed = x.retry.used < policy.retries
                        && another
                        && (policy.non_idempotent || x.method.is_idempotent())
                        && budget.is_some_and(|b| self.balancers.has_budget(b));
                    // Release strategy `concurrent`: an older version may answer instead.
                    let fall_back = crate::release::can_fall_back(&x.release_tag);
                    x.retry = Retry {
                        on_reset: allowed && policy.on_reset,
                        on_5xx: (allowed && policy.on_5xx) || fall_back,
                        on_timeout: (allowed && policy.on_timeout) || fall_back,
                        used: x.retry.used,
                    };
                    x.timeouts = UpstreamTimeouts {
                        connect: cluster.connect_timeout,
                        first_byte: cluster.first_byte_timeout,
                        idle: cluster.idle_timeout,
                    };
                }
            }
            let Some(t) = e.session.target_mut() else {
                return;
            };
            t.tried.insert(idx);
            t.attempts += 1;
            if t.attempts > 1 && !http {
                self.env.conns.connect_retries += 1;
            }
            // The connection this session pooled after its previous request.
            let hint = match &e.session {
                Session::Http(s) => s.last_upstream(),
                Session::Tcp(_) => None,
            };
            let proxy = self.proxy_header_for(key, cluster);
            // A pooled connection to this backend?
            if http && !fresh {
                if let Some(conn) = self.take_pooled(&backend.addr, cluster, proxy.as_ref(), hint) {
                    backend.live.active.fetch_add(1, Ordering::Relaxed);
                    self.env.http.upstream_reused += 1;
                    self.own(conn, key, Side::Upstream);
                    let Some(e) = self.sessions.get_mut(key) else {
                        return;
                    };
                    if let Some(t) = e.session.target_mut() {
                        // Another attempt on the same backend stays allowed: this one only
                        // reused a connection.
                        t.attempts -= 1;
                        t.tried.remove(idx);
                    }
                    let mut cx = cx!(self);
                    e.session.set_upstream(conn, idx as u32, true, &mut cx);
                    e.session.set_upstream_splice(cluster.tls.is_none());
                    return;
                }
            }
            match self.engine.connect(backend.addr) {
                Ok(conn) => {
                    let Ok(transport) = self.upstream_transport(cluster, &backend.name, proxy)
                    else {
                        // No TLS name for this backend: a failed attempt (never for an IP
                        // address or a host name as written).
                        self.engine.close(conn, Linger::Graceful);
                        self.env.conns.connect_failed += 1;
                        continue;
                    };
                    self.meta(conn).transport = transport;
                    backend.live.active.fetch_add(1, Ordering::Relaxed);
                    if http {
                        self.env.http.upstream_new += 1;
                    }
                    self.own(conn, key, Side::Upstream);
                    let Some(e) = self.sessions.get_mut(key) else {
                        return;
                    };
                    let mut cx = cx!(self);
                    e.session.set_upstream(conn, idx as u32, false, &mut cx);
                    e.session.set_upstream_splice(cluster.tls.is_none());
                    return;
                }
                Err(err) if is_resource_exhaustion(&err) => {
                    // Our problem, not the backend's: this attempt does not count.
                    if let Some(t) = self
                        .sessions
                        .get_mut(key)
                        .and_then(|e| e.session.target_mut())
                    {
                        t.tried.remove(idx);
                        t.attempts -= 1;
                    }
                    self.env.conns.accept_errors += 1;
                    self.descriptors_exhausted(&err);
                    return self.wait_for_descriptor(key);
                }
                Err(_) => {
                    self.env.conns.connect_failed += 1;
                    if let Some(bi) = bi {
                        if let Some(d) = self.balancers.observe(
                            bi,
                            idx,
                            Duration::ZERO,
                            Outcome::Failure,
                            self.env.now,
                            true,
                        ) {
                            self.ejected(bi, idx, d);
                        }
                    }
                }
            }
        }
    }

    /// No upstream can be had for session `key`.
    pub(super) fn no_upstream(&mut self, key: usize, status: u16) {
        if let Some(e) = self.sessions.get_mut(key) {
            e.waiting = Waiting::No;
            let mut cx = cx!(self);
            e.session.no_upstream(status, &mut cx);
        }
    }

    // ------------------------------------------------------------------ queues

    /// The cluster (or every candidate backend) is at its connection limit, or others wait
    /// for a slot already: wait for a slot (up to the connect timeout), or, when the
    /// cluster's queue is full, give up at once. A woken session that found no slot after all
    /// goes back to its place ([`Worker::serve_woken`]).
    fn wait_for_slot(&mut self, key: usize) {
        let again = self.slot_ticket.take();
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let snap = Arc::clone(e.session.snapshot());
        let Some(cluster) = e
            .session
            .target()
            .and_then(|t| snap.clusters.get(t.cluster as usize))
        else {
            return self.no_upstream(key, 503);
        };
        let max = cluster.limits.max_pending as usize;
        let p = match self.pending.get_mut(cluster.name.as_str()) {
            Some(p) => p,
            // Allocates once per cluster that ever hits its limit.
            None => self
                .pending
                .entry(cluster.name.clone())
                .or_insert_with(|| Pending::new(Arc::clone(&cluster.queue))),
        };
        if p.waiters.is_empty() && !Arc::ptr_eq(&p.shared, &cluster.queue) {
            // The cluster was removed and added again since.
            p.shared = Arc::clone(&cluster.queue);
        }
        let ticket = match again {
            Some(t) => {
                p.shared.rejoin();
                t
            }
            None if p.waiters.len() < max => p.shared.join(),
            None => {
                self.env.conns.limit_rejects += 1;
                return self.no_upstream(key, 503);
            }
        };
        p.insert(key, ticket);
        p.publish(self.id, self.peers.len());
        e.waiting = Waiting::Slot;
        self.waiting_for_slot += 1;
        self.arm_timer(key)
    }

    /// Removes session `key` from its cluster's slot queue (waiting or woken): its ticket.
    pub(super) fn unqueue_pending(&mut self, key: usize) -> Option<u64> {
        let e = self.sessions.get_mut(key)?;
        let queued = match e.waiting {
            Waiting::Slot => {
                self.waiting_for_slot -= 1;
                true
            }
            Waiting::Woken => true,
            _ => false,
        };
        e.waiting = Waiting::No;
        if !queued {
            return None;
        }
        let c = e.session.target_cluster()?;
        let p = self.pending.get_mut(c.name.as_str())?;
        let ticket = p.remove(key);
        p.publish(self.id, self.peers.len());
        ticket
    }

    /// A connection slot of `cluster` freed up: the oldest session waiting for one (in any
    /// worker) tries again, at its worker's next resume (not nested in whoever freed it).
    #[inline]
    pub(super) fn wake_pending(&mut self, cluster: &crate::snapshot::Cluster) {
        // Nobody waits (the common case): one relaxed load.
        if cluster.queue.has_waiters() {
            self.wake_oldest(cluster);
        }
    }

    /// Wakes the oldest unwoken waiter for a slot of `cluster`: here, or (poked) in the
    /// worker that holds it.
    #[inline(never)]
    fn wake_oldest(&mut self, cluster: &crate::snapshot::Cluster) {
        match self.pending.get_mut(cluster.name.as_str()) {
            Some(p) => hand_over(
                p,
                &mut self.sessions,
                &mut self.ready,
                &mut self.waiting_for_slot,
                &self.peers,
                self.id,
            ),
            // Nobody ever waited here: the oldest is another worker's.
            None => {
                if let Some(w) = cluster.queue.oldest() {
                    self.peers.poke(w);
                }
            }
        }
    }

    /// Per cluster with an unwoken waiter here: the oldest waiter of all wakes (here, or its
    /// worker is poked). After a poke (another worker freed a slot this one held the oldest
    /// waiter for; passed on when another worker holds it by now), or, `if_room`, for the
    /// clusters with a free slot only: the periodic check for a release and a wait that
    /// crossed between threads.
    pub(super) fn hand_over_all(&mut self, if_room: bool) {
        for p in self.pending.values_mut() {
            let Some(first) = p.waiters.iter().find(|w| !w.woken) else {
                continue;
            };
            let room = !if_room
                || self
                    .sessions
                    .get(first.key)
                    .and_then(|e| e.session.target_cluster())
                    .is_some_and(has_room);
            if room {
                hand_over(
                    p,
                    &mut self.sessions,
                    &mut self.ready,
                    &mut self.waiting_for_slot,
                    &self.peers,
                    self.id,
                );
            }
        }
    }

    /// A woken session tries for a slot, ahead of the sessions still waiting; when there is
    /// none after all it goes back to its place in the queue. When it got one and there is
    /// room for more, the next oldest waiter is woken too (several slots may have freed
    /// while one poke was pending).
    pub(super) fn serve_woken(&mut self, key: usize) {
        self.slot_ticket = self.unqueue_pending(key);
        self.connect_upstream(key, false);
        // Taken by `wait_for_slot` when it queued again.
        if self.slot_ticket.take().is_none() {
            return;
        }
        let Some(e) = self.sessions.get(key) else {
            return;
        };
        let snap = Arc::clone(e.session.snapshot());
        let Some(c) = e
            .session
            .target()
            .and_then(|t| snap.clusters.get(t.cluster as usize))
        else {
            return;
        };
        if c.queue.has_waiters() && has_room(c) {
            self.wake_oldest(c);
        }
    }

    /// Out of descriptors: keep the client; retry when descriptors free up, for at most one
    /// connect timeout.
    fn wait_for_descriptor(&mut self, key: usize) {
        if let Some(e) = self.sessions.get_mut(key) {
            e.waiting = Waiting::Descriptor;
            if let Some(t) = e.session.target_mut() {
                t.started = self.env.now;
            }
            self.fd_waiters.push_back(key);
            self.arm_timer(key);
        }
    }

    // ------------------------------------------------------------------ the pool

    /// An idle pooled connection to `addr` that fits `cluster` (its TLS config, and the PROXY
    /// header `proxy` a new connection would send), taken out of the pool: `hint` (the one
    /// the session gave back after its previous request) when it is still pooled to `addr`,
    /// else the last fitting one in its list (roughly the newest: lists are kept in order of
    /// pooling only as far as taking connections out without shifting allows).
    pub(super) fn take_pooled(
        &mut self,
        addr: &std::net::SocketAddr,
        cluster: &crate::snapshot::Cluster,
        proxy: Option<&ProxyHeader>,
        hint: Option<ConnId>,
    ) -> Option<ConnId> {
        let conns = &self.conns;
        // A plain connection fits a cluster without TLS or PROXY header (what
        // `reusable_for` answers for it), without the call.
        let plain_fits = cluster.tls.is_none() && proxy.is_none();
        let fits_meta = |m: &super::ConnMeta| match &m.transport {
            Transport::Plain => plain_fits,
            t => t.reusable_for(cluster.tls.as_ref(), proxy),
        };
        let fits = |c: &ConnId| conns.get(*c as usize).is_some_and(fits_meta);
        // The session's own previous connection: its list is found by index, not by a hash
        // of the address (a keep-alive client whose requests go to the same backend).
        // Found at its remembered position (no scan), and taken out without shifting the
        // newer ones down: the last (newest) fills its place, so "newest last" holds only
        // roughly once hints are taken (the sessions of a keep-alive load take their own
        // connections back, in any order).
        let hinted = hint.and_then(|h| {
            let m = conns.get(h as usize)?;
            let Owner::Pooled(slot) = m.owner else {
                return None;
            };
            let (a, _) = self.upstream_pool.lists.get(slot as usize)?;
            if a != addr || !fits_meta(m) {
                return None;
            }
            let at = self.upstream_pool.position(&self.pooled, slot, h)?;
            self.upstream_pool.take_at(&mut self.pooled, slot, at)
        });
        let conn = match hinted {
            Some(c) => c,
            None => {
                let slot = *self.upstream_pool.index.get(addr)?;
                let (_, list) = self.upstream_pool.lists.get(slot as usize)?;
                // The last fitting one (roughly the newest, most likely still open at the
                // backend).
                let at = list.iter().rposition(fits)?;
                self.upstream_pool.take_at(&mut self.pooled, slot, at)?
            }
        };
        // Its watch is cancelled. Its pool timer entry stays in the wheel: when it fires while
        // the connection is lent it is dropped, otherwise re-checked; reuse costs no wheel
        // operation.
        match &mut self.conns[conn as usize].transport {
            Transport::Plain => self.engine.cancel(conn, Slot::Read),
            t => t.cancel(&mut self.engine, &mut self.toxics, conn, Slot::Read),
        }
        self.meta(conn).owner = Owner::None;
        self.clear_pool_deadline(conn);
        Some(conn)
    }

    /// After a complete exchange: pool the upstream connection when it can be reused, else
    /// close it.
    fn release_upstream(&mut self, key: usize, reusable: bool) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let snap = Arc::clone(e.session.snapshot());
        let place = e
            .session
            .target()
            .and_then(|t| Some((t.cluster as usize, t.backend? as usize)));
        let (Some((ci, bi)), Some(conn)) = (place, e.session.conn(Side::Upstream)) else {
            return self.drop_upstream(key, Linger::Graceful);
        };
        // A connection under toxics carries its session's faults: never pooled.
        let reusable = reusable
            && self
                .conns
                .get(conn as usize)
                .is_none_or(|m| m.transport.toxic().is_none());
        let (Some(cluster), true) = (snap.clusters.get(ci), reusable) else {
            return self.drop_upstream(key, Linger::Graceful);
        };
        let Some(backend) = cluster.backends.get(bi) else {
            return self.drop_upstream(key, Linger::Graceful);
        };
        // The room per backend is checked by `pool_conn` (one look-up of the pool).
        if self.shutdown.is_some() || cluster.pool_max_idle == 0 {
            return self.drop_upstream(key, Linger::Graceful);
        }
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let _ = e.session.take_upstream();
        backend.live.active.fetch_sub(1, Ordering::Relaxed);
        let pooled = self.pool_conn(conn, cluster, backend.addr);
        if let Some(Session::Http(s)) = self.sessions.get_mut(key).map(|e| &mut e.session) {
            s.set_last_upstream(pooled.then_some(conn));
        }
    }

    /// Pools idle upstream connection `conn` to `addr` of `cluster`, watching for its backend
    /// closing it; closes it instead when the pool has no room (the cluster's
    /// `pool_max_idle` per backend, none while shutting down). True when it was pooled.
    pub(super) fn pool_conn(
        &mut self,
        conn: ConnId,
        cluster: &crate::snapshot::Cluster,
        addr: std::net::SocketAddr,
    ) -> bool {
        // The list of its address: remembered from the last time it was pooled (a connection
        // is to one address), else looked up once.
        let known = self.pool_times(conn).slot;
        let slot = match known.checked_sub(1) {
            Some(s)
                if self
                    .upstream_pool
                    .lists
                    .get(s as usize)
                    .is_some_and(|l| l.0 == addr) =>
            {
                s
            }
            _ => self.pool_slot(conn, addr),
        };
        let room = self
            .upstream_pool
            .lists
            .get(slot as usize)
            .is_some_and(|(_, list)| list.len() < cluster.pool_max_idle);
        if self.shutdown.is_some()
            || !room
            || !self.upstream_pool.push(&mut self.pooled, slot, conn)
        {
            self.close_conn(conn, Linger::Graceful);
            self.wake_pending(cluster);
            return false;
        }
        let idle = u64::try_from(cluster.pool_idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let deadline = self.now_stamp().saturating_add(idle);
        self.meta(conn).owner = Owner::Pooled(slot);
        self.pool_times(conn).deadline = deadline;
        // A backend closing an idle connection (or sending what it should not) ends it.
        let watched = match &mut self.conns[conn as usize].transport {
            Transport::Plain => self.engine.watch(conn),
            t => t.submit(&mut self.engine, &mut self.toxics, conn, Op::Watch),
        };
        let pooled = watched.is_none();
        if let Some(done) = watched {
            // Closed (or talking) already: out of the pool again (rare).
            let (pool, pipes) = self.engine.pools();
            crate::engine::recycle(done, pool, pipes);
            self.upstream_pool.remove(&mut self.pooled, slot, conn);
            self.close_conn(conn, Linger::Graceful);
        } else {
            self.arm_pooled_timer(conn);
        }
        self.wake_pending(cluster);
        pooled
    }

    /// The index of `addr`'s pool list, remembered for `conn` (out of line: once per
    /// connection, at its first pooling).
    #[inline(never)]
    fn pool_slot(&mut self, conn: ConnId, addr: std::net::SocketAddr) -> u32 {
        let s = self.upstream_pool.slot(addr);
        self.pool_times(conn).slot = s + 1;
        s
    }

    /// Removes an idle pooled connection (closing it).
    pub(super) fn drop_pooled(&mut self, conn: ConnId) {
        let Owner::Pooled(slot) = self.meta(conn).owner else {
            return;
        };
        self.upstream_pool.remove(&mut self.pooled, slot, conn);
        self.close_conn(conn, Linger::Graceful);
    }

    // ------------------------------------------------------------------ feedback

    /// Tells the session's balancer how its current use of a backend ended.
    fn observe(&mut self, key: usize, outcome: Outcome, since: Since) {
        let Some(e) = self.sessions.get(key) else {
            return;
        };
        let Some(t) = e.session.target() else {
            return;
        };
        let Some(idx) = t.backend else {
            return;
        };
        // A balancer built for another snapshot may number the backends differently.
        let snap = e.session.snapshot();
        let Some(ci) = snap.clusters.get(t.cluster as usize).and_then(|c| {
            self.balancers
                .index_for(snap.version, c, t.cluster as usize)
        }) else {
            return;
        };
        if !self.balancers.learns(ci) {
            // Neither a latency-aware balancer nor outlier detection: nothing to tell.
            return;
        }
        let (from, verdict) = match (&e.session, since, outcome) {
            // TCP: the connect is the verdict (and its time P2C's latency sample).
            (Session::Tcp(_), _, _) => (t.started, true),
            // HTTP: a finished exchange is measured from the request's start; a connect
            // success is not a verdict on the backend yet (its answer may be a 5xx).
            (Session::Http(s), Since::Request(None), _) => {
                (s.exchange().map_or(t.started, |x| x.request_started), true)
            }
            (Session::Http(_), Since::Request(Some(_)), _) => (t.started, true),
            (Session::Http(_), Since::Upstream, Outcome::Failure) => (t.started, true),
            (Session::Http(_), Since::Upstream, Outcome::Success) => (t.started, false),
        };
        let rtt = match since {
            // Measured already (the request's latency, counted in the stats just before).
            Since::Request(Some(d)) if matches!(e.session, Session::Http(_)) => d,
            _ => self.env.now.saturating_duration_since(from),
        };
        if let Some(d) =
            self.balancers
                .observe(ci, idx as usize, rtt, outcome, self.env.now, verdict)
        {
            self.ejected(ci, idx as usize, d);
        }
    }

    /// Passive outlier detection ejected a backend (this worker's view).
    pub(super) fn ejected(&mut self, ci: usize, idx: usize, d: Duration) {
        self.env.conns.outlier_ejections += 1;
        // Shown as "ejected" in /stats and /metrics (rare: once per ejection).
        let snap = self.env.shared.load();
        if snap.version == self.balancers.version {
            if let Some(b) = snap.clusters.get(ci).and_then(|c| c.backends.get(idx)) {
                let until = crate::snapshot::unix_ms() + d.as_millis() as u64;
                b.live.ejected_until_ms.fetch_max(until, Ordering::Relaxed);
            }
        }
        let (cluster, addr) = self.balancers.describe(ci, idx);
        log::warn!(
            "worker {}: backend {} of cluster {cluster} ejected for {d:?} after consecutive failures",
            self.id,
            addr.map_or_else(|| "?".to_string(), |a| a.to_string())
        );
    }
}

/// Wakes the oldest unwoken waiter of `p`'s cluster: here (worker `id`) when it is one of
/// `p`'s, else by poking the worker that holds it.
fn hand_over(
    p: &mut Pending,
    sessions: &mut slab::Slab<super::Entry>,
    ready: &mut std::collections::VecDeque<usize>,
    waiting_for_slot: &mut usize,
    peers: &super::Peers,
    id: usize,
) {
    match p.shared.oldest() {
        Some(w) if w == id => wake_first(p, sessions, ready, waiting_for_slot, id, peers.len()),
        Some(w) => peers.poke(w),
        None => {}
    }
}

/// Marks the oldest unwoken waiter of `p` woken and queues it to resume (one with no session
/// waiting for a slot behind it is dropped from the queue).
fn wake_first(
    p: &mut Pending,
    sessions: &mut slab::Slab<super::Entry>,
    ready: &mut std::collections::VecDeque<usize>,
    waiting_for_slot: &mut usize,
    id: usize,
    workers: usize,
) {
    while let Some(key) = p.wake_first() {
        match sessions.get_mut(key) {
            Some(e) if e.waiting == Waiting::Slot => {
                e.waiting = Waiting::Woken;
                *waiting_for_slot -= 1;
                if !e.queued {
                    e.queued = true;
                    ready.push_back(key);
                }
                break;
            }
            _ => {
                p.remove(key);
            }
        }
    }
    p.publish(id, workers);
}

/// Whether `c` has a connection slot free (its limits; not who may use it).
fn has_room(c: &crate::snapshot::Cluster) -> bool {
    let active = |b: &crate::snapshot::Backend| b.live.active.load(Ordering::Relaxed);
    if let Some(max) = c.limits.max_connections {
        if c.backends.iter().map(active).sum::<u32>() >= max {
            return false;
        }
    }
    match c.limits.max_connections_per_backend {
        Some(m) => c.backends.iter().any(|b| active(b) < m),
        None => true,
    }
}

/// What a latency sample is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// The start of the upstream attempt (connect or hand-over).
    Upstream,
    /// The start of the request (a finished HTTP exchange); the time since, when the
    /// caller measured it already.
    Request(Option<Duration>),
}
