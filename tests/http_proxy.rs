//! HTTP/1.1 proxying through real sockets: forwarding headers, keep-alive on both sides,
//! pipelining, request bodies (Content-Length and chunked), smuggling defences, limits,
//! routing (host, prefix, strip_prefix, FaaS), upstream failures, and real clients (curl, ab).
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use util::*;

/// FNV-1a 64, for comparing bodies without echoing them.
fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Reads one HTTP/1.1 message head from `s` (bytes after it stay in `pending`).
fn read_head(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..i + 4]).into_owned();
            pending.drain(..i + 4);
            return Some(head);
        }
        let mut buf = [0u8; 16384];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn read_exact_pending(s: &mut TcpStream, pending: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while pending.len() < n {
        let mut buf = [0u8; 65536];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(k) => pending.extend_from_slice(&buf[..k]),
        }
    }
    Some(pending.drain(..n).collect())
}

fn read_line_pending(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&pending[..i]).into_owned();
            pending.drain(..i + 2);
            return Some(line);
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(k) => pending.extend_from_slice(&buf[..k]),
        }
    }
}

/// Reads a message body framed by `head` (Content-Length or chunked).
fn read_body(s: &mut TcpStream, pending: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    if header(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line = read_line_pending(s, pending)?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers until the empty line.
                while !read_line_pending(s, pending)?.is_empty() {}
                return Some(body);
            }
            body.extend(read_exact_pending(s, pending, size)?);
            read_exact_pending(s, pending, 2)?;
        }
    }
    let n = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    read_exact_pending(s, pending, n)
}

/// A test backend speaking HTTP/1.1 keep-alive. Its response body reports what it received,
/// one `key=value` per line. `close_idle_after`: close a kept-alive connection that stays
/// idle this long (without telling the client).
fn http_backend(id: &'static str, close_idle_after: Option<Duration>) -> Backend {
    http_backend_slow(id, close_idle_after, Duration::ZERO)
}

/// Like `http_backend`, answering each request `delay` late.
fn http_backend_slow(
    id: &'static str,
    close_idle_after: Option<Duration>,
    delay: Duration,
) -> Backend {
    Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendState| {
        let mut pending = Vec::new();
        loop {
            let _ = s.set_read_timeout(Some(close_idle_after.unwrap_or(Duration::from_secs(30))));
            let Some(head) = read_head(&mut s, &mut pending) else {
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let expects =
                header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
            if expects && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                return;
            }
            let Some(body) = read_body(&mut s, &mut pending, &head) else {
                return;
            };
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let first = head.lines().next().unwrap_or_default().to_string();
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or_default();
            let path = parts.next().unwrap_or_default();
            let get = |n| header(&head, n).unwrap_or("-").to_string();
            let report = format!(
                "id={id}\nmethod={method}\npath={path}\nhost={}\nxff={}\nxfp={}\nxfh={}\nxrid={}\nconnection={}\nkeep-alive={}\nbody_len={}\nbody_fnv={:016x}\nconn_requests={}\n",
                get("host"),
                get("x-forwarded-for"),
                get("x-forwarded-proto"),
                get("x-forwarded-host"),
                get("x-request-id"),
                get("connection"),
                get("keep-alive"),
                body.len(),
                fnv(&body),
                st.written.fetch_add(1, Ordering::SeqCst) + 1,
            );
            // Bulk modes: ?bytes=N (Content-Length), ?chunked=N, ?close=N (no framing: the
            // body ends when the connection closes).
            let q = |k: &str| {
                path.split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            if let Some(n) = q("bytes") {
                let data = payload(42, n);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                if s.write_all(head.as_bytes())
                    .and_then(|_| s.write_all(&data))
                    .is_err()
                {
                    return;
                }
                continue;
            }
            if let Some(n) = q("chunked") {
                let data = payload(42, n);
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for c in data.chunks(100_000) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                if s.write_all(&out).is_err() {
                    return;
                }
                continue;
            }
            if let Some(n) = q("close") {
                let data = payload(42, n);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(&data);
                return;
            }
            let status = if path.contains("status=500") {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let resp = if method == "HEAD" {
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Backend: {id}\r\n\r\n",
                    report.len()
                )
            } else {
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Backend: {id}\r\nKeep-Alive: timeout=5\r\n\r\n{report}", report.len())
            };
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }))
}

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn field(&self, key: &str) -> String {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_default()
    }
}

/// A client connection that reads responses in order.
struct Client {
    s: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            s: connect(addr),
            pending: Vec::new(),
        }
    }
    fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).expect("write request");
    }
    fn recv(&mut self, head_request: bool) -> Option<Resp> {
        let head = read_head(&mut self.s, &mut self.pending)?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let body = if head_request {
            Vec::new()
        } else {
            read_body(&mut self.s, &mut self.pending, &head)?
        };
        Some(Resp { status, head, body })
    }
    fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        self.recv(false).expect("response")
    }
    /// True when the proxy closed the connection (EOF or reset) within the timeout.
    fn closed(&mut self) -> bool {
        let _ = self.s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut b = [0u8; 1024];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

fn http_config(server: &str, listener: &str, clusters: &[(&str, &[SocketAddr], &str)]) -> String {
    let mut c = format!(
        "[server]\n{server}\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{listener}\n"
    );
    for (name, addrs, extra) in clusters {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        c.push_str(&format!(
            "\n[[clusters]]\nname = \"{name}\"\nbackends = [{}]\n{extra}\n",
            list.join(", ")
        ));
    }
    c
}

fn simple(backend: &Backend) -> Proxy {
    Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"app\"",
        &[("app", &[backend.addr], "")],
    ))
}

