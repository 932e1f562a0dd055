//! Completions to their owners: the session (and side) that owns the connection, or the
//! upstream pool. HOT PATH: one table lookup per completion.

use super::{cx, Owner, Worker};
use crate::engine::{recycle, ConnId, Done, Engine};
use crate::transport::Transport;

impl<E: Engine> Worker<E> {
    /// An op of connection `conn` completed: through its transport, to its owner.
    #[inline]
    pub(super) fn dispatch(&mut self, conn: ConnId, done: Done) {
        let meta = self.meta(conn);
        let owner = meta.owner;
        // A plain connection (the common case): no call into the transport layer, and the
        // owner already at hand.
        if let Transport::Plain = meta.transport {
            return self.deliver_to(owner, conn, done);
        }
        let meta = &mut self.conns[conn as usize];
        let Some(done) = meta
            .transport
            .complete(&mut self.engine, &mut self.toxics, conn, done)
        else {
            return self.consumed(owner, conn);
        };
        self.deliver(conn, done);
    }

    /// A completion was consumed below the session (TLS records, a PROXY header, a toxic
    /// holding it), which may still have news for it.
    pub(super) fn consumed(&mut self, owner: Owner, conn: ConnId) {
        if let Owner::Session(key, side) = owner {
            let key = key as usize;
            self.transport_news(key, side, conn);
            self.drive(key);
        }
    }

    /// Hands a completion (past the transport) to the connection's owner.
    pub(super) fn deliver(&mut self, conn: ConnId, done: Done) {
        let owner = self.meta(conn).owner;
        self.deliver_to(owner, conn, done)
    }

    /// [`Worker::deliver`] to `owner`, the connection's owner.
    fn deliver_to(&mut self, owner: Owner, conn: ConnId, done: Done) {
        match owner {
            Owner::Session(key, side) => {
                let key = key as usize;
                let Some(e) = self.sessions.get_mut(key) else {
                    let (pool, pipes) = self.engine.pools();
                    return recycle(done, pool, pipes);
                };
                let mut cx = cx!(self);
                e.session.complete(side, done, &mut cx);
                self.transport_news(key, side, conn);
                self.drive(key);
            }
            Owner::Mirror(mk) => self.mirror_complete(mk as usize, done),
            Owner::Pooled(_) => {
                // The watch fired: the backend closed the idle connection, or sent bytes it
                // should not have. Either way it is no longer reusable.
                let (pool, pipes) = self.engine.pools();
                recycle(done, pool, pipes);
                self.drop_pooled(conn);
            }
            Owner::None => {
                let (pool, pipes) = self.engine.pools();
                recycle(done, pool, pipes);
            }
        }
    }
}
