//! What a request queue shares with its requests, whichever engine runs
//! them: the socket, the limits and counts, and the capacities of the
//! completion queues they are charged to (given back when the last request
//! ends).

use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
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

    /// Gives back a place [`reserve`](Self::reserve) took, whose request
    /// never started (the caller holds an `Arc` of the queue, so this never
    /// frees it).
    pub(super) fn unreserve(self: &Arc<Self>, kind: RequestKind) {
        // SAFETY: `self` is alive (an `Arc` the caller holds, which also
        // keeps the strong count above the one this may give back), and its
        // count of `kind` counts the place given back.
        unsafe { end_one(Arc::as_ptr(self), kind) }
    }

    /// Whether the queue was dropped (its requests are being cancelled).
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(SeqCst)
    }

    /// The queue was dropped: its requests are being cancelled.
    pub(super) fn set_closing(&self) {
        self.closing.store(true, SeqCst);
    }

    /// Counts one more outstanding request, or fails if at the maximum;
    /// returns the request's reference to the queue.
    pub(super) fn reserve(self: &Arc<Self>, kind: RequestKind) -> Result<RqRef, Error> {
        let k = kind.index();
        let before = self.outstanding[k].fetch_add(1, SeqCst);
        if before == 0 {
            // The count leaves 0: from now until it is back at 0, the
            // outstanding requests of this kind hold one strong count of the
            // queue's `Arc` between them (see `RqRef`).
            // SAFETY: `self` is a live `Arc`.
            unsafe { Arc::increment_strong_count(Arc::as_ptr(self)) };
        }
        let max = self.max[k].load(SeqCst);
        if before >= max {
            self.unreserve(kind);
            return Err(RioError::TooManyRequests { kind, max }.into());
        }
        Ok(RqRef(NonNull::from(&**self)))
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

/// A request's reference to its request queue's shared state.
///
/// It costs no reference count (a locked read-modify-write when the request
/// is made and another when it ends, which a receive loop paid for every
/// datagram): while any request of a kind is outstanding, those requests
/// hold one strong count of the queue's `Arc` between them, taken by the
/// [`reserve`](RqShared::reserve) that makes the count leave 0 and given
/// back by the [`end`](Self::end) (or `unreserve`) that brings it back to 0.
/// So a queue dropped with requests in flight lives until the last of them
/// ends, as when each held an `Arc`. A reference is only made by `reserve`,
/// and its `end` is the last use of it.
pub(super) struct RqRef(NonNull<RqShared>);

// SAFETY: a shared reference to `RqShared`, which is `Sync` (atomics, an
// owned descriptor, mutexes); it stays alive as long as the reference is
// used (see above).
unsafe impl Send for RqRef {}
// SAFETY: as above.
unsafe impl Sync for RqRef {}

impl RqRef {
    /// The request has ended (completed, or never started): it no longer
    /// counts against its queue, whose state this may free (the last
    /// request of a dropped queue). The reference must not be used after.
    pub(super) fn end(&self, kind: RequestKind) {
        // SAFETY: the state is alive, held by the strong count of the
        // outstanding requests of `kind`, which count this one until here.
        unsafe { end_one(self.0.as_ptr(), kind) }
    }

    /// A counted reference, for what outlives the request (a lane's buffer
    /// group).
    pub(super) fn to_arc(&self) -> Arc<RqShared> {
        let ptr = self.0.as_ptr().cast_const();
        // SAFETY: `ptr` came from an `Arc` (see `reserve`) that is alive
        // while this request is outstanding; the count taken here is the
        // new `Arc`'s.
        unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        }
    }

    /// The state's address, to compare with another's.
    pub(super) fn as_ptr(&self) -> *const RqShared {
        self.0.as_ptr()
    }
}

impl std::ops::Deref for RqRef {
    type Target = RqShared;
    fn deref(&self) -> &RqShared {
        // SAFETY: alive while the request is outstanding (see the type's
        // docs); a request uses its reference only until its `end`.
        unsafe { self.0.as_ref() }
    }
}

/// Ends one outstanding request of `kind` of the state at `this`: when it
/// was the last, gives back the strong count its kind's requests held.
///
/// # Safety
/// `this` comes from `Arc::as_ptr` of a live `Arc<RqShared>`, and its count
/// of `kind` counts the request ended here. No reference to the state may
/// be used after this call unless the caller holds an `Arc` of it.
unsafe fn end_one(this: *const RqShared, kind: RequestKind) {
    // Through the pointer: no reference to the state lives across the
    // decrement, which may free it.
    // SAFETY: the caller's promise: the state is alive here.
    let before = unsafe { (*this).outstanding[kind.index()].fetch_sub(1, SeqCst) };
    if before == 1 {
        // SAFETY: the count was taken when the count of `kind` left 0 (see
        // `reserve`) and is given back once, as it reaches 0 again.
        unsafe { Arc::decrement_strong_count(this) };
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
