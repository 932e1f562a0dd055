//! Request and response heads: `httparse` does the tokenising, this file adds what a proxy must
//! decide on top of it — limits, the request-smuggling checks, Host and target forms,
//! keep-alive, and how the body is framed (RFC 9112 §6.3). Results are offsets into the
//! caller's buffer; the caller keeps the bytes.
//!
//! HOT PATH: no allocation, no panics on input. Headers go into a fixed stack array of at most
//! [`MAX_HEADERS_CAP`] slots, left uninitialised so a parse does not clear 4 KiB each time.
//!
//! `httparse` is not resumable: each call parses from the start of the buffer. Callers that
//! receive a head in many small reads can call [`head_may_be_complete`] on the new bytes first.
//!
//! What `httparse` 1.10 already rejects (each has a test below): an invalid method token, a
//! request target with a space or a control byte or invalid UTF-8, any version other than
//! `HTTP/1.0`/`HTTP/1.1`, whitespace between a field name and the colon, obs-fold, NUL and
//! other control bytes (except HTAB) in values, a CR not followed by LF, and more headers than
//! slots. What it accepts and this file rejects in requests: a bare LF as line terminator,
//! empty lines as LF before the request line, and all the framing/Host rules.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Hard cap on `Limits::max_headers`: the size of the stack array of header slots.
pub const MAX_HEADERS_CAP: usize = 128;

/// Limits on a head. A head of exactly `max_head_bytes` bytes (request line, headers and the
/// final empty line) is accepted; one byte more is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    /// Values above [`MAX_HEADERS_CAP`] are treated as the cap.
    pub max_headers: usize,
    /// The request target as sent, in bytes.
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        }
    }
}

impl Limits {
    fn header_slots(&self) -> usize {
        self.max_headers.min(MAX_HEADERS_CAP)
    }
}

/// Why a head was refused. Every request rejection closes the client connection after the
/// error response; `BadResponse` is an upstream failure answered with 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    HeadTooLarge,
    TooManyHeaders,
    UriTooLong,
    Malformed(&'static str),
    /// Malformed in a way that lets two parsers disagree on where the message ends.
    Smuggling(&'static str),
    UnsupportedVersion,
    BadResponse(&'static str),
}

impl Reject {
    /// The status code to answer the client with.
    pub fn status(self) -> u16 {
        match self {
            Reject::HeadTooLarge | Reject::TooManyHeaders => 431,
            Reject::UriTooLong => 414,
            Reject::Malformed(_) | Reject::Smuggling(_) => 400,
            Reject::UnsupportedVersion => 505,
            Reject::BadResponse(_) => 502,
        }
    }

    /// A short lower-case explanation, fit for a log line or a plain-text error body.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::HeadTooLarge => "request header section too large",
            Reject::TooManyHeaders => "too many header fields",
            Reject::UriTooLong => "request target too long",
            Reject::Malformed(why) | Reject::Smuggling(why) | Reject::BadResponse(why) => why,
            Reject::UnsupportedVersion => "HTTP version not supported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    /// Any other valid token; the name is at [`RequestHead::method_range`].
    Other,
}

impl Method {
    /// Method names are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
    pub fn from_bytes(name: &[u8]) -> Method {
        match name {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: safe to retry after a failure on a reused connection.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the server closes (also a CONNECT tunnel).
    CloseDelimited,
}

/// A validated request head. Ranges index the buffer given to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head including the final empty line; the body (or the next request)
    /// starts here.
    pub head_len: usize,
    pub method: Method,
    /// The method name as sent (needed for [`Method::Other`]).
    pub method_range: Range<usize>,
    /// Origin-form: path and query as sent. Absolute-form: the part after the authority, which
    /// may be empty or start with `?` (then the origin-form is `/` followed by it). CONNECT: the
    /// authority (`host:port`). OPTIONS asterisk-form: `*`.
    pub target: Range<usize>,
    /// `host[:port]` of an absolute-form target (`http://host:port/path`).
    pub absolute_form_authority: Option<Range<usize>>,
    pub version_minor: u8,
    /// The value of the single `Host` header, if any (may be empty).
    pub host: Option<Range<usize>>,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// HTTP/1.1 with a `Connection: upgrade` token and an `Upgrade` header.
    pub upgrade: bool,
    pub header_count: usize,
    /// Some `Connection` header lists a token other than close/keep-alive/upgrade, which may
    /// name a header to drop (rare: rewriters check names only when this is set).
    pub connection_names: bool,
    /// An `X-Request-Id` header is present.
    pub has_request_id: bool,
    /// An `X-Forwarded-For` header is present.
    pub has_forwarded_for: bool,
    /// The value of the first `Cookie` header (release strategies read their cookies there
    /// without another pass over the head).
    pub cookie: Option<Range<usize>>,
    /// How many `Cookie` headers there are (clients send one).
    pub cookie_headers: u8,
    /// Where the parser found the header lines (rewriting the head walks these instead of
    /// scanning the lines again).
    pub headers: HeaderSpans,
}

impl Default for RequestHead {
    /// An empty head: a slot for [`parse_request_into`].
    fn default() -> Self {
        RequestHead {
            head_len: 0,
            method: Method::Get,
            method_range: 0..0,
            target: 0..0,
            absolute_form_authority: None,
            version_minor: 0,
            host: None,
            body: BodyKind::None,
            keep_alive: false,
            expect_continue: false,
            upgrade: false,
            header_count: 0,
            connection_names: false,
            has_request_id: false,
            has_forwarded_for: false,
            cookie: None,
            cookie_headers: 0,
            headers: HeaderSpans::default(),
        }
    }
}

impl RequestHead {
    /// The authority the request is for: the absolute-form authority if any, else `Host`.
    pub fn authority(&self) -> Option<Range<usize>> {
        self.absolute_form_authority
            .clone()
            .or_else(|| self.host.clone())
    }

    /// The path of the target without the query (empty for an absolute-form target without
    /// a path; the authority for CONNECT; `*` for asterisk-form).
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let target = slice(buf, &self.target);
        split_query(target).0
    }

    /// The query of the target including its `?`, or empty.
    pub fn query<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let target = slice(buf, &self.target);
        split_query(target).1
    }
}

/// A validated response head. `head_len` bytes of the buffer hold the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    /// The reason phrase in the buffer; empty when there is none or when it held obs-text
    /// (httparse does not hand those back). Leading empty lines and bare LFs are allowed in
    /// responses, so the status line does not necessarily start at 0 or end in CRLF.
    pub reason: Range<usize>,
    pub version_minor: u8,
    pub body: BodyKind,
    pub keep_alive: bool,
    /// Status 101: after this head the connection is a tunnel.
    pub upgrade: bool,
    /// A 1xx other than 101: the final response follows on the same connection.
    pub interim: bool,
    /// Both `Transfer-Encoding` and `Content-Length` were present: the body is read as chunked
    /// and the `Content-Length` header must not be forwarded (RFC 9112 §6.3 item 3).
    pub drop_content_length: bool,
    /// Some `Connection` header lists a token other than close/keep-alive/upgrade (see
    /// [`RequestHead::connection_names`]).
    pub connection_names: bool,
    /// Where the parser found the header lines (rewriting the head walks these instead of
    /// scanning the lines again).
    pub headers: HeaderSpans,
}

impl Default for ResponseHead {
    /// An empty head: a slot for [`parse_response_into`].
    fn default() -> Self {
        ResponseHead {
            head_len: 0,
            status: 0,
            reason: 0..0,
            version_minor: 0,
            body: BodyKind::None,
            keep_alive: false,
            upgrade: false,
            interim: false,
            drop_content_length: false,
            connection_names: false,
            headers: HeaderSpans::default(),
        }
    }
}

/// How many header lines a [`HeaderSpans`] records; a head with more is scanned again
/// ([`for_each_header`]) when rewritten.
pub const HEADER_SPANS: usize = 24;

/// The name and value of one header line: offsets and lengths in the head's buffer (a line
/// past 64 KiB is not recorded: the head is scanned instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HeaderSpan {
    name: u16,
    name_len: u16,
    value: u16,
    value_len: u16,
}

/// The header lines of a parsed head as the parser found them, up to [`HEADER_SPANS`]. Slots
/// past the recorded lines may hold lines of an earlier head parsed into the same place
/// ([`parse_request_into`]); they are never read, and equality ignores them.
#[derive(Debug, Clone)]
pub struct HeaderSpans {
    spans: [HeaderSpan; HEADER_SPANS],
    /// Lines recorded; `u8::MAX`: more than [`HEADER_SPANS`] (or one that could not be
    /// recorded), so none are used.
    n: u8,
}

impl Default for HeaderSpans {
    fn default() -> Self {
        HeaderSpans {
            spans: [HeaderSpan::default(); HEADER_SPANS],
            n: 0,
        }
    }
}

impl PartialEq for HeaderSpans {
    fn eq(&self, other: &Self) -> bool {
        // `n == u8::MAX` (none used): both `get`s are `None`.
        self.n == other.n
            && self.spans.get(..self.n as usize) == other.spans.get(..other.n as usize)
    }
}

impl Eq for HeaderSpans {}

impl HeaderSpans {
    /// No lines recorded (the slots are left as they are: only the first `n` are read).
    #[inline]
    fn clear(&mut self) {
        self.n = 0;
    }

    /// Records a header line of `buf` (`name` and `value` are slices of it).
    #[inline]
    fn push(&mut self, buf: &[u8], name: &[u8], value: &[u8]) {
        let i = self.n as usize;
        let (Some(slot), Some(n), Some(v)) =
            (self.spans.get_mut(i), span(buf, name), span(buf, value))
        else {
            self.n = u8::MAX;
            return;
        };
        let (Ok(name), Ok(name_len), Ok(value), Ok(value_len)) = (
            u16::try_from(n.start),
            u16::try_from(n.len()),
            u16::try_from(v.start),
            u16::try_from(v.len()),
        ) else {
            self.n = u8::MAX;
            return;
        };
        *slot = HeaderSpan {
            name,
            name_len,
            value,
            value_len,
        };
        self.n += 1;
    }

    /// Calls `f(name, value)` for each header line of the head in `buf` (`head_len` bytes), in
    /// order, as [`for_each_header`] does: from the recorded spans, or by scanning the lines
    /// when there were too many to record.
    #[inline]
    pub fn for_each(&self, buf: &[u8], head_len: usize, mut f: impl FnMut(&[u8], &[u8])) {
        for (name, value) in self.iter(buf, head_len) {
            f(name, value);
        }
    }

    /// `(name, value)` of each header line of the head in `buf` (`head_len` bytes), in order,
    /// as [`HeaderLines`] gives them (see [`HeaderSpans::for_each`]).
    #[inline]
    pub fn iter<'a>(&'a self, buf: &'a [u8], head_len: usize) -> Headers<'a> {
        match self.spans.get(..self.n as usize) {
            Some(spans) => Headers {
                buf,
                spans: spans.iter(),
                scan: None,
            },
            None => Headers {
                buf,
                spans: [].iter(),
                scan: Some(HeaderLines::new(buf, head_len)),
            },
        }
    }
}

