//! One worker per core, for both protocols: an engine (its own listening sockets, its
//! connections), a `Slab` of sessions stored by value, the buffer pool, a timer wheel, the
//! upstream pool and local counters.
//!
//! The loop: poll the engine; hand each completion to the session that owns the connection
//! ([`dispatch`]) and drive that session ([`drive`]: ask it what it wants, submit its ops,
//! feed back what completes at once, act on its upstream steps); accept new connections
//! ([`accept`]); resume queued sessions; fire timers; flush stats. Upstreams — picking a
//! backend, connecting, pooling, queueing for a connection slot or a descriptor — are in
//! [`upstream`], the same code for TCP and HTTP sessions.
//!
//! HOT PATH. No lock, no blocking call, no info-level log per connection or per request;
//! allocation only when a slab, table or queue grows past its previous high-water mark.
//!
//! Every loop is bounded: accepts per wake-up ([`ACCEPT_BATCH`]), wants per session drive
//! ([`drive::MAX_STEPS`]; TCP sessions also bound their own ops) and sessions resumed per iteration
//! ([`RESUME_BATCH`]); a bound hit is counted in `loop_bound_hits` and the rest is queued for
//! the next iteration (poll with a zero timeout), so one busy connection cannot starve others.

mod accept;
mod dispatch;
mod drive;
mod faults;
mod mirror;
mod obs;
mod pick;
mod slots;
mod transport;
mod upstream;

pub use slots::{Peers, SlotQueue};

use crate::engine::token::TimerKey;
use crate::engine::{AnyEngine, Choice, ConnId, Engine, Event, Wake};
use crate::io::timer::TimerWheel;
use crate::io::{BufferPool, PipePool};
use crate::session::{Env, Session, Side};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::stats::{StatsMsg, StatsSender, WorkerStats, FLUSH_INTERVAL};

/// A loop turn this long or longer counts as a worker stall (`engine.slow_turns`).
pub const SLOW_TURN: Duration = Duration::from_millis(50);
use crate::transport::Transport;
use crossbeam_channel::{Receiver, Sender};
use pick::Balancers;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections accepted per listener wake-up before yielding.
pub const ACCEPT_BATCH: usize = 64;
/// Queued sessions resumed per loop iteration.
const RESUME_BATCH: usize = 256;
/// Longest poll sleep, so periodic duties (stats, shutdown deadline) run.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// While sessions wait for a connection slot, how often a worker checks that none waits
/// for a slot that is free (a release and a wait that crossed in two threads).
const SLOT_CHECK: Duration = Duration::from_millis(100);

/// A multiplicative (FxHash-style) hasher for the upstream pool, which is looked up once or
/// twice per HTTP request. Its keys are backend addresses from the config, never chosen by
/// clients, so SipHash's resistance to hash flooding buys nothing there.
#[derive(Default, Clone, Copy)]
pub(crate) struct AddrHasher(u64);

impl AddrHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for AddrHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }
    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.add(u64::from(v));
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

type AddrMap<V> = HashMap<SocketAddr, V, BuildHasherDefault<AddrHasher>>;

/// Control messages from other threads; always followed by a wake-up.
#[derive(Debug)]
pub enum Ctrl {
    /// Stop accepting; let sessions finish until the deadline, then close the rest and exit.
    Shutdown { deadline: Instant },
    /// Send a stats delta now, tagged with this sequence number.
    FlushStats(u64),
    /// Start accepting on this worker's socket of a listener added at run time. Its route is
    /// already in the published snapshot under `slot`.
    AddListener {
        slot: usize,
        socket: std::net::TcpListener,
    },
    /// Stop accepting on a listener (removed, or rebound elsewhere). Its connections go on.
    RemoveListener { slot: usize },
    /// Answer on the channel once every message sent before this one is handled (a listener
    /// taken down by a fault refuses connections before the API answers).
    Barrier(Sender<()>),
}

/// The handle other threads use to talk to a worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub tx: Sender<Ctrl>,
    pub waker: Arc<dyn Wake>,
}

