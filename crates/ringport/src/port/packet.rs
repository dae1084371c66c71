//! What a port hands a thread.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;

use crate::port::Buf;

/// A completion packet: the analogue of what `GetQueuedCompletionStatus`
/// returns (completion key, bytes transferred or error, OVERLAPPED), plus
/// whatever the operation owned that goes back to the user.
///
/// `T` is the per-operation token, the user's own typed value that stands
/// where Windows puts the OVERLAPPED pointer.
#[derive(Debug)]
pub struct Packet<T> {
    /// The completion key of the packet's source: the key a handle was
    /// associated with, or the key given to [`post`](crate::CompletionPort::post).
    pub key: u64,
    /// The per-operation token.
    pub token: T,
    /// Bytes transferred, or the operation's error. A cancelled operation
    /// completes with an error of kind [`io::ErrorKind::Interrupted`] whose raw
    /// code is `ECANCELED` (see [`Packet::is_cancelled`]).
    pub result: io::Result<usize>,
    /// What the operation owned: its buffer, a peer address, a new socket.
    pub payload: Payload,
}

/// What a finished operation gives back besides its result.
#[derive(Debug, Default)]
#[non_exhaustive]
pub enum Payload {
    /// Nothing (a posted packet, a timer, connect, shutdown, cancel).
    #[default]
    None,
    /// The operation's buffer (read, write, recv, send, send_to).
    Buf(Buf),
    /// A datagram's buffer and the address it came from (recv_from).
    BufFrom(Buf, Option<SocketAddr>),
    /// An accepted connection and its peer's address.
    Accepted(OwnedFd, Option<SocketAddr>),
}

impl<T> Packet<T> {
    /// A packet as [`post`](crate::CompletionPort::post) queues it.
    pub fn new(key: u64, token: T, result: io::Result<usize>) -> Self {
        Packet {
            key,
            token,
            result,
            payload: Payload::None,
        }
    }

    /// Whether the operation was cancelled (`ECANCELED`), as a cancel or a
    /// close makes it complete.
    pub fn is_cancelled(&self) -> bool {
        matches!(&self.result, Err(e) if e.raw_os_error() == Some(libc::ECANCELED))
    }

    /// Takes the buffer out of the payload, if there is one.
    pub fn take_buf(&mut self) -> Option<Buf> {
        match std::mem::take(&mut self.payload) {
            Payload::Buf(b) | Payload::BufFrom(b, _) => Some(b),
            other => {
                self.payload = other;
                None
            }
        }
    }

    /// Takes an accepted connection out of the payload as a `TcpStream`.
    pub fn take_stream(&mut self) -> Option<TcpStream> {
        match std::mem::take(&mut self.payload) {
            Payload::Accepted(fd, _) => Some(TcpStream::from(fd)),
            other => {
                self.payload = other;
                None
            }
        }
    }

    /// The peer address of a recv_from or accept.
    pub fn peer(&self) -> Option<SocketAddr> {
        match &self.payload {
            Payload::BufFrom(_, a) | Payload::Accepted(_, a) => *a,
            _ => None,
        }
    }
}
