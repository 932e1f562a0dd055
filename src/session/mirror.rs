//! A mirror exchange: release strategy `concurrent` sends an idempotent request to the two
//! newest versions of a service at once. The client's session talks to the newest; a
//! [`Mirror`] sends the same request (the same rewritten head, byte for byte) to a backend of
//! the previous version and reads its whole answer, so the worker can compare the two
//! (status, and the body's length and hash) and, when the newest fails, give the client the
//! mirror's answer instead of sending the request a third time.
//!
//! Mirrors belong to the worker, not to the session: they never hold the client up, and one
//! still running when the client's answer is done (or the client is gone) finishes on its own.
//! Like sessions they are I/O-free: the worker asks [`Mirror::next`] for an op on the mirror's
//! connection, submits it through the engine, and feeds the result back to
//! [`Mirror::complete`].
//!
//! What is kept of the answer: while head and body fit in one pool buffer they stay there
//! whole (the answer can be handed to the client); a longer body is hashed and counted as it
//! streams, and its bytes are dropped.
//!
//! HOT PATH (per mirrored request). No allocation, lock, blocking call or log.

use super::http::{Body, UpstreamTimeouts};
use crate::engine::{ConnId, Done, Op, Slice};
use crate::http::head::{self, Limits, Method};
use crate::io::{Buf, BufferPool, Xfer};
use std::time::Instant;

/// FNV-1a 64 offset basis: the hash of an empty body.
pub const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `bytes` into a running body hash (FNV-1a 64: byte at a time, so how a body was split
/// into reads does not change its hash; cheap next to the copy the bytes already took).
#[inline]
pub fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What one side of a comparison answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// 0: no answer (unreachable, reset, timed out, malformed).
    pub status: u16,
    /// The whole body arrived (its bytes are in `len` and `hash`).
    pub complete: bool,
    pub len: u64,
    pub hash: u64,
}

impl Answer {
    pub const NONE: Answer = Answer {
        status: 0,
        complete: false,
        len: 0,
        hash: HASH_START,
    };
}

/// What a comparison of the newest version's answer with the mirror's found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mismatch {
    pub status: bool,
    pub body: bool,
}

/// Compares the newest version's answer with the previous version's: statuses always (an
/// answer against none is a mismatch), bodies when both arrived whole.
#[inline]
pub fn compare(newest: &Answer, older: &Answer) -> Mismatch {
    Mismatch {
        status: newest.status != older.status,
        body: newest.complete
            && older.complete
            && (newest.len != older.len || newest.hash != older.hash),
    }
}

/// What the mirror asks the worker for.
#[derive(Debug)]
pub enum MirrorWant {
    Io(Op),
    /// Nothing until a completion or the deadline.
    Idle,
    /// A pooled connection died before any answer byte: close it and hand over a fresh one
    /// (once).
    Reconnect,
    /// The exchange is over ([`Mirror::answer`] says how); the worker pools or closes the
    /// connection.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the connect (a fresh connection).
    Connecting,
    Exchange,
    /// Over; `reusable`: the connection may go back to the pool.
    Done {
        reusable: bool,
    },
    /// Over and said so ([`MirrorWant::Finished`] was returned).
    Reported {
        reusable: bool,
    },
}

pub struct Mirror {
    pub conn: Option<ConnId>,
    /// The session whose request this mirrors, until its own answer is done.
    pub session: Option<usize>,
    /// That session waits for this answer (its newest version failed).
    pub waiter: bool,
    /// The service and version the mirror went to (`version`), and the newest (`failed`
    /// slot unused here; see [`crate::release::Tag`]).
    pub tag: crate::release::Tag,
    /// The newest version's tag (mismatches are counted on it).
    pub newest: crate::release::Tag,
    /// The snapshot the tags and indices are of (the request's).
    pub snapshot: std::sync::Arc<crate::snapshot::Snapshot>,
    /// The request's balancing hash (for `hash` clusters).
    pub hash: Option<u64>,
    pub cluster: u32,
    pub backend: u32,
    pub reused: bool,
    /// A fresh connection was already tried after a pooled one died.
    pub reconnected: bool,
    pub started: Instant,
    /// The newest version's answer, once its exchange is over (`None`: not yet, or the
    /// client went away).
    pub primary: Option<Answer>,
    pub timeouts: UpstreamTimeouts,
    // Timer bookkeeping of the worker.
    pub timer_gen: u32,
    pub timer_at: Instant,
    pub timer_armed: bool,
    method: Method,
    state: State,
    /// The request (head, body-less): kept until the end, so it can go again on a fresh
    /// connection. `None` while it travels in a send.
    req: Option<Buf>,
    req_len: u32,
    req_sent: u32,
    writing: bool,
    reading: bool,
    /// Answer bytes: the head and the body while they fit (`keep`), else the unread rest.
    resp: Option<Buf>,
    /// Bytes at the front of `resp` already accounted for (the head, body bytes hashed).
    seen: u32,
    head_done: bool,
    keep: bool,
    body: Body,
    close_delimited: bool,
    upstream_close: bool,
    got_byte: bool,
    /// The connection broke before any answer byte: a fresh one is wanted.
    reconnect: bool,
    /// When the current attempt started (connect, first byte) or bytes last came.
    at: Instant,
    answer: Answer,
}