/// The header lines of a parsed head ([`HeaderSpans::iter`]).
pub struct Headers<'a> {
    buf: &'a [u8],
    spans: std::slice::Iter<'a, HeaderSpan>,
    /// Scanning the lines (more than [`HEADER_SPANS`] headers).
    scan: Option<HeaderLines<'a>>,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(scan) = self.scan.as_mut() {
            return scan.next();
        }
        let s = self.spans.next()?;
        let (n, v) = (s.name as usize, s.value as usize);
        Some((
            self.buf.get(n..n + s.name_len as usize).unwrap_or_default(),
            self.buf
                .get(v..v + s.value_len as usize)
                .unwrap_or_default(),
        ))
    }
}

/// Parses a request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete, read more. Once `buf.len() >= max_head_bytes` without a
/// complete head the answer is `Err(HeadTooLarge)`, so a caller's buffer of exactly
/// `max_head_bytes` is enough. An incomplete request line whose target is already longer than
/// `max_uri_bytes` is `Err(UriTooLong)` at once.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, Reject> {
    let mut head = RequestHead::default();
    Ok(parse_request_into(buf, limits, &mut head)?.then_some(head))
}

/// [`parse_request`] into a head the caller holds: `Ok(true)` and `head` is the parsed head,
/// `Ok(false)` incomplete, `Err` refused (`head` then holds nothing useful). The hot path parses
/// this way: the head (with its ~200 bytes of header spans) is built where the caller keeps
/// it, not built here and copied out.
pub fn parse_request_into(
    buf: &[u8],
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<bool, Reject> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let slots = slots.get_mut(..limits.header_slots()).unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if partial_target_len(window, &req) > limits.max_uri_bytes {
                return Err(Reject::UriTooLong);
            }
            if buf.len() >= limits.max_head_bytes {
                return Err(Reject::HeadTooLarge);
            }
            return Ok(false);
        }
        Err(e) => return Err(request_error(e, &req, window)),
    };
    let (Some(method_name), Some(path), Some(version_minor)) = (req.method, req.path, req.version)
    else {
        return Err(Reject::Malformed("incomplete request line"));
    };
    if has_bare_lf(window.get(..head_len).unwrap_or(window)) {
        return Err(Reject::Smuggling("line not terminated by CRLF"));
    }
    if path.len() > limits.max_uri_bytes {
        return Err(Reject::UriTooLong);
    }
    let method = Method::from_bytes(method_name.as_bytes());
    let method_range = span(buf, method_name.as_bytes()).ok_or(Reject::Malformed("method"))?;
    let target_range = span(buf, path.as_bytes()).ok_or(Reject::Malformed("target"))?;
    let (target, absolute_form_authority) = classify_target(buf, method, target_range)?;

    let mut host: Option<Range<usize>> = None;
    let mut host_count = 0usize;
    let mut framing = Framing::default();
    let mut conn = ConnectionTokens::default();
    let mut has_upgrade_header = false;
    let mut h2c = false;
    let mut expect_continue = false;
    let mut has_request_id = false;
    let mut has_forwarded_for = false;
    let mut cookie = None;
    let mut cookie_headers = 0u8;
    let headers = &mut head.headers;
    headers.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        headers.push(buf, name, h.value);
        if framing.take(name, h.value).map_err(Reject::Smuggling)? {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host_count += 1;
            if host_count > 1 {
                return Err(Reject::Smuggling("more than one Host header"));
            }
            if !valid_host_port(h.value, false) {
                return Err(Reject::Malformed("invalid Host header"));
            }
            host = Some(span(buf, h.value).ok_or(Reject::Malformed("Host"))?);
        } else if eq_lower(name, b"connection") {
            conn.add(h.value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade_header = true;
            h2c |= offers_h2c(h.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue |= list_contains(h.value, b"100-continue");
        } else if eq_lower(name, b"x-request-id") {
            has_request_id = true;
        } else if eq_lower(name, b"x-forwarded-for") {
            has_forwarded_for = true;
        } else if name.eq_ignore_ascii_case(b"cookie") {
            if cookie.is_none() {
                cookie = span(buf, h.value);
            }
            cookie_headers = cookie_headers.saturating_add(1);
        }
    }

    let http11 = version_minor == 1;
    if http11 && host_count == 0 {
        return Err(Reject::Malformed("missing Host header"));
    }
    let body = framing.request_body(http11).map_err(Reject::Smuggling)?;
    // Every field but the spans (recorded above) set here; no `..`, so a new field cannot be
    // left holding an earlier head's value.
    let RequestHead {
        head_len: o_head_len,
        method: o_method,
        method_range: o_method_range,
        target: o_target,
        absolute_form_authority: o_absolute_form_authority,
        version_minor: o_version_minor,
        host: o_host,
        body: o_body,
        keep_alive: o_keep_alive,
        expect_continue: o_expect_continue,
        upgrade: o_upgrade,
        header_count: o_header_count,
        connection_names: o_connection_names,
        has_request_id: o_has_request_id,
        has_forwarded_for: o_has_forwarded_for,
        cookie: o_cookie,
        cookie_headers: o_cookie_headers,
        headers: _,
    } = head;
    *o_head_len = head_len;
    *o_method = method;
    *o_method_range = method_range;
    *o_target = target;
    *o_absolute_form_authority = absolute_form_authority;
    *o_version_minor = version_minor;
    *o_host = host;
    *o_body = body;
    *o_keep_alive = conn.keep_alive(http11);
    *o_expect_continue = expect_continue && http11;
    // An h2c upgrade is never passed on (h2c smuggling: a backend's 101 would open a raw
    // HTTP/2 tunnel past every routing decision). Not marked as an upgrade, the request goes
    // upstream without its `Upgrade` header, and a 101 the backend sends anyway is a 502.
    // HAProxy strips it the same way.
    *o_upgrade = http11 && conn.upgrade && has_upgrade_header && !h2c;
    *o_header_count = req.headers.len();
    *o_connection_names = conn.other;
    *o_has_request_id = has_request_id;
    *o_has_forwarded_for = has_forwarded_for;
    *o_cookie = cookie;
    *o_cookie_headers = cookie_headers;
    Ok(true)
}

/// Parses a response head at the start of `buf`; `request` is the method of the request it
/// answers (HEAD and CONNECT change the framing). Every error is a [`Reject::BadResponse`].
///
/// `Ok(None)`: incomplete; `Err` once `buf.len() >= max_head_bytes` without a complete head.
/// Unlike requests, a bare LF line terminator is accepted (RFC 9112 §2.2 allows it and the
/// head is validated the same either way), but obs-fold is refused (§5.2 allows a 502).
pub fn parse_response(
    buf: &[u8],
    request: Method,
    limits: &Limits,
) -> Result<Option<ResponseHead>, Reject> {
    let mut head = ResponseHead::default();
    Ok(parse_response_into(buf, request, limits, &mut head)?.then_some(head))
}

/// [`parse_response`] into a head the caller holds, as [`parse_request_into`] does: `Ok(true)`
/// and `head` is the parsed head, `Ok(false)` incomplete.
pub fn parse_response_into(
    buf: &[u8],
    request: Method,
    limits: &Limits,
    head: &mut ResponseHead,
) -> Result<bool, Reject> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let slots = slots.get_mut(..limits.header_slots()).unwrap_or_default();
    let mut resp = httparse::Response::new(&mut []);
    // httparse 1.10 has `Request::parse_with_uninit_headers` but no `Response` twin.
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, window, slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            return Err(Reject::BadResponse("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(e) => return Err(Reject::BadResponse(response_error(e))),
    };
    let (Some(status), Some(version_minor), Some(reason)) = (resp.code, resp.version, resp.reason)
    else {
        return Err(Reject::BadResponse("incomplete status line"));
    };
    // httparse returns a static "" (not a slice of `buf`) for a missing or obs-text reason.
    let reason = match reason {
        "" => 0..0,
        r => span(buf, r.as_bytes()).unwrap_or(0..0),
    };
    if !(100..=599).contains(&status) {
        return Err(Reject::BadResponse("invalid status code"));
    }
    let mut framing = Framing::default();
    let mut conn = ConnectionTokens::default();
    let headers = &mut head.headers;
    headers.clear();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        headers.push(buf, name, h.value);
        if !framing.take(name, h.value).map_err(Reject::BadResponse)?
            && name.eq_ignore_ascii_case(b"connection")
        {
            conn.add(h.value);
        }
    }
    let http11 = version_minor == 1;
    let mut keep_alive = conn.keep_alive(http11);
    let has_te = framing.te != Te::Absent;
    let mut drop_content_length = false;
    let body = if request == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        BodyKind::None
    } else if request == Method::Connect && (200..300).contains(&status) {
        BodyKind::CloseDelimited
    } else if has_te {
        if framing.content_length.is_some() {
            drop_content_length = true;
            keep_alive = false;
        }
        if !http11 {
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; read it, then close.
            keep_alive = false;
        }
        match framing.te {
            Te::Chunked => BodyKind::Chunked,
            Te::Invalid(why) => return Err(Reject::BadResponse(why)),
            _ => BodyKind::CloseDelimited,
        }
    } else if let Some(n) = framing.content_length {
        BodyKind::Length(n)
    } else {
        BodyKind::CloseDelimited
    };
    if body == BodyKind::CloseDelimited {
        keep_alive = false;
    }
    // As in `parse_request_into`: every field but the spans, no `..`.
    let ResponseHead {
        head_len: o_head_len,
        status: o_status,
        reason: o_reason,
        version_minor: o_version_minor,
        body: o_body,
        keep_alive: o_keep_alive,
        upgrade: o_upgrade,
        interim: o_interim,
        drop_content_length: o_drop_content_length,
        connection_names: o_connection_names,
        headers: _,
    } = head;
    *o_head_len = head_len;
    *o_status = status;
    *o_reason = reason;
    *o_version_minor = version_minor;
    *o_body = body;
    *o_keep_alive = keep_alive;
    *o_upgrade = status == 101;
    *o_interim = (100..200).contains(&status) && status != 101;
    *o_drop_content_length = drop_content_length;
    *o_connection_names = conn.other;
    Ok(true)
}

/// Calls `f(name, value)` for each header line of an already-validated head, in order. The
/// value has its surrounding whitespace removed. Works on request and response heads.
pub fn for_each_header(buf: &[u8], head_len: usize, mut f: impl FnMut(&[u8], &[u8])) {
    for (name, value) in HeaderLines::new(buf, head_len) {
        f(name, value);
    }
}

/// Iterator over `(name, value)` of an already-validated head (see [`for_each_header`]).
/// On arbitrary bytes it never panics; lines without a colon are skipped.
#[derive(Debug, Clone)]
pub struct HeaderLines<'a> {
    rest: &'a [u8],
}

