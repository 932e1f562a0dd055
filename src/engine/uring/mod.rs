//! The completion engine: io_uring.
//!
//! Every op a session asks for becomes a submission entry; all of a worker's entries of one
//! loop turn go to the kernel in the single `io_uring_enter` of [`Engine::poll`], which also
//! waits for completions (and, with `DEFER_TASKRUN`, is the only place the kernel runs them).
//! Completions come back as [`Event::Done`] with the buffers and pipes the ops carried.
//!
//! - Receives into a session's buffer read into its spare tail. A receive that names no
//!   buffer (`Op::Recv(None)`) is poll-first and takes a buffer from the provided-buffer ring
//!   ([`bufring`]) only when bytes arrive: an idle connection holds no buffer. When the ring
//!   is empty (`ENOBUFS`) the receive waits in `starved` and is submitted again once the ring
//!   has buffers (back-pressure, counted in `buffer_waits`). Receives of new work
//!   (`Op::RecvNew`) take their buffers from a second ring, refilled only while the pool is
//!   above its reserve; they wait in `starved_new`, resubmitted after those of work in
//!   progress.
//! - Sends are `SEND` (one slice) or `SENDMSG` (two), with `MSG_WAITALL`: the kernel keeps
//!   sending until all is out, so a send completes once.
//! - Splices stay direct, non-blocking system calls as in the mio engine: io_uring runs
//!   `SPLICE` on its worker threads only, and `SpliceIn` must never wait (`Bytes(0)` when
//!   nothing is readable now). A `SpliceOut` the socket cannot take waits on a `POLL_ADD` for
//!   writability, then splices again; `Readable` (a spliced flow whose socket went dry) is a
//!   one-shot `POLL_ADD` for readability.
//! - `Watch` is a poll-first receive into a ring buffer, like `Recv(None)`: it completes when
//!   bytes or an EOF arrive (and gives the buffer back: a watched connection is not read after
//!   its watch fired). Cancelling it (a pooled upstream connection being reused) does not go to
//!   the kernel: the receive stays armed, detached, and *is* the connection's next
//!   `Recv(None)` (the response): one poll and one entry per response, not two. If it completes
//!   while detached, what it got waits in the op for that receive; if the connection is pooled
//!   again first, the watch is re-attached.
//! - Accepting is a few single-shot `ACCEPT`s per listener in the kernel at once, each with
//!   its own peer-address slot (no `getpeername` per connection). A listener's credit doubles
//!   while the worker takes every connection they bring (up to [`ACCEPT_CREDIT_MAX`]) and drops
//!   to one when descriptors run out. Not multishot: a multishot accept takes the whole backlog
//!   at once, and sockets accepted ahead of the worker hold exactly the descriptors its sessions
//!   then need for their upstreams (a deadlock under descriptor exhaustion, which the readiness
//!   engine avoids by accepting one connection at a time on demand).
//! - Connects are `CONNECT` on a new non-blocking socket (`TCP_NODELAY` set before).
//! - Closing cancels the connection's ops (`ASYNC_CANCEL`) and closes its descriptor through
//!   the ring (`CLOSE`, ordered after every entry that names it). No `Done` of a cancelled op is
//!   delivered; what it carried goes back to the pools when its completion arrives, i.e. when
//!   the kernel has let go of it. A closed connection's id is reused only after the next poll,
//!   so a completion already handed out in this turn can never reach a new connection.
//! - Timeouts stay on the worker's timer wheel: `poll`'s timeout is the enter's wait limit.
//! - Connection sockets are registered files: a sparse table registered at start, one slot
//!   per connection id (up to [`FIXED_FILES_MAX`] and the descriptor limit); a connection's
//!   socket is installed in its slot by a `FILES_UPDATE` entry queued ahead of its ops
//!   (`install`), its ops name the slot (no descriptor look-up and reference count per op),
//!   and its close removes the slot before closing the descriptor. Connections without a
//!   slot, accepts, the eventfd and splices name descriptors. The ring's own descriptor is
//!   registered too (`register_ring`): enters name its index.
//!
//! The unsafe code of this engine is here and in [`bufring`] and [`args`]: it hands the kernel
//! pointers into the buffer pool, the buffer ring and the argument table. The invariant each
//! `SAFETY` comment relies on: memory named by an in-flight op belongs to that op alone (its
//! `Buf` or table entry is held by the engine, never by a session) until the op's completion
//! has been reaped, and the engine's `Drop` cancels and reaps every op before the pool is freed.
//!
//! HOT PATH. No allocation (beyond table growth), lock, blocking call or info-level log.

mod args;
mod bufring;
pub mod probe;

use super::token;
use super::{Accepted, ConnId, Done, Engine, Event, Gauges, Linger, Op, Slice, Slot, Wake};
use crate::io::{splice, Buf, BufferPool, Pipe, PipePool, Xfer};
use args::Args;
use bufring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
pub use probe::Setup;
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Submission queue entries (a full queue is flushed with an extra enter).
const SQ_ENTRIES: u32 = 2048;
/// Completion queue entries (the kernel keeps overflow, `IORING_FEAT_NODROP`).
const CQ_ENTRIES: u32 = 16384;
/// Completions copied out of the queue at a time.
const CQE_BATCH: usize = 64;
/// Most accepts a listener keeps in the kernel at once (its credit grows up to this).
const ACCEPT_CREDIT_MAX: u32 = 64;
/// A new listener's credit.
const ACCEPT_CREDIT_START: u32 = 4;
/// `EINTR` retries of one direct system call.
const EINTR_RETRIES: usize = 4;
/// How long `Drop` waits for the kernel to give back what in-flight ops hold.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

// `io_uring_enter` flags (kernel ABI).
const ENTER_GETEVENTS: u32 = 1;
const ENTER_SQ_WAKEUP: u32 = 2;
const ENTER_EXT_ARG: u32 = 8;
const ENTER_REGISTERED_RING: u32 = 16;
// `io_uring_register` opcodes (kernel ABI).
const REGISTER_RING_FDS: libc::c_uint = 20;
const UNREGISTER_RING_FDS: libc::c_uint = 21;
/// `IORING_RECVSEND_POLL_FIRST` (in the entry's `ioprio`).
const RECV_POLL_FIRST: u16 = 1;

// What a completion's `user_data` names: a tag in the top byte.
const TAG_SHIFT: u32 = 56;
const TAG_OP: u64 = 1;
const TAG_ACCEPT: u64 = 2;
const TAG_WAKE: u64 = 3;
/// Cancels and closes: their (failure) completions are ignored.
const TAG_IGNORE: u64 = 4;
const LOW: u64 = (1 << TAG_SHIFT) - 1;

const NONE: u32 = u32::MAX;
/// Most slots of the registered (fixed) file table; connections with higher ids name their
/// descriptors. 8 bytes of kernel memory per slot, per worker.
const FIXED_FILES_MAX: u32 = 1 << 15;

/// What an entry names a connection's socket by: its slot in the registered file table (no
/// descriptor look-up and reference count per op) or its descriptor.
#[derive(Clone, Copy, Debug)]
enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// `$e` with `$f` bound to `types::Fd` or `types::Fixed` as target `$t` says (the opcodes
/// take either type, not a value that is one or the other).
macro_rules! on_target {
    ($t:expr, |$f:ident| $e:expr) => {
        match $t {
            Target::Fd(fd) => {
                let $f = types::Fd(fd);
                $e
            }
            Target::Fixed(i) => {
                let $f = types::Fixed(i);
                $e
            }
        }
    };
}

#[inline]
fn ud(tag: u64, v: u64) -> u64 {
    (tag << TAG_SHIFT) | (v & LOW)
}

/// What an in-flight op carries.
#[derive(Debug)]
enum Kind {
    /// A receive into the spare tail of the session's buffer.
    Recv(Buf),
    /// A receive into a ring buffer; `starved`: waiting for the ring (no entry in flight);
    /// `new`: of new work (the second ring's buffer group).
    RecvProvided {
        starved: bool,
        new: bool,
    },
    /// A watch: a poll-first receive into a ring buffer (see the module doc).
    Watch,
    /// A detached watch that completed (no entry in flight): what its receive got, for the
    /// connection's next receive (or watch).
    WatchFired {
        buf: Option<Buf>,
        res: i32,
    },
    /// A send; the argument-table entry of a two-slice send; where its second slice waits in
    /// the engine's `aside` table ([`NONE`]: none). Every connection's idle receive takes an
    /// op entry as large as the largest kind, and a second slice is rare.
    Send(Slice, u32, u32),
    /// A splice to the socket waiting for writability.
    SpliceOut(Pipe, u32),
    /// `Op::Readable`: a one-shot `POLL_ADD` for readability.
    Readable,
    Shutdown,
    /// A connect; its argument-table entry (the address).
    Connect(u32),
}

#[derive(Debug)]
struct InFlight {
    conn: ConnId,
    /// Cancelled, or its connection closed: the completion only gives back what it carries.
    orphan: bool,
    kind: Kind,
}

struct Conn {
    /// `None` once closed (the ring's `CLOSE` owns the descriptor then).
    sock: Option<OwnedFd>,
    /// Op indexes in the read and write slots.
    read: u32,
    write: u32,
    /// A detached `Watch` still armed in the kernel.
    watch: u32,
}

impl Conn {
    /// What entries name this connection's socket by (`None`: closed): its slot in the
    /// registered file table when its id has one (`fixed`: the table's size; every open
    /// connection with a lower id is installed, see `insert` and `start`), else its descriptor.
    #[inline]
    fn target(&self, id: ConnId, fixed: usize) -> Option<Target> {
        let fd = self.sock.as_ref()?.as_raw_fd();
        Some(if (id as usize) < fixed {
            Target::Fixed(id)
        } else {
            Target::Fd(fd)
        })
    }
}

/// A listener's accepts: single-shot `ACCEPT`s, at most `credit` in the kernel at once.
struct Listener {
    sock: std::net::TcpListener,
    /// Tells this listener's completions from those of an earlier one in the same slot.
    gen: u16,
    /// Accepts in the kernel now.
    armed: u32,
    /// How many to keep armed: doubles while the worker takes all of them, back to one when
    /// descriptors run out.
    credit: u32,
    /// Accepted connections (with their peers) the worker has not taken yet.
    queue: VecDeque<(OwnedFd, SocketAddr)>,
    /// An accept failure to report at the next `accept`.
    error: Option<i32>,
}

