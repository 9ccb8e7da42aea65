//! `migrctl service add`: its flags, and the service spec they make.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use clap::{Args, ValueEnum};
use migr_control::api::{
    self, CidSpec, ForwardModeSpec, ForwardSpec, MatchRule, ParkLimit, RuleProto, ServiceSpec,
};

use super::CtlError;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum ModeArg {
    AddressChanging,
    SameIp,
}

#[derive(Args)]
pub(super) struct AddArgs {
    /// Service id, 1..4095.
    #[arg(long, required_unless_present = "from_json")]
    id: Option<u32>,
    /// Service name (letters, digits, - _ .).
    #[arg(long, required_unless_present = "from_json")]
    name: Option<String>,
    /// Match UDP to IP:PORT (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    udp: Vec<SocketAddr>,
    /// Match TCP to IP:PORT (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    tcp: Vec<SocketAddr>,
    /// Match QUIC to IP:PORT, by server id (repeatable; needs --cid).
    #[arg(long, value_name = "IP:PORT")]
    quic: Vec<SocketAddr>,
    /// QUIC server id of this service (repeatable).
    #[arg(long = "server-id", value_name = "ID")]
    server_ids: Vec<u32>,
    /// QUIC CID layout: LEN,OFFSET,ID_LEN (CID length, server id offset, server id length).
    #[arg(long, value_name = "LEN,OFFSET,ID_LEN", value_parser = parse_cid)]
    cid: Option<CidSpec>,
    /// The QUIC server accepts a greased fixed bit (RFC 9287).
    #[arg(long)]
    quic_grease: bool,
    /// Match MPTCP to IP:PORT and learn its connections' tokens, so joins to any address follow (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    mptcp: Vec<SocketAddr>,
    /// Address-changing forward: the service's new IP:PORT (port 0 keeps the original).
    #[arg(long, value_name = "IP:PORT")]
    forward_to: Option<SocketAddr>,
    /// Egress interface toward the new node.
    #[arg(long, value_name = "IF")]
    forward_iface: Option<String>,
    /// MAC of the next hop (default: from the neighbour table).
    #[arg(long, value_name = "MAC")]
    next_hop_mac: Option<String>,
    /// IP of the next hop, for the neighbour-table lookup (default: the --forward-to address).
    #[arg(long, value_name = "IP")]
    next_hop: Option<IpAddr>,
    /// address-changing (new IP/port, checksums updated) or same-ip (only MACs change).
    #[arg(long, value_enum, default_value = "address-changing")]
    forward_mode: ModeArg,
    /// Bound of the parked-frame store, in frames (default: the agent's).
    #[arg(long)]
    park_limit_frames: Option<u64>,
    /// Bound of the parked-frame store, in bytes (default: the agent's).
    #[arg(long)]
    park_limit_bytes: Option<u64>,
    /// Default drain time of `done`, in milliseconds.
    #[arg(long)]
    drain_ms: Option<u64>,
    /// Pace of backlog replays in frames per second, 0 for unpaced (default: the agent's).
    #[arg(long)]
    replay_rate: Option<u64>,
    /// The container it runs in (the runtime's container id, or a short id
    /// of 12+ hex digits): `migrctl criu-hook` under runc or podman finds the
    /// service by it.
    #[arg(long, value_name = "ID")]
    container: Option<String>,
    /// When restored at its new node, announce the service's addresses
    /// there (gratuitous ARP / unsolicited NA, 5 rounds over 0.5 s): for
    /// same-IP moves on an L2 segment.
    #[arg(long)]
    announce: bool,
    /// Take the whole spec as JSON from FILE (or - for stdin), as in docs/control-api.md.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "name"])]
    from_json: Option<PathBuf>,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn parse_cid(s: &str) -> Result<CidSpec, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [len, offset, id_len] = parts[..] else {
        return Err(format!("{s:?}: expected LEN,OFFSET,ID_LEN, e.g. 8,1,2"));
    };
    let num = |p: &str| {
        p.trim()
            .parse::<u8>()
            .map_err(|_| format!("{s:?}: {p:?} is not a number 0..255"))
    };
    Ok(CidSpec {
        len: num(len)?,
        offset: num(offset)?,
        id_len: num(id_len)?,
    })
}

