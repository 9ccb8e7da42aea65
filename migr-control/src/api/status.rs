//! The agent's answers: a service's status, the agent's statistics, and a
//! phase change's result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ServiceSpec;
use crate::phase::{Role, TimelineEntry};

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The parked-frame store of one service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedStats {
    /// Stored and not replayed yet.
    pub pending_frames: u64,
    pub pending_bytes: u64,
    /// Stored since the service was added.
    pub stored_frames: u64,
    pub stored_bytes: u64,
    /// Dropped because the store was at its limit.
    pub overflow_frames: u64,
    pub overflow_bytes: u64,
    /// Stored frames whose UDP/TCP checksum the sender had left to offload
    /// (partial): completed before replay, or the receiver would drop them.
    #[serde(default)]
    pub checksums_completed: u64,
    /// Stored frames whose checksum is wrong and not partial: replayed as
    /// they are (their receiver drops them, as it would have anyway).
    #[serde(default)]
    pub checksums_bad: u64,
    /// Writes to the store that failed (a full filesystem, say); their
    /// frames stayed in the park ring and were stored when a retry worked.
    #[serde(default)]
    pub store_failures: u64,
    pub limit_frames: u64,
    pub limit_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayStats {
    pub replayed_frames: u64,
    pub replayed_bytes: u64,
    /// Frames BPF_PROG_TEST_RUN refused (e.g. larger than a page); dropped.
    pub failed_frames: u64,
    /// Replays started (one per restored/abort).
    pub replays: u64,
    /// The last completed backlog replay.
    pub last_frames: u64,
    pub last_duration_us: u64,
    /// Frames per second of the last backlog replay.
    pub last_rate_fps: f64,
    /// Frames whose replay may not have happened: the agent was killed
    /// between marking and replaying them (at most one per kill).
    pub uncertain_frames: u64,
    /// Datagrams the service's UDP sockets dropped (receive buffer full)
    /// while frames were replayed into them: read from their namespace's
    /// `/proc/PID/net/udp` when CRIU named the restored process
    /// (`migr_user::socket_room`). Replayed, then lost at the socket.
    #[serde(default)]
    pub socket_drops: u64,
    /// Times a local replay waited for the service to read its socket.
    #[serde(default)]
    pub socket_waits: u64,
    /// Replay batches that failed part-way and were tried again after a
    /// backoff (a frame is given up, and counted in `failed_frames`, only
    /// after five failures in a row).
    #[serde(default)]
    pub retries: u64,
}

/// Everything about one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub spec: ServiceSpec,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `backlog`, `settling` or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_stage: Option<String>,
    /// What the datapath does now: pass, park, forward (+hold).
    pub datapath: String,
    /// Verdict counters of the XDP program, by verdict name.
    pub verdicts: BTreeMap<String, Count>,
    pub parked: ParkedStats,
    pub replay: ReplayStats,
    /// For a service with a forward target: its egress interface's state,
    /// `up`, `no-carrier` (the link or its peer is down), `down` (set down
    /// here) or `missing` (gone, or re-created since the service was added).
    /// Only `up` delivers what the datapath forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_link: Option<String>,
    /// How its FORWARDs leave this node: `xdp` or `tc` (see docs/datapath.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_path: Option<String>,
    /// Microseconds from receiving the last phase command to the datapath update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_phase_latency_us: Option<u64>,
    pub timeline: Vec<TimelineEntry>,
    /// Why the service is switched off (it passes) although it is
    /// registered: its entries could not be installed after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The service's last migration on this node, once one has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_migration: Option<super::MigrationRecord>,
}

/// `stats`' result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub agent: AgentInfo,
    /// Global reason counters of the XDP program.
    pub reasons: BTreeMap<String, u64>,
    /// Packets the XDP program saw, per protocol class (all services and none).
    pub protocols: BTreeMap<String, u64>,
    pub services: Vec<ServiceStatus>,
    /// Histograms of the migrations that ended since the agent started.
    #[serde(default)]
    pub migrations: super::MigrationStats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub protocol: u32,
    pub interfaces: Vec<String>,
    pub pin_dir: String,
    pub uptime_s: u64,
    /// Records in the park ring that the agent has not consumed.
    pub ring_backlog_bytes: u64,
    /// Parked records of services this agent does not know (consumed and dropped).
    pub unknown_service_records: u64,
    /// MPTCP subflows learned from MP_JOINs that arrived before their token.
    #[serde(default)]
    pub late_joins_learned: u64,
    /// MPTCP key reports whose token was not learned: their client address
    /// was over its quota (256 at once, then 64 a second).
    #[serde(default)]
    pub tokens_refused: u64,
    /// What the agent could not recover when it started: saved services it
    /// could not read back (their datapath entries are off, so their frames
    /// pass), or a saved state it could not read at all (set aside).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_problems: Vec<String>,
    /// Bytes of parked frames stored and not replayed yet, all services.
    #[serde(default)]
    pub park_pending_bytes: u64,
    /// The bound of `park_pending_bytes` (`--park-max-total-bytes`).
    #[serde(default)]
    pub park_max_total_bytes: u64,
    /// Frames the XDP program passed unclassified because the full
    /// classifier it tail-calls was missing (counted since this load; any
    /// but 0 is a fault of the agent that loaded the datapath).
    #[serde(default)]
    pub full_path_missed: u64,
}

/// `phase`' and `criu`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    pub service: String,
    pub from: String,
    pub to: String,
    pub unchanged: bool,
    pub datapath: String,
    /// Microseconds from receiving the request to the datapath update.
    pub latency_us: u64,
    /// For `criu`: the phase the action mapped to, or why nothing happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `health`' result, which `/readyz` serves: the agent is ready when every
/// check is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub ready: bool,
    pub checks: Vec<HealthCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `attached`, `maps_pinned`, `ring_drained` or `services`.
    pub name: String,
    pub ok: bool,
    /// What was found, for a person.
    pub detail: String,
}

impl Health {
    pub fn from_checks(checks: Vec<HealthCheck>) -> Self {
        Self {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}
