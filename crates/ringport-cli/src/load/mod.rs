//! `ringport load tcp|udp`: a ping-pong load generator for echo servers.
//!
//! Each of `--connections` connections (for UDP: a socket `connect`ed to the
//! server) keeps exactly one message in flight: it sends `--size` bytes,
//! waits for the same bytes to come back (every byte is checked), records the
//! round trip in an [`hdrhistogram`] and sends the next. The connections are
//! spread over `--threads` client threads, each an epoll loop (mio) over its
//! share, so the generator stays light next to the server it measures.
//!
//! It runs for `--duration` or until `--count` messages have made the round
//! trip (whichever comes first), then prints messages/s and the round-trip
//! latency p50/p99/p99.9. A progress line goes to stderr when stderr is a
//! terminal. The benchmarks (`ringport bench tcp|udp`) drive every server with
//! this same code ([`run_load`]).
//!
//! UDP may lose datagrams: a message with no reply after `--timeout` counts as
//! lost and is replaced by a new one, unless the socket never had a reply at
//! all, which means nobody is answering: that is an error. A TCP connection
//! with no echo after `--timeout` is an error.

mod client;

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::args::{parse_duration, resolve, MAX_UDP};
use crate::measure::{self, gettid, histogram, ThreadCpu};
use client::{client_thread, Endpoint};

/// The largest TCP message this generator sends.
const MAX_TCP: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// TCP echo: one stream per connection.
    Tcp,
    /// UDP echo: one connected socket per "connection".
    Udp,
}

/// What `ringport load` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// TCP echo: one stream per connection.
    Tcp,
    /// UDP echo: one connected socket per "connection".
    Udp,
    /// A UDP sink (serve udp-sink): datagrams as fast as GSO sends them,
    /// then the end marker.
    UdpBlast,
}

#[derive(clap::Args)]
pub struct Args {
    /// tcp, udp or udp-blast.
    #[arg(value_enum)]
    proto: Target,
    /// The echo server's address.
    #[arg(long)]
    addr: String,
    /// Connections (sockets, for UDP), each with one message in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Bytes per message [default: 64; udp-blast: 1024].
    #[arg(long)]
    size: Option<usize>,
    /// How long to run (e.g. 10, 10s, 500ms, 2m) [default: 5s unless --count].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many round trips in total.
    #[arg(long)]
    count: Option<u64>,
    /// Client threads the connections are spread over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How long to wait for a connection or an echo before giving up.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
    /// Time at the start not counted in the figures.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// udp-blast: send with sendmmsg instead of UDP GSO.
    #[arg(long)]
    sendmmsg: bool,
    /// udp-blast: flows (sender sockets, each on a thread of its own), so
    /// that a sharded sink (serve --shards) is fed on several 4-tuples.
    #[arg(long, default_value_t = 1)]
    flows: usize,
}

/// What to run; [`run_load`] takes it from the command line or a benchmark.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub connections: usize,
    pub size: usize,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub threads: usize,
    pub timeout: Duration,
    pub warmup: Duration,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// The CPU the client threads are pinned to.
    pub pin: Option<usize>,
}

impl LoadConfig {
    /// Checks the figures; every refusal names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.connections > 60_000 {
            return Err("--connections above 60,000 would run out of local ports".into());
        }
        if self.size == 0 {
            return Err("--size must be at least 1 byte".into());
        }
        match self.proto {
            Proto::Udp if self.size > MAX_UDP => {
                return Err(format!(
                    "--size {} is larger than the largest UDP datagram ({MAX_UDP} bytes)",
                    self.size
                ))
            }
            Proto::Tcp if self.size > MAX_TCP => {
                return Err(format!("--size above {MAX_TCP} bytes is not supported"))
            }
            _ => {}
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// What a run measured (after the warm-up).
pub struct LoadReport {
    /// Round trips completed.
    pub messages: u64,
    pub elapsed: Duration,
    /// Round trips in nanoseconds.
    pub latency: Histogram<u64>,
    /// UDP messages that got no reply in time.
    pub lost: u64,
    /// CPU time of the client threads while measuring.
    pub client_cpu: Duration,
    /// CPU time, while measuring, of every thread of the process that is
    /// neither the generator's nor the one that called [`run_load`]: the
    /// server's own threads when it runs in this process.
    pub server_cpu: Duration,
    /// Those threads' ids (read at the end of the run).
    pub server_threads: Vec<i32>,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e3
    }
}

