//! What the benchmarks and the sinks measure with: CPU time, context
//! switches, pinning to CPUs, the kernel's count of a thread's system calls,
//! latency histograms and medians. One way of each, so that two figures
//! side by side were taken the same way.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Whose CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The calling thread.
    Thread,
    /// The whole process, every thread.
    Process,
}

/// CPU time (user + system) used so far. The CPU-time clocks are exact,
/// where `getrusage` rounds to microseconds (and for a thread, to ticks on
/// some kernels): a thread that handles a datagram in half a microsecond
/// needs the exact figure.
pub fn cpu_time(scope: Scope) -> Duration {
    let clock = match scope {
        Scope::Thread => libc::CLOCK_THREAD_CPUTIME_ID,
        Scope::Process => libc::CLOCK_PROCESS_CPUTIME_ID,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Context switches of the process so far, voluntary and not.
pub fn context_switches() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a live rusage for RUSAGE_SELF.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    (ru.ru_nvcsw.max(0) + ru.ru_nivcsw.max(0)) as u64
}

/// Pins the calling thread to `cpus` (best effort: false if refused).
pub fn pin(cpus: &[usize]) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // (the index is checked against its size first); sched_setaffinity
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return false;
            }
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity only writes the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The calling thread's kernel id.
pub fn gettid() -> i32 {
    // SAFETY: gettid takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// The kernel ids of this process's live threads.
pub fn threads() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The CPU time (user + system) of thread `tid` of this process, exact to
/// the nanosecond like [`cpu_time`] (its per-thread CPU clock, which any
/// thread of the process may read), or None once it has exited.
pub fn thread_cpu_time(tid: i32) -> Option<Duration> {
    // The kernel's encoding of a thread's CPU clock (MAKE_THREAD_CPUCLOCK
    // with CPUCLOCK_SCHED): glibc offers it only through a pthread_t, and
    // the threads measured here belong to runtimes that do not expose one.
    let clock: libc::clockid_t = ((!tid) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    ))
}

/// The CPUs thread `tid` may run on (empty if it has exited).
pub fn thread_cpus(tid: i32) -> Vec<usize> {
    // SAFETY: sched_getaffinity only writes the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// A thread's name, as the kernel has it.
pub fn thread_name(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("thread {tid}"))
}

/// The CPU time of every thread of the process at one moment, so that a
/// later [`ThreadCpu::since`] can sum what a chosen set of threads used in
/// between: a server's own threads, with the load client's left out even
/// when both run in one process.
pub struct ThreadCpu(Vec<(i32, Duration)>);

impl ThreadCpu {
    pub fn now() -> ThreadCpu {
        ThreadCpu(
            threads()
                .into_iter()
                .filter_map(|t| Some((t, thread_cpu_time(t)?)))
                .collect(),
        )
    }

    /// The CPU time used since `self` by the live threads not in `except`
    /// (a thread started since counts from zero; one that has exited since
    /// is not counted, so measure while the threads of interest run), and
    /// their ids.
    pub fn since(&self, except: &[i32]) -> (Duration, Vec<i32>) {
        let mut sum = Duration::ZERO;
        let mut counted = Vec::new();
        for t in threads() {
            if except.contains(&t) {
                continue;
            }
            let Some(now) = thread_cpu_time(t) else {
                continue;
            };
            let before = self.0.iter().find(|(id, _)| *id == t).map(|(_, c)| *c);
            sum += now.saturating_sub(before.unwrap_or(Duration::ZERO));
            counted.push(t);
        }
        (sum, counted)
    }
}

/// An error naming every thread of `tids` that may run on a CPU other than
/// `cpu`: a pinned measurement whose server strayed would compare nothing.
pub fn check_pinned(tids: &[i32], cpu: usize) -> Result<(), String> {
    let strays: Vec<String> = tids
        .iter()
        .filter_map(|&t| {
            let cpus = thread_cpus(t);
            (!cpus.is_empty() && cpus != [cpu])
                .then(|| format!("{} (CPUs {cpus:?})", thread_name(t)))
        })
        .collect();
    if strays.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "server threads not pinned to CPU {cpu}: {}",
            strays.join(", ")
        ))
    }
}

/// A latency histogram in nanoseconds: 1 ns to 100 s at 3 significant
/// figures.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts: this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// The median of `v` (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ------------------------------------------------------------ system calls

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

/// The kernel's count of the system calls one thread enters (every one,
/// whatever it is). Counting is not free: the tracepoint adds its own cost
/// to each system call of the thread, so open one only when asked.
pub struct SyscallCounter(OwnedFd);

impl SyscallCounter {
    /// A counter of the calling thread's system calls, or None when the
    /// kernel will not give one (no tracefs, not permitted).
    pub fn open() -> Option<SyscallCounter> {
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
        // returns a new descriptor or -1; pid 0 / cpu -1 is "this thread,
        // any CPU".
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
        // SAFETY: a descriptor just returned by the kernel, owned by nothing
        // else.
        Some(SyscallCounter(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// System calls entered so far (this read is one of them).
    pub fn read(&self) -> Option<u64> {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v`.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        (n == 8).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_none_odd_and_even() {
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let t0 = cpu_time(Scope::Thread);
        let mut x = 1u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(i | 1));
        }
        assert!(cpu_time(Scope::Thread) > t0);
        assert!(cpu_time(Scope::Process) >= cpu_time(Scope::Thread));
    }

    #[test]
    fn another_threads_cpu_time_is_read_by_its_id() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let mut x = 1u64;
            for i in 0..5_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(i | 1));
            }
            tx.send((gettid(), cpu_time(Scope::Thread))).unwrap();
            let _ = done_rx.recv();
        });
        let (tid, own) = rx.recv().unwrap();
        let seen = thread_cpu_time(tid).unwrap();
        assert!(seen >= own && seen > Duration::ZERO);
        assert!(threads().contains(&tid) && threads().contains(&gettid()));
        let (sum, counted) = ThreadCpu(Vec::new()).since(&[gettid()]);
        assert!(counted.contains(&tid) && !counted.contains(&gettid()));
        assert!(sum >= own);
        done_tx.send(()).unwrap();
        h.join().unwrap();
    }
}
