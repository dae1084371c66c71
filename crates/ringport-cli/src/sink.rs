//! `ringport serve udp-sink --mode …`: the classic Registered I/O UDP
//! servers, which count datagrams of one size as fast as they can.
//!
//! Each mode is one of the servers of the published Windows RIO comparisons:
//!
//! - `port`: the traditional IOCP server: `--pending` `recv_from`s pending on
//!   a [`CompletionPort`], `--threads` workers taking up to `--batch`
//!   packets per `get` (`GetQueuedCompletionStatusEx`), each re-issuing the
//!   receive it got.
//! - `rio-polled`: one thread spinning on [`CompletionQueue::dequeue`]; freed
//!   receive buffers are re-posted with [`RioFlags::DEFER`] and handed to
//!   the kernel in one `commit` once a quarter of `--pending` has gathered,
//!   so there is about one system call per `pending / 4` datagrams.
//! - `rio-event`: notify → wait on the event → one dequeue of up to `--batch`
//!   → re-post (one commit) → notify again (the naive event server).
//! - `rio-event-polled`: the same, but dequeue again until the queue is
//!   empty before arming the event (the tuned event server).
//! - `rio-port`: one thread on a completion port that the queue notifies
//!   with a packet; per packet it dequeues until empty (at most `--batch`
//!   results), re-posts, and re-arms.
//! - `rio-port-mt`: `--threads` threads on that port. Only the thread that
//!   took the notification touches the queue until it re-arms it, and it
//!   re-arms only after its batch is processed, so one socket's results are
//!   handled in order; `--batch` caps the results taken per notification,
//!   so one busy queue cannot hold a thread forever.
//!
//! **The end of a run.** Every datagram of `--size` bytes is counted. A
//! datagram of any other size is the generator's end marker (`ringport load
//! udp-blast` sends one, carrying how many datagrams it sent, a few times);
//! the sink then lets the datagrams already received finish (until its
//! counts stop moving for 20 ms) and stops. `--duration` stops it too.
//!
//! **What is reported.** Datagrams/s over the time from the first datagram
//! to the end marker; the loss, when the marker says how many were sent;
//! per thread, datagrams, batches (results per non-empty dequeue or `get`)
//! min/mean/max, the dequeue and notify calls it made, its CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) and, with `--count-syscalls`, its system
//! calls, all from its first datagram until it saw the end. Counting is off
//! by default because it is not free: the tracepoint adds its own cost to
//! every system call of the counted thread, and so to the CPU figures.
//! System calls are **counted by the kernel**: each server thread opens a
//! `perf_event_open` counter on the
//! `raw_syscalls:sys_enter` tracepoint for itself (every system call the
//! thread enters, whatever it is: `io_uring_enter`, `futex`, eventfd reads
//! and writes, `poll`), minus the two the counting itself makes. That needs
//! tracefs (`mount -t tracefs nodev /sys/kernel/tracing`) and root or
//! `perf_event_paranoid` ≤ 1; without it the count says "not counted" and
//! only the completion queue's own counter of submissions is shown. Work
//! done for the sink in other contexts is in neither figure: loopback
//! delivery runs in the sender's thread, and on the epoll backend each
//! completion queue has an engine thread of the library's (the report says
//! so when that is the case).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringport::rio::{
    self, BufferId, CompletionQueue, CqStats, Notify, RequestQueue, RioBuf, RioFlags, RioResult,
};
use ringport::{Backend, CompletionPort, Error, Handle};

/// A server mode of `serve udp-sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Traditional IOCP: pending recv_from on a completion port, N threads.
    Port,
    /// RIO, one thread spinning on dequeue.
    RioPolled,
    /// RIO, event notification: notify, wait, one dequeue, re-post.
    RioEvent,
    /// RIO, event notification, dequeuing until empty before re-arming.
    RioEventPolled,
    /// RIO, port notification, one thread.
    RioPort,
    /// RIO, port notification, N threads on the port.
    RioPortMt,
}

