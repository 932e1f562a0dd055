//! A service as the workers see it: built once per snapshot by the control plane from its
//! [`ServiceConfig`], versions sorted oldest to newest, everything a decision needs
//! precomputed (the newest and previous live versions, canary's cumulative weights, each
//! version's `Set-Cookie` line).

use super::cookie;
use super::version;
use crate::config::services::{Ramp, RollbackConfig, ServiceConfig, Strategy};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Marks "no service" / "no version" in a [`super::Tag`].
pub const NONE: u16 = u16::MAX;

/// Size of [`Version::set_cookie_block`]: a version cookie's line and the empty line fit
/// with ids up to uuids' 36 bytes (`Set-Cookie: dynsoftup=` 22, the attributes up to 52,
/// the empty line 2).
pub const SET_COOKIE_BLOCK: usize = 128;
/// Size of [`Version::set_both_block`]: both cookies' lines and the empty line (the
/// transition line is 110 bytes); copied in two halves of [`SET_COOKIE_BLOCK`].
pub const SET_BOTH_BLOCK: usize = 2 * SET_COOKIE_BLOCK;

/// `bytes` padded with zeros to `N` (all zeros when longer: they are then copied by length).
fn block<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(b) = out.get_mut(..bytes.len()) {
        b.copy_from_slice(bytes);
    }
    out
}

#[derive(Debug)]
pub struct Version {
    /// The version string as written.
    pub version: String,
    /// The version cookie's value.
    pub id: Box<[u8]>,
    /// Index into `Snapshot::clusters`.
    pub cluster: usize,
    pub cluster_name: String,
    pub rolled_back: bool,
    /// canary: its weight.
    pub weight: u32,
    /// This version's whole `Set-Cookie: dynsoftup=...` line.
    pub set_cookie: Box<[u8]>,
    /// What a response head of this version ends with when it sets the version cookie:
    /// `set_cookie` and the head's empty line.
    pub set_cookie_end: Box<[u8]>,
    /// `set_cookie_end` padded with zeros to [`SET_COOKIE_BLOCK`] bytes (all zeros when it is
    /// longer): copied whole, a fixed-size copy the compiler writes out in a few moves
    /// instead of a `memcpy` call of its length.
    pub set_cookie_block: [u8; SET_COOKIE_BLOCK],
    /// Likewise with a new transition cookie too (gradual), the client's part of the id
    /// ([`cookie::ID_SUFFIX_LEN`] bytes at [`Version::suffix_at`]) to be filled in.
    pub set_both_end: Box<[u8]>,
    /// `set_both_end` padded with zeros to [`SET_BOTH_BLOCK`] bytes (all zeros when longer).
    pub set_both_block: [u8; SET_BOTH_BLOCK],
    pub suffix_at: usize,
    /// Its cluster serves something else too (a listener, a route, FaaS routing, another
    /// version): its counters and latency are kept on their own. Otherwise the cluster's
    /// counters and histogram hold exactly its requests, and the stats take those (one count
    /// and one histogram record per request instead of two).
    pub shares_cluster: bool,
}

