//! A completion queue on epoll as its engine thread shares it: the results
//! waiting in their ring (one producer at a time, one consumer at a time),
//! the deferred requests, the notification's state, and carrying out a
//! socket's waiting requests in order, queueing their results.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::super::buffer::Claim;
use super::super::error::RioError;
use super::super::notify::Notifier;
use super::super::request::Request;
use super::io::{self, WaitingRequest};
use super::poller::{SocketPoller, Watched};
use super::ring::{FinishedRequest, ResultRing};
use crate::sync::lock;
use crate::Error;

/// Notification states.
pub(super) const IDLE: u8 = 0;
pub(super) const ARMED: u8 = 1;
pub(super) const FIRED: u8 = 2;

pub(super) struct Consumer {
    /// `None` once the queue is closed.
    pub(super) ring: Option<Arc<ResultRing>>,
    /// Slices to release after a dequeue (kept to reuse its memory).
    pub(super) claims: Vec<Claim>,
}

pub(super) struct Producer {
    /// `None` once the queue is closed.
    pub(super) ring: Option<Arc<ResultRing>>,
}

/// What the queue shares with its engine thread.
pub(super) struct EpollQueue {
    pub(super) consumer: Mutex<Consumer>,
    pub(super) producer: Mutex<Producer>,
    /// Requests made with `DEFER`, in order, not yet started, with their
    /// sockets.
    pub(super) deferred: Mutex<Vec<(Request, Arc<Watched>)>>,
    /// Requests made and not yet ended (waiting, or their result in the
    /// ring): never more than the ring holds.
    pub(super) live: AtomicUsize,
    /// The ring's capacity (it only grows).
    pub(super) capacity: AtomicUsize,
    /// IDLE, ARMED or FIRED.
    pub(super) state: AtomicU8,
    pub(super) notifier: Notifier,
    pub(super) closed: AtomicBool,
    pub(super) poller: SocketPoller,
}

/// What a run of attempts leaves to do once every lock is released.
#[derive(Default)]
pub(super) struct Leftovers {
    /// An armed notification moved to fired: signal it.
    pub(super) fire: bool,
    /// Requests that ended without a result (the queue closed).
    pub(super) ended: Vec<Request>,
}

impl EpollQueue {
    /// Queues the result of `request`, or ends the request if the queue is
    /// closed; notes in `batch` whether an armed notification must fire.
    pub(super) fn complete(
        &self,
        request: Request,
        status: i32,
        bytes: u32,
        batch: &mut Leftovers,
    ) {
        let result = request.result(status, bytes);
        let quiet = request.quiet;
        {
            let p = lock(&self.producer);
            let pushed = match &p.ring {
                Some(ring) => {
                    // SAFETY: the producer lock is held: this is the only
                    // producer.
                    unsafe { ring.push(FinishedRequest { result, request }) }
                        .map_err(|done| done.request)
                }
                None => Err(request),
            };
            if let Err(request) = pushed {
                // Closed (the ring cannot be full: `live` is bounded by it).
                batch.ended.push(request);
                return;
            }
        }
        if !quiet {
            // Pairs with the fence in `notify`: either `notify` sees this
            // result in the ring, or this sees its ARMED.
            fence(Ordering::SeqCst);
            if self.state.load(Ordering::Relaxed) == ARMED
                && self
                    .state
                    .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                batch.fire = true;
            }
        }
    }

    /// Carries out the requests at the head of `queue` until one must wait.
    /// The caller holds the queue's lock.
    pub(super) fn run(&self, queue: &mut VecDeque<WaitingRequest>, batch: &mut Leftovers) {
        // Datagram receives go in batches: one recvmmsg for up to 64.
        let mut outcomes = [(0, 0); io::BATCH];
        while let Some(n) = io::receive_many(queue, &mut outcomes) {
            for &(status, bytes) in &outcomes[..n] {
                if let Some(p) = queue.pop_front() {
                    self.complete(p.request, status, bytes, batch);
                }
            }
            if n == 0 {
                return;
            }
        }
        while let Some(p) = queue.front_mut() {
            let Some((status, bytes)) = io::attempt(p) else {
                return;
            };
            if let Some(p) = queue.pop_front() {
                self.complete(p.request, status, bytes, batch);
            }
        }
    }

    /// Runs one of `w`'s queues (0: receives, 1: sends): the engine thread's
    /// answer to readiness.
    pub(super) fn run_queue(&self, w: &Watched, kind: usize, batch: &mut Leftovers) {
        let mut queues = lock(&w.queues);
        self.run(&mut queues[kind], batch);
    }

    /// Puts `request` in its socket's queue, and attempts it at once if
    /// nothing waits before it.
    pub(super) fn start(
        &self,
        request: Request,
        w: &Arc<Watched>,
        batch: &mut Leftovers,
    ) -> Result<(), Error> {
        self.enqueue(request, w, batch, true).map(drop)
    }

    /// Puts `request` in its socket's queue. A queue that was empty must be
    /// run (its socket's edge may have been spent while nothing waited):
    /// with `run` that happens here, else the socket and queue are returned
    /// for the caller to run once it has queued more (so that a run of
    /// datagram receives goes out in one `recvmmsg`).
    pub(super) fn enqueue(
        &self,
        request: Request,
        w: &Arc<Watched>,
        batch: &mut Leftovers,
        run: bool,
    ) -> Result<Option<(Arc<Watched>, usize)>, Error> {
        let kind = request.kind.index();
        let mut queues = lock(&w.queues);
        // Checked under the socket's lock: `close` sets `closed` before it
        // empties every socket's queue under that lock.
        if self.closed.load(Ordering::SeqCst) {
            batch.ended.push(request);
            return Err(RioError::QueueClosed.into());
        }
        let queue = &mut queues[kind];
        queue.push_back(WaitingRequest::new(request));
        if queue.len() > 1 {
            return Ok(None);
        }
        if run {
            self.run(queue, batch);
            return Ok(None);
        }
        drop(queues);
        Ok(Some((w.clone(), kind)))
    }

    /// Ends the requests that ended without a result and fires the
    /// notification if it is due. Called with no lock held.
    pub(super) fn finish(&self, batch: &mut Leftovers) {
        if !batch.ended.is_empty() {
            self.live.fetch_sub(batch.ended.len(), Ordering::SeqCst);
            for r in batch.ended.drain(..) {
                r.abandon();
            }
        }
        if std::mem::take(&mut batch.fire) {
            self.fire();
        }
    }

    /// Delivers a notification that has just moved to FIRED.
    pub(super) fn fire(&self) {
        match &self.notifier {
            Notifier::Polled => {}
            Notifier::Event(efd) => efd.wake(),
            // A closed port refuses the packet: no one is left to take it.
            Notifier::Port(target) => {
                let _ = target.post();
            }
        }
    }

    /// Counts one more live request, unless the ring could not hold its
    /// result.
    pub(super) fn reserve(&self) -> bool {
        let before = self.live.fetch_add(1, Ordering::SeqCst);
        if before >= self.capacity.load(Ordering::SeqCst) {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}
