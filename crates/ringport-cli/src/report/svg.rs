//! `--svg`: the charts of a report.

use std::path::Path;

use super::Report;

pub fn write(_r: &Report, path: &Path) -> Result<(), String> {
    Err(format!("{}: --svg is not written yet", path.display()))
}
