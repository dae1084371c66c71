//! Many threads issuing on the same sockets while others harvest them: the
//! paths where a backend makes its system calls with the port-wide lock
//! released (epoll performs an operation while its descriptor's direction
//! is held busy; io_uring enters the ring after the lock). Nothing may be
//! lost, duplicated or reordered, and cancelling or dropping a handle while
//! an operation is being performed must still give every operation back.
//! Real sockets on 127.0.0.1, bounded waits; both backends
//! (`RINGPORT_BACKEND`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::pattern as bytes;

use ringport::{CompletionPort, Error, Handle};

const CONNS: usize = 4;
const BYTES: usize = 96 * 1024;
const WORKERS: usize = 4;

/// One accepted connection: its handle, the next receive's sequence number
/// (the mutex is held across numbering and issuing, so the numbers are the
/// issue order), and what each receive brought.
struct Conn {
    handle: Handle<(usize, u64)>,
    next: Mutex<u64>,
    got: Mutex<BTreeMap<u64, Vec<u8>>>,
    received: AtomicUsize,
}

impl Conn {
    fn issue(&self, i: usize) {
        let mut next = self.next.lock().unwrap();
        self.handle.recv(vec![0u8; 1500], (i, *next)).unwrap();
        *next += 1;
    }
}

#[test]
fn threads_issuing_on_shared_streams_keep_every_byte_in_issue_order() {
    shared_streams(3);
}

/// With one receive pending, each is issued while the next chunk is on its
/// way: the attempt that finds the socket empty races the readiness report.
#[test]
fn a_receive_issued_as_data_arrives_is_not_left_waiting() {
    // The race is a matter of timing: give it many chances.
    for _ in 0..20 {
        shared_streams(1);
    }
}

fn shared_streams(pending: u64) {
    let port = CompletionPort::<(usize, u64)>::new(0).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for i in 0..CONNS {
        clients.push(TcpStream::connect(addr).unwrap());
        let (server, _) = listener.accept().unwrap();
        conns.push(Conn {
            handle: port.associate(server, i as u64).unwrap(),
            next: Mutex::new(0),
            got: Mutex::default(),
            received: AtomicUsize::new(0),
        });
    }
    let conns = Arc::new(conns);
    for (i, c) in conns.iter().enumerate() {
        for _ in 0..pending {
            c.issue(i);
        }
    }
    // Each connection ends with `pending` receives of 0 bytes (end of stream).
    let ends = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (port, conns, ends) = (port.clone(), conns.clone(), ends.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while ends.load(Ordering::SeqCst) < CONNS * pending as usize {
                    assert!(Instant::now() < deadline, "the streams did not end");
                    let mut p = match port.get(Some(Duration::from_millis(50))) {
                        Ok(p) => p,
                        Err(Error::Timeout) => continue,
                        Err(e) => panic!("get: {e}"),
                    };
                    let (i, seq) = p.token;
                    let n = p.result.as_ref().copied().expect("a receive failed");
                    let buf = p.take_buf().expect("the buffer comes back");
                    conns[i]
                        .got
                        .lock()
                        .unwrap()
                        .insert(seq, buf.as_slice()[..n].to_vec());
                    conns[i].received.fetch_add(n, Ordering::SeqCst);
                    if n == 0 {
                        ends.fetch_add(1, Ordering::SeqCst);
                    } else {
                        // Issued from whichever worker took it, while other
                        // workers harvest this very socket.
                        conns[i].issue(i);
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let conns = conns.clone();
            std::thread::spawn(move || {
                let data = bytes(i as u64, BYTES);
                // Uneven chunks, so receives see every kind of boundary.
                let mut at = 0;
                let mut step = 1;
                while at < data.len() {
                    let end = (at + step).min(data.len());
                    c.write_all(&data[at..end]).unwrap();
                    at = end;
                    // Each chunk must arrive before the next is written:
                    // one readiness report each, so a report lost to a
                    // race (a receive that found the socket empty just as
                    // data came) shows as a stall here.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while conns[i].received.load(Ordering::SeqCst) < at {
                        assert!(Instant::now() < deadline, "connection {i} stalled at {at}");
                        std::thread::yield_now();
                    }
                    step = step * 7 % 4093 + 1;
                }
                c.shutdown(Shutdown::Write).unwrap();
                c
            })
        })
        .collect();
    let _clients: Vec<TcpStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for w in workers {
        w.join().unwrap();
    }
    for (i, c) in conns.iter().enumerate() {
        let got = c.got.lock().unwrap();
        assert_eq!(
            got.len() as u64,
            *c.next.lock().unwrap(),
            "every receive completed once"
        );
        let stream: Vec<u8> = got.values().flatten().copied().collect();
        assert!(
            stream == bytes(i as u64, BYTES),
            "connection {i}: bytes lost or reordered"
        );
    }
}

#[test]
fn cancelling_and_dropping_while_threads_issue_gives_every_operation_back() {
    let port = CompletionPort::<u64>::new(0).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let handle = Arc::new(port.associate(server, 1).unwrap());
    let issued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            while !stop.load(Ordering::SeqCst) {
                let _ = s.send_to(b"datagram", addr);
                std::thread::yield_now();
            }
        })
    };
    let issuers: Vec<_> = (0..2)
        .map(|_| {
            let (handle, issued) = (handle.clone(), issued.clone());
            std::thread::spawn(move || {
                for i in 0..400 {
                    handle.recv_from(vec![0u8; 64], i).unwrap();
                    issued.fetch_add(1, Ordering::SeqCst);
                    if i % 16 == 0 {
                        handle.cancel_all().unwrap();
                    }
                }
            })
        })
        .collect();
    let mut completed = 0;
    let drain = |completed: &mut usize, until: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while *completed < until {
            assert!(
                Instant::now() < deadline,
                "{completed} of {until} came back"
            );
            match port.get(Some(Duration::from_millis(50))) {
                Ok(mut p) => {
                    assert!(p.take_buf().is_some(), "the buffer comes back");
                    *completed += 1;
                }
                Err(Error::Timeout) => {}
                Err(e) => panic!("get: {e}"),
            }
        }
    };
    for t in issuers {
        t.join().unwrap();
    }
    // Dropping the handle (the last clone) cancels what is still waiting,
    // possibly while a harvest performs one of its receives.
    drop(Arc::into_inner(handle).expect("the issuers are done"));
    let total = issued.load(Ordering::SeqCst);
    drain(&mut completed, total);
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    assert_eq!(completed, 800);
    assert!(matches!(
        port.get(Some(Duration::from_millis(100))),
        Err(Error::Timeout)
    ));
}
