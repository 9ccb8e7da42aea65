//! The binaries the guest runs, built on the host.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Result, bail};

use super::guest::{GUEST_MOUNTS, GUEST_TMPFS};
use crate::{artifacts, run};

#[derive(Default)]
pub(super) struct HostBinaries {
    /// (test target name, executable).
    pub(super) tests: Vec<(String, PathBuf)>,
    /// `migr-user`'s `verifier` example: loads both programs, prints the instruction counts.
    pub(super) verifier: PathBuf,
    /// The test crate's directory (the tests' working directory, as under cargo).
    pub(super) workdir: PathBuf,
    /// Host directories under a path the guest mounts a tmpfs on (/run, /tmp) that the
    /// guest must still see: a checkout or target directory under /tmp, say.
    pub(super) keep: Vec<PathBuf>,
}

pub(super) fn build_host_binaries(wanted: &[String]) -> Result<HostBinaries> {
    let t = Instant::now();
    // The same build as `cargo test --package migr-tests` (the privileged stage of `cargo
    // xtask test`), so that the two share the executables.
    let mut args = vec!["test", "--no-run", "--package", "migr-tests"];
    for name in wanted {
        args.extend(["--test", name]);
    }
    let mut tests = artifacts::build(&args)?.executables("test");
    tests.sort_by_key(|(name, _)| wanted.iter().position(|t| t == name));
    let names: Vec<&str> = tests.iter().map(|(n, _)| n.as_str()).collect();
    if names != wanted {
        bail!("cargo built the test executables {names:?}, expected {wanted:?} (migr-tests)");
    }
    // `cargo build`, not `cargo test`: the latter builds the example with a test harness.
    let verifier = artifacts::build(&["build", "--package", "migr-user", "--example", "verifier"])?
        .executable("example", "verifier")?;
    let mut bins = HostBinaries {
        tests,
        verifier,
        workdir: run::workspace_root().join("tests"),
        keep: Vec::new(),
    };
    let all: Vec<&Path> = bins.tests.iter().map(|(_, p)| p.as_path()).collect();
    bins.keep = keep_dirs(&[all, vec![&bins.verifier, &bins.workdir]].concat())?;
    println!(
        "[vm] host binaries built in {:.1}s: {}, verifier",
        t.elapsed().as_secs_f64(),
        bins.tests
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(bins)
}

/// The host directories the guest must bind back over its tmpfs mounts (/run, /tmp) so that
/// it still sees `paths`: the workspace when they lie in it, else their parents. Fails for a
/// path under a mount the guest replaces without a way back (/proc, /sys, /dev).
pub(super) fn keep_dirs(paths: &[&Path]) -> Result<Vec<PathBuf>> {
    let root = run::workspace_root();
    let mut keep: Vec<PathBuf> = Vec::new();
    for path in paths {
        let Some(hidden) = GUEST_MOUNTS.iter().find(|m| path.starts_with(m)) else {
            continue;
        };
        if !GUEST_TMPFS.contains(hidden) {
            bail!(
                "{} is under {hidden}, which the guest mounts over; use a target directory \
                 elsewhere (CARGO_TARGET_DIR)",
                path.display()
            );
        }
        let dir = match path.starts_with(&root) {
            true => root.clone(),
            false => path.parent().unwrap_or(path).to_path_buf(),
        };
        if !keep.iter().any(|k| dir.starts_with(k)) {
            keep.push(dir);
        }
    }
    Ok(keep)
}
