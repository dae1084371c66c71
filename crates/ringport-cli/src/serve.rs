//! `ringport serve tcp-echo|udp-echo`: echo servers on one completion port.
//! (`serve udp-sink`, the RIO UDP servers, is in [`crate::sink`];
//! `serve tcp-echo --mode rio-port`, the RIO TCP echo server, in
//! [`crate::rio_echo`].)
//!
//! Both are the classic IOCP server: `--threads` workers loop on one
//! [`CompletionPort`] (at most `--concurrency` of them active at once), and
//! every socket is associated with the port, so each finished receive, send
//! or accept arrives at whichever worker the port releases (LIFO), as a
//! packet whose key names the socket and whose token names the operation.
//!
//! **TCP.** The listener keeps `--accepts` accepts pending. Each connection
//! has exactly **one operation in flight at a time**: a receive; when it
//! completes with data, the send of that data (re-sent from where it stopped
//! after a partial send, until all of it is out); then the next receive. That
//! keeps each connection's bytes in order whichever worker takes which packet
//! and needs no per-connection lock, because only the worker holding the
//! connection's one packet touches it. (Several receives pending on one
//! stream would need sequence numbers and a reassembly buffer to put their
//! data back in order, and two sends pending on one stream could interleave
//! after a partial send; for an echo server, which cannot send before it has
//! received, one operation at a time costs nothing.) Many connections are
//! served at once, each with its own pending receive, so the port always has
//! work for every worker. A 0-byte receive (the peer closed) or any error
//! closes the connection; the buffer is reused from packet to packet. Sends
//! use skip-on-success (`send_now`, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS)
//! unless `--no-skip`: a send that completes at once, as nearly all do, is
//! followed on the spot by the next receive instead of by a packet.
//!
//! **UDP.** The socket keeps `--pending` receives (`recv_from`) pending, each
//! with its own buffer; a datagram is sent back to its sender with `send_to`
//! using the same buffer, whose completion re-issues the receive. With
//! skip-on-success (the default) the send normally completes on the spot,
//! and the worker then tries the next receive at once too: while datagrams
//! are waiting it echoes up to 32 in a row without going back to the port,
//! as a `recvfrom` loop would, and leaves a receive pending when none is.
//!
//! The servers print the address they listen on (so `--addr 127.0.0.1:0`
//! works) and run until Ctrl-C (SIGINT or SIGTERM) or `--duration`.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringport::{cpu_count, Backend, CompletionPort, Error, Handle, Packet, Started};

use crate::load::{parse_duration, resolve};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// TCP echo: every byte received on a connection is sent back on it.
    TcpEcho,
    /// UDP echo: every datagram is sent back to its sender.
    UdpEcho,
    /// UDP sink: counts datagrams of --size bytes in a --mode (the RIO UDP
    /// servers) until the generator's end marker.
    UdpSink,
}

