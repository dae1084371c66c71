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
