//! Groups of sockets bound to one address with `SO_REUSEPORT`: the pieces of
//! a sharded server.
//!
//! A server that outgrows one completion port splits into shards: one socket
//! per shard, all bound to the same address, each with its own
//! [`CompletionPort`](crate::CompletionPort) and workers (or its own RIO
//! request and completion queues). The kernel spreads incoming datagrams
//! and connections over the group by a hash of the 4-tuple, so one flow
//! always reaches the same shard and shards share nothing on the hot path.
//!
//! - [`udp_group`] and [`tcp_group`] open the group (a TCP group listens);
//! - [`attach_cpu_steering`] replaces the hash with a classic BPF program
//!   (`SO_ATTACH_REUSEPORT_CBPF`) that picks socket `cpu % n`, where `cpu`
//!   is the CPU the packet was received on, so a flow is handled by the
//!   shard of the core that received it (pin shard `i`'s threads to CPU `i`
//!   to keep the packet's cache lines on one core).
//!
//! ```
//! use ringport::{reuseport, CompletionPort};
//! use std::net::UdpSocket;
//! use std::time::Duration;
//!
//! // Two sockets on one address, each on a port of its own.
//! let group = reuseport::udp_group("127.0.0.1:0".parse().unwrap(), 2)?;
//! let addr = group[0].local_addr()?;
//! assert_eq!(group[1].local_addr()?, addr);
//! let mut shards = Vec::new();
//! for (i, sock) in group.into_iter().enumerate() {
//!     let port = CompletionPort::<usize>::new(1)?;
//!     let sock = port.associate(sock, i as u64)?;
//!     sock.recv_from(vec![0u8; 1500], i)?;
//!     shards.push((port, sock));
//! }
//! // The datagram reaches exactly one shard: the one its 4-tuple hashes to.
//! UdpSocket::bind("127.0.0.1:0")?.send_to(b"hi", addr)?;
//! let got: Vec<_> = shards
//!     .iter()
//!     .filter_map(|(port, _)| port.get(Some(Duration::from_millis(500))).ok())
//!     .collect();
//! assert_eq!(got.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the libc crate only
/// names it for Android).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// The backlog of each listener of a TCP group.
const BACKLOG: libc::c_int = 1024;
/// Tries at finding a free port for a group bound to port 0.
const PORT_TRIES: usize = 16;

/// Opens `n` UDP sockets bound to `addr` with `SO_REUSEPORT`, in the order
/// they join the group (the order [`attach_cpu_steering`] numbers them).
///
/// With port 0 the group gets one free port, the same for all (read it
/// from any socket's `local_addr`). Fails with `InvalidInput` when `n` is 0,
/// and with the bind's error (`EADDRINUSE`) when `addr` is taken by a socket
/// that is not of a reuseport group of this user.
///
/// Registered I/O shards: a request queue and a completion queue per
/// socket, each CQ read by its own thread only.
///
/// ```
/// use ringport::reuseport;
/// use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};
/// use std::net::UdpSocket;
/// use std::time::{Duration, Instant};
///
/// let group = reuseport::udp_group("127.0.0.1:0".parse().unwrap(), 2)?;
/// let addr = group[0].local_addr()?;
/// let mut shards = Vec::new();
/// for (i, sock) in group.into_iter().enumerate() {
///     // Room for every datagram of the example, however the hash splits them.
///     let cq = CompletionQueue::new(16, Notify::Polled)?;
///     let rq = RequestQueue::new(sock, 16, 0, &cq, &cq, i as u64)?;
///     let memory = rio::register_buffer(16 * 2048)?;
///     for k in 0..16 {
///         rq.receive(RioBuf::new(memory, k * 2048, 2048), RioFlags::NONE, k as u64)?;
///     }
///     shards.push((cq, rq));
/// }
/// // 16 flows: each datagram completes on the CQ of the shard its flow hashes to.
/// for _ in 0..16 {
///     UdpSocket::bind("127.0.0.1:0")?.send_to(b"ping", addr)?;
/// }
/// let (mut got, mut results) = (0, [RioResult::default(); 16]);
/// let deadline = Instant::now() + Duration::from_secs(5);
/// while got < 16 && Instant::now() < deadline {
///     for (cq, _) in &shards {
///         got += cq.dequeue(&mut results)?;
///     }
/// }
/// assert_eq!(got, 16);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn udp_group(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let fds = group(addr, n, libc::SOCK_DGRAM)?;
    // SAFETY: each fd is a fresh UDP socket that we own and hand over.
    Ok(fds
        .into_iter()
        .map(|fd| unsafe { UdpSocket::from_raw_fd(into_raw(fd)) })
        .collect())
}

