//! End-to-end tests of the RIO UDP servers (`serve udp-sink`), the GSO
//! generator (`load udp-blast`) and `bench rio`: every mode takes a blast
//! and ends on its end marker with a count that adds up, bad arguments are
//! refused with a message, and the benchmark runs. Every child process is
//! bounded in time and killed when its test ends, pass or fail.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

mod common;
use common::{ringport, ringport_with, text, wait, Guard, Reader};

/// Runs `ringport ARGS` to the end, killing it after `limit`.
fn run(a: &str, limit: Duration) -> std::process::Output {
    common::run(ringport_with(a), limit)
}

/// A running `serve udp-sink`: the process, its address, and its output.
struct Sink {
    child: Guard,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    err: Reader,
}

/// Starts `serve udp-sink --mode MODE` on port 0; None (with a note) when
/// the sink cannot run here (io_uring switched off).
fn sink(mode: &str, extra: &str) -> Option<Sink> {
    let mut cmd = ringport();
    cmd.args(
        format!(
            "serve udp-sink --addr 127.0.0.1:0 --mode {mode} --threads 2 --duration 20 {extra}"
        )
        .split_whitespace(),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawning ringport serve udp-sink"));
    let mut stderr = child.0.stderr.take().expect("stderr");
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let rx = common::stdout_lines(&mut child);
    let first = rx.recv_timeout(Duration::from_secs(10));
    let Ok(first) = first else {
        let _ = wait(&mut child, Duration::from_secs(10));
        let e = text(&err.join().unwrap_or_default());
        if e.contains("io_uring") {
            eprintln!("skipped {mode}: {e}");
            return None;
        }
        panic!("udp-sink printed no address; stderr: {e}");
    };
    let addr = common::listening_on(&first)
        .unwrap_or_else(|| panic!("the first line is not the address: {first:?}"));
    Some(Sink {
        child,
        addr,
        lines: rx,
        err,
    })
}

impl Sink {
    /// Waits for the sink to exit; returns its status and every line.
    fn finish(mut self, limit: Duration) -> (bool, Vec<String>, String) {
        let status = wait(&mut self.child, limit);
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(l);
        }
        (
            status.success(),
            lines,
            text(&self.err.join().unwrap_or_default()),
        )
    }
}

/// The number after `prefix` in the first line that starts with it.
fn number(lines: &[String], prefix: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:#?}"))
}

