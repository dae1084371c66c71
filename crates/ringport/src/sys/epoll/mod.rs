//! The readiness backend: completions emulated on epoll, for kernels and
//! sandboxes where io_uring is switched off.
//!
//! An operation is attempted at once, non-blocking; if it would block it
//! waits in its descriptor's queue (one for reads, one for writes, so
//! operations on one handle keep their order) until epoll reports
//! readiness, and is then performed by whichever thread harvests. Every
//! descriptor is registered once, edge-triggered, when it is associated (the
//! mio approach: no `epoll_ctl` per operation). Regular files, which epoll
//! cannot watch, go to a small bounded helper pool (`files.rs`). Timers live
//! in a heap that bounds the sleeper's `epoll_wait`. The thread that sleeps
//! in `epoll_wait` is the port's kernel sleeper (see `port/core.rs`), woken
//! for posts through an eventfd.
//!
//! No system call is made under the reactor's mutex, which every thread of
//! the port takes: the thread that performs a descriptor's operation in one
//! direction holds that direction *busy* (`FdOps::busy`) and releases the
//! mutex for the call; see [`EpollDriver::start`] and `drive`, and
//! `cancel.rs` for why cancels wait for it.

mod cancel;
mod files;
use crate::sys::syscalls;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use self::files::FilePool;
use crate::port::core::Core;
use crate::port::Buf;
use crate::port::Packet;
use crate::sync::lock;
use crate::sys::batch::{Batched, DatagramBatch};
use crate::sys::driver::Started;
use crate::sys::fd::FdKind;
use crate::sys::inflight::{Inflight, OpId, Operation, Scratch};
use crate::sys::op::{self, Direction, Finished, Op};
use crate::Error;

/// epoll `data` of the wake eventfd (descriptors use their own number).
const WAKER_EVENT: u64 = u64::MAX;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 64;

pub(crate) struct EpollDriver<T> {
    epoll: OwnedFd,
    waker: Arc<Waker>,
    state: Mutex<Reactor<T>>,
    /// Events the sleeper received, for the next harvest to act on.
    stash: Mutex<Vec<libc::epoll_event>>,
    /// The vectors a harvest works in, kept between harvests so that the
    /// steady state allocates nothing.
    spare: Mutex<Spare<T>>,
    files: FilePool,
    /// Operations in flight, readable without the state's mutex.
    live: AtomicUsize,
}

/// The eventfd that ends a sleeper's `epoll_wait`, written at most once
/// between two harvests.
pub(crate) use crate::sys::eventfd::EventFd as Waker;

struct Spare<T> {
    events: Vec<libc::epoll_event>,
    done: Vec<Finished<T>>,
}

impl<T> Default for Spare<T> {
    fn default() -> Self {
        Spare {
            events: Vec::new(),
            done: Vec::new(),
        }
    }
}

struct Reactor<T> {
    table: Inflight<T>,
    fds: HashMap<RawFd, FdOps>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl<T> Reactor<T> {
    /// Takes `pending` into the table, its scratch prepared, and queues it
    /// on its descriptor's direction to wait for readiness: at the back, or
    /// at the front for an operation whose attempt the others queued behind.
    fn wait_in_line(
        &mut self,
        pending: Operation<T>,
        to: Option<std::net::SocketAddr>,
        front: bool,
    ) -> OpId {
        let (fd, op) = (pending.fd, pending.op);
        let (id, scratch, pending) = self.table.insert(pending);
        // SAFETY: the slot was just taken from the free list; nothing else
        // refers to its scratch.
        op.prepare(unsafe { &mut *scratch }, &mut pending.buf, to);
        if let Some(ops) = self.fds.get_mut(&fd) {
            let q = ops.queue(op.direction());
            if front {
                q.push_front(id);
            } else {
                q.push_back(id);
            }
        }
        id
    }
}

/// The locked state; unlocking publishes the in-flight count for
/// [`EpollDriver::busy`].
struct Locked<'a, T> {
    guard: MutexGuard<'a, Reactor<T>>,
    live: &'a AtomicUsize,
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = Reactor<T>;
    fn deref(&self) -> &Reactor<T> {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut Reactor<T> {
        &mut self.guard
    }
}

impl<T> Drop for Locked<'_, T> {
    fn drop(&mut self) {
        self.live.store(self.guard.table.live(), Ordering::SeqCst);
    }
}

