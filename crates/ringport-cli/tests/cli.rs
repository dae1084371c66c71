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
use common::{ringport, run, text, Guard, Reader};

fn args(cmd: &mut Command, a: &str) {
    cmd.args(a.split_whitespace());
}

/// `ringport serve KIND` on port 0 for at most 20 s, stdout piped.
fn serve_command(kind: &str, extra: &str) -> Command {
    let mut cmd = ringport();
    args(
        &mut cmd,
        &format!("serve {kind} --addr 127.0.0.1:0 --duration 20 --threads 2 {extra}"),
    );
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd
}

/// Starts `ringport serve KIND` on port 0 and returns it with the address
/// it printed.
fn serve(kind: &str, extra: &str) -> (Guard, SocketAddr) {
    let mut cmd = serve_command(kind, extra);
    cmd.stderr(Stdio::inherit());
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
fn bench_tcp_pin_counts_every_servers_own_cpu() {
    let mut cmd = ringport();
    args(
        &mut cmd,
        "bench tcp --pin --seconds 0.3 --warmup 0.1 --rounds 1 --connections 8 \
         --peers ringport,ringport-epoll,ringport-rio,tokio,mio,monoio,std,uring-raw,uring-raw-oneshot,uring-raw-coop,epoll-raw",
    );
    let out = run(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    if !out.status.success() && stderr.contains("two CPUs") {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "pinned to CPU",
        "1 server threads",
        "server µs/msg",
        "÷ tokio",
        "÷ monoio",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}");
    }
    // Each peer's row (a markdown row) ends in its server CPU per message:
    // a server whose threads were missed (as a thread per connection once
    // was, gone before it was read) would show zero.
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let table: Vec<Vec<String>> = stdout
        .lines()
        .skip_while(|l| !(l.starts_with("| server |") && l.contains("msgs/s")))
        .take_while(|l| l.starts_with('|'))
        .map(cells)
        .collect();
    assert_eq!(
        table.first().and_then(|h| h.last()).map(String::as_str),
        Some("server µs/msg"),
        "{stdout}"
    );
    for peer in [
        "ringport",
        "ringport-epoll",
        "ringport-rio",
        "tokio",
        "mio",
        "monoio",
        "std",
        "uring-raw",
        "epoll-raw",
    ] {
        let row = table
            .iter()
            .find(|r| r.first().map(String::as_str) == Some(peer))
            .unwrap_or_else(|| panic!("no row for {peer} in\n{stdout}"));
        let cpu: f64 = row
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no server CPU in {row:?}"));
        assert!(cpu > 0.0, "{peer}: server CPU {cpu} in\n{stdout}");
    }
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

#[test]
fn bench_file_pin_smoke() {
    if two_cpus() {
        smoke(
            "file",
            "--pin --size-mib 8 --seconds 0.3 --rounds 1",
            &["readers pinned to CPU", "1 threads", "ringport / pread"],
        );
    }
}

/// Whether this process may run on two CPUs, as --pin needs.
fn two_cpus() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

#[test]
fn every_count_has_a_bound_and_a_one_line_error_within_a_second() {
    // Each once grew without limit (to the OOM killer) or spent seconds
    // creating threads before failing.
    let cases = [
        ("serve tcp-echo --accepts 100000000", "--accepts"),
        ("serve tcp-echo --threads 100000000", "--threads"),
        ("serve tcp-echo --concurrency 100000000", "--concurrency"),
        ("serve tcp-echo --batch 100000000", "--batch"),
        ("serve udp-echo --threads 100000000", "--threads"),
        ("serve udp-echo --pending 100000000", "--pending"),
        ("serve udp-echo --pending 60000", "--pending"),
        (
            "serve udp-echo --mode rio-polled --threads 100000000",
            "--threads",
        ),
        ("serve tcp-echo --mode rio-port --threads 0", "--threads"),
        (
            "serve tcp-echo --mode rio-port --threads 100000000",
            "--threads",
        ),
        (
            "serve tcp-echo --mode rio-port --pending 100000",
            "--pending",
        ),
        (
            "serve tcp-echo --mode rio-port --batch 100000000",
            "--batch",
        ),
        (
            "serve udp-echo --mode rio-polled --pending 5000",
            "--pending",
        ),
        ("serve udp-sink --threads 100000000", "--threads"),
        ("serve udp-sink --pending 100000000", "--pending"),
        ("serve udp-sink --batch 100000000", "--batch"),
    ];
    for (case, option) in cases {
        let mut cmd = ringport();
        args(&mut cmd, &format!("{case} --addr 127.0.0.1:0 --duration 5"));
        let started = Instant::now();
        let out = run(cmd, Duration::from_secs(30));
        let took = started.elapsed();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{case}: succeeded");
        assert!(took < Duration::from_secs(1), "{case}: took {took:?}");
        assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
        assert!(stderr.contains(option), "{case}: no {option} in {stderr}");
        assert!(text(&out.stdout).is_empty(), "{case}: started anyway");
    }
}

#[test]
fn rio_port_tcp_echo_takes_many_large_receives_per_connection() {
    // 64 receives per connection once sized the completion queue past its
    // limit before any connection existed; now fewer connections fit.
    let mut cmd = ringport();
    args(
        &mut cmd,
        "serve tcp-echo --mode rio-port --addr 127.0.0.1:0 --pending 64 --buf-size 1048576 \
         --duration 0.3",
    );
    let out = run(cmd, Duration::from_secs(20));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if !out.status.success() && stdout.is_empty() && stderr.contains("io_uring") {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("at most 1008 connections"), "{stdout}");
}

/// `serve tcp-echo` with at most `nofile` descriptors, stderr piped.
fn starved_server(nofile: u64, extra: &str) -> (Guard, SocketAddr, Reader) {
    use std::os::unix::process::CommandExt;
    let mut cmd = serve_command("tcp-echo", extra);
    cmd.stderr(Stdio::piped());
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the
    // parent; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Guard(cmd.spawn().expect("spawning ringport serve"));
    let mut stderr = child.0.stderr.take().expect("stderr");
    let err = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    let lines = common::stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("serve printed no address");
        if let Some(addr) = common::listening_on(&line) {
            return (child, addr, err);
        }
    }
}

#[test]
fn running_out_of_descriptors_logs_a_line_a_second_and_recovers() {
    use std::io::Write;
    use std::net::TcpStream;
    for extra in ["", "--mode rio-port"] {
        let (mut server, addr, err) = starved_server(64, extra);
        // Far more connections than descriptors: the listener's backlog
        // holds the rest, and every accept of them fails with EMFILE.
        let conns: Vec<TcpStream> = (0..150)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        thread::sleep(Duration::from_secs(3));
        drop(conns);
        // Once connections close the server takes new ones again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let echoed = loop {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            c.write_all(b"still there?").expect("send");
            let mut back = [0u8; 12];
            if c.read_exact(&mut back).is_ok() {
                break back;
            }
            assert!(
                Instant::now() < deadline,
                "{extra}: no echo after the flood"
            );
        };
        assert_eq!(&echoed, b"still there?");
        let _ = server.0.kill();
        let _ = server.0.wait();
        let stderr = text(&err.join().unwrap_or_default());
        let lines = stderr.lines().count();
        // About 3 s of failing accepts (hundreds a second), at most one
        // line a second, plus whatever the recovery added.
        assert!(
            (1..=6).contains(&lines),
            "{extra}: {lines} lines:\n{stderr}"
        );
        assert!(stderr.contains("Too many open files"), "{extra}: {stderr}");
        assert!(
            stderr.contains("more like it not shown"),
            "{extra}: {stderr}"
        );
    }
}

#[test]
fn udp_echo_does_not_echo_a_longer_datagram_cut_short() {
    use std::net::UdpSocket;
    let (_server, addr) = serve("udp-echo", "--buf-size 64");
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut back = [0u8; 256];
    c.send_to(&[7u8; 65], addr).expect("send");
    let r = c.recv_from(&mut back);
    assert!(r.is_err(), "echoed: {r:?}");
    // The receive goes on with the same buffer.
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for _ in 0..20 {
        c.send_to(&[9u8; 64], addr).expect("send");
        let (n, _) = c.recv_from(&mut back).expect("no echo after it");
        assert_eq!(&back[..n], &[9u8; 64][..]);
    }
}
