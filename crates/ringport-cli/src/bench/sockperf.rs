//! `ringport bench sockperf`: sockperf (a latency tool nobody here wrote)
//! in ping-pong against its own `sockperf server` and against ringport's
//! echo servers speaking its protocol (`serve udp-echo|tcp-echo --protocol
//! sockperf`), in each mode and backend.
//!
//! Every server is a child process, started afresh for each run and stopped
//! after it: `sockperf server`, and this very binary's `serve`. Within a
//! round the servers are interleaved (sockperf server, then each ringport
//! server, then the next protocol and size); the rounds repeat, and each
//! figure is the median of the rounds. sockperf reports one-way latency
//! (half the round trip): its p50, p99 and p99.9, and round trips per
//! second as the received messages over the run time of its measured part
//! (the `[Valid Duration]` line, after its warm-up).
//!
//! `--pin` puts every server on the second CPU this process may use and
//! sockperf's client on the first: the harness moves itself to a CPU before
//! it starts a child, which inherits that CPU, as `taskset -c` would do.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::measure::{allowed_cpus, median, pin};
use crate::report::{Cell, Chart, Report, RunRecord, Table};

/// `ringport bench sockperf`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds of each sockperf run, after its 400 ms warm-up (whole
    /// seconds: sockperf's -t).
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Interleaved rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Message sizes in bytes, comma-separated (sockperf's -m, 14 to 65,000).
    #[arg(long, value_delimiter = ',', default_value = "64,1024")]
    sizes: Vec<usize>,
    /// Protocols, comma-separated: udp, tcp.
    #[arg(long, value_delimiter = ',', default_value = "udp,tcp")]
    protocols: Vec<String>,
    /// Servers, comma-separated: sockperf (its own server, the reference),
    /// port (the completion-port server, one worker), rio-polled, rio-event
    /// and rio-port (the Registered I/O servers; TCP has rio-port only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sockperf,port,rio-polled,rio-event,rio-port"
    )]
    servers: Vec<String>,
    /// ringport's backends, comma-separated: io_uring, epoll (the port's,
    /// and the RIO completion queue's).
    #[arg(long, value_delimiter = ',', default_value = "io_uring,epoll")]
    backends: Vec<ringport::Backend>,
    /// Pin every server to one CPU and sockperf's client to another (the
    /// second and the first CPU this process may use).
    #[arg(long)]
    pin: bool,
}

/// The reference every ringport server's p50 is divided by.
const REFERENCE: &str = "sockperf server";

const MODES: [&str; 4] = ["port", "rio-polled", "rio-event", "rio-port"];

/// One server of a case: sockperf's, or a ringport mode on a backend.
#[derive(Clone)]
struct Server {
    name: String,
    /// None for sockperf server; else `serve` options.
    serve: Option<String>,
    /// The backend is auto: RINGPORT_BACKEND, if set, chooses it.
    auto: bool,
}

/// A protocol and message size, with the servers that speak it.
struct Case {
    tcp: bool,
    size: usize,
    servers: Vec<Server>,
}

impl Case {
    fn name(&self) -> String {
        format!("{}, {} B", if self.tcp { "TCP" } else { "UDP" }, self.size)
    }
}

/// What one sockperf ping-pong reported.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ping {
    p50: f64,
    p99: f64,
    p999: f64,
    round_trips_per_s: f64,
}

/// Runs every case's servers `--rounds` times, interleaved, into `report`:
/// each run's figures, a table per case, and charts of ringport's p50 and
/// round trips over sockperf server's. Without sockperf it says so and
/// measures nothing.
pub fn run(mut args: Args, quick: bool, report: &mut Report) -> Result<(), String> {
    if quick {
        args.seconds = 1;
        args.rounds = 1;
        args.sizes = vec![64];
        // What the process runs on: RINGPORT_BACKEND, else io_uring where
        // it works.
        args.backends = vec![ringport::Backend::Auto];
        args.servers.retain(|s| s == "sockperf" || s == "port");
    }
    let cases = plan(&args)?;
    let Some(version) = sockperf_version() else {
        report.say(
            "skipped: sockperf is not installed (apt-get install sockperf), so nothing was measured",
        );
        return Ok(());
    };
    let cpus = allowed_cpus();
    let placement = match cpus[..] {
        [client, server, ..] if args.pin => Some((server, client)),
        _ if args.pin => return Err("--pin needs two CPUs this process may run on".into()),
        _ => None,
    };
    report.say(format!(
        "ringport bench sockperf: sockperf {version} ping-pong, one connection, one message in \
         flight, {} s per run after its 400 ms warm-up, {} rounds interleaved, median reported",
        args.seconds, args.rounds
    ));
    report.say(
        "latency is one-way, as sockperf reports it (half the round trip); round trips/s = \
         ReceivedMessages / RunTime of its [Valid Duration] line; the port mode runs one worker \
         thread, as sockperf server runs one"
            .to_string(),
    );
    report.say(match placement {
        Some((server, client)) => format!(
            "every server pinned to CPU {server}, sockperf's client to CPU {client}; each server \
             a child process started afresh for each run"
        ),
        None => "nothing pinned; each server a child process started afresh for each run".into(),
    });
    let result = rounds(&args, &cases, placement, report);
    if placement.is_some() {
        pin(&cpus);
    }
    result?;
    tables(&args, &cases, report);
    Ok(())
}

