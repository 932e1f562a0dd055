//! The readiness engine: epoll through `mio`, edge-triggered.
//!
//! Every connection is registered once, for both directions, and never re-registered: the
//! engine remembers the readiness each edge reported ([`Ready`]) and runs an op at once when
//! its direction is ready (`submit` then returns the `Done`), or parks it in the connection's
//! slot until the next edge. A short read or write clears the bit (on Linux TCP it means the
//! queue is drained or the send buffer is full, and a new edge will follow), so the op after
//! it parks without a syscall. Back-pressure is a session not asking: no `epoll_ctl` ever.
//!
//! A receive into an engine-provided buffer takes the buffer only when it runs; while parked
//! it holds none. When the pool is empty such a receive waits in `starved` and is retried at
//! the next poll once buffers are back (back-pressure, never a failure). A receive of new work
//! (`Op::RecvNew`) waits in `starved_new` as soon as the pool is down to its reserve, and is
//! retried only above it, after every waiting receive of work in progress.
//!
//! HOT PATH. No allocation (beyond table growth), lock, blocking call or info-level log.

mod ready;

use super::token::{self, Token};
use super::{Accepted, ConnId, Done, Engine, Event, Gauges, Linger, Op, Slice, Slot, Wake};
use crate::io::{splice, Buf, BufferPool, PipePool, Xfer};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};
pub use ready::Ready;
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Starved receives retried per poll.
const STARVED_BATCH: usize = 256;
/// `EINTR` retries of one syscall before the op is parked (and retried at the next edge).
const EINTR_RETRIES: usize = 4;
/// A parked send without a second slice.
const NO_SLICE: u32 = u32::MAX;

/// An op parked in a connection's read slot.
#[derive(Debug)]
enum ReadOp {
    None,
    Recv(Option<Buf>),
    /// `Op::RecvNew`.
    RecvNew,
    SpliceIn(crate::io::Pipe, u32, u32),
    Watch,
    /// `Op::Readable`: completes at the next readable edge, reading nothing.
    Readable,
}

/// An op parked in a connection's write slot.
#[derive(Debug)]
enum WriteOp {
    None,
    /// The second slice of a two-slice send waits in the engine's `aside` table (this index,
    /// or [`NO_SLICE`]): a parked op is paid by every connection's entry, a second slice is
    /// rare.
    Send(Slice, u32),
    SpliceOut(crate::io::Pipe, u32),
    /// The non-blocking connect is in progress.
    Connect,
}

struct Conn {
    sock: TcpStream,
    ready: Ready,
    read: ReadOp,
    write: WriteOp,
    /// A `Recv(None)` waits for a pool buffer (listed in `starved`).
    starved: bool,
}

pub struct MioEngine {
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    conns: Slab<Conn>,
    listeners: Vec<Option<TcpListener>>,
    pool: BufferPool,
    pipes: PipePool,
    starved: VecDeque<ConnId>,
    /// Receives of new work waiting for the pool to rise above its reserve.
    starved_new: VecDeque<ConnId>,
    buffer_waits: u64,
    /// Second slices of parked two-slice sends ([`WriteOp::Send`]).
    aside: Slab<Slice>,
    reserve_waits: u64,
}

struct MioWaker(Waker);

impl Wake for MioWaker {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

impl MioEngine {
    /// `Op::SpliceIn`'s `forward`: the pipe's `len` bytes out to `to`, now or not at all (a
    /// socket known not to take bytes, or a busy write slot, is not tried; an error is left
    /// for the session's next `SpliceOut` to meet). Bytes that left the pipe.
    #[inline]
    fn forward(&mut self, to: ConnId, pipe: &crate::io::Pipe, len: u32) -> u32 {
        match self.conns.get_mut(to as usize) {
            Some(c) if c.ready.contains(Ready::WRITABLE) && matches!(c.write, WriteOp::None) => {
                drain_now(c, pipe, len).unwrap_or(0)
            }
            _ => 0,
        }
    }

