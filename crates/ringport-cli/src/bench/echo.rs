//! The harness of `bench tcp` and `bench udp`: start each server, drive it
//! with the load generator ([`crate::load::run_load`]), stop it, and report
//! the medians of interleaved rounds with ringport's ratio to each peer.
//!
//! Every server runs in this process on 127.0.0.1 port 0, one at a time,
//! rounds interleaved (ringport, tokio, mio, …, ringport, …): round trips per
//! second, round-trip latency p50/p99/p99.9, and the CPU time per round trip
//! of the server, summed over the server's own threads (every thread of the
//! process but the load generator's and the harness's).
//!
//! `--pin` runs them the way MEASURING.md compares servers on two CPUs: the
//! server on one CPU with one thread (unless `--threads`), the load client on
//! another. The harness pins itself to the server's CPU while it starts a
//! server, so that every thread the server creates, then or later (a
//! runtime's workers, a library's helpers, a thread per connection),
//! inherits it; then moves itself to the client's CPU. Each run checks
//! that every thread it counts as the server's was on the server's CPU.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::args::parse_duration;
use crate::load::{self, LoadConfig, LoadReport, Proto};
use crate::measure::median;
use crate::report::{Cell, Chart, Report, RunRecord, Table};
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
    /// Pin the server's threads to one CPU and the load client to another
    /// (the second and the first CPU this process may use), one server
    /// thread unless --threads says otherwise.
    #[arg(long)]
    pin: bool,
}

impl EchoRun {
    /// `--quick`: a fraction of a second per server, one round, few
    /// connections.
    pub(super) fn quick(&mut self) {
        self.seconds = Duration::from_millis(200);
        self.warmup = Duration::from_millis(50);
        self.rounds = 1;
        self.connections = 8;
    }

    /// The plan for `bench <name>`: `proto` load, a reply awaited at most
    /// `timeout`.
    pub(super) fn plan(&self, name: &str, proto: Proto, timeout: Duration) -> Plan {
        let cpus = crate::measure::allowed_cpus();
        let pin = match cpus[..] {
            [client, server, ..] if self.pin => Some(Pin { server, client }),
            _ => None,
        };
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
                pin: pin.map(|p| p.client),
            },
            rounds: self.rounds,
            threads: self.threads.unwrap_or_else(
                || {
                    if self.pin {
                        1
                    } else {
                        ringport::cpu_count()
                    }
                },
            ),
            batch: self.batch,
            pin_asked: self.pin,
            pin,
        }
    }
}

/// A server under test, running.
pub(super) trait Server {
    fn addr(&self) -> SocketAddr;
    /// Stops it and releases everything; an error if it failed meanwhile.
    fn stop(self: Box<Self>) -> Result<(), String>;
}

/// Starts a server with `threads` threads on 127.0.0.1 port 0.
pub(super) type Start = fn(threads: usize, batch: usize) -> Result<Box<dyn Server>, String>;

/// How a benchmark drives each server.
pub(super) struct Plan {
    pub title: String,
    pub load: LoadConfig,
    pub rounds: usize,
    pub threads: usize,
    pub batch: usize,
    pub pin_asked: bool,
    pub pin: Option<Pin>,
}

/// Where `--pin` puts the server and the load client.
#[derive(Clone, Copy)]
pub(super) struct Pin {
    pub server: usize,
    pub client: usize,
}

/// One run of one server.
struct ServerRun {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    lost: u64,
}

