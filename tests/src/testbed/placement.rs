//! Where the service runs and how it is checkpointed: a bare process that
//! the testbed's CRIU dumps from the root namespace (`criu`), or a runc
//! container that runc checkpoints and restores, driving CRIU over RPC
//! (`runc`, docs/containers.md). A run starts, dumps and restores it the
//! same way in both cases.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins, criu,
    proc::{Adopted, Proc, Spawn},
    runc::{self, Bundle, Runc},
};
use crate::NetNs;

/// What checkpoints the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// CRIU itself, on a process tree in the source container's namespace.
    Criu,
    /// A runc container (runc runs CRIU; the hook comes from a CRIU config
    /// file named by the bundle).
    Runc,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Criu => "criu",
            Self::Runc => "runc",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "criu" => Ok(Self::Criu),
            "runc" => Ok(Self::Runc),
            other => bail!("--runtime criu|runc, not {other:?}"),
        }
    }
}

/// The container id under runc (the same on both nodes).
pub const CONTAINER_ID: &str = "migr-echo";

/// The service's files (its log, certificate, control file): `host` is
/// where the testbed reads them, `inside` where the service writes them.
pub struct Files {
    pub host: PathBuf,
    pub inside: PathBuf,
}

impl Files {
    pub fn new(runtime: Runtime, work: &Path) -> Result<Self> {
        Ok(match runtime {
            Runtime::Criu => Self {
                host: work.to_path_buf(),
                inside: work.to_path_buf(),
            },
            Runtime::Runc => {
                let host = work.join("container-files");
                std::fs::create_dir_all(&host)?;
                Self {
                    host,
                    inside: PathBuf::from(runc::FILES),
                }
            }
        })
    }
}

/// A running service (before the dump: at the source; after the restore:
/// at the destination).
pub enum Service {
    Process(Proc),
    Restored(Adopted),
    Container { runc: Runc, pid: i32 },
}

/// One node's runc state and bundle (runc only).
struct Node {
    runc: Runc,
    bundle: Bundle,
}

/// Starts, dumps and restores the service the same way for either runtime.
pub struct Placement {
    runtime: Runtime,
    work: PathBuf,
    src: Option<Node>,
    dst: Option<Node>,
}

