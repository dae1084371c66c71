//! The one io_uring ring wrapper: setup (with the checks that make `Auto`
//! fall back to epoll instead of failing later), pushing and submitting
//! entries, the CQ ring as shared memory, and waiting.
//!
//! The ring is set up without `DEFER_TASKRUN` (which would tie it to one
//! thread), and with `COOP_TASKRUN` only where nobody spins on the CQ ring in
//! user space (see [`Purpose::coop_taskrun`]). `SUBMIT_ALL` makes one
//! `io_uring_enter` take every queued entry.
//!
//! The wrapper adds no locking of its own: its owner (the port's ring, a
//! RIO completion queue) holds a submission lock around [`push`](Ring::push)
//! and a consumer lock around [`completions`](Ring::completions).
//! [`submit`](Ring::submit) needs none (it reads the SQ ring's head and tail
//! atomically, and the kernel serializes concurrent enters).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{cqueue, squeue, types, IoUring, Probe};

/// The most CQ entries io_uring gives one ring.
pub(crate) const MAX_ENTRIES: u32 = 65_536;

/// At most this many submission slots: a larger batch is handed to the
/// kernel in pieces of this size.
const MAX_SQ: u32 = 4096;

/// What a ring is for, so that a refusal says what failed and what to do.
pub(crate) struct Purpose {
    /// "a completion port", "a completion queue".
    pub(crate) what: &'static str,
    /// Every opcode its owner issues, with its name: a kernel (or a sandbox
    /// such as gVisor) that lacks one is refused here.
    pub(crate) ops: &'static [(u8, &'static str)],
    /// `IORING_SETUP_COOP_TASKRUN`: the kernel finishes a request's work
    /// (task work) on its submitting thread when that thread next enters the
    /// kernel (a system call, an interrupt such as the scheduler tick, or a
    /// wait it is woken from) instead of interrupting it at once with an
    /// inter-processor interrupt. For threads that wait in the kernel (the
    /// port's) this costs no latency and saves the interrupt; for a thread
    /// that spins on the CQ ring in user space (a polled RIO queue) it would
    /// hold results back until the next tick.
    pub(crate) coop_taskrun: bool,
}

pub(crate) struct Ring {
    ring: IoUring,
    /// The completions the ring's owner may count on: the CQ ring's size,
    /// or less when the rest is room for completions beyond one per
    /// request (see [`with_slack`](Self::with_slack)).
    usable: u32,
}

