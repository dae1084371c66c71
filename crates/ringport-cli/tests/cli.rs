//! End-to-end tests of the `ringport` binary: the sum demo, the echo servers
//! with the load generator against them, refusals with a message, and smoke
//! runs of the benchmarks. Every child process is bounded in time and killed
//! when its test ends, pass or fail.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{ringport, run, text, Guard};

fn args(cmd: &mut Command, a: &str) {
    cmd.args(a.split_whitespace());
}

/// Starts `ringport serve KIND` on port 0 and returns it with the address
/// it printed.
fn serve(kind: &str, extra: &str) -> (Guard, SocketAddr) {
    let mut cmd = ringport();
    args(
        &mut cmd,
        &format!("serve {kind} --addr 127.0.0.1:0 --duration 10 --threads 2 {extra}"),
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Guard(cmd.spawn().expect("spawning ringport serve"));
    let rx = common::stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut addr = None;
    let mut backend = false;
    while addr.is_none() || !backend {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("serve printed no address; saw {seen:?}"));
        if let Some(a) = common::listening_on(&line) {
            addr = Some(a);
        }
        if line.starts_with("backend ") {
            assert!(
                line.contains("io_uring") || line.contains("epoll"),
                "{line}"
            );
            backend = true;
        }
        seen.push(line);
    }
    (child, addr.expect("address"))
}

#[test]
fn sum_prints_the_classic_result() {
    let mut cmd = ringport();
    cmd.arg("sum");
    let out = run(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l == "the final results are [499999500000]"),
        "{stdout}"
    );
}

#[test]
fn sum_refuses_zero_items_with_a_message() {
    let mut cmd = ringport();
    args(&mut cmd, "sum --items 0");
    let out = run(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--items"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sum_into_a_closed_pipe_ends_quietly() {
    // `ringport sum | head -1`: the reader goes away after one line.
    let mut cmd = ringport();
    cmd.arg("sum")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawning ringport"));
    let stdout = child.0.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("reading the first line");
    // The pipe's read end is closed here.
    let mut stderr = child.0.stderr.take().expect("stderr");
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "ringport sum kept running");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(first.starts_with("the final results are"), "{first}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tcp_echo_serves_the_load_generator() {
    let (_server, addr) = serve("tcp-echo", "");
    let mut cmd = ringport();
    args(
        &mut cmd,
        &format!("load tcp --addr {addr} --count 200 --connections 8 --size 100"),
    );
    let out = run(cmd, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("200 round trips"), "{stdout}");
    assert!(stdout.contains("p99.9"), "{stdout}");
}

#[test]
fn tcp_echo_handles_large_messages() {
    // 256 KiB messages cannot go out in one send: partial sends and reads.
    let (_server, addr) = serve("tcp-echo", "--buf-size 4096");
    let mut cmd = ringport();
    args(
        &mut cmd,
        &format!("load tcp --addr {addr} --count 40 --connections 4 --size 262144"),
    );
    let out = run(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("40 round trips"), "{stdout}");
}

#[test]
fn udp_echo_serves_the_load_generator() {
    let (_server, addr) = serve("udp-echo", "");
    let mut cmd = ringport();
    args(
        &mut cmd,
        &format!("load udp --addr {addr} --count 200 --connections 8 --size 1200"),
    );
    let out = run(cmd, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("200 round trips"), "{stdout}");
}

#[test]
fn servers_run_on_the_epoll_backend_too() {
    for (kind, proto) in [("tcp-echo", "tcp"), ("udp-echo", "udp")] {
        let (_server, addr) = serve(kind, "--backend epoll");
        let mut cmd = ringport();
        args(
            &mut cmd,
            &format!("load {proto} --addr {addr} --count 100 --connections 4"),
        );
        let out = run(cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{kind}: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// A local port nobody listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn load_to_a_closed_port_fails_with_a_message() {
    let addr = closed_port();
    for proto in ["tcp", "udp"] {
        let mut cmd = ringport();
        args(
            &mut cmd,
            &format!("load {proto} --addr {addr} --count 10 --timeout 1s"),
        );
        let out = run(cmd, Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{proto}: {}", text(&out.stdout));
        assert!(
            stderr.contains("refused") || stderr.contains("no reply"),
            "{proto}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let cases = [
        "load tcp --addr 127.0.0.1:9 --connections 0",
        "load tcp --addr 127.0.0.1:9 --size 0",
        "load udp --addr 127.0.0.1:9 --size 65508",
        "load tcp --addr nowhere --count 1",
        "load tcp --addr 127.0.0.1:9 --duration soon",
        "serve tcp-echo --addr 127.0.0.1:0 --threads 0",
        "serve udp-echo --addr 127.0.0.1:0 --pending 0",
        "bench tcp --rounds 0",
        "bench udp --peers nobody",
        "bench file --size-mib 0",
    ];
    for case in cases {
        let mut cmd = ringport();
        args(&mut cmd, case);
        let out = run(cmd, Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{case}: succeeded");
        assert!(!stderr.trim().is_empty(), "{case}: no message");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

#[test]
fn serve_refuses_an_address_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut cmd = ringport();
    args(
        &mut cmd,
        &format!("serve tcp-echo --addr {addr} --duration 1"),
    );
    let out = run(cmd, Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

fn smoke(bench: &str, extra: &str, expect: &[&str]) {
    let mut cmd = ringport();
    args(&mut cmd, &format!("bench {bench} {extra}"));
    let out = run(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "bench {bench}: {stdout}\n{}",
        text(&out.stderr)
    );
    for e in expect {
        assert!(stdout.contains(e), "bench {bench}: no {e:?} in\n{stdout}");
    }
}

#[test]
fn bench_tcp_smoke() {
    smoke(
        "tcp",
        "--seconds 0.3 --warmup 0.1 --rounds 1 --connections 8",
        &[
            "ringport / tokio",
            "ringport / mio",
            "ringport / std",
            "p99.9",
        ],
    );
}

#[test]
fn bench_udp_smoke() {
    smoke(
        "udp",
        "--seconds 0.3 --warmup 0.1 --rounds 1 --connections 8",
        &["ringport / tokio", "ringport / mio", "ringport / blocking"],
    );
}

#[test]
fn bench_file_smoke() {
    smoke(
        "file",
        "--size-mib 8 --seconds 0.3 --rounds 1",
        &["ringport / pread", "reads/s"],
    );
}