impl Mirror {
    /// A mirror of a request whose rewritten head is `req` (`len` bytes). The worker hands it
    /// a connection with [`Mirror::set_conn`].
    pub fn new(
        req: Buf,
        method: Method,
        tag: crate::release::Tag,
        newest: crate::release::Tag,
        snapshot: std::sync::Arc<crate::snapshot::Snapshot>,
        session: usize,
        now: Instant,
    ) -> Mirror {
        let req_len = req.len() as u32;
        Mirror {
            conn: None,
            session: Some(session),
            waiter: false,
            tag,
            newest,
            snapshot,
            hash: None,
            cluster: 0,
            backend: 0,
            reused: false,
            reconnected: false,
            started: now,
            primary: None,
            timeouts: UpstreamTimeouts::default(),
            timer_gen: 0,
            timer_at: now,
            timer_armed: false,
            method,
            state: State::Connecting,
            req: Some(req),
            req_len,
            req_sent: 0,
            writing: false,
            reading: false,
            resp: None,
            seen: 0,
            head_done: false,
            keep: true,
            body: Body::None,
            close_delimited: false,
            upstream_close: false,
            got_byte: false,
            reconnect: false,
            at: now,
            answer: Answer::NONE,
        }
    }

    /// A connection to backend `backend` of `cluster`: connecting (`reused == false`) or an
    /// idle pooled one.
    pub fn set_conn(
        &mut self,
        conn: ConnId,
        cluster: u32,
        backend: u32,
        reused: bool,
        now: Instant,
    ) {
        self.conn = Some(conn);
        self.cluster = cluster;
        self.backend = backend;
        self.reused = reused;
        self.req_sent = 0;
        self.writing = false;
        self.reading = false;
        self.at = now;
        self.state = if reused {
            State::Exchange
        } else {
            State::Connecting
        };
    }

    /// The worker took the connection away (to close it): ops in flight are cancelled and
    /// what they carried is gone.
    pub fn take_conn(&mut self) -> Option<ConnId> {
        self.writing = false;
        self.reading = false;
        self.conn.take()
    }

    /// The mirror's exchange is over (answered or failed).
    #[inline]
    pub fn finished(&self) -> bool {
        matches!(self.state, State::Done { .. } | State::Reported { .. })
    }

    /// The exchange ended cleanly enough for its connection to go back to the pool.
    #[inline]
    pub fn reusable(&self) -> bool {
        matches!(
            self.state,
            State::Done { reusable: true } | State::Reported { reusable: true }
        )
    }

    /// What the previous version answered (final once [`Mirror::finished`]).
    #[inline]
    pub fn answer(&self) -> Answer {
        self.answer
    }

    /// The whole answer is in one buffer and framed so a client can be given it (not
    /// delimited by the connection's close).
    #[inline]
    pub fn usable(&self) -> bool {
        self.finished()
            && self.answer.complete
            && self.keep
            && !self.close_delimited
            && self.resp.is_some()
    }

    /// Hands over the buffer with the whole answer (head and body), when [`Mirror::usable`].
    pub fn take_answer(&mut self) -> Option<Buf> {
        if !self.usable() {
            return None;
        }
        self.resp.take()
    }

    /// When the current timeout expires.
    pub fn deadline(&self) -> Instant {
        let t = &self.timeouts;
        match self.state {
            State::Connecting => self.at + t.connect,
            State::Exchange if self.got_byte => self.at + t.idle,
            State::Exchange => self.at + t.first_byte,
            // Over: kept only until the session's answer is compared; never times out itself.
            State::Done { .. } | State::Reported { .. } => self.started + t.idle + t.first_byte,
        }
    }

    /// The deadline passed: the mirror failed (no answer in time).
    pub fn timed_out(&mut self) {
        if !self.finished() {
            self.fail();
        }
    }

