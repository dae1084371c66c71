//! `ringport serve udp-echo --mode rio-polled|rio-event|rio-port`: a UDP
//! echo server on Registered I/O, one thread.
//!
//! - One request queue on the socket, one completion queue for its receives
//!   and sends, and one registered buffer cut into `--pending` slots. A slot
//!   is a data slice and an address slice: a receive (`receive_ex`) fills
//!   both, the echo (`send_ex`) sends the data back to that address from the
//!   same memory, and when the send completes the slot's receive is posted
//!   again. No byte is copied in user space.
//! - Every request made while handling a batch of results is deferred and
//!   the batch ends with one `commit`: one system call per batch.
//! - How the thread learns that results are waiting is the mode: it spins on
//!   `dequeue` (rio-polled), waits on the queue's event and dequeues until
//!   empty (rio-event), or takes the packet the queue sends to a completion
//!   port (rio-port). It re-arms the notification only after the batch.
//! - With `--protocol sockperf` the thread borrows a received slot's bytes
//!   (`rio::borrow_mut`) to read the header and clear its client flag, and
//!   sends back only what asks for a reply; the slot receives again at once
//!   otherwise.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ringport::rio::{
    self, BufferId, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult, ADDRESS_LEN,
};
use ringport::{Backend, CompletionPort, Error};

use super::sockperf::{answer_datagram, Protocol};
use super::Summary;

/// How the server learns that results are waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    Polled,
    Event,
    Port,
}

impl EchoMode {
    /// The mode for a `--mode` name, if it is one of these.
    pub fn from_sink(mode: super::sink::Mode) -> Option<EchoMode> {
        use super::sink::Mode;
        match mode {
            Mode::RioPolled => Some(EchoMode::Polled),
            Mode::RioEvent | Mode::RioEventPolled => Some(EchoMode::Event),
            Mode::RioPort => Some(EchoMode::Port),
            _ => None,
        }
    }
}

/// Set in a send's request context (the slot index is below it).
const SEND: u64 = 1 << 32;
/// The port packet that announces results.
const CQ_KEY: u64 = 1;
/// How long a wait lasts before the thread looks at the stop flag.
const SLICE: Duration = Duration::from_millis(50);
/// Results taken per dequeue.
const BATCH: usize = 256;

/// A running server; [`stop`](Self::stop) ends it.
pub struct RioUdpEcho {
    addr: SocketAddr,
    backend: Backend,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Summary>>,
}

/// The thread's queues and memory.
struct Echo {
    mode: EchoMode,
    cq: CompletionQueue,
    rq: RequestQueue,
    port: Option<CompletionPort<()>>,
    buffer: BufferId,
    slot_size: u32,
    pending: u32,
    protocol: Protocol,
    summary: Summary,
}

impl RioUdpEcho {
    /// Binds `addr` and starts serving with `pending` receives of up to
    /// `slot_size` bytes each, the queue (and port) on `backend`.
    pub fn start(
        addr: SocketAddr,
        mode: EchoMode,
        pending: usize,
        slot_size: usize,
        backend: Backend,
    ) -> Result<RioUdpEcho, String> {
        Self::start_with(addr, mode, pending, slot_size, backend, Protocol::Echo)
    }

    /// [`start`](Self::start), speaking `protocol`. Bad counts are refused
    /// before the socket is bound.
    pub fn start_with(
        addr: SocketAddr,
        mode: EchoMode,
        pending: usize,
        slot_size: usize,
        backend: Backend,
        protocol: Protocol,
    ) -> Result<RioUdpEcho, String> {
        let (pending, slot_size) = check(pending, slot_size)?;
        let socket = UdpSocket::bind(addr).map_err(|e| crate::args::bind_error(addr, e))?;
        let (pending, slot_size) = (pending as usize, slot_size as usize);
        RioUdpEcho::start_on(socket, mode, pending, slot_size, backend, protocol)
    }

    /// [`start_with`](Self::start_with) on a bound socket (a shard of a
    /// reuseport group).
    pub fn start_on(
        socket: UdpSocket,
        mode: EchoMode,
        pending: usize,
        slot_size: usize,
        backend: Backend,
        protocol: Protocol,
    ) -> Result<RioUdpEcho, String> {
        let (pending, slot_size) = check(pending, slot_size)?;
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        let rio = |e: Error| format!("setting up RIO: {e}");
        let port = match mode {
            EchoMode::Port => Some(
                CompletionPort::builder()
                    .concurrency(1)
                    .backend(backend)
                    .build()
                    .map_err(rio)?,
            ),
            _ => None,
        };
        let notify = match (&port, mode) {
            (Some(p), _) => Notify::port(p, CQ_KEY, ()),
            (None, EchoMode::Event) => Notify::Event,
            (None, _) => Notify::Polled,
        };
        // Every slot has a receive or a send outstanding, never both.
        let cq = CompletionQueue::with_backend(2 * pending, notify, backend).map_err(rio)?;
        let rq = RequestQueue::new(socket, pending, pending, &cq, &cq, 0).map_err(rio)?;
        let slot_bytes = slot_size as usize + ADDRESS_LEN as usize;
        let buffer = rio::register_buffer(pending as usize * slot_bytes).map_err(rio)?;
        let backend = cq.backend();
        let echo = Echo {
            mode,
            cq,
            rq,
            port,
            buffer,
            slot_size,
            pending,
            protocol,
            summary: Summary::default(),
        };
        for slot in 0..pending {
            echo.receive(slot, RioFlags::DEFER).map_err(rio)?;
        }
        echo.rq.commit().map_err(rio)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("rio-udp-echo".into())
            .spawn(move || echo.run(&flag))
            .map_err(|e| format!("starting the server thread: {e}"))?;
        Ok(RioUdpEcho {
            addr,
            backend,
            stop,
            thread: Some(thread),
        })
    }

