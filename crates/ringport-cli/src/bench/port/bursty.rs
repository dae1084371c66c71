//! Bursty load: 64 items every 200 µs, ~1 µs of busy work each, 4 workers
//! pinned to 2 CPUs, the port at limit 2.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    check, ratio_line, run_peer, two_cpus, Args, Peer, Run, BURST, BURSTY_LIMIT, BURSTY_WORKERS,
    PERIOD,
};
use crate::measure::median;

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

pub(super) fn bursty_once(
    peer: Peer,
    bursts: u64,
    iters: u64,
    cpus: &[usize],
) -> Result<Run, String> {
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

pub(super) fn bursty(args: &Args, peers: &[Peer]) -> Result<(), String> {
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
    let mut cs_med = [f64::NAN; super::PEERS.len()];
    let mut cpu_med = [f64::NAN; super::PEERS.len()];
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