#[derive(clap::Args)]
pub struct Args {
    /// tcp-echo, udp-echo or udp-sink.
    #[arg(value_enum)]
    kind: Kind,
    /// udp-sink: the server mode [default: rio-polled]; udp-echo:
    /// rio-polled, rio-event or rio-port, and tcp-echo: rio-port, for the
    /// Registered I/O servers (without it, the completion-port ones).
    #[arg(long, value_enum)]
    mode: Option<crate::sink::Mode>,
    /// udp-sink: bytes of the datagrams counted (any other size ends the run).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Address to listen on; port 0 picks a free one (printed).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Worker threads on the port, 1 to 1,024 [default: 2 × CPUs; the RIO
    /// modes but rio-port-mt run one].
    #[arg(long)]
    threads: Option<usize>,
    /// The port's concurrency limit, 1 to 1,024 [default: CPUs].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Stop after this long (e.g. 30s, 2m) instead of waiting for Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// TCP: accepts kept pending on the listener, 1 to 4,096.
    #[arg(long, default_value_t = 16)]
    accepts: usize,
    /// UDP: receives kept pending on the socket, 1 to 65,536 and at most
    /// 1 GiB of buffers in all [default: 16]; RIO udp-echo: 1 to 4,096;
    /// udp-sink: 1 to 32,768 [default: 512]; tcp-echo --mode rio-port: per
    /// connection, 1 to 64 [default: 4].
    #[arg(long)]
    pending: Option<usize>,
    /// Bytes of each receive buffer, up to 1 GiB [default: 16384 for TCP,
    /// 65536 for UDP]; RIO udp-echo: up to 65,507; tcp-echo --mode rio-port:
    /// up to 1 MiB.
    #[arg(long)]
    buf_size: Option<usize>,
    /// Packets a worker takes from the port at once (get_many), 1 to 65,536;
    /// 1 is the classic one-packet-per-get loop. udp-sink: most results per
    /// dequeue, get or notification [default: 1; udp-sink: 1000].
    #[arg(long)]
    batch: Option<usize>,
    /// Queue a packet even for a send that completes at once (turns off
    /// skip-on-success, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS).
    #[arg(long)]
    no_skip: bool,
    /// The port's backend (udp-sink: and the completion queue's): auto,
    /// io_uring or epoll (RINGPORT_BACKEND overrides).
    #[arg(long, default_value = "auto")]
    backend: Backend,
    /// udp-sink: count the system calls of the server threads (a
    /// per-thread tracepoint counter, which adds its own cost to every
    /// system call they make).
    #[arg(long)]
    count_syscalls: bool,
}

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

/// Checks that `--{name} {value}` is within `1..=max`.
pub fn bounded(name: &str, value: usize, max: usize) -> Result<(), String> {
    if value == 0 || value > max {
        return Err(format!("--{name} must be 1 to {}, not {value}", group(max)));
    }
    Ok(())
}