/// Live state of a service that outlives snapshots while the newest version stays the same.
#[derive(Debug)]
pub struct ServiceLive {
    /// gradual by request: requests routed since `newest_id` became the newest.
    pub routed: AtomicU64,
    /// When `newest_id` became the newest (gradual's ramp starts there).
    pub since: Instant,
    pub newest_id: Box<[u8]>,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub strategy: Strategy,
    /// Oldest first: sorted by version, ties in the order written.
    pub versions: Vec<Version>,
    /// Where new requests go: the promoted version, else the newest live one.
    pub newest: u16,
    /// The live version just older than `newest` (gradual's old side, concurrent's
    /// fallback).
    pub previous: Option<u16>,
    pub promoted: bool,
    /// Lowercase.
    pub force_header: Option<Box<[u8]>>,
    pub ramp: Option<Ramp>,
    /// canary: (running total of weights, version) of the live versions with a weight.
    pub canary: Vec<(u64, u16)>,
    pub session_max_age: u64,
    pub rollback: Option<RollbackConfig>,
    /// Mixed into every request's random number.
    pub seed: u64,
    /// gradual: how new clients' transition ids are made (from `seed`).
    pub ids: cookie::IdMaker,
    /// gradual by request: the routed-request count from which each bucket (0–99) goes to
    /// the newest version ([`moves_at`]).
    pub moves_at: Box<[u64; 100]>,
    /// The live versions whose cookie ids are at most 8 bytes: (id packed little-endian, id
    /// length, version), for [`Service::live_by_id`] without a byte loop per version.
    live_short: Box<[(u64, u8, u16)]>,
    /// A returning client's decision at a glance ([`Service::returning`]): the versions a
    /// `Cookie` header starting with `dynsoftup=<id>` is decided to without anything else
    /// read, newest first. Empty when every request needs the whole decision (a forcing
    /// header to look for, a promoted version, instant and concurrent).
    pub returning: Box<[Returning]>,
    /// gradual by request: a returning client's request counts as routed too.
    pub returning_counts: bool,
    pub live: Arc<ServiceLive>,
}

/// One version a returning client's cookie may name and be decided to at once: its id
/// (1 to 8 bytes with nothing [`cookie`]'s reading would trim or split off) as a
/// little-endian word and a mask of its length, so a `Cookie` header is compared with one
/// load, an `and` and a compare instead of being searched, cleaned and packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returning {
    key: u64,
    mask: u64,
    len: usize,
    pub version: u16,
    /// The version's [`Version::shares_cluster`] (set by [`mark_shared`]).
    pub own_stats: bool,
    pub cluster: usize,
}

impl Service {
    /// `None` when a version names a cluster that does not exist (validation prevents it).
    pub fn build(
        cfg: &ServiceConfig,
        cluster_index: &HashMap<String, usize>,
        prev: Option<&Service>,
        now: Instant,
    ) -> Option<Service> {
        let max_age = cfg.session_timeout.as_secs().max(1);
        let seed = prev.map_or_else(super::entropy, |p| p.seed);
        let ids = cookie::IdMaker::new(seed);
        let mut order: Vec<usize> = (0..cfg.versions.len()).collect();
        // Stable: equal versions keep the order written (the later one counts as newer).
        order
            .sort_by(|&a, &b| version::compare(&cfg.versions[a].version, &cfg.versions[b].version));
        let mut versions = Vec::with_capacity(order.len());
        for &i in &order {
            let v = &cfg.versions[i];
            let set_cookie = cookie::set_cookie_line(cookie::VERSION, v.id.as_bytes(), max_age);
            let set_cookie_end: Box<[u8]> = [&set_cookie[..], b"\r\n"].concat().into();
            let set_cookie_block = block(&set_cookie_end);
            let suffix_at = set_cookie.len() + cookie::NEW_TRANSITION.len() + cookie::ID_PREFIX_LEN;
            let set_both_end: Box<[u8]> = [
                &set_cookie[..],
                cookie::NEW_TRANSITION,
                &ids.prefix,
                &[b'0'; cookie::ID_SUFFIX_LEN],
                cookie::TRANSITION_ATTRIBUTES,
                b"\r\n",
            ]
            .concat()
            .into();
            let set_both_block = block(&set_both_end);
            versions.push(Version {
                version: v.version.clone(),
                id: v.id.as_bytes().into(),
                cluster: *cluster_index.get(&v.cluster)?,
                cluster_name: v.cluster.clone(),
                rolled_back: v.rolled_back,
                weight: cfg.weights.get(i).copied().unwrap_or(0),
                set_cookie,
                set_cookie_end,
                set_cookie_block,
                set_both_end,
                set_both_block,
                suffix_at,
                shares_cluster: true,
            });
        }
        let live: Vec<u16> = (0..versions.len())
            .filter(|&i| !versions[i].rolled_back)
            .map(|i| i as u16)
            .collect();
        let promoted = cfg
            .promoted
            .and_then(|p| order.iter().position(|&i| i == p))
            .map(|i| i as u16);
        let newest_live = *live.last()?;
        let newest = promoted.unwrap_or(newest_live);
        let previous = live.iter().rev().find(|&&i| i < newest).copied();
        let mut canary = Vec::new();
        let mut total = 0u64;
        for &i in &live {
            let w = u64::from(versions[i as usize].weight);
            if w > 0 {
                total += w;
                canary.push((total, i));
            }
        }
        let live_short = live
            .iter()
            .map(|&i| (&versions[i as usize].id, i))
            .filter(|(id, _)| id.len() <= 8)
            .map(|(id, i)| (pack(id), id.len() as u8, i))
            .collect();
        let newest_id = versions[newest as usize].id.clone();
        let live_state = match prev {
            Some(p) if p.live.newest_id == newest_id => p.live.clone(),
            _ => Arc::new(ServiceLive {
                routed: AtomicU64::new(0),
                since: now,
                newest_id,
            }),
        };
        let mut svc = Service {
            name: cfg.name.clone(),
            strategy: cfg.strategy,
            versions,
            newest,
            previous,
            promoted: promoted.is_some(),
            force_header: cfg.force_header.as_ref().map(|h| h.as_bytes().into()),
            ramp: cfg.ramp,
            canary,
            session_max_age: max_age,
            rollback: cfg.rollback.clone(),
            seed,
            ids,
            moves_at: moves_at(match cfg.ramp {
                Some(Ramp::PerRequest(p)) => p,
                _ => 0.0,
            }),
            live_short,
            returning: Box::new([]),
            returning_counts: false,
            live: live_state,
        };
        svc.returning = svc.returning_versions();
        svc.returning_counts = svc.strategy == Strategy::Gradual
            && matches!(svc.ramp, Some(Ramp::PerRequest(_)))
            && !svc.promoted;
        Some(svc)
    }

