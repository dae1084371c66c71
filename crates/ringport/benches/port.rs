//! Flood throughput of the completion port beside crossbeam-channel and std
//! mpsc: one producer posts 100,000 items per iteration through 1, 2 and 4
//! consumer threads. Every peer carries the same item (a `Packet<u64>`: key,
//! token, result) and every consumer does the same work per item (it adds the
//! token to a sum that is checked after the run). The port's concurrency
//! limit is the number of consumers, so it never holds a consumer back.
//! std mpsc has one receiver: with more than one consumer they share it
//! behind a mutex, the usual way.
//!
//! Only the posting and the draining are timed (`iter_custom`): consumer
//! threads are started and waiting before the clock starts.
//!
//! `cargo bench -p ringport --bench port`; `ringport bench port` gives the
//! same comparison interleaved, with medians, context switches and CPU time.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringport::{CompletionPort, Packet};

const ITEMS: u64 = 100_000;
const STOP: u64 = u64::MAX;
const CONSUMERS: [usize; 3] = [1, 2, 4];

/// One timed run of a peer with this many consumers.
type Once = fn(usize) -> Duration;

/// Sums tokens until the stop packet.
fn consume(mut next: impl FnMut() -> Option<Packet<u64>>) -> (u64, u64) {
    let (mut sum, mut count) = (0u64, 0u64);
    while let Some(p) = next() {
        if p.key == STOP {
            break;
        }
        sum = sum.wrapping_add(p.token);
        count += 1;
    }
    (sum, count)
}

/// How long one run may take before the bench gives up on it (a consumer
/// that missed its wake-up would otherwise hang `cargo bench`).
const WATCHDOG: Duration = Duration::from_secs(60);

/// Says on its channel when dropped: when the consumer thread ends, even by
/// a panic.
struct Finished(mpsc::Sender<()>);

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Starts `workers` consumers with `spawn` (each holding a [`Finished`]),
/// then times `produce` sending tokens 1..=ITEMS and one stop per consumer,
/// until every consumer is done.
fn timed(
    workers: usize,
    spawn: impl Fn(Arc<Barrier>, Finished) -> thread::JoinHandle<(u64, u64)>,
    produce: impl FnOnce(),
) -> Duration {
    let ready = Arc::new(Barrier::new(workers + 1));
    let (done, finished) = mpsc::channel();
    let handles: Vec<_> = (0..workers)
        .map(|_| spawn(ready.clone(), Finished(done.clone())))
        .collect();
    drop(done);
    ready.wait();
    let start = Instant::now();
    produce();
    for n in 0..workers {
        if finished.recv_timeout(WATCHDOG).is_err() {
            panic!("only {n} of {workers} consumers finished within {WATCHDOG:?}: a lost wake-up?");
        }
    }
    let elapsed = start.elapsed();
    let (mut sum, mut count) = (0u64, 0u64);
    for h in handles {
        let (s, c) = h.join().expect("consumer panicked");
        sum = sum.wrapping_add(s);
        count += c;
    }
    assert_eq!(count, ITEMS);
    assert_eq!(sum, ITEMS * (ITEMS + 1) / 2);
    elapsed
}

fn send_all(workers: usize, send: &mut dyn FnMut(Packet<u64>)) {
    for i in 1..=ITEMS {
        send(Packet::new(0, i, Ok(0)));
    }
    for _ in 0..workers {
        send(Packet::new(STOP, 0, Ok(0)));
    }
}

fn ringport_once(workers: usize) -> Duration {
    let port = CompletionPort::<u64>::new(workers).expect("port");
    let p = port.clone();
    timed(
        workers,
        move |ready, fin| {
            let port = p.clone();
            thread::spawn(move || {
                let _fin = fin;
                ready.wait();
                consume(|| port.get(None).ok())
            })
        },
        || send_all(workers, &mut |pk| port.post_packet(pk).expect("post")),
    )
}

fn crossbeam_once(workers: usize) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<Packet<u64>>();
    timed(
        workers,
        move |ready, fin| {
            let rx = rx.clone();
            thread::spawn(move || {
                let _fin = fin;
                ready.wait();
                consume(|| rx.recv().ok())
            })
        },
        || send_all(workers, &mut |pk| tx.send(pk).expect("send")),
    )
}

fn mpsc_once(workers: usize) -> Duration {
    let (tx, rx) = mpsc::channel::<Packet<u64>>();
    if workers == 1 {
        let rx = Mutex::new(Some(rx));
        timed(
            1,
            move |ready, fin| {
                let rx = rx.lock().unwrap().take().expect("one consumer");
                thread::spawn(move || {
                    let _fin = fin;
                    ready.wait();
                    consume(|| rx.recv().ok())
                })
            },
            || send_all(1, &mut |pk| tx.send(pk).expect("send")),
        )
    } else {
        let rx = Arc::new(Mutex::new(rx));
        timed(
            workers,
            move |ready, fin| {
                let rx = rx.clone();
                thread::spawn(move || {
                    let _fin = fin;
                    ready.wait();
                    consume(|| rx.lock().unwrap().recv().ok())
                })
            },
            || send_all(workers, &mut |pk| tx.send(pk).expect("send")),
        )
    }
}

fn flood(c: &mut Criterion) {
    let mut g = c.benchmark_group("port_flood_100k");
    g.throughput(Throughput::Elements(ITEMS));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for w in CONSUMERS {
        let peers: [(&str, Once); 3] = [
            ("ringport", ringport_once),
            ("crossbeam", crossbeam_once),
            ("std_mpsc", mpsc_once),
        ];
        for (name, once) in peers {
            g.bench_with_input(BenchmarkId::new(name, w), &w, |b, &w| {
                b.iter_custom(|iters| (0..iters).map(|_| once(w)).sum())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, flood);
criterion_main!(benches);
