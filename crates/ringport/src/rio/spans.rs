//! The uses of one registered buffer (see [`buffer`](super::buffer)): which
//! slices receives, sends and borrows hold, and whether a new use may start.
//!
//! Receives and mutable borrows *write*; sends and shared borrows *read*; a
//! write may not overlap any other use, reads may overlap each other. Uses
//! are kept sorted by offset. Checking a new use looks only at uses that
//! start within the longest use's length before it, so with slices of one
//! size it costs a binary search and a step or two; in a receive loop
//! (slices released and claimed again in the same order) not even the
//! search: a claim first tries the place after the last one, and a release
//! the place its claim was put.

use super::slice::SliceUse;

/// One use of `start..end` of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) kind: SliceUse,
}

impl Span {
    fn conflicts(&self, other: &Span) -> bool {
        self.start < other.end
            && other.start < self.end
            && (self.kind.writes() || other.kind.writes())
    }
}

/// A buffer's uses, sorted by start.
///
/// A use that ends leaves a tombstone in its place rather than shifting the
/// rest of the list, and a new use that sorts next to a tombstone takes it
/// over: the pattern of a receive loop (a slice released as its result is
/// dequeued, claimed again by the next receive into it) costs a binary
/// search, not a move of every use after it, even when a whole batch of
/// slices was released at once. Tombstones are swept out when they
/// outnumber the most uses live at once since the last sweep (plus a few):
/// a window of uses sliding along a buffer does not grow the list forever.
#[derive(Default)]
pub(super) struct Uses {
    spans: Vec<Use>,
    /// Live uses in `spans` (the rest are tombstones).
    pub(super) live: usize,
    /// The most uses live at once since the last sweep.
    peak: usize,
    /// The longest span recorded since the list was last empty.
    max_len: u32,
    /// Where the last use was recorded: the next one, in a loop over the
    /// buffer's slices, most likely goes right after it.
    cursor: usize,
}

#[derive(Clone, Copy, Debug)]
struct Use {
    span: Span,
    live: bool,
}

// The hot methods are `#[inline]`: the registry calls them under its lock
// for every request, from another module (another codegen unit).
impl Uses {
    /// What `new` would conflict with, if anything.
    fn conflict(&self, new: &Span) -> Option<SliceUse> {
        if new.start == new.end {
            return None;
        }
        // A span starting before this cannot reach `new.start`.
        let from = new.start.saturating_sub(self.max_len);
        let i = self.spans.partition_point(|u| u.span.start < from);
        self.spans[i..]
            .iter()
            .take_while(|u| u.span.start < new.end)
            .find(|u| u.live && u.span.conflicts(new))
            .map(|u| u.span.kind)
    }

    /// Records `new` if it conflicts with nothing, and returns where (a
    /// hint for [`remove`](Self::remove)); else what it conflicts with.
    #[inline]
    pub(super) fn claim(&mut self, new: Span) -> Result<usize, SliceUse> {
        if let Some(at) = self.claim_near_cursor(new) {
            return at;
        }
        if let Some(conflict) = self.conflict(&new) {
            return Err(conflict);
        }
        Ok(self.insert(new))
    }

    /// [`claim`](Self::claim) without a search, when a tombstone right after
    /// the last use recorded (or at the start, or that use's own place) can
    /// take `new` with the list still sorted: then the uses that could
    /// overlap it are its neighbours. `None` when no such place is found.
    #[inline]
    fn claim_near_cursor(&mut self, new: Span) -> Option<Result<usize, SliceUse>> {
        let len = self.spans.len();
        let next = self.cursor + 1;
        let at = [next, 0, self.cursor].into_iter().find(|&p| {
            p < len
                && !self.spans[p].live
                && (p == 0 || self.spans[p - 1].span.start <= new.start)
                && (p + 1 == len || self.spans[p + 1].span.start >= new.start)
        })?;
        if new.start != new.end {
            // Sorted: the uses before `at` start at or before `new`, those
            // after it at or after `new`.
            // (Plain loops: this runs for every request, and an iterator
            // chain was not always inlined.)
            let from = new.start.saturating_sub(self.max_len);
            let mut k = at;
            while k > 0 {
                k -= 1;
                let u = &self.spans[k];
                if u.span.start < from {
                    break;
                }
                if u.live && u.span.conflicts(&new) {
                    return Some(Err(u.span.kind));
                }
            }
            for u in &self.spans[at + 1..] {
                if u.span.start >= new.end {
                    break;
                }
                if u.live && u.span.conflicts(&new) {
                    return Some(Err(u.span.kind));
                }
            }
        }
        self.spans[at] = Use {
            span: new,
            live: true,
        };
        self.recorded(at, &new);
        Some(Ok(at))
    }

