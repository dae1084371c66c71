//! [`CompletionQueue`]: where requests' results arrive, read without a
//! system call, with polled, event or port notification.
//!
//! Each queue owns an io_uring ring. Request queues submit to it (under the
//! submission lock), the owner reads its CQ ring (under the consumer lock,
//! uncontended when one thread dequeues, so a dequeue is a few loads and
//! stores on shared memory), and a slot table keeps each request and its
//! kernel-visible memory until its result is dequeued.
//!
//! Results the queue has taken out of the ring but not yet handed over (when
//! `wait` looks for a result that may notify, or a resize moves to a bigger
//! ring) wait in `carry`, which is always read before the ring.
//!
//! Lock order: consumer, then submission, then slots, then capacity; the
//! buffer registry's lock is taken last, alone or under slots.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::cqueue;

use super::buffer::{self, Claim};
use super::notify::{EventFd, Notify, PortTarget};
use super::request::{is_quiet, Request, Slots, NOP};
use super::ring::{Ring, MAX_ENTRIES};
use super::{RioError, RioResult};
use crate::sync::lock;
use crate::Error;

/// How long closing or resizing waits for the kernel to hand back requests
/// it was asked to cancel.
const KERNEL_WAIT: Duration = Duration::from_secs(2);

/// The longest an event wait sleeps before looking at the ring itself, in
/// case a wake-up was missed between arming and sleeping.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// A completion queue (`RIO_CQ`): requests' results, read with
/// [`dequeue`](Self::dequeue) straight from the shared memory of the
/// queue's own io_uring ring, with no system call.
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
/// an armed event notification (`wait` goes on waiting). With port
/// notification it cannot be kept from firing: the port watches the ring,
/// and a result is a result (see the module docs).
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
    /// `io_uring_enter` calls that submitted them.
    pub submits: u64,
    /// `dequeue` calls.
    pub dequeues: u64,
    /// Results dequeued.
    pub results: u64,
    /// Notifications armed.
    pub notifies: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    submits: AtomicU64,
    dequeues: AtomicU64,
    results: AtomicU64,
    notifies: AtomicU64,
}

enum Notifier {
    Polled,
    Event(EventFd),
    Port(PortTarget),
}

/// The submission side.
struct Submission {
    ring: Option<Arc<Ring>>,
}

/// The consumer side.
struct Consumer {
    ring: Option<Arc<Ring>>,
    /// Completions taken from the ring (or an old ring), oldest first.
    carry: VecDeque<cqueue::Entry>,
    /// Slices to release after a dequeue (kept to reuse its memory).
    claims: Vec<Claim>,
    armed: bool,
    fired: bool,
    /// Counts the rings the queue has had (a resize may move it to another).
    generation: u64,
}

struct Capacity {
    size: u32,
    charged: u32,
}

pub(super) struct CqShared {
    submission: Mutex<Submission>,
    consumer: Mutex<Consumer>,
    slots: Mutex<Slots>,
    capacity: Mutex<Capacity>,
    notifier: Notifier,
    closed: AtomicBool,
    counters: Counters,
}

/// Moves every completion in `ring` into `carry` (NOPs dropped) and says
/// whether `carry` now holds one that may notify.
///
/// # Safety
/// The caller holds the consumer lock.
unsafe fn absorb(ring: &Ring, carry: &mut VecDeque<cqueue::Entry>) -> bool {
    // SAFETY: the caller holds the consumer lock.
    let cq = unsafe { ring.completions() };
    carry.extend(cq.filter(|e| e.user_data() != NOP));
    carry.iter().any(|e| !is_quiet(e.user_data()))
}

/// Whether results are waiting in `ring` or `carry`.
///
/// # Safety
/// The caller holds the consumer lock.
unsafe fn waiting(ring: &Ring, carry: &VecDeque<cqueue::Entry>) -> bool {
    // SAFETY: the caller holds the consumer lock.
    !carry.is_empty() || !unsafe { ring.completions() }.is_empty()
}

