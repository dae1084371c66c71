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
//! Each buffer keeps its uses (receives and sends in flight, borrows) in a
//! [`Uses`] list (see [`spans`](super::spans)), under the registry's lock.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use super::error::RioError;
use super::slice::{BufferId, RioBuf, SliceUse};
use super::spans::{Span, Uses};
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
