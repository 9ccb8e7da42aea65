//! The service as a podman container (docs/containers.md,
//! shared/notes/containers.md). A node is its own podman storage
//! (`--root`, `--runroot`); the image is made here (no registry: the same
//! busybox rootfs as runc's bundle, imported on the source node and carried
//! to the destination node with `save | load`, so that both hold the same
//! image id, which a restore looks the image up by).
//!
//! The paths a container names travel with its checkpoint, and
//! `restore --import` cannot change them: the network namespace podman
//! joins it to (`ns:PATH`) and the CRIU config file its `org.criu.config`
//! annotation names (runc reads it, as under plain runc). On real nodes
//! they are the same paths with each node's own files there; here both
//! nodes share one machine, so every podman command runs in a private
//! mount namespace where the shared paths ([`SharedPaths`]) are bind mounts
//! of the node's own container namespace and CRIU config: the source's at
//! run and checkpoint (runc must see the real namespace there to leave it
//! out of the dump, or CRIU dumps it and restores a new, empty one), the
//! destination's at restore.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::runc::{self, FILES, PROGRAMS};
use migr_testkit::NetNs;

/// The image both nodes hold.
const IMAGE: &str = "localhost/migr-testbed:1";

/// One node's podman: its storage, and the container namespace its
/// commands see at the shared path.
#[derive(Clone)]
pub struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    /// What this node's podman sees at the paths both nodes' containers
    /// name: (the node's file, the shared path).
    binds: Vec<(PathBuf, PathBuf)>,
}

/// The paths a container names, which its checkpoint carries to the other
/// node: the same on both, each node's podman seeing its own file there.
pub struct SharedPaths {
    /// The container's network namespace.
    pub netns: PathBuf,
    /// The CRIU config file (`org.criu.config`): the node's own hook.
    pub criu_config: PathBuf,
}

