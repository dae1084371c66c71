//! Winsock with overlapped I/O on a completion port: sockets, association,
//! `WSARecv`/`WSASend`/`WSARecvFrom`/`WSASendTo`, `CancelIoEx`,
//! `SetFileCompletionNotificationModes`, `closesocket`, and what a packet
//! copies back when it is taken. `AcceptEx`, `ConnectEx` and `WSAIoctl` are
//! in [`crate::winsock_ext`].
//!
//! A `SOCKET` is its Linux descriptor. Associating it with a port gives
//! ringport a duplicate of it (same socket), so the caller's descriptor stays
//! usable for `bind`, `setsockopt`, `getsockname`; on the epoll backend the
//! socket is made non-blocking by the association.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use ringport::{Handle, OpId, Packet, Payload, Started};

use crate::error::{self, code};
use crate::port::{Overlapped, Port, Token};
use crate::{ffi, handles};

/// `SOCKET_ERROR`.
pub const SOCKET_ERROR: i32 = -1;
/// `INVALID_SOCKET`.
pub const INVALID_SOCKET: usize = usize::MAX;
/// `STATUS_PENDING`, what an OVERLAPPED's `Internal` holds while in flight.
const STATUS_PENDING: usize = 0x103;

/// `WSABUF`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WsaBuf {
    pub len: u32,
    pub buf: *mut u8,
}

/// A socket's association with a port.
pub struct Assoc {
    pub port: Arc<Port>,
    pub handle: Handle<Token>,
}

/// What this crate knows of a socket.
#[derive(Default)]
pub struct Sock {
    /// The port it is associated with (taken away by `closesocket`, which
    /// cancels its operations).
    assoc: RwLock<Option<Arc<Assoc>>>,
    /// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`.
    skip: std::sync::atomic::AtomicBool,
    /// Operations in flight, by OVERLAPPED, for `CancelIoEx`.
    ops: Mutex<HashMap<usize, OpId>>,
}

type Socks = RwLock<HashMap<i32, Arc<Sock>>>;

fn socks() -> &'static Socks {
    static SOCKS: OnceLock<Socks> = OnceLock::new();
    SOCKS.get_or_init(Default::default)
}

fn find(fd: i32) -> Option<Arc<Sock>> {
    socks()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&fd)
        .cloned()
}

fn find_or_add(fd: i32) -> Arc<Sock> {
    if let Some(s) = find(fd) {
        return s;
    }
    socks()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(fd)
        .or_default()
        .clone()
}

