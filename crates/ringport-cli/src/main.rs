//! `ringport`: the completion-port sum demo, servers, load generator and benchmarks.

mod args;
mod bench;
mod blast;
mod load;
mod log;
mod measure;
mod report;
mod serve;
mod sum;
mod timeline;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringport",
    version,
    about = "Windows-style I/O completion ports and RIO for Linux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The classic completion-port demo: sum 0..N in work items on a worker pool.
    Sum(sum::Args),
    /// Servers: tcp-echo and udp-echo on one completion port, udp-sink (the RIO UDP servers).
    Serve(serve::Args),
    /// Load generators: ping-pong for echo servers (tcp, udp), a GSO blaster for sinks (udp-blast).
    Load(load::Args),
    /// Benchmarks, each against its peers in the same run.
    Bench(bench::BenchArgs),
    /// Markdown sections from `bench --json` files, written between their
    /// markers in a document (BENCHMARKS.md), the rest of it left alone.
    Report(report::regen::Args),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`ringport sum | head -1`) instead of
    // failing a print with EPIPE; sockets send with MSG_NOSIGNAL.
    // SAFETY: setting a signal's disposition to the default, before any
    // other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sum(args) => sum::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Load(args) => load::run(args),
        Command::Bench(b) => bench::run(b),
        Command::Report(args) => report::regen::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the logger: a stderr nobody reads must not keep the
            // process from ending.
            log::line(format_args!("{e}"));
            log::flush(std::time::Duration::from_secs(1));
            ExitCode::FAILURE
        }
    }
}