impl CompletionQueue {
    /// Creates a queue for `size` results (`RIOCreateCompletionQueue`), with
    /// its own io_uring ring, notified as `notify` says.
    ///
    /// `size` is 1 to 65,536. Fails with [`Error::Io`] when the ring (or the
    /// eventfd) cannot be set up; the message says why (io_uring switched
    /// off, memory limits).
    pub fn new(size: u32, notify: Notify) -> Result<CompletionQueue, Error> {
        if size == 0 || size > MAX_ENTRIES {
            return Err(Error::InvalidArgument(
                "completion queue size must be 1 to 65,536",
            ));
        }
        let ring = Ring::new(size)?;
        let notifier = match notify {
            Notify::Polled => Notifier::Polled,
            Notify::Port(target) => Notifier::Port(target),
            Notify::Event => {
                let efd = EventFd::new()?;
                ring.register_eventfd(efd.as_raw_fd())?;
                // SAFETY: no one else can see the ring yet, so this thread
                // is its only consumer.
                unsafe { ring.set_eventfd(false) };
                Notifier::Event(efd)
            }
        };
        let cap = ring.capacity();
        let ring = Arc::new(ring);
        Ok(CompletionQueue {
            shared: Arc::new(CqShared {
                submission: Mutex::new(Submission {
                    ring: Some(ring.clone()),
                }),
                consumer: Mutex::new(Consumer {
                    ring: Some(ring),
                    carry: VecDeque::with_capacity(cap as usize),
                    claims: Vec::with_capacity(256),
                    armed: false,
                    fired: false,
                    generation: 0,
                }),
                slots: Mutex::new(Slots::new(cap)),
                capacity: Mutex::new(Capacity { size, charged: 0 }),
                notifier,
                closed: AtomicBool::new(false),
                counters: Counters::default(),
            }),
        })
    }

    pub(super) fn shared(&self) -> &Arc<CqShared> {
        &self.shared
    }

