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
