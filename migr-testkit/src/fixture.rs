//! A loaded datapath plus a host copy of its tables, so that every frame can
//! be run through the kernel (BPF_PROG_TEST_RUN) and through the host's
//! `classify`, and the two compared.

use anyhow::{Result, bail};
use migr_common::{
    classify::{Classification, Report, classify},
    maps::{
        Action, FAMILY_V4, FAMILY_V6, FlowKey, ForwardMode, ForwardTarget, ListenerEntry,
        ListenerKey, MAX_JOINS_PER_TOKEN, Reason, SERVICE_ACTIVE, ServiceCounters, ServiceEntry,
        Verdict,
    },
    rewrite::{Headers, rewrite_destination, rewrite_macs},
};
use migr_user::datapath::{Datapath, DatapathConfig, MAIN_PROGRAM, XdpAction};

use crate::host_tables::HostTables;

/// test_run delivers frames as if received on the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub struct Fixture {
    pub dp: Datapath,
    pub host: HostTables,
}

/// What one frame did in the kernel.
#[derive(Debug)]
pub struct Outcome {
    pub action: XdpAction,
    pub frame_out: Vec<u8>,
    pub service_id: u32,
    pub verdict: Verdict,
    pub reasons: [u64; Reason::COUNT as usize],
}

/// What the host expects for one frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    pub action: XdpAction,
    pub service_id: u32,
    pub verdict: Verdict,
    /// The frame as it should leave (rewritten for FORWARD).
    pub frame_out: Vec<u8>,
}

pub fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

pub fn listener_key(addr: [u8; 16], port: u16, proto: u8, family: u8) -> ListenerKey {
    ListenerKey {
        addr,
        port,
        proto,
        family,
    }
}

pub fn service(action: Action, flags: u32, forward: ForwardTarget) -> ServiceEntry {
    ServiceEntry {
        action: action as u32,
        flags: SERVICE_ACTIVE | flags,
        forward,
        lease_until_ns: 0,
    }
}

pub fn forward_v4(addr: [u8; 4], port: u16, mode: ForwardMode, ifindex: u32) -> ForwardTarget {
    ForwardTarget {
        addr: v4(addr),
        port,
        mode: mode as u8,
        family: FAMILY_V4,
        dst_mac: [0x02, 0xd5, 0, 0, 0, 0x01],
        src_mac: [0x02, 0x5c, 0, 0, 0, 0x02],
        ifindex,
        ..ForwardTarget::default()
    }
}

pub fn forward_v6(addr: [u8; 16], port: u16, ifindex: u32) -> ForwardTarget {
    ForwardTarget {
        addr,
        port,
        mode: ForwardMode::AddressChanging as u8,
        family: FAMILY_V6,
        dst_mac: [0x02, 0xd6, 0, 0, 0, 0x01],
        src_mac: [0x02, 0x6c, 0, 0, 0, 0x02],
        ifindex,
        ..ForwardTarget::default()
    }
}

impl Fixture {
    pub fn new() -> Result<Self> {
        Self::with_config(&DatapathConfig::default())
    }

    pub fn with_config(config: &DatapathConfig) -> Result<Self> {
        Ok(Self {
            dp: Datapath::load_with(config)?,
            host: HostTables::default(),
        })
    }

    pub fn set_service(&mut self, id: u32, entry: ServiceEntry) -> Result<()> {
        self.dp.set_service(id, &entry)?;
        self.host.services.insert(id, entry);
        Ok(())
    }

    pub fn set_listener(&mut self, key: ListenerKey, entry: ListenerEntry) -> Result<()> {
        self.dp.set_listener(&key, &entry)?;
        self.host.listeners.insert(key, entry);
        Ok(())
    }

    pub fn set_server_id(&mut self, server_id: u32, service: u32) -> Result<()> {
        self.dp.set_server_id(server_id, service)?;
        self.host.server_ids.insert(server_id, service);
        Ok(())
    }

