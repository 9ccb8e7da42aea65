//! `cargo xtask vm-test`: the privileged tests under Debian's long-term-support kernels, in QEMU.
//!
//! For each kernel: resolve the Debian package (apt-cache), download and unpack it once into
//! `target/vm/` (apt-get download, dpkg-deb, busybox depmod), write a tiny initramfs (busybox
//! as /init, the modules that mount 9p), and boot it. The guest mounts the host's root read-only
//! over 9p, mounts proc/sys/dev/bpffs and tmpfs (/run, /tmp) into it, and runs the test binaries
//! already built on the host in a chroot. The serial console carries `VMTEST-*` markers that this
//! side parses; QEMU's exit status means nothing (poweroff exits 0). See docs/vm-tests.md.

mod binaries;
mod console;
mod cpio;
mod guest;
mod kernel;
mod qemu;
mod summary;
mod testbed;
mod tools;

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use kernel::Series;
pub use testbed::{CHECK_SCENARIO, GUEST_FILE, TestbedVm, check_techniques_in_vm, testbed_in_vm};

use crate::run;
use binaries::build_host_binaries;
use console::{Clock, KernelResult, parse_line};
use guest::Guest;
use kernel::{Kernel, fetch_kernel};
use qemu::{Accel, Machine, probe_kvm, qemu_command, run_qemu};
use summary::print_report;
use tools::{Tools, preflight};

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
    /// 6.1 and 6.12.
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

/// The programs the load check reports.
const PROGRAMS: &[&str] = &["migr", "migr_full", "migr_pass", "migr_tc"];
/// The test binaries of `migr-tests` the guest runs by default: BPF_PROG_TEST_RUN fixtures
/// and veth traffic. Not `agent` (agent, CRIU) nor `storm` (a million frames: minutes under
/// TCG).
const GUEST_TESTS: &[&str] = &["foundation", "datapath", "traffic"];

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

    let accel = match opts.accel {
        AccelArg::Auto => probe_kvm(&tools, &vm_dir, &kernels[0])?,
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    };

    let mut results = Vec::new();
    for kernel in &kernels {
        let guest = Guest::new(&vm_dir, kernel, &bins, &opts.filter)?;
        results.push(boot_and_test(&tools, &guest, kernel, accel, opts.timeout)?);
    }

    print_report(&results, accel);
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.succeeded())
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

fn boot_and_test(
    tools: &Tools,
    guest: &Guest,
    kernel: &Kernel,
    accel: Accel,
    timeout: Duration,
) -> Result<KernelResult> {
    let cmd = qemu_command(
        tools,
        kernel,
        &guest.initramfs,
        accel,
        &Machine::default(),
        "",
    );
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
