//! `cargo xtask testbed`: the testbed's named experiments (docs/testbed.md),
//! run by `migr-testbed` (migr-testbed/src/bin/migr-testbed.rs) as root; results go
//! to `results/NAME.json` (schema `migr-testbed/1`) and `results/NAME/*.csv`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{artifacts, run, setup, vm};

pub struct Options {
    pub scenario: Option<String>,
    pub runs: Option<usize>,
    pub list: bool,
    pub all: bool,
    pub hook_cost: bool,
    /// Run in a Debian guest with this kernel.
    pub vm: Option<vm::KernelArg>,
    /// With `vm`: `cargo xtask test`'s check of the techniques there.
    pub check: bool,
}

/// The programs migr-testbed starts; it finds them beside its own executable.
const HELPERS: [&str; 3] = ["migr-agent", "migrctl", "migr-echo"];

/// The testbed's programs of the release build: the hook, the agents and the workloads run
/// as users run them (a debug migrctl alone adds a millisecond to every CRIU step).
pub struct Programs {
    /// migr-testbed in cargo's target directory.
    pub testbed: PathBuf,
    /// (name, executable) of [`HELPERS`].
    helpers: Vec<(&'static str, PathBuf)>,
}

impl Programs {
    /// Copies the programs into `testbed-bin/` beside cargo's profile directories and returns
    /// migr-testbed's path there. CRIU dumps a process whose executable is a file: when
    /// another build replaces `target/release/migr-echo` during a run (the old inode
    /// unlinked), the dump fails ("Can't create link remap"). A private copy, made once per
    /// command, does not change under it.
    pub fn snapshot(&self) -> Result<PathBuf> {
        let profile_dir = self.testbed.parent().context("target directory")?;
        let to = profile_dir
            .parent()
            .context("target directory")?
            .join("testbed-bin");
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        let testbed = ("migr-testbed", &self.testbed);
        for (name, src) in self.helpers.iter().map(|(n, p)| (*n, p)).chain([testbed]) {
            let dst = to.join(name);
            // Written under a temporary name and renamed: a running copy keeps its inode.
            let tmp = to.join(format!(".{name}.tmp"));
            std::fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
            std::fs::rename(&tmp, &dst)
                .with_context(|| format!("renaming to {}", dst.display()))?;
        }
        Ok(to.join("migr-testbed"))
    }
}

/// Builds every binary of migr-user, migr-quic and migr-tests (release) and returns the
/// testbed's programs among them.
pub fn build() -> Result<Programs> {
    let build = artifacts::build(&[
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
    ])
    .context("building the testbed's programs")?;
    let helpers = HELPERS
        .into_iter()
        .map(|name| Ok((name, build.executable("bin", name)?)))
        .collect::<Result<_>>()?;
    Ok(Programs {
        testbed: build.executable("bin", "migr-testbed")?,
        helpers,
    })
}

pub fn testbed(o: &Options) -> Result<()> {
    if o.list {
        let programs = build()?;
        return run::status(Command::new(&programs.testbed).arg("scenarios"));
    }
    if o.hook_cost {
        setup::setup()?;
        let bin = build()?.snapshot()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("hook-cost")
            .arg("--out")
            .arg(run::workspace_root().join("results"));
        if let Some(n) = o.runs {
            cmd.args(["--pairs", &n.to_string()]);
        }
        return run::status(&mut cmd);
    }
    if o.check {
        if o.vm != Some(vm::KernelArg::V6_12) {
            bail!("--check runs in the 6.12 guest: give --vm 6.12");
        }
        setup::setup()?;
        return vm::check_techniques_in_vm(&build()?.snapshot()?);
    }
    let name = match (&o.scenario, o.all) {
        (Some(name), false) => name.clone(),
        (None, true) => "all".to_string(),
        _ => bail!(
            "give --scenario NAME, --all, --hook-cost or --list (cargo xtask testbed --list shows the names)"
        ),
    };
    setup::setup()?;
    let bin = build()?.snapshot()?;
    if let Some(kernel) = o.vm {
        return in_vm(kernel, &bin, &name, o.runs);
    }
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

/// One guest runs the scenarios, interleaved as on the host; results/vm-SERIES/.
fn in_vm(
    kernel: vm::KernelArg,
    bin: &std::path::Path,
    name: &str,
    runs: Option<usize>,
) -> Result<()> {
    let series = match kernel {
        vm::KernelArg::V6_1 => vm::Series::V6_1,
        vm::KernelArg::V6_12 => vm::Series::V6_12,
        other => bail!("--vm takes one kernel, 6.1 or 6.12, not {other:?}"),
    };
    let mut args = vec![name.to_string()];
    if let Some(n) = runs {
        args.extend(["--runs".to_string(), n.to_string()]);
    }
    vm::testbed_in_vm(&vm::TestbedVm {
        series,
        accel: vm::AccelArg::Auto,
        testbed: bin,
        args,
        out: run::workspace_root()
            .join("results")
            .join(format!("vm-{}", series.name())),
        timeout: GUEST_TIMEOUT,
    })
}

/// The whole guest of `--vm`: the techniques' 16 scenarios of 10 runs take hours under TCG.
const GUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
