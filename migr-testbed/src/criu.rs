//! CRIU as the testbed runs it (shared/notes/criu.md): from the root
//! network namespace, the service's namespace declared external, dump with
//! CRIU's nftables network lock, restore into another namespace handed over
//! as an inherited descriptor.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::Bins;
use migr_testkit::NetNs;

/// The key under which the service's network namespace is external.
const NET_KEY: &str = "migrnet";
/// The descriptor through which `criu restore` gets the destination namespace.
const NET_FD: i32 = 7;

/// What one `criu dump` or `criu restore` took, and its log.
#[derive(Debug, Clone)]
pub struct CriuStep {
    pub seconds: f64,
    pub log: std::path::PathBuf,
}

fn run(cmd: &mut Command, what: &str, log: &Path) -> Result<f64> {
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {what}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "{what} failed ({status}); log {}:\n{}",
            log.display(),
            log_errors(log)
        );
    }
    Ok(seconds)
}

/// The first error lines of a CRIU log (or a note that it is missing).
pub fn log_errors(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => text
            .lines()
            .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(no log: {e})"),
    }
}

/// `criu dump` of the tree rooted at `pid`, which lives in network namespace
/// `ns`. `extra`: e.g. `--tcp-established`.
pub fn dump(
    bins: &Bins,
    pid: i32,
    ns: &NetNs,
    images: &Path,
    hook: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<CriuStep> {
    let mut cmd = dump_command(bins, pid, ns, images, hook, log, extra)?;
    let seconds = run(&mut cmd, "criu dump", log)?;
    Ok(CriuStep {
        seconds,
        log: log.to_path_buf(),
    })
}

/// The `criu dump` command line of [`dump`], for a dump that keeps running
/// after it wrote its images (`--lazy-pages`: it serves the memory).
pub fn dump_command(
    bins: &Bins,
    pid: i32,
    ns: &NetNs,
    images: &Path,
    hook: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<Command> {
    std::fs::create_dir_all(images)?;
    let mut cmd = Command::new(&bins.criu);
    cmd.args(["dump", "-t", &pid.to_string()])
        .arg("-D")
        .arg(images)
        .args(["--external", &external_net(ns)?])
        .args(["--network-lock", "nftables"])
        .arg("--action-script")
        .arg(hook)
        .args(["-v4", "-o"])
        .arg(log)
        .args(extra);
    Ok(cmd)
}

/// One `criu pre-dump` iteration of the tree rooted at `pid` into `images`:
/// its memory, while it keeps running (frozen only while the pages are
/// collected). `parent`: the previous iteration's directory, relative to
/// `images` (CRIU resolves `--prev-images-dir` from there). Runs no action
/// script: CRIU emits none during a pre-dump.
pub fn pre_dump(
    bins: &Bins,
    pid: i32,
    ns: &NetNs,
    images: &Path,
    parent: Option<&str>,
    log: &Path,
) -> Result<CriuStep> {
    std::fs::create_dir_all(images)?;
    let mut cmd = Command::new(&bins.criu);
    cmd.args(["pre-dump", "-t", &pid.to_string()])
        .arg("-D")
        .arg(images)
        .args(["--external", &external_net(ns)?])
        .args(["-v4", "-o"])
        .arg(log);
    if let Some(parent) = parent {
        cmd.args(["--prev-images-dir", parent, "--track-mem"]);
    }
    let seconds = run(&mut cmd, "criu pre-dump", log)?;
    Ok(CriuStep {
        seconds,
        log: log.to_path_buf(),
    })
}

/// `--external` for the service's network namespace, by inode.
fn external_net(ns: &NetNs) -> Result<String> {
    let inode = std::fs::metadata(format!("/run/netns/{}", ns.name()))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .with_context(|| format!("stat /run/netns/{}", ns.name()))?;
    Ok(format!("net[{inode}]:{NET_KEY}"))
}

/// `criu restore -d` of `images` into network namespace `ns`; returns the
/// restored root's PID (from --pidfile).
pub fn restore(
    bins: &Bins,
    images: &Path,
    ns: &NetNs,
    hook: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<(CriuStep, i32)> {
    let netns = File::open(format!("/run/netns/{}", ns.name()))
        .with_context(|| format!("opening /run/netns/{}", ns.name()))?;
    let pidfile = images.join("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    let mut cmd = Command::new(&bins.criu);
    cmd.args(["restore", "-d"])
        .arg("-D")
        .arg(images)
        .args(["--inherit-fd", &format!("fd[{NET_FD}]:{NET_KEY}")])
        .arg("--action-script")
        .arg(hook)
        .arg("--pidfile")
        .arg(&pidfile)
        .args(["-v4", "-o"])
        .arg(log)
        .args(extra);
    let fd = netns.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; the duplicate has no CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, NET_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let seconds = run(&mut cmd, "criu restore", log)?;
    drop(netns);
    let pid = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?
        .trim()
        .parse()
        .context("the restored PID")?;
    Ok((
        CriuStep {
            seconds,
            log: log.to_path_buf(),
        },
        pid,
    ))
}

/// Deletes the tables CRIU's network lock leaves in `ns` (a dumped
/// namespace keeps its lock: it drops every packet): `inet CRIU-…` (the
/// nftables lock), and under runc an `ip`/`ip6` `filter` table holding a
/// `CRIU` chain (its iptables lock; the testbed's containers have no rules
/// of their own). Returns the names removed.
pub fn remove_lock_tables(ns: &NetNs) -> Result<Vec<String>> {
    let list = ns.exec(&["nft", "list", "tables"])?;
    let mut removed = Vec::new();
    for line in list.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["table", family, name] = words[..] else {
            continue;
        };
        let lock = name.starts_with("CRIU")
            || (name == "filter"
                && ns
                    .exec(&["nft", "list", "table", family, name])
                    .is_ok_and(|t| t.contains("chain CRIU")));
        if lock {
            ns.exec(&["nft", "delete", "table", family, name])?;
            removed.push(format!("{family} {name}"));
        }
    }
    Ok(removed)
}

/// The actions CRIU ran, with their wall-clock times, from a phases file the
/// testbed's action script wrote (`ACTION SECONDS.NANOS` per line).
pub fn read_phases(path: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, t) = l.split_once(' ')?;
            Some((a.to_string(), t.trim().parse().ok()?))
        })
        .collect()
}

/// The first time `action` appears in `phases`.
pub fn phase_time(phases: &[(String, f64)], action: &str) -> Option<f64> {
    phases.iter().find(|(a, _)| a == action).map(|(_, t)| *t)
}

/// Total size of the files under `dir` (the checkpoint images).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            // Not through symlinks: an incremental dump's `parent` link
            // points at the previous iteration, counted on its own.
            match (e.file_type(), e.metadata()) {
                (Ok(t), _) if t.is_symlink() => {}
                (_, Ok(m)) if m.is_dir() => total += dir_bytes(&e.path()),
                (_, Ok(m)) => total += m.len(),
                _ => {}
            }
        }
    }
    total
}