    /// [`Service::returning`]'s table: the versions whose cookie alone decides a request,
    /// exactly as [`super::decide::decide_into`] would (session: any live version; gradual:
    /// the newest, whose clients never move back; canary: a live version with a weight).
    fn returning_versions(&self) -> Box<[Returning]> {
        if self.promoted || self.force_header.is_some() {
            return Box::new([]);
        }
        let wanted = |i: usize| match self.strategy {
            Strategy::Session => true,
            Strategy::Gradual => i == usize::from(self.newest),
            Strategy::Canary => self.versions[i].weight > 0,
            Strategy::Instant | Strategy::Concurrent => false,
        };
        (0..self.versions.len())
            .rev()
            .filter(|&i| wanted(i))
            .filter_map(|i| {
                let id = &self.versions[i].id;
                // Read back as it is written: 1 to 8 bytes, no `;` (the value would end
                // there), nothing `cookie::clean` would take off.
                let plain = (1..=8).contains(&id.len())
                    && !id.contains(&b';')
                    && cookie::clean(id) == &id[..];
                // The version a cookie of this id names (the first of equal ids).
                let v = self
                    .live_by_id(id)
                    .filter(|&v| plain && usize::from(v) == i)?;
                let mut word = [0u8; 8];
                word[..id.len()].copy_from_slice(id);
                Some(Returning {
                    key: u64::from_le_bytes(word),
                    mask: u64::MAX >> (8 * (8 - id.len())),
                    len: id.len(),
                    version: v,
                    own_stats: self.versions[i].shares_cluster,
                    cluster: self.versions[i].cluster,
                })
            })
            .collect()
    }

