//! The flood: one producer posts `--items` packets as fast as it can
//! through 1, 2 and 4 consumers.

use super::{check, flood_limit, run_peer, Args, Peer, PortRun};
use crate::measure::median;
use crate::report::{Cell, Report, RunRecord, Table};

pub(super) fn flood_once(
    peer: Peer,
    items: u64,
    workers: usize,
    limit: usize,
) -> Result<PortRun, String> {
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

pub(super) fn flood(args: &Args, peers: &[Peer], report: &mut Report) -> Result<(), String> {
    let items = args.items;
    let per_item = |r: &PortRun| {
        (
            items as f64 / r.elapsed.as_secs_f64() / 1e6,
            r.used.switches as f64 / items as f64,
            r.used.cpu.as_secs_f64() * 1e6 / items as f64,
            r.wakeups as f64 / items as f64,
        )
    };
    let case = |w: usize| format!("{w} consumers");
    // Warm up: threads, allocator, page faults.
    for &peer in peers {
        flood_once(peer, items.min(100_000), 2, 2)?;
    }
    let mut runs: Vec<Vec<Vec<PortRun>>> = args
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
                let rec = RunRecord::new("flood", &case(w), round + 1, peer.name())
                    .with("mitems_per_s", rate)
                    .with("switches_per_item", cs)
                    .with("cpu_us_per_item", cpu)
                    .with("elapsed_s", r.elapsed.as_secs_f64());
                report.run(if peer == Peer::Port {
                    rec.with("wakeups_per_item", wake)
                } else {
                    rec
                });
                runs[wi][pi].push(r);
            }
        }
    }

    let mut t = Table::new(
        format!(
            "Flood: {items} packets from one producer through N consumers \
             (port limit = {}; median of {} interleaved rounds)",
            match args.limit.as_str() {
                "workers" => "N".to_string(),
                "cpus" => format!("CPUs = {}", ringport::cpu_count()),
                n => n.to_string(),
            },
            args.rounds
        ),
        &[
            "consumers",
            "peer",
            "M items/s (median)",
            "min–max",
            "ctx switches/item",
            "CPU µs/item",
            "port wake-ups/item",
        ],
    );
    let mut meds = Vec::new();
    for (wi, &w) in args.workers.iter().enumerate() {
        let mut med = [f64::NAN; super::PEERS.len()];
        for (pi, &peer) in peers.iter().enumerate() {
            let figures: Vec<_> = runs[wi][pi].iter().map(per_item).collect();
            let rates: Vec<f64> = figures.iter().map(|f| f.0).collect();
            let spread = Cell::range(&rates, 2);
            med[peer as usize] = median(rates);
            let cs = median(figures.iter().map(|f| f.1).collect());
            let cpu = median(figures.iter().map(|f| f.2).collect());
            let wake = if peer == Peer::Port {
                Cell::num(median(figures.iter().map(|f| f.3).collect()), 4)
            } else {
                Cell::text("–")
            };
            t.row(vec![
                Cell::num(w as f64, 0),
                Cell::text(peer.name()),
                Cell::num(med[peer as usize], 2),
                spread,
                Cell::num(cs, 4),
                Cell::num(cpu, 3),
                wake,
            ]);
        }
        meds.push((w, med));
    }
    report.table(t);
    let others: Vec<Peer> = peers.iter().copied().filter(|&p| p != Peer::Port).collect();
    if peers.contains(&Peer::Port) && !others.is_empty() {
        let mut columns = vec!["consumers".to_string()];
        columns.extend(others.iter().map(|p| format!("ringport / {}", p.name())));
        let mut t = Table {
            title: "Flood: ringport's items/s over each peer's (medians)".into(),
            columns,
            ..Table::default()
        };
        for (w, med) in meds {
            let mut row = vec![Cell::num(w as f64, 0)];
            row.extend(
                others
                    .iter()
                    .map(|&p| Cell::ratio(med[Peer::Port as usize] / med[p as usize])),
            );
            t.row(row);
        }
        report.table(t);
    }
    let cases: Vec<String> = args.workers.iter().map(|&w| case(w)).collect();
    report.chart(super::chart(
        "Flood: ringport's items/s over each peer's",
        "flood",
        "mitems_per_s",
        true,
        &cases,
        peers,
    ));
    Ok(())
}
