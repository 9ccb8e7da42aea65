//! One live migration with real CRIU, cold (dump, copy, restore), while a
//! client sends requests back to back.
//!
//! - QUIC: `migr-echo server` (bound to 0.0.0.0:4433) moves from the source
//!   container (10.60.11.2) to the destination container (10.60.12.2, a new
//!   IP); the client follows the server's announcement (seed 000).
//! - TCP, the COAT case (seed 002): `migr-testbed tcp-server` on the same IP
//!   (10.60.20.2:5000) in both containers, dumped and restored with
//!   `--tcp-established`; once the restore returned, the router's route to
//!   that IP moves to the destination node (COAT's flow update).
//!
//! Steering on: migr-agent on both edge nodes; CRIU's action script runs
//! `migrctl criu-hook` on each side (pre-dump/network-lock: source freeze;
//! pre-restore: destination restoring; post-resume: destination restored).
//! The orchestration sends what no hook covers: `prepare` on both,
//! `restoring` on the destination before the dump (a P-Explicit client sends
//! to the new address from its acknowledgement on, while the service still
//! runs at the source: those packets are parked at the destination rather
//! than refused), `restored` on the source once the restore returned (it
//! forwards what it parked, and stragglers), and `done`.
//!
//! Steering off: no agents, what users have today: CRIU's own network lock,
//! and every packet that arrives while the service is down is lost and
//! retransmitted by the client's transport.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use migr_quic::service_gaps::Gap;
use serde_json::{Value, json};

use super::{
    Bins, WorkDir,
    agent::{Agent, hook_command, write_hook},
    criu::{self, dir_bytes, phase_time, read_phases},
    delay::DelayStats,
    dns, now_s,
    placement::{Files, Placement, Runtime},
    proc::{Proc, Spawn, become_subreaper, pid_free},
    stats::{self, Request},
    topology::{
        DST_CT_IP, DST_NODE_IP, DST_UPLINK, Preset, ROUTER_CLIENT_IP, SAME_IP, SRC_CT_IP,
        SRC_UPLINK, Topology,
    },
    transfer,
};

pub const SERVICE: &str = "echo";
/// The QUIC service's port.
pub const PORT: u16 = 4433;
/// The TCP (same-IP) service's port.
pub const TCP_PORT: u16 = 5000;
const SERVER_ID: &str = "7";
/// Requests of this size and more are a bulk transfer: the TCP client
/// watches its send queue (where the freeze hit).
const BULK_BYTES: usize = 64 * 1024;

/// What moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// QUIC to a new IP (migr-echo).
    Quic,
    /// QUIC at the same IP (route moved after the restore, as TCP's), an
    /// unmodified client: `migr-echo client --plain`, quinn-proto without
    /// the extension.
    QuicSameIp,
    /// TCP with `--tcp-established`, same IP (COAT).
    Tcp,
    /// Plain UDP request/response, same IP, a client that never retries
    /// (`udpecho`): an unmodified client.
    Udp,
    /// The TCP+DNS baseline (seed 000): no steering; the server moves to a
    /// new IP (dumped with `--tcp-close`), the DNS record is updated, and
    /// the client reconnects once its cached record expired.
    TcpDns,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::QuicSameIp => "quic-same-ip",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::TcpDns => "tcp-dns",
        }
    }
}

/// The client's request pattern (seed 000, sections 4.2 and 4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each request right after the previous response.
    BackToBack,
    /// One request every `period_ms` (QUIC only).
    Sporadic { period_ms: u64 },
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::BackToBack => "back-to-back",
            Self::Sporadic { .. } => "sporadic",
        }
    }
}

/// How CRIU moves the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Technique {
    /// Dump everything, copy, restore everything.
    Cold,
    /// Post-copy with CRIU's lazy pages, the local variant: a plain dump
    /// and copy, then `criu lazy-pages` at the destination serves the pages
    /// from the copied images while `criu restore --lazy-pages` starts the
    /// tasks without filling their memory (the remote page server fails
    /// here: shared/notes/criu.md).
    PostCopyLocal,
}

impl Technique {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::PostCopyLocal => "post-copy-local",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub protocol: Protocol,
    pub steering: bool,
    /// QUIC: p-explicit, r-explicit or poa (ignored for TCP).
    pub strategy: String,
    /// QUIC: how the client probes while the server is silent: `fast`
    /// (migr-quic's PINGs) or `rfc9002` (QUIC's own probe timeouts only, as
    /// a client without migr: the baseline).
    pub client_probing: String,
    /// The agents' XDP attach mode (`migr-agent run --mode`): `auto`
    /// (native on a veth), or `skb`.
    pub agent_xdp_mode: String,
    pub preset: Preset,
    pub mode: Mode,
    pub technique: Technique,
    /// MiB of touched memory in the server process (the container's size).
    pub ballast_mb: usize,
    /// Requests the client sends in all.
    pub requests: usize,
    /// Requests answered before the migration starts.
    pub migrate_after: usize,
    /// Bytes per request (TCP: the echo's size; 1 MiB for the bulk transfer).
    pub request_bytes: usize,
    /// Stop the client this long after the restore returned, instead of
    /// after `requests` (the TCP client; a fast transport would otherwise
    /// need millions of requests to be sure to outlast the migration).
    pub stop_after_restore_ms: Option<u64>,
    /// Where the run's work directory goes.
    pub work_base: PathBuf,
    /// Keep the work directory (logs, images, CSV) after the run.
    pub keep_files: bool,
    /// Print progress lines.
    pub verbose: bool,
    /// TCP+DNS: the TTL of the service's DNS record, in seconds.
    pub dns_ttl_s: u32,
    /// QUIC PoA: addresses in the server's pool (1: only the new address; more: addresses
    /// of the destination's subnet that nobody answers at, which the client probes too).
    pub pool_size: usize,
    /// UDP: how long the client waits for an echo before it gives the
    /// request up.
    pub udp_timeout_ms: u64,
    /// What checkpoints the service: CRIU on a bare process, or runc or
    /// podman on a container.
    pub runtime: Runtime,
    /// With steering: whether the service is registered with the agents.
    /// `false`: migr is installed (agents attached, the hook runs) but knows
    /// nothing of this service, which must pass untouched.
    pub registered: bool,
}

