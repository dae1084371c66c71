//! `ringport bench rio`: every `serve udp-sink` mode against a tokio, a mio
//! and a plain `recvmmsg` UDP receiver, all fed by the same GSO generator.
//!
//! Each server runs in this process on 127.0.0.1 port 0, one at a time,
//! rounds interleaved (A B C … A B C …), medians reported. With two CPUs or
//! more the server's threads are pinned to CPU 1 and the generator
//! ([`crate::blast`], UDP GSO, as fast as it can for `--seconds`, then the
//! end marker carrying the count it sent) to CPU 0, so that they do not
//! take turns on one core.
//!
//! Per server: datagrams/s received (from its first datagram to the end
//! marker), the generator's rate, the loss (sent − received), the server
//! threads' CPU time per datagram received (`CLOCK_THREAD_CPUTIME_ID`),
//! and, with `--count-syscalls`, the system calls per datagram those threads
//! entered, counted by the kernel's `raw_syscalls:sys_enter` tracepoint (see
//! [`crate::serve::sink`]; "–" where not counted). Then each server's ratio to the
//! traditional `port` mode and to tokio.
//!
//! The peers only count: tokio (a current-thread runtime on one thread,
//! `recv` per datagram), mio (one epoll thread draining the socket with
//! `recv` on each wake) and `recvmmsg` (one thread, batches of 64 with
//! `MSG_WAITFORONE`, the plain C receiver of MEASURING.md). All sockets get
//! the same 4 MiB receive buffer.
//!
//! `--pin` runs them as MEASURING.md compares servers: one server thread
//! (unless `--threads`), the harness pinned to the server's CPU while it
//! starts a server so that every thread the server or the library creates
//! inherits that CPU (checked half-way through each run), and a second CPU
//! figure beside the server threads' own: the CPU time of every thread of
//! the process but the sender's and the harness's, from the server's start
//! to its stop, which also counts the library's helper threads (the RIO
//! epoll engine's, io_uring's workers) and the time around the datagrams.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::args::parse_duration;
use crate::blast::{self, BlastConfig, BlastReport};
use crate::measure::{self, cpu_time, gettid, median, Scope, SyscallCounter};
use crate::report::Report;
use crate::serve::sink::{self, Meter, Mode, Sink, SinkOptions, SinkReport, SinkRun};

mod report;
use report::report;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds the generator sends to each server in each round.
    #[arg(long, default_value = "2", value_parser = parse_duration)]
    seconds: Duration,
    /// Interleaved rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bytes per datagram.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Threads of the multi-threaded modes (port, rio-port-mt) [default: 2;
    /// 1 with --pin].
    #[arg(long)]
    threads: Option<usize>,
    /// Receives kept pending by the ringport modes.
    #[arg(long, default_value_t = 512)]
    pending: usize,
    /// Most results per dequeue, get or notification.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Count the server threads' system calls (a per-thread tracepoint
    /// counter, which adds its own cost to each of them and so to the CPU
    /// figures).
    #[arg(long)]
    count_syscalls: bool,
    /// Servers to run, comma-separated: the modes (port, rio-polled,
    /// rio-event, rio-event-polled, rio-port, rio-port-mt) and the peers
    /// (tokio, mio, recvmmsg).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "port,rio-polled,rio-event,rio-event-polled,rio-port,rio-port-mt,tokio,mio,recvmmsg"
    )]
    servers: Vec<String>,
    /// One server thread unless --threads, every server thread checked to be
    /// on the server's CPU, and the CPU of all the server's threads reported.
    #[arg(long)]
    pin: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Mode(Mode),
    Tokio,
    Mio,
    Recvmmsg,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Mode(m) => m.name(),
            Which::Tokio => "tokio",
            Which::Mio => "mio",
            Which::Recvmmsg => "recvmmsg",
        }
    }

    fn all() -> Vec<Which> {
        let mut v: Vec<Which> = Mode::ALL.iter().map(|&m| Which::Mode(m)).collect();
        v.extend([Which::Tokio, Which::Mio, Which::Recvmmsg]);
        v
    }
}

/// One measurement of one server.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    sent_rate: f64,
    loss: f64,
    cpu_us: f64,
    /// With --pin: every thread but the sender's and the harness's.
    all_cpu_us: Option<f64>,
    syscalls: Option<f64>,
}

