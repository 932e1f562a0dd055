//! The per-request decision: which version (and so which cluster) a request goes to, and
//! which cookies its response sets. Pure: the request's view, a random number and the time
//! come in; a [`Choice`] goes out. The only shared state touched is gradual's request counter
//! (one relaxed atomic add).
//!
//! HOT PATH: no allocation, lock, system call or log.

use super::cookie;
use super::service::{Service, NONE};
use crate::config::services::{Ramp, Strategy};
use crate::http::head::{HeaderLines, RequestHead};
use crate::http::rewrite::{Out, Overflow};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a decision needs from a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// The `dynsoftup` cookie's value.
    pub version_cookie: Option<&'a [u8]>,
    /// The `transition` cookie's value.
    pub transition_cookie: Option<&'a [u8]>,
    /// gradual: the (single) `Cookie` header, where the transition cookie is looked for only
    /// when the decision needs it (a client already on the newest version does not).
    pub cookie_header: Option<&'a [u8]>,
    /// The forcing header's value (only looked for when the service has one).
    pub forced: Option<&'a [u8]>,
    /// GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
    pub idempotent: bool,
    /// Differs from request to request (mixed before use: only canary and new gradual
    /// clients need randomness).
    pub random: u64,
}

impl<'a> Request<'a> {
    /// What a decision needs from a parsed request head (`buf` is the buffer `h` indexes).
    /// The cookies are read from the `Cookie` header the parser located (a second pass over
    /// the head only when a client sent several), and only by strategies that use them; the
    /// forcing header is looked for only when the service has one.
    #[inline]
    pub fn from_head(svc: &Service, buf: &'a [u8], h: &RequestHead, random: u64) -> Request<'a> {
        let mut r = Request {
            idempotent: h.method.is_idempotent(),
            random,
            ..Request::default()
        };
        if svc.strategy.sticky() {
            let gradual = svc.strategy == Strategy::Gradual;
            match h.cookie_headers {
                0 => {}
                1 => {
                    if let Some(v) = h.cookie.clone().and_then(|c| buf.get(c)) {
                        r.version_cookie = cookie::find_version(v);
                        if gradual {
                            r.cookie_header = Some(v);
                        }
                    }
                }
                _ => {
                    for (name, value) in HeaderLines::new(buf, h.head_len) {
                        if name.eq_ignore_ascii_case(b"cookie") {
                            r.take_cookies(value, gradual);
                        }
                    }
                }
            }
        }
        if let Some(f) = svc.force_header.as_deref() {
            r.forced = HeaderLines::new(buf, h.head_len)
                .find(|(name, _)| name.len() == f.len() && name.eq_ignore_ascii_case(f))
                .map(|(_, v)| v);
        }
        r
    }

    /// The first `dynsoftup` (and, for gradual, `transition`) cookie of a `Cookie` value.
    #[inline]
    fn take_cookies(&mut self, header: &'a [u8], transition: bool) {
        let (v, t) = cookie::find_ours(header, transition && self.transition_cookie.is_none());
        self.version_cookie = self.version_cookie.or(v);
        self.transition_cookie = self.transition_cookie.or(t);
    }

    /// The transition cookie's value (looked for in `cookie_header` if not found yet).
    #[inline]
    fn transition(&self) -> Option<&'a [u8]> {
        self.transition_cookie
            .or_else(|| self.cookie_header.and_then(|h| cookie::find_transition(h)))
    }
}

/// What a request was decided to be, carried by the session until its response (small and
/// `Copy`: it lives in the session, not on the heap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// Index into `Snapshot::services`; [`NONE`] for requests routed to a plain cluster.
    pub service: u16,
    /// Index into the service's versions.
    pub version: u16,
    /// concurrent: the older version that answers when `version` fails ([`NONE`]: none).
    pub fallback: u16,
    /// The version that failed before `version` answered instead ([`NONE`]: none did).
    pub failed: u16,
    /// Set the version cookie on the response.
    pub set_version: bool,
    /// Set a new transition cookie whose client part is `transition` ([`cookie::IdMaker`]).
    pub new_transition: bool,
    /// The version's counters and latency are kept on their own (its cluster serves others
    /// too; see [`super::service::Version::shares_cluster`]); otherwise the stats take its
    /// cluster's.
    pub own_stats: bool,
    /// A new gradual client's part of its transition id (hex digits), kept from the decision
    /// (its bucket) to the response (its cookie).
    pub transition: [u8; cookie::ID_SUFFIX_LEN],
}

