//! Writes the request head sent upstream from a validated client head, and small complete
//! error responses, into a caller's buffer. Body bytes are never touched: `Content-Length` and
//! `Transfer-Encoding` go upstream with the same meaning, so the body is forwarded as is.
//!
//! HOT PATH: no allocation, no panics on input. Output goes into a `&mut [u8]`; a head that
//! does not fit is `Err(Overflow)` and nothing more. Numbers and IP addresses are formatted
//! through `core::fmt` straight into that buffer.
//!
//! What changes on the way upstream:
//! - request line: the method as sent, an origin-form target (absolute-form converted,
//!   `strip_prefix` applied to the path, the query kept), always `HTTP/1.1`;
//! - `Host`: kept in place, or the absolute-form authority (which wins), or added first;
//! - hop-by-hop headers removed: `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`,
//!   `Trailer`, `Upgrade` (kept for an upgrade, with `Connection: upgrade` added) and every
//!   header named in `Connection` — except `Host`, the framing headers and the forwarding
//!   headers, which a client must not be able to strip that way;
//! - framing: one `Content-Length` with the validated number; the `Transfer-Encoding` lines
//!   joined into one (same codings, same order);
//! - `X-Forwarded-For` appended to, `X-Forwarded-Proto` and `X-Forwarded-Host` replaced,
//!   `X-Request-Id` added when the client sent none.

use std::fmt;
use std::net::IpAddr;

use super::head::{list_elements, slice, split_query, BodyKind, HeaderLines, Method, RequestHead};

/// What the proxy knows about the client connection and the route.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// `client_ip` already written as text ([`write_ip`]), for connections that send many
    /// requests; empty: formatted here.
    pub client_text: &'a [u8],
    /// `X-Forwarded-Proto`, e.g. `"http"`.
    pub proto: &'static str,
    /// Bytes at the start of the path to drop (the matched route prefix); the path sent keeps
    /// a leading `/` and is never empty. Larger than the path: the whole path is dropped.
    pub strip_prefix: usize,
    /// `X-Request-Id` to add when the request has none. Empty, or not a valid header value:
    /// nothing is added.
    pub request_id: &'a [u8],
}

/// The output buffer is too small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Writes `ip` as text (what `X-Forwarded-For` carries); returns its length.
pub fn write_ip(ip: IpAddr, out: &mut [u8]) -> Result<usize, Overflow> {
    let mut w = Out::new(out);
    w.ip(ip)?;
    Ok(w.len)
}

