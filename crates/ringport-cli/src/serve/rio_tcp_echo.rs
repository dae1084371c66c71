//! `ringport serve tcp-echo --mode rio-port`: a TCP echo server on
//! Registered I/O, one thread on a completion port.
//!
//! - An **accept thread** takes connections (a plain listener, polled with a
//!   timeout so that it sees the stop flag) and hands each to the worker
//!   through a channel, posting a packet on the port to wake it. It touches
//!   no RIO queue: only the worker does.
//! - The **worker** owns one [`CompletionQueue`] for every connection, which
//!   notifies the port. Each connection gets a [`RequestQueue`] on it and a
//!   registered buffer of `--pending` slices of `--buf-size` bytes, and keeps
//!   a receive pending in every slice that is not waiting to be echoed.
//! - **Order.** Receives of one stream complete in the order the data
//!   arrived, so results are handled in dequeue order: each receive's bytes
//!   join the connection's queue of data to send back. At most one send is
//!   in flight per connection, always of the oldest data (the rest of it
//!   after a partial send), so the bytes go back in the order they came;
//!   a slice's receive is posted again only once all of its bytes are sent.
//!   Requests made while handling a batch are deferred and submitted with
//!   one commit at its end; the notification is re-armed after that.
//! - **Capacity.** Every request queue charges `--pending` receives and one
//!   send to the completion queue, which is sized for [`MAX_CONNECTIONS`]
//!   of them, or for as many as fit in the largest completion queue
//!   ([`MAX_CQ`] results) when `--pending` is high: a connection beyond that
//!   is refused (closed, with a message), so the queue can never overflow.
//! - **Closing.** A 0-byte receive (the peer closed its side) lets the data
//!   already received go back, then drops the request queue, which cancels
//!   the receives still pending; an error closes at once. A connection's
//!   slot and buffer are freed once every one of its requests has a result.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringport::rio::{
    self, BufferId, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult,
};
use ringport::{Backend, CompletionPort, Error};

use crate::args::bind_error;
use crate::log::Every;

/// The most connections served at once; the completion queue is sized for
/// them.
pub const MAX_CONNECTIONS: usize = 1024;
/// The largest completion queue the library makes (its size limit).
pub const MAX_CQ: usize = 65_536;

/// The port packet that announces results in the completion queue.
const CQ_KEY: u64 = 1;
/// The port packet that announces a new connection in the channel.
const ACCEPT_KEY: u64 = 2;
/// Set in a send's request context (the slice index is below it).
const SEND: u64 = 1 << 32;

/// Connections refused and connections failed can come in floods.
static REFUSED: Every = Every::second();
static CONN_FAILED: Every = Every::second();

/// How to run the server.
#[derive(Clone, Debug)]
pub struct EchoOptions {
    /// Receives kept pending per connection (one registered slice each).
    pub pending: usize,
    /// Bytes of each slice.
    pub buf_size: usize,
    /// Most results taken per notification.
    pub batch: usize,
    /// Connections served at once.
    pub max_connections: usize,
    pub backend: Backend,
}

impl EchoOptions {
    pub fn new() -> EchoOptions {
        EchoOptions {
            pending: 4,
            buf_size: 16 << 10,
            batch: 1000,
            max_connections: MAX_CONNECTIONS,
            backend: Backend::Auto,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.pending == 0 || self.pending > 64 {
            return Err("--pending must be between 1 and 64 for tcp-echo".into());
        }
        if self.buf_size == 0 || self.buf_size > 1 << 20 {
            return Err("--buf-size must be between 1 byte and 1 MiB in rio-port mode".into());
        }
        crate::args::bounded("batch", self.batch, MAX_CQ)?;
        if self.connections() == 0 {
            return Err(format!(
                "--pending {} leaves no room for a connection in one completion queue ({MAX_CQ} \
                 results)",
                self.pending
            ));
        }
        Ok(())
    }

    /// Connections served at once: `max_connections`, or fewer when that
    /// many would charge more than one completion queue holds.
    pub fn connections(&self) -> usize {
        self.max_connections.min(MAX_CQ / self.per_connection())
    }

    /// Receives and sends one connection charges to the completion queue.
    fn per_connection(&self) -> usize {
        self.pending + 1
    }

    fn cq_size(&self) -> usize {
        self.connections() * self.per_connection()
    }
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions::new()
    }
}

/// What the server did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    connections: u64,
    refused: u64,
    messages: u64,
    bytes: u64,
    errors: u64,
}

