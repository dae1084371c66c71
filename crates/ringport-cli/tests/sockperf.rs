//! sockperf, a client nobody here wrote, against `serve udp-echo` and
//! `serve tcp-echo --protocol sockperf` in each mode, for a second each.
//!
//! sockperf exits 0 even when no reply came back, so the test reads its
//! output: a received-message count above 0 and the latency summary. Where
//! sockperf is not installed (`apt-get install sockperf`; CI installs it)
//! each test says so and passes.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{have_sockperf, listening_on, ringport, run, stdout_lines, text, Guard};

/// `ringport serve KIND --protocol sockperf EXTRA` on port 0, and its address.
fn serve(kind: &str, extra: &str) -> (Guard, SocketAddr) {
    let mut cmd = ringport();
    cmd.args(
        format!("serve {kind} --addr 127.0.0.1:0 --duration 30 --protocol sockperf {extra}")
            .split_whitespace(),
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Guard(cmd.spawn().expect("spawning ringport serve"));
    let lines = stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(addr) = listening_on(&line) {
            return (child, addr);
        }
    }
    panic!("ringport serve {kind} {extra} printed no address");
}

/// What a sockperf run reports.
#[derive(Debug)]
struct Report {
    received: u64,
    p50_us: f64,
}

/// Reads sockperf's summary: `ReceivedMessages=N` and the 50th percentile
/// (it colours some lines, so only the text after the markers is read).
fn parse(out: &str) -> Option<Report> {
    let received = out
        .split("ReceivedMessages=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    out.contains("Summary: Latency is").then_some(())?;
    let p50 = out.split("percentile 50.000 =").nth(1)?;
    let p50_us = p50.split_whitespace().next()?.parse().ok()?;
    Some(Report { received, p50_us })
}

fn ping_pong(kind: &str, extra: &str, tcp: bool) {
    if !have_sockperf() {
        return;
    }
    let (_server, addr) = serve(kind, extra);
    let mut cmd = Command::new("sockperf");
    cmd.args(["ping-pong", "-i", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .args(["-t", "1", "-m", "64"]);
    if tcp {
        cmd.arg("--tcp");
    }
    let out = run(cmd, Duration::from_secs(30));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "sockperf failed:\n{all}");
    let report = parse(&all).unwrap_or_else(|| {
        panic!("no round-trip summary from sockperf against {kind} {extra}:\n{all}")
    });
    assert!(
        report.received > 0 && report.p50_us > 0.0,
        "no reply reached sockperf from {kind} {extra}: {report:?}\n{all}"
    );
    eprintln!(
        "{kind} {extra}: {} replies, p50 {} µs",
        report.received, report.p50_us
    );
}

#[test]
fn udp_echo_port_mode() {
    ping_pong("udp-echo", "--threads 2", false);
}

#[test]
fn udp_echo_rio_polled() {
    ping_pong("udp-echo", "--mode rio-polled", false);
}

#[test]
fn udp_echo_rio_event() {
    ping_pong("udp-echo", "--mode rio-event", false);
}

#[test]
fn udp_echo_rio_port() {
    ping_pong("udp-echo", "--mode rio-port", false);
}

#[test]
fn tcp_echo_port_mode() {
    ping_pong("tcp-echo", "--threads 2", true);
}

#[test]
fn tcp_echo_rio_port() {
    ping_pong("tcp-echo", "--mode rio-port", true);
}

#[test]
fn the_summary_parser_reads_sockperf_and_refuses_silence() {
    let good = "sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; \
                SentMessages=37319; ReceivedMessages=37318\n\
                sockperf: Summary: Latency is 10.062 usec\n\
                sockperf: \x1b[2;35mTotal 25948 observations\x1b[0m; each percentile contains \
                259.48 observations\n\
                sockperf: ---> percentile 50.000 =    7.486\n";
    let r = parse(good).expect("parsed");
    assert_eq!((r.received, r.p50_us), (37318, 7.486));
    // What sockperf prints when nothing answers (and still exits 0).
    let silent = "sockperf: Test end (interrupted by timer)\nsockperf: Test ended\n\
                  sockperf: No messages were received from the server. Is the server down?\n";
    assert!(parse(silent).is_none());
}

/// A sockperf message as its client sends it: `flags` 3 asks for a reply.
fn message(seq: u64, flags: u16, len: usize) -> Vec<u8> {
    let mut m = vec![seq as u8; len];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m[8..10].copy_from_slice(&flags.to_be_bytes());
    m[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    m
}

/// Messages written a few bytes at a time (several per read, or a read
/// ending mid-header or mid-message) come back whole, in order, only those
/// that ask, the client flag cleared; then the server closes on EOF.
fn framed_across_reads(extra: &str) {
    use std::io::{Read, Write};
    let (_server, addr) = serve("tcp-echo", extra);
    let mut s = std::net::TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let msgs: Vec<Vec<u8>> = (0..200u64)
        .map(|i| {
            message(
                i,
                if i % 3 == 0 { 1 } else { 3 },
                14 + (i as usize * 37) % 1500,
            )
        })
        .chain([message(200, 7, 64)]) // a warm-up: no reply
        .collect();
    let want: Vec<u8> = msgs
        .iter()
        .filter(|m| m[9] == 3)
        .flat_map(|m| {
            let mut r = m.clone();
            r[9] = 2;
            r
        })
        .collect();
    let stream = msgs.concat();
    for (i, piece) in stream.chunks(7 + stream.len() / 97).enumerate() {
        s.write_all(piece).expect("writing");
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("reading the replies");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "replies differ from the messages that asked");
}

#[test]
fn tcp_port_mode_frames_messages_across_reads() {
    framed_across_reads("--threads 2");
}

#[test]
fn tcp_rio_port_frames_messages_across_reads() {
    framed_across_reads("--mode rio-port --pending 2 --buf-size 1600");
}
