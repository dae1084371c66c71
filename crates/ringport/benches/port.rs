//! The completion port against crossbeam-channel, interleaved, medians.
//!
//! `cargo bench -p ringport --bench port [-- --rounds 3 --items 1000000
//! --only flood,bursty,latency --workers 1,2,4 --bursts 1000 --samples 3000]`
//!
//! Peers, in the same process, round after round (A B C A B C …):
//! - `ringport`: `CompletionPort<u64>`, `post(key, token, Ok(0))` and `get(None)`;
//! - `cb-fields`: crossbeam-channel (unbounded) carrying what a user would send,
//!   `(key: u64, token: u64, result: io::Result<usize>)`;
//! - `cb-packet`: crossbeam-channel carrying ringport's whole `Packet<u64>`.
//!
//! Measurements:
//! - **flood**: one producer sends `--items` items as fast as it can through 1,
//!   2 and 4 consumers (port limit = consumers). Rate, CPU µs and context
//!   switches per item (`getrusage(RUSAGE_SELF)`, the producer included).
//! - **bursty**: 64 items every 200 µs, ~1 µs of work each, 4 workers, every
//!   thread pinned to two CPUs, port limit 2: CPU µs and context switches
//!   per item.
//! - **latency**: one consumer parked; a post every ~100 µs stamped with the
//!   time just before it; the consumer records post-to-wake time. p50/p99.
//!
//! Ratios are ringport ÷ peer, of the medians, and (in brackets) the median
//! of the per-round ratios (each round's peers ran back to back).

use std::hint::black_box;
use std::io;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ringport::{CompletionPort, Packet};

const STOP: u64 = u64::MAX;
const BURST: u64 = 64;
const PERIOD: Duration = Duration::from_micros(200);
const BURSTY_WORKERS: usize = 4;
const BURSTY_LIMIT: usize = 2;
const LATENCY_PAUSE: Duration = Duration::from_micros(100);
const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Port,
    /// The port through `get_many` (32 slots), the batch path; flood only.
    PortMany,
    CbFields,
    CbPacket,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Port => "ringport",
            Peer::PortMany => "ringport-get_many",
            Peer::CbFields => "cb-fields",
            Peer::CbPacket => "cb-packet",
        }
    }
}

const PEERS: [Peer; 3] = [Peer::Port, Peer::CbFields, Peer::CbPacket];
const FLOOD_PEERS: [Peer; 4] = [Peer::Port, Peer::CbFields, Peer::CbPacket, Peer::PortMany];

/// What a user sends over a channel instead of a port.
type Fields = (u64, u64, io::Result<usize>);

struct Args {
    rounds: usize,
    items: u64,
    workers: Vec<usize>,
    bursts: u64,
    samples: u64,
    only: Vec<String>,
    /// `--loop PEER --reps R`: one thread posts 1,000 items and takes them,
    /// R times (for callgrind: instructions per item = the difference of two
    /// runs' totals over the difference of their items).
    lp: Option<(String, u64)>,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        items: 1_000_000,
        workers: vec![1, 2, 4],
        bursts: 1_000,
        samples: 3_000,
        only: vec!["flood".into(), "bursty".into(), "latency".into()],
        lp: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().cloned().unwrap_or_default();
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--items" => a.items = v().parse().expect("--items N"),
            "--bursts" => a.bursts = v().parse().expect("--bursts N"),
            "--samples" => a.samples = v().parse().expect("--samples N"),
            "--workers" => {
                a.workers = v()
                    .split(',')
                    .map(|s| s.parse().expect("--workers 1,2,4"))
                    .collect()
            }
            "--only" => a.only = v().split(',').map(str::to_owned).collect(),
            "--loop" => a.lp = Some((v(), a.lp.as_ref().map_or(1000, |l| l.1))),
            "--reps" => {
                let r = v().parse().expect("--reps N");
                a.lp = Some((a.lp.take().map_or_else(String::new, |l| l.0), r));
            }
            _ => {} // `--bench` and the like, from cargo
        }
    }
    a
}

#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    switches: u64,
    /// Of those, voluntary (the thread blocked; the rest are preemptions).
    voluntary: u64,
}

fn usage() -> Usage {
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the live struct we hand it.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        switches: (ru.ru_nvcsw + ru.ru_nivcsw) as u64,
        voluntary: ru.ru_nvcsw as u64,
    }
}

fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read or
    // write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `pin`: the set is ours and zeroed before use.
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A dependent chain of multiply-adds the optimiser cannot skip.
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

struct Run {
    elapsed: Duration,
    used: Usage,
    wakeups: u64,
}

/// One producer (this thread) and `workers` consumers over `peer`; every
/// consumer runs `work` on each token and the sum of tokens is checked.
fn run_peer(
    peer: Peer,
    workers: usize,
    limit: usize,
    cpus: Option<&[usize]>,
    work: impl Fn(u64) -> u64 + Send + Clone + 'static,
    produce: impl FnOnce(&mut dyn FnMut(u64)) -> u64,
) -> Run {
    let saved = allowed_cpus();
    let cpus: Option<Vec<usize>> = cpus.map(<[usize]>::to_vec);
    if let Some(c) = &cpus {
        pin(c);
    }
    let ready = Arc::new(Barrier::new(workers + 1));
    let (done, finished) = mpsc::channel::<()>();
    let mut handles = Vec::new();
    let mut port_handle = None;
    // Each consumer: pin, wait for the start, loop over `next`.
    let spawn = |next: Box<dyn FnMut() -> Option<u64> + Send>,
                 handles: &mut Vec<thread::JoinHandle<(u64, u64, u64)>>| {
        let (ready, done, work, cpus) = (ready.clone(), done.clone(), work.clone(), cpus.clone());
        handles.push(thread::spawn(move || {
            struct Finished(mpsc::Sender<()>);
            impl Drop for Finished {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            let _f = Finished(done);
            if let Some(c) = &cpus {
                pin(c);
            }
            let mut next = next;
            ready.wait();
            let (mut sum, mut count, mut sink) = (0u64, 0u64, 0u64);
            while let Some(t) = next() {
                sum = sum.wrapping_add(t);
                count += 1;
                sink ^= work(t);
            }
            (sum, count, sink)
        }));
    };
    let before;
    let start;
    let items;
    match peer {
        Peer::Port => {
            let port = CompletionPort::<u64>::new(limit).expect("port");
            for _ in 0..workers {
                let port = port.clone();
                spawn(
                    Box::new(move || match port.get(None) {
                        Ok(p) if p.key != STOP => Some(p.token),
                        _ => None,
                    }),
                    &mut handles,
                );
            }
            ready.wait();
            before = usage();
            start = Instant::now();
            items = produce(&mut |i| port.post(0, i, Ok(0)).expect("post"));
            for _ in 0..workers {
                port.post(STOP, 0, Ok(0)).expect("post");
            }
            port_handle = Some(port);
        }
        Peer::PortMany => {
            let port = CompletionPort::<u64>::new(limit).expect("port");
            for _ in 0..workers {
                let port = port.clone();
                let mut slots: Vec<Option<Packet<u64>>> = (0..32).map(|_| None).collect();
                let mut pending = std::collections::VecDeque::with_capacity(32);
                let mut stopping = false;
                spawn(
                    Box::new(move || loop {
                        if let Some(t) = pending.pop_front() {
                            return Some(t);
                        }
                        if stopping {
                            return None;
                        }
                        let k = port.get_many(&mut slots, None).ok()?;
                        for s in &mut slots[..k] {
                            let p = s.take().expect("a packet");
                            if p.key != STOP {
                                pending.push_back(p.token);
                            } else if stopping {
                                // Another consumer's stop: give it back.
                                port.post(STOP, 0, Ok(0)).expect("post");
                            } else {
                                stopping = true;
                            }
                        }
                    }),
                    &mut handles,
                );
            }
            ready.wait();
            before = usage();
            start = Instant::now();
            items = produce(&mut |i| port.post(0, i, Ok(0)).expect("post"));
            for _ in 0..workers {
                port.post(STOP, 0, Ok(0)).expect("post");
            }
            port_handle = Some(port);
        }
        Peer::CbFields => {
            let (tx, rx) = crossbeam_channel::unbounded::<Fields>();
            for _ in 0..workers {
                let rx = rx.clone();
                spawn(
                    Box::new(move || match rx.recv() {
                        Ok((k, t, r)) if k != STOP => {
                            black_box(&r);
                            Some(t)
                        }
                        _ => None,
                    }),
                    &mut handles,
                );
            }
            ready.wait();
            before = usage();
            start = Instant::now();
            items = produce(&mut |i| tx.send((0, i, Ok(0))).expect("send"));
            for _ in 0..workers {
                tx.send((STOP, 0, Ok(0))).expect("send");
            }
        }
        Peer::CbPacket => {
            let (tx, rx) = crossbeam_channel::unbounded::<Packet<u64>>();
            for _ in 0..workers {
                let rx = rx.clone();
                spawn(
                    Box::new(move || match rx.recv() {
                        Ok(p) if p.key != STOP => Some(p.token),
                        _ => None,
                    }),
                    &mut handles,
                );
            }
            ready.wait();
            before = usage();
            start = Instant::now();
            items = produce(&mut |i| tx.send(Packet::new(0, i, Ok(0))).expect("send"));
            for _ in 0..workers {
                tx.send(Packet::new(STOP, 0, Ok(0))).expect("send");
            }
        }
    }
    drop(done);
    for n in 0..workers {
        if finished.recv_timeout(WATCHDOG).is_err() {
            let extra = port_handle
                .as_ref()
                .map_or(String::new(), |p| format!(": {p:?} {:?}", p.stats()));
            panic!(
                "{}: only {n} of {workers} consumers finished (lost wake-up?){extra}",
                peer.name()
            );
        }
    }
    let elapsed = start.elapsed();
    let (mut sum, mut count, mut sink) = (0u64, 0u64, 0u64);
    for h in handles {
        let (s, c, k) = h.join().expect("consumer panicked");
        sum = sum.wrapping_add(s);
        count += c;
        sink ^= k;
    }
    black_box(sink);
    let after = usage();
    pin(&saved);
    let want = (items as u128 * (items as u128 + 1) / 2) as u64;
    assert_eq!((count, sum), (items, want), "{}: items lost", peer.name());
    Run {
        elapsed,
        used: Usage {
            cpu: after.cpu.saturating_sub(before.cpu),
            switches: after.switches - before.switches,
            voluntary: after.voluntary - before.voluntary,
        },
        wakeups: port_handle.map_or(0, |p| p.stats().wakeups),
    }
}

/// Prints "ringport / peer" for a figure: ratio of the medians and the
/// median of per-round ratios.
fn ratios(what: &str, per_round: &[Vec<f64>]) {
    ratios_of(what, &PEERS, 0, per_round)
}

/// Prints `peers[mine]` ÷ each crossbeam peer: the ratio of the medians and
/// the median of per-round ratios.
fn ratios_of(what: &str, peers: &[Peer], mine: usize, per_round: &[Vec<f64>]) {
    for (pi, &peer) in peers.iter().enumerate() {
        if !matches!(peer, Peer::CbFields | Peer::CbPacket) {
            continue;
        }
        let of_medians = median(per_round[mine].clone()) / median(per_round[pi].clone());
        let per: Vec<f64> = per_round[mine]
            .iter()
            .zip(&per_round[pi])
            .map(|(a, b)| a / b)
            .collect();
        println!(
            "{} / {}: {what} {of_medians:.2}× (per-round median {:.2}×)",
            peers[mine].name(),
            peer.name(),
            median(per)
        );
    }
}

fn flood(a: &Args) {
    println!(
        "\n## Flood: {} items from one producer through N consumers (port limit N), \
         median of {} interleaved rounds\n",
        a.items, a.rounds
    );
    let items = a.items;
    let produce = move |send: &mut dyn FnMut(u64)| {
        for i in 1..=items {
            send(i);
        }
        items
    };
    for &w in &a.workers {
        // warm-up
        for &p in &FLOOD_PEERS {
            run_peer(
                p,
                w,
                w,
                None,
                |_| 0,
                |s| {
                    for i in 1..=10_000 {
                        s(i)
                    }
                    10_000
                },
            );
        }
        let mut rate: Vec<Vec<f64>> = vec![Vec::new(); FLOOD_PEERS.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); FLOOD_PEERS.len()];
        let mut cs: Vec<Vec<f64>> = vec![Vec::new(); FLOOD_PEERS.len()];
        for round in 0..a.rounds {
            for (pi, &p) in FLOOD_PEERS.iter().enumerate() {
                let r = run_peer(p, w, w, None, |_| 0, produce);
                let m = items as f64 / r.elapsed.as_secs_f64() / 1e6;
                rate[pi].push(m);
                cpu[pi].push(r.used.cpu.as_secs_f64() * 1e6 / items as f64);
                cs[pi].push(r.used.switches as f64 / items as f64);
                eprintln!(
                    "flood {w} consumers round {} {:<9} {m:6.2} M/s {:.3} CPU µs/item \
                     {:.4} cs/item wake-ups {}",
                    round + 1,
                    p.name(),
                    cpu[pi][round],
                    cs[pi][round],
                    r.wakeups
                );
            }
        }
        println!(
            "| consumers | peer | M items/s (median) | min–max | CPU µs/item | ctx switches/item |"
        );
        println!("|---|---|---|---|---|---|");
        for (pi, &p) in FLOOD_PEERS.iter().enumerate() {
            let lo = rate[pi].iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rate[pi].iter().copied().fold(0.0, f64::max);
            println!(
                "| {w} | {} | {:.2} | {lo:.2}–{hi:.2} | {:.3} | {:.4} |",
                p.name(),
                median(rate[pi].clone()),
                median(cpu[pi].clone()),
                median(cs[pi].clone()),
            );
        }
        println!();
        for mine in [0, 3] {
            ratios_of(&format!("{w} consumers, rate"), &FLOOD_PEERS, mine, &rate);
        }
        println!();
    }
}

