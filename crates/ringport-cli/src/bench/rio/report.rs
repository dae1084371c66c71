//! The tables, runs and chart of `bench rio`, from its samples.

use super::{med, Mode, Sample, Which};
use crate::report::{Cell, Chart, Report, RunRecord, Table};

pub(super) fn report(servers: &[Which], samples: &[Vec<Sample>], pin: bool, out: &mut Report) {
    for (w, v) in servers.iter().zip(samples) {
        for (i, s) in v.iter().enumerate() {
            out.run(
                RunRecord::new("sink", "", i + 1, w.name())
                    .with("datagrams_per_s", s.rate)
                    .with("sent_per_s", s.sent_rate)
                    .with("loss_pct", s.loss)
                    .with("cpu_us_per_datagram", s.cpu_us)
                    .with_opt("all_threads_cpu_us_per_datagram", s.all_cpu_us)
                    .with_opt("syscalls_per_datagram", s.syscalls),
            );
        }
    }
    let mut columns = vec![
        "server",
        "datagrams/s received (median)",
        "min–max",
        "sent/s",
        "loss %",
        "CPU µs/datagram",
        "CPU µs/datagram min–max",
    ];
    if pin {
        columns.push("all server threads CPU µs/datagram");
    }
    columns.push("system calls/datagram");
    let mut t = Table::new(
        format!(
            "UDP sinks: median of {} interleaved rounds",
            samples[0].len()
        ),
        &columns,
    );
    let mut rows = Vec::new();
    for (w, v) in servers.iter().zip(samples) {
        let rate = med(v, |s| s.rate);
        let cpu = med(v, |s| s.cpu_us);
        let all = pin.then(|| med(v, |s| s.all_cpu_us.unwrap_or(f64::NAN)));
        let calls = if v.iter().all(|s| s.syscalls.is_some()) {
            Some(med(v, |s| s.syscalls.unwrap_or(0.0)))
        } else {
            None
        };
        let mut row = vec![
            Cell::text(w.name()),
            Cell::num(rate, 0),
            Cell::range(&v.iter().map(|s| s.rate).collect::<Vec<_>>(), 0),
            Cell::num(med(v, |s| s.sent_rate), 0),
            Cell::num(med(v, |s| s.loss), 1),
            Cell::num(cpu, 3),
            Cell::range(&v.iter().map(|s| s.cpu_us).collect::<Vec<_>>(), 3),
        ];
        if let Some(a) = all {
            row.push(Cell::num(a, 3));
        }
        row.push(calls.map_or_else(|| Cell::text("–"), |c| Cell::num(c, 4)));
        t.row(row);
        rows.push((*w, rate, cpu, calls, all));
    }
    out.table(t);
    let find = |x: Which| rows.iter().find(|r| r.0 == x).copied();
    for (base_name, base) in [
        ("port", find(Which::Mode(Mode::Port))),
        ("tokio", find(Which::Tokio)),
        ("recvmmsg", find(Which::Recvmmsg)),
    ] {
        let Some((_, brate, bcpu, _, ball)) = base else {
            continue;
        };
        let per_datagram = format!("datagrams/s ÷ {base_name}");
        let per_cpu = format!("CPU per datagram ÷ {base_name}");
        let all_threads = format!("all threads' CPU ÷ {base_name}");
        let mut columns = vec!["server", per_datagram.as_str(), per_cpu.as_str()];
        if pin {
            columns.push(all_threads.as_str());
        }
        let mut t = Table::new(format!("Each server over {base_name} (medians)"), &columns);
        for (w, rate, cpu, _, all) in &rows {
            let mut row = vec![
                Cell::text(w.name()),
                Cell::ratio(rate / brate.max(1e-9)),
                Cell::ratio(cpu / bcpu.max(1e-9)),
            ];
            if let (Some(a), Some(b)) = (all, ball) {
                row.push(Cell::ratio(a / b.max(1e-9)));
            }
            t.row(row);
        }
        out.table(t);
    }
    let rio: Vec<_> = rows
        .iter()
        .filter(|r| matches!(r.0, Which::Mode(m) if m != Mode::Port))
        .collect();
    let mut targets = Vec::new();
    if let (Some(best), Some((_, prate, _, _, _))) = (
        rio.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
        find(Which::Mode(Mode::Port)),
    ) {
        let ratio = best.1 / prate.max(1e-9);
        targets.push(format!(
            "target 1: best RIO mode ≥ 2.5× the port mode: {} is {:.2}× — {}",
            best.0.name(),
            ratio,
            if ratio >= 2.5 { "met" } else { "NOT met" }
        ));
    }
    if let Some((_, _, _, calls, _)) = find(Which::Mode(Mode::RioPolled)) {
        targets.push(match calls {
            Some(c) => format!(
                "target 2: rio-polled < 0.1 system calls per datagram: {c:.4} — {}",
                if c < 0.1 { "met" } else { "NOT met" }
            ),
            None => "target 2: rio-polled system calls not counted (no tracepoint)".to_string(),
        });
    }
    if !targets.is_empty() {
        println!();
    }
    for line in &targets {
        println!("{line}");
    }
    if let Some(last) = out.tables.last_mut() {
        last.notes.extend(targets);
    }
    // Every ringport mode over each peer that ran (over the port mode when
    // no peer did).
    let names: Vec<&str> = servers.iter().map(|w| w.name()).collect();
    let ours: Vec<&str> = servers
        .iter()
        .filter(|w| matches!(w, Which::Mode(_)))
        .map(|w| w.name())
        .collect();
    let mut theirs: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !ours.contains(n))
        .collect();
    if theirs.is_empty() {
        theirs.push(Mode::Port.name());
    }
    out.chart(Chart::new(
        "CPU per datagram: each ringport mode over each peer (lower is better)",
        "sink",
        "cpu_us_per_datagram",
        false,
        &[String::new()],
        &ours,
        &theirs,
    ));
}
