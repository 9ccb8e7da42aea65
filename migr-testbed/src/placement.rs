//! Where the service runs and how it is checkpointed: a bare process that
//! the testbed's CRIU dumps from the root namespace (`criu`), or a
//! container that runc or podman checkpoints and restores, driving CRIU
//! over RPC (`runc`, `podman`, docs/containers.md). A run starts, dumps and
//! restores it the same way in every case.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins, criu,
    podman::{Podman, SharedPaths},
    proc::{Adopted, Proc, Spawn},
    runc::{self, Bundle, Runc},
};
use migr_testkit::NetNs;

/// What checkpoints the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// CRIU itself, on a process tree in the source container's namespace.
    Criu,
    /// A runc container (runc runs CRIU; the hook comes from a CRIU config
    /// file named by the bundle).
    Runc,
    /// A podman container (podman runs runc, which runs CRIU; the hook comes
    /// from a CRIU config file named by the container's annotation).
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Criu => "criu",
            Self::Runc => "runc",
            Self::Podman => "podman",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "criu" => Ok(Self::Criu),
            "runc" => Ok(Self::Runc),
            "podman" => Ok(Self::Podman),
            other => bail!("--runtime criu|runc|podman, not {other:?}"),
        }
    }
}

/// The container id (runc) or name (podman), the same on both nodes.
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
            Runtime::Runc | Runtime::Podman => {
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
    /// A bare process leading its own PID namespace (`unshare --pid
    /// --fork`): `pid` is the service, `outer` the unshare waiting for it.
    /// Its restore gets a new PID namespace, so it does not need the dumped
    /// PID to be free (a lazy dump keeps the source frozen until it served
    /// every page).
    Namespaced {
        outer: Proc,
        pid: i32,
    },
    Restored(Adopted),
    Container {
        node: Runner,
        pid: i32,
    },
}

/// A node's container runtime.
#[derive(Clone)]
pub enum Runner {
    Runc(Runc),
    Podman(Podman),
}

impl Runner {
    fn pid(&self) -> Result<i32> {
        match self {
            Self::Runc(r) => r.pid(CONTAINER_ID),
            Self::Podman(p) => p.pid(CONTAINER_ID),
        }
    }

    fn remove(&self) {
        match self {
            Self::Runc(r) => r.remove(CONTAINER_ID),
            Self::Podman(p) => p.remove(CONTAINER_ID),
        }
    }
}

/// One node's runtime, and what it starts (runc: the bundle; podman: the
/// command line and the directories bound in).
struct Node {
    runner: Runner,
    bundle: Option<Bundle>,
    command: String,
    programs: PathBuf,
    files: PathBuf,
}

/// Starts, dumps and restores the service the same way for every runtime.
pub struct Placement {
    runtime: Runtime,
    work: PathBuf,
    src: Option<Node>,
    dst: Option<Node>,
    /// podman: a short directory under /run (podman's state; the file both
    /// nodes' containers see their namespace at), removed on drop.
    podman_run: Option<PathBuf>,
    /// CRIU: start the service in its own PID namespace.
    pid_namespace: bool,
}

