//! End-to-end tests of the sharded servers (`serve … --shards 2`), every
//! mode on both backends: traffic from many client sockets (flows) is
//! answered, every reply checked, both shards take a share, and the
//! per-shard counters add up to the total. Every child process is bounded
//! in time and killed when its test ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{ringport, Guard};

const BACKENDS: [&str; 2] = ["io_uring", "epoll"];
/// Flows: with 24, the chance that the hash sends all to one of 2 shards is
/// 2^-23.
const FLOWS: usize = 24;
const ROUNDS: usize = 20;

/// Starts `serve ARGS --shards 2` on `backend`; returns it, its address
/// and the rest of its stdout.
fn serve(args: &str, backend: &str) -> (Guard, SocketAddr, Receiver<String>) {
    let mut cmd = ringport();
    cmd.arg("serve")
        .args(args.split_whitespace())
        .args("--addr 127.0.0.1:0 --shards 2 --duration 30".split_whitespace())
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
            .unwrap_or_else(|_| panic!("{args} on {backend}: no address printed in 10 s"));
        if let Some(addr) = common::listening_on(&line) {
            assert!(line.contains("2 shards"), "not sharded: {line}");
            return (child, addr, rx);
        }
    }
}

/// Sends SIGTERM and collects the report: each shard's line, and the total.
fn report(mut child: Guard, rx: Receiver<String>, what: &str) -> (Vec<String>, String) {
    // SAFETY: kill() with the pid of our own live child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let mut shards = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{what}: no report in 10 s (shards: {shards:?})"));
        if line.starts_with("shard ") {
            shards.push(line);
        } else if line.contains("stopped:") {
            let status = common::wait(&mut child, Duration::from_secs(10));
            assert!(status.success(), "{what}: {status}");
            return (shards, line);
        }
    }
}

/// The number before `word` in `line`.
fn count(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.trim_end_matches(',') == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words[i - 1].parse().unwrap()
}

/// Checks that both shards counted some `word` and that they add up to the
/// total, which must be `want`.
fn adds_up(shards: &[String], total: &str, word: &str, want: u64, what: &str) {
    let per: Vec<u64> = shards.iter().map(|l| count(l, word)).collect();
    assert!(
        per.iter().all(|&n| n > 0),
        "{what}: a shard got nothing: {shards:?}"
    );
    sums_to(shards, total, word, want, what);
}

/// Checks that the 2 shards' counts of `word` add up to the total, `want`.
fn sums_to(shards: &[String], total: &str, word: &str, want: u64, what: &str) {
    assert_eq!(shards.len(), 2, "{what}: {shards:?}");
    let per: Vec<u64> = shards.iter().map(|l| count(l, word)).collect();
    assert_eq!(
        per.iter().sum::<u64>(),
        count(total, word),
        "{what}: {shards:?} {total}"
    );
    assert_eq!(count(total, word), want, "{what}: {total}");
}

