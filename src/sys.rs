//! Operating-system facts. Everything that needs `unsafe` or raw libc lives here; the rest of
//! the crate denies `unsafe`. The unsafe operations: taking ownership of a descriptor number
//! handed to us from outside (socket activation, binary upgrades), and the buffer pools'
//! memory ([`Region`]: an anonymous mapping whose unused pages can be given back).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Resident set size of this process in KiB (from /proc/self/status), if readable.
pub fn rss_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The soft and hard open-file limits.
pub fn nofile_limit() -> Option<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()
}

/// Raises the soft open-file limit to the hard limit (a proxy needs two descriptors per
/// connection). Returns the new soft limit.
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{setrlimit, Resource};
    let (soft, hard) = nofile_limit()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// User plus system CPU time of this process, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

/// Open file descriptors of this process (entries of /proc/self/fd).
pub fn open_fds() -> Option<u64> {
    // The directory handle itself is one of the entries.
    Some(
        fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1) as u64,
    )
}

/// Takes ownership of a descriptor this process received from outside: systemd's socket
/// activation (`LISTEN_FDS`, from fd 3 on), the previous process of a binary upgrade
/// (`SWITCHYARD_UPGRADE_FD`), or an `SCM_RIGHTS` message. Fails when the number is not an open
/// descriptor. Callers adopt each number once, at the point where it arrives.
pub fn adopt_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // Open? (F_GETFD fails with EBADF otherwise.)
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: `raw` is open (checked just above) and was handed to this process by its
    // parent or over a unix socket; nothing else in the process refers to it: inherited
    // numbers are adopted once at start-up, and SCM_RIGHTS installs fresh numbers.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sets or clears close-on-exec on a descriptor (cleared only on the one descriptor a child
/// process must inherit).
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(
        fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).map_err(io::Error::from)?,
    );
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds (systemd's `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
}

/// Waits up to `timeout` for `fd` to be readable (a listening socket: a connection waits).
/// Lets accept loops on shared sockets run non-blocking and still notice a stop flag.
pub fn wait_readable(fd: &impl std::os::fd::AsFd, timeout: std::time::Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms =
        PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut p, ms), Ok(n) if n > 0)
}

/// Makes jemalloc (the global allocator, [`crate::heap`]) give every free page of every arena
/// back to the kernel now rather than on its decay timer (`arena.<MALLCTL_ARENAS_ALL>.purge`).
/// Returns whether jemalloc did.
pub fn purge_heap() -> bool {
    // First this thread's cache of freed blocks (they go back to their arenas, and so are
    // purged too), then every arena (`MALLCTL_ARENAS_ALL` is 4096).
    jemalloc_action(c"thread.tcache.flush");
    jemalloc_action(c"arena.4096.purge")
}

/// Runs a jemalloc control that takes and returns nothing; whether jemalloc did.
fn jemalloc_action(name: &std::ffi::CStr) -> bool {
    // SAFETY: a NUL-terminated control name; the controls passed here neither read nor write
    // a value, so every pointer is null and the length 0, as jemalloc requires for them.
    let r = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    r == 0
}

/// `net.core.somaxconn`: the kernel's cap on a listen backlog.
pub fn somaxconn() -> Option<u32> {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Zeroed memory for a buffer pool: one anonymous private mapping, page-aligned, so the kernel
/// backs a page only once it is first written, and [`Region::release`] can give pages back
/// (they read as zeros again and take no memory until written).
pub struct Region {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliases are handed out beyond borrows of
// `self`), so moving it to another thread moves that ownership with it.
unsafe impl Send for Region {}

impl Region {
    /// `len` zeroed bytes (none resident yet). Aborts only if the address space is
    /// exhausted, as a failed `vec!` would (at start-up, where the pool is created).
    pub fn new(len: usize) -> Region {
        Region::try_new(len).unwrap_or_else(|_| {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len, 4096)
                    .unwrap_or(std::alloc::Layout::new::<u8>()),
            )
        })
    }

    /// `len` zeroed bytes, or the mapping's error.
    pub fn try_new(len: usize) -> io::Result<Region> {
        if len == 0 {
            return Ok(Region {
                ptr: std::ptr::NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a new anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region { ptr, len })
    }

    /// Gives back the memory of the whole pages inside bytes `[start, end)` (a page that
    /// reaches outside the range is kept: its other bytes may be in use). The bytes read as
    /// zeros afterwards. Returns how many bytes were released (0 if the kernel refused: the
    /// memory then simply stays resident).
    pub fn release(&mut self, start: usize, end: usize) -> usize {
        const PAGE: usize = 4096;
        let end = end.min(self.len);
        let (lo, hi) = (start.next_multiple_of(PAGE), end - end % PAGE);
        if lo >= hi {
            return 0;
        }
        // SAFETY: `[lo, hi)` lies inside this mapping (`hi <= len`, both page-aligned as the
        // mapping's start is) and `&mut self` guarantees no borrow of these bytes is alive;
        // MADV_DONTNEED on private anonymous memory only replaces the pages with zero pages.
        let r = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(lo).cast(),
                hi - lo,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            hi - lo
        } else {
            0
        }
    }
}

impl std::ops::Deref for Region {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` bytes (a live mapping, or dangling with `len` 0),
        // initialized (zero pages at first), and only borrowed through `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Region {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping was created by `new` with this length and is unmapped once;
            // no borrow outlives `self`. An engine whose kernel ops still name this memory
            // drains them before its pool drops (see `engine::uring`).
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.len);
            }
        }
    }
}
