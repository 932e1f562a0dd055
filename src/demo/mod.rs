//! Built-in demo backend (`switchyard demo-backend`): a small, fast HTTP/1.1 or Foo line-protocol
//! server used by the quick start, the integration tests and the benchmarks (`perf/compare`),
//! where it stands behind every proxy under test and so must never be the bottleneck.
//!
//! # HTTP endpoints
//!
//! Every path accepts any method; `HEAD` gets the same status and headers with no body.
//!
//! | request | answer |
//! |---|---|
//! | `/` | 200 `text/plain`, body `<id>\n` (the benchmark path: prebuilt, no allocation) |
//! | `/health` | 200 `application/json` `{"status":"OK!"}` |
//! | `/api/v1/add?x=X&y=Y` | 200 `application/json` `{"Data":{"Result":X+Y,"ServiceID":"<id>"}}` |
//! | `/api/v1/multiply?x=X&y=Y` | the same with `X*Y` |
//! | `/echo` | 200 `application/json`, see below |
//! | `/bytes?n=N[&chunked=1]` | 200 `application/octet-stream`, `N` pattern bytes (see below) |
//! | anything else | 404 `text/plain` `not found\n` |
//!
//! FaaS dummy service API (compat.md §3): `X` and `Y` are `i64` in decimal (an optional sign is
//! accepted). A missing or non-integer `x` answers 400
//! `{"Data":{"Msg":"Field x is either not valid or not present","Code":7}}`; when `x` is fine but
//! `y` is not, the same with `Field y`. A sum or product that overflows `i64` answers 400
//! `{"Data":{"Msg":"Result overflows","Code":7}}`.
//!
//! `/echo` answers `{"method":M,"path":TARGET,"headers":[[NAME,VALUE],...],"body":BODY,
//! "body_len":LEN,"body_fnv64":"HASH"}`: `TARGET` is the request target as received (query
//! included), headers are in order with their names as sent, values and body decoded as UTF-8
//! lossily. `body` is present only when the body is at most 64 KiB; `body_len` and `body_fnv64`
//! (16 lowercase hex digits of FNV-1a 64 over the body bytes; empty body = `cbf29ce484222325`)
//! always are, so large uploads are checked without being echoed.
//!
//! `/bytes`: `n` is required, `0..=1073741824` (1 GiB). Byte `i` of the body is
//! `((i mod 251) * 31 + 7) mod 256` (a prime period, so a lost or repeated block of any
//! power-of-two size shows). The body is produced as the socket accepts it, never held whole; with
//! `chunked=1` it is sent with `Transfer-Encoding: chunked` in chunks of at most 64 KiB (not to
//! HTTP/1.0 clients, which get `Content-Length`). `chunked=0` or no `chunked` = `Content-Length`.
//!
//! Parameters valid on every path, including `/`, and combinable:
//! - `?status=NNN` (200..=599): answer with that status and the `/` body (`<id>\n`) instead of the
//!   path's usual answer; 204 and 304 get no body and no `Content-Length`, 205 `Content-Length: 0`.
//! - `?delay_ms=N` (0..=60000): the answer is sent N ms after the request (body included) has been
//!   received. The worker does not block: the connection waits on a per-worker timer heap and other
//!   connections are served meanwhile. Later pipelined requests on that connection are read and
//!   answered only after it, so answers stay in order.
//!
//! An out-of-range or malformed `status`, `delay_ms`, `n` or `chunked` answers 400 `text/plain`
//! with a one-line reason (the connection stays open). Query values are not percent-decoded; the
//! first occurrence of a parameter counts.
//!
//! Request bodies: `Content-Length` and `Transfer-Encoding: chunked` (final coding chunked; chunk
//! extensions and trailers accepted and ignored) on every path. Bodies are streamed: skipped, or for
//! `/echo` hashed with only the first 64 KiB kept. `Expect: 100-continue` on a request with a body
//! gets `100 Continue` at once. The answer is sent once the whole body has arrived. Keep-alive
//! (HTTP/1.1 default, HTTP/1.0 with `Connection: keep-alive`) and pipelining are supported; answers
//! are always in request order.
//!
//! Answered 400 and the connection closed: an unparsable head, a head over 64 KiB, more than 64
//! headers, a bad or conflicting `Content-Length` (a list of equal values counts as one),
//! `Transfer-Encoding` together with `Content-Length`, on HTTP/1.0, or whose final coding is not
//! `chunked`, and bad chunked framing. Framing headers and chunked bodies are read by the
//! proxy's own message layer (`http::head::Framing`, `http::chunked`): sizes of 1 to 16 hex
//! digits, extensions `;name[=token|"quoted"]` (up to 4 KiB a line) with the optional whitespace
//! RFC 9112 allows around `;` and `=`, CRLF line ends (a bare LF is refused), CRLF after the
//! chunk data, trailers that are valid header lines (up to 64 KiB).
//!
//! # Foo
//!
//! `REQ <n> [data]` → `ACK <n> [data]`; any other line → `NAK` + the line after its first token.
//!
//! # Shape
//!
//! One thread per worker, each with its own `mio::Poll`, its own `SO_REUSEPORT` listener (the
//! kernel spreads accepts over them), a `Slab` of connections held by value and a min-heap of
//! `delay_ms` deadlines that sets the poll timeout. Sockets are registered once for READABLE |
//! WRITABLE (edge-triggered). Every read is parsed at once and the answers appended to a
//! per-connection output buffer that is flushed right away; unsent bytes are kept until the socket
//! is writable again. A delayed answer is appended too, behind a hold mark that flushing does not
//! pass before its deadline; while an answer is held or a `/bytes` body is streaming, the
//! connection's further input is left unparsed (and unread), which keeps answers in order.
//!
//! Hot path rules: no locks, no logging above `debug`, no per-request allocation once a
//! connection's buffers have grown (the `/`, `/health` and 404 answers are prebuilt at start-up;
//! `GET /` costs one recv and one send), no `unsafe`, no panics on network input. Loops are bounded:
//! a connection gets at most `READS_PER_WAKEUP` reads and `FILLS_PER_WAKEUP` `/bytes` batches per
//! wakeup and is then revisited after the other ready connections, because edge-triggered
//! readiness would not be reported again.
//!
//! # Files
//!
//! `mod.rs`: options, start-up and the worker event loop (accept, read, write, timers,
//! lingering close); `http.rs`: request parsing and routing; `responses.rs`: the prebuilt and
//! generated answers; `foo.rs`: the Foo line protocol.

