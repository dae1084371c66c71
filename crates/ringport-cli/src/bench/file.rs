//! `ringport bench file`: random 4 KiB reads from one file through the port
//! against std `pread` (`FileExt::read_at`) on as many threads.
//!
//! The file (`--size-mib`, 256 MiB by default) is created in the system's
//! temporary directory and unlinked at once, so that nothing is left behind
//! however the run ends; the benchmark reads it through descriptors it keeps
//! open. Each 4 KiB block starts with its own index,
//! and every read checks it, so a read that returned the wrong block fails
//! the benchmark.
//!
//! - **ringport**: the file is associated with a port served by `--threads`
//!   workers; `--depth` reads are kept pending, each completion checked and
//!   replaced by a read at a new random offset with the same buffer.
//! - **ringport-now**: the same with skip-on-success (`read_at_now`): a read
//!   the page cache serves whole comes back at once and is handled on the
//!   spot, and the next one started, with no packet through the port.
//! - **pread**: `--threads` threads, each reading one block at a time.
//!
//! By default the file sits in the page cache (it was just written), so the
//! figure is the cost of an operation, not of the disk. `--cold` drops the
//! file's pages before every run (`posix_fadvise(DONTNEED)`), so reads go to
//! the device, where having many reads pending pays.
//!
//! `--pin` puts every reader of both sides, and every thread the library
//! starts for them, on one CPU (the harness pins itself there while it
//! starts them, so they inherit it, and checks them during the run), one
//! thread a side unless `--threads`; the harness then measures from another
//! CPU. The CPU per read is always the process's less the harness thread's.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringport::{CompletionPort, Error, Started};

use crate::args::parse_duration;
use crate::measure::{self, cpu_time, median, Scope};
use crate::report::{Cell, Chart, Report, RunRecord, Table};

#[derive(clap::Args)]
pub struct Args {
    /// Size of the file in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Seconds each side is measured in each round.
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    seconds: Duration,
    /// Interleaved rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads on each side [default: CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// Reads kept pending on the port.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// ringport: completions a worker takes per get (get_many).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Drop the file from the page cache before each run.
    #[arg(long)]
    cold: bool,
    /// Directory for the file [default: the system's temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Pin every reader (and the library's threads) to one CPU, the harness
    /// to another; one thread a side unless --threads.
    #[arg(long)]
    pin: bool,
}

/// Where `--pin` puts the readers and the measuring harness.
#[derive(Clone, Copy)]
struct Pin {
    readers: usize,
    harness: usize,
}

const BLOCK: usize = 4096;

/// A xorshift generator: cheap, and different per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % below
    }
}

/// Creates the file, unlinks it, fills it, and returns it open.
fn create(path: &PathBuf, blocks: u64) -> Result<File, String> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    std::fs::remove_file(path).map_err(|e| format!("unlinking {}: {e}", path.display()))?;
    let mut chunk = vec![0u8; 256 * BLOCK];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_chunk = (chunk.len() / BLOCK) as u64;
    let mut b = 0;
    while b < blocks {
        let n = per_chunk.min(blocks - b);
        for k in 0..n {
            let block = &mut chunk[k as usize * BLOCK..(k as usize + 1) * BLOCK];
            block[..8].copy_from_slice(&(b + k).to_le_bytes());
            for word in block[8..].chunks_mut(8) {
                let v = rng.next(u64::MAX).to_le_bytes();
                word.copy_from_slice(&v[..word.len()]);
            }
        }
        f.write_all(&chunk[..n as usize * BLOCK])
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        b += n;
    }
    f.sync_all()
        .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    Ok(f)
}

fn check(buf: &[u8], offset: u64) -> Result<(), String> {
    let want = offset / BLOCK as u64;
    let got = buf
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    if buf.len() != BLOCK || got != Some(want) {
        return Err(format!(
            "read at {offset} returned {} bytes starting with block {got:?}, expected block {want}",
            buf.len()
        ));
    }
    Ok(())
}

