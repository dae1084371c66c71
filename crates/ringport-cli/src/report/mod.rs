//! One data model for what every `bench` prints: the tables, every round of
//! every peer, the charts to draw from those rounds, and the machine and
//! command they came from. A bench fills a [`Report`] instead of printing;
//! stdout, `--json`, `--svg` and `ringport report` all render the same
//! value, so a figure in BENCHMARKS.md is the figure the run printed.

mod machine;
pub mod markdown;
pub mod regen;
pub mod svg;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use machine::{utc_now, Machine};

/// [`Report::format`] as written by this build.
pub const FORMAT: u32 = 1;

/// Everything one `ringport bench …` run measured and printed.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Report {
    /// This layout's version, raised when a field changes meaning.
    #[serde(default)]
    pub format: u32,
    /// The bench's name: port, tcp, udp, rio, file.
    pub bench: String,
    /// The command line, as given.
    pub command: String,
    /// When the run started and ended, UTC (ISO 8601).
    pub started: String,
    pub finished: String,
    /// A `--quick` run: a smoke test, not a figure to quote.
    pub quick: bool,
    pub machine: Machine,
    /// The lines printed before the tables: what ran, and how.
    pub settings: Vec<String>,
    pub tables: Vec<Table>,
    /// Every round of every peer, with its raw figures.
    pub runs: Vec<RunRecord>,
    /// What `--svg` draws: ratios computed from `runs`.
    pub charts: Vec<Chart>,
}

/// A table as printed: a title, column heads, rows of cells, and lines that
/// follow it (targets met or not, …).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One cell: the text printed, and the number(s) behind it, so that a
/// reader of the JSON need not parse "1.23×" or "10–20".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Cell {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// JSON has no NaN or infinity: a figure that is not a number is left out.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell {
            text: s.into(),
            ..Cell::default()
        }
    }

    /// `v` with `prec` decimals.
    pub fn num(v: f64, prec: usize) -> Cell {
        Cell {
            text: format!("{v:.prec$}"),
            value: finite(v),
            ..Cell::default()
        }
    }

    /// A ratio, printed as `1.23×`.
    pub fn ratio(v: f64) -> Cell {
        Cell {
            text: format!("{v:.2}×"),
            value: finite(v),
            ..Cell::default()
        }
    }

    /// The spread of the rounds, printed as `lo–hi`.
    pub fn range(values: &[f64], prec: usize) -> Cell {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Cell {
            text: format!("{lo:.prec$}–{hi:.prec$}"),
            min: finite(lo),
            max: finite(hi),
            ..Cell::default()
        }
    }
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Table::default()
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }
}

/// One round of one peer in one part of a bench, with the figures it gave
/// (by their names in the bench's source, units in the name).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RunRecord {
    /// The part of the bench (flood, bursty, latency, echo, sink, reads).
    pub part: String,
    /// A case within the part (e.g. "4 consumers"), or empty.
    #[serde(default)]
    pub case: String,
    /// 1-based; rounds are interleaved, so round N of two peers ran close
    /// together in time.
    pub round: usize,
    pub peer: String,
    pub figures: BTreeMap<String, f64>,
}

impl RunRecord {
    pub fn new(part: &str, case: &str, round: usize, peer: &str) -> RunRecord {
        RunRecord {
            part: part.into(),
            case: case.into(),
            round,
            peer: peer.into(),
            figures: BTreeMap::new(),
        }
    }

    /// Adds a figure, unless it is not a number (JSON could not hold it).
    pub fn with(mut self, name: &str, v: f64) -> RunRecord {
        if let Some(v) = finite(v) {
            self.figures.insert(name.into(), v);
        }
        self
    }

    pub fn with_opt(self, name: &str, v: Option<f64>) -> RunRecord {
        match v {
            Some(v) => self.with(name, v),
            None => self,
        }
    }
}