/// `65536` as `65,536`.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

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
        }
    }

    fn port<T: Send + 'static>(&self) -> Result<CompletionPort<T>, String> {
        CompletionPort::builder()
            .concurrency(self.concurrency)
            .backend(self.backend)
            .build()
            .map_err(|e| format!("creating the completion port: {e}"))
    }

    fn validate(&self, kind: Kind) -> Result<(), String> {
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

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_stop_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
    // the sigaction struct is fully initialised (zeroed, then set).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

pub fn run(args: Args) -> Result<(), String> {
    let addr = resolve(&args.addr)?;
    if args.count_syscalls && args.kind != Kind::UdpSink {
        return Err("--count-syscalls applies to udp-sink only".into());
    }
    if args.kind == Kind::UdpSink {
        let mode = args.mode.unwrap_or(crate::sink::Mode::RioPolled);
        let mut opts = crate::sink::SinkOptions::new(mode);
        opts.size = args.size;
        opts.threads = args.threads.unwrap_or(opts.threads);
        opts.batch = args.batch.unwrap_or(opts.batch);
        opts.pending = args.pending.unwrap_or(opts.pending);
        opts.backend = args.backend;
        opts.count_syscalls = args.count_syscalls;
        opts.validate()?;
        catch_stop_signals();
        return crate::sink::serve(addr, &opts, args.duration, &|| STOP.load(Ordering::Relaxed));
    }
    if args.kind == Kind::TcpEcho && args.mode.is_some() {
        if args.mode != Some(crate::sink::Mode::RioPort) {
            return Err("tcp-echo takes --mode rio-port only (or no --mode)".into());
        }
        // It runs one thread whatever --threads says, but a count that
        // would be refused elsewhere is refused here too.
        if let Some(t) = args.threads {
            bounded("threads", t, MAX_THREADS)?;
        }
        let mut opts = crate::rio_echo::EchoOptions::new();
        opts.pending = args.pending.unwrap_or(opts.pending);
        opts.buf_size = args.buf_size.unwrap_or(opts.buf_size);
        opts.batch = args.batch.unwrap_or(opts.batch);
        opts.backend = args.backend;
        catch_stop_signals();
        return crate::rio_echo::serve(addr, &opts, args.duration, &|| {
            STOP.load(Ordering::Relaxed)
        });
    }
    let rio_udp = match (args.kind, args.mode) {
        (Kind::UdpEcho, Some(m)) => Some(
            crate::rio_udp_echo::EchoMode::from_sink(m)
                .ok_or("udp-echo takes --mode rio-polled, rio-event or rio-port (or no --mode)")?,
        ),
        (_, None) => None,
        _ => return Err("--mode applies to udp-sink, udp-echo and tcp-echo only".into()),
    };
    let mut opts = Options::new(args.kind);
    if let Some(t) = args.threads {
        opts.threads = t;
    }
    if let Some(c) = args.concurrency {
        opts.concurrency = c;
    }
    if let Some(b) = args.buf_size {
        opts.buf_size = b;
    }
    opts.accepts = args.accepts;
    opts.pending = args.pending.unwrap_or(opts.pending);
    opts.batch = args.batch.unwrap_or(opts.batch);
    opts.skip = !args.no_skip;
    opts.backend = args.backend;
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be more than 0".into());
    }
    opts.validate(args.kind)?;
    catch_stop_signals();

    type Stop = Box<dyn FnOnce() -> Summary>;
    let (server, name, backend): (Stop, &str, Backend) = match args.kind {
        Kind::TcpEcho => {
            let s = TcpEcho::start(addr, &opts)?;
            println!("listening on {} (tcp-echo)", s.local_addr());
            let b = s.backend();
            (Box::new(move || s.stop()), "tcp-echo", b)
        }
        Kind::UdpEcho if rio_udp.is_some() => {
            let mode = rio_udp.unwrap_or(crate::rio_udp_echo::EchoMode::Polled);
            let size = opts.buf_size.min(crate::sink::MAX_UDP);
            let s = crate::rio_udp_echo::RioUdpEcho::start(
                addr,
                mode,
                opts.pending,
                size,
                opts.backend,
            )?;
            println!(
                "listening on {} (udp-echo, Registered I/O, {mode:?} notification, one \
                 thread, {} receives pending)",
                s.local_addr(),
                opts.pending
            );
            let b = s.backend();
            (Box::new(move || s.stop()), "udp-echo", b)
        }
        Kind::UdpEcho => {
            let s = UdpEcho::start(addr, &opts)?;
            println!("listening on {} (udp-echo)", s.local_addr());
            let b = s.backend();
            (Box::new(move || s.stop()), "udp-echo", b)
        }
        Kind::UdpSink => return Err("udp-sink runs on its own (see sink.rs)".into()),
    };
    println!(
        "backend {backend}, {} worker threads, concurrency {}, batch {}, skip-on-success {}",
        opts.threads,
        opts.concurrency,
        opts.batch,
        if opts.skip { "on" } else { "off" }
    );
    match args.duration {
        Some(d) => println!("stopping after {d:?} or on Ctrl-C"),
        None => println!("stopping on Ctrl-C"),
    }
    let deadline = args.duration.map(|d| Instant::now() + d);
    loop {
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if expired || STOP.load(Ordering::Relaxed) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let s = server();
    let truncated = match s.truncated {
        0 => String::new(),
        n => format!(", {n} truncated datagrams not echoed"),
    };
    println!(
        "{name} stopped: {} connections, {} messages, {} bytes echoed, {} errors{truncated}",
        s.connections, s.messages, s.bytes, s.errors
    );
    if let Some(e) = s.fatal {
        return Err(e);
    }
    Ok(())
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
}

/// Counters on their own cache lines, one set per worker.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Counters {
    connections: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    truncated: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

fn summarize(counters: &[Counters], fatal: &Mutex<Option<String>>) -> Summary {
    let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
        counters.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    };
    Summary {
        connections: sum(|c| &c.connections),
        messages: sum(|c| &c.messages),
        bytes: sum(|c| &c.bytes),
        errors: sum(|c| &c.errors),
        truncated: sum(|c| &c.truncated),
        fatal: fatal.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    }
}

/// What a server's workers share that its summary is made of.
pub(crate) trait Tally {
    fn counters(&self) -> &[Counters];
    fn fatal(&self) -> &Mutex<Option<String>>;
}

