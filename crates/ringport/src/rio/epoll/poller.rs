//! The epoll instance of a completion queue's engine and the sockets it
//! watches, each with the requests waiting on it.
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

use super::io::WaitingRequest;
use crate::sync::lock;
use crate::sys::eventfd::EventFd;

/// epoll `data` of the eventfd that wakes the engine thread to stop.
pub(super) const STOP_EVENT: u64 = u64::MAX;

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
    pub(super) queues: Mutex<[VecDeque<WaitingRequest>; 2]>,
}

/// The epoll instance of one completion queue's engine, and how to stop it.
pub(super) struct SocketPoller {
    pub(super) epoll: OwnedFd,
    /// Woken once, to stop the engine thread.
    pub(super) stop_event: EventFd,
    pub(super) stopping: AtomicBool,
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

impl SocketPoller {
    pub(super) fn new() -> io::Result<SocketPoller> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked
        // before it is owned.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let stop_event = EventFd::new()?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: STOP_EVENT,
        };
        // SAFETY: valid epoll and eventfd descriptors and a live event.
        cvt(unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stop_event.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(SocketPoller {
            epoll,
            stop_event,
            stopping: AtomicBool::new(false),
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
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_event.wake();
    }
}