    pub fn remove_server_id(&mut self, server_id: u32) -> Result<()> {
        self.dp.remove_server_id(server_id)?;
        self.host.server_ids.remove(&server_id);
        Ok(())
    }

    pub fn set_token(&mut self, token: u32, service: u32) -> Result<()> {
        self.dp.set_token(token, service)?;
        self.host.tokens.insert(token, service);
        Ok(())
    }

    pub fn set_flow(&mut self, key: FlowKey, service: u32) -> Result<()> {
        self.dp.set_flow(&key, service)?;
        self.host.flows.insert(key, service);
        Ok(())
    }

    /// The host's decision for `frame`.
    pub fn classify(&self, frame: &[u8]) -> Classification {
        classify(frame, &self.host)
    }

    /// What the kernel should do with `frame`, computed on the host.
    pub fn expect(&self, frame: &[u8]) -> Expected {
        let c = self.classify(frame);
        let (action, verdict, frame_out) = match c.action {
            Action::Pass => (XdpAction::Pass, Verdict::Pass, frame.to_vec()),
            Action::Drop => (XdpAction::Drop, Verdict::Drop, frame.to_vec()),
            Action::Park => (XdpAction::Drop, Verdict::Park, frame.to_vec()),
            Action::Forward => {
                let mut out = frame.to_vec();
                let target = c.service.map(|s| s.forward).unwrap_or_default();
                let rewritten = match (ForwardMode::from_u8(target.mode), c.packet) {
                    (Some(ForwardMode::AddressChanging), Some(info)) => {
                        rewrite_destination(&mut out[..], &Headers::of(&info), &target).is_ok()
                    }
                    (Some(ForwardMode::SameIp), Some(_)) => true,
                    _ => false,
                } && rewrite_macs(&mut out[..], target.dst_mac, target.src_mac)
                    .is_ok();
                if !rewritten {
                    (XdpAction::Drop, Verdict::ForwardFailed, frame.to_vec())
                } else if target.ifindex == TEST_RUN_IFINDEX {
                    (XdpAction::Tx, Verdict::Forward, out)
                } else {
                    (XdpAction::Redirect, Verdict::Forward, out)
                }
            }
        };
        Expected {
            action,
            service_id: c.service_id,
            verdict,
            frame_out,
        }
    }

    /// Runs `frame` through the kernel and reports which service counter moved.
    pub fn run(&mut self, frame: &[u8], watch: &[u32]) -> Result<Outcome> {
        let before: Vec<ServiceCounters> = watch
            .iter()
            .map(|id| self.dp.service_counters(*id))
            .collect::<Result<_>>()?;
        let reasons_before = self.dp.reasons()?;
        let out = self.dp.test_run(MAIN_PROGRAM, frame)?;
        let mut moved = Vec::new();
        for (id, before) in watch.iter().zip(before) {
            let after = self.dp.service_counters(*id)?;
            for v in Verdict::ALL {
                let delta = after.packets[v as usize] - before.packets[v as usize];
                if delta != 0 {
                    moved.push((*id, v, delta));
                }
            }
        }
        let [(service_id, verdict, 1)] = moved[..] else {
            bail!("expected exactly one verdict counter to move by one, saw {moved:?}");
        };
        let reasons_after = self.dp.reasons()?;
        let mut reasons = [0u64; Reason::COUNT as usize];
        for r in 0..reasons.len() {
            reasons[r] = reasons_after[r] - reasons_before[r];
        }
        Ok(Outcome {
            action: out.action,
            frame_out: out.frame_out,
            service_id,
            verdict,
            reasons,
        })
    }

    /// Mirrors what the kernel learns by itself (MP_JOIN subflows, at most
    /// `MAX_JOINS_PER_TOKEN` per token) into the host tables.
    pub fn learn(&mut self, c: &Classification) {
        if let Report::LearnFlow { token } = c.report {
            let joins = self.host.joins_learned.entry(token).or_default();
            if *joins < MAX_JOINS_PER_TOKEN {
                *joins += 1;
                self.host.flows.insert(c.flow, c.service_id);
            }
        }
    }
}
