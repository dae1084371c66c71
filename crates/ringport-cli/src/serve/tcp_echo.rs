//! `ringport serve tcp-echo`: TCP echo on one completion port.
//!
//! The listener keeps `--accepts` accepts pending. Each connection has
//! exactly **one operation in flight at a time**: a receive; when it
//! completes with data, the send of that data (re-sent from where it stopped
//! after a partial send, until all of it is out); then the next receive. That
//! keeps each connection's bytes in order whichever worker takes which packet
//! and needs no per-connection lock, because only the worker holding the
//! connection's one packet touches it. (Several receives pending on one
//! stream would need sequence numbers and a reassembly buffer to put their
//! data back in order, and two sends pending on one stream could interleave
//! after a partial send; for an echo server, which cannot send before it has
//! received, one operation at a time costs nothing.) Many connections are
//! served at once, each with its own pending receive, so the port always has
//! work for every worker. A 0-byte receive (the peer closed) or any error
//! closes the connection; the buffer is reused from packet to packet. Sends
//! use skip-on-success (`send_now`, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS)
//! unless `--no-skip`: a send that completes at once, as nearly all do, is
//! followed on the spot by the next receive instead of by a packet.
//!
//! With `--protocol sockperf` the received bytes go through the
//! connection's [`Stream`] first, and only the replies they complete are
//! sent (nothing, and the next receive at once, when a read completes
//! none); the connection's one operation in flight keeps its `Stream`
//! uncontended.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringport::{CompletionPort, Error, Handle, Packet, Started};

use super::server::{Ledger, Options, Running, ServerState, WorkerCounters};
use super::sockperf::{Protocol, Stream};
use super::Kind;
use crate::args::bind_error;

/// A running TCP echo server.
pub type TcpEcho = Running<TcpOp, TcpState>;

/// What an operation was; the packet's key says on which socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOp {
    Accept,
    /// Retry an accept after running out of descriptors or memory.
    AcceptLater,
    Recv,
    Send,
}

const LISTENER: u64 = 0;

/// A connection: its handle and, with `--protocol sockperf`, the message
/// a read cut off. Only the worker holding the connection's one packet
/// locks it, so the lock is never contended.
struct Conn {
    handle: Handle<TcpOp>,
    stream: Option<Mutex<Stream>>,
}

impl Deref for Conn {
    type Target = Handle<TcpOp>;
    fn deref(&self) -> &Handle<TcpOp> {
        &self.handle
    }
}

impl Conn {
    /// Turns received bytes into what goes back.
    fn answer(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let mut s = stream.lock().unwrap_or_else(PoisonError::into_inner);
        s.feed(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}

/// The connections, by key (index + 1).
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
}

pub struct TcpState {
    port: CompletionPort<TcpOp>,
    listener: Handle<TcpOp>,
    conns: Mutex<Conns>,
    buf_size: usize,
    skip: bool,
    protocol: Protocol,
    ledger: Ledger,
    /// Accepts failed in a row for want of descriptors or memory: the
    /// retry waits longer the longer it lasts (10 ms to 160 ms).
    starved: AtomicU32,
}

impl TcpEcho {
    /// Binds `addr` and starts serving.
    pub fn start(addr: SocketAddr, opts: &Options) -> Result<TcpEcho, String> {
        opts.validate(Kind::TcpEcho)?;
        let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
        TcpEcho::start_on(listener, opts)
    }

    /// Starts serving on a listening socket (a shard of a reuseport group).
    pub fn start_on(listener: TcpListener, opts: &Options) -> Result<TcpEcho, String> {
        opts.validate(Kind::TcpEcho)?;
        // std listens with a backlog of 128; a burst of connects wants more.
        // SAFETY: listen on a socket we own; it only changes the backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 1024) };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let port = opts.port()?;
        let listener = port
            .associate(listener, LISTENER)
            .map_err(|e| format!("associating the listener: {e}"))?;
        let state = TcpState {
            port: port.clone(),
            listener,
            conns: Mutex::new(Conns::default()),
            buf_size: opts.buf_size,
            skip: opts.skip,
            protocol: opts.protocol,
            ledger: Ledger::new("tcp-echo", opts.threads),
            starved: AtomicU32::new(0),
        };
        TcpEcho::run(port, addr, state, opts, TcpState::handle, |s| {
            for _ in 0..opts.accepts {
                s.listener
                    .accept(TcpOp::Accept)
                    .map_err(|e| format!("starting an accept: {e}"))?;
            }
            Ok(())
        })
    }
}

impl ServerState for TcpState {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

impl TcpState {
    fn conn(&self, key: u64) -> Option<Arc<Conn>> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let i = usize::try_from(key).ok()?.checked_sub(1)?;
        conns.slots.get(i)?.clone()
    }

    fn close_conn(&self, key: u64) {
        let taken = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            let i = key as usize - 1;
            let taken = conns.slots.get_mut(i).and_then(Option::take);
            if taken.is_some() {
                conns.free.push(i);
            }
            taken
        };
        // Dropped outside the lock: closing the socket is a system call.
        drop(taken);
    }

