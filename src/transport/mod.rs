//! The transport seam: what sits between a session and the engine on each connection, as
//! HAProxy's `xprt_ops` sits under its muxes.
//!
//! A session's [`Op`]s pass through its connection's transport on the way to the engine, and
//! the engine's [`Done`]s pass back through it. Plain TCP hands both through untouched (the
//! match below compiles to nothing). The transports that plug in here keep the same contract
//! towards the session and turn it into other engine ops underneath:
//! - TLS ([`tls`]): a `Send` of plaintext becomes a `Send` of records (the plaintext buffers
//!   come back at once, rustls keeps what it encrypted); a `Recv` completes with decrypted
//!   bytes after the engine's receives of ciphertext (and handshake traffic the session never
//!   sees);
//! - the PROXY protocol ([`proxy`]): a header read off the front of an accepted connection, or
//!   written in front of an upstream one, before the session's bytes;
//! - L4 fault toxics ([`toxics`]): latency and slicing delay or split the ops on a timer;
//!   bandwidth paces them; `timeout`, `reset_peer` and `limit_data` hold, reset or cut the
//!   connection (plain connections only: a TLS listener's toxics are not applied).
//!
//! One engine completion may answer both of the session's slots (a TLS record that finishes
//! the handshake lets a held send go too): the extra one waits in [`Transport::take_ready`].
//!
//! Because each transport works on ops and completions, not on sockets, every transport runs on
//! every engine. HOT PATH: no allocation, lock or log (a boxed transport is allocated once per
//! connection that needs one).

pub mod proxy;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod toxics;

use crate::engine::{recycle, ConnId, Done, Engine, Op, Slot};
use crate::io::{BufferPool, PipePool};
use std::net::SocketAddr;
use std::time::Instant;

pub use tls::event;
use toxics::{ToxicId, Toxics};

/// The transport of one connection.
#[derive(Debug, Default)]
pub enum Transport {
    /// Bytes go to the socket as they are.
    #[default]
    Plain,
    /// TLS (with a PROXY header below it when configured).
    Tls(Box<tls::TlsConn>),
    /// Plain TCP with a PROXY header read or written first.
    Proxy(Box<proxy::ProxyConn>),
    /// Plain TCP under L4 fault toxics: the connection's entry in the worker's [`Toxics`]
    /// (toxics apply to plain connections only).
    Toxic(ToxicId),
}

impl Transport {
    /// Passes a session's op down to the engine. `Some` when it completed at once.
    #[inline]
    pub fn submit<E: Engine>(
        &mut self,
        engine: &mut E,
        toxics: &mut Toxics,
        conn: ConnId,
        op: Op,
    ) -> Option<Done> {
        match self {
            Transport::Plain => engine.submit(conn, op),
            Transport::Tls(t) => t.submit(engine, conn, op),
            Transport::Proxy(p) => p.submit(engine, conn, op),
            Transport::Toxic(id) => toxics.submit(*id, engine, conn, op),
        }
    }

    /// Passes an engine completion up to the session: `None` when the transport consumed it
    /// (its own traffic) and the session has nothing to learn yet.
    #[inline]
    pub fn complete<E: Engine>(
        &mut self,
        engine: &mut E,
        toxics: &mut Toxics,
        conn: ConnId,
        done: Done,
    ) -> Option<Done> {
        match self {
            Transport::Plain => Some(done),
            Transport::Tls(t) => t.complete(engine, conn, done),
            Transport::Proxy(p) => p.complete(engine, conn, done),
            Transport::Toxic(id) => toxics.complete(*id, done),
        }
    }

    /// A further completion for the session, made ready by the last `submit` or `complete`.
    #[inline]
    pub fn take_ready(&mut self) -> Option<Done> {
        match self {
            Transport::Plain | Transport::Toxic(_) => None,
            Transport::Tls(t) => t.take_ready(),
            Transport::Proxy(p) => p.take_ready(),
        }
    }

    /// What happened below the session since the last call ([`event`] bits).
    #[inline]
    pub fn take_events(&mut self) -> u8 {
        match self {
            Transport::Plain | Transport::Toxic(_) => 0,
            Transport::Tls(t) => t.take_events(),
            Transport::Proxy(p) => p.take_events(),
        }
    }

    /// Cancels the op in `slot` (its `Done` is never delivered).
    pub fn cancel<E: Engine>(&mut self, engine: &mut E, conn: ConnId, slot: Slot) {
        match self {
            Transport::Plain | Transport::Toxic(_) => engine.cancel(conn, slot),
            Transport::Tls(t) => t.cancel(engine, conn, slot),
            Transport::Proxy(p) => p.cancel(engine, conn, slot),
        }
    }

    /// The connection is about to be closed gracefully (TLS: `close_notify` goes out first).
    pub fn closing<E: Engine>(&mut self, engine: &mut E, conn: ConnId) {
        if let Transport::Tls(t) = self {
            t.closing(engine, conn);
        }
    }

    /// The connection is being closed: what the transport holds goes back to the pools.
    pub fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        match std::mem::take(self) {
            // A toxic connection's held ops are the worker's `Toxics` to give back.
            Transport::Plain | Transport::Toxic(_) => {}
            Transport::Tls(mut t) => t.release(pool, pipes),
            Transport::Proxy(mut p) => {
                p.release(pool, pipes);
                while let Some(d) = p.take_ready() {
                    recycle(d, pool, pipes);
                }
            }
        }
    }

    /// A deadline of the transport's own (handshake, PROXY header), while one runs.
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Transport::Plain | Transport::Toxic(_) => None,
            Transport::Tls(t) => t.deadline(),
            Transport::Proxy(p) => p.deadline(),
        }
    }

    /// Bytes may go socket → pipe → socket (not through a TLS connection).
    #[inline]
    pub fn can_splice(&self) -> bool {
        !matches!(self, Transport::Tls(_))
    }

    /// The client and destination addresses an accepted PROXY header carried.
    pub fn proxied(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            Transport::Plain | Transport::Toxic(_) => None,
            Transport::Tls(t) => t.proxied,
            Transport::Proxy(p) => p.proxied,
        }
    }

    /// An idle upstream connection can serve a request that needs `tls` and would send
    /// `proxy`: it was made with the same TLS config and sent the same PROXY header.
    pub fn reusable_for(
        &self,
        tls: Option<&std::sync::Arc<crate::tls::ClientTls>>,
        proxy: Option<(
            crate::proto::proxy_protocol::Version,
            Option<(SocketAddr, SocketAddr)>,
        )>,
    ) -> bool {
        match self {
            Transport::Plain => tls.is_none() && proxy.is_none(),
            Transport::Tls(t) => {
                t.sent_proxy == proxy
                    && match (&t.client, tls) {
                        (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                        _ => false,
                    }
            }
            Transport::Proxy(p) => tls.is_none() && p.sent == proxy,
            // Never pooled: it carries its session's faults.
            Transport::Toxic(_) => false,
        }
    }
}
