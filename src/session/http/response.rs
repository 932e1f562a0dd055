//! The response side of the HTTP session: parsing the backend's head, deciding what it means
//! (interim, final, upgrade, a 5xx to retry elsewhere), and rewriting it for the client.
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log.

use super::exchange::Body;
use super::{HttpSession, Phase};
use crate::http::head::{self, BodyKind, ResponseHead};
use crate::http::rewrite;
use crate::io::Buf;
use crate::session::{CloseReason, Cx, Up, Want};

/// Response body bytes that came in with the head are copied behind it in its buffer up to a
/// quarter of a buffer (4 KiB of the default 16: one plain send, and the copy is cheap); more
/// go behind it uncopied, as the second slice of a vectored send.
const COPY_BEHIND_HEAD_DIV: usize = 4;

/// A cursor over an output slice for building heads without allocation.
struct Out<'a> {
    buf: &'a mut [u8],
    n: usize,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), rewrite::Overflow> {
        let dst = self
            .buf
            .get_mut(self.n..self.n + b.len())
            .ok_or(rewrite::Overflow)?;
        dst.copy_from_slice(b);
        self.n += b.len();
        Ok(())
    }
}

impl HttpSession {
    /// Parses a response head if one is buffered and none is being answered yet. `Some` ends
    /// the step with what to do.
    pub(super) fn parse_response(&mut self, cx: &mut Cx<'_>) -> Option<Want> {
        // Nothing to parse (every step of an exchange asks): settled before the listener's
        // limits are looked up in the snapshot.
        let Phase::Exchange(x) = &self.phase else {
            return None;
        };
        if x.resp_started
            || x.down.is_some()
            || self.down_writing
            || x.up_reading
            || x.resp_in.as_ref().is_none_or(Buf::is_empty)
        {
            return None;
        }
        let limits = self.limits();
        let Phase::Exchange(x) = &mut self.phase else {
            return None;
        };
        let b = x.resp_in.as_ref().filter(|b| !b.is_empty())?;
        // Parsed in the worker's slot: the head is neither set up nor copied out.
        let mut h = cx.heads.take_response();
        let w = match head::parse_response_into(cx.pool.data(b), x.method, &limits, &mut h) {
            Ok(true) => self.start_response(cx, &h),
            Ok(false) if b.len() >= cx.pool.buffer_size() => Some(self.fail_now(cx, 502)),
            Ok(false) => None,
            Err(_) => Some(self.fail_now(cx, 502)),
        };
        cx.heads.put_response(h);
        w
    }

    /// A response head was parsed. `Some(want)` ends the step.
    fn start_response(&mut self, cx: &mut Cx<'_>, h: &ResponseHead) -> Option<Want> {
        let close_after = self.close_after;
        let Phase::Exchange(x) = &mut self.phase else {
            return None;
        };
        if !h.interim && h.status >= 500 && x.retry.on_5xx && x.can_resend() {
            // Discard this answer; the worker sends the request to another backend.
            if let Some(b) = x.resp_in.take() {
                cx.pool.release(b);
            }
            x.got_response_byte = false;
            x.upstream_close = true;
            x.status = h.status;
            return Some(Want::Upstream(Up::Retry));
        }
        let src = x.resp_in.as_ref()?;
        let Some(mut out) = cx.pool.checkout() else {
            return Some(Want::Buffer);
        };
        let mut close_client = false;
        if h.interim {
            // 100 Continue and friends: forwarded verbatim, then wait for the final head.
            let copied = cx.pool.data_and_spare(src, &mut out).and_then(|(d, s)| {
                let n = h.head_len;
                s.get_mut(..n)?.copy_from_slice(d.get(..n)?);
                Some(n)
            });
            match copied {
                Some(n) => out.fill(n),
                None => {
                    cx.pool.release(out);
                    return Some(self.fail_now(cx, 502));
                }
            }
        } else {
            x.status = h.status;
            x.upstream_close = !h.keep_alive;
            let close = close_after
                || !h.keep_alive && !x.client_keep_alive
                || h.body == BodyKind::CloseDelimited;
            close_client = h.body == BodyKind::CloseDelimited;
            let written = match cx.pool.data_and_spare(src, &mut out) {
                Some((d, s)) => write_response_head(d, h, close, x.client_minor, s).and_then(|n| {
                    crate::release::append_set_cookies(&self.snapshot, &x.release_tag, s, n)
                }),
                None => Err(rewrite::Overflow),
            };
            match written {
                Ok(n) => out.fill(n),
                Err(rewrite::Overflow) => {
                    cx.pool.release(out);
                    return Some(self.fail_now(cx, 502));
                }
            }
            x.resp_body = Body::new(h.body);
            x.resp_started = true;
            if matches!(x.resp_body, Body::Chunked(..)) {
                // Flipped bytes could land in the chunk framing: chunked bodies are left alone.
                x.corrupt_left = 0;
            }
            if h.upgrade {
                if !x.upgrade_requested {
                    // A 101 nobody asked for: the backend is not speaking HTTP to us.
                    cx.pool.release(out);
                    return Some(self.fail_now(cx, 502));
                }
                x.upgrading = true;
                x.upstream_close = true;
                close_client = true;
            }
        }
        if let Some(b) = x.resp_in.as_mut() {
            b.consume(h.head_len.min(b.len()));
        }
        // Body bytes already here go out in the same write as the head: for small responses
        // that is one send instead of two. Up to a quarter of a buffer is copied behind the
        // head (a plain send); more stay where they are and go behind it as a second slice of
        // a vectored send (`next_exchange`, step 3), not copied. Only what fits is claimed
        // from the framing.
        if !h.interim {
            let copy_max = cx.pool.buffer_size() / COPY_BEHIND_HEAD_DIV;
            if let Some(src) = x.resp_in.as_mut().filter(|b| b.len() <= copy_max) {
                let mut claimed = Ok(0);
                if let Some((d, spare)) = cx.pool.data_and_spare(src, &mut out) {
                    let room = spare.len().min(d.len());
                    claimed = x.resp_body.take(&d[..room]);
                    if let Ok(n) = claimed {
                        spare[..n].copy_from_slice(&d[..n]);
                        if x.mirror.is_some() {
                            x.body_len += n as u64;
                            x.body_hash = crate::session::mirror::hash_bytes(x.body_hash, &d[..n]);
                        }
                        if x.corrupt_left > 0 {
                            super::fault::corrupt(&mut spare[..n], &mut x.corrupt_left);
                        }
                    }
                }
                match claimed {
                    Ok(n) => {
                        out.fill(n);
                        src.consume(n);
                    }
                    Err(_) => {
                        cx.pool.release(out);
                        cx.http.upstream_errors += 1;
                        return Some(Want::Close(CloseReason::UpstreamReset));
                    }
                }
            }
        }
        if x.resp_in.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(b) = x.resp_in.take() {
                cx.pool.release(b);
            }
        }
        x.down = Some(out);
        if close_client {
            self.close_after = true;
        }
        None
    }
}

