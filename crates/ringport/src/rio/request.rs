//! Requests in flight, whichever engine runs them: what each owns until its
//! result is dequeued (its request queue, its claimed slices), the operation
//! it performs on registered memory, and how the kernel's answer becomes a
//! [`RioResult`].
//!
//! A request ends in two steps. When its operation is over, [`outcome`]
//! turns what the kernel returned into a status and a byte count (writing the
//! local address of a `receive_ex`). When its result is dequeued (or dropped
//! by a close), [`end`](Request::end) gives back its slices and its place in
//! the request queue's count. Between the two the result waits in the
//! completion queue: the io_uring engine keeps the request in its request table
//! and the kernel's completion in the CQ ring; the epoll engine keeps both in
//! its result ring.
//!
//! [`outcome`]: Request::outcome

use std::io;
use std::net::SocketAddr;

use super::addr;
use super::buffer::{self, Claim};
use super::flags::RequestKind;
use super::rq_shared::RqRef;

/// The kernel operation a request performs, with the registered memory it
/// was given (resolved from its slices when it was made).
pub(super) enum Op {
    Recv {
        ptr: *mut u8,
        len: u32,
        flags: i32,
    },
    Send {
        ptr: *const u8,
        len: u32,
        flags: i32,
    },
    RecvMsg {
        ptr: *mut u8,
        len: u32,
        /// Where the kernel writes the sender's address, and its room.
        remote: Option<(*mut u8, u32)>,
        /// Where the local address goes at completion, and the socket's port.
        local: Option<(*mut u8, u16)>,
        flags: u32,
    },
    SendMsg {
        ptr: *const u8,
        len: u32,
        /// The destination address, and its length.
        remote: Option<(*const u8, u32)>,
        /// The local address to send from.
        local: Option<SocketAddr>,
        flags: u32,
    },
}

/// A request from submission until its result is dequeued.
pub(super) struct Request {
    pub(super) rq: RqRef,
    pub(super) kind: RequestKind,
    pub(super) context: u64,
    pub(super) quiet: bool,
    pub(super) op: Op,
    /// The slices it uses, released when it ends.
    pub(super) claims: [Option<Claim>; 3],
}

// SAFETY: the raw pointers point into registered buffers that the request's
// claims keep allocated and reserved for it; nothing in a Request is tied to
// a thread.
unsafe impl Send for Request {}

impl Request {
    /// Ends a request whose result will never be dequeued (it never reached
    /// the kernel, or its queue closed): its slices are free again and it no
    /// longer counts against its queue.
    pub(super) fn abandon(self) {
        let claims: Vec<Claim> = self.claims.iter().flatten().copied().collect();
        buffer::release(&claims);
        self.rq.end(self.kind);
    }

    /// Ends a request whose result is being dequeued: it no longer counts
    /// against its queue, and the slices it used are added to `claims` for
    /// the caller to release in one go.
    pub(super) fn end(self, claims: &mut Vec<Claim>) {
        claims.extend(self.claims.iter().flatten());
        self.rq.end(self.kind);
    }

    /// [`end`](Self::end) for a request its owner drops right after, where
    /// it is, without moving it.
    pub(super) fn end_in_place(&self, claims: &mut Vec<Claim>) {
        claims.extend(self.claims.iter().flatten());
        self.rq.end(self.kind);
    }

    /// The status and bytes of the request, once its operation returned
    /// `res` (bytes, or a negated errno). For a receive with addresses,
    /// `msg` is the header the kernel filled: truncation is read from its
    /// flags, and the local address from its control messages is written to
    /// the request's local address slice.
    ///
    /// # Safety
    /// For an [`Op::RecvMsg`] completed with `res >= 0`, `msg` is that
    /// receive's header as the kernel left it, its control pointer and length
    /// describing initialised memory; the operation is over (nothing else
    /// writes the request's slices).
    // Inlined into the engines' result paths (called once per result).
    #[inline]
    pub(super) unsafe fn outcome(&self, res: i32, msg: Option<&libc::msghdr>) -> (i32, u32) {
        if res < 0 {
            return (-res, 0);
        }
        let n = res as u32;
        match &self.op {
            // MSG_TRUNC made the kernel report the datagram's full length.
            Op::Recv { len, .. } if n > *len => (libc::EMSGSIZE, *len),
            Op::RecvMsg { local, .. } => {
                let Some(msg) = msg else {
                    return (0, n);
                };
                if let Some((ptr, port)) = local {
                    // SAFETY: the caller's promise: the kernel filled the
                    // header and up to msg_controllen bytes of its control.
                    let found = unsafe { addr::local_from_control(msg, *port) };
                    match found {
                        // SAFETY: ptr is a slice of >= ADDRESS_LEN bytes this
                        // request holds a receive claim on: no one else
                        // reads or writes it.
                        Some(a) => unsafe { addr::write_at(*ptr, &a) },
                        // SAFETY: as above; a zero family reads as no address.
                        None => unsafe { ptr.cast::<[u8; 2]>().write_unaligned([0; 2]) },
                    }
                }
                if msg.msg_flags & libc::MSG_TRUNC != 0 {
                    (libc::EMSGSIZE, n)
                } else {
                    (0, n)
                }
            }
            _ => (0, n),
        }
    }

    /// The request's result with this status and byte count.
    #[inline]
    pub(super) fn result(&self, status: i32, bytes: u32) -> RioResult {
        RioResult {
            status,
            bytes,
            socket_context: self.rq.socket_context,
            request_context: self.context,
        }
    }
}

/// The result of one request (`RIORESULT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RioResult {
    /// 0 on success, else the error number (`errno`) it failed with:
    /// `ECANCELED` for a request cancelled by closing, `EMSGSIZE` for a
    /// datagram longer than the receive buffer (`bytes` then says how much
    /// of it was kept).
    pub status: i32,
    /// Bytes received or sent.
    pub bytes: u32,
    /// The request queue's context, given when it was created.
    pub socket_context: u64,
    /// The request's context, given when it was made.
    pub request_context: u64,
}

impl RioResult {
    /// The outcome as a `Result`: bytes transferred, or the error.
    pub fn result(&self) -> io::Result<u32> {
        if self.status == 0 {
            Ok(self.bytes)
        } else {
            Err(io::Error::from_raw_os_error(self.status))
        }
    }
}
