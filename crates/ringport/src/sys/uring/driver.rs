//! The io_uring driver: operations become SQEs on the port's ring, and the
//! ring's completions become packets.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::sqe::sqe;
use super::table::{Table, CANCEL};
use super::PortRing;
use crate::port::core::Core;
use crate::port::Packet;
use crate::sync::lock;
use crate::sys::batch::{Batched, DatagramBatch};
use crate::sys::driver::Started;
use crate::sys::fd::FdKind;
use crate::sys::inflight::{Inflight, OpId, Operation, Scratch};
use crate::sys::op::Direction;
use crate::sys::op::{self, Finished, Op};
use crate::sys::syscalls;
use crate::Error;

pub(crate) struct UringDriver<T> {
    ring: PortRing,
    table: Mutex<Table<T>>,
    /// Operations in flight, readable without the table's mutex.
    live: AtomicUsize,
}

impl<T> UringDriver<T> {
    pub(crate) fn new(ring: PortRing) -> Self {
        UringDriver {
            ring,
            table: Mutex::new(Table {
                ops: Inflight::new(),
                lanes: HashMap::new(),
                ready: Vec::new(),
                closing: false,
                extra: Vec::new(),
                batches: Vec::new(),
            }),
            live: AtomicUsize::new(0),
        }
    }

