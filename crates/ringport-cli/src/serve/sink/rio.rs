//! The RIO sinks: one request queue on the socket and one completion queue,
//! a registered buffer cut into `--pending` slots, and the ways to learn
//! that results are waiting (polling, an event, a port packet).

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use ringport::rio::{
    self, BufferId, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult,
};
use ringport::{CompletionPort, Error};

use super::{spawn, Meter, Mode, Sink, SinkOptions};

/// One socket's RIO queues and receive buffers.
pub(super) struct RioQueue {
    // Field order: the request queue is dropped (its requests cancelled)
    // before the completion queue.
    rq: RequestQueue,
    pub(super) cq: CompletionQueue,
    buffer: BufferId,
    slot: u32,
    pending: u32,
    size: usize,
}

impl RioQueue {
    fn new(sock: UdpSocket, opts: &SinkOptions, notify: Notify) -> Result<RioQueue, String> {
        let pending = opts.pending as u32;
        let slot = opts.slot() as u32;
        let cq = CompletionQueue::with_backend(pending, notify, opts.backend)
            .map_err(|e| format!("creating the completion queue: {e}"))?;
        let rq = RequestQueue::new(sock, pending, 0, &cq, &cq, 1)
            .map_err(|e| format!("creating the request queue: {e}"))?;
        let buffer = rio::register_buffer(pending as usize * slot as usize).map_err(|e| {
            format!(
                "registering {} bytes: {e}",
                pending as usize * slot as usize
            )
        })?;
        let q = RioQueue {
            rq,
            cq,
            buffer,
            slot,
            pending,
            size: opts.size,
        };
        for i in 0..pending {
            q.post(i as u64)?;
        }
        q.rq.commit().map_err(|e| format!("commit: {e}"))?;
        Ok(q)
    }

    fn slice(&self, i: u64, len: u32) -> RioBuf {
        RioBuf::new(self.buffer, i as u32 * self.slot, len)
    }

    fn post(&self, i: u64) -> Result<(), String> {
        match self
            .rq
            .receive(self.slice(i, self.slot), RioFlags::DEFER, i)
        {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("posting a receive: {e}")),
        }
    }

    /// Counts `results` and re-posts their buffers (deferred); returns how
    /// many were re-posted.
    fn handle(&self, m: &mut Meter, results: &[RioResult]) -> Result<u32, String> {
        let mut posted = 0;
        for r in results {
            match r.status {
                0 => {
                    let len = r.bytes as usize;
                    if len == self.size {
                        m.datagram(len, || None);
                    } else {
                        let b = rio::borrow(&self.slice(r.request_context, r.bytes.min(self.slot)));
                        m.datagram(len, || b.as_deref().ok());
                    }
                }
                libc::ECANCELED => continue,
                libc::EMSGSIZE => m.truncated(),
                _ => m.error(),
            }
            self.post(r.request_context)?;
            posted += 1;
        }
        Ok(posted)
    }

    fn commit(&self) -> Result<(), String> {
        self.rq.commit().map_err(|e| format!("commit: {e}"))
    }
}

impl Drop for RioQueue {
    fn drop(&mut self) {
        let _ = self.cq.close();
        let _ = rio::deregister_buffer(self.buffer);
    }
}

/// rio-polled, rio-event, rio-event-polled: one thread owns the queue.
pub(super) fn start_direct(
    sink: &mut Sink,
    sock: UdpSocket,
    opts: &SinkOptions,
) -> Result<(), String> {
    let mode = opts.mode;
    let notify = if mode == Mode::RioPolled {
        Notify::Polled
    } else {
        Notify::Event
    };
    let q = Arc::new(RioQueue::new(sock, opts, notify)?);
    sink.cq = Some(q.clone());
    let batch = opts.batch.min(opts.pending);
    let refill = (q.pending / 4).max(1);
    spawn(sink, 0, opts, move |m| {
        let mut results = vec![RioResult::default(); batch];
        let mut deferred = 0u32;
        let dequeue = |m: &mut Meter, results: &mut [RioResult]| {
            let n = q.cq.dequeue(results).map_err(|e| format!("dequeue: {e}"))?;
            m.dequeued(n);
            Ok::<usize, String>(n)
        };
        loop {
            if m.should_stop() {
                return Ok(());
            }
            if mode == Mode::RioPolled {
                let n = dequeue(m, &mut results)?;
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                deferred += q.handle(m, &results[..n])?;
                if deferred >= refill {
                    q.commit()?;
                    deferred = 0;
                }
                m.publish();
                continue;
            }
            // Event modes: arm, wait, take.
            q.cq.notify().map_err(|e| format!("notify: {e}"))?;
            m.notified();
            loop {
                match q.cq.wait(Some(Duration::from_millis(20))) {
                    Ok(()) => break,
                    Err(Error::Timeout) => {
                        if m.should_stop() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(format!("wait: {e}")),
                }
            }
            let n = dequeue(m, &mut results)?;
            deferred += q.handle(m, &results[..n])?;
            if mode == Mode::RioEventPolled {
                loop {
                    let n = dequeue(m, &mut results)?;
                    if n == 0 || m.halted() {
                        break;
                    }
                    deferred += q.handle(m, &results[..n])?;
                    if deferred >= refill {
                        q.commit()?;
                        deferred = 0;
                    }
                }
            }
            // Everything re-posted before arming again.
            q.commit()?;
            deferred = 0;
            m.publish();
        }
    })
}

/// rio-port (one thread) and rio-port-mt (N threads): the queue notifies a
/// completion port; whoever takes the packet owns the queue until it re-arms.
pub(super) fn start_port(
    sink: &mut Sink,
    sock: UdpSocket,
    opts: &SinkOptions,
) -> Result<(), String> {
    const KEY: u64 = 7;
    let threads = opts.thread_count();
    let port: CompletionPort<u64> = sink.port(opts)?;
    let q = Arc::new(RioQueue::new(sock, opts, Notify::port(&port, KEY, 0))?);
    sink.cq = Some(q.clone());
    let cap = opts.batch;
    let chunk = opts.batch.min(opts.pending);
    for i in 0..threads {
        let (port, q) = (port.clone(), q.clone());
        spawn(sink, i, opts, move |m| {
            let mut results = vec![RioResult::default(); chunk];
            loop {
                if m.should_stop() {
                    return Ok(());
                }
                match port.get(None) {
                    Ok(p) if p.key == KEY => {}
                    Ok(_) => continue,
                    Err(Error::Closed) => return Ok(()),
                    Err(e) => return Err(format!("get: {e}")),
                }
                // This thread owns the queue until it re-arms it.
                let mut taken = 0;
                while taken < cap {
                    let want = (cap - taken).min(chunk);
                    let n =
                        q.cq.dequeue(&mut results[..want])
                            .map_err(|e| format!("dequeue: {e}"))?;
                    m.dequeued(n);
                    if n == 0 {
                        break;
                    }
                    q.handle(m, &results[..n])?;
                    taken += n;
                }
                q.commit()?;
                m.publish();
                if m.halted() {
                    return Ok(());
                }
                match q.cq.notify() {
                    Ok(()) => m.notified(),
                    Err(_) if m.halted() => return Ok(()),
                    Err(e) => return Err(format!("notify: {e}")),
                }
            }
        })?;
    }
    // Armed once the threads are there to take the packet.
    q.cq.notify().map_err(|e| format!("notify: {e}"))?;
    Ok(())
}