impl Mode {
    /// Every mode, in the order the benchmark runs them.
    pub const ALL: [Mode; 6] = [
        Mode::Port,
        Mode::RioPolled,
        Mode::RioEvent,
        Mode::RioEventPolled,
        Mode::RioPort,
        Mode::RioPortMt,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Port => "port",
            Mode::RioPolled => "rio-polled",
            Mode::RioEvent => "rio-event",
            Mode::RioEventPolled => "rio-event-polled",
            Mode::RioPort => "rio-port",
            Mode::RioPortMt => "rio-port-mt",
        }
    }

    /// Whether the mode runs `--threads` threads (the others run one).
    pub fn multi_threaded(self) -> bool {
        matches!(self, Mode::Port | Mode::RioPortMt)
    }
}

/// The largest UDP payload over IPv4.
pub const MAX_UDP: usize = 65_507;

/// The end marker starts with this; then comes the number of datagrams sent
/// (u64, little endian); it is padded when the test size is its own length.
const MARK_MAGIC: [u8; 8] = *b"RPORTEND";
const MARK_LEN: usize = 16;

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

/// How to run a sink; the benchmark builds these directly.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub mode: Mode,
    /// Threads of the multi-threaded modes.
    pub threads: usize,
    /// Bytes of the datagrams counted.
    pub size: usize,
    /// Most results (or packets) taken at once.
    pub batch: usize,
    /// Receives kept pending.
    pub pending: usize,
    /// The backend of the completion port (port modes) and of the
    /// completion queue (RIO modes).
    pub backend: Backend,
    /// Pin every server thread to this CPU.
    pub pin: Option<usize>,
    /// SO_RCVBUF asked for (the kernel caps it at net.core.rmem_max).
    pub rcvbuf: usize,
    /// Count each server thread's system calls (off by default: the
    /// counter costs every system call of the thread it counts).
    pub count_syscalls: bool,
}

impl SinkOptions {
    pub fn new(mode: Mode) -> SinkOptions {
        SinkOptions {
            mode,
            threads: if mode.multi_threaded() {
                ringport::cpu_count()
            } else {
                1
            },
            size: 1024,
            batch: 1000,
            pending: 512,
            backend: Backend::Auto,
            pin: None,
            rcvbuf: 4 << 20,
            count_syscalls: false,
        }
    }

    /// Checks the figures; every refusal names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 || self.size > MAX_UDP {
            return Err(format!(
                "--size must be 1 to {MAX_UDP} bytes (the largest UDP datagram), not {}",
                self.size
            ));
        }
        if self.threads == 0 || self.threads > 1024 {
            return Err("--threads must be 1 to 1024".into());
        }
        if self.batch == 0 || self.batch > 65_536 {
            return Err("--batch must be 1 to 65,536".into());
        }
        if self.pending == 0 || self.pending > 32_768 {
            return Err("--pending must be 1 to 32,768".into());
        }
        Ok(())
    }

    /// Bytes of each receive buffer: room for a datagram of the test size
    /// and for the end marker, on a 64-byte boundary.
    fn slot(&self) -> usize {
        (self.size.max(MARK_LEN + 1) + 63) & !63
    }

    /// Threads this mode runs.
    pub fn thread_count(&self) -> usize {
        if self.mode.multi_threaded() {
            self.threads
        } else {
            1
        }
    }
}

// ------------------------------------------------------------ measuring

/// The `raw_syscalls:sys_enter` tracepoint's id, if tracefs shows it.
fn tracepoint_id() -> Option<u64> {
    static ID: OnceLock<Option<u64>> = OnceLock::new();
    *ID.get_or_init(|| {
        [
            "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
            "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
    })
}

/// `struct perf_event_attr` as of PERF_ATTR_SIZE_VER0 (64 bytes).
#[repr(C)]
struct PerfAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// A counter of the system calls the calling thread enters, or None when
/// the kernel will not give one (no tracefs, not permitted).
pub fn syscall_counter() -> Option<OwnedFd> {
    const PERF_TYPE_TRACEPOINT: u32 = 2;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let attr = PerfAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfAttr>() as u32,
        config: tracepoint_id()?,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        // Enabled from the start, this thread only (no inherit).
        flags: 0,
        wakeup_events: 0,
        bp_type: 0,
        config1: 0,
    };
    // SAFETY: perf_event_open reads `attr` (its size given inside) and
    // returns a new descriptor or -1; pid 0 / cpu -1 is "this thread, any CPU".
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfAttr,
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn read_counter(fd: &OwnedFd) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v`.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    (n == 8).then_some(v)
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`, exact).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Pins the calling thread to `cpu` (best effort: false if refused).
pub fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it;
    // sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// A counter on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// What one server thread did, from its first datagram until it saw the end.
