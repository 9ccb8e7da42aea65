//! Phase changes: requested (`migrctl phase`), from the CRIU hook (`criu`,
//! by container), or due to time (`tick`: drain and settle times passing).
//! The phase machine decides; this applies its decision to the datapath.

use std::time::{Duration, Instant};

use migr_common::maps::Action;
use migr_control::{
    api::{ApiError, CriuArgs, ErrorCode, PhaseArgs, PhaseResult},
    phase::{CriuDecision, PhaseCommand, Role, State, criu_decision},
};

use super::{
    Engine, datapath_err,
    lease::lease_until_ns,
    links::forward_link,
    now_ms,
    service::{describe, forward_refusal},
};

/// One phase command and where it came from.
struct PhaseRequest {
    cmd: PhaseCommand,
    role: Option<Role>,
    drain_ms: Option<u64>,
    /// When the request was read (for the latency figure).
    received: Instant,
    /// "request" or "criu", for the log.
    via: &'static str,
    /// What the reply tells the caller besides the transition.
    note: Option<String>,
}

impl Engine {
    pub(super) fn tick(&mut self) {
        let now = now_ms();
        let until = lease_until_ns(self.cfg.lease);
        let ring_drained = self.ring.backlog() == 0;
        let mut changed = Vec::new();
        for (id, svc) in &mut self.services {
            let before = svc.machine.state;
            let all_delivered =
                ring_drained && svc.spool.pending() == 0 && svc.replay_retry.is_none();
            if let Some(dps) = svc.machine.tick(now, all_delivered) {
                changed.push((*id, svc.entry(dps, until), dps, before, svc.machine.state));
            }
        }
        for (id, entry, dps, before, after) in changed {
            let name = self.services[&id].spec.name.clone();
            if let Err(e) = self.dp.set_service(id, &entry) {
                tracing::error!(service = %name, error = %format!("{e:#}"), "datapath update failed");
            }
            if before != after {
                tracing::info!(service = %name, id, from = before.name(), to = after.name(),
                    at_ms = now, datapath = %describe(dps), cause = "drain time passed",
                    "phase transition");
            } else {
                tracing::info!(service = %name, id, at_ms = now, datapath = %describe(dps),
                    "replay done");
            }
            self.persist_or_log();
        }
    }

    pub(super) fn phase(
        &mut self,
        args: PhaseArgs,
        received: Instant,
    ) -> Result<PhaseResult, ApiError> {
        let id = self.resolve(&args.service)?;
        self.apply_phase(
            id,
            PhaseRequest {
                cmd: args.phase,
                role: args.role,
                drain_ms: args.drain_ms,
                received,
                via: "request",
                note: None,
            },
        )
    }

