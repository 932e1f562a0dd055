//! TLS as a transport: between a session's ops and the engine's, on one connection.
//!
//! The session keeps speaking plaintext through the op/completion contract; this turns it into
//! records and back, using only engine ops, so it runs on every engine:
//! - a session `Send` of plaintext is taken by rustls at once (its buffers come back in the
//!   `Done`), encrypted, and the records go out in engine `Send`s of pool buffers (two per
//!   send, so a full record and its overhead leave in one `writev`). While records are still
//!   waiting for the socket, further plaintext waits (back-pressure);
//! - a session `Recv` is answered with decrypted bytes once engine `Recv`s of ciphertext
//!   brought some; handshake traffic, session tickets and alerts are never seen by it;
//! - a session `Shutdown` sends `close_notify`, then shuts the socket's sending side;
//! - a `Watch` (an idle pooled upstream) completes only on application data or a close, not
//!   on the tickets a TLS 1.3 server sends after the handshake;
//! - on the client side (upstreams) the engine's `Connect` completion is held until the
//!   handshake is done: the connect timeout covers it, and a failed handshake is a failed
//!   connect, tried on the next backend.
//!
//! A PROXY protocol header, when the listener expects one or the cluster sends one, travels
//! below TLS, in the clear: it is taken off the front of the first ciphertext, or put in front
//! of the first records.
//!
//! HOT PATH. No lock, blocking call or log; rustls allocates the record buffers it keeps
//! internally (its buffered API), nothing here does.

use super::proxy::{self, ProxyIn};
use super::Wire;
use crate::engine::{recycle, recycle_op, ConnId, Done, Op, Slice, Slot};
use crate::io::{Buf, BufferPool, PipePool, Xfer};
use crate::proto::proxy_protocol::Version;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Rounds of feed / drain / flush per call (each round moves bytes or stops).
const MAX_ROUNDS: usize = 64;

/// The errno reported to a session for a TLS failure (protocol error).
const TLS_FAILED: i32 = libc::EPROTO;

/// What the worker learns from a transport beyond completions.
pub mod event {
    /// A handshake finished.
    pub const HANDSHAKE: u8 = 1;
    /// ... by resumption.
    pub const RESUMED: u8 = 2;
    /// A handshake failed (a bad record, no shared cipher, a refused client certificate...).
    pub const HANDSHAKE_FAILED: u8 = 4;
    /// The PROXY header was missing or malformed.
    pub const PROXY_BAD: u8 = 8;
    /// A PROXY header was read: `proxied` says what it named.
    pub const PROXIED: u8 = 16;
}

/// The session's read-slot op, parked until plaintext (or an end) is there.
#[derive(Debug)]
enum ReadWait {
    None,
    Recv(Option<Buf>),
    Watch,
}

/// The session's write-slot op, parked until earlier records are out.
#[derive(Debug)]
enum WriteWait {
    None,
    Send(Slice, Option<Slice>),
    Shutdown,
}

/// Client side: the engine's connect completion is held until the handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// Server side, or already reported.
    None,
    /// The socket is not connected yet.
    Pending,
    /// Connected; the handshake runs.
    Handshaking,
}

/// One TLS connection.
pub struct TlsConn {
    tls: rustls::Connection,
    /// Ciphertext received and not yet taken by rustls (it takes what fits).
    cin: Option<Buf>,
    /// Records not yet handed to the engine (a short send's rest).
    cout: Option<(Buf, Option<Buf>)>,
    eng_reading: bool,
    eng_writing: bool,
    /// The write in flight is the session's shutdown.
    shutting: bool,
    close_sent: bool,
    read: ReadWait,
    write: WriteWait,
    /// The session's last send: its plaintext is taken, its records are on their way.
    sent: Option<Done>,
    connect: Connect,
    ready_read: Option<Done>,
    ready_write: Option<Done>,
    /// The peer's FIN was seen.
    eof: bool,
    /// ... and given to rustls, after every byte before it.
    eof_fed: bool,
    failed: Option<i32>,
    was_handshaking: bool,
    /// A PROXY header comes first (server side).
    proxy_in: Option<ProxyIn>,
    /// A PROXY header goes first (client side).
    proxy_out: Option<(Version, Option<(SocketAddr, SocketAddr)>)>,
    /// What an accepted PROXY header said (client, destination).
    pub proxied: Option<(SocketAddr, SocketAddr)>,
    /// The header sent upstream (pooled connections are matched on it).
    pub sent_proxy: Option<(Version, Option<(SocketAddr, SocketAddr)>)>,
    events: u8,
    /// Server side: the handshake (and the PROXY header) must be done by then.
    deadline: Option<Instant>,
    /// Client side: the config this connection was made with (pooled connections are reused
    /// only by clusters with the same one).
    pub client: Option<Arc<crate::tls::ClientTls>>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.tls.is_handshaking())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Writes records into a pool buffer's spare room.
