//! What sharing one port costs per operation, measured: the figures of
//! docs/scaling.md.
//!
//! Each workload runs with T threads (1 or 2), each pinned to a CPU of its
//! own (or all to one with `SCALING_ONE_CPU=1`), on **one port shared by
//! all** (`shared`) or **a port per thread** (`sharded`), interleaved, the
//! median of `SCALING_ROUNDS` (5) reported:
//!
//! - `post`: each thread posts a packet and takes one (`post` + `get`): the
//!   packet path alone (state word, queue; the waiter stack when a thread
//!   parks).
//! - `udp`: each thread owns a client socket and a server socket associated
//!   with the port; per message it sends 64 bytes from the client, takes
//!   the receive's packet from the port (any socket's, when shared), echoes
//!   it with `send_to_now` and re-arms the receive with `recv_from`, then
//!   reads the echo on the client. The two server calls are timed ("calls"):
//!   each takes the backend's port-wide mutex (the io_uring driver's table,
//!   the epoll reactor's state) for its bookkeeping, but makes its system
//!   calls with the mutex released, so their time is an upper bound of the
//!   hold time only together with the instruction counts of docs/scaling.md.
//! - `line`: two threads hand one cache line back and forth (an atomic
//!   counter each increments on its turn): what one transfer of a
//!   contended line costs on this machine.
//!
//! CPU per operation is the process's (getrusage), so it includes the
//! clients' system calls, which do not change between layouts: the
//! difference between `shared` and `sharded` at the same thread count is
//! the cost of sharing. Run: `cargo bench -p ringport --bench scaling`
//! (`SCALING_OPS` per thread and round, default 200,000 for post, 50,000
//! for udp; `RINGPORT_BACKEND` as everywhere). Under `cargo test` it runs a
//! few operations of each, as a smoke test.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ringport::{CompletionPort, Handle, Started};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills a zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a live rusage for RUSAGE_SELF.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it (cpu is
    // checked against its size); sched_setaffinity reads it.
    unsafe {
        if cpu < libc::CPU_SETSIZE as usize {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Default)]
struct Figures {
    /// Operations (packets, or messages) per second, all threads.
    rate: f64,
    /// Process CPU ns per operation.
    cpu_ns: f64,
    /// ns per operation inside the server calls made under the port-wide
    /// mutex (udp only).
    locked_ns: f64,
}

/// Runs `body(thread index, port)` on `threads` pinned threads, on one port
/// or a port each; `body` returns the ns it spent in locked calls.
fn run<F>(threads: usize, shared: bool, ops: usize, body: F) -> Figures
where
    F: Fn(usize, &CompletionPort<u64>, usize) -> u64 + Send + Sync + 'static,
{
    let one_cpu = env("SCALING_ONE_CPU", 0) == 1;
    let cpus = ringport::cpu_count();
    let common = CompletionPort::<u64>::new(threads).expect("a port");
    let ports: Vec<_> = (0..threads)
        .map(|_| {
            if shared {
                common.clone()
            } else {
                CompletionPort::<u64>::new(1).expect("a port")
            }
        })
        .collect();
    let body = Arc::new(body);
    let start = Arc::new(Barrier::new(threads + 1));
    let end = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = ports
        .into_iter()
        .enumerate()
        .map(|(i, port)| {
            let (body, start, end) = (body.clone(), start.clone(), end.clone());
            thread::spawn(move || {
                pin(if one_cpu { 0 } else { i % cpus });
                start.wait();
                let locked = body(i, &port, ops);
                end.wait();
                locked
            })
        })
        .collect();
    let cpu0 = cpu_time();
    start.wait();
    let t0 = Instant::now();
    end.wait();
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let locked: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total = (threads * ops) as f64;
    Figures {
        rate: total / wall.as_secs_f64(),
        cpu_ns: cpu.as_nanos() as f64 / total,
        locked_ns: locked as f64 / total,
    }
}

/// `post`: post one, take one.
fn post(_: usize, port: &CompletionPort<u64>, ops: usize) -> u64 {
    for i in 0..ops {
        port.post(1, i as u64, Ok(0)).unwrap();
        port.get(Some(Duration::from_secs(10))).unwrap();
    }
    0
}

/// `udp`: one echo per message through the port (see the module's text).
fn udp() -> impl Fn(usize, &CompletionPort<u64>, usize) -> u64 + Send + Sync + 'static {
    move |i: usize, port: &CompletionPort<u64>, ops: usize| {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let server: Handle<u64> = port.associate(server, i as u64).unwrap();
        // A shared port gives any thread any socket's packet: it echoes and
        // re-arms through that socket's handle, which every thread reaches.
        server.recv_from(vec![0u8; 2048], i as u64).unwrap();
        let registry = registry(i, server);
        let msg = [7u8; 64];
        let mut back = [0u8; 128];
        let mut locked = 0u64;
        for _ in 0..ops {
            client.send(&msg).unwrap();
            let mut p = port.get(Some(Duration::from_secs(10))).unwrap();
            let owner = registry.get(p.key as usize);
            let peer = p.peer().unwrap();
            let n = *p.result.as_ref().unwrap();
            let mut buf = p.take_buf().unwrap().into_vec();
            buf.truncate(n);
            let t0 = Instant::now();
            let sent = owner.send_to_now(buf, peer, p.key).unwrap();
            let mut buf = match sent {
                Started::Done(mut s) => s.take_buf().unwrap().into_vec(),
                Started::Pending(_) => panic!("a 64-byte send on loopback waited"),
            };
            buf.clear();
            buf.reserve_exact(2048);
            owner.recv_from(buf, p.key).unwrap();
            locked += t0.elapsed().as_nanos() as u64;
            assert_eq!(client.recv(&mut back).unwrap(), 64);
        }
        registry.done();
        locked
    }
}

