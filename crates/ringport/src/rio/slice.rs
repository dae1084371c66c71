//! The names of registered memory: a buffer's id, a slice of it, and what a
//! slice is used for. The registry that gives them meaning is in
//! [`buffer`](super::buffer).

use std::fmt;

/// Names a registered buffer. A deregistered buffer's id stays invalid even
/// when its slot in the registry is taken again (ids repeat only after one
/// slot has been reused 2³² times).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(u64);

impl BufferId {
    pub(super) fn new(index: u32, generation: u32) -> Self {
        BufferId((u64::from(generation) << 32) | u64::from(index))
    }

    pub(super) fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub(super) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The id as a number (for logs, or to carry in a request context).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id a number from [`as_u64`](Self::as_u64) stood for. An id that
    /// was never handed out is simply unknown to the registry.
    pub fn from_u64(raw: u64) -> Self {
        BufferId(raw)
    }
}

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index(), self.generation())
    }
}

/// A slice of a registered buffer: `len` bytes from `offset` (`RIO_BUF`).
///
/// Nothing is checked when a `RioBuf` is made; a slice that runs past its
/// buffer, or names a buffer that is not registered, is refused when a
/// request or a borrow uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RioBuf {
    /// The buffer.
    pub id: BufferId,
    /// Where the slice starts, in bytes from the start of the buffer.
    pub offset: u32,
    /// The slice's length in bytes.
    pub len: u32,
}

impl RioBuf {
    /// The slice of `len` bytes at `offset` in buffer `id`.
    pub const fn new(id: BufferId, offset: u32, len: u32) -> Self {
        RioBuf { id, offset, len }
    }

    /// One past the slice's last byte (may exceed `u32::MAX`).
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// What a slice of a registered buffer is being used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceUse {
    /// A receive in flight: the kernel may write the bytes.
    Receive,
    /// A send in flight: the kernel may read the bytes.
    Send,
    /// A [`borrow`](super::borrow): Rust code reads the bytes.
    Borrow,
    /// A [`borrow_mut`](super::borrow_mut): Rust code writes the bytes.
    BorrowMut,
}

impl SliceUse {
    pub(super) fn writes(self) -> bool {
        matches!(self, SliceUse::Receive | SliceUse::BorrowMut)
    }
}

impl fmt::Display for SliceUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SliceUse::Receive => "a receive in flight writes into",
            SliceUse::Send => "a send in flight reads",
            SliceUse::Borrow => "borrowed",
            SliceUse::BorrowMut => "borrowed mutably",
        })
    }
}
