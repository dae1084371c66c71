//! The io_uring driver: operations become SQEs on the port's ring, and the
//! ring's completions become packets.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use super::PortRing;
use crate::port::core::Core;
use crate::port::Buf;
use crate::port::Packet;
use crate::sync::lock;
use crate::sys::batch::{Batched, DatagramBatch};
use crate::sys::driver::Started;
use crate::sys::fd::FdKind;
use crate::sys::inflight::{Inflight, OpId, Operation, Scratch};
use crate::sys::op::{self, Direction, Finished, Op};
use crate::sys::syscalls;
use crate::Error;

/// `user_data` of cancel requests, whose own completions are not packets.
const CANCEL: u64 = u64::MAX - 1;

pub(crate) struct UringDriver<T> {
    ring: PortRing,
    table: Mutex<Table<T>>,
    /// Operations in flight, readable without the table's mutex.
    live: AtomicUsize,
}

/// Everything the driver knows of its operations, under one mutex.
struct Table<T> {
    ops: Inflight<T>,
    /// Per ordered descriptor, each direction's unfinished operations in
    /// issue order. Only the first of each is in the kernel: io_uring wakes
    /// the requests that wait on one socket newest first, so two pending
    /// receives would take a stream's bytes in reverse issue order.
    lanes: HashMap<RawFd, Lanes>,
    /// Entries made while reaping (a lane's next operation, an operation
    /// issued again), submitted together once the reap is done.
    ready: Vec<squeue::Entry>,
    /// The port is closing: an `ECANCELED` is final.
    closing: bool,
    /// Completions made on this thread while reaping (a batch of datagram
    /// receives), queued with the reaped ones.
    extra: Vec<Finished<T>>,
    batch: DatagramBatch,
}

/// Times an operation is issued again after its issuer exited before its
/// `ECANCELED` is taken as final (a guard against a kernel that cancels it
/// for another reason, which would otherwise be retried for ever).
const MAX_REISSUES: u8 = 64;

/// One ordered descriptor's operations, per direction.
#[derive(Default)]
struct Lanes {
    queues: [VecDeque<OpId>; 2],
    /// The last operation of that direction found the socket drained (a
    /// short receive) or full (a short send): the next one arms its poll
    /// first instead of trying at once a transfer that would fail
    /// (`IORING_RECVSEND_POLL_FIRST`, as liburing advises).
    exhausted: [bool; 2],
}

impl std::ops::Index<usize> for Lanes {
    type Output = VecDeque<OpId>;
    fn index(&self, i: usize) -> &VecDeque<OpId> {
        &self.queues[i]
    }
}

impl std::ops::IndexMut<usize> for Lanes {
    fn index_mut(&mut self, i: usize) -> &mut VecDeque<OpId> {
        &mut self.queues[i]
    }
}

/// `IORING_RECVSEND_POLL_FIRST` (the io-uring crate does not export it).
const RECVSEND_POLL_FIRST: u16 = 1;

fn lane_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

