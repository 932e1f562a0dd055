//! The HTTP/1.1 session: one client connection, requests handled one at a time, each routed
//! and balanced on its own, sent upstream on a pooled keep-alive connection when one is idle.
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log in this file.
//!
//! One request at a time keeps pipelining trivially ordered: bytes of a pipelined request wait
//! in the client buffer until the current response is out. Within an exchange both directions
//! move at once (a backend may answer before it has read the whole body). Bodies are never
//! buffered whole: they stream through pool buffers, framed by `Body`, which forwards exactly
//! the bytes that belong to the message (Content-Length, validated chunked, or until close).
//!
//! The worker does everything that needs the registry, the balancers or the upstream pool; the
//! session tells it what it needs through [`HttpStep`].

use crate::accesslog::Record;
use crate::balance::Tried;
use crate::buffer::{Buf, BufferPool};
use crate::config::HashOn;
use crate::http::chunked::{ChunkError, Chunked};
use crate::http::head::{self, BodyKind, Limits, Method, Reject, RequestHead, ResponseHead};
use crate::http::rewrite::{self, Forwarded};
use crate::ready::Ready;
use crate::routing::{self, Decision, RequestView};
use crate::snapshot::Snapshot;
use crate::stats::HttpCounters;
use crate::tcp::pipe::{connect_result, flow_round, Broken, Flow};
use crate::tcp::splice::{self, Pipe, PipePool};
use crate::token::Side;
use mio::net::TcpStream;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read/write rounds per wake-up before yielding.
const MAX_ROUNDS: usize = 32;
/// Trailer bytes accepted after a chunked body.
const MAX_TRAILER: usize = 16 * 1024;
/// A local response that cannot be written within this time is abandoned.
const LOCAL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeouts and limits of the listener (client side) and cluster (backend side), resolved by
/// the worker per request.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub request_header: Duration,
    pub keepalive: Duration,
    pub connect: Duration,
    pub first_byte: Duration,
    pub backend_idle: Duration,
    /// After an upgrade (WebSocket): the tunnel closes when idle this long.
    pub tunnel_idle: Duration,
}

/// What the worker must do after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStep {
    Idle,
    Yield,
    WaitBuffer,
    /// A request was routed to `cluster`: hand me an upstream (`set_upstream`), or answer
    /// `fail_upstream` when none can be had.
    NeedUpstream {
        cluster: u32,
    },
    /// The backend answered 5xx (or not in time) and the request may go to another backend
    /// instead: drop this upstream (the answer is discarded) and pick again.
    RetryElsewhere,
    /// The upstream connect failed, or a reused connection died before answering an
    /// idempotent request: give me another one (the session already counted the failure).
    UpstreamFailed,
    /// The upstream connect completed.
    Connected,
    /// The exchange is complete. The upstream (if `reusable`) may go back to the pool; the
    /// session then waits for the next request, unless it was told to close.
    ExchangeDone {
        reusable: bool,
    },
    Close(HttpClose),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpClose {
    /// Clean end (client closed between requests, or `Connection: close` served).
    Done,
    /// The client went away mid-request or reset.
    ClientGone,
    /// The backend failed after part of the response was sent: the client is reset, so it
    /// cannot mistake a truncated response for a complete one.
    Abort,
}

/// Where an HTTP message body stands.
#[derive(Debug, Clone, Copy)]
enum Body {
    None,
    Length(u64),
    Chunked(Chunked, bool),
    UntilClose,
}

impl Body {
    fn new(kind: BodyKind) -> Body {
        match kind {
            BodyKind::None => Body::None,
            BodyKind::Length(0) => Body::None,
            BodyKind::Length(n) => Body::Length(n),
            BodyKind::Chunked => Body::Chunked(Chunked::new(MAX_TRAILER), false),
            BodyKind::CloseDelimited => Body::UntilClose,
        }
    }

    fn done(&self) -> bool {
        matches!(self, Body::None | Body::Chunked(_, true))
    }

    /// Claims the bytes at the front of `avail` that belong to this body.
    fn take(&mut self, avail: &[u8]) -> Result<usize, ChunkError> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a request head.
    Head,
    /// Routed; waiting for the worker to provide an upstream.
    NeedUpstream,
    Connecting,
    Exchange,
    /// Writing a locally generated response, then closing.
    Local,
    /// After `101 Switching Protocols`: a byte pipe both ways until both sides are done.
    Tunnel,
}

pub struct HttpCtx<'a> {
    pub pool: &'a mut BufferPool,
    /// Kernel pipes for splicing long response bodies.
    pub pipes: &'a mut PipePool,
    pub stats: &'a mut HttpCounters,
    pub now: Instant,
    pub limits: &'a Limits,
    /// Source of generated X-Request-Id values (worker id in the high bits).
    pub request_ids: &'a mut u64,
    /// The live routing state: each request is routed on the latest snapshot.
    pub shared: &'a crate::snapshot::SharedSnapshot,
}

