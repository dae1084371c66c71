//! The io_uring driver: operations become SQEs on the port's ring, and the
//! ring's completions become packets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use super::Ring;
use crate::io::inflight::{Inflight, OpId, Pending, Scratch};
use crate::io::op::{self, Finished, Op};
use crate::io::Started;
use crate::port::core::Core;
use crate::port::Packet;
use crate::sync::lock;
use crate::sys::epoll::syscalls;
use crate::Buf;
use crate::Error;

/// `user_data` of cancel requests, whose own completions are not packets.
const CANCEL: u64 = u64::MAX - 1;

pub(crate) struct UringDriver<T> {
    ring: Ring,
    inflight: Mutex<Inflight<T>>,
    /// Operations in flight, readable without the table's mutex.
    live: AtomicUsize,
}

fn len32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// The SQE for `op`, pointing only into `buf`'s heap memory (within its
/// capacity) and the slot's scratch, both kept by the in-flight table.
fn sqe(op: Op, fd: i32, s: &mut Scratch, buf: &mut Option<Buf>) -> squeue::Entry {
    let fd = types::Fd(fd);
    let read = |b: &mut Option<Buf>| b.as_mut().map_or((std::ptr::null_mut(), 0), Buf::write_ptr);
    let write = |b: &Option<Buf>| {
        b.as_ref()
            .map_or((std::ptr::null(), 0), |b| (b.read_ptr(), b.len()))
    };
    match op {
        Op::ReadAt(off) => {
            let (p, n) = read(buf);
            opcode::Read::new(fd, p, len32(n)).offset(off).build()
        }
        Op::WriteAt(off) => {
            let (p, n) = write(buf);
            opcode::Write::new(fd, p, len32(n)).offset(off).build()
        }
        Op::Recv => {
            let (p, n) = read(buf);
            opcode::Recv::new(fd, p, len32(n)).build()
        }
        Op::Send => {
            let (p, n) = write(buf);
            opcode::Send::new(fd, p, len32(n))
                .flags(libc::MSG_NOSIGNAL)
                .build()
        }
        Op::RecvFrom => opcode::RecvMsg::new(fd, &mut s.msg).build(),
        Op::SendTo => opcode::SendMsg::new(fd, &s.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build(),
        Op::Accept => opcode::Accept::new(
            fd,
            (&mut s.addr as *mut libc::sockaddr_storage).cast(),
            &mut s.addrlen,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build(),
        Op::Connect => opcode::Connect::new(
            fd,
            (&s.addr as *const libc::sockaddr_storage).cast(),
            s.addrlen,
        )
        .build(),
        Op::Shutdown(how) => opcode::Shutdown::new(fd, how).build(),
        Op::Timer(_) => opcode::Timeout::new(&s.ts).build(),
        Op::PollReadable => opcode::PollAdd::new(fd, libc::POLLIN as u32).build(),
    }
}

impl<T> UringDriver<T> {
    pub(crate) fn new(ring: Ring) -> Self {
        UringDriver {
            ring,
            inflight: Mutex::new(Inflight::new()),
            live: AtomicUsize::new(0),
        }
    }

    /// Records `pending` and submits its SQE. With `immediate`, a socket
    /// operation is first tried without blocking, and a result available at
    /// once is returned instead of submitted.
    pub(crate) fn start(
        &self,
        mut pending: Pending<T>,
        to: Option<std::net::SocketAddr>,
        immediate: bool,
    ) -> Result<Started<T>, Error> {
        if immediate && matches!(pending.op, Op::Recv | Op::Send | Op::RecvFrom | Op::SendTo) {
            // SAFETY: all-zero is a valid value of the scratch's plain C structs.
            let mut scratch: Scratch = unsafe { std::mem::zeroed() };
            pending.op.prepare(&mut scratch, &mut pending.buf, to);
            let res = syscalls::perform(pending.op, pending.fd, &mut scratch, &mut pending.buf);
            // Not a socket: read/write could block, so let the ring do it.
            if res != -libc::EAGAIN && res != -libc::ENOTSOCK {
                return Ok(Started::Done(op::packet(pending, res, &scratch)));
            }
        }
        let mut table = lock(&self.inflight);
        let (id, scratch, pending) = table.insert(pending);
        self.live.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the slot was just taken from the free list, so nothing else
        // (the kernel included) refers to its scratch yet.
        let scratch = unsafe { &mut *scratch };
        pending.op.prepare(scratch, &mut pending.buf, to);
        let entry = sqe(pending.op, pending.fd, scratch, &mut pending.buf).user_data(id.0);
        // Submitting under the table lock keeps a racing reaper from seeing
        // the completion before the slot is filled in: it needs this lock.
        // SAFETY: the SQE points only into the slot's scratch and the
        // pending buffer's heap memory, which the table keeps alive (and does
        // not touch) until the completion is reaped.
        match unsafe { self.ring.submit(&entry) } {
            Ok(()) => Ok(Started::Pending(id)),
            Err(e) => {
                table.abandon(id);
                self.live.fetch_sub(1, Ordering::SeqCst);
                Err(Error::Io(e))
            }
        }
    }

    fn submit_cancel(&self, builder: types::CancelBuilder) -> Result<(), Error> {
        let sqe = opcode::AsyncCancel2::new(builder).build().user_data(CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.ring.submit(&sqe) }.map_err(Error::Io)
    }

    /// Asks the kernel to cancel one operation; it still completes (with
    /// `ECANCELED` if the cancel won).
    pub(crate) fn cancel(&self, id: OpId, fd: i32) -> Result<(), Error> {
        if lock(&self.inflight).fd_of(id) != Some(fd) {
            return Err(Error::InvalidArgument(
                "no such operation in flight on this handle",
            ));
        }
        self.submit_cancel(types::CancelBuilder::user_data(id.0))
    }

    /// Cancels every operation on `fd` (which must still be open).
    pub(crate) fn cancel_fd(&self, fd: i32) -> Result<(), Error> {
        self.submit_cancel(types::CancelBuilder::fd(types::Fd(fd)).all())
    }

    /// Cancels every operation in flight, on any handle.
    pub(crate) fn cancel_all(&self) -> Result<(), Error> {
        self.submit_cancel(types::CancelBuilder::any().all())
    }

    /// Reaps completions into the port; with `keep`, the caller claims the
    /// first for itself if the limit allows. Returns whether it did.
    pub(crate) fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> bool {
        let mut n = 0;
        let mut watches = Vec::new();
        {
            let mut table = lock(&self.inflight);
            self.ring
                .reap(!keep, |cqe| match complete(&mut table, &cqe) {
                    Some(Finished::Packet(p)) => {
                        core.enqueue(p);
                        n += 1;
                    }
                    Some(watch) => watches.push(watch),
                    None => {}
                });
            self.live.store(table.live(), Ordering::SeqCst);
        }
        for p in watches.into_iter().filter_map(Finished::settle) {
            core.enqueue(p);
            n += 1;
        }
        core.publish_completed(n, keep)
    }

    pub(crate) fn sleep(&self, deadline: Option<Instant>) {
        self.ring.wait(deadline)
    }

    pub(crate) fn wake(&self) {
        self.ring.wake()
    }

    pub(crate) fn busy(&self) -> bool {
        self.live.load(Ordering::SeqCst) > 0
    }

    /// Cancels everything in flight and reaps until the kernel has given
    /// every operation back or `deadline` passes; the packets are dropped,
    /// with what their tokens own. Returns whether nothing is left in flight.
    /// Called when the port closes: tokens may own handles of this very
    /// port, and dropping them is what breaks that cycle.
    pub(crate) fn drain(&self, deadline: Instant) -> bool {
        if self.live.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let _ = self.cancel_all();
        loop {
            let mut dropped = Vec::new();
            let left = {
                let mut table = lock(&self.inflight);
                self.ring
                    .reap(true, |cqe| dropped.extend(complete(&mut table, &cqe)));
                self.live.store(table.live(), Ordering::SeqCst);
                table.live()
            };
            // Outside the lock: a token's drop may run a handle's drop,
            // which cancels through this driver.
            drop(dropped);
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left == 0;
            }
            self.ring
                .wait(Some(deadline.min(now + Duration::from_millis(10))));
        }
    }

    /// Drains (bounded); what the kernel still holds after that is leaked,
    /// not freed: leaking is safe, freeing memory the kernel may write is not.
    fn quiesce(&mut self) {
        if !self.drain(Instant::now() + Duration::from_secs(2)) {
            let table = std::mem::replace(
                self.inflight.get_mut().unwrap_or_else(|e| e.into_inner()),
                Inflight::new(),
            );
            std::mem::forget(table);
        }
    }
}

impl<T> Drop for UringDriver<T> {
    fn drop(&mut self) {
        self.quiesce();
    }
}

/// Turns a completion into a packet (or a watch to settle), freeing its
/// slot. `None` for the completions of cancel requests and for unknown ids.
fn complete<T>(table: &mut Inflight<T>, cqe: &cqueue::Entry) -> Option<Finished<T>> {
    if cqe.user_data() == CANCEL {
        return None;
    }
    let (p, scratch) = table.complete(OpId(cqe.user_data()))?;
    Some(op::finish(p, cqe.result(), scratch))
}
