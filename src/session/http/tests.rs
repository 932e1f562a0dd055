//! Byte-script tests of the HTTP session: no sockets, no worker. The test plays the worker
//! (it hands over upstreams and answers upstream steps) and two scripted peers.

use super::*;
use crate::session::testkit::{run, Kit};

/// What the played worker saw.
#[derive(Default, Debug)]
struct Seen {
    /// `Up::Release` per finished exchange: reusable?
    released: Vec<bool>,
    upstreams: u32,
    failed: u32,
    retries: u32,
    drops: u32,
}

fn session(kit: &mut Kit) -> HttpSession {
    HttpSession::new(
        1,
        kit.snapshot(),
        1,
        "192.0.2.7".parse().expect("ip"),
        ListenerTimeouts {
            request_header: Duration::from_secs(5).into(),
            request_body: Duration::from_secs(30).into(),
            buffering: 0,
            keepalive: Duration::from_secs(60).into(),
            tunnel_idle: Duration::from_secs(60).into(),
        },
        kit.now,
    )
}

/// Runs the session like the worker would, until it is idle or closes. Upstreams are handed
/// over at once: pooled (`reuse`) or freshly connected.
fn serve(kit: &mut Kit, s: &mut HttpSession, reuse: bool, seen: &mut Seen) -> Want {
    for _ in 0..1000 {
        match run(kit, s) {
            Want::Upstream(Up::Need) => {
                seen.upstreams += 1;
                let mut cx = kit.cx();
                s.set_upstream(2, 0, reuse, &mut cx);
                if !reuse {
                    s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
                }
            }
            Want::Upstream(Up::Connected) => {}
            Want::Upstream(Up::Release { reusable }) => {
                seen.released.push(reusable);
                let _ = s.take_upstream();
                let mut cx = kit.cx();
                s.end_exchange(&mut cx);
            }
            Want::Upstream(Up::Failed) => {
                seen.failed += 1;
                let _ = s.take_upstream();
                kit.upstream = Default::default();
                kit.upstream.window(usize::MAX);
                seen.upstreams += 1;
                let mut cx = kit.cx();
                s.set_upstream(3, 1, false, &mut cx);
                s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
            }
            Want::Upstream(Up::Retry) => {
                seen.retries += 1;
                let _ = s.take_upstream();
                let mut cx = kit.cx();
                s.set_upstream(3, 1, false, &mut cx);
                s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
            }
            Want::Upstream(Up::Drop { .. }) => {
                seen.drops += 1;
                let _ = s.take_upstream();
            }
            other => return other,
        }
    }
    panic!("no progress");
}

