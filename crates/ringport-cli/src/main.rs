//! `ringport`: the completion-port sum demo, servers, load generator and benchmarks.

mod bench;
mod sum;

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
    /// Benchmarks, each against its peers in the same run.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sum(args) => sum::run(args),
        Command::Bench(b) => bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringport: {e}");
            ExitCode::FAILURE
        }
    }
}