fn bursty(a: &Args) {
    let iters = calibrate();
    let cpus: Vec<usize> = allowed_cpus().into_iter().take(2).collect();
    let items = a.bursts * BURST;
    let bursts = a.bursts;
    let produce = move |send: &mut dyn FnMut(u64)| {
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
        i
    };
    println!(
        "\n## Bursty: {BURST} items every {} µs, ~1 µs of work each ({iters} spins), \
         {BURSTY_WORKERS} workers on CPUs {cpus:?}, port limit {BURSTY_LIMIT}; {items} items a run, \
         median of {} interleaved rounds\n",
        PERIOD.as_micros(),
        a.rounds
    );
    let work = move |t| spin(iters, t);
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
    let mut cs: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
    let mut vol: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
    let mut wake = Vec::new();
    for round in 0..a.rounds {
        for (pi, &p) in PEERS.iter().enumerate() {
            let r = run_peer(p, BURSTY_WORKERS, BURSTY_LIMIT, Some(&cpus), work, produce);
            cpu[pi].push(r.used.cpu.as_secs_f64() * 1e6 / items as f64);
            cs[pi].push(r.used.switches as f64 / items as f64);
            vol[pi].push(r.used.voluntary as f64 / items as f64);
            if p == Peer::Port {
                wake.push(r.wakeups as f64 / items as f64);
            }
            eprintln!(
                "bursty round {} {:<9} {:.3} CPU µs/item {:.4} cs/item ({:.4} voluntary)",
                round + 1,
                p.name(),
                cpu[pi][round],
                cs[pi][round],
                vol[pi][round]
            );
        }
    }
    println!("| peer | CPU µs/item | ctx switches/item | of which voluntary |");
    println!("|---|---|---|---|");
    for (pi, &p) in PEERS.iter().enumerate() {
        println!(
            "| {} | {:.3} | {:.4} | {:.4} |",
            p.name(),
            median(cpu[pi].clone()),
            median(cs[pi].clone()),
            median(vol[pi].clone())
        );
    }
    println!("\nport wake-ups per item: {:.4}\n", median(wake));
    ratios("CPU per item", &cpu);
    ratios("context switches per item", &cs);
    ratios("voluntary context switches per item", &vol);
}

