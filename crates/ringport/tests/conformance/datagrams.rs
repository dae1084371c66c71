//! Truncation: a datagram longer than the receive buffer completes with
//! `EMSGSIZE` and the bytes that fit, never as a whole datagram.

use crate::support::*;

const ROOM: usize = 1024;

/// `recv_from` into a 1024-byte buffer of a 1025-byte datagram completes
/// with `EMSGSIZE`, the 1024 bytes that fit in the buffer, the handle's key,
/// the token and the sender's address.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_completion` and
/// `read_pipe_test` (a message longer than the read buffer completes
/// STATUS_BUFFER_OVERFLOW, through the port, with Information = the bytes
/// that fit) and `dlls/ws2_32/tests/sock.c`, `test_WSARecv` (WSAEMSGSIZE
/// for a datagram larger than the buffer).
#[test]
fn recv_from_of_a_datagram_longer_than_the_buffer_completes_with_emsgsize() {
    let port = port();
    let rx = udp();
    let addr = rx.local_addr().unwrap();
    let rx = port.associate(rx, 900).unwrap();
    let tx = udp();
    rx.recv_from(Vec::with_capacity(ROOM), 1).unwrap();
    let sent = bytes(900, ROOM + 1);
    tx.send_to(&sent, addr).unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (900, 1));
    assert_eq!(p.peer(), Some(tx.local_addr().unwrap()), "the sender");
    assert_eq!(errno(&p), libc::EMSGSIZE, "{:?}", p.result);
    let buf = p.take_buf().expect("the buffer back");
    assert_eq!(buf.len(), ROOM, "the bytes that fit");
    assert_eq!(buf.as_slice(), &sent[..ROOM]);
    assert_quiet(&port, "one packet per receive");
}

/// `recv` on a connected UDP socket into a 1024-byte buffer of a 1025-byte
/// datagram completes with `EMSGSIZE` and the 1024 bytes that fit.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_WSARecv` (WSARecv on a
/// connected datagram socket, buffer too small: WSAEMSGSIZE).
#[test]
fn recv_on_a_connected_udp_socket_reports_a_truncated_datagram_with_emsgsize() {
    let port = port();
    let rx = udp();
    let tx = udp();
    rx.connect(tx.local_addr().unwrap()).unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    let rx = port.associate(rx, 901).unwrap();
    rx.recv(Vec::with_capacity(ROOM), 2).unwrap();
    let sent = bytes(901, ROOM + 1);
    tx.send(&sent).unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (901, 2));
    assert_eq!(errno(&p), libc::EMSGSIZE, "{:?}", p.result);
    let buf = p.take_buf().expect("the buffer back");
    assert_eq!(buf.len(), ROOM, "the bytes that fit");
    assert_eq!(buf.as_slice(), &sent[..ROOM]);
    assert_quiet(&port, "one packet per receive");
}

/// A datagram exactly the size of the buffer is whole: `Ok(1024)`, all of
/// its bytes and the sender's address.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_WSARecv` (a datagram that
/// fits completes with its length).
#[test]
fn a_datagram_that_fits_exactly_completes_whole() {
    let port = port();
    let rx = udp();
    let addr = rx.local_addr().unwrap();
    let rx = port.associate(rx, 902).unwrap();
    let tx = udp();
    rx.recv_from(Vec::with_capacity(ROOM), 3).unwrap();
    let sent = bytes(902, ROOM);
    tx.send_to(&sent, addr).unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (902, 3));
    assert_eq!(p.result.as_ref().ok(), Some(&ROOM));
    assert_eq!(p.peer(), Some(tx.local_addr().unwrap()));
    assert_eq!(data(&mut p), sent);
    assert_quiet(&port, "one packet per receive");
}