impl<'a> HeaderLines<'a> {
    pub fn new(buf: &'a [u8], head_len: usize) -> Self {
        let mut rest = buf.get(..head_len).unwrap_or(buf);
        // Empty lines before the start line (RFC 9112 §2.2), then the start line itself.
        loop {
            if let Some(r) = rest.strip_prefix(b"\r\n") {
                rest = r;
            } else if let Some(r) = rest.strip_prefix(b"\n") {
                rest = r;
            } else {
                break;
            }
        }
        let (_, rest) = split_line(rest);
        HeaderLines { rest }
    }
}

impl<'a> Iterator for HeaderLines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let (line, rest) = split_line(self.rest);
            if line.is_empty() {
                self.rest = &[];
                return None;
            }
            self.rest = rest;
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let (name, value) = line.split_at_checked(colon)?;
                return Some((name, trim_ows(value.get(1..).unwrap_or_default())));
            }
        }
        None
    }
}

/// A cheap pre-check for callers that receive a head in many small reads: could the bytes
/// `buf[..]` hold a complete head, given that `buf[..scanned]` did not? It looks for an
/// empty line (`\n\r\n` or `\n\n`) overlapping the new bytes only. `true` is a hint to call
/// [`parse_request`]/[`parse_response`]; `false` is certain, except that a parse may still
/// reject early (a bad method, say) before the head is complete.
pub fn head_may_be_complete(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(2);
    let tail = buf.get(from..).unwrap_or_default();
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Splits `host[:port]` (a Host value or an authority). `None` when the shape is wrong (an
/// unclosed `[`, junk after `]`). Does not validate characters; see [`parse_request`].
pub fn split_host_port(v: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if v.first() == Some(&b'[') {
        let close = v.iter().position(|&b| b == b']')?;
        let (host, rest) = v.split_at_checked(close.checked_add(1)?)?;
        match rest {
            [] => Some((host, None)),
            [b':', port @ ..] => Some((host, Some(port))),
            _ => None,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (host, port) = v.split_at_checked(colon)?;
                Some((host, Some(port.get(1..).unwrap_or_default())))
            }
            None => Some((v, None)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Internals.

/// The bytes of `range` in `buf`, or empty if the range does not fit.
pub(crate) fn slice<'b>(buf: &'b [u8], range: &Range<usize>) -> &'b [u8] {
    buf.get(range.clone()).unwrap_or_default()
}

/// `(path, "?query")` of a target.
pub(crate) fn split_query(target: &[u8]) -> (&[u8], &[u8]) {
    match target.iter().position(|&b| b == b'?') {
        Some(q) => target.split_at_checked(q).unwrap_or((target, &[])),
        None => (target, &[]),
    }
}

/// Where `part` (a sub-slice handed back by httparse) sits in `buf`. Plain address arithmetic,
/// no `unsafe`: httparse returns borrows of the buffer, so this is always `Some`.
fn span(buf: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= buf.len()).then_some(start..end)
}

/// `(line without its CRLF or LF, rest after the line end)`.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match find_lf(bytes) {
        Some(nl) => {
            let (line, rest) = bytes.split_at_checked(nl).unwrap_or((bytes, &[]));
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, rest.get(1..).unwrap_or_default())
        }
        None => (bytes.strip_suffix(b"\r").unwrap_or(bytes), &[]),
    }
}

/// The first LF in `bytes`, eight bytes at a time (header lines are re-scanned for every
/// rewritten head, and a byte loop was most of that).
#[inline]
fn find_lf(bytes: &[u8]) -> Option<usize> {
    find_byte(bytes, b'\n')
}

/// The first `b` in `bytes`, eight bytes at a time (also the `;` between cookies).
#[inline]
pub(crate) fn find_byte(bytes: &[u8], b: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = ONES * u64::from(b);
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pattern;
        // Exact for the lowest zero byte (the one we want); bytes above it may be flagged
        // falsely through the borrow, which trailing_zeros ignores.
        let zero = x.wrapping_sub(ONES) & !x & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b)
        .map(|p| at + p)
}

/// `name` equals `lower` ignoring ASCII case, `lower` being ASCII without upper-case
/// letters (a header name as this crate writes it): what `eq_ignore_ascii_case` answers,
/// 8 bytes at a time (the last 8 overlapping) instead of one.
#[inline]
pub(crate) fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    debug_assert!(lower.is_ascii() && !lower.iter().any(u8::is_ascii_uppercase));
    let n = lower.len();
    if name.len() != n {
        return false;
    }
    if n < 8 {
        return name.eq_ignore_ascii_case(lower);
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let mut next = 0;
    loop {
        let at = next.min(n - 8);
        next += 8;
        let (x, y) = (word(name, at), word(lower, at));
        // 0x80 in each byte of `y` that is a lower-case letter (0x61..=0x7a; bytes of `y` are
        // below 0x80, so no sum carries into the next byte); shifted, 0x20: the case bit.
        let letters = y.wrapping_add(0x1f * ONES) & !y.wrapping_add(0x05 * ONES) & (0x80 * ONES);
        if x | (letters >> 2) != y {
            return false;
        }
        if at == n - 8 {
            return true;
        }
    }
}

pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The non-empty elements of a comma-separated list, trimmed.
pub(crate) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// An `Upgrade` value that offers HTTP/2 over cleartext (`h2c`, any case, with or without a
/// `/version`).
fn offers_h2c(v: &[u8]) -> bool {
    list_elements(v).any(|e| {
        let proto = e.split(|&b| b == b'/').next().unwrap_or_default();
        proto.trim_ascii().eq_ignore_ascii_case(b"h2c")
    })
}

/// Whether the comma-separated list `v` holds `token` (ASCII case-insensitive).
pub(crate) fn list_contains(v: &[u8], token: &[u8]) -> bool {
    list_elements(v).any(|e| e.eq_ignore_ascii_case(token))
}

/// Any LF not preceded by CR. Branch-free over the whole head so it vectorises.
fn has_bare_lf(head: &[u8]) -> bool {
    let first = head.first() == Some(&b'\n');
    let pairs = head
        .iter()
        .zip(head.get(1..).unwrap_or_default())
        .fold(false, |acc, (&prev, &b)| {
            acc | ((b == b'\n') & (prev != b'\r'))
        });
    first | pairs
}

/// How long the request target is so far, for a request line still being received.
fn partial_target_len(window: &[u8], req: &httparse::Request<'_, '_>) -> usize {
    if let Some(path) = req.path {
        return path.len();
    }
    match req.method.and_then(|m| span(window, m.as_bytes())) {
        // httparse stops before the target's end: every byte after "METHOD " is target so far.
        Some(m) => window.len().saturating_sub(m.end.saturating_add(1)),
        None => 0,
    }
}

/// The four target forms (RFC 9112 §3.2). Returns `(target, absolute_form_authority)`.
fn classify_target(
    buf: &[u8],
    method: Method,
    target: Range<usize>,
) -> Result<(Range<usize>, Option<Range<usize>>), Reject> {
    let t = slice(buf, &target);
    if method == Method::Connect {
        // Authority-form: host and a port, nothing else.
        return match split_host_port(t) {
            Some((host, Some(port))) if !host.is_empty() && !port.is_empty() => {
                if valid_host_port(t, true) {
                    Ok((target, None))
                } else {
                    Err(Reject::Malformed("invalid CONNECT target"))
                }
            }
            _ => Err(Reject::Malformed("CONNECT needs an authority-form target")),
        };
    }
    if t.first() == Some(&b'/') {
        return Ok((target, None));
    }
    if t == b"*" {
        return if method == Method::Options {
            Ok((target, None))
        } else {
            Err(Reject::Malformed(
                "asterisk-form target is only for OPTIONS",
            ))
        };
    }
    // Absolute-form: http(s)://authority[path-abempty][?query]
    let scheme_len = if t
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"http://"))
    {
        7
    } else if t
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"https://"))
    {
        8
    } else {
        return Err(Reject::Malformed("invalid request target"));
    };
    let after_scheme = t.get(scheme_len..).unwrap_or_default();
    let auth_len = after_scheme
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after_scheme.len());
    let authority = after_scheme.get(..auth_len).unwrap_or_default();
    if authority.contains(&b'@') {
        return Err(Reject::Malformed("userinfo in request target"));
    }
    match split_host_port(authority) {
        Some((host, _)) if !host.is_empty() && valid_host_port(authority, false) => {}
        _ => return Err(Reject::Malformed("invalid authority in request target")),
    }
    if after_scheme.get(auth_len) == Some(&b'#') {
        return Err(Reject::Malformed("fragment in request target"));
    }
    let auth_start = target.start.saturating_add(scheme_len);
    let auth_end = auth_start.saturating_add(auth_len);
    Ok((auth_end..target.end, Some(auth_start..auth_end)))
}

/// `uri-host [":" port]` of RFC 3986: an IP-literal in brackets or a reg-name (which also
/// covers IPv4), port digits only. An empty value is valid for `Host` (RFC 9112 §3.2).
fn valid_host_port(v: &[u8], require_port: bool) -> bool {
    if v.first() != Some(&b'[') {
        // A reg-name (or IPv4 address) and maybe a port, in one pass: the first byte that
        // is not a reg-name byte is the port's colon, or makes the value invalid.
        return match v.iter().position(|&b| !REG_NAME[b as usize]) {
            None => !require_port,
            Some(colon) if v.get(colon) == Some(&b':') => {
                valid_port(v.get(colon + 1..).unwrap_or_default(), require_port)
            }
            Some(_) => false,
        };
    }
    // An IP-literal in brackets, maybe a port.
    let Some(([b'[', inner @ .., b']'], port)) = split_host_port(v) else {
        return false;
    };
    let literal_ok = !inner.is_empty()
        && inner
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    literal_ok && port.map_or(!require_port, |p| valid_port(p, require_port))
}

/// The digits after a host's colon (empty only when no port is required).
fn valid_port(p: &[u8], require_port: bool) -> bool {
    p.len() <= 5 && p.iter().all(u8::is_ascii_digit) && !(require_port && p.is_empty())
}

/// [`is_reg_name_char`] by byte: one load per byte of every request's Host.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = is_reg_name_char(i as u8);
        i += 1;
    }
    t
};

