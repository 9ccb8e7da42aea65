//! The "handover" topology and scenario: seed 001's multipath migration
//! model (section 4.3: trigger, a new subflow to the destination, switch)
//! with server-side addresses, in the order of seed 000's Fig. 7 (ADD_ADDR
//! B, MP_JOIN to B, REMOVE_ADDR A).
//!
//! ```text
//!   cli v-c1 10.72.1.1 -- v-ac 10.72.1.2 nodeA 10.72.3.1 v-as -- v-sa 10.72.3.2 (A)  svc
//!       v-c2 10.72.2.1 -- v-bc 10.72.2.2 nodeB 10.72.4.1 v-bs -- v-sb 10.72.4.2 (B)
//!                               nodeA v-ab 10.72.5.1 -- v-ba 10.72.5.2 nodeB (backhaul)
//! ```
//!
//! `svc` is the container: the MPTCP server process, with the service's old
//! address A (behind edge node A) and its new address B (behind edge node
//! B). Each node runs a migr-agent on its client-facing interface. CRIU
//! cannot move an MPTCP socket, so the process never moves: what the
//! scenario reproduces is everything the network sees of the move.
//!
//! - **trigger**: the service will be at B. With steering, node B's agent
//!   enters `restoring` (early arrivals are parked) and node A's `prepare`.
//!   The server announces B at once (ADD_ADDR, proactive: seed 001 step 2
//!   lets the subflow be created before, while or after the transfer), and
//!   every client sends an MP_JOIN SYN to B, which reaches node B before the
//!   service is there: node B has no route to B yet (an `unreachable`
//!   route; a real node without the service answers the same way, with an
//!   ICMP error or a RST). Without steering the join is refused; with
//!   steering node B parks it.
//! - **downtime** (`--downtime-ms`): the container is frozen (SIGSTOP) under
//!   the network lock (nftables in `svc`, as CRIU locks a network
//!   namespace); with steering node A's agent is in `freeze`, so A-subflow
//!   packets are parked at node A instead of dropped by the lock.
//! - **ready**: the service runs "at B": the lock goes, the process runs, B
//!   is routed at node B, and node A has no route to A any more (the old
//!   instance is gone). With steering: node B `restored` (destination: the
//!   parked SYNs are replayed to the service, the joins complete), node A
//!   `restored` (source: the parked A-subflow packets are replayed to the
//!   forward target, then A-subflow packets of the switch window are
//!   forwarded; the target is the service's new place, same IP, reached
//!   here over its A link, the tunnel of seed 000's Fig. 7). Without
//!   steering the refused joins can complete only by the clients' own SYN
//!   retransmissions (variant `no-steering`; if there is no subflow to B 5 s
//!   after ready, the orchestrator announces B again), or the orchestrator
//!   announces B again at once (`no-steering-reannounce`).
//! - **switch**: once every connection has its B subflow, REMOVE_ADDR A
//!   (`ip mptcp endpoint delete id 0 A`); the switch is complete when the
//!   client has no subflow to A left.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use migr_testkit::{
    NetNs,
    netns::{full_checksums, mac_of},
    veth_pair,
};
use migr_user::datapath::{AttachMode, Datapath, PASS_PROGRAM};
use serde_json::{Value, json};

use super::lab::{
    self, Agent, Bins, Proc, Scratch, Stream, delta, established_to, nstat, num, tcp_rtt_ms,
    verdict, wait_until,
};

pub const PORT: u16 = 7000;
pub const A: &str = "10.72.3.2";
pub const B: &str = "10.72.4.2";
pub const SERVICE: &str = "mp";
const PERIOD: Duration = Duration::from_millis(5);

/// Fields drop in order: streams, processes and agents before the namespaces.
pub struct HandoverLab {
    pub streams: Vec<Stream>,
    pub server: Proc,
    pub backhaul_echo: Proc,
    pub agent_a: Agent,
    pub agent_b: Agent,
    /// Holds `migr_pass` on the service's A link, so that frames node A
    /// redirects there are delivered (a veth needs XDP on the peer).
    _pass: Datapath,
    pub client: NetNs,
    pub node_a: NetNs,
    pub node_b: NetNs,
    pub svc: NetNs,
    pub scratch: Scratch,
}

