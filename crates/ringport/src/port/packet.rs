//! What a port hands a thread.

use std::io;

/// A completion packet: the analogue of what `GetQueuedCompletionStatus`
/// returns (completion key, bytes transferred or error, OVERLAPPED).
///
/// `T` is the per-operation token, the user's own typed value that stands
/// where Windows puts the OVERLAPPED pointer.
#[derive(Debug)]
pub struct Packet<T> {
    /// The completion key of the packet's source: the key a handle was
    /// associated with, or the key given to [`post`](crate::CompletionPort::post).
    pub key: u64,
    /// The per-operation token.
    pub token: T,
    /// Bytes transferred, or the operation's error.
    pub result: io::Result<usize>,
}

impl<T> Packet<T> {
    /// A packet as [`post`](crate::CompletionPort::post) queues it.
    pub fn new(key: u64, token: T, result: io::Result<usize>) -> Self {
        Packet { key, token, result }
    }
}
