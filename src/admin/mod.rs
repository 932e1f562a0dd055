//! The admin HTTP server: JSON/REST on `server.admin` (loopback by default), on its own
//! threads, far from the workers. Small and strict: HTTP/1.1 with keep-alive, heads parsed
//! with `httparse`, bodies by Content-Length only (411 otherwise) up to `admin_max_body`
//! (413), a thread per connection up to [`MAX_CONNECTIONS`].
//!
//! Slow clients: a request (head and body) must arrive whole within [`REQUEST_TIMEOUT`] of
//! its first byte (408 otherwise), however it is dribbled, and an idle keep-alive connection
//! closes after [`IDLE_TIMEOUT`]. When every connection slot is taken, the connection that
//! has waited longest for its request is closed to make room ([`guard::Slots`]), so clients
//! that hold connections open cannot lock `/health` or an operator out; only when every slot
//! is busy handling a request does a newcomer get 503.
//!
//! Routing and the API semantics live in [`api`]; this file is transport only.

pub mod api;
pub mod guard;

use crate::control::Control;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The live status page (`GET /ui`): one self-contained HTML file, no outside assets.
pub const UI_PAGE: &str = include_str!("ui.html");

/// Admin connections at once. Past it, the one waiting longest for its request is closed.
pub const MAX_CONNECTIONS: usize = 64;
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// A request, head and body, must be complete this long after its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection waits this long for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A response must be written within this long (a client that does not read is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/stats` and `/metrics` are served from (the stats aggregator).
pub trait StatsSource: Send + Sync {
    /// The same object as the SIGUSR2 line.
    fn stats_json(&self) -> String;
    /// Content type and body of `/metrics`.
    fn metrics(&self) -> (&'static str, String);
}

pub struct AdminSettings {
    /// `Authorization: Bearer <token>` required for every mutation when set.
    pub token: Option<String>,
    pub read_only: bool,
    pub max_body: usize,
    /// Discovery providers' state, for `GET /v1/discovery`.
    pub discovery: Option<Arc<crate::discovery::Registry>>,
    /// Compatibility APIs served on the same address, asked first (e.g. the DSU API).
    pub extensions: Vec<Arc<dyn Extension>>,
}

/// Extra endpoints on the admin address (compatibility APIs with their own paths, status
/// codes and bodies). They do their own authorization.
pub trait Extension: Send + Sync {
    /// `Some(response)` when the request is one of this extension's.
    fn handle(&self, shared: &Shared, req: &Request) -> Option<Response>;
}

pub struct Shared {
    pub control: Arc<Control>,
    pub stats: Option<Arc<dyn StatsSource>>,
    pub settings: AdminSettings,
    /// Reload notifications and binary upgrades (`POST /v1/upgrade`).
    pub lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
    slots: guard::Slots,
    /// Failed token checks per client address.
    pub auth_failures: guard::AuthLimiter,
    pub auth_log: guard::LogLimiter,
}

impl Shared {
    pub fn new(
        control: Arc<Control>,
        stats: Option<Arc<dyn StatsSource>>,
        settings: AdminSettings,
    ) -> Shared {
        Shared {
            control,
            stats,
            settings,
            lifecycle: None,
            slots: guard::Slots::default(),
            auth_failures: guard::AuthLimiter::default(),
            auth_log: guard::LogLimiter::new(Duration::from_secs(1)),
        }
    }
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }
    pub fn with(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// Serves the admin API on `listener` (bound by the caller, or inherited from the previous
/// process of a binary upgrade) on a new thread, until `stop` is set. The socket may be shared
/// with another process during an upgrade, so it is polled and accepted from non-blocking.
pub fn start(
    listener: TcpListener,
    control: Arc<Control>,
    stats: Option<Arc<dyn StatsSource>>,
    settings: AdminSettings,
    lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
    stop: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        lifecycle,
        ..Shared::new(control, stats, settings)
    });
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || accept_loop(listener, shared, stop))?;
    Ok(local)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if !crate::sys::wait_readable(&listener, Duration::from_millis(250)) {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            break; // handed over while we waited: the successor takes this connection
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("admin: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let id = match shared.slots.admit(&stream, peer, MAX_CONNECTIONS) {
            guard::Admit::Yes(id) => id,
            guard::Admit::Busy => {
                let mut s = stream;
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = write_response(
                    &mut s,
                    &api::error_response(&crate::control::ApiError::new(
                        503,
                        "busy",
                        "every admin connection is busy with a request",
                    )),
                    false,
                    Instant::now() + Duration::from_secs(1),
                );
                continue;
            }
        };
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                serve_connection(stream, peer, &sh, id);
                sh.slots.remove(id);
            });
        if let Err(e) = spawned {
            shared.slots.remove(id);
            log::warn!("admin: cannot start a connection thread: {e}");
        }
    }
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: &Shared, id: u64) {
    // Accepted from a non-blocking listener (shared during upgrades); served blocking.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        shared.slots.set_waiting(id, true);
        let (req, keep_alive) = match read_request(&mut reader, &mut out, peer, shared) {
            Ok(Some(r)) => r,
            Ok(None) => return, // clean close between requests
            Err(resp) => {
                let _ = write_response(&mut out, &resp, false, Instant::now() + WRITE_TIMEOUT);
                return;
            }
        };
        shared.slots.set_waiting(id, false);
        let resp = api::handle(shared, &req);
        let sent = write_response(&mut out, &resp, keep_alive, Instant::now() + WRITE_TIMEOUT);
        if sent.is_err() || !keep_alive {
            return;
        }
    }
}

