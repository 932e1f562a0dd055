//! Mirror exchanges of release strategy `concurrent`: an idempotent, body-less request routed
//! to a service with two live versions also goes, at the same time, to a backend of the
//! previous version ([`crate::session::mirror::Mirror`], I/O-free). The worker owns the
//! mirrors, apart from the sessions: a mirror never holds its client up, outlives its request
//! (and its client) when it must, and ends on its own timeouts (its cluster's connect,
//! first-byte and idle timeouts).
//!
//! How a mirror ends up:
//! - the newest version answered the client: the two answers are compared (status, and the
//!   body's length and hash when both came whole) and mismatches counted on the newest
//!   version; the mirror counts as a request of the previous version;
//! - the newest failed (5xx, unreachable, first-byte timeout) and the mirror's whole answer
//!   is buffered: the client gets it (no third exchange); a mirror still running is waited
//!   for; one that failed, or whose answer outgrew its buffer, leaves the request to the
//!   sequential fallback (sent to the previous version then).
//!
//! Its connection comes from the upstream pool and goes back to it like a session's.
//!
//! HOT PATH (mirrored requests only; a request that is not mirrored costs one check of its
//! release tag). No lock, blocking call or info-level log.

use super::{cx, Owner, Waiting, Worker};
use crate::balance::{Outcome, PickCtx, Tried};
use crate::engine::token::TimerKey;
use crate::engine::{ConnId, Engine, Linger};
use crate::session::http::UpstreamTimeouts;
use crate::session::mirror::{self, Answer, Mirror, MirrorWant};
use crate::session::{Session, Target};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Wants handled per mirror drive (a mirror asks for at most a send and a receive at once).
const MAX_MIRROR_STEPS: usize = 16;

/// What the fallback of a failed request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FallBack {
    /// Nothing to fall back to.
    No,
    /// The request moves to the previous version: connect there.
    Connect,
    /// Handled: the mirror's answer went to the session, or the session waits for it.
    Handled,
}

impl<E: Engine> Worker<E> {
    /// Session `key` asked for an upstream for a new request: when its release tag says
    /// `concurrent` (an idempotent request, two live versions), the request is mirrored to
    /// the previous version.
    #[inline]
    pub(super) fn start_mirror(&mut self, key: usize) {
        // The common case (nothing to mirror) is this check, inlined where a request asks for
        // its upstream; the mirroring itself is out of line.
        let wanted = matches!(
            self.sessions.get(key).map(|e| &e.session),
            Some(Session::Http(s)) if s.exchange().is_some_and(|x| {
                crate::release::can_fall_back(&x.release_tag) && x.mirror.is_none()
            })
        );
        if wanted {
            self.mirror_now(key);
        }
    }

