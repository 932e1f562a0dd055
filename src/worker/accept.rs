//! Accepting: listener slots, the accept loop with its bounds (connection limit, descriptor
//! exhaustion), and opening a session of the listener's protocol.
//!
//! HOT PATH (per connection). No lock, blocking call or info-level log.

use super::{
    is_resource_exhaustion, listener_closed, ConnFacts, Entry, Waiting, Worker, ACCEPT_BATCH,
};
use crate::balance::hash_ip;
use crate::config::{BalanceKind, HashOn, Protocol};
use crate::engine::{Accepted, ConnId, Engine, Linger, Op, Slice};
use crate::session::http::ListenerTimeouts;
use crate::session::{HttpSession, Session, Side, Target, TcpSession};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptor exhaustion is logged at most this often (it is always counted).
const FD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The answer to an HTTP client over its listener's `max_connections`.
const LISTENER_FULL_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 34\r\nRetry-After: 1\r\nConnection: close\r\n\r\nlistener connection limit reached\n";

impl<E: Engine> Worker<E> {
    pub(super) fn add_listener(&mut self, slot: usize, socket: std::net::TcpListener) {
        if self.shutdown.is_some() {
            return; // dropping the socket closes it
        }
        self.remove_listener(slot);
        if let Err(e) = self.engine.add_listener(slot, socket) {
            log::error!("worker {}: cannot watch listener slot {slot}: {e}", self.id);
            return;
        }
        if self.listening.len() <= slot {
            self.listening.resize(slot + 1, false);
        }
        self.listening[slot] = true;
        // Connections may have queued between the bind and now: edge-triggered epoll reports
        // them on registration, but accepting once more costs one syscall.
        if !self.accept_again.contains(&slot) {
            self.accept_again.push(slot);
        }
    }

    pub(super) fn remove_listener(&mut self, slot: usize) {
        if let Some(l) = self.listening.get_mut(slot) {
            if *l {
                *l = false;
                self.engine.remove_listener(slot);
            }
        }
        self.accept_again.retain(|&li| li != slot);
    }

    /// Listener `li` was removed (or the worker drains): the connections the engine had
    /// accepted already (see `Engine::remove_listener`) are served like any other, draining
    /// ones included, rather than closed unanswered.
    fn accept_leftovers(&mut self, li: usize) {
        let mut any = false;
        while let Accepted::Conn(conn, peer) = self.engine.accept(li) {
            self.open_session(li, conn, peer);
            any = true;
        }
        if any && self.shutdown.is_some() {
            self.close_idle();
        }
    }

    pub(super) fn accept(&mut self, li: usize) {
        let listening = self.listening.get(li).copied().unwrap_or(false);
        if self.shutdown.is_some() || !listening {
            if !listening {
                self.accept_leftovers(li);
            }
            return;
        }
        if let Some(at) = self.accept_paused_until {
            if self.env.now < at {
                // Retried when the pause ends (the poll timeout wakes us then).
                if !self.accept_again.contains(&li) {
                    self.accept_again.push(li);
                }
                return;
            }
            self.accept_paused_until = None;
        }
        for _ in 0..ACCEPT_BATCH {
            if self.sessions.len() >= self.max_sessions {
                // Leave the rest in the kernel backlog; resumed when a session closes.
                self.accept_full = true;
                return;
            }
            match self.engine.accept(li) {
                Accepted::Conn(conn, peer) => self.open_session(li, conn, peer),
                Accepted::Empty => return,
                Accepted::Failed(e) => {
                    self.env.conns.accept_errors += 1;
                    if is_resource_exhaustion(&e) {
                        self.descriptors_exhausted(&e);
                        if !self.accept_again.contains(&li) {
                            self.accept_again.push(li);
                        }
                        return;
                    }
                    // ECONNABORTED and friends concern one connection only.
                }
            }
        }
        self.env.conns.loop_bound_hits += 1;
        if !self.accept_again.contains(&li) {
            self.accept_again.push(li);
        }
    }

    /// Out of descriptors (or kernel memory): stop accepting for a moment so the sessions we
    /// have keep working; waiting clients stay in the kernel backlog. Never spins, never dies.
    pub(super) fn descriptors_exhausted(&mut self, e: &std::io::Error) {
        let quiet = self
            .fd_exhaustion_logged
            .is_some_and(|t| self.env.now.duration_since(t) < FD_LOG_INTERVAL);
        if !quiet {
            log::warn!(
                "worker {}: out of descriptors ({e}); pausing accepts for {:?} at a time \
                 (raise the open-file limit or lower max_connections)",
                self.id,
                ACCEPT_BACKOFF
            );
            self.fd_exhaustion_logged = Some(self.env.now);
        }
        self.accept_paused_until = Some(self.env.now + ACCEPT_BACKOFF);
    }

