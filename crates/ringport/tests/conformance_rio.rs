//! Registered I/O against the Windows contract, on loopback sockets: a
//! request queue's pending requests of one kind complete in the order they
//! were posted (a stream's bytes, a socket's datagrams, the bytes a stream's
//! sends put on the wire), and a request belongs to its queue, not to the
//! thread that posted it. Issue 10, defects 1 and 2 as they apply to RIO.
//!
//! Each test runs on the backend `RINGPORT_BACKEND` chooses (CI runs the
//! suite once per backend). Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};

mod common;
use common::rio::{bytes, take, udp};

const SECOND: Duration = Duration::from_secs(1);
/// Long enough for requests just posted to be waiting in the kernel (or in
/// the epoll engine) before the peer acts.
const SETTLE: Duration = Duration::from_millis(50);

/// A connected pair: (the end a request queue will own, its peer).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(5 * SECOND)).unwrap();
    (ours, peer)
}

fn set_buffer(fd: RawFd, opt: libc::c_int, size: libc::c_int) {
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from &size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// Shrinks the pair's buffers and writes filler (0xEE) into `ours` through
/// a second handle until the kernel takes no more, so that the next send on
/// it has to wait for the peer to read. Returns the filler's length.
fn fill_send_buffer(ours: &TcpStream, peer: &TcpStream) -> usize {
    set_buffer(ours.as_raw_fd(), libc::SO_SNDBUF, 8 * 1024);
    set_buffer(peer.as_raw_fd(), libc::SO_RCVBUF, 8 * 1024);
    let mut writer = ours.try_clone().unwrap();
    writer.set_nonblocking(true).unwrap();
    let chunk = [0xEEu8; 4096];
    let mut filled = 0;
    let deadline = Instant::now() + 5 * SECOND;
    // The window closes in steps: stop once writes have failed for a while.
    let mut quiet_since = None;
    loop {
        match writer.write(&chunk) {
            Ok(n) => {
                filled += n;
                quiet_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > SETTLE {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("filling the send buffer: {e}"),
        }
        assert!(Instant::now() < deadline, "the send buffer never filled");
    }
    // Back to what a request queue's socket normally is.
    writer.set_nonblocking(false).unwrap();
    filled
}

/// Reads exactly `n` bytes from `peer`.
fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    peer.read_exact(&mut got).unwrap();
    got
}

/// Checks that the result for request context `i` holds slice `i` of
/// `stream` (`len` bytes each) in `buf(i)`.
fn assert_slices_in_posting_order(
    results: &[RioResult],
    stream: &[u8],
    len: usize,
    buf: impl Fn(u64) -> RioBuf,
) {
    for r in results {
        assert_eq!((r.status, r.bytes), (0, len as u32), "{results:?}");
        let i = r.request_context as usize;
        let got = bytes(RioBuf {
            len: r.bytes,
            ..buf(r.request_context)
        });
        assert_eq!(
            got,
            stream[i * len..(i + 1) * len],
            "receive {i} (posted {}th) got the wrong bytes; results: {results:?}",
            i + 1
        );
    }
    let contexts: Vec<u64> = results.iter().map(|r| r.request_context).collect();
    let mut sorted = contexts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..results.len() as u64).collect::<Vec<_>>());
}

/// Four 16-byte receives posted on a stream, then 64 bytes from the peer:
/// the receive posted first takes bytes 0..15, the second 16..31, and so on
/// (Windows completes a socket's pending receives in posting order).
#[test]
fn stream_receives_take_the_bytes_in_posting_order() {
    let (ours, mut peer) = tcp_pair();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(ours, 4, 4, &cq, &cq, 1).unwrap();
    let id = rio::register_buffer(4 * 16).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 16, 16);
    for i in 0..4 {
        rq.receive(slice(i), RioFlags::NONE, i).unwrap();
    }
    thread::sleep(SETTLE);
    let stream: Vec<u8> = (0..64u8).collect();
    peer.write_all(&stream).unwrap();
    let results = take(&cq, 4);
    assert_slices_in_posting_order(&results, &stream, 16, slice);
}

