//! Map keys, values and indices shared by the XDP program and the agent.
//! The maps themselves are declared, and documented, in `migr-ebpf/src/main.rs`.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and is plain old
//! data, so the kernel and user space agree on its bytes.

use crate::cid::CidConfig;

/// Service ids are 1..MAX_SERVICES; 0 means "not a migrating service's packet".
pub const MAX_SERVICES: u32 = 4096;

/// The names of the datapath's maps. The XDP program declares each as a
/// `#[map]` static of that name (aya names a map after its static); the
/// agent opens and pins them by these names, and a unit test of migr-user
/// checks that the built object has every one.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const LISTENERS: &str = "LISTENERS";
    /// QUIC server ids at or above [`super::SMALL_SERVER_ID_LIMIT`] (a hash map).
    pub const SERVER_IDS: &str = "SERVER_IDS";
    /// QUIC server ids below [`super::SMALL_SERVER_ID_LIMIT`] (an array).
    pub const SMALL_SERVER_IDS: &str = "SMALL_SERVER_IDS";
    /// An LRU hash map: tokens of closed connections age out under churn.
    pub const TOKENS: &str = "TOKENS";
    /// An LRU hash map: subflows learned per token (see [`super::MAX_JOINS_PER_TOKEN`]).
    pub const JOINS_LEARNED: &str = "JOINS_LEARNED";
    /// An LRU hash map: learned flows age out under pressure.
    pub const FLOWS: &str = "FLOWS";
    pub const FORWARD_DEVICES: &str = "FORWARD_DEVICES";
    pub const SERVICE_COUNTERS: &str = "SERVICE_COUNTERS";
    pub const REASONS: &str = "REASONS";
    pub const PROTO_COUNTERS: &str = "PROTO_COUNTERS";
    pub const PARKED: &str = "PARKED";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    pub const REPLAY_SLOTS: &str = "REPLAY_SLOTS";
    pub const REPLAY_NEXT: &str = "REPLAY_NEXT";
    /// The destination ports a learned flow may have (see [`super::FLOW_PORTS_LEN`]).
    pub const FLOW_PORTS: &str = "FLOW_PORTS";
    /// A listener of each port and protocol (see [`super::port_listener_index`]).
    pub const PORT_LISTENERS: &str = "PORT_LISTENERS";
    /// The listeners `PORT_LISTENERS` names (see [`super::ListenerSlot`]).
    pub const LISTENER_SLOTS: &str = "LISTENER_SLOTS";
    /// Transient (one load's XDP and TC programs share it), not pinned.
    pub const TC_HANDOVERS: &str = "TC_HANDOVERS";
    /// The full classifier's programs, which `migr` tail-calls (see
    /// [`super::full_path`]). Pinned beside the links, not with the state
    /// maps: it holds programs, which every build replaces.
    pub const FULL_PATH: &str = "FULL_PATH";
    /// Frames the full path was not there to take (a per-CPU count; not pinned).
    pub const FULL_PATH_MISSED: &str = "FULL_PATH_MISSED";

    /// The maps that hold state across agent restarts: pinned in bpffs.
    pub const PINNED: [&str; 19] = [
        SERVICES,
        LISTENERS,
        SERVER_IDS,
        SMALL_SERVER_IDS,
        TOKENS,
        JOINS_LEARNED,
        FLOWS,
        FORWARD_DEVICES,
        SERVICE_COUNTERS,
        REASONS,
        PROTO_COUNTERS,
        PARKED,
        EVENTS,
        EVENT_BUDGET,
        REPLAY_SLOTS,
        REPLAY_NEXT,
        FLOW_PORTS,
        PORT_LISTENERS,
        LISTENER_SLOTS,
    ];
}

/// The slots of `FULL_PATH`. `migr` decides what its fast path can and
/// tail-calls the full classifier (`migr_full`) for the rest, and for the
/// agent's replay runs: as a program of its own, the full classifier's stack
/// (its parse stage takes 448 of the 512 bytes a call chain may use) no
/// longer limits `migr`'s. The bench's cut-short copies of `migr` tail-call
/// cut-short copies of `migr_full`, one slot each.
pub mod full_path {
    /// `migr_full`.
    pub const FULL: u32 = 0;
    /// `migr_full_upto_parsed` .. `migr_full_upto_decided`: slots 1 to 4.
    pub const FIRST_CUT: u32 = 1;
    pub const SLOTS: u32 = 5;
}

