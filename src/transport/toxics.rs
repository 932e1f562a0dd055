//! L4 fault toxics in the transport seam: toxiproxy's toxics on a connection, by shaping the
//! ops that write to it. Each connection under toxics shapes the data *leaving* it: the
//! client connection the `downstream` stream (backend → client), the backend connection the
//! `upstream` stream. Reads pass through untouched; the session's own back-pressure (one
//! buffer per direction) does the rest.
//!
//! - `latency`/`jitter`: a write is held `latency ± jitter` ms before it reaches the engine;
//! - `bandwidth`: a write carries at most 100 ms worth of bytes, and the next one waits
//!   until the bytes sent so far fit the rate;
//! - `slicer`: a write carries one slice (`average_size ± size_variation` bytes) and the next
//!   waits `delay` µs. Shortened writes come back as partial sends, which every session
//!   already handles by sending the rest;
//! - `limit_data`: writes are cut at the limit, then that direction is closed (FIN), as
//!   toxiproxy closes the link; what follows is held;
//! - `timeout`: writes are held (nothing gets through); the connection closes after the
//!   timeout (0: never);
//! - `reset_peer`: the first write is held, and `timeout` ms later the connection is reset;
//! - `slow_close`: the FIN, and the close, wait `delay` ms.
//!
//! Toxics are drawn per connection (`toxicity`) from a per-worker xorshift generator when the
//! connection is handed to a session, and again whenever its listener's toxic set changes
//! (the set is read through a shared [`ToxicCell`], so live connections follow changes, as
//! they do in toxiproxy). Timers are the table's own min-heap of exact instants; the worker
//! polls no longer than the next one and calls [`Toxics::fire`].
//!
//! Toxics sit under TLS and the PROXY protocol (see [`super::ToxicWire`]): on a TLS or PROXY
//! connection they shape the records, handshake traffic and header bytes as they go to the
//! socket, as toxiproxy in front of such a connection would.
//!
//! Because the toxics act on ops and completions, not sockets, they work on every engine.
//! HOT PATH (for connections under toxics only; the others never come here): no allocation
//! beyond table growth, no lock, no log.

use crate::engine::{recycle_op, ConnId, Done, Engine, Linger, Op, Slot};
use crate::faults::{Stream, ToxicCell, ToxicKind, MAX_TOXICS};
use crate::io::Xfer;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection's entry in [`Toxics`].
pub type ToxicId = u32;

/// Timer entries handled per [`Toxics::fire`] call (the rest wait for the next turn).
const FIRE_BATCH: usize = 1024;
/// How often a write held by `timeout`, `reset_peer` or `limit_data` looks whether its
/// toxics changed (a toxic removed lets it through on the same connection).
const RECHECK: Duration = Duration::from_millis(50);

/// What a timer asks the worker to do.
#[derive(Debug)]
pub enum Fired {
    /// A held op ran and completed at once: hand it to the connection's owner.
    Deliver(ConnId, Done),
    /// Close the session that owns `conn`, with this linger on `conn` (limit_data, timeout:
    /// graceful; reset_peer: reset).
    Close(ConnId, Linger),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Submit the held write op.
    Release,
    /// A write held until the toxics change: look again.
    Recheck,
    /// Close the connection (graceful).
    Close,
    /// Reset the connection.
    Reset,
    /// The deferred close of a `slow_close` connection: close the socket now.
    EngineClose,
    /// `limit_data` reached: shut the sending side (FIN), as toxiproxy closes that direction.
    Shutdown,
}

/// The combined effect of a connection's active toxics.
#[derive(Debug, Default, Clone, Copy)]
struct Effect {
    latency: u64,
    jitter: u64,
    /// Bytes per millisecond (KB/s); 0: none.
    rate: u64,
    slicer: Option<(u64, u64, u64)>,
    limit: Option<u64>,
    timeout: Option<u64>,
    reset: Option<u64>,
    slow_close: u64,
}

struct ToxicConn {
    conn: ConnId,
    stream: Stream,
    cell: Arc<ToxicCell>,
    /// The set generation the effect was drawn for.
    set_gen: u64,
    fx: Effect,
    /// Bytes still allowed by `limit_data`.
    limit_left: u64,
    /// The next write may not start before this (bandwidth, slicer).
    next_at: Instant,
    /// A write held by the toxics, and when it goes (`None`: held until closed).
    held: Option<Op>,
    /// Timer sequence numbers of the entries that are current (older ones are stale).
    release_seq: u32,
    close_seq: u32,
    reset_armed: bool,
    /// The close is deferred (`slow_close`): the socket closes when the timer fires.
    closing: Option<Linger>,
    /// A shutdown of our own (`limit_data`) is in flight: its completion is not the session's.
    own_shutdown: bool,
}

