//! Datagram receives through a provided-buffer ring consumed by one
//! multishot `RECV`: the receive path at plain C's cost.
//!
//! A lane of datagram receives (`receive` on a datagram socket) gets a
//! *buffer group* of its completion queue's ring: a ring of buffer entries
//! in our memory (`IORING_REGISTER_PBUF_RING`), into which each posted
//! receive's slice is published (tail advanced) in posting order, its
//! buffer id the request's slot in the request table. One multishot `RECV`
//! armed on the socket takes the entries in ring order, so the kernel fills
//! the receives in posting order by construction, each datagram landing in
//! the posted slice itself (no copy). `MSG_TRUNC` makes a completion's result
//! the datagram's full length, so truncation shows as it does on the other
//! paths (`EMSGSIZE`, the bytes that fit).
//!
//! A deferred receive is published only when it is committed (only ready
//! requests leave the lane). The multishot is armed again whenever it ends
//! with receives still published: the ring ran dry (`ENOBUFS`), the kernel
//! cancelled it unasked (its issuing thread exited), a zero-length datagram
//! or a socket error ended it (those go to the oldest published receive, as
//! the ring's head buffer was not used). While it is not armed, the kernel
//! reads nothing of the ring, so the entries from its head on are rewritten
//! from the receives still published before it is armed again.
//!
//! A receive that cannot go this way (`receive_ex`, a zero-length slice)
//! waits in the lane until every published receive has completed, then goes
//! as a chain (see [`chain`](super::chain)); receives behind it wait for
//! that chain. Order holds across both.
//!
//! Cancelling (request queue dropped), closing and resizing end or move the
//! published receives only once the kernel has given back the multishot
//! (its final completion reaped): then nothing reads the ring. A group whose
//! lane went away is kept, registered, for the next lane; groups are
//! unregistered when their ring is left (resize) or closed, and their memory
//! freed only then.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use io_uring::{cqueue, opcode, types};

use super::super::request::Op;
use super::super::rq_shared::RqShared;
use super::buf_ring::Shot;
use super::lane::{Lane, LaneState};
use super::request_table::{Done, RequestTable, QUIET_BIT, SHOT_BIT};
use crate::sys::uring::ring::Ring;

/// The most entries a buffer ring may have.
const MAX_RING: u32 = 32_768;

/// The most buffer groups a completion queue makes (ids are 16 bits).
const MAX_GROUPS: usize = 1 << 15;

/// The flags of every datagram receive (see `RequestQueue::receive`).
const RECV_FLAGS: i32 = libc::MSG_TRUNC;

/// Whether this kernel has buffer rings and multishot `RECV` (6.0+), unless
/// `RINGPORT_RIO_MULTISHOT=0` turns the path off; asked once.
pub(super) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    let supported = *SUPPORTED.get_or_init(|| {
        let off = std::env::var("RINGPORT_RIO_MULTISHOT")
            .is_ok_and(|v| matches!(v.as_str(), "0" | "off" | "no" | "false"));
        !off && crate::sys::uring::ring::kernel_at_least(6, 0)
    });
    supported && !REFUSED.load(Ordering::Relaxed)
}

/// A kernel (or a sandbox) refused a multishot `RECV` although its version
/// says it has them: no lane tries again.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The `user_data` of group `shot`'s multishot.
fn shot_user_data(shot: &Shot) -> u64 {
    QUIET_BIT | SHOT_BIT | u64::from(shot.bgid)
}

/// The slot index a request's `user_data` carries (its buffer id).
fn bid_of(user_data: u64) -> u16 {
    (user_data & 0xffff) as u16
}

impl RequestTable {
    /// The slice of the request behind `user_data` if it can go through a
    /// buffer group: a plain datagram receive, waiting, its queue open.
    fn shot_slice(&mut self, user_data: u64) -> Option<(*mut u8, u32)> {
        let request = self.waiting_datagram(user_data)?.request.as_ref()?;
        match request.op {
            Op::Recv { ptr, len, flags } if flags == RECV_FLAGS && len > 0 => Some((ptr, len)),
            _ => None,
        }
    }

    /// [`shot_slice`](Self::shot_slice), the request then marked as
    /// published (in the kernel), with one look-up of its slot.
    fn publish_slice(&mut self, user_data: u64) -> Option<(*mut u8, u32)> {
        let slot = self.waiting_datagram(user_data)?;
        let found = match slot.request.as_ref()?.op {
            Op::Recv { ptr, len, flags } if flags == RECV_FLAGS && len > 0 => Some((ptr, len)),
            _ => None,
        };
        slot.in_kernel |= found.is_some();
        found
    }

