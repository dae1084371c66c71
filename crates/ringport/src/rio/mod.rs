// Layers of rio/ (each imports only from the layers below it; no cycle):
//
//   front     mod.rs (the public names) · cq.rs CompletionQueue · rq.rs RequestQueue
//                 │  names no engine: only CqShared and Attachment
//   dispatch  engine.rs: CqShared { CqEngine::Uring | CqEngine::Epoll },
//                 │  Attachment (a socket to one queue's engine); the one file naming both
//   engines   uring/  {notification, resize} → queue → chain → request_table → lane
//             epoll/  mod → thread → queue → {poller → io, ring}
//                 │  each names only the bottom, never the other engine
//   bottom    request (Op, Request, RioResult) → rq_shared → charge (CqCapacity,
//             CqCounters) · notify · buffer → error → flags, slice · addr
//   below     crate::sys: backend choice, the io_uring ring, eventfd, sockaddr codec
//
// layers.rs checks this on the source: no cycle, no engine named from above
// the dispatch module or from below it, no engine naming the other.
//

//! Registered I/O (Windows RIO) on io_uring, or on epoll where io_uring is
//! switched off.
//!
//! The model, as in Windows:
//! - **Buffers** are registered once ([`register_buffer`]) and named by a
//!   [`BufferId`]; a [`RioBuf`] names a slice of one. A slice out of bounds
//!   or of a deregistered buffer is refused when a request uses it.
//! - A **completion queue** ([`CompletionQueue`]) receives results
//!   ([`RioResult`]); [`dequeue`](CompletionQueue::dequeue) reads them with
//!   no system call; [`notify`](CompletionQueue::notify) arms one
//!   notification: none ([`Notify::Polled`]), an event ([`Notify::Event`]),
//!   or a packet on a [`CompletionPort`](crate::CompletionPort)
//!   ([`Notify::port`]).
//! - A **request queue** ([`RequestQueue`]) holds one socket's receives and
//!   sends, each charged to a completion queue so that it never overflows.
//!   Flags ([`RioFlags`]) defer submission to batch it, keep a result from
//!   notifying, or ask a stream receive to fill its buffer.
//!
//! ```
//! use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};
//! use ringport::CompletionPort;
//! use std::net::UdpSocket;
//! use std::time::Duration;
//!
//! // Results for this queue are announced by one packet (key 9) on a port.
//! let port = CompletionPort::<u64>::new(0)?;
//! let cq = CompletionQueue::new(128, Notify::port(&port, 9, 0))?;
//! let server = UdpSocket::bind("127.0.0.1:0")?;
//! let addr = server.local_addr()?;
//! let rq = RequestQueue::new(server, 64, 64, &cq, &cq, 1)?;
//! let pool = rio::register_buffer(64 * 2048)?;
//! for i in 0..64 {
//!     rq.receive(RioBuf::new(pool, i * 2048, 2048), RioFlags::NONE, i as u64)?;
//! }
//!
//! cq.notify()?;
//! let client = UdpSocket::bind("127.0.0.1:0")?;
//! client.send_to(b"one", addr)?;
//! let packet = port.get(Some(Duration::from_secs(5)))?;
//! assert_eq!(packet.key, 9);
//!
//! let mut results = [RioResult::default(); 64];
//! let n = cq.dequeue(&mut results)?;
//! assert_eq!((n, results[0].bytes), (1, 3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it maps onto io_uring
//!
//! - Every completion queue owns a ring; its requests are submitted to that
//!   ring, so their completions land in its CQ ring, which `dequeue` reads.
//!   The ring is set up without `DEFER_TASKRUN`/`COOP_TASKRUN`, so the
//!   kernel posts completions while the owner spins in user space.
//! - Posting order: the kernel wakes requests parked on one socket newest
//!   first, so a request queue lets it hold one chain of its receives (and
//!   one of its sends) at a time, linked (`IOSQE_IO_LINK`) so that each
//!   starts when the one before it is over; requests posted meanwhile wait
//!   in user space and go as the next chain, in one `io_uring_enter`, when
//!   the engine takes the chain's last result out of the ring. A socket's
//!   pending receives thus take its bytes, or its datagrams, in posting
//!   order, and its sends put their bytes on the wire in posting order, as
//!   on Windows. `dequeue` makes a system call only to start such a chain.
//! - A request belongs to its queue, not to a thread: the kernel ends with
//!   `ECANCELED` a request whose submitting thread has exited by the time
//!   it would run (the data stays in the socket); the engine starts such a
//!   request again, at the head of its order, from the thread that finds
//!   its completion, and reports only its real result.
//! - `DEFER` keeps a request out of the kernel; the next request without
//!   it, or [`commit`](RequestQueue::commit), submits everything deferred in
//!   one `io_uring_enter`.
//! - Event notification is an eventfd registered with the ring
//!   (`IORING_REGISTER_EVENTFD`) and switched on and off with
//!   `IORING_CQ_EVENTFD_DISABLED` in the CQ ring's flags, a store to shared
//!   memory: arming it makes no system call. Port notification is a one-shot
//!   poll of the queue's ring fd, submitted to the port. The ring turns
//!   readable for any completion, so when the poll fires the port asks the
//!   queue first: if only `DONT_NOTIFY` results arrived, the queue sets them
//!   aside (for `dequeue`) and the port polls again; otherwise it queues the
//!   one packet.
//! - Registered memory is ordinary memory, not io_uring fixed buffers:
//!   requests use `IORING_OP_RECV`/`SEND`/`RECVMSG`/`SENDMSG` with plain
//!   pointers. Fixed buffers belong to one ring, so every completion queue
//!   would have to register every buffer, pinning it once per ring against
//!   `RLIMIT_MEMLOCK` (8 MiB for a normal user); `RECVMSG`/`SENDMSG`, which
//!   carry addresses, cannot use them; and on a socket they are slower,
//!   since socket data is copied either way and the read path costs more
//!   than the socket path (see BENCHMARKS.md, RIO). The registry still
//!   gives what registration gives on Windows: memory that cannot be freed
//!   while the kernel uses it, and bounds checked when a request is made.
//!
//! # The epoll backend
//!
//! Where io_uring is switched off (seccomp, `kernel.io_uring_disabled`,
//! gVisor, old kernels), or `RINGPORT_BACKEND=epoll` asks for it, a
//! completion queue runs on epoll with the same semantics
//! ([`CompletionQueue::backend`] says which; the choice follows the port's
//! rule, see [`Backend`](crate::Backend)):
//! - Results wait in a ring in user memory, written by one producer at a
//!   time and read by `dequeue` without a lock the producers take, so
//!   `dequeue` still makes no system call.
//! - A request without `DEFER` is attempted at once, non-blocking, by the
//!   thread making it if nothing waits before it on its socket (a system
//!   call, as `RIOReceive` makes one); otherwise, or if it would block, it
//!   waits in its socket's queue, and the completion queue's engine thread,
//!   asleep in `epoll_wait` on the sockets of its request queues, carries it
//!   out when the socket is ready. One socket's requests are carried out in
//!   order, and their results queued in that order: the order the data
//!   arrived, whichever threads make the requests.
//! - `DEFER` keeps requests in user space until the next request without it
//!   or a commit starts them, in order.
//! - Notification is fired by whichever thread queues the first result
//!   without `DONT_NOTIFY` after `notify`: it signals the eventfd, or posts
//!   the packet to the port itself.
//! - Closing takes every waiting request back (waiting for a system call in
//!   progress on one, if any) and ends the engine thread before it releases
//!   their slices.
//!
//! # Limits
//! - `DONT_NOTIFY` keeps an event notification's eventfd quiet on the epoll
//!   backend only; on io_uring the kernel signals it for every completion,
//!   and [`CompletionQueue::wait`] goes back to sleep when it finds only
//!   such results. A thread polling the eventfd itself sees those wake-ups.
//! - The epoll backend costs a system call per request carried out, except
//!   for runs of datagram receives, which go out up to 64 to a `recvmmsg`
//!   (a `commit` queues its deferred receives first so that they can), and
//!   an engine thread per completion queue.
//! - On io_uring, a request posted while earlier ones of its kind on its
//!   queue wait in the kernel starts when the engine takes the last of their
//!   results out of the ring: in `dequeue`, `wait`, a notification's
//!   check, or a later request or commit on the same completion queue made
//!   while no thread is dequeuing. A program that posts sends and
//!   then waits for its peer without ever reading the completion queue may
//!   wait for them; one that reads its queue, or posts a run of requests
//!   with `DEFER` and one commit (they go to the kernel together), does not.

mod addr;
mod buffer;
mod charge;
mod cq;
mod engine;
mod epoll;
mod error;
mod flags;
#[cfg(test)]
mod layers;
mod notify;
mod request;
mod rq;
mod rq_shared;
mod slice;
mod spans;
mod uring;

pub use addr::{read_addr, write_addr, ADDRESS_LEN};
pub use buffer::{
    borrow, borrow_mut, buffer_len, deregister_buffer, register_buffer, BufMut, BufRef,
};
pub use cq::{CompletionQueue, CqStats};
pub use error::RioError;
pub use flags::{RequestKind, RioFlags};
pub use notify::{Notify, PortTarget};
pub use request::RioResult;
pub use rq::RequestQueue;
pub use slice::{BufferId, RioBuf, SliceUse};