/// A removed listener's accepts still in the kernel (being cancelled) and the connections
/// they and earlier accepts took, which the worker still serves.
struct Retired {
    slot: usize,
    gen: u16,
    armed: u32,
    queue: VecDeque<(OwnedFd, SocketAddr)>,
}

pub struct UringWaker(OwnedFd);

impl Wake for UringWaker {
    fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        match nix::unistd::write(&self.0, &one) {
            // EAGAIN: the counter is saturated, a wake-up is pending anyway.
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

pub struct UringEngine {
    ring: IoUring,
    setup: Setup,
    /// The ring is enabled and owned by the polling thread.
    started: bool,
    /// The ring's index in the polling thread's registered-ring table (`REGISTER_RING_FDS`),
    /// which every enter names instead of the descriptor (no descriptor look-up per enter);
    /// `None`: not registered (enters name the descriptor).
    ring_index: Option<(u32, std::thread::ThreadId)>,
    bufring: BufRing,
    /// The ring of receives of new work (refilled only above the pool's reserve).
    bufring_new: BufRing,
    args: Args,
    /// The descriptors installed in the registered file table, by slot (a `FILES_UPDATE`
    /// entry reads its slot's from here; empty: no table). Zeroed memory: pages are touched
    /// only as connections use them.
    fixed_fds: Box<[RawFd]>,
    ops: Slab<InFlight>,
    conns: Slab<Conn>,
    /// Closed connections whose ids are freed at the next poll.
    dead: Vec<ConnId>,
    listeners: Vec<Option<Listener>>,
    /// Removed listeners with accepts or connections outstanding.
    retired: Vec<Retired>,
    next_listener_gen: u16,
    /// Accepts in the kernel, of every listener (`Drop` waits for them: they write into the
    /// argument table).
    accepts_in_flight: usize,
    /// Listener slots with something for `accept` since the last poll.
    accept_ready: Vec<usize>,
    /// Provided-buffer receives waiting for the ring: (connection, op).
    starved: VecDeque<(ConnId, u32)>,
    /// Receives of new work waiting for their ring.
    starved_new: VecDeque<(ConnId, u32)>,
    /// Entries that did not fit in the submission queue.
    backlog: Vec<squeue::Entry>,
    /// `reap`'s batch of completions (user data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
    waker: Arc<UringWaker>,
    /// Where the eventfd read lands (stable: boxed).
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// A wake-up arrived in the batch being reaped.
    woken: bool,
    /// `Drop` is draining the ring: completions are not re-armed.
    draining: bool,
    buffer_waits: u64,
    /// Second slices of two-slice sends in flight ([`Kind::Send`]).
    aside: Slab<Slice>,
    reserve_waits: u64,
    /// Receives failed because their ring buffer was tainted (see `bufring`).
    tainted_receives: u64,
    pool: BufferPool,
    pipes: PipePool,
}

impl UringEngine {
    /// `Op::SpliceIn`'s `forward`: the pipe's `len` bytes out to `to`, now or not at all (a
    /// write slot in use is not tried; a socket that cannot take bytes, or an error, moves
    /// nothing and is left for the session's next `SpliceOut` to meet). Bytes that left the
    /// pipe.
    #[inline]
    fn forward(&self, to: ConnId, pipe: &Pipe, len: u32) -> u32 {
        match self.conns.get(to as usize) {
            Some(Conn {
                sock: Some(sock),
                write: NONE,
                ..
            }) => match splice_drain(pipe, sock, len) {
                Some(Xfer::Bytes(n)) => n,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// A ring set up as the probe found the kernel allows (`probe::probe`). Its buffer ring is
    /// registered here; the ring itself is enabled by the thread that polls it first.
    pub fn new(pool: BufferPool, pipes: PipePool, setup: Setup) -> io::Result<UringEngine> {
        let ring = probe::build(&setup, SQ_ENTRIES, CQ_ENTRIES)?;
        let mut bufring = BufRing::new(pool.available(), bufring::GROUP_ANY)?;
        bufring.register(&ring)?;
        bufring.set_registered();
        let mut bufring_new = BufRing::new(pool.available(), bufring::GROUP_NEW)?;
        bufring_new.register(&ring)?;
        bufring_new.set_registered();
        // Idle lent buffers give their pages back only where the kernel takes ring buffers
        // inside our enters alone (see `bufring`).
        bufring.set_idle_trim(setup.defer_taskrun && !setup.sqpoll);
        bufring_new.set_idle_trim(setup.defer_taskrun && !setup.sqpoll);
        // Blocking (no EFD_NONBLOCK): the ring's read of it then waits instead of failing.
        // SAFETY: a plain system call with no pointers.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(UringEngine {
            ring,
            setup,
            started: false,
            ring_index: None,
            bufring,
            bufring_new,
            args: Args::new(),
            fixed_fds: Box::default(),
            ops: Slab::with_capacity(2048),
            conns: Slab::with_capacity(1024),
            dead: Vec::with_capacity(256),
            listeners: Vec::new(),
            retired: Vec::new(),
            next_listener_gen: 0,
            accepts_in_flight: 0,
            accept_ready: Vec::new(),
            starved: VecDeque::new(),
            starved_new: VecDeque::new(),
            backlog: Vec::new(),
            cqes: Vec::with_capacity(CQE_BATCH),
            waker: Arc::new(UringWaker(efd)),
            wake_buf: Box::new(0),
            wake_armed: false,
            woken: false,
            draining: false,
            buffer_waits: 0,
            aside: Slab::new(),
            reserve_waits: 0,
            tainted_receives: 0,
            pool,
            pipes,
        })
    }

    /// The set-up in use (start line).
    pub fn setup(&self) -> Setup {
        self.setup
    }

    /// On the polling thread, once: enable the ring (this thread becomes its single issuer)
    /// and register the ring descriptor for cheaper enters.
    fn start(&mut self) -> io::Result<()> {
        if self.setup.single_issuer || self.setup.defer_taskrun {
            self.ring.submitter().register_enable_rings()?;
        }
        // Optional (5.18): a registered ring fd saves a descriptor look-up per enter. Done
        // here, not with the crate's `Submitter::register_ring_fd`: the index it keeps lives
        // in that (temporary) `Submitter`, and every other `submitter()` enters by descriptor.
        self.ring_index =
            register_ring(self.ring.as_raw_fd()).map(|i| (i, std::thread::current().id()));
        // Optional: a sparse registered file table, one slot per connection id below its size
        // (sockets are installed as connections come, see `insert`).
        let slots = fixed_table_size();
        if slots > 0 && self.ring.submitter().register_files_sparse(slots).is_ok() {
            self.fixed_fds = vec![0; slots as usize].into_boxed_slice();
            // Connections made before (a connect before the first poll) are installed too.
            let early: Vec<(usize, RawFd)> = self
                .conns
                .iter()
                .filter_map(|(id, c)| Some((id, c.sock.as_ref()?.as_raw_fd())))
                .filter(|&(id, _)| id < slots as usize)
                .collect();
            for (id, fd) in early {
                self.install(id, fd);
            }
        }
        self.started = true;
        self.bufring.refill(&mut self.pool);
        self.bufring_new.refill(&mut self.pool);
        self.arm_wake();
        Ok(())
    }

    /// Queues an entry (flushing the queue with an extra enter when it is full).
    #[inline]
    fn push(&mut self, e: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push(e);
            return;
        }
        // SAFETY: every entry pushed names memory that stays valid until its completion is
        // reaped (see the module doc: pool buffers held by an op, the argument table, the boxed
        // wake buffer) or names none.
        if unsafe { self.ring.submission().push(&e) }.is_ok() {
            return;
        }
        if self.started && self.ring.submit().is_ok() {
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push(e);
    }

    /// Moves entries that did not fit into the submission queue.
    fn flush_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let mut moved = 0;
            {
                let mut sq = self.ring.submission();
                for e in &self.backlog {
                    // SAFETY: as in `push`.
                    if unsafe { sq.push(e) }.is_err() {
                        break;
                    }
                    moved += 1;
                }
            }
            self.backlog.drain(..moved);
            if self.backlog.is_empty() || self.ring.submit().is_err() {
                return;
            }
        }
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(types::Fd(self.waker.0.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(ud(TAG_WAKE, 0));
        self.push(e);
        self.wake_armed = true;
    }

    /// Tops listener `slot`'s accepts in the kernel up to its credit.
    fn arm_accepts(&mut self, slot: usize) {
        loop {
            let Some(Some(l)) = self.listeners.get_mut(slot) else {
                return;
            };
            if l.armed >= l.credit {
                return;
            }
            l.armed += 1;
            let (fd, gen) = (l.sock.as_raw_fd(), l.gen);
            let a = self.args.alloc();
            let (addr, len) = self.args.accept_slot(a);
            let e = opcode::Accept::new(types::Fd(fd), addr, len)
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(TAG_ACCEPT, accept_key(slot, gen, a)));
            self.accepts_in_flight += 1;
            self.push(e);
        }
    }

    /// Descriptors ran out: every listener keeps one accept in the kernel until the worker
    /// takes connections again (pre-accepted sockets would hold the descriptors the sessions
    /// need for their upstreams).
    fn descriptors_exhausted(&mut self) {
        for l in self.listeners.iter_mut().flatten() {
            l.credit = 1;
        }
    }

    /// Registers a socket under a fresh id.
    fn insert(&mut self, sock: OwnedFd) -> io::Result<ConnId> {
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        if id >= token::FIRST_RESERVED || id > ConnId::MAX as usize {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let raw = sock.as_raw_fd();
        entry.insert(Conn {
            sock: Some(sock),
            read: NONE,
            write: NONE,
            watch: NONE,
        });
        if id < self.fixed_fds.len() {
            self.install(id, raw);
        }
        Ok(id as ConnId)
    }

    /// Installs descriptor `fd` in slot `id` of the registered file table. The kernel does it
    /// before any later entry (entries are issued in order and a files update never waits),
    /// reading the descriptor from `fixed_fds`, which keeps it until the slot is reused: after
    /// the connection's close was submitted (ids are freed at a poll, whose enter submits what
    /// is queued, see `reap_dead`). If it fails, the connection's ops fail (`EBADF`) and its
    /// session closes it.
    fn install(&mut self, id: usize, fd: RawFd) {
        self.fixed_fds[id] = fd;
        let e = opcode::FilesUpdate::new(&self.fixed_fds[id], 1)
            .offset(id as i32)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(TAG_IGNORE, 0));
        self.push(e);
    }

    /// Starts op `kind` on `conn` in `slot` with entry `e` (its user data is set here).
    #[inline]
    fn start_op(&mut self, conn: ConnId, slot: Slot, kind: Kind, e: squeue::Entry) {
        let idx = self.ops.insert(InFlight {
            conn,
            orphan: false,
            kind,
        }) as u32;
        if let Some(c) = self.conns.get_mut(conn as usize) {
            match slot {
                Slot::Read => c.read = idx,
                Slot::Write => c.write = idx,
            }
        }
        self.push(e.user_data(ud(TAG_OP, u64::from(idx))));
    }

    /// The entry of a provided-buffer receive (`new`: from the ring of new work).
    #[inline]
    fn recv_provided_entry(t: Target, new: bool) -> squeue::Entry {
        let group = if new {
            bufring::GROUP_NEW
        } else {
            bufring::GROUP_ANY
        };
        on_target!(t, |f| opcode::Recv::new(f, std::ptr::null_mut(), 0)
            .buf_group(group)
            .ioprio(RECV_POLL_FIRST)
            .build())
        .flags(squeue::Flags::BUFFER_SELECT)
    }

    /// Takes op `idx` out of its connection's slot (it completed or is being cancelled).
    #[inline]
    fn unslot(&mut self, conn: ConnId, idx: u32) {
        if let Some(c) = self.conns.get_mut(conn as usize) {
            if c.read == idx {
                c.read = NONE;
            }
            if c.write == idx {
                c.write = NONE;
            }
            if c.watch == idx {
                c.watch = NONE;
            }
        }
    }

    /// Cancels op `idx` in the kernel (its completion then only gives back what it carries).
    fn orphan(&mut self, idx: u32) {
        let Some(op) = self.ops.get_mut(idx as usize) else {
            return;
        };
        if matches!(
            op.kind,
            Kind::RecvProvided { starved: true, .. } | Kind::WatchFired { .. }
        ) {
            // Nothing in the kernel: done at once.
            let op = self.ops.remove(idx as usize);
            return self.recycle(op.kind);
        }
        if op.orphan {
            return;
        }
        op.orphan = true;
        let e = opcode::AsyncCancel::new(ud(TAG_OP, u64::from(idx)))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(TAG_IGNORE, 0));
        self.push(e);
    }

    /// Gives back what a finished (or cancelled) op carried.
    fn recycle(&mut self, kind: Kind) {
        match kind {
            Kind::Recv(b) => self.pool.release(b),
            Kind::Send(a, args, bi) => {
                self.pool.release(a.buf);
                if let Some(b) = self.aside.try_remove(bi as usize) {
                    self.pool.release(b.buf);
                }
                if args != NONE {
                    self.args.release(args);
                }
            }
            Kind::SpliceOut(p, _) => self.pipes.discard(p),
            Kind::Connect(args) => self.args.release(args),
            Kind::WatchFired { buf, .. } => {
                if let Some(b) = buf {
                    self.pool.release(b);
                }
            }
            Kind::RecvProvided { .. } | Kind::Shutdown | Kind::Watch | Kind::Readable => {}
        }
    }

    /// Frees the ids of connections closed during the last turn.
    fn reap_dead(&mut self) {
        if !self.backlog.is_empty() {
            // Entries naming these ids (their closes, a files update reading `fixed_fds`)
            // may still wait there: the ids stay taken until the kernel has them.
            return;
        }
        for id in self.dead.drain(..) {
            if self.conns.contains(id as usize) {
                self.conns.remove(id as usize);
            }
        }
    }

    /// Lends the rings buffers back from the pool and resubmits receives that waited for
    /// them: work in progress first; new work only from what is above the pool's reserve.
    fn refill(&mut self) {
        self.bufring.refill(&mut self.pool);
        self.resubmit_starved(false);
        self.bufring_new.refill(&mut self.pool);
        self.resubmit_starved(true);
    }

    /// Resubmits the receives of one class that waited for their ring: as many as it has
    /// buffers (each had bytes waiting), not all of them to find it empty again.
    fn resubmit_starved(&mut self, new: bool) {
        let mut budget = if new {
            self.bufring_new.lent()
        } else {
            self.bufring.lent()
        };
        while budget > 0 {
            let queue = if new {
                &mut self.starved_new
            } else {
                &mut self.starved
            };
            let Some((conn, idx)) = queue.pop_front() else {
                break;
            };
            let fd = match (
                self.ops.get_mut(idx as usize),
                self.conns.get(conn as usize),
            ) {
                (Some(op), Some(c))
                    if !op.orphan
                        && op.conn == conn
                        && c.read == idx
                        // (A stale entry's op index may be another starved receive's by
                        // now, of the other class: it is in the other queue.)
                        && matches!(op.kind, Kind::RecvProvided { starved: true, new: n } if n == new) =>
                {
                    match c.target(conn, self.fixed_fds.len()) {
                        Some(t) => {
                            op.kind = Kind::RecvProvided {
                                starved: false,
                                new,
                            };
                            t
                        }
                        None => continue,
                    }
                }
                _ => continue,
            };
            let e = Self::recv_provided_entry(fd, new).user_data(ud(TAG_OP, u64::from(idx)));
            self.push(e);
            budget -= 1;
        }
    }

    /// One `io_uring_enter`: submits everything queued, waits up to `timeout` for at least
    /// one completion (not at all when `wait` is false) and, with `DEFER_TASKRUN`, lets the
    /// kernel run the completions due.
    fn enter(&mut self, wait: bool, timeout: Duration) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        let mut flags = ENTER_GETEVENTS;
        if self.setup.sqpoll {
            self.ring.submission().sync();
            if self.ring.submission().need_wakeup() {
                flags |= ENTER_SQ_WAKEUP;
            } else if !wait && !self.ring.submission().cq_overflow() {
                // The kernel thread submits; completions are read without a system call.
                return Ok(());
            }
        }
        let r = if wait {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            // SAFETY: `args` (and the timespec it points to) outlive the call; the entries
            // submitted name memory that stays valid until their completions (see `push`).
            unsafe { self.enter_raw(to_submit, 1, flags | ENTER_EXT_ARG, Some(&args)) }
        } else {
            // SAFETY: as above, without an argument.
            unsafe { self.enter_raw::<libc::sigset_t>(to_submit, 0, flags, None) }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // The wait timed out, or a signal came: nothing (more) to do now.
                Some(libc::ETIME) | Some(libc::EINTR) => Ok(()),
                // The completion queue is full and the kernel holds overflow: reap first,
                // submit at the next poll.
                Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// `io_uring_enter` through the registered ring index when there is one (see `start`),
    /// else through the crate (by descriptor).
    ///
    /// # Safety
    /// As `Submitter::enter`: `arg` is what `flags` say it is, and the entries being submitted
    /// name memory that stays valid until their completions.
    #[inline]
    unsafe fn enter_raw<T>(
        &self,
        to_submit: u32,
        min_complete: u32,
        flags: u32,
        arg: Option<&T>,
    ) -> io::Result<usize> {
        let Some((index, _)) = self.ring_index else {
            // SAFETY: the caller's contract.
            return unsafe {
                self.ring
                    .submitter()
                    .enter(to_submit, min_complete, flags, arg)
            };
        };
        let (ptr, size) = match arg {
            Some(a) => (
                (a as *const T).cast::<libc::c_void>(),
                std::mem::size_of::<T>(),
            ),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: the caller's contract; `index` names this ring in this thread's table (the
        // ring is single-issuer: only the thread that registered it enters it).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                index as libc::c_long,
                to_submit as libc::c_long,
                min_complete as libc::c_long,
                (flags | ENTER_REGISTERED_RING) as libc::c_long,
                ptr,
                size,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// Turns the completions in the queue into events.
    fn reap(&mut self, out: &mut Vec<Event>) {
        // Copied out of the queue in batches (completing one needs `&mut self`), into a
        // buffer kept between calls: nothing to zero or allocate per reap.
        let mut batch = std::mem::take(&mut self.cqes);
        loop {
            batch.clear();
            {
                let mut cq = self.ring.completion();
                for c in &mut cq {
                    batch.push((c.user_data(), c.result(), c.flags()));
                    if batch.len() == CQE_BATCH {
                        break;
                    }
                }
            }
            for &(u, res, flags) in &batch {
                self.complete(u, res, flags, out);
            }
            if batch.len() < CQE_BATCH {
                break;
            }
        }
        self.cqes = batch;
        for slot in self.accept_ready.drain(..) {
            out.push(Event::Accept(slot));
        }
        // Control messages (a stats flush) after every completion of the batch: what the
        // kernel finished before the wake-up is accounted before the worker answers.
        if std::mem::take(&mut self.woken) {
            out.push(Event::Wake);
        }
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32, out: &mut Vec<Event>) {
        match u >> TAG_SHIFT {
            TAG_OP => self.op_done((u & LOW) as u32, res, flags, out),
            TAG_ACCEPT => self.accepted(u & LOW, res),
            TAG_WAKE => {
                self.wake_armed = false;
                self.woken = true;
                if !self.draining {
                    self.arm_wake();
                }
            }
            _ => {
                // A cancel or close that failed (the op had completed already, or the
                // descriptor was gone): nothing to do. A provided buffer never rides on these.
                if let Some((b, _)) =
                    cqueue::buffer_select(flags).and_then(|bid| self.take_provided(bid))
                {
                    self.pool.release(b);
                }
            }
        }
    }

    /// An accept completed.
    fn accepted(&mut self, key: u64, res: i32) {
        let (a, slot, gen) = (
            (key & 0xff_ffff) as u32,
            ((key >> 24) & 0xffff) as usize,
            (key >> 40) as u16,
        );
        self.accepts_in_flight = self.accepts_in_flight.saturating_sub(1);
        let peer = if res >= 0 {
            self.args.accepted_peer(a)
        } else {
            None
        };
        self.args.release(a);
        // SAFETY: on success the kernel just installed this descriptor for us: we own it.
        let fd = (res >= 0).then(|| unsafe { OwnedFd::from_raw_fd(res) });
        if let Some(r) = self
            .retired
            .iter_mut()
            .find(|r| r.slot == slot && r.gen == gen)
        {
            // A removed listener's accept that completed before its cancellation: the
            // kernel took the connection off the queue, so it is served here.
            r.armed = r.armed.saturating_sub(1);
            if let (Some(fd), Some(p)) = (fd, peer) {
                r.queue.push_back((fd, p));
            }
            if !self.accept_ready.contains(&slot) {
                self.accept_ready.push(slot);
            }
            return;
        }
        let Some(Some(l)) = self.listeners.get_mut(slot) else {
            return; // an unknown listener's connection: `fd` drops (closes) here
        };
        if l.gen != gen {
            return;
        }
        l.armed = l.armed.saturating_sub(1);
        match (fd, res) {
            (Some(fd), _) => match peer {
                Some(p) => l.queue.push_back((fd, p)),
                None => l.error = Some(libc::EAFNOSUPPORT),
            },
            (None, r) if r == -libc::ECANCELED => {}
            (None, r) => {
                l.error = Some(-r);
                // The other accepts are cancelled and armed afresh when the worker asks
                // again: accepts wait with exclusive wake-ups, and the connection this one
                // could not take stays queued without waking another waiter.
                if l.armed > 0 {
                    let fd = l.sock.as_raw_fd();
                    self.push(
                        opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                            .build()
                            .flags(squeue::Flags::SKIP_SUCCESS)
                            .user_data(ud(TAG_IGNORE, 0)),
                    );
                }
                if matches!(
                    -r,
                    libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
                ) {
                    self.descriptors_exhausted();
                }
            }
        }
        if !self.accept_ready.contains(&slot) {
            self.accept_ready.push(slot);
        }
    }

    /// An op completed: deliver its `Done`, or give back what it carried if nobody wants it.
    fn op_done(&mut self, idx: u32, res: i32, flags: u32, out: &mut Vec<Event>) {
        let (provided, res) = match cqueue::buffer_select(flags).and_then(|b| self.take_provided(b))
        {
            Some((b, true)) if res > 0 => {
                // Its pages were given back while the kernel may have been writing into it
                // (`bufring` module doc): its bytes may be zeros. The receive fails instead,
                // and the session closes the connection as on any receive error.
                self.pool.release(b);
                self.tainted_receive();
                (None, -libc::EIO)
            }
            Some((b, _)) => (Some(b), res),
            None => (None, res),
        };
        let Some(op) = self.ops.get_mut(idx as usize) else {
            if let Some(b) = provided {
                self.pool.release(b);
            }
            return;
        };
        if op.orphan {
            let detached_watch = matches!(op.kind, Kind::Watch)
                && self
                    .conns
                    .get(op.conn as usize)
                    .is_some_and(|c| c.watch == idx && c.sock.is_some());
            if detached_watch && res != -libc::EAGAIN && res != -libc::EINTR {
                // Kept for the connection's next receive: bytes (or an EOF) it took are the
                // response's (or what makes the connection unusable).
                op.kind = Kind::WatchFired { buf: provided, res };
                return;
            }
            if detached_watch {
                if let Some(b) = provided {
                    self.pool.release(b);
                }
                return self.resubmit(idx);
            }
            let op = self.ops.remove(idx as usize);
            if let Some(b) = provided {
                self.pool.release(b);
            }
            self.unslot(op.conn, idx);
            return self.recycle(op.kind);
        }
        let conn = op.conn;
        // Retry cases: the op stays in its slot.
        match (&op.kind, res) {
            (&Kind::RecvProvided { new, .. }, r) if r == -libc::ENOBUFS && provided.is_none() => {
                op.kind = Kind::RecvProvided { starved: true, new };
                self.buffer_waits += 1;
                if new {
                    self.starved_new.push_back((conn, idx));
                    self.bufring_new.starved();
                    if !self.pool.above_reserve() {
                        self.reserve_waits += 1;
                    }
                } else {
                    self.starved.push_back((conn, idx));
                    self.bufring.starved();
                }
                return;
            }
            (Kind::RecvProvided { .. } | Kind::Recv(_), r)
                if r == -libc::EAGAIN || r == -libc::EINTR =>
            {
                if let Some(b) = provided {
                    self.pool.release(b);
                }
                return self.resubmit(idx);
            }
            (Kind::SpliceOut(..), r) if r >= 0 => {
                if let Some(done) = self.splice_out_ready(idx) {
                    out.push(Event::Done(conn, done));
                }
                return;
            }
            (Kind::Watch, r) if r == -libc::EAGAIN || r == -libc::EINTR => {
                if let Some(b) = provided {
                    self.pool.release(b);
                }
                return self.resubmit(idx);
            }
            _ => {}
        }
        let op = self.ops.remove(idx as usize);
        self.unslot(conn, idx);
        let done = match op.kind {
            Kind::RecvProvided { .. } => recv_provided_done(res, provided, &mut self.pool),
            Kind::Recv(mut b) => {
                let res = match res {
                    0 => Xfer::Eof,
                    n if n > 0 => {
                        b.fill(n as usize);
                        Xfer::Bytes(n as u32)
                    }
                    e => Xfer::Failed(-e),
                };
                Done::Recv { buf: Some(b), res }
            }
            Kind::Send(a, args, bi) => {
                if args != NONE {
                    self.args.release(args);
                }
                Done::Send {
                    a: a.buf,
                    b: self.aside.try_remove(bi as usize).map(|s| s.buf),
                    res: xfer(res),
                }
            }
            Kind::SpliceOut(pipe, _) => Done::SpliceOut {
                pipe,
                res: xfer(res),
            },
            Kind::Shutdown => Done::Shutdown(xfer(res)),
            // `res`: the poll's revents (readable, hung up or an error: the next read says).
            Kind::Readable => Done::Readable(if res >= 0 {
                Xfer::Bytes(1)
            } else {
                Xfer::Failed(-res)
            }),
            Kind::Connect(args) => {
                self.args.release(args);
                Done::Connect(xfer(res))
            }
            Kind::Watch => watch_done(res, provided, &mut self.pool),
            // Never in flight (kept out of `ops_done` by the orphan path).
            Kind::WatchFired { buf, res } => watch_done(res, buf, &mut self.pool),
        };
        out.push(Event::Done(conn, done));
    }

    /// Submits a (receive) op again after a spurious `EAGAIN`.
    fn resubmit(&mut self, idx: u32) {
        let Some(op) = self.ops.get_mut(idx as usize) else {
            return;
        };
        let Some(t) = self
            .conns
            .get(op.conn as usize)
            .and_then(|c| c.target(op.conn, self.fixed_fds.len()))
        else {
            return;
        };
        let e = match &mut op.kind {
            Kind::Recv(b) => {
                let spare = self.pool.spare(b);
                let (p, len) = (spare.as_mut_ptr(), spare.len() as u32);
                on_target!(t, |f| opcode::Recv::new(f, p, len).build())
            }
            Kind::RecvProvided { new, .. } => Self::recv_provided_entry(t, *new),
            _ => return,
        };
        self.push(e.user_data(ud(TAG_OP, u64::from(idx))));
    }

    /// A receive delivered a tainted ring buffer and was failed: both rings stop giving lent
    /// buffers' pages back (the one that saw the head move already did), and the first such
    /// receive is logged.
    #[cold]
    fn tainted_receive(&mut self) {
        self.bufring.set_idle_trim(false);
        self.bufring_new.set_idle_trim(false);
        self.tainted_receives += 1;
        if self.tainted_receives == 1 {
            log::warn!(
                "io_uring: a receive landed in a lent buffer whose pages were being given back \
                 (the kernel ran it on its worker threads); its bytes may be lost, so it fails \
                 (EIO) and its connection closes; lent buffers keep their pages from now on"
            );
        }
    }

    /// The ring buffer a completion names (buffer id `bid`, of either ring), and whether it is
    /// tainted (see `bufring`).
    #[inline]
    fn take_provided(&mut self, bid: u16) -> Option<(Buf, bool)> {
        if self.bufring.owns(bid) {
            self.bufring.take(bid)
        } else {
            self.bufring_new.take(bid)
        }
    }

    /// A waiting `SpliceOut`'s socket became writable: splice now, or wait again.
    fn splice_out_ready(&mut self, idx: u32) -> Option<Done> {
        let op = self.ops.get(idx as usize)?;
        let conn = op.conn;
        let Kind::SpliceOut(pipe, len) = &op.kind else {
            return None;
        };
        let c = self.conns.get(conn as usize)?;
        let (sock, t) = (c.sock.as_ref()?, c.target(conn, self.fixed_fds.len())?);
        match splice_drain(pipe, sock, *len) {
            Some(res) => {
                let op = self.ops.remove(idx as usize);
                self.unslot(conn, idx);
                match op.kind {
                    Kind::SpliceOut(pipe, _) => Some(Done::SpliceOut { pipe, res }),
                    _ => None,
                }
            }
            None => {
                let e = poll_out(t);
                self.push(e.user_data(ud(TAG_OP, u64::from(idx))));
                None
            }
        }
    }
}

/// An accept's user data: its argument entry, listener slot and generation.
#[inline]
fn accept_key(slot: usize, gen: u16, args: u32) -> u64 {
    (u64::from(gen) << 40) | ((slot as u64 & 0xffff) << 24) | (u64::from(args) & 0xff_ffff)
}

#[inline]
fn xfer(res: i32) -> Xfer {
    if res >= 0 {
        Xfer::Bytes(res as u32)
    } else {
        Xfer::Failed(-res)
    }
}

/// The `Done` of a provided-buffer receive that completed with `res` (and the ring buffer the
/// kernel picked, if any).
#[inline]
fn recv_provided_done(res: i32, provided: Option<Buf>, pool: &mut BufferPool) -> Done {
    match (res, provided) {
        (n, Some(mut b)) if n > 0 => {
            b.fill(n as usize);
            Done::Recv {
                buf: Some(b),
                res: Xfer::Bytes(n as u32),
            }
        }
        (n, b) => {
            if let Some(b) = b {
                pool.release(b);
            }
            Done::Recv {
                buf: None,
                res: match n {
                    0 => Xfer::Eof,
                    n if n < 0 => Xfer::Failed(-n),
                    // Bytes without a buffer: the kernel broke its word.
                    _ => Xfer::Failed(libc::EIO),
                },
            }
        }
    }
}

/// The `Done` of a watch whose receive completed with `res`: bytes (consumed: a watched
/// connection is not read after its watch fired), EOF or a failure. `ENOBUFS`: bytes arrived
/// while the ring was empty.
#[inline]
fn watch_done(res: i32, provided: Option<Buf>, pool: &mut BufferPool) -> Done {
    if let Some(b) = provided {
        pool.release(b);
    }
    Done::Watch(match res {
        0 => Xfer::Eof,
        r if r > 0 || r == -libc::ENOBUFS => Xfer::Bytes(1),
        r => Xfer::Failed(-r),
    })
}

#[inline]
fn poll_out(t: Target) -> squeue::Entry {
    on_target!(t, |f| opcode::PollAdd::new(f, libc::POLLOUT as u32).build())
}

#[inline]
fn poll_in(t: Target) -> squeue::Entry {
    on_target!(t, |f| opcode::PollAdd::new(
        f,
        (libc::POLLIN | libc::POLLRDHUP) as u32
    )
    .build())
}

/// Pipe → socket, non-blocking: `None` when the socket cannot take bytes now.
fn splice_drain(pipe: &Pipe, sock: &OwnedFd, len: u32) -> Option<Xfer> {
    for _ in 0..EINTR_RETRIES {
        match splice::drain(pipe, sock.as_fd(), len as usize) {
            Ok(n) => return Some(Xfer::Bytes(n as u32)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Some(Xfer::failed(&e)),
        }
    }
    None
}

/// Bytes `[off, off + len)` of a slice's buffer, clamped to its pending data.
#[inline]
fn slice_ptr(pool: &BufferPool, s: &Slice) -> (*const u8, usize) {
    let d = pool.data(&s.buf);
    let start = (s.off as usize).min(d.len());
    let end = (s.off as usize + s.len as usize).min(d.len());
    (d[start..].as_ptr(), end - start)
}

/// Gives back the unused capacity of a table (past its highest entry in use) when that is
/// worth a copy ([`crate::heap::slack_worth_giving_back`]: a quarter or more unused, and at
/// least 64 KiB), down to no less than its start-up size. After a burst only (rate-limited
/// by the worker): the next connections grow it again. Whether it shrank.
fn shrink_table<T>(t: &mut Slab<T>) -> bool {
    const KEEP: usize = 1024;
    let before = t.capacity();
    if !crate::heap::slack_worth_giving_back(t.len(), before, std::mem::size_of::<T>(), KEEP) {
        return false;
    }
    t.shrink_to_fit();
    if t.capacity() < KEEP {
        t.reserve(KEEP - t.len());
    }
    t.capacity() < before
}

/// The `Done` of an op submitted on a connection that does not exist (or is closed, or whose
/// slot is taken): a failure that gives back what the op carried.
#[inline]
fn failed(op: Op) -> Done {
    super::failed(op, libc::EBADF)
}

impl Engine for UringEngine {
    fn poll(&mut self, timeout: Duration, out: &mut Vec<Event>) -> io::Result<()> {
        if !self.started {
            self.start()?;
        }
        self.reap_dead();
        self.refill();
        self.flush_backlog();
        let ready = !out.is_empty() || !self.ring.completion().is_empty();
        self.enter(!ready && !timeout.is_zero(), timeout)?;
        self.reap(out);
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
        listener.set_nonblocking(true)?;
        if self.listeners.len() <= slot {
            self.listeners.resize_with(slot + 1, || None);
        }
        self.next_listener_gen = self.next_listener_gen.wrapping_add(1);
        self.listeners[slot] = Some(Listener {
            sock: listener,
            gen: self.next_listener_gen,
            armed: 0,
            credit: ACCEPT_CREDIT_START,
            queue: VecDeque::new(),
            error: None,
        });
        self.arm_accepts(slot);
        Ok(())
    }

    fn remove_listener(&mut self, slot: usize) {
        let Some(l) = self.listeners.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let fd = l.sock.into_raw_fd();
        if l.armed > 0 {
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(ud(TAG_IGNORE, 0));
            self.push(e);
        }
        // Closed through the ring, after the entries that name it. The accepted sockets not
        // taken yet, and those of accepts that complete before the cancellation, are still
        // handed to the worker.
        let e = opcode::Close::new(types::Fd(fd))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(TAG_IGNORE, 0));
        self.push(e);
        if l.armed > 0 || !l.queue.is_empty() {
            if !l.queue.is_empty() && !self.accept_ready.contains(&slot) {
                self.accept_ready.push(slot);
            }
            self.retired.push(Retired {
                slot,
                gen: l.gen,
                armed: l.armed,
                queue: l.queue,
            });
        }
    }

    fn retiring(&self) -> bool {
        !self.retired.is_empty()
    }

    fn accept(&mut self, slot: usize) -> Accepted {
        if let Some(i) = self.retired.iter().position(|r| r.slot == slot) {
            let r = &mut self.retired[i];
            match r.queue.pop_front() {
                Some((fd, peer)) => {
                    return match self.insert(fd) {
                        Ok(id) => Accepted::Conn(id, peer),
                        Err(e) => Accepted::Failed(e),
                    }
                }
                None if r.armed == 0 => {
                    self.retired.swap_remove(i);
                }
                None => {}
            }
        }
        let Some(Some(l)) = self.listeners.get_mut(slot) else {
            return Accepted::Empty;
        };
        let Some((fd, peer)) = l.queue.pop_front() else {
            if let Some(e) = l.error.take() {
                return Accepted::Failed(io::Error::from_raw_os_error(e));
            }
            if l.armed == 0 {
                // Every accept in the kernel was used: demand is high, keep more armed.
                l.credit = (l.credit * 2).min(ACCEPT_CREDIT_MAX);
            }
            self.arm_accepts(slot);
            return Accepted::Empty;
        };
        match self.insert(fd) {
            Ok(id) => Accepted::Conn(id, peer),
            Err(e) => Accepted::Failed(e),
        }
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.nonblocking().cloexec(),
            None,
        )
        .inspect_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                self.descriptors_exhausted();
            }
        })?;
        sock.set_nodelay(true)?;
        let fd: OwnedFd = sock.into();
        let id = self.insert(fd)?;
        let fixed = self.fixed_fds.len();
        let Some(t) = self
            .conns
            .get(id as usize)
            .and_then(|c| c.target(id, fixed))
        else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let a = self.args.alloc();
        let (sa, len) = self.args.sockaddr(a, addr);
        let e = on_target!(t, |f| opcode::Connect::new(f, sa, len).build());
        self.start_op(id, Slot::Write, Kind::Connect(a), e);
        Ok(id)
    }

    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done> {
        let fixed = self.fixed_fds.len();
        let Some(c) = self.conns.get_mut(conn as usize) else {
            return Some(failed(op));
        };
        let Some(t) = c.target(conn, fixed) else {
            return Some(failed(op));
        };
        if c.watch != NONE && matches!(op, Op::Recv(Some(_)) | Op::SpliceIn { .. } | Op::Readable) {
            // A detached watch is a receive still armed: only a provided-buffer receive may
            // take it over (a reused connection's first read is one), any other read could
            // race it for the same bytes. Fail safe rather than lose or reorder them.
            return Some(super::failed(op, libc::EIO));
        }
        match op {
            Op::Recv(None) | Op::RecvNew => {
                if c.read != NONE {
                    return Some(failed(op));
                }
                if c.watch != NONE {
                    // A pooled connection reused: its detached watch is the receive this asks
                    // for (see the module doc).
                    let idx = std::mem::replace(&mut c.watch, NONE);
                    if let Some(op) = self.ops.get_mut(idx as usize) {
                        match std::mem::replace(&mut op.kind, Kind::Shutdown) {
                            Kind::WatchFired { buf, res } if res != -libc::ENOBUFS => {
                                self.ops.remove(idx as usize);
                                return Some(recv_provided_done(res, buf, &mut self.pool));
                            }
                            Kind::WatchFired { buf, .. } => {
                                // Bytes came while the ring was empty: receive them now.
                                if let Some(b) = buf {
                                    self.pool.release(b);
                                }
                                self.ops.remove(idx as usize);
                            }
                            _ => {
                                // Still in the kernel: it now completes as this receive.
                                // (Its entry is of the ring of work in progress.)
                                op.kind = Kind::RecvProvided {
                                    starved: false,
                                    new: false,
                                };
                                op.orphan = false;
                                c.read = idx;
                                return None;
                            }
                        }
                    }
                }
                let new = matches!(op, Op::RecvNew);
                let e = Self::recv_provided_entry(t, new);
                let kind = Kind::RecvProvided {
                    starved: false,
                    new,
                };
                self.start_op(conn, Slot::Read, kind, e);
                None
            }
            Op::Recv(Some(mut b)) => {
                if c.read != NONE {
                    return Some(failed(Op::Recv(Some(b))));
                }
                let spare = self.pool.spare(&mut b);
                let (p, len) = (spare.as_mut_ptr(), spare.len());
                if len == 0 {
                    return Some(Done::Recv {
                        buf: Some(b),
                        res: Xfer::Bytes(0),
                    });
                }
                // SAFETY (of the pointer handed over): the spare tail of `b`, which travels
                // inside the op until its completion; the pool region never moves.
                let e = on_target!(t, |f| opcode::Recv::new(f, p, len as u32).build());
                self.start_op(conn, Slot::Read, Kind::Recv(b), e);
                None
            }
            Op::Send(a, b) => {
                if c.write != NONE {
                    return Some(failed(Op::Send(a, b)));
                }
                let first = slice_ptr(&self.pool, &a);
                let second = b.as_ref().map(|s| slice_ptr(&self.pool, s));
                let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
                let (e, args) = match second {
                    Some(second) if second.1 > 0 => {
                        let i = self.args.alloc();
                        let msg = self.args.sendmsg(i, first, second);
                        (
                            on_target!(t, |f| opcode::SendMsg::new(f, msg)
                                .flags(flags as u32)
                                .build()),
                            i,
                        )
                    }
                    _ => {
                        if first.1 == 0 {
                            return Some(Done::Send {
                                a: a.buf,
                                b: b.map(|s| s.buf),
                                res: Xfer::Bytes(0),
                            });
                        }
                        (
                            on_target!(t, |f| opcode::Send::new(f, first.0, first.1 as u32)
                                .flags(flags)
                                .build()),
                            NONE,
                        )
                    }
                };
                let bi = b.map_or(NONE, |s| self.aside.insert(s) as u32);
                self.start_op(conn, Slot::Write, Kind::Send(a, args, bi), e);
                None
            }
            // Never waits (see the module doc): `Bytes(0)` when nothing can move now.
            Op::SpliceIn {
                pipe,
                piped,
                max,
                forward,
            } => {
                let Some(sock) = c.sock.as_ref() else {
                    return Some(Done::SpliceIn {
                        pipe,
                        res: Xfer::Failed(libc::EBADF),
                        sent: 0,
                    });
                };
                for _ in 0..EINTR_RETRIES {
                    let res = match splice::fill(sock.as_fd(), &pipe, max as usize) {
                        Ok(0) => Xfer::Eof,
                        Ok(n) => Xfer::Bytes(n as u32),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => Xfer::Bytes(0),
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => Xfer::failed(&e),
                    };
                    let sent = match (forward, res) {
                        (Some(to), Xfer::Bytes(n)) if n > 0 => self.forward(to, &pipe, piped + n),
                        _ => 0,
                    };
                    return Some(Done::SpliceIn { pipe, res, sent });
                }
                Some(Done::SpliceIn {
                    pipe,
                    res: Xfer::Bytes(0),
                    sent: 0,
                })
            }
            Op::SpliceOut { pipe, len } => {
                if c.write != NONE {
                    return Some(failed(Op::SpliceOut { pipe, len }));
                }
                let Some(sock) = c.sock.as_ref() else {
                    return Some(failed(Op::SpliceOut { pipe, len }));
                };
                match splice_drain(&pipe, sock, len) {
                    Some(res) => Some(Done::SpliceOut { pipe, res }),
                    None => {
                        let e = poll_out(t);
                        self.start_op(conn, Slot::Write, Kind::SpliceOut(pipe, len), e);
                        None
                    }
                }
            }
            Op::Readable => {
                if c.read != NONE {
                    return Some(failed(Op::Readable));
                }
                let e = poll_in(t);
                self.start_op(conn, Slot::Read, Kind::Readable, e);
                None
            }
            Op::Shutdown => {
                if c.write != NONE {
                    return Some(failed(Op::Shutdown));
                }
                let e = on_target!(t, |f| opcode::Shutdown::new(f, libc::SHUT_WR).build());
                self.start_op(conn, Slot::Write, Kind::Shutdown, e);
                None
            }
            Op::Watch => {
                if c.read != NONE {
                    return Some(failed(Op::Watch));
                }
                if c.watch != NONE {
                    // The detached watch: take it back (or what it got, if it fired).
                    let idx = std::mem::replace(&mut c.watch, NONE);
                    let fired = match self.ops.get_mut(idx as usize) {
                        Some(op) if matches!(op.kind, Kind::WatchFired { .. }) => true,
                        Some(op) => {
                            c.read = idx;
                            op.orphan = false;
                            return None;
                        }
                        None => false,
                    };
                    if fired {
                        if let Kind::WatchFired { buf, res } = self.ops.remove(idx as usize).kind {
                            return Some(watch_done(res, buf, &mut self.pool));
                        }
                    }
                }
                let e = Self::recv_provided_entry(t, false);
                self.start_op(conn, Slot::Read, Kind::Watch, e);
                None
            }
        }
    }

    fn cancel(&mut self, conn: ConnId, slot: Slot) {
        let Some(c) = self.conns.get_mut(conn as usize) else {
            return;
        };
        let idx = match slot {
            Slot::Read => std::mem::replace(&mut c.read, NONE),
            Slot::Write => std::mem::replace(&mut c.write, NONE),
        };
        if idx == NONE {
            return;
        }
        if let Some(op) = self.ops.get_mut(idx as usize) {
            if matches!(op.kind, Kind::Watch) && c.watch == NONE {
                // Detach (see the module doc): no cancel, no completion delivered.
                op.orphan = true;
                c.watch = idx;
                return;
            }
        }
        self.orphan(idx);
    }

    fn close(&mut self, conn: ConnId, linger: Linger) {
        let Some(c) = self.conns.get_mut(conn as usize) else {
            return;
        };
        let Some(sock) = c.sock.take() else {
            return;
        };
        let fixed = (conn as usize) < self.fixed_fds.len();
        let ops = [
            std::mem::replace(&mut c.read, NONE),
            std::mem::replace(&mut c.write, NONE),
            std::mem::replace(&mut c.watch, NONE),
        ];
        for idx in ops {
            if idx != NONE {
                if let Some(op) = self.ops.get_mut(idx as usize) {
                    // A detached watch is marked orphan already but still armed.
                    op.orphan = false;
                }
                self.orphan(idx);
            }
        }
        if linger == Linger::Reset {
            let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
        }
        if fixed {
            // The table's reference goes first (the socket lives until both are gone; the
            // ops cancelled above hold their own until they complete).
            let e = opcode::Close::new(types::Fixed(conn))
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(ud(TAG_IGNORE, 0));
            self.push(e);
        }
        let e = opcode::Close::new(types::Fd(sock.into_raw_fd()))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(TAG_IGNORE, 0));
        self.push(e);
        self.dead.push(conn);
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn addrs(&self, conn: ConnId) -> Option<(SocketAddr, SocketAddr)> {
        let sock = socket2::SockRef::from(self.conns.get(conn as usize)?.sock.as_ref()?);
        Some((
            sock.peer_addr().ok()?.as_socket()?,
            sock.local_addr().ok()?.as_socket()?,
        ))
    }

    fn take_buffer_waits(&mut self) -> u64 {
        std::mem::take(&mut self.buffer_waits)
    }

    fn take_reserve_waits(&mut self) -> u64 {
        std::mem::take(&mut self.reserve_waits)
    }

    /// The rings lend fewer when receives slowed down; then the pool; then the pages of the
    /// lent buffers no receive took for a whole interval (they stay lent).
    fn trim(&mut self) -> crate::io::buffer::Trimmed {
        self.bufring.shrink();
        self.bufring_new.shrink();
        let mut done = self.pool.trim();
        if self.started {
            for new in [false, true] {
                let limit = crate::io::buffer::TRIM_BATCH.saturating_sub(done.buffers);
                let ring = if new {
                    &mut self.bufring_new
                } else {
                    &mut self.bufring
                };
                let t = ring.give_back_idle(&self.ring, &mut self.pool, limit);
                done.buffers += t.buffers;
                done.bytes += t.bytes;
            }
        }
        if !self.bufring.idle_trim() || !self.bufring_new.idle_trim() {
            // One ring saw its head move in the window (or the kernel refused the status
            // read): the other stops too.
            self.bufring.set_idle_trim(false);
            self.bufring_new.set_idle_trim(false);
        }
        done
    }

    /// The op and connection tables give back the capacity a burst's high tide left unused
    /// (the allocator reuses freed pages for new capacity, so that capacity is resident
    /// although never written). The worker purges the heap next.
    fn shrink_tables(&mut self) -> bool {
        let ops = shrink_table(&mut self.ops);
        let conns = shrink_table(&mut self.conns);
        ops || conns
    }

    fn warm_buffers(&mut self) -> usize {
        self.pool
            .warm()
            .saturating_sub(self.bufring.cold() + self.bufring_new.cold())
    }

    fn gauges(&self) -> Gauges {
        let lent = (self.bufring.lent() + self.bufring_new.lent()) as u64;
        Gauges {
            engine: "io_uring",
            connections: (self.conns.len() - self.dead.len()) as u64,
            ops_in_flight: self.ops.len() as u64,
            buffers_in_use: (self.pool.in_use() as u64).saturating_sub(lent),
            buffers_provided: lent,
            pipes_in_use: self.pipes.in_use() as u64,
            pipes_idle: self.pipes.idle() as u64,
            ..Gauges::default()
        }
    }
}

impl Drop for UringEngine {
    /// Cancels everything in flight and waits (bounded) until the kernel has given back every
    /// buffer and argument entry, so the pool is never freed under a pending op.
    fn drop(&mut self) {
        if !self.started {
            // Never enabled: nothing reached the kernel.
            return;
        }
        self.draining = true;
        for (_, op) in self.ops.iter_mut() {
            op.orphan = true;
        }
        // Ops with nothing in the kernel end at once.
        let idle: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, op)| {
                matches!(
                    op.kind,
                    Kind::RecvProvided { starved: true, .. } | Kind::WatchFired { .. }
                )
            })
            .map(|(i, _)| i)
            .collect();
        for i in idle {
            let op = self.ops.remove(i);
            self.recycle(op.kind);
        }
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(ud(TAG_IGNORE, 0));
        self.push(e);
        let until = Instant::now() + DRAIN_LIMIT;
        let mut sink = Vec::new();
        while (!self.ops.is_empty() || self.wake_armed || self.accepts_in_flight > 0)
            && Instant::now() < until
        {
            self.flush_backlog();
            if self.enter(true, Duration::from_millis(50)).is_err() {
                break;
            }
            self.reap(&mut sink);
            sink.clear();
        }
        let _ = self.ring.submit();
        let (ring, pool) = (&self.ring, &mut self.pool);
        self.bufring.unregister(ring, pool);
        self.bufring_new.unregister(ring, pool);
        // The table's references now, not when the ring's teardown gets to them: connections
        // still open close when their descriptors drop with the engine.
        if !self.fixed_fds.is_empty() {
            let _ = self.ring.submitter().unregister_files();
        }
        // The registered-ring table holds a reference to the ring: without this the ring
        // (and the buffers it pins) would live on until the thread exits. Only on the thread
        // that registered it: the table is per thread, and another thread's index is another
        // ring's.
        if let Some((index, thread)) = self.ring_index.take() {
            if thread == std::thread::current().id() {
                unregister_ring(self.ring.as_raw_fd(), index);
            }
        }
    }
}

