//! `ringport sum --timeline FILE.svg` and `ringport serve … --timeline
//! FILE.svg`: what each worker thread did, drawn.
//!
//! Recording must not change the schedule it records, so each worker owns
//! its [`Lane`], with room for every packet reserved before the run, and
//! writes into it with a monotonic clock read and a push: no lock, no
//! allocation, nothing shared. The lanes come back through `join` and are
//! merged here, after the run.
//!
//! The port does not say which waiting thread it released for a post; the
//! picture derives it from the records: a packet taken by a thread whose
//! `get` started before the packet was posted went to a waiter the port
//! released (woken); one taken by a thread whose `get` started after the
//! post was queued, and taken by a thread coming back for more. A post
//! grants a waiter a claim on the queue, not that post's packet, so two
//! threads woken together may take their items in either order; what LIFO
//! fixes is *which* threads are woken: the ones that waited last.
//!
//! A server's packets are the kernel's completions, posted by no thread of
//! ours, so [`Recorder`] (the servers' lanes, filled from the worker pool's
//! handler) marks a packet as woken when its thread's `get` waited for it
//! at least [`Recording::waited_ns`]: a `get` that finds a packet queued
//! returns in a microsecond or two.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One packet as its worker saw it; times in ns since the run's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Take {
    /// The packet's key (the item's number, in post order).
    pub item: u64,
    /// When the thread called the `get` that returned this packet.
    pub asked: u64,
    /// When that `get` returned it.
    pub taken: u64,
    /// When the thread entered and left `port.blocking` (0, 0: it did not).
    pub blocked: (u64, u64),
    /// When it was done with it: the next `get` follows at once.
    pub done: u64,
}

/// One worker thread's records.
#[derive(Clone, Debug, Default)]
pub struct Lane {
    pub takes: Vec<Take>,
    /// Packets in the window not recorded because the lane was full.
    pub missed: u64,
}

impl Lane {
    /// A lane with room for `packets` records, so that the run never grows it.
    pub fn with_capacity(packets: usize) -> Lane {
        Lane {
            takes: Vec::with_capacity(packets),
            missed: 0,
        }
    }
}

/// The clock every record is read from; copied into each worker.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the start (monotonic: `Instant` is CLOCK_MONOTONIC).
    #[inline]
    pub fn now(self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A whole run: every lane, and when each item was posted.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub lanes: Vec<Lane>,
    /// When item `i` was posted, by item.
    pub posted: Vec<u64>,
    /// When each lane first called `get` (the order the waiters stacked up).
    pub first_get: Vec<u64>,
    /// The port's concurrency limit.
    pub limit: usize,
    /// The picture's caption.
    pub title: String,
    /// Without posts (a server's completions): a packet whose `get` took
    /// at least this long went to a waiting thread the port woke.
    pub waited_ns: Option<u64>,
}

/// What the records say about the port, beside the picture.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Packets handed to a thread that was waiting when they were posted.
    pub woken: usize,
    /// Threads woken out of the first stack of waiters (all parked before
    /// the first post), and whether they were the ones that parked last.
    pub first_woken: usize,
    pub first_woken_lifo: bool,
    /// The most threads active at once, as the records show it.
    pub max_active: usize,
}

impl Recording {
    /// Whether `t`'s packet was handed to its thread while it waited.
    pub fn woken(&self, t: &Take) -> bool {
        if let Some(w) = self.waited_ns {
            return t.taken.saturating_sub(t.asked) >= w;
        }
        self.posted
            .get(t.item as usize)
            .is_some_and(|&p| t.asked <= p)
    }

    /// Active-thread count changes, sorted: +1 when a packet is taken, −1
    /// while in `blocking`, −1 at the next `get` (the port's definition).
    pub fn active_steps(&self) -> Vec<(u64, i64)> {
        let mut ev = Vec::new();
        for t in self.lanes.iter().flat_map(|l| &l.takes) {
            ev.push((t.taken, 1));
            if t.blocked != (0, 0) {
                ev.push((t.blocked.0, -1));
                ev.push((t.blocked.1, 1));
            }
            ev.push((t.done, -1));
        }
        // At equal times the −1 first: a thread gives up its slot before
        // the one it lets in counts.
        ev.sort_unstable();
        ev
    }

    pub fn findings(&self) -> Findings {
        let mut f = Findings::default();
        let mut n: i64 = 0;
        for (_, d) in self.active_steps() {
            n += d;
            f.max_active = f.max_active.max(n as usize);
        }
        f.woken = self
            .lanes
            .iter()
            .flat_map(|l| &l.takes)
            .filter(|t| self.woken(t))
            .count();
        // Lanes parked before the first post, most recent first.
        let first_post = self.posted.first().copied().unwrap_or(0);
        let rank = self.wait_rank();
        let mut stack: Vec<usize> = (0..self.lanes.len())
            .filter(|&l| self.first_get.get(l).is_some_and(|&g| g < first_post))
            .collect();
        stack.sort_by_key(|&l| std::cmp::Reverse(rank[l]));
        let woken: Vec<bool> = stack
            .iter()
            .map(|&l| self.lanes[l].takes.first().is_some_and(|t| self.woken(t)))
            .collect();
        f.first_woken = woken.iter().filter(|&&w| w).count();
        // LIFO: the woken ones are a prefix of the stack, top down.
        f.first_woken_lifo = woken.iter().skip(f.first_woken).all(|&w| !w);
        f
    }