/// The cases and their servers, from the options; an error names a bad one.
fn plan(args: &Args) -> Result<Vec<Case>, String> {
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if args.seconds == 0 {
        return Err("--seconds must be at least 1".into());
    }
    for &s in &args.sizes {
        if !(14..=65_000).contains(&s) {
            return Err(format!("--sizes: {s} is not 14 to 65,000 bytes"));
        }
    }
    for s in &args.servers {
        if s != "sockperf" && !MODES.contains(&s.as_str()) {
            return Err(format!(
                "--servers: unknown server {s:?} (known: sockperf, {})",
                MODES.join(", ")
            ));
        }
    }
    if args.servers.is_empty() || args.sizes.is_empty() || args.backends.is_empty() {
        return Err("--servers, --sizes and --backends each need at least one".into());
    }
    let mut cases = Vec::new();
    for p in &args.protocols {
        let tcp = match p.as_str() {
            "udp" => false,
            "tcp" => true,
            _ => return Err(format!("--protocols: {p:?} is neither udp nor tcp")),
        };
        for &size in &args.sizes {
            let mut servers = Vec::new();
            if args.servers.iter().any(|s| s == "sockperf") {
                servers.push(Server {
                    name: REFERENCE.into(),
                    serve: None,
                    auto: false,
                });
            }
            for b in &args.backends {
                for mode in MODES
                    .iter()
                    .filter(|m| args.servers.iter().any(|s| s == *m))
                {
                    let kind = if tcp { "tcp-echo" } else { "udp-echo" };
                    let how = match *mode {
                        "port" => "--threads 1 --concurrency 1".to_string(),
                        _ if tcp && *mode != "rio-port" => continue,
                        m => format!("--mode {m}"),
                    };
                    servers.push(Server {
                        name: format!("ringport {mode} ({b})"),
                        serve: Some(format!(
                            "serve {kind} --addr 127.0.0.1:0 --protocol sockperf --backend {b} {how}"
                        )),
                        auto: *b == ringport::Backend::Auto,
                    });
                }
            }
            cases.push(Case { tcp, size, servers });
        }
    }
    if cases.is_empty() {
        return Err("--protocols: name udp, tcp or both".into());
    }
    Ok(cases)
}

/// `sockperf --version`'s version, or None where it does not run.
fn sockperf_version() -> Option<String> {
    let out = Command::new("sockperf")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split("version")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("(version unknown)");
    Some(version.trim_start_matches([',', ' ']).to_string())
}

/// Every round of every case and server, kept in `report`'s runs.
fn rounds(
    args: &Args,
    cases: &[Case],
    placement: Option<(usize, usize)>,
    report: &mut Report,
) -> Result<(), String> {
    for round in 1..=args.rounds {
        for case in cases {
            for server in &case.servers {
                let ping = measure(args, case, server, placement)
                    .map_err(|e| format!("{}, {}: {e}", case.name(), server.name))?;
                eprintln!(
                    "  round {round}: {:<10} {:<28} p50 {:>8.3} µs  p99 {:>9.3} µs  {:>7.0} round trips/s",
                    case.name(),
                    server.name,
                    ping.p50,
                    ping.p99,
                    ping.round_trips_per_s
                );
                report.run(
                    RunRecord::new("ping-pong", &case.name(), round, &server.name)
                        .with("p50_us", ping.p50)
                        .with("p99_us", ping.p99)
                        .with("p999_us", ping.p999)
                        .with("round_trips_per_s", ping.round_trips_per_s),
                );
            }
        }
    }
    Ok(())
}