impl Placement {
    /// For a container runtime, prepares each node now (runc: a bundle;
    /// podman: storage and the image, on both nodes); the source's
    /// container runs `program args`, logging to `files`, with CRIU config
    /// files that run `src_hook` and `dst_hook`.
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
            podman_run: None,
            pid_namespace: false,
        };
        if runtime == Runtime::Criu {
            return Ok(p);
        }
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
        if runtime == Runtime::Podman {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = PathBuf::from(format!("/run/migr-pm{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            for file in ["netns", "criu.conf"] {
                std::fs::write(dir.join(file), b"")
                    .with_context(|| format!("creating {}/{file}", dir.display()))?;
            }
            p.podman_run = Some(dir);
        }
        for (side, ns, hook) in [("src", src_ns, src_hook), ("dst", dst_ns, dst_hook)] {
            let criu_config = work.join(format!("criu-{side}.conf"));
            runc::criu_config(&criu_config, hook)?;
            let (runner, bundle) = match &p.podman_run {
                None => (
                    Runner::Runc(Runc::new(&work.join(format!("runc-{side}")))?),
                    Some(Bundle::create(
                        &work.join(format!("bundle-{side}")),
                        ns,
                        &command,
                        programs,
                        &files.host,
                        &criu_config,
                    )?),
                ),
                Some(run) => (
                    Runner::Podman(Podman::new(
                        &work.join(format!("podman-{side}")),
                        &run.join(side),
                        ns,
                        &criu_config,
                        &SharedPaths {
                            netns: run.join("netns"),
                            criu_config: run.join("criu.conf"),
                        },
                    )?),
                    None,
                ),
            };
            let node = Some(Node {
                runner,
                bundle,
                command: command.clone(),
                programs: programs.to_path_buf(),
                files: files.host.clone(),
            });
            if side == "src" {
                p.src = node;
            } else {
                p.dst = node;
            }
        }
        if let (
            Some(Node {
                runner: Runner::Podman(src),
                ..
            }),
            Some(Node {
                runner: Runner::Podman(dst),
                ..
            }),
        ) = (&p.src, &p.dst)
        {
            let rootfs = work.join("podman-rootfs");
            runc::make_rootfs(&rootfs)?;
            src.import_image(&rootfs, dst, work)?;
        }
        Ok(p)
    }

    /// CRIU: the service leads its own PID namespace ([`Service::Namespaced`]).
    pub fn with_pid_namespace(mut self, on: bool) -> Self {
        self.pid_namespace = on;
        self
    }

    /// Starts the service at the source: `cmd` (already holding the
    /// program and its arguments) for CRIU; the source node's container
    /// otherwise.
    pub fn start(&self, mut cmd: Command, ns: &NetNs, files: &Files) -> Result<Service> {
        let node = match (self.runtime, &self.src) {
            (Runtime::Criu, _) => {
                if self.pid_namespace {
                    let mut outer = Command::new("unshare");
                    outer
                        // setsid: CRIU dumps a tree whose session leader
                        // is inside its PID namespace.
                        .args(["--pid", "--fork", "--", "setsid"])
                        .arg(cmd.get_program())
                        .args(cmd.get_args())
                        // CRIU's parasite mounts the namespace's /proc at
                        // `proc.crtools` in the task's working directory: a
                        // writable one (a guest's root is read-only).
                        .current_dir(&files.host);
                    cmd = outer;
                }
                let proc = Proc::spawn(
                    "the server",
                    &mut cmd,
                    Spawn {
                        netns: Some(ns.name()),
                        setsid: true,
                        stdout: Some(&files.host.join("server.log")),
                        stderr: Some(&files.host.join("server.err")),
                    },
                )?;
                if !self.pid_namespace {
                    return Ok(Service::Process(proc));
                }
                let pid = only_child(proc.pid(), Duration::from_secs(10))?;
                return Ok(Service::Namespaced { outer: proc, pid });
            }
            (_, Some(node)) => node,
            (_, None) => bail!("no source node prepared"),
        };
        let log = self.work.join("container-run.log");
        let pid = match (&node.runner, &node.bundle) {
            (Runner::Runc(runc), Some(bundle)) => runc.run_detached(CONTAINER_ID, bundle, &log)?,
            (Runner::Podman(podman), _) => podman.run_detached(
                CONTAINER_ID,
                &node.command,
                &node.programs,
                &node.files,
                &log,
            )?,
            (Runner::Runc(_), None) => bail!("no runc bundle"),
        };
        Ok(Service::Container {
            node: node.runner.clone(),
            pid,
        })
    }

    /// Dumps `service` into `images` with `hook` as CRIU's action script
    /// (runtimes: the node's CRIU config file runs it); the service is gone
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
        let pid = service.pid();
        match (self.runtime, &self.src, service) {
            (
                Runtime::Criu,
                _,
                Service::Process(proc) | Service::Namespaced { outer: proc, .. },
            ) => {
                let step = criu::dump(bins, pid, ns, images, hook, log, extra)?;
                // CRIU killed the dumped tree; reap what this run started
                // (the service, or the unshare that exits with it), so that
                // the PID is free for the restore at once.
                proc.wait_exit(Duration::from_secs(5))?;
                Ok(step.seconds)
            }
            (_, Some(node), Service::Container { pid, .. }) => match &node.runner {
                Runner::Runc(runc) => {
                    let work = self.work.join("runc-dump");
                    let seconds = runc.checkpoint(CONTAINER_ID, images, &work, extra)?;
                    let _ = std::fs::copy(work.join("dump.log"), log);
                    // The container's init was runc's child; runc exited, so
                    // this run (the subreaper) reaps it.
                    super::proc::reap(*pid, Duration::from_secs(5));
                    Ok(seconds)
                }
                // conmon, the init's parent, reaps it.
                Runner::Podman(podman) => podman.checkpoint(CONTAINER_ID, images, extra, log),
            },
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
        let node = match (self.runtime, &self.dst) {
            (Runtime::Criu, _) => {
                // `criu restore -d` returns right after post-resume.
                let (step, pid) = criu::restore(bins, images, ns, hook, log, extra)?;
                resumed()?;
                return Ok((
                    step.seconds,
                    Service::Restored(Adopted {
                        name: "the restored server".into(),
                        pid,
                    }),
                ));
            }
            (_, Some(node)) => node,
            (_, None) => bail!("no destination node prepared"),
        };
        let (seconds, pid) = match (&node.runner, &node.bundle) {
            (Runner::Runc(runc), Some(bundle)) => {
                let work = self.work.join("runc-restore");
                let done =
                    runc.restore(CONTAINER_ID, bundle, images, &work, extra, phases, resumed)?;
                let _ = std::fs::copy(work.join("restore.log"), log);
                done
            }
            (Runner::Podman(podman), _) => {
                podman.restore(CONTAINER_ID, images, extra, (log, phases), resumed)?
            }
            (Runner::Runc(_), None) => bail!("no runc bundle"),
        };
        Ok((
            seconds,
            Service::Container {
                node: node.runner.clone(),
                pid,
            },
        ))
    }
}

