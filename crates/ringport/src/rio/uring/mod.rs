//! The io_uring engine of a completion queue.
//!
//! Each queue owns an io_uring ring. Request queues submit to it (under the
//! submission lock), the owner reads its CQ ring (under the consumer lock,
//! uncontended when one thread dequeues, so a dequeue is a few loads and
//! stores on shared memory), and a request table keeps each request and its
//! kernel-visible memory until its result is dequeued.
//!
//! Results the queue has taken out of the ring but not yet handed over (when
//! `wait` looks for a result that may notify, or a resize moves to a bigger
//! ring) wait in `carry`, which is always read before the ring.
//!
//! Requests reach the ring through their request queue's [`Lane`] of their
//! kind, one linked chain at a time, so that they complete in posting order
//! (see [`lane`]). Wherever a completion is taken out of the ring (dequeue,
//! a notification's check, wait, resize), the lane learns of it, and a chain
//! that has ended lets the next one go, in one `io_uring_enter` for all the
//! lanes that one look at the ring restarted; a dequeue that restarts
//! nothing makes no system call.
//!
//! Lock order: consumer, then submission, then the request table, then a lane, then
//! capacity; the buffer registry's lock is taken last, alone or under the request table.

mod lane;
mod request_table;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::cqueue;

pub(super) use self::lane::Lane;
use self::lane::LaneState;
use self::request_table::{is_quiet, RequestTable, NOP};
use super::buffer::{self, Claim};
use super::charge::CqCommon;
use super::error::RioError;
use super::notify::{wait_slice, Notifier, Notify, PortTarget};
use super::request::{Request, RioResult};
use super::rq_shared::RqShared;
use crate::sync::lock;
use crate::sys::op::Recheck;
use crate::sys::uring::ring::{Purpose, Ring};
use crate::Error;

/// How long closing or resizing waits for the kernel to hand back requests
/// it was asked to cancel.
const KERNEL_WAIT: Duration = Duration::from_secs(2);

/// The submission side.
struct Submission {
    ring: Option<Arc<Ring>>,
    /// Lanes holding requests made with `DEFER`, for the next commit.
    deferred: Vec<Arc<Lane>>,
    /// Lanes to start, and the chain being started (kept for their memory).
    kick: Vec<Arc<Lane>>,
    chain: Vec<u64>,
}

/// The consumer side.
struct Consumer {
    ring: Option<Arc<Ring>>,
    /// Completions taken from the ring (or an old ring), oldest first.
    carry: VecDeque<cqueue::Entry>,
    /// Slices to release after a dequeue (kept to reuse its memory).
    claims: Vec<Claim>,
    /// Lanes whose chain ended in what was taken out of the ring.
    kick: Vec<Arc<Lane>>,
    armed: bool,
    fired: bool,
    /// Counts the rings the queue has had (a resize may move it to another).
    generation: u64,
}

/// Every opcode a completion queue's requests use.
const QUEUE_OPS: Purpose = Purpose {
    what: "a completion queue",
    ops: &[
        (io_uring::opcode::Nop::CODE, "NOP"),
        (io_uring::opcode::Recv::CODE, "RECV"),
        (io_uring::opcode::Send::CODE, "SEND"),
        (io_uring::opcode::RecvMsg::CODE, "RECVMSG"),
        (io_uring::opcode::SendMsg::CODE, "SENDMSG"),
    ],
};

/// A ring for a completion queue of `size` results.
pub(super) fn queue_ring(size: u32) -> std::io::Result<Ring> {
    Ring::new(size, size, &QUEUE_OPS)
}

/// A completion queue on its own io_uring ring.
pub(super) struct UringCq {
    submission: Mutex<Submission>,
    consumer: Mutex<Consumer>,
    table: Mutex<RequestTable>,
    notifier: Notifier,
    closed: AtomicBool,
}

/// Commits the deferred requests of every lane in `deferred`: they may go in
/// the next chain; lanes that can start now go to `kick`.
fn commit_lanes(deferred: &mut Vec<Arc<Lane>>, kick: &mut Vec<Arc<Lane>>) {
    for lane in deferred.drain(..) {
        let startable = {
            let mut state = lane.lock();
            state.deferred = 0;
            state.startable()
        };
        if startable {
            kick.push(lane);
        }
    }
}

