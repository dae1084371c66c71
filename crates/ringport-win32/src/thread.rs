//! Threads and the system around them: `CreateThread`, thread ids,
//! `GetSystemInfo`, tick counts.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::{self, code};
use crate::ffi;
use crate::handles::{self, Object};
use crate::sync::Waitable;

/// `LPTHREAD_START_ROUTINE`.
pub type StartRoutine = unsafe extern "C" fn(*mut c_void) -> u32;

/// `CREATE_SUSPENDED`, which this crate does not support.
const CREATE_SUSPENDED: u32 = 0x4;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static THREAD_ID: Cell<u32> = const { Cell::new(0) };
}

fn new_id() -> u32 {
    // Windows thread ids are multiples of 4 and never 0.
    NEXT_ID.fetch_add(1, Ordering::Relaxed) * 4
}

/// `GetCurrentThreadId`: a process-unique id, given to a thread the first
/// time it asks (threads from `CreateThread` have theirs from the start).
#[no_mangle]
pub extern "C" fn GetCurrentThreadId() -> u32 {
    THREAD_ID.with(|c| {
        if c.get() == 0 {
            c.set(new_id());
        }
        c.get()
    })
}

/// `GetCurrentProcessId`.
#[no_mangle]
pub extern "C" fn GetCurrentProcessId() -> u32 {
    std::process::id()
}

/// A `*mut c_void` that may cross to the new thread (the C caller owns what
/// it points to, as on Windows).
struct Param(*mut c_void);
// SAFETY: the pointer is only handed back to the caller's own start routine,
// which is what CreateThread promises to do with it.
unsafe impl Send for Param {}

/// `CreateThread`. The handle is waitable (signaled when the thread ends)
/// and must be closed with `CloseHandle`; closing it does not stop the
/// thread. `CREATE_SUSPENDED` is refused (`ERROR_NOT_SUPPORTED`).
///
/// # Safety
/// `start` is a function that may run on another thread with `param`;
/// `thread_id` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn CreateThread(
    _attributes: *mut c_void,
    stack_size: usize,
    start: Option<StartRoutine>,
    param: *mut c_void,
    flags: u32,
    thread_id: *mut u32,
) -> usize {
    ffi::guard(0, || {
        let Some(start) = start else {
            error::set(code::ERROR_INVALID_PARAMETER);
            return 0;
        };
        if flags & CREATE_SUSPENDED != 0 {
            error::set(code::ERROR_NOT_SUPPORTED);
            return 0;
        }
        let object = Waitable::new(true, false);
        let id = new_id();
        let done = object.clone();
        let param = Param(param);
        let mut builder = std::thread::Builder::new().name(format!("win32-{id}"));
        if stack_size > 0 {
            builder = builder.stack_size(stack_size.max(64 * 1024));
        }
        let spawned = builder.spawn(move || {
            let param = param;
            THREAD_ID.with(|c| c.set(id));
            // SAFETY: the caller's promise: `start` may run here with `param`.
            let exit = unsafe { start(param.0) };
            // Give up any port slot before the thread counts as ended.
            crate::port::forget_thread_port();
            done.exit_code.store(exit, Ordering::Relaxed);
            done.set();
        });
        if let Err(e) = spawned {
            error::set(error::from_io(&e));
            return 0;
        }
        if !thread_id.is_null() {
            // SAFETY: the caller's promise: writable when not null.
            unsafe { thread_id.write(id) };
        }
        handles::insert(Object::Waitable(object))
    })
}

/// `GetExitCodeThread`: `STILL_ACTIVE` (259) until the thread ends.
///
/// # Safety
/// `exit_code` is writable.
#[no_mangle]
pub unsafe extern "C" fn GetExitCodeThread(thread: usize, exit_code: *mut u32) -> i32 {
    ffi::guard(0, || match handles::waitable(thread) {
        Some(w) if !exit_code.is_null() => {
            // SAFETY: the caller's promise.
            unsafe { exit_code.write(w.exit_code.load(Ordering::Relaxed)) };
            1
        }
        _ => error::fail(code::ERROR_INVALID_HANDLE),
    })
}

