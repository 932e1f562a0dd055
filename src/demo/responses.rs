//! The demo backend's answers: the prebuilt ones (`/`, `/health`, 404, 400 in every
//! Connection variant, built once at start-up so the benchmark path copies bytes and
//! allocates nothing), the head and body writers for the others, and the `/bytes` pattern
//! generator. Output goes to the connection's buffer; nothing here does I/O.

/// Largest chunk of a chunked `/bytes` body (and largest piece copied from the pattern table).
pub(super) const STREAM_CHUNK: usize = 64 * 1024;
/// `/bytes` body bytes generated at a time, once the previous batch has been sent.
pub(super) const STREAM_BATCH: usize = 256 * 1024;
/// Period of the `/bytes` pattern (prime).
pub(super) const PATTERN_PERIOD: usize = 251;

pub(super) const TEXT: &str = "text/plain";
pub(super) const JSON: &str = "application/json";
pub(super) const OCTETS: &str = "application/octet-stream";
pub(super) const HEALTH_BODY: &[u8] = br#"{"status":"OK!"}"#;
pub(super) const BAD_X_BODY: &[u8] =
    br#"{"Data":{"Msg":"Field x is either not valid or not present","Code":7}}"#;
pub(super) const BAD_Y_BODY: &[u8] =
    br#"{"Data":{"Msg":"Field y is either not valid or not present","Code":7}}"#;
pub(super) const OVERFLOW_BODY: &[u8] = br#"{"Data":{"Msg":"Result overflows","Code":7}}"#;

/// Start-up data shared by the workers: prebuilt answers, the id, the `/bytes` pattern.
pub(super) struct Responses {
    /// [answer][conn][head]: answer ROOT / NOT_FOUND / HEALTH; conn CONN_*; head 0 = GET, 1 = HEAD.
    pub(super) table: [[[Vec<u8>; 2]; 3]; 3],
    pub(super) bad_request: Vec<u8>,
    /// `<id>\n`: the `/` and `?status=` body.
    pub(super) id_line: Vec<u8>,
    /// The id as a JSON string literal.
    pub(super) id_json: Vec<u8>,
    /// `pattern[j] = pattern_byte(j)` for `j < PATTERN_PERIOD + STREAM_CHUNK`, so the bytes at any
    /// body offset `p` are `pattern[p % PATTERN_PERIOD..]`.
    pub(super) pattern: Vec<u8>,
}

pub(super) const ROOT: usize = 0;
pub(super) const NOT_FOUND: usize = 1;
pub(super) const HEALTH: usize = 2;

pub(super) const CONN_NONE: usize = 0;
pub(super) const CONN_CLOSE: usize = 1;
pub(super) const CONN_KEEP_ALIVE: usize = 2;

impl Responses {
    pub(super) fn new(id: &str) -> Responses {
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
pub(super) fn pattern_byte(i: u64) -> u8 {
    ((i % PATTERN_PERIOD as u64) * 31 + 7) as u8
}

/// A `/bytes` body being generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stream {
    /// Body offset of the next byte.
    pub(super) pos: u64,
    pub(super) left: u64,
    pub(super) chunked: bool,
}

/// Appends up to `STREAM_BATCH` body bytes (as chunks of at most `STREAM_CHUNK` when chunked, then
/// the last chunk); true once the whole body has been appended.
pub(super) fn fill_stream(s: &mut Stream, out: &mut Vec<u8>, pattern: &[u8]) -> bool {
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
pub(super) enum Len {
    Length(u64),
    Chunked,
    /// No body and no framing header (204, 304).
    None,
}

pub(super) fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    ctype: Option<&str>,
    len: Len,
    conn: usize,
) {
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

pub(super) fn write_body_answer(
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

pub(super) fn push_u64(out: &mut Vec<u8>, mut v: u64) {
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

pub(super) fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Lowercase hex, zero-padded to at least `min_digits` (1..=16).
pub(super) fn push_hex(out: &mut Vec<u8>, v: u64, min_digits: usize) {
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
pub(super) fn push_json_str(out: &mut Vec<u8>, s: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
