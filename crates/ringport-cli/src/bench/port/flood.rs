//! The flood: one producer posts `--items` packets as fast as it can
//! through 1, 2 and 4 consumers.

use super::{check, flood_limit, run_peer, Args, Peer, Run};
use crate::measure::median;

pub(super) fn flood_once(
    peer: Peer,
    items: u64,
    workers: usize,
    limit: usize,
) -> Result<Run, String> {
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

pub(super) fn flood(args: &Args, peers: &[Peer]) -> Result<(), String> {
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
        let mut med = [f64::NAN; super::PEERS.len()];
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
