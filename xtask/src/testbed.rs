//! `cargo xtask testbed`: the testbed's named experiments (docs/testbed.md),
//! run by `migr-testbed` (migr-testbed/src/bin/migr-testbed.rs) as root; results go
//! to `results/NAME.json` (schema `migr-testbed/1`) and `results/NAME/*.csv`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{run, setup};

pub struct Options {
    pub scenario: Option<String>,
    pub runs: Option<usize>,
    pub list: bool,
    pub all: bool,
    pub hook_cost: bool,
}

/// `migr-testbed` of the release build: the hook, the agents and the
/// workloads run as users run them (a debug migrctl alone adds a
/// millisecond to every CRIU step).
pub fn testbed_bin() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| run::workspace_root().join("target"))
        .join("release/migr-testbed")
}

/// Builds the testbed's programs (release).
pub fn build() -> Result<()> {
    run::status(run::cargo().args([
        "build",
        "-q",
        "--release",
        "--package",
        "migr-user",
        "--package",
        "migr-quic",
        "--package",
        "migr-testbed",
        "--bins",
    ]))
    .context("building the testbed's programs")
}

pub fn testbed(o: &Options) -> Result<()> {
    if o.list {
        build()?;
        return run::status(Command::new(testbed_bin()).arg("scenarios"));
    }
    if o.hook_cost {
        setup::setup()?;
        build()?;
        let bin = snapshot_bins()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("hook-cost")
            .arg("--out")
            .arg(run::workspace_root().join("results"));
        if let Some(n) = o.runs {
            cmd.args(["--pairs", &n.to_string()]);
        }
        return run::status(&mut cmd);
    }
    let name = match (&o.scenario, o.all) {
        (Some(name), false) => name.clone(),
        (None, true) => "all".to_string(),
        _ => bail!(
            "give --scenario NAME, --all, --hook-cost or --list (cargo xtask testbed --list shows the names)"
        ),
    };
    setup::setup()?;
    build()?;
    let bin = snapshot_bins()?;
    let out = run::workspace_root().join("results");
    // One invocation: the scenarios run interleaved, one run of each per
    // round, and a failed run is recorded in its scenario's JSON.
    let mut cmd = Command::new(&bin);
    cmd.args(["scenario", &name, "--out"]).arg(&out);
    if let Some(n) = o.runs {
        cmd.args(["--runs", &n.to_string()]);
    }
    run::status(&mut cmd)
}

/// Copies the testbed's programs into `target/testbed-bin/` and returns
/// migr-testbed's path there. CRIU dumps a process whose executable is a
/// file: when another build replaces `target/debug/migr-echo` during a run
/// (the old inode unlinked), the dump fails ("Can't create link remap"). A
/// private copy, made once per command, does not change under it.
fn snapshot_bins() -> Result<std::path::PathBuf> {
    let from = testbed_bin();
    let from = from.parent().context("target directory")?;
    let to = from
        .parent()
        .context("target directory")?
        .join("testbed-bin");
    std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    for b in ["migr-agent", "migrctl", "migr-echo", "migr-testbed"] {
        let (src, dst) = (from.join(b), to.join(b));
        // Written under a temporary name and renamed: a running copy keeps its inode.
        let tmp = to.join(format!(".{b}.tmp"));
        std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
    }
    Ok(to.join("migr-testbed"))
}
