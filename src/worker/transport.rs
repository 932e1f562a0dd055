//! The worker's side of the transport seam: which transport a new connection gets (TLS,
//! PROXY protocol, or plain), what a transport learned that the session must know (the
//! client address a PROXY header carried), completions it made ready beyond the one it
//! returned, its events counted, and its deadline (handshake, PROXY header).
//!
//! HOT PATH. For plain connections each hook is one match on the transport; no allocation
//! (one box per TLS or PROXY connection), lock or info-level log.

use super::{ConnMeta, Entry, Worker};
use crate::engine::{ConnId, Engine};
use crate::proto::proxy_protocol::Version;
use crate::session::{Session, Side};
use crate::snapshot::{Cluster, ListenerRoute};
use crate::transport::{event, proxy, tls::TlsConn, Transport};
use std::net::SocketAddr;
use std::time::Instant;

/// Why a new client connection is turned away before its session starts.
pub(super) enum Refused {
    /// Not from a `trusted_proxies` range.
    Untrusted,
    /// The TLS state could not be made (never for a valid config).
    Tls,
}

impl<E: Engine> Worker<E> {
    /// The transport of a connection accepted by `route` from `peer`.
    pub(super) fn downstream_transport(
        &self,
        route: &ListenerRoute,
        peer: SocketAddr,
    ) -> Result<Transport, Refused> {
        let proxy_in = match &route.accept_proxy {
            Some(a) => {
                if !a.trusted.is_empty() && !a.trusted.iter().any(|c| c.contains(peer.ip())) {
                    return Err(Refused::Untrusted);
                }
                Some(a)
            }
            None => None,
        };
        match (&route.tls, proxy_in) {
            (Some(tls), p) => TlsConn::server(tls, p.map(|_| proxy::ProxyIn), self.env.now)
                .map(|t| Transport::Tls(Box::new(t), None))
                .map_err(|_| Refused::Tls),
            (None, Some(p)) => Ok(Transport::Proxy(
                Box::new(proxy::ProxyConn::accepted(self.env.now + p.timeout)),
                None,
            )),
            (None, None) => Ok(Transport::Plain),
        }
    }

    /// The PROXY header session `key`'s upstream connections start with (cluster `c`).
    pub(super) fn proxy_header_for(
        &self,
        key: usize,
        c: &Cluster,
    ) -> Option<(Version, Option<(SocketAddr, SocketAddr)>)> {
        let v = c.send_proxy?;
        let down = self.sessions.get(key)?.session.conn(Side::Downstream)?;
        let addrs = self
            .conns
            .get(down as usize)
            .and_then(|m| m.transport.proxied())
            .or_else(|| self.engine.addrs(down));
        Some((v, addrs))
    }

    /// The transport of a new upstream connection to `backend` (as written) of cluster `c`.
    /// `Err` when TLS cannot be set up for it (a backend name that is not a valid TLS name).
    pub(super) fn upstream_transport(
        &self,
        c: &Cluster,
        backend: &str,
        proxy: Option<(Version, Option<(SocketAddr, SocketAddr)>)>,
    ) -> Result<Transport, ()> {
        match &c.tls {
            Some(tls) => {
                let name = tls.name_for(backend).ok_or(())?;
                TlsConn::client(tls, name, proxy)
                    .map(|t| Transport::Tls(Box::new(t), None))
                    .map_err(|_| ())
            }
            None if proxy.is_some() => Ok(Transport::Proxy(
                Box::new(proxy::ProxyConn::upstream(proxy)),
                None,
            )),
            None => Ok(Transport::Plain),
        }
    }

    /// After a transport ran for connection `conn` of session `key` (side `side`): hands the
    /// session the completions it made ready, tells it the client address a PROXY header
    /// carried, and counts what happened.
    /// A plain connection (the common case) has none: one inlined check.
    #[inline(always)]
    pub(super) fn transport_news(&mut self, key: usize, side: Side, conn: ConnId) {
        if self
            .conns
            .get(conn as usize)
            .is_some_and(|m| !matches!(m.transport, Transport::Plain))
        {
            self.layered_news(key, side, conn);
        }
    }

