//! Helpers shared by the conformance tests.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ringport::{CompletionPort, Error, Packet};

/// How long a test waits for a packet it expects.
pub const WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// How long a test waits to be sure no further packet comes.
pub const QUIET: Option<Duration> = Some(Duration::from_millis(150));

/// A port on the backend `RINGPORT_BACKEND` asks for (the default otherwise).
pub fn port() -> CompletionPort<u64> {
    CompletionPort::new(0).expect("a completion port")
}

/// The next packet, within [`WAIT`].
pub fn get(port: &CompletionPort<u64>) -> Packet<u64> {
    match port.get(WAIT) {
        Ok(p) => p,
        Err(e) => panic!("expected a packet within {WAIT:?}: {e}"),
    }
}

/// `n` packets, sorted by token.
pub fn get_n(port: &CompletionPort<u64>, n: usize) -> Vec<Packet<u64>> {
    let mut v: Vec<_> = (0..n).map(|_| get(port)).collect();
    v.sort_by_key(|p| p.token);
    v
}

/// Asserts that nothing is queued now and nothing arrives for a while.
pub fn assert_quiet(port: &CompletionPort<u64>, why: &str) {
    for timeout in [Some(Duration::ZERO), QUIET] {
        match port.get(timeout) {
            Err(Error::Timeout) => {}
            Ok(p) => panic!(
                "{why}: unexpected packet key {} token {} result {:?}",
                p.key, p.token, p.result
            ),
            Err(e) => panic!("{why}: get failed: {e}"),
        }
    }
}

/// The raw OS error of a packet's result, or a panic saying what it was.
pub fn errno(p: &Packet<u64>) -> i32 {
    match &p.result {
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("error without an errno: {e}")),
        Ok(n) => panic!("token {}: expected an error, got Ok({n})", p.token),
    }
}

/// The bytes of a packet's buffer, checked against its result.
pub fn data(p: &mut Packet<u64>) -> Vec<u8> {
    let n = *p
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("token {}: {e}", p.token));
    let mut v = p.take_buf().expect("a buffer in the payload").into_vec();
    assert!(v.len() >= n, "buffer shorter than the result");
    v.truncate(n);
    v
}

/// Deterministic pseudo-random bytes.
pub use crate::common::pattern as bytes;

/// A connected pair of TCP sockets on loopback: (ours, the peer's).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

/// A fresh, unbound, unconnected TCP socket.
pub fn tcp_socket() -> OwnedFd {
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A loopback address nothing listens on (bound once, then released).
pub fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A UDP socket on 127.0.0.1, port 0.
pub fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Sets an integer socket option.
pub fn set_int_opt(fd: impl AsFd, level: i32, name: i32, value: i32) {
    // SAFETY: a valid descriptor, an int option and its length.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Makes close() of `s` reset the connection (SO_LINGER with a zero timeout).
pub fn set_linger_zero(s: impl AsFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor, the option and its length.
    let r = unsafe {
        libc::setsockopt(
            s.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Waits until `fd` is readable (bounded), so that a receive would not block.
pub fn wait_readable(fd: impl AsFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(r, 1, "not readable within 5 s");
}

/// A pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}
