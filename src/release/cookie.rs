//! The two cookies of the release strategies, by their original names: `dynsoftup=<version
//! id>` (the version a client is on) and `transition=<client id>` (gradual: the client's
//! stable bucket). Reading them from a `Cookie` header, writing proper `Set-Cookie` lines.
//!
//! HOT PATH: no allocation; everything works on byte slices and fixed arrays.

use crate::http::head::find_byte;
use crate::http::rewrite::{Out, Overflow};

/// The version cookie (name kept from the original for compatibility).
pub const VERSION: &[u8] = b"dynsoftup";
/// The gradual strategy's client cookie.
pub const TRANSITION: &[u8] = b"transition";
/// Longest cookie value we accept as one of ours (longer ones are ignored).
pub const MAX_VALUE: usize = 128;
/// The transition cookie lives long: a client keeps its bucket across rollouts, so a client
/// that moved to a new version never moves back.
pub const TRANSITION_MAX_AGE: u64 = 365 * 24 * 3600;
/// What a new transition cookie's line starts with.
pub const NEW_TRANSITION: &[u8] = b"Set-Cookie: transition=";
/// What follows a transition cookie's value (`Max-Age` = [`TRANSITION_MAX_AGE`]).
pub const TRANSITION_ATTRIBUTES: &[u8] = b"; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax\r\n";
/// Length of a generated client id (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub const ID_LEN: usize = 36;

/// A cookie value without surrounding whitespace and quotes.
#[inline]
fn clean(v: &[u8]) -> &[u8] {
    let v = v.trim_ascii_end();
    v.strip_prefix(b"\"")
        .and_then(|x| x.strip_suffix(b"\""))
        .unwrap_or(v)
}

/// The values of the first `dynsoftup` and (when `transition`) `transition` cookies of a
/// `Cookie` header value, in one pass that stops as soon as both are found.
#[inline]
pub fn find_ours(header: &[u8], transition: bool) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut version, mut trans) = (None, None);
    let mut rest = header;
    loop {
        // Pairs are separated by "; " (RFC 6265); anything else is tolerated, more slowly.
        let pair = match rest.first() {
            Some(b' ' | b'\t') => rest.trim_ascii_start(),
            _ => rest,
        };
        let end = find_byte(pair, b';').unwrap_or(pair.len());
        let this = &pair[..end];
        // Names compared as fixed-size arrays: no memcmp call per cookie.
        match this.first() {
            Some(b'd') if version.is_none() => {
                if let Some((name, v)) = this.split_first_chunk::<10>() {
                    if name == b"dynsoftup=" {
                        version = Some(clean(v));
                    }
                }
            }
            Some(b't') if transition && trans.is_none() => {
                if let Some((name, v)) = this.split_first_chunk::<11>() {
                    if name == b"transition=" {
                        trans = Some(clean(v));
                    }
                }
            }
            _ => {}
        }
        if (version.is_some() && (trans.is_some() || !transition)) || end >= pair.len() {
            return (version, trans);
        }
        rest = &pair[end + 1..];
    }
}

/// The value of the first `dynsoftup` cookie of a `Cookie` header value; at once when it is
/// the first cookie (it usually is: it is set by the first response a client gets).
#[inline]
pub fn find_version(header: &[u8]) -> Option<&[u8]> {
    if let Some((name, rest)) = header.split_first_chunk::<10>() {
        if name == b"dynsoftup=" {
            let end = find_byte(rest, b';').unwrap_or(rest.len());
            return Some(clean(&rest[..end]));
        }
    }
    find_ours(header, false).0
}

/// The value of the first `transition` cookie of a `Cookie` header value.
#[inline]
pub fn find_transition(header: &[u8]) -> Option<&[u8]> {
    let mut rest = header;
    loop {
        let pair = rest.trim_ascii_start();
        let end = find_byte(pair, b';').unwrap_or(pair.len());
        if let Some((name, v)) = pair[..end].split_first_chunk::<11>() {
            if name == b"transition=" {
                return Some(clean(v));
            }
        }
        if end >= pair.len() {
            return None;
        }
        rest = &pair[end + 1..];
    }
}

/// A transition id we are willing to hash: 1..=MAX_VALUE bytes (it is never echoed back).
#[inline]
pub fn acceptable(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_VALUE
}

/// FNV-1's offset basis (64-bit).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1 (64-bit) as Go's `hash/fnv.New64`: the original's bucket of a transition id is
/// `fnv1(id) % 100`, so clients keep their bucket when they move to Switchyard.
pub fn fnv1(data: &[u8]) -> u64 {
    fnv1_from(FNV_OFFSET, data)
}

