//! Completion ports: `CreateIoCompletionPort`, `GetQueuedCompletionStatus`
//! (and `Ex`), `PostQueuedCompletionStatus`, `CloseHandle`, and the rule that
//! a thread blocking elsewhere gives up its port slot.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringport::{BlockingGuard, CompletionPort, Packet};

use crate::error::{self, code};
use crate::handles::{self, Object};
use crate::sync::INFINITE;
use crate::{ffi, winsock};

/// What a packet carries for the C side: the `OVERLAPPED*` (the Windows
/// per-operation token) and, for overlapped I/O, what must be copied back
/// into the caller's memory when the packet is taken.
#[derive(Clone)]
pub struct Token {
    /// The caller's `OVERLAPPED*` (0 for a posted packet without one).
    pub ov: usize,
    /// The I/O operation's copy-out plan, if it is one.
    pub op: Option<Box<winsock::IoOp>>,
}

/// A completion port behind a `HANDLE`.
pub struct Port {
    /// The ringport port.
    pub cp: CompletionPort<Token>,
}

/// `OVERLAPPED` (the x64 layout).
#[repr(C)]
pub struct Overlapped {
    pub internal: usize,
    pub internal_high: usize,
    pub offset: u32,
    pub offset_high: u32,
    pub event: usize,
}

/// `OVERLAPPED_ENTRY`.
#[repr(C)]
pub struct OverlappedEntry {
    pub completion_key: usize,
    pub overlapped: *mut Overlapped,
    pub internal: usize,
    pub bytes: u32,
}

thread_local! {
    /// The port this thread last took a packet from: the one whose slot a
    /// blocking call gives up.
    static CURRENT: RefCell<Option<Arc<Port>>> = const { RefCell::new(None) };
    /// Blocking sections opened from C (console output in the headers).
    static GUARDS: RefCell<Vec<BlockingGuard>> = const { RefCell::new(Vec::new()) };
}

fn set_current(port: &Arc<Port>) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if !matches!(&*c, Some(p) if Arc::ptr_eq(p, port)) {
            *c = Some(port.clone());
        }
    });
}

/// Runs `f` with the thread's port slot given up (if it holds one), as
/// Windows does for a thread that blocks on something else.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let port = CURRENT.with(|c| c.borrow().clone());
    match port {
        Some(p) => p.cp.blocking(f),
        None => f(),
    }
}

/// Forgets the thread's port (its slot is released when the thread exits).
pub fn forget_thread_port() {
    let old = CURRENT.with(|c| c.borrow_mut().take());
    drop(old);
}

/// Opens a blocking section from C: the headers' console output calls it
/// around `printf`, so that a thread writing to a slow console frees its slot.
#[no_mangle]
pub extern "C" fn ringport_win32_blocking_begin() {
    ffi::guard((), || {
        let port = CURRENT.with(|c| c.borrow().clone());
        if let Some(p) = port {
            let g = p.cp.blocking_guard();
            GUARDS.with(|gs| gs.borrow_mut().push(g));
        }
    })
}

/// Closes the section [`ringport_win32_blocking_begin`] opened.
#[no_mangle]
pub extern "C" fn ringport_win32_blocking_end() {
    ffi::guard((), || {
        let g = GUARDS.with(|gs| gs.borrow_mut().pop());
        drop(g);
    })
}

fn new_port(concurrency: u32) -> Result<usize, u32> {
    let cp = CompletionPort::new(concurrency as usize).map_err(|e| error::from_ringport(&e))?;
    Ok(handles::insert(Object::Port(Arc::new(Port { cp }))))
}

/// `CreateIoCompletionPort`: with `INVALID_HANDLE_VALUE`, creates a port
/// (`concurrency` 0: as many active threads as CPUs); with a socket,
/// associates it with `existing` under `key` (creating the port first when
/// `existing` is NULL) and returns the port.
#[no_mangle]
pub extern "C" fn CreateIoCompletionPort(
    file: usize,
    existing: usize,
    key: usize,
    concurrency: u32,
) -> usize {
    ffi::guard(0, || {
        let result = if file == handles::INVALID {
            if existing != 0 {
                Err(code::ERROR_INVALID_PARAMETER)
            } else {
                new_port(concurrency)
            }
        } else if !handles::is_fd(file) {
            Err(code::ERROR_INVALID_HANDLE)
        } else {
            let (handle, created) = if existing == 0 {
                match new_port(concurrency) {
                    Ok(h) => (h, true),
                    Err(e) => return error::fail(e) as usize,
                }
            } else {
                (existing, false)
            };
            let r = match handles::port(handle) {
                Some(port) => winsock::associate(file as i32, &port, key).map(|()| handle),
                None => Err(code::ERROR_INVALID_PARAMETER),
            };
            if r.is_err() && created {
                CloseHandle(handle);
            }
            r
        };
        match result {
            Ok(h) => h,
            Err(e) => {
                error::set(e);
                0
            }
        }
    })
}

