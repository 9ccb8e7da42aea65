//! What the agent reports: one service's status, and the whole agent's
//! statistics (`migrctl status`, /metrics).

use migr_common::maps::{ProtoClass, Reason, Verdict};
use migr_control::api::{self, AgentInfo, ApiError, Count, ParkedStats, ServiceStatus, Stats};

use super::{Engine, datapath_err, links::forward_link, service::describe};

impl Engine {
    pub(super) fn status_of(&self, id: u32) -> Result<ServiceStatus, ApiError> {
        let svc = &self.services[&id];
        let counters = self.dp.service_counters(id).map_err(datapath_err)?;
        let verdicts = Verdict::ALL
            .iter()
            .map(|v| {
                (
                    v.name().to_string(),
                    Count {
                        packets: counters.packets[*v as usize],
                        bytes: counters.bytes[*v as usize],
                    },
                )
            })
            .collect();
        Ok(ServiceStatus {
            spec: svc.spec.clone(),
            state: svc.machine.state.name().into(),
            role: svc.machine.role,
            replay_stage: svc.machine.replay.map(|r| r.name().to_string()),
            datapath: describe(svc.machine.datapath()),
            verdicts,
            parked: ParkedStats {
                pending_frames: svc.spool.pending() as u64,
                pending_bytes: svc.spool.pending_bytes(),
                stored_frames: svc.totals.stored_frames,
                stored_bytes: svc.totals.stored_bytes,
                overflow_frames: svc.totals.overflow_frames,
                overflow_bytes: svc.totals.overflow_bytes,
                checksums_completed: svc.totals.checksums_completed,
                checksums_bad: svc.totals.checksums_bad,
                store_failures: svc.totals.store_failures,
                limit_frames: svc.limit.frames,
                limit_bytes: svc.limit.bytes,
            },
            replay: svc.totals.replay,
            forward_link: forward_link(svc).map(|l| l.name().to_string()),
            forward_path: svc
                .forward
                .map(|f| if f.tc { "tc" } else { "xdp" }.to_string()),
            last_phase_latency_us: svc.last_latency_us,
            last_migration: svc.last_migration.clone(),
            timeline: svc.machine.timeline.clone(),
            fault: svc.fault.clone(),
        })
    }

    pub(super) fn stats(&self) -> Result<Stats, ApiError> {
        let reasons = self.dp.reasons().map_err(datapath_err)?;
        let protocols = self.dp.proto_counters().map_err(datapath_err)?;
        let mut services = Vec::new();
        for id in self.services.keys() {
            services.push(self.status_of(*id)?);
        }
        Ok(Stats {
            agent: AgentInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: api::PROTOCOL_VERSION,
                interfaces: self.cfg.ifaces.clone(),
                pin_dir: self.cfg.pin_dir.display().to_string(),
                uptime_s: self.started.elapsed().as_secs(),
                ring_backlog_bytes: self.ring.backlog(),
                unknown_service_records: self.unknown_records,
                late_joins_learned: self.late_joins_learned,
                tokens_refused: self.token_quota.refused,
                recovery_problems: self.recovery_problems.clone(),
                park_pending_bytes: self
                    .services
                    .values()
                    .map(|s| s.spool.pending_bytes())
                    .sum(),
                park_max_total_bytes: self.cfg.park_max_total_bytes,
                full_path_missed: self.dp.full_path_missed().map_err(datapath_err)?,
            },
            reasons: Reason::ALL
                .iter()
                .map(|r| (r.name().to_string(), reasons[*r as usize]))
                .collect(),
            protocols: ProtoClass::ALL
                .iter()
                .map(|c| (c.name().to_string(), protocols[*c as usize]))
                .collect(),
            services,
            migrations: self.migrations.clone(),
        })
    }
}
