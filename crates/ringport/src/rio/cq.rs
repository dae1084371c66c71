//! [`CompletionQueue`]: where requests' results arrive, read without a
//! system call, with polled, event or port notification.
//!
//! The public type keeps what every queue has, whatever runs it (its size
//! and the entries request queues charged to it, its counters), and hands
//! everything else to its engine:
//! - [`uring`](super::uring): the queue owns an io_uring ring; requests are
//!   submitted to it and `dequeue` reads its CQ ring.
//! - [`epoll`](super::epoll): the queue owns a ring of results in user
//!   memory, filled by whichever thread finishes a request (the requesting
//!   thread when it can be done at once, else the queue's engine thread,
//!   woken by epoll), and `dequeue` reads it.
//!
//! Which one a queue gets is the port's rule ([`Backend`]): io_uring if a
//! ring can be set up, else epoll; `RINGPORT_BACKEND` forces one.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::epoll::{EpollCq, Watched};
use super::notify::Notify;
use super::request::{Request, RequestKind};
use super::rq::RqShared;
use super::uring::{queue_ring, UringCq};
use super::{RioError, RioResult};
use crate::sync::lock;
use crate::sys::op::Recheck;
use crate::sys::{choose, Chosen};
use crate::{Backend, Error};

/// The largest completion queue (io_uring's largest CQ ring).
pub(super) const MAX_SIZE: u32 = 65_536;

/// A completion queue (`RIO_CQ`): requests' results, read with
/// [`dequeue`](Self::dequeue) with no system call: from the shared memory of
/// the queue's own io_uring ring, or, on the epoll backend, from a ring of
/// results in user memory (see [`backend`](Self::backend)).
///
/// Request queues charge their outstanding requests to it (see
/// [`RequestQueue`](super::RequestQueue)), so it never overflows.
///
/// **Notification** ([`Notify`]): [`notify`](Self::notify) arms exactly one;
/// it fires at once if results are waiting, otherwise when the next result
/// arrives. With [`Notify::Event`] the owner then returns from
/// [`wait`](Self::wait); with [`Notify::port`] one packet is queued on the
/// port. Calling `notify` while a notification is armed and has not fired
/// is an error. Between a notification and the next `notify`, only the
/// thread that took it should touch the queue, so that one socket's results
/// are handled in order.
///
/// A result from a request made with [`RioFlags::DONT_NOTIFY`] does not fire
/// an armed notification (`wait` goes on waiting, no packet is queued).
///
/// Dropping the queue [closes](Self::close) it.
///
/// ```
/// use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};
/// use std::net::UdpSocket;
/// use std::time::Duration;
///
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let addr = socket.local_addr()?;
/// let cq = CompletionQueue::new(16, Notify::Event)?;
/// let rq = RequestQueue::new(socket, 8, 8, &cq, &cq, 1)?;
/// let buffer = rio::register_buffer(4096)?;
/// rq.receive(RioBuf::new(buffer, 0, 1500), RioFlags::NONE, 42)?;
///
/// cq.notify()?;
/// UdpSocket::bind("127.0.0.1:0")?.send_to(b"ping", addr)?;
/// cq.wait(Some(Duration::from_secs(5)))?;
/// let mut results = [RioResult::default(); 8];
/// assert_eq!(cq.dequeue(&mut results)?, 1);
/// assert_eq!((results[0].request_context, results[0].bytes), (42, 4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`RioFlags::DONT_NOTIFY`]: super::RioFlags::DONT_NOTIFY
pub struct CompletionQueue {
    shared: Arc<CqShared>,
}

/// Counters of a completion queue, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CqStats {
    /// Requests made on this queue.
    pub requests: u64,
    /// Submissions: `io_uring_enter` calls that submitted requests, or on
    /// the epoll backend, requests made without `DEFER` plus commits that
    /// had deferred requests to start.
    pub submits: u64,
    /// `dequeue` calls.
    pub dequeues: u64,
    /// Results dequeued.
    pub results: u64,
    /// Notifications armed.
    pub notifies: u64,
}

/// The counters behind [`CqStats`], updated by the engines.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) submits: AtomicU64,
    pub(super) dequeues: AtomicU64,
    pub(super) results: AtomicU64,
    pub(super) notifies: AtomicU64,
}

