//! One direction of a byte pipe: bytes read from a source connection are written to a
//! destination connection, in order, with half-close. The TCP session is two flows; an HTTP
//! connection becomes two flows after `101 Switching Protocols`.
//!
//! A flow holds at most one pool buffer, and only while bytes are in flight: it receives into
//! an engine-provided buffer (`Op::Recv(None)`: a quiet flow holds none), sends it all, gives
//! it back, and receives again. Back-pressure costs nothing: while the send waits, no receive
//! is asked for, the kernel's buffers fill and TCP flow control slows the sender.
//!
//! A flow that keeps filling whole buffers is a bulk transfer: it switches to a kernel pipe
//! (`splice`, no copy through user space) until the source runs dry, and the pipe goes back
//! to the pool. If that splice run had [`BULK_READS`] splices of a buffer's worth, the flow
//! waits for the source to be readable again (`Op::Readable`, holding no buffer or pipe) and
//! splices on; otherwise it goes back to buffers. A splice in asks the engine to forward what
//! it brings straight on out to the destination (`Op::SpliceIn`'s `forward`): a chunk then
//! takes one step instead of two.
//!
//! A FIN from the source becomes a shutdown of the destination's sending side once every byte
//! before it is out; the other direction keeps flowing.
//!
//! HOT PATH. No allocation, lock, blocking call or log.

use crate::engine::{ConnId, Done, Op, Slice};
use crate::io::{Buf, BufferPool, Pipe, PipePool, Xfer};
use crate::proto::foo::LineSniffer;

/// Whole-buffer reads in a row that make a flow a bulk transfer worth a pipe.
const BULK_READS: u8 = 2;

/// Which end of a flow an op or a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The connection bytes are read from.
    Source,
    /// The connection bytes are written to.
    Destination,
}

/// One direction of a pipe.
#[derive(Debug, Default)]
pub struct Flow {
    /// Bytes read and not yet written (`None` while the buffer travels in an op).
    buf: Option<Buf>,
    /// An op is in flight in the source's read slot.
    reading: bool,
    /// An op is in flight in the destination's write slot.
    writing: bool,
    /// The source sent FIN.
    eof: bool,
    /// FIN passed on: the destination's sending side is shut.
    shut: bool,
    /// Whole-buffer reads in a row (bulk detection); while spliced, splices of at least a
    /// buffer's worth in this run.
    full_reads: u8,
    /// Present while the flow is spliced (`None` also while it travels in an op); `piped`
    /// bytes sit in it.
    pipe: Option<Pipe>,
    spliced: bool,
    piped: u32,
    /// A bulk splice run went dry: wait for readability, then splice again.
    dry: bool,
    /// Foo sessions: the analyzer sees every byte read (such flows never splice). Boxed:
    /// allocated once at accept for Foo connections only, so other flows pay a pointer.
    pub sniff: Option<Box<LineSniffer>>,
    /// Bytes written to the destination since the worker last took them (stats).
    pub moved: u64,
    /// Pipes taken since the worker last looked (stats).
    pub splice_starts: u8,
}

impl Flow {
    /// A flow that starts with bytes already buffered (an HTTP connection turning into a
    /// tunnel).
    pub fn with_buf(buf: Option<Buf>, pool: &mut BufferPool) -> Flow {
        let buf = match buf {
            Some(b) if b.is_empty() => {
                pool.release(b);
                None
            }
            other => other,
        };
        Flow {
            buf,
            ..Flow::default()
        }
    }

    /// A receive on the source is already in flight (asked for before the flow existed: an
    /// HTTP connection turning into a tunnel); its completion comes here.
    pub fn set_reading(&mut self) {
        self.reading = true;
    }

    /// The FIN went through: this direction is over.
    #[inline]
    pub fn finished(&self) -> bool {
        self.shut
    }

    /// Nothing in flight, nothing buffered.
    #[inline]
    pub fn quiet(&self) -> bool {
        !self.reading && !self.writing && self.buf.is_none() && self.piped == 0
    }

