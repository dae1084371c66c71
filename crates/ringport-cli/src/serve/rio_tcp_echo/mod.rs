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
//! - **`--protocol sockperf`** ([`framed`]): one receive at a time, so that
//!   a message a read cut off continues in the same slice; the slice's
//!   replies are moved to its front and sent from there.

mod accept;
mod framed;
mod running;

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringport::rio::{
    self, BufferId, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult,
};
use ringport::{Backend, CompletionPort, Error};

use super::sockperf::{Protocol, HEADER};
use crate::args::bind_error;
use crate::log::Every;
use accept::accept_loop;
use framed::Framing;
pub use running::{serve, RioTcpEcho};

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
    pub protocol: Protocol,
}

impl EchoOptions {
    pub fn new() -> EchoOptions {
        EchoOptions {
            pending: 4,
            buf_size: 16 << 10,
            batch: 1000,
            max_connections: MAX_CONNECTIONS,
            backend: Backend::Auto,
            protocol: Protocol::Echo,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.pending == 0 || self.pending > 64 {
            return Err("--pending must be between 1 and 64 for tcp-echo".into());
        }
        if self.buf_size == 0 || self.buf_size > 1 << 20 {
            return Err("--buf-size must be between 1 byte and 1 MiB in rio-port mode".into());
        }
        if self.protocol == Protocol::Sockperf && (self.buf_size < HEADER || self.pending < 2) {
            return Err(format!(
                "--protocol sockperf in rio-port mode needs --buf-size of at least {HEADER} bytes \
                 (and at least the largest message) and --pending of at least 2"
            ));
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
    /// `--protocol sockperf`: where the stream of messages stands.
    framing: Option<Framing>,
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
    protocol: Protocol,
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
            framing: (self.protocol == Protocol::Sockperf).then(|| Framing::new(self.pending)),
        });
        self.open += 1;
        self.stats.connections += 1;
        if self.protocol == Protocol::Sockperf {
            return self.receive_at(index, 0, 0);
        }
        for s in 0..self.pending {
            self.receive(index, s);
        }
    }

    /// Posts a receive into `slot` (deferred).
    fn receive(&mut self, index: usize, slot: u32) {
        self.receive_at(index, slot, 0)
    }

    /// Posts a receive into `slot` after its first `from` bytes (deferred).
    fn receive_at(&mut self, index: usize, slot: u32, from: u32) {
        let Some(c) = self.conns[index].as_ref() else {
            return;
        };
        let Some(rq) = c.rq.as_ref() else { return };
        if c.eof || c.failed {
            return;
        }
        let buf = self.slice(c, slot, from, self.slot - from);
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
                if c.framing.is_some() {
                    self.framed_sent(index, slot);
                } else {
                    self.receive(index, slot);
                }
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
                    if c.framing.is_some() {
                        return self.framed_received(index, slot, r.bytes);
                    }
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