/// A local answer is followed by a lingering close: FIN, then what the client still sends is
/// read and dropped until it closes too (or the linger time ends).
fn lingering_close(kit: &mut Kit, s: &mut HttpSession, reuse: bool, seen: &mut Seen) -> Want {
    let w = serve(kit, s, reuse, seen);
    if !matches!(w, Want::Idle) {
        return w;
    }
    assert!(kit.downstream.shut(), "the answer is followed by a FIN");
    kit.downstream
        .incoming(b"more of what the client was sending");
    assert!(matches!(serve(kit, s, reuse, seen), Want::Idle));
    assert_eq!(
        kit.downstream.unread(),
        0,
        "read and dropped, not left to reset"
    );
    kit.downstream.eof();
    serve(kit, s, reuse, seen)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The request head the backend got, up to its empty line.
fn upstream_head(kit: &Kit) -> String {
    let t = text(kit.upstream.sent());
    t.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

#[test]
fn get_with_content_length_response_and_keep_alive() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    let head = upstream_head(&kit);
    assert!(head.starts_with("GET /a?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-For: 192.0.2.7"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id:"),
        "{head}"
    );
    assert_eq!(
        text(kit.downstream.sent()),
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    );
    assert_eq!(seen.released, vec![true], "the upstream can be pooled");
    assert_eq!(kit.http.requests, 1);
    assert_eq!(kit.http.responses_2xx, 1);
    assert!(s.idle(), "waiting for the next request, holding nothing");
    assert_eq!(kit.pool.in_use(), 0);
}

#[test]
fn a_request_split_at_every_byte_is_the_same_request() {
    let req = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
    let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    for chunk in [1, 2, 3, 7, 64] {
        let mut kit = Kit::new();
        kit.downstream.chunk = chunk;
        kit.upstream.chunk = chunk;
        let mut s = session(&mut kit);
        let mut seen = Seen::default();
        kit.downstream.incoming(req);
        // The backend answers once it has the whole request.
        assert!(matches!(
            serve(&mut kit, &mut s, false, &mut seen),
            Want::Idle
        ));
        kit.upstream.incoming(resp);
        let w = serve(&mut kit, &mut s, false, &mut seen);
        assert!(
            matches!(w, Want::Idle),
            "chunk {chunk}: {w:?}: {}",
            text(kit.downstream.sent())
        );
        let up = text(kit.upstream.sent());
        assert!(
            up.starts_with("POST /up HTTP/1.1\r\n"),
            "chunk {chunk}: {up}"
        );
        assert!(up.ends_with("\r\n\r\nhello world"), "chunk {chunk}: {up}");
        assert_eq!(text(kit.downstream.sent()), text(resp), "chunk {chunk}");
        assert_eq!(seen.released, vec![true], "chunk {chunk}");
        assert_eq!(kit.pool.in_use(), 0, "chunk {chunk}");
    }
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_both_ways() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    let body = "5;name=val\r\nhello\r\n0;last\r\nX-Trailer: t\r\n\r\n";
    kit.downstream.incoming(
        format!("PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .as_bytes(),
    );
    kit.upstream.incoming(
        format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes(),
    );
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    let up = text(kit.upstream.sent());
    assert!(up.ends_with(&format!("\r\n\r\n{body}")), "{up}");
    let down = text(kit.downstream.sent());
    assert!(down.contains("Transfer-Encoding: chunked"), "{down}");
    assert!(down.ends_with(&format!("\r\n\r\n{body}")), "{down}");
    assert_eq!(seen.released, vec![true]);
}

#[test]
fn a_bad_chunked_request_body_gets_400() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.incoming(
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n",
    );
    let w = lingering_close(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 400 "));
    assert!(
        !text(kit.upstream.sent()).contains("nope"),
        "the bad body never reached the backend"
    );
    assert_eq!(seen.drops, 1, "the upstream is dropped, not pooled");
}

#[test]
fn close_delimited_response_closes_the_client_after_it() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
    kit.upstream.eof();
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    let down = text(kit.downstream.sent());
    assert!(down.contains("Connection: close"), "{down}");
    assert!(down.ends_with("\r\n\r\nuntil the end"), "{down}");
    assert_eq!(seen.released, vec![false], "never pooled");
}

#[test]
fn head_204_and_304_responses_have_no_body() {
    for (req, resp) in [
        (
            "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ),
    ] {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        let mut seen = Seen::default();
        kit.downstream.incoming(req.as_bytes());
        kit.upstream.incoming(resp.as_bytes());
        assert!(
            matches!(serve(&mut kit, &mut s, false, &mut seen), Want::Idle),
            "{resp}"
        );
        assert!(text(kit.downstream.sent()).ends_with("\r\n\r\n"), "{resp}");
        assert_eq!(seen.released, vec![true], "{resp}");
    }
}

#[test]
fn interim_100_continue_is_forwarded_before_the_final_response() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.incoming(
        b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    kit.upstream.incoming(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(text(kit.downstream.sent()), "HTTP/1.1 100 Continue\r\n\r\n");
    kit.downstream.incoming(b"hello");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(text(kit.upstream.sent()).ends_with("\r\n\r\nhello"));
    assert!(text(kit.downstream.sent()).ends_with("Content-Length: 2\r\n\r\nok"));
    assert_eq!(seen.released, vec![true]);
}

#[test]
fn pipelined_requests_are_answered_in_order_one_at_a_time() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.incoming(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    // The played worker hands over the same (pooled) connection each time; the backend
    // answers each request once it has it.
    for i in 1..=3 {
        assert!(matches!(
            serve(&mut kit, &mut s, true, &mut seen),
            Want::Idle
        ));
        assert_eq!(
            text(kit.upstream.sent()).matches("GET /").count(),
            i,
            "one request at a time"
        );
        kit.upstream
            .incoming(format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}").as_bytes());
    }
    assert!(matches!(
        serve(&mut kit, &mut s, true, &mut seen),
        Want::Idle
    ));
    let up = text(kit.upstream.sent());
    let order: Vec<&str> = up
        .lines()
        .filter(|l| l.starts_with("GET "))
        .collect::<Vec<_>>();
    assert_eq!(
        order,
        vec!["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /3 HTTP/1.1"]
    );
    let down = text(kit.downstream.sent());
    assert!(down.ends_with("\r\n\r\n3"), "{down}");
    assert_eq!(down.matches("HTTP/1.1 200").count(), 3);
    assert_eq!(seen.released.len(), 3);
    assert_eq!(kit.http.requests, 3);
}

#[test]
fn upgrade_turns_into_a_tunnel_both_ways() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.incoming(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    kit.upstream.incoming(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nserver-first",
    );
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(matches!(s.phase(), Phase::Tunnel(_)));
    let up_head = upstream_head(&kit);
    assert!(up_head.contains("Upgrade: websocket"), "{up_head}");
    kit.downstream.incoming(b"client frame");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(text(kit.upstream.sent()).ends_with("client frame"));
    let down = text(kit.downstream.sent());
    assert!(down.starts_with("HTTP/1.1 101 "), "{down}");
    assert!(down.ends_with("server-first"), "{down}");
    kit.downstream.eof();
    kit.upstream.eof();
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(
        kit.upstream.shut() && kit.downstream.shut(),
        "FIN both ways"
    );
}

#[test]
fn an_unrequested_101_is_a_502() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n");
    let w = lingering_close(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 502 "));
}

#[test]
fn client_half_close_between_requests_is_a_clean_end() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    kit.downstream.eof();
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn client_gone_mid_head_or_reset_is_a_downstream_reset() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.incoming(b"GET / HTTP/1.1\r\nHo");
    kit.downstream.eof();
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(
        matches!(w, Want::Close(CloseReason::DownstreamReset)),
        "{w:?}"
    );
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    kit.downstream.reset();
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(
        matches!(w, Want::Close(CloseReason::DownstreamReset)),
        "{w:?}"
    );
}

#[test]
fn backend_reset_mid_response_resets_the_client() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    kit.upstream.reset();
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(
        matches!(w, Want::Close(CloseReason::UpstreamReset)),
        "{w:?}: a truncated response must not look complete"
    );
    assert!(text(kit.downstream.sent()).ends_with("part"));
}

#[test]
fn a_reused_connection_that_dies_before_answering_is_retried_once_for_a_get() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream.eof(); // the pooled connection was closed by the backend
                        // The played worker gives a fresh connection after `Up::Failed`; script its answer.
    let w = {
        // First run: the reused connection fails.
        match run(&mut kit, &mut s) {
            Want::Upstream(Up::Need) => {
                let mut cx = kit.cx();
                s.set_upstream(2, 0, true, &mut cx);
                run(&mut kit, &mut s)
            }
            other => other,
        }
    };
    assert!(matches!(w, Want::Upstream(Up::Failed)), "{w:?}");
    let _ = s.take_upstream();
    kit.upstream = Default::default();
    kit.upstream.window(usize::MAX);
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let mut cx = kit.cx();
    s.set_upstream(3, 1, false, &mut cx);
    s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(text(kit.upstream.sent()).starts_with("GET /again "));
    assert!(text(kit.downstream.sent()).ends_with("ok"));
}

#[test]
fn a_post_whose_body_went_out_is_not_replayed() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"POST /once HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
    kit.upstream.eof();
    let w = lingering_close(&mut kit, &mut s, true, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 502 "));
    assert_eq!(seen.failed, 0, "not retried");
    assert_eq!(seen.drops, 1);
}

#[test]
fn a_5xx_is_retried_elsewhere_when_the_policy_allows() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
    // Run to the first upstream, then allow a 5xx retry as the worker would.
    assert!(matches!(run(&mut kit, &mut s), Want::Upstream(Up::Need)));
    if let Some(x) = s.exchange_mut() {
        x.retry.on_5xx = true;
    }
    let mut cx = kit.cx();
    s.set_upstream(2, 0, false, &mut cx);
    s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
    let w = run(&mut kit, &mut s);
    assert!(matches!(w, Want::Upstream(Up::Connected)), "{w:?}");
    let w = run(&mut kit, &mut s);
    assert!(matches!(w, Want::Upstream(Up::Retry)), "{w:?}");
    assert!(
        kit.downstream.sent().is_empty(),
        "the 503 never reached the client"
    );
    let _ = s.take_upstream();
    kit.upstream = Default::default();
    kit.upstream.window(usize::MAX);
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    if let Some(x) = s.exchange_mut() {
        x.retry.on_5xx = false;
    }
    let mut cx = kit.cx();
    s.set_upstream(3, 1, false, &mut cx);
    s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 200 OK"));
    assert!(
        text(kit.upstream.sent()).starts_with("GET / "),
        "resent whole"
    );
}