pub(super) fn add_spec(a: AddArgs) -> Result<ServiceSpec, CtlError> {
    if let Some(path) = a.from_json {
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(&path)
        }
        .map_err(|e| CtlError::usage(format!("reading {}: {e}", path.display())))?;
        return serde_json::from_str(&text)
            .map_err(|e| CtlError::usage(format!("{}: {e}", path.display())));
    }
    let mut rules = Vec::new();
    let plain = |proto, addrs: &[SocketAddr], rules: &mut Vec<MatchRule>| {
        for addr in addrs {
            rules.push(MatchRule {
                proto,
                addr: *addr,
                server_ids: Vec::new(),
                cid: None,
                grease: false,
            });
        }
    };
    plain(RuleProto::Udp, &a.udp, &mut rules);
    plain(RuleProto::Tcp, &a.tcp, &mut rules);
    plain(RuleProto::Mptcp, &a.mptcp, &mut rules);
    if a.quic.is_empty() && (!a.server_ids.is_empty() || a.cid.is_some() || a.quic_grease) {
        return Err(CtlError::usage(
            "--server-id, --cid and --quic-grease need a --quic address",
        ));
    }
    for addr in &a.quic {
        rules.push(MatchRule {
            proto: RuleProto::Quic,
            addr: *addr,
            server_ids: a.server_ids.clone(),
            cid: a.cid,
            grease: a.quic_grease,
        });
    }
    let forward = match (a.forward_iface, a.forward_to) {
        (None, None) if a.next_hop_mac.is_none() && a.next_hop.is_none() => None,
        (None, _) => {
            return Err(CtlError::usage(
                "a forward target needs --forward-iface (the egress interface toward the new node)",
            ));
        }
        (Some(iface), addr) => Some(ForwardSpec {
            mode: match a.forward_mode {
                ModeArg::AddressChanging => ForwardModeSpec::AddressChanging,
                ModeArg::SameIp => ForwardModeSpec::SameIp,
            },
            addr,
            iface,
            next_hop_mac: a.next_hop_mac,
            next_hop: a.next_hop,
        }),
    };
    let park_limit = match (a.park_limit_frames, a.park_limit_bytes) {
        (None, None) => None,
        (f, b) => Some(ParkLimit {
            frames: f.unwrap_or(65_536),
            bytes: b.unwrap_or(64 << 20),
        }),
    };
    let spec = ServiceSpec {
        id: a.id.unwrap_or(0),
        name: a.name.unwrap_or_default(),
        rules,
        forward,
        park_limit,
        drain_ms: a.drain_ms,
        replay_rate: a.replay_rate,
        container: a.container,
        announce: a.announce,
    };
    // Catch what the agent would refuse before sending (same checks).
    api::validate_spec(&spec).map_err(|e| CtlError::usage(e.message))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::ctl::{Cli, Command, EXIT_USAGE, ServiceCommand};

    #[test]
    fn cid_flags_parse() {
        assert_eq!(
            parse_cid("8,1,2").unwrap(),
            CidSpec {
                len: 8,
                offset: 1,
                id_len: 2
            }
        );
        assert!(parse_cid("8,1").is_err());
        assert!(parse_cid("8,x,2").is_err());
    }

    #[test]
    fn add_flags_become_a_spec() {
        let cli = Cli::try_parse_from([
            "migrctl",
            "service",
            "add",
            "--id",
            "4",
            "--name",
            "echo",
            "--udp",
            "10.0.0.2:7000",
            "--quic",
            "10.0.0.2:4433",
            "--server-id",
            "258",
            "--cid",
            "8,1,2",
            "--forward-to",
            "10.0.1.2:7000",
            "--forward-iface",
            "eth1",
            "--next-hop-mac",
            "02:00:00:00:00:01",
        ])
        .unwrap();
        let Command::Service(cmd) = cli.command else {
            panic!("not a service command")
        };
        let ServiceCommand::Add(a) = *cmd else {
            panic!("not add")
        };
        let spec = add_spec(*a).unwrap();
        assert_eq!(spec.rules.len(), 2);
        assert_eq!(spec.rules[1].server_ids, [258]);
        assert_eq!(spec.forward.unwrap().iface, "eth1");
        for bad in [
            vec![
                "migrctl",
                "service",
                "add",
                "--id",
                "4",
                "--name",
                "x",
                "--server-id",
                "1",
            ],
            vec![
                "migrctl",
                "service",
                "add",
                "--id",
                "4",
                "--name",
                "x",
                "--forward-to",
                "10.0.0.1:1",
            ],
            vec!["migrctl", "service", "add", "--id", "0", "--name", "x"],
        ] {
            let cli = Cli::try_parse_from(&bad).unwrap();
            let Command::Service(cmd) = cli.command else {
                panic!()
            };
            let ServiceCommand::Add(a) = *cmd else {
                panic!()
            };
            let e = add_spec(*a).unwrap_err();
            assert_eq!(e.code, EXIT_USAGE, "{bad:?}: {}", e.message);
        }
    }
}
