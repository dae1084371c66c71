//! A completion queue's notification on io_uring: an eventfd registered
//! with the ring and switched on by a store to the CQ ring's flags, or a
//! one-shot poll of the ring's descriptor on a completion port, rechecked
//! when it fires.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::super::charge::CqCommon;
use super::super::error::RioError;
use super::super::notify::{wait_slice, Notifier, PortTarget};
use super::queue::UringCq;
use crate::sync::lock;
use crate::sys::op::Recheck;
use crate::sys::uring::ring::Ring;
use crate::Error;

impl UringCq {
    /// See [`CompletionQueue::notify`](crate::rio::CompletionQueue::notify).
    /// `recheck` makes the check for a port notification's poll: it must call
    /// [`poll_fired`](Self::poll_fired), and [`rearm`](Self::rearm) when
    /// that says no.
    pub(in crate::rio) fn notify(
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
                    // Results made for datagrams may fire it here too.
                    let _ = self.restart(common, c);
                    if notifying || c.fired {
                        c.fired = true;
                    } else {
                        return Err(RioError::AlreadyArmed.into());
                    }
                }
                c.armed = true;
                c.fired = false;
                common.counters.notifies.fetch_add(1, Ordering::Relaxed);
                if self.waiting(common, &ring, c) {
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
                if self.waiting(common, &ring, c) {
                    // SAFETY: the consumer lock is held.
                    unsafe { ring.set_eventfd(false) };
                    c.fired = true;
                    efd.wake();
                }
                Ok(())
            }
            Notifier::Port(target) => {
                let results = self.waiting(common, &ring, c);
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
    pub(super) fn arm(
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
    pub(in crate::rio) fn poll_fired(&self, common: &CqCommon) -> bool {
        let mut guard = lock(&self.consumer);
        let c = &mut *guard;
        let Some(ring) = c.ring.clone() else {
            return true;
        };
        // SAFETY: the consumer lock is held.
        if !c.fired && unsafe { self.absorb(&ring, &mut c.carry, &mut c.kick) } {
            c.fired = true;
        }
        let _ = self.restart(common, c);
        c.fired
    }

    /// Queues the port's next poll of the ring, after
    /// [`poll_fired`](Self::poll_fired) found the notification not due.
    pub(in crate::rio) fn rearm(&self, recheck: Recheck) -> Result<(), Error> {
        let Notifier::Port(target) = &self.notifier else {
            return Ok(());
        };
        let (ring, generation) = {
            let c = lock(&self.consumer);
            (c.ring.clone().ok_or(RioError::QueueClosed)?, c.generation)
        };
        self.arm(target, &ring, generation, recheck)
    }

    /// See [`CompletionQueue::wait`](crate::rio::CompletionQueue::wait).
    pub(in crate::rio) fn wait(
        &self,
        common: &CqCommon,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
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
                let _ = self.restart(common, c);
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

    pub(in crate::rio) fn is_armed(&self) -> bool {
        let c = lock(&self.consumer);
        c.armed && !c.fired
    }

    pub(in crate::rio) fn event_fd(&self) -> Option<RawFd> {
        match &self.notifier {
            Notifier::Event(efd) => Some(efd.as_raw_fd()),
            _ => None,
        }
    }
}
