//! What the deploy tests share: a namespace with a veth pair, a scratch
//! directory and pin directories that remove themselves, and the agent
//! started and stopped by PID.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use migr_testkit::{
    NetNs,
    agent_harness::{Proc, remove_agent_files, spawn_in, wait_for},
    require_privileges,
};

/// A namespace holding the veth pair `IFACE` / `PEER`, both up.
pub struct VethNs {
    pub ns: NetNs,
}

pub const IFACE: &str = "vd0";
const PEER: &str = "vd1";

impl VethNs {
    pub fn new(tag: &str) -> Self {
        require_privileges();
        let ns = NetNs::new(tag).expect("a network namespace");
        ns.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", PEER])
            .expect("a veth pair");
        for dev in [IFACE, PEER] {
            ns.ip(&["link", "set", dev, "up"]).expect("veth up");
        }
        Self { ns }
    }
}

/// A scratch directory, and the pin directories the test's agents use,
/// removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
    pub pin_dirs: Vec<PathBuf>,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let name = format!("migr-t{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self {
            dir,
            pin_dirs: Vec::new(),
        }
    }

    /// A pin directory of its own on bpffs, removed on drop.
    pub fn pin_dir(&mut self, tag: &str) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .expect("named")
            .to_string_lossy()
            .into_owned();
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(format!("{name}-{tag}"));
        self.pin_dirs.push(pin_dir.clone());
        pin_dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pin_dir in &self.pin_dirs {
            remove_agent_files(pin_dir, Path::new("/nonexistent"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `migrctl --socket SOCKET ARGS`.
pub fn ctl(migrctl: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(migrctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run migrctl")
}

/// Starts `program args` in `ns`, output to `log`, and waits until migrctl
/// reaches it on `socket`; fails with the log if it exits first.
pub fn start_agent(
    ns: &NetNs,
    program: &Path,
    args: &[&str],
    migrctl: &Path,
    socket: &Path,
    log: &Path,
) -> Proc {
    let started = Instant::now();
    let mut agent = spawn_in(ns, program, args, &[("RUST_LOG", "info")], Some(log));
    wait_for(Duration::from_secs(20), "the agent to serve", || {
        if let Some(status) = agent.exited() {
            panic!("the agent exited with {status}:\n{}", read(log));
        }
        ctl(migrctl, socket, &["status"]).status.success()
    });
    println!(
        "agent serving after {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    agent
}

/// SIGTERM by PID, then the exit status within 15 s (the unit's TimeoutStopSec).
pub fn stop_agent(mut agent: Proc, log: &Path) {
    agent.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = agent.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM:\n{}",
            read(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "the agent stopped with {status}:\n{}",
        read(log)
    );
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
