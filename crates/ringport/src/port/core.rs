//! The port's engine: packet queue, LIFO waiter stack and concurrency limit.
//!
//! # How a packet finds a thread
//!
//! The queue is the only record of what is queued: the [`StateWord`] holds
//! the `active` and `waiters` counts and the `closed` bit, not a packet
//! count. So the common cases write nothing shared but the queue:
//!
//! - A post pushes its packet and then only *reads* the word. If it shows a
//!   parked waiter and a free slot, the poster grants: under the stack's
//!   mutex it moves one waiter to active (a CAS), pops a packet and hands it
//!   to the most recent waiter, then wakes it. Otherwise the packet waits.
//! - A thread that stays active (it calls `get` again) pops without touching
//!   the word: the slot it holds is the one it would claim. It reads the word
//!   to see that the port is open and not over its limit.
//! - A thread that is not active claims a slot (a CAS, `active += 1`, while
//!   below the limit) and then pops. If the queue turned out empty it gives
//!   the slot back, and giving a slot back always looks for a waiter that
//!   could now run (see the invariant).
//!
//! # Locks
//!
//! The fast paths (a post with nobody parked, a `get` that finds work) touch
//! only the lock-free queue and, read-only, the state word. The waiter
//! stack's mutex is taken to park, to grant, to time out and to close, and
//! every change of the `waiters` count happens under it, so the stack's
//! length equals that count whenever the mutex is free.
//!
//! Two handshakes keep a packet from being stranded. A poster pushes and
//! then reads the word; a parker adds itself to `waiters` and then looks at
//! the queue. A thread that gives a slot up subtracts it from `active` and
//! then looks at the queue. In each pair at least one side sees the other's
//! write (every access involved is `SeqCst`: see [`handshake`]), so either
//! the poster sees the waiter or the free slot and grants, or the other
//! side sees the packet and takes it (or grants it).
//! `tests/loom.rs` checks this.
//!
//! # The invariant
//!
//! After every transition `!waiter_runnable` holds: no thread is parked
//! while a packet is queued and a slot is free. (A post breaks it for the
//! moment between its push and its grant; a thread calling `get` meanwhile
//! may take the packet, as it could if it had come first, and the grant
//! then finds nothing to grant.) Posts keep it by granting, parks by looking
//! at the queue after announcing themselves, and every release of a slot
//! (a `get` that found nothing, `blocking`, thread exit, moving to another
//! port) by looking at the queue after it.
//!
//! # Strict LIFO
//!
//! A grant pops the packet under the stack's mutex and writes it into the
//! waiter's own slot before waking it, so the most recent waiter is the one
//! that runs; an active thread racing the grant may take the packet first,
//! and then no waiter wakes at all.

use std::time::Instant;

use crossbeam_utils::{Backoff, CachePadded};

use super::queue::Queue;
use super::state::{StateWord, MAX_ACTIVE, MAX_WAITERS, ONE_ACTIVE, ONE_WAITER};
use super::waiter::{Waiter, CLOSED, GRANTED};
#[cfg(loom)]
use crate::sync::fence;
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// Between the two halves of the port's store-buffering handshakes (see
/// "Locks" above): one side writes its location (an RMW: the queue's tail
/// CAS, or a CAS/add on the state word) and then reads the other's (the
/// word, or the queue's indices). All of these are `SeqCst`, so they fall
/// in one total order and the two sides cannot both miss each other's
/// write (C++20's store-buffering rule, which Rust's atomics follow). On
/// x86 that is a locked instruction and a plain load, with no fence between.
/// loom treats `SeqCst` accesses as `AcqRel` (weaker than they are), so
/// under loom a fence stands in and the model checks the protocol with it.
#[inline(always)]
pub(super) fn handshake() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// Why a thread got no packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPacket {
    /// Nothing claimable and the caller may not wait (or its deadline passed).
    Empty,
    /// The port was closed.
    Closed,
    /// The waiter stack is full.
    TooManyWaiters,
}

