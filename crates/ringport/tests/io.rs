//! Real I/O through the port: sockets on 127.0.0.1 (port 0), files in a temp
//! dir, real threads. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

mod common;
use common::pattern as bytes;

use ringport::{CompletionPort, Error, Packet, Payload};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Op {
    Accept,
    Recv,
    Send,
    Connect,
    Other(u32),
}

fn port() -> CompletionPort<Op> {
    CompletionPort::new(0).expect("port")
}

fn get(port: &CompletionPort<Op>) -> Packet<Op> {
    port.get(WAIT).expect("a packet within 10 s")
}

fn tcp_socket() -> OwnedFd {
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn tcp_echo_of_random_sizes_keeps_every_byte() {
    let port = port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.associate(listener, 1).unwrap();
    listener.accept(Op::Accept).unwrap();

    let sizes = [1usize, 7, 100, 1500, 4096, 65_536, 300_000];
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for (i, n) in sizes.iter().enumerate() {
            let data = bytes(i as u64, *n);
            s.write_all(&data).unwrap();
            let mut back = vec![0; *n];
            s.read_exact(&mut back).unwrap();
            assert!(back == data, "echo of {n} bytes differs");
        }
        s.shutdown(Shutdown::Write).unwrap();
    });

    let mut p = get(&port);
    assert_eq!((p.key, p.token), (1, Op::Accept));
    assert!(p.peer().unwrap().ip().is_loopback());
    let conn = port.associate(p.take_stream().unwrap(), 2).unwrap();
    conn.recv(Vec::with_capacity(8192), Op::Recv).unwrap();
    let mut echoed = 0usize;
    loop {
        let mut p = get(&port);
        assert_eq!(p.key, 2);
        let n = p.result.as_ref().copied().expect("no error");
        let buf = p.take_buf().unwrap().into_vec();
        match p.token {
            Op::Recv if n == 0 => break,
            Op::Recv => {
                assert_eq!(buf.len(), n);
                echoed += n;
                conn.send(buf, Op::Send).unwrap();
            }
            Op::Send => {
                // A partial send leaves the rest to send again, in order.
                if n < buf.len() {
                    conn.send(buf[n..].to_vec(), Op::Send).unwrap();
                } else {
                    let mut next = buf;
                    next.clear();
                    conn.recv(next, Op::Recv).unwrap();
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    client.join().unwrap();
    assert_eq!(echoed, sizes.iter().sum::<usize>());
}

#[test]
fn a_large_send_completes_partially_or_whole_and_nothing_is_lost() {
    let port = port();
    let (a, b) = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    };
    let data = bytes(9, 8 << 20);
    let expect = data.clone();
    let reader = std::thread::spawn(move || {
        let mut b = b;
        b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let mut chunk = vec![0; 65_536];
        while got.len() < expect.len() {
            let n = b.read(&mut chunk).unwrap();
            assert!(n > 0, "early EOF");
            got.extend_from_slice(&chunk[..n]);
            // A slow reader makes the kernel take the send in pieces.
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(got == expect);
    });
    let a = port.associate(a, 3).unwrap();
    let mut sent = 0;
    let mut rest = data;
    while !rest.is_empty() {
        a.send(rest, Op::Send).unwrap();
        let mut p = get(&port);
        let n = p.result.as_ref().copied().unwrap();
        assert!(n > 0);
        sent += n;
        rest = p.take_buf().unwrap().into_vec().split_off(n);
    }
    assert_eq!(sent, 8 << 20);
    reader.join().unwrap();
}

#[test]
fn many_accepts_pending_all_complete() {
    let port = port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.associate(listener, 1).unwrap();
    for _ in 0..32 {
        listener.accept(Op::Accept).unwrap();
    }
    let clients: Vec<_> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut peers = Vec::new();
    for _ in 0..32 {
        let mut p = get(&port);
        assert_eq!(p.token, Op::Accept);
        let s = p.take_stream().expect("accepted stream");
        peers.push(s.peer_addr().unwrap());
    }
    let mut locals: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    locals.sort();
    peers.sort();
    assert_eq!(locals, peers);
}

#[test]
fn connect_refused_arrives_as_a_packet_error() {
    let port = port();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = port.associate(tcp_socket(), 4).unwrap();
    s.connect(closed, Op::Connect).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token), (4, Op::Connect));
    let e = p.result.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn connect_then_send_reaches_the_listener() {
    let port = port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = port.associate(tcp_socket(), 4).unwrap();
    s.connect(l.local_addr().unwrap(), Op::Connect).unwrap();
    let p = get(&port);
    assert_eq!(p.result.unwrap(), 0);
    s.send(b"ping".to_vec(), Op::Send).unwrap();
    assert_eq!(get(&port).result.unwrap(), 4);
    let (mut peer, _) = l.accept().unwrap();
    let mut buf = [0; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.shutdown(Shutdown::Write, Op::Other(0)).unwrap();
    assert_eq!(get(&port).result.unwrap(), 0);
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "shutdown reached the peer");
}

#[test]
fn a_reset_connection_fails_the_pending_receive() {
    let port = port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let server = port.associate(server, 5).unwrap();
    server.recv(Vec::with_capacity(64), Op::Recv).unwrap();
    // SO_LINGER with a zero timeout makes close() send a RST.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket, option and option length.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(client);
    let p = get(&port);
    let e = p.result.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
}

#[test]
fn udp_recv_from_and_send_to_carry_the_right_addresses() {
    let port = port();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a_addr = a.local_addr().unwrap();
    let a = port.associate(a, 6).unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let b_addr = b.local_addr().unwrap();

    for _ in 0..4 {
        a.recv_from(vec![0u8; 2048], Op::Recv).unwrap();
    }
    for i in 0..4u8 {
        b.send_to(&[i; 100], a_addr).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut p = get(&port);
        assert_eq!(p.result.as_ref().copied().unwrap(), 100);
        assert_eq!(p.peer(), Some(b_addr));
        let buf = p.take_buf().unwrap();
        assert_eq!(buf.len(), 100, "a Vec's length becomes the bytes received");
        seen.push(buf.as_slice()[0]);
        assert!(buf.as_slice()[..100]
            .iter()
            .all(|x| *x == seen[seen.len() - 1]));
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3]);

    a.send_to(b"back".to_vec(), b_addr, Op::Send).unwrap();
    assert_eq!(get(&port).result.unwrap(), 4);
    let mut buf = [0; 16];
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"back"[..], a_addr));
}