impl RunConfig {
    /// A back-to-back QUIC run with P-Explicit, sized for about one second
    /// of requests before the migration and one after.
    pub fn back_to_back(steering: bool, preset: Preset) -> Self {
        let (requests, migrate_after) = match preset {
            Preset::None | Preset::Bandwidth => (3000, 1000),
            Preset::Latency => (300, 60),
        };
        Self {
            protocol: Protocol::Quic,
            steering,
            strategy: "p-explicit".into(),
            client_probing: "fast".into(),
            agent_xdp_mode: "auto".into(),
            preset,
            mode: Mode::BackToBack,
            technique: Technique::Cold,
            ballast_mb: 0,
            stop_after_restore_ms: None,
            requests,
            migrate_after,
            request_bytes: 1024,
            work_base: std::env::temp_dir(),
            keep_files: false,
            verbose: true,
            dns_ttl_s: 5,
            pool_size: 1,
            udp_timeout_ms: 1000,
            runtime: Runtime::Criu,
            registered: true,
        }
    }

    /// Seed 000's scenario 1: a request every 10 s, the migration between
    /// requests 2 and 3 (it is over long before request 3 is sent).
    pub fn sporadic(steering: bool, preset: Preset, strategy: &str) -> Self {
        Self {
            strategy: strategy.into(),
            mode: Mode::Sporadic { period_ms: 10_000 },
            requests: 4,
            migrate_after: 2,
            ..Self::back_to_back(steering, preset)
        }
    }

    /// The same, TCP (COAT case).
    pub fn tcp_back_to_back(steering: bool, preset: Preset) -> Self {
        Self {
            protocol: Protocol::Tcp,
            strategy: "tcp".into(),
            // About 30,000 requests a second here (45 with the latency
            // preset): a second or two before the migration, a second and a
            // half after the restore.
            requests: 10_000_000,
            migrate_after: match preset {
                Preset::Latency => 60,
                Preset::None | Preset::Bandwidth => 30_000,
            },
            stop_after_restore_ms: Some(1500),
            ..Self::back_to_back(steering, preset)
        }
    }

    /// The same, plain UDP with an unmodified client: one request at a time,
    /// each given up after `udp_timeout_ms` (never retried).
    pub fn udp_back_to_back(steering: bool, preset: Preset) -> Self {
        Self {
            protocol: Protocol::Udp,
            strategy: "udp".into(),
            ..Self::tcp_back_to_back(steering, preset)
        }
    }

    /// QUIC at the same IP with a plain client (no extension).
    pub fn quic_same_ip_back_to_back(steering: bool, preset: Preset) -> Self {
        Self {
            protocol: Protocol::QuicSameIp,
            strategy: "same-ip".into(),
            client_probing: "plain".into(),
            ..Self::back_to_back(steering, preset)
        }
    }

    /// The TCP+DNS baseline: back-to-back echo to the service's name, no
    /// steering, a cached DNS record with `ttl_s`.
    pub fn tcp_dns(ttl_s: u32, preset: Preset) -> Self {
        Self {
            protocol: Protocol::TcpDns,
            dns_ttl_s: ttl_s,
            // Two seconds after the restore returned beyond the TTL: the
            // client has reconnected by then.
            stop_after_restore_ms: Some(u64::from(ttl_s) * 1000 + 2000),
            ..Self::tcp_back_to_back(false, preset)
        }
    }

    fn label(&self) -> String {
        format!(
            "{}-{}-{}-{}-{}-{}-{}",
            self.runtime.name(),
            self.protocol.name(),
            self.technique.name(),
            self.mode.name(),
            self.strategy,
            if self.steering { "on" } else { "off" },
            self.preset.name()
        )
    }
}

/// Frame counters of one agent's service, from `migrctl stats --json`.
#[derive(Clone, Debug, Default)]
pub struct Frames {
    pub passed: u64,
    pub parked: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub replayed: u64,
    pub overflow: u64,
    pub replay_failed: u64,
    pub park_failed: u64,
    pub forward_failed: u64,
    /// The agent's account of its local replay: times it waited for the
    /// service to read, datagrams the service's sockets dropped.
    pub socket_waits: u64,
    pub socket_drops: u64,
}

impl Frames {
    fn from_stats(svc: &Value) -> Self {
        let v = |k: &str| svc["verdicts"][k]["packets"].as_u64().unwrap_or(0);
        Self {
            passed: v("pass"),
            parked: v("park"),
            forwarded: v("forward"),
            dropped: v("drop"),
            park_failed: v("park_failed"),
            forward_failed: v("forward_failed"),
            replayed: svc["replay"]["replayed_frames"].as_u64().unwrap_or(0),
            overflow: svc["parked"]["overflow_frames"].as_u64().unwrap_or(0),
            replay_failed: svc["replay"]["failed_frames"].as_u64().unwrap_or(0),
            socket_waits: svc["replay"]["socket_waits"].as_u64().unwrap_or(0),
            socket_drops: svc["replay"]["socket_drops"].as_u64().unwrap_or(0),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "passed": self.passed, "parked": self.parked, "forwarded": self.forwarded,
            "dropped": self.dropped, "replayed": self.replayed, "overflow": self.overflow,
            "replay_failed": self.replay_failed, "park_failed": self.park_failed,
            "forward_failed": self.forward_failed,
            "socket_waits": self.socket_waits, "socket_drops": self.socket_drops,
        })
    }
}

/// The server's pause in answering over the freeze, set against CRIU's
/// action stamps.
#[derive(Clone, Copy, Debug)]
pub struct ServiceGap {
    /// Last answer before the freeze to first answer after the restore.
    pub ms: f64,
    /// How long before pre-dump the last answer went out (for QUIC with an
    /// explicit strategy: the announce round trip, among others).
    pub last_answer_before_pre_dump_ms: f64,
    /// How long after post-resume the first answer went out.
    pub first_answer_after_post_resume_ms: f64,
}