/// The server handles of a run, by key, so that any thread can echo on the
/// socket a packet came from. Rebuilt for every run.
struct Registry {
    handles: std::sync::RwLock<Vec<Option<Arc<Handle<u64>>>>>,
    ready: Barrier,
    finished: Barrier,
}

static REGISTRY: std::sync::Mutex<Option<Arc<Registry>>> = std::sync::Mutex::new(None);

fn registry(i: usize, h: Handle<u64>) -> RegistryRef {
    let r = REGISTRY.lock().unwrap().clone().expect("a registry");
    r.handles.write().unwrap()[i] = Some(Arc::new(h));
    r.ready.wait();
    let all: Vec<_> = r.handles.read().unwrap().iter().cloned().collect();
    RegistryRef {
        all: all.into_iter().map(Option::unwrap).collect(),
        shared: r,
    }
}

struct RegistryRef {
    all: Vec<Arc<Handle<u64>>>,
    shared: Arc<Registry>,
}

impl RegistryRef {
    fn get(&self, key: usize) -> &Handle<u64> {
        &self.all[key]
    }
    /// Waits until every thread is done before the handles are dropped (a
    /// dropped handle cancels its receive, which another thread may need).
    fn done(self) {
        self.shared.finished.wait();
    }
}

fn udp_run(threads: usize, shared: bool, ops: usize) -> Figures {
    *REGISTRY.lock().unwrap() = Some(Arc::new(Registry {
        handles: std::sync::RwLock::new(vec![None; threads]),
        ready: Barrier::new(threads),
        finished: Barrier::new(threads),
    }));
    run(threads, shared, ops, udp())
}

/// `line`: ns per hand-over of one contended cache line between 2 threads.
fn line(turns: u64) -> f64 {
    let cpus = ringport::cpu_count();
    let one_cpu = env("SCALING_ONE_CPU", 0) == 1;
    let word = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2u64)
        .map(|me| {
            let word = word.clone();
            thread::spawn(move || {
                pin(if one_cpu { 0 } else { me as usize % cpus });
                let mut spins = 0u64;
                loop {
                    let v = word.load(Ordering::Acquire);
                    if v >= turns {
                        return;
                    }
                    if v % 2 == me {
                        word.fetch_add(1, Ordering::AcqRel);
                    } else {
                        spins += 1;
                        if one_cpu && spins % 64 == 0 {
                            thread::yield_now();
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    t0.elapsed().as_nanos() as f64 / turns as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = if bench { env("SCALING_ROUNDS", 5) } else { 1 };
    let scale = if bench { 1 } else { 1000 };
    let post_ops = env("SCALING_OPS", 200_000) / scale;
    let udp_ops = env("SCALING_OPS", 50_000) / scale;
    let backend = CompletionPort::<u8>::new(1).unwrap().backend();
    println!(
        "scaling: backend {backend}, {} CPUs{}, {rounds} rounds interleaved, median",
        ringport::cpu_count(),
        if env("SCALING_ONE_CPU", 0) == 1 {
            ", every thread on CPU 0"
        } else {
            ", thread i on CPU i"
        }
    );
    let cases = [(1, true), (2, true), (2, false)];
    let name = |t: usize, shared: bool| match (t, shared) {
        (1, _) => "1 thread, 1 port".to_string(),
        (t, true) => format!("{t} threads, 1 port"),
        (t, false) => format!("{t} threads, {t} ports"),
    };
    // SCALING_ONLY=udp (or post, line) runs one workload; SCALING_CASE=k
    // only the k-th case (0: 1 thread, 1: shared, 2: sharded), for counting
    // a case's system calls (strace -c -f) or instructions (callgrind).
    let only = std::env::var("SCALING_ONLY").unwrap_or_default();
    let case = std::env::var("SCALING_CASE")
        .ok()
        .and_then(|c| c.parse::<usize>().ok());
    let wanted = |w: &str| only.is_empty() || only == w;
    for (what, ops) in [("post", post_ops), ("udp", udp_ops)] {
        if !wanted(what) {
            continue;
        }
        let mut runs = vec![Vec::new(); cases.len()];
        for _ in 0..rounds {
            for (k, &(t, shared)) in cases.iter().enumerate() {
                if case.is_some_and(|c| c != k) {
                    runs[k].push(Figures::default());
                    continue;
                }
                runs[k].push(match what {
                    "post" => run(t, shared, ops, post),
                    _ => udp_run(t, shared, ops),
                });
            }
        }
        println!("\n{what}: {ops} operations per thread and round");
        println!(
            "{:<22} {:>12} {:>12} {:>18}",
            "", "ops/s", "CPU ns/op", "call ns/op"
        );
        for (k, &(t, shared)) in cases.iter().enumerate() {
            let f = |g: fn(&Figures) -> f64| median(runs[k].iter().map(g).collect());
            println!(
                "{:<22} {:>12.0} {:>12.0} {:>18.0}",
                name(t, shared),
                f(|r| r.rate),
                f(|r| r.cpu_ns),
                f(|r| r.locked_ns)
            );
        }
    }
    if !wanted("line") {
        return;
    }
    let turns = if bench { 2_000_000 } else { 2_000 };
    let lines: Vec<f64> = (0..rounds).map(|_| line(turns)).collect();
    println!(
        "\nline: {:.0} ns per hand-over of a contended cache line (median)",
        median(lines)
    );
}
