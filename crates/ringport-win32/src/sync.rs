//! Objects a thread waits on (threads and events), `WaitForSingleObject`,
//! `WaitForMultipleObjects`, `Sleep`, and events.
//!
//! Every waitable object's state changes under one process-wide lock, and
//! one condition variable wakes waiters to look again: simple, and correct
//! for waits on several objects at once (`bWaitAll` included). A thread that
//! blocks here while it is active on a completion port gives its slot up for
//! the time it is blocked, as Windows does (see [`crate::port::blocking`]).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{self, code};
use crate::handles::{self, Object};
use crate::{ffi, port};

/// `WAIT_OBJECT_0`.
pub const WAIT_OBJECT_0: u32 = 0;
/// `WAIT_FAILED`.
pub const WAIT_FAILED: u32 = 0xFFFF_FFFF;
/// `INFINITE`.
pub const INFINITE: u32 = 0xFFFF_FFFF;
/// `MAXIMUM_WAIT_OBJECTS`.
pub const MAXIMUM_WAIT_OBJECTS: u32 = 64;

static LOCK: Mutex<()> = Mutex::new(());
static COND: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A thread or an event.
pub struct Waitable {
    /// Written only under [`LOCK`].
    signaled: AtomicBool,
    /// Manual reset: a satisfied wait leaves it signaled (threads are).
    manual: bool,
    /// A thread's exit code (`STILL_ACTIVE` until it ends).
    pub exit_code: AtomicU32,
}

/// `STILL_ACTIVE`.
pub const STILL_ACTIVE: u32 = 259;

impl Waitable {
    /// A new object.
    pub fn new(manual: bool, signaled: bool) -> Arc<Waitable> {
        Arc::new(Waitable {
            signaled: AtomicBool::new(signaled),
            manual,
            exit_code: AtomicU32::new(STILL_ACTIVE),
        })
    }

    /// Signals it (SetEvent, a thread's end).
    pub fn set(&self) {
        let _g = lock();
        self.signaled.store(true, Ordering::Relaxed);
        COND.notify_all();
    }

    /// Clears it (ResetEvent).
    pub fn reset(&self) {
        let _g = lock();
        self.signaled.store(false, Ordering::Relaxed);
    }

    /// Whether it is signaled now.
    pub fn is_set(&self) -> bool {
        self.signaled.load(Ordering::Relaxed)
    }

    fn consume(&self) {
        if !self.manual {
            self.signaled.store(false, Ordering::Relaxed);
        }
    }
}

