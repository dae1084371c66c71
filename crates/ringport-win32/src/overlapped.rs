//! The overlapped Winsock calls: `WSARecv`, `WSASend`, `WSARecvFrom`,
//! `WSASendTo`. With an OVERLAPPED they start an operation on the socket's
//! port (see [`crate::winsock::start`]); without one, `WSARecv`/`WSASend`
//! run at once as one `recvmsg`/`sendmsg`.
//!
//! Buffers: a send copies the caller's bytes now; a receive lands in a
//! buffer of ringport's and is copied into the caller's `WSABUF`s when its
//! packet is taken from the port (the `WSABUF` array itself may go away as
//! soon as the call returns, as on Windows; the memory it points to must
//! stay until the completion is reported).

use crate::error::{self, code};
use crate::ffi;
use crate::port::Overlapped;
use crate::winsock::{errno, start, Kind, Start, WsaBuf, SOCKET_ERROR};

/// Reads the caller's WSABUF array into (pointer, length) pairs.
///
/// # Safety
/// `bufs` points to `count` WSABUFs.
unsafe fn read_bufs(bufs: *const WsaBuf, count: u32) -> Vec<(usize, usize)> {
    if bufs.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller's promise.
    let s = unsafe { std::slice::from_raw_parts(bufs, count as usize) };
    s.iter().map(|b| (b.buf as usize, b.len as usize)).collect()
}

fn gather(bufs: &[(usize, usize)]) -> Vec<u8> {
    let total = bufs.iter().map(|b| b.1).sum();
    let mut v = Vec::with_capacity(total);
    for &(ptr, len) in bufs {
        if len > 0 {
            // SAFETY: the caller's WSABUF names `len` readable bytes.
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) });
        }
    }
    v
}

fn total(bufs: &[(usize, usize)]) -> usize {
    bufs.iter().map(|b| b.1).sum()
}

/// A synchronous `WSARecv`/`WSASend` (no OVERLAPPED): one `recvmsg`/`sendmsg`.
fn sync_io(fd: i32, bufs: &[(usize, usize)], send: bool, done: *mut u32) -> i32 {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|&(p, l)| libc::iovec {
            iov_base: p as *mut libc::c_void,
            iov_len: l,
        })
        .collect();
    // SAFETY: a zeroed msghdr is valid; we set the iovecs.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    let n = crate::port::blocking(|| {
        // SAFETY: the iovecs name the caller's buffers, valid for the call.
        unsafe {
            if send {
                libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
            } else {
                libc::recvmsg(fd, &mut msg, 0)
            }
        }
    });
    if n < 0 {
        return error::fail(error::from_errno(errno())) - 1;
    }
    if !done.is_null() {
        // SAFETY: the caller's out pointer.
        unsafe { done.write(n as u32) };
    }
    0
}

/// `WSARecv`. Completion routines are not supported (`WSAEOPNOTSUPP`).
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn WSARecv(
    s: usize,
    bufs: *const WsaBuf,
    count: u32,
    received: *mut u32,
    _flags: *mut u32,
    ov: *mut Overlapped,
    routine: *const libc::c_void,
) -> i32 {
    ffi::guard(SOCKET_ERROR, || {
        if !routine.is_null() {
            return error::fail(code::WSAEOPNOTSUPP) - 1;
        }
        // SAFETY: the caller's promise.
        let bufs = unsafe { read_bufs(bufs, count) };
        if ov.is_null() {
            return sync_io(s as i32, &bufs, false, received);
        }
        let cap = total(&bufs);
        start(
            s as i32,
            ov,
            Start::Recv(cap),
            Kind::Recv { bufs, from: None },
            received,
        )
    })
}

/// `WSASend`: the caller's bytes are copied when it is called.
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn WSASend(
    s: usize,
    bufs: *const WsaBuf,
    count: u32,
    sent: *mut u32,
    _flags: u32,
    ov: *mut Overlapped,
    routine: *const libc::c_void,
) -> i32 {
    ffi::guard(SOCKET_ERROR, || {
        if !routine.is_null() {
            return error::fail(code::WSAEOPNOTSUPP) - 1;
        }
        // SAFETY: the caller's promise.
        let bufs = unsafe { read_bufs(bufs, count) };
        if ov.is_null() {
            return sync_io(s as i32, &bufs, true, sent);
        }
        start(s as i32, ov, Start::Send(gather(&bufs)), Kind::Plain, sent)
    })
}

/// `WSARecvFrom` (overlapped only). The sender's address is written to
/// `from` (room in `*from_len`) when the packet is taken.
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn WSARecvFrom(
    s: usize,
    bufs: *const WsaBuf,
    count: u32,
    received: *mut u32,
    _flags: *mut u32,
    from: *mut libc::sockaddr,
    from_len: *mut i32,
    ov: *mut Overlapped,
    routine: *const libc::c_void,
) -> i32 {
    ffi::guard(SOCKET_ERROR, || {
        if !routine.is_null() || ov.is_null() {
            return error::fail(code::WSAEOPNOTSUPP) - 1;
        }
        // SAFETY: the caller's promise.
        let bufs = unsafe { read_bufs(bufs, count) };
        let cap = total(&bufs);
        let from = (!from.is_null()).then_some((from as usize, from_len as usize));
        start(
            s as i32,
            ov,
            Start::RecvFrom(cap),
            Kind::Recv { bufs, from },
            received,
        )
    })
}

/// Reads a caller's `sockaddr`.
pub(crate) fn read_sockaddr(addr: *const libc::sockaddr, len: i32) -> Option<std::net::SocketAddr> {
    if addr.is_null() || len <= 0 {
        return None;
    }
    // SAFETY: the caller's sockaddr of `len` bytes.
    let b = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
    ringport::rio::read_addr(b)
}

/// `WSASendTo` (overlapped only): the bytes are copied when it is called.
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn WSASendTo(
    s: usize,
    bufs: *const WsaBuf,
    count: u32,
    sent: *mut u32,
    _flags: u32,
    to: *const libc::sockaddr,
    to_len: i32,
    ov: *mut Overlapped,
    routine: *const libc::c_void,
) -> i32 {
    ffi::guard(SOCKET_ERROR, || {
        if !routine.is_null() || ov.is_null() {
            return error::fail(code::WSAEOPNOTSUPP) - 1;
        }
        let Some(to) = read_sockaddr(to, to_len) else {
            return error::fail(code::WSAEFAULT) - 1;
        };
        // SAFETY: the caller's promise.
        let bufs = unsafe { read_bufs(bufs, count) };
        start(
            s as i32,
            ov,
            Start::SendTo(gather(&bufs), to),
            Kind::Plain,
            sent,
        )
    })
}