pub struct HttpSession {
    pub front: TcpStream,
    front_ready: Ready,
    pub back: Option<TcpStream>,
    back_ready: Ready,
    pub snapshot: Arc<Snapshot>,
    pub listener: u32,
    client_ip: IpAddr,
    pub state: State,
    /// Client bytes not yet consumed: request heads and body bytes.
    req_in: Option<Buf>,
    /// Bytes at the front of `req_in` claimed by the request body, not yet written upstream.
    req_ready: usize,
    req_body: Body,
    /// The rewritten request head; kept until the first response byte so that a request that
    /// dies on a reused connection can be sent again.
    up_head: Option<Buf>,
    up_head_sent: usize,
    /// Backend bytes not yet consumed.
    resp_in: Option<Buf>,
    resp_ready: usize,
    resp_body: Body,
    /// The final response head has been parsed.
    resp_started: bool,
    /// Rewritten response head or local response, going to the client.
    down: Option<Buf>,
    /// While a long Content-Length response body is spliced: the pipe, holding `resp_piped`
    /// body bytes not yet written to the client.
    resp_pipe: Option<Pipe>,
    resp_piped: usize,
    method: Method,
    client_keep_alive: bool,
    client_minor: u8,
    /// Some response byte arrived from the current upstream.
    got_response_byte: bool,
    /// Some request body byte was written upstream.
    body_sent: bool,
    /// Some response byte was written to the client for the current request.
    answered: bool,
    /// Close the client once the current response is out.
    close_after: bool,
    /// The backend asked to close (or framing requires it): don't pool the upstream.
    upstream_close: bool,
    /// The current request asked to upgrade the connection.
    upgrade_requested: bool,
    /// A 101 is being written: the tunnel starts once it is out.
    upgrading: bool,
    tun_up: Flow,
    tun_down: Flow,
    pub cluster: u32,
    pub backend: Option<u32>,
    pub tried: Tried,
    pub attempts: u32,
    /// The current upstream came from the pool.
    pub reused: bool,
    pub hash: Option<u64>,
    /// This attempt may be abandoned for another backend on a 5xx head / a first-byte
    /// timeout (set by the worker from the cluster's retry policy and budget).
    pub retry_5xx: bool,
    pub retry_timeout: bool,
    /// Retries of the current request so far (5xx, timeout).
    pub retries_used: u32,
    pub timeouts: HttpTimeouts,
    /// Start of the current phase (head, connect, wait for first byte, local response).
    pub phase_started: Instant,
    pub last_active: Instant,
    pub request_started: Instant,
    /// When the first byte of the current response came from the backend.
    pub first_byte_at: Instant,
    /// When the current upstream was handed over (connect start for a new one).
    pub upstream_started: Instant,
    /// The worker's slab key of the upstream connection entry this session is using.
    pub upstream: Option<usize>,
    pub timer_gen: u32,
    /// When the armed timer entry fires. The deadline may move earlier (the first byte of a
    /// head replaces the keep-alive timeout by the header timeout): the worker then re-arms.
    pub timer_at: Instant,
    /// A live timer entry (generation `timer_gen`) is in the wheel; when it fires and the
    /// deadline has passed, the worker clears this before handling the timeout.
    pub timer_armed: bool,
    pub queued: bool,
    /// Status of the current response, for stats and the access log.
    pub status: u16,
    /// Access-log facts of the current request (method, path, bytes sent).
    pub log: Record,
    /// The current request was logged (or there is none).
    pub logged: bool,
    /// The release decision of the current request (service, version, cookies to set).
    pub release: crate::release::Tag,
}

fn io_would_block(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

/// A cursor over an output slice for building heads without allocation.
struct Out<'a> {
    buf: &'a mut [u8],
    n: usize,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), rewrite::Overflow> {
        let dst = self
            .buf
            .get_mut(self.n..self.n + b.len())
            .ok_or(rewrite::Overflow)?;
        dst.copy_from_slice(b);
        self.n += b.len();
        Ok(())
    }
}

/// `name` is listed in a Connection header of the head (any number of tokens and headers).
fn named_in_connection(src: &[u8], head_len: usize, name: &[u8]) -> bool {
    let mut found = false;
    head::for_each_header(src, head_len, |n, v| {
        if !found && n.eq_ignore_ascii_case(b"connection") {
            found = v
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name));
        }
    });
    found
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    // Dispatch on length first: most names are compared against nothing.
    let is = |h: &[u8]| name.eq_ignore_ascii_case(h);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        _ => false,
    }
}

/// Writes the response head for the client: the status line as received (version HTTP/1.1),
/// end-to-end headers kept, hop-by-hop ones (and those named in Connection) dropped,
/// `Transfer-Encoding` kept when the body is chunked (it is passed through as is), and our own
/// `Connection` header.
fn write_response_head(
    src: &[u8],
    h: &ResponseHead,
    close: bool,
    client_minor: u8,
    out: &mut [u8],
) -> Result<usize, rewrite::Overflow> {
    let mut o = Out { buf: out, n: 0 };
    // Our own status line: the parser tolerates leading empty lines and bare LFs, so the
    // received line is not copied as bytes.
    let code = [
        b'0' + ((h.status / 100) % 10) as u8,
        b'0' + ((h.status / 10) % 10) as u8,
        b'0' + (h.status % 10) as u8,
    ];
    o.put(b"HTTP/1.1 ")?;
    o.put(&code)?;
    o.put(b" ")?;
    o.put(src.get(h.reason.clone()).unwrap_or_default())?;
    o.put(b"\r\n")?;
    let chunked = h.body == BodyKind::Chunked;
    let mut result = Ok(());
    head::for_each_header(src, h.head_len, |name, value| {
        if result.is_err() {
            return;
        }
        let keep_te = chunked && name.eq_ignore_ascii_case(b"transfer-encoding");
        let keep_upgrade = h.upgrade && name.eq_ignore_ascii_case(b"upgrade");
        let dropped_cl = h.drop_content_length && name.eq_ignore_ascii_case(b"content-length");
        if (is_hop_by_hop(name) && !keep_te && !keep_upgrade)
            || dropped_cl
            || (!keep_upgrade
                // Only a Connection token other than close/keep-alive/upgrade can name a
                // header that survives the hop-by-hop test, or `close` itself.
                && (h.connection_names || name.eq_ignore_ascii_case(b"close"))
                && named_in_connection(src, h.head_len, name))
        {
            return;
        }
        result = o
            .put(name)
            .and_then(|_| o.put(b": "))
            .and_then(|_| o.put(value))
            .and_then(|_| o.put(b"\r\n"));
    });
    result?;
    if h.upgrade {
        o.put(b"Connection: upgrade\r\n")?;
    } else if close {
        o.put(b"Connection: close\r\n")?;
    } else if client_minor == 0 {
        o.put(b"Connection: keep-alive\r\n")?;
    }
    o.put(b"\r\n")?;
    Ok(o.n)
}

impl HttpSession {
    pub fn new(
        front: TcpStream,
        snapshot: Arc<Snapshot>,
        listener: u32,
        client_ip: IpAddr,
        timeouts: HttpTimeouts,
        now: Instant,
    ) -> HttpSession {
        HttpSession {
            front,
            front_ready: Ready::EMPTY,
            back: None,
            back_ready: Ready::EMPTY,
            snapshot,
            listener,
            client_ip,
            state: State::Head,
            req_in: None,
            req_ready: 0,
            req_body: Body::None,
            up_head: None,
            up_head_sent: 0,
            resp_in: None,
            resp_ready: 0,
            resp_body: Body::None,
            resp_started: false,
            down: None,
            resp_pipe: None,
            resp_piped: 0,
            method: Method::Get,
            client_keep_alive: true,
            client_minor: 1,
            got_response_byte: false,
            body_sent: false,
            answered: false,
            close_after: false,
            upstream_close: false,
            upgrade_requested: false,
            upgrading: false,
            tun_up: Flow::default(),
            tun_down: Flow::default(),
            cluster: 0,
            backend: None,
            tried: Tried::default(),
            attempts: 0,
            reused: false,
            hash: None,
            retry_5xx: false,
            retry_timeout: false,
            retries_used: 0,
            timeouts,
            phase_started: now,
            last_active: now,
            request_started: now,
            first_byte_at: now,
            upstream_started: now,
            upstream: None,
            timer_gen: 0,
            timer_at: now,
            timer_armed: false,
            queued: false,
            status: 0,
            log: Record::new(client_ip),
            logged: true,
            release: crate::release::Tag::NONE,
        }
    }

