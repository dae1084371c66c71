//! The UDP receive paths of RIO, measured side by side: ringport's RIO
//! engine (since 2026-11-30 its posted receives are published to a
//! provided-buffer ring that one multishot `RECV` consumes; with
//! `RINGPORT_RIO_MULTISHOT=0`, one `IORING_OP_RECV` per posted receive, in
//! chains), a bare multishot `RECV` over a provided-buffer ring with no RIO
//! around it, and a plain `recvmmsg` loop (the C bar).
//!
//! A GSO sender (`UDP_SEGMENT`, 63 datagrams of 1,024 bytes per `send`)
//! pinned to CPU 0 feeds a receiver pinned to CPU 1 for a fixed time, then
//! sends end markers. Each receiver runs in turn, rounds interleaved; the
//! figures are datagrams received per second and the receiving thread's
//! CPU time per datagram (`CLOCK_THREAD_CPUTIME_ID`), medians.
//!
//! `cargo bench -p ringport --bench rio_recv` (`RIO_RECV_SECONDS`,
//! `RIO_RECV_ROUNDS` change the run; `RIO_RECV_ONLY=multishot` runs only the
//! receivers whose names contain it, e.g. to count one's instructions per
//! datagram under `valgrind --tool=callgrind --toggle-collect=rio_recv::*`).
//! Needs io_uring (6.0+ for multishot).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};
use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};

const SIZE: usize = 1024;
const SEGMENTS: usize = 63;
const UDP_SEGMENT: libc::c_int = 103;
/// Receives (or provided buffers) kept ready.
const DEPTH: usize = 512;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it, and
    // sched_setaffinity reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime fills a zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a live timespec for this thread's CPU clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A socket with the largest receive buffer the system allows.
fn receiver() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt reads one c_int.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            4,
        )
    };
    s
}

/// Sends datagrams of SIZE bytes to `to` as fast as GSO allows for
/// `duration`, then end markers (1 byte) until `done`.
fn blast(to: SocketAddr, duration: Duration, done: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        pin(0);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(to).unwrap();
        let seg: libc::c_int = SIZE as libc::c_int;
        // SAFETY: setsockopt reads one c_int.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_UDP,
                UDP_SEGMENT,
                (&seg as *const libc::c_int).cast(),
                4,
            )
        };
        let payload = vec![7u8; SIZE * SEGMENTS];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let _ = s.send(&payload);
        }
        // Markers go without GSO's segment size mattering: 1 byte < SIZE.
        while !done.load(Ordering::Relaxed) {
            let _ = s.send(&[0u8]);
            thread::sleep(Duration::from_millis(1));
        }
    })
}

struct Run {
    datagrams: u64,
    cpu: Duration,
    wall: Duration,
}

/// ringport RIO as the engine runs it: DEPTH receives posted, results
/// dequeued (no system call) and the receives posted again, deferred and
/// committed once per batch. Spinning on `dequeue` (`rio_polled`) its CPU
/// time is its wall time; with event notification (`rio_event`: arm, wait,
/// dequeue until empty) it sleeps when idle, like the others.
fn rio_polled(sock: UdpSocket) -> Run {
    rio(sock, false)
}

fn rio_event(sock: UdpSocket) -> Run {
    rio(sock, true)
}

fn rio(sock: UdpSocket, event: bool) -> Run {
    let notify = if event { Notify::Event } else { Notify::Polled };
    let cq = CompletionQueue::new(DEPTH as u32, notify).unwrap();
    let rq = RequestQueue::new(sock, DEPTH as u32, 0, &cq, &cq, 0).unwrap();
    let buffer = rio::register_buffer(DEPTH * 2048).unwrap();
    let slice = |i: u64| RioBuf::new(buffer, i as u32 * 2048, 2048);
    for i in 0..DEPTH as u64 {
        rq.receive(slice(i), RioFlags::DEFER, i).unwrap();
    }
    rq.commit().unwrap();
    let mut results = vec![RioResult::default(); DEPTH];
    let (mut n, mut started) = (0u64, None);
    let cpu0 = thread_cpu();
    'run: loop {
        if event {
            cq.notify().unwrap();
            cq.wait(Some(Duration::from_secs(10))).unwrap();
        }
        let k = cq.dequeue(&mut results).unwrap();
        for r in &results[..k] {
            if r.bytes as usize != SIZE {
                break 'run;
            }
            started.get_or_insert_with(Instant::now);
            n += 1;
            rq.receive(slice(r.request_context), RioFlags::DEFER, r.request_context)
                .unwrap();
        }
        if k > 0 {
            rq.commit().unwrap();
        }
    }
    Run {
        datagrams: n,
        cpu: thread_cpu() - cpu0,
        wall: started.map_or(Duration::ZERO, |s| s.elapsed()),
    }
}