#[test]
fn get_through_proxy_sets_forwarding_headers() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    c.send(b"GET /hello?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: keep-alive, X-Secret\r\nX-Secret: hop\r\n\r\n");
    let r = c.recv(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.field("path"), "/hello?x=1");
    assert_eq!(r.field("host"), "Example.COM:8080");
    assert_eq!(r.field("xff"), "10.1.2.3, 127.0.0.1");
    assert_eq!(r.field("xfp"), "http");
    assert_eq!(r.field("xfh"), "Example.COM:8080");
    let rid = r.field("xrid");
    assert!(
        rid.len() >= 8 && rid != "-",
        "generated X-Request-Id: {rid:?}"
    );
    assert!(
        !r.text().contains("hop"),
        "headers named in Connection are removed"
    );
    assert_eq!(header(&r.head, "x-backend"), Some("b1"));
    assert!(
        header(&r.head, "keep-alive").is_none(),
        "hop-by-hop response header removed"
    );
    // A request with its own id keeps it.
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-123\r\n\r\n");
    assert_eq!(c.recv(false).expect("response").field("xrid"), "abc-123");
}

#[test]
fn keep_alive_reuses_connections_on_both_sides() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    for i in 0..20 {
        let r = c.get(&format!("/n{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.field("path"), format!("/n{i}"));
    }
    assert_eq!(b.accepted(), 1, "one upstream connection for 20 requests");
    // A second client reuses the pooled upstream connection too.
    let mut c2 = Client::new(p.addr("web"));
    assert_eq!(c2.get("/again").status, 200);
    assert_eq!(b.accepted(), 1);
    assert!(http_stat(&p, "upstream_reused") >= 20, "{}", p.stats());
    assert_eq!(http_stat(&p, "responses_2xx"), 21);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    let mut all = Vec::new();
    for i in 0..10 {
        all.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    c.send(&all);
    for i in 0..10 {
        let r = c.recv(false).expect("response");
        assert_eq!(
            r.field("path"),
            format!("/p{i}"),
            "response {i} out of order"
        );
    }
}

#[test]
fn request_bodies_content_length_and_chunked() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    let body = payload(7, 300_000);
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req);
    let r = c.recv(false).expect("response");
    assert_eq!(r.field("body_len"), body.len().to_string());
    assert_eq!(r.field("body_fnv"), format!("{:016x}", fnv(&body)));

    // Chunked, with an extension and a trailer, written in odd pieces.
    let mut req =
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, piece) in body.chunks(70_001).enumerate() {
        req.extend_from_slice(format!("{:x};n={i}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    for part in req.chunks(9_999) {
        c.send(part);
    }
    let r = c.recv(false).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.field("body_len"), body.len().to_string());
    assert_eq!(r.field("body_fnv"), format!("{:016x}", fnv(&body)));
    // The connection is still usable.
    assert_eq!(c.get("/after").field("path"), "/after");
}

#[test]
fn smuggling_vectors_get_400_and_never_reach_the_backend() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let vectors: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for v in vectors {
        let mut c = Client::new(p.addr("web"));
        c.send(v);
        let r = c
            .recv(false)
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(v)));
        assert_eq!(
            r.status,
            400,
            "{:?} → {}",
            String::from_utf8_lossy(v),
            r.head
        );
        assert!(
            c.closed(),
            "connection must close after {:?}",
            String::from_utf8_lossy(v)
        );
    }
    // Bad chunk sizes: the head is fine, the body is not.
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff1\r\n",
    ] {
        let mut c = Client::new(p.addr("web"));
        let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(bad);
        c.send(&req);
        // The head may already be on its way upstream; the client must not get a 200.
        if let Some(r) = c.recv(false) {
            assert_ne!(
                r.status,
                200,
                "bad chunk {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(c.closed());
    }
    assert_eq!(
        b.state.written.load(Ordering::SeqCst),
        0,
        "no smuggled request may be answered by the backend"
    );
    assert!(
        http_stat(&p, "bad_requests") >= vectors.len() as u64,
        "{}",
        p.stats()
    );
}

#[test]
fn header_and_uri_limits() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(9000));
    let mut c = Client::new(p.addr("web"));
    c.send(long_uri.as_bytes());
    assert_eq!(c.recv(false).expect("414").status, 414);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..101 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut c = Client::new(p.addr("web"));
    c.send(many.as_bytes());
    assert_eq!(c.recv(false).expect("431").status, 431);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let mut c = Client::new(p.addr("web"));
    let _ = c.s.write_all(big.as_bytes());
    assert_eq!(c.recv(false).expect("431").status, 431);
    assert_eq!(b.accepted(), 0);
    // Heads beyond one buffer (16 KiB) but within max_header_bytes (64 KiB) go through.
    let mut c = Client::new(p.addr("web"));
    let value = "v".repeat(40_000);
    c.send(format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {value}\r\n\r\n").as_bytes());
    let r = c.recv(false).expect("response");
    assert_eq!((r.status, r.field("path")), (200, "/big".to_string()));
    // And the connection keeps working with regular requests after it.
    assert_eq!(c.get("/small").status, 200);
}