/// Default sizes of the datapath's tables: the XDP program declares its maps
/// with them, and the agent's `DatapathConfig` starts from them (it may
/// resize the ones it names before loading).
pub mod map_sizes {
    pub const LISTENERS: u32 = 4096;
    pub const SERVER_IDS: u32 = 65_536;
    pub const TOKENS: u32 = 65_536;
    pub const FLOWS: u32 = 65_536;
    /// Bytes of the park ring (a power of two, a multiple of the page size).
    pub const PARK_RING_BYTES: u32 = 16 << 20;
    pub const EVENT_RING_BYTES: u32 = 256 << 10;
}
/// Subflows learned from MP_JOIN SYNs per token at most. Linux lets a
/// connection have 8 subflows at most (`max_subflows`); a token is learned
/// from a connection's keys, which a spoofed MP_CAPABLE can make up, and
/// without a bound the joins of one made-up token could flush `FLOWS`.
pub const MAX_JOINS_PER_TOKEN: u32 = 8;

/// QUIC server ids below this (those of 1 or 2 bytes, the size small
/// deployments pick) are kept in the `SMALL_SERVER_IDS` array, indexed by
/// server id, value the service id (0: none): an array lookup instead of a
/// hash lookup (about 20 ns on the bench machine) for every short-header
/// packet. Larger ids are in the `SERVER_IDS` hash map. An entry is one u32,
/// stored whole, so a reader never sees half an update.
pub const SMALL_SERVER_ID_LIMIT: u32 = 65_536;

/// Entries of the `FLOW_PORTS` array: one u32 (0 or 1) per destination port.
/// A port's entry is 1 once some learned flow (`FLOWS`) may have that
/// destination port: set by the agent before it writes such a flow and by the
/// program before it learns one, so that the fast path looks up `FLOWS` only
/// for frames to a marked port. Never cleared while loaded (the program could
/// learn a flow between a check and a clear); a stale mark costs a lookup,
/// never a frame. One entry per port, not a bitmap: both writers store a
/// whole entry, so neither can overwrite the other's mark.
pub const FLOW_PORTS_LEN: u32 = 65_536;

/// Entries of the `PORT_LISTENERS` array: one u32 per port and protocol
/// (TCP, UDP), at [`port_listener_index`]. It says what a frame to that port
/// may belong to, so that the fast path looks up the `LISTENERS` hash map
/// (about 25 ns on the bench machine) only when it must:
///
/// - 0: no listener has the port and protocol;
/// - a slot of `LISTENER_SLOTS` (1..[`LISTENER_SLOTS_LEN`]): one of the
///   port's listeners, key and entry; a frame with that key is its, any other
///   frame is looked up in `LISTENERS`;
/// - [`LISTENERS_ONLY`]: look up `LISTENERS`.
///
/// The agent keeps it: it writes a slot before it names it here, and names
/// a slot only for a listener `LISTENERS` holds (or is about to: a new
/// listener's slot comes before its `LISTENERS` entry, so that no frame of
/// an existing listener is ever passed). A slot is never rewritten while
/// named; freed slots are taken again last (round robin), so that a reader
/// that found a slot just before it was replaced still reads it whole.
pub const PORT_LISTENERS_LEN: u32 = 2 * 65_536;
/// `PORT_LISTENERS`: look the frame up in `LISTENERS`.
pub const LISTENERS_ONLY: u32 = u32::MAX;
/// Slots of `LISTENER_SLOTS`; slot 0 is never used (it means "none").
pub const LISTENER_SLOTS_LEN: u32 = 4097;

/// The `PORT_LISTENERS` entry of a port and protocol (None: not TCP or UDP,
/// which no listener has).
pub const fn port_listener_index(port: u16, proto: u8) -> Option<u32> {
    match proto {
        6 => Some(2 * port as u32),
        17 => Some(2 * port as u32 + 1),
        _ => None,
    }
}

/// A value of `LISTENER_SLOTS`: a listener's `LISTENERS` key and entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerSlot {
    pub key: ListenerKey,
    pub entry: ListenerEntry,
}

/// Service id of traffic that belongs to no service.
pub const NO_SERVICE: u32 = 0;

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

