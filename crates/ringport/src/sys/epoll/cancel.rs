//! Cancelling: what waits in a descriptor's queues completes with
//! `ECANCELED` at once. An operation being performed with the reactor's
//! mutex released (its direction busy) is waited for first: its system call
//! does not block, and it must not be completed (its buffer handed back)
//! while the kernel may still write into it.

use std::cmp::Reverse;
use std::os::fd::RawFd;

use super::{EpollDriver, FdOps, Locked, Reactor};
use crate::port::core::Core;
use crate::port::Packet;
use crate::sys::inflight::OpId;
use crate::sys::op::{self, Finished};
use crate::Error;

impl<T> EpollDriver<T> {
    /// The state, locked, with no direction of `fd` (of any descriptor, for
    /// `None`) busy: what cancels or detaches waits for the performers, whose
    /// non-blocking system calls end soon, to be done with it.
    pub(super) fn lock_idle(&self, fd: Option<RawFd>) -> Locked<'_, T> {
        loop {
            let st = self.lock_state();
            let busy = match fd {
                Some(fd) => st.fds.get(&fd).is_some_and(FdOps::any_busy),
                None => st.fds.values().any(FdOps::any_busy),
            };
            if !busy {
                return st;
            }
            drop(st);
            std::thread::yield_now();
        }
    }

    pub(super) fn cancel_one(st: &mut Reactor<T>, id: OpId, done: &mut Vec<Finished<T>>) {
        if let Some((p, s)) = st.table.complete(id) {
            done.push(op::finish(p, -libc::ECANCELED, s));
        }
    }

    pub(super) fn cancel_queued(st: &mut Reactor<T>, fd: RawFd, done: &mut Vec<Finished<T>>) {
        let ids: Vec<OpId> = match st.fds.get_mut(&fd) {
            Some(ops) => ops.readers.drain(..).chain(ops.writers.drain(..)).collect(),
            None => return,
        };
        for id in ids {
            Self::cancel_one(st, id, done);
        }
    }

    /// Cancels one operation if it is still waiting (a file operation
    /// already handed to the pool runs to completion, as on io_uring).
    pub(crate) fn cancel(&self, core: &Core<Packet<T>>, id: OpId, fd: RawFd) -> Result<(), Error> {
        let mut done = Vec::new();
        {
            let mut st = self.lock_idle(Some(fd));
            if st.table.fd_of(id) != Some(fd) {
                return Err(Error::InvalidArgument(
                    "no such operation in flight on this handle",
                ));
            }
            if let Some(ops) = st.fds.get_mut(&fd) {
                let before = ops.readers.len() + ops.writers.len();
                ops.readers.retain(|x| *x != id);
                ops.writers.retain(|x| *x != id);
                if ops.readers.len() + ops.writers.len() < before {
                    Self::cancel_one(&mut st, id, &mut done);
                }
            }
        }
        Self::deliver(core, done, false);
        Ok(())
    }

    /// Cancels every waiting operation on `fd`.
    pub(crate) fn cancel_fd(&self, core: &Core<Packet<T>>, fd: RawFd) {
        let mut done = Vec::new();
        Self::cancel_queued(&mut self.lock_idle(Some(fd)), fd, &mut done);
        Self::deliver(core, done, false);
    }

    /// Cancels every waiting operation and timer.
    pub(crate) fn cancel_all(&self, core: &Core<Packet<T>>) {
        let mut done = Vec::new();
        {
            let mut st = self.lock_idle(None);
            let fds: Vec<RawFd> = st.fds.keys().copied().collect();
            for fd in fds {
                Self::cancel_queued(&mut st, fd, &mut done);
            }
            let timers: Vec<u64> = st.timers.drain().map(|Reverse((_, id))| id).collect();
            for id in timers {
                Self::cancel_one(&mut st, OpId(id), &mut done);
            }
        }
        Self::deliver(core, done, false);
    }
}