pub fn run(args: Args) -> Result<(), String> {
    let addr = resolve(&args.addr)?;
    let duration = match (args.duration, args.count) {
        (None, None) => Some(Duration::from_secs(5)),
        (d, _) => d,
    };
    let proto = match args.proto {
        Target::Tcp => Proto::Tcp,
        Target::Udp => Proto::Udp,
        Target::UdpBlast => {
            return crate::blast::run(
                crate::blast::BlastConfig {
                    addr,
                    size: args.size.unwrap_or(1024),
                    duration,
                    count: args.count,
                    gso: !args.sendmmsg,
                    pin: None,
                },
                args.flows,
            )
        }
    };
    let cfg = LoadConfig {
        proto,
        addr,
        connections: args.connections,
        size: args.size.unwrap_or(64),
        duration,
        count: args.count,
        threads: args.threads.min(args.connections.max(1)),
        timeout: args.timeout,
        warmup: if args.count.is_some() {
            Duration::ZERO
        } else {
            args.warmup
        },
        progress: io::stderr().is_terminal(),
        pin: None,
    };
    cfg.validate()?;
    let r = run_load(&cfg)?;
    let proto = match cfg.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    println!(
        "load {proto} {addr}: {} connections, {} bytes, {} client threads",
        cfg.connections, cfg.size, cfg.threads
    );
    println!(
        "{} round trips in {:.3} s: {:.0} messages/s",
        r.messages,
        r.elapsed.as_secs_f64(),
        r.rate()
    );
    println!(
        "round trip µs: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        r.quantile_us(0.5),
        r.quantile_us(0.99),
        r.quantile_us(0.999),
        r.latency.max() as f64 / 1e3
    );
    if cfg.proto == Proto::Udp {
        println!("lost (no reply within {:?}): {}", cfg.timeout, r.lost);
    }
    if r.messages == 0 {
        return Err("no round trip completed".into());
    }
    Ok(())
}

/// State shared by the client threads.
struct Shared {
    /// Round trips so far, for the progress line (updated in batches).
    done: AtomicU64,
    /// Set when a thread failed, so the others stop.
    abort: AtomicBool,
    /// The generator's threads, left out of the server's CPU time.
    tids: Mutex<Vec<i32>>,
}

