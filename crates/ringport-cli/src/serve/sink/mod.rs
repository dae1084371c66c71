//! `ringport serve udp-sink --mode …`: the classic Registered I/O UDP
//! servers, which count datagrams of one size as fast as they can.
//!
//! Each mode is one of the servers of the published Windows RIO comparisons:
//!
//! - `port`: the traditional IOCP server: `--pending` `recv_from`s pending on
//!   a [`CompletionPort`], `--threads` workers taking up to `--batch`
//!   packets per `get` (`GetQueuedCompletionStatusEx`), each re-issuing the
//!   receive it got.
//! - `rio-polled`: one thread spinning on [`CompletionQueue::dequeue`](ringport::rio::CompletionQueue::dequeue); freed
//!   receive buffers are re-posted with [`RioFlags::DEFER`](ringport::rio::RioFlags::DEFER) and handed to
//!   the kernel in one `commit` once a quarter of `--pending` has gathered,
//!   so there is about one system call per `pending / 4` datagrams.
//! - `rio-event`: notify → wait on the event → one dequeue of up to `--batch`
//!   → re-post (one commit) → notify again (the naive event server).
//! - `rio-event-polled`: the same, but dequeue again until the queue is
//!   empty before arming the event (the tuned event server).
//! - `rio-port`: one thread on a completion port that the queue notifies
//!   with a packet; per packet it dequeues until empty (at most `--batch`
//!   results), re-posts, and re-arms.
//! - `rio-port-mt`: `--threads` threads on that port. Only the thread that
//!   took the notification touches the queue until it re-arms it, and it
//!   re-arms only after its batch is processed, so one socket's results are
//!   handled in order; `--batch` caps the results taken per notification,
//!   so one busy queue cannot hold a thread forever.
//!
//! Each mode has its file ([`port`], [`rio`]); [`run`] is how a run ends
//! (the generator's end marker, `--duration`, Ctrl-C) and how each thread is
//! measured, [`report`] what is reported.

mod port;
mod report;
mod rio;
mod run;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringport::{Backend, CompletionPort};

use super::server::{MAX_BATCH, MAX_THREADS};
use crate::args::{bind_error, bounded, MAX_UDP};
pub use report::SinkReport;
use rio::RioQueue;
use run::MARK_LEN;
pub use run::{marker, wait_run, Meter, SinkRun};

/// A server mode of `serve udp-sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Traditional IOCP: pending recv_from on a completion port, N threads.
    Port,
    /// RIO, one thread spinning on dequeue.
    RioPolled,
    /// RIO, event notification: notify, wait, one dequeue, re-post.
    RioEvent,
    /// RIO, event notification, dequeuing until empty before re-arming.
    RioEventPolled,
    /// RIO, port notification, one thread.
    RioPort,
    /// RIO, port notification, N threads on the port.
    RioPortMt,
}

impl Mode {
    /// Every mode, in the order the benchmark runs them.
    pub const ALL: [Mode; 6] = [
        Mode::Port,
        Mode::RioPolled,
        Mode::RioEvent,
        Mode::RioEventPolled,
        Mode::RioPort,
        Mode::RioPortMt,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Port => "port",
            Mode::RioPolled => "rio-polled",
            Mode::RioEvent => "rio-event",
            Mode::RioEventPolled => "rio-event-polled",
            Mode::RioPort => "rio-port",
            Mode::RioPortMt => "rio-port-mt",
        }
    }

    /// Whether the mode runs `--threads` threads (the others run one).
    pub fn multi_threaded(self) -> bool {
        matches!(self, Mode::Port | Mode::RioPortMt)
    }
}

/// How to run a sink; the benchmark builds these directly.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub mode: Mode,
    /// Threads of the multi-threaded modes.
    pub threads: usize,
    /// Bytes of the datagrams counted.
    pub size: usize,
    /// Most results (or packets) taken at once.
    pub batch: usize,
    /// Receives kept pending.
    pub pending: usize,
    /// The backend of the completion port (port modes) and of the
    /// completion queue (RIO modes).
    pub backend: Backend,
    /// Pin every server thread to this CPU.
    pub pin: Option<usize>,
    /// SO_RCVBUF asked for (the kernel caps it at net.core.rmem_max).
    pub rcvbuf: usize,
    /// Count each server thread's system calls (off by default: the
    /// counter costs every system call of the thread it counts).
    pub count_syscalls: bool,
}

impl SinkOptions {
    pub fn new(mode: Mode) -> SinkOptions {
        SinkOptions {
            mode,
            threads: if mode.multi_threaded() {
                ringport::cpu_count()
            } else {
                1
            },
            size: 1024,
            batch: 1000,
            pending: 512,
            backend: Backend::Auto,
            pin: None,
            rcvbuf: 4 << 20,
            count_syscalls: false,
        }
    }

    /// Checks the figures; every refusal names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 || self.size > MAX_UDP {
            return Err(format!(
                "--size must be 1 to {MAX_UDP} bytes (the largest UDP datagram), not {}",
                self.size
            ));
        }
        bounded("threads", self.threads, MAX_THREADS)?;
        bounded("batch", self.batch, MAX_BATCH)?;
        bounded("pending", self.pending, 32_768)
    }

    /// Bytes of each receive buffer: room for a datagram of the test size
    /// and for the end marker, on a 64-byte boundary.
    fn slot(&self) -> usize {
        (self.size.max(MARK_LEN + 1) + 63) & !63
    }

    /// Threads this mode runs.
    pub fn thread_count(&self) -> usize {
        if self.mode.multi_threaded() {
            self.threads
        } else {
            1
        }
    }
}