/// Post-to-wake delays in ns, sorted.
fn latency_once(peer: Peer, samples: u64) -> Vec<u64> {
    let ready = Arc::new(Barrier::new(2));
    let r = ready.clone();
    type Recv = Box<dyn FnMut() -> Option<(u64, Option<Instant>)> + Send>;
    type Send_ = Box<dyn FnMut(u64, Option<Instant>)>;
    let (mut recv, mut send): (Recv, Send_) = match peer {
        Peer::Port | Peer::PortMany => {
            let port = CompletionPort::<Option<Instant>>::new(1).expect("port");
            let rx = port.clone();
            (
                Box::new(move || rx.get(None).ok().map(|p| (p.key, p.token))),
                Box::new(move |k, t| port.post(k, t, Ok(0)).expect("post")),
            )
        }
        Peer::CbFields => {
            let (tx, rx) =
                crossbeam_channel::unbounded::<(u64, Option<Instant>, io::Result<usize>)>();
            (
                Box::new(move || rx.recv().ok().map(|(k, t, _)| (k, t))),
                Box::new(move |k, t| tx.send((k, t, Ok(0))).expect("send")),
            )
        }
        Peer::CbPacket => {
            let (tx, rx) = crossbeam_channel::unbounded::<Packet<Option<Instant>>>();
            (
                Box::new(move || rx.recv().ok().map(|p| (p.key, p.token))),
                Box::new(move |k, t| tx.send(Packet::new(k, t, Ok(0))).expect("send")),
            )
        }
    };
    let consumer = thread::spawn(move || {
        let mut v = Vec::with_capacity(samples as usize);
        r.wait();
        while let Some((k, Some(t))) = recv() {
            if k == STOP {
                break;
            }
            v.push(t.elapsed().as_nanos() as u64);
        }
        v
    });
    ready.wait();
    for _ in 0..samples {
        thread::sleep(LATENCY_PAUSE);
        send(0, Some(Instant::now()));
    }
    send(STOP, None);
    let mut v = consumer.join().expect("latency consumer");
    assert_eq!(v.len() as u64, samples, "{}: samples lost", peer.name());
    v.sort_unstable();
    v
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1e3
}