    fn fail(&mut self) {
        self.answer = Answer::NONE;
        self.state = State::Done { reusable: false };
    }

    /// Returns what the mirror holds (outside in-flight ops) to the pool.
    pub fn release(&mut self, pool: &mut BufferPool) {
        if let Some(b) = self.req.take() {
            pool.release(b);
        }
        if let Some(b) = self.resp.take() {
            pool.release(b);
        }
    }

    pub fn next(&mut self, pool: &mut BufferPool) -> MirrorWant {
        match self.state {
            State::Connecting if self.reconnect => {
                self.reconnect = false;
                return MirrorWant::Reconnect;
            }
            State::Connecting => return MirrorWant::Idle,
            State::Done { reusable } => {
                // Ops still in flight (a timeout) mean not reusable: the worker closes the
                // connection, which cancels them.
                self.state = State::Reported { reusable };
                return MirrorWant::Finished;
            }
            State::Reported { .. } => return MirrorWant::Idle,
            State::Exchange => {}
        }
        if !self.writing && self.req_sent < self.req_len {
            if let Some(b) = self.req.take() {
                self.writing = true;
                let s = Slice {
                    buf: b,
                    off: self.req_sent,
                    len: self.req_len - self.req_sent,
                };
                return MirrorWant::Io(Op::Send(s, None));
            }
        }
        if !self.reading {
            let op = match self.resp.take() {
                None => Op::Recv(None),
                Some(b) if b.len() < pool.capacity(&b) => Op::Recv(Some(b)),
                Some(mut b) => {
                    // Full and not complete: from now on the body is only hashed.
                    self.keep = false;
                    b.consume(self.seen as usize);
                    self.seen = 0;
                    if b.len() >= pool.capacity(&b) {
                        // A head that does not fit a buffer.
                        pool.release(b);
                        self.fail();
                        return self.next(pool);
                    }
                    Op::Recv(Some(b))
                }
            };
            self.reading = true;
            return MirrorWant::Io(op);
        }
        MirrorWant::Idle
    }

    pub fn complete(&mut self, done: Done, pool: &mut BufferPool, now: Instant) {
        match done {
            Done::Connect(Xfer::Failed(_)) => self.fail(),
            Done::Connect(_) => {
                if self.state == State::Connecting {
                    self.state = State::Exchange;
                    self.at = now;
                }
            }
            Done::Send { a, b, res } => {
                self.writing = false;
                if let Some(b) = b {
                    pool.release(b);
                }
                match res {
                    Xfer::Failed(_) => {
                        self.req = Some(a);
                        self.broken();
                    }
                    res => {
                        let left = self.req_len - self.req_sent;
                        self.req_sent += (res.bytes() as u32).min(left);
                        self.req = Some(a);
                    }
                }
            }
            Done::Recv { buf, res } => {
                self.reading = false;
                match (res, buf) {
                    (Xfer::Bytes(_), Some(b)) => {
                        self.got_byte = true;
                        self.at = now;
                        match self.resp.take() {
                            // Never asked for (one buffer at a time): keep the first.
                            Some(old) => {
                                pool.release(b);
                                self.resp = Some(old);
                            }
                            None => self.resp = Some(b),
                        }
                        self.absorb(pool);
                    }
                    (Xfer::Bytes(_), None) => {}
                    (Xfer::Eof, buf) => {
                        if let Some(b) = buf {
                            if self.resp.is_none() && !b.is_empty() {
                                self.resp = Some(b);
                            } else {
                                pool.release(b);
                            }
                        }
                        if self.close_delimited && self.head_done {
                            self.answer.complete = true;
                            self.state = State::Done { reusable: false };
                        } else {
                            self.broken();
                        }
                    }
                    (Xfer::Failed(_), buf) => {
                        if let Some(b) = buf {
                            pool.release(b);
                        }
                        self.broken();
                    }
                }
            }
            other => {
                // Ops a mirror never asks for.
                let mut pipes = crate::io::PipePool::new(0);
                crate::engine::recycle(other, pool, &mut pipes);
            }
        }
    }

    /// The connection broke: before any answer byte on a pooled connection, once more on a
    /// fresh one; otherwise the mirror failed.
    fn broken(&mut self) {
        // (Not while the request is in a send: it goes with the connection.)
        if self.reused && !self.got_byte && !self.reconnected && !self.writing {
            self.reconnected = true;
            self.state = State::Connecting;
            self.req_sent = 0;
            self.reused = false;
            self.reconnect = true;
            return;
        }
        self.fail();
    }