/// Writes the request head to send upstream into `out`; returns its length.
pub fn write_request_head(
    buf: &[u8],
    head: &RequestHead,
    fwd: &Forwarded,
    out: &mut [u8],
) -> Result<usize, Overflow> {
    let absolute_authority = head.absolute_form_authority.as_ref().map(|r| slice(buf, r));
    let host_value = head.host.as_ref().map(|r| slice(buf, r));
    let effective_host = absolute_authority.or(host_value).unwrap_or_default();

    // What the parser saw of the headers (one pass over them, not two).
    let has_host = head.host.is_some();
    let has_request_id = head.has_request_id;
    let connection_names_headers = head.connection_names;

    let mut w = Out::new(out);
    w.put(slice(buf, &head.method_range))?;
    w.put(b" ")?;
    write_target(&mut w, buf, head, fwd.strip_prefix)?;
    w.put(b" HTTP/1.1\r\n")?;
    if !has_host {
        // An HTTP/1.0 request without Host: upstream is HTTP/1.1 and needs one (RFC 9112 §3.2
        // says empty when there is no authority).
        w.header(b"Host", effective_host)?;
    }

    let mut host_written = false;
    let mut length_written = false;
    let mut te_written = false;
    for (name, value) in head.headers.iter(buf, head.head_len) {
        match Class::of(name) {
            Class::Host => {
                if !host_written {
                    w.header(name, absolute_authority.unwrap_or(value))?;
                    host_written = true;
                }
            }
            Class::ContentLength => {
                if !length_written {
                    length_written = true;
                    match head.body {
                        BodyKind::Length(n) => {
                            w.put(name)?;
                            w.put(b": ")?;
                            w.decimal(n)?;
                            w.put(b"\r\n")?;
                        }
                        _ => w.header(name, value)?,
                    }
                }
            }
            Class::TransferEncoding => {
                if !te_written {
                    te_written = true;
                    w.put(name)?;
                    w.put(b": ")?;
                    w.join_values(buf, head.head_len, Class::TransferEncoding)?;
                    w.put(b"\r\n")?;
                }
            }
            Class::Upgrade => {
                if head.upgrade {
                    w.header(name, value)?;
                }
            }
            Class::Connection | Class::HopByHop | Class::ForwardedFor | Class::SetByProxy => {}
            Class::RequestId => w.header(name, value)?,
            Class::Other => {
                if !(connection_names_headers && named_in_connection(buf, head.head_len, name)) {
                    w.header(name, value)?;
                }
            }
        }
    }

    w.put(b"X-Forwarded-For: ")?;
    if head.has_forwarded_for && w.join_values(buf, head.head_len, Class::ForwardedFor)? {
        w.put(b", ")?;
    }
    if fwd.client_text.is_empty() {
        w.ip(fwd.client_ip)?;
    } else {
        w.put(fwd.client_text)?;
    }
    w.put(b"\r\n")?;
    if is_clean_value(fwd.proto.as_bytes()) {
        w.header(b"X-Forwarded-Proto", fwd.proto.as_bytes())?;
    }
    if !effective_host.is_empty() {
        w.header(b"X-Forwarded-Host", effective_host)?;
    }
    if !has_request_id && !fwd.request_id.is_empty() && is_clean_value(fwd.request_id) {
        w.header(b"X-Request-Id", fwd.request_id)?;
    }
    if head.upgrade {
        w.header(b"Connection", b"upgrade")?;
    }
    w.put(b"\r\n")?;
    Ok(w.len)
}

/// Writes a complete `HTTP/1.1 <status> <reason>` response with a `text/plain` body and
/// `Connection: close`; returns its length.
pub fn error_response(status: u16, body: &[u8], out: &mut [u8]) -> Result<usize, Overflow> {
    typed_response(status, b"text/plain", body, out)
}

/// A complete small response with the given content type (e.g. the FaaS gateway's JSON
/// errors), `Connection: close`.
pub fn typed_response(
    status: u16,
    content_type: &[u8],
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, Overflow> {
    let head_len = typed_response_head(status, content_type, body.len(), out)?;
    let mut w = Out {
        buf: out,
        len: head_len,
    };
    w.put(body)?;
    Ok(w.len)
}

/// The head of [`error_response`] alone, for an answer to HEAD (same `Content-Length`, no
/// body).
pub fn error_response_head(
    status: u16,
    content_length: usize,
    out: &mut [u8],
) -> Result<usize, Overflow> {
    typed_response_head(status, b"text/plain", content_length, out)
}

fn typed_response_head(
    status: u16,
    content_type: &[u8],
    content_length: usize,
    out: &mut [u8],
) -> Result<usize, Overflow> {
    let mut w = Out::new(out);
    w.put(b"HTTP/1.1 ")?;
    w.display(status)?;
    w.put(b" ")?;
    w.put(reason_phrase(status).as_bytes())?;
    w.put(b"\r\nContent-Type: ")?;
    w.put(content_type)?;
    w.put(b"\r\nContent-Length: ")?;
    w.display(content_length)?;
    // 503 is always "try again later" here (no backend, or a limit): say when.
    if status == 503 {
        w.put(b"\r\nRetry-After: 1")?;
    }
    w.put(b"\r\nConnection: close\r\n\r\n")?;
    Ok(w.len)
}

/// The RFC 9110 reason phrase; empty for codes it does not define (a valid status line).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// How the rewriter treats a header, by name (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    /// Keep-Alive, Proxy-Connection, TE, Trailer: always dropped.
    HopByHop,
    ForwardedFor,
    /// X-Forwarded-Proto, X-Forwarded-Host: replaced by the proxy's own.
    SetByProxy,
    RequestId,
    Other,
}

