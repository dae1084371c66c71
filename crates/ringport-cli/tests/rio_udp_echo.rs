//! End-to-end tests of the RIO UDP echo server (`serve udp-echo --mode
//! rio-polled|rio-event|rio-port`), every mode on both backends: datagrams of
//! many sizes from several sockets all come back intact to their sender, and
//! the load generator runs against it. Every child process is bounded in
//! time and killed when its test ends.

use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{ringport, ringport_with, text, Guard};

const BACKENDS: [&str; 2] = ["io_uring", "epoll"];
const MODES: [&str; 3] = ["rio-polled", "rio-event", "rio-port"];

/// Starts the server in `mode` on `backend` on port 0 and returns it with
/// the address it printed.
fn serve(mode: &str, backend: &str) -> (Guard, SocketAddr) {
    let (child, addr, _) = serve_with(mode, backend, "--duration 20");
    (child, addr)
}

/// [`serve`] with more options; also returns the rest of its stdout.
fn serve_with(mode: &str, backend: &str, extra: &str) -> (Guard, SocketAddr, Receiver<String>) {
    let mut cmd = ringport();
    cmd.args(["serve", "udp-echo", "--mode", mode])
        .args("--addr 127.0.0.1:0 --pending 8".split_whitespace())
        .args(extra.split_whitespace())
        .env("RINGPORT_BACKEND", backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Guard(cmd.spawn().expect("spawning ringport serve"));
    let rx = common::stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{mode} on {backend}: no address printed in 10 s"));
        if let Some(addr) = common::listening_on(&line) {
            assert!(
                line.contains("Registered I/O"),
                "not the RIO server: {line}"
            );
            return (child, addr, rx);
        }
    }
}

/// Bytes of datagram `i` of socket `s`: its numbers, then a pattern.
fn datagram(s: usize, i: usize) -> Vec<u8> {
    let sizes = [1usize, 8, 64, 500, 1472, 2048];
    let len = sizes[(s + i) % sizes.len()].max(8);
    let mut d = vec![(s * 31 + i) as u8; len];
    d[..4].copy_from_slice(&(s as u32).to_le_bytes());
    d[4..8].copy_from_slice(&(i as u32).to_le_bytes());
    d
}

#[test]
fn every_datagram_comes_back_intact_in_every_mode_on_both_backends() {
    for backend in BACKENDS {
        for mode in MODES {
            let (_server, addr) = serve(mode, backend);
            let clients: Vec<_> = (0..3)
                .map(|s| {
                    thread::spawn(move || {
                        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut back = [0u8; 4096];
                        for i in 0..200 {
                            let d = datagram(s, i);
                            c.send_to(&d, addr).unwrap();
                            let (n, from) = c.recv_from(&mut back).unwrap_or_else(|e| {
                                panic!("{mode} on {backend}: datagram {i} of {s}: {e}")
                            });
                            assert_eq!(from, addr);
                            assert_eq!(&back[..n], &d[..], "{mode} on {backend}: {s}/{i}");
                        }
                    })
                })
                .collect();
            for c in clients {
                c.join().expect("a client failed");
            }
        }
    }
}

#[test]
fn the_load_generator_runs_against_it() {
    for backend in BACKENDS {
        let (_server, addr) = serve("rio-event", backend);
        let mut cmd = ringport_with(&format!(
            "load udp --addr {addr} --connections 16 --count 2000"
        ));
        cmd.env("RINGPORT_BACKEND", backend);
        let out = common::run(cmd, Duration::from_secs(60));
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        let lost = stdout
            .lines()
            .find(|l| l.starts_with("lost (no reply within"))
            .unwrap_or_else(|| panic!("no loss line: {stdout}"));
        assert!(lost.ends_with(": 0"), "datagrams lost: {stdout}");
        assert!(stdout.contains("2000 round trips"), "{stdout}");
    }
}

#[test]
fn a_zero_length_datagram_comes_back_in_every_mode_on_both_backends() {
    for backend in BACKENDS {
        for mode in MODES {
            let (_server, addr) = serve(mode, backend);
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut back = [0u8; 64];
            for _ in 0..3 {
                c.send_to(&[], addr).unwrap();
                let (n, from) = c
                    .recv_from(&mut back)
                    .unwrap_or_else(|e| panic!("{mode} on {backend}: no empty echo: {e}"));
                assert_eq!((n, from), (0, addr), "{mode} on {backend}");
            }
            // And the slot it used receives again.
            c.send_to(b"after", addr).unwrap();
            let (n, _) = c.recv_from(&mut back).unwrap();
            assert_eq!(&back[..n], b"after", "{mode} on {backend}");
        }
    }
}

#[test]
fn a_datagram_longer_than_the_buffer_is_not_echoed_cut_short() {
    for backend in BACKENDS {
        for mode in MODES {
            let (mut server, addr, lines) = serve_with(mode, backend, "--buf-size 64 --duration 2");
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut back = [0u8; 256];
            c.send_to(&[7u8; 65], addr).unwrap();
            let r = c.recv_from(&mut back);
            assert!(r.is_err(), "{mode} on {backend}: echoed {r:?}");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.send_to(&[9u8; 64], addr).unwrap();
            let (n, _) = c.recv_from(&mut back).unwrap();
            assert_eq!(&back[..n], &[9u8; 64][..], "{mode} on {backend}");
            common::wait(&mut server, Duration::from_secs(20));
            // The reader ends at the server's exit, which has happened.
            let summary: Vec<String> = lines.iter().collect();
            let summary = summary.join("\n");
            assert!(
                summary.contains("1 truncated datagrams not echoed"),
                "{mode} on {backend}: {summary}"
            );
        }
    }
}
