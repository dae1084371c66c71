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
