//! What a request says of itself: its kind (which of its request queue's
//! limits it counts against) and its flags.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Flags of a request (`RIO_MSG_*`); combine them with `|`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RioFlags(u32);

impl RioFlags {
    /// No flag.
    pub const NONE: RioFlags = RioFlags(0);
    /// Queue the request without handing it to the kernel; the next request
    /// without `DEFER` on the same completion queue, or
    /// [`RequestQueue::commit`](super::RequestQueue::commit), submits it with the others in one system
    /// call (`RIO_MSG_DEFER`).
    pub const DEFER: RioFlags = RioFlags(1);
    /// The request's result does not fire an armed notification, event or
    /// port (`RIO_MSG_DONT_NOTIFY`); the next result without it does.
    pub const DONT_NOTIFY: RioFlags = RioFlags(2);
    /// A stream receive completes only when its buffer is full (or the
    /// connection ends or fails) (`RIO_MSG_WAITALL`, `MSG_WAITALL`).
    /// Refused on datagram sockets.
    pub const WAITALL: RioFlags = RioFlags(4);
    /// Only submit what was deferred (`RIO_MSG_COMMIT_ONLY`): that is
    /// [`RequestQueue::commit`](super::RequestQueue::commit); a request given this flag is refused.
    pub const COMMIT_ONLY: RioFlags = RioFlags(8);

    /// Whether every flag in `other` is set in `self`.
    pub fn contains(self, other: RioFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for RioFlags {
    type Output = RioFlags;
    fn bitor(self, rhs: RioFlags) -> RioFlags {
        RioFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for RioFlags {
    fn bitor_assign(&mut self, rhs: RioFlags) {
        self.0 |= rhs.0;
    }
}

/// Which of a request queue's two limits a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `receive`, `receive_ex`.
    Receive,
    /// `send`, `send_ex`.
    Send,
}

impl RequestKind {
    /// Its index in per-kind arrays: receives 0, sends 1.
    pub(super) fn index(self) -> usize {
        match self {
            RequestKind::Receive => 0,
            RequestKind::Send => 1,
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestKind::Receive => "receive",
            RequestKind::Send => "send",
        })
    }
}
