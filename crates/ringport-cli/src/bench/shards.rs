//! `bench udp|tcp --shards 1,2`: ringport's echo servers split into shards
//! (`serve --shards`: a `SO_REUSEPORT` group, a completion port and workers
//! per socket, or RIO queues per socket) beside tokio's multi-threaded
//! runtime with the same number of threads, interleaved by the same harness
//! ([`super::echo::compare`]).
//!
//! With `--threads T` (default: CPUs; 1 with `--pin`), `S` shards run
//! `max(1, T / S)` workers each, and `tokio-S` runs as many threads as
//! `ringport-S` does in all. The load generator's 64 sockets (connections)
//! are 64 flows, which the kernel spreads over the shards by their 4-tuple.
//! The figure that carries to more cores is the server's CPU per message as
//! shards are added: flat means no shared cost.

use std::net::SocketAddr;
use std::time::Duration;

use ringport::reuseport;

use super::echo::{compare, localhost, EchoRun, Ringport, Server, Start};
use crate::load::Proto;
use crate::report::Report;
use crate::serve::{self, rio_tcp_echo, rio_udp_echo};

/// The shard counts the benchmark knows.
const COUNTS: [usize; 4] = [1, 2, 4, 8];

/// Each shard's workers: its share of `threads`.
fn per_shard(threads: usize, shards: usize) -> usize {
    (threads / shards).max(1)
}

/// Shards of any server, stopped together.
struct Sharded {
    addr: SocketAddr,
    shards: Vec<Box<dyn Server>>,
}

