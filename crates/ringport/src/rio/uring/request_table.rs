//! The io_uring engine's request table: each request in flight in a boxed slot
//! that keeps it (and the `msghdr` the kernel reads and writes) at a fixed
//! address, how it becomes a submission entry, and how its completion
//! becomes a [`RioResult`].
//!
//! A completion queue owns one table with a slot per entry of its ring, so a
//! request charged to the queue always finds a slot. A slot's `user_data`
//! carries its index, a generation (so a stale completion never matches a
//! reused slot) and, in the top bit, the request's `DONT_NOTIFY` flag, which
//! the event notification reads straight from the CQ ring.

use std::cell::UnsafeCell;
use std::collections::VecDeque;

use io_uring::{cqueue, opcode, squeue, types};

use std::sync::Arc;

use super::super::addr::{self, Control};
use super::super::buffer::Claim;
use super::super::request::{Op, Request, RioResult};
use super::buf_ring::Shot;
use super::lane::Lane;

/// `user_data` of the NOPs a completion queue submits to make its ring
/// readable; dequeue skips them. Its top bit marks it as not notifying.
pub(super) const NOP: u64 = u64::MAX;

pub(super) const QUIET_BIT: u64 = 1 << 63;

/// Marks the `user_data` of a lane's multishot `RECV` (with [`QUIET_BIT`]);
/// its low 16 bits are the buffer group (see [`shot`](super::shot)).
pub(super) const SHOT_BIT: u64 = 1 << 62;

/// Whether a completion's `user_data` is a lane's multishot `RECV`.
fn is_shot(user_data: u64) -> bool {
    user_data & (QUIET_BIT | SHOT_BIT) == QUIET_BIT | SHOT_BIT && user_data != NOP
}

/// The generations a slot's `user_data` carries (bit 62 marks a multishot,
/// see [`shot`](super::shot)).
const GENERATION: u64 = 0x3fff_ffff;

/// A result taken out of the ring, or made in user space for a datagram
/// receive carried out with `recvmmsg` (see [`harvest`](super::harvest)):
/// the request's `user_data` and what its operation returned.
#[derive(Clone, Copy, Debug)]
pub(super) struct Done {
    pub(super) user_data: u64,
    pub(super) result: i32,
}

impl From<cqueue::Entry> for Done {
    fn from(e: cqueue::Entry) -> Done {
        Done {
            user_data: e.user_data(),
            result: e.result(),
        }
    }
}

/// Whether a completion with this `user_data` must not fire a notification.
pub(super) fn is_quiet(user_data: u64) -> bool {
    user_data & QUIET_BIT != 0
}

/// Memory the kernel reads or writes through pointers in an entry.
pub(super) struct Scratch {
    iov: libc::iovec,
    msg: libc::msghdr,
    control: Control,
}

/// A request's place in the table.
///
/// Laid out for the receive loop, whose every request touches the slot's
/// header and its request and nothing else (the scratch is for `RECVMSG`,
/// `SENDMSG` and `recvmmsg` only): those first, and the slot aligned to a
/// cache line, so that they take three lines, not the five or six that the
/// default layout spread them over (the kernel's copies into the receive
/// buffers evict them between a request's posting and its completion).
#[repr(C, align(64))]
pub(super) struct RequestSlot {
    generation: u32,
    /// Its entry is in the ring (or the kernel) and its completion has not
    /// been taken out of the ring; or its slice is published in its lane's
    /// buffer ring (see [`shot`](super::shot)).
    pub(super) in_kernel: bool,
    /// It went to the ring as a NOP, its queue closing before it started:
    /// its completion means `ECANCELED`.
    cancelled: bool,
    /// Posting order, to start requests again in the same order.
    pub(super) seq: u64,
    /// The lane of its request queue and kind (set with `request`; kept
    /// when it ends, for the next one).
    pub(super) lane: Option<Arc<Lane>>,
    pub(super) request: Option<Request>,
    scratch: UnsafeCell<Scratch>,
}

// SAFETY: the scratch holds pointers into the slot itself and into
// registered memory the request has claimed; the table is only used under
// its completion queue's request table lock.
unsafe impl Send for RequestSlot {}

/// The requests a completion queue has in flight, each in a boxed slot whose
/// address never changes while the kernel may use it.
pub(super) struct RequestTable {
    // Boxed so that a slot's scratch keeps its address when the table grows.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<RequestSlot>>,
    free: Vec<u32>,
    live: usize,
    /// Entries the ring owes a final completion for: requests in chains,
    /// and armed multishots (not the receives published to them).
    pub(super) in_kernel: usize,
    next_seq: u64,
    /// The lanes' buffer groups (see [`shot`](super::shot)), by group id.
    pub(super) shots: Vec<Shot>,
    /// The queue is closing: a multishot given back ends what it had.
    pub(super) closing: bool,
    /// Multishots armed, for the queue's stats.
    pub(super) multishots: u64,
    /// Lanes holding requests made with `DEFER`, for the next commit (here,
    /// not with the submission side: a deferred request takes only this
    /// table's lock, see [`submit`](super::submit)).
    pub(super) deferred: Vec<Arc<Lane>>,
}

