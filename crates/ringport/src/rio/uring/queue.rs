//! A completion queue on its own io_uring ring: its submission and consumer
//! sides, and what it does with requests: taking them in, starting their
//! lanes' chains, handing over their results, cancelling them, and closing.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::buffer::{self, Claim};
use super::super::charge::CqCommon;
use super::super::error::RioError;
use super::super::notify::{Notifier, Notify};
use super::super::request::RioResult;
use super::super::rq_shared::RqShared;
use super::chain::start_lanes;
use super::harvest::{Batch, Harvest};
use super::lane::Lane;
use super::request_table::{is_quiet, Done, RequestTable, NOP};
use crate::sync::lock;
use crate::sys::uring::ring::{Purpose, Ring};
use crate::Error;

/// How long closing or resizing waits for the kernel to hand back requests
/// it was asked to cancel.
pub(super) const KERNEL_WAIT: Duration = Duration::from_secs(2);

/// The submission side.
pub(super) struct Submission {
    pub(super) ring: Option<Arc<Ring>>,
    /// Lanes to start, and the chain being started (kept for their memory).
    pub(super) kick: Vec<Arc<Lane>>,
    pub(super) chain: Vec<u64>,
}

/// The consumer side.
pub(super) struct Consumer {
    pub(super) ring: Option<Arc<Ring>>,
    /// Completions taken from the ring (or an old ring), and results made
    /// in user space for datagram receives (see [`harvest`](super::harvest)),
    /// oldest first.
    pub(super) carry: VecDeque<Done>,
    /// Memory for the `recvmmsg` of those receives.
    pub(super) batch: Batch,
    /// Slices to release after a dequeue (kept to reuse its memory).
    pub(super) claims: Vec<Claim>,
    /// Lanes whose chain ended in what was taken out of the ring.
    pub(super) kick: Vec<Arc<Lane>>,
    pub(super) armed: bool,
    pub(super) fired: bool,
    /// Counts the rings the queue has had (a resize may move it to another).
    pub(super) generation: u64,
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
    // A polled queue is read by a thread spinning in user space: results
    // must land in the CQ ring without waiting for it to enter the kernel.
    coop_taskrun: false,
};

/// A ring for a completion queue of `size` results.
pub(in crate::rio) fn queue_ring(size: u32) -> std::io::Result<Ring> {
    // Room for each multishot's final completion (see `shot`).
    Ring::with_slack(size, &QUEUE_OPS)
}

/// A completion queue on its own io_uring ring.
pub(in crate::rio) struct UringCq {
    pub(super) submission: Mutex<Submission>,
    pub(super) consumer: Mutex<Consumer>,
    pub(super) table: Mutex<RequestTable>,
    pub(super) notifier: Notifier,
    pub(super) closed: AtomicBool,
}

impl UringCq {
    /// A lane for a request queue's requests of one kind that complete
    /// here.
    pub(in crate::rio) fn attach(&self) -> Arc<Lane> {
        Arc::new(Lane::default())
    }