impl Tag {
    pub const NONE: Tag = Tag {
        service: NONE,
        version: NONE,
        fallback: NONE,
        failed: NONE,
        set_version: false,
        new_transition: false,
        own_stats: false,
        transition: [0; cookie::ID_SUFFIX_LEN],
    };

    #[inline]
    pub fn is_none(&self) -> bool {
        self.service == NONE
    }
}

impl Default for Tag {
    fn default() -> Tag {
        Tag::NONE
    }
}

/// The decision: the cluster to use and the tag to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub cluster: usize,
    pub tag: Tag,
}

/// Decides one request for service number `index`.
#[inline]
pub fn decide(index: usize, svc: &Service, req: &Request<'_>, now: Instant) -> Choice {
    let mut tag = Tag::NONE;
    let cluster = decide_into(index, svc, req, now, &mut tag);
    Choice { cluster, tag }
}

/// [`decide_into`] for a request without cookies or forcing header (a new client), out of
/// line with its own registers: the request's view is constant but for two fields, and the
/// compiler specializes the decision for it (no `Request` kept on the stack, no cookie
/// lookups).
#[inline(never)]
pub fn decide_fresh(
    index: usize,
    svc: &Service,
    idempotent: bool,
    random: u64,
    now: Instant,
    tag: &mut Tag,
) -> usize {
    let req = Request {
        idempotent,
        random,
        ..Request::default()
    };
    decide_into(index, svc, &req, now, tag)
}

/// [`decide`], written straight into the tag the session keeps (no intermediate copy of
/// it); returns the cluster to use.
///
/// HOT PATH: no allocation; the version cookie is looked up only by the strategies that
/// read it. Always inlined: into [`decide_fresh`] and the route of a request with cookies
/// (each its own specialized copy; left to itself the compiler kept one shared copy).
#[inline(always)]
pub fn decide_into(
    index: usize,
    svc: &Service,
    req: &Request<'_>,
    now: Instant,
    tag: &mut Tag,
) -> usize {
    // Every field but `transition`, which means something only with `new_transition` (and
    // is written with it): 12 bytes fewer to clear per request.
    *tag = Tag {
        service: index as u16,
        version: svc.newest,
        transition: tag.transition,
        ..Tag::NONE
    };
    // A tester's header names any version, even a rolled-back one; no cookie is set, so the
    // tester's client is not made sticky by it.
    if let Some(v) = req.forced.and_then(|f| svc.by_name(f)) {
        tag.version = v;
        return finish(svc, tag);
    }
    let had = || {
        req.version_cookie
            .filter(|v| v.len() <= cookie::MAX_VALUE)
            .and_then(|v| svc.live_by_id(v))
    };
    match svc.strategy {
        Strategy::Session => {
            tag.set_version = true;
            if !svc.promoted {
                if let Some(h) = had() {
                    tag.version = h;
                }
            }
        }
        Strategy::Gradual => {
            tag.set_version = true;
            if !svc.promoted {
                tag.version = gradual(svc, req, had(), tag, now);
            }
        }
        Strategy::Instant => {}
        Strategy::Concurrent => {
            if req.idempotent && !svc.promoted {
                tag.fallback = svc.previous.unwrap_or(NONE);
            }
        }
        Strategy::Canary => {
            tag.set_version = true;
            if !svc.promoted {
                let sticky = had().filter(|&h| svc.versions[h as usize].weight > 0);
                tag.version = match (sticky, svc.canary.last()) {
                    (Some(h), _) => h,
                    (None, Some(&(total, _))) => {
                        let x = cookie::mix(req.random) % total;
                        svc.canary
                            .iter()
                            .find(|(upto, _)| x < *upto)
                            .map_or(svc.newest, |&(_, v)| v)
                    }
                    (None, None) => svc.newest,
                };
            }
        }
    }
    finish(svc, tag)
}

