//! The port's engine: packet queue, LIFO waiter stack and concurrency limit.
//!
//! # How a packet finds a thread
//!
//! Every packet is pushed on the [`Queue`] first and then *published* by a CAS
//! on the [`State`] word. Publishing either hands the packet to the most recent
//! parked waiter (when one exists and fewer than `limit` threads are active) or
//! bumps `queued` so that a thread calling `get` can claim it. Claiming is a
//! CAS too (`queued -= k`, `active += 1`), after which the claimant pops `k`
//! packets: it never finds the queue short, because a packet is counted only
//! after its push completed.
//!
//! # Locks
//!
//! The fast paths (a post with nobody parked, a `get` that finds work) touch
//! only the state word and the lock-free queue. The waiter stack's mutex is
//! taken to park, to wake, to time out and to close, and every change of the
//! `waiters` count happens under it, so the stack's length always equals that
//! count when the mutex is free. A parker re-checks the state under the mutex
//! and moves `waiters` 0→1 with a CAS; a poster that saw `waiters == 0` in its
//! own CAS was therefore ordered before that park, and the parker sees its
//! packet and claims it instead of sleeping. This is the no-lost-wakeup
//! argument; `tests/loom.rs` checks it.
//!
//! # The invariant
//!
//! After every transition `!state.waiter_runnable(limit)` holds: no thread is
//! parked while a packet it could take is queued and a slot is free. Posts keep
//! it by handing off, claims and parks cannot break it, and a release of a
//! slot by anything other than `get` (`blocking`, thread exit, moving to
//! another port) calls [`Core::release`], which wakes one waiter if needed.

use std::time::Instant;

use crossbeam_utils::CachePadded;

use super::queue::Queue;
use super::state::{State, MAX_ACTIVE, MAX_WAITERS, ONE_ACTIVE, ONE_QUEUED, ONE_WAITER};
use super::waiter::{Waiter, CLOSED, GRANTED, WAITING};
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};

/// Why a thread got no packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPacket {
    /// Nothing claimable and the caller may not wait (or its deadline passed).
    Empty,
    /// The port was closed.
    Closed,
    /// The waiter stack is full.
    TooManyWaiters,
}

/// Counters kept beside the state word, each on its own line.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) posted: CachePadded<AtomicU64>,
    pub(crate) completed: CachePadded<AtomicU64>,
    pub(crate) wakeups: AtomicU64,
    pub(crate) handoffs: AtomicU64,
    pub(crate) max_active: AtomicU64,
}

pub(crate) struct Core<T> {
    state: CachePadded<AtomicU64>,
    limit: u64,
    queue: Queue<T>,
    waiters: Mutex<Vec<Arc<Waiter>>>,
    pub(crate) counters: Counters,
}