#[test]
fn back_pressure_a_client_that_does_not_read_stops_the_backend_reads() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.window(100);
    kit.downstream
        .incoming(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n".to_vec();
    resp.extend(std::iter::repeat_n(b'z', 20000));
    kit.upstream.incoming(&resp);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(kit.downstream.sent().len(), 100);
    assert!(
        kit.upstream.unread() > 15_000,
        "the backend's bytes wait in its socket, not in the proxy"
    );
    assert!(
        kit.pool.in_use() <= 2,
        "at most the head and one body buffer"
    );
    kit.downstream.window(usize::MAX);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(kit.downstream.sent().len(), resp.len());
    assert_eq!(seen.released, vec![true]);
    assert_eq!(kit.pool.in_use(), 0);
}

#[test]
fn malformed_requests_get_their_status_and_a_close() {
    for (req, status) in [
        ("G@T / HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
        ),
        ("GET / HTTP/1.1\n\n", "400"),
        ("GET / HTTP/3.0\r\nHost: h\r\n\r\n", "505"),
    ] {
        let mut kit = Kit::new();
        let mut s = session(&mut kit);
        let mut seen = Seen::default();
        kit.downstream.incoming(req.as_bytes());
        let w = lingering_close(&mut kit, &mut s, false, &mut seen);
        assert!(
            matches!(w, Want::Close(CloseReason::Done)),
            "{req:?}: {w:?}"
        );
        let down = text(kit.downstream.sent());
        assert!(
            down.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?}: {down}"
        );
        assert_eq!(seen.upstreams, 0, "{req:?} never reached a backend");
    }
}