impl WorkerHandle {
    pub fn send(&self, c: Ctrl) {
        // A worker that already exited has nothing to do with the message.
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

pub struct WorkerSettings {
    pub id: usize,
    pub buffer_size: usize,
    pub buffers: usize,
    /// Buffers only work in progress may take (`server.buffers_reserve`).
    pub buffers_reserve: usize,
    /// Kernel pipes for splicing bulk flows (0 = never splice).
    pub pipes: usize,
    /// Large buffers (for HTTP request heads beyond `buffer_size`): size and count; 0 = none.
    pub large_buffer_size: usize,
    pub large_buffers: usize,
    /// This worker's access-log queue, when the log is on.
    pub access_log: Option<crate::accesslog::Sink>,
    /// This worker's connection-log queue (TCP and Foo listeners).
    pub connection_log: Option<crate::accesslog::Sink<crate::connlog::ConnRecord>>,
    pub max_sessions: usize,
    pub pin_cpu: Option<usize>,
    /// `server.stats = "minimal"`.
    pub stats_minimal: bool,
}

/// Everything a worker thread needs, prepared on the main thread so that start-up errors
/// (bind, engine creation) are reported before any thread runs.
pub struct WorkerSetup {
    pub settings: WorkerSettings,
    pub engine: AnyEngine,
    pub ctrl: Receiver<Ctrl>,
    pub listeners: Vec<std::net::TcpListener>,
    pub snapshot: SharedSnapshot,
    pub stats_tx: StatsSender,
    /// Every worker's waker (set once all workers are prepared), for the slot queues'
    /// pokes ([`slots`]).
    pub peers: Arc<Peers>,
}

/// Creates the engine (of the kind chosen at start-up) and control channel for one worker.
pub fn prepare(
    settings: WorkerSettings,
    choice: Choice,
    listeners: Vec<std::net::TcpListener>,
    snapshot: SharedSnapshot,
    stats_tx: StatsSender,
) -> io::Result<(WorkerSetup, WorkerHandle)> {
    let mut pool = BufferPool::with_large(
        settings.buffer_size,
        settings.buffers,
        settings.large_buffer_size,
        settings.large_buffers,
    );
    pool.set_reserve(settings.buffers_reserve);
    let engine = choice.build(pool, PipePool::new(settings.pipes))?;
    let waker = engine.waker();
    let (tx, ctrl) = crossbeam_channel::unbounded();
    Ok((
        WorkerSetup {
            settings,
            engine,
            ctrl,
            listeners,
            snapshot,
            stats_tx,
            peers: Arc::default(),
        },
        WorkerHandle { tx, waker },
    ))
}

/// A session in the slab, with the worker's bookkeeping about it.
pub(crate) struct Entry {
    pub(crate) session: Session,
    /// Generation of the armed timer entry; entries with another generation are stale.
    timer_gen: u32,
    /// When the armed entry fires (deadlines that move later are re-armed lazily).
    timer_at: Instant,
    timer_armed: bool,
    /// The client connection's transport may have a deadline of its own (a TLS handshake or
    /// PROXY header, from accept on): false for a connection accepted plain, which never
    /// gets one (toxics put under it later have none), so its timer checks skip the look-up.
    transport_deadline: bool,
    /// Already in the ready or starved queue.
    queued: bool,
    waiting: Waiting,
}

impl Entry {
    /// The armed timer entry fires no later than the session's deadline: nothing to arm
    /// ([`Worker::rearm_if_earlier`]). That is `entry_deadline(e) >= timer_at` without
    /// building the pair: the session's own deadline, then its client connection's
    /// transport's (none on a plain connection). Inlined into its two callers: a call of its
    /// own costs register saves on every drive's end.
    #[inline(always)]
    fn timer_covers(&self, conns: &[ConnMeta]) -> bool {
        self.timer_armed
            && self.session.deadline() >= self.timer_at
            && transport::deadline_not_before(self, conns, self.timer_at)
    }
}

/// A session waiting in one of the worker's queues for an upstream.
/// Which queue a session waits in for its next drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// It yielded at a bound: the next loop turn.
    Ready,
    /// A pool buffer: as soon as one is free.
    Buffer,
    /// A buffer for a new request whose head is in: once the pool admits it
    /// (`BufferPool::admits_begun`).
    BufferNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    No,
    /// For a connection slot of its cluster (`max_connections`).
    Slot,
    /// For a file descriptor (the process ran out).
    Descriptor,
    /// Woken from a queue: connect at the next resume.
    Woken,
    /// Release strategy `concurrent`: the newest version failed the request and the mirror's
    /// answer is awaited (the mirror resolves the wait, on its own timeouts).
    Mirror,
}

/// Who owns a connection (indexed by connection id). Eight bytes: keys are `u32` (slab keys
/// stay far below that: `max_connections` bounds them).
#[derive(Debug, Clone, Copy, Default)]
enum Owner {
    #[default]
    None,
    /// Session slab key, and which of its connections.
    Session(u32, Side),
    /// An idle upstream connection in the pool: the index of its backend address's list in
    /// [`UpstreamPool`].
    Pooled(u32),
    /// A mirror exchange's connection (the worker's mirror slab key).
    Mirror(u32),
}

/// The worker's bookkeeping of one connection, for every connection it has (a TCP pair has
/// two): kept small, as it is paid per idle connection. What only some connections need
/// lives behind the transport's box (TLS, PROXY), in the toxics table, or (pooled upstream
/// connections) in [`Worker::pooled`].
#[derive(Debug, Default)]
struct ConnMeta {
    owner: Owner,
    transport: Transport,
}

/// A pooled upstream connection's idle deadline and the time of its armed timer entry, as
/// [`Stamp`]s (0: none), kept beside [`ConnMeta`] by connection id for connections that were
/// pooled at least once (a TCP pair never is).
#[derive(Debug, Default, Clone, Copy)]
struct PoolTimes {
    deadline: Stamp,
    timer_at: Stamp,
    timer_gen: u32,
    /// The index of the connection's backend address's list in [`UpstreamPool`], plus one
    /// (0: not looked up yet): pooling it again costs no hash look-up.
    slot: u32,
    /// While pooled: its position in that list, so taking it out (a session's own connection
    /// back, a backend closing it, its idle timeout) costs no scan of a list that may hold
    /// thousands.
    pos: u32,
}

/// A TCP session's facts for its connection-log record ([`Worker::conn_facts`]).
#[derive(Debug, Clone, Copy)]
struct ConnFacts {
    /// The client (its PROXY header's address once read).
    client: SocketAddr,
    /// When the connection was accepted.
    opened: Instant,
    /// Bytes moved each way up to the session's last `take_moved`.
    up: u64,
    down: u64,
}

/// A point in time as nanoseconds after the worker started, plus one (0 means none): half
/// the size of an `Option<Instant>`, for per-connection fields.
type Stamp = u64;

/// Idle upstream connections per backend address: a list per address, found by address
/// (a request looks for one) or by index (a pooled connection's [`Owner::Pooled`]).
#[derive(Default)]
struct UpstreamPool {
    index: AddrMap<u32>,
    lists: Vec<(SocketAddr, Vec<ConnId>)>,
}

impl UpstreamPool {
    /// The index of `addr`'s list (made on first use; lists are never removed, there is one
    /// per backend address ever pooled to).
    fn slot(&mut self, addr: SocketAddr) -> u32 {
        if let Some(&i) = self.index.get(&addr) {
            return i;
        }
        let i = self.lists.len() as u32;
        self.lists.push((addr, Vec::new()));
        self.index.insert(addr, i);
        i
    }

