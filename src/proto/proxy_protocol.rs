//! The PROXY protocol (HAProxy's `proxy-protocol.txt`), versions 1 and 2: parsing the header
//! a load balancer in front of us sends first on a connection, and writing the one we send
//! to a backend. Sans I/O: bytes in, bytes out.
//!
//! A receiver detects the version from the first bytes: `PROXY ` starts a v1 line, the
//! 12-byte signature `\r\n\r\n\0\r\nQUIT\n` a v2 block. Anything else is not a PROXY header,
//! and the connection must be closed: a listener that expects the header never guesses.
//!
//! HOT PATH (once per connection). No allocation, lock or log.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest v1 header we write (`PROXY TCP6` with two full IPv6 addresses).
pub const MAX_HEADER: usize = 232;

/// Which version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Header bytes to drop from the front of the stream.
    pub len: usize,
    /// The original connection: (source = the client, destination = the address it reached).
    /// `None` for `UNKNOWN` (v1), `LOCAL` or an unsupported family (v2): the connection's own
    /// addresses then stand.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    pub version: Version,
}

/// What the bytes so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a valid header: read more.
    Partial,
    Complete(Header),
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts like one but is malformed (the reason, for logs).
    Malformed(&'static str),
}

impl Error {
    pub fn reason(self) -> &'static str {
        match self {
            Error::Missing => "no PROXY protocol header",
            Error::Malformed(r) => r,
        }
    }
}

/// Parses the start of a stream. `Partial` only while `buf` is a prefix of a header that can
/// still become valid (a v2 header longer than `max` is refused rather than waited for).
pub fn parse(buf: &[u8], max: usize) -> Result<Parsed, Error> {
    const V1_TAG: &[u8] = b"PROXY ";
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] && !buf.is_empty() {
        if buf.len() < 16 {
            return Ok(Parsed::Partial);
        }
        return parse_v2(buf, max);
    }
    let n = buf.len().min(V1_TAG.len());
    if buf[..n] == V1_TAG[..n] && !buf.is_empty() {
        if buf.len() < V1_TAG.len() {
            return Ok(Parsed::Partial);
        }
        return parse_v1(buf);
    }
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    Err(Error::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(Error::Malformed("PROXY v1 line longer than 107 bytes"));
        }
        // A lone CR or LF elsewhere, or bytes that cannot be in the line, fail at once.
        if window
            .iter()
            .take(window.len().saturating_sub(1))
            .any(|&b| b == b'\r' || b == b'\n')
            || window.last() == Some(&b'\n')
        {
            return Err(Error::Malformed("PROXY v1 line not ended by CRLF"));
        }
        return Ok(Parsed::Partial);
    };
    // A lone CR or LF before the CRLF: the same answer as while the line was partial.
    if buf[..end].iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(Error::Malformed("PROXY v1 line not ended by CRLF"));
    }
    let line = std::str::from_utf8(&buf[6..end])
        .map_err(|_| Error::Malformed("PROXY v1 line is not ASCII"))?;
    let len = end + 2;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Parsed::Complete(Header {
            len,
            addrs: None,
            version: Version::V1,
        }));
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(Error::Malformed(
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Error::Malformed(
            "PROXY v1: expected 4 fields after the protocol",
        ));
    };
    let ip = |s: &str| -> Result<IpAddr, Error> {
        let a: IpAddr = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| Error::Malformed("PROXY v1: bad address"))?;
        Ok(a)
    };
    let port = |s: &str| -> Result<u16, Error> {
        // Decimal without leading zeros (the spec's rule), 0..=65535.
        if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
            return Err(Error::Malformed("PROXY v1: bad port"));
        }
        s.parse::<u16>()
            .map_err(|_| Error::Malformed("PROXY v1: bad port"))
    };
    let addrs = (
        SocketAddr::new(ip(src)?, port(sport)?),
        SocketAddr::new(ip(dst)?, port(dport)?),
    );
    Ok(Parsed::Complete(Header {
        len,
        addrs: Some(addrs),
        version: Version::V1,
    }))
}