    /// The next op this flow wants, if any: `(end, op)`. `dst`: the destination connection,
    /// once it is connected (bytes read before it is are held, not sent); a splice in forwards
    /// to it (`Op::SpliceIn`'s `forward`) while its write slot is free. `pipes`: `None` when
    /// this flow must see its bytes (analyzers, tunnels) and so may not splice.
    pub fn next(
        &mut self,
        pool: &mut BufferPool,
        pipes: Option<&mut PipePool>,
        dst: Option<ConnId>,
    ) -> Option<(End, Op)> {
        let dst_open = dst.is_some();
        if self.spliced {
            return self.next_spliced(dst);
        }
        // 1. Send what is buffered.
        if !self.writing && dst_open {
            if let Some(b) = self.buf.take() {
                if !b.is_empty() {
                    let n = b.len();
                    self.writing = true;
                    return Some((End::Destination, Op::Send(Slice::head(b, n), None)));
                }
                pool.release(b);
            }
        }
        let drained = !self.reading && !self.writing && self.buf.is_none();
        // 2. A bulk transfer between two drained states: hand it to a pipe if one is free.
        if drained && self.full_reads >= BULK_READS && !self.eof && dst_open {
            if let Some(p) = pipes.and_then(PipePool::get) {
                self.pipe = Some(p);
                self.spliced = true;
                self.full_reads = 0;
                self.splice_starts = self.splice_starts.saturating_add(1);
                return self.next_spliced(dst);
            }
        }
        // 3. A bulk flow whose source ran dry waits for its next bytes without a buffer.
        if drained && self.dry && !self.eof && dst_open {
            self.reading = true;
            return Some((End::Source, Op::Readable));
        }
        // 4. Receive when nothing is buffered or being sent (one buffer per flow).
        if drained && !self.eof {
            self.reading = true;
            return Some((End::Source, Op::Recv(None)));
        }
        self.next_fin(dst_open)
    }

    fn next_spliced(&mut self, dst: Option<ConnId>) -> Option<(End, Op)> {
        let dst_open = dst.is_some();
        if let Some(pipe) = self.pipe.take() {
            if self.piped > 0 && !self.writing && dst_open {
                self.writing = true;
                return Some((
                    End::Destination,
                    Op::SpliceOut {
                        pipe,
                        len: self.piped,
                    },
                ));
            }
            if !self.eof && !self.reading && !self.writing && self.piped < pipe.capacity {
                self.reading = true;
                let max = pipe.capacity - self.piped;
                return Some((
                    End::Source,
                    Op::SpliceIn {
                        pipe,
                        piped: self.piped,
                        max,
                        // Straight on out (nothing is being written).
                        forward: dst,
                    },
                ));
            }
            self.pipe = Some(pipe);
        }
        self.next_fin(dst_open)
    }

    /// Passes the FIN on once everything before it is out.
    fn next_fin(&mut self, dst_open: bool) -> Option<(End, Op)> {
        if self.eof
            && !self.shut
            && dst_open
            && !self.writing
            && !self.reading
            && self.buf.is_none()
            && self.piped == 0
            && !self.spliced
        {
            self.writing = true;
            return Some((End::Destination, Op::Shutdown));
        }
        None
    }

