//! The harness of the agent tests (`tests/tests/agent.rs`, `tests/tests/faults/`):
//! migr-agent and migrctl end to end, in network namespaces.
//!
//! Topology (each test builds its own; `dst` only where needed):
//!
//! ```text
//!   cli --v-cs / v-sc-- src --v-sd / v-ds-- dst
//!   10.41.1.1      10.41.1.2   10.41.2.1      10.41.2.2
//!                  (agent on v-sc)            (agent on v-ds)
//! ```
//!
//! The service is a UDP request/response ("echo") process, `migr-echo-udp`
//! (its logic is [`echo_main`]): a request `seq=N` is answered with
//! `seq=N inst=NAME rx=K port=P`, K counting the requests that socket
//! received, P the port it is bound to. Sorting the answers by (instance, K)
//! gives the order in which the service saw the requests, whatever the way
//! back did.
//!
//! Everything is driven through the `migr-agent` and `migrctl` binaries, as
//! an operator or CRIU would. Agents, processes and namespaces are removed
//! on drop, on success and on failure; processes are killed by PID.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{NetNs, netns::full_checksums, require_privileges, veth_pair};

pub const CLIENT_IP: &str = "10.41.1.1";
pub const SRC_IP: &str = "10.41.1.2";
pub const DST_IP: &str = "10.41.2.2";
pub const PORT: u16 = 7000;

// ---------------------------------------------------------------------------
// Binaries

pub struct Bins {
    pub agent: PathBuf,
    pub ctl: PathBuf,
    /// This crate's `migr-echo-udp`, built with the agent.
    pub echo: PathBuf,
}

/// Builds migr-agent, migrctl and the echo helper (a no-op when they are
/// fresh) into the target directory the running test binary lives in, and
/// returns their paths.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let profile_dir = crate::process::build_binaries(&["migr-user", "migr-testkit"])
            .expect("building migr-agent, migrctl and migr-echo-udp");
        let bins = Bins {
            agent: profile_dir.join("migr-agent"),
            ctl: profile_dir.join("migrctl"),
            echo: profile_dir.join("migr-echo-udp"),
        };
        for p in [&bins.agent, &bins.ctl, &bins.echo] {
            assert!(
                p.exists(),
                "{} not found (cargo build -p migr-user -p migr-testkit --bins builds it)",
                p.display()
            );
        }
        bins
    })
}

// ---------------------------------------------------------------------------
// The echo service, as its own process (so that it can be SIGSTOPped).