impl Class {
    fn of(name: &[u8]) -> Class {
        // Dispatch on length first: most headers are compared against nothing.
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 if is(b"te") => Class::HopByHop,
            4 if is(b"host") => Class::Host,
            7 if is(b"upgrade") => Class::Upgrade,
            7 if is(b"trailer") => Class::HopByHop,
            10 if is(b"connection") => Class::Connection,
            10 if is(b"keep-alive") => Class::HopByHop,
            12 if is(b"x-request-id") => Class::RequestId,
            14 if is(b"content-length") => Class::ContentLength,
            15 if is(b"x-forwarded-for") => Class::ForwardedFor,
            16 if is(b"proxy-connection") => Class::HopByHop,
            16 if is(b"x-forwarded-host") => Class::SetByProxy,
            17 if is(b"transfer-encoding") => Class::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Class::SetByProxy,
            _ => Class::Other,
        }
    }
}

/// Is `name` listed in any `Connection` header? Only asked when some Connection header names
/// something other than close/keep-alive/upgrade, which is rare.
fn named_in_connection(buf: &[u8], head_len: usize, name: &[u8]) -> bool {
    HeaderLines::new(buf, head_len)
        .filter(|(n, _)| Class::of(n) == Class::Connection)
        .any(|(_, v)| list_elements(v).any(|t| t.eq_ignore_ascii_case(name)))
}

/// The origin-form target: see [`write_request_head`].
fn write_target(
    w: &mut Out<'_>,
    buf: &[u8],
    head: &RequestHead,
    strip_prefix: usize,
) -> Result<(), Overflow> {
    let target = slice(buf, &head.target);
    if head.method == Method::Connect || target == b"*" {
        return w.put(target);
    }
    let (path, query) = split_query(target);
    if head.method == Method::Options && head.absolute_form_authority.is_some() && target.is_empty()
    {
        // RFC 9112 §3.2.4: `OPTIONS http://host` is forwarded as `OPTIONS *`.
        return w.put(b"*");
    }
    let path = path.get(strip_prefix.min(path.len())..).unwrap_or_default();
    if path.first() != Some(&b'/') {
        w.put(b"/")?;
    }
    w.put(path)?;
    w.put(query)
}

/// Bytes a proxy-made header value may hold (no CR, LF, NUL or other controls).
fn is_clean_value(v: &[u8]) -> bool {
    // No early exit: the loop vectorises (these are checked on every request).
    v.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (b.wrapping_sub(b' ') < 0x5f))
    })
}

/// A cursor over the caller's output buffer (also used by [`crate::release`] for its
/// `Set-Cookie` lines).
pub(crate) struct Out<'o> {
    buf: &'o mut [u8],
    len: usize,
}

impl<'o> Out<'o> {
    pub(crate) fn new(buf: &'o mut [u8]) -> Self {
        Out { buf, len: 0 }
    }

