//! The TLS and PROXY transports driven through the op/completion contract alone: a client and
//! a server connection talk through an in-memory engine that completes ops at once or parks
//! them (as any engine may), with short writes and receives split at odd sizes. No socket: what
//! works here works on every engine.

use super::proxy::{ProxyConn, ProxyIn};
use super::tls::{event, TlsConn};
use super::Transport;
use crate::engine::{Accepted, ConnId, Done, Engine, Event, Op, Slice, Slot, Wake};
use crate::io::{Buf, BufferPool, PipePool, Xfer};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Two connections (0 and 1) wired to each other. Like a readiness engine on a real socket,
/// an op completes at once while the "socket" is ready, and a short receive or send means it
/// is not any more: the next op of that kind parks until [`MemEngine::ready`] runs it.
/// These tests run no toxics: an empty set to pass along.
fn no_toxics() -> crate::transport::toxics::Toxics {
    crate::transport::toxics::Toxics::new(1)
}

struct MemEngine {
    pool: BufferPool,
    pipes: PipePool,
    inbox: [VecDeque<u8>; 2],
    eof: [bool; 2],
    parked: [Option<Op>; 2],
    parked_send: [Option<Op>; 2],
    /// A short receive drained the queue / a short send filled the buffer.
    dry: [bool; 2],
    full: [bool; 2],
    /// Bytes one send moves at most (short writes).
    chunk: usize,
    /// Bytes one receive takes at most (records split across receives).
    recv_chunk: usize,
}

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MemEngine {
    fn new(buf: usize, chunk: usize, recv_chunk: usize) -> MemEngine {
        MemEngine {
            pool: BufferPool::new(buf, 64),
            pipes: PipePool::new(0),
            inbox: [VecDeque::new(), VecDeque::new()],
            eof: [false; 2],
            parked: [None, None],
            parked_send: [None, None],
            dry: [false; 2],
            full: [false; 2],
            chunk,
            recv_chunk,
        }
    }

    fn readable(&self, c: usize) -> bool {
        !self.inbox[c].is_empty() || self.eof[c]
    }

    fn recv(&mut self, c: usize, buf: Option<Buf>) -> Done {
        if self.inbox[c].is_empty() {
            return Done::Recv {
                buf,
                res: Xfer::Eof,
            };
        }
        let mut b = buf.unwrap_or_else(|| self.pool.checkout().expect("buffer"));
        let spare = self.pool.spare(&mut b);
        let n = spare.len().min(self.inbox[c].len()).min(self.recv_chunk);
        self.dry[c] = n < spare.len();
        for (i, byte) in self.inbox[c].drain(..n).enumerate() {
            spare[i] = byte;
        }
        b.fill(n);
        Done::Recv {
            buf: Some(b),
            res: Xfer::Bytes(n as u32),
        }
    }

    fn send(&mut self, c: usize, a: Slice, b: Option<Slice>) -> Done {
        let mut n = 0;
        let mut want = 0;
        for s in std::iter::once(&a).chain(b.as_ref()) {
            let d = self.pool.data(&s.buf);
            let d = &d[s.off as usize..(s.off + s.len) as usize];
            want += d.len();
            let k = d.len().min(self.chunk - n);
            self.inbox[1 - c].extend(&d[..k]);
            n += k;
        }
        self.full[c] = n < want;
        Done::Send {
            a: a.buf,
            b: b.map(|s| s.buf),
            res: Xfer::Bytes(n as u32),
        }
    }

    /// Completions of parked ops that can run now (the next "readiness edge").
    fn ready(&mut self) -> Vec<(ConnId, Done)> {
        let mut out = Vec::new();
        for c in 0..2 {
            self.full[c] = false;
            if let Some(Op::Send(a, b)) = self.parked_send[c].take() {
                out.push((c as ConnId, self.send(c, a, b)));
            }
            self.dry[c] = false;
            if !self.readable(c) {
                continue;
            }
            match self.parked[c].take() {
                Some(Op::Recv(buf)) => out.push((c as ConnId, self.recv(c, buf))),
                Some(Op::RecvNew) => out.push((c as ConnId, self.recv(c, None))),
                Some(Op::Watch) => out.push((c as ConnId, Done::Watch(Xfer::Bytes(1)))),
                other => self.parked[c] = other,
            }
        }
        out
    }
}