/// What the datapath does with a service's packets. Written by the agent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Action {
    /// Deliver normally (the service runs here, or migr is not involved).
    #[default]
    Pass = 0,
    /// Copy the frame to user space and drop the original (the service is frozen).
    Park = 1,
    /// Send the frame on to where the service lives now.
    Forward = 2,
    /// Drop (only by explicit operator policy).
    Drop = 3,
}

impl Action {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Pass),
            1 => Some(Self::Park),
            2 => Some(Self::Forward),
            3 => Some(Self::Drop),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Park => "park",
            Self::Forward => "forward",
            Self::Drop => "drop",
        }
    }
}

/// How FORWARD rewrites a frame.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// New destination IP and port (QUIC/MPTCP migrations to a new address),
    /// with incremental checksum updates, plus the MAC rewrite.
    #[default]
    AddressChanging = 0,
    /// Same IP at a new place (the COAT case): only the MACs change.
    SameIp = 1,
}

impl ForwardMode {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AddressChanging),
            1 => Some(Self::SameIp),
            _ => None,
        }
    }
}

/// Address family tag used in keys (values of `AF_INET`/`AF_INET6` would tie us to libc).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Where a service's packets go when it has left this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ForwardTarget {
    /// New destination address (IPv4 in the first 4 bytes); used in address-changing mode.
    pub addr: [u8; 16],
    /// New destination port, host order; 0 keeps the original port.
    pub port: u16,
    /// [`ForwardMode`] as u8.
    pub mode: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; must match the packet's family.
    pub family: u8,
    /// Destination MAC: the next hop toward the new node.
    pub dst_mac: [u8; 6],
    /// Source MAC: the egress interface's own.
    pub src_mac: [u8; 6],
    /// Egress interface. On the XDP path the `FORWARD_DEVICES` DEVMAP holds it
    /// under the service id, and when it equals the ingress interface the
    /// frame leaves with XDP_TX; on the TC path `migr_tc` redirects to it.
    pub ifindex: u32,
    /// [`ForwardPath`] as u8.
    pub path: u8,
    pub _pad: [u8; 3],
}

/// How a FORWARD leaves the node. The agent picks it per egress device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum ForwardPath {
    /// The XDP program rewrites the frame and sends it with XDP_TX or a
    /// DEVMAP redirect. Right for physical NICs in native mode: they transmit
    /// XDP frames on their own TX ring, and frames from the wire carry full
    /// checksums.
    #[default]
    Xdp = 0,
    /// The XDP program passes the frame with a [`ForwardMeta`] in front of
    /// it; the `migr_tc` program at the same device's TC ingress rewrites it
    /// with the kernel's checksum helpers (which honour a partial checksum
    /// the sender left for offload) and redirects it to the egress device's
    /// transmit path. Needed wherever XDP_TX and redirected XDP frames are
    /// lost: a veth whose peer runs no XDP program, generic (skb) mode.
    Tc = 1,
}

impl ForwardPath {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Xdp),
            1 => Some(Self::Tc),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        }
    }
}

/// XDP metadata with which the XDP program hands a FORWARD to `migr_tc`
/// ([`ForwardPath::Tc`]): which service, and where the headers start (the
/// frame was parsed once already). Only privileged code can attach XDP
/// metadata, so frames from the wire never carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ForwardMeta {
    /// [`FORWARD_META_MAGIC`].
    pub magic: u32,
    pub service_id: u32,
    /// PacketBytes offsets of the IP and the UDP/TCP header.
    pub l3_offset: u16,
    pub l4_offset: u16,
    /// 4 or 6 (as [`FAMILY_V4`], [`FAMILY_V6`]).
    pub family: u8,
    /// 17 (UDP) or 6 (TCP).
    pub ip_proto: u8,
    pub _pad: [u8; 2],
}

/// `ForwardMeta::magic` ("mgfw" little-endian).
pub const FORWARD_META_MAGIC: u32 = 0x7766_676d;

/// A CPU's last FORWARD hand-over to `migr_tc`, the way that works in skb
/// (generic) mode: there the [`ForwardMeta`] the XDP program puts in the
/// metadata does not reach the TC program (on Linux 6.18 it finds metadata of
/// the right length holding other bytes), but the TC hook runs right after
/// the XDP hook, for the same skb, on the same CPU. The TC program takes the
/// hand-over only if the frame is this one (its length and the first bytes of
/// its L4 header: ports, and the UDP checksum or the TCP sequence number), so
/// a hand-over that never reached TC cannot apply to another frame. In native
/// mode the metadata arrives and this slot is not needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcHandover {
    pub meta: ForwardMeta,
    /// The frame's length; 0: no hand-over pending.
    pub len: u32,
    /// The L4 header's first [`TC_HANDOVER_L4_BYTES`] bytes.
    pub l4_head: [u8; TC_HANDOVER_L4_BYTES],
    pub _pad: u32,
}