    /// Appends `conn` to list `slot`, remembering its position in `pooled`.
    fn push(&mut self, pooled: &mut [PoolTimes], slot: u32, conn: ConnId) -> bool {
        let (Some((_, list)), Some(t)) = (
            self.lists.get_mut(slot as usize),
            pooled.get_mut(conn as usize),
        ) else {
            return false;
        };
        t.pos = list.len() as u32;
        list.push(conn);
        true
    }

    /// Takes the connection at position `at` out of list `slot` without shifting the others:
    /// the last one fills its place and learns its new position.
    fn take_at(&mut self, pooled: &mut [PoolTimes], slot: u32, at: usize) -> Option<ConnId> {
        let (_, list) = self.lists.get_mut(slot as usize)?;
        if at >= list.len() {
            return None;
        }
        let conn = list.swap_remove(at);
        if let Some(t) = list
            .get(at)
            .and_then(|&moved| pooled.get_mut(moved as usize))
        {
            t.pos = at as u32;
        }
        Some(conn)
    }

    /// Where pooled connection `conn` of list `slot` is, if it is there (its remembered
    /// position, checked).
    fn position(&self, pooled: &[PoolTimes], slot: u32, conn: ConnId) -> Option<usize> {
        let at = pooled.get(conn as usize)?.pos as usize;
        let (_, list) = self.lists.get(slot as usize)?;
        (list.get(at) == Some(&conn)).then_some(at)
    }

    /// Takes `conn` out of list `slot` (no-op when it is not there).
    fn remove(&mut self, pooled: &mut [PoolTimes], slot: u32, conn: ConnId) {
        if let Some(at) = self.position(pooled, slot, conn) {
            self.take_at(pooled, slot, at);
        }
    }

