//! The handle table: what a `HANDLE` that is not a socket names.
//!
//! Sockets are their own descriptors (a `SOCKET` is the fd, so `bind`,
//! `setsockopt` and friends work on it as they are), and a socket cast to
//! `HANDLE` is that small number. Every other object (a completion port, a
//! thread, an event) gets a value at or above [`BASE`], far above any
//! descriptor, so the two never meet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use crate::port::Port;
use crate::sync::Waitable;

/// The first handle value of a table object.
pub const BASE: usize = 1 << 40;

/// `INVALID_HANDLE_VALUE`.
pub const INVALID: usize = usize::MAX;

/// What a handle names.
#[derive(Clone)]
pub enum Object {
    /// A completion port.
    Port(Arc<Port>),
    /// A thread or an event: something `WaitForSingleObject` waits on.
    Waitable(Arc<Waitable>),
}

type Table = RwLock<HashMap<usize, Object>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Puts `object` in the table and returns its new handle value.
pub fn insert(object: Object) -> usize {
    let h = BASE + 4 * NEXT.fetch_add(1, Ordering::Relaxed);
    table()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(h, object);
    h
}

/// The object `h` names, if it is open.
pub fn get(h: usize) -> Option<Object> {
    table()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&h)
        .cloned()
}

/// Takes `h` out of the table (CloseHandle).
pub fn remove(h: usize) -> Option<Object> {
    table()
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&h)
}

/// The port `h` names.
pub fn port(h: usize) -> Option<Arc<Port>> {
    match get(h)? {
        Object::Port(p) => Some(p),
        _ => None,
    }
}

/// The waitable object `h` names.
pub fn waitable(h: usize) -> Option<Arc<Waitable>> {
    match get(h)? {
        Object::Waitable(w) => Some(w),
        _ => None,
    }
}

/// Whether `h` could be a descriptor (a socket cast to `HANDLE`). NULL is
/// not: it is the invalid handle of most Win32 calls (and descriptor 0 is
/// standard input, never closed by `CloseHandle(NULL)`).
pub fn is_fd(h: usize) -> bool {
    h != 0 && h < BASE && h <= i32::MAX as usize
}
