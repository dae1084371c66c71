//! The one place that names both engines: a completion queue's engine
//! (io_uring or epoll, chosen by the port's rule, [`choose`]), what a request
//! queue's socket is to it, and the forwarding of every call to the engine
//! that runs the queue. The front ([`cq`](super::cq), [`rq`](super::rq))
//! sees only [`CqShared`] and [`Attachment`].

use std::os::fd::RawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::charge::{CqCapacity, CqCommon, CqCounters};
use super::epoll::{EpollCq, Watched};
use super::error::RioError;
use super::notify::Notify;
use super::request::{Request, RioResult};
use super::rq_shared::RqShared;
use super::uring::{queue_ring, Lane, UringCq};
use crate::sys::op::Recheck;
use crate::sys::{choose, Chosen};
use crate::{Backend, Error};

// One per queue, inside its Arc: the size is paid once, and boxing the big
// variant would add a pointer to follow on every dequeue.
#[allow(clippy::large_enum_variant)]
enum CqEngine {
    Uring(UringCq),
    Epoll(EpollCq),
}

/// A request queue's socket, for requests of one kind, as the engine of the
/// completion queue they complete to knows it.
#[derive(Clone)]
pub(super) enum Attachment {
    /// The lane that keeps their posting order on io_uring.
    Uring(Arc<Lane>),
    /// The socket's entry with the epoll engine, where they wait for
    /// readiness.
    Epoll(Arc<Watched>),
}

/// A completion queue: what every queue keeps, and its engine.
pub(super) struct CqShared {
    pub(super) common: CqCommon,
    engine: CqEngine,
}

/// The recheck of a port notification's poll on an io_uring queue: the
/// packet is due if the queue says so; if not, the queue polls again (and a
/// packet goes out after all if it cannot). A dropped queue is always due.
fn port_recheck(cq: Weak<CqShared>) -> Recheck {
    Arc::new(move || {
        let Some(s) = cq.upgrade() else {
            return true;
        };
        match &s.engine {
            CqEngine::Uring(e) => {
                e.poll_fired(&s.common) || e.rearm(port_recheck(cq.clone())).is_err()
            }
            CqEngine::Epoll(_) => true,
        }
    })
}

impl CqShared {
    /// A queue of `size` results on `backend` (see
    /// [`CompletionQueue::with_backend`](super::CompletionQueue::with_backend)).
    pub(super) fn new(size: u32, notify: Notify, backend: Backend) -> Result<CqShared, Error> {
        let engine = match choose(backend, || queue_ring(size), || Ok(()))? {
            Chosen::Uring(ring) => CqEngine::Uring(UringCq::new(ring, notify)?),
            Chosen::Epoll(()) => CqEngine::Epoll(EpollCq::new(size, notify)?),
        };
        Ok(CqShared {
            common: CqCommon {
                capacity: CqCapacity::new(size),
                counters: CqCounters::default(),
            },
            engine,
        })
    }

    pub(super) fn backend(&self) -> Backend {
        match self.engine {
            CqEngine::Uring(_) => Backend::IoUring,
            CqEngine::Epoll(_) => Backend::Epoll,
        }
    }

    pub(super) fn dequeue(&self, out: &mut [RioResult]) -> Result<usize, Error> {
        match &self.engine {
            CqEngine::Uring(e) => e.dequeue(&self.common, out),
            CqEngine::Epoll(e) => e.dequeue(&self.common, out),
        }
    }

    pub(super) fn notify(self: &Arc<Self>) -> Result<(), Error> {
        match &self.engine {
            CqEngine::Uring(e) => e.notify(&self.common, || port_recheck(Arc::downgrade(self))),
            CqEngine::Epoll(e) => e.notify(&self.common),
        }
    }

    pub(super) fn wait(&self, timeout: Option<Duration>) -> Result<(), Error> {
        match &self.engine {
            CqEngine::Uring(e) => e.wait(&self.common, timeout),
            CqEngine::Epoll(e) => e.wait(timeout),
        }
    }

    pub(super) fn is_armed(&self) -> bool {
        match &self.engine {
            CqEngine::Uring(e) => e.is_armed(),
            CqEngine::Epoll(e) => e.is_armed(),
        }
    }

