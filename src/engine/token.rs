//! The worker's key spaces, side by side: the poll token of every registered socket, and the
//! key of every timer-wheel entry.
//!
//! Tokens: reserved ones sit at the top of the range and are named constants; every other
//! token is a connection id ([`ConnId`]). Which session (and which side of it) owns a
//! connection is the worker's business, not the token's, so a pooled upstream connection
//! keeps its token when it moves from one session to another.
//!
//! Timer keys: a session (slab key), an idle pooled upstream connection (connection id) or a
//! mirror exchange (slab key).

use super::ConnId;

/// Wakes the worker for control messages (shutdown, stats flush).
pub const WAKER: usize = usize::MAX;
/// Listener `i` uses token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
pub const MAX_LISTENERS: usize = 4096;
/// Connection ids stay below this.
pub const FIRST_RESERVED: usize = LISTENER_BASE - MAX_LISTENERS;

/// A decoded poll token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Waker,
    Listener(usize),
    Conn(ConnId),
}

#[inline]
pub fn listener(index: usize) -> usize {
    debug_assert!(index < MAX_LISTENERS);
    LISTENER_BASE - index
}

#[inline]
pub fn conn(id: ConnId) -> usize {
    id as usize
}

#[inline]
pub fn decode(t: usize) -> Token {
    if t == WAKER {
        Token::Waker
    } else if t > FIRST_RESERVED {
        Token::Listener(LISTENER_BASE - t)
    } else {
        Token::Conn(t as ConnId)
    }
}

/// What a timer-wheel entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKey {
    /// A session (slab key): its current deadline (connect, idle, header, first byte, ...).
    Session(usize),
    /// An idle pooled upstream connection: its pool idle timeout.
    Pooled(ConnId),
    /// A mirror exchange of release strategy `concurrent` (the worker's mirror slab key).
    Mirror(usize),
}

impl TimerKey {
    /// The wheel stores plain integers: the low two bits say which kind.
    #[inline]
    pub fn encode(self) -> usize {
        match self {
            TimerKey::Session(k) => k << 2,
            TimerKey::Pooled(c) => ((c as usize) << 2) | 1,
            TimerKey::Mirror(k) => (k << 2) | 2,
        }
    }

    #[inline]
    pub fn decode(v: usize) -> TimerKey {
        match v & 3 {
            0 => TimerKey::Session(v >> 2),
            1 => TimerKey::Pooled((v >> 2) as ConnId),
            _ => TimerKey::Mirror(v >> 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for id in [0u32, 1, 2, 12345, u32::MAX] {
            assert_eq!(decode(conn(id)), Token::Conn(id));
        }
        for i in [0, 1, MAX_LISTENERS - 1] {
            assert_eq!(decode(listener(i)), Token::Listener(i));
        }
        assert_eq!(decode(WAKER), Token::Waker);
    }

    #[test]
    fn timer_keys_round_trip() {
        for k in [0usize, 1, 77, 1 << 40] {
            assert_eq!(
                TimerKey::decode(TimerKey::Session(k).encode()),
                TimerKey::Session(k)
            );
        }
        for k in [0usize, 3, 1 << 40] {
            assert_eq!(
                TimerKey::decode(TimerKey::Mirror(k).encode()),
                TimerKey::Mirror(k)
            );
        }
        for c in [0u32, 5, u32::MAX] {
            assert_eq!(
                TimerKey::decode(TimerKey::Pooled(c).encode()),
                TimerKey::Pooled(c)
            );
        }
    }
}
