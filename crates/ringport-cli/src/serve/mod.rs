//! `ringport serve`: the servers, one file each, and what starts them.
//!
//! - [`tcp_echo`] and [`udp_echo`]: the classic IOCP echo servers, `--threads`
//!   workers on one completion port ([`server`] holds what they share);
//! - [`rio_tcp_echo`] (`tcp-echo --mode rio-port`) and [`rio_udp_echo`]
//!   (`udp-echo --mode rio-…`): the same servers on Registered I/O;
//! - [`sink`] (`udp-sink`): the RIO UDP servers that only count datagrams.
//!
//! Every count an option sets has a bound, checked before anything starts,
//! so that a typo ends in a one-line error instead of a server that grows
//! until the OOM killer ends it. The servers print the address they listen
//! on (so `--addr 127.0.0.1:0` works) and run until Ctrl-C (SIGINT or
//! SIGTERM) or `--duration`.

pub mod rio_tcp_echo;
pub mod rio_udp_echo;
pub mod server;
pub mod shards;
pub mod sink;
pub mod sockperf;
pub mod tcp_echo;
pub mod udp_echo;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringport::Backend;

use crate::args::{bounded, parse_duration, resolve};
pub use server::{Echo, Options, Summary, MAX_THREADS};
pub use tcp_echo::TcpEcho;
pub use udp_echo::UdpEcho;

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
    mode: Option<sink::Mode>,
    /// udp-sink: bytes of the datagrams counted (any other size ends the run).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Address to listen on; port 0 picks a free one (printed).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Worker threads on the port, 1 to 1,024 [default: 2 × CPUs; udp-sink:
    /// CPUs]; the RIO servers run one thread, but udp-sink rio-port-mt.
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
    /// tcp-echo and udp-echo: what to answer. echo sends every byte back;
    /// sockperf answers sockperf's messages that ask for a reply, as
    /// `sockperf server` does, so that `sockperf ping-pong` and `sockperf
    /// under-load` can drive the server.
    #[arg(long, value_enum, default_value = "echo")]
    protocol: sockperf::Protocol,
    /// udp-sink: count the system calls of the server threads (a
    /// per-thread tracepoint counter, which adds its own cost to every
    /// system call they make).
    #[arg(long)]
    count_syscalls: bool,
    /// Serve on N sockets bound to --addr with SO_REUSEPORT, each with its
    /// own port and workers (or RIO queues); auto: one per CPU. --threads
    /// and --concurrency are then per shard (see serve/shards.rs).
    #[arg(long, value_parser = shards::parse_shards)]
    shards: Option<usize>,
    /// With --shards: steer each packet to the shard of the CPU that
    /// received it (SO_ATTACH_REUSEPORT_CBPF) instead of the 4-tuple hash.
    #[arg(long, requires = "shards")]
    steer_by_cpu: bool,
    /// With --shards: pin shard i's threads to CPU i % CPUs.
    #[arg(long, requires = "shards")]
    pin_shards: bool,
    /// tcp-echo and udp-echo on the completion port: draw what the workers
    /// did in --timeline-window as an SVG when the server stops, as `sum
    /// --timeline` does: a lane per worker with a mark for each packet it
    /// took, the active threads against the limit, which packets went to a
    /// thread the port woke. At most 100,000 packets are recorded.
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<std::path::PathBuf>,
    /// The part of the run --timeline records: START..END after the start,
    /// in seconds or with units (0.5..1.5, 200ms..300ms).
    #[arg(long, value_name = "START..END", default_value = "0..1",
          value_parser = crate::timeline::parse_window, requires = "timeline")]
    timeline_window: std::ops::Range<Duration>,
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
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be more than 0".into());
    }
    if args.count_syscalls && args.kind != Kind::UdpSink {
        return Err("--count-syscalls applies to udp-sink only".into());
    }
    if args.kind == Kind::UdpSink && args.protocol != sockperf::Protocol::Echo {
        return Err("--protocol applies to tcp-echo and udp-echo only".into());
    }
    if args.timeline.is_some()
        && (args.shards.is_some() || args.mode.is_some() || args.kind == Kind::UdpSink)
    {
        return Err(
            "--timeline draws the workers of one completion port: tcp-echo or udp-echo without \
             --mode or --shards"
                .into(),
        );
    }
    if let Some(path) = &args.timeline {
        // Found out now, not after the whole run.
        std::fs::File::create(path).map_err(|e| format!("--timeline {}: {e}", path.display()))?;
    }
    if let Some(n) = args.shards {
        catch_stop_signals();
        return shards::run(args, addr, n, &STOP);
    }
    if args.kind == Kind::UdpSink {
        let mode = args.mode.unwrap_or(sink::Mode::RioPolled);
        let mut opts = sink::SinkOptions::new(mode);
        opts.size = args.size;
        opts.threads = args.threads.unwrap_or(opts.threads);
        opts.batch = args.batch.unwrap_or(opts.batch);
        opts.pending = args.pending.unwrap_or(opts.pending);
        opts.backend = args.backend;
        opts.count_syscalls = args.count_syscalls;
        opts.validate()?;
        catch_stop_signals();
        return sink::serve(addr, &opts, args.duration, &|| STOP.load(Ordering::Relaxed));
    }
    if args.kind == Kind::TcpEcho && args.mode.is_some() {
        if args.mode != Some(sink::Mode::RioPort) {
            return Err("tcp-echo takes --mode rio-port only (or no --mode)".into());
        }
        // It runs one thread whatever --threads says, but a count that
        // would be refused elsewhere is refused here too.
        if let Some(t) = args.threads {
            bounded("threads", t, MAX_THREADS)?;
        }
        let mut opts = rio_tcp_echo::EchoOptions::new();
        opts.pending = args.pending.unwrap_or(opts.pending);
        opts.buf_size = args.buf_size.unwrap_or(opts.buf_size);
        opts.batch = args.batch.unwrap_or(opts.batch);
        opts.backend = args.backend;
        opts.protocol = args.protocol;
        catch_stop_signals();
        return rio_tcp_echo::serve(addr, &opts, args.duration, &|| STOP.load(Ordering::Relaxed));
    }
    let rio_udp = match (args.kind, args.mode) {
        (Kind::UdpEcho, Some(m)) => Some(
            rio_udp_echo::EchoMode::from_sink(m)
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
    opts.protocol = args.protocol;
    opts.timeline = args.timeline.as_ref().map(|_| args.timeline_window.clone());
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
            let mode = rio_udp.unwrap_or(rio_udp_echo::EchoMode::Polled);
            let size = opts.buf_size.min(crate::args::MAX_UDP);
            let s = rio_udp_echo::RioUdpEcho::start_with(
                addr,
                mode,
                opts.pending,
                size,
                opts.backend,
                opts.protocol,
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
        Kind::UdpSink => return Err("udp-sink runs on its own (see serve/sink)".into()),
    };
    println!(
        "backend {backend}, protocol {:?}, {} worker threads, concurrency {}, batch {}, \
         skip-on-success {}",
        opts.protocol,
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
    if let (Some(path), Some(rec)) = (&args.timeline, &s.timeline) {
        crate::timeline::draw(rec, path)?;
        let f = rec.findings();
        let taken: usize = rec.lanes.iter().map(|l| l.takes.len()).sum();
        let missed: u64 = rec.lanes.iter().map(|l| l.missed).sum();
        println!(
            "timeline: {} ({taken} packets in {:.3}..{:.3} s{}, {} taken by a thread that waited, at \
             most {} active)",
            path.display(),
            args.timeline_window.start.as_secs_f64(),
            args.timeline_window.end.as_secs_f64(),
            match missed {
                0 => String::new(),
                n => format!(" and {n} more not recorded"),
            },
            f.woken,
            f.max_active
        );
    }
    if let Some(e) = s.fatal {
        return Err(e);
    }
    Ok(())
}
