//! `ringport bench port`: the completion port against crossbeam-channel and
//! std mpsc, in the same process, interleaved.
//!
//! Three measurements, each peer carrying the same items (a
//! [`Packet`]`<u64>`: key, token, result) and each consumer doing the same
//! work per item (adding the token to a sum that is checked at the end):
//!
//! - **flood**: one producer posts `--items` packets as fast as it can through
//!   1, 2 and 4 consumer threads. The port's concurrency limit is the number
//!   of consumers by default, so it never holds one back (`--limit cpus` for
//!   the port's own configuration). std mpsc has a single
//!   receiver; with more than one consumer they share it behind a mutex (the
//!   usual way). Rounds are interleaved (A B C A B C …) and the median is
//!   reported, with context switches and CPU time per item.
//! - **bursty**: 64 items every 200 µs, ~1 µs of busy work each, 4 workers on
//!   2 CPUs (every thread of the run is pinned to two CPUs), the port at
//!   limit 2. Reported: context switches and CPU µs per item, whole process
//!   (`getrusage(RUSAGE_SELF)`, producer included, the same for every peer).
//! - **latency**: one consumer parked in `get(None)` (or `recv`); the poster
//!   stamps an `Instant` into the token after a pause, the consumer records
//!   how long it took to get it.

use std::hint::black_box;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringport::{CompletionPort, Packet};

#[derive(clap::Args)]
pub struct Args {
    /// Packets per flood run.
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// Interleaved rounds of every measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Consumer thread counts for the flood, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Bursts of 64 items in each bursty run (one every 200 µs).
    #[arg(long, default_value_t = 2_000)]
    bursts: u64,
    /// Wake-up latency samples per peer in each round.
    #[arg(long, default_value_t = 5_000)]
    samples: u64,
    /// The port's concurrency limit in the flood: `workers` (as many as there
    /// are consumers, so it never holds one back), `cpus`, or a number.
    #[arg(long, default_value = "workers")]
    limit: String,
    /// Only these peers: ringport, crossbeam, mpsc (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "ringport,crossbeam,mpsc")]
    peers: Vec<String>,
    /// Only these parts: flood, bursty, latency (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "flood,bursty,latency")]
    only: Vec<String>,
}

/// The key of the packet that tells a consumer to stop.
const STOP: u64 = u64::MAX;
const BURST: u64 = 64;
const PERIOD: Duration = Duration::from_micros(200);
const BURSTY_WORKERS: usize = 4;
const BURSTY_LIMIT: usize = 2;
const LATENCY_PAUSE: Duration = Duration::from_micros(100);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Port,
    Crossbeam,
    Mpsc,
}

const PEERS: [Peer; 3] = [Peer::Port, Peer::Crossbeam, Peer::Mpsc];

impl Peer {
    fn parse(s: &str) -> Option<Peer> {
        PEERS
            .into_iter()
            .find(|p| p.name() == s || (s == "mpsc" && *p == Peer::Mpsc))
    }

    fn name(self) -> &'static str {
        match self {
            Peer::Port => "ringport",
            Peer::Crossbeam => "crossbeam",
            Peer::Mpsc => "std mpsc",
        }
    }
}

/// The flood's port limit for `workers` consumers.
fn flood_limit(args: &Args, workers: usize) -> Result<usize, String> {
    match args.limit.as_str() {
        "workers" => Ok(workers),
        "cpus" => Ok(ringport::cpu_count()),
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "--limit: {n:?} is not `workers`, `cpus` or a number of at least 1"
            )),
        },
    }
}

