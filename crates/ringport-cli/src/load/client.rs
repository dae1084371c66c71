//! One client thread of the load generator: an epoll loop (mio) over its
//! share of the connections, each with one message in flight, every byte of
//! every echo checked.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use super::{LoadConfig, Proto, Shared};
use crate::measure::{cpu_time, histogram, Scope};

/// Bytes at the start of a message that carry its sequence number.
const SEQ: usize = 8;

/// One connection or connected UDP socket.
enum Sock {
    Tcp(mio::net::TcpStream),
    Udp(mio::net::UdpSocket),
}

pub(super) struct Endpoint {
    sock: Sock,
    /// The message in flight; its first bytes carry a sequence number.
    out: Vec<u8>,
    written: usize,
    /// The echo so far (TCP), or the last datagram (UDP, one byte larger
    /// than a message so an oversized reply shows).
    inbuf: Vec<u8>,
    read: usize,
    seq: u64,
    sent_at: Instant,
    /// A message is in flight.
    busy: bool,
    /// Round trips left (u64::MAX when running for a duration).
    left: u64,
    replies: u64,
}

impl Endpoint {
    pub(super) fn connect(cfg: &LoadConfig, i: usize) -> Result<Endpoint, String> {
        let addr = cfg.addr;
        let sock = match cfg.proto {
            Proto::Tcp => {
                let s = TcpStream::connect_timeout(&addr, cfg.timeout).map_err(|e| {
                    let hint = match e.kind() {
                        io::ErrorKind::ConnectionRefused => {
                            " (is a TCP echo server listening there?)"
                        }
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                            " (no answer within --timeout)"
                        }
                        _ => "",
                    };
                    format!("cannot connect to {addr} (connection {i}): {e}{hint}")
                })?;
                s.set_nodelay(true)
                    .and_then(|()| s.set_nonblocking(true))
                    .map_err(|e| format!("setting up connection {i}: {e}"))?;
                Sock::Tcp(mio::net::TcpStream::from_std(s))
            }
            Proto::Udp => {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .map_err(|e| format!("{e}"))?;
                let s = UdpSocket::bind(local)
                    .and_then(|s| s.connect(addr).map(|()| s))
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|e| format!("cannot open a UDP socket to {addr}: {e}"))?;
                Sock::Udp(mio::net::UdpSocket::from_std(s))
            }
        };
        // A recognisable pattern, different per connection.
        let out: Vec<u8> = (0..cfg.size)
            .map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8))
            .collect();
        let extra = usize::from(cfg.proto == Proto::Udp);
        Ok(Endpoint {
            sock,
            out,
            written: 0,
            inbuf: vec![0; cfg.size + extra],
            read: 0,
            seq: (i as u64) << 40,
            sent_at: Instant::now(),
            busy: false,
            left: 0,
            replies: 0,
        })
    }

    /// Starts the next message.
    fn start(&mut self) {
        self.seq += 1;
        let bytes = self.seq.to_le_bytes();
        let n = bytes.len().min(self.out.len());
        self.out[..n].copy_from_slice(&bytes[..n]);
        self.written = 0;
        self.read = 0;
        self.busy = true;
        self.sent_at = Instant::now();
    }
}

/// What one client thread measured.
pub(super) struct ClientTally {
    pub(super) messages: u64,
    pub(super) lost: u64,
    pub(super) latency: Histogram<u64>,
    pub(super) ended: Instant,
    /// This thread's CPU time while measuring.
    pub(super) cpu: Duration,
    /// The connections, still open: closing them would end a server's
    /// per-connection threads before their CPU time is read.
    pub(super) open: Vec<Endpoint>,
}

pub(super) fn client_thread(
    cfg: &LoadConfig,
    mut eps: Vec<Endpoint>,
    quotas: Vec<u64>,
    shared: &Shared,
    measure_from: Instant,
    deadline: Option<Instant>,
) -> Result<ClientTally, String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll_create: {e}"))?;
    let mut events = Events::with_capacity(256);
    let mut tally = ClientTally {
        messages: 0,
        lost: 0,
        latency: histogram(),
        ended: Instant::now(),
        cpu: Duration::ZERO,
        open: Vec::new(),
    };
    let mut cpu_from = None;
    for (i, (ep, q)) in eps.iter_mut().zip(quotas).enumerate() {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let r = match &mut ep.sock {
            Sock::Tcp(s) => poll.registry().register(s, Token(i), interest),
            Sock::Udp(s) => poll.registry().register(s, Token(i), interest),
        };
        r.map_err(|e| format!("epoll_ctl: {e}"))?;
        ep.left = q;
    }
    let mut active = 0usize;
    for ep in eps.iter_mut() {
        if ep.left > 0 {
            ep.start();
            active += 1;
        }
    }
    let mut unreported = 0u64;
    let mut last_check = Instant::now();
    let mut any_reply = false;
    // Kick every connection once, then follow the events.
    let mut ready: Vec<usize> = (0..eps.len()).collect();
    while active > 0 {
        for &i in &ready {
            let ep = &mut eps[i];
            if !ep.busy {
                continue;
            }
            let finished = pump(cfg, ep, i, &mut tally, measure_from)?;
            if finished > 0 {
                any_reply = true;
                unreported += finished;
            }
            if !ep.busy {
                active -= 1;
            }
        }
        if unreported >= 64 {
            shared.done.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
        }
        let now = Instant::now();
        if cpu_from.is_none() && now >= measure_from {
            cpu_from = Some(cpu_time(Scope::Thread));
        }
        if deadline.is_some_and(|d| now >= d) || shared.abort.load(Ordering::Relaxed) {
            break;
        }
        if now.duration_since(last_check) >= Duration::from_millis(50) {
            last_check = now;
            for (i, ep) in eps.iter_mut().enumerate() {
                if !ep.busy || now.duration_since(ep.sent_at) < cfg.timeout {
                    continue;
                }
                match cfg.proto {
                    Proto::Tcp => {
                        return Err(format!(
                            "connection {i}: no echo from {} within {:?} (is it an echo server?)",
                            cfg.addr, cfg.timeout
                        ))
                    }
                    Proto::Udp if ep.replies == 0 && !any_reply => {
                        return Err(format!(
                            "no reply from {} within {:?} (is a UDP echo server running there?)",
                            cfg.addr, cfg.timeout
                        ))
                    }
                    Proto::Udp => {
                        // Lost on the way: replace it with a new message.
                        tally.lost += 1;
                        ep.start();
                        unreported += pump(cfg, ep, i, &mut tally, measure_from)?;
                        if !ep.busy {
                            active -= 1;
                        }
                    }
                }
            }
        }
        let mut wait = Duration::from_millis(50);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        ready.clear();
        ready.extend(events.iter().map(|e| e.token().0));
    }
    shared.done.fetch_add(unreported, Ordering::Relaxed);
    tally.cpu = cpu_from.map_or(Duration::ZERO, |c| {
        cpu_time(Scope::Thread).saturating_sub(c)
    });
    tally.ended = Instant::now();
    if let Some(d) = deadline {
        tally.ended = tally.ended.min(d);
    }
    tally.open = eps;
    Ok(tally)
}

