//! Datagrams already waiting in a socket go straight into the receives
//! waiting in its lane, with one `recvmmsg` for up to [`BATCH`] of them,
//! instead of a trip through the ring each.
//!
//! Where a lane's next chain would start and its first requests are
//! datagram receives (`receive`, `receive_ex` on a datagram socket,
//! committed), the thread starting it first takes what the socket holds into
//! them, oldest receive first, so posting order holds. Each receive so filled
//! gets the result its ring completion would have had (bytes; truncation as
//! the kernel reports it), made here and put in the queue's `carry`, where
//! `dequeue` finds it just like a completion taken out of the ring; the
//! request stays in the request table until then. Only when the socket is
//! found drained (fewer datagrams than receives, or `EAGAIN`) does the rest
//! go to the ring, the first polling before it tries.
//!
//! Results made here fire an armed notification as a ring completion would:
//! the caller, which holds the consumer lock (`carry` is the consumer's),
//! learns that one that may notify was made.

use std::collections::VecDeque;

use super::lane::LaneState;
use super::request_table::{is_quiet, Done, RequestTable};
use crate::sys::syscalls;

/// Most datagrams one `recvmmsg` takes into waiting receives.
pub(super) const BATCH: usize = 64;

/// The `recvmmsg` headers and the requests they belong to, kept between
/// batches so that the steady state allocates nothing.
#[derive(Default)]
pub(super) struct Batch {
    headers: Vec<libc::mmsghdr>,
    ids: Vec<u64>,
}

// SAFETY: the headers only hold pointers between the `recvmmsg` that fills
// them and the end of that batch, under the consumer and request table
// locks; the pointers are never followed afterwards.
unsafe impl Send for Batch {}

/// Where results made in user space go: the consumer's `carry` and batch
/// memory, borrowed under the consumer lock.
pub(super) struct Harvest<'a> {
    pub(super) carry: &'a mut VecDeque<Done>,
    pub(super) batch: &'a mut Batch,
    /// A result that may notify was put in `carry`.
    pub(super) notifying: bool,
}

impl Harvest<'_> {
    /// Takes the datagrams waiting in the socket of `lane` (idle: nothing of
    /// it in the kernel) into its waiting receives, oldest first, and puts
    /// their results in `carry`; the receives filled leave the lane. Returns
    /// whether the socket was found drained (the next receive should then
    /// poll first).
    pub(super) fn take(&mut self, table: &mut RequestTable, lane: &mut LaneState, fd: i32) -> bool {
        let Harvest {
            carry,
            batch,
            notifying,
        } = self;
        let mut push = |done: Done| {
            *notifying |= !is_quiet(done.user_data);
            carry.push_back(done);
        };
        loop {
            let Batch { headers, ids } = &mut **batch;
            headers.clear();
            ids.clear();
            for &ud in lane.waiting.iter().take(lane.ready().min(BATCH)) {
                let Some(msg_hdr) = table.batch_header(ud) else {
                    break;
                };
                headers.push(libc::mmsghdr {
                    msg_hdr,
                    msg_len: 0,
                });
                ids.push(ud);
            }
            if headers.is_empty() {
                return false;
            }
            let asked = headers.len();
            // The headers point into the scratch of requests that wait in
            // user space (the kernel holds none of them), which the request
            // table, locked by the caller, keeps in place, and at the
            // registered slices those requests claimed for receiving.
            let got = syscalls::recvmmsg(fd, headers);
            if got == -libc::EAGAIN || got == -libc::EINTR {
                return got == -libc::EAGAIN;
            }
            if got < 0 {
                // A socket error (a refused port, say), which the call has
                // consumed: the oldest receive reports it, as it would have
                // from the ring.
                let ud = ids[0];
                lane.waiting.pop_front();
                push(Done {
                    user_data: ud,
                    result: got,
                });
                return false;
            }
            let got = got as usize;
            for i in 0..got {
                let (ud, h) = (ids[i], &headers[i]);
                let result = table.batch_done(ud, &h.msg_hdr, h.msg_len);
                lane.waiting.pop_front();
                push(Done {
                    user_data: ud,
                    result,
                });
            }
            if got < asked {
                return true;
            }
        }
    }
}
