//! The HTTP/1.1 message layer: pure functions and small `Copy` state machines over the caller's
//! bytes. No I/O, no sockets, no allocation; the HTTP session ([`crate::session::http`]) drives
//! them.
//!
//! - [`head`]: parse and validate request and response heads (RFC 9112) with `httparse`, apply
//!   the limits and the smuggling checks, and say how the body is framed. Results are offsets
//!   into the caller's buffer, never owned strings.
//! - [`chunked`]: a streaming validator for chunked bodies that are forwarded unchanged; it
//!   tells the caller how many bytes belong to the body and when the message ends (and, for
//!   a caller that consumes the body, such as the demo backend, hands over the chunk data).
//! - [`rewrite`]: writes the request head sent upstream (origin-form target, hop-by-hop headers
//!   removed, `X-Forwarded-*`, `X-Request-Id`) and small error responses into a caller's buffer.
//!
//! HOT PATH: no allocation, no panics on input, no `unsafe`, in every file of this module.
//!
//! # Request-smuggling policy
//!
//! A proxy and the server behind it must agree on where each request ends. Switchyard accepts
//! only requests whose framing has exactly one reading and answers everything else with
//! `400 Bad Request` and closes the connection; nothing of such a request reaches a backend.
//!
//! - **One framing header.** A request with both `Content-Length` and `Transfer-Encoding` is
//!   rejected (RFC 9112 §6.1 allows a server to reject it; a proxy that forwards it lets two
//!   parsers disagree).
//! - **One length.** `Content-Length` must be `1*DIGIT` and fit in 64 bits (no sign, no spaces
//!   inside, not empty). Repeated values, in one header as a list or in several headers, are
//!   accepted only if they are all equal; upstream receives one `Content-Length` with the
//!   canonical number.
//! - **Chunked last, exactly once.** `Transfer-Encoding` must end with `chunked` and name it
//!   once (`gzip, chunked` is fine; `chunked, gzip`, `chunked, chunked`, `identity` or an empty
//!   element are not). HTTP/1.0 requests may not carry `Transfer-Encoding` at all. Several
//!   `Transfer-Encoding` lines are joined into one before the request goes upstream.
//! - **Strict chunk syntax.** Chunk sizes are 1–16 hex digits with nothing before them;
//!   extensions must be `;token[=token|quoted-string]` without whitespace; every line ends in
//!   CRLF; chunk data is followed by CRLF exactly; trailers are validated like header lines and
//!   bounded in size.
//! - **Strict header syntax.** Every line of a request head ends in CRLF (a bare LF or a bare
//!   CR is rejected); no whitespace between a field name and its colon; no obs-fold (a line
//!   starting with SP or HTAB); no NUL or other control character in a value.
//! - **One Host.** An HTTP/1.1 request needs exactly one valid `Host`; more than one is
//!   rejected. An absolute-form target's authority wins over `Host` and is sent upstream as
//!   `Host`.
//! - **Connection cannot strip framing.** Headers named in `Connection` are removed as
//!   hop-by-hop, except `Host`, `Content-Length`, `Transfer-Encoding` and the forwarding
//!   headers the proxy sets itself, so a client cannot make the proxy drop the framing.
//! - **Responses** are read per RFC 9112 §6.3: a response with both `Transfer-Encoding` and
//!   `Content-Length` is read as chunked and its connection is not reused; a response without
//!   framing is read until close; an invalid `Content-Length` is a `502`.

pub mod chunked;
pub mod head;
pub mod rewrite;
