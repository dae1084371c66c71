//! Loom model of the port's queue, waiter stack and concurrency limit.
//!
//! Each model runs a few threads against one [`Core`] and checks, in every
//! interleaving loom explores, that no packet is lost or taken twice, that
//! no thread stays parked while it could run (loom reports a thread parked
//! forever as a deadlock), and that once the threads are done no waiter is
//! left runnable (`!waiter_runnable`, the invariant of `port/core.rs`).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p ringport --release --test loom`
//! (`.ci/run` also runs `claim_that_finds_nothing_gives_its_slot_to_a_waiter` at 3).
#![cfg(loom)]

use std::fmt::Debug;
use std::time::Instant;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use ringport::loom_model::{Core, Waiter};

/// The name of a `NoPacket` (not exported; its `Debug` form is enough here).
fn kind(e: impl Debug) -> String {
    format!("{e:?}")
}

/// What `CompletionPort::get` does: take (popping at once if the thread
/// stays active, claiming a slot if not), or park if allowed (`wait`).
/// `deadline: Some(_)` is a timed wait, which loom models as one chance to
/// be released before the deadline passes.
fn get(
    core: &Core<u32>,
    was_active: bool,
    wait: bool,
    deadline: Option<Instant>,
) -> Result<u32, String> {
    match core.try_get(was_active, false) {
        Err(e) if wait && kind(e) == "Empty" => {
            let me = Arc::new(Waiter::for_current_thread());
            core.park(&me, deadline).map_err(kind)
        }
        other => other.map_err(kind),
    }
}

/// Takes the one packet this (active or not) thread can take, or panics.
fn get_now(core: &Core<u32>, was_active: bool) -> u32 {
    get(core, was_active, false, None).expect("a claimable packet")
}

/// Runs `f` on a new thread with its own handle on `core`.
fn spawn_on<T: Send + 'static, R: Send + 'static>(
    core: &Arc<Core<T>>,
    f: impl FnOnce(Arc<Core<T>>) -> R + Send + 'static,
) -> thread::JoinHandle<R> {
    let core = core.clone();
    thread::spawn(move || f(core))
}

/// Spins (as loom requires: yielding) until `cond` holds.
fn spin_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::yield_now();
    }
}

fn queued(core: &Core<u32>) -> u64 {
    core.snapshot().0
}
fn active(core: &Core<u32>) -> u64 {
    core.snapshot().1
}
fn waiters(core: &Core<u32>) -> u64 {
    core.snapshot().2
}

/// The invariant, for a moment when no transition is half done.
fn check_quiescent(core: &Core<u32>) {
    assert!(
        !core.waiter_runnable(),
        "a waiter could run but is parked: {:?}",
        core.snapshot()
    );
}

/// A post races a thread that finds nothing and parks: the packet reaches
/// it, whichever order the claim, the park and the publish happen in.
#[test]
fn post_races_park() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        let getter = spawn_on(&core, move |core| get(&core, false, true, None));
        core.push(7).unwrap();
        assert_eq!(getter.join().unwrap(), Ok(7));
        assert_eq!(core.snapshot(), (0, 1, 0, false));
        check_quiescent(&core);
    });
}

/// Two posters and two parkers (limit 2): each packet reaches exactly one
/// thread and nobody is left parked.
#[test]
fn two_posts_race_two_parkers() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(2));
        let getters: Vec<_> = (0..2)
            .map(|_| spawn_on(&core, move |core| get(&core, false, true, None).unwrap()))
            .collect();
        let poster = spawn_on(&core, move |core| core.push(1).unwrap());
        core.push(2).unwrap();
        poster.join().unwrap();
        let mut got: Vec<u32> = getters.into_iter().map(|g| g.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert_eq!(core.snapshot(), (0, 2, 0, false));
        check_quiescent(&core);
    });
}

/// Limit 1, two packets, two getters that each exit (`release`) after
/// their packet: whichever gets the slot first, its exit lets the other,
/// parked or about to park, take the second packet.
#[test]
fn release_on_exit_races_a_parker() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        core.push(1).unwrap();
        core.push(2).unwrap();
        let getters: Vec<_> = (0..2)
            .map(|_| {
                spawn_on(&core, move |core| {
                    let p = get(&core, false, true, None).unwrap();
                    core.release(); // the thread exits while active
                    p
                })
            })
            .collect();
        let mut got: Vec<u32> = getters.into_iter().map(|g| g.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert_eq!(core.snapshot(), (0, 0, 0, false));
        check_quiescent(&core);
    });
}

