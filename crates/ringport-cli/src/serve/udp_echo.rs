//! `ringport serve udp-echo`: UDP echo on one completion port.
//!
//! The socket keeps `--pending` receives (`recv_from`) pending, each with its
//! own buffer; a datagram is sent back to its sender with `send_to` using the
//! same buffer, whose completion re-issues the receive. With skip-on-success
//! (the default) the send normally completes on the spot, and the worker then
//! tries the next receive at once too: while datagrams are waiting it echoes
//! up to 32 in a row without going back to the port, as a `recvfrom` loop
//! would, and leaves a receive pending when none is. A datagram longer than
//! the buffer (the receive fails with EMSGSIZE) is counted as truncated and
//! not echoed: the bytes that fit are not the datagram. With `--protocol
//! sockperf` a datagram is answered only when it asks for a reply.

use std::net::{SocketAddr, UdpSocket};

use ringport::{Error, Handle, Packet, Started};

use super::server::{Ledger, Options, Running, ServerState, WorkerCounters};
use super::sockperf::{answer_datagram, Protocol};
use super::Kind;
use crate::args::bind_error;

/// A running UDP echo server.
pub type UdpEcho = Running<UdpOp, UdpState>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpOp {
    Recv,
    Send,
}

pub struct UdpState {
    sock: Handle<UdpOp>,
    buf_size: usize,
    skip: bool,
    protocol: Protocol,
    ledger: Ledger,
}

impl UdpEcho {
    /// Binds `addr` and starts serving.
    pub fn start(addr: SocketAddr, opts: &Options) -> Result<UdpEcho, String> {
        opts.validate(Kind::UdpEcho)?;
        let sock = UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
        UdpEcho::start_on(sock, opts)
    }

    /// Starts serving on a bound socket (a shard of a reuseport group).
    pub fn start_on(sock: UdpSocket, opts: &Options) -> Result<UdpEcho, String> {
        opts.validate(Kind::UdpEcho)?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        let port = opts.port()?;
        let sock = port
            .associate(sock, 0)
            .map_err(|e| format!("associating the socket: {e}"))?;
        let state = UdpState {
            sock,
            buf_size: opts.buf_size,
            skip: opts.skip,
            protocol: opts.protocol,
            ledger: Ledger::new("udp-echo", opts.threads),
        };
        UdpEcho::run(port, addr, state, opts, UdpState::handle, |s| {
            for _ in 0..opts.pending {
                s.sock
                    .recv_from(Vec::with_capacity(s.buf_size), UdpOp::Recv)
                    .map_err(|e| format!("starting a receive: {e}"))?;
            }
            Ok(())
        })
    }
}

/// Datagrams one worker takes straight from the socket (receives that
/// completed at once) before it goes back to the port.
const EAGER_MAX: usize = 32;

impl ServerState for UdpState {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

impl UdpState {
    fn handle(&self, w: usize, p: Packet<UdpOp>) {
        let mut next = Some(p);
        let mut eager = 0;
        while let Some(p) = next.take() {
            let Some(buf) = self.echo(w, p) else { return };
            // With skip-on-success, try the next receive at once: a datagram
            // already waiting is echoed here without a trip through the
            // ring and the port (as a recvfrom loop would), up to EAGER_MAX
            // in a row so that one worker does not keep the socket to itself.
            eager += 1;
            let c = self.ledger.of(w);
            if self.skip && eager < EAGER_MAX {
                match self.sock.recv_from_now(buf, UdpOp::Recv) {
                    Ok(Started::Done(p)) => next = Some(p),
                    Ok(Started::Pending(_)) => {}
                    Err(e) => self.lost_buffer(c, e),
                }
            } else if let Err(e) = self.sock.recv_from(buf, UdpOp::Recv) {
                self.lost_buffer(c, e);
            }
        }
    }

    /// Echoes a received datagram; returns the buffer, emptied, for the next
    /// receive, or None when it is in flight with a send.
    fn echo(&self, w: usize, mut p: Packet<UdpOp>) -> Option<Vec<u8>> {
        let c = self.ledger.of(w);
        if p.is_cancelled() {
            return None;
        }
        let peer = p.peer();
        let mut buf = p.take_buf()?.into_vec();
        match (p.token, p.result) {
            (UdpOp::Recv, Ok(n)) => {
                if let Some(to) = peer {
                    WorkerCounters::bump(&c.messages, 1);
                    buf.truncate(n);
                    let answered = match self.protocol {
                        Protocol::Echo => Some(n),
                        Protocol::Sockperf => answer_datagram(&mut buf),
                    };
                    let Some(len) = answered else {
                        // Asks for no reply: receive into the buffer again.
                        buf.clear();
                        return Some(buf);
                    };
                    buf.truncate(len);
                    if !self.skip {
                        if let Err(e) = self.sock.send_to(buf, to, UdpOp::Send) {
                            self.lost_buffer(c, e);
                        }
                        return None;
                    }
                    match self.sock.send_to_now(buf, to, UdpOp::Send) {
                        Ok(Started::Pending(_)) => return None,
                        Ok(Started::Done(mut sent)) => {
                            match sent.result {
                                Ok(n) => WorkerCounters::bump(&c.bytes, n as u64),
                                Err(_) => WorkerCounters::bump(&c.errors, 1),
                            }
                            buf = sent.take_buf()?.into_vec();
                        }
                        Err(e) => {
                            self.lost_buffer(c, e);
                            return None;
                        }
                    }
                }
            }
            (UdpOp::Send, Ok(n)) => WorkerCounters::bump(&c.bytes, n as u64),
            // Longer than the buffer: the bytes that fit are not the
            // datagram, so it is not echoed cut short.
            (UdpOp::Recv, Err(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                WorkerCounters::bump(&c.truncated, 1)
            }
            // A receive can fail with the ICMP error of an earlier send
            // (ECONNREFUSED from a client that went away): not fatal.
            (_, Err(_)) => WorkerCounters::bump(&c.errors, 1),
        }
        buf.clear();
        if buf.capacity() < self.buf_size {
            buf.reserve_exact(self.buf_size);
        }
        Some(buf)
    }

    /// An operation could not be started: one receive fewer is pending.
    fn lost_buffer(&self, c: &WorkerCounters, e: Error) {
        if matches!(e, Error::Closed) {
            return;
        }
        WorkerCounters::bump(&c.errors, 1);
        self.ledger.fail(format!("cannot start an operation: {e}"));
    }
}
