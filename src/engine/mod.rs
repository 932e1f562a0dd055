//! The engine seam: what turns the sessions' wants into I/O, and I/O results back into
//! session input.
//!
//! Sessions never touch a socket. They ask for an [`Op`] on one of their connections
//! (receive into a buffer, send these bytes, splice, shut down) and later get a [`Done`] with
//! the result. Between the two the engine owns whatever the operation carries: the [`Buf`]s
//! to fill or send and the [`Pipe`] to splice through travel *inside* the op and come back
//! inside the `Done`, so a buffer the kernel may still write into can never be read, reused or
//! released by a session. That is the contract a completion engine (io_uring) needs, and a
//! readiness engine ([`mio`]) fulfils it trivially: it runs an op at once when the socket is
//! ready and parks it until the next readiness edge otherwise.
//!
//! Rules both engines keep (the sessions rely on them):
//! - a connection has at most one op in flight in each slot: the *read* slot (receive,
//!   splice in, readable, watch) and the *write* slot (send, splice out, shutdown, connect);
//! - `submit` may complete an op at once (`Some(Done)`), which is what makes the readiness
//!   engine as cheap as calling the syscall directly; otherwise the `Done` arrives later as an
//!   [`Event`];
//! - after [`Engine::close`] or [`Engine::cancel`] no `Done` for the cancelled ops is ever
//!   delivered: the engine returns their buffers and pipes to the pools itself, when the
//!   kernel has let go of them;
//! - a receive into an engine-provided buffer (`Op::Recv(None)`, `Op::RecvNew`) holds no
//!   buffer while it waits, so an idle connection holds none;
//! - `Op::RecvNew` (new work: the next request's head, a new connection's first bytes) takes a
//!   buffer only while the pool has more than its reserve free
//!   ([`BufferPool::checkout_new`]); a waiting `Recv(None)` (work in progress) is served
//!   before it. More waiting requests than buffers then slow down instead of stalling.
//!
//! HOT PATH: the trait's methods run per I/O; implementations allocate only when a table
//! grows past its high-water mark.

pub mod mio;
pub mod token;
/// The io_uring engine: the only module besides `sys` allowed `unsafe` (it hands the kernel
/// pointers into the buffer pool; each block says which invariant keeps them valid).
#[allow(unsafe_code)]
pub mod uring;

use crate::io::{Buf, BufferPool, Pipe, PipePool, Xfer};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A connection of the engine's (downstream or upstream). Dense: reused after close.
pub type ConnId = u32;

/// Bytes `[off, off + len)` of a buffer's pending data.
#[derive(Debug)]
pub struct Slice {
    pub buf: Buf,
    pub off: u32,
    pub len: u32,
}

impl Slice {
    /// The first `len` pending bytes of `buf`.
    #[inline]
    pub fn head(buf: Buf, len: usize) -> Slice {
        Slice {
            buf,
            off: 0,
            len: len as u32,
        }
    }
}

/// An operation a session asks for on one of its connections.
#[derive(Debug)]
pub enum Op {
    /// Read slot. Receive into the spare tail of this buffer (after its pending bytes), or,
    /// with `None`, into a buffer the engine takes from the pool when bytes arrive.
    Recv(Option<Buf>),
    /// Read slot. `Recv(None)` for new work (the next request's head, a new connection's
    /// first bytes): the engine takes the buffer only while the pool is above its reserve,
    /// and serves waiting `Recv(None)`s first. Completes as [`Done::Recv`].
    RecvNew,
    /// Write slot. Send the first slice, then the second, in one vectored write.
    Send(Slice, Option<Slice>),
    /// Read slot. Socket → pipe, at most `max` bytes, without waiting: `Bytes(0)` when nothing
    /// can move now (the socket is dry, or the pipe is full: `piped` bytes are in it already),
    /// so a quiet flow gives its pipe back instead of holding it.
    ///
    /// `forward: Some(c)`: when bytes arrive, the engine at once splices what the pipe then
    /// holds out to connection `c`, in the same call and without waiting, and says how much
    /// left the pipe in [`Done::SpliceIn`]'s `sent`. A socket that cannot take bytes now, or
    /// an error, moves nothing and is not reported: the session's next `SpliceOut` meets it.
    /// This saves a spliced body a session step per chunk. The session asks it only while
    /// `c`'s write slot is free, the worker only when both connections are plain (no
    /// transport in between), and an engine that cannot do it may ignore it (`sent: 0`).
    SpliceIn {
        pipe: Pipe,
        piped: u32,
        max: u32,
        forward: Option<ConnId>,
    },
    /// Write slot. Pipe → socket, `len` bytes.
    SpliceOut { pipe: Pipe, len: u32 },
    /// Write slot. Shut down the sending side (FIN).
    Shutdown,
    /// Read slot. Complete when the connection has bytes (or an EOF, or an error) to read,
    /// reading nothing and holding no buffer or pipe while it waits: a spliced body whose
    /// socket went dry waits with this, then takes a pipe and splices again (instead of
    /// continuing through buffers). Completes as [`Done::Readable`].
    Readable,
    /// Read slot. Complete when the connection becomes readable (bytes or EOF): an idle pooled
    /// upstream connection watches for its backend closing. What arrived may be consumed (the
    /// io_uring engine receives it): a connection is not read after its watch fired. A watch
    /// cancelled before it fired leaves the connection's next receive everything.
    Watch,
}