impl Podman {
    /// A node whose images and containers are under `root`, its state under
    /// `runroot` (podman takes at most 50 characters), whose containers
    /// find its container namespace `ns` and its CRIU config file
    /// `criu_config` at `shared` (empty files the caller made).
    pub fn new(
        root: &Path,
        runroot: &Path,
        ns: &NetNs,
        criu_config: &Path,
        shared: &SharedPaths,
    ) -> Result<Self> {
        if runroot.as_os_str().len() > 50 {
            bail!(
                "podman's runroot {} is longer than 50 characters",
                runroot.display()
            );
        }
        for dir in [root, runroot] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            runroot: runroot.to_path_buf(),
            binds: vec![
                (
                    PathBuf::from(format!("/run/netns/{}", ns.name())),
                    shared.netns.clone(),
                ),
                (criu_config.to_path_buf(), shared.criu_config.clone()),
            ],
        })
    }

    /// `podman ARGS` in a private mount namespace where the shared paths
    /// are this node's files.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        let script = "while [ \"$1\" != -- ]; do mount --bind \"$1\" \"$2\" || exit 125; shift 2; done; \
                      shift; exec podman \"$@\"";
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ]);
        for (own, shared) in &self.binds {
            c.arg(own).arg(shared);
        }
        c.arg("--")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            // No systemd, no journald here; runc, as the notes verified.
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ])
            .args(args);
        c
    }

    /// Runs `podman ARGS` with its output in `log`; seconds it took.
    fn run(&self, args: &[&str], log: &Path) -> Result<f64> {
        let started = Instant::now();
        let out = std::fs::File::create(log)?;
        let status = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("running podman (cargo xtask setup installs it)")?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "podman {} failed ({status}): {}",
                args.first().copied().unwrap_or_default(),
                std::fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        Ok(seconds)
    }

    /// Imports `rootfs` as the image on this node and copies it to `other`.
    pub fn import_image(&self, rootfs: &Path, other: &Podman, work: &Path) -> Result<()> {
        let tar = work.join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()?;
        if !status.success() {
            bail!("tar of {} failed", rootfs.display());
        }
        let tar = tar.to_string_lossy().into_owned();
        self.run(&["import", &tar, IMAGE], &work.join("podman-import.log"))?;
        let saved = work.join("image-saved.tar").to_string_lossy().into_owned();
        self.run(
            &["save", "--output", &saved, IMAGE],
            &work.join("podman-save.log"),
        )?;
        other.run(&["load", "--input", &saved], &work.join("podman-load.log"))?;
        Ok(())
    }

    /// `podman run -d` of `command` (a busybox sh command line) as container
    /// `name`, with the host's libraries and `programs` read-only and
    /// `files` read-write. The container's init PID.
    pub fn run_detached(
        &self,
        name: &str,
        command: &str,
        programs: &Path,
        files: &Path,
        log: &Path,
    ) -> Result<i32> {
        let mut volumes = Vec::new();
        // Real directories: CRIU cannot restore a bind mount of a symlink.
        for (src, dest, mode) in [
            (PathBuf::from("/usr/lib"), "/lib", "ro"),
            (PathBuf::from("/usr/lib64"), "/lib64", "ro"),
            (PathBuf::from("/usr/lib"), "/usr/lib", "ro"),
            (programs.to_path_buf(), PROGRAMS, "ro"),
            (files.to_path_buf(), FILES, "rw"),
        ] {
            let src = std::fs::canonicalize(&src)
                .with_context(|| format!("resolving {}", src.display()))?;
            volumes.push(format!("{}:{dest}:{mode}", src.display()));
        }
        let network = format!("ns:{}", self.binds[0].1.display());
        let annotation = format!("org.criu.config={}", self.binds[1].1.display());
        let mut args = vec!["run", "-d", "--name", name, "--network", &network];
        // This sandbox refuses to raise rlimits (the notes).
        args.extend([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        args.extend(["--annotation", &annotation]);
        for v in &volumes {
            args.extend(["--volume", v]);
        }
        args.extend([IMAGE, "/bin/sh", "-c", command]);
        self.run(&args, log)?;
        self.pid(name)
    }

    /// `podman inspect --format FORMAT name`.
    fn inspect(&self, name: &str, format: &str) -> Result<String> {
        let out = self.cmd(&["inspect", "--format", format, name]).output()?;
        if !out.status.success() {
            bail!(
                "podman inspect {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The container's id (its cgroups name it).
    pub fn id(&self, name: &str) -> Result<String> {
        self.inspect(name, "{{.Id}}")
    }

    /// The container's init, as the host sees it.
    pub fn pid(&self, name: &str) -> Result<i32> {
        let pid: i32 = self
            .inspect(name, "{{.State.Pid}}")?
            .parse()
            .context("podman inspect: the PID")?;
        if pid <= 0 {
            bail!("podman inspect {name}: no process");
        }
        Ok(pid)
    }

    /// `podman container checkpoint --export images/checkpoint.tar.gz`; the
    /// container stops.
    pub fn checkpoint(&self, name: &str, images: &Path, extra: &[&str], log: &Path) -> Result<f64> {
        std::fs::create_dir_all(images)?;
        let export = archive(images);
        let mut args = vec!["container", "checkpoint", "--export", &export];
        args.extend_from_slice(extra);
        args.push(name);
        self.run(&args, log)
    }

    /// `podman container restore --import` of the archive in `images`;
    /// `resumed` runs as soon as `phases` shows post-resume (at the latest
    /// when podman returned). Seconds it took and the restored init's PID.
    pub fn restore(
        &self,
        name: &str,
        images: &Path,
        extra: &[&str],
        (log, phases): (&Path, &Path),
        resumed: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(f64, i32)> {
        let import = archive(images);
        let mut args = vec!["container", "restore", "--import", &import];
        args.extend_from_slice(extra);
        let out = std::fs::File::create(log)?;
        let started = Instant::now();
        let child = self
            .cmd(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("running podman container restore")?;
        let status = runc::wait_telling_resumed(child, phases, resumed)?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "podman container restore failed ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        Ok((seconds, self.pid(name)?))
    }

    /// Removes container `name` if it exists (teardown).
    pub fn remove(&self, name: &str) {
        let _ = self
            .cmd(&["rm", "--force", "--time", "0", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn archive(images: &Path) -> String {
    images
        .join("checkpoint.tar.gz")
        .to_string_lossy()
        .into_owned()
}
