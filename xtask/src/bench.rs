//! `cargo xtask bench`: builds `migr-bench` (migr-testbed/src/bin/migr-bench/) in release
//! mode, runs it (it needs root), and checks the JSON it writes.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{artifacts, run};

pub fn bench(quick: bool, json: Option<&str>, only: &[String], case: Option<&str>) -> Result<()> {
    let default_json = run::workspace_root().join("target/bench.json");
    let json = json.map(std::path::PathBuf::from).unwrap_or(default_json);
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

/// The file parses as JSON and has the fixed schema's fields in every case.
pub fn check_json(path: &std::path::Path) -> Result<()> {
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
    Ok(())
}
