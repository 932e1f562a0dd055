//! Per-worker pool of fixed-size buffers, preallocated as one region.
//!
//! The region is allocated zeroed in one call, so the kernel backs pages only when a buffer is
//! first used; the free list is LIFO so the same warm buffers are reused. A [`Buf`] is a small
//! handle (index + fill window), held by a session only while bytes are in flight: an idle
//! connection holds none. `checkout` returning `None` is back-pressure, never a panic.
//!
//! Hot path: no allocation after `new`.

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

pub struct BufferPool {
    mem: Box<[u8]>,
    size: usize,
    free: Vec<u32>,
    count: usize,
}

impl BufferPool {
    pub fn new(size: usize, count: usize) -> BufferPool {
        BufferPool {
            mem: vec![0u8; size * count].into_boxed_slice(),
            size,
            // Highest index last: LIFO hands out buffer 0 first and keeps the hot set small.
            free: (0..count as u32).rev().collect(),
            count,
        }
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
        self.free.pop().map(|idx| Buf {
            idx,
            start: 0,
            end: 0,
        })
    }

    #[inline]
    pub fn release(&mut self, b: Buf) {
        debug_assert!(!self.free.contains(&b.idx));
        self.free.push(b.idx);
    }

    /// The pending bytes.
    #[inline]
    pub fn data(&self, b: &Buf) -> &[u8] {
        let base = b.idx as usize * self.size;
        &self.mem[base + b.start as usize..base + b.end as usize]
    }

    /// The pending bytes of `src` and the free tail of `dst` at once, for writing a transformed
    /// copy (e.g. a rewritten HTTP head). `None` when both handles are the same buffer.
    pub fn data_and_spare(&mut self, src: &Buf, dst: &mut Buf) -> Option<(&[u8], &mut [u8])> {
        if src.idx == dst.idx {
            return None;
        }
        let size = self.size;
        let (s_base, d_base) = (src.idx as usize * size, dst.idx as usize * size);
        let (s_range, d_range) = (
            s_base + src.start as usize..s_base + src.end as usize,
            d_base + dst.end as usize..d_base + size,
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
        let base = b.idx as usize * self.size;
        if b.end as usize == self.size && b.start > 0 {
            let (s, e) = (base + b.start as usize, base + b.end as usize);
            self.mem.copy_within(s..e, base);
            b.end -= b.start;
            b.start = 0;
        }
        &mut self.mem[base + b.end as usize..base + self.size]
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