/// gradual's choice. Always inlined (the compiler would keep it out of line in
/// [`decide_fresh`], at ~40 instructions of calling and spilling per new client).
#[inline(always)]
fn gradual(svc: &Service, req: &Request<'_>, had: Option<u16>, tag: &mut Tag, now: Instant) -> u16 {
    // The original: the share grows with every routed request, this one included.
    let routed = match svc.ramp {
        Some(Ramp::PerRequest(_)) => svc.live.routed.fetch_add(1, Ordering::Relaxed) + 1,
        _ => 0,
    };
    // Moved clients never move back: the share only grows, and a client already on the
    // newest stays there by its cookie (no bucket needed, not even its transition cookie:
    // should a newer version come, a client without one gets one then).
    let Some(previous) = svc.previous.filter(|_| had != Some(svc.newest)) else {
        return svc.newest;
    };
    let known = req.transition().filter(|v| cookie::acceptable(v));
    if known.is_none() {
        // A new client: its id is the service's prefix and 48 random bits.
        tag.new_transition = true;
        tag.transition = cookie::IdMaker::suffix(cookie::draw(req.random));
    }
    // Its bucket: hashed from its id, or on from the prefix's FNV state for a new client.
    let bucket = || match known {
        Some(id) => cookie::bucket(id),
        None => svc.ids.bucket(&tag.transition),
    };
    let moved = match svc.ramp {
        // By request: the share passed bucket b at the `moves_at[b]`-th routed request
        // (integers, no float per request); once it passed them all, no bucket is needed.
        Some(Ramp::PerRequest(_)) => {
            routed >= svc.moves_at[99] || routed >= svc.moves_at[usize::from(bucket())]
        }
        _ => f64::from(bucket()) < svc.share(now),
    };
    if moved {
        svc.newest
    } else {
        had.unwrap_or(previous)
    }
}

#[inline]
fn finish(svc: &Service, tag: &mut Tag) -> usize {
    let v = &svc.versions[tag.version as usize];
    tag.own_stats = v.shares_cluster;
    v.cluster
}

/// concurrent: the tag's version failed (5xx, unreachable, timed out) and an older one is
/// there to answer instead: the tag moves to it. Returns that version's cluster.
pub fn fall_back(svc: &Service, tag: &mut Tag) -> Option<usize> {
    if tag.fallback == NONE {
        return None;
    }
    let v = svc.versions.get(tag.fallback as usize)?;
    let cluster = v.cluster;
    tag.own_stats = v.shares_cluster;
    tag.failed = tag.version;
    tag.version = tag.fallback;
    tag.fallback = NONE;
    Some(cluster)
}

/// concurrent: the version a request of this tag is mirrored to (the one it falls back to),
/// as a tag of its own, and that version's cluster. `None` when the request has no fallback.
pub fn mirror(svc: &Service, tag: &Tag) -> Option<(usize, Tag)> {
    if tag.fallback == NONE {
        return None;
    }
    let v = svc.versions.get(tag.fallback as usize)?;
    Some((
        v.cluster,
        Tag {
            version: tag.fallback,
            fallback: NONE,
            failed: NONE,
            set_version: false,
            new_transition: false,
            own_stats: v.shares_cluster,
            ..*tag
        },
    ))
}