#[derive(Clone, Debug, Default)]
pub struct ThreadReport {
    pub name: String,
    pub datagrams: u64,
    /// Non-empty dequeues (or gets) and the results they brought.
    pub batches: u64,
    pub results: u64,
    pub batch_min: u64,
    pub batch_max: u64,
    /// Dequeue (or get) calls, empty ones included.
    pub dequeues: u64,
    /// Notifications armed.
    pub notifies: u64,
    /// System calls the thread entered (kernel-counted), if counted.
    pub syscalls: Option<u64>,
    pub cpu: Duration,
}

/// State shared by a run's threads and whoever waits for it.
pub struct Run {
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

impl Run {
    /// A run of `threads` threads counting `size`-byte datagrams.
    pub fn new(size: usize, threads: usize) -> Arc<Run> {
        Arc::new(Run {
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
    fn stop_now(&self) {
        let _ = self
            .end_ns
            .compare_exchange(u64::MAX, self.now_ns(), Relaxed, Relaxed);
        self.end.store(true, Relaxed);
        self.halt.store(true, Relaxed);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    fn fail(&self, why: String) {
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
    run: Arc<Run>,
    index: usize,
    counter: Option<OwnedFd>,
    base: Option<(Option<u64>, Duration)>,
    fin: Option<(Option<u64>, Duration)>,
    r: ThreadReport,
}

impl Meter {
    /// Call on the server thread itself: pins it if asked and opens its
    /// system-call counter if asked.
    pub fn new(
        run: &Arc<Run>,
        index: usize,
        name: String,
        pin: Option<usize>,
        count_syscalls: bool,
    ) -> Meter {
        if let Some(cpu) = pin {
            pin_to(cpu);
        }
        Meter {
            run: run.clone(),
            index,
            counter: if count_syscalls {
                syscall_counter()
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
        let calls = self.counter.as_ref().and_then(read_counter);
        (calls, thread_cpu())
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
    fn datagram<'a>(&mut self, len: usize, bytes: impl FnOnce() -> Option<&'a [u8]>) {
        match self.run.seen(len, bytes) {
            Seen::Counted => self.r.datagrams += 1,
            Seen::End(sent) => self.run.marked(sent),
        }
    }

    /// A datagram longer than the receive buffer arrived: not the test
    /// size (the buffer holds one), so it ends the run like any other size.
    #[inline]
    fn truncated(&mut self) {
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

/// What a sink measured.
#[derive(Clone, Debug)]
pub struct SinkReport {
    pub name: String,
    pub threads: Vec<ThreadReport>,
    pub datagrams: u64,
    /// From the first datagram to the end.
    pub elapsed: Duration,
    /// What the end marker said was sent.
    pub sent: Option<u64>,
    pub by_marker: bool,
    pub errors: u64,
    pub truncated: u64,
    /// System calls were to be counted (--count-syscalls).
    pub syscalls_asked: bool,
    pub cq: Option<CqStats>,
    /// The completion queue's backend (RIO modes).
    pub cq_backend: Option<Backend>,
    pub fatal: Option<String>,
}

impl SinkReport {
    pub fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.datagrams as f64 / self.elapsed.as_secs_f64()
    }

    pub fn lost(&self) -> Option<u64> {
        self.sent.map(|s| s.saturating_sub(self.datagrams))
    }

    pub fn cpu(&self) -> Duration {
        self.threads.iter().map(|t| t.cpu).sum()
    }

    /// Datagrams counted by threads that took their measurement (those that
    /// got at least one).
    fn measured(&self) -> u64 {
        self.threads.iter().map(|t| t.datagrams).sum::<u64>().max(1)
    }

    pub fn cpu_us_per_datagram(&self) -> f64 {
        self.cpu().as_secs_f64() * 1e6 / self.measured() as f64
    }

    pub fn syscalls(&self) -> Option<u64> {
        // Counted by no thread: not "0 system calls".
        if self.threads.iter().all(|t| t.syscalls.is_none()) {
            return None;
        }
        self.threads
            .iter()
            .filter(|t| t.batches > 0)
            .map(|t| t.syscalls)
            .sum()
    }

    pub fn syscalls_per_datagram(&self) -> Option<f64> {
        Some(self.syscalls()? as f64 / self.measured() as f64)
    }

    /// Prints the report (what `serve udp-sink` shows at the end).
    pub fn print(&self, size: usize) {
        let how = if self.by_marker {
            "end marker"
        } else {
            "stopped"
        };
        println!("udp-sink {} ended ({how})", self.name);
        println!(
            "received {} datagrams of {size} bytes in {:.3} s: {:.0} datagrams/s",
            self.datagrams,
            self.elapsed.as_secs_f64(),
            self.rate()
        );
        match (self.sent, self.lost()) {
            (Some(s), Some(l)) => println!(
                "sender reported {s} sent: lost {l} ({:.2} %)",
                100.0 * l as f64 / s.max(1) as f64
            ),
            _ => println!("sender count unknown: loss not known"),
        }
        println!(
            "cpu: {:.3} µs per datagram ({:.3} s on the server threads)",
            self.cpu_us_per_datagram(),
            self.cpu().as_secs_f64()
        );
        match self.syscalls_per_datagram() {
            Some(s) => println!(
                "system calls: {s:.4} per datagram ({} entered by the server threads, counted by \
                 the raw_syscalls:sys_enter tracepoint)",
                self.syscalls().unwrap_or(0)
            ),
            None if !self.syscalls_asked => {
                println!("system calls: not counted (--count-syscalls counts them)")
            }
            None => println!(
                "system calls: not counted (the raw_syscalls:sys_enter tracepoint needs tracefs \
                 at /sys/kernel/tracing and root or perf_event_paranoid <= 1)"
            ),
        }
        for t in &self.threads {
            let mean = t.results as f64 / t.batches.max(1) as f64;
            let calls = t
                .syscalls
                .map_or_else(|| "not counted".to_string(), |s| s.to_string());
            println!(
                "thread {}: {} datagrams, {} batches (min {} mean {:.1} max {}), {} dequeues, \
                 {} notifies, {} system calls, cpu {:.3} s",
                t.name,
                t.datagrams,
                t.batches,
                t.batch_min,
                mean,
                t.batch_max,
                t.dequeues,
                t.notifies,
                calls,
                t.cpu.as_secs_f64()
            );
        }
        if let Some(c) = self.cq {
            println!(
                "completion queue ({}): {} requests, {} submits, {} dequeues, {} results, \
                 {} notifies",
                self.cq_backend.map_or("?".to_string(), |b| b.to_string()),
                c.requests,
                c.submits,
                c.dequeues,
                c.results,
                c.notifies
            );
            if self.cq_backend == Some(Backend::Epoll) {
                println!(
                    "(on the epoll backend each completion queue has an engine thread; its system \
                     calls and CPU time are not in the figures above)"
                );
            }
        }
        if self.errors > 0 {
            println!("errors: {}", self.errors);
        }
        if self.truncated > 0 {
            println!(
                "truncated (longer than the receive buffer, taken as the end): {}",
                self.truncated
            );
        }
    }
}

// ------------------------------------------------------------ the sink

/// A running sink: its threads, and how to stop them.
pub struct Sink {
    name: String,
    run: Arc<Run>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    /// Wakes threads blocked on a port (closes it).
    closer: Option<Box<dyn Fn() + Send>>,
    cq: Option<Arc<RioQueue>>,
    backend: Option<Backend>,
    count_syscalls: bool,
}

/// Binds a UDP socket with a large receive buffer.
pub fn bind(addr: SocketAddr, rcvbuf: usize) -> Result<UdpSocket, String> {
    let sock = UdpSocket::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => " (the port is taken; use another, or port 0)",
            io::ErrorKind::AddrNotAvailable => " (no such local address)",
            _ => "",
        };
        format!("cannot bind {addr}: {e}{hint}")
    })?;
    let v = rcvbuf.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads one int; failure only leaves the default size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(sock)
}

impl Sink {
    /// Binds `addr` and starts the server threads.
    pub fn start(addr: SocketAddr, opts: &SinkOptions) -> Result<Sink, String> {
        opts.validate()?;
        let sock = bind(addr, opts.rcvbuf)?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        let run = Run::new(opts.size, opts.thread_count());
        let mut sink = Sink {
            name: opts.mode.name().to_string(),
            run: run.clone(),
            addr,
            threads: Vec::new(),
            closer: None,
            cq: None,
            backend: None,
            count_syscalls: opts.count_syscalls,
        };
        let started = match opts.mode {
            Mode::Port => start_port(&mut sink, sock, opts),
            Mode::RioPolled | Mode::RioEvent | Mode::RioEventPolled => {
                start_rio_direct(&mut sink, sock, opts)
            }
            Mode::RioPort | Mode::RioPortMt => start_rio_port(&mut sink, sock, opts),
        };
        if let Err(e) = started {
            sink.halt();
            return Err(e);
        }
        Ok(sink)
    }

    /// The address it receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The completion port's backend, in the port modes.
    pub fn backend(&self) -> Option<Backend> {
        self.backend
    }

    fn halt(&mut self) {
        self.run.stop_now();
        if let Some(close) = &self.closer {
            close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Waits for the end marker, `deadline`, or `stop()` returning true;
    /// then stops the threads and reports.
    pub fn wait(mut self, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> SinkReport {
        let threads = std::mem::take(&mut self.threads);
        let report = wait_run(
            &self.run,
            threads,
            deadline,
            stop,
            self.closer.take(),
            &self.name,
        );
        SinkReport {
            syscalls_asked: self.count_syscalls,
            cq: self.cq.as_ref().map(|q| q.cq.stats()),
            cq_backend: self.cq.as_ref().map(|q| q.cq.backend()),
            ..report
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits for a run's end (marker, deadline, or `stop()`), lets the threads
/// finish what was received before the marker, halts them and reports.
pub fn wait_run(
    run: &Arc<Run>,
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

/// Spawns a named server thread that runs `body` with its meter.
fn spawn(
    sink: &mut Sink,
    index: usize,
    opts: &SinkOptions,
    body: impl FnOnce(&mut Meter) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let run = sink.run.clone();
    let name = format!("{}-{index}", sink.name);
    let (pin, count) = (opts.pin, opts.count_syscalls);
    let h = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut meter = Meter::new(&run, index, name, pin, count);
            if let Err(e) = body(&mut meter) {
                run.fail(e);
            }
            meter.finish();
        })
        .map_err(|e| format!("starting a server thread: {e}"))?;
    sink.threads.push(h);
    Ok(())
}

// ------------------------------------------------------------ port mode

fn start_port(sink: &mut Sink, sock: UdpSocket, opts: &SinkOptions) -> Result<(), String> {
    let threads = opts.thread_count();
    let port: CompletionPort<u32> = CompletionPort::builder()
        .concurrency(threads)
        .backend(opts.backend)
        .build()
        .map_err(|e| format!("creating the completion port: {e}"))?;
    sink.backend = Some(port.backend());
    let closer = port.clone();
    sink.closer = Some(Box::new(move || closer.close()));
    let h: Arc<Handle<u32>> = Arc::new(
        port.associate(sock, 0)
            .map_err(|e| format!("associating the socket: {e}"))?,
    );
    let slot = opts.slot();
    for _ in 0..opts.pending {
        h.recv_from(Vec::with_capacity(slot), 0)
            .map_err(|e| format!("starting a receive: {e}"))?;
    }
    for i in 0..threads {
        let (port, h, batch) = (port.clone(), h.clone(), opts.batch);
        spawn(sink, i, opts, move |m| {
            let mut packets = Vec::with_capacity(batch);
            loop {
                if m.should_stop() {
                    return Ok(());
                }
                match port.get_into(&mut packets, batch, None) {
                    Ok(n) => m.dequeued(n),
                    Err(Error::Closed) => return Ok(()),
                    Err(e) => return Err(format!("get: {e}")),
                }
                for mut p in packets.drain(..) {
                    if p.is_cancelled() {
                        continue;
                    }
                    let Some(buf) = p.take_buf() else { continue };
                    let mut buf = buf.into_vec();
                    match p.result {
                        Ok(n) => m.datagram(n, || buf.get(..n)),
                        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => m.truncated(),
                        Err(_) => m.run.error(),
                    }
                    buf.clear();
                    match h.recv_from(buf, 0) {
                        Ok(_) | Err(Error::Closed) => {}
                        Err(e) => return Err(format!("starting a receive: {e}")),
                    }
                }
                m.publish();
            }
        })?;
    }
    Ok(())
}

// ------------------------------------------------------------ RIO modes

/// One socket's RIO queues and receive buffers.
struct RioQueue {
    // Field order: the request queue is dropped (its requests cancelled)
    // before the completion queue.
    rq: RequestQueue,
    cq: CompletionQueue,
    buffer: BufferId,
    slot: u32,
    pending: u32,
    size: usize,
}

impl RioQueue {
    fn new(sock: UdpSocket, opts: &SinkOptions, notify: Notify) -> Result<RioQueue, String> {
        let pending = opts.pending as u32;
        let slot = opts.slot() as u32;
        let cq = CompletionQueue::with_backend(pending, notify, opts.backend)
            .map_err(|e| format!("creating the completion queue: {e}"))?;
        let rq = RequestQueue::new(sock, pending, 0, &cq, &cq, 1)
            .map_err(|e| format!("creating the request queue: {e}"))?;
        let buffer = rio::register_buffer(pending as usize * slot as usize).map_err(|e| {
            format!(
                "registering {} bytes: {e}",
                pending as usize * slot as usize
            )
        })?;
        let q = RioQueue {
            rq,
            cq,
            buffer,
            slot,
            pending,
            size: opts.size,
        };
        for i in 0..pending {
            q.post(i as u64)?;
        }
        q.rq.commit().map_err(|e| format!("commit: {e}"))?;
        Ok(q)
    }

    fn slice(&self, i: u64, len: u32) -> RioBuf {
        RioBuf::new(self.buffer, i as u32 * self.slot, len)
    }

    fn post(&self, i: u64) -> Result<(), String> {
        match self
            .rq
            .receive(self.slice(i, self.slot), RioFlags::DEFER, i)
        {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("posting a receive: {e}")),
        }
    }

    /// Counts `results` and re-posts their buffers (deferred); returns how
    /// many were re-posted.
    fn handle(&self, m: &mut Meter, results: &[RioResult]) -> Result<u32, String> {
        let mut posted = 0;
        for r in results {
            match r.status {
                0 => {
                    let len = r.bytes as usize;
                    if len == self.size {
                        m.datagram(len, || None);
                    } else {
                        let b = rio::borrow(&self.slice(r.request_context, r.bytes.min(self.slot)));
                        m.datagram(len, || b.as_deref().ok());
                    }
                }
                libc::ECANCELED => continue,
                libc::EMSGSIZE => m.truncated(),
                _ => m.run.error(),
            }
            self.post(r.request_context)?;
            posted += 1;
        }
        Ok(posted)
    }

    fn commit(&self) -> Result<(), String> {
        self.rq.commit().map_err(|e| format!("commit: {e}"))
    }
}

impl Drop for RioQueue {
    fn drop(&mut self) {
        let _ = self.cq.close();
        let _ = rio::deregister_buffer(self.buffer);
    }
}

/// rio-polled, rio-event, rio-event-polled: one thread owns the queue.
fn start_rio_direct(sink: &mut Sink, sock: UdpSocket, opts: &SinkOptions) -> Result<(), String> {
    let mode = opts.mode;
    let notify = if mode == Mode::RioPolled {
        Notify::Polled
    } else {
        Notify::Event
    };
    let q = Arc::new(RioQueue::new(sock, opts, notify)?);
    sink.cq = Some(q.clone());
    let batch = opts.batch.min(opts.pending);
    let refill = (q.pending / 4).max(1);
    spawn(sink, 0, opts, move |m| {
        let mut results = vec![RioResult::default(); batch];
        let mut deferred = 0u32;
        let dequeue = |m: &mut Meter, results: &mut [RioResult]| {
            let n = q.cq.dequeue(results).map_err(|e| format!("dequeue: {e}"))?;
            m.dequeued(n);
            Ok::<usize, String>(n)
        };
        loop {
            if m.should_stop() {
                return Ok(());
            }
            if mode == Mode::RioPolled {
                let n = dequeue(m, &mut results)?;
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                deferred += q.handle(m, &results[..n])?;
                if deferred >= refill {
                    q.commit()?;
                    deferred = 0;
                }
                m.publish();
                continue;
            }
            // Event modes: arm, wait, take.
            q.cq.notify().map_err(|e| format!("notify: {e}"))?;
            m.notified();
            loop {
                match q.cq.wait(Some(Duration::from_millis(20))) {
                    Ok(()) => break,
                    Err(Error::Timeout) => {
                        if m.should_stop() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(format!("wait: {e}")),
                }
            }
            let n = dequeue(m, &mut results)?;
            deferred += q.handle(m, &results[..n])?;
            if mode == Mode::RioEventPolled {
                loop {
                    let n = dequeue(m, &mut results)?;
                    if n == 0 || m.halted() {
                        break;
                    }
                    deferred += q.handle(m, &results[..n])?;
                    if deferred >= refill {
                        q.commit()?;
                        deferred = 0;
                    }
                }
            }
            // Everything re-posted before arming again.
            q.commit()?;
            deferred = 0;
            m.publish();
        }
    })
}

/// rio-port (one thread) and rio-port-mt (N threads): the queue notifies a
/// completion port; whoever takes the packet owns the queue until it re-arms.
fn start_rio_port(sink: &mut Sink, sock: UdpSocket, opts: &SinkOptions) -> Result<(), String> {
    const KEY: u64 = 7;
    let threads = opts.thread_count();
    let port: CompletionPort<u64> = CompletionPort::builder()
        .concurrency(threads)
        .backend(opts.backend)
        .build()
        .map_err(|e| format!("creating the completion port: {e}"))?;
    sink.backend = Some(port.backend());
    let closer = port.clone();
    sink.closer = Some(Box::new(move || closer.close()));
    let q = Arc::new(RioQueue::new(sock, opts, Notify::port(&port, KEY, 0))?);
    sink.cq = Some(q.clone());
    let cap = opts.batch;
    let chunk = opts.batch.min(opts.pending);
    for i in 0..threads {
        let (port, q) = (port.clone(), q.clone());
        spawn(sink, i, opts, move |m| {
            let mut results = vec![RioResult::default(); chunk];
            loop {
                if m.should_stop() {
                    return Ok(());
                }
                match port.get(None) {
                    Ok(p) if p.key == KEY => {}
                    Ok(_) => continue,
                    Err(Error::Closed) => return Ok(()),
                    Err(e) => return Err(format!("get: {e}")),
                }
                // This thread owns the queue until it re-arms it.
                let mut taken = 0;
                while taken < cap {
                    let want = (cap - taken).min(chunk);
                    let n =
                        q.cq.dequeue(&mut results[..want])
                            .map_err(|e| format!("dequeue: {e}"))?;
                    m.dequeued(n);
                    if n == 0 {
                        break;
                    }
                    q.handle(m, &results[..n])?;
                    taken += n;
                }
                q.commit()?;
                m.publish();
                if m.halted() {
                    return Ok(());
                }
                match q.cq.notify() {
                    Ok(()) => m.notified(),
                    Err(_) if m.halted() => return Ok(()),
                    Err(e) => return Err(format!("notify: {e}")),
                }
            }
        })?;
    }
    // Armed once the threads are there to take the packet.
    q.cq.notify().map_err(|e| format!("notify: {e}"))?;
    Ok(())
}

/// `ringport serve udp-sink`: runs one sink until the end marker,
/// `duration`, or `stop()`, and prints what it measured.
pub fn serve(
    addr: SocketAddr,
    opts: &SinkOptions,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
) -> Result<(), String> {
    opts.validate()?;
    if duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be more than 0".into());
    }
    let sink = Sink::start(addr, opts)?;
    println!(
        "listening on {} (udp-sink, mode {})",
        sink.local_addr(),
        opts.mode.name()
    );
    let mut backend = match sink.backend() {
        Some(b) => format!("port backend {b}"),
        None => "no port".to_string(),
    };
    if let Some(q) = &sink.cq {
        backend.push_str(&format!(", completion queue backend {}", q.cq.backend()));
    }
    let threads = opts.thread_count();
    let note = if !opts.mode.multi_threaded() && opts.threads > 1 {
        " (this mode runs one thread)"
    } else {
        ""
    };
    println!(
        "{backend}, {threads} thread(s){note}, size {}, pending {}, batch {}",
        opts.size, opts.pending, opts.batch
    );
    match duration {
        Some(d) => println!("stopping on the end marker, after {d:?}, or on Ctrl-C"),
        None => println!("stopping on the end marker or on Ctrl-C"),
    }
    let deadline = duration.map(|d| Instant::now() + d);
    let report = sink.wait(deadline, stop);
    report.print(opts.size);
    match report.fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