impl Stats {
    /// The counts in the words of the other servers (`refused` goes with
    /// the errors).
    pub fn summary(&self) -> super::Summary {
        super::Summary {
            connections: self.connections,
            messages: self.messages,
            bytes: self.bytes,
            errors: self.errors + self.refused,
            ..Default::default()
        }
    }
}

/// One connection.
struct Conn {
    /// None once the connection is closing (dropping it cancelled the rest).
    rq: Option<RequestQueue>,
    buffer: BufferId,
    generation: u32,
    peer: SocketAddr,
    /// Receives outstanding.
    receives: u32,
    /// A send is outstanding.
    sending: bool,
    /// Received data not yet all sent back, oldest first: (slice, bytes).
    ready: VecDeque<(u32, u32)>,
    /// Bytes of the oldest entry of `ready` already sent.
    sent: u32,
    /// The peer closed its side.
    eof: bool,
    /// Close as soon as the batch is committed (an error).
    failed: bool,
}

struct Worker {
    cq: CompletionQueue,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    open: usize,
    pending: u32,
    slot: u32,
    max: usize,
    stats: Stats,
    /// Connections touched in the current batch.
    touched: Vec<usize>,
    /// A request was deferred in the current batch.
    deferred: bool,
}

fn context(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (index as u64 + 1)
}

impl Worker {
    fn slice(&self, c: &Conn, slot: u32, from: u32, len: u32) -> RioBuf {
        RioBuf::new(c.buffer, slot * self.slot + from, len)
    }