/// The `migr-echo-udp` process: binds every address of `MIGR_ECHO_BIND`
/// (comma-separated `ip:port`), answers each request on the socket it came
/// in on, touches `MIGR_ECHO_READY` once bound. `MIGR_ECHO_NAME` is the
/// instance name in the answers, `MIGR_ECHO_RCVBUF` the sockets' receive
/// buffer (default 2 MiB).
pub fn echo_main() {
    let bind = std::env::var("MIGR_ECHO_BIND").expect("MIGR_ECHO_BIND=ip:port[,ip:port...]");
    let name = std::env::var("MIGR_ECHO_NAME").unwrap_or_default();
    // A replay is a burst, and a just-resumed (debug-build) process may be
    // slow to start reading: a 2 MiB buffer (about 500 replayed frames) keeps
    // these tests about migr, not about scheduling. Production sockets rely
    // on the agent's replay pacing (docs/agent.md).
    let bytes = std::env::var("MIGR_ECHO_RCVBUF")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 20);
    let sockets: Vec<UdpSocket> = bind
        .split(',')
        .map(|addr| {
            let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            force_rcvbuf(&socket, bytes);
            socket
        })
        .collect();
    if let Ok(ready) = std::env::var("MIGR_ECHO_READY") {
        std::fs::write(ready, b"").expect("write the ready file");
    }
    let threads: Vec<JoinHandle<()>> = sockets
        .into_iter()
        .map(|socket| {
            let name = name.clone();
            std::thread::spawn(move || echo_loop(&socket, &name))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn echo_loop(socket: &UdpSocket, name: &str) {
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = [0u8; 2048];
    let mut rx = 0u64;
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let request = String::from_utf8_lossy(&buf[..n]);
        let reply = format!("{request} inst={name} rx={rx} port={port}");
        rx += 1;
        let _ = socket.send_to(reply.as_bytes(), from);
    }
}

/// Sets a socket's receive buffer to `bytes`, past `rmem_max` (we are root).
pub fn force_rcvbuf(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt with an int on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

pub use crate::process::Proc;

/// [`crate::process::spawn_in`], for tests: a process that cannot start fails the test.
pub fn spawn_in(
    ns: &NetNs,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Proc {
    crate::process::spawn_in(ns, program, args, env, log).expect("spawn in the namespace")
}

pub fn start_echo(ns: &NetNs, ip: &str, name: &str, scratch: &Path) -> Proc {
    start_echo_with(ns, ip, name, scratch, &[])
}

pub fn start_echo_with(
    ns: &NetNs,
    ip: &str,
    name: &str,
    scratch: &Path,
    env: &[(&str, &str)],
) -> Proc {
    start_echo_on(ns, &[format!("{ip}:{PORT}")], name, scratch, env)
}

/// One echo process serving every address of `binds`, a socket each.
pub fn start_echo_on(
    ns: &NetNs,
    binds: &[String],
    name: &str,
    scratch: &Path,
    env: &[(&str, &str)],
) -> Proc {
    let ready = scratch.join(format!("echo-{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let bind = binds.join(",");
    let mut vars = vec![
        ("MIGR_ECHO_BIND", bind.as_str()),
        ("MIGR_ECHO_NAME", name),
        ("MIGR_ECHO_READY", ready.to_str().expect("utf-8 path")),
    ];
    vars.extend_from_slice(env);
    let mut p = spawn_in(ns, &bins().echo, &[], &vars, None);
    wait_for(Duration::from_secs(10), "the echo process to bind", || {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("the echo process exited with {status}");
        }
        ready.exists()
    });
    p
}

/// GET `path` over HTTP/1.0 from `addr`, inside `ns` (an agent's metrics
/// listener): the status line and the body.
pub fn http_get(ns: &NetNs, addr: &str, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    let text = ns
        .run(|| {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            std::io::Result::Ok(text)
        })
        .map_err(std::io::Error::other)??;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no HTTP header in {text:?}"),
        ));
    };
    let status = head.lines().next().unwrap_or("").to_string();
    Ok((status, body.to_string()))
}

pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Agents

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One node's agent: its files, and the running process.
pub struct Agent {
    pub name: String,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// Start under this soft limit of open files (hard limit 4096), as a
    /// supervisor with a low default would.
    pub nofile: Option<u64>,
    /// More environment variables for the agent (besides RUST_LOG=info).
    pub env: Vec<(String, String)>,
    /// Another agent executable than the one built here (an older build).
    pub program: Option<PathBuf>,
    pub proc: Option<Proc>,
}

impl Agent {
    pub fn new(tag: &str, iface: &str, extra: &[&str]) -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("migr-t{}-{id}-{tag}", std::process::id());
        let state_dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let socket = state_dir.join("agent.sock");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        // The host's /etc/migr/agent.toml, if any, is not the tests'.
        let mut args: Vec<String> = [
            "run",
            "--config",
            "/dev/null",
            "--iface",
            iface,
            "--socket",
            socket.to_str().expect("utf-8"),
            "--pin-dir",
            pin_dir.to_str().expect("utf-8"),
            "--state-dir",
            state_dir.to_str().expect("utf-8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self {
            log: state_dir.join("agent.log"),
            name,
            socket,
            pin_dir,
            state_dir,
            args,
            nofile: None,
            env: Vec::new(),
            program: None,
            proc: None,
        }
    }

    pub fn start(&mut self, ns: &NetNs) {
        let agent_bin = self
            .program
            .as_ref()
            .unwrap_or(&bins().agent)
            .to_str()
            .expect("utf-8")
            .to_string();
        let mut argv: Vec<String> = Vec::new();
        let program = match self.nofile {
            // prlimit sets the limit and execs the agent (same PID).
            Some(soft) => {
                argv.extend([format!("--nofile={soft}:4096"), "--".into(), agent_bin]);
                PathBuf::from("prlimit")
            }
            None => PathBuf::from(agent_bin),
        };
        argv.extend(self.args.iter().cloned());
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let started = Instant::now();
        let mut env = vec![("RUST_LOG", "info")];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.proc = Some(spawn_in(ns, &program, &args, &env, Some(&self.log)));
        wait_for(Duration::from_secs(20), "the agent to serve", || {
            if let Some(p) = self.proc.as_mut()
                && let Ok(Some(status)) = p.child.try_wait()
            {
                panic!("the agent exited with {status}:\n{}", self.log_text());
            }
            self.ctl(&["service", "list"]).status.success()
        });
        println!(
            "[{}] agent serving after {:.0} ms",
            self.name,
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    /// The running agent's PID.
    pub fn pid(&self) -> i32 {
        self.proc.as_ref().expect("a running agent").pid()
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            let _ = p.child.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&bins().ctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run migrctl")
    }

    /// `service add --id ID --name NAME --udp ADDR`, insisting on success.
    pub fn add_udp_service(&self, id: u32, name: &str, addr: &str) {
        self.ok(&[
            "service",
            "add",
            "--id",
            &id.to_string(),
            "--name",
            name,
            "--udp",
            addr,
        ]);
    }

    /// Runs migrctl and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "migrctl {args:?} failed ({}): {}{}\n--- agent log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("migrctl --json prints JSON")
    }

    /// `migrctl phase SERVICE PHASE --json`; returns the latency in µs.
    pub fn phase(&self, service: &str, phase: &str) -> u64 {
        self.phase_with(service, phase, &[])
    }

    pub fn phase_with(&self, service: &str, phase: &str, extra: &[&str]) -> u64 {
        let started = Instant::now();
        let mut args = vec!["phase", service, phase];
        args.extend_from_slice(extra);
        let v = self.json(&args);
        let latency = v["latency_us"].as_u64().expect("latency_us");
        println!(
            "[{}] {service}: {} -> {} ({}), datapath updated {latency} us after the agent read the request, migrctl round trip {:.2} ms",
            self.name,
            v["from"].as_str().unwrap_or("?"),
            v["to"].as_str().unwrap_or("?"),
            v["datapath"].as_str().unwrap_or("?"),
            started.elapsed().as_secs_f64() * 1e3
        );
        latency
    }

    pub fn service(&self, name: &str) -> Value {
        let stats = self.json(&["stats"]);
        stats["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["spec"]["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no service {name} in {stats}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent with SIGTERM and insists on a clean exit.
    pub fn terminate(&mut self) {
        let mut p = self.proc.take().expect("a running agent");
        p.signal(libc::SIGTERM);
        let status = p.child.wait().expect("wait for the agent");
        assert!(status.success(), "clean exit on SIGTERM: {status}");
    }

    /// Starts the agent where it must refuse to run: returns its exit
    /// status and log once it has exited (within 20 s, or this panics).
    pub fn start_refused(&mut self, ns: &NetNs) -> (std::process::ExitStatus, String) {
        let bin = bins().agent.clone();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut p = spawn_in(ns, &bin, &args, &[("RUST_LOG", "info")], Some(&self.log));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return (status, self.log_text());
            }
            if Instant::now() > deadline {
                p.signal(libc::SIGKILL);
                let _ = p.child.wait();
                panic!("the agent ran instead of refusing:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.take();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
        remove_agent_files(&self.pin_dir, &self.state_dir);
    }
}

/// Removes a stopped agent's pins (which detaches its XDP links and frees its maps) and its
/// state directory.
pub fn remove_agent_files(pin_dir: &Path, state_dir: &Path) {
    let _ = std::fs::remove_dir_all(pin_dir);
    let _ = std::fs::remove_dir_all(state_dir);
}

// ---------------------------------------------------------------------------
// Topology

/// Fields drop in order: agents and processes first, then the namespaces.
pub struct Topology {
    pub src_agent: Agent,
    pub dst_agent: Option<Agent>,
    pub procs: Vec<Proc>,
    pub client: NetNs,
    pub src: NetNs,
    pub dst: Option<NetNs>,
}

impl Topology {
    /// The namespaces, and the agents started.
    pub fn new(with_dest: bool, src_extra: &[&str]) -> Self {
        Self::build(with_dest, src_extra, true)
    }

    /// The namespaces, and the agents prepared (their files, arguments) but
    /// only started if `start_agents`.
    pub fn build(with_dest: bool, src_extra: &[&str], start_agents: bool) -> Self {
        require_privileges();
        let client = NetNs::new("cli").unwrap();
        let src = NetNs::new("src").unwrap();
        veth_pair(
            &client,
            "v-cs",
            "10.41.1.1/24",
            &src,
            "v-sc",
            "10.41.1.2/24",
        )
        .unwrap();
        // Frames from a real NIC carry full checksums; replayed and rewritten
        // frames are checked by the receiver.
        full_checksums(&client, "v-cs").unwrap();
        client
            .ip(&["route", "add", "default", "via", SRC_IP])
            .unwrap();
        let dst = with_dest.then(|| {
            let dst = NetNs::new("dst").unwrap();
            veth_pair(&src, "v-sd", "10.41.2.1/24", &dst, "v-ds", "10.41.2.2/24").unwrap();
            dst.ip(&["route", "add", "default", "via", "10.41.2.1"])
                .unwrap();
            src.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
                .unwrap();
            dst
        });
        let mut src_agent = Agent::new("src", "v-sc", src_extra);
        if start_agents {
            src_agent.start(&src);
        }
        let dst_agent = dst.as_ref().map(|dst| {
            let mut a = Agent::new("dst", "v-ds", &[]);
            if start_agents {
                a.start(dst);
            }
            a
        });
        Self {
            src_agent,
            dst_agent,
            procs: Vec::new(),
            client,
            src,
            dst,
        }
    }

    pub fn dst(&self) -> &NetNs {
        self.dst.as_ref().expect("a destination node")
    }

    pub fn dst_agent(&self) -> &Agent {
        self.dst_agent.as_ref().expect("a destination agent")
    }

    pub fn scratch(&self) -> PathBuf {
        self.src_agent.state_dir.clone()
    }
}

// ---------------------------------------------------------------------------
// The client

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Answer {
    pub inst: String,
    pub rx: u64,
    pub seq: u64,
    /// The port of the echo socket that answered.
    pub port: Option<u16>,
}

pub fn parse_answer(text: &str) -> Option<Answer> {
    let mut seq = None;
    let mut inst = None;
    let mut rx = None;
    let mut port = None;
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some(("seq", v)) => seq = v.parse().ok(),
            Some(("inst", v)) => inst = Some(v.to_string()),
            Some(("rx", v)) => rx = v.parse().ok(),
            Some(("port", v)) => port = v.parse().ok(),
            _ => {}
        }
    }
    Some(Answer {
        inst: inst?,
        rx: rx?,
        seq: seq?,
        port,
    })
}

/// A UDP client in the client namespace: sends `seq=N` requests (by hand,
/// or every `period` from a thread) and collects the answers.
pub struct UdpClient {
    pub socket: UdpSocket,
    next_seq: Arc<Mutex<u64>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    sending: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    pub target: SocketAddr,
}

impl UdpClient {
    pub fn new(ns: &NetNs, target: &str) -> Self {
        let socket = ns
            .run(|| UdpSocket::bind(format!("{CLIENT_IP}:0")))
            .unwrap()
            .expect("bind the client socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        // The answers to a replayed backlog come as a burst too.
        force_rcvbuf(&socket, 8 << 20);
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rx = socket.try_clone().unwrap();
        let (a, s) = (answers.clone(), stop.clone());
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf)
                    && let Some(answer) = parse_answer(&String::from_utf8_lossy(&buf[..n]))
                {
                    a.lock().unwrap().push(answer);
                }
            }
        });
        Self {
            socket,
            next_seq: Arc::new(Mutex::new(0)),
            answers,
            stop,
            threads: vec![receiver],
            sending: None,
            target: target.parse().unwrap(),
        }
    }

    pub fn send(&self, n: usize) {
        for _ in 0..n {
            send_one(&self.socket, &self.next_seq, self.target);
        }
    }

    pub fn sent(&self) -> u64 {
        *self.next_seq.lock().unwrap()
    }

    pub fn answered(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    pub fn start_stream(&mut self, period: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let (socket, seq, target, s) = (
            self.socket.try_clone().unwrap(),
            self.next_seq.clone(),
            self.target,
            stop.clone(),
        );
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                send_one(&socket, &seq, target);
                std::thread::sleep(period);
            }
        });
        self.sending = Some((stop, t));
    }

    pub fn stop_stream(&mut self) {
        if let Some((stop, t)) = self.sending.take() {
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap();
        }
    }

    /// The answers received so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until `n` answers are in; returns them.
    pub fn wait_answers(&self, n: usize, limit: Duration) -> Vec<Answer> {
        let deadline = Instant::now() + limit;
        while self.answered() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A moment more, to see duplicates if there were any.
        std::thread::sleep(Duration::from_millis(100));
        self.answers.lock().unwrap().clone()
    }
}