/// Starts the next chain of every lane in `kick` on `ring`, each in posting
/// order, linked so that each request starts when the one before it is
/// over. Returns whether any entry was queued; the caller submits. The
/// caller holds the submission lock (it owns `ring`'s SQ).
fn start_lanes(
    table: &mut RequestTable,
    ring: &Ring,
    chain: &mut Vec<u64>,
    kick: &mut Vec<Arc<Lane>>,
) -> std::io::Result<bool> {
    let mut queued = false;
    let mut result = Ok(());
    for lane in kick.drain(..) {
        if result.is_ok() {
            match start_lane(table, ring, chain, &mut lane.lock()) {
                Ok(q) => queued |= q,
                // The lane stays idle with its requests waiting; its next
                // request or commit starts it.
                Err(e) => result = Err(e),
            }
        }
    }
    result.map(|()| queued)
}

fn start_lane(
    table: &mut RequestTable,
    ring: &Ring,
    chain: &mut Vec<u64>,
    lane: &mut LaneState,
) -> std::io::Result<bool> {
    if lane.in_kernel > 0 {
        return Ok(false);
    }
    lane.requeue_again();
    // A link does not span two submissions: a chain fits in the SQ.
    let n = lane.ready().min(ring.sq_entries());
    if n == 0 {
        return Ok(false);
    }
    // SAFETY: the caller holds the submission lock.
    if ring.sq_entries() - unsafe { ring.queued() } < n {
        ring.submit()?;
    }
    chain.clear();
    chain.extend(lane.waiting.drain(..n));
    // Lanes hold only requests waiting here; should one not be, a link must
    // still not dangle from the chain's last entry into another lane's.
    chain.retain(|&ud| table.is_waiting(ud));
    let mut queued = 0;
    while queued < chain.len() {
        let ud = chain[queued];
        let Some(entry) = table.entry(ud, queued + 1 < chain.len(), false) else {
            break;
        };
        // SAFETY: the submission lock is held. The entry points at
        // registered memory the request has claimed (released only once its
        // completion is reaped) and at its slot's boxed scratch memory (kept
        // as long as the table, which outlives every reaped completion).
        if let Err(e) = unsafe { ring.push(&entry) } {
            // Only when the SQ was full, which the room made above rules out.
            table.not_queued(ud);
            for &ud in chain[queued..].iter().rev() {
                lane.waiting.push_front(ud);
            }
            lane.in_kernel = queued as u32;
            return Err(e);
        }
        queued += 1;
    }
    lane.in_kernel = queued as u32;
    Ok(queued > 0)
}

/// Whether results are waiting in `ring` or `carry`.
///
/// # Safety
/// The caller holds the consumer lock.
unsafe fn waiting(ring: &Ring, carry: &VecDeque<cqueue::Entry>) -> bool {
    // SAFETY: the caller holds the consumer lock.
    !carry.is_empty() || !unsafe { ring.completions() }.is_empty()
}

impl UringCq {
    /// A lane for a request queue's requests of one kind that complete
    /// here.
    pub(super) fn attach(&self) -> Arc<Lane> {
        Arc::new(Lane::default())
    }

