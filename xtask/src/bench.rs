//! `cargo xtask bench`: builds `migr-bench` (migr-testbed/src/bin/migr-bench/) in release
//! mode, runs it (it needs root), and checks the JSON it writes.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{artifacts, run};

/// Where a run writes its JSON unless told otherwise.
fn json_path(json: Option<&str>) -> std::path::PathBuf {
    json.map(std::path::PathBuf::from)
        .unwrap_or_else(|| run::workspace_root().join("target/bench.json"))
}

pub fn bench(quick: bool, json: Option<&str>, only: &[String], case: Option<&str>) -> Result<()> {
    let json = json_path(json);
    // The agent cases run the real migr-agent and migrctl, which migr-bench finds beside
    // itself. Two builds: one of both packages would unify their dependencies' features, and
    // the agent could differ from the one `cargo build -p migr-user` makes.
    artifacts::build(&["build", "--release", "--package", "migr-user", "--bins"])?;
    let bench = artifacts::build(&[
        "build",
        "--release",
        "--package",
        "migr-testbed",
        "--bin",
        "migr-bench",
    ])?
    .executable("bin", "migr-bench")?;
    // In the workspace root, where `cargo run` would start it (a relative --json lands there).
    let mut cmd = Command::new(bench);
    cmd.current_dir(run::workspace_root())
        .arg("--json")
        .arg(&json);
    if quick {
        cmd.arg("--quick");
    }
    for group in only {
        cmd.arg("--only").arg(group);
    }
    if let Some(case) = case {
        cmd.arg("--case").arg(case);
    }
    run::status(&mut cmd)?;
    check_json(&json)?;
    println!("[bench] results in {}", json.display());
    Ok(())
}

/// The file parses as JSON and has the fixed schema's fields in every case;
/// returns the document.
pub fn check_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if doc["schema"] != "migr-bench/1" {
        bail!("{}: unexpected schema {}", path.display(), doc["schema"]);
    }
    let cases = doc["cases"].as_array().context("no cases array")?;
    if cases.is_empty() {
        bail!("{}: no cases", path.display());
    }
    for case in cases {
        for field in ["group", "name", "unit", "value", "baseline", "ratio"] {
            if case.get(field).is_none() {
                bail!("{}: a case lacks {field}: {case}", path.display());
            }
        }
    }
    Ok(doc)
}

/// `cargo xtask bench-table`: the Markdown table of a run's JSON.
pub fn print_table(json: Option<&str>) -> Result<()> {
    let doc = check_json(&json_path(json))?;
    print!("{}", markdown_table(&doc)?);
    Ok(())
}

/// README.md's table: a row per case but the breakdown's stages (a table
/// of their own), values in their unit, the ratio, the ns added, the target
/// with met or missed.
pub fn markdown_table(doc: &serde_json::Value) -> Result<String> {
    let mut out = String::from(
        "| group | case | value | baseline | ratio | added | target |\n| --- | --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    for case in doc["cases"].as_array().context("no cases array")? {
        let group = case["group"].as_str().context("a case without a group")?;
        if group == "breakdown" {
            continue;
        }
        let field = |name: &str| {
            case[name]
                .as_f64()
                .with_context(|| format!("{name} of {case}"))
        };
        let unit = case["unit"].as_str().context("a case without a unit")?;
        let (value, baseline) = (field("value")?, field("baseline")?);
        let added = match (unit, case["added"].as_f64()) {
            ("ns", Some(added)) => format!("{added:+.0} ns"),
            _ => String::new(),
        };
        let target = match (case["target"].as_str(), case["met"].as_bool()) {
            (Some(target), Some(true)) => format!("{target}: met"),
            (Some(target), Some(false)) => format!("{target}: missed"),
            _ => String::new(),
        };
        out += &format!(
            "| {group} | {} | {} | {} | {:.2}x | {added} | {target} |\n",
            case["name"].as_str().context("a case without a name")?,
            quantity(value, unit),
            quantity(baseline, unit),
            field("ratio")?,
        );
    }
    Ok(out)
}

/// A value in its unit, rounded as the README shows it.
fn quantity(value: f64, unit: &str) -> String {
    match unit {
        "pkt/s" | "frames/s" => format!("{:.0}k/s", value / 1e3),
        "bytes" => format!("{:.0} MB", value / 1e6),
        unit => format!("{value:.0} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_case_but_the_breakdowns() {
        let doc = serde_json::json!({"cases": [
            {"group": "xdp", "name": "park 1400 B", "unit": "ns", "value": 270.0,
             "baseline": 21.0, "ratio": 12.857, "added": 249.0, "target": "<= +150 ns", "met": false},
            {"group": "breakdown", "name": "park: headers", "unit": "ns", "value": 30.0,
             "baseline": 21.0, "ratio": 1.4, "added": 9.0, "target": null, "met": null},
            {"group": "replay", "name": "replay locally", "unit": "frames/s", "value": 626465.9,
             "baseline": 303400.8, "ratio": 2.0648, "added": 323065.1, "target": ">= 2.00x", "met": true},
            {"group": "map-scale", "name": "memory", "unit": "bytes", "value": 234.0e6,
             "baseline": 38.0e6, "ratio": 6.21, "added": null, "target": null, "met": null},
        ]});
        let table = markdown_table(&doc).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| xdp | park 1400 B | 270 ns | 21 ns | 12.86x | +249 ns | <= +150 ns: missed |",
                "| replay | replay locally | 626k/s | 303k/s | 2.06x |  | >= 2.00x: met |",
                "| map-scale | memory | 234 MB | 38 MB | 6.21x |  |  |",
            ]
        );
        assert!(markdown_table(&serde_json::json!({})).is_err());
    }
}