/// Limit 1, one thread active and one parked: a post queues (the limit is
/// reached); `release` (a blocking section) must then wake the parked one,
/// whatever the order of post, park and release. The thread that comes back
/// from its blocking section is active again, over the limit.
#[test]
fn release_wakes_a_waiter_when_the_limit_frees_up() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let waiter = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        let poster = spawn_on(&core, move |core| core.push(2).unwrap());
        core.release(); // enter a blocking section
        poster.join().unwrap();
        assert_eq!(waiter.join().unwrap(), 2);
        core.reacquire(); // back, over the limit
        assert_eq!(core.snapshot(), (0, 2, 0, false));
        check_quiescent(&core);
    });
}

/// Limit 1: an active thread calls `get` again while a post and a (timed)
/// parker race it. The active thread may take the packet itself; if it
/// finds nothing it gives its slot up, and then the packet must not be left
/// queued with a slot free and the parker asleep.
#[test]
fn get_again_races_a_post_and_a_parker() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let waiter = spawn_on(&core, move |core| {
            get(&core, false, true, Some(Instant::now()))
        });
        let poster = spawn_on(&core, move |core| core.push(2).unwrap());
        let mine = get(&core, true, false, None);
        poster.join().unwrap();
        let theirs = waiter.join().unwrap();
        let taken = [&mine, &theirs].iter().filter(|r| r.is_ok()).count();
        match (&mine, &theirs) {
            (Ok(2), Err(e)) | (Err(e), Ok(2)) => assert_eq!(e, "Empty"),
            (Err(a), Err(b)) => {
                assert_eq!((a.as_str(), b.as_str()), ("Empty", "Empty"));
                // Nobody took it: it is queued and claimable, not lost.
                assert_eq!(core.snapshot(), (1, 0, 0, false));
                check_quiescent(&core);
                assert_eq!(get_now(&core, false), 2);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        assert!(taken <= 1);
        assert_eq!((queued(&core), active(&core), waiters(&core)), (0, 1, 0));
        check_quiescent(&core);
    });
}

/// Limit 3: an active thread calls `get` again while a post races it and
/// two threads are parked in a known order. Either the active thread takes
/// the packet, or the *last* parked thread does; the first parked is never
/// served before the second, and nobody is left parked beside a claimable
/// packet.
#[test]
fn get_again_races_a_post_and_keeps_lifo() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(3));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let first = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        spin_until(|| waiters(&core) == 1);
        let second = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        spin_until(|| waiters(&core) == 2);
        let poster = spawn_on(&core, move |core| core.push(2).unwrap());
        let mine = get(&core, true, false, None);
        poster.join().unwrap();
        match mine {
            Ok(2) => {
                check_quiescent(&core);
                core.push(3).unwrap();
                assert_eq!(second.join().unwrap(), 3, "LIFO: last parked, first served");
            }
            Err(e) => {
                assert_eq!(e, "Empty");
                assert_eq!(second.join().unwrap(), 2, "LIFO: last parked, first served");
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        core.push(4).unwrap();
        assert_eq!(first.join().unwrap(), 4);
        assert_eq!((queued(&core), waiters(&core)), (0, 0));
        check_quiescent(&core);
    });
}

/// Limit 1, a waiter parked, and two threads active (one came back from a
/// blocking section, over the limit): the active thread that calls `get`
/// again must not take the packet a post races in (its own activity ends
/// first and the other still fills the limit), whatever the order of its
/// claim and the post; once the other thread exits, the waiter gets the
/// packet.
#[test]
fn get_again_over_the_limit_races_a_post() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let waiter = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        spin_until(|| waiters(&core) == 1);
        core.reacquire(); // another thread is back from blocking: 2 active, limit 1
        let poster = spawn_on(&core, move |core| core.push(2).unwrap());
        assert_eq!(get(&core, true, false, None), Err("Empty".to_string()));
        poster.join().unwrap();
        check_quiescent(&core);
        core.release(); // the other thread exits
        assert_eq!(waiter.join().unwrap(), 2);
        assert_eq!(core.snapshot(), (0, 1, 0, false));
        check_quiescent(&core);
    });
}

