//! A service as the control protocol describes it (`service.add`), and the
//! checks a spec must pass before the agent installs anything.

use std::net::{IpAddr, SocketAddr};

use migr_common::{cid::CidConfig, maps::MAX_SERVICES};
use serde::{Deserialize, Serialize};

use super::ApiError;

/// Transport a match rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleProto {
    Udp,
    Tcp,
    /// UDP carrying QUIC: classified by the server id in the connection ID.
    Quic,
    /// TCP carrying MPTCP: the tokens of its flows are learned, so joins to
    /// other addresses follow.
    Mptcp,
}

/// Where the server id sits in the service's QUIC connection IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidSpec {
    /// Length of the CIDs the server issues.
    pub len: u8,
    /// Byte offset of the server id inside a CID.
    pub offset: u8,
    /// Length of the server id, 1..=4 bytes.
    pub id_len: u8,
}

/// One way a client's packet is recognised as the service's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    pub proto: RuleProto,
    /// The service's address as clients reach it (ip:port).
    pub addr: SocketAddr,
    /// QUIC: the service's server ids (QUIC-LB style).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_ids: Vec<u32>,
    /// QUIC: where the server id is in the CIDs (required for QUIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<CidSpec>,
    /// QUIC: the server accepts a greased fixed bit (RFC 9287).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grease: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardModeSpec {
    /// New destination address and port, checksums updated (QUIC, MPTCP).
    #[default]
    AddressChanging,
    /// Same IP at the new node (TCP with `--tcp-established`): only MACs change.
    SameIp,
}

/// Where frames go when the service has left this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    #[serde(default)]
    pub mode: ForwardModeSpec,
    /// Address-changing: the service's new ip:port (port 0 keeps the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// Egress interface toward the new node.
    pub iface: String,
    /// MAC of the next hop. If absent, looked up in the neighbour table
    /// (for `next_hop`, else for `addr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mac: Option<String>,
    /// IP of the next hop (a router), for the neighbour-table lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<IpAddr>,
}

/// Bounds of a service's parked-frame store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkLimit {
    pub frames: u64,
    pub bytes: u64,
}

/// `service.add`'s arguments: everything about a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1..4095; also the index of the service's datapath entry.
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub rules: Vec<MatchRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardSpec>,
    /// Defaults to the agent's `--park-limit-frames`/`--park-limit-bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub park_limit: Option<ParkLimit>,
    /// Default drain time of `done`, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
    /// Pace of backlog replays in frames per second (0: unpaced). Defaults
    /// to the agent's `--replay-rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_rate: Option<u64>,
    /// The container the service runs in (a runtime's container id, or a
    /// short id of 12 hex digits or more): the CRIU hook finds the service
    /// by it when a runtime (runc, podman) runs CRIU (`migr_user::container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// After a same-IP move, the destination announces the service's
    /// addresses when it is restored (gratuitous ARP, unsolicited neighbour
    /// advertisements: `migr_user::announce`), so that an L2 segment's
    /// neighbours send to the new node at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub announce: bool,
}

/// Longest service name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a service spec for values the datapath cannot take.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), ApiError> {
    if spec.id == 0 || spec.id >= MAX_SERVICES {
        return Err(ApiError::bad(format!(
            "service id {} is out of range: use 1..={}",
            spec.id,
            MAX_SERVICES - 1
        )));
    }
    validate_name(&spec.name)?;
    if let Some(c) = &spec.container
        && (c.is_empty()
            || c.len() > 128
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(ApiError::bad(format!(
            "container {c:?}: give the runtime's container id (letters, digits, - _ ., at most 128)"
        )));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("rule {} ({:?} {})", i + 1, rule.proto, rule.addr);
        if rule.addr.port() == 0 {
            return Err(ApiError::bad(format!("{at}: port 0 matches nothing")));
        }
        if rule.addr.ip().is_unspecified() {
            return Err(ApiError::bad(format!(
                "{at}: give the service's address, not an unspecified one"
            )));
        }
        match rule.proto {
            RuleProto::Quic => {
                let Some(cid) = rule.cid else {
                    return Err(ApiError::bad(format!(
                        "{at}: a QUIC rule needs its CID config (cid: len, offset, id_len)"
                    )));
                };
                let config = CidConfig::new(cid.len, cid.offset, cid.id_len)
                    .map_err(|e| ApiError::bad(format!("{at}: CID config: {e}")))?;
                for id in &rule.server_ids {
                    if *id > config.max_server_id() {
                        return Err(ApiError::bad(format!(
                            "{at}: server id {id} does not fit in {} bytes",
                            cid.id_len
                        )));
                    }
                }
            }
            _ => {
                if !rule.server_ids.is_empty() || rule.cid.is_some() || rule.grease {
                    return Err(ApiError::bad(format!(
                        "{at}: server_ids, cid and grease only apply to QUIC rules"
                    )));
                }
            }
        }
        for other in &spec.rules[..i] {
            if other.addr == rule.addr && l4(other.proto) == l4(rule.proto) {
                return Err(ApiError::bad(format!(
                    "{at}: the address is listed twice for the same transport"
                )));
            }
        }
    }
    if let Some(fwd) = &spec.forward {
        if fwd.iface.is_empty() || fwd.iface.len() > 15 {
            return Err(ApiError::bad(format!(
                "forward.iface {:?} is not an interface name",
                fwd.iface
            )));
        }
        if let Some(mac) = &fwd.next_hop_mac {
            parse_mac(mac).map_err(|e| ApiError::bad(format!("forward.next_hop_mac: {e}")))?;
        }
        match fwd.mode {
            ForwardModeSpec::AddressChanging => {
                let Some(addr) = fwd.addr else {
                    return Err(ApiError::bad(
                        "forward.addr is required in address-changing mode",
                    ));
                };
                if addr.ip().is_unspecified() {
                    return Err(ApiError::bad("forward.addr must be a real address"));
                }
                for rule in &spec.rules {
                    if rule.addr.is_ipv4() != addr.is_ipv4() {
                        return Err(ApiError::bad(format!(
                            "forward.addr {addr} and rule address {} are of different IP families",
                            rule.addr
                        )));
                    }
                }
            }
            ForwardModeSpec::SameIp => {
                if fwd.addr.is_some() {
                    return Err(ApiError::bad(
                        "forward.addr does not apply in same-ip mode (the address stays)",
                    ));
                }
                if fwd.next_hop_mac.is_none() && fwd.next_hop.is_none() {
                    return Err(ApiError::bad(
                        "same-ip mode needs forward.next_hop_mac or forward.next_hop (the service's own address is local here)",
                    ));
                }
            }
        }
    }
    if let Some(limit) = spec.park_limit
        && (limit.frames == 0 || limit.bytes == 0)
    {
        return Err(ApiError::bad(
            "park_limit frames and bytes must be at least 1",
        ));
    }
    Ok(())
}

fn l4(p: RuleProto) -> u8 {
    match p {
        RuleProto::Udp | RuleProto::Quic => 17,
        RuleProto::Tcp | RuleProto::Mptcp => 6,
    }
}

/// IP protocol number of a rule's transport.
pub fn rule_ip_proto(p: RuleProto) -> u8 {
    l4(p)
}

pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad(format!(
            "service name must be 1..={MAX_NAME_LEN} characters"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::bad(format!(
            "service name {name:?} may only contain letters, digits, '-', '_' and '.'"
        )));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::bad(format!(
            "service name {name:?} must not be all digits (it would read as an id)"
        )));
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        *slot = u8::from_str_radix(part, 16)
            .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
