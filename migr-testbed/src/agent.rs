//! One edge node's migr-agent, driven through migrctl.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Bins,
    proc::{Proc, Spawn},
};
use migr_testkit::NetNs;

pub struct Agent {
    pub name: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    ctl: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    /// Starts migr-agent in `ns` on `iface` (XDP `mode`: auto, native or
    /// skb), its files under `dir`, and waits until it answers.
    pub fn start(
        bins: &Bins,
        ns: &NetNs,
        iface: &str,
        mode: &str,
        dir: &Path,
        tag: &str,
    ) -> Result<Self> {
        let name = format!("{}-{tag}", ns.name());
        let state_dir = dir.join(format!("agent-{tag}"));
        std::fs::create_dir_all(&state_dir)?;
        let socket = state_dir.join("agent.sock");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let log = dir.join(format!("agent-{tag}.log"));
        let mut cmd = Command::new(&bins.agent);
        // The host's /etc/migr/agent.toml, if any, is not the testbed's.
        cmd.args(["run", "--config", "/dev/null"])
            .args(["--iface", iface, "--mode", mode])
            .arg("--socket")
            .arg(&socket)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .env("RUST_LOG", "info");
        let proc = Proc::spawn(
            &format!("migr-agent ({tag})"),
            &mut cmd,
            Spawn {
                netns: Some(ns.name()),
                stderr: Some(&log),
                stdout: None,
                setsid: false,
            },
        )?;
        let mut agent = Self {
            name,
            socket,
            log,
            pin_dir,
            state_dir,
            ctl: bins.ctl.clone(),
            proc: Some(proc),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.proc.as_mut().and_then(Proc::try_exit) {
                bail!(
                    "migr-agent ({tag}) exited with {status}:\n{}",
                    agent.log_text()
                );
            }
            if agent.ctl(&["service", "list"])?.status.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "migr-agent ({tag}) did not answer within 30 s:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.ctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running migrctl")
    }

    /// Runs migrctl and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            bail!(
                "migrctl {args:?} on {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a)?;
        serde_json::from_str(&text).with_context(|| format!("migrctl {args:?} --json: {text}"))
    }

    pub fn phase(&self, service: &str, phase: &str, extra: &[&str]) -> Result<Value> {
        let mut args = vec!["phase", service, phase];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// The `migrctl stats --json` entry of `service`.
    pub fn service(&self, service: &str) -> Result<Value> {
        let stats = self.json(&["stats"])?;
        stats["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["spec"]["name"] == service))
            .cloned()
            .with_context(|| format!("no service {service} in {stats}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The shell command that hands a CRIU action to this node's agent.
    pub fn hook_command(&self, service: Option<&str>) -> String {
        hook_command(&self.ctl, &self.socket, service)
    }
}

/// `migrctl criu-hook` for the agent at `socket`. Without migr the testbed
/// runs the very same command against a socket where no agent listens (a
/// node with migr installed and not running): both arms then pay the same
/// script start, and what steering adds is measured alone. Without a
/// service the hook finds it by container (under a runtime).
pub fn hook_command(ctl: &Path, socket: &Path, service: Option<&str>) -> String {
    let service = service.map_or(String::new(), |s| format!(" --service '{s}'"));
    format!(
        "exec '{}' --socket '{}' criu-hook{service}",
        ctl.display(),
        socket.display()
    )
}

/// Writes CRIU's --action-script: one line `ACTION SECONDS.NANOS` per action
/// into `phases`; on pre-dump, `pre_dump` (a shell snippet) first; then
/// `then` (a shell command, e.g. [`Agent::hook_command`]) if given.
pub fn write_hook(
    path: &Path,
    phases: &Path,
    pre_dump: Option<&str>,
    then: Option<&str>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut text = format!(
        "#!/bin/sh\n# migr testbed: CRIU action script\n\
         echo \"$CRTOOLS_SCRIPT_ACTION $(date +%s.%N)\" >> '{}'\n",
        phases.display()
    );
    if let Some(snippet) = pre_dump {
        text.push_str(&format!(
            "if [ \"$CRTOOLS_SCRIPT_ACTION\" = pre-dump ]; then\n{snippet}\nfi\n"
        ));
    }
    text.push_str(then.unwrap_or("exit 0"));
    text.push('\n');
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: the agent detaches the datapath and removes its socket.
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