fn blast_into(mode: &str) {
    const COUNT: u64 = 2000;
    let Some(s) = sink(mode, "") else { return };
    let out = run(
        &format!("load udp-blast --addr {} --count {COUNT}", s.addr),
        Duration::from_secs(20),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let sent_line: Vec<String> = stdout.lines().map(String::from).collect();
    assert_eq!(number(&sent_line, "sent "), COUNT, "{stdout}");
    let (ok, lines, err) = s.finish(Duration::from_secs(20));
    assert!(ok, "udp-sink failed: {err}\n{lines:#?}");
    let all = lines.join("\n");
    assert!(all.contains("ended (end marker)"), "{all}");
    let received = number(&lines, "received ");
    let reported = number(&lines, "sender reported ");
    let lost = lines
        .iter()
        .find_map(|l| l.split("lost ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no loss in {all}"));
    assert_eq!(reported, COUNT, "{all}");
    assert_eq!(received + lost, COUNT, "{all}");
    assert!(
        received >= COUNT / 10,
        "only {received} of {COUNT} received\n{all}"
    );
    for want in ["datagrams/s", "system calls", "batches (min", "cpu:"] {
        assert!(all.contains(want), "no {want:?} in\n{all}");
    }
}

#[test]
fn port_mode_counts_a_blast() {
    blast_into("port");
}

#[test]
fn rio_polled_counts_a_blast() {
    blast_into("rio-polled");
}

#[test]
fn rio_event_counts_a_blast() {
    blast_into("rio-event");
}

#[test]
fn rio_event_polled_counts_a_blast() {
    blast_into("rio-event-polled");
}

#[test]
fn rio_port_counts_a_blast() {
    blast_into("rio-port");
}

#[test]
fn rio_port_mt_counts_a_blast() {
    blast_into("rio-port-mt");
}

/// A datagram longer than the receive buffer is not one of the test size:
/// it ends the run, counted as truncated, never as a datagram.
fn a_longer_datagram_ends_the_run(mode: &str) {
    let Some(s) = sink(mode, "--size 64") else {
        return;
    };
    let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..3 {
        c.send_to(&[1u8; 64], s.addr).expect("send");
    }
    c.send_to(&[2u8; 65], s.addr).expect("send");
    let (ok, lines, err) = s.finish(Duration::from_secs(20));
    assert!(ok, "{mode}: {err}\n{lines:#?}");
    let all = lines.join("\n");
    assert!(all.contains("ended (end marker)"), "{mode}: {all}");
    assert!(
        all.contains("truncated (longer than the receive buffer, taken as the end): 1"),
        "{mode}: {all}"
    );
    assert!(number(&lines, "received ") <= 3, "{mode}: {all}");
}

#[test]
fn rio_polled_takes_a_longer_datagram_as_the_end() {
    a_longer_datagram_ends_the_run("rio-polled");
}

#[test]
fn port_mode_takes_a_longer_datagram_as_the_end() {
    a_longer_datagram_ends_the_run("port");
}

#[test]
fn a_sink_without_traffic_stops_at_its_duration() {
    let out = run(
        "serve udp-sink --addr 127.0.0.1:0 --mode rio-event --duration 0.3",
        Duration::from_secs(20),
    );
    let stdout = text(&out.stdout);
    if !out.status.success() && text(&out.stderr).contains("io_uring") {
        eprintln!("skipped: {}", text(&out.stderr));
        return;
    }
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("listening on 127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("received 0 datagrams"), "{stdout}");
    assert!(
        stdout.contains("system calls: not counted (--count-syscalls counts them)"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_fail_with_a_message() {
    for (a, want) in [
        ("serve udp-sink --addr 127.0.0.1:0 --size 0", "--size"),
        ("serve udp-sink --addr 127.0.0.1:0 --size 70000", "--size"),
        ("serve udp-sink --addr 127.0.0.1:0 --mode nope", "nope"),
        ("serve udp-sink --addr 127.0.0.1:0 --batch 0", "--batch"),
        ("serve udp-sink --addr 127.0.0.1:0 --pending 0", "--pending"),
        ("serve udp-sink --addr 127.0.0.1:0 --threads 0", "--threads"),
        (
            "serve tcp-echo --addr 127.0.0.1:0 --mode rio-polled",
            "--mode",
        ),
        (
            "load udp-blast --addr 127.0.0.1:9 --size 0 --count 1",
            "--size",
        ),
        ("load udp-blast --addr 127.0.0.1:9 --count 0", "--count"),
        ("load udp-blast --addr nowhere --count 1", "--addr"),
        ("bench rio --rounds 0", "--rounds"),
        ("bench rio --servers nope", "nope"),
    ] {
        let out = run(a, Duration::from_secs(20));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{a}: succeeded");
        assert!(err.contains(want), "{a}: no {want:?} in {err:?}");
        assert!(!err.contains("panicked"), "{a}: {err}");
    }
}

#[test]
fn bench_rio_smoke() {
    let out = run(
        "bench rio --seconds 0.3 --rounds 1",
        Duration::from_secs(180),
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    if !out.status.success() && stderr.contains("io_uring") {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}{stderr}");
    for want in [
        "| port |",
        "| rio-polled |",
        "| rio-event |",
        "| rio-event-polled |",
        "| rio-port |",
        "| rio-port-mt |",
        "| tokio |",
        "| mio |",
        "| recvmmsg |",
        "÷ port",
        "÷ tokio",
        "target 1",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}");
    }
}

#[test]
fn bench_rio_pin_reports_all_server_threads_and_recvmmsg_ratios() {
    let out = run(
        "bench rio --pin --seconds 0.3 --rounds 1 --servers port,rio-port,recvmmsg",
        Duration::from_secs(60),
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    if !out.status.success() && (stderr.contains("io_uring") || stderr.contains("two CPUs")) {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}{stderr}");
    for want in [
        "checked to be on it",
        "1 thread(s)",
        "all server threads CPU µs/datagram",
        "÷ recvmmsg",
        "| rio-port |",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}");
    }
}
