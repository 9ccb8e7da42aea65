//! `cargo xtask vm-test`: the privileged tests under Debian's long-term-support kernels, in QEMU.
//!
//! For each kernel: resolve the Debian package (apt-cache), download and unpack it once into
//! `target/vm/` (apt-get download, dpkg-deb, busybox depmod), write a tiny initramfs (busybox
//! as /init, the modules that mount 9p), and boot it. The guest mounts the host's root read-only
//! over 9p, mounts proc/sys/dev/bpffs and tmpfs (/run, /tmp) into it, and runs the test binaries
//! already built on the host in a chroot. The serial console carries `VMTEST-*` markers that this
//! side parses; QEMU's exit status means nothing (poweroff exits 0). See docs/vm-tests.md.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The suite that 5.10 comes from.
const BULLSEYE: &str = "bullseye";

/// A kernel series the suite knows how to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelArg {
    /// bookworm's kernel (6.1).
    #[value(name = "6.1")]
    V6_1,
    /// 6.12 (bookworm-security's linux-image-6.12-amd64, else bookworm-backports').
    #[value(name = "6.12")]
    V6_12,
    /// bullseye's kernel (5.10), which lacks what the datapath needs: passes when migr refuses
    /// to load with a verdict that names the missing features (not part of `all`).
    #[value(name = "5.10")]
    V5_10,
    /// Both.
    All,
}

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM if a short probe guest boots with it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub kernels: Vec<Series>,
    pub accel: AccelArg,
    /// Whole-VM timeout, per kernel.
    pub timeout: Duration,
    /// Arguments for every test binary (name filters, `--skip`).
    pub filter: Vec<String>,
    /// The test binaries of `migr-tests` to run, in this order.
    pub tests: Vec<String>,
}

