//! Operating-system facts. Everything that needs `unsafe` or raw libc lives here; the rest of
//! the crate denies `unsafe`. The one unsafe operation is taking ownership of a descriptor
//! number handed to us from outside (socket activation, binary upgrades).

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

/// `net.core.somaxconn`: the kernel's cap on a listen backlog.
pub fn somaxconn() -> Option<u32> {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}
