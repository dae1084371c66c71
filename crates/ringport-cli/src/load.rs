//! `ringport load tcp|udp`: a ping-pong load generator for echo servers.
//!
//! Each of `--connections` connections (for UDP: a socket `connect`ed to the
//! server) keeps exactly one message in flight: it sends `--size` bytes,
//! waits for the same bytes to come back (every byte is checked), records the
//! round trip in an [`hdrhistogram`] and sends the next. The connections are
//! spread over `--threads` client threads, each an epoll loop (mio) over its
//! share, so the generator stays light next to the server it measures.
//!
//! It runs for `--duration` or until `--count` messages have made the round
//! trip (whichever comes first), then prints messages/s and the round-trip
//! latency p50/p99/p99.9. A progress line goes to stderr when stderr is a
//! terminal. The benchmarks (`ringport bench tcp|udp`) drive every server with
//! this same code ([`run_load`]).
//!
//! UDP may lose datagrams: a message with no reply after `--timeout` counts as
//! lost and is replaced by a new one, unless the socket never had a reply at
//! all, which means nobody is answering: that is an error. A TCP connection
//! with no echo after `--timeout` is an error.

use std::io::{self, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

/// The largest UDP payload over IPv4.
pub const MAX_UDP: usize = 65_507;
/// Bytes at the start of a message that carry its sequence number.
const SEQ: usize = 8;
/// The largest TCP message this generator sends.
const MAX_TCP: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// TCP echo: one stream per connection.
    Tcp,
    /// UDP echo: one connected socket per "connection".
    Udp,
}

/// What `ringport load` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// TCP echo: one stream per connection.
    Tcp,
    /// UDP echo: one connected socket per "connection".
    Udp,
    /// A UDP sink (serve udp-sink): datagrams as fast as GSO sends them,
    /// then the end marker.
    UdpBlast,
}

#[derive(clap::Args)]
pub struct Args {
    /// tcp, udp or udp-blast.
    #[arg(value_enum)]
    proto: Target,
    /// The echo server's address.
    #[arg(long)]
    addr: String,
    /// Connections (sockets, for UDP), each with one message in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Bytes per message [default: 64; udp-blast: 1024].
    #[arg(long)]
    size: Option<usize>,
    /// How long to run (e.g. 10, 10s, 500ms, 2m) [default: 5s unless --count].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many round trips in total.
    #[arg(long)]
    count: Option<u64>,
    /// Client threads the connections are spread over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How long to wait for a connection or an echo before giving up.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
    /// Time at the start not counted in the figures.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// udp-blast: send with sendmmsg instead of UDP GSO.
    #[arg(long)]
    sendmmsg: bool,
}

/// Parses `5`, `2.5s`, `500ms`, `100us`, `2m` into a duration (a bare number
/// is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 5s, 500ms or 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (s, ms, us, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// What to run; [`run_load`] takes it from the command line or a benchmark.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub connections: usize,
    pub size: usize,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub threads: usize,
    pub timeout: Duration,
    pub warmup: Duration,
    /// Show a progress line on stderr.
    pub progress: bool,
}

impl LoadConfig {
    /// Checks the figures; every refusal names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.connections > 60_000 {
            return Err("--connections above 60,000 would run out of local ports".into());
        }
        if self.size == 0 {
            return Err("--size must be at least 1 byte".into());
        }
        match self.proto {
            Proto::Udp if self.size > MAX_UDP => {
                return Err(format!(
                    "--size {} is larger than the largest UDP datagram ({MAX_UDP} bytes)",
                    self.size
                ))
            }
            Proto::Tcp if self.size > MAX_TCP => {
                return Err(format!("--size above {MAX_TCP} bytes is not supported"))
            }
            _ => {}
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// What a run measured (after the warm-up).
pub struct LoadReport {
    /// Round trips completed.
    pub messages: u64,
    pub elapsed: Duration,
    /// Round trips in nanoseconds.
    pub latency: Histogram<u64>,
    /// UDP messages that got no reply in time.
    pub lost: u64,
    /// CPU time of the whole process while measuring (server included when
    /// it runs in this process).
    pub process_cpu: Duration,
    /// CPU time of the client threads while measuring.
    pub client_cpu: Duration,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e3
    }
}