/// Limit 1: an active thread's `get` races a post and a close. Whatever the
/// order, the port ends closed with nothing counted as queued (the drain on
/// close leaves the counters true, and a post refused by a closed port
/// takes its count back).
#[test]
fn get_again_races_close_and_a_post() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let poster = spawn_on(&core, move |core| core.push(2).is_ok());
        let closer = spawn_on(&core, move |core| core.close());
        let mine = get(&core, true, false, None);
        let posted = poster.join().unwrap();
        assert!(closer.join().unwrap());
        if let Ok(p) = mine {
            assert!(posted && p == 2);
        }
        let (q, a, w, closed) = core.snapshot();
        assert_eq!((q, w, closed), (0, 0, true), "close leaves nothing queued");
        assert!(a <= 1);
    });
}

/// Two threads parked in a known order (limit 2, so both may run): the
/// last to park gets the first packet and the other the second, even when
/// the two posts come back to back (a grant pops its packet under the
/// stack's mutex and hands that packet to that waiter).
#[test]
fn handoff_goes_to_the_last_waiter() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(2));
        let first = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        // The second starts only once the first has parked.
        spin_until(|| waiters(&core) == 1);
        let second = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        spin_until(|| waiters(&core) == 2);
        core.push(10).unwrap();
        // The first waiter is parked and nobody is mid-transition.
        check_quiescent(&core);
        assert_eq!(waiters(&core), 1);
        core.push(20).unwrap();
        assert_eq!(
            second.join().unwrap(),
            10,
            "LIFO: last parked, first served"
        );
        assert_eq!(first.join().unwrap(), 20);
        assert_eq!(core.snapshot(), (0, 2, 0, false));
        check_quiescent(&core);
    });
}

/// Limit 2, one thread active and one parked: the active thread's `get`
/// (which pops without claiming) races a post's grant for the packet.
/// Either the active thread takes it, and then the waiter was not woken
/// (it takes the next post), or the waiter does and the active thread
/// finds nothing; the grant that lost its packet is undone.
#[test]
fn active_pop_races_a_grant() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(2));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let waiter = spawn_on(&core, move |core| get(&core, false, true, None).unwrap());
        spin_until(|| waiters(&core) == 1);
        let poster = spawn_on(&core, move |core| core.push(2).unwrap());
        let mine = get(&core, true, false, None);
        poster.join().unwrap();
        check_quiescent(&core);
        match mine {
            Ok(2) => {
                assert_eq!(core.snapshot(), (0, 1, 1, false), "the waiter still parked");
                core.push(3).unwrap();
                assert_eq!(waiter.join().unwrap(), 3);
            }
            Err(e) => {
                assert_eq!(e, "Empty");
                assert_eq!(waiter.join().unwrap(), 2);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        assert_eq!((queued(&core), waiters(&core)), (0, 0));
        check_quiescent(&core);
    });
}

/// Limit 1, one thread parked: a thread that is not active claims a slot
/// (to pop) while a post races it. Its claim may hold the only slot when
/// the poster looks, so the poster grants nothing; if its pop then finds
/// nothing (the order is claim, post's look, pop... or the packet came
/// later), giving the slot back must grant the packet to the waiter.
#[test]
fn claim_races_a_post_and_a_parked_waiter() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        let waiter = spawn_on(&core, move |core| get(&core, false, true, None));
        spin_until(|| waiters(&core) == 1);
        let claimer = spawn_on(&core, move |core| get(&core, false, false, None));
        core.push(7).unwrap();
        let mine = claimer.join().unwrap();
        check_quiescent(&core);
        match mine {
            Ok(7) => {
                assert_eq!(core.snapshot(), (0, 1, 1, false));
                core.close();
                assert_eq!(waiter.join().unwrap(), Err("Closed".to_string()));
            }
            Err(e) => {
                assert_eq!(e, "Empty");
                assert_eq!(waiter.join().unwrap(), Ok(7));
                assert_eq!(core.snapshot(), (0, 1, 0, false));
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    });
}

