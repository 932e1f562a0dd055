//! The L4 session: a full-duplex byte pipe between a client (downstream) and a backend
//! (upstream), as two [`Flow`]s.
//!
//! While the upstream connects, what the client already sent is read (one buffer) and held.
//! A failed connect is the worker's to retry on the next backend ([`Up::Failed`]). Once
//! connected, both flows run at once; a FIN in one direction is passed on when that
//! direction has drained, and the session ends when both directions are shut. A broken
//! connection on either side ends it at once, resetting the other side.
//!
//! HOT PATH. No allocation, lock, blocking call or log.

use super::flow::{End, Flow};
use super::{CloseReason, Cx, Side, Signal, Target, Up, Want};
use crate::engine::{ConnId, Done, Op};
use crate::io::Xfer;
use crate::snapshot::Snapshot;
use crate::stats::FooCounts;
use std::sync::Arc;
use std::time::Instant;

/// Ops handed out per [`TcpSession::next`] round before yielding to other sessions.
pub const MAX_OPS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for an upstream, or for its non-blocking connect to finish.
    Connecting,
    Streaming,
}

pub struct TcpSession {
    pub downstream: ConnId,
    pub upstream: Option<ConnId>,
    pub phase: Phase,
    /// Downstream → upstream.
    up: Flow,
    /// Upstream → downstream.
    down: Flow,
    /// The routing state this connection started with; it keeps its backend list even if a
    /// newer snapshot is published meanwhile.
    pub snapshot: Arc<Snapshot>,
    pub listener: u32,
    pub target: Target,
    pub last_active: Instant,
    /// Bulk flows may bypass user space (false when an analyzer must see the bytes).
    splice_ok: bool,
    /// Something for the worker, said at the next `next`.
    pending: Option<Signal>,
    /// Ops handed out since the worker last found the session idle (fairness bound).
    ops: u32,
    /// The client's address is still to come (a PROXY header): no upstream until then.
    awaiting_client: bool,
    /// Some of the client's bytes went upstream (before the last [`TcpSession::take_moved`]).
    sent_up: bool,
}

impl TcpSession {
    pub fn new(
        downstream: ConnId,
        snapshot: Arc<Snapshot>,
        listener: u32,
        target: Target,
        splice_ok: bool,
        now: Instant,
    ) -> TcpSession {
        TcpSession {
            downstream,
            upstream: None,
            phase: Phase::Connecting,
            up: Flow::default(),
            down: Flow::default(),
            snapshot,
            listener,
            target,
            last_active: now,
            splice_ok,
            pending: Some(Signal::Upstream(Up::Need)),
            ops: 0,
            awaiting_client: false,
            sent_up: false,
        }
    }

    /// The client's address comes in a PROXY header: the upstream waits for it (what the
    /// client sends meanwhile is read and held).
    pub fn wait_for_client(&mut self) {
        self.awaiting_client = true;
        self.pending = None;
    }

    /// The client is known: its PROXY header was read, its handshake is done (`hash`: the
    /// balancing key from the address it carried).
    pub fn client_known(&mut self, hash: Option<u64>, now: Instant) {
        if self.awaiting_client {
            self.awaiting_client = false;
            self.target.hash = hash;
            self.target.started = now;
            if self.pending.is_none() {
                self.pending = Some(Signal::Upstream(Up::Need));
            }
        }
    }

    /// Bytes must pass through user space (a TLS connection on either side).
    pub fn no_splice(&mut self) {
        self.splice_ok = false;
    }

    /// Turns the Foo analyzer on for both directions (and splicing off).
    pub fn sniff_foo(&mut self) {
        self.splice_ok = false;
        self.up.sniff = Some(Box::default());
        self.down.sniff = Some(Box::default());
    }

    /// Moves the Foo message counts seen so far into `into`.
    #[inline]
    pub fn take_foo(&mut self, into: &mut FooCounts) {
        for f in [&mut self.up, &mut self.down] {
            if let Some(sn) = f.sniff.as_mut() {
                sn.counts.drain_into(into);
            }
        }
    }

    /// Bytes moved (downstream → upstream, upstream → downstream) and pipes taken since the
    /// last call.
    #[inline]
    pub fn take_moved(&mut self) -> (u64, u64, u32) {
        let r = (
            self.up.moved,
            self.down.moved,
            u32::from(self.up.splice_starts) + u32::from(self.down.splice_starts),
        );
        self.sent_up |= self.up.moved > 0;
        self.up.moved = 0;
        self.down.moved = 0;
        self.up.splice_starts = 0;
        self.down.splice_starts = 0;
        r
    }

    /// Bytes moved (downstream → upstream, upstream → downstream) since the last
    /// [`TcpSession::take_moved`].
    pub fn moved_pending(&self) -> (u64, u64) {
        (self.up.moved, self.down.moved)
    }

    /// A new upstream connect started (the previous upstream, if any, is the worker's).
    pub fn set_upstream(&mut self, conn: ConnId, backend: u32, now: Instant) {
        self.upstream = Some(conn);
        self.target.backend = Some(backend);
        self.target.started = now;
        self.phase = Phase::Connecting;
    }