    #[inline]
    pub fn on_event(&mut self, side: Side, r: Ready) {
        match side {
            Side::Front => self.front_ready.insert(r),
            Side::Back => self.back_ready.insert(r),
        }
    }

    /// The client is to be closed once the current response is out.
    pub fn wants_close(&self) -> bool {
        self.close_after
    }

    /// Some response byte came from the current upstream.
    pub fn response_started(&self) -> bool {
        self.got_response_byte
    }

    /// Between requests with nothing buffered: safe to close at shutdown.
    pub fn idle_between_requests(&self) -> bool {
        self.state == State::Head && self.req_in.as_ref().is_none_or(Buf::is_empty)
    }

    /// The request is safe to send to another backend now that this one answered (or timed
    /// out): nothing answered to the client yet, and no body (a body streamed upstream is
    /// consumed and cannot be sent again).
    pub fn can_resend(&self) -> bool {
        !self.answered && !self.body_sent && matches!(self.req_body, Body::None)
    }

    /// The request's method is idempotent.
    pub fn idempotent(&self) -> bool {
        self.method.is_idempotent()
    }

    /// The request can be sent again on another connection: nothing of the response came
    /// back, and its body (if any) is still whole in the client buffer. Body bytes that were
    /// written are consumed, so a request whose body went out (even an idempotent PUT) cannot
    /// be replayed: its head would go without its body and the backend would wait for it.
    pub fn retryable(&self) -> bool {
        !self.got_response_byte
            && !self.answered
            && !self.body_sent
            && matches!(self.req_body, Body::None)
    }

    /// The worker hands over an upstream: a fresh connect in progress (`reused == false`) or
    /// an idle pooled connection (already connected).
    pub fn set_upstream(&mut self, idx: u32, back: TcpStream, reused: bool, now: Instant) {
        self.back = Some(back);
        self.backend = Some(idx);
        self.reused = reused;
        self.back_ready = if reused {
            Ready::WRITABLE
        } else {
            Ready::EMPTY
        };
        self.up_head_sent = 0;
        self.got_response_byte = false;
        self.phase_started = now;
        self.upstream_started = now;
        self.state = if reused {
            State::Exchange
        } else {
            State::Connecting
        };
    }

    /// Takes the upstream socket out (to pool or drop it).
    pub fn take_upstream(&mut self) -> Option<(u32, TcpStream)> {
        let b = self.back.take()?;
        self.back_ready = Ready::EMPTY;
        self.backend.take().map(|i| (i, b))
    }

    /// When the current timeout expires.
    pub fn deadline(&self) -> Instant {
        let t = &self.timeouts;
        match self.state {
            State::Head => {
                let idle = self.req_in.as_ref().is_none_or(Buf::is_empty);
                if idle {
                    self.last_active + t.keepalive
                } else {
                    self.phase_started + t.request_header
                }
            }
            State::NeedUpstream | State::Connecting => self.phase_started + t.connect,
            State::Exchange if !self.got_response_byte => self.phase_started + t.first_byte,
            State::Exchange => self.last_active + t.backend_idle,
            State::Local => self.phase_started + LOCAL_RESPONSE_TIMEOUT,
            State::Tunnel => self.last_active + t.tunnel_idle,
        }
    }

    pub fn release_resources(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        if let Some(p) = self.resp_pipe.take() {
            // A pipe still holding bytes must not carry them into another connection.
            if self.resp_piped == 0 {
                pipes.put(p);
            } else {
                pipes.discard(p);
            }
            self.resp_piped = 0;
        }
        for b in [
            self.req_in.take(),
            self.up_head.take(),
            self.resp_in.take(),
            self.down.take(),
        ]
        .into_iter()
        .flatten()
        {
            pool.release(b);
        }
        self.tun_up.release_buf(pool);
        self.tun_down.release_buf(pool);
    }

    /// Answers the current request locally (errors, routing failures) and closes after.
    /// When part of a response already went out, the client is reset instead.
    pub fn local_response(&mut self, cx: &mut HttpCtx<'_>, status: u16, body: &[u8]) -> HttpStep {
        self.typed_local_response(cx, status, b"text/plain", body)
    }

    fn typed_local_response(
        &mut self,
        cx: &mut HttpCtx<'_>,
        status: u16,
        content_type: &[u8],
        body: &[u8],
    ) -> HttpStep {
        if self.answered {
            return HttpStep::Close(HttpClose::Abort);
        }
        self.status = status;
        cx.stats.count_status(status);
        if let Some(b) = self.down.take() {
            cx.pool.release(b);
        }
        let Some(mut buf) = cx.pool.checkout() else {
            // No buffer even for an error: close rather than wait.
            return HttpStep::Close(HttpClose::Done);
        };
        match rewrite::typed_response(status, content_type, body, cx.pool.spare(&mut buf)) {
            Ok(n) => buf.fill(n),
            Err(rewrite::Overflow) => {
                cx.pool.release(buf);
                return HttpStep::Close(HttpClose::Done);
            }
        }
        self.down = Some(buf);
        self.close_after = true;
        self.answered = true;
        self.state = State::Local;
        self.phase_started = cx.now;
        self.pump(cx)
    }