/// Whether an operation that failed with `e` may simply be tried later.
fn again(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Moves one endpoint as far as it can without blocking; returns how many
/// round trips it completed.
fn pump(
    cfg: &LoadConfig,
    ep: &mut Endpoint,
    i: usize,
    tally: &mut ClientTally,
    measure_from: Instant,
) -> Result<u64, String> {
    let mut completed = 0;
    let addr = cfg.addr;
    let io_err = |what: &str, e: io::Error| -> String {
        let hint = match e.kind() {
            io::ErrorKind::ConnectionRefused => match cfg.proto {
                Proto::Udp => " (is a UDP echo server running there?)",
                Proto::Tcp => "",
            },
            io::ErrorKind::ConnectionReset => " (the server reset the connection)",
            _ => "",
        };
        format!("connection {i} to {addr}: {what}: {e}{hint}")
    };
    while ep.busy {
        match &mut ep.sock {
            // Write and read in turn until both would block: a large message
            // comes back while it is still going out, and a client that did
            // not read meanwhile would deadlock with the server.
            Sock::Tcp(s) => loop {
                let mut moved = false;
                if ep.written < ep.out.len() {
                    match s.write(&ep.out[ep.written..]) {
                        Ok(0) => return Err(format!("connection {i}: the socket took no bytes")),
                        Ok(n) => {
                            ep.written += n;
                            moved = true;
                        }
                        Err(e) if again(&e) => {}
                        Err(e) => return Err(io_err("send", e)),
                    }
                }
                if ep.read < ep.written {
                    match s.read(&mut ep.inbuf[ep.read..]) {
                        Ok(0) => {
                            return Err(format!(
                                "connection {i}: {addr} closed the connection after {} echoes",
                                ep.replies
                            ))
                        }
                        Ok(n) => {
                            ep.read += n;
                            moved = true;
                        }
                        Err(e) if again(&e) => {}
                        Err(e) => return Err(io_err("recv", e)),
                    }
                }
                if ep.read == ep.out.len() {
                    if ep.inbuf[..] != ep.out[..] {
                        return Err(format!(
                            "connection {i}: the echo differs from what was sent (message {})",
                            ep.replies
                        ));
                    }
                    break;
                }
                if !moved {
                    return Ok(completed);
                }
            },
            Sock::Udp(s) => {
                if ep.written == 0 {
                    match s.send(&ep.out) {
                        Ok(n) if n == ep.out.len() => ep.written = n,
                        Ok(n) => {
                            return Err(format!("connection {i}: short datagram sent ({n} bytes)"))
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) =>
                        {
                            return Ok(completed)
                        }
                        Err(e) => return Err(io_err("send", e)),
                    }
                }
                loop {
                    match s.recv(&mut ep.inbuf) {
                        Ok(n) if n == ep.out.len() && ep.inbuf[..n] == ep.out[..] => break,
                        Ok(n)
                            if n == ep.out.len()
                                && ep.inbuf[SEQ.min(n)..n] == ep.out[SEQ.min(n)..] =>
                        {
                            // Another sequence number: a late reply to a
                            // message counted as lost.
                        }
                        Ok(n) => {
                            return Err(format!(
                                "connection {i}: the echoed datagram ({n} bytes) differs from the {} sent",
                                ep.out.len()
                            ))
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(completed),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err("recv", e)),
                    }
                }
            }
        }
        // A round trip.
        let now = Instant::now();
        ep.replies += 1;
        if now >= measure_from {
            let rtt = now.duration_since(ep.sent_at).as_nanos() as u64;
            tally.latency.saturating_record(rtt.max(1));
            tally.messages += 1;
        }
        completed += 1;
        ep.busy = false;
        if ep.left != u64::MAX {
            ep.left -= 1;
        }
        if ep.left > 0 {
            ep.start();
        }
    }
    Ok(completed)
}
