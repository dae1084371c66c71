//! How the port harvests kernel completions, measured: the design it uses
//! (the waiting thread that sleeps in the kernel reaps and runs the
//! completion itself, no hop) against a dedicated reaper thread that takes
//! every completion and re-posts it to the workers' port (one hop per
//! completion, the .NET / thread-pool shape).
//!
//! A UDP ping-pong on loopback: a client sends 64 bytes and waits for the
//! echo; the server side receives through the port and echoes with a plain
//! `send_to`. Both variants run in one process, interleaved, and print the
//! round-trip p50/p99 and CPU time per round trip (the whole process).
//!
//! `cargo bench -p ringport --bench harvest` (set `HARVEST_ROUNDS` and
//! `HARVEST_TRIPS` to change the run; `RINGPORT_BACKEND` as everywhere).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringport::{CompletionPort, Packet};

const WORKERS: usize = 2;

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

struct Result {
    p50: Duration,
    p99: Duration,
    cpu_per_trip: Duration,
}

/// Runs `trips` round trips against a server whose receives complete on
/// `port` and whose `WORKERS` worker threads echo through `serve`.
fn ping_pong(trips: usize, server: &UdpSocket, stop: &AtomicBool) -> (Vec<Duration>, Duration) {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = server.local_addr().unwrap();
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(trips);
    let cpu0 = cpu_time();
    for i in 0..trips {
        let t = Instant::now();
        client.send_to(&(i as u64).to_le_bytes(), to).unwrap();
        loop {
            match client.recv(&mut buf) {
                Ok(_) => break,
                // io_uring runs the completions of this thread's operations
                // (the receives it armed) by interrupting it, so a blocking
                // call with a timeout sees EINTR: retry.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no echo at round trip {i}: {e}"),
            }
        }
        rtts.push(t.elapsed());
    }
    let cpu = cpu_time() - cpu0;
    stop.store(true, Ordering::Release);
    (rtts, cpu)
}

fn summarize(mut rtts: Vec<Duration>, cpu: Duration) -> Result {
    rtts.sort();
    let n = rtts.len();
    Result {
        p50: rtts[n / 2],
        p99: rtts[n * 99 / 100],
        cpu_per_trip: cpu / n as u32,
    }
}

/// Echo one datagram and re-arm the receive.
fn echo(h: &ringport::Handle<u8>, reply: &UdpSocket, mut p: Packet<u8>) {
    let from = p.peer();
    let buf = p.take_buf().expect("a buffer");
    if let (Some(from), Ok(n)) = (from, p.result) {
        reply.send_to(&buf.as_slice()[..n], from).unwrap();
    }
    let mut v = buf.into_vec();
    v.clear();
    h.recv_from(v, 0).unwrap();
}

fn workers(
    port: &CompletionPort<u8>,
    h: &Arc<ringport::Handle<u8>>,
    reply: &Arc<UdpSocket>,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    (0..WORKERS)
        .map(|_| {
            let (port, h, reply, stop) = (port.clone(), h.clone(), reply.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Ok(p) = port.get(Some(Duration::from_millis(20))) {
                        echo(&h, &reply, p);
                    }
                }
            })
        })
        .collect()
}

/// The port's own design: workers wait on the port that owns the ring.
fn direct(trips: usize) -> Result {
    let port = CompletionPort::<u8>::new(WORKERS).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let reply = Arc::new(sock.try_clone().unwrap());
    let addr_sock = sock.try_clone().unwrap();
    let h = Arc::new(port.associate(sock, 1).unwrap());
    for _ in 0..4 {
        h.recv_from(Vec::with_capacity(64), 0).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ws = workers(&port, &h, &reply, &stop);
    let (rtts, cpu) = ping_pong(trips, &addr_sock, &stop);
    ws.into_iter().for_each(|w| w.join().unwrap());
    summarize(rtts, cpu)
}

/// A dedicated reaper: one thread owns the ring's port and re-posts every
/// completion to the workers' port.
fn reaper(trips: usize) -> Result {
    let ring_port = CompletionPort::<u8>::new(1).unwrap();
    let work_port = CompletionPort::<u8>::new(WORKERS).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let reply = Arc::new(sock.try_clone().unwrap());
    let addr_sock = sock.try_clone().unwrap();
    let h = Arc::new(ring_port.associate(sock, 1).unwrap());
    for _ in 0..4 {
        h.recv_from(Vec::with_capacity(64), 0).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hop = {
        let (ring_port, work_port, stop) = (ring_port.clone(), work_port.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Ok(p) = ring_port.get(Some(Duration::from_millis(20))) {
                    work_port.post_packet(p).unwrap();
                }
            }
        })
    };
    let ws = workers(&work_port, &h, &reply, &stop);
    let (rtts, cpu) = ping_pong(trips, &addr_sock, &stop);
    ws.into_iter().for_each(|w| w.join().unwrap());
    hop.join().unwrap();
    summarize(rtts, cpu)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--test`/`--bench` flags: keep
    // that run short.
    let smoke = std::env::args().any(|a| a == "--test");
    let rounds = env("HARVEST_ROUNDS", if smoke { 1 } else { 5 });
    let trips = env("HARVEST_TRIPS", if smoke { 200 } else { 20_000 });
    let backend = CompletionPort::<u8>::new(0).unwrap().backend();
    println!("harvest: UDP ping-pong, {trips} round trips x {rounds} rounds, {WORKERS} workers, backend {backend}");
    let (mut d, mut r) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.push(direct(trips));
        r.push(reaper(trips));
    }
    let show = |name: &str, v: &[Result]| {
        let p50 = median(v.iter().map(|x| x.p50).collect());
        let p99 = median(v.iter().map(|x| x.p99).collect());
        let cpu = median(v.iter().map(|x| x.cpu_per_trip).collect());
        println!(
            "{name:<28} p50 {:>7.1} µs   p99 {:>7.1} µs   CPU {:>6.1} µs/round trip",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            cpu.as_secs_f64() * 1e6
        );
        (p50, cpu)
    };
    let (dp, dc) = show("kernel sleeper (ringport)", &d);
    let (rp, rc) = show("dedicated reaper + post", &r);
    println!(
        "ratio reaper/ringport: p50 {:.2}x, CPU {:.2}x",
        rp.as_secs_f64() / dp.as_secs_f64(),
        rc.as_secs_f64() / dc.as_secs_f64()
    );
}
