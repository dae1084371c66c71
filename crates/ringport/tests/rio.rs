//! Registered I/O on real loopback sockets: one test per rule of DESIGN.md's
//! "Registered I/O semantics". Every wait is bounded.

use std::fmt::Debug;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringport::rio::{
    self, BufferId, CompletionQueue, Notify, RequestKind, RequestQueue, RioBuf, RioError, RioFlags,
    RioResult, SliceUse,
};
use ringport::{Backend, CompletionPort, Error};

mod common;
use common::rio::{bytes, take, udp};

const SECOND: Duration = Duration::from_secs(1);
const SHORT: Duration = Duration::from_millis(300);

fn rio_err<T: Debug>(r: Result<T, Error>) -> RioError {
    match r {
        Err(e) if e.rio().is_some() => e.rio().unwrap().clone(),
        other => panic!("expected a RIO error, got {other:?}"),
    }
}

fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Checks for 50 ms that no result arrives.
fn none_for_a_while(cq: &CompletionQueue) {
    thread::sleep(Duration::from_millis(50));
    assert_eq!(cq.dequeue(&mut [RioResult::default(); 4]).unwrap(), 0);
}

/// Runs the rest of the test in a child process (this test binary, running
/// only `name`), for checks that must not see other tests' threads or fds.
/// `env` is set for it (an empty value removes the variable). Returns true
/// in the child.
fn in_child(name: &str, env: &[(&str, &str)], wrapper: &[&str]) -> bool {
    if std::env::var("RIO_CHILD").as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((w, args)) => {
            let mut c = Command::new(w);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env("RIO_CHILD", name);
    for (k, v) in env {
        match v.is_empty() {
            true => cmd.env_remove(k),
            false => cmd.env(k, v),
        };
    }
    let out = cmd.output().expect("running the child test");
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "child {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

#[test]
fn slices_out_of_bounds_or_of_unknown_buffers_are_refused_at_submission() {
    let (server, _) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    assert_eq!(rio::buffer_len(id).unwrap(), 4096);

    let past = RioBuf::new(id, 4000, 200);
    assert_eq!(
        rio_err(rq.receive(past, RioFlags::NONE, 0)),
        RioError::OutOfBounds {
            buf: past,
            buffer_len: 4096
        }
    );
    assert!(matches!(
        rio_err(rq.send(RioBuf::new(id, u32::MAX, 2), RioFlags::NONE, 0)),
        RioError::OutOfBounds { .. }
    ));
    assert!(matches!(
        rio_err(rio::borrow(&past)),
        RioError::OutOfBounds { .. }
    ));
    // Nothing was started, nothing is counted.
    assert_eq!(rq.outstanding(), (0, 0));

    rio::deregister_buffer(id).unwrap();
    let gone = RioBuf::new(id, 0, 100);
    assert_eq!(
        rio_err(rq.receive(gone, RioFlags::NONE, 0)),
        RioError::UnknownBuffer(id)
    );
    assert_eq!(
        rio_err(rio::deregister_buffer(id)),
        RioError::UnknownBuffer(id)
    );
    let never = BufferId::from_u64(0);
    assert_eq!(
        rio_err(rq.send(RioBuf::new(never, 0, 1), RioFlags::NONE, 0)),
        RioError::UnknownBuffer(never)
    );
    // A new buffer in the same registry slot does not revive the old id.
    let again = rio::register_buffer(4096).unwrap();
    assert_ne!(again, id);
    assert!(rio::borrow(&gone).is_err());
    assert_eq!(rq.outstanding(), (0, 0));
    assert!(matches!(
        rio::register_buffer(0),
        Err(Error::InvalidArgument(_))
    ));
    rio::deregister_buffer(again).unwrap();
}

#[test]
fn a_buffer_with_requests_outstanding_cannot_be_deregistered() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    rq.receive(RioBuf::new(id, 0, 1024), RioFlags::NONE, 1)
        .unwrap();
    rq.receive(RioBuf::new(id, 1024, 1024), RioFlags::NONE, 2)
        .unwrap();
    assert_eq!(
        rio_err(rio::deregister_buffer(id)),
        RioError::BufferInUse { id, uses: 2 }
    );
    let c = client();
    c.send_to(b"a", addr).unwrap();
    c.send_to(b"b", addr).unwrap();
    take(&cq, 2);
    // Both requests ended: the memory can go.
    rio::deregister_buffer(id).unwrap();
}

#[test]
fn slices_the_kernel_writes_cannot_be_borrowed_and_borrowed_slices_cannot_receive() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    let rx = RioBuf::new(id, 0, 100);
    rq.receive(rx, RioFlags::NONE, 1).unwrap();

    let inside = RioBuf::new(id, 50, 10);
    assert_eq!(
        rio_err(rio::borrow(&inside)),
        RioError::SliceBusy {
            buf: inside,
            conflict: SliceUse::Receive
        }
    );
    assert!(rio::borrow_mut(&inside).is_err());
    // Bytes next to it are free.
    rio::borrow_mut(&RioBuf::new(id, 100, 100)).unwrap().fill(7);
    // A second receive into the same bytes is refused too.
    assert!(matches!(
        rio_err(rq.receive(RioBuf::new(id, 90, 20), RioFlags::NONE, 2)),
        RioError::SliceBusy {
            conflict: SliceUse::Receive,
            ..
        }
    ));

    // While a slice is borrowed, a receive into it is refused, a send allowed.
    let tx = RioBuf::new(id, 200, 100);
    rio::borrow_mut(&tx).unwrap()[..5].copy_from_slice(b"hello");
    let held = rio::borrow(&tx).unwrap();
    assert_eq!(
        rio_err(rq.receive(RioBuf::new(id, 250, 10), RioFlags::NONE, 3)),
        RioError::SliceBusy {
            buf: RioBuf::new(id, 250, 10),
            conflict: SliceUse::Borrow
        }
    );
    assert!(rio::borrow_mut(&tx).is_err());
    drop(held);
    assert_eq!(rq.outstanding(), (1, 0));

    client().send_to(b"data", addr).unwrap();
    let r = take(&cq, 1);
    assert_eq!((r[0].request_context, r[0].bytes), (1, 4));
    assert_eq!(&bytes(RioBuf::new(id, 0, 4)), b"data");
    rio::deregister_buffer(id).unwrap();
}

#[test]
fn request_queues_are_charged_to_their_completion_queues() {
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let a = RequestQueue::new(udp().0, 4, 4, &cq, &cq, 0).unwrap();
    assert_eq!(cq.charged(), 8);
    assert_eq!(
        rio_err(RequestQueue::new(udp().0, 1, 0, &cq, &cq, 0)),
        RioError::QueueTooSmall {
            size: 8,
            charged: 8,
            asked: 1
        }
    );
    drop(a);
    assert_eq!(cq.charged(), 0);
    let _b = RequestQueue::new(udp().0, 8, 0, &cq, &cq, 0).unwrap();

    // Separate queues: each is charged its own kind, and a failure on one
    // leaves the other uncharged.
    let rcq = CompletionQueue::new(4, Notify::Polled).unwrap();
    let scq = CompletionQueue::new(2, Notify::Polled).unwrap();
    assert!(matches!(
        rio_err(RequestQueue::new(udp().0, 4, 3, &rcq, &scq, 0)),
        RioError::QueueTooSmall { size: 2, .. }
    ));
    assert_eq!((rcq.charged(), scq.charged()), (0, 0));
    let _c = RequestQueue::new(udp().0, 4, 2, &rcq, &scq, 0).unwrap();
    assert_eq!((rcq.charged(), scq.charged()), (4, 2));
    assert!(RequestQueue::new(
        std::fs::File::open("/dev/null").unwrap(),
        0,
        0,
        &rcq,
        &scq,
        0
    )
    .is_err());
}

