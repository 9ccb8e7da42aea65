//! The service as a runc container (docs/containers.md,
//! shared/notes/containers.md): an OCI bundle made here (no registry: a
//! busybox rootfs, the host's libraries and the testbed's programs bound in
//! read-only), the container's network namespace the testbed's container
//! namespace, one runc state directory per node. runc runs CRIU over RPC;
//! the bundle's `org.criu.config` annotation names a CRIU config file whose
//! `action-script` is the node's hook (it replaces `/etc/criu/runc.conf`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use migr_testkit::NetNs;

/// The in-container paths of what the bundle binds in.
pub const PROGRAMS: &str = "/migr";
pub const FILES: &str = "/files";

/// One node's runc: its own state directory (`runc --root`), so that both
/// nodes can hold a container of the same id.
#[derive(Clone)]
pub struct Runc {
    root: PathBuf,
}

/// A container's bundle: the directory with `config.json` and `rootfs`.
pub struct Bundle {
    pub dir: PathBuf,
}

impl Bundle {
    /// Makes a bundle in `dir` whose process runs `args` (a shell command
    /// line, run by busybox sh) in network namespace `ns`, with `programs`
    /// (a host directory) at [`PROGRAMS`] read-only, `files` (a host
    /// directory, for the service's logs and outputs) at [`FILES`]
    /// read-write, and `criu_config` as CRIU's config file.
    pub fn create(
        dir: &Path,
        ns: &NetNs,
        command: &str,
        programs: &Path,
        files: &Path,
        criu_config: &Path,
    ) -> Result<Self> {
        make_rootfs(&dir.join("rootfs"))?;
        let spec = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir)
            .output()
            .context("running `runc spec` (cargo xtask setup installs runc)")?;
        if !spec.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&spec.stderr));
        }
        let path = dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let bind = |dest: &str, src: &Path, mode: &str| {
            json!({"destination": dest, "type": "bind", "source": src,
                   "options": ["bind", mode]})
        };
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["/bin/sh", "-c", command]);
        config["root"]["readonly"] = json!(true);
        config["annotations"] = json!({"org.criu.config": criu_config});
        // Bind sources must be real directories: CRIU cannot restore a bind
        // mount of a symlink (Debian's /lib and /lib64 are symlinks).
        let mounts = config["mounts"]
            .as_array_mut()
            .context("config.json without mounts")?;
        for (dest, src) in [
            ("/lib", "/usr/lib"),
            ("/lib64", "/usr/lib64"),
            ("/usr/lib", "/usr/lib"),
        ] {
            let src = std::fs::canonicalize(src).with_context(|| format!("resolving {src}"))?;
            mounts.push(bind(dest, &src, "ro"));
        }
        mounts.push(bind(PROGRAMS, &std::fs::canonicalize(programs)?, "ro"));
        mounts.push(bind(FILES, &std::fs::canonicalize(files)?, "rw"));
        let namespaces = config["linux"]["namespaces"]
            .as_array_mut()
            .context("config.json without namespaces")?;
        let net = namespaces
            .iter_mut()
            .find(|n| n["type"] == "network")
            .context("config.json without a network namespace")?;
        net["path"] = json!(format!("/run/netns/{}", ns.name()));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

