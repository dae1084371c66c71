//! Datagrams already waiting on a socket, taken into its queued receives
//! with one `recvmmsg`: what both backends do instead of one system call (or
//! one trip through the ring) per datagram when receives queue up.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use super::fd::FdKind;
use super::inflight::{Inflight, OpId};
use super::op::{self, Finished, Op};
use super::syscalls;

/// Most datagrams one `recvmmsg` takes.
const BATCH: usize = 64;

/// The headers of one batch, kept between batches so that the steady state
/// allocates nothing.
#[derive(Default)]
pub(crate) struct DatagramBatch {
    hdrs: Vec<libc::mmsghdr>,
    ids: Vec<OpId>,
}

/// How a batch ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Batched {
    /// The socket has no more datagrams (`recvmmsg` took fewer than asked).
    Drained,
    /// `recvmmsg` failed otherwise: the front receive, tried alone, reports it.
    Failed,
}

thread_local! {
    /// This thread's headers: a batch is filled with the table's lock
    /// released, so each thread that fills one has its own.
    static THIS_THREAD: std::cell::RefCell<DatagramBatch> = std::cell::RefCell::default();
}

impl DatagramBatch {
    /// Runs `f` on this thread's batch.
    pub(crate) fn with<R>(f: impl FnOnce(&mut DatagramBatch) -> R) -> R {
        THIS_THREAD.with_borrow_mut(f)
    }

    /// Points the headers at the datagram receives at the front of `lane`,
    /// oldest first (so issue order holds), at most a batch of them. Returns
    /// how many (none when the front is not a datagram `recv_from`). The
    /// receives must wait in user space (the kernel holds none of them), and
    /// from here to [`finish`](Self::finish) their holder keeps them to
    /// itself: the headers point into their slots.
    pub(crate) fn gather<T>(&mut self, ops: &mut Inflight<T>, lane: &VecDeque<OpId>) -> usize {
        self.hdrs.clear();
        self.ids.clear();
        for &id in lane.iter().take(BATCH) {
            match ops.get_mut(id) {
                Some((p, s)) if p.op == Op::RecvFrom && p.kind == FdKind::Datagram => {
                    s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                    s.msg.msg_flags = 0;
                    self.hdrs.push(libc::mmsghdr {
                        msg_hdr: s.msg,
                        msg_len: 0,
                    });
                    self.ids.push(id);
                }
                _ => break,
            }
        }
        self.hdrs.len()
    }

    /// The `recvmmsg` into the gathered receives (a result or `-errno`). It
    /// touches no table, only the memory the headers point into, which must
    /// stay put and untouched by anyone else until [`finish`](Self::finish).
    pub(crate) fn recv(&mut self, fd: RawFd) -> i32 {
        syscalls::recvmmsg(fd, &mut self.hdrs)
    }

    /// Completes the receives the `recvmmsg` filled (`got` of them, or an
    /// error), which must still be the front of `lane`. Returns how the batch
    /// ended, or `None` if it was full and the socket may hold more.
    pub(crate) fn finish<T>(
        &mut self,
        got: i32,
        ops: &mut Inflight<T>,
        lane: &mut VecDeque<OpId>,
        done: &mut Vec<Finished<T>>,
    ) -> Option<Batched> {
        if got == -libc::EAGAIN {
            return Some(Batched::Drained);
        }
        if got <= 0 {
            return Some(Batched::Failed);
        }
        for (&id, h) in self.ids.iter().zip(&self.hdrs).take(got as usize) {
            if let Some((_, s)) = ops.get_mut(id) {
                // recvmmsg wrote the lengths and flags into its copy.
                s.msg.msg_namelen = h.msg_hdr.msg_namelen;
                s.msg.msg_flags = h.msg_hdr.msg_flags;
            }
            lane.pop_front();
            if let Some((p, s)) = ops.complete(id) {
                let res = h.msg_len.min(i32::MAX as u32) as i32;
                done.push(op::finish(p, res, s));
            }
        }
        ((got as usize) < self.hdrs.len()).then_some(Batched::Drained)
    }
}