fn parse_v2(buf: &[u8], max: usize) -> Result<Parsed, Error> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Error::Malformed("PROXY v2: unsupported version"));
    }
    let cmd = ver_cmd & 0x0f;
    if cmd > 1 {
        return Err(Error::Malformed("PROXY v2: unknown command"));
    }
    let fam = buf[13];
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > max {
        return Err(Error::Malformed("PROXY v2 header too long"));
    }
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    let b = &buf[16..len];
    let header = |addrs| {
        Ok(Parsed::Complete(Header {
            len,
            addrs,
            version: Version::V2,
        }))
    };
    if cmd == 0 {
        // LOCAL: a health check of the sender's own; the real addresses stand.
        return header(None);
    }
    match fam {
        // TCP over IPv4.
        0x11 => {
            if b.len() < 12 {
                return Err(Error::Malformed("PROXY v2: short IPv4 address block"));
            }
            let src = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let dst = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            let sp = u16::from_be_bytes([b[8], b[9]]);
            let dp = u16::from_be_bytes([b[10], b[11]]);
            header(Some((
                SocketAddr::new(src.into(), sp),
                SocketAddr::new(dst.into(), dp),
            )))
        }
        // TCP over IPv6.
        0x21 => {
            if b.len() < 36 {
                return Err(Error::Malformed("PROXY v2: short IPv6 address block"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&b[..16]);
            d.copy_from_slice(&b[16..32]);
            let sp = u16::from_be_bytes([b[32], b[33]]);
            let dp = u16::from_be_bytes([b[34], b[35]]);
            header(Some((
                SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                SocketAddr::new(Ipv6Addr::from(d).into(), dp),
            )))
        }
        // UNSPEC, UDP, UNIX: accepted, addresses ignored (as the spec asks of receivers).
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => header(None),
        _ => Err(Error::Malformed("PROXY v2: unknown address family")),
    }
}

/// Writes the header for a connection from `src` to `dst` (`None`: unknown, v1 `UNKNOWN` /
/// v2 `LOCAL`) into `out`; returns its length. `out` must hold [`MAX_HEADER`] bytes.
pub fn write(version: Version, addrs: Option<(SocketAddr, SocketAddr)>, out: &mut [u8]) -> usize {
    match version {
        Version::V1 => write_v1(addrs, out),
        Version::V2 => write_v2(addrs, out),
    }
}

/// Both addresses in one family: an IPv4 one is mapped into IPv6 when the other is IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let six = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    // An IPv4-mapped IPv6 address is written as the IPv4 it is.
    let four = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (s, d) = (four(src), four(dst));
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (six(s), six(d))
    }
}

struct Cursor<'a> {
    out: &'a mut [u8],
    n: usize,
}

impl Cursor<'_> {
    fn put(&mut self, b: &[u8]) {
        let end = (self.n + b.len()).min(self.out.len());
        let k = end - self.n;
        self.out[self.n..end].copy_from_slice(&b[..k]);
        self.n = end;
    }
    fn num(&mut self, mut v: u32) {
        let mut d = [0u8; 10];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&d[i..]);
    }
    fn ip(&mut self, a: IpAddr) {
        use std::io::Write;
        // Display for addresses does not allocate; it writes through `io::Write` here.
        let mut tmp = [0u8; 48];
        let mut w = &mut tmp[..];
        let _ = write!(w, "{a}");
        let left = w.len();
        let used = tmp.len() - left;
        self.put(&tmp[..used]);
    }
}

fn write_v1(addrs: Option<(SocketAddr, SocketAddr)>, out: &mut [u8]) -> usize {
    let mut c = Cursor { out, n: 0 };
    match addrs {
        None => c.put(b"PROXY UNKNOWN\r\n"),
        Some((src, dst)) => {
            let (s, d) = same_family(src, dst);
            c.put(if s.is_ipv4() {
                b"PROXY TCP4 "
            } else {
                b"PROXY TCP6 "
            });
            c.ip(s.ip());
            c.put(b" ");
            c.ip(d.ip());
            c.put(b" ");
            c.num(u32::from(s.port()));
            c.put(b" ");
            c.num(u32::from(d.port()));
            c.put(b"\r\n");
        }
    }
    c.n
}