/// One associated descriptor's waiting operations.
#[derive(Default)]
struct FdOps {
    readers: VecDeque<OpId>,
    writers: VecDeque<OpId>,
    /// Per direction: a thread is performing that direction's front
    /// operation (or a batch of datagram receives) with the state's mutex
    /// released. Until it is done nobody else performs, cancels or completes
    /// that direction's operations, and the descriptor stays attached.
    busy: [bool; 2],
    /// Per direction: readiness was reported while busy, so the performer's
    /// `EAGAIN` may be stale (edge-triggered: no second report comes) and it
    /// tries again.
    again: [bool; 2],
    /// For a regular file: a duplicate that pool jobs hold, so a job never
    /// runs on a descriptor number the handle's drop has closed and reused.
    file: Option<Arc<OwnedFd>>,
}

impl FdOps {
    fn queue(&mut self, d: Direction) -> &mut VecDeque<OpId> {
        match d {
            Direction::Read => &mut self.readers,
            Direction::Write => &mut self.writers,
        }
    }

    fn any_busy(&self) -> bool {
        self.busy[0] || self.busy[1]
    }
}

fn side(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl<T> EpollDriver<T> {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscalls; each result is checked before it is owned.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let waker = Arc::new(Waker::new()?);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKER_EVENT,
        };
        // SAFETY: valid epoll and eventfd descriptors and a live event.
        cvt(unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                waker.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(EpollDriver {
            epoll,
            files: FilePool::new(waker.clone()),
            waker,
            state: Mutex::new(Reactor {
                table: Inflight::new(),
                fds: HashMap::new(),
                timers: BinaryHeap::new(),
            }),
            stash: Mutex::new(Vec::new()),
            spare: Mutex::new(Spare::default()),
            live: AtomicUsize::new(0),
        })
    }

    /// Prepares a newly associated descriptor: a regular file gets a
    /// duplicate for the helper pool; anything else is made non-blocking and
    /// registered with epoll, edge-triggered, once for its lifetime.
    pub(crate) fn attach(&self, fd: RawFd, kind: FdKind) -> Result<(), Error> {
        let mut st = lock(&self.state);
        let mut ops = FdOps::default();
        if kind == FdKind::File {
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
            let dup =
                unsafe { OwnedFd::from_raw_fd(cvt(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0))?) };
            ops.file = Some(Arc::new(dup));
        } else {
            syscalls::set_nonblocking(fd)?;
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            // SAFETY: valid descriptors and a live event.
            cvt(unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)
            })?;
        }
        st.fds.insert(fd, ops);
        Ok(())
    }

    /// Cancels a descriptor's operations and forgets it (its handle is
    /// about to close it).
    pub(crate) fn detach(&self, core: &Core<Packet<T>>, fd: RawFd) {
        let mut done = Vec::new();
        {
            let mut st = self.lock_idle(Some(fd));
            Self::cancel_queued(&mut st, fd, &mut done);
            if let Some(ops) = st.fds.remove(&fd) {
                if ops.file.is_none() {
                    // SAFETY: valid descriptors; a null event is allowed for DEL.
                    unsafe {
                        libc::epoll_ctl(
                            self.epoll.as_raw_fd(),
                            libc::EPOLL_CTL_DEL,
                            fd,
                            std::ptr::null_mut(),
                        )
                    };
                }
            }
        }
        Self::deliver(core, done, false);
    }

    /// Starts an operation: performs it now if it can, else queues it. With
    /// `immediate`, a result available at once is returned, not queued.
    ///
    /// The attempt is made with the state's mutex released (the mutex every
    /// thread of the port takes): the descriptor's direction is held busy
    /// meanwhile, so operations issued behind it queue up behind it.
    pub(crate) fn start(
        &self,
        core: &Core<Packet<T>>,
        mut pending: Operation<T>,
        to: Option<std::net::SocketAddr>,
        immediate: bool,
    ) -> Result<Started<T>, Error> {
        let fd = pending.fd;
        let op = pending.op;
        let mut st = self.lock_state();
        let file = match op {
            Op::Timer(_) => None,
            _ => match st.fds.get(&fd) {
                Some(ops) => ops.file.clone(),
                None => return Err(Error::InvalidArgument("descriptor not associated")),
            },
        };
        match (op, file) {
            (Op::Timer(d), _) => {
                let (id, _, _) = st.table.insert(pending);
                let at = Instant::now() + d;
                let earliest = st.timers.peek().is_none_or(|Reverse((t, _))| at < *t);
                st.timers.push(Reverse((at, id.0)));
                if earliest {
                    // The sleeper's epoll_wait timeout must shrink.
                    self.waker.wake();
                }
                Ok(Started::Pending(id))
            }
            (Op::ReadAt(_) | Op::WriteAt(_), Some(file)) => {
                let (id, scratch, pending) = st.table.insert(pending);
                // SAFETY: the slot was just taken from the free list; nothing
                // else refers to its scratch.
                op.prepare(unsafe { &mut *scratch }, &mut pending.buf, to);
                self.files.submit(id, file, op, &mut pending.buf);
                Ok(Started::Pending(id))
            }
            _ => {
                let i = side(op.direction());
                let ops = st.fds.get_mut(&fd).expect("checked above");
                if ops.busy[i] || !ops.queue(op.direction()).is_empty() {
                    // Keep the handle's order: wait behind the others.
                    return Ok(Started::Pending(st.wait_in_line(pending, to, false)));
                }
                ops.busy[i] = true;
                drop(st);
                // SAFETY: all-zero is a valid value of the scratch's plain C structs.
                let mut scratch: Scratch = unsafe { std::mem::zeroed() };
                op.prepare(&mut scratch, &mut pending.buf, to);
                let (res, behind) = loop {
                    let res =
                        syscalls::perform(op, pending.kind, fd, &mut scratch, &mut pending.buf);
                    let mut st = self.lock_state();
                    let ops = st.fds.get_mut(&fd).expect("attached while busy");
                    if res == -libc::EAGAIN && std::mem::take(&mut ops.again[i]) {
                        // Readiness came meanwhile: this EAGAIN may be stale.
                        drop(st);
                        continue;
                    }
                    ops.busy[i] = false;
                    ops.again[i] = false;
                    if res != -libc::EAGAIN {
                        break (res, !ops.queue(op.direction()).is_empty());
                    }
                    // First in line: whatever queued meanwhile was issued after it.
                    return Ok(Started::Pending(st.wait_in_line(pending, to, true)));
                };
                let packet = op::packet(pending, res, &scratch);
                if behind {
                    // Those that queued behind it while it was busy may find
                    // data it left (no new readiness would report it).
                    let mut done = Vec::new();
                    self.drive(fd, op.direction(), &mut done);
                    Self::deliver(core, done, false);
                }
                if immediate {
                    return Ok(Started::Done(packet));
                }
                Self::deliver(core, [Finished::Packet(packet)], false);
                Ok(Started::Pending(OpId::DONE))
            }
        }
    }

    pub(crate) fn busy(&self) -> bool {
        self.live.load(Ordering::SeqCst) > 0
    }

    /// The state, locked; the in-flight count is published when it unlocks.
    fn lock_state(&self) -> Locked<'_, T> {
        Locked {
            guard: lock(&self.state),
            live: &self.live,
        }
    }

    /// Queues finished operations (called with no lock held: settling a
    /// watch may start another operation).
    fn deliver(
        core: &Core<Packet<T>>,
        done: impl IntoIterator<Item = Finished<T>>,
        keep: bool,
    ) -> Option<Packet<T>> {
        let mut n = 0;
        for p in done.into_iter().filter_map(Finished::settle) {
            core.enqueue(p);
            n += 1;
        }
        core.publish_completed(n, keep)
    }

    /// Performs what readiness, the clock and the file pool allow, and
    /// publishes the results; with `keep`, the caller takes the first.
    pub(crate) fn harvest(&self, core: &Core<Packet<T>>, keep: bool) -> Option<Packet<T>> {
        let Spare {
            mut events,
            mut done,
        } = std::mem::take(&mut *lock(&self.spare));
        // The stash gets our empty vector (and its capacity) in exchange.
        std::mem::swap(&mut events, &mut *lock(&self.stash));
        // Events the sleeper just stashed are all that was ready when it
        // woke, unless they filled its buffer: only then, or with none
        // stashed, is another (non-blocking) epoll_wait worth its system
        // call. Events that come later stay ready in epoll for the next.
        if events.is_empty() || events.len() >= EVENTS - 1 {
            let mut buf = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
            // SAFETY: the buffer holds EVENTS events; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(self.epoll.as_raw_fd(), buf.as_mut_ptr(), EVENTS as i32, 0)
            };
            events.extend_from_slice(&buf[..n.max(0) as usize]);
        }

        for ev in &events {
            let (flags, data) = (ev.events, ev.u64);
            if data == WAKER_EVENT {
                // Only the sleeper drains the eventfd (in `sleep`): it
                // stays readable for the thread it was written for.
                continue;
            }
            let fd = data as RawFd;
            let err = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            if err || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
                self.drive(fd, Direction::Read, &mut done);
            }
            if err || flags & libc::EPOLLOUT as u32 != 0 {
                self.drive(fd, Direction::Write, &mut done);
            }
        }
        {
            let mut st = self.lock_state();
            let now = Instant::now();
            while let Some(Reverse((at, id))) = st.timers.peek().copied() {
                if at > now {
                    break;
                }
                st.timers.pop();
                if let Some((p, s)) = st.table.complete(OpId(id)) {
                    done.push(op::finish(p, -libc::ETIME, s));
                }
            }
            for (id, res) in self.files.finished() {
                if let Some((p, s)) = st.table.complete(id) {
                    done.push(op::finish(p, res, s));
                }
            }
        }
        let kept = Self::deliver(core, done.drain(..), keep);
        events.clear();
        *lock(&self.spare) = Spare { events, done };
        kept
    }

    /// Performs `fd`'s waiting operations in one direction, in order, until
    /// one would block; datagram receives are filled by batches of
    /// `recvmmsg`. Each system call is made with the state's mutex released
    /// and the direction held busy; if another thread holds it busy, that
    /// thread is told to try again instead.
    fn drive(&self, fd: RawFd, d: Direction, done: &mut Vec<Finished<T>>) {
        let i = side(d);
        let mut st = self.lock_state();
        loop {
            let Reactor { table, fds, .. } = &mut *st;
            let Some(ops) = fds.get_mut(&fd) else {
                return;
            };
            if ops.busy[i] {
                ops.again[i] = true;
                return;
            }
            let Some(&front) = ops.queue(d).front() else {
                return;
            };
            let gathered =
                d == Direction::Read && DatagramBatch::with(|b| b.gather(table, &ops.readers)) > 0;
            let single = if gathered {
                None
            } else {
                let Some((p, s)) = table.get_mut(front) else {
                    // Not in the table: drop it from the queue.
                    ops.queue(d).pop_front();
                    continue;
                };
                Some((
                    p.op,
                    p.kind,
                    &mut p.buf as *mut Option<Buf>,
                    s as *mut Scratch,
                ))
            };
            ops.busy[i] = true;
            drop(st);
            // Why the pointers may be used with the lock released: the
            // direction is busy, so until it is cleared below nobody else
            // performs, cancels or completes its operations, whose slots
            // (boxed, so they do not move when the table grows) keep their
            // buffers and scratch where the pointers say; the descriptor
            // stays attached, hence open.
            let res = match single {
                None => DatagramBatch::with(|b| b.recv(fd)),
                // SAFETY: see above; no other reference to this slot's
                // buffer or scratch is alive while it is busy.
                Some((op, kind, buf, s)) => unsafe {
                    syscalls::perform(op, kind, fd, &mut *s, &mut *buf)
                },
            };
            st = self.lock_state();
            let Reactor { table, fds, .. } = &mut *st;
            let ops = fds.get_mut(&fd).expect("attached while busy");
            let again = std::mem::take(&mut ops.again[i]);
            ops.busy[i] = false;
            if gathered {
                let end = DatagramBatch::with(|b| b.finish(res, table, &mut ops.readers, done));
                match end {
                    // Full: there may be more.
                    None => continue,
                    Some(Batched::Drained) if !again => return,
                    Some(Batched::Drained) => continue,
                    // The front receive, tried alone, reports the error.
                    Some(Batched::Failed) => {}
                }
                let Some((p, s)) = table.get_mut(front) else {
                    continue;
                };
                let res = syscalls::perform(p.op, p.kind, fd, s, &mut p.buf);
                if res == -libc::EAGAIN {
                    return;
                }
                ops.readers.pop_front();
                if let Some((p, s)) = table.complete(front) {
                    done.push(op::finish(p, res, s));
                }
                continue;
            }
            if res == -libc::EAGAIN {
                if again {
                    continue;
                }
                return;
            }
            ops.queue(d).pop_front();
            if let Some((p, s)) = table.complete(front) {
                done.push(op::finish(p, res, s));
            }
        }
    }

    /// Sleeps in `epoll_wait` until readiness, a wake, the next timer or the
    /// deadline, and keeps the events for the next harvest.
    pub(crate) fn sleep(&self, deadline: Option<Instant>) {
        let next_timer = lock(&self.state).timers.peek().map(|Reverse((t, _))| *t);
        let until = match (deadline, next_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match until {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up, so a timer is never harvested a little early.
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            }
        };
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: the buffer holds EVENTS events.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                buf.as_mut_ptr(),
                EVENTS as i32,
                timeout,
            )
        };
        if n > 0 {
            let events = &buf[..n as usize];
            if events.iter().any(|e| e.u64 == WAKER_EVENT) {
                // Woken on purpose: the caller re-checks its verdict next.
                self.waker.reset();
            }
            lock(&self.stash).extend(events.iter().filter(|e| e.u64 != WAKER_EVENT));
        }
    }

    pub(crate) fn wake(&self) {
        self.waker.wake()
    }
}

impl<T> Drop for EpollDriver<T> {
    /// Queued operations are only in our own tables, but file operations
    /// may be running on the pool with their buffers: wait for those
    /// (bounded), and leak the table rather than free a buffer a pool thread
    /// could still write.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.files.busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.files.shut_down();
        if self.files.busy() {
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            std::mem::forget(std::mem::replace(&mut st.table, Inflight::new()));
        }
    }
}
