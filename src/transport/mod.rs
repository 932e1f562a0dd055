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
//!   connection. Toxics act on the bytes on the wire, so they sit *under* TLS and the PROXY
//!   protocol: a TLS or PROXY layer over toxics hands its engine ops to a [`ToxicWire`]
//!   instead of the engine (records, handshake traffic and PROXY headers are shaped like any
//!   other bytes). A plain connection under toxics is [`Transport::Toxic`].
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

/// What a TLS or PROXY layer hands its engine ops to: the engine itself, or the connection's
/// toxics on their way to it ([`ToxicWire`]).
pub trait Wire {
    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done>;
    fn cancel(&mut self, conn: ConnId, slot: Slot);
    fn pools(&mut self) -> (&mut BufferPool, &mut PipePool);
}

impl<E: Engine> Wire for E {
    #[inline]
    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done> {
        Engine::submit(self, conn, op)
    }
    #[inline]
    fn cancel(&mut self, conn: ConnId, slot: Slot) {
        Engine::cancel(self, conn, slot)
    }
    #[inline]
    fn pools(&mut self) -> (&mut BufferPool, &mut PipePool) {
        Engine::pools(self)
    }
}

/// The wire of a TLS or PROXY layer over L4 toxics: its ops go through the connection's
/// entry in [`Toxics`].
pub struct ToxicWire<'a, E> {
    pub engine: &'a mut E,
    pub toxics: &'a mut Toxics,
    pub id: ToxicId,
}

impl<E: Engine> Wire for ToxicWire<'_, E> {
    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done> {
        self.toxics.submit(self.id, self.engine, conn, op)
    }
    fn cancel(&mut self, conn: ConnId, slot: Slot) {
        self.toxics.cancel(self.id, self.engine, conn, slot)
    }
    fn pools(&mut self) -> (&mut BufferPool, &mut PipePool) {
        Engine::pools(self.engine)
    }
}

/// Runs `$body` with `$w` bound to the wire of a layer: the engine (`$under` is `None`) or
/// the toxics under it.
macro_rules! over {
    ($under:expr, $engine:expr, $toxics:expr, |$w:ident| $body:expr) => {
        match $under {
            None => {
                let $w = $engine;
                $body
            }
            Some(id) => {
                let $w = &mut ToxicWire {
                    engine: $engine,
                    toxics: $toxics,
                    id: *id,
                };
                $body
            }
        }
    };
}