/// Slots of the registered file table: as many as descriptors the process may have (the
/// kernel's limit too), at most [`FIXED_FILES_MAX`] and no more than connection ids.
fn fixed_table_size() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid `rlimit` for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let ids = token::FIRST_RESERVED.min(ConnId::MAX as usize) as u64;
    lim.rlim_cur.min(u64::from(FIXED_FILES_MAX)).min(ids) as u32
}

/// Registers ring descriptor `fd` in the calling thread's registered-ring table: its index,
/// or `None` if the kernel refuses (before 5.18, or the table is full).
fn register_ring(fd: RawFd) -> Option<u32> {
    // `offset` u32::MAX: the kernel picks the index.
    let mut up = RsrcUpdate {
        offset: u32::MAX,
        resv: 0,
        data: fd as u64,
    };
    // SAFETY: `up` is a valid `io_uring_rsrc_update` that outlives the call; one entry.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd as libc::c_long,
            REGISTER_RING_FDS as libc::c_long,
            (&mut up as *mut RsrcUpdate).cast::<libc::c_void>(),
            1 as libc::c_long,
        )
    };
    (r == 1).then_some(up.offset)
}

/// Takes index `index` out of the calling thread's registered-ring table (through ring `fd`).
fn unregister_ring(fd: RawFd, index: u32) {
    let mut up = RsrcUpdate {
        offset: index,
        resv: 0,
        data: 0,
    };
    // SAFETY: as in `register_ring`.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd as libc::c_long,
            UNREGISTER_RING_FDS as libc::c_long,
            (&mut up as *mut RsrcUpdate).cast::<libc::c_void>(),
            1 as libc::c_long,
        )
    };
}

