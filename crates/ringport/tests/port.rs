//! The completion port's semantics, with real threads: LIFO release, the
//! concurrency limit, timeouts, batches, close, and the counters.
//!
//! Every wait is bounded (`LONG`), so a broken port fails a test instead of
//! hanging it, and no test asserts a timing upper bound tighter than seconds.

#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringport::{CompletionPort, Error, Packet};

/// How long anything may take before a test calls it a hang.
const LONG: Duration = Duration::from_secs(10);
/// The key of a packet that tells a test worker to exit.
const STOP: u64 = u64::MAX;

/// Polls `cond` until it holds, failing the test after `LONG`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Joins a thread, failing the test if it does not finish within `LONG`.
fn join<R>(h: JoinHandle<R>) -> R {
    wait_until("a thread to finish", || h.is_finished());
    match h.join() {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    }
}

fn recv<R>(rx: &mpsc::Receiver<R>) -> R {
    rx.recv_timeout(LONG)
        .expect("a message within the time limit")
}

fn waiting(port: &CompletionPort<impl Send + 'static>) -> u64 {
    port.stats().waiting
}

/// Raises `max` to `v` if it is larger.
fn note_max(max: &AtomicUsize, v: usize) {
    max.fetch_max(v, Ordering::SeqCst);
}

/// Spins (without sleeping, so the thread stays busy) for `d`.
fn spin_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