    /// A queue on `ring`, notified as `notify` says.
    pub(super) fn new(ring: Ring, notify: Notify) -> Result<UringCq, Error> {
        let notifier = Notifier::new(notify)?;
        if let Notifier::Event(efd) = &notifier {
            ring.register_eventfd(efd.as_raw_fd())?;
            // SAFETY: no one else can see the ring yet, so this thread
            // is its only consumer.
            unsafe { ring.set_eventfd(false) };
        }
        let cap = ring.capacity();
        let ring = Arc::new(ring);
        Ok(UringCq {
            submission: Mutex::new(Submission {
                ring: Some(ring.clone()),
                deferred: Vec::new(),
                kick: Vec::new(),
                chain: Vec::new(),
            }),
            consumer: Mutex::new(Consumer {
                ring: Some(ring),
                carry: VecDeque::with_capacity(cap as usize),
                claims: Vec::with_capacity(256),
                kick: Vec::new(),
                armed: false,
                fired: false,
                generation: 0,
            }),
            table: Mutex::new(RequestTable::new(cap)),
            notifier,
            closed: AtomicBool::new(false),
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Moves every completion in `ring` into `carry` (NOPs dropped, lanes
    /// told, requests to start again kept back; their lanes go to `kick`)
    /// and says whether `carry` now holds one that may notify.
    ///
    /// # Safety
    /// The caller holds the consumer lock.
    unsafe fn absorb(
        &self,
        ring: &Ring,
        carry: &mut VecDeque<cqueue::Entry>,
        kick: &mut Vec<Arc<Lane>>,
    ) -> bool {
        // SAFETY: the caller holds the consumer lock.
        let cq = unsafe { ring.completions() };
        if !cq.is_empty() {
            let mut table = lock(&self.table);
            for e in cq {
                if e.user_data() != NOP && table.taken(e.user_data(), e.result(), kick) {
                    carry.push_back(e);
                }
            }
        }
        carry.iter().any(|e| !is_quiet(e.user_data()))
    }

    /// Takes what the ring holds into carry, unless a consumer is at it, so
    /// that a lane whose chain the kernel has finished (a send that went out
    /// at once, say) starts its next one now rather than at the next
    /// dequeue; its lane goes to `kick`. The caller holds the submission
    /// lock, which comes after the consumer lock: hence only a try.
    fn catch_up(&self, kick: &mut Vec<Arc<Lane>>) {
        let Ok(mut guard) = self.consumer.try_lock() else {
            return;
        };
        let Consumer { ring, carry, .. } = &mut *guard;
        if let Some(ring) = ring.as_ref() {
            // SAFETY: the consumer lock is held.
            unsafe { self.absorb(ring, carry, kick) };
        }
    }

    /// Starts the next chain of the lanes in `kick`, in one `io_uring_enter`.
    /// On failure the entries queued stay in the SQ for the next submission.
    fn restart(&self, common: &CqCommon, kick: &mut Vec<Arc<Lane>>) -> Result<(), Error> {
        if kick.is_empty() {
            return Ok(());
        }
        let mut guard = lock(&self.submission);
        let Submission { ring, chain, .. } = &mut *guard;
        let Some(ring) = ring.as_ref() else {
            // Closed: closing ends every request.
            kick.clear();
            return Ok(());
        };
        let queued = start_lanes(&mut lock(&self.table), ring, chain, kick)?;
        if queued {
            common.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        Ok(())
    }

    /// See [`CompletionQueue::dequeue`](super::CompletionQueue::dequeue).
    pub(super) fn dequeue(&self, common: &CqCommon, out: &mut [RioResult]) -> Result<usize, Error> {
        let mut guard = lock(&self.consumer);
        let Consumer {
            ring,
            carry,
            claims,
            kick,
            armed,
            fired,
            ..
        } = &mut *guard;
        let ring = ring.as_ref().ok_or(RioError::QueueClosed)?;
        common.counters.dequeues.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the consumer lock is held for the view's life.
        let mut cq = unsafe { ring.completions() };
        if out.is_empty() || (carry.is_empty() && cq.is_empty()) {
            return Ok(0);
        }
        let mut table = lock(&self.table);
        let mut n = 0;
        while n < out.len() {
            let e = match carry.pop_front() {
                Some(e) => e,
                None => match cq.next() {
                    Some(e) if e.user_data() == NOP => continue,
                    Some(e) if !table.taken(e.user_data(), e.result(), kick) => continue,
                    Some(e) => e,
                    None => break,
                },
            };
            let ud = e.user_data();
            if *armed && !is_quiet(ud) {
                // The armed notification has fired (or is firing) for this.
                *fired = true;
            }
            if let Some(r) = table.complete(ud, e.result(), claims) {
                out[n] = r;
                n += 1;
            }
        }
        drop(cq);
        drop(table);
        buffer::release(claims);
        claims.clear();
        common
            .counters
            .results
            .fetch_add(n as u64, Ordering::Relaxed);
        // The results are taken: a failed submission must not lose them.
        // What it queued stays in the SQ for the next one.
        let _ = self.restart(common, kick);
        Ok(n)
    }

    /// See [`CompletionQueue::notify`](super::CompletionQueue::notify).
    /// `recheck` makes the check for a port notification's poll: it must call
    /// [`poll_fired`](Self::poll_fired), and [`rearm`](Self::rearm) when
    /// that says no.
    pub(super) fn notify(
        &self,
        common: &CqCommon,
        recheck: impl FnOnce() -> Recheck,
    ) -> Result<(), Error> {
        let mut guard = lock(&self.consumer);
        let c = &mut *guard;
        let ring = c.ring.clone().ok_or(RioError::QueueClosed)?;
        match &self.notifier {
            Notifier::Polled => Err(RioError::WrongNotification.into()),
            Notifier::Event(efd) => {
                if c.armed && !c.fired {
                    // SAFETY: the consumer lock is held.
                    let notifying = unsafe { self.absorb(&ring, &mut c.carry, &mut c.kick) };
                    let _ = self.restart(common, &mut c.kick);
                    if notifying {
                        c.fired = true;
                    } else {
                        return Err(RioError::AlreadyArmed.into());
                    }
                }
                c.armed = true;
                c.fired = false;
                common.counters.notifies.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the consumer lock is held.
                if unsafe { waiting(&ring, &c.carry) } {
                    c.fired = true;
                    efd.wake();
                    return Ok(());
                }
                // SAFETY: the consumer lock is held.
                unsafe { ring.set_eventfd(true) };
                // Pairs with the kernel's barrier between publishing a CQE
                // and reading the flag: either it sees the flag clear, or we
                // see its CQE here.
                fence(Ordering::SeqCst);
                // SAFETY: the consumer lock is held.
                if unsafe { waiting(&ring, &c.carry) } {
                    // SAFETY: the consumer lock is held.
                    unsafe { ring.set_eventfd(false) };
                    c.fired = true;
                    efd.wake();
                }
                Ok(())
            }
            Notifier::Port(target) => {
                // SAFETY: the consumer lock is held.
                let results = unsafe { waiting(&ring, &c.carry) };
                if c.armed && !c.fired && !results {
                    return Err(RioError::AlreadyArmed.into());
                }
                c.armed = true;
                c.fired = results;
                let generation = c.generation;
                drop(guard);
                if let Err(e) = self.arm(target, &ring, generation, recheck()) {
                    lock(&self.consumer).armed = false;
                    return Err(e);
                }
                common.counters.notifies.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Queues the port's poll of `ring`, without the consumer lock: on the
    /// port's epoll backend the poll may complete within this call, and its
    /// recheck takes that lock.
    fn arm(
        &self,
        target: &PortTarget,
        ring: &Ring,
        generation: u64,
        recheck: Recheck,
    ) -> Result<(), Error> {
        target.arm(ring.as_raw_fd(), generation, recheck)?;
        let c = lock(&self.consumer);
        // SAFETY: the consumer lock is held.
        if c.fired && unsafe { ring.completions() }.is_empty() {
            // The notification is due, but the poll may see an empty ring:
            // results that wait in carry, or were dequeued since they were
            // counted, are where it cannot see them. A NOP makes the ring
            // readable, so the poll fires and its recheck finds it due.
            drop(c);
            self.nop()?;
        }
        Ok(())
    }

    /// The port's poll of the ring fired. Whether the armed notification is
    /// due: a result that may notify has arrived, was dequeued while armed,
    /// or results were waiting when it was armed. `DONT_NOTIFY` results
    /// alone do not make it due; they move to carry, so that the next poll
    /// waits for a new completion. A closed queue is always due (closing
    /// makes the poll fire so that it lets go of the ring).
    pub(super) fn poll_fired(&self, common: &CqCommon) -> bool {
        let mut guard = lock(&self.consumer);
        let c = &mut *guard;
        let Some(ring) = c.ring.clone() else {
            return true;
        };
        // SAFETY: the consumer lock is held.
        if !c.fired && unsafe { self.absorb(&ring, &mut c.carry, &mut c.kick) } {
            c.fired = true;
        }
        let _ = self.restart(common, &mut c.kick);
        c.fired
    }

    /// Queues the port's next poll of the ring, after
    /// [`poll_fired`](Self::poll_fired) found the notification not due.
    pub(super) fn rearm(&self, recheck: Recheck) -> Result<(), Error> {
        let Notifier::Port(target) = &self.notifier else {
            return Ok(());
        };
        let (ring, generation) = {
            let c = lock(&self.consumer);
            (c.ring.clone().ok_or(RioError::QueueClosed)?, c.generation)
        };
        self.arm(target, &ring, generation, recheck)
    }

    /// See [`CompletionQueue::wait`](super::CompletionQueue::wait).
    pub(super) fn wait(&self, common: &CqCommon, timeout: Option<Duration>) -> Result<(), Error> {
        let Notifier::Event(efd) = &self.notifier else {
            return Err(RioError::WrongNotification.into());
        };
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            {
                let mut guard = lock(&self.consumer);
                let c = &mut *guard;
                let ring = c.ring.clone().ok_or(RioError::QueueClosed)?;
                if !c.armed {
                    return Err(RioError::NotArmed.into());
                }
                // SAFETY: the consumer lock is held.
                if !c.fired && unsafe { self.absorb(&ring, &mut c.carry, &mut c.kick) } {
                    c.fired = true;
                }
                let _ = self.restart(common, &mut c.kick);
                if c.fired {
                    // SAFETY: the consumer lock is held.
                    unsafe { ring.set_eventfd(false) };
                    efd.reset();
                    c.armed = false;
                    c.fired = false;
                    return Ok(());
                }
            }
            let slice = wait_slice(deadline)?;
            if efd.wait(slice) {
                efd.reset();
            }
        }
    }

    pub(super) fn is_armed(&self) -> bool {
        let c = lock(&self.consumer);
        c.armed && !c.fired
    }

    pub(super) fn event_fd(&self) -> Option<RawFd> {
        match &self.notifier {
            Notifier::Event(efd) => Some(efd.as_raw_fd()),
            _ => None,
        }
    }

    pub(super) fn ring_capacity(&self) -> u32 {
        lock(&self.consumer)
            .ring
            .as_ref()
            .map_or(0, |r| r.capacity())
    }

    /// See [`CompletionQueue::resize`](super::CompletionQueue::resize).
    pub(super) fn resize(&self, common: &CqCommon, new_size: u32) -> Result<(), Error> {
        let mut consumer = lock(&self.consumer);
        let mut submission = lock(&self.submission);
        let old = submission.ring.clone().ok_or(RioError::QueueClosed)?;
        {
            let mut cap = common.capacity.lock();
            if new_size < cap.charged {
                return Err(RioError::BelowOutstanding {
                    in_use: cap.charged,
                    asked: new_size,
                }
                .into());
            }
            if new_size <= old.capacity() {
                cap.size = new_size;
                return Ok(());
            }
        }
        if consumer.armed && !consumer.fired {
            return Err(RioError::Armed.into());
        }
        let new = queue_ring(new_size)?;
        if let Notifier::Event(efd) = &self.notifier {
            new.register_eventfd(efd.as_raw_fd())?;
            // SAFETY: the new ring is not shared yet; we hold the consumer lock.
            unsafe { new.set_eventfd(false) };
        }
        let new = Arc::new(new);
        let chain = &mut submission.chain;
        self.migrate(&old, &new, &mut consumer.carry, chain)?;
        submission.ring = Some(new.clone());
        consumer.ring = Some(new);
        consumer.generation += 1;
        common.capacity.lock().size = new_size;
        Ok(())
    }

    /// Queues `request` behind the others of its lane, and unless `defer`
    /// commits every lane and submits what can start: the request itself if
    /// its lane is idle (else it starts when the chain before it ends).
    ///
    /// If the submitting `io_uring_enter` fails, the error is returned but
    /// the request stays queued, as if deferred: the next submission takes it.
    pub(super) fn submit(
        &self,
        common: &CqCommon,
        request: Request,
        lane: &Arc<Lane>,
        defer: bool,
    ) -> Result<(), Error> {
        let mut guard = lock(&self.submission);
        let Submission {
            ring,
            deferred,
            kick,
            chain,
        } = &mut *guard;
        let Some(ring) = ring.as_ref() else {
            request.abandon();
            return Err(RioError::QueueClosed.into());
        };
        let mut table = lock(&self.table);
        let Some(user_data) = table.insert(request, lane) else {
            drop(table);
            return Err(common.capacity.full());
        };
        let (first_deferred, busy) = {
            let mut state = lane.lock();
            state.waiting.push_back(user_data);
            state.deferred += usize::from(defer);
            (defer && state.deferred == 1, state.in_kernel > 0)
        };
        common.counters.requests.fetch_add(1, Ordering::Relaxed);
        if defer {
            if first_deferred {
                deferred.push(lane.clone());
            }
            return Ok(());
        }
        commit_lanes(deferred, kick);
        kick.push(lane.clone());
        if busy {
            drop(table);
            self.catch_up(kick);
            table = lock(&self.table);
        }
        let started = start_lanes(&mut table, ring, chain, kick);
        drop(table);
        // SAFETY: the submission lock is held.
        if unsafe { ring.queued() } > 0 {
            common.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        started?;
        Ok(())
    }

    /// Commits every deferred request and submits, in one `io_uring_enter`,
    /// those whose lanes are idle (the rest go when their chains end).
    pub(super) fn commit(&self, common: &CqCommon) -> Result<(), Error> {
        let mut guard = lock(&self.submission);
        let Submission {
            ring,
            deferred,
            kick,
            chain,
        } = &mut *guard;
        let ring = ring.as_ref().ok_or(RioError::QueueClosed)?;
        commit_lanes(deferred, kick);
        self.catch_up(kick);
        let started = start_lanes(&mut lock(&self.table), ring, chain, kick);
        // SAFETY: the submission lock is held.
        if unsafe { ring.queued() } > 0 {
            common.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        started?;
        Ok(())
    }

    /// Cancels every request of `rq` in `lanes` (its lanes of the kinds
    /// that complete here; a request queue being dropped). Those waiting in
    /// a lane go to the ring as NOPs that complete them as cancelled (they
    /// must not start now, out of order); those in the kernel are cancelled
    /// there.
    pub(super) fn cancel(&self, rq: &RqShared, lanes: [Option<&Arc<Lane>>; 2]) {
        let mut guard = lock(&self.submission);
        let Submission { ring, deferred, .. } = &mut *guard;
        let Some(ring) = ring.as_ref() else {
            return;
        };
        deferred.retain(|d| !lanes.iter().flatten().any(|l| Arc::ptr_eq(d, l)));
        let mut table = lock(&self.table);
        for lane in lanes.into_iter().flatten() {
            let mut lane = lane.lock();
            lane.deferred = 0;
            lane.requeue_again();
            while let Some(ud) = lane.waiting.pop_front() {
                let Some(nop) = table.entry(ud, false, true) else {
                    continue;
                };
                // SAFETY: the submission lock is held; a NOP points at no memory.
                if unsafe { ring.push(&nop) }.is_err() {
                    table.not_queued(ud);
                    lane.waiting.push_front(ud);
                    break;
                }
                lane.in_kernel += 1;
            }
        }
        drop(table);
        let _ = ring.submit();
        let _ = ring.cancel_fd(rq.raw_fd(), Instant::now() + KERNEL_WAIT);
    }

    /// Submits a NOP, whose completion makes the ring readable.
    fn nop(&self) -> Result<(), Error> {
        let sub = lock(&self.submission);
        let ring = sub.ring.as_ref().ok_or(RioError::QueueClosed)?;
        let nop = io_uring::opcode::Nop::new().build().user_data(NOP);
        // SAFETY: the submission lock is held; a NOP points at no memory.
        unsafe { ring.push(&nop)? };
        ring.submit()?;
        Ok(())
    }

    /// Moves every request from `old` to `new`: completions waiting in `old`
    /// go to `carry`, requests in flight are cancelled, and each lane's
    /// requests the cancellation caught start again on `new`, in posting
    /// order, ahead of those waiting. The caller holds the consumer and
    /// submission locks, and passes the submission's chain memory.
    fn migrate(
        &self,
        old: &Ring,
        new: &Ring,
        carry: &mut VecDeque<cqueue::Entry>,
        chain: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let _ = old.submit();
        let mut kick = Vec::new();
        // SAFETY: the caller holds the consumer lock.
        unsafe { self.absorb(old, carry, &mut kick) };
        let mut table = lock(&self.table);
        let deadline = Instant::now() + KERNEL_WAIT;
        if table.in_kernel() > 0 {
            let _ = old.cancel_all(deadline);
        }
        while table.in_kernel() > 0 {
            // SAFETY: the caller holds the consumer lock.
            for e in unsafe { old.completions() } {
                if e.user_data() != NOP && table.taken(e.user_data(), e.result(), &mut kick) {
                    carry.push_back(e);
                }
            }
            if table.in_kernel() == 0 || Instant::now() >= deadline {
                break;
            }
            old.wait(Some(
                deadline.min(Instant::now() + Duration::from_millis(50)),
            ));
        }
        let in_kernel = table.in_kernel();
        let target = if in_kernel == 0 { new } else { old };
        if in_kernel == 0 {
            table.grow(new.capacity());
            carry.reserve(new.capacity() as usize);
        }
        start_lanes(&mut table, target, chain, &mut kick)?;
        target.submit()?;
        if in_kernel > 0 {
            return Err(RioError::KernelBusy {
                outstanding: in_kernel,
            }
            .into());
        }
        Ok(())
    }

    /// See [`CompletionQueue::close`](super::CompletionQueue::close).
    pub(super) fn close(&self) -> Result<(), Error> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut consumer = lock(&self.consumer);
        let mut submission = lock(&self.submission);
        consumer.ring = None;
        let Some(ring) = submission.ring.take() else {
            return Ok(());
        };
        // Deferred requests go to the kernel, to be cancelled with the rest.
        let _ = ring.submit();
        if let Notifier::Port(_) = self.notifier {
            if consumer.armed && !consumer.fired {
                // A completion makes the port's poll fire (and let go of the ring).
                let nop = io_uring::opcode::Nop::new().build().user_data(NOP);
                // SAFETY: the submission lock is held; a NOP points at no memory.
                if unsafe { ring.push(&nop) }.is_ok() {
                    let _ = ring.submit();
                }
            }
        }
        let deadline = Instant::now() + KERNEL_WAIT;
        let _ = ring.cancel_all(deadline);
        let mut table = lock(&self.table);
        let c = &mut *consumer;
        // Results are dropped: completing them ends their requests.
        for e in c.carry.drain(..) {
            table.complete(e.user_data(), e.result(), &mut c.claims);
        }
        // Requests that never reached the kernel end here; it owes nothing
        // for them.
        table.end_waiting(&mut c.claims);
        submission.deferred.clear();
        submission.kick.clear();
        c.kick.clear();
        loop {
            // SAFETY: the consumer lock is held.
            for e in unsafe { ring.completions() } {
                table.complete(e.user_data(), e.result(), &mut c.claims);
            }
            if table.live() == 0 || Instant::now() >= deadline {
                break;
            }
            ring.wait(Some(
                deadline.min(Instant::now() + Duration::from_millis(50)),
            ));
        }
        buffer::release(&c.claims);
        c.claims.clear();
        let outstanding = table.live();
        if outstanding > 0 {
            // The kernel may still write through pointers in these requests:
            // keep their memory (and the ring) forever rather than free it.
            std::mem::forget(std::mem::replace(&mut *table, RequestTable::new(0)));
            std::mem::forget(ring);
        }
        drop(table);
        drop(submission);
        drop(consumer);
        if let Notifier::Event(efd) = &self.notifier {
            efd.wake();
        }
        if outstanding > 0 {
            return Err(RioError::KernelBusy { outstanding }.into());
        }
        Ok(())
    }
}
