//! Driving a session: ask what it wants, submit its ops (feeding back what completes at once),
//! act on its upstream steps, queue it when it yields or starves, and close it.
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log.

use super::{cx, listener_closed, Entry, Owner, Queue, Waiting, Worker};
use crate::engine::{recycle_op, Engine, Linger, Op};
use crate::session::{CloseReason, Session, Side, Want};
use crate::transport::Transport;
use std::sync::atomic::Ordering;

/// Wants handled per drive before the session is queued for the next loop iteration (TCP
/// sessions also bound their own ops, 64; an HTTP session takes about two wants per op, so
/// this lets it do about as many).
pub(super) const MAX_STEPS: usize = 128;

impl<E: Engine> Worker<E> {
    /// Runs session `key` until it has nothing to do now.
    pub(super) fn drive(&mut self, key: usize) {
        let mut steps = 0;
        while steps < MAX_STEPS {
            let Some(e) = self.sessions.get_mut(key) else {
                return;
            };
            // Ops on plain connections (the common case) go straight to the engine with the
            // session at hand: no look-up of it per want, no transport news to check (the
            // engine does not change a connection's transport).
            let want = loop {
                steps += 1;
                let want = {
                    let mut cx = cx!(self);
                    e.session.next(&mut cx)
                };
                let Want::Io(side, mut op) = want else {
                    break want;
                };
                // A splice's forward bypasses transports: only to a plain connection.
                if let Op::SpliceIn {
                    forward: forward @ Some(_),
                    ..
                } = &mut op
                {
                    if !forward.is_some_and(|to| {
                        matches!(
                            self.conns.get(to as usize).map(|m| &m.transport),
                            Some(Transport::Plain)
                        )
                    }) {
                        *forward = None;
                    }
                }
                let plain = e.session.conn(side).filter(|&c| {
                    matches!(
                        self.conns.get(c as usize).map(|m| &m.transport),
                        Some(Transport::Plain)
                    )
                });
                let (Some(conn), true) = (plain, steps < MAX_STEPS) else {
                    break Want::Io(side, op);
                };
                if let Some(done) = self.engine.submit(conn, op) {
                    let mut cx = cx!(self);
                    e.session.complete(side, done, &mut cx);
                }
            };
            match want {
                Want::Io(side, op) => {
                    let Some(conn) = e.session.conn(side) else {
                        // No such connection (a bug, never input): give the op's resources
                        // back and close rather than spin.
                        let (pool, pipes) = self.engine.pools();
                        recycle_op(op, pool, pipes);
                        return self.close(key, CloseReason::Done);
                    };
                    let i = conn as usize;
                    let done = match self.conns.get_mut(i).map(|m| &mut m.transport) {
                        // A plain connection (the common case): straight to the engine, not
                        // through a call into the transport layer.
                        Some(Transport::Plain) => self.engine.submit(conn, op),
                        Some(t) => t.submit(&mut self.engine, &mut self.toxics, conn, op),
                        None => {
                            let (pool, pipes) = self.engine.pools();
                            recycle_op(op, pool, pipes);
                            return self.close(key, CloseReason::Done);
                        }
                    };
                    if let Some(done) = done {
                        let mut cx = cx!(self);
                        e.session.complete(side, done, &mut cx);
                    }
                    self.transport_news(key, side, conn);
                }
                Want::Idle => {
                    // An HTTP session (no drive stats to take) still at hand: its timer
                    // checked without another look-up of it (the common end of a drive).
                    if let Session::Http(_) = e.session {
                        if e.timer_covers(&self.conns) {
                            return;
                        }
                        return self.arm_timer(key);
                    }
                    self.after_drive(key);
                    return self.rearm_if_earlier(key);
                }
                Want::Yield => {
                    self.env.conns.loop_bound_hits += 1;
                    self.after_drive(key);
                    self.queue(key, Queue::Ready);
                    return self.rearm_if_earlier(key);
                }
                Want::Buffer => {
                    self.env.conns.buffer_waits += 1;
                    self.after_drive(key);
                    self.queue(key, Queue::Buffer);
                    return self.rearm_if_earlier(key);
                }
                Want::BufferNew => {
                    self.env.conns.buffer_waits += 1;
                    self.env.conns.buffer_reserve_waits += 1;
                    self.after_drive(key);
                    self.queue(key, Queue::BufferNew);
                    return self.rearm_if_earlier(key);
                }
                Want::Upstream(up) => self.upstream_step(key, up),
                Want::Close(why) => {
                    self.after_drive(key);
                    return self.close(key, why);
                }
            }
        }
        self.env.conns.loop_bound_hits += 1;
        self.after_drive(key);
        self.queue(key, Queue::Ready);
    }

