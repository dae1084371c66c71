//! [`CompletionQueue`]: where requests' results arrive, read without a
//! system call, with polled, event or port notification.
//!
//! The public type checks what it is given and hands the rest to the
//! queue's engine through [`engine`](super::engine), which picks it by the
//! port's rule ([`Backend`]): io_uring if a ring can be set up, else epoll;
//! `RINGPORT_BACKEND` forces one.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::charge::MAX_SIZE;
use super::engine::CqShared;
use super::notify::Notify;
use super::request::RioResult;
use crate::{Backend, Error};

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
    /// Multishot receives armed on io_uring: a datagram socket's receives
    /// are published to a provided-buffer ring that one multishot `RECV`
    /// consumes, armed again each time it ends (its ring ran dry, say). 0 on
    /// epoll, with `RINGPORT_RIO_MULTISHOT=0`, or where the kernel lacks
    /// them (before 6.0) and receives go one request at a time.
    pub multishots: u64,
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
        Ok(CompletionQueue {
            shared: Arc::new(CqShared::new(size, notify, backend)?),
        })
    }

    pub(super) fn shared(&self) -> &Arc<CqShared> {
        &self.shared
    }

    /// The backend the queue runs on: [`Backend::IoUring`] or
    /// [`Backend::Epoll`], never `Auto`.
    pub fn backend(&self) -> Backend {
        self.shared.backend()
    }

    /// Takes up to `out.len()` results, oldest first (`RIODequeueCompletion`),
    /// and returns how many it stored; 0 when none is waiting.
    ///
    /// This reads the queue's ring (shared memory) and makes no system call.
    /// Each result ends its request: the slices it used are free again (a
    /// receive buffer can now be [borrowed](super::borrow)) and it no longer
    /// counts against its request queue. Fails with
    /// [`RioError::QueueClosed`](super::RioError::QueueClosed) once the queue is closed.
    pub fn dequeue(&self, out: &mut [RioResult]) -> Result<usize, Error> {
        self.shared.dequeue(out)
    }

    /// Arms one notification (`RIONotify`): with [`Notify::Event`], the next
    /// [`wait`](Self::wait) returns once a result is (or becomes) waiting;
    /// with [`Notify::port`], one packet is queued on the port then. Fires
    /// at once if results are waiting now.
    ///
    /// Errors: [`RioError::AlreadyArmed`](super::RioError::AlreadyArmed) while an armed notification has
    /// not fired, [`RioError::WrongNotification`](super::RioError::WrongNotification) on a polled queue,
    /// [`RioError::QueueClosed`](super::RioError::QueueClosed), and the port's error if it is closed.
    pub fn notify(&self) -> Result<(), Error> {
        self.shared.notify()
    }

    /// Waits for the armed event notification to fire, at most `timeout`
    /// (`None`: as long as it takes), and disarms it.
    ///
    /// Returns once a result is waiting that came from a request without
    /// `DONT_NOTIFY`, or at once if results were waiting when
    /// [`notify`](Self::notify) was called. Errors: [`Error::Timeout`],
    /// [`RioError::NotArmed`](super::RioError::NotArmed), [`RioError::WrongNotification`](super::RioError::WrongNotification) on a queue
    /// without event notification, [`RioError::QueueClosed`](super::RioError::QueueClosed) (also for a
    /// thread waiting when the queue closes).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.shared.wait(timeout)
    }

    /// Whether a notification is armed and has not fired (as far as the
    /// queue has seen).
    pub fn is_armed(&self) -> bool {
        self.shared.is_armed()
    }

    /// The eventfd of an event-notified queue, to watch with another poller.
    /// It becomes readable when an armed notification fires, but also, now
    /// and then, when it has not (a `DONT_NOTIFY` result on io_uring, a
    /// close); [`wait`](Self::wait) sorts these out, so call it when the fd
    /// is readable.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        let fd = self.shared.event_fd()?;
        // SAFETY: the eventfd lives as long as the queue's shared state,
        // which outlives the borrow of `self`.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// The queue's size: the most results request queues may have
    /// outstanding on it.
    pub fn size(&self) -> u32 {
        self.shared.common.capacity.lock().size
    }

    /// Entries charged to it by request queues now.
    pub fn charged(&self) -> u32 {
        self.shared.common.capacity.lock().charged
    }

    /// Results the ring can hold (the size rounded up to a power of two);
    /// resizing up to this is free. 0 once the queue is closed.
    pub fn ring_capacity(&self) -> u32 {
        self.shared.ring_capacity()
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
            multishots: self.shared.multishots(),
        }
    }

    /// Changes the queue's size (`RIOResizeCompletionQueue`), keeping every
    /// result waiting and every request in flight.
    ///
    /// Fails with [`RioError::BelowOutstanding`](super::RioError::BelowOutstanding) below the entries charged to
    /// it. Up to [`ring_capacity`](Self::ring_capacity) only the number
    /// changes. Beyond it the queue moves to a bigger ring, which is refused
    /// with [`RioError::Armed`](super::RioError::Armed) while a notification is armed and has not
    /// fired. Waiting results are kept in order. On io_uring, requests in
    /// flight are cancelled and started again on the new ring in posting order
    /// (a stream receive cancelled half-filled completes with what it has),
    /// and the move may fail with [`RioError::KernelBusy`](super::RioError::KernelBusy) (nothing lost:
    /// the queue stays on its old ring); on epoll, requests in flight are
    /// not touched.
    pub fn resize(&self, new_size: u32) -> Result<(), Error> {
        check_size(new_size)?;
        self.shared.resize(new_size)
    }

    /// Closes the queue (`RIOCloseCompletionQueue`): requests in flight are
    /// cancelled, waiting results dropped, and every later call on it, and
    /// every request on a request queue using it, fails with
    /// [`RioError::QueueClosed`](super::RioError::QueueClosed). A thread in [`wait`](Self::wait) returns
    /// that error; an armed port notification fires (its packet's handler
    /// then finds the queue closed). Closing twice is harmless.
    ///
    /// Close returns once nothing can write into the requests' buffers any
    /// more; only then are their slices released (their buffers can be
    /// deregistered). On io_uring that means waiting (up to 2 s) until the
    /// kernel has handed back every request; if it does not let go in time,
    /// the ring and the requests' memory are leaked on purpose and
    /// [`RioError::KernelBusy`](super::RioError::KernelBusy) is returned. On epoll it means waiting for
    /// the system call in progress on the queue's requests, if any, and for
    /// the queue's engine thread to end.
    pub fn close(&self) -> Result<(), Error> {
        self.shared.close()
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
