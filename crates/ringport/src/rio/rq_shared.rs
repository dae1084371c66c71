//! What a request queue shares with its requests, whichever engine runs
//! them: the socket, the limits and counts, and the capacities of the
//! completion queues they are charged to (given back when the last request
//! ends).

use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use super::addr;
use super::charge::CqCapacity;
use super::error::RioError;
use super::flags::RequestKind;
use crate::sync::lock;
use crate::Error;

pub(super) struct RqShared {
    pub(super) fd: OwnedFd,
    pub(super) socket_context: u64,
    pub(super) datagram: bool,
    domain: i32,
    /// The capacities of the receive and the send completion queue.
    capacities: [Arc<CqCapacity>; 2],
    pub(super) max: [AtomicU32; 2],
    pub(super) outstanding: [AtomicU32; 2],
    closing: AtomicBool,
    /// The socket's port, once `IP_PKTINFO` is on (for local addresses).
    local_port: Mutex<Option<u16>>,
}

impl RqShared {
    /// The shared state of socket `fd`'s request queue, whose receives and
    /// sends complete to the queues of `capacities`; its limits are 0 until
    /// [`set_limits`](Self::set_limits). Fails if `fd` is not a socket.
    pub(super) fn new(
        fd: OwnedFd,
        socket_context: u64,
        capacities: [Arc<CqCapacity>; 2],
    ) -> Result<RqShared, Error> {
        let kind = sockopt(fd.as_raw_fd(), libc::SO_TYPE)?;
        let domain = sockopt(fd.as_raw_fd(), libc::SO_DOMAIN)?;
        Ok(RqShared {
            fd,
            socket_context,
            datagram: kind == libc::SOCK_DGRAM,
            domain,
            capacities,
            max: [AtomicU32::new(0), AtomicU32::new(0)],
            outstanding: [AtomicU32::new(0), AtomicU32::new(0)],
            closing: AtomicBool::new(false),
            local_port: Mutex::new(None),
        })
    }

    /// Sets the limits once they have been charged to the completion
    /// queues; from then on, dropping the state gives them back.
    pub(super) fn set_limits(&self, max: [u32; 2]) {
        for (m, v) in self.max.iter().zip(max) {
            m.store(v, SeqCst);
        }
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A request of this kind has ended (completed, or never started).
    pub(super) fn done(&self, kind: RequestKind) {
        self.outstanding[kind.index()].fetch_sub(1, SeqCst);
    }

    /// Whether the queue was dropped (its requests are being cancelled).
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(SeqCst)
    }

    /// The queue was dropped: its requests are being cancelled.
    pub(super) fn set_closing(&self) {
        self.closing.store(true, SeqCst);
    }

    /// Counts one more outstanding request, or fails if at the maximum.
    pub(super) fn reserve(&self, kind: RequestKind) -> Result<(), Error> {
        let k = kind.index();
        let before = self.outstanding[k].fetch_add(1, SeqCst);
        let max = self.max[k].load(SeqCst);
        if before >= max {
            self.outstanding[k].fetch_sub(1, SeqCst);
            return Err(RioError::TooManyRequests { kind, max }.into());
        }
        Ok(())
    }

    /// Turns on local-address reporting and returns the socket's port.
    pub(super) fn local_port(&self) -> Result<u16, Error> {
        let mut port = lock(&self.local_port);
        if let Some(p) = *port {
            return Ok(p);
        }
        addr::enable_pktinfo(self.raw_fd(), self.domain)?;
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: getsockname writes at most `len` bytes into storage.
        let r = unsafe {
            libc::getsockname(
                self.raw_fd(),
                &mut storage as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let p = crate::sys::addr::read(&storage, len).map_or(0, |a| a.port());
        *port = Some(p);
        Ok(p)
    }
}

impl Drop for RqShared {
    fn drop(&mut self) {
        // The last request has been dequeued: the charges can go.
        let r = self.max[0].load(SeqCst);
        let s = self.max[1].load(SeqCst);
        let [rc, sc] = &self.capacities;
        if Arc::ptr_eq(rc, sc) {
            rc.uncharge(r.saturating_add(s));
        } else {
            rc.uncharge(r);
            sc.uncharge(s);
        }
    }
}

fn sockopt(fd: RawFd, name: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into v.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
