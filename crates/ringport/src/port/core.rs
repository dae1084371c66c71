//! The port's engine: packet queue, LIFO waiter stack and concurrency limit.
//!
//! # How a packet finds a thread
//!
//! Every packet is pushed on the [`Queue`] first and then *published*: one
//! `fetch_add` of `queued` on the [`StateWord`]. If the word it returns had a
//! parked waiter and a free slot, the poster then grants, under the stack's
//! mutex, to the most recent waiter (a CAS `waiters -= 1`, `queued -= 1`,
//! `active += 1`, then the wake); otherwise the packet waits for a thread
//! calling `get` to claim it. Claiming is a CAS (`queued -= k`, and
//! `active += 1` unless the caller keeps the slot it held), after which the
//! claimant pops `k` packets: it never finds the queue short, because a
//! packet is counted only after its push completed. A batch (`get_many`) is
//! one claim, one CAS, however many packets it takes.
//!
//! # Locks
//!
//! The fast paths (a post with nobody parked, a `get` that finds work) touch
//! only the state word and the lock-free queue. The waiter stack's mutex is
//! taken to park, to wake, to time out and to close, and every change of the
//! `waiters` count happens under it, so the stack's length always equals that
//! count when the mutex is free. A parker re-checks the state under the mutex
//! and moves `waiters` 0→1 with a CAS; a poster that saw `waiters == 0` in its
//! own `fetch_add` was therefore ordered before that park, and the parker sees
//! its packet and claims it instead of sleeping; a poster that saw a waiter
//! takes the mutex, so it finds that waiter on the stack. This is the
//! no-lost-wakeup argument; `tests/loom.rs` checks it.
//!
//! # The invariant
//!
//! After every transition `!state.waiter_runnable(limit)` holds: no thread is
//! parked while a packet it could take is queued and a slot is free. (A post
//! breaks it for the moment between its `fetch_add` and its grant; a thread
//! calling `get` meanwhile may take the packet, as it could if it had come
//! first, and the grant then finds nothing to grant.) Posts keep it by
//! granting, claims and parks cannot break it, and a release of a
//! slot by anything other than `get` (`blocking`, thread exit, moving to
//! another port) calls [`Core::release`], which wakes one waiter if needed.

use std::time::Instant;

use crossbeam_utils::CachePadded;

