//! The service manager's protocols, as systemd speaks them (none of this needs systemd to be
//! PID 1: each part is a no-op when its environment variables are absent).
//!
//! - [`notify`]: `sd_notify` datagrams on `NOTIFY_SOCKET` (`READY=1`, `STATUS=`, `RELOADING=1`,
//!   `STOPPING=1`, `WATCHDOG=1`, `MAINPID=`), path and abstract sockets.
//! - [`watchdog`]: `WATCHDOG_USEC`, and the per-worker heartbeats that decide whether the
//!   process deserves a `WATCHDOG=1`.
//! - [`activation`]: socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).
//!
//! We do not use the `sd-notify` crate: it takes `NOTIFY_SOCKET=@name` for a file path (no
//! abstract sockets), and its socket-activation helpers hand out raw descriptor numbers that
//! would need `unsafe` outside `sys.rs` anyway.

pub mod activation;
pub mod notify;
pub mod watchdog;
