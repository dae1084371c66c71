//! The crate's error type.

use std::fmt;
use std::io;

/// What can go wrong with a completion port.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The port was closed (by [`close`](crate::CompletionPort::close) or by
    /// dropping its last handle). Distinct from every I/O error.
    Closed,
    /// `get` waited as long as it was allowed to and no packet came.
    Timeout,
    /// More threads tried to wait on one port than it can park (32,767).
    TooManyWaiters,
    /// An argument is out of range; the message says which and why.
    InvalidArgument(&'static str),
    /// The operating system refused something, or a registered I/O rule was
    /// broken (then [`Error::rio`] gives the rule as a typed
    /// [`RioError`](crate::rio::RioError), and the kind says what sort of
    /// failure it is).
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed => f.write_str("completion port closed"),
            Error::Timeout => f.write_str("timed out waiting for a completion packet"),
            Error::TooManyWaiters => f.write_str("too many threads waiting on one completion port"),
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Timeout => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::InvalidArgument(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            other => io::Error::other(other),
        }
    }
}