#[test]
fn routes_by_host_prefix_and_strip_prefix() {
    let app = http_backend("app", None);
    let api = http_backend("api", None);
    let wild = http_backend("wild", None);
    let cfg = http_config(
        "workers = 1",
        r#"cluster = "app"
[[listeners.routes]]
host = "api.example.com"
path_prefix = "/v1"
strip_prefix = true
cluster = "api"
[[listeners.routes]]
host = "*.example.com"
cluster = "wild"
[[listeners.routes]]
path_prefix = "/admin"
methods = ["POST"]
cluster = "api"
"#,
        &[
            ("app", &[app.addr], ""),
            ("api", &[api.addr], ""),
            ("wild", &[wild.addr], ""),
        ],
    );
    let p = Proxy::start(&cfg);
    let mut c = Client::new(p.addr("web"));
    let mut go = |host: &str, method: &str, path: &str| {
        c.send(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        let r = c.recv(false).expect("response");
        (r.field("id"), r.field("path"))
    };
    assert_eq!(
        go("api.example.com", "GET", "/v1/users?id=7"),
        ("api".into(), "/users?id=7".into())
    );
    assert_eq!(
        go("API.example.com:80", "GET", "/v1"),
        ("api".into(), "/".into())
    );
    assert_eq!(
        go("api.example.com", "GET", "/v1x"),
        ("wild".into(), "/v1x".into())
    );
    assert_eq!(
        go("x.example.com", "GET", "/v1/a"),
        ("wild".into(), "/v1/a".into())
    );
    assert_eq!(
        go("other", "POST", "/admin/x"),
        ("api".into(), "/admin/x".into())
    );
    assert_eq!(
        go("other", "GET", "/admin/x"),
        ("app".into(), "/admin/x".into())
    );
}

#[test]
fn faas_dynamic_routing_with_the_original_errors() {
    let m = http_backend("multiply", None);
    let cfg = http_config("workers = 1", "faas = true", &[("multiply", &[m.addr], "")]);
    let p = Proxy::start(&cfg);
    let mut c = Client::new(p.addr("web"));
    let r = c.get("/multiply/api/v1/add?x=10&y=25");
    assert_eq!(r.status, 200);
    assert_eq!(r.field("path"), "/api/v1/add?x=10&y=25");
    for (path, msg) in [
        ("/", "need a route key to route"),
        ("/Bad/x", "invalid route url"),
        ("/divide/api", "no service found for key = divide"),
    ] {
        let mut c = Client::new(p.addr("web"));
        let r = c.get(path);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(
            r.text(),
            format!("{{\"Data\":{{\"Msg\":\"{msg}\",\"Code\":10000}}}}"),
            "{path}"
        );
        assert!(
            header(&r.head, "content-type").is_some_and(|v| v.contains("json")),
            "{}",
            r.head
        );
    }
}

#[test]
fn pooled_connection_closed_by_backend_while_idle_is_not_an_error() {
    let b = http_backend("b1", Some(Duration::from_millis(100)));
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    for i in 0..5 {
        assert_eq!(c.get(&format!("/r{i}")).status, 200);
        // Long enough for the backend to drop the idle upstream connection.
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        b.accepted() >= 2,
        "the backend really closed idle connections"
    );
    assert_eq!(http_stat(&p, "responses_5xx"), 0, "{}", p.stats());
}

#[test]
fn keepalive_and_pool_idle_timeouts_hold_after_many_requests() {
    // Timers are armed lazily: requests move the client's keep-alive deadline and the pooled
    // connection's idle deadline later without touching the timer wheel. Both must still fire,
    // and neither early.
    let b = http_backend("b1", None);
    let p = Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"app\"\nkeepalive_timeout = \"1s\"",
        &[("app", &[b.addr], "pool_idle_timeout = \"400ms\"")],
    ));
    let mut c = Client::new(p.addr("web"));
    let started = std::time::Instant::now();
    let mut i = 0;
    // Longer than both timeouts, with gaps shorter than either.
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(c.get(&format!("/k{i}")).status, 200);
        i += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(
        b.accepted(),
        1,
        "the pooled connection was reused throughout"
    );
    // Idle now: the pooled upstream goes after 400ms, the client after 1s.
    let idle = std::time::Instant::now();
    assert!(c.closed(), "keep-alive timeout closes the idle client");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500),
        "closed after {waited:?}"
    );
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.get("/fresh").status, 200);
    assert_eq!(
        b.accepted(),
        2,
        "the idle pooled connection was closed, a new one was opened"
    );
}

#[test]
fn no_route_dead_backend_and_head_requests() {
    let cfg = http_config(
        "workers = 1",
        "[[listeners.routes]]\npath_prefix = \"/dead\"\ncluster = \"dead\"",
        &[("dead", &[dead_addr()], "connect_attempts = 1")],
    );
    let p = Proxy::start(&cfg);
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.get("/nowhere").status, 404);
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.get("/dead/x").status, 502);
    assert!(http_stat(&p, "upstream_errors") >= 1);

    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    c.send(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.recv(true).expect("HEAD response");
    assert_eq!(r.status, 200);
    assert!(header(&r.head, "content-length").is_some());
    // The connection continues right after a body-less HEAD response.
    assert_eq!(c.get("/after-head").field("path"), "/after-head");
}

