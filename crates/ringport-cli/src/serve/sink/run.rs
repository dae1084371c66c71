//! A sink's run: the end-marker protocol between `load udp-blast` and the
//! sink, the state a run's threads share, and each thread's [`Meter`].
//!
//! Every datagram of the test size is counted. A datagram of any other size
//! is the generator's end marker (`ringport load udp-blast` sends one,
//! carrying how many datagrams it sent, a few times); the sink then lets the
//! datagrams already received finish (until its counts stop moving for
//! 20 ms) and stops. A datagram longer than the receive buffer (EMSGSIZE,
//! in every mode) is of another size too, and is counted as truncated.
//! `--duration` and Ctrl-C stop a run as well.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::report::{SinkReport, ThreadReport};
use crate::measure::{self, cpu_time, Scope, SyscallCounter};

/// The end marker starts with this; then comes the number of datagrams sent
/// (u64, little endian); it is padded when the test size is its own length.
const MARK_MAGIC: [u8; 8] = *b"RPORTEND";
pub(super) const MARK_LEN: usize = 16;

/// The end marker for a run of `size`-byte datagrams that sent `sent`.
pub fn marker(size: usize, sent: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(MARK_LEN + 1);
    m.extend_from_slice(&MARK_MAGIC);
    m.extend_from_slice(&sent.to_le_bytes());
    if size == MARK_LEN {
        m.push(0);
    }
    m
}

/// The count an end marker carries, if `b` is one.
fn parse_marker(b: &[u8]) -> Option<u64> {
    if b.len() < MARK_LEN || b[..8] != MARK_MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(b[8..16].try_into().ok()?))
}

/// A counter on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// State shared by a run's threads and whoever waits for it.
pub struct SinkRun {
    size: usize,
    start: Instant,
    /// The end marker was seen (or the run was told to stop).
    end: AtomicBool,
    /// Threads must stop now.
    halt: AtomicBool,
    /// Datagrams the end marker said were sent (u64::MAX: not known).
    sent: AtomicU64,
    /// Nanoseconds from `start` to the first datagram / the end (u64::MAX: not yet).
    first_ns: AtomicU64,
    end_ns: AtomicU64,
    by_marker: AtomicBool,
    counts: Vec<Padded>,
    errors: AtomicU64,
    /// Datagrams longer than the receive buffer (EMSGSIZE).
    truncated: AtomicU64,
    reports: Mutex<Vec<ThreadReport>>,
    fatal: Mutex<Option<String>>,
}

/// What happened to one received datagram.
enum Seen {
    Counted,
    End(Option<u64>),
}

impl SinkRun {
    /// A run of `threads` threads counting `size`-byte datagrams.
    pub fn new(size: usize, threads: usize) -> Arc<SinkRun> {
        Arc::new(SinkRun {
            size,
            start: Instant::now(),
            end: AtomicBool::new(false),
            halt: AtomicBool::new(false),
            sent: AtomicU64::new(u64::MAX),
            first_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(u64::MAX),
            by_marker: AtomicBool::new(false),
            counts: (0..threads).map(|_| Padded::default()).collect(),
            errors: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            reports: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
        })
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A datagram of `len` bytes arrived; `bytes` gives its content (only
    /// read for a marker).
    fn seen<'a>(&self, len: usize, bytes: impl FnOnce() -> Option<&'a [u8]>) -> Seen {
        if len == self.size {
            Seen::Counted
        } else {
            Seen::End(bytes().and_then(parse_marker))
        }
    }

    /// The end marker arrived (with the count it carries, if any).
    fn marked(&self, sent: Option<u64>) {
        if self.end.load(Relaxed) {
            return;
        }
        if let Some(s) = sent {
            self.sent.store(s, Relaxed);
        }
        let _ = self
            .end_ns
            .compare_exchange(u64::MAX, self.now_ns(), Relaxed, Relaxed);
        self.by_marker.store(true, Relaxed);
        self.end.store(true, Relaxed);
    }

    /// Ends the run now (deadline, Ctrl-C, error).
    pub(super) fn stop_now(&self) {
        let _ = self
            .end_ns
            .compare_exchange(u64::MAX, self.now_ns(), Relaxed, Relaxed);
        self.end.store(true, Relaxed);
        self.halt.store(true, Relaxed);
    }

    pub(super) fn fail(&self, why: String) {
        let mut f = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        self.stop_now();
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.0.load(Relaxed)).sum()
    }

    /// Whether the run has ended (marker seen, or stopped).
    pub fn ended(&self) -> bool {
        self.end.load(Relaxed)
    }
}

/// One server thread's meter: counts, batch sizes, and its CPU time and
/// system calls from its first datagram to the moment it sees the end.
pub struct Meter {
    run: Arc<SinkRun>,
    index: usize,
    counter: Option<SyscallCounter>,
    base: Option<(Option<u64>, Duration)>,
    fin: Option<(Option<u64>, Duration)>,
    r: ThreadReport,
}

impl Meter {
    /// Call on the server thread itself: pins it if asked and opens its
    /// system-call counter if asked.
    pub fn new(
        run: &Arc<SinkRun>,
        index: usize,
        name: String,
        pin: Option<usize>,
        count_syscalls: bool,
    ) -> Meter {
        if let Some(cpu) = pin {
            measure::pin(&[cpu]);
        }
        Meter {
            run: run.clone(),
            index,
            counter: if count_syscalls {
                SyscallCounter::open()
            } else {
                None
            },
            base: None,
            fin: None,
            r: ThreadReport {
                name,
                batch_min: u64::MAX,
                ..ThreadReport::default()
            },
        }
    }

