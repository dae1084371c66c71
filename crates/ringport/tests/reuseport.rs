//! `ringport::reuseport`: groups of real sockets on 127.0.0.1, the spread of
//! flows over them, CPU steering, and shards that each own a completion
//! port (the backend RINGPORT_BACKEND says). Every wait is bounded.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringport::{reuseport, CompletionPort, Error};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Reads every datagram waiting on each socket of `group` within `wait`:
/// how many each got, and their contents.
fn drain(group: &[UdpSocket], wait: Duration) -> Vec<Vec<Vec<u8>>> {
    let deadline = Instant::now() + wait;
    let mut got = vec![Vec::new(); group.len()];
    for s in group {
        s.set_nonblocking(true).unwrap();
    }
    while Instant::now() < deadline {
        let mut any = false;
        for (i, s) in group.iter().enumerate() {
            let mut b = [0u8; 64];
            while let Ok(n) = s.recv(&mut b) {
                got[i].push(b[..n].to_vec());
                any = true;
            }
        }
        if !any {
            thread::sleep(Duration::from_millis(5));
        }
    }
    got
}

#[test]
fn a_udp_group_shares_one_address_and_spreads_flows() {
    let group = reuseport::udp_group(any(), 3).unwrap();
    let addr = group[0].local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    for s in &group {
        assert_eq!(s.local_addr().unwrap(), addr);
    }
    // 48 flows (client sockets), one datagram each: every datagram reaches
    // exactly one socket, and (by the 4-tuple hash) every socket gets some.
    let clients: Vec<_> = (0..48)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(&(i as u32).to_le_bytes(), addr).unwrap();
    }
    let got = drain(&group, Duration::from_millis(300));
    let all: HashSet<Vec<u8>> = got.iter().flatten().cloned().collect();
    assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 48, "{got:?}");
    assert_eq!(all.len(), 48);
    assert!(got.iter().all(|g| !g.is_empty()), "a socket got no flow");
}

#[test]
fn groups_on_port_0_get_ports_of_their_own() {
    let a = reuseport::udp_group(any(), 2).unwrap();
    let b = reuseport::udp_group(any(), 2).unwrap();
    assert_ne!(a[0].local_addr().unwrap(), b[0].local_addr().unwrap());
    let t = reuseport::tcp_group(any(), 2).unwrap();
    let u = reuseport::tcp_group(any(), 2).unwrap();
    assert_ne!(t[0].local_addr().unwrap(), u[0].local_addr().unwrap());
}

#[test]
fn a_group_of_none_or_on_a_taken_address_is_refused() {
    let e = reuseport::udp_group(any(), 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(reuseport::tcp_group(any(), 0).is_err());
    let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = reuseport::udp_group(plain.local_addr().unwrap(), 2).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
    assert!(reuseport::attach_cpu_steering(&plain, 0).is_err());
}

#[test]
fn a_tcp_group_accepts_each_connection_once() {
    let group = reuseport::tcp_group(any(), 2).unwrap();
    let addr = group[0].local_addr().unwrap();
    let clients: Vec<_> = (0..32u8)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&[i]).unwrap();
            c
        })
        .collect();
    for l in &group {
        l.set_nonblocking(true).unwrap();
    }
    let mut per = [0usize; 2];
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < clients.len() && Instant::now() < deadline {
        for (i, l) in group.iter().enumerate() {
            while let Ok((mut s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                assert!(seen.insert(b[0]), "connection {} accepted twice", b[0]);
                per[i] += 1;
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen.len(), 32);
    assert!(per.iter().all(|&n| n > 0), "{per:?}");
}

fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it (cpu is
    // below CPU_SETSIZE, checked); sched_setaffinity reads it.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[test]
fn cpu_steering_sends_a_flow_to_the_socket_of_the_cpu_that_received_it() {
    let n = 2;
    let group = reuseport::udp_group(any(), n).unwrap();
    let addr = group[0].local_addr().unwrap();
    reuseport::attach_cpu_steering(&group[1], n).unwrap();
    let cpus = ringport::cpu_count();
    for cpu in 0..cpus.min(4) {
        // On loopback the packet is received on the sender's CPU.
        let ok = thread::spawn(move || {
            if !pin(cpu) {
                return false;
            }
            for _ in 0..16 {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.send_to(&[cpu as u8], addr).unwrap();
            }
            true
        })
        .join()
        .unwrap();
        if !ok {
            continue;
        }
        let got = drain(&group, Duration::from_millis(150));
        for (i, g) in got.iter().enumerate() {
            let want = if i == cpu % n { 16 } else { 0 };
            assert_eq!(g.len(), want, "cpu {cpu}, socket {i}: {got:?}");
        }
    }
}

#[test]
fn shards_with_a_port_each_echo_every_flow_and_their_counts_add_up() {
    let group = reuseport::udp_group(any(), 2).unwrap();
    let addr = group[0].local_addr().unwrap();
    let mut shards = Vec::new();
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    for (i, sock) in group.into_iter().enumerate() {
        let port = CompletionPort::<()>::new(1).unwrap();
        let sock = Arc::new(port.associate(sock, i as u64).unwrap());
        for _ in 0..4 {
            sock.recv_from(vec![0u8; 256], ()).unwrap();
        }
        let (wport, counts) = (port.clone(), counts.clone());
        let worker = thread::spawn(move || loop {
            let mut p = match wport.get(Some(Duration::from_secs(10))) {
                Ok(p) => p,
                Err(Error::Closed) => return,
                Err(e) => panic!("shard {i}: {e}"),
            };
            let (peer, n) = (p.peer(), p.result.as_ref().ok().copied());
            let Some(mut buf) = p.take_buf().map(|b| b.into_vec()) else {
                continue;
            };
            if let (Some(to), Some(n)) = (peer, n) {
                counts[i].fetch_add(1, Ordering::Relaxed);
                buf.truncate(n);
                let _ = sock.send_to_now(buf, to, ());
                let _ = sock.recv_from(vec![0u8; 256], ());
            }
        });
        shards.push((port, worker));
    }
    let clients: Vec<_> = (0..8u8)
        .map(|c| {
            thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for i in 0..50u8 {
                    s.send_to(&[c, i, 7], addr).unwrap();
                    let mut b = [0u8; 16];
                    let n = s.recv(&mut b).expect("an echo within 5 s");
                    assert_eq!(&b[..n], &[c, i, 7]);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    for (port, worker) in shards {
        port.close();
        worker.join().unwrap();
    }
    let per: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(per.iter().sum::<u64>(), 400, "{per:?}");
}