fn write_v2(addrs: Option<(SocketAddr, SocketAddr)>, out: &mut [u8]) -> usize {
    let mut c = Cursor { out, n: 0 };
    c.put(&V2_SIG);
    match addrs {
        None => {
            // LOCAL, UNSPEC, no address block.
            c.put(&[0x20, 0x00, 0, 0]);
        }
        Some((src, dst)) => match same_family(src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                c.put(&[0x21, 0x11, 0, 12]);
                c.put(&s.ip().octets());
                c.put(&d.ip().octets());
                c.put(&s.port().to_be_bytes());
                c.put(&d.port().to_be_bytes());
            }
            (s, d) => {
                let v6 = |a: SocketAddr| match a.ip() {
                    IpAddr::V6(v) => v.octets(),
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                };
                c.put(&[0x21, 0x21, 0, 36]);
                c.put(&v6(s));
                c.put(&v6(d));
                c.put(&s.port().to_be_bytes());
                c.put(&d.port().to_be_bytes());
            }
        },
    }
    c.n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn complete(buf: &[u8]) -> Header {
        match parse(buf, 4096) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    // Found by fuzzing (fuzz/regressions/proxy_header): a lone CR inside an UNKNOWN line was
    // refused while the line was partial and accepted once its CRLF arrived.
    #[test]
    fn a_lone_cr_in_a_v1_line_is_refused_whole_or_partial() {
        let line = b"PROXY UNKNOWN 11981 56324 443\r GET / HTTP/1.\r\n";
        for cut in [line.len() - 1, line.len()] {
            assert!(
                matches!(parse(&line[..cut], 4096), Err(Error::Malformed(_))),
                "{cut}"
            );
        }
    }

    // The examples of section 2.1 of the specification, byte for byte.
    #[test]
    fn v1_spec_examples() {
        let h = complete(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\nGET /");
        assert_eq!(h.len, 56);
        assert_eq!(
            h.addrs,
            Some((sa("255.255.255.255:65535"), sa("255.255.255.255:65535")))
        );
        let full = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(full.len(), 104, "the spec's TCP6 worst case");
        assert_eq!(complete(full).len, 104);
        let h = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.len, h.addrs), (15, None));
        let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), V1_MAX, "the spec's 107-byte worst case");
        let h = complete(worst);
        assert_eq!((h.len, h.addrs), (107, None));
        let h = complete(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        assert_eq!(
            h.addrs,
            Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443")))
        );
    }

    #[test]
    fn v1_written_byte_exact() {
        let mut out = [0u8; MAX_HEADER];
        let n = write(
            Version::V1,
            Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443"))),
            &mut out,
        );
        assert_eq!(
            &out[..n],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        let n = write(Version::V1, None, &mut out);
        assert_eq!(&out[..n], b"PROXY UNKNOWN\r\n");
        let n = write(
            Version::V1,
            Some((sa("[2001:db8::1]:1"), sa("127.0.0.1:80"))),
            &mut out,
        );
        assert_eq!(
            &out[..n],
            b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1 80\r\n"
        );
        let n = write(
            Version::V1,
            Some((sa("[::ffff:10.0.0.1]:5"), sa("10.0.0.2:6"))),
            &mut out,
        );
        assert_eq!(&out[..n], b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
    }

    #[test]
    fn v2_written_byte_exact_and_read_back() {
        let mut out = [0u8; MAX_HEADER];
        let n = write(
            Version::V2,
            Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443"))),
            &mut out,
        );
        let mut want = V2_SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        want.extend_from_slice(&56324u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(&out[..n], &want[..]);
        let h = complete(&out[..n]);
        assert_eq!(h.len, 28);
        assert_eq!(
            h.addrs,
            Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443")))
        );
        let n = write(
            Version::V2,
            Some((sa("[2001:db8::1]:1000"), sa("[2001:db8::2]:443"))),
            &mut out,
        );
        assert_eq!(n, 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0x00, 0x24]);
        let h = complete(&out[..n]);
        assert_eq!(
            h.addrs,
            Some((sa("[2001:db8::1]:1000"), sa("[2001:db8::2]:443")))
        );
        let n = write(Version::V2, None, &mut out);
        assert_eq!(&out[12..n], &[0x20, 0x00, 0, 0]);
        assert_eq!(complete(&out[..n]).addrs, None, "LOCAL");
    }

    #[test]
    fn v2_tlvs_are_skipped_and_length_is_honoured() {
        let mut h = V2_SIG.to_vec();
        // 12 address bytes + a 7-byte TLV (type 0x04 NOOP, length 4).
        h.extend_from_slice(&[0x21, 0x11, 0x00, 19]);
        h.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 2, 0, 80, 1, 187]);
        h.extend_from_slice(&[0x04, 0x00, 0x04, 1, 2, 3, 4]);
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let p = complete(&h);
        assert_eq!(p.len, 35);
        assert_eq!(p.addrs, Some((sa("127.0.0.1:80"), sa("127.0.0.2:443"))));
    }

    #[test]
    fn every_prefix_is_partial_never_an_error() {
        let mut out = [0u8; MAX_HEADER];
        for v in [Version::V1, Version::V2] {
            let n = write(v, Some((sa("10.1.2.3:4"), sa("10.5.6.7:8"))), &mut out);
            for k in 0..n {
                assert_eq!(parse(&out[..k], 4096), Ok(Parsed::Partial), "{v:?} {k}");
            }
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.256 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",
        ];
        for b in bad {
            assert!(
                parse(b, 4096).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(b)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long, 4096).is_err(), "no CRLF within 107 bytes");
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert!(parse(&v2, 4096).is_err(), "version 3");
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x22, 0x11, 0, 12]);
        assert!(parse(&v2, 4096).is_err(), "command 2");
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&v2, 4096).is_err(), "short address block");
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse(&v2, 4096),
            Err(Error::Malformed("PROXY v2 header too long"))
        );
    }
}
