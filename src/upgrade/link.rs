//! The hand-over channel between the running process and its successor: a `SOCK_SEQPACKET`
//! socket pair (message boundaries kept, descriptors passed with `SCM_RIGHTS`). The child's
//! end is inherited as the descriptor named by `SWITCHYARD_UPGRADE_FD`.
//!
//! A message is JSON, split into packets of at most [`CHUNK`] bytes: byte 0 of each packet is
//! 1 when more packets follow, 0 on the last. Descriptors ride on the packets, at most
//! [`FDS_PER_PACKET`] each (the kernel's limit is 253), so any number can be passed.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Environment variable naming the inherited end in the new process.
pub const ENV: &str = "SWITCHYARD_UPGRADE_FD";
/// Payload bytes per packet (well under the default socket buffer).
const CHUNK: usize = 32 * 1024;
const FDS_PER_PACKET: usize = 200;
/// A message larger than this is refused (a confused peer must not exhaust memory).
const MAX_MESSAGE: usize = 64 << 20;

pub struct Link {
    fd: OwnedFd,
}

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

impl Link {
    /// A connected pair: ours, and the child's end (close-on-exec cleared just before the
    /// spawn, by the caller).
    pub fn pair() -> io::Result<(Link, OwnedFd)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(nix_err)?;
        Ok((Link { fd: a }, b))
    }

    /// The end this process inherited from its predecessor, if it was started by an upgrade.
    pub fn inherited() -> Option<io::Result<Link>> {
        let v = std::env::var(ENV).ok()?;
        let fd: RawFd = match v.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                return Some(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{ENV}={v:?} is not a descriptor number"),
                )))
            }
        };
        Some(crate::sys::adopt_fd(fd).and_then(|fd| {
            crate::sys::set_cloexec(fd.as_fd(), true)?;
            Ok(Link { fd })
        }))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends one message with its descriptors.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut fd_chunks = raw.chunks(FDS_PER_PACKET);
        let mut data_chunks = body.chunks(CHUNK).peekable();
        let packets = body
            .len()
            .div_ceil(CHUNK)
            .max(raw.len().div_ceil(FDS_PER_PACKET))
            .max(1);
        for i in 0..packets {
            let data = data_chunks.next().unwrap_or(&[]);
            let more = [u8::from(i + 1 < packets)];
            let iov = [IoSlice::new(&more), IoSlice::new(data)];
            let fds = fd_chunks.next().unwrap_or(&[]);
            let cmsg = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
            loop {
                match sendmsg::<()>(
                    self.fd.as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                ) {
                    Ok(_) => break,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(nix_err(e)),
                }
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever with `None`) for a message. `Ok(None)`: the peer
    /// closed its end (it exited).
    pub fn recv<T: DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut body = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; CHUNK + 1];
        loop {
            self.wait_readable(deadline)?;
            let mut cmsg_space = nix::cmsg_space!([RawFd; FDS_PER_PACKET]);
            let n = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let r = match recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg_space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(r) => r,
                    Err(nix::Error::EINTR) => continue,
                    // The peer closed with our packets unread: it is gone, as with EOF.
                    Err(nix::Error::ECONNRESET) => return Ok(None),
                    Err(e) => return Err(nix_err(e)),
                };
                for c in r.cmsgs().map_err(nix_err)? {
                    if let ControlMessageOwned::ScmRights(list) = c {
                        for raw in list {
                            fds.push(crate::sys::adopt_fd(raw)?);
                        }
                    }
                }
                if r.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::other("descriptors were truncated in transit"));
                }
                r.bytes
            };
            if n == 0 {
                return Ok(None); // EOF: a seqpacket peer that closed
            }
            let more = buf[0] == 1;
            body.extend_from_slice(&buf[1..n]);
            if body.len() > MAX_MESSAGE {
                return Err(io::Error::other("hand-over message too large"));
            }
            if !more {
                break;
            }
        }
        let msg = serde_json::from_slice(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fds)))
    }

    fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let ms = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                    }
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut p = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut p, ms) {
                Ok(0) => continue, // re-check the deadline
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(nix_err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn large_messages_and_many_descriptors() {
        let (a, b) = Link::pair().unwrap();
        let b = Link { fd: b };
        let big: String = "x".repeat(100_000);
        let socks: Vec<std::net::TcpListener> = (0..450)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = socks.iter().map(|s| s.as_fd()).collect();
        let t = std::thread::spawn(move || {
            let (m, fds): (Value, Vec<OwnedFd>) =
                b.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
            (m, fds.len(), b.recv::<Value>(Some(Duration::from_secs(5))))
        });
        a.send(&json!({"big": big}), &fds).unwrap();
        drop(a);
        let (m, n, eof) = t.join().unwrap();
        assert_eq!(m["big"].as_str().map(str::len), Some(100_000));
        assert_eq!(n, 450);
        assert!(matches!(eof, Ok(None)), "EOF after the peer closed");
    }

    #[test]
    fn timeout() {
        let (a, _b) = Link::pair().unwrap();
        let e = a
            .recv::<Value>(Some(Duration::from_millis(30)))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