/// FNV-1 continued from the state `h` a prefix left.
#[inline]
fn fnv1_from(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= u64::from(b);
    }
    h
}

/// The gradual bucket (0–99) of a transition id.
pub fn bucket(id: &[u8]) -> u8 {
    (fnv1(id) % 100) as u8
}

/// SplitMix64: a fast, well-mixed 64-bit permutation (also the per-request random source).
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 8 hex digits of `x`, most significant first, without a loop or a table: each nibble
/// is spread into a byte of its own, then turned into `0-9a-f` in all eight bytes at once.
#[inline]
fn hex8(x: u32) -> [u8; 8] {
    let mut v = u64::from(x);
    v = (v | (v << 16)) & 0x0000_ffff_0000_ffff;
    v = (v | (v << 8)) & 0x00ff_00ff_00ff_00ff;
    v = (v | (v << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    hex_digits(v).to_be_bytes()
}

/// A word whose bytes are nibbles (0–15) with each byte turned into its hex digit (`0-9a-f`),
/// all at once: bytes above 9 get `'a' - '0' - 10` more.
#[inline]
fn hex_digits(v: u64) -> u64 {
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    v + 0x3030_3030_3030_3030 + letters * 0x27
}

/// A new gradual client's 64 random bits from the request's random number (a per-worker
/// request counter mixed with the service's seed, see [`super::route`]): wyrand's output
/// function (the counter stepped by its odd constant, then the 128-bit product of two
/// variants folded), about 6 instructions against SplitMix64's 15 ([`mix`]). The bits only
/// have to make ids differ and spread evenly: a transition id is a bucketing id, not a
/// secret (a client may send any id it likes and gets that id's bucket).
#[inline]
pub fn draw(x: u64) -> u64 {
    let s = x.wrapping_mul(0xa076_1d64_78bd_642f);
    let m = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
    (m >> 64) as u64 ^ m as u64
}

/// A uuid-shaped id (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, version 4, variant 8..b) of
/// 128 bits whose version and variant bits are overwritten.
fn uuid(hi: u64, lo: u64) -> [u8; ID_LEN] {
    let mut out = [b'-'; ID_LEN];
    let hi = (hi & !(0xf << 12)) | (4 << 12);
    let lo = (lo & !(0xc << 60)) | (8 << 60);
    let (a, b, c, d) = (
        hex8((hi >> 32) as u32),
        hex8(hi as u32),
        hex8((lo >> 32) as u32),
        hex8(lo as u32),
    );
    out[..8].copy_from_slice(&a);
    out[9..13].copy_from_slice(&b[..4]);
    out[14..18].copy_from_slice(&b[4..]);
    out[19..23].copy_from_slice(&c[..4]);
    out[24..28].copy_from_slice(&c[4..]);
    out[28..].copy_from_slice(&d);
    out
}

/// A uuid-shaped id built from 64 random bits. The same seed always gives the same id.
/// (Control plane: the DSU API's cluster ids.)
pub fn client_id(seed: u64) -> [u8; ID_LEN] {
    uuid(mix(seed), mix(seed ^ 0x5851_f42d_4c95_7f2d))
}

/// Length of the part of a transition id a service shares between its clients
/// (`xxxxxxxx-xxxx-4xxx-yxxx-`).
pub const ID_PREFIX_LEN: usize = 24;
/// Length of the per-client part of a transition id: 12 hex digits, 48 random bits.
pub const ID_SUFFIX_LEN: usize = ID_LEN - ID_PREFIX_LEN;

/// How a service makes gradual's transition ids (uuid-shaped, as the original's): a random
/// prefix drawn once per service (74 random bits) and 48 random bits per client. The FNV-1
/// state after the prefix is kept, so a new client's bucket hashes 12 bytes instead of 36, and
/// the client's part is written with a few shifts instead of a loop per digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMaker {
    pub prefix: [u8; ID_PREFIX_LEN],
    state: u64,
}

impl IdMaker {
    pub fn new(seed: u64) -> IdMaker {
        let id = uuid(
            mix(seed ^ 0x2545_f491_4f6c_dd1d),
            mix(seed ^ 0x9e6c_63d0_676a_9a99),
        );
        let mut prefix = [0u8; ID_PREFIX_LEN];
        prefix.copy_from_slice(&id[..ID_PREFIX_LEN]);
        IdMaker {
            prefix,
            state: fnv1(&prefix),
        }
    }

    /// A client's part of its id from 64 random bits, 48 of which are used: the low nibble
    /// of each of the 8 bytes (digits 0–7) and the high nibble of the low 4 (digits 8–11).
    /// No nibble spreading: the random bits are taken where they already sit in bytes of
    /// their own (the digits' order is immaterial, they are random).
    #[inline]
    pub fn suffix(r: u64) -> [u8; ID_SUFFIX_LEN] {
        let lo = hex_digits(r & 0x0f0f_0f0f_0f0f_0f0f);
        let hi = hex_digits((r >> 4) & 0x0f0f_0f0f) as u32;
        let mut out = [0u8; ID_SUFFIX_LEN];
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&hi.to_le_bytes());
        out
    }

    /// The bucket of the id with this client part: `bucket(prefix ++ suffix)`. Out of line:
    /// only a client whose move is still undecided needs it, and inlined its byte shifts
    /// were hoisted above that test.
    #[inline(never)]
    pub fn bucket(&self, suffix: &[u8; ID_SUFFIX_LEN]) -> u8 {
        (fnv1_from(self.state, suffix) % 100) as u8
    }

    /// The whole id of a client part.
    pub fn id(&self, r: u64) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        out[..ID_PREFIX_LEN].copy_from_slice(&self.prefix);
        out[ID_PREFIX_LEN..].copy_from_slice(&Self::suffix(r));
        out
    }
}

