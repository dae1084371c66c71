//! Carrying out a request with non-blocking system calls: what io_uring
//! does in the kernel, done by the epoll engine in user space.
//!
//! Every call passes `MSG_DONTWAIT` (the socket's own blocking mode is left
//! as the user set it) and `MSG_NOSIGNAL` for sends (no `SIGPIPE` in the
//! engine thread). A `WAITALL` request on a stream socket keeps what it
//! moved so far and goes on where it stopped, as the kernel does for a
//! blocking `MSG_WAITALL` call. The `msghdr` of `receive_ex`/`send_ex` is
//! built on the stack for each call: nothing the kernel uses outlives it.

use std::io;
use std::os::fd::RawFd;

use super::super::addr::{self, Control, CONTROL_LEN};
use super::super::request::{Op, Request};

/// A request waiting in its socket's queue, with what it has moved so far
/// (for `WAITALL`).
pub(super) struct WaitingRequest {
    pub(super) request: Request,
    done: u32,
}

impl WaitingRequest {
    pub(super) fn new(request: Request) -> WaitingRequest {
        WaitingRequest { request, done: 0 }
    }
}

/// What a non-blocking call gave.
enum Call {
    /// It moved `n` bytes (a datagram receive with `MSG_TRUNC` may report
    /// more than the buffer), which would make the request's result
    /// `outcome` if this call were all of it.
    Moved {
        n: usize,
        outcome: (i32, u32),
    },
    WouldBlock,
    Interrupted,
    Failed(i32),
}

/// The negated-errno convention of `Request::outcome`, for a call's return.
fn res(n: usize) -> i32 {
    n.min(i32::MAX as usize) as i32
}

/// Classifies a failed call by `errno`.
fn failed() -> Call {
    match io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
    {
        libc::EINTR => Call::Interrupted,
        e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => Call::WouldBlock,
        e => Call::Failed(e),
    }
}

/// Attempts the request at the head of its socket's queue: `None` if it
/// must wait for readiness (it keeps what it moved), else its status and
/// bytes.
///
/// The caller holds the socket's queue lock, so calls for one socket are
/// made (and their results queued) one at a time, in queue order.
pub(super) fn attempt(p: &mut WaitingRequest) -> Option<(i32, u32)> {
    let fd = p.request.rq.raw_fd();
    let (len, waitall) = match p.request.op {
        Op::Recv { len, flags, .. } | Op::Send { len, flags, .. } => {
            (len, flags & libc::MSG_WAITALL != 0)
        }
        Op::RecvMsg { len, flags, .. } | Op::SendMsg { len, flags, .. } => {
            (len, flags & libc::MSG_WAITALL as u32 != 0)
        }
    };
    loop {
        match perform(fd, &p.request, p.done) {
            Call::Interrupted => continue,
            Call::WouldBlock => return None,
            // What was moved before the error is the result, as a blocking
            // MSG_WAITALL call reports it.
            Call::Failed(_) if p.done > 0 => return Some((0, p.done)),
            Call::Failed(e) => return Some((e, 0)),
            Call::Moved { outcome, .. } if !waitall => return Some(outcome),
            Call::Moved { n, .. } => {
                p.done = p.done.saturating_add(res(n) as u32).min(len);
                if n == 0 || p.done >= len {
                    // Full, or the stream ended (a receive of 0 bytes).
                    return Some((0, p.done));
                }
            }
        }
    }
}

/// The most datagram receives one `recvmmsg` carries out.
pub(super) const BATCH: usize = 64;

/// Whether `p` is a receive [`receive_many`] can carry out: one datagram
/// into one slice (no `WAITALL`, nothing moved yet).
fn batchable(p: &WaitingRequest) -> bool {
    matches!(p.request.op, Op::Recv { flags, .. }
        if flags & libc::MSG_TRUNC != 0 && flags & libc::MSG_WAITALL == 0)
        && p.done == 0
}