/// A running completion-port server: its port, the workers looping on it
/// and the state they share. Stopping it closes the port (operations in
/// flight are cancelled), joins the workers and closes every socket.
pub struct Running<Op: Send + 'static, S: Tally> {
    port: CompletionPort<Op>,
    state: Option<Arc<S>>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

/// A running TCP echo server.
pub type TcpEcho = Running<TcpOp, TcpState>;
/// A running UDP echo server.
pub type UdpEcho = Running<UdpOp, UdpState>;

/// A running echo server of any kind (the completion-port ones here, the
/// RIO ones beside them), as the benchmarks start and stop them.
pub trait Echo: 'static {
    /// The address it listens on.
    fn local_addr(&self) -> SocketAddr;
    /// Stops it and says what it did.
    fn stop(self) -> Summary;
}

impl<Op: Send + 'static, S: Tally + 'static> Echo for Running<Op, S> {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(mut self) -> Summary {
        self.shutdown()
    }
}

impl<Op: Send + 'static, S: Tally> Running<Op, S> {
    /// The backend its port runs on.
    pub fn backend(&self) -> Backend {
        self.port.backend()
    }

    fn shutdown(&mut self) -> Summary {
        self.port.close();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        match self.state.take() {
            Some(s) => summarize(s.counters(), s.fatal()),
            None => Summary::default(),
        }
    }
}

impl<Op: Send + 'static, S: Tally> Drop for Running<Op, S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts `threads` workers looping on `port`, each handing its packets to
/// `handle(worker index, packet)`, until the port closes.
fn spawn_workers<T, F>(
    port: &CompletionPort<T>,
    opts: &Options,
    name: &str,
    handle: F,
) -> Result<Vec<JoinHandle<()>>, String>
where
    T: Send + 'static,
    F: Fn(usize, Packet<T>) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let mut workers = Vec::with_capacity(opts.threads);
    for w in 0..opts.threads {
        let wport = port.clone();
        let handle = handle.clone();
        let batch = opts.batch;
        let spawned = thread::Builder::new()
            .name(format!("{name}-{w}"))
            .spawn(move || {
                let mut packets = Vec::with_capacity(batch);
                loop {
                    match wport.get_into(&mut packets, batch, None) {
                        Ok(_) => {
                            for p in packets.drain(..) {
                                handle(w, p);
                            }
                        }
                        Err(Error::Closed) => break,
                        Err(e) => {
                            crate::log::line(format_args!("worker {w}: {e}"));
                            break;
                        }
                    }
                }
            });
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                port.close();
                for h in workers {
                    let _ = h.join();
                }
                return Err(format!("starting worker {w}: {e}"));
            }
        }
    }
    Ok(workers)
}

// ---------------------------------------------------------------- TCP

/// What an operation was; the packet's key says on which socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpOp {
    Accept,
    /// Retry an accept after running out of descriptors or memory.
    AcceptLater,
    Recv,
    Send,
}

const LISTENER: u64 = 0;

/// The connections, by key (index + 1).
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Arc<Handle<TcpOp>>>>,
    free: Vec<usize>,
}

pub(crate) struct TcpState {
    port: CompletionPort<TcpOp>,
    listener: Handle<TcpOp>,
    conns: Mutex<Conns>,
    buf_size: usize,
    skip: bool,
    counters: Vec<Counters>,
    fatal: Mutex<Option<String>>,
    /// Accepts failed in a row for want of descriptors or memory: the
    /// retry waits longer the longer it lasts (10 ms to 160 ms).
    starved: AtomicU32,
}

fn bind_error(addr: SocketAddr, e: io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (the port is taken; use another, or port 0)",
        io::ErrorKind::AddrNotAvailable => " (no such local address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        _ => "",
    };
    format!("cannot listen on {addr}: {e}{hint}")
}