    /// The entry of [`Service::returning`] a `Cookie` header value names when it starts
    /// with `dynsoftup=<id>` followed by `;` or its end; `None`: the whole decision is
    /// needed (another first cookie, an id not in the table, more to clean).
    ///
    /// HOT PATH: one load of the id's 8 bytes, a compare per entry (usually the first).
    #[inline]
    pub fn returning(&self, header: &[u8]) -> Option<&Returning> {
        if self.returning.is_empty() {
            return None;
        }
        let (name, rest) = header.split_first_chunk::<10>()?;
        if name != b"dynsoftup=" {
            return None;
        }
        let word = match rest.first_chunk::<8>() {
            Some(w) => u64::from_le_bytes(*w),
            // A short value at the header's end: its last 8 bytes, shifted down to it.
            None if !rest.is_empty() => {
                u64::from_le_bytes(*header.last_chunk::<8>()?) >> (8 * (8 - rest.len()))
            }
            None => return None,
        };
        self.returning.iter().find(|r| {
            word & r.mask == r.key
                && match rest.get(r.len) {
                    Some(&b) => b == b';',
                    None => rest.len() == r.len,
                }
        })
    }

    /// The version whose cookie id is `id`, if it takes traffic (not rolled back).
    #[inline]
    pub fn live_by_id(&self, id: &[u8]) -> Option<u16> {
        if id.len() <= 8 {
            // Usually a version string: compared as one word per live version.
            let key = pack(id);
            return self
                .live_short
                .iter()
                .find(|&&(k, len, _)| k == key && usize::from(len) == id.len())
                .map(|&(_, _, i)| i);
        }
        // Longer ids (the DSU API's uuids): a byte loop beats a memcmp call.
        self.versions
            .iter()
            .position(|v| {
                v.id.len() == id.len() && v.id.iter().zip(id).all(|(a, b)| a == b) && !v.rolled_back
            })
            .map(|i| i as u16)
    }

    /// The version named `v` (version string or cookie id), rolled back or not.
    pub fn by_name(&self, v: &[u8]) -> Option<u16> {
        self.versions
            .iter()
            .position(|x| x.version.as_bytes() == v)
            .or_else(|| self.versions.iter().position(|x| *x.id == *v))
            .map(|i| i as u16)
    }

    /// Version `i`'s state as `/stats` and the API show it: `rolled_back`, `promoted` or
    /// `live`.
    pub fn state_of(&self, i: usize) -> &'static str {
        match self.versions.get(i) {
            Some(v) if v.rolled_back => "rolled_back",
            _ if self.promoted && i == self.newest as usize => "promoted",
            _ => "live",
        }
    }

    /// The gradual share (0–100) of the newest version at `now`, without counting a request.
    pub fn share(&self, now: Instant) -> f64 {
        if self.promoted || self.previous.is_none() {
            return 100.0;
        }
        match self.ramp {
            Some(Ramp::PerRequest(p)) => {
                let n = self.live.routed.load(std::sync::atomic::Ordering::Relaxed);
                (n as f64 * p).min(100.0)
            }
            Some(Ramp::Over(d)) => {
                let f = now.saturating_duration_since(self.live.since).as_secs_f64()
                    / d.as_secs_f64().max(1e-3);
                (f * 100.0).min(100.0)
            }
            None => 100.0,
        }
    }
}