/// Per-worker table of connections under toxics, with their timers.
pub struct Toxics {
    conns: Slab<ToxicConn>,
    heap: BinaryHeap<Reverse<(Instant, u32, ToxicId, TimerKind)>>,
    seq: u32,
    rng: u64,
    /// Toxics applied to connections, by kind (`ToxicKind::index`), since the worker last
    /// took them.
    pub applied: [u64; 7],
}

impl Toxics {
    pub fn new(seed: u64) -> Toxics {
        Toxics {
            conns: Slab::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            rng: seed,
            applied: [0; 7],
        }
    }

    /// No connection under toxics and no timer: the worker has nothing to call.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.heap.is_empty() && self.conns.is_empty()
    }

    /// When the next timer is due.
    #[inline]
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::faults::mix(self.rng)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Puts connection `conn` under the toxics of `cell` for the data leaving it on `stream`.
    pub fn open(
        &mut self,
        conn: ConnId,
        cell: Arc<ToxicCell>,
        stream: Stream,
        now: Instant,
    ) -> ToxicId {
        let id = self.conns.insert(ToxicConn {
            conn,
            stream,
            cell,
            set_gen: u64::MAX,
            fx: Effect::default(),
            limit_left: u64::MAX,
            next_at: now,
            held: None,
            release_seq: 0,
            close_seq: 0,
            reset_armed: false,
            closing: None,
            own_shutdown: false,
        }) as ToxicId;
        self.refresh(id, now);
        id
    }

    fn arm(&mut self, id: ToxicId, at: Instant, kind: TimerKind) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Reverse((at, self.seq, id, kind)));
        self.seq
    }

    /// Re-draws the connection's toxics when its listener's set changed. Returns `false`
    /// when the listener is down (the connection is to be cut).
    fn refresh(&mut self, id: ToxicId, now: Instant) -> bool {
        let Some(tc) = self.conns.get(id as usize) else {
            return true;
        };
        let set = tc.cell.set.load();
        if set.gen == tc.set_gen {
            return !set.down;
        }
        let stream = tc.stream;
        let mut fx = Effect::default();
        for t in set
            .toxics
            .iter()
            .filter(|t| t.stream == stream)
            .take(MAX_TOXICS)
        {
            if t.toxicity < 1.0 {
                let draw = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                if draw >= t.toxicity {
                    continue;
                }
            }
            self.applied[t.kind.index()] += 1;
            match t.kind {
                ToxicKind::Latency { latency, jitter } => {
                    fx.latency += latency;
                    fx.jitter += jitter;
                }
                ToxicKind::Bandwidth { rate } => {
                    fx.rate = if fx.rate == 0 {
                        rate
                    } else {
                        fx.rate.min(rate)
                    };
                }
                ToxicKind::Slicer {
                    average_size,
                    size_variation,
                    delay,
                } => {
                    if fx.slicer.is_none() {
                        fx.slicer = Some((average_size.max(1), size_variation, delay));
                    }
                }
                ToxicKind::SlowClose { delay } => fx.slow_close = fx.slow_close.max(delay),
                ToxicKind::Timeout { timeout } => {
                    fx.timeout = Some(fx.timeout.map_or(timeout, |t: u64| t.min(timeout)));
                }
                ToxicKind::ResetPeer { timeout } => {
                    fx.reset = Some(fx.reset.map_or(timeout, |t: u64| t.min(timeout)));
                }
                ToxicKind::LimitData { bytes } => {
                    fx.limit = Some(fx.limit.map_or(bytes, |b: u64| b.min(bytes)));
                }
            }
        }
        let down = set.down;
        let gen = set.gen;
        drop(set);
        let timeout = fx.timeout;
        let limit = fx.limit;
        let close_seq = match timeout {
            Some(ms) if ms > 0 => {
                Some(self.arm(id, now + Duration::from_millis(ms), TimerKind::Close))
            }
            _ => None,
        };
        let Some(tc) = self.conns.get_mut(id as usize) else {
            return true;
        };
        tc.fx = fx;
        tc.set_gen = gen;
        tc.limit_left = limit.unwrap_or(u64::MAX);
        tc.reset_armed = false;
        tc.close_seq = close_seq.unwrap_or(0);
        !down
    }

    /// A session's op on a connection under toxics. `Some` when it completed at once.
    // Out of line: the plain transport's path stays as tight as before toxics existed.
    #[cold]
    #[inline(never)]
    pub fn submit<E: Engine>(
        &mut self,
        id: ToxicId,
        engine: &mut E,
        conn: ConnId,
        op: Op,
    ) -> Option<Done> {
        let now = Instant::now();
        if !self.refresh(id, now) {
            return Some(failed(op));
        }
        let Some(tc) = self.conns.get_mut(id as usize) else {
            return engine.submit(conn, op);
        };
        let fx = tc.fx;
        let write = matches!(op, Op::Send(..) | Op::SpliceOut { .. } | Op::Shutdown);
        if !write {
            return engine.submit(conn, op);
        }
        if matches!(op, Op::Shutdown) {
            if fx.slow_close > 0 {
                tc.held = Some(op);
                let seq = self.arm(
                    id,
                    now + Duration::from_millis(fx.slow_close),
                    TimerKind::Release,
                );
                self.set_release(id, seq);
                return None;
            }
            return engine.submit(conn, op);
        }
        if fx.timeout.is_some() {
            // Nothing gets through: the write waits for the close (or the toxic's removal).
            tc.held = Some(op);
            self.hold_until_change(id, now);
            return None;
        }
        if let Some(ms) = fx.reset {
            tc.held = Some(op);
            if !tc.reset_armed {
                tc.reset_armed = true;
                let seq = self.arm(id, now + Duration::from_millis(ms), TimerKind::Reset);
                if let Some(tc) = self.conns.get_mut(id as usize) {
                    tc.close_seq = seq;
                }
            }
            self.hold_until_change(id, now);
            return None;
        }
        if fx.limit.is_some() && tc.limit_left == 0 {
            // The limit is reached; the close is on its way.
            tc.held = Some(op);
            self.hold_until_change(id, now);
            return None;
        }
        let mut at = tc.next_at.max(now);
        if fx.latency > 0 || fx.jitter > 0 {
            let mut d = fx.latency;
            if fx.jitter > 0 {
                let j = self.below(2 * fx.jitter);
                d = (d + j).saturating_sub(fx.jitter);
            }
            at = at.max(now + Duration::from_millis(d));
        }
        if at > now {
            if let Some(tc) = self.conns.get_mut(id as usize) {
                tc.held = Some(op);
            }
            let seq = self.arm(id, at, TimerKind::Release);
            self.set_release(id, seq);
            return None;
        }
        let op = self.shape(id, op);
        let done = engine.submit(conn, op)?;
        Some(self.account(id, done, now))
    }

    fn hold_until_change(&mut self, id: ToxicId, now: Instant) {
        let seq = self.arm(id, now + RECHECK, TimerKind::Recheck);
        self.set_release(id, seq);
    }

    fn set_release(&mut self, id: ToxicId, seq: u32) {
        if let Some(tc) = self.conns.get_mut(id as usize) {
            tc.release_seq = seq;
        }
    }

    /// Cuts a write to what the bandwidth, slicer and limit allow now.
    fn shape(&mut self, id: ToxicId, op: Op) -> Op {
        let Some(tc) = self.conns.get(id as usize) else {
            return op;
        };
        let fx = tc.fx;
        let mut cap = u64::MAX;
        if fx.rate > 0 {
            cap = cap.min(fx.rate * 100);
        }
        if let Some(l) = fx.limit {
            let _ = l;
            cap = cap.min(tc.limit_left);
        }
        if let Some((avg, var, _)) = fx.slicer {
            let size = if var > 0 {
                (avg + self.below(2 * var + 1)).saturating_sub(var)
            } else {
                avg
            };
            cap = cap.min(size.max(1));
        }
        let cap = cap.min(u64::from(u32::MAX)) as u32;
        match op {
            Op::Send(mut a, b) => {
                let b = b.map(|mut b| {
                    if a.len >= cap {
                        b.len = 0;
                    } else {
                        b.len = b.len.min(cap - a.len);
                    }
                    b
                });
                a.len = a.len.min(cap);
                Op::Send(a, b)
            }
            Op::SpliceOut { pipe, len } => Op::SpliceOut {
                pipe,
                len: len.min(cap),
            },
            other => other,
        }
    }

    /// Books what a write moved: the limit, and when the next write may go.
    fn account(&mut self, id: ToxicId, done: Done, now: Instant) -> Done {
        let n = match &done {
            Done::Send {
                res: Xfer::Bytes(n),
                ..
            }
            | Done::SpliceOut {
                res: Xfer::Bytes(n),
                ..
            } => u64::from(*n),
            _ => return done,
        };
        let mut close = false;
        if let Some(tc) = self.conns.get_mut(id as usize) {
            let fx = tc.fx;
            if let Some(us) = (n * 1000).checked_div(fx.rate) {
                tc.next_at = tc.next_at.max(now) + Duration::from_micros(us);
            }
            if let Some((_, _, delay)) = fx.slicer {
                tc.next_at = tc.next_at.max(now + Duration::from_micros(delay));
            }
            if fx.limit.is_some() {
                tc.limit_left = tc.limit_left.saturating_sub(n);
                close = tc.limit_left == 0;
            }
        }
        if close {
            let seq = self.arm(id, now, TimerKind::Shutdown);
            if let Some(tc) = self.conns.get_mut(id as usize) {
                tc.close_seq = seq;
            }
        }
        done
    }

    /// An engine completion on a connection under toxics, on its way to the session.
    #[cold]
    #[inline(never)]
    pub fn complete(&mut self, id: ToxicId, done: Done) -> Option<Done> {
        if let (Done::Shutdown(_), Some(tc)) = (&done, self.conns.get_mut(id as usize)) {
            if tc.own_shutdown {
                tc.own_shutdown = false;
                return None;
            }
        }
        Some(self.account(id, done, Instant::now()))
    }

    /// Cancels the op in `slot`: a write the toxics hold is given back (and its timer goes
    /// stale) instead of reaching the engine later.
    pub fn cancel<E: Engine>(&mut self, id: ToxicId, engine: &mut E, conn: ConnId, slot: Slot) {
        if slot == Slot::Write {
            if let Some(op) = self.conns.get_mut(id as usize).and_then(|tc| {
                tc.release_seq = tc.release_seq.wrapping_sub(1);
                tc.held.take()
            }) {
                let (pool, pipes) = engine.pools();
                recycle_op(op, pool, pipes);
            }
        }
        engine.cancel(conn, slot);
    }

    /// The connection closes. Returns `true` when the close is deferred (`slow_close`): the
    /// ops are cancelled now and the socket closes when the timer fires.
    pub fn close<E: Engine>(
        &mut self,
        id: ToxicId,
        engine: &mut E,
        conn: ConnId,
        linger: Linger,
    ) -> bool {
        let Some(tc) = self.conns.get_mut(id as usize) else {
            return false;
        };
        if tc.closing.is_some() {
            return true;
        }
        let held = tc.held.take();
        let delay = tc.fx.slow_close;
        if let Some(op) = held {
            let (pool, pipes) = engine.pools();
            recycle_op(op, pool, pipes);
        }
        if delay > 0 && linger == Linger::Graceful {
            tc.closing = Some(linger);
            engine.cancel(conn, Slot::Read);
            engine.cancel(conn, Slot::Write);
            self.arm(
                id,
                Instant::now() + Duration::from_millis(delay),
                TimerKind::EngineClose,
            );
            return true;
        }
        self.conns.remove(id as usize);
        false
    }

    /// Runs the timers due at `now`, appending what the worker must do to `out`.
    pub fn fire<E: Engine>(&mut self, engine: &mut E, now: Instant, out: &mut Vec<Fired>) {
        for _ in 0..FIRE_BATCH {
            match self.heap.peek() {
                Some(Reverse((at, ..))) if *at <= now => {}
                _ => return,
            }
            let Some(Reverse((_, seq, id, kind))) = self.heap.pop() else {
                return;
            };
            let Some(tc) = self.conns.get_mut(id as usize) else {
                continue;
            };
            let conn = tc.conn;
            match kind {
                TimerKind::EngineClose => {
                    if let Some(linger) = tc.closing {
                        self.conns.remove(id as usize);
                        engine.close(conn, linger);
                    }
                }
                _ if tc.closing.is_some() => {}
                TimerKind::Shutdown => {
                    if tc.close_seq != seq {
                        continue;
                    }
                    // The write slot is free: later writes are held at the limit.
                    match engine.submit(conn, Op::Shutdown) {
                        Some(_) => {}
                        None => {
                            if let Some(tc) = self.conns.get_mut(id as usize) {
                                tc.own_shutdown = true;
                            }
                        }
                    }
                }
                TimerKind::Close | TimerKind::Reset => {
                    if tc.close_seq != seq {
                        continue;
                    }
                    let linger = if kind == TimerKind::Reset {
                        Linger::Reset
                    } else {
                        Linger::Graceful
                    };
                    out.push(Fired::Close(conn, linger));
                }
                TimerKind::Recheck => {
                    if tc.release_seq != seq || tc.held.is_none() {
                        continue;
                    }
                    let set = tc.cell.set.load();
                    if set.gen == tc.set_gen && !set.down {
                        drop(set);
                        self.hold_until_change(id, now);
                        continue;
                    }
                    drop(set);
                    let Some(op) = tc.held.take() else {
                        continue;
                    };
                    if let Some(done) = self.submit(id, engine, conn, op) {
                        out.push(Fired::Deliver(conn, done));
                    }
                }
                TimerKind::Release => {
                    if tc.release_seq != seq {
                        continue;
                    }
                    let Some(op) = tc.held.take() else {
                        continue;
                    };
                    let op = if matches!(op, Op::Shutdown) {
                        op
                    } else {
                        self.shape(id, op)
                    };
                    if let Some(done) = engine.submit(conn, op) {
                        let done = self.account(id, done, now);
                        out.push(Fired::Deliver(conn, done));
                    }
                }
            }
        }
    }
}

/// The `Done` of an op on a connection that is being cut (its listener went down).
fn failed(op: Op) -> Done {
    crate::engine::failed(op, libc::ECONNRESET)
}
