//! `switchyard demo-backend` over real sockets: every HTTP endpoint, the `status` / `delay_ms`
//! parameters, chunked and Content-Length bodies both ways (100 MiB each way, checked by length and
//! checksum), pipelining order, bad framing, and curl as a real client.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{connect, payload, Proxy, KIB, MIB};

fn start_with(extra: &[&str]) -> Proxy {
    let mut args = vec!["demo-backend", "--listen", "127.0.0.1:0", "--id", "t1"];
    args.extend_from_slice(extra);
    Proxy::start_args(&args, &["demo-backend"])
}

fn start() -> Proxy {
    start_with(&[])
}

/// Byte `i` of a `/bytes` body, as documented in `src/demo_backend.rs`.
fn pattern_byte(i: u64) -> u8 {
    ((i % 251) * 31 + 7) as u8
}

fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Checks a `/bytes` body piece by piece against the pattern (memcmp against a table).
struct PatternCheck {
    table: Vec<u8>,
    off: u64,
}

impl PatternCheck {
    fn new() -> PatternCheck {
        PatternCheck {
            table: (0..251 + 64 * KIB as u64).map(pattern_byte).collect(),
            off: 0,
        }
    }
    fn check(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(64 * KIB);
            let start = (self.off % 251) as usize;
            assert!(
                data[..n] == self.table[start..start + n],
                "pattern mismatch in the 64 KiB from body offset {}",
                self.off
            );
            self.off += n as u64;
            data = &data[n..];
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"));
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// How the body of an answer is framed.
enum Framing {
    Length(u64),
    Chunked,
    None,
}

/// One client connection with a persistent read buffer, so pipelined answers can be read in turn.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            r: BufReader::with_capacity(256 * KIB, connect(addr)),
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.r.get_mut().write_all(data).expect("send");
    }