fn drop_cache(f: &File) {
    // SAFETY: advice on a file we have open; it reads no memory of ours.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// One run: reads per second and process CPU µs per read.
struct FileRun {
    rate: f64,
    cpu_us: f64,
}

pub fn run(mut args: Args, quick: bool, report: &mut Report) -> Result<(), String> {
    if quick {
        args.size_mib = 8;
        args.seconds = Duration::from_millis(200);
        args.rounds = 1;
    }
    if args.size_mib == 0 || args.size_mib > 1 << 20 {
        return Err("--size-mib must be between 1 and 1,048,576".into());
    }
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.depth == 0 {
        return Err("--depth must be at least 1".into());
    }
    if args.seconds.is_zero() {
        return Err("--seconds must be more than 0".into());
    }
    let allowed = measure::allowed_cpus();
    let pin = match allowed[..] {
        [harness, readers, ..] if args.pin => Some(Pin { readers, harness }),
        _ if args.pin => return Err("--pin needs two CPUs this process may run on".into()),
        _ => None,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| if args.pin { 1 } else { ringport::cpu_count() });
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("ringport-bench-{}.dat", std::process::id()));
    let blocks = args.size_mib * (1 << 20) / BLOCK as u64;
    report.say(format!(
        "ringport bench file: random {} KiB reads from a {} MiB file in {}, {} threads, \
         {} reads pending on the port (batch {}), page cache {}, {:?} per run, {} rounds interleaved, median reported",
        BLOCK / 1024,
        args.size_mib,
        dir.display(),
        threads,
        args.depth,
        args.batch,
        if args.cold { "dropped before each run" } else { "warm" },
        args.seconds,
        args.rounds
    ));
    let t = Instant::now();
    let file = create(&path, blocks)?;
    eprintln!("  wrote the file in {:.2} s", t.elapsed().as_secs_f64());
    if let Some(p) = pin {
        report.say(format!(
            "readers pinned to CPU {}, the measuring harness to CPU {}",
            p.readers, p.harness
        ));
    }
    let result = rounds(&args, &file, blocks, threads, pin);
    if pin.is_some() {
        measure::pin(&allowed);
    }
    let [port_runs, now_runs, pread_runs] = result?;

    let sides = [
        ("ringport", &port_runs),
        ("ringport-now", &now_runs),
        ("pread", &pread_runs),
    ];
    for (name, runs) in sides {
        for (i, r) in runs.iter().enumerate() {
            report.run(
                RunRecord::new("reads", "", i + 1, name)
                    .with("reads_per_s", r.rate)
                    .with("cpu_us_per_read", r.cpu_us),
            );
        }
    }
    let rates = |v: &[FileRun]| v.iter().map(|r| r.rate).collect::<Vec<_>>();
    let cpus = |v: &[FileRun]| v.iter().map(|r| r.cpu_us).collect::<Vec<_>>();
    let mut t = Table::new(
        format!(
            "Random {} KiB reads: median of {} interleaved rounds",
            BLOCK / 1024,
            args.rounds
        ),
        &[
            "reader",
            "reads/s",
            "reads/s min–max",
            "CPU µs/read",
            "CPU µs/read min–max",
        ],
    );
    for (name, runs) in sides {
        t.row(vec![
            Cell::text(name),
            Cell::num(median(rates(runs)), 0),
            Cell::range(&rates(runs), 0),
            Cell::num(median(cpus(runs)), 2),
            Cell::range(&cpus(runs), 2),
        ]);
    }
    report.table(t);
    let mut t = Table::new(
        "ringport over pread (medians)",
        &["", "reads/s", "CPU per read"],
    );
    for (name, runs) in [("ringport", &port_runs), ("ringport-now", &now_runs)] {
        t.row(vec![
            Cell::text(format!("{name} / pread")),
            Cell::ratio(median(rates(runs)) / median(rates(&pread_runs))),
            Cell::ratio(median(cpus(runs)) / median(cpus(&pread_runs))),
        ]);
    }
    report.table(t);
    let case = [String::new()];
    report.chart(Chart::new(
        "File reads per second: ringport over pread",
        "reads",
        "reads_per_s",
        true,
        &case,
        &["ringport", "ringport-now"],
        &["pread"],
    ));
    report.chart(Chart::new(
        "CPU per read: ringport over pread (lower is better)",
        "reads",
        "cpu_us_per_read",
        false,
        &case,
        &["ringport", "ringport-now"],
        &["pread"],
    ));
    Ok(())
}

