//! The request side of the HTTP session: reading and parsing heads, routing, rewriting the
//! head for the upstream, and local responses (errors, routing failures).
//!
//! HOT PATH. No allocation, lock, blocking call or info-level log.

use super::exchange::Body;
use super::{HttpSession, Phase};
use crate::config::HashOn;
use crate::engine::Op;
use crate::http::head::{self, Limits, Reject, RequestHead};
use crate::http::rewrite::{self, Forwarded};
use crate::routing::{self, Decision, RequestView};
use crate::session::{CloseReason, Cx, Side, Signal, Target, Up, Want};
use std::net::IpAddr;

impl HttpSession {
    /// Waiting for a request head: parse what is here, or read more.
    pub(super) fn next_head(&mut self, cx: &mut Cx<'_>) -> Want {
        if self.close_after {
            return Want::Close(CloseReason::Done);
        }
        if self.down_reading {
            return Want::Idle;
        }
        let limits = self.limits();
        if let Some(b) = self.req_in.as_ref() {
            if !b.is_empty() {
                // Parsed in the worker's slot: the head is neither set up nor copied out.
                // Each arm gives the slot back itself: the common one returns what
                // `start_request` returns as it is (no `Option<Want>` in between).
                let mut h = cx.heads.take_request();
                match head::parse_request_into(cx.pool.data(b), &limits, &mut h) {
                    Ok(true) => {
                        let w = self.start_request(cx, &h);
                        cx.heads.put_request(h);
                        return w;
                    }
                    Ok(false) => {
                        cx.heads.put_request(h);
                        if b.len() >= cx.pool.capacity(b) {
                            if let Some(w) = self.grow_head_buffer(cx, &limits) {
                                return w;
                            }
                        }
                    }
                    Err(r) => {
                        cx.heads.put_request(h);
                        cx.http.bad_requests += 1;
                        return self.reject(cx, r);
                    }
                }
            }
        }
        let partial = match self.req_in.take() {
            Some(b) if !b.is_empty() => Some(b),
            Some(b) => {
                cx.pool.release(b);
                None
            }
            None => None,
        };
        self.down_reading = true;
        // The first bytes of a request are new work: they wait while the pool is down to its
        // reserve (the rest of a head already begun is work in progress).
        let op = match partial {
            Some(b) => Op::Recv(Some(b)),
            None => Op::RecvNew,
        };
        Want::Io(Side::Downstream, op)
    }

    /// A request head filled its buffer without ending. Below the listener's limit it moves to
    /// a large buffer; past it, or when no large buffer is left, the request is refused.
    #[cold]
    #[inline(never)]
    fn grow_head_buffer(&mut self, cx: &mut Cx<'_>, limits: &Limits) -> Option<Want> {
        let small = self.req_in.take()?;
        let can_grow =
            cx.pool.capacity(&small) < cx.pool.large_size() && small.len() < limits.max_head_bytes;
        if !can_grow {
            cx.pool.release(small);
            cx.http.bad_requests += 1;
            return Some(
                self.local_response(cx, 431, b"text/plain", b"request header fields too large\n")
                    .map_or_else(|| self.next_local(), Want::from),
            );
        }
        let Some(mut big) = cx.pool.checkout_large() else {
            cx.pool.release(small);
            cx.http.no_backend += 1;
            return Some(
                self.local_response(cx, 503, b"text/plain", b"no backend available\n")
                    .map_or_else(|| self.next_local(), Want::from),
            );
        };
        let n = small.len();
        if let Some((d, s)) = cx.pool.data_and_spare(&small, &mut big) {
            s[..n].copy_from_slice(d);
            big.fill(n);
        }
        cx.pool.release(small);
        self.req_in = Some(big);
        None
    }

    /// A malformed head: whatever follows it cannot be framed, so answer and close.
    #[cold]
    #[inline(never)]
    fn reject(&mut self, cx: &mut Cx<'_>, r: Reject) -> Want {
        if let Some(b) = self.req_in.take() {
            cx.pool.release(b);
        }
        let mut body = [0u8; 96];
        let reason = r.reason().as_bytes();
        let n = reason.len().min(body.len() - 1);
        body[..n].copy_from_slice(&reason[..n]);
        body[n] = b'\n';
        self.local_response(cx, r.status(), b"text/plain", &body[..n + 1])
            .map_or_else(|| self.next_local(), Want::from)
    }

