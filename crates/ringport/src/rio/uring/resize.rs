//! Resizing a completion queue on io_uring: up to its ring's capacity only
//! the number changes; beyond it the queue moves to a bigger ring, its
//! requests in flight cancelled and started again there in posting order.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::charge::CqCommon;
use super::super::error::RioError;
use super::super::notify::Notifier;
use super::chain::start_lanes;
use super::queue::{queue_ring, UringCq, KERNEL_WAIT};
use super::request_table::Done;
use crate::sync::lock;
use crate::sys::uring::ring::Ring;
use crate::Error;

impl UringCq {
    pub(in crate::rio) fn multishots(&self) -> u64 {
        lock(&self.table).multishots
    }

    pub(in crate::rio) fn ring_capacity(&self) -> u32 {
        lock(&self.consumer)
            .ring
            .as_ref()
            .map_or(0, |r| r.capacity())
    }

    /// See [`CompletionQueue::resize`](crate::rio::CompletionQueue::resize).
    pub(in crate::rio) fn resize(&self, common: &CqCommon, new_size: u32) -> Result<(), Error> {
        let mut consumer = lock(&self.consumer);
        let mut submission = lock(&self.submission);
        let old = submission.ring.clone().ok_or(RioError::QueueClosed)?;
        if common
            .capacity
            .resize_within(new_size, old.capacity() as usize)?
        {
            return Ok(());
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

    /// Moves every request from `old` to `new`: completions waiting in `old`
    /// go to `carry`, requests in flight are cancelled, and each lane's
    /// requests the cancellation caught start again on `new`, in posting
    /// order, ahead of those waiting. The caller holds the consumer and
    /// submission locks, and passes the submission's chain memory.
    pub(super) fn migrate(
        &self,
        old: &Ring,
        new: &Ring,
        carry: &mut VecDeque<Done>,
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
                table.reaped(&e, &mut kick, carry);
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
            // The buffer groups move too: their receives start again on
            // the new ring, first in their lanes.
            table.leave_ring(old, &mut kick);
            table.grow(new.capacity());
            carry.reserve(new.capacity() as usize);
        }
        start_lanes(&mut table, target, chain, &mut kick, None)?;
        target.submit()?;
        if in_kernel > 0 {
            return Err(RioError::KernelBusy {
                outstanding: in_kernel,
            }
            .into());
        }
        Ok(())
    }
}