/// Bytes of the L4 header a [`TcHandover`] keeps to recognise its frame.
pub const TC_HANDOVER_L4_BYTES: usize = 8;

/// One entry of the `SERVICES` array (index = service id). Written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    /// [`Action`] as u32.
    pub action: u32,
    /// `SERVICE_*` flags.
    pub flags: u32,
    pub forward: ForwardTarget,
    /// The agent's lease on PARK and [`SERVICE_HOLD`], in `bpf_ktime_get_ns`
    /// time (CLOCK_MONOTONIC); 0: none. Both make frames wait for the agent,
    /// so the agent renews the lease while it runs; once it has passed (the
    /// agent died and no new one took over) the program fails open: PARK
    /// becomes PASS and the hold is ignored, counted as
    /// [`Reason::LeaseExpired`].
    pub lease_until_ns: u64,
}

/// The entry is configured (an all-zero entry means "no such service").
pub const SERVICE_ACTIVE: u32 = 1 << 0;
/// Report MP_CAPABLE keys seen on this service's flows and learn MP_JOIN subflows.
pub const SERVICE_MPTCP: u32 = 1 << 1;
/// Ordered hand-over after a replay: while set, a fresh frame whose action is
/// PASS or FORWARD is parked instead whenever the `PARKED` ring holds records
/// the agent has not consumed yet. The agent consumes a record of such a
/// service only after it has replayed it, so no fresh frame overtakes an
/// older parked one. Frames the agent replays (see [`ReplayMeta`]) are exempt.
pub const SERVICE_HOLD: u32 = 1 << 2;

/// XDP metadata that marks a BPF_PROG_TEST_RUN call (live frames) as one of
/// the agent's replay batches. Run `i` of such a call does not classify the
/// call's input frame: it takes the `i`-th frame the agent wrote into the
/// `REPLAY_SLOTS` map (the program counts runs in `REPLAY_NEXT`), makes the
/// frame those bytes, and classifies it with the slot's action (PASS or
/// FORWARD) instead of its service's current one, ignoring [`SERVICE_HOLD`].
/// The program strips the tag (the kernel restores each run's context before
/// the next run). Only privileged code can attach XDP metadata, so frames from
/// the wire never carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplayMeta {
    /// [`REPLAY_META_MAGIC`].
    pub magic: u32,
    pub _reserved: u32,
}

/// `ReplayMeta::magic` ("mgrp" little-endian).
pub const REPLAY_META_MAGIC: u32 = 0x7072_676d;

impl ReplayMeta {
    pub const fn is_replay(&self) -> bool {
        self.magic == REPLAY_META_MAGIC
    }

    /// The 8 bytes the agent puts in front of a replay batch's input frame.
    pub const fn to_bytes() -> [u8; 8] {
        let m = REPLAY_META_MAGIC.to_le_bytes();
        [m[0], m[1], m[2], m[3], 0, 0, 0, 0]
    }
}

/// The XDP metadata a replayed frame leaves with when the program passes it
/// (into the stack, or to `migr_tc` for a FORWARD), immediately in front of
/// the frame (after any [`ForwardMeta`]). In skb (generic) mode the kernel
/// turns a passed live frame into an skb received on the interface and runs
/// the hook on it again, where the metadata is not in view but its bytes are
/// still in the headroom: the program looks there, for frames of a service
/// only, and passes a tagged frame as it is (counted `replay_reentered`)
/// instead of parking it again behind the backlog it belongs to (a loop) or
/// forwarding it twice. `len` (the frame's length) makes a stale tag left in
/// a recycled buffer useless for another frame; the program clears a tag it
/// has read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplayedTag {
    /// [`REPLAYED_TAG_MAGIC`].
    pub magic: u32,
    pub len: u32,
}

/// `ReplayedTag::magic` ("mgrd" little-endian).
pub const REPLAYED_TAG_MAGIC: u32 = 0x6472_676d;

