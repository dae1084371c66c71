//! The buffer registry: memory registered once and named by id, sliced by
//! [`RioBuf`], with every use of every slice tracked so that the kernel never
//! writes into bytes that Rust code can see, and memory is never freed while
//! the kernel or a borrow still uses it.
//!
//! Like Windows' `RIORegisterBuffer`, the registry is process-wide: a
//! [`BufferId`] is good with every request queue. Unlike Windows, the registry
//! allocates the memory itself (page-aligned, zeroed) and owns it, so no
//! caller-owned memory can be freed under the kernel.
//!
//! Each buffer keeps its uses (receives and sends in flight, borrows) sorted
//! by offset. Receives and mutable borrows *write*; sends and shared borrows
//! *read*; a write may not overlap any other use, reads may overlap each
//! other. Checking a new use looks only at uses that start within the longest
//! use's length before it, so with slices of one size it costs a binary
//! search and a step or two; in a receive loop (slices released and claimed
//! again in the same order) not even the search: a claim first tries the
//! place after the last one, and a release the place its claim was put.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use super::error::RioError;
use super::slice::{BufferId, RioBuf, SliceUse};
use crate::sync::{lock, Mutex};
use crate::Error;

/// Alignment (and rounding) of registered memory: one page.
const PAGE: usize = 4096;

/// Memory the registry owns: page-aligned, zeroed, freed on drop.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
    len: u32,
}

