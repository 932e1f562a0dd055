//! The demo backend's HTTP/1.1 side: reads requests (heads with `httparse`, framing with the
//! message layer's `http::head::Framing`, chunked bodies with `http::chunked`), routes them
//! to an answer and queues it. Pure: bytes in, answer bytes out; the worker in `mod.rs` does
//! the I/O. HOT PATH: `GET /` copies a prebuilt answer and allocates nothing.

use super::responses::{
    push_hex, push_i64, push_json_str, push_u64, write_body_answer, write_head, Len, Responses,
    Stream, BAD_X_BODY, BAD_Y_BODY, CONN_CLOSE, CONN_KEEP_ALIVE, CONN_NONE, HEALTH, JSON,
    NOT_FOUND, OCTETS, OVERFLOW_BODY, ROOT, TEXT,
};
use crate::http::chunked::Chunked;
use crate::http::head::{list_contains, BodyKind, ConnectionTokens, Framing};
use std::time::{Duration, Instant};

/// An HTTP request head longer than this is answered 400.
pub(super) const MAX_PENDING_INPUT: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// `/echo` includes the body itself only up to this size.
const ECHO_BODY_MAX: usize = 64 * 1024;
/// Largest `/bytes?n=`.
const MAX_BYTES_N: u64 = 1 << 30;
const MAX_DELAY_MS: u32 = 60_000;
/// Chunked request bodies: total trailer bytes accepted (field lines with their CRLFs).
const MAX_TRAILER_BYTES: usize = 64 * 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const BAD_STATUS: &str = "invalid status (200..=599)";
const BAD_DELAY: &str = "invalid delay_ms (0..=60000)";
const BAD_N: &str = "invalid n (0..=1073741824)";
const BAD_CHUNKED: &str = "invalid chunked (0 or 1)";

/// Per-connection HTTP state carried between reads.
#[derive(Debug, Default)]
pub(super) struct HttpState {
    /// Framing of the request body being read (`Body::None` between requests).
    body: Body,
    /// The request being read; answered when its body ends.
    req: Req,
    sink: BodySink,
    /// A "close" answer was queued: ignore all further input.
    pub(super) closing: bool,
    /// A `?delay_ms=` answer: `out[hold_at..]` must not be sent before this instant.
    pub(super) hold_until: Option<Instant>,
    pub(super) hold_at: usize,
    /// A `/bytes` body still to be generated.
    pub(super) stream: Option<Stream>,
    /// Builds dynamic answer bodies (JSON); for `/echo`, holds the part built from the head.
    body_buf: Vec<u8>,
}

impl HttpState {
    /// Answers after the current one must wait: parsing stops.
    pub(super) fn blocked(&self) -> bool {
        self.hold_until.is_some() || self.stream.is_some()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Body {
    #[default]
    None,
    /// Bytes still to come.
    Length(u64),
    /// Decoded by the message layer's chunked parser (RFC 9112 grammar, with the optional
    /// whitespace a server may accept).
    Chunked(Chunked),
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

/// What the request head says about the connection and the body.
#[derive(Debug, PartialEq, Eq)]
struct HeadInfo {
    keep_alive: bool,
    content_length: u64,
    chunked: bool,
    expect_continue: bool,
}

/// Reads the framing headers with the message layer's parsers (`http::head`: one
/// Content-Length and Transfer-Encoding parser in the tree); `None` = unacceptable request
/// (answer 400 and close).
fn head_info(version: u8, headers: &[httparse::Header<'_>]) -> Option<HeadInfo> {
    let mut framing = Framing::default();
    let mut conn = ConnectionTokens::default();
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        if framing.take(name, h.value).ok()? {
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue |= list_contains(h.value, b"100-continue");
        }
    }
    let http11 = version == 1;
    let (content_length, chunked) = match framing.request_body(http11).ok()? {
        BodyKind::None => (0, false),
        BodyKind::Length(n) => (n, false),
        BodyKind::Chunked => (0, true),
        BodyKind::CloseDelimited => return None, // responses only
    };
    Some(HeadInfo {
        keep_alive: conn.keep_alive(http11),
        content_length,
        chunked,
        expect_continue,
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
pub(super) fn process_http(
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
                match dec.decode(input.get(pos..).unwrap_or_default(), |d| sink.absorb(d)) {
                    Ok(p) if p.done => {
                        pos += p.consumed;
                        st.body = Body::None;
                        finish(st, responses, out);
                    }
                    Ok(p) => {
                        pos += p.consumed;
                        st.body = Body::Chunked(dec);
                    }
                    Err(_) => {
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
                    st.body = Body::Chunked(Chunked::new(MAX_TRAILER_BYTES).with_bws());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::responses::{fill_stream, pattern_byte, STREAM_BATCH};

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
    fn chunked_framing_errors_are_400_and_close() {
        // The message layer's grammar, with the whitespace around `;` a server may accept.
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
            b"5;a b\r\n",
            b"0\r\n Folded: x\r\n\r\n",
        ] {
            let mut req = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            req.extend_from_slice(bad);
            let (_, st, out) = http(&req);
            assert!(st.closing, "{:?}", String::from_utf8_lossy(bad));
            assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        }
        let mut long_ext = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        long_ext.resize(long_ext.len() + 4097, b'e');
        assert!(http(&long_ext).1.closing);
        // 16 hex digits is fine (the size is only counted down as data arrives).
        let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000A\r\n0123";
        let (used, st, out) = http(req);
        assert_eq!((used, st.closing, out.as_str()), (req.len(), false, ""));
    }

    #[test]
    fn framing_headers_follow_the_message_layer() {
        let info = |h: &[(&str, &str)], version| {
            let headers: Vec<httparse::Header<'_>> = h
                .iter()
                .map(|(n, v)| httparse::Header {
                    name: n,
                    value: v.as_bytes(),
                })
                .collect();
            head_info(version, &headers)
        };
        let cl = |v| info(&[("Content-Length", v)], 1).map(|i| i.content_length);
        assert_eq!(cl(" 42 "), Some(42));
        assert_eq!(cl("7, 7"), Some(7), "a list of one value");
        assert_eq!(cl("7, 8"), None);
        assert_eq!(cl(""), None);
        assert_eq!(cl("-1"), None);
        assert_eq!(cl("99999999999999999999"), None);
        let i = info(
            &[
                ("Transfer-Encoding", "gzip, chunked"),
                ("Connection", "Upgrade, close"),
                ("Expect", "100-continue"),
            ],
            1,
        )
        .unwrap();
        assert!(i.chunked && !i.keep_alive && i.expect_continue);
        let i = info(&[("connection", "keep-alive")], 0).unwrap();
        assert!(i.keep_alive && !i.chunked && i.content_length == 0);
        assert!(!info(&[], 0).unwrap().keep_alive);
        assert!(info(&[], 1).unwrap().keep_alive);
    }
}