#[test]
fn concurrency_zero_means_cpus_and_the_limit_is_checked() {
    let port = CompletionPort::<u64>::new(0).unwrap();
    assert_eq!(port.concurrency(), ringport::cpu_count());
    assert_eq!(CompletionPort::<u64>::new(3).unwrap().concurrency(), 3);
    assert_eq!(
        CompletionPort::<u64>::new(65_535).unwrap().concurrency(),
        65_535
    );
    assert!(matches!(
        CompletionPort::<u64>::new(65_536),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_packet_carries_key_token_and_result() {
    let port = CompletionPort::<String>::new(1).unwrap();
    port.post(7, "seven".into(), Ok(70)).unwrap();
    port.post(8, "eight".into(), Err(std::io::Error::other("bad")))
        .unwrap();
    port.post_packet(Packet::new(9, "nine".into(), Ok(90)))
        .unwrap();
    let p = port.get(Some(LONG)).unwrap();
    assert_eq!(
        (p.key, p.token.as_str(), p.result.unwrap()),
        (7, "seven", 70)
    );
    let p = port.get(Some(LONG)).unwrap();
    assert_eq!((p.key, p.token.as_str()), (8, "eight"));
    assert_eq!(p.result.unwrap_err().to_string(), "bad");
    let p = port.get(Some(LONG)).unwrap();
    assert_eq!(
        (p.key, p.token.as_str(), p.result.unwrap()),
        (9, "nine", 90)
    );
}

#[test]
fn waiters_are_released_lifo() {
    let port = CompletionPort::<u64>::new(8).unwrap();
    let (tx, rx) = mpsc::channel();
    // A served waiter stays (active) until every post is made: its thread's
    // exit gives its slot back, and a slot given back while a post is on its
    // way may grant that post's packet itself (then it is no handoff).
    let done = Arc::new(std::sync::Barrier::new(4));
    let mut threads = Vec::new();
    for i in 0..3u64 {
        let (p, tx, done) = (port.clone(), tx.clone(), done.clone());
        threads.push(thread::spawn(move || {
            let packet = p.get(Some(LONG)).expect("a packet");
            tx.send((i, packet.token)).unwrap();
            done.wait();
        }));
        // Park the waiters in a known order: i is on the stack before i + 1.
        wait_until("the waiter to park", || waiting(&port) == i + 1);
    }
    for token in 0..3u64 {
        port.post(0, token, Ok(0)).unwrap();
        let (who, got) = recv(&rx);
        assert_eq!(got, token);
        assert_eq!(who, 2 - token, "the last waiter gets the first packet");
    }
    done.wait();
    threads.into_iter().for_each(join);
    let stats = port.stats();
    assert_eq!((stats.handoffs, stats.wakeups), (3, 3));
    assert_eq!((stats.posted, stats.dequeued), (3, 3));
    assert_eq!((stats.queued, stats.waiting), (0, 0));
}

/// Posts that come back to back, before any woken waiter has run, still
/// reach the waiters in LIFO order packet by packet: a grant hands its
/// packet to the waiter it wakes (it does not merely let it take whatever
/// is queued when it gets to run).
#[test]
fn back_to_back_posts_reach_waiters_lifo_packet_by_packet() {
    let port = CompletionPort::<u64>::new(8).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..4u64 {
        let (p, tx) = (port.clone(), tx.clone());
        threads.push(thread::spawn(move || {
            let packet = p.get(Some(LONG)).expect("a packet");
            tx.send((i, packet.token)).unwrap();
        }));
        wait_until("the waiter to park", || waiting(&port) == i + 1);
    }
    for token in 0..4u64 {
        port.post(0, token, Ok(0)).unwrap();
    }
    let mut got: Vec<(u64, u64)> = (0..4).map(|_| recv(&rx)).collect();
    got.sort_unstable();
    assert_eq!(got, [(0, 3), (1, 2), (2, 1), (3, 0)], "(waiter, token)");
    threads.into_iter().for_each(join);
    assert_eq!(port.stats().queued, 0);
}

/// Runs `threads` workers on `port` until each takes a `STOP` packet, calling
/// `handler` on every other packet; returns each worker's count.
fn run_workers(
    port: &CompletionPort<u64>,
    threads: usize,
    handler: impl Fn(&Packet<u64>) + Send + Sync + 'static,
) -> Vec<JoinHandle<u64>> {
    let handler = Arc::new(handler);
    (0..threads)
        .map(|_| {
            let (port, handler) = (port.clone(), handler.clone());
            thread::spawn(move || {
                let mut n = 0;
                loop {
                    let packet = port.get(Some(LONG)).expect("a packet in time");
                    if packet.key == STOP {
                        return n;
                    }
                    handler(&packet);
                    n += 1;
                }
            })
        })
        .collect()
}

#[test]
fn the_concurrency_limit_bounds_running_handlers() {
    const PACKETS: u64 = 2000;
    let port = CompletionPort::<u64>::new(2).unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (i, m) = (inside.clone(), max.clone());
    let workers = run_workers(&port, 8, move |p| {
        let now = i.fetch_add(1, Ordering::SeqCst) + 1;
        note_max(&m, now);
        if p.token == 0 {
            // Hold the first packet until a second handler runs, so that the
            // limit is reached for certain, not just very probably.
            let deadline = Instant::now() + LONG;
            while m.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                std::hint::spin_loop();
            }
        } else {
            spin_for(Duration::from_micros(20));
        }
        i.fetch_sub(1, Ordering::SeqCst);
    });
    for t in 0..PACKETS {
        port.post(1, t, Ok(0)).unwrap();
    }
    for _ in 0..workers.len() {
        port.post(STOP, 0, Ok(0)).unwrap();
    }
    let handled: u64 = workers.into_iter().map(join).sum();
    assert_eq!(handled, PACKETS);
    assert_eq!(max.load(Ordering::SeqCst), 2, "handlers running at once");
    let stats = port.stats();
    assert_eq!(stats.max_active, 2);
    assert_eq!(stats.posted, PACKETS + 8);
    assert_eq!(stats.dequeued, PACKETS + 8);
    assert_eq!((stats.active, stats.queued, stats.waiting), (0, 0, 0));
}

#[test]
fn blocking_frees_the_slot_while_blocked() {
    const PACKETS: u64 = 400;
    let port = CompletionPort::<u64>::new(2).unwrap();
    // `unblocked` counts handlers between `get` and their blocking section
    // (or their end): threads holding a slot that `get` granted, which the
    // limit bounds. A thread back from `blocking` is active again even over
    // the limit (as on Windows), so it is counted only in `inside`.
    let inside = Arc::new(AtomicUsize::new(0));
    let unblocked = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let max_unblocked = Arc::new(AtomicUsize::new(0));
    let blocked_calls = Arc::new(AtomicUsize::new(0));
    let (i, u, mi, mu, b) = (
        inside.clone(),
        unblocked.clone(),
        max_inside.clone(),
        max_unblocked.clone(),
        blocked_calls.clone(),
    );
    let p = port.clone();
    let workers = run_workers(&port, 8, move |packet| {
        note_max(&mi, i.fetch_add(1, Ordering::SeqCst) + 1);
        note_max(&mu, u.fetch_add(1, Ordering::SeqCst) + 1);
        spin_for(Duration::from_micros(20));
        u.fetch_sub(1, Ordering::SeqCst);
        if packet.token % 4 == 0 {
            assert!(p.is_active());
            p.blocking(|| {
                assert!(!p.is_active());
                b.fetch_add(1, Ordering::SeqCst);
                if packet.token == 0 {
                    // Stay blocked until two more handlers came in, which
                    // only the freed slot allows.
                    let deadline = Instant::now() + LONG;
                    while mi.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(1));
                    }
                } else {
                    thread::sleep(Duration::from_millis(1));
                }
            });
            assert!(p.is_active(), "active again after the blocking section");
        }
        i.fetch_sub(1, Ordering::SeqCst);
    });
    for t in 0..PACKETS {
        port.post(1, t, Ok(0)).unwrap();
    }
    for _ in 0..workers.len() {
        port.post(STOP, 0, Ok(0)).unwrap();
    }
    let handled: u64 = workers.into_iter().map(join).sum();
    assert_eq!(handled, PACKETS);
    assert_eq!(blocked_calls.load(Ordering::SeqCst) as u64, PACKETS / 4);
    let mu = max_unblocked.load(Ordering::SeqCst);
    assert!(
        mu <= 2,
        "{mu} threads ran past get at once with a limit of 2"
    );
    let mi = max_inside.load(Ordering::SeqCst);
    assert!(
        mi > 2,
        "blocking never let another thread in ({mi} at most)"
    );
    let stats = port.stats();
    assert!(stats.max_active >= 2);
    assert_eq!((stats.active, stats.queued, stats.waiting), (0, 0, 0));
}

