//! The rules of registered I/O that a call can break, as one typed error.

use std::fmt;
use std::io;

use super::flags::RequestKind;
use super::slice::{BufferId, RioBuf, SliceUse};

/// A registered I/O rule was broken. Every RIO call reports these through
/// [`Error::Io`](crate::Error::Io), an `io::Error` of the rule's
/// [`kind`](Self::kind) whose inner error is the rule ([`Error::rio`](crate::Error::rio)
/// gives it back); none of them leaves anything half done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RioError {
    /// The id names no registered buffer: it was deregistered, or never
    /// registered.
    UnknownBuffer(BufferId),
    /// The slice runs past the end of its buffer.
    OutOfBounds {
        /// The slice asked for.
        buf: RioBuf,
        /// The buffer's length in bytes.
        buffer_len: u32,
    },
    /// A buffer cannot be deregistered while requests or borrows use it.
    BufferInUse {
        /// The buffer.
        id: BufferId,
        /// Requests in flight and borrows alive on it.
        uses: usize,
    },
    /// The slice overlaps bytes of its buffer in a use that conflicts with
    /// this one (the kernel writing a receive into them, or a borrow).
    SliceBusy {
        /// The slice asked for.
        buf: RioBuf,
        /// What the overlapping bytes are doing.
        conflict: SliceUse,
    },
    /// Memory for a buffer could not be allocated.
    OutOfMemory {
        /// Bytes asked for (rounded up to whole pages).
        size: usize,
    },
    /// The completion queue has no room for what a request queue would
    /// charge to it: its outstanding requests could overflow it.
    QueueTooSmall {
        /// The completion queue's size.
        size: u32,
        /// Entries already charged to it by request queues.
        charged: u32,
        /// Entries this call wanted to charge.
        asked: u32,
    },
    /// The request queue already has its maximum of this kind outstanding.
    TooManyRequests {
        /// Receives or sends.
        kind: RequestKind,
        /// The queue's maximum outstanding of that kind.
        max: u32,
    },
    /// A size cannot go below what is in use now.
    BelowOutstanding {
        /// What is in use (outstanding requests, or entries charged).
        in_use: u32,
        /// The size asked for.
        asked: u32,
    },
    /// `notify` was called while a notification is armed and has not fired.
    AlreadyArmed,
    /// `wait` was called with no notification armed.
    NotArmed,
    /// The completion queue was not created with the notification this call
    /// needs (`notify` on a polled queue, `wait` on a port-notified one).
    WrongNotification,
    /// The operation is refused while a notification is armed.
    Armed,
    /// `WAITALL` was asked for on a datagram socket, where it means nothing.
    WaitAllOnDatagram,
    /// A buffer for a socket address is smaller than an IPv6 address.
    AddressBufferTooSmall {
        /// The slice given.
        buf: RioBuf,
        /// The least length accepted.
        need: u32,
    },
    /// The completion queue was closed.
    QueueClosed,
    /// Closing or resizing a completion queue waited as long as it may for
    /// the kernel to finish requests it had cancelled. The queue's ring and
    /// the requests' memory are kept (leaked on purpose) so that the kernel
    /// never writes into freed memory.
    KernelBusy {
        /// Requests the kernel still held.
        outstanding: usize,
    },
}

impl RioError {
    /// The `io::ErrorKind` that fits best, for conversion to `io::Error`.
    pub fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            RioError::UnknownBuffer(_) => K::NotFound,
            RioError::OutOfMemory { .. } => K::OutOfMemory,
            RioError::TooManyRequests { .. } => K::WouldBlock,
            RioError::QueueClosed => K::BrokenPipe,
            RioError::KernelBusy { .. } => K::TimedOut,
            RioError::BufferInUse { .. } | RioError::SliceBusy { .. } => K::ResourceBusy,
            _ => K::InvalidInput,
        }
    }
}

impl fmt::Display for RioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RioError::UnknownBuffer(id) => write!(f, "buffer {id} is not registered"),
            RioError::OutOfBounds { buf, buffer_len } => write!(
                f,
                "slice {}..{} is outside buffer {} of {buffer_len} bytes",
                buf.offset,
                buf.end(),
                buf.id
            ),
            RioError::BufferInUse { id, uses } => write!(
                f,
                "buffer {id} cannot be deregistered: {uses} requests or borrows still use it"
            ),
            RioError::SliceBusy { buf, conflict } => write!(
                f,
                "slice {}..{} of buffer {} overlaps bytes {conflict}",
                buf.offset,
                buf.end(),
                buf.id
            ),
            RioError::OutOfMemory { size } => {
                write!(f, "could not allocate {size} bytes for a registered buffer")
            }
            RioError::QueueTooSmall {
                size,
                charged,
                asked,
            } => write!(
                f,
                "completion queue too small: {asked} more outstanding requests would not fit \
                 ({charged} of its {size} entries are already charged to request queues)"
            ),
            RioError::TooManyRequests { kind, max } => write!(
                f,
                "request queue already has its maximum of {max} {kind}s outstanding"
            ),
            RioError::BelowOutstanding { in_use, asked } => {
                write!(f, "cannot shrink to {asked}: {in_use} are in use")
            }
            RioError::AlreadyArmed => {
                f.write_str("a notification is already armed on this completion queue")
            }
            RioError::NotArmed => f.write_str("no notification is armed on this completion queue"),
            RioError::WrongNotification => {
                f.write_str("the completion queue was created with another kind of notification")
            }
            RioError::Armed => f.write_str("not allowed while a notification is armed"),
            RioError::WaitAllOnDatagram => {
                f.write_str("WAITALL is not allowed on a datagram socket")
            }
            RioError::AddressBufferTooSmall { buf, need } => write!(
                f,
                "address slice of {} bytes in buffer {} is too small: at least {need} needed",
                buf.len, buf.id
            ),
            RioError::QueueClosed => f.write_str("completion queue closed"),
            RioError::KernelBusy { outstanding } => write!(
                f,
                "the kernel still held {outstanding} cancelled requests after waiting; their \
                 memory is kept so that it is never written after being freed"
            ),
        }
    }
}

impl std::error::Error for RioError {}

impl From<RioError> for crate::Error {
    fn from(e: RioError) -> Self {
        crate::Error::Io(io::Error::new(e.kind(), e))
    }
}

impl crate::Error {
    /// The registered I/O rule this error reports, if it is one.
    ///
    /// ```
    /// use ringport::rio::{self, RioBuf, RioError};
    /// let id = rio::register_buffer(4096)?;
    /// rio::deregister_buffer(id)?;
    /// let e = rio::deregister_buffer(id).unwrap_err();
    /// assert_eq!(e.rio(), Some(&RioError::UnknownBuffer(id)));
    /// # Ok::<(), ringport::Error>(())
    /// ```
    pub fn rio(&self) -> Option<&RioError> {
        match self {
            crate::Error::Io(e) => e.get_ref()?.downcast_ref(),
            _ => None,
        }
    }
}