    /// Bytes written so far.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// What was written so far.
    pub(crate) fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        let end = self.len.checked_add(bytes.len()).ok_or(Overflow)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Overflow)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn header(&mut self, name: &[u8], value: &[u8]) -> Result<(), Overflow> {
        self.put(name)?;
        self.put(b": ")?;
        self.put(value)?;
        self.put(b"\r\n")
    }

    fn display(&mut self, v: impl fmt::Display) -> Result<(), Overflow> {
        fmt::Write::write_fmt(self, format_args!("{v}")).map_err(|_| Overflow)
    }

    /// `v` in decimal, without going through `core::fmt` (hot: every Content-Length).
    pub(crate) fn decimal(&mut self, mut v: u64) -> Result<(), Overflow> {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..])
    }

    /// A client address as `Display` writes it; IPv4 without `core::fmt` (hot: every
    /// X-Forwarded-For).
    fn ip(&mut self, ip: IpAddr) -> Result<(), Overflow> {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.put(b".")?;
                    }
                    self.decimal(u64::from(octet))?;
                }
                Ok(())
            }
            IpAddr::V6(_) => self.display(ip),
        }
    }

    /// Writes the non-empty values of every header of class `class`, joined with ", ";
    /// returns whether anything was written.
    fn join_values(&mut self, buf: &[u8], head_len: usize, class: Class) -> Result<bool, Overflow> {
        let mut any = false;
        for (_, value) in HeaderLines::new(buf, head_len).filter(|(n, _)| Class::of(n) == class) {
            if value.is_empty() {
                continue;
            }
            if any {
                self.put(b", ")?;
            }
            self.put(value)?;
            any = true;
        }
        Ok(any)
    }
}

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::head::{parse_request, parse_response, Limits};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    fn fwd(strip_prefix: usize) -> Forwarded<'static> {
        Forwarded {
            client_ip: CLIENT,
            client_text: b"",
            proto: "http",
            strip_prefix,
            request_id: b"rid-1",
        }
    }

    fn rewrite_with(req: &[u8], f: &Forwarded) -> String {
        let head = parse_request(req, &Limits::default()).unwrap().unwrap();
        let mut out = [0u8; 4096];
        let n = write_request_head(req, &head, f, &mut out).unwrap();
        let text = String::from_utf8(out[..n].to_vec()).unwrap();
        // What goes upstream is itself a valid, strict request head of the same length.
        let again = parse_request(&out[..n], &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(again.head_len, n, "{text}");
        assert_eq!(again.body, head.body);
        text
    }

    fn rewrite(req: &[u8]) -> String {
        rewrite_with(req, &fwd(0))
    }

    #[test]
    fn a_client_address_written_once_is_the_same_text() {
        let mut text = [0u8; 48];
        let n = write_ip(CLIENT, &mut text).unwrap();
        assert_eq!(&text[..n], b"10.1.2.3");
        let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let cached = Forwarded {
            client_text: &text[..n],
            ..fwd(0)
        };
        assert_eq!(rewrite_with(req, &fwd(0)), rewrite_with(req, &cached));
    }

    const TAIL: &str = "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Request-Id: rid-1\r\n\r\n";

    #[test]
    fn clean_values_are_tab_and_visible_ascii_and_space() {
        for b in 0..=255u8 {
            let want = b == b'\t' || (b' '..=b'~').contains(&b);
            assert_eq!(is_clean_value(&[b]), want, "byte {b:#x}");
            assert_eq!(is_clean_value(&[b'a', b, b'z']), want, "byte {b:#x}");
        }
        assert!(is_clean_value(b""));
    }

    #[test]
    fn addresses_and_numbers_are_written_as_display_writes_them() {
        let ips: [IpAddr; 6] = [
            IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
            IpAddr::V4(Ipv4Addr::new(10, 1, 20, 100)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 9, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        ];
        for ip in ips {
            let mut buf = [0u8; 64];
            let mut w = Out::new(&mut buf);
            w.ip(ip).unwrap();
            let n = w.len;
            assert_eq!(&buf[..n], ip.to_string().as_bytes());
        }
        for v in [0u64, 7, 10, 1024, 1_048_576, u64::MAX] {
            let mut buf = [0u8; 32];
            let mut w = Out::new(&mut buf);
            w.decimal(v).unwrap();
            let n = w.len;
            assert_eq!(&buf[..n], v.to_string().as_bytes());
        }
        // Too small a buffer is an overflow, not a panic.
        let mut buf = [0u8; 6];
        let mut w = Out::new(&mut buf);
        assert_eq!(w.ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))), Err(Overflow));
    }

    #[test]
    fn simple_get() {
        assert_eq!(
            rewrite(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"),
            format!("GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n{TAIL}")
        );
    }

    #[test]
    fn http10_goes_up_as_http11_with_host_added() {
        assert_eq!(
            rewrite(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: \r\nAccept: */*\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n"
        );
        assert_eq!(
            rewrite(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: h\r\n\r\n"),
            format!("GET / HTTP/1.1\r\nHost: h\r\n{TAIL}")
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form_and_authority_wins() {
        assert_eq!(
            rewrite(b"GET http://a.example:8080/p?q=1 HTTP/1.1\r\nUser-Agent: u\r\nhost: other\r\n\r\n"),
            "GET /p?q=1 HTTP/1.1\r\nUser-Agent: u\r\nhost: a.example:8080\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example:8080\r\nX-Request-Id: rid-1\r\n\r\n"
        );
        // Empty path, query only, and HTTP/1.0 without Host: Host is added first.
        assert_eq!(
            rewrite(b"GET http://a?x=1 HTTP/1.0\r\nAccept: */*\r\n\r\n"),
            "GET /?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nX-Request-Id: rid-1\r\n\r\n"
        );
        assert!(
            rewrite(b"GET http://a HTTP/1.1\r\nHost: a\r\n\r\n").starts_with("GET / HTTP/1.1\r\n")
        );
    }

    #[test]
    fn strip_prefix() {
        let line = |req: &[u8], n: usize| {
            let text = rewrite_with(req, &fwd(n));
            text.split("\r\n").next().unwrap().to_string()
        };
        let r = b"GET /multiply/api/v1/add?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(line(r, 9), "GET /api/v1/add?x=1 HTTP/1.1");
        assert_eq!(line(r, 10), "GET /api/v1/add?x=1 HTTP/1.1");
        assert_eq!(line(r, 0), "GET /multiply/api/v1/add?x=1 HTTP/1.1");
        assert_eq!(
            line(b"GET /multiply?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", 9),
            "GET /?x=1 HTTP/1.1"
        );
        assert_eq!(
            line(b"GET /multiply HTTP/1.1\r\nHost: h\r\n\r\n", 9),
            "GET / HTTP/1.1"
        );
        assert_eq!(
            line(b"GET /multiply/ HTTP/1.1\r\nHost: h\r\n\r\n", 9),
            "GET / HTTP/1.1"
        );
        // More than the path: the query survives, the path becomes "/".
        assert_eq!(
            line(b"GET /m?x=/y HTTP/1.1\r\nHost: h\r\n\r\n", 50),
            "GET /?x=/y HTTP/1.1"
        );
        assert_eq!(
            line(b"GET http://h/multiply/z?q HTTP/1.1\r\nHost: h\r\n\r\n", 9),
            "GET /z?q HTTP/1.1"
        );
        assert_eq!(
            line(b"GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", 9),
            "GET /?q HTTP/1.1"
        );
    }

    #[test]
    fn special_targets() {
        let line = |req: &[u8]| rewrite(req).split("\r\n").next().unwrap().to_string();
        assert_eq!(
            line(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"),
            "OPTIONS * HTTP/1.1"
        );
        assert_eq!(
            line(b"OPTIONS http://h HTTP/1.1\r\nHost: h\r\n\r\n"),
            "OPTIONS * HTTP/1.1"
        );
        assert_eq!(
            line(b"OPTIONS http://h?x HTTP/1.1\r\nHost: h\r\n\r\n"),
            "OPTIONS /?x HTTP/1.1"
        );
        assert_eq!(
            line(b"OPTIONS http://h/x HTTP/1.1\r\nHost: h\r\n\r\n"),
            "OPTIONS /x HTTP/1.1"
        );
        assert_eq!(
            line(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"),
            "CONNECT h:443 HTTP/1.1"
        );
        assert_eq!(
            line(b"PROPFIND /d HTTP/1.1\r\nHost: h\r\n\r\n"),
            "PROPFIND /d HTTP/1.1"
        );
        // Strip never applies to CONNECT or `*`.
        let text = rewrite_with(b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", &fwd(3));
        assert!(text.starts_with("CONNECT h:443 HTTP/1.1\r\n"));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, x-other\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Secret: s\r\nX-Other: o\r\nX-Kept: k\r\n\r\n";
        assert_eq!(
            rewrite(req),
            format!("GET / HTTP/1.1\r\nHost: h\r\nX-Kept: k\r\n{TAIL}")
        );
        // Named in a second Connection header, case-insensitively.
        let req =
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-A: 1\r\nconnection: X-a\r\n\r\n";
        assert_eq!(rewrite(req), format!("GET / HTTP/1.1\r\nHost: h\r\n{TAIL}"));
    }

    #[test]
    fn connection_cannot_strip_framing_or_forwarding_headers() {
        let req = b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, Host, X-Forwarded-For, X-Request-Id, Transfer-Encoding, X-Forwarded-Proto\r\nContent-Length: 3\r\nX-Forwarded-For: 1.1.1.1\r\nX-Request-Id: mine\r\n\r\n";
        assert_eq!(
            rewrite(req),
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Request-Id: mine\r\nX-Forwarded-For: 1.1.1.1, 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
        );
        let req = b"POST / HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(rewrite(req).contains("\r\nTransfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn upgrade_is_kept_for_an_upgrade() {
        let req = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        assert_eq!(
            rewrite(req),
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Request-Id: rid-1\r\nConnection: upgrade\r\n\r\n"
        );
        // Upgrade header without the Connection token: not an upgrade, removed.
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(rewrite(req), format!("GET / HTTP/1.1\r\nHost: h\r\n{TAIL}"));
    }

    #[test]
    fn framing_headers_kept_and_normalised() {
        let req =
            b"PUT / HTTP/1.1\r\nHost: h\r\ncontent-length: 005\r\nContent-Length: 5, 5\r\n\r\n";
        assert_eq!(
            rewrite(req),
            format!("PUT / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n{TAIL}")
        );
        let req = b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nX: y\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            rewrite(req),
            format!(
                "PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nX: y\r\n{TAIL}"
            )
        );
    }

    #[test]
    fn forwarding_headers() {
        // All X-Forwarded-For instances joined; empty ones skipped; XFP/XFH replaced.
        let req = b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nHost: h:81\r\nx-forwarded-for:\r\nX-Forwarded-For: 3.3.3.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n";
        assert_eq!(
            rewrite(req),
            "GET / HTTP/1.1\r\nHost: h:81\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h:81\r\nX-Request-Id: rid-1\r\n\r\n"
        );
        let v6 = Forwarded {
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            client_text: b"",
            ..fwd(0)
        };
        assert!(rewrite_with(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &v6)
            .contains("\r\nX-Forwarded-For: ::1\r\n"));
        let v6 = Forwarded {
            client_ip: "2001:db8::1:0:0:1".parse().unwrap(),
            client_text: b"",
            ..fwd(0)
        };
        assert!(rewrite_with(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &v6)
            .contains("\r\nX-Forwarded-For: 2001:db8::1:0:0:1\r\n"));
    }

    #[test]
    fn request_id() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nx-request-id: abc\r\n\r\n";
        let text = rewrite(req);
        assert!(text.contains("\r\nx-request-id: abc\r\n"));
        assert!(!text.contains("rid-1"));
        let none = Forwarded {
            request_id: b"",
            ..fwd(0)
        };
        assert!(!rewrite_with(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &none).contains("X-Request-Id"));
        let bad = Forwarded {
            request_id: b"a\r\nX-Injected: 1",
            ..fwd(0)
        };
        let text = rewrite_with(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &bad);
        assert!(!text.contains("X-Injected") && !text.contains("X-Request-Id"));
    }

    #[test]
    fn header_casing_and_order_preserved() {
        let req = b"GET / HTTP/1.1\r\nuser-AGENT: u\r\nHOST: h\r\nAccept-Encoding: gzip\r\nX-Mixed-CASE: v\r\n\r\n";
        assert_eq!(
            rewrite(req),
            format!("GET / HTTP/1.1\r\nuser-AGENT: u\r\nHOST: h\r\nAccept-Encoding: gzip\r\nX-Mixed-CASE: v\r\n{TAIL}")
        );
    }

    #[test]
    fn overflow_at_every_short_length() {
        let req = b"GET http://h/x?y HTTP/1.1\r\nHost: h\r\nConnection: X-A\r\nX-A: 1\r\nContent-Length: 10\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";
        let head = parse_request(req, &Limits::default()).unwrap().unwrap();
        let mut big = [0u8; 1024];
        let need = write_request_head(req, &head, &fwd(0), &mut big).unwrap();
        for len in 0..need {
            let mut out = vec![0u8; len];
            assert_eq!(
                write_request_head(req, &head, &fwd(0), &mut out),
                Err(Overflow),
                "len {len}"
            );
        }
        let mut exact = vec![0u8; need];
        assert_eq!(
            write_request_head(req, &head, &fwd(0), &mut exact),
            Ok(need)
        );
        assert_eq!(exact[..], big[..need]);
    }

    #[test]
    fn mismatched_head_does_not_panic() {
        let req = b"GET /abc HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut head = parse_request(req, &Limits::default()).unwrap().unwrap();
        head.target = 100..200;
        head.method_range = 5..2000;
        head.head_len = 9999;
        let mut out = [0u8; 512];
        assert!(write_request_head(req, &head, &fwd(7), &mut out).is_ok());
        assert!(write_request_head(b"", &head, &fwd(7), &mut out).is_ok());
    }

    #[test]
    fn error_responses() {
        let mut out = [0u8; 256];
        let n = error_response(502, b"bad gateway\n", &mut out).unwrap();
        let expect = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad gateway\n";
        assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), expect);
        let parsed = parse_response(
            &out[..n],
            crate::http::head::Method::Get,
            &Limits::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((parsed.status, parsed.keep_alive), (502, false));
        assert_eq!(parsed.body, BodyKind::Length(12));
        for len in 0..n {
            let mut short = vec![0u8; len];
            assert_eq!(
                error_response(502, b"bad gateway\n", &mut short),
                Err(Overflow),
                "len {len}"
            );
        }
        let n = error_response_head(404, 10, &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        );
        // Unknown code: empty reason, still a valid status line.
        let n = error_response(599, b"", &mut out).unwrap();
        assert!(out[..n].starts_with(b"HTTP/1.1 599 \r\n"));
        assert!(parse_response(
            &out[..n],
            crate::http::head::Method::Get,
            &Limits::default()
        )
        .unwrap()
        .is_some());
    }

    #[test]
    fn reason_phrases() {
        for (code, reason) in [
            (200, "OK"),
            (400, "Bad Request"),
            (414, "URI Too Long"),
            (431, "Request Header Fields Too Large"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
            (0, ""),
            (999, ""),
        ] {
            assert_eq!(reason_phrase(code), reason);
        }
        // Every Reject status has a phrase.
        for r in [
            crate::http::head::Reject::HeadTooLarge,
            crate::http::head::Reject::UriTooLong,
            crate::http::head::Reject::Malformed(""),
            crate::http::head::Reject::UnsupportedVersion,
            crate::http::head::Reject::BadResponse(""),
        ] {
            assert!(!reason_phrase(r.status()).is_empty());
        }
    }

    #[test]
    fn header_classes() {
        for (name, class) in [
            (&b"TE"[..], Class::HopByHop),
            (b"Host", Class::Host),
            (b"UPGRADE", Class::Upgrade),
            (b"trailer", Class::HopByHop),
            (b"Connection", Class::Connection),
            (b"Keep-Alive", Class::HopByHop),
            (b"X-Request-ID", Class::RequestId),
            (b"Content-Length", Class::ContentLength),
            (b"X-Forwarded-For", Class::ForwardedFor),
            (b"Proxy-Connection", Class::HopByHop),
            (b"X-Forwarded-Host", Class::SetByProxy),
            (b"Transfer-Encoding", Class::TransferEncoding),
            (b"X-Forwarded-Proto", Class::SetByProxy),
            (b"Trailers", Class::Other),
            (b"Hosts", Class::Other),
            (b"", Class::Other),
        ] {
            assert_eq!(Class::of(name), class, "{}", String::from_utf8_lossy(name));
        }
    }
}