    /// [`Worker::start_mirror`] for a request that may be mirrored.
    #[inline(never)]
    fn mirror_now(&mut self, key: usize) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let Session::Http(s) = &mut e.session else {
            return;
        };
        let Some(x) = s.exchange() else {
            return;
        };
        if !crate::release::can_fall_back(&x.release_tag) || x.mirror.is_some() {
            return;
        }
        let (newest, method, hash) = (x.release_tag, x.method, x.target.hash);
        let snap = Arc::clone(&s.snapshot);
        let Some((ci, tag)) = crate::release::mirror(&snap, &newest) else {
            return;
        };
        // Mirrors speak plain HTTP/1.1 (no TLS, no PROXY header to the previous version).
        let Some(cluster) = snap
            .clusters
            .get(ci)
            .filter(|c| c.tls.is_none() && c.send_proxy.is_none())
        else {
            return;
        };
        let req = {
            let mut cx = cx!(self);
            s.mirror_request(&mut cx)
        };
        let Some(req) = req else {
            return;
        };
        let mut m = Mirror::new(
            req,
            method,
            tag,
            newest,
            Arc::clone(&snap),
            key,
            self.env.now,
        );
        m.hash = hash;
        m.timeouts = UpstreamTimeouts {
            connect: cluster.connect_timeout,
            first_byte: cluster.first_byte_timeout,
            idle: cluster.idle_timeout,
        };
        m.cluster = ci as u32;
        let mk = self.mirrors.insert(m);
        s.set_mirror(mk as u32);
        self.env.http.mirrors += 1;
        if !self.mirror_connect(mk, &snap, hash, false) {
            if let Some(m) = self.mirrors.get_mut(mk) {
                m.timed_out();
            }
        }
        self.drive_mirror(mk);
    }

    /// Hands mirror `mk` a connection to a backend of its cluster (a pooled one unless
    /// `fresh`). False when none can be had now.
    fn mirror_connect(
        &mut self,
        mk: usize,
        snap: &Arc<crate::snapshot::Snapshot>,
        hash: Option<u64>,
        fresh: bool,
    ) -> bool {
        let Some(ci) = self.mirrors.get(mk).map(|m| m.cluster as usize) else {
            return false;
        };
        let Some(cluster) = snap.clusters.get(ci) else {
            return false;
        };
        if self.balancers.version < snap.version {
            self.balancers.update(snap);
        }
        if self.balancers.version != snap.version {
            return false;
        }
        let pick = self.balancers.pick(
            cluster,
            ci,
            Tried::default(),
            &PickCtx { hash },
            self.env.now,
        );
        let bi = match pick {
            super::pick::Pick::Backend(i) | super::pick::Pick::FailOpen(i) => i,
            super::pick::Pick::Full | super::pick::Pick::Exhausted => return false,
        };
        let Some(backend) = cluster.backends.get(bi) else {
            return false;
        };
        let (conn, reused) = match (!fresh)
            .then(|| self.take_pooled(&backend.addr, cluster, None, None))
            .flatten()
        {
            Some(conn) => {
                self.env.http.upstream_reused += 1;
                (conn, true)
            }
            None => match self.engine.connect(backend.addr) {
                Ok(conn) => {
                    self.env.http.upstream_new += 1;
                    self.meta(conn).transport = crate::transport::Transport::Plain;
                    (conn, false)
                }
                Err(err) => {
                    if super::is_resource_exhaustion(&err) {
                        self.descriptors_exhausted(&err);
                    } else {
                        self.env.conns.connect_failed += 1;
                    }
                    return false;
                }
            },
        };
        backend.live.active.fetch_add(1, Ordering::Relaxed);
        self.meta(conn).owner = Owner::Mirror(mk as u32);
        self.clear_pool_deadline(conn);
        let now = self.env.now;
        if let Some(m) = self.mirrors.get_mut(mk) {
            m.set_conn(conn, ci as u32, bi as u32, reused, now);
        }
        true
    }

    /// Runs mirror `mk` until it has nothing to do now.
    pub(super) fn drive_mirror(&mut self, mk: usize) {
        for _ in 0..MAX_MIRROR_STEPS {
            let Some(m) = self.mirrors.get_mut(mk) else {
                return;
            };
            let want = m.next(self.engine.pools().0);
            match want {
                MirrorWant::Io(op) => {
                    let Some(conn) = m.conn else {
                        let (pool, pipes) = self.engine.pools();
                        crate::engine::recycle_op(op, pool, pipes);
                        m.timed_out();
                        continue;
                    };
                    let _ = self.meta(conn);
                    let transport = &mut self.conns[conn as usize].transport;
                    let done = transport.submit(&mut self.engine, &mut self.toxics, conn, op);
                    if let Some(done) = done {
                        let now = self.env.now;
                        if let Some(m) = self.mirrors.get_mut(mk) {
                            m.complete(done, self.engine.pools().0, now);
                        }
                    }
                }
                MirrorWant::Idle => return self.arm_mirror_timer(mk),
                MirrorWant::Reconnect => {
                    // A pooled connection died before answering: once more on a fresh one.
                    self.drop_mirror_conn(mk, false);
                    let Some((snap, hash)) = self
                        .mirrors
                        .get(mk)
                        .map(|m| (Arc::clone(&m.snapshot), m.hash))
                    else {
                        return;
                    };
                    if !self.mirror_connect(mk, &snap, hash, true) {
                        if let Some(m) = self.mirrors.get_mut(mk) {
                            m.timed_out();
                        }
                    }
                }
                MirrorWant::Finished => return self.mirror_finished(mk),
            }
        }
        self.env.conns.loop_bound_hits += 1;
        self.arm_mirror_timer(mk);
    }

    /// An op of mirror `mk`'s connection completed.
    pub(super) fn mirror_complete(&mut self, mk: usize, done: crate::engine::Done) {
        let now = self.env.now;
        let Some(m) = self.mirrors.get_mut(mk) else {
            let (pool, pipes) = self.engine.pools();
            return crate::engine::recycle(done, pool, pipes);
        };
        m.complete(done, self.engine.pools().0, now);
        self.drive_mirror(mk);
    }

    /// Mirror `mk`'s deadline passed, or its connection was closed under it.
    pub(super) fn mirror_failed(&mut self, mk: usize) {
        if let Some(m) = self.mirrors.get_mut(mk) {
            m.timed_out();
        }
        self.drive_mirror(mk);
    }

    fn arm_mirror_timer(&mut self, mk: usize) {
        let Some(m) = self.mirrors.get_mut(mk) else {
            return;
        };
        if m.finished() {
            return;
        }
        let deadline = m.deadline();
        if m.timer_armed && m.timer_at <= deadline {
            // The armed entry fires first; it re-checks then.
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        m.timer_gen = self.next_gen;
        m.timer_at = deadline;
        m.timer_armed = true;
        self.timers
            .insert(TimerKey::Mirror(mk).encode(), self.next_gen, deadline);
    }

    /// A timer entry of mirror `mk` fired.
    pub(super) fn mirror_timer(&mut self, mk: usize, gen: u32) {
        let now = self.env.now;
        let Some(m) = self.mirrors.get_mut(mk) else {
            return;
        };
        if m.timer_gen != gen || !m.timer_armed {
            return;
        }
        let deadline = m.deadline();
        if m.finished() {
            m.timer_armed = false;
            return;
        }
        if deadline > now {
            m.timer_at = deadline;
            self.timers
                .insert(TimerKey::Mirror(mk).encode(), gen, deadline);
            return;
        }
        m.timer_armed = false;
        self.mirror_failed(mk);
    }

    /// Closes (or, after a clean exchange, pools) mirror `mk`'s connection.
    fn drop_mirror_conn(&mut self, mk: usize, reusable: bool) {
        let Some(m) = self.mirrors.get_mut(mk) else {
            return;
        };
        let (ci, bi) = (m.cluster as usize, m.backend as usize);
        let Some(conn) = m.take_conn() else {
            return;
        };
        let snap = Arc::clone(&m.snapshot);
        let backend = snap
            .clusters
            .get(ci)
            .and_then(|c| Some((c, c.backends.get(bi)?)));
        let Some((cluster, backend)) = backend else {
            return self.close_conn(conn, Linger::Graceful);
        };
        backend.live.active.fetch_sub(1, Ordering::Relaxed);
        if reusable {
            // Pooled when there is room, else closed.
            let _ = self.pool_conn(conn, cluster, backend.addr);
        } else {
            self.close_conn(conn, Linger::Graceful);
            self.wake_pending(cluster);
        }
    }

    /// Mirror `mk`'s exchange is over: its connection goes back to the pool (or closes), the
    /// balancer learns how its backend did, and what waits for it goes on.
    fn mirror_finished(&mut self, mk: usize) {
        let Some(m) = self.mirrors.get(mk) else {
            return;
        };
        let answer = m.answer();
        let reusable = answer.complete && m.conn.is_some() && m.reusable();
        let (ci, bi) = (m.cluster as usize, m.backend as usize);
        let rtt = self.env.now.saturating_duration_since(m.started);
        if m.conn.is_some() {
            let outcome = if answer.status == 0 || answer.status >= 500 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            if self.balancers.version == m.snapshot.version {
                if let Some(d) = self
                    .balancers
                    .observe(ci, bi, rtt, outcome, self.env.now, true)
                {
                    self.ejected(ci, bi, d);
                }
            }
        }
        self.drop_mirror_conn(mk, reusable);
        if answer.status == 0 {
            self.env.http.mirror_failures += 1;
        }
        self.settle_mirror(mk);
    }

    /// Acts on whatever mirror `mk` is waited for by, once it is over: the waiting session
    /// gets its answer (or the sequential fallback), or the comparison with the newest's
    /// answer is made. Then the mirror goes.
    fn settle_mirror(&mut self, mk: usize) {
        let Some(m) = self.mirrors.get(mk) else {
            return;
        };
        if !m.finished() {
            return;
        }
        if let (true, Some(key)) = (m.waiter, m.session) {
            return self.answer_waiter(mk, key);
        }
        if m.session.is_some() && m.primary.is_none() {
            // The newest version's answer is still going out: compared when it is done.
            return;
        }
        let m = self.mirrors.remove(mk);
        self.count_mirror(&m, true);
        let mut m = m;
        m.release(self.engine.pools().0);
    }

    /// Counts a finished mirror: as a request of the previous version (unless its answer went
    /// to the client, which counts it as that request), and the comparison with the newest's
    /// answer when there is one.
    fn count_mirror(&mut self, m: &Mirror, as_request: bool) {
        let snap = &m.snapshot;
        if as_request {
            let latency = self.env.now.saturating_duration_since(m.started);
            self.obs.mirror_done(
                snap,
                &m.tag,
                m.cluster,
                m.backend,
                m.answer().status,
                latency,
            );
        }
        let found = m.primary.map(|p| mirror::compare(&p, &m.answer()));
        self.obs.mirrored(snap, &m.tag, &m.newest, found);
    }

    /// The newest version's exchange of session `key` is over (`answered`: its answer went
    /// out whole; else the client is gone): the mirror, if any, is compared once it is
    /// done too, or goes on alone.
    pub(super) fn mirror_primary_done(&mut self, key: usize, answered: bool) {
        let Some(Session::Http(s)) = self.sessions.get_mut(key).map(|e| &mut e.session) else {
            return;
        };
        let Some(mk) = s.unlink_mirror() else {
            return;
        };
        let answer = answered.then(|| s.newest_answer(true));
        let mk = mk as usize;
        if let Some(m) = self.mirrors.get_mut(mk) {
            m.session = None;
            m.waiter = false;
            m.primary = answer;
        }
        self.settle_mirror(mk);
    }

    /// The newest version failed session `key`'s request (5xx, unreachable, no answer in
    /// time): the mirror's answer goes to the client when it is here whole; while the mirror
    /// runs the request waits for it. [`FallBack::No`] when there is no mirror to use (then
    /// the sequential fallback decides).
    pub(super) fn mirror_fall_back(&mut self, key: usize) -> FallBack {
        let Some(Session::Http(s)) = self.sessions.get(key).map(|e| &e.session) else {
            return FallBack::No;
        };
        let Some(mk) = s.exchange().and_then(|x| x.mirror) else {
            return FallBack::No;
        };
        let mk = mk as usize;
        let Some(m) = self.mirrors.get_mut(mk) else {
            return FallBack::No;
        };
        if m.usable() {
            self.drop_upstream(key, Linger::Graceful);
            self.hand_over(mk, key);
            return FallBack::Handled;
        }
        if !m.finished() {
            m.waiter = true;
            self.drop_upstream(key, Linger::Graceful);
            if let Some(e) = self.sessions.get_mut(key) {
                e.waiting = Waiting::Mirror;
                if let Session::Http(s) = &mut e.session {
                    s.await_answer();
                }
            }
            return FallBack::Handled;
        }
        // Over without an answer a client can be given: the comparison counts the newest's
        // failure; the request goes to the previous version in turn.
        self.unlink_failed(mk, key);
        FallBack::No
    }

    /// Unlinks session `key` from mirror `mk`, recording the newest's failed answer.
    fn unlink_failed(&mut self, mk: usize, key: usize) {
        let answer = match self.sessions.get_mut(key).map(|e| &mut e.session) {
            Some(Session::Http(s)) => {
                let _ = s.unlink_mirror();
                s.newest_answer(false)
            }
            _ => Answer::NONE,
        };
        if let Some(m) = self.mirrors.get_mut(mk) {
            m.session = None;
            m.waiter = false;
            m.primary = Some(answer);
        }
        self.settle_mirror(mk);
    }

    /// Mirror `mk` is over and session `key` waits for it.
    fn answer_waiter(&mut self, mk: usize, key: usize) {
        if let Some(e) = self.sessions.get_mut(key) {
            if e.waiting == Waiting::Mirror {
                e.waiting = Waiting::No;
            }
        }
        if self.mirrors.get(mk).is_some_and(Mirror::usable) {
            self.hand_over(mk, key);
        } else {
            self.unlink_failed(mk, key);
            match self.sequential_fall_back(key) {
                true => self.connect_upstream(key, false),
                false => self.no_upstream(key, 502),
            }
        }
        self.drive(key);
    }

    /// The mirror's whole answer goes to session `key` (whose upstream is gone): the request
    /// is now the previous version's, answered.
    fn hand_over(&mut self, mk: usize, key: usize) {
        let mut m = self.mirrors.remove(mk);
        let Some(buf) = m.take_answer() else {
            m.release(self.engine.pools().0);
            return;
        };
        let now = self.env.now;
        let mut given = Err(buf);
        if let Some(e) = self.sessions.get_mut(key) {
            let snap = Arc::clone(e.session.snapshot());
            if let Session::Http(s) = &mut e.session {
                m.primary = Some(s.newest_answer(false));
                if let Some(x) = s.exchange_mut() {
                    if crate::release::fall_back(&snap, &mut x.release_tag).is_some() {
                        let mut t = Target::new(m.cluster, x.target.hash, now);
                        t.backend = Some(m.backend);
                        x.target = t;
                    }
                }
                if let Err(b) = given {
                    let (pool, pipes) = self.engine.pools();
                    let mut cx = crate::session::Cx {
                        pool,
                        pipes,
                        env: &mut self.env,
                    };
                    given = s.take_answer(b, &mut cx);
                }
            }
        }
        match given {
            Ok(()) => {
                self.env.http.mirror_answers += 1;
                // The session counts the request (as the previous version's, fallen back to).
                self.count_mirror(&m, false);
            }
            Err(b) => {
                // Past the point where an answer can be given (never for a request that may
                // fall back): it fails as the newest did.
                self.engine.pools().0.release(b);
                self.count_mirror(&m, true);
                self.no_upstream(key, 502);
            }
        }
        m.release(self.engine.pools().0);
    }

    /// Closes every mirror (shutdown deadline).
    pub(super) fn abort_mirrors(&mut self) {
        let keys: Vec<usize> = self.mirrors.iter().map(|(k, _)| k).collect();
        for mk in keys {
            self.drop_mirror_conn(mk, false);
            let mut m = self.mirrors.remove(mk);
            m.release(self.engine.pools().0);
        }
    }

    /// Mirror connection `conn` is closed by something else (a toxic): the mirror fails.
    pub(super) fn mirror_conn_closed(&mut self, mk: usize, conn: ConnId) {
        if self.mirrors.get(mk).is_some_and(|m| m.conn == Some(conn)) {
            self.mirror_failed(mk);
        } else {
            self.close_conn(conn, Linger::Graceful);
        }
    }
}