impl ReplayedTag {
    pub const fn new(len: u32) -> Self {
        Self {
            magic: REPLAYED_TAG_MAGIC,
            len,
        }
    }

    /// Is this the tag of a frame `len` bytes long?
    pub const fn marks(&self, len: u32) -> bool {
        self.magic == REPLAYED_TAG_MAGIC && self.len == len
    }
}

/// Frames the agent replays in one BPF_PROG_TEST_RUN call at most (the
/// kernel takes at most 256 live frames per batch): the size of the
/// `REPLAY_SLOTS` this build creates. Maps pinned by builds before it hold
/// 64; the agent sizes its batches by the map it has.
pub const REPLAY_BATCH: u32 = 256;
/// Largest frame a replay slot holds. A live frame must fit one page with the
/// kernel's headroom and shared info: 3408 bytes with 4 KiB pages on x86-64,
/// minus the tag.
pub const REPLAY_FRAME_MAX: usize = 3400;

/// One frame of a replay batch, written by the agent into `REPLAY_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReplaySlot {
    /// PacketBytes length, 1..=[`REPLAY_FRAME_MAX`].
    pub len: u32,
    /// [`Action`] as u32: `Pass` or `Forward`; anything else drops the frame (counted).
    pub action: u32,
    pub data: [u8; REPLAY_FRAME_MAX],
}

impl ReplaySlot {
    /// The action the agent asked for, if it is one a replay may take.
    pub const fn replay_action(&self) -> Option<Action> {
        match Action::from_u32(self.action) {
            Some(Action::Pass) => Some(Action::Pass),
            Some(Action::Forward) => Some(Action::Forward),
            _ => None,
        }
    }
}

/// Key of the `LISTENERS` hash: a service's address as clients reach it.
/// 4-byte aligned (its size, 20, is the same either way), so that the XDP
/// program builds its address a word at a time and compares two keys as
/// five words, not ten halves.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerKey {
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    /// IP protocol: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub family: u8,
}

/// Value of the `LISTENERS` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerEntry {
    /// The service behind this address (also for QUIC packets whose DCID
    /// carries no known server id, e.g. a client's first Initial).
    pub service_id: u32,
    /// `LISTENER_*` flags.
    pub flags: u32,
    /// Where the server id sits in this listener's CIDs (QUIC listeners only).
    pub cid: CidConfig,
}

/// UDP on this listener is QUIC: classify by the server id in the DCID.
pub const LISTENER_QUIC: u32 = 1 << 0;
/// The QUIC server accepts greased fixed bits (RFC 9287): a cleared fixed bit
/// is not malformed. quinn servers advertise this by default.
pub const LISTENER_QUIC_GREASE: u32 = 1 << 1;

/// Key of the `FLOWS` LRU hash: a transport 5-tuple, as received (client → service).
/// 4-byte aligned like [`ListenerKey`] (its size, 40, is the same either way):
/// the XDP program builds its addresses a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host order.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The client's address.
    pub fn src_ip(&self) -> core::net::IpAddr {
        self.ip(self.src_addr)
    }

    /// The service's address.
    pub fn dst_ip(&self) -> core::net::IpAddr {
        self.ip(self.dst_addr)
    }

    /// An address of this key's family (an IPv4 one is in the first 4 bytes).
    fn ip(&self, addr: [u8; 16]) -> core::net::IpAddr {
        if self.family == FAMILY_V4 {
            let [a, b, c, d, ..] = addr;
            core::net::IpAddr::from([a, b, c, d])
        } else {
            core::net::IpAddr::from(addr)
        }
    }
}

/// Per-verdict counters. Every packet the main program sees increments
/// exactly one of these, in the slot of the service it belongs to (slot
/// [`NO_SERVICE`] for everything else).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass = 0,
    Park = 1,
    Forward = 2,
    Drop = 3,
    /// Belonged to a parked service but could not be parked (ring full, oversize):
    /// dropped, and counted under a reason too.
    ParkFailed = 4,
    /// Belonged to a forwarding service but could not be forwarded: dropped and counted.
    ForwardFailed = 5,
}

