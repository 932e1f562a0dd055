//! The differential framing target: where a request body ends must have exactly one reading.
//! [`reference`] is a second, independent and deliberately naive reading of the same bytes
//! (RFC 9112 §6 plus our documented smuggling policy, written line by line with no shared
//! code and no `httparse`). The proxy's decision must equal it:
//!
//! - the proxy accepts a head → the reference finds the same framing (none, length N,
//!   chunked) and no framing fault;
//! - the proxy rejects it as smuggling → the reference finds a framing fault too.
//!
//! Rejections for other reasons (a bad method, no Host...) constrain nothing: the reference
//! does not repeat every rule, only those that decide where the body ends.

use arbitrary::{Arbitrary, Unstructured};
use switchyard::http::head::{self, BodyKind, Reject};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// The bytes do not frame a body unambiguously.
    Fault,
}

/// Splits the head into lines; any line not ended by CRLF is a fault (a bare LF or CR lets
/// two parsers see different header sets).
fn lines(head: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = head;
    while !rest.is_empty() {
        let i = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..i];
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return None;
        }
        out.push(line);
        rest = &rest[i + 2..];
    }
    Some(out)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}

/// The reference reading of a complete request head (through its empty line).
pub fn reference(head: &[u8]) -> Framing {
    let Some(lines) = lines(head) else {
        return Framing::Fault;
    };
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    let start = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let Some((request_line, fields)) = lines[start..].split_first() else {
        return Framing::Fault;
    };
    let http10 = request_line.ends_with(b" HTTP/1.0");
    let mut lengths: Vec<u64> = Vec::new();
    let mut codings: Vec<Vec<u8>> = Vec::new();
    let mut saw_te = false;
    for line in fields.iter().filter(|l| !l.is_empty()) {
        if line[0] == b' ' || line[0] == b'\t' {
            return Framing::Fault; // obs-fold: continues a header we cannot see
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Framing::Fault;
        };
        let name = &line[..colon];
        if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Framing::Fault; // "Transfer-Encoding : chunked"
        }
        // A field line two parsers could split differently: a name that is not a token (a
        // space, a NUL: "Content-Length\0: 5"), a control character in a value.
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Framing::Fault;
        }
        let raw_value = &line[colon + 1..];
        if raw_value
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Framing::Fault;
        }
        let value = trim(raw_value);
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let p = trim(part);
                if p.is_empty() || !p.iter().all(u8::is_ascii_digit) {
                    return Framing::Fault;
                }
                let Some(n) = std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    return Framing::Fault;
                };
                lengths.push(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            saw_te = true;
            for part in value.split(|&b| b == b',') {
                let p = trim(part);
                if p.is_empty() {
                    return Framing::Fault; // our policy: no empty elements (",chunked")
                }
                codings.push(p.to_ascii_lowercase());
            }
        }
    }
    if saw_te {
        if !lengths.is_empty() || http10 {
            return Framing::Fault;
        }
        let chunked_count = codings
            .iter()
            .filter(|c| c.as_slice() == b"chunked")
            .count();
        if codings.last().map(Vec::as_slice) == Some(b"chunked") && chunked_count == 1 {
            return Framing::Chunked;
        }
        return Framing::Fault;
    }
    match lengths.split_first() {
        None => Framing::None,
        Some((&first, rest)) if rest.iter().all(|&n| n == first) => match first {
            0 => Framing::None,
            n => Framing::Length(n),
        },
        Some(_) => Framing::Fault,
    }
}

fn ours(data: &[u8]) -> Option<(Result<Framing, Reject>, usize)> {
    match head::parse_request(data, &crate::FUZZ_LIMITS) {
        Ok(None) => None,
        Ok(Some(h)) => {
            let f = match h.body {
                BodyKind::None | BodyKind::Length(0) => Framing::None,
                BodyKind::Length(n) => Framing::Length(n),
                BodyKind::Chunked => Framing::Chunked,
                BodyKind::CloseDelimited => Framing::Fault, // never for a request
            };
            Some((Ok(f), h.head_len))
        }
        Err(r) => Some((Err(r), 0)),
    }
}

/// Raw bytes: compare on whatever complete head they hold.
pub fn differential(data: &[u8]) {
    let Some(end) = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
    else {
        return;
    };
    compare(&data[..end]);
}

