//! The servers' messages on stderr, written so that no worker ever waits
//! for them.
//!
//! A server that runs out of descriptors fails every accept, over and over;
//! printing each failure floods stderr, and when stderr is a pipe nobody
//! reads, the first full pipe stops every worker that prints (a blocking
//! write) for good. So every line goes through a bounded queue to one logger
//! thread, the only thread that may block on stderr: when the queue is full
//! the line is dropped (and the drop is counted and told later). Repeated
//! messages go through an [`Every`], which lets one line a second through
//! and counts the rest.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender, TrySendError};

/// Lines waiting for the logger thread; beyond this they are dropped.
const QUEUE: usize = 256;

/// A logger thread and the queue to it.
pub struct Logger {
    tx: Option<Sender<String>>,
    queued: AtomicU64,
    written: std::sync::Arc<AtomicU64>,
    dropped: AtomicU64,
}

impl Logger {
    /// A logger writing to `out` on a thread of its own.
    pub fn new(mut out: impl Write + Send + 'static, capacity: usize) -> Logger {
        let (tx, rx) = bounded::<String>(capacity);
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let done = written.clone();
        let spawned = thread::Builder::new()
            .name("ringport-log".into())
            .spawn(move || {
                for line in rx {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                    done.fetch_add(1, Relaxed);
                }
            });
        Logger {
            // Without its thread the logger drops every line rather than
            // have the caller write (and maybe block) itself.
            tx: spawned.ok().map(|_| tx),
            queued: AtomicU64::new(0),
            written,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `ringport: {args}` unless the queue is full.
    pub fn line(&self, args: fmt::Arguments<'_>) {
        let Some(tx) = &self.tx else { return };
        let dropped = self.dropped.swap(0, Relaxed);
        if dropped > 0 {
            let note =
                format!("ringport: {dropped} log lines dropped (stderr was not keeping up)\n");
            if !self.send(tx, note) {
                self.dropped.fetch_add(dropped, Relaxed);
            }
        }
        if !self.send(tx, format!("ringport: {args}\n")) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    fn send(&self, tx: &Sender<String>, line: String) -> bool {
        match tx.try_send(line) {
            Ok(()) => {
                self.queued.fetch_add(1, Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits, at most `limit`, until the lines queued so far are written.
    pub fn flush(&self, limit: Duration) {
        let target = self.queued.load(Relaxed);
        let deadline = Instant::now() + limit;
        while self.written.load(Relaxed) < target && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn global() -> &'static Logger {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    LOGGER.get_or_init(|| Logger::new(std::io::stderr(), QUEUE))
}

/// Logs `ringport: {args}` on stderr without waiting for the write.
pub fn line(args: fmt::Arguments<'_>) {
    global().line(args);
}

/// Waits, at most `limit`, for the lines logged so far to reach stderr (at
/// exit, so that the last message is not lost, and a stderr nobody reads
/// cannot keep the process from ending).
pub fn flush(limit: Duration) {
    global().flush(limit);
}

/// Nanoseconds since the first call (never 0, so that 0 can mean "now").
fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// A message that may repeat fast: one line per period gets through, with
/// the number of lines held back since the last one.
pub struct Every {
    period_ns: u64,
    next_ns: AtomicU64,
    held: AtomicU64,
}

impl Every {
    /// At most one line a second.
    pub const fn second() -> Every {
        Every::period(Duration::from_secs(1))
    }

    pub const fn period(period: Duration) -> Every {
        Every {
            period_ns: period.as_nanos() as u64,
            next_ns: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Logs `ringport: {args}`, or counts it if a line went out less than a
    /// period ago.
    pub fn line(&self, args: fmt::Arguments<'_>) {
        self.line_to(global(), args);
    }

    fn line_to(&self, logger: &Logger, args: fmt::Arguments<'_>) {
        let now = now_ns();
        let next = self.next_ns.load(Relaxed);
        let ours = now >= next
            && self
                .next_ns
                .compare_exchange(next, now + self.period_ns, Relaxed, Relaxed)
                .is_ok();
        if !ours {
            self.held.fetch_add(1, Relaxed);
            return;
        }
        match self.held.swap(0, Relaxed) {
            0 => logger.line(args),
            n => logger.line(format_args!("{args} (and {n} more like it not shown)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::{Arc, Mutex};

    /// Collects what the logger thread writes.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stderr_nobody_reads_never_blocks_the_caller() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (_read, write) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let logger = Logger::new(std::fs::File::from(write), 4);
        let t = Instant::now();
        // Far more than the pipe holds: the logger thread blocks, the
        // caller does not.
        for i in 0..100_000 {
            logger.line(format_args!("line {i} of a flood that nobody reads"));
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(logger.dropped.load(Relaxed) > 0);
    }

    #[test]
    fn a_repeated_message_gets_one_line_a_period_with_a_count() {
        let out = Collect::default();
        let logger = Logger::new(out.clone(), 64);
        let every = Every::period(Duration::from_millis(200));
        for _ in 0..1000 {
            every.line_to(&logger, format_args!("accept: too many open files"));
        }
        thread::sleep(Duration::from_millis(250));
        every.line_to(&logger, format_args!("accept: too many open files"));
        logger.flush(Duration::from_secs(5));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "ringport: accept: too many open files");
        assert!(
            lines[1].ends_with("(and 999 more like it not shown)"),
            "{text}"
        );
    }
}
