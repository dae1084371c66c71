//! The one choice of backend, for ports and RIO completion queues alike.

use std::io;

use crate::Error;

/// Which kernel interface a port's I/O runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring, falling back to epoll when a ring cannot be set up
    /// (ENOSYS, EPERM from a seccomp filter or `kernel.io_uring_disabled`,
    /// ENOMEM, a kernel too old for what the port needs).
    #[default]
    Auto,
    /// io_uring only: creating the port fails if it is not available.
    IoUring,
    /// epoll (readiness turned into completions).
    Epoll,
}

impl Backend {
    /// The backend `RINGPORT_BACKEND` (`io_uring`, `epoll` or `auto`) forces
    /// for the whole process, if it is set.
    pub fn from_env() -> Result<Option<Backend>, Error> {
        match std::env::var("RINGPORT_BACKEND") {
            Err(_) => Ok(None),
            Ok(v) => v.parse().map(Some),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Backend::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Backend::IoUring),
            "epoll" => Ok(Backend::Epoll),
            _ => Err(Error::InvalidArgument(
                "backend must be one of io_uring, epoll, auto",
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        })
    }
}

/// What [`choose`] set up.
pub(crate) enum Chosen<U, E> {
    Uring(U),
    Epoll(E),
}

/// Sets up `asked` (or the backend `RINGPORT_BACKEND` forces): `uring` or
/// `epoll` builds it; [`Backend::Auto`] takes io_uring and falls back to
/// epoll when `uring` fails (io_uring_setup refused: ENOSYS, EPERM from a
/// seccomp filter or `kernel.io_uring_disabled`, ENOMEM, a kernel too old).
pub(crate) fn choose<U, E>(
    asked: Backend,
    uring: impl FnOnce() -> io::Result<U>,
    epoll: impl FnOnce() -> io::Result<E>,
) -> Result<Chosen<U, E>, Error> {
    Ok(match Backend::from_env()?.unwrap_or(asked) {
        Backend::IoUring => Chosen::Uring(uring()?),
        Backend::Epoll => Chosen::Epoll(epoll()?),
        Backend::Auto => match uring() {
            Ok(u) => Chosen::Uring(u),
            Err(_) => Chosen::Epoll(epoll()?),
        },
    })
}
