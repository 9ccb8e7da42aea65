//! The MPTCP lab: real kernel MPTCP (IPPROTO_MPTCP sockets, `ip mptcp`
//! limits and endpoints) in network namespaces, a real `migr-agent` driven
//! through `migrctl`, and readers of the kernel's own view (`ss -M`, `ss -t`,
//! `nstat`, veth XDP statistics).
//!
//! Shared by `tests/tests/mptcp.rs` and the `migr-mptcp` runner.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use migr_testkit::NetNs;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Binaries

pub struct Bins {
    pub agent: PathBuf,
    pub ctl: PathBuf,
    /// The `migr-mptcp` runner, whose `serve` subcommand is the MPTCP server.
    pub server: PathBuf,
}

/// Builds migr-agent and migrctl (a no-op when they are fresh) into the
/// target directory the running executable lives in. `server` is the path of
/// the `migr-mptcp` binary.
pub fn bins(server: PathBuf) -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = migr_testkit::process::build_binaries(&["migr-user"])
            .expect("building migr-agent and migrctl");
        let bins = Bins {
            agent: dir.join("migr-agent"),
            ctl: dir.join("migrctl"),
            server,
        };
        for p in [&bins.agent, &bins.ctl, &bins.server] {
            assert!(p.exists(), "{} not found", p.display());
        }
        bins
    })
}