/// A kernel completion source that one waiting thread can sleep on (see
/// `io/driver.rs`). Only one thread at a time sleeps there, the *kernel
/// sleeper*. It sits at the bottom of the waiter stack, so a post reaches it
/// (by [`wake`](Kernel::wake)) only when no thread is parked in user space,
/// and when completions wake it, it publishes them like posts: to the most
/// recent waiter first, itself last. LIFO release thus holds for kernel
/// completions too. If it leaves the kernel while threads are parked in user
/// space, it promotes the most recent one to take its place, so completions
/// are never left unwatched while a thread is idle.
pub(crate) trait Kernel<T>: Send + Sync {
    /// Blocks until completions may be waiting, [`wake`](Self::wake) is
    /// called, or the deadline passes. May return early; callers re-check.
    fn sleep(&self, deadline: Option<Instant>);
    /// Ends a concurrent [`sleep`](Self::sleep) (or the next one, if none).
    fn wake(&self);
    /// Moves finished completions into `core` as packets and publishes them
    /// (see [`Core::publish_completed`]); with `keep`, the (inactive, not
    /// waiting) caller takes the first for itself if the limit allows.
    fn harvest(&self, core: &Core<T>, keep: bool) -> Option<T>;
    /// Whether operations are in flight that could complete. While none
    /// are, waiting threads all park in user space (a futex wake is cheaper
    /// than waking a thread out of the kernel), and the thread that starts
    /// the next operation calls [`Core::kernel_work_started`].
    fn busy(&self) -> bool;
    /// Hands the kernel the operations the calling thread held back for its
    /// next wait (see `sys::uring::hold_submissions`): it is about to wait
    /// somewhere else, or to run code that may block.
    fn submit_held(&self) {}
}

/// A parked thread and the place a grant puts its packet.
pub(super) struct Parked<T> {
    pub(super) waiter: Arc<Waiter>,
    /// The parker's own `Option<T>`, on its stack frame in
    /// [`Core::park`]. Written only under the stack's mutex, by the thread
    /// that takes this entry off the stack with a `GRANTED` verdict; read by
    /// the parker only once the entry is off the stack (it saw `GRANTED`, or
    /// it took the mutex and removed itself), so never concurrently.
    pub(super) slot: *mut Option<T>,
}

// SAFETY: the pointer is only a way to move one `T` to the parked thread
// (see `slot`); sending the entry between threads is sending that `T`.
unsafe impl<T: Send> Send for Parked<T> {}

/// The waiter stack: user-space waiters, most recent last, and at index 0
/// the kernel sleeper when there is one.
pub(super) struct Stack<T> {
    pub(super) waiters: Vec<Parked<T>>,
    pub(super) sleeper: bool,
}

/// PortCounters kept beside the state word, each on its own line.
#[derive(Default)]
pub(crate) struct PortCounters {
    pub(crate) completed: CachePadded<AtomicU64>,
    pub(crate) wakeups: AtomicU64,
    pub(crate) handoffs: AtomicU64,
    pub(crate) max_active: AtomicU64,
}

/// A port's engine: state word, packet queue and LIFO waiter stack.
pub struct Core<T> {
    pub(super) state: CachePadded<AtomicU64>,
    pub(super) limit: u64,
    pub(super) queue: Queue<T>,
    pub(super) stack: Mutex<Stack<T>>,
    /// `stack.sleeper`, readable without the mutex (written under it).
    pub(super) has_sleeper: AtomicBool,
    pub(super) kernel: Option<Arc<dyn Kernel<T>>>,
    pub(crate) counters: PortCounters,
}

impl<T> Core<T> {
    /// A port core admitting `limit` active threads (at least 1), with no
    /// kernel source (the loom model's port).
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn new(limit: usize) -> Self {
        Self::with_kernel(limit, None)
    }