/// Round trips on the topology (median TCP ping-pong, milliseconds), the
/// inputs of seed 000's analytic comparison: client–source (C–S, over
/// node A to A), client–destination (C–D, over node B to B), source–
/// destination (S–D, node A to node B over the backhaul).
#[derive(Clone, Copy, Debug)]
pub struct Rtts {
    pub cs: f64,
    pub cd: f64,
    pub sd: f64,
}

impl HandoverLab {
    /// `replay_rate`: the services' `--replay-rate` (`None`: the agent's
    /// default); `rcvbuf`: the server's fixed receive buffer (`None`: kernel
    /// autotuning).
    pub fn new(
        bins: &Bins,
        connections: u32,
        replay_rate: Option<u64>,
        rcvbuf: Option<u32>,
    ) -> Result<Self> {
        lab::require_tools()?;
        let scratch = Scratch::new("handover")?;
        let client = NetNs::new("hcli")?;
        let node_a = NetNs::new("hnodea")?;
        let node_b = NetNs::new("hnodeb")?;
        let svc = NetNs::new("hsvc")?;
        veth_pair(
            &client,
            "v-c1",
            "10.72.1.1/24",
            &node_a,
            "v-ac",
            "10.72.1.2/24",
        )?;
        veth_pair(
            &client,
            "v-c2",
            "10.72.2.1/24",
            &node_b,
            "v-bc",
            "10.72.2.2/24",
        )?;
        veth_pair(
            &node_a,
            "v-as",
            "10.72.3.1/24",
            &svc,
            "v-sa",
            "10.72.3.2/24",
        )?;
        veth_pair(
            &node_b,
            "v-bs",
            "10.72.4.1/24",
            &svc,
            "v-sb",
            "10.72.4.2/24",
        )?;
        veth_pair(
            &node_a,
            "v-ab",
            "10.72.5.1/24",
            &node_b,
            "v-ba",
            "10.72.5.2/24",
        )?;
        full_checksums(&client, "v-c1")?;
        full_checksums(&client, "v-c2")?;
        client.ip(&["route", "add", "10.72.3.0/24", "via", "10.72.1.2"])?;
        client.ip(&["route", "add", "10.72.4.0/24", "via", "10.72.2.2"])?;
        svc.ip(&["route", "add", "10.72.1.0/24", "via", "10.72.3.1"])?;
        svc.ip(&["route", "add", "10.72.2.0/24", "via", "10.72.4.1"])?;
        for n in [&node_a, &node_b] {
            n.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        svc.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "0",
        ])?;
        client.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "8",
        ])?;
        let mut pass = Datapath::load()?;
        svc.run(|| pass.attach(PASS_PROGRAM, "v-sa", AttachMode::Native))??;
        let server = lab::start_server(bins, &svc, &format!("0.0.0.0:{PORT}"), &scratch.0, rcvbuf)?;
        let backhaul_echo = lab::start_server(bins, &node_b, "10.72.5.2:7001", &scratch.0, None)?;
        let agent_a = Agent::start(bins, &node_a, &["v-ac"], "nodea")?;
        let agent_b = Agent::start(bins, &node_b, &["v-bc"], "nodeb")?;
        let svc_mac = mac_of(&svc, "v-sa")?;
        let mac = svc_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let rate = replay_rate.map(|r| r.to_string());
        let (addr_a, addr_b) = (format!("{A}:{PORT}"), format!("{B}:{PORT}"));
        let mut add_a = vec![
            "service",
            "add",
            "--id",
            "1",
            "--name",
            SERVICE,
            "--mptcp",
            &addr_a,
            "--forward-mode",
            "same-ip",
            "--forward-iface",
            "v-as",
            "--next-hop-mac",
            &mac,
        ];
        let mut add_b = vec![
            "service", "add", "--id", "1", "--name", SERVICE, "--mptcp", &addr_b,
        ];
        if let Some(rate) = &rate {
            add_a.extend(["--replay-rate", rate]);
            add_b.extend(["--replay-rate", rate]);
        }
        agent_a.ok(&add_a)?;
        agent_b.ok(&add_b)?;
        let mut lab = Self {
            streams: Vec::new(),
            server,
            backhaul_echo,
            agent_a,
            agent_b,
            _pass: pass,
            client,
            node_a,
            node_b,
            svc,
            scratch,
        };
        let to: SocketAddr = format!("{A}:{PORT}").parse()?;
        for id in 0..connections {
            lab.streams
                .push(Stream::connect(&lab.client, to, id, PERIOD)?);
        }
        let n = connections as usize;
        wait_until(
            Duration::from_secs(10),
            "connections and learned tokens",
            || {
                Ok(lab::kernel_conns(&lab.svc)?.len() == n
                    && lab
                        .agent_a
                        .tokens()?
                        .iter()
                        .filter(|(_, s)| *s == 1)
                        .count()
                        == n)
            },
        )?;
        let kernel: std::collections::BTreeSet<u32> = lab::kernel_conns(&lab.svc)?
            .iter()
            .map(|c| c.token)
            .collect();
        let learned: std::collections::BTreeSet<u32> =
            lab.agent_a.tokens()?.into_iter().map(|(t, _)| t).collect();
        ensure!(
            kernel == learned,
            "node A's learned tokens {learned:08x?} differ from the kernel's {kernel:08x?}"
        );
        Ok(lab)
    }

    pub fn rtts(&self) -> Result<Rtts> {
        Ok(Rtts {
            cs: tcp_rtt_ms(&self.client, format!("{A}:{PORT}").parse()?, 100)?,
            cd: tcp_rtt_ms(&self.client, format!("{B}:{PORT}").parse()?, 100)?,
            sd: tcp_rtt_ms(&self.node_a, "10.72.5.2:7001".parse()?, 100)?,
        })
    }

    /// What the kernels and the agents show, for a failure's message.
    pub fn diagnose(&self, t: Instant) -> String {
        let mut out = String::new();
        for s in &self.streams {
            let a = s.arrivals();
            out += &format!(
                "connection {}: sent {}, echoed {}, last echo {:?} ms after ready, error {:?}\n",
                s.id,
                s.sent(),
                a.len(),
                a.last().map(|l| l.saturating_duration_since(t).as_millis()),
                s.error()
            );
        }
        for (name, ns) in [("client", &self.client), ("svc", &self.svc)] {
            for cmd in [&["ss", "-tnmi"][..], &["ss", "-Mni"][..]] {
                out += &format!(
                    "--- {name}: {cmd:?}\n{}\n",
                    ns.exec(cmd).unwrap_or_else(|e| e.to_string())
                );
            }
            if let Ok(n) = nstat(ns) {
                let v: Vec<String> = n
                    .iter()
                    .filter(|(k, v)| **v > 0 && (k.starts_with("MPTcp") || k.contains("Retrans")))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out += &format!("--- {name} nstat: {}\n", v.join(" "));
            }
        }
        out
    }

    fn announce_b(&self) -> Result<()> {
        self.svc.ip(&[
            "mptcp", "endpoint", "add", B, "dev", "v-sb", "id", "2", "signal",
        ])
    }

    fn subflows_to(&self, ns: &NetNs, addr: &str) -> Result<usize> {
        established_to(ns, &format!("{addr}:{PORT}"))
    }
}

