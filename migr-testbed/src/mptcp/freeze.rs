//! The "freeze" topology and scenario: one edge node (the agent on both of
//! its client-facing interfaces, the MPTCP server process in its namespace),
//! one multi-homed client with a path to each interface.
//!
//! ```text
//!   cli  v-c1 10.71.1.1 ---- v-n1 10.71.1.2 (A: the service's address)  node
//!        v-c2 10.71.2.1 ---- v-n2 10.71.2.2 (B: announced with ADD_ADDR)
//! ```
//!
//! Each connection starts on A (MP_CAPABLE; classified by the service's
//! `--mptcp A:7000` listener rule); once the agent has learned its token, the
//! server announces B (`ip mptcp endpoint add B dev v-n2 signal`) and the
//! client joins it over its second path (MP_JOIN; classified by the token,
//! its 5-tuple learned). The server process is frozen with SIGSTOP, standing
//! in for a container's downtime, and CRIU's network lock is modelled by an
//! nftables table dropping the service's port.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use migr_testkit::{NetNs, netns::full_checksums, veth_pair};
use serde_json::Value;

use super::lab::{
    self, Agent, Bins, KernelConn, Proc, Scratch, Stream, delta, kernel_conns, nstat, num,
    wait_until, xdp_drops,
};

pub const PORT: u16 = 7000;
pub const A: &str = "10.71.1.2";
pub const B: &str = "10.71.2.2";
pub const SERVICE: &str = "mp";
pub const SERVICE_ID: u32 = 1;

/// Fields drop in order: streams, processes and the agent before the namespaces.
pub struct FreezeLab {
    pub streams: Vec<Stream>,
    pub server: Proc,
    pub agent: Agent,
    pub client: NetNs,
    pub node: NetNs,
    pub scratch: Scratch,
}

pub struct Options {
    pub connections: u32,
    /// The service's `--replay-rate` (frames/s, 0 unpaced); `None`: the
    /// agent's default (10,000/s).
    pub replay_rate: Option<u64>,
    /// The server's fixed receive buffer (`None`: kernel autotuning).
    pub server_rcvbuf: Option<u32>,
    /// Announce B and wait for the joins before returning.
    pub join: bool,
    pub period: Duration,
    /// Configure B's signal endpoint before the connections exist (as a
    /// deployment would), so that each join races the agent's learning of
    /// the connection's token; `new` then returns once the joins are done,
    /// learned or not (the join-race measurement).
    pub announce_first: bool,
    /// With `announce_first`: the agent is stopped (SIGSTOP) while the
    /// connections open and join, so that every join overtakes its token,
    /// and resumed (SIGCONT) once the joins are done.
    pub pause_agent: bool,
}