use super::queue::Queue;
use super::state::{
    StateWord, MAX_ACTIVE, MAX_QUEUED, MAX_WAITERS, ONE_ACTIVE, ONE_QUEUED, ONE_WAITER,
};
use super::waiter::{Waiter, CLOSED, GRANTED, LEAD, WAITING};
use crate::sync::{fence, lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

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
    /// Moves finished completions into `core` as packets and publishes them;
    /// with `keep`, the (inactive, not waiting) caller claims the first for
    /// itself if the limit allows, and the result says whether it did.
    fn harvest(&self, core: &Core<T>, keep: bool) -> bool;
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

/// The waiter stack: user-space waiters, most recent last, and at index 0
/// the kernel sleeper when there is one.
#[derive(Default)]
struct Stack {
    waiters: Vec<Arc<Waiter>>,
    sleeper: bool,
}

/// PortCounters kept beside the state word, each on its own line.
#[derive(Default)]
pub(crate) struct PortCounters {
    pub(crate) posted: CachePadded<AtomicU64>,
    pub(crate) completed: CachePadded<AtomicU64>,
    pub(crate) wakeups: AtomicU64,
    pub(crate) handoffs: AtomicU64,
    pub(crate) max_active: AtomicU64,
}

/// A port's engine: state word, packet queue and LIFO waiter stack.
pub struct Core<T> {
    state: CachePadded<AtomicU64>,
    limit: u64,
    queue: Queue<T>,
    stack: Mutex<Stack>,
    /// `stack.sleeper`, readable without the mutex (written under it).
    has_sleeper: AtomicBool,
    kernel: Option<Arc<dyn Kernel<T>>>,
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
            stack: Mutex::new(Stack::default()),
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

    /// The state word as `(queued, active, waiters, closed)`, for the loom model.
    #[cfg(loom)]
    pub fn snapshot(&self) -> (u64, u64, u64, bool) {
        let s = self.state();
        (s.queued(), s.active(), s.waiters(), s.closed())
    }

    /// Whether a parked waiter could run right now (the invariant every
    /// finished transition leaves false), for the loom model.
    #[cfg(loom)]
    pub fn waiter_runnable(&self) -> bool {
        self.state().waiter_runnable(self.limit)
    }

    fn cas(&self, old: StateWord, new: u64) -> Result<(), StateWord> {
        self.state
            .compare_exchange_weak(old.0, new, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(StateWord)
    }

    fn note_active(&self, active: u64) {
        if active > self.counters.max_active.load(Ordering::Relaxed) {
            self.counters
                .max_active
                .fetch_max(active, Ordering::Relaxed);
        }
    }

    /// Queues a packet without making it claimable yet (see
    /// [`publish`](Self::publish) and [`publish_fresh`](Self::publish_fresh)).
    pub(crate) fn enqueue(&self, packet: T) {
        self.queue.push(packet);
    }

    /// Publishes `n` enqueued packets, first claiming one of them for the
    /// (inactive) caller if `keep` and the limit allow: the thread that
    /// harvested completions keeps the first, with no hop to another thread.
    /// Returns whether it kept one (the caller is then active).
    pub(crate) fn publish_fresh(&self, mut n: u64, keep: bool) -> bool {
        let mut kept = false;
        if keep {
            let mut s = self.state();
            while !s.closed() && s.active() < self.limit {
                match self.cas(s, s.0 + ONE_ACTIVE) {
                    Ok(()) => {
                        self.note_active(s.active() + 1);
                        kept = true;
                        n -= 1;
                        break;
                    }
                    Err(now) => s = now,
                }
            }
        }
        if n > 0 {
            let _ = self.publish(n);
        }
        kept
    }

    /// Publishes `n` packets a kernel source just enqueued (see
    /// [`publish_fresh`](Self::publish_fresh)), counting them as completed.
    pub(crate) fn publish_completed(&self, n: u64, keep: bool) -> bool {
        if n == 0 {
            return false;
        }
        self.counters.completed.fetch_add(n, Ordering::Relaxed);
        self.publish_fresh(n, keep)
    }

    /// Queues one packet and makes it claimable. On a closed port the packet
    /// is dropped (with whatever it owns) and `Err` returned.
    pub fn push(&self, packet: T) -> Result<(), NoPacket> {
        self.queue.push(packet);
        self.publish(1)
    }

    /// Makes `n` packets that were just pushed claimable, handing them to
    /// parked waiters first (LIFO) while the limit allows.
    ///
    /// One `fetch_add` on the state word: a single read-for-ownership of its
    /// line, where a load and a compare-and-swap take two and retry under
    /// contention. The word it returns says what the packets found. Closed:
    /// the count is taken back and the packets drained. A waiter parked and
    /// a slot free: the word now has `waiter_runnable`, and the poster
    /// grants, under the stack's mutex, to the most recent waiters first
    /// (as a slot given up does). Until it does, a thread calling `get` may
    /// take the packet; a parked thread never wakes for a packet another
    /// took, because a grant is a claim taken off `queued` by the granter's
    /// CAS.
    pub(crate) fn publish(&self, n: u64) -> Result<(), NoPacket> {
        let old = StateWord(self.state.fetch_add(n * ONE_QUEUED, Ordering::AcqRel));
        if old.closed() {
            // `close` cleared `queued` before we added to it, and a closed
            // word's `queued` is changed by nobody else, so this cannot
            // underflow.
            self.state.fetch_sub(n * ONE_QUEUED, Ordering::AcqRel);
            self.drain();
            return Err(NoPacket::Closed);
        }
        if old.waiters() > 0 && old.active() < self.limit {
            self.grant_runnable(true);
        }
        Ok(())
    }

    /// Pops the most recent waiter (its count already taken off the state
    /// word by the caller's CAS) and hands it a claim on one packet.
    fn grant_top(&self, stack: &mut Stack) {
        let w = stack
            .waiters
            .pop()
            .expect("waiters count and stack length agree under the mutex");
        self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        self.release_waiter(&w, GRANTED);
    }

    fn release_waiter(&self, w: &Waiter, verdict: u8) {
        w.release(verdict);
        // The kernel sleeper granting itself while it harvests needs no wake.
        if w.in_kernel() && !w.is_current() {
            if let Some(k) = &self.kernel {
                k.wake();
            }
        }
    }

    /// Called when the kernel sleeper has left the kernel (under the stack
    /// mutex): if threads are parked in user space, the most recent takes
    /// its place, so kernel completions always have a thread watching.
    fn promote(&self, stack: &mut Stack) {
        stack.sleeper = false;
        self.has_sleeper.store(false, Ordering::SeqCst);
        // Pairs with the fence in kernel_work_started: either we see its
        // operation in flight, or it sees that nobody sleeps in the kernel.
        fence(Ordering::SeqCst);
        if self.kernel.as_ref().is_some_and(|k| k.busy()) {
            self.lead_top(stack);
        }
    }

    /// Sends the most recent user-space waiter, if any, to sleep in the
    /// kernel (under the stack mutex, with no sleeper there).
    fn lead_top(&self, stack: &mut Stack) {
        if let Some(w) = stack.waiters.pop() {
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
            w.release(LEAD);
        }
    }

    /// Called by a kernel source after it started an operation: if threads
    /// wait in user space and none sleeps in the kernel (there was nothing
    /// to wait for there), the most recent is sent to sleep in the kernel.
    pub(crate) fn kernel_work_started(&self) {
        // Pairs with the fences in park and promote (a Dekker handshake on
        // the in-flight count and the sleeper flag).
        fence(Ordering::SeqCst);
        if self.has_sleeper.load(Ordering::SeqCst) || self.state().waiters() == 0 {
            return;
        }
        let mut stack = lock(&self.stack);
        if !stack.sleeper {
            self.lead_top(&mut stack);
        }
    }

    /// Claims up to `max` packets without blocking. `was_active` says the
    /// caller held a slot on this port, which this call gives up first (the
    /// thread's activity ends when it calls `get` again). On `Ok(k)` the caller
    /// is active and must [`take`](Self::take) `k` packets; on `Err` it is not
    /// active.
    pub fn try_claim(&self, was_active: bool, max: u64) -> Result<u64, NoPacket> {
        let mine = if was_active { ONE_ACTIVE } else { 0 };
        let mut s = self.state();
        loop {
            if s.closed() {
                if was_active {
                    self.state.fetch_sub(ONE_ACTIVE, Ordering::AcqRel);
                }
                return Err(NoPacket::Closed);
            }
            let others = StateWord(s.0 - mine);
            let k = others.claimable(self.limit).min(max);
            if k > 0 {
                let new = others.0 - k * ONE_QUEUED + ONE_ACTIVE;
                match self.cas(s, new) {
                    Ok(()) => {
                        self.note_active(StateWord(new).active());
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
    pub fn claim_more(&self, max: u64) -> u64 {
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

    /// Parks the (inactive) caller until it is granted a packet, the port
    /// closes, or the deadline passes. On `Ok(k)` the caller is active and
    /// must take `k` packets. If the port has a kernel source and nobody
    /// sleeps on it, the caller sleeps there instead of in user space,
    /// harvesting what wakes it.
    pub fn park(&self, me: &Arc<Waiter>, deadline: Option<Instant>) -> Result<u64, NoPacket> {
        loop {
            let in_kernel = {
                let mut stack = lock(&self.stack);
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
                            self.note_active(StateWord(new).active());
                            return Ok(1);
                        }
                        Ok(()) => break,
                        Err(now) => s = now,
                    }
                }
                // Our waiter count is published (the CAS above); the fence
                // pairs with kernel_work_started's: either we see its
                // operation in flight and sleep in the kernel, or it sees us
                // waiting and sends us there.
                fence(Ordering::SeqCst);
                let in_kernel = !stack.sleeper && self.kernel.as_ref().is_some_and(|k| k.busy());
                me.reset(in_kernel);
                if in_kernel {
                    stack.sleeper = true;
                    self.has_sleeper.store(true, Ordering::SeqCst);
                    stack.waiters.insert(0, me.clone());
                } else {
                    stack.waiters.push(me.clone());
                }
                in_kernel
            };
            if let (true, Some(kernel)) = (in_kernel, &self.kernel) {
                kernel.sleep(deadline);
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                if me.verdict() != WAITING || expired {
                    match self.leave_kernel(me) {
                        // Not granted and not past the deadline: wait again.
                        Err(NoPacket::Empty) if !expired => continue,
                        result => return result,
                    }
                }
                // Completions woke us (or nothing did). Step off the stack and
                // reap, keeping the first completion: the thread that is awake
                // runs it, with no hop to another thread. The rest go to the
                // most recent waiters.
                if let Some(result) = self.step_out(me) {
                    return result;
                }
                if kernel.harvest(self, true) {
                    // Whoever waits behind us now watches the kernel, unless
                    // a thread took the role while we harvested (we left it
                    // in step_out): promoting then would clear *its* claim
                    // and could hand it a LEAD verdict while it sleeps
                    // there, which once sent a `get(None)` home empty.
                    let mut stack = lock(&self.stack);
                    if !stack.sleeper {
                        self.promote(&mut stack);
                    }
                    return Ok(1);
                }
                continue; // nothing for us: wait again
            }
            // Parking in user space: no enter of ours will submit what this
            // thread held back.
            if let Some(k) = &self.kernel {
                k.submit_held();
            }
            let verdict = match me.wait(deadline) {
                WAITING => self.unpark_timed_out(me),
                v => v,
            };
            match verdict {
                GRANTED => return Ok(1),
                CLOSED => return Err(NoPacket::Closed),
                // Promoted: take the kernel sleeper's place (even past our
                // deadline, for one pass, so that leaving promotes the next
                // waiter and the role is never dropped while threads wait).
                LEAD => continue,
                _ => return Err(NoPacket::Empty),
            }
        }
    }

    /// The kernel sleeper is back, granted, closed, or past its deadline;
    /// it gives up the role.
    fn leave_kernel(&self, me: &Arc<Waiter>) -> Result<u64, NoPacket> {
        let mut stack = lock(&self.stack);
        let result = match me.verdict() {
            GRANTED => Ok(1),
            CLOSED => return Err(NoPacket::Closed),
            _ => {
                self.remove(&mut stack, me);
                Err(NoPacket::Empty)
            }
        };
        self.promote(&mut stack);
        result
    }

    /// The kernel sleeper leaves the stack and the role without a verdict,
    /// unless a verdict came meanwhile (then that is the result).
    fn step_out(&self, me: &Arc<Waiter>) -> Option<Result<u64, NoPacket>> {
        let mut stack = lock(&self.stack);
        match me.verdict() {
            WAITING => {
                self.remove(&mut stack, me);
                stack.sleeper = false;
                self.has_sleeper.store(false, Ordering::SeqCst);
                None
            }
            _ => {
                drop(stack);
                Some(self.leave_kernel(me))
            }
        }
    }

    fn remove(&self, stack: &mut Stack, me: &Arc<Waiter>) {
        if let Some(i) = stack.waiters.iter().rposition(|w| Arc::ptr_eq(w, me)) {
            stack.waiters.remove(i);
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
        }
    }

    /// The deadline passed. Under the mutex the verdict is final: either a
    /// releaser got to us first (and we take what it gave), or we are still on
    /// the stack and leave it (verdict `WAITING`).
    fn unpark_timed_out(&self, me: &Arc<Waiter>) -> u8 {
        let mut stack = lock(&self.stack);
        let verdict = me.verdict();
        if verdict == WAITING {
            self.remove(&mut stack, me);
        }
        verdict
    }

    /// Pops one claimed packet. `None` only if the port was closed and its
    /// queue drained after the claim.
    pub fn take(&self) -> Option<T> {
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
    pub fn release(&self) {
        let s = StateWord(self.state.fetch_sub(ONE_ACTIVE, Ordering::AcqRel) - ONE_ACTIVE);
        if s.waiter_runnable(self.limit) {
            self.grant_runnable(false);
        }
    }

    /// Grants queued packets to the most recent waiters while a waiter is
    /// runnable (`handoff`: counted as a post handing its packet over).
    #[cold]
    fn grant_runnable(&self, handoff: bool) {
        let mut stack = lock(&self.stack);
        let mut s = self.state();
        while s.waiter_runnable(self.limit) {
            let new = s.0 - ONE_WAITER - ONE_QUEUED + ONE_ACTIVE;
            match self.cas(s, new) {
                Ok(()) => {
                    self.note_active(StateWord(new).active());
                    if handoff {
                        self.counters.handoffs.fetch_add(1, Ordering::Relaxed);
                    }
                    self.grant_top(&mut stack);
                    s = StateWord(new);
                }
                Err(now) => s = now,
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
                // Clear the waiter count with the stack, so the two agree,
                // and the queued count: the drain below drops every
                // unclaimed packet, and nothing can be claimed once closed.
                let new = (s.0 & !(MAX_WAITERS * ONE_WAITER) & !(MAX_QUEUED * ONE_QUEUED))
                    | StateWord(0).with_closed().0;
                match self.cas(s, new) {
                    Ok(()) => break,
                    Err(now) => s = now,
                }
            }
            for w in std::mem::take(&mut stack.waiters) {
                self.release_waiter(&w, CLOSED);
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
