//! Operations as io_uring submission entries: the opcode, the flags, and
//! the memory each entry points the kernel at.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::ring::poll_first;
use crate::port::Buf;
use crate::sys::fd::FdKind;
use crate::sys::inflight::{Operation, Scratch};
use crate::sys::op::Op;

fn len32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// The SQE for `p`, pointing only into its buffer's heap memory (within its
/// capacity) and its slot's scratch, both kept by the in-flight table.
pub(super) fn sqe<T>(p: &mut Operation<T>, s: &mut Scratch) -> squeue::Entry {
    let entry = entry(p, s);
    // A registered descriptor's slot is its number, which the entry already
    // carries: the flag makes the kernel read it as the slot.
    if p.fixed {
        entry.flags(squeue::Flags::FIXED_FILE)
    } else {
        entry
    }
}

fn entry<T>(p: &mut Operation<T>, s: &mut Scratch) -> squeue::Entry {
    let fd = types::Fd(p.fd);
    let prio = if p.poll_first { poll_first() } else { 0 };
    let buf = &mut p.buf;
    let read = |b: &mut Option<Buf>| b.as_mut().map_or((std::ptr::null_mut(), 0), Buf::write_ptr);
    let write = |b: &Option<Buf>| {
        b.as_ref()
            .map_or((std::ptr::null(), 0), |b| (b.read_ptr(), b.len()))
    };
    // Offset -1: a pipe's current position (it has none).
    const STREAM: u64 = u64::MAX;
    match (p.op, p.kind) {
        (Op::ReadAt(off), _) => {
            let (b, n) = read(buf);
            opcode::Read::new(fd, b, len32(n)).offset(off).build()
        }
        (Op::WriteAt(off), _) => {
            let (b, n) = write(buf);
            opcode::Write::new(fd, b, len32(n)).offset(off).build()
        }
        (Op::Recv, FdKind::Pipe) => {
            let (b, n) = read(buf);
            opcode::Read::new(fd, b, len32(n)).offset(STREAM).build()
        }
        (Op::Send, FdKind::Pipe) => {
            let (b, n) = write(buf);
            opcode::Write::new(fd, b, len32(n)).offset(STREAM).build()
        }
        (Op::Recv, kind) => {
            let (b, n) = read(buf);
            // On a datagram socket the result is then the datagram's whole
            // length, so that truncation shows.
            let flags = if kind == FdKind::Datagram {
                libc::MSG_TRUNC
            } else {
                0
            };
            opcode::Recv::new(fd, b, len32(n))
                .flags(flags)
                .ioprio(prio)
                .build()
        }
        (Op::Send, _) => {
            let (b, n) = write(buf);
            opcode::Send::new(fd, b, len32(n))
                .flags(libc::MSG_NOSIGNAL)
                .ioprio(prio)
                .build()
        }
        (Op::RecvFrom, _) => opcode::RecvMsg::new(fd, &mut s.msg).ioprio(prio).build(),
        (Op::SendTo, _) => opcode::SendMsg::new(fd, &s.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .ioprio(prio)
            .build(),
        (Op::Accept, _) => opcode::Accept::new(
            fd,
            (&mut s.addr as *mut libc::sockaddr_storage).cast(),
            &mut s.addrlen,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build(),
        // A connect issued again finds the attempt under way (EALREADY):
        // wait for it to end instead, and read SO_ERROR (see `complete`).
        (Op::Connect, _) if p.reissues > 0 => {
            opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
        }
        (Op::Connect, _) => opcode::Connect::new(
            fd,
            (&s.addr as *const libc::sockaddr_storage).cast(),
            s.addrlen,
        )
        .build(),
        (Op::Shutdown(how), _) => opcode::Shutdown::new(fd, how).build(),
        (Op::Timer(_), _) => opcode::Timeout::new(&s.ts).build(),
        (Op::PollReadable, _) => opcode::PollAdd::new(fd, libc::POLLIN as u32).build(),
    }
}

/// How a connection attempt ended (`SO_ERROR`), as a CQE result.
pub(super) fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a live int and its length for getsockopt to fill in.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match r {
        0 => -err,
        _ => -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    }
}