fn len32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// The SQE for `p`, pointing only into its buffer's heap memory (within its
/// capacity) and its slot's scratch, both kept by the in-flight table.
fn sqe<T>(p: &mut Operation<T>, s: &mut Scratch) -> squeue::Entry {
    let fd = types::Fd(p.fd);
    let prio = if p.poll_first { RECVSEND_POLL_FIRST } else { 0 };
    let buf = &mut p.buf;
    let read = |b: &mut Option<Buf>| b.as_mut().map_or((std::ptr::null_mut(), 0), Buf::write_ptr);
    let write = |b: &Option<Buf>| {
        b.as_ref()
            .map_or((std::ptr::null(), 0), |b| (b.read_ptr(), b.len()))
    };
    // Offset -1: a pipe's current position (it has none).
    const STREAM: u64 = u64::MAX;
    match (p.op, p.kind) {
        (Op::ReadAt(off), _) => {
            let (b, n) = read(buf);
            opcode::Read::new(fd, b, len32(n)).offset(off).build()
        }
        (Op::WriteAt(off), _) => {
            let (b, n) = write(buf);
            opcode::Write::new(fd, b, len32(n)).offset(off).build()
        }
        (Op::Recv, FdKind::Pipe) => {
            let (b, n) = read(buf);
            opcode::Read::new(fd, b, len32(n)).offset(STREAM).build()
        }
        (Op::Send, FdKind::Pipe) => {
            let (b, n) = write(buf);
            opcode::Write::new(fd, b, len32(n)).offset(STREAM).build()
        }
        (Op::Recv, kind) => {
            let (b, n) = read(buf);
            // On a datagram socket the result is then the datagram's whole
            // length, so that truncation shows.
            let flags = if kind == FdKind::Datagram {
                libc::MSG_TRUNC
            } else {
                0
            };
            opcode::Recv::new(fd, b, len32(n))
                .flags(flags)
                .ioprio(prio)
                .build()
        }
        (Op::Send, _) => {
            let (b, n) = write(buf);
            opcode::Send::new(fd, b, len32(n))
                .flags(libc::MSG_NOSIGNAL)
                .ioprio(prio)
                .build()
        }
        (Op::RecvFrom, _) => opcode::RecvMsg::new(fd, &mut s.msg).ioprio(prio).build(),
        (Op::SendTo, _) => opcode::SendMsg::new(fd, &s.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .ioprio(prio)
            .build(),
        (Op::Accept, _) => opcode::Accept::new(
            fd,
            (&mut s.addr as *mut libc::sockaddr_storage).cast(),
            &mut s.addrlen,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build(),
        // A connect issued again finds the attempt under way (EALREADY):
        // wait for it to end instead, and read SO_ERROR (see `complete`).
        (Op::Connect, _) if p.reissues > 0 => {
            opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
        }
        (Op::Connect, _) => opcode::Connect::new(
            fd,
            (&s.addr as *const libc::sockaddr_storage).cast(),
            s.addrlen,
        )
        .build(),
        (Op::Shutdown(how), _) => opcode::Shutdown::new(fd, how).build(),
        (Op::Timer(_), _) => opcode::Timeout::new(&s.ts).build(),
        (Op::PollReadable, _) => opcode::PollAdd::new(fd, libc::POLLIN as u32).build(),
    }
}

/// How a connection attempt ended (`SO_ERROR`), as a CQE result.
fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a live int and its length for getsockopt to fill in.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match r {
        0 => -err,
        _ => -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    }
}

impl<T> Table<T> {
    fn lane(&mut self, fd: RawFd, d: Direction) -> &mut VecDeque<OpId> {
        &mut self.lanes.entry(fd).or_default()[lane_index(d)]
    }

    /// Turns a completion into a packet (or a watch to settle), freeing its
    /// slot and queueing the next operation of its lane. `None` for the
    /// completions of cancel requests, unknown ids, and operations issued
    /// again.
    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Finished<T>> {
        if cqe.user_data() == CANCEL {
            return None;
        }
        let id = OpId(cqe.user_data());
        let mut res = cqe.result();
        {
            let (p, s) = self.ops.get_mut(id)?;
            if res == -libc::ECANCELED && !p.cancelled && !self.closing && p.reissues < MAX_REISSUES
            {
                // Nobody cancelled it: the thread that issued it exited, and
                // the kernel ended the request before it did anything (a
                // receive took no bytes). The operation belongs to its handle,
                // not to that thread: issue it again from this live one. It
                // stays first in its lane, so order holds.
                p.reissues += 1;
                self.ready.push(sqe(p, s).user_data(id.0));
                return None;
            }
            if p.op == Op::Connect && p.reissues > 0 && res >= 0 {
                res = so_error(p.fd);
            }
        }
        let (p, s) = self.ops.complete(id)?;
        let lane = p.op.lane(p.kind).map(|d| (p.fd, d));
        if let (Some((fd, d)), Op::Recv | Op::Send, FdKind::Stream) = (lane, p.op, p.kind) {
            let asked = match d {
                Direction::Read => p.buf.as_ref().map_or(0, Buf::capacity),
                Direction::Write => p.buf.as_ref().map_or(0, Buf::len),
            };
            let exhausted = res >= 0 && (res as usize) < asked;
            if let Some(l) = self.lanes.get_mut(&fd) {
                l.exhausted[lane_index(d)] = exhausted;
            }
        }
        let finished = op::finish(p, res, s);
        if let Some((fd, d)) = lane {
            self.advance(fd, d, id);
        }
        Some(finished)
    }

    /// `done` left its lane: the next one goes to the kernel.
    fn advance(&mut self, fd: RawFd, d: Direction, done: OpId) {
        let q = self.lane(fd, d);
        if q.front() != Some(&done) {
            q.retain(|&i| i != done);
            return;
        }
        q.pop_front();
        if q.is_empty() {
            return;
        }
        let drained = d == Direction::Read && self.receive_batch(fd);
        if let Some(&next) = self.lane(fd, d).front() {
            if let Some((p, s)) = self.ops.get_mut(next) {
                p.poll_first |= drained;
                self.ready.push(sqe(p, s).user_data(next.0));
            }
        }
    }

    /// Datagrams already waiting on `fd` go straight into the receives
    /// queued in its lane, with one `recvmmsg` on this thread instead of a
    /// trip through the ring each. Returns whether the socket was found
    /// drained (the lane's next receive should then poll first).
    fn receive_batch(&mut self, fd: RawFd) -> bool {
        if self.closing {
            return false;
        }
        let Some(lanes) = self.lanes.get_mut(&fd) else {
            return false;
        };
        let lane = &mut lanes[lane_index(Direction::Read)];
        self.batch.receive(fd, &mut self.ops, lane, &mut self.extra) == Batched::Drained
    }

    /// Completes, with `ECANCELED`, operations that wait their turn in a lane
    /// (they never reached the kernel): `which` picks them by id.
    fn cancel_waiting(&mut self, fd: RawFd, which: impl Fn(OpId) -> bool) -> Vec<Finished<T>> {
        let mut ids = Vec::new();
        if let Some(lanes) = self.lanes.get_mut(&fd) {
            for q in lanes.queues.iter_mut() {
                let mut i = 1;
                while i < q.len() {
                    if which(q[i]) {
                        ids.extend(q.remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
        }
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((p, s)) = self.ops.complete(id) {
                done.push(op::finish(p, -libc::ECANCELED, s));
            }
        }
        done
    }
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
                batch: DatagramBatch::default(),
            }),
            live: AtomicUsize::new(0),
        }
    }

    /// Records `pending` and submits its SQE, or queues it behind its
    /// handle's earlier operations of the same direction. With `immediate`,
    /// a socket operation with none ahead of it is first tried without
    /// blocking, and a result available at once is returned instead of
    /// submitted.
    pub(crate) fn start(
        &self,
        mut pending: Operation<T>,
        to: Option<std::net::SocketAddr>,
        immediate: bool,
    ) -> Result<Started<T>, Error> {
        let mut guard = lock(&self.table);
        let t = &mut *guard;
        let fd = pending.fd;
        let lane = pending.op.lane(pending.kind);
        let behind = lane.is_some_and(|d| {
            t.lanes
                .get(&fd)
                .is_some_and(|l| !l[lane_index(d)].is_empty())
        });
        if immediate
            && !behind
            && matches!(pending.kind, FdKind::Stream | FdKind::Datagram)
            && matches!(pending.op, Op::Recv | Op::Send | Op::RecvFrom | Op::SendTo)
        {
            // SAFETY: all-zero is a valid value of the scratch's plain C structs.
            let mut scratch: Scratch = unsafe { std::mem::zeroed() };
            pending.op.prepare(&mut scratch, &mut pending.buf, to);
            let (op, kind) = (pending.op, pending.kind);
            let res = syscalls::perform(op, kind, fd, &mut scratch, &mut pending.buf);
            if res != -libc::EAGAIN {
                return Ok(Started::Done(op::packet(pending, res, &scratch)));
            }
            // It would block: the ring need not try again before it polls.
            pending.poll_first = true;
        } else if let Some(d) = lane.filter(|_| !behind) {
            pending.poll_first = t.lanes.get(&fd).is_some_and(|l| l.exhausted[lane_index(d)]);
        }
        let (id, scratch, pending) = t.ops.insert(pending);
        self.live.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the slot was just taken from the free list, so nothing else
        // (the kernel included) refers to its scratch yet.
        let scratch = unsafe { &mut *scratch };
        pending.op.prepare(scratch, &mut pending.buf, to);
        let entry = sqe(pending, scratch).user_data(id.0);
        if let Some(d) = lane {
            let q = &mut t.lanes.entry(fd).or_default()[lane_index(d)];
            q.push_back(id);
            if q.len() > 1 {
                // Its turn comes when the one ahead of it completes.
                return Ok(Started::Pending(id));
            }
        }
        // Submitting under the table lock keeps a racing reaper from seeing
        // the completion before the slot is filled in: it needs this lock.
        // SAFETY: the SQE points only into the slot's scratch and the
        // pending buffer's heap memory, which the table keeps alive (and does
        // not touch) until the completion is reaped.
        match unsafe { self.ring.submit(&entry) } {
            Ok(()) => Ok(Started::Pending(id)),
            Err(e) => {
                t.ops.abandon(id);
                if let Some(d) = lane {
                    t.lane(fd, d).pop_back();
                }
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

    /// Cancels one operation; it still completes (with `ECANCELED` if the
    /// cancel won). One still waiting its turn completes at once.
    pub(crate) fn cancel(&self, core: &Core<Packet<T>>, id: OpId, fd: i32) -> Result<(), Error> {
        let waiting = {
            let mut t = lock(&self.table);
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
            let mut t = lock(&self.table);
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
            let mut guard = lock(&self.table);
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

    /// Reaps completions into the port; with `keep`, the caller claims the
    /// first for itself if the limit allows. Returns whether it did.
    pub(crate) fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> bool {
        let mut n = 0;
        let mut watches = Vec::new();
        {
            let mut guard = lock(&self.table);
            let t = &mut *guard;
            loop {
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
                if t.ready.is_empty() {
                    break;
                }
                // SAFETY: each entry points into the slot of an operation the
                // table holds until its completion is reaped. A failed enter
                // leaves them queued in the SQ for the next one.
                let _ = unsafe { self.ring.submit_all(&t.ready) };
                t.ready.clear();
                // What they completed inline is reaped by the next pass.
            }
            self.live.store(t.ops.live(), Ordering::SeqCst);
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