/// CPU time (user + system) of the process, or with `thread` of the calling
/// thread only.
pub fn cpu_time(thread: bool) -> Duration {
    let who = if thread {
        libc::RUSAGE_THREAD
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a live rusage for `who`.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resolves a `host:port` string to one address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("--addr {addr:?}: {e} (expected host:port, e.g. 127.0.0.1:7000)"))?
        .next()
        .ok_or_else(|| format!("--addr {addr:?} resolves to no address"))
}

pub fn run(args: Args) -> Result<(), String> {
    let addr = resolve(&args.addr)?;
    let duration = match (args.duration, args.count) {
        (None, None) => Some(Duration::from_secs(5)),
        (d, _) => d,
    };
    let proto = match args.proto {
        Target::Tcp => Proto::Tcp,
        Target::Udp => Proto::Udp,
        Target::UdpBlast => {
            return crate::blast::run(crate::blast::BlastConfig {
                addr,
                size: args.size.unwrap_or(1024),
                duration,
                count: args.count,
                gso: !args.sendmmsg,
                pin: None,
            })
        }
    };
    let cfg = LoadConfig {
        proto,
        addr,
        connections: args.connections,
        size: args.size.unwrap_or(64),
        duration,
        count: args.count,
        threads: args.threads.min(args.connections.max(1)),
        timeout: args.timeout,
        warmup: if args.count.is_some() {
            Duration::ZERO
        } else {
            args.warmup
        },
        progress: io::stderr().is_terminal(),
    };
    cfg.validate()?;
    let r = run_load(&cfg)?;
    let proto = match cfg.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    println!(
        "load {proto} {addr}: {} connections, {} bytes, {} client threads",
        cfg.connections, cfg.size, cfg.threads
    );
    println!(
        "{} round trips in {:.3} s: {:.0} messages/s",
        r.messages,
        r.elapsed.as_secs_f64(),
        r.rate()
    );
    println!(
        "round trip µs: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        r.quantile_us(0.5),
        r.quantile_us(0.99),
        r.quantile_us(0.999),
        r.latency.max() as f64 / 1e3
    );
    if cfg.proto == Proto::Udp {
        println!("lost (no reply within {:?}): {}", cfg.timeout, r.lost);
    }
    if r.messages == 0 {
        return Err("no round trip completed".into());
    }
    Ok(())
}

/// State shared by the client threads.
struct Shared {
    /// Round trips so far, for the progress line (updated in batches).
    done: AtomicU64,
    /// Set when a thread failed, so the others stop.
    abort: AtomicBool,
}

/// Runs the load and returns what it measured. Connection failures,
/// timeouts and wrong echoes are errors with a message.
pub fn run_load(cfg: &LoadConfig) -> Result<LoadReport, String> {
    cfg.validate()?;
    let threads = cfg.threads.min(cfg.connections);
    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        abort: AtomicBool::new(false),
    });
    // Each connection's share of --count.
    let quota = |i: usize| -> u64 {
        match cfg.count {
            None => u64::MAX,
            Some(n) => {
                let c = cfg.connections as u64;
                n / c + u64::from((i as u64) < n % c)
            }
        }
    };

    // Connect everything first, so that the clock measures traffic only.
    let mut per_thread: Vec<Vec<Endpoint>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.connections {
        let ep = Endpoint::connect(cfg, i)?;
        per_thread[i % threads].push(ep);
    }
    let quotas: Vec<Vec<u64>> = (0..threads)
        .map(|t| (t..cfg.connections).step_by(threads).map(quota).collect())
        .collect();

    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let deadline = cfg.duration.map(|d| measure_from + d);
    let progress = cfg.progress.then(|| {
        let shared = shared.clone();
        let total = cfg.count;
        thread::spawn(move || progress_line(&shared, start, deadline, total))
    });

    let mut handles = Vec::with_capacity(threads);
    for (t, (eps, q)) in per_thread.into_iter().zip(quotas).enumerate() {
        let sh = shared.clone();
        let cfg = cfg.clone();
        let spawned = thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                let r = client_thread(&cfg, eps, q, &sh, measure_from, deadline);
                if r.is_err() {
                    sh.abort.store(true, Ordering::Relaxed);
                }
                r
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.abort.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(format!("starting a client thread: {e}"));
            }
        }
    }

    // The process's CPU time from the end of the warm-up.
    thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let cpu_from = cpu_time(false);

    let mut first_err = None;
    let mut client_cpu = Duration::ZERO;
    let mut messages = 0;
    let mut lost = 0;
    let mut latency = new_histogram();
    let mut ended = measure_from;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => {
                messages += t.messages;
                lost += t.lost;
                ended = ended.max(t.ended);
                client_cpu += t.cpu;
                let _ = latency.add(&t.latency);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert_with(|| "a client thread panicked".to_string());
            }
        }
    }
    let process_cpu = cpu_time(false).saturating_sub(cpu_from);
    shared.abort.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(LoadReport {
        messages,
        elapsed: ended.saturating_duration_since(measure_from),
        latency,
        lost,
        process_cpu,
        client_cpu,
    })
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant figures; the bounds are constants that
    // hdrhistogram accepts, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