fn timeout(ms: u32) -> Option<Duration> {
    (ms != INFINITE).then(|| Duration::from_millis(ms.into()))
}

/// What a packet says once its I/O is finished: key, OVERLAPPED, bytes and
/// the Windows status (0 for success); `None` for a packet that was a step
/// of an operation still going on (nothing for the caller).
fn finish(packet: Packet<Token>) -> Option<(usize, usize, u32, u32)> {
    let key = packet.key as usize;
    let ov = packet.token.ov;
    match winsock::complete(packet) {
        winsock::Completion::Done(bytes, status) => Some((key, ov, bytes, status)),
        winsock::Completion::Again => None,
    }
}

/// What is left of a wait that started at `start`.
fn remaining(timeout: Option<Duration>, start: Instant) -> Option<Duration> {
    timeout.map(|t| t.saturating_sub(start.elapsed()))
}

/// `GetQueuedCompletionStatus`.
///
/// TRUE with the packet; FALSE with `*overlapped` set for an I/O that failed
/// (`GetLastError` says why: `ERROR_OPERATION_ABORTED` for a cancelled one,
/// `WSAECONNRESET`, `WSAEMSGSIZE`, ...); FALSE with `*overlapped` NULL and
/// `WAIT_TIMEOUT` on a timeout, `ERROR_ABANDONED_WAIT_0` when the port was
/// closed under the waiter, `ERROR_INVALID_HANDLE` for a handle that is not
/// an open port. For a receive, the bytes have been copied into the
/// caller's buffers before this returns.
///
/// # Safety
/// The out pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn GetQueuedCompletionStatus(
    port: usize,
    bytes: *mut u32,
    key: *mut usize,
    overlapped: *mut *mut Overlapped,
    ms: u32,
) -> i32 {
    ffi::guard(0, || {
        if bytes.is_null() || key.is_null() || overlapped.is_null() {
            return error::fail(code::ERROR_INVALID_PARAMETER);
        }
        // SAFETY: checked non-null; the caller's promise: writable.
        unsafe { overlapped.write(std::ptr::null_mut()) };
        let Some(p) = handles::port(port) else {
            return error::fail(code::ERROR_INVALID_HANDLE);
        };
        let (t, start) = (timeout(ms), Instant::now());
        let got = loop {
            match p.cp.get(remaining(t, start)) {
                Ok(packet) => match finish(packet) {
                    Some(done) => break Ok(done),
                    None => continue,
                },
                Err(e) => break Err(e),
            }
        };
        match got {
            Ok((k, ov, n, status)) => {
                set_current(&p);
                // SAFETY: the caller's promise: writable.
                unsafe {
                    bytes.write(n);
                    key.write(k);
                    overlapped.write(ov as *mut Overlapped);
                }
                if status == 0 {
                    1
                } else {
                    error::fail(status)
                }
            }
            Err(e) => error::fail(error::from_ringport(&e)),
        }
    })
}

thread_local! {
    static BATCH: RefCell<Vec<Packet<Token>>> = const { RefCell::new(Vec::new()) };
}

