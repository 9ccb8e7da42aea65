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
    guest::{ModulesDep, initramfs_with_modules, prelude, sh_quote},
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

/// The file in the results directory that names the guest (`cargo xtask report` quotes it).
pub const GUEST_FILE: &str = "guest.txt";

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
    let mut script = prelude(
        &kernel,
        &deps,
        &keep,
        std::slice::from_ref(&vm.out),
        &workdir,
        vm.timeout,
    );
    let quoted: Vec<String> = vm.args.iter().map(|a| sh_quote(a)).collect();
    script.push_str(&format!(
        r#"# CRIU's kernel probes connect over loopback and open /dev/net/tun.
ip link set lo up || fail "bringing lo up"
modprobe tun || echo "VMTEST-NOTE no module tun"
echo "VMTEST-TESTBED-BEGIN uptime=$(up)"
echo "VMTEST-CRIU $(in_host {criu} check --feature mem_dirty_track 2>&1 | tail -1)"
in_host {testbed} scenario {args} --out {out}
rc=$?
echo "VMTEST-TESTBED-END rc=$rc uptime=$(up)"
echo "VMTEST-RC=$rc"
sync
poweroff -f
sleep 60
"#,
        criu = crate::criu::INSTALL_PATH,
        testbed = sh_quote(&vm.testbed.to_string_lossy()),
        args = quoted.join(" "),
        out = sh_quote(&vm.out.to_string_lossy()),
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
    // What the results were measured on, for the report (`GUEST_FILE`).
    fs::write(
        vm.out.join(GUEST_FILE),
        format!(
            "Linux {} (Debian package {} {}) in QEMU with {}, 2 vCPUs, {MEMORY_MB} MiB, on a host \
             running Linux {}\n",
            kernel.kver,
            kernel.package,
            kernel.version,
            match accel {
                Accel::Kvm => "KVM",
                Accel::Tcg => "TCG (emulation: absolute times are slow, compare ratios)",
            },
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        ),
    )?;
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

/// The scenario `cargo xtask test` runs once in a guest: hybrid (a pre-dump, then a lazy final
/// dump whose pages the destination fetches over the links), QUIC P-Explicit, steering on.
pub const CHECK_SCENARIO: &str = "techniques-quic-p-explicit-hybrid-steering-on";

/// Guests [`check_techniques_in_vm`] boots at most.
const CHECK_ATTEMPTS: u32 = 2;

/// The VM testbed stage of `cargo xtask test`: one run of [`CHECK_SCENARIO`] in a 6.12 guest,
/// then [`verify_technique_run`] on what it wrote.
pub fn check_techniques_in_vm(testbed: &Path) -> Result<()> {
    let out = run::workspace_root().join("target/vm/testbed-check");
    let vm = TestbedVm {
        series: Series::V6_12,
        accel: AccelArg::Auto,
        testbed,
        args: vec![CHECK_SCENARIO.into(), "--runs".into(), "1".into()],
        out: out.clone(),
        timeout: Duration::from_secs(900),
    };
    // A run that fails outright (CRIU or the guest under emulation on a loaded machine) gets
    // one more guest, and the failure stays on the console; what a run that completed shows
    // is judged once.
    for attempt in 1..=CHECK_ATTEMPTS {
        if out.exists() {
            fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
        }
        match testbed_in_vm(&vm) {
            Ok(()) => break,
            Err(e) if attempt < CHECK_ATTEMPTS => {
                println!("[vm] attempt {attempt} of {CHECK_SCENARIO} failed, once more: {e:#}")
            }
            Err(e) => return Err(e),
        }
    }
    let path = out.join(format!("{CHECK_SCENARIO}.json"));
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    verify_technique_run(&doc).with_context(|| format!("checking {}", path.display()))?;
    println!(
        "[vm] {CHECK_SCENARIO}: the pre-dump ran while migr passed traffic, migr parked from the final dump, the pages came over the links, nothing was lost"
    );
    Ok(())
}

/// What one hybrid run with steering must show: it succeeded and lost nothing; the pre-dump
/// ran before CRIU's `pre-dump` action (the final dump) with the source's datapath still
/// passing; the lazy pages were all served.
pub fn verify_technique_run(doc: &serde_json::Value) -> Result<()> {
    let failed = doc["failed_runs"].as_array().context("no failed_runs")?;
    if !failed.is_empty() {
        bail!("the run failed: {failed:?}");
    }
    let runs = doc["runs"].as_array().context("no runs")?;
    let [run] = &runs[..] else {
        bail!("{} runs, expected one", runs.len());
    };
    let num = |k: &str| run[k].as_f64().with_context(|| format!("no number {k}"));
    if run["client_ok"] != true {
        bail!("the client failed: {}", run["client_error"]);
    }
    if num("requests_lost")? != 0.0 {
        bail!("{} requests lost", num("requests_lost")?);
    }
    for side in ["source", "destination"] {
        let frames = &run["frames"][side];
        for k in [
            "dropped",
            "overflow",
            "park_failed",
            "forward_failed",
            "replay_failed",
        ] {
            let n = frames[k]
                .as_u64()
                .with_context(|| format!("no frames.{side}.{k}"))?;
            if n != 0 {
                bail!("frames.{side}.{k} = {n}");
            }
        }
    }
    let pre_dumps = run["pre_dumps"].as_array().context("no pre_dumps")?;
    if pre_dumps.is_empty() {
        bail!("no pre-dump ran");
    }
    let datapath = run["src_datapath_after_pre_copy"].as_str();
    if datapath != Some("pass") {
        bail!("the source's datapath after the pre-dump: {datapath:?}, expected \"pass\"");
    }
    let actions = run["criu_actions"]["dump"]
        .as_array()
        .context("no criu_actions.dump")?;
    let at = |name: &str| {
        actions
            .iter()
            .find(|a| a["action"] == name)
            .and_then(|a| a["time_s"].as_f64())
            .with_context(|| format!("no {name} in criu_actions.dump"))
    };
    let last = format!("pre-copy-end-{}", pre_dumps.len());
    if at(&last)? >= at("pre-dump")? {
        bail!("the hook's pre-dump action did not come after {last}");
    }
    if num("lazy_pages_ms").is_err() {
        bail!("the lazy pages were not all served (no lazy_pages_ms)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> serde_json::Value {
        let frames = json!({"dropped": 0, "overflow": 0, "park_failed": 0, "forward_failed": 0,
                            "replay_failed": 0});
        json!({
            "failed_runs": [],
            "runs": [{
                "client_ok": true, "client_error": null, "requests_lost": 0,
                "frames": {"source": frames, "destination": frames},
                "pre_dumps": [{"dump_ms": 900.0}],
                "src_datapath_after_pre_copy": "pass",
                "criu_actions": {"dump": [
                    {"action": "pre-copy-start-1", "time_s": 1.0},
                    {"action": "pre-copy-end-1", "time_s": 2.0},
                    {"action": "pre-dump", "time_s": 5.0},
                ]},
                "lazy_pages_ms": 40.0,
            }],
        })
    }

    #[test]
    fn a_good_hybrid_run_passes() {
        verify_technique_run(&good()).unwrap();
    }

    #[test]
    fn each_broken_promise_fails() {
        type Breaker = fn(&mut serde_json::Value);
        let cases: [(&str, Breaker); 6] = [
            ("lost", |d| d["runs"][0]["requests_lost"] = json!(1)),
            ("parked early", |d| {
                d["runs"][0]["src_datapath_after_pre_copy"] = json!("park")
            }),
            ("hook inside", |d| {
                d["runs"][0]["criu_actions"]["dump"][2]["time_s"] = json!(1.5)
            }),
            ("no pre-dump", |d| d["runs"][0]["pre_dumps"] = json!([])),
            ("overflow", |d| {
                d["runs"][0]["frames"]["destination"]["overflow"] = json!(3)
            }),
            ("no lazy", |d| d["runs"][0]["lazy_pages_ms"] = json!(null)),
        ];
        for (name, break_it) in cases {
            let mut doc = good();
            break_it(&mut doc);
            assert!(verify_technique_run(&doc).is_err(), "{name} passed");
        }
    }
}