pub fn run(mut args: Args, quick: bool, out: &mut Report) -> Result<(), String> {
    if quick {
        args.seconds = Duration::from_millis(200);
        args.rounds = 1;
    }
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if args.seconds.is_zero() {
        return Err("--seconds must be more than 0".into());
    }
    let mut servers = Vec::new();
    for n in &args.servers {
        match Which::all().into_iter().find(|w| w.name() == n) {
            Some(w) if !servers.contains(&w) => servers.push(w),
            Some(_) => {}
            None => {
                let known: Vec<&str> = Which::all().iter().map(|w| w.name()).collect();
                return Err(format!(
                    "--servers: unknown server {n:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
    }
    if servers.is_empty() {
        return Err("--servers: name at least one server".into());
    }
    let mut base = SinkOptions::new(Mode::Port);
    base.size = args.size;
    let threads = args.threads.unwrap_or(if args.pin { 1 } else { 2 });
    base.threads = threads;
    base.pending = args.pending;
    base.batch = args.batch;
    base.validate()?;
    let cpus = ringport::cpu_count();
    let allowed = measure::allowed_cpus();
    let (server_cpu, sender_cpu) = match allowed[..] {
        [sender, server, ..] => (Some(server), Some(sender)),
        _ if args.pin => return Err("--pin needs two CPUs this process may run on".into()),
        _ => (None, None),
    };
    base.pin = server_cpu;
    base.count_syscalls = args.count_syscalls;
    let counted = args.count_syscalls && SyscallCounter::open().is_some();
    out.say(format!(
        "ringport bench rio: {} CPUs, {}-byte datagrams, GSO sender for {:?} per run, {} rounds \
         interleaved, median reported",
        cpus, args.size, args.seconds, args.rounds
    ));
    out.say(match server_cpu {
        Some(c) => format!(
            "server threads pinned to CPU {c}, the sender to CPU {}{}",
            sender_cpu.unwrap_or(0),
            if args.pin {
                "; every thread the server starts checked to be on it"
            } else {
                ""
            }
        ),
        None => "one CPU: nothing pinned".to_string(),
    });
    out.say(format!(
        "modes: {} thread(s) for port and rio-port-mt, {} receives pending, batch {}; system \
         calls {}",
        threads,
        args.pending,
        args.batch,
        if counted {
            "counted by the raw_syscalls:sys_enter tracepoint on the server threads"
        } else if args.count_syscalls {
            "not counted (mount tracefs at /sys/kernel/tracing; root or perf_event_paranoid <= 1)"
        } else {
            "not counted (--count-syscalls counts them)"
        }
    ));
    // How long a server may take past the sender's end to see its marker
    // (every copy of it can be lost to a full buffer); a smoke test of nine
    // servers must not wait long for each.
    let grace = Duration::from_secs(if quick { 1 } else { 5 });
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers.len()];
    for round in 0..args.rounds {
        for (i, &w) in servers.iter().enumerate() {
            let s = measure(w, &base, args.seconds, grace, sender_cpu, args.pin)
                .map_err(|e| format!("{} (round {}): {e}", w.name(), round + 1))?;
            eprintln!(
                "round {} {}: {:.0} datagrams/s received, {:.0} sent/s, loss {:.1} %, {:.3} µs \
                 CPU/datagram{}",
                round + 1,
                w.name(),
                s.rate,
                s.sent_rate,
                s.loss,
                s.cpu_us,
                s.all_cpu_us
                    .map(|c| format!(" ({c:.3} all server threads)"))
                    .unwrap_or_default()
            );
            samples[i].push(s);
            thread::sleep(Duration::from_millis(100));
        }
    }
    if args.pin {
        measure::pin(&allowed);
    }
    report(&servers, &samples, args.pin, out);
    Ok(())
}

fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

/// Runs one server against one blast and measures it.
fn measure(
    w: Which,
    base: &SinkOptions,
    seconds: Duration,
    grace: Duration,
    sender_cpu: Option<usize>,
    pin: bool,
) -> Result<Sample, String> {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let pins = match (base.pin, sender_cpu) {
        (Some(server), Some(sender)) if pin => Some((server, sender)),
        _ => None,
    };
    if let Some((server, _)) = pins {
        measure::pin(&[server]);
    }
    let server = match w {
        Which::Mode(m) => {
            let mut o = base.clone();
            o.mode = m;
            Sink::start(local, &o).map(Server::Sink)
        }
        peer => start_peer(peer, local, base),
    };
    if let Some((_, sender)) = pins {
        measure::pin(&[sender]);
    }
    let server = server?;
    let (process_from, harness_from) = (cpu_time(Scope::Process), cpu_time(Scope::Thread));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let cfg = BlastConfig {
        addr: server.addr(),
        size: base.size,
        duration: Some(seconds),
        count: None,
        gso: true,
        pin: sender_cpu,
    };
    let sender = thread::Builder::new()
        .name("udp-blast".into())
        .spawn(move || {
            let _ = tid_tx.send(gettid());
            blast::blast(&cfg)
        })
        .map_err(|e| format!("starting the sender: {e}"))?;
    let deadline = Instant::now() + seconds + grace;
    let mut strays = Ok(());
    if let Some((server_cpu, _)) = pins {
        thread::sleep(seconds / 2);
        let sender = tid_rx.recv().unwrap_or(0);
        let others: Vec<i32> = measure::threads()
            .into_iter()
            .filter(|&t| t != sender && t != gettid())
            .collect();
        strays = measure::check_pinned(&others, server_cpu);
    }
    let r = server.wait(deadline);
    let all_cpu = cpu_time(Scope::Process)
        .saturating_sub(process_from)
        .saturating_sub(cpu_time(Scope::Thread).saturating_sub(harness_from));
    let b: BlastReport = sender
        .join()
        .map_err(|_| "the sender panicked".to_string())??;
    if let Some(e) = r.fatal {
        return Err(e);
    }
    if r.datagrams == 0 {
        return Err("received no datagram".into());
    }
    strays?;
    let all_cpu = all_cpu.saturating_sub(b.cpu);
    let sent = r.sent.unwrap_or(b.sent).max(1);
    Ok(Sample {
        rate: r.rate(),
        sent_rate: b.rate(),
        loss: 100.0 * sent.saturating_sub(r.datagrams) as f64 / sent as f64,
        cpu_us: r.cpu_us_per_datagram(),
        all_cpu_us: pins.map(|_| all_cpu.as_secs_f64() * 1e6 / r.datagrams as f64),
        syscalls: r.syscalls_per_datagram(),
    })
}

enum Server {
    Sink(Sink),
    Peer {
        name: &'static str,
        run: Arc<SinkRun>,
        thread: JoinHandle<()>,
        addr: SocketAddr,
    },
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Sink(s) => s.local_addr(),
            Server::Peer { addr, .. } => *addr,
        }
    }

    fn wait(self, deadline: Instant) -> SinkReport {
        match self {
            Server::Sink(s) => s.wait(Some(deadline), &|| false),
            Server::Peer {
                name, run, thread, ..
            } => sink::wait_run(&run, vec![thread], Some(deadline), &|| false, None, name),
        }
    }
}

/// A peer's receive loop.
type PeerBody = Box<dyn FnOnce(&mut Meter) -> Result<(), String> + Send>;

/// How long a peer blocks before it looks at the stop flag again.
const TICK: Duration = Duration::from_millis(20);

fn start_peer(w: Which, addr: SocketAddr, base: &SinkOptions) -> Result<Server, String> {
    let sock = sink::bind(addr, base.rcvbuf)?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    let run = SinkRun::new(base.size, 1);
    let name = w.name();
    let slot = base.size.max(64) + 64;
    let (r, pin, count) = (run.clone(), base.pin, base.count_syscalls);
    let body: PeerBody = match w {
        Which::Tokio => Box::new(move |m| tokio_peer(m, sock, slot)),
        Which::Mio => Box::new(move |m| mio_peer(m, sock, slot)),
        Which::Recvmmsg => Box::new(move |m| recvmmsg_peer(m, sock, slot)),
        Which::Mode(_) => return Err("not a peer".into()),
    };
    let thread = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut m = Meter::new(&r, 0, format!("{name}-0"), pin, count);
            if let Err(e) = body(&mut m) {
                eprintln!("ringport: {name}: {e}");
            }
            m.finish();
        })
        .map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Server::Peer {
        name,
        run,
        thread,
        addr,
    })
}

