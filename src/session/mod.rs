//! Sessions: the I/O-free state machines of one downstream connection each.
//!
//! A session never touches a socket. The worker asks it what it wants next
//! ([`Session::next`]): an I/O op on one of its two connections, an upstream, nothing, or to
//! be closed. I/O results come back through [`Session::complete`], timeouts through
//! [`Session::timed_out`]. Everything that needs the engine, the balancers, the upstream pool
//! or the queues is the worker's; everything about bytes and protocol is the session's. The
//! same sessions therefore run on every engine, and unit tests drive them with byte scripts
//! (see `tests` in [`tcp`] and [`http`]).
//!
//! Two sides everywhere: **downstream** (the client connection) and **upstream** (the
//! backend connection).
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log in this module tree.

pub mod flow;
pub mod http;
pub mod mirror;
pub mod tcp;
#[cfg(test)]
mod testkit;

use crate::balance::Tried;
use crate::engine::{ConnId, Done, Op};
use crate::io::{BufferPool, PipePool};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::stats::{ConnCounters, HttpCounters};
use std::sync::Arc;
use std::time::Instant;

pub use http::HttpSession;
pub use tcp::TcpSession;

/// Which of a session's two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client connection.
    Downstream = 0,
    /// The backend connection.
    Upstream = 1,
}

/// What a session asks the worker for.
#[derive(Debug)]
pub enum Want {
    /// Submit this op on that connection.
    Io(Side, Op),
    /// Nothing to do until a completion, a timer or the worker hands something over.
    Idle,
    /// The round bound was hit with work left: queue me for the next loop turn.
    Yield,
    /// A pool buffer is needed and there is none: queue me until buffers come back.
    Buffer,
    /// A pool buffer for new work already begun (a request whose head is in) is needed and
    /// no more than half the pool's reserve is free: queue me until there is more
    /// ([`crate::io::BufferPool::checkout_begun`]).
    BufferNew,
    /// An upstream step for the worker (connect, balancer feedback, pool).
    Upstream(Up),
    Close(CloseReason),
}

/// A want that carries no op: what a session keeps to say at its next `next` (small and
/// `Copy`, so keeping it moves no buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Upstream(Up),
    Close(CloseReason),
}

impl From<Signal> for Want {
    #[inline]
    fn from(s: Signal) -> Want {
        match s {
            Signal::Upstream(u) => Want::Upstream(u),
            Signal::Close(c) => Want::Close(c),
        }
    }
}

/// Upstream steps a session asks the worker for (balancing, connecting, pooling are the
/// worker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// Give me an upstream for [`Target::cluster`]: the next backend to try (TCP: a new
    /// connection; HTTP: a pooled one when there is one).
    Need,
    /// The upstream connect completed.
    Connected,
    /// The connect failed or timed out, or a reused connection died before anything came
    /// back: close it and try the next backend (the session counted the failure).
    Failed,
    /// HTTP: the backend answered 5xx (or not in time) and the retry policy sends the request
    /// to another backend: a failure for this one; close it and try again.
    Retry,
    /// HTTP: close the upstream without trying another backend (the session answers the
    /// client itself). `failure`: it counts against the backend.
    Drop { failure: bool },
    /// HTTP: the exchange is complete. Pool the upstream when `reusable`, else close it.
    Release { reusable: bool },
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished cleanly (or the client left between requests).
    Done,
    /// The client reset or went away mid-way: the upstream (if any) is reset too.
    DownstreamReset,
    /// The backend reset or failed mid-response: the client is reset, so it cannot mistake a
    /// truncated response for a complete one.
    UpstreamReset,
    /// No backend could be reached (TCP).
    NoUpstream,
    /// An idle or header timeout.
    Timeout,
    /// Closed at the shutdown deadline.
    Shutdown,
}