    /// A request head is complete: route it, rewrite its head for the upstream, and ask the
    /// worker for an upstream.
    fn start_request(&mut self, cx: &mut Cx<'_>, h: &RequestHead) -> Want {
        // The rewritten head goes into its own buffer and stays there until the exchange ends.
        // A head that nearly fills a regular buffer is rewritten into a large one. Without a
        // buffer nothing has happened yet: the head is parsed again when buffers come back.
        // A new request whose head is in: it takes at most half of the pool's reserve.
        let big = h.head_len + 1024 > cx.pool.buffer_size() && cx.pool.large_size() > 0;
        let up = if big {
            cx.pool.checkout_large()
        } else {
            cx.pool.checkout_begun()
        };
        let Some(mut up) = up else {
            return if big { Want::Buffer } else { Want::BufferNew };
        };
        cx.http.requests += 1;
        self.head_started = false;
        self.refresh_snapshot(cx);
        let mut x = {
            let (now, now_ns) = (cx.now, cx.now_ns);
            cx.exchanges.take(now, now_ns)
        };
        x.method = h.method;
        x.client_keep_alive = h.keep_alive;
        x.client_minor = h.version_minor;
        x.upgrade_requested = h.upgrade;
        x.req_body = super::exchange::Body::new(h.body);
        self.close_after = !h.keep_alive || self.draining;
        let snap = self.snapshot.clone();
        let (Some(req_buf), Some(listener)) =
            (self.req_in.as_ref(), snap.listener(self.listener as usize))
        else {
            cx.pool.release(up);
            cx.exchanges.put(x);
            return Want::Close(CloseReason::Done);
        };
        let data = cx.pool.data(req_buf);
        let host = h
            .absolute_form_authority
            .clone()
            .or_else(|| h.host.clone())
            .and_then(|r| data.get(r))
            .unwrap_or_default();
        let target = data.get(h.target.clone()).unwrap_or_default();
        let method = data.get(h.method_range.clone()).unwrap_or_default();
        let head_len = h.head_len;
        if cx.access_log {
            x.log.reset(self.client_ip);
            x.log.set_request(method, target, host);
        }
        x.log_started = cx.access_log;
        x.logged = false;
        let lookup = |name: &[u8]| {
            h.headers
                .iter(data, head_len)
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let view = RequestView {
            host,
            target,
            method,
            header: lookup,
        };
        if listener.faas_stats {
            if let Some(body) = crate::discovery::faas_stats_answer(&snap, method, target) {
                cx.pool.release(up);
                self.consume_head(cx, head_len);
                self.phase = Phase::Routed(x);
                return self
                    .local_response(cx, 200, b"application/json", body)
                    .map_or_else(|| self.next_local(), Want::from);
            }
        }
        let faas = listener.faas.then_some(&snap.cluster_index);
        let (mut decision, route) =
            routing::route_matched(&listener.routes, faas, listener.target, &view);
        if cx.access_log {
            x.log.route = route.and_then(|i| u16::try_from(i).ok());
        }
        if let Decision::Service { service, strip } = decision {
            // A service: its release strategy picks the version, and so the cluster.
            let (ids, now) = (cx.request_ids, cx.now);
            decision = match crate::release::route(
                &snap,
                service,
                data,
                h,
                ids,
                now,
                &mut x.release_tag,
            ) {
                Some(cluster) => Decision::Cluster { cluster, strip },
                None => Decision::NoRoute,
            };
        }
        let (cluster, strip) = match decision {
            Decision::Cluster { cluster, strip } => (cluster, strip),
            Decision::NoRoute | Decision::Service { .. } => {
                cx.pool.release(up);
                cx.http.no_route += 1;
                self.consume_head(cx, head_len);
                self.phase = Phase::Routed(x);
                return self
                    .local_response(cx, 404, b"text/plain", b"no route for this request\n")
                    .map_or_else(|| self.next_local(), Want::from);
            }
            Decision::Faas(e) => {
                let mut body = [0u8; 192];
                let n = e.write_body(target, &mut body).unwrap_or(0);
                cx.pool.release(up);
                cx.http.no_route += 1;
                self.consume_head(cx, head_len);
                self.phase = Phase::Routed(x);
                return self
                    .local_response(cx, 400, b"application/json", &body[..n])
                    .map_or_else(|| self.next_local(), Want::from);
            }
        };
        let hash = request_hash(
            snap.clusters.get(cluster).and_then(|c| c.hash_on.as_ref()),
            self.client_ip,
            &view.header,
        );
        // Fault injection: one check when no fault is set (drawn over this request's id).
        let fault = snap.faults.as_ref().and_then(|t| {
            let header = (view.header)(b"x-switchyard-fault");
            let seed = cx.request_ids.wrapping_add(1);
            super::fault::draw(t, self.listener as usize, route, cluster, header, seed)
        });
        cx.request_ids = cx.request_ids.wrapping_add(1);
        let mut id = [0u8; 16];
        hex16(cx.request_ids, &mut id);
        if cx.access_log {
            x.log.request_id = cx.request_ids;
        }
        let fwd = Forwarded {
            client_ip: self.client_ip,
            client_text: &self.client_text[..self.client_text_len as usize],

            proto: if listener.tls.is_some() {
                "https"
            } else {
                "http"
            },
            strip_prefix: strip,
            request_id: &id,
        };
        let written = match cx.pool.data_and_spare(req_buf, &mut up) {
            Some((src, out)) => rewrite::write_request_head(src, h, &fwd, out),
            None => Err(rewrite::Overflow),
        };
        match written {
            Ok(n) => {
                up.fill(n);
                x.up_head_len = n as u32;
                let has_body = !matches!(x.req_body, super::exchange::Body::None);
                if fault.is_some_and(|k| super::fault::can_duplicate(k, x.method, has_body)) {
                    // The request goes twice, back to back (pipelined), on one connection.
                    if let Some((src, out)) = cx.pool.data_and_spare(req_buf, &mut up) {
                        if let Ok(m) = rewrite::write_request_head(src, h, &fwd, out) {
                            up.fill(m);
                            x.up_head_len += m as u32;
                            x.fault = crate::faults::FaultCode::Duplicate;
                        }
                    }
                }
            }
            Err(rewrite::Overflow) => {
                cx.pool.release(up);
                self.consume_head(cx, head_len);
                self.phase = Phase::Routed(x);
                return self
                    .local_response(
                        cx,
                        431,
                        b"text/plain",
                        b"request head too large after rewriting\n",
                    )
                    .map_or_else(|| self.next_local(), Want::from);
            }
        }
        x.up_head = Some(up);
        x.up_head_sent = 0;
        x.target = Target::new(cluster as u32, hash, cx.now);
        x.body_at = cx.now;
        self.consume_head(cx, head_len);
        self.phase_started = cx.now;
        let limit = self.timeouts.buffering;
        // (A request under an injected fault goes its own way: no buffering.)
        let buffer = fault.is_none()
            && match x.req_body {
                Body::Length(n) => limit > 0 && n <= limit as u64,
                Body::Chunked(..) => limit > 0,
                Body::None | Body::UntilClose => false,
            };
        if buffer {
            self.phase = Phase::Buffering(x);
            return self.next_buffering(cx);
        }
        self.phase = Phase::Routed(x);
        match fault {
            Some(k) => self.inject(cx, k),
            None => Want::Upstream(Up::Need),
        }
    }

    /// Reads the request body whole (up to `request_buffering`) before asking for an
    /// upstream, so a client that trickles its body holds no backend connection. A body that
    /// outgrows the limit or the buffer goes on streaming.
    pub(super) fn next_buffering(&mut self, cx: &mut Cx<'_>) -> Want {
        if self.down_reading {
            return Want::Idle;
        }
        let limit = self.timeouts.buffering;
        let Phase::Buffering(x) = &mut self.phase else {
            return Want::Idle;
        };
        let (complete, have, full) = match self.req_in.as_ref() {
            Some(b) => {
                let mut body = x.req_body;
                // A framing error is the exchange's to answer (400): stop buffering.
                let complete = body.take(cx.pool.data(b)).map_or(true, |_| body.done());
                (complete, b.len(), b.len() >= cx.pool.capacity(b))
            }
            None => (false, 0, false),
        };
        let mut proceed = complete || have >= limit as usize;
        if !proceed && full {
            // Move to a large buffer when the limit needs one; without one, stream.
            let grown = match self.req_in.take() {
                Some(small) if cx.pool.capacity(&small) < cx.pool.large_size() => {
                    match cx.pool.checkout_large() {
                        Some(mut big) => {
                            let n = small.len();
                            if let Some((d, sp)) = cx.pool.data_and_spare(&small, &mut big) {
                                sp[..n].copy_from_slice(d);
                                big.fill(n);
                            }
                            cx.pool.release(small);
                            self.req_in = Some(big);
                            true
                        }
                        None => {
                            self.req_in = Some(small);
                            false
                        }
                    }
                }
                other => {
                    self.req_in = other;
                    false
                }
            };
            proceed = !grown;
        }
        if proceed {
            if let Phase::Buffering(x) = std::mem::replace(&mut self.phase, Phase::Taken) {
                self.phase = Phase::Routed(x);
            }
            return Want::Upstream(Up::Need);
        }
        let partial = match self.req_in.take() {
            Some(b) if b.is_empty() => {
                cx.pool.release(b);
                None
            }
            other => other,
        };
        self.down_reading = true;
        Want::Io(Side::Downstream, Op::Recv(partial))
    }

    /// Routes every request on the latest snapshot (a keep-alive connection sees changes at
    /// its next request); `load` is a cheap guard unless the version moved. A listener removed
    /// since this connection was accepted may have left its slot to another listener: then the
    /// connection keeps the snapshot of its own listener.
    fn refresh_snapshot(&mut self, cx: &mut Cx<'_>) {
        // Unchanged since the worker looked this turn (the common case): no load.
        if cx.shared_version == self.snapshot.version {
            return;
        }
        let cur = cx.shared.load();
        if cur.version != self.snapshot.version {
            let li = self.listener as usize;
            let same = match (self.snapshot.listener(li), cur.listener(li)) {
                (Some(a), Some(b)) => a.name == b.name,
                _ => false,
            };
            if same {
                self.snapshot = arc_swap::Guard::into_inner(cur);
            }
        }
    }

    fn consume_head(&mut self, cx: &mut Cx<'_>, n: usize) {
        if let Some(b) = self.req_in.as_mut() {
            b.consume(n.min(b.len()));
            if b.is_empty() {
                if let Some(b) = self.req_in.take() {
                    cx.pool.release(b);
                }
            }
        }
    }

    /// Sets up a local answer to the current request (the connection closes after it).
    /// `None`: it is ready to go out; `Some`: the client is closed instead (reset when part of
    /// a response already went out, or went out, or no buffer is left even for an error).
    pub(super) fn local_response(
        &mut self,
        cx: &mut Cx<'_>,
        status: u16,
        content_type: &[u8],
        body: &[u8],
    ) -> Option<Signal> {
        let mut x = match std::mem::replace(&mut self.phase, Phase::Taken) {
            Phase::Buffering(x)
            | Phase::Routed(x)
            | Phase::Connecting(x)
            | Phase::Exchange(x)
            | Phase::Finished(x)
            | Phase::Local(x)
            | Phase::Tunnel(x) => x,
            // A request refused before it was routed: not logged.
            Phase::Head | Phase::Taken => {
                let (now, now_ns) = (cx.now, cx.now_ns);
                cx.exchanges.take(now, now_ns)
            }
        };
        if x.answered || self.down_writing {
            self.phase = Phase::Local(x);
            return Some(Signal::Close(CloseReason::UpstreamReset));
        }
        x.status = status;
        cx.http.count_status(status);
        if let Some(b) = x.down.take() {
            cx.pool.release(b);
        }
        self.close_after = true;
        let Some(mut buf) = cx.pool.checkout() else {
            // No buffer even for an error: close rather than wait.
            self.phase = Phase::Local(x);
            return Some(Signal::Close(CloseReason::Done));
        };
        match rewrite::typed_response(status, content_type, body, cx.pool.spare(&mut buf)) {
            Ok(n) => buf.fill(n),
            Err(rewrite::Overflow) => {
                cx.pool.release(buf);
                self.phase = Phase::Local(x);
                return Some(Signal::Close(CloseReason::Done));
            }
        }
        x.down = Some(buf);
        self.phase_started = cx.now;
        self.phase = Phase::Local(x);
        None
    }
}

/// The balancing hash of a request for a `hash` cluster: client IP, a header's value or a
/// cookie's value. `None` when the cluster does not hash or the request lacks the key.
fn request_hash<'a>(
    on: Option<&HashOn>,
    client_ip: IpAddr,
    header: &impl Fn(&[u8]) -> Option<&'a [u8]>,
) -> Option<u64> {
    match on? {
        HashOn::ClientIp => Some(crate::balance::hash_ip(client_ip)),
        HashOn::Header(name) => header(name.as_bytes()).map(crate::balance::hash_bytes),
        HashOn::Cookie(name) => {
            let cookies = header(b"cookie")?;
            cookies.split(|&b| b == b';').find_map(|kv| {
                let kv = kv.trim_ascii();
                let eq = kv.iter().position(|&b| b == b'=')?;
                (kv[..eq] == *name.as_bytes()).then(|| crate::balance::hash_bytes(&kv[eq + 1..]))
            })
        }
    }
}

/// `v` as 16 lowercase hex digits (a request id, once per request): the nibbles spread to
/// bytes and turned into digits eight at a time, no per-digit table look-up.
fn hex16(v: u64, out: &mut [u8; 16]) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // 32 bits → 8 bytes, nibble k in byte k (least significant first).
    let spread = |x: u32| {
        let mut x = u64::from(x);
        x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    };
    // Per byte: '0' + n, and 'a' - '0' - 10 = 39 more where n >= 10 (no byte overflows).
    let digits = |n: u64| n + 0x30 * ONES + (((n + 6 * ONES) >> 4) & ONES) * 39;
    out[..8].copy_from_slice(&digits(spread((v >> 32) as u32)).to_be_bytes());
    out[8..].copy_from_slice(&digits(spread(v as u32)).to_be_bytes());
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex16_writes_lowercase_digits_most_significant_first() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for v in [
            0,
            1,
            9,
            10,
            15,
            16,
            0xabcd_ef01_2345_6789,
            u64::MAX,
            1 << 63,
        ] {
            let mut out = [0u8; 16];
            super::hex16(v, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
        }
        for _ in 0..1000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let mut out = [0u8; 16];
            super::hex16(seed, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{seed:016x}"));
        }
    }
}
