//! Winsock with overlapped I/O on a completion port: sockets, association,
//! starting an operation, `CancelIoEx`, `SetFileCompletionNotificationModes`,
//! `closesocket`, and what a packet copies back when it is taken. The calls
//! themselves are in [`crate::overlapped`] (`WSARecv`...), [`crate::accept`]
//! (`AcceptEx`) and [`crate::winsock_ext`] (`ConnectEx`, `WSAIoctl`...).
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

pub(crate) fn find_or_add(fd: i32) -> Arc<Sock> {
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
    pub(crate) fn assoc(&self) -> Option<Arc<Assoc>> {
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
    /// `AcceptEx`'s receive of the connection's first data.
    AcceptData {
        layout: crate::accept::Layout,
        peer: Option<std::net::SocketAddr>,
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

/// What taking a packet came to.
pub enum Completion {
    /// The packet for the caller: bytes and Windows status (0: success).
    Done(u32, u32),
    /// The packet was one step of an operation that goes on (`AcceptEx`
    /// receiving its first data): nothing for the caller yet.
    Again,
}

/// Finishes a packet for the C side: copies a receive's bytes into the
/// caller's buffers (and the sender's address), puts an accepted connection
/// on the accept socket, fills the OVERLAPPED's `Internal`/`InternalHigh`.
pub fn complete(mut packet: Packet<Token>) -> Completion {
    let (mut bytes, mut status) = match &packet.result {
        Ok(n) => (*n, 0),
        Err(e) => (0, error::from_io(e)),
    };
    let Some(op) = packet.token.op.take() else {
        return Completion::Done(bytes as u32, status);
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
                let layout = crate::accept::Layout {
                    accept: *accept,
                    out: *out,
                    data: *data,
                    local: *local,
                    remote: *remote,
                };
                match crate::accept::accepted(&op.sock, fd, peer, ov, layout) {
                    Ok(true) => return Completion::Again,
                    Ok(false) => {}
                    Err(e) => status = e,
                }
                bytes = 0;
            }
        }
        Kind::AcceptData { layout, peer } => {
            let n = crate::accept::first_data(&mut packet, layout, *peer, status);
            bytes = n;
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
    Completion::Done(bytes as u32, status)
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
            let Completion::Done(n, status) = complete(packet) else {
                return error::fail(code::WSA_IO_PENDING) - 1;
            };
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