/// A queue's size, and the entries request queues have charged to it.
pub(super) struct Capacity {
    pub(super) size: u32,
    pub(super) charged: u32,
}

/// What every completion queue has, whatever engine runs it.
pub(super) struct Common {
    pub(super) capacity: Mutex<Capacity>,
    pub(super) counters: Counters,
}

// One per queue, inside its Arc: the size is paid once, and boxing the big
// variant would add a pointer to follow on every dequeue.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Uring(UringCq),
    Epoll(EpollCq),
}

pub(super) struct CqShared {
    common: Common,
    engine: Engine,
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
            Engine::Uring(e) => {
                e.poll_fired(&s.common) || e.rearm(port_recheck(cq.clone())).is_err()
            }
            Engine::Epoll(_) => true,
        }
    })
}

fn check_size(size: u32) -> Result<(), Error> {
    if size == 0 || size > MAX_SIZE {
        return Err(Error::InvalidArgument(
            "completion queue size must be 1 to 65,536",
        ));
    }
    Ok(())
}

impl CompletionQueue {
    /// Creates a queue for `size` results (`RIOCreateCompletionQueue`),
    /// notified as `notify` says, on the io_uring backend if a ring can be
    /// set up and on the epoll backend otherwise (or as `RINGPORT_BACKEND`
    /// says): [`with_backend`](Self::with_backend) with [`Backend::Auto`].
    ///
    /// `size` is 1 to 65,536. Fails with [`Error::Io`] when the queue's
    /// ring, eventfd, epoll instance or engine thread cannot be set up; the
    /// message says why (io_uring switched off, memory limits).
    pub fn new(size: u32, notify: Notify) -> Result<CompletionQueue, Error> {
        Self::with_backend(size, notify, Backend::Auto)
    }

    /// Creates a queue on the backend asked for; `RINGPORT_BACKEND`
    /// (`io_uring`, `epoll` or `auto`) overrides it for the whole process,
    /// as it does for ports.
    ///
    /// [`Backend::Auto`] takes io_uring when a ring for the queue can be set
    /// up (and the kernel has the operations it needs), and epoll on any
    /// error; [`Backend::IoUring`] fails instead. The backend chosen is
    /// [`backend`](Self::backend). Fails with [`Error::InvalidArgument`] for
    /// a bad size or a bad `RINGPORT_BACKEND`, else as [`new`](Self::new).
    pub fn with_backend(
        size: u32,
        notify: Notify,
        backend: Backend,
    ) -> Result<CompletionQueue, Error> {
        check_size(size)?;
        let engine = match choose(backend, || queue_ring(size), || Ok(()))? {
            Chosen::Uring(ring) => Engine::Uring(UringCq::new(ring, notify)?),
            Chosen::Epoll(()) => Engine::Epoll(EpollCq::new(size, notify)?),
        };
        Ok(CompletionQueue {
            shared: Arc::new(CqShared {
                common: Common {
                    capacity: Mutex::new(Capacity { size, charged: 0 }),
                    counters: Counters::default(),
                },
                engine,
            }),
        })
    }

    pub(super) fn shared(&self) -> &Arc<CqShared> {
        &self.shared
    }

    /// The backend the queue runs on: [`Backend::IoUring`] or
    /// [`Backend::Epoll`], never `Auto`.
    pub fn backend(&self) -> Backend {
        match self.shared.engine {
            Engine::Uring(_) => Backend::IoUring,
            Engine::Epoll(_) => Backend::Epoll,
        }
    }

    /// Takes up to `out.len()` results, oldest first (`RIODequeueCompletion`),
    /// and returns how many it stored; 0 when none is waiting.
    ///
    /// This reads the queue's ring (shared memory) and makes no system call.
    /// Each result ends its request: the slices it used are free again (a
    /// receive buffer can now be [borrowed](super::borrow)) and it no longer
    /// counts against its request queue. Fails with
    /// [`RioError::QueueClosed`] once the queue is closed.
    pub fn dequeue(&self, out: &mut [RioResult]) -> Result<usize, Error> {
        let s = &*self.shared;
        match &s.engine {
            Engine::Uring(e) => e.dequeue(&s.common, out),
            Engine::Epoll(e) => e.dequeue(&s.common, out),
        }
    }

