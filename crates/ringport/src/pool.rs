//! [`WorkerPool`]: the classic completion-port server loop as a library type.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::{CompletionPort, Error, Packet, Stats};

/// A pool of threads that take packets from one port and run a handler on
/// each, until each takes a stop packet or the port closes.
///
/// ```
/// use ringport::{CompletionPort, WorkerPool};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let port = CompletionPort::<u64>::new(2)?;
/// let sum = Arc::new(AtomicU64::new(0));
/// let s = sum.clone();
/// let pool = WorkerPool::start(&port, 4, move |p| {
///     s.fetch_add(p.token, Ordering::Relaxed);
/// })?;
/// for i in 1..=100 {
///     port.post(0, i, Ok(0))?;
/// }
/// let report = pool.stop()?; // stop packets queue behind the work
/// assert_eq!(sum.load(Ordering::Relaxed), 5050);
/// assert_eq!(report.handled(), 100);
/// # Ok::<(), ringport::Error>(())
/// ```
pub struct WorkerPool<T: Send + 'static> {
    port: CompletionPort<T>,
    workers: Vec<JoinHandle<(u64, Option<Error>)>>,
}

/// Builds a [`WorkerPool`]; see [`WorkerPool::builder`].
#[derive(Debug)]
pub struct PoolBuilder<'a, T: Send + 'static> {
    port: &'a CompletionPort<T>,
    threads: usize,
    name: String,
    batch: usize,
    submit_on_wait: bool,
}

impl<T: Send + 'static> PoolBuilder<'_, T> {
    /// Worker threads; 0 (the default) means 2 × the number of CPUs.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Threads are named `{prefix}-{index}` (default `ringport-worker`).
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// Packets a worker takes per get (`get_into`, one update of the port's
    /// state for the batch); at least 1, the default.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Operations a handler starts are handed to the kernel together, by
    /// the `io_uring_enter` in which its worker next waits for completions
    /// (or before it parks, blocks in [`CompletionPort::blocking`], or
    /// leaves), instead of one system call each: a worker that handles 20
    /// packets in a row and issues 20 receives makes one call where it made
    /// 21. Off by default. A handler that turns it on must not wait for
    /// the outcome of an operation it started without going through this
    /// port (`get`, or [`blocking`](CompletionPort::blocking) around the
    /// wait; a `get` on another port does not count): until then that
    /// operation has not reached the kernel. The epoll backend ignores it.
    pub fn submit_on_wait(mut self, on: bool) -> Self {
        self.submit_on_wait = on;
        self
    }

    /// Starts the workers; `handler(worker index, packet)` runs for every
    /// packet but stop packets. Fails if a thread cannot be started (the
    /// ones already started are stopped).
    pub fn start<F>(self, handler: F) -> Result<WorkerPool<T>, Error>
    where
        F: Fn(usize, Packet<T>) + Send + Sync + 'static,
    {
        let threads = match self.threads {
            0 => 2 * crate::cpu_count(),
            n => n,
        };
        let handler: Arc<dyn Fn(usize, Packet<T>) + Send + Sync> = Arc::new(handler);
        let mut pool = WorkerPool {
            port: self.port.clone(),
            workers: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let port = self.port.clone();
            let handler = handler.clone();
            let (batch, hold) = (self.batch, self.submit_on_wait);
            let spawned = thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    let _held = Held::start(&port, hold);
                    WorkerPool::work(&port, i, batch, &*handler)
                });
            match spawned {
                Ok(h) => pool.workers.push(h),
                Err(e) => {
                    // Don't leave the threads already started running.
                    pool.port.close();
                    pool.join();
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(pool)
    }
}

/// A worker's held submissions (see [`PoolBuilder::submit_on_wait`]): on
/// while it loops, flushed when it leaves, even by a handler's panic.
struct Held<'a, T: Send + 'static> {
    port: &'a CompletionPort<T>,
    on: bool,
}

impl<'a, T: Send + 'static> Held<'a, T> {
    fn start(port: &'a CompletionPort<T>, on: bool) -> Self {
        crate::sys::uring::hold_submissions(on);
        Held { port, on }
    }
}

impl<T: Send + 'static> Drop for Held<'_, T> {
    fn drop(&mut self) {
        if self.on {
            crate::sys::uring::hold_submissions(false);
            self.port.submit_held();
        }
    }
}

/// What each worker did, from [`WorkerPool::stop`] or [`WorkerPool::close`].
#[derive(Debug)]
#[non_exhaustive]
pub struct PoolReport {
    /// Packets each worker handled (stop packets not counted), by worker index.
    pub per_worker: Vec<u64>,
    /// Workers whose handler panicked (their packets up to then are lost from
    /// `per_worker`, which shows 0 for them).
    pub panicked: usize,
    /// The port's counters when the pool had stopped.
    pub stats: Stats,
    /// Errors other than the port's close that ended a worker's loop (a
    /// `get` refused), by worker index.
    pub errors: Vec<(usize, Error)>,
}

impl PoolReport {
    /// Packets handled by all workers together.
    pub fn handled(&self) -> u64 {
        self.per_worker.iter().sum()
    }
}

