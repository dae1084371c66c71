//! `--svg`: each chart of a report as a panel of ratios, one row per pair
//! (ringport over a peer): the ratio of the medians the table prints, each
//! round's own ratio, and the spread of those. Rounds are interleaved, so
//! round N of two peers ran close together in time; their ratio shows how
//! far a single round can be trusted, which a median alone hides.

use std::path::Path;

use plotters::prelude::*;

use super::{rounds_of, Chart, Report};
use crate::measure::median;

/// One row of a panel.
struct Row {
    label: String,
    /// Each round's ratio (the rounds both peers ran).
    rounds: Vec<f64>,
    /// The ratio of the two peers' medians.
    of_medians: f64,
}

fn rows(r: &Report, c: &Chart) -> Vec<Row> {
    c.pairs
        .iter()
        .filter_map(|p| {
            let num = rounds_of(&r.runs, &c.part, &p.case, &p.num, &c.figure);
            let den = rounds_of(&r.runs, &c.part, &p.case, &p.den, &c.figure);
            let rounds: Vec<f64> = num
                .iter()
                .filter_map(|(round, n)| Some(n / den.get(round)?))
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            let of_medians =
                median(num.values().copied().collect()) / median(den.values().copied().collect());
            if rounds.is_empty() || !(of_medians.is_finite() && of_medians > 0.0) {
                return None;
            }
            let pair = format!("{} ÷ {}", p.num, p.den);
            Some(Row {
                label: if p.case.is_empty() {
                    pair
                } else {
                    format!("{}: {pair}", p.case)
                },
                rounds,
                of_medians,
            })
        })
        .collect()
}

const WIDTH: u32 = 900;
const ROW: u32 = 26;
/// Caption, axis and its description.
const FRAME: u32 = 130;

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

/// Draws every chart of `r` into one SVG file, a panel each.
pub fn write(r: &Report, path: &Path) -> Result<(), String> {
    let panels: Vec<(&Chart, Vec<Row>)> = r
        .charts
        .iter()
        .map(|c| (c, rows(r, c)))
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    let heights: Vec<u32> = panels
        .iter()
        .map(|(_, rows)| FRAME + ROW * rows.len() as u32)
        .collect();
    let total = heights.iter().sum::<u32>().max(120) + 40;
    let root = SVGBackend::new(path, (WIDTH, total)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, mut rest) = root.split_vertically(40);
    head.draw(&Text::new(
        format!(
            "ringport bench {} — {}, commit {}, {} CPUs, backend {}{}",
            r.bench,
            r.started,
            r.machine.commit,
            r.machine.cpus,
            r.machine.backend,
            if r.quick {
                " (--quick: not a figure)"
            } else {
                ""
            }
        ),
        (10, 12),
        ("sans-serif", 15).into_font(),
    ))
    .map_err(err)?;
    if panels.is_empty() {
        rest.draw(&Text::new(
            "nothing to compare: no peer ran beside ringport",
            (10, 20),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(err)?;
    }
    // One width for every panel's labels, so that their axes line up.
    let labels = panels
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.label.chars().count()))
        .max()
        .unwrap_or(10) as u32
        * 7
        + 20;
    for ((chart, rows), h) in panels.iter().zip(heights) {
        let (area, below) = rest.split_vertically(h);
        panel(&area, chart, rows, labels.min(WIDTH / 2))?;
        rest = below;
    }
    root.present().map_err(err)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
    rows: &[Row],
    label_width: u32,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let all = rows
        .iter()
        .flat_map(|r| r.rounds.iter().copied().chain([r.of_medians]));
    // From zero, so that lengths compare: twice as far is twice the ratio.
    let hi = all.fold(1.0f64, f64::max) * 1.15;
    // Rows at 0..n, first at the top, and an empty step above and below so
    // that no mark sits on the frame; a tick at every step.
    let n = rows.len() as i32;
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0.0..hi, -1..n)
        .map_err(err)?;
    let better = if chart.higher_is_better {
        "above 1: ringport better"
    } else {
        "below 1: ringport better"
    };
    ctx.configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(rows.len() + 2)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 12))
        .y_label_formatter(&|v| match v {
            &i if (0..n).contains(&i) => rows[(n - 1 - i) as usize].label.clone(),
            _ => String::new(),
        })
        .x_labels(12)
        .x_label_formatter(&|v| format!("{v:.1}×"))
        .x_desc(format!(
            "{} ratio ({better}); ● ratio of the medians, ○ each round, bar: their spread",
            chart.figure
        ))
        .draw()
        .map_err(err)?;
    // The first row at the top, as in the table.
    let at = |i: usize| n - 1 - i as i32;
    // Parity.
    ctx.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, -1), (1.0, n)],
        BLACK.stroke_width(1),
    )))
    .map_err(err)?;
    let colour = |r: &Row| {
        let good = (r.of_medians >= 1.0) == chart.higher_is_better;
        if good {
            RGBColor(0x1a, 0x7f, 0x37)
        } else {
            RGBColor(0xb3, 0x26, 0x1e)
        }
    };
    ctx.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let min = r.rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        PathElement::new(vec![(min, at(i)), (max, at(i))], colour(r).stroke_width(2))
    }))
    .map_err(err)?;
    ctx.draw_series(rows.iter().enumerate().flat_map(|(i, r)| {
        let c = colour(r);
        r.rounds
            .iter()
            .map(move |&v| Circle::new((v, at(i)), 4, c.stroke_width(1)))
    }))
    .map_err(err)?;
    ctx.draw_series(
        rows.iter()
            .enumerate()
            .map(|(i, r)| Circle::new((r.of_medians, at(i)), 6, colour(r).filled())),
    )
    .map_err(err)?;
    ctx.draw_series(rows.iter().enumerate().map(|(i, r)| {
        // Beside the mark, above the bar.
        EmptyElement::at((r.of_medians, at(i)))
            + Text::new(
                format!("{:.2}×", r.of_medians),
                (8, -16),
                ("sans-serif", 12).into_font(),
            )
    }))
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Chart, RunRecord};

    #[test]
    fn a_chart_of_rounds_and_medians() {
        let mut r = Report::start("port", true);
        for (round, a, b) in [(1, 2.0, 1.0), (2, 3.0, 2.0), (3, 4.0, 4.0)] {
            r.runs
                .push(RunRecord::new("p", "", round, "ringport").with("f", a));
            r.runs
                .push(RunRecord::new("p", "", round, "peer").with("f", b));
        }
        r.chart(Chart::new(
            "t",
            "p",
            "f",
            true,
            &[String::new()],
            &["ringport"],
            &["peer"],
        ));
        let rows = rows(&r, &r.charts[0]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].rounds, [2.0, 1.5, 1.0]);
        assert_eq!(rows[0].of_medians, 1.5);
        let path = std::env::temp_dir().join(format!("ringport-svg-{}.svg", std::process::id()));
        write(&r, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("ringport ÷ peer") && svg.contains("1.50×"));
    }
}
