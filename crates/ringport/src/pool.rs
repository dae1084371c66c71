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
    workers: Vec<JoinHandle<u64>>,
}

/// What each worker did, from [`WorkerPool::stop`] or [`WorkerPool::close`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolReport {
    /// Packets each worker handled (stop packets not counted), by worker index.
    pub per_worker: Vec<u64>,
    /// Workers whose handler panicked (their packets up to then are lost from
    /// `per_worker`, which shows 0 for them).
    pub panicked: usize,
    /// The port's counters when the pool had stopped.
    pub stats: Stats,
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
    pub fn start<F>(port: &CompletionPort<T>, threads: usize, handler: F) -> Result<Self, Error>
    where
        F: Fn(Packet<T>) + Send + Sync + 'static,
    {
        let threads = if threads == 0 {
            2 * crate::cpu_count()
        } else {
            threads
        };
        let handler = Arc::new(handler);
        let mut pool = WorkerPool {
            port: port.clone(),
            workers: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let port = port.clone();
            let handler = handler.clone();
            let spawned = thread::Builder::new()
                .name(format!("ringport-worker-{i}"))
                .spawn(move || {
                    let mut handled = 0;
                    while let Ok(packet) = port.get(None) {
                        if packet.key == Self::STOP_KEY {
                            break;
                        }
                        handler(packet);
                        handled += 1;
                    }
                    handled
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
        for h in self.workers.drain(..) {
            match h.join() {
                Ok(n) => per_worker.push(n),
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
