//! [`CompletionPort`]: the public face of the port, and the per-thread
//! activity bookkeeping that the concurrency limit needs.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use super::activity::{self, ConcurrencySlot};
use super::core::{Core, Kernel, NoPacket};
use super::state;
use super::{Packet, Stats, ThreadLoad};
use crate::sync::lock;
use crate::sys::driver::Driver;
use crate::sys::Backend;
use crate::Error;

/// An I/O completion port.
///
/// Packets (posted by [`post`](Self::post), and later completed I/O) queue up
/// FIFO; threads take them with [`get`](Self::get) or
/// [`get_many`](Self::get_many). Waiting threads are released LIFO, and only
/// while fewer than the port's *concurrency* threads are active (a thread is
/// active from the moment `get` hands it a packet until it calls `get` again,
/// see [`blocking`](Self::blocking)).
///
/// `CompletionPort` is a cheap handle: clone it to share the port between
/// threads. The port closes when [`close`](Self::close) is called or its last
/// handle is dropped.
///
/// ```
/// use ringport::CompletionPort;
/// use std::time::Duration;
///
/// let port = CompletionPort::<&str>::new(0)?;
/// port.post(7, "hello", Ok(5))?;
/// let packet = port.get(Some(Duration::from_secs(1)))?;
/// assert_eq!((packet.key, packet.token, packet.result.unwrap()), (7, "hello", 5));
/// # Ok::<(), ringport::Error>(())
/// ```
pub struct CompletionPort<T = u64> {
    handle: Arc<Handle<T>>,
}

/// Closes the port when the last user handle goes, even while threads that
/// were active on it still hold its shared state in their thread-locals.
struct Handle<T> {
    shared: Arc<Shared<T>>,
}

/// A thread's id, name and dequeue counter.
type ThreadCounter = (ThreadId, Option<String>, Arc<AtomicU64>);

pub(crate) struct Shared<T> {
    pub(crate) core: Core<Packet<T>>,
    threads: Mutex<Vec<ThreadCounter>>,
    /// Kernel I/O.
    io: Arc<Driver<T>>,
    backend: Backend,
}

impl<T> Shared<T> {
    /// The port's kernel I/O, if the port is open.
    pub(crate) fn driver(&self) -> Result<&Driver<T>, Error> {
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        Ok(&self.io)
    }

    /// The port's kernel I/O, even once the port is closed.
    pub(crate) fn io(&self) -> &Driver<T> {
        &self.io
    }

    fn close(&self) {
        if self.core.close() {
            // In-flight operations complete as cancelled; their packets are
            // dropped and their memory freed once the kernel has let go.
            self.io.close(&self.core);
        }
    }
}

impl<T: Send + 'static> ConcurrencySlot for Shared<T> {
    fn release(&self) {
        self.core.release()
    }

    fn reacquire(&self) {
        self.core.reacquire()
    }

    fn register_thread(&self) -> Arc<AtomicU64> {
        let me = thread::current();
        let mut threads = lock(&self.threads);
        if let Some((_, _, c)) = threads.iter().find(|(id, _, _)| *id == me.id()) {
            return c.clone();
        }
        let c = Arc::new(AtomicU64::new(0));
        threads.push((me.id(), me.name().map(str::to_owned), c.clone()));
        c
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Builds a [`CompletionPort`] with more than the concurrency limit chosen.
///
/// ```
/// use ringport::{Backend, CompletionPort};
/// let port = CompletionPort::<u64>::builder().concurrency(4).backend(Backend::Epoll).build()?;
/// # if std::env::var("RINGPORT_BACKEND").is_err() {
/// assert_eq!(port.backend(), Backend::Epoll);
/// # }
/// # Ok::<(), ringport::Error>(())
/// ```
#[derive(Debug)]
pub struct Builder<T> {
    concurrency: usize,
    backend: Backend,
    entries: Option<u32>,
    _token: PhantomData<fn() -> T>,
}

impl<T: Send + 'static> Default for Builder<T> {
    fn default() -> Self {
        Builder {
            concurrency: 0,
            backend: Backend::Auto,
            entries: None,
            _token: PhantomData,
        }
    }
}