/// Four receives posted on a datagram socket (two plain, two with
/// addresses), then four datagrams: the receive posted first takes the first
/// datagram, and so on.
#[test]
fn datagram_receives_take_the_datagrams_in_posting_order() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 8, 0, &cq, &cq, 2).unwrap();
    let id = rio::register_buffer(8 * 64).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 64, 8);
    let remote = |i: u64| RioBuf::new(id, 4 * 64 + i as u32 * 64, rio::ADDRESS_LEN);
    for round in 0..2 {
        for i in 0..4 {
            if i % 2 == round {
                rq.receive(slice(i), RioFlags::NONE, i).unwrap();
            } else {
                rq.receive_ex(slice(i), None, Some(remote(i)), RioFlags::NONE, i)
                    .unwrap();
            }
        }
        thread::sleep(SETTLE);
        let (client, client_addr) = udp();
        let mut stream = Vec::new();
        for d in 0..4u8 {
            let datagram = [d + 10 * round as u8; 8];
            client.send_to(&datagram, addr).unwrap();
            stream.extend_from_slice(&datagram);
        }
        let results = take(&cq, 4);
        assert_slices_in_posting_order(&results, &stream, 8, slice);
        for i in (0..4).filter(|i| i % 2 != round) {
            let from = rio::read_addr(&rio::borrow(&remote(i)).unwrap());
            assert_eq!(from, Some(client_addr));
        }
    }
}

/// 48 receives posted one by one on a datagram socket (every third with
/// addresses), then 64 datagrams, two of them longer than their receive's
/// slice: each receive takes the datagram of its posting rank, in posting
/// order, a long one as `EMSGSIZE` with the bytes that fit; then 16 more
/// receives take the other 16, in order. On io_uring most of them are
/// taken in batches straight from the socket (a `recvmmsg`), not through
/// the ring: the results and their order must not show it.
#[test]
fn datagram_receives_posted_one_by_one_take_a_burst_in_posting_order() {
    const N: u64 = 64;
    const FIRST: u64 = 48;
    const LEN: u32 = 8;
    let long = |i: u64| i == 20 || i == 33 || i == 57;
    let (server, addr) = udp();
    let cq = CompletionQueue::new(N as u32, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, N as u32, 0, &cq, &cq, 3).unwrap();
    let id = rio::register_buffer(N as usize * 64).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 64, LEN);
    let remote = |i: u64| RioBuf::new(id, i as u32 * 64 + 16, rio::ADDRESS_LEN);
    let post = |i: u64| {
        if i % 3 == 1 {
            rq.receive_ex(slice(i), None, Some(remote(i)), RioFlags::NONE, i)
                .unwrap();
        } else {
            rq.receive(slice(i), RioFlags::NONE, i).unwrap();
        }
    };
    for i in 0..FIRST {
        post(i);
    }
    thread::sleep(SETTLE);
    let (client, client_addr) = udp();
    let datagram = |i: u64| vec![i as u8 + 1; if long(i) { 12 } else { LEN as usize }];
    for i in 0..N {
        client.send_to(&datagram(i), addr).unwrap();
    }
    let check = |results: &[RioResult], from: u64| {
        let contexts: Vec<u64> = results.iter().map(|r| r.request_context).collect();
        assert_eq!(
            contexts,
            (from..from + results.len() as u64).collect::<Vec<_>>(),
            "results out of posting order ({} backend)",
            cq.backend()
        );
        for r in results {
            let i = r.request_context;
            let status = if long(i) { libc::EMSGSIZE } else { 0 };
            assert_eq!((r.status, r.bytes), (status, LEN), "receive {i}: {r:?}");
            assert_eq!(
                bytes(slice(i)),
                datagram(i)[..LEN as usize],
                "receive {i} got another datagram ({} backend)",
                cq.backend()
            );
            if i % 3 == 1 {
                let sender = rio::read_addr(&rio::borrow(&remote(i)).unwrap());
                assert_eq!(sender, Some(client_addr), "receive {i}'s sender");
            }
        }
    };
    let results = take(&cq, FIRST as usize);
    check(&results, 0);
    for i in FIRST..N {
        post(i);
    }
    let results = take(&cq, (N - FIRST) as usize);
    check(&results, FIRST);
    assert_eq!(cq.dequeue(&mut [RioResult::default(); 4]).unwrap(), 0);
}