/// Limit 1: thread A holds the slot; a waiter B is parked. Packets posted
/// meanwhile queue (the limit is reached), and A's next `get` takes them
/// itself instead of waking B.
#[test]
fn a_thread_calling_get_again_takes_queued_work_before_a_waiter() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    port.post(0, 100, Ok(0)).unwrap();

    let (a_tx, a_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let a = {
        let port = port.clone();
        thread::spawn(move || {
            let first = port.get(Some(LONG)).unwrap().token;
            assert!(port.is_active());
            a_tx.send(first).unwrap();
            go_rx.recv_timeout(LONG).unwrap();
            let second = port.get(Some(LONG)).unwrap().token;
            let third = port.get(Some(Duration::ZERO)).unwrap().token;
            // Nothing left: this get gives the slot up and times out.
            let fourth = port.get(Some(Duration::ZERO));
            assert!(matches!(fourth, Err(Error::Timeout)), "{fourth:?}");
            assert!(!port.is_active());
            (first, second, third)
        })
    };
    assert_eq!(recv(&a_rx), 100);
    assert_eq!(port.stats().active, 1);

    let (b_tx, b_rx) = mpsc::channel();
    let b = {
        let port = port.clone();
        thread::spawn(move || {
            let p = port.get(Some(LONG)).expect("B gets a packet");
            b_tx.send(p.token).unwrap();
        })
    };
    wait_until("B to park", || waiting(&port) == 1);

    port.post(0, 101, Ok(0)).unwrap();
    port.post(0, 102, Ok(0)).unwrap();
    let s = port.stats();
    assert_eq!((s.queued, s.active, s.waiting), (2, 1, 1), "B stays parked");

    go_tx.send(()).unwrap();
    assert_eq!(join(a), (100, 101, 102));
    assert!(b_rx.try_recv().is_err(), "B was woken for A's work");
    let s = port.stats();
    assert_eq!((s.queued, s.active, s.waiting), (0, 0, 1));

    port.post(0, 103, Ok(0)).unwrap();
    assert_eq!(recv(&b_rx), 103);
    join(b);
}