fn progress_line(shared: &Shared, start: Instant, deadline: Option<Instant>, total: Option<u64>) {
    let mut last = (start, 0u64);
    let mut err = io::stderr();
    while !shared.abort.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(250));
        let now = Instant::now();
        let done = shared.done.load(Ordering::Relaxed);
        if now.duration_since(last.0) < Duration::from_millis(500) {
            continue;
        }
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, done);
        let frac = match (total, deadline) {
            (Some(n), _) => done as f64 / n as f64,
            (None, Some(d)) => {
                let all = d.duration_since(start).as_secs_f64();
                now.duration_since(start).as_secs_f64() / all.max(1e-9)
            }
            (None, None) => 0.0,
        }
        .clamp(0.0, 1.0);
        let filled = (frac * 30.0).round() as usize;
        let _ = write!(
            err,
            "\r[{}{}] {:>3.0}%  {:>10} round trips  {:>10.0}/s",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0,
            done,
            rate
        );
        let _ = err.flush();
    }
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

/// One connection or connected UDP socket.
enum Sock {
    Tcp(mio::net::TcpStream),
    Udp(mio::net::UdpSocket),
}

struct Endpoint {
    sock: Sock,
    /// The message in flight; its first bytes carry a sequence number.
    out: Vec<u8>,
    written: usize,
    /// The echo so far (TCP), or the last datagram (UDP, one byte larger
    /// than a message so an oversized reply shows).
    inbuf: Vec<u8>,
    read: usize,
    seq: u64,
    sent_at: Instant,
    /// A message is in flight.
    busy: bool,
    /// Round trips left (u64::MAX when running for a duration).
    left: u64,
    replies: u64,
}

impl Endpoint {
    fn connect(cfg: &LoadConfig, i: usize) -> Result<Endpoint, String> {
        let addr = cfg.addr;
        let sock = match cfg.proto {
            Proto::Tcp => {
                let s = TcpStream::connect_timeout(&addr, cfg.timeout).map_err(|e| {
                    let hint = match e.kind() {
                        io::ErrorKind::ConnectionRefused => {
                            " (is a TCP echo server listening there?)"
                        }
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                            " (no answer within --timeout)"
                        }
                        _ => "",
                    };
                    format!("cannot connect to {addr} (connection {i}): {e}{hint}")
                })?;
                s.set_nodelay(true)
                    .and_then(|()| s.set_nonblocking(true))
                    .map_err(|e| format!("setting up connection {i}: {e}"))?;
                Sock::Tcp(mio::net::TcpStream::from_std(s))
            }
            Proto::Udp => {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .map_err(|e| format!("{e}"))?;
                let s = UdpSocket::bind(local)
                    .and_then(|s| s.connect(addr).map(|()| s))
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|e| format!("cannot open a UDP socket to {addr}: {e}"))?;
                Sock::Udp(mio::net::UdpSocket::from_std(s))
            }
        };
        // A recognisable pattern, different per connection.
        let out: Vec<u8> = (0..cfg.size)
            .map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8))
            .collect();
        let extra = usize::from(cfg.proto == Proto::Udp);
        Ok(Endpoint {
            sock,
            out,
            written: 0,
            inbuf: vec![0; cfg.size + extra],
            read: 0,
            seq: (i as u64) << 40,
            sent_at: Instant::now(),
            busy: false,
            left: 0,
            replies: 0,
        })
    }

    /// Starts the next message.
    fn start(&mut self) {
        self.seq += 1;
        let bytes = self.seq.to_le_bytes();
        let n = bytes.len().min(self.out.len());
        self.out[..n].copy_from_slice(&bytes[..n]);
        self.written = 0;
        self.read = 0;
        self.busy = true;
        self.sent_at = Instant::now();
    }
}