    /// An op of this flow completed. `Err(end)`: that end's connection is broken.
    pub fn complete(
        &mut self,
        done: Done,
        pool: &mut BufferPool,
        pipes: &mut PipePool,
    ) -> Result<(), End> {
        match done {
            Done::Recv { buf, res } => {
                self.reading = false;
                match res {
                    Xfer::Bytes(n) => {
                        if let Some(b) = buf {
                            if let Some(sn) = self.sniff.as_mut() {
                                let d = pool.data(&b);
                                sn.feed(&d[d.len().saturating_sub(n as usize)..]);
                            }
                            let full = b.len() == pool.capacity(&b);
                            self.full_reads = if full {
                                self.full_reads.saturating_add(1)
                            } else {
                                0
                            };
                            self.put_buf(b, pool);
                        }
                        Ok(())
                    }
                    Xfer::Eof => {
                        self.eof = true;
                        if let Some(b) = buf {
                            self.put_buf(b, pool);
                        }
                        Ok(())
                    }
                    Xfer::Failed(_) => {
                        if let Some(b) = buf {
                            pool.release(b);
                        }
                        Err(End::Source)
                    }
                }
            }
            Done::SpliceIn { pipe, res, sent } => {
                self.reading = false;
                match res {
                    Xfer::Bytes(0) => {
                        self.pipe = Some(pipe);
                        self.leave_pipe_if_quiet(pipes);
                        if !self.spliced {
                            self.dry = self.full_reads >= BULK_READS;
                            self.full_reads = 0;
                        }
                        Ok(())
                    }
                    Xfer::Bytes(n) => {
                        // What the engine forwarded already left the pipe.
                        let sent = sent.min(self.piped + n);
                        self.piped = self.piped + n - sent;
                        self.moved += u64::from(sent);
                        if n as usize >= pool.buffer_size() {
                            self.full_reads = self.full_reads.saturating_add(1);
                        }
                        self.pipe = Some(pipe);
                        Ok(())
                    }
                    Xfer::Eof => {
                        self.eof = true;
                        self.pipe = Some(pipe);
                        self.leave_pipe_if_quiet(pipes);
                        Ok(())
                    }
                    Xfer::Failed(_) => {
                        pipes.discard(pipe);
                        self.spliced = false;
                        self.piped = 0;
                        Err(End::Source)
                    }
                }
            }
            Done::Send { a, b, res } => {
                self.writing = false;
                if let Some(b) = b {
                    pool.release(b);
                }
                match res {
                    Xfer::Failed(_) => {
                        pool.release(a);
                        Err(End::Destination)
                    }
                    res => {
                        let mut a = a;
                        let n = res.bytes().min(a.len());
                        a.consume(n);
                        self.moved += n as u64;
                        self.put_buf(a, pool);
                        Ok(())
                    }
                }
            }
            Done::SpliceOut { pipe, res } => {
                self.writing = false;
                match res {
                    Xfer::Failed(_) => {
                        pipes.discard(pipe);
                        self.spliced = false;
                        self.piped = 0;
                        Err(End::Destination)
                    }
                    res => {
                        let n = (res.bytes() as u32).min(self.piped);
                        self.piped -= n;
                        self.moved += u64::from(n);
                        self.pipe = Some(pipe);
                        if self.eof {
                            self.leave_pipe_if_quiet(pipes);
                        }
                        Ok(())
                    }
                }
            }
            Done::Shutdown(res) => {
                self.writing = false;
                match res {
                    Xfer::Failed(_) => Err(End::Destination),
                    _ => {
                        self.shut = true;
                        Ok(())
                    }
                }
            }
            Done::Readable(res) => {
                self.reading = false;
                self.dry = false;
                match res {
                    Xfer::Failed(_) => Err(End::Source),
                    // Straight back to a pipe.
                    _ => {
                        self.full_reads = BULK_READS;
                        Ok(())
                    }
                }
            }
            // Not a flow's op.
            Done::Connect(_) | Done::Watch(_) => Ok(()),
        }
    }

    /// Keeps a buffer with bytes; gives an empty one back.
    #[inline]
    fn put_buf(&mut self, b: Buf, pool: &mut BufferPool) {
        if b.is_empty() {
            pool.release(b);
        } else {
            self.buf = Some(b);
        }
    }

    /// An empty pipe of a quiet (or finished) source goes back to the pool: idle connections
    /// hold no pipe.
    fn leave_pipe_if_quiet(&mut self, pipes: &mut PipePool) {
        if self.piped == 0 && !self.writing {
            if let Some(p) = self.pipe.take() {
                pipes.put(p);
            }
            self.spliced = false;
        }
    }

