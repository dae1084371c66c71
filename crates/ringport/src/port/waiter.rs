//! A parked thread on a port's waiter stack.
//!
//! The stack itself lives in [`Core`](super::core::Core) under its mutex; a
//! waiter is the per-thread cell a releasing thread writes its verdict into
//! before unparking the owner. The verdict is written under the stack's mutex,
//! so a thread that times out can tell, by taking that mutex, whether it was
//! granted a packet in the meantime.

use std::time::Instant;

use crate::sync::{thread, AtomicBool, AtomicU8, Ordering};

pub(crate) const WAITING: u8 = 0;
pub(crate) const GRANTED: u8 = 1;
pub(crate) const CLOSED: u8 = 2;
/// Promoted: the port's kernel sleeper left the kernel and this thread is to
/// take its place (it owns no packet).
pub(crate) const LEAD: u8 = 3;

/// The per-thread cell a parked thread waits on.
pub struct Waiter {
    verdict: AtomicU8,
    /// Set while the waiter sleeps in the kernel rather than in `park`: it is
    /// woken through the kernel source, not by unparking.
    in_kernel: AtomicBool,
    thread: thread::Thread,
    /// Under loom the owner sleeps on this instead of its park token: loom's
    /// `Thread::unpark` also resumes a thread blocked on a *mutex*
    /// (tokio-rs/loom#249), which is what a timed-out waiter is while a
    /// releaser that holds the stack's mutex grants it. On std that unpark is
    /// harmless (the token waits for a later park, and `wait` loops); loom
    /// would fail the model with "expected to be able to acquire lock".
    #[cfg(loom)]
    notify: loom::sync::Notify,
}

impl Waiter {
    /// A waiter that wakes the calling thread.
    pub fn for_current_thread() -> Waiter {
        Waiter {
            verdict: AtomicU8::new(WAITING),
            in_kernel: AtomicBool::new(false),
            thread: thread::current(),
            #[cfg(loom)]
            notify: loom::sync::Notify::new(),
        }
    }

    /// Re-arms a waiter before it goes back on the stack. Only its owner calls
    /// this, while no releaser can hold it (it is not on the stack).
    pub(crate) fn reset(&self, in_kernel: bool) {
        self.verdict.store(WAITING, Ordering::Relaxed);
        self.in_kernel.store(in_kernel, Ordering::Relaxed);
    }

    /// Whether this is the calling thread's own waiter.
    pub(crate) fn is_current(&self) -> bool {
        self.thread.id() == thread::current().id()
    }

    pub(crate) fn in_kernel(&self) -> bool {
        self.in_kernel.load(Ordering::Relaxed)
    }

    pub(crate) fn verdict(&self) -> u8 {
        self.verdict.load(Ordering::Acquire)
    }

    /// Gives the waiter its verdict and, unless it sleeps in the kernel (the
    /// caller wakes that one), unparks it. Called with the stack's mutex held,
    /// after the waiter was taken off the stack.
    pub(crate) fn release(&self, verdict: u8) {
        self.verdict.store(verdict, Ordering::Release);
        if !self.in_kernel() {
            #[cfg(not(loom))]
            self.thread.unpark();
            #[cfg(loom)]
            self.notify.notify();
        }
    }

    /// Blocks until a verdict arrives or the deadline passes; returns the
    /// verdict, `WAITING` meaning the deadline passed first. Spurious wake-ups
    /// (including a late unpark meant for an earlier wait) loop.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> u8 {
        loop {
            let v = self.verdict();
            if v != WAITING {
                return v;
            }
            match deadline {
                #[cfg(not(loom))]
                None => thread::park(),
                #[cfg(loom)]
                None => self.notify.wait(),
                #[cfg(not(loom))]
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return WAITING;
                    }
                    thread::park_timeout(d - now);
                }
                // loom has no clock: a timed wait is modelled as "one chance
                // to be released, then the deadline passes", which explores
                // both orders of a timeout racing a grant.
                #[cfg(loom)]
                Some(_) => {
                    thread::yield_now();
                    return self.verdict();
                }
            }
        }
    }
}
