//! The epoll engine of a completion queue, for where io_uring is switched
//! off (or `RINGPORT_BACKEND=epoll` asks for it): the same semantics, with
//! readiness turned into completions.
//!
//! - **Results** wait in a ring in user memory ([`ring`]): one producer at a
//!   time (the producer lock), one consumer at a time (the consumer lock,
//!   never taken by the engine thread), so `dequeue` is a few loads and
//!   stores and never a system call.
//! - **Requests** are carried out with non-blocking calls ([`io`]). One not
//!   deferred is attempted at once by the thread making it (as `RIOReceive`
//!   makes a system call) if its socket has nothing waiting, and its result
//!   queued at once if it could be done; otherwise it waits in its socket's
//!   queue ([`Watched`]) for the queue's engine thread ([`thread`]), which
//!   sleeps in `epoll_wait` and carries out the socket's waiting requests in
//!   order when it is ready. One socket's calls, and the queueing of their
//!   results, happen under its queue's lock: results come in the order the
//!   data arrived.
//! - `DEFER` keeps requests in user space, in order, until the next request
//!   without it or a commit starts them all.
//! - **Notification** is fired by the producer: after queueing a result
//!   without `DONT_NOTIFY` it moves an armed notification to fired (one
//!   compare-and-swap decides who fires, so each arm fires once) and signals
//!   the eventfd or posts the port packet. `DONT_NOTIFY` is honoured for
//!   port notification too.
//! - **Close** stops new requests, takes every waiting request out of its
//!   socket's queue (under that queue's lock, so no call on its memory is in
//!   progress), drops waiting results, and joins the engine thread; only
//!   then are the requests' slices released.
//!
//! Lock order: consumer, then deferred, then a socket's queue, then
//! producer, then the capacity; the engine's table alone; the buffer
//! registry's lock last.

mod io;
mod poller;
mod queue;
mod ring;
mod thread;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::poller::SocketPoller;
pub(super) use self::poller::Watched;
use self::queue::{Consumer, EpollQueue, Leftovers, Producer, ARMED, FIRED, IDLE};
use self::ring::ResultRing;
use super::buffer;
use super::charge::CqCommon;
use super::error::RioError;
use super::notify::{wait_slice, Notifier, Notify};
use super::request::{Request, RioResult};
use super::rq_shared::RqShared;
use crate::sync::lock;
use crate::Error;