/// Waits until one (or, with `all`, every one) of `objects` is signaled, at
/// most `ms` milliseconds. Returns the `WAIT_*` value.
pub fn wait(objects: &[Arc<Waitable>], all: bool, ms: u32) -> u32 {
    let deadline = (ms != INFINITE).then(|| Instant::now() + Duration::from_millis(ms.into()));
    let mut g = lock();
    loop {
        if all {
            if objects.iter().all(|o| o.is_set()) {
                objects.iter().for_each(|o| o.consume());
                return WAIT_OBJECT_0;
            }
        } else if let Some(i) = objects.iter().position(|o| o.is_set()) {
            objects[i].consume();
            return WAIT_OBJECT_0 + i as u32;
        }
        match deadline {
            None => g = COND.wait(g).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return code::WAIT_TIMEOUT;
                }
                g = COND
                    .wait_timeout(g, d - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

fn waitables(handles: &[usize]) -> Option<Vec<Arc<Waitable>>> {
    handles.iter().map(|&h| handles::waitable(h)).collect()
}

/// `WaitForSingleObject`.
#[no_mangle]
pub extern "C" fn WaitForSingleObject(handle: usize, ms: u32) -> u32 {
    ffi::guard(WAIT_FAILED, || match handles::waitable(handle) {
        Some(w) => port::blocking(|| wait(&[w], false, ms)),
        None => {
            error::set(code::ERROR_INVALID_HANDLE);
            WAIT_FAILED
        }
    })
}

/// `WaitForMultipleObjects`.
///
/// # Safety
/// `handles` points to `count` handles.
#[no_mangle]
pub unsafe extern "C" fn WaitForMultipleObjects(
    count: u32,
    handles: *const usize,
    wait_all: i32,
    ms: u32,
) -> u32 {
    ffi::guard(WAIT_FAILED, || {
        if count == 0 || count > MAXIMUM_WAIT_OBJECTS || handles.is_null() {
            error::set(code::ERROR_INVALID_PARAMETER);
            return WAIT_FAILED;
        }
        // SAFETY: the caller's promise: `count` handles at `handles`.
        let hs = unsafe { std::slice::from_raw_parts(handles, count as usize) };
        match waitables(hs) {
            Some(ws) => port::blocking(|| wait(&ws, wait_all != 0, ms)),
            None => {
                error::set(code::ERROR_INVALID_HANDLE);
                WAIT_FAILED
            }
        }
    })
}

/// `Sleep`: the thread gives up its port slot while it sleeps.
#[no_mangle]
pub extern "C" fn Sleep(ms: u32) {
    ffi::guard((), || {
        port::blocking(|| match ms {
            0 => std::thread::yield_now(),
            INFINITE => loop {
                std::thread::park()
            },
            ms => std::thread::sleep(Duration::from_millis(ms.into())),
        })
    })
}

/// `CreateEventA` (the name is ignored: events here are unnamed).
#[no_mangle]
pub extern "C" fn CreateEventA(
    _attributes: *mut libc::c_void,
    manual_reset: i32,
    initial_state: i32,
    _name: *const libc::c_char,
) -> usize {
    ffi::guard(0, || {
        handles::insert(Object::Waitable(Waitable::new(
            manual_reset != 0,
            initial_state != 0,
        )))
    })
}

/// `CreateEventW` (the name is ignored).
#[no_mangle]
pub extern "C" fn CreateEventW(
    attributes: *mut libc::c_void,
    manual_reset: i32,
    initial_state: i32,
    _name: *const u16,
) -> usize {
    CreateEventA(attributes, manual_reset, initial_state, std::ptr::null())
}

/// `WSACreateEvent`: a manual-reset event, initially clear.
#[no_mangle]
pub extern "C" fn WSACreateEvent() -> usize {
    CreateEventA(std::ptr::null_mut(), 1, 0, std::ptr::null())
}

/// `SetEvent`.
#[no_mangle]
pub extern "C" fn SetEvent(event: usize) -> i32 {
    ffi::guard(0, || match handles::waitable(event) {
        Some(w) => {
            w.set();
            1
        }
        None => error::fail(code::ERROR_INVALID_HANDLE),
    })
}

/// `ResetEvent`.
#[no_mangle]
pub extern "C" fn ResetEvent(event: usize) -> i32 {
    ffi::guard(0, || match handles::waitable(event) {
        Some(w) => {
            w.reset();
            1
        }
        None => error::fail(code::ERROR_INVALID_HANDLE),
    })
}

/// `WSASetEvent`.
#[no_mangle]
pub extern "C" fn WSASetEvent(event: usize) -> i32 {
    SetEvent(event)
}

/// `WSAResetEvent`.
#[no_mangle]
pub extern "C" fn WSAResetEvent(event: usize) -> i32 {
    ResetEvent(event)
}

/// `WSACloseEvent`.
#[no_mangle]
pub extern "C" fn WSACloseEvent(event: usize) -> i32 {
    crate::port::CloseHandle(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_reset_event_wakes_one_wait() {
        let e = CreateEventA(std::ptr::null_mut(), 0, 0, std::ptr::null());
        assert_eq!(WaitForSingleObject(e, 10), code::WAIT_TIMEOUT);
        assert_eq!(SetEvent(e), 1);
        assert_eq!(WaitForSingleObject(e, 0), WAIT_OBJECT_0);
        assert_eq!(WaitForSingleObject(e, 0), code::WAIT_TIMEOUT);
        assert_eq!(crate::port::CloseHandle(e), 1);
        assert_eq!(WaitForSingleObject(e, 0), WAIT_FAILED);
        assert_eq!(error::get(), code::ERROR_INVALID_HANDLE);
    }

    #[test]
    fn wait_all_needs_every_object() {
        let a = CreateEventA(std::ptr::null_mut(), 1, 1, std::ptr::null());
        let b = CreateEventA(std::ptr::null_mut(), 1, 0, std::ptr::null());
        let hs = [a, b];
        // SAFETY: two handles.
        let r = unsafe { WaitForMultipleObjects(2, hs.as_ptr(), 1, 10) };
        assert_eq!(r, code::WAIT_TIMEOUT);
        SetEvent(b);
        // SAFETY: as above.
        assert_eq!(unsafe { WaitForMultipleObjects(2, hs.as_ptr(), 1, 10) }, 0);
        ResetEvent(a);
        // SAFETY: as above.
        assert_eq!(unsafe { WaitForMultipleObjects(2, hs.as_ptr(), 0, 10) }, 1);
    }
}
