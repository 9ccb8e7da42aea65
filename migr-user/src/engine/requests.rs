//! The requests that add and remove services, and the datapath entries a
//! service's spec means (written on add and on recovery, removed on remove).

use anyhow::Result;
use migr_common::maps::ServiceEntry;
use migr_control::{
    api::{self, ApiError, ErrorCode, RemoveArgs, ServiceRef, ServiceSpec},
    phase::{PhaseMachine, Timing},
};
use serde_json::Value;

use super::{
    Engine, datapath_err, internal,
    lease::lease_until_ns,
    now_ms,
    service::{ResolvedForward, Service, listener_for},
};
use crate::{neighbour::resolve_forward, spool::Spool};

impl Engine {
    pub(super) fn resolve(&self, r: &ServiceRef) -> Result<u32, ApiError> {
        let found = match r {
            ServiceRef::Id(id) => self.services.get(id).map(|s| s.spec.id),
            ServiceRef::Name(name) => self
                .services
                .values()
                .find(|s| &s.spec.name == name)
                .map(|s| s.spec.id)
                .or_else(|| {
                    name.parse::<u32>()
                        .ok()
                        .and_then(|id| self.services.get(&id).map(|s| s.spec.id))
                }),
        };
        found.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no service {r}")))
    }

    pub(super) fn service_add(
        &mut self,
        spec: ServiceSpec,
        resolved: Option<Result<ResolvedForward, ApiError>>,
    ) -> Result<Value, ApiError> {
        api::validate_spec(&spec)?;
        if self.services.contains_key(&spec.id) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("service id {} is taken", spec.id),
            ));
        }
        if let Some(other) = self.services.values().find(|s| s.spec.name == spec.name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "service name {:?} is taken (id {})",
                    spec.name, other.spec.id
                ),
            ));
        }
        if let Some(key) = &spec.container
            && let Some(other) = self
                .services
                .values()
                .find(|s| s.spec.container.as_ref() == Some(key))
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "container {key:?} belongs to service {:?} already",
                    other.spec.name
                ),
            ));
        }
        for rule in &spec.rules {
            let (key, _) = listener_for(rule, spec.id);
            for other in self.services.values() {
                if other
                    .spec
                    .rules
                    .iter()
                    .any(|r| listener_for(r, other.spec.id).0 == key)
                {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "{} ({:?}) belongs to service {:?} already",
                            rule.addr, rule.proto, other.spec.name
                        ),
                    ));
                }
                for sid in &rule.server_ids {
                    if other.spec.rules.iter().any(|r| r.server_ids.contains(sid)) {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!(
                                "QUIC server id {sid} belongs to service {:?} already",
                                other.spec.name
                            ),
                        ));
                    }
                }
            }
        }
        let forward = match &spec.forward {
            Some(f) => {
                let found = match resolved {
                    Some(r) => r?,
                    None => resolve_forward(f)?,
                };
                Some(self.with_forward_path(f, found)?)
            }
            None => None,
        };
        let (mut spool, _) =
            Spool::open(&self.spool_dir(), spec.id, self.ring.map_id, None).map_err(internal)?;
        // Leftovers of a removed service with the same id are not ours.
        spool.discard().map_err(internal)?;
        let timing = Timing {
            drain_ms: spec.drain_ms.unwrap_or(self.cfg.timing.drain_ms),
            settle_ms: self.cfg.timing.settle_ms,
        };
        let machine = PhaseMachine::new(timing, now_ms());
        let svc = Service::new(spec, forward, machine, spool, self.cfg.default_limit);
        if let Err(e) = self.install(&svc) {
            let _ = self.uninstall(&svc);
            return Err(datapath_err(e));
        }
        let id = svc.spec.id;
        tracing::info!(service = %svc.spec.name, id, rules = svc.spec.rules.len(),
            forward = ?svc.spec.forward.as_ref().map(|f| f.addr), state = "idle", at_ms = now_ms(),
            "service added");
        self.services.insert(id, svc);
        self.persist().map_err(internal)?;
        self.status_of(id)
            .and_then(|s| serde_json::to_value(s).map_err(internal))
    }

    /// Writes every datapath entry of a service (idempotent).
    pub(super) fn install(&mut self, svc: &Service) -> Result<()> {
        let id = svc.spec.id;
        for rule in &svc.spec.rules {
            let (key, entry) = listener_for(rule, id);
            self.dp.set_listener(&key, &entry)?;
            for sid in &rule.server_ids {
                self.dp.set_server_id(*sid, id)?;
            }
        }
        if let Some(f) = svc.forward {
            self.dp.set_forward_device(id, f.ifindex)?;
        }
        self.dp.set_service(
            id,
            &svc.entry(svc.machine.datapath(), lease_until_ns(self.cfg.lease)),
        )?;
        Ok(())
    }

    pub(super) fn uninstall(&mut self, svc: &Service) -> Result<()> {
        let id = svc.spec.id;
        self.dp.set_service(id, &ServiceEntry::default())?;
        for rule in &svc.spec.rules {
            let (key, _) = listener_for(rule, id);
            if self
                .dp
                .listeners()?
                .iter()
                .any(|(k, e)| *k == key && e.service_id == id)
            {
                self.dp.remove_listener(&key)?;
            }
            for sid in &rule.server_ids {
                self.dp.remove_server_id(*sid)?;
            }
        }
        for (token, owner) in self.dp.tokens()? {
            if owner == id {
                self.dp.remove_token(token)?;
            }
        }
        Ok(())
    }

    pub(super) fn service_remove(&mut self, args: RemoveArgs) -> Result<Value, ApiError> {
        let id = self.resolve(&args.service)?;
        let svc = &self.services[&id];
        let pending = svc.spool.pending();
        if pending > 0 && !args.force {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "service {:?} has {pending} parked frames that are not replayed yet; finish the migration (restored/abort) or remove with force to discard them",
                    svc.spec.name
                ),
            ));
        }
        let svc = self.services.remove(&id).expect("resolved");
        if let Err(e) = self.uninstall(&svc) {
            let err = datapath_err(e);
            self.services.insert(id, svc);
            return Err(err);
        }
        let name = svc.spec.name.clone();
        let _ = svc.spool.remove();
        tracing::info!(service = %name, id, discarded = pending, at_ms = now_ms(), "service removed");
        self.persist().map_err(internal)?;
        Ok(serde_json::json!({ "id": id, "name": name, "discarded_frames": pending }))
    }
}