    /// A port core whose idle threads may sleep on `kernel` (one at a time).
    pub(crate) fn with_kernel(limit: usize, kernel: Option<Arc<dyn Kernel<T>>>) -> Self {
        Core {
            state: CachePadded::new(AtomicU64::new(0)),
            limit: (limit as u64).clamp(1, MAX_ACTIVE),
            queue: Queue::new(),
            stack: Mutex::new(Stack {
                waiters: Vec::new(),
                sleeper: false,
            }),
            has_sleeper: AtomicBool::new(false),
            kernel,
            counters: PortCounters::default(),
        }
    }

    /// The most threads this core lets be active at once.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn state(&self) -> StateWord {
        StateWord(self.state.load(Ordering::Acquire))
    }

    /// The word, read as the second half of a handshake (see [`handshake`]).
    pub(super) fn state_sc(&self) -> StateWord {
        StateWord(self.state.load(Ordering::SeqCst))
    }

    /// Packets posted (a snapshot): every packet is pushed on the queue,
    /// which counts them, and completions are counted apart. Not a counter
    /// of its own: a locked add per post was most of a post's own cost.
    pub(crate) fn posted(&self) -> u64 {
        let completed = self.counters.completed.load(Ordering::Acquire);
        self.queue.pushed().saturating_sub(completed)
    }

    /// Packets queued and not yet taken (a snapshot).
    pub(crate) fn queued(&self) -> u64 {
        self.queue.len()
    }

    /// `(queued, active, waiters, closed)`, for the loom model.
    #[cfg(loom)]
    pub fn snapshot(&self) -> (u64, u64, u64, bool) {
        let s = self.state();
        (self.queued(), s.active(), s.waiters(), s.closed())
    }

    /// Whether a parked waiter could run right now (the invariant every
    /// finished transition leaves false), for the loom model.
    #[cfg(loom)]
    pub fn waiter_runnable(&self) -> bool {
        self.runnable(self.state())
    }

    /// Whether, in state `s`, a parked waiter could take a queued packet.
    fn runnable(&self, s: StateWord) -> bool {
        !s.closed() && s.waiters() > 0 && s.active() < self.limit && !self.queue.is_empty()
    }

    pub(super) fn cas(&self, old: StateWord, new: u64) -> Result<(), StateWord> {
        self.state
            .compare_exchange_weak(old.0, new, Ordering::SeqCst, Ordering::Acquire)
            .map(|_| ())
            .map_err(StateWord)
    }

    pub(super) fn note_active(&self, active: u64) {
        if active > self.counters.max_active.load(Ordering::Relaxed) {
            self.counters
                .max_active
                .fetch_max(active, Ordering::Relaxed);
        }
    }

    /// Queues a packet without publishing it yet (see
    /// [`publish_completed`](Self::publish_completed)).
    pub(crate) fn enqueue(&self, packet: T) {
        self.queue.push(packet);
    }

    /// Publishes `n` packets a kernel source just enqueued, counting them as
    /// completed. With `keep`, the (inactive) caller first takes one for
    /// itself if the limit allows: the thread that harvested completions
    /// runs the first, with no hop to another thread; the rest go to parked
    /// waiters, most recent first. Returns the kept packet (the caller is
    /// then active).
    pub(crate) fn publish_completed(&self, n: u64, keep: bool) -> Option<T> {
        if n == 0 {
            return None;
        }
        self.counters.completed.fetch_add(n, Ordering::Relaxed);
        let mine = if keep { self.claim().ok() } else { None };
        self.publish();
        mine
    }

    /// Queues one packet and hands it to the most recent waiter if one may
    /// run. On a closed port the packet is dropped (with whatever it owns)
    /// and `Err` returned.
    #[inline]
    pub fn push(&self, packet: T) -> Result<(), NoPacket> {
        if self.state().closed() {
            return Err(NoPacket::Closed);
        }
        self.queue.push(packet);
        self.publish();
        Ok(())
    }

    /// After packets were pushed: grant them to parked waiters (LIFO) while
    /// the limit allows. One fence and one read of the state word; the word
    /// is written only if a waiter is granted. If a close came between the
    /// push and here, the close's drain may have run already: drain again,
    /// so that nothing stays queued on a closed port (the post counts as
    /// before the close, whose drain drops queued packets).
    #[inline]
    fn publish(&self) {
        // The poster's half of the handshake with a parker or a releaser:
        // our push (the queue's SeqCst tail CAS) before our read of the word.
        handshake();
        let s = self.state_sc();
        if s.closed() {
            self.drain();
        } else if s.waiters() > 0 && s.active() < self.limit {
            self.grant_runnable(true);
        }
    }

    /// Takes a packet for a thread that calls `get`. `was_active` says it
    /// holds a slot on this port: then, unless the port is over its limit
    /// (a thread came back from `blocking`) or closed, it pops without a
    /// claim, keeping its slot. With `spin` it keeps trying a little while
    /// (crossbeam's backoff: spinning, then yielding) before it gives the
    /// slot up: a thread counts as running until it blocks, as on Windows,
    /// and when posts stream in, the next is usually nanoseconds away, so
    /// this spares two writes of the shared word per packet (giving the slot
    /// up and claiming it again) and a herd of claims racing for one packet.
    /// Otherwise, or if nothing came, its activity ends and it claims as a
    /// thread that was not active. On `Ok` the caller is active; on `Err`
    /// it is not.
    pub fn try_get(&self, was_active: bool, spin: bool) -> Result<T, NoPacket> {
        if !was_active {
            return self.claim();
        }
        if let Some(p) = self.pop_active() {
            return Ok(p);
        }
        if spin {
            let backoff = Backoff::new();
            while !backoff.is_completed() && self.may_pop() {
                backoff.snooze();
                if let Some(p) = self.pop_active() {
                    return Ok(p);
                }
            }
        }
        let s = StateWord(self.state.fetch_sub(ONE_ACTIVE, Ordering::SeqCst));
        if s.closed() {
            return Err(NoPacket::Closed);
        }
        // The slot we gave up may let us (first: we are running) or a
        // parked waiter take a packet that came meanwhile.
        let mine = self.claim();
        if mine.is_err() {
            self.settle();
        }
        mine
    }

    /// A pop by a thread that holds a slot, while the port is open and not
    /// over its limit (reading the word, which stays in every reader's cache
    /// while nobody writes it): the fast path of `get`.
    #[inline]
    pub(crate) fn pop_active(&self) -> Option<T> {
        if !self.may_pop() {
            return None;
        }
        self.queue.pop()
    }

    /// Whether an active thread may keep taking packets: the port is open
    /// and not over its limit.
    #[inline]
    fn may_pop(&self) -> bool {
        let s = self.state();
        !s.closed() && s.active() <= self.limit
    }

    /// Pops one more packet for a thread that is already active (a batch:
    /// the thread counts once however many it takes).
    pub fn take_more(&self) -> Option<T> {
        if self.state().closed() {
            return None;
        }
        self.queue.pop()
    }

    /// Claims a slot and pops a packet for a thread that is not active. The
    /// queue is looked at before the slot is claimed, so a thread spinning
    /// on an empty port writes nothing shared.
    pub(crate) fn claim(&self) -> Result<T, NoPacket> {
        let mut s = self.state();
        loop {
            if s.closed() {
                return Err(NoPacket::Closed);
            }
            if s.active() >= self.limit || self.queue.is_empty() {
                return Err(NoPacket::Empty);
            }
            match self.cas(s, s.0 + ONE_ACTIVE) {
                Ok(()) => break,
                Err(now) => s = now,
            }
        }
        match self.queue.pop() {
            Some(p) => {
                self.note_active(s.active() + 1);
                Ok(p)
            }
            None => {
                // Another thread took it between our look and our pop.
                self.release();
                Err(NoPacket::Empty)
            }
        }
    }

    /// Gives up the caller's slot other than through `get`: entering a
    /// blocking section, exiting the thread, or moving to another port. Wakes
    /// a waiter if that slot was the only thing keeping it parked.
    pub fn release(&self) {
        self.state.fetch_sub(ONE_ACTIVE, Ordering::SeqCst);
        self.settle();
    }

    /// The releaser's half of the handshake with a poster: after our slot
    /// went back (an RMW on the word), look at the queue; a poster that read
    /// the word before that saw the limit reached and granted nothing.
    fn settle(&self) {
        handshake();
        if self.runnable(self.state_sc()) {
            self.grant_runnable(false);
        }
    }

    /// Grants queued packets to the most recent waiters while a waiter can
    /// run (`handoff`: counted as a post handing its packet over). Each grant
    /// moves a waiter to active with a CAS, then pops the packet and writes
    /// it into the waiter's slot. If the pop finds nothing (a thread calling
    /// `get` took the packet) the grant is undone, which frees a slot again,
    /// so the queue is looked at once more.
    #[cold]
    fn grant_runnable(&self, handoff: bool) {
        let mut stack = lock(&self.stack);
        let mut s = self.state();
        while self.runnable(s) {
            let new = s.0 - ONE_WAITER + ONE_ACTIVE;
            if let Err(now) = self.cas(s, new) {
                s = now;
                continue;
            }
            match self.queue.pop() {
                Some(p) => {
                    self.note_active(StateWord(new).active());
                    if handoff {
                        self.counters.handoffs.fetch_add(1, Ordering::Relaxed);
                    }
                    self.grant_top(&mut stack, p);
                }
                None => {
                    // `waiters += 1, active -= 1` in one step (active >= 1).
                    self.state
                        .fetch_add(ONE_WAITER - ONE_ACTIVE, Ordering::SeqCst);
                    handshake();
                }
            }
            s = self.state_sc();
        }
    }

    /// Pops the most recent waiter (its count already moved to active by
    /// the caller's CAS), gives it `packet` and wakes it.
    fn grant_top(&self, stack: &mut Stack<T>, packet: T) {
        let Some(top) = stack.waiters.pop() else {
            // The count and the stack agree under the mutex, and the CAS saw
            // a waiter: unreachable. Queue the packet again rather than lose it.
            debug_assert!(false, "waiters count and stack length disagree");
            self.queue.push(packet);
            return;
        };
        // SAFETY: `top` was on the stack until now and we hold the stack's
        // mutex, so its parker is not reading the slot and nobody else is
        // writing it (see `Parked::slot`); the parker's frame outlives its
        // entry, because it leaves `park` only after seeing a verdict or
        // removing itself under this mutex.
        unsafe { *top.slot = Some(packet) };
        self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        self.release_waiter(&top.waiter, GRANTED);
    }

    pub(super) fn release_waiter(&self, w: &Waiter, verdict: u8) {
        w.release(verdict);
        // The kernel sleeper granting itself while it harvests needs no wake.
        if w.in_kernel() && !w.is_current() {
            if let Some(k) = &self.kernel {
                k.wake();
            }
        }
    }

    /// Takes a slot back after a blocking section, even past the limit (as
    /// Windows does); waiters stay parked until the count falls below it.
    pub fn reacquire(&self) {
        let s = StateWord(self.state.fetch_add(ONE_ACTIVE, Ordering::AcqRel) + ONE_ACTIVE);
        self.note_active(s.active());
    }

    /// Closes the port: wakes every waiter with `Closed` and drops every
    /// queued packet. Returns false if it was closed already.
    pub fn close(&self) -> bool {
        let first = {
            let mut stack = lock(&self.stack);
            let mut s = self.state();
            while !s.closed() {
                // Clear the waiter count with the stack, so the two agree.
                let new = (s.0 & !(MAX_WAITERS * ONE_WAITER)) | StateWord(0).with_closed().0;
                match self.cas(s, new) {
                    Ok(()) => break,
                    Err(now) => s = now,
                }
            }
            for w in std::mem::take(&mut stack.waiters) {
                self.release_waiter(&w.waiter, CLOSED);
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
