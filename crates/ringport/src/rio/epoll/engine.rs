//! The epoll engine's thread: it sleeps in `epoll_wait` on the sockets of
//! the completion queue's request queues and, when one is ready, carries out
//! its waiting requests in order, queueing their results.
//!
//! Each socket is registered once, edge-triggered (`EPOLLET`), when its
//! request queue is made, under a token that names its [`Watched`] entry
//! (tokens are never reused, so a late event for a socket that has gone
//! finds nothing). Edge-triggering needs one rule to lose nothing: a queue
//! that goes from empty to non-empty is attempted at once by whoever filled
//! it (see `Inner::start`), since the edge for data already there may have
//! been spent while nothing waited; after that, a request stays queued only
//! after a call said `EAGAIN`, and the next arrival raises a new edge.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::super::notify::EventFd;
use super::io::Pending;
use super::{Batch, Inner};
use crate::sync::lock;

/// epoll `data` of the engine's wake eventfd.
const WAKE: u64 = u64::MAX;

/// Tokens of watched sockets, unique in the process.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// One socket watched by one completion queue's engine: the requests
/// waiting on it, one queue per kind (receives, sends), in request order.
pub(in crate::rio) struct Watched {
    pub(super) token: u64,
    pub(super) fd: RawFd,
    /// Requests waiting for readiness. The lock is held across each
    /// attempt and the queueing of its result, so one socket's results are
    /// queued in the order its calls were made.
    pub(super) queues: Mutex<[VecDeque<Pending>; 2]>,
}

/// The epoll instance of one completion queue's engine, and how to stop it.
pub(super) struct Poller {
    epoll: OwnedFd,
    wake: EventFd,
    stop: AtomicBool,
    /// The sockets watched, by token.
    pub(super) table: Mutex<HashMap<u64, Arc<Watched>>>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    pub(super) fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked
        // before it is owned.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = EventFd::new()?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE,
        };
        // SAFETY: valid epoll and eventfd descriptors and a live event.
        cvt(unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                wake.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(Poller {
            epoll,
            wake,
            stop: AtomicBool::new(false),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Watches `fd` for the kinds of requests in `kinds` (receives, sends).
    /// The caller holds the table's lock (passed in) and has checked that the
    /// queue is open.
    pub(super) fn watch(
        &self,
        table: &mut HashMap<u64, Arc<Watched>>,
        fd: RawFd,
        kinds: [bool; 2],
    ) -> io::Result<Arc<Watched>> {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let mut events = libc::EPOLLET as u32;
        if kinds[0] {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if kinds[1] {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid descriptors (the request queue owns `fd`) and a live
        // event.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        let w = Arc::new(Watched {
            token,
            fd,
            queues: Mutex::new([VecDeque::new(), VecDeque::new()]),
        });
        table.insert(token, w.clone());
        Ok(w)
    }

    /// Stops watching `w`'s socket; true if it was watched here.
    pub(super) fn unwatch(&self, w: &Arc<Watched>) -> bool {
        let mut table = lock(&self.table);
        match table.get(&w.token) {
            Some(found) if Arc::ptr_eq(found, w) => {
                table.remove(&w.token);
                // SAFETY: valid descriptors (the socket stays open while its
                // request queue's shared state lives, which the caller holds);
                // a null event is allowed for DEL.
                unsafe {
                    libc::epoll_ctl(
                        self.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        w.fd,
                        std::ptr::null_mut(),
                    )
                };
                true
            }
            _ => false,
        }
    }

    /// Asks the engine thread to end, and wakes it.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.signal();
    }
}

/// Starts the engine thread of `inner`.
pub(super) fn spawn(inner: Arc<Inner>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("ringport-rio-epoll".into())
        .spawn(move || run(&inner))
}

/// The engine thread: waits for readiness and carries out what it allows,
/// until the queue closes.
fn run(inner: &Inner) {
    let poller = &inner.poller;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut ready: Vec<(Arc<Watched>, u32)> = Vec::with_capacity(events.len());
    let mut batch = Batch::default();
    loop {
        // SAFETY: the buffer holds 64 events; the epoll fd lives as long as
        // `inner`.
        let n = unsafe {
            libc::epoll_wait(
                poller.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                -1,
            )
        };
        if poller.stop.load(Ordering::SeqCst) {
            return;
        }
        if n < 0 {
            // EINTR; nothing else can fail on a valid epoll fd and buffer.
            continue;
        }
        {
            let table = lock(&poller.table);
            for ev in &events[..n as usize] {
                let (flags, token) = (ev.events, ev.u64);
                if token == WAKE {
                    poller.wake.drain();
                } else if let Some(w) = table.get(&token) {
                    ready.push((w.clone(), flags));
                }
            }
        }
        let hangup = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        for (w, flags) in ready.drain(..) {
            if flags & (hangup | (libc::EPOLLIN | libc::EPOLLRDHUP) as u32) != 0 {
                inner.run_queue(&w, 0, &mut batch);
            }
            if flags & (hangup | libc::EPOLLOUT as u32) != 0 {
                inner.run_queue(&w, 1, &mut batch);
            }
        }
        inner.finish(&mut batch);
    }
}
