//! The provided-buffer ring: pool buffers lent to the kernel for receives that name no buffer
//! (`Op::Recv(None)`), so a connection waiting for bytes holds none. The kernel picks one only
//! when bytes arrive (the receives are poll-first), and the completion says which (its buffer
//! id); the engine hands that buffer to the session and lends the ring a fresh one.
//!
//! There are two rings, two buffer groups: [`GROUP_ANY`] for receives of work in progress
//! (`Op::Recv(None)`) and [`GROUP_NEW`] for receives of new work (`Op::RecvNew`: the next
//! request's head, a new connection's first bytes). The second is refilled only while the pool
//! is above its reserve, so new work never takes the buffers kept for work in progress. Their
//! buffer ids differ (the new group's have the top bit set), so a completion's buffer id alone
//! says which ring it came from.
//!
//! The ring lends only what one loop turn needs ([`Share`]): the kernel takes lent buffers in
//! the order they were lent, so each buffer lent beyond a turn's needs makes every receive land
//! in a buffer used longer ago, whose lines and pages have left the caches (with 8,192 lent, the
//! kernel's copy into them cost 3–5× what it costs into a buffer just used: perf/RESULTS.md,
//! 2026-12-01 15:00). It starts with a few buffers; a turn in which receives found it empty
//! (`ENOBUFS`) raises the share once, to cover that turn's demand (used + starved) with
//! room to spare, up to a quarter of the pool; each trim interval it falls to what the busiest
//! turn of the interval needed. Its buffers stay checked out of the pool while lent, so
//! `BufferPool::in_use` counts them; the engine reports them apart (`buffers_provided`). When
//! the share falls, what is lent stays lent until used.
//!
//! Lent buffers that no receive used for a whole trim interval keep no memory:
//! [`BufRing::give_back_idle`] asks the kernel for the ring's head (`PBUF_STATUS`, 6.8+): the
//! entries from the head to our tail are the ones it has not taken, and those among them that
//! were lent before the previous call have waited a whole interval. Their pages are given back
//! (`MADV_DONTNEED`) while they stay in the ring: the kernel writes into them only after it
//! takes them, and a page given back is simply zero-filled again by that write. Only with
//! `DEFER_TASKRUN`, where the kernel takes ring buffers (almost) only inside this thread's
//! `io_uring_enter`.
//!
//! *Almost*: a receive the kernel runs on one of its io-wq threads takes (commits) its ring
//! buffer when it selects it, outside any enter of ours (`io_uring/kbuf.c`,
//! `io_should_commit`: `if (issue_flags & IO_URING_F_UNLOCKED) return true;`, then
//! `bl->head++` in `io_ring_buffer_select`). Our receives are poll-first on sockets, so they
//! reach io-wq only when arming their poll fails (`io_arm_apoll` returns `IO_APOLL_ABORTED`
//! when `io_req_alloc_apoll` cannot allocate; `io_queue_async` then calls `io_queue_iowq`):
//! rare, but possible under memory pressure. Such a receive could select a buffer between our
//! head read and the `madvise`, and write part of its bytes into pages that are then dropped.
//! So the head is read again after the `madvise` (head `H2`): every buffer given back in that
//! call whose ring position lies in `[H, H2)` may have been taken in the window and is marked
//! *tainted*. The kernel selects under the ring's lock and bumps the head before it writes a
//! byte, and `PBUF_STATUS` reads the head under the same lock, so a receive not counted in
//! `H2` selected its buffer after the `madvise` returned and writes into fresh pages only.
//! A completion that delivers a tainted buffer fails its receive (`EIO`, see the engine's
//! `op_done`) instead of handing on bytes that may be zeros, and the rings stop giving lent
//! buffers' pages back for good. No silent corruption either way.

use crate::io::{Buf, BufferPool};
use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// The buffer group of receives of work in progress.
pub(super) const GROUP_ANY: u16 = 0;
/// The buffer group of receives of new work.
pub(super) const GROUP_NEW: u16 = 1;
/// The new group's buffer ids start here.
const NEW_BID_BASE: u16 = 1 << 15;
/// Buffers lent at first.
const START: usize = 16;
/// Largest ring (entries).
const MAX_ENTRIES: usize = 4096;

