//! `uring-raw`: the floor of a TCP echo server on io_uring on this kernel —
//! a minimal hand-written server on the `io-uring` crate, no runtime, no
//! port, one thread, the best design we know for small ping-pong messages:
//!
//! - one ring, built with `SINGLE_ISSUER | DEFER_TASKRUN` (task work runs
//!   only when this thread asks for completions, never by interrupting it)
//!   and its own fd registered (`register_ring_fd`);
//! - one multishot accept on the listener; every connection goes into the
//!   ring's registered file table (`IOSQE_FIXED_FILE` for all its I/O);
//! - one multishot RECV per connection, armed once, taking its buffers from
//!   one provided-buffer ring shared by every connection (no poll arm and no
//!   SQE per received message);
//! - one SEND of the received bytes straight from the provided buffer (no
//!   copy), which goes back to the buffer ring when the send completes; at
//!   most one send in flight per connection (what arrives meanwhile waits in
//!   order behind it), a short send resent from where it stopped;
//! - every SQE that one batch of completions produced submitted in the
//!   same `io_uring_enter` that waits for the next batch.
//!
//! `uring-raw-plain` is the same loop on a ring with no setup flags, no
//! registered ring fd and plain file descriptors, `uring-raw-coop` the same
//! with `COOP_TASKRUN` instead of `DEFER_TASKRUN` (what a ring that many
//! threads submit to, as a port's, can have), and `uring-raw-oneshot`
//! the same loop with a one-shot RECV issued after each completion instead
//! of the multishot one (what a completion port's receives look like to
//! the kernel): what those levers are worth.
//!
//! What it showed (2026-11-30, `bench tcp --pin`, Linux 6.18 on a 2-CPU
//! KVM guest; the run is BENCHMARKS.md's `tcp-pin-floor` report): the
//! kernel's TCP work billed to the server (the send with its loopback
//! delivery into the client's socket, and the receive's copy) is
//! 5.0–5.5 µs of every server's 5.8–6.4 µs per 64-byte message, whatever
//! drives it, so no design gets far below tokio here: uring-raw ~0.9×
//! tokio's server CPU per message, uring-raw-coop (a port's kind of ring)
//! ~0.95×.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;

use io_uring::squeue::Entry;
use io_uring::types::{BufRingEntry, Fd, Fixed};
use io_uring::{cqueue, opcode, squeue, IoUring, SubmissionQueue, Submitter};

use super::echo::{spawn_thread_server, Server};

/// The levers a `uring-raw` server uses.
#[derive(Clone, Copy)]
pub(super) struct Levers {
    /// How the ring runs task work.
    pub taskrun: Taskrun,
    /// Connections in the registered file table (`IOSQE_FIXED_FILE`).
    pub fixed: bool,
    /// One multishot RECV per connection; without it, a one-shot RECV
    /// (still taking a provided buffer, and with `IORING_RECVSEND_POLL_FIRST`:
    /// it arms its poll without trying first) issued again after each
    /// completion, as a completion port issues receives.
    pub multishot: bool,
}

/// How a ring runs its task work (the receives that data arriving made
/// ready, in the submitter's context).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Taskrun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: only when the thread waits for
    /// completions; needs one issuing thread per ring. Registered ring fd.
    Defer,
    /// `COOP_TASKRUN | TASKRUN_FLAG`: without interrupting the thread, at
    /// its next entry to the kernel; any thread may submit (what the
    /// port's shared ring uses). Registered ring fd.
    Coop,
    /// No flag: the kernel interrupts the thread to run it.
    Plain,
}

const ALL: Levers = Levers {
    taskrun: Taskrun::Defer,
    fixed: true,
    multishot: true,
};

/// Every lever on.
pub(super) fn start(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    start_with(threads, batch, ALL)
}

/// No setup flag, plain file descriptors.
pub(super) fn start_plain(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    let plain = Levers {
        taskrun: Taskrun::Plain,
        fixed: false,
        ..ALL
    };
    start_with(threads, batch, plain)
}