impl Sock {
    fn assoc(&self) -> Option<Arc<Assoc>> {
        self.assoc
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, HashMap<usize, OpId>> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a packet copies back into the caller's memory when it is taken.
#[derive(Clone)]
pub struct IoOp {
    pub(crate) sock: Arc<Sock>,
    pub(crate) kind: Kind,
}

/// The kinds of copy-out.
#[derive(Clone)]
pub(crate) enum Kind {
    /// Nothing to copy (send, connect).
    Plain,
    /// A receive: the caller's buffers, and where the sender's address goes
    /// (`sockaddr*`, `int*` length) for `WSARecvFrom`.
    Recv {
        bufs: Vec<(usize, usize)>,
        from: Option<(usize, usize)>,
    },
    /// `AcceptEx`: the accept socket, and the output buffer's layout.
    Accept {
        accept: i32,
        out: usize,
        data: u32,
        local: u32,
        remote: u32,
    },
}

/// Duplicates `fd` (close-on-exec) for ringport to own.
pub(crate) fn dup(fd: i32) -> Result<OwnedFd, u32> {
    // SAFETY: F_DUPFD_CLOEXEC takes no pointers.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(error::from_errno(errno()));
    }
    // SAFETY: `new` was just made and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Associates socket `fd` with `port` under `key`.
pub fn associate(fd: i32, port: &Arc<Port>, key: usize) -> Result<(), u32> {
    let sock = find_or_add(fd);
    let mut slot = sock.assoc.write().unwrap_or_else(PoisonError::into_inner);
    if slot.is_some() {
        return Err(code::ERROR_INVALID_PARAMETER);
    }
    let handle = port
        .cp
        .associate(dup(fd)?, key as u64)
        .map_err(|e| error::from_ringport(&e))?;
    *slot = Some(Arc::new(Assoc {
        port: port.clone(),
        handle,
    }));
    Ok(())
}

/// Finishes a packet for the C side: copies a receive's bytes into the
/// caller's buffers (and the sender's address), puts an accepted connection
/// on the accept socket, fills the OVERLAPPED's `Internal`/`InternalHigh`.
/// Returns the bytes and the Windows status (0: success).
pub fn complete(mut packet: Packet<Token>) -> (u32, u32) {
    let (mut bytes, mut status) = match &packet.result {
        Ok(n) => (*n, 0),
        Err(e) => (0, error::from_io(e)),
    };
    let Some(op) = packet.token.op.take() else {
        return (bytes as u32, status);
    };
    let ov = packet.token.ov;
    op.sock.ops().remove(&ov);
    match &op.kind {
        Kind::Plain => {}
        Kind::Recv { bufs, from } => {
            // The peer first: taking the buffer takes the whole payload.
            if let (Some((addr, len)), Some(peer)) = (from, packet.peer()) {
                write_sockaddr(*addr, *len, peer);
            }
            if let Some(buf) = packet.take_buf() {
                let data = buf.as_slice();
                let n = match status {
                    0 => bytes.min(data.len()),
                    code::WSAEMSGSIZE => data.len(),
                    _ => 0,
                };
                scatter(bufs, &data[..n]);
                bytes = n;
            }
        }
        Kind::Accept {
            accept,
            out,
            data,
            local,
            remote,
        } => {
            if let Payload::Accepted(fd, peer) = std::mem::take(&mut packet.payload) {
                status = crate::winsock_ext::finish_accept(
                    fd, peer, *accept, *out, *data, *local, *remote,
                );
                bytes = 0;
            }
        }
    }
    if ov != 0 {
        let o = ov as *mut Overlapped;
        // SAFETY: the caller's OVERLAPPED stays valid until its completion
        // is reported (Windows' contract), which is now.
        unsafe {
            (*o).internal = status as usize;
            (*o).internal_high = bytes;
        }
    }
    (bytes as u32, status)
}

/// Copies `data` into the caller's buffers, in order.
fn scatter(bufs: &[(usize, usize)], mut data: &[u8]) {
    for &(ptr, len) in bufs {
        if data.is_empty() {
            break;
        }
        let n = len.min(data.len());
        // SAFETY: the WSABUFs given to the receive name caller memory that
        // stays valid until the completion is reported (now); n <= len.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr as *mut u8, n) };
        data = &data[n..];
    }
}

/// Writes `addr` to a `sockaddr*` whose room is in the `int*` at `len`.
pub(crate) fn write_sockaddr(addr: usize, len: usize, peer: std::net::SocketAddr) {
    if addr == 0 {
        return;
    }
    let mut tmp = [0u8; 128];
    let Ok(n) = ringport::rio::write_addr(&mut tmp, peer) else {
        return;
    };
    let room = if len == 0 {
        n
    } else {
        // SAFETY: the caller's int* stays valid until completion.
        unsafe { *(len as *const i32) }.max(0) as usize
    };
    let copy = n.min(room);
    // SAFETY: the caller's sockaddr has `room` bytes, valid until completion.
    unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), addr as *mut u8, copy) };
    if len != 0 {
        // SAFETY: as above.
        unsafe { *(len as *mut i32) = n as i32 };
    }
}

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

/// An overlapped operation as it is started on a handle.
pub(crate) enum Start {
    Recv(usize),
    Send(Vec<u8>),
    RecvFrom(usize),
    SendTo(Vec<u8>, std::net::SocketAddr),
    Accept,
    Connect(std::net::SocketAddr),
}

