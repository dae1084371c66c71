//! The backend boundary: everything that speaks to the kernel. The one
//! choice of backend, the operations as the backends run them, the in-flight
//! table, the syscall helpers, and the two backends, which never know each
//! other. The port and RIO stand on it.

pub(crate) mod addr;
mod backend;
pub(crate) mod batch;
pub(crate) mod driver;
pub(crate) mod epoll;
pub(crate) mod eventfd;
pub(crate) mod fd;
pub(crate) mod inflight;
pub(crate) mod op;
pub(crate) mod syscalls;
pub(crate) mod uring;

pub use backend::Backend;
pub(crate) use backend::{choose, Chosen};