    /// Takes a new connection, or refuses it with a message.
    fn open(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.open >= self.max {
            self.stats.refused += 1;
            REFUSED.line(format_args!(
                "refusing the connection from {peer}: {} connections open (the most)",
                self.open
            ));
            return; // dropping the stream closes it
        }
        let _ = stream.set_nodelay(true);
        let size = self.pending as usize * self.slot as usize;
        let buffer = match rio::register_buffer(size) {
            Ok(b) => b,
            Err(e) => {
                self.stats.refused += 1;
                REFUSED.line(format_args!(
                    "refusing the connection from {peer}: registering {size} bytes: {e}"
                ));
                return;
            }
        };
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
        };
        let generation = self.generations[index].wrapping_add(1);
        self.generations[index] = generation;
        let rq = match RequestQueue::new(
            stream,
            self.pending,
            1,
            &self.cq,
            &self.cq,
            context(index, generation),
        ) {
            Ok(rq) => rq,
            Err(e) => {
                self.stats.refused += 1;
                REFUSED.line(format_args!("refusing the connection from {peer}: {e}"));
                let _ = rio::deregister_buffer(buffer);
                self.free.push(index);
                return;
            }
        };
        self.conns[index] = Some(Conn {
            rq: Some(rq),
            buffer,
            generation,
            peer,
            receives: 0,
            sending: false,
            ready: VecDeque::new(),
            sent: 0,
            eof: false,
            failed: false,
        });
        self.open += 1;
        self.stats.connections += 1;
        for s in 0..self.pending {
            self.receive(index, s);
        }
    }

    /// Posts a receive into `slot` (deferred).
    fn receive(&mut self, index: usize, slot: u32) {
        let Some(c) = self.conns[index].as_ref() else {
            return;
        };
        let Some(rq) = c.rq.as_ref() else { return };
        if c.eof || c.failed {
            return;
        }
        let buf = self.slice(c, slot, 0, self.slot);
        let r = rq.receive(buf, RioFlags::DEFER, u64::from(slot));
        self.after_request(index, r.map(|()| false));
    }

    /// Sends the rest of the oldest data waiting, unless a send is in flight.
    fn send_next(&mut self, index: usize) {
        let Some(c) = self.conns[index].as_ref() else {
            return;
        };
        let Some(rq) = c.rq.as_ref() else { return };
        if c.sending || c.failed {
            return;
        }
        let Some(&(slot, len)) = c.ready.front() else {
            return;
        };
        let buf = self.slice(c, slot, c.sent, len - c.sent);
        let r = rq.send(buf, RioFlags::DEFER, SEND | u64::from(slot));
        self.after_request(index, r.map(|()| true));
    }

    /// Books a request just made (`Ok(is_send)`), or fails the connection.
    fn after_request(&mut self, index: usize, r: Result<bool, Error>) {
        let Some(c) = self.conns[index].as_mut() else {
            return;
        };
        match r {
            Ok(true) => c.sending = true,
            Ok(false) => c.receives += 1,
            Err(e) => {
                CONN_FAILED.line(format_args!("connection from {}: {e}", c.peer));
                self.stats.errors += 1;
                c.failed = true;
            }
        }
        self.deferred = true;
        self.touched.push(index);
    }

    fn handle(&mut self, r: &RioResult) {
        let index = (r.socket_context & 0xffff_ffff) as usize;
        let Some(index) = index.checked_sub(1) else {
            return;
        };
        let generation = (r.socket_context >> 32) as u32;
        let Some(Some(c)) = self.conns.get_mut(index) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        self.touched.push(index);
        let slot = (r.request_context & (SEND - 1)) as u32;
        if r.request_context & SEND != 0 {
            c.sending = false;
            if r.status != 0 {
                if r.status != libc::ECANCELED && !c.failed {
                    c.failed = true;
                    self.stats.errors += 1;
                }
                return;
            }
            self.stats.bytes += u64::from(r.bytes);
            c.sent += r.bytes;
            let Some(&(front, len)) = c.ready.front() else {
                return;
            };
            debug_assert_eq!(front, slot);
            if c.sent >= len {
                c.ready.pop_front();
                c.sent = 0;
                self.receive(index, slot);
            }
            self.send_next(index);
            return;
        }
        c.receives -= 1;
        match r.status {
            0 if r.bytes == 0 => c.eof = true,
            0 => {
                if !c.failed {
                    self.stats.messages += 1;
                    c.ready.push_back((slot, r.bytes));
                    self.send_next(index);
                }
            }
            libc::ECANCELED => {}
            _ => {
                if !c.failed {
                    c.failed = true;
                    self.stats.errors += 1;
                }
            }
        }
    }

    /// Commits the batch's requests, then closes what is done and frees
    /// what has nothing outstanding.
    fn finish_batch(&mut self) -> Result<(), String> {
        if self.deferred {
            let live = self
                .touched
                .iter()
                .find_map(|&i| self.conns[i].as_ref().and_then(|c| c.rq.as_ref()));
            if let Some(rq) = live {
                rq.commit().map_err(|e| format!("commit: {e}"))?;
            }
            self.deferred = false;
        }
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &i in &touched {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let drained = c.eof && c.ready.is_empty() && !c.sending;
            if c.rq.is_some() && (c.failed || drained) {
                c.rq = None; // cancels what is still pending
            }
            if c.rq.is_none() && c.receives == 0 && !c.sending {
                if let Err(e) = rio::deregister_buffer(c.buffer) {
                    CONN_FAILED.line(format_args!("freeing the buffer of {}: {e}", c.peer));
                }
                self.conns[i] = None;
                self.free.push(i);
                self.open -= 1;
            }
        }
        touched.clear();
        self.touched = touched;
        Ok(())
    }

    fn shutdown(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            c.rq = None;
        }
        if let Err(e) = self.cq.close() {
            crate::log::line(format_args!("closing the completion queue: {e}"));
        }
        for c in self.conns.iter_mut().filter_map(Option::take) {
            let _ = rio::deregister_buffer(c.buffer);
        }
    }

    fn run(
        &mut self,
        port: &CompletionPort<u64>,
        accepted: &mpsc::Receiver<(TcpStream, SocketAddr)>,
        batch: usize,
    ) -> Result<(), String> {
        let mut results = vec![RioResult::default(); batch.min(self.cq.size() as usize)];
        self.cq.notify().map_err(|e| format!("notify: {e}"))?;
        loop {
            let packet = match port.get(None) {
                Ok(p) => p,
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(format!("get: {e}")),
            };
            match packet.key {
                ACCEPT_KEY => {
                    while let Ok((stream, peer)) = accepted.try_recv() {
                        self.open(stream, peer);
                    }
                    self.finish_batch()?;
                }
                CQ_KEY => {
                    let mut taken = 0;
                    while taken < batch {
                        let want = (batch - taken).min(results.len());
                        let n = self
                            .cq
                            .dequeue(&mut results[..want])
                            .map_err(|e| format!("dequeue: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        for r in &results[..n] {
                            self.handle(r);
                        }
                        taken += n;
                    }
                    self.finish_batch()?;
                    // Re-armed only now: this batch's requests are out.
                    match self.cq.notify() {
                        Ok(()) => {}
                        // Stopping closes the port whenever it likes,
                        // between this worker's get and its re-arming too.
                        Err(_) if port.is_closed() => return Ok(()),
                        Err(e) => return Err(format!("notify: {e}")),
                    }
                }
                _ => {}
            }
        }
    }
}

