//! The rest of Winsock: start-up, `WSASocket`, the `bind`/`listen`/
//! `connect` that set `WSAGetLastError`, `AcceptEx`,
//! `GetAcceptExSockaddrs`, `ConnectEx`, `WSAIoctl` (which hands them out,
//! and the RIO function table), `WSAGetOverlappedResult`.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{self, code};
use crate::ffi;
use crate::port::Overlapped;
use crate::winsock::{self, Kind, Start, INVALID_SOCKET, SOCKET_ERROR};

/// `WSA_FLAG_OVERLAPPED`.
pub const WSA_FLAG_OVERLAPPED: u32 = 0x01;
/// `WSA_FLAG_REGISTERED_IO`.
pub const WSA_FLAG_REGISTERED_IO: u32 = 0x100;
/// `SIO_GET_EXTENSION_FUNCTION_POINTER`.
pub const SIO_GET_EXTENSION_FUNCTION_POINTER: u32 = 0xC800_0006;
/// `SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER`.
pub const SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER: u32 = 0xC800_0024;

/// A `GUID`'s 16 bytes as Windows lays them out.
type Guid = [u8; 16];

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// `WSAID_ACCEPTEX`.
pub const WSAID_ACCEPTEX: Guid = guid(
    0xb536_7df1,
    0xcbac,
    0x11cf,
    [0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92],
);
/// `WSAID_GETACCEPTEXSOCKADDRS`.
pub const WSAID_GETACCEPTEXSOCKADDRS: Guid = guid(
    0xb536_7df2,
    0xcbac,
    0x11cf,
    [0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92],
);
/// `WSAID_CONNECTEX`.
pub const WSAID_CONNECTEX: Guid = guid(
    0x25a2_07b9,
    0xddf3,
    0x4660,
    [0x8e, 0xe9, 0x76, 0xe5, 0x8c, 0x74, 0x06, 0x3e],
);
/// `WSAID_MULTIPLE_RIO`.
pub const WSAID_MULTIPLE_RIO: Guid = guid(
    0x8509_e081,
    0x96dd,
    0x4005,
    [0xb1, 0x65, 0x9e, 0x2e, 0xe8, 0xc7, 0x9e, 0x3f],
);

/// `WSAStartup`: nothing to start; fills `wVersion`/`wHighVersion` (2.2).
///
/// # Safety
/// `data` is null or points to a `WSADATA`.
#[no_mangle]
pub unsafe extern "C" fn WSAStartup(version: u16, data: *mut u16) -> i32 {
    if !data.is_null() {
        // SAFETY: WSADATA starts with wVersion and wHighVersion (two WORDs).
        unsafe {
            data.write(version);
            data.add(1).write(0x0202);
        }
    }
    0
}

/// `WSACleanup`.
#[no_mangle]
pub extern "C" fn WSACleanup() -> i32 {
    0
}

fn fail_socket(code: u32) -> i32 {
    error::set(code);
    SOCKET_ERROR
}

/// `WSASocketW`: a socket (close-on-exec). `WSA_FLAG_OVERLAPPED` and
/// `WSA_FLAG_REGISTERED_IO` are accepted (every socket here can do both).
#[no_mangle]
pub extern "C" fn WSASocketW(
    af: i32,
    kind: i32,
    protocol: i32,
    _info: *mut libc::c_void,
    _group: u32,
    _flags: u32,
) -> usize {
    ffi::guard(INVALID_SOCKET, || {
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(af, kind | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            error::set(error::from_errno(winsock::errno()));
            return INVALID_SOCKET;
        }
        fd as usize
    })
}

/// `WSASocketA`.
#[no_mangle]
pub extern "C" fn WSASocketA(
    af: i32,
    kind: i32,
    protocol: i32,
    info: *mut libc::c_void,
    group: u32,
    flags: u32,
) -> usize {
    WSASocketW(af, kind, protocol, info, group, flags)
}