impl RequestTable {
    pub(super) fn new(n: u32) -> RequestTable {
        let mut s = RequestTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            in_kernel: 0,
            next_seq: 0,
            shots: Vec::new(),
            closing: false,
            multishots: 0,
            deferred: Vec::new(),
        };
        s.grow(n);
        s
    }

    /// Makes room for `n` requests in all.
    pub(super) fn grow(&mut self, n: u32) {
        let old = self.slots.len() as u32;
        for index in (old..n).rev() {
            self.slots.push(Box::new(RequestSlot {
                generation: 0,
                seq: 0,
                in_kernel: false,
                cancelled: false,
                request: None,
                lane: None,
                // SAFETY: all-zero is a valid value of these plain C structs.
                scratch: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            }));
            self.free.push(index);
        }
        // Lowest indices first.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Requests in flight or waiting to be dequeued.
    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// Requests whose completions the ring owes.
    pub(super) fn in_kernel(&self) -> usize {
        self.in_kernel
    }

    /// Takes a free slot for a request (`DONT_NOTIFY` if `quiet`) that will
    /// wait its turn in `lane`, and returns its `user_data` and the place
    /// where the caller puts the request at once (the table lock still
    /// held): the request is then moved once, by the caller, not first
    /// into this call's argument and then into the slot (a `memcpy` of
    /// the whole request each). `None` if the table is full. Nothing
    /// reaches the ring until [`entry`](Self::entry) is asked for.
    pub(super) fn take_slot(
        &mut self,
        quiet: bool,
        lane: &Arc<Lane>,
    ) -> Option<(u64, &mut Option<Request>)> {
        let index = self.free.pop()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.live += 1;
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1) & GENERATION as u32;
        slot.seq = seq;
        slot.in_kernel = false;
        slot.cancelled = false;
        let quiet = if quiet { QUIET_BIT } else { 0 };
        let user_data = quiet | (u64::from(slot.generation) << 32) | u64::from(index);
        // A slot keeps its lane when its request ends (see `complete`): a
        // receive loop reposts into the same lane, which then costs no
        // reference count.
        if !slot.lane.as_ref().is_some_and(|l| Arc::ptr_eq(l, lane)) {
            slot.lane = Some(lane.clone());
        }
        Some((user_data, &mut slot.request))
    }

    /// Whether `user_data` is a request of this table that is not in the
    /// kernel.
    pub(super) fn is_waiting(&mut self, user_data: u64) -> bool {
        self.slot(user_data)
            .is_some_and(|s| !s.in_kernel && s.request.is_some())
    }

    /// The entry that starts the request behind `user_data` (linked to the
    /// next entry if `link`), counted as in the kernel from now on; or, with
    /// `cancel`, a NOP standing for it, whose completion ends it as
    /// cancelled. With `poll_first`, a receive waits for readiness before it
    /// tries (its socket was just found drained). `None` for a `user_data`
    /// that is no request waiting here.
    pub(super) fn entry(
        &mut self,
        user_data: u64,
        link: bool,
        cancel: bool,
        poll_first: bool,
    ) -> Option<squeue::Entry> {
        let slot = self.slot(user_data)?;
        if slot.in_kernel {
            return None;
        }
        let entry = if cancel {
            slot.cancelled = true;
            opcode::Nop::new().build().user_data(user_data)
        } else {
            let scratch = slot.scratch.get();
            let request = slot.request.as_ref()?;
            let entry = build(request, scratch, user_data, poll_first);
            if link {
                entry.flags(squeue::Flags::IO_LINK)
            } else {
                entry
            }
        };
        slot.in_kernel = true;
        self.in_kernel += 1;
        Some(entry)
    }

    /// Undoes [`entry`](Self::entry) for an entry that could not be queued.
    pub(super) fn not_queued(&mut self, user_data: u64) {
        if let Some(slot) = self.slot(user_data) {
            if std::mem::take(&mut slot.in_kernel) {
                slot.cancelled = false;
                self.in_kernel -= 1;
            }
        }
    }

    /// A completion was taken out of the ring: what it means for its
    /// request (see [`taken`](Self::taken)) or its lane's multishot (see
    /// [`shot_reaped`](Self::shot_reaped)); the results to hand over go to
    /// `out`, NOPs are dropped.
    pub(super) fn reaped(
        &mut self,
        e: &cqueue::Entry,
        kick: &mut Vec<Arc<Lane>>,
        out: &mut VecDeque<Done>,
    ) {
        let user_data = e.user_data();
        if user_data == NOP {
            return;
        }
        if is_shot(user_data) {
            self.shot_reaped(user_data, e.result(), e.flags(), kick, out);
        } else if self.taken(user_data, e.result(), kick) {
            out.push_back(Done {
                user_data,
                result: e.result(),
            });
        }
    }

    /// The completion of `user_data` (result `res`) was taken out of the
    /// ring: the request's lane learns it, and lanes whose chain it ended
    /// with requests to start go to `kick`. Returns whether the completion
    /// is a result to hand over; `false` for a request the kernel cancelled
    /// though no one asked (its submitting thread exited, or a request
    /// before it in its chain failed), which goes back to its lane to be
    /// started again, unless its queue is closing.
    pub(super) fn taken(&mut self, user_data: u64, res: i32, kick: &mut Vec<Arc<Lane>>) -> bool {
        let Some(slot) = self.slot(user_data) else {
            return true;
        };
        if !slot.in_kernel {
            return true;
        }
        slot.in_kernel = false;
        let (seq, cancelled) = (slot.seq, slot.cancelled);
        let (Some(request), Some(lane)) = (slot.request.as_ref(), slot.lane.as_ref()) else {
            return true;
        };
        let again = res == -libc::ECANCELED && !cancelled && !request.rq.is_closing();
        {
            // SAFETY: `&mut self` is the table, locked by the caller; no
            // other guard of a lane is held.
            let mut state = unsafe { lane.lock() };
            state.in_kernel = state.in_kernel.saturating_sub(1);
            if again {
                state.again.push((seq, user_data));
            }
            if state.startable() {
                kick.push(lane.clone());
            }
        }
        self.in_kernel -= 1;
        !again
    }

    pub(super) fn slot(&mut self, user_data: u64) -> Option<&mut RequestSlot> {
        let index = (user_data & 0xffff_ffff) as usize;
        let generation = ((user_data >> 32) & GENERATION) as u32;
        let slot = self.slots.get_mut(index)?;
        (slot.generation == generation && slot.request.is_some()).then_some(&mut **slot)
    }

    /// Takes back a request whose completion was reaped and makes its result;
    /// `None` for a `user_data` that is no request of this table.
    pub(super) fn complete(
        &mut self,
        user_data: u64,
        res: i32,
        claims: &mut Vec<Claim>,
    ) -> Option<RioResult> {
        let slot = self.slot(user_data)?;
        // The request ends where it is (not moved out of its slot, a copy
        // of a couple of hundred bytes per result).
        let request = slot.request.as_ref()?;
        let (status, bytes) = if std::mem::take(&mut slot.cancelled) {
            (libc::ECANCELED, 0)
        } else {
            // SAFETY: the completion was reaped, so the kernel is done with
            // the scratch (and the request's slices), and the table is held
            // exclusively; for a RECVMSG the header is the one it filled.
            unsafe { request.outcome(res, Some(&(*slot.scratch.get()).msg)) }
        };
        // Closing completes what it reaps without `taken`.
        let was_in_kernel = std::mem::take(&mut slot.in_kernel);
        let result = request.result(status, bytes);
        request.end_in_place(claims);
        slot.request = None;
        // The lane stays for the slot's next request (a lane is plain
        // memory: keeping it a little longer holds nothing else).
        self.free.push((user_data & 0xffff_ffff) as u32);
        self.live -= 1;
        self.in_kernel -= usize::from(was_in_kernel);
        Some(result)
    }

    /// The socket of the request behind `user_data`.
    pub(super) fn socket(&mut self, user_data: u64) -> Option<i32> {
        Some(self.slot(user_data)?.request.as_ref()?.rq.raw_fd())
    }

    /// The slot of a request on a datagram socket that waits in user space
    /// (not in the kernel), its request queue not closing: one that a
    /// `recvmmsg` batch or a buffer group may take.
    pub(super) fn waiting_datagram(&mut self, user_data: u64) -> Option<&mut RequestSlot> {
        let slot = self.slot(user_data)?;
        let request = slot.request.as_ref()?;
        (!slot.in_kernel && request.rq.datagram && !request.rq.is_closing()).then_some(slot)
    }

    /// For a datagram receive waiting in its lane (not in the kernel, its
    /// request queue not closing), the header a `recvmmsg` fills for it:
    /// its slot's scratch header, pointing at the request's data slice (and
    /// address slices, and the scratch's control buffer). `None` for any
    /// other request.
    pub(super) fn batch_header(&mut self, user_data: u64) -> Option<libc::msghdr> {
        let slot = self.waiting_datagram(user_data)?;
        let request = slot.request.as_ref()?;
        let s = slot.scratch.get_mut();
        match request.op {
            Op::Recv { ptr, len, flags } if flags & libc::MSG_WAITALL == 0 => message(s, ptr, len),
            Op::RecvMsg {
                ptr,
                len,
                remote,
                local,
                flags,
            } if flags & libc::MSG_WAITALL as u32 == 0 => {
                message(s, ptr, len);
                addr::receive_names(&mut s.msg, remote, local.is_some(), &mut s.control);
            }
            _ => return None,
        }
        Some(s.msg)
    }

    /// A `recvmmsg` filled `header` (from [`batch_header`](Self::batch_header))
    /// with a datagram of which it kept `kept` bytes: the request's scratch
    /// takes what the kernel wrote in the header, and the result its ring
    /// completion would have had is returned (the bytes; for a receive
    /// asked with `MSG_TRUNC`, more than its slice when the datagram was
    /// cut, as the kernel reports it), for [`complete`](Self::complete).
    pub(super) fn batch_done(&mut self, user_data: u64, header: &libc::msghdr, kept: u32) -> i32 {
        let kept = kept.min(i32::MAX as u32) as i32;
        let Some(slot) = self.slot(user_data) else {
            return kept;
        };
        let s = slot.scratch.get_mut();
        s.msg.msg_namelen = header.msg_namelen;
        s.msg.msg_controllen = header.msg_controllen;
        s.msg.msg_flags = header.msg_flags;
        match slot.request.as_ref().map(|r| &r.op) {
            Some(Op::Recv { len, flags, .. })
                if flags & libc::MSG_TRUNC != 0 && header.msg_flags & libc::MSG_TRUNC != 0 =>
            {
                // The datagram's full length is not known here, only that
                // it was longer than the slice, which is all the result says.
                (*len).min(i32::MAX as u32 - 1) as i32 + 1
            }
            _ => kept,
        }
    }

    /// Ends every request that is not in the kernel (waiting in its lane,
    /// or to be started again) as its completion queue closes: each lane
    /// forgets its requests, whose slices are added to `claims`.
    pub(super) fn end_waiting(&mut self, claims: &mut Vec<Claim>) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.in_kernel {
                continue;
            }
            let Some(request) = slot.request.take() else {
                continue;
            };
            if let Some(lane) = slot.lane.take() {
                // SAFETY: the table is locked by the caller (`&mut self`);
                // no other guard of a lane is held.
                let mut state = unsafe { lane.lock() };
                state.waiting.clear();
                state.again.clear();
                state.deferred = 0;
            }
            request.end(claims);
            self.free.push(index as u32);
            self.live -= 1;
        }
    }
}

