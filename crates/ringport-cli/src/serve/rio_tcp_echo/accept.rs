//! The accept thread of `tcp-echo --mode rio-port`: a plain listener,
//! polled with a timeout so that it sees the stop flag, handing each
//! connection to the worker with a packet on the port to wake it.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use ringport::CompletionPort;

use super::ACCEPT_KEY;
use crate::log::Every;

/// Accepts until `stop`, handing each connection to the worker.
pub(super) fn accept_loop(
    listener: TcpListener,
    port: CompletionPort<u64>,
    tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    stop: Arc<AtomicBool>,
) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if tx.send((stream, peer)).is_err() || port.post(ACCEPT_KEY, 0, Ok(0)).is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: every accept fails until
                    // connections close, so wait and say so now and then.
                    static FAILED: Every = Every::second();
                    FAILED.line(format_args!("tcp-echo: accept: {e}; retrying in 50 ms"));
                    thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
}
