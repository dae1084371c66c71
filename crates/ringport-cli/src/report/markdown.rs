//! Reports as markdown: a table as a bench prints it, and a whole report as
//! the section `ringport report` writes into BENCHMARKS.md.

use super::{Report, Table};

/// A cell's text where a `|` would end the cell.
fn escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The table, its title on a line of its own between `open` and `close`
/// (none when the title is empty), and its notes after it.
pub fn table(t: &Table, open: &str, close: &str) -> String {
    let mut out = String::new();
    if !t.title.is_empty() {
        out += &format!("{open}{}{close}\n\n", t.title);
    }
    let cols: Vec<String> = t.columns.iter().map(|c| escape(c)).collect();
    out += &format!("| {} |\n", cols.join(" | "));
    out += &format!("|{}\n", "---|".repeat(t.columns.len()));
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(|c| escape(&c.text)).collect();
        out += &format!("| {} |\n", cells.join(" | "));
    }
    if !t.notes.is_empty() {
        out += "\n";
        for n in &t.notes {
            out += &format!("{n}\n");
        }
    }
    out
}

fn load(l: &[f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// The generated body of a report's section: where and how it ran, the
/// settings it printed, and its tables.
pub fn section(r: &Report) -> String {
    let m = &r.machine;
    let mut out = String::new();
    // The program by its name: where a build put it says nothing here.
    let command = match r.command.split_once(' ') {
        Some((program, rest)) if program.ends_with("/ringport") => format!("ringport {rest}"),
        _ => r.command.clone(),
    };
    out += &format!("`{}`\n\n", command.replace('`', "'"));
    if r.quick {
        out += "*A `--quick` run: a smoke test, not a figure to quote.*\n\n";
    }
    out += &format!(
        "- {} to {} (UTC), commit {}{}\n",
        r.started,
        r.finished,
        m.commit,
        if m.dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    out += &format!(
        "- {} CPUs ({}), kernel {}, backend {}\n",
        m.cpus, m.cpu_model, m.kernel, m.backend
    );
    out += &format!(
        "- load average (1, 5, 15 min) {} before, {} after\n",
        load(&m.load_before),
        load(&m.load_after)
    );
    for s in &r.settings {
        out += &format!("- {s}\n");
    }
    for t in &r.tables {
        out += "\n";
        out += &table(t, "**", "**");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Cell;

    #[test]
    fn a_table_with_title_and_notes() {
        let mut t = Table::new("Flood", &["peer", "a|b"]);
        t.row(vec![Cell::text("ringport"), Cell::ratio(2.0)]);
        t.notes.push("target met".into());
        assert_eq!(
            table(&t, "## ", ""),
            "## Flood\n\n| peer | a\\|b |\n|---|---|\n| ringport | 2.00× |\n\ntarget met\n"
        );
    }

    #[test]
    fn a_section_names_the_command_machine_and_tables() {
        let mut r = Report::start("file", true);
        r.settings.push("random reads".into());
        let mut t = Table::new("Reads", &["reader"]);
        t.row(vec![Cell::text("pread")]);
        r.tables.push(t);
        let s = section(&r);
        for want in [
            "`",
            "smoke test",
            "commit",
            "load average",
            "- random reads",
            "**Reads**\n",
            "| pread |",
        ] {
            assert!(s.contains(want), "no {want:?} in\n{s}");
        }
    }
}