impl FreezeLab {
    pub fn new(bins: &Bins, opts: &Options) -> Result<Self> {
        lab::require_tools()?;
        let scratch = Scratch::new("freeze")?;
        let client = NetNs::new("mcli")?;
        let node = NetNs::new("mnode")?;
        veth_pair(
            &client,
            "v-c1",
            "10.71.1.1/24",
            &node,
            "v-n1",
            "10.71.1.2/24",
        )?;
        veth_pair(
            &client,
            "v-c2",
            "10.71.2.1/24",
            &node,
            "v-n2",
            "10.71.2.2/24",
        )?;
        // Frames from a real NIC carry full checksums; parked frames are
        // replayed, and the receiver checks those.
        full_checksums(&client, "v-c1")?;
        full_checksums(&client, "v-c2")?;
        node.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "2",
            "add_addr_accepted",
            "0",
        ])?;
        client.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "2",
            "add_addr_accepted",
            "2",
        ])?;
        let server = lab::start_server(
            bins,
            &node,
            &format!("0.0.0.0:{PORT}"),
            &scratch.0,
            opts.server_rcvbuf,
        )?;
        let agent = Agent::start(bins, &node, &["v-n1", "v-n2"], "node")?;
        let id = SERVICE_ID.to_string();
        let mptcp = format!("{A}:{PORT}");
        let rate = opts.replay_rate.map(|r| r.to_string());
        let mut add = vec![
            "service", "add", "--id", &id, "--name", SERVICE, "--mptcp", &mptcp,
        ];
        if let Some(rate) = &rate {
            add.extend(["--replay-rate", rate]);
        }
        agent.ok(&add)?;
        let mut lab = Self {
            streams: Vec::new(),
            server,
            agent,
            client,
            node,
            scratch,
        };
        if opts.announce_first {
            lab.announce_b()?;
        }
        if opts.pause_agent {
            lab.agent.pause()?;
        }
        let to: SocketAddr = format!("{A}:{PORT}").parse()?;
        for id in 0..opts.connections {
            lab.streams
                .push(Stream::connect(&lab.client, to, id, opts.period)?);
        }
        let n = opts.connections as usize;
        if opts.announce_first {
            lab.wait_subflows(2)?;
            if opts.pause_agent {
                lab.agent.resume()?;
            }
            wait_until(Duration::from_secs(10), "the tokens learned", || {
                Ok(lab.agent.tokens()?.len() == n)
            })?;
            // Give a learned join's event time to arrive.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(lab);
        }
        wait_until(
            Duration::from_secs(10),
            "the agent to learn every connection's token",
            || {
                Ok(lab.kernel()?.len() == n
                    && lab
                        .agent
                        .tokens()?
                        .iter()
                        .filter(|(_, s)| *s == SERVICE_ID)
                        .count()
                        == n)
            },
        )?;
        lab.check_tokens()?;
        if opts.join {
            lab.announce_b()?;
            lab.wait_subflows(2)?;
            wait_until(Duration::from_secs(10), "the joins' flows learned", || {
                Ok(num(&lab.agent.stats()?, &["reasons", "flows_learned"]) >= n as u64)
            })?;
        }
        Ok(lab)
    }

    /// The tokens the agent installed for the service are exactly the
    /// server kernel's tokens of its connections.
    pub fn check_tokens(&self) -> Result<()> {
        let kernel: std::collections::BTreeSet<u32> =
            self.kernel()?.iter().map(|c| c.token).collect();
        let learned: std::collections::BTreeSet<u32> = self
            .agent
            .tokens()?
            .into_iter()
            .filter(|(_, s)| *s == SERVICE_ID)
            .map(|(t, _)| t)
            .collect();
        ensure!(
            kernel == learned,
            "learned tokens {learned:08x?} differ from the kernel's {kernel:08x?}"
        );
        Ok(())
    }

    /// The server's MPTCP connections, as its kernel sees them.
    pub fn kernel(&self) -> Result<Vec<KernelConn>> {
        kernel_conns(&self.node)
    }

    /// ADD_ADDR B on every connection: the client joins B over its second path.
    pub fn announce_b(&self) -> Result<()> {
        self.node
            .ip(&["mptcp", "endpoint", "add", B, "dev", "v-n2", "signal"])
    }

    /// Waits until every connection has `n` subflows in the server's kernel.
    pub fn wait_subflows(&self, n: u32) -> Result<()> {
        let want = self.streams.len();
        wait_until(
            Duration::from_secs(10),
            &format!("{want} connections with {n} subflows each"),
            || {
                let k = self.kernel()?;
                Ok(k.len() == want && k.iter().all(|c| c.subflows == n))
            },
        )
        .with_context(|| {
            format!(
                "the server's kernel shows:\n{}\n{}",
                self.node
                    .exec(&["ss", "-Mni"])
                    .unwrap_or_else(|e| e.to_string()),
                self.node
                    .exec(&["ss", "-tni"])
                    .unwrap_or_else(|e| e.to_string())
            )
        })
    }

    pub fn service(&self) -> Result<Value> {
        self.agent.service(SERVICE)
    }

    /// What the kernels and the agent show, for a failure's message.
    pub fn diagnose(&self, t: Instant) -> String {
        let mut out = String::new();
        for s in &self.streams {
            let a = s.arrivals();
            out += &format!(
                "connection {}: sent {}, echoed {}, last echo {:?} ms after the thaw\n",
                s.id,
                s.sent(),
                a.len(),
                a.last().map(|l| l.saturating_duration_since(t).as_millis())
            );
        }
        for (name, ns) in [("client", &self.client), ("node", &self.node)] {
            for cmd in [&["ss", "-tnmi"][..], &["ss", "-Mni"][..]] {
                out += &format!(
                    "--- {name}: {cmd:?}\n{}\n",
                    ns.exec(cmd).unwrap_or_else(|e| e.to_string())
                );
            }
            if let Ok(n) = nstat(ns) {
                let mptcp: Vec<String> = n
                    .iter()
                    .filter(|(k, v)| **v > 0 && (k.starts_with("MPTcp") || k.contains("Retrans")))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out += &format!("--- {name} nstat: {}\n", mptcp.join(" "));
            }
        }
        out += &format!(
            "--- agent: {}\n",
            self.service()
                .map_or_else(|e| e.to_string(), |v| v.to_string())
        );
        out
    }

    pub fn drops(&self) -> Result<[u64; 2]> {
        Ok([
            xdp_drops(&self.node, "v-n1")?,
            xdp_drops(&self.node, "v-n2")?,
        ])
    }
}