/// What one client thread measured.
struct Tally {
    messages: u64,
    lost: u64,
    latency: Histogram<u64>,
    ended: Instant,
    /// This thread's CPU time while measuring.
    cpu: Duration,
}

fn client_thread(
    cfg: &LoadConfig,
    mut eps: Vec<Endpoint>,
    quotas: Vec<u64>,
    shared: &Shared,
    measure_from: Instant,
    deadline: Option<Instant>,
) -> Result<Tally, String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll_create: {e}"))?;
    let mut events = Events::with_capacity(256);
    let mut tally = Tally {
        messages: 0,
        lost: 0,
        latency: new_histogram(),
        ended: Instant::now(),
        cpu: Duration::ZERO,
    };
    let mut cpu_from = None;
    for (i, (ep, q)) in eps.iter_mut().zip(quotas).enumerate() {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let r = match &mut ep.sock {
            Sock::Tcp(s) => poll.registry().register(s, Token(i), interest),
            Sock::Udp(s) => poll.registry().register(s, Token(i), interest),
        };
        r.map_err(|e| format!("epoll_ctl: {e}"))?;
        ep.left = q;
    }
    let mut active = 0usize;
    for ep in eps.iter_mut() {
        if ep.left > 0 {
            ep.start();
            active += 1;
        }
    }
    let mut unreported = 0u64;
    let mut last_check = Instant::now();
    let mut any_reply = false;
    // Kick every connection once, then follow the events.
    let mut ready: Vec<usize> = (0..eps.len()).collect();
    while active > 0 {
        for &i in &ready {
            let ep = &mut eps[i];
            if !ep.busy {
                continue;
            }
            let finished = pump(cfg, ep, i, &mut tally, measure_from)?;
            if finished > 0 {
                any_reply = true;
                unreported += finished;
            }
            if !ep.busy {
                active -= 1;
            }
        }
        if unreported >= 64 {
            shared.done.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
        }
        let now = Instant::now();
        if cpu_from.is_none() && now >= measure_from {
            cpu_from = Some(cpu_time(true));
        }
        if deadline.is_some_and(|d| now >= d) || shared.abort.load(Ordering::Relaxed) {
            break;
        }
        if now.duration_since(last_check) >= Duration::from_millis(50) {
            last_check = now;
            for (i, ep) in eps.iter_mut().enumerate() {
                if !ep.busy || now.duration_since(ep.sent_at) < cfg.timeout {
                    continue;
                }
                match cfg.proto {
                    Proto::Tcp => {
                        return Err(format!(
                            "connection {i}: no echo from {} within {:?} (is it an echo server?)",
                            cfg.addr, cfg.timeout
                        ))
                    }
                    Proto::Udp if ep.replies == 0 && !any_reply => {
                        return Err(format!(
                            "no reply from {} within {:?} (is a UDP echo server running there?)",
                            cfg.addr, cfg.timeout
                        ))
                    }
                    Proto::Udp => {
                        // Lost on the way: replace it with a new message.
                        tally.lost += 1;
                        ep.start();
                        unreported += pump(cfg, ep, i, &mut tally, measure_from)?;
                        if !ep.busy {
                            active -= 1;
                        }
                    }
                }
            }
        }
        let mut wait = Duration::from_millis(50);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        ready.clear();
        ready.extend(events.iter().map(|e| e.token().0));
    }
    shared.done.fetch_add(unreported, Ordering::Relaxed);
    tally.cpu = cpu_from.map_or(Duration::ZERO, |c| cpu_time(true).saturating_sub(c));
    tally.ended = Instant::now();
    if let Some(d) = deadline {
        tally.ended = tally.ended.min(d);
    }
    Ok(tally)
}

