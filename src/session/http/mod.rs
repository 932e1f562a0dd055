//! The HTTP/1.1 session: one client connection, requests handled one at a time, each routed
//! and balanced on its own, sent upstream on a pooled keep-alive connection when one is idle.
//!
//! Phases ([`Phase`]) own their data: between requests the session holds nothing but the
//! connection (and bytes of a pipelined request, if any); a routed request owns an
//! [`Exchange`] from the worker's pool until its response is out. A transition takes the old
//! phase apart and builds the next one.
//!
//! ```text
//!   Head ──routed──► (Buffering) ──► Routed ──new conn──► Connecting ──connected──┐
//!    ▲                                │ pooled conn                              ▼
//!    │                                └──────────────────────────────────► Exchange ──101──► Tunnel
//!    │                                                                          │
//!    └─────────────────────── Finished (worker logs, pools the upstream) ◄──────┘
//!   any phase ──error──► Local (a local response, a lingering read, then close)
//! ```
//!
//! One request at a time keeps pipelining trivially ordered: bytes of a pipelined request wait
//! in the client buffer until the current response is out. Within an exchange both directions
//! move at once (a backend may answer before it has read the whole body). Bodies are never
//! buffered whole: they stream through pool buffers, framed by [`exchange::Body`], which
//! forwards exactly the bytes that belong to the message (Content-Length, validated chunked,
//! or until close). Long Content-Length response bodies are spliced.
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log in this module.

mod exchange;
mod fault;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use exchange::{Body, Exchange, ExchangePool, HeadSlots, Retry, UpstreamTimeouts};

use super::flow::End;
use super::{CloseReason, Cx, Side, Signal, Target, Up, Want};
use crate::engine::{ConnId, Done, Op, Slice};
use crate::http::head::Limits;
use crate::io::{Buf, Xfer};
use crate::snapshot::Snapshot;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A local response that cannot be written within this time is abandoned.
const LOCAL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// While the worker drains (shutdown, binary upgrade), an idle keep-alive client is closed
/// after this much silence; a request that comes sooner is answered with `Connection: close`.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// After a local answer that closes the connection: how long (and how many bytes) what the
/// client still sends is read and dropped, so its kernel does not answer our close with a
/// reset that could destroy the response before the client reads it (nginx's lingering
/// close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: u32 = 1 << 20;

/// Client-side timeouts of the listener (in every connection's session: [`Nanos`], half the
/// size of a `Duration`).
#[derive(Debug, Clone, Copy)]
pub struct ListenerTimeouts {
    pub request_header: Nanos,
    /// A request body that stalls this long gets 408.
    pub request_body: Nanos,
    /// Bodies up to this size are read whole before an upstream is asked for (0: never; at
    /// most 1 MiB, `request_buffering`).
    pub buffering: u32,
    pub keepalive: Nanos,
    /// After an upgrade (WebSocket): the tunnel closes when idle this long.
    pub tunnel_idle: Nanos,
}

/// A duration of up to 584 years in nanoseconds: 8 bytes where a `Duration` takes 16.
/// `Instant + Nanos` is an `Instant`, as with a `Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nanos(u64);