/// A container's root file system: busybox (as `sh`), and the mount points
/// of the host's libraries, [`PROGRAMS`] and [`FILES`].
pub fn make_rootfs(rootfs: &Path) -> Result<()> {
    for sub in [
        "bin", "proc", "dev", "sys", "tmp", "lib", "lib64", "usr/lib",
    ] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    for sub in [PROGRAMS, FILES] {
        std::fs::create_dir_all(rootfs.join(sub.trim_start_matches('/')))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is not installed (cargo xtask setup installs it)")?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    let sh = rootfs.join("bin/sh");
    if !sh.exists() {
        std::os::unix::fs::symlink("busybox", &sh)?;
    }
    Ok(())
}

/// Waits for a runtime's restore command; runs `resumed` as soon as
/// `phases` (the hook's stamps) shows post-resume (the runtime returns some
/// tens of ms later), at the latest when the command returned.
pub fn wait_telling_resumed(
    mut child: std::process::Child,
    phases: &Path,
    resumed: &mut dyn FnMut() -> Result<()>,
) -> Result<std::process::ExitStatus> {
    let mut told = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !told && std::fs::read_to_string(phases).is_ok_and(|t| t.contains("post-resume ")) {
            told = true;
            resumed()?;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    if status.success() && !told {
        resumed()?;
    }
    Ok(status)
}

/// A CRIU config file that runs `hook` at every action.
pub fn criu_config(path: &Path, hook: &Path) -> Result<()> {
    std::fs::write(path, format!("action-script {}\n", hook.display()))
        .with_context(|| format!("writing {}", path.display()))
}

impl Runc {
    pub fn new(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs `cmd` with its output in `log`; seconds it took.
    fn run(&self, mut cmd: Command, what: &str, log: &Path) -> Result<f64> {
        let started = Instant::now();
        let out = std::fs::File::create(log)?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("running {what}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "{what} failed ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        Ok(seconds)
    }

    /// `runc run -d`: the container's stdio goes nowhere (a host file as
    /// its stdout would make the dump fail); the process writes its own
    /// files under [`FILES`].
    pub fn run_detached(&self, id: &str, bundle: &Bundle, log: &Path) -> Result<i32> {
        let mut cmd = self.cmd();
        cmd.args(["run", "-d", "--bundle"]).arg(&bundle.dir).arg(id);
        self.run(cmd, "runc run", log)?;
        self.pid(id)
    }

    /// The container's init, as the host sees it.
    pub fn pid(&self, id: &str) -> Result<i32> {
        let out = self.cmd().args(["state", id]).output()?;
        if !out.status.success() {
            bail!("runc state {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let state: Value = serde_json::from_slice(&out.stdout)?;
        let pid = state["pid"].as_i64().context("runc state without a pid")?;
        if pid <= 0 {
            bail!("runc state {id}: status {}, no process", state["status"]);
        }
        Ok(pid as i32)
    }

    /// `runc checkpoint` into `images` (absolute); the container stops.
    pub fn checkpoint(&self, id: &str, images: &Path, work: &Path, extra: &[&str]) -> Result<f64> {
        std::fs::create_dir_all(work)?;
        let mut cmd = self.cmd();
        cmd.arg("checkpoint")
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(work)
            .args(extra)
            .arg(id);
        self.run(cmd, "runc checkpoint", &work.join("runc.log"))
            .with_context(|| format!("CRIU's log: {}", work.join("dump.log").display()))
    }

    /// `runc restore -d` of `images` (absolute) as container `id` from
    /// `bundle`; returns the seconds it took and the restored init's PID.
    /// `resumed` runs once the restored container runs
    /// ([`wait_telling_resumed`]).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        id: &str,
        bundle: &Bundle,
        images: &Path,
        work: &Path,
        extra: &[&str],
        phases: &Path,
        resumed: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(f64, i32)> {
        std::fs::create_dir_all(work)?;
        let log = work.join("runc.log");
        let out = std::fs::File::create(&log)?;
        let started = Instant::now();
        let child = self
            .cmd()
            .args(["restore", "-d", "--image-path"])
            .arg(images)
            .arg("--work-path")
            .arg(work)
            .arg("--bundle")
            .arg(&bundle.dir)
            .args(extra)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("running runc restore")?;
        let status = wait_telling_resumed(child, phases, resumed)?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "runc restore failed ({status}): {}; CRIU's log: {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim(),
                work.join("restore.log").display()
            );
        }
        Ok((seconds, self.pid(id)?))
    }

    /// Kills and deletes container `id` if it exists (teardown).
    pub fn remove(&self, id: &str) {
        let quiet = |mut c: Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        let mut kill = self.cmd();
        kill.args(["kill", id, "KILL"]);
        quiet(kill);
        let mut delete = self.cmd();
        delete.args(["delete", "--force", id]);
        quiet(delete);
    }
}