/// What one freeze measured.
#[derive(Clone, Debug)]
pub struct FreezeRun {
    pub steering: bool,
    pub freeze_ms: f64,
    /// Thaw → the echo of the last record each connection wrote before the
    /// thaw (the downtime's backlog served), the slowest connection.
    pub recovery_ms: f64,
    /// Thaw → the first echo on every connection (the slowest connection);
    /// it may be a server retransmission of an echo from before the freeze.
    pub first_echo_ms: f64,
    /// Thaw → the thaw's own steps done (unlock, SIGCONT, and with steering
    /// the `abort` command returned): orchestration time inside `recovery_ms`.
    pub steps_ms: f64,
    /// The longest time between two echoes on any connection (freeze included).
    pub stall_ms: f64,
    pub client: BTreeMap<&'static str, u64>,
    pub server: BTreeMap<&'static str, u64>,
    /// Frames the datapath parked / the agent replayed / XDP drops per interface.
    pub parked: u64,
    pub replayed: u64,
    pub park_failed: u64,
    pub overflow: u64,
    pub replay_failed: u64,
    pub xdp_drops: [u64; 2],
    pub records: u64,
    pub subflows_after: Vec<u32>,
    pub replay_ms: f64,
}

/// Kernel counters reported per run (nstat names).
pub const CLIENT_COUNTERS: &[&str] = &[
    "TcpRetransSegs",
    "TcpExtTCPTimeouts",
    "TcpExtTCPLossProbes",
    "MPTcpExtDuplicateData",
];
pub const SERVER_COUNTERS: &[&str] = &[
    "TcpRetransSegs",
    "TcpExtTCPTimeouts",
    "MPTcpExtDuplicateData",
    "TcpExtTCPDSACKRecv",
    "TcpExtTCPDSACKOfoRecv",
];