#[test]
fn http_1_0_client_without_keep_alive_is_closed_after_the_response() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    c.send(b"GET /old HTTP/1.0\r\n\r\n");
    let r = c.recv(false).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.field("path"), "/old");
    assert!(c.closed());
}

#[test]
fn real_clients_curl_and_ab() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let url = format!("http://{}/curl?q=1", p.addr("web"));
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "5", "-d", "hello=world", &url])
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "curl failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(text.contains("path=/curl?q=1"), "{text}");
            assert!(text.contains("method=POST"), "{text}");
            assert!(text.contains("body_len=11"), "{text}");
        }
        Err(e) => panic!("curl is needed for this test (.ci/run installs it): {e}"),
    }
    // ab counts responses of differing lengths as failures: give it the demo backend, whose
    // answer to `/` never changes.
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "ab"],
        &["demo-backend"],
    );
    let p2 = Proxy::start(&http_config(
        "workers = 2",
        "cluster = \"demo\"",
        &[("demo", &[demo.addr("demo-backend")], "")],
    ));
    let ab = std::process::Command::new("ab")
        .args([
            "-q",
            "-n",
            "400",
            "-c",
            "8",
            "-k",
            &format!("http://{}/", p2.addr("web")),
        ])
        .output();
    match ab {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.contains("Complete requests:      400"), "{text}");
            assert!(text.contains("Failed requests:        0"), "{text}");
        }
        Err(e) => panic!("ab (apache2-utils) is needed for this test (.ci/run installs it): {e}"),
    }
}

#[test]
fn responses_by_length_chunked_and_until_close() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let want = |n: usize| fnv(&payload(42, n));
    let mut c = Client::new(p.addr("web"));
    let r = c.get("/dl?bytes=1048576");
    assert_eq!((r.status, r.body.len()), (200, 1 << 20));
    assert_eq!(fnv(&r.body), want(1 << 20));
    let r = c.get("/dl?chunked=20000000");
    assert!(header(&r.head, "transfer-encoding").is_some_and(|v| v.contains("chunked")));
    assert_eq!(r.body.len(), 20_000_000);
    assert_eq!(fnv(&r.body), want(20_000_000), "chunked download corrupted");
    // The connection survives both (keep-alive).
    assert_eq!(c.get("/next").field("path"), "/next");
    // A close-delimited response: the proxy passes it on and closes the client after it.
    c.send(b"GET /dl?close=300000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = read_head(&mut c.s, &mut c.pending).expect("head");
    assert!(head.contains("200"), "{head}");
    let mut body = std::mem::take(&mut c.pending);
    c.s.read_to_end(&mut body).expect("until close");
    assert_eq!(body.len(), 300_000);
    assert_eq!(fnv(&body), want(300_000));
}

