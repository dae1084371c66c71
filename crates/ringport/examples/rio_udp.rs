//! Registered I/O: receives into a registered buffer on a UDP socket,
//! results read from a completion queue without a system call, and event
//! notification for when the queue is empty.
//!
//! `cargo run -p ringport --example rio_udp`

use std::net::UdpSocket;
use std::time::Duration;

use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};

const SLOTS: u32 = 8;
const SLOT: u32 = 2048;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    // One queue for receives and sends; it must hold every request that can
    // be outstanding at once, so it can never overflow.
    let cq = CompletionQueue::new(2 * SLOTS, Notify::Event)?;
    let rq = RequestQueue::new(socket, SLOTS, SLOTS, &cq, &cq, 7)?;
    // Registered once; requests name slices of it.
    let buffer = rio::register_buffer((SLOTS * SLOT) as usize)?;
    let slot = |i: u64| RioBuf::new(buffer, i as u32 * SLOT, SLOT);
    for i in 0..SLOTS as u64 {
        // DEFER: queued without a system call; commit() starts them all.
        rq.receive(slot(i), RioFlags::DEFER, i)?;
    }
    rq.commit()?;
    println!(
        "{SLOTS} receives pending on {addr} ({} backend)",
        cq.backend()
    );

    let client = UdpSocket::bind("127.0.0.1:0")?;
    let mut results = [RioResult::default(); 16];
    let mut received = 0;
    for round in 0..5u32 {
        let msg = format!("datagram {round}");
        client.send_to(msg.as_bytes(), addr)?;
        // Arm the notification (it fires at once if results are waiting),
        // wait for it, then take everything that is there.
        cq.notify()?;
        cq.wait(Some(Duration::from_secs(5)))?;
        let n = cq.dequeue(&mut results)?;
        for r in &results[..n] {
            let data = slot(r.request_context);
            let bytes = rio::borrow(&RioBuf::new(data.id, data.offset, r.bytes))?.to_vec();
            println!(
                "request {} (socket {}): {:?}",
                r.request_context,
                r.socket_context,
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(bytes, msg.as_bytes());
            received += 1;
            // The slice is free again: receive into it once more.
            rq.receive(data, RioFlags::NONE, r.request_context)?;
        }
    }
    assert_eq!(received, 5);
    let stats = cq.stats();
    println!(
        "{} results, {} dequeues, {} notifications",
        stats.results, stats.dequeues, stats.notifies
    );
    Ok(())
}