/// Opens `n` TCP listeners on `addr` with `SO_REUSEPORT`, each listening
/// (backlog 1024), in the order they joined the group. As [`udp_group`].
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
///
/// let group = ringport::reuseport::tcp_group("127.0.0.1:0".parse().unwrap(), 2)?;
/// let addr = group[0].local_addr()?;
/// let mut client = TcpStream::connect(addr)?;
/// client.write_all(b"x")?;
/// // The connection waits on exactly one of the listeners.
/// for l in &group {
///     l.set_nonblocking(true)?;
/// }
/// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
/// let (mut conn, _) = loop {
///     if let Some(c) = group.iter().find_map(|l| l.accept().ok()) {
///         break c;
///     }
///     assert!(std::time::Instant::now() < deadline);
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// };
/// conn.set_nonblocking(false)?;
/// let mut b = [0u8; 1];
/// conn.read_exact(&mut b)?;
/// assert_eq!(&b, b"x");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tcp_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let fds = group(addr, n, libc::SOCK_STREAM)?;
    // SAFETY: each fd is a fresh listening TCP socket that we own.
    Ok(fds
        .into_iter()
        .map(|fd| unsafe { TcpListener::from_raw_fd(into_raw(fd)) })
        .collect())
}

/// Steers each packet (datagram, or connection request) of the group that
/// `socket` belongs to to the socket numbered `cpu % n`, `cpu` being the
/// CPU that received it and `n` the size of the group, instead of the
/// 4-tuple hash: a classic BPF program attached with
/// `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.6). Sockets are numbered in the order
/// they joined the group (the order of [`udp_group`] and [`tcp_group`]);
/// the program applies to the whole group, so attach it once.
///
/// On loopback the receiving CPU is the sender's, so flows from a client
/// pinned to CPU `c` land on shard `c % n`.
pub fn attach_cpu_steering(socket: &impl AsRawFd, n: usize) -> io::Result<()> {
    let n = u32::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a group of 0 sockets"))?;
    let mut code = [
        // A = the CPU that received the packet.
        bpf(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        ),
        // A %= n.
        bpf(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n),
        // The index of the socket in the group.
        bpf(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: the kernel copies the program during the call; `prog` and
    // `code` live until it returns.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(r)
}

fn bpf(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn group(addr: SocketAddr, n: usize, ty: libc::c_int) -> io::Result<Vec<OwnedFd>> {
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a reuseport group of 0 sockets",
        ));
    }
    if addr.port() != 0 {
        return bind_all(addr, n, ty);
    }
    // Port 0: a socket with SO_REUSEPORT may be given a port that another
    // reuseport group of this user already holds (the kernel finds no
    // conflict), and the two groups would then share datagrams. So a probe
    // without SO_REUSEPORT finds a port nobody holds, and the group binds
    // it once the probe lets go; if someone took it in between, try again.
    let mut last = None;
    for _ in 0..PORT_TRIES {
        let probe = socket(addr, ty)?;
        bind(&probe, addr)?;
        let port = local_addr(&probe)?.port();
        drop(probe);
        let mut at = addr;
        at.set_port(port);
        match bind_all(at, n, ty) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EADDRINUSE)))
}

fn bind_all(addr: SocketAddr, n: usize, ty: libc::c_int) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(n);
    for _ in 0..n {
        let fd = socket(addr, ty)?;
        set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        if ty == libc::SOCK_STREAM {
            set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        bind(&fd, addr)?;
        if ty == libc::SOCK_STREAM {
            // SAFETY: listen on a socket we own.
            check(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
        }
        fds.push(fd);
    }
    Ok(fds)
}

fn into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn socket(addr: SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: as above: fd is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one int from a live local.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `ss` holds a valid address of `len` bytes for the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    })
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // A borrowed view through std, which parses the address for us.
    // SAFETY: the UdpSocket is forgotten before `fd` is dropped, so the
    // descriptor is closed once, by its owner.
    let view = mem::ManuallyDrop::new(unsafe { UdpSocket::from_raw_fd(fd.as_raw_fd()) });
    view.local_addr()
}
