//! Helpers of the RIO test suites (`rio.rs`, `conformance_rio.rs`).

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use ringport::rio::{self, CompletionQueue, RioBuf, RioResult};

/// Dequeues exactly `n` results, waiting at most 5 s.
pub fn take(cq: &CompletionQueue, n: usize) -> Vec<RioResult> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [RioResult::default(); 64];
    while got.len() < n {
        let want = (n - got.len()).min(buf.len());
        let k = cq.dequeue(&mut buf[..want]).unwrap();
        got.extend_from_slice(&buf[..k]);
        if k == 0 {
            assert!(
                Instant::now() < deadline,
                "timed out with {} of {n} results ({} backend): {got:?}",
                got.len(),
                cq.backend()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// The bytes a registered slice holds.
pub fn bytes(buf: RioBuf) -> Vec<u8> {
    rio::borrow(&buf).unwrap().to_vec()
}

/// A UDP socket on 127.0.0.1 and its address.
pub fn udp() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}
