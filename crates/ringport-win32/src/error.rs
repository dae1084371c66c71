//! The calling thread's last error (`GetLastError`, `WSAGetLastError`) and
//! how Linux errors and ringport errors become Windows error codes.

use std::cell::Cell;
use std::io;

use ringport::rio::RioError;

/// Windows error codes this crate reports (the values `winerror.h` and
/// `winsock2.h` give them).
pub mod code {
    pub const ERROR_SUCCESS: u32 = 0;
    pub const ERROR_INVALID_FUNCTION: u32 = 1;
    pub const ERROR_INVALID_HANDLE: u32 = 6;
    pub const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
    pub const ERROR_INVALID_PARAMETER: u32 = 87;
    pub const ERROR_NOT_SUPPORTED: u32 = 50;
    pub const ERROR_HANDLE_EOF: u32 = 38;
    pub const ERROR_BROKEN_PIPE: u32 = 109;
    pub const ERROR_MORE_DATA: u32 = 234;
    pub const WAIT_TIMEOUT: u32 = 258;
    pub const ERROR_ABANDONED_WAIT_0: u32 = 735;
    pub const ERROR_OPERATION_ABORTED: u32 = 995;
    pub const ERROR_IO_PENDING: u32 = 997;
    pub const ERROR_NOT_FOUND: u32 = 1168;
    pub const ERROR_TIMEOUT: u32 = 1460;

    pub const WSAEINTR: u32 = 10004;
    pub const WSAEBADF: u32 = 10009;
    pub const WSAEACCES: u32 = 10013;
    pub const WSAEFAULT: u32 = 10014;
    pub const WSAEINVAL: u32 = 10022;
    pub const WSAEMFILE: u32 = 10024;
    pub const WSAEWOULDBLOCK: u32 = 10035;
    pub const WSAEINPROGRESS: u32 = 10036;
    pub const WSAEALREADY: u32 = 10037;
    pub const WSAENOTSOCK: u32 = 10038;
    pub const WSAEDESTADDRREQ: u32 = 10039;
    pub const WSAEMSGSIZE: u32 = 10040;
    pub const WSAEPROTOTYPE: u32 = 10041;
    pub const WSAENOPROTOOPT: u32 = 10042;
    pub const WSAEPROTONOSUPPORT: u32 = 10043;
    pub const WSAEOPNOTSUPP: u32 = 10045;
    pub const WSAEAFNOSUPPORT: u32 = 10047;
    pub const WSAEADDRINUSE: u32 = 10048;
    pub const WSAEADDRNOTAVAIL: u32 = 10049;
    pub const WSAENETDOWN: u32 = 10050;
    pub const WSAENETUNREACH: u32 = 10051;
    pub const WSAENETRESET: u32 = 10052;
    pub const WSAECONNABORTED: u32 = 10053;
    pub const WSAECONNRESET: u32 = 10054;
    pub const WSAENOBUFS: u32 = 10055;
    pub const WSAEISCONN: u32 = 10056;
    pub const WSAENOTCONN: u32 = 10057;
    pub const WSAESHUTDOWN: u32 = 10058;
    pub const WSAETIMEDOUT: u32 = 10060;
    pub const WSAECONNREFUSED: u32 = 10061;
    pub const WSAEHOSTUNREACH: u32 = 10065;
    pub const WSANOTINITIALISED: u32 = 10093;
    pub const WSA_IO_PENDING: u32 = ERROR_IO_PENDING;
    pub const WSA_OPERATION_ABORTED: u32 = ERROR_OPERATION_ABORTED;
}

use code::*;

thread_local! {
    static LAST: Cell<u32> = const { Cell::new(0) };
}

/// Sets the calling thread's last error.
pub fn set(code: u32) {
    LAST.with(|c| c.set(code));
}

/// The calling thread's last error.
pub fn get() -> u32 {
    LAST.with(|c| c.get())
}

/// Sets the last error and returns `FALSE`, for the many `BOOL` functions.
pub fn fail(code: u32) -> i32 {
    set(code);
    0
}

