//! Every bench's `--quick` run, as CI's smoke test of the benchmarks: it
//! must finish, write a JSON report with every part of the model and an SVG
//! chart; then `ringport report` must put those reports into a hand-written
//! document between its markers and leave the rest alone.
//!
//! One test, the benches one after another: run side by side on a small
//! machine they would only slow each other down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{have_sockperf, ringport_with, run, text};

const BENCHES: [&str; 5] = ["port", "tcp", "udp", "rio", "file"];

/// A directory of its own under the system's temporary one, removed when
/// dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("ringport-bench-quick-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_json(bench: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{bench}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{bench}: {e}"));
    assert_eq!(v["bench"], bench);
    assert_eq!(v["quick"], true);
    let command = v["command"].as_str().expect("command");
    assert!(
        command.contains(&format!("bench {bench} --quick")),
        "{command}"
    );
    for key in ["started", "finished"] {
        assert!(v[key].as_str().is_some_and(|s| s.ends_with('Z')), "{key}");
    }
    let m = &v["machine"];
    assert!(m["cpus"].as_u64().is_some_and(|n| n >= 1), "{m}");
    for key in ["cpu_model", "kernel", "backend", "commit"] {
        assert!(m[key].as_str().is_some_and(|s| !s.is_empty()), "{key}: {m}");
    }
    for key in ["load_before", "load_after"] {
        assert_eq!(m[key].as_array().map(Vec::len), Some(3), "{key}: {m}");
    }
    assert!(!v["settings"].as_array().expect("settings").is_empty());
    let tables = v["tables"].as_array().expect("tables");
    assert!(!tables.is_empty(), "{bench}: no table");
    for t in tables {
        let columns = t["columns"].as_array().expect("columns").len();
        let rows = t["rows"].as_array().expect("rows");
        assert!(!rows.is_empty(), "{bench}: an empty table {t}");
        for row in rows {
            let cells = row.as_array().expect("row");
            assert_eq!(cells.len(), columns, "{bench}: {row}");
            assert!(cells.iter().all(|c| c["text"].is_string()), "{row}");
        }
    }
    // Somewhere a ratio, with its number beside the text.
    let ratio = tables
        .iter()
        .flat_map(|t| t["rows"].as_array().into_iter().flatten())
        .flat_map(|r| r.as_array().into_iter().flatten())
        .find(|c| c["text"].as_str().is_some_and(|s| s.ends_with('×')))
        .unwrap_or_else(|| panic!("{bench}: no ratio in any table"));
    assert!(ratio["value"].is_f64(), "{ratio}");
    let runs = v["runs"].as_array().expect("runs");
    assert!(runs.len() >= 2, "{bench}: {} runs", runs.len());
    for r in runs {
        assert_eq!(r["round"], 1, "{r}");
        assert!(r["peer"].is_string() && r["part"].is_string(), "{r}");
        let figures = r["figures"].as_object().expect("figures");
        assert!(
            !figures.is_empty() && figures.values().all(Value::is_f64),
            "{r}"
        );
    }
    assert!(!v["charts"].as_array().expect("charts").is_empty());
}

#[test]
fn every_bench_quick_writes_json_and_svg_and_report_places_them() {
    let dir = TempDir::new();
    let json_dir = dir.0.join("results");
    std::fs::create_dir_all(&json_dir).expect("mkdir");
    // bench sockperf drives the sockperf program: left out where it is absent.
    let sockperf = have_sockperf().then_some("sockperf");
    for bench in BENCHES.into_iter().chain(sockperf) {
        let json = json_dir.join(format!("{bench}.json"));
        let svg = dir.0.join(format!("{bench}.svg"));
        let mut cmd = ringport_with(&format!("bench {bench} --quick"));
        cmd.arg("--json").arg(&json).arg("--svg").arg(&svg);
        let t = Instant::now();
        let out = run(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "bench {bench} --quick: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!("bench {bench} --quick: {:.1} s", t.elapsed().as_secs_f64());
        check_json(bench, &json);
        let chart = std::fs::read_to_string(&svg).expect("the SVG");
        assert!(
            chart.starts_with("<svg") || chart.starts_with("<?xml"),
            "{bench}: {}",
            &chart[..chart.len().min(200)]
        );
        assert!(chart.contains("÷"), "{bench}: no ratio drawn");
    }

    // A hand-written document with markers for two of them.
    let doc = dir.0.join("BENCHMARKS.md");
    let prose = "# Benchmarks\n\nWritten by hand.\n\n<!-- report:tcp -->\nstale\n\
                 <!-- /report:tcp -->\n\nBetween.\n\n<!-- report:port -->\n<!-- /report:port -->\n\
                 \nThe end.\n";
    std::fs::write(&doc, prose).expect("writing the document");
    let mut cmd = ringport_with("report --json-dir");
    cmd.arg(&json_dir).arg("--out").arg(&doc);
    let out = run(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let updated = std::fs::read_to_string(&doc).expect("reading the document");
    assert!(!updated.contains("stale"), "{updated}");
    let at = |s: &str| {
        updated
            .find(s)
            .unwrap_or_else(|| panic!("no {s:?} in\n{updated}"))
    };
    // The prose stays where it was, each section inside its markers.
    assert!(at("Written by hand.") < at("<!-- report:tcp -->"));
    assert!(at("<!-- report:tcp -->") < at("| ringport / tokio |"));
    assert!(at("| ringport / tokio |") < at("<!-- /report:tcp -->"));
    assert!(at("<!-- /report:tcp -->") < at("Between."));
    assert!(at("Between.") < at("<!-- report:port -->"));
    assert!(at("<!-- report:port -->") < at("**Flood: "));
    assert!(at("<!-- /report:port -->") < at("The end."));
    // The others, which had no markers, after everything.
    for bench in ["file", "rio", "udp"] {
        assert!(at("The end.") < at(&format!("<!-- report:{bench} -->")));
    }
    assert!(updated.contains("bench file --quick"), "no command line");
    assert!(updated.contains("load average"), "no load average");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("report:rio"), "{stderr}");
    // Run again: nothing changes.
    let mut cmd = ringport_with("report --json-dir");
    cmd.arg(&json_dir).arg("--out").arg(&doc);
    assert!(run(cmd, Duration::from_secs(30)).status.success());
    assert_eq!(std::fs::read_to_string(&doc).expect("reading"), updated);
}