/// Limit 1: a thread that exits while active gives its slot back, and the
/// parked waiter gets the packet that was queued behind it.
#[test]
fn a_thread_that_exits_while_active_frees_its_slot() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    port.post(0, 1, Ok(0)).unwrap();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let (a_tx, a_rx) = mpsc::channel();
    let a = {
        let port = port.clone();
        thread::spawn(move || {
            a_tx.send(port.get(Some(LONG)).unwrap().token).unwrap();
            exit_rx.recv_timeout(LONG).unwrap();
            // Exits holding the slot.
        })
    };
    assert_eq!(recv(&a_rx), 1);

    let (b_tx, b_rx) = mpsc::channel();
    let b = {
        let port = port.clone();
        thread::spawn(move || b_tx.send(port.get(Some(LONG)).map(|p| p.token)).unwrap())
    };
    wait_until("B to park", || waiting(&port) == 1);
    port.post(0, 2, Ok(0)).unwrap();
    let s = port.stats();
    assert_eq!((s.queued, s.active, s.waiting), (1, 1, 1));

    exit_tx.send(()).unwrap();
    join(a);
    assert_eq!(recv(&b_rx).unwrap(), 2, "B got the packet when A exited");
    join(b);
    assert_eq!(port.stats().active, 0, "B exited too");
}

/// Limit 1: `blocking` frees the slot so a waiter runs; coming back makes the
/// thread active again over the limit, and no waiter is released until the
/// count falls below it.
#[test]
fn coming_back_from_blocking_can_exceed_the_limit_but_wakes_nobody() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    port.post(0, 1, Ok(0)).unwrap();
    let (a_tx, a_rx) = mpsc::channel();
    let (a_go_tx, a_go_rx) = mpsc::channel::<()>();
    let (a_exit_tx, a_exit_rx) = mpsc::channel::<()>();
    let a = {
        let port = port.clone();
        thread::spawn(move || {
            a_tx.send(port.get(Some(LONG)).unwrap().token).unwrap();
            port.blocking(|| a_go_rx.recv_timeout(LONG).unwrap());
            a_tx.send(0).unwrap();
            a_exit_rx.recv_timeout(LONG).unwrap();
        })
    };
    assert_eq!(recv(&a_rx), 1);

    let (b_tx, b_rx) = mpsc::channel();
    let (b_exit_tx, b_exit_rx) = mpsc::channel::<()>();
    let b = {
        let port = port.clone();
        thread::spawn(move || {
            b_tx.send(port.get(Some(LONG)).unwrap().token).unwrap();
            b_exit_rx.recv_timeout(LONG).unwrap();
        })
    };
    wait_until("B to park", || waiting(&port) == 1);
    port.post(0, 2, Ok(0)).unwrap();
    // Whether A entered `blocking` before or after B parked, its slot is
    // free now or soon, and B gets the packet.
    assert_eq!(recv(&b_rx), 2, "B ran while A was blocked");
    wait_until("B to be the only active thread", || {
        let s = port.stats();
        (s.active, s.waiting, s.queued) == (1, 0, 0)
    });

    a_go_tx.send(()).unwrap();
    assert_eq!(recv(&a_rx), 0);
    assert_eq!(port.stats().active, 2, "A is back, over the limit");
    assert_eq!(port.stats().max_active, 2);

    let (c_tx, c_rx) = mpsc::channel();
    let c = {
        let port = port.clone();
        thread::spawn(move || c_tx.send(port.get(Some(LONG)).unwrap().token).unwrap())
    };
    wait_until("C to park", || waiting(&port) == 1);
    port.post(0, 3, Ok(0)).unwrap();
    b_exit_tx.send(()).unwrap();
    join(b);
    let s = port.stats();
    assert_eq!(
        (s.active, s.queued, s.waiting),
        (1, 1, 1),
        "still at the limit"
    );
    assert!(c_rx.try_recv().is_err());

    a_exit_tx.send(()).unwrap();
    join(a);
    assert_eq!(recv(&c_rx), 3, "C runs once the count fell below the limit");
    join(c);
}