    /// The eventfd of an event-notified queue.
    pub(super) fn event_fd(&self) -> Option<RawFd> {
        match &self.engine {
            CqEngine::Uring(e) => e.event_fd(),
            CqEngine::Epoll(e) => e.event_fd(),
        }
    }

    /// Multishot receives armed (io_uring only).
    pub(super) fn multishots(&self) -> u64 {
        match &self.engine {
            CqEngine::Uring(e) => e.multishots(),
            CqEngine::Epoll(_) => 0,
        }
    }

    pub(super) fn ring_capacity(&self) -> u32 {
        match &self.engine {
            CqEngine::Uring(e) => e.ring_capacity(),
            CqEngine::Epoll(e) => e.ring_capacity(),
        }
    }

    pub(super) fn resize(&self, new_size: u32) -> Result<(), Error> {
        match &self.engine {
            CqEngine::Uring(e) => e.resize(&self.common, new_size),
            CqEngine::Epoll(e) => e.resize(&self.common, new_size),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        match &self.engine {
            CqEngine::Uring(e) => e.is_closed(),
            CqEngine::Epoll(e) => e.is_closed(),
        }
    }

    pub(super) fn close(&self) -> Result<(), Error> {
        match &self.engine {
            CqEngine::Uring(e) => e.close(),
            CqEngine::Epoll(e) => e.close(),
        }
    }

    /// Charges `n` more outstanding requests to the queue.
    pub(super) fn charge(&self, n: u32) -> Result<(), Error> {
        self.common.capacity.charge(n, || self.is_closed())
    }

    pub(super) fn uncharge(&self, n: u32) {
        self.common.capacity.uncharge(n);
    }

    /// Prepares the queue for a request queue's socket `fd`, whose requests
    /// of the kinds marked in `kinds` (receives, sends) complete here: what
    /// each of those kinds is to the engine.
    pub(super) fn attach(
        &self,
        fd: RawFd,
        kinds: [bool; 2],
    ) -> Result<[Option<Attachment>; 2], Error> {
        Ok(match &self.engine {
            CqEngine::Uring(e) => kinds.map(|k| k.then(|| Attachment::Uring(e.attach()))),
            CqEngine::Epoll(e) => {
                let w = e.attach(fd, kinds)?;
                kinds.map(|k| k.then(|| Attachment::Epoll(w.clone())))
            }
        })
    }

    /// Undoes [`attach`](Self::attach) (a request queue that could not be
    /// made).
    pub(super) fn detach(&self, attached: &[Option<Attachment>; 2]) {
        if let CqEngine::Epoll(e) = &self.engine {
            for a in attached.iter().flatten() {
                if let Attachment::Epoll(w) = a {
                    e.detach(w);
                }
            }
        }
    }

    /// Starts `request`, whose socket is `attached` here, or with `defer`
    /// queues it for the next submission.
    pub(super) fn submit(
        &self,
        request: Request,
        attached: &Attachment,
        defer: bool,
    ) -> Result<(), Error> {
        match (&self.engine, attached) {
            (CqEngine::Uring(e), Attachment::Uring(lane)) => {
                e.submit(&self.common, request, lane, defer)
            }
            (CqEngine::Epoll(e), Attachment::Epoll(w)) => e.submit(&self.common, request, w, defer),
            // Not attached to this queue: cannot happen for a request queue
            // made on it.
            _ => {
                request.abandon();
                Err(RioError::QueueClosed.into())
            }
        }
    }

    /// Starts every deferred request (one system call on io_uring).
    pub(super) fn commit(&self) -> Result<(), Error> {
        match &self.engine {
            CqEngine::Uring(e) => e.commit(&self.common),
            CqEngine::Epoll(e) => e.commit(&self.common),
        }
    }

    /// Cancels every request of `rq` (a request queue being dropped) whose
    /// kind is `attached` here: they complete with `ECANCELED`.
    pub(super) fn cancel(&self, rq: &RqShared, attached: &[Option<Attachment>; 2]) {
        match &self.engine {
            CqEngine::Uring(e) => e.cancel(
                rq,
                attached.each_ref().map(|a| match a {
                    Some(Attachment::Uring(lane)) => Some(lane),
                    _ => None,
                }),
            ),
            CqEngine::Epoll(e) => e.cancel(
                rq,
                attached.each_ref().map(|a| match a {
                    Some(Attachment::Epoll(w)) => Some(w),
                    _ => None,
                }),
            ),
        }
    }
}