    /// Every pooled connection.
    fn all(&self) -> Vec<ConnId> {
        self.lists
            .iter()
            .flat_map(|(_, l)| l.iter().copied())
            .collect()
    }
}

pub struct Worker<E: Engine> {
    id: usize,
    engine: E,
    ctrl: Receiver<Ctrl>,
    /// Listener slots this worker accepts on.
    listening: Vec<bool>,
    sessions: Slab<Entry>,
    /// Mirror exchanges of release strategy `concurrent` ([`mirror`]).
    mirrors: Slab<crate::session::mirror::Mirror>,
    conns: Vec<ConnMeta>,
    /// [`PoolTimes`] by connection id, grown only as far as the highest id ever pooled.
    pooled: Vec<PoolTimes>,
    /// Idle upstream connections per backend address.
    upstream_pool: UpstreamPool,
    /// What sessions borrow besides the pools: the clock, counters, request ids, the shared
    /// snapshot, recycled exchanges.
    env: Env,
    /// Sessions with work left after hitting a bound.
    ready: VecDeque<usize>,
    /// Sessions waiting for a pool buffer.
    starved: VecDeque<usize>,
    /// Sessions waiting for a buffer for new work already begun (`Want::BufferNew`).
    starved_new: VecDeque<usize>,
    /// Sessions waiting for a connection slot, per cluster name, and how many in all (not
    /// counting woken ones).
    pending: HashMap<String, slots::Pending>,
    waiting_for_slot: usize,
    /// Every worker's waker, for pokes when a freed slot belongs to another worker's waiter.
    peers: Arc<Peers>,
    /// The ticket of the woken waiter trying for a slot now (`Worker::serve_woken`): it
    /// does not queue behind the others, and goes back to its place if there is no slot.
    slot_ticket: Option<u64>,
    /// When the slot queues are next checked for a slot nobody was woken for.
    next_slot_check: Instant,
    /// Sessions waiting for a descriptor to connect upstream.
    fd_waiters: VecDeque<usize>,
    access_log: Option<crate::accesslog::Sink>,
    connection_log: Option<crate::accesslog::Sink<crate::connlog::ConnRecord>>,
    /// What the connection log records about each TCP session, by session key: kept only for
    /// sessions accepted while the log is on (idle connections would otherwise all pay for
    /// it). A session accepted while the log was off is not logged (README `connection_log`).
    conn_facts: Vec<Option<ConnFacts>>,
    /// Wall-clock time at `started` (for access-log timestamps without a syscall each).
    wall_start: std::time::SystemTime,
    started: Instant,
    max_sessions: usize,
    timers: TimerWheel,
    expired: Vec<(usize, u32)>,
    next_gen: u32,
    balancers: Balancers,
    /// Per listener/cluster/backend counters, histograms, Foo counts.
    obs: WorkerStats,
    stats_tx: StatsSender,
    last_flush: Instant,
    /// `last_flush + FLUSH_INTERVAL`: the loop compares, it does not subtract, every turn.
    next_flush: Instant,
    /// When the engine next trims its buffer memory ([`Engine::trim`]): one comparison per
    /// loop turn.
    next_trim: Instant,
    /// When the after-burst relief (table shrinks, heap purge) may run next.
    relief: crate::heap::Relief,
    /// Engine events handled since the last buffer trim (whether the worker was quiet).
    events_since_trim: usize,
    /// The longest loop turn so far (poll return to the next poll), µs, and how many turns
    /// took [`SLOW_TURN`] or longer: a worker stall shows here first (reported with the
    /// engine gauges).
    loop_max_us: u64,
    slow_turns: u64,
    /// Listeners with connections left after hitting the accept bound.
    accept_again: Vec<usize>,
    /// Accepting paused (fd exhaustion) until then.
    accept_paused_until: Option<Instant>,
    /// Accepting stopped because `max_sessions` was reached.
    accept_full: bool,
    /// When descriptor exhaustion was last logged.
    fd_exhaustion_logged: Option<Instant>,
    shutdown: Option<Instant>,
    events: Vec<Event>,
    /// Connections under L4 fault toxics, and their timers.
    toxics: crate::transport::toxics::Toxics,
    fired: Vec<crate::transport::toxics::Fired>,
}

/// A [`crate::session::Cx`] from the worker's fields (a macro, so the borrows stay disjoint
/// from `self.sessions`).
macro_rules! cx {
    ($w:expr) => {{
        let (pool, pipes) = $w.engine.pools();
        crate::session::Cx {
            pool,
            pipes,
            env: &mut $w.env,
        }
    }};
}
pub(crate) use cx;

impl<E: Engine> Worker<E> {
    pub fn new(
        settings: WorkerSettings,
        mut engine: E,
        ctrl: Receiver<Ctrl>,
        listeners: Vec<std::net::TcpListener>,
        snapshot: SharedSnapshot,
        stats_tx: StatsSender,
        peers: Arc<Peers>,
    ) -> io::Result<Worker<E>> {
        let mut listening = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            engine.add_listener(i, l)?;
            listening.push(true);
        }
        let now = Instant::now();
        let balancers = Balancers::build(&snapshot.load(), None);
        Ok(Worker {
            id: settings.id,
            engine,
            ctrl,
            listening,
            sessions: Slab::with_capacity(1024),
            mirrors: Slab::new(),
            conns: Vec::with_capacity(2048),
            pooled: Vec::new(),
            upstream_pool: UpstreamPool::default(),
            // Request ids: the worker id in the top byte, the start time below, so ids differ
            // across workers and restarts.
            env: Env::new(
                snapshot,
                ((settings.id as u64) << 56)
                    ^ (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64)
                        & ((1 << 56) - 1)),
                now,
            ),
            ready: VecDeque::with_capacity(1024),
            starved: VecDeque::with_capacity(1024),
            starved_new: VecDeque::new(),
            pending: HashMap::new(),
            waiting_for_slot: 0,
            peers,
            slot_ticket: None,
            next_slot_check: now,
            fd_waiters: VecDeque::new(),
            access_log: settings.access_log,
            connection_log: settings.connection_log,
            conn_facts: Vec::new(),
            wall_start: std::time::SystemTime::now(),
            started: now,
            max_sessions: settings.max_sessions,
            timers: TimerWheel::new(now),
            expired: Vec::with_capacity(1024),
            next_gen: 0,
            balancers,
            obs: WorkerStats::new(settings.stats_minimal),
            stats_tx,
            last_flush: now,
            next_flush: now + FLUSH_INTERVAL,
            next_trim: now + crate::io::buffer::TRIM_INTERVAL,
            relief: crate::heap::Relief::default(),
            events_since_trim: 0,
            loop_max_us: 0,
            slow_turns: 0,
            accept_again: Vec::new(),
            accept_paused_until: None,
            accept_full: false,
            fd_exhaustion_logged: None,
            shutdown: None,
            events: Vec::with_capacity(1024),
            toxics: crate::transport::toxics::Toxics::new(
                (settings.id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
            ),
            fired: Vec::new(),
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        self.env.now = Instant::now();
        self.env.now_ns = self.ns_since_start(self.env.now);
        loop {
            self.note_turn();
            let timeout = self.poll_timeout();
            let mut events = std::mem::take(&mut self.events);
            self.engine.poll(timeout, &mut events)?;
            self.env.now = Instant::now();
            self.env.now_ns = self.ns_since_start(self.env.now);
            self.env.shared_version = self.env.shared.load().version;
            self.env.access_log = self.access_log.as_ref().is_some_and(|l| l.enabled());
            crate::sd::watchdog::beat(self.id);
            self.events_since_trim += events.len();
            for ev in events.drain(..) {
                match ev {
                    Event::Wake => self.handle_ctrl(),
                    Event::Accept(slot) => self.accept(slot),
                    Event::Done(conn, done) => self.dispatch(conn, done),
                }
            }
            self.events = events;
            self.resume_queued();
            self.expire_timers();
            if self.waiting_for_slot > 0 && self.env.now >= self.next_slot_check {
                self.next_slot_check = self.env.now + SLOT_CHECK;
                self.hand_over_all(true);
            }
            if !self.toxics.is_idle() {
                self.fire_toxics();
            }
            if self.env.now >= self.next_flush {
                self.flush_stats(0);
            }
            if self.env.now >= self.next_trim {
                self.next_trim = self.env.now + crate::io::buffer::TRIM_INTERVAL;
                self.balancers.roll_budgets();
                if self.engine.trim().buffers > 0 {
                    self.relief.wanted();
                }
                let quiet = self.events_since_trim <= crate::heap::QUIET_EVENTS;
                self.events_since_trim = 0;
                if self.relief.due(self.env.now, quiet) {
                    let shrank = self.after_burst();
                    self.relief.ran(self.env.now, shrank);
                }
            }
            if let Some(deadline) = self.shutdown {
                if self.sessions.is_empty() && !self.engine.retiring() {
                    break;
                }
                if self.env.now >= deadline {
                    self.abort_all();
                    break;
                }
            }
        }
        self.flush_stats(0);
        Ok(())
    }

    /// A burst is over (the buffer trim gave pages back; at most once per
    /// [`crate::heap::RELIEF_INTERVAL`], see [`crate::heap::Relief`]): the per-turn lists shrink
    /// back to their start-up size (a storm's completions can fill tens of thousands of events
    /// in one turn); the session and connection tables, and the engine's, give back the
    /// capacity the storm's high tide left unused where that is worth a copy (the allocator
    /// reused freed pages for it, so it is resident although never written; live keys stay);
    /// and if anything shrank, the allocator (jemalloc, [`crate::heap`]) returns its free
    /// pages (the old copies) to the kernel now rather than after its decay time. Whether
    /// anything shrank.
    fn after_burst(&mut self) -> bool {
        const KEEP: usize = 1024;
        let lists = |w: &Self| {
            w.events.capacity() + w.expired.capacity() + w.ready.capacity() + w.starved.capacity()
        };
        let before = lists(self);
        self.events.shrink_to(KEEP);
        self.expired.shrink_to(KEEP);
        if self.ready.is_empty() {
            self.ready.shrink_to(KEEP);
        }
        if self.starved.is_empty() {
            self.starved.shrink_to(KEEP);
        }
        let mut shrank = lists(self) < before;
        let entry = std::mem::size_of::<Entry>();
        let cap = self.sessions.capacity();
        if crate::heap::slack_worth_giving_back(self.sessions.len(), cap, entry, KEEP) {
            self.sessions.shrink_to_fit();
            if self.sessions.capacity() < KEEP {
                self.sessions.reserve(KEEP - self.sessions.len());
            }
            shrank |= self.sessions.capacity() < cap;
        }
        let meta = std::mem::size_of::<ConnMeta>();
        let cap = self.conns.capacity();
        if crate::heap::slack_worth_giving_back(self.conns.len(), cap, meta, 2 * KEEP) {
            self.conns.shrink_to(self.conns.len().max(2 * KEEP));
            shrank |= self.conns.capacity() < cap;
        }
        shrank |= self.engine.shrink_tables();
        if shrank {
            crate::heap::purge();
        }
        shrank
    }

    /// Times the loop turn that just ended (from the last poll's return to now): one clock read
    /// per turn, not per request.
    #[inline]
    fn note_turn(&mut self) {
        let busy = self.env.now.elapsed();
        let us = busy.as_micros() as u64;
        if us > self.loop_max_us {
            self.loop_max_us = us;
        }
        if busy >= SLOW_TURN {
            self.slow_turns += 1;
        }
    }

    fn poll_timeout(&mut self) -> Duration {
        let accept_now = (!self.accept_again.is_empty() || !self.fd_waiters.is_empty())
            && self.accept_paused_until.is_none();
        if !self.ready.is_empty()
            || accept_now
            || (!self.starved.is_empty() && self.free_buffers() > 0)
            || (!self.starved_new.is_empty() && self.engine.pools().0.admits_begun())
        {
            return Duration::ZERO;
        }
        let mut t = MAX_SLEEP;
        if let Some(d) = self.timers.next_timeout_within(self.env.now, MAX_SLEEP) {
            t = t.min(d);
        }
        if let Some(at) = self.accept_paused_until {
            t = t.min(at.saturating_duration_since(self.env.now));
        }
        if let Some(at) = self.toxics.next_at() {
            t = t.min(at.saturating_duration_since(self.env.now));
        }
        t
    }

    fn handle_ctrl(&mut self) {
        if self.peers.take_poke(self.id) {
            self.hand_over_all(false);
        }
        while let Ok(msg) = self.ctrl.try_recv() {
            match msg {
                Ctrl::FlushStats(seq) => self.flush_stats(seq),
                Ctrl::AddListener { slot, socket } => self.add_listener(slot, socket),
                Ctrl::RemoveListener { slot } => self.remove_listener(slot),
                Ctrl::Barrier(done) => {
                    let _ = done.send(());
                }
                Ctrl::Shutdown { deadline } => {
                    let first = self.shutdown.is_none();
                    self.shutdown = Some(self.shutdown.map_or(deadline, |d| d.min(deadline)));
                    if first {
                        // Closing our listening sockets: the kernel stops routing new
                        // connections to this worker.
                        for slot in 0..self.listening.len() {
                            self.remove_listener(slot);
                        }
                        self.accept_again.clear();
                        self.close_idle();
                        log::debug!(
                            "worker {}: draining {} connection(s)",
                            self.id,
                            self.sessions.len()
                        );
                    }
                }
            }
        }
    }

    fn flush_stats(&mut self, seq: u64) {
        self.env.conns.buffer_waits += self.engine.take_buffer_waits();
        self.env.conns.buffer_reserve_waits += self.engine.take_reserve_waits();
        let since = std::mem::replace(&mut self.last_flush, self.env.now);
        self.next_flush = self.env.now + FLUSH_INTERVAL;
        if self.env.conns.is_zero() && self.env.http.is_zero() && self.obs.is_zero() && seq == 0 {
            return;
        }
        let tcp = std::mem::take(&mut self.env.conns);
        let http = std::mem::take(&mut self.env.http);
        let detail = self.obs.take_delta();
        let mut gauges = self.engine.gauges();
        gauges.loop_max_us = self.loop_max_us;
        gauges.buffers_warm = self.engine.warm_buffers() as u64;
        gauges.slow_turns = self.slow_turns;
        // The aggregator only disappears at exit; losing a delta then is harmless.
        let _ = self.stats_tx.send(StatsMsg::Delta {
            worker: self.id,
            seq,
            since,
            tcp,
            http,
            detail,
            gauges,
        });
    }

    // ------------------------------------------------------------------ connections

    /// The bookkeeping slot of connection `conn` (grown on first use of a new id).
    #[inline]
    fn meta(&mut self, conn: ConnId) -> &mut ConnMeta {
        let i = conn as usize;
        if i >= self.conns.len() {
            self.grow_conns(i);
        }
        &mut self.conns[i]
    }

    /// The table grows to hold connection `i` (out of line: once per new highest id).
    #[cold]
    #[inline(never)]
    fn grow_conns(&mut self, i: usize) {
        self.conns.resize_with(i + 1, ConnMeta::default);
    }

    /// The pool times of connection `conn` (grown on first use of a new id).
    #[inline]
    fn pool_times(&mut self, conn: ConnId) -> &mut PoolTimes {
        let i = conn as usize;
        if i >= self.pooled.len() {
            self.grow_pooled(i);
        }
        &mut self.pooled[i]
    }

    /// The pool times grow to hold connection `i` (out of line: once per new highest id).
    #[cold]
    #[inline(never)]
    fn grow_pooled(&mut self, i: usize) {
        self.pooled.resize(i + 1, PoolTimes::default());
    }

    /// `conn` is not (or no longer) pooled: no idle deadline.
    #[inline]
    fn clear_pool_deadline(&mut self, conn: ConnId) {
        if let Some(t) = self.pooled.get_mut(conn as usize) {
            t.deadline = 0;
        }
    }

    /// Closes a connection and forgets who owned it.
    fn close_conn(&mut self, conn: ConnId, linger: crate::engine::Linger) {
        if let Some(t) = self.pooled.get_mut(conn as usize) {
            // Its timer entry (if any) goes stale.
            *t = PoolTimes::default();
        }
        let mut m = std::mem::take(self.meta(conn));
        if !matches!(m.transport, Transport::Plain) {
            let toxic = m.transport.toxic();
            if linger == crate::engine::Linger::Graceful {
                m.transport
                    .closing(&mut self.engine, &mut self.toxics, conn);
            }
            let (pool, pipes) = self.engine.pools();
            m.transport.release(pool, pipes);
            if let Some(id) = toxic {
                if self.toxics.close(id, &mut self.engine, conn, linger) {
                    return; // slow_close: the socket closes later
                }
            }
        }
        self.engine.close(conn, linger);
    }

    // ------------------------------------------------------------------ timers

    /// Arms a new timer entry for session `key` at its deadline (the previous one goes
    /// stale). Out of line: [`Worker::rearm_if_earlier`] calls it rarely, and inlined it
    /// costs that check register saves on every call.
    #[inline(never)]
    fn arm_timer(&mut self, key: usize) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let Some((deadline, _)) = self.session_deadline(key) else {
            return;
        };
        if let Some(e) = self.sessions.get_mut(key) {
            e.timer_gen = gen;
            e.timer_at = deadline;
            e.timer_armed = true;
            self.timers
                .insert(TimerKey::Session(key).encode(), gen, deadline);
        }
    }

