//! Built-in demo backend (`switchyard demo-backend`): a tiny, fast HTTP/1.1 or Foo line-protocol
//! server used by the quick start, the integration tests and the benchmarks (`perf/compare`),
//! where it stands behind every proxy under test and so must never be the bottleneck.
//!
//! Shape: one thread per worker, each with its own `mio::Poll`, its own `SO_REUSEPORT` listener
//! (the kernel spreads accepts over them) and a `Slab` of connections held by value. Sockets are
//! registered once for READABLE | WRITABLE (edge-triggered). Every read is parsed at once and the
//! answers appended to a per-connection output buffer that is flushed right away; unsent bytes are
//! kept until the socket is writable again. Pipelined requests are answered in order.
//!
//! Hot path rules: no locks, no logging above `debug`, no per-request allocation once a
//! connection's buffers have grown (responses are prebuilt at start-up), no `unsafe`, no panics on
//! network input. Loops are bounded: a connection gets at most `READS_PER_WAKEUP` reads per wakeup
//! and is then revisited after the other ready connections, because edge-triggered readiness
//! would not be reported again.
//!
//! HTTP: `/` (any method; HEAD without body) → 200 `text/plain` with body `<id>\n`; other paths →
//! 404; unparsable heads, `Transfer-Encoding` request bodies, heads over 64 KiB → 400 and close.
//! `Content-Length` request bodies are skipped without being buffered.
//! Foo: `REQ <n> [data]` → `ACK <n> [data]`; any other line → `NAK` + the line after its first token.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
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

    let responses = std::sync::Arc::new(Responses::new(&opts.id));
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
    /// Unparsed input (a partial head or line); empty most of the time.
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes of the current request body still to skip.
    body_left: u64,
    /// Readiness may still hold unread bytes (set by events, cleared by WouldBlock/short read).
    can_read: bool,
    /// The peer's FIN/HUP was reported: read to 0 rather than trusting short reads.
    hup_seen: bool,
    /// Peer sent EOF: flush what is left, then close.
    eof: bool,
    /// We answered with "close": flush, half-close, discard input until EOF or the linger limit.
    closing: bool,
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
    responses: std::sync::Arc<Responses>,
    conns: Slab<Conn>,
    scratch: Vec<u8>,
    lingering: usize,
}

