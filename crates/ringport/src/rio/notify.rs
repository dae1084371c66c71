//! How a completion queue tells that results are waiting: not at all
//! (polled), through an eventfd, or with a packet on a completion port.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;
use crate::sys::eventfd::EventFd;
use crate::sys::op::Recheck;
use crate::{CompletionPort, Error, Handle};

/// A completion queue's notification (`RIO_NOTIFICATION_COMPLETION`).
pub enum Notify {
    /// None: the owner polls [`dequeue`](super::CompletionQueue::dequeue).
    Polled,
    /// An eventfd the kernel signals (`RIO_EVENT_COMPLETION`); wait with
    /// [`CompletionQueue::wait`](super::CompletionQueue::wait).
    Event,
    /// A packet on a completion port (`RIO_IOCP_COMPLETION`); make one with
    /// [`Notify::port`].
    Port(PortTarget),
}

/// Where a port notification goes: a port, a key and a token, for
/// [`Notify::Port`].
pub struct PortTarget {
    /// io_uring engine: queues the one-shot poll of a ring on the port.
    arm: Box<dyn Fn(RawFd, u64, Recheck) -> Result<(), Error> + Send + Sync>,
    /// epoll engine: posts the packet.
    post: Box<dyn Fn() -> Result<(), Error> + Send + Sync>,
}

/// How a completion queue's engine tells that results are waiting: what
/// [`Notify`] became once the queue was made.
pub(super) enum Notifier {
    Polled,
    Event(EventFd),
    Port(PortTarget),
}

impl Notifier {
    /// The notifier for `notify`, with a new eventfd for [`Notify::Event`].
    pub(super) fn new(notify: Notify) -> io::Result<Notifier> {
        Ok(match notify {
            Notify::Polled => Notifier::Polled,
            Notify::Event => Notifier::Event(EventFd::new()?),
            Notify::Port(target) => Notifier::Port(target),
        })
    }
}

/// A port target's token, and the ring descriptor the port watches.
struct PortWatch<T: Send + 'static> {
    token: T,
    /// The generation of the ring it duplicates, and the duplicate,
    /// associated with the port (shared with polls being armed).
    ring: Option<(u64, Arc<Handle<T>>)>,
}

impl Notify {
    /// Notification by packet: each armed notification queues one packet
    /// with `key` and a clone of `token` on `port`, with the poll mask
    /// (`POLLIN`) as its result.
    ///
    /// On the io_uring engine the packet comes from a one-shot poll of the
    /// queue's ring on the port: the port watches a duplicate of the ring's
    /// descriptor, associated with it under `key` (the port's epoll backend
    /// watches only associated descriptors), closed with the completion
    /// queue. A ring holding only `DONT_NOTIFY` results makes that poll
    /// fire too; the port then asks the queue, and polls again instead of
    /// queueing the packet. On the epoll engine the queue posts the packet
    /// itself.
    pub fn port<T: Clone + Send + 'static>(port: &CompletionPort<T>, key: u64, token: T) -> Notify {
        let port = port.clone();
        let watch = Arc::new(Mutex::new(PortWatch { token, ring: None }));
        let (post_port, post_watch) = (port.clone(), watch.clone());
        Notify::Port(PortTarget {
            post: Box::new(move || {
                let token = lock(&post_watch).token.clone();
                post_port.post(key, token, Ok(libc::POLLIN as usize))
            }),
            arm: Box::new(move |ring_fd, generation, recheck| {
                let (ring, token) = {
                    let mut w = lock(&watch);
                    let w = &mut *w;
                    let stale = w.ring.as_ref().is_none_or(|(g, _)| *g != generation);
                    if stale {
                        w.ring = None;
                        let handle = port.associate(dup(ring_fd)?, key)?;
                        w.ring = Some((generation, Arc::new(handle)));
                    }
                    (w.ring.as_ref().map(|(_, h)| h.clone()), w.token.clone())
                };
                // Not under the watch's lock: on the port's epoll backend the
                // poll may complete in this call, and a recheck that finds it
                // not due arms the next one through here.
                let fd = ring.as_ref().map_or(-1, |h| h.as_fd().as_raw_fd());
                port.watch_readable(fd, key, token, recheck).map(drop)
            }),
        })
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes no pointers and returns a new descriptor.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

impl PortTarget {
    /// Queues the one-shot poll of ring `generation`, whose descriptor is
    /// `ring_fd`, on the port; when it fires, `recheck` decides whether the
    /// packet is due.
    pub(super) fn arm(
        &self,
        ring_fd: RawFd,
        generation: u64,
        recheck: Recheck,
    ) -> Result<(), Error> {
        (self.arm)(ring_fd, generation, recheck)
    }

    /// Queues the packet on the port now.
    pub(super) fn post(&self) -> Result<(), Error> {
        (self.post)()
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Notify::Polled => "Polled",
            Notify::Event => "Event",
            Notify::Port(_) => "Port",
        })
    }
}

/// The longest an event wait sleeps before looking at the queue itself, in
/// case a wake-up was missed between arming and sleeping.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// How long an event wait with `deadline` sleeps next: a slice of it, or
/// [`Error::Timeout`] once it has passed.
pub(super) fn wait_slice(deadline: Option<Instant>) -> Result<Duration, Error> {
    match deadline {
        None => Ok(WAIT_SLICE),
        Some(d) => match d.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(Error::Timeout),
            left => Ok(left.min(WAIT_SLICE)),
        },
    }
}