impl Placement {
    /// For runc, writes each node's bundle now (the source's runs
    /// `program args`, logging to `files`), with CRIU config files that run
    /// `src_hook` and `dst_hook`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Runtime,
        work: &Path,
        program: &Path,
        args: &[String],
        files: &Files,
        (src_ns, src_hook): (&NetNs, &Path),
        (dst_ns, dst_hook): (&NetNs, &Path),
    ) -> Result<Self> {
        let mut p = Self {
            runtime,
            work: work.to_path_buf(),
            src: None,
            dst: None,
        };
        if runtime == Runtime::Runc {
            let name = program
                .file_name()
                .context("the program's file name")?
                .to_string_lossy();
            let mut command = format!("exec {}/{name}", runc::PROGRAMS);
            for a in args {
                command.push_str(&format!(" '{a}'"));
            }
            let inside = Path::new(runc::FILES);
            command.push_str(&format!(
                " >>{}/server.log 2>>{}/server.err",
                inside.display(),
                inside.display()
            ));
            let programs = program.parent().context("the program's directory")?;
            for (side, ns, hook) in [("src", src_ns, src_hook), ("dst", dst_ns, dst_hook)] {
                let config = work.join(format!("criu-{side}.conf"));
                runc::criu_config(&config, hook)?;
                let node = Node {
                    runc: Runc::new(&work.join(format!("runc-{side}")))?,
                    bundle: Bundle::create(
                        &work.join(format!("bundle-{side}")),
                        ns,
                        &command,
                        programs,
                        &files.host,
                        &config,
                    )?,
                };
                if side == "src" {
                    p.src = Some(node);
                } else {
                    p.dst = Some(node);
                }
            }
        }
        Ok(p)
    }

    /// Starts the service at the source: `cmd` (already holding the
    /// program and its arguments) for CRIU; the source bundle for runc.
    pub fn start(&self, mut cmd: Command, ns: &NetNs, files: &Files) -> Result<Service> {
        match (self.runtime, &self.src) {
            (Runtime::Criu, _) => Ok(Service::Process(Proc::spawn(
                "the server",
                &mut cmd,
                Spawn {
                    netns: Some(ns.name()),
                    setsid: true,
                    stdout: Some(&files.host.join("server.log")),
                    stderr: Some(&files.host.join("server.err")),
                },
            )?)),
            (Runtime::Runc, Some(node)) => {
                let pid = node.runc.run_detached(
                    CONTAINER_ID,
                    &node.bundle,
                    &self.work.join("runc-run.log"),
                )?;
                Ok(Service::Container {
                    runc: node.runc.clone(),
                    pid,
                })
            }
            (Runtime::Runc, None) => bail!("no runc bundle"),
        }
    }

    /// Dumps `service` into `images` with `hook` as CRIU's action script
    /// (runc: the bundle's CRIU config file runs it); the service is gone
    /// afterwards. Returns the seconds the dump took.
    #[allow(clippy::too_many_arguments)]
    pub fn dump(
        &self,
        bins: &Bins,
        service: &mut Service,
        ns: &NetNs,
        images: &Path,
        hook: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<f64> {
        match (self.runtime, &self.src, service) {
            (Runtime::Criu, _, Service::Process(proc)) => {
                let step = criu::dump(bins, proc.pid(), ns, images, hook, log, extra)?;
                // CRIU killed the dumped tree; reap it here, so that its PID
                // is free for the restore at once.
                proc.wait_exit(Duration::from_secs(5))?;
                Ok(step.seconds)
            }
            (Runtime::Runc, Some(node), Service::Container { pid, .. }) => {
                let work = self.work.join("runc-dump");
                let seconds = node.runc.checkpoint(CONTAINER_ID, images, &work, extra)?;
                let _ = std::fs::copy(work.join("dump.log"), log);
                // The container's init was runc's child; runc exited, so
                // this run (the subreaper) reaps it.
                super::proc::reap(*pid, Duration::from_secs(5));
                Ok(seconds)
            }
            _ => bail!("the service does not run as this placement started it"),
        }
    }

    /// Restores the images at the destination; the restored service and the
    /// seconds it took. `resumed` runs once the restored service runs: when
    /// `phases` (the hook's stamps) shows post-resume, or when the restore
    /// returned.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        bins: &Bins,
        images: &Path,
        ns: &NetNs,
        (hook, phases): (&Path, &Path),
        log: &Path,
        extra: &[&str],
        resumed: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(f64, Service)> {
        match (self.runtime, &self.dst) {
            (Runtime::Criu, _) => {
                // `criu restore -d` returns right after post-resume.
                let (step, pid) = criu::restore(bins, images, ns, hook, log, extra)?;
                resumed()?;
                Ok((
                    step.seconds,
                    Service::Restored(Adopted {
                        name: "the restored server".into(),
                        pid,
                    }),
                ))
            }
            (Runtime::Runc, Some(node)) => {
                let work = self.work.join("runc-restore");
                let (seconds, pid) = node.runc.restore(
                    CONTAINER_ID,
                    &node.bundle,
                    images,
                    &work,
                    extra,
                    phases,
                    resumed,
                )?;
                let _ = std::fs::copy(work.join("restore.log"), log);
                Ok((
                    seconds,
                    Service::Container {
                        runc: node.runc.clone(),
                        pid,
                    },
                ))
            }
            (Runtime::Runc, None) => bail!("no runc bundle"),
        }
    }
}

impl Service {
    pub fn pid(&self) -> i32 {
        match self {
            Self::Process(p) => p.pid(),
            Self::Restored(a) => a.pid,
            Self::Container { pid, .. } => *pid,
        }
    }

    /// `Some(why)` once the service has exited (while it should run).
    pub fn exited(&mut self) -> Option<String> {
        match self {
            Self::Process(p) => p.try_exit().map(|s| s.to_string()),
            Self::Restored(a) => (!a.alive()).then(|| "gone".into()),
            Self::Container { runc, .. } => runc.pid(CONTAINER_ID).err().map(|e| e.to_string()),
        }
    }

    /// Stops it (teardown).
    pub fn kill(&mut self) {
        match self {
            Self::Process(p) => p.stop(Duration::from_millis(200)),
            Self::Restored(a) => a.kill(),
            Self::Container { runc, .. } => runc.remove(CONTAINER_ID),
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        for node in [&self.src, &self.dst].into_iter().flatten() {
            node.runc.remove(CONTAINER_ID);
        }
    }
}