/// gradual by request, `p` percentage points per routed request: for each bucket b, the
/// smallest count n of routed requests with `n × p > b` in `f64` (the share after n requests
/// has passed the bucket), `u64::MAX` for never. The share only grows with n, so
/// `n >= moves_at[b]` is exactly `b < n × p`; found by bisection, once per snapshot.
pub fn moves_at(p: f64) -> Box<[u64; 100]> {
    let mut out = Box::new([u64::MAX; 100]);
    for (b, slot) in out.iter_mut().enumerate() {
        let passed = |n: u64| n as f64 * p > b as f64;
        if !passed(u64::MAX) {
            continue;
        }
        // passed(hi) holds, passed(lo) does not (0 × p is never above a bucket).
        let (mut lo, mut hi) = (0u64, u64::MAX);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if passed(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        *slot = hi;
    }
    out
}

/// Up to 8 bytes as one word that, with the length, tells them apart (longer slices: their
/// first 8): the first and last 4 bytes (overlapping below 8), or below 4 the first, middle
/// and last byte. No loop per byte.
#[inline]
fn pack(id: &[u8]) -> u64 {
    let id = id.get(..8).unwrap_or(id);
    let n = id.len();
    match (id.first_chunk::<4>(), id.last_chunk::<4>()) {
        (Some(lo), Some(hi)) => {
            u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << 32
        }
        _ => match (id.first(), id.get(n / 2), id.last()) {
            (Some(&a), Some(&b), Some(&c)) => u64::from(a) | u64::from(b) << 8 | u64::from(c) << 16,
            _ => 0,
        },
    }
}

/// Sets [`Version::shares_cluster`]: `direct[c]` says whether cluster `c` is a target of a
/// listener or route (or every cluster is, with FaaS routing).
pub fn mark_shared(services: &mut [Service], direct: &[bool]) {
    let mut uses = vec![0u32; direct.len()];
    for s in services.iter() {
        for v in &s.versions {
            if let Some(u) = uses.get_mut(v.cluster) {
                *u += 1;
            }
        }
    }
    for s in services.iter_mut() {
        for v in &mut s.versions {
            v.shares_cluster = direct.get(v.cluster).copied().unwrap_or(true)
                || uses.get(v.cluster).copied().unwrap_or(0) > 1;
        }
        let Service {
            versions,
            returning,
            ..
        } = s;
        for r in returning.iter_mut() {
            r.own_stats = versions[usize::from(r.version)].shares_cluster;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::services::VersionConfig;
    use std::time::Duration;

    pub(crate) fn cfg(strategy: Strategy, versions: &[(&str, &str, bool)]) -> ServiceConfig {
        ServiceConfig {
            name: "shop".into(),
            strategy,
            versions: versions
                .iter()
                .map(|(v, c, rb)| VersionConfig {
                    version: v.to_string(),
                    cluster: c.to_string(),
                    id: v.to_string(),
                    rolled_back: *rb,
                })
                .collect(),
            session_timeout: Duration::from_secs(60),
            ramp: None,
            weights: vec![1; versions.len()],
            force_header: None,
            promoted: None,
            rollback: None,
        }
    }

    fn clusters() -> HashMap<String, usize> {
        [("a", 0), ("b", 1), ("c", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn sorted_numerically_newest_and_previous_skip_rolled_back() {
        let c = cfg(
            Strategy::Session,
            &[
                ("1.10", "c", true),
                ("1.9", "b", false),
                ("1.2", "a", false),
            ],
        );
        let s = Service::build(&c, &clusters(), None, Instant::now()).unwrap();
        let names: Vec<&str> = s.versions.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(names, ["1.2", "1.9", "1.10"]);
        assert_eq!(s.newest, 1, "1.10 is rolled back: 1.9 is the newest live");
        assert_eq!(s.previous, Some(0));
        assert_eq!(s.live_by_id(b"1.10"), None);
        assert_eq!(s.live_by_id(b"1.9"), Some(1));
        assert_eq!(s.live_by_id(b"1.2"), Some(0));
        assert_eq!(s.live_by_id(b"1.2\0"), None);
        assert_eq!(s.live_by_id(b"1."), None);
        assert_eq!(s.live_by_id(b""), None);
        let mut long = cfg(Strategy::Session, &[("1", "a", false), ("2", "b", false)]);
        long.versions[0].id = "a37a290f-2088-11e4-b3a6-600308a8245e".into();
        long.versions[1].id = "12345678".into();
        let l = Service::build(&long, &clusters(), None, Instant::now()).unwrap();
        assert_eq!(
            l.live_by_id(b"a37a290f-2088-11e4-b3a6-600308a8245e"),
            Some(0)
        );
        assert_eq!(l.live_by_id(b"a37a290f-2088-11e4-b3a6-600308a8245f"), None);
        assert_eq!(l.live_by_id(b"12345678"), Some(1));
        assert_eq!(l.live_by_id(b"1234567"), None);
        assert_eq!(
            &s.versions[0].set_cookie_end[..],
            b"Set-Cookie: dynsoftup=1.2; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n\r\n"
        );
        let both = std::str::from_utf8(&s.versions[0].set_both_end).unwrap();
        let at = s.versions[0].suffix_at;
        assert_eq!(
            both,
            format!(
                "Set-Cookie: dynsoftup=1.2; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n\
                 Set-Cookie: transition={}000000000000; Path=/; Max-Age=31536000; HttpOnly; \
                 SameSite=Lax\r\n\r\n",
                std::str::from_utf8(&s.ids.prefix).unwrap()
            )
        );
        assert_eq!(&both[at..at + 12], "000000000000");
        assert_eq!(s.by_name(b"1.10"), Some(2));
        assert_eq!(s.versions[2].cluster, 2);
        assert_eq!(
            &s.versions[0].set_cookie[..],
            b"Set-Cookie: dynsoftup=1.2; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n"
        );
    }

    #[test]
    fn packed_ids_differ_when_the_bytes_do() {
        // Every id of 0 to 8 bytes over three letters: no two of one length pack alike.
        for n in 0..=8u32 {
            let mut seen = HashMap::new();
            for k in 0..3usize.pow(n) {
                let id: Vec<u8> = (0..n).map(|i| b"1.9"[k / 3usize.pow(i) % 3]).collect();
                if let Some(other) = seen.insert(pack(&id), id.clone()) {
                    panic!("{id:?} and {other:?}");
                }
            }
        }
    }

    #[test]
    fn moves_at_is_where_the_float_share_passes_each_bucket() {
        for p in [0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 7.0, 33.3, 100.0, 1e-7] {
            let m = moves_at(p);
            for b in 0..100u64 {
                let n = m[b as usize];
                assert!(n as f64 * p > b as f64, "p {p} bucket {b}: {n}");
                assert!((n - 1) as f64 * p <= b as f64, "p {p} bucket {b}: {n}");
            }
        }
        assert_eq!(moves_at(0.5)[3], 7, "the original README's example");
        assert_eq!(moves_at(0.0)[0], u64::MAX, "never");
        assert_eq!(moves_at(f64::NAN)[50], u64::MAX, "never");
    }

    #[test]
    fn live_state_survives_a_rebuild_while_the_newest_stays() {
        let c = cfg(Strategy::Gradual, &[("1", "a", false), ("2", "b", false)]);
        let t0 = Instant::now();
        let s1 = Service::build(&c, &clusters(), None, t0).unwrap();
        s1.live
            .routed
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let s2 = Service::build(&c, &clusters(), Some(&s1), t0 + Duration::from_secs(5)).unwrap();
        assert!(Arc::ptr_eq(&s1.live, &s2.live));
        assert_eq!(s2.seed, s1.seed);
        assert_eq!(s2.ids, s1.ids, "transition ids keep their prefix");
        let mut c3 = c.clone();
        c3.versions.push(VersionConfig {
            version: "3".into(),
            cluster: "c".into(),
            id: "3".into(),
            rolled_back: false,
        });
        c3.weights.push(1);
        let s3 = Service::build(&c3, &clusters(), Some(&s2), t0).unwrap();
        assert!(
            !Arc::ptr_eq(&s3.live, &s2.live),
            "a new newest starts afresh"
        );
        let mut c4 = c.clone();
        c4.promoted = Some(0);
        let s4 = Service::build(&c4, &clusters(), None, t0).unwrap();
        assert_eq!((s4.newest, s4.previous, s4.promoted), (0, None, true));
        assert_eq!(s4.share(t0), 100.0);
    }
}