impl ServerRun {
    fn of(r: &LoadReport) -> ServerRun {
        let msgs = r.messages.max(1) as f64;
        ServerRun {
            rate: r.rate(),
            p50: r.quantile_us(0.5),
            p99: r.quantile_us(0.99),
            p999: r.quantile_us(0.999),
            server_cpu_us: r.server_cpu.as_secs_f64() * 1e6 / msgs,
            client_cpu_us: r.client_cpu.as_secs_f64() * 1e6 / msgs,
            lost: r.lost,
        }
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
pub(super) fn compare(
    plan: &Plan,
    peers: &[(&'static str, Start)],
    out: &mut Report,
) -> Result<(), String> {
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
    if plan.pin_asked && plan.pin.is_none() {
        return Err("--pin needs two CPUs this process may run on".into());
    }
    out.say(plan.title.clone());
    out.say(format!(
        "{} connections × 1 message of {} bytes in flight, {} server threads, {} client thread(s), \
         {:?} per run (+{:?} warm-up), {} rounds interleaved, median reported",
        plan.load.connections,
        plan.load.size,
        plan.threads,
        plan.load.threads,
        plan.load.duration.unwrap_or_default(),
        plan.load.warmup,
        plan.rounds
    ));
    out.say(match plan.pin {
        Some(p) => format!(
            "server threads pinned to CPU {}, the load client to CPU {}; server CPU from the \
             server's own threads",
            p.server, p.client
        ),
        None => "nothing pinned; server CPU from the server's own threads".to_string(),
    });
    let home = crate::measure::allowed_cpus();
    let result = rounds(plan, peers);
    if plan.pin.is_some() {
        crate::measure::pin(&home);
    }
    report(plan, peers, &result?, out);
    Ok(())
}

/// Every round of every peer, by name.
fn rounds<'a>(
    plan: &Plan,
    peers: &[(&'a str, Start)],
) -> Result<HashMap<&'a str, Vec<ServerRun>>, String> {
    let mut runs: HashMap<&str, Vec<ServerRun>> = HashMap::new();
    for round in 0..plan.rounds {
        for &(name, start) in peers {
            if let Some(p) = plan.pin {
                crate::measure::pin(&[p.server]);
            }
            let server = start(plan.threads, plan.batch);
            if let Some(p) = plan.pin {
                crate::measure::pin(&[p.client]);
            }
            let server = server.map_err(|e| format!("{name}: {e}"))?;
            let mut cfg = plan.load.clone();
            cfg.addr = server.addr();
            let result = load::run_load(&cfg);
            let pinned = match (&result, plan.pin) {
                (Ok(r), Some(p)) => crate::measure::check_pinned(&r.server_threads, p.server),
                _ => Ok(()),
            };
            let stopped = server.stop();
            let report = result.map_err(|e| format!("{name}: {e}"))?;
            stopped.map_err(|e| format!("{name}: {e}"))?;
            pinned.map_err(|e| format!("{name}: {e}"))?;
            let run = ServerRun::of(&report);
            eprintln!(
                "  round {}: {name:<16} {:>10.0} msg/s  p50 {:>7.1} µs  server CPU {:>5.2} µs/msg  \
                 client CPU {:>5.2} µs/msg",
                round + 1,
                run.rate,
                run.p50,
                run.server_cpu_us,
                run.client_cpu_us
            );
            runs.entry(name).or_default().push(run);
        }
    }
    Ok(runs)
}

/// The peers whose server CPU per message every server is divided by, when
/// they ran: the runtimes a Rust user would otherwise pick.
const REFERENCES: [&str; 3] = ["tokio", "mio", "monoio"];

fn report(
    plan: &Plan,
    peers: &[(&str, Start)],
    runs: &HashMap<&str, Vec<ServerRun>>,
    out: &mut Report,
) {
    let all = |name: &str, f: fn(&ServerRun) -> f64| -> Vec<f64> {
        runs.get(name).map_or(vec![], |v| v.iter().map(f).collect())
    };
    let med = |name: &str, f: fn(&ServerRun) -> f64| median(all(name, f));
    for &(name, _) in peers {
        for (i, r) in runs.get(name).into_iter().flatten().enumerate() {
            out.run(
                RunRecord::new("echo", "", i + 1, name)
                    .with("msgs_per_s", r.rate)
                    .with("p50_us", r.p50)
                    .with("p99_us", r.p99)
                    .with("p999_us", r.p999)
                    .with("server_cpu_us_per_msg", r.server_cpu_us)
                    .with("client_cpu_us_per_msg", r.client_cpu_us)
                    .with("lost", r.lost as f64),
            );
        }
    }
    let udp = plan.load.proto == Proto::Udp;
    let mut columns = vec![
        "server",
        "msgs/s",
        "msgs/s min–max",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "server µs/msg min–max",
        "server µs/msg",
    ];
    if udp {
        columns.push("lost");
    }
    let mut t = Table::new(
        format!("Echo servers: median of {} interleaved rounds", plan.rounds),
        &columns,
    );
    for &(name, _) in peers {
        let lost: u64 = runs.get(name).map_or(0, |v| v.iter().map(|r| r.lost).sum());
        let mut row = vec![
            Cell::text(name),
            Cell::num(med(name, |r| r.rate), 0),
            Cell::range(&all(name, |r| r.rate), 0),
            Cell::num(med(name, |r| r.p50), 1),
            Cell::num(med(name, |r| r.p99), 1),
            Cell::num(med(name, |r| r.p999), 1),
            Cell::range(&all(name, |r| r.server_cpu_us), 2),
            Cell::num(med(name, |r| r.server_cpu_us), 2),
        ];
        if udp {
            row.push(Cell::num(lost as f64, 0));
        }
        t.row(row);
    }
    out.table(t);
    if peers.iter().any(|(n, _)| *n == "ringport") && peers.len() > 1 {
        let mut t = Table::new(
            "ringport over each peer (medians)",
            &["", "msgs/s", "p50 latency", "server CPU per msg"],
        );
        let ours = med("ringport", |r| r.rate);
        let our_cpu = med("ringport", |r| r.server_cpu_us);
        let our_p50 = med("ringport", |r| r.p50);
        for &(name, _) in peers.iter().filter(|(n, _)| *n != "ringport") {
            t.row(vec![
                Cell::text(format!("ringport / {name}")),
                Cell::ratio(ours / med(name, |r| r.rate)),
                Cell::ratio(our_p50 / med(name, |r| r.p50)),
                Cell::ratio(our_cpu / med(name, |r| r.server_cpu_us)),
            ]);
        }
        out.table(t);
    }
    let refs: Vec<&str> = REFERENCES
        .into_iter()
        .filter(|r| peers.iter().any(|(n, _)| n == r))
        .collect();
    if !refs.is_empty() {
        let mut columns = vec!["server CPU/msg".to_string()];
        columns.extend(refs.iter().map(|r| format!("÷ {r}")));
        let mut t = Table {
            title: "Server CPU per message over each runtime's (medians)".into(),
            columns,
            ..Table::default()
        };
        for &(name, _) in peers {
            let ours = med(name, |r| r.server_cpu_us);
            let mut row = vec![Cell::text(name)];
            row.extend(
                refs.iter()
                    .map(|r| Cell::ratio(ours / med(r, |r| r.server_cpu_us))),
            );
            t.row(row);
        }
        out.table(t);
    }
    // ringport's servers (and their variants) over every other server.
    let ours: Vec<&str> = peers
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| n.starts_with("ringport") || n.starts_with("rio"))
        .collect();
    let mut theirs: Vec<&str> = peers
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !ours.contains(n))
        .collect();
    if theirs.is_empty() && ours.contains(&"ringport") {
        theirs.push("ringport");
    }
    let case = [String::new()];
    out.chart(Chart::new(
        "Server CPU per message: ringport over each peer (lower is better)",
        "echo",
        "server_cpu_us_per_msg",
        false,
        &case,
        &ours,
        &theirs,
    ));
    out.chart(Chart::new(
        "Messages per second: ringport over each peer",
        "echo",
        "msgs_per_s",
        true,
        &case,
        &ours,
        &theirs,
    ));
}

/// A hand-written server (the `*-raw` peers) on a thread of its own,
/// stopped by writing an eventfd its loop watches.
struct ThreadServer {
    name: &'static str,
    addr: SocketAddr,
    stop: OwnedFd,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Server for ThreadServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to an eventfd we own.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(format!("the {} thread panicked", self.name)),
            None => Ok(()),
        }
    }
}

