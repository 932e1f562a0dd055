//! Kernel pipes for zero-copy forwarding (`splice(2)`), pooled per worker.
//!
//! HOT PATH. No allocation after start-up growth; no locks; no logging.
//!
//! A flow starts on pool buffers (cheap for small messages and needed by analyzers). When it
//! fills whole buffers in a row it is a bulk transfer, and it switches to a pipe: bytes go
//! socket → pipe → socket as page references, never copied through user space. When the
//! source runs dry and the pipe is empty the pipe goes back to the pool, so idle connections
//! hold no pipe (and no extra descriptors). The pool is capped: with no pipe free, a flow just
//! stays on buffers.

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Pipe size asked for: fewer, larger splices per bulk transfer. The kernel may refuse
/// (per-user pipe page limits), in which case a pipe keeps its default 64 KiB.
const PIPE_SIZE: usize = 256 * 1024;
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the kernel granted.
    pub capacity: u32,
}

pub struct PipePool {
    free: Vec<Pipe>,
    created: usize,
    max: usize,
}

impl PipePool {
    pub fn new(max: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            created: 0,
            max,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Empty pipes kept for reuse.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// Pipes handed out and not yet returned (or discarded).
    pub fn in_use(&self) -> usize {
        self.created - self.free.len()
    }

    /// A pipe, or `None` when the cap is reached or the system refuses more descriptors.
    pub fn get(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.created >= self.max {
            return None;
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
        let capacity = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .map_or(DEFAULT_PIPE_SIZE as u32, |n| n.max(0) as u32);
        self.created += 1;
        Some(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Returns an empty pipe. A pipe that still holds bytes must be dropped instead
    /// ([`PipePool::discard`]), or its bytes would leak into another connection.
    pub fn put(&mut self, p: Pipe) {
        self.free.push(p);
    }

    pub fn discard(&mut self, p: Pipe) {
        self.created -= 1;
        drop(p);
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

/// socket → pipe. `Ok(0)` is end of stream.
#[inline]
pub fn fill(src: impl AsFd, pipe: &Pipe, len: usize) -> io::Result<usize> {
    splice(src, None, &pipe.write, None, len, flags()).map_err(io::Error::from)
}

/// pipe → socket.
#[inline]
pub fn drain(pipe: &Pipe, dst: impl AsFd, len: usize) -> io::Result<usize> {
    splice(&pipe.read, None, dst, None, len, flags()).map_err(io::Error::from)
}