    /// A queue on `ring`, notified as `notify` says.
    pub(in crate::rio) fn new(ring: Ring, notify: Notify) -> Result<UringCq, Error> {
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
                kick: Vec::new(),
                chain: Vec::new(),
            }),
            consumer: Mutex::new(Consumer {
                ring: Some(ring),
                carry: VecDeque::with_capacity(cap as usize),
                batch: Batch::default(),
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

    pub(in crate::rio) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Moves every completion in `ring` into `carry` (NOPs dropped, lanes
    /// told, requests to start again kept back; their lanes go to `kick`)
    /// and says whether `carry` now holds one that may notify.
    ///
    /// # Safety
    /// The caller holds the consumer lock.
    pub(super) unsafe fn absorb(
        &self,
        ring: &Ring,
        carry: &mut VecDeque<Done>,
        kick: &mut Vec<Arc<Lane>>,
    ) -> bool {
        // SAFETY: the caller holds the consumer lock.
        let cq = unsafe { ring.completions() };
        if !cq.is_empty() {
            let mut table = lock(&self.table);
            for e in cq {
                table.reaped(&e, kick, carry);
            }
        }
        carry.iter().any(|e| !is_quiet(e.user_data))
    }

    /// Whether results are waiting: what the ring holds is taken into
    /// `c.carry` first (a multishot's own completions, which are no results,
    /// must not fire a notification), then lanes it ended are started again.
    /// The caller holds the consumer lock (for `c`).
    pub(super) fn waiting(&self, common: &CqCommon, ring: &Ring, c: &mut Consumer) -> bool {
        // SAFETY: the caller holds the consumer lock.
        if !unsafe { ring.completions() }.is_empty() {
            // SAFETY: as above.
            unsafe { self.absorb(ring, &mut c.carry, &mut c.kick) };
            let _ = self.restart(common, c);
        }
        !c.carry.is_empty()
    }

    /// Takes what the ring holds into the consumer's carry, so that a lane
    /// whose chain the kernel has finished (a send that went out at once,
    /// say) starts its next one now rather than at the next dequeue; its
    /// lane goes to `kick`. The caller holds the submission lock, which
    /// comes after the consumer lock: hence the consumer only if it was
    /// free (see [`try_consumer`](Self::try_consumer)).
    pub(super) fn catch_up(&self, consumer: Option<&mut Consumer>, kick: &mut Vec<Arc<Lane>>) {
        let Some(Consumer { ring, carry, .. }) = consumer else {
            return;
        };
        if let Some(ring) = ring.as_ref() {
            // SAFETY: the consumer lock is held.
            unsafe { self.absorb(ring, carry, kick) };
        }
    }

    /// The consumer side, unless a consumer is at it: taken under the
    /// submission lock, which comes after it, hence only a try. With it, a
    /// submission can take what the ring holds, and datagrams waiting in a
    /// socket (see [`harvest`](super::harvest)).
    pub(super) fn try_consumer(&self) -> Option<std::sync::MutexGuard<'_, Consumer>> {
        match self.consumer.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Results were made in user space (see [`harvest`](super::harvest)),
    /// one of which may notify: an armed notification fires as a ring
    /// completion would have made it. Returns whether a NOP was queued on
    /// `ring` (for a port's poll of the ring), for the caller to submit. The
    /// caller holds the consumer lock (for `c`) and the submission lock.
    pub(super) fn made(&self, c: &mut Consumer, ring: &Ring) -> bool {
        if !c.armed || c.fired {
            return false;
        }
        c.fired = true;
        match &self.notifier {
            Notifier::Event(efd) => {
                // SAFETY: the consumer lock is held.
                unsafe { ring.set_eventfd(false) };
                efd.wake();
                false
            }
            Notifier::Port(_) => {
                // The port polls the ring: a completion makes it readable,
                // and the poll's recheck finds the notification due.
                let nop = io_uring::opcode::Nop::new().build().user_data(NOP);
                // SAFETY: the submission lock is held; a NOP points at no memory.
                unsafe { ring.push(&nop) }.is_ok()
            }
            Notifier::Polled => false,
        }
    }

    /// Starts the next chain of the lanes in `c.kick`, in one
    /// `io_uring_enter`, datagrams already waiting taken first (into
    /// `c.carry`). On failure the entries queued stay in the SQ for the next
    /// submission. The caller holds the consumer lock.
    pub(super) fn restart(&self, common: &CqCommon, c: &mut Consumer) -> Result<(), Error> {
        if c.kick.is_empty() {
            return Ok(());
        }
        let mut guard = lock(&self.submission);
        let Submission { ring, chain, .. } = &mut *guard;
        let Some(ring) = ring.as_ref() else {
            // Closed: closing ends every request.
            c.kick.clear();
            return Ok(());
        };
        let mut harvest = Harvest {
            carry: &mut c.carry,
            batch: &mut c.batch,
            notifying: false,
        };
        let started = start_lanes(
            &mut lock(&self.table),
            ring,
            chain,
            &mut c.kick,
            Some(&mut harvest),
        );
        let nop = harvest.notifying && self.made(c, ring);
        if started? || nop {
            common.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        Ok(())
    }

    /// See [`CompletionQueue::dequeue`](crate::rio::CompletionQueue::dequeue).
    pub(in crate::rio) fn dequeue(
        &self,
        common: &CqCommon,
        out: &mut [RioResult],
    ) -> Result<usize, Error> {
        let mut guard = lock(&self.consumer);
        let n = self.take(common, &mut guard, out)?;
        if !guard.kick.is_empty() {
            // The results are taken: a failed submission must not lose
            // them. What it queued stays in the SQ for the next one.
            let _ = self.restart(common, &mut guard);
        }
        Ok(n)
    }

    /// Hands over up to `out.len()` results, from carry, then the ring;
    /// lanes whose chain ended go to the consumer's kick.
    fn take(
        &self,
        common: &CqCommon,
        c: &mut Consumer,
        out: &mut [RioResult],
    ) -> Result<usize, Error> {
        let Consumer {
            ring,
            carry,
            claims,
            kick,
            armed,
            fired,
            ..
        } = c;
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
                    // What it means goes to carry (a multishot's completion
                    // may end several receives, or none).
                    Some(e) => {
                        table.reaped(&e, kick, carry);
                        continue;
                    }
                    None => break,
                },
            };
            let ud = e.user_data;
            if *armed && !is_quiet(ud) {
                // The armed notification has fired (or is firing) for this.
                *fired = true;
            }
            if let Some(r) = table.complete(ud, e.result, claims) {
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
        Ok(n)
    }

    /// Cancels every request of `rq` in `lanes` (its lanes of the kinds
    /// that complete here; a request queue being dropped). Those waiting in
    /// a lane go to the ring as NOPs that complete them as cancelled (they
    /// must not start now, out of order); those in the kernel are cancelled
    /// there.
    pub(in crate::rio) fn cancel(&self, rq: &RqShared, lanes: [Option<&Arc<Lane>>; 2]) {
        let guard = lock(&self.submission);
        let Some(ring) = guard.ring.as_ref() else {
            return;
        };
        let mut table = lock(&self.table);
        table
            .deferred
            .retain(|d| !lanes.iter().flatten().any(|l| Arc::ptr_eq(d, l)));
        for lane in lanes.into_iter().flatten() {
            // SAFETY: the table lock is held, and no other guard of a lane
            // (the two lanes are distinct, and the table's methods called
            // with this one take none).
            let mut lane = unsafe { lane.lock() };
            lane.deferred = 0;
            lane.requeue_again();
            // Receives published to a buffer ring no multishot reads come
            // back to be cancelled here; those of an armed one end when
            // the kernel gives it back (cancelled below).
            table.cancel_shot(&mut lane);
            while let Some(ud) = lane.waiting.pop_front() {
                let Some(nop) = table.entry(ud, false, true, false) else {
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
    pub(super) fn nop(&self) -> Result<(), Error> {
        let sub = lock(&self.submission);
        let ring = sub.ring.as_ref().ok_or(RioError::QueueClosed)?;
        let nop = io_uring::opcode::Nop::new().build().user_data(NOP);
        // SAFETY: the submission lock is held; a NOP points at no memory.
        unsafe { ring.push(&nop)? };
        ring.submit()?;
        Ok(())
    }

    /// See [`CompletionQueue::close`](crate::rio::CompletionQueue::close).
    pub(in crate::rio) fn close(&self) -> Result<(), Error> {
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
        table.closing = true;
        let c = &mut *consumer;
        // Receives published to buffer rings no multishot reads end here.
        table.end_unarmed_shots(&mut c.carry);
        // Results are dropped: completing them ends their requests.
        for e in c.carry.drain(..) {
            table.complete(e.user_data, e.result, &mut c.claims);
        }
        // Requests that never reached the kernel end here; it owes nothing
        // for them.
        table.end_waiting(&mut c.claims);
        table.deferred.clear();
        submission.kick.clear();
        c.kick.clear();
        loop {
            // SAFETY: the consumer lock is held.
            for e in unsafe { ring.completions() } {
                table.reaped(&e, &mut c.kick, &mut c.carry);
            }
            for e in c.carry.drain(..) {
                table.complete(e.user_data, e.result, &mut c.claims);
            }
            c.kick.clear();
            // (A multishot may be owed with no receive left in its ring.)
            let owed = table.live() > 0 || table.in_kernel() > 0;
            if !owed || Instant::now() >= deadline {
                break;
            }
            ring.wait(Some(
                deadline.min(Instant::now() + Duration::from_millis(50)),
            ));
        }
        buffer::release(&c.claims);
        c.claims.clear();
        // A multishot the kernel still holds (its final completion not
        // reaped) may read its buffer ring even with no request left.
        let outstanding = table.live().max(table.in_kernel());
        if table.in_kernel() == 0 {
            // Every multishot was given back: nothing reads the buffer
            // rings, which can go (their memory with the table).
            table.unregister_shots(&ring);
        }
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