    /// Marks a published request as out of the ring (`in_kernel` cleared).
    fn unpost(&mut self, user_data: u64) {
        if let Some(slot) = self.slot(user_data) {
            slot.in_kernel = false;
        }
    }

    /// Takes `posted` out of a buffer group: each is back to waiting in user
    /// space, returned with its posting sequence for its lane to issue again.
    fn unpost_all(&mut self, posted: Vec<u64>) -> Vec<(u64, u64)> {
        posted
            .into_iter()
            .map(|ud| {
                let seq = self.slot(ud).map_or(0, |s| s.seq);
                self.unpost(ud);
                (seq, ud)
            })
            .collect()
    }

    /// A buffer group for `lane` (whose request queue is `rq`, most
    /// receives `max`), registered with `ring`: a free one that is big
    /// enough, else a new one. `None` when none can be had.
    fn take_shot(&mut self, ring: &Ring, lane: &Arc<Lane>, rq: Arc<RqShared>) -> Option<u16> {
        let want = rq.max[0]
            .load(Ordering::SeqCst)
            .clamp(8, MAX_RING)
            .next_power_of_two()
            .min(MAX_RING) as u16;
        let found = self
            .shots
            .iter()
            .position(|s| s.lane.is_none() && s.entries >= want);
        let i = match found {
            Some(i) => i,
            None => {
                if self.shots.len() >= MAX_GROUPS {
                    return None;
                }
                let shot = Shot::new(self.shots.len() as u16, want)?;
                self.shots.push(shot);
                self.shots.len() - 1
            }
        };
        let shot = &mut self.shots[i];
        if !shot.registered {
            shot.head = 0;
            shot.tail = 0;
            shot.publish();
            // SAFETY: the ring memory is page-aligned, holds `entries`
            // entries and stays allocated until the group is unregistered
            // (or forever, if its table is forgotten).
            unsafe { ring.register_buf_ring(shot.base.as_ptr() as u64, shot.entries, shot.bgid) }
                .ok()?;
            shot.registered = true;
        }
        shot.lane = Some(lane.clone());
        shot.rq = Some(rq);
        Some(i as u16)
    }

    /// Starts what a lane with (or able to have) a buffer group can start:
    /// its ready datagram receives published to its ring, the multishot armed
    /// if it is not. `None` when the lane's next requests go as a chain
    /// instead (no group, or its front request cannot use one and nothing
    /// is published). Returns whether an entry was queued on `ring`; the
    /// caller holds the submission lock and submits.
    pub(super) fn start_shot(
        &mut self,
        ring: &Ring,
        lane: &mut LaneState,
    ) -> std::io::Result<Option<bool>> {
        if lane.no_shot {
            return Ok(None);
        }
        let i = match lane.shot {
            Some(i) => i as usize,
            None => {
                let Some(&front) = lane.waiting.front() else {
                    return Ok(None);
                };
                if lane.ready() == 0 {
                    return Ok(None);
                }
                if self.shot_slice(front).is_none() {
                    return Ok(None);
                }
                let Some((lane_arc, rq)) = self
                    .slot(front)
                    .and_then(|s| Some((s.lane.clone()?, s.request.as_ref()?.rq.to_arc())))
                else {
                    return Ok(None);
                };
                if !supported() {
                    lane.no_shot = true;
                    return Ok(None);
                }
                match self.take_shot(ring, &lane_arc, rq) {
                    Some(i) => {
                        lane.shot = Some(i);
                        i as usize
                    }
                    None => {
                        lane.no_shot = true;
                        return Ok(None);
                    }
                }
            }
        };
        lane.rearm = false;
        if !self.shots[i].registered {
            // Left its old ring (a resize): registered again with this one.
            let shot = &mut self.shots[i];
            shot.head = 0;
            shot.tail = 0;
            shot.publish();
            // SAFETY: as in `take_shot`.
            let r = unsafe {
                ring.register_buf_ring(shot.base.as_ptr() as u64, shot.entries, shot.bgid)
            };
            if r.is_err() {
                // Chains from now on (nothing is published: `leave_ring`
                // sent it back to the lane).
                shot.lane = None;
                shot.rq = None;
                lane.shot = None;
                lane.no_shot = true;
                return Ok(None);
            }
            shot.registered = true;
        }
        if !self.shots[i].armed {
            // Nothing reads the ring: rewrite it from its head with the
            // receives still published (one may have left it, see `reaped`).
            let head = self.shots[i].head;
            self.shots[i].tail = head;
            for k in 0..self.shots[i].posted.len() {
                let ud = self.shots[i].posted[k];
                let Some((ptr, len)) = self.slot(ud).and_then(|s| match s.request.as_ref()?.op {
                    Op::Recv { ptr, len, .. } => Some((ptr, len)),
                    _ => None,
                }) else {
                    continue;
                };
                let shot = &mut self.shots[i];
                let t = shot.tail;
                shot.write(t, ptr, len, bid_of(ud));
                shot.tail = t.wrapping_add(1);
            }
        }
        let entries = self.shots[i].entries as usize;
        while lane.ready() > 0 && self.shots[i].posted.len() < entries {
            let Some(&ud) = lane.waiting.front() else {
                break;
            };
            let Some((ptr, len)) = self.publish_slice(ud) else {
                break;
            };
            let shot = &mut self.shots[i];
            let t = shot.tail;
            shot.write(t, ptr, len, bid_of(ud));
            shot.tail = t.wrapping_add(1);
            shot.posted.push_back(ud);
            lane.waiting.pop_front();
        }
        let shot = &mut self.shots[i];
        shot.publish();
        let mut queued = false;
        if !shot.armed && !shot.posted.is_empty() {
            let Some(fd) = shot.rq.as_ref().map(|rq| rq.raw_fd()) else {
                return Ok(Some(false));
            };
            let sqe = opcode::RecvMulti::new(types::Fd(fd), shot.bgid)
                .flags(RECV_FLAGS)
                .build()
                .user_data(shot_user_data(shot));
            // SAFETY: the caller holds the submission lock. The entry points
            // at no memory of ours; the buffers it takes are the published
            // slices, which their requests' claims keep until their
            // completions are reaped (or the multishot's final one is), and
            // the ring memory, kept until the group is unregistered.
            if let Err(e) = unsafe { ring.push(&sqe) } {
                lane.rearm = true;
                return Err(e);
            }
            shot.armed = true;
            self.in_kernel += 1;
            self.multishots += 1;
            queued = true;
        }
        if self.shots[i].posted.is_empty() && lane.ready() > 0 {
            // The front request cannot use the group (and nothing was
            // armed, the ring being empty): it goes as a chain.
            return Ok(None);
        }
        Ok(Some(queued))
    }

