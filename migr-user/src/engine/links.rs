//! The interfaces the datapath is attached to, and the path (XDP or TC)
//! each service's FORWARDs take out of the node.

use anyhow::Result;
use aya::programs::XdpMode;
use migr_common::maps::ForwardPath;
use migr_control::api::{ApiError, ForwardSpec};

use super::{
    Engine,
    lease::lease_until_ns,
    service::{LinkState, ResolvedForward, Service},
};
use crate::{
    datapath::MAIN_PROGRAM,
    forward_path::{self, EgressFacts},
    netdev::{if_index, if_link},
};

impl Engine {
    /// Picks the FORWARD path of every recovered service again: the saved
    /// one was chosen with another agent's attachments (or before paths
    /// existed), and the TC program may not have attached this time.
    pub(super) fn refresh_forward_paths(&mut self) {
        let ids: Vec<u32> = self.services.keys().copied().collect();
        for id in ids {
            let svc = &self.services[&id];
            let (Some(spec), Some(resolved)) = (svc.spec.forward.clone(), svc.forward) else {
                continue;
            };
            let name = svc.spec.name.clone();
            let chosen = match self.with_forward_path(&spec, resolved) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(service = %name, error = %e,
                        "this service's FORWARDs cannot leave the node: its frames pass to the local stack unforwarded");
                    ResolvedForward {
                        tc: true,
                        ..resolved
                    }
                }
            };
            if chosen == resolved {
                continue;
            }
            let svc = self.services.get_mut(&id).expect("listed above");
            svc.forward = Some(chosen);
            let entry = svc.entry(svc.machine.datapath(), lease_until_ns(self.cfg.lease));
            match self.dp.set_service(id, &entry) {
                Ok(()) => {
                    tracing::info!(service = %name, path = if chosen.tc { "tc" } else { "xdp" },
                    "forward path chosen anew")
                }
                Err(e) => tracing::error!(service = %name, error = %format!("{e:#}"),
                    "could not update the forward path"),
            }
            self.dirty = true;
        }
    }

    pub(super) fn attach_all(&mut self) -> Result<()> {
        let wanted: Vec<String> = self.cfg.ifaces.clone();
        for iface in &wanted {
            let pin = self.cfg.pin_dir.join(format!("link-{iface}"));
            let link = self
                .dp
                .attach_pinned(MAIN_PROGRAM, iface, self.cfg.mode, &pin)?;
            if link.reused {
                tracing::info!(%iface, "re-used the pinned XDP link (program replaced in place)");
            } else {
                tracing::info!(%iface, mode = ?link.mode, "attached");
            }
            self.links.push(link);
            let tc_pin = self.cfg.pin_dir.join(format!("tc-{iface}"));
            match self.dp.attach_tc_pinned(iface, &tc_pin) {
                Ok(link) => self.tc_links.push(link),
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(%iface, error = %e, "the TC forward program is not attached: FORWARDs through veths and in skb mode will be refused");
                    self.tc_error = Some(e);
                }
            }
        }
        // This load's `migr` is attached everywhere: its full classifier may
        // take over the pin (docs/datapath.md).
        self.dp.pin_full_path(&self.cfg.pin_dir)?;
        // Links a previous agent left for interfaces no longer asked for.
        if let Ok(entries) = std::fs::read_dir(&self.cfg.pin_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(iface) = name.strip_prefix("link-").or(name.strip_prefix("tc-"))
                    && !wanted.iter().any(|w| w == iface)
                {
                    tracing::warn!(%iface, pin = %name, "detaching a pinned link left for an interface not in --iface");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Picks the path a resolved forward target's frames take.
    pub(super) fn with_forward_path(
        &self,
        f: &ForwardSpec,
        mut resolved: ResolvedForward,
    ) -> Result<ResolvedForward, ApiError> {
        // Frames come in on any attached interface: a veth among them
        // brings partial checksums that only the TC path handles.
        let facts = EgressFacts {
            on_a_bus: forward_path::on_a_bus(&f.iface)
                && self.links.iter().all(|l| forward_path::on_a_bus(&l.iface)),
            all_native: !self.links.is_empty()
                && self.links.iter().all(|l| l.mode == Some(XdpMode::Driver)),
        };
        let path = forward_path::choose(self.cfg.forward_path, facts);
        if path == ForwardPath::Tc
            && let Some(e) = &self.tc_error
        {
            return Err(ApiError::bad(format!(
                "forward.iface {}: frames to it must leave through the TC program ({facts:?}), which could not be attached ({e}); start the agent with --forward-path xdp only if this device transmits XDP frames",
                f.iface
            )));
        }
        resolved.tc = path == ForwardPath::Tc;
        Ok(resolved)
    }
}

/// The state of a service's forward interface now, if it has one.
pub(super) fn forward_link(svc: &Service) -> Option<LinkState> {
    let (spec, resolved) = (svc.spec.forward.as_ref()?, svc.forward?);
    Some(match if_index(&spec.iface) {
        Ok(index) if index == resolved.ifindex => match if_link(&spec.iface) {
            Some((false, _)) => LinkState::Down,
            Some((true, false)) => LinkState::NoCarrier,
            Some((true, true)) => LinkState::Up,
            None => LinkState::Missing,
        },
        _ => LinkState::Missing,
    })
}
