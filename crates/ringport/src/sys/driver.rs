//! The port's kernel I/O, on whichever backend it runs: the narrow boundary
//! between the port and the backends (open, start, cancel, harvest, sleep,
//! wake).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use super::inflight::{OpId, Operation, Scratch};
use super::op::{self, Op};
use super::syscalls;
use crate::port::core::{Core, Kernel};
use crate::port::Packet;
use crate::sys::epoll::EpollDriver;
use crate::sys::fd::FdKind;
use crate::sys::uring::driver::UringDriver;
use crate::sys::uring::PortRing;
use crate::sys::{choose, Backend, Chosen};
use crate::Error;

/// How an operation started with skip-on-success (`*_now` methods of
/// [`Handle`](crate::Handle)) went: still pending, to complete to the port as a packet, or
/// done at once, with its packet here and none queued
/// (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`).
#[derive(Debug)]
pub enum Started<T> {
    /// In flight; its packet will come through the port.
    Pending(OpId),
    /// Completed at once; no packet is queued.
    Done(crate::Packet<T>),
}

/// A port's kernel I/O, on whichever backend it runs.
// One per port, behind an Arc: boxing the larger variant would only add a
// pointer chase to every operation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driver<T> {
    Uring(UringDriver<T>),
    Epoll(EpollDriver<T>),
}

impl<T> Driver<T> {
    /// Sets up the backend `asked` (see [`choose`]), with a ring of
    /// `entries` submission slots on io_uring.
    pub(crate) fn open(asked: Backend, entries: u32) -> Result<Self, Error> {
        Ok(
            match choose(asked, || PortRing::new(entries), EpollDriver::new)? {
                Chosen::Uring(ring) => Driver::Uring(UringDriver::new(ring)),
                Chosen::Epoll(d) => Driver::Epoll(d),
            },
        )
    }

    /// The backend it runs on (never `Auto`).
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::IoUring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// Prepares a descriptor that is being associated with the port.
    /// Returns whether its operations go by a registered (direct)
    /// descriptor (`Operation::fixed`).
    pub(crate) fn attach(&self, fd: RawFd, kind: FdKind) -> Result<bool, Error> {
        match self {
            Driver::Uring(d) => Ok(d.ring().register_fd(fd)),
            Driver::Epoll(d) => d.attach(fd, kind).map(|()| false),
        }
    }

    /// Cancels a descriptor's operations before its handle closes it, and
    /// lets go of its registration (`fixed`, as [`attach`](Self::attach)
    /// returned).
    pub(crate) fn detach(&self, core: &Core<Packet<T>>, fd: RawFd, fixed: bool) {
        match self {
            Driver::Uring(d) => {
                // Operations in flight hold their own reference to the file.
                drop(d.cancel_fd(core, fd));
                if fixed {
                    d.ring().unregister_fd(fd);
                }
            }
            Driver::Epoll(d) => d.detach(core, fd),
        }
    }

    /// Whether the calling thread holds submissions for its next wait
    /// (see `sys::uring::hold_submissions`).
    pub(crate) fn holds(&self) -> bool {
        matches!(self, Driver::Uring(d) if d.ring().holds())
    }

    /// Lets go of a descriptor's registration ([`attach`](Self::attach)
    /// returned true) without cancelling: the port closed.
    pub(crate) fn unfix(&self, fd: RawFd) {
        if let Driver::Uring(d) = self {
            d.ring().unregister_fd(fd);
        }
    }

    /// Starts an operation; with `immediate`, a result available at once is
    /// returned instead of queued (skip-completion-port-on-success).
    pub(crate) fn start(
        &self,
        core: &Core<Packet<T>>,
        pending: Operation<T>,
        to: Option<SocketAddr>,
        immediate: bool,
    ) -> Result<Started<T>, Error> {
        let mut pending = pending;
        if pending.kind == FdKind::File && matches!(pending.op, Op::ReadAt(_)) {
            // What the page cache can serve at once costs what pread costs:
            // no ring, no helper thread. Its packet is queued at once (or
            // handed back, with skip-on-success), as Windows queues the packet
            // of a ReadFile that completed synchronously. A short read (only
            // part of the range cached, or the end of the file) goes the
            // backend's way, which reads the whole range as pread would.
            let want = pending.buf.as_ref().map_or(0, crate::Buf::capacity);
            let res = syscalls::file_nowait(pending.op, pending.fd, &mut pending.buf);
            if res == want as i32 || (res < 0 && res != -libc::EAGAIN && res != -libc::EOPNOTSUPP) {
                // SAFETY: all-zero is a valid value of these plain C structs;
                // a file operation reads nothing from its scratch.
                let scratch: Scratch = unsafe { std::mem::zeroed() };
                let packet = op::packet(pending, res, &scratch);
                if immediate {
                    return Ok(Started::Done(packet));
                }
                core.enqueue(packet);
                core.publish_completed(1, false);
                return Ok(Started::Pending(OpId::DONE));
            }
        }
        let started = match self {
            Driver::Uring(d) => d.start(pending, to, immediate),
            Driver::Epoll(d) => d.start(core, pending, to, immediate),
        }?;
        if let Started::Pending(_) = started {
            core.kernel_work_started();
        }
        Ok(started)
    }

    pub(crate) fn cancel(&self, core: &Core<Packet<T>>, id: OpId, fd: RawFd) -> Result<(), Error> {
        match self {
            Driver::Uring(d) => d.cancel(core, id, fd),
            Driver::Epoll(d) => d.cancel(core, id, fd),
        }
    }

    pub(crate) fn cancel_fd(&self, core: &Core<Packet<T>>, fd: RawFd) -> Result<(), Error> {
        match self {
            Driver::Uring(d) => d.cancel_fd(core, fd),
            Driver::Epoll(d) => {
                d.cancel_fd(core, fd);
                Ok(())
            }
        }
    }

    /// On close: cancels everything and drops what completes (bounded).
    /// Nobody takes packets from a closed port, so without this, completions
    /// of cancelled operations (and whatever their tokens own) would wait for
    /// the port's last reference to go, which a token owning one of the
    /// port's handles would never let happen.
    pub(crate) fn close(&self, core: &Core<Packet<T>>) {
        match self {
            Driver::Uring(d) => {
                d.drain(Instant::now() + std::time::Duration::from_secs(1));
            }
            // The epoll backend completes cancelled operations at once (into
            // the closed port, which drops them).
            Driver::Epoll(d) => d.cancel_all(core),
        }
    }

    /// Moves finished operations into the port; with `keep`, the (inactive)
    /// caller takes the first for itself if the limit allows (it is then
    /// active).
    pub(crate) fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> Option<Packet<T>> {
        match self {
            Driver::Uring(d) => d.harvest(core, keep),
            Driver::Epoll(d) => d.harvest(core, keep),
        }
    }
}

impl<T: Send + 'static> Kernel<Packet<T>> for Driver<T> {
    fn sleep(&self, deadline: Option<Instant>) {
        match self {
            Driver::Uring(d) => d.sleep(deadline),
            Driver::Epoll(d) => d.sleep(deadline),
        }
    }
    fn wake(&self) {
        match self {
            Driver::Uring(d) => d.wake(),
            Driver::Epoll(d) => d.wake(),
        }
    }
    fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> Option<Packet<T>> {
        Driver::harvest(self, core, keep)
    }
    fn submit_held(&self) {
        if let Driver::Uring(d) = self {
            d.ring().submit_held();
        }
    }
    fn busy(&self) -> bool {
        match self {
            Driver::Uring(d) => d.busy(),
            Driver::Epoll(d) => d.busy(),
        }
    }
}
