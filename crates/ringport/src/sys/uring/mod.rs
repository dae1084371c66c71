//! The io_uring backend: one ring per port.
//!
//! Many threads submit (each pushes under the SQ mutex, a few stores, then
//! makes its `io_uring_enter` with no lock held), one thread at a time reaps (the CQ mutex, taken with
//! `try_lock` so nobody waits to reap), and at most one thread sleeps in the
//! kernel on the ring: the port's *kernel sleeper* (see `port/core.rs`). The
//! others park in user space. This follows the liburing maintainer's advice
//! (one reaper per ring) and avoids the thundering herd of several threads in
//! `io_uring_enter(GETEVENTS)` on one ring. A user post that must wake the
//! kernel sleeper submits a NOP, whose completion ends its wait.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue};

use crate::sync::{AtomicBool, Mutex, Ordering};

pub(crate) mod driver;
pub(crate) mod ring;
mod sqe;
mod table;

use self::ring::{Purpose, Ring};

thread_local! {
    /// The calling thread loops on `get` (a pool worker that asked for it):
    /// its submissions may wait for the enter of its next wait.
    static HOLD: Cell<bool> = const { Cell::new(false) };
    /// The ring whose queue holds entries this thread has not submitted
    /// yet (compared, never dereferenced).
    static HELD: Cell<*const PortRing> = const { Cell::new(std::ptr::null()) };
}

/// Lets the calling thread's operations wait in the SQ for the enter of its
/// next wait in the kernel (which submits and waits in one system call)
/// instead of each taking an `io_uring_enter` of its own. The thread must
/// then come back to `get` (or flush): entries are handed over when it
/// waits in the kernel, parks, blocks (`CompletionPort::blocking`), gets
/// an error from `get`, or leaves the pool (see `WorkerPool`).
pub(crate) fn hold_submissions(on: bool) {
    HOLD.with(|h| h.set(on));
}

/// `user_data` of the NOPs that wake the kernel sleeper.
pub(crate) const WAKE_NOP: u64 = u64::MAX;

/// Every opcode the port issues.
const PORT_OPS: Purpose = Purpose {
    what: "a completion port",
    ops: &[
        (opcode::Nop::CODE, "NOP"),
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Shutdown::CODE, "SHUTDOWN"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ],
    // The port's threads wait in the kernel (the sleeper in io_uring_enter,
    // the others on a futex), where task work reaches them without an
    // interrupt, which cost about half of a TCP echo message's server CPU
    // here (BENCHMARKS.md, io_uring engine).
    coop_taskrun: true,
};

/// A port's ring, shared by every thread of the port.
pub(crate) struct PortRing {
    ring: Ring,
    sq: Mutex<()>,
    cq: Mutex<()>,
    /// A wake NOP is on its way to the kernel sleeper. Any thread may reap
    /// the NOP's completion; one that is not the sleeper and finds this set
    /// sends another, so a wake is never lost to a bystander.
    wake_armed: AtomicBool,
    /// Slots of the direct descriptor table, registered at the first
    /// association (0: none, registration failed).
    files: std::sync::OnceLock<u32>,
}

/// The most direct descriptors a port's table holds: a descriptor numbered
/// past that (or past `RLIMIT_NOFILE`) goes by its number instead.
const MAX_FIXED_FILES: u64 = 65_536;

impl PortRing {
    /// Sets up a ring with `entries` submission slots.
    pub(crate) fn new(entries: u32) -> io::Result<PortRing> {
        Ok(PortRing {
            ring: Ring::new(entries, entries.saturating_mul(2), &PORT_OPS)?,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            wake_armed: AtomicBool::new(false),
            files: std::sync::OnceLock::new(),
        })
    }

