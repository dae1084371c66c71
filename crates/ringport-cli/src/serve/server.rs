//! What the completion-port echo servers share: their options and bounds,
//! their counters and summary, and the worker threads that loop on the
//! port.
//!
//! Each server is the classic IOCP server: `--threads` workers loop on one
//! [`CompletionPort`] (at most `--concurrency` of them active at once), and
//! every socket is associated with the port, so each finished receive, send
//! or accept arrives at whichever worker the port releases (LIFO), as a
//! packet whose key names the socket and whose token names the operation.
//!
//! The workers are the library's `WorkerPool`, built with each server's
//! thread names, its batch per get, and the worker's index for the
//! per-worker counters.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringport::{cpu_count, Backend, CompletionPort, Packet, WorkerPool};

use super::sockperf::Protocol;
use super::Kind;
use crate::args::bounded;
use crate::timeline::{Recorder, Recording, MAX_SERVER_RECORDS};

/// The most worker threads: beyond this a typo (`--threads 100000000`)
/// would spend its time creating threads and fail late or abort.
pub const MAX_THREADS: usize = 1024;
/// The most accepts pending: four times the listen backlog; more would
/// only hold memory.
pub const MAX_ACCEPTS: usize = 4096;
/// The most UDP receives pending, and the most bytes their buffers may
/// hold in all (each pending receive owns a buffer of --buf-size).
pub const MAX_PENDING: usize = 65_536;
pub const MAX_PENDING_BYTES: usize = 1 << 30;
/// The most packets per get.
pub const MAX_BATCH: usize = 65_536;

/// How to run a server; the benchmarks build these directly.
#[derive(Clone, Debug)]
pub struct Options {
    pub threads: usize,
    pub concurrency: usize,
    pub accepts: usize,
    pub pending: usize,
    pub buf_size: usize,
    pub batch: usize,
    /// Sends with skip-on-success: a send that completes at once is
    /// handled on the spot instead of going through the port.
    pub skip: bool,
    pub backend: Backend,
    /// What the echo servers answer.
    pub protocol: Protocol,
    /// Record the workers' packets taken within this window of the run
    /// (`serve --timeline`); the recording comes back in the [`Summary`].
    pub timeline: Option<Range<Duration>>,
}

impl Options {
    /// Defaults for `kind` on this machine.
    pub fn new(kind: Kind) -> Options {
        Options {
            threads: 2 * cpu_count(),
            concurrency: cpu_count(),
            accepts: 16,
            pending: 16,
            buf_size: match kind {
                Kind::TcpEcho => 16 << 10,
                Kind::UdpEcho | Kind::UdpSink => 64 << 10,
            },
            batch: 1,
            skip: true,
            backend: Backend::Auto,
            protocol: Protocol::Echo,
            timeline: None,
        }
    }

    pub(super) fn port<T: Send + 'static>(&self) -> Result<CompletionPort<T>, String> {
        CompletionPort::builder()
            .concurrency(self.concurrency)
            .backend(self.backend)
            .build()
            .map_err(|e| format!("creating the completion port: {e}"))
    }

    pub(super) fn validate(&self, kind: Kind) -> Result<(), String> {
        bounded("threads", self.threads, MAX_THREADS)?;
        bounded("concurrency", self.concurrency, MAX_THREADS)?;
        bounded("batch", self.batch, MAX_BATCH)?;
        if self.buf_size == 0 || self.buf_size > 1 << 30 {
            return Err("--buf-size must be between 1 byte and 1 GiB".into());
        }
        match kind {
            Kind::TcpEcho => bounded("accepts", self.accepts, MAX_ACCEPTS),
            Kind::UdpEcho => {
                bounded("pending", self.pending, MAX_PENDING)?;
                if self.pending * self.buf_size > MAX_PENDING_BYTES {
                    return Err(format!(
                        "--pending {} of --buf-size {} bytes is more than 1 GiB of receive \
                         buffers: use fewer or smaller",
                        self.pending, self.buf_size
                    ));
                }
                Ok(())
            }
            Kind::UdpSink => Ok(()),
        }
    }
}

/// What a server did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Connections accepted (TCP).
    pub connections: u64,
    /// Receives that brought data.
    pub messages: u64,
    /// Bytes sent back.
    pub bytes: u64,
    /// Operations that failed (connections reset, …).
    pub errors: u64,
    /// Datagrams longer than the receive buffer (EMSGSIZE), not echoed.
    pub truncated: u64,
    /// Why the server could not go on, if it could not.
    pub fatal: Option<String>,
    /// What the workers did in the window `Options::timeline` asked for.
    pub timeline: Option<Recording>,
}

/// Counters on their own cache lines, one set per worker.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerCounters {
    pub(super) connections: AtomicU64,
    pub(super) messages: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) truncated: AtomicU64,
}