pub fn send_one(socket: &UdpSocket, seq: &Mutex<u64>, target: SocketAddr) {
    let mut s = seq.lock().unwrap();
    let _ = socket.send_to(format!("seq={}", *s).as_bytes(), target);
    *s += 1;
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.stop_stream();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every request `0..sent` answered exactly once, and each instance saw its
/// requests in the order they were sent. Returns the answers of the
/// instances named `src` and `dst`.
pub fn check_answers(answers: &[Answer], sent: u64) -> (Vec<Answer>, Vec<Answer>) {
    let seqs: Vec<u64> = answers.iter().map(|a| a.seq).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "duplicated answers: {seqs:?}");
    let missing: Vec<u64> = (0..sent).filter(|s| !unique.contains(s)).collect();
    assert!(missing.is_empty(), "unanswered requests: {missing:?}");
    let mut sorted = answers.to_vec();
    sorted.sort();
    let mut by_inst: std::collections::BTreeMap<String, Vec<Answer>> = Default::default();
    for a in sorted {
        by_inst.entry(a.inst.clone()).or_default().push(a);
    }
    for (inst, list) in &by_inst {
        let order: Vec<u64> = list.iter().map(|a| a.seq).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "instance {inst} saw requests out of order: {order:?}"
        );
        assert!(
            list.iter().enumerate().all(|(i, a)| a.rx == i as u64),
            "instance {inst} answered requests more than once or lost one"
        );
    }
    (
        by_inst.remove("src").unwrap_or_default(),
        by_inst.remove("dst").unwrap_or_default(),
    )
}

/// A service's packet count under verdict `v`.
pub fn verdict(svc: &Value, v: &str) -> u64 {
    svc["verdicts"][v]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count of verdict {v} in the status: {svc}"))
}

/// The number at `path` in a service status; panics if there is none.
pub fn num(svc: &Value, path: &[&str]) -> u64 {
    let mut v = svc;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {svc}"))
}
