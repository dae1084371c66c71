//! `ringport sum`: the classic completion-port demo.
//!
//! The main thread posts `items` work packets, each naming a chunk of
//! 0..items×chunk, to a work port with concurrency = CPUs, served by a
//! [`WorkerPool`] of 2 × CPUs threads. Each worker sums its chunk and posts the
//! partial sum to a results port; the main thread learns that the work is done
//! by taking `items` packets from there (a completion, never a sleep).

use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use ringport::{cpu_count, CompletionPort, WorkerPool};

#[derive(clap::Args)]
pub struct Args {
    /// Number of work items.
    #[arg(long, default_value_t = 100)]
    items: u64,
    /// Numbers per work item.
    #[arg(long, default_value_t = 10_000)]
    chunk: u64,
    /// Worker threads [default: 2 × CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// Concurrency limit of the work port [default: CPUs].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Print a line for every packet a worker takes.
    #[arg(long, short)]
    verbose: bool,
}

/// Checks the arguments and returns (threads, concurrency, total count).
fn validate(args: &Args) -> Result<(usize, usize, u64), String> {
    if args.items == 0 {
        return Err("--items must be at least 1".into());
    }
    if args.chunk == 0 {
        return Err("--chunk must be at least 1".into());
    }
    let threads = args.threads.unwrap_or(2 * cpu_count());
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let concurrency = args.concurrency.unwrap_or(cpu_count());
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let n = args
        .items
        .checked_mul(args.chunk)
        .ok_or("--items × --chunk overflows 64 bits")?;
    // The sum 0 + 1 + … + (n-1) must fit the u64 every partial sum is kept in.
    let total = (n as u128) * (n as u128 - 1) / 2;
    if total > u64::MAX as u128 {
        return Err(format!(
            "the sum of 0..{n} is {total}, which overflows 64 bits; use fewer --items or a smaller --chunk"
        ));
    }
    Ok((threads, concurrency, n))
}

pub fn run(args: Args) -> Result<(), String> {
    let (threads, concurrency, n) = validate(&args)?;
    let work = CompletionPort::<Range<u64>>::new(concurrency).map_err(|e| e.to_string())?;
    let results = CompletionPort::<u64>::new(0).map_err(|e| e.to_string())?;

    let started = Instant::now();
    let sink = results.clone();
    let verbose = args.verbose;
    let pool = WorkerPool::start(&work, threads, move |packet| {
        let range = packet.token;
        let partial: u64 = range.clone().sum();
        if verbose {
            let me = thread::current();
            println!(
                "{}: item {} sums {}..{} = {partial}",
                me.name().unwrap_or("?"),
                packet.key,
                range.start,
                range.end
            );
        }
        // The result packet is the completion the main thread waits on.
        let _ = sink.post(packet.key, partial, Ok((range.end - range.start) as usize));
    })
    .map_err(|e| e.to_string())?;

    for i in 0..args.items {
        let start = i * args.chunk;
        work.post(i, start..start + args.chunk, Ok(0))
            .map_err(|e| e.to_string())?;
    }
    let mut total: u64 = 0;
    let mut counted: u64 = 0;
    for _ in 0..args.items {
        let p = results
            .get(Some(Duration::from_secs(600)))
            .map_err(|e| format!("waiting for results: {e}"))?;
        total += p.token;
        counted += p.result.map_err(|e| e.to_string())? as u64;
    }
    let elapsed = started.elapsed();
    let report = pool.stop_with(|| 0..0).map_err(|e| e.to_string())?;

    println!("the final results are [{total}]");
    if counted != n {
        return Err(format!("counted {counted} numbers, expected {n}"));
    }
    println!();
    println!(
        "{threads} workers, concurrency {concurrency}, {} items of {} numbers",
        args.items, args.chunk
    );
    println!("{:<20} {:>8} {:>7}", "thread", "items", "share");
    for (i, handled) in report.per_worker.iter().enumerate() {
        let share = 100.0 * *handled as f64 / args.items as f64;
        println!(
            "{:<20} {:>8} {:>6.1}% {}",
            format!("ringport-worker-{i}"),
            handled,
            share,
            "#".repeat((share / 2.5).round() as usize)
        );
    }
    println!(
        "most threads active at once: {} (limit {concurrency})",
        report.stats.max_active
    );
    println!(
        "wake-ups: {}, of which handoffs from a post: {}",
        report.stats.wakeups, report.stats.handoffs
    );
    println!("wall time: {:.3} ms", elapsed.as_secs_f64() * 1e3);
    if report.panicked > 0 {
        return Err(format!("{} workers panicked", report.panicked));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(items: u64, chunk: u64) -> Args {
        Args {
            items,
            chunk,
            threads: Some(2),
            concurrency: Some(1),
            verbose: false,
        }
    }

    #[test]
    fn rejects_bad_arguments_with_a_message() {
        assert!(validate(&args(0, 10)).unwrap_err().contains("--items"));
        assert!(validate(&args(10, 0)).unwrap_err().contains("--chunk"));
        assert!(validate(&args(u64::MAX, 2))
            .unwrap_err()
            .contains("overflows"));
        assert!(validate(&args(1 << 20, 1 << 13))
            .unwrap_err()
            .contains("overflows"));
        let mut a = args(1, 1);
        a.threads = Some(0);
        assert!(validate(&a).unwrap_err().contains("--threads"));
        assert_eq!(validate(&args(100, 10_000)).unwrap().2, 1_000_000);
    }
}
