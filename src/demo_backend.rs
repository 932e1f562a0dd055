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
//! headers, a bad or conflicting `Content-Length`, `Transfer-Encoding` together with
//! `Content-Length`, on HTTP/1.0, or whose final coding is not `chunked`, and bad chunked framing
//! (a size that is not 1 to 16 hex digits, bytes after the size other than `;extension` or
//! whitespace before it, a missing CRLF after the size line or the chunk data, a bare LF, an
//! extension over 4 KiB or trailers over 64 KiB).
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
/// An HTTP request head longer than this is answered 400.
const MAX_PENDING_INPUT: usize = 64 * 1024;
/// A Foo line longer than this closes the connection.
const MAX_FOO_LINE: usize = 1024 * 1024;
const MAX_HEADERS: usize = 64;
const READS_PER_WAKEUP: usize = 32;
/// `/bytes` batches generated per wakeup before other connections get a turn.
const FILLS_PER_WAKEUP: usize = 16;
/// After answering "close", we half-close and discard input for at most this long / this much,
/// so that unread request bytes do not turn our FIN into an RST that destroys the answer.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 1024 * 1024;

/// `/echo` includes the body itself only up to this size.
const ECHO_BODY_MAX: usize = 64 * 1024;
/// Largest `/bytes?n=`.
const MAX_BYTES_N: u64 = 1 << 30;
const MAX_DELAY_MS: u32 = 60_000;
/// Largest chunk of a chunked `/bytes` body (and largest piece copied from the pattern table).
const STREAM_CHUNK: usize = 64 * 1024;
/// `/bytes` body bytes generated at a time, once the previous batch has been sent.
const STREAM_BATCH: usize = 256 * 1024;
/// Period of the `/bytes` pattern (prime).
const PATTERN_PERIOD: usize = 251;
/// Chunked request bodies: longest chunk extension and total trailer bytes accepted.
const MAX_CHUNK_EXT: u16 = 4096;
const MAX_TRAILER_BYTES: u32 = 64 * 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const TEXT: &str = "text/plain";
const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";
const HEALTH_BODY: &[u8] = br#"{"status":"OK!"}"#;
const BAD_X_BODY: &[u8] =
    br#"{"Data":{"Msg":"Field x is either not valid or not present","Code":7}}"#;
const BAD_Y_BODY: &[u8] =
    br#"{"Data":{"Msg":"Field y is either not valid or not present","Code":7}}"#;
const OVERFLOW_BODY: &[u8] = br#"{"Data":{"Msg":"Result overflows","Code":7}}"#;
const BAD_STATUS: &str = "invalid status (200..=599)";
const BAD_DELAY: &str = "invalid delay_ms (0..=60000)";
const BAD_N: &str = "invalid n (0..=1073741824)";
const BAD_CHUNKED: &str = "invalid chunked (0 or 1)";

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

// ---------------------------------------------------------------------------------------------
// Pure protocol helpers (unit tested below).

/// Start-up data shared by the workers: prebuilt answers, the id, the `/bytes` pattern.
struct Responses {
    /// [answer][conn][head]: answer ROOT / NOT_FOUND / HEALTH; conn CONN_*; head 0 = GET, 1 = HEAD.
    table: [[[Vec<u8>; 2]; 3]; 3],
    bad_request: Vec<u8>,
    /// `<id>\n`: the `/` and `?status=` body.
    id_line: Vec<u8>,
    /// The id as a JSON string literal.
    id_json: Vec<u8>,
    /// `pattern[j] = pattern_byte(j)` for `j < PATTERN_PERIOD + STREAM_CHUNK`, so the bytes at any
    /// body offset `p` are `pattern[p % PATTERN_PERIOD..]`.
    pattern: Vec<u8>,
}

const ROOT: usize = 0;
const NOT_FOUND: usize = 1;
const HEALTH: usize = 2;

const CONN_NONE: usize = 0;
const CONN_CLOSE: usize = 1;
const CONN_KEEP_ALIVE: usize = 2;

impl Responses {
    fn new(id: &str) -> Responses {
        let id_line = format!("{id}\n").into_bytes();
        let mut id_json = Vec::new();
        push_json_str(&mut id_json, id);
        let build = |status: u16, ctype: &str, body: &[u8], conn: usize, head: bool| {
            let mut r = Vec::new();
            write_body_answer(&mut r, status, ctype, body, conn, head);
            r
        };
        let variants = |status: u16, ctype: &str, body: &[u8]| {
            [CONN_NONE, CONN_CLOSE, CONN_KEEP_ALIVE].map(|c| {
                [
                    build(status, ctype, body, c, false),
                    build(status, ctype, body, c, true),
                ]
            })
        };
        Responses {
            table: [
                variants(200, TEXT, &id_line),
                variants(404, TEXT, b"not found\n"),
                variants(200, JSON, HEALTH_BODY),
            ],
            bad_request: build(400, TEXT, b"bad request\n", CONN_CLOSE, false),
            pattern: (0..(PATTERN_PERIOD + STREAM_CHUNK) as u64)
                .map(pattern_byte)
                .collect(),
            id_line,
            id_json,
        }
    }
}