    /// A completion of the multishot of group `user_data` was taken out of
    /// the ring (result `res`, `flags`): a datagram landed in the published
    /// receive its buffer id names, and when it is the final one, the
    /// receives still published are ended (queue closing or cancelled),
    /// or the group is to be armed again. Results go to `out`; lanes to
    /// start to `kick`.
    pub(super) fn shot_reaped(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        kick: &mut Vec<Arc<Lane>>,
        out: &mut VecDeque<Done>,
    ) {
        let i = (user_data & 0xffff) as usize;
        if i >= self.shots.len() {
            return;
        }
        let mut landed = false;
        if let Some(bid) = cqueue::buffer_select(flags) {
            let shot = &mut self.shots[i];
            shot.head = shot.head.wrapping_add(1);
            let ud = match shot.posted.front() {
                Some(&ud) if bid_of(ud) == bid => shot.posted.pop_front(),
                _ => shot
                    .posted
                    .iter()
                    .position(|&ud| bid_of(ud) == bid)
                    .and_then(|p| shot.posted.remove(p)),
            };
            if let Some(ud) = ud {
                self.unpost(ud);
                out.push_back(Done {
                    user_data: ud,
                    result: res,
                });
                landed = true;
            }
        }
        let more = cqueue::more(flags);
        // Refused at once (no buffer taken): not a datagram's error.
        let refused = !more && !landed && (res == -libc::EINVAL || res == -libc::EOPNOTSUPP);
        if !more {
            let shot = &mut self.shots[i];
            if shot.armed {
                shot.armed = false;
                self.in_kernel -= 1;
            }
            if !landed && !refused && res != -libc::ENOBUFS && res != -libc::ECANCELED {
                // A zero-length datagram or a socket error, taken from the
                // socket without a buffer: the oldest receive reports it,
                // as it would have from a chain.
                if let Some(ud) = self.shots[i].posted.pop_front() {
                    self.unpost(ud);
                    out.push_back(Done {
                        user_data: ud,
                        result: res,
                    });
                }
            }
        }
        let shot = &mut self.shots[i];
        let closing = self.closing || shot.rq.as_ref().is_none_or(|rq| rq.is_closing());
        if !more && closing {
            // The kernel gave the multishot back: what is still published
            // ends as cancelled, and the group is free for another lane.
            let posted: Vec<u64> = shot.posted.drain(..).collect();
            let lane = shot.lane.take();
            shot.rq = None;
            for ud in posted {
                self.unpost(ud);
                out.push_back(Done {
                    user_data: ud,
                    result: -libc::ECANCELED,
                });
            }
            if let Some(lane) = lane {
                // SAFETY: the table is locked by the caller (`&mut self`); no
                // other guard of a lane is held here.
                let mut state = unsafe { lane.lock() };
                state.shot = None;
                state.rearm = false;
                if state.startable() {
                    kick.push(lane);
                }
            }
            return;
        }
        let left = shot.posted.len();
        // Requests may wait in the lane behind a full ring, or behind one
        // that must go as a chain once the ring is empty: either may go now.
        let room = left == 0 || left + 1 == shot.entries as usize;
        let rearm = !more && left > 0;
        if !rearm && !room {
            return;
        }
        if refused {
            // Chains from now on, for this lane and every other: its
            // receives go back to it, first, in posting order.
            REFUSED.store(true, Ordering::Relaxed);
            let posted: Vec<u64> = shot.posted.drain(..).collect();
            let lane = shot.lane.take();
            shot.rq = None;
            let again = self.unpost_all(posted);
            if let Some(lane) = lane {
                // SAFETY: the table is locked by the caller (`&mut self`); no
                // other guard of a lane is held here.
                let mut state = unsafe { lane.lock() };
                state.again.extend(again);
                state.shot = None;
                state.no_shot = true;
                state.rearm = false;
                if state.startable() {
                    kick.push(lane);
                }
            }
            return;
        }
        let Some(lane) = shot.lane.clone() else {
            return;
        };
        // SAFETY: the table is locked by the caller (`&mut self`); no
        // other guard of a lane is held here.
        let mut state = unsafe { lane.lock() };
        state.rearm |= rearm;
        if (rearm || state.ready() > 0) && state.startable() {
            kick.push(lane);
        }
    }

