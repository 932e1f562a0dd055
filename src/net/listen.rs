//! Listening sockets: one `SO_REUSEPORT` socket per worker and listener, so the kernel
//! spreads connections across the workers; port 0 resolved once and shared.

use crate::config::ListenerConfig;
use socket2::{Domain, Protocol as SockProto, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// A listener's address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot bind {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// One `SO_REUSEPORT` listening socket: the kernel spreads connections across the workers'
/// sockets. TCP_NODELAY set here is inherited by accepted sockets on Linux, which saves a
/// syscall per connection.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProto::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Binds `workers` sockets for one listener. Port 0 is resolved by the first bind and reused,
/// so every worker listens on the same ephemeral port.
pub fn bind_listener(
    name: &str,
    addr: SocketAddr,
    workers: usize,
    backlog: i32,
) -> Result<Vec<TcpListener>, BindError> {
    let err = |source| BindError {
        name: name.to_string(),
        addr,
        source,
    };
    let first = bind_reuseport(addr, backlog).map_err(err)?;
    let actual = first.local_addr().map_err(err)?;
    let mut v = vec![first];
    for _ in 1..workers {
        v.push(bind_reuseport(actual, backlog).map_err(err)?);
    }
    Ok(v)
}

/// The start-up line scripts look for: the real bound address of a listener.
pub fn announce(l: &ListenerConfig, actual: SocketAddr) {
    log::info!(
        "listening name={} protocol={} addr={}",
        l.name,
        l.protocol.as_str(),
        actual
    );
}
