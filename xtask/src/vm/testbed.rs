//! `cargo xtask testbed --vm 6.12`: the testbed's scenarios inside a Debian guest, for what
//! this host's kernel cannot do (soft-dirty tracking for CRIU's pre-dumps). The guest is the
//! VM suite's (guest.rs): the host's root read-only, its own /run and /tmp; the results
//! directory is shared read-write, so `migr-testbed` writes its JSON and CSV there as on
//! the host.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    AccelArg,
    binaries::keep_dirs,
    guest::{ModulesDep, initramfs_with_modules, prelude},
    kernel::{Series, fetch_kernel},
    qemu::{Accel, Machine, probe_kvm, qemu_command, run_qemu},
    tools::preflight,
};
use crate::run;

/// What to run in the guest.
pub struct TestbedVm<'a> {
    pub series: Series,
    pub accel: AccelArg,
    /// migr-testbed (its helpers beside it).
    pub testbed: &'a Path,
    /// `migr-testbed` arguments after `scenario` (a name, `--runs N`).
    pub args: Vec<String>,
    /// Where the results go (`--out`), on the host.
    pub out: PathBuf,
    /// The whole guest, boot to power-off.
    pub timeout: Duration,
}

/// The guest's memory: the service (up to 50 MB), its images on the guest's tmpfs /tmp at
/// the source and the destination, and a pre-dump of each.
const MEMORY_MB: u32 = 3072;

pub fn testbed_in_vm(vm: &TestbedVm<'_>) -> Result<()> {
    let started = Instant::now();
    let tools = preflight()?;
    let vm_dir = run::workspace_root().join("target/vm");
    fs::create_dir_all(&vm_dir)?;
    fs::create_dir_all(&vm.out).with_context(|| format!("creating {}", vm.out.display()))?;
    let kernel = fetch_kernel(&vm_dir, vm.series)?;
    let accel = match vm.accel {
        AccelArg::Auto => probe_kvm(&tools, &vm_dir, &kernel)?,
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    };
    let run_dir = vm_dir.join(format!("testbed-{}", vm.series.name()));
    fs::create_dir_all(&run_dir)?;
    let deps = ModulesDep::read(&kernel.modules())?;
    let keep = keep_dirs(&[vm.testbed, &vm.out])?;
    let workdir = run::workspace_root();
    let mut script = prelude(&kernel, &deps, &keep, &[vm.out.clone()], &workdir, vm.timeout);
    let quoted: Vec<String> = vm.args.iter().map(|a| format!("'{a}'")).collect();
    script.push_str(&format!(
        r#"# CRIU's kernel probes connect over loopback and open /dev/net/tun.
ip link set lo up || fail "bringing lo up"
modprobe tun || echo "VMTEST-NOTE no module tun"
echo "VMTEST-TESTBED-BEGIN uptime=$(up)"
echo "VMTEST-CRIU $(in_host {criu} check --feature mem_dirty_track 2>&1 | tail -1)"
in_host '{testbed}' scenario {args} --out '{out}'
rc=$?
echo "VMTEST-TESTBED-END rc=$rc uptime=$(up)"
echo "VMTEST-RC=$rc"
sync
poweroff -f
sleep 60
"#,
        criu = crate::criu::INSTALL_PATH,
        testbed = vm.testbed.display(),
        args = quoted.join(" "),
        out = vm.out.display(),
    ));
    let cpio = initramfs_with_modules(&kernel, &deps, &script)?;
    let initramfs = run_dir.join("initramfs.cpio");
    fs::write(&initramfs, cpio.finish())?;
    fs::write(run_dir.join("init.sh"), &script)?;
    let machine = Machine {
        memory_mb: MEMORY_MB,
        writable: vec![vm.out.clone()],
    };
    let cmd = qemu_command(&tools, &kernel, &initramfs, accel, &machine, "");
    println!(
        "[vm] testbed in Linux {} ({}, {})",
        kernel.kver,
        kernel.version,
        accel.name()
    );
    println!("[vm] {}", run::render(&cmd));
    let console = run_dir.join("console.log");
    let mut log =
        fs::File::create(&console).with_context(|| format!("creating {}", console.display()))?;
    let mut rc = None;
    let exited = run_qemu(cmd, vm.timeout + Duration::from_secs(120), |line| {
        use std::io::Write as _;
        let _ = writeln!(log, "{}", line.text);
        println!("[vm {}] {}", vm.series.name(), line.text);
        if let Some(v) = line.text.strip_prefix("VMTEST-RC=") {
            rc = v.trim().parse::<i32>().ok();
        }
    })?;
    println!(
        "[vm] testbed guest done in {:.0}s; results in {}",
        started.elapsed().as_secs_f64(),
        vm.out.display()
    );
    match (exited, rc) {
        (_, Some(0)) => Ok(()),
        (false, _) => bail!(
            "the testbed guest timed out after {}s (console: {})",
            vm.timeout.as_secs(),
            console.display()
        ),
        (true, rc) => bail!(
            "the testbed failed in the guest (rc {rc:?}; console: {})",
            console.display()
        ),
    }
}
