//! Which port the calling thread is *active* on.
//!
//! A thread is active on a port from the moment `get` hands it a packet until
//! it calls `get` again there, enters a blocking section, calls `get` on
//! another port (a thread belongs to one port at a time, as on Windows), or
//! exits. The slot it holds is counted in the port's state word; this
//! thread-local remembers it so that every way of giving it up gives it up
//! exactly once, including the thread's exit (the destructor below), so a
//! pool stopped with one packet per worker never hangs at any limit.

use std::cell::{Cell, RefCell};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::waiter::Waiter;

/// A port's side of a thread's activity, type-erased so one thread-local
/// serves ports of every token type.
pub(crate) trait ConcurrencySlot: Send + Sync {
    /// Gives the slot back (see [`Core::release`](super::core::Core::release)).
    fn release(&self);
    /// Takes the slot back after a blocking section (see
    /// [`Core::reacquire`](super::core::Core::reacquire)).
    fn reacquire(&self);
    /// Registers the calling thread's load counter with the port.
    fn register_thread(&self) -> Arc<AtomicU64>;
}

#[derive(Default)]
struct Activity {
    /// The port this thread holds a slot on, if any.
    active: Option<Arc<dyn ConcurrencySlot>>,
    /// This thread's dequeue counter on the port it last took packets from.
    /// The weak reference keeps that port's allocation (not the port) alive,
    /// so that a new port cannot be allocated at the same address and be
    /// mistaken for it.
    load: Option<(Weak<dyn ConcurrencySlot>, Arc<AtomicU64>)>,
    /// This thread's parking cell, reused across waits.
    waiter: Option<Arc<Waiter>>,
}

impl Activity {
    /// Mirrors the record into [`FAST`]; called after every change.
    fn sync(&self) {
        let port = self
            .active
            .as_ref()
            .map_or(ptr::null(), |p| Arc::as_ptr(p) as *const ());
        let counter = match &self.load {
            Some((k, c)) if !port.is_null() && Weak::as_ptr(k) as *const () == port => {
                Arc::as_ptr(c)
            }
            _ => ptr::null(),
        };
        FAST.with(|f| f.set((port, counter)));
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        FAST.with(|f| f.set((ptr::null(), ptr::null())));
        if let Some(port) = self.active.take() {
            port.release();
        }
    }
}

thread_local! {
    static ACTIVITY: RefCell<Activity> = RefCell::default();
    /// A copy of `ACTIVITY`'s active port (its address) and, when the load
    /// counter is that port's, the counter: what a `get` by a thread that
    /// stays active on one port needs, read without the `RefCell` and the
    /// lazy initialisation (a const thread-local with no destructor).
    /// `Activity::sync` keeps it equal to the record; the counter it points
    /// to is kept alive by the record's `load`.
    static FAST: Cell<(*const (), *const AtomicU64)> = const { Cell::new((ptr::null(), ptr::null())) };
}

/// Whether the thread holds a slot on `port`, from the fast copy.
#[inline]
pub(crate) fn active_here(port: *const ()) -> bool {
    FAST.with(|f| f.get().0 == port)
}

/// Counts `n` packets against the thread's load on `port` if the fast copy
/// says it is active there with that port's counter; returns whether it did
/// (otherwise call [`set_active`]).
#[inline]
pub(crate) fn count_here(port: *const (), n: u64) -> bool {
    let (p, c) = FAST.with(Cell::get);
    if p != port || c.is_null() {
        return false;
    }
    // SAFETY: `c` is the counter of `ACTIVITY`'s `load` while `FAST` names
    // it (`Activity::sync` runs after every change of the record), and that
    // `Arc` keeps it alive. Only this thread writes its counter.
    let c = unsafe { &*c };
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    true
}

fn same(a: &Arc<dyn ConcurrencySlot>, b: *const ()) -> bool {
    Arc::as_ptr(a) as *const () == b
}

/// Called at the start of `get` on `port`: ends the thread's activity on any
/// other port, and says whether it was active on this one. The slot on `port`
/// stays recorded; the caller hands it to the port's claim, and then calls
/// [`set_active`] or [`clear`] with the outcome.
pub(crate) fn begin_get(port: *const ()) -> bool {
    let (here, other) = ACTIVITY.with(|a| {
        let mut a = a.borrow_mut();
        match &a.active {
            Some(p) if same(p, port) => (true, None),
            Some(_) => {
                let other = a.active.take();
                a.sync();
                (false, other)
            }
            None => (false, None),
        }
    });
    if let Some(p) = other {
        p.release();
    }
    here
}

/// Records that the thread now holds a slot on `port`, and counts `n`
/// packets against it.
pub(crate) fn set_active<S: ConcurrencySlot + 'static>(port: &Arc<S>, n: u64) {
    let key = Arc::as_ptr(port) as *const ();
    ACTIVITY.with(|a| {
        let mut a = a.borrow_mut();
        // Cloning the Arc only when the record changes keeps the shared
        // reference count off the hot path.
        if !matches!(&a.active, Some(p) if same(p, key)) {
            a.active = Some(port.clone());
        }
        match &a.load {
            Some((k, c)) if Weak::as_ptr(k) as *const () == key => {
                // Only this thread writes its counter: no read-modify-write needed.
                c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed)
            }
            _ => {
                let c = port.register_thread();
                c.fetch_add(n, Ordering::Relaxed);
                let port: Weak<dyn ConcurrencySlot> = Arc::downgrade(port) as Weak<S>;
                a.load = Some((port, c));
            }
        }
        a.sync();
    })
}

/// Records that the thread holds no slot (the port's claim already gave it up).
pub(crate) fn clear() {
    let old = ACTIVITY.with(|a| {
        let mut a = a.borrow_mut();
        let old = a.active.take();
        a.sync();
        old
    });
    drop(old);
}

/// Whether the thread holds a slot on `port`.
pub(crate) fn is_active_on(port: *const ()) -> bool {
    ACTIVITY.with(|a| matches!(&a.borrow().active, Some(p) if same(p, port)))
}

/// Takes the thread's slot on `port` out of the record (for a blocking
/// section), leaving the thread inactive. The caller releases it.
pub(crate) fn take_if_active_on(port: *const ()) -> Option<Arc<dyn ConcurrencySlot>> {
    ACTIVITY.with(|a| {
        let mut a = a.borrow_mut();
        match &a.active {
            Some(p) if same(p, port) => {
                let slot = a.active.take();
                a.sync();
                slot
            }
            _ => None,
        }
    })
}

/// Puts a slot back after a blocking section, if the thread has not taken
/// another one meanwhile. Returns whether the caller must re-count it.
pub(crate) fn restore(port: Arc<dyn ConcurrencySlot>) -> bool {
    ACTIVITY.with(|a| {
        let mut a = a.borrow_mut();
        if a.active.is_none() {
            a.active = Some(port);
            a.sync();
            true
        } else {
            false
        }
    })
}

/// The thread's reusable waiter.
pub(crate) fn waiter() -> Arc<Waiter> {
    ACTIVITY.with(|a| {
        a.borrow_mut()
            .waiter
            .get_or_insert_with(|| Arc::new(Waiter::for_current_thread()))
            .clone()
    })
}
