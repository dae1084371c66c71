//! Owned buffers: what an operation holds while the kernel may touch it.
//!
//! No public API lends the kernel a borrowed slice: an operation takes its
//! buffer by value and the packet gives it back, so the memory outlives
//! every kernel access by construction. A `Buf`'s bytes live on the heap,
//! so moving the `Buf` value (into the in-flight table, into a packet) never
//! moves the memory the kernel was given.

/// An owned byte buffer an operation can hold: `Vec<u8>` or `Box<[u8]>`.
///
/// Reads and receives fill a `Vec` up to its capacity and set its length to
/// the bytes received; they fill a `Box<[u8]>` from the start (the packet's
/// result says how many bytes). Writes and sends send a `Vec`'s length, or a
/// whole `Box<[u8]>`.
///
/// ```
/// use ringport::Buf;
/// let b: Buf = Vec::with_capacity(4096).into();
/// assert_eq!(b.capacity(), 4096);
/// let v: Vec<u8> = b.into_vec();
/// assert!(v.is_empty());
/// ```
#[derive(Debug)]
pub enum Buf {
    /// A vector: its length is the data, its capacity the room to read into.
    Vec(Vec<u8>),
    /// A boxed slice: all of it is data and room.
    Boxed(Box<[u8]>),
}

impl Buf {
    /// The bytes holding data (what a write sends).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Boxed(b) => b,
        }
    }

    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether it holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes a read may fill.
    pub fn capacity(&self) -> usize {
        match self {
            Buf::Vec(v) => v.capacity(),
            Buf::Boxed(b) => b.len(),
        }
    }

    /// The buffer as a vector (a boxed slice becomes a vector of its length).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Buf::Vec(v) => v,
            Buf::Boxed(b) => b.into_vec(),
        }
    }

    /// Start of the data, for a write.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn read_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }

    /// Start of the room to read into, and its length.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn write_ptr(&mut self) -> (*mut u8, usize) {
        match self {
            Buf::Vec(v) => (v.as_mut_ptr(), v.capacity()),
            Buf::Boxed(b) => (b.as_mut_ptr(), b.len()),
        }
    }

    /// Records that a read filled `n` bytes from the start.
    ///
    /// # Safety
    /// The kernel (or a syscall) must have written those `n` bytes, `n` at
    /// most [`capacity`](Self::capacity).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) unsafe fn set_filled(&mut self, n: usize) {
        if let Buf::Vec(v) = self {
            debug_assert!(n <= v.capacity());
            // SAFETY: the caller guarantees the first n bytes were written and
            // n <= capacity, which is what Vec::set_len requires.
            unsafe { v.set_len(n) }
        }
    }
}

impl From<Vec<u8>> for Buf {
    fn from(v: Vec<u8>) -> Self {
        Buf::Vec(v)
    }
}

impl From<Box<[u8]>> for Buf {
    fn from(b: Box<[u8]>) -> Self {
        Buf::Boxed(b)
    }
}

impl From<Buf> for Vec<u8> {
    fn from(b: Buf) -> Self {
        b.into_vec()
    }
}