impl Engine for MemEngine {
    fn poll(&mut self, _t: Duration, _out: &mut Vec<Event>) -> std::io::Result<()> {
        Ok(())
    }
    fn pools(&mut self) -> (&mut BufferPool, &mut PipePool) {
        (&mut self.pool, &mut self.pipes)
    }
    fn add_listener(&mut self, _s: usize, _l: std::net::TcpListener) -> std::io::Result<()> {
        Ok(())
    }
    fn remove_listener(&mut self, _s: usize) {}
    fn accept(&mut self, _s: usize) -> Accepted {
        Accepted::Empty
    }
    fn connect(&mut self, _a: SocketAddr) -> std::io::Result<ConnId> {
        Ok(0)
    }
    fn submit(&mut self, conn: ConnId, op: Op) -> Option<Done> {
        let c = conn as usize;
        match op {
            Op::Recv(buf) if self.readable(c) && !self.dry[c] => Some(self.recv(c, buf)),
            Op::RecvNew if self.readable(c) && !self.dry[c] => Some(self.recv(c, None)),
            op @ (Op::Recv(_) | Op::RecvNew | Op::Watch | Op::Readable) => {
                assert!(self.parked[c].is_none(), "one op per slot");
                self.parked[c] = Some(op);
                None
            }
            Op::Send(a, b) if self.full[c] => {
                assert!(self.parked_send[c].is_none(), "one op per slot");
                self.parked_send[c] = Some(Op::Send(a, b));
                None
            }
            Op::Send(a, b) => Some(self.send(c, a, b)),
            Op::Shutdown => {
                self.eof[1 - c] = true;
                Some(Done::Shutdown(Xfer::Bytes(0)))
            }
            Op::SpliceIn { pipe, .. } => Some(Done::SpliceIn {
                pipe,
                res: Xfer::Bytes(0),
                sent: 0,
            }),
            Op::SpliceOut { pipe, .. } => Some(Done::SpliceOut {
                pipe,
                res: Xfer::Bytes(0),
            }),
        }
    }
    fn cancel(&mut self, conn: ConnId, _slot: Slot) {
        if let Some(Op::Recv(Some(b))) = self.parked[conn as usize].take() {
            self.pool.release(b);
        }
    }
    fn close(&mut self, _conn: ConnId, _l: crate::engine::Linger) {}
    fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(NoWake)
    }
    fn name(&self) -> &'static str {
        "memory"
    }
    fn take_buffer_waits(&mut self) -> u64 {
        0
    }
}

/// What the sessions on both ends have seen.
#[derive(Default)]
struct Ends {
    got: [Vec<u8>; 2],
    eof: [bool; 2],
    connected: bool,
    /// Sends completed (bytes taken) per end.
    sent: [usize; 2],
    reading: [bool; 2],
    failed: [bool; 2],
}