// SAFETY: the region is plain memory owned by the registry; every access to
// its bytes goes through a claim recorded under the registry's lock, which
// keeps writers exclusive.
unsafe impl Send for Region {}
// SAFETY: as above; the Region value itself holds no interior mutability.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: u32) -> Result<Region, Error> {
        let size = (len as usize).div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(size, PAGE)
            .map_err(|_| Error::InvalidArgument("buffer length too large"))?;
        // SAFETY: the layout has a non-zero size (len > 0, checked by the caller).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(RioError::OutOfMemory { size })?;
        Ok(Region { ptr, layout, len })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the registry drops a
        // region only when no use of it (kernel or borrow) is recorded.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// One use of `start..end` of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
    kind: SliceUse,
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
struct Uses {
    spans: Vec<Use>,
    /// Live uses in `spans` (the rest are tombstones).
    live: usize,
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
    fn claim(&mut self, new: Span) -> Result<usize, SliceUse> {
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
            let from = new.start.saturating_sub(self.max_len);
            let before = self.spans[..at]
                .iter()
                .rev()
                .take_while(|u| u.span.start >= from);
            let after = self.spans[at + 1..]
                .iter()
                .take_while(|u| u.span.start < new.end);
            if let Some(u) = before
                .chain(after)
                .find(|u| u.live && u.span.conflicts(&new))
            {
                return Some(Err(u.span.kind));
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
    fn recorded(&mut self, at: usize, span: &Span) {
        self.cursor = at;
        self.live += 1;
        self.peak = self.peak.max(self.live);
        self.max_len = self.max_len.max(span.end - span.start);
    }

    /// Ends the use `span`, found at `hint` if it is still there (nothing
    /// moved since it was recorded), else by a search.
    fn remove_at(&mut self, span: &Span, hint: usize) {
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

    fn is_empty(&self) -> bool {
        self.live == 0
    }
}

struct Entry {
    generation: u32,
    region: Option<Region>,
    uses: Uses,
}

struct Table {
    entries: Vec<Entry>,
    free: Vec<u32>,
}

static REGISTRY: Mutex<Table> = Mutex::new(Table {
    entries: Vec::new(),
    free: Vec::new(),
});

impl Table {
    fn entry(&mut self, id: BufferId) -> Result<&mut Entry, RioError> {
        match self.entries.get_mut(id.index()) {
            Some(e) if e.generation == id.generation() && e.region.is_some() => Ok(e),
            _ => Err(RioError::UnknownBuffer(id)),
        }
    }
}

/// A recorded use of a slice, to be released when the use ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claim {
    id: BufferId,
    span: Span,
    /// Where the use was recorded in its buffer's list (a hint: a sweep or
    /// an insertion before it may have moved it since).
    at: u32,
}

/// Registers a new buffer of `len` bytes (`RIORegisterBuffer`): page-aligned,
/// zeroed memory that the registry owns until
/// [`deregister_buffer`].
///
/// The memory is ordinary: it is not pinned, so it counts against no
/// `RLIMIT_MEMLOCK` (see the module docs for why). Fails with
/// [`Error::InvalidArgument`] for a length of 0 or above `u32::MAX`, and with
/// [`RioError::OutOfMemory`] (giving the size) when it cannot be allocated.
///
/// ```
/// use ringport::rio::{self, RioBuf};
/// let id = rio::register_buffer(8192)?;
/// rio::borrow_mut(&RioBuf::new(id, 0, 5))?.copy_from_slice(b"hello");
/// assert_eq!(&*rio::borrow(&RioBuf::new(id, 0, 5))?, b"hello");
/// rio::deregister_buffer(id)?;
/// assert!(rio::borrow(&RioBuf::new(id, 0, 5)).is_err());
/// # Ok::<(), ringport::Error>(())
/// ```
pub fn register_buffer(len: usize) -> Result<BufferId, Error> {
    if len == 0 {
        return Err(Error::InvalidArgument(
            "a registered buffer cannot be empty",
        ));
    }
    let len = u32::try_from(len)
        .map_err(|_| Error::InvalidArgument("a registered buffer is at most 4 GiB - 1 bytes"))?;
    let region = Region::new(len)?;
    let mut table = lock(&REGISTRY);
    let index = match table.free.pop() {
        Some(i) => i,
        None => {
            let i = u32::try_from(table.entries.len())
                .map_err(|_| Error::InvalidArgument("too many registered buffers"))?;
            table.entries.push(Entry {
                generation: 0,
                region: None,
                uses: Uses::default(),
            });
            i
        }
    };
    let entry = &mut table.entries[index as usize];
    // Generation 0 is never handed out, so BufferId(0) is never valid.
    entry.generation = entry.generation.wrapping_add(1).max(1);
    entry.region = Some(region);
    Ok(BufferId::new(index, entry.generation))
}

/// Deregisters a buffer (`RIODeregisterBuffer`) and frees its memory.
///
/// Refused with [`RioError::BufferInUse`] while any request in flight or any
/// borrow uses it; [`RioError::UnknownBuffer`] if it is not registered.
pub fn deregister_buffer(id: BufferId) -> Result<(), Error> {
    let region = {
        let mut table = lock(&REGISTRY);
        let entry = table.entry(id)?;
        if !entry.uses.is_empty() {
            return Err(RioError::BufferInUse {
                id,
                uses: entry.uses.live,
            }
            .into());
        }
        let region = entry.region.take();
        entry.uses = Uses::default();
        table.free.push(id.index() as u32);
        region
    };
    // Freed outside the lock.
    drop(region);
    Ok(())
}

/// The length of a registered buffer, as asked for at registration.
pub fn buffer_len(id: BufferId) -> Result<u32, Error> {
    let mut table = lock(&REGISTRY);
    let entry = table.entry(id)?;
    Ok(entry.region.as_ref().map_or(0, |r| r.len))
}

/// Records a use of `buf` and returns its start in memory. The memory stays
/// allocated, and no conflicting use is allowed, until the claim is released.
pub(super) fn claim(buf: &RioBuf, kind: SliceUse) -> Result<(Claim, *mut u8), Error> {
    let mut table = lock(&REGISTRY);
    let entry = table.entry(buf.id)?;
    let region = entry
        .region
        .as_ref()
        .ok_or(RioError::UnknownBuffer(buf.id))?;
    if buf.end() > u64::from(region.len) {
        return Err(RioError::OutOfBounds {
            buf: *buf,
            buffer_len: region.len,
        }
        .into());
    }
    let span = Span {
        start: buf.offset,
        end: buf.offset + buf.len,
        kind,
    };
    // SAFETY: offset + len <= region.len, checked above, so the pointer stays
    // inside the allocation.
    let ptr = unsafe { region.ptr.as_ptr().add(buf.offset as usize) };
    match entry.uses.claim(span) {
        Ok(at) => Ok((
            Claim {
                id: buf.id,
                span,
                at: at as u32,
            },
            ptr,
        )),
        Err(conflict) => Err(RioError::SliceBusy {
            buf: *buf,
            conflict,
        }
        .into()),
    }
}

/// Ends the uses recorded by `claims`, under one lock.
pub(super) fn release(claims: &[Claim]) {
    if claims.is_empty() {
        return;
    }
    let mut table = lock(&REGISTRY);
    for c in claims {
        if let Ok(entry) = table.entry(c.id) {
            entry.uses.remove_at(&c.span, c.at as usize);
        }
    }
}

/// Read access to a slice of a registered buffer, for as long as the guard
/// lives: no receive can be started into these bytes meanwhile, and the
/// buffer cannot be deregistered.
#[derive(Debug)]
pub struct BufRef {
    claim: Claim,
    ptr: NonNull<u8>,
}

/// Write access to a slice of a registered buffer, for as long as the guard
/// lives: no request can be started on these bytes meanwhile, and the buffer
/// cannot be deregistered.
#[derive(Debug)]
pub struct BufMut {
    claim: Claim,
    ptr: NonNull<u8>,
}

// SAFETY: the guards are claims on registry memory, valid from any thread;
// the claim keeps the memory alive and conflicting uses out.
unsafe impl Send for BufRef {}
// SAFETY: shared access to a BufRef only reads.
unsafe impl Sync for BufRef {}
// SAFETY: as for BufRef; the claim is exclusive.
unsafe impl Send for BufMut {}
// SAFETY: `&BufMut` gives only shared reads.
unsafe impl Sync for BufMut {}

/// Borrows a slice of a registered buffer to read it.
///
/// Refused with [`RioError::SliceBusy`] while a receive in flight (or a
/// mutable borrow) covers any of its bytes, so the kernel never writes under
/// the returned `&[u8]`. Out-of-bounds and unknown buffers are errors too.
pub fn borrow(buf: &RioBuf) -> Result<BufRef, Error> {
    let (claim, ptr) = claim(buf, SliceUse::Borrow)?;
    Ok(BufRef {
        claim,
        ptr: NonNull::new(ptr).ok_or(Error::InvalidArgument("null buffer"))?,
    })
}

/// Borrows a slice of a registered buffer to write it.
///
/// Refused with [`RioError::SliceBusy`] while any request in flight or any
/// other borrow covers any of its bytes.
pub fn borrow_mut(buf: &RioBuf) -> Result<BufMut, Error> {
    let (claim, ptr) = claim(buf, SliceUse::BorrowMut)?;
    Ok(BufMut {
        claim,
        ptr: NonNull::new(ptr).ok_or(Error::InvalidArgument("null buffer"))?,
    })
}

impl Deref for BufRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let len = (self.claim.span.end - self.claim.span.start) as usize;
        // SAFETY: the claim keeps the region allocated and no writer (kernel
        // receive or mutable borrow) overlapping it; ptr..ptr+len is in bounds.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }
}

impl Deref for BufMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let len = (self.claim.span.end - self.claim.span.start) as usize;
        // SAFETY: as for BufRef; this claim excludes every other use.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }
}

impl DerefMut for BufMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = (self.claim.span.end - self.claim.span.start) as usize;
        // SAFETY: the claim is exclusive over these bytes (no request in
        // flight, no other borrow) and keeps them allocated; `&mut self`
        // makes this the only Rust reference derived from the guard.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for BufRef {
    fn drop(&mut self) {
        release(&[self.claim]);
    }
}

impl Drop for BufMut {
    fn drop(&mut self) {
        release(&[self.claim]);
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
