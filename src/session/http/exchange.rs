//! Per-request state: one [`Exchange`] from the moment a request head is routed until its
//! response is out (or the connection turns into a tunnel). Exchanges are recycled through a
//! per-worker [`ExchangePool`], so a keep-alive connection between requests holds none and a
//! request allocates nothing once the pool has grown to the worker's concurrency.
//!
//! HOT PATH. No allocation beyond pool growth, lock or log.

use crate::accesslog::Record;
use crate::engine::{ConnId, Slice};
use crate::http::chunked::{ChunkError, Chunked};
use crate::http::head::{BodyKind, Method, RequestHead, ResponseHead};
use crate::io::{Buf, BufferPool, Pipe, PipePool};
use crate::session::flow::Flow;
use crate::session::{CloseReason, Cx, Target, Want};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Trailer bytes accepted after a chunked body.
pub const MAX_TRAILER: usize = 16 * 1024;

/// Where an HTTP message body stands.
#[derive(Debug, Clone, Copy, Default)]
pub enum Body {
    #[default]
    None,
    Length(u64),
    Chunked(Chunked, bool),
    UntilClose,
}

impl Body {
    pub fn new(kind: BodyKind) -> Body {
        match kind {
            BodyKind::None => Body::None,
            BodyKind::Length(0) => Body::None,
            BodyKind::Length(n) => Body::Length(n),
            BodyKind::Chunked => Body::Chunked(Chunked::new(MAX_TRAILER), false),
            BodyKind::CloseDelimited => Body::UntilClose,
        }
    }

    #[inline]
    pub fn done(&self) -> bool {
        matches!(self, Body::None | Body::Chunked(_, true))
    }

    /// Claims the bytes at the front of `avail` that belong to this body.
    pub fn take(&mut self, avail: &[u8]) -> Result<usize, ChunkError> {
        match self {
            Body::None => Ok(0),
            Body::Length(left) => {
                let n = (*left).min(avail.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Body::None;
                }
                Ok(n as usize)
            }
            Body::Chunked(c, done) => {
                if *done {
                    return Ok(0);
                }
                let p = c.advance(avail)?;
                *done = p.done;
                Ok(p.consumed)
            }
            Body::UntilClose => Ok(avail.len()),
        }
    }
}

/// What a spliced response body does after its upstream ran dry (a splice moved nothing and
/// its pipe went back to the pool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dry {
    /// Splice when it is worth it.
    #[default]
    No,
    /// Wait for the upstream to be readable (`Op::Readable`: no buffer, no pipe), then splice.
    Wait,
    /// It became readable: the next splice should move bytes.
    Woke,
    /// A splice right after readability moved nothing: the body goes through buffers until
    /// bytes arrive (a poll and a splice that disagree never spin).
    Buffers,
}

/// On what the current attempt may be abandoned for another backend (set by the worker from
/// the cluster's retry policy and budget when it hands over an upstream), and how many
/// retries the request has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    /// A fresh connection broke before any response byte.
    pub on_reset: bool,
    pub on_5xx: bool,
    pub on_timeout: bool,
    pub used: u32,
}

/// Timeouts of the cluster a request went to (set by the worker per request).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: crate::config::defaults::CONNECT_TIMEOUT,
            first_byte: crate::config::defaults::FIRST_BYTE_TIMEOUT,
            idle: crate::config::defaults::BACKEND_IDLE_TIMEOUT,
        }
    }
}