/// `name` is listed in a Connection header of the head (any number of tokens and headers).
fn named_in_connection(src: &[u8], head_len: usize, name: &[u8]) -> bool {
    let mut found = false;
    head::for_each_header(src, head_len, |n, v| {
        if !found && n.eq_ignore_ascii_case(b"connection") {
            found = v
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name));
        }
    });
    found
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    // Dispatch on length first: most names are compared against nothing.
    let is = |h: &[u8]| name.eq_ignore_ascii_case(h);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        _ => false,
    }
}

/// Writes the response head for the client: the status line as received (version HTTP/1.1),
/// end-to-end headers kept, hop-by-hop ones (and those named in Connection) dropped,
/// `Transfer-Encoding` kept when the body is chunked (it is passed through as is), and our own
/// `Connection` header.
pub(crate) fn write_response_head(
    src: &[u8],
    h: &ResponseHead,
    close: bool,
    client_minor: u8,
    out: &mut [u8],
) -> Result<usize, rewrite::Overflow> {
    let mut o = Out { buf: out, n: 0 };
    // Our own status line: the parser tolerates leading empty lines and bare LFs, so the
    // received line is not copied as bytes.
    let code = [
        b'0' + ((h.status / 100) % 10) as u8,
        b'0' + ((h.status / 10) % 10) as u8,
        b'0' + (h.status % 10) as u8,
    ];
    o.put(b"HTTP/1.1 ")?;
    o.put(&code)?;
    o.put(b" ")?;
    o.put(src.get(h.reason.clone()).unwrap_or_default())?;
    o.put(b"\r\n")?;
    let chunked = h.body == BodyKind::Chunked;
    let mut result = Ok(());
    h.headers.for_each(src, h.head_len, |name, value| {
        if result.is_err() {
            return;
        }
        let keep_te = chunked && name.eq_ignore_ascii_case(b"transfer-encoding");
        let keep_upgrade = h.upgrade && name.eq_ignore_ascii_case(b"upgrade");
        let dropped_cl = h.drop_content_length && name.eq_ignore_ascii_case(b"content-length");
        if (is_hop_by_hop(name) && !keep_te && !keep_upgrade)
            || dropped_cl
            || (!keep_upgrade
                // Only a Connection token other than close/keep-alive/upgrade can name a
                // header that survives the hop-by-hop test, or `close` itself.
                && (h.connection_names || name.eq_ignore_ascii_case(b"close"))
                && named_in_connection(src, h.head_len, name))
        {
            return;
        }
        result = o
            .put(name)
            .and_then(|_| o.put(b": "))
            .and_then(|_| o.put(value))
            .and_then(|_| o.put(b"\r\n"));
    });
    result?;
    if h.upgrade {
        o.put(b"Connection: upgrade\r\n")?;
    } else if close {
        o.put(b"Connection: close\r\n")?;
    } else if client_minor == 0 {
        o.put(b"Connection: keep-alive\r\n")?;
    }
    o.put(b"\r\n")?;
    Ok(o.n)
}