mod foo;
mod http;
mod responses;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use foo::process_foo;
use http::{process_http, HttpState};
use responses::{fill_stream, Responses};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoProtocol {
    Http,
    Foo,
}

impl DemoProtocol {
    fn name(self) -> &'static str {
        match self {
            DemoProtocol::Http => "http",
            DemoProtocol::Foo => "foo",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub protocol: DemoProtocol,
    pub id: String,
    /// Worker threads; 0 = one per available core.
    pub workers: usize,
}

/// Listener token; connections use their slab key, which never reaches this value.
const LISTENER: Token = Token(usize::MAX);
const BACKLOG: i32 = 1024;
const SCRATCH_SIZE: usize = 64 * 1024;
/// Stop reading a connection while this many answer bytes are waiting for the client.
const OUT_HIGH_WATER: usize = 256 * 1024;
/// A Foo line longer than this closes the connection.
const MAX_FOO_LINE: usize = 1024 * 1024;
const READS_PER_WAKEUP: usize = 32;
/// `/bytes` batches generated per wakeup before other connections get a turn.
const FILLS_PER_WAKEUP: usize = 16;
/// After answering "close", we half-close and discard input for at most this long / this much,
/// so that unread request bytes do not turn our FIN into an RST that destroys the answer.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 1024 * 1024;

/// Binds (all workers share the port via SO_REUSEPORT; port 0 resolved once then reused),
/// logs `listening name=demo-backend protocol=<http|foo> addr=<ip>:<port>` with log::info!, then serves forever.
pub fn run(opts: DemoOptions) -> io::Result<()> {
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.workers
    };
    // Bind every listener before announcing, so a bind error is returned to the caller and the
    // announced port is accepting on all workers.
    let first = bind_listener(opts.listen)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_listener(addr)?);
    }
    log::info!(
        "listening name=demo-backend protocol={} addr={}",
        opts.protocol.name(),
        addr
    );

    let responses = Arc::new(Responses::new(&opts.id));
    let mut handles = Vec::with_capacity(workers);
    for (i, listener) in listeners.into_iter().enumerate() {
        let responses = responses.clone();
        let protocol = opts.protocol;
        let handle = std::thread::Builder::new()
            .name(format!("demo-backend-{i}"))
            .spawn(move || Worker::new(listener, protocol, responses)?.run())?;
        handles.push(handle);
    }
    // Workers only return on a fatal poll error; report the first one.
    let mut result = Ok(());
    for handle in handles {
        let r = handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("demo-backend worker panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

struct Conn {
    stream: TcpStream,
    /// Unparsed input: a partial head or line, or input left unparsed while an answer was held
    /// or streaming (`inbuf_ready`); empty most of the time.
    inbuf: Vec<u8>,
    /// `inbuf` holds input that has not been parsed yet (rather than only a partial head).
    inbuf_ready: bool,
    out: Vec<u8>,
    out_pos: usize,
    http: HttpState,
    /// Distinguishes this connection from a later one reusing its slab key (timer entries).
    serial: u64,
    /// A timer entry exists for `http.hold_until`.
    timer_armed: bool,
    /// Readiness may still hold unread bytes (set by events, cleared by WouldBlock/short read).
    can_read: bool,
    /// The peer's FIN/HUP was reported: read to 0 rather than trusting short reads.
    hup_seen: bool,
    /// Peer sent EOF: flush what is left, then close.
    eof: bool,
    linger_until: Option<Instant>,
    discarded: usize,
}

enum Next {
    Keep,
    Close,
    /// Read budget exhausted with data possibly left: revisit after other ready connections.
    Again,
}

struct Worker {
    poll: Poll,
    listener: TcpListener,
    protocol: DemoProtocol,
    responses: Arc<Responses>,
    conns: Slab<Conn>,
    scratch: Vec<u8>,
    lingering: usize,
    /// `delay_ms` deadlines: (when, slab key, connection serial).
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_serial: u64,
}

impl Worker {
    fn new(
        mut listener: TcpListener,
        protocol: DemoProtocol,
        responses: Arc<Responses>,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            poll,
            listener,
            protocol,
            responses,
            conns: Slab::with_capacity(1024),
            scratch: vec![0; SCRATCH_SIZE],
            lingering: 0,
            timers: BinaryHeap::new(),
            next_serial: 0,
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut again: Vec<usize> = Vec::new();
        let mut again_next: Vec<usize> = Vec::new();
        let mut next_sweep = Instant::now() + Duration::from_secs(1);
        loop {
            let mut timeout = if !again.is_empty() {
                Some(Duration::ZERO)
            } else if self.lingering > 0 {
                Some(Duration::from_secs(1))
            } else {
                None
            };
            if let Some(Reverse((when, _, _))) = self.timers.peek() {
                // mio rounds a sub-millisecond timeout up, so this does not spin.
                let until = when.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(until, |t| t.min(until)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    Token(key) => {
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue; // stale event for a closed connection
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.can_read = true;
                        }
                        if event.is_read_closed() || event.is_error() {
                            conn.hup_seen = true;
                        }
                        self.drive_and_settle(key, &mut again_next);
                    }
                }
            }
            for key in again.drain(..) {
                if self.conns.contains(key) {
                    self.drive_and_settle(key, &mut again_next);
                }
            }
            if !self.timers.is_empty() {
                self.fire_timers(&mut again_next);
            }
            std::mem::swap(&mut again, &mut again_next);
            again.sort_unstable();
            again.dedup();
            if self.lingering > 0 {
                let now = Instant::now();
                if now >= next_sweep {
                    next_sweep = now + Duration::from_secs(1);
                    self.sweep_lingering(now);
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if key == LISTENER.0 {
                        return; // unreachable in practice; never alias the listener token
                    }
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::debug!("demo-backend: register failed: {e}");
                        continue;
                    }
                    self.next_serial += 1;
                    entry.insert(Conn {
                        stream,
                        inbuf: Vec::new(),
                        inbuf_ready: false,
                        out: Vec::new(),
                        out_pos: 0,
                        http: HttpState::default(),
                        serial: self.next_serial,
                        timer_armed: false,
                        can_read: false,
                        hup_seen: false,
                        eof: false,
                        linger_until: None,
                        discarded: 0,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends: give up this round; the next connection re-arms us.
                    log::warn!("demo-backend: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn drive_and_settle(&mut self, key: usize, again: &mut Vec<usize>) {
        let was_lingering = self.conns[key].linger_until.is_some();
        let next = drive(
            &mut self.conns[key],
            &mut self.scratch,
            self.protocol,
            &self.responses,
        );
        let conn = &mut self.conns[key];
        match next {
            Next::Close => {
                if was_lingering {
                    self.lingering -= 1;
                }
                self.conns.remove(key);
            }
            Next::Keep | Next::Again => {
                if !was_lingering && conn.linger_until.is_some() {
                    self.lingering += 1;
                }
                if let Some(when) = conn.http.hold_until {
                    if !conn.timer_armed {
                        conn.timer_armed = true;
                        self.timers.push(Reverse((when, key, conn.serial)));
                    }
                }
                if matches!(next, Next::Again) {
                    again.push(key);
                }
            }
        }
    }

    /// Releases every held answer whose deadline has passed and lets its connection go on.
    fn fire_timers(&mut self, again: &mut Vec<usize>) {
        let now = Instant::now();
        while let Some(&Reverse((when, key, serial))) = self.timers.peek() {
            if when > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.serial != serial || !conn.timer_armed {
                continue; // the connection it was for has gone
            }
            conn.timer_armed = false;
            conn.http.hold_until = None;
            self.drive_and_settle(key, again);
        }
    }

    fn sweep_lingering(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.linger_until.is_some_and(|t| t <= now))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            self.conns.remove(key);
            self.lingering -= 1;
        }
    }
}

/// Moves one connection as far as it can go without blocking: flush, read, parse, answer, flush.
fn drive(
    conn: &mut Conn,
    scratch: &mut [u8],
    protocol: DemoProtocol,
    responses: &Responses,
) -> Next {
    let mut reads = 0;
    let mut fills = 0;
    loop {
        // 1. Flush pending answers, up to a held (delayed) one.
        let held = conn.http.hold_until.is_some();
        let limit = if held {
            conn.http.hold_at
        } else {
            conn.out.len()
        };
        while conn.out_pos < limit {
            match conn.stream.write(&conn.out[conn.out_pos..limit]) {
                Ok(0) => return Next::Close,
                Ok(n) => conn.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
        }
        if conn.out_pos == conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
        } else if held && conn.out_pos > 0 && conn.out_pos == limit {
            // Everything before the held answer is out: move the held bytes to the front.
            conn.out.drain(..conn.out_pos);
            conn.http.hold_at = 0;
            conn.out_pos = 0;
        }
        let pending = conn.out.len() - conn.out_pos;

        if held || conn.http.stream.is_some() {
            // 2. A streamed `/bytes` body: generate the next batch once the previous one is sent.
            if !held && pending == 0 {
                if let Some(stream) = conn.http.stream.as_mut() {
                    if fills == FILLS_PER_WAKEUP {
                        return Next::Again;
                    }
                    fills += 1;
                    if fill_stream(stream, &mut conn.out, &responses.pattern) {
                        conn.http.stream = None;
                    }
                    continue;
                }
            }
            // Nothing more until the timer or a writable event brings us back; input waits.
            return Next::Keep;
        }
        if conn.http.closing {
            if pending > 0 {
                return Next::Keep;
            }
            return linger(conn, scratch);
        }
        if conn.inbuf_ready {
            // Input that arrived behind a held or streamed answer: parse it now.
            let mut inbuf = std::mem::take(&mut conn.inbuf);
            let used = process(protocol, &inbuf, &mut conn.http, &mut conn.out, responses);
            inbuf.drain(..used);
            conn.inbuf = inbuf;
            after_process(conn);
            continue;
        }
        if conn.eof {
            // Client is done sending; close once everything it asked for is delivered.
            return if pending > 0 { Next::Keep } else { Next::Close };
        }
        if pending >= OUT_HIGH_WATER || !conn.can_read {
            return Next::Keep; // a writable/readable event will bring us back
        }
        if reads == READS_PER_WAKEUP {
            return Next::Again;
        }

        // 3. Read one chunk and answer everything complete in it.
        reads += 1;
        let n = match conn.stream.read(scratch) {
            Ok(0) => {
                conn.eof = true;
                conn.inbuf.clear();
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                conn.can_read = false;
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        };
        // A short read drained the socket: epoll reports any later arrival as a new edge, so the
        // extra read that would only return WouldBlock is skipped (as tokio does). Not when the
        // peer's FIN was already reported, since that needs a read returning 0 to be seen.
        if n < scratch.len() && !conn.hup_seen {
            conn.can_read = false;
        }
        let data = &scratch[..n];
        if conn.inbuf.is_empty() {
            let used = process(protocol, data, &mut conn.http, &mut conn.out, responses);
            if !conn.http.closing && used < n {
                conn.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut inbuf = std::mem::take(&mut conn.inbuf);
            inbuf.extend_from_slice(data);
            let used = process(protocol, &inbuf, &mut conn.http, &mut conn.out, responses);
            inbuf.drain(..used);
            conn.inbuf = inbuf;
        }
        after_process(conn);
        if conn.inbuf.len() > MAX_FOO_LINE {
            // Only Foo gets here (HTTP answers 400 itself): a line with no end in sight.
            return Next::Close;
        }
    }
}

/// Classifies what `process` left in `inbuf`: input parked behind a held or streamed answer, or
/// a partial head / line waiting for more bytes.
fn after_process(conn: &mut Conn) {
    if conn.http.closing {
        conn.inbuf.clear();
    }
    conn.inbuf_ready = !conn.inbuf.is_empty() && conn.http.blocked();
}

/// After a "close" answer has been flushed: half-close and discard input until the client's EOF.
fn linger(conn: &mut Conn, scratch: &mut [u8]) -> Next {
    if conn.linger_until.is_none() {
        if conn.stream.shutdown(Shutdown::Write).is_err() {
            return Next::Close;
        }
        conn.linger_until = Some(Instant::now() + LINGER_TIME);
    }
    for _ in 0..READS_PER_WAKEUP {
        match conn.stream.read(scratch) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                conn.discarded += n;
                if conn.discarded > LINGER_BYTES {
                    return Next::Close;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        }
    }
    Next::Again
}

fn process(
    protocol: DemoProtocol,
    input: &[u8],
    http: &mut HttpState,
    out: &mut Vec<u8>,
    responses: &Responses,
) -> usize {
    match protocol {
        DemoProtocol::Http => process_http(input, http, responses, out),
        DemoProtocol::Foo => process_foo(input, out),
    }
}
