//! [`WorkerPool`] with real threads: stop does the queued work first, close
//! drops it, the report adds up, and a panicking handler is reported.
//!
//! `stop` and `close` join the workers, so each runs on a helper thread and
//! the test fails (instead of hanging) if it does not return within `LONG`.

#![cfg(not(loom))]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ringport::{CompletionPort, PoolReport, WorkerPool};

const LONG: Duration = Duration::from_secs(20);

/// Runs `f` on a helper thread and returns its result, failing the test if
/// it takes longer than `LONG`.
fn within<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // A panic in `f` drops `tx`, which fails the receive below.
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LONG) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish in {LONG:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A token that counts its drops.
#[derive(Default)]
struct Counted(Option<Arc<AtomicUsize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn stop_does_all_queued_work_first_then_joins() {
    const PACKETS: u64 = 300;
    let port = CompletionPort::<u64>::new(2).unwrap();
    let sum = Arc::new(AtomicU64::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let (s, h) = (sum.clone(), handled.clone());
    let pool = WorkerPool::start(&port, 4, move |p| {
        // Slow enough that most of the work is still queued at `stop`.
        thread::sleep(Duration::from_micros(200));
        assert_ne!(p.key, WorkerPool::<u64>::STOP_KEY);
        s.fetch_add(p.token, Ordering::SeqCst);
        h.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(pool.threads(), 4);
    for t in 1..=PACKETS {
        port.post(1, t, Ok(0)).unwrap();
    }
    let report = within("stop", move || pool.stop().unwrap());
    assert_eq!(handled.load(Ordering::SeqCst), PACKETS);
    assert_eq!(sum.load(Ordering::SeqCst), PACKETS * (PACKETS + 1) / 2);
    assert_eq!(report.per_worker.len(), 4);
    assert_eq!(report.handled(), PACKETS);
    assert_eq!(report.per_worker.iter().sum::<u64>(), PACKETS);
    assert_eq!(report.panicked, 0);
    // The port's view: every packet (and each stop packet) was dequeued, and
    // the per-thread loads add up to it.
    let stats = &report.stats;
    assert_eq!(stats.posted, PACKETS + 4);
    assert_eq!(stats.dequeued, PACKETS + 4);
    assert_eq!(
        stats.threads.iter().map(|t| t.dequeued).sum::<u64>(),
        PACKETS + 4
    );
    assert!(stats.threads.len() <= 4);
    for t in &stats.threads {
        let name = t.name.as_deref().unwrap_or("");
        assert!(name.starts_with("ringport-worker-"), "{name}");
    }
    assert!(stats.max_active <= 2);
    assert_eq!((stats.active, stats.queued, stats.waiting), (0, 0, 0));
    // `stop` leaves the port open.
    assert!(!port.is_closed());
    port.post(0, 0, Ok(0)).unwrap();
}

#[test]
fn stop_never_hangs_whatever_the_limit() {
    for limit in [1, 2, 3] {
        for threads in [1, 4, 9] {
            let port = CompletionPort::<u64>::new(limit).unwrap();
            let pool = WorkerPool::start(&port, threads, |_| {}).unwrap();
            for t in 0..50 {
                port.post(0, t, Ok(0)).unwrap();
            }
            let report = within("stop", move || pool.stop().unwrap());
            assert_eq!(report.handled(), 50, "limit {limit}, {threads} threads");
            assert_eq!(report.per_worker.len(), threads);
            assert_eq!(report.stats.active, 0);
        }
    }
}

#[test]
fn stop_with_gives_each_stop_packet_a_token() {
    let drops = Arc::new(AtomicUsize::new(0));
    let port = CompletionPort::<Counted>::new(2).unwrap();
    let pool = WorkerPool::start(&port, 3, |_| {}).unwrap();
    let d = drops.clone();
    let report = within("stop_with", move || {
        pool.stop_with(|| Counted(Some(d.clone()))).unwrap()
    });
    assert_eq!(report.handled(), 0);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        3,
        "each stop token dropped once"
    );
    assert_eq!(report.stats.dequeued, 3);
}

#[test]
fn close_ends_the_workers_and_drops_the_queued_work() {
    const PACKETS: usize = 200;
    let drops = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let port = CompletionPort::<Counted>::new(2).unwrap();
    let (h, p) = (handled.clone(), port.clone());
    let pool = WorkerPool::start(&port, 4, move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        // Hold the packet until the port is closed: a worker ends after
        // its current packet.
        wait_until("the close", || p.is_closed());
    })
    .unwrap();
    for _ in 0..PACKETS {
        port.post(0, Counted(Some(drops.clone())), Ok(0)).unwrap();
    }
    wait_until("some work to start", || handled.load(Ordering::SeqCst) > 0);
    let report: PoolReport = within("close", move || pool.close());
    assert!(port.is_closed());
    let handled = handled.load(Ordering::SeqCst);
    assert_eq!(report.handled() as usize, handled);
    assert!(
        (1..=2).contains(&handled),
        "{handled} packets taken at limit 2"
    );
    assert_eq!(
        drops.load(Ordering::SeqCst),
        PACKETS,
        "every token dropped once: handled or dropped with the queue"
    );
    assert_eq!(report.panicked, 0);
    assert!(matches!(
        port.post(0, Counted::default(), Ok(0)),
        Err(ringport::Error::Closed)
    ));
}

#[test]
fn zero_threads_means_twice_the_cpus() {
    let port = CompletionPort::<u64>::new(0).unwrap();
    let pool = WorkerPool::start(&port, 0, |_| {}).unwrap();
    assert_eq!(pool.threads(), 2 * ringport::cpu_count());
    assert!(!pool.port().is_closed());
    let report = within("stop", move || pool.stop().unwrap());
    assert_eq!(report.per_worker.len(), 2 * ringport::cpu_count());
}

#[test]
fn loads_add_up_to_the_packets() {
    const PACKETS: u64 = 2000;
    let port = CompletionPort::<u64>::new(2).unwrap();
    let pool = WorkerPool::start(&port, 6, |_| {
        std::hint::black_box((0..200).sum::<u64>());
    })
    .unwrap();
    for t in 0..PACKETS {
        port.post(t % 7, t, Ok(0)).unwrap();
    }
    let report = within("stop", move || pool.stop().unwrap());
    assert_eq!(report.per_worker.len(), 6);
    assert_eq!(report.handled(), PACKETS);
    let loads: u64 = report.stats.threads.iter().map(|t| t.dequeued).sum();
    assert_eq!(loads, PACKETS + 6, "the work plus one stop packet each");
    assert_eq!(report.stats.dequeued, loads);
    assert_eq!(report.stats.posted, loads);
}

#[test]
fn a_panicking_handler_is_reported_and_the_pool_still_stops() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let pool = WorkerPool::start(&port, 3, move |p| {
        if p.token == 13 {
            panic!("handler panics on purpose (packet 13)");
        }
        h.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    for t in 0..40 {
        port.post(0, t, Ok(0)).unwrap();
    }
    // Limit 1: the panicking worker dies holding the slot, which its exit
    // gives back; otherwise the rest of the work and the stop would hang.
    let report = within("stop", move || pool.stop().unwrap());
    assert_eq!(report.panicked, 1);
    assert_eq!(report.per_worker.len(), 3);
    assert_eq!(handled.load(Ordering::SeqCst), 39);
    // The panicked worker's count is lost (shown as 0).
    assert!(report.handled() <= 39);
    assert!(report.per_worker.contains(&0));
    assert_eq!(report.stats.active, 0);
    // Its stop packet was not needed: one is left over.
    assert_eq!(report.stats.queued, 1);
}

#[test]
fn dropping_a_pool_closes_its_port() {
    let port = CompletionPort::<u64>::new(2).unwrap();
    let pool = WorkerPool::start(&port, 3, |_| {}).unwrap();
    wait_until("the workers to park", || port.stats().waiting == 3);
    within("drop", move || drop(pool));
    assert!(port.is_closed());
    assert_eq!(port.stats().waiting, 0);
}

/// A pool that takes packets in batches still gives every worker its own
/// stop packet (a batch that took others' stop packets gives them back),
/// runs the handler with the worker's index, and names its threads.
#[test]
fn a_batching_pool_stops_every_worker_and_tells_the_handler_its_index() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let port = CompletionPort::<u64>::new(4).unwrap();
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let names = Arc::new(Mutex::new(Vec::new()));
    let (c, n) = (counts.clone(), names.clone());
    let pool = WorkerPool::builder(&port)
        .threads(4)
        .name("batcher")
        .batch(64)
        .start(move |w, _| {
            c[w].fetch_add(1, Ordering::Relaxed);
            let name = std::thread::current().name().map(str::to_owned);
            n.lock().unwrap().push((w, name));
        })
        .unwrap();
    for i in 0..1000 {
        port.post(0, i, Ok(0)).unwrap();
    }
    let report = within("stop", move || pool.stop().unwrap());
    assert_eq!(report.handled(), 1000);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let per: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(
        per, report.per_worker,
        "the index the handler saw is the worker's"
    );
    for (w, name) in names.lock().unwrap().iter() {
        assert_eq!(name.as_deref(), Some(format!("batcher-{w}").as_str()));
    }
}

/// With `submit_on_wait`, the receive a handler starts waits in the ring's
/// queue for its worker's next wait: every datagram still arrives, one at
/// a time, each caught by the receive the previous one's handler started,
/// also across a restart of the pool (the receive its last worker held goes
/// to the kernel when that worker leaves).
#[test]
fn held_submissions_reach_the_kernel() {
    let port = CompletionPort::<u64>::new(2).unwrap();
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = rx.local_addr().unwrap();
    let rx = Arc::new(port.associate(rx, 1).unwrap());
    let got = Arc::new(AtomicU64::new(0));
    let start = |port: &CompletionPort<u64>| {
        let (rx, got) = (rx.clone(), got.clone());
        WorkerPool::builder(port)
            .threads(2)
            .submit_on_wait(true)
            .start(move |_, p| {
                if p.key == 1 && p.result.is_ok() {
                    rx.recv(vec![0u8; 64], 0).unwrap();
                    got.fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap()
    };
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.recv(vec![0u8; 64], 0).unwrap();
    let mut pool = start(&port);
    for i in 1..=40 {
        tx.send_to(b"ping", addr).unwrap();
        wait_until("the datagram's completion", || {
            got.load(Ordering::SeqCst) == i
        });
        if i == 20 {
            within("stop", move || pool.stop().unwrap());
            pool = start(&port);
        }
    }
    within("stop", move || pool.stop().unwrap());
}

/// A handler that blocks (in `blocking`) waiting for another worker to see
/// the outcome of an operation it started itself: the operation goes to
/// the kernel before it blocks, so the worker sleeping in the kernel wakes
/// with its completion. (Whether the other worker is already asleep in the
/// kernel when the handler blocks depends on the interleaving: this checks
/// that no interleaving hangs.)
#[test]
fn a_held_submission_goes_before_its_handler_blocks() {
    const GO: u64 = 7;
    let port = CompletionPort::<u64>::new(2).unwrap();
    // A receive nobody answers keeps one worker sleeping in the kernel.
    let idle = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let idle = port.associate(idle, 2).unwrap();
    idle.recv(vec![0u8; 64], 0).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let sock = Arc::new(port.associate(sock, 1).unwrap());
    let (seen_tx, seen_rx) = mpsc::channel::<()>();
    let seen_rx = Arc::new(std::sync::Mutex::new(seen_rx));
    let seen_tx = std::sync::Mutex::new(seen_tx);
    let done = Arc::new(AtomicU64::new(0));
    let (s, d, p2) = (sock.clone(), done.clone(), port.clone());
    let pool = WorkerPool::builder(&port)
        .threads(2)
        .submit_on_wait(true)
        .start(move |_, p| match p.key {
            GO => {
                s.recv(vec![0u8; 64], 0).unwrap();
                let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                tx.send_to(b"hello", addr).unwrap();
                // Another worker must take the receive's completion.
                let rx = seen_rx.lock().unwrap();
                p2.blocking(|| rx.recv().unwrap());
                d.fetch_add(1, Ordering::SeqCst);
            }
            1 => seen_tx.lock().unwrap().send(()).unwrap(),
            _ => {}
        })
        .unwrap();
    port.post(GO, 0, Ok(0)).unwrap();
    wait_until("the blocked handler's release", || {
        done.load(Ordering::SeqCst) == 1
    });
    drop(idle);
    within("stop", move || pool.stop().unwrap());
}
