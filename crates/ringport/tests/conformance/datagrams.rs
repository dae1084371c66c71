//! Truncation: a datagram longer than the receive buffer completes with
//! `EMSGSIZE` and the bytes that fit, never as a whole datagram.

use ringport::Packet;

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

/// Many receives pending on one datagram socket take its datagrams in the
/// order the receives were issued, however the backend gathers them (on
/// io_uring, datagrams already waiting go into the queued receives with one
/// `recvmmsg`), and a long one among them still reports `EMSGSIZE`.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_WSARecv` (several
/// overlapped receives pending on one socket complete in the order issued).
#[test]
fn pending_datagram_receives_take_datagrams_in_issue_order() {
    const PENDING: u64 = 48;
    const SENT: u64 = 64;
    let port = port();
    let rx = udp();
    let addr = rx.local_addr().unwrap();
    set_int_opt(&rx, libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
    let rx = port.associate(rx, 901).unwrap();
    for token in 0..PENDING {
        rx.recv_from(Vec::with_capacity(ROOM), token).unwrap();
    }
    let tx = udp();
    let datagram = |i: u64| {
        let len = if i == 20 { ROOM + 5 } else { 8 + i as usize };
        let mut d = bytes(i, len);
        d[..8].copy_from_slice(&i.to_le_bytes());
        d
    };
    for i in 0..SENT {
        tx.send_to(&datagram(i), addr).unwrap();
    }
    let check = |p: &mut Packet<u64>| {
        let i = p.token;
        if i == 20 {
            assert_eq!(errno(p), libc::EMSGSIZE, "datagram 20 is too long");
            assert_eq!(p.take_buf().unwrap().as_slice(), &datagram(20)[..ROOM]);
        } else {
            assert_eq!(data(p), datagram(i), "receive {i} took another datagram");
        }
    };
    for mut p in get_n(&port, PENDING as usize) {
        check(&mut p);
    }
    // The rest wait in the socket for receives issued now.
    for token in PENDING..SENT {
        rx.recv_from(Vec::with_capacity(ROOM), token).unwrap();
    }
    for mut p in get_n(&port, (SENT - PENDING) as usize) {
        check(&mut p);
    }
    assert_quiet(&port, "one packet per receive");
}