impl WorkerCounters {
    pub(super) fn bump(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// What a server's workers record: a set of counters each, and the first
/// error that stopped the server from going on.
pub struct Ledger {
    name: &'static str,
    counters: Vec<WorkerCounters>,
    fatal: Mutex<Option<String>>,
}

impl Ledger {
    /// A ledger for `workers` workers of the server `name`.
    pub(super) fn new(name: &'static str, workers: usize) -> Ledger {
        Ledger {
            name,
            counters: (0..workers).map(|_| WorkerCounters::default()).collect(),
            fatal: Mutex::new(None),
        }
    }

    /// Worker `w`'s counters.
    pub(super) fn of(&self, w: usize) -> &WorkerCounters {
        &self.counters[w]
    }

    /// Records (and logs) why the server cannot go on, if nothing did yet.
    pub(super) fn fail(&self, why: String) {
        let mut f = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            crate::log::line(format_args!("{}: {why}", self.name));
            *f = Some(why);
        }
    }

    fn summary(&self) -> Summary {
        let sum = |f: fn(&WorkerCounters) -> &AtomicU64| -> u64 {
            self.counters
                .iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        Summary {
            connections: sum(|c| &c.connections),
            messages: sum(|c| &c.messages),
            bytes: sum(|c| &c.bytes),
            errors: sum(|c| &c.errors),
            truncated: sum(|c| &c.truncated),
            fatal: self
                .fatal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            timeline: None,
        }
    }
}

/// A server's shared state, which keeps its [`Ledger`].
pub trait ServerState {
    fn ledger(&self) -> &Ledger;
}

/// A running completion-port server: its port, the workers looping on it
/// and the state they share. Stopping it closes the port (operations in
/// flight are cancelled), joins the workers and closes every socket.
pub struct Running<Op: Send + 'static, S: ServerState> {
    port: CompletionPort<Op>,
    state: Option<Arc<S>>,
    workers: Option<WorkerPool<Op>>,
    addr: SocketAddr,
    /// `--timeline`: the workers' recorder, the port's limit and the
    /// picture's title.
    recorder: Option<(Arc<Recorder>, usize, String)>,
}

/// A running echo server of any kind (the completion-port ones here, the
/// RIO ones beside them), as the benchmarks start and stop them.
pub trait Echo: 'static {
    /// The address it listens on.
    fn local_addr(&self) -> SocketAddr;
    /// Stops it and says what it did.
    fn stop(self) -> Summary;
}

impl<Op: Send + 'static, S: ServerState + 'static> Echo for Running<Op, S> {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(mut self) -> Summary {
        self.shutdown()
    }
}

impl<Op: Send + 'static, S: ServerState + Send + Sync + 'static> Running<Op, S> {
    /// Starts the workers on `port`, each handing its packets to
    /// `handle(state, worker index, packet)`, then lets `prime` start the
    /// server's first operations; stops everything if that fails.
    pub(super) fn run(
        port: CompletionPort<Op>,
        addr: SocketAddr,
        state: S,
        opts: &Options,
        handle: impl Fn(&S, usize, Packet<Op>) + Send + Sync + 'static,
        prime: impl FnOnce(&S) -> Result<(), String>,
    ) -> Result<Self, String> {
        let state = Arc::new(state);
        let s = state.clone();
        let name = state.ledger().name;
        let recorder = opts
            .timeline
            .clone()
            .map(|w| Arc::new(Recorder::new(opts.threads, w, MAX_SERVER_RECORDS)));
        let r = recorder.clone();
        let workers = WorkerPool::builder(&port)
            .threads(opts.threads)
            .name(name)
            .batch(opts.batch)
            // The handlers never wait for their own operations: what each
            // starts goes to the kernel in the enter of its worker's next
            // wait (issue 11's "submit and wait in one io_uring_enter").
            .submit_on_wait(true)
            .start(move |w, p| match &r {
                None => handle(&s, w, p),
                Some(r) => {
                    let (taken, key) = (r.now(), p.key);
                    handle(&s, w, p);
                    // SAFETY: the pool runs worker w's handler on worker
                    // w's thread only.
                    unsafe { r.record(w, key, taken) };
                }
            })
            .map_err(|e| format!("starting the workers: {e}"))?;
        let recorder = recorder.map(|r| {
            let title = format!(
                "ringport serve {name}: {} workers, concurrency {}, backend {}, packets taken \
                 {:.3} to {:.3} s after the start",
                opts.threads,
                opts.concurrency,
                port.backend(),
                r.window().start.as_secs_f64(),
                r.window().end.as_secs_f64()
            );
            (r, opts.concurrency, title)
        });
        let mut server = Running {
            port,
            state: Some(state.clone()),
            workers: Some(workers),
            addr,
            recorder,
        };
        if let Err(e) = prime(&state) {
            server.shutdown();
            return Err(e);
        }
        Ok(server)
    }
}

impl<Op: Send + 'static, S: ServerState> Running<Op, S> {
    /// The backend its port runs on.
    pub fn backend(&self) -> Backend {
        self.port.backend()
    }

    fn shutdown(&mut self) -> Summary {
        if let Some(pool) = self.workers.take() {
            for (w, e) in pool.close().errors {
                crate::log::line(format_args!("worker {w}: {e}"));
            }
        }
        self.port.close();
        // The workers are joined and their handler dropped: the recorder
        // is ours alone again.
        let timeline = self.recorder.take().and_then(|(r, limit, title)| {
            Arc::try_unwrap(r)
                .ok()
                .map(|r| r.into_recording(limit, title))
        });
        match self.state.take() {
            Some(s) => Summary {
                timeline,
                ..s.ledger().summary()
            },
            None => Summary::default(),
        }
    }
}

impl<Op: Send + 'static, S: ServerState> Drop for Running<Op, S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
