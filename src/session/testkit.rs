//! Byte-script harness for the session unit tests: two scripted peers (downstream and
//! upstream) and an in-memory engine that runs the sessions' ops against them. No sockets,
//! no threads, no clock: a test says what each peer sends, when it stops accepting bytes,
//! closes or resets, and checks what the session asked for and what each peer received.

use super::{Cx, Env, Side, Want};
use crate::engine::{Done, Op, Slice};
use crate::io::{Buf, BufferPool, PipePool, Xfer};
use crate::snapshot::Snapshot;
use std::sync::Arc;
use std::time::Instant;

/// One scripted peer.
#[derive(Default)]
pub struct Peer {
    /// Bytes the peer sends us, and how far we have read them.
    input: Vec<u8>,
    pos: usize,
    eof: bool,
    reset: bool,
    /// Bytes we sent the peer.
    output: Vec<u8>,
    shut: bool,
    /// Bytes the peer accepts before its window closes (`usize::MAX`: unlimited).
    window: usize,
    /// At most this many bytes per receive (0: as many as fit).
    pub chunk: usize,
    /// Splices from this peer move its bytes (into [`Kit::piped`]); otherwise they move
    /// nothing, as if the socket never had bytes for a pipe.
    pub splice: bool,
    parked_read: Option<Op>,
    parked_write: Option<Op>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            window: usize::MAX,
            ..Peer::default()
        }
    }
    /// The peer sends these bytes.
    pub fn incoming(&mut self, b: &[u8]) {
        self.input.extend_from_slice(b);
    }
    /// The peer closes its sending side (after what it sent).
    pub fn eof(&mut self) {
        self.eof = true;
    }
    /// The connection is reset: every op fails from now on.
    pub fn reset(&mut self) {
        self.reset = true;
    }
    /// The peer accepts `n` more bytes (0: none until changed).
    pub fn window(&mut self, n: usize) {
        self.window = n;
    }
    /// What we sent this peer.
    pub fn sent(&self) -> &[u8] {
        &self.output
    }
    /// Our side shut its sending direction (FIN).
    pub fn shut(&self) -> bool {
        self.shut
    }
    /// Bytes the peer sent that we have not read.
    pub fn unread(&self) -> usize {
        self.input.len() - self.pos
    }
}

pub struct Kit {
    pub pool: BufferPool,
    pub pipes: PipePool,
    /// The clock, counters and snapshot (reached through `Deref`: `kit.now`, `kit.http`).
    pub env: Env,
    pub downstream: Peer,
    pub upstream: Peer,
    /// The kinds of op the session asked for, in order.
    pub ops: Vec<&'static str>,
    /// What sits in the (one) splice pipe: spliced in from a peer, not yet out to the other.
    pub piped: Vec<u8>,
}

/// A config with one tcp listener, one http listener and one cluster of two backends.
pub const CONFIG: &str = r#"
[server]
workers = 1
admin = "off"

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[clusters]]
name = "app"
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
retries = 1
retry_on = ["5xx", "timeout", "reset"]
"#;

impl std::ops::Deref for Kit {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl std::ops::DerefMut for Kit {
    fn deref_mut(&mut self) -> &mut Env {
        &mut self.env
    }
}

impl Kit {
    pub fn new() -> Kit {
        Kit::with_config(CONFIG)
    }

