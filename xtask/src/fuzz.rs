//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets of
//! `tests/fuzz` (the packet parsers against their reference parsers, the QUIC
//! extension frame decoder, the control API request decoder) for N seconds each.
//!
//! Each run starts from a copy of the committed seed corpus
//! (`tests/fuzz/corpus/<target>/`) in a scratch directory under the target
//! directory, so fuzzing never changes the committed files. A finding fails the
//! run with the path of the input that triggered it and the command that
//! reproduces it. `--seconds 0` only replays the seed corpus.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The fuzz crate, relative to the workspace root.
pub const FUZZ_DIR: &str = "tests/fuzz";
/// Seconds per target in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 10;
/// The cargo-fuzz release the setup step installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Largest input libFuzzer makes up: a full Ethernet frame of any kind the
/// parsers see, and far past `MAX_PARSE_OFFSET`.
const MAX_LEN: usize = 4096;

/// The build options, identical for `build` and `run` so that `run` reuses the build:
/// release with debug assertions (overflow checks on), no sanitizer (safe Rust only:
/// a panic is the finding).
const BUILD_FLAGS: &[&str] = &["--release", "--debug-assertions", "--sanitizer", "none"];

/// Setup check: is `cargo fuzz` there, in the release setup installs?
pub fn cargo_fuzz_installed() -> bool {
    run::stdout(run::cargo().args(["fuzz", "--version"]))
        .is_some_and(|out| out.contains(CARGO_FUZZ_VERSION))
}

/// Setup commands: install cargo-fuzz (its fuzz builds use the nightly toolchain,
/// which setup installs too).
pub fn install_cargo_fuzz() -> Vec<Command> {
    let mut cmd = run::cargo();
    cmd.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    vec![cmd]
}

/// What one target's run did.
pub struct TargetRun {
    pub name: String,
    /// Inputs executed (libFuzzer's "Done N runs"), when it said.
    pub runs: Option<u64>,
    pub seconds: f64,
}

/// Runs `targets` (default: every target in `tests/fuzz/fuzz_targets/`) for
/// `seconds` each; fails listing every finding.
pub fn fuzz(seconds: u64, targets: Option<&[String]>) -> Result<Vec<TargetRun>> {
    let root = run::workspace_root();
    let fuzz_dir = root.join(FUZZ_DIR);
    let all = list_targets(&fuzz_dir)?;
    let selected: Vec<String> = match targets {
        None => all.clone(),
        Some(names) => {
            for name in names {
                if !all.contains(name) {
                    bail!(
                        "no fuzz target `{name}`; the targets are: {}",
                        all.join(", ")
                    );
                }
            }
            names.to_vec()
        }
    };
    if !cargo_fuzz_installed() {
        bail!(
            "cargo-fuzz is not installed; run `cargo xtask setup` (or `cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked`)"
        );
    }
    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let build_dir = target_root.join("fuzz");

    let t = Instant::now();
    println!("[fuzz] building {} target(s) ...", all.len());
    let mut build = cargo_fuzz(&root, "build");
    build.args(["--target-dir".as_ref(), build_dir.as_os_str()]);
    run::status(&mut build).context("building the fuzz targets")?;
    println!("[fuzz] built in {:.0}s", t.elapsed().as_secs_f64());

    let mut findings = Vec::new();
    let mut done = Vec::new();
    for target in &selected {
        match run_target(&root, &target_root, &build_dir, target, seconds) {
            Ok(run) => done.push(run),
            Err(e) => {
                println!("[fuzz] {target}: FAILED");
                findings.push(format!("{e:#}"));
            }
        }
    }
    if !findings.is_empty() {
        bail!(
            "{} of {} fuzz target(s) failed:\n{}",
            findings.len(),
            selected.len(),
            findings.join("\n")
        );
    }
    for r in &done {
        println!(
            "[fuzz]   {:<16} {:>10} runs {:>5.1}s",
            r.name,
            r.runs.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.seconds
        );
    }
    let total: u64 = done.iter().filter_map(|r| r.runs).sum();
    println!(
        "[fuzz] {} target(s), {seconds} s each: no finding ({total} inputs executed in all, {:.0}s with the build)",
        selected.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(done)
}

/// The target names: the files in `fuzz_targets/`.
fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// `rustup run nightly cargo fuzz <sub> --fuzz-dir tests/fuzz <BUILD_FLAGS>`.
fn cargo_fuzz(root: &Path, sub: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root)
        // The stable toolchain that runs xtask must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .args([
            "run",
            "nightly",
            "cargo",
            "fuzz",
            sub,
            "--fuzz-dir",
            FUZZ_DIR,
        ])
        .args(BUILD_FLAGS);
    cmd
}