    /// Each lane's place in the first stack of waiters (0 = waited first).
    fn wait_rank(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lanes.len()).collect();
        order.sort_by_key(|&l| self.first_get.get(l).copied().unwrap_or(0));
        let mut rank = vec![0; order.len()];
        for (r, l) in order.into_iter().enumerate() {
            rank[l] = r;
        }
        rank
    }
}

/// The most records a server's timeline keeps, all lanes together (each
/// lane reserves its share before the run).
pub const MAX_SERVER_RECORDS: usize = 100_000;

/// A get that waited at least this long went to a thread the port woke.
pub const WAITED_NS: u64 = 10_000;

/// One worker's lane with the end of its last packet, on a cache line of
/// its own: only that worker writes it.
#[repr(align(128))]
struct Slot {
    lane: UnsafeCell<Lane>,
    last_done: UnsafeCell<u64>,
}

/// A server's workers recorded into a lane each, within a window of its
/// run: what `serve … --timeline` draws. A worker pool's handler calls
/// [`Recorder::record`] around each packet; the lanes come back through
/// [`Recorder::into_recording`] once the workers have stopped.
///
/// Recording takes two clock reads and a push into room reserved before
/// the run (packets past it are only counted): no lock, no allocation,
/// nothing shared between workers.
pub struct Recorder {
    clock: Clock,
    window: Range<u64>,
    slots: Vec<Slot>,
}

// SAFETY: slot `w` is written only by the thread that calls `record(w, …)`,
// which the caller of that unsafe method guarantees is one thread per
// index; the slots are read only once the recorder is owned again
// (`into_recording` takes it by value).
unsafe impl Sync for Recorder {}

impl Recorder {
    /// A recorder for `workers` workers that keeps the packets taken
    /// within `window` (from the recorder's start), at most `max_records`
    /// in all; the clock starts now.
    pub fn new(workers: usize, window: Range<Duration>, max_records: usize) -> Recorder {
        let per_lane = (max_records / workers.max(1)).max(1);
        Recorder {
            clock: Clock::start(),
            window: window.start.as_nanos() as u64..window.end.as_nanos() as u64,
            slots: (0..workers)
                .map(|_| Slot {
                    lane: UnsafeCell::new(Lane::with_capacity(per_lane)),
                    last_done: UnsafeCell::new(0),
                })
                .collect(),
        }
    }

    /// The window recorded, from the recorder's start.
    pub fn window(&self) -> Range<Duration> {
        Duration::from_nanos(self.window.start)..Duration::from_nanos(self.window.end)
    }

    /// Now on the recorder's clock: the handler reads it as it receives a
    /// packet, and gives it to [`record`](Self::record) after.
    #[inline]
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Records that worker `w` took packet `key` at `taken` and is done
    /// with it now; its `get` started when its last packet was done (the
    /// pool calls `get` again at once), or when the recorder started.
    ///
    /// # Safety
    /// Only one thread may ever call this with a given `w` (a worker pool
    /// runs worker `w`'s handler on worker `w`'s thread only).
    #[inline]
    pub unsafe fn record(&self, w: usize, key: u64, taken: u64) {
        let Some(slot) = self.slots.get(w) else {
            return;
        };
        let done = self.clock.now();
        // SAFETY: the caller guarantees this thread alone uses slot `w`.
        let (lane, last) = unsafe { (&mut *slot.lane.get(), &mut *slot.last_done.get()) };
        let asked = std::mem::replace(last, done);
        if !self.window.contains(&taken) {
            return;
        }
        if lane.takes.len() < lane.takes.capacity() {
            lane.takes.push(Take {
                item: key,
                asked,
                taken,
                blocked: (0, 0),
                done,
            });
        } else {
            lane.missed += 1;
        }
    }

    /// The lanes as a [`Recording`] of a server whose port has concurrency
    /// `limit`, captioned `title`.
    pub fn into_recording(self, limit: usize, title: String) -> Recording {
        let lanes: Vec<Lane> = self
            .slots
            .into_iter()
            .map(|s| s.lane.into_inner())
            .collect();
        Recording {
            first_get: vec![0; lanes.len()],
            lanes,
            posted: Vec::new(),
            limit,
            title,
            waited_ns: Some(WAITED_NS),
        }
    }
}

