//! Map keys, values and indices shared by the XDP program and the agent.
//! The maps themselves are declared (and documented) in `migr-ebpf`.

/// Index into the `PROTO_COUNTERS` per-CPU array: what kind of packet was seen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoClass {
    NonIp = 0,
    Udp = 1,
    Tcp = 2,
    Icmp = 3,
    OtherIp = 4,
}

impl ProtoClass {
    pub const COUNT: u32 = 5;
    pub const ALL: [ProtoClass; Self::COUNT as usize] =
        [Self::NonIp, Self::Udp, Self::Tcp, Self::Icmp, Self::OtherIp];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NonIp => "non-ip",
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Icmp => "icmp",
            Self::OtherIp => "other-ip",
        }
    }

    /// Classifies an IP protocol number (IPv4 protocol / IPv6 next header).
    pub const fn from_ip_proto(proto: u8) -> Self {
        match proto {
            17 => Self::Udp,
            6 => Self::Tcp,
            1 | 58 => Self::Icmp,
            _ => Self::OtherIp,
        }
    }
}