/// Runs the load and returns what it measured. Connection failures,
/// timeouts and wrong echoes are errors with a message.
pub fn run_load(cfg: &LoadConfig) -> Result<LoadReport, String> {
    cfg.validate()?;
    let threads = cfg.threads.min(cfg.connections);
    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        tids: Mutex::new(vec![gettid()]),
    });
    // Each connection's share of --count.
    let quota = |i: usize| -> u64 {
        match cfg.count {
            None => u64::MAX,
            Some(n) => {
                let c = cfg.connections as u64;
                n / c + u64::from((i as u64) < n % c)
            }
        }
    };

    // Connect everything first, so that the clock measures traffic only.
    let mut per_thread: Vec<Vec<Endpoint>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.connections {
        let ep = Endpoint::connect(cfg, i)?;
        per_thread[i % threads].push(ep);
    }
    let quotas: Vec<Vec<u64>> = (0..threads)
        .map(|t| (t..cfg.connections).step_by(threads).map(quota).collect())
        .collect();

    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let deadline = cfg.duration.map(|d| measure_from + d);
    let progress = cfg.progress.then(|| {
        let shared = shared.clone();
        let total = cfg.count;
        thread::spawn(move || {
            shared.add_tid();
            progress_line(&shared, start, deadline, total)
        })
    });

    let mut handles = Vec::with_capacity(threads);
    for (t, (eps, q)) in per_thread.into_iter().zip(quotas).enumerate() {
        let sh = shared.clone();
        let cfg = cfg.clone();
        let spawned = thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                sh.add_tid();
                if let Some(cpu) = cfg.pin {
                    measure::pin(&[cpu]);
                }
                let r = client_thread(&cfg, eps, q, &sh, measure_from, deadline);
                if r.is_err() {
                    sh.abort.store(true, Ordering::Relaxed);
                }
                r
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.abort.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(format!("starting a client thread: {e}"));
            }
        }
    }

    // The server's threads' CPU time from the end of the warm-up.
    thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let threads_from = ThreadCpu::now();

    let mut first_err = None;
    let mut client_cpu = Duration::ZERO;
    let mut messages = 0;
    let mut lost = 0;
    let mut latency = histogram();
    let mut ended = measure_from;
    let mut open = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(mut t)) => {
                open.append(&mut t.open);
                messages += t.messages;
                lost += t.lost;
                ended = ended.max(t.ended);
                client_cpu += t.cpu;
                let _ = latency.add(&t.latency);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert_with(|| "a client thread panicked".to_string());
            }
        }
    }
    let (server_cpu, server_threads) = {
        let ours = shared.tids.lock().unwrap_or_else(PoisonError::into_inner);
        threads_from.since(&ours)
    };
    drop(open);
    shared.abort.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(LoadReport {
        messages,
        elapsed: ended.saturating_duration_since(measure_from),
        latency,
        lost,
        client_cpu,
        server_cpu,
        server_threads,
    })
}

impl Shared {
    fn add_tid(&self) {
        self.tids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(gettid());
    }
}

fn progress_line(shared: &Shared, start: Instant, deadline: Option<Instant>, total: Option<u64>) {
    let mut last = (start, 0u64);
    let mut err = io::stderr();
    while !shared.abort.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(250));
        let now = Instant::now();
        let done = shared.done.load(Ordering::Relaxed);
        if now.duration_since(last.0) < Duration::from_millis(500) {
            continue;
        }
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, done);
        let frac = match (total, deadline) {
            (Some(n), _) => done as f64 / n as f64,
            (None, Some(d)) => {
                let all = d.duration_since(start).as_secs_f64();
                now.duration_since(start).as_secs_f64() / all.max(1e-9)
            }
            (None, None) => 0.0,
        }
        .clamp(0.0, 1.0);
        let filled = (frac * 30.0).round() as usize;
        let _ = write!(
            err,
            "\r[{}{}] {:>3.0}%  {:>10} round trips  {:>10.0}/s",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0,
            done,
            rate
        );
        let _ = err.flush();
    }
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(proto: Proto, connections: usize, size: usize) -> LoadConfig {
        LoadConfig {
            proto,
            addr: "127.0.0.1:9".parse().unwrap(),
            connections,
            size,
            duration: Some(Duration::from_secs(1)),
            count: None,
            threads: 1,
            timeout: Duration::from_secs(1),
            warmup: Duration::ZERO,
            progress: false,
            pin: None,
        }
    }

    #[test]
    fn bad_arguments_are_refused_with_the_option_named() {
        assert!(cfg(Proto::Tcp, 0, 64)
            .validate()
            .unwrap_err()
            .contains("--connections"));
        assert!(cfg(Proto::Tcp, 1, 0)
            .validate()
            .unwrap_err()
            .contains("--size"));
        assert!(cfg(Proto::Udp, 1, 65_508)
            .validate()
            .unwrap_err()
            .contains("UDP"));
        assert!(cfg(Proto::Udp, 1, 65_507).validate().is_ok());
        assert!(cfg(Proto::Tcp, 1, 65_508).validate().is_ok());
    }
}
