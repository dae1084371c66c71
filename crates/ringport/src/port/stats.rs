//! What a port counts.

use std::thread::ThreadId;

/// A snapshot of a port's counters, from [`CompletionPort::stats`](crate::CompletionPort::stats).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Packets queued by `post`.
    pub posted: u64,
    /// Packets queued by finished kernel operations.
    pub completed: u64,
    /// Packets handed to threads by `get`/`get_many`, all threads together.
    pub dequeued: u64,
    /// Times a parked thread was released with a packet.
    pub wakeups: u64,
    /// Of those, times a post handed its packet straight to a parked thread.
    pub handoffs: u64,
    /// The most threads ever active on the port at once.
    pub max_active: u64,
    /// Packets queued and not yet taken, now.
    pub queued: u64,
    /// Threads active, now.
    pub active: u64,
    /// Threads parked in `get`, now.
    pub waiting: u64,
    /// Each thread's load: packets it took, in the order threads first took one.
    pub threads: Vec<ThreadLoad>,
}

/// One thread's share of a port's packets.
#[derive(Debug, Clone)]
pub struct ThreadLoad {
    /// The thread.
    pub thread: ThreadId,
    /// Its name, if it had one.
    pub name: Option<String>,
    /// Packets it took from the port.
    pub dequeued: u64,
}
