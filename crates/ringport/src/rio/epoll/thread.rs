//! The epoll engine's thread: it sleeps in `epoll_wait` on the sockets of
//! the completion queue's request queues and, when one is ready, carries out
//! its waiting requests in order, queueing their results (see
//! [`poller`](super::poller) for how sockets are watched).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::poller::{Watched, STOP_EVENT};
use super::queue::{EpollQueue, Leftovers};
use crate::sync::lock;

/// Starts the engine thread of `inner`.
pub(super) fn spawn(inner: Arc<EpollQueue>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("ringport-rio-epoll".into())
        .spawn(move || run(&inner))
}

/// The engine thread: waits for readiness and carries out what it allows,
/// until the queue closes.
fn run(inner: &EpollQueue) {
    let poller = &inner.poller;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut ready: Vec<(Arc<Watched>, u32)> = Vec::with_capacity(events.len());
    let mut batch = Leftovers::default();
    loop {
        // SAFETY: the buffer holds 64 events; the epoll fd lives as long as
        // `inner`.
        let n = unsafe {
            libc::epoll_wait(
                poller.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                -1,
            )
        };
        if poller.stopping.load(Ordering::SeqCst) {
            return;
        }
        if n < 0 {
            // EINTR; nothing else can fail on a valid epoll fd and buffer.
            continue;
        }
        {
            let table = lock(&poller.table);
            for ev in &events[..n as usize] {
                let (flags, token) = (ev.events, ev.u64);
                if token == STOP_EVENT {
                    poller.stop_event.reset();
                } else if let Some(w) = table.get(&token) {
                    ready.push((w.clone(), flags));
                }
            }
        }
        let hangup = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        for (w, flags) in ready.drain(..) {
            if flags & (hangup | (libc::EPOLLIN | libc::EPOLLRDHUP) as u32) != 0 {
                inner.run_queue(&w, 0, &mut batch);
            }
            if flags & (hangup | libc::EPOLLOUT as u32) != 0 {
                inner.run_queue(&w, 1, &mut batch);
            }
        }
        inner.finish(&mut batch);
    }
}
