//! migr with container runtimes: the CRIU hook finds a container's service
//! from the cgroups of CRIU's `CRTOOLS_INIT_PID` (as runc and podman run
//! CRIU over RPC, with no `--service` to pass), and `migrctl criu-config`
//! installs and removes its line in CRIU's config file without touching an
//! operator's own lines.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
};

use migr_testkit::agent_harness::*;

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

/// The address moves with the container: with `--announce`, the
/// destination's agent announces the service's address when the service is
/// restored there (gratuitous ARP, five rounds), and a neighbour on the L2
/// segment that still had the old node's MAC for it switches to this node.
#[test]
fn a_restored_service_announces_its_address_to_the_segment() {
    let t = Topology::new(false, &[]);
    let a = &t.src_agent;
    // The client's side of the link stands for the segment's router: it
    // believes the service's address lives at some other MAC.
    let old_mac = "02:00:00:00:00:99";
    t.client
        .exec(&[
            "ip", "neigh", "replace", SRC_IP, "lladdr", old_mac, "dev", "v-cs", "nud", "stale",
        ])
        .unwrap();
    let own_mac = t.src.exec(&["cat", "/sys/class/net/v-sc/address"]).unwrap();
    let listener = ArpListener::open(&t.client, "v-cs");
    let addr = format!("{SRC_IP}:{PORT}");
    a.ok(&[
        "service",
        "add",
        "--id",
        "1",
        "--name",
        "web",
        "--udp",
        &addr,
        "--announce",
    ]);
    for phase in ["prepare", "restoring", "restored"] {
        a.phase("web", phase);
    }
    let garps = listener.count_gratuitous(
        SRC_IP.parse().unwrap(),
        std::time::Duration::from_millis(900),
    );
    assert_eq!(garps, 5, "five announcement rounds");
    let neigh = t
        .client
        .exec(&["ip", "neigh", "show", SRC_IP, "dev", "v-cs"])
        .unwrap();
    assert!(
        neigh.contains(own_mac.trim()),
        "the neighbour entry moved to the restored node's MAC {}: {neigh}",
        own_mac.trim()
    );
    // Without --announce nothing is sent.
    let quiet = ArpListener::open(&t.client, "v-cs");
    let other = format!("{SRC_IP}:{}", PORT + 1);
    a.ok(&[
        "service", "add", "--id", "2", "--name", "quiet", "--udp", &other,
    ]);
    for phase in ["prepare", "restoring", "restored"] {
        a.phase("quiet", phase);
    }
    assert_eq!(
        quiet.count_gratuitous(
            SRC_IP.parse().unwrap(),
            std::time::Duration::from_millis(700)
        ),
        0
    );
}

/// A packet socket in a namespace that counts gratuitous ARPs.
struct ArpListener {
    fd: std::os::fd::OwnedFd,
}

impl ArpListener {
    fn open(ns: &migr_testkit::NetNs, dev: &str) -> Self {
        use std::os::fd::FromRawFd as _;
        let dev = dev.to_string();
        let fd = ns
            .run(move || {
                // SAFETY: socket(2) with constant arguments (ETH_P_ARP).
                let fd = unsafe {
                    libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (0x0806u16).to_be() as i32)
                };
                assert!(
                    fd >= 0,
                    "packet socket: {}",
                    std::io::Error::last_os_error()
                );
                let name = std::ffi::CString::new(dev).unwrap();
                // SAFETY: a zeroed sockaddr_ll, filled in; bind of the right size.
                unsafe {
                    let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                    addr.sll_family = libc::AF_PACKET as u16;
                    addr.sll_protocol = (0x0806u16).to_be();
                    addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                    let rc = libc::bind(
                        fd,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    );
                    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                    let timeout = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 50_000,
                    };
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&timeout as *const libc::timeval).cast(),
                        size_of::<libc::timeval>() as u32,
                    );
                }
                fd
            })
            .unwrap();
        // SAFETY: a descriptor just created and owned here.
        Self {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        }
    }

    /// ARP frames whose sender and target address are both `ip`, seen
    /// within `window`.
    fn count_gratuitous(&self, ip: std::net::Ipv4Addr, window: std::time::Duration) -> usize {
        use std::os::fd::AsRawFd as _;
        let end = std::time::Instant::now() + window;
        let mut seen = 0;
        let mut buf = [0u8; 128];
        while std::time::Instant::now() < end {
            // SAFETY: recv into a buffer we own.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 42 && buf[28..32] == ip.octets() && buf[38..42] == ip.octets() {
                seen += 1;
            }
        }
        seen
    }
}
