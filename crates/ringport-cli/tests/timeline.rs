//! `ringport sum --timeline FILE.svg` writes an SVG with a lane per worker,
//! plain and with `--verbose`.

use std::time::Duration;

mod common;
use common::{ringport_with, run, text};

fn timeline(extra: &str, name: &str) -> String {
    // A directory per test: the tests run at once and each removes its own.
    let dir = std::env::temp_dir().join(format!("ringport-timeline-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(name);
    let cmd = ringport_with(&format!(
        "sum --items 40 --chunk 2000 --threads 3 --concurrency 2 {extra} --timeline {}",
        path.display()
    ));
    let out = run(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "sum --timeline failed: {stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("the final results are [3199960000]"),
        "{stdout}"
    );
    assert!(stdout.contains("timeline: "), "{stdout}");
    let svg = std::fs::read_to_string(&path).expect("the SVG was written");
    let _ = std::fs::remove_dir_all(&dir);
    svg
}

/// The lanes' labels: a text element "worker N: …".
fn lanes(svg: &str) -> Vec<usize> {
    let mut found: Vec<usize> = svg
        .match_indices("worker ")
        .filter(|(i, _)| matches!(svg[..*i].chars().last(), Some('>' | '\n')))
        .filter_map(|(i, m)| {
            let rest = &svg[i + m.len()..];
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            rest[n.len()..].starts_with(':').then(|| n.parse().ok())?
        })
        .collect();
    found.sort_unstable();
    found
}

fn check(svg: &str) {
    let head = svg.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "not an SVG: {}",
        &head[..head.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"), "the SVG is cut short");
    assert_eq!(lanes(svg), vec![0, 1, 2], "one lane per worker");
    assert!(svg.contains("concurrency limit 2"));
    assert!(svg.contains("main thread: 40 posts"));
}

#[test]
fn sum_timeline_writes_an_svg_with_a_lane_per_worker() {
    check(&timeline("", "plain.svg"));
}

#[test]
fn verbose_timeline_shows_the_blocking_sections() {
    let svg = timeline("--verbose", "verbose.svg");
    check(&svg);
    assert!(
        svg.contains("in port.blocking"),
        "no blocking section drawn"
    );
}

#[test]
fn timeline_refuses_too_many_items() {
    let out = run(
        ringport_with("sum --items 200000 --chunk 1 --timeline /dev/null"),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--timeline records at most"));
}
