//! BENCHMARKS.md's generated sections are exactly what `ringport report`
//! makes of the committed reports in bench-results/: running it over a copy
//! of the document changes nothing. So a table can be neither edited by
//! hand nor left behind by a new run; to change one, run its bench with
//! `--json bench-results/NAME.json`, then the command at the top of
//! BENCHMARKS.md, and commit both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{ringport_with, run, text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reports() -> Vec<PathBuf> {
    let dir = repo().join("bench-results");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    found.sort();
    found
}

#[test]
fn the_committed_document_is_what_report_makes_of_the_committed_json() {
    let doc = repo().join("BENCHMARKS.md");
    let committed = std::fs::read_to_string(&doc).expect("reading BENCHMARKS.md");
    let dir = std::env::temp_dir().join(format!("ringport-benchmarks-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let copy = dir.join("BENCHMARKS.md");
    std::fs::write(&copy, &committed).expect("copying BENCHMARKS.md");
    let mut cmd = ringport_with("report --json-dir");
    cmd.arg(repo().join("bench-results"))
        .arg("--out")
        .arg(&copy);
    let out = run(cmd, Duration::from_secs(60));
    let regenerated = std::fs::read_to_string(&copy).expect("reading the copy");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "report failed: {}", text(&out.stderr));
    if regenerated != committed {
        let (a, b): (Vec<&str>, Vec<&str>) =
            (committed.lines().collect(), regenerated.lines().collect());
        let first = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "BENCHMARKS.md differs from what `ringport report --json-dir bench-results --out \
             BENCHMARKS.md` makes of it, from line {}:\n  committed:   {:?}\n  regenerated: {:?}\n\
             (run that command and commit the result; {})",
            first + 1,
            a.get(first),
            b.get(first),
            text(&out.stderr).trim()
        );
    }
}

#[test]
fn every_committed_report_is_a_full_run_with_its_markers() {
    let doc = std::fs::read_to_string(repo().join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    let found = reports();
    assert!(!found.is_empty(), "no report in bench-results/");
    for path in found {
        let name = path.file_stem().and_then(|s| s.to_str()).expect("a name");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("reading"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(v["quick"], false, "{name}: a --quick run is not a figure");
        assert!(
            doc.contains(&format!("<!-- report:{name} -->")),
            "BENCHMARKS.md has no <!-- report:{name} --> marker"
        );
    }
}