impl<T> Core<T> {
    /// A port core admitting `limit` active threads (at least 1).
    pub(crate) fn new(limit: usize) -> Self {
        Core {
            state: CachePadded::new(AtomicU64::new(0)),
            limit: (limit as u64).clamp(1, MAX_ACTIVE),
            queue: Queue::new(),
            waiters: Mutex::new(Vec::new()),
            counters: Counters::default(),
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn state(&self) -> State {
        State(self.state.load(Ordering::Acquire))
    }

    fn cas(&self, old: State, new: u64) -> Result<(), State> {
        self.state
            .compare_exchange_weak(old.0, new, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(State)
    }

    fn note_active(&self, active: u64) {
        if active > self.counters.max_active.load(Ordering::Relaxed) {
            self.counters
                .max_active
                .fetch_max(active, Ordering::Relaxed);
        }
    }

    /// Queues one packet and makes it claimable. On a closed port the packet
    /// is dropped (with whatever it owns) and `Err` returned.
    pub(crate) fn push(&self, packet: T) -> Result<(), NoPacket> {
        self.queue.push(packet);
        self.publish(1)
    }

    /// Makes `n` packets that were just pushed claimable, handing them to
    /// parked waiters first (LIFO) while the limit allows.
    pub(crate) fn publish(&self, n: u64) -> Result<(), NoPacket> {
        let mut s = self.state();
        loop {
            if s.closed() {
                self.drain();
                return Err(NoPacket::Closed);
            }
            if s.waiters() > 0 && s.active() < self.limit {
                return self.publish_slow(n);
            }
            match self.cas(s, s.0 + n * ONE_QUEUED) {
                Ok(()) => return Ok(()),
                Err(now) => s = now,
            }
        }
    }

    #[cold]
    fn publish_slow(&self, mut n: u64) -> Result<(), NoPacket> {
        let mut stack = lock(&self.waiters);
        let mut s = self.state();
        while n > 0 {
            if s.closed() {
                drop(stack);
                self.drain();
                return Err(NoPacket::Closed);
            }
            if s.waiters() > 0 && s.active() < self.limit {
                let new = s.0 - ONE_WAITER + ONE_ACTIVE;
                match self.cas(s, new) {
                    Ok(()) => {
                        self.note_active(State(new).active());
                        self.counters.handoffs.fetch_add(1, Ordering::Relaxed);
                        self.grant_top(&mut stack);
                        n -= 1;
                        s = State(new);
                    }
                    Err(now) => s = now,
                }
            } else {
                match self.cas(s, s.0 + n * ONE_QUEUED) {
                    Ok(()) => return Ok(()),
                    Err(now) => s = now,
                }
            }
        }
        Ok(())
    }

    /// Pops the most recent waiter (its count already taken off the state
    /// word by the caller's CAS) and hands it a claim on one packet.
    fn grant_top(&self, stack: &mut Vec<Arc<Waiter>>) {
        let w = stack
            .pop()
            .expect("waiters count and stack length agree under the mutex");
        self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        w.release(GRANTED);
    }

    /// Claims up to `max` packets without blocking. `was_active` says the
    /// caller held a slot on this port, which this call gives up first (the
    /// thread's activity ends when it calls `get` again). On `Ok(k)` the caller
    /// is active and must [`take`](Self::take) `k` packets; on `Err` it is not
    /// active.
    pub(crate) fn try_claim(&self, was_active: bool, max: u64) -> Result<u64, NoPacket> {
        let mine = if was_active { ONE_ACTIVE } else { 0 };
        let mut s = self.state();
        loop {
            if s.closed() {
                if was_active {
                    self.state.fetch_sub(ONE_ACTIVE, Ordering::AcqRel);
                }
                return Err(NoPacket::Closed);
            }
            let others = State(s.0 - mine);
            let k = others.claimable(self.limit).min(max);
            if k > 0 {
                let new = others.0 - k * ONE_QUEUED + ONE_ACTIVE;
                match self.cas(s, new) {
                    Ok(()) => {
                        self.note_active(State(new).active());
                        return Ok(k);
                    }
                    Err(now) => s = now,
                }
            } else if was_active {
                // Nothing for us, so nothing for a parked waiter either: they
                // see the same queue and the same limit. No wake needed.
                match self.cas(s, others.0) {
                    Ok(()) => return Err(NoPacket::Empty),
                    Err(now) => s = now,
                }
            } else {
                return Err(NoPacket::Empty);
            }
        }
    }

    /// Claims up to `max` more packets for a thread that is already active
    /// (after it was granted one), without touching the active count.
    pub(crate) fn claim_more(&self, max: u64) -> u64 {
        let mut s = self.state();
        loop {
            let k = s.queued().min(max);
            if k == 0 || s.closed() {
                return 0;
            }
            match self.cas(s, s.0 - k * ONE_QUEUED) {
                Ok(()) => return k,
                Err(now) => s = now,
            }
        }
    }

    /// Parks the (inactive) caller on the waiter stack until it is granted a
    /// packet, the port closes, or the deadline passes. On `Ok(k)` the caller
    /// is active and must take `k` packets.
    pub(crate) fn park(
        &self,
        me: &Arc<Waiter>,
        deadline: Option<Instant>,
    ) -> Result<u64, NoPacket> {
        {
            let mut stack = lock(&self.waiters);
            let mut s = self.state();
            loop {
                if s.closed() {
                    return Err(NoPacket::Closed);
                }
                let k = s.claimable(self.limit);
                let new = if k > 0 {
                    s.0 - ONE_QUEUED + ONE_ACTIVE
                } else if s.waiters() >= MAX_WAITERS {
                    return Err(NoPacket::TooManyWaiters);
                } else {
                    s.0 + ONE_WAITER
                };
                match self.cas(s, new) {
                    Ok(()) if k > 0 => {
                        self.note_active(State(new).active());
                        return Ok(1);
                    }
                    Ok(()) => break,
                    Err(now) => s = now,
                }
            }
            me.reset();
            stack.push(me.clone());
        }
        match me.wait(deadline) {
            GRANTED => Ok(1),
            CLOSED => Err(NoPacket::Closed),
            _ => self.unpark_timed_out(me),
        }
    }

    /// The deadline passed. Under the mutex the verdict is final: either a
    /// releaser got to us first (and we take what it gave), or we are still on
    /// the stack and leave it.
    fn unpark_timed_out(&self, me: &Arc<Waiter>) -> Result<u64, NoPacket> {
        let mut stack = lock(&self.waiters);
        match me.verdict() {
            GRANTED => return Ok(1),
            CLOSED => return Err(NoPacket::Closed),
            _ => debug_assert_eq!(me.verdict(), WAITING),
        }
        if let Some(i) = stack.iter().rposition(|w| Arc::ptr_eq(w, me)) {
            stack.remove(i);
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
        }
        Err(NoPacket::Empty)
    }

    /// Pops one claimed packet. `None` only if the port was closed and its
    /// queue drained after the claim.
    pub(crate) fn take(&self) -> Option<T> {
        loop {
            if let Some(p) = self.queue.pop() {
                return Some(p);
            }
            if self.state().closed() {
                return None;
            }
            // A counted packet is always pushed already; an empty pop can only
            // be a concurrent drain that has not finished. Let it run.
            crate::sync::thread::yield_now();
        }
    }

    /// Gives up the caller's slot other than through `get`: entering a
    /// blocking section, exiting the thread, or moving to another port. Wakes
    /// a waiter if that slot was the only thing keeping it parked.
    pub(crate) fn release(&self) {
        let s = State(self.state.fetch_sub(ONE_ACTIVE, Ordering::AcqRel) - ONE_ACTIVE);
        if s.waiter_runnable(self.limit) {
            self.wake_for_release();
        }
    }

    #[cold]
    fn wake_for_release(&self) {
        let mut stack = lock(&self.waiters);
        let mut s = self.state();
        while s.waiter_runnable(self.limit) {
            let new = s.0 - ONE_WAITER - ONE_QUEUED + ONE_ACTIVE;
            match self.cas(s, new) {
                Ok(()) => {
                    self.note_active(State(new).active());
                    self.grant_top(&mut stack);
                    s = State(new);
                }
                Err(now) => s = now,
            }
        }
    }

    /// Takes a slot back after a blocking section, even past the limit (as
    /// Windows does); waiters stay parked until the count falls below it.
    pub(crate) fn reacquire(&self) {
        let s = State(self.state.fetch_add(ONE_ACTIVE, Ordering::AcqRel) + ONE_ACTIVE);
        self.note_active(s.active());
    }

    /// Closes the port: wakes every waiter with `Closed` and drops every
    /// queued packet. Returns false if it was closed already.
    pub(crate) fn close(&self) -> bool {
        let first = {
            let mut stack = lock(&self.waiters);
            let mut s = self.state();
            loop {
                // Clear the waiter count with the stack, so the two agree.
                let new = (s.0 & !(MAX_WAITERS * ONE_WAITER)) | State(0).with_closed().0;
                match self.cas(s, new) {
                    Ok(()) => break,
                    Err(now) => s = now,
                }
            }
            for w in stack.drain(..) {
                w.release(CLOSED);
            }
            !s.closed()
        };
        self.drain();
        first
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed()
    }

    fn drain(&self) {
        while self.queue.pop().is_some() {}
    }
}
