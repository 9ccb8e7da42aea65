//! migr with container runtimes: the CRIU hook finds a container's service
//! from the cgroups of CRIU's `CRTOOLS_INIT_PID` (as runc and podman run
//! CRIU over RPC, with no `--service` to pass), and `migrctl criu-config`
//! installs and removes its line in CRIU's config file without touching an
//! operator's own lines.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
};

use migr_tests::agent_harness::*;

/// A cgroup of our own with one `sleep` in it: what a runtime makes for a
/// container and its init. Removed (process killed, group deleted) on drop.
struct TestCgroup {
    dir: PathBuf,
    init: Child,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        // cgroup v1 (this machine: hybrid) or v2 (unified).
        let parent = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("no cgroup hierarchy to make a test group in (cgroup.procs under /sys/fs/cgroup/pids or /sys/fs/cgroup)");
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating {} (needs root): {e}", dir.display()));
        let init = Command::new("sleep").arg("600").spawn().expect("sleep");
        std::fs::write(dir.join("cgroup.procs"), init.id().to_string())
            .unwrap_or_else(|e| panic!("moving the init into {}: {e}", dir.display()));
        Self { dir, init }
    }

    fn pid(&self) -> String {
        self.init.id().to_string()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.init.kill();
        let _ = self.init.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `migrctl criu-hook` as CRIU runs it under a runtime: no arguments but the
/// socket, the action and the init's PID in the environment.
fn hook(socket: &Path, action: &str, init_pid: &str) -> Output {
    Command::new(&bins().ctl)
        .args(["--socket", socket.to_str().unwrap(), "criu-hook"])
        .env("CRTOOLS_SCRIPT_ACTION", action)
        .env("CRTOOLS_INIT_PID", init_pid)
        .output()
        .expect("running migrctl criu-hook")
}

fn said(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_hook_finds_the_service_of_the_container_criu_works_on() {
    let t = Topology::new(false, &[]);
    let tag = std::process::id();
    let (web_ct, db_ct) = (format!("migrtest-web-{tag}"), format!("migrtest-db-{tag}"));
    let web = TestCgroup::new(&web_ct);
    let db = TestCgroup::new(&db_ct);
    let unbound = TestCgroup::new(&format!("migrtest-other-{tag}"));
    let a = &t.src_agent;
    for (id, name, port, container) in [
        ("1", "web", "7001", Some(web_ct.as_str())),
        ("2", "db", "7002", Some(db_ct.as_str())),
        ("3", "plain", "7003", None),
    ] {
        let addr = format!("{SRC_IP}:{port}");
        let mut args = vec!["service", "add", "--id", id, "--name", name, "--udp", &addr];
        if let Some(c) = container {
            args.extend(["--container", c]);
        }
        a.ok(&args);
    }
    let states = || {
        ["web", "db", "plain"].map(|s| a.service(s)["state"].as_str().unwrap_or("?").to_string())
    };

    // The dump side: pre-dump of web's container freezes web alone; CRIU
    // runs every action twice under runc and podman.
    let out = said(&hook(&a.socket, "pre-dump", &web.pid()));
    assert!(out.contains("web idle -> frozen"), "{out}");
    let out = said(&hook(&a.socket, "pre-dump", &web.pid()));
    assert!(out.contains("web stays frozen"), "{out}");
    assert_eq!(states(), ["frozen", "idle", "idle"]);

    // A container no service is registered for is left alone.
    let out = said(&hook(&a.socket, "pre-dump", &unbound.pid()));
    assert!(out.contains("no service is registered"), "{out}");
    assert_eq!(states(), ["frozen", "idle", "idle"]);

    // The restore side: no PID at pre-restore, so nothing happens there;
    // setup-namespaces moves db's service to restoring, once.
    let out = said(&hook(&a.socket, "pre-restore", ""));
    assert!(out.contains("no container known"), "{out}");
    assert_eq!(states(), ["frozen", "idle", "idle"]);
    let out = said(&hook(&a.socket, "setup-namespaces", &db.pid()));
    assert!(out.contains("db idle -> restoring"), "{out}");
    let out = said(&hook(&a.socket, "setup-namespaces", &db.pid()));
    assert!(out.contains("db stays restoring"), "{out}");
    assert_eq!(states(), ["frozen", "restoring", "idle"]);

    // A PID that is gone is an error the hook reports (and, strict, fails on).
    let gone = hook(&a.socket, "pre-dump", "999999999");
    assert!(gone.status.success(), "lenient by default: {gone:?}");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("/proc/999999999/cgroup"));
    let strict = Command::new(&bins().ctl)
        .args([
            "--socket",
            a.socket.to_str().unwrap(),
            "criu-hook",
            "--strict",
        ])
        .env("CRTOOLS_SCRIPT_ACTION", "pre-dump")
        .env("CRTOOLS_INIT_PID", "999999999")
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");

    // One container, one service.
    let taken = a.ctl(&[
        "service",
        "add",
        "--id",
        "4",
        "--name",
        "web2",
        "--udp",
        "10.41.1.2:7004",
        "--container",
        &web_ct,
    ]);
    assert_eq!(taken.status.code(), Some(1), "{taken:?}");
    assert!(String::from_utf8_lossy(&taken.stderr).contains("belongs to service \"web\""));
    let bad = a.ctl(&[
        "service",
        "add",
        "--id",
        "5",
        "--name",
        "bad",
        "--udp",
        "10.41.1.2:7005",
        "--container",
        "a/b",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn criu_config_install_and_remove_keep_an_operators_file() {
    let dir = std::env::temp_dir().join(format!("migr-criu-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ctl = |args: &[&str]| {
        let out = Command::new(&bins().ctl).args(args).output().unwrap();
        assert!(out.status.success(), "migrctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let script = bins().ctl.to_str().unwrap().to_string();
    let original = b"# the operator's\ntcp-established\nlog-file /var/log/criu.log";
    let file = dir.join("runc.conf");
    std::fs::write(&file, original).unwrap();
    let f = file.to_str().unwrap();
    ctl(&["criu-config", "install", "--file", f, "--script", &script]);
    let installed = std::fs::read_to_string(&file).unwrap();
    assert!(
        installed.contains(&format!("\naction-script {script}\n")),
        "{installed}"
    );
    assert!(
        installed.starts_with("# the operator's\ntcp-established\nlog-file /var/log/criu.log\n")
    );
    let again = ctl(&["criu-config", "install", "--file", f, "--script", &script]);
    assert!(again.contains("already"), "{again}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), installed);
    ctl(&["criu-config", "remove", "--file", f]);
    assert_eq!(std::fs::read(&file).unwrap(), original, "byte for byte");
    let nothing = ctl(&["criu-config", "remove", "--file", f]);
    assert!(nothing.contains("no lines of migr's"), "{nothing}");

    // A file install created is gone again after remove.
    let fresh = dir.join("sub/runc.conf");
    let fr = fresh.to_str().unwrap();
    ctl(&["criu-config", "install", "--file", fr, "--script", &script]);
    assert!(fresh.exists());
    ctl(&["criu-config", "remove", "--file", fr]);
    assert!(!fresh.exists());

    // Not an executable: refused, file untouched.
    let plain = dir.join("not-executable");
    std::fs::write(&plain, b"#!/bin/sh\n").unwrap();
    let out = Command::new(&bins().ctl)
        .args([
            "criu-config",
            "install",
            "--file",
            f,
            "--script",
            plain.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), original);
    let _ = std::fs::remove_dir_all(&dir);
}
