//! The guest: an initramfs with busybox and the 9p modules, and the /init script.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{PROGRAMS, binaries::HostBinaries, cpio::Cpio, kernel::Kernel};

/// Modules that mount the host's root: they go into the initramfs. The rest are loaded from
/// the unpacked package once the host is mounted.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Modules the tests need: veth pairs, and `ss` (sock_diag) for the MPTCP tests.
/// (veth is loaded first, and must load; these only print a note when missing.)
const TEST_MODULES: &[&str] = &["inet_diag", "tcp_diag", "udp_diag", "mptcp_diag"];
/// Host paths the guest replaces with its own mounts: nothing the guest runs may live there.
pub(super) const GUEST_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];
/// Those of [`GUEST_MOUNTS`] that are a fresh tmpfs in the guest: host directories under them
/// are bind-mounted back.
pub(super) const GUEST_TMPFS: &[&str] = &["/run", "/tmp"];
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

pub(super) struct Guest {
    pub(super) initramfs: PathBuf,
    pub(super) console_log: PathBuf,
    /// Test target names, in the order the guest runs them.
    pub(super) tests: Vec<String>,
}

impl Guest {
    pub(super) fn new(
        vm_dir: &Path,
        kernel: &Kernel,
        bins: &HostBinaries,
        filter: &[String],
    ) -> Result<Self> {
        let run_dir = vm_dir.join(format!("run-{}", kernel.series.name()));
        fs::create_dir_all(&run_dir)?;
        let deps = ModulesDep::read(&kernel.modules())?;
        let script = init_script(kernel, bins, &deps, filter);
        let cpio = initramfs_with_modules(kernel, &deps, &script)?;
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

/// [`base_initramfs`] with `init` as /init and the modules that mount the host's root.
pub(super) fn initramfs_with_modules(
    kernel: &Kernel,
    deps: &ModulesDep,
    init: &str,
) -> Result<Cpio> {
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
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox")?;
    let mut cpio = base_initramfs(init, &busybox);
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
    Ok(cpio)
}

/// The initramfs every guest starts from: its directories, a console, `/init` and busybox.
pub(super) fn base_initramfs(init: &str, busybox: &[u8]) -> Cpio {
    let mut cpio = Cpio::default();
    for dir in GUEST_DIRS {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("bin/busybox", 0o755, busybox);
    cpio
}

/// `modules.dep` of an unpacked kernel, plus `modules.builtin`.
pub(super) struct ModulesDep {
    /// (module name, its file, its dependencies' files).
    entries: Vec<(String, String, Vec<String>)>,
    builtin: Vec<String>,
}

impl ModulesDep {
    pub(super) fn read(dir: &Path) -> Result<Self> {
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
pub(super) fn sh_quote(word: &str) -> String {
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

/// What every guest does before its payload: load the modules, mount the host's root (and
/// `writable`, each the `wN`th writable share of [`super::qemu::Machine`], at its host
/// path), give the chroot its own /proc, /sys, /dev, /run and /tmp, and define `in_host`
/// (run a host program in the host's root, in `workdir`, for at most `bin_timeout`).
pub(super) fn prelude(
    kernel: &Kernel,
    deps: &ModulesDep,
    keep: &[PathBuf],
    writable: &[PathBuf],
    workdir: &Path,
    bin_timeout: Duration,
) -> String {
    let mut s = String::new();
    let q = |p: &Path| sh_quote(&p.to_string_lossy());
    let load_modules = |names: &[&str]| -> String {
        let names: Vec<&str> = names.iter().copied().filter(|m| !deps.builtin(m)).collect();
        names.join(" ")
    };
    let mut shares = String::new();
    for (i, dir) in writable.iter().enumerate() {
        let at = sh_quote(&format!("/host{}", dir.display()));
        let _ = writeln!(
            shares,
            "mkdir -p {at} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 w{i} {at} \\\n  || fail \"mounting the writable share {at}\""
        );
    }
    let _ = write!(
        s,
        r#"#!/bin/busybox sh
# Generated by `cargo xtask vm-test` (xtask/src/vm/guest.rs); the guest's PID 1.
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
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || fail "mounting cgroup2"
{keep_save}mount -t tmpfs tmpfs /host/run || fail "mounting /run"
mount -t tmpfs tmpfs /host/tmp || fail "mounting /tmp"
{keep_restore}{shares}# Linux 6.1 hands a frame that native XDP on a veth passed to the stack as a whole page
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
"#,
        boot = load_modules(BOOT_MODULES),
        test = load_modules(TEST_MODULES),
        modules = q(&kernel.modules()),
        kver = kernel.kver,
        path = GUEST_PATH,
        workdir = q(workdir),
        keep_save = keep_lines(keep, true),
        keep_restore = keep_lines(keep, false),
        rmem = GUEST_RMEM_DEFAULT,
        bin_timeout = bin_timeout.as_secs(),
        backtrace = std::env::var("RUST_BACKTRACE")
            .map(|v| format!("RUST_BACKTRACE={} ", sh_quote(&v)))
            .unwrap_or_default(),
    );
    s
}

/// The test suite's /init: [`prelude`], the load check, then each test binary.
pub(super) fn init_script(
    kernel: &Kernel,
    bins: &HostBinaries,
    deps: &ModulesDep,
    filter: &[String],
) -> String {
    let mut s = prelude(
        kernel,
        deps,
        &bins.keep,
        &[],
        &bins.workdir,
        GUEST_BINARY_TIMEOUT,
    );
    let q = |p: &Path| sh_quote(&p.to_string_lossy());
    let _ = write!(
        s,
        r#"rc=0
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
        verifier = q(&bins.verifier),
        programs = PROGRAMS.len(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz"),
            "9pnet_virtio"
        );
        assert_eq!(module_name("kernel/drivers/net/veth.ko"), "veth");
    }
}
