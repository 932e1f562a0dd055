//! Completions to their owners: the session (and side) that owns the connection, or the
//! upstream pool. HOT PATH: one table lookup per completion.

use super::{cx, Owner, Worker};
use crate::engine::{recycle, ConnId, Done, Engine};

impl<E: Engine> Worker<E> {
    /// An op of connection `conn` completed.
    pub(super) fn dispatch(&mut self, conn: ConnId, done: Done) {
        let meta = self.meta(conn);
        let Some(done) = meta.transport.complete(done) else {
            return;
        };
        match meta.owner {
            Owner::Session(key, side) => {
                let Some(e) = self.sessions.get_mut(key) else {
                    let (pool, pipes) = self.engine.pools();
                    return recycle(done, pool, pipes);
                };
                let mut cx = cx!(self);
                e.session.complete(side, done, &mut cx);
                self.drive(key);
            }
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