#[test]
fn get_with_zero_timeout_never_blocks() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let start = Instant::now();
    for _ in 0..100 {
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
    }
    let mut slots: [Option<Packet<u64>>; 4] = Default::default();
    assert!(matches!(
        port.get_many(&mut slots, Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    let mut v = Vec::new();
    assert!(matches!(
        port.get_into(&mut v, 4, Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    assert!(v.is_empty() && slots.iter().all(Option::is_none));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(port.stats().waiting, 0);

    port.post(0, 5, Ok(0)).unwrap();
    assert_eq!(port.get(Some(Duration::ZERO)).unwrap().token, 5);
}

#[test]
fn a_timeout_returns_timeout_after_the_time_and_leaves_nothing_behind() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let timeout = Duration::from_millis(150);
    let start = Instant::now();
    let r = port.get(Some(timeout));
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(took >= timeout, "returned after {took:?}");
    assert!(took < Duration::from_secs(5), "returned after {took:?}");
    assert_eq!(
        port.stats().waiting,
        0,
        "the timed-out waiter left the stack"
    );

    // The next packet is queued for the next taker, not lost to a waiter that left.
    port.post(0, 9, Ok(0)).unwrap();
    assert_eq!(port.stats().queued, 1);
    assert_eq!(port.get(Some(Duration::ZERO)).unwrap().token, 9);

    // The same from an active thread, and for the batch forms.
    let start = Instant::now();
    let mut slots: [Option<Packet<u64>>; 2] = Default::default();
    assert!(matches!(
        port.get_many(&mut slots, Some(timeout)),
        Err(Error::Timeout)
    ));
    assert!(start.elapsed() >= timeout);
    assert!(!port.is_active());
    let start = Instant::now();
    assert!(matches!(
        port.get_into(&mut Vec::new(), 2, Some(timeout)),
        Err(Error::Timeout)
    ));
    assert!(start.elapsed() >= timeout);
    let s = port.stats();
    assert_eq!((s.active, s.waiting, s.queued), (0, 0, 0));
}

#[test]
fn a_timed_waiter_gets_a_packet_posted_before_its_deadline() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let t = {
        let port = port.clone();
        thread::spawn(move || port.get(Some(LONG)).map(|p| p.token))
    };
    wait_until("the waiter to park", || waiting(&port) == 1);
    port.post(0, 4, Ok(0)).unwrap();
    assert_eq!(join(t).unwrap(), 4);
}

#[test]
fn get_many_takes_a_batch_and_counts_it() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    for t in 0..10 {
        port.post(t, t, Ok(0)).unwrap();
    }
    let mut slots: [Option<Packet<u64>>; 4] = Default::default();
    assert_eq!(port.get_many(&mut slots, Some(LONG)).unwrap(), 4);
    let tokens: Vec<u64> = slots.iter_mut().map(|s| s.take().unwrap().token).collect();
    assert_eq!(tokens, [0, 1, 2, 3], "FIFO");
    assert_eq!(port.stats().queued, 6);
    assert_eq!(
        port.stats().active,
        1,
        "one active thread for a whole batch"
    );

    assert_eq!(port.get_many(&mut slots, Some(LONG)).unwrap(), 4);
    let tokens: Vec<u64> = slots.iter_mut().map(|s| s.take().unwrap().token).collect();
    assert_eq!(tokens, [4, 5, 6, 7]);

    // Slots past the count are left as they were.
    slots[2] = Some(Packet::new(77, 77, Ok(0)));
    assert_eq!(port.get_many(&mut slots, Some(LONG)).unwrap(), 2);
    let got: Vec<u64> = slots
        .iter()
        .map(|s| s.as_ref().map_or(0, |p| p.token))
        .collect();
    assert_eq!(got, [8, 9, 77, 0]);

    assert!(matches!(
        port.get_many(&mut slots, Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    assert!(matches!(
        port.get_many(&mut [], Some(Duration::ZERO)),
        Err(Error::InvalidArgument(_))
    ));

    let s = port.stats();
    assert_eq!((s.posted, s.dequeued, s.queued), (10, 10, 0));
    assert_eq!(s.threads.len(), 1);
    assert_eq!(s.threads[0].thread, thread::current().id());
    assert_eq!(s.threads[0].dequeued, 10);
}

#[test]
fn get_into_appends_up_to_max() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    for t in 0..5 {
        port.post(0, t, Ok(0)).unwrap();
    }
    let mut v = vec![Packet::new(0, 99, Ok(0))];
    assert_eq!(port.get_into(&mut v, 3, Some(LONG)).unwrap(), 3);
    assert_eq!(v.iter().map(|p| p.token).collect::<Vec<_>>(), [99, 0, 1, 2]);
    assert_eq!(port.get_into(&mut v, 10, Some(LONG)).unwrap(), 2);
    assert_eq!(
        v.iter().map(|p| p.token).collect::<Vec<_>>(),
        [99, 0, 1, 2, 3, 4]
    );
    assert!(matches!(
        port.get_into(&mut v, 0, Some(Duration::ZERO)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(port.stats().dequeued, 5);
}

/// A parked `get_many` is handed one packet and then takes what else is
/// queued, up to its slots; nothing is lost or taken twice.
#[test]
fn a_parked_get_many_collects_packets_posted_after_it() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let t = {
        let port = port.clone();
        thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 6 {
                let mut slots: [Option<Packet<u64>>; 4] = Default::default();
                let n = port.get_many(&mut slots, Some(LONG)).unwrap();
                assert!((1..=4).contains(&n));
                assert!(slots[n..].iter().all(Option::is_none));
                got.extend(slots[..n].iter_mut().map(|s| s.take().unwrap().token));
            }
            got
        })
    };
    wait_until("the waiter to park", || waiting(&port) == 1);
    for t in 0..6 {
        port.post(0, t, Ok(0)).unwrap();
    }
    assert_eq!(join(t), [0, 1, 2, 3, 4, 5]);
    assert_eq!(port.stats().dequeued, 6);
}

/// A token that counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn close_wakes_every_waiter_with_closed() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let waiters: Vec<_> = (0..3u64)
        .map(|i| {
            let p = port.clone();
            let h = thread::spawn(move || p.get(None));
            wait_until("the waiter to park", || waiting(&port) == i + 1);
            h
        })
        .collect();
    let batch = {
        let p = port.clone();
        thread::spawn(move || {
            let mut slots: [Option<Packet<u64>>; 2] = Default::default();
            p.get_many(&mut slots, Some(LONG))
        })
    };
    wait_until("the batch waiter to park", || waiting(&port) == 4);
    assert!(!port.is_closed());
    port.close();
    assert!(port.is_closed());
    for h in waiters {
        let r = join(h);
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
    let r = join(batch);
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    assert_eq!(port.stats().waiting, 0);
    assert_eq!(Error::Closed.to_string(), "completion port closed");
}

#[test]
fn after_close_get_and_post_fail_and_queued_packets_are_dropped() {
    let drops = Arc::new(AtomicUsize::new(0));
    let port = CompletionPort::<Counted>::new(2).unwrap();
    for k in 0..5 {
        port.post(k, Counted(drops.clone()), Ok(0)).unwrap();
    }
    let p = port.get(Some(LONG)).unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    port.close();
    assert_eq!(drops.load(Ordering::SeqCst), 4, "the four queued tokens");
    drop(p);
    assert_eq!(drops.load(Ordering::SeqCst), 5);

    let r = port.post(9, Counted(drops.clone()), Ok(0));
    assert!(matches!(r, Err(Error::Closed)));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        6,
        "a refused post drops its token"
    );

    // Every later get fails with Closed, whatever its timeout.
    for timeout in [None, Some(Duration::ZERO), Some(LONG)] {
        assert!(matches!(port.get(timeout), Err(Error::Closed)));
    }
    let mut slots: [Option<Packet<Counted>>; 2] = Default::default();
    assert!(matches!(
        port.get_many(&mut slots, None),
        Err(Error::Closed)
    ));
    assert!(matches!(
        port.get_into(&mut Vec::new(), 2, None),
        Err(Error::Closed)
    ));
    assert!(!port.is_active());

    port.close(); // twice is harmless
    assert!(port.is_closed());
    assert_eq!(drops.load(Ordering::SeqCst), 6);
    drop(port);
    assert_eq!(drops.load(Ordering::SeqCst), 6);
}

/// The drain on close leaves the counters true: what was queued is gone, so
/// `stats().queued` says 0 (it used to keep the count from before the close).
#[test]
fn close_leaves_the_queued_count_true() {
    let port = CompletionPort::<u64>::new(2).unwrap();
    for k in 0..3 {
        port.post(k, k, Ok(0)).unwrap();
    }
    assert_eq!(port.stats().queued, 3);
    port.close();
    let s = port.stats();
    assert_eq!((s.queued, s.active, s.waiting), (0, 0, 0));
    assert_eq!(s.posted, 3);
    assert!(matches!(port.post(9, 9, Ok(0)), Err(Error::Closed)));
    assert_eq!(port.stats().queued, 0, "a refused post is not queued");
    assert!(format!("{port:?}").contains("queued: 0"));

    // An active thread that closes its own port gives its slot up too.
    let port = CompletionPort::<u64>::new(2).unwrap();
    for k in 0..3 {
        port.post(k, k, Ok(0)).unwrap();
    }
    let _p = port.get(Some(LONG)).unwrap();
    port.close();
    let s = port.stats();
    assert_eq!((s.queued, s.dequeued), (0, 1));
    assert!(matches!(port.get(None), Err(Error::Closed)));
    assert_eq!(port.stats().active, 0);
}

/// Dropping the last handle closes the port even while a thread that was
/// active on it still holds its state.
#[test]
fn dropping_the_last_handle_closes_the_port() {
    let drops = Arc::new(AtomicUsize::new(0));
    let port = CompletionPort::<Counted>::new(2).unwrap();
    for _ in 0..4 {
        port.post(0, Counted(drops.clone()), Ok(0)).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let holder = {
        let port = port.clone();
        thread::spawn(move || {
            let p = port.get(Some(LONG)).unwrap();
            drop(p);
            assert!(port.is_active());
            drop(port); // still active on the port, without a handle
            tx.send(()).unwrap();
            exit_rx.recv_timeout(LONG).unwrap();
        })
    };
    recv(&rx);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    let clone = port.clone();
    drop(port);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "a clone keeps it open");
    assert!(!clone.is_closed());
    drop(clone);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        4,
        "closed: queued packets dropped"
    );
    exit_tx.send(()).unwrap();
    join(holder);
}

/// A waiter holds a handle of its own, so the port stays open under it; a
/// close from another handle ends its wait.
#[test]
fn a_closed_port_ends_a_wait_forever() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let t = {
        let p = port.clone();
        thread::spawn(move || p.get(None))
    };
    wait_until("the waiter to park", || waiting(&port) == 1);
    drop(port.clone());
    assert!(!port.is_closed());
    port.close();
    assert!(matches!(join(t), Err(Error::Closed)));
}

#[test]
fn stats_add_up_after_a_multi_thread_run() {
    const PACKETS: u64 = 5000;
    const THREADS: usize = 4;
    let port = CompletionPort::<u64>::new(2).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let port = port.clone();
            thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || {
                    let (mut n, mut sum) = (0u64, 0u64);
                    loop {
                        let p = port.get(Some(LONG)).expect("a packet in time");
                        n += 1;
                        if p.key == STOP {
                            return (thread::current().id(), n, sum);
                        }
                        sum += p.token;
                    }
                })
                .unwrap()
        })
        .collect();
    // Two posting threads at once.
    let posters: Vec<_> = (0..2)
        .map(|k| {
            let port = port.clone();
            thread::spawn(move || {
                for t in (k..PACKETS).step_by(2) {
                    port.post(0, t, Ok(0)).unwrap();
                }
            })
        })
        .collect();
    posters.into_iter().for_each(join);
    for _ in 0..THREADS {
        port.post(STOP, 0, Ok(0)).unwrap();
    }
    let results: Vec<_> = workers.into_iter().map(join).collect();

    let sum: u64 = results.iter().map(|r| r.2).sum();
    assert_eq!(
        sum,
        PACKETS * (PACKETS - 1) / 2,
        "every packet taken exactly once"
    );
    let stats = port.stats();
    let total = PACKETS + THREADS as u64;
    assert_eq!(stats.posted, total);
    assert_eq!(stats.dequeued, total);
    assert_eq!(stats.threads.iter().map(|t| t.dequeued).sum::<u64>(), total);
    assert!(stats.threads.len() <= THREADS);
    for t in &stats.threads {
        let name = t.name.as_deref().unwrap_or("");
        assert!(name.starts_with("load-"), "{name}");
        let (_, n, _) = results.iter().find(|r| r.0 == t.thread).unwrap();
        assert_eq!(*n, t.dequeued, "thread {name}'s load");
    }
    assert_eq!(stats.completed, 0);
    assert!(stats.max_active <= 2);
    assert!(stats.wakeups >= stats.handoffs);
    assert_eq!((stats.active, stats.waiting, stats.queued), (0, 0, 0));
}

