//! Stream sockets: graceful close, accept keys, refused connect, close and
//! reset with operations pending, cancel one and cancel all.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use crate::support::*;

/// The peer's graceful close (shutdown of its sending side) completes a
/// pending receive with 0 bytes, and the next receive too.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` ("IOCP
/// response on graceful shutdown": the pending WSARecv completes with 0
/// bytes and success).
#[test]
fn a_graceful_close_by_the_peer_completes_a_pending_receive_with_zero_bytes() {
    let port = port();
    let (ours, peer) = tcp_pair();
    let h = port.associate(ours, 100).unwrap();
    h.recv(vec![0u8; 64], 1).unwrap();
    assert_quiet(&port, "before the peer closes");
    peer.shutdown(Shutdown::Write).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token, p.result.unwrap()), (100, 1, 0));
    h.recv(vec![0u8; 64], 2).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token, p.result.unwrap()), (100, 2, 0));
    assert_quiet(&port, "one packet per receive");
    drop(peer);
}

/// An accept completes with the listener's key and the accept's token; the
/// accepted socket, associated under a key of its own, completes its
/// operations with that key and talks to the client.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` (AcceptEx
/// on a listener associated with key 125: the packet carries that key and
/// the OVERLAPPED; the accepted socket is then associated with another key)
/// and `test_AcceptEx`.
#[test]
fn an_accept_completes_with_the_listeners_key_and_the_socket_works_under_its_own() {
    let port = port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.associate(listener, 125).unwrap();
    listener.accept(9).unwrap();
    assert_quiet(&port, "an accept with no client");
    let mut client = TcpStream::connect(addr).unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (125, 9));
    p.result.as_ref().expect("the accept succeeds");
    assert_eq!(p.peer(), Some(client.local_addr().unwrap()));
    let accepted = p.take_stream().expect("the accepted socket");
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
    assert_quiet(&port, "one packet per accept");

    let conn = port.associate(accepted, 126).unwrap();
    conn.recv(vec![0u8; 64], 10).unwrap();
    client.write_all(b"hello server").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (126, 10));
    assert_eq!(data(&mut p), b"hello server");
    conn.send(b"hello client".to_vec(), 11).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token, p.result.unwrap()), (126, 11, 12));
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello client");
    assert_quiet(&port, "nothing else");
}

/// A connect to a port nothing listens on completes as one packet with
/// `ECONNREFUSED`, the socket's key and the connect's token.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_ConnectEx` (ConnectEx to a
/// closed port: ERROR_CONNECTION_REFUSED through the OVERLAPPED).
#[test]
fn a_refused_connect_completes_with_econnrefused_its_key_and_token() {
    let port = port();
    let to = closed_port();
    let s = port.associate(tcp_socket(), 0xc0ff_ee00).unwrap();
    match s.connect(to, 77) {
        Ok(_) => {
            let p = get(&port);
            assert_eq!((p.key, p.token), (0xc0ff_ee00, 77));
            assert_eq!(errno(&p), libc::ECONNREFUSED);
        }
        Err(e) => panic!("a refused connect must complete as a packet, not fail at once: {e}"),
    }
    assert_quiet(&port, "one outcome per connect");
}

/// The peer's abortive close (SO_LINGER 0: a reset) completes a pending
/// receive once, with `ECONNRESET` (or 0 bytes), with its key and token.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` ("IOCP
/// response on hard shutdown": the pending WSARecv fails with
/// WSAECONNRESET / ERROR_NETNAME_DELETED).
#[test]
fn a_reset_by_the_peer_completes_a_pending_receive_once() {
    let port = port();
    let (ours, peer) = tcp_pair();
    let h = port.associate(ours, 200).unwrap();
    h.recv(vec![0u8; 64], 1).unwrap();
    set_linger_zero(&peer);
    drop(peer);
    let p = get(&port);
    assert_eq!((p.key, p.token), (200, 1));
    match &p.result {
        Ok(0) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
        other => panic!("expected 0 bytes or ECONNRESET, got {other:?}"),
    }
    assert_quiet(&port, "one packet per receive");
}

/// The peer closing with several receives pending completes each once: the
/// first with 0 bytes (end of stream) or a reset, none lost or doubled.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port`
/// (closesocket of the peer with WSARecv pending).
#[test]
fn the_peer_closing_completes_every_pending_receive_once() {
    let port = port();
    let (ours, peer) = tcp_pair();
    let h = port.associate(ours, 201).unwrap();
    for t in 1..=3 {
        h.recv(vec![0u8; 64], t).unwrap();
    }
    drop(peer);
    let packets = get_n(&port, 3);
    for p in &packets {
        assert_eq!(p.key, 201);
        match &p.result {
            Ok(0) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
            other => panic!("token {}: expected 0 or ECONNRESET, got {other:?}", p.token),
        }
    }
    let tokens: Vec<u64> = packets.iter().map(|p| p.token).collect();
    assert_eq!(tokens, [1, 2, 3]);
    assert_quiet(&port, "one packet per receive");
}

