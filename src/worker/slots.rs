//! A capped cluster's queue for connection slots, shared by every worker, approximately
//! first-in first-out across them (as HAProxy's backend queue): each waiting session takes
//! the cluster's next ticket; each worker publishes the ticket of its oldest waiter that is
//! not woken yet. A worker that frees a slot wakes its own oldest waiter when that is the
//! oldest of all, else pokes the worker that holds it ([`Peers::poke`]), which wakes it; a
//! new request finds the queue non-empty and waits behind the others instead of taking the
//! slot ahead of them. The sessions themselves stay in their worker's own queue
//! (`Worker::pending`); only tickets, a waiter count and pokes cross threads.
//!
//! Nobody waiting costs one relaxed load per slot release and per upstream pick of a
//! cluster ([`SlotQueue::has_waiters`]); the rest runs only while someone waits.

use crate::engine::Wake;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// No waiter (a worker's published oldest ticket).
const NONE: u64 = u64::MAX;

/// One cluster's queue state shared by every worker (and across snapshots, by cluster name).
#[derive(Debug, Default)]
pub struct SlotQueue {
    /// Sessions in the queue in every worker (woken ones until they try again).
    waiters: AtomicUsize,
    /// The next ticket.
    next: AtomicU64,
    /// Per worker: the ticket of its oldest waiter not woken yet ([`NONE`]: none). Made at
    /// the cluster's first wait.
    oldest: OnceLock<Box<[AtomicU64]>>,
}

impl SlotQueue {
    /// Whether any session of any worker waits for a slot (the check every release and pick
    /// of the cluster pays).
    #[inline]
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Relaxed) != 0
    }

    /// A session joins the queue: its ticket.
    pub(super) fn join(&self) -> u64 {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A woken session that found no slot after all joins again (with its old ticket).
    pub(super) fn rejoin(&self) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
    }

    /// A session left the queue (served, woken and trying, timed out, closed).
    pub(super) fn leave(&self) {
        let _ = self
            .waiters
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Worker `worker` (of `workers`) publishes the ticket of its oldest unwoken waiter
    /// (`None`: it has none).
    pub(super) fn publish(&self, worker: usize, workers: usize, ticket: Option<u64>) {
        let slots = self.oldest.get_or_init(|| {
            (0..workers.max(worker + 1))
                .map(|_| AtomicU64::new(NONE))
                .collect()
        });
        if let Some(s) = slots.get(worker) {
            s.store(ticket.unwrap_or(NONE), Ordering::SeqCst);
        }
    }

    /// The worker holding the oldest unwoken waiter, if any.
    pub(super) fn oldest(&self) -> Option<usize> {
        let slots = self.oldest.get()?;
        let mut best: Option<(usize, u64)> = None;
        for (w, s) in slots.iter().enumerate() {
            let t = s.load(Ordering::SeqCst);
            if t != NONE && best.is_none_or(|(_, b)| t < b) {
                best = Some((w, t));
            }
        }
        best.map(|(w, _)| w)
    }
}

/// Every worker's waker, for pokes: "a slot of a cluster you hold the oldest waiter of is
/// free". At most one poke is pending per worker (later ones coalesce into it).
#[derive(Default)]
pub struct Peers {
    wakers: Vec<Arc<dyn Wake>>,
    poked: Vec<AtomicBool>,
}

impl Peers {
    /// The workers' wakers, worker `i` at `i`.
    pub fn new(wakers: Vec<Arc<dyn Wake>>) -> Arc<Peers> {
        let poked = wakers.iter().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Peers { wakers, poked })
    }

    /// How many workers there are (0 when unknown: a worker then only serves itself).
    pub(super) fn len(&self) -> usize {
        self.wakers.len()
    }

    /// Tells worker `w` to wake its oldest waiters (unless a poke is pending already).
    pub(super) fn poke(&self, w: usize) {
        let (Some(flag), Some(waker)) = (self.poked.get(w), self.wakers.get(w)) else {
            return;
        };
        if !flag.swap(true, Ordering::AcqRel) {
            // A worker that exited has nobody waiting.
            let _ = waker.wake();
        }
    }

    /// Whether worker `w` was poked since it last looked (clearing it).
    #[inline]
    pub(super) fn take_poke(&self, w: usize) -> bool {
        self.poked
            .get(w)
            .is_some_and(|f| f.load(Ordering::Relaxed) && f.swap(false, Ordering::AcqRel))
    }
}

