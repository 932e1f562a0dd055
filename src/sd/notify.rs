//! `sd_notify(3)`: one datagram per state change to the unix socket named by `NOTIFY_SOCKET`,
//! newline-separated `KEY=VALUE` assignments. `NOTIFY_SOCKET` is a path (`/run/systemd/notify`)
//! or an abstract socket (`@name`). Without the variable every call is a no-op.
//!
//! Sends never block (datagram, the service manager reads promptly) and never fail the caller:
//! a lost notification is logged at debug level.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go (none: not supervised).
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

/// Parses a `NOTIFY_SOCKET` value: an absolute path or `@abstract-name`.
pub fn parse_address(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("NOTIFY_SOCKET={value:?} is neither an absolute path nor @abstract"),
    ))
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, or a silent one when the variable is unset or unusable
    /// (the latter is logged).
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::none();
        };
        let value = value.to_string_lossy().into_owned();
        match parse_address(&value).and_then(|a| Ok((UnixDatagram::unbound()?, a))) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(e) => {
                log::warn!("notifications to the service manager are off: {e}");
                Notifier::none()
            }
        }
    }

    pub fn none() -> Notifier {
        Notifier { target: None }
    }

    /// A service manager is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `KEY=VALUE` lines in one datagram.
    pub fn send(&self, lines: &[&str]) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        let mut msg = String::with_capacity(64);
        for l in lines {
            // A value must stay on its line: newlines would start new assignments.
            msg.extend(l.chars().map(|c| if c == '\n' { ' ' } else { c }));
            msg.push('\n');
        }
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            log::debug!("sd_notify {:?}: {e}", msg.trim_end());
        }
    }

    /// `STATUS=<text>`.
    pub fn status(&self, text: &str) {
        if self.enabled() {
            self.send(&[&format!("STATUS={text}")]);
        }
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` that systemd (v253 and newer) requires with it.
pub fn reloading_lines() -> Vec<String> {
    let mut v = vec!["RELOADING=1".to_string()];
    if let Some(us) = crate::sys::monotonic_usec() {
        v.push(format!("MONOTONIC_USEC={us}"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = parse_address("@sy-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"sy-test"[..]));
        let p = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(parse_address("relative").is_err());
        assert!(parse_address("vsock:2:1").is_err());
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("sy-notify-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
        };
        n.send(&["READY=1", "STATUS=two\nlines"]);
        let mut buf = [0u8; 256];
        let got = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"READY=1\nSTATUS=two lines\n");
        let lines = reloading_lines();
        assert_eq!(lines[0], "RELOADING=1");
        assert!(lines[1].starts_with("MONOTONIC_USEC="));
    }
}
