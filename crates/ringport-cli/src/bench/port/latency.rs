//! Post-to-wake latency: one consumer parked, the poster stamps an
//! `Instant` into the token after a pause, the consumer records how long it
//! took to get it.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use hdrhistogram::Histogram;
use ringport::{CompletionPort, Packet};

use super::{chart, ratio_table, Args, Fields, Peer, LATENCY_PAUSE, STOP};
use crate::measure::histogram;
use crate::report::{Cell, Report, RunRecord, Table};

/// A stamped item, or `None` for the stop.
type Stamped = Packet<Option<Instant>>;

/// One consumer, parked; `samples` posts, each after a pause, stamped with
/// the time just before the post. Returns the post-to-wake delays in ns.
pub(super) fn latency_once(peer: Peer, samples: u64) -> Result<Histogram<u64>, String> {
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
            let (tx, rx) = crossbeam_channel::unbounded::<Fields<Option<Instant>>>();
            measure_latency(
                samples,
                move || rx.recv().ok().map(|(k, t, r)| Packet::new(k, t, r)),
                |p| tx.send((p.key, p.token, p.result)).map_err(|e| err(&e)),
            )?
        }
        Peer::CrossbeamPacket => {
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
        let mut h = histogram();
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

pub(super) fn latency(args: &Args, peers: &[Peer], report: &mut Report) -> Result<(), String> {
    let mut hists: Vec<Histogram<u64>> = peers.iter().map(|_| histogram()).collect();
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
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            report.run(
                RunRecord::new("latency", "", round + 1, peer.name())
                    .with("p50_us", us(0.5))
                    .with("p99_us", us(0.99))
                    .with("p999_us", us(0.999))
                    .with("max_us", h.max() as f64 / 1e3),
            );
            hists[pi].add(&h).map_err(|e| e.to_string())?;
        }
    }
    let mut t = Table::new(
        format!(
            "Post-to-wake latency: one consumer parked, a post every ~{} µs, \
             {} samples per peer ({} interleaved rounds)",
            LATENCY_PAUSE.as_micros(),
            args.samples * args.rounds as u64,
            args.rounds
        ),
        &["peer", "p50 µs", "p99 µs", "p99.9 µs", "max µs"],
    );
    let us = |v: u64| v as f64 / 1e3;
    let mut p50 = [f64::NAN; super::PEERS.len()];
    let mut p99 = [f64::NAN; super::PEERS.len()];
    for (pi, &peer) in peers.iter().enumerate() {
        let h = &hists[pi];
        t.row(vec![
            Cell::text(peer.name()),
            Cell::num(us(h.value_at_quantile(0.5)), 1),
            Cell::num(us(h.value_at_quantile(0.99)), 1),
            Cell::num(us(h.value_at_quantile(0.999)), 1),
            Cell::num(us(h.max()), 1),
        ]);
        p50[peer as usize] = h.value_at_quantile(0.5) as f64;
        p99[peer as usize] = h.value_at_quantile(0.99) as f64;
    }
    report.table(t);
    if let Some(t) = ratio_table(
        "Latency: ringport over each peer (all rounds' samples; lower is better)",
        peers,
        &[("p50", &p50), ("p99", &p99)],
    ) {
        report.table(t);
    }
    report.chart(chart(
        "Post-to-wake latency: ringport's p50 over each peer's (lower is better)",
        "latency",
        "p50_us",
        false,
        &[String::new()],
        peers,
    ));
    Ok(())
}
