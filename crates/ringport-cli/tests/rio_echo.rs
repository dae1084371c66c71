//! End-to-end tests of the RIO TCP echo server (`serve tcp-echo --mode
//! rio-port`), on both backends (each test runs the server once with
//! `RINGPORT_BACKEND=io_uring` and once with `epoll`): clients streaming
//! messages of random sizes get every byte back, in order, and the load
//! generator runs against it. Every child process is bounded in time and
//! killed when its test ends, pass or fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BACKENDS: [&str; 2] = ["io_uring", "epoll"];

mod common;
use common::{ringport, ringport_with, text, Guard};

/// Runs `ringport ARGS` on `backend` to the end, killing it after `limit`.
fn run(a: &str, backend: &str, limit: Duration) -> Output {
    let mut cmd = ringport_with(a);
    cmd.env("RINGPORT_BACKEND", backend);
    common::run(cmd, limit)
}

/// Starts `serve tcp-echo --mode rio-port` on port 0 on `backend`; returns
/// it with the address it printed, or None (with a note) when that backend
/// cannot run here.
fn serve(backend: &str) -> Option<(Guard, SocketAddr)> {
    let mut cmd = ringport();
    cmd.args("serve tcp-echo --mode rio-port --addr 127.0.0.1:0 --duration 10".split_whitespace())
        .env("RINGPORT_BACKEND", backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawning ringport serve"));
    let mut stderr = child.0.stderr.take().expect("stderr");
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let rx = common::stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut addr = None;
    let mut backend_seen = false;
    while addr.is_none() || !backend_seen {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.0.kill();
            let _ = child.0.wait();
            let e = text(&err.join().unwrap_or_default());
            assert!(!e.contains("panicked"), "{e}");
            assert!(!e.trim().is_empty(), "serve printed nothing; saw {seen:?}");
            eprintln!("skipped {backend}: {e}");
            return None;
        };
        if let Some(a) = common::listening_on(&line) {
            assert!(line.contains("rio-port"), "{line}");
            addr = Some(a);
        }
        if line.starts_with("backend ") {
            assert!(
                line.contains(&format!("completion queue backend {backend}")),
                "{line}"
            );
            backend_seen = true;
        }
        seen.push(line);
    }
    Some((child, addr.expect("address")))
}

/// xorshift64*: reproducible sizes and contents without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One client: streams `count` messages of 1..4000 random bytes (without
/// waiting for replies, so several are in flight) and checks that the
/// bytes come back exactly, in order.
fn client(addr: SocketAddr, seed: u64, count: usize) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let messages: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let len = 1 + (rng.next() % 3999) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        })
        .collect();
    let expected: Vec<u8> = messages.concat();
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || -> Result<(), String> {
        for m in &messages {
            writer.write_all(m).map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    });
    let mut got = vec![0u8; expected.len()];
    let mut reader = &stream;
    let mut at = 0;
    while at < got.len() {
        match reader.read(&mut got[at..]) {
            Ok(0) => return Err(format!("closed after {at} of {} bytes", got.len())),
            Ok(n) => at += n,
            Err(e) => return Err(format!("receive after {at} bytes: {e}")),
        }
    }
    sender.join().map_err(|_| "the sender panicked")??;
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        return Err(format!("byte {i} of {} differs", got.len()));
    }
    // Closing our side: the server closes its side, with nothing more sent.
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the close: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes more than sent", rest.len()));
    }
    Ok(())
}

#[test]
fn rio_echo_returns_every_byte_in_order() {
    for backend in BACKENDS {
        let Some((_server, addr)) = serve(backend) else {
            continue;
        };
        let clients: Vec<_> = (0..8u64)
            .map(|i| thread::spawn(move || client(addr, i + 1, 200)))
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            let r = c.join().expect("a client panicked");
            assert!(r.is_ok(), "{backend}: client {i}: {r:?}");
        }
    }
}

#[test]
fn rio_echo_serves_the_load_generator() {
    for backend in BACKENDS {
        let Some((_server, addr)) = serve(backend) else {
            continue;
        };
        let out = run(
            &format!("load tcp --addr {addr} --count 500 --connections 8 --size 1000"),
            backend,
            Duration::from_secs(30),
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("500 round trips"), "{backend}: {stdout}");
    }
}

#[test]
fn rio_echo_ends_on_its_duration_with_a_summary() {
    for backend in BACKENDS {
        let out = run(
            "serve tcp-echo --mode rio-port --addr 127.0.0.1:0 --duration 0.3",
            backend,
            Duration::from_secs(20),
        );
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        if !out.status.success() && stdout.is_empty() {
            // That backend cannot run here.
            assert!(!stderr.contains("panicked"), "{stderr}");
            eprintln!("skipped {backend}: {stderr}");
            continue;
        }
        assert!(out.status.success(), "{backend}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("tcp-echo stopped: 0 connections"),
            "{stdout}"
        );
    }
}

#[test]
fn tcp_echo_refuses_other_modes_with_a_message() {
    for case in [
        "serve tcp-echo --addr 127.0.0.1:0 --mode rio-polled --duration 1",
        "serve udp-echo --addr 127.0.0.1:0 --mode port --duration 1",
        "serve udp-echo --addr 127.0.0.1:0 --mode rio-port-mt --duration 1",
        "serve udp-echo --addr 127.0.0.1:0 --mode rio-polled --pending 0 --duration 1",
        "serve tcp-echo --addr 127.0.0.1:0 --mode rio-port --pending 0 --duration 1",
    ] {
        let out = run(case, "epoll", Duration::from_secs(20));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{case}: succeeded");
        assert!(!stderr.trim().is_empty(), "{case}: no message");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}