/// unreserved / pct-encoded / sub-delims (RFC 3986 reg-name).
const fn is_reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// Content-Length and Transfer-Encoding, accumulated over every header line: the one
/// parser of these headers in the tree (the demo backend uses it too).
#[derive(Debug, Default)]
pub struct Framing {
    content_length: Option<u64>,
    te: Te,
    /// `chunked` elements seen so far across all Transfer-Encoding lines.
    chunked_seen: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Te {
    #[default]
    Absent,
    /// The last coding so far is `chunked`, named once.
    Chunked,
    /// The last coding so far is something else.
    NotChunked,
    /// A list no sender may produce (empty element, `chunked` twice).
    Invalid(&'static str),
}

impl Framing {
    /// Takes the header if it is a framing header (`Ok(true)`); `Err` says why its value
    /// is unacceptable (then the message's framing is unknown: answer 400 and close).
    pub fn take(&mut self, name: &[u8], value: &[u8]) -> Result<bool, &'static str> {
        if eq_lower(name, b"content-length") {
            for element in value.split(|&b| b == b',') {
                let n = parse_decimal(trim_ows(element)).ok_or("invalid Content-Length")?;
                match self.content_length {
                    Some(prev) if prev != n => return Err("conflicting Content-Length values"),
                    _ => self.content_length = Some(n),
                }
            }
            Ok(true)
        } else if eq_lower(name, b"transfer-encoding") {
            for element in value.split(|&b| b == b',') {
                let coding = trim_ows(element);
                if matches!(self.te, Te::Invalid(_)) {
                    break;
                }
                if coding.is_empty() {
                    self.te = Te::Invalid("empty Transfer-Encoding element");
                } else if coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked_seen = self.chunked_seen.saturating_add(1);
                    self.te = if self.chunked_seen > 1 {
                        Te::Invalid("chunked applied more than once")
                    } else {
                        Te::Chunked
                    };
                } else {
                    self.te = Te::NotChunked;
                }
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// How the body of a request with these headers is framed (RFC 9112 §6.3), or why the
    /// request must be refused (see the smuggling policy in the module comment).
    pub fn request_body(&self, http11: bool) -> Result<BodyKind, &'static str> {
        match (self.te, self.content_length) {
            (Te::Absent, None) => Ok(BodyKind::None),
            (Te::Absent, Some(n)) => Ok(BodyKind::Length(n)),
            (_, Some(_)) => Err("both Content-Length and Transfer-Encoding"),
            _ if !http11 => Err("Transfer-Encoding in an HTTP/1.0 request"),
            (Te::Chunked, None) => Ok(BodyKind::Chunked),
            (Te::NotChunked, None) => Err("Transfer-Encoding does not end with chunked"),
            (Te::Invalid(why), None) => Err(why),
        }
    }
}

/// `1*DIGIT` that fits in a u64.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The tokens of `Connection` headers, accumulated over every header line.
#[derive(Debug, Default)]
pub struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Any other token (a header name to drop, or junk).
    other: bool,
}

impl ConnectionTokens {
    /// Takes one `Connection` header value.
    pub fn add(&mut self, value: &[u8]) {
        for token in list_elements(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.other = true;
            }
        }
    }

    /// Whether the connection stays open after this message (HTTP/1.1: unless `close`;
    /// HTTP/1.0: only with `keep-alive`, and no `close`).
    pub fn keep_alive(&self, http11: bool) -> bool {
        !self.close && (http11 || self.keep_alive)
    }
}

/// Maps an httparse error on a request to a precise rejection (cold path: rescans the bytes).
fn request_error(e: httparse::Error, req: &httparse::Request<'_, '_>, window: &[u8]) -> Reject {
    match e {
        httparse::Error::TooManyHeaders => Reject::TooManyHeaders,
        httparse::Error::Token if req.method.is_none() => Reject::Malformed("invalid method"),
        httparse::Error::Token => Reject::Malformed("invalid request target"),
        httparse::Error::Version => version_error(window),
        httparse::Error::HeaderName | httparse::Error::HeaderValue | httparse::Error::NewLine => {
            diagnose_lines(window).unwrap_or(match e {
                httparse::Error::HeaderName => Reject::Malformed("invalid header name"),
                httparse::Error::HeaderValue => Reject::Malformed("invalid header value"),
                // Without a bare CR, NewLine means junk after the version.
                _ => Reject::Malformed("invalid request line"),
            })
        }
        httparse::Error::Status => Reject::Malformed("invalid request line"),
    }
}

/// `HTTP/<digits and dots>` that is not 1.0 or 1.1 → 505; anything else → 400.
fn version_error(window: &[u8]) -> Reject {
    let (line, _) = split_line(window);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version.strip_prefix(b"HTTP/") {
        Some(rest) if !rest.is_empty() && rest.iter().all(|&b| b.is_ascii_digit() || b == b'.') => {
            Reject::UnsupportedVersion
        }
        _ => Reject::Malformed("invalid HTTP version"),
    }
}

