//! Drawing a [`Recording`]: a lane per worker above the number of active
//! threads against the limit (plotters, SVG).

use std::path::Path;

use plotters::prelude::*;

use super::{Findings, Recording};

const WOKEN: RGBColor = RGBColor(230, 110, 0);
const QUEUED: RGBColor = RGBColor(40, 90, 200);
const ACTIVE: RGBColor = RGBColor(150, 185, 235);
const BLOCKED: RGBColor = RGBColor(170, 170, 170);
const LIMIT: RGBColor = RGBColor(200, 30, 30);

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// What the first wake-ups say about LIFO, in words.
pub fn lifo_line(f: &Findings) -> String {
    match (f.first_woken, f.first_woken_lifo) {
        (0, _) => "no thread was woken out of the first stack of waiters".into(),
        (n, true) => format!(
            "the {n} thread(s) woken out of the first stack of waiters were the {n} that parked \
             last (LIFO)"
        ),
        (n, false) => format!(
            "{n} thread(s) woken out of the first stack of waiters, not all of them the last \
             to park"
        ),
    }
}

/// Draws `rec` as an SVG at `path`: a lane per worker above the number of
/// active threads against the limit.
pub fn draw(rec: &Recording, path: &Path) -> Result<(), String> {
    draw_svg(rec, path).map_err(|e| format!("drawing {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_svg(rec: &Recording, path: &Path) -> DrawResult {
    let lanes = rec.lanes.len().max(1);
    // One row per worker, and the main thread's posts (if any) on top.
    let posts = !rec.posted.is_empty();
    let rows = lanes + usize::from(posts);
    let x_desc = if posts {
        "µs since the first post"
    } else {
        "µs since the window's first packet"
    };
    let lane_px = 34u32;
    let top_h = 110 + lane_px * rows as u32;
    let bottom_h = 230u32;
    let width = 1200u32;
    let root = SVGBackend::new(path, (width, top_h + bottom_h)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(top_h);

    // Time in µs from the first post (or the first take, if earlier).
    let t0 = rec
        .posted
        .iter()
        .copied()
        .chain(
            rec.lanes
                .iter()
                .flat_map(|l| l.takes.iter().map(|t| t.taken)),
        )
        .min()
        .unwrap_or(0);
    let t_end = rec
        .lanes
        .iter()
        .flat_map(|l| l.takes.iter().map(|t| t.done))
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    let us = |t: u64| t.saturating_sub(t0) as f64 / 1e3;
    let x_max = us(t_end) * 1.01;
    let f = rec.findings();
    let mut chart = ChartBuilder::on(&top)
        .caption(&rec.title, ("sans-serif", 20))
        .margin(10)
        .margin_right(20)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..x_max, 0f64..rows as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x_desc)
        .draw()?;

    let rank = rec.wait_rank();
    let label = ("sans-serif", 13).into_font().color(&BLACK);
    if posts {
        let y = lanes as f64 + 0.5;
        let (px, py) = chart.backend_coord(&(0.0, y));
        top.draw(&Text::new(
            format!("main thread: {} posts", rec.posted.len()),
            (px - 245, py - 7),
            label.clone(),
        ))?;
        chart.draw_series(rec.posted.iter().map(|&p| {
            PathElement::new(
                vec![(us(p), y - 0.25), (us(p), y + 0.25)],
                BLACK.stroke_width(1),
            )
        }))?;
    }
    for (lane, l) in rec.lanes.iter().enumerate() {
        // Lane 0 at the top.
        let y = (lanes - 1 - lane) as f64 + 0.5;
        let woken = l.takes.iter().filter(|t| rec.woken(t)).count();
        let (px, py) = chart.backend_coord(&(0.0, y));
        let text = match (posts, l.missed) {
            (true, _) => format!(
                "worker {lane}: {} packets, {woken} woken; waited {}",
                l.takes.len(),
                ordinal(rank[lane] + 1)
            ),
            (false, 0) => format!("worker {lane}: {} packets, {woken} woken", l.takes.len()),
            (false, m) => format!(
                "worker {lane}: {} packets (+{m} unrecorded), {woken} woken",
                l.takes.len()
            ),
        };
        top.draw(&Text::new(text, (px - 245, py - 7), label.clone()))?;
        chart.draw_series(l.takes.iter().map(|t| {
            Rectangle::new(
                [(us(t.taken), y - 0.2), (us(t.done), y + 0.2)],
                ACTIVE.filled(),
            )
        }))?;
        chart.draw_series(l.takes.iter().filter(|t| t.blocked != (0, 0)).map(|t| {
            Rectangle::new(
                [(us(t.blocked.0), y - 0.2), (us(t.blocked.1), y + 0.2)],
                BLOCKED.filled(),
            )
        }))?;
        chart.draw_series(
            l.takes
                .iter()
                .filter(|t| !rec.woken(t))
                .map(|t| Circle::new((us(t.taken), y), 3, QUEUED.filled())),
        )?;
        chart.draw_series(
            l.takes
                .iter()
                .filter(|t| rec.woken(t))
                .map(|t| Circle::new((us(t.taken), y), 5, WOKEN.filled())),
        )?;
        // Number the woken marks (the item each post handed over) where
        // there is room.
        let mut last_px: Option<i32> = None;
        for t in l.takes.iter().filter(|t| rec.woken(t)) {
            let (x, yy) = chart.backend_coord(&(us(t.taken), y));
            if last_px.is_none_or(|p| x - p >= 22) {
                top.draw(&Text::new(
                    format!("{}", t.item),
                    (x - 4, yy - 19),
                    ("sans-serif", 11).into_font().color(&WOKEN),
                ))?;
                last_px = Some(x);
            }
        }
    }
    // The number of active threads, a step line, against the limit.
    // Twice the headroom the count needs: the legend sits in the top half.
    let y_max = (2 * (rec.lanes.len().max(rec.limit) + 1)) as f64;
    let about_lifo = if posts {
        format!("; {}", lifo_line(&f))
    } else {
        format!(
            "; {} packets taken by a thread that waited for them",
            f.woken
        )
    };
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            format!(
                "threads active (at most {} at once, limit {}){about_lifo}",
                f.max_active, rec.limit
            ),
            ("sans-serif", 15),
        )
        .margin(10)
        .margin_right(20)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .y_labels((y_max as usize).min(12))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("active threads")
        .x_desc(x_desc)
        .draw()?;
    let mut points = vec![(0.0, 0.0)];
    let mut n = 0i64;
    for (t, d) in rec.active_steps() {
        points.push((us(t), n as f64));
        n += d;
        points.push((us(t), n as f64));
    }
    points.push((x_max, n as f64));
    chart
        .draw_series(LineSeries::new(points, QUEUED.stroke_width(2)))?
        .label("active threads")
        .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], QUEUED.stroke_width(2)));
    // Legend entries for the marks (drawn in the lanes above), in this
    // chart's legend, where the lanes' marks stay uncovered.
    let woken_label = match rec.waited_ns {
        Some(w) => format!(
            "taken by a thread the port woke: its get waited ≥ {} µs (number: the packet's key)",
            w / 1000
        ),
        None => "taken by a thread a post released (number: the item it took)".into(),
    };
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label(woken_label)
        .legend(|(x, y)| Circle::new((x, y), 5, WOKEN.filled()));
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("taken from the queue by a thread back at get")
        .legend(|(x, y)| Circle::new((x, y), 3, QUEUED.filled()));
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
        .label("active (packet taken, next get not yet called)")
        .legend(|(x, y)| Rectangle::new([(x - 6, y - 4), (x + 6, y + 4)], ACTIVE.filled()));
    if rec
        .lanes
        .iter()
        .flat_map(|l| &l.takes)
        .any(|t| t.blocked != (0, 0))
    {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label("in port.blocking (printing): its slot is free")
            .legend(|(x, y)| Rectangle::new([(x - 6, y - 4), (x + 6, y + 4)], BLOCKED.filled()));
    }
    let limit = rec.limit as f64;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, limit), (x_max, limit)],
            8,
            5,
            LIMIT.stroke_width(2),
        ))?
        .label(format!("concurrency limit {}", rec.limit))
        .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], LIMIT.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        let o: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22].map(ordinal).into();
        assert_eq!(
            o,
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"]
        );
    }
}