impl CloseReason {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::DownstreamReset => "client_reset",
            CloseReason::UpstreamReset => "backend_reset",
            CloseReason::NoUpstream => "no_backend",
            CloseReason::Timeout => "timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Where a session's traffic goes, and what the worker's connect-upstream needs to pick the
/// next backend: the same facts for both protocols (TCP: per connection; HTTP: per request).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Index into the session's snapshot's clusters.
    pub cluster: u32,
    /// The backend of the current upstream (index into the cluster's backends in rotation).
    pub backend: Option<u32>,
    /// Backends tried for this connection (TCP) or request (HTTP).
    pub tried: Tried,
    /// Connect attempts so far.
    pub attempts: u32,
    /// Consistent-hashing key (`hash` clusters).
    pub hash: Option<u64>,
    /// When the current upstream was asked for or handed over (connect time, pending wait).
    pub started: Instant,
}

impl Target {
    pub fn new(cluster: u32, hash: Option<u64>, now: Instant) -> Target {
        Target {
            cluster,
            backend: None,
            tried: Tried::default(),
            attempts: 0,
            hash,
            started: now,
        }
    }
}

/// The worker state sessions use besides the pools, in one place so that lending it to a
/// session is one pointer (a [`Cx`] is built for every step).
pub struct Env {
    pub now: Instant,
    /// `now` as nanoseconds since the worker started (set with it, once per loop turn): a
    /// request's latency is one integer subtraction instead of an `Instant`'s.
    pub now_ns: u64,
    pub conns: ConnCounters,
    pub http: HttpCounters,
    /// Source of generated X-Request-Id values (worker id in the high bits).
    pub request_ids: u64,
    /// The live routing state: each HTTP request is routed on the latest snapshot.
    pub shared: SharedSnapshot,
    /// The version `shared` held when the worker last looked (once per loop turn, after its
    /// poll: a request read in this turn arrived after every snapshot published before
    /// that), or `u64::MAX`: unknown, look. A session whose snapshot has this version skips
    /// loading `shared`.
    pub shared_version: u64,
    /// Recycled per-request state (no allocation per request).
    pub exchanges: http::ExchangePool,
    /// Where request and response heads are parsed (no head set up or copied per request).
    pub heads: http::HeadSlots,
    /// An access log wants records (else their fields are not filled in).
    pub access_log: bool,
}

impl Env {
    pub fn new(shared: SharedSnapshot, request_ids: u64, now: Instant) -> Env {
        Env {
            now,
            now_ns: 0,
            conns: ConnCounters::default(),
            http: HttpCounters::default(),
            request_ids,
            shared,
            shared_version: u64::MAX,
            exchanges: http::ExchangePool::default(),
            heads: http::HeadSlots::default(),
            access_log: false,
        }
    }
}

/// Everything a session borrows from its worker while it runs: the engine's pools and the
/// worker's [`Env`] (reached through `Deref`: `cx.now`, `cx.http`, ...).
pub struct Cx<'a> {
    pub pool: &'a mut BufferPool,
    /// Kernel pipes for splicing bulk flows and long response bodies.
    pub pipes: &'a mut PipePool,
    pub env: &'a mut Env,
}

impl std::ops::Deref for Cx<'_> {
    type Target = Env;
    #[inline]
    fn deref(&self) -> &Env {
        self.env
    }
}

impl std::ops::DerefMut for Cx<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Env {
        self.env
    }
}

/// A session of either protocol, stored by value in the worker's slab.
pub enum Session {
    Tcp(TcpSession),
    Http(HttpSession),
}

impl Session {
    /// What the session wants next.
    #[inline]
    pub fn next(&mut self, cx: &mut Cx<'_>) -> Want {
        match self {
            Session::Tcp(s) => s.next(cx),
            Session::Http(s) => s.next(cx),
        }
    }

    /// An op on connection `side` completed.
    #[inline]
    pub fn complete(&mut self, side: Side, done: Done, cx: &mut Cx<'_>) {
        match self {
            Session::Tcp(s) => s.complete(side, done, cx),
            Session::Http(s) => s.complete(side, done, cx),
        }
    }

    /// The current deadline passed (the worker checked): the session decides what it means
    /// and says so at its next [`Session::next`].
    pub fn timed_out(&mut self, cx: &mut Cx<'_>) {
        match self {
            Session::Tcp(s) => s.timed_out(cx),
            Session::Http(s) => s.timed_out(cx),
        }
    }

