//! `ringport sum --timeline FILE.svg` writes an SVG with a lane per worker,
//! plain and with `--verbose`; so does `ringport serve … --timeline`.

use std::process::Stdio;
use std::time::Duration;

mod common;
use common::{listening_on, ringport_with, run, stdout_lines, text, wait, Guard};

fn timeline(extra: &str, name: &str) -> String {
    // A directory per test: the tests run at once and each removes its own.
    let dir = std::env::temp_dir().join(format!("ringport-timeline-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(name);
    let cmd = ringport_with(&format!(
        "sum --items 40 --chunk 2000 --threads 3 --concurrency 2 {extra} --timeline {}",
        path.display()
    ));
    let out = run(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "sum --timeline failed: {stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("the final results are [3199960000]"),
        "{stdout}"
    );
    assert!(stdout.contains("timeline: "), "{stdout}");
    let svg = std::fs::read_to_string(&path).expect("the SVG was written");
    let _ = std::fs::remove_dir_all(&dir);
    svg
}

/// The lanes' labels: a text element "worker N: …".
fn lanes(svg: &str) -> Vec<usize> {
    let mut found: Vec<usize> = svg
        .match_indices("worker ")
        .filter(|(i, _)| matches!(svg[..*i].chars().last(), Some('>' | '\n')))
        .filter_map(|(i, m)| {
            let rest = &svg[i + m.len()..];
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            rest[n.len()..].starts_with(':').then(|| n.parse().ok())?
        })
        .collect();
    found.sort_unstable();
    found
}

fn check(svg: &str) {
    let head = svg.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "not an SVG: {}",
        &head[..head.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"), "the SVG is cut short");
    assert_eq!(lanes(svg), vec![0, 1, 2], "one lane per worker");
    assert!(svg.contains("concurrency limit 2"));
    assert!(svg.contains("main thread: 40 posts"));
}

#[test]
fn sum_timeline_writes_an_svg_with_a_lane_per_worker() {
    check(&timeline("", "plain.svg"));
}

#[test]
fn verbose_timeline_shows_the_blocking_sections() {
    let svg = timeline("--verbose", "verbose.svg");
    check(&svg);
    assert!(
        svg.contains("in port.blocking"),
        "no blocking section drawn"
    );
}

#[test]
fn timeline_refuses_too_many_items() {
    let out = run(
        ringport_with("sum --items 200000 --chunk 1 --timeline /dev/null"),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--timeline records at most"));
}

/// A UDP echo server recorded for its whole (short) run: every datagram
/// echoed is a mark in a worker's lane.
#[test]
fn serve_timeline_draws_the_workers_packets() {
    let dir = std::env::temp_dir().join(format!("ringport-timeline-{}-serve", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("serve.svg");
    let mut cmd = ringport_with(
        "serve udp-echo --addr 127.0.0.1:0 --threads 2 --concurrency 1 --duration 3 \
         --timeline-window 0..3 --timeline",
    );
    cmd.arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut server = Guard(cmd.spawn().expect("spawning ringport serve"));
    let lines = stdout_lines(&mut server);
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("serve printed no address");
        if let Some(a) = listening_on(&line) {
            break a;
        }
    };
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("a client socket");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..50u8 {
        sock.send_to(&[i; 32], addr).expect("sending");
        let (n, _) = sock.recv_from(&mut buf).expect("the echo");
        assert_eq!(&buf[..n], &[i; 32]);
    }
    let status = wait(&mut server, Duration::from_secs(30));
    // Every line: the reader ends at the pipe's end, as the server exits.
    let out: Vec<String> = lines.iter().collect();
    assert!(status.success(), "serve failed: {out:?}");
    let summary = out
        .iter()
        .find(|l| l.starts_with("timeline: "))
        .unwrap_or_else(|| panic!("no timeline line in {out:?}"));
    let packets: usize = summary
        .split_once('(')
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {summary}"));
    // A receive's packet for each datagram, and a send's where it waited.
    assert!(packets >= 50, "{summary}");
    let svg = std::fs::read_to_string(&path).expect("the SVG was written");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(lanes(&svg), vec![0, 1], "one lane per worker");
    assert!(svg.contains("concurrency limit 1"));
    assert!(!svg.contains("main thread:"), "a server has no posts");
    // A mark per packet, besides the legend's two.
    assert!(svg.matches("<circle").count() >= 52, "too few marks");
}

#[test]
fn serve_timeline_is_refused_where_no_port_workers_run() {
    for extra in [
        "udp-echo --mode rio-polled",
        "udp-sink",
        "tcp-echo --shards 2",
    ] {
        let out = run(
            ringport_with(&format!(
                "serve {extra} --addr 127.0.0.1:0 --duration 1 --timeline /dev/null"
            )),
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "{extra}");
        assert!(
            text(&out.stderr).contains("--timeline draws the workers of one completion port"),
            "{extra}: {}",
            text(&out.stderr)
        );
    }
    // A file it could not write is said before the server starts.
    let out = run(
        ringport_with(
            "serve udp-echo --addr 127.0.0.1:0 --duration 60 --timeline /nonexistent/dir/t.svg",
        ),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--timeline /nonexistent/dir/t.svg"),
        "{stderr}"
    );
}
