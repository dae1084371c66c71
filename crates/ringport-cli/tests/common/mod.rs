//! Helpers shared by the end-to-end tests: run the built `ringport` binary
//! with a time limit, and never leave a child process behind.
#![allow(dead_code)] // each test file uses its own subset

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub fn ringport() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringport"))
}

/// `ringport ARGS` (split on white space).
pub fn ringport_with(args: &str) -> Command {
    let mut cmd = ringport();
    cmd.args(args.split_whitespace());
    cmd
}

/// A child process that is killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub type Reader = thread::JoinHandle<Vec<u8>>;

/// Drains a piped stdout and stderr on their own threads, so a chatty child
/// never blocks on a full pipe.
pub fn pipes(child: &mut Guard) -> (Reader, Reader) {
    let mut stdout = child.0.stdout.take().expect("stdout");
    let mut stderr = child.0.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    (out, err)
}

/// Waits for the child, failing the test (and so killing it) after `limit`.
pub fn wait(child: &mut Guard, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.0.try_wait().expect("waiting for ringport") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "ringport did not finish within {limit:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to the end, killing it after `limit`.
pub fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawning ringport"));
    let (out, err) = pipes(&mut child);
    let status = wait(&mut child, limit);
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The child's stdout, line by line, through a channel (read on its own
/// thread, so a wait on it can time out).
pub fn stdout_lines(child: &mut Guard) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// The address in a server's `listening on ADDR …` line.
pub fn listening_on(line: &str) -> Option<std::net::SocketAddr> {
    let rest = line.strip_prefix("listening on ")?;
    let addr = rest.split_whitespace().next()?;
    Some(addr.parse().expect("a socket address"))
}

/// Whether the sockperf program runs here (`apt-get install sockperf`; CI
/// installs it); if not, says so, for the caller to skip what needs it.
pub fn have_sockperf() -> bool {
    let found = Command::new("sockperf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: sockperf is not installed (apt-get install sockperf): skipped");
    }
    found
}