pub(super) struct BufRing {
    base: NonNull<BufRingEntry>,
    /// The mapping `base` points into (unmapped when the ring drops: the kernel no longer
    /// uses it by then, unregistered or its ring closed; a registered ring's pages are pinned
    /// by the kernel until then, so unmapping early could not corrupt memory either).
    _map: crate::sys::Region,
    mask: u16,
    /// Our tail (published to the kernel after each addition).
    tail: u16,
    /// The lent buffers, by buffer id.
    slots: Vec<Option<Buf>>,
    free: Vec<u16>,
    /// Buffers lent now.
    lent: usize,
    registered: bool,
    /// The buffer group.
    bgid: u16,
    /// The first buffer id.
    bid_base: u16,
    /// How many to keep lent ([`Share`]).
    share: Share,
    /// The buffer id at each ring position (what `refill` wrote there).
    at: Vec<u16>,
    /// Our tail at the last [`BufRing::give_back_idle`]: entries before it were lent before.
    mark: u16,
    /// By buffer id: lent, and its pages given back since.
    cold: Vec<bool>,
    /// By buffer id: given back while the kernel may have been writing into it (its ring
    /// position was passed by the head between the head read and the second one after the
    /// `madvise`); a receive that delivers it fails (see the module doc).
    tainted: Vec<bool>,
    /// How many lent buffers are cold.
    cold_count: usize,
    /// Whether [`BufRing::give_back_idle`] may run (see the module doc); off for good once the
    /// kernel refuses `PBUF_STATUS` or the head moved outside an enter.
    idle_trim: bool,
    /// Scratch: the buffers one [`BufRing::give_back_idle`] gives back (capacity: the ring).
    scratch: Vec<u16>,
    /// Tests only: what the head read after the `madvise` adds to the kernel's answer (a head
    /// that moved in the window, without a real io-wq receive).
    #[cfg(test)]
    pub(super) fake_head_move: u16,
}