/// Accepts until `stop`, handing each connection to the worker.
fn accept_loop(
    listener: TcpListener,
    port: CompletionPort<u64>,
    tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    stop: Arc<AtomicBool>,
) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if tx.send((stream, peer)).is_err() || port.post(ACCEPT_KEY, 0, Ok(0)).is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: every accept fails until
                    // connections close, so wait and say so now and then.
                    static FAILED: Every = Every::second();
                    FAILED.line(format_args!("tcp-echo: accept: {e}; retrying in 50 ms"));
                    thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
}

/// The server, running: its worker and accept thread.
pub struct RioTcpEcho {
    local: SocketAddr,
    port: CompletionPort<u64>,
    halt: Arc<AtomicBool>,
    worker: JoinHandle<(Stats, Result<(), String>)>,
    acceptor: JoinHandle<()>,
    cq_backend: Backend,
}

impl RioTcpEcho {
    /// Listens on `addr` and starts serving.
    pub fn start(addr: SocketAddr, opts: &EchoOptions) -> Result<RioTcpEcho, String> {
        opts.validate()?;
        let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
        RioTcpEcho::start_on(listener, opts)
    }

    /// Serves on a listening socket (a shard of a reuseport group).
    pub fn start_on(listener: TcpListener, opts: &EchoOptions) -> Result<RioTcpEcho, String> {
        opts.validate()?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?;
        let port: CompletionPort<u64> = CompletionPort::builder()
            .concurrency(1)
            .backend(opts.backend)
            .build()
            .map_err(|e| format!("creating the completion port: {e}"))?;
        let cq = CompletionQueue::with_backend(
            opts.cq_size() as u32,
            Notify::port(&port, CQ_KEY, 0),
            opts.backend,
        )
        .map_err(|e| format!("creating the completion queue: {e}"))?;
        let cq_backend = cq.backend();

        let (tx, rx) = mpsc::channel();
        let halt = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            cq,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            open: 0,
            pending: opts.pending as u32,
            slot: opts.buf_size as u32,
            max: opts.connections(),
            stats: Stats::default(),
            touched: Vec::new(),
            deferred: false,
        };
        let wport = port.clone();
        let batch = opts.batch;
        let worker: JoinHandle<(Stats, Result<(), String>)> = thread::Builder::new()
            .name("tcp-echo-rio".into())
            .spawn(move || {
                let r = worker.run(&wport, &rx, batch);
                worker.shutdown();
                (worker.stats, r)
            })
            .map_err(|e| format!("starting the worker: {e}"))?;
        let (aport, ahalt) = (port.clone(), halt.clone());
        let acceptor = thread::Builder::new()
            .name("tcp-echo-accept".into())
            .spawn(move || accept_loop(listener, aport, tx, ahalt));
        let acceptor = match acceptor {
            Ok(h) => h,
            Err(e) => {
                port.close();
                let _ = worker.join();
                return Err(format!("starting the accept thread: {e}"));
            }
        };
        Ok(RioTcpEcho {
            local,
            port,
            halt,
            worker,
            acceptor,
            cq_backend,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// True once the worker has ended (on an error).
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }

    /// Stops it: what it did, and its error if it failed.
    pub fn stop(self) -> (Stats, Result<(), String>) {
        self.halt.store(true, Ordering::Relaxed);
        let _ = self.acceptor.join();
        self.port.close();
        self.worker
            .join()
            .unwrap_or_else(|_| (Stats::default(), Err("the worker panicked".into())))
    }
}

/// `ringport serve tcp-echo --mode rio-port`: serves until `duration` or
/// `stop()`.
pub fn serve(
    addr: SocketAddr,
    opts: &EchoOptions,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
) -> Result<(), String> {
    let server = RioTcpEcho::start(addr, opts)?;
    println!("listening on {} (tcp-echo, mode rio-port)", server.local);
    println!(
        "backend {}, completion queue backend {}, 1 thread, {} receives of {} bytes pending per connection, at most {} connections, batch {}",
        server.port.backend(),
        server.cq_backend,
        opts.pending,
        opts.buf_size,
        opts.connections(),
        opts.batch
    );
    match duration {
        Some(d) => println!("stopping after {d:?} or on Ctrl-C"),
        None => println!("stopping on Ctrl-C"),
    }
    let deadline = duration.map(|d| Instant::now() + d);
    while deadline.is_none_or(|d| Instant::now() < d) && !stop() && !server.is_finished() {
        thread::sleep(Duration::from_millis(20));
    }
    let (s, result) = server.stop();
    println!(
        "tcp-echo stopped: {} connections, {} messages, {} bytes echoed, {} errors, {} refused",
        s.connections, s.messages, s.bytes, s.errors, s.refused
    );
    result
}