impl TcpEcho {
    /// Binds `addr` and starts serving.
    pub fn start(addr: SocketAddr, opts: &Options) -> Result<TcpEcho, String> {
        opts.validate(Kind::TcpEcho)?;
        let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
        // std listens with a backlog of 128; a burst of connects wants more.
        // SAFETY: listen on a socket we own; it only changes the backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 1024) };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let port = opts.port()?;
        let listener = port
            .associate(listener, LISTENER)
            .map_err(|e| format!("associating the listener: {e}"))?;
        let state = Arc::new(TcpState {
            port: port.clone(),
            listener,
            conns: Mutex::new(Conns::default()),
            buf_size: opts.buf_size,
            skip: opts.skip,
            counters: (0..opts.threads).map(|_| Counters::default()).collect(),
            fatal: Mutex::new(None),
            starved: AtomicU32::new(0),
        });
        let s = state.clone();
        let workers = spawn_workers(&port, opts, "tcp-echo", move |w, p| s.handle(w, p))?;
        let mut server = TcpEcho {
            port,
            state: Some(state.clone()),
            workers,
            addr,
        };
        for _ in 0..opts.accepts {
            if let Err(e) = state.listener.accept(TcpOp::Accept) {
                server.shutdown();
                return Err(format!("starting an accept: {e}"));
            }
        }
        Ok(server)
    }
}

impl Tally for TcpState {
    fn counters(&self) -> &[Counters] {
        &self.counters
    }
    fn fatal(&self) -> &Mutex<Option<String>> {
        &self.fatal
    }
}

