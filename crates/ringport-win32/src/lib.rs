//! A Win32-shaped C API over ringport: the completion ports, overlapped
//! Winsock and Registered I/O of `<windows.h>`, `<winsock2.h>` and
//! `<mswsock.h>`, so that Windows server code builds with g++ against the
//! headers in `include/` and runs on Linux unchanged.
//!
//! ```text
//! g++ -I crates/ringport-win32/include prog.cpp \
//!     -L target/release -l:libringport_win32.a -lpthread -ldl
//! ```
//!
//! Handles: a `SOCKET` is its Linux descriptor; ports, threads and events
//! live in a handle table ([`handles`]). The completion key is the packet's
//! key and the `OVERLAPPED*` its token ([`port::Token`]).
//!
//! Buffers: Windows lends the kernel the caller's memory (`WSABUF`, a
//! registered `RIO_BUF`) until the operation completes; ringport takes owned
//! buffers, so this crate copies. A send copies the caller's bytes when it
//! is issued; a receive lands in a buffer of ringport's and is copied into
//! the caller's `WSABUF`s (or registered memory) when its packet is taken
//! from the port (`GetQueuedCompletionStatus`) or its result dequeued
//! (`RIODequeueCompletion`), before that call returns. The contract a
//! Windows program already keeps (the memory stays valid until the
//! completion is reported) is exactly what makes that copy safe.
//!
//! No Rust panic crosses into C: every exported function runs under
//! [`ffi::guard`], which turns one into a failure with
//! `ERROR_INVALID_FUNCTION`.
//!
//! Activity: a thread that blocks in `WaitForSingleObject`,
//! `WaitForMultipleObjects`, `Sleep`, a blocking `connect`/`WSARecv`/`WSASend`
//! or console output (`printf`, `fprintf` from the headers) while it is
//! active on a port gives its slot up for the time it is blocked, as on
//! Windows ([`port::blocking`]; the port is the one the thread last took a
//! packet from, the only one ringport lets a thread be active on).
//!
//! Limits (what Windows does that this crate does not):
//! - Overlapped I/O completes to a completion port only: an OVERLAPPED's
//!   `hEvent` is not signalled, completion routines are refused
//!   (`WSAEOPNOTSUPP`), and a socket must be associated with a port before
//!   an overlapped call. `WSARecvFrom`/`WSASendTo` need an OVERLAPPED.
//! - Sockets only: no `CreateFile`/`ReadFile`/`WriteFile` (ringport's file
//!   I/O is there for a later `ReadFile` on an associated descriptor).
//! - `ConnectEx` cannot send data with the connection (`WSAEOPNOTSUPP`).
//! - On the epoll backend, associating a socket makes it non-blocking (the
//!   caller's descriptor shares the socket): synchronous calls on an
//!   associated socket can then fail with `WSAEWOULDBLOCK`.
//! - RIO: registered memory is mirrored, so it costs twice the memory and a
//!   copy per request; a send that shares bytes with one still in flight is
//!   accepted only if the bytes did not change meanwhile (`WSAEINVAL`
//!   otherwise). A request queue's bookkeeping (a few hundred bytes) is kept
//!   after its socket is closed, since results may still name it.
//!   `RIODequeueCompletion` on a queue whose notification is armed and has
//!   not fired returns `RIO_CORRUPT_CQ` (only the thread that took the
//!   notification may dequeue). Event notification runs a small thread per
//!   completion queue that turns ringport's eventfd into `SetEvent`.
//! - `CREATE_SUSPENDED`, named events, alertable waits and APCs are not
//!   supported; `GetQueuedCompletionStatusEx` ignores `fAlertable`.

pub mod accept;
pub mod error;
pub mod ffi;
pub mod handles;
pub mod overlapped;
pub mod port;
pub mod rio;
pub mod rio_cq;
pub mod sync;
pub mod thread;
pub mod winsock;
pub mod winsock_ext;