#[test]
fn a_malformed_request_after_a_good_one_still_gets_its_400() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nG@T / HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let w = lingering_close(&mut kit, &mut s, true, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    let down = text(kit.downstream.sent());
    assert!(down.starts_with("HTTP/1.1 200 OK"), "{down}");
    assert!(down.contains("okHTTP/1.1 400 "), "{down}");
}

#[test]
fn timeouts_before_the_first_byte_are_504_once() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    let mut cx = kit.cx();
    s.timed_out(&mut cx);
    let w = lingering_close(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 504 "));
    assert_eq!(kit.http.timeouts, 1, "counted once");
    assert_eq!(seen.drops, 1);
}

#[test]
fn idle_keep_alive_holds_no_buffer_and_times_out_cleanly() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(s.idle());
    assert_eq!(kit.pool.in_use(), 0);
    let mut cx = kit.cx();
    s.timed_out(&mut cx);
    let w = serve(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert_eq!(kit.conns.idle_timeouts, 1);
}

#[test]
fn a_head_too_slow_gets_408_then_a_lingering_close() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream.incoming(b"GET / HTTP/1.1\r\nHost: sl");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    let mut cx = kit.cx();
    s.timed_out(&mut cx);
    let w = lingering_close(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 408 "));
    assert_eq!(seen.upstreams, 0);
}

#[test]
fn a_stalled_request_body_gets_408_and_its_upstream_is_dropped() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789");
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(
        seen.upstreams, 1,
        "streaming: the upstream is taken at once"
    );
    assert!(s.deadline() <= kit.now + Duration::from_secs(30));
    kit.now += Duration::from_secs(31);
    let mut cx = kit.cx();
    s.timed_out(&mut cx);
    let w = run(&mut kit, &mut s);
    assert!(
        matches!(w, Want::Upstream(Up::Drop { failure: false })),
        "{w:?}: the backend connection is let go, not blamed"
    );
    let _ = s.take_upstream();
    let w = lingering_close(&mut kit, &mut s, false, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    assert!(text(kit.downstream.sent()).starts_with("HTTP/1.1 408 "));
}

