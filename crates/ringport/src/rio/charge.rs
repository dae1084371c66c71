//! What every completion queue keeps whatever engine runs it, and what its
//! engine and its request queues share with it: its size and the entries
//! request queues have charged to it, and its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::RioError;
use crate::sync::lock;
use crate::Error;

/// The largest completion queue (io_uring's largest CQ ring).
pub(super) const MAX_SIZE: u32 = 65_536;

/// The counters behind [`CqStats`](super::CqStats), updated by the engines.
#[derive(Default)]
pub(super) struct CqCounters {
    pub(super) requests: AtomicU64,
    pub(super) submits: AtomicU64,
    pub(super) dequeues: AtomicU64,
    pub(super) results: AtomicU64,
    pub(super) notifies: AtomicU64,
}

impl CqCounters {
    /// Adds `n` to `counter`, whose writers all hold one lock: a load and a
    /// store rather than a locked read-modify-write, which would cost a
    /// request about as much as the rest of its counting. Readers see the
    /// sum as it was after some update.
    pub(super) fn bump_locked(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// A queue's size, and the entries request queues have charged to it.
pub(super) struct Capacity {
    pub(super) size: u32,
    pub(super) charged: u32,
}

/// A completion queue's [`Capacity`], shared with the request queues charged
/// to it: the last of a request queue's requests to end gives its charge
/// back.
pub(super) struct CqCapacity(Mutex<Capacity>);

impl CqCapacity {
    pub(super) fn new(size: u32) -> Arc<CqCapacity> {
        Arc::new(CqCapacity(Mutex::new(Capacity { size, charged: 0 })))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Capacity> {
        lock(&self.0)
    }

    /// Charges `n` more outstanding requests to the queue, unless it is
    /// `closed` (asked under the capacity's lock) or lacks room.
    pub(super) fn charge(&self, n: u32, closed: impl FnOnce() -> bool) -> Result<(), Error> {
        let mut cap = self.lock();
        if closed() {
            return Err(RioError::QueueClosed.into());
        }
        if u64::from(cap.charged) + u64::from(n) > u64::from(cap.size) {
            return Err(RioError::QueueTooSmall {
                size: cap.size,
                charged: cap.charged,
                asked: n,
            }
            .into());
        }
        cap.charged += n;
        Ok(())
    }

    pub(super) fn uncharge(&self, n: u32) {
        let mut cap = self.lock();
        cap.charged = cap.charged.saturating_sub(n);
    }

    /// The first step of a resize to `new_size` on a ring that holds
    /// `ring_capacity` results: refused below the entries charged; within
    /// the ring, the size changes and `true` says that is all; beyond it,
    /// `false`: the engine must move the queue to a bigger ring (and then
    /// set the size).
    pub(super) fn resize_within(&self, new_size: u32, ring_capacity: usize) -> Result<bool, Error> {
        let mut cap = self.lock();
        if new_size < cap.charged {
            return Err(RioError::BelowOutstanding {
                in_use: cap.charged,
                asked: new_size,
            }
            .into());
        }
        if new_size as usize <= ring_capacity {
            cap.size = new_size;
            return Ok(true);
        }
        Ok(false)
    }

    /// The refusal of a request the queue has no room for: cannot happen
    /// while charges are honoured, but an engine refuses rather than
    /// overflow.
    pub(super) fn full(&self) -> Error {
        let cap = self.lock();
        RioError::QueueTooSmall {
            size: cap.size,
            charged: cap.charged,
            asked: 1,
        }
        .into()
    }
}

/// What a completion queue's engine shares with its front: the capacity and
/// the counters.
pub(super) struct CqCommon {
    pub(super) capacity: Arc<CqCapacity>,
    pub(super) counters: CqCounters,
}
