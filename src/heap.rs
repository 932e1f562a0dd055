//! The process's memory allocator: jemalloc, and what it reports.
//!
//! Why not the C library's malloc: its per-thread arenas fragment under the pattern the
//! workers have (a worker allocates its periodic stats delta, the stats thread frees it), and
//! the resident set crept by about 0.5 MiB a minute under steady load while the live heap
//! stayed the same (heaptrack; perf/RESULTS.md, "soak memory"). jemalloc gives freed pages
//! back to the kernel on a decay timer (about 10 s), as Pingora does with it.
//!
//! [`figures`] reads jemalloc's own counters for `/stats` and `/metrics`: bytes the program
//! holds (`allocated`) beside the pages the allocator keeps resident for them (`resident`).
//! A leak shows in the first; fragmentation or retained free pages in the gap between them.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Gives the heap's free pages back to the kernel now (jemalloc would after its decay time,
/// about 10 s): after a burst, when an idle worker gave its buffer memory back. Takes every
/// arena's lock once: not for the hot path.
pub fn purge() {
    if !crate::sys::purge_heap() {
        log::debug!("jemalloc refused to purge its arenas");
    }
}

/// The after-burst relief (per worker): shrinking tables the burst grew and purging the heap
/// runs at most once per this interval. Under load that rises and falls, each second's trim
/// gives buffer pages back, and without a limit the relief would copy the tables and have
/// jemalloc give back (then fault in again) its free pages every second. Ten seconds is
/// jemalloc's own decay time for free pages, so a purge more often than that would not keep
/// the resident set much lower over time, and an idle proxy still gives a burst's memory back
/// within about one interval. A worker that was quiet for a whole trim interval (at most
/// [`QUIET_EVENTS`] engine events: idle keep-alive connections, a health check) does not wait
/// for it: the copy and the purge cost nothing that load would feel, and a proxy left idle
/// after a burst gives its memory back within a few seconds.
pub const RELIEF_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// At most this many engine events in a trim interval (a second) is a quiet worker.
pub const QUIET_EVENTS: usize = 64;

/// A table's unused capacity below this many bytes is not worth a copy of the table: 64 KiB
/// is 16 pages, under 0.1% of a worker's buffer pool at the defaults, and a table whose slack
/// is that small costs little to keep.
pub const MIN_SLACK_BYTES: usize = 64 << 10;

/// Whether a table of `capacity` entries of `entry_size` bytes, `len` of them in use, should
/// give its unused capacity back (down to `keep` entries, its start-up size): a quarter or
/// more of it unused, and at least [`MIN_SLACK_BYTES`] of it.
pub fn slack_worth_giving_back(
    len: usize,
    capacity: usize,
    entry_size: usize,
    keep: usize,
) -> bool {
    let target = len.max(keep);
    capacity > keep
        && len < capacity / 4 * 3
        && capacity.saturating_sub(target).saturating_mul(entry_size) >= MIN_SLACK_BYTES
}

/// When the after-burst relief may run: asked for ([`Relief::wanted`]) after a trim gave
/// buffer memory back, run when asked for and at least [`RELIEF_INTERVAL`] after the last
/// relief that did work, or at once when the worker was quiet. A request made too soon waits
/// (it is not lost: the burst's slack goes once the interval is over or the worker is quiet).
/// The time is passed in (the worker's loop clock), so tests need no sleeps.
#[derive(Debug, Default)]
pub struct Relief {
    pending: bool,
    last: Option<std::time::Instant>,
}

impl Relief {
    /// A trim gave buffer memory back: a burst may be over.
    pub fn wanted(&mut self) {
        self.pending = true;
    }

    /// Whether the relief should run now (`quiet`: the worker handled at most
    /// [`QUIET_EVENTS`] events since the last trim); if so, the request is taken (call
    /// [`Relief::ran`] after it).
    pub fn due(&mut self, now: std::time::Instant, quiet: bool) -> bool {
        let due = self.pending
            && (quiet
                || self
                    .last
                    .is_none_or(|last| now.saturating_duration_since(last) >= RELIEF_INTERVAL));
        if due {
            self.pending = false;
        }
        due
    }

    /// The relief ran at `now`; `did_work`: it shrank something (and purged). A relief that
    /// found nothing to do does not hold the next one back.
    pub fn ran(&mut self, now: std::time::Instant, did_work: bool) {
        if did_work {
            self.last = Some(now);
        }
    }
}

/// jemalloc's view of the heap, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapFigures {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in physically resident pages the allocator holds (live data, its metadata, and
    /// free pages not yet given back).
    pub resident: u64,
}

