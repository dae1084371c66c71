//! One outcome per operation, packets that keep what they were given,
//! completion by a peer, and skip-on-success.

use std::io::{Read, Write};
use std::net::TcpListener;

use ringport::{CompletionPort, Error, OpId, Started};

use crate::support::*;

/// The error of an operation that cannot succeed, however it is reported:
/// either at once (and then no packet is queued) or in exactly one packet
/// carrying `key` and `token` — never both, never none.
fn the_one_error(
    port: &CompletionPort<u64>,
    key: u64,
    token: u64,
    started: Result<OpId, Error>,
) -> i32 {
    let e = match started {
        Err(Error::Io(e)) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("token {token}: error without errno: {e}")),
        Err(e) => panic!("token {token}: unexpected immediate error {e}"),
        Ok(_) => {
            let p = get(port);
            assert_eq!((p.key, p.token), (key, token), "the failure packet");
            errno(&p)
        }
    };
    assert_quiet(port, &format!("after the one outcome of token {token}"));
    e
}

/// Operations on a handle in the wrong state (not connected, not listening,
/// already connected) fail exactly once: an immediate error with nothing
/// queued, or one failure packet with the handle's key and the token.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `read_pipe_test` ("read from
/// disconnected pipe", "read from closed handle": the call fails at once,
/// the IO_STATUS_BLOCK is untouched and no completion is delivered) and
/// `dlls/ws2_32/tests/sock.c`, `test_completion_port` (after each case
/// `GetQueuedCompletionStatus` with a zero timeout finds nothing).
#[test]
fn an_operation_that_cannot_start_has_exactly_one_outcome() {
    let port = port();
    let unconnected = port.associate(tcp_socket(), 70).unwrap();
    let e = the_one_error(&port, 70, 1, unconnected.recv(vec![0u8; 16], 1));
    assert_eq!(e, libc::ENOTCONN, "recv on an unconnected socket");
    let e = the_one_error(&port, 70, 2, unconnected.send(b"x".to_vec(), 2));
    assert!(
        e == libc::EPIPE || e == libc::ENOTCONN,
        "send on an unconnected socket: errno {e}"
    );
    let how = std::net::Shutdown::Both;
    let e = the_one_error(&port, 70, 3, unconnected.shutdown(how, 3));
    assert_eq!(e, libc::ENOTCONN, "shutdown of an unconnected socket");
    let e = the_one_error(&port, 70, 4, unconnected.accept(4));
    assert_eq!(e, libc::EINVAL, "accept on a socket that is not listening");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = port.associate(listener, 71).unwrap();
    let e = the_one_error(&port, 71, 5, listener.recv(vec![0u8; 16], 5));
    assert_eq!(e, libc::ENOTCONN, "recv on a listening socket");

    let (ours, _peer) = tcp_pair();
    let to = ours.peer_addr().unwrap();
    let connected = port.associate(ours, 72).unwrap();
    let e = the_one_error(&port, 72, 6, connected.connect(to, 6));
    assert_eq!(e, libc::EISCONN, "connect of a connected socket");
}

/// Cancelling an operation that has already completed fails at once and
/// queues nothing; operations on a closed port fail at once with `Closed`.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_cancelio`
/// (`NtCancelIoFileEx` when nothing is pending returns `STATUS_NOT_FOUND`
/// and leaves the IO_STATUS_BLOCK untouched).
#[test]
fn cancelling_a_finished_operation_or_using_a_closed_port_fails_at_once() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 80).unwrap();
    let id = h.recv(vec![0u8; 16], 1).unwrap();
    peer.write_all(b"done").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token, data(&mut p)), (80, 1, b"done".to_vec()));
    assert!(
        matches!(h.cancel(id), Err(Error::InvalidArgument(_))),
        "cancel of a completed operation"
    );
    assert_quiet(&port, "after cancelling a completed operation");

    port.close();
    assert!(matches!(h.recv(vec![0u8; 16], 2), Err(Error::Closed)));
    assert!(matches!(
        port.timer(std::time::Duration::from_millis(1), 81, 3),
        Err(Error::Closed)
    ));
    assert!(matches!(port.get(WAIT), Err(Error::Closed)));
}

