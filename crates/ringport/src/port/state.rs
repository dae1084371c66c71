//! The port's state word: everything the fast path decides on, in one atomic.
//!
//! | bits   | field     | meaning                                                      |
//! |--------|-----------|--------------------------------------------------------------|
//! | 0..32  | `queued`  | packets in the queue that nobody has claimed yet             |
//! | 32..48 | `active`  | threads between a `get` that returned a packet and their next |
//! | 48..63 | `waiters` | threads parked on the waiter stack                           |
//! | 63     | `closed`  | `close()` was called                                         |
//!
//! Keeping the three counts in one word is what lets a post, a claim and a park
//! be linearised against each other with a single compare-and-swap: a poster
//! that sees `waiters == 0` can queue without a lock, because a thread that is
//! about to park must move `waiters` from 0 to 1 with a CAS on the same word,
//! and would have seen the `queued` increment first (and claimed it instead).

/// A snapshot of the state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct StateWord(pub(crate) u64);

const QUEUED_BITS: u32 = 32;
const ACTIVE_SHIFT: u32 = 32;
const ACTIVE_BITS: u32 = 16;
const WAITERS_SHIFT: u32 = 48;
const WAITERS_BITS: u32 = 15;
const CLOSED: u64 = 1 << 63;

/// The most packets that can sit unclaimed in one port.
pub(crate) const MAX_QUEUED: u64 = (1 << QUEUED_BITS) - 1;
/// The most threads that can be active on one port at once.
pub(crate) const MAX_ACTIVE: u64 = (1 << ACTIVE_BITS) - 1;
/// The most threads that can be parked on one port at once.
pub(crate) const MAX_WAITERS: u64 = (1 << WAITERS_BITS) - 1;

pub(crate) const ONE_QUEUED: u64 = 1;
pub(crate) const ONE_ACTIVE: u64 = 1 << ACTIVE_SHIFT;
pub(crate) const ONE_WAITER: u64 = 1 << WAITERS_SHIFT;

impl StateWord {
    pub(crate) fn queued(self) -> u64 {
        self.0 & MAX_QUEUED
    }
    pub(crate) fn active(self) -> u64 {
        (self.0 >> ACTIVE_SHIFT) & MAX_ACTIVE
    }
    pub(crate) fn waiters(self) -> u64 {
        (self.0 >> WAITERS_SHIFT) & MAX_WAITERS
    }
    pub(crate) fn closed(self) -> bool {
        self.0 & CLOSED != 0
    }
    pub(crate) fn with_closed(self) -> StateWord {
        StateWord(self.0 | CLOSED)
    }

    /// How many queued packets a thread may take now, given the limit, if it
    /// is not active itself. Zero when the limit is reached.
    pub(crate) fn claimable(self, limit: u64) -> u64 {
        if self.active() < limit {
            self.queued()
        } else {
            0
        }
    }

    /// True when a parked waiter could run right now: the condition that every
    /// transition must leave false once it has finished (the no-lost-wakeup
    /// invariant the loom model checks).
    pub(crate) fn waiter_runnable(self, limit: u64) -> bool {
        !self.closed() && self.waiters() > 0 && self.claimable(limit) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let s =
            StateWord(MAX_QUEUED | (MAX_ACTIVE << ACTIVE_SHIFT) | (MAX_WAITERS << WAITERS_SHIFT));
        assert_eq!(s.queued(), MAX_QUEUED);
        assert_eq!(s.active(), MAX_ACTIVE);
        assert_eq!(s.waiters(), MAX_WAITERS);
        assert!(!s.closed());
        assert!(s.with_closed().closed());
        assert_eq!(s.with_closed().waiters(), MAX_WAITERS);
    }

    #[test]
    fn increments_land_in_their_field() {
        let s = StateWord(3 * ONE_QUEUED + 2 * ONE_ACTIVE + ONE_WAITER);
        assert_eq!((s.queued(), s.active(), s.waiters()), (3, 2, 1));
        assert_eq!(s.claimable(2), 0);
        assert_eq!(s.claimable(3), 3);
        assert!(!s.waiter_runnable(2));
        assert!(s.waiter_runnable(3));
    }
}
