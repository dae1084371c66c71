//! Windows-style I/O completion ports and Registered I/O for Linux.
//!
//! A [`CompletionPort`] is a queue of completion [`Packet`]s that a pool of
//! threads takes from: waiting threads are released LIFO, and only while
//! fewer than the port's concurrency limit are active, so a hot thread keeps
//! working and cold ones stay asleep. [`WorkerPool`] is the classic server
//! loop over a port.
//!
//! ```
//! use ringport::{CompletionPort, WorkerPool};
//!
//! let port = CompletionPort::<u64>::new(0)?;
//! let results = CompletionPort::<u64>::new(0)?;
//! let sink = results.clone();
//! let pool = WorkerPool::start(&port, 4, move |packet| {
//!     sink.post(packet.key, packet.token * 2, Ok(0)).ok();
//! })?;
//! for i in 0..10 {
//!     port.post(i, i, Ok(0))?;
//! }
//! let total: u64 = (0..10).map(|_| results.get(None).unwrap().token).sum();
//! assert_eq!(total, 90);
//! pool.stop()?;
//! # Ok::<(), ringport::Error>(())
//! ```
#![warn(missing_docs)]

mod error;
#[cfg(not(loom))]
mod io;
#[cfg(not(loom))]
mod pool;
mod port;
#[cfg(not(loom))]
pub mod reuseport;
#[cfg(not(loom))]
pub mod rio;
mod sync;
#[cfg(not(loom))]
mod sys;

pub use error::Error;
#[cfg(not(loom))]
pub use io::Handle;
#[cfg(not(loom))]
pub use pool::{PoolBuilder, PoolReport, WorkerPool};
pub use port::Buf;
#[cfg(not(loom))]
pub use port::{
    cpu_count, BlockingGuard, Builder, CompletionPort, Packet, Payload, Stats, ThreadLoad,
};
#[cfg(not(loom))]
pub use sys::driver::Started;
#[cfg(not(loom))]
pub use sys::inflight::OpId;
#[cfg(not(loom))]
pub use sys::Backend;

/// The port's engine, exposed for the loom model in `tests/loom.rs` only.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_model {
    pub use crate::port::core::Core;
    pub use crate::port::waiter::Waiter;
}

/// The examples in README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