#[test]
fn a_request_beyond_the_queues_maximum_fails_at_once() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 2, 1, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(8192).unwrap();
    for i in 0..2 {
        rq.receive(RioBuf::new(id, i * 1024, 1024), RioFlags::NONE, i as u64)
            .unwrap();
    }
    assert_eq!(
        rio_err(rq.receive(RioBuf::new(id, 4096, 1024), RioFlags::NONE, 9)),
        RioError::TooManyRequests {
            kind: RequestKind::Receive,
            max: 2
        }
    );
    // The slice of the refused request is not held.
    rio::borrow_mut(&RioBuf::new(id, 4096, 1024)).unwrap();
    client().send_to(b"x", addr).unwrap();
    take(&cq, 1);
    rq.receive(RioBuf::new(id, 4096, 1024), RioFlags::NONE, 2)
        .unwrap();

    // A deferred send counts as soon as it is made.
    rq.send(RioBuf::new(id, 6000, 10), RioFlags::DEFER, 0)
        .unwrap();
    assert_eq!(
        rio_err(rq.send(RioBuf::new(id, 6000, 10), RioFlags::NONE, 0)),
        RioError::TooManyRequests {
            kind: RequestKind::Send,
            max: 1
        }
    );
    assert_eq!(rq.outstanding(), (2, 1));
}

#[test]
fn resizing_a_request_queue_rechecks_its_completion_queues() {
    let (server, _) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 2, 2, &cq, &cq, 0).unwrap();
    rq.resize(4, 4).unwrap();
    assert_eq!((rq.limits(), cq.charged()), ((4, 4), 8));
    assert!(matches!(
        rio_err(rq.resize(5, 4)),
        RioError::QueueTooSmall { .. }
    ));
    assert_eq!((rq.limits(), cq.charged()), ((4, 4), 8));
    let id = rio::register_buffer(4096).unwrap();
    for i in 0..3 {
        rq.receive(RioBuf::new(id, i * 100, 100), RioFlags::NONE, 0)
            .unwrap();
    }
    assert_eq!(
        rio_err(rq.resize(2, 4)),
        RioError::BelowOutstanding {
            in_use: 3,
            asked: 2
        }
    );
    rq.resize(3, 1).unwrap();
    assert_eq!((rq.limits(), cq.charged()), ((3, 1), 4));
    // The room given back can be charged by another queue.
    let _other = RequestQueue::new(udp().0, 4, 0, &cq, &cq, 0).unwrap();
    assert_eq!(cq.charged(), 8);
}

#[test]
fn notify_while_armed_is_an_error() {
    let event = CompletionQueue::new(8, Notify::Event).unwrap();
    assert_eq!(rio_err(event.wait(Some(SHORT))), RioError::NotArmed);
    event.notify().unwrap();
    assert!(event.is_armed());
    assert_eq!(rio_err(event.notify()), RioError::AlreadyArmed);

    let port = CompletionPort::<u64>::new(0).unwrap();
    let ported = CompletionQueue::new(8, Notify::port(&port, 5, 0)).unwrap();
    ported.notify().unwrap();
    assert_eq!(rio_err(ported.notify()), RioError::AlreadyArmed);
    assert_eq!(
        rio_err(ported.wait(Some(SHORT))),
        RioError::WrongNotification
    );

    let polled = CompletionQueue::new(8, Notify::Polled).unwrap();
    assert_eq!(rio_err(polled.notify()), RioError::WrongNotification);
}

#[test]
fn notify_fires_at_once_when_results_are_waiting() {
    for port_mode in [false, true] {
        let port = CompletionPort::<u64>::new(0).unwrap();
        let notify = if port_mode {
            Notify::port(&port, 5, 77)
        } else {
            Notify::Event
        };
        let (server, addr) = udp();
        let cq = CompletionQueue::new(8, notify).unwrap();
        let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
        let id = rio::register_buffer(4096).unwrap();
        rq.receive(RioBuf::new(id, 0, 100), RioFlags::NONE, 0)
            .unwrap();
        client().send_to(b"early", addr).unwrap();
        thread::sleep(Duration::from_millis(50));

        // The result came before the notification was armed.
        cq.notify().unwrap();
        if port_mode {
            let p = port.get(Some(Duration::ZERO)).unwrap();
            assert_eq!((p.key, p.token), (5, 77));
        } else {
            cq.wait(Some(Duration::ZERO)).unwrap();
        }
        assert_eq!(take(&cq, 1)[0].bytes, 5);
    }
}

#[test]
fn an_event_notification_fires_once_per_arm() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(16, Notify::Event).unwrap();
    let rq = RequestQueue::new(server, 8, 8, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(8192).unwrap();
    for i in 0..8 {
        rq.receive(RioBuf::new(id, i * 1024, 1024), RioFlags::NONE, i as u64)
            .unwrap();
    }
    cq.notify().unwrap();
    let c = client();
    for _ in 0..3 {
        c.send_to(b"x", addr).unwrap();
    }
    cq.wait(Some(5 * SECOND)).unwrap();
    // Fired once: nothing is armed any more.
    assert_eq!(rio_err(cq.wait(Some(SHORT))), RioError::NotArmed);
    take(&cq, 3);

    // Armed on an empty queue: no notification until a result comes.
    cq.notify().unwrap();
    assert!(matches!(cq.wait(Some(SHORT)), Err(Error::Timeout)));
    c.send_to(b"y", addr).unwrap();
    cq.wait(Some(5 * SECOND)).unwrap();
    take(&cq, 1);
    assert_eq!(cq.stats().notifies, 2);
}