/// What one handover measured.
#[derive(Clone, Debug)]
pub struct HandoverRun {
    pub steering: bool,
    pub downtime_ms: f64,
    /// The proactive joins' fate at node B: refused (ICMP errors the client
    /// received) or parked (frames node B's agent parked).
    pub icmp_unreachable_at_client: u64,
    /// The same, counted before the service was ready at B.
    pub icmp_before_ready: u64,
    /// Subflows to B in the server's kernel just before ready.
    pub b_subflows_before_ready: usize,
    pub parked_at_b: u64,
    pub replayed_at_b: u64,
    pub parked_at_a: u64,
    pub replayed_at_a: u64,
    pub forwarded_at_a: u64,
    pub lost_in_datapath: u64,
    /// Announcements of B needed (1: the proactive one sufficed).
    pub announcements: u32,
    /// Variant `no-steering`: subflows to B that the clients' own SYN
    /// retransmissions completed within `NAIVE_WAIT` after ready.
    pub joins_by_retry: Option<usize>,
    /// Ready → the ready steps done (unlock, SIGCONT, routes; with steering
    /// both `restored` commands returned, without the re-announcement):
    /// orchestration time inside the other times.
    pub steps_ms: f64,
    /// Ready → every connection has its subflow to B (the server's kernel).
    pub join_ms: f64,
    /// Ready → the client has no subflow to A left (the switch is complete).
    pub switch_ms: f64,
    /// Ready → the echo of the last record written before ready.
    pub recovery_ms: f64,
    /// The longest time between two echoes on any connection (downtime included).
    pub stall_ms: f64,
    pub records: u64,
    pub client: BTreeMap<&'static str, u64>,
    pub server: BTreeMap<&'static str, u64>,
}

