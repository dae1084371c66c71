//! `ringport bench …`: each benchmark runs ringport beside its peers in the
//! same process and prints the ratio.

mod port;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Posted packets through N workers, against crossbeam-channel and std mpsc.
    Port(port::Args),
}

pub fn run(b: Bench) -> Result<(), String> {
    match b {
        Bench::Port(args) => port::run(args),
    }
}