impl<T: Send + 'static> Builder<T> {
    /// The most threads active at once; 0 (the default) means the number of CPUs.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The backend to use; `RINGPORT_BACKEND` overrides it.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }

    /// Submission slots of the port's io_uring ring (default 256).
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.entries = Some(n);
        self
    }

    /// Creates the port.
    ///
    /// Fails with [`Error::InvalidArgument`] for a concurrency above 65,535
    /// or a bad `RINGPORT_BACKEND`, and with [`Error::Io`] when the forced
    /// backend cannot be set up (the message says why).
    pub fn build(self) -> Result<CompletionPort<T>, Error> {
        let limit = match self.concurrency {
            0 => cpu_count(),
            n if n as u64 > state::MAX_ACTIVE => {
                return Err(Error::InvalidArgument("concurrency above 65,535"))
            }
            n => n,
        };
        let driver = Arc::new(Driver::open(
            self.backend,
            self.entries.unwrap_or(RING_ENTRIES),
        )?);
        let backend = driver.backend();
        let kernel: Arc<dyn Kernel<Packet<T>>> = driver.clone();
        Ok(CompletionPort {
            handle: Arc::new(Handle {
                shared: Arc::new(Shared {
                    core: Core::with_kernel(limit, Some(kernel)),
                    threads: Mutex::new(Vec::new()),
                    io: driver,
                    backend,
                }),
            }),
        })
    }
}

impl<T> Clone for CompletionPort<T> {
    fn clone(&self) -> Self {
        CompletionPort {
            handle: self.handle.clone(),
        }
    }
}

impl<T> std::fmt::Debug for CompletionPort<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let core = &self.handle.shared.core;
        let s = core.state();
        f.debug_struct("CompletionPort")
            .field("concurrency", &core.limit())
            .field("queued", &core.queued())
            .field("active", &s.active())
            .field("waiters", &s.waiters())
            .field("closed", &s.closed())
            .finish()
    }
}

/// Submission slots of a port's ring.
const RING_ENTRIES: u32 = 256;

/// The number of CPUs this process may run on (at least 1).
pub fn cpu_count() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