#[test]
fn bounded_buffering_reads_the_body_before_asking_for_an_upstream() {
    let mut kit = Kit::new();
    let mut s = HttpSession::new(
        1,
        kit.snapshot(),
        1,
        "192.0.2.7".parse().expect("ip"),
        ListenerTimeouts {
            request_header: Duration::from_secs(5).into(),
            request_body: Duration::from_secs(30).into(),
            buffering: 4096,
            keepalive: Duration::from_secs(60).into(),
            tunnel_idle: Duration::from_secs(60).into(),
        },
        kit.now,
    );
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 3000\r\n\r\n");
    kit.downstream.incoming(&[b'a'; 1500]);
    assert!(
        matches!(run(&mut kit, &mut s), Want::Idle),
        "half a body: no upstream yet"
    );
    kit.downstream.incoming(&[b'b'; 1500]);
    assert!(matches!(run(&mut kit, &mut s), Want::Upstream(Up::Need)));
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let mut cx = kit.cx();
    s.set_upstream(2, 0, false, &mut cx);
    s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    let up = kit.upstream.sent();
    assert!(up.ends_with(&[b'b'; 1500]), "the whole body went up");
    assert_eq!(seen.released, vec![true]);
}

#[test]
fn a_fresh_connection_reset_before_any_answer_is_retried_when_the_policy_allows() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    kit.downstream
        .incoming(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(run(&mut kit, &mut s), Want::Upstream(Up::Need)));
    if let Some(x) = s.exchange_mut() {
        x.retry.on_reset = true;
    }
    let mut cx = kit.cx();
    s.set_upstream(2, 0, false, &mut cx);
    s.complete(Side::Upstream, Done::Connect(Xfer::Bytes(0)), &mut cx);
    assert!(matches!(
        run(&mut kit, &mut s),
        Want::Upstream(Up::Connected)
    ));
    assert!(matches!(run(&mut kit, &mut s), Want::Idle));
    kit.upstream.reset();
    let w = run(&mut kit, &mut s);
    assert!(matches!(w, Want::Upstream(Up::Retry)), "{w:?}");
    assert!(kit.downstream.sent().is_empty());
}

#[test]
fn draining_keeps_an_idle_client_and_closes_it_with_its_next_response() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(matches!(
        serve(&mut kit, &mut s, true, &mut seen),
        Want::Idle
    ));
    // The worker drains (shutdown, binary upgrade) while the client is between requests: the
    // connection stays (its request may be on the way) for at most DRAIN_IDLE...
    s.drain();
    assert!(s.idle());
    assert!(s.deadline() <= kit.now + DRAIN_IDLE);
    assert!(matches!(run(&mut kit, &mut s), Want::Idle), "not closed");
    // ...and the next request is answered with `Connection: close`, then closed.
    kit.downstream
        .incoming(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
    kit.upstream = Default::default();
    kit.upstream.window(usize::MAX);
    kit.upstream
        .incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let w = serve(&mut kit, &mut s, true, &mut seen);
    assert!(matches!(w, Want::Close(CloseReason::Done)), "{w:?}");
    let down = text(kit.downstream.sent());
    let second = &down[down.rfind("HTTP/1.1").unwrap_or(0)..];
    assert!(second.contains("Connection: close"), "{down}");
    assert!(
        !down[..down.rfind("HTTP/1.1").unwrap_or(0)].contains("Connection: close"),
        "{down}"
    );
}

/// A response of `len` body bytes after its head: (the whole response, the head's length).
/// Completes the parked ops that can run now (after a peer's window opened), then serves on.
fn resume(kit: &mut Kit, s: &mut HttpSession, seen: &mut Seen) -> Want {
    for (side, done) in kit.poll() {
        let mut cx = kit.cx();
        s.complete(side, done, &mut cx);
    }
    serve(kit, s, false, seen)
}

fn long_response(len: usize) -> (Vec<u8>, usize) {
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    let head = resp.len();
    resp.extend((0..len).map(|i| (i % 251) as u8));
    (resp, head)
}

#[test]
fn a_spliced_body_whose_backend_pauses_waits_holding_nothing_then_splices_on() {
    let mut kit = Kit::new();
    kit.pipes = crate::io::PipePool::new(2);
    kit.upstream.splice = true;
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    let (resp, head) = long_response(20_000);
    // The head and 8,000 body bytes, then the backend pauses.
    kit.upstream.incoming(&resp[..head + 8000]);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert!(kit.ops.contains(&"splice_in"), "{:?}", kit.ops);
    assert_eq!(kit.ops.last(), Some(&"readable"), "{:?}", kit.ops);
    assert_eq!(kit.downstream.sent(), &resp[..head + 8000]);
    assert_eq!(kit.pool.in_use(), 0, "no buffer while it waits");
    assert_eq!(kit.pipes.in_use(), 0, "no pipe while it waits");
    let before = kit.ops.len();
    kit.upstream.incoming(&resp[head + 8000..]);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(
        kit.ops.get(before),
        Some(&"splice_in"),
        "readable: straight back to a pipe, not through a buffer: {:?}",
        &kit.ops[before..]
    );
    assert_eq!(kit.downstream.sent(), &resp[..]);
    assert_eq!(seen.released, vec![true]);
    assert_eq!(kit.pool.in_use(), 0);
    assert_eq!(kit.pipes.in_use(), 0);
}

