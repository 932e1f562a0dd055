//! Streaming validator for chunked message bodies (RFC 9112 §7.1) that the proxy forwards
//! unchanged. It never copies or buffers: the caller hands it whatever bytes it has, it says
//! how many of them belong to this body and whether the body ended, and the caller forwards
//! exactly those bytes. Input may be split at any byte. A caller that consumes the body
//! itself (the demo backend) uses [`Chunked::decode`], which also hands it the chunk data:
//! one chunked grammar in the tree.
//!
//! HOT PATH: no allocation, no panics on input. Chunk data is skipped in one step; only the
//! framing lines are looked at byte by byte.
//!
//! Hand-written rather than `httparse::parse_chunk_size`, which needs the whole size line in
//! one buffer, accepts spaces before the extension and does not validate extensions or
//! trailers; a pass-through proxy must be stricter than the server behind it.
//!
//! Accepted grammar (stricter than RFC 9112: no BWS anywhere in the size line):
//! ```text
//! chunk      = 1*16HEXDIG *( ";" token [ "=" ( token / quoted-string ) ] ) CRLF data CRLF
//! last-chunk = 1*16"0"    *( same extensions ) CRLF
//! trailers   = *( field-name ":" *( HTAB / SP / VCHAR / obs-text ) CRLF ) CRLF
//! ```
//!
//! [`Chunked::with_bws`] accepts, as RFC 9112 §7.1.1 does, optional whitespace (SP / HTAB)
//! before and after each `;` and around each `=` of the extensions: an origin server may be
//! that lenient, a proxy should not (it would forward what a stricter server might misread).

/// Bytes of extensions allowed on one chunk-size line, from the first `;` to the CR.
pub const MAX_EXTENSION_BYTES: usize = 4096;

/// Maximum hex digits of a chunk size (leading zeros included).
const MAX_SIZE_DIGITS: u8 = 16;

/// The largest chunk size accepted: 2^63 - 1, so that no reader behind us, signed or not, can
/// take a size we passed for a negative number (`ffffffffffffffff` is -1 as an `i64`: a
/// smuggling foothold). nginx draws the same line (`off_t`).
pub const MAX_CHUNK_SIZE: u64 = i64::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not a hex digit where the size is, or an empty size.
    BadSize,
    /// More than 16 hex digits, or a size above [`MAX_CHUNK_SIZE`].
    SizeOverflow,
    /// A bare LF, a CR not followed by LF, or data not followed by CRLF.
    BadLineEnding,
    /// A chunk extension that is not `;token[=token|quoted-string]`, or too long.
    BadExtension,
    /// Trailer lines longer in total than the limit given to [`Chunked::new`].
    TrailerTooLarge,
    /// A trailer line that is not a valid header line (obs-fold, space before the colon,
    /// control characters).
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    Size,
    /// After `;`: the first character of an extension name.
    ExtNameStart,
    ExtName,
    /// BWS mode: whitespace after the size or after a value, before the next `;`.
    ExtBws,
    /// BWS mode: whitespace after an extension name, before `=` or the next `;`.
    ExtNameBws,
    /// After `=`: a token or a quoted string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    /// After a backslash inside a quoted string.
    ExtQuotedEscape,
    /// After the closing quote.
    ExtQuotedEnd,
    /// CR of the size line seen.
    SizeLf,
    /// `size` bytes of chunk data left.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
    Failed(ChunkError),
}

/// The state of one chunked body. Small and `Copy`: it lives inside the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// The size being read, then the data bytes left in the chunk.
    size: u64,
    digits: u8,
    /// Extension bytes on the current size line.
    ext_bytes: u16,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
    /// Optional whitespace around `;` and `=` is accepted ([`Chunked::with_bws`]).
    bws: bool,
}

/// What one [`Chunked::advance`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the start of the input that belong to this body (forward them).
    pub consumed: usize,
    /// The body ended with the last consumed byte; what follows is the next message.
    pub done: bool,
}

