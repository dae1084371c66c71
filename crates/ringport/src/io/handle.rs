//! [`Handle`]: a file descriptor associated with a completion port.

use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::port::Shared;
use crate::sys::driver::Started;
use crate::sys::fd::FdKind;
use crate::sys::inflight::{OpId, Operation};
use crate::sys::op::Op;
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
/// An operation belongs to its handle, never to the thread that issued it:
/// that thread may exit, and the operation still completes with its real
/// result.
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
    kind: FdKind,
    /// Its operations go by a registered (direct) descriptor.
    fixed: bool,
}

impl<T: Send + 'static> Handle<T> {
    pub(crate) fn new(
        port: Arc<Shared<T>>,
        fd: OwnedFd,
        key: u64,
        kind: FdKind,
        fixed: bool,
    ) -> Self {
        Handle {
            port,
            fd,
            key,
            kind,
            fixed,
        }
    }

    /// The completion key its packets carry.
    pub fn key(&self) -> u64 {
        self.key
    }

    fn start_with(
        &self,
        op: Op,
        buf: Option<Buf>,
        to: Option<SocketAddr>,
        token: T,
        immediate: bool,
    ) -> Result<Started<T>, Error> {
        let mut pending = Operation::new(self.key, token, op, buf, self.fd.as_raw_fd(), self.kind);
        pending.fixed = self.fixed;
        self.port
            .driver()?
            .start(&self.port.core, pending, to, immediate)
    }

    fn start(
        &self,
        op: Op,
        buf: Option<Buf>,
        to: Option<SocketAddr>,
        token: T,
    ) -> Result<OpId, Error> {
        match self.start_with(op, buf, to, token, false)? {
            Started::Pending(id) => Ok(id),
            Started::Done(_) => unreachable!("not started with skip-on-success"),
        }
    }

    /// [`recv`](Self::recv) with skip-on-success: if data is there already
    /// the packet comes back at once and none is queued
    /// (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`); otherwise the receive is
    /// pending and completes to the port. Behind a receive already pending
    /// on the handle it is not tried at once: it waits its turn, as any
    /// receive does.
    pub fn recv_now(&self, buf: impl Into<Buf>, token: T) -> Result<Started<T>, Error> {
        self.start_with(Op::Recv, Some(buf.into()), None, token, true)
    }

    /// [`send`](Self::send) with skip-on-success (see [`recv_now`](Self::recv_now)).
    pub fn send_now(&self, buf: impl Into<Buf>, token: T) -> Result<Started<T>, Error> {
        self.start_with(Op::Send, Some(buf.into()), None, token, true)
    }

    /// [`recv_from`](Self::recv_from) with skip-on-success (see [`recv_now`](Self::recv_now)).
    pub fn recv_from_now(&self, buf: impl Into<Buf>, token: T) -> Result<Started<T>, Error> {
        self.start_with(Op::RecvFrom, Some(buf.into()), None, token, true)
    }

    /// [`send_to`](Self::send_to) with skip-on-success (see [`recv_now`](Self::recv_now)).
    pub fn send_to_now(
        &self,
        buf: impl Into<Buf>,
        to: SocketAddr,
        token: T,
    ) -> Result<Started<T>, Error> {
        self.start_with(Op::SendTo, Some(buf.into()), Some(to), token, true)
    }

    /// [`read_at`](Self::read_at) with skip-on-success: a read the page cache
    /// can serve at once comes back here, with no packet queued
    /// (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`); otherwise it is pending and
    /// completes to the port.
    pub fn read_at_now(
        &self,
        buf: impl Into<Buf>,
        offset: u64,
        token: T,
    ) -> Result<Started<T>, Error> {
        self.start_with(Op::ReadAt(offset), Some(buf.into()), None, token, true)
    }

    /// Reads into `buf` from byte `offset` of a file (`ReadFile` with an
    /// OVERLAPPED offset). The packet's result is the bytes read (0 at end of
    /// file) and its payload the buffer. A read the page cache can serve
    /// whole is done at once by the calling thread (`preadv2` with
    /// `RWF_NOWAIT`), and its packet queued all the same, as Windows queues
    /// the packet of a read that completed synchronously.
    pub fn read_at(&self, buf: impl Into<Buf>, offset: u64, token: T) -> Result<OpId, Error> {
        self.start(Op::ReadAt(offset), Some(buf.into()), None, token)
    }

    /// Writes `buf` at byte `offset` of a file. The result is the bytes
    /// written, which may be fewer than asked.
    pub fn write_at(&self, buf: impl Into<Buf>, offset: u64, token: T) -> Result<OpId, Error> {
        self.start(Op::WriteAt(offset), Some(buf.into()), None, token)
    }

    /// Receives into `buf` from a connected socket or pipe (0 bytes: the
    /// peer closed).
    ///
    /// Receives pending on one handle complete in the order they were
    /// issued, each taking the next bytes of a stream (or the next datagram).
    /// On a datagram socket, a datagram longer than `buf` completes with
    /// `EMSGSIZE` (Windows' `WSAEMSGSIZE`) and the buffer holding the bytes
    /// that fit; the rest of the datagram is lost.
    pub fn recv(&self, buf: impl Into<Buf>, token: T) -> Result<OpId, Error> {
        self.start(Op::Recv, Some(buf.into()), None, token)
    }

    /// Sends `buf` on a connected socket or pipe. The result may be fewer
    /// bytes than the buffer holds (a partial send): send the rest with
    /// another call. Sends pending on one handle put their bytes out in the
    /// order they were issued.
    pub fn send(&self, buf: impl Into<Buf>, token: T) -> Result<OpId, Error> {
        self.start(Op::Send, Some(buf.into()), None, token)
    }

    /// Receives a datagram into `buf`; the packet's payload carries the
    /// sender's address ([`Packet::peer`](crate::Packet::peer)). A datagram
    /// longer than `buf` completes with `EMSGSIZE`, the buffer holding the
    /// bytes that fit, and the sender's address.
    pub fn recv_from(&self, buf: impl Into<Buf>, token: T) -> Result<OpId, Error> {
        self.start(Op::RecvFrom, Some(buf.into()), None, token)
    }

    /// Sends `buf` as one datagram to `to`.
    pub fn send_to(&self, buf: impl Into<Buf>, to: SocketAddr, token: T) -> Result<OpId, Error> {
        self.start(Op::SendTo, Some(buf.into()), Some(to), token)
    }

    /// Accepts a connection on a listening socket; the packet's payload
    /// carries the new socket ([`Packet::take_stream`](crate::Packet::take_stream))
    /// and the peer's address. The new socket is close-on-exec. Accepts
    /// pending on one listener take connections in the order they were
    /// issued.
    pub fn accept(&self, token: T) -> Result<OpId, Error> {
        self.start(Op::Accept, None, None, token)
    }

    /// Connects a socket to `to` (`ConnectEx`). A refused connection
    /// completes with that error.
    pub fn connect(&self, to: SocketAddr, token: T) -> Result<OpId, Error> {
        self.start(Op::Connect, None, Some(to), token)
    }

    /// Shuts down one or both directions of a connected socket.
    pub fn shutdown(&self, how: Shutdown, token: T) -> Result<OpId, Error> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        self.start(Op::Shutdown(how), None, None, token)
    }

    /// Cancels one operation of this handle (`CancelIoEx` with an
    /// OVERLAPPED). It still completes, cancelled if the cancel won the race
    /// with its completion. An id that is not in flight on this handle is an
    /// [`Error::InvalidArgument`].
    pub fn cancel(&self, op: OpId) -> Result<(), Error> {
        self.port
            .driver()?
            .cancel(&self.port.core, op, self.fd.as_raw_fd())
    }

    /// Cancels every operation in flight on this handle (`CancelIoEx` with
    /// no OVERLAPPED); each still completes as a cancelled packet.
    pub fn cancel_all(&self) -> Result<(), Error> {
        self.port
            .driver()?
            .cancel_fd(&self.port.core, self.fd.as_raw_fd())
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
        match self.port.driver() {
            Ok(d) => d.detach(&self.port.core, self.fd.as_raw_fd(), self.fixed),
            // The port closed (its operations were cancelled then), but its
            // ring lives on while handles do: the registration must go, or
            // the ring's reference would keep the socket open.
            Err(_) if self.fixed => self.port.io().unfix(self.fd.as_raw_fd()),
            Err(_) => {}
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
