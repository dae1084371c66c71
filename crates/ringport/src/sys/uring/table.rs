//! The driver's table: every operation it holds, the lanes that keep each
//! socket's issue order, and what a completion turns into.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;

use io_uring::{cqueue, squeue};

use super::sqe::{so_error, sqe};
use crate::port::Buf;
use crate::sys::fd::FdKind;
use crate::sys::inflight::{Inflight, OpId, Operation};
use crate::sys::op::{self, Direction, Finished, Op};

/// `user_data` of cancel requests, whose own completions are not packets.
pub(super) const CANCEL: u64 = u64::MAX - 1;

/// Everything the driver knows of its operations, under one mutex.
pub(super) struct Table<T> {
    pub(super) ops: Inflight<T>,
    /// Per ordered descriptor, each direction's unfinished operations in
    /// issue order. Only the first of each is in the kernel: io_uring wakes
    /// the requests that wait on one socket newest first, so two pending
    /// receives would take a stream's bytes in reverse issue order.
    pub(super) lanes: HashMap<RawFd, Lanes>,
    /// Entries made while reaping (a lane's next operation, an operation
    /// issued again), submitted together once the reap is done.
    pub(super) ready: Vec<squeue::Entry>,
    /// The port is closing: an `ECANCELED` is final.
    pub(super) closing: bool,
    /// Completions made on this thread while reaping (a batch of datagram
    /// receives), queued with the reaped ones.
    pub(super) extra: Vec<Finished<T>>,
    /// Descriptors whose read lane's next operations are datagram receives
    /// that the harvester fills from the socket with `recvmmsg` (with the
    /// lock released) before the rest go to the ring.
    pub(super) batches: Vec<RawFd>,
}

/// Times an operation is issued again after its issuer exited before its
/// `ECANCELED` is taken as final (a guard against a kernel that cancels it
/// for another reason, which would otherwise be retried for ever).
const MAX_REISSUES: u8 = 64;

/// One ordered descriptor's operations, per direction.
#[derive(Default)]
pub(super) struct Lanes {
    pub(super) queues: [VecDeque<OpId>; 2],
    /// The last operation of that direction found the socket drained (a
    /// short receive) or full (a short send): the next one arms its poll
    /// first instead of trying at once a transfer that would fail
    /// (`IORING_RECVSEND_POLL_FIRST`, as liburing advises).
    pub(super) exhausted: [bool; 2],
    /// A harvester is filling the read lane's receives with the lock
    /// released: until it is done nobody else issues, cancels or completes
    /// them.
    pub(super) batching: bool,
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

pub(super) fn lane_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl<T> Table<T> {
    pub(super) fn lane(&mut self, fd: RawFd, d: Direction) -> &mut VecDeque<OpId> {
        &mut self.lanes.entry(fd).or_default()[lane_index(d)]
    }

    /// Whether operations of direction `d` on `fd` are unfinished (one in
    /// the kernel, perhaps more waiting behind it).
    pub(super) fn waiting(&self, fd: RawFd, d: Direction) -> bool {
        self.lanes
            .get(&fd)
            .is_some_and(|l| !l[lane_index(d)].is_empty())
    }

    /// Whether the last operation of direction `d` on `fd` found the socket
    /// drained or full.
    pub(super) fn exhausted(&self, fd: RawFd, d: Direction) -> bool {
        self.lanes
            .get(&fd)
            .is_some_and(|l| l.exhausted[lane_index(d)])
    }

    /// Turns a completion into a packet (or a watch to settle), freeing its
    /// slot and queueing the next operation of its lane. `None` for the
    /// completions of cancel requests, unknown ids, and operations issued
    /// again.
    pub(super) fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Finished<T>> {
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

    /// `done` left its lane: the next one goes to the kernel, or, for
    /// datagram receives, to the harvester's batch first.
    pub(super) fn advance(&mut self, fd: RawFd, d: Direction, done: OpId) {
        let q = self.lane(fd, d);
        if q.front() != Some(&done) {
            q.retain(|&i| i != done);
            return;
        }
        q.pop_front();
        let Some(&next) = q.front() else {
            return;
        };
        let datagram = |p: &Operation<T>| p.op == Op::RecvFrom && p.kind == FdKind::Datagram;
        if d == Direction::Read
            && !self.closing
            && self.ops.get_mut(next).is_some_and(|(p, _)| datagram(p))
        {
            self.batches.push(fd);
            return;
        }
        self.issue_front(fd, d, false);
    }

    /// The lane's first operation goes to the kernel (through `ready`);
    /// with `drained`, it polls before it tries.
    pub(super) fn issue_front(&mut self, fd: RawFd, d: Direction, drained: bool) {
        if let Some(&next) = self.lanes.get(&fd).and_then(|l| l[lane_index(d)].front()) {
            if let Some((p, s)) = self.ops.get_mut(next) {
                p.poll_first |= drained;
                self.ready.push(sqe(p, s).user_data(next.0));
            }
        }
    }

    /// Whether a harvester is filling receives of `fd` (of any descriptor,
    /// for `None`) with the lock released.
    pub(super) fn batching(&self, fd: Option<RawFd>) -> bool {
        match fd {
            Some(fd) => self.lanes.get(&fd).is_some_and(|l| l.batching),
            None => self.lanes.values().any(|l| l.batching),
        }
    }

    /// Completes, with `ECANCELED`, operations that wait their turn in a lane
    /// (they never reached the kernel): `which` picks them by id.
    pub(super) fn cancel_waiting(
        &mut self,
        fd: RawFd,
        which: impl Fn(OpId) -> bool,
    ) -> Vec<Finished<T>> {
        let mut ids = Vec::new();
        // A read lane waiting for a harvester's batch has nothing in the
        // kernel: its first receive waits too.
        let first_waits = self.batches.contains(&fd);
        if let Some(lanes) = self.lanes.get_mut(&fd) {
            for (d, q) in lanes.queues.iter_mut().enumerate() {
                let mut i = if d == 0 && first_waits { 0 } else { 1 };
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