    /// Returns what the flow holds (outside in-flight ops) to the pools.
    pub fn release(&mut self, pool: &mut BufferPool, pipes: &mut PipePool) {
        if let Some(b) = self.buf.take() {
            pool.release(b);
        }
        if let Some(p) = self.pipe.take() {
            if self.piped == 0 {
                pipes.put(p);
            } else {
                pipes.discard(p);
            }
        }
        self.piped = 0;
        self.spliced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The destination connection, connected.
    const DST: Option<ConnId> = Some(1);

    fn recv_done(pool: &mut BufferPool, bytes: &[u8]) -> Done {
        let mut b = pool.checkout().expect("buffer");
        pool.spare(&mut b)[..bytes.len()].copy_from_slice(bytes);
        b.fill(bytes.len());
        Done::Recv {
            buf: Some(b),
            res: Xfer::Bytes(bytes.len() as u32),
        }
    }

    #[test]
    fn receive_send_then_fin_once_drained() {
        let mut pool = BufferPool::new(64, 4);
        let mut pipes = PipePool::new(0);
        let mut f = Flow::default();
        assert!(matches!(
            f.next(&mut pool, None, DST),
            Some((End::Source, Op::Recv(None)))
        ));
        assert!(f.next(&mut pool, None, DST).is_none(), "one read at a time");
        f.complete(recv_done(&mut pool, b"hello"), &mut pool, &mut pipes)
            .expect("ok");
        let Some((End::Destination, Op::Send(s, None))) = f.next(&mut pool, None, DST) else {
            panic!("a send")
        };
        assert_eq!(pool.data(&s.buf), b"hello");
        assert!(
            f.next(&mut pool, None, DST).is_none(),
            "no read while sending"
        );
        // A short write: the rest goes next.
        f.complete(
            Done::Send {
                a: s.buf,
                b: None,
                res: Xfer::Bytes(2),
            },
            &mut pool,
            &mut pipes,
        )
        .expect("ok");
        let Some((End::Destination, Op::Send(s, None))) = f.next(&mut pool, None, DST) else {
            panic!("the rest")
        };
        assert_eq!(pool.data(&s.buf), b"llo");
        f.complete(
            Done::Send {
                a: s.buf,
                b: None,
                res: Xfer::Bytes(3),
            },
            &mut pool,
            &mut pipes,
        )
        .expect("ok");
        assert_eq!(f.moved, 5);
        assert_eq!(pool.in_use(), 0, "the drained buffer went back");
        let Some((End::Source, Op::Recv(None))) = f.next(&mut pool, None, DST) else {
            panic!("next read")
        };
        f.complete(
            Done::Recv {
                buf: None,
                res: Xfer::Eof,
            },
            &mut pool,
            &mut pipes,
        )
        .expect("eof");
        assert!(matches!(
            f.next(&mut pool, None, DST),
            Some((End::Destination, Op::Shutdown))
        ));
        f.complete(Done::Shutdown(Xfer::Bytes(0)), &mut pool, &mut pipes)
            .expect("shut");
        assert!(f.finished());
        assert!(f.next(&mut pool, None, DST).is_none());
    }

    #[test]
    fn bytes_wait_for_the_destination_to_open() {
        let mut pool = BufferPool::new(64, 4);
        let mut pipes = PipePool::new(0);
        let mut f = Flow::default();
        let _ = f.next(&mut pool, None, None);
        f.complete(recv_done(&mut pool, b"early"), &mut pool, &mut pipes)
            .expect("ok");
        assert!(f.next(&mut pool, None, None).is_none(), "held while closed");
        assert!(matches!(
            f.next(&mut pool, None, DST),
            Some((End::Destination, Op::Send(..)))
        ));
    }

    #[test]
    fn failures_name_the_broken_end() {
        let mut pool = BufferPool::new(64, 4);
        let mut pipes = PipePool::new(0);
        let mut f = Flow::default();
        let _ = f.next(&mut pool, None, DST);
        assert_eq!(
            f.complete(
                Done::Recv {
                    buf: None,
                    res: Xfer::Failed(libc::ECONNRESET)
                },
                &mut pool,
                &mut pipes
            ),
            Err(End::Source)
        );
        let mut f = Flow::default();
        let _ = f.next(&mut pool, None, DST);
        f.complete(recv_done(&mut pool, b"x"), &mut pool, &mut pipes)
            .expect("ok");
        let Some((_, Op::Send(s, _))) = f.next(&mut pool, None, DST) else {
            panic!("send")
        };
        assert_eq!(
            f.complete(
                Done::Send {
                    a: s.buf,
                    b: None,
                    res: Xfer::Failed(libc::EPIPE)
                },
                &mut pool,
                &mut pipes
            ),
            Err(End::Destination)
        );
        assert_eq!(pool.in_use(), 0, "nothing leaked");
    }

    #[test]
    fn full_reads_switch_to_a_pipe_and_back_when_quiet() {
        let mut pool = BufferPool::new(8, 4);
        let mut pipes = PipePool::new(1);
        let mut f = Flow::default();
        for _ in 0..2 {
            let Some((End::Source, Op::Recv(None))) = f.next(&mut pool, Some(&mut pipes), DST)
            else {
                panic!("read")
            };
            f.complete(recv_done(&mut pool, b"12345678"), &mut pool, &mut pipes)
                .expect("ok");
            let Some((_, Op::Send(s, _))) = f.next(&mut pool, Some(&mut pipes), DST) else {
                panic!("send")
            };
            f.complete(
                Done::Send {
                    a: s.buf,
                    b: None,
                    res: Xfer::Bytes(8),
                },
                &mut pool,
                &mut pipes,
            )
            .expect("ok");
        }
        let Some((End::Source, Op::SpliceIn { pipe, piped: 0, .. })) =
            f.next(&mut pool, Some(&mut pipes), DST)
        else {
            panic!("two full buffers in a row: a pipe")
        };
        assert_eq!(f.splice_starts, 1);
        // The source is dry: the pipe goes back, and the flow reads into buffers again.
        f.complete(
            Done::SpliceIn {
                pipe,
                res: Xfer::Bytes(0),
                sent: 0,
            },
            &mut pool,
            &mut pipes,
        )
        .expect("ok");
        assert!(matches!(
            f.next(&mut pool, Some(&mut pipes), DST),
            Some((End::Source, Op::Recv(None)))
        ));
        assert!(pipes.get().is_some(), "the pipe is back in the pool");
    }

    /// Two whole-buffer reads, then a pipe: the flow is spliced.
    fn spliced_flow(pool: &mut BufferPool, pipes: &mut PipePool) -> (Flow, Pipe) {
        let mut f = Flow::default();
        for _ in 0..2 {
            let _ = f.next(pool, Some(&mut *pipes), DST);
            f.complete(recv_done(pool, b"12345678"), pool, pipes)
                .expect("ok");
            let Some((_, Op::Send(s, _))) = f.next(pool, Some(&mut *pipes), DST) else {
                panic!("send")
            };
            let done = Done::Send {
                a: s.buf,
                b: None,
                res: Xfer::Bytes(8),
            };
            f.complete(done, pool, pipes).expect("ok");
        }
        let Some((
            End::Source,
            Op::SpliceIn {
                pipe, forward: DST, ..
            },
        )) = f.next(pool, Some(&mut *pipes), DST)
        else {
            panic!("a pipe, forwarding")
        };
        (f, pipe)
    }

    /// Moves `n` bytes through the pipe (in, then out) and asks for the next splice in.
    fn splice_through(
        f: &mut Flow,
        pipe: Pipe,
        n: u32,
        pool: &mut BufferPool,
        pipes: &mut PipePool,
    ) -> Pipe {
        let done = Done::SpliceIn {
            pipe,
            res: Xfer::Bytes(n),
            sent: 0,
        };
        f.complete(done, pool, pipes).expect("ok");
        let Some((End::Destination, Op::SpliceOut { pipe, len })) =
            f.next(pool, Some(&mut *pipes), DST)
        else {
            panic!("splice out")
        };
        assert_eq!(len, n);
        let done = Done::SpliceOut {
            pipe,
            res: Xfer::Bytes(n),
        };
        f.complete(done, pool, pipes).expect("ok");
        let Some((End::Source, Op::SpliceIn { pipe, piped: 0, .. })) =
            f.next(pool, Some(&mut *pipes), DST)
        else {
            panic!("splice in")
        };
        pipe
    }

    /// The source has nothing now: the splice moves no byte.
    fn run_dry(f: &mut Flow, pipe: Pipe, pool: &mut BufferPool, pipes: &mut PipePool) {
        let done = Done::SpliceIn {
            pipe,
            res: Xfer::Bytes(0),
            sent: 0,
        };
        f.complete(done, pool, pipes).expect("ok");
    }

    /// A spliced flow after a bulk run (two splices of a whole buffer) that went dry.
    fn bulk_run_gone_dry(pool: &mut BufferPool, pipes: &mut PipePool) -> Flow {
        let (mut f, pipe) = spliced_flow(pool, pipes);
        let pipe = splice_through(&mut f, pipe, 8, pool, pipes);
        let pipe = splice_through(&mut f, pipe, 8, pool, pipes);
        run_dry(&mut f, pipe, pool, pipes);
        f
    }

    #[test]
    fn a_bulk_flow_that_runs_dry_waits_for_readability_and_splices_again() {
        let mut pool = BufferPool::new(8, 4);
        let mut pipes = PipePool::new(1);
        // Dry after a bulk run: the pipe goes back and the flow waits without a buffer.
        let mut f = bulk_run_gone_dry(&mut pool, &mut pipes);
        assert!(matches!(
            f.next(&mut pool, Some(&mut pipes), DST),
            Some((End::Source, Op::Readable))
        ));
        assert_eq!(pool.in_use(), 0, "no buffer while it waits");
        let Some(p) = pipes.get() else {
            panic!("the pipe is back in the pool while the flow waits")
        };
        pipes.put(p);
        f.complete(Done::Readable(Xfer::Bytes(1)), &mut pool, &mut pipes)
            .expect("ok");
        let Some((End::Source, Op::SpliceIn { pipe, piped: 0, .. })) =
            f.next(&mut pool, Some(&mut pipes), DST)
        else {
            panic!("readable: straight back to a pipe")
        };
        assert_eq!(f.splice_starts, 2);
        // Readable, yet the splice moves nothing (a small run): buffers, not another wait.
        run_dry(&mut f, pipe, &mut pool, &mut pipes);
        assert!(matches!(
            f.next(&mut pool, Some(&mut pipes), DST),
            Some((End::Source, Op::Recv(None)))
        ));
    }

    #[test]
    fn a_short_splice_run_that_runs_dry_goes_back_to_buffers() {
        let mut pool = BufferPool::new(8, 4);
        let mut pipes = PipePool::new(1);
        let (mut f, pipe) = spliced_flow(&mut pool, &mut pipes);
        let pipe = splice_through(&mut f, pipe, 3, &mut pool, &mut pipes);
        run_dry(&mut f, pipe, &mut pool, &mut pipes);
        assert!(matches!(
            f.next(&mut pool, Some(&mut pipes), DST),
            Some((End::Source, Op::Recv(None)))
        ));
    }

    #[test]
    fn a_spliced_flow_forwards_what_comes_in_and_splices_out_only_what_the_engine_left() {
        let mut pool = BufferPool::new(8, 4);
        let mut pipes = PipePool::new(1);
        let (mut f, pipe) = spliced_flow(&mut pool, &mut pipes);
        let moved = f.moved;
        // The engine forwarded all 8 bytes it brought in: no splice out, straight on in.
        let done = Done::SpliceIn {
            pipe,
            res: Xfer::Bytes(8),
            sent: 8,
        };
        f.complete(done, &mut pool, &mut pipes).expect("ok");
        assert_eq!(f.moved, moved + 8);
        let Some((
            End::Source,
            Op::SpliceIn {
                pipe,
                piped: 0,
                forward: DST,
                ..
            },
        )) = f.next(&mut pool, Some(&mut pipes), DST)
        else {
            panic!("straight on in, forwarding")
        };
        // It forwarded 3 of 8 (the destination took no more): the rest goes by a splice out.
        let done = Done::SpliceIn {
            pipe,
            res: Xfer::Bytes(8),
            sent: 3,
        };
        f.complete(done, &mut pool, &mut pipes).expect("ok");
        assert_eq!(f.moved, moved + 11);
        let Some((End::Destination, Op::SpliceOut { pipe, len: 5 })) =
            f.next(&mut pool, Some(&mut pipes), DST)
        else {
            panic!("the rest goes out")
        };
        let done = Done::SpliceOut {
            pipe,
            res: Xfer::Bytes(5),
        };
        f.complete(done, &mut pool, &mut pipes).expect("ok");
        assert_eq!(f.moved, moved + 16);
        assert!(f.quiet());
    }

    #[test]
    fn a_failed_readability_wait_breaks_the_source() {
        let mut pool = BufferPool::new(8, 4);
        let mut pipes = PipePool::new(1);
        let mut f = bulk_run_gone_dry(&mut pool, &mut pipes);
        let _ = f.next(&mut pool, Some(&mut pipes), DST);
        assert_eq!(
            f.complete(
                Done::Readable(Xfer::Failed(libc::ECONNRESET)),
                &mut pool,
                &mut pipes
            ),
            Err(End::Source)
        );
    }
}