/// Every round, ringport (every read through the port), ringport-now
/// (skip-on-success: a read the page cache serves comes back at once) and
/// pread: their runs.
fn rounds(
    args: &Args,
    file: &File,
    blocks: u64,
    threads: usize,
    pin: Option<Pin>,
) -> Result<[Vec<FileRun>; 3], String> {
    let reopen = || {
        file.try_clone()
            .map_err(|e| format!("duplicating the file's descriptor: {e}"))
    };
    let mut port_runs = Vec::new();
    let mut now_runs = Vec::new();
    let mut pread_runs = Vec::new();
    for round in 0..args.rounds {
        for (now, runs) in [(false, &mut port_runs), (true, &mut now_runs)] {
            if args.cold {
                drop_cache(file);
            }
            let r = port_reads(
                reopen()?,
                blocks,
                threads,
                PortReads {
                    depth: args.depth,
                    batch: args.batch,
                    now,
                },
                args.seconds,
                pin,
            )?;
            eprintln!(
                "  round {}: {:<12} {:>10.0} reads/s  {:.2} µs CPU/read",
                round + 1,
                if now { "ringport-now" } else { "ringport" },
                r.rate,
                r.cpu_us
            );
            runs.push(r);
        }
        if args.cold {
            drop_cache(file);
        }
        let r = pread_reads(reopen()?, blocks, threads, args.seconds, pin)?;
        eprintln!(
            "  round {}: pread        {:>10.0} reads/s  {:.2} µs CPU/read",
            round + 1,
            r.rate,
            r.cpu_us
        );
        pread_runs.push(r);
    }
    Ok([port_runs, now_runs, pread_runs])
}

/// How the port side reads.
#[derive(Clone, Copy)]
struct PortReads {
    /// Reads kept pending on the port.
    depth: usize,
    /// Completions a worker takes per get.
    batch: usize,
    /// Skip-on-success (`read_at_now`): a read served at once is handled on
    /// the spot and the next one started, without a trip through the port.
    now: bool,
}