fn udp_flows(addr: SocketAddr, what: &str) {
    let clients: Vec<_> = (0..FLOWS)
        .map(|f| {
            let what = what.to_string();
            thread::spawn(move || {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for i in 0..ROUNDS {
                    let d = [f as u8, i as u8, 0xAB, (f * i) as u8];
                    c.send_to(&d, addr).unwrap();
                    let mut b = [0u8; 64];
                    let (n, from) = c
                        .recv_from(&mut b)
                        .unwrap_or_else(|e| panic!("{what}: flow {f}, datagram {i}: {e}"));
                    assert_eq!((&b[..n], from), (&d[..], addr), "{what}: flow {f}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn sharded_udp_echo_answers_every_flow_in_every_mode_on_both_backends() {
    for backend in BACKENDS {
        for mode in [
            "",
            "--mode rio-polled",
            "--mode rio-event",
            "--mode rio-port",
        ] {
            let what = format!("udp-echo {mode} on {backend}");
            let (child, addr, rx) = serve(&format!("udp-echo {mode}"), backend);
            udp_flows(addr, &what);
            let (shards, total) = report(child, rx, &what);
            adds_up(&shards, &total, "messages", (FLOWS * ROUNDS) as u64, &what);
        }
    }
}

#[test]
fn shards_steered_by_cpu_and_pinned_answer_every_flow_on_both_backends() {
    for backend in BACKENDS {
        let what = format!("udp-echo --steer-by-cpu --pin-shards on {backend}");
        let (child, addr, rx) = serve("udp-echo --steer-by-cpu --pin-shards", backend);
        udp_flows(addr, &what);
        let (shards, total) = report(child, rx, &what);
        // Steered by the sending CPU, every flow may land on one shard.
        sums_to(&shards, &total, "messages", (FLOWS * ROUNDS) as u64, &what);
    }
}

#[test]
fn sharded_tcp_echo_answers_every_connection_in_both_modes_on_both_backends() {
    for backend in BACKENDS {
        for mode in ["", "--mode rio-port"] {
            let what = format!("tcp-echo {mode} on {backend}");
            let (child, addr, rx) = serve(&format!("tcp-echo {mode}"), backend);
            let clients: Vec<_> = (0..FLOWS)
                .map(|f| {
                    let what = what.clone();
                    thread::spawn(move || {
                        let mut c = TcpStream::connect(addr).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        for i in 0..ROUNDS {
                            let d = [f as u8, i as u8, 0xCD, 7];
                            c.write_all(&d).unwrap();
                            let mut b = [0u8; 4];
                            c.read_exact(&mut b)
                                .unwrap_or_else(|e| panic!("{what}: conn {f}, message {i}: {e}"));
                            assert_eq!(b, d, "{what}: conn {f}");
                        }
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
            let (shards, total) = report(child, rx, &what);
            adds_up(&shards, &total, "connections", FLOWS as u64, &what);
            // A message is a receive that brought data: at least one per
            // round trip, more if a client's 4 bytes came in pieces.
            let per: Vec<u64> = shards.iter().map(|l| count(l, "messages")).collect();
            assert_eq!(per.iter().sum::<u64>(), count(&total, "messages"), "{what}");
            assert!(
                count(&total, "messages") >= (FLOWS * ROUNDS) as u64,
                "{what}"
            );
            assert_eq!(
                count(&total, "bytes"),
                (FLOWS * ROUNDS * 4) as u64,
                "{what}"
            );
        }
    }
}

#[test]
fn sharded_udp_sink_counts_every_flow_in_every_mode_on_both_backends() {
    const SIZE: usize = 256;
    const EACH: usize = 100;
    let modes = [
        "port",
        "rio-polled",
        "rio-event",
        "rio-event-polled",
        "rio-port",
        "rio-port-mt",
    ];
    for backend in BACKENDS {
        for mode in modes {
            let what = format!("udp-sink {mode} on {backend}");
            let args = format!("udp-sink --mode {mode} --size {SIZE} --pending 64");
            let (mut child, addr, rx) = serve(&args, backend);
            let flows: Vec<_> = (0..FLOWS)
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            for i in 0..EACH {
                for f in &flows {
                    f.send_to(&[i as u8; SIZE], addr).unwrap();
                }
                if i % 10 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            // The end marker (see serve/sink/run.rs), from every flow, so
            // every shard with a flow sees it.
            let sent = (FLOWS * EACH) as u64;
            let mut marker = b"RPORTEND".to_vec();
            marker.extend_from_slice(&sent.to_le_bytes());
            for _ in 0..3 {
                for f in &flows {
                    f.send_to(&marker, addr).unwrap();
                }
                thread::sleep(Duration::from_millis(5));
            }
            let mut shards = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let total = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = rx
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("{what}: no report in 10 s"));
                if line.starts_with("shard ") {
                    shards.push(line);
                } else if line.contains("stopped:") {
                    break line;
                }
            };
            let status = common::wait(&mut child, Duration::from_secs(10));
            assert!(status.success(), "{what}: {status}");
            adds_up(&shards, &total, "datagrams", sent, &what);
        }
    }
}

#[test]
fn shards_are_refused_beyond_their_bounds() {
    for bad in ["0", "100000", "many"] {
        let out = common::run(
            common::ringport_with(&format!(
                "serve udp-echo --addr 127.0.0.1:0 --duration 1 --shards {bad}"
            )),
            Duration::from_secs(10),
        );
        assert!(!out.status.success(), "--shards {bad} was accepted");
        assert!(
            common::text(&out.stderr).contains("shards"),
            "--shards {bad}"
        );
    }
}

#[test]
fn udp_blast_with_flows_feeds_every_shard_of_a_sink() {
    for backend in BACKENDS {
        let what = format!("udp-sink fed by udp-blast --flows 16 on {backend}");
        let (mut child, addr, rx) = serve("udp-sink --mode rio-polled --size 512", backend);
        let out = common::run(
            common::ringport_with(&format!(
                "load udp-blast --addr {addr} --size 512 --flows 16 --count 16000"
            )),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "{what}: {}",
            common::text(&out.stderr)
        );
        let said = common::text(&out.stdout);
        assert!(
            said.contains("16 flow(s)") && said.contains("sent 16000 datagrams"),
            "{said}"
        );
        let mut shards = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let total = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{what}: no report in 10 s"));
            if line.starts_with("shard ") {
                shards.push(line);
            } else if line.contains("stopped:") {
                break line;
            }
        };
        let status = common::wait(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{what}: {status}");
        // A flood may overrun a receive buffer: what arrived is counted
        // once, by the shard it reached, and the marker's total is shown.
        let got = count(&total, "datagrams");
        let per: Vec<u64> = shards.iter().map(|l| count(l, "datagrams")).collect();
        assert_eq!(per.iter().sum::<u64>(), got, "{what}: {shards:?} {total}");
        assert!(got > 0 && got <= 16_000, "{what}: {total}");
        assert!(
            per.iter().all(|&n| n > 0),
            "{what}: a shard got nothing: {shards:?}"
        );
        assert!(
            total.contains("sender reported 16000 sent"),
            "{what}: {total}"
        );
    }
}
