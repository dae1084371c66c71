//! `epoll-raw`: the system-call floor of a TCP echo server on readiness —
//! plain level-triggered epoll on one thread, no runtime: for each
//! readable connection one `recv` and one `send` of what it got, and
//! nothing else (no `recv` until `EAGAIN` as an edge-triggered loop needs:
//! level triggering reports the connection again if bytes are left). Two
//! system calls per message, plus an `epoll_wait` shared by every
//! connection ready at once.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

use super::echo::{spawn_thread_server, Server};

/// The bytes one `recv` takes.
const BUF: usize = 16 << 10;
/// What an event is for: the listener, the stop eventfd, or a connection's
/// index.
const LISTENER: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;

/// Starts the server (one thread, whatever `threads` says).
pub(super) fn start(_threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    spawn_thread_server("epoll-raw", |listener, stop, ready| {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        serve(&listener, stop, &ready)
    })
}

/// A connection: its socket, and bytes a short send left behind.
struct Conn {
    fd: OwnedFd,
    out: Vec<u8>,
}

fn os(what: &str) -> String {
    format!("epoll-raw: {what}: {}", io::Error::last_os_error())
}

/// Adds or changes `fd`'s interest in the epoll set.
fn ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> Result<(), String> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: passes a live epoll_event; ep and fd are open descriptors.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(os("epoll_ctl"));
    }
    Ok(())
}

fn serve(
    listener: &TcpListener,
    stop: RawFd,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    // SAFETY: epoll_create1 takes no pointer; the result is checked, then owned.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let setup = if ep < 0 {
        Err(os("epoll_create1"))
    } else {
        let lfd = listener.as_raw_fd();
        ctl(ep, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32, LISTENER)
            .and_then(|()| ctl(ep, libc::EPOLL_CTL_ADD, stop, libc::EPOLLIN as u32, STOP))
    };
    // SAFETY: ep, when valid, is a fresh descriptor nothing else owns.
    let _owned = (ep >= 0).then(|| unsafe { OwnedFd::from_raw_fd(ep) });
    let _ = ready.send(setup.clone());
    setup?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: the kernel writes at most events.len() entries into it.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os("epoll_wait"));
        }
        for ev in &events[..n as usize] {
            match ev.u64 {
                STOP => return Ok(()),
                LISTENER => accept(ep, listener, &mut conns, &mut free)?,
                i => {
                    let i = i as usize;
                    let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                        continue;
                    };
                    if !echo(ep, c, i, &mut buf)? {
                        // Closing the socket takes it out of the epoll set.
                        conns[i] = None;
                        free.push(i);
                    }
                }
            }
        }
    }
}

/// Accepts every pending connection.
fn accept(
    ep: RawFd,
    listener: &TcpListener,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) -> Result<(), String> {
    loop {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: no address is asked for (null pointers are allowed).
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags,
            )
        };
        if fd < 0 {
            return Ok(()); // EAGAIN: no more; anything else: try next time
        }
        // SAFETY: a successful accept returns a new descriptor, ours alone.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: passes a live c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        let i = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        ctl(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, i as u64)?;
        conns[i] = Some(Conn {
            fd: owned,
            out: Vec::new(),
        });
    }
}

/// One step of connection `i`: finish a short send, or one recv and one
/// send; false when the connection is done.
fn echo(ep: RawFd, c: &mut Conn, i: usize, buf: &mut [u8]) -> Result<bool, String> {
    let fd = c.fd.as_raw_fd();
    if !c.out.is_empty() {
        // SAFETY: sends from a live Vec's bytes.
        let m = unsafe { libc::send(fd, c.out.as_ptr().cast(), c.out.len(), libc::MSG_NOSIGNAL) };
        if m < 0 {
            return Ok(io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock);
        }
        c.out.drain(..m as usize);
        if c.out.is_empty() {
            ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i as u64)?;
        }
        return Ok(true);
    }
    // SAFETY: receives into a live buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 0 {
        return Ok(false);
    }
    if n < 0 {
        return Ok(io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock);
    }
    let n = n as usize;
    // SAFETY: sends the n bytes just received.
    let m = unsafe { libc::send(fd, buf.as_ptr().cast(), n, libc::MSG_NOSIGNAL) };
    let m = if m < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            return Ok(false);
        }
        0
    } else {
        m as usize
    };
    if m < n {
        // Wait for room, and take nothing more in until it is out.
        c.out.extend_from_slice(&buf[m..n]);
        ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32, i as u64)?;
    }
    Ok(true)
}