    pub fn take_upstream(&mut self) -> Option<ConnId> {
        self.upstream.take()
    }

    /// No backend could be reached.
    pub fn no_upstream(&mut self) {
        self.pending = Some(Signal::Close(CloseReason::NoUpstream));
    }

    /// When this session's current timeout expires.
    #[inline]
    pub fn deadline(&self) -> Instant {
        match self.phase {
            // The client connection's own deadline (a PROXY header, a handshake) runs.
            Phase::Connecting if self.awaiting_client => {
                self.last_active + crate::config::defaults::IDLE_TIMEOUT
            }
            Phase::Connecting => {
                let t = self
                    .snapshot
                    .clusters
                    .get(self.target.cluster as usize)
                    .map_or(crate::config::defaults::CONNECT_TIMEOUT, |c| {
                        c.connect_timeout
                    });
                self.target.started + t
            }
            Phase::Streaming => {
                self.last_active
                    + self
                        .snapshot
                        .listener(self.listener as usize)
                        .map_or(crate::config::defaults::IDLE_TIMEOUT, |l| l.idle_timeout)
            }
        }
    }

    pub fn timed_out(&mut self, cx: &mut Cx<'_>) {
        self.pending = Some(match self.phase {
            Phase::Connecting => {
                cx.conns.connect_timeouts += 1;
                if self.upstream.is_none() {
                    // Waited a whole connect timeout for a descriptor or a connection slot.
                    Signal::Close(CloseReason::NoUpstream)
                } else {
                    Signal::Upstream(Up::Failed)
                }
            }
            Phase::Streaming => {
                cx.conns.idle_timeouts += 1;
                Signal::Close(CloseReason::Timeout)
            }
        });
    }

    pub fn next(&mut self, cx: &mut Cx<'_>) -> Want {
        if let Some(w) = self.pending.take() {
            return w.into();
        }
        if self.ops >= MAX_OPS {
            self.ops = 0;
            return Want::Yield;
        }
        let streaming = self.phase == Phase::Streaming;
        let pipes = self.splice_ok.then_some(&mut *cx.pipes);
        let up = self.upstream.filter(|_| streaming);
        if let Some((end, op)) = self.up.next(cx.pool, pipes, up) {
            self.ops += 1;
            let side = match end {
                End::Source => Side::Downstream,
                End::Destination => Side::Upstream,
            };
            // Until the client's first bytes went upstream, reading them is new work: it
            // waits while the buffer pool is down to its reserve.
            let op = match op {
                Op::Recv(None) if !self.sent_up && self.up.moved == 0 => Op::RecvNew,
                op => op,
            };
            return Want::Io(side, op);
        }
        if streaming {
            let pipes = self.splice_ok.then_some(&mut *cx.pipes);
            if let Some((end, op)) = self.down.next(cx.pool, pipes, Some(self.downstream)) {
                self.ops += 1;
                let side = match end {
                    End::Source => Side::Upstream,
                    End::Destination => Side::Downstream,
                };
                return Want::Io(side, op);
            }
            if self.up.finished() && self.down.finished() {
                return Want::Close(CloseReason::Done);
            }
        }
        self.ops = 0;
        Want::Idle
    }

    pub fn complete(&mut self, side: Side, done: Done, cx: &mut Cx<'_>) {
        if let Done::Connect(res) = done {
            if side == Side::Upstream && self.phase == Phase::Connecting {
                self.pending = Some(match res {
                    Xfer::Failed(_) => {
                        cx.conns.connect_failed += 1;
                        Signal::Upstream(Up::Failed)
                    }
                    _ => {
                        self.phase = Phase::Streaming;
                        self.last_active = cx.now;
                        Signal::Upstream(Up::Connected)
                    }
                });
            }
            return;
        }
        let read_slot = matches!(
            done,
            Done::Recv { .. } | Done::SpliceIn { .. } | Done::Readable(_)
        );
        // Reads on a side feed the flow leaving it; writes, the flow arriving at it.
        let (flow, reverse) = match (side, read_slot) {
            (Side::Downstream, true) | (Side::Upstream, false) => (&mut self.up, false),
            (Side::Upstream, true) | (Side::Downstream, false) => (&mut self.down, true),
        };
        match flow.complete(done, cx.pool, cx.pipes) {
            Ok(()) => self.last_active = cx.now,
            Err(end) => {
                // The side whose connection broke: the source or destination of that flow.
                let broken = match (end, reverse) {
                    (End::Source, false) | (End::Destination, true) => Side::Downstream,
                    (End::Source, true) | (End::Destination, false) => Side::Upstream,
                };
                if self.pending.is_none() || broken == Side::Downstream {
                    self.pending = Some(Signal::Close(match broken {
                        Side::Downstream => CloseReason::DownstreamReset,
                        Side::Upstream => CloseReason::UpstreamReset,
                    }));
                }
            }
        }
    }