    /// The completion queue's backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn shutdown(&mut self) -> Summary {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(s)) => s,
            Some(Err(_)) => Summary {
                fatal: Some("the server thread panicked".into()),
                ..Summary::default()
            },
            None => Summary::default(),
        }
    }
}

impl super::Echo for RioUdpEcho {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(mut self) -> Summary {
        self.shutdown()
    }
}

impl Drop for RioUdpEcho {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Echo {
    fn data(&self, slot: u32, len: u32) -> RioBuf {
        let at = slot * (self.slot_size + ADDRESS_LEN);
        RioBuf::new(self.buffer, at, len)
    }

    fn remote(&self, slot: u32) -> RioBuf {
        let at = slot * (self.slot_size + ADDRESS_LEN) + self.slot_size;
        RioBuf::new(self.buffer, at, ADDRESS_LEN)
    }

    fn receive(&self, slot: u32, flags: RioFlags) -> Result<(), Error> {
        let (data, remote) = (self.data(slot, self.slot_size), self.remote(slot));
        self.rq
            .receive_ex(data, None, Some(remote), flags, slot as u64)
    }

    fn run(mut self, stop: &AtomicBool) -> Summary {
        if let Err(e) = self.serve(stop) {
            self.summary.fatal = Some(e);
        }
        let _ = self.cq.close();
        self.summary
    }

    fn serve(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let mut results = vec![RioResult::default(); BATCH];
        let fail = |e: Error| e.to_string();
        if self.mode != EchoMode::Polled {
            self.cq.notify().map_err(fail)?;
        }
        while !stop.load(Ordering::Relaxed) {
            match self.mode {
                EchoMode::Polled => {}
                EchoMode::Event => match self.cq.wait(Some(SLICE)) {
                    Ok(()) => {}
                    Err(Error::Timeout) => continue,
                    Err(e) => return Err(fail(e)),
                },
                EchoMode::Port => {
                    let port = self.port.as_ref().ok_or("no port")?;
                    match port.get(Some(SLICE)) {
                        Ok(_) => {}
                        Err(Error::Timeout) => continue,
                        // io_uring may interrupt a wait to run completions.
                        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                            continue
                        }
                        Err(e) => return Err(fail(e)),
                    }
                }
            }
            // Dequeue until empty, then one commit for the batch's requests.
            let mut handled = 0;
            loop {
                let n = self.cq.dequeue(&mut results).map_err(fail)?;
                for r in &results[..n] {
                    self.handle(r).map_err(fail)?;
                }
                handled += n;
                if n < results.len() {
                    break;
                }
            }
            if handled > 0 {
                self.rq.commit().map_err(fail)?;
            } else if self.mode == EchoMode::Polled {
                std::hint::spin_loop();
            }
            if self.mode != EchoMode::Polled {
                self.cq.notify().map_err(fail)?;
            }
        }
        Ok(())
    }

    /// A received datagram goes back from the same slot; a finished send
    /// frees its slot for the next receive. Failed requests are counted and
    /// their slots receive again.
    fn handle(&mut self, r: &RioResult) -> Result<(), Error> {
        let slot = (r.request_context & (SEND - 1)) as u32;
        if slot >= self.pending {
            return Err(Error::InvalidArgument("a result for no slot"));
        }
        let sent = r.request_context & SEND != 0;
        match r.status {
            0 if sent => self.summary.bytes += r.bytes as u64,
            // A datagram of 0 bytes is a datagram too (the port mode
            // echoes it).
            0 => {
                self.summary.messages += 1;
                let bytes = match self.protocol {
                    Protocol::Echo => Some(r.bytes),
                    Protocol::Sockperf => {
                        let mut msg = rio::borrow_mut(&self.data(slot, r.bytes))?;
                        answer_datagram(&mut msg).map(|n| n as u32)
                    }
                };
                let Some(bytes) = bytes else {
                    return self.receive(slot, RioFlags::DEFER);
                };
                let (data, remote) = (self.data(slot, bytes), self.remote(slot));
                return self.rq.send_ex(
                    data,
                    None,
                    Some(remote),
                    RioFlags::DEFER,
                    slot as u64 | SEND,
                );
            }
            // Longer than the slot: what fits is not the datagram.
            libc::EMSGSIZE if !sent => self.summary.truncated += 1,
            _ => self.summary.errors += 1,
        }
        self.receive(slot, RioFlags::DEFER)
    }
}

/// The receives kept pending and the bytes of each slot, checked.
fn check(pending: usize, slot_size: usize) -> Result<(u32, u32), String> {
    let pending = u32::try_from(pending)
        .ok()
        .filter(|p| (1..=4096).contains(p))
        .ok_or("--pending must be 1 to 4096 in the RIO modes")?;
    let slot_size = u32::try_from(slot_size)
        .ok()
        .filter(|s| (1..=crate::args::MAX_UDP as u32).contains(s))
        .ok_or("--buf-size must be 1 to 65,507")?;
    Ok((pending, slot_size))
}
