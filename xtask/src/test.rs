//! `cargo xtask test`: the whole suite, in the order a reviewer would run it.

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{bench, build, run, setup};

pub fn test(filter: &[String]) -> Result<()> {
    let started = Instant::now();
    stage("setup", setup::setup)?;
    stage("rustfmt", || {
        run::status(run::cargo().args(["fmt", "--all", "--check"]))
            .context("formatting differs; run `cargo fmt --all`")
    })?;
    stage("build-ebpf", || {
        build::build_ebpf().map(|p| println!("XDP object: {}", p.display()))
    })?;
    stage("clippy (host crates)", || {
        run::status(run::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
    })?;
    stage("clippy (eBPF crate)", || {
        run::status(
            Command::new("rustup")
                .current_dir(run::workspace_root())
                .args([
                    "run",
                    "nightly",
                    "cargo",
                    "clippy",
                    "--package",
                    "migr-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/ebpf-clippy",
                    "--",
                    "-D",
                    "warnings",
                ]),
        )
    })?;
    let mut totals = TestTotals::default();
    stage("unit tests", || {
        totals.run(run::cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "migr-ebpf",
            "--exclude",
            "migr-tests",
        ]))?;
        // The fuzz crate is a workspace of its own: its unit tests (the
        // reference parsers, the seed corpus through every target) run here.
        totals.run(run::cargo().args(["test", "--manifest-path", "tests/fuzz/Cargo.toml"]))
    })?;
    stage(
        &format!(
            "fuzzing, {} s per target from the seed corpus (tests/fuzz)",
            crate::fuzz::TEST_SECONDS
        ),
        || {
            let runs = crate::fuzz::fuzz(crate::fuzz::TEST_SECONDS, None)?;
            totals.fuzz_targets += runs.len() as u64;
            Ok(())
        },
    )?;
    stage("privileged integration tests", || {
        require_root()?;
        let mut cmd = run::cargo();
        cmd.args(["test", "--package", "migr-tests", "--"])
            .args(filter);
        totals.run(&mut cmd)
    })?;
    stage(
        "VM tests: the datapath under Linux 6.1 and 6.12 in QEMU (docs/vm-tests.md)",
        || {
            let vm = crate::vm::vm_test(&crate::vm::Options::for_test_suite())?;
            totals.vm_passed += vm.passed;
            totals.vm_failed += vm.failed;
            Ok(())
        },
    )?;
    stage(
        &format!(
            "VM testbed: {} once in a Linux 6.12 guest (docs/testbed.md)",
            crate::vm::CHECK_SCENARIO
        ),
        || {
            let testbed = crate::testbed::build()?.snapshot()?;
            crate::vm::check_techniques_in_vm(&testbed)
        },
    )?;
    stage(
        "benchmarks, quick mode (must complete with valid JSON; numbers are not judged)",
        || bench::bench(true, None, &[], None),
    )?;
    println!(
        "[test] all stages passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if totals.passed == 0 {
        anyhow::bail!("no test ran");
    }
    // Tests once each; the VM stage runs some of them again under other
    // kernels, and fuzz targets are not tests: each figure apart.
    println!(
        "summary: {} tests passed, {} failed; again in VMs: {} passed, {} failed; {} fuzz targets ran clean",
        totals.passed, totals.failed, totals.vm_passed, totals.vm_failed, totals.fuzz_targets
    );
    Ok(())
}

fn stage(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    println!("[test] == {name}");
    f().with_context(|| format!("stage '{name}' failed"))?;
    println!("[test] == {name}: ok ({:.0}s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// Adds up cargo test's "test result:" lines across runs.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
    /// Privileged tests run again in QEMU guests.
    vm_passed: u64,
    vm_failed: u64,
    fuzz_targets: u64,
}

impl TestTotals {
    /// Runs a `cargo test` command, echoing its output, and adds its counts.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        let line = run::render(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        if let Some(out) = child.stdout.take() {
            for text in std::io::BufReader::new(out).lines() {
                let text = text?;
                println!("{text}");
                if let Some(rest) = text.strip_prefix("test result: ") {
                    let count = |label| {
                        count_before(rest, label).with_context(|| {
                            format!("no count of{label} tests in cargo's line `{text}`")
                        })
                    };
                    self.passed += count(" passed")?;
                    self.failed += count(" failed")?;
                }
            }
        }
        let status = child.wait()?;
        if !status.success() {
            anyhow::bail!("`{line}` failed ({status})");
        }
        Ok(())
    }
}

/// The number just before `label` in e.g. "ok. 3 passed; 0 failed; ...".
fn count_before(text: &str, label: &str) -> Option<u64> {
    text.find(label)
        .and_then(|end| text[..end].rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// The privileged tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns).
fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    if euid != 0 {
        anyhow::bail!(
            "the privileged tests need root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); rerun as root"
        );
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn reads_cargo_test_counts() {
        let line = "ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_before(line, " passed"), Some(12));
        assert_eq!(count_before(line, " failed"), Some(3));
        assert_eq!(
            count_before("FAILED. 0 passed; 1 failed;", " passed"),
            Some(0)
        );
        assert_eq!(
            count_before("ok. some passed", " passed"),
            None,
            "no number"
        );
        assert_eq!(count_before("ok. 3 fine", " passed"), None, "no label");
    }
}
