//! `migrctl explain PCAP`: why was my packet parked? Runs captured frames
//! through a private copy of the XDP program whose tables are copies of the
//! agent's pinned ones (services, listeners, server ids, tokens, learned
//! flows, forward devices), and reports per frame the service it matched,
//! the verdict and the reasons the program counted. The copy has its own
//! counters and rings, so the agent's counters, parked frames and state are
//! untouched; what the copy learns (a flow, a parked frame) is discarded
//! with it.

mod copy;

use std::{os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use migr_common::{
    classify::{Classification, parse_stage},
    maps::{MAX_SERVICES, Reason, SERVICE_ACTIVE, Verdict, map_names as n},
};

use crate::{
    datapath::{Datapath, DatapathConfig, MAIN_PROGRAM},
    pin_layout,
};

/// The pinned maps explain copies: the tables that decide a verdict.
/// Counters, rings, the event budget and the replay slots start afresh.
pub const COPIED: [&str; 11] = [
    n::SERVICES,
    n::LISTENERS,
    n::SERVER_IDS,
    n::SMALL_SERVER_IDS,
    n::TOKENS,
    n::JOINS_LEARNED,
    n::FLOWS,
    n::FORWARD_DEVICES,
    // The fast path's summaries of the tables above: without them the copy
    // would pass frames the agent's program looks up.
    n::FLOW_PORTS,
    n::PORT_LISTENERS,
    n::LISTENER_SLOTS,
];

/// What the program made of one frame.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Explained {
    /// 1-based, as in Wireshark.
    pub frame: usize,
    pub bytes: usize,
    /// The capture cut the frame short (its snap length).
    pub truncated: bool,
    /// `UDP 10.0.0.1:5000 > 10.0.0.2:443`, for UDP and TCP frames.
    pub flow: Option<String>,
    /// The program's XDP return value (`XDP_PASS`, ...).
    pub xdp: String,
    /// The service whose verdict counter rose, if any.
    pub service: Option<u32>,
    pub verdict: Option<String>,
    /// Every reason counter that rose.
    pub reasons: Vec<String>,
}

/// A private datapath loaded with copies of the agent's tables.
pub struct Explainer {
    dp: Datapath,
    services: Vec<u32>,
    /// Entries that could not be copied (a forward device of another
    /// network namespace, say), for the report.
    pub copy_problems: Vec<String>,
}

impl Explainer {
    /// Loads the program with copies of the maps the agent pinned in `pin_dir`.
    pub fn new(pin_dir: &Path) -> Result<Self> {
        pin_layout::check(pin_dir)?;
        let dir = pin_layout::maps_dir(pin_dir);
        if !dir.join(n::SERVICES).exists() {
            bail!(
                "no agent's maps in {}: is an agent running with --pin-dir {}?",
                dir.display(),
                pin_dir.display()
            );
        }
        let pinned = |name: &str| {
            MapData::from_pin(dir.join(name))
                .with_context(|| format!("opening the pinned map {name} (run as root)"))
        };
        let size = |name: &str| -> Result<u32> { Ok(pinned(name)?.info()?.max_entries()) };
        let config = DatapathConfig {
            flows: size(n::FLOWS)?,
            server_ids: size(n::SERVER_IDS)?,
            tokens: size(n::TOKENS)?,
            ..DatapathConfig::default()
        };
        let dp = Datapath::load_with(&config)?;
        let mut copy_problems = Vec::new();
        for name in COPIED {
            let from = pinned(name)?;
            let info = from.info()?;
            let (to, _, _) = dp.map_fd(name)?;
            let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
            let from_fd = from.fd().as_fd();
            // A fresh array holds zeros: its zero entries need no copy (the
            // fast path's per-port and per-id arrays are mostly zeros).
            let array = matches!(info.map_type(), Ok(aya::maps::MapType::Array));
            for key in copy::keys(from_fd, key_size)? {
                let Some(mut value) = copy::lookup(from_fd, &key, value_size)? else {
                    continue;
                };
                if array && value.iter().all(|&byte| byte == 0) {
                    continue;
                }
                if name == n::FORWARD_DEVICES {
                    // The kernel reads back a program id where an update
                    // takes a program fd; migr attaches none.
                    value[4..].fill(0);
                }
                if let Err(e) = copy::update(to.as_fd(), &key, &value) {
                    copy_problems.push(format!("{name} entry {key:02x?}: {e}"));
                }
            }
        }
        let mut services = Vec::new();
        for id in 1..MAX_SERVICES {
            if dp.service(id)?.flags & SERVICE_ACTIVE != 0 {
                services.push(id);
            }
        }
        Ok(Self {
            dp,
            services,
            copy_problems,
        })
    }

    /// Runs one frame; `index` is its place in the capture (from 1).
    pub fn run(&mut self, index: usize, frame: &[u8], truncated: bool) -> Result<Explained> {
        let reasons_before = self.dp.reasons()?;
        let mut counters_before = Vec::with_capacity(self.services.len());
        for id in &self.services {
            counters_before.push(self.dp.service_counters(*id)?);
        }
        let outcome = self.dp.test_run(MAIN_PROGRAM, frame)?;
        // What the copy parked or reported is nobody's: let it go.
        self.dp.drain_parked()?;
        self.dp.drain_events()?;
        let reasons_after = self.dp.reasons()?;
        let reasons = Reason::ALL
            .iter()
            .filter(|r| reasons_after[**r as usize] > reasons_before[**r as usize])
            .map(|r| r.name().to_string())
            .collect();
        let mut service = None;
        let mut verdict = None;
        for (id, before) in self.services.iter().zip(&counters_before) {
            let after = self.dp.service_counters(*id)?;
            if let Some(v) = Verdict::ALL
                .iter()
                .find(|v| after.packets[**v as usize] > before.packets[**v as usize])
            {
                service = Some(*id);
                verdict = Some(v.name().to_string());
                break;
            }
        }
        Ok(Explained {
            frame: index,
            bytes: frame.len(),
            truncated,
            flow: flow_of(frame),
            xdp: format!("XDP_{:?}", outcome.action).to_uppercase(),
            service,
            verdict,
            reasons,
        })
    }
}

/// The frame's transport 5-tuple, as the datapath's own parser reads it.
pub fn flow_of(frame: &[u8]) -> Option<String> {
    let mut c = Classification::EMPTY;
    if !parse_stage(frame, &mut c) {
        return None;
    }
    let f = c.flow;
    let proto = match f.proto {
        17 => "UDP",
        6 => "TCP",
        _ => return None,
    };
    let addr = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port);
    Some(format!(
        "{proto} {} > {}",
        addr(f.src_ip(), f.src_port),
        addr(f.dst_ip(), f.dst_port)
    ))
}