/// One request and its response.
pub struct Exchange {
    // ------------------------------------------------------------- the request
    pub target: Target,
    pub method: Method,
    pub client_keep_alive: bool,
    pub client_minor: u8,
    pub upgrade_requested: bool,
    /// The rewritten request head; kept whole until the exchange ends, so a request that
    /// dies on a reused connection or is retried can be sent again. `None` while it travels
    /// in a send.
    pub up_head: Option<Buf>,
    pub up_head_len: u32,
    pub up_head_sent: u32,
    /// `up_head` travels in the upstream send in flight.
    pub up_head_out: bool,
    /// Bytes at the front of the client buffer claimed by the request body, not yet sent.
    pub req_ready: u32,
    pub req_body: Body,
    /// Some request body byte was written upstream: the request cannot be replayed.
    pub body_sent: bool,
    /// When the client last sent request body bytes (the body timeout runs from it).
    pub body_at: Instant,
    // ------------------------------------------------------------- the upstream
    pub upstream: Option<ConnId>,
    /// The current upstream came from the pool.
    pub reused: bool,
    /// Ops in flight on the upstream connection's read and write slots.
    pub up_reading: bool,
    pub up_writing: bool,
    pub retry: Retry,
    pub timeouts: UpstreamTimeouts,
    // ------------------------------------------------------------- the response
    /// Backend bytes not yet consumed (`None` also while in an op).
    pub resp_in: Option<Buf>,
    pub resp_ready: u32,
    /// `resp_in` travels in the downstream send in flight (body bytes).
    pub resp_out: bool,
    pub resp_body: Body,
    /// The final response head was parsed.
    pub resp_started: bool,
    /// Some response byte arrived from the current upstream.
    pub got_response_byte: bool,
    /// Rewritten response head (and the first body bytes), or a local response.
    pub down: Option<Buf>,
    /// A long Content-Length body spliced backend → pipe → client: `resp_piped` bytes wait
    /// in the pipe. `splicing`: the body goes through a pipe (the pipe may be in an op).
    pub resp_pipe: Option<Pipe>,
    pub resp_piped: u32,
    pub splicing: bool,
    /// After the upstream ran dry during a splice (see [`Dry`]).
    pub splice_dry: Dry,
    /// The upstream connection can splice (not TLS).
    pub up_splice_ok: bool,
    /// A 101 is being written: the tunnel starts once it is out.
    pub upgrading: bool,
    /// The backend asked to close (or framing requires it): don't pool the upstream.
    pub upstream_close: bool,
    /// Some response byte was written to the client.
    pub answered: bool,
    /// Status of the response, for stats and the access log.
    pub status: u16,
    /// Bytes sent to the client (head and body), for stats and the access log.
    pub sent: u64,
    // ------------------------------------------------------------- times and the log
    pub request_started: Instant,
    /// `request_started` as the worker's [`crate::session::Env::now_ns`].
    pub request_started_ns: u64,
    pub first_byte_at: Instant,
    /// Access-log facts (method, path, bytes sent).
    pub log: Record,
    /// The request was logged (or is not to be).
    pub logged: bool,
    /// The access log was on when this request's head arrived, so `log` holds its facts.
    /// A reload that turns the log on mid-request must not queue a half-filled record.
    pub log_started: bool,
    /// Release strategy: the service version this request went to, and the cookies its
    /// response sets ([`crate::release`]).
    pub release_tag: crate::release::Tag,
    /// concurrent: the worker's mirror exchange of this request (the previous version's
    /// answer to it), while linked. A mirrored response's body is not spliced: its bytes are
    /// counted and hashed as they go to the client (`body_len`, `body_hash`) for the
    /// comparison.
    pub mirror: Option<u32>,
    pub body_len: u64,
    pub body_hash: u64,
    // ------------------------------------------------------------- fault injection
    /// An injected delay holds the request (in `Routed`) until then.
    pub fault_until: Option<Instant>,
    /// An injected delay holds the answer until then.
    pub answer_at: Option<Instant>,
    /// Response body bytes still to corrupt.
    pub corrupt_left: u32,
    /// The fault injected into this request (the access log's `fault`).
    pub fault: crate::faults::FaultCode,
    // ------------------------------------------------------------- after a 101
    /// The connection became a tunnel (the flows below are in use).
    pub tunnel: bool,
    pub tun_up: Flow,
    pub tun_down: Flow,
}