    fn line(&mut self) -> String {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l).expect("read line");
        assert!(
            l.ends_with(b"\r\n"),
            "line without CRLF: {:?}",
            String::from_utf8_lossy(&l)
        );
        l.truncate(l.len() - 2);
        String::from_utf8(l).expect("ASCII line")
    }

    /// Status line and headers.
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                return (status, headers);
            }
            let (n, v) = l.split_once(':').expect("header line");
            headers.push((n.to_string(), v.trim().to_string()));
        }
    }

    fn framing(status: u16, headers: &[(String, String)], head_req: bool) -> Framing {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if head_req || status == 204 || status == 304 {
            Framing::None
        } else if get("transfer-encoding") == Some("chunked") {
            Framing::Chunked
        } else {
            let len = get("content-length").expect("Content-Length or chunked");
            Framing::Length(len.parse().expect("numeric Content-Length"))
        }
    }

    /// Streams the body to `sink`; returns (length, largest chunk).
    fn body_with(&mut self, framing: Framing, mut sink: impl FnMut(&[u8])) -> (u64, u64) {
        let mut buf = vec![0u8; 64 * KIB];
        let mut copy = |r: &mut BufReader<TcpStream>, mut n: u64| {
            while n > 0 {
                let want = n.min(buf.len() as u64) as usize;
                let got = r.read(&mut buf[..want]).expect("read body");
                assert!(got > 0, "EOF inside a body");
                sink(&buf[..got]);
                n -= got as u64;
            }
        };
        match framing {
            Framing::None => (0, 0),
            Framing::Length(n) => {
                copy(&mut self.r, n);
                (n, n)
            }
            Framing::Chunked => {
                let (mut total, mut largest) = (0, 0);
                loop {
                    let size_line = self.line();
                    let size = u64::from_str_radix(&size_line, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                    if size == 0 {
                        assert_eq!(self.line(), "", "no trailers expected");
                        return (total, largest);
                    }
                    copy(&mut self.r, size);
                    assert_eq!(self.line(), "", "CRLF after chunk data");
                    total += size;
                    largest = largest.max(size);
                }
            }
        }
    }

    fn response_to(&mut self, head_req: bool) -> Resp {
        let (status, headers) = self.head();
        let framing = Client::framing(status, &headers, head_req);
        let mut body = Vec::new();
        self.body_with(framing, |d| body.extend_from_slice(d));
        Resp {
            status,
            headers,
            body,
        }
    }

    fn response(&mut self) -> Resp {
        self.response_to(false)
    }

    fn get(&mut self, target: &str) -> Resp {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.response()
    }

    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        self.r.read_to_end(&mut rest).expect("read to EOF");
        assert!(
            rest.is_empty(),
            "bytes after the last answer: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

fn get_once(addr: SocketAddr, target: &str) -> Resp {
    Client::new(addr).get(target)
}

#[test]
fn root_health_not_found_and_head() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    let r = c.get("/");
    assert_eq!((r.status, r.text()), (200, "t1\n"));
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let r = c.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"status":"OK!"}"#);

    let r = c.get("/health/x");
    assert_eq!((r.status, r.text()), (404, "not found\n"));

    // HEAD: same headers, no body (the next answer on the connection proves nothing followed).
    for target in [
        "/",
        "/health",
        "/api/v1/add?x=1&y=2",
        "/echo",
        "/bytes?n=1000",
    ] {
        let get = get_once(p.addr("demo-backend"), target);
        c.send(format!("HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let head = c.response_to(true);
        assert_eq!(head.status, get.status, "{target}");
        if target == "/echo" {
            // The echoed method differs: "HEAD" is one byte longer than "GET".
            let len = |r: &Resp| {
                r.header("content-length")
                    .map(|v| v.parse::<u64>().unwrap())
            };
            assert_eq!(len(&head), len(&get).map(|n| n + 1));
        } else {
            assert_eq!(
                head.header("content-length"),
                get.header("content-length"),
                "{target}"
            );
        }
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{target}"
        );
    }
    c.send(b"HEAD /bytes?n=7&chunked=1 HTTP/1.1\r\n\r\n");
    let r = c.response_to(true);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(c.get("/").text(), "t1\n");

    // HTTP/1.0: no chunked, Connection: close, then EOF.
    c.send(b"GET /bytes?n=10&chunked=1 HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.header("connection"), Some("close"));
    PatternCheck::new().check(&r.body);
    c.expect_eof();
}

#[test]
fn faas_add_multiply_and_errors() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    let ok = |r: Resp, result: &str| {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.text(),
            format!(r#"{{"Data":{{"Result":{result},"ServiceID":"t1"}}}}"#)
        );
    };
    ok(c.get("/api/v1/add?x=10&y=25"), "35");
    ok(c.get("/api/v1/multiply?x=10&y=25"), "250");
    ok(c.get("/api/v1/add?y=-7&x=3"), "-4");
    ok(
        c.get("/api/v1/multiply?x=-3037000499&y=3037000499"),
        "-9223372030926249001",
    );
    ok(
        c.get("/api/v1/add?x=9223372036854775807&y=0"),
        "9223372036854775807",
    );

    let bad_x = r#"{"Data":{"Msg":"Field x is either not valid or not present","Code":7}}"#;
    let bad_y = r#"{"Data":{"Msg":"Field y is either not valid or not present","Code":7}}"#;
    let overflow = r#"{"Data":{"Msg":"Result overflows","Code":7}}"#;
    for (target, body) in [
        ("/api/v1/add", bad_x),
        ("/api/v1/add?y=1", bad_x),
        ("/api/v1/add?x=&y=1", bad_x),
        ("/api/v1/add?x=1.5&y=1", bad_x),
        ("/api/v1/multiply?x=abc&y=zz", bad_x),
        ("/api/v1/add?x=99999999999999999999&y=1", bad_x),
        ("/api/v1/add?x=1", bad_y),
        ("/api/v1/multiply?x=1&y=0x10", bad_y),
        ("/api/v1/add?x=9223372036854775807&y=1", overflow),
        ("/api/v1/add?x=-9223372036854775808&y=-1", overflow),
        ("/api/v1/multiply?x=4294967296&y=4294967296", overflow),
    ] {
        let r = c.get(target);
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.text(), body, "{target}");
    }
    // Errors keep the connection usable.
    ok(c.get("/api/v1/add?x=1&y=1"), "2");
}