    /// Arms one notification (`RIONotify`): with [`Notify::Event`], the next
    /// [`wait`](Self::wait) returns once a result is (or becomes) waiting;
    /// with [`Notify::port`], one packet is queued on the port then. Fires
    /// at once if results are waiting now.
    ///
    /// Errors: [`RioError::AlreadyArmed`] while an armed notification has
    /// not fired, [`RioError::WrongNotification`] on a polled queue,
    /// [`RioError::QueueClosed`], and the port's error if it is closed.
    pub fn notify(&self) -> Result<(), Error> {
        let s = &*self.shared;
        match &s.engine {
            Engine::Uring(e) => e.notify(&s.common, || port_recheck(Arc::downgrade(&self.shared))),
            Engine::Epoll(e) => e.notify(&s.common),
        }
    }

    /// Waits for the armed event notification to fire, at most `timeout`
    /// (`None`: as long as it takes), and disarms it.
    ///
    /// Returns once a result is waiting that came from a request without
    /// `DONT_NOTIFY`, or at once if results were waiting when
    /// [`notify`](Self::notify) was called. Errors: [`Error::Timeout`],
    /// [`RioError::NotArmed`], [`RioError::WrongNotification`] on a queue
    /// without event notification, [`RioError::QueueClosed`] (also for a
    /// thread waiting when the queue closes).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<(), Error> {
        match &self.shared.engine {
            Engine::Uring(e) => e.wait(&self.shared.common, timeout),
            Engine::Epoll(e) => e.wait(timeout),
        }
    }

    /// Whether a notification is armed and has not fired (as far as the
    /// queue has seen).
    pub fn is_armed(&self) -> bool {
        match &self.shared.engine {
            Engine::Uring(e) => e.is_armed(),
            Engine::Epoll(e) => e.is_armed(),
        }
    }

    /// The eventfd of an event-notified queue, to watch with another poller.
    /// It becomes readable when an armed notification fires, but also, now
    /// and then, when it has not (a `DONT_NOTIFY` result on io_uring, a
    /// close); [`wait`](Self::wait) sorts these out, so call it when the fd
    /// is readable.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        let fd: RawFd = match &self.shared.engine {
            Engine::Uring(e) => e.event_fd()?,
            Engine::Epoll(e) => e.event_fd()?,
        };
        // SAFETY: the eventfd lives as long as the queue's shared state,
        // which outlives the borrow of `self`.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// The queue's size: the most results request queues may have
    /// outstanding on it.
    pub fn size(&self) -> u32 {
        lock(&self.shared.common.capacity).size
    }

    /// Entries charged to it by request queues now.
    pub fn charged(&self) -> u32 {
        lock(&self.shared.common.capacity).charged
    }

    /// Results the ring can hold (the size rounded up to a power of two);
    /// resizing up to this is free. 0 once the queue is closed.
    pub fn ring_capacity(&self) -> u32 {
        match &self.shared.engine {
            Engine::Uring(e) => e.ring_capacity(),
            Engine::Epoll(e) => e.ring_capacity(),
        }
    }

    /// The queue's counters.
    pub fn stats(&self) -> CqStats {
        let c = &self.shared.common.counters;
        CqStats {
            requests: c.requests.load(Ordering::Relaxed),
            submits: c.submits.load(Ordering::Relaxed),
            dequeues: c.dequeues.load(Ordering::Relaxed),
            results: c.results.load(Ordering::Relaxed),
            notifies: c.notifies.load(Ordering::Relaxed),
        }
    }

    /// Changes the queue's size (`RIOResizeCompletionQueue`), keeping every
    /// result waiting and every request in flight.
    ///
    /// Fails with [`RioError::BelowOutstanding`] below the entries charged to
    /// it. Up to [`ring_capacity`](Self::ring_capacity) only the number
    /// changes. Beyond it the queue moves to a bigger ring, which is refused
    /// with [`RioError::Armed`] while a notification is armed and has not
    /// fired. Waiting results are kept in order. On io_uring, requests in
    /// flight are cancelled and started again on the new ring in posting order
    /// (a stream receive cancelled half-filled completes with what it has),
    /// and the move may fail with [`RioError::KernelBusy`] (nothing lost:
    /// the queue stays on its old ring); on epoll, requests in flight are
    /// not touched.
    pub fn resize(&self, new_size: u32) -> Result<(), Error> {
        check_size(new_size)?;
        let s = &*self.shared;
        match &s.engine {
            Engine::Uring(e) => e.resize(&s.common, new_size),
            Engine::Epoll(e) => e.resize(&s.common, new_size),
        }
    }

    /// Closes the queue (`RIOCloseCompletionQueue`): requests in flight are
    /// cancelled, waiting results dropped, and every later call on it, and
    /// every request on a request queue using it, fails with
    /// [`RioError::QueueClosed`]. A thread in [`wait`](Self::wait) returns
    /// that error; an armed port notification fires (its packet's handler
    /// then finds the queue closed). Closing twice is harmless.
    ///
    /// Close returns once nothing can write into the requests' buffers any
    /// more; only then are their slices released (their buffers can be
    /// deregistered). On io_uring that means waiting (up to 2 s) until the
    /// kernel has handed back every request; if it does not let go in time,
    /// the ring and the requests' memory are leaked on purpose and
    /// [`RioError::KernelBusy`] is returned. On epoll it means waiting for
    /// the system call in progress on the queue's requests, if any, and for
    /// the queue's engine thread to end.
    pub fn close(&self) -> Result<(), Error> {
        self.shared.close()
    }
}

