//! How one transfer ended, as the engine reports it to a session: a small `Copy` value, the
//! same whichever engine did the I/O.
//!
//! HOT PATH: no allocation; nothing here looks at `io::Error` beyond its errno.

/// The result of a receive, send, splice, shutdown or connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfer {
    /// `n` bytes moved (0 for operations that move none: shutdown, connect, watch).
    Bytes(u32),
    /// The peer closed its sending side: end of stream (receives and splices only).
    Eof,
    /// The connection is broken (reset, refused, timed out by the kernel, ...): `errno` says
    /// why, for logs; sessions treat every failure the same way.
    Failed(i32),
}

impl Xfer {
    /// A failure from an `io::Error` (errno 0 when it carries none).
    #[inline]
    pub fn failed(e: &std::io::Error) -> Xfer {
        Xfer::Failed(e.raw_os_error().unwrap_or(0))
    }

    /// Bytes moved, 0 for EOF and failures.
    #[inline]
    pub fn bytes(self) -> usize {
        match self {
            Xfer::Bytes(n) => n as usize,
            _ => 0,
        }
    }
}
