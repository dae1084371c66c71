//! `serve udp-echo|udp-sink|tcp-echo --shards N|auto`: N copies of a server,
//! one per socket of a `SO_REUSEPORT` group on one address
//! ([`ringport::reuseport`]), each with its own completion port and workers
//! (or, in the RIO modes, its own request and completion queues). The
//! kernel spreads flows over the sockets by the hash of their 4-tuple (or,
//! with `--steer-by-cpu`, by the CPU that received the packet), so shards
//! share nothing on the hot path. `auto` is one shard per CPU.
//!
//! `--threads` and `--concurrency` are per shard; by default the machine's
//! share: 2 × CPUs / N workers and CPUs / N active (at least 1).
//! `--pin-shards` pins shard `i`'s threads to CPU `i % CPUs` (a thread's
//! affinity is inherited by the threads it starts, so each shard is started
//! from a thread pinned to its CPU). The report gives each shard's counters,
//! then the total, in the unsharded server's words.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ringport::{cpu_count, reuseport, Backend};

use super::{
    rio_tcp_echo, rio_udp_echo, sink, Args, Echo, Kind, Options, Summary, TcpEcho, UdpEcho,
};
use crate::args::{bind_error, MAX_UDP};

/// The most shards.
pub const MAX_SHARDS: usize = 256;

/// `--shards`: a count, or `auto` (one per CPU).
pub fn parse_shards(s: &str) -> Result<usize, String> {
    let n = if s == "auto" {
        cpu_count()
    } else {
        s.parse::<usize>()
            .map_err(|_| format!("--shards takes a count or auto, not {s:?}"))?
    };
    crate::args::bounded("shards", n, MAX_SHARDS)?;
    Ok(n)
}

/// Each shard's share of `total` (at least 1).
fn share(total: usize, n: usize) -> usize {
    (total / n).max(1)
}

/// Runs `start` on a thread pinned to `cpu` (when given), so that the
/// threads it starts inherit that affinity.
fn started_on<T: Send + 'static>(
    cpu: Option<usize>,
    start: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    thread::spawn(move || {
        if let Some(c) = cpu {
            crate::measure::pin(&[c]);
        }
        start()
    })
    .join()
    .map_err(|_| "starting a shard panicked".to_string())?
}

