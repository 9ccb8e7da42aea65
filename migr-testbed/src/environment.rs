//! What every run needs: the programs, CRIU and its cache, a work directory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// The programs a run starts.
#[derive(Clone, Debug)]
pub struct Bins {
    pub agent: PathBuf,
    pub ctl: PathBuf,
    pub echo: PathBuf,
    /// migr-testbed itself (its tcp-server and tcp-client commands).
    pub testbed: PathBuf,
    pub criu: PathBuf,
}

/// Where `cargo xtask setup` installs CRIU.
pub const CRIU_PATH: &str = "/usr/local/sbin/criu";

impl Bins {
    /// The binaries in `dir` (a cargo profile directory, e.g. target/debug).
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            agent: dir.join("migr-agent"),
            ctl: dir.join("migrctl"),
            echo: dir.join("migr-echo"),
            testbed: dir.join("migr-testbed"),
            criu: PathBuf::from(CRIU_PATH),
        };
        for p in [&bins.agent, &bins.ctl, &bins.echo, &bins.testbed] {
            if !p.exists() {
                bail!(
                    "{} is missing; build it with `cargo build -p migr-user -p migr-quic -p migr-testbed --bins`",
                    p.display()
                );
            }
        }
        if !bins.criu.exists() {
            bail!(
                "{} is missing: the testbed needs CRIU 4.1.1 as `cargo xtask setup` installs it",
                bins.criu.display()
            );
        }
        Ok(bins)
    }

    /// Builds migr-agent, migrctl, migr-echo and migr-testbed into this executable's
    /// profile directory with cargo (a no-op when they are fresh), then
    /// returns them. For tests, which run under cargo.
    pub fn build() -> Result<Self> {
        let dir =
            migr_testkit::process::build_binaries(&["migr-user", "migr-quic", "migr-testbed"])?;
        Self::in_dir(&dir)
    }
}

/// Fails with a message naming what is missing when the testbed cannot run.
pub fn check_environment() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the testbed needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, and what CRIU needs)"
        );
    }
    for (tool, args, package) in [
        ("ip", &["-V"][..], "iproute2"),
        ("tc", &["-V"][..], "iproute2"),
        ("nft", &["--version"][..], "nftables"),
        ("ethtool", &["--version"][..], "ethtool"),
        ("nsenter", &["--version"][..], "util-linux"),
    ] {
        let ok = std::process::Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!("the testbed needs `{tool}` ({package}); run `cargo xtask setup`");
        }
    }
    criu_cache_dir()?;
    let criu = std::process::Command::new(CRIU_PATH)
        .arg("--version")
        .output();
    if !criu.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Version: 4.1.1")) {
        bail!("the testbed needs CRIU 4.1.1 at {CRIU_PATH}; run `cargo xtask setup`");
    }
    Ok(())
}

/// Where the CRIU that `cargo xtask setup` builds keeps its kernel-feature
/// cache (its RUNDIR; xtask/src/criu.rs).
pub const CRIU_RUNDIR: &str = "/run/migr-criu";

/// Makes CRIU's cache directory a root-only tmpfs (CRIU keeps `criu.kdat`
/// only on a tmpfs; without it every dump and restore first probes the
/// kernel, ~45 ms of downtime each here). A 1 MiB tmpfs is mounted there if
/// the directory is not on one already; it stays until reboot.
pub fn criu_cache_dir() -> Result<()> {
    let dir = Path::new(CRIU_RUNDIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {CRIU_RUNDIR}"))?;
    // SAFETY: statfs into a zeroed struct we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(CRIU_RUNDIR)?;
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
        bail!("statfs {CRIU_RUNDIR}: {}", std::io::Error::last_os_error());
    }
    if fs.f_type != libc::TMPFS_MAGIC {
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "mode=0700,size=1m",
                "migr-criu",
                CRIU_RUNDIR,
            ])
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting a tmpfs on {CRIU_RUNDIR} failed ({status})");
        }
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A fresh work directory for one run under `base`, removed on drop unless
/// `keep` is set.
pub struct WorkDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl WorkDir {
    pub fn new(base: &Path, label: &str) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("migr-tb{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Wall-clock time in seconds since the epoch (the clock CRIU's hooks and the
/// agents' timelines use too).
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
