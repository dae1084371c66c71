//! Associated handles and their operations: every operation issued on a
//! handle completes to its port as a packet with the handle's key.

mod addr;
mod buf;
#[cfg(not(loom))]
pub(crate) mod driver;
#[cfg(not(loom))]
mod handle;
#[cfg(not(loom))]
pub(crate) mod inflight;
#[cfg(not(loom))]
pub(crate) mod op;

pub use buf::Buf;
#[cfg(not(loom))]
pub use handle::Handle;
#[cfg(not(loom))]
pub use inflight::OpId;

/// How an operation started with skip-on-success (`*_now` methods of
/// [`Handle`]) went: still pending, to complete to the port as a packet, or
/// done at once, with its packet here and none queued
/// (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`).
#[cfg(not(loom))]
#[derive(Debug)]
pub enum Started<T> {
    /// In flight; its packet will come through the port.
    Pending(OpId),
    /// Completed at once; no packet is queued.
    Done(crate::Packet<T>),
}
