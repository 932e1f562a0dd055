//! Socket activation, as `sd_listen_fds_with_names(3)` defines it: when `LISTEN_PID` is our
//! pid, descriptors 3 .. 3+`LISTEN_FDS` are listening sockets the service manager opened for
//! us, and `LISTEN_FDNAMES` (colon-separated) names them (`FileDescriptorName=` in the socket
//! unit; systemd's default name is the socket unit's name).
//!
//! Each inherited socket is matched to a listener by name first (the descriptor name equals
//! the listener's `name`), then by address (the socket's local address equals the listener's
//! `bind`). Sharing: the workers normally each bind their own `SO_REUSEPORT` socket; an
//! inherited socket is one socket, so every worker watches a duplicate of it (see
//! [`crate::server`]).

use socket2::Socket;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// First descriptor passed by the service manager.
pub const LISTEN_FDS_START: i32 = 3;

/// A listening TCP socket the service manager passed to us.
#[derive(Debug)]
pub struct Activated {
    /// From `LISTEN_FDNAMES`; `None` when unnamed (or named `unknown`, systemd's filler).
    pub name: Option<String>,
    pub local: SocketAddr,
    pub socket: std::net::TcpListener,
}

/// What the three variables say, before any descriptor is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub count: usize,
    pub names: Vec<Option<String>>,
}

/// Interprets `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for process `pid`. `Ok(None)`:
/// nothing was passed to this process.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    fdnames: Option<&str>,
    pid: u32,
) -> Result<Option<Passed>, String> {
    let (Some(lp), Some(lf)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let lp: u32 = lp
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID={lp:?} is not a pid"))?;
    if lp != pid {
        return Ok(None); // meant for another process (e.g. our parent)
    }
    let count: usize = lf
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={lf:?} is not a count"))?;
    if count > 4096 {
        return Err(format!("LISTEN_FDS={count} is implausibly large"));
    }
    let mut names: Vec<Option<String>> = match fdnames {
        Some(n) if !n.is_empty() => n
            .split(':')
            .map(|s| (!s.is_empty() && s != "unknown").then(|| s.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    if !names.is_empty() && names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
            names.len()
        ));
    }
    names.resize(count, None);
    Ok(Some(Passed { count, names }))
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the sockets passed to this process (once per process; later calls return nothing).
/// Every descriptor must be a listening TCP socket; anything else is an error.
pub fn take() -> Result<Vec<Activated>, String> {
    let var = |k: &str| std::env::var(k).ok();
    let Some(passed) = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(passed.count);
    for (i, name) in passed.names.into_iter().enumerate() {
        let fd = LISTEN_FDS_START + i as i32;
        let owned: OwnedFd =
            crate::sys::adopt_fd(fd).map_err(|e| format!("LISTEN_FDS: descriptor {fd}: {e}"))?;
        crate::sys::set_cloexec(std::os::fd::AsFd::as_fd(&owned), true)
            .map_err(|e| format!("LISTEN_FDS: descriptor {fd}: {e}"))?;
        let sock = Socket::from(owned);
        let what = |m: &str| {
            format!(
                "LISTEN_FDS: descriptor {fd}{}: {m}",
                name.as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
        };
        if sock.r#type().map_err(|e| what(&e.to_string()))? != socket2::Type::STREAM
            || !sock.is_listener().map_err(|e| what(&e.to_string()))?
        {
            return Err(what("not a listening stream socket"));
        }
        let local = sock
            .local_addr()
            .map_err(|e| what(&e.to_string()))?
            .as_socket()
            .ok_or_else(|| what("not a TCP socket (only ListenStream= with an IP address)"))?;
        sock.set_nonblocking(true)
            .map_err(|e| what(&e.to_string()))?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux.
        let _ = sock.set_nodelay(true);
        log::debug!("socket activation: fd {} = {local}", sock.as_raw_fd());
        out.push(Activated {
            name,
            local,
            socket: sock.into(),
        });
    }
    Ok(out)
}

/// The inherited socket for a listener: by name, else by address. Removes it from `pool`.
pub fn claim(pool: &mut Vec<Activated>, name: &str, bind: SocketAddr) -> Option<Activated> {
    let i = pool
        .iter()
        .position(|a| a.name.as_deref() == Some(name))
        .or_else(|| pool.iter().position(|a| a.local == bind))?;
    Some(pool.remove(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables() {
        assert_eq!(parse(None, Some("2"), None, 7), Ok(None));
        assert_eq!(parse(Some("8"), Some("2"), None, 7), Ok(None));
        assert_eq!(
            parse(Some("7"), Some("2"), Some("web:unknown"), 7),
            Ok(Some(Passed {
                count: 2,
                names: vec![Some("web".into()), None]
            }))
        );
        assert_eq!(
            parse(Some("7"), Some("1"), None, 7),
            Ok(Some(Passed {
                count: 1,
                names: vec![None]
            }))
        );
        assert!(parse(Some("7"), Some("2"), Some("a"), 7).is_err());
        assert!(parse(Some("x"), Some("2"), None, 7).is_err());
        assert!(parse(Some("7"), Some("-1"), None, 7).is_err());
    }

    #[test]
    fn claim_by_name_then_address() {
        let l = |name: Option<&str>| {
            let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Activated {
                name: name.map(String::from),
                local: s.local_addr().unwrap(),
                socket: s,
            }
        };
        let mut pool = vec![l(None), l(Some("web"))];
        let by_addr = pool[0].local;
        let got = claim(&mut pool, "web", "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(got.name.as_deref(), Some("web"));
        assert!(claim(&mut pool, "api", "127.0.0.1:1".parse().unwrap()).is_none());
        assert_eq!(claim(&mut pool, "api", by_addr).unwrap().local, by_addr);
        assert!(pool.is_empty());
    }
}