impl Server for Sharded {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn stop(self: Box<Self>) -> Result<(), String> {
        let mut first = Ok(());
        for s in self.shards {
            let r = s.stop();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

fn group_addr(addr: std::io::Result<SocketAddr>) -> Result<SocketAddr, String> {
    addr.map_err(|e| e.to_string())
}

fn opts(kind: serve::Kind, per: usize, batch: usize) -> serve::Options {
    let mut o = serve::Options::new(kind);
    o.threads = per;
    o.concurrency = per;
    o.batch = batch;
    o
}

fn udp<const S: usize>(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    let group = reuseport::udp_group(localhost(), S).map_err(|e| e.to_string())?;
    let addr = group_addr(group[0].local_addr())?;
    let o = opts(serve::Kind::UdpEcho, per_shard(threads, S), batch);
    let mut shards: Vec<Box<dyn Server>> = Vec::new();
    for sock in group {
        shards.push(Box::new(Ringport(serve::UdpEcho::start_on(sock, &o)?)));
    }
    Ok(Box::new(Sharded { addr, shards }))
}

fn rio_udp<const S: usize>(_threads: usize, _batch: usize) -> Result<Box<dyn Server>, String> {
    let group = reuseport::udp_group(localhost(), S).map_err(|e| e.to_string())?;
    let addr = group_addr(group[0].local_addr())?;
    let pending = serve::Options::new(serve::Kind::UdpEcho).pending;
    let mut shards: Vec<Box<dyn Server>> = Vec::new();
    for sock in group {
        let mode = rio_udp_echo::EchoMode::Port;
        let auto = ringport::Backend::Auto;
        let echo = crate::serve::sockperf::Protocol::Echo;
        let s = rio_udp_echo::RioUdpEcho::start_on(sock, mode, pending, 2048, auto, echo)?;
        shards.push(Box::new(Ringport(s)));
    }
    Ok(Box::new(Sharded { addr, shards }))
}

fn tcp<const S: usize>(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    let group = reuseport::tcp_group(localhost(), S).map_err(|e| e.to_string())?;
    let addr = group_addr(group[0].local_addr())?;
    let o = opts(serve::Kind::TcpEcho, per_shard(threads, S), batch);
    let mut shards: Vec<Box<dyn Server>> = Vec::new();
    for l in group {
        shards.push(Box::new(Ringport(serve::TcpEcho::start_on(l, &o)?)));
    }
    Ok(Box::new(Sharded { addr, shards }))
}

/// The RIO TCP echo server (one worker per shard) as a [`Server`].
struct RioTcp(rio_tcp_echo::RioTcpEcho);

impl Server for RioTcp {
    fn addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
    fn stop(self: Box<Self>) -> Result<(), String> {
        self.0.stop().1
    }
}

fn rio_tcp<const S: usize>(_threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    let group = reuseport::tcp_group(localhost(), S).map_err(|e| e.to_string())?;
    let addr = group_addr(group[0].local_addr())?;
    let mut o = rio_tcp_echo::EchoOptions::new();
    o.batch = batch.max(o.batch);
    let mut shards: Vec<Box<dyn Server>> = Vec::new();
    for l in group {
        shards.push(Box::new(RioTcp(rio_tcp_echo::RioTcpEcho::start_on(l, &o)?)));
    }
    Ok(Box::new(Sharded { addr, shards }))
}

fn tokio_udp<const S: usize>(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    super::udp::start_tokio(S * per_shard(threads, S), batch)
}

fn tokio_tcp<const S: usize>(threads: usize, batch: usize) -> Result<Box<dyn Server>, String> {
    super::tcp::start_tokio(S * per_shard(threads, S), batch)
}

/// Per shard count: ringport's port server, its RIO server, tokio.
type Row = (usize, [(&'static str, Start); 3]);

const UDP: [Row; 4] = [
    (
        1,
        [
            ("ringport-1", udp::<1>),
            ("rio-port-1", rio_udp::<1>),
            ("tokio-1", tokio_udp::<1>),
        ],
    ),
    (
        2,
        [
            ("ringport-2", udp::<2>),
            ("rio-port-2", rio_udp::<2>),
            ("tokio-2", tokio_udp::<2>),
        ],
    ),
    (
        4,
        [
            ("ringport-4", udp::<4>),
            ("rio-port-4", rio_udp::<4>),
            ("tokio-4", tokio_udp::<4>),
        ],
    ),
    (
        8,
        [
            ("ringport-8", udp::<8>),
            ("rio-port-8", rio_udp::<8>),
            ("tokio-8", tokio_udp::<8>),
        ],
    ),
];

const TCP: [Row; 4] = [
    (
        1,
        [
            ("ringport-1", tcp::<1>),
            ("rio-port-1", rio_tcp::<1>),
            ("tokio-1", tokio_tcp::<1>),
        ],
    ),
    (
        2,
        [
            ("ringport-2", tcp::<2>),
            ("rio-port-2", rio_tcp::<2>),
            ("tokio-2", tokio_tcp::<2>),
        ],
    ),
    (
        4,
        [
            ("ringport-4", tcp::<4>),
            ("rio-port-4", rio_tcp::<4>),
            ("tokio-4", tokio_tcp::<4>),
        ],
    ),
    (
        8,
        [
            ("ringport-8", tcp::<8>),
            ("rio-port-8", rio_tcp::<8>),
            ("tokio-8", tokio_tcp::<8>),
        ],
    ),
];

/// `bench udp|tcp --shards …`: every shard count's servers, interleaved.
pub(super) fn compare_shards(
    run: &EchoRun,
    proto: Proto,
    counts: &[usize],
    report: &mut Report,
) -> Result<(), String> {
    let (name, table, timeout) = match proto {
        Proto::Udp => ("udp --shards", &UDP, Duration::from_secs(1)),
        Proto::Tcp => ("tcp --shards", &TCP, Duration::from_secs(5)),
    };
    let mut peers = Vec::new();
    for &n in counts {
        let row = table
            .iter()
            .find(|(s, _)| *s == n)
            .ok_or_else(|| format!("--shards: {n} is not one of {COUNTS:?}"))?;
        peers.extend_from_slice(&row.1);
    }
    let plan = run.plan(name, proto, timeout);
    println!(
        "ringport-S: S shards (SO_REUSEPORT), max(1, threads / S) workers each on a port of \
         their own; rio-port-S: S RIO servers (one thread, a completion queue each, port \
         notification); tokio-S: tokio's multi-thread runtime with as many threads as \
         ringport-S in all, on one socket"
    );
    compare(&plan, &peers, report)
}
