//! Kernels: Debian packages, downloaded (not installed) and unpacked once under `target/vm/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The suite that 5.10 comes from.
const BULLSEYE: &str = "bullseye";

/// A kernel the VM tests boot: which Debian package it comes from, and from which suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V6_1,
    V6_12,
    V5_10,
}

impl Series {
    pub fn name(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::V5_10 => "5.10",
        }
    }

    /// A kernel older than the datapath's minimum: the run checks that migr says so.
    pub(super) fn expects_refusal(self) -> bool {
        self == Self::V5_10
    }

    /// Metapackages to ask apt-cache, in order: (apt-cache options, package).
    fn metapackages(self) -> &'static [(&'static [&'static str], &'static str)] {
        match self {
            Self::V6_1 => &[(&[], "linux-image-amd64")],
            Self::V6_12 => &[
                (&[], "linux-image-6.12-amd64"),
                (&["-t", "bookworm-backports"], "linux-image-amd64"),
            ],
            // From the private bullseye source (`apt_options`).
            Self::V5_10 => &[(&[], "linux-image-amd64")],
        }
    }

    /// Options for apt-get and apt-cache: the machine's own sources for the bookworm kernels;
    /// for 5.10 a private bullseye source and package lists under `vm_dir`, so that the
    /// machine's apt configuration stays as it is.
    fn apt_options(self, vm_dir: &Path) -> Result<Vec<String>> {
        if self != Self::V5_10 {
            return Ok(Vec::new());
        }
        private_apt(vm_dir, BULLSEYE)
    }
}

pub(super) struct Kernel {
    pub(super) series: Series,
    pub(super) package: String,
    pub(super) version: String,
    /// `uname -r` of the guest.
    pub(super) kver: String,
    /// The unpacked package.
    pub(super) dir: PathBuf,
}

impl Kernel {
    pub(super) fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.kver))
    }

    pub(super) fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.kver)
    }
}

/// Marks a completely unpacked (and depmod-ed) kernel directory.
const COMPLETE: &str = ".migr-complete";

pub(super) fn fetch_kernel(vm_dir: &Path, series: Series) -> Result<Kernel> {
    let err = match fetch_current(vm_dir, series) {
        Ok(kernel) => return Ok(kernel),
        Err(err) => err,
    };
    // Stale lists name a package the archive no longer has; missing lists name none.
    println!("[vm] {err:#}; refreshing apt's package lists and trying again");
    let retried = refresh_apt_lists(vm_dir, series).and_then(|()| fetch_current(vm_dir, series));
    match retried {
        Ok(kernel) => Ok(kernel),
        // Offline: a kernel of this series fetched before will do.
        Err(err) => match cached_kernels(vm_dir, series).pop() {
            Some(kernel) => {
                println!(
                    "[vm] could not fetch the current {} kernel ({err:#}); using the cached {}",
                    series.name(),
                    kernel.package
                );
                Ok(kernel)
            }
            None => Err(err),
        },
    }
}

/// The series' current package, downloaded and unpacked unless it is already.
fn fetch_current(vm_dir: &Path, series: Series) -> Result<Kernel> {
    let apt = series.apt_options(vm_dir)?;
    let (package, version) = resolve_package(series, &apt)?;
    let dir = vm_dir.join(format!("{package}_{version}"));
    if !dir.join(COMPLETE).exists() {
        download_and_unpack(vm_dir, &apt, &package, &version, &dir)?;
    }
    kernel_in(series, &dir, package, version)
}

/// `apt-get update` for the series' sources: the machine's, or the private ones (whose
/// next use then updates them).
fn refresh_apt_lists(vm_dir: &Path, series: Series) -> Result<()> {
    if series == Series::V5_10 {
        let stamp = vm_dir.join(format!("apt-{BULLSEYE}/updated"));
        let _ = fs::remove_file(stamp);
        return Ok(());
    }
    run::status(Command::new("apt-get").args(["-q", "update"])).context("apt-get update (as root)")
}

/// apt options that read `suite` from a source entry of its own (copied from the machine's
/// bookworm entry, suite changed), with lists and caches under `vm_dir/apt-<suite>`; the
/// lists are refreshed when older than a day.
fn private_apt(vm_dir: &Path, suite: &str) -> Result<Vec<String>> {
    let root = vm_dir.join(format!("apt-{suite}"));
    let parts = root.join("sources.list.d");
    let lists = root.join("lists");
    let cache = root.join("cache");
    for dir in [
        &parts,
        &lists.join("partial"),
        &cache.join("archives/partial"),
    ] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (name, entry) = source_entry_for(suite).with_context(|| {
        format!(
            "no bookworm entry in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list \
             to copy for {suite}"
        )
    })?;
    fs::write(parts.join(name), entry)?;
    let opts: Vec<String> = [
        ("Dir::Etc::SourceList", "/dev/null".into()),
        ("Dir::Etc::SourceParts", parts.display().to_string()),
        ("Dir::State::Lists", lists.display().to_string()),
        ("Dir::Cache", cache.display().to_string()),
        ("APT::Sandbox::User", "root".into()),
    ]
    .into_iter()
    .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
    .collect();
    let stamp = root.join("updated");
    let fresh = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|t| {
            t.elapsed()
                .is_ok_and(|age| age < Duration::from_secs(86_400))
        });
    if !fresh {
        println!("[vm] apt-get update for the private {suite} source ...");
        run::status(Command::new("apt-get").args(&opts).args(["-q", "update"]))
            .with_context(|| format!("reading {suite}'s package lists"))?;
        fs::write(&stamp, "")?;
    }
    Ok(opts)
}