fn session_done(e: &mut MemEngine, ends: &mut Ends, c: usize, d: Done) {
    match d {
        Done::Connect(Xfer::Bytes(_)) => ends.connected = true,
        Done::Connect(_) => ends.failed[c] = true,
        Done::Recv { buf, res } => {
            ends.reading[c] = false;
            match res {
                Xfer::Bytes(_) => {
                    if let Some(b) = buf {
                        ends.got[c].extend_from_slice(e.pool.data(&b));
                        e.pool.release(b);
                    }
                }
                Xfer::Eof => {
                    ends.eof[c] = true;
                    if let Some(b) = buf {
                        e.pool.release(b);
                    }
                }
                Xfer::Failed(_) => {
                    ends.failed[c] = true;
                    if let Some(b) = buf {
                        e.pool.release(b);
                    }
                }
            }
        }
        Done::Send { a, b, res } => {
            ends.sent[c] += res.bytes();
            e.pool.release(a);
            if let Some(b) = b {
                e.pool.release(b);
            }
        }
        other => crate::engine::recycle(other, &mut e.pool, &mut e.pipes),
    }
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs the engine until nothing moves, keeping a session receive asked on both ends.
fn settle(e: &mut MemEngine, t: &mut [Transport; 2], ends: &mut Ends) {
    for _ in 0..10_000 {
        let mut moved = false;
        for (c, tc) in t.iter_mut().enumerate() {
            if !ends.reading[c] && !ends.eof[c] && !ends.failed[c] && (c == 1 || ends.connected) {
                ends.reading[c] = true;
                moved = true;
                if let Some(d) = tc.submit(e, &mut no_toxics(), c as ConnId, Op::Recv(None)) {
                    session_done(e, ends, c, d);
                }
                while let Some(d) = tc.take_ready() {
                    session_done(e, ends, c, d);
                }
            }
        }
        for (conn, done) in e.ready() {
            moved = true;
            let c = conn as usize;
            if let Some(d) = t[c].complete(e, &mut no_toxics(), conn, done) {
                session_done(e, ends, c, d);
            }
            while let Some(d) = t[c].take_ready() {
                session_done(e, ends, c, d);
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the transports never settle");
}

/// Sends `data` from end `c` as a session would (a send at a time, the rest after).
fn send_all(e: &mut MemEngine, t: &mut [Transport; 2], ends: &mut Ends, c: usize, data: &[u8]) {
    let mut off = 0;
    for _ in 0..100_000 {
        if off >= data.len() {
            return;
        }
        let mut b = e.pool.checkout().expect("buffer");
        let spare = e.pool.spare(&mut b);
        let n = spare.len().min(data.len() - off);
        spare[..n].copy_from_slice(&data[off..off + n]);
        b.fill(n);
        let before = ends.sent[c];
        if let Some(d) = t[c].submit(
            e,
            &mut no_toxics(),
            c as ConnId,
            Op::Send(Slice::head(b, n), None),
        ) {
            session_done(e, ends, c, d);
        }
        while let Some(d) = t[c].take_ready() {
            session_done(e, ends, c, d);
        }
        settle(e, t, ends);
        off += ends.sent[c] - before;
    }
    panic!("the send never completes");
}

/// A server config for `a.example` and a client config that does not verify (the test's
/// certificate is made with the openssl command).
fn configs() -> Option<(
    Arc<crate::tls::ServerTls>,
    Arc<crate::tls::ClientTls>,
    tempfile::TempDir,
)> {
    let dir = tempfile::tempdir().ok()?;
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "2",
            "-subj",
            "/CN=a.example",
            "-addext",
            "subjectAltName=DNS:a.example",
        ])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let d = dir.path().display();
    let cfg = crate::config::parse_str(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "c"
[listeners.tls]
certificates = [{{ cert = "{d}/c.pem", key = "{d}/k.pem" }}]
[[clusters]]
name = "c"
backends = ["127.0.0.1:9"]
[clusters.tls]
verify = false
"#
    ))
    .expect("config");
    let store = crate::tls::Store::load(&cfg, None, true).expect("tls");
    Some((
        store.listeners["web"].clone(),
        store.clusters["c"].clone(),
        dir,
    ))
}

fn pair(s: &crate::tls::ServerTls, c: &Arc<crate::tls::ClientTls>, proxy: bool) -> [Transport; 2] {
    let name = rustls::pki_types::ServerName::try_from("a.example").expect("name");
    let header = proxy.then(|| {
        let a: SocketAddr = "192.0.2.7:4000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        (crate::proto::proxy_protocol::Version::V2, Some((a, b)))
    });
    [
        Transport::Tls(
            Box::new(TlsConn::client(c, name, header).expect("client")),
            None,
        ),
        Transport::Tls(
            Box::new(TlsConn::server(s, proxy.then_some(ProxyIn), Instant::now()).expect("server")),
            None,
        ),
    ]
}

#[test]
fn tls_both_ways_through_short_writes_and_split_records() {
    let Some((s, c, _dir)) = configs() else {
        eprintln!("openssl is not installed: skipped");
        return;
    };
    for (buf, chunk, recv_chunk, proxy) in [
        (16384, usize::MAX, usize::MAX, false),
        (4096, 7, 13, true),
        (1024, 1000, 333, false),
    ] {
        let mut e = MemEngine::new(buf, chunk, recv_chunk);
        let mut t = pair(&s, &c, proxy);
        let mut ends = Ends::default();
        // The engine's connect completes; the session hears of it after the handshake.
        if let Some(d) = t[0].complete(&mut e, &mut no_toxics(), 0, Done::Connect(Xfer::Bytes(0))) {
            session_done(&mut e, &mut ends, 0, d);
        }
        assert!(!ends.connected, "held until the handshake is done");
        settle(&mut e, &mut t, &mut ends);
        assert!(
            ends.connected,
            "handshake done ({buf}, {chunk}, {recv_chunk})"
        );
        let ev = t[1].take_events();
        assert!(ev & event::HANDSHAKE != 0);
        if proxy {
            assert!(ev & event::PROXIED != 0);
            assert_eq!(
                t[1].proxied().map(|(c, _)| c.to_string()),
                Some("192.0.2.7:4000".to_string())
            );
        }
        let up = pattern(1, 200_000);
        let down = pattern(2, 300_000);
        send_all(&mut e, &mut t, &mut ends, 0, &up);
        send_all(&mut e, &mut t, &mut ends, 1, &down);
        settle(&mut e, &mut t, &mut ends);
        let at = ends.got[1].iter().zip(&up).position(|(a, b)| a != b);
        assert!(
            ends.got[1] == up,
            "client → server intact ({buf}, {chunk}, {recv_chunk}): got {} of {}, first difference at {at:?}",
            ends.got[1].len(),
            up.len()
        );
        assert!(ends.got[0] == down, "server → client intact");
        // A clean close: close_notify, then FIN; the peer reads an end, not an error.
        if let Some(d) = t[1].submit(&mut e, &mut no_toxics(), 1, Op::Shutdown) {
            session_done(&mut e, &mut ends, 1, d);
        }
        settle(&mut e, &mut t, &mut ends);
        assert!(ends.eof[0] && !ends.failed[0]);
        for mut x in t {
            x.release(&mut e.pool, &mut e.pipes);
        }
        assert_eq!(e.pool.in_use(), 0, "every buffer is back");
    }
}

#[test]
fn garbage_fails_the_handshake_and_a_bad_proxy_header_is_reported() {
    let Some((s, c, _dir)) = configs() else {
        return;
    };
    let mut e = MemEngine::new(4096, usize::MAX, usize::MAX);
    let mut t = pair(&s, &c, false);
    let mut ends = Ends::default();
    e.inbox[1].extend(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    ends.connected = false;
    settle(&mut e, &mut t, &mut ends);
    assert!(ends.failed[1], "the server session's read fails");
    assert!(t[1].take_events() & event::HANDSHAKE_FAILED != 0);
    t[1].release(&mut e.pool, &mut e.pipes);

    let mut e = MemEngine::new(4096, usize::MAX, usize::MAX);
    let mut t = [
        Transport::Plain,
        Transport::Proxy(Box::new(ProxyConn::accepted(Instant::now())), None),
    ];
    let mut ends = Ends::default();
    e.inbox[1].extend(b"PROXY TCP9 x\r\nGET / HTTP/1.1\r\n\r\n");
    settle(&mut e, &mut t, &mut ends);
    assert!(ends.failed[1]);
    assert!(t[1].take_events() & event::PROXY_BAD != 0);
    assert!(ends.got[1].is_empty(), "nothing reaches the session");
    t[1].release(&mut e.pool, &mut e.pipes);
    assert_eq!(e.pool.in_use(), 0);
}
