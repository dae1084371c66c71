//! Bursty load: 64 items every 200 µs, ~1 µs of busy work each, 4 workers
//! pinned to 2 CPUs, the port at limit 2.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    chart, check, ratio_table, run_peer, two_cpus, Args, Peer, PortRun, BURST, BURSTY_LIMIT,
    BURSTY_WORKERS, PERIOD,
};
use crate::measure::median;
use crate::report::{Cell, Report, RunRecord, Table};

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
) -> Result<PortRun, String> {
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

pub(super) fn bursty(args: &Args, peers: &[Peer], report: &mut Report) -> Result<(), String> {
    let iters = calibrate();
    let cpus = two_cpus();
    let items = args.bursts * BURST;
    let per_item = |r: &PortRun| {
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
    let mut runs: Vec<Vec<PortRun>> = peers.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (pi, &peer) in peers.iter().enumerate() {
            let r = bursty_once(peer, args.bursts, iters, &cpus)?;
            let (cs, cpu, wake, wall) = per_item(&r);
            eprintln!(
                "bursty round {}/{} {:<10} {cs:.4} switches/item {cpu:.3} CPU µs/item \
                 {wake:.4} wake-ups/item",
                round + 1,
                args.rounds,
                peer.name(),
            );
            let rec = RunRecord::new("bursty", "", round + 1, peer.name())
                .with("switches_per_item", cs)
                .with("cpu_us_per_item", cpu)
                .with("wall_ms", wall);
            report.run(if peer == Peer::Port {
                rec.with("wakeups_per_item", wake)
            } else {
                rec
            });
            runs[pi].push(r);
        }
    }
    let mut t = Table::new(
        format!(
            "Bursty: {BURST} items every {} µs, ~1 µs of work each, {BURSTY_WORKERS} workers on \
             CPUs {cpus:?}, port limit {BURSTY_LIMIT}; {items} items a run, median of {} rounds",
            PERIOD.as_micros(),
            args.rounds
        ),
        &[
            "peer",
            "ctx switches/item",
            "CPU µs/item",
            "CPU µs/item min–max",
            "wall ms",
            "port wake-ups/item",
        ],
    );
    let mut cs_med = [f64::NAN; super::PEERS.len()];
    let mut cpu_med = [f64::NAN; super::PEERS.len()];
    for (pi, &peer) in peers.iter().enumerate() {
        let figures: Vec<_> = runs[pi].iter().map(per_item).collect();
        let cs = median(figures.iter().map(|f| f.0).collect());
        let cpus: Vec<f64> = figures.iter().map(|f| f.1).collect();
        let spread = Cell::range(&cpus, 3);
        let cpu = median(cpus);
        let wall = median(figures.iter().map(|f| f.3).collect());
        let wake = if peer == Peer::Port {
            Cell::num(median(figures.iter().map(|f| f.2).collect()), 4)
        } else {
            Cell::text("–")
        };
        t.row(vec![
            Cell::text(peer.name()),
            Cell::num(cs, 4),
            Cell::num(cpu, 3),
            spread,
            Cell::num(wall, 1),
            wake,
        ]);
        cs_med[peer as usize] = cs;
        cpu_med[peer as usize] = cpu;
    }
    report.table(t);
    if let Some(t) = ratio_table(
        "Bursty: ringport over each peer (medians; lower is better)",
        peers,
        &[
            ("context switches per item", &cs_med),
            ("CPU per item", &cpu_med),
        ],
    ) {
        report.table(t);
    }
    report.chart(chart(
        "Bursty: ringport's CPU per item over each peer's (lower is better)",
        "bursty",
        "cpu_us_per_item",
        false,
        &[String::new()],
        peers,
    ));
    Ok(())
}