/// The transport of one connection.
#[derive(Debug, Default)]
pub enum Transport {
    /// Bytes go to the socket as they are.
    #[default]
    Plain,
    /// TLS (with a PROXY header below it when configured), over L4 fault toxics when the
    /// second field is set.
    Tls(Box<tls::TlsConn>, Option<ToxicId>),
    /// Plain TCP with a PROXY header read or written first, over L4 fault toxics when the
    /// second field is set.
    Proxy(Box<proxy::ProxyConn>, Option<ToxicId>),
    /// Plain TCP under L4 fault toxics: the connection's entry in the worker's [`Toxics`].
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
            Transport::Plain => Engine::submit(engine, conn, op),
            Transport::Tls(t, u) => over!(u, engine, toxics, |w| t.submit(w, conn, op)),
            Transport::Proxy(p, u) => over!(u, engine, toxics, |w| p.submit(w, conn, op)),
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
            Transport::Tls(t, None) => t.complete(engine, conn, done),
            Transport::Proxy(p, None) => p.complete(engine, conn, done),
            Transport::Toxic(id) => toxics.complete(*id, done),
            Transport::Tls(_, Some(id)) | Transport::Proxy(_, Some(id)) => {
                let done = toxics.complete(*id, done)?;
                self.lift(engine, toxics, conn, done)
            }
        }
    }

    /// Passes a completion that already went through the connection's toxics (a held op
    /// that ran on a toxic timer) up through the layer over them, if any.
    pub fn lift<E: Engine>(
        &mut self,
        engine: &mut E,
        toxics: &mut Toxics,
        conn: ConnId,
        done: Done,
    ) -> Option<Done> {
        let Some(id) = self.toxic() else {
            return Some(done);
        };
        let w = &mut ToxicWire { engine, toxics, id };
        match self {
            Transport::Tls(t, _) => t.complete(w, conn, done),
            Transport::Proxy(p, _) => p.complete(w, conn, done),
            Transport::Plain | Transport::Toxic(_) => Some(done),
        }
    }

    /// The connection's entry in [`Toxics`], when it is under toxics.
    #[inline]
    pub fn toxic(&self) -> Option<ToxicId> {
        match self {
            Transport::Toxic(id) | Transport::Tls(_, Some(id)) | Transport::Proxy(_, Some(id)) => {
                Some(*id)
            }
            _ => None,
        }
    }

    /// Puts the connection under toxics entry `id`, below whatever layer it has. Returns
    /// the entry it was under before, if any.
    pub fn put_under(&mut self, id: ToxicId) -> Option<ToxicId> {
        match self {
            Transport::Plain => {
                *self = Transport::Toxic(id);
                None
            }
            Transport::Toxic(old) => Some(std::mem::replace(old, id)),
            Transport::Tls(_, u) | Transport::Proxy(_, u) => u.replace(id),
        }
    }

    /// A TLS connection (over toxics or not).
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(..))
    }

    /// A further completion for the session, made ready by the last `submit` or `complete`.
    #[inline]
    pub fn take_ready(&mut self) -> Option<Done> {
        match self {
            Transport::Plain | Transport::Toxic(_) => None,
            Transport::Tls(t, _) => t.take_ready(),
            Transport::Proxy(p, _) => p.take_ready(),
        }
    }

    /// What happened below the session since the last call ([`event`] bits).
    #[inline]
    pub fn take_events(&mut self) -> u8 {
        match self {
            Transport::Plain | Transport::Toxic(_) => 0,
            Transport::Tls(t, _) => t.take_events(),
            Transport::Proxy(p, _) => p.take_events(),
        }
    }

    /// Cancels the op in `slot` (its `Done` is never delivered).
    pub fn cancel<E: Engine>(
        &mut self,
        engine: &mut E,
        toxics: &mut Toxics,
        conn: ConnId,
        slot: Slot,
    ) {
        match self {
            Transport::Plain => Engine::cancel(engine, conn, slot),
            Transport::Toxic(id) => toxics.cancel(*id, engine, conn, slot),
            Transport::Tls(t, u) => over!(u, engine, toxics, |w| t.cancel(w, conn, slot)),
            Transport::Proxy(p, u) => over!(u, engine, toxics, |w| p.cancel(w, conn, slot)),
        }
    }

    /// The connection is about to be closed gracefully (TLS: `close_notify` goes out first).
    pub fn closing<E: Engine>(&mut self, engine: &mut E, toxics: &mut Toxics, conn: ConnId) {
        if let Transport::Tls(t, u) = self {
            over!(u, engine, toxics, |w| t.closing(w, conn));
        }
    }

    /// The connection is being closed: what the transport holds goes back to the pools.
    pub fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        match std::mem::take(self) {
            // A toxic connection's held ops are the worker's `Toxics` to give back.
            Transport::Plain | Transport::Toxic(_) => {}
            Transport::Tls(mut t, _) => t.release(pool, pipes),
            Transport::Proxy(mut p, _) => {
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
            Transport::Tls(t, _) => t.deadline(),
            Transport::Proxy(p, _) => p.deadline(),
        }
    }

    /// Bytes may go socket → pipe → socket (not through a TLS connection).
    #[inline]
    pub fn can_splice(&self) -> bool {
        !self.is_tls()
    }

    /// The client and destination addresses an accepted PROXY header carried.
    pub fn proxied(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            Transport::Plain | Transport::Toxic(_) => None,
            Transport::Tls(t, _) => t.proxied,
            Transport::Proxy(p, _) => p.proxied,
        }
    }

    /// An idle upstream connection can serve a request that needs `tls` and would send
    /// `proxy`: it was made with the same TLS config and sent the same PROXY header.
    pub fn reusable_for(
        &self,
        tls: Option<&std::sync::Arc<crate::tls::ClientTls>>,
        proxy: Option<&(
            crate::proto::proxy_protocol::Version,
            Option<(SocketAddr, SocketAddr)>,
        )>,
    ) -> bool {
        match self {
            Transport::Plain => tls.is_none() && proxy.is_none(),
            Transport::Tls(t, None) => {
                t.sent_proxy.as_ref() == proxy
                    && match (&t.client, tls) {
                        (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                        _ => false,
                    }
            }
            Transport::Proxy(p, None) => tls.is_none() && p.sent.as_ref() == proxy,
            // Never pooled: it carries its session's faults.
            Transport::Toxic(_) | Transport::Tls(_, Some(_)) | Transport::Proxy(_, Some(_)) => {
                false
            }
        }
    }
}
