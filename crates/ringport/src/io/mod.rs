//! The public face of associated handles: every operation issued on a
//! handle completes to its port as a packet with the handle's key. The
//! operations themselves, as the backends run them, live in `sys/`.

mod associate;
mod handle;

pub use handle::Handle;
