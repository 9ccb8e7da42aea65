//! The testbed's network: six namespaces, five veth links, static routes,
//! and `tc` presets on the links.
//!
//! ```text
//!                               src node ---- src container
//!                  20 ms   s-r /10.60.1.2     s-ct 10.60.11.1 | eth0 10.60.11.2 (+ 10.60.20.2)
//!   client ---- router -------/
//!   c-r 10.60.0.2   r-c 10.60.0.1 / r-s 10.60.1.1 / r-d 10.60.2.1
//!            2 ms           \-------\
//!                    2 ms    d-r 10.60.2.2 dst node ---- dst container
//!                                     d-ct 10.60.12.1 | eth0 10.60.12.2 (+ 10.60.20.2)
//! ```
//!
//! The router routes 10.60.11.0/24 to the source node, 10.60.12.0/24 to the
//! destination node, and the same-IP service address 10.60.20.2 (TCP, the
//! COAT case) to whichever node hosts it (`move_same_ip`). migr-agent attaches
//! to `s-r` and `d-r`, the edge nodes' router-facing interfaces.
//!
//! Presets follow seed 002 (section IV): each host's egress onto the link
//! towards the router is shaped, the source node's slower than the others'.

use anyhow::{Context as _, Result, bail};

use std::time::Duration;

use super::delay::{DelayLine, DelayStats};
use migr_testkit::{NetNs, netns::mac_of, veth_pair};

pub const CLIENT_IP: &str = "10.60.0.2";
pub const ROUTER_CLIENT_IP: &str = "10.60.0.1";
pub const ROUTER_SRC_IP: &str = "10.60.1.1";
pub const SRC_NODE_IP: &str = "10.60.1.2";
pub const ROUTER_DST_IP: &str = "10.60.2.1";
pub const DST_NODE_IP: &str = "10.60.2.2";
pub const SRC_CT_GW: &str = "10.60.11.1";
pub const SRC_CT_IP: &str = "10.60.11.2";
pub const DST_CT_GW: &str = "10.60.12.1";
pub const DST_CT_IP: &str = "10.60.12.2";
/// The address a same-IP (COAT) service has in both containers.
pub const SAME_IP: &str = "10.60.20.2";

/// The edge nodes' interfaces towards the router (where the agents attach).
pub const SRC_UPLINK: &str = "s-r";
pub const DST_UPLINK: &str = "d-r";
pub const ROUTER_TO_SRC: &str = "r-s";
pub const ROUTER_TO_DST: &str = "r-d";

/// Link shaping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// No qdisc: veth speed.
    None,
    /// Seed 002's latency setting: 20 ms on the source node's link, 2 ms on
    /// the destination node's and the client's (each host's egress towards
    /// the router; a delay line in a namespace in the middle of the link).
    Latency,
    /// Seed 002's bandwidth setting: 100 Mbit/s on the source node's link,
    /// 500 Mbit/s on the destination node's and the client's (tbf).
    Bandwidth,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Self::None,
            "latency" => Self::Latency,
            "bandwidth" => Self::Bandwidth,
            other => bail!("unknown preset {other:?} (none, latency, bandwidth)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latency => "latency",
            Self::Bandwidth => "bandwidth",
        }
    }

    /// The qdisc for (source node, destination node, client) egress.
    /// This kernel has tbf and htb but no netem (CONFIG_NET_SCH_NETEM is
    /// off) and no fq, so delays are not a qdisc here but a delay line
    /// (migr-testbed/src/delay.rs) in the middle of each link.
    fn qdiscs(self) -> Result<Option<[Vec<&'static str>; 3]>> {
        let tbf = |rate| vec!["tbf", "rate", rate, "burst", "64kb", "latency", "100ms"];
        Ok(match self {
            Self::None => None,
            // Delay lines instead (see `build`).
            Self::Latency => None,
            Self::Bandwidth => Some([tbf("100mbit"), tbf("500mbit"), tbf("500mbit")]),
        })
    }
}

/// The namespaces; dropping it kills what still runs in them (by PID) and
/// deletes them.
pub struct Topology {
    pub preset: Preset,
    /// The latency preset's delay lines (stopped before the namespaces go).
    delays: Vec<DelayLine>,
    /// Their namespaces, one in the middle of each delayed link.
    delay_ns: Vec<NetNs>,
    pub client: NetNs,
    pub router: NetNs,
    pub src: NetNs,
    pub dst: NetNs,
    pub src_ct: NetNs,
    pub dst_ct: NetNs,
}

