//! The in-flight table: every operation the kernel holds, with everything it
//! owns, keyed by the `user_data` of its SQE.
//!
//! Slots are boxed and never freed before the table itself, so the scratch
//! memory in a slot (socket addresses, `msghdr`, `iovec`, timespec) keeps its
//! address while the kernel reads or writes it; freed slots are reused, so
//! steady-state operation allocates nothing. `user_data` carries a generation
//! beside the index, so a late cancel of a finished operation never hits the
//! operation that reused its slot.

use std::cell::UnsafeCell;

use super::op::{Op, Recheck};
use crate::port::Buf;
use crate::sys::fd::FdKind;

/// Identifies an operation in flight, for [`cancel`](crate::Handle::cancel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The id of an operation that completed as it started (its packet is
    /// already queued): never in flight, so cancelling it is refused.
    pub(crate) const DONE: OpId = OpId(u64::MAX);
}

/// What an operation owns until its completion is reaped.
pub(crate) struct Operation<T> {
    pub(crate) key: u64,
    pub(crate) token: T,
    pub(crate) op: Op,
    pub(crate) buf: Option<Buf>,
    /// The handle the operation runs on (its fd number), for cancel-all.
    pub(crate) fd: i32,
    /// What that descriptor is.
    pub(crate) kind: FdKind,
    /// A watch's recheck (see [`Recheck`]); `None` for every other operation.
    pub(crate) recheck: Option<Recheck>,
    /// Somebody asked for it to be cancelled (an `ECANCELED` is then its
    /// real outcome, not the kernel's reaction to its issuing thread's exit).
    pub(crate) cancelled: bool,
    /// How many times it was issued again from another thread after its
    /// issuer exited (io_uring ties a request to its submitting thread).
    pub(crate) reissues: u8,
    /// The backend expects it to wait: arm its poll before trying it.
    pub(crate) poll_first: bool,
    /// `fd` is also the index of a direct descriptor registered with the
    /// io_uring backend's ring (`IOSQE_FIXED_FILE`).
    pub(crate) fixed: bool,
}

impl<T> Operation<T> {
    pub(crate) fn new(key: u64, token: T, op: Op, buf: Option<Buf>, fd: i32, kind: FdKind) -> Self {
        Operation {
            key,
            token,
            op,
            buf,
            fd,
            kind,
            recheck: None,
            cancelled: false,
            reissues: 0,
            poll_first: false,
            fixed: false,
        }
    }
}

/// Memory the kernel reads or writes through pointers in an SQE.
pub(crate) struct Scratch {
    pub(crate) addr: libc::sockaddr_storage,
    pub(crate) addrlen: libc::socklen_t,
    pub(crate) iov: libc::iovec,
    pub(crate) msg: libc::msghdr,
    pub(crate) ts: io_uring::types::Timespec,
    /// A readiness backend's connect has been started (it then waits for
    /// writability and reads SO_ERROR).
    pub(crate) started: bool,
}

struct InflightSlot<T> {
    generation: u32,
    pending: Option<Operation<T>>,
    scratch: UnsafeCell<Scratch>,
}

// SAFETY: the raw pointers in Scratch point into the slot itself or into the
// pending operation's own heap buffer, both owned by the slot; the table is
// only ever used under its owner's mutex.
unsafe impl<T: Send> Send for InflightSlot<T> {}

pub(crate) struct Inflight<T> {
    slots: Vec<Box<InflightSlot<T>>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Inflight<T> {
    pub(crate) fn new() -> Self {
        Inflight {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Operations the kernel still holds.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Stores `pending` and returns its id and its slot's scratch memory,
    /// which stays at that address until [`complete`](Self::complete) or
    /// [`abandon`](Self::abandon) frees the slot.
    pub(crate) fn insert(
        &mut self,
        pending: Operation<T>,
    ) -> (OpId, *mut Scratch, &mut Operation<T>) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Box::new(InflightSlot {
                    generation: 0,
                    pending: None,
                    // SAFETY: all-zero is a valid value of these plain C
                    // structs (null pointers, zero lengths, AF_UNSPEC).
                    scratch: UnsafeCell::new(unsafe { std::mem::zeroed() }),
                }));
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        self.live += 1;
        let id = OpId(((slot.generation as u64) << 32) | index as u64);
        let scratch = slot.scratch.get();
        (id, scratch, slot.pending.insert(pending))
    }

    fn slot(&mut self, id: OpId) -> Option<&mut InflightSlot<T>> {
        let slot = self.slots.get_mut((id.0 & 0xffff_ffff) as usize)?;
        (slot.generation == (id.0 >> 32) as u32 && slot.pending.is_some()).then_some(slot)
    }

    /// Takes back what a finished operation owned, with its scratch memory
    /// (the kernel is done with both: its completion was reaped).
    pub(crate) fn complete(&mut self, id: OpId) -> Option<(Operation<T>, &Scratch)> {
        let index = (id.0 & 0xffff_ffff) as u32;
        let pending = self.slot(id)?.pending.take()?;
        self.free.push(index);
        self.live -= 1;
        // SAFETY: the completion was reaped, so the kernel no longer accesses
        // the scratch, and we hold the table exclusively. The slot is free
        // but cannot be reused while this borrow of the table lives.
        let scratch = unsafe { &*self.slots[index as usize].scratch.get() };
        Some((pending, scratch))
    }

    /// Frees a slot whose SQE never reached the kernel.
    pub(crate) fn abandon(&mut self, id: OpId) -> Option<Operation<T>> {
        self.complete(id).map(|(p, _)| p)
    }

    /// Whether `id` is still in flight, and on which fd.
    pub(crate) fn fd_of(&mut self, id: OpId) -> Option<i32> {
        self.slot(id).and_then(|s| s.pending.as_ref()).map(|p| p.fd)
    }

    /// Calls `f` on every operation in flight.
    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(&mut Operation<T>)) {
        for slot in &mut self.slots {
            if let Some(p) = slot.pending.as_mut() {
                f(p);
            }
        }
    }

    /// An operation in flight with its scratch memory, for a readiness
    /// backend that performs it itself (no kernel holds it meanwhile).
    pub(crate) fn get_mut(&mut self, id: OpId) -> Option<(&mut Operation<T>, &mut Scratch)> {
        let InflightSlot {
            pending, scratch, ..
        } = self.slot(id)?;
        Some((pending.as_mut()?, scratch.get_mut()))
    }
}