    fn open_session(&mut self, li: usize, conn: ConnId, peer: SocketAddr) {
        self.env.conns.accepted += 1;
        let snap = self.env.shared.load_full();
        let Some(route) = snap.listener(li) else {
            // Removed since the accept.
            self.env.conns.closed += 1;
            return self.close_conn(conn, Linger::Graceful);
        };
        let transport = match self.downstream_transport(route, peer) {
            Ok(t) => t,
            Err(why) => {
                if let super::transport::Refused::Untrusted = why {
                    self.env.conns.proxy_untrusted += 1;
                }
                self.env.conns.closed += 1;
                return self.close_conn(conn, Linger::Graceful);
            }
        };
        let plain = matches!(transport, crate::transport::Transport::Plain);
        let open = route.live.active.fetch_add(1, Ordering::Relaxed);
        if route.max_connections.is_some_and(|max| open >= max) {
            listener_closed(&snap, li);
            self.env.conns.limit_rejects += 1;
            self.env.conns.closed += 1;
            // The plain-text 503 only where the client reads plain HTTP first.
            if route.protocol == Protocol::Http && plain {
                self.send_and_close(conn, LISTENER_FULL_503);
            } else {
                self.close_conn(conn, Linger::Graceful);
            }
            return;
        }
        let session = match route.protocol {
            Protocol::Http => {
                let timeouts = ListenerTimeouts {
                    request_header: route.http.request_header_timeout.into(),
                    request_body: route.http.request_body_timeout.into(),
                    buffering: u32::try_from(route.http.request_buffering).unwrap_or(u32::MAX),
                    keepalive: route.http.keepalive_timeout.into(),
                    tunnel_idle: route.idle_timeout.into(),
                };
                let mut s = HttpSession::new(
                    conn,
                    snap.clone(),
                    li as u32,
                    peer.ip(),
                    timeouts,
                    self.env.now,
                );
                if route.tls.is_some() {
                    s.no_splice();
                }
                Session::Http(s)
            }
            Protocol::Tcp | Protocol::Foo => {
                // tcp/foo listeners always have a cluster (validated).
                let Some(ci) = route.cluster else {
                    listener_closed(&snap, li);
                    self.env.conns.closed += 1;
                    return self.close_conn(conn, Linger::Graceful);
                };
                let hash = snap.clusters.get(ci).and_then(|c| {
                    (c.balance == BalanceKind::Hash && c.hash_on == Some(HashOn::ClientIp))
                        .then(|| hash_ip(peer.ip()))
                });
                // Foo listeners are analyzed line by line: their bytes must pass through
                // user space.
                let is_foo = route.protocol == Protocol::Foo;
                let mut s = TcpSession::new(
                    conn,
                    snap.clone(),
                    li as u32,
                    Target::new(ci as u32, hash, self.env.now),
                    !is_foo,
                    self.env.now,
                );
                if is_foo {
                    s.sniff_foo();
                }
                // No backend connection for a client that has not shown its PROXY header or
                // finished its handshake.
                if route.accept_proxy.is_some() || route.tls.is_some() {
                    s.wait_for_client();
                }
                let tls_up = snap.clusters.get(ci).is_some_and(|c| c.tls.is_some());
                if route.tls.is_some() || tls_up {
                    s.no_splice();
                }
                Session::Tcp(s)
            }
        };
        if self.balancers.version != snap.version {
            self.balancers.update(&snap);
        }
        self.obs.accepted(&snap, li as u32);
        let key = self.sessions.insert(Entry {
            session,
            timer_gen: 0,
            timer_at: Instant::now(),
            timer_armed: false,
            transport_deadline: !plain,
            queued: false,
            waiting: Waiting::No,
        });
        let logged = self.connection_log.as_ref().is_some_and(|l| l.enabled())
            && matches!(self.sessions[key].session, Session::Tcp(_));
        if logged {
            if key >= self.conn_facts.len() {
                self.conn_facts.resize(key + 1, None);
            }
            self.conn_facts[key] = Some(ConnFacts {
                client: peer,
                opened: self.env.now,
                up: 0,
                down: 0,
            });
        } else if let Some(f) = self.conn_facts.get_mut(key) {
            *f = None;
        }
        // The transport first: `own` puts a plain connection under its listener's toxics.
        self.meta(conn).transport = transport;
        self.own(conn, key, Side::Downstream);
        if !plain {
            // The handshake or PROXY header deadline.
            self.arm_timer(key);
        }
        self.drive(key);
    }

    /// One try at writing a short answer, then close (a client that cannot take these bytes
    /// now just sees the close).
    fn send_and_close(&mut self, conn: ConnId, bytes: &[u8]) {
        let (pool, _) = self.engine.pools();
        if let Some(mut b) = pool.checkout() {
            let spare = pool.spare(&mut b);
            let n = bytes.len().min(spare.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            b.fill(n);
            if let Some(done) = self.engine.submit(conn, Op::Send(Slice::head(b, n), None)) {
                let (pool, pipes) = self.engine.pools();
                crate::engine::recycle(done, pool, pipes);
            }
        }
        self.close_conn(conn, Linger::Graceful);
    }
}