    /// Returns what the flows hold (outside in-flight ops) to the pools.
    pub fn release(&mut self, cx: &mut Cx<'_>) {
        self.up.release(cx.pool, cx.pipes);
        self.down.release(cx.pool, cx.pipes);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn session(kit: &mut Kit) -> TcpSession {
        TcpSession::new(
            1,
            kit.snapshot(),
            0,
            Target::new(0, None, kit.now),
            true,
            kit.now,
        )
    }

    fn connect(kit: &mut Kit, s: &mut TcpSession) {
        assert!(matches!(run(kit, s), Want::Upstream(Up::Need)));
        s.set_upstream(2, 0, kit.now);
        assert!(matches!(run(kit, s), Want::Idle), "waits for the connect");
        let mut cx = kit.cx();
        s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
        assert!(matches!(run(kit, s), Want::Upstream(Up::Connected)));
    }

    #[test]
    fn bytes_cross_both_ways_split_at_every_read() {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        kit.downstream.incoming(b"early bytes ");
        connect(&mut kit, &mut s);
        kit.downstream.incoming(b"then more");
        kit.upstream.incoming(b"reply");
        assert!(matches!(run(&mut kit, &mut s), Want::Idle));
        assert_eq!(kit.upstream.sent(), b"early bytes then more");
        assert_eq!(kit.downstream.sent(), b"reply");
        assert_eq!(kit.pool.in_use(), 0, "idle: no buffer held");
    }

    #[test]
    fn half_close_each_way_then_done() {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        connect(&mut kit, &mut s);
        kit.downstream.incoming(b"request");
        kit.downstream.eof();
        assert!(matches!(run(&mut kit, &mut s), Want::Idle));
        assert_eq!(kit.upstream.sent(), b"request");
        assert!(kit.upstream.shut(), "the client's FIN passed on");
        assert!(!kit.downstream.shut(), "the other direction still flows");
        kit.upstream.incoming(b"response");
        kit.upstream.eof();
        assert!(matches!(
            run(&mut kit, &mut s),
            Want::Close(CloseReason::Done)
        ));
        assert_eq!(kit.downstream.sent(), b"response");
        assert!(kit.downstream.shut());
    }

    #[test]
    fn a_reset_on_either_side_names_that_side() {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        connect(&mut kit, &mut s);
        kit.upstream.reset();
        assert!(matches!(
            run(&mut kit, &mut s),
            Want::Close(CloseReason::UpstreamReset)
        ));
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        connect(&mut kit, &mut s);
        kit.downstream.reset();
        assert!(matches!(
            run(&mut kit, &mut s),
            Want::Close(CloseReason::DownstreamReset)
        ));
    }

    #[test]
    fn back_pressure_stops_reading_while_the_destination_is_full() {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        connect(&mut kit, &mut s);
        kit.upstream.window(0);
        kit.downstream.incoming(&[b'x'; 5000]);
        assert!(matches!(run(&mut kit, &mut s), Want::Idle));
        assert!(kit.upstream.sent().is_empty());
        assert!(
            kit.downstream.unread() > 0,
            "reading stopped: the rest waits in the client's socket"
        );
        assert_eq!(kit.pool.in_use(), 1, "one buffer, held by the waiting send");
        kit.upstream.window(usize::MAX);
        assert!(matches!(run(&mut kit, &mut s), Want::Idle));
        assert_eq!(kit.upstream.sent().len(), 5000);
        assert_eq!(kit.pool.in_use(), 0);
    }

    #[test]
    fn connect_failure_and_timeouts_go_to_the_worker() {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        assert!(matches!(run(&mut kit, &mut s), Want::Upstream(Up::Need)));
        s.set_upstream(2, 0, kit.now);
        let mut cx = kit.cx();
        s.complete(
            Side::Upstream,
            Done::Connect(Xfer::Failed(libc::ECONNREFUSED)),
            &mut cx,
        );
        assert!(matches!(run(&mut kit, &mut s), Want::Upstream(Up::Failed)));
        assert_eq!(kit.conns.connect_failed, 1);
        let mut cx = kit.cx();
        s.timed_out(&mut cx);
        assert!(matches!(run(&mut kit, &mut s), Want::Upstream(Up::Failed)));
        assert_eq!(kit.conns.connect_timeouts, 1);
        let _ = s.take_upstream();
        let mut cx = kit.cx();
        s.timed_out(&mut cx);
        assert!(matches!(
            run(&mut kit, &mut s),
            Want::Close(CloseReason::NoUpstream)
        ));
    }

    #[test]
    fn foo_bytes_are_counted_and_never_spliced() {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        s.sniff_foo();
        connect(&mut kit, &mut s);
        kit.downstream.incoming(b"REQ 1 a\nRE");
        assert!(matches!(run(&mut kit, &mut s), Want::Idle));
        kit.downstream.incoming(b"Q 2 b\n");
        kit.upstream.incoming(b"ACK 1 a\nNAK 2 b\n");
        assert!(matches!(run(&mut kit, &mut s), Want::Idle));
        let mut counts = FooCounts::default();
        s.take_foo(&mut counts);
        assert_eq!((counts.req, counts.ack, counts.nak), (2, 1, 1));
        assert!(!kit.ops.contains(&"splice_in"));
    }
}