#[test]
fn a_port_notification_queues_one_packet_per_arm() {
    let port = CompletionPort::<&str>::new(0).unwrap();
    let (server, addr) = udp();
    let cq = CompletionQueue::new(16, Notify::port(&port, 11, "cq")).unwrap();
    let rq = RequestQueue::new(server, 8, 8, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(8192).unwrap();
    for i in 0..8 {
        rq.receive(RioBuf::new(id, i * 1024, 1024), RioFlags::NONE, i as u64)
            .unwrap();
    }
    cq.notify().unwrap();
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    let c = client();
    for _ in 0..5 {
        c.send_to(b"x", addr).unwrap();
    }
    let p = port.get(Some(5 * SECOND)).unwrap();
    assert_eq!((p.key, p.token), (11, "cq"));
    // Five results, one packet.
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    take(&cq, 5);

    // Re-armed on an empty queue: one packet for the next result only.
    cq.notify().unwrap();
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    c.send_to(b"y", addr).unwrap();
    c.send_to(b"z", addr).unwrap();
    assert_eq!(port.get(Some(5 * SECOND)).unwrap().key, 11);
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    take(&cq, 2);
}

#[test]
fn defer_queues_requests_and_commit_submits_them_in_one_call() {
    let (peer, peer_addr) = udp();
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sender = client();
    sender.connect(peer_addr).unwrap();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(sender, 0, 8, &cq, &cq, 3).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    for i in 0..4u32 {
        rio::borrow_mut(&RioBuf::new(id, i * 16, 1))
            .unwrap()
            .copy_from_slice(&[b'a' + i as u8]);
    }
    let before = cq.stats();
    for i in 0..4u32 {
        rq.send(RioBuf::new(id, i * 16, 1), RioFlags::DEFER, i as u64)
            .unwrap();
    }
    assert_eq!(cq.stats().submits, before.submits);
    let mut b = [0u8; 16];
    assert!(peer.recv(&mut b).is_err(), "a deferred send went out");
    none_for_a_while(&cq);

    rq.commit().unwrap();
    assert_eq!(cq.stats().submits, before.submits + 1);
    peer.set_read_timeout(Some(5 * SECOND)).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let n = peer.recv(&mut b).unwrap();
        got.push(b[..n].to_vec());
    }
    assert_eq!(got, [b"a", b"b", b"c", b"d"]);
    let results = take(&cq, 4);
    let contexts: Vec<u64> = results.iter().map(|r| r.request_context).collect();
    assert_eq!(contexts, [0, 1, 2, 3]);
    assert!(results
        .iter()
        .all(|r| r.socket_context == 3 && r.bytes == 1));
    // Committing nothing makes no system call.
    rq.commit().unwrap();
    assert_eq!(cq.stats().submits, before.submits + 1);
    assert!(matches!(
        rq.send(RioBuf::new(id, 0, 1), RioFlags::COMMIT_ONLY, 0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_dont_notify_result_does_not_wake_an_event_waiter() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Event).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    rq.receive(RioBuf::new(id, 0, 100), RioFlags::DONT_NOTIFY, 1)
        .unwrap();
    cq.notify().unwrap();
    let c = client();
    c.send_to(b"quiet", addr).unwrap();
    assert!(matches!(cq.wait(Some(SHORT)), Err(Error::Timeout)));

    // A result that may notify wakes it.
    rq.receive(RioBuf::new(id, 100, 100), RioFlags::NONE, 2)
        .unwrap();
    c.send_to(b"loud", addr).unwrap();
    cq.wait(Some(5 * SECOND)).unwrap();
    let r = take(&cq, 2);
    assert_eq!(
        r.iter()
            .map(|r| (r.request_context, r.bytes))
            .collect::<Vec<_>>(),
        [(1, 5), (2, 4)]
    );
}

/// A quiet receive, then three that may notify posted behind it, then four
/// datagrams: the quiet one's result alone must not notify, the other
/// three's must, though on io_uring they are taken straight from the
/// socket (a `recvmmsg` once the quiet one is out of the ring), not
/// through the ring the event or the port watches.
fn datagrams_taken_from_the_socket_notify(cq: &CompletionQueue, woken: impl FnOnce()) {
    let (server, addr) = udp();
    let rq = RequestQueue::new(server, 4, 4, cq, cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    rq.receive(RioBuf::new(id, 0, 100), RioFlags::DONT_NOTIFY, 0)
        .unwrap();
    for i in 1..4u32 {
        rq.receive(RioBuf::new(id, i * 100, 100), RioFlags::NONE, i as u64)
            .unwrap();
    }
    cq.notify().unwrap();
    let c = client();
    for i in 0..4u8 {
        c.send_to(&[i; 10][..1 + i as usize], addr).unwrap();
    }
    woken();
    let r = take(cq, 4);
    assert_eq!(
        r.iter()
            .map(|r| (r.request_context, r.bytes))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 2), (2, 3), (3, 4)]
    );
}

#[test]
fn datagrams_taken_from_the_socket_wake_an_event_waiter() {
    let cq = CompletionQueue::new(8, Notify::Event).unwrap();
    datagrams_taken_from_the_socket_notify(&cq, || cq.wait(Some(5 * SECOND)).unwrap());
}

#[test]
fn datagrams_taken_from_the_socket_queue_a_port_packet() {
    let port = CompletionPort::<u64>::new(0).unwrap();
    let cq = CompletionQueue::new(8, Notify::port(&port, 23, 0)).unwrap();
    datagrams_taken_from_the_socket_notify(&cq, || {
        assert_eq!(port.get(Some(5 * SECOND)).unwrap().key, 23);
    });
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
}

#[test]
fn waitall_is_refused_on_datagram_sockets_and_fills_stream_buffers() {
    let (server, _) = udp();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    let buf = RioBuf::new(id, 0, 10);
    assert_eq!(
        rio_err(rq.receive(buf, RioFlags::WAITALL, 0)),
        RioError::WaitAllOnDatagram
    );
    assert_eq!(
        rio_err(rq.send(buf, RioFlags::WAITALL, 0)),
        RioError::WaitAllOnDatagram
    );
    assert_eq!(rq.outstanding(), (0, 0));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let rq = RequestQueue::new(stream, 4, 4, &cq, &cq, 0).unwrap();
    rq.receive(buf, RioFlags::WAITALL, 7).unwrap();
    writer.write_all(b"01234").unwrap();
    none_for_a_while(&cq);
    writer.write_all(b"56789").unwrap();
    let r = take(&cq, 1);
    assert_eq!((r[0].request_context, r[0].bytes, r[0].status), (7, 10, 0));
    assert_eq!(&bytes(buf), b"0123456789");
}

#[test]
fn a_datagram_longer_than_its_buffer_completes_with_emsgsize() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    rq.receive(RioBuf::new(id, 0, 4), RioFlags::NONE, 0)
        .unwrap();
    client().send_to(b"0123456789", addr).unwrap();
    let r = take(&cq, 1)[0];
    assert_eq!((r.status, r.bytes), (libc::EMSGSIZE, 4));
    assert_eq!(r.result().unwrap_err().raw_os_error(), Some(libc::EMSGSIZE));
    assert_eq!(&bytes(RioBuf::new(id, 0, 4)), b"0123");
}

#[test]
fn resizing_a_completion_queue_keeps_results_and_requests() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(4, Notify::Event).unwrap();
    assert_eq!(cq.ring_capacity(), 4);
    let rq = RequestQueue::new(server, 2, 2, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    for i in 0..2u32 {
        rq.receive(RioBuf::new(id, i * 100, 100), RioFlags::NONE, i as u64)
            .unwrap();
    }
    let c = client();
    c.send_to(b"first", addr).unwrap();
    thread::sleep(Duration::from_millis(50));

    assert_eq!(
        rio_err(cq.resize(3)),
        RioError::BelowOutstanding {
            in_use: 4,
            asked: 3
        }
    );
    // Within the ring: only the number changes.
    cq.resize(4).unwrap();
    // Beyond it: a new ring; the waiting result and the receive in flight move.
    cq.resize(100).unwrap();
    assert_eq!((cq.size(), cq.ring_capacity()), (100, 128));
    let _more = RequestQueue::new(udp().0, 90, 0, &cq, &cq, 0).unwrap();

    c.send_to(b"second", addr).unwrap();
    // Results in the order the datagrams came (which receive took which is
    // the kernel's choice).
    let got: Vec<Vec<u8>> = take(&cq, 2)
        .iter()
        .map(|r| bytes(RioBuf::new(id, r.request_context as u32 * 100, r.bytes)))
        .collect();
    assert_eq!(got, [&b"first"[..], &b"second"[..]]);

    // The event notification works on the new ring.
    rq.receive(RioBuf::new(id, 0, 100), RioFlags::NONE, 2)
        .unwrap();
    cq.notify().unwrap();
    c.send_to(b"third", addr).unwrap();
    cq.wait(Some(5 * SECOND)).unwrap();
    assert_eq!(take(&cq, 1)[0].request_context, 2);

    // Moving while armed is refused.
    cq.notify().unwrap();
    assert_eq!(rio_err(cq.resize(1000)), RioError::Armed);
}

#[test]
fn dropping_a_request_queue_cancels_its_requests() {
    let (server, _) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 5).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    for i in 0..3u32 {
        rq.receive(RioBuf::new(id, i * 100, 100), RioFlags::NONE, i as u64)
            .unwrap();
    }
    let fd = rq.as_raw_fd();
    let name = fd_target(fd).unwrap();
    drop(rq);
    let mut r = take(&cq, 2);
    // Kept open (and its state alive) while a request is outstanding.
    assert_eq!(fd_target(fd).as_ref(), Some(&name));
    r.extend(take(&cq, 1));
    assert!(r
        .iter()
        .all(|r| r.status == libc::ECANCELED && r.socket_context == 5));
    // The socket closed with its last request, and its charges went.
    assert_ne!(fd_target(fd), Some(name));
    assert_eq!(cq.charged(), 0);
    rio::deregister_buffer(id).unwrap();
}

fn fd_target(fd: RawFd) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// What this process holds open, by kind.
fn open_fds() -> (usize, usize, usize) {
    let (mut rings, mut events, mut sockets) = (0, 0, 0);
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let t = std::fs::read_link(e.path()).unwrap_or_default();
        let t = t.to_string_lossy();
        if t.contains("io_uring") {
            rings += 1;
        } else if t.contains("eventfd") {
            events += 1;
        } else if t.starts_with("socket:") {
            sockets += 1;
        }
    }
    (rings, events, sockets)
}