    /// Stats of what a drive moved (TCP bytes, Foo messages): nothing for an HTTP session.
    #[inline]
    fn after_drive(&mut self, key: usize) {
        if let Some(Entry {
            session: Session::Tcp(_),
            ..
        }) = self.sessions.get(key)
        {
            self.after_tcp_drive(key);
        }
    }

    /// [`Worker::after_drive`] of a TCP session.
    #[inline(never)]
    fn after_tcp_drive(&mut self, key: usize) {
        if let Some(Entry {
            session: Session::Tcp(s),
            ..
        }) = self.sessions.get_mut(key)
        {
            let (up, down, splices) = s.take_moved();
            if up | down != 0 {
                if let Some(Some(f)) = self.conn_facts.get_mut(key) {
                    f.up += up;
                    f.down += down;
                }
                self.env.conns.bytes_client_to_backend += up;
                self.env.conns.bytes_backend_to_client += down;
                self.obs.bytes(
                    &s.snapshot,
                    s.listener,
                    s.target.cluster,
                    s.target.backend,
                    up,
                    down,
                );
            }
            self.env.conns.splice_starts += u64::from(splices);
            s.take_foo(&mut self.obs.foo);
        }
    }

    /// Closes session `key`: both connections, its queues, its counts.
    pub(super) fn close(&mut self, key: usize, why: CloseReason) {
        if !self.sessions.contains(key) {
            return;
        }
        let _ = self.log_request(key);
        self.log_connection(key, why);
        // A mirror of the request in flight goes on alone (nobody compares it now).
        self.mirror_primary_done(key, false);
        match self.sessions.get(key).map(|e| e.waiting) {
            Some(Waiting::Slot | Waiting::Woken) => {
                let _ = self.unqueue_pending(key);
            }
            Some(Waiting::Descriptor) => self.fd_waiters.retain(|&k| k != key),
            _ => {}
        }
        // The upstream first (its backend's count, and a waiter for its slot).
        let upstream_linger = if why == CloseReason::DownstreamReset {
            Linger::Reset
        } else {
            Linger::Graceful
        };
        self.drop_upstream(key, upstream_linger);
        let mut e = self.sessions.remove(key);
        let downstream = e.session.conn(Side::Downstream);
        {
            let mut cx = cx!(self);
            e.session.release(&mut cx);
        }
        if let Some(conn) = downstream {
            let linger = if why == CloseReason::UpstreamReset {
                Linger::Reset
            } else {
                Linger::Graceful
            };
            self.close_conn(conn, linger);
        }
        let snap = e.session.snapshot().clone();
        let li = e.session.listener();
        self.obs.closed(&snap, li);
        listener_closed(&snap, li as usize);
        match why {
            CloseReason::Done | CloseReason::Timeout | CloseReason::Shutdown => {}
            CloseReason::UpstreamReset => self.env.conns.backend_resets += 1,
            CloseReason::DownstreamReset => self.env.conns.client_resets += 1,
            CloseReason::NoUpstream => self.env.conns.no_backend += 1,
        }
        self.env.conns.closed += 1;
        self.after_session_closed();
    }

    /// A slot freed up: resume accepting if the connection limit had stopped it.
    pub(super) fn after_session_closed(&mut self) {
        if self.accept_full && self.sessions.len() < self.max_sessions {
            self.accept_full = false;
            for li in 0..self.listening.len() {
                if self.listening[li] && !self.accept_again.contains(&li) {
                    self.accept_again.push(li);
                }
            }
        }
    }