/// A backend for long Content-Length bodies (which the proxy splices): `/big?n=N` answers N
/// pattern bytes; `&junk=1` writes stray bytes right behind the body in the same write;
/// `&cut=M` sends only M of the N bytes, then closes.
fn big_body_backend() -> Backend {
    Backend::spawn(Arc::new(|mut s: TcpStream, _st: &BackendState| {
        let mut pending = Vec::new();
        loop {
            let Some(head) = read_head(&mut s, &mut pending) else {
                return;
            };
            let target = head.split(' ').nth(1).unwrap_or_default().to_string();
            let param = |k: &str| {
                target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            let n = param("n").unwrap_or(3);
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
            let body = payload(42, n);
            match param("cut") {
                Some(m) => {
                    out.extend_from_slice(&body[..m.min(n)]);
                    let _ = s.write_all(&out);
                    return;
                }
                None => out.extend_from_slice(&body),
            }
            if param("junk").is_some() {
                out.extend_from_slice(b"JUNK JUNK JUNK\r\n\r\n");
            }
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }))
}

#[test]
fn long_bodies_are_spliced_exactly_and_the_connection_stays_in_step() {
    let b = big_body_backend();
    let p = simple(&b);
    let want = |n: usize| fnv(&payload(42, n));
    let mut c = Client::new(p.addr("web"));
    c.s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    for n in [3_000_000usize, 65_537, 40_000, 1 << 20] {
        let r = c.get(&format!("/big?n={n}"));
        assert_eq!((r.status, r.body.len()), (200, n));
        assert_eq!(fnv(&r.body), want(n), "body of {n} bytes corrupted");
    }
    assert_eq!(
        b.accepted(),
        1,
        "the upstream was reused after each spliced body"
    );
    // Pipelined: two long bodies and a short one in one write, answered in order.
    c.send(b"GET /big?n=200000 HTTP/1.1\r\nHost: a\r\n\r\nGET /big?n=100001 HTTP/1.1\r\nHost: a\r\n\r\nGET /big?n=5 HTTP/1.1\r\nHost: a\r\n\r\n");
    for n in [200_000usize, 100_001, 5] {
        let r = c.recv(false).expect("pipelined response");
        assert_eq!((r.status, r.body.len()), (200, n));
        assert_eq!(fnv(&r.body), want(n));
    }
    // A client that reads slowly: the body waits in the pipe and the socket buffers.
    c.send(b"GET /big?n=4000000 HTTP/1.1\r\nHost: a\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let r = c.recv(false).expect("slow-read response");
    assert_eq!((r.status, r.body.len()), (200, 4_000_000));
    assert_eq!(fnv(&r.body), want(4_000_000));
    // Stray bytes behind a spliced body: that upstream must not go back to the pool, or the
    // next response on it would be the junk.
    let r = c.get("/big?n=300000&junk=1");
    assert_eq!((r.status, r.body.len()), (200, 300_000));
    assert_eq!(fnv(&r.body), want(300_000));
    for _ in 0..3 {
        let r = c.get("/big?n=7");
        assert_eq!((r.status, r.body.len()), (200, 7), "{}", r.head);
    }
    assert_eq!(
        b.accepted(),
        2,
        "the connection with junk was closed, not pooled"
    );
    assert_eq!(http_stat(&p, "responses_5xx"), 0, "{}", p.stats());
    // The backend dies in the middle of a spliced body: the client is cut off, not left
    // waiting, and a new client is served.
    c.send(b"GET /big?n=2000000&cut=500000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = read_head(&mut c.s, &mut c.pending).expect("head");
    assert!(head.contains("200"), "{head}");
    assert!(c.closed(), "client cut off after a truncated body");
    let mut c = Client::new(p.addr("web"));
    let r = c.get("/big?n=100000");
    assert_eq!(fnv(&r.body), want(100_000));
    // Splicing off (no pipes): the same bodies go through buffers.
    let p = Proxy::start(&http_config(
        "workers = 1\nsplice_pipes_per_worker = 0",
        "cluster = \"app\"",
        &[("app", &[b.addr], "")],
    ));
    let mut c = Client::new(p.addr("web"));
    for n in [3_000_000usize, 65_537] {
        let r = c.get(&format!("/big?n={n}"));
        assert_eq!((r.status, r.body.len()), (200, n));
        assert_eq!(fnv(&r.body), want(n));
    }
}

#[test]
fn expect_100_continue_is_forwarded() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.recv(true).expect("interim response");
    assert_eq!(interim.status, 100, "{}", interim.head);
    c.send(b"hello");
    let r = c.recv(false).expect("final response");
    assert_eq!(r.status, 200);
    assert_eq!(r.field("body_len"), "5");
}

#[test]
fn slowloris_clients_do_not_stop_normal_traffic() {
    let b = http_backend("b1", None);
    let p = Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"app\"\nrequest_header_timeout = \"1s\"",
        &[("app", &[b.addr], "")],
    ));
    let addr = p.addr("web");
    // 300 clients that send their head a byte at a time, slower than the timeout allows.
    let mut slow: Vec<TcpStream> = (0..300).map(|_| connect(addr)).collect();
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1600) {
        for s in slow.iter_mut() {
            let _ = s.write_all(&b"GET / HTTP/1.1\r\nHost: a\r\n"[i % 26..i % 26 + 1]);
        }
        i += 1;
        // Normal traffic meanwhile is served promptly.
        let t = std::time::Instant::now();
        let mut c = Client::new(addr);
        assert_eq!(c.get("/normal").status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "normal request took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // By now every slow client has been cut off by the header timeout.
    let mut cut = 0;
    for s in slow.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // A 408 (as HAProxy answers), then the end: EOF, or a reset when the proxy closed
        // with unread bytes.
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                other => panic!("slow client still open: {other:?}"),
            }
        }
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&got)
        );
        cut += 1;
    }
    assert_eq!(cut, 300);
    assert!(p.tcp("idle_timeouts") >= 300, "{}", p.stats());
    assert_eq!(b.accepted(), 1, "slow heads never reached the backend");
}

#[test]
fn websocket_echo_through_the_proxy_with_a_real_client() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/ws_echo.py");
    let mut server = Command::new("python3")
        .args([script, "server"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed for this test");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = server.stdout.take().expect("stdout");
    let server = Kill(server);
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("server port");
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("ws server did not start (is `websockets` installed?): {line:?}")
        });
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let p = Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"ws\"",
        &[("ws", &[backend], "")],
    ));
    let url = format!("ws://{}/chat", p.addr("web"));
    let client = Command::new("python3")
        .args([script, "client", &url, "40"])
        .output()
        .expect("ws client");
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success() && stdout.contains("ok 40"),
        "websocket client failed: {stdout}\n{}",
        String::from_utf8_lossy(&client.stderr)
    );
    // The tunnel is closed cleanly and counted as a 101.
    p.wait_tcp("active", Duration::from_secs(5), |v| v == 0);
    assert_eq!(http_stat(&p, "responses_1xx"), 1, "{}", p.stats());
    drop(server);
}

#[test]
fn access_log_writes_one_json_line_per_request() {
    let b = http_backend("b1", None);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let p = Proxy::start(&http_config(
        &format!("workers = 2\naccess_log = {:?}", log.display().to_string()),
        "[[listeners.routes]]\npath_prefix = \"/app\"\ncluster = \"app\"",
        &[("app", &[b.addr], "")],
    ));
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.get("/app/one?q=\"x\"").status, 200);
    c.send(b"POST /app/two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(c.recv(false).expect("response").status, 200);
    assert_eq!(c.get("/elsewhere").status, 404);
    let lines = poll_until(Duration::from_secs(5), "three access-log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        (lines.len() >= 3).then_some(lines)
    });
    assert_eq!(lines.len(), 3);
    let first = &lines[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/app/one?q=\"x\"");
    assert_eq!(first["status"], 200);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["backend"], b.addr.to_string());
    assert!(u64_at(first, "/bytes") > 100, "{first}");
    assert!(first["duration_ms"].as_f64().is_some());
    assert!(
        first["time"].as_str().is_some_and(|t| t.starts_with("20")),
        "{first}"
    );
    assert!(first["worker"].as_u64().is_some());
    assert_eq!(lines[1]["method"], "POST");
    assert_eq!(lines[2]["status"], 404);
    assert!(lines[2]["backend"].is_null());
    assert_eq!(http_stat(&p, "access_log_dropped"), 0);
}

