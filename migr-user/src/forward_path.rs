//! Which way a FORWARD leaves the node ([`ForwardPath`]), per egress device.
//!
//! XDP_TX and redirected XDP frames are transmitted by drivers that have an
//! XDP transmit ring: physical NICs (and virtio-net) in native mode. A veth
//! hands them to its peer only if the peer runs an XDP program too, so on
//! veths (containers, virtual nodes, namespace topologies) and in generic
//! mode they are lost without a trace. The TC path delivers everywhere, at
//! the cost of an skb; the XDP path is chosen only where it is known to work.

use std::fmt;

use anyhow::{Result, bail};
use migr_common::maps::ForwardPath;

/// The operator's choice (`migr-agent run --forward-path`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardPathChoice {
    /// XDP where the egress device is a bus device and every attachment is
    /// native; TC everywhere else.
    #[default]
    Auto,
    Xdp,
    Tc,
}

impl std::str::FromStr for ForwardPathChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "xdp" => Ok(Self::Xdp),
            "tc" => Ok(Self::Tc),
            other => bail!("unknown forward path {other:?}: expected auto, xdp or tc"),
        }
    }
}

impl fmt::Display for ForwardPathChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        })
    }
}

/// What is known about the egress device and the XDP attachments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressFacts {
    /// The driver reports a bus address (a PCI or virtio device), so it is
    /// not a veth, bridge, tunnel or other software device.
    pub on_a_bus: bool,
    /// Every XDP attachment of this agent is in native (driver) mode.
    pub all_native: bool,
}

/// The path for a forward target (pure).
pub fn choose(choice: ForwardPathChoice, facts: EgressFacts) -> ForwardPath {
    match choice {
        ForwardPathChoice::Xdp => ForwardPath::Xdp,
        ForwardPathChoice::Tc => ForwardPath::Tc,
        ForwardPathChoice::Auto if facts.on_a_bus && facts.all_native => ForwardPath::Xdp,
        ForwardPathChoice::Auto => ForwardPath::Tc,
    }
}

/// Whether `iface`'s driver reports a bus address (ETHTOOL_GDRVINFO, asked in
/// the current network namespace). A device that cannot be asked counts as
/// a software device: the TC path then works either way.
pub fn on_a_bus(iface: &str) -> bool {
    crate::netdev::driver_info(iface).is_some_and(|(_, bus)| !bus.is_empty() && bus != "N/A")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_xdp_only_on_a_native_bus_device() {
        let facts = |on_a_bus, all_native| EgressFacts {
            on_a_bus,
            all_native,
        };
        assert_eq!(
            choose(ForwardPathChoice::Auto, facts(true, true)),
            ForwardPath::Xdp
        );
        for (bus, native) in [(false, true), (true, false), (false, false)] {
            assert_eq!(
                choose(ForwardPathChoice::Auto, facts(bus, native)),
                ForwardPath::Tc,
                "bus {bus}, native {native}"
            );
        }
        for f in [facts(true, true), facts(false, false)] {
            assert_eq!(choose(ForwardPathChoice::Xdp, f), ForwardPath::Xdp);
            assert_eq!(choose(ForwardPathChoice::Tc, f), ForwardPath::Tc);
        }
    }

    #[test]
    fn choices_parse_and_print() {
        for c in [
            ForwardPathChoice::Auto,
            ForwardPathChoice::Xdp,
            ForwardPathChoice::Tc,
        ] {
            assert_eq!(c.to_string().parse::<ForwardPathChoice>().unwrap(), c);
        }
        assert!("redirect".parse::<ForwardPathChoice>().is_err());
    }

    #[test]
    fn the_loopback_device_is_not_on_a_bus() {
        assert!(!on_a_bus("lo"));
        assert!(!on_a_bus("no-such-device-here"));
    }
}
