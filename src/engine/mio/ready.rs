//! Readiness bits the mio engine remembers per socket.
//!
//! mio is edge-triggered: an event says "something changed", once. The engine records what the
//! event reported and clears a bit only when the matching syscall says `WouldBlock` (or comes
//! back short, which on Linux TCP means the queue is drained and a new edge will follow).
//! Back-pressure is simply not acting on a bit: the socket stays registered for both
//! directions, so no `epoll_ctl` is needed to pause or resume a direction.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready(u8);

impl Ready {
    pub const EMPTY: Ready = Ready(0);
    pub const READABLE: Ready = Ready(1);
    pub const WRITABLE: Ready = Ready(2);
    /// The peer hung up or the socket has an error: the next read must happen even after a
    /// short read, because no further edge will come.
    pub const HUP: Ready = Ready(4);

    #[inline]
    pub fn contains(self, other: Ready) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    #[inline]
    pub fn insert(&mut self, other: Ready) {
        self.0 |= other.0;
    }
    #[inline]
    pub fn remove(&mut self, other: Ready) {
        self.0 &= !other.0;
    }

    /// What a mio event means for the next syscalls. Errors and hang-ups are folded into
    /// "readable and writable": the syscall then reports the precise condition.
    #[inline]
    pub fn from_event(e: &mio::event::Event) -> Ready {
        let mut r = Ready::EMPTY;
        if e.is_readable() || e.is_read_closed() || e.is_error() {
            r.insert(Ready::READABLE);
        }
        if e.is_writable() || e.is_write_closed() || e.is_error() {
            r.insert(Ready::WRITABLE);
        }
        if e.is_read_closed() || e.is_error() {
            r.insert(Ready::HUP);
        }
        r
    }
}