#[test]
fn closing_a_completion_queue_with_requests_outstanding_leaks_nothing() {
    if !in_child(
        "closing_a_completion_queue_with_requests_outstanding_leaks_nothing",
        &[],
        &[],
    ) {
        return;
    }
    // (The port's own ring is left out: a thread that took a packet keeps
    // the port's state in a thread-local.)
    let port = CompletionPort::<u64>::new(0).unwrap();
    let before = open_fds();
    for mode in 0..3 {
        let notify = match mode {
            0 => Notify::Polled,
            1 => Notify::Event,
            _ => Notify::port(&port, 3, 0),
        };
        let cq = CompletionQueue::new(64, notify).unwrap();
        let (server, addr) = udp();
        let (sender, _) = udp();
        sender.connect(addr).unwrap();
        let rq = RequestQueue::new(server, 32, 0, &cq, &cq, 0).unwrap();
        let tx = RequestQueue::new(sender, 0, 16, &cq, &cq, 0).unwrap();
        let id = rio::register_buffer(64 * 1024).unwrap();
        for i in 0..32u32 {
            rq.receive(RioBuf::new(id, i * 1024, 1024), RioFlags::NONE, 0)
                .unwrap();
        }
        for i in 0..4u32 {
            tx.send(RioBuf::new(id, 40_000 + i, 1), RioFlags::DEFER, 0)
                .unwrap();
        }
        // Armed (where there is a notification) while requests are in flight.
        let _ = cq.notify();
        cq.close().unwrap();
        // Every slice is free, every later call says closed.
        assert_eq!(rq.outstanding(), (0, 0));
        assert_eq!(tx.outstanding(), (0, 0));
        assert_eq!(
            rio_err(rq.receive(RioBuf::new(id, 0, 1), RioFlags::NONE, 0)),
            RioError::QueueClosed
        );
        assert_eq!(
            rio_err(rq.receive(RioBuf::new(id, 0, 1), RioFlags::DEFER, 0)),
            RioError::QueueClosed
        );
        assert_eq!(rq.outstanding(), (0, 0));
        assert_eq!(
            rio_err(cq.dequeue(&mut [RioResult::default()])),
            RioError::QueueClosed
        );
        rio::deregister_buffer(id).unwrap();
        drop((rq, tx, cq));
        if mode == 2 {
            // The armed port notification fired when the queue closed.
            assert_eq!(port.get(Some(5 * SECOND)).unwrap().key, 3);
        }
        assert_eq!(open_fds(), before, "something was left open");
    }
}

#[test]
fn deferred_requests_racing_a_close_end_with_it_or_are_refused() {
    // A deferred request takes only the request table's lock on io_uring:
    // one let in before the close is ended by it, one after is refused.
    for round in 0..20u64 {
        let cq = CompletionQueue::new(1024, Notify::Polled).unwrap();
        let (server, _) = udp();
        let rq = RequestQueue::new(server, 1024, 0, &cq, &cq, 0).unwrap();
        let id = rio::register_buffer(1024 * 64).unwrap();
        let posted = thread::scope(|s| {
            let poster = s.spawn(|| {
                for i in 0..1024u32 {
                    let r = rq.receive(RioBuf::new(id, i * 64, 64), RioFlags::DEFER, 0);
                    if r.is_err() {
                        assert_eq!(rio_err(r), RioError::QueueClosed);
                        return i;
                    }
                }
                1024
            });
            thread::sleep(Duration::from_micros(50 * round));
            cq.close().unwrap();
            poster.join().unwrap()
        });
        assert_eq!(rq.outstanding(), (0, 0), "round {round}: {posted} posted");
        assert_eq!(rio_err(rq.commit()), RioError::QueueClosed, "round {round}");
        rio::deregister_buffer(id).unwrap();
    }
}

#[test]
fn closing_wakes_an_event_waiter() {
    let cq = CompletionQueue::new(8, Notify::Event).unwrap();
    cq.notify().unwrap();
    thread::scope(|s| {
        let waiter = s.spawn(|| cq.wait(Some(5 * SECOND)));
        thread::sleep(Duration::from_millis(50));
        cq.close().unwrap();
        assert_eq!(rio_err(waiter.join().unwrap()), RioError::QueueClosed);
    });
    assert_eq!(rio_err(cq.notify()), RioError::QueueClosed);
}

#[test]
fn one_sockets_datagrams_come_out_in_order() {
    const OUTSTANDING: u32 = 64;
    const TOTAL: u32 = 3000;
    let (server, addr) = udp();
    let cq = CompletionQueue::new(OUTSTANDING, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, OUTSTANDING, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(OUTSTANDING as usize * 64).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 64, 64);
    for i in 0..OUTSTANDING as u64 {
        rq.receive(slice(i), RioFlags::NONE, i).unwrap();
    }
    let c = client();
    let mut next = 0u32;
    let mut sent = 0u32;
    let mut results = [RioResult::default(); 64];
    let deadline = Instant::now() + 10 * SECOND;
    while next < TOTAL {
        // Bursts no larger than the receives posted: nothing is dropped.
        while sent < TOTAL && sent - next < OUTSTANDING / 2 {
            c.send_to(&sent.to_le_bytes(), addr).unwrap();
            sent += 1;
        }
        let n = cq.dequeue(&mut results).unwrap();
        for r in &results[..n] {
            assert_eq!(r.bytes, 4);
            let b = bytes(slice(r.request_context));
            let seq = u32::from_le_bytes(b[..4].try_into().unwrap());
            assert_eq!(seq, next, "datagrams out of order");
            next += 1;
            rq.receive(slice(r.request_context), RioFlags::DEFER, r.request_context)
                .unwrap();
        }
        rq.commit().unwrap();
        assert!(Instant::now() < deadline, "stuck at {next} of {TOTAL}");
    }
}

/// As in a multi-threaded port server: two threads take turns on one
/// completion queue (a mutex standing in for the notification), each
/// re-posting the receives it dequeued, so receives of one socket are
/// submitted from both threads.
#[test]
fn datagrams_stay_in_order_when_threads_take_turns_on_a_queue() {
    const OUTSTANDING: u32 = 64;
    const TOTAL: u32 = 20_000;
    let (server, addr) = udp();
    let cq = CompletionQueue::new(OUTSTANDING, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, OUTSTANDING, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(OUTSTANDING as usize * 64).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 64, 64);
    for i in 0..OUTSTANDING as u64 {
        rq.receive(slice(i), RioFlags::NONE, i).unwrap();
    }
    // (next sequence number expected, results out of order, results)
    let turn = std::sync::Mutex::new((0u32, 0u32, 0u32));
    let received = std::sync::atomic::AtomicU32::new(0);
    let deadline = Instant::now() + 20 * SECOND;
    thread::scope(|s| {
        s.spawn(|| {
            let c = client();
            for i in 0..TOTAL {
                // Never more in the socket than its buffer holds: no loss.
                while i - received.load(Ordering::Relaxed) > 128 && Instant::now() < deadline {
                    thread::yield_now();
                }
                c.send_to(&i.to_le_bytes(), addr).unwrap();
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                let mut results = [RioResult::default(); 64];
                loop {
                    let mut t = turn.lock().unwrap();
                    if t.2 >= TOTAL || Instant::now() > deadline {
                        break;
                    }
                    let n = cq.dequeue(&mut results).unwrap();
                    for r in &results[..n] {
                        let b = bytes(slice(r.request_context));
                        let seq = u32::from_le_bytes(b[..4].try_into().unwrap());
                        if seq < t.0 {
                            t.1 += 1;
                        } else {
                            t.0 = seq + 1;
                        }
                        t.2 += 1;
                        rq.receive(slice(r.request_context), RioFlags::NONE, r.request_context)
                            .unwrap();
                    }
                    received.store(t.2, Ordering::Relaxed);
                    drop(t);
                    if n == 0 {
                        thread::yield_now();
                    }
                }
            });
        }
    });
    let t = turn.lock().unwrap();
    assert_eq!((t.2, t.1), (TOTAL, 0), "(results, out of order)");
}