/// `Set-Cookie: <name>=<value>; Path=/; Max-Age=<n>; HttpOnly; SameSite=Lax\r\n`.
pub(crate) fn write_set_cookie(
    o: &mut Out<'_>,
    name: &[u8],
    value: &[u8],
    max_age: u64,
) -> Result<(), Overflow> {
    o.put(b"Set-Cookie: ")?;
    o.put(name)?;
    o.put(b"=")?;
    o.put(value)?;
    o.put(b"; Path=/; Max-Age=")?;
    o.decimal(max_age)?;
    o.put(b"; HttpOnly; SameSite=Lax\r\n")
}

/// The whole `Set-Cookie` line as bytes (built once per version per snapshot).
pub fn set_cookie_line(name: &[u8], value: &[u8], max_age: u64) -> Box<[u8]> {
    let mut buf = vec![0u8; name.len() + value.len() + 96];
    let mut o = Out::new(&mut buf);
    match write_set_cookie(&mut o, name, value, max_age) {
        Ok(()) => o.written().into(),
        Err(Overflow) => Box::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_cookies_among_others() {
        let h = b"__utmb=1.4.10; dynsoftup=452b8f23-fa46;transition=\"abc\" ;; bad; dynsoftup=2";
        assert_eq!(
            find_ours(h, true),
            (Some(&b"452b8f23-fa46"[..]), Some(&b"abc"[..]))
        );
        assert_eq!(find_ours(h, false), (Some(&b"452b8f23-fa46"[..]), None));
        assert_eq!(find_ours(b"transition=t", true), (None, Some(&b"t"[..])));
        assert_eq!(find_transition(h), Some(&b"abc"[..]));
        assert_eq!(find_version(h), Some(&b"452b8f23-fa46"[..]));
        assert_eq!(find_version(b"dynsoftup=1.1; a=b"), Some(&b"1.1"[..]));
        assert_eq!(find_version(b"dynsoftup=\"1.1\" ;a=b"), Some(&b"1.1"[..]));
        assert_eq!(find_version(b"dynsoftup="), Some(&b""[..]));
        assert_eq!(find_version(b"dynsoftup"), None);
        assert_eq!(find_version(b"a=b;dynsoftup=2"), Some(&b"2"[..]));
        assert_eq!(find_transition(b"a=1; transitions=2"), None);
        assert_eq!(find_transition(b""), None);
        assert_eq!(find_ours(b"", true), (None, None));
        assert_eq!(find_ours(b";;; ", true), (None, None));
        assert_eq!(
            find_ours(b"xdynsoftup=1; dynsoftup=", true),
            (Some(&b""[..]), None)
        );
        let long = [b"a=b; ".repeat(400), b"dynsoftup=9".to_vec()].concat();
        assert_eq!(find_ours(&long, false).0, Some(&b"9"[..]));
        for i in 0..20 {
            let v: Vec<u8> = (0..i)
                .map(|k| if k == i - 1 { b';' } else { b'x' })
                .collect();
            assert_eq!(find_byte(&v, b';'), if i == 0 { None } else { Some(i - 1) });
        }
        assert!(acceptable(b"1.1"));
        assert!(!acceptable(b""));
        assert!(!acceptable(&[b'a'; 129]));
    }

    #[test]
    fn buckets_match_the_original() {
        // The original README's table of transition uuids and their percentages.
        for (id, want) in [
            ("a37a290f-2088-11e4-b3a6-600308a8245e", 1),
            ("a37a2633-2088-11e4-b3a6-600308a8245e", 2),
            ("952c8557-2088-11e4-87e3-600308a8245e", 3),
            ("10671a7f-2087-11e4-bf9e-600308a8245e", 4),
            ("a37a25b4-2088-11e4-b3a6-600308a8245e", 5),
            ("6024b0c6-2089-11e4-a4ef-600308a8245e", 8),
            ("106719e4-2087-11e4-bf9e-600308a8245e", 80),
            ("a37a2826-2088-11e4-b3a6-600308a8245e", 90),
        ] {
            assert_eq!(bucket(id.as_bytes()), want, "{id}");
        }
    }

    fn is_uuid_v4(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            })
            && b[14] == b'4'
            && matches!(b[19], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn client_ids_look_like_uuids_and_spread_evenly() {
        let id = client_id(7);
        let s = std::str::from_utf8(&id).unwrap();
        assert!(is_uuid_v4(s), "{s}");
        assert_eq!(client_id(7), client_id(7));
        assert_ne!(client_id(7), client_id(8));
        let mut counts = [0u32; 100];
        for i in 0..100_000u64 {
            counts[bucket(&client_id(i)) as usize] += 1;
        }
        // 1,000 expected per bucket; 6 sigma is about 190.
        assert!(
            counts.iter().all(|&c| (810..=1190).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn hex_digits_as_the_formatter_writes_them() {
        for x in [
            0u32,
            1,
            9,
            10,
            0xf,
            0x1234_abcd,
            0xdead_beef,
            u32::MAX,
            0x0a0b_0c0d,
        ] {
            assert_eq!(hex8(x), *format!("{x:08x}").as_bytes(), "{x:#x}");
        }
        // Digits 0–7: the low nibbles of bytes 0–7 (least significant first); digits 8–11:
        // the high nibbles of bytes 0–3.
        let r = 0x1234_5678_9abc_def0u64;
        assert_eq!(IdMaker::suffix(r), *b"0eca8642fdb9");
        assert_eq!(IdMaker::suffix(0), *b"000000000000");
        assert_eq!(IdMaker::suffix(u64::MAX), *b"ffffffffffff");
    }

    #[test]
    fn transition_ids_are_uuids_whose_bucket_is_the_hash_of_the_whole_id() {
        let m = IdMaker::new(42);
        assert_eq!(m, IdMaker::new(42), "the same seed, the same prefix");
        assert_ne!(m.prefix, IdMaker::new(43).prefix);
        let mut counts = [0u32; 100];
        let mut seen = std::collections::HashSet::new();
        // As a worker draws them: a request counter mixed with the service's seed.
        for i in 0..100_000u64 {
            let r = draw(i ^ 0x3c6e_f372_fe94_f82b);
            let id = m.id(r);
            let s = std::str::from_utf8(&id).unwrap();
            assert!(is_uuid_v4(s), "{s}");
            assert!(id.starts_with(&m.prefix));
            let b = m.bucket(&IdMaker::suffix(r));
            assert_eq!(b, bucket(&id), "{s}");
            counts[b as usize] += 1;
            seen.insert(id);
        }
        assert_eq!(seen.len(), 100_000, "48 random bits: no repeats here");
        // 1,000 expected per bucket; 6 sigma is about 190.
        assert!(
            counts.iter().all(|&c| (810..=1190).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn set_cookie_lines() {
        let mut buf = [0u8; 128];
        let mut o = Out::new(&mut buf);
        write_set_cookie(&mut o, TRANSITION, b"x", TRANSITION_MAX_AGE).unwrap();
        assert!(o.written().ends_with(TRANSITION_ATTRIBUTES));
        let line = set_cookie_line(VERSION, b"1.1", 1800);
        assert_eq!(
            &line[..],
            b"Set-Cookie: dynsoftup=1.1; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax\r\n"
        );
        let mut buf = [0u8; 20];
        let mut o = Out::new(&mut buf);
        assert!(
            write_set_cookie(&mut o, VERSION, b"1.1", 0).is_err(),
            "too small"
        );
    }
}