    /// Arms a timer only when none is armed or the deadline moved before the armed one.
    /// Deadlines that move later (every request on a keep-alive connection, every read of a
    /// TCP pipe) are handled lazily when the entry fires, so steady traffic costs no wheel
    /// operation.
    #[inline]
    fn rearm_if_earlier(&mut self, key: usize) {
        // One look-up of the entry; the deadline is worked out again only to arm (rare).
        let Some(e) = self.sessions.get(key) else {
            return;
        };
        if e.timer_covers(&self.conns) {
            return;
        }
        self.arm_timer(key);
    }

    /// Arms the idle timer of a pooled connection, unless an entry that fires no later is
    /// armed already (it is re-checked when it fires).
    #[inline]
    fn arm_pooled_timer(&mut self, conn: ConnId) {
        let m = self.pool_times(conn);
        let deadline = m.deadline;
        if deadline == 0 || (m.timer_at != 0 && m.timer_at <= deadline) {
            return;
        }
        self.insert_pooled_timer(conn, deadline);
    }

    /// [`Worker::arm_pooled_timer`]'s wheel insert (out of line: an entry usually stays
    /// armed across reuses).
    #[inline(never)]
    fn insert_pooled_timer(&mut self, conn: ConnId, deadline: Stamp) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let m = self.pool_times(conn);
        m.timer_gen = gen;
        m.timer_at = deadline;
        let at = self.instant(deadline);
        self.timers.insert(TimerKey::Pooled(conn).encode(), gen, at);
    }