/// Dropping a handle (closing the socket) with operations pending completes
/// each of them exactly once, cancelled, with its key and token, and hands
/// back its buffer.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port`
/// (closesocket with WSARecv pending: the packet comes with
/// ERROR_OPERATION_ABORTED) and `dlls/ntdll/tests/pipe.c`,
/// `test_async_cancel_on_handle_close` and `read_pipe_test` ("Close queued
/// handle").
#[test]
fn dropping_a_handle_with_operations_pending_cancels_each_once() {
    let port = port();
    let (ours, peer) = tcp_pair();
    let h = port.associate(ours, 300).unwrap();
    for t in 1..=3 {
        h.recv(vec![0u8; 64], t).unwrap();
    }
    let listener = port
        .associate(TcpListener::bind("127.0.0.1:0").unwrap(), 301)
        .unwrap();
    listener.accept(4).unwrap();
    assert_quiet(&port, "nothing completes before the drop");
    drop(h);
    drop(listener);
    let mut packets = get_n(&port, 4);
    for p in &mut packets {
        assert!(p.is_cancelled(), "token {}: {:?}", p.token, p.result);
        let key = if p.token == 4 { 301 } else { 300 };
        assert_eq!(p.key, key, "key of token {}", p.token);
        if p.token != 4 {
            assert_eq!(p.take_buf().expect("buffer back").capacity(), 64);
        }
    }
    let tokens: Vec<u64> = packets.iter().map(|p| p.token).collect();
    assert_eq!(tokens, [1, 2, 3, 4]);
    assert_quiet(&port, "exactly one packet per cancelled operation");
    drop(peer);
}

/// Cancelling one pending receive completes it (cancelled, with its key and
/// token); the others stay pending and take the peer's data.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `read_pipe_test` ("Basic Cancel
/// Ex": NtCancelIoFileEx of one IO_STATUS_BLOCK completes that read with
/// STATUS_CANCELLED) and `test_cancelio`.
#[test]
fn cancelling_one_operation_completes_it_cancelled_and_leaves_the_others() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 400).unwrap();
    h.recv(vec![0u8; 16], 1).unwrap();
    let two = h.recv(vec![0u8; 16], 2).unwrap();
    h.recv(vec![0u8; 16], 3).unwrap();
    h.cancel(two).unwrap();
    let p = get(&port);
    assert_eq!((p.key, p.token), (400, 2));
    assert!(p.is_cancelled(), "{:?}", p.result);
    assert_quiet(&port, "the other receives stay pending");

    let mut tokens = Vec::new();
    for msg in [b"a", b"b"] {
        peer.write_all(msg).unwrap();
        let mut p = get(&port);
        assert_eq!(p.key, 400);
        assert_eq!(data(&mut p), msg, "token {}", p.token);
        tokens.push(p.token);
    }
    tokens.sort();
    assert_eq!(tokens, [1, 3]);
    assert_quiet(&port, "one packet per operation");
}

/// Cancelling all of a handle's operations completes each once, cancelled;
/// another handle's operations are untouched, and the cancelled handle
/// still works afterwards.
///
/// Follows Wine `dlls/ntdll/tests/pipe.c`, `test_cancelio` (NtCancelIoFile:
/// every pending operation of the handle completes STATUS_CANCELLED) and
/// `read_pipe_test` ("Cancel by other handle").
#[test]
fn cancelling_all_completes_each_operation_cancelled_and_spares_other_handles() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let (other, mut other_peer) = tcp_pair();
    let h = port.associate(ours, 500).unwrap();
    let o = port.associate(other, 501).unwrap();
    for t in 1..=3 {
        h.recv(vec![0u8; 16], t).unwrap();
    }
    o.recv(vec![0u8; 16], 9).unwrap();
    h.cancel_all().unwrap();
    let packets = get_n(&port, 3);
    for p in &packets {
        assert_eq!(p.key, 500);
        assert!(p.is_cancelled(), "token {}: {:?}", p.token, p.result);
    }
    let tokens: Vec<u64> = packets.iter().map(|p| p.token).collect();
    assert_eq!(tokens, [1, 2, 3]);
    assert_quiet(&port, "the other handle's receive stays pending");

    other_peer.write_all(b"other").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (501, 9));
    assert_eq!(data(&mut p), b"other");

    h.recv(vec![0u8; 16], 4).unwrap();
    peer.write_all(b"again").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (500, 4));
    assert_eq!(data(&mut p), b"again");
    assert_quiet(&port, "one packet per operation");
}

/// Failure packets of every kind keep their handle's key and their
/// operation's token: a refused connect, a reset receive and a cancelled
/// receive, pending at once on one port, each come back with their own.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` (every
/// failed packet is checked for its key and OVERLAPPED).
#[test]
fn failure_packets_carry_their_key_and_token() {
    let port = port();
    let refused = port.associate(tcp_socket(), 0xaaaa).unwrap();
    refused.connect(closed_port(), 1).unwrap();
    let (reset_ours, reset_peer) = tcp_pair();
    let reset = port.associate(reset_ours, 0xbbbb).unwrap();
    reset.recv(vec![0u8; 16], 2).unwrap();
    let (cancel_ours, _cancel_peer) = tcp_pair();
    let cancelled = port.associate(cancel_ours, 0xcccc).unwrap();
    let id = cancelled.recv(vec![0u8; 16], 3).unwrap();
    set_linger_zero(&reset_peer);
    drop(reset_peer);
    cancelled.cancel(id).unwrap();
    let packets = get_n(&port, 3);
    let got: Vec<(u64, u64, i32)> = packets.iter().map(|p| (p.key, p.token, errno(p))).collect();
    assert_eq!(
        got,
        [
            (0xaaaa, 1, libc::ECONNREFUSED),
            (0xbbbb, 2, libc::ECONNRESET),
            (0xcccc, 3, libc::ECANCELED),
        ]
    );
    assert_quiet(&port, "one packet per operation");
}