/// The machine's bookworm source entry with its suite replaced by `suite`: (file name, text).
fn source_entry_for(suite: &str) -> Option<(&'static str, String)> {
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        let stanza = text.split("\n\n").find(|stanza| {
            stanza.lines().any(|l| {
                l.strip_prefix("Suites:")
                    .is_some_and(|s| s.split_whitespace().any(|w| w == "bookworm"))
            })
        });
        if let Some(stanza) = stanza {
            let lines: Vec<String> = stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(|l| {
                    if l.starts_with("Suites:") {
                        format!("Suites: {suite}")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            return Some(("migr-vm.sources", lines.join("\n") + "\n"));
        }
    }
    let text = fs::read_to_string("/etc/apt/sources.list").ok()?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("deb ") && l.split_whitespace().any(|w| w == "bookworm"))?;
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| if w == "bookworm" { suite } else { w })
        .collect();
    Some(("migr-vm.list", words.join(" ") + "\n"))
}

/// The current image package of a series and its version, e.g.
/// ("linux-image-6.1.0-56-amd64", "6.1.192-2").
fn resolve_package(series: Series, apt: &[String]) -> Result<(String, String)> {
    let prefix = format!("linux-image-{}.", series.name());
    let mut asked = Vec::new();
    for (opts, meta) in series.metapackages() {
        let mut cmd = Command::new("apt-cache");
        cmd.args(apt).args(*opts).args(["depends", meta]);
        asked.push(run::render(&cmd));
        let Some(out) = run::stdout(&mut cmd) else {
            continue;
        };
        let package = out.lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends:")?.trim();
            dep.starts_with(&prefix).then(|| dep.to_string())
        });
        let Some(package) = package else { continue };
        let mut show = Command::new("apt-cache");
        show.args(apt)
            .args(*opts)
            .args(["show", "--no-all-versions", &package]);
        let version = run::stdout(&mut show).and_then(|out| {
            out.lines()
                .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
        });
        if let Some(version) = version {
            return Ok((package, version));
        }
    }
    bail!(
        "no Debian package of Linux {} found ({} named none); run `cargo xtask setup` (it adds \
         bookworm-backports and runs apt-get update)",
        series.name(),
        asked.join(", ")
    )
}

fn download_and_unpack(
    vm_dir: &Path,
    apt: &[String],
    package: &str,
    version: &str,
    dir: &Path,
) -> Result<()> {
    let t = Instant::now();
    let work = vm_dir.join(format!("download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = (|| {
        println!("[vm] downloading {package} {version} ...");
        let mut download = Command::new("apt-get");
        download
            .current_dir(&work)
            .args(apt)
            // apt's sandbox user cannot write into a root-owned directory; say so up front.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{package}={version}"));
        run::status(&mut download).context("downloading the kernel package")?;
        let deb = fs::read_dir(&work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let unpacked = work.join("root");
        run::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let kernel = kernel_in(Series::V6_1, &unpacked, String::new(), String::new())?;
        // The package ships no modules.dep; busybox's depmod writes one.
        let mut depmod = Command::new("busybox");
        depmod
            .arg("depmod")
            .arg("-b")
            .arg(&unpacked)
            .arg(&kernel.kver);
        run::status(&mut depmod)?;
        fs::write(unpacked.join(COMPLETE), format!("{package} {version}\n"))?;
        let _ = fs::remove_dir_all(dir);
        fs::rename(&unpacked, dir)?;
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result.with_context(|| format!("fetching {package} {version}"))?;
    println!(
        "[vm] {package} unpacked in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn kernel_in(series: Series, dir: &Path, package: String, version: String) -> Result<Kernel> {
    let boot = dir.join("boot");
    let kver = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    Ok(Kernel {
        series,
        package,
        version,
        kver,
        dir: dir.to_path_buf(),
    })
}

/// Complete kernel directories of a series under `vm_dir`, oldest name first.
fn cached_kernels(vm_dir: &Path, series: Series) -> Vec<Kernel> {
    let prefix = format!("linux-image-{}.", series.name());
    let mut dirs: Vec<PathBuf> = fs::read_dir(vm_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .filter(|d| d.join(COMPLETE).exists())
        .filter_map(|d| {
            let name = d.file_name()?.to_string_lossy().into_owned();
            let (package, version) = name.split_once('_')?;
            if !package.starts_with(&prefix) {
                return None;
            }
            kernel_in(series, &d, package.to_string(), version.to_string()).ok()
        })
        .collect()
}