/// Current figures (refreshes jemalloc's statistics epoch first). `None` if jemalloc cannot
/// report them (never expected; callers show nothing rather than a wrong zero).
pub fn figures() -> Option<HeapFigures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(HeapFigures {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests here measure the process's heap: one at a time (other tests of the crate
    /// allocate little).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn figures_follow_a_live_allocation() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // The figures are the whole process's, and the crate's other tests allocate and free
        // meanwhile: up to five tries, and margins of 256 KiB.
        let mut last = String::new();
        for _ in 0..5 {
            let before = figures().expect("jemalloc reports its statistics");
            let block = vec![7u8; 8 << 20];
            let during = figures().expect("jemalloc reports its statistics");
            drop(block);
            let after = figures().expect("jemalloc reports its statistics");
            if during.allocated + (256 << 10) >= before.allocated + (8 << 20)
                && during.resident >= during.allocated / 2
                && after.allocated + (8 << 20) <= during.allocated + (256 << 10)
            {
                return;
            }
            last = format!("{before:?} -> {during:?} -> {after:?}");
        }
        panic!("the figures did not follow an 8 MiB allocation: {last}");
    }

    /// The relief runs when wanted, then not again within the interval however often it is
    /// wanted (under fluctuating load: every second); a request made meanwhile waits for the
    /// interval's end, and a relief that did nothing does not hold the next one back.
    #[test]
    fn the_relief_runs_at_most_once_per_interval() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let mut r = Relief::default();
        assert!(!r.due(at(0), false), "not wanted yet");
        r.wanted();
        assert!(r.due(at(0), false));
        r.ran(at(0), true);
        assert!(!r.due(at(0), false), "the request was taken");
        // Wanted every second for the next 9 s: none runs.
        for s in 1..10 {
            r.wanted();
            assert!(!r.due(at(s), false), "second {s}");
        }
        // The request waits (no further `wanted`) and runs once the interval is over.
        assert!(r.due(at(10), false));
        r.ran(at(10), false);
        // That one found nothing to do: the next request runs at once.
        r.wanted();
        assert!(r.due(at(11), false));
        r.ran(at(11), true);
        r.wanted();
        assert!(!r.due(at(20), false));
        assert!(r.due(at(21), false));
        // A clock read out of order never panics or runs early.
        r.ran(at(21), true);
        r.wanted();
        assert!(!r.due(at(5), false));
        // A quiet worker does not wait for the interval (the request above still waits);
        // a relief nobody wants never runs.
        assert!(r.due(at(22), true), "quiet: at once");
        r.ran(at(22), true);
        assert!(!r.due(at(22), true), "not wanted");
        r.wanted();
        assert!(!r.due(at(23), false), "busy again: the interval holds");
        assert!(r.due(at(24), true), "quiet again");
    }

    /// Slack worth a copy: a quarter of the table unused and at least 64 KiB of it; never
    /// below the start-up size.
    #[test]
    fn only_large_slack_is_worth_a_copy() {
        // 8192 entries of 248 B, 5000 in use: 3192 unused (~773 KiB).
        assert!(slack_worth_giving_back(5000, 8192, 248, 1024));
        // The same table with 6200 in use: less than a quarter unused.
        assert!(!slack_worth_giving_back(6200, 8192, 248, 1024));
        // Small entries: 2048 of 16 B, 10 in use: ~16 KiB unused above the start-up size.
        assert!(!slack_worth_giving_back(10, 2048, 16, 1024));
        // At the start-up size: nothing to give back.
        assert!(!slack_worth_giving_back(0, 1024, 4096, 1024));
        // Only the part above the start-up size counts: 76 unused entries of 800 B (59 KiB)
        // are not worth a copy; of 1 KiB (76 KiB) they are.
        assert!(!slack_worth_giving_back(0, 1100, 800, 1024));
        assert!(slack_worth_giving_back(0, 1100, 1024, 1024));
    }

    #[test]
    fn a_purge_gives_freed_pages_back_at_once() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // 32 MiB in 64 KiB blocks (past the thread cache), written, then freed: jemalloc keeps
        // the pages until its decay time (10 s); the purge gives them back now.
        let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 << 10]).collect();
        let during = figures().expect("jemalloc reports its statistics");
        drop(blocks);
        purge();
        let after = figures().expect("jemalloc reports its statistics");
        assert!(
            after.resident + (16 << 20) <= during.resident,
            "{during:?} -> {after:?}"
        );
    }
}