/// Sends `n` requests on one keep-alive connection, `extra` headers on each, and counts the
/// backends that answered (balancing is per request, not per connection).
fn spread(
    addr: SocketAddr,
    n: usize,
    extra: impl Fn(usize) -> String,
) -> std::collections::HashMap<String, usize> {
    let mut c = Client::new(addr);
    let mut counts = std::collections::HashMap::new();
    for i in 0..n {
        c.send(format!("GET /b{i} HTTP/1.1\r\nHost: a\r\n{}\r\n", extra(i)).as_bytes());
        let r = c.recv(false).expect("response");
        assert_eq!(r.status, 200);
        *counts.entry(r.field("id")).or_insert(0) += 1;
    }
    counts
}

fn three_backends() -> [Backend; 3] {
    [
        http_backend("a", None),
        http_backend("b", None),
        http_backend("c", None),
    ]
}

#[test]
fn per_request_balancing_round_robin_weighted_least_conn() {
    let bs = three_backends();
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    for (balance, weights, expect) in [
        ("round_robin", [1, 1, 1], [100, 100, 100]),
        ("weighted", [1, 2, 3], [50, 100, 150]),
        ("least_conn", [1, 1, 1], [100, 100, 100]),
    ] {
        let list: Vec<String> = addrs
            .iter()
            .zip(weights)
            .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
            .collect();
        let cfg = format!(
            "[server]\nworkers = 1\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n[[clusters]]\nname = \"app\"\nbalance = \"{balance}\"\nbackends = [{}]\n",
            list.join(", ")
        );
        let p = Proxy::start(&cfg);
        let counts = spread(p.addr("web"), 300, |_| String::new());
        for (id, want) in ["a", "b", "c"].iter().zip(expect) {
            let got = counts.get(*id).copied().unwrap_or(0);
            assert!(
                got.abs_diff(want) <= 3,
                "{balance}: {id} got {got}, want {want} ({counts:?})"
            );
        }
    }
}

#[test]
fn p2c_ewma_sends_less_to_a_slow_backend() {
    let fast1 = http_backend("fast1", None);
    let fast2 = http_backend("fast2", None);
    let slow = http_backend_slow("slow", None, Duration::from_millis(30));
    let p = Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"app\"",
        &[(
            "app",
            &[fast1.addr, fast2.addr, slow.addr],
            "balance = \"p2c_ewma\"",
        )],
    ));
    let counts = spread(p.addr("web"), 300, |_| String::new());
    let slow_share = counts.get("slow").copied().unwrap_or(0);
    assert!(
        slow_share < 30,
        "the slow backend got {slow_share} of 300: {counts:?}"
    );
    assert!(
        counts.contains_key("fast1") && counts.contains_key("fast2"),
        "{counts:?}"
    );
}

#[test]
fn hash_on_header_and_cookie_is_sticky_and_spreads() {
    let bs = three_backends();
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&http_config(
        "workers = 2",
        "cluster = \"app\"\n[[listeners.routes]]\npath_prefix = \"/c\"\ncluster = \"bycookie\"",
        &[
            (
                "app",
                &addrs,
                "balance = \"hash\"\nhash_on = \"header:X-User\"",
            ),
            (
                "bycookie",
                &addrs,
                "balance = \"hash\"\nhash_on = \"cookie:session\"",
            ),
        ],
    ));
    // The same user always lands on the same backend, from new connections and both workers.
    let mut owner = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let mut c = Client::new(p.addr("web"));
            c.send(format!("GET /x HTTP/1.1\r\nHost: a\r\nX-User: user-{user}\r\n\r\n").as_bytes());
            let id = c.recv(false).expect("response").field("id");
            let first = owner.entry(user).or_insert_with(|| id.clone());
            assert_eq!(*first, id, "user-{user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 users spread over all 3 backends: {owner:?}"
    );
    // Cookie hashing: one session value sticks; other cookies on the line do not matter.
    let mut c = Client::new(p.addr("web"));
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        c.send(
            format!(
                "GET /c/{i} HTTP/1.1\r\nHost: a\r\nCookie: theme=dark{i}; session=abc123\r\n\r\n"
            )
            .as_bytes(),
        );
        seen.insert(c.recv(false).expect("response").field("id"));
    }
    assert_eq!(seen.len(), 1, "cookie session=abc123 must stick: {seen:?}");
}

