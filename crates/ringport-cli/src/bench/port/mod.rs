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

use ringport::{CompletionPort, Packet};

use crate::measure::{allowed_cpus, context_switches, cpu_time, pin, Scope};
use crate::report::{Cell, Chart, Report, Table};

mod bursty;
mod flood;
mod latency;

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
    /// Only these peers: ringport, crossbeam (carrying what a user would
    /// send: key, token and result), crossbeam-packet (carrying ringport's
    /// whole Packet), mpsc (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ringport,crossbeam,crossbeam-packet,mpsc"
    )]
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
    /// crossbeam-channel carrying (key, token, `io::Result<usize>`): what a
    /// user who picked it would send.
    Crossbeam,
    /// crossbeam-channel carrying ringport's whole [`Packet`].
    CrossbeamPacket,
    Mpsc,
}

const PEERS: [Peer; 4] = [
    Peer::Port,
    Peer::Crossbeam,
    Peer::CrossbeamPacket,
    Peer::Mpsc,
];

/// A figure per peer, indexed by `Peer as usize`.
type PerPeer = [f64; PEERS.len()];

/// What the crossbeam peer carries.
type Fields<T> = (u64, T, std::io::Result<usize>);

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
            Peer::CrossbeamPacket => "crossbeam-packet",
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
        let p = Peer::parse(name).ok_or_else(|| {
            format!("--peers: unknown peer {name:?} (ringport, crossbeam, crossbeam-packet, mpsc)")
        })?;
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    if peers.is_empty() {
        return Err("--peers must name at least one peer".into());
    }
    Ok(peers)
}

/// ringport's ratio to each other peer on each figure (`name`, value per
/// peer), where ringport ran.
fn ratio_table(title: &str, peers: &[Peer], figures: &[(&str, &PerPeer)]) -> Option<Table> {
    let others: Vec<Peer> = peers.iter().copied().filter(|&p| p != Peer::Port).collect();
    if !peers.contains(&Peer::Port) || others.is_empty() {
        return None;
    }
    let mut columns = vec!["figure".to_string()];
    columns.extend(others.iter().map(|p| format!("ringport / {}", p.name())));
    let mut t = Table {
        title: title.into(),
        columns,
        ..Table::default()
    };
    for (what, value) in figures {
        let mut row = vec![Cell::text(*what)];
        row.extend(
            others
                .iter()
                .map(|&p| Cell::ratio(value[Peer::Port as usize] / value[p as usize])),
        );
        t.row(row);
    }
    Some(t)
}

/// The chart of ringport over each other peer on `figure` of `part`.
fn chart(
    title: &str,
    part: &str,
    figure: &str,
    higher: bool,
    cases: &[String],
    peers: &[Peer],
) -> Chart {
    let names: Vec<&str> = peers.iter().map(|p| p.name()).collect();
    let ours: &[&str] = if peers.contains(&Peer::Port) {
        &["ringport"]
    } else {
        &[]
    };
    Chart::new(title, part, figure, higher, cases, ours, &names)
}

pub fn run(mut args: Args, quick: bool, report: &mut Report) -> Result<(), String> {
    if quick {
        args.items = 20_000;
        args.rounds = 1;
        args.workers = vec![1, 2];
        args.bursts = 20;
        args.samples = 200;
    }
    let peers = validate(&args)?;
    let wants = |p: &str| args.only.iter().any(|o| o == p);
    report.say(format!(
        "ringport bench port: {} CPUs, {} rounds interleaved, median reported",
        ringport::cpu_count(),
        args.rounds
    ));
    if wants("flood") {
        flood::flood(&args, &peers, report)?;
    }
    if wants("bursty") {
        bursty::bursty(&args, &peers, report)?;
    }
    if wants("latency") {
        latency::latency(&args, &peers, report)?;
    }
    Ok(())
}

/// Process-wide CPU time and context switches so far.
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    switches: u64,
}

fn usage() -> Usage {
    Usage {
        cpu: cpu_time(Scope::Process),
        switches: context_switches(),
    }
}

/// The first two CPUs this process may run on (fewer if it has fewer).
fn two_cpus() -> Vec<usize> {
    allowed_cpus().into_iter().take(2).collect()
}