    /// Before a close: the receives still published in groups whose
    /// multishot is not in the kernel end as cancelled (into `out`); the
    /// others end when their final completion is reaped.
    pub(super) fn end_unarmed_shots(&mut self, out: &mut VecDeque<Done>) {
        for i in 0..self.shots.len() {
            if self.shots[i].armed {
                continue;
            }
            let posted: Vec<u64> = self.shots[i].posted.drain(..).collect();
            for ud in posted {
                self.unpost(ud);
                out.push_back(Done {
                    user_data: ud,
                    result: -libc::ECANCELED,
                });
            }
        }
    }

    /// A request queue's lane is being cancelled (the queue dropped): if
    /// its multishot is not in the kernel, its published receives go back
    /// to the lane's front (to be ended as cancelled with the requests
    /// waiting there) and its group is freed; if it is, its final
    /// completion ends them.
    pub(super) fn cancel_shot(&mut self, lane: &mut LaneState) {
        let Some(i) = lane.shot else {
            return;
        };
        let i = i as usize;
        if i >= self.shots.len() || self.shots[i].armed {
            return;
        }
        let posted: Vec<u64> = self.shots[i].posted.drain(..).collect();
        for &ud in posted.iter().rev() {
            self.unpost(ud);
            lane.waiting.push_front(ud);
        }
        let shot = &mut self.shots[i];
        shot.lane = None;
        shot.rq = None;
        lane.shot = None;
        lane.rearm = false;
    }

    /// The queue leaves `ring` (a resize, every multishot given back): each
    /// group is unregistered from it, and its published receives go back to
    /// their lane, first (in posting order), to be published again on the
    /// next ring; their lanes go to `kick`.
    pub(super) fn leave_ring(&mut self, ring: &Ring, kick: &mut Vec<Arc<Lane>>) {
        for i in 0..self.shots.len() {
            if self.shots[i].armed {
                continue;
            }
            if self.shots[i].registered {
                let _ = ring.unregister_buf_ring(self.shots[i].bgid);
                self.shots[i].registered = false;
            }
            let posted: Vec<u64> = self.shots[i].posted.drain(..).collect();
            let lane = self.shots[i].lane.clone();
            let again = self.unpost_all(posted);
            if let Some(lane) = lane {
                // SAFETY: the table is locked by the caller (`&mut self`); no
                // other guard of a lane is held here.
                let mut state = unsafe { lane.lock() };
                state.again.extend(again);
                state.rearm = false;
                if state.startable() {
                    kick.push(lane);
                }
            }
        }
    }

    /// The queue is closing and the kernel holds none of its requests: every
    /// group is unregistered from `ring` (their memory is freed with the
    /// table).
    pub(super) fn unregister_shots(&mut self, ring: &Ring) {
        for shot in &mut self.shots {
            if shot.registered && !shot.armed {
                let _ = ring.unregister_buf_ring(shot.bgid);
                shot.registered = false;
            }
            shot.lane = None;
            shot.rq = None;
        }
    }
}
