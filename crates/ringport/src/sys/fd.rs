//! What a descriptor is, as far as its operations care: read once, when it
//! is associated with a port.

use std::io;
use std::os::fd::RawFd;

/// The kind of descriptor an operation runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A regular file or block device: positioned I/O, with no order between
    /// operations (Windows promises none for files either).
    File,
    /// A stream socket: operations of one direction complete in issue order.
    Stream,
    /// A datagram or sequenced-packet socket: ordered, and a receive reports
    /// a message longer than its buffer (`EMSGSIZE`).
    Datagram,
    /// Anything else that reads and writes as a stream (a pipe, a FIFO, a
    /// tty): ordered, and `recv`/`send` are `read`/`write`.
    Pipe,
    /// No descriptor at all (a timer).
    None,
}

impl FdKind {
    /// Whether operations of one direction must complete in issue order.
    pub(crate) fn ordered(self) -> bool {
        matches!(self, FdKind::Stream | FdKind::Datagram | FdKind::Pipe)
    }
}

/// Finds out what `fd` is (`fstat`, then `SO_TYPE` for a socket).
pub(crate) fn classify(fd: RawFd) -> io::Result<FdKind> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFBLK => FdKind::File,
        libc::S_IFSOCK => {
            let mut ty: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a live int and its length for getsockopt to fill in.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&mut ty as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            match ty {
                libc::SOCK_DGRAM | libc::SOCK_SEQPACKET | libc::SOCK_RAW => FdKind::Datagram,
                _ => FdKind::Stream,
            }
        }
        _ => FdKind::Pipe,
    })
}