impl CqShared {
    fn is_closed(&self) -> bool {
        match &self.engine {
            Engine::Uring(e) => e.is_closed(),
            Engine::Epoll(e) => e.is_closed(),
        }
    }

    /// Charges `n` more outstanding requests to the queue.
    pub(super) fn charge(&self, n: u32) -> Result<(), Error> {
        let mut cap = lock(&self.common.capacity);
        if self.is_closed() {
            return Err(RioError::QueueClosed.into());
        }
        if u64::from(cap.charged) + u64::from(n) > u64::from(cap.size) {
            return Err(RioError::QueueTooSmall {
                size: cap.size,
                charged: cap.charged,
                asked: n,
            }
            .into());
        }
        cap.charged += n;
        Ok(())
    }

    pub(super) fn uncharge(&self, n: u32) {
        let mut cap = lock(&self.common.capacity);
        cap.charged = cap.charged.saturating_sub(n);
    }

    /// Prepares the queue for a request queue's socket `fd`, whose requests
    /// of the kinds marked in `kinds` (receives, sends) complete here. The
    /// epoll engine watches the socket and returns where its waiting
    /// requests queue up; io_uring needs nothing.
    pub(super) fn attach(
        &self,
        fd: RawFd,
        kinds: [bool; 2],
    ) -> Result<Option<Arc<Watched>>, Error> {
        match &self.engine {
            Engine::Uring(_) => Ok(None),
            Engine::Epoll(e) => e.attach(fd, kinds).map(Some),
        }
    }

    /// Undoes [`attach`](Self::attach) (a request queue that could not be
    /// made).
    pub(super) fn detach(&self, w: &Arc<Watched>) {
        if let Engine::Epoll(e) = &self.engine {
            e.detach(w);
        }
    }

    /// Starts `request`, or with `defer` queues it for the next submission.
    pub(super) fn submit(&self, request: Request, defer: bool) -> Result<(), Error> {
        match &self.engine {
            Engine::Uring(e) => e.submit(&self.common, request, defer),
            Engine::Epoll(e) => e.submit(&self.common, request, defer),
        }
    }

    /// Starts every deferred request (one system call on io_uring).
    pub(super) fn commit(&self) -> Result<(), Error> {
        match &self.engine {
            Engine::Uring(e) => e.commit(&self.common),
            Engine::Epoll(e) => e.commit(&self.common),
        }
    }

    /// Cancels every request of `rq` (a request queue being dropped): they
    /// complete with `ECANCELED`.
    pub(super) fn cancel(&self, rq: &RqShared) {
        match &self.engine {
            Engine::Uring(e) => e.cancel(
                rq,
                [RequestKind::Receive, RequestKind::Send].map(|k| std::ptr::eq(&**rq.cq(k), self)),
            ),
            Engine::Epoll(e) => e.cancel(rq),
        }
    }

    fn close(&self) -> Result<(), Error> {
        match &self.engine {
            Engine::Uring(e) => e.close(),
            Engine::Epoll(e) => e.close(),
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        let _ = self.shared.close();
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("backend", &self.backend())
            .field("size", &self.size())
            .field("charged", &self.charged())
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}