struct Spare<'a> {
    a: &'a mut [u8],
    n: usize,
}

impl Write for Spare<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let k = (self.a.len() - self.n).min(data.len());
        self.a[self.n..self.n + k].copy_from_slice(&data[..k]);
        self.n += k;
        Ok(k)
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            let k = self.write(b)?;
            n += k;
            if k < b.len() {
                break;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TlsConn {
    /// A server connection of a TLS listener, accepted at `now`.
    pub fn server(
        tls: &crate::tls::ServerTls,
        proxy_in: Option<ProxyIn>,
        now: Instant,
    ) -> Result<TlsConn, rustls::Error> {
        let conn = rustls::ServerConnection::new(tls.config.clone())?;
        let mut c = TlsConn::new(rustls::Connection::Server(conn), Connect::None);
        c.proxy_in = proxy_in;
        c.deadline = Some(now + tls.handshake_timeout);
        c.was_handshaking = true;
        Ok(c)
    }

    /// A client connection to a backend (the engine's connect is in progress).
    pub fn client(
        tls: &Arc<crate::tls::ClientTls>,
        name: rustls::pki_types::ServerName<'static>,
        proxy_out: Option<(Version, Option<(SocketAddr, SocketAddr)>)>,
    ) -> Result<TlsConn, rustls::Error> {
        let conn = rustls::ClientConnection::new(tls.config.clone(), name)?;
        let mut c = TlsConn::new(rustls::Connection::Client(conn), Connect::Pending);
        c.proxy_out = proxy_out;
        c.sent_proxy = proxy_out;
        c.client = Some(tls.clone());
        c.was_handshaking = true;
        Ok(c)
    }

    fn new(tls: rustls::Connection, connect: Connect) -> TlsConn {
        TlsConn {
            tls,
            cin: None,
            cout: None,
            eng_reading: false,
            eng_writing: false,
            shutting: false,
            close_sent: false,
            read: ReadWait::None,
            write: WriteWait::None,
            sent: None,
            connect,
            ready_read: None,
            ready_write: None,
            eof: false,
            eof_fed: false,
            failed: None,
            was_handshaking: false,
            proxy_in: None,
            proxy_out: None,
            proxied: None,
            sent_proxy: None,
            events: 0,
            deadline: None,
            client: None,
        }
    }

    /// The handshake's deadline, while it runs (server side).
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    #[inline]
    pub fn take_events(&mut self) -> u8 {
        std::mem::take(&mut self.events)
    }

    /// A completion ready for the session beyond the one last returned.
    #[inline]
    pub fn take_ready(&mut self) -> Option<Done> {
        self.ready_read.take().or_else(|| self.ready_write.take())
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    pub fn submit<E: Wire>(&mut self, engine: &mut E, conn: ConnId, op: Op) -> Option<Done> {
        if let Some(e) = self.failed {
            return Some(crate::engine::failed(op, e));
        }
        match op {
            // The transport reads the records itself; a receive of new work is an ordinary
            // one here (the handshake took the connection's first bytes already).
            Op::Recv(_) | Op::RecvNew => {
                let buf = match op {
                    Op::Recv(b) => b,
                    _ => None,
                };
                if let ReadWait::Recv(Some(old)) = std::mem::replace(&mut self.read, ReadWait::None)
                {
                    engine.pools().0.release(old); // one op per slot: never here
                }
                self.read = ReadWait::Recv(buf);
            }
            Op::Watch => self.read = ReadWait::Watch,
            Op::Send(a, b) => self.write = WriteWait::Send(a, b),
            Op::Shutdown => self.write = WriteWait::Shutdown,
            // Bytes cannot bypass the encryption: sessions do not splice TLS connections.
            // Should one try, "nothing now" sends it back to buffers.
            Op::SpliceIn { pipe, .. } => {
                return Some(Done::SpliceIn {
                    pipe,
                    res: Xfer::Bytes(0),
                    sent: 0,
                })
            }
            Op::SpliceOut { pipe, .. } => {
                return Some(Done::SpliceOut {
                    pipe,
                    res: Xfer::Failed(libc::EOPNOTSUPP),
                })
            }
            // Only spliced flows wait for readability without reading.
            Op::Readable => return Some(Done::Readable(Xfer::Failed(libc::EOPNOTSUPP))),
        }
        self.pump(engine, conn);
        self.take_ready()
    }

    pub fn complete<E: Wire>(&mut self, engine: &mut E, conn: ConnId, done: Done) -> Option<Done> {
        match done {
            Done::Recv { .. } => {
                let _ = self.complete_recv(engine, done);
            }
            Done::Send { .. } => {
                let _ = self.complete_send(engine, done);
            }
            Done::Shutdown(res) => {
                self.eng_writing = false;
                self.shutting = false;
                self.ready_write = Some(Done::Shutdown(res));
            }
            Done::Connect(res) => match res {
                Xfer::Failed(e) => {
                    self.connect = Connect::None;
                    self.failed = Some(e);
                    self.ready_write = Some(Done::Connect(res));
                }
                _ => self.connect = Connect::Handshaking,
            },
            // Never asked of the engine.
            other => {
                let (pool, pipes) = engine.pools();
                recycle(other, pool, pipes);
            }
        }
        self.pump(engine, conn);
        self.take_ready()
    }

    /// Cancels the session's op in `slot` (and the engine's op under it).
    pub fn cancel<E: Wire>(&mut self, engine: &mut E, conn: ConnId, slot: Slot) {
        let (pool, _) = engine.pools();
        match slot {
            Slot::Read => {
                if let ReadWait::Recv(Some(b)) = std::mem::replace(&mut self.read, ReadWait::None) {
                    pool.release(b);
                }
                if let Some(d) = self.ready_read.take() {
                    let (pool, pipes) = engine.pools();
                    recycle(d, pool, pipes);
                }
                if self.eng_reading {
                    self.eng_reading = false;
                    engine.cancel(conn, Slot::Read);
                }
            }
            Slot::Write => {
                if let WriteWait::Send(a, b) = std::mem::replace(&mut self.write, WriteWait::None) {
                    pool.release(a.buf);
                    if let Some(b) = b {
                        pool.release(b.buf);
                    }
                }
                for d in [self.ready_write.take(), self.sent.take()]
                    .into_iter()
                    .flatten()
                {
                    let (pool, pipes) = engine.pools();
                    recycle(d, pool, pipes);
                }
                if self.eng_writing {
                    self.eng_writing = false;
                    engine.cancel(conn, Slot::Write);
                }
            }
        }
    }

    /// Returns what the connection holds to the pools (it is being closed; the engine
    /// recycles what its own ops carry).
    pub fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        for b in [self.cin.take()].into_iter().flatten() {
            pool.release(b);
        }
        if let Some((a, b)) = self.cout.take() {
            pool.release(a);
            if let Some(b) = b {
                pool.release(b);
            }
        }
        if let ReadWait::Recv(Some(b)) = std::mem::replace(&mut self.read, ReadWait::None) {
            pool.release(b);
        }
        if let WriteWait::Send(a, b) = std::mem::replace(&mut self.write, WriteWait::None) {
            recycle_op(Op::Send(a, b), pool, pipes);
        }
        for d in [
            self.ready_read.take(),
            self.ready_write.take(),
            self.sent.take(),
        ]
        .into_iter()
        .flatten()
        {
            recycle(d, pool, pipes);
        }
    }

    /// The connection is about to be closed gracefully: a `close_notify` alert goes out
    /// first when it can at once (a client reading to the end of the stream must not take the
    /// FIN for a truncation attack). Whatever cannot go now is dropped with the connection.
    pub fn closing<E: Wire>(&mut self, engine: &mut E, conn: ConnId) {
        if self.failed.is_some()
            || self.close_sent
            || self.eng_writing
            || self.tls.is_handshaking()
            || self.connect != Connect::None
        {
            return;
        }
        self.close_sent = true;
        self.tls.send_close_notify();
        let out = match self.cout.take() {
            Some(o) => Some(o),
            None => self.encrypted(engine),
        };
        let Some((a, b)) = out else { return };
        let la = a.len();
        let op = Op::Send(
            Slice::head(a, la),
            b.map(|b| {
                let lb = b.len();
                Slice::head(b, lb)
            }),
        );
        if let Some(done) = engine.submit(conn, op) {
            let (pool, pipes) = engine.pools();
            recycle(done, pool, pipes);
        }
        // A send still parked in the engine is cancelled by the close that follows.
    }

    // ------------------------------------------------------------------ the machine

    /// Moves everything that can move: ciphertext in, plaintext to the session, plaintext
    /// from the session, records out, and an engine receive when one is needed.
    fn pump<E: Wire>(&mut self, engine: &mut E, conn: ConnId) {
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            if self.failed.is_none() {
                moved |= self.feed(engine);
            }
            moved |= self.deliver(engine);
            if self.failed.is_none() {
                moved |= self.take_plaintext(engine);
            }
            moved |= self.flush(engine, conn);
            if self.failed.is_some() {
                self.fail_pending(engine);
                return;
            }
            if self.sent.is_some()
                && self.ready_write.is_none()
                && !self.eng_writing
                && self.cout.is_none()
                && !self.tls.wants_write()
            {
                self.ready_write = self.sent.take();
                moved = true;
            }
            moved |= self.want_more(engine, conn);
            if !moved {
                return;
            }
        }
    }

    /// Gives buffered ciphertext to rustls and processes it.
    fn feed<E: Wire>(&mut self, engine: &mut E) -> bool {
        let (pool, _) = engine.pools();
        let Some(mut cin) = self.cin.take() else {
            return self.feed_eof();
        };
        if cin.is_empty() {
            pool.release(cin);
            return self.feed_eof();
        }
        let mut moved = false;
        // The PROXY header first, in the clear.
        if let Some(p) = self.proxy_in.as_mut() {
            match p.take_header(pool, &mut cin) {
                proxy::Step::More => {
                    // Keep it for the next receive to append to.
                    self.cin = Some(cin);
                    return false;
                }
                proxy::Step::Done(addrs) => {
                    self.proxy_in = None;
                    self.proxied = addrs;
                    self.events |= event::PROXIED;
                    moved = true;
                }
                proxy::Step::Bad => {
                    pool.release(cin);
                    self.proxy_in = None;
                    self.events |= event::PROXY_BAD;
                    self.failed = Some(TLS_FAILED);
                    return true;
                }
            }
        }
        while !cin.is_empty() {
            // Plaintext the session has not taken yet holds further records back.
            if !self.tls.wants_read() && !self.tls.is_handshaking() {
                break;
            }
            let data = pool.data(&cin);
            let mut rd: &[u8] = data;
            match self.tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(n) => {
                    cin.consume(n);
                    moved = true;
                }
                Err(_) => {
                    // A record larger than any allowed (or the plaintext buffer is full,
                    // which `wants_read` prevents).
                    self.fatal();
                    break;
                }
            }
            if !self.process() {
                break;
            }
        }
        if cin.is_empty() {
            pool.release(cin);
            moved |= self.feed_eof();
        } else {
            self.cin = Some(cin);
        }
        moved
    }

    /// The peer's FIN, given to rustls once every byte before it was.
    fn feed_eof(&mut self) -> bool {
        if !self.eof || self.eof_fed {
            return false;
        }
        self.eof_fed = true;
        if self.proxy_in.is_some() {
            // Closed before a whole PROXY header.
            self.proxy_in = None;
            self.events |= event::PROXY_BAD;
            self.failed = Some(TLS_FAILED);
            return true;
        }
        let mut empty: &[u8] = &[];
        let _ = self.tls.read_tls(&mut empty);
        if self.tls.is_handshaking() {
            // Gone mid-handshake: the client left (not counted as a failure), or the
            // backend closed (a failed connect).
            self.was_handshaking = false;
            self.failed = Some(libc::ECONNRESET);
        }
        true
    }

    /// Processes what rustls read. `false` when the connection failed.
    fn process(&mut self) -> bool {
        match self.tls.process_new_packets() {
            Ok(_) => {
                if self.was_handshaking && !self.tls.is_handshaking() {
                    self.was_handshaking = false;
                    self.deadline = None;
                    self.events |= event::HANDSHAKE;
                    if self.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        self.events |= event::RESUMED;
                    }
                    if self.connect == Connect::Handshaking {
                        self.connect = Connect::None;
                        self.ready_write = Some(Done::Connect(Xfer::Bytes(0)));
                    }
                }
                true
            }
            Err(_) => {
                self.fatal();
                false
            }
        }
    }

    /// A protocol error: rustls queued an alert (flushed once); everything else fails.
    fn fatal(&mut self) {
        if self.was_handshaking {
            self.events |= event::HANDSHAKE_FAILED;
            self.was_handshaking = false;
        }
        self.failed = Some(TLS_FAILED);
    }

    /// Answers the session's parked read with plaintext, an end, or a failure.
    fn deliver<E: Wire>(&mut self, engine: &mut E) -> bool {
        if self.ready_read.is_some() {
            return false;
        }
        let (pool, _) = engine.pools();
        match std::mem::replace(&mut self.read, ReadWait::None) {
            ReadWait::None => false,
            ReadWait::Watch => {
                if let Some(e) = self.failed {
                    self.ready_read = Some(Done::Watch(Xfer::Failed(e)));
                    return true;
                }
                let mut probe = [0u8; 1];
                let state = match self.tls.reader().read(&mut probe) {
                    // Application data on an idle connection: it is not clean any more.
                    Ok(n) if n > 0 => Some(Xfer::Bytes(n as u32)),
                    Ok(_) => Some(Xfer::Eof),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    Err(_) => Some(Xfer::Eof),
                };
                let state = state.or((self.eof && self.cin.is_none()).then_some(Xfer::Eof));
                match state {
                    Some(res) => {
                        self.ready_read = Some(Done::Watch(res));
                        true
                    }
                    None => {
                        self.read = ReadWait::Watch;
                        false
                    }
                }
            }
            ReadWait::Recv(buf) => {
                if let Some(e) = self.failed {
                    self.ready_read = Some(Done::Recv {
                        buf,
                        res: Xfer::Failed(e),
                    });
                    return true;
                }
                if self.tls.is_handshaking() || self.proxy_in.is_some() {
                    self.read = ReadWait::Recv(buf);
                    return false;
                }
                let provided = buf.is_none();
                // A buffer for the plaintext: the session's, else the emptied ciphertext
                // buffer, else the pool's.
                let mut b = match buf {
                    Some(b) => b,
                    None => match self.cin.take() {
                        Some(c) if c.is_empty() => c,
                        other => {
                            self.cin = other;
                            match pool.checkout() {
                                Some(b) => b,
                                None => {
                                    self.read = ReadWait::Recv(None);
                                    return false;
                                }
                            }
                        }
                    },
                };
                let spare = pool.spare(&mut b);
                let res = match self.tls.reader().read(spare) {
                    Ok(0) if !spare.is_empty() => Some(Xfer::Eof),
                    Ok(n) => Some(Xfer::Bytes(n as u32)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Nothing decrypted yet; the FIN counts once every record before it
                        // was read.
                        (self.eof && self.cin.is_none()).then_some(Xfer::Eof)
                    }
                    // The peer closed without close_notify: an end like a TCP FIN (HTTP
                    // framing tells a truncated message from a complete one).
                    Err(_) => Some(Xfer::Eof),
                };
                match res {
                    Some(res) => {
                        if let Xfer::Bytes(n) = res {
                            b.fill(n as usize);
                        }
                        let buf = if provided && b.is_empty() {
                            pool.release(b);
                            None
                        } else {
                            Some(b)
                        };
                        self.ready_read = Some(Done::Recv { buf, res });
                        true
                    }
                    None => {
                        if provided {
                            pool.release(b);
                            self.read = ReadWait::Recv(None);
                        } else {
                            self.read = ReadWait::Recv(Some(b));
                        }
                        false
                    }
                }
            }
        }
    }

    /// Takes the session's parked plaintext (or shutdown) when earlier records are out.
    fn take_plaintext<E: Wire>(&mut self, engine: &mut E) -> bool {
        if self.ready_write.is_some() || self.sent.is_some() || self.connect != Connect::None {
            return false;
        }
        // Records still waiting for the socket hold new plaintext back; one batch may wait
        // while another is in flight.
        if self.tls.wants_write() || self.cout.is_some() {
            return false;
        }
        let (pool, _) = engine.pools();
        match std::mem::replace(&mut self.write, WriteWait::None) {
            WriteWait::None => false,
            WriteWait::Send(a, b) => {
                let mut n = 0usize;
                for s in std::iter::once(&a).chain(b.as_ref()) {
                    let d = pool.data(&s.buf);
                    let start = (s.off as usize).min(d.len());
                    let end = (s.off as usize + s.len as usize).min(d.len());
                    let want = end - start;
                    let full = match self.tls.writer().write(&d[start..end]) {
                        Ok(k) => {
                            n += k;
                            k < want
                        }
                        Err(_) => true,
                    };
                    if full {
                        break;
                    }
                }
                // Reported once its records are with the kernel (as a plain send would be):
                // a session that closes after its last send loses nothing.
                self.sent = Some(Done::Send {
                    a: a.buf,
                    b: b.map(|s| s.buf),
                    res: Xfer::Bytes(n as u32),
                });
                true
            }
            WriteWait::Shutdown => {
                if !self.close_sent {
                    self.close_sent = true;
                    self.tls.send_close_notify();
                    // Flushed first; the shutdown follows once it is out.
                    self.write = WriteWait::Shutdown;
                    return true;
                }
                if self.eng_writing {
                    self.write = WriteWait::Shutdown;
                    return false;
                }
                self.shutting = true;
                self.write = WriteWait::None;
                // Marked by `shutting`: `flush` submits it.
                true
            }
        }
    }

    /// Hands records (and a PROXY header before the first) to the engine.
    fn flush<E: Wire>(&mut self, engine: &mut E, conn: ConnId) -> bool {
        let mut moved = false;
        for _ in 0..MAX_ROUNDS {
            if self.eng_writing || self.connect == Connect::Pending {
                return moved;
            }
            let out = match self.cout.take() {
                Some(o) => o,
                None => {
                    if !self.tls.wants_write() && self.proxy_out.is_none() {
                        if self.shutting && self.failed.is_none() {
                            self.eng_writing = true;
                            if let Some(done) = engine.submit(conn, Op::Shutdown) {
                                self.eng_writing = false;
                                self.shutting = false;
                                self.ready_write = Some(done);
                            }
                            return true;
                        }
                        return moved;
                    }
                    match self.encrypted(engine) {
                        Some(o) => o,
                        None => return moved,
                    }
                }
            };
            moved = true;
            let (a, b) = out;
            let la = a.len();
            let op = Op::Send(
                Slice::head(a, la),
                b.map(|b| {
                    let lb = b.len();
                    Slice::head(b, lb)
                }),
            );
            self.eng_writing = true;
            match engine.submit(conn, op) {
                Some(done) => {
                    // `complete` without re-entering the pump.
                    let _ = self.complete_send(engine, done);
                }
                None => return true,
            }
        }
        moved
    }

    fn complete_send<E: Wire>(&mut self, engine: &mut E, done: Done) -> Option<()> {
        let Done::Send { a, b, res } = done else {
            let (pool, pipes) = engine.pools();
            recycle(done, pool, pipes);
            return None;
        };
        self.eng_writing = false;
        let (pool, _) = engine.pools();
        if let Xfer::Failed(e) = res {
            pool.release(a);
            if let Some(b) = b {
                pool.release(b);
            }
            self.failed = Some(e);
            return None;
        }
        let mut n = res.bytes();
        let mut a = a;
        let k = n.min(a.len());
        a.consume(k);
        n -= k;
        let b = b.map(|mut b| {
            let k = n.min(b.len());
            b.consume(k);
            b
        });
        self.cout = match (a.is_empty(), b) {
            (true, None) => {
                pool.release(a);
                None
            }
            (true, Some(b)) if b.is_empty() => {
                pool.release(a);
                pool.release(b);
                None
            }
            (true, Some(b)) => {
                pool.release(a);
                Some((b, None))
            }
            (false, b) => Some((a, b)),
        };
        Some(())
    }

    /// Records (after a PROXY header, the first time) in one or two pool buffers.
    fn encrypted<E: Wire>(&mut self, engine: &mut E) -> Option<(Buf, Option<Buf>)> {
        let (pool, _) = engine.pools();
        let mut a = pool.checkout()?;
        let mut b = pool.checkout();
        let mut header = [0u8; crate::proto::proxy_protocol::MAX_HEADER];
        let mut hn = 0;
        if let Some((v, addrs)) = self.proxy_out.take() {
            hn = crate::proto::proxy_protocol::write(v, addrs, &mut header);
        }
        let na = {
            let mut w = Spare {
                a: pool.spare(&mut a),
                n: 0,
            };
            let _ = w.write(&header[..hn]);
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut w) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            w.n
        };
        let nb = match b.as_mut() {
            Some(bb) if self.tls.wants_write() => {
                let mut w = Spare {
                    a: pool.spare(bb),
                    n: 0,
                };
                while self.tls.wants_write() {
                    match self.tls.write_tls(&mut w) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                w.n
            }
            _ => 0,
        };
        a.fill(na);
        let b = match b {
            Some(mut b) if nb > 0 => {
                b.fill(nb);
                Some(b)
            }
            Some(b) => {
                pool.release(b);
                None
            }
            None => None,
        };
        if na == 0 {
            pool.release(a);
            if let Some(b) = b {
                pool.release(b);
            }
            return None;
        }
        Some((a, b))
    }

    /// Keeps an engine receive in flight while the handshake runs or the session waits for
    /// plaintext (not while undelivered plaintext or ciphertext is here: back-pressure).
    fn want_more<E: Wire>(&mut self, engine: &mut E, conn: ConnId) -> bool {
        if self.eng_reading || self.eof || self.connect == Connect::Pending {
            return false;
        }
        let waiting = match self.read {
            ReadWait::None => false,
            ReadWait::Recv(_) | ReadWait::Watch => self.ready_read.is_none(),
        };
        let hs = self.tls.is_handshaking() || self.proxy_in.is_some();
        // Unread ciphertext or plaintext: rustls holds records back until the session reads.
        let holding = self.cin.as_ref().is_some_and(|c| !c.is_empty()) && self.proxy_in.is_none();
        if holding || !(waiting || hs) {
            return false;
        }
        if !hs && !self.tls.wants_read() {
            return false;
        }
        // A partial PROXY header is appended to; otherwise a fresh engine-provided buffer.
        let buf = match self.cin.take() {
            Some(c) if self.proxy_in.is_some() => Some(c),
            Some(c) => {
                engine.pools().0.release(c);
                None
            }
            None => None,
        };
        self.eng_reading = true;
        match engine.submit(conn, Op::Recv(buf)) {
            Some(done) => {
                // Handled by the next round of the pump.
                let _ = self.complete_recv(engine, done);
                true
            }
            None => true,
        }
    }

    fn complete_recv<E: Wire>(&mut self, engine: &mut E, done: Done) -> Option<()> {
        let Done::Recv { buf, res } = done else {
            let (pool, pipes) = engine.pools();
            recycle(done, pool, pipes);
            return None;
        };
        self.eng_reading = false;
        let (pool, _) = engine.pools();
        match res {
            Xfer::Bytes(_) => {
                // `cin` travelled in the receive (a partial PROXY header is appended to).
                if let Some(old) = self.cin.take() {
                    pool.release(old);
                }
                self.cin = buf;
            }
            Xfer::Eof => {
                if let Some(b) = buf {
                    if b.is_empty() || self.cin.is_some() {
                        pool.release(b);
                    } else {
                        self.cin = Some(b);
                    }
                }
                self.eof = true;
            }
            Xfer::Failed(e) => {
                if let Some(b) = buf {
                    pool.release(b);
                }
                self.failed = Some(e);
            }
        }
        Some(())
    }

    /// After a failure: every parked op of the session completes with it.
    fn fail_pending<E: Wire>(&mut self, engine: &mut E) {
        let Some(e) = self.failed else { return };
        let _ = self.deliver(engine);
        if let (None, Some(Done::Send { a, b, .. })) = (&self.ready_write, self.sent.take()) {
            self.ready_write = Some(Done::Send {
                a,
                b,
                res: Xfer::Failed(e),
            });
        }
        if self.ready_write.is_none() {
            match std::mem::replace(&mut self.write, WriteWait::None) {
                WriteWait::None => {
                    if self.connect != Connect::None {
                        self.connect = Connect::None;
                        self.ready_write = Some(Done::Connect(Xfer::Failed(e)));
                    }
                }
                WriteWait::Send(a, b) => {
                    self.ready_write = Some(Done::Send {
                        a: a.buf,
                        b: b.map(|s| s.buf),
                        res: Xfer::Failed(e),
                    })
                }
                WriteWait::Shutdown => self.ready_write = Some(Done::Shutdown(Xfer::Failed(e))),
            }
        }
        // The alert rustls queued went out with `flush`, before this.
    }
}