/// The Windows code for a Linux `errno`.
pub fn from_errno(errno: i32) -> u32 {
    match errno {
        0 => ERROR_SUCCESS,
        libc::ECANCELED => ERROR_OPERATION_ABORTED,
        libc::EINTR => WSAEINTR,
        libc::EBADF => WSAEBADF,
        libc::EACCES | libc::EPERM => WSAEACCES,
        libc::EFAULT => WSAEFAULT,
        libc::EINVAL => WSAEINVAL,
        libc::EMFILE | libc::ENFILE => WSAEMFILE,
        libc::EAGAIN => WSAEWOULDBLOCK,
        libc::EINPROGRESS => WSAEINPROGRESS,
        libc::EALREADY => WSAEALREADY,
        libc::ENOTSOCK => WSAENOTSOCK,
        libc::EDESTADDRREQ => WSAEDESTADDRREQ,
        libc::EMSGSIZE => WSAEMSGSIZE,
        libc::EPROTOTYPE => WSAEPROTOTYPE,
        libc::ENOPROTOOPT => WSAENOPROTOOPT,
        libc::EPROTONOSUPPORT => WSAEPROTONOSUPPORT,
        libc::EOPNOTSUPP => WSAEOPNOTSUPP,
        libc::EAFNOSUPPORT => WSAEAFNOSUPPORT,
        libc::EADDRINUSE => WSAEADDRINUSE,
        libc::EADDRNOTAVAIL => WSAEADDRNOTAVAIL,
        libc::ENETDOWN => WSAENETDOWN,
        libc::ENETUNREACH => WSAENETUNREACH,
        libc::ENETRESET => WSAENETRESET,
        libc::ECONNABORTED => WSAECONNABORTED,
        libc::ECONNRESET | libc::EPIPE => WSAECONNRESET,
        libc::ENOBUFS | libc::ENOMEM => WSAENOBUFS,
        libc::EISCONN => WSAEISCONN,
        libc::ENOTCONN => WSAENOTCONN,
        libc::ESHUTDOWN => WSAESHUTDOWN,
        libc::ETIMEDOUT => WSAETIMEDOUT,
        libc::ECONNREFUSED => WSAECONNREFUSED,
        libc::EHOSTUNREACH | libc::EHOSTDOWN => WSAEHOSTUNREACH,
        _ => ERROR_INVALID_FUNCTION,
    }
}

/// The Windows code for an `io::Error`.
pub fn from_io(e: &io::Error) -> u32 {
    if let Some(rio) = e.get_ref().and_then(|r| r.downcast_ref::<RioError>()) {
        return from_rio(rio);
    }
    match e.raw_os_error() {
        Some(n) => from_errno(n),
        None => match e.kind() {
            io::ErrorKind::InvalidInput => WSAEINVAL,
            io::ErrorKind::TimedOut => WAIT_TIMEOUT,
            io::ErrorKind::OutOfMemory => WSAENOBUFS,
            _ => ERROR_INVALID_FUNCTION,
        },
    }
}

/// The Windows code for a broken RIO rule.
pub fn from_rio(e: &RioError) -> u32 {
    match e {
        RioError::QueueTooSmall { .. }
        | RioError::TooManyRequests { .. }
        | RioError::OutOfMemory { .. } => WSAENOBUFS,
        RioError::AlreadyArmed => WSAEALREADY,
        _ => WSAEINVAL,
    }
}

/// The Windows code for a ringport error.
pub fn from_ringport(e: &ringport::Error) -> u32 {
    match e {
        ringport::Error::Closed => ERROR_ABANDONED_WAIT_0,
        ringport::Error::Timeout => WAIT_TIMEOUT,
        ringport::Error::TooManyWaiters => ERROR_NOT_ENOUGH_MEMORY,
        ringport::Error::InvalidArgument(_) => ERROR_INVALID_PARAMETER,
        ringport::Error::Io(e) => from_io(e),
        _ => ERROR_INVALID_FUNCTION,
    }
}

/// `GetLastError`.
#[no_mangle]
pub extern "C" fn GetLastError() -> u32 {
    get()
}

/// `SetLastError`.
#[no_mangle]
pub extern "C" fn SetLastError(code: u32) {
    set(code)
}

/// `WSAGetLastError`.
#[no_mangle]
pub extern "C" fn WSAGetLastError() -> i32 {
    get() as i32
}

/// `WSASetLastError`.
#[no_mangle]
pub extern "C" fn WSASetLastError(code: i32) {
    set(code as u32)
}

/// The Winsock code for a Linux errno (the headers' socket wrappers use it).
#[no_mangle]
pub extern "C" fn ringport_win32_wsa_from_errno(errno: i32) -> i32 {
    from_errno(errno) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_codes() {
        assert_eq!(from_errno(libc::ECANCELED), 995);
        assert_eq!(from_errno(libc::ECONNRESET), 10054);
        assert_eq!(from_errno(libc::EMSGSIZE), 10040);
        assert_eq!(from_ringport(&ringport::Error::Closed), 735);
        assert_eq!(from_ringport(&ringport::Error::Timeout), 258);
        let e: ringport::Error = RioError::AlreadyArmed.into();
        assert_eq!(from_ringport(&e), WSAEALREADY);
    }

    #[test]
    fn last_error_is_per_thread() {
        SetLastError(5);
        std::thread::spawn(|| {
            SetLastError(7);
            assert_eq!(GetLastError(), 7);
        })
        .join()
        .unwrap();
        assert_eq!(GetLastError(), 5);
    }
}