    /// When the current timeout expires.
    #[inline]
    pub fn deadline(&self) -> Instant {
        match self {
            Session::Tcp(s) => s.deadline(),
            Session::Http(s) => s.deadline(),
        }
    }

    #[inline]
    pub fn conn(&self, side: Side) -> Option<ConnId> {
        match (self, side) {
            (Session::Tcp(s), Side::Downstream) => Some(s.downstream),
            (Session::Tcp(s), Side::Upstream) => s.upstream,
            (Session::Http(s), Side::Downstream) => Some(s.downstream),
            (Session::Http(s), Side::Upstream) => s.upstream_conn(),
        }
    }

    #[inline]
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        match self {
            Session::Tcp(s) => &s.snapshot,
            Session::Http(s) => &s.snapshot,
        }
    }

    #[inline]
    pub fn listener(&self) -> u32 {
        match self {
            Session::Tcp(s) => s.listener,
            Session::Http(s) => s.listener,
        }
    }

    /// The current upstream target (HTTP: of the request in flight, if any).
    #[inline]
    pub fn target(&self) -> Option<&Target> {
        match self {
            Session::Tcp(s) => Some(&s.target),
            Session::Http(s) => s.target(),
        }
    }

    /// The cluster of the current target, in the session's snapshot.
    #[inline]
    pub fn target_cluster(&self) -> Option<&crate::snapshot::Cluster> {
        let t = self.target()?;
        self.snapshot().clusters.get(t.cluster as usize)
    }

    #[inline]
    pub fn target_mut(&mut self) -> Option<&mut Target> {
        match self {
            Session::Tcp(s) => Some(&mut s.target),
            Session::Http(s) => s.target_mut(),
        }
    }

    /// The worker hands over an upstream connection to backend `backend`: a connect in
    /// progress, or (HTTP) a pooled connection, already connected.
    #[inline]
    pub fn set_upstream(&mut self, conn: ConnId, backend: u32, reused: bool, cx: &mut Cx<'_>) {
        match self {
            Session::Tcp(s) => s.set_upstream(conn, backend, cx.now),
            Session::Http(s) => s.set_upstream(conn, backend, reused, cx),
        }
    }

    /// Whether bytes may be spliced through the current upstream (HTTP; TCP sessions are
    /// told at the start with `no_splice`).
    pub fn set_upstream_splice(&mut self, ok: bool) {
        if let Session::Http(s) = self {
            s.set_upstream_splice(ok);
        }
    }

    /// The worker takes the upstream connection away (to close or pool it). The session
    /// forgets it; in-flight ops on it are the worker's to cancel.
    #[inline]
    pub fn take_upstream(&mut self) -> Option<ConnId> {
        match self {
            Session::Tcp(s) => s.take_upstream(),
            Session::Http(s) => s.take_upstream(),
        }
    }

    /// No upstream can be had: `status` is what an HTTP client is told (502, 503, 504).
    pub fn no_upstream(&mut self, status: u16, cx: &mut Cx<'_>) {
        match self {
            Session::Tcp(s) => s.no_upstream(),
            Session::Http(s) => s.no_upstream(status, cx),
        }
    }

    /// Returns the buffers and pipes the session holds (outside in-flight ops) to the pools.
    pub fn release(&mut self, cx: &mut Cx<'_>) {
        match self {
            Session::Tcp(s) => s.release(cx),
            Session::Http(s) => s.release(cx),
        }
    }

    /// The worker drains (see `HttpSession::drain`); TCP sessions just run to their end.
    pub fn drain(&mut self) {
        if let Session::Http(s) = self {
            s.drain();
        }
    }

    /// Idle between requests with nothing buffered: safe to close at shutdown.
    pub fn idle(&self) -> bool {
        match self {
            Session::Tcp(_) => false,
            Session::Http(s) => s.idle(),
        }
    }

    /// HTTP only: the cluster's retry policy for the current attempt (set by the worker).
    pub fn is_http(&self) -> bool {
        matches!(self, Session::Http(_))
    }
}