    fn insert(&mut self, span: Span) -> usize {
        let i = self.spans.partition_point(|u| u.span.start <= span.start);
        let new = Use { span, live: true };
        // Everything before `i` starts at or before `span`, everything from
        // `i` on after it: a tombstone on either side of that point can
        // take it without breaking the order.
        let at = if i > 0 && !self.spans[i - 1].live {
            i - 1
        } else if i < self.spans.len() && !self.spans[i].live {
            i
        } else {
            self.spans.insert(i, new);
            i
        };
        self.spans[at] = new;
        self.recorded(at, &span);
        at
    }

    /// Bookkeeping of a use just recorded at `at`.
    #[inline]
    fn recorded(&mut self, at: usize, span: &Span) {
        self.cursor = at;
        self.live += 1;
        self.peak = self.peak.max(self.live);
        self.max_len = self.max_len.max(span.end - span.start);
    }

    /// Ends the use `span`, found at `hint` if it is still there (nothing
    /// moved since it was recorded), else by a search.
    #[inline]
    pub(super) fn remove_at(&mut self, span: &Span, hint: usize) {
        match self.spans.get(hint) {
            Some(u) if u.live && u.span == *span => self.ended(hint),
            _ => self.remove(span),
        }
    }

    fn remove(&mut self, span: &Span) {
        let i = self.spans.partition_point(|u| u.span.start < span.start);
        let Some(k) = self.spans[i..]
            .iter()
            .take_while(|u| u.span.start == span.start)
            .position(|u| u.live && u.span == *span)
        else {
            return;
        };
        self.ended(i + k);
    }

    /// The live use at `i` has ended: it becomes a tombstone.
    #[inline]
    fn ended(&mut self, i: usize) {
        self.spans[i].live = false;
        self.live -= 1;
        if self.live == 0 {
            // Nothing live reaches anywhere.
            self.max_len = 0;
        }
        if self.spans.len() - self.live > self.peak + 16 {
            self.spans.retain(|u| u.live);
            self.peak = self.live;
            self.cursor = 0;
        }
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u32, end: u32, kind: SliceUse) -> Span {
        Span { start, end, kind }
    }

    #[test]
    fn writes_exclude_everything_reads_share() {
        let mut u = Uses::default();
        u.insert(span(0, 100, SliceUse::Receive));
        u.insert(span(200, 300, SliceUse::Send));
        assert_eq!(
            u.conflict(&span(50, 60, SliceUse::Borrow)),
            Some(SliceUse::Receive)
        );
        assert_eq!(u.conflict(&span(100, 200, SliceUse::BorrowMut)), None);
        assert_eq!(u.conflict(&span(250, 260, SliceUse::Borrow)), None);
        assert_eq!(
            u.conflict(&span(299, 400, SliceUse::Receive)),
            Some(SliceUse::Send)
        );
        assert_eq!(u.conflict(&span(50, 50, SliceUse::BorrowMut)), None);
        u.remove(&span(0, 100, SliceUse::Receive));
        assert_eq!(u.conflict(&span(50, 60, SliceUse::BorrowMut)), None);
    }