/// `serve … --shards n`.
pub fn run(
    args: Args,
    addr: SocketAddr,
    n: usize,
    stop: &'static AtomicBool,
) -> Result<(), String> {
    let pin = |i: usize| args.pin_shards.then(|| i % cpu_count());
    if args.kind == Kind::UdpSink {
        return sinks(&args, addr, n, stop, &pin);
    }
    let tcp = args.kind == Kind::TcpEcho;
    let (mut udp_socks, mut tcp_socks) = (Vec::new(), Vec::new());
    let first = if tcp {
        tcp_socks = reuseport::tcp_group(addr, n).map_err(|e| bind_error(addr, e))?;
        steer(&args, &tcp_socks[0], n)?;
        tcp_socks[0].local_addr()
    } else {
        udp_socks = reuseport::udp_group(addr, n).map_err(|e| bind_error(addr, e))?;
        steer(&args, &udp_socks[0], n)?;
        udp_socks[0].local_addr()
    };
    let local = first.map_err(|e| e.to_string())?;
    let mut opts = Options::new(args.kind);
    opts.threads = args.threads.unwrap_or(share(opts.threads, n));
    opts.concurrency = args.concurrency.unwrap_or(share(opts.concurrency, n));
    opts.buf_size = args.buf_size.unwrap_or(opts.buf_size);
    opts.accepts = args.accepts;
    opts.pending = args.pending.unwrap_or(opts.pending);
    opts.batch = args.batch.unwrap_or(opts.batch);
    opts.skip = !args.no_skip;
    opts.backend = args.backend;
    opts.protocol = args.protocol;
    type Stop = Box<dyn FnOnce() -> Summary + Send>;
    let mut shards: Vec<Stop> = Vec::new();
    let (name, what) = match (args.kind, args.mode) {
        (Kind::TcpEcho, None) => {
            opts.validate(Kind::TcpEcho)?;
            for (i, l) in tcp_socks.into_iter().enumerate() {
                let o = opts.clone();
                let s = started_on(pin(i), move || TcpEcho::start_on(l, &o))?;
                shards.push(Box::new(move || s.stop()));
            }
            ("tcp-echo", "completion port")
        }
        (Kind::TcpEcho, Some(sink::Mode::RioPort)) => {
            let mut o = rio_tcp_echo::EchoOptions::new();
            o.pending = args.pending.unwrap_or(o.pending);
            o.buf_size = args.buf_size.unwrap_or(o.buf_size);
            o.batch = args.batch.unwrap_or(o.batch);
            o.backend = args.backend;
            o.protocol = args.protocol;
            o.validate()?;
            for (i, l) in tcp_socks.into_iter().enumerate() {
                let o = o.clone();
                let s = started_on(pin(i), move || rio_tcp_echo::RioTcpEcho::start_on(l, &o))?;
                shards.push(Box::new(move || {
                    let (stats, r) = s.stop();
                    Summary {
                        fatal: r.err(),
                        ..stats.summary()
                    }
                }));
            }
            ("tcp-echo", "Registered I/O, rio-port")
        }
        (Kind::UdpEcho, None) => {
            opts.validate(Kind::UdpEcho)?;
            for (i, sock) in udp_socks.into_iter().enumerate() {
                let o = opts.clone();
                let s = started_on(pin(i), move || UdpEcho::start_on(sock, &o))?;
                shards.push(Box::new(move || s.stop()));
            }
            ("udp-echo", "completion port")
        }
        (Kind::UdpEcho, Some(m)) => {
            let mode = rio_udp_echo::EchoMode::from_sink(m)
                .ok_or("udp-echo takes --mode rio-polled, rio-event or rio-port (or no --mode)")?;
            let size = opts.buf_size.min(MAX_UDP);
            let (pending, backend, protocol) = (opts.pending, opts.backend, opts.protocol);
            for (i, sock) in udp_socks.into_iter().enumerate() {
                let s = started_on(pin(i), move || {
                    rio_udp_echo::RioUdpEcho::start_on(sock, mode, pending, size, backend, protocol)
                })?;
                shards.push(Box::new(move || s.stop()));
            }
            ("udp-echo", "Registered I/O")
        }
        _ => return Err("tcp-echo takes --mode rio-port only (or no --mode)".into()),
    };
    println!("listening on {local} ({name}, {n} shards, {what})");
    println!(
        "per shard: {} worker threads, concurrency {}, batch {}; backend {}{}",
        opts.threads,
        opts.concurrency,
        opts.batch,
        resolved(opts.backend),
        if args.pin_shards { ", pinned" } else { "" }
    );
    wait(args.duration, stop);
    let summaries: Vec<Summary> = shards.into_iter().map(|s| s()).collect();
    let mut total = Summary::default();
    for (i, s) in summaries.iter().enumerate() {
        println!(
            "shard {i}: {} connections, {} messages, {} bytes echoed, {} errors, {} truncated",
            s.connections, s.messages, s.bytes, s.errors, s.truncated
        );
        total.connections += s.connections;
        total.messages += s.messages;
        total.bytes += s.bytes;
        total.errors += s.errors;
        total.truncated += s.truncated;
        total.fatal = total.fatal.take().or_else(|| s.fatal.clone());
    }
    println!(
        "{name} stopped: {} connections, {} messages, {} bytes echoed, {} errors ({n} shards)",
        total.connections, total.messages, total.bytes, total.errors
    );
    total.fatal.map_or(Ok(()), Err)
}

/// What `Backend::Auto` stands for here.
fn resolved(b: Backend) -> String {
    match ringport::CompletionPort::<()>::builder().backend(b).build() {
        Ok(p) => p.backend().to_string(),
        Err(_) => b.to_string(),
    }
}

fn steer(args: &Args, sock: &impl std::os::fd::AsRawFd, n: usize) -> Result<(), String> {
    if args.steer_by_cpu {
        reuseport::attach_cpu_steering(sock, n)
            .map_err(|e| format!("--steer-by-cpu (SO_ATTACH_REUSEPORT_CBPF): {e}"))?;
    }
    Ok(())
}