/// Two ports, a thread on each, one token bounced between them: most hops
/// go through a park and a wake, so a lost wake-up stalls the run and fails
/// it at `LONG`.
#[test]
fn ping_pong_loses_no_wakeup() {
    const ROUNDS: u64 = 20_000;
    let ping = CompletionPort::<u64>::new(1).unwrap();
    let pong = CompletionPort::<u64>::new(1).unwrap();
    let bouncer = |from: CompletionPort<u64>, to: CompletionPort<u64>| {
        thread::spawn(move || loop {
            let p = from.get(Some(LONG)).expect("the ball came back in time");
            to.post(0, p.token + 1, Ok(0)).unwrap();
            if p.token >= ROUNDS {
                return;
            }
        })
    };
    let a = bouncer(ping.clone(), pong.clone());
    let b = bouncer(pong.clone(), ping.clone());
    ping.post(0, 0, Ok(0)).unwrap();
    join(a);
    join(b);
    let (sa, sb) = (ping.stats(), pong.stats());
    assert_eq!(sa.posted + sb.posted, sa.dequeued + sb.dequeued + 1);
}

/// Many threads posting and taking at once, with batches: every token
/// arrives exactly once and the port ends empty.
#[test]
fn concurrent_posts_and_batched_gets_deliver_each_packet_once() {
    const PER_POSTER: u64 = 5_000;
    const POSTERS: u64 = 3;
    let port = CompletionPort::<u64>::new(2).unwrap();
    let seen = Arc::new(
        (0..PER_POSTER * POSTERS)
            .map(|_| AtomicUsize::new(0))
            .collect::<Vec<_>>(),
    );
    let taken = Arc::new(AtomicUsize::new(0));
    let takers: Vec<_> = (0..4)
        .map(|i| {
            let (port, seen, taken) = (port.clone(), seen.clone(), taken.clone());
            thread::spawn(move || {
                let total = (PER_POSTER * POSTERS) as usize;
                while taken.load(Ordering::SeqCst) < total {
                    let mut slots: [Option<Packet<u64>>; 3] = Default::default();
                    let n = match port
                        .get_many(&mut slots[..1 + i % 3], Some(Duration::from_millis(20)))
                    {
                        Ok(n) => n,
                        Err(Error::Timeout) => continue,
                        Err(e) => panic!("{e}"),
                    };
                    for s in &mut slots[..n] {
                        let t = s.take().unwrap().token;
                        seen[t as usize].fetch_add(1, Ordering::SeqCst);
                    }
                    taken.fetch_add(n, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let posters: Vec<_> = (0..POSTERS)
        .map(|k| {
            let port = port.clone();
            thread::spawn(move || {
                for t in k * PER_POSTER..(k + 1) * PER_POSTER {
                    port.post(0, t, Ok(0)).unwrap();
                }
            })
        })
        .collect();
    posters.into_iter().for_each(join);
    takers.into_iter().for_each(join);
    assert!(seen.iter().all(|n| n.load(Ordering::SeqCst) == 1));
    let s = port.stats();
    assert_eq!(
        (s.posted, s.dequeued),
        (PER_POSTER * POSTERS, PER_POSTER * POSTERS)
    );
    assert_eq!((s.queued, s.active, s.waiting), (0, 0, 0));
}

/// Each port counts its own loads, even when one thread uses a port, drops
/// it, and then uses a new one (which may be allocated where the first was).
#[test]
fn per_thread_loads_belong_to_their_port() {
    for round in 0..20u64 {
        let port = CompletionPort::<u64>::new(1).unwrap();
        for t in 0..=round {
            port.post(0, t, Ok(0)).unwrap();
        }
        for _ in 0..=round {
            port.get(Some(LONG)).unwrap();
        }
        let s = port.stats();
        assert_eq!(s.threads.len(), 1, "round {round}");
        assert_eq!(s.dequeued, round + 1, "round {round}");
        // Give the slot up, so the port's memory can be freed and reused.
        assert!(matches!(
            port.get(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
    }
}