#[test]
fn hundred_mib_chunked_upload_and_download_through_the_proxy() {
    const N: usize = 100 * 1024 * 1024;
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "big"],
        &["demo-backend"],
    );
    let p = Proxy::start(&http_config(
        "workers = 2",
        "cluster = \"demo\"",
        &[("demo", &[demo.addr("demo-backend")], "")],
    ));
    let mut c = Client::new(p.addr("web"));
    c.s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // Upload: 100 MiB in chunks of odd sizes, streamed while the proxy forwards.
    let body = payload(9, N);
    let want_fnv = format!("{:016x}", fnv(&body));
    let mut w = c.s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("head");
        for piece in body.chunks(1_000_003) {
            w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .expect("size");
            w.write_all(piece).expect("data");
            w.write_all(b"\r\n").expect("crlf");
        }
        w.write_all(b"0\r\n\r\n").expect("last chunk");
    });
    let r = c.recv(false).expect("echo response");
    join_timeout(writer, Duration::from_secs(60), "upload writer");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("echo JSON");
    assert_eq!(v["body_len"], N as u64);
    assert_eq!(v["body_fnv64"], want_fnv.as_str(), "upload corrupted");
    // Download: 100 MiB chunked from /bytes, the pattern checked byte for byte by hash.
    let r = c.get(&format!("/bytes?n={N}&chunked=1"));
    assert_eq!(r.status, 200);
    assert!(header(&r.head, "transfer-encoding").is_some_and(|v| v.contains("chunked")));
    assert_eq!(r.body.len(), N);
    let mut h: u64 = 0xcbf29ce484222325;
    let mut bad = None;
    for (i, &b) in r.body.iter().enumerate() {
        let want = (((i % 251) * 31 + 7) % 256) as u8;
        if b != want && bad.is_none() {
            bad = Some(i);
        }
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    assert_eq!(
        bad, None,
        "download differs from the pattern at byte {bad:?}"
    );
    assert_eq!(h, fnv(&r.body));
}

