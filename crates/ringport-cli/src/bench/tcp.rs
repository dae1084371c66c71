//! `ringport bench tcp`: the ringport TCP echo server against a tokio
//! (multi-thread runtime), a mio and a std thread-per-connection echo server.
//!
//! Every server runs in this process on 127.0.0.1 port 0, one at a time, and
//! is driven by the same load generator ([`crate::load::run_load`]: 64
//! connections with one 64-byte message each in flight, ping-pong, every
//! byte checked). Rounds are interleaved (ringport, tokio, mio, std,
//! ringport, …) and the median of each figure is reported: round trips per
//! second, round-trip latency p50/p99/p99.9, and the CPU time per round trip
//! of the server (the process's CPU time less the client threads').
//!
//! Every server gets the same number of threads (`--threads`) and sets
//! TCP_NODELAY on its connections; the echo loop of each is the plain one
//! its API suggests (receive into a buffer, send it all back).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};

use crate::load::{self, parse_duration, LoadConfig, LoadReport, Proto};
use crate::serve::{self, Echo};

/// How `bench tcp` and `bench udp` run their echo servers.
#[derive(clap::Args)]
pub(super) struct EchoRun {
    /// Seconds each server is measured in each round.
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    seconds: Duration,
    /// Interleaved rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time at the start of each run not counted.
    #[arg(long, default_value = "0.5", value_parser = parse_duration)]
    warmup: Duration,
    /// Connections (UDP: sockets), each with one message in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Bytes per message (UDP: at most 65,507).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Threads of every server [default: CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// ringport: packets a worker takes per get (get_many).
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

impl EchoRun {
    /// The plan for `bench <name>`: `proto` load, a reply awaited at most
    /// `timeout`.
    pub(super) fn plan(&self, name: &str, proto: Proto, timeout: Duration) -> Plan {
        Plan {
            title: format!(
                "ringport bench {name}: echo, {} CPUs, backend {}",
                ringport::cpu_count(),
                super::backend_name()
            ),
            load: LoadConfig {
                proto,
                addr: localhost(),
                connections: self.connections,
                size: self.size,
                duration: Some(self.seconds),
                count: None,
                threads: self.client_threads.min(self.connections.max(1)),
                timeout,
                warmup: self.warmup,
                progress: false,
            },
            rounds: self.rounds,
            threads: self.threads.unwrap_or_else(ringport::cpu_count),
            batch: self.batch,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: EchoRun,
    /// Servers to run, comma-separated: ringport, tokio, mio, std, and the
    /// variants ringport-noskip (no skip-on-success) and ringport-epoll.
    #[arg(long, value_delimiter = ',', default_value = "ringport,tokio,mio,std")]
    peers: Vec<String>,
}

/// A server under test, running.
pub(super) trait Server {
    fn addr(&self) -> SocketAddr;
    /// Stops it and releases everything; an error if it failed meanwhile.
    fn stop(self: Box<Self>) -> Result<(), String>;
}

/// Starts a server with `threads` threads on 127.0.0.1 port 0.
pub(super) type Start = fn(threads: usize, batch: usize) -> Result<Box<dyn Server>, String>;

const PEERS: [(&str, Start); 6] = [
    ("ringport", |t, b| tcp_with(t, b, |_| {})),
    // The same server with every send's packet going through the port.
    ("ringport-noskip", |t, b| tcp_with(t, b, |o| o.skip = false)),
    ("ringport-epoll", |t, b| {
        tcp_with(t, b, |o| o.backend = ringport::Backend::Epoll)
    }),
    ("tokio", start_tokio),
    ("mio", start_mio),
    ("std", start_std),
];

/// How a benchmark drives each server.
pub(super) struct Plan {
    pub title: String,
    pub load: LoadConfig,
    pub rounds: usize,
    pub threads: usize,
    pub batch: usize,
}

/// One run of one server.
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    server_cpu_us: f64,
    lost: u64,
}

impl Run {
    fn of(r: &LoadReport) -> Run {
        let msgs = r.messages.max(1) as f64;
        Run {
            rate: r.rate(),
            p50: r.quantile_us(0.5),
            p99: r.quantile_us(0.99),
            p999: r.quantile_us(0.999),
            server_cpu_us: r.process_cpu.saturating_sub(r.client_cpu).as_secs_f64() * 1e6 / msgs,
            lost: r.lost,
        }
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Picks the named peers out of `all`, in `all`'s order.
pub(super) fn select(
    names: &[String],
    all: &[(&'static str, Start)],
) -> Result<Vec<(&'static str, Start)>, String> {
    for n in names {
        if !all.iter().any(|(a, _)| a == n) {
            let known: Vec<&str> = all.iter().map(|(a, _)| *a).collect();
            return Err(format!(
                "--peers: unknown server {n:?} (known: {})",
                known.join(", ")
            ));
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|(a, _)| names.iter().any(|n| n == a))
        .copied()
        .collect();
    if chosen.is_empty() {
        return Err("--peers: name at least one server".into());
    }
    Ok(chosen)
}

/// Runs every peer `plan.rounds` times, interleaved, and prints the medians
/// and ringport's ratio to each.
pub(super) fn compare(plan: &Plan, peers: &[(&'static str, Start)]) -> Result<(), String> {
    if plan.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if plan.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if plan.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    plan.load.validate()?;
    println!("{}", plan.title);
    println!(
        "{} connections × 1 message of {} bytes in flight, {} server threads, {} client thread(s), \
         {:?} per run (+{:?} warm-up), {} rounds interleaved, median reported",
        plan.load.connections,
        plan.load.size,
        plan.threads,
        plan.load.threads,
        plan.load.duration.unwrap_or_default(),
        plan.load.warmup,
        plan.rounds
    );
    let mut runs: HashMap<&str, Vec<Run>> = HashMap::new();
    for round in 0..plan.rounds {
        for &(name, start) in peers {
            let server = start(plan.threads, plan.batch).map_err(|e| format!("{name}: {e}"))?;
            let mut cfg = plan.load.clone();
            cfg.addr = server.addr();
            let result = load::run_load(&cfg);
            let stopped = server.stop();
            let report = result.map_err(|e| format!("{name}: {e}"))?;
            stopped.map_err(|e| format!("{name}: {e}"))?;
            let run = Run::of(&report);
            eprintln!(
                "  round {}: {name:<16} {:>10.0} msg/s  p50 {:>7.1} µs  server CPU {:>5.2} µs/msg",
                round + 1,
                run.rate,
                run.p50,
                run.server_cpu_us
            );
            runs.entry(name).or_default().push(run);
        }
    }
    let med = |name: &str, f: fn(&Run) -> f64| -> f64 {
        median(runs.get(name).map_or(vec![], |v| v.iter().map(f).collect()))
    };
    let udp = plan.load.proto == Proto::Udp;
    println!();
    println!(
        "{:<16} {:>12} {:>9} {:>9} {:>9} {:>14}{}",
        "server",
        "msgs/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "server µs/msg",
        if udp { "       lost" } else { "" }
    );
    for &(name, _) in peers {
        let lost: u64 = runs.get(name).map_or(0, |v| v.iter().map(|r| r.lost).sum());
        println!(
            "{:<16} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>14.2}{}",
            name,
            med(name, |r| r.rate),
            med(name, |r| r.p50),
            med(name, |r| r.p99),
            med(name, |r| r.p999),
            med(name, |r| r.server_cpu_us),
            if udp {
                format!(" {lost:>10}")
            } else {
                String::new()
            }
        );
    }
    if peers.iter().any(|(n, _)| *n == "ringport") {
        println!();
        let ours = med("ringport", |r| r.rate);
        let our_cpu = med("ringport", |r| r.server_cpu_us);
        let our_p50 = med("ringport", |r| r.p50);
        for &(name, _) in peers.iter().filter(|(n, _)| *n != "ringport") {
            println!(
                "ringport / {name:<16}: msgs/s {:.2}×   p50 latency {:.2}×   server CPU per msg {:.2}×",
                ours / med(name, |r| r.rate),
                our_p50 / med(name, |r| r.p50),
                our_cpu / med(name, |r| r.server_cpu_us),
            );
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<(), String> {
    let peers = select(&args.peers, &PEERS)?;
    compare(
        &args.run.plan("tcp", Proto::Tcp, Duration::from_secs(5)),
        &peers,
    )
}

pub(super) fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

const BUF: usize = 16 << 10;

// ---------------------------------------------------------------- ringport

/// Any ringport echo server as a [`Server`]: stopping it fails if it did.
pub(super) struct Ringport<S>(pub(super) S);

impl<S: Echo> Server for Ringport<S> {
    fn addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
    fn stop(self: Box<Self>) -> Result<(), String> {
        match self.0.stop().fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Starts a completion-port echo server of `kind` with `threads` workers
/// (concurrency as many), `batch` packets per get, and what `tweak` changes.
pub(super) fn ringport_with<S: Echo>(
    kind: serve::Kind,
    start: fn(SocketAddr, &serve::Options) -> Result<S, String>,
    threads: usize,
    batch: usize,
    tweak: impl FnOnce(&mut serve::Options),
) -> Result<Box<dyn Server>, String> {
    let mut opts = serve::Options::new(kind);
    opts.threads = threads;
    opts.concurrency = threads;
    opts.batch = batch;
    tweak(&mut opts);
    Ok(Box::new(Ringport(start(localhost(), &opts)?)))
}

/// The TCP echo server, tweaked.
fn tcp_with(
    threads: usize,
    batch: usize,
    tweak: impl FnOnce(&mut serve::Options),
) -> Result<Box<dyn Server>, String> {
    ringport_with(
        serve::Kind::TcpEcho,
        serve::TcpEcho::start,
        threads,
        batch,
        tweak,
    )
}

// ---------------------------------------------------------------- tokio

/// A tokio multi-thread runtime with the server's tasks on it; dropping the
/// runtime (shutdown) ends them.
pub(super) struct Tokio {
    pub rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
}

impl Server for Tokio {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        Ok(())
    }
}

pub(super) fn tokio_runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tokio-echo")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))
}

fn start_tokio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio_runtime(threads)?;
    let std_listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?
    };
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; BUF];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(Box::new(Tokio { rt: Some(rt), addr }))
}

// ---------------------------------------------------------------- mio

/// `threads` epoll loops; the first also accepts, and hands connections out
/// round-robin (through a channel and a waker).
struct Mio {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server for Mio {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                return Err("a mio thread panicked".into());
            }
        }
        Ok(())
    }
}

const WAKER: Token = Token(usize::MAX);
const ACCEPT: Token = Token(usize::MAX - 1);

struct MioConn {
    stream: mio::net::TcpStream,
    /// Bytes received but not yet sent back (after a short send).
    out: Vec<u8>,
}

fn start_mio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let std_listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let mut listener = Some(mio::net::TcpListener::from_std(std_listener));
    let stop = Arc::new(AtomicBool::new(false));
    let mut polls = Vec::new();
    let mut wakers = Vec::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..threads {
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
        let (tx, rx) = mpsc::channel::<mio::net::TcpStream>();
        polls.push(poll);
        wakers.push(waker);
        senders.push(tx);
        receivers.push(rx);
    }
    let mut server = Mio {
        addr,
        stop: stop.clone(),
        wakers: wakers.clone(),
        threads: Vec::new(),
    };
    for (i, (poll, rx)) in polls.into_iter().zip(receivers).enumerate() {
        let stop = stop.clone();
        let listener = if i == 0 { listener.take() } else { None };
        let peers: Vec<_> = senders
            .iter()
            .cloned()
            .zip(wakers.iter().cloned())
            .collect();
        let spawned = thread::Builder::new()
            .name(format!("mio-echo-{i}"))
            .spawn(move || mio_loop(poll, listener, rx, peers, &stop));
        match spawned {
            Ok(h) => server.threads.push(h),
            Err(e) => {
                let _ = Box::new(server).stop();
                return Err(format!("starting a mio thread: {e}"));
            }
        }
    }
    Ok(Box::new(server))
}

fn mio_loop(
    mut poll: Poll,
    mut listener: Option<mio::net::TcpListener>,
    incoming: mpsc::Receiver<mio::net::TcpStream>,
    peers: Vec<(mpsc::Sender<mio::net::TcpStream>, Arc<Waker>)>,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<MioConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut next = 0usize;
    if let Some(l) = listener.as_mut() {
        if poll
            .registry()
            .register(l, ACCEPT, Interest::READABLE)
            .is_err()
        {
            return;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {
                    while let Ok(s) = incoming.try_recv() {
                        mio_add(&poll, s, &mut conns, &mut free);
                    }
                }
                ACCEPT => {
                    let Some(l) = listener.as_ref() else { continue };
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nodelay(true);
                        let target = next % peers.len();
                        next += 1;
                        if target == 0 {
                            mio_add(&poll, s, &mut conns, &mut free);
                        } else {
                            let (tx, waker) = &peers[target];
                            if tx.send(s).is_ok() {
                                let _ = waker.wake();
                            }
                        }
                    }
                }
                Token(i) => {
                    let Some(Some(c)) = conns.get_mut(i) else {
                        continue;
                    };
                    if !mio_echo(c, &mut buf) {
                        let _ = poll.registry().deregister(&mut c.stream);
                        conns[i] = None;
                        free.push(i);
                    }
                }
            }
        }
    }
}

fn mio_add(
    poll: &Poll,
    mut stream: mio::net::TcpStream,
    conns: &mut Vec<Option<MioConn>>,
    free: &mut Vec<usize>,
) {
    let i = free.pop().unwrap_or_else(|| {
        conns.push(None);
        conns.len() - 1
    });
    let interest = Interest::READABLE | Interest::WRITABLE;
    if poll
        .registry()
        .register(&mut stream, Token(i), interest)
        .is_ok()
    {
        conns[i] = Some(MioConn {
            stream,
            out: Vec::new(),
        });
    } else {
        free.push(i);
    }
}

/// Echoes what can be echoed without blocking; false when the connection
/// is done.
fn mio_echo(c: &mut MioConn, buf: &mut [u8]) -> bool {
    loop {
        // Finish a short send first, and read nothing more until it is out.
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => return false,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let n = match c.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        match c.stream.write(&buf[..n]) {
            Ok(m) if m == n => {}
            Ok(m) => c.out.extend_from_slice(&buf[m..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.out.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------- std

/// Each connection (a clone, to shut it down) and its thread.
type StdConns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// One blocking thread per connection, and an accepting thread.
struct Std {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    conns: StdConns,
}

impl Server for Std {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(PoisonError::into_inner));
        for (s, h) in conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = h.join();
        }
        Ok(())
    }
}

fn start_std(_threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let conns: StdConns = Arc::default();
    let (s, c) = (stop.clone(), conns.clone());
    let acceptor = thread::Builder::new()
        .name("std-echo-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let h = thread::Builder::new()
                    .name("std-echo".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let mut buf = vec![0u8; BUF];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                if let Ok(h) = h {
                    c.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((clone, h));
                }
            }
        })
        .map_err(|e| format!("starting the acceptor: {e}"))?;
    Ok(Box::new(Std {
        addr,
        stop,
        acceptor: Some(acceptor),
        conns,
    }))
}