impl Service {
    pub fn pid(&self) -> i32 {
        match self {
            Self::Process(p) => p.pid(),
            Self::Namespaced { pid, .. } => *pid,
            Self::Restored(a) => a.pid,
            Self::Container { pid, .. } => *pid,
        }
    }

    /// The id a container runtime knows the service's container by (what
    /// its cgroups name); `None` for a bare process.
    pub fn container_id(&self) -> Result<Option<String>> {
        match self {
            Self::Container {
                node: Runner::Runc(_),
                ..
            } => Ok(Some(CONTAINER_ID.to_string())),
            Self::Container {
                node: Runner::Podman(p),
                ..
            } => p.id(CONTAINER_ID).map(Some),
            _ => Ok(None),
        }
    }

    /// `Some(why)` once the service has exited (while it should run).
    pub fn exited(&mut self) -> Option<String> {
        match self {
            Self::Process(p) | Self::Namespaced { outer: p, .. } => {
                p.try_exit().map(|s| s.to_string())
            }
            Self::Restored(a) => (!a.alive()).then(|| "gone".into()),
            Self::Container { node, .. } => node.pid().err().map(|e| e.to_string()),
        }
    }

    /// Stops it (teardown).
    pub fn kill(&mut self) {
        match self {
            Self::Process(p) => p.stop(Duration::from_millis(200)),
            Self::Namespaced { outer, pid } => {
                // The namespace's init first: unshare waits for it.
                // SAFETY: kill(2) on the service's PID.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
                outer.stop(Duration::from_millis(200));
            }
            Self::Restored(a) => a.kill(),
            Self::Container { node, .. } => node.remove(),
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        for node in [&self.src, &self.dst].into_iter().flatten() {
            node.runner.remove();
        }
        if let Some(dir) = &self.podman_run {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The one child of `pid` (`/proc/PID/task/PID/children`), once it exists.
fn only_child(pid: i32, limit: Duration) -> Result<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let children: Vec<i32> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {path}: {text:?}"))?;
        match children[..] {
            [child] => return Ok(child),
            [] if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            _ => bail!("{path} lists {children:?}, expected one child within {limit:?}"),
        }
    }
}