    /// Takes up to `out.len()` results, oldest first (`RIODequeueCompletion`),
    /// and returns how many it stored; 0 when none is waiting.
    ///
    /// This reads the ring's shared memory and makes no system call. Each
    /// result ends its request: the slices it used are free again (a receive
    /// buffer can now be [borrowed](super::borrow)) and it no longer counts
    /// against its request queue. Fails with [`RioError::QueueClosed`] once
    /// the queue is closed.
    pub fn dequeue(&self, out: &mut [RioResult]) -> Result<usize, Error> {
        let s = &*self.shared;
        let mut guard = lock(&s.consumer);
        let Consumer {
            ring,
            carry,
            claims,
            armed,
            fired,
            ..
        } = &mut *guard;
        let ring = ring.as_ref().ok_or(RioError::QueueClosed)?;
        s.counters.dequeues.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the consumer lock is held for the view's life.
        let mut cq = unsafe { ring.completions() };
        if out.is_empty() || (carry.is_empty() && cq.is_empty()) {
            return Ok(0);
        }
        let port = matches!(s.notifier, Notifier::Port(_));
        let mut slots = lock(&s.slots);
        let mut n = 0;
        while n < out.len() {
            let Some(e) = carry.pop_front().or_else(|| cq.next()) else {
                break;
            };
            let ud = e.user_data();
            if ud == NOP {
                continue;
            }
            if *armed && (port || !is_quiet(ud)) {
                // The armed notification has fired (or is firing) for this.
                *fired = true;
            }
            if let Some(r) = slots.complete(ud, e.result(), claims) {
                out[n] = r;
                n += 1;
            }
        }
        drop(cq);
        drop(slots);
        buffer::release(claims);
        claims.clear();
        s.counters.results.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
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
        let mut guard = lock(&s.consumer);
        let c = &mut *guard;
        let ring = c.ring.clone().ok_or(RioError::QueueClosed)?;
        match &s.notifier {
            Notifier::Polled => Err(RioError::WrongNotification.into()),
            Notifier::Event(efd) => {
                if c.armed && !c.fired {
                    // SAFETY: the consumer lock is held.
                    if unsafe { absorb(&ring, &mut c.carry) } {
                        c.fired = true;
                    } else {
                        return Err(RioError::AlreadyArmed.into());
                    }
                }
                c.armed = true;
                c.fired = false;
                s.counters.notifies.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the consumer lock is held.
                if unsafe { waiting(&ring, &c.carry) } {
                    c.fired = true;
                    efd.signal();
                    return Ok(());
                }
                // SAFETY: the consumer lock is held.
                unsafe { ring.set_eventfd(true) };
                // Pairs with the kernel's barrier between publishing a CQE
                // and reading the flag: either it sees the flag clear, or we
                // see its CQE here.
                fence(Ordering::SeqCst);
                // SAFETY: the consumer lock is held.
                if unsafe { waiting(&ring, &c.carry) } {
                    // SAFETY: the consumer lock is held.
                    unsafe { ring.set_eventfd(false) };
                    c.fired = true;
                    efd.signal();
                }
                Ok(())
            }
            Notifier::Port(target) => {
                // SAFETY: the consumer lock is held.
                let results = unsafe { waiting(&ring, &c.carry) };
                if c.armed && !c.fired && !results {
                    return Err(RioError::AlreadyArmed.into());
                }
                // SAFETY: the consumer lock is held.
                let ring_empty = unsafe { ring.completions() }.is_empty();
                if !c.carry.is_empty() && ring_empty {
                    // Results wait in carry, where the port's poll of the
                    // ring cannot see them: a NOP makes the ring readable.
                    s.nop()?;
                }
                target.arm(ring.as_raw_fd(), c.generation)?;
                c.armed = true;
                c.fired = results;
                s.counters.notifies.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
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
        let s = &*self.shared;
        let Notifier::Event(efd) = &s.notifier else {
            return Err(RioError::WrongNotification.into());
        };
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            {
                let mut guard = lock(&s.consumer);
                let c = &mut *guard;
                let ring = c.ring.clone().ok_or(RioError::QueueClosed)?;
                if !c.armed {
                    return Err(RioError::NotArmed.into());
                }
                // SAFETY: the consumer lock is held.
                if !c.fired && unsafe { absorb(&ring, &mut c.carry) } {
                    c.fired = true;
                }
                if c.fired {
                    // SAFETY: the consumer lock is held.
                    unsafe { ring.set_eventfd(false) };
                    efd.drain();
                    c.armed = false;
                    c.fired = false;
                    return Ok(());
                }
            }
            let slice = match deadline {
                None => WAIT_SLICE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout);
                    }
                    left.min(WAIT_SLICE)
                }
            };
            if efd.wait(slice) {
                efd.drain();
            }
        }
    }

    /// Whether a notification is armed and has not fired (as far as the
    /// queue has seen).
    pub fn is_armed(&self) -> bool {
        let c = lock(&self.shared.consumer);
        c.armed && !c.fired
    }

    /// The eventfd of an event-notified queue, to watch with another poller.
    /// It becomes readable when an armed notification fires, but also, now
    /// and then, when it has not (a `DONT_NOTIFY` result); [`wait`](Self::wait)
    /// sorts these out, so call it when the fd is readable.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.shared.notifier {
            Notifier::Event(efd) => {
                // SAFETY: the eventfd lives as long as the queue's shared
                // state, which outlives the borrow of `self`.
                Some(unsafe { BorrowedFd::borrow_raw(efd.as_raw_fd()) })
            }
            _ => None,
        }
    }

    /// The queue's size: the most results request queues may have
    /// outstanding on it.
    pub fn size(&self) -> u32 {
        lock(&self.shared.capacity).size
    }

    /// Entries charged to it by request queues now.
    pub fn charged(&self) -> u32 {
        lock(&self.shared.capacity).charged
    }

    /// Results the ring can hold (the size rounded up to a power of two);
    /// resizing up to this is free.
    pub fn ring_capacity(&self) -> u32 {
        lock(&self.shared.consumer)
            .ring
            .as_ref()
            .map_or(0, |r| r.capacity())
    }

    /// The queue's counters.
    pub fn stats(&self) -> CqStats {
        let c = &self.shared.counters;
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
    /// changes. Beyond it the queue moves to a bigger ring: waiting results
    /// are kept in order, and requests in flight are cancelled and started
    /// again on the new ring in their order (a stream receive cancelled
    /// half-filled completes with what it has). That move is refused with
    /// [`RioError::Armed`] while a notification is armed and has not fired,
    /// and may fail with [`RioError::KernelBusy`] (nothing lost: the queue
    /// stays on its old ring).
    pub fn resize(&self, new_size: u32) -> Result<(), Error> {
        if new_size == 0 || new_size > MAX_ENTRIES {
            return Err(Error::InvalidArgument(
                "completion queue size must be 1 to 65,536",
            ));
        }
        let s = &*self.shared;
        let mut consumer = lock(&s.consumer);
        let mut submission = lock(&s.submission);
        let old = submission.ring.clone().ok_or(RioError::QueueClosed)?;
        {
            let mut cap = lock(&s.capacity);
            if new_size < cap.charged {
                return Err(RioError::BelowOutstanding {
                    in_use: cap.charged,
                    asked: new_size,
                }
                .into());
            }
            if new_size <= old.capacity() {
                cap.size = new_size;
                return Ok(());
            }
        }
        if consumer.armed && !consumer.fired {
            return Err(RioError::Armed.into());
        }
        let new = Ring::new(new_size)?;
        if let Notifier::Event(efd) = &s.notifier {
            new.register_eventfd(efd.as_raw_fd())?;
            // SAFETY: the new ring is not shared yet; we hold the consumer lock.
            unsafe { new.set_eventfd(false) };
        }
        let new = Arc::new(new);
        s.migrate(&old, &new, &mut consumer.carry)?;
        submission.ring = Some(new.clone());
        consumer.ring = Some(new);
        consumer.generation += 1;
        lock(&s.capacity).size = new_size;
        Ok(())
    }

    /// Closes the queue (`RIOCloseCompletionQueue`): requests in flight are
    /// cancelled, waiting results dropped, and every later call on it, and
    /// every request on a request queue using it, fails with
    /// [`RioError::QueueClosed`]. A thread in [`wait`](Self::wait) returns
    /// that error; an armed port notification fires (its packet's handler
    /// then finds the queue closed). Closing twice is harmless.
    ///
    /// The kernel may still be writing into the requests' buffers when it is
    /// asked to cancel them, so close waits (up to 2 s) until it has handed
    /// back every one; only then are their slices released (their buffers
    /// can be deregistered) and the ring freed. If the kernel does not let
    /// go in time, the ring and the requests' memory are leaked on purpose
    /// and [`RioError::KernelBusy`] is returned.
    pub fn close(&self) -> Result<(), Error> {
        self.shared.close()
    }
}

