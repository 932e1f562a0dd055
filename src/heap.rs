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

    #[test]
    fn figures_follow_a_live_allocation() {
        let before = figures().expect("jemalloc reports its statistics");
        let block = vec![7u8; 8 << 20];
        let during = figures().expect("jemalloc reports its statistics");
        assert!(
            during.allocated >= before.allocated + (8 << 20) - 4096,
            "{before:?} -> {during:?}"
        );
        assert!(during.resident >= during.allocated / 2, "{during:?}");
        drop(block);
        let after = figures().expect("jemalloc reports its statistics");
        assert!(
            after.allocated + (8 << 20) - 4096 <= during.allocated,
            "{during:?} -> {after:?}"
        );
    }
}