/// Starts an overlapped operation on socket `fd`: SOCKET_ERROR with
/// `WSA_IO_PENDING` once it is in flight; 0 when it completed at once under
/// skip-on-success (then `*done` gets the bytes).
pub(crate) fn start(fd: i32, ov: *mut Overlapped, what: Start, kind: Kind, done: *mut u32) -> i32 {
    let Some(sock) = find(fd) else {
        return error::fail(code::WSAEINVAL) - 1;
    };
    let Some(assoc) = sock.assoc() else {
        // Overlapped I/O here always completes to a port.
        return error::fail(code::WSAEINVAL) - 1;
    };
    if !ov.is_null() {
        // SAFETY: the caller's OVERLAPPED, valid until completion.
        unsafe {
            (*ov).internal = STATUS_PENDING;
            (*ov).internal_high = 0;
        }
    }
    let token = Token {
        ov: ov as usize,
        op: Some(Box::new(IoOp {
            sock: sock.clone(),
            kind,
        })),
    };
    let skip = sock.skip.load(std::sync::atomic::Ordering::Relaxed);
    let h = &assoc.handle;
    // Held across the start so that the completion, which removes the entry,
    // cannot run before it is there.
    let mut ops = sock.ops();
    let started = match what {
        Start::Recv(cap) if skip => h.recv_now(Vec::with_capacity(cap), token),
        Start::Recv(cap) => h.recv(Vec::with_capacity(cap), token).map(Started::Pending),
        Start::Send(v) if skip => h.send_now(v, token),
        Start::Send(v) => h.send(v, token).map(Started::Pending),
        Start::RecvFrom(cap) if skip => h.recv_from_now(Vec::with_capacity(cap), token),
        Start::RecvFrom(cap) => h
            .recv_from(Vec::with_capacity(cap), token)
            .map(Started::Pending),
        Start::SendTo(v, to) if skip => h.send_to_now(v, to, token),
        Start::SendTo(v, to) => h.send_to(v, to, token).map(Started::Pending),
        Start::Accept => h.accept(token).map(Started::Pending),
        Start::Connect(to) => h.connect(to, token).map(Started::Pending),
    };
    match started {
        Ok(Started::Pending(id)) => {
            ops.insert(ov as usize, id);
            error::fail(code::WSA_IO_PENDING) - 1
        }
        Ok(Started::Done(packet)) => {
            drop(ops);
            let (n, status) = complete(packet);
            if !done.is_null() {
                // SAFETY: the caller's out pointer.
                unsafe { done.write(n) };
            }
            if status == 0 {
                0
            } else {
                error::fail(status) - 1
            }
        }
        Err(e) => error::fail(error::from_ringport(&e)) - 1,
    }
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

/// `CancelIoEx`: cancels one operation (by OVERLAPPED) or, with NULL, all
/// of a socket's. Each still completes, with `ERROR_OPERATION_ABORTED`.
/// `ERROR_NOT_FOUND` when nothing matched.
#[no_mangle]
pub extern "C" fn CancelIoEx(handle: usize, ov: *mut Overlapped) -> i32 {
    ffi::guard(0, || {
        if !handles::is_fd(handle) {
            return error::fail(code::ERROR_INVALID_HANDLE);
        }
        let Some(sock) = find(handle as i32) else {
            return error::fail(code::ERROR_NOT_FOUND);
        };
        let Some(assoc) = sock.assoc() else {
            return error::fail(code::ERROR_NOT_FOUND);
        };
        let r = if ov.is_null() {
            if sock.ops().is_empty() {
                return error::fail(code::ERROR_NOT_FOUND);
            }
            assoc.handle.cancel_all()
        } else {
            let id = sock.ops().get(&(ov as usize)).copied();
            match id {
                Some(id) => assoc.handle.cancel(id),
                None => return error::fail(code::ERROR_NOT_FOUND),
            }
        };
        match r {
            Ok(()) => 1,
            Err(ringport::Error::InvalidArgument(_)) => error::fail(code::ERROR_NOT_FOUND),
            Err(e) => error::fail(error::from_ringport(&e)),
        }
    })
}

/// `CancelIo`: all of the socket's operations.
#[no_mangle]
pub extern "C" fn CancelIo(handle: usize) -> i32 {
    CancelIoEx(handle, std::ptr::null_mut())
}

/// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`.
pub const FILE_SKIP_COMPLETION_PORT_ON_SUCCESS: u8 = 1;

/// `SetFileCompletionNotificationModes`: with
/// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`, an operation that completes at
/// once returns 0 from `WSARecv`/`WSASend`/... and queues no packet.
#[no_mangle]
pub extern "C" fn SetFileCompletionNotificationModes(handle: usize, flags: u8) -> i32 {
    ffi::guard(0, || {
        if !handles::is_fd(handle) {
            return error::fail(code::ERROR_INVALID_HANDLE);
        }
        let sock = find_or_add(handle as i32);
        sock.skip.store(
            flags & FILE_SKIP_COMPLETION_PORT_ON_SUCCESS != 0,
            std::sync::atomic::Ordering::Relaxed,
        );
        1
    })
}

/// `closesocket`: cancels the socket's overlapped operations (each still
/// completes, aborted), closes its request queue, and closes it.
#[no_mangle]
pub extern "C" fn closesocket(s: usize) -> i32 {
    ffi::guard(SOCKET_ERROR, || {
        if !handles::is_fd(s) {
            return error::fail(code::WSAENOTSOCK) - 1;
        }
        let fd = s as i32;
        let sock = socks()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&fd);
        if let Some(sock) = sock {
            let assoc = sock
                .assoc
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(assoc);
        }
        crate::rio::close_socket(fd);
        // SAFETY: closing a descriptor the caller owns and gives up.
        if unsafe { libc::close(fd) } < 0 {
            return error::fail(error::from_errno(errno())) - 1;
        }
        0
    })
}

/// Forgets what was known of descriptor `fd` without closing it (a socket
/// that `AcceptEx` puts a new connection on).
pub(crate) fn forget(fd: i32) {
    let sock = socks()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&fd);
    drop(sock);
}