    /// A request head is complete: route it, prepare the upstream head, ask for an upstream.
    fn start_request(&mut self, cx: &mut HttpCtx<'_>, h: &RequestHead) -> HttpStep {
        cx.stats.requests += 1;
        self.request_started = cx.now;
        self.method = h.method;
        self.client_keep_alive = h.keep_alive;
        self.client_minor = h.version_minor;
        self.answered = false;
        self.body_sent = false;
        self.resp_started = false;
        self.resp_ready = 0;
        self.req_ready = 0;
        self.status = 0;
        self.close_after = !h.keep_alive;
        self.upstream_close = false;
        self.upgrade_requested = h.upgrade;
        self.tried = Tried::default();
        self.attempts = 0;
        self.retries_used = 0;
        self.release = crate::release::Tag::NONE;
        self.req_body = Body::new(h.body);
        let Some(req_buf) = self.req_in.as_ref() else {
            return HttpStep::Close(HttpClose::Done);
        };
        // Route every request on the latest snapshot (a keep-alive connection sees changes
        // at its next request); `load` is a cheap guard unless the version moved.
        // A listener removed since this connection was accepted may have left its slot to
        // another listener: then the connection keeps the snapshot of its own listener.
        {
            let cur = cx.shared.load();
            if cur.version != self.snapshot.version {
                let li = self.listener as usize;
                let same = match (self.snapshot.listener(li), cur.listener(li)) {
                    (Some(a), Some(b)) => a.name == b.name,
                    _ => false,
                };
                if same {
                    self.snapshot = arc_swap::Guard::into_inner(cur);
                }
            }
        }
        let data = cx.pool.data(req_buf);
        let snap = self.snapshot.clone();
        let Some(listener) = snap.listener(self.listener as usize) else {
            return HttpStep::Close(HttpClose::Done);
        };
        let host = h
            .absolute_form_authority
            .clone()
            .or_else(|| h.host.clone())
            .and_then(|r| data.get(r))
            .unwrap_or_default();
        let target = data.get(h.target.clone()).unwrap_or_default();
        let method = data
            .iter()
            .position(|&b| b == b' ')
            .and_then(|i| data.get(..i))
            .unwrap_or_default();
        let head_len = h.head_len;
        self.log = Record::new(self.client_ip);
        self.log.set_request(method, target);
        self.logged = false;
        let lookup = |name: &[u8]| {
            head::HeaderLines::new(data, head_len)
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let view = RequestView {
            host,
            target,
            method,
            header: lookup,
        };
        let faas = listener.faas.then_some(&snap.cluster_index);
        let (cluster, strip) = match routing::route(&listener.routes, faas, listener.target, &view)
        {
            Decision::Cluster { cluster, strip } => (cluster, strip),
            Decision::Service { service, strip } => {
                match crate::release::route(&snap, service, data, h, *cx.request_ids, cx.now) {
                    Some(c) => {
                        self.release = c.tag;
                        (c.cluster, strip)
                    }
                    None => {
                        cx.stats.no_route += 1;
                        self.consume_head(cx, head_len);
                        return self.local_response(cx, 404, b"no route for this request\n");
                    }
                }
            }
            Decision::NoRoute => {
                cx.stats.no_route += 1;
                self.consume_head(cx, head_len);
                return self.local_response(cx, 404, b"no route for this request\n");
            }
            Decision::Faas(e) => {
                cx.stats.no_route += 1;
                let mut body = [0u8; 192];
                let n = e.write_body(target, &mut body).unwrap_or(0);
                self.consume_head(cx, head_len);
                return self.local_json(cx, 400, &body[..n]);
            }
        };
        self.hash = request_hash(
            snap.clusters.get(cluster).and_then(|c| c.hash_on.as_ref()),
            self.client_ip,
            &view.header,
        );
        // The rewritten head goes into its own buffer and stays there until answered. A head
        // that nearly fills a regular buffer is rewritten into a large one.
        let big = h.head_len + 1024 > cx.pool.buffer_size() && cx.pool.large_size() > 0;
        let up = if big {
            cx.pool.checkout_large()
        } else {
            cx.pool.checkout()
        };
        let Some(mut up) = up else {
            return HttpStep::WaitBuffer;
        };
        *cx.request_ids = cx.request_ids.wrapping_add(1);
        let mut id = [0u8; 16];
        hex16(*cx.request_ids, &mut id);
        let fwd = Forwarded {
            client_ip: self.client_ip,
            proto: "http",
            strip_prefix: strip,
            request_id: &id,
        };
        let written = match cx.pool.data_and_spare(req_buf, &mut up) {
            Some((src, out)) => rewrite::write_request_head(src, h, &fwd, out),
            None => Err(rewrite::Overflow),
        };
        match written {
            Ok(n) => up.fill(n),
            Err(rewrite::Overflow) => {
                cx.pool.release(up);
                self.consume_head(cx, head_len);
                return self.local_response(cx, 431, b"request head too large after rewriting\n");
            }
        }
        self.up_head = Some(up);
        self.up_head_sent = 0;
        self.consume_head(cx, head_len);
        self.cluster = cluster as u32;
        self.state = State::NeedUpstream;
        self.phase_started = cx.now;
        HttpStep::NeedUpstream {
            cluster: cluster as u32,
        }
    }

    fn local_json(&mut self, cx: &mut HttpCtx<'_>, status: u16, body: &[u8]) -> HttpStep {
        self.typed_local_response(cx, status, b"application/json", body)
    }

    fn consume_head(&mut self, cx: &mut HttpCtx<'_>, n: usize) {
        if let Some(b) = self.req_in.as_mut() {
            b.consume(n.min(b.len()));
            if b.is_empty() {
                if let Some(b) = self.req_in.take() {
                    cx.pool.release(b);
                }
            }
        }
    }

    /// The worker could not provide an upstream.
    pub fn fail_upstream(&mut self, cx: &mut HttpCtx<'_>, status: u16) -> HttpStep {
        match status {
            503 => cx.stats.no_backend += 1,
            504 => cx.stats.timeouts += 1,
            _ => cx.stats.upstream_errors += 1,
        }
        let body: &[u8] = match status {
            503 => b"no backend available\n",
            504 => b"backend timed out\n",
            _ => b"backend unreachable or failed\n",
        };
        self.local_response(cx, status, body)
    }

    fn check_connect(&mut self) -> std::io::Result<bool> {
        match self.back.as_ref() {
            Some(back) => connect_result(back, &mut self.back_ready),
            None => Ok(false),
        }
    }

    /// Parse limits of this session's listener.
    pub fn limits(&self) -> Limits {
        self.snapshot
            .listener(self.listener as usize)
            .map(|l| l.limits)
            .unwrap_or_default()
    }

    pub fn pump(&mut self, cx: &mut HttpCtx<'_>) -> HttpStep {
        for _ in 0..MAX_ROUNDS {
            let step = match self.state {
                State::Head => self.head_round(cx),
                State::NeedUpstream => {
                    return HttpStep::NeedUpstream {
                        cluster: self.cluster,
                    }
                }
                State::Connecting => match self.check_connect() {
                    Ok(true) => {
                        self.state = State::Exchange;
                        self.phase_started = cx.now;
                        return HttpStep::Connected;
                    }
                    Ok(false) => return HttpStep::Idle,
                    Err(_) => return self.upstream_broken(cx),
                },
                State::Exchange => self.exchange_round(cx),
                State::Local => self.local_round(cx),
                State::Tunnel => self.tunnel_round(cx),
            };
            match step {
                Some(s) => return s,
                None => continue,
            }
        }
        HttpStep::Yield
    }

    /// Reads and parses a request head. `None`: progress, go round again.
    fn head_round(&mut self, cx: &mut HttpCtx<'_>) -> Option<HttpStep> {
        if let Some(b) = self.req_in.as_ref() {
            if !b.is_empty() {
                let data = cx.pool.data(b);
                match head::parse_request(data, cx.limits) {
                    Ok(Some(h)) => return Some(self.start_request(cx, &h)),
                    Ok(None) => {
                        if b.len() >= cx.pool.capacity(b) {
                            return self.grow_head_buffer(cx);
                        }
                    }
                    Err(r) => {
                        cx.stats.bad_requests += 1;
                        return Some(self.reject(cx, r));
                    }
                }
            }
        }
        if !self.front_ready.contains(Ready::READABLE) {
            return Some(HttpStep::Idle);
        }
        if self.req_in.is_none() {
            match cx.pool.checkout() {
                Some(b) => self.req_in = Some(b),
                None => return Some(HttpStep::WaitBuffer),
            }
        }
        let buf = self.req_in.as_mut()?;
        let was_empty = buf.is_empty();
        let spare = cx.pool.spare(buf);
        let want = spare.len();
        match self.front.read(spare) {
            Ok(0) => Some(HttpStep::Close(if was_empty {
                HttpClose::Done
            } else {
                HttpClose::ClientGone
            })),
            Ok(n) => {
                buf.fill(n);
                if was_empty {
                    self.phase_started = cx.now;
                }
                self.last_active = cx.now;
                if n < want && !self.front_ready.contains(Ready::HUP) {
                    self.front_ready.remove(Ready::READABLE);
                }
                None
            }
            Err(e) if io_would_block(&e) => {
                self.front_ready.remove(Ready::READABLE);
                Some(HttpStep::Idle)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => None,
            Err(_) => Some(HttpStep::Close(HttpClose::ClientGone)),
        }
    }

    /// A request head filled its buffer without ending. Below the listener's limit it moves
    /// to a large buffer; past it, or when no large buffer is left, the request is refused.
    fn grow_head_buffer(&mut self, cx: &mut HttpCtx<'_>) -> Option<HttpStep> {
        let Some(small) = self.req_in.take() else {
            return Some(HttpStep::Close(HttpClose::Done));
        };
        let can_grow = cx.pool.capacity(&small) < cx.pool.large_size()
            && small.len() < cx.limits.max_head_bytes;
        if !can_grow {
            cx.pool.release(small);
            cx.stats.bad_requests += 1;
            return Some(self.local_response(cx, 431, b"request header fields too large\n"));
        }
        let Some(mut big) = cx.pool.checkout_large() else {
            cx.pool.release(small);
            return Some(self.fail_upstream(cx, 503));
        };
        let n = small.len();
        if let Some((d, s)) = cx.pool.data_and_spare(&small, &mut big) {
            s[..n].copy_from_slice(d);
            big.fill(n);
        }
        cx.pool.release(small);
        self.req_in = Some(big);
        None
    }

    fn reject(&mut self, cx: &mut HttpCtx<'_>, r: Reject) -> HttpStep {
        // Whatever follows a malformed head cannot be framed: answer and close.
        if let Some(b) = self.req_in.take() {
            cx.pool.release(b);
        }
        let status = r.status();
        let mut body = [0u8; 96];
        let reason = r.reason().as_bytes();
        let n = reason.len().min(body.len() - 1);
        body[..n].copy_from_slice(&reason[..n]);
        body[n] = b'\n';
        self.local_response(cx, status, &body[..n + 1])
    }

    /// The upstream failed. Before any response byte on a reused connection, the request is
    /// retried once (when safe); otherwise 502, or an abort when the response had started.
    fn upstream_broken(&mut self, cx: &mut HttpCtx<'_>) -> HttpStep {
        if self.answered {
            cx.stats.upstream_errors += 1;
            return HttpStep::Close(HttpClose::Abort);
        }
        if !self.got_response_byte && (self.retryable() || self.state == State::Connecting) {
            return HttpStep::UpstreamFailed;
        }
        self.fail_upstream(cx, 502)
    }

    fn local_round(&mut self, cx: &mut HttpCtx<'_>) -> Option<HttpStep> {
        match self.write_down(cx) {
            Err(()) => Some(HttpStep::Close(HttpClose::ClientGone)),
            Ok(_) if self.down.is_none() => Some(HttpStep::Close(HttpClose::Done)),
            Ok(true) => None,
            Ok(false) => Some(HttpStep::Idle),
        }
    }

    /// Writes `down` to the client. Ok(progressed).
    fn write_down(&mut self, cx: &mut HttpCtx<'_>) -> Result<bool, ()> {
        let Some(b) = self.down.as_mut() else {
            return Ok(false);
        };
        if !self.front_ready.contains(Ready::WRITABLE) {
            return Ok(false);
        }
        let data = cx.pool.data(b);
        let want = data.len();
        match self.front.write(data) {
            Ok(n) => {
                b.consume(n);
                self.answered = true;
                self.log.bytes += n as u64;
                if n < want {
                    self.front_ready.remove(Ready::WRITABLE);
                }
                if b.is_empty() {
                    if let Some(b) = self.down.take() {
                        cx.pool.release(b);
                    }
                }
                Ok(n > 0)
            }
            Err(e) if io_would_block(&e) => {
                self.front_ready.remove(Ready::WRITABLE);
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(()),
        }
    }

    /// One round of a request/response exchange with the upstream.
    fn exchange_round(&mut self, cx: &mut HttpCtx<'_>) -> Option<HttpStep> {
        let mut progressed = false;
        let Some(back) = self.back.as_mut() else {
            return Some(self.fail_upstream(cx, 502));
        };

        // 1. The request head, with the body bytes already buffered behind it in the same
        // writev: a small POST goes upstream in one send, not two.
        if let Some(h) = self.up_head.as_ref() {
            let head_len = h.len();
            if self.up_head_sent < head_len && self.back_ready.contains(Ready::WRITABLE) {
                if self.req_ready == 0 && !self.req_body.done() {
                    if let Some(b) = self.req_in.as_ref() {
                        match self.req_body.take(cx.pool.data(b)) {
                            Ok(n) => self.req_ready = n,
                            Err(_) => {
                                cx.stats.bad_requests += 1;
                                return Some(if self.answered {
                                    HttpStep::Close(HttpClose::Abort)
                                } else {
                                    self.local_response(cx, 400, b"bad chunked request body\n")
                                });
                            }
                        }
                    }
                }
                let head = cx.pool.data(h).get(self.up_head_sent..).unwrap_or_default();
                let body = match self.req_in.as_ref() {
                    Some(b) if self.req_ready > 0 => {
                        let d = cx.pool.data(b);
                        d.get(..self.req_ready.min(d.len())).unwrap_or_default()
                    }
                    _ => &[],
                };
                let want = head.len() + body.len();
                let wrote = if body.is_empty() {
                    back.write(head)
                } else {
                    back.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                };
                match wrote {
                    Ok(n) => {
                        let to_head = n.min(head.len());
                        let to_body = n - to_head;
                        self.up_head_sent += to_head;
                        progressed |= n > 0;
                        if to_body > 0 {
                            if let Some(b) = self.req_in.as_mut() {
                                b.consume(to_body);
                                self.req_ready -= to_body;
                                self.body_sent = true;
                                if b.is_empty() {
                                    if let Some(b) = self.req_in.take() {
                                        cx.pool.release(b);
                                    }
                                }
                            }
                        }
                        if n < want {
                            self.back_ready.remove(Ready::WRITABLE);
                        }
                    }
                    Err(e) if io_would_block(&e) => self.back_ready.remove(Ready::WRITABLE),
                    Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                    Err(_) => return Some(self.upstream_broken(cx)),
                }
            }
        }
        let head_out = self
            .up_head
            .as_ref()
            .is_some_and(|h| self.up_head_sent >= h.len());

        // 2. The request body: claim, then write what belongs to it.
        if head_out && !(self.req_body.done() && self.req_ready == 0) {
            if self.req_ready == 0 {
                if let Some(b) = self.req_in.as_ref() {
                    match self.req_body.take(cx.pool.data(b)) {
                        Ok(n) => self.req_ready = n,
                        Err(_) => {
                            cx.stats.bad_requests += 1;
                            return Some(if self.answered {
                                HttpStep::Close(HttpClose::Abort)
                            } else {
                                self.local_response(cx, 400, b"bad chunked request body\n")
                            });
                        }
                    }
                }
            }
            if self.req_ready > 0 && self.back_ready.contains(Ready::WRITABLE) {
                if let Some(b) = self.req_in.as_mut() {
                    let data = cx.pool.data(b);
                    let want = self.req_ready.min(data.len());
                    match back.write(&data[..want]) {
                        Ok(n) => {
                            b.consume(n);
                            self.req_ready -= n;
                            self.body_sent |= n > 0;
                            progressed |= n > 0;
                            if n < want {
                                self.back_ready.remove(Ready::WRITABLE);
                            }
                            if b.is_empty() {
                                if let Some(b) = self.req_in.take() {
                                    cx.pool.release(b);
                                }
                            }
                        }
                        Err(e) if io_would_block(&e) => self.back_ready.remove(Ready::WRITABLE),
                        Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                        Err(_) => return Some(self.upstream_broken(cx)),
                    }
                }
            }
            // More body from the client.
            if self.req_ready == 0
                && !self.req_body.done()
                && self.req_in.as_ref().is_none_or(Buf::is_empty)
                && self.front_ready.contains(Ready::READABLE)
            {
                if self.req_in.is_none() {
                    self.req_in = cx.pool.checkout();
                }
                if let Some(b) = self.req_in.as_mut() {
                    let spare = cx.pool.spare(b);
                    let want = spare.len();
                    match self.front.read(spare) {
                        Ok(0) => return Some(HttpStep::Close(HttpClose::ClientGone)),
                        Ok(n) => {
                            b.fill(n);
                            progressed = true;
                            self.last_active = cx.now;
                            if n < want && !self.front_ready.contains(Ready::HUP) {
                                self.front_ready.remove(Ready::READABLE);
                            }
                        }
                        Err(e) if io_would_block(&e) => self.front_ready.remove(Ready::READABLE),
                        Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                        Err(_) => return Some(HttpStep::Close(HttpClose::ClientGone)),
                    }
                }
            }
        }

        // 3. The response: read from the backend.
        let resp_room = self
            .resp_in
            .as_ref()
            .is_none_or(|b| b.len() < cx.pool.buffer_size());
        if resp_room
            && self.resp_ready == 0
            && self.down.is_none()
            && self.resp_pipe.is_none()
            && self.back_ready.contains(Ready::READABLE)
        {
            if self.resp_in.is_none() {
                self.resp_in = cx.pool.checkout();
            }
            if let Some(b) = self.resp_in.as_mut() {
                let spare = cx.pool.spare(b);
                let want = spare.len();
                match back.read(spare) {
                    Ok(0) => {
                        // Backend closed.
                        if let Body::UntilClose = self.resp_body {
                            self.resp_body = Body::None;
                            self.close_after = true;
                        } else if !self.got_response_byte {
                            return Some(self.upstream_broken(cx));
                        } else {
                            cx.stats.upstream_errors += 1;
                            return Some(HttpStep::Close(HttpClose::Abort));
                        }
                        progressed = true;
                    }
                    Ok(n) => {
                        b.fill(n);
                        if !self.got_response_byte {
                            self.first_byte_at = cx.now;
                        }
                        self.got_response_byte = true;
                        progressed = true;
                        self.last_active = cx.now;
                        if n < want && !self.back_ready.contains(Ready::HUP) {
                            self.back_ready.remove(Ready::READABLE);
                        }
                    }
                    Err(e) if io_would_block(&e) => self.back_ready.remove(Ready::READABLE),
                    Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                    Err(_) => return Some(self.upstream_broken(cx)),
                }
            }
        }

        // 4. The response head (interim ones are forwarded as they come).
        if !self.resp_started && self.down.is_none() {
            if let Some(b) = self.resp_in.as_ref() {
                if !b.is_empty() {
                    match head::parse_response(cx.pool.data(b), self.method, cx.limits) {
                        Ok(Some(h)) => {
                            if let Some(step) = self.start_response(cx, &h) {
                                return Some(step);
                            }
                            progressed = true;
                        }
                        Ok(None) if b.len() >= cx.pool.buffer_size() => {
                            cx.stats.upstream_errors += 1;
                            return Some(self.fail_upstream(cx, 502));
                        }
                        Ok(None) => {}
                        Err(_) => {
                            cx.stats.upstream_errors += 1;
                            return Some(self.fail_upstream(cx, 502));
                        }
                    }
                }
            }
        }

        // 5. To the client: the response head first, then body bytes as claimed.
        match self.write_down(cx) {
            Err(()) => return Some(HttpStep::Close(HttpClose::ClientGone)),
            Ok(p) => progressed |= p,
        }
        if self.upgrading && self.down.is_none() {
            self.enter_tunnel(cx);
            return None;
        }
        if self.resp_started && self.down.is_none() {
            // 5b. A long Content-Length body, once everything buffered before it is out, goes
            // backend → pipe → client with splice(2): no copy through user space and 256 KiB
            // per call instead of one buffer.
            if self.resp_pipe.is_none()
                && self.resp_ready == 0
                && self.resp_in.is_none()
                && matches!(self.resp_body, Body::Length(left) if left >= 2 * cx.pool.buffer_size() as u64)
            {
                self.resp_pipe = cx.pipes.get();
            }
            if let (Some(pipe), Some(back)) = (self.resp_pipe.as_ref(), self.back.as_ref()) {
                if let Body::Length(left) = self.resp_body {
                    if self.back_ready.contains(Ready::READABLE) && self.resp_piped < pipe.capacity
                    {
                        let want = ((pipe.capacity - self.resp_piped) as u64).min(left) as usize;
                        match splice::fill(back, pipe, want) {
                            Ok(0) => {
                                // Closed before the body was complete.
                                cx.stats.upstream_errors += 1;
                                return Some(HttpStep::Close(HttpClose::Abort));
                            }
                            Ok(n) => {
                                self.resp_piped += n;
                                self.resp_body = if (n as u64) < left {
                                    Body::Length(left - n as u64)
                                } else {
                                    Body::None
                                };
                                progressed = true;
                                self.last_active = cx.now;
                            }
                            // With bytes in the pipe, EAGAIN may mean "pipe full" (pages, not
                            // bytes); only an empty pipe proves the socket is dry.
                            Err(e) if io_would_block(&e) => {
                                if self.resp_piped == 0 {
                                    self.back_ready.remove(Ready::READABLE);
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                            Err(_) => {
                                cx.stats.upstream_errors += 1;
                                return Some(HttpStep::Close(HttpClose::Abort));
                            }
                        }
                    }
                }
                if self.resp_piped > 0 && self.front_ready.contains(Ready::WRITABLE) {
                    match splice::drain(pipe, &self.front, self.resp_piped) {
                        Ok(n) => {
                            if n < self.resp_piped {
                                self.front_ready.remove(Ready::WRITABLE);
                            }
                            self.resp_piped -= n;
                            self.log.bytes += n as u64;
                            self.answered |= n > 0;
                            progressed |= n > 0;
                        }
                        Err(e) if io_would_block(&e) => self.front_ready.remove(Ready::WRITABLE),
                        Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                        Err(_) => return Some(HttpStep::Close(HttpClose::ClientGone)),
                    }
                }
                if self.resp_piped == 0 && self.resp_body.done() {
                    if let Some(p) = self.resp_pipe.take() {
                        cx.pipes.put(p);
                    }
                    // The splices took exactly the body. Anything already behind it (a
                    // misbehaving backend) would raise no new edge once pooled: probe once.
                    if self.back_ready.contains(Ready::READABLE) {
                        let mut probe = [0u8; 1];
                        match (&mut &*back).read(&mut probe) {
                            Err(e) if io_would_block(&e) => self.back_ready.remove(Ready::READABLE),
                            _ => self.upstream_close = true,
                        }
                    }
                }
            }
            if self.resp_pipe.is_none() && self.resp_ready == 0 {
                if let Some(b) = self.resp_in.as_ref() {
                    match self.resp_body.take(cx.pool.data(b)) {
                        Ok(n) => self.resp_ready = n,
                        Err(_) => {
                            cx.stats.upstream_errors += 1;
                            return Some(HttpStep::Close(HttpClose::Abort));
                        }
                    }
                }
            }
            if self.resp_ready > 0 && self.front_ready.contains(Ready::WRITABLE) {
                if let Some(b) = self.resp_in.as_mut() {
                    let data = cx.pool.data(b);
                    let want = self.resp_ready.min(data.len());
                    match self.front.write(&data[..want]) {
                        Ok(n) => {
                            b.consume(n);
                            self.resp_ready -= n;
                            self.log.bytes += n as u64;
                            progressed |= n > 0;
                            if n < want {
                                self.front_ready.remove(Ready::WRITABLE);
                            }
                        }
                        Err(e) if io_would_block(&e) => self.front_ready.remove(Ready::WRITABLE),
                        Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                        Err(_) => return Some(HttpStep::Close(HttpClose::ClientGone)),
                    }
                }
            }
            if self.resp_in.as_ref().is_some_and(Buf::is_empty) {
                if let Some(b) = self.resp_in.take() {
                    cx.pool.release(b);
                }
            }
            // 6. Done?
            if self.resp_body.done() && self.resp_ready == 0 && self.resp_pipe.is_none() {
                let request_done = head_out && self.req_body.done() && self.req_ready == 0;
                // Leftover upstream bytes after a complete response: the connection is not
                // clean enough to reuse.
                let clean = self.resp_in.is_none();
                if !request_done {
                    self.close_after = true;
                }
                cx.stats.count_status(self.status);
                let reusable = request_done && clean && !self.close_after_upstream();
                if let Some(b) = self.up_head.take() {
                    cx.pool.release(b);
                }
                if let Some(b) = self.resp_in.take() {
                    cx.pool.release(b);
                }
                self.state = State::Head;
                self.phase_started = cx.now;
                self.last_active = cx.now;
                return Some(HttpStep::ExchangeDone { reusable });
            }
        }
        if progressed {
            None
        } else {
            Some(HttpStep::Idle)
        }
    }

    /// Set from the response head: the backend asked to close, or framing requires it.
    fn close_after_upstream(&self) -> bool {
        self.upstream_close
    }

    /// A response head was parsed. `Some(step)` ends the round.
    fn start_response(&mut self, cx: &mut HttpCtx<'_>, h: &ResponseHead) -> Option<HttpStep> {
        if !h.interim && h.status >= 500 && self.retry_5xx && self.can_resend() {
            // Discard this answer; the worker sends the request to another backend.
            if let Some(b) = self.resp_in.take() {
                cx.pool.release(b);
            }
            self.got_response_byte = false;
            self.upstream_close = true;
            self.status = h.status;
            return Some(HttpStep::RetryElsewhere);
        }
        let Some(src) = self.resp_in.as_ref() else {
            return Some(self.fail_upstream(cx, 502));
        };
        let Some(mut out) = cx.pool.checkout() else {
            return Some(HttpStep::WaitBuffer);
        };
        if h.interim {
            // 100 Continue and friends: forwarded verbatim, then wait for the final head.
            let copied = cx.pool.data_and_spare(src, &mut out).and_then(|(d, s)| {
                let n = h.head_len;
                s.get_mut(..n)?.copy_from_slice(d.get(..n)?);
                Some(n)
            });
            match copied {
                Some(n) => out.fill(n),
                None => {
                    cx.pool.release(out);
                    return Some(self.fail_upstream(cx, 502));
                }
            }
        } else {
            self.status = h.status;
            self.upstream_close = !h.keep_alive;
            let close = self.close_after
                || !h.keep_alive && !self.client_keep_alive
                || h.body == BodyKind::CloseDelimited;
            if h.body == BodyKind::CloseDelimited {
                self.close_after = true;
            }
            let written = match cx.pool.data_and_spare(src, &mut out) {
                Some((d, s)) => {
                    write_response_head(d, h, close, self.client_minor, s).and_then(|n| {
                        crate::release::append_set_cookies(&self.snapshot, &self.release, s, n)
                    })
                }
                None => Err(rewrite::Overflow),
            };
            match written {
                Ok(n) => out.fill(n),
                Err(rewrite::Overflow) => {
                    cx.pool.release(out);
                    return Some(self.fail_upstream(cx, 502));
                }
            }
            self.resp_body = Body::new(h.body);
            self.resp_started = true;
            if h.upgrade {
                if !self.upgrade_requested {
                    // A 101 nobody asked for: the backend is not speaking HTTP to us.
                    cx.pool.release(out);
                    cx.stats.upstream_errors += 1;
                    return Some(self.fail_upstream(cx, 502));
                }
                self.upgrading = true;
                self.close_after = true;
                self.upstream_close = true;
            }
        }
        if let Some(b) = self.resp_in.as_mut() {
            b.consume(h.head_len.min(b.len()));
        }
        // Body bytes already here go out in the same write as the head: for small responses
        // that is one send instead of two. Only what fits is claimed from the framing.
        if !h.interim {
            if let Some(src) = self.resp_in.as_mut() {
                let mut claimed = Ok(0);
                if let Some((d, spare)) = cx.pool.data_and_spare(src, &mut out) {
                    let room = spare.len().min(d.len());
                    claimed = self.resp_body.take(&d[..room]);
                    if let Ok(n) = claimed {
                        spare[..n].copy_from_slice(&d[..n]);
                    }
                }
                match claimed {
                    Ok(n) => {
                        out.fill(n);
                        src.consume(n);
                    }
                    Err(_) => {
                        cx.pool.release(out);
                        cx.stats.upstream_errors += 1;
                        return Some(HttpStep::Close(HttpClose::Abort));
                    }
                }
            }
            if self.resp_in.as_ref().is_some_and(Buf::is_empty) {
                if let Some(b) = self.resp_in.take() {
                    cx.pool.release(b);
                }
            }
        }
        self.down = Some(out);
        None
    }
}

impl HttpSession {
    /// The 101 is out: from here on bytes pass through unchanged. Bytes that arrived after
    /// either head are already buffered and go first.
    fn enter_tunnel(&mut self, cx: &mut HttpCtx<'_>) {
        self.upgrading = false;
        if let Some(b) = self.up_head.take() {
            cx.pool.release(b);
        }
        self.tun_up = Flow::with_buf(self.req_in.take(), cx.pool);
        self.tun_down = Flow::with_buf(self.resp_in.take(), cx.pool);
        self.state = State::Tunnel;
        self.last_active = cx.now;
        cx.stats.count_status(101);
    }

    fn tunnel_round(&mut self, cx: &mut HttpCtx<'_>) -> Option<HttpStep> {
        let Some(back) = self.back.as_mut() else {
            return Some(HttpStep::Close(HttpClose::Done));
        };
        let mut moved = 0u64;
        let up = match flow_round(
            &mut self.tun_up,
            &mut self.front,
            &mut self.front_ready,
            Some((back, &mut self.back_ready)),
            cx.pool,
            None,
            &mut moved,
        ) {
            Ok(m) => m,
            Err(Broken::Source) => return Some(HttpStep::Close(HttpClose::ClientGone)),
            Err(Broken::Destination) => return Some(HttpStep::Close(HttpClose::Abort)),
        };
        let down = match flow_round(
            &mut self.tun_down,
            back,
            &mut self.back_ready,
            Some((&mut self.front, &mut self.front_ready)),
            cx.pool,
            None,
            &mut moved,
        ) {
            Ok(m) => m,
            Err(Broken::Source) => return Some(HttpStep::Close(HttpClose::Abort)),
            Err(Broken::Destination) => return Some(HttpStep::Close(HttpClose::ClientGone)),
        };
        if up.progressed || down.progressed {
            self.last_active = cx.now;
        }
        if self.tun_up.finished() && self.tun_down.finished() {
            return Some(HttpStep::Close(HttpClose::Done));
        }
        if up.progressed || down.progressed {
            None
        } else if up.starved || down.starved {
            Some(HttpStep::WaitBuffer)
        } else {
            Some(HttpStep::Idle)
        }
    }
}

/// The balancing hash of a request for a `hash` cluster: client IP, a header's value or a
/// cookie's value. `None` when the cluster does not hash or the request lacks the key.
fn request_hash<'a>(
    on: Option<&HashOn>,
    client_ip: IpAddr,
    header: &impl Fn(&[u8]) -> Option<&'a [u8]>,
) -> Option<u64> {
    match on? {
        HashOn::ClientIp => Some(crate::balance::hash_ip(client_ip)),
        HashOn::Header(name) => header(name.as_bytes()).map(crate::balance::hash_bytes),
        HashOn::Cookie(name) => {
            let cookies = header(b"cookie")?;
            cookies.split(|&b| b == b';').find_map(|kv| {
                let kv = kv.trim_ascii();
                let eq = kv.iter().position(|&b| b == b'=')?;
                (kv[..eq] == *name.as_bytes()).then(|| crate::balance::hash_bytes(&kv[eq + 1..]))
            })
        }
    }
}

fn hex16(v: u64, out: &mut [u8; 16]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}