/// The result of an [`Op`] (or of [`Engine::connect`]), with what the op carried.
#[derive(Debug)]
pub enum Done {
    /// `buf`: the buffer the bytes went to (the session's own, or one the engine took from the
    /// pool); `None` when no bytes arrived into an engine-provided buffer.
    Recv {
        buf: Option<Buf>,
        res: Xfer,
    },
    /// The slices' buffers come back unchanged; `res` says how many bytes of the two slices
    /// (in order) were sent.
    Send {
        a: Buf,
        b: Option<Buf>,
        res: Xfer,
    },
    /// `sent`: bytes the op's `forward` moved on out of the pipe (after `res`'s came in).
    SpliceIn {
        pipe: Pipe,
        res: Xfer,
        sent: u32,
    },
    SpliceOut {
        pipe: Pipe,
        res: Xfer,
    },
    Shutdown(Xfer),
    /// The non-blocking connect started by [`Engine::connect`] finished.
    Connect(Xfer),
    Watch(Xfer),
    /// `Bytes(1)`: readable (what is there may also be an EOF or an error: the next read
    /// says); `Failed`: the wait itself failed.
    Readable(Xfer),
}

/// Which of a connection's two op slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Read,
    Write,
}

/// What a poll found.
#[derive(Debug)]
pub enum Event {
    /// An op of this connection completed.
    Done(ConnId, Done),
    /// Listener slot `i` may have connections to accept.
    Accept(usize),
    /// Another thread woke the worker (control messages).
    Wake,
}

/// The outcome of one accept.
#[derive(Debug)]
pub enum Accepted {
    Conn(ConnId, SocketAddr),
    /// Nothing (more) to accept now.
    Empty,
    /// This connection could not be accepted (the error says whether the process is out of
    /// descriptors).
    Failed(io::Error),
}

/// How a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// FIN after anything already written.
    Graceful,
    /// RST: the peer learns the connection broke, not that it ended.
    Reset,
}

/// What an engine holds now, for `/stats` (`engine` section) and leak checks: after every
/// connection closed, `connections`, `ops_in_flight`, `buffers_in_use` and `pipes_in_use`
/// return to zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// `"mio"` or `"io_uring"`.
    pub engine: &'static str,
    /// Open connections (downstream and upstream).
    pub connections: u64,
    /// Ops submitted and not completed (mio: parked ops; io_uring: ops the kernel holds,
    /// cancelled ones until their completion arrives).
    pub ops_in_flight: u64,
    /// Pool buffers held by sessions or in-flight ops.
    pub buffers_in_use: u64,
    /// Pool buffers lent to the kernel for receives into engine-provided buffers (io_uring).
    pub buffers_provided: u64,
    /// Pool buffers that may hold memory: in use, lent (io_uring: unless their pages were
    /// given back while lent), or free but used since their pages were last given back
    /// (trimming gives back those that stay unused; see [`crate::io::buffer`]).
    pub buffers_warm: u64,
    /// Splice pipes out of the pool.
    pub pipes_in_use: u64,
    /// Empty splice pipes kept open in the pool for reuse (two descriptors each).
    pub pipes_idle: u64,
    /// The worker's longest loop turn since it started (from one poll's return to the next
    /// poll), µs; summed gauges keep the largest of the workers'.
    pub loop_max_us: u64,
    /// Loop turns of 50 ms or longer since the worker started (worker stalls).
    pub slow_turns: u64,
}