    /// Accounts for what arrived: the head, then body bytes (hashed).
    fn absorb(&mut self, pool: &mut BufferPool) {
        let Some(b) = self.resp.as_mut() else {
            return;
        };
        if !self.head_done {
            let data = pool.data(b);
            match head::parse_response(data, self.method, &Limits::default()) {
                Ok(Some(h)) if h.interim => {
                    // 100 Continue and friends: dropped; the final head follows.
                    b.consume(h.head_len.min(b.len()));
                    if !b.is_empty() {
                        return self.absorb(pool);
                    }
                    return;
                }
                Ok(Some(h)) => {
                    if h.upgrade {
                        // Never asked for: not HTTP any more.
                        return self.fail();
                    }
                    self.head_done = true;
                    self.answer.status = h.status;
                    self.body = Body::new(h.body);
                    self.close_delimited = matches!(self.body, Body::UntilClose);
                    self.upstream_close = !h.keep_alive;
                    self.seen = h.head_len as u32;
                }
                Ok(None) => return,
                Err(_) => return self.fail(),
            }
        }
        let data = pool.data(b);
        let avail = data.get(self.seen as usize..).unwrap_or_default();
        let n = match self.body.take(avail) {
            Ok(n) => n,
            Err(_) => return self.fail(),
        };
        self.answer.hash = hash_bytes(self.answer.hash, &avail[..n]);
        self.answer.len += n as u64;
        let extra = avail.len() > n;
        self.seen += n as u32;
        if self.body.done() {
            self.answer.complete = true;
            let request_done = self.req_sent >= self.req_len && !self.writing;
            self.state = State::Done {
                reusable: !self.upstream_close && !extra && request_done,
            };
        } else if !self.keep {
            b.consume(self.seen as usize);
            self.seen = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Tag;
    use std::sync::Arc;

    fn snapshot() -> Arc<crate::snapshot::Snapshot> {
        crate::session::testkit::Kit::new().env.shared.load_full()
    }

    /// A mirror of `GET /` on a fresh connection, connected.
    fn mirror(pool: &mut BufferPool, method: Method) -> Mirror {
        let mut req = pool.checkout().unwrap();
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        pool.spare(&mut req)[..head.len()].copy_from_slice(head);
        req.fill(head.len());
        let now = Instant::now();
        let mut m = Mirror::new(req, method, Tag::NONE, Tag::NONE, snapshot(), 7, now);
        m.set_conn(3, 0, 0, false, now);
        m.complete(Done::Connect(Xfer::Bytes(0)), pool, now);
        m
    }

    /// Runs the mirror's ops against a backend that answers `answer` in `chunk`-byte reads.
    fn run(m: &mut Mirror, pool: &mut BufferPool, answer: &[u8], chunk: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        let mut at = 0;
        for _ in 0..1000 {
            match m.next(pool) {
                MirrorWant::Io(Op::Send(s, None)) => {
                    let d = pool.data(&s.buf);
                    sent.extend_from_slice(&d[s.off as usize..(s.off + s.len) as usize]);
                    let done = Done::Send {
                        a: s.buf,
                        b: None,
                        res: Xfer::Bytes(s.len),
                    };
                    m.complete(done, pool, Instant::now());
                }
                MirrorWant::Io(Op::Recv(b)) => {
                    let mut b = b.unwrap_or_else(|| pool.checkout().unwrap());
                    let spare = pool.spare(&mut b);
                    let n = chunk.min(spare.len()).min(answer.len() - at);
                    spare[..n].copy_from_slice(&answer[at..at + n]);
                    at += n;
                    b.fill(n);
                    let res = if n == 0 {
                        Xfer::Eof
                    } else {
                        Xfer::Bytes(n as u32)
                    };
                    m.complete(Done::Recv { buf: Some(b), res }, pool, Instant::now());
                }
                MirrorWant::Finished => return sent,
                other => panic!("{other:?}"),
            }
        }
        panic!("no end");
    }

    #[test]
    fn hash_does_not_depend_on_how_a_body_was_split() {
        let body = b"the quick brown fox jumps over the lazy dog";
        let whole = hash_bytes(HASH_START, body);
        let split = hash_bytes(hash_bytes(HASH_START, &body[..7]), &body[7..]);
        assert_eq!(whole, split);
        assert_ne!(
            whole,
            hash_bytes(HASH_START, b"the quick brown fox jumps over the lazy cat")
        );
    }

    #[test]
    fn comparison_counts_statuses_always_and_bodies_when_both_are_whole() {
        let a = |status, complete, len, hash| Answer {
            status,
            complete,
            len,
            hash,
        };
        assert_eq!(
            compare(&a(200, true, 3, 1), &a(200, true, 3, 1)),
            Mismatch::default()
        );
        let m = compare(&a(200, true, 3, 1), &a(200, true, 3, 2));
        assert!(!m.status && m.body);
        let m = compare(&a(500, false, 0, 0), &a(200, true, 3, 2));
        assert!(
            m.status && !m.body,
            "a failed answer's body is not compared"
        );
        let m = compare(&a(200, true, 3, 1), &Answer::NONE);
        assert!(m.status && !m.body, "no answer is status 0");
    }

    #[test]
    fn a_small_answer_is_kept_whole_and_the_connection_is_reusable() {
        let mut pool = BufferPool::new(256, 8);
        let mut m = mirror(&mut pool, Method::Get);
        let answer =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let sent = run(&mut m, &mut pool, answer, 7);
        assert_eq!(sent, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let a = m.answer();
        assert_eq!((a.status, a.complete, a.len), (200, true, 5));
        assert_eq!(a.hash, hash_bytes(HASH_START, b"hello"));
        assert!(m.reusable() && m.usable());
        let b = m.take_answer().unwrap();
        assert_eq!(pool.data(&b), &answer[25..], "the final head and its body");
        pool.release(b);
        m.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_long_body_is_hashed_not_kept_and_chunked_framing_counts() {
        let mut pool = BufferPool::new(64, 8);
        let mut m = mirror(&mut pool, Method::Get);
        let body: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(&body);
        run(&mut m, &mut pool, &answer, 64);
        let a = m.answer();
        assert_eq!((a.status, a.complete, a.len), (200, true, 1000));
        assert_eq!(a.hash, hash_bytes(HASH_START, &body));
        assert!(m.reusable() && !m.usable(), "too long to hand to a client");
        m.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
        // Chunked: the body bytes as framed; a HEAD answer has none.
        let mut m = mirror(&mut pool, Method::Get);
        run(
            &mut m,
            &mut pool,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            5,
        );
        assert_eq!((m.answer().len, m.answer().complete), (13, true));
        m.release(&mut pool);
        let mut m = mirror(&mut pool, Method::Head);
        run(
            &mut m,
            &mut pool,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            100,
        );
        assert_eq!((m.answer().len, m.answer().complete), (0, true));
        m.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn close_before_the_end_is_no_answer_and_a_dead_pooled_connection_is_replaced_once() {
        let mut pool = BufferPool::new(256, 8);
        let mut m = mirror(&mut pool, Method::Get);
        run(
            &mut m,
            &mut pool,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            100,
        );
        assert_eq!(m.answer(), Answer::NONE);
        assert!(!m.reusable() && !m.usable());
        m.release(&mut pool);
        // A pooled connection that closes before any byte: a fresh one, once.
        let mut m = mirror(&mut pool, Method::Get);
        let now = Instant::now();
        m.set_conn(4, 0, 0, true, now);
        let MirrorWant::Io(Op::Send(s, None)) = m.next(&mut pool) else {
            panic!()
        };
        let n = s.len;
        m.complete(
            Done::Send {
                a: s.buf,
                b: None,
                res: Xfer::Bytes(n),
            },
            &mut pool,
            now,
        );
        let MirrorWant::Io(Op::Recv(None)) = m.next(&mut pool) else {
            panic!()
        };
        m.complete(
            Done::Recv {
                buf: None,
                res: Xfer::Eof,
            },
            &mut pool,
            now,
        );
        assert!(matches!(m.next(&mut pool), MirrorWant::Reconnect));
        m.set_conn(5, 0, 0, false, now);
        assert!(matches!(m.next(&mut pool), MirrorWant::Idle), "connecting");
        m.complete(Done::Connect(Xfer::Bytes(0)), &mut pool, now);
        run(&mut m, &mut pool, b"HTTP/1.1 204 No Content\r\n\r\n", 100);
        assert_eq!((m.answer().status, m.answer().complete), (204, true));
        m.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_timeout_fails_the_mirror() {
        let mut pool = BufferPool::new(256, 8);
        let mut m = mirror(&mut pool, Method::Get);
        assert!(m.deadline() > Instant::now());
        m.timed_out();
        assert!(matches!(m.next(&mut pool), MirrorWant::Finished));
        assert!(m.finished() && !m.reusable());
        assert_eq!(m.answer(), Answer::NONE);
        m.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }
}