impl Options {
    pub fn new(kernel: KernelArg, accel: AccelArg, timeout_secs: u64, filter: Vec<String>) -> Self {
        let kernels = match kernel {
            KernelArg::V6_1 => vec![Series::V6_1],
            KernelArg::V6_12 => vec![Series::V6_12],
            KernelArg::V5_10 => vec![Series::V5_10],
            KernelArg::All => vec![Series::V6_1, Series::V6_12],
        };
        Self {
            kernels,
            accel,
            timeout: Duration::from_secs(timeout_secs),
            filter,
            tests: GUEST_TESTS.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// The VM stage of `cargo xtask test`: both kernels (each has refused a datapath that
    /// 6.18 accepted, for different reasons), the default test binaries, KVM probed; about
    /// two minutes under TCG (docs/vm-tests.md).
    pub fn for_test_suite() -> Self {
        Self::new(KernelArg::All, AccelArg::Auto, 900, Vec::new())
    }

    /// Runs only these test binaries of `migr-tests` (none given: [`GUEST_TESTS`]).
    pub fn with_tests(mut self, tests: Vec<String>) -> Self {
        if !tests.is_empty() {
            self.tests = tests;
        }
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V6_1,
    V6_12,
    V5_10,
}

impl Series {
    fn name(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::V5_10 => "5.10",
        }
    }

    /// A kernel older than the datapath's minimum: the run checks that migr says so.
    fn expects_refusal(self) -> bool {
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

/// Modules that mount the host's root: they go into the initramfs. The rest are loaded from
/// the unpacked package once the host is mounted.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Modules the tests need: veth pairs, and `ss` (sock_diag) for the MPTCP tests.
/// (veth is loaded first, and must load; these only print a note when missing.)
const TEST_MODULES: &[&str] = &["inet_diag", "tcp_diag", "udp_diag", "mptcp_diag"];
/// Host paths the guest replaces with its own mounts: nothing the guest runs may live there.
const GUEST_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];
/// Those of [`GUEST_MOUNTS`] that are a fresh tmpfs in the guest: host directories under them
/// are bind-mounted back.
const GUEST_TMPFS: &[&str] = &["/run", "/tmp"];
/// The programs the load check reports.
const PROGRAMS: &[&str] = &["migr", "migr_pass", "migr_tc"];
/// The test binaries of `migr-tests` the guest runs by default: BPF_PROG_TEST_RUN fixtures
/// and veth traffic. Not `agent` (agent, CRIU) nor `storm` (a million frames: minutes under
/// TCG).
const GUEST_TESTS: &[&str] = &["foundation", "datapath", "traffic"];
/// The guest's net.core.rmem_default (and rmem_max), in bytes: see the init script.
const GUEST_RMEM_DEFAULT: u32 = 4 << 20;
/// How long one binary may run in the guest before busybox's timeout kills it (a hung test
/// must not hold the whole VM until the host's timeout).
const GUEST_BINARY_TIMEOUT: Duration = Duration::from_secs(600);
/// The initramfs's directories (busybox --install puts links into the first four).
const GUEST_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "host",
    "tmp",
    "lib",
    "lib/modules",
];
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Test counts over every kernel's guest, for the closing summary of `cargo xtask test`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
}

pub fn vm_test(opts: &Options) -> Result<Totals> {
    let started = Instant::now();
    let tools = preflight()?;
    let bins = build_host_binaries(&opts.tests)?;
    let vm_dir = run::workspace_root().join("target/vm");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;

    let mut kernels = Vec::new();
    for &series in &opts.kernels {
        let t = Instant::now();
        let kernel = fetch_kernel(&vm_dir, series)?;
        println!(
            "[vm] kernel {} ({} {}) ready in {:.1}s: {}",
            kernel.kver,
            kernel.package,
            kernel.version,
            t.elapsed().as_secs_f64(),
            kernel.dir.display()
        );
        kernels.push(kernel);
    }

    let mut accel = opts.accel;
    if accel == AccelArg::Auto {
        accel = probe_kvm(&tools, &vm_dir, &kernels[0])?;
    }

    let mut results = Vec::new();
    for kernel in &kernels {
        let guest = Guest::new(&vm_dir, kernel, &bins, &opts.filter)?;
        results.push(boot_and_test(&tools, &guest, kernel, accel, opts.timeout)?);
    }

    print_report(&results, accel);
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed())
        .map(KernelResult::name)
        .collect();
    println!(
        "[vm] {} kernel(s) in {:.0}s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "the VM suite failed on Linux {} (console logs under {})",
            failed.join(", "),
            vm_dir.display()
        );
    }
    Ok(results.iter().fold(Totals::default(), |t, r| {
        let (passed, failed) = r.totals();
        Totals {
            passed: t.passed + u64::from(passed),
            failed: t.failed + u64::from(failed),
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// What the host needs.

struct Tools {
    qemu: PathBuf,
    busybox: PathBuf,
}

/// Fails naming exactly what is missing: the VM step must never pass by doing nothing.
fn preflight() -> Result<Tools> {
    let qemu = match std::env::var_os(QEMU_ENV) {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => which("qemu-system-x86_64"),
    };
    let busybox = Path::new("/bin/busybox");
    let busybox_static = fs::read(busybox).is_ok_and(|elf| is_static_elf(&elf));
    let missing = missing_tools(qemu.is_some(), busybox_static, |tool| which(tool).is_some());
    if !missing.is_empty() {
        bail!("{}", missing_message(&missing));
    }
    Ok(Tools {
        qemu: qemu.unwrap_or_default(),
        busybox: busybox.to_path_buf(),
    })
}

/// Overrides the QEMU binary (default: `qemu-system-x86_64` on PATH).
const QEMU_ENV: &str = "MIGR_VM_QEMU";

fn missing_tools(qemu: bool, busybox_static: bool, found: impl Fn(&str) -> bool) -> Vec<String> {
    let mut missing = Vec::new();
    if !qemu {
        missing.push(match std::env::var(QEMU_ENV) {
            Ok(path) => format!("the QEMU binary {path} ({QEMU_ENV})"),
            Err(_) => "`qemu-system-x86_64` (Debian package qemu-system-x86, from \
                       bookworm-backports)"
                .to_string(),
        });
    }
    if !busybox_static {
        missing.push("a static busybox at /bin/busybox (Debian package busybox-static)".into());
    }
    for (tool, package) in [
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        if !found(tool) {
            missing.push(format!("`{tool}` (Debian package {package})"));
        }
    }
    missing
}

fn missing_message(missing: &[String]) -> String {
    format!(
        "the VM tests cannot start a VM on this machine: missing {}. Run `cargo xtask setup` \
         (as root, on Debian bookworm) to install them",
        missing.join("; ")
    )
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// An ELF executable without a PT_INTERP program header.
fn is_static_elf(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3.
        elf.get(at..at + 4) != Some(&3u32.to_le_bytes())
    })
}

// ---------------------------------------------------------------------------------------------
// The binaries the guest runs, built on the host.

struct HostBinaries {
    /// (test target name, executable).
    tests: Vec<(String, PathBuf)>,
    /// `migr-user`'s `verifier` example: loads both programs, prints the instruction counts.
    verifier: PathBuf,
    /// The test crate's directory (the tests' working directory, as under cargo).
    workdir: PathBuf,
    /// Host directories under a path the guest mounts a tmpfs on (/run, /tmp) that the
    /// guest must still see: a checkout or target directory under /tmp, say.
    keep: Vec<PathBuf>,
}

fn build_host_binaries(wanted: &[String]) -> Result<HostBinaries> {
    let t = Instant::now();
    // The same build as `cargo test --package migr-tests` (the privileged stage of `cargo
    // xtask test`), so that the two share the executables.
    let mut args = vec!["test", "--no-run", "--package", "migr-tests"];
    for name in wanted {
        args.extend(["--test", name]);
    }
    let out = cargo_json(&args)?;
    let mut tests: Vec<(String, PathBuf)> = artifacts(&out, "test");
    tests.sort_by_key(|(name, _)| wanted.iter().position(|t| t == name));
    let names: Vec<&str> = tests.iter().map(|(n, _)| n.as_str()).collect();
    if names != wanted {
        bail!("cargo built the test executables {names:?}, expected {wanted:?} (migr-tests)");
    }
    // `cargo build`, not `cargo test`: the latter builds the example with a test harness.
    let out = cargo_json(&["build", "--package", "migr-user", "--example", "verifier"])?;
    let verifier = artifacts(&out, "example")
        .into_iter()
        .find(|(name, _)| name == "verifier")
        .map(|(_, path)| path)
        .context("cargo reported no executable for migr-user's `verifier` example")?;
    let mut bins = HostBinaries {
        tests,
        verifier,
        workdir: run::workspace_root().join("tests"),
        keep: Vec::new(),
    };
    // The guest's tmpfs mounts would hide these; it bind-mounts them back (`init_script`).
    let root = run::workspace_root();
    let all = bins.tests.iter().map(|(_, p)| p).chain([&bins.verifier]);
    for path in all.chain([&bins.workdir]) {
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
        if !bins.keep.iter().any(|k| dir.starts_with(k)) {
            bins.keep.push(dir);
        }
    }
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

fn cargo_json(args: &[&str]) -> Result<String> {
    let mut cmd = run::cargo();
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let line = run::render(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (target name, executable) of the compiler artifacts of one target kind, from cargo's JSON.
fn artifacts(json: &str, kind: &str) -> Vec<(String, PathBuf)> {
    let kind_field = format!("\"kind\":[\"{kind}\"]");
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains(&kind_field))
        .filter_map(|l| {
            let target = &l[l.find("\"target\":")?..];
            let name = json_string(target, "name")?;
            let exe = json_string(l, "executable")?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

/// The first string value of `"key":"..."` in `text` (enough JSON for cargo's messages).
fn json_string(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Kernels: Debian packages, downloaded (not installed) and unpacked once.

struct Kernel {
    series: Series,
    package: String,
    version: String,
    /// `uname -r` of the guest.
    kver: String,
    /// The unpacked package.
    dir: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.kver))
    }

    fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.kver)
    }
}

/// Marks a completely unpacked (and depmod-ed) kernel directory.
const COMPLETE: &str = ".migr-complete";

fn fetch_kernel(vm_dir: &Path, series: Series) -> Result<Kernel> {
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

// ---------------------------------------------------------------------------------------------
// The guest: an initramfs with busybox and the 9p modules, and the /init script.

struct Guest {
    initramfs: PathBuf,
    console_log: PathBuf,
    /// Test target names, in the order the guest runs them.
    tests: Vec<String>,
}

impl Guest {
    fn new(vm_dir: &Path, kernel: &Kernel, bins: &HostBinaries, filter: &[String]) -> Result<Self> {
        let run_dir = vm_dir.join(format!("run-{}", kernel.series.name()));
        fs::create_dir_all(&run_dir)?;
        let deps = ModulesDep::read(&kernel.modules())?;
        let mut boot_modules = Vec::new();
        for &module in BOOT_MODULES {
            match deps.closure(module) {
                Some(files) => boot_modules.extend(files),
                None if deps.builtin(module) => {}
                None => bail!(
                    "Linux {} has no module {module} and does not build it in; the guest \
                     cannot mount the host over 9p",
                    kernel.kver
                ),
            }
        }
        boot_modules.sort();
        boot_modules.dedup();

        let script = init_script(kernel, bins, &deps, filter);
        let mut cpio = Cpio::default();
        for dir in GUEST_DIRS {
            cpio.dir(dir);
        }
        cpio.char_device("dev/console", 5, 1);
        cpio.file("init", 0o755, script.as_bytes());
        let busybox = fs::read("/bin/busybox").context("reading /bin/busybox")?;
        cpio.file("bin/busybox", 0o755, &busybox);
        let mod_root = format!("lib/modules/{}", kernel.kver);
        cpio.dir(&mod_root);
        for name in [
            "modules.dep",
            "modules.alias",
            "modules.symbols",
            "modules.builtin",
        ] {
            if let Ok(data) = fs::read(kernel.modules().join(name)) {
                cpio.file(&format!("{mod_root}/{name}"), 0o644, &data);
            }
        }
        for rel in &boot_modules {
            let mut at = String::from(&mod_root);
            for part in Path::new(rel).parent().into_iter().flat_map(|p| p.iter()) {
                at.push('/');
                at.push_str(&part.to_string_lossy());
                cpio.dir(&at);
            }
            let data = fs::read(kernel.modules().join(rel))
                .with_context(|| format!("reading module {rel}"))?;
            cpio.file(&format!("{mod_root}/{rel}"), 0o644, &data);
        }
        let initramfs = run_dir.join("initramfs.cpio");
        fs::write(&initramfs, cpio.finish())
            .with_context(|| format!("writing {}", initramfs.display()))?;
        fs::write(run_dir.join("init.sh"), &script)?;
        Ok(Self {
            initramfs,
            console_log: run_dir.join("console.log"),
            tests: bins.tests.iter().map(|(n, _)| n.clone()).collect(),
        })
    }
}

/// `modules.dep` of an unpacked kernel, plus `modules.builtin`.
struct ModulesDep {
    /// (module name, its file, its dependencies' files).
    entries: Vec<(String, String, Vec<String>)>,
    builtin: Vec<String>,
}

impl ModulesDep {
    fn read(dir: &Path) -> Result<Self> {
        let dep = fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        let entries = dep
            .lines()
            .filter_map(|l| {
                let (file, deps) = l.split_once(':')?;
                let deps = deps.split_whitespace().map(str::to_string).collect();
                Some((module_name(file), file.to_string(), deps))
            })
            .collect();
        let builtin = fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        Ok(Self { entries, builtin })
    }

    /// The module's file and every file it depends on, or None if it is no module.
    fn closure(&self, module: &str) -> Option<Vec<String>> {
        let (_, file, deps) = self.entries.iter().find(|(name, ..)| name == module)?;
        let mut files = vec![file.clone()];
        files.extend(deps.iter().cloned());
        Some(files)
    }

    fn builtin(&self, module: &str) -> bool {
        self.builtin.iter().any(|m| m == module)
    }
}

/// `kernel/net/9p/9pnet_virtio.ko.xz` -> `9pnet_virtio` (dashes as underscores).
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Single-quotes a word for sh.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Shell lines that set host directories aside before the guest's tmpfs mounts hide them
/// (`save`), or put them back in place afterwards.
fn keep_lines(keep: &[PathBuf], save: bool) -> String {
    let mut out = String::new();
    for (i, dir) in keep.iter().enumerate() {
        let host = sh_quote(&format!("/host{}", dir.display()));
        let _ = match save {
            true => writeln!(
                out,
                "mkdir -p /keep{i} && mount --bind {host} /keep{i} || fail \"keeping {host}\""
            ),
            false => writeln!(
                out,
                "mkdir -p {host} && mount --bind /keep{i} {host} || fail \"restoring {host}\""
            ),
        };
    }
    out
}

fn init_script(
    kernel: &Kernel,
    bins: &HostBinaries,
    deps: &ModulesDep,
    filter: &[String],
) -> String {
    let mut s = String::new();
    let q = |p: &Path| sh_quote(&p.to_string_lossy());
    let load_modules = |names: &[&str]| -> String {
        let names: Vec<&str> = names.iter().copied().filter(|m| !deps.builtin(m)).collect();
        names.join(" ")
    };
    let _ = write!(
        s,
        r#"#!/bin/busybox sh
# Generated by `cargo xtask vm-test` (xtask/src/vm.rs); the guest's PID 1.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() {{ cut -d' ' -f1 /proc/uptime; }}
echo "VMTEST-INIT uptime=$(up) kernel=$(uname -r)"
if grep -qw migr.probe /proc/cmdline; then echo VMTEST-PROBE-OK; poweroff -f; fi
fail() {{ echo "VMTEST-ERROR $*"; echo "VMTEST-RC=125"; poweroff -f; sleep 60; }}
# Busybox hands compressed modules to finit_module first; keep the kernel's complaint about
# that ("Invalid ELF header magic") off the console while loading.
echo 1 > /proc/sys/kernel/printk
for m in {boot}; do modprobe "$m" || fail "modprobe $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 host /host \
  || fail "mounting the host's root over 9p"
# Every module of the package, from the host (for the kernel's own module requests, too).
mount --bind /host{modules} /lib/modules/{kver} || fail "bind-mounting the modules"
modprobe veth || [ -d /sys/module/veth ] || fail "modprobe veth"
for m in {test}; do modprobe "$m" || echo "VMTEST-NOTE no module $m"; done
echo 4 > /proc/sys/kernel/printk
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t bpf bpf /host/sys/fs/bpf || fail "mounting bpffs"
{keep_save}mount -t tmpfs tmpfs /host/run || fail "mounting /run"
mount -t tmpfs tmpfs /host/tmp || fail "mounting /tmp"
{keep_restore}# Linux 6.1 hands a frame that native XDP on a veth passed to the stack as a whole page
# (truesize about 4.3 kB), so the default 208 kB socket buffer holds only 49 unread
# datagrams, with or without migr (a bare XDP_PASS program loses the same). The tests send
# a batch and read it afterwards: give sockets room for it (docs/vm-tests.md).
echo {rmem} > /proc/sys/net/core/rmem_max
echo {rmem} > /proc/sys/net/core/rmem_default
echo "VMTEST-BTF $(test -r /sys/kernel/btf/vmlinux && echo yes || echo no)"
echo "VMTEST-READY uptime=$(up)"
# Runs a host binary in the host's root, in the test crate's directory, as cargo would.
in_host() {{
  timeout {bin_timeout} chroot /host /usr/bin/env -i PATH={path} HOME=/root USER=root {backtrace}\
    /bin/sh -c 'cd "$0" && exec "$@"' {workdir} "$@"
}}
rc=0
echo "VMTEST-LOAD-BEGIN uptime=$(up)"
in_host {verifier} > /host/tmp/verifier.out 2>&1
load_rc=$?
sed 's/^/VMTEST-LOAD| /' /host/tmp/verifier.out
echo "VMTEST-LOAD-RC=$load_rc uptime=$(up)"
if [ $load_rc != 0 ] || [ "$(grep -c ': loaded; ' /host/tmp/verifier.out)" != {programs} ]; then
  rc=1
  echo "VMTEST-SKIP the datapath did not load: no test binary runs"
else
  :
"#,
        boot = load_modules(BOOT_MODULES),
        test = load_modules(TEST_MODULES),
        modules = q(&kernel.modules()),
        kver = kernel.kver,
        path = GUEST_PATH,
        workdir = q(&bins.workdir),
        verifier = q(&bins.verifier),
        keep_save = keep_lines(&bins.keep, true),
        keep_restore = keep_lines(&bins.keep, false),
        programs = PROGRAMS.len(),
        rmem = GUEST_RMEM_DEFAULT,
        bin_timeout = GUEST_BINARY_TIMEOUT.as_secs(),
        backtrace = std::env::var("RUST_BACKTRACE")
            .map(|v| format!("RUST_BACKTRACE={} ", sh_quote(&v)))
            .unwrap_or_default(),
    );
    let filter: Vec<String> = filter.iter().map(|f| sh_quote(f)).collect();
    for (name, exe) in &bins.tests {
        let _ = write!(
            s,
            r#"echo "VMTEST-BEGIN {name} uptime=$(up)"
in_host {exe} {filter}
r=$?
echo "VMTEST-END {name} rc=$r uptime=$(up)"
[ $r = 0 ] || rc=1
"#,
            exe = q(exe),
            filter = filter.join(" "),
        );
    }
    s.push_str(
        r#"fi
echo "VMTEST-DONE uptime=$(up)"
echo "VMTEST-RC=$rc"
sync
poweroff -f
sleep 60
"#,
    );
    s
}

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn dir(&mut self, path: &str) {
        if !self.dirs.iter().any(|d| d == path) {
            self.dirs.push(path.to_string());
            self.entry(path, 0o040_755, 0, (0, 0), &[]);
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | mode, 1, (0, 0), data);
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, 0o020_600, 1, (major, minor), &[]);
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink.max(1),
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            path.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
}

// ---------------------------------------------------------------------------------------------
// QEMU.

/// A QEMU process that is killed (by its PID) if it is still running when dropped.
struct Qemu {
    child: Child,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

enum Accel {
    Kvm,
    Tcg,
}

fn qemu_command(
    tools: &Tools,
    kernel: &Kernel,
    initramfs: &Path,
    accel: Accel,
    append: &str,
) -> Command {
    let mut cmd = Command::new(&tools.qemu);
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args(["-m", "1536", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet mitigations=off {append}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// One line of the guest's console (or of QEMU's stderr), with when it arrived.
struct Line {
    at: Instant,
    text: String,
    stderr: bool,
}

/// Runs QEMU until it exits or `timeout` passes; hands every line to `on_line` as it arrives.
/// Returns whether QEMU exited by itself (false: it was killed at the timeout).
fn run_qemu(mut cmd: Command, timeout: Duration, mut on_line: impl FnMut(&Line)) -> Result<bool> {
    let line = run::render(&cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut qemu = Qemu { child };
    let (tx, rx) = mpsc::channel::<Line>();
    let mut readers = Vec::new();
    let stdout = qemu
        .child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = qemu
        .child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for (stream, is_stderr) in [(stdout, false), (stderr, true)] {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .replace('\r', "");
                buf.clear();
                let line = Line {
                    at: Instant::now(),
                    text,
                    stderr: is_stderr,
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut exited = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => on_line(&line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                exited = false;
                let _ = qemu.child.kill();
                break;
            }
        }
    }
    let _ = qemu.child.wait();
    // The pipes close with the process; drain what is left.
    for line in rx.try_iter() {
        on_line(&line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    Ok(exited)
}

/// How long a KVM guest may take to reach /init (TCG needs about 2-6 s).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Boots the first kernel with KVM for a few seconds: KVM is used only if a guest really runs.
/// The verdict is kept in `target/vm/kvm-probe/verdict` for this host kernel, QEMU and guest
/// kernel, so that reruns do not wait for a probe that fails again.
fn probe_kvm(tools: &Tools, vm_dir: &Path, kernel: &Kernel) -> Result<AccelArg> {
    let kvm = Path::new("/dev/kvm");
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_err()
    {
        println!("[vm] KVM: /dev/kvm is missing or not accessible; using TCG");
        return Ok(AccelArg::Tcg);
    }
    let run_dir = vm_dir.join("kvm-probe");
    fs::create_dir_all(&run_dir)?;
    let key = format!(
        "host {} | {} | guest {}",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        run::stdout(Command::new(&tools.qemu).arg("--version"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default(),
        kernel.kver
    );
    let verdict_file = run_dir.join("verdict");
    if let Ok(text) = fs::read_to_string(&verdict_file) {
        let mut lines = text.lines();
        if lines.next() == Some(key.as_str()) {
            let accel = lines.next().unwrap_or_default();
            let why = lines.next().unwrap_or_default();
            println!(
                "[vm] KVM: {why} (probed before, for {key}; delete {} to probe again); using {accel}",
                verdict_file.display()
            );
            return Ok(if accel == "kvm" {
                AccelArg::Kvm
            } else {
                AccelArg::Tcg
            });
        }
    }
    let t = Instant::now();
    let deps = ModulesDep::read(&kernel.modules())?;
    let script = init_script(
        kernel,
        &HostBinaries {
            tests: Vec::new(),
            verifier: PathBuf::new(),
            workdir: PathBuf::new(),
            keep: Vec::new(),
        },
        &deps,
        &[],
    );
    let mut cpio = Cpio::default();
    for dir in GUEST_DIRS {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("init", 0o755, script.as_bytes());
    cpio.file("bin/busybox", 0o755, &fs::read(&tools.busybox)?);
    let initramfs = run_dir.join("initramfs.cpio");
    fs::write(&initramfs, cpio.finish())?;
    let cmd = qemu_command(tools, kernel, &initramfs, Accel::Kvm, "migr.probe");
    let mut ok = false;
    let mut last = Vec::new();
    run_qemu(cmd, KVM_PROBE_TIMEOUT, |line| {
        ok |= line.text.contains("VMTEST-PROBE-OK");
        last.push(line.text.clone());
    })?;
    let (accel, why) = if ok {
        let why = format!("a probe guest booted in {:.1}s", t.elapsed().as_secs_f64());
        (AccelArg::Kvm, why)
    } else {
        let output = last
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or_else(
                || format!("no output within {}s", KVM_PROBE_TIMEOUT.as_secs()),
                |l| l.trim().to_string(),
            );
        let why = format!("/dev/kvm is present but a probe guest did not boot with it ({output})");
        (AccelArg::Tcg, why)
    };
    let name = if accel == AccelArg::Kvm { "kvm" } else { "tcg" };
    println!(
        "[vm] KVM: {why}; using {name} ({:.1}s spent)",
        t.elapsed().as_secs_f64()
    );
    let _ = fs::write(&verdict_file, format!("{key}\n{name}\n{why}\n"));
    Ok(accel)
}

// ---------------------------------------------------------------------------------------------
// One kernel's run, and the report.

#[derive(Default)]
struct TestBinResult {
    name: String,
    rc: Option<i32>,
    passed: u32,
    failed: u32,
    failures: Vec<String>,
}

#[derive(Default)]
struct KernelResult {
    series: Option<Series>,
    kver: String,
    version: String,
    /// Some(true) when every program loaded, Some(false) when not, None when never tried.
    loaded: Option<bool>,
    /// Verified instructions per program (`verified_insns` of BPF_OBJ_GET_INFO_BY_FD).
    insns: Vec<(String, String)>,
    /// The load check's outermost error ("migr needs Linux ≥ ..."), when loading failed.
    verdict: Option<String>,
    /// Features the load check's probe found missing.
    missing: Vec<String>,
    /// The load check's output, when loading failed: its causes and the verifier log's tail.
    load_log: Vec<String>,
    tests: Vec<TestBinResult>,
    expected_tests: usize,
    /// QEMU start to the guest's "ready" (kernel boot, modules, 9p and the mounts).
    boot: Option<Duration>,
    /// The load check alone.
    load_time: Option<Duration>,
    /// The first test binary's start to the last one's end.
    test_time: Option<Duration>,
    rc: Option<i32>,
    error: Option<String>,
    btf: Option<bool>,
    skipped: Option<String>,
}

impl KernelResult {
    fn passed(&self) -> bool {
        if self.series.is_some_and(Series::expects_refusal) {
            return self.refused_as_expected();
        }
        self.rc == Some(0)
            && self.error.is_none()
            && self.loaded == Some(true)
            && self.tests.len() == self.expected_tests
            && self
                .tests
                .iter()
                .all(|t| t.rc == Some(0) && t.failed == 0 && t.passed > 0)
    }

    /// A kernel that lacks features: the load check ran, was refused, and migr's message
    /// names the minimum kernel and the features this one lacks.
    fn refused_as_expected(&self) -> bool {
        self.error.is_none()
            && self.rc.is_some()
            && self.loaded == Some(false)
            && !self.missing.is_empty()
            && self
                .verdict
                .as_deref()
                .is_some_and(|v| v.starts_with("migr needs Linux ≥"))
    }

    fn totals(&self) -> (u32, u32) {
        self.tests
            .iter()
            .fold((0, 0), |(p, f), t| (p + t.passed, f + t.failed))
    }

    fn name(&self) -> &'static str {
        self.series.map_or("?", Series::name)
    }
}

fn boot_and_test(
    tools: &Tools,
    guest: &Guest,
    kernel: &Kernel,
    accel: AccelArg,
    timeout: Duration,
) -> Result<KernelResult> {
    let accel = match accel {
        AccelArg::Kvm => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let cmd = qemu_command(tools, kernel, &guest.initramfs, accel, "");
    println!("[vm] == Linux {} ({})", kernel.kver, kernel.version);
    println!("[vm] {}", run::render(&cmd));
    let mut log = fs::File::create(&guest.console_log)
        .with_context(|| format!("creating {}", guest.console_log.display()))?;
    let mut r = KernelResult {
        series: Some(kernel.series),
        kver: kernel.kver.clone(),
        version: kernel.version.clone(),
        expected_tests: guest.tests.len(),
        ..Default::default()
    };
    let mut clock = Clock {
        started: Some(Instant::now()),
        ..Default::default()
    };
    let mut tail: Vec<String> = Vec::new();
    let exited = run_qemu(cmd, timeout, |line| {
        use std::io::Write as _;
        let prefix = if line.stderr { "qemu: " } else { "" };
        let _ = writeln!(log, "{prefix}{}", line.text);
        println!("[vm {}] {prefix}{}", kernel.series.name(), line.text);
        tail.push(line.text.clone());
        if tail.len() > 30 {
            tail.remove(0);
        }
        parse_line(&mut r, &line.text, line.at, &mut clock);
    })?;
    if !exited {
        r.error = Some(format!(
            "timed out after {}s (QEMU killed); the console's last lines:\n{}",
            timeout.as_secs(),
            tail.join("\n")
        ));
    } else if r.rc.is_none() && r.error.is_none() {
        r.error = Some(format!(
            "the guest stopped without a result; the console's last lines:\n{}",
            tail.join("\n")
        ));
    }
    Ok(r)
}

/// When the phases of a guest's run began (host clock: the guest's clock runs slow under TCG).
#[derive(Default)]
struct Clock {
    started: Option<Instant>,
    load_begin: Option<Instant>,
    tests_begin: Option<Instant>,
}

/// Reads one console line into the result.
fn parse_line(r: &mut KernelResult, text: &str, at: Instant, clock: &mut Clock) {
    if let Some(test) = r.tests.last_mut().filter(|t| t.rc.is_none()) {
        // libtest: "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = text.trim().strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            test.passed = count(" passed");
            test.failed = count(" failed");
        } else if let Some(name) = text
            .trim()
            .strip_prefix("test ")
            .and_then(|t| t.strip_suffix(" ... FAILED"))
        {
            test.failures.push(name.to_string());
        }
    }
    let Some(marker) = text.find("VMTEST-").map(|i| &text[i + 7..]) else {
        return;
    };
    let word = |key: &str| {
        marker
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    if marker.starts_with("READY") {
        r.boot = clock.started.map(|s| at - s);
    } else if let Some(v) = marker.strip_prefix("BTF ") {
        r.btf = Some(v.trim() == "yes");
    } else if marker.starts_with("LOAD-BEGIN") {
        clock.load_begin = Some(at);
    } else if let Some(rest) = marker.strip_prefix("LOAD| ") {
        parse_load_line(r, rest);
    } else if let Some(rest) = marker.strip_prefix("LOAD-RC=") {
        let rc: Option<i32> = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        r.loaded = Some(rc == Some(0) && r.insns.len() == PROGRAMS.len());
        r.load_time = clock.load_begin.map(|b| at - b);
    } else if let Some(why) = marker.strip_prefix("SKIP ") {
        r.skipped = Some(why.trim().to_string());
    } else if marker.starts_with("BEGIN ") {
        clock.tests_begin.get_or_insert(at);
        let name = marker.split_whitespace().nth(1).unwrap_or_default();
        r.tests.push(TestBinResult {
            name: name.to_string(),
            ..Default::default()
        });
    } else if marker.starts_with("END ") {
        if let Some(t) = r.tests.last_mut() {
            t.rc = word("rc=").and_then(|v| v.parse().ok());
        }
        r.test_time = clock.tests_begin.map(|b| at - b);
    } else if let Some(rc) = marker.strip_prefix("RC=") {
        r.rc = rc.trim().parse().ok();
    } else if let Some(what) = marker.strip_prefix("ERROR ") {
        r.error = Some(format!("in the guest: {what}"));
    }
}

/// One line of the load check (migr-user/examples/verifier.rs).
fn parse_load_line(r: &mut KernelResult, line: &str) {
    if let Some((program, info)) = line.split_once(": loaded; verified instructions ") {
        // "migr: loaded; verified instructions 26838, translated size 27872 bytes"
        let count = info.split(',').next().unwrap_or(info).trim();
        r.insns.push((program.to_string(), count.to_string()));
    } else if let Some(rest) = line.strip_prefix("feature | ") {
        // "feature | bpf_loop | 5.17 | MISSING"
        let parts: Vec<&str> = rest.split(" | ").collect();
        if let [name, since, state] = parts[..]
            && state != "yes"
        {
            r.missing.push(format!(
                "{name} (Linux ≥ {since}): {}",
                state.to_lowercase()
            ));
        }
    } else if let Some(verdict) = line.strip_prefix("load failed: ") {
        r.verdict = Some(verdict.to_string());
    } else if line.starts_with("cause: ") || line.starts_with("log | ") {
        r.load_log.push(line.to_string());
    }
}

fn print_report(results: &[KernelResult], accel: AccelArg) {
    let accel = match accel {
        AccelArg::Kvm => "kvm",
        _ => "tcg",
    };
    println!();
    println!("[vm] results ({accel}):");
    let header = [
        "kernel",
        "btf",
        "loaded",
        "verified insns",
        "tests",
        "boot",
        "load",
        "tests",
        "result",
    ];
    let rows: Vec<[String; 9]> = results
        .iter()
        .map(|r| {
            let secs = |d: Option<Duration>| {
                d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
            };
            let yes_no = |b: Option<bool>| match b {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let (passed, failed) = r.totals();
            let insns = r
                .insns
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(" / ");
            [
                format!("{} ({})", r.name(), r.kver),
                yes_no(r.btf).to_string(),
                yes_no(r.loaded).to_string(),
                if insns.is_empty() { "-".into() } else { insns },
                if r.skipped.is_some() {
                    "not run".to_string()
                } else {
                    format!("{passed} passed, {failed} failed")
                },
                secs(r.boot),
                secs(r.load_time),
                secs(r.test_time),
                match (r.passed(), r.series.is_some_and(Series::expects_refusal)) {
                    (true, false) => "ok",
                    (true, true) => "ok (refused, as expected)",
                    (false, _) => "FAILED",
                }
                .to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::from("[vm] |");
        for (cell, w) in cells.iter().zip(&widths) {
            let pad = w - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        println!("{out}");
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    println!(
        "[vm] (verified insns: {}; boot: QEMU start to tests ready; load: the load check)",
        PROGRAMS.join(" / ")
    );
    for r in results
        .iter()
        .filter(|r| r.passed() && r.loaded == Some(false))
    {
        println!();
        println!(
            "[vm] Linux {} ({}): migr refused to load, as it must:",
            r.kver, r.version
        );
        println!("[vm]   {}", r.verdict.as_deref().unwrap_or_default());
        for m in &r.missing {
            println!("[vm]   feature {m}");
        }
    }
    for r in results.iter().filter(|r| !r.passed()) {
        println!();
        println!("[vm] Linux {} ({}) failed:", r.kver, r.version);
        if r.loaded == Some(false) {
            println!(
                "[vm]   the datapath did not load: {}",
                r.verdict.as_deref().unwrap_or("(no message)")
            );
            for m in &r.missing {
                println!("[vm]   feature {m}");
            }
            for l in &r.load_log {
                println!("[vm]   | {l}");
            }
        }
        if let Some(why) = &r.skipped {
            println!("[vm]   {why}");
        }
        for t in &r.tests {
            if t.rc != Some(0) || t.failed > 0 || t.passed == 0 {
                println!(
                    "[vm]   {}: exit {}, {} passed, {} failed {}",
                    t.name,
                    t.rc.map_or("-".to_string(), |c| c.to_string()),
                    t.passed,
                    t.failed,
                    t.failures.join(", ")
                );
            }
        }
        if r.skipped.is_none() && r.tests.len() != r.expected_tests {
            println!(
                "[vm]   {} of {} test binaries ran",
                r.tests.len(),
                r.expected_tests
            );
        }
        if let Some(e) = &r.error {
            println!("[vm]   {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_is_named() {
        let missing = missing_tools(false, true, |_| true);
        assert_eq!(missing.len(), 1, "{missing:?}");
        let message = missing_message(&missing);
        assert!(message.contains("qemu-system-x86_64"), "{message}");
        assert!(message.contains("qemu-system-x86"), "{message}");
        assert!(missing_tools(true, true, |_| true).is_empty());
        let missing = missing_tools(true, false, |t| t != "dpkg-deb");
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("busybox-static") && missing[1].contains("dpkg-deb"));
    }

    /// A guest's console as the init script and the load check print it.
    fn transcript(load: &str, datapath_result: &str) -> KernelResult {
        let console = format!(
            "VMTEST-INIT uptime=3.1 kernel=6.1.0-57-amd64\n\
             VMTEST-BTF yes\n\
             VMTEST-READY uptime=4.0\n\
             VMTEST-LOAD-BEGIN uptime=4.0\n\
             VMTEST-LOAD| kernel: 6.1.0-57-amd64\n\
             VMTEST-LOAD| feature | bpf_loop | 5.17 | yes\n\
             {load}\
             VMTEST-BEGIN foundation uptime=5\n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
             VMTEST-END foundation rc=0 uptime=9\n\
             VMTEST-BEGIN datapath uptime=9\n\
             test park_copies_the_whole_frame_in_order ... FAILED\n\
             test result: {datapath_result}\n\
             VMTEST-END datapath rc=0 uptime=20\n\
             VMTEST-DONE uptime=20\n\
             VMTEST-RC=0\n"
        );
        let mut r = KernelResult {
            expected_tests: 2,
            ..Default::default()
        };
        let start = Instant::now();
        let mut clock = Clock {
            started: Some(start),
            ..Default::default()
        };
        for (i, line) in console.lines().enumerate() {
            let at = start + Duration::from_secs(i as u64);
            // Markers are found anywhere in a line (kernel messages may run into them).
            let line = if line.starts_with("VMTEST-") {
                format!("[   1.0] {line}")
            } else {
                line.to_string()
            };
            parse_line(&mut r, &line, at, &mut clock);
        }
        r
    }

    const LOADED: &str = "VMTEST-LOAD| migr: loaded; verified instructions 25418, translated size 1 bytes\n\
                          VMTEST-LOAD| migr_pass: loaded; verified instructions 2, translated size 16 bytes\n\
                          VMTEST-LOAD| migr_tc: loaded; verified instructions 554, translated size 900 bytes\n\
                          VMTEST-LOAD-RC=0 uptime=5\n";

    #[test]
    fn the_console_gives_counts_times_and_instruction_counts() {
        let r = transcript(LOADED, "ok. 13 passed; 0 failed; 0 ignored");
        assert_eq!(r.loaded, Some(true));
        assert_eq!(r.btf, Some(true));
        let insns: Vec<&str> = r.insns.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(insns, ["25418", "2", "554"]);
        assert_eq!(r.totals(), (16, 0));
        assert_eq!(r.boot, Some(Duration::from_secs(2)));
        assert_eq!(r.load_time, Some(Duration::from_secs(6)));
        assert_eq!(r.test_time, Some(Duration::from_secs(6)));
        assert!(r.passed());
    }

    #[test]
    fn a_failed_test_or_an_empty_binary_fails_the_kernel() {
        let r = transcript(LOADED, "FAILED. 12 passed; 1 failed; 0 ignored");
        assert_eq!(r.totals(), (15, 1));
        assert_eq!(
            r.tests[1].failures,
            ["park_copies_the_whole_frame_in_order"]
        );
        assert!(!r.passed());
        let r = transcript(LOADED, "ok. 0 passed; 0 failed; 0 ignored");
        assert!(!r.passed(), "a binary that ran no test must not pass");
    }

    #[test]
    fn a_refused_load_keeps_the_verdict_and_the_verifier_tail() {
        let load = "VMTEST-LOAD| feature | bpf_xdp_load_bytes | 5.18 | MISSING\n\
                    VMTEST-LOAD| load failed: migr needs Linux ≥ 5.18 for bpf_xdp_load_bytes\n\
                    VMTEST-LOAD| cause: the verifier refused program migr\n\
                    VMTEST-LOAD| log | processed 10 insns\n\
                    VMTEST-LOAD-RC=1 uptime=5\n";
        let r = transcript(load, "ok. 13 passed; 0 failed");
        assert_eq!(r.loaded, Some(false));
        assert_eq!(
            r.verdict.as_deref(),
            Some("migr needs Linux ≥ 5.18 for bpf_xdp_load_bytes")
        );
        assert_eq!(r.missing, ["bpf_xdp_load_bytes (Linux ≥ 5.18): missing"]);
        assert_eq!(r.load_log.len(), 2);
        assert!(!r.passed());
    }

    #[test]
    fn the_initramfs_is_newc_cpio() {
        let mut cpio = Cpio::default();
        cpio.dir("bin");
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        let out = cpio.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0") && text.contains("TRAILER!!!\0"));
        // The file entry: mode 0100755, size 10.
        let at = text.find("init\0").unwrap();
        let header = &text[at - 110..at];
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "0000000a");
    }

    #[test]
    fn module_names_and_static_elves() {
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz"),
            "9pnet_virtio"
        );
        assert_eq!(module_name("kernel/drivers/net/veth.ko"), "veth");
        let busybox = fs::read("/bin/busybox").unwrap_or_default();
        if !busybox.is_empty() {
            assert!(is_static_elf(&busybox), "Debian's busybox-static is static");
        }
        let dynamic = fs::read("/bin/ls").unwrap();
        assert!(!is_static_elf(&dynamic));
    }
}
