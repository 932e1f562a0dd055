//! Release strategies: versioned services and how requests are split between their versions.
//!
//! A *service* ([`crate::config::services`]) is an ordered set of versions, each a cluster
//! plus a version string compared numerically ([`version`]). Its strategy decides per request
//! (also on keep-alive connections) which version serves it:
//!
//! - `instant`: everything to the newest version;
//! - `session`: the `dynsoftup` cookie names a live version → stay there, else the newest;
//!   the cookie's expiry slides by `session_timeout` on every response;
//! - `gradual`: a stable bucket 0–99 per client (its `transition` cookie); the newest
//!   version's share grows per routed request or over a ramp; bucket below the share → the
//!   newest, else the version the client had; a client never moves back;
//! - `concurrent`: idempotent requests go to the previous version too (a mirror); the newest
//!   answers unless it fails, then the previous one does; their answers are compared;
//! - `canary`: fixed weights per version, sticky by cookie;
//! - any strategy: the service's forcing header names a version (for testers).
//!
//! Layout: [`service`] (the per-snapshot tables, built by the control plane), [`decide`] (the
//! sans-I/O decision and the `Set-Cookie` lines), [`cookie`], [`version`], [`window`] (the
//! sliding error window of auto-rollback), [`monitor`] (rollback accounting fed by the stats
//! aggregator), [`controller`] (the thread that rolls back) and [`hook`] (what runs after a
//! rollback), [`api`] (admin API edits and status), [`dsu`] (the original DSU proxy's config
//! file and REST API).
//!
//! The data plane calls [`route`] when a request's route targets a service,
//! [`append_set_cookies`] when its response head is written, and, for `concurrent`,
//! [`mirror`] when a request is routed (the worker sends it to the previous version too, see
//! [`crate::session::mirror`]) and [`can_fall_back`] / [`fall_back`] when the newest version
//! fails a request: the older version's answer (the mirror's, or a request sent to it then)
//! goes to the client.

pub mod api;
pub mod controller;
pub mod cookie;
pub mod decide;
pub mod dsu;
pub mod hook;
pub mod monitor;
pub mod service;
pub mod version;
pub mod window;

pub use decide::{Choice, Request, Tag};
pub use service::Service;

use crate::snapshot::Snapshot;
use std::time::Instant;

/// Routes one request of service number `service`: returns the cluster to use and writes
/// the tag the session keeps until the response into `tag`. `h` is the parsed head of the
/// request in `buf`; `random` differs from request to request (mixed with the service's
/// seed here). `None` (and `tag` untouched) only for a service index the snapshot does not
/// have.
///
/// HOT PATH: no allocation; the cookies come from the header the parser located. A request
/// without cookies and without a forcing header to look for (a new client) takes
/// [`decide::decide_fresh`]; the others [`route_head`]. Always inlined into the session:
/// what is left here is a few tests and one call.
#[inline(always)]
pub fn route(
    snap: &Snapshot,
    service: usize,
    buf: &[u8],
    h: &crate::http::head::RequestHead,
    random: u64,
    now: Instant,
    tag: &mut Tag,
) -> Option<usize> {
    let svc = snap.services.get(service)?;
    let random = random ^ svc.seed;
    if h.cookie_headers == 0 && svc.force_header.is_none() {
        // No cookie and no forcing header to look for (a new client): nothing to read from
        // the head but its method.
        let idempotent = h.method.is_idempotent();
        return Some(decide::decide_fresh(
            service, svc, idempotent, random, now, tag,
        ));
    }
    Some(route_head(service, svc, buf, h, random, now, tag))
}

/// [`route`] for a request whose head has cookies or a forcing header to read. Out of line,
/// like [`decide::decide_fresh`]: each gets registers for its own path.
#[inline(never)]
fn route_head(
    service: usize,
    svc: &Service,
    buf: &[u8],
    h: &crate::http::head::RequestHead,
    random: u64,
    now: Instant,
    tag: &mut Tag,
) -> usize {
    let req = Request::from_head(svc, buf, h, random);
    decide::decide_into(service, svc, &req, now, tag)
}

/// Adds the tag's `Set-Cookie` lines to a response head written in `out[..n]` (ending with
/// its empty line): they go before the empty line. Returns the new length. A tag without a
/// service leaves the head alone.
///
/// HOT PATH: copies precomputed bytes; no allocation.
#[inline]
pub fn append_set_cookies(
    snap: &Snapshot,
    tag: &Tag,
    out: &mut [u8],
    n: usize,
) -> Result<usize, crate::http::rewrite::Overflow> {
    if tag.is_none() || !(tag.set_version || tag.new_transition) {
        return Ok(n);
    }
    let overflow = crate::http::rewrite::Overflow;
    let svc = snap.services.get(tag.service as usize).ok_or(overflow)?;
    if n < 2 || out.get(n - 2..n) != Some(b"\r\n") {
        return Err(overflow);
    }
    // The cookies and the empty line go where the empty line was.
    let at = n - 2;
    Ok(at + decide::write_cookies(svc, tag, out.get_mut(at..).ok_or(overflow)?)?)
}

/// Whether a request may still fall back to an older version (concurrent) when its version
/// fails: the worker then lets a 5xx or a timeout be retried.
#[inline]
pub fn can_fall_back(tag: &Tag) -> bool {
    tag.fallback != service::NONE
}

/// concurrent: the request's version failed (a 5xx answer, unreachable, no answer in time);
/// it moves to the older version, whose cluster is returned. `None`: nothing to fall back to.
///
/// HOT PATH (failures only).
#[inline]
pub fn fall_back(snap: &Snapshot, tag: &mut Tag) -> Option<usize> {
    if !can_fall_back(tag) {
        return None;
    }
    decide::fall_back(snap.services.get(tag.service as usize)?, tag)
}

/// concurrent: where a request of this tag is mirrored (the previous version's cluster, and
/// the tag its mirror exchange is counted under). `None`: not mirrored (another strategy, a
/// non-idempotent request, a single version, a promoted one).
///
/// HOT PATH (mirrored requests only: callers check [`can_fall_back`] first).
#[inline]
pub fn mirror(snap: &Snapshot, tag: &Tag) -> Option<(usize, Tag)> {
    if !can_fall_back(tag) {
        return None;
    }
    decide::mirror(snap.services.get(tag.service as usize)?, tag)
}

/// 64 bits of entropy for seeds and ids (control plane only: reads `/dev/urandom`; falls
/// back on the clock and process id).
pub fn entropy() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    cookie::mix(t ^ (u64::from(std::process::id()) << 32))
}
