//! The packet queue: FIFO, many producers, many consumers.
//!
//! It holds packets only; who may take one (the limit, the waiter stack)
//! is the port's business (`core.rs`), which also uses the queue as its
//! count of queued packets: `is_empty` is the check each side of the
//! port's post/park handshake makes, so the queue needs no notion of
//! waiting.
//!
//! The storage is crossbeam-channel's unbounded (list) channel, reduced to
//! the queue (`push`, `pop`; no waking, no disconnection) and with one
//! change: a block whose packets have all been taken is not freed but kept
//! (up to [`SPARES`] of them) for the producer that needs the next one. In
//! steady state the queue therefore allocates nothing; crossbeam's list
//! allocates a 31-slot block every 31 messages and frees it behind the
//! consumer, and with ringport's 88-byte packet those 3 KiB blocks went
//! through glibc's arena lock between producer and consumer (the perf
//! profile in BENCHMARKS.md, Port, session 2).
//!
//! The algorithm (slots with WRITE/READ/DESTROY bits, head and tail
//! indices in laps of 32, the last slot of a block reserved for the
//! hand-over to the next block) is crossbeam-channel's `flavors/list.rs`
//! (MIT/Apache-2.0, © The Crossbeam Project Developers). Recycling does not
//! change its argument: a block is recycled at the point where crossbeam
//! frees it, when by that protocol no thread holds a pointer into it any
//! more, and it is reset (every slot state and `next` zeroed) before it is
//! offered to a producer, which sees the reset through the `spares` slot's
//! release/acquire.

#[cfg(not(loom))]
pub(crate) use self::list::Queue;