#[test]
fn echo_content_length_chunked_and_100_continue() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    c.send(b"POST /echo?a=1&b=%20 HTTP/1.1\r\nHost: h:1\r\nX-Odd: \"q\\\"\r\nContent-Length: 6\r\n\r\nh\xc3\xa9\n\x01!");
    let v = c.response().json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo?a=1&b=%20");
    assert_eq!(
        v["headers"],
        serde_json::json!([
            ["Host", "h:1"],
            ["X-Odd", "\"q\\\""],
            ["Content-Length", "6"]
        ])
    );
    assert_eq!(v["body"], "hé\n\u{1}!");
    assert_eq!(v["body_len"], 6);
    let body = b"h\xc3\xa9\n\x01!";
    assert_eq!(v["body_fnv64"], format!("{:016x}", fnv1a(FNV_OFFSET, body)));

    // No body.
    let v = c.get("/echo").json();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["body"], "");
    assert_eq!(v["body_len"], 0);
    assert_eq!(v["body_fnv64"], "cbf29ce484222325");

    // Chunked, with extensions and trailers, split over several writes.
    c.send(b"PUT /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nab");
    std::thread::sleep(Duration::from_millis(20));
    c.send(b"cd\r\nA \t;x\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n");
    let v = c.response().json();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body"], "abcd0123456789");
    assert_eq!(v["body_len"], 14);

    // A body over 64 KiB: length and hash only.
    let big = payload(7, 64 * KIB + 1);
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    c.send(&big);
    let v = c.response().json();
    assert!(v.get("body").is_none());
    assert_eq!(v["body_len"], big.len());
    assert_eq!(v["body_fnv64"], format!("{:016x}", fnv1a(FNV_OFFSET, &big)));

    // Exactly 64 KiB is still echoed.
    let exact = vec![b'z'; 64 * KIB];
    c.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n");
    c.send(&exact);
    c.send(b"\r\n0\r\n\r\n");
    let v = c.response().json();
    assert_eq!(v["body"].as_str().map(str::len), Some(64 * KIB));

    // Expect: 100-continue: the interim answer comes before any body byte is sent.
    for framing in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
        c.send(
            format!("POST /echo HTTP/1.1\r\nExpect: 100-continue\r\n{framing}\r\n\r\n").as_bytes(),
        );
        let (status, headers) = c.head();
        assert_eq!((status, headers.len()), (100, 0), "{framing}");
        c.send(if framing.starts_with("Content") {
            b"hello"
        } else {
            b"5\r\nhello\r\n0\r\n\r\n"
        });
        let v = c.response().json();
        assert_eq!(v["body"], "hello", "{framing}");
    }
}

#[test]
fn echo_100mib_chunked_upload() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    let t = Instant::now();
    let block = payload(42, MIB + 300 * KIB);
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Chunk sizes that do not line up with any buffer size.
    let sizes = [
        64 * KIB,
        1,
        300 * KIB - 3,
        4093,
        1000 * KIB,
        17,
        128 * KIB + 5,
    ];
    let total = 100 * MIB;
    let (mut sent, mut i, mut fnv) = (0, 0, FNV_OFFSET);
    let mut frame = Vec::with_capacity(1100 * KIB);
    while sent < total {
        let n = sizes[i % sizes.len()].min(total - sent);
        let off = (i * 7919) % (block.len() - n);
        let data = &block[off..off + n];
        fnv = fnv1a(fnv, data);
        frame.clear();
        frame.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\r\n");
        c.send(&frame);
        sent += n;
        i += 1;
    }
    c.send(b"0\r\n\r\n");
    let r = c.response();
    let v = r.json();
    assert!(v.get("body").is_none());
    assert_eq!(v["body_len"], total);
    assert_eq!(v["body_fnv64"], format!("{fnv:016x}"));
    // The connection is still good.
    assert_eq!(c.get("/").text(), "t1\n");
    eprintln!("100 MiB chunked upload: {:?}", t.elapsed());
}

#[test]
fn bytes_content_length_and_chunked_small() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    for (target, len, chunked) in [
        ("/bytes?n=1048576", MIB as u64, false),
        ("/bytes?n=1048576&chunked=1", MIB as u64, true),
        ("/bytes?n=0", 0, false),
        ("/bytes?n=0&chunked=1", 0, true),
        ("/bytes?n=65537&chunked=1&chunked=0", 65537, true), // first occurrence counts
        ("/bytes?chunked=0&n=251", 251, false),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes());
        let (status, headers) = c.head();
        assert_eq!(status, 200, "{target}");
        let framing = Client::framing(status, &headers, false);
        let is_chunked = matches!(framing, Framing::Chunked);
        assert_eq!(is_chunked, chunked, "{target}");
        let mut check = PatternCheck::new();
        let (got, largest) = c.body_with(framing, |d| check.check(d));
        assert_eq!(got, len, "{target}");
        if chunked {
            assert!(largest <= 64 * KIB as u64, "{target}: chunk of {largest}");
        }
    }
    for bad in [
        "/bytes",
        "/bytes?n=-1",
        "/bytes?n=1073741825",
        "/bytes?n=1&chunked=2",
    ] {
        let r = c.get(bad);
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.text().starts_with("invalid "), "{bad}: {}", r.text());
    }
    c.send(b"HEAD /bytes?n=1073741824 HTTP/1.1\r\n\r\n");
    let r = c.response_to(true);
    assert_eq!(r.header("content-length"), Some("1073741824"));
}