#[test]
fn receive_ex_and_send_ex_carry_addresses_in_registered_buffers() {
    let (server, server_addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 4, 4, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    let data = RioBuf::new(id, 0, 1500);
    // Address slices at odd offsets: nothing assumes alignment.
    let local = RioBuf::new(id, 2001, 128);
    let remote = RioBuf::new(id, 3001, rio::ADDRESS_LEN);
    assert!(matches!(
        rio_err(rq.receive_ex(
            data,
            None,
            Some(RioBuf::new(id, 3001, 16)),
            RioFlags::NONE,
            0
        )),
        RioError::AddressBufferTooSmall { need: 28, .. }
    ));
    rq.receive_ex(data, Some(local), Some(remote), RioFlags::NONE, 1)
        .unwrap();
    let (peer, peer_addr) = udp();
    peer.set_read_timeout(Some(5 * SECOND)).unwrap();
    peer.send_to(b"hi there", server_addr).unwrap();
    let r = take(&cq, 1)[0];
    assert_eq!((r.request_context, r.bytes, r.status), (1, 8, 0));
    assert_eq!(
        rio::read_addr(&rio::borrow(&remote).unwrap()),
        Some(peer_addr)
    );
    assert_eq!(
        rio::read_addr(&rio::borrow(&local).unwrap()),
        Some(server_addr)
    );

    // Reply to the address the kernel wrote, from the local address it reported.
    rq.send_ex(
        RioBuf::new(id, 0, 8),
        Some(local),
        Some(remote),
        RioFlags::NONE,
        2,
    )
    .unwrap();
    let mut b = [0u8; 16];
    let (n, from) = peer.recv_from(&mut b).unwrap();
    assert_eq!((&b[..n], from), (&b"hi there"[..], server_addr));
    assert_eq!(take(&cq, 1)[0].request_context, 2);

    // An address written by the user.
    let (other, other_addr) = udp();
    other.set_read_timeout(Some(5 * SECOND)).unwrap();
    let to = RioBuf::new(id, 3500, 128);
    rio::write_addr(&mut rio::borrow_mut(&to).unwrap(), other_addr).unwrap();
    rq.send_ex(RioBuf::new(id, 0, 2), None, Some(to), RioFlags::NONE, 3)
        .unwrap();
    let n = other.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"hi");
    assert_eq!(take(&cq, 1)[0].request_context, 3);
}

