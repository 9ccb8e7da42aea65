//! Processes the tests start inside a network namespace, killed (by PID) and
//! reaped when dropped, so a failing test leaves none behind.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::NetNs;

/// A process that is SIGKILLed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGSTOP, then waits until every thread has stopped: kill(2) returns
    /// before the stop takes effect, and until the thread that takes the
    /// signal runs, the process's other threads go on running.
    pub fn freeze(&self, limit: Duration) -> Result<()> {
        self.signal(libc::SIGSTOP);
        let deadline = Instant::now() + limit;
        while !all_threads_stopped(self.pid()) {
            if Instant::now() > deadline {
                bail!(
                    "PID {} did not stop within {limit:?} of SIGSTOP",
                    self.pid()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Its exit status, if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Does `pid` exist with every one of its threads stopped (state T)?
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        match state_of(&task.path().join("stat")) {
            Some('T') => any = true,
            // A thread that exited meanwhile has nothing left to stop.
            None => {}
            Some(_) => return false,
        }
    }
    any
}

/// The state letter of a /proc `stat` file. It follows the command's
/// closing parenthesis: the command itself may hold any character.
pub fn state_of(stat: &Path) -> Option<char> {
    let text = std::fs::read_to_string(stat).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// Starts `program args` in `ns` (network namespace only, as CRIU wants it:
/// `ip netns exec` would add a private mount namespace). nsenter execs the
/// program, so the child's PID is the program's. Output goes to `log`
/// (appended), or nowhere.
pub fn spawn_in(
    ns: &NetNs,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Result<Proc> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match log {
        Some(path) => {
            let f = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log {}", path.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {} in {}", program.display(), ns.name()))?;
    Ok(Proc { child })
}

/// The profile directory the running executable belongs to (`target/debug` for
/// `target/debug/migr-testbed` and for `target/debug/deps/agent-…`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("own path")?;
    let mut dir = exe.parent().context("own directory")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Builds the binaries of `packages` with cargo (a no-op when they are fresh) into the
/// profile directory of the running executable, and returns that directory. For tests
/// and tools that run from cargo's target directory.
pub fn build_binaries(packages: &[&str]) -> Result<PathBuf> {
    let dir = profile_dir()?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-q", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for p in packages {
        cmd.args(["-p", p]);
    }
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(target) = dir.parent()
    {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        anyhow::bail!("building the binaries of {packages:?} failed ({status})");
    }
    Ok(dir)
}