fn tokio_peer(m: &mut Meter, sock: UdpSocket, slot: usize) -> Result<(), String> {
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let s = tokio::net::UdpSocket::from_std(sock).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; slot];
        loop {
            if m.should_stop() {
                return Ok(());
            }
            match tokio::time::timeout(TICK, s.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    m.dequeued(1);
                    m.datagram_bytes(&buf[..n]);
                    m.publish();
                }
                Ok(Err(e)) => return Err(format!("recv: {e}")),
                Err(_) => {}
            }
        }
    })
}

fn mio_peer(m: &mut Meter, sock: UdpSocket, slot: usize) -> Result<(), String> {
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut sock = mio::net::UdpSocket::from_std(sock);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut sock, Token(0), Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(8);
    let mut buf = vec![0u8; slot];
    loop {
        if m.should_stop() {
            return Ok(());
        }
        match poll.poll(&mut events, Some(TICK)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        // Edge-triggered: drain the socket.
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    m.dequeued(1);
                    m.datagram_bytes(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        m.publish();
    }
}

fn recvmmsg_peer(m: &mut Meter, sock: UdpSocket, slot: usize) -> Result<(), String> {
    const VLEN: usize = 64;
    sock.set_read_timeout(Some(TICK))
        .map_err(|e| e.to_string())?;
    let fd = sock.as_raw_fd();
    let mut bufs = vec![0u8; VLEN * slot];
    // SAFETY: zeroed iovec/mmsghdr are valid (null pointers, zero lengths).
    let mut iov: [libc::iovec; VLEN] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; VLEN] = unsafe { std::mem::zeroed() };
    loop {
        if m.should_stop() {
            return Ok(());
        }
        for i in 0..VLEN {
            iov[i] = libc::iovec {
                iov_base: bufs[i * slot..].as_mut_ptr().cast(),
                iov_len: slot,
            };
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_len = 0;
        }
        // SAFETY: every header points at its own iovec inside `bufs`, which
        // outlives the call; the kernel writes at most `slot` bytes into each.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                VLEN as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                _ => return Err(format!("recvmmsg: {e}")),
            }
        }
        let n = n as usize;
        m.dequeued(n);
        for (i, msg) in msgs.iter().enumerate().take(n) {
            let len = (msg.msg_len as usize).min(slot);
            m.datagram_bytes(&bufs[i * slot..i * slot + len]);
        }
        m.publish();
    }
}