/// `struct io_uring_rsrc_update` (kernel ABI).
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// An engine with one connection to a peer this test holds (`None` where the kernel
    /// refuses io_uring: nothing to test there).
    fn pair() -> Option<(UringEngine, ConnId, TcpStream)> {
        let setup = probe::probe(false).ok()?;
        let mut e =
            UringEngine::new(BufferPool::new(4096, 64), PipePool::new(4), setup).expect("engine");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let conn = e.connect(l.local_addr().expect("addr")).expect("connect");
        // The `CONNECT` goes to the kernel at the next poll.
        let d = next_done(&mut e, conn).expect("connected");
        assert!(matches!(d, Done::Connect(Xfer::Bytes(_))), "{d:?}");
        let (peer, _) = l.accept().expect("accept");
        Some((e, conn, peer))
    }

    /// With the registered file table (the engine started before the connection came),
    /// a connection's ops name its slot: bytes go both ways, and closing it lets go of the
    /// socket (the peer sees the end), i.e. the table's reference goes with it.
    #[test]
    fn fixed_file_connections_move_bytes_and_close() {
        let Ok(setup) = probe::probe(false) else {
            return;
        };
        let mut e =
            UringEngine::new(BufferPool::new(4096, 64), PipePool::new(4), setup).expect("engine");
        let mut out = Vec::new();
        e.poll(Duration::ZERO, &mut out).expect("poll");
        if e.fixed_fds.is_empty() {
            return; // the kernel refused the table: descriptors are named instead
        }
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let conn = e.connect(l.local_addr().expect("addr")).expect("connect");
        assert!((conn as usize) < e.fixed_fds.len(), "in the table");
        let d = next_done(&mut e, conn).expect("connected");
        assert!(matches!(d, Done::Connect(Xfer::Bytes(_))), "{d:?}");
        let (mut peer, _) = l.accept().expect("accept");
        peer.write_all(b"ping").expect("write");
        assert!(e.submit(conn, Op::Recv(None)).is_none());
        match next_done(&mut e, conn).expect("received") {
            Done::Recv {
                buf: Some(b),
                res: Xfer::Bytes(4),
            } => {
                assert_eq!(e.pool.data(&b), b"ping");
                e.pool.release(b);
            }
            d => panic!("{d:?}"),
        }
        let mut b = e.pool.checkout().expect("buffer");
        e.pool.spare(&mut b)[..4].copy_from_slice(b"pong");
        b.fill(4);
        let a = Slice {
            buf: b,
            off: 0,
            len: 4,
        };
        assert!(e.submit(conn, Op::Send(a, None)).is_none());
        match next_done(&mut e, conn).expect("sent") {
            Done::Send {
                a,
                b: None,
                res: Xfer::Bytes(4),
            } => e.pool.release(a),
            d => panic!("{d:?}"),
        }
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut peer, &mut got).expect("read");
        assert_eq!(&got, b"pong");
        e.close(conn, Linger::Graceful);
        settle(&mut e);
        peer.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let n = std::io::Read::read(&mut peer, &mut got).expect("the end, not a timeout");
        assert_eq!(n, 0, "the socket closed");
    }

    /// Polls until `conn`'s next `Done` (at most ~2 s).
    fn next_done(e: &mut UringEngine, conn: ConnId) -> Option<Done> {
        let mut out = Vec::new();
        for _ in 0..40 {
            e.poll(Duration::from_millis(50), &mut out).expect("poll");
            for ev in out.drain(..) {
                if let Event::Done(c, d) = ev {
                    if c == conn {
                        return Some(d);
                    }
                }
            }
        }
        None
    }

    fn settle(e: &mut UringEngine) {
        let mut out = Vec::new();
        for _ in 0..5 {
            e.poll(Duration::from_millis(20), &mut out).expect("poll");
        }
        assert!(out.is_empty(), "nothing delivered: {out:?}");
    }

    /// A watch (nothing to read yet), cancelled as a pooled connection's is when reused.
    fn detach_watch(e: &mut UringEngine, conn: ConnId) {
        assert!(e.submit(conn, Op::Watch).is_none(), "nothing to read yet");
        e.cancel(conn, Slot::Read);
    }

    /// Closes `conn` and checks the engine holds nothing any more.
    fn close_clean(e: &mut UringEngine, conn: ConnId, linger: Linger) {
        e.close(conn, linger);
        settle(e);
        let g = e.gauges();
        assert_eq!(
            (g.ops_in_flight, g.buffers_in_use, g.connections),
            (0, 0, 0)
        );
    }

    fn received(e: &mut UringEngine, done: Done) -> Vec<u8> {
        let Done::Recv {
            buf: Some(b),
            res: Xfer::Bytes(_),
        } = done
        else {
            panic!("bytes received: {done:?}")
        };
        let v = e.pool.data(&b).to_vec();
        e.pool.release(b);
        v
    }

    /// `Readable` waits for bytes, reads none of them (the next receive gets them all), and
    /// a wait cancelled by a close leaks nothing.
    #[test]
    fn readable_waits_for_bytes_and_leaves_them_to_read() {
        let Some((mut e, conn, mut peer)) = pair() else {
            return;
        };
        assert!(
            e.submit(conn, Op::Readable).is_none(),
            "nothing to read yet"
        );
        settle(&mut e);
        peer.write_all(b"later").expect("write");
        let d = next_done(&mut e, conn).expect("readable");
        assert!(matches!(d, Done::Readable(Xfer::Bytes(1))), "{d:?}");
        assert_eq!(e.gauges().buffers_in_use, 0, "no buffer taken");
        let d = match e.submit(conn, Op::Recv(None)) {
            Some(d) => d,
            None => next_done(&mut e, conn).expect("received"),
        };
        assert_eq!(received(&mut e, d), b"later");
        assert!(
            e.submit(conn, Op::Readable).is_none(),
            "drained: waits again"
        );
        close_clean(&mut e, conn, Linger::Reset);
    }

    /// `SpliceIn`'s forward: what came in goes on out to the other connection in the same
    /// call; forwarded to a connection that is not there, it stays in the pipe.
    #[test]
    fn a_splice_in_forwards_what_came_in_to_the_other_connection() {
        use std::io::Read;
        let Some((mut e, a, mut pa)) = pair() else {
            return;
        };
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = e.connect(l.local_addr().expect("addr")).expect("connect");
        let d = next_done(&mut e, b).expect("connected");
        assert!(matches!(d, Done::Connect(Xfer::Bytes(_))), "{d:?}");
        let (mut pb, _) = l.accept().expect("accept");
        let splice_in = |e: &mut UringEngine, pipe, forward| {
            crate::engine::testing::splice_in_until(e, a, pipe, forward, |e| next_done(e, a))
        };
        let pipe = e.pools().1.get().expect("pipe");
        pa.write_all(b"through").expect("write");
        let (p, res, sent) = splice_in(&mut e, pipe, Some(b));
        assert_eq!((res, sent), (Xfer::Bytes(7), 7));
        let mut got = [0u8; 7];
        pb.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"through");
        pa.write_all(b"again").expect("write");
        let (p, res, sent) = splice_in(&mut e, p, Some(999));
        assert_eq!((res, sent), (Xfer::Bytes(5), 0), "no such connection");
        let d = match e.submit(b, Op::SpliceOut { pipe: p, len: 5 }) {
            Some(d) => d,
            None => next_done(&mut e, b).expect("spliced out"),
        };
        let Done::SpliceOut {
            pipe,
            res: Xfer::Bytes(5),
        } = d
        else {
            panic!("{d:?}")
        };
        let mut got = [0u8; 5];
        pb.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"again");
        e.pools().1.put(pipe);
        e.close(b, Linger::Graceful);
        close_clean(&mut e, a, Linger::Graceful);
        assert_eq!(e.gauges().pipes_in_use, 0);
    }

    #[test]
    fn a_detached_watch_is_the_next_receive() {
        let Some((mut e, conn, mut peer)) = pair() else {
            return;
        };
        detach_watch(&mut e, conn);
        settle(&mut e);
        // The receive takes over the armed watch: no second entry, the bytes arrive in it.
        assert!(e.submit(conn, Op::Recv(None)).is_none());
        assert_eq!(e.ops.len(), 1, "one op in flight for the connection");
        peer.write_all(b"response").expect("write");
        let d = next_done(&mut e, conn).expect("the response");
        assert_eq!(received(&mut e, d), b"response");
        close_clean(&mut e, conn, Linger::Graceful);
    }

    #[test]
    fn a_detached_watch_that_fired_keeps_what_it_got_for_the_next_receive() {
        let Some((mut e, conn, mut peer)) = pair() else {
            return;
        };
        detach_watch(&mut e, conn);
        peer.write_all(b"early").expect("write");
        // The watch completes while detached: nothing is delivered, nothing is lost.
        settle(&mut e);
        let d = e.submit(conn, Op::Recv(None)).expect("at once");
        assert_eq!(received(&mut e, d), b"early");
        assert_eq!(e.gauges().ops_in_flight, 0);
        // An EOF kept the same way, and given to a watch re-attached instead.
        detach_watch(&mut e, conn);
        drop(peer);
        settle(&mut e);
        assert!(matches!(
            e.submit(conn, Op::Watch),
            Some(Done::Watch(Xfer::Eof))
        ));
        close_clean(&mut e, conn, Linger::Graceful);
    }

    #[test]
    fn closing_with_a_fired_detached_watch_leaks_nothing() {
        let Some((mut e, conn, mut peer)) = pair() else {
            return;
        };
        detach_watch(&mut e, conn);
        peer.write_all(b"unasked").expect("write");
        settle(&mut e);
        assert_eq!(e.gauges().buffers_in_use, 1, "the bytes wait in a buffer");
        close_clean(&mut e, conn, Linger::Reset);
    }

    /// The ring's lent buffers that no receive took for a whole trim interval give their
    /// pages back and stay lent; receives that take them afterwards get their bytes intact,
    /// and each one taken is warm again.
    #[test]
    fn idle_lent_buffers_give_their_pages_back_and_still_receive() {
        let Some((mut e, conn, mut peer)) = pair() else {
            return;
        };
        if !e.setup.defer_taskrun {
            return; // lent buffers keep their pages there (see `bufring`)
        }
        // The ring lent its first buffers at the first poll (in `pair`); the first trim only
        // marks them, the second finds them still untaken a whole interval later.
        let lent = e.bufring.lent();
        assert!(lent > 0);
        e.trim();
        assert_eq!(e.bufring.cold(), 0, "lent only just now");
        let t = e.trim();
        assert_eq!(e.bufring.cold(), lent, "{t:?}");
        assert_eq!(e.bufring_new.cold(), e.bufring_new.lent(), "{t:?}");
        assert!(t.bytes >= lent * 4096, "{t:?}");
        assert_eq!(e.warm_buffers(), 0, "nothing holds memory now");
        // Receives take the cold buffers in ring order: every byte arrives.
        for round in 0..lent + 4 {
            let msg: Vec<u8> = (0..1000).map(|i| (i * 7 + round * 13) as u8).collect();
            let got = receive_all(&mut e, conn, &mut peer, &msg);
            assert_eq!(got, msg, "round {round}");
            if round < 2 {
                assert!(
                    e.bufring.cold() < lent - round,
                    "round {round}: taken, warm again"
                );
            } else if round % 3 == 2 {
                // Trims between receives: the buffers lent since are marked, then given back.
                e.trim();
            }
        }
        assert!(e.bufring.cold() > 0, "given back again after the trims");
        close_clean(&mut e, conn, Linger::Reset);
    }

    /// A pair whose lent buffers were given back in a trim whose second head read reported
    /// `moved` buffers taken in the window (the test hook; as a receive on io-wq would), and
    /// how many buffers were lent. `None` where lent buffers keep their pages.
    fn given_back_in_window(moved: u16) -> Option<(UringEngine, ConnId, TcpStream, usize)> {
        let (mut e, conn, peer) = pair()?;
        if !e.setup.defer_taskrun {
            return None; // lent buffers keep their pages there (see `bufring`)
        }
        let lent = e.bufring.lent();
        assert!(lent > moved as usize);
        e.trim(); // marks the lent buffers
        e.bufring.fake_head_move = moved;
        let t = e.trim(); // gives them back; the head "moved" in the window
        assert_eq!(e.bufring.cold(), lent, "{t:?}");
        assert!(
            !e.bufring.idle_trim() && !e.bufring_new.idle_trim(),
            "both rings stop giving lent buffers' pages back"
        );
        Some((e, conn, peer, lent))
    }

    /// One receive of a small message written by the peer: its `Done`.
    fn receive_one(e: &mut UringEngine, conn: ConnId, peer: &mut TcpStream, msg: &[u8]) -> Done {
        peer.write_all(msg).expect("write");
        match e.submit(conn, Op::Recv(None)) {
            Some(d) => d,
            None => next_done(e, conn).expect("receive completed"),
        }
    }

    /// The peer writes `msg`; receives (each into a ring buffer) until as many bytes arrived:
    /// what they delivered.
    fn receive_all(e: &mut UringEngine, conn: ConnId, peer: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        peer.write_all(msg).expect("write");
        let mut got = Vec::new();
        while got.len() < msg.len() {
            let d = match e.submit(conn, Op::Recv(None)) {
                Some(d) => d,
                None => next_done(e, conn).expect("received"),
            };
            got.extend(received(e, d));
        }
        got
    }

    /// A receive that takes a buffer given back while the kernel may have been writing into it
    /// (its ring position passed by the head between the two head reads) fails with EIO: it
    /// never delivers bytes (which could be zeros where data was); the buffer goes back to the
    /// pool.
    #[test]
    fn a_receive_into_a_buffer_given_back_in_the_window_fails_rather_than_deliver_zeros() {
        let Some((mut e, conn, mut peer, _)) = given_back_in_window(3) else {
            return;
        };
        for round in 0..3u8 {
            let msg = vec![round + 1; 100];
            match receive_one(&mut e, conn, &mut peer, &msg) {
                Done::Recv {
                    buf: None,
                    res: Xfer::Failed(libc::EIO),
                } => {}
                d => panic!("round {round}: a tainted buffer's receive must fail: {d:?}"),
            }
        }
        assert_eq!(e.tainted_receives, 3);
        assert_eq!(e.bufring.tainted(), 0, "no buffer stays tainted");
        close_clean(&mut e, conn, Linger::Reset);
    }

    /// The buffers given back in the same call but outside the window (past the moved head)
    /// deliver their bytes intact, and so do the ones lent after; no trim gives lent buffers'
    /// pages back any more.
    #[test]
    fn buffers_given_back_outside_the_window_deliver_every_byte() {
        let Some((mut e, conn, mut peer, lent)) = given_back_in_window(2) else {
            return;
        };
        for round in 0..2u8 {
            let d = receive_one(&mut e, conn, &mut peer, &[round; 100]);
            assert!(
                matches!(
                    d,
                    Done::Recv {
                        buf: None,
                        res: Xfer::Failed(libc::EIO)
                    }
                ),
                "{d:?}"
            );
        }
        for round in 2..lent + 6 {
            let msg: Vec<u8> = (0..1000).map(|i| (i * 7 + round * 13) as u8 | 1).collect();
            let got = receive_all(&mut e, conn, &mut peer, &msg);
            assert_eq!(got, msg, "round {round}");
            if round % 3 == 0 {
                let cold = e.bufring.cold() + e.bufring_new.cold();
                let t = e.trim();
                assert!(e.bufring.cold() + e.bufring_new.cold() <= cold, "{t:?}");
            }
        }
        assert_eq!(e.tainted_receives, 2);
        assert_eq!(
            e.bufring.cold(),
            0,
            "the feature stays off: nothing given back again"
        );
        close_clean(&mut e, conn, Linger::Reset);
    }

    /// After a burst a table gives back the capacity past its highest entry in use, keeps
    /// every live key, and not below its start-up size; a table whose slack is small (under
    /// 64 KiB) is left alone.
    #[test]
    fn a_table_shrinks_after_a_burst_and_keeps_its_keys() {
        // 64 B entries, as large as the engine's (`InFlight` is up to 40 B, `Conn` more).
        let mut t: Slab<[u64; 8]> = Slab::with_capacity(1024);
        let keys: Vec<usize> = (0..5000u64).map(|i| t.insert([i; 8])).collect();
        for &k in &keys[1500..] {
            t.remove(k);
        }
        for &k in keys[..1500].iter().step_by(3) {
            t.remove(k);
        }
        let before = t.capacity();
        assert!(shrink_table(&mut t));
        assert!(t.capacity() < before / 2, "{} -> {}", before, t.capacity());
        for (i, &k) in keys[..1500].iter().enumerate() {
            assert_eq!(
                t.get(k).copied(),
                (i % 3 != 0).then_some([i as u64; 8]),
                "key {k}"
            );
        }
        // Freed keys are reused before the table grows again.
        let k = t.insert([9; 8]);
        assert!(k < 1500, "{k}");
        // Nothing more to give back: no copy.
        let cap = t.capacity();
        assert!(!shrink_table(&mut t));
        assert_eq!(t.capacity(), cap);
        // Small tables stay at their start-up size.
        let mut small: Slab<[u64; 8]> = Slab::with_capacity(1024);
        small.insert([1; 8]);
        assert!(!shrink_table(&mut small));
        assert!(small.capacity() >= 1024);
        // Small slack is not worth a copy: 8 B entries, ~56 KiB unused above the start-up size.
        let mut narrow: Slab<u64> = Slab::with_capacity(1024);
        let keys: Vec<usize> = (0..5000u64).map(|i| narrow.insert(i)).collect();
        for &k in &keys[10..] {
            narrow.remove(k);
        }
        let cap = narrow.capacity();
        assert!(!shrink_table(&mut narrow));
        assert_eq!(narrow.capacity(), cap);
    }

    /// Every idle connection's receive holds an op entry, as large as the largest kind: a
    /// two-slice send keeps its second slice aside.
    #[test]
    fn op_entries_stay_small() {
        use std::mem::size_of;
        assert!(
            size_of::<super::InFlight>() <= 40,
            "InFlight: {}",
            size_of::<super::InFlight>()
        );
        assert!(
            size_of::<super::Conn>() <= 16,
            "Conn: {}",
            size_of::<super::Conn>()
        );
    }
}