#[test]
fn a_spliced_body_goes_on_to_the_client_in_the_call_that_brings_it_in() {
    let mut kit = Kit::new();
    kit.pipes = crate::io::PipePool::new(2);
    kit.upstream.splice = true;
    kit.upstream.chunk = 3000;
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    let (resp, head) = long_response(20_000);
    kit.upstream.incoming(&resp);
    // The client takes the head and 10,000 body bytes, then its window closes.
    kit.downstream.window(head + 10_000);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(kit.downstream.sent(), &resp[..head + 10_000]);
    let count = |kit: &Kit, op| kit.ops.iter().filter(|o| **o == op).count();
    // Chunks of 3,000: the first three go on out in the call that brings them in; the
    // fourth goes out only in part and the rest waits in the pipe for the client, in a
    // splice out of its own.
    assert_eq!(count(&kit, "splice_in"), 4, "{:?}", kit.ops);
    assert_eq!(count(&kit, "splice_out"), 1, "{:?}", kit.ops);
    assert_eq!(kit.ops.last(), Some(&"splice_out"), "{:?}", kit.ops);
    kit.downstream.window(usize::MAX);
    assert!(matches!(resume(&mut kit, &mut s, &mut seen), Want::Idle));
    assert_eq!(kit.downstream.sent(), &resp[..]);
    assert_eq!(seen.released, vec![true]);
    assert_eq!(kit.pool.in_use(), 0);
    assert_eq!(kit.pipes.in_use(), 0);
}

#[test]
fn body_bytes_that_come_with_the_head_go_behind_it_in_one_vectored_send() {
    let mut kit = Kit::new();
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    // The first receive brings the head and a buffer's worth of body behind it: more than a
    // quarter of a buffer, so it is not copied behind the head but sent as a second slice.
    let (resp, head) = long_response(3000);
    kit.upstream.incoming(&resp);
    // The client takes half the head, then stalls: the send comes back short.
    kit.downstream.window(head / 2);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(kit.downstream.sent(), &resp[..head / 2]);
    // The rest of the head goes again with the body behind it (waiting for the window).
    assert_eq!(kit.ops, ["recv", "send", "recv", "sendv", "sendv"]);
    // Then it takes the rest of the head and 100 body bytes: short again, now in the body.
    for window in [head - head / 2 + 100, usize::MAX] {
        kit.downstream.window(window);
        assert!(matches!(resume(&mut kit, &mut s, &mut seen), Want::Idle));
    }
    assert_eq!(kit.downstream.sent(), &resp[..]);
    assert_eq!(seen.released, vec![true]);
    // The head never went out alone. The rest of the body came in by buffers and went out
    // alone; the last receive waits for the next request.
    assert_eq!(
        kit.ops[5..],
        ["send", "recv", "send", "recv", "send", "recv"]
    );
    assert_eq!(kit.pool.in_use(), 0);
}

#[test]
fn readability_without_spliceable_bytes_falls_back_to_buffers_without_spinning() {
    let mut kit = Kit::new();
    kit.pipes = crate::io::PipePool::new(2);
    // The upstream is readable, yet its splices never move a byte.
    let mut s = session(&mut kit);
    let mut seen = Seen::default();
    kit.downstream
        .incoming(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    let (resp, _) = long_response(20_000);
    kit.upstream.incoming(&resp);
    assert!(matches!(
        serve(&mut kit, &mut s, false, &mut seen),
        Want::Idle
    ));
    assert_eq!(kit.downstream.sent(), &resp[..]);
    assert_eq!(seen.released, vec![true]);
    let readable = kit.ops.iter().filter(|o| **o == "readable").count();
    let recv = kit.ops.iter().filter(|o| **o == "recv").count();
    assert!(
        readable > 0 && readable <= recv,
        "each wait for readability is followed by buffered reads, not another wait: {:?}",
        kit.ops
    );
    assert_eq!(kit.pool.in_use(), 0);
    assert_eq!(kit.pipes.in_use(), 0);
}