/// Checks the arguments and returns the peers to run.
fn validate(args: &Args) -> Result<Vec<Peer>, String> {
    flood_limit(args, 1)?;
    if args.items == 0 {
        return Err("--items must be at least 1".into());
    }
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if args.workers.is_empty() || args.workers.contains(&0) {
        return Err("--workers must list thread counts of at least 1".into());
    }
    if args.bursts == 0 || args.samples == 0 {
        return Err("--bursts and --samples must be at least 1".into());
    }
    for part in &args.only {
        if !["flood", "bursty", "latency"].contains(&part.as_str()) {
            return Err(format!(
                "--only: unknown part {part:?} (flood, bursty, latency)"
            ));
        }
    }
    let mut peers = Vec::new();
    for name in &args.peers {
        let p = Peer::parse(name)
            .ok_or_else(|| format!("--peers: unknown peer {name:?} (ringport, crossbeam, mpsc)"))?;
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    if peers.is_empty() {
        return Err("--peers must name at least one peer".into());
    }
    Ok(peers)
}

/// Prints `what` for ringport over each other peer, where both ran.
fn ratio_line(what: &str, peers: &[Peer], value: &[f64; 3]) {
    if !peers.contains(&Peer::Port) {
        return;
    }
    for &p in peers.iter().filter(|&&p| p != Peer::Port) {
        println!(
            "ringport / {}: {what} {:.2}×",
            p.name(),
            value[Peer::Port as usize] / value[p as usize]
        );
    }
}

pub fn run(args: Args) -> Result<(), String> {
    let peers = validate(&args)?;
    let wants = |p: &str| args.only.iter().any(|o| o == p);
    println!(
        "ringport bench port: {} CPUs, {} rounds interleaved, median reported",
        ringport::cpu_count(),
        args.rounds
    );
    if wants("flood") {
        flood(&args, &peers)?;
    }
    if wants("bursty") {
        bursty(&args, &peers)?;
    }
    if wants("latency") {
        latency(&args, &peers)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- resources

/// Process-wide CPU time and context switches so far.
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    switches: u64,
}

fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a live rusage for RUSAGE_SELF.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        switches: (ru.ru_nvcsw + ru.ru_nivcsw) as u64,
    }
}

