//! `ringport bench tcp`: the ringport TCP echo server against a tokio
//! (multi-thread runtime), a mio, a monoio (io_uring, thread-per-core) and a
//! std thread-per-connection echo server.
//!
//! The harness ([`super::echo`]) drives each with the same load generator:
//! 64 connections with one 64-byte message each in flight, ping-pong, every
//! byte checked.
//!
//! Every server gets the same number of threads (`--threads`) and sets
//! TCP_NODELAY on its connections; the echo loop of each is the plain one
//! its API suggests (receive into a buffer, send it all back).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};

use super::echo::{
    compare, localhost, ringport_with, select, tokio_runtime, EchoRun, Server, Start, Tokio,
};
use crate::load::Proto;
use crate::report::Report;
use crate::serve;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: EchoRun,
    /// Servers to run, comma-separated: ringport, tokio, mio, monoio, std,
    /// and the variants ringport-noskip (no skip-on-success),
    /// ringport-epoll and ringport-rio (`serve tcp-echo --mode rio-port`:
    /// Registered I/O, one worker whatever --threads says); uring-raw and
    /// its variants uring-raw-plain, -oneshot and -coop, hand-written
    /// io_uring servers, and epoll-raw, a
    /// plain epoll loop (one thread whatever --threads says; see
    /// bench/uring_raw.rs and bench/epoll_raw.rs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ringport,tokio,mio,monoio,std"
    )]
    peers: Vec<String>,
    /// Shard counts to compare instead (e.g. 1,2; of 1, 2, 4, 8): ringport
    /// and its RIO server in that many SO_REUSEPORT shards beside tokio
    /// with as many threads (see bench/shards.rs).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<usize>,
}

const PEERS: [(&str, Start); 13] = [
    ("ringport", |t, b| tcp_with(t, b, |_| {})),
    // The same server with every send's packet going through the port.
    ("ringport-noskip", |t, b| tcp_with(t, b, |o| o.skip = false)),
    ("ringport-epoll", |t, b| {
        tcp_with(t, b, |o| o.backend = ringport::Backend::Epoll)
    }),
    ("ringport-rio", start_rio),
    ("tokio", start_tokio),
    ("mio", start_mio),
    ("monoio", start_monoio),
    ("std", start_std),
    // The floor on io_uring: a hand-written server, every lever on (and off).
    ("uring-raw", super::uring_raw::start),
    ("uring-raw-plain", super::uring_raw::start_plain),
    ("uring-raw-oneshot", super::uring_raw::start_oneshot),
    ("uring-raw-coop", super::uring_raw::start_coop),
    // The system-call floor on readiness: recv + send per message.
    ("epoll-raw", super::epoll_raw::start),
];

pub fn run(mut args: Args, quick: bool, report: &mut Report) -> Result<(), String> {
    if quick {
        args.run.quick();
    }
    if !args.shards.is_empty() {
        return super::shards::compare_shards(&args.run, Proto::Tcp, &args.shards, report);
    }
    let peers = select(&args.peers, &PEERS)?;
    compare(
        &args.run.plan("tcp", Proto::Tcp, Duration::from_secs(5)),
        &peers,
        report,
    )
}

const BUF: usize = 16 << 10;

/// The TCP echo server, tweaked.
fn tcp_with(
    threads: usize,
    batch: usize,
    tweak: impl FnOnce(&mut serve::Options),
) -> Result<Box<dyn Server>, String> {
    ringport_with(
        serve::Kind::TcpEcho,
        serve::TcpEcho::start,
        threads,
        batch,
        tweak,
    )
}

// ---------------------------------------------------------------- RIO

struct Rio(serve::rio_tcp_echo::RioTcpEcho);

impl Server for Rio {
    fn addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
    fn stop(self: Box<Self>) -> Result<(), String> {
        self.0.stop().1
    }
}

fn start_rio(_threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let opts = serve::rio_tcp_echo::EchoOptions::new();
    Ok(Box::new(Rio(serve::rio_tcp_echo::RioTcpEcho::start(
        localhost(),
        &opts,
    )?)))
}