/// Fails with a clear message when a tool the lab needs is missing.
pub fn require_tools() -> Result<()> {
    migr_testkit::require_privileges();
    for (tool, arg, pkg) in [
        ("ss", "-V", "iproute2"),
        ("nstat", "-V", "iproute2"),
        ("nft", "-v", "nftables"),
        ("ethtool", "--version", "ethtool"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            ok,
            "the MPTCP lab needs `{tool}` (Debian package {pkg}; `cargo xtask setup` installs it)"
        );
    }
    let enabled = std::fs::read_to_string("/proc/sys/net/mptcp/enabled")
        .context("this kernel has no MPTCP (/proc/sys/net/mptcp/enabled is missing)")?;
    ensure!(
        enabled.trim() == "1",
        "MPTCP is disabled (net.mptcp.enabled = {})",
        enabled.trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Processes

pub use migr_testkit::process::{Proc, spawn_in};

pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A scratch directory that is removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Self> {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("migr-m{}-{id}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The receive buffer the tests give the MPTCP server (docs/mptcp.md, "A
/// receive-path stall").
pub const TEST_SERVER_RCVBUF: u32 = 4 << 20;

// ---------------------------------------------------------------------------
// The MPTCP echo server (the stand-in for the container's workload)

/// Starts the echo server in `ns` (`migr-mptcp serve`), listening with an
/// IPPROTO_MPTCP socket on `bind`, and waits until it listens.
/// `rcvbuf`: a fixed receive buffer for the server's sockets (`None`: the
/// kernel's autotuning; see docs/mptcp.md for why the tests fix it).
pub fn start_server(
    bins: &Bins,
    ns: &NetNs,
    bind: &str,
    scratch: &Path,
    rcvbuf: Option<u32>,
) -> Result<Proc> {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let ready = scratch.join(format!("server-{id}.ready"));
    let rcvbuf = rcvbuf.map(|r| r.to_string());
    let mut args = vec![
        "serve",
        "--bind",
        bind,
        "--ready",
        ready.to_str().expect("utf-8"),
    ];
    if let Some(r) = &rcvbuf {
        args.extend(["--rcvbuf", r]);
    }
    let mut p = spawn_in(ns, &bins.server, &args, &[], None)?;
    wait_until(
        Duration::from_secs(10),
        "the MPTCP server to listen",
        || {
            if let Some(status) = p.exited() {
                bail!("the MPTCP server exited with {status}");
            }
            Ok(ready.exists())
        },
    )?;
    Ok(p)
}

/// The server's main loop: accepts MPTCP connections and echoes every byte.
/// `rcvbuf`: a fixed receive buffer (SO_RCVBUFFORCE) instead of autotuning.
pub fn serve(bind: SocketAddr, ready: Option<&Path>, rcvbuf: Option<i32>) -> Result<()> {
    let listener = mptcp_listener(bind)?;
    if let Some(bytes) = rcvbuf {
        // SAFETY: setsockopt with an int on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "SO_RCVBUFFORCE: {}",
            std::io::Error::last_os_error()
        );
    }
    if let Some(ready) = ready {
        std::fs::write(ready, b"")?;
    }
    loop {
        let (mut conn, _) = listener.accept()?;
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn mptcp_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    if fd < 0 {
        bail!("IPPROTO_MPTCP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(at: SocketAddr) -> Result<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = at else {
        bail!("IPv4 only: {at}")
    };
    Ok(libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    })
}

pub fn mptcp_listener(at: SocketAddr) -> Result<TcpListener> {
    let fd = mptcp_socket()?;
    let one: libc::c_int = 1;
    let sa = sockaddr_in(at)?;
    // SAFETY: valid fd, option and sockaddr.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        if libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of_val(&sa) as u32,
        ) != 0
        {
            bail!("bind {at}: {}", std::io::Error::last_os_error());
        }
        if libc::listen(fd.as_raw_fd(), 64) != 0 {
            bail!("listen {at}: {}", std::io::Error::last_os_error());
        }
        Ok(TcpListener::from_raw_fd(fd.into_raw_fd()))
    }
}

/// A blocking IPPROTO_MPTCP connection to `to` (in the calling thread's namespace).
pub fn mptcp_connect(to: SocketAddr) -> Result<TcpStream> {
    let fd = mptcp_socket()?;
    let sa = sockaddr_in(to)?;
    // SAFETY: valid fd and sockaddr.
    unsafe {
        if libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of_val(&sa) as u32,
        ) != 0
        {
            bail!("connect {to}: {}", std::io::Error::last_os_error());
        }
        Ok(TcpStream::from_raw_fd(fd.into_raw_fd()))
    }
}

// ---------------------------------------------------------------------------
// migr-agent, driven through migrctl

pub struct Agent {
    pub name: String,
    socket: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    ctl: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    /// Stops the running agent (SIGSTOP) and returns once all its threads
    /// have stopped.
    pub fn pause(&self) -> Result<()> {
        self.running()?.freeze(Duration::from_secs(5))
    }

    /// Resumes the agent stopped by `pause`.
    pub fn resume(&self) -> Result<()> {
        self.running()?.signal(libc::SIGCONT);
        Ok(())
    }

    fn running(&self) -> Result<&Proc> {
        self.proc.as_ref().context("the agent is not running")
    }

    /// Starts migr-agent in `ns`, attached to `ifaces`, and waits until it serves.
    pub fn start(bins: &Bins, ns: &NetNs, ifaces: &[&str], tag: &str) -> Result<Self> {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("migr-m{}-{id}-{tag}", std::process::id());
        let state_dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir)?;
        let socket = state_dir.join("agent.sock");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let log = state_dir.join("agent.log");
        // The host's /etc/migr/agent.toml, if any, is not the lab's.
        let mut args: Vec<String> = vec!["run".into(), "--config".into(), "/dev/null".into()];
        for i in ifaces {
            args.extend(["--iface".to_string(), i.to_string()]);
        }
        args.extend([
            "--socket".into(),
            socket.display().to_string(),
            "--pin-dir".into(),
            pin_dir.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = spawn_in(ns, &bins.agent, &argv, &[("RUST_LOG", "info")], Some(&log))?;
        let mut agent = Self {
            name,
            socket,
            pin_dir,
            state_dir,
            log,
            ctl: bins.ctl.clone(),
            proc: Some(proc),
        };
        let ctl = agent.ctl.clone();
        let sock = agent.socket.clone();
        wait_until(Duration::from_secs(30), "the agent to serve", || {
            if let Some(status) = agent.proc.as_mut().and_then(Proc::exited) {
                bail!("the agent exited with {status}:\n{}", agent.log_text());
            }
            Ok(Command::new(&ctl)
                .arg("--socket")
                .arg(&sock)
                .args(["service", "list"])
                .output()?
                .status
                .success())
        })?;
        Ok(agent)
    }

    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.ctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?)
    }

    /// Runs migrctl and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            bail!(
                "migrctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)?).context("migrctl --json prints JSON")
    }

    /// `migrctl phase SERVICE PHASE`; returns the agent's answer.
    pub fn phase(&self, service: &str, phase: &str, extra: &[&str]) -> Result<Value> {
        let mut args = vec!["phase", service, phase];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    pub fn stats(&self) -> Result<Value> {
        self.json(&["stats"])
    }

    /// The status of service `name`, as in `migrctl stats --json`.
    pub fn service(&self, name: &str) -> Result<Value> {
        let stats = self.stats()?;
        stats["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["spec"]["name"] == name))
            .cloned()
            .with_context(|| format!("no service {name} in {stats}"))
    }

    /// The MPTCP tokens the agent installed in the datapath (token, service
    /// id), read from the pinned `TOKENS` map.
    pub fn tokens(&self) -> Result<Vec<(u32, u32)>> {
        let data = aya::maps::MapData::from_pin(
            migr_user::pin_layout::maps_dir(&self.pin_dir).join("TOKENS"),
        )
        .context("opening the agent's pinned TOKENS map")?;
        let map = aya::maps::HashMap::<_, u32, u32>::try_from(aya::maps::Map::HashMap(data))?;
        let mut out = Vec::new();
        for kv in map.iter() {
            out.push(kv?);
        }
        out.sort();
        Ok(out)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.take();
        if std::thread::panicking() {
            eprintln!("--- log of agent {} ---\n{}", self.name, self.log_text());
        }
        migr_testkit::agent_harness::remove_agent_files(&self.pin_dir, &self.state_dir);
    }
}

/// A number in a service status (`svc[path...]`), 0 when absent.
pub fn num(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

pub fn verdict(svc: &Value, v: &str) -> u64 {
    num(svc, &["verdicts", v, "packets"])
}

// ---------------------------------------------------------------------------
// The kernel's view

/// One MPTCP connection as `ss -M` shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelConn {
    /// The local token (on the server: the token MP_JOINs carry).
    pub token: u32,
    /// Subflows, the initial one included (`ss` shows the additional ones).
    pub subflows: u32,
}

/// The established MPTCP connections in `ns`, from the kernel (`ss -Mni`,
/// i.e. inet_diag's mptcp_info).
pub fn kernel_conns(ns: &NetNs) -> Result<Vec<KernelConn>> {
    let out = ns.exec(&["ss", "-Mni", "state", "established"])?;
    let mut conns = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(token) = words.iter().find_map(|w| w.strip_prefix("token:")) else {
            continue;
        };
        let token = u32::from_str_radix(token, 16)
            .with_context(|| format!("token {token:?} in `ss -M` output"))?;
        let extra = words
            .iter()
            .find_map(|w| w.strip_prefix("subflows:"))
            .map(str::parse::<u32>)
            .transpose()?
            .unwrap_or(0);
        conns.push(KernelConn {
            token,
            subflows: 1 + extra,
        });
    }
    conns.sort();
    Ok(conns)
}