/// The submission entry for `request`, filling its slot's scratch memory.
fn build(
    request: &Request,
    scratch: *mut Scratch,
    user_data: u64,
    poll_first: bool,
) -> squeue::Entry {
    let fd = types::Fd(request.rq.raw_fd());
    let prio = if poll_first {
        crate::sys::uring::ring::poll_first()
    } else {
        0
    };
    let entry = match request.op {
        Op::Recv { ptr, len, flags } => opcode::Recv::new(fd, ptr, len)
            .flags(flags)
            .ioprio(prio)
            .build(),
        Op::Send { ptr, len, flags } => opcode::Send::new(fd, ptr, len).flags(flags).build(),
        Op::RecvMsg {
            ptr,
            len,
            remote,
            local,
            flags,
        } => {
            // SAFETY: the slot is held exclusively (table lock) and its
            // request has not reached the kernel yet, so no one else uses
            // the scratch.
            let s = unsafe { &mut *scratch };
            message(s, ptr, len);
            addr::receive_names(&mut s.msg, remote, local.is_some(), &mut s.control);
            opcode::RecvMsg::new(fd, &mut s.msg)
                .flags(flags)
                .ioprio(prio)
                .build()
        }
        Op::SendMsg {
            ptr,
            len,
            remote,
            local,
            flags,
        } => {
            // SAFETY: as above.
            let s = unsafe { &mut *scratch };
            message(s, ptr.cast_mut(), len);
            addr::send_names(&mut s.msg, remote, local.as_ref(), &mut s.control);
            opcode::SendMsg::new(fd, &s.msg).flags(flags).build()
        }
    };
    entry.user_data(user_data)
}

/// Resets the scratch `msghdr` to one data buffer.
fn message(s: &mut Scratch, ptr: *mut u8, len: u32) {
    s.iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len as usize,
    };
    // SAFETY: all-zero is a valid msghdr.
    s.msg = unsafe { std::mem::zeroed() };
    s.msg.msg_iov = &mut s.iov;
    s.msg.msg_iovlen = 1;
}