    #[test]
    fn ended_uses_leave_tombstones_that_new_uses_take_over() {
        let mut u = Uses::default();
        for i in 0..64 {
            u.insert(span(i * 16, i * 16 + 16, SliceUse::Receive));
        }
        // A receive loop: each slice released, then claimed again.
        for round in 0..4 {
            for i in (0..64).map(|i| (i * 7 + round) % 64) {
                u.remove(&span(i * 16, i * 16 + 16, SliceUse::Receive));
                assert_eq!(
                    u.conflict(&span(i * 16, i * 16 + 1, SliceUse::Borrow)),
                    None
                );
                u.insert(span(i * 16, i * 16 + 16, SliceUse::Receive));
                assert_eq!(u.spans.len(), 64, "no shift, no growth");
            }
        }
        for i in 0..64 {
            assert_eq!(
                u.conflict(&span(i * 16 + 3, i * 16 + 4, SliceUse::Borrow)),
                Some(SliceUse::Receive)
            );
        }
        // A whole batch released at once keeps its places for the next.
        for i in 0..64 {
            u.remove(&span(i * 16, i * 16 + 16, SliceUse::Receive));
        }
        assert!(u.is_empty());
        assert_eq!(u.conflict(&span(0, 1024, SliceUse::Receive)), None);
        for i in (0..64).rev() {
            u.insert(span(i * 16, i * 16 + 16, SliceUse::Receive));
        }
        assert_eq!(u.spans.len(), 64);
        assert_eq!(
            u.conflict(&span(0, 1024, SliceUse::Borrow)),
            Some(SliceUse::Receive)
        );
        // A window of two uses sliding along the buffer: the list stays short.
        for i in 0..64 {
            u.remove(&span(i * 16, i * 16 + 16, SliceUse::Receive));
        }
        for i in 100..10_000 {
            u.insert(span(i * 16, i * 16 + 16, SliceUse::Send));
            if i > 100 {
                u.remove(&span((i - 1) * 16, (i - 1) * 16 + 16, SliceUse::Send));
            }
            assert!(u.spans.len() <= 64 + 16 + 2, "{}", u.spans.len());
        }
        assert_eq!(
            u.conflict(&span(0, 200_000, SliceUse::Receive)),
            Some(SliceUse::Send)
        );
    }

    #[test]
    fn claims_near_the_cursor_agree_with_a_search() {
        // Random claims and releases, mostly in receive-loop order, against
        // a list of live uses checked one by one.
        let mut u = Uses::default();
        let mut model: Vec<(Span, usize)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let kinds = [
            SliceUse::Receive,
            SliceUse::Send,
            SliceUse::Borrow,
            SliceUse::BorrowMut,
        ];
        let mut slot = 0;
        for _ in 0..20_000 {
            if next(3) == 0 && !model.is_empty() {
                let (span, at) = model.remove(next(model.len() as u64) as usize);
                u.remove_at(&span, at);
            } else {
                slot = if next(4) == 0 {
                    next(64)
                } else {
                    (slot + 1) % 64
                };
                let start = (slot * 16 + next(3) * 8) as u32;
                let len = [0, 8, 16, 24, 40][next(5) as usize];
                let span = span(start, start + len, kinds[next(4) as usize]);
                let expected = model
                    .iter()
                    .find(|(m, _)| span.start < span.end && m.conflicts(&span))
                    .map(|(m, _)| m.kind);
                match u.claim(span) {
                    Ok(at) => {
                        assert_eq!(expected, None, "{span:?}");
                        model.push((span, at));
                    }
                    Err(kind) => {
                        assert!(expected.is_some(), "{span:?}");
                        assert!(model.iter().any(|(m, _)| m.kind == kind));
                    }
                }
            }
            assert_eq!(u.live, model.len());
            assert!(u
                .spans
                .windows(2)
                .all(|w| w[0].span.start <= w[1].span.start));
        }
    }

    #[test]
    fn long_spans_are_found_from_far_before() {
        let mut u = Uses::default();
        u.insert(span(0, 10_000, SliceUse::Send));
        for i in 0..100 {
            u.insert(span(10_000 + i * 10, 10_010 + i * 10, SliceUse::Send));
        }
        assert_eq!(
            u.conflict(&span(9_999, 10_000, SliceUse::Receive)),
            Some(SliceUse::Send)
        );
        assert_eq!(u.conflict(&span(20_000, 20_010, SliceUse::Receive)), None);
    }
}