    /// `env.now` as a [`Stamp`] (worked out once per loop turn, with `env.now`).
    #[inline]
    fn now_stamp(&self) -> Stamp {
        self.env.now_ns.saturating_add(1)
    }

    /// Nanoseconds from the worker's start to `t` ([`Env::now_ns`](crate::session::Env)).
    #[inline]
    fn ns_since_start(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_nanos() as u64
    }

    /// The time a (non-zero) [`Stamp`] stands for.
    #[inline]
    fn instant(&self, s: Stamp) -> Instant {
        self.started + Duration::from_nanos(s.saturating_sub(1))
    }

    fn expire_timers(&mut self) {
        self.timers.advance(self.env.now, &mut self.expired);
        let mut expired = std::mem::take(&mut self.expired);
        for (tkey, gen) in expired.drain(..) {
            match TimerKey::decode(tkey) {
                TimerKey::Session(key) => {
                    let Some((deadline, transport)) = self.session_deadline(key) else {
                        continue;
                    };
                    let Some(e) = self.sessions.get_mut(key) else {
                        continue;
                    };
                    if e.timer_gen != gen || !e.timer_armed {
                        continue;
                    }
                    if deadline > self.env.now {
                        e.timer_at = deadline;
                        self.timers.insert(tkey, gen, deadline);
                        continue;
                    }
                    e.timer_armed = false;
                    if transport {
                        self.transport_timed_out(key);
                    } else {
                        self.session_timed_out(key);
                    }
                }
                TimerKey::Pooled(conn) => {
                    let now = self.now_stamp();
                    let Some(t) = self.pooled.get_mut(conn as usize) else {
                        continue;
                    };
                    if t.timer_gen != gen || t.timer_at == 0 {
                        continue;
                    }
                    t.timer_at = 0;
                    let deadline = t.deadline;
                    match (self.meta(conn).owner, deadline) {
                        (Owner::Pooled(_), d) if d > now => self.arm_pooled_timer(conn),
                        (Owner::Pooled(_), _) => self.drop_pooled(conn),
                        // Lent to a session (whose own timer covers it): the entry is spent.
                        _ => {}
                    }
                }
                TimerKey::Mirror(mk) => self.mirror_timer(mk, gen),
            }
        }
        self.expired = expired;
    }