/// Binds a listener on localhost and runs `serve(listener, stop eventfd,
/// ready)` on a thread named after `name`; returns once `serve` said on
/// `ready` that it is serving (or why it cannot).
pub(super) fn spawn_thread_server(
    name: &'static str,
    serve: impl FnOnce(TcpListener, RawFd, mpsc::Sender<Result<(), String>>) -> Result<(), String>
        + Send
        + 'static,
) -> Result<Box<dyn Server>, String> {
    let listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // SAFETY: eventfd takes no pointer; the fd it returns is checked, then owned.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", io::Error::last_os_error()));
    }
    // SAFETY: efd is a fresh descriptor nothing else owns.
    let stop = unsafe { OwnedFd::from_raw_fd(efd) };
    let stop_fd = stop.as_raw_fd();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name(format!("{name}-echo"))
        .spawn(move || serve(listener, stop_fd, ready_tx))
        .map_err(|e| format!("starting the {name} thread: {e}"))?;
    let server = Box::new(ThreadServer {
        name,
        addr,
        stop,
        thread: Some(thread),
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(server),
        Ok(Err(e)) => Err(server.stop().err().unwrap_or(e)),
        Err(_) => Err(server
            .stop()
            .err()
            .unwrap_or_else(|| format!("the {name} thread ended at start"))),
    }
}

pub(super) fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

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