/// Finds the first smuggling-relevant defect in the header lines after the request line.
fn diagnose_lines(window: &[u8]) -> Option<Reject> {
    if window
        .windows(2)
        .any(|w| matches!(w, [b'\r', next] if *next != b'\n'))
    {
        return Some(Reject::Smuggling("bare CR"));
    }
    let mut lines = window;
    // Skip empty lines and the request line.
    while let Some(r) = lines.strip_prefix(b"\r\n") {
        lines = r;
    }
    let (_, mut rest) = split_line(lines);
    while !rest.is_empty() {
        let (line, next) = split_line(rest);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Some(Reject::Smuggling("obs-fold line"));
        }
        let colon = line.iter().position(|&b| b == b':');
        let name = line.get(..colon.unwrap_or(line.len())).unwrap_or_default();
        if name.iter().any(|&b| b == b' ' || b == b'\t') {
            return Some(Reject::Smuggling("whitespace in header name"));
        }
        let value = colon
            .and_then(|c| line.get(c.saturating_add(1)..))
            .unwrap_or_default();
        if value.contains(&0) {
            return Some(Reject::Smuggling("NUL in header value"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Some(Reject::Smuggling("control character in header value"));
        }
        rest = next;
    }
    None
}

fn response_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name in response",
        httparse::Error::HeaderValue => "invalid header value in response",
        httparse::Error::NewLine => "invalid line ending in response",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token in response",
        httparse::Error::TooManyHeaders => "too many header fields in response",
        httparse::Error::Version => "unsupported HTTP version in response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsing into a slot that holds an earlier head (the hot path reuses nothing today, but
    /// the `_into` functions allow it) gives the same head as parsing into a fresh one: every
    /// field is set, and spans left over from a longer head are not part of the new one.
    #[test]
    fn parsing_into_a_used_slot_gives_the_fresh_head() {
        let l = Limits::default();
        let long: &[u8] = b"POST http://a.example:81/x?y HTTP/1.1\r\nHost: a.example:81\r\n\
            Content-Length: 3\r\nCookie: c=1\r\nX-Request-Id: 7\r\nX-Forwarded-For: 1.2.3.4\r\n\
            Connection: keep-alive, x-drop\r\nX-Drop: 1\r\nExpect: 100-continue\r\n\r\nabc";
        let short: &[u8] = b"GET / HTTP/1.0\r\nA: b\r\n\r\n";
        for (first, second) in [(long, short), (short, long)] {
            let mut slot = RequestHead::default();
            assert_eq!(parse_request_into(first, &l, &mut slot), Ok(true));
            assert_eq!(parse_request_into(second, &l, &mut slot), Ok(true));
            assert_eq!(Some(slot.clone()), parse_request(second, &l).unwrap());
            let mut fresh_lines = Vec::new();
            let mut slot_lines = Vec::new();
            let fresh = parse_request(second, &l).unwrap().unwrap();
            fresh.headers.for_each(second, fresh.head_len, |n, v| {
                fresh_lines.push((n.to_vec(), v.to_vec()))
            });
            slot.headers.for_each(second, slot.head_len, |n, v| {
                slot_lines.push((n.to_vec(), v.to_vec()))
            });
            assert_eq!(slot_lines, fresh_lines);
        }
        let long_resp: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\
            Connection: x-y\r\nA: 1\r\nB: 2\r\n\r\n";
        let short_resp: &[u8] = b"HTTP/1.0 101 Switching\r\n\r\n";
        for (first, second) in [(long_resp, short_resp), (short_resp, long_resp)] {
            let mut slot = ResponseHead::default();
            assert_eq!(
                parse_response_into(first, Method::Get, &l, &mut slot),
                Ok(true)
            );
            assert_eq!(
                parse_response_into(second, Method::Get, &l, &mut slot),
                Ok(true)
            );
            assert_eq!(Some(slot), parse_response(second, Method::Get, &l).unwrap());
        }
        // Incomplete: `Ok(false)` (and `Ok(None)` from the by-value form).
        let mut slot = RequestHead::default();
        assert_eq!(
            parse_request_into(b"GET / HTTP/1.1\r\n", &l, &mut slot),
            Ok(false)
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n", &l), Ok(None));
    }

    #[test]
    fn find_lf_agrees_with_a_byte_loop() {
        let mut buf = [b'a'; 40];
        for len in 0..buf.len() {
            assert_eq!(find_lf(&buf[..len]), None);
        }
        for lf in 0..buf.len() {
            for other in [0u8, 0x0b, 0x09, 0x8a, 0xff, b'\r'] {
                buf = [other; 40];
                buf[lf] = b'\n';
                if lf + 3 < buf.len() {
                    buf[lf + 3] = b'\n';
                }
                for start in 0..=lf {
                    let want = buf[start..].iter().position(|&b| b == b'\n');
                    assert_eq!(
                        find_lf(&buf[start..]),
                        want,
                        "lf {lf} start {start} fill {other}"
                    );
                }
            }
        }
    }

    const GET: &[u8] = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";

    fn req(s: &[u8]) -> Result<Option<RequestHead>, Reject> {
        parse_request(s, &Limits::default())
    }

    fn ok(s: &[u8]) -> RequestHead {
        match req(s) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
        }
    }

    #[test]
    fn cookie_headers_are_located_while_parsing() {
        let s = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; dynsoftup=1.1\r\ncookie: b=2\r\n\r\n";
        let h = ok(s);
        assert_eq!(&s[h.cookie.clone().unwrap()], b"a=1; dynsoftup=1.1");
        assert_eq!(h.cookie_headers, 2);
        let h = ok(GET);
        assert_eq!((h.cookie, h.cookie_headers), (None, 0));
    }

    fn rej(s: &[u8]) -> Reject {
        match req(s) {
            Err(e) => e,
            other => panic!(
                "{:?}: expected a rejection, got {other:?}",
                String::from_utf8_lossy(s)
            ),
        }
    }

    fn resp(s: &[u8], m: Method) -> Result<Option<ResponseHead>, Reject> {
        parse_response(s, m, &Limits::default())
    }

    fn resp_ok(s: &[u8], m: Method) -> ResponseHead {
        match resp(s, m) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn resp_rej(s: &[u8]) -> &'static str {
        match resp(s, Method::Get) {
            Err(Reject::BadResponse(why)) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn at<'a>(buf: &'a [u8], r: &Range<usize>) -> &'a [u8] {
        &buf[r.clone()]
    }

    /// A request with one extra header line and `Host: h`.
    fn with(version: &str, header: &str) -> Vec<u8> {
        format!("POST / HTTP/1.{version}\r\nHost: h\r\n{header}\r\n\r\n").into_bytes()
    }

    /// Every strict prefix is incomplete, or fails the same way as the whole message.
    fn assert_prefixes_consistent(msg: &[u8]) {
        let full = req(msg);
        let head_len = match &full {
            Ok(Some(h)) => h.head_len,
            _ => msg.len(),
        };
        for i in 0..head_len {
            match req(&msg[..i]) {
                Ok(None) => {}
                Err(e) if full == Err(e) => {}
                other => panic!(
                    "prefix {i} of {:?}: {other:?} (full: {full:?})",
                    String::from_utf8_lossy(msg)
                ),
            }
        }
    }

    // ---- the basics ------------------------------------------------------------------------

    #[test]
    fn simple_get() {
        let h = ok(GET);
        assert_eq!(h.head_len, GET.len());
        assert_eq!(h.method, Method::Get);
        assert_eq!(at(GET, &h.method_range), b"GET");
        assert_eq!(at(GET, &h.target), b"/a/b?c=d");
        assert_eq!(h.path(GET), b"/a/b");
        assert_eq!(h.query(GET), b"?c=d");
        assert_eq!(h.absolute_form_authority, None);
        assert_eq!(h.version_minor, 1);
        assert_eq!(at(GET, h.host.as_ref().unwrap()), b"example.com");
        assert_eq!(at(GET, &h.authority().unwrap()), b"example.com");
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert!(!h.upgrade);
        assert_eq!(h.header_count, 2);
    }

    #[test]
    fn head_len_stops_before_body_and_pipelined_requests() {
        let mut buf = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n".to_vec();
        let head = buf.len();
        buf.extend_from_slice(b"helloGET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let h = ok(&buf);
        assert_eq!(h.head_len, head);
        assert_eq!(h.body, BodyKind::Length(5));
        let next = ok(&buf[head + 5..]);
        assert_eq!(next.method, Method::Get);
        assert_eq!(next.head_len, buf.len() - head - 5);
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_offsets_stay_right() {
        let buf = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.head_len, buf.len());
        assert_eq!(at(buf, &h.method_range), b"GET");
        assert_eq!(at(buf, &h.target), b"/x");
        assert_eq!(at(buf, h.host.as_ref().unwrap()), b"h");
        let mut names = Vec::new();
        for_each_header(buf, h.head_len, |n, v| names.push((n.to_vec(), v.to_vec())));
        assert_eq!(names, vec![(b"Host".to_vec(), b"h".to_vec())]);
    }

    #[test]
    fn methods() {
        for (name, m) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("TRACE", Method::Trace),
            ("PATCH", Method::Patch),
            ("PROPFIND", Method::Other),
            ("get", Method::Other),
            ("M-SEARCH", Method::Other),
        ] {
            let buf = format!("{name} / HTTP/1.1\r\nHost: h\r\n\r\n");
            let h = ok(buf.as_bytes());
            assert_eq!(h.method, m, "{name}");
            assert_eq!(at(buf.as_bytes(), &h.method_range), name.as_bytes());
        }
        let h = ok(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n");
        assert_eq!(h.method, Method::Connect);
        for m in [
            Method::Get,
            Method::Head,
            Method::Put,
            Method::Delete,
            Method::Options,
            Method::Trace,
        ] {
            assert!(m.is_idempotent(), "{m:?}");
        }
        for m in [Method::Post, Method::Patch, Method::Connect, Method::Other] {
            assert!(!m.is_idempotent(), "{m:?}");
        }
    }

    #[test]
    fn reject_status_and_reason() {
        let cases = [
            (Reject::HeadTooLarge, 431),
            (Reject::TooManyHeaders, 431),
            (Reject::UriTooLong, 414),
            (Reject::Malformed("m"), 400),
            (Reject::Smuggling("s"), 400),
            (Reject::UnsupportedVersion, 505),
            (Reject::BadResponse("b"), 502),
        ];
        for (r, status) in cases {
            assert_eq!(r.status(), status, "{r:?}");
            assert!(!r.reason().is_empty());
        }
        assert_eq!(Reject::Malformed("m").reason(), "m");
        assert_eq!(Reject::Smuggling("s").reason(), "s");
        assert_eq!(Reject::BadResponse("b").reason(), "b");
    }

    #[test]
    fn default_limits() {
        let l = Limits::default();
        assert_eq!(
            (l.max_head_bytes, l.max_headers, l.max_uri_bytes),
            (65536, 100, 8192)
        );
    }

    // ---- partial input ---------------------------------------------------------------------

    #[test]
    fn every_prefix_of_valid_requests_is_incomplete() {
        let msgs: [&[u8]; 6] = [
            GET,
            b"\r\nGET / HTTP/1.0\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
            b"GET http://example.com:8080/p?q HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Spaces:   \t  \r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ];
        for msg in msgs {
            let full = ok(msg);
            assert_eq!(full.head_len, msg.len());
            for i in 0..msg.len() {
                assert_eq!(
                    req(&msg[..i]),
                    Ok(None),
                    "prefix {i} of {:?}",
                    String::from_utf8_lossy(msg)
                );
            }
        }
    }

    #[test]
    fn every_prefix_of_rejected_requests_is_incomplete_or_the_same_error() {
        for msg in rejection_vectors() {
            assert!(req(&msg).is_err(), "{:?}", String::from_utf8_lossy(&msg));
            assert_prefixes_consistent(&msg);
        }
    }

    /// Every smuggling and malformation vector of the request rules.
    fn rejection_vectors() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = [
            &b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n\r\n",
            b"GET / HTTP/1.1\nHost: h\n\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            b"GET / http/1.1\r\nHost: h\r\n\r\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        v.push(
            b"GET /"
                .iter()
                .chain(&[b'a'; 9000])
                .chain(b" HTTP/1.1\r\nHost: h\r\n\r\n")
                .copied()
                .collect(),
        );
        v
    }

    // ---- what httparse rejects on its own (proved here, so an upgrade cannot loosen it) ----

    #[test]
    fn httparse_rejects_these_by_itself() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let cases: [(&[u8], httparse::Error); 12] = [
            (b"G(T / HTTP/1.1\r\n\r\n", httparse::Error::Token),
            (b" / HTTP/1.1\r\n\r\n", httparse::Error::Token),
            (b"GET /a\x7fb HTTP/1.1\r\n\r\n", httparse::Error::Token),
            (b"GET /\xff HTTP/1.1\r\n\r\n", httparse::Error::Token),
            (b"GET  / HTTP/1.1\r\n\r\n", httparse::Error::Token),
            (b"GET / HTTP/1.2\r\n\r\n", httparse::Error::Version),
            (
                b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
                httparse::Error::HeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                httparse::Error::HeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\0\r\n\r\n",
                httparse::Error::HeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
                httparse::Error::HeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
                httparse::Error::HeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                httparse::Error::TooManyHeaders,
            ),
        ];
        for (buf, err) in cases {
            let n = if err == httparse::Error::TooManyHeaders {
                2
            } else {
                8
            };
            let mut r = httparse::Request::new(&mut headers[..n]);
            assert_eq!(r.parse(buf), Err(err), "{:?}", String::from_utf8_lossy(buf));
        }
        // And what it accepts that a strict proxy must not: bare LF line endings.
        let mut r = httparse::Request::new(&mut headers);
        assert!(matches!(
            r.parse(b"GET / HTTP/1.1\nHost: h\nX: a\n\n"),
            Ok(httparse::Status::Complete(_))
        ));
    }

    #[test]
    fn invalid_method_token() {
        assert_eq!(
            rej(b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid method")
        );
        assert_eq!(
            rej(b"GE@T / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid method")
        );
        assert_eq!(
            rej(b" / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid method")
        );
        assert_eq!(
            rej(b"G\0T / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid method")
        );
    }

    #[test]
    fn invalid_request_target_bytes() {
        for buf in [
            &b"GET /a\x7fb HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /\r\nHost: h\r\n\r\n",
        ] {
            assert_eq!(
                rej(buf),
                Reject::Malformed("invalid request target"),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn versions() {
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").version_minor, 0);
        for v in ["1.2", "2.0", "0.9", "3", "1.", "10.0"] {
            let buf = format!("GET / HTTP/{v}\r\nHost: h\r\n\r\n");
            assert_eq!(rej(buf.as_bytes()), Reject::UnsupportedVersion, "{v}");
        }
        for v in ["http/1.1", "HTTP/x", "HTTPS/1.1", "HTTP/1.x"] {
            let buf = format!("GET / {v}\r\nHost: h\r\n\r\n");
            assert_eq!(
                rej(buf.as_bytes()),
                Reject::Malformed("invalid HTTP version"),
                "{v}"
            );
        }
        // Junk after a valid version.
        assert_eq!(
            rej(b"GET / HTTP/1.10\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid request line")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid request line")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1/\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid request line")
        );
        // 505 is known before the line ends.
        assert_eq!(req(b"GET / HTTP/2"), Err(Reject::UnsupportedVersion));
        assert_eq!(req(b"GET / HTTP/1"), Ok(None));
    }

    // ---- header syntax ---------------------------------------------------------------------

    #[test]
    fn whitespace_between_name_and_colon() {
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n"),
            Reject::Smuggling("whitespace in header name")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 5\r\n\r\n"),
            Reject::Smuggling("whitespace in header name")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n"),
            Reject::Smuggling("whitespace in header name")
        );
    }

    #[test]
    fn obs_fold() {
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"),
            Reject::Smuggling("obs-fold line")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n"),
            Reject::Smuggling("obs-fold line")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n"),
            Reject::Smuggling("obs-fold line")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n"),
            Reject::Smuggling("obs-fold line")
        );
    }

    #[test]
    fn control_bytes_in_values() {
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"),
            Reject::Smuggling("NUL in header value")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nX: \0\r\n\r\n"),
            Reject::Smuggling("NUL in header value")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"),
            Reject::Smuggling("bare CR")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n"),
            Reject::Smuggling("bare CR")
        );
        for ctl in [1u8, 8, 0x0b, 0x0c, 0x1f, 0x7f] {
            let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\nX: a".to_vec();
            buf.push(ctl);
            buf.extend_from_slice(b"b\r\n\r\n");
            assert_eq!(
                rej(&buf),
                Reject::Smuggling("control character in header value"),
                "{ctl:#x}"
            );
        }
        // HTAB and obs-text are allowed.
        let h = ok(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\xff\r\n\r\n");
        assert_eq!(h.header_count, 2);
    }

    #[test]
    fn bare_lf_and_bare_cr_line_endings() {
        for buf in [
            &b"GET / HTTP/1.1\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"GET / HTTP/1.1\nHost: h\n\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nContent-Length: 5\r\n\r\n",
            b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert_eq!(
                rej(buf),
                Reject::Smuggling("line not terminated by CRLF"),
                "{buf:?}"
            );
        }
        assert_eq!(
            rej(b"GET / HTTP/1.1\rHost: h\r\n\r\n"),
            Reject::Smuggling("bare CR")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nHost: h\r\n\rX\r\n"),
            Reject::Smuggling("bare CR")
        );
        assert_eq!(
            rej(b"\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Smuggling("bare CR")
        );
    }

    #[test]
    fn invalid_header_names() {
        for buf in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nX(: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: a\r\n\r\n",
        ] {
            assert_eq!(
                rej(buf),
                Reject::Malformed("invalid header name"),
                "{buf:?}"
            );
        }
    }

    // ---- Content-Length --------------------------------------------------------------------

    #[test]
    fn content_length_valid() {
        for (v, n) in [
            ("0", 0u64),
            ("5", 5),
            ("007", 7),
            ("5, 5", 5),
            ("5,5", 5),
            ("5 ,\t5", 5),
            ("5, 05", 5),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(
                ok(&with("1", &format!("Content-Length: {v}"))).body,
                BodyKind::Length(n),
                "{v}"
            );
        }
        let two = b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(ok(two).body, BodyKind::Length(5));
        assert_eq!(
            ok(&with("0", "Content-Length: 3")).body,
            BodyKind::Length(3)
        );
    }

    #[test]
    fn content_length_invalid() {
        for v in [
            "",
            " ",
            "+5",
            "-5",
            "5a",
            "0x5",
            "5 5",
            "5,",
            ",5",
            "5,,5",
            "1e3",
            "18446744073709551616",
            "99999999999999999999999",
            "\u{00b5}",
        ] {
            assert_eq!(
                rej(&with("1", &format!("Content-Length: {v}"))),
                Reject::Smuggling("invalid Content-Length"),
                "{v:?}"
            );
        }
        for v in ["5, 6", "0, 1", "5, 5, 6"] {
            assert_eq!(
                rej(&with("1", &format!("Content-Length: {v}"))),
                Reject::Smuggling("conflicting Content-Length values"),
                "{v}"
            );
        }
        let two = b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(
            rej(two),
            Reject::Smuggling("conflicting Content-Length values")
        );
    }

    // ---- Transfer-Encoding -----------------------------------------------------------------

    #[test]
    fn transfer_encoding_valid() {
        for v in [
            "chunked",
            "Chunked",
            "CHUNKED",
            "gzip, chunked",
            "gzip,chunked",
            "deflate, gzip ,chunked",
        ] {
            assert_eq!(
                ok(&with("1", &format!("Transfer-Encoding: {v}"))).body,
                BodyKind::Chunked,
                "{v}"
            );
        }
        let split = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(ok(split).body, BodyKind::Chunked);
    }

    #[test]
    fn transfer_encoding_invalid() {
        let not_final = Reject::Smuggling("Transfer-Encoding does not end with chunked");
        for v in [
            "chunked, gzip",
            "gzip",
            "identity",
            "chunked;q=1",
            "chunk",
            "\"chunked\"",
            "xchunked",
        ] {
            assert_eq!(
                rej(&with("1", &format!("Transfer-Encoding: {v}"))),
                not_final,
                "{v}"
            );
        }
        for v in ["", ", chunked", "chunked,", "gzip,,chunked"] {
            assert_eq!(
                rej(&with("1", &format!("Transfer-Encoding: {v}"))),
                Reject::Smuggling("empty Transfer-Encoding element"),
                "{v:?}"
            );
        }
        for v in ["chunked, chunked", "chunked,gzip,chunked"] {
            assert_eq!(
                rej(&with("1", &format!("Transfer-Encoding: {v}"))),
                Reject::Smuggling("chunked applied more than once"),
                "{v}"
            );
        }
        let twice = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            rej(twice),
            Reject::Smuggling("chunked applied more than once")
        );
        let wrong_order = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(rej(wrong_order), not_final);
    }

    #[test]
    fn content_length_with_transfer_encoding() {
        let both = Reject::Smuggling("both Content-Length and Transfer-Encoding");
        assert_eq!(rej(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), both);
        assert_eq!(rej(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), both);
        assert_eq!(rej(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"), both);
        assert_eq!(rej(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n"), both);
        assert_eq!(
            rej(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            both
        );
    }

    #[test]
    fn transfer_encoding_in_http10() {
        let r = Reject::Smuggling("Transfer-Encoding in an HTTP/1.0 request");
        assert_eq!(
            rej(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            r
        );
        assert_eq!(
            rej(b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
            r
        );
    }

    // ---- Host ------------------------------------------------------------------------------

    #[test]
    fn host_rules() {
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\n\r\n"),
            Reject::Malformed("missing Host header")
        );
        assert_eq!(
            rej(b"GET / HTTP/1.1\r\nX-Host: h\r\n\r\n"),
            Reject::Malformed("missing Host header")
        );
        assert_eq!(
            rej(b"GET http://h/ HTTP/1.1\r\n\r\n"),
            Reject::Malformed("missing Host header")
        );
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").host, None);
        let two = Reject::Smuggling("more than one Host header");
        assert_eq!(rej(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), two);
        assert_eq!(rej(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), two);
        assert_eq!(rej(b"GET / HTTP/1.0\r\nHost: a\r\nHOST: a\r\n\r\n"), two);
        for v in [
            "example.com",
            "Example.COM:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "",
            "a:",
            "xn--d1a.b_c~d",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
            let h = ok(buf.as_bytes());
            assert_eq!(at(buf.as_bytes(), h.host.as_ref().unwrap()), v.as_bytes());
        }
        for v in [
            "a b", "a/b", "a@b", "[::1", "[::1]x", "[]", "[g::1]", "a:b", "a:123456", "a:80:80",
            "a\\b", "a?b", "a#b", "\u{00e9}",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
            assert_eq!(
                rej(buf.as_bytes()),
                Reject::Malformed("invalid Host header"),
                "{v}"
            );
        }
    }

    // ---- targets ---------------------------------------------------------------------------

    #[test]
    fn absolute_form() {
        let buf = b"GET http://Example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = ok(buf);
        assert_eq!(
            at(buf, h.absolute_form_authority.as_ref().unwrap()),
            b"Example.com:8080"
        );
        assert_eq!(at(buf, &h.target), b"/p/q?x=1");
        assert_eq!(at(buf, &h.authority().unwrap()), b"Example.com:8080");
        assert_eq!(at(buf, h.host.as_ref().unwrap()), b"other");

        let buf = b"GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = ok(buf);
        assert_eq!(at(buf, h.absolute_form_authority.as_ref().unwrap()), b"h");
        assert!(h.target.is_empty());
        assert_eq!(
            h.target.start,
            buf.iter().position(|&b| b == b' ').unwrap() + 1 + "HTTPS://h".len()
        );

        let buf = b"GET http://[::1]:80?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = ok(buf);
        assert_eq!(
            at(buf, h.absolute_form_authority.as_ref().unwrap()),
            b"[::1]:80"
        );
        assert_eq!(at(buf, &h.target), b"?x=1");
        assert_eq!(h.path(buf), b"");
        assert_eq!(h.query(buf), b"?x=1");

        let buf = b"GET http://h/ HTTP/1.0\r\n\r\n";
        let h = ok(buf);
        assert_eq!(at(buf, &h.authority().unwrap()), b"h");
        assert_eq!(h.host, None);
    }

    #[test]
    fn absolute_form_invalid() {
        for (t, why) in [
            ("ftp://h/", "invalid request target"),
            ("http:/h/", "invalid request target"),
            ("http//h/", "invalid request target"),
            ("h/x", "invalid request target"),
            ("foo", "invalid request target"),
            ("http://", "invalid authority in request target"),
            ("http:///x", "invalid authority in request target"),
            ("http://:80/x", "invalid authority in request target"),
            ("http://h:x/", "invalid authority in request target"),
            ("http://u@h/", "userinfo in request target"),
            ("http://u:p@h/", "userinfo in request target"),
            ("http://h#frag", "fragment in request target"),
        ] {
            let buf = format!("GET {t} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(rej(buf.as_bytes()), Reject::Malformed(why), "{t}");
        }
    }

    #[test]
    fn authority_and_asterisk_forms() {
        let buf = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
        let h = ok(buf);
        assert_eq!(at(buf, &h.target), b"example.com:443");
        assert_eq!(h.absolute_form_authority, None);
        assert_eq!(
            ok(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n").method,
            Method::Connect
        );
        let needs = Reject::Malformed("CONNECT needs an authority-form target");
        assert_eq!(rej(b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"), needs);
        assert_eq!(
            rej(b"CONNECT example.com HTTP/1.1\r\nHost: h\r\n\r\n"),
            needs
        );
        assert_eq!(
            rej(b"CONNECT example.com: HTTP/1.1\r\nHost: h\r\n\r\n"),
            needs
        );
        assert_eq!(rej(b"CONNECT :443 HTTP/1.1\r\nHost: h\r\n\r\n"), needs);
        assert_eq!(
            rej(b"CONNECT http://h:443/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid CONNECT target")
        );
        assert_eq!(
            rej(b"CONNECT a/b:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid CONNECT target")
        );
        assert_eq!(
            rej(b"GET example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid request target")
        );

        let buf = b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = ok(buf);
        assert_eq!(at(buf, &h.target), b"*");
        let only = Reject::Malformed("asterisk-form target is only for OPTIONS");
        assert_eq!(rej(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"), only);
        assert_eq!(rej(b"options * HTTP/1.1\r\nHost: h\r\n\r\n"), only);
        assert_eq!(
            rej(b"OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n"),
            Reject::Malformed("invalid request target")
        );
    }

    // ---- limits ----------------------------------------------------------------------------

    fn get_with_target_len(n: usize) -> Vec<u8> {
        let mut target = vec![b'a'; n];
        target[0] = b'/';
        let mut buf = b"GET ".to_vec();
        buf.extend_from_slice(&target);
        buf.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
        buf
    }

    #[test]
    fn uri_limit() {
        let l = Limits::default();
        assert!(matches!(
            parse_request(&get_with_target_len(8192), &l),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_request(&get_with_target_len(8193), &l),
            Err(Reject::UriTooLong)
        );
        let small = Limits {
            max_uri_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_request(&get_with_target_len(10), &small),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_request(&get_with_target_len(11), &small),
            Err(Reject::UriTooLong)
        );
        // Still receiving the request line: 414 as soon as the target is over the limit.
        let partial = get_with_target_len(11);
        assert_eq!(parse_request(&partial[..4 + 10], &small), Ok(None));
        assert_eq!(
            parse_request(&partial[..4 + 11], &small),
            Err(Reject::UriTooLong)
        );
        // Target complete, version still arriving.
        assert_eq!(
            parse_request(&partial[..4 + 11 + 3], &small),
            Err(Reject::UriTooLong)
        );
        // Absolute-form counts the whole target as sent.
        let abs = b"GET http://h/12 HTTP/1.1\r\nHost: h\r\n\r\n";
        let l11 = Limits {
            max_uri_bytes: 11,
            ..Limits::default()
        };
        assert!(matches!(parse_request(abs, &l11), Ok(Some(_))));
        let l10 = Limits {
            max_uri_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(parse_request(abs, &l10), Err(Reject::UriTooLong));
    }

    #[test]
    fn head_size_limit_exactly_at_and_over() {
        let base = b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n".len();
        let build = |total: usize| {
            let pad = "a".repeat(total - base);
            format!("GET / HTTP/1.1\r\nHost: h\r\nX: {pad}\r\n\r\n").into_bytes()
        };
        let limits = Limits {
            max_head_bytes: 200,
            ..Limits::default()
        };
        let exact = build(200);
        assert_eq!(exact.len(), 200);
        assert_eq!(
            parse_request(&exact, &limits).unwrap().unwrap().head_len,
            200
        );
        // With body bytes after it, still fine: only the head counts.
        let mut with_body = exact.clone();
        with_body.extend_from_slice(&[b'z'; 1000]);
        assert_eq!(
            parse_request(&with_body, &limits)
                .unwrap()
                .unwrap()
                .head_len,
            200
        );
        let over = build(201);
        assert_eq!(parse_request(&over, &limits), Err(Reject::HeadTooLarge));
        // Incomplete: fine below the limit, refused once the buffer reaches it.
        assert_eq!(parse_request(&over[..199], &limits), Ok(None));
        assert_eq!(
            parse_request(&over[..200], &limits),
            Err(Reject::HeadTooLarge)
        );
        // Default limit: 64 KiB exactly.
        let l = Limits::default();
        let exact = build(65536);
        assert!(matches!(parse_request(&exact, &l), Ok(Some(_))));
        assert_eq!(parse_request(&build(65537), &l), Err(Reject::HeadTooLarge));
    }

    fn with_n_headers(n: usize) -> Vec<u8> {
        let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 1..n {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        buf
    }

    #[test]
    fn header_count_limit_exactly_at_and_over() {
        let l = Limits::default();
        assert_eq!(
            parse_request(&with_n_headers(100), &l)
                .unwrap()
                .unwrap()
                .header_count,
            100
        );
        assert_eq!(
            parse_request(&with_n_headers(101), &l),
            Err(Reject::TooManyHeaders)
        );
        let five = Limits {
            max_headers: 5,
            ..l
        };
        assert!(matches!(
            parse_request(&with_n_headers(5), &five),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_request(&with_n_headers(6), &five),
            Err(Reject::TooManyHeaders)
        );
        // Known before the head ends: the 6th header line is complete.
        let six = with_n_headers(6);
        assert_eq!(
            parse_request(&six[..six.len() - 2], &five),
            Err(Reject::TooManyHeaders)
        );
        // Hard cap.
        let big = Limits {
            max_headers: 1000,
            ..l
        };
        assert!(matches!(
            parse_request(&with_n_headers(128), &big),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_request(&with_n_headers(129), &big),
            Err(Reject::TooManyHeaders)
        );
        let zero = Limits {
            max_headers: 0,
            ..l
        };
        assert!(matches!(
            parse_request(b"GET / HTTP/1.0\r\n\r\n", &zero),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_request(b"GET / HTTP/1.0\r\nA: b\r\n\r\n", &zero),
            Err(Reject::TooManyHeaders)
        );
    }

    // ---- connection semantics --------------------------------------------------------------

    #[test]
    fn keep_alive() {
        let cases: [(&[u8], bool); 12] = [
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: foo,  keep-alive \r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false),
        ];
        for (buf, ka) in cases {
            assert_eq!(ok(buf).keep_alive, ka, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn expect_continue() {
        assert!(
            ok(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .expect_continue
        );
        assert!(ok(b"PUT / HTTP/1.1\r\nHost: h\r\nexpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!ok(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(!ok(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: foo\r\n\r\n").expect_continue);
        assert!(!ok(b"PUT / HTTP/1.1\r\nHost: h\r\n\r\n").expect_continue);
    }

    #[test]
    fn upgrade() {
        let ws =
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(ok(ws).upgrade);
        assert!(ok(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n").upgrade);
        // h2c is never an upgrade we pass on (issue 19, item 5), alone or among others.
        for v in ["h2c", "H2C", "websocket, h2c", "h2c/1.0", " h2c "] {
            let req = format!(
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {v}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            );
            assert!(!ok(req.as_bytes()).upgrade, "{v}");
        }
        assert!(
            ok(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2cx\r\n\r\n")
                .upgrade
        );
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(
            !ok(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade
        );
    }

    // ---- responses -------------------------------------------------------------------------

    #[test]
    fn response_basic() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let h = resp_ok(buf, Method::Get);
        assert_eq!(h.head_len, buf.len() - 5);
        assert_eq!(
            (h.status, h.version_minor, h.body),
            (200, 1, BodyKind::Length(5))
        );
        assert!(h.keep_alive && !h.upgrade && !h.interim && !h.drop_content_length);
        assert_eq!(at(buf, &h.reason), b"OK");
        let buf = b"\r\nHTTP/1.0 404 Not  Found \nX: y\n\n";
        assert_eq!(at(buf, &resp_ok(buf, Method::Get).reason), b"Not  Found ");
        assert_eq!(
            resp_ok(b"HTTP/1.1 200 \xe9t\xe9\r\n\r\n", Method::Get).reason,
            0..0
        );
        assert_eq!(resp_ok(b"HTTP/1.1 200 \r\n\r\n", Method::Get).reason, 0..0);
        // No reason phrase, leading empty line.
        let h = resp_ok(b"\r\nHTTP/1.1 204\r\n\r\n", Method::Get);
        assert_eq!((h.status, h.body), (204, BodyKind::None));
    }

    #[test]
    fn response_every_prefix_is_incomplete() {
        for msg in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\n"[..],
            b"HTTP/1.0 404 Not Found\nConnection: keep-alive\n\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ] {
            assert_eq!(resp_ok(msg, Method::Get).head_len, msg.len());
            for i in 0..msg.len() {
                assert_eq!(resp(&msg[..i], Method::Get), Ok(None), "prefix {i}");
            }
        }
    }

    #[test]
    fn response_framing() {
        let cases: [(&[u8], Method, BodyKind, bool); 19] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::Head,
                BodyKind::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Head,
                BodyKind::None,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Method::Get,
                BodyKind::None,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                Method::Get,
                BodyKind::None,
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Method::Post,
                BodyKind::None,
                true,
            ),
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
                Method::Get,
                BodyKind::None,
                true,
            ),
            (
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                Method::Connect,
                BodyKind::CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::Connect,
                BodyKind::CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\n",
                Method::Connect,
                BodyKind::Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Get,
                BodyKind::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Method::Get,
                BodyKind::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Method::Get,
                BodyKind::CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::Get,
                BodyKind::CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Method::Get,
                BodyKind::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Post,
                BodyKind::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::Get,
                BodyKind::CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Method::Get,
                BodyKind::Length(5),
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                Method::Get,
                BodyKind::Chunked,
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
                Method::Get,
                BodyKind::Length(2),
                true,
            ),
        ];
        for (buf, m, body, ka) in cases {
            let h = resp_ok(buf, m);
            assert_eq!(
                (h.body, h.keep_alive),
                (body, ka),
                "{:?} to {m:?}",
                String::from_utf8_lossy(buf)
            );
        }
        let both = resp_ok(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            Method::Get,
        );
        assert!(both.drop_content_length);
    }

    #[test]
    fn response_status_kinds_and_keep_alive() {
        let h = resp_ok(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", Method::Get);
        assert!(h.upgrade && !h.interim);
        assert_eq!(h.body, BodyKind::None);
        let h = resp_ok(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Put);
        assert!(h.interim && !h.upgrade);
        assert!(!resp_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::Get).interim);
        assert!(
            !resp_ok(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Method::Get
            )
            .keep_alive
        );
        assert!(!resp_ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::Get).keep_alive);
        assert!(
            resp_ok(
                b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
                Method::Get
            )
            .keep_alive
        );
        assert!(resp_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\n", Method::Get).keep_alive);
    }

    #[test]
    fn response_rejections() {
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            "invalid Content-Length"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"),
            "invalid Content-Length"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n"),
            "conflicting Content-Length values"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            "conflicting Content-Length values"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 304 OK\r\nContent-Length: -1\r\n\r\n"),
            "invalid Content-Length"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            "chunked applied more than once"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n"),
            "empty Transfer-Encoding element"
        );
        assert_eq!(resp_rej(b"HTTP/1.1 099 X\r\n\r\n"), "invalid status code");
        assert_eq!(resp_rej(b"HTTP/1.1 600 X\r\n\r\n"), "invalid status code");
        assert_eq!(resp_rej(b"HTTP/1.1 20 X\r\n\r\n"), "invalid status line");
        assert_eq!(resp_rej(b"HTTP/1.1 2000 X\r\n\r\n"), "invalid status line");
        assert_eq!(
            resp_rej(b"HTTP/2.0 200 OK\r\n\r\n"),
            "unsupported HTTP version in response"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"),
            "invalid header name in response"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n"),
            "invalid header name in response"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n"),
            "invalid header value in response"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"),
            "invalid header value in response"
        );
        assert_eq!(
            resp_rej(b"HTTP/1.1 200 OK\r\n\rX"),
            "invalid line ending in response"
        );
        assert_eq!(Reject::BadResponse("x").status(), 502);
    }

    #[test]
    fn response_limits() {
        let five = Limits {
            max_headers: 2,
            max_head_bytes: 60,
            ..Limits::default()
        };
        let two = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(
            parse_response(two, Method::Get, &five),
            Ok(Some(_))
        ));
        let three = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_response(three, Method::Get, &five),
            Err(Reject::BadResponse("too many header fields in response"))
        );
        let base = b"HTTP/1.1 200 OK\r\nX: \r\n\r\n".len();
        let build = |n: usize| {
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(n - base)).into_bytes()
        };
        let l = Limits {
            max_head_bytes: 60,
            ..Limits::default()
        };
        assert!(matches!(
            parse_response(&build(60), Method::Get, &l),
            Ok(Some(_))
        ));
        assert_eq!(
            parse_response(&build(61), Method::Get, &l),
            Err(Reject::BadResponse("response head too large"))
        );
        assert_eq!(parse_response(&build(61)[..59], Method::Get, &l), Ok(None));
    }

    // ---- header iteration and helpers ------------------------------------------------------

    #[test]
    fn header_lines_in_order_with_values_trimmed() {
        let buf =
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A:  one two \t\r\nx-b:\r\nX-A: three\r\n\r\nbody: no";
        let h = ok(buf);
        let mut seen = Vec::new();
        for_each_header(buf, h.head_len, |n, v| {
            seen.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        let expect = [
            ("Host", "h"),
            ("X-A", "one two"),
            ("x-b", ""),
            ("X-A", "three"),
        ];
        assert_eq!(seen.len(), expect.len());
        for ((n, v), (en, ev)) in seen.iter().zip(expect) {
            assert_eq!((n.as_str(), v.as_str()), (en, ev));
        }
        let resp = b"HTTP/1.1 200 OK\nA: 1\nB: 2\n\n";
        let h = resp_ok(resp, Method::Get);
        assert_eq!(HeaderLines::new(resp, h.head_len).count(), 2);
        // Values may contain colons.
        let buf = b"GET / HTTP/1.1\r\nHost: h:8080\r\n\r\n";
        assert_eq!(
            HeaderLines::new(buf, buf.len()).next(),
            Some((&b"Host"[..], &b"h:8080"[..]))
        );
    }

    #[test]
    fn header_lines_never_panic_on_odd_input() {
        for (buf, len) in [
            (&b""[..], 0usize),
            (b"\r\n", 2),
            (b"GET", 100),
            (b"GET / HTTP/1.1\r\nnocolon\r\nA:b", 1000),
            (b"x\n:\n:\n", 6),
            (b"\n\n\n", 3),
        ] {
            let _ = HeaderLines::new(buf, len).count();
        }
    }

    #[test]
    fn head_may_be_complete_hint() {
        let msg = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut scanned = 0;
        let mut first_true = None;
        for end in 1..=msg.len() {
            if head_may_be_complete(&msg[..end], scanned) && first_true.is_none() {
                first_true = Some(end);
            }
            scanned = end;
        }
        assert_eq!(first_true, Some(msg.len()));
        assert!(head_may_be_complete(b"GET / HTTP/1.0\n\n", 0));
        assert!(!head_may_be_complete(b"GET / HTTP/1.0\r\nA: b\r\n", 0));
        assert!(head_may_be_complete(msg, msg.len() - 1));
        assert!(!head_may_be_complete(msg, msg.len() + 10));
    }

    #[test]
    fn split_host_port_shapes() {
        assert_eq!(split_host_port(b"h"), Some((&b"h"[..], None)));
        assert_eq!(
            split_host_port(b"h:80"),
            Some((&b"h"[..], Some(&b"80"[..])))
        );
        assert_eq!(split_host_port(b"h:"), Some((&b"h"[..], Some(&b""[..]))));
        assert_eq!(
            split_host_port(b"[::1]:80"),
            Some((&b"[::1]"[..], Some(&b"80"[..])))
        );
        assert_eq!(split_host_port(b"[::1]"), Some((&b"[::1]"[..], None)));
        assert_eq!(split_host_port(b"[::1"), None);
        assert_eq!(split_host_port(b"[::1]x"), None);
        assert_eq!(split_host_port(b""), Some((&b""[..], None)));
    }

    /// Deterministic pseudo-random numbers (xorshift64) for the noise tests.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// The header spans a response parse records give exactly what scanning the head's lines
    /// gives (the response head rewrite uses them instead of a second scan): whitespace around
    /// and inside values, LF or CRLF line ends, empty values, leading empty lines, more
    /// headers than are recorded.
    #[test]
    fn header_spans_match_a_scan_of_the_lines() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        const NAMES: [&str; 6] = ["A", "Content-Type", "x-y", "Connection", "Set-Cookie", "Z9"];
        const VALUES: [&str; 6] = ["", "v", "a b", "x:y", "close", "t\tu"];
        const WS: [&str; 4] = ["", " ", "\t", " \t "];
        let limits = Limits::default();
        let mut buf = Vec::new();
        let mut recorded = [0usize; 2];
        for _ in 0..5_000 {
            buf.clear();
            let eol: &[u8] = if next() % 2 == 0 { b"\r\n" } else { b"\n" };
            if next() % 5 == 0 {
                buf.extend_from_slice(eol);
            }
            let request = next() % 2 == 0;
            if request {
                buf.extend_from_slice(b"GET / HTTP/1.1");
                buf.extend_from_slice(eol);
                buf.extend_from_slice(b"Host: h");
            } else {
                buf.extend_from_slice(b"HTTP/1.1 200 OK");
            }
            buf.extend_from_slice(eol);
            let lines = (next() % (HEADER_SPANS as u64 + 6)) as usize;
            for _ in 0..lines {
                let r = next();
                buf.extend_from_slice(NAMES[r as usize % NAMES.len()].as_bytes());
                buf.push(b':');
                buf.extend_from_slice(WS[(r >> 8) as usize % WS.len()].as_bytes());
                buf.extend_from_slice(VALUES[(r >> 16) as usize % VALUES.len()].as_bytes());
                buf.extend_from_slice(WS[(r >> 24) as usize % WS.len()].as_bytes());
                buf.extend_from_slice(eol);
            }
            buf.extend_from_slice(b"Content-Length: 0");
            buf.extend_from_slice(eol);
            buf.extend_from_slice(eol);
            let (head_len, headers) = if request {
                match parse_request(&buf, &limits) {
                    Ok(Some(h)) => (h.head_len, h.headers),
                    _ => continue,
                }
            } else {
                match parse_response(&buf, Method::Get, &limits) {
                    Ok(Some(h)) => (h.head_len, h.headers),
                    _ => continue,
                }
            };
            let mut scanned = Vec::new();
            for_each_header(&buf, head_len, |n, v| {
                scanned.push((n.to_vec(), v.to_vec()))
            });
            let mut spans = Vec::new();
            headers.for_each(&buf, head_len, |n, v| spans.push((n.to_vec(), v.to_vec())));
            assert_eq!(spans, scanned, "{:?}", String::from_utf8_lossy(&buf));
            let within = lines + 2 <= HEADER_SPANS;
            recorded[usize::from(request)] += usize::from(within);
        }
        assert!(
            recorded.iter().all(|&n| n > 300),
            "too few heads within the recorded count: {recorded:?}"
        );
    }

    /// Deterministic pseudo-random bytes drawn mostly from HTTP's alphabet: the parsers must
    /// return, never panic.
    #[test]
    fn no_panic_on_noise() {
        const ALPHABET: &[u8] = b"GET HTTP/1.0 \r\n:;,\t\0\x7f\xff/?#[]@Host Content-Length Transfer-Encoding chunked 0123456789";
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let limits = Limits {
            max_head_bytes: 300,
            max_headers: 8,
            max_uri_bytes: 40,
        };
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            let prefix: &[u8] = match next() % 3 {
                0 => b"GET / HTTP/1.1\r\n",
                1 => b"HTTP/1.1 200 OK\r\n",
                _ => b"",
            };
            buf.extend_from_slice(prefix);
            let len = (next() % 120) as usize;
            for _ in 0..len {
                let r = next();
                buf.push(if r % 8 == 0 {
                    r as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                });
            }
            if let Ok(Some(h)) = parse_request(&buf, &limits) {
                let mut scanned = Vec::new();
                for_each_header(&buf, h.head_len, |n, v| {
                    scanned.push((n.to_vec(), v.to_vec()))
                });
                let spans: Vec<_> = h
                    .headers
                    .iter(&buf, h.head_len)
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                assert_eq!(spans, scanned, "{:?}", String::from_utf8_lossy(&buf));
                let _ = (h.path(&buf), h.query(&buf));
            }
            if let Ok(Some(h)) = parse_response(&buf, Method::Get, &limits) {
                // The recorded header spans say what a scan of the lines says.
                let mut scanned = Vec::new();
                for_each_header(&buf, h.head_len, |n, v| {
                    scanned.push((n.to_vec(), v.to_vec()))
                });
                let mut spans = Vec::new();
                h.headers.for_each(&buf, h.head_len, |n, v| {
                    spans.push((n.to_vec(), v.to_vec()))
                });
                assert_eq!(spans, scanned, "{:?}", String::from_utf8_lossy(&buf));
            }
            for_each_header(&buf, buf.len(), |_, _| {});
            let _ = head_may_be_complete(&buf, (next() % 200) as usize);
        }
    }

    /// `eq_lower` answers what `eq_ignore_ascii_case` does: every name this crate compares
    /// against, with every byte value at every position, in both cases, and noise.
    #[test]
    fn eq_lower_is_eq_ignore_ascii_case() {
        let names: [&[u8]; 8] = [
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"x-request-id",
            b"x-forwarded-for",
            b"host",
            b"12345678",
            b"x-forwarded-proto",
        ];
        for lower in names {
            let upper = lower.to_ascii_uppercase();
            assert!(eq_lower(lower, lower));
            assert!(eq_lower(&upper, lower));
            for at in 0..lower.len() {
                for b in 0..=255u8 {
                    for base in [lower, &upper[..]] {
                        let mut v = base.to_vec();
                        v[at] = b;
                        assert_eq!(
                            eq_lower(&v, lower),
                            v.eq_ignore_ascii_case(lower),
                            "{:?} vs {:?}",
                            String::from_utf8_lossy(&v),
                            String::from_utf8_lossy(lower)
                        );
                    }
                }
            }
            assert!(!eq_lower(&lower[1..], lower));
            let mut longer = lower.to_vec();
            longer.push(b'x');
            assert!(!eq_lower(&longer, lower));
        }
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let lower = names[(next() % names.len() as u64) as usize];
            let v: Vec<u8> = lower
                .iter()
                .map(|&c| match next() % 4 {
                    0 => c.to_ascii_uppercase(),
                    1 => next() as u8,
                    _ => c,
                })
                .collect();
            assert_eq!(eq_lower(&v, lower), v.eq_ignore_ascii_case(lower));
        }
    }

    /// The one-pass check of a reg-name Host answers what splitting at the colon and
    /// checking both parts did (the reference below), on the shapes and on noise.
    #[test]
    fn valid_host_port_matches_split_then_check() {
        fn reference(v: &[u8], require_port: bool) -> bool {
            let Some((host, port)) = split_host_port(v) else {
                return false;
            };
            let host_ok = match host {
                [b'[', inner @ .., b']'] => {
                    !inner.is_empty()
                        && inner
                            .iter()
                            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                }
                _ => host.iter().all(|&b| is_reg_name_char(b)),
            };
            let port_ok = match port {
                None => !require_port,
                Some(p) => {
                    p.len() <= 5
                        && p.iter().all(u8::is_ascii_digit)
                        && !(require_port && p.is_empty())
                }
            };
            host_ok && port_ok
        }
        let shapes: [&[u8]; 16] = [
            b"",
            b"h",
            b"h:",
            b":",
            b":80",
            b"h:80",
            b"h:123456",
            b"127.0.0.1:8080",
            b"a.b-c_d~e%41!$&'()*+,;=:1",
            b"h:8a",
            b"h:80:90",
            b"h p:80",
            b"[::1]:80",
            b"[::1]",
            b"[::1",
            b"\xffhost",
        ];
        for v in shapes {
            for require_port in [false, true] {
                assert_eq!(
                    valid_host_port(v, require_port),
                    reference(v, require_port),
                    "{v:?}"
                );
            }
        }
        let alphabet = b"ab.-:9[]% \t/@";
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..50_000 {
            let len = (next() % 12) as usize;
            let v: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0 => next() as u8,
                    _ => alphabet[(next() % alphabet.len() as u64) as usize],
                })
                .collect();
            for require_port in [false, true] {
                assert_eq!(
                    valid_host_port(&v, require_port),
                    reference(&v, require_port),
                    "{v:?}"
                );
            }
        }
    }
}