impl Gauges {
    /// Sums several workers' gauges (the engine name is the first one's).
    pub fn add(&mut self, o: &Gauges) {
        if self.engine.is_empty() {
            self.engine = o.engine;
        }
        self.connections += o.connections;
        self.ops_in_flight += o.ops_in_flight;
        self.buffers_in_use += o.buffers_in_use;
        self.buffers_provided += o.buffers_provided;
        self.buffers_warm += o.buffers_warm;
        self.pipes_in_use += o.pipes_in_use;
        self.pipes_idle += o.pipes_idle;
        self.loop_max_us = self.loop_max_us.max(o.loop_max_us);
        self.slow_turns += o.slow_turns;
    }
}

/// Wakes a worker's engine from another thread.
pub trait Wake: Send + Sync {
    fn wake(&self) -> io::Result<()>;
}

/// What a worker needs from an engine. Implemented by [`mio::MioEngine`] (epoll readiness),
/// and designed so a completion engine (io_uring: submissions batched per loop turn) fits
/// behind it unchanged. Workers are generic over it: no dynamic dispatch on the hot path.
pub trait Engine: Send + Sized {
    /// Waits up to `timeout` for I/O (zero: do not block), appending what happened to `out`.
    /// A completion engine submits everything queued since the last call here, in one batch.
    fn poll(&mut self, timeout: Duration, out: &mut Vec<Event>) -> io::Result<()>;

    /// The pools the sessions' buffers and pipes come from (the engine hands buffers to the
    /// kernel and takes them back).
    fn pools(&mut self) -> (&mut BufferPool, &mut PipePool);

    /// Starts accepting on listener slot `slot` (a bound, listening, non-blocking socket).
    fn add_listener(&mut self, slot: usize, listener: std::net::TcpListener) -> io::Result<()>;
    /// Stops accepting on `slot` and closes its socket. An engine that accepts ahead
    /// (io_uring) keeps the connections the kernel already gave it: `accept(slot)` still
    /// returns them (and those of accepts that complete before their cancellation), with an
    /// `Event::Accept(slot)`, until [`Engine::retiring`] is false. Dropping them would fail
    /// clients that another process (a binary upgrade's successor) would have served.
    fn remove_listener(&mut self, slot: usize);
    /// Accepts one connection of listener `slot`.
    fn accept(&mut self, slot: usize) -> Accepted;
    /// A removed listener still has accepts in the kernel or accepted connections not
    /// taken yet (see [`Engine::remove_listener`]).
    fn retiring(&self) -> bool {
        false
    }

    /// Starts a non-blocking connect; a [`Done::Connect`] for the new connection follows.
    fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId>;

    /// Submits `op` on `conn`. `Some` when it completed at once.
    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done>;

    /// `submit(conn, Op::Watch)`: an engine may give the watch of every pooled connection a
    /// path of its own.
    #[inline]
    fn watch(&mut self, conn: ConnId) -> Option<Done> {
        self.submit(conn, Op::Watch)
    }

    /// Cancels the op in `slot` of `conn`, if any (its `Done` is never delivered).
    fn cancel(&mut self, conn: ConnId, slot: Slot);

    /// Closes `conn`, cancelling its ops.
    fn close(&mut self, conn: ConnId, linger: Linger);

    /// A handle other threads use to wake this engine's [`Engine::poll`].
    fn waker(&self) -> std::sync::Arc<dyn Wake>;

    /// The peer's and the local address of `conn` (`None` if unknown). Off the hot path: asked
    /// once per upstream connection of clusters that send a PROXY protocol header.
    fn addrs(&self, conn: ConnId) -> Option<(SocketAddr, SocketAddr)> {
        let _ = conn;
        None
    }

    /// Which engine this is (start line, stats).
    fn name(&self) -> &'static str;

    /// Receives that had to wait for a pool buffer since the last call (back-pressure, shown
    /// as `buffer_waits`).
    fn take_buffer_waits(&mut self) -> u64;

    /// Of those, receives of new work (`Op::RecvNew`) that waited because the pool was down
    /// to its reserve (shown as `buffer_reserve_waits`).
    fn take_reserve_waits(&mut self) -> u64 {
        0
    }