/// Byte `i` of every `/bytes` body.
fn pattern_byte(i: u64) -> u8 {
    ((i % PATTERN_PERIOD as u64) * 31 + 7) as u8
}

/// Per-connection HTTP state carried between reads.
#[derive(Debug, Default)]
struct HttpState {
    /// Framing of the request body being read (`Body::None` between requests).
    body: Body,
    /// The request being read; answered when its body ends.
    req: Req,
    sink: BodySink,
    /// A "close" answer was queued: ignore all further input.
    closing: bool,
    /// A `?delay_ms=` answer: `out[hold_at..]` must not be sent before this instant.
    hold_until: Option<Instant>,
    hold_at: usize,
    /// A `/bytes` body still to be generated.
    stream: Option<Stream>,
    /// Builds dynamic answer bodies (JSON); for `/echo`, holds the part built from the head.
    body_buf: Vec<u8>,
}

impl HttpState {
    /// Answers after the current one must wait: parsing stops.
    fn blocked(&self) -> bool {
        self.hold_until.is_some() || self.stream.is_some()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Body {
    #[default]
    None,
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkDecoder),
}

/// Where request body bytes go: nowhere, or for `/echo` into a hash, a length and a 64 KiB copy.
#[derive(Debug)]
struct BodySink {
    echo: bool,
    len: u64,
    fnv: u64,
    kept: Vec<u8>,
}

impl Default for BodySink {
    fn default() -> Self {
        BodySink {
            echo: false,
            len: 0,
            fnv: FNV_OFFSET,
            kept: Vec::new(),
        }
    }
}

impl BodySink {
    fn start_echo(&mut self) {
        self.echo = true;
        self.len = 0;
        self.fnv = FNV_OFFSET;
        self.kept.clear();
    }

    fn absorb(&mut self, data: &[u8]) {
        if !self.echo {
            return;
        }
        self.len += data.len() as u64;
        self.fnv = fnv1a(self.fnv, data);
        if self.len <= ECHO_BODY_MAX as u64 {
            self.kept.extend_from_slice(data);
        }
    }
}

fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// What to answer, decided from the request head.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Root,
    NotFound,
    Health,
    Api(ApiResult),
    Echo,
    Bytes {
        n: u64,
        chunked: bool,
    },
    /// 400 text/plain with this reason.
    BadParam(&'static str),
    /// The load scenario's small shop (perf/locustfile.py).
    Shop(Shop),
}

/// `/shop/login` (a token), `/shop/items` (creates an item: its id), `/shop/items/<id>`
/// (the item). Stateless apart from an id counter: enough for a login → create → act
/// load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shop {
    Login,
    Create,
    Item(u64),
}

/// Ids handed out by `/shop/items` (process-wide).
static SHOP_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiResult {
    Value(i64),
    BadX,
    BadY,
    Overflow,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Req {
    kind: Kind,
    /// `?status=`; 0 = the path's usual answer.
    status: u16,
    delay_ms: u32,
    head: bool,
    /// CONN_* variant of the answer's Connection header.
    conn: usize,
    keep_alive: bool,
    http10: bool,
}

/// A `/bytes` body being generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// Body offset of the next byte.
    pos: u64,
    left: u64,
    chunked: bool,
}

/// What the request head says about the connection and the body.
#[derive(Debug, PartialEq, Eq)]
struct HeadInfo {
    keep_alive: bool,
    content_length: u64,
    chunked: bool,
    expect_continue: bool,
}

/// Reads the framing headers; `None` = unacceptable request (answer 400 and close).
fn head_info(version: u8, headers: &[httparse::Header<'_>]) -> Option<HeadInfo> {
    let mut close = false;
    let mut keep_alive_token = false;
    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
    let mut te_seen = false;
    let mut te_chunked_last = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value)?;
            if content_length.is_some_and(|old| old != v) {
                return None;
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty() {
                    continue;
                }
                if te_chunked_last {
                    return None; // chunked must be the final coding, applied once
                }
                te_chunked_last = token.eq_ignore_ascii_case(b"chunked");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if te_seen && (!te_chunked_last || content_length.is_some() || version == 0) {
        return None;
    }
    let keep_alive = match version {
        1 => !close,
        _ => keep_alive_token && !close,
    };
    Some(HeadInfo {
        keep_alive,
        content_length: content_length.unwrap_or(0),
        chunked: te_seen,
        expect_continue,
    })
}

/// Strict 1*DIGIT, at most 19 digits (fits u64).
fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The first value of `key` in a query string (`a=1&b=2`); a key without `=` has value "".
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// Routes a request target: (answer kind, `?status=` or 0, `?delay_ms=`).
fn classify(target: &str) -> (Kind, u16, u32) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut status = 0;
    let mut delay_ms = 0;
    if !query.is_empty() {
        if let Some(v) = param(query, "status") {
            match v.parse::<u16>() {
                Ok(s) if (200..=599).contains(&s) => status = s,
                _ => return (Kind::BadParam(BAD_STATUS), 0, 0),
            }
        }
        if let Some(v) = param(query, "delay_ms") {
            match v.parse::<u32>() {
                Ok(d) if d <= MAX_DELAY_MS => delay_ms = d,
                _ => return (Kind::BadParam(BAD_DELAY), 0, 0),
            }
        }
    }
    let kind = match path {
        "/" => Kind::Root,
        "/health" => Kind::Health,
        "/api/v1/add" => Kind::Api(api(query, i64::checked_add)),
        "/api/v1/multiply" => Kind::Api(api(query, i64::checked_mul)),
        "/echo" => Kind::Echo,
        "/bytes" => bytes_kind(query),
        "/shop/login" => Kind::Shop(Shop::Login),
        "/shop/items" => Kind::Shop(Shop::Create),
        p => match p.strip_prefix("/shop/items/").map(str::parse::<u64>) {
            Some(Ok(id)) => Kind::Shop(Shop::Item(id)),
            _ => Kind::NotFound,
        },
    };
    (kind, status, delay_ms)
}

