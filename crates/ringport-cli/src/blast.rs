//! `ringport load udp-blast`: a UDP traffic generator fast enough that the
//! receiver, not the sender, is what a benchmark measures.
//!
//! On loopback the sender's thread pays for delivery to the receiving socket
//! too, so one datagram per system call tops out near 200,000 datagrams/s
//! (MEASURING.md). The generator therefore sends with UDP GSO: the socket is
//! given `UDP_SEGMENT` = `--size`, and each `send` hands the kernel one
//! buffer of up to 65,507 bytes (at most 64 datagrams), which it cuts into
//! `--size`-byte datagrams. Where GSO is refused (an old kernel, `--sendmmsg`)
//! it falls back to `sendmmsg` with 64 datagrams per call.
//!
//! Every datagram starts with its sequence number (when it has room for 8
//! bytes). The run lasts `--duration` or `--count` datagrams; then the end
//! marker, a datagram of another size carrying the number sent, goes out
//! seven times over 50 ms (a receiver whose buffer is full drops datagrams,
//! the marker too), and the generator prints how many it sent and how fast.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crate::args::MAX_UDP;
use crate::measure::{self, cpu_time, Scope};
use crate::serve::sink::marker;

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const MAX_SEGMENTS: usize = 64;
/// Datagrams per sendmmsg call.
const MMSG: usize = 64;
const UDP_SEGMENT: libc::c_int = 103;

/// What to send.
#[derive(Clone, Debug)]
pub struct BlastConfig {
    pub addr: SocketAddr,
    pub size: usize,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    /// Use GSO when the kernel allows it.
    pub gso: bool,
    /// Pin the sending thread to this CPU.
    pub pin: Option<usize>,
}

impl BlastConfig {
    /// Checks the figures; every refusal names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 || self.size > MAX_UDP {
            return Err(format!(
                "--size must be 1 to {MAX_UDP} bytes (the largest UDP datagram), not {}",
                self.size
            ));
        }
        if self.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be more than 0".into());
        }
        if self.duration.is_none() && self.count.is_none() {
            return Err("give --duration or --count".into());
        }
        Ok(())
    }
}

/// How the datagrams went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// UDP GSO, this many datagrams per send.
    Gso(usize),
    /// sendmmsg, 64 datagrams per call.
    Sendmmsg,
}

/// What a blast did.
#[derive(Clone, Debug)]
pub struct BlastReport {
    pub sent: u64,
    pub elapsed: Duration,
    /// Send calls made.
    pub calls: u64,
    pub method: Method,
    /// CPU time of the sending thread.
    pub cpu: Duration,
}

impl BlastReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn set_int(fd: i32, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes each datagram's sequence number at its start.
fn number(buf: &mut [u8], size: usize, first: u64, k: usize) {
    if size < 8 {
        return;
    }
    for i in 0..k {
        let at = i * size;
        buf[at..at + 8].copy_from_slice(&(first + i as u64).to_le_bytes());
    }
}

/// A send failed: go on (buffer full, interrupted), or stop with a message.
fn send_error(e: io::Error, addr: SocketAddr, sent: u64) -> Result<(), String> {
    match e.raw_os_error() {
        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
            thread::yield_now();
            Ok(())
        }
        Some(libc::ECONNREFUSED) => Err(format!(
            "{addr} refused the datagrams (nothing is receiving there) after {sent} were sent"
        )),
        _ => Err(format!("sending to {addr}: {e} (after {sent} datagrams)")),
    }
}

/// Sends as `cfg` says, then the end marker; returns what was sent.
pub fn blast(cfg: &BlastConfig) -> Result<BlastReport, String> {
    blast_flows(cfg, 1)
}

/// Most flows of one blast.
pub const MAX_FLOWS: usize = 1024;