    /// [`Worker::transport_news`] of a TLS, PROXY or toxic connection.
    #[inline(never)]
    fn layered_news(&mut self, key: usize, side: Side, conn: ConnId) {
        let Some(m) = self.conns.get_mut(conn as usize) else {
            return;
        };
        let events = m.transport.take_events();
        if events != 0 {
            self.count_events(events);
            // The client connection's PROXY header was read, or its handshake is done: a
            // TCP session connects upstream once both that apply are behind it.
            let client =
                side == Side::Downstream && events & (event::PROXIED | event::HANDSHAKE) != 0;
            if client {
                let (proxied, tls) = match self.conns.get(conn as usize).map(|m| &m.transport) {
                    Some(t) => (t.proxied(), t.is_tls()),
                    None => (None, false),
                };
                let start = if tls {
                    events & event::HANDSHAKE != 0
                } else {
                    events & event::PROXIED != 0
                };
                self.client_known(key, proxied, start);
            }
        }
        for _ in 0..4 {
            let Some(m) = self.conns.get_mut(conn as usize) else {
                return;
            };
            let Some(done) = m.transport.take_ready() else {
                return;
            };
            let Some(e) = self.sessions.get_mut(key) else {
                let (pool, pipes) = self.engine.pools();
                return crate::engine::recycle(done, pool, pipes);
            };
            let mut cx = super::cx!(self);
            e.session.complete(side, done, &mut cx);
        }
    }

    fn count_events(&mut self, events: u8) {
        let c = &mut self.env.conns;
        if events & event::HANDSHAKE != 0 {
            c.tls_handshakes += 1;
        }
        if events & event::RESUMED != 0 {
            c.tls_resumed += 1;
        }
        if events & event::HANDSHAKE_FAILED != 0 {
            c.tls_handshake_failures += 1;
        }
        if events & event::PROXY_BAD != 0 {
            c.proxy_header_errors += 1;
        }
    }

    /// A PROXY header was read (or a TLS handshake finished): the session goes on with the
    /// client it names (`None`: the header named none, the connection's own peer stands).
    /// `start`: a waiting TCP session may connect upstream now.
    fn client_known(&mut self, key: usize, proxied: Option<(SocketAddr, SocketAddr)>, start: bool) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        match &mut e.session {
            Session::Http(s) => {
                if let Some((client, _)) = proxied {
                    s.set_client_ip(client.ip());
                }
            }
            Session::Tcp(s) if start => {
                if let (Some((client, _)), Some(Some(f))) = (proxied, self.conn_facts.get_mut(key))
                {
                    f.client = client;
                }
                let ip = proxied.map(|(c, _)| c.ip());
                let snap = s.snapshot.clone();
                let hash = snap.clusters.get(s.target.cluster as usize).and_then(|c| {
                    (c.balance == crate::config::BalanceKind::Hash
                        && c.hash_on == Some(crate::config::HashOn::ClientIp))
                    .then_some(())
                });
                let hash = match (hash, ip) {
                    (Some(()), Some(ip)) => Some(crate::balance::hash_ip(ip)),
                    _ => s.target.hash,
                };
                s.client_known(hash, self.env.now);
            }
            Session::Tcp(_) => {}
        }
    }

    /// When session `key` times out: its own deadline, or its client connection's
    /// transport's (a handshake or PROXY header still running), whichever is first.
    #[inline]
    pub(super) fn session_deadline(&self, key: usize) -> Option<(Instant, bool)> {
        let e = self.sessions.get(key)?;
        Some(entry_deadline(e, &self.conns))
    }

    /// A handshake or PROXY header did not finish in time.
    pub(super) fn transport_timed_out(&mut self, key: usize) {
        self.env.conns.tls_handshake_timeouts += 1;
        self.close(key, crate::session::CloseReason::Timeout);
    }
}

/// Whether the deadline of the transport of `e`'s client connection, if it has one, is not
/// before `at` (the other half of [`entry_deadline`]`(e).0 >= at`). No look-up for a client
/// connection accepted plain.
#[inline(always)]
pub(super) fn deadline_not_before(e: &Entry, conns: &[ConnMeta], at: Instant) -> bool {
    !e.transport_deadline
        || e.session
            .conn(Side::Downstream)
            .and_then(|c| conns.get(c as usize))
            .and_then(|m| m.transport.deadline())
            .is_none_or(|t| t >= at)
}

/// [`Worker::session_deadline`] of session entry `e`, its connections described by `conns`.
#[inline]
pub(super) fn entry_deadline(e: &Entry, conns: &[ConnMeta]) -> (Instant, bool) {
    let own = e.session.deadline();
    let t = e
        .transport_deadline
        .then(|| e.session.conn(Side::Downstream))
        .flatten()
        .and_then(|c| conns.get(c as usize))
        .and_then(|m| m.transport.deadline());
    match t {
        Some(t) if t < own => (t, true),
        _ => (own, false),
    }
}