impl TcpState {
    fn conn(&self, key: u64) -> Option<Arc<Handle<TcpOp>>> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let i = usize::try_from(key).ok()?.checked_sub(1)?;
        conns.slots.get(i)?.clone()
    }

    fn close_conn(&self, key: u64) {
        let taken = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            let i = key as usize - 1;
            let taken = conns.slots.get_mut(i).and_then(Option::take);
            if taken.is_some() {
                conns.free.push(i);
            }
            taken
        };
        // Dropped outside the lock: closing the socket is a system call.
        drop(taken);
    }

    fn fail(&self, why: String) {
        let mut f = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            crate::log::line(format_args!("tcp-echo: {why}"));
            *f = Some(why);
        }
    }

    fn handle(&self, w: usize, mut p: Packet<TcpOp>) {
        let c = &self.counters[w];
        let key = p.key;
        match (key, p.token) {
            (LISTENER, TcpOp::Accept) => return self.accepted(w, &mut p),
            (LISTENER, TcpOp::AcceptLater) => {
                if let Err(e) = self.listener.accept(TcpOp::Accept) {
                    self.stopped_accepting(e);
                }
                return;
            }
            (LISTENER, _) | (_, TcpOp::Accept | TcpOp::AcceptLater) => return,
            _ => {}
        }
        let Some(conn) = self.conn(key) else { return };
        let next = match p.token {
            TcpOp::Recv => match (p.take_buf(), p.result) {
                (Some(buf), Ok(n)) if n > 0 => {
                    Counters::bump(&c.messages, 1);
                    self.send(&conn, buf.into_vec())
                }
                // 0 bytes: the peer closed.
                (_, Ok(_)) => Err(None),
                (_, Err(e)) => Err(Some(e)),
            },
            _ => Ok(Some(p)),
        };
        // Follow sends that completed at once (skip-on-success) until one
        // is pending or all is sent and the next receive is pending.
        let mut next = next;
        loop {
            match next {
                Ok(None) => return,
                Ok(Some(mut sent)) => {
                    let n = match sent.result {
                        Ok(n) if n > 0 => n,
                        Ok(_) => {
                            next = Err(None);
                            continue;
                        }
                        Err(e) => {
                            next = Err(Some(e));
                            continue;
                        }
                    };
                    Counters::bump(&c.bytes, n as u64);
                    let Some(buf) = sent.take_buf() else {
                        next = Err(None);
                        continue;
                    };
                    let mut buf = buf.into_vec();
                    if n < buf.len() {
                        // A partial send: send the rest before receiving more.
                        buf.drain(..n);
                        next = self.send(&conn, buf);
                    } else {
                        buf.clear();
                        next = conn
                            .recv(buf, TcpOp::Recv)
                            .map(|_| None)
                            .map_err(|e| Some(e.into()));
                    }
                }
                Err(e) => {
                    if let Some(e) = e {
                        if e.raw_os_error() != Some(libc::ECANCELED) {
                            Counters::bump(&c.errors, 1);
                        }
                    }
                    drop(conn);
                    return self.close_conn(key);
                }
            }
        }
    }

    /// Starts sending `buf`; with skip-on-success, a send that completed at
    /// once comes back as its packet.
    fn send(
        &self,
        conn: &Handle<TcpOp>,
        buf: Vec<u8>,
    ) -> Result<Option<Packet<TcpOp>>, Option<io::Error>> {
        let r = if self.skip {
            conn.send_now(buf, TcpOp::Send).map(|s| match s {
                Started::Done(p) => Some(p),
                Started::Pending(_) => None,
            })
        } else {
            conn.send(buf, TcpOp::Send).map(|_| None)
        };
        r.map_err(|e| Some(e.into()))
    }

    fn stopped_accepting(&self, e: Error) {
        if !matches!(e, Error::Closed) {
            self.fail(format!("cannot start an accept: {e}"));
        }
    }

    fn accepted(&self, w: usize, p: &mut Packet<TcpOp>) {
        let c = &self.counters[w];
        match &p.result {
            Ok(_) => {}
            Err(_) if p.is_cancelled() || self.port.is_closed() => return,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                // Out of descriptors or memory: every pending accept fails
                // the same way until connections close, so retry later,
                // later each time, and say so once a second at most.
                static OUT_OF: crate::log::Every = crate::log::Every::second();
                Counters::bump(&c.errors, 1);
                let streak = self.starved.fetch_add(1, Ordering::Relaxed).min(4);
                let delay = Duration::from_millis(10 << streak);
                OUT_OF.line(format_args!(
                    "tcp-echo: accept: {e}; retrying in {} ms",
                    delay.as_millis()
                ));
                if let Err(e) = self.port.timer(delay, LISTENER, TcpOp::AcceptLater) {
                    self.stopped_accepting(e);
                }
                return;
            }
            Err(_) => Counters::bump(&c.errors, 1),
        }
        self.starved.store(0, Ordering::Relaxed);
        // Keep the number of pending accepts up before serving this one.
        if let Err(e) = self.listener.accept(TcpOp::Accept) {
            self.stopped_accepting(e);
        }
        let Some(stream) = p.take_stream() else {
            return;
        };
        Counters::bump(&c.connections, 1);
        let _ = stream.set_nodelay(true);
        let key = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            match conns.free.pop() {
                Some(i) => i,
                None => {
                    conns.slots.push(None);
                    conns.slots.len() - 1
                }
            }
        } as u64
            + 1;
        let conn = match self.port.associate(stream, key) {
            Ok(h) => Arc::new(h),
            Err(e) => {
                if !matches!(e, Error::Closed) {
                    Counters::bump(&c.errors, 1);
                }
                let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
                conns.free.push(key as usize - 1);
                return;
            }
        };
        {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.slots[key as usize - 1] = Some(conn.clone());
        }
        if conn
            .recv(Vec::with_capacity(self.buf_size), TcpOp::Recv)
            .is_err()
        {
            drop(conn);
            self.close_conn(key);
        }
    }
}

// ---------------------------------------------------------------- UDP

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UdpOp {
    Recv,
    Send,
}

pub(crate) struct UdpState {
    sock: Handle<UdpOp>,
    buf_size: usize,
    skip: bool,
    counters: Vec<Counters>,
    fatal: Mutex<Option<String>>,
}

impl UdpEcho {
    /// Binds `addr` and starts serving.
    pub fn start(addr: SocketAddr, opts: &Options) -> Result<UdpEcho, String> {
        opts.validate(Kind::UdpEcho)?;
        let sock = UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        let port = opts.port()?;
        let sock = port
            .associate(sock, 0)
            .map_err(|e| format!("associating the socket: {e}"))?;
        let state = Arc::new(UdpState {
            sock,
            buf_size: opts.buf_size,
            skip: opts.skip,
            counters: (0..opts.threads).map(|_| Counters::default()).collect(),
            fatal: Mutex::new(None),
        });
        let s = state.clone();
        let workers = spawn_workers(&port, opts, "udp-echo", move |w, p| s.handle(w, p))?;
        let mut server = UdpEcho {
            port,
            state: Some(state.clone()),
            workers,
            addr,
        };
        for _ in 0..opts.pending {
            if let Err(e) = state
                .sock
                .recv_from(Vec::with_capacity(state.buf_size), UdpOp::Recv)
            {
                server.shutdown();
                return Err(format!("starting a receive: {e}"));
            }
        }
        Ok(server)
    }
}

