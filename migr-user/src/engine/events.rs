//! The datapath's events: MPTCP keys become tokens, and MP_JOINs that
//! overtook their token are learned once it is known.

use std::time::Instant;

use migr_common::maps::{EventKind, FlowKey};

use super::Engine;
use crate::mptcp::mptcp_token;

impl Engine {
    /// MPTCP keys → tokens; joins that overtook their token → learned late.
    pub(super) fn pump_events(&mut self) {
        let events = match self.dp.drain_events() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading datapath events failed");
                return;
            }
        };
        let now = Instant::now();
        for ev in events {
            if ev.kind == EventKind::UnknownJoin as u32 {
                // The token may have been installed since the SYN went by.
                match self.dp.token(ev.token) {
                    Ok(Some(service_id)) => self.learn_late_join(&ev.flow, service_id, ev.token),
                    _ => self.early_joins.note(now, ev.token, ev.flow),
                }
                continue;
            }
            if ev.kind != EventKind::MptcpKeys as u32 {
                continue;
            }
            let Some(svc) = self.services.get(&ev.service_id) else {
                continue;
            };
            if !svc.mptcp() || ev.receiver_key == 0 {
                continue;
            }
            let source = ev.flow.src_ip();
            if !self.token_quota.allow(source, now) {
                if self.token_quota.refused.is_power_of_two() {
                    tracing::warn!(%source, refused = self.token_quota.refused,
                        "an address reports MPTCP keys faster than its token quota; tokens not learned");
                }
                continue;
            }
            let token = mptcp_token(ev.receiver_key);
            match self.dp.set_token(token, ev.service_id) {
                Ok(()) => {
                    tracing::debug!(service = %svc.spec.name, token = format!("{token:08x}"), "learned an MPTCP token");
                    for flow in self.early_joins.take(now, token) {
                        self.learn_late_join(&flow, ev.service_id, token);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "installing an MPTCP token failed")
                }
            }
        }
    }

    /// Learns the subflow of an MP_JOIN that arrived before its token.
    pub(super) fn learn_late_join(&mut self, flow: &FlowKey, service_id: u32, token: u32) {
        match self.dp.set_flow(flow, service_id) {
            Ok(()) => {
                self.late_joins_learned += 1;
                tracing::debug!(
                    id = service_id,
                    token = format!("{token:08x}"),
                    "learned an MP_JOIN subflow that arrived before its token"
                );
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "learning an MP_JOIN subflow failed")
            }
        }
    }
}
