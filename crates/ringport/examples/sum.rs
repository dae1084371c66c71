//! The classic completion-port demo: sum 0..999,999 in 100 work items on a
//! pool of 2 × CPUs threads, at most CPUs of them running at once, and show
//! how the port spread the work.
//!
//! `cargo run -p ringport --example sum`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringport::{CompletionPort, WorkerPool};

fn main() -> Result<(), ringport::Error> {
    const ITEMS: u64 = 1_000_000;
    const CHUNK: u64 = 10_000;
    // Concurrency 0: as many active threads as CPUs.
    let port = CompletionPort::<u64>::new(0)?;
    let total = Arc::new(AtomicU64::new(0));
    let sum = total.clone();
    // 0 threads: 2 × CPUs, the classic choice.
    let pool = WorkerPool::start(&port, 0, move |packet| {
        let start = packet.token;
        let part: u64 = (start..start + CHUNK).sum();
        sum.fetch_add(part, Ordering::Relaxed);
    })?;
    for start in (0..ITEMS).step_by(CHUNK as usize) {
        // The key says what kind of packet it is; the token carries the work.
        port.post(1, start, Ok(0))?;
    }
    let report = pool.stop()?;
    let total = total.load(Ordering::Relaxed);
    println!("the final results are [{total}]");
    assert_eq!(total, ITEMS * (ITEMS - 1) / 2);
    for (i, n) in report.per_worker.iter().enumerate() {
        println!("worker {i}: {n} items");
    }
    println!("most threads active at once: {}", report.stats.max_active);
    Ok(())
}