    /// Records `pending` and submits its SQE, or queues it behind its
    /// handle's earlier operations of the same direction. With `immediate`,
    /// a socket operation with none ahead of it is first tried without
    /// blocking, and a result available at once is returned instead of
    /// submitted.
    ///
    /// No system call is made under the table mutex, which every thread of
    /// the port takes: the immediate attempt runs before it is taken (the
    /// operation is not in the table yet, so its memory is this thread's),
    /// and the entry is pushed to the SQ under it but entered after it.
    pub(crate) fn start(
        &self,
        mut pending: Operation<T>,
        to: Option<std::net::SocketAddr>,
        immediate: bool,
    ) -> Result<Started<T>, Error> {
        let fd = pending.fd;
        let lane = pending.op.lane(pending.kind);
        let tried = immediate
            && matches!(pending.kind, FdKind::Stream | FdKind::Datagram)
            && matches!(pending.op, Op::Recv | Op::Send | Op::RecvFrom | Op::SendTo)
            && !lane.is_some_and(|d| lock(&self.table).waiting(fd, d));
        if tried {
            // SAFETY: all-zero is a valid value of the scratch's plain C structs.
            let mut scratch: Scratch = unsafe { std::mem::zeroed() };
            pending.op.prepare(&mut scratch, &mut pending.buf, to);
            let (op, kind) = (pending.op, pending.kind);
            let res = syscalls::perform(op, kind, fd, &mut scratch, &mut pending.buf);
            if res != -libc::EAGAIN {
                return Ok(Started::Done(op::packet(pending, res, &scratch)));
            }
            // It would block: the ring need not try again before it polls.
            // (An operation another thread issued meanwhile may now be ahead
            // of it: the two were concurrent, so either order is the issue
            // order.)
        }
        let id = {
            let mut guard = lock(&self.table);
            let t = &mut *guard;
            if let Some(d) = lane.filter(|&d| !t.waiting(fd, d)) {
                pending.poll_first = tried || t.exhausted(fd, d);
            }
            let (id, scratch, pending) = t.ops.insert(pending);
            self.live.fetch_add(1, Ordering::SeqCst);
            // SAFETY: the slot was just taken from the free list, so nothing
            // else (the kernel included) refers to its scratch yet.
            let scratch = unsafe { &mut *scratch };
            pending.op.prepare(scratch, &mut pending.buf, to);
            let entry = sqe(pending, scratch).user_data(id.0);
            if let Some(d) = lane {
                let q = t.lane(fd, d);
                q.push_back(id);
                if q.len() > 1 {
                    // Its turn comes when the one ahead of it completes.
                    return Ok(Started::Pending(id));
                }
            }
            // Pushed under the table lock, so that a cancel (queued after it
            // takes this lock) reaches the kernel after the operation does.
            // The slot is filled in before the kernel can see the entry, so
            // whoever reaps its completion finds it.
            // SAFETY: the SQE points only into the slot's scratch and the
            // pending buffer's heap memory, which the table keeps alive (and
            // does not touch) until the completion is reaped.
            if let Err(e) = unsafe { self.ring.queue(std::slice::from_ref(&entry)) } {
                // Not queued: nothing refers to the slot.
                t.ops.abandon(id);
                if let Some(d) = lane {
                    t.lane(fd, d).pop_back();
                }
                self.live.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::Io(e));
            }
            id
        };
        self.ring.flush();
        Ok(Started::Pending(id))
    }

    /// The table, locked, with no receives of `fd` (of any descriptor, for
    /// `None`) being filled by a harvester with the lock released: what
    /// cancels waits for it, a `recvmmsg` that does not block.
    fn lock_idle(&self, fd: Option<RawFd>) -> MutexGuard<'_, Table<T>> {
        loop {
            let t = lock(&self.table);
            if !t.batching(fd) {
                return t;
            }
            drop(t);
            std::thread::yield_now();
        }
    }

    fn submit_cancel(&self, builder: types::CancelBuilder) -> Result<(), Error> {
        let sqe = opcode::AsyncCancel2::new(builder).build().user_data(CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.ring.submit(&sqe) }.map_err(Error::Io)
    }

    /// Cancels one operation; it still completes (with `ECANCELED` if the
    /// cancel won). One still waiting its turn completes at once.
    pub(crate) fn cancel(&self, core: &Core<Packet<T>>, id: OpId, fd: i32) -> Result<(), Error> {
        let waiting = {
            let mut t = self.lock_idle(Some(fd));
            match t.ops.get_mut(id) {
                Some((p, _)) if p.fd == fd => p.cancelled = true,
                _ => {
                    return Err(Error::InvalidArgument(
                        "no such operation in flight on this handle",
                    ))
                }
            }
            let done = t.cancel_waiting(fd, |i| i == id);
            self.live.store(t.ops.live(), Ordering::SeqCst);
            done
        };
        if !waiting.is_empty() {
            deliver(core, waiting);
            return Ok(());
        }
        self.submit_cancel(types::CancelBuilder::user_data(id.0))
    }

    /// Cancels every operation on `fd` (which must still be open).
    pub(crate) fn cancel_fd(&self, core: &Core<Packet<T>>, fd: i32) -> Result<(), Error> {
        let waiting = {
            let mut t = self.lock_idle(Some(fd));
            t.ops.for_each_mut(|p| p.cancelled |= p.fd == fd);
            let done = t.cancel_waiting(fd, |_| true);
            self.live.store(t.ops.live(), Ordering::SeqCst);
            done
        };
        deliver(core, waiting);
        self.submit_cancel(types::CancelBuilder::fd(types::Fd(fd)).all())
    }

    /// Cancels every operation in flight, on any handle, for good: the
    /// port is closing. Returns those that never reached the kernel.
    fn cancel_all(&self) -> Vec<Finished<T>> {
        let waiting = {
            let mut guard = self.lock_idle(None);
            let t = &mut *guard;
            t.closing = true;
            let fds: Vec<RawFd> = t.lanes.keys().copied().collect();
            let done: Vec<_> = fds
                .into_iter()
                .flat_map(|fd| t.cancel_waiting(fd, |_| true))
                .collect();
            self.live.store(t.ops.live(), Ordering::SeqCst);
            done
        };
        let _ = self.submit_cancel(types::CancelBuilder::any().all());
        waiting
    }

    /// Reaps completions into the port; with `keep`, the caller takes the
    /// first for itself if the limit allows.
    pub(crate) fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> Option<Packet<T>> {
        let mut n = 0;
        let mut watches = Vec::new();
        loop {
            let (issued, batch) = {
                let mut guard = lock(&self.table);
                let t = &mut *guard;
                self.ring.reap(!keep, |cqe| match t.complete(&cqe) {
                    Some(Finished::Packet(p)) => {
                        core.enqueue(p);
                        n += 1;
                    }
                    Some(watch) => watches.push(watch),
                    None => {}
                });
                for f in t.extra.drain(..) {
                    match f {
                        Finished::Packet(p) => {
                            core.enqueue(p);
                            n += 1;
                        }
                        watch => watches.push(watch),
                    }
                }
                let batch = self.gather(t);
                // SAFETY: each entry points into the slot of an operation the
                // table holds until its completion is reaped. What could not
                // be queued stays in `ready` for the next harvest.
                let (queued, _) = unsafe { self.ring.queue_some(&t.ready) };
                t.ready.drain(..queued);
                self.live.store(t.ops.live(), Ordering::SeqCst);
                (queued > 0, batch)
            };
            if issued {
                // Outside the lock; what they complete inline is reaped by
                // the next pass.
                self.ring.flush();
            }
            match batch {
                Some(fd) => self.fill(fd),
                None if issued => {}
                None => break,
            }
        }
        for p in watches.into_iter().filter_map(Finished::settle) {
            core.enqueue(p);
            n += 1;
        }
        core.publish_completed(n, keep)
    }

    /// The port's ring.
    pub(crate) fn ring(&self) -> &PortRing {
        &self.ring
    }

    /// Takes the next descriptor whose waiting datagram receives are to be
    /// filled from the socket, marks its read lane busy and points this
    /// thread's batch at them. Lanes it cannot batch issue their next
    /// operation to the ring instead.
    fn gather(&self, t: &mut Table<T>) -> Option<RawFd> {
        while let Some(fd) = t.batches.pop() {
            let Table { ops, lanes, .. } = t;
            let Some(l) = lanes.get_mut(&fd) else {
                continue;
            };
            if l.batching {
                continue; // another harvester is filling them
            }
            if DatagramBatch::with(|b| b.gather(ops, &l[0])) > 0 {
                l.batching = true;
                return Some(fd);
            }
            t.issue_front(fd, Direction::Read, false);
        }
        None
    }

    /// Fills the receives [`gather`](Self::gather) pointed at with one
    /// `recvmmsg`, with the table's lock released, then completes them and
    /// lets the lane go on: more batches while the socket has datagrams,
    /// then its next receive to the ring, polling first.
    fn fill(&self, fd: RawFd) {
        // The lane is busy: nobody else touches the receives the headers
        // point into, and their slots (boxed) stay put.
        let got = DatagramBatch::with(|b| b.recv(fd));
        let mut guard = lock(&self.table);
        let t = &mut *guard;
        let Table {
            ops, lanes, extra, ..
        } = t;
        let Some(l) = lanes.get_mut(&fd) else {
            return;
        };
        let end = DatagramBatch::with(|b| b.finish(got, ops, &mut l[0], extra));
        l.batching = false;
        match end {
            // Full: the socket may hold more.
            None if !t.closing => t.batches.push(fd),
            end => t.issue_front(fd, Direction::Read, end == Some(Batched::Drained)),
        }
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
        drop(self.cancel_all());
        loop {
            let mut dropped = Vec::new();
            let left = {
                let mut guard = lock(&self.table);
                let t = &mut *guard;
                self.ring.reap(true, |cqe| dropped.extend(t.complete(&cqe)));
                dropped.append(&mut t.extra);
                // Nothing more is issued on a closing port.
                t.ready.clear();
                self.live.store(t.ops.live(), Ordering::SeqCst);
                t.ops.live()
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
                &mut self.table.get_mut().unwrap_or_else(|e| e.into_inner()).ops,
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

/// Queues packets of operations that completed without the kernel.
fn deliver<T>(core: &Core<Packet<T>>, done: Vec<Finished<T>>) {
    let mut n = 0;
    for p in done.into_iter().filter_map(Finished::settle) {
        core.enqueue(p);
        n += 1;
    }
    core.publish_completed(n, false);
}
