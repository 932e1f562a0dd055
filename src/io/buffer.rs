//! Per-worker pool of fixed-size buffers, preallocated as one region.
//!
//! The region is one anonymous mapping ([`crate::sys::Region`]), so the kernel backs pages
//! only when a buffer is first used; the free list is LIFO so the same warm buffers are reused.
//! A [`Buf`] is a small handle (index + fill window), held by a session only while bytes are in
//! flight: an idle connection holds none. `checkout` returning `None` is back-pressure, never a
//! panic.
//!
//! Trimming: a burst (a connection storm, many uploads at once) warms many buffers that an
//! idle proxy no longer needs. [`BufferPool::trim`], called by the worker once per
//! [`TRIM_INTERVAL`], gives back the pages of the buffers that stayed at the bottom of the free
//! list for the whole interval (below the list's low-water mark since the last trim) and were
//! used since their pages were last given back. Because the list is LIFO, the bottom entries
//! sit above nothing that moved: the free list's bottom `clean` entries are known to hold no
//! memory (fresh at start, or given back), everything above may. A checkout lowers the
//! low-water mark (one `min`); the trim lowers `clean` to it, gives back at most
//! [`TRIM_BATCH`] buffers above `clean` (adjacent ones in one call) and raises `clean` past
//! them. The hot set (what was checked out during the interval) is never touched.
//!
//! The last `reserve` free regular buffers are kept for work already in progress (HAProxy's
//! `tune.buffers.reserve`): [`BufferPool::checkout_new`], for new work (the next request's
//! head, a new connection's first bytes), fails while the pool is down to them. Without it,
//! more waiting requests than buffers hold every buffer with their heads, and the exchanges
//! already in progress cannot read their answers: a stall instead of a slow-down. New work
//! already begun (a request whose head is in, needing a buffer for its rewritten head) may
//! take half of the reserve ([`BufferPool::checkout_begun`]): it goes before new work not yet
//! begun, and work in progress keeps the other half.
//!
//! Hot path: no allocation after `new`.

/// How often the worker trims its pool (and the io_uring engine its buffer ring).
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most buffers given back per trim (a few ms of `madvise` at most).
pub const TRIM_BATCH: usize = 1024;

/// A checked-out buffer: index into the pool plus the window `[start, end)` of pending bytes.
/// Deliberately neither `Clone` nor `Copy`: it must go back through [`BufferPool::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct Buf {
    idx: u32,
    start: u32,
    end: u32,
}

impl Buf {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    /// Marks `n` pending bytes as sent.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n as u32;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// Marks `n` bytes of the spare tail as filled.
    #[inline]
    pub fn fill(&mut self, n: usize) {
        self.end += n as u32;
    }
}

/// Two size classes in one region: `count` buffers of `size`, then `large_count` of
/// `large_size` (for HTTP request heads that outgrow a regular buffer). A handle's index says
/// its class; every accessor below works for both.
pub struct BufferPool {
    mem: crate::sys::Region,
    size: usize,
    free: Vec<u32>,
    count: usize,
    large_size: usize,
    large_count: usize,
    large_free: Vec<u32>,
    /// Free regular buffers only work in progress may take.
    reserve: usize,
    /// Trim bookkeeping of each class (see the module doc).
    trim: [TrimMarks; 2],
    /// Scratch for one trim's indices (sorted to coalesce runs); capacity [`TRIM_BATCH`].
    scratch: Vec<u32>,
}

/// One class's trim marks: `clean` bottom entries of its free list hold no memory; `low` is
/// the list's shortest length since the last trim.
#[derive(Debug, Clone, Copy)]
struct TrimMarks {
    clean: usize,
    low: usize,
}

/// What one [`BufferPool::trim`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Buffers whose pages were given back.
    pub buffers: usize,
    /// Bytes given back (whole pages).
    pub bytes: usize,
}

impl BufferPool {
    pub fn new(size: usize, count: usize) -> BufferPool {
        BufferPool::with_large(size, count, 0, 0)
    }