// SAFETY: the mapping is owned by this struct alone (the kernel only reads it); moving the
// struct to another thread moves that ownership with it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// A ring of buffer group `bgid` ([`GROUP_ANY`] or [`GROUP_NEW`]) for a pool of
    /// `pool_count` buffers (nothing registered yet).
    pub(super) fn new(pool_count: usize, bgid: u16) -> io::Result<BufRing> {
        // A power of two, at most a quarter of the pool (at least 1).
        let cap = (pool_count / 4).clamp(1, MAX_ENTRIES);
        let entries = 1usize << (usize::BITS - 1 - cap.leading_zeros());
        let map_len = (entries * std::mem::size_of::<BufRingEntry>()).next_multiple_of(4096);
        let mut map = crate::sys::Region::try_new(map_len)?;
        let base = NonNull::new(map.as_mut_ptr().cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(BufRing {
            base,
            _map: map,
            mask: (entries - 1) as u16,
            tail: 0,
            slots: (0..entries).map(|_| None).collect(),
            free: (0..entries as u16).rev().collect(),
            lent: 0,
            share: Share::new(START.min(entries), entries),
            registered: false,
            bgid,
            bid_base: if bgid == GROUP_NEW { NEW_BID_BASE } else { 0 },
            at: vec![0; entries],
            mark: 0,
            cold: vec![false; entries],
            tainted: vec![false; entries],
            cold_count: 0,
            idle_trim: false,
            scratch: Vec::with_capacity(entries),
            #[cfg(test)]
            fake_head_move: 0,
        })
    }

    /// Whether the kernel takes a buffer ring (registers and unregisters a small one).
    pub(super) fn probe(ring: &IoUring) -> io::Result<()> {
        let r = BufRing::new(4, GROUP_ANY)?;
        r.register(ring)?;
        ring.submitter().unregister_buf_ring(GROUP_ANY)
    }

    /// Registers the ring as its buffer group.
    pub(super) fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the mapping stays valid (and is not moved) until `Drop`, which runs after
        // the engine unregistered it or the ring was closed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.base.as_ptr() as u64,
                self.slots.len() as u16,
                self.bgid,
                0,
            )
        }
    }

    pub(super) fn set_registered(&mut self) {
        self.registered = true;
    }

    /// Lets [`BufRing::give_back_idle`] give back the pages of idle lent buffers: only when the
    /// ring is set up with `DEFER_TASKRUN` (see the module doc).
    pub(super) fn set_idle_trim(&mut self, on: bool) {
        self.idle_trim = on;
    }

    /// Whether [`BufRing::give_back_idle`] may still run (off for good once the kernel refused
    /// `PBUF_STATUS` or the head moved in the window).
    pub(super) fn idle_trim(&self) -> bool {
        self.idle_trim
    }

    /// Tests only: how many lent buffers are tainted.
    #[cfg(test)]
    pub(super) fn tainted(&self) -> usize {
        self.tainted.iter().filter(|&&t| t).count()
    }

    /// Lent buffers whose pages were given back (they hold no memory until used).
    #[inline]
    pub(super) fn cold(&self) -> usize {
        self.cold_count
    }

    /// The kernel's head of this ring: the next entry it will take (`PBUF_STATUS`).
    fn kernel_head(&self, ring: &IoUring) -> io::Result<u16> {
        /// `struct io_uring_buf_status` (the crate has no call for it).
        #[repr(C)]
        struct BufStatus {
            buf_group: u32,
            head: u32,
            resv: [u32; 8],
        }
        const IORING_REGISTER_PBUF_STATUS: libc::c_long = 26;
        let mut st = BufStatus {
            buf_group: u32::from(self.bgid),
            head: 0,
            resv: [0; 8],
        };
        use std::os::fd::AsRawFd;
        // SAFETY: `st` is a valid, writable `io_uring_buf_status` that outlives the call (the
        // kernel copies it in and out during it); one argument, as `nr_args` says.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring.as_raw_fd(),
                IORING_REGISTER_PBUF_STATUS,
                &mut st as *mut BufStatus,
                1 as libc::c_long,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.head as u16)
    }

    /// Gives back the pages of lent buffers that the kernel has not taken since before the
    /// last call (a whole trim interval), at most `limit` of them; they stay lent. Returns how
    /// many buffers and bytes. Called once per trim interval, between enters, on the thread
    /// that enters the ring.
    pub(super) fn give_back_idle(
        &mut self,
        ring: &IoUring,
        pool: &mut BufferPool,
        limit: usize,
    ) -> crate::io::buffer::Trimmed {
        let mut done = crate::io::buffer::Trimmed::default();
        if !self.idle_trim || !self.registered {
            return done;
        }
        let head = match self.kernel_head(ring) {
            Ok(h) => h,
            Err(e) => {
                log::debug!("buffer ring status refused ({e}): lent buffers keep their pages");
                self.idle_trim = false;
                return done;
            }
        };
        // Entries from `head` to our tail are lent and not taken; those before `mark` were
        // lent before the last call. (`mark` behind `head`: all of them were taken since.)
        let waiting = self.tail.wrapping_sub(head);
        let old = self.mark.wrapping_sub(head);
        self.mark = self.tail;
        if old == 0 || old > waiting {
            return done;
        }
        self.scratch.clear();
        for i in 0..old {
            let bid = self.at[(head.wrapping_add(i) & self.mask) as usize];
            if self.cold[bid as usize] || self.slots[bid as usize].is_none() {
                continue;
            }
            if self.scratch.len() == limit {
                // The rest at the next call (they are before the new mark too).
                break;
            }
            self.scratch.push(bid);
        }
        if self.scratch.is_empty() {
            return done;
        }
        // The buffer-lifetime invariant this relies on: every buffer in `scratch` was at or
        // past the kernel's head when we read it, so the kernel had not taken it and wrote
        // nothing into it. With DEFER_TASKRUN it takes ring buffers inside our enters, except
        // for a receive it runs on io-wq: the head read below catches those (module doc).
        done.buffers = self.scratch.len();
        done.bytes = pool.give_back_held(
            self.scratch
                .iter()
                .filter_map(|&bid| self.slots[bid as usize].as_ref()),
        );
        for &bid in &self.scratch {
            self.cold[bid as usize] = true;
        }
        self.cold_count += self.scratch.len();
        // Entries the kernel took since the first read: `[head, head + moved)`. Unknown (the
        // kernel refused the second read): all of them.
        let moved = match self.kernel_head(ring) {
            #[cfg(test)]
            Ok(h) => h.wrapping_add(self.fake_head_move).wrapping_sub(head),
            #[cfg(not(test))]
            Ok(h) => h.wrapping_sub(head),
            Err(_) => old,
        };
        if moved != 0 {
            let n = self.taint(head, moved.min(old));
            log::warn!(
                "io_uring buffer ring taken outside an enter (a receive on the kernel's worker \
                 threads) while lent buffers' pages were given back: {n} receive(s) into those \
                 buffers will fail rather than deliver bytes that may be lost; lent buffers \
                 keep their pages from now on"
            );
            self.idle_trim = false;
        }
        done
    }

    /// Marks the buffers given back in this call (`scratch`) at ring positions
    /// `head .. head + n` as tainted; returns how many. Rare (the head moved in the window).
    fn taint(&mut self, head: u16, n: u16) -> usize {
        self.scratch.sort_unstable();
        let mut count = 0;
        for i in 0..n {
            let bid = self.at[(head.wrapping_add(i) & self.mask) as usize];
            if self.scratch.binary_search(&bid).is_ok() && !self.tainted[bid as usize] {
                self.tainted[bid as usize] = true;
                count += 1;
            }
        }
        count
    }

    #[inline]
    pub(super) fn lent(&self) -> usize {
        self.lent
    }

    /// A receive found the ring empty: the turn's demand counts it (see [`Share`]).
    #[inline]
    pub(super) fn starved(&mut self) {
        self.share.starved();
    }

    /// The trim interval is over: lend what its busiest turn needed from now on (see [`Share`]).
    pub(super) fn shrink(&mut self) {
        self.share.interval();
    }

    /// Lends the ring buffers from the pool until it holds what it should, or the pool is
    /// empty, or (the new group's ring) down to its reserve.
    /// Called once per loop turn, before the enter: also ends the turn's demand ([`Share`]).
    pub(super) fn refill(&mut self, pool: &mut BufferPool) {
        self.share.turn();
        if !self.registered {
            return;
        }
        let mut added = false;
        while self.lent < self.share.want {
            let b = if self.bgid == GROUP_NEW {
                pool.checkout_new()
            } else {
                pool.checkout()
            };
            let Some(mut b) = b else {
                break;
            };
            let Some(bid) = self.free.pop() else {
                pool.release(b);
                break;
            };
            let spare = pool.spare(&mut b);
            let (addr, len) = (spare.as_mut_ptr() as u64, spare.len() as u32);
            let i = (self.tail & self.mask) as usize;
            // SAFETY: entry `i` is past the published tail, so the kernel does not read it
            // until the tail below is published; only its address, length and id are written
            // (not the `resv` field of entry 0, which is the shared tail). The buffer it names
            // is checked out of the pool and held in `slots` until the kernel hands it back in
            // a completion (`take`), so nothing else reads or writes it meanwhile.
            unsafe {
                let e = &mut *self.base.as_ptr().add(i);
                e.set_addr(addr);
                e.set_len(len);
                e.set_bid(self.bid_base | bid);
            }
            self.slots[bid as usize] = Some(b);
            self.at[i] = bid;
            self.tail = self.tail.wrapping_add(1);
            self.lent += 1;
            added = true;
        }
        if added {
            // SAFETY: the tail field lives inside the mapping (entry 0's reserved word), is
            // 2-aligned, and the kernel reads it with acquire semantics; this release store
            // publishes the entries written above.
            unsafe {
                let t = BufRingEntry::tail(self.base.as_ptr()) as *const AtomicU16;
                (*t).store(self.tail, Ordering::Release);
            }
        }
    }

    /// Whether buffer id `bid` is one of this ring's.
    #[inline]
    pub(super) fn owns(&self, bid: u16) -> bool {
        bid & NEW_BID_BASE == self.bid_base
    }

    /// The buffer the kernel used for a completion (buffer id `bid`, one of this ring's), and
    /// whether it is tainted: its pages were given back while the kernel may have been
    /// writing into it, so its bytes must not be delivered (see the module doc).
    #[inline]
    pub(super) fn take(&mut self, bid: u16) -> Option<(Buf, bool)> {
        let i = bid & !NEW_BID_BASE;
        let b = self.slots.get_mut(i as usize)?.take()?;
        self.free.push(i);
        self.lent -= 1;
        self.share.taken();
        if std::mem::take(&mut self.cold[i as usize]) {
            self.cold_count -= 1;
        }
        Some((b, std::mem::take(&mut self.tainted[i as usize])))
    }

    /// Unregisters the ring (the kernel lets go of it) and returns the buffers to the pool.
    pub(super) fn unregister(&mut self, ring: &IoUring, pool: &mut BufferPool) {
        if self.registered {
            let _ = ring.submitter().unregister_buf_ring(self.bgid);
            self.registered = false;
        }
        for (bid, s) in self.slots.iter_mut().enumerate() {
            if let Some(b) = s.take() {
                pool.release(b);
                self.free.push(bid as u16);
            }
        }
        self.cold.fill(false);
        self.tainted.fill(false);
        self.cold_count = 0;
        self.lent = 0;
    }
}

