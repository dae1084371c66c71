//! A completion queue's own io_uring ring.
//!
//! The ring is set up without `DEFER_TASKRUN` or `COOP_TASKRUN`: the kernel
//! then completes a request by interrupting its submitter wherever it runs
//! (task work signalled like a signal), so results appear in the CQ ring while
//! a thread spins on it in user space, and reading them is a read of shared
//! memory. `SUBMIT_ALL` makes one `io_uring_enter` take every queued entry.
//!
//! The wrapper adds no locking of its own: the completion queue holds its
//! submission lock around [`push`](Ring::push) and [`submit`](Ring::submit),
//! and its consumer lock around [`completions`](Ring::completions).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

/// The most CQ entries io_uring gives one ring.
pub(super) const MAX_ENTRIES: u32 = 65_536;

/// At most this many submission slots: a larger deferred batch is handed to
/// the kernel in pieces of this size.
const MAX_SQ: u32 = 4096;

pub(in crate::rio) struct Ring {
    ring: IoUring,
}

impl Ring {
    /// A ring whose CQ holds at least `cq_entries` completions.
    pub(in crate::rio) fn new(cq_entries: u32) -> io::Result<Ring> {
        let cq = cq_entries.clamp(1, MAX_ENTRIES).next_power_of_two();
        let sq = cq.min(MAX_SQ);
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_submit_all()
            .build(sq)
            .map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::ENOMEM) => {
                        "the ring's memory is charged to RLIMIT_MEMLOCK or the memory cgroup; \
                         raise `ulimit -l` or ask for a smaller queue"
                    }
                    Some(libc::EPERM) | Some(libc::ENOSYS) => {
                        "io_uring is switched off here (seccomp, kernel.io_uring_disabled); \
                         use the epoll backend (RINGPORT_BACKEND=epoll or auto)"
                    }
                    _ => "",
                };
                io::Error::new(
                    e.kind(),
                    format!("io_uring_setup(sq {sq}, cq {cq}) for a completion queue failed: {e}. {why}"),
                )
            })?;
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring lacks NODROP (Linux 5.5+ needed)",
            ));
        }
        let mut probe = Probe::new();
        let probed = ring.submitter().register_probe(&mut probe).is_ok();
        let needed = [
            opcode::Nop::CODE,
            opcode::Recv::CODE,
            opcode::Send::CODE,
            opcode::RecvMsg::CODE,
            opcode::SendMsg::CODE,
        ];
        if !probed || !needed.iter().all(|&op| probe.is_supported(op)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring lacks an operation registered I/O needs \
                 (RECV, SEND, RECVMSG, SENDMSG: Linux 5.6+)",
            ));
        }
        Ok(Ring { ring })
    }

    /// Completions the CQ ring holds.
    pub(super) fn capacity(&self) -> u32 {
        self.ring.params().cq_entries()
    }

    /// Queues one entry without submitting it. When the SQ is full, what is
    /// in it is submitted first to make room.
    ///
    /// # Safety
    /// The caller holds the completion queue's submission lock (so this is
    /// the only view of the SQ), and every pointer in `sqe` stays valid, and
    /// is not accessed in conflict with the kernel, until its completion has
    /// been reaped.
    pub(super) unsafe fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's lock makes this the only SQ view alive;
            // the entry's pointers are the caller's promise.
            let pushed = unsafe {
                let mut sq = self.ring.submission_shared();
                let r = sq.push(sqe);
                sq.sync();
                r.is_ok()
            };
            if pushed {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Entries the SQ ring holds.
    pub(super) fn sq_entries(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Entries queued and not yet handed to the kernel.
    ///
    /// # Safety
    /// The caller holds the submission lock.
    pub(super) unsafe fn queued(&self) -> usize {
        // SAFETY: the caller's lock makes this the only SQ view alive.
        unsafe { self.ring.submission_shared().len() }
    }

    /// Hands every queued entry to the kernel in one `io_uring_enter`.
    /// The caller holds the submission lock.
    pub(super) fn submit(&self) -> io::Result<usize> {
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => return r,
            }
        }
    }

    /// A view of the CQ ring: reading it is a read of shared memory.
    ///
    /// # Safety
    /// The caller holds the completion queue's consumer lock for as long as
    /// the view lives (it is the only CQ view).
    pub(super) unsafe fn completions(&self) -> cqueue::CompletionQueue<'_> {
        // SAFETY: the caller's lock makes this the only CQ view alive.
        unsafe { self.ring.completion_shared() }
    }

    /// Registers `fd` as the eventfd the kernel signals on completions
    /// (while the CQ ring's `EVENTFD_DISABLED` flag is clear).
    pub(super) fn register_eventfd(&self, fd: RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(fd)
    }

    /// Sets or clears `IORING_CQ_EVENTFD_DISABLED` in the CQ ring's flags: a
    /// store to shared memory, no system call.
    ///
    /// # Safety
    /// The caller holds the consumer lock.
    pub(super) unsafe fn set_eventfd(&self, enabled: bool) {
        // SAFETY: the caller's lock makes this the only CQ view alive; the
        // view is dropped at once, rewriting the head it read (unchanged).
        let cq = unsafe { self.completions() };
        if enabled {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }

    /// Waits in the kernel until a completion is waiting or `deadline`
    /// passes; runs this thread's pending task work on the way.
    pub(super) fn wait(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&ts);
        // ETIME, EINTR, EBUSY: the caller looks at the ring again either way.
        let _ = self.ring.submitter().submit_with_args(1, &args);
    }

    /// Cancels every request the kernel holds, waiting up to `until` for the
    /// cancellations to be issued (their completions come through the CQ).
    pub(super) fn cancel_all(&self, until: Instant) -> io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        let r = self.ring.submitter().register_sync_cancel(
            Some(types::Timespec::from(left)),
            types::CancelBuilder::any(),
        );
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Cancels every request on `fd` (synchronously, bounded by `until`).
    pub(super) fn cancel_fd(&self, fd: RawFd, until: Instant) -> io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        let r = self.ring.submitter().register_sync_cancel(
            Some(types::Timespec::from(left)),
            types::CancelBuilder::fd(types::Fd(fd)).all(),
        );
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
