//! The non-blocking system calls that carry out an operation once its
//! descriptor is ready. Each returns what io_uring would put in a CQE:
//! bytes (or a new fd), or a negated errno; `-EAGAIN` means "not yet".

use std::io;
use std::os::fd::RawFd;

use crate::port::Buf;
use crate::sys::fd::FdKind;
use crate::sys::inflight::Scratch;
use crate::sys::op::Op;

fn errno() -> i32 {
    -io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn res(r: isize) -> i32 {
    if r < 0 {
        match errno() {
            e if e == -libc::EWOULDBLOCK => -libc::EAGAIN,
            e => e,
        }
    } else {
        r.min(i32::MAX as isize) as i32
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attempts `op` on `fd`, a descriptor of `kind`, now. The pointers handed
/// to the kernel name the operation's own buffer (within its capacity) and
/// scratch, which the caller holds exclusively for the duration of the call.
/// A [`FdKind::Pipe`] must be non-blocking (a pipe's `recv` is a `read`).
pub(crate) fn perform(
    op: Op,
    kind: FdKind,
    fd: RawFd,
    s: &mut Scratch,
    buf: &mut Option<Buf>,
) -> i32 {
    let (rp, rn) = buf
        .as_mut()
        .map_or((std::ptr::null_mut(), 0), Buf::write_ptr);
    let (wp, wn) = buf
        .as_ref()
        .map_or((std::ptr::null(), 0), |b| (b.read_ptr(), b.len()));
    // SAFETY: (every call below) pointers and lengths come from the
    // operation's buffer and scratch as described above; the kernel is done
    // with them when the call returns.
    unsafe {
        match op {
            Op::ReadAt(0) => res(libc::read(fd, rp.cast(), rn)),
            Op::ReadAt(off) => res(libc::pread(fd, rp.cast(), rn, off as libc::off_t)),
            Op::WriteAt(0) => res(libc::write(fd, wp.cast(), wn)),
            Op::WriteAt(off) => res(libc::pwrite(fd, wp.cast(), wn, off as libc::off_t)),
            Op::Recv if kind == FdKind::Pipe => res(libc::read(fd, rp.cast(), rn)),
            Op::Send if kind == FdKind::Pipe => res(libc::write(fd, wp.cast(), wn)),
            // On a datagram socket MSG_TRUNC makes the result the datagram's
            // whole length, so that truncation shows.
            Op::Recv if kind == FdKind::Datagram => res(libc::recv(
                fd,
                rp.cast(),
                rn,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )),
            Op::Recv => res(libc::recv(fd, rp.cast(), rn, libc::MSG_DONTWAIT)),
            Op::Send => res(libc::send(
                fd,
                wp.cast(),
                wn,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )),
            Op::RecvFrom => {
                s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                s.msg.msg_flags = 0;
                res(libc::recvmsg(fd, &mut s.msg, libc::MSG_DONTWAIT))
            }
            Op::SendTo => res(libc::sendmsg(
                fd,
                &s.msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )),
            Op::Accept => {
                s.addrlen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                res(libc::accept4(
                    fd,
                    (&mut s.addr as *mut libc::sockaddr_storage).cast(),
                    &mut s.addrlen,
                    libc::SOCK_CLOEXEC,
                ) as isize)
            }
            Op::Connect if !s.started => {
                let r = libc::connect(
                    fd,
                    (&s.addr as *const libc::sockaddr_storage).cast(),
                    s.addrlen,
                );
                if r == 0 {
                    return 0;
                }
                match errno() {
                    e if e == -libc::EINPROGRESS || e == -libc::EAGAIN => {
                        s.started = true;
                        -libc::EAGAIN
                    }
                    e => e,
                }
            }
            Op::Connect => {
                // Writable: the connection attempt has ended; SO_ERROR says how.
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                if libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                ) < 0
                {
                    return errno();
                }
                if err == 0 {
                    // A spurious writability edge before the handshake ends
                    // leaves SO_ERROR 0 too: only a connected peer counts.
                    let mut peer: libc::sockaddr_storage = std::mem::zeroed();
                    let mut plen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    if libc::getpeername(
                        fd,
                        (&mut peer as *mut libc::sockaddr_storage).cast(),
                        &mut plen,
                    ) < 0
                    {
                        return -libc::EAGAIN;
                    }
                    0
                } else {
                    -err
                }
            }
            Op::Shutdown(how) => res(libc::shutdown(fd, how) as isize),
            Op::PollReadable => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                match libc::poll(&mut p, 1, 0) {
                    1 => p.revents as i32,
                    0 => -libc::EAGAIN,
                    _ => errno(),
                }
            }
            Op::Timer(_) => -libc::EINVAL,
        }
    }
}

/// Reads (or writes) a file at an offset if the page cache can serve it at
/// once (`preadv2`/`pwritev2` with `RWF_NOWAIT`); `-EAGAIN` when it would
/// block on the device, `-EOPNOTSUPP` where the file system cannot say.
/// The buffer is the operation's own, held exclusively for the call.
pub(crate) fn file_nowait(op: Op, fd: RawFd, buf: &mut Option<Buf>) -> i32 {
    let Some(b) = buf.as_mut() else {
        return -libc::EINVAL;
    };
    // SAFETY: the iovec names the operation's buffer (its capacity for a
    // read, its data for a write), alive and unshared for the call.
    unsafe {
        match op {
            Op::ReadAt(off) => {
                let (p, n) = b.write_ptr();
                let iov = libc::iovec {
                    iov_base: p.cast(),
                    iov_len: n,
                };
                res(libc::preadv2(
                    fd,
                    &iov,
                    1,
                    off as libc::off_t,
                    libc::RWF_NOWAIT,
                ))
            }
            Op::WriteAt(off) => {
                let iov = libc::iovec {
                    iov_base: b.read_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                };
                res(libc::pwritev2(
                    fd,
                    &iov,
                    1,
                    off as libc::off_t,
                    libc::RWF_NOWAIT,
                ))
            }
            _ => -libc::EINVAL,
        }
    }
}

/// Receives up to `hdrs.len()` datagrams at once, without blocking
/// (`recvmmsg` with `MSG_DONTWAIT`): how many it filled, or a negated errno.
/// The headers' pointers must name memory the caller holds exclusively.
pub(crate) fn recvmmsg(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> i32 {
    // SAFETY: the headers and what they point to are the caller's, alive and
    // unshared for the call; the count is the slice's length.
    res(unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    } as isize)
}