    /// Registers `fd` as a direct descriptor in slot `fd` (a descriptor
    /// number is unique while its handle owns it), so that its SQEs skip
    /// the kernel's descriptor lookup (`IOSQE_FIXED_FILE`). Returns whether
    /// it did; a descriptor that is not registered goes by its number.
    pub(crate) fn register_fd(&self, fd: RawFd) -> bool {
        let slots = *self.files.get_or_init(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the rlimit it is given.
            let n = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
                0 => lim.rlim_cur.min(MAX_FIXED_FILES) as u32,
                _ => 0,
            };
            match n > 0 && self.ring.register_files_sparse(n).is_ok() {
                true => n,
                false => 0,
            }
        });
        fd >= 0 && (fd as u32) < slots && self.ring.update_file(fd as u32, fd).is_ok()
    }

    /// Empties slot `fd` before its handle closes the descriptor: the table
    /// holds its own reference to the file, which would keep a socket open.
    pub(crate) fn unregister_fd(&self, fd: RawFd) {
        let _ = self.ring.update_file(fd as u32, -1);
    }

    /// Queues one SQE and submits it.
    ///
    /// # Safety
    /// Every buffer or structure the entry points to must stay valid, and not
    /// be accessed in a way that conflicts with the kernel's, until its
    /// completion has been reaped.
    pub(crate) unsafe fn submit(&self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller's promise, for this one entry.
        unsafe { self.queue(std::slice::from_ref(sqe))? };
        // Wakes and cancels go at once, whatever this thread holds.
        self.enter();
        Ok(())
    }

    /// Queues the entries, in order, in the SQ ring without handing them to
    /// the kernel (only when they do not fit is the ring submitted to make
    /// room). The SQ mutex is held for the pushes alone, a few stores to
    /// shared memory; [`flush`](Self::flush) makes the system call.
    ///
    /// # Safety
    /// As [`submit`](Self::submit), for every entry.
    pub(crate) unsafe fn queue(&self, sqes: &[squeue::Entry]) -> io::Result<()> {
        // SAFETY: the caller's promise.
        match unsafe { self.queue_some(sqes) } {
            (_, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// As [`queue`](Self::queue), returning how many of the entries (a
    /// prefix) were queued, and the error that stopped it if any.
    ///
    /// # Safety
    /// As [`submit`](Self::submit), for every entry.
    pub(crate) unsafe fn queue_some(&self, sqes: &[squeue::Entry]) -> (usize, Option<io::Error>) {
        let _guard = crate::sync::lock(&self.sq);
        for (i, sqe) in sqes.iter().enumerate() {
            // SAFETY: the SQ mutex is held; the entry's pointers are the
            // caller's promise.
            if let Err(e) = unsafe { self.ring.push(sqe) } {
                return (i, Some(e));
            }
        }
        (sqes.len(), None)
    }

    /// Hands every queued entry to the kernel, with no lock held:
    /// `io_uring_enter` takes whatever is queued when it runs (the kernel
    /// serializes concurrent enters), so an entry queued by one thread is
    /// submitted by whichever enter comes first, and an enter that finds
    /// nothing left submits nothing. An enter that fails leaves the entries
    /// queued for the next one (another flush, or the kernel sleeper's wait,
    /// which submits before it sleeps).
    ///
    /// A thread that holds its submissions (see [`hold_submissions`])
    /// leaves them queued for the enter of its next wait instead.
    pub(crate) fn flush(&self) {
        if !self.hold() {
            self.enter();
        }
    }

    /// The system call of [`flush`](Self::flush), whatever the thread holds.
    fn enter(&self) {
        if self.holds() {
            HELD.with(|h| h.set(std::ptr::null()));
        }
        let _ = self.ring.submit();
    }

    /// Whether the calling thread leaves what it just queued for the enter
    /// of its next wait (see [`hold_submissions`]), and notes that it does.
    fn hold(&self) -> bool {
        if !HOLD.with(Cell::get) {
            return false;
        }
        let me = self as *const PortRing;
        let held = HELD.with(Cell::get);
        if held.is_null() || std::ptr::eq(held, me) {
            HELD.with(|h| h.set(me));
            true
        } else {
            // It holds entries of another port's ring: this one goes now.
            false
        }
    }

    /// Whether the calling thread holds entries queued in this ring.
    pub(crate) fn holds(&self) -> bool {
        std::ptr::eq(HELD.with(Cell::get), self)
    }

    /// Hands the kernel what the calling thread held back, if anything.
    pub(crate) fn submit_held(&self) {
        if self.holds() {
            self.enter();
        }
    }

    /// Wakes the thread sleeping in [`wait`](Self::wait), if any.
    pub(crate) fn wake(&self) {
        self.wake_armed.store(true, Ordering::Release);
        let nop = opcode::Nop::new().build().user_data(WAKE_NOP);
        // SAFETY: a NOP points at no memory.
        let _ = unsafe { self.submit(&nop) };
    }

    /// Sleeps in the kernel until a completion is waiting or the deadline
    /// passes (or a signal interrupts). Only the port's kernel sleeper calls it.
    pub(crate) fn wait(&self, deadline: Option<Instant>) {
        // This enter submits whatever is queued, what this thread held
        // back included.
        if self.holds() {
            HELD.with(|h| h.set(std::ptr::null()));
        }
        self.ring.wait(deadline);
        // Whatever woke us, the caller now re-checks its verdict, which any
        // waker set before waking: pending wakes are served.
        self.wake_armed.store(false, Ordering::Release);
    }

    /// Reaps every completion waiting now, if no other thread is reaping.
    /// Returns how many it passed to `f` (wake NOPs are skipped). `sleeper`
    /// says whether the caller is the kernel sleeper; anyone else passes on
    /// a wake NOP it takes while a wake is armed.
    pub(crate) fn reap(&self, sleeper: bool, mut f: impl FnMut(cqueue::Entry)) -> usize {
        let Ok(_guard) = self.cq.try_lock() else {
            return 0;
        };
        let mut n = 0;
        let mut stolen = false;
        {
            // SAFETY: the CQ mutex makes this the only CompletionQueue view alive.
            let mut cq = unsafe { self.ring.completions() };
            loop {
                cq.sync();
                if cq.is_empty() {
                    break;
                }
                for cqe in &mut cq {
                    if cqe.user_data() != WAKE_NOP {
                        f(cqe);
                        n += 1;
                    } else {
                        stolen = true;
                    }
                }
            }
        }
        if stolen && !sleeper && self.wake_armed.load(Ordering::Acquire) {
            self.wake();
        }
        n
    }
}