// ---------------------------------------------------------------- tokio

pub(super) fn start_tokio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio_runtime(threads)?;
    let std_listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?
    };
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; BUF];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(Box::new(Tokio { rt: Some(rt), addr }))
}

// ---------------------------------------------------------------- mio

/// `threads` epoll loops; the first also accepts, and hands connections out
/// round-robin (through a channel and a waker).
struct Mio {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server for Mio {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                return Err("a mio thread panicked".into());
            }
        }
        Ok(())
    }
}

const WAKER: Token = Token(usize::MAX);
const ACCEPT: Token = Token(usize::MAX - 1);

struct MioConn {
    stream: mio::net::TcpStream,
    /// Bytes received but not yet sent back (after a short send).
    out: Vec<u8>,
}

fn start_mio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let std_listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let mut listener = Some(mio::net::TcpListener::from_std(std_listener));
    let stop = Arc::new(AtomicBool::new(false));
    let mut polls = Vec::new();
    let mut wakers = Vec::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..threads {
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
        let (tx, rx) = mpsc::channel::<mio::net::TcpStream>();
        polls.push(poll);
        wakers.push(waker);
        senders.push(tx);
        receivers.push(rx);
    }
    let mut server = Mio {
        addr,
        stop: stop.clone(),
        wakers: wakers.clone(),
        threads: Vec::new(),
    };
    for (i, (poll, rx)) in polls.into_iter().zip(receivers).enumerate() {
        let stop = stop.clone();
        let listener = if i == 0 { listener.take() } else { None };
        let peers: Vec<_> = senders
            .iter()
            .cloned()
            .zip(wakers.iter().cloned())
            .collect();
        let spawned = thread::Builder::new()
            .name(format!("mio-echo-{i}"))
            .spawn(move || mio_loop(poll, listener, rx, peers, &stop));
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

fn mio_loop(
    mut poll: Poll,
    mut listener: Option<mio::net::TcpListener>,
    incoming: mpsc::Receiver<mio::net::TcpStream>,
    peers: Vec<(mpsc::Sender<mio::net::TcpStream>, Arc<Waker>)>,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<MioConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut next = 0usize;
    if let Some(l) = listener.as_mut() {
        if poll
            .registry()
            .register(l, ACCEPT, Interest::READABLE)
            .is_err()
        {
            return;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {
                    while let Ok(s) = incoming.try_recv() {
                        mio_add(&poll, s, &mut conns, &mut free);
                    }
                }
                ACCEPT => {
                    let Some(l) = listener.as_ref() else { continue };
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nodelay(true);
                        let target = next % peers.len();
                        next += 1;
                        if target == 0 {
                            mio_add(&poll, s, &mut conns, &mut free);
                        } else {
                            let (tx, waker) = &peers[target];
                            if tx.send(s).is_ok() {
                                let _ = waker.wake();
                            }
                        }
                    }
                }
                Token(i) => {
                    let Some(Some(c)) = conns.get_mut(i) else {
                        continue;
                    };
                    if !mio_echo(c, &mut buf) {
                        let _ = poll.registry().deregister(&mut c.stream);
                        conns[i] = None;
                        free.push(i);
                    }
                }
            }
        }
    }
}

fn mio_add(
    poll: &Poll,
    mut stream: mio::net::TcpStream,
    conns: &mut Vec<Option<MioConn>>,
    free: &mut Vec<usize>,
) {
    let i = free.pop().unwrap_or_else(|| {
        conns.push(None);
        conns.len() - 1
    });
    let interest = Interest::READABLE | Interest::WRITABLE;
    if poll
        .registry()
        .register(&mut stream, Token(i), interest)
        .is_ok()
    {
        conns[i] = Some(MioConn {
            stream,
            out: Vec::new(),
        });
    } else {
        free.push(i);
    }
}

