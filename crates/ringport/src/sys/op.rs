//! Operations as data: what a handle asks for, independent of the backend
//! that carries it out, and how a result becomes a packet.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::addr;
use super::inflight::{Operation, Scratch};
use crate::port::Buf;
use crate::port::{Packet, Payload};
use crate::sys::fd::FdKind;

/// One operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    ReadAt(u64),
    WriteAt(u64),
    Recv,
    Send,
    RecvFrom,
    SendTo,
    Accept,
    Connect,
    Shutdown(i32),
    Timer(Duration),
    PollReadable,
}

/// Which readiness an operation waits for on a readiness backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Op {
    pub(crate) fn direction(self) -> Direction {
        match self {
            Op::WriteAt(_) | Op::Send | Op::SendTo | Op::Connect => Direction::Write,
            _ => Direction::Read,
        }
    }

    /// The queue an operation waits in to keep its handle's issue order (on
    /// a kind of descriptor that has one): receives and accepts take the
    /// handle's input in issue order, sends put bytes out in issue order.
    pub(crate) fn lane(self, kind: FdKind) -> Option<Direction> {
        match self {
            _ if !kind.ordered() => None,
            Op::ReadAt(_) | Op::Recv | Op::RecvFrom | Op::Accept => Some(Direction::Read),
            Op::WriteAt(_) | Op::Send | Op::SendTo => Some(Direction::Write),
            Op::Connect | Op::Shutdown(_) | Op::Timer(_) | Op::PollReadable => None,
        }
    }

    /// Fills in the scratch memory the operation points the kernel at: the
    /// `msghdr` of a datagram, the address of a connect or send_to, the
    /// address length of an accept, the timespec of a timer.
    pub(crate) fn prepare(self, s: &mut Scratch, buf: &mut Option<Buf>, to: Option<SocketAddr>) {
        match self {
            Op::RecvFrom | Op::SendTo => {
                let (base, len) = match (self, buf.as_mut()) {
                    (Op::RecvFrom, Some(b)) => b.write_ptr(),
                    (_, Some(b)) => (b.read_ptr() as *mut u8, b.len()),
                    (_, None) => (std::ptr::null_mut(), 0),
                };
                s.iov = libc::iovec {
                    iov_base: base.cast(),
                    iov_len: len,
                };
                s.msg.msg_namelen = match to {
                    Some(a) => addr::write(&a, &mut s.addr),
                    None => std::mem::size_of::<libc::sockaddr_storage>() as _,
                };
                s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
                s.msg.msg_iov = &mut s.iov;
                s.msg.msg_iovlen = 1;
                s.msg.msg_control = std::ptr::null_mut();
                s.msg.msg_controllen = 0;
                s.msg.msg_flags = 0;
            }
            Op::Accept => s.addrlen = std::mem::size_of::<libc::sockaddr_storage>() as _,
            Op::Connect => {
                if let Some(a) = to {
                    s.addrlen = addr::write(&a, &mut s.addr);
                }
                s.started = false;
            }
            Op::Timer(d) => s.ts = io_uring::types::Timespec::from(d),
            _ => {}
        }
    }
}

/// Decides, when a watched descriptor polls readable, whether its packet is
/// due. When it is not, the packet is dropped, and the recheck is expected to
/// have armed a new poll. Backends run it with none of their locks held (it
/// may take its owner's locks, and start operations on the port).
pub(crate) type Recheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a finished operation becomes: its packet, or, for a watch, a packet
/// its recheck must pass first (once the backend has let go of its locks).
pub(crate) enum Finished<T> {
    Packet(Packet<T>),
    Watch(Packet<T>, Recheck),
}

impl<T> Finished<T> {
    /// The packet to queue, if any: a watch's packet only when its recheck
    /// says it is due.
    pub(crate) fn settle(self) -> Option<Packet<T>> {
        match self {
            Finished::Packet(p) => Some(p),
            Finished::Watch(p, recheck) => recheck().then_some(p),
        }
    }
}

/// [`packet`], keeping a successful watch's recheck for [`Finished::settle`]
/// (a failed or cancelled watch completes as it is).
pub(crate) fn finish<T>(mut p: Operation<T>, res: i32, s: &Scratch) -> Finished<T> {
    let recheck = p.recheck.take();
    let packet = packet(p, res, s);
    match recheck {
        Some(r) if packet.result.is_ok() => Finished::Watch(packet, r),
        _ => Finished::Packet(packet),
    }
}

/// Turns a finished operation (its result as the kernel reports it: bytes or
/// a new fd, or a negated errno) into its packet.
///
/// A datagram longer than its buffer completes with `EMSGSIZE`, its buffer
/// holding the bytes that fit (Windows' `WSAEMSGSIZE`): a `recv` on a
/// datagram socket asks with `MSG_TRUNC` and gets the datagram's full
/// length, a `recv_from` finds `MSG_TRUNC` in the message flags.
pub(crate) fn packet<T>(mut p: Operation<T>, res: i32, s: &Scratch) -> Packet<T> {
    let capacity = p.buf.as_ref().map_or(0, Buf::capacity);
    let truncated = res >= 0
        && p.kind == FdKind::Datagram
        && match p.op {
            Op::Recv => res as usize > capacity,
            Op::RecvFrom => s.msg.msg_flags & libc::MSG_TRUNC != 0,
            _ => false,
        };
    let filled = if res < 0 {
        0
    } else {
        (res as usize).min(capacity)
    };
    let result = match (res, p.op) {
        _ if truncated => Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
        (r, Op::Timer(_)) if r == -libc::ETIME => Ok(0),
        (r, _) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
        (r, _) => Ok(r as usize),
    };
    let payload = match (p.op, p.buf.take(), &result) {
        (Op::Accept, _, Ok(fd)) => {
            // SAFETY: a successful accept's result is a new descriptor that
            // nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(*fd as i32) };
            Payload::Accepted(fd, addr::read(&s.addr, s.addrlen))
        }
        (Op::ReadAt(_) | Op::Recv, Some(mut b), _) => {
            // SAFETY: the kernel wrote `filled` bytes from the start, within
            // capacity.
            unsafe { b.set_filled(filled) };
            Payload::Buf(b)
        }
        (Op::RecvFrom, Some(mut b), _) => {
            // SAFETY: as above.
            unsafe { b.set_filled(filled) };
            let from = (res >= 0)
                .then(|| addr::read(&s.addr, s.msg.msg_namelen))
                .flatten();
            Payload::BufFrom(b, from)
        }
        (_, Some(b), _) => Payload::Buf(b),
        (_, None, _) => Payload::None,
    };
    Packet {
        key: p.key,
        token: p.token,
        result,
        payload,
    }
}
