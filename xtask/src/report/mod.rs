//! `cargo xtask report`: plots and a Markdown summary from `results/*.json`
//! (schema `migr-testbed/1`, docs/testbed.md) and their per-run CSVs, in the
//! style of seed 000's Fig. 4-6: service time per request, the phases of each
//! migration, steering on versus off. The MPTCP runner's files
//! (`results/mptcp-*.json`, docs/mptcp.md) are summarised when present.
//!
//! Output: `results/README.md` (the tables) and `results/plots/*.svg`
//! (plotters' SVG backend: text stays SVG text, no system fonts needed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use migr_testbed::results::{self, Metric, ScenarioFile, Summary};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

// The plots, the tables and the page that puts them together; this file
// loads the results.
mod plots;
mod tables;
#[cfg(test)]
mod tests;
mod write;

use plots::*;
use tables::*;
pub use write::write_report;

/// One `migr-testbed/1` file.
#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub protocol: String,
    pub strategy: Option<String>,
    pub steering: bool,
    pub mode: String,
    pub runs: usize,
    /// `(run number, reason)` of the runs that failed (`failed_runs`).
    pub failed: Vec<(u64, String)>,
    summary: Summary,
    /// `NAME/run-K.csv`, in run order (those that exist).
    pub csvs: Vec<PathBuf>,
}

/// A metric's mean and 95% CI half-width over runs (`None`: not measured;
/// the half-width is `None` with one run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    pub ci95: Option<f64>,
}

impl Scenario {
    pub fn stat(&self, key: &str) -> Option<Stat> {
        let Some(Some(Metric::Stat(s))) = self.summary.get(key) else {
            return None;
        };
        Some(Stat {
            n: s.n as usize,
            mean: s.mean?,
            ci95: s.ci95,
        })
    }

    /// The scenario's name without `-steering-on|off`: steering on and off
    /// of the same experiment share it.
    pub fn base(&self) -> &str {
        self.name
            .strip_suffix("-steering-on")
            .or_else(|| self.name.strip_suffix("-steering-off"))
            .unwrap_or(&self.name)
    }
}

/// One MPTCP runner file (`migr-mptcp-result/1`), kept as JSON.
#[derive(Debug)]
pub struct Mptcp {
    pub file: String,
    pub doc: Value,
}

#[derive(Debug, Default)]
pub struct Results {
    pub testbed: Vec<Scenario>,
    pub mptcp: Vec<Mptcp>,
    /// Files skipped, with why.
    pub notes: Vec<String>,
    /// The guest the results were measured in (`guest.txt`, written by `cargo xtask testbed
    /// --vm`); None: this host.
    pub guest: Option<String>,
}

/// One row of a run's client CSV.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub index: u64,
    pub send_ms: f64,
    pub service_ms: f64,
}

const CSV_HEADER: &str = "index,send_time_ms,response_time_ms,service_time_ms";

/// Parses one `migr-testbed/1` document read from `file` (whose directory
/// holds the CSVs).
pub fn parse_scenario(doc: Value, file: &Path) -> Result<Scenario> {
    let doc: ScenarioFile = serde_json::from_value(doc).map_err(|e| {
        anyhow!(
            "{}: {e} (schema {}, docs/testbed.md)",
            file.display(),
            results::SCHEMA
        )
    })?;
    let runs = doc.runs.len();
    if runs == 0 {
        bail!("{}: `runs` is empty", file.display());
    }
    let dir = file.parent().unwrap_or(Path::new(".")).join(&doc.scenario);
    let csvs = (1..=runs)
        .map(|k| dir.join(format!("run-{k}.csv")))
        .filter(|p| p.exists())
        .collect();
    Ok(Scenario {
        protocol: doc.config.protocol,
        strategy: doc.config.strategy,
        steering: doc.config.steering,
        mode: doc.config.mode,
        runs,
        failed: doc
            .failed_runs
            .into_iter()
            .map(|f| (f.run, f.error))
            .collect(),
        summary: doc.summary,
        csvs,
        name: doc.scenario,
    })
}

/// Reads every `*.json` in `dir`. A file that is not JSON, or a testbed
/// file without the schema's fields, is an error naming the file; files of
/// an unknown schema are skipped with a note.
pub fn load(dir: &Path) -> Result<Results> {
    if !dir.is_dir() {
        bail!(
            "{} does not exist or is not a directory: run `cargo xtask testbed --all` first",
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Results {
        guest: std::fs::read_to_string(dir.join(crate::vm::GUEST_FILE))
            .ok()
            .map(|t| t.trim().to_string()),
        ..Results::default()
    };
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        let schema = doc
            .get("schema")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{}: no `schema` string field", file.display()))?;
        let short = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if schema == results::SCHEMA {
            out.testbed.push(parse_scenario(doc, &file)?);
        } else if schema.starts_with("migr-mptcp-result/") {
            out.mptcp.push(Mptcp { file: short, doc });
        } else {
            out.notes.push(format!(
                "{short}: schema `{schema}` is not one the report reads; skipped"
            ));
        }
    }
    if out.testbed.is_empty() {
        bail!(
            "no migr-testbed/1 results in {}: run `cargo xtask testbed --all` first",
            dir.display()
        );
    }
    Ok(out)
}

/// Reads a run's client CSV (`index,send_time_ms,response_time_ms,service_time_ms,...`).
pub fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with(CSV_HEADER) => {}
        _ => bail!(
            "{}: the first line is not `{CSV_HEADER},...`",
            path.display()
        ),
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || anyhow!("{}:{}: malformed row {line:?}", path.display(), i + 2);
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() < 4 {
            return Err(bad());
        }
        rows.push(Row {
            index: cols[0].parse().map_err(|_| bad())?,
            send_ms: cols[1].parse().map_err(|_| bad())?,
            service_ms: cols[3].parse().map_err(|_| bad())?,
        });
    }
    Ok(rows)
}

/// `cargo xtask report [--results DIR]`.
pub fn report(dir: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(|| crate::run::workspace_root().join("results"));
    let r = load(&dir)?;
    for n in &r.notes {
        println!("[report] {n}");
    }
    if r.mptcp.is_empty() {
        println!("[report] no MPTCP results (results/mptcp-*.json): that section says so");
    }
    let written = write_report(&r, &dir)?;
    for f in &written {
        println!("[report] wrote {}", dir.join(f).display());
    }
    Ok(())
}