/// Datagrams one worker takes straight from the socket (receives that
/// completed at once) before it goes back to the port.
const EAGER_MAX: usize = 32;

impl Tally for UdpState {
    fn counters(&self) -> &[Counters] {
        &self.counters
    }
    fn fatal(&self) -> &Mutex<Option<String>> {
        &self.fatal
    }
}

impl UdpState {
    fn handle(&self, w: usize, p: Packet<UdpOp>) {
        let mut next = Some(p);
        let mut eager = 0;
        while let Some(p) = next.take() {
            let Some(buf) = self.echo(w, p) else { return };
            // With skip-on-success, try the next receive at once: a datagram
            // already waiting is echoed here without a trip through the
            // ring and the port (as a recvfrom loop would), up to EAGER_MAX
            // in a row so that one worker does not keep the socket to itself.
            eager += 1;
            let c = &self.counters[w];
            if self.skip && eager < EAGER_MAX {
                match self.sock.recv_from_now(buf, UdpOp::Recv) {
                    Ok(Started::Done(p)) => next = Some(p),
                    Ok(Started::Pending(_)) => {}
                    Err(e) => self.lost_buffer(c, e),
                }
            } else if let Err(e) = self.sock.recv_from(buf, UdpOp::Recv) {
                self.lost_buffer(c, e);
            }
        }
    }

    /// Echoes a received datagram; returns the buffer, emptied, for the next
    /// receive, or None when it is in flight with a send.
    fn echo(&self, w: usize, mut p: Packet<UdpOp>) -> Option<Vec<u8>> {
        let c = &self.counters[w];
        if p.is_cancelled() {
            return None;
        }
        let peer = p.peer();
        let mut buf = p.take_buf()?.into_vec();
        match (p.token, p.result) {
            (UdpOp::Recv, Ok(n)) => {
                if let Some(to) = peer {
                    Counters::bump(&c.messages, 1);
                    buf.truncate(n);
                    if !self.skip {
                        if let Err(e) = self.sock.send_to(buf, to, UdpOp::Send) {
                            self.lost_buffer(c, e);
                        }
                        return None;
                    }
                    match self.sock.send_to_now(buf, to, UdpOp::Send) {
                        Ok(Started::Pending(_)) => return None,
                        Ok(Started::Done(mut sent)) => {
                            match sent.result {
                                Ok(n) => Counters::bump(&c.bytes, n as u64),
                                Err(_) => Counters::bump(&c.errors, 1),
                            }
                            buf = sent.take_buf()?.into_vec();
                        }
                        Err(e) => {
                            self.lost_buffer(c, e);
                            return None;
                        }
                    }
                }
            }
            (UdpOp::Send, Ok(n)) => Counters::bump(&c.bytes, n as u64),
            // Longer than the buffer: the bytes that fit are not the
            // datagram, so it is not echoed cut short.
            (UdpOp::Recv, Err(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                Counters::bump(&c.truncated, 1)
            }
            // A receive can fail with the ICMP error of an earlier send
            // (ECONNREFUSED from a client that went away): not fatal.
            (_, Err(_)) => Counters::bump(&c.errors, 1),
        }
        buf.clear();
        if buf.capacity() < self.buf_size {
            buf.reserve_exact(self.buf_size);
        }
        Some(buf)
    }

    /// An operation could not be started: one receive fewer is pending.
    fn lost_buffer(&self, c: &Counters, e: Error) {
        if matches!(e, Error::Closed) {
            return;
        }
        Counters::bump(&c.errors, 1);
        let mut f = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            crate::log::line(format_args!("udp-echo: cannot start an operation: {e}"));
            *f = Some(format!("cannot start an operation: {e}"));
        }
    }
}