    fn snapshot(&self) -> (Option<u64>, Duration) {
        // The counter first, then the clock: see `finish` for what the
        // counting itself costs.
        let calls = self.counter.as_ref().and_then(SyscallCounter::read);
        (calls, cpu_time(Scope::Thread))
    }

    /// A dequeue (or get) returned `n` results.
    #[inline]
    pub fn dequeued(&mut self, n: usize) {
        self.r.dequeues += 1;
        if n == 0 {
            return;
        }
        if self.base.is_none() {
            self.base = Some(self.snapshot());
            let _ =
                self.run
                    .first_ns
                    .compare_exchange(u64::MAX, self.run.now_ns(), Relaxed, Relaxed);
        }
        let n = n as u64;
        self.r.batches += 1;
        self.r.results += n;
        self.r.batch_min = self.r.batch_min.min(n);
        self.r.batch_max = self.r.batch_max.max(n);
    }

    #[inline]
    pub fn notified(&mut self) {
        self.r.notifies += 1;
    }

    /// A datagram of `len` bytes arrived; `bytes` reads it (for a marker).
    #[inline]
    pub(super) fn datagram<'a>(&mut self, len: usize, bytes: impl FnOnce() -> Option<&'a [u8]>) {
        match self.run.seen(len, bytes) {
            Seen::Counted => self.r.datagrams += 1,
            Seen::End(sent) => self.run.marked(sent),
        }
    }

    /// A receive failed.
    #[inline]
    pub(super) fn error(&self) {
        self.run.errors.fetch_add(1, Relaxed);
    }

    /// A datagram longer than the receive buffer arrived: not the test
    /// size (the buffer holds one), so it ends the run like any other size.
    #[inline]
    pub(super) fn truncated(&mut self) {
        self.run.truncated.fetch_add(1, Relaxed);
        self.datagram(usize::MAX, || None);
    }

    /// A datagram of `len` bytes, counted (the peers use this).
    #[inline]
    pub fn datagram_bytes(&mut self, b: &[u8]) {
        self.datagram(b.len(), || Some(b));
    }

    /// Makes this thread's count visible to the waiter.
    #[inline]
    pub fn publish(&self) {
        self.run.counts[self.index]
            .0
            .store(self.r.datagrams, Relaxed);
    }

    /// Whether to stop now; takes the final snapshot when the end is first
    /// seen (what the thread does after that is not counted).
    #[inline]
    pub fn should_stop(&mut self) -> bool {
        if self.run.end.load(Relaxed) && self.fin.is_none() && self.base.is_some() {
            self.publish();
            self.fin = Some(self.snapshot());
        }
        self.run.halt.load(Relaxed)
    }

    /// Whether the run has halted (no final snapshot taken).
    #[inline]
    pub fn halted(&self) -> bool {
        self.run.halt.load(Relaxed)
    }

    /// Hands the thread's report to the run.
    pub fn finish(mut self) {
        self.publish();
        if self.base.is_some() && self.fin.is_none() {
            self.fin = Some(self.snapshot());
        }
        if let (Some((c0, t0)), Some((c1, t1))) = (self.base, self.fin) {
            self.r.cpu = t1.saturating_sub(t0);
            // The baseline's clock_gettime and the final read are counted.
            self.r.syscalls = match (c0, c1) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a).saturating_sub(2)),
                _ => None,
            };
        }
        if self.r.batch_min == u64::MAX {
            self.r.batch_min = 0;
        }
        self.run
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.r);
    }
}

/// Waits for a run's end (marker, deadline, or `stop()`), lets the threads
/// finish what was received before the marker, halts them and reports.
pub fn wait_run(
    run: &Arc<SinkRun>,
    threads: Vec<JoinHandle<()>>,
    deadline: Option<Instant>,
    stop: &dyn Fn() -> bool,
    closer: Option<Box<dyn Fn() + Send>>,
    name: &str,
) -> SinkReport {
    loop {
        if run.ended() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || stop() {
            run.stop_now();
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    if run.by_marker.load(Relaxed) {
        // Let the datagrams received before the marker be counted: wait
        // until the counts stop moving for 20 ms (at most 500 ms).
        let give_up = Instant::now() + Duration::from_millis(500);
        let mut last = run.total();
        let mut still = Instant::now();
        while Instant::now() < give_up && still.elapsed() < Duration::from_millis(20) {
            thread::sleep(Duration::from_millis(2));
            let now = run.total();
            if now != last {
                last = now;
                still = Instant::now();
            }
        }
    }
    run.halt.store(true, Relaxed);
    if let Some(close) = closer {
        close();
    }
    let mut panicked = false;
    for t in threads {
        panicked |= t.join().is_err();
    }
    let mut threads =
        std::mem::take(&mut *run.reports.lock().unwrap_or_else(PoisonError::into_inner));
    threads.sort_by(|a, b| a.name.cmp(&b.name));
    let first = run.first_ns.load(Relaxed);
    let end = run.end_ns.load(Relaxed);
    let elapsed = if first == u64::MAX || end == u64::MAX {
        Duration::ZERO
    } else {
        Duration::from_nanos(end.saturating_sub(first))
    };
    let sent = run.sent.load(Relaxed);
    let mut fatal = run
        .fatal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if panicked && fatal.is_none() {
        fatal = Some("a server thread panicked".into());
    }
    SinkReport {
        name: name.to_string(),
        datagrams: run.total(),
        threads,
        elapsed,
        sent: (sent != u64::MAX).then_some(sent),
        by_marker: run.by_marker.load(Relaxed),
        errors: run.errors.load(Relaxed),
        truncated: run.truncated.load(Relaxed),
        syscalls_asked: false,
        cq: None,
        cq_backend: None,
        fatal,
    }
}
