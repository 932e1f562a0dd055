//! The worker's side of L4 fault toxics: putting a connection under its listener's toxics
//! when a session takes it, and acting on the toxics' timers (a held write that ran, a
//! connection to close or reset).
//!
//! HOT PATH: [`Worker::attach_toxics`] runs per connection and costs one check of the
//! listener's `toxics` when none is set; the rest runs only for connections under toxics.

use super::{Owner, Worker};
use crate::engine::{ConnId, Done, Engine, Linger};
use crate::faults::Stream;
use crate::session::{CloseReason, Side};
use crate::transport::toxics::Fired;

impl<E: Engine> Worker<E> {
    /// Connection `conn` was handed to session `key` on `side`: when the session's listener
    /// has toxics, the data leaving `conn` goes through them.
    #[inline]
    pub(super) fn attach_toxics(&mut self, conn: ConnId, key: usize, side: Side) {
        let Some(e) = self.sessions.get(key) else {
            return;
        };
        let Some(cell) = e
            .session
            .snapshot()
            .listener(e.session.listener() as usize)
            .and_then(|l| l.toxics.as_ref())
        else {
            return;
        };
        self.open_toxics(conn, cell.clone(), side);
    }

    #[cold]
    #[inline(never)]
    fn open_toxics(
        &mut self,
        conn: ConnId,
        cell: std::sync::Arc<crate::faults::ToxicCell>,
        side: Side,
    ) {
        let stream = match side {
            Side::Downstream => Stream::Downstream,
            Side::Upstream => Stream::Upstream,
        };
        // Toxics go under whatever layer the connection has (TLS, PROXY): they act on the
        // bytes on the wire.
        let id = self.toxics.open(conn, cell, stream, self.env.now);
        if let Some(old) = self.meta(conn).transport.put_under(id) {
            // Handed over again (never pooled, so only a bug gets here): start afresh.
            let _ = self
                .toxics
                .close(old, &mut self.engine, conn, Linger::Reset);
        }
    }

    /// Runs the toxics' timers that are due.
    pub(super) fn fire_toxics(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.toxics.fire(&mut self.engine, self.env.now, &mut fired);
        for f in fired.drain(..) {
            match f {
                Fired::Deliver(conn, done) => self.deliver_fired(conn, done),
                Fired::Close(conn, linger) => self.toxic_close(conn, linger),
            }
        }
        self.fired = fired;
        let applied = std::mem::take(&mut self.toxics.applied);
        let c = &mut self.env.conns;
        c.fault_latency += applied[0];
        c.fault_bandwidth += applied[1];
        c.fault_slicer += applied[2];
        c.fault_slow_close += applied[3];
        c.fault_timeout += applied[4];
        c.fault_reset_peer += applied[5];
        c.fault_limit_data += applied[6];
    }

    /// A held op ran on a toxic timer and completed at once: up through the layer over the
    /// toxics (TLS, PROXY), if any, to the connection's owner.
    fn deliver_fired(&mut self, conn: ConnId, done: Done) {
        let _ = self.meta(conn);
        let meta = &mut self.conns[conn as usize];
        let owner = meta.owner;
        match meta
            .transport
            .lift(&mut self.engine, &mut self.toxics, conn, done)
        {
            Some(done) => self.deliver(conn, done),
            None => self.consumed(owner, conn),
        }
    }

    /// A toxic closes `conn` (and so its session): gracefully, or with a reset of `conn`.
    fn toxic_close(&mut self, conn: ConnId, linger: Linger) {
        match self.meta(conn).owner {
            Owner::Session(key, side) => {
                let key = key as usize;
                // The close reason decides which side is reset: the one the toxic is on.
                let why = match (linger, side) {
                    (Linger::Graceful, _) => CloseReason::Done,
                    (Linger::Reset, Side::Downstream) => CloseReason::UpstreamReset,
                    (Linger::Reset, Side::Upstream) => CloseReason::DownstreamReset,
                };
                self.close(key, why);
            }
            Owner::Pooled(_) => self.drop_pooled(conn),
            Owner::Mirror(mk) => self.mirror_conn_closed(mk as usize, conn),
            Owner::None => self.close_conn(conn, linger),
        }
    }
}