/// Every lever on, but the task run cooperative instead of deferred: what
/// a ring many threads submit to can have.
pub(super) fn start_coop(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    let coop = Levers {
        taskrun: Taskrun::Coop,
        ..ALL
    };
    start_with(threads, batch, coop)
}

/// Every lever on but the multishot receive.
pub(super) fn start_oneshot(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    let oneshot = Levers {
        multishot: false,
        ..ALL
    };
    start_with(threads, batch, oneshot)
}

/// Submission queue entries (what one batch can queue before a submit).
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries: far more than 64 connections × (a receive and
/// a send) can have outstanding.
const CQ_ENTRIES: u32 = 4096;
/// Provided buffers (a power of two) and the bytes of each.
const BUFS: u16 = 512;
const BUF_LEN: usize = 4096;
/// `IORING_RECVSEND_POLL_FIRST`.
const RECVSEND_POLL_FIRST: u16 = 1;
/// The one buffer group.
const BGID: u16 = 0;
/// Registered file slots, and the most connections served at once.
const SLOTS: u32 = 1024;

/// What a completion is for: the kind in the top byte, the connection's
/// slot in the low 32 bits.
const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const SEND: u64 = 3 << 56;
const STOP: u64 = 4 << 56;
const KIND: u64 = 0xff << 56;

fn start_with(_threads: usize, _batch: usize, levers: Levers) -> Result<Box<dyn Server>, String> {
    spawn_thread_server("uring-raw", move |listener, stop, ready| {
        serve(&listener, stop, levers, &ready)
    })
}

/// The provided-buffer ring: `BUFS` entries the kernel takes buffers from,
/// and the buffers themselves.
struct BufRing {
    entries: *mut BufRingEntry,
    layout: std::alloc::Layout,
    data: Box<[u8]>,
    /// The tail as we have written it (published by [`BufRing::publish`]).
    tail: u16,
}

impl BufRing {
    fn new() -> Result<BufRing, String> {
        let layout = std::alloc::Layout::from_size_align(BUFS as usize * 16, 4096)
            .map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err("allocating the buffer ring".into());
        }
        let mut ring = BufRing {
            entries,
            layout,
            data: vec![0u8; BUFS as usize * BUF_LEN].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..BUFS {
            ring.give(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The bytes of buffer `bid`.
    fn buf(&self, bid: u16) -> *const u8 {
        self.data[bid as usize * BUF_LEN..].as_ptr()
    }

    /// Puts buffer `bid` at the tail (seen by the kernel once published).
    fn give(&mut self, bid: u16) {
        let addr = self.buf(bid) as u64;
        // SAFETY: the index is masked into the BUFS entries allocated; only
        // entries between the kernel's head and our tail are the kernel's,
        // and at most BUFS buffers exist, so this entry is not one of them.
        let e = unsafe { &mut *self.entries.add((self.tail & (BUFS - 1)) as usize) };
        e.set_addr(addr);
        e.set_len(BUF_LEN as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail: the entries given so far become the kernel's.
    fn publish(&self) {
        // SAFETY: the tail field lies in the first entry, allocated, aligned
        // for u16, and shared with the kernel only through atomic accesses.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout, freed once; the ring
        // that used it is gone (it is dropped first, see serve).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

/// One connection: its socket, and the received bytes not yet sent back
/// (buffer id, offset, length), the first of them in flight if `sending`.
struct Conn {
    fd: OwnedFd,
    out: VecDeque<(u16, u32, u32)>,
    sending: bool,
    /// The multishot receive is armed (or being re-armed).
    receiving: bool,
}

/// The server's thread: builds the ring, says whether it could, serves
/// until the stop eventfd is written.
fn serve(
    listener: &TcpListener,
    stop: RawFd,
    levers: Levers,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    // The buffers are declared before the ring, so they outlive it.
    let built = BufRing::new().and_then(|bufs| Ok((build(levers, &bufs)?, bufs)));
    let (mut ring, mut bufs) = match built {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let _ = ready.send(Ok(()));
    let r = Loop {
        levers,
        bufs: &mut bufs,
        conns: Vec::new(),
        free: Vec::new(),
        starved: Vec::new(),
        given: false,
    }
    .run(&mut ring, listener.as_raw_fd(), stop);
    // Closing the ring cancels every operation; none touches a buffer after
    // that, and only then are the buffers freed.
    drop(ring);
    drop(bufs);
    r.map_err(|e| format!("uring-raw: {e}"))
}

/// The ring, with the buffer ring and (if asked) the file table registered.
fn build(levers: Levers, bufs: &BufRing) -> Result<IoUring, String> {
    let mut b = IoUring::builder();
    b.setup_cqsize(CQ_ENTRIES);
    match levers.taskrun {
        Taskrun::Defer => b.setup_single_issuer().setup_defer_taskrun(),
        Taskrun::Coop => b.setup_coop_taskrun().setup_taskrun_flag(),
        Taskrun::Plain => &mut b,
    };
    let ring = b
        .build(SQ_ENTRIES)
        .map_err(|e| format!("io_uring_setup: {e}"))?;
    // SAFETY: the entries are BUFS × 16 bytes, page-aligned, and live until
    // after the ring is dropped (serve drops the ring first).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.entries as u64, BUFS, BGID, 0)
    }
    .map_err(|e| format!("registering the buffer ring: {e}"))?;
    if levers.fixed {
        ring.submitter()
            .register_files_sparse(SLOTS)
            .map_err(|e| format!("registering files: {e}"))?;
    }
    Ok(ring)
}

/// The submission side: entries queued, submitted when the queue is full
/// or when the loop waits.
struct Sq<'r> {
    sub: Submitter<'r>,
    sq: SubmissionQueue<'r>,
}

impl Sq<'_> {
    fn push(&mut self, e: &Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed points only at memory that outlives
            // its operation: a provided buffer (given back to the ring only
            // when its send has completed), or nothing.
            if unsafe { self.sq.push(e) }.is_ok() {
                return Ok(());
            }
            self.sq.sync();
            self.sub.submit()?;
            self.sq.sync();
        }
    }
}

/// The state of the serving loop.
struct Loop<'b> {
    levers: Levers,
    bufs: &'b mut BufRing,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// Connections whose receive stopped for want of buffers.
    starved: Vec<u32>,
    /// Buffers given back since the tail was last published.
    given: bool,
}

impl Loop<'_> {
    fn run(mut self, ring: &mut IoUring, listener: RawFd, stop: RawFd) -> io::Result<()> {
        let (mut sub, sq, mut cq) = ring.split();
        if self.levers.taskrun != Taskrun::Plain {
            sub.register_ring_fd()?;
        }
        let mut q = Sq { sub, sq };
        q.push(&accept(listener))?;
        let poll = opcode::PollAdd::new(Fd(stop), libc::POLLIN as u32).build();
        q.push(&poll.user_data(STOP))?;
        loop {
            cq.sync();
            q.sq.sync();
            match q.sub.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            cq.sync();
            for cqe in &mut cq {
                let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
                let slot = ud as u32;
                match ud & KIND {
                    STOP => return Ok(()),
                    ACCEPT => self.accepted(&mut q, listener, res, flags)?,
                    RECV => self.received(&mut q, slot, res, flags)?,
                    SEND => self.sent(&mut q, slot, res)?,
                    _ => {}
                }
            }
            if self.given {
                self.bufs.publish();
                self.given = false;
                for slot in std::mem::take(&mut self.starved) {
                    if self.conns[slot as usize].is_some() {
                        q.push(&self.recv(slot))?;
                    }
                }
            }
        }
    }

    fn accepted(&mut self, q: &mut Sq, listener: RawFd, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            q.push(&accept(listener))?;
        }
        if res < 0 {
            return Ok(());
        }
        // SAFETY: a successful accept returns a new descriptor, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let one: libc::c_int = 1;
        // SAFETY: passes a live c_int and its size.
        unsafe {
            libc::setsockopt(
                res,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.conns.len() < SLOTS as usize => {
                self.conns.push(None);
                self.conns.len() as u32 - 1
            }
            None => return Ok(()), // full: the connection is closed
        };
        if self.levers.fixed {
            q.sub.register_files_update(slot, &[res])?;
        }
        self.conns[slot as usize] = Some(Conn {
            fd,
            out: VecDeque::new(),
            sending: false,
            receiving: true,
        });
        q.push(&self.recv(slot))
    }

    fn received(&mut self, q: &mut Sq, slot: u32, res: i32, flags: u32) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_mut() else {
            return Ok(());
        };
        if res > 0 {
            let bid = cqueue::buffer_select(flags).ok_or_else(|| io::Error::other("no buffer"))?;
            c.out.push_back((bid, 0, res as u32));
        }
        if !cqueue::more(flags) {
            if res > 0 {
                q.push(&self.recv(slot))?;
            } else if res == -libc::ENOBUFS {
                self.starved.push(slot);
            } else {
                c.receiving = false; // end of stream, or an error
            }
        }
        self.next(q, slot)
    }

    fn sent(&mut self, q: &mut Sq, slot: u32, res: i32) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_mut() else {
            return Ok(());
        };
        c.sending = false;
        if res < 0 {
            // Nothing more goes out: end the receive too.
            // SAFETY: shutdown of a descriptor we own.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            for (bid, ..) in c.out.drain(..) {
                self.bufs.give(bid);
                self.given = true;
            }
        } else if let Some(front) = c.out.front_mut() {
            front.1 += res as u32;
            front.2 -= res as u32;
            if front.2 == 0 {
                let bid = front.0;
                c.out.pop_front();
                self.bufs.give(bid);
                self.given = true;
            }
        }
        self.next(q, slot)
    }

    /// Sends what waits if nothing is in flight; closes the connection when
    /// nothing is left to do on it.
    fn next(&mut self, q: &mut Sq, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns[slot as usize].as_mut() else {
            return Ok(());
        };
        if c.sending {
            return Ok(());
        }
        if let Some(&(bid, off, len)) = c.out.front() {
            // SAFETY: off < len ≤ BUF_LEN, inside buffer bid.
            let ptr = unsafe { self.bufs.buf(bid).add(off as usize) };
            let e = if self.levers.fixed {
                opcode::Send::new(Fixed(slot), ptr, len)
            } else {
                opcode::Send::new(Fd(c.fd.as_raw_fd()), ptr, len)
            };
            c.sending = true;
            return q.push(
                &e.flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(SEND | slot as u64),
            );
        }
        if c.receiving {
            return Ok(());
        }
        // Neither a receive nor a send in flight: no completion will name
        // this slot again.
        self.conns[slot as usize] = None;
        self.free.push(slot);
        if self.levers.fixed {
            q.sub.register_files_update(slot, &[-1])?;
        }
        Ok(())
    }

    /// The receive of connection `slot`: multishot, or one-shot.
    fn recv(&self, slot: u32) -> Entry {
        let fd = self.conns[slot as usize]
            .as_ref()
            .map_or(-1, |c| c.fd.as_raw_fd());
        let e = match (self.levers.multishot, self.levers.fixed) {
            (true, true) => opcode::RecvMulti::new(Fixed(slot), BGID).build(),
            (true, false) => opcode::RecvMulti::new(Fd(fd), BGID).build(),
            (false, fixed) => {
                let len = BUF_LEN as u32;
                let null = std::ptr::null_mut();
                let e = if fixed {
                    opcode::Recv::new(Fixed(slot), null, len)
                } else {
                    opcode::Recv::new(Fd(fd), null, len)
                };
                e.buf_group(BGID)
                    .ioprio(RECVSEND_POLL_FIRST)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
        };
        e.user_data(RECV | slot as u64)
    }
}

/// The multishot accept on the listener.
fn accept(listener: RawFd) -> Entry {
    opcode::AcceptMulti::new(Fd(listener))
        .build()
        .user_data(ACCEPT)
}
