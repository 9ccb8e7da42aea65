//! Processes of a run: started in one network namespace (only that: CRIU
//! cannot dump a process with a private mount namespace, which
//! `ip netns exec` would give it), killed by PID when dropped.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// How a process is started.
#[derive(Default)]
pub struct Spawn<'a> {
    /// Network namespace (`/run/netns/NAME`); None: this process's.
    pub netns: Option<&'a str>,
    /// Start a new session (CRIU dumps a process tree whose root leads its
    /// own session and process group).
    pub setsid: bool,
    /// stdout to this file (truncated), else /dev/null.
    pub stdout: Option<&'a Path>,
    /// stderr to this file (appended), else /dev/null.
    pub stderr: Option<&'a Path>,
}

/// A child process, SIGKILLed and reaped by PID on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, how: Spawn<'_>) -> Result<Self> {
        let netns = match how.netns {
            Some(ns) => Some(
                File::open(format!("/run/netns/{ns}"))
                    .with_context(|| format!("opening network namespace {ns}"))?,
            ),
            None => None,
        };
        let stdout = match how.stdout {
            Some(p) => {
                Stdio::from(File::create(p).with_context(|| format!("creating {}", p.display()))?)
            }
            None => Stdio::null(),
        };
        let stderr = match how.stderr {
            Some(p) => Stdio::from(
                File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            None => Stdio::null(),
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let ns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let setsid = how.setsid;
        // SAFETY: only async-signal-safe calls (setsid, setns, close_range)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if setsid && libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Nothing but stdio crosses over (no stray descriptors of
                // whoever started us for CRIU to dump).
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Has it exited? Reaps it if so.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn signal(&self, sig: i32) {
        if self.pid() > 0 {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.try_exit().is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(grace).is_err() {
                self.signal(libc::SIGKILL);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            }
            let _ = c.wait();
        }
    }
}

/// A process that is not our child (a tree CRIU restored): SIGKILLed by PID
/// on drop, and reaped if we are its subreaper.
pub struct Adopted {
    pub name: String,
    pub pid: i32,
}

impl Adopted {
    pub fn alive(&self) -> bool {
        is_alive(self.pid)
    }

    pub fn kill(&mut self) {
        if self.pid <= 0 {
            return;
        }
        // SAFETY: kill(2) by PID of a process this run restored.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        reap(self.pid, Duration::from_secs(3));
        self.pid = 0;
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes this process the subreaper of its descendants: a tree that
/// `criu restore -d` detaches becomes our child when criu exits, so that we
/// reap it at once (PID 1 here reaps orphans a second or two late, and a
/// restore of the same PIDs waits for that).
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Is there a process (not a zombie) with this PID?
pub fn is_alive(pid: i32) -> bool {
    migr_testkit::process::state_of(Path::new(&format!("/proc/{pid}/stat")))
        .is_some_and(|s| s != 'Z' && s != 'X')
}

/// Waits until `pid` is gone: reaps it if it is our child (or adopted
/// through the subreaper), else waits for whoever reaps it.
pub fn reap(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one specific PID, never -1 (that could steal
        // another part of the program's children).
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Is `pid` free for a restore: no process has it as PID, session or
/// process group (CRIU restores the original PIDs)?
pub fn pid_free(pid: i32) -> bool {
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // state ppid pgrp session ...
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 3 && (f[2] == pid.to_string() || f[3] == pid.to_string()) {
                return false;
            }
        }
    }
    true
}