#[test]
fn bytes_100mib_chunked_download() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    let t = Instant::now();
    c.send(b"GET /bytes?n=104857600&chunked=1 HTTP/1.1\r\n\r\n");
    let (status, headers) = c.head();
    assert_eq!(status, 200);
    let framing = Client::framing(status, &headers, false);
    assert!(matches!(framing, Framing::Chunked));
    let mut check = PatternCheck::new();
    let (len, largest) = c.body_with(framing, |d| check.check(d));
    assert_eq!(len, 100 * MIB as u64);
    assert_eq!(largest, 64 * KIB as u64);
    assert_eq!(c.get("/").text(), "t1\n");
    eprintln!("100 MiB chunked download: {:?}", t.elapsed());
}

#[test]
fn status_parameter() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    for target in [
        "/?status=503",
        "/health?status=503",
        "/api/v1/add?status=503",
    ] {
        let r = c.get(target);
        assert_eq!((r.status, r.text()), (503, "t1\n"), "{target}");
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    let r = c.get("/nope?status=200");
    assert_eq!((r.status, r.text()), (200, "t1\n"));
    let r = c.get("/bytes?n=99&status=599");
    assert_eq!((r.status, r.text()), (599, "t1\n"));
    // No body for 204 / 304; the connection stays in step.
    for status in [204, 304] {
        let r = c.get(&format!("/?status={status}"));
        assert_eq!(r.status, status);
        assert_eq!(r.header("content-length"), None);
        assert_eq!(c.get("/").text(), "t1\n");
    }
    let r = c.get("/?status=205");
    assert_eq!((r.status, r.header("content-length")), (205, Some("0")));
    for bad in [
        "/?status=99",
        "/?status=101",
        "/?status=600",
        "/?status=",
        "/?status=abc",
    ] {
        let r = c.get(bad);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.text(), "invalid status (200..=599)\n");
    }
    for bad in ["/?delay_ms=60001", "/?delay_ms=-1", "/health?delay_ms=x"] {
        let r = c.get(bad);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.text(), "invalid delay_ms (0..=60000)\n");
    }
    assert_eq!(c.get("/").text(), "t1\n");
}