/// Carries out the datagram receives at the head of `queue` with one
/// `recvmmsg`, as [`attempt`] would one by one: their outcomes go to `out`,
/// in order, and the count is returned (0: the first must wait for
/// readiness). `None` when fewer than two receives at the head qualify, or
/// the call failed with an error that [`attempt`] should report.
///
/// The caller holds the socket's queue lock, as for [`attempt`].
pub(super) fn receive_many(
    queue: &std::collections::VecDeque<WaitingRequest>,
    out: &mut [(i32, u32); BATCH],
) -> Option<usize> {
    let k = queue
        .iter()
        .take(BATCH)
        .take_while(|p| batchable(p))
        .count();
    if k < 2 {
        return None;
    }
    // SAFETY: all-zero is a valid iovec and mmsghdr.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, p) in queue.iter().take(k).enumerate() {
        if let Op::Recv { ptr, len, .. } = p.request.op {
            iov[i].iov_base = ptr.cast();
            iov[i].iov_len = len as usize;
        }
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    let fd = queue.front()?.request.rq.raw_fd();
    loop {
        // SAFETY: k headers, each pointing at one iovec on this stack frame
        // that names a slice its request holds a receive claim on (no one
        // else reads or writes it; its memory stays while the request
        // lives). MSG_TRUNC reports each datagram's full length, as the
        // single receive does.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                k as u32,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if r >= 0 {
            let n = r as usize;
            for (i, p) in queue.iter().take(n).enumerate() {
                // SAFETY: not a RECVMSG: `outcome` reads no header.
                out[i] = unsafe { p.request.outcome(res(msgs[i].msg_len as usize), None) };
            }
            return Some(n);
        }
        match failed() {
            Call::Interrupted => continue,
            Call::WouldBlock => return Some(0),
            _ => return None,
        }
    }
}

/// Makes one non-blocking call for `request`, `done` bytes into it.
fn perform(fd: RawFd, request: &Request, done: u32) -> Call {
    let off = done as usize;
    match request.op {
        Op::Recv { ptr, len, flags } => {
            let flags = (flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT;
            // SAFETY: ptr..ptr+len is the request's slice, claimed for
            // receiving (no one else reads or writes it, and its memory stays
            // allocated while the request lives); off <= len.
            let r = unsafe { libc::recv(fd, ptr.add(off).cast(), (len - done) as usize, flags) };
            if r < 0 {
                return failed();
            }
            let n = r as usize;
            // SAFETY: not a RECVMSG: `outcome` reads no header.
            let outcome = unsafe { request.outcome(res(n), None) };
            Call::Moved { n, outcome }
        }
        Op::Send { ptr, len, flags } => {
            let flags = (flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            // SAFETY: ptr..ptr+len is the request's slice, claimed for
            // sending (no one writes it meanwhile); off <= len.
            let r = unsafe { libc::send(fd, ptr.add(off).cast(), (len - done) as usize, flags) };
            if r < 0 {
                return failed();
            }
            let n = r as usize;
            Call::Moved {
                n,
                outcome: (0, res(n) as u32),
            }
        }
        Op::RecvMsg {
            ptr,
            len,
            remote,
            local,
            flags,
        } => {
            let mut iov = libc::iovec {
                // SAFETY: as for Recv: off <= len within the claimed slice.
                iov_base: unsafe { ptr.add(off) }.cast(),
                iov_len: (len - done) as usize,
            };
            let mut control = Control([0; CONTROL_LEN]);
            // SAFETY: all-zero is a valid msghdr.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            addr::receive_names(&mut msg, remote, local.is_some(), &mut control);
            let flags = (flags as i32 & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT;
            // SAFETY: the header points at the request's claimed slices (the
            // data, and the remote address slice of at least `room` bytes,
            // claimed for receiving) and at `control` and `iov` on this
            // stack frame, all alive for the call.
            let r = unsafe { libc::recvmsg(fd, &mut msg, flags) };
            if r < 0 {
                return failed();
            }
            let n = r as usize;
            // SAFETY: the call is over and filled `msg`, whose control
            // pointer and length describe `control` (initialised: zeroed).
            let outcome = unsafe { request.outcome(res(n), Some(&msg)) };
            Call::Moved { n, outcome }
        }
        Op::SendMsg {
            ptr,
            len,
            remote,
            local,
            flags,
        } => {
            let mut iov = libc::iovec {
                // SAFETY: as for Send: off <= len within the claimed slice.
                iov_base: unsafe { ptr.add(off) }.cast_mut().cast(),
                iov_len: (len - done) as usize,
            };
            let mut control = Control([0; CONTROL_LEN]);
            // SAFETY: all-zero is a valid msghdr.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            addr::send_names(&mut msg, remote, local.as_ref(), &mut control);
            let flags =
                (flags as i32 & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            // SAFETY: the header points at the request's claimed slices (the
            // data and the remote address, claimed for sending) and at
            // `control` and `iov` on this stack frame, all alive for the call;
            // sendmsg only reads them.
            let r = unsafe { libc::sendmsg(fd, &msg, flags) };
            if r < 0 {
                return failed();
            }
            let n = r as usize;
            Call::Moved {
                n,
                outcome: (0, res(n) as u32),
            }
        }
    }
}
