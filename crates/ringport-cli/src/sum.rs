//! `ringport sum`: the classic completion-port demo.
//!
//! The main thread posts `items` work packets, each naming a chunk of
//! 0..items×chunk, to a work port with concurrency = CPUs, served by a
//! [`WorkerPool`] of 2 × CPUs threads. Each worker sums its chunk and posts the
//! partial sum to a results port; the main thread learns that the work is done
//! by taking `items` packets from there (a completion, never a sleep).
//!
//! The workers are `WorkerPool`'s loop written out, because `--timeline`
//! needs what the pool's handler cannot see: the moment each thread calls
//! `get` (where its activity ends), and its own lane to record into.
//! `--verbose` prints inside `port.blocking`: a worker waiting for stdout
//! gives up its slot, as a Windows thread blocked on another object does.

use std::ops::Range;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ringport::{cpu_count, CompletionPort, WorkerPool};

use crate::timeline::{self, Clock, Lane, Recording, Take};

/// The most items `--timeline` records (each worker reserves a record for
/// every item before the run).
const MAX_TIMELINE_ITEMS: u64 = 100_000;

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
    /// Draw the run as an SVG: a lane per worker with a mark for each packet
    /// it took, the active threads against the limit, who was woken for
    /// each post.
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,
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
    if args.timeline.is_some() && args.items > MAX_TIMELINE_ITEMS {
        return Err(format!(
            "--timeline records at most {MAX_TIMELINE_ITEMS} items; use fewer --items"
        ));
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

/// What one worker did.
struct Worker {
    handled: u64,
    /// When it first called `get` (ns on the run's clock).
    first_get: u64,
    lane: Option<Lane>,
}

/// One worker: `WorkerPool`'s loop, recording each packet into its own
/// lane when there is one (reserved before the run: no allocation here).
fn work(
    port: CompletionPort<Range<u64>>,
    sink: CompletionPort<u64>,
    clock: Clock,
    mut lane: Option<Lane>,
    verbose: bool,
) -> Worker {
    let mut handled = 0;
    let mut asked = clock.now();
    let first_get = asked;
    while let Ok(packet) = port.get(None) {
        let taken = if lane.is_some() { clock.now() } else { 0 };
        if packet.key == WorkerPool::<()>::STOP_KEY {
            break;
        }
        let range = packet.token;
        // Each number through black_box: otherwise the compiler turns the
        // sum into a formula and no item is work worth sharing out.
        let partial: u64 = range.clone().fold(0, |a, x| a + std::hint::black_box(x));
        let mut blocked = (0, 0);
        if verbose {
            let from = if lane.is_some() { clock.now() } else { 0 };
            port.blocking(|| {
                let me = thread::current();
                println!(
                    "{}: item {} sums {}..{} = {partial}",
                    me.name().unwrap_or("?"),
                    packet.key,
                    range.start,
                    range.end
                )
            });
            if lane.is_some() {
                blocked = (from, clock.now());
            }
        }
        // The result packet is the completion the main thread waits on.
        let _ = sink.post(packet.key, partial, Ok((range.end - range.start) as usize));
        handled += 1;
        if let Some(l) = lane.as_mut() {
            let done = clock.now();
            l.takes.push(Take {
                item: packet.key,
                asked,
                taken,
                blocked,
                done,
            });
            asked = done;
        }
    }
    Worker {
        handled,
        first_get,
        lane,
    }
}

pub fn run(args: Args) -> Result<(), String> {
    let (threads, concurrency, n) = validate(&args)?;
    let work_port = CompletionPort::<Range<u64>>::new(concurrency).map_err(|e| e.to_string())?;
    let results = CompletionPort::<u64>::new(0).map_err(|e| e.to_string())?;
    let record = args.timeline.is_some();
    let items = args.items as usize;

    let clock = Clock::start();
    let mut workers: Vec<JoinHandle<Worker>> = Vec::with_capacity(threads);
    for i in 0..threads {
        let (port, sink) = (work_port.clone(), results.clone());
        let lane = record.then(|| Lane::with_capacity(items));
        let verbose = args.verbose;
        let spawned = thread::Builder::new()
            .name(format!("ringport-worker-{i}"))
            .spawn(move || work(port, sink, clock, lane, verbose));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                work_port.close();
                return Err(format!("starting worker {i}: {e}"));
            }
        }
    }

    // The demo is about how a port releases waiting threads, so let every
    // worker reach its first get before the first post (bounded: a worker
    // that never gets there only makes the picture less tidy).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while work_port.stats().waiting < threads as u64 && std::time::Instant::now() < deadline {
        thread::yield_now();
    }

    let mut posted = Vec::with_capacity(if record { items } else { 0 });
    let started = clock.now();
    for i in 0..args.items {
        let start = i * args.chunk;
        if record {
            posted.push(clock.now());
        }
        work_port
            .post(i, start..start + args.chunk, Ok(0))
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
    let elapsed = Duration::from_nanos(clock.now() - started);
    // Stop packets queue behind the work, one per worker, as
    // WorkerPool::stop_with posts them.
    for _ in 0..threads {
        work_port
            .post(WorkerPool::<()>::STOP_KEY, 0..0, Ok(0))
            .map_err(|e| format!("stopping the workers: {e}"))?;
    }
    let mut done = Vec::with_capacity(threads);
    let mut panicked = 0;
    for h in workers {
        match h.join() {
            Ok(w) => done.push(w),
            Err(_) => {
                panicked += 1;
                done.push(Worker {
                    handled: 0,
                    first_get: 0,
                    lane: None,
                })
            }
        }
    }
    let stats = work_port.stats();
    let per_worker: Vec<u64> = done.iter().map(|w| w.handled).collect();

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
    for (i, handled) in per_worker.iter().enumerate() {
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
        stats.max_active
    );
    println!(
        "wake-ups: {}, of which handoffs from a post: {}",
        stats.wakeups, stats.handoffs
    );
    println!("wall time: {:.3} ms", elapsed.as_secs_f64() * 1e3);
    if panicked > 0 {
        return Err(format!("{panicked} workers panicked"));
    }
    if let Some(path) = &args.timeline {
        let rec = Recording {
            first_get: done.iter().map(|w| w.first_get).collect(),
            lanes: done
                .into_iter()
                .map(|w| w.lane.unwrap_or_default())
                .collect(),
            posted,
            limit: concurrency,
            title: format!(
                "ringport sum{}: {} items on {threads} workers, concurrency {concurrency}",
                if args.verbose { " --verbose" } else { "" },
                args.items
            ),
            waited_ns: None,
        };
        timeline::draw(&rec, path)?;
        let f = rec.findings();
        println!(
            "timeline: {} ({} packets taken by released waiters, at most {} active; {})",
            path.display(),
            f.woken,
            f.max_active,
            timeline::lifo_line(&f)
        );
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
            timeline: None,
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