pub const CLIENT_COUNTERS: &[&str] = &[
    "TcpRetransSegs",
    "TcpExtTCPTimeouts",
    "IcmpInDestUnreachs",
    "MPTcpExtMPJoinSynAckRx",
    "MPTcpExtAddAddr",
    "MPTcpExtRmAddr",
];
pub const SERVER_COUNTERS: &[&str] = &[
    "TcpRetransSegs",
    "TcpExtTCPTimeouts",
    "MPTcpExtMPJoinSynRx",
    "MPTcpExtMPJoinAckRx",
    "MPTcpExtDuplicateData",
];

/// Without steering and without re-announcing: how long the orchestrator
/// waits for the clients' own SYN retransmissions before announcing B again.
pub const NAIVE_WAIT: Duration = Duration::from_secs(5);

/// Runs one handover on a fresh lab (see the module's description).
pub fn handover_once(
    lab: &mut HandoverLab,
    steering: bool,
    reannounce: bool,
    downtime: Duration,
) -> Result<HandoverRun> {
    let n = lab.streams.len();
    std::thread::sleep(Duration::from_millis(300));
    let c0 = nstat(&lab.client)?;
    let s0 = nstat(&lab.svc)?;

    // Trigger. The service is not at B yet: node B has no route to it.
    lab.node_b
        .ip(&["route", "add", "unreachable", &format!("{B}/32")])?;
    if steering {
        lab.agent_b.phase(SERVICE, "restoring", &[])?;
        lab.agent_a.phase(SERVICE, "prepare", &[])?;
    }
    lab.announce_b()?;
    // Every client has tried its join: refused at node B, or parked there.
    wait_until(
        Duration::from_secs(5),
        "the clients' MP_JOIN SYNs to B",
        || {
            Ok(if steering {
                verdict(&lab.agent_b.service(SERVICE)?, "park") >= n as u64
            } else {
                delta(&nstat(&lab.client)?, &c0, "IcmpInDestUnreachs") >= n as u64
            })
        },
    )?;

    // Downtime.
    if steering {
        lab.agent_a.phase(SERVICE, "freeze", &[])?;
    }
    lab.server.freeze(Duration::from_secs(5))?;
    lab::lock(&lab.svc, PORT)?;
    let frozen = Instant::now();
    std::thread::sleep(downtime);

    let c_frozen = nstat(&lab.client)?;
    let b_subflows_before_ready = lab.subflows_to(&lab.svc, B)?;
    // Ready at B; the old instance (node A's) is gone. The instant is taken
    // before the first step, so that each variant's recovery includes its
    // own steps.
    let ready = Instant::now();
    let downtime_ms = ready.duration_since(frozen).as_secs_f64() * 1e3;
    lab::unlock(&lab.svc)?;
    lab.server.signal(libc::SIGCONT);
    lab.node_b
        .ip(&["route", "del", "unreachable", &format!("{B}/32")])?;
    lab.node_a
        .ip(&["route", "add", "unreachable", &format!("{A}/32")])?;
    if steering {
        // The orchestrator tells both nodes at once.
        let (a, b) = (&lab.agent_a, &lab.agent_b);
        std::thread::scope(|s| {
            let tb = s.spawn(|| b.phase(SERVICE, "restored", &[]));
            let ta = a.phase(SERVICE, "restored", &[]);
            let tb = tb.join().expect("the phase thread");
            ta.and(tb)
        })?;
    }
    let mut announcements = 1;
    let joined = |lab: &HandoverLab| -> Result<bool> { Ok(lab.subflows_to(&lab.svc, B)? >= n) };
    if reannounce {
        // The proactive joins were refused; rather than wait for the
        // clients' SYN retransmissions (1 s, 3 s, ... after the first SYN),
        // the orchestrator announces B again now that it is there.
        announcements += 1;
        lab.svc.ip(&["mptcp", "endpoint", "delete", "id", "2"])?;
        lab.announce_b()?;
    }
    let steps_ms = ready.elapsed().as_secs_f64() * 1e3;
    let mut joins_by_retry = None;
    if !steering && !reannounce {
        // One announcement, as with steering: the refused joins can only
        // complete by the clients' own SYN retransmissions. An orchestrator
        // that sees no subflow to B after NAIVE_WAIT announces B again.
        let deadline = ready + NAIVE_WAIT;
        while !joined(lab)? && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        joins_by_retry = Some(lab.subflows_to(&lab.svc, B)?);
        if !joined(lab)? {
            announcements += 1;
            lab.svc.ip(&["mptcp", "endpoint", "delete", "id", "2"])?;
            lab.announce_b()?;
        }
    }
    wait_until(
        Duration::from_secs(10),
        "every connection's subflow to B",
        || joined(lab),
    )?;
    let join_ms = ready.elapsed().as_secs_f64() * 1e3;

    // Switch: REMOVE_ADDR A.
    lab.svc.ip(&["mptcp", "endpoint", "delete", "id", "0", A])?;
    wait_until(
        Duration::from_secs(10),
        "the client to drop its subflows to A",
        || Ok(lab.subflows_to(&lab.client, A)? == 0),
    )?;
    let switch_ms = ready.elapsed().as_secs_f64() * 1e3;
    if steering {
        lab.agent_a.phase(SERVICE, "done", &["--drain-ms", "100"])?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut records = 0;
    for i in 0..lab.streams.len() {
        if let Err(e) = lab.streams[i].finish(Duration::from_secs(20)) {
            return Err(e.context(lab.diagnose(ready)));
        }
        records += lab.streams[i].sent();
    }
    ensure!(
        lab.subflows_to(&lab.svc, B)? == n && lab.subflows_to(&lab.svc, A)? == 0,
        "after the switch every connection runs on B only"
    );
    let c1 = nstat(&lab.client)?;
    let s1 = nstat(&lab.svc)?;
    let (sa, sb) = settled(lab)?;
    let recovery_ms = lab
        .streams
        .iter()
        .map(|s| s.backlog_served_after_ms(ready).unwrap_or(f64::NAN))
        .fold(0.0, f64::max);
    let stall_ms = lab
        .streams
        .iter()
        .map(Stream::longest_gap_ms)
        .fold(0.0, f64::max);
    let parked_at_a = verdict(&sa, "park");
    let parked_at_b = verdict(&sb, "park");
    let replayed_at_a = num(&sa, &["replay", "replayed_frames"]);
    let replayed_at_b = num(&sb, &["replay", "replayed_frames"]);
    let failed = verdict(&sa, "park_failed")
        + verdict(&sb, "park_failed")
        + verdict(&sa, "forward_failed")
        + num(&sa, &["replay", "failed_frames"])
        + num(&sb, &["replay", "failed_frames"]);
    Ok(HandoverRun {
        steering,
        downtime_ms,
        icmp_unreachable_at_client: delta(&c1, &c0, "IcmpInDestUnreachs"),
        icmp_before_ready: delta(&c_frozen, &c0, "IcmpInDestUnreachs"),
        b_subflows_before_ready,
        parked_at_b,
        replayed_at_b,
        parked_at_a,
        replayed_at_a,
        forwarded_at_a: verdict(&sa, "forward"),
        lost_in_datapath: parked_at_a.saturating_sub(replayed_at_a)
            + parked_at_b.saturating_sub(replayed_at_b)
            + failed,
        announcements,
        joins_by_retry,
        steps_ms,
        join_ms,
        switch_ms,
        recovery_ms,
        stall_ms,
        records,
        client: CLIENT_COUNTERS
            .iter()
            .map(|k| (*k, delta(&c1, &c0, k)))
            .collect(),
        server: SERVER_COUNTERS
            .iter()
            .map(|k| (*k, delta(&s1, &s0, k)))
            .collect(),
    })
}

/// Both agents' service status once their replays are done.
fn settled(lab: &HandoverLab) -> Result<(Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = lab.agent_a.service(SERVICE)?;
        let b = lab.agent_b.service(SERVICE)?;
        let idle =
            |s: &Value| s["replay_stage"].is_null() && num(s, &["parked", "pending_frames"]) == 0;
        if idle(&a) && idle(&b) {
            return Ok((a, b));
        }
        if Instant::now() >= deadline {
            bail!("replays did not finish: A {a}\nB {b}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run_json(r: &HandoverRun, rtts: &Rtts) -> Value {
    json!({
        "downtime_ms": r.downtime_ms,
        "announcements": r.announcements,
        "joins_by_retry": r.joins_by_retry,
        "icmp_unreachable_at_client": r.icmp_unreachable_at_client,
        "icmp_before_ready": r.icmp_before_ready,
        "b_subflows_before_ready": r.b_subflows_before_ready,
        "parked_at_b": r.parked_at_b,
        "replayed_at_b": r.replayed_at_b,
        "parked_at_a": r.parked_at_a,
        "replayed_at_a": r.replayed_at_a,
        "forwarded_at_a": r.forwarded_at_a,
        "lost_in_datapath": r.lost_in_datapath,
        "steps_ms": r.steps_ms,
        "join_ms": r.join_ms,
        "switch_ms": r.switch_ms,
        "recovery_ms": r.recovery_ms,
        "stall_ms": r.stall_ms,
        "records": r.records,
        "client": r.client,
        "server": r.server,
        "rtt_ms": {"c_s": rtts.cs, "c_d": rtts.cd, "s_d": rtts.sd},
    })
}

/// The runner's scenario: `runs` handovers with and without steering,
/// alternating, each on a fresh lab.
pub fn scenario(
    bins: &'static Bins,
    runs: usize,
    downtime: Duration,
    only: Option<&str>,
    rcvbuf: Option<u32>,
) -> Result<Value> {
    const CONNECTIONS: u32 = 2;
    let mut per = variants(only)?;
    let mut failures = Vec::new();
    for i in 0..runs {
        for v in per.iter_mut() {
            let once = || -> Result<Value> {
                let mut lab = HandoverLab::new(bins, CONNECTIONS, v.replay_rate, rcvbuf)?;
                let rtts = lab.rtts().context("measuring RTTs")?;
                let r = handover_once(&mut lab, v.steering, v.reannounce, downtime)?;
                Ok(run_json(&r, &rtts))
            };
            match once() {
                Ok(r) => {
                    println!(
                        "run {}/{runs} {}: join {:.1} ms, switch {:.1} ms, recovery {:.1} ms, stall {:.0} ms, \
                         announcements {}, ICMP before ready {}, parked A {} B {}, client retrans {}",
                        i + 1,
                        v.name,
                        r["join_ms"].as_f64().unwrap_or(f64::NAN),
                        r["switch_ms"].as_f64().unwrap_or(f64::NAN),
                        r["recovery_ms"].as_f64().unwrap_or(f64::NAN),
                        r["stall_ms"].as_f64().unwrap_or(f64::NAN),
                        r["announcements"],
                        r["icmp_before_ready"],
                        r["parked_at_a"],
                        r["parked_at_b"],
                        r["client"]["TcpRetransSegs"],
                    );
                    v.runs.push(r);
                }
                Err(e) => {
                    println!("run {}/{runs} {}: FAILED: {e:#}", i + 1, v.name);
                    failures.push(json!({"run": i, "variant": v.name, "error": format!("{e:#}")}));
                }
            }
        }
    }
    let metrics: &[(&str, &[&str])] = &[
        ("steps_ms", &["steps_ms"]),
        ("join_ms", &["join_ms"]),
        ("switch_ms", &["switch_ms"]),
        ("recovery_ms", &["recovery_ms"]),
        ("stall_ms", &["stall_ms"]),
        ("announcements", &["announcements"]),
        ("joins_by_retry", &["joins_by_retry"]),
        (
            "icmp_unreachable_at_client",
            &["icmp_unreachable_at_client"],
        ),
        ("client_retrans_segs", &["client", "TcpRetransSegs"]),
        ("client_rto_timeouts", &["client", "TcpExtTCPTimeouts"]),
        ("server_retrans_segs", &["server", "TcpRetransSegs"]),
        ("parked_at_a", &["parked_at_a"]),
        ("parked_at_b", &["parked_at_b"]),
        ("forwarded_at_a", &["forwarded_at_a"]),
        ("lost_in_datapath", &["lost_in_datapath"]),
        ("rtt_c_s_ms", &["rtt_ms", "c_s"]),
        ("rtt_c_d_ms", &["rtt_ms", "c_d"]),
        ("rtt_s_d_ms", &["rtt_ms", "s_d"]),
    ];
    let mut variants = serde_json::Map::new();
    let mut all = Vec::new();
    for v in &per {
        variants.insert(
            v.name.into(),
            json!({
                "steering": v.steering,
                "replay_rate": v.replay_rate,
                "summary": lab::summarize(&v.runs, metrics),
                "runs": v.runs,
            }),
        );
        all.extend(v.runs.iter().cloned());
    }
    let rtt = lab::summarize(
        &all,
        &[
            ("c_s", &["rtt_ms", "c_s"]),
            ("c_d", &["rtt_ms", "c_d"]),
            ("s_d", &["rtt_ms", "s_d"]),
        ],
    );
    let mean = |k: &str| rtt[k]["mean"].as_f64().unwrap_or(f64::NAN);
    let (cs, cd, sd) = (mean("c_s"), mean("c_d"), mean("s_d"));
    Ok(json!({
        "schema": lab::SCHEMA,
        "scenario": "mptcp-handover",
        "environment": lab::environment(),
        "params": {
            "runs": runs,
            "downtime_ms": downtime.as_millis() as u64,
            "server_rcvbuf": rcvbuf,
            "connections": CONNECTIONS,
            "record_bytes": lab::RECORD,
            "record_period_ms": PERIOD.as_millis() as u64,
            "announce": "proactive at the trigger; no-steering: again if no subflow to B 5 s after ready; no-steering-reannounce: again at ready",
        },
        "variants": variants,
        "rtt_ms": rtt,
        "analytic_seed000": {
            "quic_first_packet_on_new_path_ms": cs,
            "quic_migration_complete_ms": cs + 2.0 * cd,
            "mptcp_first_packet_on_new_path_ms": 2.0 * cd + 0.5 * cs + 0.5 * sd,
            "mptcp_migration_complete_ms": 2.0 * cd + 1.5 * cs + sd,
        },
        "failures": failures,
    }))
}

/// A way of running a scenario: with steering (unpaced or at the agent's
/// default replay pace) or without.
pub struct Variant {
    pub name: &'static str,
    pub steering: bool,
    /// Handover only: announce B again at ready.
    pub reannounce: bool,
    pub replay_rate: Option<u64>,
    pub runs: Vec<Value>,
}

/// The variants, or only the one named `only`.
pub fn variants(only: Option<&str>) -> Result<Vec<Variant>> {
    let all = vec![
        Variant {
            name: "steering",
            steering: true,
            reannounce: false,
            replay_rate: Some(0),
            runs: Vec::new(),
        },
        Variant {
            name: "steering-paced",
            steering: true,
            reannounce: false,
            replay_rate: None,
            runs: Vec::new(),
        },
        Variant {
            name: "no-steering",
            steering: false,
            reannounce: false,
            replay_rate: None,
            runs: Vec::new(),
        },
        Variant {
            name: "no-steering-reannounce",
            steering: false,
            reannounce: true,
            replay_rate: None,
            runs: Vec::new(),
        },
    ];
    match only {
        None => Ok(all),
        Some(name) => {
            let v: Vec<Variant> = all.into_iter().filter(|v| v.name == name).collect();
            ensure!(
                !v.is_empty(),
                "no variant {name:?} (steering, steering-paced, no-steering)"
            );
            Ok(v)
        }
    }
}