/// A child process, killed and reaped when dropped if still running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Running {
    /// Asks it to stop (SIGTERM, as Ctrl-C would) and waits up to 5 s; an
    /// error if it failed or would not stop (sockperf server ends by the
    /// signal itself: that is a clean end too).
    fn stop(mut self) -> Result<(), String> {
        use std::os::unix::process::ExitStatusExt;
        // SAFETY: kill takes a process id and a signal number; the child is
        // not reaped yet, so the id is still its own.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) if status.success() || status.signal() == Some(libc::SIGTERM) => {
                    return Ok(())
                }
                Ok(Some(status)) => return Err(format!("the server ended with {status}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => return Err("the server did not stop within 5 s of SIGTERM".into()),
                Err(e) => return Err(format!("waiting for the server: {e}")),
            }
        }
    }
}

/// One sockperf ping-pong against a fresh `server`.
fn measure(
    args: &Args,
    case: &Case,
    server: &Server,
    placement: Option<(usize, usize)>,
) -> Result<Ping, String> {
    if let Some((cpu, _)) = placement {
        pin(&[cpu]);
    }
    let started = start(case, server);
    if let Some((_, cpu)) = placement {
        pin(&[cpu]);
    }
    let (child, port) = started?;
    let mut cmd = Command::new("sockperf");
    cmd.args(["ping-pong", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-t")
        .arg(args.seconds.to_string())
        .arg("-m")
        .arg(case.size.to_string());
    if case.tcp {
        cmd.arg("--tcp");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running sockperf ping-pong: {e}"))?;
    let stopped = child.stop();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ping = parse(&text).ok_or_else(|| {
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        format!(
            "sockperf ping-pong reported no latency (exit {}; last line: {})",
            out.status,
            last.unwrap_or("none")
        )
    })?;
    stopped?;
    Ok(ping)
}

/// Starts `server` for `case`, and the port it listens on.
fn start(case: &Case, server: &Server) -> Result<(Running, u16), String> {
    match &server.serve {
        None => start_sockperf(case.tcp),
        Some(serve) => start_ringport(serve, server.auto),
    }
}

/// `sockperf server` on a free port: one this process found free a moment
/// before, so a race with another program can lose it (then the wait for
/// it to listen times out and says so).
fn start_sockperf(tcp: bool) -> Result<(Running, u16), String> {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let mut cmd = Command::new("sockperf");
    cmd.args(["server", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string());
    if tcp {
        cmd.arg("--tcp");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting sockperf server: {e}"))?;
    let child = Running(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listening(port, tcp) {
        if Instant::now() >= deadline {
            return Err(format!(
                "sockperf server was not listening on 127.0.0.1:{port} within 5 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A UDP bind comes a moment before the receive loop: let it start.
    std::thread::sleep(Duration::from_millis(50));
    Ok((child, port))
}

/// Whether a socket is bound to `port` (TCP: listening), as the kernel's
/// tables say: a look that cannot take the port from the server, as a
/// probing bind or connection could.
fn listening(port: u16, tcp: bool) -> bool {
    let table = if tcp {
        "/proc/net/tcp"
    } else {
        "/proc/net/udp"
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let local = format!(":{port:04X}");
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl, local_address, rem_address, st: 0A is TCP's LISTEN.
        f.len() > 3 && f[1].ends_with(&local) && (!tcp || f[3] == "0A")
    })
}

/// This binary's `serve …` (a safety `--duration` besides), and the port it
/// prints it listens on.
fn start_ringport(serve: &str, auto: bool) -> Result<(Running, u16), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(serve.split_whitespace())
        .args(["--duration", "10m"]);
    if !auto {
        // RINGPORT_BACKEND (the bench's own --backend) would override the
        // server's.
        cmd.env_remove("RINGPORT_BACKEND");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Running(cmd.spawn().map_err(|e| format!("starting {serve}: {e}"))?);
    let stdout = child.0.stdout.take().ok_or("no stdout of the server")?;
    let (tx, rx) = mpsc::channel();
    // Reads every line until the server ends, so that it never blocks on a
    // full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if let Some(addr) = addr {
            return Ok((child, addr.port()));
        }
    }
    Err(format!("{serve}: printed no address within 10 s"))
}

/// The number after `key` in sockperf's output, up to the next space or
/// `;` (it colours some lines, so only the text after the key is read).
fn after(text: &str, key: &str) -> Option<f64> {
    let rest = text.split(key).nth(1)?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// sockperf ping-pong's summary, or None when it has none (it exits 0 even
/// when no reply came back).
fn parse(text: &str) -> Option<Ping> {
    let valid = text.split("[Valid Duration]").nth(1)?;
    let run_time = after(valid, "RunTime=")?;
    let received = after(valid, "ReceivedMessages=")?;
    text.contains("Summary: Latency is").then_some(())?;
    let ping = Ping {
        p50: after(text, "percentile 50.000 =")?,
        p99: after(text, "percentile 99.000 =")?,
        p999: after(text, "percentile 99.900 =")?,
        round_trips_per_s: received / run_time,
    };
    (run_time > 0.0 && received > 0.0).then_some(ping)
}

/// A table per case: each server's medians and its p50 over sockperf
/// server's; and the charts of ringport's p50 over sockperf server's.
fn tables(args: &Args, cases: &[Case], report: &mut Report) {
    let mut ours = Vec::new();
    for case in cases {
        let name = case.name();
        let of = |server: &str, figure: &str| -> Vec<f64> {
            crate::report::rounds_of(&report.runs, "ping-pong", &name, server, figure)
                .into_values()
                .collect()
        };
        let reference = median(of(REFERENCE, "p50_us"));
        let mut t = Table::new(
            format!("{name}: median of {} interleaved rounds", args.rounds),
            &[
                "server",
                "p50 µs",
                "p50 min–max",
                "p50 ÷ sockperf server",
                "p99 µs",
                "p99.9 µs",
                "round trips/s",
            ],
        );
        for s in &case.servers {
            let p50 = of(&s.name, "p50_us");
            t.row(vec![
                Cell::text(&s.name),
                Cell::num(median(p50.clone()), 2),
                Cell::range(&p50, 1),
                Cell::ratio(median(p50) / reference),
                Cell::num(median(of(&s.name, "p99_us")), 1),
                Cell::num(median(of(&s.name, "p999_us")), 0),
                Cell::num(median(of(&s.name, "round_trips_per_s")), 0),
            ]);
            if s.serve.is_some() && !ours.contains(&s.name) {
                ours.push(s.name.clone());
            }
        }
        report.table(t);
    }
    let names: Vec<String> = cases.iter().map(Case::name).collect();
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    report.chart(Chart::new(
        "p50 one-way latency: ringport over sockperf server (lower is better)",
        "ping-pong",
        "p50_us",
        false,
        &names,
        &ours,
        &[REFERENCE],
    ));
    report.chart(Chart::new(
        "Round trips per second: ringport over sockperf server",
        "ping-pong",
        "round_trips_per_s",
        true,
        &names,
        &ours,
        &[REFERENCE],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; \
        SentMessages=45865; ReceivedMessages=45864\n\
        sockperf: ========= Printing statistics for Server No: 0\n\
        sockperf: [Valid Duration] RunTime=0.552 sec; SentMessages=29257; ReceivedMessages=29256\n\
        sockperf: \x1b[2;35m====> avg-latency=9.418 (std-dev=56.921)\x1b[0m\n\
        sockperf: Summary: Latency is 9.418 usec\n\
        sockperf: ---> percentile 99.900 =  979.038\n\
        sockperf: ---> percentile 99.000 =   10.475\n\
        sockperf: ---> percentile 90.000 =    7.290\n\
        sockperf: ---> percentile 50.000 =    6.003\n";

    #[test]
    fn reads_sockperf_summary_and_refuses_silence() {
        let p = parse(OUTPUT).expect("parsed");
        assert_eq!((p.p50, p.p99, p.p999), (6.003, 10.475, 979.038));
        assert!((p.round_trips_per_s - 29256.0 / 0.552).abs() < 1e-6);
        let silent = "sockperf: Test end (interrupted by timer)\n\
                      sockperf: No messages were received from the server. Is the server down?\n";
        assert_eq!(parse(silent), None);
    }

    fn args(line: &str) -> Args {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        Cli::try_parse_from(std::iter::once("x").chain(line.split_whitespace()))
            .expect("parsed")
            .a
    }

    #[test]
    fn a_bound_port_is_seen_listening() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        assert!(listening(port, false));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening(tcp.local_addr().unwrap().port(), true));
        drop(udp);
        assert!(!listening(port, false));
    }

    #[test]
    fn tcp_cases_leave_out_the_udp_only_rio_modes() {
        let cases = plan(&args("--backends io_uring")).unwrap();
        let names: Vec<String> = cases.iter().map(Case::name).collect();
        assert_eq!(
            names,
            ["UDP, 64 B", "UDP, 1024 B", "TCP, 64 B", "TCP, 1024 B"]
        );
        assert_eq!(cases[0].servers.len(), 5);
        let tcp: Vec<&str> = cases[2].servers.iter().map(|s| &*s.name).collect();
        assert_eq!(
            tcp,
            [
                REFERENCE,
                "ringport port (io_uring)",
                "ringport rio-port (io_uring)"
            ]
        );
        for bad in [
            "--servers nginx",
            "--protocols sctp",
            "--sizes 8",
            "--rounds 0",
        ] {
            assert!(plan(&args(bad)).is_err(), "{bad}");
        }
    }
}
