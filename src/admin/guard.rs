//! What keeps the admin API answering when clients misbehave: a registry of connections so
//! that, when every slot is taken, the one that has waited longest for its request is closed
//! to make room (slow or idle clients cannot lock the API out), a limit on failed token
//! checks per client address (no brute force, no 15,000 guesses a second), and log lines
//! that cannot flood the log.
//!
//! Why eviction rather than a bigger limit alone: with a thread per connection, a fixed
//! number of clients dribbling one byte at a time could hold every thread for as long as they
//! like, each within any per-read timeout. HAProxy and nginx bound a request head as a whole
//! (`timeout http-request`, `client_header_timeout`) and make a waiting client cheap; here the
//! whole-request deadline is in [`super`], and this file makes a waiting client replaceable.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent; a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Slot {
    /// A handle on the connection's socket, to shut it down from the accept thread.
    stream: TcpStream,
    peer: SocketAddr,
    /// `Some(since)`: waiting for (the rest of) a request since then; `None`: a request is
    /// being handled or answered (never evicted).
    waiting_since: Option<Instant>,
}

/// The live admin connections.
#[derive(Default)]
pub struct Slots {
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    live: HashMap<u64, Slot>,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Serve it as connection `id`.
    Yes(u64),
    /// Every slot is busy handling a request: answer 503.
    Busy,
}

impl Slots {
    /// Registers a connection. With `max` connections live, the one that has waited longest
    /// for a request is shut down (its thread sees the end of the stream and leaves) and the
    /// new one takes its place; when all of them are busy handling requests, `Busy`.
    pub fn admit(&self, stream: &TcpStream, peer: SocketAddr, max: usize) -> Admit {
        let mut g = lock(&self.inner);
        if g.live.len() >= max {
            let oldest = g
                .live
                .iter()
                .filter_map(|(id, s)| s.waiting_since.map(|t| (t, *id)))
                .min();
            let Some((since, id)) = oldest else {
                return Admit::Busy;
            };
            if let Some(s) = g.live.remove(&id) {
                let _ = s.stream.shutdown(Shutdown::Both);
                log::debug!(
                    "admin: all {max} connections in use; closed {} (waiting for {:?})",
                    s.peer,
                    since.elapsed()
                );
            }
        }
        let Ok(handle) = stream.try_clone() else {
            return Admit::Busy;
        };
        let id = g.next_id;
        g.next_id += 1;
        g.live.insert(
            id,
            Slot {
                stream: handle,
                peer,
                waiting_since: Some(Instant::now()),
            },
        );
        Admit::Yes(id)
    }

    /// The connection is waiting for a request (`true`) or handling one (`false`).
    pub fn set_waiting(&self, id: u64, waiting: bool) {
        if let Some(s) = lock(&self.inner).live.get_mut(&id) {
            s.waiting_since = waiting.then(Instant::now);
        }
    }

    pub fn remove(&self, id: u64) {
        lock(&self.inner).live.remove(&id);
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed token checks allowed in a burst, per client address.
pub const AUTH_BURST: f64 = 10.0;
/// Failed checks earned back per second.
pub const AUTH_REFILL_PER_S: f64 = 1.0;
/// Addresses tracked at most (past it, those with a full allowance are forgotten first).
const AUTH_TRACKED: usize = 4096;

/// A token bucket of failed authentications per client address. While an address has no
/// allowance left, its changes get 429 without the token being looked at, so guessing gets
/// nowhere.
#[derive(Default)]
pub struct AuthLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl AuthLimiter {
    fn level(entry: (f64, Instant), now: Instant) -> f64 {
        let refill = now.saturating_duration_since(entry.1).as_secs_f64() * AUTH_REFILL_PER_S;
        (entry.0 + refill).min(AUTH_BURST)
    }

    /// `None`: this address may try; `Some(wait)`: locked out for about that long.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let g = lock(&self.buckets);
        let level = Self::level(*g.get(&ip)?, now);
        (level < 1.0).then(|| Duration::from_secs_f64((1.0 - level) / AUTH_REFILL_PER_S))
    }

    /// Records a failed check.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut g = lock(&self.buckets);
        if g.len() >= AUTH_TRACKED && !g.contains_key(&ip) {
            g.retain(|_, e| Self::level(*e, now) < AUTH_BURST);
            if g.len() >= AUTH_TRACKED {
                g.clear();
            }
        }
        let level = g.get(&ip).map_or(AUTH_BURST, |e| Self::level(*e, now));
        g.insert(ip, ((level - 1.0).max(0.0), now));
    }
}

/// A warning that is logged at most once per `every`; the occurrences in between are
/// counted and reported with the next line.
pub struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last line)` when a line is due now.
    pub fn due(&self, now: Instant) -> Option<u64> {
        let mut g = lock(&self.state);
        match g.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                g.1 += 1;
                None
            }
            _ => {
                let suppressed = g.1;
                *g = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_checks_lock_an_address_out_then_refill() {
        let l = AuthLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..AUTH_BURST as usize {
            assert_eq!(l.check(ip, t0), None);
            l.failed(ip, t0);
        }
        let wait = l.check(ip, t0).expect("locked out after the burst");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(l.check(other, t0), None, "others are not affected");
        // One failure earned back per second.
        assert_eq!(l.check(ip, t0 + Duration::from_millis(1100)), None);
        l.failed(ip, t0 + Duration::from_millis(1100));
        assert!(l.check(ip, t0 + Duration::from_millis(1200)).is_some());
    }

    #[test]
    fn log_limiter_counts_what_it_holds_back() {
        let l = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.due(t0), Some(0));
        assert_eq!(l.due(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.due(t0 + Duration::from_millis(20)), None);
        assert_eq!(l.due(t0 + Duration::from_millis(1001)), Some(2));
    }

    #[test]
    fn a_full_table_evicts_the_longest_waiting_and_never_a_busy_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut keep = Vec::new();
        let mut conn = || {
            let c = TcpStream::connect(addr).unwrap();
            let (s, peer) = listener.accept().unwrap();
            keep.push(c);
            (s, peer)
        };
        let slots = Slots::default();
        let (a, pa) = conn();
        let (b, pb) = conn();
        let Admit::Yes(ia) = slots.admit(&a, pa, 2) else {
            panic!()
        };
        std::thread::sleep(Duration::from_millis(2));
        let Admit::Yes(ib) = slots.admit(&b, pb, 2) else {
            panic!()
        };
        // Full: the older waiting one (a) makes room.
        let (c, pc) = conn();
        let Admit::Yes(_) = slots.admit(&c, pc, 2) else {
            panic!()
        };
        assert_eq!(slots.len(), 2);
        let mut byte = [0u8; 1];
        use std::io::Read;
        assert_eq!((&a).read(&mut byte).unwrap(), 0, "a was shut down");
        // b busy, c waiting: c goes next; with both busy, a newcomer gets Busy.
        slots.set_waiting(ib, false);
        let (d, pd) = conn();
        let Admit::Yes(id) = slots.admit(&d, pd, 2) else {
            panic!()
        };
        slots.set_waiting(id, false);
        let (e, pe) = conn();
        assert_eq!(slots.admit(&e, pe, 2), Admit::Busy);
        slots.remove(ia); // already gone: no effect
        assert_eq!(slots.len(), 2);
    }
}