impl ServiceGap {
    /// The first `answer-gap` in `log` that overlaps the migration (pre-dump
    /// to post-resume, wall-clock seconds): the freeze. (A later pause, e.g.
    /// a client waiting out its timeout after the restore, is the client's.)
    pub fn from_log(log: &std::path::Path, pre_dump: f64, post_resume: f64) -> Option<Self> {
        let text = std::fs::read_to_string(log).ok()?;
        let gap = text
            .lines()
            .filter_map(Gap::parse)
            .filter(|g| g.from_s <= post_resume && g.to_s >= pre_dump)
            .min_by(|a, b| a.from_s.total_cmp(&b.from_s))?;
        Some(Self {
            ms: gap.ms(),
            last_answer_before_pre_dump_ms: (pre_dump - gap.from_s) * 1e3,
            first_answer_after_post_resume_ms: (gap.to_s - post_resume) * 1e3,
        })
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Run {
    pub label: String,
    pub protocol: Protocol,
    pub steering: bool,
    pub strategy: String,
    pub client_probing: String,
    pub preset: Preset,
    pub mode: Mode,
    pub technique: Technique,
    pub ballast_mb: usize,
    pub requests: usize,
    pub answered: usize,
    /// Requests without a response (`requests - answered`).
    pub lost: usize,
    /// The client's exit status was success (every response arrived and
    /// echoed its request).
    pub client_ok: bool,
    pub client_error: Option<String>,
    /// Server address of the last response.
    pub final_server: String,
    /// CRIU's pre-dump action to the restore's post-resume action.
    pub downtime_ms: f64,
    pub dump_ms: f64,
    pub transfer_ms: f64,
    pub restore_ms: f64,
    /// From the orchestrator starting `criu dump` to the source agent
    /// forwarding (steering off: to post-resume).
    pub total_migration_ms: f64,
    /// From CRIU's post-resume to the orchestration having moved the flow
    /// (route or DNS record) and told the source's agent: the testbed's own
    /// reaction time, outside migr.
    pub flow_moved_after_resume_ms: f64,
    /// From pre-dump (the announcement) to the client's acknowledgement.
    pub announce_to_ack_ms: f64,
    /// The service's own downtime: from the server's last answer before the
    /// freeze to its first after the restore (`answer-gap` in its log, server
    /// side), if the server logged one.
    pub service_gap: Option<ServiceGap>,
    /// The longest time without a response, and the request that ended it.
    pub disruption_ms: f64,
    /// Milliseconds the client waited beyond its median wait, summed over the run.
    pub excess_wait_ms: f64,
    /// Every wait over twice the median (a split outage shows as several).
    pub long_gaps_ms: Vec<f64>,
    pub disruption_at: Option<usize>,
    pub median_service_ms: f64,
    pub max_service_ms: f64,
    /// Sporadic mode: the service time of the first request sent after the
    /// migration (request `migrate_after`, i.e. request 3 of seed 000's
    /// scenario 1). Back to back: None (the longest gap says more).
    pub after_migration_service_ms: Option<f64>,
    pub image_bytes: u64,
    /// Post-copy: from post-resume until the lazy-pages daemon had served
    /// every page and exited.
    pub lazy_pages_ms: Option<f64>,
    pub client_summary: std::collections::BTreeMap<String, String>,
    pub src_frames: Option<Frames>,
    pub dst_frames: Option<Frames>,
    pub src_phases: Vec<(String, f64)>,
    pub dst_phases: Vec<(String, f64)>,
    pub lock_tables_removed: Vec<String>,
    /// Latency preset: frames its delay lines failed to pass on (0 is the
    /// only good value).
    /// The delay lines' account (latency preset only).
    pub delay_line: Option<DelayStats>,
    /// Bulk TCP: whether the source's network lock fell while request bytes
    /// were unacknowledged (upload) or only the echo was outstanding.
    pub freeze_hit: Option<stats::FreezeHit>,
    /// QUIC: the losses the client's stack declared, timed from pre-dump.
    pub declared_losses: Vec<stats::DeclaredLoss>,
    /// Datagrams the containers' kernels dropped because the service's
    /// socket was full (UDP RcvbufErrors, both containers).
    pub service_socket_drops: Option<u64>,
    pub requests_detail: Vec<Request>,
    pub work_dir: PathBuf,
}

impl Run {
    fn summary_u64(&self, key: &str) -> Option<u64> {
        self.client_summary.get(key).and_then(|v| v.parse().ok())
    }

    /// QUIC packets the client's stack declared lost.
    pub fn lost_packets(&self) -> Option<u64> {
        self.summary_u64("lost_packets")
    }

    pub fn pto_count(&self) -> Option<u64> {
        self.summary_u64("pto_count")
    }

    /// TCP segments the client's kernel retransmitted (TCP_INFO).
    pub fn tcp_retransmits(&self) -> Option<u64> {
        self.summary_u64("retransmits")
    }

    /// Disruption over downtime.
    pub fn ratio(&self) -> f64 {
        if self.downtime_ms > 0.0 {
            self.disruption_ms / self.downtime_ms
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let delay_line = self.delay_line.map(|d| {
            json!({
                "frames": d.sent,
                "failed": d.failed,
                "dropped": d.dropped,
                "late_over_1ms": d.late,
                "max_late_us": d.max_late_us,
            })
        });
        let phases = |p: &[(String, f64)]| -> Value {
            p.iter()
                .map(|(a, t)| json!({"action": a, "time_s": t}))
                .collect()
        };
        let mut doc = json!({
            "label": self.label,
            "protocol": self.protocol.name(),
            "steering": self.steering,
            "strategy": self.strategy,
            "client_probing": self.client_probing,
            "preset": self.preset.name(),
            "technique": self.technique.name(),
            "lazy_pages_ms": self.lazy_pages_ms,
            "mode": self.mode.name(),
            "period_ms": match self.mode { Mode::Sporadic { period_ms } => Some(period_ms), Mode::BackToBack => None },
            "ballast_mb": self.ballast_mb,
            "after_migration_service_ms": self.after_migration_service_ms,
            "requests": self.requests,
            "answered": self.answered,
            "requests_lost": self.lost,
            "client_ok": self.client_ok,
            "client_error": self.client_error,
            "final_server": self.final_server,
            "downtime_ms": self.downtime_ms,
            "dump_ms": self.dump_ms,
            "transfer_ms": self.transfer_ms,
            "restore_ms": self.restore_ms,
            "total_migration_ms": self.total_migration_ms,
            "flow_moved_after_resume_ms": self.flow_moved_after_resume_ms,
            "announce_to_ack_ms": self.announce_to_ack_ms,
            "service_downtime_ms": self.service_gap.map(|g| g.ms),
            "last_answer_before_pre_dump_ms": self.service_gap.map(|g| g.last_answer_before_pre_dump_ms),
            "first_answer_after_post_resume_ms": self.service_gap.map(|g| g.first_answer_after_post_resume_ms),
            "disruption_ms": self.disruption_ms,
            "excess_wait_ms": self.excess_wait_ms,
            "long_gaps_ms": self.long_gaps_ms,
            "disruption_at_request": self.disruption_at,
            "disruption_over_downtime": self.ratio(),
            "median_service_ms": self.median_service_ms,
            "max_service_ms": self.max_service_ms,
            "image_bytes": self.image_bytes,
            "client": {
                "lost_packets": self.lost_packets(),
                "pto_count": self.pto_count(),
                "loss_detected": self.summary_u64("loss_detected"),
                "congestion_events": self.summary_u64("congestion_events"),
                "tcp_retransmits": self.tcp_retransmits(),
                "losses_after_pre_dump": self.declared_losses.iter()
                    .map(|l| json!({"at_ms": l.at_ms, "packets": l.packets}))
                    .collect::<Vec<_>>(),
            },
            "frames": {
                "source": self.src_frames.as_ref().map(Frames::to_json),
                "destination": self.dst_frames.as_ref().map(Frames::to_json),
            },
            "criu_actions": {
                "dump": phases(&self.src_phases),
                "restore": phases(&self.dst_phases),
            },
            "lock_tables_removed": self.lock_tables_removed,
            "delay_line": delay_line,
            "tcp_freeze_hit": self.freeze_hit.map(stats::FreezeHit::name),
            "service_socket_drops": self.service_socket_drops,
        });
        if self.protocol == Protocol::TcpDns {
            // The DNS client's counts and times (ms since it started).
            for key in [
                "dns_queries",
                "reconnects",
                "broke_at_ms",
                "record_age_at_break_ms",
                "reconnected_at_ms",
            ] {
                doc["client"][key] = json!(self.summary_u64(key));
            }
        }
        doc
    }

    /// A few human lines.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} steering {}: {} of {} requests answered, {} lost; downtime {:.0} ms (dump {:.0}, transfer {:.0}, restore {:.0}); \
             client-perceived disruption {:.0} ms ({:.2} x downtime); median service time {:.2} ms",
            self.protocol.name(),
            if self.steering { "on " } else { "off" },
            self.answered,
            self.requests,
            self.lost,
            self.downtime_ms,
            self.dump_ms,
            self.transfer_ms,
            self.restore_ms,
            self.disruption_ms,
            self.ratio(),
            self.median_service_ms,
        );
        if let Some(g) = self.service_gap {
            s.push_str(&format!(
                "\n               server side: no answer for {:.0} ms (last {:.0} ms before pre-dump, first {:.0} ms after post-resume)",
                g.ms, g.last_answer_before_pre_dump_ms, g.first_answer_after_post_resume_ms
            ));
        }
        match (&self.src_frames, &self.dst_frames) {
            (Some(src), Some(dst)) => s.push_str(&format!(
                "\n               frames: source parked {} forwarded {} replayed {}; destination parked {} replayed {} (waited {} times for the service to read); dropped or overflowed {}",
                src.parked,
                src.forwarded,
                src.replayed,
                dst.parked,
                dst.replayed,
                dst.socket_waits,
                src.overflow + dst.overflow + src.replay_failed + dst.replay_failed + src.dropped + dst.dropped
            )),
            _ => s.push_str("\n               frames: no agents (CRIU's network lock only)"),
        }
        if let Some(drops) = self.service_socket_drops {
            s.push_str(&format!(
                "\n               service's UDP socket: {drops} datagrams dropped (receive buffer full)"
            ));
        }
        match self.protocol {
            Protocol::Quic | Protocol::QuicSameIp => {
                s.push_str(&format!(
                    "\n               client QUIC stack: {} packets declared lost, {} probe timeouts; last response from {}",
                    self.lost_packets().map_or("?".into(), |v| v.to_string()),
                    self.pto_count().map_or("?".into(), |v| v.to_string()),
                    self.final_server
                ));
                for l in &self.declared_losses {
                    s.push_str(&format!(
                        "\n               packets {} declared lost {:.1} ms after pre-dump",
                        l.packets, l.at_ms
                    ));
                }
            }
            Protocol::TcpDns => s.push_str(&format!(
                "\n               client DNS: connection broke at {} ms with a {} ms old record, connected again at {} ms ({} queries); last response from {}",
                self.summary_u64("broke_at_ms").map_or("?".into(), |v| v.to_string()),
                self.summary_u64("record_age_at_break_ms").map_or("?".into(), |v| v.to_string()),
                self.summary_u64("reconnected_at_ms").map_or("?".into(), |v| v.to_string()),
                self.summary_u64("dns_queries").map_or("?".into(), |v| v.to_string()),
                self.final_server
            )),
            Protocol::Tcp => s.push_str(&format!(
                "\n               client TCP: {} segments retransmitted by the kernel{}",
                self.tcp_retransmits().map_or("?".into(), |v| v.to_string()),
                self.freeze_hit
                    .map_or(String::new(), |h| format!("; the freeze hit the {}", h.name())),
            )),
            Protocol::Udp => s.push_str(&format!(
                "\n               client UDP: {} requests given up after the timeout, {} late echoes",
                self.summary_u64("timed_out").map_or("?".into(), |v| v.to_string()),
                self.summary_u64("late").map_or("?".into(), |v| v.to_string()),
            )),
        }
        s
    }
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn file_has(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

/// Runs one migration and returns its measurements. Everything it created
/// is gone when it returns, also when it fails.
pub fn run(bins: &Bins, cfg: &RunConfig) -> Result<Run> {
    super::check_environment()?;
    become_subreaper()?;
    let say = |line: String| {
        if cfg.verbose {
            println!("[testbed] {line}");
        }
    };
    let quic = matches!(cfg.protocol, Protocol::Quic | Protocol::QuicSameIp);
    let tcp_dns = cfg.protocol == Protocol::TcpDns;
    let udp = cfg.protocol == Protocol::Udp;
    // The service keeps its address; the route to it moves at the restore.
    let same_ip = matches!(
        cfg.protocol,
        Protocol::QuicSameIp | Protocol::Tcp | Protocol::Udp
    );
    if tcp_dns && cfg.steering {
        bail!("the TCP+DNS baseline runs without steering");
    }
    // Under a container runtime (runc, podman).
    let container = cfg.runtime != Runtime::Criu;
    if container && tcp_dns {
        bail!("the TCP+DNS baseline runs without containers");
    }
    if container && cfg.technique != Technique::Cold {
        bail!("under a container runtime the testbed runs cold migrations only");
    }
    let label = cfg.label();
    let mut dir = WorkDir::new(&cfg.work_base, &label)?;
    dir.keep = cfg.keep_files;
    let d = dir.path.clone();
    let topo = Topology::build(cfg.preset)?;
    say(format!(
        "topology up ({} preset): {}",
        cfg.preset.name(),
        topo.names().join(", ")
    ));
    // The addresses the client reaches the service at, before and after.
    let (old, new) = if same_ip {
        let same = format!("{SAME_IP}:{}", if quic { PORT } else { TCP_PORT });
        for ct in [&topo.src_ct, &topo.dst_ct] {
            ct.ip(&["addr", "add", &format!("{SAME_IP}/32"), "dev", "eth0"])?;
        }
        (same.clone(), same)
    } else if quic {
        (format!("{SRC_CT_IP}:{PORT}"), format!("{DST_CT_IP}:{PORT}"))
    } else {
        (
            format!("{SRC_CT_IP}:{TCP_PORT}"),
            format!("{DST_CT_IP}:{TCP_PORT}"),
        )
    };

    let (src_phases_file, dst_phases_file) = (d.join("phases-src"), d.join("phases-dst"));
    let (src_hook, dst_hook) = (d.join("hook-src.sh"), d.join("hook-dst.sh"));
    let mut registration = None;
    let agents = if cfg.steering {
        let mode = cfg.agent_xdp_mode.as_str();
        let src = Agent::start(bins, &topo.src, SRC_UPLINK, mode, &d, "src")?;
        let dst = Agent::start(bins, &topo.dst, DST_UPLINK, mode, &d, "dst")?;
        let mac = topo.router_mac_to_src()?;
        let base = &["service", "add", "--id", "1", "--name", SERVICE][..];
        let forward = ["--forward-iface", SRC_UPLINK, "--next-hop-mac", &mac];
        let quic_rule = ["--server-id", SERVER_ID, "--cid", "8,1,2", "--quic-grease"];
        // How the service's packets are recognised, and where they go once
        // it has left the source: the same address at its new node, or the
        // new address.
        let (rule, rule_extra): (&str, &[&str]) = if quic {
            ("--quic", &quic_rule)
        } else if udp {
            ("--udp", &[])
        } else {
            ("--tcp", &[])
        };
        let moved: [&str; 2] = if same_ip {
            ["--forward-mode", "same-ip"]
        } else {
            ["--forward-to", &new]
        };
        let owned = |args: Vec<&str>| args.into_iter().map(String::from).collect::<Vec<_>>();
        let src_args = owned([base, &[rule, &old], rule_extra, &moved, &forward].concat());
        let dst_args = owned([base, &[rule, &new], rule_extra].concat());
        if cfg.registered {
            // Registered once the service runs: a container is known by
            // its id (podman makes it up).
            registration = Some((src_args, dst_args));
        } else {
            say("migr-agent on both edge nodes, no service registered".into());
        }
        Some((src, dst))
    } else {
        None
    };
    // The agents that know the service (all of them unless it is unregistered).
    let managed = agents.as_ref().filter(|_| cfg.registered);

    // The service, in the source container.
    let files = Files::new(cfg.runtime, &d)?;
    let cert = files.host.join("cert.der");
    let ctl_file = files.host.join("server.ctl");
    let server_log = files.host.join("server.log");
    let server_err = files.host.join("server.err");
    let mut server_cmd;
    if quic {
        server_cmd = Command::new(&bins.echo);
        server_cmd
            .arg("server")
            // At the same IP, the service's own address: a wildcard socket
            // would answer from the container's first address, which a
            // QUIC client drops.
            .args([
                "--listen",
                &if same_ip {
                    old.clone()
                } else {
                    format!("0.0.0.0:{PORT}")
                },
            ])
            .arg("--cert-out")
            .arg(files.inside.join("cert.der"))
            .args([
                "--server-id",
                SERVER_ID,
                "--cid-len",
                "8",
                "--cid-offset",
                "1",
            ])
            .args(["--server-id-len", "2"])
            .arg("--control-file")
            .arg(files.inside.join("server.ctl"));
        if cfg.strategy == "poa" {
            server_cmd.args(["--pool", &pool(&new, cfg.pool_size)]);
        }
        server_cmd.args(["--ballast-mb", &cfg.ballast_mb.to_string()]);
    } else {
        server_cmd = Command::new(&bins.testbed);
        // TCP+DNS: the wildcard address, which the restored listener keeps
        // at the destination's new IP.
        let listen = if tcp_dns {
            format!("0.0.0.0:{TCP_PORT}")
        } else {
            old.clone()
        };
        let server = if udp { "udp-server" } else { "tcp-server" };
        server_cmd.args([server, "--listen", &listen]);
        server_cmd.args(["--ballast-mb", &cfg.ballast_mb.to_string()]);
    }
    let program = std::path::PathBuf::from(server_cmd.get_program());
    let args: Vec<String> = server_cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let placement = Placement::new(
        cfg.runtime,
        &d,
        &program,
        &args,
        &files,
        (&topo.src_ct, &src_hook),
        (&topo.dst_ct, &dst_hook),
    )?;
    let mut server = placement.start(server_cmd, &topo.src_ct, &files)?;
    wait_until(Duration::from_secs(20), "the server to listen", || {
        if let Some(status) = server.exited() {
            bail!(
                "the server exited ({status}): {}",
                std::fs::read_to_string(&server_err).unwrap_or_default()
            );
        }
        Ok(file_has(&server_log, "listening") && (!quic || cert.exists()))
    })?;
    if let (Some((src, dst)), Some((mut src_args, mut dst_args))) = (&agents, registration) {
        if let Some(id) = server.container_id()? {
            for args in [&mut src_args, &mut dst_args] {
                args.extend(["--container".to_string(), id.clone()]);
            }
        }
        for (agent, args) in [(src, &src_args), (dst, &dst_args)] {
            agent.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        src.phase(SERVICE, "prepare", &[])?;
        dst.phase(SERVICE, "prepare", &[])?;
        say("migr-agent on both edge nodes (XDP on s-r and d-r), service prepared".into());
    }
    let server_pid = server.pid();
    // CRIU's action scripts. On pre-dump, the last moment the service still
    // runs, the source's script has the QUIC server announce the destination
    // address and waits for the client's acknowledgement (seed 000, step 4:
    // the container moves only after it), so that the client leaves the old
    // address as late as possible; then the agent freezes.
    let announce = (cfg.protocol == Protocol::Quic && cfg.strategy != "poa").then(|| {
        format!(
            "printf 'announce {new}\\n' > '{ctl}' && kill -USR1 {server_pid}\n\
             i=0\n\
             until grep -q migration-acknowledged '{log}'; do\n\
             \x20 i=$((i+1)); if [ $i -gt 5000 ]; then echo 'migr testbed: no acknowledgement' >&2; break; fi\n\
             \x20 sleep 0.001\n\
             done\n\
             echo \"acknowledged $(date +%s.%N)\" >> '{phases}'",
            ctl = ctl_file.display(),
            log = server_log.display(),
            phases = src_phases_file.display(),
        )
    });
    let (src_then, dst_then) = match &agents {
        // Under a runtime the hook finds the service by container.
        Some((src, dst)) => (
            Some(src.hook_command((!container).then_some(SERVICE))),
            Some(dst.hook_command((!container).then_some(SERVICE))),
        ),
        None => {
            let nowhere = d.join("no-agent.sock");
            let idle = hook_command(&bins.ctl, &nowhere, (!container).then_some(SERVICE));
            (Some(idle.clone()), Some(idle))
        }
    };
    write_hook(
        &src_hook,
        &src_phases_file,
        announce.as_deref(),
        src_then.as_deref(),
    )?;
    write_hook(&dst_hook, &dst_phases_file, None, dst_then.as_deref())?;

    // TCP+DNS: the name server, in the router, on its client-side address.
    let dns_server = if tcp_dns {
        let server = dns::DnsServer::start(
            &topo.router,
            ROUTER_CLIENT_IP.parse()?,
            cfg.dns_ttl_s,
            SRC_CT_IP,
            &d,
        )?;
        let name = dns::NAME;
        let log = d.join("dnsmasq.log");
        let hosts = d.join("dns-hosts").display().to_string();
        wait_until(
            Duration::from_secs(10),
            "dnsmasq to read its hosts file",
            || Ok(file_has(&log, &format!("read {hosts}"))),
        )?;
        say(format!(
            "dnsmasq (PID {}) on {}: {name} A {SRC_CT_IP}, TTL {} s",
            server.pid(),
            server.listen,
            cfg.dns_ttl_s
        ));
        Some(server)
    } else {
        None
    };

    // The client.
    let csv = d.join("client.csv");
    let client_err = d.join("client.err");
    let mut client_cmd;
    if quic {
        client_cmd = Command::new(&bins.echo);
        client_cmd
            .arg("client")
            .args(["--server", &old])
            .arg("--ca")
            .arg(&cert);
        if cfg.client_probing == "plain" {
            client_cmd.arg("--plain");
        } else {
            client_cmd
                .args(["--strategy", &cfg.strategy])
                .args(["--probing", &cfg.client_probing]);
        }
        match cfg.mode {
            Mode::BackToBack => client_cmd.args(["--mode", "back-to-back"]),
            Mode::Sporadic { period_ms } => {
                client_cmd.args(["--mode", "sporadic", "--period-ms", &period_ms.to_string()])
            }
        };
    } else if tcp_dns {
        client_cmd = Command::new(&bins.testbed);
        client_cmd
            .args(["dns-client", "--dns"])
            .arg(
                dns_server
                    .as_ref()
                    .expect("a DNS server")
                    .listen
                    .to_string(),
            )
            .args(["--name", dns::NAME, "--port", &TCP_PORT.to_string()])
            .arg("--stop-file")
            .arg(d.join("client.stop"))
            .args(["--size", &cfg.request_bytes.to_string()]);
    } else {
        if cfg.mode != Mode::BackToBack {
            bail!("the TCP and UDP workloads are back to back only");
        }
        client_cmd = Command::new(&bins.testbed);
        let client = if udp { "udp-client" } else { "tcp-client" };
        client_cmd
            .args([client, "--server", &old, "--stop-file"])
            .arg(d.join("client.stop"))
            .args(["--size", &cfg.request_bytes.to_string()]);
        if udp {
            client_cmd.args(["--timeout-ms", &cfg.udp_timeout_ms.to_string()]);
        } else if cfg.request_bytes >= BULK_BYTES {
            client_cmd.arg("--watch-send-queue");
        }
    }
    client_cmd
        .args(["--count", &cfg.requests.to_string()])
        .arg("--csv")
        .arg(&csv);
    let mut client = Proc::spawn(
        "the client",
        &mut client_cmd,
        Spawn {
            netns: Some(topo.client.name()),
            setsid: false,
            stdout: None,
            stderr: Some(&client_err),
        },
    )?;
    wait_until(
        Duration::from_secs(120),
        "requests before the migration",
        || {
            if let Some(status) = client.try_exit() {
                bail!(
                    "the client exited early ({status}): {}",
                    std::fs::read_to_string(&client_err).unwrap_or_default()
                );
            }
            // Counting rows reads the file: not every millisecond.
            std::thread::sleep(Duration::from_millis(4));
            Ok(stats::rows_so_far(&csv) >= cfg.migrate_after)
        },
    )?;
    say(format!(
        "{} requests answered by the source container; migrating (cold, CRIU)",
        cfg.migrate_after
    ));

    // The migration.
    if let Some((_, dst)) = managed {
        dst.phase(SERVICE, "restoring", &[])?;
    }
    // TCP+DNS: the connection cannot survive the new IP; CRIU dumps it and
    // restores it closed (the listener is restored as it was).
    let criu_extra: &[&str] = if quic || udp {
        &[]
    } else if tcp_dns {
        &["--tcp-close"]
    } else {
        &["--tcp-established"]
    };
    let t_start = now_s();
    let images = d.join("images-src");
    let dump_seconds = placement.dump(
        bins,
        &mut server,
        &topo.src_ct,
        &images,
        &src_hook,
        &d.join("dump.log"),
        criu_extra,
    )?;
    if announce.is_some() && !file_has(&server_log, "migration-acknowledged") {
        bail!(
            "the client did not acknowledge the announcement:\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default()
        );
    }
    let t_transfer = Instant::now();
    let images_dst = d.join("images-dst");
    // Over the links, through the router: the presets shape it.
    transfer::copy_over_network(&topo.src, &topo.dst, DST_NODE_IP, &images, &images_dst)
        .context("moving the images from the source node to the destination node")?;
    let transfer_ms = t_transfer.elapsed().as_secs_f64() * 1e3;
    wait_until(Duration::from_secs(5), "the dumped PID to be free", || {
        Ok(pid_free(server_pid))
    })?;
    let mut restore_extra = criu_extra.to_vec();
    let mut lazy = None;
    if cfg.technique == Technique::PostCopyLocal {
        let mut cmd = Command::new(&bins.criu);
        cmd.arg("lazy-pages")
            .arg("-D")
            .arg(&images_dst)
            .args(["-v4", "-o"])
            .arg(d.join("lazy-pages.log"));
        lazy = Some(Proc::spawn(
            "criu lazy-pages",
            &mut cmd,
            Spawn {
                stderr: Some(&d.join("lazy-pages.err")),
                ..Spawn::default()
            },
        )?);
        let socket = images_dst.join("lazy-pages.socket");
        wait_until(Duration::from_secs(10), "the lazy-pages daemon", || {
            Ok(socket.exists())
        })?;
        restore_extra.push("--lazy-pages");
    }
    // Once the restored service runs (CRIU's post-resume; runc returns
    // some tens of ms later) the orchestration moves the flow and tells the
    // source's agent.
    let mut t_forward = now_s();
    let mut resumed = || -> Result<()> {
        if let Some(server) = &dns_server {
            // The orchestration updates the service's record.
            server.update(DST_CT_IP)?;
        } else if same_ip {
            // COAT's flow update: the service's IP is reachable at the
            // destination node from now on.
            topo.move_same_ip(true)?;
        }
        t_forward = now_s();
        if let Some((src, _)) = managed {
            src.phase(SERVICE, "restored", &[])?;
            t_forward = now_s();
        }
        Ok(())
    };
    let (restore_seconds, mut restored) = placement.restore(
        bins,
        &images_dst,
        &topo.dst_ct,
        (&dst_hook, &dst_phases_file),
        &d.join("restore.log"),
        &restore_extra,
        &mut resumed,
    )?;
    let restored_pid = restored.pid();
    let mut lock_tables_removed = criu::remove_lock_tables(&topo.src_ct)?;
    lock_tables_removed.extend(criu::remove_lock_tables(&topo.dst_ct)?);
    say(format!(
        "dumped in {:.0} ms, copied in {transfer_ms:.0} ms, restored in {:.0} ms into the destination container (PID {restored_pid})",
        dump_seconds * 1e3,
        restore_seconds * 1e3
    ));

    // The rest of the requests, then the numbers.
    if let Some(ms) = cfg.stop_after_restore_ms {
        // UDP: long enough for a request given up during the downtime to
        // time out and the next one to be answered (that wait is the gap).
        let ms = if udp {
            ms.max(cfg.udp_timeout_ms + 1000)
        } else {
            ms
        };
        std::thread::sleep(Duration::from_millis(ms));
        // The connection's TCP state on both ends, for the record.
        for (ns, name) in [
            (&topo.client, "ss-client"),
            (&topo.dst_ct, "ss-dst-container"),
        ] {
            if let Ok(text) = ns.exec(&["ss", "-tinoe"]) {
                let _ = std::fs::write(d.join(name), text);
            }
            if let Ok(text) = ns.exec(&["cat", "/proc/net/netstat"]) {
                let _ = std::fs::write(d.join(format!("{name}.netstat")), text);
            }
        }
        std::fs::write(d.join("client.stop"), b"")?;
    }
    // Wait for the client; post-copy: note when the lazy-pages daemon,
    // which exits once it served every page, is done.
    let mut lazy_done = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let client_status = loop {
        if lazy_done.is_none()
            && let Some(p) = lazy.as_mut()
            && p.try_exit().is_some()
        {
            lazy_done = Some(now_s());
        }
        if let Some(status) = client.try_exit() {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the client did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if let Some(p) = lazy.as_mut()
        && lazy_done.is_none()
    {
        p.wait_exit(Duration::from_secs(60))?;
        lazy_done = Some(now_s());
    }
    if let Some((src, _)) = managed {
        src.phase(SERVICE, "done", &["--drain-ms", "100"])?;
    }
    let requests_detail = stats::read_requests(&csv)?;
    let client_summary = stats::client_summary(&client_err);
    let client_error = (!client_status.success()).then(|| {
        std::fs::read_to_string(&client_err)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("rror") || l.contains("request"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    let (src_frames, dst_frames) = match managed {
        Some((src, dst)) => (
            Some(Frames::from_stats(&src.service(SERVICE)?)),
            Some(Frames::from_stats(&dst.service(SERVICE)?)),
        ),
        None => (None, None),
    };
    let src_phases = read_phases(&src_phases_file);
    let dst_phases = read_phases(&dst_phases_file);
    let pre_dump = phase_time(&src_phases, "pre-dump").context("no pre-dump action recorded")?;
    let post_dump = phase_time(&src_phases, "post-dump").context("no post-dump action recorded")?;
    let pre_restore =
        phase_time(&dst_phases, "pre-restore").context("no pre-restore action recorded")?;
    let post_resume =
        phase_time(&dst_phases, "post-resume").context("no post-resume action recorded")?;
    let acknowledged = phase_time(&src_phases, "acknowledged").unwrap_or(pre_dump);
    // The moment the service's network stops: CRIU's network lock.
    let client_log = std::fs::read_to_string(&client_err).unwrap_or_default();
    let freeze_hit = stats::FreezeHit::classify(
        &client_log,
        phase_time(&src_phases, "network-lock").unwrap_or(pre_dump),
    );
    let declared_losses = stats::declared_losses(&client_log, pre_dump);
    let (disruption_ms, disruption_at) = stats::disruption(&requests_detail);
    let (excess_wait_ms, long_gaps_ms) = stats::excess_and_long_gaps(&requests_detail);
    // What the client sent (its summary says when it stopped early).
    let requests = client_summary
        .get("requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.requests);
    let mut run = Run {
        label,
        protocol: cfg.protocol,
        steering: cfg.steering,
        strategy: cfg.strategy.clone(),
        client_probing: cfg.client_probing.clone(),
        preset: cfg.preset,
        mode: cfg.mode,
        technique: cfg.technique,
        ballast_mb: cfg.ballast_mb,
        requests,
        answered: requests_detail.len(),
        lost: requests.saturating_sub(requests_detail.len()),
        client_ok: client_status.success(),
        client_error,
        final_server: requests_detail
            .last()
            .map(|r| r.server.clone())
            .unwrap_or_default(),
        downtime_ms: (post_resume - pre_dump) * 1e3,
        dump_ms: (post_dump - pre_dump) * 1e3,
        transfer_ms,
        restore_ms: (post_resume - pre_restore) * 1e3,
        total_migration_ms: (t_forward.max(post_resume) - t_start) * 1e3,
        flow_moved_after_resume_ms: (t_forward - post_resume) * 1e3,
        announce_to_ack_ms: (acknowledged - pre_dump) * 1e3,
        service_gap: ServiceGap::from_log(&server_log, pre_dump, post_resume),
        disruption_ms,
        disruption_at,
        excess_wait_ms,
        long_gaps_ms,
        median_service_ms: stats::median_service(&requests_detail),
        max_service_ms: requests_detail
            .iter()
            .map(|r| r.service_ms)
            .fold(0.0, f64::max),
        after_migration_service_ms: match cfg.mode {
            Mode::Sporadic { .. } => requests_detail
                .iter()
                .find(|r| r.index == cfg.migrate_after)
                .map(|r| r.service_ms),
            Mode::BackToBack => None,
        },
        image_bytes: dir_bytes(&images),
        lazy_pages_ms: lazy_done.map(|t| (t - post_resume) * 1e3),
        client_summary,
        src_frames,
        dst_frames,
        src_phases,
        dst_phases,
        lock_tables_removed,
        delay_line: topo.delay_stats(),
        freeze_hit,
        declared_losses,
        service_socket_drops: None,
        requests_detail,
        work_dir: d.clone(),
    };
    // The containers' IP/UDP/TCP counters (checksum errors, drops), for
    // the record in the work directory; a service socket's drops, in the run.
    for (ns, name, service_side) in [
        (&topo.src_ct, "snmp-src-container", true),
        (&topo.dst_ct, "snmp-dst-container", true),
        (&topo.client, "snmp-client", false),
    ] {
        let text = ns.exec(&["cat", "/proc/net/snmp"])?;
        if service_side {
            let drops = stats::udp_rcvbuf_errors(&text)
                .with_context(|| format!("no Udp RcvbufErrors in {name}"))?;
            *run.service_socket_drops.get_or_insert(0) += drops;
        }
        let _ = std::fs::write(d.join(name), text);
    }
    // Teardown, in order: the restored service, the agents, the namespaces.
    restored.kill();
    drop(dns_server);
    drop(agents);
    drop(topo);
    Ok(run)
}

/// The PoA pool: `new`, then `size - 1` addresses next to it that nobody answers at.
fn pool(new: &str, size: usize) -> String {
    let mut addrs = vec![new.to_string()];
    if let Some((ip, port)) = new.rsplit_once(':')
        && let Ok(ip) = ip.parse::<std::net::Ipv4Addr>()
    {
        let [a, b, c, d] = ip.octets();
        for i in 1..size {
            addrs.push(format!("{a}.{b}.{c}.{}:{port}", d.wrapping_add(i as u8)));
        }
    }
    addrs.join(",")
}

#[cfg(test)]
mod tests {
    use super::pool;

    #[test]
    fn the_pool_is_the_new_address_then_silent_neighbours() {
        assert_eq!(pool("10.60.12.2:4433", 1), "10.60.12.2:4433");
        assert_eq!(
            pool("10.60.12.2:4433", 3),
            "10.60.12.2:4433,10.60.12.3:4433,10.60.12.4:4433"
        );
    }
}