    pub fn with_large(
        size: usize,
        count: usize,
        large_size: usize,
        large_count: usize,
    ) -> BufferPool {
        let total = size * count + large_size * large_count;
        BufferPool {
            mem: crate::sys::Region::new(total),
            size,
            // Highest index last: LIFO hands out buffer 0 first and keeps the hot set small.
            free: (0..count as u32).rev().collect(),
            count,
            large_size,
            large_count,
            large_free: (count as u32..(count + large_count) as u32).rev().collect(),
            // Fresh memory: every free buffer is clean.
            trim: [
                TrimMarks {
                    clean: count,
                    low: count,
                },
                TrimMarks {
                    clean: large_count,
                    low: large_count,
                },
            ],
            scratch: Vec::with_capacity(TRIM_BATCH),
            reserve: 0,
        }
    }

    /// Gives back the pages of buffers that stayed unused at the bottom of the free lists
    /// since the last trim (at most [`TRIM_BATCH`] buffers; the rest at the next trim), and
    /// starts a new interval. Called by the worker every [`TRIM_INTERVAL`].
    pub fn trim(&mut self) -> Trimmed {
        let mut done = Trimmed::default();
        for class in 0..2 {
            let list_len = if class == 0 {
                self.free.len()
            } else {
                self.large_free.len()
            };
            let m = &mut self.trim[class];
            m.clean = m.clean.min(m.low);
            let end = m.low.min(m.clean + (TRIM_BATCH - done.buffers));
            let from = m.clean;
            m.clean = end;
            m.low = list_len;
            if end == from {
                continue;
            }
            let list = if class == 0 {
                &self.free
            } else {
                &self.large_free
            };
            self.scratch.clear();
            self.scratch.extend_from_slice(&list[from..end]);
            done.buffers += end - from;
            done.bytes += self.release_scratch();
        }
        done
    }

