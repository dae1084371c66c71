//! `ringport bench udp`: the ringport UDP echo servers (completion port, and
//! Registered I/O polled, event and port) against a tokio (multi-thread
//! runtime), a mio and a plain blocking `recv_from`/`send_to` echo server.
//!
//! The same method as `bench tcp` (see there): each server in this process
//! on 127.0.0.1 port 0, one at a time, the same ping-pong load generator (64
//! sockets, one 64-byte datagram each in flight, every byte checked), rounds
//! interleaved, medians reported with ringport's ratio to each peer.
//!
//! Every server has `--threads` threads on one socket: ringport's workers on
//! one port with `--pending` receives pending; tokio's tasks sharing the
//! socket; mio's threads each with their own epoll on a clone of it; the
//! blocking server's threads each in `recv_from` on a clone of it.
//!
//! Ping-pong with 64 datagrams in flight measures the server's cost per
//! datagram and the round trip, not the most it can take: for that a
//! sender far faster than one datagram per system call is needed (see
//! MEASURING.md on GSO senders).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};

use super::echo::{
    compare, localhost, ringport_with, select, tokio_runtime, EchoRun, Ringport, Server, Start,
    Tokio,
};
use crate::load::Proto;
use crate::report::Report;
use crate::serve;
use crate::serve::rio_udp_echo::{EchoMode, RioUdpEcho};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: EchoRun,
    /// Servers to run, comma-separated: ringport, tokio, mio, blocking, the
    /// variants ringport-noskip (no skip-on-success) and ringport-epoll, and
    /// the Registered I/O servers rio-polled, rio-event and rio-port (one
    /// thread each).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ringport,rio-polled,rio-event,rio-port,tokio,mio,blocking"
    )]
    peers: Vec<String>,
    /// Shard counts to compare instead (e.g. 1,2; of 1, 2, 4, 8): ringport
    /// and its RIO server in that many SO_REUSEPORT shards beside tokio
    /// with as many threads (see bench/shards.rs).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<usize>,
}

const PEERS: [(&str, Start); 9] = [
    ("ringport", |t, b| udp_with(t, b, |_| {})),
    // The same server with every send's packet going through the port.
    ("ringport-noskip", |t, b| udp_with(t, b, |o| o.skip = false)),
    ("ringport-epoll", |t, b| {
        udp_with(t, b, |o| o.backend = ringport::Backend::Epoll)
    }),
    ("rio-polled", |_, _| start_rio(EchoMode::Polled)),
    ("rio-event", |_, _| start_rio(EchoMode::Event)),
    ("rio-port", |_, _| start_rio(EchoMode::Port)),
    ("tokio", start_tokio),
    ("mio", start_mio),
    ("blocking", start_blocking),
];

pub fn run(mut args: Args, quick: bool, report: &mut Report) -> Result<(), String> {
    if quick {
        args.run.quick();
    }
    if !args.shards.is_empty() {
        return super::shards::compare_shards(&args.run, Proto::Udp, &args.shards, report);
    }
    let peers = select(&args.peers, &PEERS)?;
    compare(
        &args.run.plan("udp", Proto::Udp, Duration::from_secs(1)),
        &peers,
        report,
    )
}

/// Room for the largest datagram.
const BUF: usize = 64 << 10;

fn bind() -> Result<(UdpSocket, SocketAddr), String> {
    let s = UdpSocket::bind(localhost()).map_err(|e| format!("binding a UDP socket: {e}"))?;
    let addr = s.local_addr().map_err(|e| e.to_string())?;
    Ok((s, addr))
}

// ---------------------------------------------------------------- ringport

/// The completion-port UDP echo server, tweaked.
fn udp_with(
    threads: usize,
    batch: usize,
    tweak: impl FnOnce(&mut serve::Options),
) -> Result<Box<dyn Server>, String> {
    ringport_with(
        serve::Kind::UdpEcho,
        serve::UdpEcho::start,
        threads,
        batch,
        tweak,
    )
}

// ---------------------------------------------------------------- RIO

/// The RIO echo server (one thread whatever `threads` says), with as many
/// receives pending as the completion-port server.
fn start_rio(mode: EchoMode) -> Result<Box<dyn Server>, String> {
    let opts = serve::Options::new(serve::Kind::UdpEcho);
    let backend = ringport::Backend::Auto;
    let server = RioUdpEcho::start(localhost(), mode, opts.pending, 2048, backend)?;
    Ok(Box::new(Ringport(server)))
}

// ---------------------------------------------------------------- tokio

pub(super) fn start_tokio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let rt = tokio_runtime(threads)?;
    let (std_sock, addr) = bind()?;
    std_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let sock = {
        let _guard = rt.enter();
        Arc::new(tokio::net::UdpSocket::from_std(std_sock).map_err(|e| e.to_string())?)
    };
    for _ in 0..threads {
        let sock = sock.clone();
        rt.spawn(async move {
            let mut buf = vec![0u8; BUF];
            loop {
                if let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            }
        });
    }
    Ok(Box::new(Tokio { rt: Some(rt), addr }))
}

// ---------------------------------------------------------------- mio

/// Threads that each run an epoll loop on their own clone of the socket.
struct Threads {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server for Threads {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        let mut panicked = false;
        for t in self.threads.drain(..) {
            panicked |= t.join().is_err();
        }
        if panicked {
            return Err("a server thread panicked".into());
        }
        Ok(())
    }
}

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

fn start_mio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let (sock, addr) = bind()?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut server = Threads {
        addr,
        stop: Arc::new(AtomicBool::new(false)),
        wakers: Vec::new(),
        threads: Vec::new(),
    };
    for i in 0..threads {
        let clone = sock.try_clone().map_err(|e| e.to_string())?;
        let mut sock = mio::net::UdpSocket::from_std(clone);
        let mut poll = Poll::new().map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut sock, SOCKET, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?;
        server.wakers.push(Arc::new(waker));
        let stop = server.stop.clone();
        let spawned = thread::Builder::new()
            .name(format!("mio-udp-{i}"))
            .spawn(move || {
                let mut events = Events::with_capacity(64);
                let mut buf = vec![0u8; BUF];
                while !stop.load(Ordering::Relaxed) {
                    match poll.poll(&mut events, None) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                    // Edge-triggered: drain the socket.
                    loop {
                        match sock.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                let _ = sock.send_to(&buf[..n], from);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => {}
                        }
                    }
                }
            });
        match spawned {
            Ok(h) => server.threads.push(h),
            Err(e) => {
                let _ = Box::new(server).stop();
                return Err(format!("starting a mio thread: {e}"));
            }
        }
    }
    Ok(Box::new(server))
}

// ---------------------------------------------------------------- blocking

/// Threads blocked in `recv_from` on clones of one socket; a short receive
/// timeout lets them see the stop flag.
fn start_blocking(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let (sock, addr) = bind()?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut server = Threads {
        addr,
        stop: Arc::new(AtomicBool::new(false)),
        wakers: Vec::new(),
        threads: Vec::new(),
    };
    for i in 0..threads {
        let sock = sock.try_clone().map_err(|e| e.to_string())?;
        let stop = server.stop.clone();
        let spawned = thread::Builder::new()
            .name(format!("udp-blocking-{i}"))
            .spawn(move || {
                let mut buf = vec![0u8; BUF];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            });
        match spawned {
            Ok(h) => server.threads.push(h),
            Err(e) => {
                let _ = Box::new(server).stop();
                return Err(format!("starting a thread: {e}"));
            }
        }
    }
    Ok(Box::new(server))
}