fn compare(head_bytes: &[u8]) {
    let Some((decision, head_len)) = ours(head_bytes) else {
        return;
    };
    let theirs = reference(head_bytes);
    match decision {
        Ok(f) => {
            assert_eq!(head_len, head_bytes.len(), "head ends elsewhere");
            assert_eq!(
                f,
                theirs,
                "accepted with framing {f:?}; the reference reads {theirs:?}:\n{:?}",
                String::from_utf8_lossy(head_bytes)
            );
        }
        // Host rules (one Host, a valid one) are request smuggling of routing, not framing:
        // the reference does not model them.
        Err(Reject::Smuggling(why)) if why.contains("Host") => {}
        Err(Reject::Smuggling(why)) => assert_eq!(
            theirs,
            Framing::Fault,
            "rejected as smuggling ({why}); the reference reads it as {theirs:?}:\n{:?}",
            String::from_utf8_lossy(head_bytes)
        ),
        Err(_) => {}
    }
}

/// Structure-aware: heads made of smuggling-shaped header sets (duplicate and conflicting
/// Content-Length / Transfer-Encoding, odd spacing, case, line endings, folded lines).
#[derive(Debug, Arbitrary)]
struct Shaped {
    method: u8,
    version10: bool,
    host: bool,
    fields: Vec<Field>,
}

#[derive(Debug, Arbitrary)]
struct Field {
    name: u8,
    sep: u8,
    value: Vec<u8>,
    end: u8,
}

const NAMES: &[&[u8]] = &[
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"transfer-encoding",
    b"TRANSFER-ENCODING",
    b"Transfer-Encoding ",
    b" Transfer-Encoding",
    b"Transfer_Encoding",
    b"Content-Length\t",
    b"Connection",
    b"X-Filler",
    b"",
];
const SEPS: &[&[u8]] = &[b": ", b":", b":\t", b" : ", b": \t "];
const VALUES: &[&[u8]] = &[
    b"chunked",
    b"Chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"chunked, chunked",
    b"chunked,",
    b",chunked",
    b"identity",
    b"chunked\x0b",
    b"\"chunked\"",
    b"0",
    b"5",
    b"5, 5",
    b"5,6",
    b"+5",
    b"-1",
    b"0x5",
    b"5 5",
    b"18446744073709551615",
    b"18446744073709551616",
    b"00005",
    b"",
    b"close",
    b"Content-Length",
];
const ENDS: &[&[u8]] = &[b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "];
const FUZZ_METHODS: &[&[u8]] = &[b"GET", b"POST", b"PUT", b"CONNECT", b"HEAD"];

pub fn structured(data: &[u8]) {
    let Ok(s) = Shaped::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(FUZZ_METHODS[usize::from(s.method) % FUZZ_METHODS.len()]);
    out.extend_from_slice(if s.version10 {
        b" /p HTTP/1.0\r\n"
    } else {
        b" /p HTTP/1.1\r\n"
    });
    if s.host {
        out.extend_from_slice(b"Host: h\r\n");
    }
    for f in s.fields.iter().take(12) {
        out.extend_from_slice(NAMES[usize::from(f.name) % NAMES.len()]);
        out.extend_from_slice(SEPS[usize::from(f.sep) % SEPS.len()]);
        // Mostly a shaped value; sometimes the fuzzer's own bytes.
        match f.value.split_first() {
            Some((&k, rest)) if k >= 0xf0 => out.extend(rest.iter().take(24)),
            Some((&k, _)) => out.extend_from_slice(VALUES[usize::from(k) % VALUES.len()]),
            None => {}
        }
        out.extend_from_slice(ENDS[usize::from(f.end) % ENDS.len()]);
    }
    out.extend_from_slice(b"\r\n");
    // A shaped value can end a line early and make an empty line before ours: the head is
    // then what precedes it (the rest would be body), as for raw bytes.
    differential(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_reads_the_textbook_cases() {
        let r = |s: &str| reference(s.as_bytes());
        assert_eq!(r("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), Framing::None);
        assert_eq!(
            r("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
            Framing::Fault
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Framing::Fault
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Framing::Fault
        );
        assert_eq!(
            r("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::Fault
        );
        assert_eq!(r("POST / HTTP/1.1\nContent-Length: 5\n\n"), Framing::Fault);
    }

    #[test]
    fn the_proxy_agrees_with_the_reference_on_the_textbook_cases() {
        for h in [
            "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
        ] {
            differential(h.as_bytes());
        }
    }

    /// Every committed corpus file still passes its target (crashes found become files here).
    #[test]
    fn corpora_replay_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, target) in crate::TARGETS {
            crate::replay_dir(*target, &root.join("corpus").join(name));
            crate::replay_dir(*target, &root.join("regressions").join(name));
        }
    }
}