#[test]
fn files_write_at_and_read_at_offsets() {
    let dir = std::env::temp_dir().join(format!("ringport-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let port = port();
    let f = port.associate(file, 7).unwrap();
    let data = bytes(3, 64 << 10);
    f.write_at(data.clone(), 4096, Op::Other(1)).unwrap();
    assert_eq!(get(&port).result.unwrap(), 64 << 10);
    f.read_at(Vec::with_capacity(1000), 4096 + 500, Op::Other(2))
        .unwrap();
    let mut p = get(&port);
    assert_eq!(p.result.as_ref().copied().unwrap(), 1000);
    assert_eq!(p.take_buf().unwrap().as_slice(), &data[500..1500]);
    // The hole before the write reads as zeros; past the end reads 0 bytes.
    f.read_at(vec![1u8; 16].into_boxed_slice(), 0, Op::Other(3))
        .unwrap();
    let mut p = get(&port);
    assert_eq!(p.result.as_ref().copied().unwrap(), 16);
    assert_eq!(p.take_buf().unwrap().as_slice(), &[0u8; 16]);
    f.read_at(Vec::with_capacity(10), 1 << 30, Op::Other(4))
        .unwrap();
    assert_eq!(get(&port).result.unwrap(), 0);
    // Skip-on-success: the page cache holds what was just written, so the
    // read comes back at once and queues nothing.
    match f
        .read_at_now(Vec::with_capacity(100), 4096 + 7, Op::Other(5))
        .unwrap()
    {
        ringport::Started::Done(mut p) => {
            assert_eq!((p.key, p.result.as_ref().copied().unwrap()), (7, 100));
            assert_eq!(p.take_buf().unwrap().as_slice(), &data[7..107]);
        }
        ringport::Started::Pending(_) => panic!("a cached read pends"),
    }
    assert!(matches!(
        port.get(Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    drop(f);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cancel_one_and_cancel_all_deliver_cancelled_packets() {
    let port = port();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = port.associate(s, 8).unwrap();
    let one = s.recv(Vec::with_capacity(64), Op::Other(1)).unwrap();
    s.cancel(one).unwrap();
    let mut p = get(&port);
    assert_eq!(p.token, Op::Other(1));
    assert!(p.is_cancelled(), "{:?}", p.result);
    assert!(p.take_buf().is_some(), "the buffer comes back");

    for i in 0..3 {
        s.recv(Vec::with_capacity(64), Op::Other(10 + i)).unwrap();
    }
    s.cancel_all().unwrap();
    let mut tokens: Vec<Op> = (0..3)
        .map(|_| {
            let p = get(&port);
            assert!(p.is_cancelled());
            p.token
        })
        .collect();
    tokens.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(tokens, vec![Op::Other(10), Op::Other(11), Op::Other(12)]);
    // A finished operation's id is not in flight any more.
    assert!(matches!(s.cancel(one), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        port.get(Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
}

#[test]
fn timers_fire_in_order_of_their_deadlines() {
    let port = port();
    let start = Instant::now();
    for ms in [60u32, 20, 40] {
        port.timer(Duration::from_millis(ms as u64), 9, Op::Other(ms))
            .unwrap();
    }
    let order: Vec<Op> = (0..3)
        .map(|_| {
            let p = get(&port);
            assert_eq!(p.result.unwrap(), 0);
            p.token
        })
        .collect();
    assert_eq!(order, vec![Op::Other(20), Op::Other(40), Op::Other(60)]);
    assert!(start.elapsed() >= Duration::from_millis(60));
}

#[test]
fn dropping_a_handle_cancels_its_operations_and_returns_their_buffers() {
    let port = port();
    let s = port
        .associate(UdpSocket::bind("127.0.0.1:0").unwrap(), 10)
        .unwrap();
    for i in 0..4 {
        s.recv_from(vec![0u8; 512], Op::Other(i)).unwrap();
    }
    drop(s);
    for _ in 0..4 {
        let mut p = get(&port);
        assert!(p.is_cancelled());
        assert!(matches!(p.payload, Payload::BufFrom(..)));
        assert_eq!(p.take_buf().unwrap().capacity(), 512);
    }
}

#[test]
fn closing_or_dropping_a_port_with_operations_in_flight_is_safe() {
    for close_first in [true, false] {
        let port = port();
        let listener = port
            .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 1)
            .unwrap();
        let udp = port
            .associate(UdpSocket::bind("127.0.0.1:0").unwrap(), 2)
            .unwrap();
        for _ in 0..8 {
            listener.accept(Op::Accept).unwrap();
            udp.recv(vec![0u8; 4096], Op::Recv).unwrap();
        }
        port.timer(Duration::from_secs(3600), 3, Op::Other(0))
            .unwrap();
        if close_first {
            port.close();
            assert!(matches!(port.get(WAIT), Err(Error::Closed)));
            assert!(matches!(
                udp.recv(vec![0u8; 1], Op::Recv),
                Err(Error::Closed)
            ));
        }
        // The handles outlive the port's last user handle: no use-after-free,
        // and the port's ring waits for the kernel before freeing buffers.
        drop(port);
        drop(udp);
        drop(listener);
    }
}

#[test]
fn operations_complete_to_worker_threads_under_the_limit() {
    let port: CompletionPort<u64> = CompletionPort::new(2).unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = a.local_addr().unwrap();
    let a = port.associate(a, 11).unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let port = port.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while let Ok(p) = port.get(Some(Duration::from_secs(2))) {
                    assert_eq!(p.result.unwrap(), 8);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..200 {
        a.recv(vec![0u8; 64], i).unwrap();
    }
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u64 {
        b.send_to(&i.to_le_bytes(), addr).unwrap();
    }
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, 200);
    let stats = port.stats();
    assert_eq!(stats.completed, 200);
    assert!(stats.max_active <= 2, "limit held: {}", stats.max_active);
}

#[test]
fn a_post_wakes_a_thread_sleeping_in_the_kernel() {
    // With an operation in flight the first waiter sleeps on the ring (or
    // in epoll_wait); a post must reach it there.
    let port = port();
    let idle = port
        .associate(UdpSocket::bind("127.0.0.1:0").unwrap(), 2)
        .unwrap();
    idle.recv(vec![0u8; 8], Op::Recv).unwrap();
    let p2 = port.clone();
    let t = std::thread::spawn(move || p2.get(WAIT).map(|p| p.token));
    std::thread::sleep(Duration::from_millis(50));
    port.post(1, Op::Other(5), Ok(0)).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), Op::Other(5));
}

#[test]
fn a_thread_parked_before_any_io_is_sent_to_watch_the_first_operation() {
    // With nothing in flight, waiters park in user space; starting an
    // operation must send one of them to sleep in the kernel, or its
    // completion would wait for the next get.
    let port = port();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let p = port.clone();
            std::thread::spawn(move || p.get(WAIT).map(|p| p.token))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while port.stats().waiting < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let s = port.associate(s, 3).unwrap();
    s.recv(vec![0u8; 8], Op::Recv).unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"x", addr)
        .unwrap();
    // One worker gets the datagram; a post releases the other.
    port.post(0, Op::Other(9), Ok(0)).unwrap();
    let mut got: Vec<Op> = workers
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .collect();
    got.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(got, vec![Op::Other(9), Op::Recv]);
}

#[test]
fn a_dropped_port_cancels_its_receives_before_freeing_their_buffers() {
    // Keep the socket open through a duplicate so that data sent after the
    // port is gone shows whether a receive was still armed in the kernel.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let dup = sock.try_clone().unwrap();
    dup.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = port();
    let h = port.associate(sock, 1).unwrap();
    for _ in 0..4 {
        h.recv(vec![0u8; 256], Op::Recv).unwrap();
    }
    drop(h);
    drop(port);
    // Had a receive survived the port (with its buffer freed), it would take
    // this datagram and write it into freed memory.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"after", addr)
        .unwrap();
    let mut buf = [0; 16];
    let n = dup.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after");
}

#[test]
fn the_port_runs_on_the_backend_the_environment_asks_for() {
    let port = port();
    match std::env::var("RINGPORT_BACKEND").as_deref() {
        Ok("epoll") => assert_eq!(port.backend(), ringport::Backend::Epoll),
        Ok("io_uring") => assert_eq!(port.backend(), ringport::Backend::IoUring),
        _ => assert_ne!(port.backend(), ringport::Backend::Auto),
    }
}

#[test]
fn pipes_work_through_read_and_write() {
    let port = port();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let r = port.associate(r, 1).unwrap();
    let w = port.associate(w, 2).unwrap();
    r.read_at(Vec::with_capacity(64), 0, Op::Recv).unwrap();
    w.write_at(b"through the pipe".to_vec(), 0, Op::Send)
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut p = get(&port);
        if p.token == Op::Recv {
            got = p.take_buf().unwrap().into_vec();
        }
    }
    assert_eq!(got, b"through the pipe");
}

#[test]
fn skip_on_success_returns_an_immediate_result_and_queues_nothing() {
    let port = port();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = a.local_addr().unwrap();
    let a = port.associate(a, 12).unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.send_to(b"early", addr).unwrap();
    // The datagram is there already: the result comes back at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut p = loop {
        match a.recv_from_now(vec![0u8; 64], Op::Recv).unwrap() {
            ringport::Started::Done(p) => break p,
            ringport::Started::Pending(id) => {
                // Loopback delivery raced us: take the packet back and retry.
                a.cancel(id).ok();
                let _ = get(&port);
                assert!(Instant::now() < deadline);
            }
        }
    };
    assert_eq!(p.result.as_ref().copied().unwrap(), 5);
    assert_eq!(p.take_buf().unwrap().as_slice(), b"early");
    assert!(matches!(
        port.get(Some(Duration::ZERO)),
        Err(Error::Timeout)
    ));
    // Nothing there: the receive is pending and completes to the port.
    let pending = a.recv_from_now(vec![0u8; 64], Op::Recv).unwrap();
    assert!(matches!(pending, ringport::Started::Pending(_)));
    b.send_to(b"late", addr).unwrap();
    let mut p = get(&port);
    assert_eq!(p.take_buf().unwrap().as_slice(), b"late");
    assert_eq!(p.key, 12);
    assert!(matches!(
        a.send_to_now(b"x".to_vec(), b.local_addr().unwrap(), Op::Send)
            .unwrap(),
        ringport::Started::Done(_)
    ));
}

#[test]
fn closing_a_port_frees_tokens_that_own_its_handles() {
    use std::sync::{Arc, Weak};
    // A token that owns a handle of its own port: a reference cycle through
    // the port's in-flight table, which close() must break.
    // Held only for its drop.
    struct Tok(#[allow(dead_code)] Arc<ringport::Handle<Tok>>);
    let port: CompletionPort<Tok> = CompletionPort::new(0).unwrap();
    let h = Arc::new(
        port.associate(UdpSocket::bind("127.0.0.1:0").unwrap(), 1)
            .unwrap(),
    );
    let weak: Weak<ringport::Handle<Tok>> = Arc::downgrade(&h);
    for _ in 0..3 {
        h.recv(vec![0u8; 16], Tok(h.clone())).unwrap();
    }
    drop(h);
    assert!(weak.upgrade().is_some(), "the tokens keep the handle alive");
    port.close();
    assert!(
        weak.upgrade().is_none(),
        "close dropped the cancelled operations' tokens"
    );
}

/// More workers than the limit, all in `get(None)`, with datagrams echoed
/// through the port so that the kernel sleeper's role keeps changing hands:
/// a `get` without a deadline must return only a packet or `Closed`, never
/// come back empty (a sleeper once took a promotion meant for another
/// waiter while it slept, and its `get(None)` returned `Timeout`).
#[test]
fn get_without_a_deadline_never_returns_empty_while_the_sleeper_role_moves() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const WORKERS: usize = 4;
    let port = CompletionPort::<Op>::new(2).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let server = Arc::new(port.associate(server, 1).unwrap());
    for _ in 0..8 {
        server.recv_from(vec![0u8; 64], Op::Recv).unwrap();
    }
    let echoed = Arc::new(AtomicU64::new(0));
    let empty = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (port, server, echoed, empty) =
                (port.clone(), server.clone(), echoed.clone(), empty.clone());
            std::thread::spawn(move || loop {
                match port.get(None) {
                    Ok(mut p) => {
                        let from = p.peer();
                        if let (Some(buf), Some(from)) = (p.take_buf(), from) {
                            let _ = server.send_to_now(buf.into_vec(), from, Op::Send);
                            echoed.fetch_add(1, Ordering::Relaxed);
                        }
                        if p.token == Op::Recv {
                            let _ = server.recv_from(vec![0u8; 64], Op::Recv);
                        }
                    }
                    Err(Error::Closed) => return,
                    Err(_) => {
                        empty.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut back = [0u8; 64];
                let end = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < end {
                    c.send_to(b"ping", addr).unwrap();
                    let _ = c.recv_from(&mut back);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        !empty.load(Ordering::SeqCst),
        "a get(None) returned without a packet"
    );
    port.close();
    for w in workers {
        w.join().unwrap();
    }
    assert!(echoed.load(Ordering::Relaxed) > 0);
}