/// Freezes the server for `freeze` with the network lock, with or without
/// the agent parking the service's packets, thaws it, and measures. The
/// streams must be running. Integrity (every record echoed once, in order,
/// byte-exact) is checked: an error here is a broken connection.
pub fn freeze_once(lab: &mut FreezeLab, steering: bool, freeze: Duration) -> Result<FreezeRun> {
    // Steady state first.
    std::thread::sleep(Duration::from_millis(300));
    let c0 = nstat(&lab.client)?;
    let s0 = nstat(&lab.node)?;
    let d0 = lab.drops()?;
    let svc0 = lab.service()?;

    // Downtime begins: CRIU's pre-dump hook (freeze), the tasks stop, the
    // network lock.
    if steering {
        let r = lab.agent.phase(SERVICE, "freeze", &[])?;
        ensure!(r["datapath"] == "park", "freeze answered {r}");
    }
    lab.server.freeze(Duration::from_secs(5))?;
    lab::lock(&lab.node, PORT)?;
    let frozen_at = Instant::now();
    std::thread::sleep(freeze);
    // Downtime ends: the lock goes, the tasks run, the hook (abort: the
    // service resumes on this node) replays what was parked.
    // The thaw instant is taken before the first step of the thaw, so that
    // every variant's recovery includes its own steps.
    let thawed = Instant::now();
    lab::unlock(&lab.node)?;
    lab.server.signal(libc::SIGCONT);
    let freeze_ms = thawed.duration_since(frozen_at).as_secs_f64() * 1e3;
    if steering {
        let r = lab.agent.phase(SERVICE, "abort", &[])?;
        ensure!(r["to"] == "aborted", "abort answered {r}");
    }
    let steps_ms = thawed.elapsed().as_secs_f64() * 1e3;
    // Every connection answers again (or the run fails).
    wait_until(
        Duration::from_secs(20),
        "an echo on every connection after the thaw",
        || {
            for s in &lab.streams {
                if let Some(e) = s.error() {
                    anyhow::bail!("connection {}: {e}", s.id);
                }
            }
            Ok(lab
                .streams
                .iter()
                .all(|s| s.first_echo_after_ms(thawed).is_some()))
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut records = 0;
    for i in 0..lab.streams.len() {
        if let Err(e) = lab.streams[i].finish(Duration::from_secs(20)) {
            return Err(e.context(lab.diagnose(thawed)));
        }
        records += lab.streams[i].sent();
    }
    let mut replay_ms = 0.0;
    let svc = if steering {
        let mut svc = lab.service()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(svc["replay_stage"].is_null() && num(&svc, &["parked", "pending_frames"]) == 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
            svc = lab.service()?;
        }
        replay_ms = num(&svc, &["replay", "last_duration_us"]) as f64 / 1e3;
        svc
    } else {
        lab.service()?
    };
    let c1 = nstat(&lab.client)?;
    let s1 = nstat(&lab.node)?;
    let d1 = lab.drops()?;
    let recovery_ms = lab
        .streams
        .iter()
        .map(|s| s.backlog_served_after_ms(thawed).unwrap_or(f64::NAN))
        .fold(0.0, f64::max);
    let first_echo_ms = lab
        .streams
        .iter()
        .map(|s| s.first_echo_after_ms(thawed).unwrap_or(f64::NAN))
        .fold(0.0, f64::max);
    let stall_ms = lab
        .streams
        .iter()
        .map(Stream::longest_gap_ms)
        .fold(0.0, f64::max);
    let d = |a: &Value, b: &Value, path: &[&str]| num(a, path).saturating_sub(num(b, path));
    Ok(FreezeRun {
        steering,
        freeze_ms,
        recovery_ms,
        first_echo_ms,
        steps_ms,
        stall_ms,
        client: CLIENT_COUNTERS
            .iter()
            .map(|k| (*k, delta(&c1, &c0, k)))
            .collect(),
        server: SERVER_COUNTERS
            .iter()
            .map(|k| (*k, delta(&s1, &s0, k)))
            .collect(),
        parked: d(&svc, &svc0, &["verdicts", "park", "packets"]),
        replayed: d(&svc, &svc0, &["replay", "replayed_frames"]),
        park_failed: d(&svc, &svc0, &["verdicts", "park_failed", "packets"]),
        overflow: d(&svc, &svc0, &["parked", "overflow_frames"]),
        replay_failed: d(&svc, &svc0, &["replay", "failed_frames"]),
        xdp_drops: [d1[0] - d0[0], d1[1] - d0[1]],
        records,
        subflows_after: lab.kernel()?.iter().map(|c| c.subflows).collect(),
        replay_ms,
    })
}