impl Verdict {
    pub const COUNT: usize = 6;
    pub const ALL: [Verdict; Self::COUNT] = [
        Self::Pass,
        Self::Park,
        Self::Forward,
        Self::Drop,
        Self::ParkFailed,
        Self::ForwardFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Park => "park",
            Self::Forward => "forward",
            Self::Drop => "drop",
            Self::ParkFailed => "park_failed",
            Self::ForwardFailed => "forward_failed",
        }
    }
}

/// Value of the per-CPU `SERVICE_COUNTERS` array (index = service id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceCounters {
    pub packets: [u64; Verdict::COUNT],
    pub bytes: [u64; Verdict::COUNT],
}

/// Global per-reason counters (`REASONS` per-CPU array). A packet can add to
/// several (e.g. a malformed QUIC header that is still passed).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    NotIp = 0,
    /// L2-L4 headers cut short or inconsistent: passed untouched.
    Malformed = 1,
    /// Fragments, QinQ, too many IPv6 extension headers: passed untouched.
    Unsupported = 2,
    /// A QUIC packet on a QUIC listener whose header does not parse.
    QuicMalformed = 3,
    /// A QUIC short-header packet whose DCID holds no known server id.
    QuicUnknownServerId = 4,
    /// An MPTCP option that does not parse.
    MptcpMalformed = 5,
    /// An MP_JOIN SYN whose token no service owns.
    MptcpUnknownToken = 6,
    /// A frame too large to park, or to forward through the egress device's MTU.
    Oversize = 7,
    /// The park ring buffer was full.
    ParkOverflow = 8,
    /// FORWARD without a usable egress device in `FORWARD_DEVICES`.
    NoRedirectTarget = 9,
    /// FORWARD whose target does not fit the packet (family mismatch, bad mode).
    ForwardUnsupported = 10,
    /// An event for user space was dropped: the events ring was full.
    EventsDropped = 11,
    /// An event for user space was suppressed by the per-CPU rate limit.
    EventsRateLimited = 12,
    /// MP_CAPABLE keys reported to user space.
    MptcpKeysReported = 13,
    /// Subflow 5-tuples learned from MP_JOIN SYNs.
    FlowsLearned = 14,
    /// The frame's checksum could not be updated (not enough bytes visible).
    ChecksumUnreachable = 15,
    /// A frame the agent replayed (a run of a [`ReplayMeta`] batch).
    Replayed = 16,
    /// A fresh frame of a [`SERVICE_HOLD`] service parked behind unconsumed records.
    HeldBehindBacklog = 17,
    /// A replay run found no valid slot, or could not make the frame its bytes.
    ReplayFailed = 18,
    /// A FORWARD handed to the TC program ([`ForwardPath::Tc`]); the TC program
    /// counts the verdict when it has redirected the frame.
    ForwardViaTc = 19,
    /// A frame the agent replayed met the program again: in skb (generic) mode a
    /// passed frame is an skb received on the interface, and the hook runs on it
    /// once more. It carried a [`ReplayedTag`] and was passed as it is.
    ReplayReentered = 20,
    /// A frame of a parking or holding service passed because the agent's
    /// lease on the entry ([`ServiceEntry::lease_until_ns`]) had run out.
    LeaseExpired = 21,
    /// A frame to park longer than a replay can take ([`REPLAY_FRAME_MAX`]):
    /// passed instead, since it could never come back out of the ring.
    TooLargeToPark = 22,
    /// An MP_JOIN SYN of a token that has had [`MAX_JOINS_PER_TOKEN`]
    /// subflows learned already: not learned (classified by address only).
    JoinLimit = 23,
}