/// Per worker and cluster: its sessions waiting for a connection slot, by ticket (oldest
/// first), and the cluster's shared queue state.
pub(super) struct Pending {
    pub(super) waiters: std::collections::VecDeque<Waiter>,
    pub(super) shared: Arc<SlotQueue>,
    /// The ticket last published for this worker (`None`: no unwoken waiter).
    published: Option<u64>,
}

/// A session in a worker's slot queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiter {
    pub(super) key: usize,
    pub(super) ticket: u64,
    /// Woken (in the ready queue, to try for a slot); it stays queued until it tries.
    pub(super) woken: bool,
}

impl Pending {
    pub(super) fn new(shared: Arc<SlotQueue>) -> Pending {
        Pending {
            waiters: std::collections::VecDeque::new(),
            shared,
            published: None,
        }
    }

    /// Publishes this worker's oldest unwoken ticket (after any change to the queue); one
    /// shared store only when it changed.
    pub(super) fn publish(&mut self, worker: usize, workers: usize) {
        let oldest = self.waiters.iter().find(|w| !w.woken).map(|w| w.ticket);
        if oldest != self.published {
            self.published = oldest;
            self.shared.publish(worker, workers, oldest);
        }
    }

    /// Queues session `key` with `ticket` in ticket order (a woken session that found no
    /// slot goes back where it was; a new one goes last).
    pub(super) fn insert(&mut self, key: usize, ticket: u64) {
        let w = Waiter {
            key,
            ticket,
            woken: false,
        };
        if self.waiters.back().is_none_or(|b| b.ticket < ticket) {
            self.waiters.push_back(w);
        } else {
            let at = self.waiters.partition_point(|x| x.ticket < ticket);
            self.waiters.insert(at, w);
        }
    }

    /// Removes session `key`: its ticket, if it was queued.
    pub(super) fn remove(&mut self, key: usize) -> Option<u64> {
        let at = self.waiters.iter().position(|w| w.key == key)?;
        let w = self.waiters.remove(at)?;
        self.shared.leave();
        Some(w.ticket)
    }

    /// Marks the oldest unwoken waiter woken: its key.
    pub(super) fn wake_first(&mut self) -> Option<usize> {
        let w = self.waiters.iter_mut().find(|w| !w.woken)?;
        w.woken = true;
        Some(w.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unwoken_waiter_of_all_workers_is_found() {
        let q = Arc::new(SlotQueue::default());
        assert!(!q.has_waiters());
        assert_eq!(q.oldest(), None);
        let mut a = Pending::new(q.clone());
        let mut b = Pending::new(q.clone());
        let t0 = q.join();
        a.insert(10, t0);
        a.publish(0, 2);
        let t1 = q.join();
        b.insert(20, t1);
        b.publish(1, 2);
        let t2 = q.join();
        a.insert(11, t2);
        a.publish(0, 2);
        assert!(q.has_waiters());
        assert_eq!(q.oldest(), Some(0));
        // Worker 0 wakes its oldest: worker 1 now holds the oldest unwoken waiter.
        assert_eq!(a.wake_first(), Some(10));
        a.publish(0, 2);
        assert_eq!(q.oldest(), Some(1));
        // The woken one tries, finds no slot and goes back in front with its ticket.
        assert_eq!(a.remove(10), Some(t0));
        q.rejoin();
        a.insert(10, t0);
        a.publish(0, 2);
        assert_eq!(a.waiters.front().map(|w| w.key), Some(10));
        assert_eq!(q.oldest(), Some(0));
        assert!(a.remove(10).is_some());
        assert!(a.remove(11).is_some());
        assert!(b.remove(20).is_some());
        a.publish(0, 2);
        b.publish(1, 2);
        assert!(!q.has_waiters());
        assert_eq!(q.oldest(), None);
        assert_eq!(a.remove(10), None);
    }
}
