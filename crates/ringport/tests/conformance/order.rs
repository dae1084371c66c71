//! Issue order: operations of one kind pending on one handle complete in
//! the order they were issued.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::support::*;

/// Two 16-byte receives pending on one stream (tokens 1 then 2) and 32
/// bytes from the peer: the first-issued takes bytes 0..16, the second
/// bytes 16..32.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` and
/// `test_WSARecv` (several WSARecv pending on one socket complete in the
/// order issued), and `dlls/ntdll/tests/pipe.c`, `read_pipe_test` (a
/// pending read takes the first bytes written).
#[test]
fn pending_receives_on_a_stream_take_its_bytes_in_issue_order() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 600).unwrap();
    h.recv(vec![0u8; 16], 1).unwrap();
    h.recv(vec![0u8; 16], 2).unwrap();
    let sent = bytes(600, 32);
    peer.write_all(&sent).unwrap();
    let mut packets = get_n(&port, 2);
    assert_eq!(packets[0].token, 1);
    assert_eq!(
        data(&mut packets[0]),
        sent[..16],
        "token 1 takes bytes 0..16"
    );
    assert_eq!(
        data(&mut packets[1]),
        sent[16..],
        "token 2 takes bytes 16..32"
    );
    assert_quiet(&port, "one packet per receive");
}

/// Two 64-byte receives pending and a 32-byte message: the first-issued
/// takes all of it and the second keeps waiting, for the next message.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` (the
/// first pending WSARecv completes with what arrived).
#[test]
fn the_first_issued_receive_takes_a_short_message() {
    let port = port();
    let (ours, mut peer) = tcp_pair();
    let h = port.associate(ours, 601).unwrap();
    h.recv(vec![0u8; 64], 1).unwrap();
    h.recv(vec![0u8; 64], 2).unwrap();
    let sent = bytes(601, 32);
    peer.write_all(&sent).unwrap();
    let mut p = get(&port);
    assert_eq!(
        (p.key, p.token),
        (601, 1),
        "the first-issued receive completes first"
    );
    assert_eq!(data(&mut p), sent);
    assert_quiet(&port, "the second receive waits for more data");
    peer.write_all(b"tail").unwrap();
    let mut p = get(&port);
    assert_eq!((p.key, p.token), (601, 2));
    assert_eq!(data(&mut p), b"tail");
}

/// Run lengths of a byte stream, for a readable failure message.
fn runs(v: &[u8]) -> Vec<(u8, usize)> {
    let mut out: Vec<(u8, usize)> = Vec::new();
    for &b in v {
        match out.last_mut() {
            Some((c, n)) if *c == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// Four 1 MiB sends pending on one stream whose buffers are small and whose
/// peer does not read until all are issued: the bytes go on the wire in
/// issue order (each send's bytes, as many as it reports, after those of
/// the sends issued before it).
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_completion_port` (WSASend
/// pending on a full socket) and `dlls/kernel32/tests/pipe.c`,
/// `test_overlapped_transport` (overlapped writes reach the reader in
/// order).
#[test]
fn pending_sends_on_a_stream_put_bytes_on_the_wire_in_issue_order() {
    const LEN: usize = 1 << 20;
    let port = port();
    let (ours, peer) = tcp_pair();
    set_int_opt(&ours, libc::SOL_SOCKET, libc::SO_SNDBUF, 4096);
    set_int_opt(&peer, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
    let h = port.associate(ours, 602).unwrap();
    for t in 1..=4u64 {
        h.send(vec![t as u8; LEN], t).unwrap();
    }
    let reader = std::thread::spawn(move || {
        let mut peer = peer;
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        got
    });
    let mut sent = [0usize; 4];
    for _ in 0..4 {
        let p = get(&port);
        assert_eq!(p.key, 602);
        let n = *p.result.as_ref().expect("the send succeeds");
        assert!(n > 0 && n <= LEN, "token {}: {n} bytes", p.token);
        sent[p.token as usize - 1] = n;
    }
    assert_quiet(&port, "one packet per send");
    drop(h);
    let got = reader.join().unwrap();
    let expected: Vec<(u8, usize)> = (1..=4u8).zip(sent).collect();
    assert_eq!(runs(&got), expected, "the stream, as (send token, bytes)");
}

/// Four accepts pending on one listener and clients connecting one at a
/// time: the first connection goes to the first-issued accept, and so on.
///
/// Follows Wine `dlls/ws2_32/tests/sock.c`, `test_AcceptEx` and
/// `test_completion_port` (AcceptEx calls pending on one listener are
/// satisfied in order).
#[test]
fn pending_accepts_on_a_listener_take_connections_in_issue_order() {
    let port = port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.associate(listener, 603).unwrap();
    for t in 1..=4 {
        listener.accept(t).unwrap();
    }
    let mut clients = Vec::new();
    for t in 1..=4 {
        let client = TcpStream::connect(addr).unwrap();
        let mut p = get(&port);
        assert_eq!(p.key, 603);
        assert_eq!(
            (p.token, p.peer()),
            (t, Some(client.local_addr().unwrap())),
            "connection {t} goes to the accept issued {t}th"
        );
        let mut s = p.take_stream().expect("the accepted socket");
        s.write_all(b"x").unwrap();
        clients.push(client);
    }
    assert_quiet(&port, "one packet per accept");
    for mut c in clients {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    }
}