/// The established TCP subflows in `ns` whose local address is `local`
/// (e.g. "10.71.2.2:7000"), as `ss -tn` lists them.
pub fn established_to(ns: &NetNs, local: &str) -> Result<usize> {
    let out = ns.exec(&["ss", "-tn", "state", "established"])?;
    Ok(out
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == local))
        .count())
}

/// All of `nstat`'s counters in `ns` (absolute values; the history is not touched).
pub fn nstat(ns: &NetNs) -> Result<BTreeMap<String, u64>> {
    let out = ns.exec(&["nstat", "-asz"])?;
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        if let (Some(k), Some(v)) = (w.next(), w.next())
            && let Ok(v) = v.parse()
        {
            m.insert(k.to_string(), v);
        }
    }
    ensure!(
        m.contains_key("TcpRetransSegs"),
        "nstat printed no TcpRetransSegs"
    );
    Ok(m)
}

pub fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}

/// The veth's count of frames the XDP program dropped (a parked frame is
/// copied to the ring and dropped), from `ethtool -S`.
pub fn xdp_drops(ns: &NetNs, dev: &str) -> Result<u64> {
    let out = ns.exec(&["ethtool", "-S", dev])?;
    let mut total = 0;
    let mut seen = false;
    for line in out.lines() {
        if let Some((k, v)) = line.split_once(':')
            && k.trim().ends_with("_xdp_drops")
        {
            total += v.trim().parse::<u64>()?;
            seen = true;
        }
    }
    ensure!(seen, "`ethtool -S {dev}` shows no xdp_drops counter");
    Ok(total)
}