/// A chart of ratios: for each pair, `num`'s figure over `den`'s in the
/// same round, with the spread of the rounds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Chart {
    pub title: String,
    /// Which runs: their part and figure.
    pub part: String,
    pub figure: String,
    /// Whether a ratio above 1 is good for the numerator.
    pub higher_is_better: bool,
    pub pairs: Vec<Pair>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Pair {
    #[serde(default)]
    pub case: String,
    pub num: String,
    pub den: String,
}

impl Chart {
    /// Every `nums` over every `dens` (a peer is never its own pair), in
    /// each case.
    pub fn new(
        title: impl Into<String>,
        part: &str,
        figure: &str,
        higher_is_better: bool,
        cases: &[String],
        nums: &[&str],
        dens: &[&str],
    ) -> Chart {
        let mut pairs = Vec::new();
        for case in cases {
            for num in nums {
                for den in dens.iter().filter(|d| *d != num) {
                    pairs.push(Pair {
                        case: case.clone(),
                        num: num.to_string(),
                        den: den.to_string(),
                    });
                }
            }
        }
        Chart {
            title: title.into(),
            part: part.into(),
            figure: figure.into(),
            higher_is_better,
            pairs,
        }
    }
}

impl Report {
    /// A report for `bench`, with the machine as it is now (its load
    /// average before the run).
    pub fn start(bench: &str, quick: bool) -> Report {
        Report {
            format: FORMAT,
            bench: bench.into(),
            command: machine::command_line(),
            started: utc_now(),
            quick,
            machine: Machine::now(),
            ..Report::default()
        }
    }

    /// Prints a line about the run and keeps it.
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.settings.push(line);
    }

    /// Prints a table and keeps it.
    pub fn table(&mut self, t: Table) {
        println!();
        print!("{}", markdown::table(&t, "## ", ""));
        self.tables.push(t);
    }

    pub fn run(&mut self, r: RunRecord) {
        self.runs.push(r);
    }

    /// Keeps a chart that has something to compare.
    pub fn chart(&mut self, c: Chart) {
        if !c.pairs.is_empty() {
            self.charts.push(c);
        }
    }

    /// Stamps the end of the run (and the load average after it).
    pub fn finish(&mut self) {
        self.finished = utc_now();
        self.machine.load_after = machine::loadavg();
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
    }

    pub fn read_json(path: &Path) -> Result<Report, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The values of `figure` of `peer` in `part`/`case`, by round.
pub fn rounds_of(
    runs: &[RunRecord],
    part: &str,
    case: &str,
    peer: &str,
    figure: &str,
) -> BTreeMap<usize, f64> {
    runs.iter()
        .filter(|r| r.part == part && r.case == case && r.peer == peer)
        .filter_map(|r| Some((r.round, *r.figures.get(figure)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_json_with_nan_left_out() {
        let mut r = Report::start("port", true);
        let mut t = Table::new("t", &["peer", "rate", "min–max", "ratio"]);
        t.row(vec![
            Cell::text("ringport"),
            Cell::num(f64::NAN, 2),
            Cell::range(&[1.0, 3.0, 2.0], 1),
            Cell::ratio(1.5),
        ]);
        r.tables.push(t);
        r.runs.push(
            RunRecord::new("flood", "", 1, "ringport")
                .with("a", 1.0)
                .with("b", f64::NAN),
        );
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.tables, r.tables);
        assert_eq!(back.runs[0].figures.len(), 1);
        let cell = &back.tables[0].rows[0];
        assert_eq!(cell[1].value, None);
        assert_eq!((cell[2].min, cell[2].max), (Some(1.0), Some(3.0)));
        assert_eq!(cell[2].text, "1.0–3.0");
        assert_eq!(cell[3].text, "1.50×");
    }

    #[test]
    fn charts_pair_every_numerator_with_every_other_denominator() {
        let c = Chart::new("c", "p", "f", true, &["".into()], &["a", "b"], &["a", "x"]);
        let pairs: Vec<_> = c.pairs.iter().map(|p| (&*p.num, &*p.den)).collect();
        assert_eq!(pairs, [("a", "x"), ("b", "a"), ("b", "x")]);
    }
}