/// Moves one endpoint as far as it can without blocking; returns how many
/// round trips it completed.
fn pump(
    cfg: &LoadConfig,
    ep: &mut Endpoint,
    i: usize,
    tally: &mut Tally,
    measure_from: Instant,
) -> Result<u64, String> {
    let mut completed = 0;
    let addr = cfg.addr;
    let io_err = |what: &str, e: io::Error| -> String {
        let hint = match e.kind() {
            io::ErrorKind::ConnectionRefused => match cfg.proto {
                Proto::Udp => " (is a UDP echo server running there?)",
                Proto::Tcp => "",
            },
            io::ErrorKind::ConnectionReset => " (the server reset the connection)",
            _ => "",
        };
        format!("connection {i} to {addr}: {what}: {e}{hint}")
    };
    while ep.busy {
        match &mut ep.sock {
            // Write and read in turn until both would block: a large message
            // comes back while it is still going out, and a client that did
            // not read meanwhile would deadlock with the server.
            Sock::Tcp(s) => loop {
                let mut moved = false;
                if ep.written < ep.out.len() {
                    match s.write(&ep.out[ep.written..]) {
                        Ok(0) => return Err(format!("connection {i}: the socket took no bytes")),
                        Ok(n) => {
                            ep.written += n;
                            moved = true;
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => return Err(io_err("send", e)),
                    }
                }
                if ep.read < ep.written {
                    match s.read(&mut ep.inbuf[ep.read..]) {
                        Ok(0) => {
                            return Err(format!(
                                "connection {i}: {addr} closed the connection after {} echoes",
                                ep.replies
                            ))
                        }
                        Ok(n) => {
                            ep.read += n;
                            moved = true;
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => return Err(io_err("recv", e)),
                    }
                }
                if ep.read == ep.out.len() {
                    if ep.inbuf[..] != ep.out[..] {
                        return Err(format!(
                            "connection {i}: the echo differs from what was sent (message {})",
                            ep.replies
                        ));
                    }
                    break;
                }
                if !moved {
                    return Ok(completed);
                }
            },
            Sock::Udp(s) => {
                if ep.written == 0 {
                    match s.send(&ep.out) {
                        Ok(n) if n == ep.out.len() => ep.written = n,
                        Ok(n) => {
                            return Err(format!("connection {i}: short datagram sent ({n} bytes)"))
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) =>
                        {
                            return Ok(completed)
                        }
                        Err(e) => return Err(io_err("send", e)),
                    }
                }
                loop {
                    match s.recv(&mut ep.inbuf) {
                        Ok(n) if n == ep.out.len() && ep.inbuf[..n] == ep.out[..] => break,
                        Ok(n)
                            if n == ep.out.len()
                                && ep.inbuf[SEQ.min(n)..n] == ep.out[SEQ.min(n)..] =>
                        {
                            // Another sequence number: a late reply to a
                            // message counted as lost.
                        }
                        Ok(n) => {
                            return Err(format!(
                                "connection {i}: the echoed datagram ({n} bytes) differs from the {} sent",
                                ep.out.len()
                            ))
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(completed),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err("recv", e)),
                    }
                }
            }
        }
        // A round trip.
        let now = Instant::now();
        ep.replies += 1;
        if now >= measure_from {
            let rtt = now.duration_since(ep.sent_at).as_nanos() as u64;
            tally.latency.saturating_record(rtt.max(1));
            tally.messages += 1;
        }
        completed += 1;
        ep.busy = false;
        if ep.left != u64::MAX {
            ep.left -= 1;
        }
        if ep.left > 0 {
            ep.start();
        }
    }
    Ok(completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(proto: Proto, connections: usize, size: usize) -> LoadConfig {
        LoadConfig {
            proto,
            addr: "127.0.0.1:9".parse().unwrap(),
            connections,
            size,
            duration: Some(Duration::from_secs(1)),
            count: None,
            threads: 1,
            timeout: Duration::from_secs(1),
            warmup: Duration::ZERO,
            progress: false,
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn bad_arguments_are_refused_with_the_option_named() {
        assert!(cfg(Proto::Tcp, 0, 64)
            .validate()
            .unwrap_err()
            .contains("--connections"));
        assert!(cfg(Proto::Tcp, 1, 0)
            .validate()
            .unwrap_err()
            .contains("--size"));
        assert!(cfg(Proto::Udp, 1, 65_508)
            .validate()
            .unwrap_err()
            .contains("UDP"));
        assert!(cfg(Proto::Udp, 1, 65_507).validate().is_ok());
        assert!(cfg(Proto::Tcp, 1, 65_508).validate().is_ok());
    }
}
