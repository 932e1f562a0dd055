//! The service watchdog: systemd restarts the service when `WATCHDOG=1` stops arriving within
//! `WatchdogSec=`. We send it at half of `WATCHDOG_USEC`, and only when every worker and the
//! control thread have made progress since the previous one, so a worker stuck in a loop or a
//! blocking call gets the process restarted instead of silently serving less.
//!
//! Progress of a worker is its heartbeat: a counter the worker bumps once per event-loop turn
//! ([`beat`]). A worker turns at least every 100 ms even when idle (its poll timeout), so a
//! counter that has not moved over a whole watchdog half-period means a stuck worker. The
//! control thread shows progress by running the check at all (it is the thread that sends).
//!
//! HOT PATH: [`beat`] runs once per worker loop turn: one relaxed load and store of a counter
//! on the worker's own cache line, and one relaxed load for the test-only stall switch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// As many as `server.workers` allows.
pub const MAX_WORKERS: usize = 1024;

/// One counter per cache line: workers never share a line.
#[repr(align(64))]
struct Beat(AtomicU64);

static BEATS: [Beat; MAX_WORKERS] = [const { Beat(AtomicU64::new(0)) }; MAX_WORKERS];

/// Test-only stall switch (see [`arm_test_stall_from_env`]): the worker that stalls, or
/// `usize::MAX`.
static STALL_WORKER: AtomicUsize = AtomicUsize::new(usize::MAX);
static STALL: OnceLock<(Instant, Duration)> = OnceLock::new();

/// The environment variable of the test-only stall switch.
pub const STALL_ENV: &str = "SWITCHYARD_TEST_STALL_WORKER";

/// Called by worker `id` once per loop turn.
#[inline]
pub fn beat(id: usize) {
    if let Some(b) = BEATS.get(id) {
        // Only this worker writes its counter: no read-modify-write needed.
        b.0.store(
            b.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }
    if STALL_WORKER.load(Ordering::Relaxed) == id {
        stall(id);
    }
}

/// The heartbeat of worker `id` (loop turns so far).
pub fn beats(id: usize) -> u64 {
    BEATS.get(id).map_or(0, |b| b.0.load(Ordering::Relaxed))
}

#[cold]
fn stall(id: usize) {
    let Some(&(at, length)) = STALL.get() else {
        return;
    };
    if Instant::now() < at {
        return;
    }
    STALL_WORKER.store(usize::MAX, Ordering::Relaxed);
    log::warn!("worker {id}: stalling for {length:?} ({STALL_ENV}, a test-only switch)");
    std::thread::sleep(length);
    log::warn!("worker {id}: stall over");
}

/// TEST ONLY. `SWITCHYARD_TEST_STALL_WORKER=<worker>:<after>:<for>` (durations as in the
/// config, e.g. `0:1s:3s`) makes that worker's loop block once, `after` the start, for `for`:
/// a real stall, which the watchdog must notice. Not a feature: it exists so the watchdog
/// logic can be tested against a real stuck worker.
pub fn arm_test_stall_from_env() {
    let Ok(spec) = std::env::var(STALL_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let parsed = match parts.as_slice() {
        [w, after, length] => (|| {
            let w: usize = w.parse().ok()?;
            let after = humantime::parse_duration(after).ok()?;
            let length = humantime::parse_duration(length).ok()?;
            Some((w, after, length))
        })(),
        _ => None,
    };
    match parsed {
        Some((w, after, length)) => {
            let _ = STALL.set((Instant::now() + after, length));
            STALL_WORKER.store(w, Ordering::Relaxed);
            log::warn!("{STALL_ENV}: worker {w} will stall {after:?} from now for {length:?}");
        }
        None => log::warn!("{STALL_ENV}={spec:?} ignored (expected <worker>:<after>:<for>)"),
    }
}

/// `WATCHDOG_USEC` when it applies to this process (`WATCHDOG_PID` unset or ours).
pub fn interval_from_env() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Decides, every half period, whether to send `WATCHDOG=1`.
pub struct Watchdog {
    /// Half of `WATCHDOG_USEC`.
    pub every: Duration,
    last_beats: Vec<u64>,
    next: Instant,
    /// The previous check found a stuck worker (logged once per episode).
    stuck: bool,
}

impl Watchdog {
    pub fn new(timeout: Duration, workers: usize) -> Watchdog {
        let every = (timeout / 2).max(Duration::from_millis(10));
        Watchdog {
            every,
            last_beats: (0..workers).map(beats).collect(),
            // The first check a whole period from now: the workers need that long to show
            // progress (checking at once reported every worker stuck at start-up).
            next: Instant::now() + every,
            stuck: false,
        }
    }

    /// When the next check is due.
    pub fn due_at(&self) -> Instant {
        self.next
    }

    /// At or after [`Watchdog::due_at`]: true when every worker that is still running turned
    /// its loop since the previous check. `running(i)`: worker `i` has not exited (a worker
    /// that finished, at shutdown, is not stuck).
    pub fn check(&mut self, now: Instant, running: impl Fn(usize) -> bool) -> bool {
        self.next = now + self.every;
        let mut stuck = Vec::new();
        for (i, last) in self.last_beats.iter_mut().enumerate() {
            let b = beats(i);
            if b == *last && running(i) {
                stuck.push(i);
            }
            *last = b;
        }
        if stuck.is_empty() {
            if self.stuck {
                log::warn!("watchdog: every worker makes progress again");
            }
            self.stuck = false;
            return true;
        }
        if !self.stuck {
            log::error!(
                "watchdog: worker(s) {stuck:?} made no progress for {:?}; not telling the \
                 service manager we are alive",
                self.every
            );
        }
        self.stuck = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_worker_fails_the_check() {
        // Workers 1000 and 1001 are not used by other unit tests.
        let mut w = Watchdog {
            every: Duration::from_millis(1),
            last_beats: Vec::new(),
            next: Instant::now(),
            stuck: false,
        };
        w.last_beats = vec![0; 1002];
        for i in 0..1002 {
            w.last_beats[i] = beats(i);
            beat(i);
        }
        assert!(w.check(Instant::now(), |_| true));
        for i in 0..1001 {
            beat(i);
        }
        assert!(
            !w.check(Instant::now(), |_| true),
            "worker 1001 did not beat"
        );
        for i in 0..1001 {
            beat(i);
        }
        assert!(
            w.check(Instant::now(), |i| i != 1001),
            "an exited worker is not stuck"
        );
    }
}