fn port_reads(
    file: File,
    blocks: u64,
    threads: usize,
    how: PortReads,
    seconds: Duration,
    pin: Option<Pin>,
) -> Result<FileRun, String> {
    let PortReads { depth, batch, now } = how;
    if let Some(p) = pin {
        measure::pin(&[p.readers]);
    }
    let port = CompletionPort::<u64>::new(threads).map_err(|e| e.to_string())?;
    let handle = Arc::new(port.associate(file, 0).map_err(|e| e.to_string())?);
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..threads {
        let (wport, handle, counts, failed) =
            (port.clone(), handle.clone(), counts.clone(), failed.clone());
        let spawned = thread::Builder::new()
            .name(format!("file-port-{w}"))
            .spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((w as u64 + 1) << 32));
                let mut n = 0u64;
                let fail = |e: String| {
                    let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                    f.get_or_insert(e);
                };
                let mut packets = Vec::with_capacity(batch);
                'outer: loop {
                    match wport.get_into(&mut packets, batch, None) {
                        Ok(_) => {}
                        Err(Error::Closed) => break,
                        Err(e) => return fail(e.to_string()),
                    }
                    for mut p in packets.drain(..) {
                        let offset = p.token;
                        let Some(buf) = p.take_buf() else {
                            return fail("a read came back without its buffer".into());
                        };
                        match &p.result {
                            Ok(_) => {}
                            Err(_) if p.is_cancelled() => break 'outer,
                            Err(e) => return fail(format!("read at {offset}: {e}")),
                        }
                        if let Err(e) = check(buf.as_slice(), offset) {
                            return fail(e);
                        }
                        n += 1;
                        if n % 64 == 0 {
                            counts[w].store(n, Ordering::Relaxed);
                        }
                        let mut buf = buf.into_vec();
                        loop {
                            buf.clear();
                            let next = rng.next(blocks) * BLOCK as u64;
                            let started = if now {
                                handle.read_at_now(buf, next, next)
                            } else {
                                handle.read_at(buf, next, next).map(Started::Pending)
                            };
                            let mut p = match started {
                                Ok(Started::Pending(_)) => break,
                                Ok(Started::Done(p)) => p,
                                Err(Error::Closed) => break 'outer,
                                Err(e) => return fail(format!("starting a read: {e}")),
                            };
                            // Served at once: checked and counted here.
                            buf = match (p.take_buf(), &p.result) {
                                (Some(b), Ok(_)) => b.into_vec(),
                                (_, r) => return fail(format!("read at {next}: {r:?}")),
                            };
                            if let Err(e) = check(&buf, next) {
                                return fail(e);
                            }
                            n += 1;
                            if n % 64 == 0 {
                                counts[w].store(n, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                port.close();
                for w in workers {
                    let _ = w.join();
                }
                return Err(format!("starting a worker: {e}"));
            }
        }
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..depth {
        let off = rng.next(blocks) * BLOCK as u64;
        if let Err(e) = handle.read_at(Vec::with_capacity(BLOCK), off, off) {
            port.close();
            return Err(format!("starting a read: {e}"));
        }
    }
    let run = measure(seconds, &counts, pin);
    port.close();
    for w in workers {
        let _ = w.join();
    }
    drop(handle);
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    run
}

/// Lets the readers warm up a little, then measures `seconds` of reads.
/// Pinned, the harness first leaves the readers' CPU and then checks that
/// no reader (nor a thread started for them) is anywhere else.
fn measure(seconds: Duration, counts: &[AtomicU64], pin: Option<Pin>) -> Result<FileRun, String> {
    if let Some(p) = pin {
        measure::pin(&[p.harness]);
    }
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    thread::sleep(Duration::from_millis(200).min(seconds / 4));
    let cpu = || cpu_time(Scope::Process).saturating_sub(cpu_time(Scope::Thread));
    let (c0, t0, cpu0) = (total(), Instant::now(), cpu());
    thread::sleep(seconds / 2);
    let pinned = match pin {
        Some(p) => {
            let me = measure::gettid();
            let readers: Vec<i32> = measure::threads()
                .into_iter()
                .filter(|&t| t != me)
                .collect();
            measure::check_pinned(&readers, p.readers)
        }
        None => Ok(()),
    };
    thread::sleep(seconds - seconds / 2);
    let (c1, t1, cpu1) = (total(), Instant::now(), cpu());
    pinned?;
    let reads = (c1 - c0).max(1) as f64;
    Ok(FileRun {
        rate: reads / t1.duration_since(t0).as_secs_f64(),
        cpu_us: cpu1.saturating_sub(cpu0).as_secs_f64() * 1e6 / reads,
    })
}

fn pread_reads(
    file: File,
    blocks: u64,
    threads: usize,
    seconds: Duration,
    pin: Option<Pin>,
) -> Result<FileRun, String> {
    if let Some(p) = pin {
        measure::pin(&[p.readers]);
    }
    let file = Arc::new(file);
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
    let mut workers = Vec::new();
    for w in 0..threads {
        let (file, wstop, counts) = (file.clone(), stop.clone(), counts.clone());
        let spawned = thread::Builder::new()
            .name(format!("file-pread-{w}"))
            .spawn(move || -> Result<(), String> {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((w as u64 + 1) << 32));
                let mut buf = vec![0u8; BLOCK];
                let mut n = 0u64;
                while !wstop.load(Ordering::Relaxed) {
                    let off = rng.next(blocks) * BLOCK as u64;
                    let got = file
                        .read_at(&mut buf, off)
                        .map_err(|e: io::Error| format!("pread at {off}: {e}"))?;
                    check(&buf[..got], off)?;
                    n += 1;
                    if n % 64 == 0 {
                        counts[w].store(n, Ordering::Relaxed);
                    }
                }
                Ok(())
            });
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for w in workers {
                    let _ = w.join();
                }
                return Err(format!("starting a reader: {e}"));
            }
        }
    }
    let run = measure(seconds, &counts, pin);
    stop.store(true, Ordering::Relaxed);
    let mut first_err = None;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert_with(|| "a reader panicked".to_string());
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => run,
    }
}