    fn apply_phase(&mut self, id: u32, req: PhaseRequest) -> Result<PhaseResult, ApiError> {
        let PhaseRequest {
            cmd,
            role,
            drain_ms,
            received,
            via,
            note,
        } = req;
        let svc = self.services.get_mut(&id).expect("resolved");
        if let Some(fault) = &svc.fault {
            return Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "service {:?} is faulted ({fault}); remove it and add it again",
                    svc.spec.name
                ),
            ));
        }
        let now = now_ms();
        let mut machine = svc.machine.clone();
        let outcome = machine
            .command(cmd, role, drain_ms, now)
            .map_err(|e| ApiError::new(ErrorCode::InvalidTransition, e.message))?;
        if !outcome.unchanged {
            let target = machine.target_action();
            let link = (target == Action::Forward)
                .then(|| forward_link(svc))
                .flatten();
            if let Some(refusal) = forward_refusal(svc, outcome.to, target, link) {
                return Err(ApiError::new(ErrorCode::InvalidTransition, refusal));
            }
        }
        let entry = svc.entry(outcome.datapath, lease_until_ns(self.cfg.lease));
        self.dp.set_service(id, &entry).map_err(datapath_err)?;
        let latency = received.elapsed();
        svc.machine = machine;
        let latency_us = latency.as_micros() as u64;
        if !outcome.unchanged {
            svc.last_latency_us = Some(latency_us);
        }
        if outcome.replay.is_some() {
            svc.totals.replay.replays += 1;
            svc.start_replay_run(Instant::now());
        }
        if matches!(outcome.to, State::Frozen | State::Restoring) {
            svc.replay_run = None;
        }
        let name = svc.spec.name.clone();
        let pending = svc.spool.pending();
        if !outcome.unchanged
            && outcome.to == State::Restored
            && svc.machine.role == Some(Role::Destination)
            && svc.spec.announce
        {
            let mut addrs: Vec<std::net::IpAddr> =
                svc.spec.rules.iter().map(|r| r.addr.ip()).collect();
            addrs.sort();
            addrs.dedup();
            crate::announce::spawn(name.clone(), self.cfg.ifaces.clone(), addrs);
        }
        if outcome.unchanged {
            tracing::info!(service = %name, id, phase = cmd.name(), state = outcome.to.name(), via,
                "phase command: already there");
        } else {
            tracing::info!(
                service = %name, id, phase = cmd.name(),
                from = outcome.from.name(), to = outcome.to.name(),
                role = ?svc.machine.role.map(|r| r.name()),
                datapath = %describe(outcome.datapath),
                replay = ?outcome.replay.map(Action::name),
                parked_pending = pending,
                at_ms = now, latency_us, via,
                "phase transition"
            );
            self.persist_or_log();
        }
        Ok(PhaseResult {
            service: name,
            from: outcome.from.name().into(),
            to: outcome.to.name().into(),
            unchanged: outcome.unchanged,
            datapath: describe(outcome.datapath),
            latency_us,
            note,
        })
    }

    pub(super) fn criu(
        &mut self,
        args: CriuArgs,
        received: Instant,
    ) -> Result<PhaseResult, ApiError> {
        let id = match &args.service {
            Some(r) => self.resolve(r)?,
            None if args.container_ids.is_empty() => {
                return Err(ApiError::bad(
                    "criu needs a service, or the container's ids (container_ids)",
                ));
            }
            None => {
                let mut found = self.services.iter().filter(|(_, svc)| {
                    svc.spec
                        .container
                        .as_deref()
                        .is_some_and(|key| crate::container::names(key, &args.container_ids))
                });
                match (found.next(), found.next()) {
                    (Some((id, _)), None) => *id,
                    (None, _) => {
                        return Ok(PhaseResult {
                            service: String::new(),
                            from: String::new(),
                            to: String::new(),
                            unchanged: true,
                            datapath: String::new(),
                            latency_us: received.elapsed().as_micros() as u64,
                            note: Some(format!(
                                "{}: no service is registered for this container",
                                args.action
                            )),
                        });
                    }
                    (Some((a, _)), Some((b, _))) => {
                        return Err(ApiError::bad(format!(
                            "services {a} and {b} are both registered for this container"
                        )));
                    }
                }
            }
        };
        if let Some(ms) = args.deadline_ms
            && received.elapsed() > Duration::from_millis(ms)
        {
            tracing::warn!(action = %args.action, waited_ms = received.elapsed().as_millis() as u64,
                "a CRIU action reached the engine after its hook had given up; not applied");
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "{}: the hook gave up after {ms} ms; not applied",
                    args.action
                ),
            ));
        }
        if let Some(pid) = args.init_pid
            && let Some(svc) = self.services.get_mut(&id)
        {
            svc.init_pid = Some(pid);
        }
        let state = self.services[&id].machine.state;
        match criu_decision(&args.action, state) {
            CriuDecision::Phase(cmd) => self.apply_phase(
                id,
                PhaseRequest {
                    cmd,
                    role: None,
                    drain_ms: None,
                    received,
                    via: "criu",
                    note: Some(format!("{} -> {}", args.action, cmd.name())),
                },
            ),
            CriuDecision::Ignore(why) => {
                let svc = &self.services[&id];
                tracing::info!(service = %svc.spec.name, action = %args.action, why, "CRIU action: nothing to do");
                Ok(PhaseResult {
                    service: svc.spec.name.clone(),
                    from: state.name().into(),
                    to: state.name().into(),
                    unchanged: true,
                    datapath: describe(svc.machine.datapath()),
                    latency_us: received.elapsed().as_micros() as u64,
                    note: Some(format!("{}: {why}", args.action)),
                })
            }
        }
    }
}
