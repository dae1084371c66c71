//! What a port does with descriptors: associating them, timers and watches.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::Handle;
use crate::sys::driver::Started;
use crate::sys::fd::{classify, FdKind};
use crate::sys::inflight::{OpId, Operation};
use crate::sys::op::{Op, Recheck};
use crate::{CompletionPort, Error};

impl<T: Send + 'static> CompletionPort<T> {
    /// Associates a file descriptor (a socket, file, pipe: anything that
    /// owns one) with this port under `key`; see [`Handle`](crate::Handle).
    /// The handle owns the descriptor from now on.
    ///
    /// On the epoll backend a descriptor other than a regular file is made
    /// non-blocking. Fails with [`Error::Closed`] on a closed port.
    pub fn associate(&self, fd: impl Into<OwnedFd>, key: u64) -> Result<Handle<T>, Error> {
        let fd = fd.into();
        let kind = classify(fd.as_raw_fd())?;
        let fixed = self.shared().driver()?.attach(fd.as_raw_fd(), kind)?;
        Ok(Handle::new(self.shared().clone(), fd, key, kind, fixed))
    }

    /// Starts a timer: after `after`, a packet with `key` and `token` and
    /// result `Ok(0)` is queued (cancelled timers complete cancelled when the
    /// port closes).
    pub fn timer(&self, after: Duration, key: u64, token: T) -> Result<OpId, Error> {
        self.start(Op::Timer(after), -1, key, token, None)
    }

    fn start(
        &self,
        op: Op,
        fd: RawFd,
        key: u64,
        token: T,
        recheck: Option<Recheck>,
    ) -> Result<OpId, Error> {
        let shared = self.shared();
        // A timer has no descriptor; a watch only polls one (never ordered).
        let mut pending = Operation::new(key, token, op, None, fd, FdKind::None);
        pending.recheck = recheck;
        match shared.driver()?.start(&shared.core, pending, None, false)? {
            Started::Pending(id) => Ok(id),
            Started::Done(_) => unreachable!("not started with skip-on-success"),
        }
    }

    /// Queues one packet with `key` and `token` when `fd` becomes readable
    /// (a one-shot poll on the port's ring) and `recheck` then says it is
    /// due; the result is the poll mask. When it is not due the packet is
    /// dropped, and `recheck` arms the next poll itself if it wants one.
    ///
    /// RIO completion queues use it for port notification: the fd is a
    /// queue's own ring, readable when it holds any completion, and the
    /// recheck looks for one that may notify (not `DONT_NOTIFY`). The caller
    /// keeps `fd` open until the packet arrives or the port closes.
    pub(crate) fn watch_readable(
        &self,
        fd: RawFd,
        key: u64,
        token: T,
        recheck: Recheck,
    ) -> Result<OpId, Error> {
        self.start(Op::PollReadable, fd, key, token, Some(recheck))
    }
}
