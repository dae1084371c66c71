//! The port's state word: the counts the slow paths decide on, in one atomic.
//!
//! | bits   | field     | meaning                                                       |
//! |--------|-----------|---------------------------------------------------------------|
//! | 0..16  | `active`  | threads between a `get` that returned a packet and their next |
//! | 16..31 | `waiters` | threads parked on the waiter stack                            |
//! | 63     | `closed`  | `close()` was called                                          |
//!
//! What is queued is not in the word: the queue itself says (see
//! `core.rs`), so a post and a `get` by a thread that stays active only read
//! the word. Keeping the two counts in one word is what lets a claim, a
//! park and a grant be linearised against each other with a single
//! compare-and-swap: a grant moves a waiter to active in one step, and a
//! claim cannot push `active` past the limit that a concurrent grant checked.

/// A snapshot of the state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct StateWord(pub(crate) u64);

const ACTIVE_BITS: u32 = 16;
const WAITERS_SHIFT: u32 = 16;
const WAITERS_BITS: u32 = 15;
const CLOSED: u64 = 1 << 63;

/// The most threads that can be active on one port at once.
pub(crate) const MAX_ACTIVE: u64 = (1 << ACTIVE_BITS) - 1;
/// The most threads that can be parked on one port at once.
pub(crate) const MAX_WAITERS: u64 = (1 << WAITERS_BITS) - 1;

pub(crate) const ONE_ACTIVE: u64 = 1;
pub(crate) const ONE_WAITER: u64 = 1 << WAITERS_SHIFT;

impl StateWord {
    pub(crate) fn active(self) -> u64 {
        self.0 & MAX_ACTIVE
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let s = StateWord(MAX_ACTIVE | (MAX_WAITERS << WAITERS_SHIFT));
        assert_eq!(s.active(), MAX_ACTIVE);
        assert_eq!(s.waiters(), MAX_WAITERS);
        assert!(!s.closed());
        assert!(s.with_closed().closed());
        assert_eq!(s.with_closed().waiters(), MAX_WAITERS);
    }

    #[test]
    fn increments_land_in_their_field() {
        let s = StateWord(2 * ONE_ACTIVE + ONE_WAITER);
        assert_eq!((s.active(), s.waiters()), (2, 1));
        // A grant's undo: one waiter back, one slot given up, in one add.
        let undone = StateWord(s.0 + (ONE_WAITER - ONE_ACTIVE));
        assert_eq!((undone.active(), undone.waiters()), (1, 2));
    }
}