/// With `RINGPORT_STRACE=1` (and strace installed), runs a loop of dequeues
/// that takes 200 datagrams under `strace -f` and checks that the dequeuing
/// thread made no system call between two markers.
#[test]
fn dequeue_makes_no_system_call() {
    const NAME: &str = "dequeue_makes_no_system_call";
    if std::env::var("RIO_CHILD").as_deref() != Ok(NAME) {
        if std::env::var("RINGPORT_STRACE").is_err() {
            eprintln!("skipped: set RINGPORT_STRACE=1 to run under strace");
            return;
        }
        let log = std::env::temp_dir().join(format!("rio-strace-{}.log", std::process::id()));
        let log_s = log.to_string_lossy().into_owned();
        in_child(NAME, &[], &["strace", "-f", "-qq", "-o", &log_s]);
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        let lines: Vec<&str> = text.lines().collect();
        // The markers (strace may split one into "unfinished" and "resumed").
        let marks: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("getppid"))
            .collect();
        assert!(marks.len() >= 2, "markers not found in strace log");
        let (first, last) = (marks[0], marks[marks.len() - 1]);
        let tid = lines[first].split_whitespace().next().unwrap();
        let between: Vec<&str> = lines[first + 1..last]
            .iter()
            .copied()
            .filter(|l| l.split_whitespace().next() == Some(tid) && !l.contains("getppid"))
            .collect();
        eprintln!(
            "dequeuing thread {tid}: {} system calls between the markers",
            between.len()
        );
        assert!(
            between.is_empty(),
            "system calls while dequeuing: {between:#?}"
        );
        return;
    }
    // The child, under strace.
    const N: usize = 200;
    let (server, addr) = udp();
    let cq = CompletionQueue::new(256, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 256, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(256 * 64).unwrap();
    // Posted together, so that nothing is left to submit while dequeuing: on
    // io_uring, receives posted one by one while the first waits would start
    // (one system call) when a dequeue takes the first one's result.
    for i in 0..256u32 {
        rq.receive(RioBuf::new(id, i * 64, 64), RioFlags::DEFER, 0)
            .unwrap();
    }
    rq.commit().unwrap();
    let (go, give_up, done) = (
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    let mut results = [RioResult::default(); 64];
    let (mut got, mut calls) = (0usize, 0u64);
    thread::scope(|s| {
        s.spawn(|| {
            let c = client();
            let deadline = Instant::now() + 10 * SECOND;
            while !go.load(Ordering::Relaxed) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            // Datagrams arrive while the other thread spins on the queue.
            for i in 0..N as u32 {
                c.send_to(&i.to_le_bytes(), addr).unwrap();
            }
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            give_up.store(true, Ordering::Relaxed);
        });
        // SAFETY: getppid takes no arguments; it is the marker in the log.
        unsafe { libc::getppid() };
        go.store(true, Ordering::Relaxed);
        while got < N && !give_up.load(Ordering::Relaxed) {
            got += cq.dequeue(&mut results).unwrap();
            calls += 1;
            std::hint::spin_loop();
        }
        // SAFETY: as above.
        unsafe { libc::getppid() };
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(got, N);
    println!(
        "{calls} dequeue calls took {got} results ({} backend)",
        cq.backend()
    );
}

#[test]
fn the_rio_types_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<CompletionQueue>();
    shared::<RequestQueue>();
    shared::<rio::BufRef>();
    shared::<rio::BufMut>();
    shared::<RioError>();
}

#[test]
fn ringport_backend_chooses_the_engine_of_completion_queues() {
    const NAME: &str = "ringport_backend_chooses_the_engine_of_completion_queues";
    if std::env::var("RIO_CHILD").as_deref() != Ok(NAME) {
        in_child(NAME, &[("RINGPORT_BACKEND", "epoll")], &[]);
        in_child(NAME, &[("RINGPORT_BACKEND", "")], &[]);
        return;
    }
    let forced = std::env::var("RINGPORT_BACKEND").unwrap_or_default();
    let cq = CompletionQueue::new(8, Notify::Event).unwrap();
    let explicit = CompletionQueue::with_backend(8, Notify::Polled, Backend::IoUring);
    if forced == "epoll" {
        // The variable overrides what the program asks for, as for ports.
        assert_eq!(cq.backend(), Backend::Epoll);
        assert_eq!(explicit.unwrap().backend(), Backend::Epoll);
    } else {
        // Unset: the program's choice; Auto takes io_uring where a ring can
        // be set up.
        let epoll = CompletionQueue::with_backend(8, Notify::Polled, Backend::Epoll).unwrap();
        assert_eq!(epoll.backend(), Backend::Epoll);
        match explicit {
            Ok(q) => {
                assert_eq!(q.backend(), Backend::IoUring);
                assert_eq!(cq.backend(), Backend::IoUring);
            }
            Err(_) => assert_eq!(cq.backend(), Backend::Epoll),
        }
    }
    assert!(matches!(
        CompletionQueue::new(0, Notify::Polled),
        Err(Error::InvalidArgument(_))
    ));
    // A round trip on the queue chosen.
    let (server, addr) = udp();
    let rq = RequestQueue::new(server, 2, 2, &cq, &cq, 4).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    rq.receive(RioBuf::new(id, 0, 100), RioFlags::NONE, 1)
        .unwrap();
    cq.notify().unwrap();
    client().send_to(b"which", addr).unwrap();
    cq.wait(Some(5 * SECOND)).unwrap();
    let r = take(&cq, 1)[0];
    assert_eq!((r.socket_context, r.request_context, r.bytes), (4, 1, 5));
    println!("RINGPORT_BACKEND={forced}: {}", cq.backend());
}

/// `DONT_NOTIFY` results do not queue a port packet; the next result that
/// may notify does. On the io_uring engine the port polls the queue's ring,
/// which any result makes readable, and rechecks; on epoll the queue posts
/// the packet itself.
fn dont_notify_keeps_the_port_quiet(port: &CompletionPort<u64>, cq: &CompletionQueue) {
    let (server, addr) = udp();
    let rq = RequestQueue::new(server, 4, 4, cq, cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    for i in 0..2 {
        rq.receive(
            RioBuf::new(id, i * 100, 100),
            RioFlags::DONT_NOTIFY,
            i as u64,
        )
        .unwrap();
    }
    cq.notify().unwrap();
    let c = client();
    c.send_to(b"quiet", addr).unwrap();
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    assert!(cq.is_armed());
    // A second quiet result, after the port polled again.
    c.send_to(b"hush", addr).unwrap();
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    assert!(cq.is_armed());
    rq.receive(RioBuf::new(id, 200, 100), RioFlags::NONE, 2)
        .unwrap();
    c.send_to(b"loud", addr).unwrap();
    assert_eq!(port.get(Some(5 * SECOND)).unwrap().key, 21);
    assert!(!cq.is_armed());
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    // Datagrams come out in order; which of two receives pending at once
    // takes the first is the kernel's choice on io_uring.
    let r = take(cq, 3);
    assert_eq!(r.iter().map(|r| r.bytes).collect::<Vec<_>>(), [5, 4, 4]);
    assert_eq!(r[2].request_context, 2);
    // Armed again with nothing waiting: a quiet result still queues nothing.
    rq.receive(RioBuf::new(id, 0, 100), RioFlags::DONT_NOTIFY, 3)
        .unwrap();
    cq.notify().unwrap();
    c.send_to(b"shh", addr).unwrap();
    assert!(matches!(port.get(Some(SHORT)), Err(Error::Timeout)));
    assert_eq!(take(cq, 1)[0].request_context, 3);
}

#[test]
fn a_dont_notify_result_does_not_queue_a_port_packet() {
    let port = CompletionPort::<u64>::new(0).unwrap();
    let cq = CompletionQueue::new(8, Notify::port(&port, 21, 0)).unwrap();
    dont_notify_keeps_the_port_quiet(&port, &cq);
}

/// The same with the port and the queue on different backends (the port's
/// epoll backend completes the poll of an io_uring queue's ring itself,
/// possibly within `notify`). Runs in children without `RINGPORT_BACKEND`,
/// which would force both onto one backend.
#[test]
fn a_dont_notify_result_does_not_queue_a_port_packet_across_backends() {
    const NAME: &str = "a_dont_notify_result_does_not_queue_a_port_packet_across_backends";
    if !in_child(NAME, &[("RINGPORT_BACKEND", "")], &[]) {
        return;
    }
    for (port_backend, cq_backend) in [
        (Backend::Epoll, Backend::IoUring),
        (Backend::IoUring, Backend::Epoll),
    ] {
        let Ok(port) = CompletionPort::<u64>::builder()
            .backend(port_backend)
            .build()
        else {
            continue; // no io_uring here
        };
        let Ok(cq) = CompletionQueue::with_backend(8, Notify::port(&port, 21, 0), cq_backend)
        else {
            continue;
        };
        println!("port on {port_backend}, queue on {cq_backend}");
        dont_notify_keeps_the_port_quiet(&port, &cq);
    }
}

/// Receives and sends of one socket completing to two different queues:
/// an echo through separate receive and send completion queues.
#[test]
fn receives_and_sends_can_complete_to_different_queues() {
    let (server, addr) = udp();
    let rcq = CompletionQueue::new(16, Notify::Event).unwrap();
    let scq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 8, 8, &rcq, &scq, 9).unwrap();
    let id = rio::register_buffer(8 * 256 + 8 * 128).unwrap();
    let data = |i: u64| RioBuf::new(id, i as u32 * 256, 256);
    let from = |i: u64| RioBuf::new(id, 8 * 256 + i as u32 * 128, 128);
    for i in 0..8 {
        rq.receive_ex(data(i), None, Some(from(i)), RioFlags::NONE, i)
            .unwrap();
    }
    let c = client();
    c.set_read_timeout(Some(5 * SECOND)).unwrap();
    let mut echoed = 0;
    for round in 0..20u32 {
        rcq.notify().unwrap();
        c.send_to(&round.to_le_bytes(), addr).unwrap();
        rcq.wait(Some(5 * SECOND)).unwrap();
        for r in take(&rcq, 1) {
            let i = r.request_context;
            assert_eq!((r.socket_context, r.bytes), (9, 4));
            // Echo the datagram from the same slices, then receive into
            // them again once the send is done.
            rq.send_ex(
                RioBuf::new(id, i as u32 * 256, r.bytes),
                None,
                Some(from(i)),
                RioFlags::NONE,
                i,
            )
            .unwrap();
            let mut b = [0u8; 8];
            let n = c.recv(&mut b).unwrap();
            assert_eq!(&b[..n], &round.to_le_bytes());
            let s = take(&scq, 1)[0];
            assert_eq!((s.request_context, s.bytes, s.status), (i, 4, 0));
            rq.receive_ex(data(i), None, Some(from(i)), RioFlags::NONE, i)
                .unwrap();
            echoed += 1;
        }
    }
    assert_eq!(echoed, 20);
    assert_eq!(rcq.stats().results, 20);
    assert_eq!(scq.stats().results, 20);
}

/// Closing a queue while datagrams pour in: results are being produced as
/// it closes. Nothing is left claimed, every later call says closed.
#[test]
fn closing_a_completion_queue_while_results_arrive() {
    for round in 0..5 {
        let (server, addr) = udp();
        let cq = CompletionQueue::new(64, Notify::Event).unwrap();
        let rq = RequestQueue::new(server, 64, 0, &cq, &cq, 0).unwrap();
        let id = rio::register_buffer(64 * 64).unwrap();
        for i in 0..64u32 {
            rq.receive(RioBuf::new(id, i * 64, 64), RioFlags::NONE, i as u64)
                .unwrap();
        }
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let c = client();
                let deadline = Instant::now() + 5 * SECOND;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = c.send_to(b"flood", addr);
                }
            });
            // Let some arrive and be taken, re-posting receives.
            let mut results = [RioResult::default(); 64];
            let until = Instant::now() + Duration::from_millis(20 + round * 10);
            while Instant::now() < until {
                let n = cq.dequeue(&mut results).unwrap();
                for r in &results[..n] {
                    let i = r.request_context as u32;
                    rq.receive(RioBuf::new(id, i * 64, 64), RioFlags::NONE, i as u64)
                        .unwrap();
                }
            }
            cq.close().unwrap();
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(rq.outstanding(), (0, 0));
        assert_eq!(
            rio_err(rq.receive(RioBuf::new(id, 0, 64), RioFlags::NONE, 0)),
            RioError::QueueClosed
        );
        rio::deregister_buffer(id).unwrap();
    }
}