    /// Gives back memory an idle worker no longer needs: the pages of pool buffers that stayed
    /// unused for a whole interval (and, on io_uring, the buffer ring's share beyond what
    /// recent receives used). Called by the worker every [`crate::io::buffer::TRIM_INTERVAL`];
    /// says what the pool gave back.
    fn trim(&mut self) -> crate::io::buffer::Trimmed {
        self.pools().0.trim()
    }

    /// After a burst (at most once per [`crate::heap::RELIEF_INTERVAL`], by the worker): the
    /// engine's tables give back the capacity the burst's high tide left unused, where that is
    /// worth a copy ([`crate::heap::slack_worth_giving_back`]). Whether any did (the worker
    /// then purges the heap). The default (mio, test engines): nothing.
    fn shrink_tables(&mut self) -> bool {
        false
    }

    /// Pool buffers that may hold memory (`/stats` `buffers_warm`): the pool's warm ones,
    /// less (io_uring) the lent ones whose pages were given back.
    fn warm_buffers(&mut self) -> usize {
        self.pools().0.warm()
    }

    /// What the engine holds now (stats flushes only: may walk its tables). The default
    /// (for test engines) reports only the name.
    fn gauges(&self) -> Gauges {
        Gauges {
            engine: self.name(),
            ..Gauges::default()
        }
    }
}

/// The engine a worker runs, chosen at start-up (`server.engine`). Workers are generic over
/// [`Engine`]; this enum only carries the choice to the worker thread, which then runs a
/// `Worker<MioEngine>` or a `Worker<UringEngine>`: no dynamic dispatch on the hot path.
// Built once per worker at start-up and moved into its thread: the size difference is moot.
#[allow(clippy::large_enum_variant)]
pub enum AnyEngine {
    Mio(mio::MioEngine),
    Uring(uring::UringEngine),
}

impl AnyEngine {
    pub fn waker(&self) -> std::sync::Arc<dyn Wake> {
        match self {
            AnyEngine::Mio(e) => e.waker(),
            AnyEngine::Uring(e) => e.waker(),
        }
    }
}

/// What the process runs, decided once at start-up from `server.engine` (and
/// `SWITCHYARD_ENGINE`): see [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Mio,
    Uring(uring::Setup),
}

impl Choice {
    pub fn name(&self) -> &'static str {
        match self {
            Choice::Mio => "mio",
            Choice::Uring(_) => "io_uring",
        }
    }

    /// What the start line adds after `workers=N` (the ring set-up, for io_uring).
    pub fn details(&self) -> String {
        match self {
            Choice::Mio => String::new(),
            Choice::Uring(s) => format!(" io_uring_setup={}", s.describe()),
        }
    }

    /// A new engine of this kind over these pools.
    pub fn build(&self, pool: BufferPool, pipes: PipePool) -> io::Result<AnyEngine> {
        Ok(match self {
            Choice::Mio => AnyEngine::Mio(mio::MioEngine::new(pool, pipes)?),
            Choice::Uring(s) => AnyEngine::Uring(uring::UringEngine::new(pool, pipes, *s)?),
        })
    }
}

/// The environment variable that overrides `server.engine` (tests run the suite on each engine
/// with it). A value other than `auto`, `mio` or `io_uring` is warned about and ignored.
pub const ENGINE_ENV: &str = "SWITCHYARD_ENGINE";

/// Picks the engine: `mio` as asked; `io_uring` when the kernel allows it, else `Err` with
/// the kernel's reason (start-up fails); `auto`: io_uring when allowed, else mio with one log
/// line saying why.
pub fn choose(kind: crate::config::EngineKind, sqpoll: bool) -> Result<Choice, String> {
    use crate::config::EngineKind;
    let kind = match std::env::var(ENGINE_ENV) {
        Ok(v) if !v.is_empty() => match EngineKind::parse(&v) {
            Some(k) => {
                if k != kind {
                    log::info!(
                        "{ENGINE_ENV}={v} overrides server.engine = {:?}",
                        kind.as_str()
                    );
                }
                k
            }
            None => {
                log::warn!("{ENGINE_ENV}={v:?} is not an engine (auto, mio, io_uring): ignored");
                kind
            }
        },
        _ => kind,
    };
    match kind {
        EngineKind::Mio => Ok(Choice::Mio),
        EngineKind::IoUring => uring::probe::probe(sqpoll)
            .map(Choice::Uring)
            .map_err(|why| format!("engine io_uring refused by the kernel: {why}")),
        EngineKind::Auto => match uring::probe::probe(sqpoll) {
            Ok(s) => Ok(Choice::Uring(s)),
            Err(why) => {
                log::warn!("engine auto: io_uring is not available ({why}); using mio");
                Ok(Choice::Mio)
            }
        },
    }
}

