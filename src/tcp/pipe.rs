//! The L4 session: a full-duplex byte pipe between a client (front) and a backend (back).
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log in this file.
//!
//! Each direction is a [`Flow`]: read from its source into a pool buffer, write to its
//! destination, give the buffer back as soon as it drains. A FIN on the source becomes
//! `shutdown(Write)` on the destination once the buffered bytes are out, and the other
//! direction keeps flowing (half-close). A read or write error on one side is treated as that
//! side being reset; the worker then resets the other side (`SO_LINGER 0`) so the peer learns
//! the truth instead of a clean EOF.
//!
//! Back-pressure costs no syscalls: a direction whose buffer is full simply stops reading; the
//! kernel's socket buffers fill and TCP flow control slows the sender.
//!
//! A direction that keeps filling whole buffers is a bulk transfer: it moves to a kernel pipe
//! (`splice`, see [`super::splice`]) until it goes quiet, then back to buffers.

use crate::balance::Tried;
use crate::buffer::{Buf, BufferPool};
use crate::proto::foo::LineSniffer;
use crate::ready::Ready;
use crate::snapshot::Snapshot;
use crate::stats::{FooCounts, TcpCounters};
use crate::tcp::splice::{self, Pipe, PipePool};
use crate::token::Side;
use mio::net::TcpStream;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Instant;

/// Read/write rounds per wake-up before yielding to other sessions.
pub const MAX_ROUNDS: usize = 32;
/// Whole-buffer reads in a row that make a flow a bulk transfer worth a pipe.
const BULK_READS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the backend's non-blocking connect to finish.
    Connecting,
    Streaming,
}

/// What the worker must do after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing more to do until the next event.
    Idle,
    /// The round bound was hit with work left: queue me again.
    Yield,
    /// Blocked on an empty buffer pool: wake me when buffers return.
    WaitBuffer,
    /// The backend connect failed: try another backend or give up.
    ConnectFailed,
    /// The backend connect completed (the idle timer now applies).
    Connected,
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished cleanly.
    Done,
    ClientReset,
    BackendReset,
}

/// Everything a pump borrows from its worker.
pub struct Ctx<'a> {
    pub pool: &'a mut BufferPool,
    pub pipes: &'a mut PipePool,
    pub stats: &'a mut TcpCounters,
    pub now: Instant,
}

/// One direction of the pipe.
#[derive(Debug, Default)]
pub struct Flow {
    buf: Option<Buf>,
    /// The source sent FIN.
    eof: bool,
    /// FIN passed on: the destination's write side is shut.
    shut: bool,
    /// Whole-buffer reads in a row (bulk detection).
    full_reads: u8,
    /// Present while the flow is spliced; `piped` bytes sit in it.
    pipe: Option<Pipe>,
    piped: usize,
    /// Foo sessions: the analyzer sees every byte read (such flows never splice).
    sniff: Option<LineSniffer>,
}

impl Flow {
    /// A flow that starts with bytes already buffered (an HTTP session turning into a tunnel).
    pub(crate) fn with_buf(buf: Option<Buf>, pool: &mut BufferPool) -> Flow {
        let buf = match buf {
            Some(b) if b.is_empty() => {
                pool.release(b);
                None
            }
            other => other,
        };
        Flow {
            buf,
            ..Flow::default()
        }
    }

    /// Releases the buffer of a flow that never splices (HTTP tunnels).
    pub(crate) fn release_buf(&mut self, pool: &mut BufferPool) {
        if let Some(b) = self.buf.take() {
            pool.release(b);
        }
    }

    /// Both directions use this to tell when the tunnel is over.
    pub(crate) fn finished(&self) -> bool {
        self.shut
    }