    /// The deadline of session `key` passed.
    fn session_timed_out(&mut self, key: usize) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        match e.waiting {
            Waiting::Slot | Waiting::Woken => {
                // Waited its connect timeout for a connection slot (woken for one at the
                // last moment, but not resumed yet: the same).
                let _ = self.unqueue_pending(key);
                self.env.conns.limit_rejects += 1;
                self.no_upstream(key, 503);
            }
            Waiting::Descriptor => {
                // Waited a whole connect timeout for a descriptor: give up.
                self.fd_waiters.retain(|&k| k != key);
                self.env.conns.connect_timeouts += 1;
                self.no_upstream(key, 503);
            }
            // The mirror's own deadline ends the wait.
            Waiting::Mirror => {}
            Waiting::No => {
                let mut cx = cx!(self);
                e.session.timed_out(&mut cx);
            }
        }
        self.drive(key);
    }

    // ------------------------------------------------------------------ queues

    fn queue(&mut self, key: usize, q: Queue) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if !e.queued {
            e.queued = true;
            match q {
                Queue::Ready => self.ready.push_back(key),
                Queue::Buffer => self.starved.push_back(key),
                Queue::BufferNew => self.starved_new.push_back(key),
            }
        }
    }

    /// Resumes sessions that yielded or waited for buffers, woken waiters, and listeners
    /// with a backlog.
    fn resume_queued(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|at| self.env.now >= at)
        {
            self.accept_paused_until = None;
        }
        for _ in 0..self.ready.len().min(RESUME_BATCH) {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            self.resume(key);
        }
        let mut budget = RESUME_BATCH;
        while budget > 0 && self.free_buffers() > 0 {
            let Some(key) = self.starved.pop_front() else {
                break;
            };
            budget -= 1;
            self.resume(key);
        }
        // Then new requests whose heads are in, while the pool admits them.
        while budget > 0 && self.engine.pools().0.admits_begun() {
            let Some(key) = self.starved_new.pop_front() else {
                break;
            };
            budget -= 1;
            self.resume(key);
        }
        // Sessions that could not get a descriptor retry first, once the pause is over: they
        // were accepted earlier than anyone still in the backlog.
        if self.accept_paused_until.is_none() {
            for _ in 0..self.fd_waiters.len().min(RESUME_BATCH) {
                let Some(key) = self.fd_waiters.pop_front() else {
                    break;
                };
                if let Some(e) = self.sessions.get_mut(key) {
                    if e.waiting == Waiting::Descriptor {
                        e.waiting = Waiting::No;
                        self.connect_upstream(key, false);
                        self.drive(key);
                    }
                }
                if self.accept_paused_until.is_some() {
                    break; // exhausted again
                }
            }
        }
        if !self.accept_again.is_empty() {
            let pending = std::mem::take(&mut self.accept_again);
            for li in pending {
                self.accept(li);
            }
        }
    }

    fn resume(&mut self, key: usize) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        e.queued = false;
        if e.waiting == Waiting::Woken {
            self.serve_woken(key);
        }
        self.drive(key);
    }

    #[inline]
    fn free_buffers(&mut self) -> usize {
        self.engine.pools().0.available()
    }

    // ------------------------------------------------------------------ shutdown

    /// At shutdown (or after a binary upgrade handed over): pooled connections close at once;
    /// sessions drain (`HttpSession::drain`): a client idle for `DRAIN_IDLE` already is closed
    /// now, the others get their next response with `Connection: close`, or are closed after
    /// `DRAIN_IDLE` of silence; TCP sessions run to their end.
    fn close_idle(&mut self) {
        let now = self.env.now;
        let mut idle = Vec::new();
        let mut rest = Vec::new();
        for (k, e) in self.sessions.iter_mut() {
            e.session.drain();
            if e.session.idle() && e.session.deadline() <= now {
                idle.push(k);
            } else {
                rest.push(k);
            }
        }
        for key in idle {
            self.close(key, crate::session::CloseReason::Done);
        }
        for key in rest {
            self.rearm_if_earlier(key);
        }
        let pooled: Vec<ConnId> = self.upstream_pool.all();
        for conn in pooled {
            self.drop_pooled(conn);
        }
    }

    fn abort_all(&mut self) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        if !keys.is_empty() {
            log::warn!(
                "worker {}: shutdown deadline reached, closing {} connection(s)",
                self.id,
                keys.len()
            );
        }
        for key in keys {
            self.env.conns.shutdown_aborted += 1;
            self.close(key, crate::session::CloseReason::Shutdown);
        }
        self.abort_mirrors();
        let pooled: Vec<ConnId> = self.upstream_pool.all();
        for conn in pooled {
            self.drop_pooled(conn);
        }
    }
}