fn check(r: i32) -> i32 {
    if r < 0 {
        fail_socket(error::from_errno(winsock::errno()))
    } else {
        r
    }
}

/// `bind` as Winsock has it (the headers route `bind(SOCKET, ...)` here).
///
/// # Safety
/// `addr` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ringport_win32_bind(
    s: usize,
    addr: *const libc::sockaddr,
    len: i32,
) -> i32 {
    // SAFETY: the caller's promise.
    check(unsafe { libc::bind(s as i32, addr, len as libc::socklen_t) })
}

/// `listen` as Winsock has it. `SOMAXCONN` (0x7fffffff) means the system's.
#[no_mangle]
pub extern "C" fn ringport_win32_listen(s: usize, backlog: i32) -> i32 {
    // SAFETY: listen takes no pointers.
    check(unsafe { libc::listen(s as i32, backlog.min(4096)) })
}

/// `connect` as Winsock has it (blocking; the thread gives up its port slot).
///
/// # Safety
/// `addr` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ringport_win32_connect(
    s: usize,
    addr: *const libc::sockaddr,
    len: i32,
) -> i32 {
    let addr = addr as usize;
    crate::port::blocking(|| {
        // SAFETY: the caller's promise.
        check(unsafe { libc::connect(s as i32, addr as *const _, len as libc::socklen_t) })
    })
}

/// Puts the connection `fd` on the caller's accept socket and writes the
/// local and remote addresses into `AcceptEx`'s output buffer (after
/// `data` bytes, `local` and `remote` bytes of room). Returns the status.
pub(crate) fn finish_accept(
    fd: OwnedFd,
    peer: Option<std::net::SocketAddr>,
    accept: i32,
    out: usize,
    data: u32,
    local: u32,
    remote: u32,
) -> u32 {
    // SAFETY: dup2 takes no pointers; it replaces the caller's accept socket
    // by the new connection, atomically.
    if unsafe { libc::dup2(fd.as_raw_fd(), accept) } < 0 {
        return error::from_errno(winsock::errno());
    }
    winsock::forget(accept);
    drop(fd);
    if out != 0 {
        // SAFETY: zeroed sockaddr_storage is valid; getsockname fills it.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut n = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: ss has n bytes of room.
        unsafe { libc::getsockname(accept, &mut ss as *mut _ as *mut libc::sockaddr, &mut n) };
        let room = (local as usize).min(n as usize);
        // SAFETY: AcceptEx's output buffer has data + local + remote bytes,
        // valid until the completion is reported (now).
        unsafe {
            std::ptr::copy_nonoverlapping(
                &ss as *const _ as *const u8,
                (out + data as usize) as *mut u8,
                room,
            )
        };
        if let Some(peer) = peer {
            let mut len = remote as i32;
            winsock::write_sockaddr(
                out + data as usize + local as usize,
                &mut len as *mut i32 as usize,
                peer,
            );
        }
    }
    0
}

