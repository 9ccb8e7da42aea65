//! What a run measured ([`Run`]), with the agents' frame counters and the
//! service's own pause, and how it is written down: the JSON record and the
//! human summary. Apart from the run because reports read these values
//! long after the namespaces are gone.

use std::path::PathBuf;

use migr_control::api::ServiceStatus;
use migr_quic::service_gaps::Gap;
use serde_json::{Value, json};

use super::{Mode, Protocol, Technique};
use crate::{
    delay::DelayStats,
    stats::{self, Request},
    topology::Preset,
};

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
    /// A service's counts from its status as the agent reports it, read
    /// through the control protocol's own type: a changed format is an error
    /// here, never a count of 0.
    pub fn from_status(svc: &Value) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let st: ServiceStatus =
            serde_json::from_value(svc.clone()).context("reading the agent's service status")?;
        let v = |k: &str| {
            st.verdicts
                .get(k)
                .map(|c| c.packets)
                .with_context(|| format!("no verdict {k} in the service status"))
        };
        Ok(Self {
            passed: v("pass")?,
            parked: v("park")?,
            forwarded: v("forward")?,
            dropped: v("drop")?,
            park_failed: v("park_failed")?,
            forward_failed: v("forward_failed")?,
            replayed: st.replay.replayed_frames,
            overflow: st.parked.overflow_frames,
            replay_failed: st.replay.failed_frames,
            socket_waits: st.replay.socket_waits,
            socket_drops: st.replay.socket_drops,
        })
    }

    /// Frames the datapath or the agent lost: dropped, overflowed, or
    /// failed to park, forward or replay.
    pub fn lost(&self) -> u64 {
        self.overflow + self.replay_failed + self.park_failed + self.forward_failed + self.dropped
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
    /// The longest `answer-gap` in `log` that overlaps the migration
    /// (pre-dump to post-resume, wall-clock seconds): the freeze. (A shorter
    /// one, e.g. the announcement's round trip before it, is not; a later
    /// pause, e.g. a client waiting out its timeout after the restore, is the
    /// client's.)
    pub fn from_log(log: &std::path::Path, pre_dump: f64, post_resume: f64) -> Option<Self> {
        let text = std::fs::read_to_string(log).ok()?;
        let gap = text
            .lines()
            .filter_map(Gap::parse)
            .filter(|g| g.from_s <= post_resume && g.to_s >= pre_dump)
            .max_by(|a, b| a.ms().total_cmp(&b.ms()))?;
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
    /// The final dump's images (not its parent's).
    pub image_bytes: u64,
    /// Pre-copy and hybrid: each `criu pre-dump` iteration.
    pub pre_dump_rounds: Vec<super::PreDumpRound>,
    /// QUIC, pre-copy and hybrid: the server's pauses in answering during
    /// the pre-dumps (over 20 ms; empty: it answered throughout).
    pub pre_copy_answer_gaps_ms: Option<Vec<f64>>,
    /// Steering on, pre-copy and hybrid: the source datapath's state right
    /// after the pre-dumps (`pass`: migr starts parking at the final dump).
    pub src_datapath_after_pre_copy: Option<String>,
    /// Post-copy: from post-resume until the lazy-pages daemon had served
    /// every page and exited.
    pub lazy_pages_ms: Option<f64>,
    pub client_summary: std::collections::BTreeMap<String, String>,
    pub src_frames: Option<Frames>,
    pub dst_frames: Option<Frames>,
    pub src_phases: Vec<(String, f64)>,
    pub dst_phases: Vec<(String, f64)>,
    pub lock_tables_removed: Vec<String>,
    /// The delay lines' account (latency preset only); frames they failed
    /// to pass on: 0 is the only good value.
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
            "pre_dumps": self.pre_dump_rounds.iter().map(|r| json!({
                "dump_ms": r.dump_ms, "transfer_ms": r.transfer_ms, "bytes": r.bytes,
            })).collect::<Vec<_>>(),
            "pre_copy_answer_gaps_ms": self.pre_copy_answer_gaps_ms,
            "src_datapath_after_pre_copy": self.src_datapath_after_pre_copy,
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