/// Waits for `duration` or the stop signal.
fn wait(duration: Option<Duration>, stop: &AtomicBool) {
    match duration {
        Some(d) => println!("stopping after {d:?} or on Ctrl-C"),
        None => println!("stopping on Ctrl-C"),
    }
    let deadline = duration.map(|d| Instant::now() + d);
    while deadline.is_none_or(|d| Instant::now() < d) && !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(20));
    }
}

/// How long the other shards of a sink go on once one has seen the end
/// marker (a shard no flow hashed to never sees one).
const GRACE: Duration = Duration::from_millis(300);

/// `serve udp-sink --shards n`: a sink per socket; the run ends for all
/// once one has seen the end marker and [`GRACE`] has passed.
fn sinks(
    args: &Args,
    addr: SocketAddr,
    n: usize,
    stop: &'static AtomicBool,
    pin: &dyn Fn(usize) -> Option<usize>,
) -> Result<(), String> {
    let mode = args.mode.unwrap_or(sink::Mode::RioPolled);
    let mut opts = sink::SinkOptions::new(mode);
    opts.size = args.size;
    opts.threads = args.threads.unwrap_or(share(opts.threads, n));
    opts.batch = args.batch.unwrap_or(opts.batch);
    opts.pending = args.pending.unwrap_or(opts.pending);
    opts.backend = args.backend;
    opts.count_syscalls = args.count_syscalls;
    opts.validate()?;
    let group = reuseport::udp_group(addr, n).map_err(|e| bind_error(addr, e))?;
    steer(args, &group[0], n)?;
    let local = group[0].local_addr().map_err(|e| e.to_string())?;
    let mut sinks = Vec::new();
    for (i, sock) in group.into_iter().enumerate() {
        set_rcvbuf(&sock, opts.rcvbuf);
        let o = opts.clone();
        sinks.push(started_on(pin(i), move || sink::Sink::start_on(sock, &o))?);
    }
    println!(
        "listening on {local} (udp-sink, mode {}, {n} shards)",
        mode.name()
    );
    println!(
        "per shard: {} thread(s), size {}, pending {}, batch {}; backend {}",
        opts.thread_count(),
        opts.size,
        opts.pending,
        opts.batch,
        resolved(opts.backend)
    );
    let deadline = args.duration.map(|d| Instant::now() + d);
    let all_stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let waiters: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let (tx, all_stop) = (tx.clone(), all_stop.clone());
            thread::spawn(move || {
                let r = s.wait(deadline, &|| {
                    all_stop.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed)
                });
                let _ = tx.send(i);
                r
            })
        })
        .collect();
    drop(tx);
    // The first shard to end starts the grace period of the others.
    if rx.recv().is_ok() {
        let until = Instant::now() + GRACE;
        while Instant::now() < until {
            if rx.recv_timeout(until - Instant::now()).is_err() {
                break;
            }
        }
    }
    all_stop.store(true, Ordering::Relaxed);
    let reports: Vec<sink::SinkReport> = waiters
        .into_iter()
        .map(|w| {
            w.join()
                .map_err(|_| "a shard's waiter panicked".to_string())
        })
        .collect::<Result<_, _>>()?;
    let (mut datagrams, mut cpu, mut sent, mut fatal) = (0, Duration::ZERO, None, None);
    for (i, r) in reports.iter().enumerate() {
        println!(
            "shard {i}: {} datagrams, {:.0} datagrams/s, cpu {:.3} µs per datagram, {} errors, {} truncated{}",
            r.datagrams,
            r.rate(),
            r.cpu_us_per_datagram(),
            r.errors,
            r.truncated,
            if r.by_marker { ", end marker" } else { "" }
        );
        datagrams += r.datagrams;
        cpu += r.cpu();
        sent = sent.max(r.sent);
        fatal = fatal.or_else(|| r.fatal.clone());
    }
    let lost = match sent {
        Some(s) => format!(
            "; sender reported {s} sent: lost {}",
            s.saturating_sub(datagrams)
        ),
        None => String::new(),
    };
    println!(
        "udp-sink {} stopped: {datagrams} datagrams in all ({n} shards), cpu {:.3} µs per datagram{lost}",
        mode.name(),
        cpu.as_secs_f64() * 1e6 / datagrams.max(1) as f64
    );
    fatal.map_or(Ok(()), Err)
}

fn set_rcvbuf(sock: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
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
}