impl Reason {
    pub const COUNT: u32 = 24;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Self::NotIp,
        Self::Malformed,
        Self::Unsupported,
        Self::QuicMalformed,
        Self::QuicUnknownServerId,
        Self::MptcpMalformed,
        Self::MptcpUnknownToken,
        Self::Oversize,
        Self::ParkOverflow,
        Self::NoRedirectTarget,
        Self::ForwardUnsupported,
        Self::EventsDropped,
        Self::EventsRateLimited,
        Self::MptcpKeysReported,
        Self::FlowsLearned,
        Self::ChecksumUnreachable,
        Self::Replayed,
        Self::HeldBehindBacklog,
        Self::ReplayFailed,
        Self::ForwardViaTc,
        Self::ReplayReentered,
        Self::LeaseExpired,
        Self::TooLargeToPark,
        Self::JoinLimit,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::Malformed => "malformed",
            Self::Unsupported => "unsupported",
            Self::QuicMalformed => "quic_malformed",
            Self::QuicUnknownServerId => "quic_unknown_server_id",
            Self::MptcpMalformed => "mptcp_malformed",
            Self::MptcpUnknownToken => "mptcp_unknown_token",
            Self::Oversize => "oversize",
            Self::ParkOverflow => "park_overflow",
            Self::NoRedirectTarget => "no_redirect_target",
            Self::ForwardUnsupported => "forward_unsupported",
            Self::EventsDropped => "events_dropped",
            Self::EventsRateLimited => "events_rate_limited",
            Self::MptcpKeysReported => "mptcp_keys_reported",
            Self::FlowsLearned => "flows_learned",
            Self::ChecksumUnreachable => "checksum_unreachable",
            Self::Replayed => "replayed",
            Self::HeldBehindBacklog => "held_behind_backlog",
            Self::ReplayFailed => "replay_failed",
            Self::ForwardViaTc => "forward_via_tc",
            Self::ReplayReentered => "replay_reentered",
            Self::LeaseExpired => "lease_expired",
            Self::TooLargeToPark => "too_large_to_park",
            Self::JoinLimit => "join_limit",
        }
    }
}

/// Header of a record in the `PARKED` ring buffer; the frame's bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ParkedHeader {
    pub service_id: u32,
    /// Interface the frame arrived on.
    pub ifindex: u32,
    /// The frame's full length.
    pub frame_len: u32,
    /// Bytes copied after this header (== frame_len: oversize frames are not parked).
    pub copied: u32,
    /// `bpf_ktime_get_ns()` at arrival.
    pub timestamp_ns: u64,
}

/// Parked frames up to this size use a standard record.
pub const PARK_SMALL_MAX: usize = 1536;
/// Parked frames up to this size use a large record. Larger ones are not
/// parked at all: a replay could not send them (see [`Reason::TooLargeToPark`]).
pub const PARK_LARGE_MAX: usize = REPLAY_FRAME_MAX;

/// A `PARKED` ring record with room for frames of up to `N` bytes.
#[repr(C)]
pub struct ParkedRecord<const N: usize> {
    pub header: ParkedHeader,
    pub data: [u8; N],
}

/// Kind of an [`Event`] sent to user space through the `EVENTS` ring.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// MP_CAPABLE keys seen on a service's flow: user space derives the token.
    MptcpKeys = 1,
    /// A subflow 5-tuple was learned from an MP_JOIN SYN.
    FlowLearned = 2,
    /// An MP_JOIN SYN with a token no service has (yet): its 5-tuple and token.
    UnknownJoin = 3,
}

/// A report from the datapath to user space. The datapath never acts on
/// these itself beyond what is documented; user space decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// [`EventKind`] as u32.
    pub kind: u32,
    pub service_id: u32,
    pub flow: FlowKey,
    /// MP_CAPABLE: the sender's (client's) key; 0 if absent.
    pub sender_key: u64,
    /// MP_CAPABLE: the receiver's (server's) key; 0 if absent. Its token is what
    /// the client's MP_JOINs to this server carry.
    pub receiver_key: u64,
    /// MP_JOIN: the token the SYN carried.
    pub token: u32,
    pub _pad: u32,
}

/// Per-CPU budget of MPTCP key reports per window (rate limit against
/// floods). Key reports are what the agent needs to follow a migration's
/// MPTCP connections, so they have a budget of their own.
pub const EVENT_BUDGET_KEYS: u32 = 256;
/// Per-CPU budget of the other events (joins of unknown tokens, learned
/// flows) per window: a flood of joins to made-up tokens cannot use up the
/// key reports' budget.
pub const EVENT_BUDGET_OTHERS: u32 = 64;
pub const EVENT_WINDOW_NS: u64 = 100_000_000;

/// Value of the per-CPU `EVENT_BUDGET` array (one slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBudget {
    pub window_start_ns: u64,
    /// Key reports sent in this window.
    pub keys: u32,
    /// Other events sent in this window.
    pub others: u32,
}

