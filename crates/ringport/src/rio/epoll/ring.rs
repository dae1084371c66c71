//! The epoll engine's ring of results: a bounded single-producer,
//! single-consumer queue in user memory, so that `dequeue` is a few loads
//! and stores, never a system call.
//!
//! The ring itself takes no lock. Its two sides are each held by one thread
//! at a time through the completion queue's locks: the *producer* lock
//! (taken by whichever thread finishes a request: the engine thread, or a
//! requesting thread that could do its I/O at once) and the *consumer* lock
//! (taken by `dequeue`, `notify`, `resize` and `close`, which the engine
//! thread never takes), so producers and consumers never wait for each
//! other.
//!
//! Memory ordering (the classic SPSC ring, as in crossbeam's `ArrayQueue`
//! or `rtrb`): `head` is written only by the consumer, `tail` only by the
//! producer; both only grow (wrapping), and a slot's index is the counter
//! modulo the capacity.
//! - The producer writes slot `tail`, then stores `tail + 1` with
//!   **Release**; the consumer loads `tail` with **Acquire**, so the slot's
//!   contents are visible before it reads them.
//! - The consumer moves a slot's value out, then stores `head + 1` with
//!   **Release**; the producer loads `head` with **Acquire** before deciding
//!   the ring has room, so it never overwrites a slot still being read.
//! - Each side reads its own counter with `Relaxed`: only it writes it, and
//!   the lock that makes it "the" producer (or consumer) orders it after the
//!   previous holder's store.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use super::super::request::{Request, RioResult};

/// A finished request: its result, and the request itself, ended (its
/// slices released, its count dropped) when the result is dequeued.
pub(super) struct FinishedRequest {
    pub(super) result: RioResult,
    pub(super) request: Request,
}

pub(super) struct ResultRing {
    slots: Box<[UnsafeCell<MaybeUninit<FinishedRequest>>]>,
    mask: usize,
    /// The next slot to read. Written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// The next slot to write. Written by the producer only.
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: the ring hands `FinishedRequest` values (which are Send) from one thread to
// another; every slot is accessed by one side at a time, as the head/tail
// protocol in the module docs guarantees, given the one-producer,
// one-consumer contract of `push` and `pop`.
unsafe impl Send for ResultRing {}
// SAFETY: as above: shared access goes through `push`/`pop`, whose callers
// promise to be the only producer and the only consumer.
unsafe impl Sync for ResultRing {}

impl ResultRing {
    /// A ring for `capacity` results (rounded up to a power of two).
    pub(super) fn new(capacity: u32) -> ResultRing {
        let cap = (capacity.max(1) as usize).next_power_of_two();
        let slots = (0..cap)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect();
        ResultRing {
            slots,
            mask: cap - 1,
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// How many results it holds at most.
    pub(super) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Whether it holds no result, as far as this thread can see. From the
    /// consumer side (after a SeqCst fence) it misses no result published
    /// before the fence (see `EpollCq::notify`).
    pub(super) fn is_empty(&self) -> bool {
        self.tail.load(Ordering::Acquire) == self.head.load(Ordering::Acquire)
    }

    /// Appends `done`, or gives it back if the ring is full.
    ///
    /// (The value is handed back as is, not boxed: no allocation per
    /// result.)
    ///
    /// # Safety
    /// The caller is the ring's only producer for the duration of the call
    /// (it holds the completion queue's producer lock, or both locks).
    #[allow(clippy::result_large_err)]
    pub(super) unsafe fn push(&self, done: FinishedRequest) -> Result<(), FinishedRequest> {
        let tail = self.tail.load(Ordering::Relaxed);
        // Acquire: the consumer's reads of the slots before `head` are over.
        let head = self.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.mask {
            return Err(done);
        }
        let slot = &self.slots[tail & self.mask];
        // SAFETY: the slot is outside head..tail, so the consumer does not
        // read it, and we are the only producer: no one else touches it. It
        // holds no value (the consumer moved it out, or it never held one).
        unsafe { (*slot.get()).write(done) };
        // Release: publishes the slot's value with the new tail.
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Moves out up to `max` results, oldest first, handing each to `take`
    /// with its position in the batch; returns how many.
    ///
    /// # Safety
    /// The caller is the ring's only consumer for the duration of the call
    /// (it holds the completion queue's consumer lock).
    pub(super) unsafe fn pop_into(
        &self,
        max: usize,
        mut take: impl FnMut(usize, FinishedRequest),
    ) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        // Acquire: the values the producer wrote before this tail are visible.
        let tail = self.tail.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head).min(max);
        for i in 0..n {
            let slot = &self.slots[head.wrapping_add(i) & self.mask];
            // SAFETY: the slot is in head..tail: the producer wrote it and
            // published it (Acquire above), and will not touch it until head
            // moves past it; we are the only consumer, so we move its value
            // out exactly once.
            let done = unsafe { (*slot.get()).assume_init_read() };
            // Advance past each slot as it is taken, so that if `take`
            // panics the slots already read are not read again.
            self.head.store(head.wrapping_add(i + 1), Ordering::Release);
            take(i, done);
        }
        n
    }

    /// Moves out the oldest result, if any.
    ///
    /// # Safety
    /// As for [`pop_into`](Self::pop_into).
    pub(super) unsafe fn pop(&self) -> Option<FinishedRequest> {
        let mut out = None;
        // SAFETY: the caller's promise.
        unsafe { self.pop_into(1, |_, d| out = Some(d)) };
        out
    }
}

impl Drop for ResultRing {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no producer or consumer is left.
        while let Some(done) = unsafe { self.pop() } {
            // A result never dequeued: its request ends here.
            done.request.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_a_power_of_two() {
        assert_eq!(ResultRing::new(1).capacity(), 1);
        assert_eq!(ResultRing::new(5).capacity(), 8);
        assert_eq!(ResultRing::new(64).capacity(), 64);
        assert!(ResultRing::new(3).is_empty());
    }
}