/// Writes the `Set-Cookie` lines a tag asks for into `out`, then the empty line that ends a
/// head. Returns the bytes written.
///
/// HOT PATH: one copy of bytes built with the snapshot (and, for a new gradual client, its
/// 12 hex digits written over their placeholder).
#[inline]
pub fn write_cookies(svc: &Service, tag: &Tag, out: &mut [u8]) -> Result<usize, Overflow> {
    if !tag.set_version {
        return write_transition_only(svc, tag, out);
    }
    let v = svc.versions.get(tag.version as usize).ok_or(Overflow)?;
    let bytes: &[u8] = if tag.new_transition {
        &v.set_both_end
    } else {
        &v.set_cookie_end
    };
    let dst = out.get_mut(..bytes.len()).ok_or(Overflow)?;
    dst.copy_from_slice(bytes);
    if tag.new_transition {
        let at = v.suffix_at;
        dst.get_mut(at..at + cookie::ID_SUFFIX_LEN)
            .ok_or(Overflow)?
            .copy_from_slice(&tag.transition);
    }
    Ok(bytes.len())
}

/// [`write_cookies`] without the version cookie (no strategy asks for it today): the
/// transition cookie, if new, and the empty line.
#[cold]
#[inline(never)]
fn write_transition_only(svc: &Service, tag: &Tag, out: &mut [u8]) -> Result<usize, Overflow> {
    let mut o = Out::new(out);
    if tag.new_transition {
        o.put(cookie::NEW_TRANSITION)?;
        o.put(&svc.ids.prefix)?;
        o.put(&tag.transition)?;
        o.put(cookie::TRANSITION_ATTRIBUTES)?;
    }
    o.put(b"\r\n")?;
    Ok(o.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::services::{ServiceConfig, VersionConfig};
    use std::collections::HashMap;
    use std::time::Duration;

    fn service(
        strategy: Strategy,
        versions: &[(&str, bool)],
        tweak: impl FnOnce(&mut ServiceConfig),
    ) -> Service {
        let mut cfg = ServiceConfig {
            name: "shop".into(),
            strategy,
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, (v, rb))| VersionConfig {
                    version: v.to_string(),
                    cluster: format!("c{i}"),
                    id: v.to_string(),
                    rolled_back: *rb,
                })
                .collect(),
            session_timeout: Duration::from_secs(60),
            ramp: None,
            weights: vec![0; versions.len()],
            force_header: Some("x-version".into()),
            promoted: None,
            rollback: None,
        };
        tweak(&mut cfg);
        let idx: HashMap<String, usize> = (0..versions.len())
            .map(|i| (format!("c{i}"), 10 + i))
            .collect();
        Service::build(&cfg, &idx, None, Instant::now()).unwrap()
    }

    fn req<'a>(version: Option<&'a str>, transition: Option<&'a str>, random: u64) -> Request<'a> {
        Request {
            version_cookie: version.map(str::as_bytes),
            transition_cookie: transition.map(str::as_bytes),
            cookie_header: None,
            forced: None,
            idempotent: true,
            random,
        }
    }

    fn version_of(s: &Service, c: &Choice) -> String {
        s.versions[c.tag.version as usize].version.clone()
    }

    #[test]
    fn instant_and_concurrent() {
        let s = service(Strategy::Instant, &[("1.0", false), ("1.1", false)], |_| {});
        let c = decide(3, &s, &req(Some("1.0"), None, 1), Instant::now());
        assert_eq!(
            (version_of(&s, &c), c.cluster, c.tag.service),
            ("1.1".into(), 11, 3)
        );
        assert!(!c.tag.set_version && !c.tag.new_transition);
        let s = service(
            Strategy::Concurrent,
            &[("1.0", false), ("1.1", false)],
            |_| {},
        );
        let c = decide(0, &s, &req(None, None, 1), Instant::now());
        assert_eq!((c.tag.version, c.tag.fallback), (1, 0));
        let mut post = req(None, None, 1);
        post.idempotent = false;
        assert_eq!(decide(0, &s, &post, Instant::now()).tag.fallback, NONE);
        let mut t = c.tag;
        assert_eq!(fall_back(&s, &mut t), Some(10));
        assert_eq!((t.version, t.failed, t.fallback), (0, 1, NONE));
        assert_eq!(fall_back(&s, &mut t), None, "once");
        let (cluster, m) = mirror(&s, &c.tag).unwrap();
        assert_eq!(
            (cluster, m.version, m.fallback, m.service),
            (10, 0, NONE, 0)
        );
        assert!(
            mirror(&s, &t).is_none(),
            "fallen back: nothing left to mirror to"
        );
    }

    #[test]
    fn session_stays_on_a_live_version_only() {
        let s = service(
            Strategy::Session,
            &[("1.0", false), ("1.1", false), ("1.2", true)],
            |_| {},
        );
        let now = Instant::now();
        let v = |c: Option<&str>| version_of(&s, &decide(0, &s, &req(c, None, 1), now));
        assert_eq!(v(None), "1.1", "newest live");
        assert_eq!(v(Some("1.0")), "1.0", "sticky");
        assert_eq!(v(Some("1.2")), "1.1", "rolled back: like no cookie");
        assert_eq!(v(Some("9.9")), "1.1", "unknown");
        let c = decide(0, &s, &req(Some("1.0"), None, 1), now);
        assert!(c.tag.set_version, "the expiry slides on every response");
        let mut out = [0u8; 256];
        let n = write_cookies(&s, &c.tag, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            b"Set-Cookie: dynsoftup=1.0; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n\r\n"
        );
        assert!(write_cookies(&s, &c.tag, &mut out[..10]).is_err());
    }

    #[test]
    fn forcing_header_beats_every_strategy_and_sets_nothing() {
        let s = service(Strategy::Session, &[("1.0", false), ("1.1", true)], |_| {});
        let mut r = req(Some("1.0"), None, 1);
        r.forced = Some(b"1.1");
        let c = decide(0, &s, &r, Instant::now());
        assert_eq!(version_of(&s, &c), "1.1", "even a rolled-back one");
        assert!(!c.tag.set_version);
        r.forced = Some(b"nope");
        assert_eq!(version_of(&s, &decide(0, &s, &r, Instant::now())), "1.0");
    }

    #[test]
    fn promoted_takes_everything() {
        let s = service(Strategy::Session, &[("1.0", false), ("1.1", false)], |c| {
            c.promoted = Some(0)
        });
        let c = decide(0, &s, &req(Some("1.1"), None, 1), Instant::now());
        assert_eq!(version_of(&s, &c), "1.0");
        assert!(c.tag.set_version, "the cookie moves the client too");
    }

    #[test]
    fn canary_weights_within_binomial_bounds_and_sticky() {
        let s = service(Strategy::Canary, &[("1.0", false), ("1.1", false)], |c| {
            c.weights = vec![95, 5]
        });
        let now = Instant::now();
        let n = 20_000u64;
        let mut new = 0u64;
        for i in 0..n {
            let c = decide(0, &s, &req(None, None, cookie::mix(i)), now);
            if c.tag.version == 1 {
                new += 1;
            }
        }
        // p = 0.05: mean 1,000, sigma 30.8; 5 sigma.
        assert!((846..=1154).contains(&new), "{new}");
        for i in 0..100 {
            assert_eq!(
                decide(0, &s, &req(Some("1.1"), None, i), now).tag.version,
                1
            );
            assert_eq!(
                decide(0, &s, &req(Some("1.0"), None, i), now).tag.version,
                0
            );
        }
        // A version weighted 0 keeps no one.
        let s = service(Strategy::Canary, &[("1.0", false), ("1.1", false)], |c| {
            c.weights = vec![1, 0]
        });
        assert_eq!(
            decide(0, &s, &req(Some("1.1"), None, 5), now).tag.version,
            0
        );
    }

    #[test]
    fn gradual_by_request_matches_the_original_and_never_moves_back() {
        let s = service(Strategy::Gradual, &[("1.0", false), ("1.1", false)], |c| {
            c.ramp = Some(Ramp::PerRequest(0.5))
        });
        let now = Instant::now();
        // Bucket 3 (the original README's example): moves at the 7th routed request (0.5 × 7
        // = 3.5 > 3).
        let t = "952c8557-2088-11e4-87e3-600308a8245e";
        let mut first_new = None;
        for i in 1..=10 {
            let c = decide(0, &s, &req(Some("1.0"), Some(t), i), now);
            if c.tag.version == 1 && first_new.is_none() {
                first_new = Some(i);
            }
            assert!(!c.tag.new_transition);
        }
        assert_eq!(first_new, Some(7));
        // On the newest by its cookie: stays even if its bucket is high.
        let high = "a37a2826-2088-11e4-b3a6-600308a8245e"; // bucket 90
        assert_eq!(
            decide(0, &s, &req(Some("1.1"), Some(high), 1), now)
                .tag
                .version,
            1
        );
        assert_eq!(
            decide(0, &s, &req(Some("1.0"), Some(high), 1), now)
                .tag
                .version,
            0
        );
        assert_eq!(
            decide(0, &s, &req(None, Some(high), 1), now).tag.version,
            0,
            "previous"
        );
        // No transition cookie: a new one is made, and its bucket is what counts.
        let c = decide(0, &s, &req(None, None, 42), now);
        assert!(c.tag.new_transition && c.tag.set_version);
        let mut out = [0u8; 512];
        let n = write_cookies(&s, &c.tag, &mut out).unwrap();
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert_eq!(c.tag.transition, cookie::IdMaker::suffix(cookie::draw(42)));
        let id = s.ids.id(cookie::draw(42));
        let version = &s.versions[c.tag.version as usize].id;
        assert_eq!(
            text,
            format!(
                "Set-Cookie: dynsoftup={}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n\
                 Set-Cookie: transition={}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax\r\n\r\n",
                std::str::from_utf8(version).unwrap(),
                std::str::from_utf8(&id).unwrap()
            )
        );
        // The bucket the decision used is the bucket of the id the client gets.
        let share_then = s.live.routed.load(Ordering::Relaxed) as f64 * 0.5;
        assert_eq!(
            f64::from(cookie::bucket(&id)) < share_then,
            c.tag.version == 1,
            "{text}"
        );
        assert!(write_cookies(&s, &c.tag, &mut out[..n - 1]).is_err());
        // A transition cookie alone (no strategy asks for it today) and nothing at all.
        let t = Tag {
            set_version: false,
            ..c.tag
        };
        let n = write_cookies(&s, &t, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            format!(
                "Set-Cookie: transition={}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax\r\n\r\n",
                std::str::from_utf8(&id).unwrap()
            )
            .as_bytes()
        );
        let none = Tag {
            new_transition: false,
            ..t
        };
        assert_eq!(write_cookies(&s, &none, &mut out).unwrap(), 2);
    }

    #[test]
    fn gradual_share_grows_within_binomial_bounds() {
        let s = service(Strategy::Gradual, &[("1.0", false), ("1.1", false)], |c| {
            c.ramp = Some(Ramp::PerRequest(0.05))
        });
        let now = Instant::now();
        // New clients one after another: the i-th moves with probability min(1, 0.05 i / 100).
        let mut moved = [0u64; 10];
        let mut expected = [0f64; 10];
        let mut var = [0f64; 10];
        for i in 1..=2000u64 {
            let c = decide(0, &s, &req(None, None, cookie::mix(i ^ 0xabc)), now);
            let p = (0.05 * i as f64 / 100.0).min(1.0);
            let w = ((i - 1) / 200) as usize;
            expected[w] += p;
            var[w] += p * (1.0 - p);
            moved[w] += u64::from(c.tag.version == 1);
        }
        for w in 0..10 {
            let dev = (moved[w] as f64 - expected[w]).abs();
            assert!(
                dev <= 5.0 * var[w].sqrt() + 3.0,
                "window {w}: {moved:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn a_fresh_request_is_decided_as_any_other() {
        let now = Instant::now();
        for strategy in [
            Strategy::Instant,
            Strategy::Session,
            Strategy::Gradual,
            Strategy::Concurrent,
            Strategy::Canary,
        ] {
            let s = service(strategy, &[("1.0", false), ("1.1", false)], |c| {
                c.weights = vec![50, 50];
                c.ramp = Some(Ramp::PerRequest(0.7));
            });
            for i in 0..300u64 {
                for idempotent in [true, false] {
                    let routed = s.live.routed.load(Ordering::Relaxed);
                    let want = decide(
                        1,
                        &s,
                        &Request {
                            idempotent,
                            ..req(None, None, i)
                        },
                        now,
                    );
                    s.live.routed.store(routed, Ordering::Relaxed);
                    let mut tag = Tag::NONE;
                    let cluster = decide_fresh(1, &s, idempotent, i, now, &mut tag);
                    assert_eq!(Choice { cluster, tag }, want, "{strategy:?} {i}");
                }
            }
        }
    }

    #[test]
    fn gradual_over_a_ramp_and_with_one_version() {
        let s = service(Strategy::Gradual, &[("1.0", false), ("1.1", false)], |c| {
            c.ramp = Some(Ramp::Over(Duration::from_secs(100)))
        });
        let t0 = s.live.since;
        let b3 = "952c8557-2088-11e4-87e3-600308a8245e";
        assert_eq!(
            decide(0, &s, &req(None, Some(b3), 1), t0 + Duration::from_secs(3))
                .tag
                .version,
            0
        );
        assert_eq!(
            decide(0, &s, &req(None, Some(b3), 1), t0 + Duration::from_secs(4))
                .tag
                .version,
            1
        );
        let one = service(Strategy::Gradual, &[("1.0", false)], |c| {
            c.ramp = Some(Ramp::PerRequest(1.0))
        });
        assert_eq!(decide(0, &one, &req(None, None, 1), t0).tag.version, 0);
    }

    fn head(bytes: &[u8]) -> RequestHead {
        match crate::http::head::parse_request(bytes, &Default::default()) {
            Ok(Some(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cookies_and_forcing_header_from_a_head() {
        let g = service(Strategy::Gradual, &[("1.0", false)], |c| {
            c.ramp = Some(Ramp::PerRequest(1.0))
        });
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; transition=t1\r\nX-Version: 1.0\r\ncookie: dynsoftup=1.0; transition=t2\r\n\r\n";
        let r = Request::from_head(&g, buf, &head(buf), 9);
        assert_eq!(
            r.version_cookie,
            Some(&b"1.0"[..]),
            "from the second Cookie header"
        );
        assert_eq!(r.transition_cookie, Some(&b"t1"[..]));
        assert_eq!(r.forced, Some(&b"1.0"[..]));
        assert!(r.idempotent);
        // One Cookie header: gradual looks for the transition cookie only when it needs it.
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: dynsoftup=9; transition=t3\r\n\r\n";
        let r = Request::from_head(&g, buf, &head(buf), 9);
        assert_eq!(r.version_cookie, Some(&b"9"[..]));
        assert_eq!(r.transition_cookie, None);
        assert_eq!(r.transition(), Some(&b"t3"[..]));
        // Session does not need the transition cookie; instant reads no cookie at all.
        let s = service(Strategy::Session, &[("1.0", false)], |c| {
            c.force_header = None
        });
        let buf = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nCookie: transition=t; dynsoftup=1.0\r\nX-Version: 1.0\r\n\r\n";
        let r = Request::from_head(&s, buf, &head(buf), 9);
        assert_eq!(
            (r.version_cookie, r.transition_cookie),
            (Some(&b"1.0"[..]), None)
        );
        assert!(
            r.forced.is_none() && !r.idempotent,
            "no forcing header configured"
        );
        let i = service(Strategy::Instant, &[("1.0", false)], |_| {});
        let r = Request::from_head(&i, buf, &head(buf), 9);
        assert!(r.version_cookie.is_none());
        assert_eq!(r.forced, Some(&b"1.0"[..]));
    }
}