/// One multishot RECV consuming a ring of DEPTH provided buffers, each
/// handed back to the ring once its completion is read; waits with
/// `submit_and_wait(1)`.
fn multishot(sock: UdpSocket) -> Run {
    const GROUP: u16 = 7;
    let mut ring = IoUring::new(4096).unwrap();
    let entries = DEPTH as u16;
    let layout = std::alloc::Layout::from_size_align(DEPTH * 16, 4096).unwrap();
    // SAFETY: a non-zero size; freed at the end with the same layout.
    let base = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
    let mut data = vec![0u8; DEPTH * 2048];
    let tail = |t: u16| {
        // SAFETY: the tail field overlays the first entry's `resv`, inside
        // the ring's allocation; the kernel only reads it.
        unsafe {
            let p = types::BufRingEntry::tail(base) as *const std::sync::atomic::AtomicU16;
            (*p).store(t, Ordering::Release)
        }
    };
    let give = |i: usize, bid: u16, data: &mut Vec<u8>| {
        // SAFETY: i < DEPTH entries of the allocation; the buffer lives in
        // `data`, which outlives the ring's use of it.
        unsafe {
            let e = &mut *base.add(i % DEPTH);
            e.set_addr(data.as_mut_ptr().add(bid as usize * 2048) as u64);
            e.set_len(2048);
            e.set_bid(bid);
        }
    };
    for b in 0..DEPTH {
        give(b, b as u16, &mut data);
    }
    let mut t = DEPTH as u16;
    tail(t);
    // SAFETY: `base` holds DEPTH entries, page-aligned, alive until after
    // the ring is dropped.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(base as u64, entries, GROUP, 0)
            .unwrap()
    };
    let recv = opcode::RecvMulti::new(types::Fd(sock.as_raw_fd()), GROUP)
        .build()
        .user_data(1);
    // SAFETY: the SQE points at no memory of ours (buffers come from the ring).
    unsafe { ring.submission().push(&recv).unwrap() };
    let (mut n, mut started) = (0u64, None);
    let cpu0 = thread_cpu();
    'run: loop {
        ring.submit_and_wait(1).unwrap();
        let cqes: Vec<cqueue::Entry> = ring.completion().collect();
        for c in cqes {
            if c.result() < 0 {
                assert_eq!(-c.result(), libc::ENOBUFS, "multishot recv failed");
            }
            if let Some(bid) = cqueue::buffer_select(c.flags()) {
                if c.result() as usize != SIZE {
                    break 'run;
                }
                started.get_or_insert_with(Instant::now);
                n += 1;
                give(t as usize, bid, &mut data);
                t = t.wrapping_add(1);
                tail(t);
            }
            if !cqueue::more(c.flags()) {
                // SAFETY: as above.
                unsafe { ring.submission().push(&recv).unwrap() };
            }
        }
    }
    let run = Run {
        datagrams: n,
        cpu: thread_cpu() - cpu0,
        wall: started.map_or(Duration::ZERO, |s| s.elapsed()),
    };
    drop(ring);
    // SAFETY: the ring (and the kernel's use of the buffer ring) is gone.
    unsafe { std::alloc::dealloc(base.cast(), layout) };
    run
}

/// recvmmsg in batches of 64, blocking for the first (MSG_WAITFORONE).
fn recvmmsg(sock: UdpSocket) -> Run {
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    // SAFETY: all-zero is a valid iovec and mmsghdr.
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for i in 0..BATCH {
        iov[i].iov_base = bufs[i].as_mut_ptr().cast();
        iov[i].iov_len = 2048;
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    let (mut n, mut started) = (0u64, None);
    let cpu0 = thread_cpu();
    'run: loop {
        // SAFETY: BATCH live mmsghdrs pointing at live iovecs and buffers.
        let k = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        for m in &msgs[..k.max(0) as usize] {
            if m.msg_len as usize != SIZE {
                break 'run;
            }
            started.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    Run {
        datagrams: n,
        cpu: thread_cpu() - cpu0,
        wall: started.map_or(Duration::ZERO, |s| s.elapsed()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let seconds = env("RIO_RECV_SECONDS", 2);
    let rounds = env("RIO_RECV_ROUNDS", 3);
    type Receiver = fn(UdpSocket) -> Run;
    let receivers: [(&str, Receiver); 4] = [
        ("rio polled", rio_polled),
        ("rio event", rio_event),
        ("multishot RECV + buf ring", multishot),
        ("recvmmsg", recvmmsg),
    ];
    let mut rates = vec![Vec::new(); receivers.len()];
    let mut cpus = vec![Vec::new(); receivers.len()];
    let only = std::env::var("RIO_RECV_ONLY").unwrap_or_default();
    for round in 0..rounds {
        for (i, &(name, receive)) in receivers.iter().enumerate() {
            if !name.contains(only.as_str()) {
                continue;
            }
            let sock = receiver();
            let to = sock.local_addr().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let sender = blast(to, Duration::from_secs(seconds), done.clone());
            let run = thread::spawn(move || {
                pin(1);
                receive(sock)
            })
            .join()
            .unwrap();
            done.store(true, Ordering::Relaxed);
            sender.join().unwrap();
            let rate = run.datagrams as f64 / run.wall.as_secs_f64().max(1e-9);
            let cpu = run.cpu.as_secs_f64() * 1e6 / run.datagrams.max(1) as f64;
            println!(
                "round {}: {name:<28} {:>9.0} datagrams/s  {:.3} CPU µs/datagram  ({} datagrams)",
                round + 1,
                rate,
                cpu,
                run.datagrams
            );
            rates[i].push(rate);
            cpus[i].push(cpu);
        }
    }
    println!("\nmedians of {rounds} rounds, {SIZE}-byte datagrams, GSO sender on CPU 0, receiver on CPU 1:");
    let base = match (rates[3].is_empty(), cpus[3].is_empty()) {
        (false, false) => (median(rates[3].clone()), median(cpus[3].clone())),
        _ => (f64::NAN, f64::NAN),
    };
    for (i, (name, _)) in receivers.iter().enumerate() {
        if rates[i].is_empty() {
            continue;
        }
        let (r, c) = (median(rates[i].clone()), median(cpus[i].clone()));
        println!(
            "{name:<28} {r:>9.0} datagrams/s ({:.2}× recvmmsg)  {c:.3} CPU µs/datagram ({:.2}× recvmmsg)",
            r / base.0,
            c / base.1
        );
    }
}