impl EventBudget {
    /// Takes one event of `kind` from the budget at `now_ns`; false if the
    /// window's budget for that kind is spent.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, kind: EventKind) -> bool {
        if now_ns.wrapping_sub(self.window_start_ns) > EVENT_WINDOW_NS {
            *self = EventBudget {
                window_start_ns: now_ns,
                keys: 0,
                others: 0,
            };
        }
        let (used, limit) = match kind {
            EventKind::MptcpKeys => (&mut self.keys, EVENT_BUDGET_KEYS),
            EventKind::FlowLearned | EventKind::UnknownJoin => {
                (&mut self.others, EVENT_BUDGET_OTHERS)
            }
        };
        if *used >= limit {
            return false;
        }
        *used += 1;
        true
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), padding-free plain data.
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerEntry {}
    unsafe impl aya::Pod for ListenerSlot {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for ReplaySlot {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn a_flow_key_gives_its_client_address_by_family() {
        let mut v4 = FlowKey {
            family: FAMILY_V4,
            ..Default::default()
        };
        v4.src_addr[..4].copy_from_slice(&[10, 0, 0, 7]);
        assert_eq!(v4.src_ip(), core::net::IpAddr::from([10, 0, 0, 7]));
        let v6 = FlowKey {
            family: FAMILY_V6,
            src_addr: [0x20, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            ..Default::default()
        };
        assert_eq!(v6.src_ip(), core::net::IpAddr::from(v6.src_addr));
    }

    #[test]
    fn key_reports_and_other_events_have_budgets_of_their_own() {
        let mut b = EventBudget::default();
        let t = 1_000;
        for _ in 0..EVENT_BUDGET_OTHERS {
            assert!(b.take(t, EventKind::UnknownJoin));
        }
        assert!(!b.take(t, EventKind::UnknownJoin));
        assert!(
            !b.take(t, EventKind::FlowLearned),
            "one budget for the others"
        );
        for _ in 0..EVENT_BUDGET_KEYS {
            assert!(b.take(t, EventKind::MptcpKeys));
        }
        assert!(!b.take(t, EventKind::MptcpKeys));
        // A new window: both anew.
        let later = t + EVENT_WINDOW_NS + 1;
        assert!(b.take(later, EventKind::UnknownJoin));
        assert!(b.take(later, EventKind::MptcpKeys));
        assert_eq!((b.keys, b.others), (1, 1));
    }

    #[test]
    fn shared_types_have_no_implicit_padding() {
        assert_eq!(
            size_of::<ForwardTarget>(),
            16 + 2 + 1 + 1 + 6 + 6 + 4 + 1 + 3
        );
        assert_eq!(
            size_of::<ForwardMeta>(),
            16,
            "XDP metadata: a multiple of 4, at most 32"
        );
        assert_eq!(
            size_of::<ServiceEntry>(),
            8 + size_of::<ForwardTarget>() + 8
        );
        assert_eq!(size_of::<ListenerKey>(), 20);
        assert_eq!(size_of::<ListenerEntry>(), 12);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<ParkedHeader>(), 24);
        assert_eq!(size_of::<Event>(), 8 + 40 + 16 + 8);
        assert_eq!(size_of::<ReplayMeta>(), 8);
        assert_eq!(size_of::<ReplayedTag>(), 8);
        assert_eq!(size_of::<TcHandover>(), 32);
    }

    #[test]
    fn replay_tags_and_slots_decode() {
        let bytes = ReplayMeta::to_bytes();
        let meta = ReplayMeta {
            magic: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            _reserved: 0,
        };
        assert!(meta.is_replay());
        assert!(!ReplayMeta::default().is_replay());
        let mut slot = ReplaySlot {
            len: 60,
            action: 0,
            data: [0; REPLAY_FRAME_MAX],
        };
        for action in [Action::Pass, Action::Forward] {
            slot.action = action as u32;
            assert_eq!(slot.replay_action(), Some(action));
        }
        for action in [Action::Park as u32, Action::Drop as u32, 99] {
            slot.action = action;
            assert_eq!(slot.replay_action(), None);
        }
        assert_eq!(
            size_of::<ReplaySlot>() % 8,
            0,
            "array values stay 8-byte aligned"
        );
    }

    #[test]
    fn enums_round_trip() {
        for a in [Action::Pass, Action::Park, Action::Forward, Action::Drop] {
            assert_eq!(Action::from_u32(a as u32), Some(a));
        }
        assert_eq!(Action::from_u32(9), None);
        assert_eq!(ForwardMode::from_u8(1), Some(ForwardMode::SameIp));
        assert_eq!(ForwardMode::from_u8(2), None);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
    }
}