impl Exchange {
    /// Readies a recycled exchange for a new request: field by field, so the access-log
    /// record's byte arrays are not cleared (their lengths are) and nothing is copied whole.
    fn reset(&mut self, now: Instant, now_ns: u64) {
        self.target = Target::new(0, None, now);
        self.method = Method::Get;
        self.client_keep_alive = true;
        self.client_minor = 1;
        self.upgrade_requested = false;
        self.up_head = None;
        self.up_head_len = 0;
        self.up_head_sent = 0;
        self.up_head_out = false;
        self.req_ready = 0;
        self.req_body = Body::None;
        self.body_sent = false;
        self.body_at = now;
        self.upstream = None;
        self.reused = false;
        self.up_reading = false;
        self.up_writing = false;
        self.retry = Retry::default();
        self.timeouts = UpstreamTimeouts::default();
        self.resp_in = None;
        self.resp_ready = 0;
        self.resp_out = false;
        self.resp_body = Body::None;
        self.resp_started = false;
        self.got_response_byte = false;
        self.down = None;
        self.resp_pipe = None;
        self.resp_piped = 0;
        self.splicing = false;
        self.splice_dry = Dry::No;
        self.upgrading = false;
        self.upstream_close = false;
        self.answered = false;
        self.status = 0;
        self.sent = 0;
        self.request_started = now;
        self.request_started_ns = now_ns;
        self.first_byte_at = now;
        self.logged = true;
        self.release_tag = crate::release::Tag::NONE;
        self.mirror = None;
        self.body_len = 0;
        self.body_hash = crate::session::mirror::HASH_START;
        self.fault_until = None;
        self.answer_at = None;
        self.corrupt_left = 0;
        self.fault = crate::faults::FaultCode::None;
        if self.tunnel {
            self.tunnel = false;
            self.tun_up = Flow::default();
            self.tun_down = Flow::default();
        }
    }

    fn new(now: Instant, now_ns: u64) -> Exchange {
        Exchange {
            target: Target::new(0, None, now),
            method: Method::Get,
            client_keep_alive: true,
            client_minor: 1,
            upgrade_requested: false,
            up_head: None,
            up_head_len: 0,
            up_head_sent: 0,
            up_head_out: false,
            req_ready: 0,
            req_body: Body::None,
            body_sent: false,
            body_at: now,
            upstream: None,
            reused: false,
            up_reading: false,
            up_writing: false,
            retry: Retry::default(),
            timeouts: UpstreamTimeouts::default(),
            resp_in: None,
            resp_ready: 0,
            resp_out: false,
            resp_body: Body::None,
            resp_started: false,
            got_response_byte: false,
            down: None,
            resp_pipe: None,
            resp_piped: 0,
            splicing: false,
            splice_dry: Dry::No,
            up_splice_ok: true,
            upgrading: false,
            upstream_close: false,
            answered: false,
            status: 0,
            sent: 0,
            request_started: now,
            request_started_ns: now_ns,
            first_byte_at: now,
            log: Record::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            logged: true,
            log_started: false,
            release_tag: crate::release::Tag::NONE,
            mirror: None,
            body_len: 0,
            body_hash: crate::session::mirror::HASH_START,
            fault_until: None,
            answer_at: None,
            corrupt_left: 0,
            fault: crate::faults::FaultCode::None,
            tunnel: false,
            tun_up: Flow::default(),
            tun_down: Flow::default(),
        }
    }

    /// The request head went out whole.
    #[inline]
    pub fn head_out(&self) -> bool {
        self.up_head_sent >= self.up_head_len && !self.up_writing
    }

    /// The request can be sent again on another connection: nothing of the response came
    /// back or went to the client, and no body byte went out (a body streamed upstream is
    /// consumed; its head would go without it and the backend would wait).
    #[inline]
    pub fn retryable(&self) -> bool {
        !self.got_response_byte
            && !self.answered
            && !self.body_sent
            && matches!(self.req_body, Body::None)
            && self.up_head.is_some()
    }

    /// The request may go to another backend after this one answered 5xx or timed out.
    #[inline]
    pub fn can_resend(&self) -> bool {
        !self.answered
            && !self.body_sent
            && matches!(self.req_body, Body::None)
            && self.up_head.is_some()
    }

    /// Counts and hashes response body bytes on their way to the client (mirrored requests).
    #[inline]
    pub fn body_out(&mut self, bytes: &[u8]) {
        self.body_len += bytes.len() as u64;
        self.body_hash = crate::session::mirror::hash_bytes(self.body_hash, bytes);
    }