impl<T: Send + 'static> WorkerPool<T> {
    /// The key of a stop packet: a worker that takes a packet with this key
    /// exits without running the handler.
    pub const STOP_KEY: u64 = u64::MAX;

    /// Starts `threads` workers (0 means 2 × the number of CPUs, the classic
    /// choice) named `ringport-worker-N`, each looping on `port.get(None)`.
    /// [`builder`](Self::builder) chooses more.
    pub fn start<F>(port: &CompletionPort<T>, threads: usize, handler: F) -> Result<Self, Error>
    where
        F: Fn(Packet<T>) + Send + Sync + 'static,
    {
        Self::builder(port)
            .threads(threads)
            .start(move |_, packet| handler(packet))
    }

    /// A pool with more chosen: its threads' names, the packets a worker
    /// takes per get, and a handler that is told which worker runs it.
    ///
    /// ```
    /// use ringport::{CompletionPort, WorkerPool};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let port = CompletionPort::<u64>::new(2)?;
    /// // A counter per worker, indexed by the worker's number.
    /// let counts: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    /// let c = counts.clone();
    /// let pool = WorkerPool::builder(&port)
    ///     .threads(3)
    ///     .name("echo")
    ///     .batch(16)
    ///     .start(move |worker, _packet| {
    ///         c[worker].fetch_add(1, Ordering::Relaxed);
    ///     })?;
    /// for i in 0..100 {
    ///     port.post(0, i, Ok(0))?;
    /// }
    /// let report = pool.stop()?;
    /// let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    /// assert_eq!((total, report.handled()), (100, 100));
    /// # Ok::<(), ringport::Error>(())
    /// ```
    pub fn builder(port: &CompletionPort<T>) -> PoolBuilder<'_, T> {
        PoolBuilder {
            port,
            threads: 0,
            name: "ringport-worker".into(),
            batch: 1,
            submit_on_wait: false,
        }
    }

    /// One worker's loop: packets in batches of up to `batch`, each handed to
    /// `handler` with the worker's index, until a stop packet or the close.
    /// Returns the packets handled and the error that ended it, if any.
    fn work(
        port: &CompletionPort<T>,
        index: usize,
        batch: usize,
        handler: &(dyn Fn(usize, Packet<T>) + Send + Sync),
    ) -> (u64, Option<Error>) {
        let mut handled = 0;
        let mut packets = Vec::with_capacity(batch);
        loop {
            match port.get_into(&mut packets, batch, None) {
                Ok(_) => {}
                Err(Error::Closed) => return (handled, None),
                Err(e) => return (handled, Some(e)),
            }
            let mut stops = Vec::new();
            for packet in packets.drain(..) {
                if packet.key == Self::STOP_KEY {
                    stops.push(packet);
                } else {
                    handler(index, packet);
                    handled += 1;
                }
            }
            if !stops.is_empty() {
                // One stop is this worker's; a batch that took others' gives
                // them back, so that every worker gets one.
                for extra in stops.into_iter().skip(1) {
                    let _ = port.post_packet(extra);
                }
                return (handled, None);
            }
        }
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// The port the workers take from.
    pub fn port(&self) -> &CompletionPort<T> {
        &self.port
    }

    /// Posts one stop packet per worker, each carrying a token from `token`,
    /// and joins them. Stop packets queue behind any work already posted, so
    /// that work is done first. The port stays open.
    pub fn stop_with(self, mut token: impl FnMut() -> T) -> Result<PoolReport, Error> {
        for _ in 0..self.workers.len() {
            self.port
                .post(Self::STOP_KEY, token(), Ok(0))
                .map_err(|e| Error::Io(io::Error::other(format!("stopping the pool: {e}"))))?;
        }
        Ok(self.join())
    }

    /// [`stop_with`](Self::stop_with) with default tokens.
    pub fn stop(self) -> Result<PoolReport, Error>
    where
        T: Default,
    {
        self.stop_with(T::default)
    }

    /// Closes the port, which ends every worker after its current packet, and
    /// joins them. Queued packets are dropped.
    pub fn close(self) -> PoolReport {
        self.port.close();
        self.join()
    }

    fn join(mut self) -> PoolReport {
        let mut per_worker = Vec::with_capacity(self.workers.len());
        let mut panicked = 0;
        let mut errors = Vec::new();
        for (i, h) in self.workers.drain(..).enumerate() {
            match h.join() {
                Ok((n, error)) => {
                    per_worker.push(n);
                    errors.extend(error.map(|e| (i, e)));
                }
                Err(_) => {
                    per_worker.push(0);
                    panicked += 1;
                }
            }
        }
        PoolReport {
            per_worker,
            panicked,
            stats: self.port.stats(),
            errors,
        }
    }
}

impl<T: Send + 'static> Drop for WorkerPool<T> {
    /// A pool dropped without `stop` or `close` closes its port, so that its
    /// threads end instead of waiting forever.
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.port.close();
            for h in self.workers.drain(..) {
                let _ = h.join();
            }
        }
    }
}