/// How long a run may take before it is reported as stuck.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Spawns a consumer that says on `done` when it has finished (or panicked).
fn spawn_consumer(
    done: &mpsc::Sender<()>,
    f: impl FnOnce() -> ConsumerTally + Send + 'static,
) -> thread::JoinHandle<ConsumerTally> {
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
struct ConsumerTally {
    sum: u64,
    count: u64,
    sink: u64,
}

impl ConsumerTally {
    fn add(mut self, o: ConsumerTally) -> ConsumerTally {
        self.sum = self.sum.wrapping_add(o.sum);
        self.count += o.count;
        self.sink ^= o.sink;
        self
    }
}

/// One run of one peer.
struct PortRun {
    elapsed: Duration,
    used: Usage,
    /// Port only: parked threads released.
    wakeups: u64,
}

/// The consumer side of a run: the same loop over each peer's receive call
/// (`next`, None when the peer is closed). `work` is the per-item work
/// (besides summing the token).
fn consume(
    mut next: impl FnMut() -> Option<(u64, u64)>,
    work: impl Fn(u64) -> u64,
) -> ConsumerTally {
    let mut t = ConsumerTally::default();
    while let Some((key, token)) = next() {
        if key == STOP {
            break;
        }
        t.sum = t.sum.wrapping_add(token);
        t.count += 1;
        t.sink ^= work(token);
    }
    t
}

/// A consumer's receive call, made on its own thread: the key and token of
/// what each peer carries.
type Next = Box<dyn FnMut() -> Option<(u64, u64)> + Send>;
/// The producer's send of a key and token (with an `Ok(0)` result).
type Post = Box<dyn FnMut(u64, u64)>;

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
) -> Result<(PortRun, ConsumerTally), String>
where
    W: Fn(u64) -> u64 + Send + Clone + 'static,
{
    let saved = cpus.map(|_| allowed_cpus());
    let cpus: Option<Vec<usize>> = cpus.map(<[usize]>::to_vec);
    if let Some(c) = &cpus {
        pin(c);
    }
    // Each peer gives a receive call per consumer and a send for this
    // thread; the rest of the run is the same for all.
    let mut port_handle = None;
    let (mut nexts, mut send): (Vec<Next>, Post) = match peer {
        Peer::Port => {
            let port = CompletionPort::<u64>::new(limit).map_err(|e| e.to_string())?;
            port_handle = Some(port.clone());
            let nexts = (0..workers)
                .map(|_| {
                    let port = port.clone();
                    Box::new(move || port.get(None).ok().map(|p| (p.key, p.token))) as Next
                })
                .collect();
            (
                nexts,
                Box::new(move |k, t| port.post(k, t, Ok(0)).expect("post")),
            )
        }
        Peer::Crossbeam => {
            let (tx, rx) = crossbeam_channel::unbounded::<Fields<u64>>();
            let nexts = (0..workers)
                .map(|_| {
                    let rx = rx.clone();
                    Box::new(move || rx.recv().ok().map(|(k, t, _)| (k, t))) as Next
                })
                .collect();
            (
                nexts,
                Box::new(move |k, t| tx.send((k, t, Ok(0))).expect("send")),
            )
        }
        Peer::CrossbeamPacket => {
            let (tx, rx) = crossbeam_channel::unbounded::<Packet<u64>>();
            let nexts = (0..workers)
                .map(|_| {
                    let rx = rx.clone();
                    Box::new(move || rx.recv().ok().map(|p| (p.key, p.token))) as Next
                })
                .collect();
            (
                nexts,
                Box::new(move |k, t| tx.send(Packet::new(k, t, Ok(0))).expect("send")),
            )
        }
        Peer::Mpsc if workers == 1 => {
            let (tx, rx) = mpsc::channel::<Packet<u64>>();
            let next = Box::new(move || rx.recv().ok().map(|p| (p.key, p.token))) as Next;
            (
                vec![next],
                Box::new(move |k, t| tx.send(Packet::new(k, t, Ok(0))).expect("send")),
            )
        }
        Peer::Mpsc => {
            // std's receiver is single-consumer: share it behind a mutex.
            let (tx, rx) = mpsc::channel::<Packet<u64>>();
            let rx = Arc::new(Mutex::new(rx));
            let nexts = (0..workers)
                .map(|_| {
                    let rx = rx.clone();
                    Box::new(move || {
                        let p = rx.lock().unwrap_or_else(|e| e.into_inner()).recv().ok();
                        p.map(|p| (p.key, p.token))
                    }) as Next
                })
                .collect();
            (
                nexts,
                Box::new(move |k, t| tx.send(Packet::new(k, t, Ok(0))).expect("send")),
            )
        }
    };
    let ready = Arc::new(Barrier::new(workers + 1));
    let (done, finished) = mpsc::channel::<()>();
    let handles: Vec<_> = nexts
        .drain(..)
        .map(|next| {
            let (ready, work, cpus) = (ready.clone(), work.clone(), cpus.clone());
            spawn_consumer(&done, move || {
                if let Some(c) = &cpus {
                    pin(c);
                }
                ready.wait();
                consume(next, work)
            })
        })
        .collect();
    drop(done);
    ready.wait();
    let before = usage();
    let start = Instant::now();
    produce(&mut |i| send(0, i));
    for _ in 0..workers {
        send(STOP, 0);
    }
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
    let mut total = ConsumerTally::default();
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
        PortRun {
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

fn check(peer: Peer, t: ConsumerTally, items: u64) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::bursty::bursty_once;
    use super::flood::flood_once;
    use super::latency::latency_once;
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
}
