//! Pipes: `recv` and `send` work on any connected stream, pipes included.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use crate::support::*;

/// On an OS pipe associated with the port, `recv` on the read end gets what
/// `send` on the write end wrote; each completes once with its key.
///
/// Follows Wine `dlls/kernel32/tests/pipe.c`, `test_overlapped_transport`
/// (overlapped ReadFile/WriteFile on a pipe through a completion port) and
/// `dlls/ntdll/tests/pipe.c`, `test_completion`.
#[test]
fn recv_and_send_work_on_an_os_pipe() {
    let port = port();
    let (r, w) = pipe();
    let r = port.associate(r, 800).unwrap();
    let w = port.associate(w, 801).unwrap();
    r.recv(vec![0u8; 64], 1).unwrap();
    assert_quiet(&port, "a receive on an empty pipe");
    w.send(b"through the pipe".to_vec(), 2).unwrap();
    let mut packets = get_n(&port, 2);
    assert_eq!(packets[0].key, 800);
    assert_eq!(data(&mut packets[0]), b"through the pipe");
    assert_eq!((packets[1].key, packets[1].token), (801, 2));
    assert_eq!(packets[1].result.as_ref().ok(), Some(&16));
    assert_quiet(&port, "one packet per operation");
}

/// A receive pending on a pipe completes when a plain writer writes, and
/// with 0 bytes once the write end is closed.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_completion` (a read pending
/// on a pipe completes to the port when the other end writes) and
/// `read_pipe_test` ("disconnect while async read is in progress" completes
/// the read with no bytes), and `dlls/kernel32/tests/pipe.c`,
/// `test_CloseHandle`.
#[test]
fn a_pending_receive_on_a_pipe_completes_on_write_and_on_close() {
    let port = port();
    let (r, w) = pipe();
    let r = port.associate(r, 802).unwrap();
    let mut w = std::fs::File::from(w);
    r.recv(vec![0u8; 64], 1).unwrap();
    w.write_all(b"written").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (802, 1));
    assert_eq!(data(&mut p), b"written");
    r.recv(vec![0u8; 64], 2).unwrap();
    drop(w);
    let p = get(&port);
    assert_eq!((p.key, p.token, p.result.unwrap()), (802, 2, 0));
    assert_quiet(&port, "one packet per receive");
}

/// On a Unix stream socket pair, `recv` and `send` work both ways.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_completion` and
/// `dlls/kernel32/tests/pipe.c`, `test_overlapped_transport` (a duplex pipe
/// through a completion port).
#[test]
fn recv_and_send_work_on_a_unix_stream_pair() {
    let port = port();
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let h = port.associate(ours, 803).unwrap();
    h.recv(vec![0u8; 64], 1).unwrap();
    peer.write_all(b"unix in").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (803, 1));
    assert_eq!(data(&mut p), b"unix in");
    h.send(b"unix out".to_vec(), 2).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token, p.result.unwrap()), (803, 2, 8));
    let mut got = [0u8; 8];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"unix out");
    assert_quiet(&port, "one packet per operation");
}