    pub fn with_config(text: &str) -> Kit {
        let cfg = match crate::config::parse_str(text) {
            Ok(c) => c,
            Err(e) => panic!("test config: {e:?}"),
        };
        Kit {
            pool: BufferPool::with_large(1024, 16, 8192, 2),
            pipes: PipePool::new(0),
            env: Env::new(
                crate::snapshot::shared(Snapshot::build(&cfg, 1, None)),
                0,
                Instant::now(),
            ),
            downstream: Peer::new(),
            upstream: Peer::new(),
            ops: Vec::new(),
            piped: Vec::new(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.env.shared.load_full()
    }

    pub fn cx(&mut self) -> Cx<'_> {
        Cx {
            pool: &mut self.pool,
            pipes: &mut self.pipes,
            env: &mut self.env,
        }
    }

    fn peer(&mut self, side: Side) -> &mut Peer {
        match side {
            Side::Downstream => &mut self.downstream,
            Side::Upstream => &mut self.upstream,
        }
    }

    /// Runs `op` against the peer: `Some` when it completes now, `None` when it waits (parked
    /// until [`Kit::poll`] finds it can complete).
    pub fn io(&mut self, side: Side, op: Op) -> Option<Done> {
        self.ops.push(match &op {
            Op::Recv(_) | Op::RecvNew => "recv",
            Op::Send(_, None) => "send",
            Op::Send(_, Some(_)) => "sendv",
            Op::SpliceIn { .. } => "splice_in",
            Op::SpliceOut { .. } => "splice_out",
            Op::Shutdown => "shutdown",
            Op::Watch => "watch",
            Op::Readable => "readable",
        });
        match self.run(side, op) {
            Ok(done) => Some(done),
            Err(op) => {
                let p = self.peer(side);
                match op {
                    Op::Recv(_) | Op::RecvNew | Op::SpliceIn { .. } | Op::Watch | Op::Readable => {
                        p.parked_read = Some(op)
                    }
                    _ => p.parked_write = Some(op),
                }
                None
            }
        }
    }

    /// Completions of parked ops that can run now.
    pub fn poll(&mut self) -> Vec<(Side, Done)> {
        let mut out = Vec::new();
        for side in [Side::Downstream, Side::Upstream] {
            for read in [true, false] {
                let p = self.peer(side);
                let op = if read {
                    p.parked_read.take()
                } else {
                    p.parked_write.take()
                };
                if let Some(op) = op {
                    match self.run(side, op) {
                        Ok(done) => out.push((side, done)),
                        Err(op) => {
                            let p = self.peer(side);
                            if read {
                                p.parked_read = Some(op)
                            } else {
                                p.parked_write = Some(op)
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn run(&mut self, side: Side, op: Op) -> Result<Done, Op> {
        let (pool, p, other, piped) = match side {
            Side::Downstream => (
                &mut self.pool,
                &mut self.downstream,
                &mut self.upstream,
                &mut self.piped,
            ),
            Side::Upstream => (
                &mut self.pool,
                &mut self.upstream,
                &mut self.downstream,
                &mut self.piped,
            ),
        };
        let failed = Xfer::Failed(libc::ECONNRESET);
        // A receive of new work is a provided-buffer receive that stops at the reserve.
        let (new, op) = match op {
            Op::RecvNew => (true, Op::Recv(None)),
            op => (false, op),
        };
        let parked = |buf: Option<Buf>| if new { Op::RecvNew } else { Op::Recv(buf) };
        match op {
            Op::Recv(buf) => {
                if p.reset {
                    if let Some(b) = buf {
                        pool.release(b);
                    }
                    return Ok(Done::Recv {
                        buf: None,
                        res: failed,
                    });
                }
                if p.pos < p.input.len() {
                    let mut b: Buf = match buf {
                        Some(b) => b,
                        None => match if new {
                            pool.checkout_new()
                        } else {
                            pool.checkout()
                        } {
                            Some(b) => b,
                            None => return Err(parked(None)),
                        },
                    };
                    let spare = pool.spare(&mut b);
                    let mut n = spare.len().min(p.input.len() - p.pos);
                    if p.chunk > 0 {
                        n = n.min(p.chunk);
                    }
                    spare[..n].copy_from_slice(&p.input[p.pos..p.pos + n]);
                    b.fill(n);
                    p.pos += n;
                    return Ok(Done::Recv {
                        buf: Some(b),
                        res: Xfer::Bytes(n as u32),
                    });
                }
                if p.eof {
                    let buf = match buf {
                        Some(b) if b.is_empty() => {
                            pool.release(b);
                            None
                        }
                        other => other,
                    };
                    return Ok(Done::Recv {
                        buf,
                        res: Xfer::Eof,
                    });
                }
                Err(parked(buf))
            }
            Op::RecvNew => Err(Op::RecvNew),
            Op::Send(a, b) => {
                if p.reset {
                    return Ok(Done::Send {
                        a: a.buf,
                        b: b.map(|s| s.buf),
                        res: failed,
                    });
                }
                if p.window == 0 {
                    return Err(Op::Send(a, b));
                }
                let mut n = 0usize;
                for s in std::iter::once(&a).chain(b.as_ref()) {
                    let d = slice(pool, s);
                    let take = d.len().min(p.window);
                    p.output.extend_from_slice(&d[..take]);
                    if p.window != usize::MAX {
                        p.window -= take;
                    }
                    n += take;
                    if take < d.len() {
                        break;
                    }
                }
                Ok(Done::Send {
                    a: a.buf,
                    b: b.map(|s| s.buf),
                    res: Xfer::Bytes(n as u32),
                })
            }
            Op::Shutdown => {
                if p.reset {
                    return Ok(Done::Shutdown(failed));
                }
                p.shut = true;
                Ok(Done::Shutdown(Xfer::Bytes(0)))
            }
            Op::Watch => Err(Op::Watch),
            // The peer has something for the next read: bytes, an EOF or a reset.
            Op::Readable if p.reset || p.eof || p.pos < p.input.len() => {
                Ok(Done::Readable(Xfer::Bytes(1)))
            }
            Op::Readable => Err(Op::Readable),
            // Never waits: `Bytes(0)` when nothing can move now.
            Op::SpliceIn {
                pipe, max, forward, ..
            } => {
                let res = if p.reset {
                    failed
                } else if !p.splice {
                    Xfer::Bytes(0)
                } else if p.pos < p.input.len() {
                    let mut n = (max as usize).min(p.input.len() - p.pos);
                    if p.chunk > 0 {
                        n = n.min(p.chunk);
                    }
                    piped.extend_from_slice(&p.input[p.pos..p.pos + n]);
                    p.pos += n;
                    Xfer::Bytes(n as u32)
                } else if p.eof {
                    Xfer::Eof
                } else {
                    Xfer::Bytes(0)
                };
                // The forward: what the pipe holds, on to the other peer as far as it
                // takes bytes now (never waiting, as the engines do).
                let sent = match (forward, res) {
                    (Some(_), Xfer::Bytes(n)) if n > 0 && !other.reset => {
                        let m = piped.len().min(other.window);
                        other.output.extend(piped.drain(..m));
                        if other.window != usize::MAX {
                            other.window -= m;
                        }
                        m as u32
                    }
                    _ => 0,
                };
                Ok(Done::SpliceIn { pipe, res, sent })
            }
            Op::SpliceOut { pipe, len } => {
                if p.reset {
                    return Ok(Done::SpliceOut { pipe, res: failed });
                }
                let n = (len as usize).min(piped.len()).min(p.window);
                if n == 0 && len > 0 {
                    return Err(Op::SpliceOut { pipe, len });
                }
                p.output.extend(piped.drain(..n));
                if p.window != usize::MAX {
                    p.window -= n;
                }
                Ok(Done::SpliceOut {
                    pipe,
                    res: Xfer::Bytes(n as u32),
                })
            }
        }
    }
}

fn slice<'a>(pool: &'a BufferPool, s: &Slice) -> &'a [u8] {
    let d = pool.data(&s.buf);
    let start = (s.off as usize).min(d.len());
    let end = (s.off as usize + s.len as usize).min(d.len());
    &d[start..end]
}

/// What the byte-script tests drive.
pub trait Driven {
    fn next(&mut self, cx: &mut Cx<'_>) -> Want;
    fn complete(&mut self, side: Side, done: Done, cx: &mut Cx<'_>);
}

impl Driven for super::TcpSession {
    fn next(&mut self, cx: &mut Cx<'_>) -> Want {
        super::TcpSession::next(self, cx)
    }
    fn complete(&mut self, side: Side, done: Done, cx: &mut Cx<'_>) {
        super::TcpSession::complete(self, side, done, cx)
    }
}

impl Driven for super::HttpSession {
    fn next(&mut self, cx: &mut Cx<'_>) -> Want {
        super::HttpSession::next(self, cx)
    }
    fn complete(&mut self, side: Side, done: Done, cx: &mut Cx<'_>) {
        super::HttpSession::complete(self, side, done, cx)
    }
}

/// Runs the session until it wants something other than I/O (or is idle with nothing
/// parked able to complete), running its ops against the peers.
pub fn run(kit: &mut Kit, s: &mut impl Driven) -> Want {
    for _ in 0..100_000 {
        let ready = kit.poll();
        if !ready.is_empty() {
            for (side, done) in ready {
                let mut cx = kit.cx();
                s.complete(side, done, &mut cx);
            }
            continue;
        }
        let mut cx = kit.cx();
        match s.next(&mut cx) {
            Want::Io(side, op) => {
                if let Some(done) = kit.io(side, op) {
                    let mut cx = kit.cx();
                    s.complete(side, done, &mut cx);
                }
            }
            Want::Yield => {}
            Want::Idle if !kit.poll_pending() => return Want::Idle,
            Want::Idle => {}
            other => return other,
        }
    }
    panic!("the session made no progress within the bound");
}

impl Kit {
    /// Some parked op could complete now.
    fn poll_pending(&self) -> bool {
        let can = |p: &Peer| {
            let r = p.parked_read.is_some() && (p.reset || p.eof || p.pos < p.input.len());
            let w = p.parked_write.is_some() && (p.reset || p.window > 0);
            r || w
        };
        can(&self.downstream) || can(&self.upstream)
    }
}