/// Pins the calling thread to `cpus` (ignored where that fails).
fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity only writes the set we hand it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The first two CPUs this process may run on (fewer if it has fewer).
fn two_cpus() -> Vec<usize> {
    allowed_cpus().into_iter().take(2).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How long a run may take before it is reported as stuck.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Spawns a consumer that says on `done` when it has finished (or panicked).
fn spawn_consumer(
    done: &mpsc::Sender<()>,
    f: impl FnOnce() -> Tally + Send + 'static,
) -> thread::JoinHandle<Tally> {
    let done = done.clone();
    thread::spawn(move || {
        // Sent when the thread ends, even by a panic.
        struct Finished(mpsc::Sender<()>);
        impl Drop for Finished {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let _finished = Finished(done);
        f()
    })
}

/// What one consumer thread saw.
#[derive(Default, Clone, Copy)]
struct Tally {
    sum: u64,
    count: u64,
    sink: u64,
}

impl Tally {
    fn add(mut self, o: Tally) -> Tally {
        self.sum = self.sum.wrapping_add(o.sum);
        self.count += o.count;
        self.sink ^= o.sink;
        self
    }
}

/// One run of one peer.
struct Run {
    elapsed: Duration,
    used: Usage,
    /// Port only: parked threads released.
    wakeups: u64,
}

/// The consumer side of a run: the same loop over each peer's receive call.
/// `work` is the per-item work (besides summing the token).
fn consume(mut next: impl FnMut() -> Option<u64>, work: impl Fn(u64) -> u64) -> Tally {
    let mut t = Tally::default();
    while let Some(token) = next() {
        t.sum = t.sum.wrapping_add(token);
        t.count += 1;
        t.sink ^= work(token);
    }
    t
}

/// Runs one producer (this thread) and `workers` consumers over `peer`.
/// `produce` gets a `send` function and must send every item; the stop is
/// sent afterwards. Consumers start before the clock does.
fn run_peer<W>(
    peer: Peer,
    workers: usize,
    limit: usize,
    cpus: Option<&[usize]>,
    work: W,
    produce: impl FnOnce(&mut dyn FnMut(u64)),
) -> Result<(Run, Tally), String>
where
    W: Fn(u64) -> u64 + Send + Clone + 'static,
{
    let ready = Arc::new(Barrier::new(workers + 1));
    let pin_me = {
        let cpus: Option<Vec<usize>> = cpus.map(<[usize]>::to_vec);
        move || {
            if let Some(c) = &cpus {
                pin(c);
            }
        }
    };
    let saved = cpus.map(|_| allowed_cpus());
    pin_me();
    let mut handles = Vec::with_capacity(workers);
    let (done, finished) = mpsc::channel::<()>();
    let mut port_handle = None;
    let start;
    let before;
    match peer {
        Peer::Port => {
            let port = CompletionPort::<u64>::new(limit).map_err(|e| e.to_string())?;
            for _ in 0..workers {
                let (port, ready, work, pin_me) =
                    (port.clone(), ready.clone(), work.clone(), pin_me.clone());
                handles.push(spawn_consumer(&done, move || {
                    pin_me();
                    ready.wait();
                    consume(
                        || match port.get(None) {
                            Ok(p) if p.key != STOP => Some(p.token),
                            _ => None,
                        },
                        work,
                    )
                }));
            }
            ready.wait();
            before = usage();
            start = Instant::now();
            produce(&mut |i| port.post(0, i, Ok(0)).expect("post"));
            for _ in 0..workers {
                port.post(STOP, 0, Ok(0)).expect("post");
            }
            port_handle = Some(port);
        }
        Peer::Crossbeam => {
            let (tx, rx) = crossbeam_channel::unbounded::<Packet<u64>>();
            for _ in 0..workers {
                let (rx, ready, work, pin_me) =
                    (rx.clone(), ready.clone(), work.clone(), pin_me.clone());
                handles.push(spawn_consumer(&done, move || {
                    pin_me();
                    ready.wait();
                    consume(
                        || match rx.recv() {
                            Ok(p) if p.key != STOP => Some(p.token),
                            _ => None,
                        },
                        work,
                    )
                }));
            }
            drop(rx);
            ready.wait();
            before = usage();
            start = Instant::now();
            produce(&mut |i| tx.send(Packet::new(0, i, Ok(0))).expect("send"));
            for _ in 0..workers {
                tx.send(Packet::new(STOP, 0, Ok(0))).expect("send");
            }
        }
        Peer::Mpsc => {
            let (tx, rx) = mpsc::channel::<Packet<u64>>();
            if workers == 1 {
                let (ready, work, pin_me) = (ready.clone(), work.clone(), pin_me.clone());
                handles.push(spawn_consumer(&done, move || {
                    pin_me();
                    ready.wait();
                    consume(
                        || match rx.recv() {
                            Ok(p) if p.key != STOP => Some(p.token),
                            _ => None,
                        },
                        work,
                    )
                }));
            } else {
                // std's receiver is single-consumer: share it behind a mutex.
                let rx = Arc::new(Mutex::new(rx));
                for _ in 0..workers {
                    let (rx, ready, work, pin_me) =
                        (rx.clone(), ready.clone(), work.clone(), pin_me.clone());
                    handles.push(spawn_consumer(&done, move || {
                        pin_me();
                        ready.wait();
                        consume(
                            || {
                                let p = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                                match p {
                                    Ok(p) if p.key != STOP => Some(p.token),
                                    _ => None,
                                }
                            },
                            work,
                        )
                    }));
                }
            }
            ready.wait();
            before = usage();
            start = Instant::now();
            produce(&mut |i| tx.send(Packet::new(0, i, Ok(0))).expect("send"));
            for _ in 0..workers {
                tx.send(Packet::new(STOP, 0, Ok(0))).expect("send");
            }
        }
    }
    drop(done);
    // Wait for every consumer, but not forever: a consumer that never gets
    // its stop packet (a lost wake-up) is reported, not waited for.
    for n in 0..workers {
        if finished.recv_timeout(WATCHDOG).is_err() {
            let port = port_handle
                .as_ref()
                .map_or(String::new(), |p| format!(": {p:?}, {:?}", p.stats()));
            return Err(format!(
                "{}: only {n} of {workers} consumers finished within {} s \
                 (a consumer missed its wake-up?){port}",
                peer.name(),
                WATCHDOG.as_secs()
            ));
        }
    }
    let elapsed = start.elapsed();
    let mut total = Tally::default();
    for h in handles {
        total = total.add(h.join().map_err(|_| "a consumer panicked".to_string())?);
    }
    let after = usage();
    if let Some(all) = saved {
        // Give this thread back the CPUs it had.
        pin(&all);
    }
    let wakeups = port_handle.map_or(0, |p| p.stats().wakeups);
    Ok((
        Run {
            elapsed,
            used: Usage {
                cpu: after.cpu.saturating_sub(before.cpu),
                switches: after.switches - before.switches,
            },
            wakeups,
        },
        total,
    ))
}

fn check(peer: Peer, t: Tally, items: u64) -> Result<(), String> {
    // Tokens are 1..=items.
    let want = (items as u128 * (items as u128 + 1) / 2) as u64;
    if t.count != items || t.sum != want {
        return Err(format!(
            "{}: consumers saw {} items summing to {}, expected {items} summing to {want}",
            peer.name(),
            t.count,
            t.sum
        ));
    }
    black_box(t.sink);
    Ok(())
}

// ---------------------------------------------------------------- flood

fn flood_once(peer: Peer, items: u64, workers: usize, limit: usize) -> Result<Run, String> {
    let (run, tally) = run_peer(
        peer,
        workers,
        limit,
        None,
        |_| 0,
        |send| {
            for i in 1..=items {
                send(i)
            }
        },
    )?;
    check(peer, tally, items)?;
    Ok(run)
}

fn flood(args: &Args, peers: &[Peer]) -> Result<(), String> {
    let items = args.items;
    let per_item = |r: &Run| {
        (
            items as f64 / r.elapsed.as_secs_f64() / 1e6,
            r.used.switches as f64 / items as f64,
            r.used.cpu.as_secs_f64() * 1e6 / items as f64,
            r.wakeups as f64 / items as f64,
        )
    };
    // Warm up: threads, allocator, page faults.
    for &peer in peers {
        flood_once(peer, items.min(100_000), 2, 2)?;
    }
    let mut runs: Vec<Vec<Vec<Run>>> = args
        .workers
        .iter()
        .map(|_| peers.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.rounds {
        for (wi, &w) in args.workers.iter().enumerate() {
            for (pi, &peer) in peers.iter().enumerate() {
                let r = flood_once(peer, items, w, flood_limit(args, w)?)?;
                let (rate, cs, cpu, wake) = per_item(&r);
                eprintln!(
                    "flood round {}/{} {w} workers {:<10} {rate:>7.2} M/s \
                     {cs:.4} switches/item {cpu:.3} CPU µs/item {wake:.4} wake-ups/item",
                    round + 1,
                    args.rounds,
                    peer.name(),
                );
                runs[wi][pi].push(r);
            }
        }
    }

    println!();
    println!(
        "## Flood: {items} packets from one producer through N consumers \
         (port limit = {}; median of {} interleaved rounds)",
        match args.limit.as_str() {
            "workers" => "N".to_string(),
            "cpus" => format!("CPUs = {}", ringport::cpu_count()),
            n => n.to_string(),
        },
        args.rounds
    );
    println!();
    println!(
        "| consumers | peer | M items/s (median) | min–max | ctx switches/item | CPU µs/item | port wake-ups/item |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut meds = Vec::new();
    for (wi, &w) in args.workers.iter().enumerate() {
        let mut med = [f64::NAN; 3];
        for (pi, &peer) in peers.iter().enumerate() {
            let figures: Vec<_> = runs[wi][pi].iter().map(per_item).collect();
            let rates: Vec<f64> = figures.iter().map(|f| f.0).collect();
            let lo = rates.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().cloned().fold(0.0, f64::max);
            med[peer as usize] = median(rates);
            let cs = median(figures.iter().map(|f| f.1).collect());
            let cpu = median(figures.iter().map(|f| f.2).collect());
            let wake = if peer == Peer::Port {
                format!("{:.4}", median(figures.iter().map(|f| f.3).collect()))
            } else {
                "–".into()
            };
            println!(
                "| {w} | {} | {:.2} | {lo:.2}–{hi:.2} | {cs:.4} | {cpu:.3} | {wake} |",
                peer.name(),
                med[peer as usize]
            );
        }
        meds.push((w, med));
    }
    let others: Vec<Peer> = peers.iter().copied().filter(|&p| p != Peer::Port).collect();
    if peers.contains(&Peer::Port) && !others.is_empty() {
        println!();
        let head: Vec<String> = others
            .iter()
            .map(|p| format!("ringport / {}", p.name()))
            .collect();
        println!("| consumers | {} |", head.join(" | "));
        println!("|---|{}", "---|".repeat(others.len()));
        for (w, med) in meds {
            let cells: Vec<String> = others
                .iter()
                .map(|&p| format!("{:.2}×", med[Peer::Port as usize] / med[p as usize]))
                .collect();
            println!("| {w} | {} |", cells.join(" | "));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- bursty

/// A dependent chain of multiply-adds that the optimiser cannot skip.
fn spin(iters: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iters {
        x = black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

/// Iterations of [`spin`] that take about one microsecond here.
fn calibrate() -> u64 {
    let probe = 2_000_000;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        black_box(spin(probe, 1));
        best = best.min(t.elapsed());
    }
    ((probe as f64 / (best.as_secs_f64() * 1e6)).round() as u64).max(1)
}

fn bursty_once(peer: Peer, bursts: u64, iters: u64, cpus: &[usize]) -> Result<Run, String> {
    let items = bursts * BURST;
    let (run, tally) = run_peer(
        peer,
        BURSTY_WORKERS,
        BURSTY_LIMIT,
        Some(cpus),
        move |token| spin(iters, token),
        |send| {
            let t0 = Instant::now();
            let mut i = 0;
            for b in 0..bursts {
                for _ in 0..BURST {
                    i += 1;
                    send(i);
                }
                let next = t0 + PERIOD * (b as u32 + 1);
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
            }
        },
    )?;
    check(peer, tally, items)?;
    Ok(run)
}

fn bursty(args: &Args, peers: &[Peer]) -> Result<(), String> {
    let iters = calibrate();
    let cpus = two_cpus();
    let items = args.bursts * BURST;
    let per_item = |r: &Run| {
        (
            r.used.switches as f64 / items as f64,
            r.used.cpu.as_secs_f64() * 1e6 / items as f64,
            r.wakeups as f64 / items as f64,
            r.elapsed.as_secs_f64() * 1e3,
        )
    };
    eprintln!("bursty: {iters} spin iterations ≈ 1 µs; threads pinned to CPUs {cpus:?}");
    for &peer in peers {
        bursty_once(peer, args.bursts.min(200), iters, &cpus)?;
    }
    let mut runs: Vec<Vec<Run>> = peers.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (pi, &peer) in peers.iter().enumerate() {
            let r = bursty_once(peer, args.bursts, iters, &cpus)?;
            let (cs, cpu, wake, _) = per_item(&r);
            eprintln!(
                "bursty round {}/{} {:<10} {cs:.4} switches/item {cpu:.3} CPU µs/item \
                 {wake:.4} wake-ups/item",
                round + 1,
                args.rounds,
                peer.name(),
            );
            runs[pi].push(r);
        }
    }
    println!();
    println!(
        "## Bursty: {BURST} items every {} µs, ~1 µs of work each, {BURSTY_WORKERS} workers on \
         CPUs {cpus:?}, port limit {BURSTY_LIMIT}; {items} items a run, median of {} rounds",
        PERIOD.as_micros(),
        args.rounds
    );
    println!();
    println!("| peer | ctx switches/item | CPU µs/item | wall ms | port wake-ups/item |");
    println!("|---|---|---|---|---|");
    let mut cs_med = [f64::NAN; 3];
    let mut cpu_med = [f64::NAN; 3];
    for (pi, &peer) in peers.iter().enumerate() {
        let figures: Vec<_> = runs[pi].iter().map(per_item).collect();
        let cs = median(figures.iter().map(|f| f.0).collect());
        let cpu = median(figures.iter().map(|f| f.1).collect());
        let wall = median(figures.iter().map(|f| f.3).collect());
        let wake = if peer == Peer::Port {
            format!("{:.4}", median(figures.iter().map(|f| f.2).collect()))
        } else {
            "–".into()
        };
        println!(
            "| {} | {cs:.4} | {cpu:.3} | {wall:.1} | {wake} |",
            peer.name()
        );
        cs_med[peer as usize] = cs;
        cpu_med[peer as usize] = cpu;
    }
    println!();
    ratio_line("context switches per item", peers, &cs_med);
    ratio_line("CPU per item", peers, &cpu_med);
    Ok(())
}

// ---------------------------------------------------------------- latency

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds")
}

/// A stamped item, or `None` for the stop.
type Stamped = Packet<Option<Instant>>;

/// One consumer, parked; `samples` posts, each after a pause, stamped with
/// the time just before the post. Returns the post-to-wake delays in ns.
fn latency_once(peer: Peer, samples: u64) -> Result<Histogram<u64>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let h = match peer {
        Peer::Port => {
            let port = CompletionPort::<Option<Instant>>::new(1).map_err(|e| err(&e))?;
            let rx = port.clone();
            measure_latency(
                samples,
                move || rx.get(None).ok(),
                |p| port.post_packet(p).map_err(|e| err(&e)),
            )?
        }
        Peer::Crossbeam => {
            let (tx, rx) = crossbeam_channel::unbounded::<Stamped>();
            measure_latency(
                samples,
                move || rx.recv().ok(),
                |p| tx.send(p).map_err(|e| err(&e)),
            )?
        }
        Peer::Mpsc => {
            let (tx, rx) = mpsc::channel::<Stamped>();
            measure_latency(
                samples,
                move || rx.recv().ok(),
                |p| tx.send(p).map_err(|e| err(&e)),
            )?
        }
    };
    if h.len() != samples {
        return Err(format!(
            "{}: {} latency samples, expected {samples}",
            peer.name(),
            h.len()
        ));
    }
    Ok(h)
}

/// A consumer thread records, for every stamped item `recv` gives it, the
/// time since its stamp; the caller's thread `send`s `samples` of them, one
/// after each pause, then the stop.
fn measure_latency(
    samples: u64,
    mut recv: impl FnMut() -> Option<Stamped> + Send + 'static,
    mut send: impl FnMut(Stamped) -> Result<(), String>,
) -> Result<Histogram<u64>, String> {
    let ready = Arc::new(Barrier::new(2));
    let r = ready.clone();
    let consumer = thread::spawn(move || {
        let mut h = new_histogram();
        r.wait();
        while let Some(Packet { token: Some(t), .. }) = recv() {
            h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        }
        h
    });
    ready.wait();
    for _ in 0..samples {
        thread::sleep(LATENCY_PAUSE);
        send(Packet::new(0, Some(Instant::now()), Ok(0)))?;
    }
    send(Packet::new(STOP, None, Ok(0)))?;
    consumer
        .join()
        .map_err(|_| "the latency consumer panicked".to_string())
}

fn latency(args: &Args, peers: &[Peer]) -> Result<(), String> {
    let mut hists: Vec<Histogram<u64>> = peers.iter().map(|_| new_histogram()).collect();
    for round in 0..args.rounds {
        for (pi, &peer) in peers.iter().enumerate() {
            let h = latency_once(peer, args.samples)?;
            eprintln!(
                "latency round {}/{} {:<10} p50 {:.1} µs p99 {:.1} µs",
                round + 1,
                args.rounds,
                peer.name(),
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3
            );
            hists[pi].add(&h).map_err(|e| e.to_string())?;
        }
    }
    println!();
    println!(
        "## Post-to-wake latency: one consumer parked, a post every ~{} µs, \
         {} samples per peer ({} interleaved rounds)",
        LATENCY_PAUSE.as_micros(),
        args.samples * args.rounds as u64,
        args.rounds
    );
    println!();
    println!("| peer | p50 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---|---|---|---|");
    let us = |v: u64| v as f64 / 1e3;
    let mut p50 = [f64::NAN; 3];
    let mut p99 = [f64::NAN; 3];
    for (pi, &peer) in peers.iter().enumerate() {
        let h = &hists[pi];
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            peer.name(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max())
        );
        p50[peer as usize] = h.value_at_quantile(0.5) as f64;
        p99[peer as usize] = h.value_at_quantile(0.99) as f64;
    }
    println!();
    ratio_line("p50 (lower is better)", peers, &p50);
    ratio_line("p99 (lower is better)", peers, &p99);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_delivers_every_item_once() {
        for peer in PEERS {
            for w in [1, 3] {
                flood_once(peer, 10_000, w, w).unwrap();
                flood_once(peer, 10_000, w, 1).unwrap();
            }
            bursty_once(peer, 5, 1, &two_cpus()).unwrap();
            assert_eq!(latency_once(peer, 3).unwrap().len(), 3);
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