fn api(query: &str, op: fn(i64, i64) -> Option<i64>) -> ApiResult {
    let int = |key| param(query, key).and_then(|v| v.parse::<i64>().ok());
    let Some(x) = int("x") else {
        return ApiResult::BadX;
    };
    let Some(y) = int("y") else {
        return ApiResult::BadY;
    };
    op(x, y).map_or(ApiResult::Overflow, ApiResult::Value)
}

fn bytes_kind(query: &str) -> Kind {
    let n = match param(query, "n").map(str::parse::<u64>) {
        Some(Ok(n)) if n <= MAX_BYTES_N => n,
        _ => return Kind::BadParam(BAD_N),
    };
    let chunked = match param(query, "chunked") {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Kind::BadParam(BAD_CHUNKED),
    };
    Kind::Bytes { n, chunked }
}

/// Answers every complete request in `input` (appending to `out`); returns the bytes consumed.
/// Stops early, leaving the rest unconsumed, when an answer is held or streaming (`st.blocked()`)
/// or the connection is closing; otherwise unconsumed bytes are a partial head the caller keeps
/// for the next read.
fn process_http(
    input: &[u8],
    st: &mut HttpState,
    responses: &Responses,
    out: &mut Vec<u8>,
) -> usize {
    let mut pos = 0;
    while pos < input.len() && !st.closing && !st.blocked() {
        match st.body {
            Body::None => {}
            Body::Length(left) => {
                let take = left.min((input.len() - pos) as u64);
                let end = pos + take as usize; // take <= input.len() - pos, so it fits
                st.sink.absorb(&input[pos..end]);
                pos = end;
                if take == left {
                    st.body = Body::None;
                    finish(st, responses, out);
                } else {
                    st.body = Body::Length(left - take);
                }
                continue;
            }
            Body::Chunked(mut dec) => {
                let sink = &mut st.sink;
                let (used, result) = dec.feed(&input[pos..], |data| sink.absorb(data));
                pos += used;
                match result {
                    Feed::More => st.body = Body::Chunked(dec),
                    Feed::Done => {
                        st.body = Body::None;
                        finish(st, responses, out);
                    }
                    Feed::Bad => {
                        st.body = Body::None;
                        out.extend_from_slice(&responses.bad_request);
                        st.closing = true;
                    }
                }
                continue;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&input[pos..]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let version = req.version.unwrap_or(1);
                let Some(info) = head_info(version, req.headers) else {
                    out.extend_from_slice(&responses.bad_request);
                    st.closing = true;
                    break;
                };
                let target = req.path.unwrap_or("");
                let head = req.method == Some("HEAD");
                let conn = if !info.keep_alive {
                    CONN_CLOSE
                } else if version == 0 {
                    CONN_KEEP_ALIVE
                } else {
                    CONN_NONE
                };
                if target == "/" && !info.chunked && info.content_length == 0 {
                    // The benchmark path: a prebuilt answer and nothing to remember.
                    out.extend_from_slice(&responses.table[ROOT][conn][usize::from(head)]);
                    pos += head_len;
                    if !info.keep_alive {
                        st.closing = true;
                    }
                    continue;
                }
                let (kind, status, delay_ms) = classify(target);
                st.req = Req {
                    kind,
                    status,
                    delay_ms,
                    head,
                    conn,
                    keep_alive: info.keep_alive,
                    http10: version == 0,
                };
                st.sink.echo = false;
                if kind == Kind::Echo && status == 0 {
                    st.sink.start_echo();
                    echo_head(
                        &mut st.body_buf,
                        req.method.unwrap_or(""),
                        target,
                        req.headers,
                    );
                }
                if info.expect_continue && (info.content_length > 0 || info.chunked) {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                pos += head_len;
                if info.chunked {
                    st.body = Body::Chunked(ChunkDecoder::default());
                } else if info.content_length > 0 {
                    st.body = Body::Length(info.content_length);
                } else {
                    finish(st, responses, out);
                }
            }
            Ok(httparse::Status::Partial) => {
                if input.len() - pos > MAX_PENDING_INPUT {
                    out.extend_from_slice(&responses.bad_request);
                    st.closing = true;
                }
                break;
            }
            Err(_) => {
                out.extend_from_slice(&responses.bad_request);
                st.closing = true;
                break;
            }
        }
    }
    pos
}

/// The request in `st.req` has been received whole: queue its answer (held if delayed).
fn finish(st: &mut HttpState, r: &Responses, out: &mut Vec<u8>) {
    let req = st.req;
    if req.delay_ms > 0 {
        st.hold_at = out.len();
        st.hold_until = Some(Instant::now() + Duration::from_millis(u64::from(req.delay_ms)));
    }
    if !req.keep_alive {
        st.closing = true;
    }
    let head = req.head;
    if req.status != 0 {
        match req.status {
            204 | 304 => write_head(out, req.status, None, Len::None, req.conn),
            205 => write_head(out, req.status, None, Len::Length(0), req.conn),
            s => write_body_answer(out, s, TEXT, &r.id_line, req.conn, head),
        }
        return;
    }
    let prebuilt = |which: usize| &r.table[which][req.conn][usize::from(head)];
    match req.kind {
        Kind::Root => out.extend_from_slice(prebuilt(ROOT)),
        Kind::NotFound => out.extend_from_slice(prebuilt(NOT_FOUND)),
        Kind::Health => out.extend_from_slice(prebuilt(HEALTH)),
        Kind::Api(ApiResult::Value(v)) => {
            let b = &mut st.body_buf;
            b.clear();
            b.extend_from_slice(br#"{"Data":{"Result":"#);
            push_i64(b, v);
            b.extend_from_slice(br#","ServiceID":"#);
            b.extend_from_slice(&r.id_json);
            b.extend_from_slice(b"}}");
            write_body_answer(out, 200, JSON, b, req.conn, head);
        }
        Kind::Shop(op) => {
            let b = &mut st.body_buf;
            b.clear();
            let status = match op {
                Shop::Login => {
                    b.extend_from_slice(br#"{"token":"t"#);
                    push_u64(b, SHOP_IDS.load(std::sync::atomic::Ordering::Relaxed));
                    b.extend_from_slice(b"\"}");
                    200
                }
                Shop::Create => {
                    b.extend_from_slice(br#"{"id":"#);
                    push_u64(
                        b,
                        SHOP_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    );
                    b.extend_from_slice(b"}");
                    201
                }
                Shop::Item(id) => {
                    b.extend_from_slice(br#"{"id":"#);
                    push_u64(b, id);
                    b.extend_from_slice(br#","name":"item","server":"#);
                    b.extend_from_slice(&r.id_json);
                    b.extend_from_slice(b"}");
                    200
                }
            };
            write_body_answer(out, status, JSON, b, req.conn, head);
        }
        Kind::Api(bad) => {
            let body = match bad {
                ApiResult::BadX => BAD_X_BODY,
                ApiResult::BadY => BAD_Y_BODY,
                _ => OVERFLOW_BODY,
            };
            write_body_answer(out, 400, JSON, body, req.conn, head);
        }
        Kind::Echo => {
            let b = &mut st.body_buf;
            let sink = &mut st.sink;
            if sink.len <= ECHO_BODY_MAX as u64 {
                b.extend_from_slice(br#","body":"#);
                push_json_str(b, &String::from_utf8_lossy(&sink.kept));
            }
            b.extend_from_slice(br#","body_len":"#);
            push_u64(b, sink.len);
            b.extend_from_slice(br#","body_fnv64":""#);
            push_hex(b, sink.fnv, 16);
            b.extend_from_slice(b"\"}");
            write_body_answer(out, 200, JSON, b, req.conn, head);
            sink.echo = false;
            // Do not let one large echo pin big buffers to an idle connection.
            b.clear();
            b.shrink_to(16 * 1024);
            sink.kept.clear();
            sink.kept.shrink_to(16 * 1024);
        }
        Kind::Bytes { n, chunked } => {
            let chunked = chunked && !req.http10; // HTTP/1.0 does not know chunked
            let len = if chunked {
                Len::Chunked
            } else {
                Len::Length(n)
            };
            write_head(out, 200, Some(OCTETS), len, req.conn);
            if !head && (chunked || n > 0) {
                st.stream = Some(Stream {
                    pos: 0,
                    left: n,
                    chunked,
                });
            }
        }
        Kind::BadParam(reason) => {
            let b = &mut st.body_buf;
            b.clear();
            b.extend_from_slice(reason.as_bytes());
            b.push(b'\n');
            write_body_answer(out, 400, TEXT, b, req.conn, head);
        }
    }
}

/// Starts the `/echo` JSON with the parts known from the head.
fn echo_head(b: &mut Vec<u8>, method: &str, target: &str, headers: &[httparse::Header<'_>]) {
    b.clear();
    b.extend_from_slice(br#"{"method":"#);
    push_json_str(b, method);
    b.extend_from_slice(br#","path":"#);
    push_json_str(b, target);
    b.extend_from_slice(br#","headers":["#);
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.push(b'[');
        push_json_str(b, h.name);
        b.push(b',');
        push_json_str(b, &String::from_utf8_lossy(h.value));
        b.push(b']');
    }
    b.push(b']');
}

/// Appends up to `STREAM_BATCH` body bytes (as chunks of at most `STREAM_CHUNK` when chunked, then
/// the last chunk); true once the whole body has been appended.
fn fill_stream(s: &mut Stream, out: &mut Vec<u8>, pattern: &[u8]) -> bool {
    let mut budget = STREAM_BATCH;
    while s.left > 0 && budget > 0 {
        let len = s.left.min(STREAM_CHUNK.min(budget) as u64) as usize;
        if s.chunked {
            push_hex(out, len as u64, 1);
            out.extend_from_slice(b"\r\n");
        }
        let off = (s.pos % PATTERN_PERIOD as u64) as usize;
        out.extend_from_slice(&pattern[off..off + len]);
        if s.chunked {
            out.extend_from_slice(b"\r\n");
        }
        s.pos += len as u64;
        s.left -= len as u64;
        budget -= len;
    }
    if s.left > 0 {
        return false;
    }
    if s.chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    true
}

/// How an answer's body is framed.
#[derive(Debug, Clone, Copy)]
enum Len {
    Length(u64),
    Chunked,
    /// No body and no framing header (204, 304).
    None,
}

fn write_head(out: &mut Vec<u8>, status: u16, ctype: Option<&str>, len: Len, conn: usize) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(crate::http::rewrite::reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(ctype) = ctype {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ctype.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match len {
        Len::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Len::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Len::None => {}
    }
    out.extend_from_slice(match conn {
        CONN_CLOSE => b"Connection: close\r\n",
        CONN_KEEP_ALIVE => b"Connection: keep-alive\r\n",
        _ => b"",
    });
    out.extend_from_slice(b"\r\n");
}

fn write_body_answer(
    out: &mut Vec<u8>,
    status: u16,
    ctype: &str,
    body: &[u8],
    conn: usize,
    head: bool,
) {
    write_head(
        out,
        status,
        Some(ctype),
        Len::Length(body.len() as u64),
        conn,
    );
    if !head {
        out.extend_from_slice(body);
    }
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Lowercase hex, zero-padded to at least `min_digits` (1..=16).
fn push_hex(out: &mut Vec<u8>, v: u64, min_digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = v;
    while v != 0 || buf.len() - i < min_digits {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
    out.extend_from_slice(&buf[i..]);
}

/// `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                push_hex(out, u64::from(b), 2);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Incremental decoder of a chunked request body (RFC 9112 §7.1), byte-exact and strict.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ChunkDecoder {
    state: ChunkState,
    /// Size of the current chunk, then its bytes still to come.
    size: u64,
    trailer_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex chunk size.
    Size {
        digits: u8,
    },
    /// After the size: whitespace then `;` (`semicolon` false), or the extension text.
    Ext {
        semicolon: bool,
        len: u16,
    },
    /// CR of the size line seen.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Trailer section; `in_line`: the current line is not empty.
    Trailer {
        in_line: bool,
    },
    TrailerLf {
        empty_line: bool,
    },
}

impl Default for ChunkState {
    fn default() -> Self {
        ChunkState::Size { digits: 0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// All input consumed; the body continues.
    More,
    /// The body (with its trailers) ended; bytes after it were not consumed.
    Done,
    /// Bad framing.
    Bad,
}

impl ChunkDecoder {
    /// Consumes body framing from `input`, passing chunk data to `sink`; returns the bytes used.
    fn feed(&mut self, input: &[u8], mut sink: impl FnMut(&[u8])) -> (usize, Feed) {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            if self.state == Data {
                let take = self.size.min((input.len() - i) as u64);
                let end = i + take as usize;
                sink(&input[i..end]);
                i = end;
                self.size -= take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size { digits }, _) if b.is_ascii_hexdigit() => {
                    if digits == 16 {
                        return (i, Feed::Bad);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = (self.size << 4) | u64::from(d);
                    Size { digits: digits + 1 }
                }
                (Size { digits: 0 }, _) => return (i, Feed::Bad),
                (Size { .. }, b';') => Ext {
                    semicolon: true,
                    len: 0,
                },
                (Size { .. }, b' ' | b'\t') => Ext {
                    semicolon: false,
                    len: 0,
                },
                (Size { .. }, b'\r') => SizeLf,
                (
                    Ext {
                        semicolon: false,
                        len,
                    },
                    b' ' | b'\t',
                ) => Ext {
                    semicolon: false,
                    len,
                },
                (
                    Ext {
                        semicolon: false,
                        len,
                    },
                    b';',
                ) => Ext {
                    semicolon: true,
                    len,
                },
                (
                    Ext {
                        semicolon: true, ..
                    },
                    b'\r',
                ) => SizeLf,
                (
                    Ext {
                        semicolon: true,
                        len,
                    },
                    _,
                ) if b != b'\n' && len < MAX_CHUNK_EXT => Ext {
                    semicolon: true,
                    len: len + 1,
                },
                (SizeLf, b'\n') if self.size == 0 => Trailer { in_line: false },
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size { digits: 0 },
                (Trailer { in_line }, b'\r') => TrailerLf {
                    empty_line: !in_line,
                },
                (Trailer { .. }, _) if b != b'\n' && self.trailer_bytes < MAX_TRAILER_BYTES => {
                    self.trailer_bytes += 1;
                    Trailer { in_line: true }
                }
                (TrailerLf { empty_line: true }, b'\n') => {
                    *self = ChunkDecoder::default();
                    return (i, Feed::Done);
                }
                (TrailerLf { empty_line: false }, b'\n') => Trailer { in_line: false },
                _ => return (i, Feed::Bad),
            };
        }
        (i, Feed::More)
    }
}

/// Answers every complete line in `input` (appending to `out`); returns the bytes consumed.
fn process_foo(input: &[u8], out: &mut Vec<u8>) -> usize {
    let mut pos = 0;
    while let Some(nl) = input[pos..].iter().position(|&b| b == b'\n') {
        foo_answer(&input[pos..pos + nl], out);
        pos += nl + 1;
    }
    pos
}

/// `REQ <decimal seq>[ data]` → `ACK` + rest; anything else → `NAK` + the line after its type token.
fn foo_answer(line: &[u8], out: &mut Vec<u8>) {
    let type_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (kind, rest) = line.split_at(type_end);
    let valid_req = kind == b"REQ" && {
        let seq = rest.get(1..).unwrap_or(&[]);
        let seq = &seq[..seq.iter().position(|&b| b == b' ').unwrap_or(seq.len())];
        !seq.is_empty() && seq.iter().all(u8::is_ascii_digit)
    };
    out.extend_from_slice(if valid_req { b"ACK" } else { b"NAK" });
    out.extend_from_slice(rest);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_with(st: &mut HttpState, input: &[u8]) -> (usize, String) {
        let r = Responses::new("b1");
        let mut out = Vec::new();
        let used = process_http(input, st, &r, &mut out);
        (used, String::from_utf8_lossy(&out).into_owned())
    }

    fn http(input: &[u8]) -> (usize, HttpState, String) {
        let mut st = HttpState::default();
        let (used, out) = http_with(&mut st, input);
        (used, st, out)
    }

    /// The body of the single answer in `out`.
    fn body_of(out: &str) -> &str {
        &out[out.find("\r\n\r\n").unwrap() + 4..]
    }

    #[test]
    fn http_get_root_keep_alive() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (used, st, out) = http(req);
        assert_eq!(used, req.len());
        assert!(!st.closing);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nb1\n"
        );
    }

    #[test]
    fn http_pipelined_in_order_and_partial_kept() {
        let req = b"GET /nope HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHo";
        let (used, st, out) = http(req);
        assert_eq!(used, req.len() - b"GET / HTTP/1.1\r\nHo".len());
        assert!(!st.closing);
        let first = out.find("404 Not Found").unwrap();
        let second = out.find("200 OK").unwrap();
        assert!(first < second);
        assert!(
            out.ends_with("Content-Length: 3\r\n\r\n"),
            "HEAD has no body: {out:?}"
        );
    }

    #[test]
    fn http_close_rules() {
        let (_, st, out) =
            http(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert!(st.closing);
        assert_eq!(out.matches("200 OK").count(), 1);
        assert!(out.contains("Connection: close\r\n"));

        let (_, st, out) = http(b"GET / HTTP/1.0\r\n\r\n");
        assert!(st.closing);
        assert!(out.contains("Connection: close\r\n"));

        let (_, st, out) = http(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(!st.closing);
        assert!(out.contains("Connection: keep-alive\r\n"));
    }

    #[test]
    fn http_body_answered_when_complete_across_reads() {
        let mut st = HttpState::default();
        let part1 = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
        let (used, out) = http_with(&mut st, part1);
        assert_eq!(used, part1.len());
        assert_eq!(st.body, Body::Length(5));
        assert_eq!(out, "", "answered only once the body is in");
        let part2 = b"67890GET /x HTTP/1.1\r\n\r\n";
        let (used, out) = http_with(&mut st, part2);
        assert_eq!(used, part2.len());
        assert_eq!(out.matches("HTTP/1.1 ").count(), 2);
        assert!(out.find("200 OK").unwrap() < out.find("404 Not Found").unwrap());
    }

    #[test]
    fn http_chunked_body_split_anywhere() {
        let req = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;name=val\r\nhello\r\n1 ; x\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: t\r\n\r\n\
                    GET /health HTTP/1.1\r\n\r\n";
        let (_, _, whole) = http(req);
        for split in 1..req.len() {
            let mut st = HttpState::default();
            let (used1, mut out) = http_with(&mut st, &req[..split]);
            let mut rest = req[used1..split].to_vec();
            rest.extend_from_slice(&req[split..]);
            let (used2, out2) = http_with(&mut st, &rest);
            assert_eq!(used2, rest.len(), "split at {split}");
            out.push_str(&out2);
            assert_eq!(out, whole, "split at {split}");
        }
        assert!(
            whole.contains(r#""body":"hello world!","body_len":12,"#),
            "{whole}"
        );
        assert!(whole.ends_with(r#"{"status":"OK!"}"#), "{whole}");
    }

    #[test]
    fn http_bad_requests_answer_400_and_close() {
        for bad in [
            &b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let (_, st, out) = http(bad);
            assert!(st.closing, "{bad:?}");
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{bad:?}: {out}"
            );
        }
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_PENDING_INPUT + 10, b'a');
        let (_, st, out) = http(&huge);
        assert!(st.closing);
        assert!(out.contains("400"));
    }

    #[test]
    fn chunk_decoder_rejects_bad_framing() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"5\r\nhello\n0\r\n\r\n",
            b"5 x\r\n",
            b"5 \r\n",
            b"11111111111111111\r\n",
            b"5;a\nb\r\n",
            b"0\r\nTrailer: x\nY",
            b"0\r\n\rX",
        ] {
            let mut d = ChunkDecoder::default();
            let (_, res) = d.feed(bad, |_| {});
            assert_eq!(res, Feed::Bad, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut d = ChunkDecoder::default();
        let mut long_ext = b"1;".to_vec();
        long_ext.resize(2 + usize::from(MAX_CHUNK_EXT) + 1, b'e');
        assert_eq!(d.feed(&long_ext, |_| {}).1, Feed::Bad);
        // 16 hex digits is fine (the size is only counted down as data arrives).
        let mut d = ChunkDecoder::default();
        assert_eq!(
            d.feed(b"000000000000000A\r\n0123", |_| {}),
            (22, Feed::More)
        );
        assert_eq!(d.size, 6);
    }

    #[test]
    fn classify_routes_and_params() {
        assert_eq!(classify("/"), (Kind::Root, 0, 0));
        assert_eq!(classify("/?a=b"), (Kind::Root, 0, 0));
        assert_eq!(classify("/health"), (Kind::Health, 0, 0));
        assert_eq!(classify("/healthz"), (Kind::NotFound, 0, 0));
        assert_eq!(
            classify("/api/v1/add?x=10&y=25"),
            (Kind::Api(ApiResult::Value(35)), 0, 0)
        );
        assert_eq!(
            classify("/api/v1/multiply?y=-3&x=7&status=503&delay_ms=20"),
            (Kind::Api(ApiResult::Value(-21)), 503, 20)
        );
        let api = |t| classify(t).0;
        assert_eq!(api("/api/v1/add?y=1"), Kind::Api(ApiResult::BadX));
        assert_eq!(api("/api/v1/add?x=1.5&y=z"), Kind::Api(ApiResult::BadX));
        assert_eq!(api("/api/v1/add?x=1&y="), Kind::Api(ApiResult::BadY));
        assert_eq!(api("/api/v1/add?x=1&y"), Kind::Api(ApiResult::BadY));
        assert_eq!(
            api("/api/v1/add?x=9223372036854775807&y=1"),
            Kind::Api(ApiResult::Overflow)
        );
        assert_eq!(
            api("/api/v1/multiply?x=4611686018427387904&y=2"),
            Kind::Api(ApiResult::Overflow)
        );
        assert_eq!(
            api("/api/v1/add?x=99999999999999999999&y=1"),
            Kind::Api(ApiResult::BadX)
        );
        assert_eq!(
            api("/bytes?n=5&chunked=1"),
            Kind::Bytes {
                n: 5,
                chunked: true
            }
        );
        assert_eq!(api("/bytes?n=1073741825"), Kind::BadParam(BAD_N));
        assert_eq!(api("/bytes"), Kind::BadParam(BAD_N));
        assert_eq!(api("/bytes?n=1&chunked=yes"), Kind::BadParam(BAD_CHUNKED));
        assert_eq!(api("/?status=199"), Kind::BadParam(BAD_STATUS));
        assert_eq!(api("/?status=600"), Kind::BadParam(BAD_STATUS));
        assert_eq!(api("/?delay_ms=60001"), Kind::BadParam(BAD_DELAY));
        assert_eq!(api("/?delay_ms=-1"), Kind::BadParam(BAD_DELAY));
        assert_eq!(classify("/echo?a=1"), (Kind::Echo, 0, 0));
    }

    #[test]
    fn faas_answers() {
        let (_, _, out) = http(b"GET /api/v1/add?x=10&y=25 HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"));
        assert_eq!(body_of(&out), r#"{"Data":{"Result":35,"ServiceID":"b1"}}"#);
        let (_, _, out) = http(b"GET /api/v1/multiply?x=a&y=2 HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert_eq!(body_of(&out), std::str::from_utf8(BAD_X_BODY).unwrap());
    }

    #[test]
    fn status_and_delay() {
        let (_, st, out) = http(b"GET /health?status=503 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"));
        assert_eq!(out.matches("b1\n").count(), 2);
        assert!(!st.blocked());
        let (_, _, out) = http(b"GET /?status=204 HTTP/1.1\r\n\r\n");
        assert_eq!(out, "HTTP/1.1 204 No Content\r\n\r\n");

        let first = b"GET /?delay_ms=50 HTTP/1.1\r\n\r\n";
        let req = [&first[..], b"GET /nope HTTP/1.1\r\n\r\n"].concat();
        let mut st = HttpState::default();
        let r = Responses::new("b1");
        let mut out = b"earlier".to_vec();
        let used = process_http(&req, &mut st, &r, &mut out);
        assert_eq!(used, first.len(), "parsing stops behind the held answer");
        assert_eq!(st.hold_at, b"earlier".len());
        assert!(st.hold_until.is_some_and(|t| t > Instant::now()));
    }

    #[test]
    fn bytes_streams_in_batches() {
        let r = Responses::new("b1");
        let (_, st, out) = http(b"GET /bytes?n=300000 HTTP/1.1\r\n\r\n");
        assert!(out.contains("Content-Length: 300000\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
        let mut s = st.stream.unwrap();
        let mut body = Vec::new();
        assert!(!fill_stream(&mut s, &mut body, &r.pattern));
        assert_eq!(body.len(), STREAM_BATCH);
        assert!(fill_stream(&mut s, &mut body, &r.pattern));
        assert_eq!(body.len(), 300000);
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)));
        assert_eq!(&body[..3], &[7, 38, 69]);
        assert_eq!(body[251], 7);

        let (_, st, out) = http(b"GET /bytes?n=70000&chunked=1 HTTP/1.1\r\n\r\n");
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let mut s = st.stream.unwrap();
        let mut body = Vec::new();
        assert!(fill_stream(&mut s, &mut body, &r.pattern));
        assert!(body.starts_with(b"10000\r\n\x07\x26"));
        assert!(body.ends_with(b"\r\n0\r\n\r\n"));
        assert!(body[7 + 65536..].starts_with(b"\r\n1170\r\n"));
        assert_eq!(body.len(), 7 + 65536 + 2 + 6 + 4464 + 2 + 5);

        let (_, st, out) = http(b"HEAD /bytes?n=5 HTTP/1.1\r\n\r\n");
        assert!(st.stream.is_none());
        assert!(out.ends_with("Content-Length: 5\r\n\r\n"));
        let (_, st, out) =
            http(b"GET /bytes?n=5&chunked=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(
            out.contains("Content-Length: 5\r\n"),
            "no chunked to HTTP/1.0"
        );
        assert!(!st.stream.unwrap().chunked);
    }

    #[test]
    fn echo_json() {
        let (_, _, out) = http(
            b"PUT /echo?a=1 HTTP/1.1\r\nHost: h\r\nX-Q: \"q\"\r\nContent-Length: 3\r\n\r\na\tb",
        );
        let v: serde_json::Value = serde_json::from_str(body_of(&out)).unwrap();
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], "/echo?a=1");
        assert_eq!(v["headers"][1][0], "X-Q");
        assert_eq!(v["headers"][1][1], "\"q\"");
        assert_eq!(v["body"], "a\tb");
        assert_eq!(v["body_len"], 3);
        assert_eq!(
            v["body_fnv64"],
            format!("{:016x}", fnv1a(FNV_OFFSET, b"a\tb"))
        );
        let (_, _, out) = http(b"GET /echo HTTP/1.1\r\n\r\n");
        assert!(out.ends_with(r#""body":"","body_len":0,"body_fnv64":"cbf29ce484222325"}"#));
    }

    #[test]
    fn number_formatting() {
        let mut v = Vec::new();
        push_i64(&mut v, i64::MIN);
        v.push(b' ');
        push_u64(&mut v, 0);
        v.push(b' ');
        push_hex(&mut v, 0x1f, 1);
        v.push(b' ');
        push_hex(&mut v, 0, 1);
        v.push(b' ');
        push_hex(&mut v, 0xab, 16);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "-9223372036854775808 0 1f 0 00000000000000ab"
        );
    }

    #[test]
    fn content_length_parsing() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(parse_content_length(b"18446744073709551615"), None); // 20 digits
    }

    #[test]
    fn foo_lines() {
        let mut out = Vec::new();
        let input = b"REQ 1 hello world\nREQ 2\nPING 3 x\n\nREQ\nREQ x y\nREQ 4 par";
        let used = process_foo(input, &mut out);
        assert_eq!(&input[used..], b"REQ 4 par");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ACK 1 hello world\nACK 2\nNAK 3 x\nNAK\nNAK\nNAK x y\n"
        );
    }
}
