//! What a sink measured, and how `serve udp-sink` prints it.
//!
//! Datagrams/s over the time from the first datagram to the end marker; the
//! loss, when the marker says how many were sent; per thread, datagrams,
//! batches (results per non-empty dequeue or `get`) min/mean/max, the
//! dequeue and notify calls it made, its CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//! and, with `--count-syscalls`, its system calls, all from its first
//! datagram until it saw the end.
//!
//! System calls are counted only when asked because counting is not free:
//! the tracepoint adds its own cost to every system call of the counted
//! thread, and so to the CPU figures. They are **counted by the kernel**:
//! each server thread opens a `perf_event_open` counter on the
//! `raw_syscalls:sys_enter` tracepoint for itself (every system call the
//! thread enters, whatever it is: `io_uring_enter`, `futex`, eventfd reads
//! and writes, `poll`), minus the two the counting itself makes. That needs
//! tracefs (`mount -t tracefs nodev /sys/kernel/tracing`) and root or
//! `perf_event_paranoid` ≤ 1; without it the report says why they were not
//! counted, and only the completion queue's own counter of submissions is
//! shown. Work done for the sink in other contexts is in neither figure:
//! loopback delivery runs in the sender's thread, and on the epoll backend
//! each completion queue has an engine thread of the library's (the report
//! says so when that is the case).

use std::time::Duration;

use ringport::rio::CqStats;
use ringport::Backend;

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