/// Eight sends posted on a stream whose send buffer is full: once the peer
/// reads, their bytes come out in posting order.
#[test]
fn stream_sends_go_out_in_posting_order() {
    const SENDS: u32 = 8;
    const LEN: u32 = 512;
    let (ours, mut peer) = tcp_pair();
    let filled = fill_send_buffer(&ours, &peer);
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(ours, 0, SENDS, &cq, &cq, 3).unwrap();
    let id = rio::register_buffer((SENDS * LEN) as usize).unwrap();
    let slice = |i: u32| RioBuf::new(id, i * LEN, LEN);
    for i in 0..SENDS {
        rio::borrow_mut(&slice(i)).unwrap().fill(i as u8 + 1);
    }
    for i in 0..SENDS {
        rq.send(slice(i), RioFlags::NONE, u64::from(i)).unwrap();
    }
    thread::sleep(SETTLE);
    // The owner dequeues while the peer reads (on io_uring a send may wait
    // for the one before it to be dequeued, see `rio`'s docs).
    let (got, results) = thread::scope(|s| {
        let reader = s.spawn(|| read_exactly(&mut peer, filled + (SENDS * LEN) as usize));
        let results = take(&cq, SENDS as usize);
        (reader.join().unwrap(), results)
    });
    assert!(got[..filled].iter().all(|&b| b == 0xEE));
    let order: Vec<u8> = got[filled..].chunks(LEN as usize).map(|c| c[0]).collect();
    assert_eq!(
        order,
        (1..=SENDS as u8).collect::<Vec<_>>(),
        "sends on the wire"
    );
    for (i, c) in got[filled..].chunks(LEN as usize).enumerate() {
        assert!(c.iter().all(|&b| b == i as u8 + 1), "send {i} interleaved");
    }
    let contexts: Vec<u64> = results.iter().map(|r| r.request_context).collect();
    assert_eq!(contexts, (0..u64::from(SENDS)).collect::<Vec<_>>());
    assert!(results.iter().all(|r| (r.status, r.bytes) == (0, LEN)));
}

/// Receives made with `DEFER` and committed, after one made without it,
/// still take the stream's bytes in posting order; so do receives posted
/// with `DEFER` while earlier ones wait, once committed.
#[test]
fn deferred_and_committed_receives_keep_posting_order() {
    let (ours, mut peer) = tcp_pair();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(ours, 8, 0, &cq, &cq, 4).unwrap();
    let id = rio::register_buffer(8 * 16).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 16, 16);
    rq.receive(slice(0), RioFlags::NONE, 0).unwrap();
    for i in 1..4 {
        rq.receive(slice(i), RioFlags::DEFER, i).unwrap();
    }
    rq.commit().unwrap();
    thread::sleep(SETTLE);
    // Posted while the first four wait.
    for i in 4..8 {
        rq.receive(slice(i), RioFlags::DEFER, i).unwrap();
    }
    rq.commit().unwrap();
    thread::sleep(SETTLE);
    let stream: Vec<u8> = (0..128u8).collect();
    peer.write_all(&stream).unwrap();
    let results = take(&cq, 8);
    assert_slices_in_posting_order(&results, &stream, 16, slice);
}

/// Posts with `post` on a thread that then exits, and waits until it has.
fn on_a_thread_that_exits(post: impl FnOnce() + Send) {
    thread::scope(|s| s.spawn(post).join().unwrap());
    // join returns once the thread is gone; give its exit a moment anyway.
    thread::sleep(SETTLE);
}