/// Limit 2, one thread active and one parked: a thread that is not active
/// claims the second slot while posts race it and the active thread pops.
/// If the active thread takes the packet the claimant counted on, the
/// claimant's pop finds nothing and it gives the slot back, and a packet
/// posted while that slot looked taken must then go to the waiter (the
/// releaser's half of the handshake): nobody is left parked beside it.
#[test]
fn claim_that_finds_nothing_gives_its_slot_to_a_waiter() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(2));
        core.push(1).unwrap();
        assert_eq!(get_now(&core, false), 1); // this thread is active
        let waiter = spawn_on(&core, move |core| get(&core, false, true, None));
        spin_until(|| waiters(&core) == 1);
        let claimer = spawn_on(&core, move |core| get(&core, false, false, None));
        let poster = spawn_on(&core, move |core| {
            core.push(2).unwrap();
            core.push(3).unwrap();
        });
        let mine = get(&core, true, false, None);
        poster.join().unwrap();
        let theirs = claimer.join().unwrap();
        check_quiescent(&core);
        core.close();
        let waited = waiter.join().unwrap();
        let mut got: Vec<u32> = [mine, theirs, waited]
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        got.sort_unstable();
        got.dedup();
        assert!(got.iter().all(|p| [2, 3].contains(p)), "{got:?}");
    });
}

/// Close races a parking getter and a post: the getter returns (the packet
/// or Closed) instead of hanging, a refused packet is dropped, and the port
/// ends closed with nobody on the stack.
#[test]
fn close_races_get_and_post() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        let getter = spawn_on(&core, move |core| get(&core, false, true, None));
        let poster = spawn_on(&core, move |core| core.push(5).is_ok());
        assert!(core.close());
        let posted = poster.join().unwrap();
        match getter.join().unwrap() {
            Ok(p) => {
                assert!(posted);
                assert_eq!(p, 5);
            }
            Err(e) => assert_eq!(e, "Closed"),
        }
        // (A packet counted before the close may still be counted in
        // `queued`, but the queue is drained and nobody can claim it.)
        let (_, _, waiters, closed) = core.snapshot();
        assert!(closed);
        assert_eq!(waiters, 0);
        assert_eq!(get(&core, false, true, None), Err("Closed".to_string()));
        assert!(!core.close(), "closing twice reports it was closed already");
        check_quiescent(&core);
    });
}

/// Close races two parked threads: both wake with Closed.
#[test]
fn close_wakes_every_parked_thread() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(2));
        let getters: Vec<_> = (0..2)
            .map(|_| spawn_on(&core, move |core| get(&core, false, true, None)))
            .collect();
        core.close();
        for g in getters {
            assert_eq!(g.join().unwrap(), Err("Closed".to_string()));
        }
        assert_eq!(core.snapshot(), (0, 0, 0, true));
    });
}

/// A timed wait races a grant: either the waiter gets the packet or it
/// times out and the packet stays queued for the next taker; the waiter's
/// count leaves the state word either way.
#[test]
fn timed_wait_races_a_grant() {
    loom::model(|| {
        let core = Arc::new(Core::<u32>::new(1));
        let waiter = spawn_on(&core, move |core| {
            get(&core, false, true, Some(Instant::now()))
        });
        core.push(3).unwrap();
        match waiter.join().unwrap() {
            Ok(p) => {
                assert_eq!(p, 3);
                assert_eq!(core.snapshot(), (0, 1, 0, false));
            }
            Err(e) => {
                assert_eq!(e, "Empty");
                assert_eq!(core.snapshot(), (1, 0, 0, false));
                check_quiescent(&core);
                assert_eq!(get_now(&core, false), 3);
            }
        }
        check_quiescent(&core);
    });
}

/// Packets are dropped exactly once: by a taker, or by close's drain, or by
/// a post refused on a closed port.
#[test]
fn every_packet_is_dropped_once() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let core = Arc::new(Core::<Counted>::new(1));
        core.push(Counted(drops.clone())).unwrap();
        let poster = {
            let (core, drops) = (core.clone(), drops.clone());
            thread::spawn(move || {
                let _ = core.push(Counted(drops));
            })
        };
        let taker = spawn_on(&core, move |core| {
            drop(core.try_get(false, false));
        });
        core.close();
        poster.join().unwrap();
        taker.join().unwrap();
        drop(core);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    });
}