/// The stand-in for CRIU's network lock: drop the service's TCP port in and
/// out of `ns` (nftables, as CRIU's `--network-lock nftables` does).
pub fn lock(ns: &NetNs, port: u16) -> Result<()> {
    let rules = format!(
        "table inet migr_lock {{\n\
         chain in {{ type filter hook input priority -150; policy accept; tcp dport {port} drop; }}\n\
         chain out {{ type filter hook output priority -150; policy accept; tcp sport {port} drop; }}\n\
         }}\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())?;
    ensure!(child.wait()?.success(), "nft refused the lock table");
    Ok(())
}

pub fn unlock(ns: &NetNs) -> Result<()> {
    ns.exec(&["nft", "delete", "table", "inet", "migr_lock"])
        .map(|_| ())
}

// ---------------------------------------------------------------------------
// The client's workload: a stream of numbered records, echoed back

pub const RECORD: usize = 64;

fn record(conn: u32, seq: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r[8..12].copy_from_slice(&conn.to_le_bytes());
    for (i, b) in r.iter_mut().enumerate().skip(12) {
        *b = (seq.wrapping_mul(31) as usize ^ (i * 7) ^ conn as usize) as u8;
    }
    r
}

#[derive(Default)]
struct StreamState {
    /// Arrival time of every echoed record, in order.
    arrivals: Vec<Instant>,
    /// When each record was written (handed to the socket).
    sends: Vec<Instant>,
    error: Option<String>,
}

/// One MPTCP connection from the client: a writer thread sends a record
/// every `period`, a reader checks that every echo comes back once, in
/// order, byte-exact, and notes when it arrived.
pub struct Stream {
    pub id: u32,
    conn: TcpStream,
    sent: Arc<AtomicU64>,
    state: Arc<Mutex<StreamState>>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    pub fn connect(client: &NetNs, to: SocketAddr, id: u32, period: Duration) -> Result<Self> {
        let conn = client.run(|| mptcp_connect(to))??;
        conn.set_nodelay(true)?;
        let sent = Arc::new(AtomicU64::new(0));
        let state = Arc::new(Mutex::new(StreamState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut rx = conn.try_clone()?;
        let st = state.clone();
        let reader = std::thread::spawn(move || {
            let mut expect = 0u64;
            let mut buf = [0u8; RECORD];
            loop {
                match rx.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) => {
                        let mut s = st.lock().unwrap();
                        if e.kind() != std::io::ErrorKind::UnexpectedEof || s.error.is_none() {
                            s.error.get_or_insert(format!("read: {e}"));
                        }
                        return;
                    }
                }
                let now = Instant::now();
                let mut s = st.lock().unwrap();
                if buf != record(id, expect) {
                    let got = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    s.error.get_or_insert(format!(
                        "connection {id}: echo {expect} expected, got record {got} (or corrupted bytes)"
                    ));
                    return;
                }
                s.arrivals.push(now);
                expect += 1;
            }
        });
        let mut tx = conn.try_clone()?;
        let (n, s, st) = (sent.clone(), stop.clone(), state.clone());
        let writer = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let seq = n.load(Ordering::Relaxed);
                if let Err(e) = tx.write_all(&record(id, seq)) {
                    st.lock()
                        .unwrap()
                        .error
                        .get_or_insert(format!("write: {e}"));
                    return;
                }
                st.lock().unwrap().sends.push(Instant::now());
                n.store(seq + 1, Ordering::Relaxed);
                next += period;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                } else {
                    next = Instant::now();
                }
            }
        });
        Ok(Self {
            id,
            conn,
            sent,
            state,
            stop,
            writer: Some(writer),
            reader: Some(reader),
        })
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn echoed(&self) -> u64 {
        self.state.lock().unwrap().arrivals.len() as u64
    }

    pub fn error(&self) -> Option<String> {
        self.state.lock().unwrap().error.clone()
    }

    pub fn arrivals(&self) -> Vec<Instant> {
        self.state.lock().unwrap().arrivals.clone()
    }

    /// Stops sending, and waits until every record sent has been echoed.
    pub fn finish(&mut self, limit: Duration) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.error() {
                bail!("connection {}: {e}", self.id);
            }
            let (sent, echoed) = (self.sent(), self.echoed());
            if echoed == sent {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "connection {}: {echoed} of {sent} records echoed after {limit:?}",
                    self.id
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Milliseconds from `t` until the first echo that arrived after it.
    pub fn first_echo_after_ms(&self, t: Instant) -> Option<f64> {
        self.arrivals()
            .iter()
            .find(|a| **a > t)
            .map(|a| a.duration_since(t).as_secs_f64() * 1e3)
    }

    /// Milliseconds from `t` until the echo of the last record written
    /// before `t` arrived: the backlog of the downtime has been served.
    pub fn backlog_served_after_ms(&self, t: Instant) -> Option<f64> {
        let s = self.state.lock().unwrap();
        let last = s.sends.iter().rposition(|w| *w < t)?;
        s.arrivals
            .get(last)
            .map(|a| a.saturating_duration_since(t).as_secs_f64() * 1e3)
    }

    /// The longest time between consecutive echoes, in milliseconds.
    pub fn longest_gap_ms(&self) -> f64 {
        self.arrivals()
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1e3)
            .fold(0.0, f64::max)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The median TCP round trip from `client` to the echo server at `to`:
/// `n` ping-pongs of one record over a plain TCP connection (the MPTCP
/// listener falls back to TCP), in milliseconds.
pub fn tcp_rtt_ms(client: &NetNs, to: SocketAddr, n: usize) -> Result<f64> {
    let mut c = client.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))??;
    c.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(n);
    let mut buf = [0u8; RECORD];
    for i in 0..n as u64 {
        let t = Instant::now();
        c.write_all(&record(0, i))?;
        c.read_exact(&mut buf)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

// ---------------------------------------------------------------------------
// Results

pub const SCHEMA: &str = "migr-mptcp-result/1";

pub fn environment() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "kernel": kernel,
        "cpus": cpus,
        "unix_time": unix,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "congestion_control": std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .unwrap_or_default().trim(),
    })
}

/// mean, sample standard deviation and the 95% confidence interval of the
/// mean (Student's t) of each metric over the runs.
pub fn summarize(runs: &[Value], metrics: &[(&str, &[&str])]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, path) in metrics {
        let xs: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                let mut v = r;
                for p in *path {
                    v = &v[*p];
                }
                v.as_f64()
            })
            .filter(|x| x.is_finite())
            .collect();
        out.insert((*name).into(), stats(&xs));
    }
    Value::Object(out)
}

pub fn stats(xs: &[f64]) -> Value {
    let n = xs.len();
    if n == 0 {
        return json!({"n": 0});
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let (sd, half) = if n > 1 {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        (sd, t975(n - 1) * sd / (n as f64).sqrt())
    } else {
        (0.0, f64::NAN)
    };
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "n": n,
        "mean": r(mean),
        "sd": r(sd),
        "ci95_low": if half.is_finite() { json!(r(mean - half)) } else { Value::Null },
        "ci95_high": if half.is_finite() { json!(r(mean + half)) } else { Value::Null },
        "min": r(min),
        "max": r(max),
    })
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}