    pub fn new(pool: BufferPool, pipes: PipePool) -> io::Result<MioEngine> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), mio::Token(token::WAKER))?;
        Ok(MioEngine {
            poll,
            events: Events::with_capacity(1024),
            waker: Arc::new(MioWaker(waker)),
            conns: Slab::with_capacity(1024),
            listeners: Vec::new(),
            pool,
            pipes,
            starved: VecDeque::new(),
            starved_new: VecDeque::new(),
            buffer_waits: 0,
            aside: Slab::new(),
            reserve_waits: 0,
        })
    }

    /// Registers a new socket under a fresh id. An accepted socket starts writable (its send
    /// buffer is empty; if not, the write says so); a connecting one waits for its edge.
    fn insert(&mut self, mut sock: TcpStream, write: WriteOp) -> io::Result<ConnId> {
        let ready = match write {
            WriteOp::Connect => Ready::EMPTY,
            _ => Ready::WRITABLE,
        };
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        if id >= token::FIRST_RESERVED || id > ConnId::MAX as usize {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        self.poll.registry().register(
            &mut sock,
            mio::Token(token::conn(id as ConnId)),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            sock,
            ready,
            read: ReadOp::None,
            write,
            starved: false,
        });
        Ok(id as ConnId)
    }

    /// Runs the parked ops of `id` that its readiness allows, reporting completions.
    fn progress(&mut self, id: ConnId, out: &mut Vec<Event>) {
        let Some(c) = self.conns.get_mut(id as usize) else {
            return;
        };
        let mut starved = false;
        if c.ready.contains(Ready::READABLE) && !c.starved && !matches!(c.read, ReadOp::None) {
            // A parked receive (the common case) runs here; the other read ops out of line.
            let ran = match std::mem::replace(&mut c.read, ReadOp::None) {
                ReadOp::Recv(buf) => recv(c, buf, &mut self.pool, false),
                ReadOp::RecvNew => recv(c, None, &mut self.pool, true),
                op => run_read(c, op, &mut self.pool),
            };
            match ran {
                Ok(done) => out.push(Event::Done(id, done)),
                Err(parked) => {
                    c.read = parked;
                    starved = c.starved;
                }
            }
        }
        if !matches!(c.write, WriteOp::None) && c.ready != Ready::EMPTY {
            match std::mem::replace(&mut c.write, WriteOp::None) {
                WriteOp::None => {}
                op => match run_write(c, op, &self.pool, &mut self.aside) {
                    Ok(done) => out.push(Event::Done(id, done)),
                    Err(parked) => c.write = parked,
                },
            }
        }
        if starved {
            self.starve(id);
        }
    }

    /// Queues `id`, whose parked receive found no buffer for it, by its class.
    #[cold]
    fn starve(&mut self, id: ConnId) {
        self.buffer_waits += 1;
        let new = self
            .conns
            .get(id as usize)
            .is_some_and(|c| matches!(c.read, ReadOp::RecvNew));
        if new {
            self.reserve_waits += 1;
            self.starved_new.push_back(id);
        } else {
            self.starved.push_back(id);
        }
    }

    /// Retries receives that waited for a buffer, while buffers last: work in progress
    /// first, then new work while the pool is above its reserve.
    fn retry_starved(&mut self, out: &mut Vec<Event>) {
        let mut budget = STARVED_BATCH;
        for new in [false, true] {
            loop {
                let can = if new {
                    self.pool.above_reserve()
                } else {
                    self.pool.available() > 0
                };
                if budget == 0 || !can {
                    break;
                }
                let queue = if new {
                    &mut self.starved_new
                } else {
                    &mut self.starved
                };
                let Some(id) = queue.pop_front() else {
                    break;
                };
                budget -= 1;
                // A stale entry: the connection closed (its id may be another's by now).
                match self.conns.get_mut(id as usize) {
                    Some(c) if c.starved => c.starved = false,
                    _ => continue,
                }
                self.progress(id, out);
            }
        }
    }
}