/// Echoes what can be echoed without blocking; false when the connection
/// is done.
fn mio_echo(c: &mut MioConn, buf: &mut [u8]) -> bool {
    loop {
        // Finish a short send first, and read nothing more until it is out.
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => return false,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let n = match c.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        match c.stream.write(&buf[..n]) {
            Ok(m) if m == n => {}
            Ok(m) => c.out.extend_from_slice(&buf[m..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.out.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------- monoio

/// `threads` monoio runtimes on the io_uring driver, one per thread, each
/// accepting on its own SO_REUSEPORT listener of the same port (monoio's
/// thread-per-core model: the kernel spreads the connections).
struct Monoio {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Server for Monoio {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err("a monoio thread panicked".into()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// How often an idle monoio runtime looks at the stop flag: a timer wake
/// ten times a second, nothing next to the load.
const MONOIO_TICK: Duration = Duration::from_millis(100);

fn start_monoio(threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = Monoio {
        addr: localhost(),
        stop: stop.clone(),
        threads: Vec::new(),
    };
    // The first runtime binds port 0; the others join it on the port it got.
    for i in 0..threads {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, addr) = (stop.clone(), server.addr);
        let spawned = thread::Builder::new()
            .name(format!("monoio-echo-{i}"))
            .spawn(move || monoio_thread(addr, &stop, ready_tx));
        match spawned {
            Ok(h) => server.threads.push(h),
            Err(e) => {
                let _ = Box::new(server).stop();
                return Err(format!("starting a monoio thread: {e}"));
            }
        }
        // A runtime that cannot start (no io_uring here) fails the run at
        // once instead of looking like a server that never answers.
        match ready_rx.recv() {
            Ok(Ok(addr)) => server.addr = addr,
            Ok(Err(e)) => {
                let _ = Box::new(server).stop();
                return Err(e);
            }
            Err(_) => {
                let e = Box::new(server).stop().err();
                return Err(e.unwrap_or_else(|| "a monoio thread ended at start".into()));
            }
        }
    }
    Ok(Box::new(server))
}

fn monoio_thread(
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
) -> Result<(), String> {
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("monoio's io_uring driver: {e}");
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    rt.block_on(async move {
        let opts = monoio::net::ListenerOpts::new().reuse_port(true);
        let bound = monoio::net::TcpListener::bind_with_config(addr, &opts)
            .and_then(|l| Ok((l.local_addr()?, l)));
        let listener = match bound {
            Ok((local, l)) => {
                let _ = ready.send(Ok(local));
                l
            }
            Err(e) => {
                let e = format!("monoio bind {addr}: {e}");
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        };
        monoio::spawn(async move {
            // As monoio's echo example accepts.
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                monoio::spawn(monoio_echo(stream));
            }
        });
        while !stop.load(Ordering::Relaxed) {
            monoio::time::sleep(MONOIO_TICK).await;
        }
        Ok(())
    })
}

/// monoio's echo example: owned buffers (read into it, write it all back).
async fn monoio_echo(mut stream: monoio::net::TcpStream) -> io::Result<()> {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        let (res, b) = stream.read(buf).await;
        if res? == 0 {
            return Ok(());
        }
        let (res, b) = stream.write_all(b).await;
        res?;
        buf = b;
        buf.clear();
    }
}

// ---------------------------------------------------------------- std

/// Each connection (a clone, to shut it down) and its thread.
type StdConns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// One blocking thread per connection, and an accepting thread.
struct Std {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    conns: StdConns,
}

impl Server for Std {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(PoisonError::into_inner));
        for (s, h) in conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = h.join();
        }
        Ok(())
    }
}

fn start_std(_threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let listener = TcpListener::bind(localhost()).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let conns: StdConns = Arc::default();
    let (s, c) = (stop.clone(), conns.clone());
    let acceptor = thread::Builder::new()
        .name("std-echo-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let h = thread::Builder::new()
                    .name("std-echo".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let mut buf = vec![0u8; BUF];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                if let Ok(h) = h {
                    c.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((clone, h));
                }
            }
        })
        .map_err(|e| format!("starting the acceptor: {e}"))?;
    Ok(Box::new(Std {
        addr,
        stop,
        acceptor: Some(acceptor),
        conns,
    }))
}