#[cfg(not(loom))]
mod list {
    use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
    use std::cell::UnsafeCell;
    use std::marker::PhantomData;
    use std::mem::MaybeUninit;
    use std::ptr;
    use std::sync::atomic::{self, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    use crossbeam_utils::{Backoff, CachePadded};

    /// A message was written into the slot.
    const WRITE: usize = 1;
    /// The message was read from the slot.
    const READ: usize = 2;
    /// The block is being destroyed (recycled) and this slot's reader is to
    /// continue it.
    const DESTROY: usize = 4;

    /// Each block covers one lap of indices.
    const LAP: u64 = 32;
    /// Messages a block holds (the lap's last index is the hand-over).
    const BLOCK_CAP: usize = LAP as usize - 1;
    /// Low index bits reserved for the mark.
    const SHIFT: u64 = 1;
    /// In the head index: the head's block is not the last one, so a
    /// consumer need not look at the tail to know a message is there.
    const MARK_BIT: u64 = 1;

    /// Emptied blocks kept for reuse. Two would do for one producer and
    /// one consumer moving in step; four leave room for several consumers
    /// finishing blocks at once.
    pub(super) const SPARES: usize = 4;

    struct Slot<T> {
        msg: UnsafeCell<MaybeUninit<T>>,
        state: AtomicUsize,
    }

    impl<T> Slot<T> {
        fn wait_write(&self) {
            let backoff = Backoff::new();
            while self.state.load(Ordering::Acquire) & WRITE == 0 {
                backoff.snooze();
            }
        }
    }

    struct Block<T> {
        next: AtomicPtr<Block<T>>,
        slots: [Slot<T>; BLOCK_CAP],
    }

    impl<T> Block<T> {
        const LAYOUT: Layout = Layout::new::<Self>();

        fn wait_next(&self) -> *mut Block<T> {
            let backoff = Backoff::new();
            loop {
                let next = self.next.load(Ordering::Acquire);
                if !next.is_null() {
                    return next;
                }
                backoff.snooze();
            }
        }
    }

    struct Position<T> {
        index: AtomicU64,
        block: AtomicPtr<Block<T>>,
    }

    pub(crate) struct Queue<T> {
        head: CachePadded<Position<T>>,
        tail: CachePadded<Position<T>>,
        spares: CachePadded<[AtomicPtr<Block<T>>; SPARES]>,
        _marker: PhantomData<T>,
    }

    // SAFETY: the queue hands each `T` from the thread that pushed it to the
    // one that pops it, so it is Send and Sync when `T` is Send, as
    // crossbeam-channel's channel is.
    unsafe impl<T: Send> Send for Queue<T> {}
    // SAFETY: as above; every shared field is atomic or reached through the
    // slot protocol.
    unsafe impl<T: Send> Sync for Queue<T> {}

    impl<T> Queue<T> {
        pub(crate) fn new() -> Self {
            Queue {
                head: CachePadded::new(Position {
                    index: AtomicU64::new(0),
                    block: AtomicPtr::new(ptr::null_mut()),
                }),
                tail: CachePadded::new(Position {
                    index: AtomicU64::new(0),
                    block: AtomicPtr::new(ptr::null_mut()),
                }),
                spares: CachePadded::new(Default::default()),
                _marker: PhantomData,
            }
        }

        /// An empty block: a spare if there is one, else a new allocation.
        fn new_block(&self) -> *mut Block<T> {
            for s in self.spares.iter() {
                if !s.load(Ordering::Relaxed).is_null() {
                    let b = s.swap(ptr::null_mut(), Ordering::Acquire);
                    if !b.is_null() {
                        return b;
                    }
                }
            }
            // SAFETY: the layout is not zero-sized (it holds an AtomicPtr).
            let p = unsafe { alloc_zeroed(Block::<T>::LAYOUT) };
            if p.is_null() {
                handle_alloc_error(Block::<T>::LAYOUT)
            }
            // All-zero is an empty block: null `next`, slot states 0, and
            // `MaybeUninit` messages.
            p.cast()
        }

        /// Takes back a block nobody uses any more (crossbeam's free).
        ///
        /// # Safety
        /// `b` came from [`new_block`](Self::new_block) and no thread will
        /// touch it again: its messages were all read (or dropped).
        unsafe fn recycle(&self, b: *mut Block<T>) {
            // SAFETY: the caller's contract: `b` is live and ours alone.
            let block = unsafe { &*b };
            block.next.store(ptr::null_mut(), Ordering::Relaxed);
            for slot in &block.slots {
                slot.state.store(0, Ordering::Relaxed);
            }
            for s in self.spares.iter() {
                if s.compare_exchange(ptr::null_mut(), b, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
            // SAFETY: allocated by `new_block` with this layout, unused now.
            unsafe { dealloc(b.cast(), Block::<T>::LAYOUT) }
        }

        /// Marks slots from `start` as to be destroyed and recycles the block
        /// if no reader is still in one of them (crossbeam's `destroy`).
        ///
        /// # Safety
        /// Called by the reader of the block's last slot (`start == 0`) or by
        /// a reader that found `DESTROY` on its slot (`start` = its offset + 1).
        unsafe fn destroy(&self, this: *mut Block<T>, start: usize) {
            for i in start..BLOCK_CAP - 1 {
                // SAFETY: the block is alive until this function recycles it.
                let slot = unsafe { (*this).slots.get_unchecked(i) };
                if slot.state.load(Ordering::Acquire) & READ == 0
                    && slot.state.fetch_or(DESTROY, Ordering::AcqRel) & READ == 0
                {
                    // That slot's reader will continue the destruction.
                    return;
                }
            }
            // SAFETY: every slot was read and every reader is done.
            unsafe { self.recycle(this) }
        }

        /// Appends a message.
        pub(crate) fn push(&self, msg: T) {
            let backoff = Backoff::new();
            let mut tail = self.tail.index.load(Ordering::Acquire);
            let mut block = self.tail.block.load(Ordering::Acquire);
            let mut next_block: *mut Block<T> = ptr::null_mut();
            let (block, offset) = loop {
                let offset = ((tail >> SHIFT) % LAP) as usize;
                if offset == BLOCK_CAP {
                    // Another producer is installing the next block.
                    backoff.snooze();
                    tail = self.tail.index.load(Ordering::Acquire);
                    block = self.tail.block.load(Ordering::Acquire);
                    continue;
                }
                if offset + 1 == BLOCK_CAP && next_block.is_null() {
                    next_block = self.new_block();
                }
                if block.is_null() {
                    // The first message: install the first block.
                    let new = self.new_block();
                    if self
                        .tail
                        .block
                        .compare_exchange(block, new, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.head.block.store(new, Ordering::Release);
                        block = new;
                    } else {
                        // SAFETY: `new` was never published.
                        unsafe { self.recycle(new) };
                        tail = self.tail.index.load(Ordering::Acquire);
                        block = self.tail.block.load(Ordering::Acquire);
                        continue;
                    }
                }
                let new_tail = tail + (1 << SHIFT);
                match self.tail.index.compare_exchange_weak(
                    tail,
                    new_tail,
                    Ordering::SeqCst,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        if offset + 1 == BLOCK_CAP {
                            // We took the block's last slot: install the next.
                            let next = std::mem::replace(&mut next_block, ptr::null_mut());
                            self.tail.block.store(next, Ordering::Release);
                            self.tail.index.fetch_add(1 << SHIFT, Ordering::Release);
                            // SAFETY: the block cannot be recycled before its
                            // last slot (ours, not yet written) is read.
                            unsafe { (*block).next.store(next, Ordering::Release) };
                        }
                        break (block, offset);
                    }
                    Err(t) => {
                        tail = t;
                        block = self.tail.block.load(Ordering::Acquire);
                        backoff.spin();
                    }
                }
            };
            if !next_block.is_null() {
                // Prepared for a block end another producer reached first.
                // SAFETY: never published.
                unsafe { self.recycle(next_block) };
            }
            // SAFETY: the tail CAS reserved slot `offset` of `block` for us
            // alone, and the block lives until that slot is read.
            unsafe {
                let slot = (*block).slots.get_unchecked(offset);
                slot.msg.get().write(MaybeUninit::new(msg));
                slot.state.fetch_or(WRITE, Ordering::Release);
            }
        }

        /// Whether the queue holds no message. `SeqCst`, like the tail CAS of
        /// `push`, because the port pairs this load with a load of its state
        /// word (a parker checks here after announcing itself, a poster checks
        /// the word after pushing: at least one of them sees the other). A
        /// push in progress counts as a message: `pop` waits for it.
        pub(crate) fn is_empty(&self) -> bool {
            let head = self.head.index.load(Ordering::SeqCst);
            let tail = self.tail.index.load(Ordering::SeqCst);
            head >> SHIFT == tail >> SHIFT
        }

        /// How many messages were ever pushed: read off the tail index, which
        /// counts them (plus one hand-over index a block), so the port needs
        /// no counter of its own for `Stats::posted`.
        pub(crate) fn pushed(&self) -> u64 {
            let tail = self.tail.index.load(Ordering::Relaxed) >> SHIFT;
            tail - tail / LAP
        }

        /// How many messages the queue holds (a snapshot, for statistics).
        pub(crate) fn len(&self) -> u64 {
            loop {
                let mut tail = self.tail.index.load(Ordering::SeqCst);
                let mut head = self.head.index.load(Ordering::SeqCst);
                // A consistent pair: the tail did not move while we read the head.
                if self.tail.index.load(Ordering::SeqCst) != tail {
                    continue;
                }
                tail &= !((1 << SHIFT) - 1);
                head &= !((1 << SHIFT) - 1);
                // The hand-over index at a block's end holds no message.
                if (tail >> SHIFT) & (LAP - 1) == LAP - 1 {
                    tail = tail.wrapping_add(1 << SHIFT);
                }
                if (head >> SHIFT) & (LAP - 1) == LAP - 1 {
                    head = head.wrapping_add(1 << SHIFT);
                }
                let lap = (head >> SHIFT) / LAP;
                tail = tail.wrapping_sub((lap * LAP) << SHIFT) >> SHIFT;
                head = head.wrapping_sub((lap * LAP) << SHIFT) >> SHIFT;
                return tail - head - tail / LAP;
            }
        }

        /// Takes the oldest message, or `None` if the queue is empty.
        pub(crate) fn pop(&self) -> Option<T> {
            let backoff = Backoff::new();
            let mut head = self.head.index.load(Ordering::Acquire);
            let mut block = self.head.block.load(Ordering::Acquire);
            let (block, offset) = loop {
                let offset = ((head >> SHIFT) % LAP) as usize;
                if offset == BLOCK_CAP {
                    // Another consumer is moving the head to the next block.
                    backoff.snooze();
                    head = self.head.index.load(Ordering::Acquire);
                    block = self.head.block.load(Ordering::Acquire);
                    continue;
                }
                let mut new_head = head + (1 << SHIFT);
                if new_head & MARK_BIT == 0 {
                    atomic::fence(Ordering::SeqCst);
                    let tail = self.tail.index.load(Ordering::Relaxed);
                    if head >> SHIFT == tail >> SHIFT {
                        return None;
                    }
                    if (head >> SHIFT) / LAP != (tail >> SHIFT) / LAP {
                        new_head |= MARK_BIT;
                    }
                }
                if block.is_null() {
                    // The first block is being installed.
                    backoff.snooze();
                    head = self.head.index.load(Ordering::Acquire);
                    block = self.head.block.load(Ordering::Acquire);
                    continue;
                }
                match self.head.index.compare_exchange_weak(
                    head,
                    new_head,
                    Ordering::SeqCst,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        if offset + 1 == BLOCK_CAP {
                            // SAFETY: the block lives until our slot is
                            // read, and its successor until the head passes it.
                            let next = unsafe { (*block).wait_next() };
                            let mut next_index = (new_head & !MARK_BIT).wrapping_add(1 << SHIFT);
                            // SAFETY: as above.
                            if unsafe { !(*next).next.load(Ordering::Relaxed).is_null() } {
                                next_index |= MARK_BIT;
                            }
                            self.head.block.store(next, Ordering::Release);
                            self.head.index.store(next_index, Ordering::Release);
                        }
                        break (block, offset);
                    }
                    Err(h) => {
                        head = h;
                        block = self.head.block.load(Ordering::Acquire);
                        backoff.spin();
                    }
                }
            };
            // SAFETY: the head CAS gave us slot `offset` of `block` alone; its
            // producer reserved it and writes it (we wait for WRITE), and the
            // block is not recycled before this slot is marked READ.
            unsafe {
                let slot = (*block).slots.get_unchecked(offset);
                slot.wait_write();
                let msg = slot.msg.get().read().assume_init();
                if offset + 1 == BLOCK_CAP {
                    self.destroy(block, 0);
                } else if slot.state.fetch_or(READ, Ordering::AcqRel) & DESTROY != 0 {
                    self.destroy(block, offset + 1);
                }
                Some(msg)
            }
        }
    }

    impl<T> Drop for Queue<T> {
        fn drop(&mut self) {
            let mut head = *self.head.index.get_mut() & !((1 << SHIFT) - 1);
            let tail = *self.tail.index.get_mut() & !((1 << SHIFT) - 1);
            let mut block = *self.head.block.get_mut();
            // SAFETY: `&mut self`: no other thread touches the queue. Every
            // slot between head and tail holds a written message (pushes
            // complete before the queue can be dropped); blocks are freed
            // once passed, and the spares are ours.
            unsafe {
                while head != tail {
                    let offset = ((head >> SHIFT) % LAP) as usize;
                    if offset < BLOCK_CAP {
                        let slot = (*block).slots.get_unchecked_mut(offset);
                        if *slot.state.get_mut() & WRITE != 0 {
                            (*slot.msg.get()).assume_init_drop();
                        }
                    } else {
                        let next = *(*block).next.get_mut();
                        dealloc(block.cast(), Block::<T>::LAYOUT);
                        block = next;
                    }
                    head = head.wrapping_add(1 << SHIFT);
                }
                if !block.is_null() {
                    dealloc(block.cast(), Block::<T>::LAYOUT);
                }
                for s in self.spares.iter_mut() {
                    let b = *s.get_mut();
                    if !b.is_null() {
                        dealloc(b.cast(), Block::<T>::LAYOUT);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::Arc;

        #[test]
        fn fifo_across_blocks_and_blocks_are_reused() {
            let q = Queue::new();
            for round in 0..5u64 {
                assert!(q.is_empty());
                for i in 0..200u64 {
                    q.push(round * 1000 + i);
                    assert_eq!(q.len(), i + 1);
                    assert_eq!(q.pushed(), round * 200 + i + 1);
                }
                for i in 0..200u64 {
                    assert!(!q.is_empty());
                    assert_eq!(q.pop(), Some(round * 1000 + i));
                    assert_eq!(q.len(), 199 - i);
                }
                assert_eq!(q.pop(), None);
                assert!(q.is_empty());
            }
            let spares = q
                .spares
                .iter()
                .filter(|s| !s.load(Ordering::Relaxed).is_null())
                .count();
            assert!(spares > 0 && spares <= SPARES);
        }

        #[test]
        fn drop_frees_what_is_left() {
            let token = Arc::new(());
            let q = Queue::new();
            for _ in 0..100 {
                q.push(token.clone());
            }
            for _ in 0..40 {
                q.pop();
            }
            drop(q);
            assert_eq!(Arc::strong_count(&token), 1);
        }

        #[test]
        fn many_producers_many_consumers_deliver_each_once() {
            const PER: u64 = 20_000;
            let q = Arc::new(Queue::new());
            let taken = Arc::new(AtomicU64::new(0));
            let sum = Arc::new(AtomicU64::new(0));
            let mut hs = Vec::new();
            for p in 0..2u64 {
                let q = q.clone();
                hs.push(std::thread::spawn(move || {
                    for i in 0..PER {
                        q.push(p * PER + i + 1);
                    }
                }));
            }
            for _ in 0..2 {
                let (q, taken, sum) = (q.clone(), taken.clone(), sum.clone());
                hs.push(std::thread::spawn(move || {
                    while taken.load(Ordering::Relaxed) < 2 * PER {
                        if let Some(v) = q.pop() {
                            sum.fetch_add(v, Ordering::Relaxed);
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for h in hs {
                h.join().unwrap();
            }
            let n = 2 * PER;
            assert_eq!(sum.load(Ordering::Relaxed), n * (n + 1) / 2);
            assert_eq!(q.pop(), None);
        }
    }
}

#[cfg(loom)]
pub(crate) struct Queue<T>(crate::sync::Mutex<(std::collections::VecDeque<T>, u64)>);

#[cfg(loom)]
impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Queue(crate::sync::Mutex::new((
            std::collections::VecDeque::new(),
            0,
        )))
    }
    pub(crate) fn push(&self, value: T) {
        let mut q = crate::sync::lock(&self.0);
        q.0.push_back(value);
        q.1 += 1;
    }
    pub(crate) fn pop(&self) -> Option<T> {
        crate::sync::lock(&self.0).0.pop_front()
    }
    pub(crate) fn is_empty(&self) -> bool {
        crate::sync::lock(&self.0).0.is_empty()
    }
    pub(crate) fn len(&self) -> u64 {
        crate::sync::lock(&self.0).0.len() as u64
    }
    pub(crate) fn pushed(&self) -> u64 {
        crate::sync::lock(&self.0).1
    }
}
