//! The token space of a worker's `mio::Poll`.
//!
//! Reserved tokens sit at the top of the range and are named constants; every other token is
//! a session: `(slab key << 2) | (slab << 1) | side`, where `slab` says which of the worker's
//! two slabs holds it (TCP sessions, or HTTP sessions and pooled upstream connections), so one
//! session owns two tokens (client and backend).

use mio::Token;

/// Wakes the worker for control messages (shutdown, stats flush).
pub const WAKER: Token = Token(usize::MAX);
/// Listener `i` uses `Token(LISTENER_BASE - i)`.
const LISTENER_BASE: usize = usize::MAX - 1;
pub const MAX_LISTENERS: usize = 4096;
const FIRST_RESERVED: usize = LISTENER_BASE - MAX_LISTENERS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Downstream: the client connection.
    Front = 0,
    /// Upstream: the backend connection.
    Back = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Waker,
    Listener(usize),
    /// A TCP session.
    Session(usize, Side),
    /// An entry of the HTTP slab (session or pooled upstream connection).
    Http(usize, Side),
}

#[inline]
pub fn listener(index: usize) -> Token {
    debug_assert!(index < MAX_LISTENERS);
    Token(LISTENER_BASE - index)
}

#[inline]
pub fn session(key: usize, side: Side) -> Token {
    debug_assert!(key < FIRST_RESERVED >> 2);
    Token((key << 2) | side as usize)
}

#[inline]
pub fn http(key: usize, side: Side) -> Token {
    debug_assert!(key < FIRST_RESERVED >> 2);
    Token((key << 2) | 2 | side as usize)
}

#[inline]
pub fn decode(t: Token) -> Decoded {
    let v = t.0;
    if v == WAKER.0 {
        Decoded::Waker
    } else if v > FIRST_RESERVED {
        Decoded::Listener(LISTENER_BASE - v)
    } else {
        let side = if v & 1 == 0 { Side::Front } else { Side::Back };
        if v & 2 == 0 {
            Decoded::Session(v >> 2, side)
        } else {
            Decoded::Http(v >> 2, side)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for key in [0usize, 1, 2, 12345, (1 << 40) + 7] {
            for side in [Side::Front, Side::Back] {
                assert_eq!(decode(session(key, side)), Decoded::Session(key, side));
                assert_eq!(decode(http(key, side)), Decoded::Http(key, side));
            }
        }
        for i in [0, 1, MAX_LISTENERS - 1] {
            assert_eq!(decode(listener(i)), Decoded::Listener(i));
        }
        assert_eq!(decode(WAKER), Decoded::Waker);
    }
}
