//! `AcceptEx` and `GetAcceptExSockaddrs`.
//!
//! ringport's accept makes a new socket; Windows puts the connection on a
//! socket the caller made beforehand. When the accept completes, the new
//! connection is moved onto the caller's descriptor (`dup2`), so the
//! caller's `SOCKET` is the connection from then on. The output buffer gets
//! the first data (when asked for), then the local and the remote address,
//! each as a `sockaddr` in its `dwLocalAddressLength`/`dwRemoteAddressLength`
//! room; `GetAcceptExSockaddrs` finds them there.
//!
//! With `dwReceiveDataLength` > 0, the accept completes, as on Windows, only
//! once the first data has come: the connection is associated with the
//! listener's port (under the listener's key) for one receive into a
//! buffer of ringport's, and that receive's packet, with the data copied into
//! the output buffer, is the one `GetQueuedCompletionStatus` returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ringport::{Handle, Packet};

use crate::error::{self, code};
use crate::ffi;
use crate::port::{Overlapped, Token};
use crate::winsock::{self, IoOp, Kind, Sock, Start};

/// Where `AcceptEx` puts what it gives back.
#[derive(Clone, Copy)]
pub struct Layout {
    /// The caller's accept socket.
    pub accept: i32,
    /// The output buffer.
    pub out: usize,
    /// Room for the first data at its start.
    pub data: u32,
    /// Room for the local address after the data.
    pub local: u32,
    /// Room for the remote address after that.
    pub remote: u32,
}

/// The one-receive associations of connections waiting for their first data.
type Waiting = Mutex<HashMap<i32, Handle<Token>>>;

fn waiting() -> &'static Waiting {
    static W: OnceLock<Waiting> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// The accept of `listen` finished with connection `fd`: moves it onto the
/// caller's socket, and either writes the addresses (returns `Ok(false)`:
/// done) or starts the receive of the first data (`Ok(true)`: the packet
/// for the caller comes later).
pub(crate) fn accepted(
    listen: &Arc<Sock>,
    fd: OwnedFd,
    peer: Option<SocketAddr>,
    ov: usize,
    l: Layout,
) -> Result<bool, u32> {
    // SAFETY: dup2 takes no pointers; it replaces the caller's accept socket
    // by the new connection, atomically.
    if unsafe { libc::dup2(fd.as_raw_fd(), l.accept) } < 0 {
        return Err(error::from_errno(winsock::errno()));
    }
    winsock::forget(l.accept);
    drop(fd);
    if l.data == 0 {
        write_addresses(l, peer);
        return Ok(false);
    }
    let assoc = listen.assoc().ok_or(code::ERROR_OPERATION_ABORTED)?;
    let handle = assoc
        .port
        .cp
        .associate(winsock::dup(l.accept)?, assoc.handle.key())
        .map_err(|e| error::from_ringport(&e))?;
    let token = Token {
        ov,
        op: Some(Box::new(IoOp {
            sock: listen.clone(),
            kind: Kind::AcceptData { layout: l, peer },
        })),
    };
    // Held across the start, so that the completion, which takes the handle
    // out, cannot run before it is in.
    let mut w = waiting().lock().unwrap_or_else(PoisonError::into_inner);
    handle
        .recv(Vec::with_capacity(l.data as usize), token)
        .map_err(|e| error::from_ringport(&e))?;
    w.insert(l.accept, handle);
    Ok(true)
}

/// The first data came (or the receive failed): copies it to the output
/// buffer, writes the addresses, ends the one-receive association. Returns
/// the bytes received.
pub(crate) fn first_data(
    packet: &mut Packet<Token>,
    l: &Layout,
    peer: Option<SocketAddr>,
    status: u32,
) -> usize {
    let handle = waiting()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&l.accept);
    let mut n = 0;
    if let Some(buf) = packet.take_buf() {
        if status == 0 {
            n = buf.len().min(l.data as usize);
            // SAFETY: AcceptEx's output buffer has `data` bytes of room at
            // its start, valid until the completion is reported (now).
            unsafe { std::ptr::copy_nonoverlapping(buf.as_slice().as_ptr(), l.out as *mut u8, n) };
        }
    }
    drop(handle);
    write_addresses(*l, peer);
    n
}

/// Writes the local and remote addresses after the data.
fn write_addresses(l: Layout, peer: Option<SocketAddr>) {
    if l.out == 0 {
        return;
    }
    // SAFETY: a zeroed sockaddr_storage is valid; getsockname fills it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut n = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss has n bytes of room.
    let r =
        unsafe { libc::getsockname(l.accept, &mut ss as *mut _ as *mut libc::sockaddr, &mut n) };
    let base = l.out + l.data as usize;
    if r == 0 {
        let room = (l.local as usize).min(n as usize);
        // SAFETY: AcceptEx's output buffer has data + local + remote bytes,
        // valid until the completion is reported (now).
        unsafe {
            std::ptr::copy_nonoverlapping(&ss as *const _ as *const u8, base as *mut u8, room)
        };
    }
    if let Some(peer) = peer {
        let mut len = l.remote as i32;
        winsock::write_sockaddr(base + l.local as usize, &mut len as *mut i32 as usize, peer);
    }
}

/// `AcceptEx`: FALSE with `ERROR_IO_PENDING` once the accept is in flight;
/// its packet comes with the listener's key. The accepted connection
/// replaces `accept` (the socket the caller made for it) when the packet is
/// taken; with `receive_len` > 0 the packet waits for the first data.
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn AcceptEx(
    listen: usize,
    accept: usize,
    out: *mut libc::c_void,
    receive_len: u32,
    local_len: u32,
    remote_len: u32,
    received: *mut u32,
    ov: *mut Overlapped,
) -> i32 {
    ffi::guard(0, || {
        if ov.is_null() || (out.is_null() && receive_len > 0) {
            return error::fail(code::WSAEINVAL);
        }
        let kind = Kind::Accept {
            accept: accept as i32,
            out: out as usize,
            data: receive_len,
            local: local_len,
            remote: remote_len,
        };
        let r = winsock::start(listen as i32, ov, Start::Accept, kind, received);
        i32::from(r == 0)
    })
}

/// `GetAcceptExSockaddrs`: where `AcceptEx` put the two addresses.
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn GetAcceptExSockaddrs(
    out: *mut libc::c_void,
    receive_len: u32,
    local_len: u32,
    _remote_len: u32,
    local: *mut *mut libc::sockaddr,
    local_size: *mut i32,
    remote: *mut *mut libc::sockaddr,
    remote_size: *mut i32,
) {
    ffi::guard((), || {
        let base = out as usize + receive_len as usize;
        let size = |p: usize| {
            // SAFETY: the address AcceptEx wrote there starts with its family.
            match unsafe { *(p as *const u16) } as i32 {
                libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>() as i32,
                _ => std::mem::size_of::<libc::sockaddr_in>() as i32,
            }
        };
        let r = base + local_len as usize;
        // SAFETY: the caller's out pointers.
        unsafe {
            if !local.is_null() {
                local.write(base as *mut libc::sockaddr);
            }
            if !local_size.is_null() {
                local_size.write(size(base));
            }
            if !remote.is_null() {
                remote.write(r as *mut libc::sockaddr);
            }
            if !remote_size.is_null() {
                remote_size.write(size(r));
            }
        }
    })
}
