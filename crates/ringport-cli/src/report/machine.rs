//! The machine a report was taken on, and when: what a reader needs to
//! judge whether two reports can be compared at all.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Machine {
    /// Processors listed in /proc/cpuinfo (all of them, not only those this
    /// process may use).
    pub cpus: usize,
    /// The first "model name" of /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// The backend ringport's ports ran on.
    pub backend: String,
    /// `git rev-parse --short HEAD` of the source tree the binary was built
    /// from (else of where the command ran), or "unknown".
    pub commit: String,
    /// Uncommitted changes in that work tree (false when unknown), reports
    /// and documents aside: a run of several benches rewrites the committed
    /// reports in `bench-results/` one after the other, which changes no
    /// code.
    #[serde(default)]
    pub dirty: bool,
    /// /proc/loadavg's 1, 5 and 15 minute averages: a machine that was busy
    /// before or after the run makes its figures suspect.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
}

impl Machine {
    pub fn now() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str| line.split_once(':').map(|(_, v)| v.trim().to_string());
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        // Arm kernels name the part elsewhere than x86 ones.
        let cpu_model = ["model name", "Hardware", "CPU part"]
            .iter()
            .find_map(|key| cpuinfo.lines().find(|l| l.starts_with(key)).and_then(field))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        // The source tree this binary was built from, where it still is;
        // else wherever the command runs.
        let git = |args: &[&str]| {
            [Some(env!("CARGO_MANIFEST_DIR")), None]
                .into_iter()
                .find_map(|dir| {
                    let mut cmd = Command::new("git");
                    if let Some(d) = dir {
                        cmd.args(["-C", d]);
                    }
                    cmd.args(args)
                        .stderr(std::process::Stdio::null())
                        .output()
                        .ok()
                        .filter(|o| o.status.success())
                })
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench-results",
            ":!*.md",
        ])
        .is_some_and(|s| !s.is_empty());
        Machine {
            cpus: if cpus > 0 {
                cpus
            } else {
                ringport::cpu_count()
            },
            cpu_model,
            kernel,
            backend: crate::bench::backend_name(),
            commit,
            dirty,
            load_before: loadavg(),
            load_after: [0.0; 3],
        }
    }
}

/// The 1, 5 and 15 minute load averages (zeros if unreadable).
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|s| s.parse().unwrap_or(0.0));
    [(); 3].map(|_| v.next().unwrap_or(0.0))
}

/// The command line as given, quoted where a shell would need it, so that
/// it can be pasted to run the same thing again.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@%".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now, UTC, as `2026-11-30T06:26:56Z`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (no
    // dates before the epoch can come from SystemTime::now here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_013_296), "2026-11-30T04:34:56Z");
    }

    #[test]
    fn the_machine_is_described() {
        let m = Machine::now();
        assert!(m.cpus >= 1);
        assert!(!m.kernel.is_empty() && !m.cpu_model.is_empty());
        assert!(m.load_before.iter().all(|l| *l >= 0.0));
    }
}