impl Ring {
    /// A ring whose CQ holds at least `cq_entries` completions, with at most
    /// `sq_entries` submission slots (both rounded to what io_uring allows).
    pub(crate) fn new(sq_entries: u32, cq_entries: u32, purpose: &Purpose) -> io::Result<Ring> {
        let cq = cq_entries.clamp(1, MAX_ENTRIES).next_power_of_two();
        let sq = sq_entries.clamp(1, MAX_SQ).min(cq);
        let what = purpose.what;
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq).setup_clamp().setup_submit_all();
        if purpose.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        let ring = builder.build(sq).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::ENOMEM) => {
                    "the ring's memory is charged to RLIMIT_MEMLOCK or the memory cgroup; \
                         raise `ulimit -l` or ask for fewer entries"
                }
                Some(libc::EPERM) | Some(libc::ENOSYS) => {
                    "io_uring is switched off here (seccomp, kernel.io_uring_disabled); \
                         use the epoll backend (RINGPORT_BACKEND=epoll or auto)"
                }
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("io_uring_setup(sq {sq}, cq {cq}) for {what} failed: {e}. {why}"),
            )
        })?;
        // NODROP: completions are never lost to a full CQ ring, the kernel
        // keeps them. EXT_ARG: a wait with a timeout.
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring lacks NODROP or EXT_ARG (Linux 5.11+ needed)",
            ));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if let Some((_, name)) = purpose.ops.iter().find(|(op, _)| !probe.is_supported(*op)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this kernel's io_uring lacks IORING_OP_{name}, which {what} needs"),
            ));
        }
        let usable = ring.params().cq_entries();
        Ok(Ring { ring, usable })
    }

    /// A ring for `size` requests whose CQ ring has room for as many
    /// completions again (up to io_uring's limit): a multishot request's
    /// final completion comes beside those of the requests it served, and a
    /// full CQ ring would hold it back in the kernel's overflow list, out of
    /// sight until the next `io_uring_enter`. [`capacity`](Self::capacity)
    /// is `size` rounded as [`new`](Self::new) rounds it.
    pub(crate) fn with_slack(size: u32, purpose: &Purpose) -> io::Result<Ring> {
        let mut ring = Ring::new(size, size.saturating_mul(2), purpose)?;
        let want = size.clamp(1, MAX_ENTRIES).next_power_of_two();
        ring.usable = want.min(ring.usable);
        Ok(ring)
    }

    /// Completions the ring's owner may count on (see
    /// [`with_slack`](Self::with_slack)).
    pub(crate) fn capacity(&self) -> u32 {
        self.usable
    }

    /// Queues one entry without submitting it. When the SQ is full, what is
    /// in it is submitted first to make room.
    ///
    /// # Safety
    /// The caller holds the completion queue's submission lock (so this is
    /// the only view of the SQ), and every pointer in `sqe` stays valid, and
    /// is not accessed in conflict with the kernel, until its completion has
    /// been reaped.
    pub(crate) unsafe fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
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
    pub(crate) fn sq_entries(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Entries queued and not yet handed to the kernel.
    ///
    /// # Safety
    /// The caller holds the submission lock.
    pub(crate) unsafe fn queued(&self) -> usize {
        // SAFETY: the caller's lock makes this the only SQ view alive.
        unsafe { self.ring.submission_shared().len() }
    }

    /// Hands every queued entry to the kernel in one `io_uring_enter`.
    /// `EBUSY` (the CQ is full of
    /// unreaped entries, which NODROP keeps) leaves the entries queued for
    /// the next enter, after a reap has made room.
    pub(crate) fn submit(&self) -> io::Result<usize> {
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                r => return r,
            }
        }
    }

    /// Registers an empty (sparse) table of `n` direct descriptors.
    pub(crate) fn register_files_sparse(&self, n: u32) -> io::Result<()> {
        self.ring.submitter().register_files_sparse(n)
    }

    /// Puts `fd` in slot `slot` of the direct descriptor table (`-1`
    /// empties the slot, dropping the table's reference to the file).
    pub(crate) fn update_file(&self, slot: u32, fd: RawFd) -> io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(slot, &[fd])
            .map(drop)
    }

    /// A view of the CQ ring: reading it is a read of shared memory.
    ///
    /// # Safety
    /// The caller holds the completion queue's consumer lock for as long as
    /// the view lives (it is the only CQ view).
    pub(crate) unsafe fn completions(&self) -> cqueue::CompletionQueue<'_> {
        // SAFETY: the caller's lock makes this the only CQ view alive.
        unsafe { self.ring.completion_shared() }
    }

    /// Registers `fd` as the eventfd the kernel signals on completions
    /// (while the CQ ring's `EVENTFD_DISABLED` flag is clear).
    pub(crate) fn register_eventfd(&self, fd: RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(fd)
    }

    /// Sets or clears `IORING_CQ_EVENTFD_DISABLED` in the CQ ring's flags: a
    /// store to shared memory, no system call.
    ///
    /// # Safety
    /// The caller holds the consumer lock.
    pub(crate) unsafe fn set_eventfd(&self, enabled: bool) {
        // SAFETY: the caller's lock makes this the only CQ view alive; the
        // view is dropped at once, rewriting the head it read (unchanged).
        let cq = unsafe { self.completions() };
        if enabled {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }

    /// Submits what is queued and waits in the kernel until a completion is
    /// waiting or `deadline` passes (or a signal interrupts); runs this
    /// thread's pending task work on the way.
    pub(crate) fn wait(&self, deadline: Option<Instant>) {
        // ETIME, EINTR, EBUSY: the caller looks at the ring again either way.
        let _ = match deadline {
            None => self.ring.submitter().submit_and_wait(1),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ts = types::Timespec::from(left);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
    }

    /// Registers the provided-buffer ring at `addr` (`entries` entries, a
    /// power of two, page-aligned) as buffer group `bgid`.
    ///
    /// # Safety
    /// The memory stays allocated, and is written only as the buffer ring
    /// protocol allows (entries past the published tail, the tail itself),
    /// until the group is unregistered or the ring is gone.
    pub(crate) unsafe fn register_buf_ring(
        &self,
        addr: u64,
        entries: u16,
        bgid: u16,
    ) -> io::Result<()> {
        // SAFETY: the caller's promise.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, bgid, 0)
        }
    }

    /// Unregisters buffer group `bgid`.
    pub(crate) fn unregister_buf_ring(&self, bgid: u16) -> io::Result<()> {
        self.ring.submitter().unregister_buf_ring(bgid)
    }

    /// Cancels every request the kernel holds, waiting up to `until` for the
    /// cancellations to be issued (their completions come through the CQ).
    pub(crate) fn cancel_all(&self, until: Instant) -> io::Result<()> {
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
    pub(crate) fn cancel_fd(&self, fd: RawFd, until: Instant) -> io::Result<()> {
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

/// The `ioprio` of a receive or send that should arm its poll before trying
/// (`IORING_RECVSEND_POLL_FIRST`, Linux 5.19+), or 0 where the kernel is
/// older and would refuse the flag. The io-uring crate does not export it.
pub(crate) fn poll_first() -> u16 {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let supported = *SUPPORTED.get_or_init(|| kernel_at_least(5, 19));
    if supported {
        1
    } else {
        0
    }
}

/// Whether the running kernel's release is at least `major.minor`.
pub(crate) fn kernel_at_least(want_major: u32, want_minor: u32) -> bool {
    {
        // SAFETY: all-zero is a valid `utsname`, which uname fills in.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: a live utsname for uname to fill in.
        if unsafe { libc::uname(&mut u) } != 0 {
            return false;
        }
        // SAFETY: uname NUL-terminates `release` within the array.
        let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
        let mut parts = release
            .to_str()
            .unwrap_or("")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (want_major, want_minor)
    }
}