/// Buffered bytes of the connection, waiting at most until `deadline` for more. Empty at the
/// end of the stream; `TimedOut` past the deadline.
fn fill_by(reader: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<&[u8]> {
    if reader.buffer().is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        reader.get_ref().set_read_timeout(Some(left))?;
    }
    match reader.fill_buf() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
        r => r,
    }
}

/// Appends one line (through its `\n`, at most `limit` bytes) to `out`. `Ok(false)`: the
/// stream ended first.
fn read_line_by(
    reader: &mut BufReader<TcpStream>,
    out: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
) -> io::Result<bool> {
    let mut taken = 0;
    loop {
        let avail = fill_by(reader, deadline)?;
        if avail.is_empty() {
            return Ok(false);
        }
        let room = limit.saturating_sub(taken).max(1);
        let window = &avail[..avail.len().min(room)];
        let (n, done) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), false),
        };
        out.extend_from_slice(&window[..n]);
        reader.consume(n);
        taken += n;
        if done || taken >= limit {
            return Ok(true);
        }
    }
}

fn read_exact_by(
    reader: &mut BufReader<TcpStream>,
    out: &mut [u8],
    deadline: Instant,
) -> io::Result<()> {
    let mut got = 0;
    while got < out.len() {
        let avail = fill_by(reader, deadline)?;
        if avail.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = avail.len().min(out.len() - got);
        out[got..got + n].copy_from_slice(&avail[..n]);
        reader.consume(n);
        got += n;
    }
    Ok(())
}

/// An answer to a request refused before it was read whole (`head`: what came of it so far).
/// On the LBaaS API's paths it takes that API's shape, whose clients look for
/// `"status":"fail"`; elsewhere the admin API's.
fn error(head: &[u8], status: u16, code: &'static str, message: &str) -> Response {
    let e = crate::control::ApiError::new(status, code, message);
    let target = head
        .split(|&b| b == b'\n')
        .next()
        .and_then(|line| line.split(|&b| b == b' ').nth(1))
        .and_then(|t| std::str::from_utf8(t).ok());
    match target.and_then(crate::lbaas::api::path_type) {
        Some(implied) => crate::lbaas::api::fail(None, implied, &e),
        None => api::error_response(&e),
    }
}