/// Parses `--timeline-window START..END` (seconds, or durations such as
/// `500ms..2s`), END after START.
pub fn parse_window(s: &str) -> Result<Range<Duration>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a window (START..END, e.g. 0..1 or 2s..2.5s)"))?;
    let (a, b) = (
        crate::args::parse_duration(a)?,
        crate::args::parse_duration(b)?,
    );
    if b <= a {
        return Err(format!("the window {s:?} ends before it starts"));
    }
    Ok(a..b)
}

mod draw;
pub use self::draw::{draw, lifo_line};

#[cfg(test)]
mod tests {
    use super::*;

    fn take(item: u64, asked: u64, taken: u64, done: u64) -> Take {
        Take {
            item,
            asked,
            taken,
            blocked: (0, 0),
            done,
        }
    }

    /// Two waiters (lane 0 waited first); item 0 goes to lane 1, the last
    /// waiter, item 1 to lane 0; item 2 is queued and taken by lane 1.
    fn two_lanes() -> Recording {
        Recording {
            lanes: vec![
                Lane {
                    takes: vec![take(1, 1, 22, 40)],
                    missed: 0,
                },
                Lane {
                    takes: vec![take(0, 2, 12, 30), take(2, 30, 31, 50)],
                    missed: 0,
                },
            ],
            posted: vec![10, 20, 25],
            first_get: vec![1, 2],
            limit: 2,
            title: "test".into(),
            waited_ns: None,
        }
    }

    #[test]
    fn findings_derive_wakeups_lifo_and_activity() {
        let r = two_lanes();
        assert!(r.woken(&r.lanes[0].takes[0]));
        assert!(!r.woken(&r.lanes[1].takes[1]));
        assert_eq!(
            r.findings(),
            Findings {
                woken: 2,
                first_woken: 2,
                first_woken_lifo: true,
                max_active: 2
            }
        );
    }

    #[test]
    fn a_woken_thread_below_a_sleeping_one_is_not_lifo() {
        let mut r = two_lanes();
        // Lane 0 (waited first) woken, lane 1 (waited last) never took
        // anything until it came back with item 2 — it was skipped.
        r.lanes[1].takes.remove(0);
        r.lanes[1].takes[0].asked = 2;
        r.posted[2] = 1_000;
        r.lanes[1].takes[0].taken = 1_010;
        r.lanes[1].takes[0].done = 1_020;
        let f = r.findings();
        assert_eq!((f.first_woken, f.first_woken_lifo), (2, true));
        r.lanes[1].takes[0].asked = 1_005; // it was not waiting for that post
        r.first_get[1] = 2;
        let f = r.findings();
        assert_eq!((f.first_woken, f.first_woken_lifo), (1, false));
    }

    #[test]
    fn blocking_frees_the_slot_in_the_count() {
        let mut r = two_lanes();
        r.lanes[0].takes[0].blocked = (23, 35);
        // 12..30 lane 1 active; lane 0 active only 22..23 and 35..40.
        let steps = r.active_steps();
        let mut n = 0;
        let at: Vec<i64> = steps
            .iter()
            .map(|&(_, d)| {
                n += d;
                n
            })
            .collect();
        assert_eq!(at, vec![1, 2, 1, 0, 1, 2, 1, 0]);
    }

    #[test]
    fn a_recorder_keeps_its_window_and_bound_and_finds_waits() {
        let r = Recorder::new(2, Duration::ZERO..Duration::from_secs(3600), 4);
        // Two records a lane; the third is counted, not kept.
        for _ in 0..3 {
            // SAFETY: this test is the only thread using slot 0.
            unsafe { r.record(0, 7, r.now()) };
        }
        // No such worker: ignored.
        // SAFETY: no thread but this test's uses the recorder.
        unsafe { r.record(5, 7, r.now()) };
        let rec = r.into_recording(1, "t".into());
        assert_eq!(rec.lanes[0].takes.len(), 2);
        assert_eq!(rec.lanes[0].missed, 1);
        assert!(rec.lanes[1].takes.is_empty());
        let t = rec.lanes[0].takes[1];
        assert_eq!(t.asked, rec.lanes[0].takes[0].done);
        assert!(!rec.woken(&Take {
            asked: 0,
            taken: WAITED_NS - 1,
            ..t
        }));
        assert!(rec.woken(&Take {
            asked: 0,
            taken: WAITED_NS,
            ..t
        }));
        let late = Recorder::new(1, Duration::from_secs(3600)..Duration::from_secs(3601), 4);
        // SAFETY: this test is the only thread using slot 0.
        unsafe { late.record(0, 1, late.now()) };
        assert!(late.into_recording(1, "t".into()).lanes[0].takes.is_empty());
    }

    #[test]
    fn windows_parse() {
        assert_eq!(
            parse_window("0..1").unwrap(),
            Duration::ZERO..Duration::from_secs(1)
        );
        assert_eq!(
            parse_window("500ms..2s").unwrap(),
            Duration::from_millis(500)..Duration::from_secs(2)
        );
        for bad in ["1", "2..1", "1..1", "a..b"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}
