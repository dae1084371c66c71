//! The port's side of kernel I/O: starting operations on the ring, turning
//! their completions into packets, cancelling, and letting go safely.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use super::addr;
use super::inflight::{Inflight, Kind, OpId, Pending, Scratch};
use crate::port::core::{Core, Kernel};
use crate::port::{Packet, Payload};
use crate::sync::lock;
use crate::sys::uring::Ring;
use crate::Error;

/// `user_data` of cancel requests, whose own completions are not packets.
const CANCEL: u64 = u64::MAX - 1;

pub(crate) struct Driver<T> {
    pub(crate) ring: Arc<Ring>,
    inflight: Mutex<Inflight<T>>,
}

impl<T> Driver<T> {
    pub(crate) fn new(ring: Arc<Ring>) -> Self {
        Driver {
            ring,
            inflight: Mutex::new(Inflight::new()),
        }
    }

    /// Records `pending` and submits the SQE `build` makes for it.
    ///
    /// # Safety
    /// `build` must return an SQE whose pointers point only into the
    /// scratch it is given or into `pending.buf`'s heap memory, with lengths
    /// within them: those are what the table keeps alive until the
    /// completion is reaped.
    pub(crate) unsafe fn start(
        &self,
        pending: Pending<T>,
        build: impl FnOnce(&mut Scratch, &mut Pending<T>) -> squeue::Entry,
    ) -> Result<OpId, Error> {
        let mut table = lock(&self.inflight);
        let (id, scratch, pending) = table.insert(pending);
        // SAFETY: the slot was just taken from the free list, so nothing else
        // (the kernel included) refers to its scratch yet.
        let sqe = build(unsafe { &mut *scratch }, pending).user_data(id.0);
        // Submitting under the table lock keeps a racing reaper from seeing
        // the completion before the slot is filled in: it needs this lock.
        // SAFETY: the caller's contract: the SQE points into memory the
        // table owns until the completion is reaped.
        match unsafe { self.ring.submit(&sqe) } {
            Ok(()) => Ok(id),
            Err(e) => {
                table.abandon(id);
                Err(Error::Io(e))
            }
        }
    }

    /// Asks the kernel to cancel one operation; it still completes (with
    /// `ECANCELED` if the cancel won).
    pub(crate) fn cancel(&self, id: OpId, fd: i32) -> Result<(), Error> {
        if lock(&self.inflight).fd_of(id) != Some(fd) {
            return Err(Error::InvalidArgument(
                "no such operation in flight on this handle",
            ));
        }
        let sqe = opcode::AsyncCancel::new(id.0).build().user_data(CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.ring.submit(&sqe) }.map_err(Error::Io)
    }

    /// Cancels every operation on `fd` (which must still be open).
    pub(crate) fn cancel_fd(&self, fd: i32) -> Result<(), Error> {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.ring.submit(&sqe) }.map_err(Error::Io)
    }

    /// Cancels every operation in flight, on any handle.
    pub(crate) fn cancel_all(&self) -> Result<(), Error> {
        let any = opcode::AsyncCancel2::new(types::CancelBuilder::any().all())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.ring.submit(&any) }.map_err(Error::Io)
    }

    /// Reaps completions into the port. With `keep`, the caller (not active)
    /// claims the first one for itself if the limit allows; returns whether
    /// it did.
    pub(crate) fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> bool {
        let mut n = 0;
        {
            let mut table = lock(&self.inflight);
            self.ring.reap(|cqe| {
                if let Some(p) = complete(&mut table, &cqe) {
                    core.enqueue(p);
                    n += 1;
                }
            });
        }
        if n == 0 {
            return false;
        }
        core.counters
            .completed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        core.publish_fresh(n, keep)
    }

    /// Cancels everything in flight and waits (bounded) for the kernel to
    /// finish with it. What the kernel still holds after that is leaked, not
    /// freed: leaking is safe, freeing memory the kernel may write is not.
    fn quiesce(&mut self) {
        if lock(&self.inflight).live() == 0 {
            return;
        }
        let _ = self.cancel_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            {
                let mut table = lock(&self.inflight);
                self.ring.reap(|cqe| drop(complete(&mut table, &cqe)));
                if table.live() == 0 {
                    return;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.ring.wait(Some(now + Duration::from_millis(10)));
        }
        let table = std::mem::replace(
            self.inflight.get_mut().unwrap_or_else(|e| e.into_inner()),
            Inflight::new(),
        );
        std::mem::forget(table);
    }
}

impl<T: Send> Kernel<Packet<T>> for Driver<T> {
    fn sleep(&self, deadline: Option<Instant>) {
        self.ring.wait(deadline)
    }
    fn wake(&self) {
        self.ring.wake()
    }
    fn harvest(&self, core: &Core<Packet<T>>) {
        Driver::harvest(self, core, false);
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        self.quiesce();
    }
}

/// Turns a completion into a packet, freeing its slot. `None` for the
/// completions of cancel requests and for unknown ids.
fn complete<T>(table: &mut Inflight<T>, cqe: &cqueue::Entry) -> Option<Packet<T>> {
    if cqe.user_data() == CANCEL {
        return None;
    }
    let (mut p, scratch) = table.complete(OpId(cqe.user_data()))?;
    let res = cqe.result();
    let result = match (res, p.kind) {
        (r, Kind::Timer) if r == -libc::ETIME => Ok(0),
        (r, _) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
        (r, _) => Ok(r as usize),
    };
    let payload = match (p.kind, p.buf.take(), &result) {
        (Kind::Accept, _, Ok(fd)) => {
            // SAFETY: a successful accept's result is a new descriptor that
            // nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(*fd as i32) };
            Payload::Accepted(fd, addr::read(&scratch.addr, scratch.addrlen))
        }
        (Kind::Fill, Some(mut b), r) => {
            // SAFETY: the kernel wrote `n` bytes from the start, within capacity.
            unsafe { b.set_filled(*r.as_ref().unwrap_or(&0)) };
            Payload::Buf(b)
        }
        (Kind::FillFrom, Some(mut b), r) => {
            // SAFETY: as above.
            unsafe { b.set_filled(*r.as_ref().unwrap_or(&0)) };
            let from = r
                .is_ok()
                .then(|| addr::read(&scratch.addr, scratch.msg.msg_namelen))
                .flatten();
            Payload::BufFrom(b, from)
        }
        (_, Some(b), _) => Payload::Buf(b),
        (_, None, _) => Payload::None,
    };
    Some(Packet {
        key: p.key,
        token: p.token,
        result,
        payload,
    })
}