/// Where io_uring is switched off, completion queues fall back to epoll
/// (and forcing io_uring says why it fails), and registered I/O works:
/// every notification mode, in a child whose `io_uring_setup` gets EPERM.
#[test]
fn registered_io_works_where_io_uring_is_denied() {
    const NAME: &str = "registered_io_works_where_io_uring_is_denied";
    if std::env::var("RIO_CHILD").as_deref() != Ok(NAME) {
        in_child(NAME, &[("RINGPORT_BACKEND", "")], &[]);
        return;
    }
    common::deny_io_uring_setup(libc::EPERM as u32);
    let e = CompletionQueue::with_backend(8, Notify::Polled, Backend::IoUring).unwrap_err();
    assert!(e.to_string().contains("io_uring_setup"), "{e}");
    let port = CompletionPort::<u64>::new(0).unwrap();
    for mode in 0..3 {
        let notify = match mode {
            0 => Notify::Polled,
            1 => Notify::Event,
            _ => Notify::port(&port, 8, 0),
        };
        let cq = CompletionQueue::new(16, notify).unwrap();
        assert_eq!(cq.backend(), Backend::Epoll);
        let (server, addr) = udp();
        let rq = RequestQueue::new(server, 8, 8, &cq, &cq, 0).unwrap();
        let id = rio::register_buffer(4096).unwrap();
        rq.receive(RioBuf::new(id, 0, 100), RioFlags::NONE, 1)
            .unwrap();
        match mode {
            0 => {}
            1 => cq.notify().unwrap(),
            _ => cq.notify().unwrap(),
        }
        let c = client();
        c.set_read_timeout(Some(5 * SECOND)).unwrap();
        c.send_to(b"denied", addr).unwrap();
        match mode {
            0 => {}
            1 => cq.wait(Some(5 * SECOND)).unwrap(),
            _ => assert_eq!(port.get(Some(5 * SECOND)).unwrap().key, 8),
        }
        let r = take(&cq, 1)[0];
        assert_eq!((r.request_context, r.bytes), (1, 6));
        // And back, with the sender's address written by a receive_ex.
        let from = RioBuf::new(id, 1024, 128);
        rq.receive_ex(RioBuf::new(id, 0, 100), None, Some(from), RioFlags::NONE, 2)
            .unwrap();
        c.send_to(b"again", addr).unwrap();
        assert_eq!(take(&cq, 1)[0].bytes, 5);
        rq.send_ex(RioBuf::new(id, 0, 5), None, Some(from), RioFlags::NONE, 3)
            .unwrap();
        let mut b = [0u8; 8];
        let n = c.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"again");
        assert_eq!(take(&cq, 1)[0].request_context, 3);
    }
    println!("io_uring denied: registered I/O ran on epoll");
}

/// Stream sends larger than the socket can take at once wait for room (on
/// epoll: for the socket to become writable) and, with `WAITALL`, complete
/// whole, in order, while a slow reader drains the other end.
#[test]
fn stream_sends_wait_for_room_and_complete_whole() {
    const CHUNK: u32 = 256 * 1024;
    const SENDS: u32 = 8;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    reader.set_read_timeout(Some(10 * SECOND)).unwrap();
    // Small socket buffers: a chunk never fits at once.
    for (fd, opt) in [
        (writer.as_raw_fd(), libc::SO_SNDBUF),
        (reader.as_raw_fd(), libc::SO_RCVBUF),
    ] {
        let size: libc::c_int = 16 * 1024;
        // SAFETY: setsockopt reads size_of::<c_int>() bytes from &size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(writer, 0, 1, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer((CHUNK * 2) as usize).unwrap();
    for half in 0..2u32 {
        let fill = |b: &mut [u8]| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (i as u32 + half * CHUNK) as u8;
            }
        };
        fill(&mut rio::borrow_mut(&RioBuf::new(id, half * CHUNK, CHUNK)).unwrap());
    }
    thread::scope(|s| {
        let read = s.spawn(move || {
            use std::io::Read;
            let mut total = 0usize;
            let mut b = vec![0u8; 16 * 1024];
            while total < (CHUNK * SENDS) as usize {
                let n = reader.read(&mut b).unwrap();
                assert!(n > 0, "stream ended early at {total}");
                for (i, x) in b[..n].iter().enumerate() {
                    assert_eq!(*x, ((total + i) % (2 * CHUNK as usize)) as u8);
                }
                total += n;
                if total % (1 << 20) < n {
                    // Slow now and then, so that the sender has to wait.
                    thread::sleep(Duration::from_millis(5));
                }
            }
            total
        });
        for i in 0..SENDS {
            let half = i % 2;
            rq.send(
                RioBuf::new(id, half * CHUNK, CHUNK),
                RioFlags::WAITALL,
                i as u64,
            )
            .unwrap();
            let r = take(&cq, 1)[0];
            assert_eq!((r.request_context, r.status, r.bytes), (i as u64, 0, CHUNK));
        }
        assert_eq!(read.join().unwrap(), (CHUNK * SENDS) as usize);
    });
}

/// Receives made with `DEFER` and committed together, with datagrams
/// already waiting (the epoll engine takes them with one `recvmmsg`): each
/// result in datagram order, a datagram longer than its slice reported as
/// `EMSGSIZE` with the slice's length, the rest intact.
#[test]
fn committed_receives_take_waiting_datagrams_in_order_with_truncation() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 8, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(8 * 8).unwrap();
    let c = client();
    let sizes = [4usize, 20, 8, 30, 1, 8];
    for (i, &n) in sizes.iter().enumerate() {
        c.send_to(&vec![i as u8; n], addr).unwrap();
    }
    // Let them all arrive before the receives start.
    thread::sleep(Duration::from_millis(50));
    for i in 0..sizes.len() as u64 {
        rq.receive(RioBuf::new(id, i as u32 * 8, 8), RioFlags::DEFER, i)
            .unwrap();
    }
    rq.commit().unwrap();
    let results = take(&cq, sizes.len());
    for (r, &n) in results.iter().zip(&sizes) {
        let want = if n > 8 {
            (libc::EMSGSIZE, 8)
        } else {
            (0, n as u32)
        };
        assert_eq!((r.status, r.bytes), want, "{results:?}");
        let got = bytes(RioBuf::new(id, r.request_context as u32 * 8, r.bytes));
        let first = got[0] as usize;
        assert_eq!(
            sizes[first], n,
            "datagram {first} in the wrong place: {results:?}"
        );
        assert!(got.iter().all(|&b| b as usize == first));
    }
}

// Datagram receives on io_uring go through a provided-buffer ring consumed
// by one multishot RECV where the kernel has them (src/rio/uring/shot.rs);
// the tests below hold that path (and the epoll engine) to the same rules.

/// Whether `cq`'s datagram receives go through the multishot path: io_uring,
/// a 6.0+ kernel, and not switched off with `RINGPORT_RIO_MULTISHOT=0`.
fn multishot_path(cq: &CompletionQueue) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let kernel = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let off = std::env::var("RINGPORT_RIO_MULTISHOT").is_ok_and(|v| v == "0");
    cq.backend() == Backend::IoUring && kernel >= (6, 0) && !off
}

/// Sends `n` datagrams of 4 bytes, `first`, `first + 1`, ... (little-endian).
fn numbered(c: &UdpSocket, to: std::net::SocketAddr, first: u32, n: u32) {
    for i in first..first + n {
        c.send_to(&i.to_le_bytes(), to).unwrap();
    }
}

/// The number each result's slice holds, in result order (slices of 16
/// bytes at 16 × request context).
fn numbers(id: BufferId, results: &[RioResult]) -> Vec<u32> {
    results
        .iter()
        .map(|r| {
            assert_eq!((r.status, r.bytes), (0, 4), "{results:?}");
            let b = bytes(RioBuf::new(id, r.request_context as u32 * 16, 4));
            u32::from_le_bytes(b[..4].try_into().unwrap())
        })
        .collect()
}