impl Worker {
    fn new(
        mut listener: TcpListener,
        protocol: DemoProtocol,
        responses: std::sync::Arc<Responses>,
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
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut again: Vec<usize> = Vec::new();
        let mut again_next: Vec<usize> = Vec::new();
        let mut next_sweep = Instant::now() + Duration::from_secs(1);
        loop {
            let timeout = if !again.is_empty() {
                Some(Duration::ZERO)
            } else if self.lingering > 0 {
                Some(Duration::from_secs(1))
            } else {
                None
            };
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
                    entry.insert(Conn {
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        out_pos: 0,
                        body_left: 0,
                        can_read: false,
                        hup_seen: false,
                        eof: false,
                        closing: false,
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
        let conn = &self.conns[key];
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
                if matches!(next, Next::Again) {
                    again.push(key);
                }
            }
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
    loop {
        // 1. Flush pending answers.
        while conn.out_pos < conn.out.len() {
            match conn.stream.write(&conn.out[conn.out_pos..]) {
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
        }
        let pending = conn.out.len() - conn.out_pos;

        if conn.eof {
            // Client is done sending; close once everything it asked for is delivered.
            return if pending > 0 { Next::Keep } else { Next::Close };
        }
        if conn.closing {
            if pending > 0 {
                return Next::Keep;
            }
            return linger(conn, scratch);
        }
        if pending >= OUT_HIGH_WATER || !conn.can_read {
            return Next::Keep; // a writable/readable event will bring us back
        }
        if reads == READS_PER_WAKEUP {
            return Next::Again;
        }

        // 2. Read one chunk and answer everything complete in it.
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
            let used = process(protocol, data, conn, responses);
            if !conn.closing && used < n {
                conn.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut inbuf = std::mem::take(&mut conn.inbuf);
            inbuf.extend_from_slice(data);
            let used = process(protocol, &inbuf, conn, responses);
            inbuf.drain(..used);
            conn.inbuf = inbuf;
        }
        if conn.closing {
            conn.inbuf.clear();
        } else if conn.inbuf.len() > MAX_FOO_LINE {
            // Only Foo gets here (HTTP answers 400 itself): a line with no end in sight.
            return Next::Close;
        }
    }
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

fn process(protocol: DemoProtocol, input: &[u8], conn: &mut Conn, responses: &Responses) -> usize {
    match protocol {
        DemoProtocol::Http => {
            let mut state = HttpState {
                body_left: conn.body_left,
                closing: conn.closing,
            };
            let used = process_http(input, &mut state, responses, &mut conn.out);
            conn.body_left = state.body_left;
            conn.closing = state.closing;
            used
        }
        DemoProtocol::Foo => process_foo(input, &mut conn.out),
    }
}

// ---------------------------------------------------------------------------------------------
// Pure protocol helpers (unit tested below).

/// Prebuilt answers, indexed by status, `Connection` header variant and HEAD-ness.
struct Responses {
    /// [status][conn][head]: status 0 = 200, 1 = 404; conn 0 = none, 1 = close, 2 = keep-alive.
    table: [[[Vec<u8>; 2]; 3]; 2],
    bad_request: Vec<u8>,
}

const CONN_NONE: usize = 0;
const CONN_CLOSE: usize = 1;
const CONN_KEEP_ALIVE: usize = 2;

impl Responses {
    fn new(id: &str) -> Responses {
        let ok_body = format!("{id}\n");
        let build = |status: &str, body: &str, conn: usize, head: bool| -> Vec<u8> {
            let conn_header = match conn {
                CONN_CLOSE => "Connection: close\r\n",
                CONN_KEEP_ALIVE => "Connection: keep-alive\r\n",
                _ => "",
            };
            let mut r = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{conn_header}\r\n",
                body.len()
            )
            .into_bytes();
            if !head {
                r.extend_from_slice(body.as_bytes());
            }
            r
        };
        let variants = |status: &str, body: &str| {
            [CONN_NONE, CONN_CLOSE, CONN_KEEP_ALIVE]
                .map(|c| [build(status, body, c, false), build(status, body, c, true)])
        };
        Responses {
            table: [
                variants("200 OK", &ok_body),
                variants("404 Not Found", "not found\n"),
            ],
            bad_request: build("400 Bad Request", "bad request\n", CONN_CLOSE, false),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct HttpState {
    body_left: u64,
    /// A "close" answer was queued: ignore all further input.
    closing: bool,
}

/// What the request head says about the connection and the body.
#[derive(Debug, PartialEq, Eq)]
struct HeadInfo {
    keep_alive: bool,
    content_length: u64,
    expect_continue: bool,
}

/// Reads the framing headers; `None` = unacceptable request (answer 400 and close).
fn head_info(version: u8, headers: &[httparse::Header<'_>]) -> Option<HeadInfo> {
    let mut close = false;
    let mut keep_alive_token = false;
    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
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
            // Chunked request bodies are not supported by this demo server.
            return None;
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    let keep_alive = match version {
        1 => !close,
        _ => keep_alive_token && !close,
    };
    Some(HeadInfo {
        keep_alive,
        content_length: content_length.unwrap_or(0),
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

fn is_root(path: &str) -> bool {
    path == "/" || path.starts_with("/?")
}

/// Answers every complete request in `input` (appending to `out`); returns the bytes consumed.
/// Unconsumed bytes are a partial head the caller keeps for the next read.
fn process_http(
    input: &[u8],
    st: &mut HttpState,
    responses: &Responses,
    out: &mut Vec<u8>,
) -> usize {
    let mut pos = 0;
    while pos < input.len() && !st.closing {
        if st.body_left > 0 {
            let skip = st.body_left.min((input.len() - pos) as u64);
            pos += skip as usize; // skip <= input.len() - pos, so it fits
            st.body_left -= skip;
            continue;
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
                let status = if is_root(req.path.unwrap_or("")) {
                    0
                } else {
                    1
                };
                let head = req.method == Some("HEAD");
                let conn = if !info.keep_alive {
                    CONN_CLOSE
                } else if version == 0 {
                    CONN_KEEP_ALIVE
                } else {
                    CONN_NONE
                };
                if info.expect_continue && info.content_length > 0 {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                out.extend_from_slice(&responses.table[status][conn][usize::from(head)]);
                pos += head_len;
                st.body_left = info.content_length;
                if !info.keep_alive {
                    st.closing = true;
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

    fn http(input: &[u8]) -> (usize, HttpState, String) {
        let r = Responses::new("b1");
        let mut st = HttpState::default();
        let mut out = Vec::new();
        let used = process_http(input, &mut st, &r, &mut out);
        (used, st, String::from_utf8(out).unwrap())
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
    fn http_body_skipped_across_reads() {
        let r = Responses::new("b1");
        let mut st = HttpState::default();
        let mut out = Vec::new();
        let part1 = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
        assert_eq!(process_http(part1, &mut st, &r, &mut out), part1.len());
        assert_eq!(st.body_left, 5);
        let part2 = b"67890GET /x HTTP/1.1\r\n\r\n";
        assert_eq!(process_http(part2, &mut st, &r, &mut out), part2.len());
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("HTTP/1.1 ").count(), 2);
        assert!(out.contains("404 Not Found"));
    }

    #[test]
    fn http_bad_requests_answer_400_and_close() {
        for bad in [
            &b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
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
