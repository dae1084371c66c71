//! [`Handle`]: a file descriptor associated with a completion port.

use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, types};

use super::addr;
use super::driver::Driver;
use super::inflight::{Kind, OpId, Pending};
use crate::port::Shared;
use crate::{Buf, Error};

/// A file descriptor associated with a port (`CreateIoCompletionPort` on a
/// handle): every operation issued on it completes to that port as a
/// [`Packet`](crate::Packet) carrying the handle's key and the operation's
/// token, and gives back what it owned (its buffer, an accepted socket).
///
/// Dropping the handle cancels its operations in flight (they still complete,
/// as cancelled packets) and closes the descriptor; their buffers stay alive
/// until the kernel has let go of them.
///
/// ```
/// use ringport::{CompletionPort, Payload};
/// use std::net::UdpSocket;
/// use std::time::Duration;
///
/// let port = CompletionPort::<&str>::new(0)?;
/// let rx = UdpSocket::bind("127.0.0.1:0")?;
/// let addr = rx.local_addr()?;
/// let rx = port.associate(rx, 1)?;
/// rx.recv_from(vec![0u8; 1500], "a datagram")?;
/// UdpSocket::bind("127.0.0.1:0")?.send_to(b"hi", addr)?;
/// let mut p = port.get(Some(Duration::from_secs(5)))?;
/// assert_eq!((p.key, p.token, p.result.as_ref().ok()), (1, "a datagram", Some(&2)));
/// assert_eq!(p.take_buf().unwrap().as_slice(), b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Handle<T: Send + 'static> {
    /// The port's state, not a user handle: a handle does not keep its port
    /// open, so dropping the port's last handle still closes it.
    port: Arc<Shared<T>>,
    fd: OwnedFd,
    key: u64,
}

