//! `Backend::Auto` falls back to epoll where io_uring is denied, as Docker's
//! default seccomp profile (EPERM) or an old kernel (ENOSYS) does.
//!
//! The parent test re-runs this test binary as a child process that installs
//! a seccomp filter failing `io_uring_setup`, then creates a port and echoes a
//! datagram through it. A child process keeps the filter away from the test
//! harness's other threads.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use ringport::{Backend, CompletionPort};

mod common;
use common::deny_io_uring_setup;

const CHILD: &str = "RINGPORT_SECCOMP_CHILD";

#[test]
fn child_under_seccomp() {
    let Ok(which) = std::env::var(CHILD) else {
        return; // only meaningful as the child of the tests below
    };
    let errno = if which == "EPERM" {
        libc::EPERM
    } else {
        libc::ENOSYS
    };
    deny_io_uring_setup(errno as u32);
    // The filter works: io_uring cannot be forced.
    let forced = CompletionPort::<u8>::builder()
        .backend(Backend::IoUring)
        .build();
    let e = forced.expect_err("io_uring_setup is denied");
    assert!(e.to_string().contains("io_uring_setup"), "{e}");

    let port = CompletionPort::<u8>::new(0).unwrap();
    assert_eq!(port.backend(), Backend::Epoll);
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let server = port.associate(server, 1).unwrap();
    server.recv_from(vec![0u8; 64], 0).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send_to(b"echo me", addr).unwrap();
    let mut p = port.get(Some(Duration::from_secs(10))).unwrap();
    let from = p.peer().unwrap();
    let buf = p.take_buf().unwrap();
    server.send_to(buf, from, 1).unwrap();
    assert!(port
        .get(Some(Duration::from_secs(10)))
        .unwrap()
        .result
        .is_ok());
    let mut back = [0; 64];
    let n = client.recv(&mut back).unwrap();
    assert_eq!(&back[..n], b"echo me");
    println!("child: fell back to epoll and echoed");
}

fn run_child(errno: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_under_seccomp",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, errno)
        .env_remove("RINGPORT_BACKEND")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("fell back to epoll and echoed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_setup_gets_eperm() {
    run_child("EPERM");
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_setup_gets_enosys() {
    run_child("ENOSYS");
}
