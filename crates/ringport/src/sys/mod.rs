//! The platform layer: where kernel completions come from.

pub(crate) mod epoll;
pub(crate) mod fd;
pub(crate) mod uring;
