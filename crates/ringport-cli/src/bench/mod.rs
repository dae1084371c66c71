//! `ringport bench …`: each benchmark runs ringport beside its peers in the
//! same process and prints the ratio.

mod echo;
mod epoll_raw;
mod file;
mod port;
mod rio;
mod shards;
mod sockperf;
mod tcp;
mod udp;
mod uring_raw;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::report::{svg, Report};

/// `ringport bench [--backend B] <which>`.
#[derive(Args)]
pub struct BenchArgs {
    /// The backend ringport's servers and ports run on in this benchmark
    /// (auto, io_uring, epoll); sets RINGPORT_BACKEND for the process. The
    /// tcp and udp benchmarks also run a `ringport-epoll` peer beside it.
    #[arg(long, global = true)]
    backend: Option<ringport::Backend>,
    /// Write the report to FILE as JSON: every round of every peer with its
    /// raw figures, every table as printed (medians, min–max, ratios), the
    /// machine (CPUs, kernel, backend, load average before and after, the
    /// commit), the command line and the time. `ringport report` turns
    /// such files into BENCHMARKS.md's tables.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw ringport's ratio to each peer on the bench's main figure, with
    /// every round's ratio and their spread, to FILE as SVG.
    #[arg(long, global = true, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// A short run of every part (tiny counts, one round, a fraction of a
    /// second each; it replaces those options): a smoke test, not a figure.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    which: Bench,
}

#[derive(Subcommand)]
pub enum Bench {
    /// Posted packets through N workers, against crossbeam-channel and std mpsc.
    Port(port::Args),
    /// TCP echo: ringport against tokio, mio and thread-per-connection std servers.
    Tcp(tcp::Args),
    /// UDP echo: ringport (completion port and RIO) against tokio, mio and a blocking recv_from/send_to loop.
    Udp(udp::Args),
    /// Random 4 KiB file reads: the port with many reads pending against pread on N threads.
    File(file::Args),
    /// The RIO UDP sinks (every serve udp-sink mode) against tokio, mio and recvmmsg, fed by a GSO sender.
    Rio(rio::Args),
    /// sockperf ping-pong against its own server and ringport's echo servers speaking its protocol (needs sockperf).
    Sockperf(sockperf::Args),
}

/// The backend ringport runs on in this process, for benchmark titles.
pub fn backend_name() -> String {
    ringport::CompletionPort::<u8>::new(1)
        .map(|p| p.backend().to_string())
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    if let Some(b) = args.backend {
        // Every port and completion queue of the process reads it; no other
        // thread exists yet.
        std::env::set_var("RINGPORT_BACKEND", b.to_string());
    }
    let name = match &args.which {
        Bench::Port(_) => "port",
        Bench::Tcp(_) => "tcp",
        Bench::Udp(_) => "udp",
        Bench::File(_) => "file",
        Bench::Rio(_) => "rio",
        Bench::Sockperf(_) => "sockperf",
    };
    let quick = args.quick;
    let mut report = Report::start(name, quick);
    match args.which {
        Bench::Port(a) => port::run(a, quick, &mut report),
        Bench::Tcp(a) => tcp::run(a, quick, &mut report),
        Bench::Udp(a) => udp::run(a, quick, &mut report),
        Bench::File(a) => file::run(a, quick, &mut report),
        Bench::Rio(a) => rio::run(a, quick, &mut report),
        Bench::Sockperf(a) => sockperf::run(a, quick, &mut report),
    }?;
    report.finish();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.svg {
        svg::write(&report, path)?;
    }
    Ok(())
}