/// How many buffers a ring keeps lent: what its busiest recent loop turn needed, no more (the
/// module doc says why). The kernel takes ring buffers inside the worker's enter only
/// (`DEFER_TASKRUN`), so a turn's demand is the buffers its completions used plus the receives
/// that found the ring empty.
#[derive(Debug)]
struct Share {
    /// Buffers to keep lent.
    want: usize,
    /// Never below this (the starting share) nor above `cap` (the ring's entries).
    floor: usize,
    cap: usize,
    /// This turn so far: buffers the kernel used, receives that found the ring empty.
    turn_used: usize,
    turn_starved: usize,
    /// The busiest turn's demand since the last interval, and whether a receive starved.
    peak: usize,
    grew: bool,
}

impl Share {
    fn new(floor: usize, cap: usize) -> Share {
        Share {
            want: floor,
            floor,
            cap,
            turn_used: 0,
            turn_starved: 0,
            peak: 0,
            grew: false,
        }
    }

    #[inline]
    fn taken(&mut self) {
        self.turn_used += 1;
    }

    #[inline]
    fn starved(&mut self) {
        self.turn_starved += 1;
    }

    /// A loop turn is over (the ring is about to be refilled). If receives found the ring
    /// empty, the share grows once: to twice itself or to the turn's demand, whichever is more
    /// (a power of two), so a burst of starved receives grows it to what the burst needed, not
    /// doubling once per receive.
    #[inline]
    fn turn(&mut self) {
        let demand = self.turn_used + self.turn_starved;
        self.peak = self.peak.max(demand);
        if self.turn_starved > 0 {
            self.want = (self.want * 2)
                .max(demand.next_power_of_two())
                .min(self.cap);
            self.grew = true;
        }
        self.turn_used = 0;
        self.turn_starved = 0;
    }