/// `SYSTEM_INFO` (the x64 layout).
#[repr(C)]
pub struct SystemInfo {
    pub processor_architecture: u16,
    pub reserved: u16,
    pub page_size: u32,
    pub minimum_application_address: *mut c_void,
    pub maximum_application_address: *mut c_void,
    pub active_processor_mask: usize,
    pub number_of_processors: u32,
    pub processor_type: u32,
    pub allocation_granularity: u32,
    pub processor_level: u16,
    pub processor_revision: u16,
}

/// `GetSystemInfo`: the CPUs this process may run on, the page size.
///
/// # Safety
/// `info` points to a writable `SYSTEM_INFO`.
#[no_mangle]
pub unsafe extern "C" fn GetSystemInfo(info: *mut SystemInfo) {
    ffi::guard((), || {
        if info.is_null() {
            return;
        }
        let cpus = ringport::cpu_count() as u32;
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
        let mask = if cpus >= 64 {
            usize::MAX
        } else {
            (1usize << cpus) - 1
        };
        let value = SystemInfo {
            processor_architecture: 9, // PROCESSOR_ARCHITECTURE_AMD64
            reserved: 0,
            page_size: page,
            minimum_application_address: 0x10000 as *mut c_void,
            maximum_application_address: 0x7FFF_FFFE_FFFF as *mut c_void,
            active_processor_mask: mask,
            number_of_processors: cpus,
            processor_type: 8664, // PROCESSOR_AMD_X8664
            allocation_granularity: 65536,
            processor_level: 6,
            processor_revision: 0,
        };
        // SAFETY: the caller's promise: a writable SYSTEM_INFO.
        unsafe { info.write(value) };
    })
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// `GetTickCount64`: milliseconds since the process first asked (Windows
/// counts from boot; only differences mean anything either way).
#[no_mangle]
pub extern "C" fn GetTickCount64() -> u64 {
    start().elapsed().as_millis() as u64
}

/// `GetTickCount`.
#[no_mangle]
pub extern "C" fn GetTickCount() -> u32 {
    GetTickCount64() as u32
}

/// `QueryPerformanceCounter`, in nanoseconds.
///
/// # Safety
/// `count` is writable.
#[no_mangle]
pub unsafe extern "C" fn QueryPerformanceCounter(count: *mut i64) -> i32 {
    if count.is_null() {
        return error::fail(code::ERROR_INVALID_PARAMETER);
    }
    // SAFETY: the caller's promise.
    unsafe { count.write(start().elapsed().as_nanos() as i64) };
    1
}

/// `QueryPerformanceFrequency`: 10⁹ (the counter is in nanoseconds).
///
/// # Safety
/// `freq` is writable.
#[no_mangle]
pub unsafe extern "C" fn QueryPerformanceFrequency(freq: *mut i64) -> i32 {
    if freq.is_null() {
        return error::fail(code::ERROR_INVALID_PARAMETER);
    }
    // SAFETY: the caller's promise.
    unsafe { freq.write(1_000_000_000) };
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn seven(p: *mut c_void) -> u32 {
        // SAFETY: the test passes a pointer to a u32.
        unsafe { *(p as *mut u32) = GetCurrentThreadId() };
        7
    }

    #[test]
    fn thread_runs_and_reports() {
        let mut seen = 0u32;
        let mut id = 0u32;
        // SAFETY: `seen` outlives the thread (we wait for it below).
        let h = unsafe {
            CreateThread(
                std::ptr::null_mut(),
                0,
                Some(seven),
                &mut seen as *mut u32 as *mut c_void,
                0,
                &mut id,
            )
        };
        assert_ne!(h, 0);
        assert_eq!(crate::sync::WaitForSingleObject(h, 5000), 0);
        let mut exit = 0;
        // SAFETY: `exit` is writable.
        assert_eq!(unsafe { GetExitCodeThread(h, &mut exit) }, 1);
        assert_eq!((exit, seen), (7, id));
        assert_ne!(GetCurrentThreadId(), id);
        crate::port::CloseHandle(h);
    }
}
