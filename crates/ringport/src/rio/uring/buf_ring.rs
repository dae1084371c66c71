//! A lane's buffer group: a provided-buffer ring in our memory (see
//! [`shot`](super::shot) for how it is used).

use std::alloc::Layout;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use io_uring::types;

use super::super::rq_shared::RqShared;
use super::lane::Lane;

/// One lane's buffer group: its ring of entries and what it holds.
pub(super) struct Shot {
    /// `entries` ring entries, page-aligned, zeroed at first.
    pub(super) base: NonNull<types::BufRingEntry>,
    pub(super) layout: Layout,
    pub(super) entries: u16,
    /// Registered with the queue's current ring as group `bgid`.
    pub(super) registered: bool,
    pub(super) bgid: u16,
    /// Ring positions: entries the kernel has taken (as the completions
    /// reaped say) and entries published.
    pub(super) head: u16,
    pub(super) tail: u16,
    /// Requests whose slices are published (positions `head..tail`),
    /// oldest first; their slots are marked in the kernel (not counted in
    /// the table's `in_kernel`, which counts the multishot instead).
    pub(super) posted: VecDeque<u64>,
    /// Its multishot `RECV` is in the kernel (its final completion not yet
    /// reaped).
    pub(super) armed: bool,
    /// The lane it serves and its request queue; `None` when free.
    pub(super) lane: Option<Arc<Lane>>,
    pub(super) rq: Option<Arc<RqShared>>,
}

// SAFETY: the ring memory is owned by the group and only touched under its
// completion queue's request table lock (and read by the kernel).
unsafe impl Send for Shot {}

impl Drop for Shot {
    fn drop(&mut self) {
        // SAFETY: allocated in `Shot::new` with this layout. A group is only
        // dropped with its table, which is dropped after its ring was closed
        // with every multishot given back and groups unregistered (or is
        // forgotten, never dropped, when the kernel still held requests).
        unsafe { std::alloc::dealloc(self.base.as_ptr().cast(), self.layout) };
    }
}

impl Shot {
    pub(super) fn new(bgid: u16, entries: u16) -> Option<Shot> {
        let layout = Layout::from_size_align(
            entries as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .ok()?;
        // SAFETY: a non-zero size (entries >= 2); freed in Drop with this layout.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?.cast();
        Some(Shot {
            base,
            layout,
            entries,
            registered: false,
            bgid,
            head: 0,
            tail: 0,
            posted: VecDeque::new(),
            armed: false,
            lane: None,
            rq: None,
        })
    }

    /// Writes the entry at position `pos` (not yet visible to the kernel:
    /// at or after the published tail, or the multishot is not armed).
    pub(super) fn write(&mut self, pos: u16, ptr: *mut u8, len: u32, bid: u16) {
        let i = (pos & (self.entries - 1)) as usize;
        // SAFETY: i < entries, inside the allocation; the kernel reads an
        // entry only between its head and the published tail while a
        // multishot is armed, which the caller rules out for this position.
        // The setters write the address, length and id only, never the
        // reserved field of entry 0, which is the tail the kernel reads.
        let e = unsafe { &mut *self.base.as_ptr().add(i) };
        e.set_addr(ptr as u64);
        e.set_len(len);
        e.set_bid(bid);
    }

    /// Makes the entries up to `self.tail` visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail overlays the first entry's reserved field, inside
        // the allocation, and is only ever accessed atomically by the kernel
        // (which reads it with acquire); entries written before are seen.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.base.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}
