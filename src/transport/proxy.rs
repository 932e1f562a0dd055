//! The PROXY protocol as a transport step: taking the header off the front of what a listener
//! with `accept_proxy` receives, and putting one in front of what is sent to a cluster with
//! `send_proxy`, before the session (or TLS, for a TLS connection) sees any byte. The header
//! itself is parsed and written by [`crate::proto::proxy_protocol`].
//!
//! [`ProxyConn`] is the whole transport of a plain TCP connection that does either; TLS
//! connections use [`ProxyIn`] on their ciphertext (the header travels in the clear).
//!
//! HOT PATH (once per connection). No allocation, lock or log.

use super::tls::event;
use super::Wire;
use crate::engine::{recycle, ConnId, Done, Op, Slice, Slot};
use crate::io::{Buf, BufferPool, PipePool, Xfer};
use crate::proto::proxy_protocol::{self, Parsed, Version};
use std::net::SocketAddr;

/// Where taking a header off a buffer stands.
pub enum Step {
    /// The header is not complete: receive more into the same buffer.
    More,
    /// Done; the buffer now starts after the header. The addresses it carried, if any.
    Done(Option<(SocketAddr, SocketAddr)>),
    /// Missing or malformed: close the connection.
    Bad,
}

/// Reading a PROXY header (server side); the bytes stay in the caller's buffer.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyIn;

impl ProxyIn {
    /// Takes the header off the front of `buf` (whose bytes all came from the wire).
    pub fn take_header(&mut self, pool: &mut BufferPool, buf: &mut Buf) -> Step {
        let cap = pool.capacity(buf);
        match proxy_protocol::parse(pool.data(buf), cap) {
            Ok(Parsed::Partial) if buf.len() < cap => Step::More,
            Ok(Parsed::Partial) => Step::Bad,
            Ok(Parsed::Complete(h)) => {
                buf.consume(h.len);
                Step::Done(h.addrs)
            }
            Err(_) => Step::Bad,
        }
    }
}

/// A plain TCP connection with a PROXY header read first (accepted) or written first
/// (upstream). After the header the ops pass through untouched.
#[derive(Debug)]
pub struct ProxyConn {
    /// Accepted side: the header is still to be read.
    reading_header: bool,
    /// The session's receive, parked while the header is read.
    parked: Option<Option<Buf>>,
    /// Header bytes received so far (the buffer is in an engine receive while `None`).
    acc: Option<Buf>,
    eng_reading: bool,
    /// Upstream side: the header to write once connected, and the connect held until it is out.
    out: Option<(Version, Option<(SocketAddr, SocketAddr)>)>,
    out_writing: bool,
    connect_held: bool,
    ready: Option<Done>,
    ready_write: Option<Done>,
    failed: bool,
    events: u8,
    deadline: Option<std::time::Instant>,
    /// What an accepted header said (client, destination).
    pub proxied: Option<(SocketAddr, SocketAddr)>,
    /// The header sent upstream (pooled connections are matched on it).
    pub sent: Option<(Version, Option<(SocketAddr, SocketAddr)>)>,
}

impl ProxyConn {
    /// A connection accepted by a listener with `accept_proxy`.
    pub fn accepted(deadline: std::time::Instant) -> ProxyConn {
        ProxyConn {
            reading_header: true,
            deadline: Some(deadline),
            ..ProxyConn::upstream(None)
        }
    }

    /// An upstream connection that starts with `out` (the engine's connect is in progress).
    pub fn upstream(out: Option<(Version, Option<(SocketAddr, SocketAddr)>)>) -> ProxyConn {
        ProxyConn {
            reading_header: false,
            parked: None,
            acc: None,
            eng_reading: false,
            out,
            out_writing: false,
            connect_held: false,
            ready: None,
            ready_write: None,
            failed: false,
            events: 0,
            deadline: None,
            proxied: None,
            sent: out,
        }
    }