// ------------------------------------------------------------ the sink

/// A running sink: its threads, and how to stop them.
pub struct Sink {
    name: String,
    run: Arc<SinkRun>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    /// Wakes threads blocked on a port (closes it).
    closer: Option<Box<dyn Fn() + Send>>,
    cq: Option<Arc<RioQueue>>,
    backend: Option<Backend>,
    count_syscalls: bool,
}

/// Binds a UDP socket with a large receive buffer.
pub fn bind(addr: SocketAddr, rcvbuf: usize) -> Result<UdpSocket, String> {
    let sock = UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
    let v = rcvbuf.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads one int; failure only leaves the default size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(sock)
}

impl Sink {
    /// Binds `addr` and starts the server threads.
    pub fn start(addr: SocketAddr, opts: &SinkOptions) -> Result<Sink, String> {
        opts.validate()?;
        let sock = bind(addr, opts.rcvbuf)?;
        Sink::start_on(sock, opts)
    }

    /// Starts the server threads on a bound socket (a shard of a reuseport
    /// group).
    pub fn start_on(sock: UdpSocket, opts: &SinkOptions) -> Result<Sink, String> {
        opts.validate()?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        let run = SinkRun::new(opts.size, opts.thread_count());
        let mut sink = Sink {
            name: opts.mode.name().to_string(),
            run: run.clone(),
            addr,
            threads: Vec::new(),
            closer: None,
            cq: None,
            backend: None,
            count_syscalls: opts.count_syscalls,
        };
        let started = match opts.mode {
            Mode::Port => port::start(&mut sink, sock, opts),
            Mode::RioPolled | Mode::RioEvent | Mode::RioEventPolled => {
                rio::start_direct(&mut sink, sock, opts)
            }
            Mode::RioPort | Mode::RioPortMt => rio::start_port(&mut sink, sock, opts),
        };
        if let Err(e) = started {
            sink.halt();
            return Err(e);
        }
        Ok(sink)
    }

    /// A completion port for the mode's threads, closed when the sink
    /// halts (which wakes the threads waiting on it).
    fn port<T: Send + 'static>(&mut self, opts: &SinkOptions) -> Result<CompletionPort<T>, String> {
        let port = CompletionPort::builder()
            .concurrency(opts.thread_count())
            .backend(opts.backend)
            .build()
            .map_err(|e| format!("creating the completion port: {e}"))?;
        self.backend = Some(port.backend());
        let closer = port.clone();
        self.closer = Some(Box::new(move || closer.close()));
        Ok(port)
    }

    /// The address it receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The completion port's backend, in the port modes.
    pub fn backend(&self) -> Option<Backend> {
        self.backend
    }

    fn halt(&mut self) {
        self.run.stop_now();
        if let Some(close) = &self.closer {
            close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Waits for the end marker, `deadline`, or `stop()` returning true;
    /// then stops the threads and reports.
    pub fn wait(mut self, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> SinkReport {
        let threads = std::mem::take(&mut self.threads);
        let report = wait_run(
            &self.run,
            threads,
            deadline,
            stop,
            self.closer.take(),
            &self.name,
        );
        SinkReport {
            syscalls_asked: self.count_syscalls,
            cq: self.cq.as_ref().map(|q| q.cq.stats()),
            cq_backend: self.cq.as_ref().map(|q| q.cq.backend()),
            ..report
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Spawns a named server thread that runs `body` with its meter.
fn spawn(
    sink: &mut Sink,
    index: usize,
    opts: &SinkOptions,
    body: impl FnOnce(&mut Meter) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let run = sink.run.clone();
    let name = format!("{}-{index}", sink.name);
    let (pin, count) = (opts.pin, opts.count_syscalls);
    let h = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut meter = Meter::new(&run, index, name, pin, count);
            if let Err(e) = body(&mut meter) {
                run.fail(e);
            }
            meter.finish();
        })
        .map_err(|e| format!("starting a server thread: {e}"))?;
    sink.threads.push(h);
    Ok(())
}

/// `ringport serve udp-sink`: runs one sink until the end marker,
/// `duration`, or `stop()`, and prints what it measured.
pub fn serve(
    addr: SocketAddr,
    opts: &SinkOptions,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
) -> Result<(), String> {
    opts.validate()?;
    let sink = Sink::start(addr, opts)?;
    println!(
        "listening on {} (udp-sink, mode {})",
        sink.local_addr(),
        opts.mode.name()
    );
    let mut backend = match sink.backend() {
        Some(b) => format!("port backend {b}"),
        None => "no port".to_string(),
    };
    if let Some(q) = &sink.cq {
        backend.push_str(&format!(", completion queue backend {}", q.cq.backend()));
    }
    let threads = opts.thread_count();
    let note = if !opts.mode.multi_threaded() && opts.threads > 1 {
        " (this mode runs one thread)"
    } else {
        ""
    };
    println!(
        "{backend}, {threads} thread(s){note}, size {}, pending {}, batch {}",
        opts.size, opts.pending, opts.batch
    );
    match duration {
        Some(d) => println!("stopping on the end marker, after {d:?}, or on Ctrl-C"),
        None => println!("stopping on the end marker or on Ctrl-C"),
    }
    let deadline = duration.map(|d| Instant::now() + d);
    let report = sink.wait(deadline, stop);
    report.print(opts.size);
    match report.fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