    /// Gives back the pages of buffers that are checked out but hold nothing anyone will read
    /// (the io_uring buffer ring's lent buffers that the kernel has not taken): their bytes
    /// read as zeros afterwards, and writing into them takes fresh pages. At most
    /// [`TRIM_BATCH`] buffers (the rest are ignored). Returns the bytes given back.
    pub fn give_back_held<'a>(&mut self, bufs: impl Iterator<Item = &'a Buf>) -> usize {
        self.scratch.clear();
        self.scratch.extend(bufs.take(TRIM_BATCH).map(|b| b.idx));
        self.release_scratch()
    }

    /// Gives back the pages of the buffers in `scratch` (sorted here; adjacent buffers in one
    /// call). Returns the bytes given back.
    fn release_scratch(&mut self) -> usize {
        self.scratch.sort_unstable();
        let mut bytes = 0;
        let mut i = 0;
        while i < self.scratch.len() {
            let first = self.scratch[i];
            let mut last = first;
            while i + 1 < self.scratch.len() && self.scratch[i + 1] == last + 1 {
                i += 1;
                last = self.scratch[i];
            }
            i += 1;
            let (start, _) = self.slot(first);
            let (lstart, lcap) = self.slot(last);
            bytes += self.mem.release(start, lstart + lcap);
        }
        bytes
    }

    /// Buffers that may hold memory: checked out, or free but used since their pages were
    /// last given back (`/stats` `buffers_warm`).
    pub fn warm(&self) -> usize {
        let [small, large] = self.trim;
        (self.count - small.clean.min(small.low)) + (self.large_count - large.clean.min(large.low))
    }

    /// The default reserve of a pool of `count` buffers: an eighth, at least 32, and never
    /// more than half the pool.
    pub fn default_reserve(count: usize) -> usize {
        (count / 8).max(32).min(count / 2)
    }

    /// Keeps the last `n` free regular buffers for work in progress (at most all but one).
    pub fn set_reserve(&mut self, n: usize) {
        self.reserve = n.min(self.count.saturating_sub(1));
    }

    #[inline]
    pub fn reserve(&self) -> usize {
        self.reserve
    }

    /// Whether new work may take a buffer now (more than the reserve is free).
    #[inline]
    pub fn above_reserve(&self) -> bool {
        self.free.len() > self.reserve
    }

    /// Whether new work already begun may take a buffer now (more than half the reserve is
    /// free).
    #[inline]
    pub fn admits_begun(&self) -> bool {
        self.free.len() > self.reserve / 2
    }

    /// Start offset and capacity of buffer `idx`.
    #[inline]
    fn slot(&self, idx: u32) -> (usize, usize) {
        let i = idx as usize;
        if i < self.count {
            (i * self.size, self.size)
        } else {
            (
                self.count * self.size + (i - self.count) * self.large_size,
                self.large_size,
            )
        }
    }

    /// How many bytes this buffer holds when full.
    #[inline]
    pub fn capacity(&self, b: &Buf) -> usize {
        self.slot(b.idx).1
    }

    /// Size of the large class (0 when there is none).
    #[inline]
    pub fn large_size(&self) -> usize {
        self.large_size
    }

    /// A buffer of the large class; `None` when there is no large class or all are in use.
    #[inline]
    pub fn checkout_large(&mut self) -> Option<Buf> {
        let idx = self.large_free.pop()?;
        let m = &mut self.trim[1];
        m.low = m.low.min(self.large_free.len());
        Some(Buf {
            idx,
            start: 0,
            end: 0,
        })
    }

    #[inline]
    pub fn buffer_size(&self) -> usize {
        self.size
    }
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len()
    }
    #[inline]
    pub fn in_use(&self) -> usize {
        self.count - self.free.len()
    }

    #[inline]
    pub fn checkout(&mut self) -> Option<Buf> {
        let idx = self.free.pop()?;
        let m = &mut self.trim[0];
        m.low = m.low.min(self.free.len());
        Some(Buf {
            idx,
            start: 0,
            end: 0,
        })
    }

    /// A buffer for new work (see the module doc): `None` while no more than the reserve is
    /// free.
    #[inline]
    pub fn checkout_new(&mut self) -> Option<Buf> {
        if self.free.len() <= self.reserve {
            return None;
        }
        self.checkout()
    }

    /// A buffer for new work already begun (see the module doc): `None` while no more than
    /// half the reserve is free.
    #[inline]
    pub fn checkout_begun(&mut self) -> Option<Buf> {
        if !self.admits_begun() {
            return None;
        }
        self.checkout()
    }

    #[inline]
    pub fn release(&mut self, b: Buf) {
        if (b.idx as usize) < self.count {
            debug_assert!(!self.free.contains(&b.idx));
            self.free.push(b.idx);
        } else {
            debug_assert!(!self.large_free.contains(&b.idx));
            self.large_free.push(b.idx);
        }
    }

    /// Gives back a buffer that was not used during the current trim interval (one the
    /// io_uring buffer ring lent and takes back unused): when nothing was drawn from its
    /// class since the last trim, it joins the part the next trim gives back.
    pub fn release_idle(&mut self, b: Buf) {
        let class = usize::from(b.idx as usize >= self.count);
        let untouched = self.trim[class].low == self.class_len(class);
        self.release(b);
        if untouched {
            self.trim[class].low = self.class_len(class);
        }
    }

    #[inline]
    fn class_len(&self, class: usize) -> usize {
        if class == 0 {
            self.free.len()
        } else {
            self.large_free.len()
        }
    }

    /// The pending bytes.
    #[inline]
    pub fn data(&self, b: &Buf) -> &[u8] {
        let (base, _) = self.slot(b.idx);
        &self.mem[base + b.start as usize..base + b.end as usize]
    }

    /// The pending bytes, to change in place (fault injection corrupts response bytes).
    #[inline]
    pub fn data_mut(&mut self, b: &Buf) -> &mut [u8] {
        let (base, _) = self.slot(b.idx);
        &mut self.mem[base + b.start as usize..base + b.end as usize]
    }

    /// The pending bytes of `src` and the free tail of `dst` at once, for writing a transformed
    /// copy (e.g. a rewritten HTTP head). `None` when both handles are the same buffer.
    pub fn data_and_spare(&mut self, src: &Buf, dst: &mut Buf) -> Option<(&[u8], &mut [u8])> {
        if src.idx == dst.idx {
            return None;
        }
        let (s_base, _) = self.slot(src.idx);
        let (d_base, d_cap) = self.slot(dst.idx);
        let (s_range, d_range) = (
            s_base + src.start as usize..s_base + src.end as usize,
            d_base + dst.end as usize..d_base + d_cap,
        );
        if s_base < d_base {
            let (lo, hi) = self.mem.split_at_mut(d_base);
            Some((
                &lo[s_range],
                &mut hi[d_range.start - d_base..d_range.end - d_base],
            ))
        } else {
            let (lo, hi) = self.mem.split_at_mut(s_base);
            Some((
                &hi[s_range.start - s_base..s_range.end - s_base],
                &mut lo[d_range],
            ))
        }
    }

    /// The free tail to read into. Compacts first when the tail is full but the head has room.
    #[inline]
    pub fn spare(&mut self, b: &mut Buf) -> &mut [u8] {
        let (base, cap) = self.slot(b.idx);
        if b.end as usize == cap && b.start > 0 {
            self.compact(b, base);
        }
        &mut self.mem[base + b.end as usize..base + cap]
    }

    /// [`BufferPool::spare`]'s compaction: the pending bytes of `b` (at `base`) moved to its
    /// start. Out of line, so that the common case (room at the tail) inlines into each
    /// receive without the register saves a `memmove` call needs.
    #[cold]
    #[inline(never)]
    fn compact(&mut self, b: &mut Buf, base: usize) {
        let (s, e) = (base + b.start as usize, base + b.end as usize);
        self.mem.copy_within(s..e, base);
        b.end -= b.start;
        b.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_fill_consume_release() {
        let mut p = BufferPool::new(8, 2);
        let mut a = p.checkout().expect("a");
        let mut b = p.checkout().expect("b");
        assert!(p.checkout().is_none(), "exhaustion is None, not a panic");
        p.spare(&mut a)[..3].copy_from_slice(b"abc");
        a.fill(3);
        p.spare(&mut b)[..1].copy_from_slice(b"z");
        b.fill(1);
        assert_eq!(p.data(&a), b"abc");
        assert_eq!(p.data(&b), b"z");
        a.consume(1);
        assert_eq!(p.data(&a), b"bc");
        a.consume(2);
        assert!(a.is_empty());
        p.release(a);
        assert_eq!(p.available(), 1);
        p.release(b);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn data_and_spare_borrows_two_buffers() {
        let mut p = BufferPool::new(8, 3);
        let mut a = p.checkout().expect("a");
        let mut b = p.checkout().expect("b");
        p.spare(&mut a)[..3].copy_from_slice(b"abc");
        a.fill(3);
        p.spare(&mut b)[..1].copy_from_slice(b"z");
        b.fill(1);
        let (d, s) = p.data_and_spare(&a, &mut b).expect("distinct");
        assert_eq!(d, b"abc");
        assert_eq!(s.len(), 7);
        s[..3].copy_from_slice(d);
        b.fill(3);
        assert_eq!(p.data(&b), b"zabc");
        let (d, s) = p.data_and_spare(&b, &mut a).expect("distinct, other order");
        assert_eq!((d, s.len()), (&b"zabc"[..], 5));
        p.release(a);
        p.release(b);
    }

    #[test]
    fn large_class_is_separate_and_works_like_the_small_one() {
        let mut p = BufferPool::with_large(4, 2, 16, 1);
        let mut small = p.checkout().expect("small");
        let mut big = p.checkout_large().expect("large");
        assert!(p.checkout_large().is_none());
        assert_eq!((p.capacity(&small), p.capacity(&big)), (4, 16));
        p.spare(&mut small).copy_from_slice(b"abcd");
        small.fill(4);
        let (d, s) = p.data_and_spare(&small, &mut big).expect("distinct");
        s[..4].copy_from_slice(d);
        big.fill(4);
        assert_eq!(p.spare(&mut big).len(), 12);
        assert_eq!(p.data(&big), b"abcd");
        p.release(big);
        p.release(small);
        assert_eq!(p.available(), 2);
        assert!(
            p.checkout_large().is_some(),
            "a released large buffer goes back to its class"
        );
    }

    /// Checks out `n` buffers, writes into each, and gives them back (LIFO: the same `n`
    /// buffers each time).
    fn churn(p: &mut BufferPool, n: usize) {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut b = p.checkout().expect("buffer");
            p.spare(&mut b)[0] = 0xaa;
            b.fill(1);
            held.push(b);
        }
        for b in held {
            p.release(b);
        }
    }

    #[test]
    fn trim_gives_back_what_stayed_unused_for_a_whole_interval() {
        let mut p = BufferPool::new(4096, 8);
        assert_eq!(p.trim(), Trimmed::default(), "fresh memory is clean");
        assert_eq!(p.warm(), 0);
        churn(&mut p, 3);
        assert_eq!(p.warm(), 3);
        // Used during this interval: the hot set, kept.
        assert_eq!(p.trim(), Trimmed::default());
        assert_eq!(p.warm(), 3);
        // Unused for a whole interval: given back, page by page.
        assert_eq!(
            p.trim(),
            Trimmed {
                buffers: 3,
                bytes: 3 * 4096
            }
        );
        assert_eq!(p.warm(), 0);
        assert_eq!(p.trim(), Trimmed::default(), "nothing twice");
        let mut b = p.checkout().expect("buffer");
        assert!(
            p.spare(&mut b).iter().all(|&x| x == 0),
            "given-back pages read as zeros"
        );
        p.release(b);
    }

    #[test]
    fn trim_keeps_the_hot_set_and_takes_the_rest_of_a_burst() {
        let mut p = BufferPool::new(4096, 16);
        churn(&mut p, 10); // a burst
        p.trim();
        churn(&mut p, 2); // steady traffic: the two top buffers
        assert_eq!(p.trim().buffers, 8, "the burst's other 8 buffers");
        assert_eq!(p.warm(), 2);
        churn(&mut p, 2);
        assert_eq!(p.trim().buffers, 0, "the hot set stays");
        assert_eq!(p.trim().buffers, 2, "until it cools down");
        assert_eq!(p.warm(), 0);
    }

    #[test]
    fn trim_is_bounded_per_call() {
        let n = TRIM_BATCH + 10;
        let mut p = BufferPool::new(4096, n);
        churn(&mut p, n);
        p.trim();
        assert_eq!(p.trim().buffers, TRIM_BATCH);
        assert_eq!(p.warm(), 10);
        assert_eq!(p.trim().buffers, 10, "the rest at the next trim");
        assert_eq!(p.warm(), 0);
    }

    #[test]
    fn trim_keeps_pages_shared_with_buffers_in_use() {
        // Four 1 KiB buffers per page.
        let mut p = BufferPool::new(1024, 8);
        churn(&mut p, 8);
        let mut keep = p.checkout().expect("buffer 0");
        p.spare(&mut keep)[..2].copy_from_slice(b"hi");
        keep.fill(2);
        p.trim();
        let t = p.trim();
        assert_eq!(t.buffers, 7);
        assert_eq!(t.bytes, 4096, "only the page without a buffer in use");
        assert_eq!(p.data(&keep), b"hi");
        p.release(keep);
    }

    #[test]
    fn buffers_given_back_unused_join_the_cold_part() {
        let mut p = BufferPool::new(4096, 8);
        // Lent (say to the kernel) during a burst, used, and back.
        churn(&mut p, 4);
        let lent: Vec<Buf> = (0..2).map(|_| p.checkout().expect("buffer")).collect();
        p.trim();
        // A quiet interval: nothing drawn; the lent buffers come back unused.
        for b in lent {
            p.release_idle(b);
        }
        assert_eq!(p.trim().buffers, 4, "all four warm buffers at once");
        assert_eq!(p.warm(), 0);
        // Not so when the interval drew from the pool: then they are the hot set.
        let b = p.checkout().expect("buffer");
        let c = p.checkout().expect("buffer");
        p.release(b);
        p.release_idle(c);
        assert_eq!(p.trim().buffers, 0);
    }

    #[test]
    fn trim_covers_the_large_class() {
        let mut p = BufferPool::with_large(4096, 2, 8192, 2);
        let a = p.checkout_large().expect("large");
        let b = p.checkout_large().expect("large");
        p.release(a);
        p.release(b);
        assert_eq!(p.warm(), 2);
        p.trim();
        assert_eq!(
            p.trim(),
            Trimmed {
                buffers: 2,
                bytes: 2 * 8192
            }
        );
        assert_eq!(p.warm(), 0);
    }

    #[test]
    fn new_work_stops_at_the_reserve_work_in_progress_does_not() {
        let mut p = BufferPool::new(8, 6);
        p.set_reserve(2);
        assert_eq!(p.reserve(), 2);
        let mut new = Vec::new();
        while let Some(b) = p.checkout_new() {
            new.push(b);
        }
        assert_eq!(new.len(), 4, "new work takes all but the reserve");
        assert_eq!(p.available(), 2);
        assert!(!p.above_reserve());
        let a = p
            .checkout_begun()
            .expect("begun work takes half the reserve");
        assert!(
            !p.admits_begun() && p.checkout_begun().is_none(),
            "not more"
        );
        let b = p.checkout().expect("work in progress takes the rest");
        assert!(p.checkout().is_none() && p.checkout_new().is_none());
        p.release(a);
        assert!(
            p.checkout_new().is_none(),
            "one free, reserve 2: new work waits"
        );
        p.release(b);
        assert!(
            p.checkout_new().is_none(),
            "two free = the reserve: still waits"
        );
        p.release(new.pop().expect("one"));
        assert!(p.above_reserve());
        let c = p.checkout_new().expect("above the reserve again");
        assert_eq!(p.available(), 2);
        p.release(c);
        for b in new {
            p.release(b);
        }
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn the_reserve_never_takes_the_whole_pool_and_large_buffers_ignore_it() {
        let mut p = BufferPool::with_large(8, 2, 16, 1);
        p.set_reserve(10);
        assert_eq!(p.reserve(), 1, "at most all but one");
        let a = p.checkout_new().expect("one for new work");
        assert!(p.checkout_new().is_none());
        let l = p.checkout_large().expect("the large class has no reserve");
        p.release(l);
        p.release(a);
        assert_eq!(BufferPool::default_reserve(4096), 512);
        assert_eq!(BufferPool::default_reserve(128), 32);
        assert_eq!(BufferPool::default_reserve(16), 8);
        p.set_reserve(0);
        let (x, y) = (p.checkout_new(), p.checkout_new());
        assert!(x.is_some() && y.is_some(), "reserve 0: the pool as before");
        p.release(x.expect("x"));
        p.release(y.expect("y"));
    }

    #[test]
    fn spare_compacts_when_tail_full() {
        let mut p = BufferPool::new(4, 1);
        let mut a = p.checkout().expect("a");
        p.spare(&mut a).copy_from_slice(b"wxyz");
        a.fill(4);
        assert!(p.spare(&mut a).is_empty(), "full, nothing consumed");
        a.consume(3);
        let s = p.spare(&mut a);
        assert_eq!(s.len(), 3);
        assert_eq!(p.data(&a), b"z");
        p.release(a);
    }
}