    pub(crate) fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        if let Some(b) = self.buf.take() {
            pool.release(b);
        }
        if let Some(p) = self.pipe.take() {
            if self.piped == 0 {
                pipes.put(p);
            } else {
                pipes.discard(p);
            }
        }
    }

    /// Nothing buffered anywhere: a FIN may be passed on.
    #[inline]
    fn drained(&self) -> bool {
        self.buf.is_none() && self.piped == 0
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Moved {
    pub(crate) progressed: bool,
    pub(crate) starved: bool,
    /// The flow moved to a pipe this round.
    pub(crate) spliced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    Source,
    Destination,
}

/// Moves what it can from `src` to `dst` for one round. `pipes` is `None` when this session
/// must see its bytes (analyzers) and so may not splice.
pub(crate) fn flow_round(
    flow: &mut Flow,
    src: &mut TcpStream,
    src_ready: &mut Ready,
    dst: Option<(&mut TcpStream, &mut Ready)>,
    pool: &mut BufferPool,
    pipes: Option<&mut PipePool>,
    bytes: &mut u64,
) -> Result<Moved, Broken> {
    if flow.pipe.is_some() {
        if let (Some(pipes), Some(dst)) = (pipes, dst) {
            return splice_round(flow, src, src_ready, dst, pipes, bytes);
        }
        return Ok(Moved::default());
    }
    let mut m = Moved::default();
    // 1. Read while the source is readable and there is room.
    if !flow.eof && src_ready.contains(Ready::READABLE) {
        let room = flow
            .buf
            .as_ref()
            .is_none_or(|b| b.len() < pool.buffer_size());
        if room && flow.buf.is_none() {
            flow.buf = pool.checkout();
            m.starved = flow.buf.is_none();
        }
        if let (true, Some(b)) = (room, flow.buf.as_mut()) {
            let spare = pool.spare(b);
            let want = spare.len();
            match src.read(spare) {
                Ok(0) => {
                    flow.eof = true;
                    m.progressed = true;
                }
                Ok(n) => {
                    b.fill(n);
                    if let Some(sn) = flow.sniff.as_mut() {
                        let d = pool.data(b);
                        sn.feed(&d[d.len().saturating_sub(n)..]);
                    }
                    m.progressed = true;
                    flow.full_reads = if n == want {
                        flow.full_reads.saturating_add(1)
                    } else {
                        0
                    };
                    if n < want && !src_ready.contains(Ready::HUP) {
                        // Linux TCP: a short read drained the queue; new data raises a new edge.
                        // Not so after a hang-up: the EOF/error is still to be read.
                        src_ready.remove(Ready::READABLE);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => src_ready.remove(Ready::READABLE),
                Err(e) if e.kind() == ErrorKind::Interrupted => m.progressed = true,
                Err(_) => return Err(Broken::Source),
            }
        }
    }
    // 2. Write what is pending.
    let mut dst = dst;
    if let (Some(b), Some((sock, ready))) = (flow.buf.as_mut(), dst.as_mut()) {
        if !b.is_empty() && ready.contains(Ready::WRITABLE) {
            let data = pool.data(b);
            let want = data.len();
            match sock.write(data) {
                Ok(n) => {
                    b.consume(n);
                    *bytes += n as u64;
                    m.progressed |= n > 0;
                    if n < want {
                        ready.remove(Ready::WRITABLE);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => ready.remove(Ready::WRITABLE),
                Err(e) if e.kind() == ErrorKind::Interrupted => m.progressed = true,
                Err(_) => return Err(Broken::Destination),
            }
        }
    }
    // 3. An empty buffer goes straight back: idle connections hold none.
    if flow.buf.as_ref().is_some_and(Buf::is_empty) {
        if let Some(b) = flow.buf.take() {
            pool.release(b);
        }
        // A bulk transfer between two drained states: hand it to a pipe if one is free.
        if flow.full_reads >= BULK_READS && !flow.eof && dst.is_some() {
            if let Some(p) = pipes.and_then(PipePool::get) {
                flow.pipe = Some(p);
                flow.full_reads = 0;
                m.spliced = true;
            }
        }
    }
    // 4. Pass the FIN on once everything before it is out.
    if flow.eof && !flow.shut && flow.drained() {
        if let Some((sock, _)) = dst {
            // ENOTCONN and friends: the destination is already gone.
            if sock.shutdown(Shutdown::Write).is_err() {
                return Err(Broken::Destination);
            }
            flow.shut = true;
            m.progressed = true;
        }
    }
    Ok(m)
}

/// One round of a spliced flow: socket → pipe → socket, no copy through user space.
fn splice_round(
    flow: &mut Flow,
    src: &mut TcpStream,
    src_ready: &mut Ready,
    (dst, dst_ready): (&mut TcpStream, &mut Ready),
    pipes: &mut PipePool,
    bytes: &mut u64,
) -> Result<Moved, Broken> {
    let mut m = Moved::default();
    let Some(pipe) = flow.pipe.as_ref() else {
        return Ok(m);
    };
    let mut source_dry = false;
    if !flow.eof && src_ready.contains(Ready::READABLE) && flow.piped < pipe.capacity {
        match splice::fill(&*src, pipe, pipe.capacity - flow.piped) {
            Ok(0) => {
                flow.eof = true;
                m.progressed = true;
            }
            Ok(n) => {
                flow.piped += n;
                m.progressed = true;
            }
            // With bytes in the pipe, EAGAIN may mean "pipe full"; only an empty pipe proves
            // the socket is dry.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if flow.piped == 0 {
                    src_ready.remove(Ready::READABLE);
                    source_dry = true;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => m.progressed = true,
            Err(_) => return Err(Broken::Source),
        }
    }
    if flow.piped > 0 && dst_ready.contains(Ready::WRITABLE) {
        match splice::drain(pipe, &*dst, flow.piped) {
            Ok(n) => {
                if n < flow.piped {
                    dst_ready.remove(Ready::WRITABLE);
                }
                flow.piped -= n;
                *bytes += n as u64;
                m.progressed |= n > 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => dst_ready.remove(Ready::WRITABLE),
            Err(e) if e.kind() == ErrorKind::Interrupted => m.progressed = true,
            Err(_) => return Err(Broken::Destination),
        }
    }
    // Quiet and empty: back to buffers, and the pipe back to the pool.
    if flow.piped == 0 && (source_dry || flow.eof) {
        if let Some(p) = flow.pipe.take() {
            pipes.put(p);
        }
    }
    if flow.eof && !flow.shut && flow.drained() {
        if dst.shutdown(Shutdown::Write).is_err() {
            return Err(Broken::Destination);
        }
        flow.shut = true;
        m.progressed = true;
    }
    Ok(m)
}

/// Whether a non-blocking connect on `back` has finished: `Ok(true)` connected (TCP_NODELAY
/// set), `Ok(false)` still in progress (or no event yet), `Err` failed. Shared by the TCP and
/// HTTP sessions.
pub(crate) fn connect_result(back: &TcpStream, ready: &mut Ready) -> io::Result<bool> {
    if *ready == Ready::EMPTY {
        return Ok(false);
    }
    if let Some(e) = back.take_error()? {
        return Err(e);
    }
    match back.peer_addr() {
        Ok(_) => {
            back.set_nodelay(true)?;
            Ok(true)
        }
        // Spurious wake-up: still in progress.
        Err(e) if e.kind() == ErrorKind::NotConnected => {
            *ready = Ready::EMPTY;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

pub struct TcpSession {
    pub front: TcpStream,
    pub back: Option<TcpStream>,
    front_ready: Ready,
    back_ready: Ready,
    up: Flow,
    down: Flow,
    pub phase: Phase,
    /// The routing state this connection started with; it keeps its backend list even if a
    /// newer snapshot is published meanwhile.
    pub snapshot: Arc<Snapshot>,
    pub listener: u32,
    pub cluster: u32,
    /// Index of the current backend in `snapshot.clusters[cluster].backends`.
    pub backend: Option<u32>,
    pub tried: Tried,
    pub attempts: u32,
    pub last_active: Instant,
    pub connect_started: Instant,
    /// Generation of the armed timer entry; entries with another generation are stale.
    pub timer_gen: u32,
    /// Already in the worker's ready queue or buffer-wait queue.
    pub queued: bool,
    /// Bulk flows may bypass user space (false when an analyzer must see the bytes).
    pub splice_ok: bool,
    /// `hash_ip(client address)` when the cluster hashes on the client IP (set at accept).
    pub client_hash: Option<u64>,
}

impl TcpSession {
    pub fn new(
        front: TcpStream,
        snapshot: Arc<Snapshot>,
        listener: u32,
        cluster: u32,
        now: Instant,
    ) -> TcpSession {
        TcpSession {
            front,
            back: None,
            front_ready: Ready::EMPTY,
            back_ready: Ready::EMPTY,
            up: Flow::default(),
            down: Flow::default(),
            phase: Phase::Connecting,
            snapshot,
            listener,
            cluster,
            backend: None,
            tried: Tried::default(),
            attempts: 0,
            last_active: now,
            connect_started: now,
            timer_gen: 0,
            queued: false,
            splice_ok: true,
            client_hash: None,
        }
    }

    #[inline]
    pub fn on_event(&mut self, side: Side, r: Ready) {
        match side {
            Side::Front => self.front_ready.insert(r),
            Side::Back => self.back_ready.insert(r),
        }
    }

    /// Starts a new connect attempt on `back` (the previous backend socket, if any, is closed).
    pub fn set_backend(&mut self, idx: u32, back: TcpStream, now: Instant) {
        self.back = Some(back);
        self.backend = Some(idx);
        self.back_ready = Ready::EMPTY;
        self.phase = Phase::Connecting;
        self.connect_started = now;
    }

    /// When this session's current timeout expires.
    #[inline]
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Connecting => {
                self.connect_started + self.snapshot.clusters[self.cluster as usize].connect_timeout
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

    /// Turns the Foo analyzer on for both directions (and splicing off).
    pub fn sniff_foo(&mut self) {
        self.splice_ok = false;
        self.up.sniff = Some(LineSniffer::default());
        self.down.sniff = Some(LineSniffer::default());
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

    /// Returns the buffers and pipes this session holds to their pools.
    pub fn release_resources(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        self.up.release(pool, pipes);
        self.down.release(pool, pipes);
    }

    fn check_connect(&mut self) -> io::Result<bool> {
        match self.back.as_ref() {
            Some(back) => connect_result(back, &mut self.back_ready),
            None => Ok(false),
        }
    }

    /// Moves bytes both ways until nothing more can happen now.
    pub fn pump(&mut self, cx: &mut Ctx<'_>) -> Step {
        if self.phase == Phase::Connecting {
            match self.check_connect() {
                Ok(true) => {
                    self.phase = Phase::Streaming;
                    self.last_active = cx.now;
                    return Step::Connected;
                }
                Ok(false) => {}
                Err(_) => return Step::ConnectFailed,
            }
        }
        let streaming = self.phase == Phase::Streaming;
        for _ in 0..MAX_ROUNDS {
            let back = if streaming { self.back.as_mut() } else { None };
            let up = flow_round(
                &mut self.up,
                &mut self.front,
                &mut self.front_ready,
                back.map(|b| (b, &mut self.back_ready)),
                cx.pool,
                self.splice_ok.then_some(&mut *cx.pipes),
                &mut cx.stats.bytes_client_to_backend,
            );
            let up = match up {
                Ok(m) => m,
                Err(Broken::Source) => return Step::Close(CloseReason::ClientReset),
                Err(Broken::Destination) => return Step::Close(CloseReason::BackendReset),
            };
            let mut down = Moved::default();
            if streaming {
                if let Some(back) = self.back.as_mut() {
                    down = match flow_round(
                        &mut self.down,
                        back,
                        &mut self.back_ready,
                        Some((&mut self.front, &mut self.front_ready)),
                        cx.pool,
                        self.splice_ok.then_some(&mut *cx.pipes),
                        &mut cx.stats.bytes_backend_to_client,
                    ) {
                        Ok(m) => m,
                        Err(Broken::Source) => return Step::Close(CloseReason::BackendReset),
                        Err(Broken::Destination) => return Step::Close(CloseReason::ClientReset),
                    };
                }
            }
            if up.progressed || down.progressed {
                self.last_active = cx.now;
            }
            cx.stats.splice_starts += u64::from(up.spliced) + u64::from(down.spliced);
            if self.up.shut && self.down.shut {
                return Step::Close(CloseReason::Done);
            }
            if !up.progressed && !down.progressed {
                return if up.starved || down.starved {
                    Step::WaitBuffer
                } else {
                    Step::Idle
                };
            }
        }
        Step::Yield
    }
}
