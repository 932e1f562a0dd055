//! One worker per core: a `mio::Poll`, its own `SO_REUSEPORT` listening sockets, a `Slab` of
//! sessions stored by value, a buffer pool, a timer wheel and local counters.
//!
//! HOT PATH. No lock, no blocking call, no info-level log per connection or per byte here;
//! allocation only when a slab or queue grows past its previous high-water mark.
//!
//! Every loop is bounded: accepts per wake-up ([`ACCEPT_BATCH`]), rounds per session pump
//! (`tcp::pipe::MAX_ROUNDS`) and sessions resumed per iteration; a bound hit is counted in
//! `loop_bound_hits` and the remaining work is queued for the next iteration (poll with a zero
//! timeout), so one busy connection cannot starve the others.

use crate::balance::{hash_ip, Outcome, PickCtx};
use crate::buffer::BufferPool;
use crate::config::{BalanceKind, HashOn, Protocol};
use crate::ready::Ready;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::stats::{HttpCounters, StatsMsg, StatsSender, TcpCounters, WorkerStats, FLUSH_INTERVAL};
use crate::tcp::pipe::{CloseReason, Ctx, Phase, Step, TcpSession};
use crate::tcp::splice::PipePool;
use crate::timer::TimerWheel;
use crate::token::{self, Decoded, Side};
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod http;
mod obs;
mod pick;

use http::HttpEntry;
use pick::{Balancers, Pick};

/// A multiplicative (FxHash-style) hasher for the upstream pool, which is looked up three
/// times per HTTP request. Its keys are backend addresses from the config, never chosen by
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

/// Connections accepted per listener wake-up before yielding.
pub const ACCEPT_BATCH: usize = 64;
/// Queued sessions resumed per loop iteration.
const RESUME_BATCH: usize = 256;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptor exhaustion is logged at most this often (it is always counted).
const FD_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest poll sleep, so periodic duties (stats, shutdown deadline) run.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Control messages from other threads; always followed by a `Waker::wake`.
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
}

/// The handle other threads use to talk to a worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub tx: Sender<Ctrl>,
    pub waker: Arc<Waker>,
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
    /// Kernel pipes for splicing bulk flows (0 = never splice).
    pub pipes: usize,
    /// Large buffers (for HTTP request heads beyond `buffer_size`): size and count; 0 = none.
    pub large_buffer_size: usize,
    pub large_buffers: usize,
    /// This worker's access-log queue, when the log is on.
    pub access_log: Option<crossbeam_channel::Sender<crate::accesslog::Record>>,
    pub max_sessions: usize,
    pub pin_cpu: Option<usize>,
    /// `server.stats = "minimal"`.
    pub stats_minimal: bool,
}

/// Everything a worker thread needs, prepared on the main thread so that start-up errors
/// (bind, poll creation) are reported before any thread runs.
pub struct WorkerSetup {
    pub settings: WorkerSettings,
    pub poll: Poll,
    pub ctrl: Receiver<Ctrl>,
    pub listeners: Vec<std::net::TcpListener>,
    pub snapshot: SharedSnapshot,
    pub stats_tx: StatsSender,
}

/// Creates the poll, waker and control channel for one worker.
pub fn prepare(
    settings: WorkerSettings,
    listeners: Vec<std::net::TcpListener>,
    snapshot: SharedSnapshot,
    stats_tx: StatsSender,
) -> io::Result<(WorkerSetup, WorkerHandle)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), token::WAKER)?);
    let (tx, ctrl) = crossbeam_channel::unbounded();
    Ok((
        WorkerSetup {
            settings,
            poll,
            ctrl,
            listeners,
            snapshot,
            stats_tx,
        },
        WorkerHandle { tx, waker },
    ))
}