/// A client connection of listener `li` ended (the count is shared across snapshots by
/// listener name; it never wraps below zero).
pub(crate) fn listener_closed(snap: &Snapshot, li: usize) {
    if let Some(route) = snap.listener(li) {
        let _ = route
            .live
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Thread entry point.
pub fn spawn(setup: WorkerSetup) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    let id = setup.settings.id;
    let pin = setup.settings.pin_cpu;
    std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || {
            if let Some(cpu) = pin {
                if let Err(e) = pin_to_cpu(cpu) {
                    log::warn!("worker {id}: cannot pin to CPU {cpu}: {e}");
                }
            }
            let WorkerSetup {
                settings,
                engine,
                ctrl,
                listeners,
                snapshot,
                stats_tx,
                peers,
            } = setup;
            // Monomorphized per engine: no dynamic dispatch on the hot path.
            match engine {
                AnyEngine::Mio(e) => {
                    Worker::new(settings, e, ctrl, listeners, snapshot, stats_tx, peers)?.run()
                }
                AnyEngine::Uring(e) => {
                    Worker::new(settings, e, ctrl, listeners, snapshot, stats_tx, peers)?.run()
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// What every idle connection costs the worker (perf/idle_rss measures the whole; see
    /// perf/RESULTS.md): a session slab entry per client, a `ConnMeta` per connection. A field
    /// that grows these is paid by every idle connection: box it, or keep it elsewhere.
    #[test]
    fn per_connection_structures_stay_small() {
        assert!(
            size_of::<super::Owner>() <= 8,
            "Owner: {}",
            size_of::<super::Owner>()
        );
        assert!(
            size_of::<super::ConnMeta>() <= 32,
            "ConnMeta: {}",
            size_of::<super::ConnMeta>()
        );
        assert!(
            size_of::<super::Entry>() <= 248,
            "session slab entry: {}",
            size_of::<super::Entry>()
        );
        // The entry is as large as the larger of the two: neither may outgrow the other's
        // budget unnoticed.
        assert!(
            size_of::<crate::session::tcp::TcpSession>() <= 224,
            "TcpSession: {}",
            size_of::<crate::session::tcp::TcpSession>()
        );
        assert!(
            size_of::<crate::session::http::HttpSession>() <= 224,
            "HttpSession: {}",
            size_of::<crate::session::http::HttpSession>()
        );
        assert!(
            size_of::<crate::session::flow::Flow>() <= 56,
            "Flow: {}",
            size_of::<crate::session::flow::Flow>()
        );
    }

    /// The pool's lists and the positions remembered for their connections agree after any
    /// mix of pooling, taking a connection back by its position, taking the newest, and
    /// removing one (the look-ups that replaced scans of lists of thousands).
    #[test]
    fn pooled_positions_stay_right_through_takes_and_removals() {
        use super::{PoolTimes, UpstreamPool};
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut pool = UpstreamPool::default();
        let mut times = vec![PoolTimes::default(); 512];
        let slot = pool.slot(addr);
        let mut pooled: Vec<u32> = Vec::new();
        let mut next = 0u32;
        // A deterministic mix (xorshift): push, take by position, take the newest, remove.
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let pick = |n: usize| (x as usize / 4) % n.max(1);
            match x % 4 {
                0 | 1 if next < 512 => {
                    assert!(pool.push(&mut times, slot, next));
                    pooled.push(next);
                    next += 1;
                }
                2 if !pooled.is_empty() => {
                    let c = pooled.swap_remove(pick(pooled.len()));
                    let at = pool.position(&times, slot, c).expect("pooled is found");
                    assert_eq!(pool.take_at(&mut times, slot, at), Some(c));
                }
                3 if !pooled.is_empty() => {
                    let c = pooled.swap_remove(pick(pooled.len()));
                    pool.remove(&mut times, slot, c);
                    assert_eq!(pool.position(&times, slot, c), None, "removed");
                }
                _ => {
                    let len = pool.lists[slot as usize].1.len();
                    if let Some(c) = len
                        .checked_sub(1)
                        .and_then(|at| pool.take_at(&mut times, slot, at))
                    {
                        pooled.retain(|&p| p != c);
                    }
                }
            }
            let (_, list) = &pool.lists[slot as usize];
            assert_eq!(list.len(), pooled.len());
            for (i, &c) in list.iter().enumerate() {
                assert_eq!(times[c as usize].pos as usize, i, "connection {c}");
            }
        }
        // Not pooled (any more): not found, and removing it changes nothing.
        let before = pool.lists[slot as usize].1.clone();
        let gone = (0..next)
            .find(|c| !before.contains(c))
            .expect("one was taken");
        assert_eq!(pool.position(&times, slot, gone), None);
        pool.remove(&mut times, slot, gone);
        pool.remove(&mut times, slot, 600);
        assert_eq!(pool.lists[slot as usize].1, before);
    }
}