/// A receive posted by a thread that has exited completes with the datagram
/// that arrives later, status 0, on the thread that dequeues.
#[test]
fn a_datagram_receive_outlives_the_thread_that_posted_it() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 0, &cq, &cq, 5).unwrap();
    let id = rio::register_buffer(256).unwrap();
    let buf = RioBuf::new(id, 0, 256);
    on_a_thread_that_exits(|| rq.receive(buf, RioFlags::NONE, 77).unwrap());
    udp().0.send_to(b"after the poster left", addr).unwrap();
    let r = take(&cq, 1)[0];
    assert_eq!((r.request_context, r.status, r.bytes), (77, 0, 21), "{r:?}");
    assert_eq!(bytes(RioBuf::new(id, 0, 21)), b"after the poster left");
    // The queue goes on working.
    rq.receive(buf, RioFlags::NONE, 78).unwrap();
    udp().0.send_to(b"next", addr).unwrap();
    let r = take(&cq, 1)[0];
    assert_eq!((r.request_context, r.status, r.bytes), (78, 0, 4), "{r:?}");
}

/// Stream receives posted by a thread that has exited take the bytes that
/// arrive later, in posting order.
#[test]
fn stream_receives_outlive_the_thread_that_posted_them() {
    let (ours, mut peer) = tcp_pair();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(ours, 4, 0, &cq, &cq, 6).unwrap();
    let id = rio::register_buffer(2 * 16).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 16, 16);
    on_a_thread_that_exits(|| {
        rq.receive(slice(0), RioFlags::NONE, 0).unwrap();
        rq.receive(slice(1), RioFlags::NONE, 1).unwrap();
    });
    let stream: Vec<u8> = (100..132u8).collect();
    peer.write_all(&stream).unwrap();
    let results = take(&cq, 2);
    assert_slices_in_posting_order(&results, &stream, 16, slice);
}

/// A send posted by a thread that has exited, waiting for room in a full
/// send buffer, goes out whole once the peer reads, and completes with
/// status 0.
#[test]
fn a_stream_send_outlives_the_thread_that_posted_it() {
    const LEN: u32 = 1000;
    let (ours, mut peer) = tcp_pair();
    let filled = fill_send_buffer(&ours, &peer);
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(ours, 0, 4, &cq, &cq, 7).unwrap();
    let id = rio::register_buffer(LEN as usize).unwrap();
    let buf = RioBuf::new(id, 0, LEN);
    rio::borrow_mut(&buf).unwrap().fill(0x5A);
    on_a_thread_that_exits(|| rq.send(buf, RioFlags::NONE, 9).unwrap());
    let (got, r) = thread::scope(|s| {
        let reader = s.spawn(|| read_exactly(&mut peer, filled + LEN as usize));
        let r = take(&cq, 1)[0];
        (reader.join().unwrap(), r)
    });
    assert!(got[filled..].iter().all(|&b| b == 0x5A));
    assert_eq!((r.request_context, r.status, r.bytes), (9, 0, LEN), "{r:?}");
}

/// Moving a completion queue to a bigger ring (io_uring cancels its
/// requests in flight and starts them again) keeps their posting order.
#[test]
fn resizing_the_completion_queue_keeps_posting_order() {
    let (ours, mut peer) = tcp_pair();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(ours, 4, 0, &cq, &cq, 8).unwrap();
    let id = rio::register_buffer(4 * 16).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 16, 16);
    rq.receive(slice(0), RioFlags::NONE, 0).unwrap();
    rq.receive(slice(1), RioFlags::NONE, 1).unwrap();
    thread::sleep(SETTLE);
    cq.resize(100).unwrap();
    assert!(cq.ring_capacity() >= 100);
    rq.receive(slice(2), RioFlags::NONE, 2).unwrap();
    rq.receive(slice(3), RioFlags::NONE, 3).unwrap();
    thread::sleep(SETTLE);
    let stream: Vec<u8> = (0..64u8).collect();
    peer.write_all(&stream).unwrap();
    let results = take(&cq, 4);
    assert_slices_in_posting_order(&results, &stream, 16, slice);
}