/// A packet carries exactly the key its handle was associated with (any
/// 64-bit value), the token of its operation (any value) and the result
/// (the bytes transferred), and `post` keeps an error result's code.
///
/// Follows Wine `dlls/ntdll/tests/file.c`, `test_iocp_setcompletion` and
/// `test_iocp_fileio` (CKEY_FIRST/CVALUE_FIRST come back unchanged with the
/// byte count), and `dlls/ws2_32/tests/sock.c`, `test_completion_port`
/// (key and OVERLAPPED of each socket's packet).
#[test]
fn a_packet_keeps_key_token_and_result_exactly() {
    let port = port();
    let keys = [0u64, 1, u64::MAX, 0x8000_0000_0000_0001];
    let tokens = [u64::MAX, 0, 42, 1 << 63];
    let sender = udp();
    let mut handles = Vec::new();
    for (i, (&key, &token)) in keys.iter().zip(&tokens).enumerate() {
        let rx = udp();
        let addr = rx.local_addr().unwrap();
        let rx = port.associate(rx, key).unwrap();
        rx.recv_from(vec![0u8; 256], token).unwrap();
        sender.send_to(&bytes(i as u64, 10 + i), addr).unwrap();
        handles.push(rx);
    }
    for _ in 0..keys.len() {
        let mut p = get(&port);
        let i = keys
            .iter()
            .position(|&k| k == p.key)
            .unwrap_or_else(|| panic!("unknown key {:#x}", p.key));
        assert_eq!(p.token, tokens[i], "token of key {:#x}", p.key);
        assert_eq!(p.result.as_ref().ok(), Some(&(10 + i)), "byte count");
        assert_eq!(p.peer(), Some(sender.local_addr().unwrap()));
        assert_eq!(data(&mut p), bytes(i as u64, 10 + i));
    }
    assert_quiet(&port, "one packet per receive");

    let eio = std::io::Error::from_raw_os_error(libc::EIO);
    port.post(u64::MAX - 1, 7, Err(eio)).unwrap();
    port.post(3, u64::MAX, Ok(usize::MAX)).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token, errno(&p)), (u64::MAX - 1, 7, libc::EIO));
    let p = get(&port);
    assert_eq!((p.key, p.token), (3, u64::MAX));
    assert_eq!(p.result.unwrap(), usize::MAX);
    assert_quiet(&port, "one packet per post");
}

/// A receive stays pending (no packet) until the peer sends; then it
/// completes once, with the peer's bytes; a send completes with the bytes
/// the peer then reads.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` (WSARecv
/// pending, `GetQueuedCompletionStatus` times out, the peer's send
/// completes it).
#[test]
fn a_pending_receive_is_completed_by_the_peer() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 11).unwrap();
    h.recv(vec![0u8; 64], 21).unwrap();
    assert_quiet(&port, "a receive with no data");
    peer.write_all(b"from the peer").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (11, 21));
    assert_eq!(data(&mut p), b"from the peer");
    assert_quiet(&port, "one packet per receive");

    h.send(b"to the peer".to_vec(), 22).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token, p.result.unwrap()), (11, 22, 11));
    let mut got = [0u8; 11];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to the peer");
    assert_quiet(&port, "one packet per send");
}

/// Skip-on-success with data ready: the receive completes at once
/// (`Started::Done` with the data, key and token) and no packet is queued;
/// a send with room in the socket buffer likewise.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_completion` (with
/// FILE_SKIP_COMPLETION_PORT_ON_SUCCESS a WriteFile or NtReadFile that
/// succeeds at once is followed by `test_no_queued_completion`).
#[test]
fn skip_on_success_with_data_ready_completes_at_once_and_queues_nothing() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 12).unwrap();
    peer.write_all(b"ready").unwrap();
    wait_readable(&h);
    match h.recv_now(vec![0u8; 64], 31).unwrap() {
        Started::Done(mut p) => {
            assert_eq!((p.key, p.token), (12, 31));
            assert_eq!(data(&mut p), b"ready");
        }
        Started::Pending(_) => panic!("data was ready but the receive is pending"),
    }
    assert_quiet(&port, "a receive that completed at once");

    match h.send_now(b"room".to_vec(), 32).unwrap() {
        Started::Done(p) => {
            assert_eq!((p.key, p.token, p.result.unwrap()), (12, 32, 4));
        }
        Started::Pending(_) => panic!("an empty send buffer, yet the send is pending"),
    }
    assert_quiet(&port, "a send that completed at once");
    let mut got = [0u8; 4];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"room");
}

/// Skip-on-success with no data: the receive is pending, queues nothing
/// until the peer sends, then completes as exactly one packet.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_completion` (in skip mode a
/// pending NtReadFile queues nothing, then `test_queued_completion` once the
/// other end writes).
#[test]
fn skip_on_success_without_data_is_pending_and_completes_as_one_packet() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 13).unwrap();
    assert!(matches!(
        h.recv_now(vec![0u8; 64], 41).unwrap(),
        Started::Pending(_)
    ));
    assert_quiet(&port, "a pending receive before the data");
    peer.write_all(b"later").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (13, 41));
    assert_eq!(data(&mut p), b"later");
    assert_quiet(&port, "one packet per pending receive");
}