impl CqShared {
    /// Charges `n` more outstanding requests to the queue.
    pub(super) fn charge(&self, n: u32) -> Result<(), Error> {
        let mut cap = lock(&self.capacity);
        if self.closed.load(Ordering::SeqCst) {
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
        let mut cap = lock(&self.capacity);
        cap.charged = cap.charged.saturating_sub(n);
    }

    /// Queues `request` on the ring, and submits unless `defer`.
    ///
    /// If the submitting `io_uring_enter` fails, the error is returned but
    /// the request stays queued, as if deferred: the next submission takes it.
    pub(super) fn submit(&self, request: Request, defer: bool) -> Result<(), Error> {
        let sub = lock(&self.submission);
        let Some(ring) = sub.ring.as_ref() else {
            request.abandon();
            return Err(RioError::QueueClosed.into());
        };
        let inserted = lock(&self.slots).insert(request);
        let (user_data, entry) = match inserted {
            Some(x) => x,
            None => {
                // Cannot happen while charges are honoured; refuse rather
                // than overflow.
                let cap = lock(&self.capacity);
                return Err(RioError::QueueTooSmall {
                    size: cap.size,
                    charged: cap.charged,
                    asked: 1,
                }
                .into());
            }
        };
        // SAFETY: the submission lock is held. The entry points at
        // registered memory the request has claimed (released only once its
        // completion is reaped) and at its slot's boxed scratch memory (kept
        // as long as the table, which outlives every reaped completion).
        if let Err(e) = unsafe { ring.push(&entry) } {
            if let Some(r) = lock(&self.slots).abandon(user_data) {
                r.abandon();
            }
            return Err(e.into());
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if !defer {
            self.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        Ok(())
    }

    /// Submits every deferred request in one `io_uring_enter`.
    pub(super) fn commit(&self) -> Result<(), Error> {
        let sub = lock(&self.submission);
        let ring = sub.ring.as_ref().ok_or(RioError::QueueClosed)?;
        // SAFETY: the submission lock is held.
        if unsafe { ring.queued() } > 0 {
            self.counters.submits.fetch_add(1, Ordering::Relaxed);
            ring.submit()?;
        }
        Ok(())
    }

    /// Cancels every request on `fd` (a request queue being dropped).
    pub(super) fn cancel_fd(&self, fd: i32) {
        let sub = lock(&self.submission);
        if let Some(ring) = sub.ring.as_ref() {
            // Deferred requests must reach the kernel to be cancelled.
            let _ = ring.submit();
            let _ = ring.cancel_fd(fd, Instant::now() + KERNEL_WAIT);
        }
    }

    /// Submits a NOP, whose completion makes the ring readable.
    fn nop(&self) -> Result<(), Error> {
        let sub = lock(&self.submission);
        let ring = sub.ring.as_ref().ok_or(RioError::QueueClosed)?;
        let nop = io_uring::opcode::Nop::new().build().user_data(NOP);
        // SAFETY: the submission lock is held; a NOP points at no memory.
        unsafe { ring.push(&nop)? };
        ring.submit()?;
        Ok(())
    }

    /// Moves every request from `old` to `new`: completions waiting in `old`
    /// go to `carry`, requests in flight are cancelled, and those the
    /// cancellation caught are started again on `new` in submission order.
    /// The caller holds the consumer and submission locks.
    fn migrate(
        &self,
        old: &Ring,
        new: &Ring,
        carry: &mut VecDeque<cqueue::Entry>,
    ) -> Result<(), Error> {
        let _ = old.submit();
        let mut slots = lock(&self.slots);
        // SAFETY: the caller holds the consumer lock.
        unsafe { absorb(old, carry) };
        let mut in_kernel = slots.live().saturating_sub(carry.len());
        let deadline = Instant::now() + KERNEL_WAIT;
        let mut again = Vec::new();
        if in_kernel > 0 {
            let _ = old.cancel_all(deadline);
        }
        while in_kernel > 0 {
            // SAFETY: the caller holds the consumer lock.
            for e in unsafe { old.completions() } {
                let ud = e.user_data();
                if ud == NOP {
                    continue;
                }
                in_kernel -= 1;
                match slots.resubmittable(ud) {
                    Some(seq) if e.result() == -libc::ECANCELED => again.push((seq, ud)),
                    _ => carry.push_back(e),
                }
            }
            if in_kernel == 0 || Instant::now() >= deadline {
                break;
            }
            old.wait(deadline.min(Instant::now() + Duration::from_millis(50)));
        }
        again.sort_unstable();
        let target = if in_kernel == 0 { new } else { old };
        if in_kernel == 0 {
            slots.grow(new.capacity());
            carry.reserve(new.capacity() as usize);
        }
        for (_, ud) in again {
            if let Some(entry) = slots.rebuild(ud) {
                // SAFETY: the caller holds the submission lock; the entry
                // points at memory its request still owns, as in `submit`.
                unsafe { target.push(&entry)? };
            }
        }
        target.submit()?;
        if in_kernel > 0 {
            return Err(RioError::KernelBusy {
                outstanding: in_kernel,
            }
            .into());
        }
        Ok(())
    }

    fn close(&self) -> Result<(), Error> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut consumer = lock(&self.consumer);
        let mut submission = lock(&self.submission);
        consumer.ring = None;
        let Some(ring) = submission.ring.take() else {
            return Ok(());
        };
        // Deferred requests go to the kernel, to be cancelled with the rest.
        let _ = ring.submit();
        if let Notifier::Port(_) = self.notifier {
            if consumer.armed && !consumer.fired {
                // A completion makes the port's poll fire (and let go of the ring).
                let nop = io_uring::opcode::Nop::new().build().user_data(NOP);
                // SAFETY: the submission lock is held; a NOP points at no memory.
                if unsafe { ring.push(&nop) }.is_ok() {
                    let _ = ring.submit();
                }
            }
        }
        let deadline = Instant::now() + KERNEL_WAIT;
        let _ = ring.cancel_all(deadline);
        let mut slots = lock(&self.slots);
        let c = &mut *consumer;
        // Results are dropped: completing them ends their requests.
        for e in c.carry.drain(..) {
            slots.complete(e.user_data(), e.result(), &mut c.claims);
        }
        loop {
            // SAFETY: the consumer lock is held.
            for e in unsafe { ring.completions() } {
                slots.complete(e.user_data(), e.result(), &mut c.claims);
            }
            if slots.live() == 0 || Instant::now() >= deadline {
                break;
            }
            ring.wait(deadline.min(Instant::now() + Duration::from_millis(50)));
        }
        buffer::release(&c.claims);
        c.claims.clear();
        let outstanding = slots.live();
        if outstanding > 0 {
            // The kernel may still write through pointers in these requests:
            // keep their memory (and the ring) forever rather than free it.
            std::mem::forget(std::mem::replace(&mut *slots, Slots::new(0)));
            std::mem::forget(ring);
        }
        drop(slots);
        drop(submission);
        drop(consumer);
        if let Notifier::Event(efd) = &self.notifier {
            efd.signal();
        }
        if outstanding > 0 {
            return Err(RioError::KernelBusy { outstanding }.into());
        }
        Ok(())
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
            .field("size", &self.size())
            .field("charged", &self.charged())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish()
    }
}
