//! Taking requests in: each joins the back of its lane (see
//! [`lane`](super::lane)) under the request table lock. A request made with
//! `DEFER` takes only that lock, the commit after it doing the rest: a
//! receive loop that re-posts each dequeued slice deferred pays one lock per
//! request, not the submission lock as well. Any other request, and a
//! commit, take the submission lock too, commit every lane holding deferred
//! requests and start what can start.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::charge::{CqCommon, CqCounters};
use super::super::error::RioError;
use super::super::request::Request;
use super::chain::{commit_lanes, start_lanes};
use super::harvest::Harvest;
use super::lane::Lane;
use super::queue::{Consumer, Submission, UringCq};
use crate::sync::lock;
use crate::sys::uring::ring::Ring;
use crate::Error;

impl UringCq {
    /// Queues `request` behind the others of its lane, and unless `defer`
    /// commits every lane and submits what can start: the request itself if
    /// its lane is idle (else it starts when the chain before it ends).
    ///
    /// If the submitting `io_uring_enter` fails, the error is returned but
    /// the request stays queued, as if deferred: the next submission takes it.
    pub(in crate::rio) fn submit(
        &self,
        common: &CqCommon,
        request: Request,
        lane: &Arc<Lane>,
        defer: bool,
    ) -> Result<(), Error> {
        // A deferred request only joins its lane (the commit after it does
        // the rest): no submission lock. (One function for both, so that the
        // request is moved once, into its slot: passing it on by value costs
        // a `memcpy` of the whole request.)
        let mut submission = (!defer).then(|| lock(&self.submission));
        let mut table = lock(&self.table);
        // Closing sets `closed` first and later, under the table lock, ends
        // every request waiting in a lane: a request let in before that is
        // ended with them, one made after `closed` is refused here.
        let closed = submission.as_ref().is_some_and(|s| s.ring.is_none());
        if closed || self.is_closed() {
            drop(table);
            request.abandon();
            return Err(RioError::QueueClosed.into());
        }
        let Some((user_data, place)) = table.take_slot(request.quiet, lane) else {
            drop(table);
            request.abandon();
            return Err(common.capacity.full());
        };
        // Written without dropping the old value (a free slot holds none):
        // an assignment would build `Some(request)` aside first, to drop the
        // old value before moving it in, and copy the request twice.
        debug_assert!(place.is_none());
        // SAFETY: `place` is a valid, aligned `&mut` to an initialised
        // `Option<Request>` that is `None` (the slot was free), so
        // overwriting it without a drop leaks nothing.
        unsafe { std::ptr::write(place, Some(request)) };
        let (first_deferred, busy) = {
            // SAFETY: the table lock is held, and no other guard of a lane.
            let mut state = unsafe { lane.lock() };
            state.waiting.push_back(user_data);
            state.deferred += usize::from(defer);
            (defer && state.deferred == 1, state.in_kernel > 0)
        };
        // Every writer of `requests` holds the table lock.
        CqCounters::bump_locked(&common.counters.requests, 1);
        let Some(guard) = submission.as_mut() else {
            if first_deferred {
                table.deferred.push(lane.clone());
            }
            return Ok(());
        };
        let Submission { ring, kick, chain } = &mut **guard;
        let Some(ring) = ring.as_ref() else {
            return Ok(());
        };
        commit_lanes(&mut table, kick);
        kick.push(lane.clone());
        drop(table);
        self.start_and_submit(ring, chain, kick, busy, common)
    }

    /// Starts the lanes in `kick` (after catching up with what the kernel
    /// finished, if `catch_up`) and submits what that queued on `ring`. The
    /// caller holds the submission lock (`ring`, `chain`, `kick` are its).
    #[inline]
    fn start_and_submit(
        &self,
        ring: &Ring,
        chain: &mut Vec<u64>,
        kick: &mut Vec<Arc<Lane>>,
        catch_up: bool,
        common: &CqCommon,
    ) -> Result<(), Error> {
        let mut consumer = self.try_consumer();
        if catch_up {
            self.catch_up(consumer.as_deref_mut(), kick);
        }
        let started = self.start_with(ring, chain, kick, consumer.as_deref_mut());
        drop(consumer);
        // SAFETY: the submission lock is held.
        if unsafe { ring.queued() } > 0 {
            common.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        started?;
        Ok(())
    }

    /// Starts the lanes in `kick` on `ring` (a submission's), with the
    /// consumer if it was free: then datagrams already waiting go first
    /// into its carry, and an armed notification fires for them (a NOP
    /// for a port is queued on `ring`). The caller holds the submission
    /// lock and submits what was queued.
    fn start_with(
        &self,
        ring: &Ring,
        chain: &mut Vec<u64>,
        kick: &mut Vec<Arc<Lane>>,
        consumer: Option<&mut Consumer>,
    ) -> std::io::Result<bool> {
        let mut table = lock(&self.table);
        let Some(c) = consumer else {
            return start_lanes(&mut table, ring, chain, kick, None);
        };
        if c.ring.is_none() {
            return start_lanes(&mut table, ring, chain, kick, None);
        }
        let mut harvest = Harvest {
            carry: &mut c.carry,
            batch: &mut c.batch,
            notifying: false,
        };
        let started = start_lanes(&mut table, ring, chain, kick, Some(&mut harvest));
        drop(table);
        if harvest.notifying {
            self.made(c, ring);
        }
        started
    }

    /// Commits every deferred request and submits, in one `io_uring_enter`,
    /// those whose lanes are idle (the rest go when their chains end).
    pub(in crate::rio) fn commit(&self, common: &CqCommon) -> Result<(), Error> {
        let mut guard = lock(&self.submission);
        let Submission { ring, kick, chain } = &mut *guard;
        let ring = ring.as_ref().ok_or(RioError::QueueClosed)?;
        commit_lanes(&mut lock(&self.table), kick);
        self.start_and_submit(ring, chain, kick, true, common)
    }
}
