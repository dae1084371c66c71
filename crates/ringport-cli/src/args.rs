//! Reading and checking command-line values, the same way in every
//! command: every refusal names the option.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The largest UDP payload over IPv4.
pub const MAX_UDP: usize = 65_507;

/// Parses `5`, `2.5s`, `500ms`, `100us`, `2m` into a duration (a bare number
/// is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 5s, 500ms or 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (s, ms, us, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Resolves a `host:port` string to one address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("--addr {addr:?}: {e} (expected host:port, e.g. 127.0.0.1:7000)"))?
        .next()
        .ok_or_else(|| format!("--addr {addr:?} resolves to no address"))
}

/// Checks that `--{name} {value}` is within `1..=max`.
pub fn bounded(name: &str, value: usize, max: usize) -> Result<(), String> {
    if value == 0 || value > max {
        return Err(format!(
            "--{name} must be 1 to {}, not {value}",
            thousands(max)
        ));
    }
    Ok(())
}

/// `65536` as `65,536`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Why a server cannot bind `addr`, with a hint where there is one.
pub fn bind_error(addr: SocketAddr, e: io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (the port is taken; use another, or port 0)",
        io::ErrorKind::AddrNotAvailable => " (no such local address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        _ => "",
    };
    format!("cannot listen on {addr}: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn bounds_name_the_option_and_the_limit() {
        assert!(bounded("threads", 1, 1024).is_ok());
        assert!(bounded("threads", 1024, 1024).is_ok());
        assert_eq!(
            bounded("pending", 0, 65_536).unwrap_err(),
            "--pending must be 1 to 65,536, not 0"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