impl From<Duration> for Nanos {
    #[inline]
    fn from(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Nanos {
    #[inline]
    pub fn get(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl std::ops::Add<Nanos> for Instant {
    type Output = Instant;
    #[inline]
    fn add(self, d: Nanos) -> Instant {
        self + d.get()
    }
}

/// Where the connection stands.
pub enum Phase {
    /// Waiting for a request head (or the rest of one).
    Head,
    /// Routed, and the body (up to `request_buffering`) is read whole before an upstream is
    /// asked for.
    Buffering(Box<Exchange>),
    /// Routed: the worker is finding an upstream (pick, pool, connect, or a queue).
    Routed(Box<Exchange>),
    /// A new upstream connection is being established.
    Connecting(Box<Exchange>),
    /// Request and response in flight.
    Exchange(Box<Exchange>),
    /// The response is out; the worker logs it and pools or closes the upstream, then
    /// [`HttpSession::end_exchange`] goes back to `Head`.
    Finished(Box<Exchange>),
    /// A locally generated response is being written; the connection closes after it.
    Local(Box<Exchange>),
    /// After `101 Switching Protocols`: bytes pass through both ways.
    Tunnel(Box<Exchange>),
    /// Only while a transition takes the phase apart.
    Taken,
}

pub struct HttpSession {
    pub downstream: ConnId,
    /// The routing state; refreshed to the latest at each request.
    pub snapshot: Arc<Snapshot>,
    pub listener: u32,
    client_ip: IpAddr,
    /// `client_ip` as text, written once per connection for every request's
    /// `X-Forwarded-For` (an IPv6 address takes at most 39 characters).
    client_text: [u8; 40],
    client_text_len: u8,
    phase: Phase,
    /// Client bytes not yet consumed: a partial head, request body bytes, or pipelined
    /// requests behind the current one (`None` also while it travels in an op).
    req_in: Option<Buf>,
    /// `req_in` travels in an upstream send (request body bytes).
    req_in_out: bool,
    /// Ops in flight on the downstream connection's read and write slots.
    down_reading: bool,
    down_writing: bool,
    /// Bytes of a request head have arrived (the header timeout runs).
    head_started: bool,
    /// Close the client once the current response is out.
    close_after: bool,
    /// The worker drains: every response from now on says `Connection: close`.
    draining: bool,
    /// After a local answer: reading and dropping what the client still sends, until
    /// `phase_started + LINGER_TIME` (the local phase's start) or `LINGER_BYTES`.
    lingering: bool,
    lingered: u32,
    timeouts: ListenerTimeouts,
    /// Start of the current phase (head, wait for first byte, local response).
    phase_started: Instant,
    last_active: Instant,
    /// Something for the worker, said at the next [`HttpSession::next`].
    pending: Option<Signal>,
    /// Response bodies may be spliced to the client (not to a TLS client).
    splice_ok: bool,
    /// The upstream connection this session last gave back to the pool ([`NO_CONN`]: none):
    /// a hint the worker tries first when the next request goes to the same backend (no
    /// search of the pool). It may be stale (taken by another session, closed, its id
    /// reused): the worker checks it is still pooled to that backend before using it.
    last_upstream: ConnId,
}

/// No connection (for [`HttpSession::last_upstream`]).
const NO_CONN: ConnId = ConnId::MAX;

impl HttpSession {
    pub fn new(
        downstream: ConnId,
        snapshot: Arc<Snapshot>,
        listener: u32,
        client_ip: IpAddr,
        timeouts: ListenerTimeouts,
        now: Instant,
    ) -> HttpSession {
        let mut client_text = [0u8; 40];
        let client_text_len =
            crate::http::rewrite::write_ip(client_ip, &mut client_text).unwrap_or(0) as u8;
        HttpSession {
            downstream,
            snapshot,
            listener,
            client_ip,
            client_text,
            client_text_len,
            phase: Phase::Head,
            req_in: None,
            req_in_out: false,
            down_reading: false,
            down_writing: false,
            head_started: false,
            close_after: false,
            draining: false,
            lingering: false,
            lingered: 0,
            timeouts,
            phase_started: now,
            last_active: now,
            pending: None,
            splice_ok: true,
            last_upstream: NO_CONN,
        }
    }

    /// The client's address as a PROXY protocol header gave it (before any request).
    pub fn set_client_ip(&mut self, ip: IpAddr) {
        self.client_ip = ip;
        self.client_text_len =
            crate::http::rewrite::write_ip(ip, &mut self.client_text).unwrap_or(0) as u8;
    }

    /// Bytes to the client must pass through user space (a TLS client).
    pub fn no_splice(&mut self) {
        self.splice_ok = false;
    }

    /// Whether the current upstream may splice response bodies (not a TLS upstream).
    pub fn set_upstream_splice(&mut self, ok: bool) {
        if let Some(x) = self.exchange_mut() {
            x.up_splice_ok = ok;
        }
    }

    /// The current request's exchange, in any phase that has one.
    #[inline]
    pub fn exchange(&self) -> Option<&Exchange> {
        match &self.phase {
            Phase::Buffering(x)
            | Phase::Routed(x)
            | Phase::Connecting(x)
            | Phase::Exchange(x)
            | Phase::Finished(x)
            | Phase::Local(x)
            | Phase::Tunnel(x) => Some(x),
            Phase::Head | Phase::Taken => None,
        }
    }

    #[inline]
    pub fn exchange_mut(&mut self) -> Option<&mut Exchange> {
        match &mut self.phase {
            Phase::Buffering(x)
            | Phase::Routed(x)
            | Phase::Connecting(x)
            | Phase::Exchange(x)
            | Phase::Finished(x)
            | Phase::Local(x)
            | Phase::Tunnel(x) => Some(x),
            Phase::Head | Phase::Taken => None,
        }
    }

    #[inline]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn target(&self) -> Option<&Target> {
        self.exchange().map(|x| &x.target)
    }

    pub fn target_mut(&mut self) -> Option<&mut Target> {
        self.exchange_mut().map(|x| &mut x.target)
    }

    #[inline]
    pub fn upstream_conn(&self) -> Option<ConnId> {
        self.exchange().and_then(|x| x.upstream)
    }

    /// The client is to be closed once the current response is out.
    #[inline]
    pub fn wants_close(&self) -> bool {
        self.close_after
    }

    /// The worker drains: no request after the current one. A response not yet started (and
    /// every later one) says `Connection: close`; an idle client is closed after
    /// [`DRAIN_IDLE`]. Closing a keep-alive connection while its client may be sending races
    /// with that request, so the close rides on a response where it can.
    pub fn drain(&mut self) {
        self.draining = true;
        self.timeouts.keepalive = self.timeouts.keepalive.min(DRAIN_IDLE.into());
        // Between requests `close_after` would mean "close now": the next request's head sets
        // it instead (see `start_request`).
        if self.exchange().is_some_and(|x| !x.resp_started) {
            self.close_after = true;
        }
    }

    /// Between requests with nothing buffered: safe to close at shutdown.
    pub fn idle(&self) -> bool {
        matches!(self.phase, Phase::Head)
            && !self.head_started
            && self.req_in.as_ref().is_none_or(Buf::is_empty)
    }

    /// Parse limits of this session's listener.
    pub fn limits(&self) -> Limits {
        self.snapshot
            .listener(self.listener as usize)
            .map(|l| l.limits)
            .unwrap_or_default()
    }

    /// The worker hands over an upstream: a connect in progress (`reused == false`) or an
    /// idle pooled connection (already connected).
    pub fn set_upstream(&mut self, conn: ConnId, backend: u32, reused: bool, cx: &mut Cx<'_>) {
        let x = match std::mem::replace(&mut self.phase, Phase::Taken) {
            Phase::Routed(x) | Phase::Connecting(x) | Phase::Exchange(x) => x,
            other => {
                // Not waiting for an upstream: nothing to hand it to (the worker checks).
                self.phase = other;
                return;
            }
        };
        let mut x = x;
        x.upstream = Some(conn);
        x.reused = reused;
        x.target.backend = Some(backend);
        x.target.started = cx.now;
        x.up_head_sent = 0;
        x.got_response_byte = false;
        x.up_reading = false;
        x.up_writing = false;
        self.phase_started = cx.now;
        self.phase = if reused {
            Phase::Exchange(x)
        } else {
            Phase::Connecting(x)
        };
    }

    /// The upstream connection this session last gave back to the pool, if any (a hint:
    /// it may have been taken or closed since; see the field).
    #[inline]
    pub fn last_upstream(&self) -> Option<ConnId> {
        (self.last_upstream != NO_CONN).then_some(self.last_upstream)
    }

    /// The worker pooled this session's upstream connection `conn` (`None`: forget the hint).
    #[inline]
    pub fn set_last_upstream(&mut self, conn: Option<ConnId>) {
        self.last_upstream = conn.unwrap_or(NO_CONN);
    }

    /// The worker takes the upstream connection away (to close or pool it). Ops still in
    /// flight on it are cancelled by the worker, and what they carried is gone.
    pub fn take_upstream(&mut self) -> Option<ConnId> {
        let lost_client_bytes = self.req_in_out;
        let x = self.exchange_mut()?;
        let conn = x.upstream.take();
        x.up_reading = false;
        x.up_writing = false;
        // A head in flight on that connection is gone with it (then it cannot be resent).
        x.up_head_out = false;
        if lost_client_bytes {
            // Client bytes were in a send on that connection: what followed them (a pipelined
            // request) is gone with it, so this client cannot be served further.
            self.req_in_out = false;
            self.close_after = true;
        }
        if matches!(self.phase, Phase::Connecting(_)) {
            if let Phase::Connecting(x) = std::mem::replace(&mut self.phase, Phase::Taken) {
                self.phase = Phase::Routed(x);
            }
        }
        conn
    }

    /// No upstream can be had: answer `status`.
    pub fn no_upstream(&mut self, status: u16, cx: &mut Cx<'_>) {
        if let Some(w) = self.fail(cx, status) {
            self.pending = Some(w);
        }
    }

    /// After [`Up::Release`]: the exchange goes back to the pool and the session waits for
    /// the next request (or closes, when the client or the response asked to).
    pub fn end_exchange(&mut self, cx: &mut Cx<'_>) {
        if let Phase::Finished(mut x) = std::mem::replace(&mut self.phase, Phase::Head) {
            x.release(cx.pool, cx.pipes);
            cx.exchanges.put(x);
        }
        self.head_started = false;
        self.phase_started = cx.now;
        self.last_active = cx.now;
    }

    /// When the current timeout expires. Inlined: the worker checks it at the end of every
    /// drive (`Entry::timer_covers`).
    #[inline(always)]
    pub fn deadline(&self) -> Instant {
        let t = &self.timeouts;
        match &self.phase {
            Phase::Head if self.head_started => self.phase_started + t.request_header,
            Phase::Head | Phase::Taken | Phase::Finished(_) => self.last_active + t.keepalive,
            Phase::Buffering(x) => x.body_at + t.request_body,
            Phase::Routed(x) | Phase::Connecting(x) => x
                .fault_until
                .unwrap_or(x.target.started + x.timeouts.connect),
            Phase::Exchange(x) => {
                let upstream = if x.got_response_byte {
                    self.last_active + x.timeouts.idle
                } else {
                    self.phase_started + x.timeouts.first_byte
                };
                let d = if x.req_body.done() {
                    upstream
                } else {
                    upstream.min(x.body_at + t.request_body)
                };
                x.answer_at.map_or(d, |a| d.min(a))
            }
            Phase::Local(_) if self.lingering => self.phase_started + LINGER_TIME,
            Phase::Local(_) => self.phase_started + LOCAL_RESPONSE_TIMEOUT,
            Phase::Tunnel(_) => self.last_active + t.tunnel_idle,
        }
    }

    /// The deadline passed. (A session waiting in one of the worker's queues is the worker's
    /// to time out.)
    pub fn timed_out(&mut self, cx: &mut Cx<'_>) {
        if self.fault_timer(cx) {
            return;
        }
        let body_timeout = self.timeouts.request_body;
        let w = match &mut self.phase {
            Phase::Head if self.head_started => {
                // A head not complete in time (slowloris): 408, as HAProxy answers.
                cx.conns.idle_timeouts += 1;
                self.local_response(cx, 408, b"text/plain", b"request header timeout\n")
            }
            Phase::Head | Phase::Taken | Phase::Finished(_) => {
                cx.conns.idle_timeouts += 1;
                Some(Signal::Close(CloseReason::Done))
            }
            Phase::Local(_) if self.lingering => Some(Signal::Close(CloseReason::Done)),
            Phase::Local(_) | Phase::Tunnel(_) => {
                cx.conns.idle_timeouts += 1;
                Some(Signal::Close(CloseReason::Done))
            }
            Phase::Buffering(_) => {
                cx.conns.idle_timeouts += 1;
                self.local_response(cx, 408, b"text/plain", b"request body timeout\n")
            }
            Phase::Exchange(x) if !x.req_body.done() && cx.now >= x.body_at + body_timeout => {
                // The client stopped sending its body: it holds a backend connection no longer.
                cx.conns.idle_timeouts += 1;
                let had_upstream = x.upstream.is_some();
                match self.local_response(cx, 408, b"text/plain", b"request body timeout\n") {
                    Some(w) => Some(w),
                    None => had_upstream.then_some(Signal::Upstream(Up::Drop { failure: false })),
                }
            }
            Phase::Routed(_) | Phase::Connecting(_) => {
                cx.conns.connect_timeouts += 1;
                Some(Signal::Upstream(Up::Failed))
            }
            Phase::Exchange(x) if !x.got_response_byte => {
                if x.retry.on_timeout && x.can_resend() {
                    cx.http.timeouts += 1;
                    Some(Signal::Upstream(Up::Retry))
                } else {
                    // Counted once, as a 504, by `fail`.
                    self.fail(cx, 504)
                }
            }
            Phase::Exchange(_) => {
                cx.http.timeouts += 1;
                Some(Signal::Close(CloseReason::UpstreamReset))
            }
        };
        if let Some(w) = w {
            self.pending = Some(w);
        }
    }

    /// Returns what the session holds (outside in-flight ops) to the pools.
    pub fn release(&mut self, cx: &mut Cx<'_>) {
        if let Some(b) = self.req_in.take() {
            cx.pool.release(b);
        }
        if let Some(mut x) = self.take_exchange() {
            x.release(cx.pool, cx.pipes);
            cx.exchanges.put(x);
        }
    }

    fn take_exchange(&mut self) -> Option<Box<Exchange>> {
        match std::mem::replace(&mut self.phase, Phase::Head) {
            Phase::Buffering(x)
            | Phase::Routed(x)
            | Phase::Connecting(x)
            | Phase::Exchange(x)
            | Phase::Finished(x)
            | Phase::Local(x)
            | Phase::Tunnel(x) => Some(x),
            Phase::Head | Phase::Taken => None,
        }
    }

    // ------------------------------------------------------------------ driving

    /// What the session wants next. (The worker bounds the steps of one drive,
    /// [`crate::worker`]'s `MAX_STEPS`: no count here, so the want is built where it is
    /// returned.)
    pub fn next(&mut self, cx: &mut Cx<'_>) -> Want {
        if let Some(w) = self.pending.take() {
            return w.into();
        }
        match self.phase {
            Phase::Head => self.next_head(cx),
            Phase::Buffering(_) => self.next_buffering(cx),
            Phase::Exchange(_) => self.next_exchange(cx),
            Phase::Local(_) => self.next_local(),
            Phase::Tunnel(_) => self.next_tunnel(cx),
            Phase::Routed(_) | Phase::Connecting(_) | Phase::Finished(_) => Want::Idle,
            Phase::Taken => Want::Close(CloseReason::Done),
        }
    }

    pub fn complete(&mut self, side: Side, done: Done, cx: &mut Cx<'_>) {
        match self.phase {
            Phase::Tunnel(_) => return self.complete_tunnel(side, done, cx),
            Phase::Local(_) if side == Side::Downstream => return self.complete_local(done, cx),
            _ => {}
        }
        match (side, done) {
            (Side::Downstream, Done::Recv { buf, res }) => self.downstream_read(buf, res, cx),
            (Side::Downstream, Done::Send { a, b, res }) => self.downstream_sent(a, b, res, cx),
            (Side::Downstream, Done::SpliceOut { pipe, res }) => {
                self.down_writing = false;
                let Some(x) = self.exchange_mut() else {
                    return cx.pipes.discard(pipe);
                };
                match res {
                    Xfer::Failed(_) => {
                        cx.pipes.discard(pipe);
                        x.splicing = false;
                        x.resp_piped = 0;
                        self.close(CloseReason::DownstreamReset);
                    }
                    res => {
                        let n = (res.bytes() as u32).min(x.resp_piped);
                        x.resp_piped -= n;
                        x.sent += u64::from(n);
                        x.answered |= n > 0;
                        x.resp_pipe = Some(pipe);
                        self.last_active = cx.now;
                    }
                }
            }
            (Side::Upstream, Done::Readable(res)) => {
                let Some(x) = self.exchange_mut() else { return };
                x.up_reading = false;
                x.splice_dry = exchange::Dry::Woke;
                if let Xfer::Failed(_) = res {
                    cx.http.upstream_errors += 1;
                    self.close(CloseReason::UpstreamReset);
                }
            }
            (Side::Upstream, Done::Connect(res)) => self.upstream_connected(res, cx),
            (Side::Upstream, Done::Send { a, b, res }) => self.upstream_sent(a, b, res, cx),
            (Side::Upstream, Done::Recv { buf, res }) => self.upstream_read(buf, res, cx),
            (Side::Upstream, Done::SpliceIn { pipe, res, sent }) => {
                let Some(x) = self.exchange_mut() else {
                    return cx.pipes.discard(pipe);
                };
                x.up_reading = false;
                match res {
                    Xfer::Bytes(0) => {
                        x.resp_pipe = Some(pipe);
                        if x.resp_piped == 0 {
                            // Dry: the pipe goes back while the session waits for the
                            // upstream to be readable (`Op::Readable`), then splices again.
                            if let Some(p) = x.resp_pipe.take() {
                                cx.pipes.put(p);
                            }
                            x.splicing = false;
                            x.splice_dry = if x.splice_dry == exchange::Dry::Woke {
                                exchange::Dry::Buffers
                            } else {
                                exchange::Dry::Wait
                            };
                        }
                    }
                    Xfer::Bytes(n) => {
                        x.resp_piped += n;
                        x.resp_pipe = Some(pipe);
                        x.splice_dry = exchange::Dry::No;
                        if let exchange::Body::Length(left) = x.resp_body {
                            x.resp_body = if u64::from(n) < left {
                                exchange::Body::Length(left - u64::from(n))
                            } else {
                                exchange::Body::None
                            };
                        }
                        // The forward's part: out to the client already.
                        let sent = sent.min(x.resp_piped);
                        x.resp_piped -= sent;
                        x.sent += u64::from(sent);
                        x.answered |= sent > 0;
                        self.last_active = cx.now;
                    }
                    // Closed or broken before the body was complete.
                    Xfer::Eof | Xfer::Failed(_) => {
                        x.resp_pipe = Some(pipe);
                        cx.http.upstream_errors += 1;
                        self.close(CloseReason::UpstreamReset);
                    }
                }
            }
            // Ops the session never asks for on that side.
            (_, done) => crate::engine::recycle(done, cx.pool, cx.pipes),
        }
    }

    /// Ends the session at its next `next` (a reset or failure wins over a clean close).
    fn close(&mut self, why: CloseReason) {
        let keep = matches!(
            self.pending,
            Some(Signal::Close(
                CloseReason::DownstreamReset | CloseReason::UpstreamReset
            ))
        );
        if !keep {
            self.pending = Some(Signal::Close(why));
        }
    }

    // ------------------------------------------------------------------ completions

    fn downstream_read(&mut self, buf: Option<Buf>, res: Xfer, cx: &mut Cx<'_>) {
        self.down_reading = false;
        match res {
            Xfer::Bytes(n) => {
                let Some(b) = buf else { return };
                if !self.head_started && matches!(self.phase, Phase::Head) && b.len() == n as usize
                {
                    // The first bytes of a head: the header timeout starts now.
                    self.head_started = true;
                    self.phase_started = cx.now;
                }
                self.last_active = cx.now;
                if let Some(x) = self.exchange_mut() {
                    x.body_at = cx.now;
                }
                match self.req_in.take() {
                    // Bytes that arrived while a body send held the buffer: never here (no
                    // read is asked for then), but keep them rather than lose them.
                    Some(old) => {
                        cx.pool.release(b);
                        self.req_in = Some(old);
                        self.close(CloseReason::DownstreamReset);
                    }
                    None => self.req_in = Some(b),
                }
            }
            Xfer::Eof => {
                let partial = buf.as_ref().is_some_and(|b| !b.is_empty());
                if let Some(b) = buf {
                    cx.pool.release(b);
                }
                // Between requests that is a clean end; mid-request the client is gone.
                let clean = matches!(self.phase, Phase::Head) && !partial && !self.head_started;
                self.close(if clean {
                    CloseReason::Done
                } else {
                    CloseReason::DownstreamReset
                });
            }
            Xfer::Failed(_) => {
                if let Some(b) = buf {
                    cx.pool.release(b);
                }
                self.close(CloseReason::DownstreamReset);
            }
        }
    }

    /// A send to the client came back: `a` alone is either `down` (a head, an error answer)
    /// or, with `resp_out`, response body bytes from `resp_in`; with `b`, `a` is the head and
    /// `b` the body bytes behind it.
    fn downstream_sent(&mut self, a: Buf, b: Option<Buf>, res: Xfer, cx: &mut Cx<'_>) {
        self.down_writing = false;
        let Some(x) = self.exchange_mut() else {
            if let Some(b) = b {
                cx.pool.release(b);
            }
            return cx.pool.release(a);
        };
        if let Xfer::Failed(_) = res {
            cx.pool.release(a);
            if let Some(b) = b {
                cx.pool.release(b);
            }
            x.resp_out = false;
            x.resp_ready = 0;
            return self.close(CloseReason::DownstreamReset);
        }
        let mut n = res.bytes();
        x.sent += n as u64;
        x.answered |= n > 0;
        let (head, body) = match b {
            Some(b) => (Some(a), Some(b)),
            None if x.resp_out => (None, Some(a)),
            None => (Some(a), None),
        };
        if let Some(mut h) = head {
            let to_head = n.min(h.len());
            h.consume(to_head);
            n -= to_head;
            if h.is_empty() {
                cx.pool.release(h);
            } else {
                x.down = Some(h);
            }
        }
        if let Some(mut r) = body {
            if !x.resp_out {
                cx.pool.release(r);
            } else {
                // Response body bytes from `resp_in`.
                x.resp_out = false;
                let to_body = n.min(x.resp_ready as usize).min(r.len());
                r.consume(to_body);
                x.resp_ready -= to_body as u32;
                if r.is_empty() {
                    cx.pool.release(r);
                } else {
                    x.resp_in = Some(r);
                }
            }
        }
        self.last_active = cx.now;
    }

    fn upstream_connected(&mut self, res: Xfer, cx: &mut Cx<'_>) {
        let Phase::Connecting(_) = self.phase else {
            return;
        };
        match res {
            Xfer::Failed(_) => {
                cx.conns.connect_failed += 1;
                self.pending = Some(Signal::Upstream(Up::Failed));
            }
            _ => {
                if let Phase::Connecting(x) = std::mem::replace(&mut self.phase, Phase::Taken) {
                    self.phase = Phase::Exchange(x);
                }
                self.phase_started = cx.now;
                self.pending = Some(Signal::Upstream(Up::Connected));
            }
        }
    }

    fn upstream_sent(&mut self, a: Buf, b: Option<Buf>, res: Xfer, cx: &mut Cx<'_>) {
        let req_in_out = self.req_in_out;
        let Some(x) = self.exchange_mut() else {
            cx.pool.release(a);
            if let Some(b) = b {
                cx.pool.release(b);
            }
            return;
        };
        x.up_writing = false;
        // Which buffers came back: the head (then maybe body bytes), or body bytes alone.
        let (head, body) = if x.up_head_out {
            x.up_head_out = false;
            (Some(a), b)
        } else {
            if let Some(b) = b {
                cx.pool.release(b);
            }
            (None, Some(a))
        };
        let failed = matches!(res, Xfer::Failed(_));
        let mut n = if failed { 0 } else { res.bytes() };
        if let Some(h) = head {
            let rest = (x.up_head_len - x.up_head_sent) as usize;
            let to_head = n.min(rest);
            x.up_head_sent += to_head as u32;
            n -= to_head;
            x.up_head = Some(h);
        }
        let mut lost_body = None;
        if let Some(mut r) = body {
            if req_in_out {
                let to_body = n.min(x.req_ready as usize).min(r.len());
                r.consume(to_body);
                x.req_ready -= to_body as u32;
                x.body_sent |= to_body > 0;
                lost_body = Some(r);
            } else {
                cx.pool.release(r);
            }
        }
        if let Some(r) = lost_body {
            self.req_in_out = false;
            if r.is_empty() {
                cx.pool.release(r);
            } else {
                self.req_in = Some(r);
            }
        }
        if failed {
            if let Some(w) = self.upstream_broken(cx) {
                self.pending = Some(w);
            }
        }
    }

    fn upstream_read(&mut self, buf: Option<Buf>, res: Xfer, cx: &mut Cx<'_>) {
        let down_writing = self.down_writing;
        let Some(x) = self.exchange_mut() else {
            if let Some(b) = buf {
                cx.pool.release(b);
            }
            return;
        };
        x.up_reading = false;
        match res {
            Xfer::Bytes(_) => {
                if !x.got_response_byte {
                    x.first_byte_at = cx.now;
                }
                x.splice_dry = exchange::Dry::No;
                x.got_response_byte = true;
                if let Some(b) = buf {
                    match x.resp_in.take() {
                        Some(old) => {
                            // Never asked for (one buffer per response at a time).
                            cx.pool.release(b);
                            x.resp_in = Some(old);
                        }
                        None => x.resp_in = Some(b),
                    }
                }
                self.last_active = cx.now;
            }
            Xfer::Eof => {
                if let Some(b) = buf {
                    if b.is_empty() {
                        cx.pool.release(b);
                    } else if x.resp_in.is_none() {
                        x.resp_in = Some(b);
                    } else {
                        cx.pool.release(b);
                    }
                }
                if let exchange::Body::UntilClose = x.resp_body {
                    // The end of a close-delimited body.
                    x.resp_body = exchange::Body::None;
                    self.close_after = true;
                } else if !x.got_response_byte {
                    if let Some(w) = self.upstream_broken(cx) {
                        self.pending = Some(w);
                    }
                } else if !x.answered && !down_writing {
                    // A partial head, then the backend closed: nothing went to the client.
                    if let Some(w) = self.fail(cx, 502) {
                        self.pending = Some(w);
                    }
                } else {
                    cx.http.upstream_errors += 1;
                    self.close(CloseReason::UpstreamReset);
                }
            }
            Xfer::Failed(_) => {
                if let Some(b) = buf {
                    cx.pool.release(b);
                }
                if let Some(w) = self.upstream_broken(cx) {
                    self.pending = Some(w);
                }
            }
        }
    }

    /// The upstream failed. Before any response byte on a reused connection (or while
    /// connecting) the worker tries again; otherwise 502, or an abort when part of the
    /// response already went out.
    fn upstream_broken(&mut self, cx: &mut Cx<'_>) -> Option<Signal> {
        let connecting = matches!(self.phase, Phase::Connecting(_));
        let down_writing = self.down_writing;
        let Some(x) = self.exchange_mut() else {
            return Some(Signal::Close(CloseReason::UpstreamReset));
        };
        if x.answered || down_writing {
            cx.http.upstream_errors += 1;
            return Some(Signal::Close(CloseReason::UpstreamReset));
        }
        if !x.got_response_byte && ((x.reused && x.retryable()) || connecting) {
            return Some(Signal::Upstream(Up::Failed));
        }
        if !x.got_response_byte && x.retry.on_reset && x.retryable() {
            // A fresh connection broke before anything came back: another backend may
            // answer (the policy allowed it and the budget had a token at hand-over).
            return Some(Signal::Upstream(Up::Retry));
        }
        self.fail(cx, 502)
    }

    // ------------------------------------------------------------------ phases

    pub(super) fn next_local(&mut self) -> Want {
        let (down_writing, down_reading) = (self.down_writing, self.down_reading);
        let Phase::Local(x) = &mut self.phase else {
            return Want::Idle;
        };
        if down_writing {
            return Want::Idle;
        }
        if let Some(d) = x.down.take() {
            let n = d.len();
            self.down_writing = true;
            return Want::Io(Side::Downstream, Op::Send(Slice::head(d, n), None));
        }
        // The answer is out: FIN, then read and drop what the client still sends for a
        // while, so our close does not reset it before it has read the answer.
        if !self.lingering {
            self.lingering = true;
            self.down_writing = true;
            return Want::Io(Side::Downstream, Op::Shutdown);
        }
        if !down_reading {
            self.down_reading = true;
            return Want::Io(Side::Downstream, Op::Recv(None));
        }
        Want::Idle
    }

    /// Completions on the client connection while a local answer goes out or lingers.
    fn complete_local(&mut self, done: Done, cx: &mut Cx<'_>) {
        match done {
            Done::Send { a, b, res } => self.downstream_sent(a, b, res, cx),
            Done::Shutdown(res) => {
                self.down_writing = false;
                if let Xfer::Failed(_) = res {
                    self.close(CloseReason::Done);
                }
            }
            Done::Recv { buf, res } => {
                self.down_reading = false;
                if let Some(b) = buf {
                    self.lingered = self.lingered.saturating_add(b.len() as u32);
                    cx.pool.release(b);
                }
                if !self.lingering {
                    // A read from before the answer: its bytes are dropped too.
                    return;
                }
                match res {
                    Xfer::Bytes(_) if self.lingered < LINGER_BYTES => {}
                    _ => self.close(CloseReason::Done),
                }
            }
            other => crate::engine::recycle(other, cx.pool, cx.pipes),
        }
    }

    /// One step of a request/response exchange.
    fn next_exchange(&mut self, cx: &mut Cx<'_>) -> Want {
        if let Some(w) = self.next_splice() {
            return w;
        }
        // 0. The response is out.
        {
            let Phase::Exchange(x) = &mut self.phase else {
                return Want::Idle;
            };
            if x.splicing && x.resp_piped == 0 && x.resp_body.done() && x.resp_pipe.is_some() {
                // The spliced body is through: the pipe goes back.
                if let Some(p) = x.resp_pipe.take() {
                    cx.pipes.put(p);
                }
                x.splicing = false;
            }
            if x.resp_started
                && x.resp_body.done()
                && x.resp_ready == 0
                && !x.splicing
                && x.down.is_none()
                && !self.down_writing
                && !x.upgrading
            {
                return self.finish_exchange(cx);
            }
        }
        // 1. The response head (interim ones are forwarded as they come).
        if let Some(w) = self.parse_response(cx) {
            return w;
        }
        let Phase::Exchange(x) = &mut self.phase else {
            return Want::Idle;
        };
        // 2. The request upstream: the head with the body bytes already buffered behind it
        // (one writev: a small POST goes in one send), then the body as it comes.
        if !x.up_writing && x.upstream.is_some() {
            if x.req_ready == 0 && !x.req_body.done() && !self.req_in_out {
                if let Some(b) = self.req_in.as_ref() {
                    match x.req_body.take(cx.pool.data(b)) {
                        Ok(n) => x.req_ready = n as u32,
                        Err(_) => {
                            cx.http.bad_requests += 1;
                            return self.fail_now(cx, 400);
                        }
                    }
                }
            }
            if x.up_head_sent < x.up_head_len {
                if let Some(h) = x.up_head.take() {
                    let a = Slice {
                        buf: h,
                        off: x.up_head_sent,
                        len: x.up_head_len - x.up_head_sent,
                    };
                    let body = if x.req_ready > 0 && !self.req_in_out {
                        self.req_in
                            .take()
                            .map(|r| Slice::head(r, x.req_ready as usize))
                    } else {
                        None
                    };
                    self.req_in_out |= body.is_some();
                    x.up_head_out = true;
                    x.up_writing = true;
                    return Want::Io(Side::Upstream, Op::Send(a, body));
                }
            } else if x.req_ready > 0 && !self.req_in_out {
                if let Some(r) = self.req_in.take() {
                    self.req_in_out = true;
                    x.up_writing = true;
                    return Want::Io(
                        Side::Upstream,
                        Op::Send(Slice::head(r, x.req_ready as usize), None),
                    );
                }
            }
        }
        // 3. The response to the client: the head first (with the body bytes that came in
        // behind it, in the same vectored write), then body bytes as claimed (held while an
        // injected answer delay runs).
        if !self.down_writing && x.answer_at.is_none_or(|t| cx.now >= t) {
            if let Some(d) = x.down.take() {
                let body = if x.resp_in.is_some() && x.resp_started && !x.upgrading && !x.splicing {
                    match x.body_out_slice(cx) {
                        Ok(b) => b,
                        Err(w) => {
                            cx.pool.release(d);
                            return w;
                        }
                    }
                } else {
                    None
                };
                let n = d.len();
                self.down_writing = true;
                return Want::Io(Side::Downstream, Op::Send(Slice::head(d, n), body));
            }
            if x.resp_started && !x.upgrading {
                if x.splicing {
                    if x.resp_piped > 0 {
                        if let Some(pipe) = x.resp_pipe.take() {
                            self.down_writing = true;
                            return Want::Io(
                                Side::Downstream,
                                Op::SpliceOut {
                                    pipe,
                                    len: x.resp_piped,
                                },
                            );
                        }
                    }
                } else if x.resp_in.is_some() {
                    match x.body_out_slice(cx) {
                        Ok(Some(body)) => {
                            self.down_writing = true;
                            // Sent alone: the body slice goes first.
                            return Want::Io(Side::Downstream, Op::Send(body, None));
                        }
                        Ok(None) => {}
                        Err(w) => return w,
                    }
                    // Drained leftovers of a finished body stay for the reuse check.
                    if x.resp_in.as_ref().is_some_and(Buf::is_empty) {
                        if let Some(b) = x.resp_in.take() {
                            cx.pool.release(b);
                        }
                    }
                }
            }
        }
        if x.upgrading && x.down.is_none() && !self.down_writing && !x.up_writing {
            self.enter_tunnel(cx);
            return self.next_tunnel(cx);
        }
        // 4. The response from the upstream.
        let body_left = !x.resp_started || !x.resp_body.done();
        if !x.up_reading && x.upstream.is_some() && body_left && !x.upgrading {
            // A long Content-Length body, once everything buffered before it is out, goes
            // backend → pipe → client with splice(2): no copy through user space. When the
            // upstream runs dry the pipe goes back, and the session waits for it to be
            // readable again without a buffer or a pipe (a quiet body holds neither).
            if !x.splicing
                && self.splice_ok
                && x.up_splice_ok
                && x.splice_dry != exchange::Dry::Buffers
                && x.corrupt_left == 0
                && x.mirror.is_none()
                && x.resp_started
                && x.resp_ready == 0
                && x.resp_in.is_none()
                && x.down.is_none()
                && !self.down_writing
                && matches!(x.resp_body, exchange::Body::Length(left) if left >= 2 * cx.pool.buffer_size() as u64)
            {
                if x.splice_dry == exchange::Dry::Wait {
                    x.up_reading = true;
                    return Want::Io(Side::Upstream, Op::Readable);
                }
                if let Some(p) = cx.pipes.get() {
                    x.resp_pipe = Some(p);
                    x.splicing = true;
                }
            }
            if x.splicing {
                if let (Some(pipe), exchange::Body::Length(left)) =
                    (x.resp_pipe.take(), x.resp_body)
                {
                    let room = pipe.capacity.saturating_sub(x.resp_piped);
                    if room > 0 {
                        x.up_reading = true;
                        let max = (u64::from(room)).min(left) as u32;
                        // Straight on out (`Op::SpliceIn`'s `forward`) when nothing else
                        // is to go to the client first.
                        let forward =
                            (!self.down_writing && x.down.is_none() && x.answer_at.is_none())
                                .then_some(self.downstream);
                        return Want::Io(
                            Side::Upstream,
                            Op::SpliceIn {
                                pipe,
                                piped: x.resp_piped,
                                max,
                                forward,
                            },
                        );
                    }
                    x.resp_pipe = Some(pipe);
                }
            } else if x.resp_ready == 0 && x.down.is_none() && !self.down_writing {
                let partial = match x.resp_in.take() {
                    Some(b) if !b.is_empty() => Some(b),
                    Some(b) => {
                        cx.pool.release(b);
                        None
                    }
                    None => None,
                };
                let full = partial
                    .as_ref()
                    .is_some_and(|b| b.len() >= cx.pool.buffer_size());
                if !full {
                    x.up_reading = true;
                    return Want::Io(Side::Upstream, Op::Recv(partial));
                }
                x.resp_in = partial;
            }
        }
        // 5. More request body from the client.
        if x.head_out()
            && x.req_ready == 0
            && !x.req_body.done()
            && !self.down_reading
            && !self.req_in_out
            && self.req_in.as_ref().is_none_or(Buf::is_empty)
        {
            if let Some(b) = self.req_in.take() {
                cx.pool.release(b);
            }
            self.down_reading = true;
            return Want::Io(Side::Downstream, Op::Recv(None));
        }
        Want::Idle
    }

    /// The common step of a spliced response body, taken without walking the steps of
    /// [`HttpSession::next_exchange`]: each splice comes back here twice, and a 1 MiB download
    /// is about ten splices. It applies only where those steps could choose nothing else —
    /// the request is all out, no head or injected delay is pending, the body is not done —
    /// and makes the same choices in the same order: pipe → client (step 3), then backend →
    /// pipe (step 4). Anything else (`None`) takes the general path.
    #[inline]
    fn next_splice(&mut self) -> Option<Want> {
        let Phase::Exchange(x) = &mut self.phase else {
            return None;
        };
        let exchange::Body::Length(left) = x.resp_body else {
            return None;
        };
        if !x.splicing
            || !x.resp_started
            || x.upgrading
            || x.down.is_some()
            || x.answer_at.is_some()
            || x.req_ready > 0
            || x.up_head_sent < x.up_head_len
            || !x.req_body.done()
        {
            return None;
        }
        if !self.down_writing && x.resp_piped > 0 {
            let pipe = x.resp_pipe.take()?;
            self.down_writing = true;
            let len = x.resp_piped;
            return Some(Want::Io(Side::Downstream, Op::SpliceOut { pipe, len }));
        }
        if x.up_reading || x.upstream.is_none() {
            return None;
        }
        let piped = x.resp_piped;
        let pipe = x.resp_pipe.take_if(|p| p.capacity > piped)?;
        x.up_reading = true;
        let max = u64::from(pipe.capacity - piped).min(left) as u32;
        // What comes in goes straight on out in the same engine call while the client's
        // write slot is free (`Op::SpliceIn`'s `forward`).
        let forward = (!self.down_writing).then_some(self.downstream);
        Some(Want::Io(
            Side::Upstream,
            Op::SpliceIn {
                pipe,
                piped,
                max,
                forward,
            },
        ))
    }

    /// The response is out: say so to the worker, which logs the request and pools (or
    /// closes) the upstream before [`HttpSession::end_exchange`].
    fn finish_exchange(&mut self, cx: &mut Cx<'_>) -> Want {
        let req_in_out = self.req_in_out;
        let Phase::Exchange(mut x) = std::mem::replace(&mut self.phase, Phase::Taken) else {
            return Want::Idle;
        };
        let request_done = x.head_out() && x.req_body.done() && x.req_ready == 0 && !req_in_out;
        // Leftover upstream bytes after a complete response: the connection is not clean
        // enough to reuse.
        let clean = x.resp_in.as_ref().is_none_or(Buf::is_empty);
        if !request_done {
            self.close_after = true;
        }
        cx.http.count_status(x.status);
        let reusable = request_done
            && clean
            && !x.upstream_close
            && !x.up_reading
            && x.fault != crate::faults::FaultCode::Duplicate;
        if let Some(b) = x.up_head.take() {
            cx.pool.release(b);
        }
        if let Some(b) = x.resp_in.take() {
            cx.pool.release(b);
        }
        self.phase = Phase::Finished(x);
        Want::Upstream(Up::Release { reusable })
    }

    /// Answers the current request locally (errors, routing failures) and closes after. When
    /// part of a response already went out, the client is reset instead. An upstream in use
    /// is dropped first, as a failure of that backend. `None`: the reply is ready to go out
    /// (the next `next` sends it); `Some`: what to say first.
    fn fail(&mut self, cx: &mut Cx<'_>, status: u16) -> Option<Signal> {
        match status {
            503 => cx.http.no_backend += 1,
            504 => cx.http.timeouts += 1,
            400 => {}
            _ => cx.http.upstream_errors += 1,
        }
        let body: &[u8] = match status {
            400 => b"bad chunked request body\n",
            503 => b"no backend available\n",
            504 => b"backend timed out\n",
            _ => b"backend unreachable or failed\n",
        };
        let had_upstream = self.upstream_conn().is_some();
        if let Some(w) = self.local_response(cx, status, b"text/plain", body) {
            return Some(w);
        }
        // The reply goes out after the worker drops the upstream.
        had_upstream.then_some(Signal::Upstream(Up::Drop {
            failure: status != 400,
        }))
    }

    /// [`HttpSession::fail`] from within `next`: what to say now.
    pub(super) fn fail_now(&mut self, cx: &mut Cx<'_>, status: u16) -> Want {
        self.fail(cx, status)
            .map_or_else(|| self.next_local(), Want::from)
    }

    // ------------------------------------------------------------------ mirrors

    /// A copy of the routed request for a mirror exchange (release strategy `concurrent`):
    /// its rewritten head, in a buffer of its own. `None` when it is not to be mirrored: it
    /// has a body, asks for an upgrade, carries an injected fault, or no buffer is free.
    pub fn mirror_request(&self, cx: &mut Cx<'_>) -> Option<Buf> {
        let Phase::Routed(x) = &self.phase else {
            return None;
        };
        if !matches!(x.req_body, exchange::Body::None)
            || x.upgrade_requested
            || x.fault != crate::faults::FaultCode::None
            || x.mirror.is_some()
        {
            return None;
        }
        let head = x.up_head.as_ref()?;
        let n = x.up_head_len as usize;
        // A copy is new work: not from the pool's reserve.
        let mut out = if n > cx.pool.buffer_size() {
            cx.pool.checkout_large()?
        } else {
            cx.pool.checkout_new()?
        };
        let copied = match cx.pool.data_and_spare(head, &mut out) {
            Some((src, dst)) if src.len() >= n && dst.len() >= n => {
                dst[..n].copy_from_slice(&src[..n]);
                true
            }
            _ => false,
        };
        if !copied {
            cx.pool.release(out);
            return None;
        }
        out.fill(n);
        Some(out)
    }

    /// Links the current exchange to the worker's mirror exchange `mirror`.
    pub fn set_mirror(&mut self, mirror: u32) {
        if let Some(x) = self.exchange_mut() {
            x.mirror = Some(mirror);
        }
    }

    /// Unlinks the current exchange from its mirror, if any.
    pub fn unlink_mirror(&mut self) -> Option<u32> {
        self.exchange_mut().and_then(|x| x.mirror.take())
    }

    /// The current exchange's answer as far as a mirror comparison goes: `complete` when its
    /// response went out whole (the worker asks at [`Up::Release`]).
    pub fn newest_answer(&self, complete: bool) -> crate::session::mirror::Answer {
        match self.exchange() {
            Some(x) => crate::session::mirror::Answer {
                status: x.status,
                complete,
                len: x.body_len,
                hash: x.body_hash,
            },
            None => crate::session::mirror::Answer::NONE,
        }
    }

    /// The newest version failed and the mirror's answer is still coming: the request waits
    /// for it without an upstream (the worker owns the wait).
    pub fn await_answer(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Taken) {
            Phase::Connecting(x) | Phase::Exchange(x) => self.phase = Phase::Routed(x),
            other => self.phase = other,
        }
    }

    /// The newest version failed and the mirror's whole answer (`answer`: head and body, as
    /// the previous version sent them) goes to the client instead, as if this exchange's
    /// upstream had sent it. `Err` gives the buffer back when the request is past the point
    /// where that is possible.
    pub fn take_answer(&mut self, answer: Buf, cx: &mut Cx<'_>) -> Result<(), Buf> {
        let mut x = match std::mem::replace(&mut self.phase, Phase::Taken) {
            Phase::Routed(x) | Phase::Connecting(x) | Phase::Exchange(x) => x,
            other => {
                self.phase = other;
                return Err(answer);
            }
        };
        if x.answered || self.down_writing || x.upstream.is_some() {
            self.phase = Phase::Exchange(x);
            return Err(answer);
        }
        if let Some(b) = x.resp_in.take() {
            cx.pool.release(b);
        }
        if let Some(b) = x.down.take() {
            cx.pool.release(b);
        }
        if let Some(p) = x.resp_pipe.take() {
            cx.pipes.discard(p);
        }
        x.resp_in = Some(answer);
        x.resp_ready = 0;
        x.resp_piped = 0;
        x.resp_out = false;
        x.resp_body = exchange::Body::None;
        x.resp_started = false;
        x.splicing = false;
        x.got_response_byte = true;
        x.first_byte_at = cx.now;
        x.status = 0;
        x.upstream_close = false;
        x.up_reading = false;
        x.up_writing = false;
        // The request is as good as sent: the answer to it is here.
        x.up_head_sent = x.up_head_len;
        x.up_head_out = false;
        x.retry = Retry::default();
        x.mirror = None;
        x.body_len = 0;
        x.body_hash = crate::session::mirror::HASH_START;
        self.phase_started = cx.now;
        self.last_active = cx.now;
        self.phase = Phase::Exchange(x);
        Ok(())
    }

    // ------------------------------------------------------------------ tunnel

    /// The 101 is out: from here on bytes pass through unchanged. Bytes that arrived after
    /// either head are already buffered and go first.
    fn enter_tunnel(&mut self, cx: &mut Cx<'_>) {
        let Phase::Exchange(mut x) = std::mem::replace(&mut self.phase, Phase::Taken) else {
            return;
        };
        x.upgrading = false;
        if let Some(b) = x.up_head.take() {
            cx.pool.release(b);
        }
        let req = if self.req_in_out {
            None
        } else {
            self.req_in.take()
        };
        x.tunnel = true;
        x.tun_up = super::flow::Flow::with_buf(req, cx.pool);
        x.tun_down = super::flow::Flow::with_buf(x.resp_in.take(), cx.pool);
        if self.down_reading {
            x.tun_up.set_reading();
        }
        if x.up_reading {
            x.tun_down.set_reading();
        }
        self.down_reading = false;
        x.up_reading = false;
        self.last_active = cx.now;
        cx.http.count_status(101);
        self.phase = Phase::Tunnel(x);
    }

    fn next_tunnel(&mut self, cx: &mut Cx<'_>) -> Want {
        let Phase::Tunnel(x) = &mut self.phase else {
            return Want::Idle;
        };
        if let Some((end, op)) = x.tun_up.next(cx.pool, None, x.upstream) {
            let side = match end {
                End::Source => Side::Downstream,
                End::Destination => Side::Upstream,
            };
            return Want::Io(side, op);
        }
        if let Some((end, op)) = x.tun_down.next(cx.pool, None, Some(self.downstream)) {
            let side = match end {
                End::Source => Side::Upstream,
                End::Destination => Side::Downstream,
            };
            return Want::Io(side, op);
        }
        if x.tun_up.finished() && x.tun_down.finished() {
            return Want::Close(CloseReason::Done);
        }
        Want::Idle
    }

    fn complete_tunnel(&mut self, side: Side, done: Done, cx: &mut Cx<'_>) {
        let Phase::Tunnel(x) = &mut self.phase else {
            return;
        };
        let read_slot = matches!(
            done,
            Done::Recv { .. } | Done::SpliceIn { .. } | Done::Readable(_)
        );
        let (flow, reverse) = match (side, read_slot) {
            (Side::Downstream, true) | (Side::Upstream, false) => (&mut x.tun_up, false),
            (Side::Upstream, true) | (Side::Downstream, false) => (&mut x.tun_down, true),
        };
        match flow.complete(done, cx.pool, cx.pipes) {
            Ok(()) => self.last_active = cx.now,
            Err(end) => {
                let downstream_broke = matches!(
                    (end, reverse),
                    (End::Source, false) | (End::Destination, true)
                );
                self.close(if downstream_broke {
                    CloseReason::DownstreamReset
                } else {
                    CloseReason::UpstreamReset
                });
            }
        }
    }
}