/// [`blast`] from `flows` sockets (flows), each on a thread of its own: a
/// `--count` is split between them, a `--duration` is each one's. Once all
/// are done, every flow sends the end marker with the total sent, so that
/// each socket of a reuseport group a flow hashed to sees it.
pub fn blast_flows(cfg: &BlastConfig, flows: usize) -> Result<BlastReport, String> {
    cfg.validate()?;
    crate::args::bounded("flows", flows, MAX_FLOWS)?;
    if let Some(n) = cfg.count.filter(|&n| n < flows as u64) {
        return Err(format!(
            "--count {n} is fewer datagrams than --flows {flows}"
        ));
    }
    let socks = (0..flows)
        .map(|_| open(cfg))
        .collect::<Result<Vec<_>, _>>()?;
    let share = |i: usize| {
        cfg.count
            .map(|n| n / flows as u64 + u64::from((i as u64) < n % flows as u64))
    };
    // Flow 0 runs on this thread (as a one-flow blast always did), the
    // others on threads of their own.
    let (outcomes, socks) = thread::scope(|s| {
        let others: Vec<_> = socks[1..]
            .iter()
            .enumerate()
            .map(|(i, sock)| s.spawn(move || send_flow(cfg, sock, share(i + 1))))
            .collect();
        let mut outcomes = vec![send_flow(cfg, &socks[0], share(0))];
        for h in others {
            outcomes.push(
                h.join()
                    .unwrap_or_else(|_| Err("a sender thread panicked".into())),
            );
        }
        (outcomes, &socks)
    });
    let mut total: Option<BlastReport> = None;
    let mut first_error = None;
    for o in outcomes {
        match o {
            Ok(r) => {
                total = Some(match total {
                    None => r,
                    Some(t) => BlastReport {
                        sent: t.sent + r.sent,
                        elapsed: t.elapsed.max(r.elapsed),
                        calls: t.calls + r.calls,
                        method: t.method,
                        cpu: t.cpu + r.cpu,
                    },
                })
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let sent = total.as_ref().map_or(0, |t| t.sent);
    // The marker is one datagram of its own size: no segmentation.
    for sock in socks {
        let _ = set_int(sock.as_raw_fd(), libc::IPPROTO_UDP, UDP_SEGMENT, 0);
    }
    let end = marker(cfg.size, sent);
    let mut waited = 0;
    for at in [0u64, 1, 2, 5, 10, 20, 50] {
        thread::sleep(Duration::from_millis(at - waited));
        waited = at;
        for sock in socks {
            let _ = sock.send(&end);
        }
    }
    match (first_error, total) {
        (Some(e), _) => Err(e),
        (None, Some(t)) => Ok(t),
        (None, None) => Err("no flow ran".into()),
    }
}

/// A sender socket connected to `cfg.addr`.
fn open(cfg: &BlastConfig) -> Result<UdpSocket, String> {
    let local: SocketAddr = if cfg.addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).map_err(|e| format!("binding the sender: {e}"))?;
    sock.connect(cfg.addr)
        .map_err(|e| format!("--addr {}: {e}", cfg.addr))?;
    let _ = set_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    Ok(sock)
}

/// One flow: sends `count` datagrams (or for `cfg.duration`) on `sock`.
fn send_flow(
    cfg: &BlastConfig,
    sock: &UdpSocket,
    count: Option<u64>,
) -> Result<BlastReport, String> {
    if let Some(cpu) = cfg.pin {
        measure::pin(&[cpu]);
    }
    let fd = sock.as_raw_fd();
    let size = cfg.size;
    let segments = (MAX_UDP / size).clamp(1, MAX_SEGMENTS);
    let mut method = Method::Sendmmsg;
    if cfg.gso && segments > 1 && set_int(fd, libc::IPPROTO_UDP, UDP_SEGMENT, size as i32).is_ok() {
        method = Method::Gso(segments);
    }
    let per_call = match method {
        Method::Gso(n) => n,
        Method::Sendmmsg => MMSG,
    };
    let mut buf: Vec<u8> = (0..per_call * size).map(|i| (i % 251) as u8).collect();
    let limit = count.unwrap_or(u64::MAX);
    let cpu0 = cpu_time(Scope::Thread);
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let (mut sent, mut calls) = (0u64, 0u64);
    let mut result = Ok(());
    while sent < limit && deadline.is_none_or(|d| Instant::now() < d) {
        let k = (limit - sent).min(per_call as u64) as usize;
        number(&mut buf, size, sent, k);
        calls += 1;
        match method {
            Method::Gso(_) => {
                // SAFETY: sends the first k * size bytes of `buf`.
                let r =
                    unsafe { libc::send(fd, buf.as_ptr().cast(), k * size, libc::MSG_NOSIGNAL) };
                if r >= 0 {
                    sent += k as u64;
                    continue;
                }
                let e = io::Error::last_os_error();
                if sent == 0 && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) {
                    // GSO refused at send time (no checksum offload): fall back.
                    let _ = set_int(fd, libc::IPPROTO_UDP, UDP_SEGMENT, 0);
                    method = Method::Sendmmsg;
                    buf = (0..MMSG * size).map(|i| (i % 251) as u8).collect();
                    continue;
                }
                if let Err(e) = send_error(e, cfg.addr, sent) {
                    result = Err(e);
                    break;
                }
            }
            Method::Sendmmsg => match sendmmsg(fd, &buf, size, k) {
                Ok(n) => sent += n as u64,
                Err(e) => {
                    if let Err(e) = send_error(e, cfg.addr, sent) {
                        result = Err(e);
                        break;
                    }
                }
            },
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time(Scope::Thread).saturating_sub(cpu0);
    result?;
    Ok(BlastReport {
        sent,
        elapsed,
        calls,
        method,
        cpu,
    })
}

/// Sends `k` datagrams of `size` from the start of `buf` in one sendmmsg.
fn sendmmsg(fd: i32, buf: &[u8], size: usize, k: usize) -> io::Result<usize> {
    let k = k.min(MMSG).min(buf.len() / size);
    // SAFETY: zeroed iovec/mmsghdr are valid (null pointers, zero lengths).
    let mut iov: [libc::iovec; MMSG] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MMSG] = unsafe { std::mem::zeroed() };
    for i in 0..k {
        iov[i] = libc::iovec {
            iov_base: buf[i * size..].as_ptr() as *mut libc::c_void,
            iov_len: size,
        };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at one iovec inside `buf`, which the
    // kernel only reads, for the duration of the call.
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), k as u32, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `ringport load udp-blast`.
pub fn run(cfg: BlastConfig, flows: usize) -> Result<(), String> {
    cfg.validate()?;
    let r = blast_flows(&cfg, flows)?;
    let how = match r.method {
        Method::Gso(n) => format!("UDP GSO, {n} datagrams per send"),
        Method::Sendmmsg => format!("sendmmsg, {MMSG} datagrams per call"),
    };
    println!(
        "udp-blast to {}: {}-byte datagrams, {how}, {flows} flow(s)",
        cfg.addr, cfg.size
    );
    println!(
        "sent {} datagrams in {:.3} s: {:.0} datagrams/s ({} calls, cpu {:.3} µs per datagram), \
         then the end marker",
        r.sent,
        r.elapsed.as_secs_f64(),
        r.rate(),
        r.calls,
        r.cpu.as_secs_f64() * 1e6 / r.sent.max(1) as f64
    );
    Ok(())
}