#[test]
fn a_request_lost_on_a_reused_connection_is_retried_on_a_fresh_one() {
    // Backend that drops the second request of every connection without answering.
    let b = Backend::spawn(Arc::new(|mut s: TcpStream, _st: &BackendState| {
        let mut pending = Vec::new();
        for n in 0.. {
            let Some(head) = read_head(&mut s, &mut pending) else {
                return;
            };
            if n == 1 {
                return; // the proxy sent on a reused connection that now dies
            }
            let Some(_body) = read_body(&mut s, &mut pending, &head) else {
                return;
            };
            let path = head.split(' ').nth(1).unwrap_or_default().to_string();
            let body = format!("path={path}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }));
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.get("/first").status, 200);
    let r = c.get("/second");
    assert_eq!(r.status, 200, "GET retried on a fresh connection");
    assert_eq!(r.field("path"), "/second");
    assert_eq!(http_stat(&p, "retries"), 1, "{}", p.stats());
    // A POST with a body is not replayed: it gets 502.
    let mut c = Client::new(p.addr("web"));
    c.send(b"POST /third HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
    let r = c.recv(false).expect("response");
    assert_eq!(r.status, 502, "a POST body is not sent twice: {}", r.head);
    assert_eq!(http_stat(&p, "retries"), 1, "{}", p.stats());
    // Nor is an idempotent PUT whose body already went out: its bytes are consumed, and a
    // replayed head without them would leave the backend waiting for the body.
    let mut c = Client::new(p.addr("web"));
    assert_eq!(c.get("/warm").status, 200);
    c.s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.send(b"PUT /fourth HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
    let r = c
        .recv(false)
        .expect("a prompt response, not a stalled replay");
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(http_stat(&p, "retries"), 1, "{}", p.stats());
}

#[test]
fn a_request_lost_across_a_config_change_is_still_retried() {
    // Backend 0 answers the first request of each connection, so the proxy pools it. The
    // second request on a pooled connection waits while the test changes the configuration
    // (a weight of the other backend: the cluster keeps its backends); then it is dropped
    // without an answer, and so is every request backend 0 sees after it. The request had
    // started on the snapshot before the change: it must still be retried, and reach
    // backend 1 (once a soak's GET got 502 here: its fresh attempt was not allowed a retry).
    use std::sync::atomic::AtomicBool;
    let arrived = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let (a, g) = (Arc::clone(&arrived), Arc::clone(&go));
    let b0 = Backend::spawn(Arc::new(move |mut s: TcpStream, _st: &BackendState| {
        let mut pending = Vec::new();
        for n in 0.. {
            let Some(head) = read_head(&mut s, &mut pending) else {
                return;
            };
            if a.load(Ordering::SeqCst) {
                return;
            }
            if n == 1 {
                a.store(true, Ordering::SeqCst);
                let end = std::time::Instant::now() + Duration::from_secs(10);
                while !g.load(Ordering::SeqCst) && std::time::Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return;
            }
            let Some(_body) = read_body(&mut s, &mut pending, &head) else {
                return;
            };
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nid=b0\n")
                .is_err()
            {
                return;
            }
        }
    }));
    let b1 = http_backend("b1", None);
    let p = Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"app\"",
        &[(
            "app",
            &[b0.addr, b1.addr],
            "balance = \"round_robin\"\nretries = 1",
        )],
    ));
    let web = p.addr("web");
    let client = std::thread::spawn(move || {
        let mut c = Client::new(web);
        (0..4)
            .map(|i| {
                c.send(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
                c.recv(false)
                    .map_or((0, "no answer".to_string()), |r| (r.status, r.field("id")))
            })
            .collect::<Vec<_>>()
    });
    wait_until(
        Duration::from_secs(10),
        "a request on a pooled connection to backend 0",
        || arrived.load(Ordering::SeqCst),
    );
    let r = util::client::call(
        p.addr("admin"),
        "PATCH",
        &format!("/v1/clusters/app/backends/{}", b1.addr),
        Some("{\"weight\":2}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A new connection makes the worker follow the new snapshot.
    let _other = TcpStream::connect(web).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    go.store(true, Ordering::SeqCst);
    let answers = join_timeout(client, Duration::from_secs(20), "client");
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every GET answered: {answers:?}; {}",
        p.stats()
    );
    assert!(http_stat(&p, "retries") >= 1, "{}", p.stats());
}

#[test]
fn a_request_lost_after_its_backend_left_the_rotation_is_still_retried() {
    // Backend 0 holds the request it gets on a fresh connection while the test drains it
    // (the cluster's backend list changes), then closes without an answer. The request had
    // started on the snapshot that still listed backend 0: it must go to backend 1 (a
    // health check taking a backend down changes the list the same way).
    use std::sync::atomic::AtomicBool;
    let arrived = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let (a, g) = (Arc::clone(&arrived), Arc::clone(&go));
    let b0 = Backend::spawn(Arc::new(move |mut s: TcpStream, _st: &BackendState| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_none() {
            return;
        }
        a.store(true, Ordering::SeqCst);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !g.load(Ordering::SeqCst) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
    }));
    let b1 = http_backend("b1", None);
    let p = Proxy::start(&http_config(
        "workers = 1",
        "cluster = \"app\"",
        &[(
            "app",
            &[b0.addr, b1.addr],
            "balance = \"round_robin\"\nretries = 1",
        )],
    ));
    let web = p.addr("web");
    let client = std::thread::spawn(move || {
        (0..2)
            .map(|_| {
                let r = util::client::call(web, "GET", "/", None);
                (r.status, r.text())
            })
            .collect::<Vec<_>>()
    });
    wait_until(
        Duration::from_secs(10),
        "a request held by backend 0",
        || arrived.load(Ordering::SeqCst),
    );
    let r = util::client::call(
        p.addr("admin"),
        "PATCH",
        &format!("/v1/clusters/app/backends/{}", b0.addr),
        Some("{\"drain\":true}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A new connection makes the worker follow the new snapshot.
    let _other = TcpStream::connect(web).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    go.store(true, Ordering::SeqCst);
    let answers = join_timeout(client, Duration::from_secs(20), "client");
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every GET answered: {answers:?}; {}",
        p.stats()
    );
    assert!(http_stat(&p, "retries") >= 1, "{}", p.stats());
}

#[test]
fn absolute_form_targets_and_http_1_0_keep_alive() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let mut c = Client::new(p.addr("web"));
    c.send(b"GET http://Other.Example:8080/abs?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n");
    let r = c.recv(false).expect("response");
    assert_eq!(r.field("path"), "/abs?q=1", "origin-form upstream");
    assert_eq!(
        r.field("host"),
        "Other.Example:8080",
        "the absolute-form authority wins"
    );
    // HTTP/1.0 with keep-alive stays open and says so.
    let mut c = Client::new(p.addr("web"));
    for i in 0..3 {
        c.send(format!("GET /ten{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes());
        let r = c.recv(false).expect("response");
        assert_eq!(r.field("path"), format!("/ten{i}"));
        assert!(
            header(&r.head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "{}",
            r.head
        );
    }
}

#[test]
fn wrk_through_the_proxy_has_no_errors() {
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "wrk"],
        &["demo-backend"],
    );
    let p = Proxy::start(&http_config(
        "workers = 2",
        "cluster = \"demo\"",
        &[("demo", &[demo.addr("demo-backend")], "")],
    ));
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c20", "-d1s", &format!("http://{}/", p.addr("web"))])
        .output()
        .expect("wrk is needed for this test (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(requests > 100, "{text}");
    assert!(http_stat(&p, "responses_2xx") >= requests, "{}", p.stats());
}

#[test]
fn garbage_and_truncated_requests_never_hurt_the_proxy() {
    let b = http_backend("b1", None);
    let p = simple(&b);
    let addr = p.addr("web");
    let mut pattern = Pattern::new(1234);
    let valid = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n";
    for i in 0..300 {
        let mut c = Client::new(addr);
        let mut junk = vec![0u8; 1 + i * 7 % 3000];
        pattern.fill(&mut junk);
        let msg: Vec<u8> = match i % 3 {
            0 => junk,
            // A valid request cut at every length, then junk.
            1 => {
                let cut = i % valid.len();
                let mut m = valid[..cut].to_vec();
                m.extend_from_slice(&junk[..junk.len().min(40)]);
                m
            }
            // Valid bytes with one byte flipped.
            _ => {
                let mut m = valid.to_vec();
                let at = i % m.len();
                m[at] = junk[0];
                m
            }
        };
        let _ = c.s.write_all(&msg);
        let _ = c.s.shutdown(std::net::Shutdown::Write);
        let _ = c.s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut sink = Vec::new();
        let _ = c.s.read_to_end(&mut sink);
    }
    assert!(p.try_wait().is_none(), "the proxy died");
    let mut c = Client::new(addr);
    assert_eq!(c.get("/still-fine").status, 200);
    p.wait_tcp("active", Duration::from_secs(5), |v| v <= 1);
}