#[test]
fn delay_is_measured_and_does_not_block_other_connections() {
    // One worker, so the second connection shares the event loop with the delayed one.
    let p = start_with(&["--workers", "1"]);
    let addr = p.addr("demo-backend");
    let mut a = Client::new(addr);
    let mut b = Client::new(addr);
    assert_eq!(b.get("/").status, 200); // b is accepted and served

    let t0 = Instant::now();
    a.send(b"GET /?delay_ms=400 HTTP/1.1\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..5 {
        let r = b.get("/api/v1/add?x=1&y=1");
        assert_eq!(r.status, 200);
    }
    let b_done = t0.elapsed();
    assert!(
        b_done < Duration::from_millis(300),
        "second connection waited for the delay: {b_done:?}"
    );
    let r = a.response();
    let a_done = t0.elapsed();
    assert_eq!((r.status, r.text()), (200, "t1\n"));
    assert!(a_done >= Duration::from_millis(400), "{a_done:?}");
    assert!(a_done < Duration::from_millis(2000), "{a_done:?}");

    // Combined with status, on another path; a body is received before the delay starts.
    let t0 = Instant::now();
    a.send(b"POST /echo?status=503&delay_ms=150 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    let r = a.response();
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!((r.status, r.text()), (503, "t1\n"));

    // Several delayed connections at once are not serialised by the worker.
    let t0 = Instant::now();
    let mut clients: Vec<Client> = (0..8).map(|_| Client::new(addr)).collect();
    for c in &mut clients {
        c.send(b"GET /health?delay_ms=300 HTTP/1.1\r\n\r\n");
    }
    for c in &mut clients {
        assert_eq!(c.response().status, 200);
    }
    let all = t0.elapsed();
    assert!(
        all >= Duration::from_millis(300) && all < Duration::from_millis(1500),
        "{all:?}"
    );

    // Requests pipelined behind a delayed one, then the client half-closes: all are answered,
    // in order, before the server closes.
    let mut h = Client::new(addr);
    let t0 = Instant::now();
    h.send(b"GET /?delay_ms=100 HTTP/1.1\r\n\r\nGET /health?delay_ms=50 HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n");
    h.r.get_ref().shutdown(Shutdown::Write).unwrap();
    assert_eq!(h.response().text(), "t1\n");
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(h.response().text(), r#"{"status":"OK!"}"#);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(h.response().status, 404);
    h.expect_eof();

    // A delayed answer on a connection the client closed early does not disturb the worker.
    let mut gone = connect(addr);
    gone.write_all(b"GET /?delay_ms=100 HTTP/1.1\r\n\r\n")
        .unwrap();
    drop(gone);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(b.get("/").status, 200);
}

#[test]
fn pipelined_mix_is_answered_in_order() {
    let p = start();
    let mut c = Client::new(p.addr("demo-backend"));
    let mut batch = Vec::new();
    batch.extend_from_slice(b"GET /?delay_ms=150 HTTP/1.1\r\nHost: t\r\n\r\n");
    batch.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    batch.extend_from_slice(b"GET /api/v1/add?x=1&y=2&delay_ms=50 HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"GET /bytes?n=300000&chunked=1 HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"HEAD /bytes?n=5 HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    batch.extend_from_slice(b"GET /?status=503 HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"GET /bytes?n=70000 HTTP/1.1\r\n\r\n");
    for _ in 0..10 {
        batch.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    }
    batch.extend_from_slice(b"GET /api/v1/multiply?x=3&y=x HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    batch.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n"); // after "close": never answered
    let t0 = Instant::now();
    c.send(&batch);

    let r = c.response();
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!((r.status, r.text()), (200, "t1\n"));
    assert_eq!(c.response().text(), r#"{"status":"OK!"}"#);
    assert_eq!(c.response().json()["body"], "hello");
    let r = c.response();
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.json()["Data"]["Result"], 3);
    let r = c.response();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 300000);
    PatternCheck::new().check(&r.body);
    let r = c.response_to(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    assert_eq!(c.response().json()["body"], "abc");
    assert_eq!(c.response().status, 503);
    let r = c.response();
    assert_eq!(r.body.len(), 70000);
    PatternCheck::new().check(&r.body);
    for _ in 0..10 {
        assert_eq!(c.response().text(), "t1\n");
    }
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Field y"));
    let r = c.response();
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    c.expect_eof();
}

#[test]
fn bad_framing_is_400_and_close() {
    let p = start();
    let addr = p.addr("demo-backend");
    for bad in [
        &b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad\nTrailer\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    ] {
        let mut c = Client::new(addr);
        // A good request first, so the 400 is known to come from the bad one.
        let mut input = b"GET /health HTTP/1.1\r\n\r\n".to_vec();
        input.extend_from_slice(bad);
        c.send(&input);
        assert_eq!(c.response().status, 200);
        let r = c.response();
        let what = String::from_utf8_lossy(bad);
        assert_eq!(r.status, 400, "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        c.expect_eof();
    }
}

#[test]
fn curl_get_and_chunked_upload() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: skipped");
        return;
    }
    let p = start();
    let base = format!("http://{}", p.addr("demo-backend"));
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("{base}/api/v1/multiply?x=6&y=7"),
        ])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"Data":{"Result":42,"ServiceID":"t1"}}"#
    );

    // curl sends a body from stdin with Transfer-Encoding: chunked.
    let data = payload(3, 200 * KIB);
    let mut child = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "@-",
            &format!("{base}/echo"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&data)
        .expect("feed curl");
    let out = child.wait_with_output().expect("curl output");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["method"], "POST");
    assert!(v["headers"]
        .as_array()
        .is_some_and(|h| h.iter().any(|kv| kv[1] == "chunked")));
    assert_eq!(v["body_len"], data.len());
    assert_eq!(
        v["body_fnv64"],
        format!("{:016x}", fnv1a(FNV_OFFSET, &data))
    );
}
