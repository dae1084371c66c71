//! `ringport bench …`: each benchmark runs ringport beside its peers in the
//! same process and prints the ratio.

mod echo;
mod file;
mod port;
mod rio;
mod shards;
mod tcp;
mod udp;

use clap::{Args, Subcommand};

/// `ringport bench [--backend B] <which>`.
#[derive(Args)]
pub struct BenchArgs {
    /// The backend ringport's servers and ports run on in this benchmark
    /// (auto, io_uring, epoll); sets RINGPORT_BACKEND for the process. The
    /// tcp and udp benchmarks also run a `ringport-epoll` peer beside it.
    #[arg(long, global = true)]
    backend: Option<ringport::Backend>,
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
    match args.which {
        Bench::Port(args) => port::run(args),
        Bench::Tcp(args) => tcp::run(args),
        Bench::Udp(args) => udp::run(args),
        Bench::File(args) => file::run(args),
        Bench::Rio(args) => rio::run(args),
    }
}
