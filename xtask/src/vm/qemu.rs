//! Running QEMU: the command line, the console's lines as they arrive, and the KVM probe.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    binaries::HostBinaries,
    guest::{ModulesDep, base_initramfs, init_script},
    kernel::Kernel,
    tools::Tools,
};
use crate::run;

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

/// How QEMU executes the guest, once `--accel auto` is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// The guest's memory and the host directories it may write to.
pub(super) struct Machine {
    pub(super) memory_mb: u32,
    /// Shared read-write at tags `w0`, `w1`, ... (the guest mounts them: `guest::prelude`).
    pub(super) writable: Vec<std::path::PathBuf>,
}

impl Default for Machine {
    /// The test suite's guest: nothing written back to the host.
    fn default() -> Self {
        Self {
            memory_mb: 1536,
            writable: Vec::new(),
        }
    }
}

pub(super) fn qemu_command(
    tools: &Tools,
    kernel: &Kernel,
    initramfs: &Path,
    accel: Accel,
    machine: &Machine,
    append: &str,
) -> Command {
    let mut cmd = Command::new(&tools.qemu);
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    for (i, dir) in machine.writable.iter().enumerate() {
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=w{i},security_model=none",
            dir.display()
        ));
    }
    cmd.args(["-m", &machine.memory_mb.to_string(), "-smp", "2"])
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
pub(super) struct Line {
    pub(super) at: Instant,
    pub(super) text: String,
    pub(super) stderr: bool,
}

/// Runs QEMU until it exits or `timeout` passes; hands every line to `on_line` as it arrives.
/// Returns whether QEMU exited by itself (false: it was killed at the timeout).
pub(super) fn run_qemu(
    mut cmd: Command,
    timeout: Duration,
    mut on_line: impl FnMut(&Line),
) -> Result<bool> {
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
pub(super) fn probe_kvm(tools: &Tools, vm_dir: &Path, kernel: &Kernel) -> Result<Accel> {
    let kvm = Path::new("/dev/kvm");
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_err()
    {
        println!("[vm] KVM: /dev/kvm is missing or not accessible; using TCG");
        return Ok(Accel::Tcg);
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
            return Ok(if accel == Accel::Kvm.name() {
                Accel::Kvm
            } else {
                Accel::Tcg
            });
        }
    }
    let t = Instant::now();
    let deps = ModulesDep::read(&kernel.modules())?;
    // The probe's /init powers off before it would mount or run anything.
    let script = init_script(kernel, &HostBinaries::default(), &deps, &[]);
    let cpio = base_initramfs(&script, &fs::read(&tools.busybox)?);
    let initramfs = run_dir.join("initramfs.cpio");
    fs::write(&initramfs, cpio.finish())?;
    let cmd = qemu_command(
        tools,
        kernel,
        &initramfs,
        Accel::Kvm,
        &Machine::default(),
        "migr.probe",
    );
    let mut ok = false;
    let mut last = Vec::new();
    run_qemu(cmd, KVM_PROBE_TIMEOUT, |line| {
        ok |= line.text.contains("VMTEST-PROBE-OK");
        last.push(line.text.clone());
    })?;
    let (accel, why) = if ok {
        let why = format!("a probe guest booted in {:.1}s", t.elapsed().as_secs_f64());
        (Accel::Kvm, why)
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
        (Accel::Tcg, why)
    };
    let name = accel.name();
    println!(
        "[vm] KVM: {why}; using {name} ({:.1}s spent)",
        t.elapsed().as_secs_f64()
    );
    let _ = fs::write(&verdict_file, format!("{key}\n{name}\n{why}\n"));
    Ok(accel)
}
