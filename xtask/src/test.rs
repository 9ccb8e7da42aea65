//! `cargo xtask test`: the whole suite, in the order a reviewer would run it.

use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::{build, run, setup};

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
            std::process::Command::new("rustup")
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
    stage("unit tests", || {
        run::status(run::cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "migr-ebpf",
            "--exclude",
            "migr-tests",
        ]))
    })?;
    stage("privileged integration tests", || {
        require_root()?;
        let mut cmd = run::cargo();
        cmd.args(["test", "--package", "migr-tests", "--"])
            .args(filter);
        run::status(&mut cmd)
    })?;
    println!(
        "[test] all stages passed in {:.0}s",
        started.elapsed().as_secs_f64()
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