/// A completion queue run by an epoll engine thread.
pub(super) struct EpollCq {
    inner: Arc<EpollQueue>,
    /// The engine thread, joined when the queue closes.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EpollCq {
    /// A queue for `size` results, notified as `notify` says, with its
    /// epoll instance and engine thread.
    pub(super) fn new(size: u32, notify: Notify) -> Result<EpollCq, Error> {
        let notifier = Notifier::new(notify)?;
        let ring = Arc::new(ResultRing::new(size));
        let inner = Arc::new(EpollQueue {
            capacity: AtomicUsize::new(ring.capacity()),
            consumer: Mutex::new(Consumer {
                ring: Some(ring.clone()),
                claims: Vec::with_capacity(256),
            }),
            producer: Mutex::new(Producer { ring: Some(ring) }),
            deferred: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            state: AtomicU8::new(IDLE),
            notifier,
            closed: AtomicBool::new(false),
            poller: SocketPoller::new()?,
        });
        let thread = thread::spawn(inner.clone())?;
        Ok(EpollCq {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Watches a request queue's socket `fd`, whose requests of the kinds in
    /// `kinds` (receives, sends) complete here.
    pub(super) fn attach(&self, fd: RawFd, kinds: [bool; 2]) -> Result<Arc<Watched>, Error> {
        let mut table = lock(&self.inner.poller.table);
        if self.is_closed() {
            return Err(RioError::QueueClosed.into());
        }
        Ok(self.inner.poller.watch(&mut table, fd, kinds)?)
    }

    /// Stops watching a socket, and cancels its waiting requests: they
    /// complete with `ECANCELED`.
    pub(super) fn detach(&self, w: &Arc<Watched>) {
        let inner = &*self.inner;
        if !inner.poller.unwatch(w) {
            return;
        }
        let mut batch = Leftovers::default();
        {
            let mut queues = lock(&w.queues);
            for queue in queues.iter_mut() {
                for p in queue.drain(..) {
                    inner.complete(p.request, libc::ECANCELED, 0, &mut batch);
                }
            }
        }
        inner.finish(&mut batch);
    }

    /// Cancels every request of `rq` (its request queue is being dropped),
    /// whose socket's entries for the kinds that complete here are
    /// `watched`: deferred ones and waiting ones complete with `ECANCELED`.
    pub(super) fn cancel(&self, rq: &RqShared, watched: [Option<&Arc<Watched>>; 2]) {
        let inner = &*self.inner;
        let mut batch = Leftovers::default();
        {
            let mut deferred = lock(&inner.deferred);
            let mut i = 0;
            while i < deferred.len() {
                if std::ptr::eq(deferred[i].0.rq.as_ptr(), rq) {
                    let (r, _) = deferred.remove(i);
                    inner.complete(r, libc::ECANCELED, 0, &mut batch);
                } else {
                    i += 1;
                }
            }
        }
        inner.finish(&mut batch);
        for w in watched.into_iter().flatten() {
            self.detach(w);
        }
    }

    /// See [`CompletionQueue::dequeue`](crate::rio::CompletionQueue::dequeue).
    pub(super) fn dequeue(&self, common: &CqCommon, out: &mut [RioResult]) -> Result<usize, Error> {
        let mut guard = lock(&self.inner.consumer);
        let Consumer { ring, claims } = &mut *guard;
        let ring = ring.as_ref().ok_or(RioError::QueueClosed)?;
        common.counters.dequeues.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the consumer lock is held: this is the ring's only consumer.
        let n = unsafe {
            ring.pop_into(out.len(), |i, done| {
                out[i] = done.result;
                done.request.end(claims);
            })
        };
        if n == 0 {
            return Ok(0);
        }
        buffer::release(claims);
        claims.clear();
        self.inner.live.fetch_sub(n, Ordering::SeqCst);
        common
            .counters
            .results
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Starts `request`, or with `defer` keeps it for the next submission.
    pub(super) fn submit(
        &self,
        common: &CqCommon,
        request: Request,
        w: &Arc<Watched>,
        defer: bool,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        if self.is_closed() {
            request.abandon();
            return Err(RioError::QueueClosed.into());
        }
        if !inner.reserve() {
            request.abandon();
            return Err(common.capacity.full());
        }
        common.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut batch = Leftovers::default();
        let r = if defer {
            let mut deferred = lock(&inner.deferred);
            // Checked under the lock: `close` sets `closed`, then empties
            // the deferred list under it.
            if self.is_closed() {
                batch.ended.push(request);
                Err(RioError::QueueClosed.into())
            } else {
                deferred.push((request, w.clone()));
                Ok(())
            }
        } else {
            common.counters.submits.fetch_add(1, Ordering::Relaxed);
            let mut deferred = lock(&inner.deferred);
            if deferred.is_empty() {
                drop(deferred);
                inner.start(request, w, &mut batch)
            } else {
                // Deferred requests go first, in order.
                let mut r = Ok(());
                for (d, dw) in deferred.drain(..) {
                    if let Err(e) = inner.start(d, &dw, &mut batch) {
                        r = Err(e);
                    }
                }
                inner.start(request, w, &mut batch).and(r)
            }
        };
        inner.finish(&mut batch);
        r
    }

    /// Starts every deferred request, in order.
    pub(super) fn commit(&self, common: &CqCommon) -> Result<(), Error> {
        let inner = &*self.inner;
        if self.is_closed() {
            return Err(RioError::QueueClosed.into());
        }
        let mut batch = Leftovers::default();
        let mut r = Ok(());
        {
            let mut deferred = lock(&inner.deferred);
            if !deferred.is_empty() {
                common.counters.submits.fetch_add(1, Ordering::Relaxed);
            }
            // A queue that was empty runs once the requests after it that
            // join it have joined (a request queue's receives, usually),
            // so that they can go out together.
            let mut to_run: Option<(Arc<Watched>, usize)> = None;
            for (d, dw) in deferred.drain(..) {
                match inner.enqueue(d, &dw, &mut batch, false) {
                    Ok(Some(q)) => {
                        if let Some((w, kind)) = to_run.replace(q) {
                            inner.run_queue(&w, kind, &mut batch);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => r = Err(e),
                }
            }
            if let Some((w, kind)) = to_run {
                inner.run_queue(&w, kind, &mut batch);
            }
        }
        inner.finish(&mut batch);
        r
    }

    /// See [`CompletionQueue::notify`](crate::rio::CompletionQueue::notify).
    pub(super) fn notify(&self, common: &CqCommon) -> Result<(), Error> {
        let inner = &*self.inner;
        let fired = {
            let c = lock(&inner.consumer);
            let ring = c.ring.as_ref().ok_or(RioError::QueueClosed)?;
            if let Notifier::Polled = inner.notifier {
                return Err(RioError::WrongNotification.into());
            }
            if inner.state.load(Ordering::SeqCst) == ARMED {
                return Err(RioError::AlreadyArmed.into());
            }
            inner.state.store(ARMED, Ordering::SeqCst);
            common.counters.notifies.fetch_add(1, Ordering::Relaxed);
            // Pairs with the fence in `Inner::complete`: either this sees a
            // result the producer queued, or the producer sees ARMED.
            fence(Ordering::SeqCst);
            !ring.is_empty()
                && inner
                    .state
                    .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        };
        if fired {
            match &inner.notifier {
                Notifier::Port(target) => {
                    if let Err(e) = target.post() {
                        inner.state.store(IDLE, Ordering::SeqCst);
                        return Err(e);
                    }
                }
                _ => inner.fire(),
            }
        }
        Ok(())
    }

    /// See [`CompletionQueue::wait`](crate::rio::CompletionQueue::wait).
    pub(super) fn wait(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let inner = &*self.inner;
        let Notifier::Event(efd) = &inner.notifier else {
            return Err(RioError::WrongNotification.into());
        };
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if self.is_closed() {
                return Err(RioError::QueueClosed.into());
            }
            match inner.state.load(Ordering::SeqCst) {
                IDLE => return Err(RioError::NotArmed.into()),
                FIRED => {
                    efd.reset();
                    if inner
                        .state
                        .compare_exchange(FIRED, IDLE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Ok(());
                    }
                    continue;
                }
                _ => {}
            }
            let slice = wait_slice(deadline)?;
            if efd.wait(slice) {
                // A stale signal (a fire already taken) must not make this
                // spin; the state, not the eventfd, says what happened.
                efd.reset();
            }
        }
    }

    pub(super) fn is_armed(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) == ARMED
    }

    pub(super) fn event_fd(&self) -> Option<RawFd> {
        match &self.inner.notifier {
            Notifier::Event(efd) => Some(efd.as_raw_fd()),
            _ => None,
        }
    }

    pub(super) fn ring_capacity(&self) -> u32 {
        lock(&self.inner.consumer)
            .ring
            .as_ref()
            .map_or(0, |r| r.capacity() as u32)
    }

    /// See [`CompletionQueue::resize`](crate::rio::CompletionQueue::resize):
    /// beyond the ring's capacity, waiting results move to a bigger ring;
    /// requests waiting for readiness are not touched.
    pub(super) fn resize(&self, common: &CqCommon, new_size: u32) -> Result<(), Error> {
        let inner = &*self.inner;
        let mut consumer = lock(&inner.consumer);
        let old = consumer.ring.clone().ok_or(RioError::QueueClosed)?;
        if common.capacity.resize_within(new_size, old.capacity())? {
            return Ok(());
        }
        if inner.state.load(Ordering::SeqCst) == ARMED {
            return Err(RioError::Armed.into());
        }
        let new = Arc::new(ResultRing::new(new_size));
        let mut producer = lock(&inner.producer);
        // SAFETY: both locks are held: no one else pushes to or pops from
        // either ring.
        while let Some(done) = unsafe { old.pop() } {
            // SAFETY: as above. The new ring is bigger: it has room.
            if let Err(done) = unsafe { new.push(done) } {
                done.request.abandon();
            }
        }
        inner.capacity.store(new.capacity(), Ordering::SeqCst);
        producer.ring = Some(new.clone());
        consumer.ring = Some(new);
        drop(producer);
        common.capacity.lock().size = new_size;
        Ok(())
    }

    /// See [`CompletionQueue::close`](crate::rio::CompletionQueue::close).
    pub(super) fn close(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut ended = Vec::new();
        {
            let mut consumer = lock(&inner.consumer);
            ended.extend(lock(&inner.deferred).drain(..).map(|(r, _)| r));
            let watched: Vec<Arc<Watched>> =
                lock(&inner.poller.table).drain().map(|(_, w)| w).collect();
            for w in &watched {
                // Taking the lock waits for a call in progress on the
                // socket; after it, nothing is attempted there again.
                let mut queues = lock(&w.queues);
                for queue in queues.iter_mut() {
                    ended.extend(queue.drain(..).map(|p| p.request));
                }
            }
            // No result is queued after this.
            lock(&inner.producer).ring = None;
            if let Some(ring) = consumer.ring.take() {
                // SAFETY: the consumer lock is held, and the producer side
                // has let go of the ring.
                while let Some(done) = unsafe { ring.pop() } {
                    ended.push(done.request);
                }
            }
        }
        inner.poller.stop();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            // (Never join from the engine thread itself.)
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        inner.live.fetch_sub(ended.len(), Ordering::SeqCst);
        for r in ended {
            r.abandon();
        }
        match &inner.notifier {
            Notifier::Port(target) => {
                // An armed notification fires: its handler finds the queue
                // closed.
                if inner
                    .state
                    .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = target.post();
                }
            }
            Notifier::Event(efd) => efd.wake(),
            Notifier::Polled => {}
        }
        Ok(())
    }
}

impl Drop for EpollCq {
    fn drop(&mut self) {
        // Normally closed already (the public queue closes on drop); the
        // engine thread must not outlive the queue either way.
        let _ = self.close();
    }
}