    #[inline]
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.deadline
    }

    #[inline]
    pub fn take_events(&mut self) -> u8 {
        std::mem::take(&mut self.events)
    }

    #[inline]
    pub fn take_ready(&mut self) -> Option<Done> {
        self.ready.take().or_else(|| self.ready_write.take())
    }

    pub fn submit<E: Wire>(&mut self, engine: &mut E, conn: ConnId, op: Op) -> Option<Done> {
        // Before the header is in, the session's first receive waits for the header's.
        let op = match op {
            Op::RecvNew if self.reading_header || self.failed => Op::Recv(None),
            op => op,
        };
        match op {
            Op::Recv(buf) if self.reading_header || self.failed => {
                if self.failed {
                    return Some(Done::Recv {
                        buf,
                        res: Xfer::Failed(libc::EPROTO),
                    });
                }
                self.parked = Some(buf);
                self.read_header(engine, conn);
                self.take_ready()
            }
            op => engine.submit(conn, op),
        }
    }

    pub fn complete<E: Wire>(&mut self, engine: &mut E, conn: ConnId, done: Done) -> Option<Done> {
        match done {
            Done::Recv { buf, res } if self.eng_reading => {
                self.eng_reading = false;
                self.header_bytes(engine, conn, buf, res);
                self.take_ready()
            }
            Done::Connect(Xfer::Bytes(_)) if self.out.is_some() => {
                self.connect_held = true;
                self.write_header(engine, conn);
                self.take_ready()
            }
            Done::Send { a, b, res } if self.out_writing => {
                self.out_writing = false;
                let (pool, _) = engine.pools();
                if let Some(b) = b {
                    pool.release(b);
                }
                let mut a = a;
                match res {
                    Xfer::Failed(_) => {
                        pool.release(a);
                        self.connect_held = false;
                        return Some(Done::Connect(res));
                    }
                    res => a.consume(res.bytes().min(a.len())),
                }
                if a.is_empty() {
                    pool.release(a);
                    self.connect_held = false;
                    return Some(Done::Connect(Xfer::Bytes(0)));
                }
                self.send_rest(engine, conn, a);
                self.take_ready()
            }
            done => Some(done),
        }
    }

    /// Cancels the session's op in `slot` (and the engine's op under it).
    pub fn cancel<E: Wire>(&mut self, engine: &mut E, conn: ConnId, slot: Slot) {
        if slot == Slot::Read {
            if let Some(Some(b)) = self.parked.take() {
                engine.pools().0.release(b);
            }
            self.eng_reading = false;
        }
        engine.cancel(conn, slot);
    }

    pub fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        if let Some(Some(b)) = self.parked.take() {
            pool.release(b);
        }
        if let Some(b) = self.acc.take() {
            pool.release(b);
        }
        for d in [self.ready.take(), self.ready_write.take()]
            .into_iter()
            .flatten()
        {
            recycle(d, pool, pipes);
        }
    }

    /// Receives (more of) the header.
    fn read_header<E: Wire>(&mut self, engine: &mut E, conn: ConnId) {
        if self.eng_reading {
            return;
        }
        self.eng_reading = true;
        if let Some(Done::Recv { buf, res }) = engine.submit(conn, Op::Recv(self.acc.take())) {
            self.eng_reading = false;
            self.header_bytes(engine, conn, buf, res);
        }
    }

    fn header_bytes<E: Wire>(&mut self, engine: &mut E, conn: ConnId, buf: Option<Buf>, res: Xfer) {
        let (pool, _) = engine.pools();
        let mut b = match (res, buf) {
            (Xfer::Bytes(_), Some(b)) => b,
            (_, buf) => {
                // Closed or broken before a whole header.
                if let Some(b) = buf {
                    pool.release(b);
                }
                return self.bad(engine);
            }
        };
        let mut p = ProxyIn;
        match p.take_header(pool, &mut b) {
            Step::More => {
                self.acc = Some(b);
                self.read_header(engine, conn)
            }
            Step::Bad => {
                pool.release(b);
                self.bad(engine)
            }
            Step::Done(addrs) => {
                self.reading_header = false;
                self.deadline = None;
                self.proxied = addrs;
                self.events |= event::PROXIED;
                // What followed the header goes to the session's receive.
                let parked = self.parked.take();
                if b.is_empty() {
                    pool.release(b);
                    if let Some(op) = parked {
                        if let Some(done) = engine.submit(conn, Op::Recv(op)) {
                            self.ready = Some(done);
                        }
                    }
                    return;
                }
                let n = b.len();
                self.ready = Some(match parked {
                    Some(Some(mut mine)) => {
                        // Into the session's own buffer, after what it holds.
                        let moved = match pool.data_and_spare(&b, &mut mine) {
                            Some((d, s)) => {
                                let k = d.len().min(s.len());
                                s[..k].copy_from_slice(&d[..k]);
                                k
                            }
                            None => 0,
                        };
                        mine.fill(moved);
                        pool.release(b);
                        Done::Recv {
                            buf: Some(mine),
                            res: Xfer::Bytes(moved as u32),
                        }
                    }
                    _ => Done::Recv {
                        buf: Some(b),
                        res: Xfer::Bytes(n as u32),
                    },
                });
            }
        }
    }

    fn bad<E: Wire>(&mut self, engine: &mut E) {
        self.failed = true;
        self.reading_header = false;
        self.events |= event::PROXY_BAD;
        let buf = self.parked.take().flatten();
        let _ = engine;
        self.ready = Some(Done::Recv {
            buf,
            res: Xfer::Failed(libc::EPROTO),
        });
    }

    /// Connected: the header goes first; the session hears of the connect once it is out.
    fn write_header<E: Wire>(&mut self, engine: &mut E, conn: ConnId) {
        let Some((v, addrs)) = self.out.take() else {
            return;
        };
        let (pool, _) = engine.pools();
        let Some(mut b) = pool.checkout() else {
            // No buffer even for a header: a failed connect (the next backend is tried).
            self.connect_held = false;
            self.ready_write = Some(Done::Connect(Xfer::Failed(libc::ENOBUFS)));
            return;
        };
        let spare = pool.spare(&mut b);
        let mut tmp = [0u8; proxy_protocol::MAX_HEADER];
        let n = proxy_protocol::write(v, addrs, &mut tmp).min(spare.len());
        spare[..n].copy_from_slice(&tmp[..n]);
        b.fill(n);
        self.send_rest(engine, conn, b);
    }

    fn send_rest<E: Wire>(&mut self, engine: &mut E, conn: ConnId, b: Buf) {
        let n = b.len();
        self.out_writing = true;
        if let Some(done) = engine.submit(conn, Op::Send(Slice::head(b, n), None)) {
            if let Some(d) = self.complete(engine, conn, done) {
                self.ready_write = Some(d);
            }
        }
    }
}
