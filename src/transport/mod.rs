//! The transport seam: what sits between a session and the engine on each connection, as
//! HAProxy's `xprt_ops` sits under its muxes.
//!
//! A session's [`Op`]s pass through its connection's transport on the way to the engine, and
//! the engine's [`Done`]s pass back through it. Plain TCP hands both through untouched (the
//! match below compiles to nothing). The transports that plug in here keep the same contract
//! towards the session and turn it into other engine ops underneath:
//! - TLS: a `Send` of plaintext becomes a `Send` of records (the plaintext buffers come back
//!   at once, rustls keeps what it encrypted); a `Recv` completes with decrypted bytes after
//!   the engine's receives of ciphertext (and handshake traffic the session never sees);
//! - L4 fault toxics: latency and slicing delay or split the ops on a timer; bandwidth paces
//!   them; `timeout`, `reset_peer` and `limit_data` hold, reset or cut the connection.
//!
//! Because each transport works on ops and completions, not on sockets, every transport runs on
//! every engine. HOT PATH: no allocation, lock or log.

use crate::engine::{ConnId, Done, Engine, Op};

/// The transport of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Bytes go to the socket as they are.
    #[default]
    Plain,
}

impl Transport {
    /// Passes a session's op down to the engine. `Some` when it completed at once.
    #[inline]
    pub fn submit<E: Engine>(&mut self, engine: &mut E, conn: ConnId, op: Op) -> Option<Done> {
        match self {
            Transport::Plain => engine.submit(conn, op),
        }
    }

    /// Passes an engine completion up to the session: `None` when the transport consumed it
    /// (its own traffic) and the session has nothing to learn yet.
    #[inline]
    pub fn complete(&mut self, done: Done) -> Option<Done> {
        match self {
            Transport::Plain => Some(done),
        }
    }
}