/// The `Done` of an op that failed before it ran (its connection is gone or broken), giving
/// back what the op carried.
pub fn failed(op: Op, errno: i32) -> Done {
    let res = Xfer::Failed(errno);
    match op {
        Op::Recv(buf) => Done::Recv { buf, res },
        Op::RecvNew => Done::Recv { buf: None, res },
        Op::Send(a, b) => Done::Send {
            a: a.buf,
            b: b.map(|s| s.buf),
            res,
        },
        Op::SpliceIn { pipe, .. } => Done::SpliceIn { pipe, res, sent: 0 },
        Op::SpliceOut { pipe, .. } => Done::SpliceOut { pipe, res },
        Op::Shutdown => Done::Shutdown(res),
        Op::Watch => Done::Watch(res),
        Op::Readable => Done::Readable(res),
    }
}

/// Returns the resources an undeliverable op carries to the pools (a `Done` nobody will see).
pub fn recycle(done: Done, pool: &mut BufferPool, pipes: &mut PipePool) {
    match done {
        Done::Recv { buf, .. } => {
            if let Some(b) = buf {
                pool.release(b);
            }
        }
        Done::Send { a, b, .. } => {
            pool.release(a);
            if let Some(b) = b {
                pool.release(b);
            }
        }
        // A pipe that may hold bytes must not carry them into another connection.
        Done::SpliceIn { pipe, .. } | Done::SpliceOut { pipe, .. } => pipes.discard(pipe),
        Done::Shutdown(_) | Done::Connect(_) | Done::Watch(_) | Done::Readable(_) => {}
    }
}

/// Returns an op that was never run to the pools.
pub fn recycle_op(op: Op, pool: &mut BufferPool, pipes: &mut PipePool) {
    match op {
        Op::Recv(buf) => {
            if let Some(b) = buf {
                pool.release(b);
            }
        }
        Op::Send(a, b) => {
            pool.release(a.buf);
            if let Some(b) = b {
                pool.release(b.buf);
            }
        }
        Op::SpliceIn { pipe, piped, .. } => {
            if piped == 0 {
                pipes.put(pipe)
            } else {
                pipes.discard(pipe)
            }
        }
        Op::SpliceOut { pipe, .. } => pipes.discard(pipe),
        Op::RecvNew | Op::Shutdown | Op::Watch | Op::Readable => {}
    }
}

/// Helpers the engines' own tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::{ConnId, Done, Engine, Op, Xfer};
    use crate::io::Pipe;

    /// `Op::SpliceIn` on `conn` (with `forward`) until bytes come in, waiting for readability
    /// (`wait`: the engine's next `Done` for `conn`) while there are none: the pipe, what came
    /// in and what the forward sent.
    pub fn splice_in_until<E: Engine>(
        e: &mut E,
        conn: ConnId,
        mut pipe: Pipe,
        forward: Option<ConnId>,
        mut wait: impl FnMut(&mut E) -> Option<Done>,
    ) -> (Pipe, Xfer, u32) {
        for _ in 0..50 {
            let op = Op::SpliceIn {
                pipe,
                piped: 0,
                max: 4096,
                forward,
            };
            match e.submit(conn, op) {
                Some(Done::SpliceIn {
                    pipe: p,
                    res: Xfer::Bytes(0),
                    ..
                }) => {
                    pipe = p;
                    // Not here yet: wait for it.
                    if e.submit(conn, Op::Readable).is_none() {
                        let d = wait(e);
                        assert!(matches!(d, Some(Done::Readable(_))), "{d:?}");
                    }
                }
                Some(Done::SpliceIn { pipe, res, sent }) => return (pipe, res, sent),
                d => panic!("{d:?}"),
            }
        }
        panic!("nothing came in");
    }
}