fn run_target(
    root: &Path,
    target_root: &Path,
    build_dir: &Path,
    target: &str,
    seconds: u64,
) -> Result<TargetRun> {
    let seeds = root.join(FUZZ_DIR).join("corpus").join(target);
    let corpus = fresh_dir(&target_root.join("fuzz-corpus").join(target))?;
    let artifacts = fresh_dir(&target_root.join("fuzz-artifacts").join(target))?;
    let logs = target_root.join("fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{target}.log"));

    let mut seed_count = 0;
    if seeds.is_dir() {
        for entry in std::fs::read_dir(&seeds)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(&path, corpus.join(path.file_name().unwrap_or_default()))?;
                seed_count += 1;
            }
        }
    }
    if seed_count == 0 {
        bail!("{target}: no seed corpus in {}", seeds.display());
    }

    let mut cmd = cargo_fuzz(root, "run");
    cmd.args(["--target-dir".as_ref(), build_dir.as_os_str()])
        .arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(if seconds == 0 {
            // only replay the seeds
            "-runs=0".to_string()
        } else {
            format!("-max_total_time={seconds}")
        })
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = root
        .join(FUZZ_DIR)
        .join("dict")
        .join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let line = run::render(&cmd);
    let log = std::fs::File::create(&log_path)?;
    let t = Instant::now();
    println!("[fuzz] {target}: {seed_count} seeds, {seconds} s ...");
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let found: Vec<PathBuf> = std::fs::read_dir(&artifacts)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if !status.success() || !found.is_empty() {
        let why = panic_message(&text).unwrap_or_else(|| {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            tail.into_iter().rev().collect()
        });
        let inputs: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        let reproduce = match found.first() {
            Some(input) => format!(
                "rustup run nightly cargo fuzz run --fuzz-dir {FUZZ_DIR} {} --target-dir {} {target} {}",
                BUILD_FLAGS.join(" "),
                build_dir.display(),
                input.display()
            ),
            None => line.clone(),
        };
        bail!(
            "fuzz target `{target}` failed ({status}); failing input: {}\n  reproduce: {reproduce}\n  log: {}\n  {}",
            if inputs.is_empty() {
                "none written".to_string()
            } else {
                inputs.join(", ")
            },
            log_path.display(),
            why.join("\n  ")
        );
    }
    let runs = text.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")?
            .split(' ')
            .next()?
            .parse::<u64>()
            .ok()
    });
    let elapsed = t.elapsed().as_secs_f64();
    let kept = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    println!(
        "[fuzz] {target}: ok, {} in {elapsed:.0}s, corpus {seed_count} -> {kept} inputs (scratch: {})",
        runs.map(|n| format!("{n} runs"))
            .unwrap_or_else(|| "corpus replayed".to_string()),
        corpus.display()
    );
    Ok(TargetRun {
        name: target.to_string(),
        runs,
        seconds: elapsed,
    })
}

/// The panic message in a libFuzzer log (the lines from "panicked at" to the
/// backtrace), or the kind of failure libFuzzer reports (timeout, out of memory).
fn panic_message(log: &str) -> Option<Vec<&str>> {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(start) = lines.iter().position(|l| l.contains("panicked at")) {
        let rest = &lines[start..];
        let end = rest
            .iter()
            .position(|l| l.starts_with("stack backtrace:") || l.starts_with("note: "))
            .unwrap_or(rest.len().min(20));
        return Some(rest[..end].to_vec());
    }
    let summary = lines.iter().find(|l| l.starts_with("SUMMARY: libFuzzer"))?;
    Some(vec![summary])
}

/// An empty directory at `path` (whatever was there is removed).
fn fresh_dir(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path.to_path_buf())
}