    /// The response body bytes that are to go to the client now, out of `resp_in` (which
    /// then travels in the send: `resp_out`). Claims them from the framing first if none are
    /// claimed (counting and hashing them for a mirror); flips bytes while a corruption
    /// fault has some left. A framing error (`Err`) closes the connection.
    pub fn body_out_slice(&mut self, cx: &mut Cx<'_>) -> Result<Option<Slice>, Want> {
        if self.resp_ready == 0 && !self.up_reading {
            if let Some(b) = self.resp_in.as_ref() {
                match self.resp_body.take(cx.pool.data(b)) {
                    Ok(n) => {
                        self.resp_ready = n as u32;
                        if self.mirror.is_some() {
                            let d = cx.pool.data(b);
                            let bytes = &d[..n.min(d.len())];
                            self.body_out(bytes);
                        }
                    }
                    Err(_) => {
                        cx.http.upstream_errors += 1;
                        return Err(Want::Close(CloseReason::UpstreamReset));
                    }
                }
            }
        }
        if self.resp_ready == 0 {
            return Ok(None);
        }
        let Some(r) = self.resp_in.take() else {
            return Ok(None);
        };
        self.resp_out = true;
        let n = self.resp_ready as usize;
        if self.corrupt_left > 0 {
            let d = cx.pool.data_mut(&r);
            let n = n.min(d.len());
            super::fault::corrupt(&mut d[..n], &mut self.corrupt_left);
        }
        Ok(Some(Slice::head(r, n)))
    }

    /// Returns every buffer and pipe the exchange holds (outside in-flight ops) to the pools.
    pub fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        if let Some(b) = self.up_head.take() {
            pool.release(b);
        }
        if let Some(b) = self.resp_in.take() {
            pool.release(b);
        }
        if let Some(b) = self.down.take() {
            pool.release(b);
        }
        if let Some(p) = self.resp_pipe.take() {
            // A pipe still holding bytes must not carry them into another connection.
            if self.resp_piped == 0 {
                pipes.put(p);
            } else {
                pipes.discard(p);
            }
        }
        self.resp_piped = 0;
        if self.tunnel {
            self.tun_up.release(pool, pipes);
            self.tun_down.release(pool, pipes);
        }
    }
}

/// Recycled exchanges of one worker.
#[derive(Default)]
pub struct ExchangePool {
    // Boxes on purpose: a session owns its exchange by pointer, so handing one over moves
    // eight bytes, and the slab of sessions stays small.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Exchange>>,
}

/// Exchanges kept for reuse beyond those in use (a burst's high-water mark is returned to
/// the allocator above this).
const POOL_KEEP: usize = 4096;

impl ExchangePool {
    /// A fresh exchange (recycled when one is free).
    #[inline]
    pub fn take(&mut self, now: Instant, now_ns: u64) -> Box<Exchange> {
        match self.free.pop() {
            Some(mut x) => {
                x.reset(now, now_ns);
                x
            }
            None => Box::new(Exchange::new(now, now_ns)),
        }
    }

    /// Takes an exchange back; its buffers must have been released.
    #[inline]
    pub fn put(&mut self, x: Box<Exchange>) {
        if self.free.len() < POOL_KEEP {
            self.free.push(x);
        }
    }
}

/// Where a worker's sessions have their heads parsed
/// ([`parse_request_into`](crate::http::head::parse_request_into),
/// [`parse_response_into`](crate::http::head::parse_response_into)), kept from one request to the next: a head (~350 bytes with
/// its header spans) is built in place, neither set up empty nor copied out per request. Boxed,
/// so a session takes one out and gives it back by moving a pointer while it works with the
/// worker's [`Cx`](crate::session::Cx). Both are allocated with the worker; a slot not given
/// back (never on the hot path) is replaced by a new one at the next take.
pub struct HeadSlots {
    request: Option<Box<RequestHead>>,
    response: Option<Box<ResponseHead>>,
}

impl Default for HeadSlots {
    fn default() -> Self {
        HeadSlots {
            request: Some(Box::default()),
            response: Some(Box::default()),
        }
    }
}

impl HeadSlots {
    #[inline]
    pub fn take_request(&mut self) -> Box<RequestHead> {
        self.request.take().unwrap_or_else(new_slot)
    }

    #[inline]
    pub fn put_request(&mut self, h: Box<RequestHead>) {
        self.request = Some(h);
    }

    #[inline]
    pub fn take_response(&mut self) -> Box<ResponseHead> {
        self.response.take().unwrap_or_else(new_slot)
    }

    #[inline]
    pub fn put_response(&mut self, h: Box<ResponseHead>) {
        self.response = Some(h);
    }
}

/// A head slot to replace one not given back (out of line: the taking stays small where it
/// is inlined).
#[cold]
#[inline(never)]
fn new_slot<T: Default>() -> Box<T> {
    Box::default()
}