    fn handle(&self, w: usize, mut p: Packet<TcpOp>) {
        let c = self.ledger.of(w);
        let key = p.key;
        match (key, p.token) {
            (LISTENER, TcpOp::Accept) => return self.accepted(w, &mut p),
            (LISTENER, TcpOp::AcceptLater) => {
                if let Err(e) = self.listener.accept(TcpOp::Accept) {
                    self.stopped_accepting(e);
                }
                return;
            }
            (LISTENER, _) | (_, TcpOp::Accept | TcpOp::AcceptLater) => return,
            _ => {}
        }
        let Some(conn) = self.conn(key) else { return };
        let next = match p.token {
            TcpOp::Recv => match (p.take_buf(), p.result) {
                (Some(buf), Ok(n)) if n > 0 => {
                    WorkerCounters::bump(&c.messages, 1);
                    let mut buf = buf.into_vec();
                    match conn.answer(&mut buf) {
                        Err(e) => Err(Some(e)),
                        Ok(()) if buf.is_empty() => self.receive(&conn, buf),
                        Ok(()) => self.send(&conn, buf),
                    }
                }
                // 0 bytes: the peer closed.
                (_, Ok(_)) => Err(None),
                (_, Err(e)) => Err(Some(e)),
            },
            _ => Ok(Some(p)),
        };
        // Follow sends that completed at once (skip-on-success) until one
        // is pending or all is sent and the next receive is pending.
        let mut next = next;
        loop {
            match next {
                Ok(None) => return,
                Ok(Some(mut sent)) => {
                    let n = match sent.result {
                        Ok(n) if n > 0 => n,
                        Ok(_) => {
                            next = Err(None);
                            continue;
                        }
                        Err(e) => {
                            next = Err(Some(e));
                            continue;
                        }
                    };
                    WorkerCounters::bump(&c.bytes, n as u64);
                    let Some(buf) = sent.take_buf() else {
                        next = Err(None);
                        continue;
                    };
                    let mut buf = buf.into_vec();
                    if n < buf.len() {
                        // A partial send: send the rest before receiving more.
                        buf.drain(..n);
                        next = self.send(&conn, buf);
                    } else {
                        next = self.receive(&conn, buf);
                    }
                }
                Err(e) => {
                    if let Some(e) = e {
                        if e.raw_os_error() != Some(libc::ECANCELED) {
                            WorkerCounters::bump(&c.errors, 1);
                        }
                    }
                    drop(conn);
                    return self.close_conn(key);
                }
            }
        }
    }

    /// Starts the next receive into `buf`, emptied (and grown back to a
    /// whole receive's room, which framing may have swapped away).
    fn receive(
        &self,
        conn: &Handle<TcpOp>,
        mut buf: Vec<u8>,
    ) -> Result<Option<Packet<TcpOp>>, Option<io::Error>> {
        buf.clear();
        if buf.capacity() < self.buf_size {
            buf.reserve_exact(self.buf_size);
        }
        conn.recv(buf, TcpOp::Recv)
            .map(|_| None)
            .map_err(|e| Some(e.into()))
    }

    /// Starts sending `buf`; with skip-on-success, a send that completed at
    /// once comes back as its packet.
    fn send(
        &self,
        conn: &Handle<TcpOp>,
        buf: Vec<u8>,
    ) -> Result<Option<Packet<TcpOp>>, Option<io::Error>> {
        let r = if self.skip {
            conn.send_now(buf, TcpOp::Send).map(|s| match s {
                Started::Done(p) => Some(p),
                Started::Pending(_) => None,
            })
        } else {
            conn.send(buf, TcpOp::Send).map(|_| None)
        };
        r.map_err(|e| Some(e.into()))
    }

    fn stopped_accepting(&self, e: Error) {
        if !matches!(e, Error::Closed) {
            self.ledger.fail(format!("cannot start an accept: {e}"));
        }
    }

    fn accepted(&self, w: usize, p: &mut Packet<TcpOp>) {
        let c = self.ledger.of(w);
        match &p.result {
            Ok(_) => {}
            Err(_) if p.is_cancelled() || self.port.is_closed() => return,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                // Out of descriptors or memory: every pending accept fails
                // the same way until connections close, so retry later,
                // later each time, and say so once a second at most.
                static OUT_OF: crate::log::Every = crate::log::Every::second();
                WorkerCounters::bump(&c.errors, 1);
                let streak = self.starved.fetch_add(1, Ordering::Relaxed).min(4);
                let delay = Duration::from_millis(10 << streak);
                OUT_OF.line(format_args!(
                    "tcp-echo: accept: {e}; retrying in {} ms",
                    delay.as_millis()
                ));
                if let Err(e) = self.port.timer(delay, LISTENER, TcpOp::AcceptLater) {
                    self.stopped_accepting(e);
                }
                return;
            }
            Err(_) => WorkerCounters::bump(&c.errors, 1),
        }
        self.starved.store(0, Ordering::Relaxed);
        // Keep the number of pending accepts up before serving this one.
        if let Err(e) = self.listener.accept(TcpOp::Accept) {
            self.stopped_accepting(e);
        }
        let Some(stream) = p.take_stream() else {
            return;
        };
        WorkerCounters::bump(&c.connections, 1);
        let _ = stream.set_nodelay(true);
        let key = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            match conns.free.pop() {
                Some(i) => i,
                None => {
                    conns.slots.push(None);
                    conns.slots.len() - 1
                }
            }
        } as u64
            + 1;
        let conn = match self.port.associate(stream, key) {
            Ok(handle) => Arc::new(Conn {
                handle,
                stream: (self.protocol == Protocol::Sockperf)
                    .then(|| Mutex::new(Stream::default())),
            }),
            Err(e) => {
                if !matches!(e, Error::Closed) {
                    WorkerCounters::bump(&c.errors, 1);
                }
                let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
                conns.free.push(key as usize - 1);
                return;
            }
        };
        {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.slots[key as usize - 1] = Some(conn.clone());
        }
        if conn
            .recv(Vec::with_capacity(self.buf_size), TcpOp::Recv)
            .is_err()
        {
            drop(conn);
            self.close_conn(key);
        }
    }
}