impl<T: Send + 'static> CompletionPort<T> {
    /// Creates a port that lets `concurrency` threads be active at once;
    /// 0 means the number of CPUs (as `CreateIoCompletionPort` does).
    ///
    /// Fails with [`Error::InvalidArgument`] above 65,535.
    pub fn new(concurrency: usize) -> Result<Self, Error> {
        Builder::default().concurrency(concurrency).build()
    }

    /// A builder, to choose the backend or the ring size too.
    pub fn builder() -> Builder<T> {
        Builder::default()
    }

    /// The backend this port's I/O runs on (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.shared().backend
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<T>> {
        &self.handle.shared
    }

    fn id(&self) -> *const () {
        Arc::as_ptr(self.shared()) as *const ()
    }

    /// Hands the kernel the operations the calling thread held back for
    /// its next wait (a pool worker's, see `WorkerPool`), if any.
    pub(crate) fn submit_held(&self) {
        self.shared().io.submit_held();
    }

    /// The most threads this port lets be active at once.
    pub fn concurrency(&self) -> usize {
        self.shared().core.limit() as usize
    }

    /// Queues a packet (`PostQueuedCompletionStatus`). If a thread is waiting
    /// and the concurrency limit allows, the most recent waiter gets it at once.
    ///
    /// On a closed port the packet is dropped, with whatever its token owns,
    /// and [`Error::Closed`] returned.
    #[inline]
    pub fn post(&self, key: u64, token: T, result: std::io::Result<usize>) -> Result<(), Error> {
        self.post_packet(Packet::new(key, token, result))
    }

    /// Queues a packet built beforehand; see [`post`](Self::post).
    #[inline]
    pub fn post_packet(&self, packet: Packet<T>) -> Result<(), Error> {
        let core = &self.shared().core;
        core.push(packet).map_err(|_| Error::Closed)?;
        Ok(())
    }

    /// Takes one packet (`GetQueuedCompletionStatus`), waiting at most
    /// `timeout`: `None` waits forever, `Some(Duration::ZERO)` never blocks.
    ///
    /// Errors: [`Error::Timeout`] when nothing came in time, [`Error::Closed`]
    /// once the port is closed (also for threads already waiting).
    #[inline]
    pub fn get(&self, timeout: Option<Duration>) -> Result<Packet<T>, Error> {
        let p = self.dequeue(timeout)?;
        self.count_taken(1);
        Ok(p)
    }

    /// Takes up to `out.len()` packets at once (`GetQueuedCompletionStatusEx`),
    /// waiting at most `timeout` for the first; returns how many it stored.
    /// Slots past that count are left as they were.
    ///
    /// The thread counts as one active thread however many packets it took.
    pub fn get_many(
        &self,
        out: &mut [Option<Packet<T>>],
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        let Some((first, rest)) = out.split_first_mut() else {
            return Err(Error::InvalidArgument(
                "get_many with an empty output slice",
            ));
        };
        *first = Some(self.dequeue(timeout)?);
        let core = &self.shared().core;
        let mut taken = 1;
        for slot in rest {
            match core.take_more() {
                Some(p) => *slot = Some(p),
                None => break,
            }
            taken += 1;
        }
        self.count_taken(taken as u64);
        Ok(taken)
    }

    /// Takes up to `max` packets into a vector's spare room, like
    /// [`get_many`](Self::get_many) but without `Option` slots.
    pub fn get_into(
        &self,
        out: &mut Vec<Packet<T>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        if max == 0 {
            return Err(Error::InvalidArgument("get_into with max 0"));
        }
        out.push(self.dequeue(timeout)?);
        let core = &self.shared().core;
        let mut taken = 1;
        while taken < max {
            match core.take_more() {
                Some(p) => out.push(p),
                None => break,
            }
            taken += 1;
        }
        self.count_taken(taken as u64);
        Ok(taken)
    }

    /// Takes one packet for the calling thread, waiting at most `timeout`,
    /// and leaves the thread active on this port (a batch then pops more
    /// with `take_more`). The fast path, inlined where the packet goes so
    /// that it is moved once: a thread that stays active (one plain
    /// thread-local cell says so) pops.
    #[inline]
    fn dequeue(&self, timeout: Option<Duration>) -> Result<Packet<T>, Error> {
        if activity::active_here(self.id()) {
            if let Some(p) = self.shared().core.pop_active() {
                return Ok(p);
            }
        }
        self.dequeue_slow(timeout)
    }

    /// `dequeue` when the thread was not active here, or found nothing.
    #[cold]
    #[inline(never)]
    fn dequeue_slow(&self, timeout: Option<Duration>) -> Result<Packet<T>, Error> {
        let shared = self.shared();
        let core = &shared.core;
        let io = &shared.io;
        let id = self.id();
        let was_active = activity::active_here(id) || activity::begin_get(id);
        // With nothing in flight in the kernel, the next packet can only be
        // a post: an active thread spins for it before giving up its slot
        // (unless the caller may not wait at all). With operations in flight
        // it looks at the kernel's completions first (below).
        let spin_active = was_active && timeout != Some(Duration::ZERO) && !io.busy();
        let got = match core.try_get(was_active, spin_active) {
            Err(NoPacket::Empty) => {
                // try_get gave up the slot this thread held, if any.
                activity::clear();
                // Completions the kernel finished: the thread that reaps
                // them keeps the first (no hop to another thread).
                match io.harvest(core, true) {
                    Some(p) => Ok(p),
                    None if timeout == Some(Duration::ZERO) => Err(NoPacket::Empty),
                    None => {
                        // The clock is read only here, on the way to waiting.
                        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
                        // A thread that holds its submissions for its wait
                        // does not spin: what it waits for is not in the
                        // kernel yet. Nor does one that just spun while
                        // active (twice the spin cost the bursty case 10 %
                        // more CPU per item and took no more packets).
                        let spun = if io.holds() || spin_active {
                            None
                        } else {
                            Self::spin(core)
                        };
                        spun.unwrap_or_else(|| core.park(&activity::waiter(), deadline))
                    }
                }
            }
            other => other,
        };
        got.map_err(|e| {
            io.submit_held();
            activity::clear();
            match e {
                NoPacket::Empty => Error::Timeout,
                NoPacket::Closed => Error::Closed,
                NoPacket::TooManyWaiters => Error::TooManyWaiters,
            }
        })
    }

    /// Records `n` packets taken by the calling thread, which is active on
    /// this port (one plain thread-local add while it stays so).
    #[inline]
    fn count_taken(&self, n: u64) {
        if !activity::count_here(self.id(), n) {
            activity::set_active(self.shared(), n);
        }
    }

    /// Spins briefly (then yields) before parking, as crossbeam-channel
    /// does: under a steady stream a thread finds the next packet without a
    /// futex round trip. A spinning thread is neither active nor waiting, so
    /// posts meanwhile queue without waking anyone, and it only reads until
    /// it sees a packet.
    fn spin(core: &Core<Packet<T>>) -> Option<Result<Packet<T>, NoPacket>> {
        let backoff = crossbeam_utils::Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            match core.claim() {
                Err(NoPacket::Empty) => {}
                other => return Some(other),
            }
        }
        None
    }

    /// Runs `f` with the caller's slot on this port given up, so that another
    /// thread may run while this one blocks on something else (as Windows does
    /// when an active thread waits on another object). When `f` returns the
    /// thread is active again, even if that puts the port over its limit; no
    /// waiter is released until the count falls back.
    ///
    /// A thread that is not active on this port just runs `f`.
    pub fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.blocking_guard();
        f()
    }

    /// The guard form of [`blocking`](Self::blocking): the slot is given up
    /// until the guard drops.
    pub fn blocking_guard(&self) -> BlockingGuard {
        // What this thread held back for its next wait goes now: it may
        // block on something that needs it done.
        self.submit_held();
        let slot = activity::take_if_active_on(self.id());
        if let Some(s) = &slot {
            s.release();
        }
        BlockingGuard {
            slot,
            _not_send: PhantomData,
        }
    }

    /// Whether the calling thread holds one of this port's active slots.
    pub fn is_active(&self) -> bool {
        activity::is_active_on(self.id())
    }

    /// Closes the port: every waiting thread and every later `get` returns
    /// [`Error::Closed`], later posts fail, and queued packets are dropped
    /// with whatever they own. Closing twice is harmless.
    pub fn close(&self) {
        self.shared().close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared().core.is_closed()
    }

    /// A snapshot of the port's counters.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        let c = &shared.core.counters;
        let s = shared.core.state();
        let threads: Vec<ThreadLoad> = lock(&shared.threads)
            .iter()
            .map(|(id, name, n)| ThreadLoad {
                thread: *id,
                name: name.clone(),
                dequeued: n.load(Ordering::Relaxed),
            })
            .collect();
        Stats {
            posted: shared.core.posted(),
            completed: c.completed.load(Ordering::Relaxed),
            dequeued: threads.iter().map(|t| t.dequeued).sum(),
            wakeups: c.wakeups.load(Ordering::Relaxed),
            handoffs: c.handoffs.load(Ordering::Relaxed),
            max_active: c.max_active.load(Ordering::Relaxed),
            queued: shared.core.queued(),
            active: s.active(),
            waiting: s.waiters(),
            threads,
        }
    }
}

/// Keeps the calling thread's port slot given up; see
/// [`CompletionPort::blocking_guard`]. Not `Send`: it belongs to the thread.
#[must_use = "the slot is taken back when the guard drops"]
pub struct BlockingGuard {
    slot: Option<Arc<dyn ConcurrencySlot>>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // If the thread took a slot somewhere meanwhile (a `get` inside the
            // blocking section), it already counts as active: don't count twice.
            if activity::restore(slot.clone()) {
                slot.reacquire();
            }
        }
    }
}