fn latency(a: &Args) {
    println!(
        "\n## Post-to-wake latency: one consumer parked, a post every ~{} µs, {} samples \
         per peer per round, {} interleaved rounds (µs; per-round p50/p99, median)\n",
        LATENCY_PAUSE.as_micros(),
        a.samples,
        a.rounds
    );
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); PEERS.len()];
    for round in 0..a.rounds {
        for (pi, &p) in PEERS.iter().enumerate() {
            let v = latency_once(p, a.samples);
            p50[pi].push(pct(&v, 0.5));
            p99[pi].push(pct(&v, 0.99));
            eprintln!(
                "latency round {} {:<9} p50 {:.1} µs p99 {:.1} µs",
                round + 1,
                p.name(),
                p50[pi][round],
                p99[pi][round]
            );
        }
    }
    println!("| peer | p50 µs | p99 µs |");
    println!("|---|---|---|");
    for (pi, &p) in PEERS.iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.1} |",
            p.name(),
            median(p50[pi].clone()),
            median(p99[pi].clone())
        );
    }
    println!();
    ratios("latency p50 (lower is better)", &p50);
    ratios("latency p99 (lower is better)", &p99);
}

/// One thread, no contention: only the code path counts.
fn single_thread_loop(peer: &str, reps: u64) {
    const N: u64 = 1_000;
    let mut sum = 0u64;
    match peer {
        "ringport" => {
            let port = CompletionPort::<u64>::new(1).expect("port");
            for _ in 0..reps {
                for i in 0..N {
                    port.post(0, i, Ok(0)).expect("post");
                }
                for _ in 0..N {
                    let p = port.get(None).expect("get");
                    sum = sum.wrapping_add(p.token);
                }
            }
        }
        "ringport-many" => {
            let port = CompletionPort::<u64>::new(1).expect("port");
            let mut out: Vec<Option<Packet<u64>>> = (0..64).map(|_| None).collect();
            for _ in 0..reps {
                for i in 0..N {
                    port.post(0, i, Ok(0)).expect("post");
                }
                let mut got = 0;
                while got < N {
                    let k = port.get_many(&mut out, None).expect("get_many");
                    for p in out[..k].iter_mut() {
                        sum = sum.wrapping_add(p.take().expect("packet").token);
                    }
                    got += k as u64;
                }
            }
        }
        "cb-fields" => {
            let (tx, rx) = crossbeam_channel::unbounded::<Fields>();
            for _ in 0..reps {
                for i in 0..N {
                    tx.send((0, i, Ok(0))).expect("send");
                }
                for _ in 0..N {
                    let (_, t, _) = rx.recv().expect("recv");
                    sum = sum.wrapping_add(t);
                }
            }
        }
        other => panic!("--loop ringport|ringport-many|cb-fields, not {other}"),
    }
    println!("{peer}: {} items, sum {sum}", reps * N);
}

fn main() {
    let a = args();
    if let Some((peer, reps)) = &a.lp {
        single_thread_loop(peer, *reps);
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "ringport benches/port: {} CPUs, load average {}",
        allowed_cpus().len(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if a.only.iter().any(|s| s == "flood") {
        flood(&a);
    }
    if a.only.iter().any(|s| s == "bursty") {
        bursty(&a);
    }
    if a.only.iter().any(|s| s == "latency") {
        latency(&a);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