pub struct Worker {
    id: usize,
    poll: Poll,
    ctrl: Receiver<Ctrl>,
    listeners: Vec<Option<TcpListener>>,
    sessions: Slab<TcpSession>,
    /// HTTP sessions and pooled upstream connections.
    http: Slab<HttpEntry>,
    /// HTTP sessions in `http` (the rest are pooled connections).
    http_sessions: usize,
    http_stats: HttpCounters,
    /// Idle upstream connections per backend address (keys into `http`).
    upstream_pool: HashMap<SocketAddr, Vec<usize>, BuildHasherDefault<AddrHasher>>,
    /// Source of generated X-Request-Id values.
    request_ids: u64,
    http_ready: VecDeque<usize>,
    http_starved: VecDeque<usize>,
    /// HTTP sessions waiting for a connection slot (cluster or backend at its limit).
    http_pending: VecDeque<usize>,
    access_log: Option<crossbeam_channel::Sender<crate::accesslog::Record>>,
    /// Wall-clock time at `started` (for access-log timestamps without a syscall each).
    wall_start: std::time::SystemTime,
    started: Instant,
    max_sessions: usize,
    pool: BufferPool,
    pipes: PipePool,
    timers: TimerWheel,
    expired: Vec<(usize, u32)>,
    next_gen: u32,
    snapshot: SharedSnapshot,
    balancers: Balancers,
    stats: TcpCounters,
    /// Per listener/cluster/backend counters, histograms, Foo counts.
    obs: WorkerStats,
    stats_tx: StatsSender,
    last_flush: Instant,
    /// Sessions with work left after hitting a bound.
    ready: VecDeque<usize>,
    /// Sessions waiting for a pool buffer.
    starved: VecDeque<usize>,
    /// Listeners with connections left after hitting the accept bound.
    accept_again: Vec<usize>,
    /// Accepting paused (fd exhaustion) until then.
    accept_paused_until: Option<Instant>,
    /// Accepting stopped because `max_sessions` was reached.
    accept_full: bool,
    /// When descriptor exhaustion was last logged (logged at most every FD_LOG_INTERVAL).
    fd_exhaustion_logged: Option<Instant>,
    /// Accepted sessions waiting for a descriptor to connect to their backend.
    fd_waiters: VecDeque<usize>,
    shutdown: Option<Instant>,
    now: Instant,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let WorkerSetup {
            settings,
            poll,
            ctrl,
            listeners,
            snapshot,
            stats_tx,
        } = setup;
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, token::listener(i), Interest::READABLE)?;
            mio_listeners.push(Some(l));
        }
        let now = Instant::now();
        let balancers = Balancers::build(&snapshot.load(), None);
        Ok(Worker {
            id: settings.id,
            poll,
            ctrl,
            listeners: mio_listeners,
            sessions: Slab::with_capacity(1024),
            http: Slab::with_capacity(1024),
            http_sessions: 0,
            http_stats: HttpCounters::default(),
            upstream_pool: HashMap::default(),
            // Worker id in the top byte, the start time below: ids differ across workers and
            // restarts.
            request_ids: ((settings.id as u64) << 56)
                ^ (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    & ((1 << 56) - 1)),
            http_ready: VecDeque::new(),
            http_starved: VecDeque::new(),
            http_pending: VecDeque::new(),
            access_log: settings.access_log,
            wall_start: std::time::SystemTime::now(),
            started: now,
            max_sessions: settings.max_sessions,
            pool: BufferPool::with_large(
                settings.buffer_size,
                settings.buffers,
                settings.large_buffer_size,
                settings.large_buffers,
            ),
            pipes: PipePool::new(settings.pipes),
            timers: TimerWheel::new(now),
            expired: Vec::with_capacity(1024),
            next_gen: 0,
            snapshot,
            balancers,
            stats: TcpCounters::default(),
            obs: WorkerStats::new(settings.stats_minimal),
            stats_tx,
            last_flush: now,
            ready: VecDeque::with_capacity(1024),
            starved: VecDeque::with_capacity(1024),
            accept_again: Vec::new(),
            accept_paused_until: None,
            accept_full: false,
            fd_exhaustion_logged: None,
            fd_waiters: VecDeque::new(),
            shutdown: None,
            now,
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.now = Instant::now();
            for ev in events.iter() {
                match token::decode(ev.token()) {
                    Decoded::Waker => self.handle_ctrl(),
                    Decoded::Listener(i) => self.accept(i),
                    Decoded::Session(key, side) => {
                        if let Some(s) = self.sessions.get_mut(key) {
                            s.on_event(side, Ready::from_event(ev));
                            self.drive(key);
                        }
                        // else: a stale event for a session closed earlier in this batch.
                    }
                    Decoded::Http(key, side) => {
                        self.on_http_event(key, side, Ready::from_event(ev))
                    }
                }
            }
            self.resume_queued();
            self.expire_timers();
            if self.now.duration_since(self.last_flush) >= FLUSH_INTERVAL {
                self.flush_stats(0);
            }
            if let Some(deadline) = self.shutdown {
                if self.sessions.is_empty() && self.http_sessions == 0 {
                    break;
                }
                if self.now >= deadline {
                    self.abort_all();
                    break;
                }
            }
        }
        self.flush_stats(0);
        Ok(())
    }

    fn poll_timeout(&self) -> Duration {
        let accept_now = (!self.accept_again.is_empty() || !self.fd_waiters.is_empty())
            && self.accept_paused_until.is_none();
        if !self.ready.is_empty()
            || !self.http_ready.is_empty()
            || accept_now
            || ((!self.starved.is_empty() || !self.http_starved.is_empty())
                && self.pool.available() > 0)
        {
            return Duration::ZERO;
        }
        let mut t = MAX_SLEEP;
        if let Some(d) = self.timers.next_timeout_within(self.now, MAX_SLEEP) {
            t = t.min(d);
        }
        if let Some(at) = self.accept_paused_until {
            t = t.min(at.saturating_duration_since(self.now));
        }
        t
    }

    fn handle_ctrl(&mut self) {
        while let Ok(msg) = self.ctrl.try_recv() {
            match msg {
                Ctrl::FlushStats(seq) => self.flush_stats(seq),
                Ctrl::AddListener { slot, socket } => self.add_listener(slot, socket),
                Ctrl::RemoveListener { slot } => self.remove_listener(slot),
                Ctrl::Shutdown { deadline } => {
                    let first = self.shutdown.is_none();
                    self.shutdown = Some(self.shutdown.map_or(deadline, |d| d.min(deadline)));
                    if first {
                        // Closing our listening sockets: the kernel stops routing new
                        // connections to this worker.
                        for l in self.listeners.iter_mut() {
                            if let Some(mut l) = l.take() {
                                let _ = self.poll.registry().deregister(&mut l);
                            }
                        }
                        self.accept_again.clear();
                        self.shutdown_http();
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
        let since = std::mem::replace(&mut self.last_flush, self.now);
        if self.stats.is_zero() && self.http_stats.is_zero() && self.obs.is_zero() && seq == 0 {
            return;
        }
        let tcp = std::mem::take(&mut self.stats);
        let http = std::mem::take(&mut self.http_stats);
        let detail = self.obs.take_delta();
        // The aggregator only disappears at exit; losing a delta then is harmless.
        let _ = self.stats_tx.send(StatsMsg::Delta {
            worker: self.id,
            seq,
            since,
            tcp,
            http,
            detail,
        });
    }

    // ------------------------------------------------------------------ accepting

    fn add_listener(&mut self, slot: usize, socket: std::net::TcpListener) {
        if self.shutdown.is_some() || slot >= token::MAX_LISTENERS {
            return; // dropping the socket closes it
        }
        self.remove_listener(slot);
        let mut l = TcpListener::from_std(socket);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut l, token::listener(slot), Interest::READABLE)
        {
            log::error!("worker {}: cannot watch listener slot {slot}: {e}", self.id);
            return;
        }
        if self.listeners.len() <= slot {
            self.listeners.resize_with(slot + 1, || None);
        }
        self.listeners[slot] = Some(l);
        // Connections may have queued between the bind and now: edge-triggered epoll reports
        // them on registration, but accepting once more costs one syscall.
        if !self.accept_again.contains(&slot) {
            self.accept_again.push(slot);
        }
    }

    fn remove_listener(&mut self, slot: usize) {
        if let Some(mut l) = self.listeners.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accept_again.retain(|&li| li != slot);
    }

    fn accept(&mut self, li: usize) {
        if self.shutdown.is_some() {
            return;
        }
        if let Some(at) = self.accept_paused_until {
            if self.now < at {
                // Retried when the pause ends (the poll timeout wakes us then).
                if !self.accept_again.contains(&li) {
                    self.accept_again.push(li);
                }
                return;
            }
            self.accept_paused_until = None;
        }
        for _ in 0..ACCEPT_BATCH {
            if self.sessions.len() + self.http_sessions >= self.max_sessions {
                // Leave the rest in the kernel backlog; resumed when a session closes.
                self.accept_full = true;
                return;
            }
            let Some(Some(listener)) = self.listeners.get(li) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.open_session(li, stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.accept_errors += 1;
                    if is_resource_exhaustion(&e) {
                        self.descriptors_exhausted(&e);
                        if !self.accept_again.contains(&li) {
                            self.accept_again.push(li);
                        }
                        return;
                    }
                    // ECONNABORTED and friends concern one connection only.
                }
            }
        }
        self.stats.loop_bound_hits += 1;
        if !self.accept_again.contains(&li) {
            self.accept_again.push(li);
        }
    }

    /// Out of descriptors (or kernel memory): stop accepting for a moment so the sessions we
    /// have keep working; waiting clients stay in the kernel backlog. Never spins, never dies.
    fn descriptors_exhausted(&mut self, e: &io::Error) {
        let quiet = self
            .fd_exhaustion_logged
            .is_some_and(|t| self.now.duration_since(t) < FD_LOG_INTERVAL);
        if !quiet {
            log::warn!(
                "worker {}: out of descriptors ({e}); pausing accepts for {:?} at a time \
                 (raise the open-file limit or lower max_connections)",
                self.id,
                ACCEPT_BACKOFF
            );
            self.fd_exhaustion_logged = Some(self.now);
        }
        self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
    }

    /// Acts on the outcome of a connect attempt for session `key`.
    fn after_connect(&mut self, key: usize, r: Connect) {
        match r {
            Connect::Started => self.arm_timer(key),
            Connect::GaveUp => self.close(key, Closing::NoBackend),
            Connect::NoDescriptor => {
                // Keep the client; retry when descriptors free up, for at most one connect
                // timeout from now.
                if let Some(s) = self.sessions.get_mut(key) {
                    s.connect_started = self.now;
                }
                self.arm_timer(key);
                self.fd_waiters.push_back(key);
            }
        }
    }

    fn open_session(&mut self, li: usize, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.accepted += 1;
        let snap = self.snapshot.load_full();
        if let Some(route) = snap.listener(li) {
            let open = route.live.active.fetch_add(1, Ordering::Relaxed);
            if route.max_connections.is_some_and(|max| open >= max) {
                listener_closed(&snap, li);
                self.stats.limit_rejects += 1;
                self.stats.closed += 1;
                if route.protocol == Protocol::Http {
                    // One try; a client that cannot take these bytes now just sees the close.
                    let _ = std::io::Write::write(&mut stream, LISTENER_FULL_503);
                }
                return; // the stream closes on drop
            }
        }
        if snap.listener(li).map(|r| r.protocol) == Some(Protocol::Http) {
            return self.open_http(li, stream, peer);
        }
        // tcp/foo listeners always have a cluster (validated); a listener removed since the
        // accept has none. The stream closes on drop.
        let Some((cluster, protocol)) = snap
            .listener(li)
            .and_then(|r| Some((r.cluster?, r.protocol)))
        else {
            listener_closed(&snap, li);
            self.stats.closed += 1;
            return;
        };
        let cluster = cluster as u32;
        // Foo listeners are analyzed line by line: their bytes must pass through user space.
        let splice_ok = protocol == Protocol::Tcp && self.pipes.enabled();
        let route_is_foo = protocol == Protocol::Foo;
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token::session(key, Side::Front),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::debug!("worker {}: register client failed: {e}", self.id);
            listener_closed(&snap, li);
            self.stats.closed += 1;
            return;
        }
        if self.balancers.version != snap.version {
            self.balancers.update(&snap);
        }
        self.obs.accepted(&snap, li as u32);
        let mut session = TcpSession::new(stream, snap, li as u32, cluster, self.now);
        session.splice_ok = splice_ok;
        if route_is_foo {
            session.sniff_foo();
        }
        session.client_hash = client_hash(&session, peer);
        entry.insert(session);
        let r = self.connect_next(key);
        self.after_connect(key, r);
    }

    // ------------------------------------------------------------------ backends

    /// Starts a connect to the next backend this session has not tried.
    fn connect_next(&mut self, key: usize) -> Connect {
        let Some(s) = self.sessions.get_mut(key) else {
            return Connect::GaveUp;
        };
        let snap = s.snapshot.clone();
        let Some(cluster) = snap.clusters.get(s.cluster as usize) else {
            return Connect::GaveUp;
        };
        // The previous attempt's socket (if any) is closed here.
        if let Some(prev) = s.backend.take() {
            s.back = None;
            if let Some(b) = cluster.backends.get(prev as usize) {
                b.live.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        while s.attempts < cluster.connect_attempts {
            let pick = if self.balancers.version == snap.version {
                let ctx = PickCtx {
                    hash: s.client_hash,
                };
                self.balancers
                    .pick(cluster, s.cluster as usize, s.tried, &ctx, self.now)
            } else {
                // The session predates the current snapshot: any untried backend of its own.
                (0..cluster.backends.len())
                    .find(|&i| !s.tried.contains(i))
                    .map_or(Pick::Exhausted, Pick::Backend)
            };
            let idx = match pick {
                Pick::Backend(i) => i,
                Pick::FailOpen(i) => {
                    self.stats.fail_open += 1;
                    i
                }
                Pick::Full => {
                    self.stats.limit_rejects += 1;
                    return Connect::GaveUp;
                }
                Pick::Exhausted => return Connect::GaveUp,
            };
            s.tried.insert(idx);
            s.attempts += 1;
            if s.attempts > 1 {
                self.stats.connect_retries += 1;
            }
            let backend = &cluster.backends[idx];
            match TcpStream::connect(backend.addr) {
                Ok(mut stream) => {
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            token::session(key, Side::Back),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.stats.connect_failed += 1;
                        continue;
                    }
                    backend.live.active.fetch_add(1, Ordering::Relaxed);
                    s.set_backend(idx as u32, stream, self.now);
                    return Connect::Started;
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    // Our problem, not the backend's: this attempt does not count.
                    s.tried.remove(idx);
                    s.attempts -= 1;
                    self.stats.accept_errors += 1;
                    self.descriptors_exhausted(&e);
                    return Connect::NoDescriptor;
                }
                Err(_) => {
                    self.stats.connect_failed += 1;
                    if self.balancers.version == snap.version {
                        if let Some(b) = self.balancers.by_cluster.get_mut(s.cluster as usize) {
                            b.observe(idx, Duration::ZERO, Outcome::Failure);
                        }
                    }
                }
            }
        }
        Connect::GaveUp
    }

    // ------------------------------------------------------------------ sessions

    /// Pumps a session and acts on the result.
    fn drive(&mut self, key: usize) {
        // Bounded: each pass either returns or starts a new connect attempt, and attempts are
        // bounded by the cluster's connect_attempts.
        loop {
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            let before = (
                self.stats.bytes_client_to_backend,
                self.stats.bytes_backend_to_client,
            );
            let mut cx = Ctx {
                pool: &mut self.pool,
                pipes: &mut self.pipes,
                stats: &mut self.stats,
                now: self.now,
            };
            let step = s.pump(&mut cx);
            self.obs_pumped(key, before);
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            match step {
                Step::Idle => return,
                Step::Yield => {
                    self.stats.loop_bound_hits += 1;
                    if !s.queued {
                        s.queued = true;
                        self.ready.push_back(key);
                    }
                    return;
                }
                Step::WaitBuffer => {
                    self.stats.buffer_waits += 1;
                    if !s.queued {
                        s.queued = true;
                        self.starved.push_back(key);
                    }
                    return;
                }
                Step::Connected => {
                    self.observe_connect(key, Outcome::Success);
                    // The idle timeout may be shorter than the connect timeout still armed.
                    self.arm_timer(key);
                }
                Step::ConnectFailed => {
                    self.stats.connect_failed += 1;
                    self.observe_connect(key, Outcome::Failure);
                    let r = self.connect_next(key);
                    self.after_connect(key, r);
                    return;
                }
                Step::Close(reason) => {
                    self.close(key, Closing::Pipe(reason));
                    return;
                }
            }
        }
    }

    /// Resumes sessions that yielded or waited for buffers, and listeners with a backlog.
    fn resume_queued(&mut self) {
        if self.accept_paused_until.is_some_and(|at| self.now >= at) {
            self.accept_paused_until = None;
        }
        for _ in 0..self.ready.len().min(RESUME_BATCH) {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            if let Some(s) = self.sessions.get_mut(key) {
                s.queued = false;
                self.drive(key);
            }
        }
        for _ in 0..self.http_ready.len().min(RESUME_BATCH) {
            let Some(key) = self.http_ready.pop_front() else {
                break;
            };
            self.resume_http(key);
        }
        let mut budget = RESUME_BATCH;
        while self.pool.available() > 0 && budget > 0 {
            let Some(key) = self.http_starved.pop_front() else {
                break;
            };
            budget -= 1;
            self.resume_http(key);
        }
        let mut budget = RESUME_BATCH;
        while self.pool.available() > 0 && budget > 0 {
            let Some(key) = self.starved.pop_front() else {
                break;
            };
            budget -= 1;
            if let Some(s) = self.sessions.get_mut(key) {
                s.queued = false;
                self.drive(key);
            }
        }
        // Sessions that could not get a descriptor retry first, once the pause is over: they
        // were accepted earlier than anyone still in the backlog.
        if self.accept_paused_until.is_none() {
            for _ in 0..self.fd_waiters.len().min(RESUME_BATCH) {
                let Some(key) = self.fd_waiters.pop_front() else {
                    break;
                };
                if self.sessions.get(key).is_some_and(|s| s.back.is_none()) {
                    let r = self.connect_next(key);
                    self.after_connect(key, r);
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

    fn arm_timer(&mut self, key: usize) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        if let Some(s) = self.sessions.get_mut(key) {
            s.timer_gen = gen;
            // Timer keys: slab key << 1, low bit 0 for TCP sessions, 1 for the HTTP slab.
            self.timers.insert(key << 1, gen, s.deadline());
        }
    }

    fn expire_timers(&mut self) {
        self.timers.advance(self.now, &mut self.expired);
        let mut expired = std::mem::take(&mut self.expired);
        for (tkey, gen) in expired.drain(..) {
            let key = tkey >> 1;
            if tkey & 1 == 1 {
                let Some(e) = self.http.get_mut(key) else {
                    continue;
                };
                if e.timer_gen() != gen {
                    continue;
                }
                if e.is_lent_upstream() {
                    // Its session's timer covers it; it is armed again when pooled.
                    e.timer_fired();
                    continue;
                }
                let deadline = e.deadline();
                if deadline > self.now {
                    e.timer_moved(deadline);
                    self.timers.insert(tkey, gen, deadline);
                } else {
                    e.timer_fired();
                    self.http_timeout(key);
                }
                continue;
            }
            let Some(s) = self.sessions.get(key) else {
                continue;
            };
            if s.timer_gen != gen {
                continue;
            }
            let deadline = s.deadline();
            if deadline > self.now {
                self.timers.insert(tkey, gen, deadline);
                continue;
            }
            match s.phase {
                Phase::Connecting => {
                    self.stats.connect_timeouts += 1;
                    if s.back.is_none() {
                        // Waited a whole connect timeout for a descriptor: give up.
                        self.close(key, Closing::NoBackend);
                    } else {
                        self.observe_connect(key, Outcome::Failure);
                        let r = self.connect_next(key);
                        self.after_connect(key, r);
                    }
                }
                Phase::Streaming => {
                    self.stats.idle_timeouts += 1;
                    self.close(key, Closing::Timeout);
                }
            }
        }
        self.expired = expired;
    }

    /// Tells the session's balancer how its current connect attempt ended, and how long it
    /// took (the connect time is P2C's latency sample on TCP).
    fn observe_connect(&mut self, key: usize, outcome: Outcome) {
        self.obs_connect(key, outcome);
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let Some(idx) = s.backend else {
            return;
        };
        // A balancer built for another snapshot numbers the backends differently.
        if self.balancers.version != s.snapshot.version {
            return;
        }
        let rtt = self.now.saturating_duration_since(s.connect_started);
        let ci = s.cluster as usize;
        if let Some(d) = self
            .balancers
            .observe(ci, idx as usize, rtt, outcome, self.now, true)
        {
            self.ejected(ci, idx as usize, d);
        }
    }

    /// Passive outlier detection ejected a backend (this worker's view).
    pub(super) fn ejected(&mut self, ci: usize, idx: usize, d: Duration) {
        self.stats.outlier_ejections += 1;
        // Shown as "ejected" in /stats and /metrics (rare: once per ejection).
        let snap = self.snapshot.load();
        if snap.version == self.balancers.version {
            if let Some(b) = snap.clusters.get(ci).and_then(|c| c.backends.get(idx)) {
                let until = crate::snapshot::unix_ms() + d.as_millis() as u64;
                b.live.ejected_until_ms.fetch_max(until, Ordering::Relaxed);
            }
        }
        let (cluster, addr) = self.balancers.describe(ci, idx);
        log::warn!(
            "worker {}: backend {} of cluster {cluster} ejected for {d:?} after consecutive failures",
            self.id,
            addr.map_or_else(|| "?".to_string(), |a| a.to_string())
        );
    }

    fn close(&mut self, key: usize, why: Closing) {
        if !self.sessions.contains(key) {
            return;
        }
        let mut s = self.sessions.remove(key);
        s.release_resources(&mut self.pool, &mut self.pipes);
        self.obs.closed(&s.snapshot, s.listener);
        listener_closed(&s.snapshot, s.listener as usize);
        match why {
            Closing::Pipe(CloseReason::Done) | Closing::Timeout | Closing::Shutdown => {}
            Closing::Pipe(CloseReason::BackendReset) => {
                self.stats.backend_resets += 1;
                reset_on_close(&s.front);
            }
            Closing::Pipe(CloseReason::ClientReset) => {
                self.stats.client_resets += 1;
                if let Some(b) = &s.back {
                    reset_on_close(b);
                }
            }
            Closing::NoBackend => self.stats.no_backend += 1,
        }
        if let Some(idx) = s.backend {
            if let Some(b) = s.snapshot.clusters[s.cluster as usize]
                .backends
                .get(idx as usize)
            {
                b.live.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.stats.closed += 1;
        // Dropping the session closes both sockets, which also removes them from epoll.
        drop(s);
        self.after_session_closed();
    }

    /// A slot freed up: resume accepting if the connection limit had stopped it.
    fn after_session_closed(&mut self) {
        if self.accept_full && self.sessions.len() + self.http_sessions < self.max_sessions {
            self.accept_full = false;
            for li in 0..self.listeners.len() {
                if self.listeners[li].is_some() && !self.accept_again.contains(&li) {
                    self.accept_again.push(li);
                }
            }
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
            self.stats.shutdown_aborted += 1;
            self.close(key, Closing::Shutdown);
        }
        self.abort_http();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    Started,
    /// Attempts used up or every backend tried.
    GaveUp,
    /// No descriptor for the backend socket; the session waits in `fd_waiters`.
    NoDescriptor,
}

#[derive(Debug, Clone, Copy)]
enum Closing {
    Pipe(CloseReason),
    NoBackend,
    Timeout,
    Shutdown,
}

/// The answer to an HTTP client over its listener's `max_connections`.
const LISTENER_FULL_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 34\r\nRetry-After: 1\r\nConnection: close\r\n\r\nlistener connection limit reached\n";

/// A client connection of listener `li` ended (the count is shared across snapshots by
/// listener name; it never wraps below zero).
pub(super) fn listener_closed(snap: &Snapshot, li: usize) {
    if let Some(route) = snap.listener(li) {
        let _ = route
            .live
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// The hash a `hash` cluster picks by, when it hashes on the client address.
fn client_hash(s: &TcpSession, peer: SocketAddr) -> Option<u64> {
    let cluster = s.snapshot.clusters.get(s.cluster as usize)?;
    (cluster.balance == BalanceKind::Hash && cluster.hash_on == Some(HashOn::ClientIp))
        .then(|| hash_ip(peer.ip()))
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Makes the coming close send RST instead of FIN, so a reset crosses the proxy as a reset.
fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
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
            Worker::new(setup)?.run()
        })
}
