//! `ringport bench …`: each benchmark runs ringport beside its peers in the
//! same process and prints the ratio.

mod file;
mod port;
mod rio;
mod tcp;
mod udp;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Posted packets through N workers, against crossbeam-channel and std mpsc.
    Port(port::Args),
    /// TCP echo: ringport against tokio, mio and thread-per-connection std servers.
    Tcp(tcp::Args),
    /// UDP echo: ringport against tokio, mio and a blocking recv_from/send_to loop.
    Udp(udp::Args),
    /// Random 4 KiB file reads: the port with many reads pending against pread on N threads.
    File(file::Args),
    /// The RIO UDP sinks (every serve udp-sink mode) against tokio, mio and recvmmsg, fed by a GSO sender.
    Rio(rio::Args),
}

pub fn run(b: Bench) -> Result<(), String> {
    match b {
        Bench::Port(args) => port::run(args),
        Bench::Tcp(args) => tcp::run(args),
        Bench::Udp(args) => udp::run(args),
        Bench::File(args) => file::run(args),
        Bench::Rio(args) => rio::run(args),
    }
}