/// `AcceptEx`: the accepted connection replaces `accept` (the socket the
/// caller made for it) when the packet is taken. Receiving data with the
/// connection (`receive_len` > 0) is not supported (`WSAEOPNOTSUPP`).
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
        if receive_len > 0 {
            return error::fail(code::WSAEOPNOTSUPP);
        }
        if ov.is_null() {
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

/// `ConnectEx`: sending data with the connection is not supported
/// (`WSAEOPNOTSUPP` when `send_len` > 0).
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn ConnectEx(
    s: usize,
    name: *const libc::sockaddr,
    name_len: i32,
    _send: *mut libc::c_void,
    send_len: u32,
    sent: *mut u32,
    ov: *mut Overlapped,
) -> i32 {
    ffi::guard(0, || {
        if send_len > 0 {
            return error::fail(code::WSAEOPNOTSUPP);
        }
        let Some(to) = winsock::read_sockaddr(name, name_len) else {
            return error::fail(code::WSAEFAULT);
        };
        let r = winsock::start(s as i32, ov, Start::Connect(to), Kind::Plain, sent);
        i32::from(r == 0)
    })
}

/// `WSAIoctl`: `SIO_GET_EXTENSION_FUNCTION_POINTER` (AcceptEx,
/// GetAcceptExSockaddrs, ConnectEx) and
/// `SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER` with `WSAID_MULTIPLE_RIO`
/// (the RIO function table). Anything else: `WSAEOPNOTSUPP`.
///
/// # Safety
/// The buffers are valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn WSAIoctl(
    _s: usize,
    control: u32,
    input: *const libc::c_void,
    input_len: u32,
    output: *mut libc::c_void,
    output_len: u32,
    returned: *mut u32,
    _ov: *mut Overlapped,
    _routine: *const libc::c_void,
) -> i32 {
    ffi::guard(SOCKET_ERROR, || {
        if input.is_null() || input_len < 16 || output.is_null() {
            return fail_socket(code::WSAEFAULT);
        }
        // SAFETY: at least 16 readable bytes (checked above).
        let id: Guid = unsafe { *(input as *const Guid) };
        let (src, len): (*const u8, usize) = match control {
            SIO_GET_EXTENSION_FUNCTION_POINTER => {
                let f: usize = if id == WSAID_ACCEPTEX {
                    AcceptEx as *const () as usize
                } else if id == WSAID_GETACCEPTEXSOCKADDRS {
                    GetAcceptExSockaddrs as *const () as usize
                } else if id == WSAID_CONNECTEX {
                    ConnectEx as *const () as usize
                } else {
                    return fail_socket(code::WSAEINVAL);
                };
                if (output_len as usize) < std::mem::size_of::<usize>() {
                    return fail_socket(code::WSAEFAULT);
                }
                // SAFETY: room for a pointer (checked).
                unsafe { (output as *mut usize).write_unaligned(f) };
                (std::ptr::null(), std::mem::size_of::<usize>())
            }
            SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER if id == WSAID_MULTIPLE_RIO => {
                let table = crate::rio::function_table();
                let n = std::mem::size_of_val(table);
                if (output_len as usize) < n {
                    return fail_socket(code::WSAEFAULT);
                }
                (table as *const _ as *const u8, n)
            }
            SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER => return fail_socket(code::WSAEINVAL),
            _ => return fail_socket(code::WSAEOPNOTSUPP),
        };
        if !src.is_null() {
            // SAFETY: output has room for len bytes (checked above).
            unsafe { std::ptr::copy_nonoverlapping(src, output as *mut u8, len) };
        }
        if !returned.is_null() {
            // SAFETY: the caller's out pointer.
            unsafe { returned.write(len as u32) };
        }
        0
    })
}

/// `WSAGetOverlappedResult` / `GetOverlappedResult`: the outcome recorded in
/// the OVERLAPPED when its packet was taken (`WSA_IO_INCOMPLETE` before).
///
/// # Safety
/// The pointers are valid as Windows requires.
#[no_mangle]
pub unsafe extern "C" fn WSAGetOverlappedResult(
    _s: usize,
    ov: *const Overlapped,
    transferred: *mut u32,
    _wait: i32,
    flags: *mut u32,
) -> i32 {
    ffi::guard(0, || {
        if ov.is_null() {
            return error::fail(code::WSAEFAULT);
        }
        // SAFETY: the caller's OVERLAPPED.
        let (status, n) = unsafe { ((*ov).internal, (*ov).internal_high) };
        if !transferred.is_null() {
            // SAFETY: the caller's out pointer.
            unsafe { transferred.write(n as u32) };
        }
        if !flags.is_null() {
            // SAFETY: the caller's out pointer.
            unsafe { flags.write(0) };
        }
        match status {
            0 => 1,
            0x103 => error::fail(996), // WSA_IO_INCOMPLETE
            s => error::fail(s as u32),
        }
    })
}
