//! The io_uring backend: one ring per port.
//!
//! Many threads submit (each under the SQ mutex, a short push and an
//! `io_uring_enter`), one thread at a time reaps (the CQ mutex, taken with
//! `try_lock` so nobody waits to reap), and at most one thread sleeps in the
//! kernel on the ring: the port's *kernel sleeper* (see `port/core.rs`). The
//! others park in user space. This follows the liburing maintainer's advice
//! (one reaper per ring) and avoids the thundering herd of several threads in
//! `io_uring_enter(GETEVENTS)` on one ring. A user post that must wake the
//! kernel sleeper submits a NOP, whose completion ends its wait.

use std::io;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::sync::{AtomicBool, Mutex, Ordering};

pub(crate) mod driver;

/// `user_data` of the NOPs that wake the kernel sleeper.
pub(crate) const WAKE_NOP: u64 = u64::MAX;

pub(crate) struct Ring {
    ring: IoUring,
    sq: Mutex<()>,
    cq: Mutex<()>,
    /// A wake NOP is on its way to the kernel sleeper. Any thread may reap
    /// the NOP's completion; one that is not the sleeper and finds this set
    /// sends another, so a wake is never lost to a bystander.
    wake_armed: AtomicBool,
}

impl Ring {
    /// Sets up a ring with `entries` submission slots.
    pub(crate) fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            // Completions never get lost on overflow: the kernel keeps them.
            .setup_clamp()
            .build(entries)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOMEM) => io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring_setup({entries}) failed: {e} (the ring's memory is charged to \
                         RLIMIT_MEMLOCK or the memory cgroup; raise `ulimit -l` or use fewer entries)"
                    ),
                ),
                _ => io::Error::new(e.kind(), format!("io_uring_setup({entries}) failed: {e}")),
            })?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11+ needed)",
            ));
        }
        // Every opcode the port issues: a kernel (or a sandbox such as gVisor)
        // that lacks one makes Auto fall back to epoll instead of failing later.
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let needed = [
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
        ];
        if let Some((_, name)) = needed.iter().find(|(code, _)| !probe.is_supported(*code)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
        Ok(Ring {
            ring,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            wake_armed: AtomicBool::new(false),
        })
    }

    /// Queues one SQE and submits it.
    ///
    /// # Safety
    /// Every buffer or structure the entry points to must stay valid, and not
    /// be accessed in a way that conflicts with the kernel's, until its
    /// completion has been reaped.
    pub(crate) unsafe fn submit(&self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller's promise, for this one entry.
        unsafe { self.submit_all(std::slice::from_ref(sqe)) }
    }

    /// Queues the entries, in order, and submits them with one
    /// `io_uring_enter` (more only when they do not fit in the SQ).
    ///
    /// # Safety
    /// As [`submit`](Self::submit), for every entry.
    pub(crate) unsafe fn submit_all(&self, sqes: &[squeue::Entry]) -> io::Result<()> {
        let _guard = crate::sync::lock(&self.sq);
        for sqe in sqes {
            loop {
                // SAFETY: the SQ mutex makes this the only SubmissionQueue
                // view alive; the entry's pointers are the caller's promise.
                let pushed = unsafe {
                    let mut sq = self.ring.submission_shared();
                    let r = sq.push(sqe);
                    sq.sync();
                    r.is_ok()
                };
                if pushed {
                    break;
                }
                // SQ full: hand what is there to the kernel and try again.
                self.enter_submit()?;
            }
        }
        self.enter_submit()
    }

    fn enter_submit(&self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The CQ is full of unreaped entries: they are kept (NODROP)
                // and the SQE stays queued; the next reap frees room and the
                // next enter submits it.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
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
        let r = match deadline {
            None => self.ring.submitter().submit_and_wait(1),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ts = types::Timespec::from(left);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        // ETIME (deadline), EINTR (signal), EBUSY: the caller re-checks everything.
        let _ = r;
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
            let mut cq = unsafe { self.ring.completion_shared() };
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
