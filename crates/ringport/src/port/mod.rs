//! The completion port: a queue of completion packets that a pool of threads
//! takes from, released LIFO under a concurrency limit.

#[cfg(not(loom))]
mod activity;
mod buf;
#[cfg(not(loom))]
mod completion_port;
pub(crate) mod core;
mod packet;
mod park;
pub(crate) mod queue;
pub(crate) mod state;
mod stats;
pub(crate) mod waiter;

pub use self::buf::Buf;
#[cfg(not(loom))]
pub(crate) use self::completion_port::Shared;
#[cfg(not(loom))]
pub use self::completion_port::{cpu_count, BlockingGuard, Builder, CompletionPort};
pub use self::packet::{Packet, Payload};
pub use self::stats::{Stats, ThreadLoad};