impl Topology {
    pub fn build(preset: Preset) -> Result<Self> {
        let mut t = Self {
            preset,
            delays: Vec::new(),
            delay_ns: Vec::new(),
            client: NetNs::new("cli")?,
            router: NetNs::new("rtr")?,
            src: NetNs::new("src")?,
            dst: NetNs::new("dst")?,
            src_ct: NetNs::new("sct")?,
            dst_ct: NetNs::new("dct")?,
        };
        // The three links through the router; with the latency preset each
        // has a delay line in the middle (seed 002: the hosts' egress).
        let ms = Duration::from_millis;
        let delayed = preset == Preset::Latency;
        for (a, a_if, a_addr, b, b_if, b_addr, a_to_b, b_to_a) in [
            (
                &t.client,
                "c-r",
                CLIENT_IP,
                &t.router,
                "r-c",
                ROUTER_CLIENT_IP,
                ms(2),
                ms(0),
            ),
            (
                &t.router,
                ROUTER_TO_SRC,
                ROUTER_SRC_IP,
                &t.src,
                SRC_UPLINK,
                SRC_NODE_IP,
                ms(0),
                ms(20),
            ),
            (
                &t.router,
                ROUTER_TO_DST,
                ROUTER_DST_IP,
                &t.dst,
                DST_UPLINK,
                DST_NODE_IP,
                ms(0),
                ms(2),
            ),
        ] {
            let (a_addr, b_addr) = (format!("{a_addr}/24"), format!("{b_addr}/24"));
            if !delayed {
                veth_pair(a, a_if, &a_addr, b, b_if, &b_addr)?;
                continue;
            }
            let mid = NetNs::new("dly")?;
            for (ns, dev, peer, addr) in [(a, a_if, "m-a", &a_addr), (b, b_if, "m-b", &b_addr)] {
                ns.ip(&[
                    "link",
                    "add",
                    "name",
                    dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    peer,
                    "netns",
                    mid.name(),
                ])?;
                ns.ip(&["addr", "add", addr, "dev", dev])?;
                ns.ip(&["link", "set", dev, "up"])?;
                mid.ip(&["link", "set", peer, "up"])?;
            }
            t.delays
                .push(DelayLine::start(&mid, "m-a", "m-b", a_to_b, b_to_a)?);
            t.delay_ns.push(mid);
        }
        veth_pair(
            &t.src,
            "s-ct",
            &format!("{SRC_CT_GW}/24"),
            &t.src_ct,
            "eth0",
            &format!("{SRC_CT_IP}/24"),
        )?;
        veth_pair(
            &t.dst,
            "d-ct",
            &format!("{DST_CT_GW}/24"),
            &t.dst_ct,
            "eth0",
            &format!("{DST_CT_IP}/24"),
        )?;
        t.client
            .ip(&["route", "add", "default", "via", ROUTER_CLIENT_IP])?;
        t.router
            .ip(&["route", "add", "10.60.11.0/24", "via", SRC_NODE_IP])?;
        t.router
            .ip(&["route", "add", "10.60.12.0/24", "via", DST_NODE_IP])?;
        t.router
            .ip(&["route", "add", &format!("{SAME_IP}/32"), "via", SRC_NODE_IP])?;
        t.src
            .ip(&["route", "add", "default", "via", ROUTER_SRC_IP])?;
        t.dst
            .ip(&["route", "add", "default", "via", ROUTER_DST_IP])?;
        t.src
            .ip(&["route", "add", &format!("{SAME_IP}/32"), "via", SRC_CT_IP])?;
        t.dst
            .ip(&["route", "add", &format!("{SAME_IP}/32"), "via", DST_CT_IP])?;
        t.src_ct
            .ip(&["route", "add", "default", "via", SRC_CT_GW])?;
        t.dst_ct
            .ip(&["route", "add", "default", "via", DST_CT_GW])?;
        for ns in [&t.router, &t.src, &t.dst] {
            ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        // Every veth keeps its default offloads (checksums left to offload,
        // GRO off), as containers and pods have them: migr must deliver
        // what it replays and forwards without any tuning.
        if let Some([src, dst, client]) = preset.qdiscs()? {
            for (ns, dev, args) in [
                (&t.src, SRC_UPLINK, src),
                (&t.dst, DST_UPLINK, dst),
                (&t.client, "c-r", client),
            ] {
                let mut a = vec!["tc", "qdisc", "add", "dev", dev, "root"];
                a.extend_from_slice(&args);
                ns.exec(&a).with_context(|| format!("tc qdisc on {dev}"))?;
            }
        }
        // Warm the neighbour tables on the paths the measurements use.
        for (ns, target) in [
            (&t.client, ROUTER_CLIENT_IP),
            (&t.src, ROUTER_SRC_IP),
            (&t.dst, ROUTER_DST_IP),
            (&t.src, SRC_CT_IP),
            (&t.dst, DST_CT_IP),
        ] {
            let _ = arp_warm(ns, target);
        }
        Ok(t)
    }

    /// What the delay lines did (`None` without delay lines).
    pub fn delay_stats(&self) -> Option<DelayStats> {
        self.delays
            .iter()
            .map(DelayLine::stats)
            .reduce(DelayStats::combined)
    }

    /// All namespace names, for messages.
    pub fn names(&self) -> Vec<&str> {
        [
            &self.client,
            &self.router,
            &self.src,
            &self.dst,
            &self.src_ct,
            &self.dst_ct,
        ]
        .iter()
        .map(|n| n.name())
        .collect()
    }

    /// MAC of the router's interface towards the source node: the next hop
    /// of frames the source agent forwards.
    pub fn router_mac_to_src(&self) -> Result<String> {
        mac_string(&self.router, ROUTER_TO_SRC)
    }

    /// Routes the same-IP service address (10.60.20.2) at the router to the
    /// destination node (`to_dst`) or back to the source node: COAT's flow
    /// update.
    pub fn move_same_ip(&self, to_dst: bool) -> Result<()> {
        let via = if to_dst { DST_NODE_IP } else { SRC_NODE_IP };
        self.router
            .ip(&["route", "replace", &format!("{SAME_IP}/32"), "via", via])
    }
}

fn mac_string(ns: &NetNs, dev: &str) -> Result<String> {
    let mac = mac_of(ns, dev)?;
    Ok(mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Resolves `target`'s MAC from `ns` with one UDP datagram to a discard port
/// (no ping in this image) and waits for the neighbour entry.
fn arp_warm(ns: &NetNs, target: &str) -> Result<()> {
    let addr: std::net::SocketAddr = format!("{target}:9").parse()?;
    ns.run(|| {
        if let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") {
            let _ = s.send_to(b"arp", addr);
        }
    })?;
    for _ in 0..100 {
        let out = ns.exec(&["ip", "neigh", "show", target])?;
        if out.contains("lladdr") {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    bail!("no neighbour entry for {target} in {}", ns.name())
}