fn too_slow(head: &[u8]) -> Response {
    error(head, 408, "timeout", "request not complete in time")
}

/// Reads one request. `Ok(None)`: the client closed (or went idle) between requests.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Option<(Request, bool)>, Response> {
    let mut head = Vec::with_capacity(1024);
    // Between requests: wait for the first byte; from there the whole request has a deadline.
    match fill_by(reader, Instant::now() + IDLE_TIMEOUT) {
        Ok([]) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let before = head.len();
        let limit = MAX_HEAD + 1 - head.len().min(MAX_HEAD);
        match read_line_by(reader, &mut head, limit, deadline) {
            Ok(false) if head.is_empty() => return Ok(None),
            Ok(false) => {
                return Err(error(
                    &head,
                    400,
                    "bad_request",
                    "connection closed mid-request",
                ))
            }
            Ok(true) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(too_slow(&head)),
            Err(_) => {
                return Err(error(
                    &head,
                    400,
                    "bad_request",
                    "connection failed mid-request",
                ))
            }
        }
        if head.len() > MAX_HEAD {
            return Err(error(
                &head,
                431,
                "head_too_large",
                "request head over 64KiB",
            ));
        }
        let line = &head[before..];
        if (line == b"\r\n" || line == b"\n") && before > 0 {
            break;
        }
        if before == 0 && (line == b"\r\n" || line == b"\n") {
            head.clear(); // tolerate blank lines before a request (RFC 9112 §2.2)
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut hdrs);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(error(&head, 400, "bad_request", "incomplete request head"))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(error(&head, 431, "too_many_headers", "too many headers"))
        }
        Err(e) => {
            return Err(error(
                &head,
                400,
                "bad_request",
                &format!("malformed request: {e}"),
            ))
        }
    }
    let method = parsed.method.unwrap_or("").to_string();
    let path = parsed.path.unwrap_or("/").to_string();
    let minor = parsed.version.unwrap_or(1);
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else {
            return Err(error(
                &head,
                400,
                "bad_request",
                "header value is not UTF-8",
            ));
        };
        headers.push((h.name.to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
        peer,
    };
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = if minor == 0 {
        conn.contains("keep-alive")
    } else {
        !conn.contains("close")
    };
    if req.header("transfer-encoding").is_some() {
        return Err(error(
            &head,
            411,
            "length_required",
            "send the body with Content-Length (chunked bodies are not accepted here)",
        ));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| error(&head, 400, "bad_request", "invalid Content-Length"))?,
    };
    if len > shared.settings.max_body {
        return Err(error(
            &head,
            413,
            "body_too_large",
            &format!(
                "request body of {len} bytes exceeds admin_max_body ({} bytes)",
                shared.settings.max_body
            ),
        ));
    }
    if len > 0 {
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        req.body = vec![0; len];
        read_exact_by(reader, &mut req.body, deadline).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                too_slow(&head)
            } else {
                error(
                    &head,
                    400,
                    "bad_request",
                    "request body shorter than Content-Length",
                )
            }
        })?;
    }
    Ok(Some((req, keep_alive)))
}

fn write_response(
    out: &mut TcpStream,
    r: &Response,
    keep_alive: bool,
    deadline: Instant,
) -> io::Result<()> {
    let mut head = if r.status == 204 {
        // No body, and so no Content-Length either (RFC 9110 §8.6).
        format!(
            "HTTP/1.1 204 {}\r\n",
            crate::http::rewrite::reason_phrase(204)
        )
    } else {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            r.status,
            crate::http::rewrite::reason_phrase(r.status),
            r.content_type,
            r.body.len()
        )
    };
    for (n, v) in &r.headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut buf = head.into_bytes();
    buf.extend_from_slice(&r.body);
    // The whole response within the deadline, however slowly the client reads.
    let mut rest = &buf[..];
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        out.set_write_timeout(Some(left))?;
        match out.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
