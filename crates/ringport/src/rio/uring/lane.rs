//! Posting order on io_uring: one lane per request queue and kind.
//!
//! io_uring keeps no order among requests that wait: receives (or sends)
//! parked on one socket are woken newest first, so a stream's bytes would go
//! to its pending receives backwards. A lane therefore lets the kernel hold
//! one *chain* of its requests at a time, linked with `IOSQE_IO_LINK` so that
//! each starts only when the one before it is over; requests posted while a
//! chain runs wait here, in posting order, and go as the next chain when the
//! engine takes the last completion of the current one out of the ring.
//! Chaining, rather than one request at a time, keeps the cost where it was:
//! a run of receives posted together still takes a run of datagrams with no
//! system call between them.
//!
//! The kernel also ends, with `ECANCELED`, a request whose submitting thread
//! has exited by the time it would run (and with it the rest of its chain).
//! Such a request was not cancelled by anyone, so it goes back to the front
//! of its lane (`again`) and is started again from a live thread.
//!
//! A lane is only touched under its completion queue's request table lock,
//! which every request's way through the engine takes anyway: the lane needs
//! no lock of its own (an uncontended mutex still cost each request a pair
//! of locked instructions). The request queue holds it (an `Arc`) only to
//! name it to its completion queue.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

/// The order of one request queue's requests of one kind.
#[derive(Default)]
pub(in crate::rio) struct Lane(UnsafeCell<LaneState>);

// SAFETY: the state is only reached through `Lane::lock`, whose callers hold
// the request table lock of the lane's completion queue: one thread at a
// time, as behind a mutex.
unsafe impl Sync for Lane {}

impl Lane {
    /// The lane's state, for as long as the guard lives.
    ///
    /// # Safety
    /// The caller holds the request table lock of the completion queue the
    /// lane belongs to for the guard's whole life, and takes no other guard
    /// of this lane meanwhile (where a mutex would deadlock).
    pub(super) unsafe fn lock(&self) -> LaneGuard<'_> {
        LaneGuard(&self.0)
    }
}

/// A lane's state, reached under its completion queue's request table lock
/// (see [`Lane::lock`]).
pub(super) struct LaneGuard<'a>(&'a UnsafeCell<LaneState>);

impl Deref for LaneGuard<'_> {
    type Target = LaneState;
    fn deref(&self) -> &LaneState {
        // SAFETY: `Lane::lock`'s caller holds the table lock and no other
        // guard of this lane: nothing else reaches the state meanwhile.
        unsafe { &*self.0.get() }
    }
}

impl DerefMut for LaneGuard<'_> {
    fn deref_mut(&mut self) -> &mut LaneState {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference
        // derived from the guard.
        unsafe { &mut *self.0.get() }
    }
}

#[derive(Default)]
pub(super) struct LaneState {
    /// Requests handed to the ring (the current chain) whose completions
    /// have not been taken out of it.
    pub(super) in_kernel: u32,
    /// Requests waiting for the next chain (their `user_data`), oldest first.
    pub(super) waiting: VecDeque<u64>,
    /// How many at the back of `waiting` were made with `DEFER` and not yet
    /// committed: the next chain stops before them.
    pub(super) deferred: usize,
    /// Requests of the current chain that the kernel cancelled unasked, with
    /// their submission order, to go first in the next chain.
    pub(super) again: Vec<(u64, u64)>,
    /// The lane's buffer group (see [`shot`](super::shot)): its datagram
    /// receives go to a provided-buffer ring consumed by one multishot
    /// `RECV`, instead of chains. Set by the first start that can use one.
    pub(super) shot: Option<u16>,
    /// A buffer group was tried for this lane and could not be had: chains
    /// only.
    pub(super) no_shot: bool,
    /// The lane's multishot `RECV` ended with receives still in its buffer
    /// ring (or room appeared in it): the next start arms it again.
    pub(super) rearm: bool,
}

impl LaneState {
    /// Whether a new chain can start now and has something to take.
    pub(super) fn startable(&self) -> bool {
        self.in_kernel == 0
            && (self.waiting.len() > self.deferred || !self.again.is_empty() || self.rearm)
    }

    /// Puts the requests to start again before those waiting, in the order
    /// they were first submitted.
    pub(super) fn requeue_again(&mut self) {
        if self.again.is_empty() {
            return;
        }
        self.again.sort_unstable();
        for (_, ud) in self.again.drain(..).rev() {
            self.waiting.push_front(ud);
        }
    }

    /// Requests that may go in the next chain (committed ones).
    pub(super) fn ready(&self) -> usize {
        self.waiting.len() - self.deferred
    }
}
