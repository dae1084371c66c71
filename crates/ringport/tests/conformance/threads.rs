//! Thread exit: an operation belongs to its handle and port, never to the
//! thread that issued it.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::support::*;

/// Gives the kernel time to act on the issuing thread's exit.
const AFTER_EXIT: Duration = Duration::from_millis(100);

/// A thread issues a receive and exits; the peer sends afterwards; the
/// packet carries the data, not a cancellation.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_WSARecv` (a WSARecv issued
/// by a thread that then exits is not cancelled: since Vista, I/O on a
/// handle associated with a completion port survives its thread) and
/// `dlls/ntdll/tests/pipe.c`, `test_completion`.
#[test]
fn a_receive_outlives_the_thread_that_issued_it() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 700).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| h.recv(vec![0u8; 64], 1).unwrap())
            .join()
            .unwrap();
    });
    std::thread::sleep(AFTER_EXIT);
    peer.write_all(b"after the thread exited").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (700, 1));
    assert!(!p.is_cancelled(), "cancelled by the thread's exit");
    assert_eq!(data(&mut p), b"after the thread exited");
    assert_quiet(&port, "one packet per receive");
}

/// A thread issues an accept and exits; a client connects afterwards; the
/// accept completes with the connection.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_AcceptEx` (AcceptEx
/// pending from a thread that has exited).
#[test]
fn an_accept_outlives_the_thread_that_issued_it() {
    let port = port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.associate(listener, 701).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| listener.accept(2).unwrap()).join().unwrap();
    });
    std::thread::sleep(AFTER_EXIT);
    let client = TcpStream::connect(addr).unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (701, 2));
    assert!(!p.is_cancelled(), "cancelled by the thread's exit");
    assert_eq!(p.peer(), Some(client.local_addr().unwrap()));
    assert!(p.take_stream().is_some(), "the accepted socket");
    assert_quiet(&port, "one packet per accept");
}

/// A thread starts a timer and exits; the timer still fires, as a packet
/// with its key, token and `Ok(0)`.
///
/// Extends the thread-exit case of Wine `dlls/ws2_32/tests/sock.c`,
/// `test_WSARecv` to ringport's timers (Windows has no port timer of this
/// shape; the rule is DESIGN.md's: an operation never belongs to a thread).
#[test]
fn a_timer_outlives_the_thread_that_started_it() {
    let port = port();
    std::thread::scope(|s| {
        s.spawn(|| port.timer(Duration::from_millis(200), 702, 3).unwrap())
            .join()
            .unwrap();
    });
    let p = get(&port);
    assert_eq!((p.key, p.token), (702, 3));
    assert_eq!(p.result.unwrap(), 0, "the timer fired, not cancelled");
    assert_quiet(&port, "one packet per timer");
}

/// A thread issues a receive and then runs in user space without entering
/// the kernel (a busy worker); the peer sends; another thread gets the
/// packet while the issuer is still busy. (On io_uring the port's ring
/// finishes the receive on its issuing thread, without interrupting it, the
/// next time that thread enters the kernel — at the latest the scheduler
/// tick: the packet must not wait for the busy thread's own next call.)
///
/// Windows has no such dependence: I/O completes to the port whatever its
/// issuing thread is doing (the Vista rule of `test_WSARecv` above, for a
/// thread alive but busy).
#[test]
fn a_receive_completes_while_its_issuing_thread_is_busy() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 703).unwrap();
    let issued = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            h.recv(vec![0u8; 64], 4).unwrap();
            issued.store(true, Ordering::Release);
            // Busy in user space, bounded: no system call until the packet
            // was taken (or 10 s passed).
            let start = std::time::Instant::now();
            while !done.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
        });
        while !issued.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        peer.write_all(b"while busy").unwrap();
        let got = port.get(Some(Duration::from_secs(5)));
        done.store(true, Ordering::Release);
        let mut p = got.expect("the packet, while its issuer is busy");
        assert_eq!((p.key, p.token), (703, 4));
        assert_eq!(data(&mut p), b"while busy");
    });
    assert_quiet(&port, "one packet per receive");
}
