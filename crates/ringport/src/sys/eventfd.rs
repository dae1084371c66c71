//! One eventfd wrapper, for whatever must wake a thread asleep in `poll` or
//! `epoll_wait`: the port's epoll sleeper, RIO's epoll engine thread, and
//! RIO's event notification.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A non-blocking, close-on-exec eventfd, written at most once between two
/// [`reset`](Self::reset)s.
///
/// A wake that comes while the fd is being reset may find it still marked
/// as woken and write nothing: whoever resets looks again at what it is
/// woken for after resetting.
pub(crate) struct EventFd {
    fd: OwnedFd,
    /// Woken and not yet reset: the fd is readable (or about to be).
    woken: AtomicBool,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd {
            // SAFETY: fd was just created and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            woken: AtomicBool::new(false),
        })
    }

    /// Makes the fd readable, unless it was woken since the last reset.
    pub(crate) fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: write reads 8 bytes from &one. It only fails when the
            // counter is at its maximum, which leaves the fd readable anyway.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Makes the fd unreadable again (whoever wrote it: [`wake`](Self::wake)
    /// or the kernel, for an eventfd registered with an io_uring ring).
    pub(crate) fn reset(&self) {
        let mut n: u64 = 0;
        // SAFETY: read writes 8 bytes into &mut n. EAGAIN means it was zero.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        self.woken.store(false, Ordering::Release);
    }

    /// Waits until the fd is readable or `timeout` passes; true if readable.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        // SAFETY: poll reads and writes one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        r > 0 && pfd.revents & libc::POLLIN != 0
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
