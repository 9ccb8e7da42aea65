//! `cargo xtask testbed`: the testbed's named experiments (docs/testbed.md),
//! run by `migr-testbed` (tests/src/bin/migr-testbed.rs) as root; results go
//! to `results/NAME.json` (schema `migr-testbed/1`) and `results/NAME/*.csv`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{run, setup};

pub struct Options {
    pub scenario: Option<String>,
    pub runs: Option<usize>,
    pub list: bool,
    pub all: bool,
}

fn testbed_bin() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| run::workspace_root().join("target"))
        .join("debug/migr-testbed")
}

fn build() -> Result<()> {
    run::status(run::cargo().args([
        "build",
        "-q",
        "--package",
        "migr-user",
        "--package",
        "migr-quic",
        "--package",
        "migr-tests",
        "--bins",
    ]))
    .context("building the testbed's programs")
}

pub fn testbed(o: &Options) -> Result<()> {
    if o.list {
        build()?;
        return run::status(Command::new(testbed_bin()).arg("scenarios"));
    }
    let name = match (&o.scenario, o.all) {
        (Some(name), false) => name.clone(),
        (None, true) => "all".to_string(),
        _ => bail!(
            "give --scenario NAME, --all or --list (cargo xtask testbed --list shows the names)"
        ),
    };
    setup::setup()?;
    build()?;
    let out = run::workspace_root().join("results");
    let mut cmd = Command::new(testbed_bin());
    cmd.args(["scenario", &name, "--out"]).arg(&out);
    if let Some(n) = o.runs {
        cmd.args(["--runs", &n.to_string()]);
    }
    run::status(&mut cmd)
}