/// `GetQueuedCompletionStatusEx`: up to `count` packets; each entry's
/// `Internal` holds its status (0 or the Windows error code). `alertable` is
/// ignored (there are no APCs).
///
/// # Safety
/// `entries` points to `count` writable entries; `removed` is writable.
#[no_mangle]
pub unsafe extern "C" fn GetQueuedCompletionStatusEx(
    port: usize,
    entries: *mut OverlappedEntry,
    count: u32,
    removed: *mut u32,
    ms: u32,
    _alertable: i32,
) -> i32 {
    ffi::guard(0, || {
        if entries.is_null() || removed.is_null() || count == 0 {
            return error::fail(code::ERROR_INVALID_PARAMETER);
        }
        // SAFETY: checked non-null; writable by the caller's promise.
        unsafe { removed.write(0) };
        let Some(p) = handles::port(port) else {
            return error::fail(code::ERROR_INVALID_HANDLE);
        };
        let mut batch = BATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
        batch.clear();
        let (t, start) = (timeout(ms), Instant::now());
        let mut n = 0;
        let mut got = Ok(0);
        while n == 0 && got.is_ok() {
            got =
                p.cp.get_into(&mut batch, count as usize, remaining(t, start));
            for packet in batch.drain(..) {
                let Some((k, ov, bytes, status)) = finish(packet) else {
                    continue;
                };
                let entry = OverlappedEntry {
                    completion_key: k,
                    overlapped: ov as *mut Overlapped,
                    internal: status as usize,
                    bytes,
                };
                // SAFETY: n < count entries, writable.
                unsafe { entries.add(n).write(entry) };
                n += 1;
            }
        }
        let r = match got {
            Ok(_) => {
                set_current(&p);
                // SAFETY: checked non-null, writable.
                unsafe { removed.write(n as u32) };
                1
            }
            Err(e) => error::fail(error::from_ringport(&e)),
        };
        BATCH.with(|b| *b.borrow_mut() = batch);
        r
    })
}

/// `PostQueuedCompletionStatus`.
#[no_mangle]
pub extern "C" fn PostQueuedCompletionStatus(
    port: usize,
    bytes: u32,
    key: usize,
    overlapped: *mut Overlapped,
) -> i32 {
    ffi::guard(0, || {
        let Some(p) = handles::port(port) else {
            return error::fail(code::ERROR_INVALID_HANDLE);
        };
        let token = Token {
            ov: overlapped as usize,
            op: None,
        };
        match p.cp.post(key as u64, token, Ok(bytes as usize)) {
            Ok(()) => 1,
            Err(_) => error::fail(code::ERROR_INVALID_HANDLE),
        }
    })
}

/// `CloseHandle`: a port is closed (threads waiting on it return FALSE with
/// `ERROR_ABANDONED_WAIT_0`, queued packets are dropped, I/O in flight is
/// cancelled); a thread handle is let go (the thread runs on); an event is
/// freed; a socket is closed as `closesocket` does.
#[no_mangle]
pub extern "C" fn CloseHandle(handle: usize) -> i32 {
    ffi::guard(0, || {
        if handles::is_fd(handle) && handles::get(handle).is_none() {
            return if winsock::closesocket(handle) == 0 {
                1
            } else {
                0
            };
        }
        match handles::remove(handle) {
            Some(Object::Port(p)) => {
                p.cp.close();
                1
            }
            Some(Object::Waitable(_)) => 1,
            None => error::fail(code::ERROR_INVALID_HANDLE),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: usize, ms: u32) -> (i32, u32, usize, usize, u32) {
        let (mut n, mut k, mut ov) = (0u32, 0usize, std::ptr::null_mut());
        // SAFETY: the out pointers are locals.
        let r = unsafe { GetQueuedCompletionStatus(port, &mut n, &mut k, &mut ov, ms) };
        (r, n, k, ov as usize, error::get())
    }

    #[test]
    fn post_get_timeout_close() {
        let port = CreateIoCompletionPort(handles::INVALID, 0, 0, 0);
        assert_ne!(port, 0);
        assert_eq!(PostQueuedCompletionStatus(port, 5, 7, 0x1000 as *mut _), 1);
        let (r, n, k, ov, _) = get(port, 1000);
        assert_eq!((r, n, k, ov), (1, 5, 7, 0x1000));
        let (r, _, _, ov, e) = get(port, 10);
        assert_eq!((r, ov, e), (0, 0, code::WAIT_TIMEOUT));
        let waiter = std::thread::spawn(move || get(port, INFINITE));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(CloseHandle(port), 1);
        let (r, _, _, ov, e) = waiter.join().unwrap();
        assert_eq!((r, ov, e), (0, 0, code::ERROR_ABANDONED_WAIT_0));
        assert_eq!(get(port, 0).4, code::ERROR_INVALID_HANDLE);
        assert_eq!(CloseHandle(0), 0);
        assert_eq!(error::get(), code::ERROR_INVALID_HANDLE);
    }
}
