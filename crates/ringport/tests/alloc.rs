//! DESIGN.md: "Steady state: no heap allocation per operation", counted.
//!
//! A global allocator counts the allocations made by the calling thread, and
//! each loop runs on one thread (posting, starting operations and harvesting
//! them itself), after a warm-up that lets every table, queue and buffer
//! reach its working size. The loops run on whichever backend
//! `RINGPORT_BACKEND` picks; CI runs them on both.
//!
//! Nothing may allocate: the port's queue keeps the blocks its consumers
//! have emptied for its producers to reuse, the in-flight tables keep their
//! freed slots, and the backends keep the vectors they work in.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};
use ringport::{Buf, CompletionPort, Payload};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter is a const-initialised thread-local without a destructor, which
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM_UP: u64 = 2_000;
const ROUNDS: u64 = 20_000;
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Allocations allowed per packet (see the module docs).
const QUEUE_BLOCK: f64 = 0.0;

/// Runs `step` WARM_UP times, then ROUNDS times counting this thread's
/// allocations; returns allocations per step.
fn allocations_per_step(what: &str, mut step: impl FnMut()) -> f64 {
    for _ in 0..WARM_UP {
        step();
    }
    let before = ALLOCS.with(Cell::get);
    for _ in 0..ROUNDS {
        step();
    }
    let n = ALLOCS.with(Cell::get) - before;
    let per = n as f64 / ROUNDS as f64;
    println!("{what}: {n} allocations in {ROUNDS} steps ({per:.4} per step)");
    per
}

#[test]
fn posting_and_getting_packets_allocates_nothing() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let per = allocations_per_step("post + get", || {
        port.post(1, 2, Ok(3)).unwrap();
        let p = port.get(WAIT).unwrap();
        assert_eq!((p.key, p.token), (1, 2));
    });
    assert!(per <= QUEUE_BLOCK, "{per} allocations per packet");
}

#[test]
fn datagram_receives_allocate_nothing() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let server = port.associate(server, 7).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = Some(Buf::from(vec![0u8; 2048]));
    let per = allocations_per_step("send_to + recv_from + get", || {
        client.send_to(b"datagram", addr).unwrap();
        server.recv_from(buf.take().unwrap(), 1).unwrap();
        let p = port.get(WAIT).unwrap();
        let Payload::BufFrom(b, Some(_)) = p.payload else {
            panic!("no buffer and address in {p:?}");
        };
        assert_eq!((p.key, p.result.unwrap()), (7, 8));
        buf = Some(b);
    });
    assert!(per <= QUEUE_BLOCK, "{per} allocations per datagram");
}

#[test]
fn stream_echo_allocates_nothing() {
    let port = CompletionPort::<u64>::new(1).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let server = port.associate(server, 9).unwrap();
    let mut bufs = Some((Buf::from(vec![0u8; 512]), Buf::from(b"pong".to_vec())));
    let mut reply = [0u8; 4];
    let per = allocations_per_step("send + recv + get + get", || {
        use std::io::{Read, Write};
        let (inbox, outbox) = bufs.take().unwrap();
        client.write_all(b"ping").unwrap();
        server.recv(inbox, 1).unwrap();
        let p = port.get(WAIT).unwrap();
        assert_eq!(p.result.as_ref().unwrap(), &4);
        let Payload::Buf(inbox) = p.payload else {
            panic!("no buffer");
        };
        server.send(outbox, 2).unwrap();
        let p = port.get(WAIT).unwrap();
        assert_eq!(p.result.as_ref().unwrap(), &4);
        let Payload::Buf(outbox) = p.payload else {
            panic!("no buffer");
        };
        client.read_exact(&mut reply).unwrap();
        bufs = Some((inbox, outbox));
    });
    assert_eq!(reply, *b"pong");
    assert!(per <= 2.0 * QUEUE_BLOCK, "{per} allocations per round trip");
}

#[test]
fn rio_receives_and_dequeues_allocate_nothing() {
    let cq = CompletionQueue::new(64, Notify::Polled).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let rq = RequestQueue::new(server, 8, 8, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut results = [RioResult::default(); 8];
    let per = allocations_per_step("receive + dequeue", || {
        rq.receive(RioBuf::new(id, 0, 1500), RioFlags::NONE, 5)
            .unwrap();
        client.send_to(b"registered", addr).unwrap();
        let mut spins = 0u64;
        loop {
            let n = cq.dequeue(&mut results).unwrap();
            if n > 0 {
                assert_eq!(
                    (n, results[0].bytes, results[0].request_context),
                    (1, 10, 5)
                );
                break;
            }
            spins += 1;
            assert!(spins < 100_000_000, "no result");
            std::hint::spin_loop();
        }
    });
    assert_eq!(per, 0.0);
}