/// Runs a read-slot op: `Ok(done)`, or `Err(op)` to park it again.
#[inline(never)]
fn run_read(c: &mut Conn, op: ReadOp, pool: &mut BufferPool) -> Result<Done, ReadOp> {
    match op {
        ReadOp::None => Err(ReadOp::None),
        ReadOp::Recv(buf) => recv(c, buf, pool, false),
        ReadOp::RecvNew => recv(c, None, pool, true),
        ReadOp::SpliceIn(pipe, piped, max) => {
            for _ in 0..EINTR_RETRIES {
                match splice::fill(&c.sock, &pipe, max as usize) {
                    Ok(0) => {
                        return Ok(Done::SpliceIn {
                            pipe,
                            res: Xfer::Eof,
                            sent: 0,
                        })
                    }
                    Ok(n) => {
                        return Ok(Done::SpliceIn {
                            pipe,
                            res: Xfer::Bytes(n as u32),
                            sent: 0,
                        })
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        // With bytes in the pipe, EAGAIN may mean "pipe full" (pages, not
                        // bytes); only an empty pipe proves the socket is dry. Either way the
                        // pipe goes back: to be drained, or to the pool while the flow is quiet.
                        if piped == 0 {
                            c.ready.remove(Ready::READABLE);
                        }
                        return Ok(Done::SpliceIn {
                            pipe,
                            res: Xfer::Bytes(0),
                            sent: 0,
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Ok(Done::SpliceIn {
                            pipe,
                            res: Xfer::failed(&e),
                            sent: 0,
                        })
                    }
                }
            }
            Ok(Done::SpliceIn {
                pipe,
                res: Xfer::Bytes(0),
                sent: 0,
            })
        }
        ReadOp::Readable => Ok(Done::Readable(Xfer::Bytes(1))),
        ReadOp::Watch => {
            let mut probe = [0u8; 1];
            match c.sock.peek(&mut probe) {
                Ok(0) => Ok(Done::Watch(Xfer::Eof)),
                Ok(n) => Ok(Done::Watch(Xfer::Bytes(n as u32))),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.ready.remove(Ready::READABLE);
                    Err(ReadOp::Watch)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => Err(ReadOp::Watch),
                Err(e) => Ok(Done::Watch(Xfer::failed(&e))),
            }
        }
    }
}

/// A receive; `new`: of new work (`Op::RecvNew`, `buf` is `None`).
fn recv(c: &mut Conn, buf: Option<Buf>, pool: &mut BufferPool, new: bool) -> Result<Done, ReadOp> {
    let provided = buf.is_none();
    // What the op parks as when it must wait.
    let parked = |buf: Option<Buf>| {
        if new {
            ReadOp::RecvNew
        } else {
            ReadOp::Recv(buf)
        }
    };
    let mut b = match buf {
        Some(b) => b,
        None => match if new {
            pool.checkout_new()
        } else {
            pool.checkout()
        } {
            Some(b) => b,
            None => {
                c.starved = true;
                return Err(parked(None));
            }
        },
    };
    // What an engine-provided buffer that got nothing becomes.
    let give_back = |b: Buf, pool: &mut BufferPool| {
        if provided {
            pool.release(b);
            None
        } else {
            Some(b)
        }
    };
    for _ in 0..EINTR_RETRIES {
        let spare = pool.spare(&mut b);
        let want = spare.len();
        match c.sock.read(spare) {
            Ok(0) if want > 0 => {
                return Ok(Done::Recv {
                    buf: give_back(b, pool),
                    res: Xfer::Eof,
                })
            }
            Ok(n) => {
                b.fill(n);
                if n < want && !c.ready.contains(Ready::HUP) {
                    // Linux TCP: a short read drained the queue; new data raises a new edge.
                    // Not so after a hang-up: the EOF or error is still to be read.
                    c.ready.remove(Ready::READABLE);
                }
                return Ok(Done::Recv {
                    buf: Some(b),
                    res: Xfer::Bytes(n as u32),
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.ready.remove(Ready::READABLE);
                return Err(parked(give_back(b, pool)));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Ok(Done::Recv {
                    buf: give_back(b, pool),
                    res: Xfer::failed(&e),
                })
            }
        }
    }
    Err(parked(give_back(b, pool)))
}

/// Runs a write-slot op: `Ok(done)`, or `Err(op)` to park it again.
fn run_write(
    c: &mut Conn,
    op: WriteOp,
    pool: &BufferPool,
    aside: &mut Slab<Slice>,
) -> Result<Done, WriteOp> {
    match op {
        WriteOp::None => Err(WriteOp::None),
        WriteOp::Connect => connect_result(c),
        _ if !c.ready.contains(Ready::WRITABLE) => Err(op),
        WriteOp::Send(a, bi) => match send_now(c, &a, aside.get(bi as usize), pool) {
            Some(res) => Ok(Done::Send {
                a: a.buf,
                b: aside.try_remove(bi as usize).map(|s| s.buf),
                res,
            }),
            None => Err(WriteOp::Send(a, bi)),
        },
        WriteOp::SpliceOut(pipe, len) => match drain_now(c, &pipe, len) {
            Ok(n) => Ok(Done::SpliceOut {
                pipe,
                res: Xfer::Bytes(n),
            }),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Err(WriteOp::SpliceOut(pipe, len))
            }
            Err(e) => Ok(Done::SpliceOut {
                pipe,
                res: Xfer::failed(&e),
            }),
        },
    }
}

/// Pipe → socket, `len` bytes, now: the bytes that left the pipe, or the error (`WouldBlock`
/// when the socket cannot take bytes, `Interrupted` after the retries). A short or refused
/// splice clears the socket's writability until its next edge.
#[inline]
fn drain_now(c: &mut Conn, pipe: &crate::io::Pipe, len: u32) -> io::Result<u32> {
    for _ in 0..EINTR_RETRIES {
        match splice::drain(pipe, &c.sock, len as usize) {
            Ok(n) => {
                if n < len as usize {
                    c.ready.remove(Ready::WRITABLE);
                }
                return Ok(n as u32);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if e.kind() == ErrorKind::WouldBlock {
                    c.ready.remove(Ready::WRITABLE);
                }
                return Err(e);
            }
        }
    }
    Err(ErrorKind::Interrupted.into())
}

/// One vectored write of the two slices: `Some(result)`, or `None` when the socket cannot
/// take bytes now (the op parks).
#[inline]
fn send_now(c: &mut Conn, a: &Slice, b: Option<&Slice>, pool: &BufferPool) -> Option<Xfer> {
    let first = slice_data(pool, a);
    let second = b.map_or(&[][..], |s| slice_data(pool, s));
    let want = first.len() + second.len();
    for _ in 0..EINTR_RETRIES {
        let wrote = if second.is_empty() {
            c.sock.write(first)
        } else {
            c.sock
                .write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
        };
        match wrote {
            Ok(n) => {
                if n < want {
                    c.ready.remove(Ready::WRITABLE);
                }
                return Some(Xfer::Bytes(n as u32));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.ready.remove(Ready::WRITABLE);
                return None;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Some(Xfer::failed(&e)),
        }
    }
    None
}

#[inline]
fn slice_data<'a>(pool: &'a BufferPool, s: &Slice) -> &'a [u8] {
    let d = pool.data(&s.buf);
    let start = (s.off as usize).min(d.len());
    let end = (s.off as usize + s.len as usize).min(d.len());
    &d[start..end]
}

/// Whether the non-blocking connect finished (TCP_NODELAY set on success).
fn connect_result(c: &mut Conn) -> Result<Done, WriteOp> {
    if c.ready == Ready::EMPTY {
        return Err(WriteOp::Connect);
    }
    match c.sock.take_error() {
        Ok(Some(e)) | Err(e) => return Ok(Done::Connect(Xfer::failed(&e))),
        Ok(None) => {}
    }
    match c.sock.peer_addr() {
        Ok(_) => match c.sock.set_nodelay(true) {
            Ok(()) => Ok(Done::Connect(Xfer::Bytes(0))),
            Err(e) => Ok(Done::Connect(Xfer::failed(&e))),
        },
        // A spurious wake-up: still in progress.
        Err(e) if e.kind() == ErrorKind::NotConnected => {
            c.ready = Ready::EMPTY;
            Err(WriteOp::Connect)
        }
        Err(e) => Ok(Done::Connect(Xfer::failed(&e))),
    }
}

/// The `Done` of an op submitted on a connection that no longer exists.
fn failed(op: Op) -> Done {
    super::failed(op, libc::EBADF)
}

impl Engine for MioEngine {
    fn poll(&mut self, timeout: Duration, out: &mut Vec<Event>) -> io::Result<()> {
        if !self.starved.is_empty() || !self.starved_new.is_empty() {
            self.retry_starved(out);
        }
        // Receives left waiting that buffers could serve now (past the batch): no sleep.
        let more = (!self.starved.is_empty() && self.pool.available() > 0)
            || (!self.starved_new.is_empty() && self.pool.above_reserve());
        let timeout = if out.is_empty() && !more {
            timeout
        } else {
            Duration::ZERO
        };
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // `events` is taken out so `progress` can borrow the engine.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            match token::decode(ev.token().0) {
                Token::Waker => out.push(Event::Wake),
                Token::Listener(i) => out.push(Event::Accept(i)),
                Token::Conn(id) => {
                    // A stale event for a connection closed earlier in this batch (its id may
                    // be reused already): readiness bits are hints, the syscall tells.
                    if let Some(c) = self.conns.get_mut(id as usize) {
                        c.ready.insert(Ready::from_event(ev));
                        self.progress(id, out);
                    }
                }
            }
        }
        self.events = events;
        Ok(())
    }

    #[inline]
    fn pools(&mut self) -> (&mut BufferPool, &mut PipePool) {
        (&mut self.pool, &mut self.pipes)
    }

    fn add_listener(&mut self, slot: usize, listener: std::net::TcpListener) -> io::Result<()> {
        if slot >= token::MAX_LISTENERS {
            return Err(io::Error::other("listener slot out of range"));
        }
        self.remove_listener(slot);
        let mut l = TcpListener::from_std(listener);
        self.poll.registry().register(
            &mut l,
            mio::Token(token::listener(slot)),
            Interest::READABLE,
        )?;
        if self.listeners.len() <= slot {
            self.listeners.resize_with(slot + 1, || None);
        }
        self.listeners[slot] = Some(l);
        Ok(())
    }

    fn remove_listener(&mut self, slot: usize) {
        if let Some(mut l) = self.listeners.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    fn accept(&mut self, slot: usize) -> Accepted {
        let Some(Some(l)) = self.listeners.get(slot) else {
            return Accepted::Empty;
        };
        loop {
            match l.accept() {
                Ok((sock, peer)) => {
                    return match self.insert(sock, WriteOp::None) {
                        Ok(id) => Accepted::Conn(id, peer),
                        Err(e) => Accepted::Failed(e),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Accepted::Empty,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Accepted::Failed(e),
            }
        }
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        let sock = TcpStream::connect(addr)?;
        self.insert(sock, WriteOp::Connect)
    }

    #[inline]
    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done> {
        let Some(c) = self.conns.get_mut(conn as usize) else {
            return Some(failed(op));
        };
        match op {
            Op::Recv(_) | Op::RecvNew => {
                let (buf, new) = match op {
                    Op::Recv(buf) => (buf, false),
                    _ => (None, true),
                };
                if !c.ready.contains(Ready::READABLE) {
                    c.read = if new {
                        ReadOp::RecvNew
                    } else {
                        ReadOp::Recv(buf)
                    };
                    return None;
                }
                match recv(c, buf, &mut self.pool, new) {
                    Ok(done) => Some(done),
                    Err(parked) => {
                        c.read = parked;
                        if c.starved {
                            self.starve(conn);
                        }
                        None
                    }
                }
            }
            // Never parks: a splice that cannot move bytes now gives its pipe back at once
            // (`Bytes(0)`), so a quiet flow does not hold a pipe.
            Op::SpliceIn {
                pipe,
                piped,
                max,
                forward,
            } => {
                if !c.ready.contains(Ready::READABLE) {
                    return Some(Done::SpliceIn {
                        pipe,
                        res: Xfer::Bytes(0),
                        sent: 0,
                    });
                }
                let done = run_read(c, ReadOp::SpliceIn(pipe, piped, max), &mut self.pool).ok();
                match (forward, done) {
                    (
                        Some(to),
                        Some(Done::SpliceIn {
                            pipe,
                            res: Xfer::Bytes(n),
                            ..
                        }),
                    ) if n > 0 => {
                        let sent = self.forward(to, &pipe, piped + n);
                        Some(Done::SpliceIn {
                            pipe,
                            res: Xfer::Bytes(n),
                            sent,
                        })
                    }
                    (_, done) => done,
                }
            }
            // Readiness says it (a splice that found the socket dry cleared it); no syscall.
            Op::Readable => {
                if !c.ready.contains(Ready::READABLE) {
                    c.read = ReadOp::Readable;
                    return None;
                }
                Some(Done::Readable(Xfer::Bytes(1)))
            }
            Op::Watch => {
                if !c.ready.contains(Ready::READABLE) {
                    c.read = ReadOp::Watch;
                    return None;
                }
                run_read(c, ReadOp::Watch, &mut self.pool).map_or_else(
                    |parked| {
                        c.read = parked;
                        None
                    },
                    Some,
                )
            }
            Op::Send(a, b) => {
                if c.ready.contains(Ready::WRITABLE) {
                    if let Some(res) = send_now(c, &a, b.as_ref(), &self.pool) {
                        return Some(Done::Send {
                            a: a.buf,
                            b: b.map(|s| s.buf),
                            res,
                        });
                    }
                }
                let bi = b.map_or(NO_SLICE, |s| self.aside.insert(s) as u32);
                c.write = WriteOp::Send(a, bi);
                None
            }
            Op::SpliceOut { pipe, len } => run_write(
                c,
                WriteOp::SpliceOut(pipe, len),
                &self.pool,
                &mut self.aside,
            )
            .map_or_else(
                |parked| {
                    c.write = parked;
                    None
                },
                Some,
            ),
            Op::Shutdown => Some(Done::Shutdown(match c.sock.shutdown(Shutdown::Write) {
                Ok(()) => Xfer::Bytes(0),
                Err(e) => Xfer::failed(&e),
            })),
        }
    }

    /// A pooled connection's watch: it parks until the next readable edge (the receive of
    /// the response before it drained the socket), so no call through `submit`'s match.
    #[inline]
    fn watch(&mut self, conn: ConnId) -> Option<Done> {
        match self.conns.get_mut(conn as usize) {
            Some(c) if !c.ready.contains(Ready::READABLE) => {
                c.read = ReadOp::Watch;
                None
            }
            _ => self.submit(conn, Op::Watch),
        }
    }

    // Inlined: callers name the slot (a pooled connection's watch is cancelled per reuse).
    #[inline(always)]
    fn cancel(&mut self, conn: ConnId, slot: Slot) {
        let Some(c) = self.conns.get_mut(conn as usize) else {
            return;
        };
        match slot {
            Slot::Read => {
                c.starved = false;
                match std::mem::replace(&mut c.read, ReadOp::None) {
                    ReadOp::Recv(Some(b)) => self.pool.release(b),
                    ReadOp::SpliceIn(p, piped, _) => {
                        if piped == 0 {
                            self.pipes.put(p)
                        } else {
                            self.pipes.discard(p)
                        }
                    }
                    ReadOp::Recv(None)
                    | ReadOp::RecvNew
                    | ReadOp::Watch
                    | ReadOp::Readable
                    | ReadOp::None => {}
                }
            }
            Slot::Write => match std::mem::replace(&mut c.write, WriteOp::None) {
                WriteOp::Send(a, bi) => {
                    self.pool.release(a.buf);
                    if let Some(b) = self.aside.try_remove(bi as usize) {
                        self.pool.release(b.buf);
                    }
                }
                WriteOp::SpliceOut(p, _) => self.pipes.discard(p),
                WriteOp::Connect | WriteOp::None => {}
            },
        }
    }

    fn close(&mut self, conn: ConnId, linger: Linger) {
        if !self.conns.contains(conn as usize) {
            return;
        }
        self.cancel(conn, Slot::Read);
        self.cancel(conn, Slot::Write);
        let c = self.conns.remove(conn as usize);
        if linger == Linger::Reset {
            let _ = socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO));
        }
        // Dropping the socket closes it, which also removes it from epoll.
        drop(c);
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn name(&self) -> &'static str {
        "mio"
    }

    fn addrs(&self, conn: ConnId) -> Option<(SocketAddr, SocketAddr)> {
        let c = self.conns.get(conn as usize)?;
        Some((c.sock.peer_addr().ok()?, c.sock.local_addr().ok()?))
    }

    fn take_buffer_waits(&mut self) -> u64 {
        std::mem::take(&mut self.buffer_waits)
    }

    fn take_reserve_waits(&mut self) -> u64 {
        std::mem::take(&mut self.reserve_waits)
    }

    fn gauges(&self) -> Gauges {
        let parked = self
            .conns
            .iter()
            .map(|(_, c)| {
                u64::from(!matches!(c.read, ReadOp::None))
                    + u64::from(!matches!(c.write, WriteOp::None))
            })
            .sum();
        Gauges {
            engine: "mio",
            connections: self.conns.len() as u64,
            ops_in_flight: parked,
            buffers_in_use: self.pool.in_use() as u64,
            buffers_provided: 0,
            pipes_in_use: self.pipes.in_use() as u64,
            pipes_idle: self.pipes.idle() as u64,
            ..Gauges::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Polls until `conn` completes an op (or `limit` passes): its `Done`.
    fn done_of(e: &mut MioEngine, conn: ConnId, limit: Duration) -> Option<Done> {
        let until = Instant::now() + limit;
        let mut out = Vec::new();
        while Instant::now() < until {
            e.poll(Duration::from_millis(20), &mut out).expect("poll");
            for ev in out.drain(..) {
                if let Event::Done(c, d) = ev {
                    if c == conn {
                        return Some(d);
                    }
                    recycle_done(e, d);
                }
            }
        }
        None
    }

    fn recycle_done(e: &mut MioEngine, d: Done) {
        let (pool, pipes) = e.pools();
        crate::engine::recycle(d, pool, pipes);
    }

    #[test]
    fn a_receive_of_new_work_waits_at_the_reserve_work_in_progress_does_not() {
        let mut pool = BufferPool::new(1024, 4);
        pool.set_reserve(2);
        let mut e = MioEngine::new(pool, PipePool::new(0)).expect("engine");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (new, old) = (e.connect(addr).expect("a"), e.connect(addr).expect("b"));
        let (mut peer_new, _) = l.accept().expect("accept a");
        let (mut peer_old, _) = l.accept().expect("accept b");
        let (mut connected, mut out) = (0, Vec::new());
        let until = Instant::now() + Duration::from_secs(5);
        while connected < 2 && Instant::now() < until {
            e.poll(Duration::from_millis(20), &mut out).expect("poll");
            for ev in out.drain(..) {
                if let Event::Done(_, Done::Connect(res)) = ev {
                    assert_eq!(res, Xfer::Bytes(0));
                    connected += 1;
                }
            }
        }
        assert_eq!(connected, 2, "both connected");
        // Two buffers held elsewhere: the pool is down to its reserve.
        let held: Vec<Buf> = (0..2)
            .map(|_| e.pools().0.checkout().expect("buf"))
            .collect();
        peer_new
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .expect("write");
        peer_old.write_all(b"HTTP/1.1 200 OK\r\n").expect("write");
        assert!(e.submit(new, Op::RecvNew).is_none());
        let got = match e.submit(old, Op::Recv(None)) {
            Some(d) => Some(d),
            None => done_of(&mut e, old, Duration::from_secs(5)),
        };
        let Some(Done::Recv { buf: Some(b), res }) = got else {
            panic!("work in progress takes the reserve: {got:?}");
        };
        assert_eq!(res, Xfer::Bytes(17));
        assert!(
            done_of(&mut e, new, Duration::from_millis(300)).is_none(),
            "new work waits while the pool is at its reserve"
        );
        assert!(e.take_reserve_waits() >= 1);
        assert!(e.take_buffer_waits() >= 1);
        e.pools().0.release(b);
        assert!(
            done_of(&mut e, new, Duration::from_millis(300)).is_none(),
            "two free, reserve two: still waiting"
        );
        for b in held {
            e.pools().0.release(b);
        }
        let got = done_of(&mut e, new, Duration::from_secs(5));
        let Some(Done::Recv { buf: Some(b), res }) = got else {
            panic!("above the reserve it runs: {got:?}");
        };
        assert_eq!(res, Xfer::Bytes(18));
        assert_eq!(e.pools().0.data(&b), b"GET / HTTP/1.1\r\n\r\n");
        e.pools().0.release(b);
        e.close(new, Linger::Graceful);
        e.close(old, Linger::Graceful);
        assert_eq!(e.gauges().buffers_in_use, 0);
    }

    /// `Readable` waits for bytes and reads none of them: the next receive gets them all.
    #[test]
    fn readable_waits_for_bytes_and_leaves_them_to_read() {
        let mut e = MioEngine::new(BufferPool::new(1024, 4), PipePool::new(0)).expect("engine");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let conn = e.connect(l.local_addr().expect("addr")).expect("connect");
        let (mut peer, _) = l.accept().expect("accept");
        let d = done_of(&mut e, conn, Duration::from_secs(5));
        assert!(matches!(d, Some(Done::Connect(Xfer::Bytes(0)))), "{d:?}");
        // Drain the first readiness: nothing to read, the receive parks; take it back.
        assert!(e.submit(conn, Op::Recv(None)).is_none());
        e.cancel(conn, Slot::Read);
        assert!(
            e.submit(conn, Op::Readable).is_none(),
            "nothing to read yet"
        );
        assert!(done_of(&mut e, conn, Duration::from_millis(100)).is_none());
        peer.write_all(b"later").expect("write");
        let d = done_of(&mut e, conn, Duration::from_secs(5));
        assert!(matches!(d, Some(Done::Readable(Xfer::Bytes(1)))), "{d:?}");
        assert_eq!(e.gauges().buffers_in_use, 0, "no buffer taken");
        let Some(Done::Recv { buf: Some(b), res }) = e.submit(conn, Op::Recv(None)) else {
            panic!("the bytes are still there")
        };
        assert_eq!(res, Xfer::Bytes(5));
        assert_eq!(e.pools().0.data(&b), b"later");
        e.pools().0.release(b);
        e.close(conn, Linger::Graceful);
        assert_eq!(e.gauges().connections, 0);
    }

    /// `SpliceIn`'s forward: what came in goes on out to the other connection in the same
    /// call; forwarded to a connection that is not there, it stays in the pipe.
    #[test]
    fn a_splice_in_forwards_what_came_in_to_the_other_connection() {
        use std::io::Read;
        let mut e = MioEngine::new(BufferPool::new(1024, 4), PipePool::new(2)).expect("engine");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut open = || {
            let c = e.connect(l.local_addr().expect("addr")).expect("connect");
            let d = done_of(&mut e, c, Duration::from_secs(5));
            assert!(matches!(d, Some(Done::Connect(Xfer::Bytes(0)))), "{d:?}");
            (c, l.accept().expect("accept").0)
        };
        let (a, mut pa) = open();
        let (b, mut pb) = open();
        let mut pipe = e.pools().1.get().expect("pipe");
        let splice_in = |e: &mut MioEngine, pipe, forward| {
            crate::engine::testing::splice_in_until(e, a, pipe, forward, |e| {
                done_of(e, a, Duration::from_secs(5))
            })
        };
        pa.write_all(b"through").expect("write");
        let (p, res, sent) = splice_in(&mut e, pipe, Some(b));
        assert_eq!((res, sent), (Xfer::Bytes(7), 7));
        let mut got = [0u8; 7];
        pb.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"through");
        pa.write_all(b"again").expect("write");
        let (p, res, sent) = splice_in(&mut e, p, Some(999));
        assert_eq!((res, sent), (Xfer::Bytes(5), 0), "no such connection");
        let d = e.submit(b, Op::SpliceOut { pipe: p, len: 5 });
        let Some(Done::SpliceOut {
            pipe: p,
            res: Xfer::Bytes(5),
        }) = d
        else {
            panic!("{d:?}")
        };
        pipe = p;
        let mut got = [0u8; 5];
        pb.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"again");
        e.pools().1.put(pipe);
        e.close(a, Linger::Graceful);
        e.close(b, Linger::Graceful);
        let g = e.gauges();
        assert_eq!((g.connections, g.ops_in_flight, g.pipes_in_use), (0, 0, 0));
    }

    /// Every connection pays for its entry, parked ops included: a two-slice send keeps its
    /// second slice aside.
    #[test]
    fn connection_entry_stays_small() {
        use std::mem::size_of;
        // (The socket itself is 4 bytes in release builds, more with debug assertions.)
        let ops = size_of::<super::ReadOp>() + size_of::<super::WriteOp>();
        assert!(ops <= 52, "parked ops: {ops}");
        assert!(
            size_of::<super::Conn>() - size_of::<mio::net::TcpStream>() <= 56,
            "mio Conn: {}",
            size_of::<super::Conn>()
        );
    }
}
