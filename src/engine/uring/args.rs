//! Kernel-visible arguments of ops that pass a pointer to more than the data: the message
//! header and iovecs of a two-slice send (`SENDMSG`), the address of a connect, the peer
//! address an accept fills in.
//!
//! They live in fixed chunks that are never moved or freed while the engine lives, so an
//! entry's address stays valid until the op's completion, whenever the kernel reads it (with
//! SQPOLL a kernel thread reads submissions on its own schedule). Only ops that need them take
//! an entry: an idle connection's receive takes none.

use std::net::SocketAddr;

const CHUNK: usize = 64;

/// One entry: what a `SENDMSG`, `CONNECT` or `ACCEPT` submission points at.
#[repr(C)]
pub(super) struct MsgArgs {
    pub(super) msg: libc::msghdr,
    pub(super) iov: [libc::iovec; 2],
    pub(super) addr: libc::sockaddr_in6,
    pub(super) addrlen: libc::socklen_t,
}

pub(super) struct Args {
    chunks: Vec<Box<[MsgArgs]>>,
    free: Vec<u32>,
}

// SAFETY: the raw pointers inside the entries point into the engine's own buffer pool and into
// the entries themselves; they are only dereferenced by the kernel for ops of this engine, and
// the table moves between threads only together with the engine that owns both.
unsafe impl Send for Args {}

fn zeroed() -> MsgArgs {
    // SAFETY: every field is a plain C struct for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl Args {
    pub(super) fn new() -> Args {
        Args {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A free entry (a new chunk when all are taken: allocation at the high-water mark only).
    pub(super) fn alloc(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            return i;
        }
        let base = (self.chunks.len() * CHUNK) as u32;
        self.chunks.push(
            (0..CHUNK)
                .map(|_| zeroed())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        self.free.extend((base + 1..base + CHUNK as u32).rev());
        base
    }

    pub(super) fn release(&mut self, i: u32) {
        self.free.push(i);
    }

    /// The entry's stable address.
    #[inline]
    pub(super) fn get(&mut self, i: u32) -> *mut MsgArgs {
        let c = &mut self.chunks[i as usize / CHUNK];
        &mut c[i as usize % CHUNK] as *mut MsgArgs
    }

    /// Fills entry `i` for a two-slice send; returns the message header's address.
    pub(super) fn sendmsg(
        &mut self,
        i: u32,
        a: (*const u8, usize),
        b: (*const u8, usize),
    ) -> *const libc::msghdr {
        let p = self.get(i);
        // SAFETY: `p` is a valid, exclusive entry (taken by `alloc`, not yet released); the
        // header points at the entry's own iovecs, which stay put (see the module doc).
        unsafe {
            (*p).iov = [
                libc::iovec {
                    iov_base: a.0 as *mut libc::c_void,
                    iov_len: a.1,
                },
                libc::iovec {
                    iov_base: b.0 as *mut libc::c_void,
                    iov_len: b.1,
                },
            ];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = (*p).iov.as_mut_ptr();
            msg.msg_iovlen = 2;
            (*p).msg = msg;
            &(*p).msg
        }
    }

    /// Prepares entry `i` for an accept: where the kernel writes the peer's address.
    pub(super) fn accept_slot(&mut self, i: u32) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        let p = self.get(i);
        // SAFETY: `p` is a valid, exclusive entry; the kernel writes at most `addrlen` bytes
        // into `addr`, which is that large, and the entry is not reused before the accept's
        // completion is reaped.
        unsafe {
            (*p).addrlen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            (
                std::ptr::addr_of_mut!((*p).addr).cast(),
                std::ptr::addr_of_mut!((*p).addrlen),
            )
        }
    }

    /// The peer address an accept wrote into entry `i`.
    pub(super) fn accepted_peer(&mut self, i: u32) -> Option<SocketAddr> {
        let p = self.get(i);
        // SAFETY: the accept completed (its completion was reaped), so the kernel no longer
        // writes the entry; `addrlen` bytes of `addr` are initialised (the entry was zeroed
        // when its chunk was made, and the kernel wrote the rest).
        unsafe {
            let len = ((*p).addrlen as usize).min(std::mem::size_of::<libc::sockaddr_in6>());
            let (_, addr) = socket2::SockAddr::try_init(|storage, l| {
                std::ptr::copy_nonoverlapping(
                    std::ptr::addr_of!((*p).addr).cast::<u8>(),
                    storage.cast::<u8>(),
                    len,
                );
                *l = len as libc::socklen_t;
                Ok(())
            })
            .ok()?;
            addr.as_socket()
        }
    }

    /// Fills entry `i` with a socket address; returns it and its length.
    pub(super) fn sockaddr(
        &mut self,
        i: u32,
        addr: SocketAddr,
    ) -> (*const libc::sockaddr, libc::socklen_t) {
        let p = self.get(i);
        let sa = socket2::SockAddr::from(addr);
        let len = (sa.len() as usize).min(std::mem::size_of::<libc::sockaddr_in6>());
        // SAFETY: `p` is a valid, exclusive entry; at most `sizeof(sockaddr_in6)` bytes are
        // copied into its address field, which is that large.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                std::ptr::addr_of_mut!((*p).addr).cast::<u8>(),
                len,
            );
            (std::ptr::addr_of!((*p).addr).cast(), len as libc::socklen_t)
        }
    }
}