    /// Queues the access-log record of the session's current request, once (HTTP). Returns
    /// the request's latency when it was counted now (the balancer's feedback reuses it).
    pub(super) fn log_request(&mut self, key: usize) -> Option<std::time::Duration> {
        let e = self.sessions.get_mut(key)?;
        let Session::Http(s) = &mut e.session else {
            return None;
        };
        let x = s.exchange_mut()?;
        if x.logged {
            return None;
        }
        x.logged = true;
        let latency = self.obs_request_done(key);
        let (Some(tx), Some(e)) = (
            self.access_log.as_ref().filter(|l| l.enabled()),
            self.sessions.get(key),
        ) else {
            return latency;
        };
        let Session::Http(s) = &e.session else {
            return latency;
        };
        let Some(x) = s.exchange().filter(|x| x.log_started) else {
            // Off when the request began (a reload turned it on since): no facts to log.
            return latency;
        };
        let mut rec = x.log;
        rec.status = x.status;
        rec.fault = x.fault;
        rec.bytes = x.sent;
        rec.reused = x.reused;
        let tried = x.target.backend.is_some() || x.target.attempts > 0;
        crate::accesslog::finish(
            &mut rec,
            &s.snapshot,
            s.listener,
            tried.then_some(x.target.cluster),
            x.request_started,
            x.got_response_byte.then_some(x.first_byte_at),
            self.env.now,
        );
        let wall = self.wall_start + self.env.now.saturating_duration_since(self.started);
        rec.time_ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        rec.backend = x.target.backend.and_then(|i| {
            s.snapshot
                .clusters
                .get(x.target.cluster as usize)
                .and_then(|c| c.backends.get(i as usize))
                .map(|b| b.addr)
        });
        rec.worker = self.id as u16;
        if tx.try_send(rec).is_err() {
            self.env.http.access_log_dropped += 1;
        }
        latency
    }

    /// Queues the connection-log record of a closing TCP/Foo session (when the log is on).
    fn log_connection(&mut self, key: usize, why: CloseReason) {
        let (
            Some(tx),
            Some(Entry {
                session: Session::Tcp(s),
                ..
            }),
        ) = (
            self.connection_log.as_ref().filter(|l| l.enabled()),
            self.sessions.get(key),
        )
        else {
            return;
        };
        let Some(Some(f)) = self.conn_facts.get_mut(key).map(Option::take) else {
            return;
        };
        let mut rec = crate::connlog::ConnRecord::new(f.client, why);
        let wall = self.wall_start + self.env.now.saturating_duration_since(self.started);
        rec.time_ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Some(l) = s.snapshot.listener(s.listener as usize) {
            rec.listener.set(l.name.as_bytes());
        }
        if let Some(c) = s.snapshot.clusters.get(s.target.cluster as usize) {
            rec.cluster.set(c.name.as_bytes());
            rec.backend = s
                .target
                .backend
                .and_then(|i| c.backends.get(i as usize))
                .map(|b| b.addr);
        }
        let (up, down) = s.moved_pending();
        (rec.bytes_client_to_backend, rec.bytes_backend_to_client) = (f.up + up, f.down + down);
        rec.duration_us = self.env.now.saturating_duration_since(f.opened).as_micros() as u64;
        rec.worker = self.id as u16;
        if tx.try_send(rec).is_err() {
            self.env.conns.connection_log_dropped += 1;
        }
    }

    /// Closes the session's upstream connection (if any): its backend's count goes down and
    /// a session waiting for a slot of its cluster is woken.
    pub(super) fn drop_upstream(&mut self, key: usize, linger: Linger) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let backend = e
            .session
            .target()
            .and_then(|t| Some((t.cluster, t.backend?)));
        let Some(conn) = e.session.take_upstream() else {
            return;
        };
        let snap = e.session.snapshot().clone();
        self.close_conn(conn, linger);
        if let Some((ci, bi)) = backend {
            if let Some(c) = snap.clusters.get(ci as usize) {
                if let Some(b) = c.backends.get(bi as usize) {
                    b.live.active.fetch_sub(1, Ordering::Relaxed);
                }
                self.wake_pending(c);
            }
        }
    }

    /// Owner bookkeeping for a connection handed to session `key`.
    #[inline]
    pub(super) fn own(&mut self, conn: crate::engine::ConnId, key: usize, side: Side) {
        self.meta(conn).owner = Owner::Session(key as u32, side);
        self.clear_pool_deadline(conn);
        self.attach_toxics(conn, key, side);
    }
}