/// Every round uses up all the posted receives (the multishot's buffer ring
/// runs dry and it ends with ENOBUFS), then posts them again one by one,
/// before or after the next datagrams arrive: each round's results come in
/// posting order, each receive with the datagram of its rank.
#[test]
fn posting_order_holds_across_the_buffer_ring_running_dry() {
    const N: u32 = 8;
    let (server, addr) = udp();
    let cq = CompletionQueue::new(N, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, N, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(N as usize * 16).unwrap();
    let c = client();
    let mut next = 0u32;
    for round in 0..6u32 {
        // Contexts rotate so that slots and buffer ids are reused in new orders.
        let order: Vec<u64> = (0..N as u64)
            .map(|i| (i + round as u64) % N as u64)
            .collect();
        let datagrams_first = round % 2 == 1;
        if datagrams_first {
            numbered(&c, addr, next, N);
            thread::sleep(Duration::from_millis(20));
        }
        for &i in &order {
            rq.receive(RioBuf::new(id, i as u32 * 16, 16), RioFlags::NONE, i)
                .unwrap();
        }
        if !datagrams_first {
            numbered(&c, addr, next, N);
        }
        let results = take(&cq, N as usize);
        let contexts: Vec<u64> = results.iter().map(|r| r.request_context).collect();
        assert_eq!(contexts, order, "round {round}: not in posting order");
        let want: Vec<u32> = (next..next + N).collect();
        assert_eq!(numbers(id, &results), want, "round {round}");
        next += N;
    }
    assert_eq!(rq.outstanding(), (0, 0));
    if multishot_path(&cq) {
        // Armed again after each round ran the ring dry.
        assert!(cq.stats().multishots >= 6, "{:?}", cq.stats());
    } else {
        assert_eq!(cq.stats().multishots, 0);
    }
}

/// Truncation, a zero-length datagram and a receive with addresses in the
/// middle of plain ones: each result as the per-request path gives it
/// (`EMSGSIZE` with the bytes that fit), in posting order, and the queue
/// goes on receiving after each.
#[test]
fn truncation_and_empty_datagrams_through_the_multishot_path() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 8, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(4096).unwrap();
    let slice = |i: u64| RioBuf::new(id, i as u32 * 64, 8);
    let c = client();
    // Posted: plain 0..3, one with addresses (4), plain 5..6.
    for i in 0..4u64 {
        rq.receive(slice(i), RioFlags::NONE, i).unwrap();
    }
    let remote = RioBuf::new(id, 2048, rio::ADDRESS_LEN);
    rq.receive_ex(slice(4), None, Some(remote), RioFlags::NONE, 4)
        .unwrap();
    for i in 5..7u64 {
        rq.receive(slice(i), RioFlags::NONE, i).unwrap();
    }
    let sent: [&[u8]; 7] = [
        b"abc",
        b"twenty bytes, cut...",
        b"",
        b"exactly8",
        b"from far away",
        b"",
        b"last",
    ];
    for d in sent {
        c.send_to(d, addr).unwrap();
    }
    let results = take(&cq, sent.len());
    for (k, (r, d)) in results.iter().zip(sent).enumerate() {
        assert_eq!(r.request_context, k as u64, "{results:?}");
        let want = if d.len() > 8 {
            (libc::EMSGSIZE, 8)
        } else {
            (0, d.len() as u32)
        };
        assert_eq!((r.status, r.bytes), want, "datagram {k}: {results:?}");
        let kept = &d[..d.len().min(8)];
        assert_eq!(bytes(RioBuf::new(id, k as u32 * 64, r.bytes)), kept);
    }
    let from = rio::read_addr(&bytes(remote)).unwrap();
    assert_eq!(from, c.local_addr().unwrap());
    // And on.
    rq.receive(slice(7), RioFlags::NONE, 7).unwrap();
    c.send_to(b"more", addr).unwrap();
    let r = take(&cq, 1)[0];
    assert_eq!((r.request_context, r.status, r.bytes), (7, 0, 4));
    // Armed again after each empty datagram and after the chain.
    assert_eq!(cq.stats().multishots >= 3, multishot_path(&cq));
}

/// Deferred receives are not handed out before their commit: a datagram
/// goes to the committed receive before them, the next ones wait in the
/// socket; after the commit they fill the deferred receives in posting
/// order.
#[test]
fn deferred_receives_take_datagrams_only_once_committed() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 8, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(8 * 16).unwrap();
    let c = client();
    rq.receive(RioBuf::new(id, 0, 16), RioFlags::NONE, 0)
        .unwrap();
    for i in 1..5u64 {
        rq.receive(RioBuf::new(id, i as u32 * 16, 16), RioFlags::DEFER, i)
            .unwrap();
    }
    numbered(&c, addr, 100, 3);
    let first = take(&cq, 1);
    assert_eq!(numbers(id, &first), [100]);
    none_for_a_while(&cq);
    rq.commit().unwrap();
    let rest = take(&cq, 2);
    assert_eq!(
        rest.iter().map(|r| r.request_context).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(numbers(id, &rest), [101, 102]);
    numbered(&c, addr, 103, 2);
    let last = take(&cq, 2);
    assert_eq!(
        last.iter().map(|r| r.request_context).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(numbers(id, &last), [103, 104]);
    assert_eq!(cq.stats().multishots > 0, multishot_path(&cq));
}

/// Dropping a request queue whose receives wait in its buffer ring (the
/// multishot armed), or in one that ran dry with receives posted after,
/// cancels them all; the socket closes and the buffer can be deregistered.
/// Closing a completion queue in the same states leaks nothing either.
#[test]
fn dropping_or_closing_with_the_multishot_armed() {
    for case in 0..4 {
        let (server, addr) = udp();
        let cq = CompletionQueue::new(16, Notify::Polled).unwrap();
        let rq = RequestQueue::new(server, 8, 0, &cq, &cq, 9).unwrap();
        let id = rio::register_buffer(8 * 16).unwrap();
        let c = client();
        let mut delivered = 0;
        if case % 2 == 1 {
            // The ring runs dry: the multishot ends; more receives follow.
            for i in 0..2u64 {
                rq.receive(RioBuf::new(id, i as u32 * 16, 16), RioFlags::NONE, i)
                    .unwrap();
            }
            numbered(&c, addr, 0, 2);
            assert_eq!(numbers(id, &take(&cq, 2)), [0, 1]);
        }
        for i in 0..6u64 {
            rq.receive(RioBuf::new(id, i as u32 * 16, 16), RioFlags::NONE, i)
                .unwrap();
        }
        // Two land (their results wait in the ring), four stay published.
        numbered(&c, addr, 50, 2);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(cq.stats().multishots > 0, multishot_path(&cq));
        if case < 2 {
            let fd = rq.as_raw_fd();
            let name = fd_target(fd).unwrap();
            drop(rq);
            let results = take(&cq, 6);
            for r in &results {
                assert_eq!(r.socket_context, 9);
                if r.status == 0 {
                    delivered += 1;
                } else {
                    assert_eq!(r.status, libc::ECANCELED, "{results:?}");
                }
            }
            assert!(delivered <= 2, "{results:?}");
            assert_ne!(fd_target(fd), Some(name));
            assert_eq!(cq.charged(), 0);
            rio::deregister_buffer(id).unwrap();
        } else {
            cq.close().unwrap();
            assert_eq!(rq.outstanding(), (0, 0));
            rio::deregister_buffer(id).unwrap();
            drop(rq);
        }
    }
}

/// Moving a completion queue to a bigger ring while datagram receives wait
/// in a buffer ring (the multishot armed on the old ring): they are started
/// again on the new one ahead of later receives, and fill in posting order.
#[test]
fn resizing_with_the_multishot_armed_keeps_posting_order() {
    let (server, addr) = udp();
    let cq = CompletionQueue::new(8, Notify::Polled).unwrap();
    let rq = RequestQueue::new(server, 8, 0, &cq, &cq, 0).unwrap();
    let id = rio::register_buffer(8 * 16).unwrap();
    let c = client();
    for i in 0..4u64 {
        rq.receive(RioBuf::new(id, i as u32 * 16, 16), RioFlags::NONE, i)
            .unwrap();
    }
    // One lands before the move; its result moves with the queue.
    numbered(&c, addr, 0, 1);
    thread::sleep(Duration::from_millis(20));
    let before = cq.stats().multishots;
    cq.resize(100).unwrap();
    assert!(cq.ring_capacity() >= 100);
    for i in 4..8u64 {
        rq.receive(RioBuf::new(id, i as u32 * 16, 16), RioFlags::NONE, i)
            .unwrap();
    }
    numbered(&c, addr, 1, 7);
    let results = take(&cq, 8);
    let contexts: Vec<u64> = results.iter().map(|r| r.request_context).collect();
    assert_eq!(contexts, (0..8).collect::<Vec<u64>>(), "{results:?}");
    assert_eq!(numbers(id, &results), (0..8).collect::<Vec<u32>>());
    // Armed again on the new ring.
    assert_eq!(cq.stats().multishots > before, multishot_path(&cq));
}
