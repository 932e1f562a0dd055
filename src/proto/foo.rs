//! The Foo line sniffer: counts protocol messages in a byte stream as it passes, one direction
//! per [`LineSniffer`]. It only reads the bytes the pipe has already read, so nothing is changed
//! or delayed. State carries over between reads, so a line split across reads counts once.
//!
//! HOT PATH (called per read on Foo sessions): no allocation, no lock.
//!
//! A line is classified by its whole first token (up to the first space, tab, CR or LF):
//! `REQ`, `ACK` or `NAK`; anything else, an empty line included, is invalid. The counts go to
//! the statistics through `stats::FooCounts` (`SniffCounts::drain_into`, in `stats/foo.rs`).

/// Per-session counts (small: a session holds two sniffers; drained after every pump).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SniffCounts {
    pub req: u32,
    pub ack: u32,
    pub nak: u32,
    pub invalid: u32,
}

impl SniffCounts {
    pub fn is_zero(&self) -> bool {
        *self == SniffCounts::default()
    }
}

/// Line-aware state for one direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineSniffer {
    /// Inside the rest of a line whose token is already classified.
    skipping: bool,
    /// The token so far (only the first 3 bytes matter; `len` 4 means "too long").
    tok: [u8; 3],
    len: u8,
    pub counts: SniffCounts,
}

#[inline]
fn is_end(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl LineSniffer {
    /// Scans bytes just read from this direction's source.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skipping {
                match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.skipping = false;
                        data = &data[i + 1..];
                    }
                    None => return,
                }
                continue;
            }
            let b = data[0];
            data = &data[1..];
            if is_end(b) {
                self.classify();
                self.skipping = b != b'\n';
            } else if (self.len as usize) < self.tok.len() {
                self.tok[self.len as usize] = b;
                self.len += 1;
            } else {
                self.len = 4;
            }
        }
    }

    fn classify(&mut self) {
        match (self.len, &self.tok) {
            (3, b"REQ") => self.counts.req += 1,
            (3, b"ACK") => self.counts.ack += 1,
            (3, b"NAK") => self.counts.nak += 1,
            _ => self.counts.invalid += 1,
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> SniffCounts {
        let mut s = LineSniffer::default();
        for c in chunks {
            s.feed(c);
        }
        s.counts
    }

    #[test]
    fn whole_tokens_only() {
        let c = scan(&[b"REQ 1 a\nACK 1 a\nNAK 2\nREQX 3\nRE 4\nreq 5\n\nNAK\nACK\r\nFOO\n"]);
        assert_eq!(
            c,
            SniffCounts {
                req: 1,
                ack: 2,
                nak: 2,
                invalid: 5
            }
        );
    }

    #[test]
    fn lines_split_across_reads_count_once() {
        let whole: &[u8] = b"REQ 1 hello world\nREQ 2 x\nACK 1 hello\n";
        for cut in 0..whole.len() {
            for cut2 in cut..whole.len() {
                let c = scan(&[&whole[..cut], &whole[cut..cut2], &whole[cut2..]]);
                assert_eq!((c.req, c.ack, c.invalid), (2, 1, 0), "cuts {cut} {cut2}");
            }
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(scan(&bytes).req, 2);
    }

    #[test]
    fn an_unfinished_line_is_not_counted_yet() {
        let mut s = LineSniffer::default();
        s.feed(b"RE");
        assert!(s.counts.is_zero());
        s.feed(b"Q");
        assert!(s.counts.is_zero());
        s.feed(b" 1 data without end");
        assert_eq!(s.counts.req, 1);
        s.feed(b" still the same line\nNAK");
        assert_eq!(s.counts.req, 1);
        assert_eq!(s.counts.nak, 0);
        s.feed(b"\n");
        assert_eq!(s.counts.nak, 1);
    }
}