impl Chunked {
    /// A validator for one body. `max_trailer_bytes` bounds the trailer field lines, CRLFs
    /// included, not counting the final empty line.
    pub fn new(max_trailer_bytes: usize) -> Self {
        Chunked {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
            bws: false,
        }
    }

    /// Also accepts the optional whitespace (BWS) RFC 9112 allows around `;` and `=` in
    /// chunk extensions (see the module comment); it counts as extension bytes.
    pub fn with_bws(mut self) -> Self {
        self.bws = true;
        self
    }

    /// Consumes as much of `input` as belongs to this body. Errors are sticky: once it fails,
    /// every later call returns the same error.
    #[inline]
    pub fn advance(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        self.decode(input, |_| {})
    }

    /// [`advance`](Self::advance), handing each run of chunk data (the decoded body, without
    /// framing, extensions or trailers) to `data` as it goes.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkError> {
        let mut pos = 0usize;
        loop {
            match self.state {
                State::Done => break,
                State::Failed(e) => return Err(e),
                State::Data => {
                    let left = input.len().saturating_sub(pos);
                    let take = usize::try_from(self.size).unwrap_or(usize::MAX).min(left);
                    if take == 0 {
                        break;
                    }
                    let end = pos.saturating_add(take);
                    data(input.get(pos..end).unwrap_or_default());
                    pos = end;
                    // take <= size, so this does not wrap.
                    self.size = self.size.saturating_sub(take as u64);
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    let Some(&b) = input.get(pos) else { break };
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                    pos += 1;
                }
            }
        }
        Ok(Progress {
            consumed: pos,
            done: self.state == State::Done,
        })
    }

    /// Chunk data bytes the caller may forward without calling [`advance`](Self::advance)
    /// (0 when the next byte is framing). Lets a caller splice or copy a chunk in bulk.
    pub fn data_remaining_hint(&self) -> u64 {
        if self.state == State::Data {
            self.size
        } else {
            0
        }
    }

    /// The body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// One framing byte. Never called in `Data`, `Done` or `Failed`. Inlined into the
    /// `decode` loop: a call per framing byte costs more than the byte's work.
    #[inline(always)]
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use ChunkError::*;
        self.state = match self.state {
            State::SizeStart => {
                let d = hex_value(b).ok_or(if b == b'\n' { BadLineEnding } else { BadSize })?;
                self.size = u64::from(d);
                self.digits = 1;
                self.ext_bytes = 0;
                State::Size
            }
            State::Size => match b {
                b'\r' => State::SizeLf,
                b';' => self.ext_byte(State::ExtNameStart)?,
                b' ' | b'\t' if self.bws => self.ext_byte(State::ExtBws)?,
                b'\n' => return Err(BadLineEnding),
                _ => {
                    let d = hex_value(b).ok_or(BadSize)?;
                    if self.digits >= MAX_SIZE_DIGITS {
                        return Err(SizeOverflow);
                    }
                    self.digits += 1;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .filter(|&s| s <= MAX_CHUNK_SIZE)
                        .ok_or(SizeOverflow)?;
                    State::Size
                }
            },
            State::ExtNameStart => match b {
                _ if is_tchar(b) => self.ext_byte(State::ExtName)?,
                b' ' | b'\t' if self.bws => self.ext_byte(State::ExtNameStart)?,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::ExtName => match b {
                _ if is_tchar(b) => self.ext_byte(State::ExtName)?,
                b'=' => self.ext_byte(State::ExtValueStart)?,
                b';' => self.ext_byte(State::ExtNameStart)?,
                b' ' | b'\t' if self.bws => self.ext_byte(State::ExtNameBws)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::ExtBws => match b {
                b' ' | b'\t' => self.ext_byte(State::ExtBws)?,
                b';' => self.ext_byte(State::ExtNameStart)?,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::ExtNameBws => match b {
                b' ' | b'\t' => self.ext_byte(State::ExtNameBws)?,
                b'=' => self.ext_byte(State::ExtValueStart)?,
                b';' => self.ext_byte(State::ExtNameStart)?,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::ExtValueStart => match b {
                _ if is_tchar(b) => self.ext_byte(State::ExtToken)?,
                b'"' => self.ext_byte(State::ExtQuoted)?,
                b' ' | b'\t' if self.bws => self.ext_byte(State::ExtValueStart)?,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::ExtToken => match b {
                _ if is_tchar(b) => self.ext_byte(State::ExtToken)?,
                b';' => self.ext_byte(State::ExtNameStart)?,
                b' ' | b'\t' if self.bws => self.ext_byte(State::ExtBws)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::ExtQuoted => match b {
                b'"' => self.ext_byte(State::ExtQuotedEnd)?,
                b'\\' => self.ext_byte(State::ExtQuotedEscape)?,
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => {
                    self.ext_byte(State::ExtQuoted)?
                }
                _ => return Err(BadExtension),
            },
            State::ExtQuotedEscape => match b {
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => self.ext_byte(State::ExtQuoted)?,
                _ => return Err(BadExtension),
            },
            State::ExtQuotedEnd => match b {
                b';' => self.ext_byte(State::ExtNameStart)?,
                b' ' | b'\t' if self.bws => self.ext_byte(State::ExtBws)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BadLineEnding),
                _ => return Err(BadExtension),
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return Err(BadLineEnding),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(BadLineEnding),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(BadLineEnding),
            },
            State::TrailerStart => match b {
                b'\r' => State::FinalLf,
                b'\n' => return Err(BadLineEnding),
                _ if is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(BadTrailer),
            },
            State::TrailerName => match b {
                _ if is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                b':' => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(BadTrailer),
            },
            State::TrailerValue => match b {
                b'\r' => self.trailer_byte(State::TrailerLf)?,
                b'\n' => return Err(BadLineEnding),
                b'\t' | b' '..=0x7e | 0x80..=0xff => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(BadTrailer),
            },
            State::TrailerLf => match b {
                b'\n' => self.trailer_byte(State::TrailerStart)?,
                _ => return Err(BadLineEnding),
            },
            State::FinalLf => match b {
                b'\n' => State::Done,
                _ => return Err(BadLineEnding),
            },
            // Not reached: `advance` handles these without calling `step`.
            s @ (State::Data | State::Done | State::Failed(_)) => s,
        };
        Ok(())
    }

    /// Counts one extension byte and moves to `next`.
    #[inline]
    fn ext_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.ext_bytes = self.ext_bytes.saturating_add(1);
        if usize::from(self.ext_bytes) > MAX_EXTENSION_BYTES {
            return Err(ChunkError::BadExtension);
        }
        Ok(next)
    }

    /// Counts one trailer byte and moves to `next`.
    #[inline]
    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailer_bytes = self.trailer_bytes.saturating_add(1);
        if self.trailer_bytes > self.max_trailer_bytes {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(next)
    }
}

#[inline]
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 tchar, as a table: the framing loop asks for every extension and trailer
/// name byte.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    const TRAILER_LIMIT: usize = 64;

    fn valid_bodies() -> Vec<&'static [u8]> {
        vec![
            b"0\r\n\r\n",
            b"000\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
            b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
            b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
            b"0000000000000005\r\nhello\r\n0000000000000000\r\n\r\n",
            b"5;a\r\nhello\r\n0;last\r\n\r\n",
            b"5;a=b;c;d=e\r\nhello\r\n0\r\n\r\n",
            b"3;name=\"v a\\\"l;=\"\r\nabc\r\n0\r\n\r\n",
            b"3;n=\"\"\r\nabc\r\n0\r\n\r\n",
            b"3;n=\"\\\\\"\r\nabc\r\n0\r\n\r\n",
            b"2\r\n\r\n\r\n0\r\n\r\n",
            b"0\r\nX-Checksum: abc\r\nY:\r\nZ: a\tb \xff\r\n\r\n",
            b"5\r\n0\r\n\r\n\r\n0\r\nT: 1\r\n\r\n",
        ]
    }

    /// (body, error) for bodies that must fail.
    fn invalid_bodies() -> Vec<(Vec<u8>, ChunkError)> {
        use ChunkError::*;
        let mut v: Vec<(Vec<u8>, ChunkError)> = [
            (&b"\r\n"[..], BadSize),
            (b"x\r\n", BadSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", BadSize),
            (b"5 \r\nhello\r\n0\r\n\r\n", BadSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", BadSize),
            (b"-1\r\n", BadSize),
            (b"+1\r\n", BadSize),
            (b"g\r\n", BadSize),
            (b"5\r\nhello\r\n\r\n", BadSize),
            (b"10000000000000000\r\n", SizeOverflow),
            (b"00000000000000000\r\n\r\n", SizeOverflow),
            (b"\n", BadLineEnding),
            (b"5\nhello\r\n0\r\n\r\n", BadLineEnding),
            (b"5\r\rhello", BadLineEnding),
            (b"5\r\nhelloX\r\n0\r\n\r\n", BadLineEnding),
            (b"5\r\nhello\rX0\r\n\r\n", BadLineEnding),
            (b"5\r\nhello\n0\r\n\r\n", BadLineEnding),
            (b"0\r\n\n", BadLineEnding),
            (b"0\r\n\r\r", BadLineEnding),
            (b"0\r\nX: y\n\r\n", BadLineEnding),
            (b"0\r\nX: y\rZ\r\n", BadLineEnding),
            (b"5;a\n", BadLineEnding),
            (b"5;a=b\n", BadLineEnding),
            (b"5;a=\"b\"\n", BadLineEnding),
            (b"5;\r\n", BadExtension),
            (b"5; a\r\n", BadExtension),
            (b"5 ;a\r\n", BadSize),
            (b"5;a =b\r\n", BadExtension),
            (b"5;a= b\r\n", BadExtension),
            (b"5;a=\r\n", BadExtension),
            (b"5;=b\r\n", BadExtension),
            (b"5;a==b\r\n", BadExtension),
            (b"5;a=b c\r\n", BadExtension),
            (b"5;a=\"x\r\n", BadExtension),
            (b"5;a=\"x\"y\r\n", BadExtension),
            (b"5;a=\"x\0\"\r\n", BadExtension),
            (b"5;a=\"\\\r\"\r\n", BadExtension),
            (b"5;a(\r\n", BadExtension),
            (b"0\r\n X: y\r\n\r\n", BadTrailer),
            (b"0\r\n\tX: y\r\n\r\n", BadTrailer),
            (b"0\r\nX : y\r\n\r\n", BadTrailer),
            (b"0\r\nX: a\0\r\n\r\n", BadTrailer),
            (b"0\r\nX: a\x7f\r\n\r\n", BadTrailer),
            (b"0\r\nX\r\n\r\n", BadTrailer),
            (b"0\r\n: y\r\n\r\n", BadTrailer),
            (b"0\r\nX: y\r\n z\r\n\r\n", BadTrailer),
        ]
        .iter()
        .map(|(b, e)| (b.to_vec(), *e))
        .collect();
        // 4096 extension bytes are fine, 4097 are not.
        let mut ext = b"1;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES));
        ext.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        v.push((ext, BadExtension));
        v
    }

    /// Feeds `input` in the given pieces; returns (total consumed, done) or the error.
    fn feed(pieces: &[&[u8]]) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::new(TRAILER_LIMIT);
        let mut total = 0;
        for piece in pieces {
            let p = c.advance(piece)?;
            total += p.consumed;
            if p.done {
                assert!(c.is_done());
                return Ok((total, true));
            }
            assert_eq!(p.consumed, piece.len(), "consumed less without finishing");
        }
        Ok((total, false))
    }

    #[test]
    fn valid_bodies_in_one_piece() {
        for body in valid_bodies() {
            assert_eq!(
                feed(&[body]),
                Ok((body.len(), true)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn valid_bodies_split_at_every_position() {
        for body in valid_bodies() {
            for i in 0..=body.len() {
                let (a, b) = body.split_at(i);
                assert_eq!(
                    feed(&[a, b]),
                    Ok((body.len(), true)),
                    "split {i} of {:?}",
                    String::from_utf8_lossy(body)
                );
            }
            for i in 0..=body.len() {
                for j in i..=body.len() {
                    assert_eq!(
                        feed(&[&body[..i], &body[i..j], &body[j..]]),
                        Ok((body.len(), true))
                    );
                }
            }
        }
    }

    #[test]
    fn valid_bodies_one_byte_at_a_time() {
        for body in valid_bodies() {
            let pieces: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(
                feed(&pieces),
                Ok((body.len(), true)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn prefixes_are_not_done() {
        for body in valid_bodies() {
            for i in 0..body.len() {
                assert_eq!(
                    feed(&[&body[..i]]),
                    Ok((i, false)),
                    "prefix {i} of {:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        for body in valid_bodies() {
            let mut buf = body.to_vec();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            for i in 0..=buf.len() {
                let (a, b) = buf.split_at(i);
                assert_eq!(feed(&[a, b]), Ok((body.len(), true)), "split {i}");
            }
            // Once done, nothing more is taken.
            let mut c = Chunked::new(TRAILER_LIMIT);
            assert_eq!(
                c.advance(&buf),
                Ok(Progress {
                    consumed: body.len(),
                    done: true
                })
            );
            assert_eq!(
                c.advance(b"more"),
                Ok(Progress {
                    consumed: 0,
                    done: true
                })
            );
        }
    }

    #[test]
    fn invalid_bodies_fail_the_same_way_at_every_split() {
        for (body, err) in invalid_bodies() {
            assert_eq!(
                feed(&[&body]),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            for i in 0..=body.len() {
                let (a, b) = body.split_at(i);
                assert_eq!(
                    feed(&[a, b]),
                    Err(err),
                    "split {i} of {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
            let pieces: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(
                feed(&pieces),
                Err(err),
                "bytewise {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut c = Chunked::new(TRAILER_LIMIT);
        assert_eq!(c.advance(b"zz"), Err(ChunkError::BadSize));
        assert_eq!(c.advance(b"0\r\n\r\n"), Err(ChunkError::BadSize));
        assert_eq!(c.advance(b""), Err(ChunkError::BadSize));
        assert!(!c.is_done());
    }

    #[test]
    fn size_limits() {
        // 16 hex digits: the largest size is fine (the data just never comes here).
        let mut c = Chunked::new(0);
        assert_eq!(
            c.advance(b"7FFFFFFFFFFFFFFF\r\nabc"),
            Ok(Progress {
                consumed: 21,
                done: false
            })
        );
        assert_eq!(c.data_remaining_hint(), MAX_CHUNK_SIZE - 3);
        // One more would read as negative to a signed parser: refused (issue 19, item 4).
        for size in [
            &b"8000000000000000"[..],
            b"FFFFFFFFFFFFFFFF",
            b"ffffffffffffffff",
        ] {
            let mut c = Chunked::new(0);
            assert_eq!(c.advance(size), Err(ChunkError::SizeOverflow));
        }
        let mut c = Chunked::new(0);
        assert_eq!(
            c.advance(b"FFFFFFFFFFFFFFFF0"),
            Err(ChunkError::SizeOverflow)
        );
        let mut c = Chunked::new(0);
        assert_eq!(
            c.advance(b"1FFFFFFFFFFFFFFFF"),
            Err(ChunkError::SizeOverflow)
        );
    }

    #[test]
    fn extension_limit_exactly_at() {
        let mut body = b"1;".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES - 1));
        body.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(feed(&[&body]), Ok((body.len(), true)));
    }

    fn with_trailer(bytes: usize) -> Vec<u8> {
        // "X: " + value + "\r\n" = bytes
        let mut body = b"0\r\nX: ".to_vec();
        body.extend(std::iter::repeat_n(b'v', bytes - 5));
        body.extend_from_slice(b"\r\n\r\n");
        body
    }

    #[test]
    fn trailer_limit_exactly_at_and_over() {
        let exact = with_trailer(TRAILER_LIMIT);
        assert_eq!(feed(&[&exact]), Ok((exact.len(), true)));
        let over = with_trailer(TRAILER_LIMIT + 1);
        assert_eq!(feed(&[&over]), Err(ChunkError::TrailerTooLarge));
        for i in 0..=over.len() {
            let (a, b) = over.split_at(i);
            assert_eq!(feed(&[a, b]), Err(ChunkError::TrailerTooLarge));
        }
        // Two lines count together.
        let mut two = b"0\r\n".to_vec();
        two.extend_from_slice(&with_trailer(32)[3..with_trailer(32).len() - 2]);
        two.extend_from_slice(&with_trailer(33)[3..]);
        assert_eq!(feed(&[&two]), Err(ChunkError::TrailerTooLarge));
        // No trailers allowed at all.
        let mut c = Chunked::new(0);
        assert_eq!(
            c.advance(b"0\r\n\r\n"),
            Ok(Progress {
                consumed: 5,
                done: true
            })
        );
        let mut c = Chunked::new(0);
        assert_eq!(c.advance(b"0\r\nX"), Err(ChunkError::TrailerTooLarge));
    }

    #[test]
    fn data_remaining_hint_tracks_chunk_data() {
        let mut c = Chunked::new(TRAILER_LIMIT);
        assert_eq!(c.data_remaining_hint(), 0);
        assert_eq!(c.advance(b"a\r\n").unwrap().consumed, 3);
        assert_eq!(c.data_remaining_hint(), 10);
        assert_eq!(c.advance(b"0123").unwrap().consumed, 4);
        assert_eq!(c.data_remaining_hint(), 6);
        assert_eq!(c.advance(b"456789\r").unwrap().consumed, 7);
        assert_eq!(c.data_remaining_hint(), 0);
        assert_eq!(
            c.advance(b"\n0\r\n\r\nrest"),
            Ok(Progress {
                consumed: 6,
                done: true
            })
        );
        assert_eq!(
            c.advance(b""),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn empty_input_is_no_progress() {
        let mut c = Chunked::new(TRAILER_LIMIT);
        assert_eq!(
            c.advance(b""),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
    }

    #[test]
    fn large_body_in_uneven_pieces() {
        let mut body = Vec::new();
        for size in [1usize, 15, 16, 255, 4096, 65535, 100_000] {
            body.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            body.extend(std::iter::repeat_n(b'z', size));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        for step in [1usize, 7, 4096, 16384] {
            let pieces: Vec<&[u8]> = body.chunks(step).collect();
            assert_eq!(feed(&pieces), Ok((body.len(), true)), "step {step}");
        }
    }

    #[test]
    fn state_is_small_and_copy() {
        assert!(std::mem::size_of::<Chunked>() <= 48);
        let mut a = Chunked::new(1);
        let b = a;
        a.advance(b"5\r\n").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tchar_table() {
        let tchars: Vec<u8> = (0..=255u8).filter(|&b| is_tchar(b)).collect();
        assert_eq!(
            tchars,
            b"!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz|~"
        );
    }

    #[test]
    fn no_panic_on_noise() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF;=\"\\ \t\r\n:xX\0";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            for _ in 0..(next() % 64) {
                let r = next();
                buf.push(if r % 16 == 0 {
                    r as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                });
            }
            let mut c = Chunked::new(16);
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let cut = (next() as usize % rest.len()) + 1;
                match c.advance(&rest[..cut]) {
                    Ok(p) => {
                        assert!(p.consumed <= cut);
                        if p.done {
                            break;
                        }
                    }
                    Err(_) => break,
                }
                rest = &rest[cut..];
            }
        }
    }

    /// Feeds `input` split at `cut` to a decoder; returns (consumed, done, decoded data).
    fn decode_split(
        c: Chunked,
        input: &[u8],
        cut: usize,
    ) -> Result<(usize, bool, Vec<u8>), ChunkError> {
        let mut c = c;
        let mut data = Vec::new();
        let mut used = 0;
        let mut done = false;
        for piece in [&input[..cut], &input[cut..]] {
            let p = c.decode(piece, |d| data.extend_from_slice(d))?;
            used += p.consumed;
            done = p.done;
            if done {
                break;
            }
        }
        Ok((used, done, data))
    }

    #[test]
    fn decode_hands_over_the_data_at_every_split() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"4;ext=1\r\nabcd\r\nA;x\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT",
                b"abcd0123456789",
            ),
            (b"2\r\n\r\n\r\n1\r\n0\r\n0\r\n\r\n", b"\r\n0"),
        ];
        for (body, want) in cases {
            let end = body.len() - if body.ends_with(b"NEXT") { 4 } else { 0 };
            for cut in 0..=body.len() {
                let r = decode_split(Chunked::new(TRAILER_LIMIT), body, cut);
                assert_eq!(r, Ok((end, true, want.to_vec())), "cut {cut} of {body:?}");
            }
        }
        // Errors are the validator's.
        let mut c = Chunked::new(TRAILER_LIMIT);
        let mut data = Vec::new();
        assert_eq!(
            c.decode(b"3\r\nabcX", |d| data.extend_from_slice(d)),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(data, b"abc");
    }

    #[test]
    fn bws_only_when_asked() {
        use ChunkError::*;
        let lenient: [&[u8]; 6] = [
            b"5 ;a\r\nhello\r\n0\r\n\r\n",
            b"5\t ; a = b ; c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"q\" ;b\r\nhello\r\n0\r\n\r\n",
            b"5;a ;b=c\r\nhello\r\n0 ; last\r\n\r\n",
            b"A \t;x\r\n0123456789\r\n0\r\n\r\n",
            b"5;a\r\nhello\r\n0\r\n\r\n",
        ];
        for body in lenient {
            for cut in 0..=body.len() {
                let r = decode_split(Chunked::new(TRAILER_LIMIT).with_bws(), body, cut);
                assert_eq!(
                    r.map(|r| (r.0, r.1)),
                    Ok((body.len(), true)),
                    "cut {cut}: {body:?}"
                );
            }
            if body != b"5;a\r\nhello\r\n0\r\n\r\n" {
                assert!(feed(&[body]).is_err(), "strict: {body:?}");
            }
        }
        let bad: [(&[u8], ChunkError); 7] = [
            (b"5 \r\n", BadExtension),
            (b"5 a\r\n", BadExtension),
            (b"5; a b\r\n", BadExtension),
            (b"5;a= \r\n", BadExtension),
            (b"5;a=b \r\n", BadExtension),
            (b"5 ;a \n", BadLineEnding),
            (b" 5\r\n", BadSize),
        ];
        for (body, e) in bad {
            let mut c = Chunked::new(TRAILER_LIMIT).with_bws();
            assert_eq!(c.advance(body).map(|_| ()), Err(e), "{body:?}");
        }
        // Whitespace counts towards the extension limit.
        let mut long = b"1".to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_EXTENSION_BYTES));
        long.extend_from_slice(b";a\r\n");
        let mut c = Chunked::new(TRAILER_LIMIT).with_bws();
        assert_eq!(c.advance(&long).map(|_| ()), Err(BadExtension));
    }
}