impl<T: Send + 'static> Handle<T> {
    pub(crate) fn new(port: Arc<Shared<T>>, fd: OwnedFd, key: u64) -> Self {
        Handle { port, fd, key }
    }

    /// The completion key its packets carry.
    pub fn key(&self) -> u64 {
        self.key
    }

    fn driver(&self) -> Result<&Driver<T>, Error> {
        self.port.driver()
    }

    fn start(
        &self,
        token: T,
        kind: Kind,
        buf: Option<Buf>,
        build: impl FnOnce(&mut super::inflight::Scratch, &mut Pending<T>) -> io_uring::squeue::Entry,
    ) -> Result<OpId, Error> {
        let pending = Pending {
            key: self.key,
            token,
            kind,
            buf,
            fd: self.fd.as_raw_fd(),
        };
        // SAFETY: every `build` in this file points its SQE only at the
        // pending buffer's heap memory (within its capacity) or at the
        // slot's scratch, which the in-flight table keeps alive until the
        // completion is reaped.
        unsafe { self.driver()?.start(pending, build) }
    }

    fn len32(n: usize) -> u32 {
        n.min(u32::MAX as usize) as u32
    }

    /// Reads into `buf` from byte `offset` of a file (`ReadFile` with an
    /// OVERLAPPED offset). The packet's result is the bytes read (0 at end of
    /// file) and its payload the buffer.
    pub fn read_at(&self, buf: impl Into<Buf>, offset: u64, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Fill, Some(buf.into()), |_, p| {
            let (ptr, cap) = p.buf.as_mut().expect("read has a buffer").write_ptr();
            opcode::Read::new(fd, ptr, Self::len32(cap))
                .offset(offset)
                .build()
        })
    }

    /// Writes `buf` at byte `offset` of a file. The result is the bytes
    /// written, which may be fewer than asked.
    pub fn write_at(&self, buf: impl Into<Buf>, offset: u64, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Drain, Some(buf.into()), |_, p| {
            let b = p.buf.as_ref().expect("write has a buffer");
            opcode::Write::new(fd, b.read_ptr(), Self::len32(b.len()))
                .offset(offset)
                .build()
        })
    }

    /// Receives into `buf` from a connected socket or pipe (0 bytes: the
    /// peer closed).
    pub fn recv(&self, buf: impl Into<Buf>, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Fill, Some(buf.into()), |_, p| {
            let (ptr, cap) = p.buf.as_mut().expect("recv has a buffer").write_ptr();
            opcode::Recv::new(fd, ptr, Self::len32(cap)).build()
        })
    }

    /// Sends `buf` on a connected socket. The result may be fewer bytes than
    /// the buffer holds (a partial send): send the rest with another call.
    pub fn send(&self, buf: impl Into<Buf>, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Drain, Some(buf.into()), |_, p| {
            let b = p.buf.as_ref().expect("send has a buffer");
            opcode::Send::new(fd, b.read_ptr(), Self::len32(b.len()))
                .flags(libc::MSG_NOSIGNAL)
                .build()
        })
    }

    /// Receives a datagram into `buf`; the packet's payload carries the
    /// sender's address ([`Packet::peer`](crate::Packet::peer)).
    pub fn recv_from(&self, buf: impl Into<Buf>, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::FillFrom, Some(buf.into()), |s, p| {
            let (ptr, cap) = p.buf.as_mut().expect("recv_from has a buffer").write_ptr();
            s.iov = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: cap,
            };
            s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
            s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            s.msg.msg_iov = &mut s.iov;
            s.msg.msg_iovlen = 1;
            s.msg.msg_control = std::ptr::null_mut();
            s.msg.msg_controllen = 0;
            s.msg.msg_flags = 0;
            opcode::RecvMsg::new(fd, &mut s.msg).build()
        })
    }

    /// Sends `buf` as one datagram to `to`.
    pub fn send_to(&self, buf: impl Into<Buf>, to: SocketAddr, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Drain, Some(buf.into()), |s, p| {
            let b = p.buf.as_ref().expect("send_to has a buffer");
            s.iov = libc::iovec {
                iov_base: b.read_ptr() as *mut _,
                iov_len: b.len(),
            };
            s.msg.msg_namelen = addr::write(&to, &mut s.addr);
            s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
            s.msg.msg_iov = &mut s.iov;
            s.msg.msg_iovlen = 1;
            s.msg.msg_control = std::ptr::null_mut();
            s.msg.msg_controllen = 0;
            s.msg.msg_flags = 0;
            opcode::SendMsg::new(fd, &s.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        })
    }

    /// Accepts a connection on a listening socket; the packet's payload
    /// carries the new socket ([`Packet::take_stream`](crate::Packet::take_stream))
    /// and the peer's address. The new socket is close-on-exec.
    pub fn accept(&self, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Accept, None, |s, _| {
            s.addrlen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            opcode::Accept::new(
                fd,
                (&mut s.addr as *mut libc::sockaddr_storage).cast(),
                &mut s.addrlen,
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
        })
    }

    /// Connects a socket to `to` (`ConnectEx`). A refused connection
    /// completes with that error.
    pub fn connect(&self, to: SocketAddr, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        self.start(token, Kind::Status, None, |s, _| {
            let len = addr::write(&to, &mut s.addr);
            opcode::Connect::new(fd, (&s.addr as *const libc::sockaddr_storage).cast(), len).build()
        })
    }

    /// Shuts down one or both directions of a connected socket.
    pub fn shutdown(&self, how: Shutdown, token: T) -> Result<OpId, Error> {
        let fd = types::Fd(self.fd.as_raw_fd());
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        self.start(token, Kind::Status, None, |_, _| {
            opcode::Shutdown::new(fd, how).build()
        })
    }

    /// Cancels one operation of this handle (`CancelIoEx` with an
    /// OVERLAPPED). It still completes, cancelled if the cancel won the race
    /// with its completion. An id that is not in flight on this handle is an
    /// [`Error::InvalidArgument`].
    pub fn cancel(&self, op: OpId) -> Result<(), Error> {
        self.driver()?.cancel(op, self.fd.as_raw_fd())
    }

    /// Cancels every operation in flight on this handle (`CancelIoEx` with
    /// no OVERLAPPED); each still completes as a cancelled packet.
    pub fn cancel_all(&self) -> Result<(), Error> {
        self.driver()?.cancel_fd(self.fd.as_raw_fd())
    }
}

impl<T: Send + 'static> AsFd for Handle<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<T: Send + 'static> Drop for Handle<T> {
    fn drop(&mut self) {
        // The kernel holds its own reference to the file for each operation,
        // so closing the descriptor alone would leave a receive pending for
        // ever; cancel them while the descriptor still names the file.
        if let Ok(d) = self.port.driver() {
            let _ = d.cancel_fd(self.fd.as_raw_fd());
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("fd", &self.fd.as_raw_fd())
            .field("key", &self.key)
            .finish()
    }
}
