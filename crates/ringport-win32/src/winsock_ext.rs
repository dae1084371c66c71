//! The rest of Winsock: start-up, `WSASocket`, the `bind`/`listen`/
//! `connect` that set `WSAGetLastError`, `ConnectEx`, `WSAIoctl` (which
//! hands out `AcceptEx`, `GetAcceptExSockaddrs`, `ConnectEx` and the RIO
//! function table), `WSAGetOverlappedResult`.

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
        let Some(to) = crate::overlapped::read_sockaddr(name, name_len) else {
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
                    crate::accept::AcceptEx as *const () as usize
                } else if id == WSAID_GETACCEPTEXSOCKADDRS {
                    crate::accept::GetAcceptExSockaddrs as *const () as usize
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