    /// A trim interval is over: unless a receive starved in it, the share falls to the busiest
    /// turn's demand (a power of two, at least the floor).
    fn interval(&mut self) {
        let (peak, grew) = (
            std::mem::take(&mut self.peak),
            std::mem::take(&mut self.grew),
        );
        let want = peak.next_power_of_two().clamp(self.floor, self.cap);
        if !grew && want < self.want {
            self.want = want;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Share;

    fn turn(s: &mut Share, used: usize, starved: usize) {
        for _ in 0..used {
            s.taken();
        }
        for _ in 0..starved {
            s.starved();
        }
        s.turn();
    }

    #[test]
    fn a_burst_of_starved_receives_grows_the_share_once_to_its_demand() {
        let mut s = Share::new(16, 4096);
        // 16 used, 57 found the ring empty in one turn: 73 wanted, not 16 << 57.
        turn(&mut s, 16, 57);
        assert_eq!(s.want, 128);
        // One starved receive in a turn: double.
        turn(&mut s, 128, 1);
        assert_eq!(s.want, 256);
        // Turns that starve nothing leave it.
        turn(&mut s, 200, 0);
        assert_eq!(s.want, 256);
        // Never above the ring.
        turn(&mut s, 4000, 3000);
        assert_eq!(s.want, 4096);
    }

    #[test]
    fn the_share_falls_to_the_busiest_turn_of_an_interval() {
        let mut s = Share::new(16, 4096);
        turn(&mut s, 16, 300);
        assert_eq!(s.want, 512);
        // The interval in which it grew keeps it.
        s.interval();
        assert_eq!(s.want, 512);
        // A steady load needing at most 21 buffers a turn: 32.
        for n in [10, 21, 7, 19] {
            turn(&mut s, n, 0);
        }
        s.interval();
        assert_eq!(s.want, 32);
        // An idle interval: the floor.
        s.interval();
        assert_eq!(s.want, 16);
        // A busier interval does not raise it (only starved receives do).
        turn(&mut s, 16, 0);
        s.interval();
        assert_eq!(s.want, 16);
    }
}
