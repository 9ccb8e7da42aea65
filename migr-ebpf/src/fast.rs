//! The fast path: `migr`'s own code. For a frame with plain headers
//! (Ethernet without a tag, IPv4 without options or IPv6 without extension
//! headers, then UDP, TCP with options in a shape [`known_options`] reads
//! (none; the timestamps alone; a Linux SYN's; either followed by one MPTCP
//! option), or another protocol), all in the frame's linear part, the
//! headers are read in place, with direct packet access through
//! `network-types`' header layouts:
//!
//! - a frame no table can claim (the common case on an edge node) is counted
//!   and passed at once, with no BPF call (the fast path is inlined into the
//!   program: on the bench machine two calls cost 16 ns, docs/benchmarks.md);
//! - a frame a listener or a learned flow claims is decided in [`claim`],
//!   with the lookup stage's own functions (`listener_service`,
//!   `mptcp_stage`) on the headers read in place, and its PARK or FORWARD is
//!   carried out there too, as `finish` would (its tag look, the final
//!   action, the counters);
//! - a frame with something to report (an MP_JOIN to learn, MP_CAPABLE keys)
//!   is classified by `migr_common::classify::lookup_stage` on the headers
//!   parsed in place ([`migr_lookup_known`]), without the header copy and the
//!   parse stage, and `finish` reports it.
//!
//! Everything else goes to the full classifier, `migr_full` (main.rs), by a
//! tail call: VLAN tags, IP options, extension headers, TCP options of
//! other shapes, IP packets that go on into XDP fragments. What the fast
//! path decides, it decides exactly as `migr_common::classify` would, with
//! the same counters (but one crafted frame, see [`fast_path`]); the
//! datapath corpus and storm tests compare both on every frame.

use core::cell::Cell;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::generated::bpf_xdp_get_buff_len,
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use migr_common::{
    classify::{
        Classification, Reasons, Report, Tables, classified_action, family_tag, listener_service,
        lookup_stage, mptcp_stage, reset_parsed, service_final_action, settled_action,
    },
    maps::{
        Action, FlowKey, LISTENERS_ONLY, ListenerEntry, ListenerKey, NO_SERVICE, ProtoClass,
        Reason, ServiceEntry, Verdict, port_listener_index,
    },
    rewrite::{Headers, Transport},
    wire::{
        packet::{IpFamily, L4Info, PacketInfo, TcpInfo},
        tcp::{OptionRef, TCPOPT_EOL, TCPOPT_MPTCP, TCPOPT_NOP},
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    FLOW_PORTS, FLOWS, LISTENER_SLOTS, LISTENERS, LiveFrame, MapTables, PORT_LISTENERS, SERVICES,
    breakdown::stop, count_and_log, count_proto_class, count_reason, count_reasons, count_verdict,
    forward_now, forward_outcome, in_place::InPlace, park_outcome, take_replayed_tag,
};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv4 flags and fragment offset: MF and the offset mark a fragment.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// Reads a field of a header that [`header`] returned.
macro_rules! field {
    ($header:expr, $field:ident) => {
        // SAFETY: `header` proved the whole header is in the frame; the read
        // is unaligned, like the frame's fields.
        unsafe { core::ptr::addr_of!((*$header).$field).read_unaligned() }
    };
}

mod claim;
mod lookup;
mod tcp_options;

use claim::{Claim, claim};
pub use lookup::lookup_known;
use tcp_options::known_options;

/// What [`fast_path`] did with the frame.
pub enum Fast {
    /// Counted; the caller passes it.
    Passed,
    /// Counted, and acted on if it is a PARK or a FORWARD: the caller returns
    /// this XDP action.
    Decided(u32),
    /// Parsed into [`FAST_PARSED`]; the lookup stage is next ([`migr_lookup_known`]).
    Lookup,
    /// Needs the full classifier.
    Slow,
}

/// What [`quick_parse`] found.
enum Quick {
    /// No service can own the frame: pass it, counted under this class (and
    /// reason, for a frame that is not IP or does not parse).
    Pass(ProtoClass, Option<Reason>),
    /// UDP, or TCP with options [`known_options`] reads, whose headers are
    /// all there and consistent.
    Plain(Plain),
    Slow,
}

/// What [`quick_parse`] learnt of a plain UDP or TCP frame: enough to decide
/// whether a table may claim it; [`packet_info`] reads the rest if one may.
#[derive(Clone, Copy)]
struct Plain {
    family: IpFamily,
    proto: u8,
    /// TCP's header length: 20, 32 with [`TIMESTAMPS_ONLY`] options, or
    /// another length [`known_options`] reads.
    tcp_header_len: u8,
    /// TCP's flags (byte 13 of its header).
    tcp_flags: u8,
    /// TCP's MPTCP option ([`known_options`]): its offset and length, length
    /// 0 for none. Not an `Option`: copied, a `None`'s undefined payload
    /// let LLVM store whatever register it liked, a packet pointer once,
    /// which the verifier refused.
    mptcp_offset: u16,
    mptcp_len: u8,
    /// Bytes from the transport header to the end of the IP packet.
    l4_len: u16,
    dst_port: u16,
}

impl Plain {
    /// Where its headers sit, for a FORWARD.
    #[inline(always)]
    fn headers(&self) -> Headers {
        Headers {
            family: self.family,
            ip_proto: self.proto,
            l3_offset: EthHdr::LEN as u16,
            l4_offset: match self.family {
                IpFamily::V4 => IPV4_L4,
                IpFamily::V6 => IPV6_L4,
            } as u16,
            transport: Some(if self.proto == IPPROTO_UDP {
                Transport::Udp
            } else {
                Transport::Tcp
            }),
        }
    }

    #[inline(always)]
    fn mptcp(&self) -> Option<OptionRef> {
        (self.mptcp_len != 0).then_some(OptionRef {
            offset: self.mptcp_offset,
            len: self.mptcp_len,
        })
    }
}

/// A frame [`fast_path`] parsed, for [`migr_lookup_known`].
pub struct FastParsed {
    plain: Plain,
    /// The frame's length: its linear part's (see [`fast_path`]).
    len: u32,
    /// The frame's listener entry; service id [`NO_SERVICE`]: none.
    listener: ListenerEntry,
    /// The service of the frame's learned flow; [`NO_SERVICE`]: none.
    flow: u32,
    /// The `SERVER_IDS` lookup [`claim`] made (the server id, its owner), so
    /// that the lookup stage does not make it again.
    server_id: Option<(u32, Option<u32>)>,
    /// What [`claim`] found of a frame it decided ([`Claim::Decided`]): in
    /// the slot, as the call returns one register.
    decided: Decided,
    /// [`claim`]'s keys, built here rather than on its stack: with them on
    /// the stack, its frame took 464 bytes, and Linux 6.1 adds `migr`'s.
    listener_key: ListenerKey,
    flow_key: FlowKey,
}

/// What [`claim`] decided for a frame, for [`fast_path`] to count.
#[derive(Clone, Copy)]
struct Decided {
    service_id: u32,
    /// The reasons to count (bits).
    reasons: u32,
    /// None: a FORWARD handed to `migr_tc`, which counts it.
    verdict: Option<Verdict>,
    /// The XDP action.
    xdp: u32,
}

/// Per-CPU scratch: [`fast_path`] and [`migr_lookup_known`] run one after the
/// other in one run of the program.
#[map]
static FAST_PARSED: PerCpuArray<FastParsed> = PerCpuArray::with_max_entries(1, 0);

/// Decides or parses the frame if it can (see the module). Inlined into the
/// program: a BPF call costs several ns, on every frame.
///
/// `STOP` is the stage a cost-breakdown copy stops after (`breakdown.rs`);
/// such a copy passes the frame uncounted.
///
/// The frame's length is its linear part's, `data_end - data` (a subtraction
/// of two packet pointers, which the verifier allows a privileged loader), not
/// `bpf_xdp_get_buff_len`'s: that helper call was 9-10 of the 16 ns a
/// pass-through cost. Of a multi-buffer frame (XDP fragments) only a linear
/// part is seen, so the fast path decides an IP frame only if its whole IP
/// packet lies in the linear part, and asks the helper for a non-IP frame's
/// length. The one frame it counts short: an IP packet in the linear part
/// followed by more than a buffer's worth of bytes that are not IP, in
/// fragments (only a crafted frame: a NIC pads frames under 60 bytes only,
/// within the first buffer).
#[inline(always)]
pub fn fast_path<const STOP: u32>(ctx: *mut xdp_md) -> Fast {
    let (start, end) = data(ctx);
    // Opaque to LLVM, so that the checks against it stay arithmetic on a
    // scalar, not on `data_end` (which the verifier refuses).
    let frame_len = core::hint::black_box(end - start);
    let mut len = frame_len as u64;
    let quick = quick_parse(start, end, frame_len);
    if STOP == stop::HEADERS {
        return Fast::Passed;
    }
    // A frame decided here is counted under its class, the reason
    // `quick_parse` gave it, and the service and reasons `claim` found (if
    // it decided it).
    let mut decided = None;
    let (class, reason) = match quick {
        Quick::Pass(ProtoClass::NonIp, reason) => {
            // SAFETY: plain helper call on the program's context.
            len = unsafe { bpf_xdp_get_buff_len(ctx) };
            (ProtoClass::NonIp, reason)
        }
        Quick::Pass(class, reason) => (class, reason),
        Quick::Plain(plain) => {
            let flows = flow_port(plain.dst_port);
            let listener = port_listener(plain.dst_port, plain.proto);
            if STOP == stop::WORDS {
                return Fast::Passed;
            }
            // An MPTCP option can name a service by token, or be malformed.
            if listener != 0 || flows || plain.mptcp_len != 0 {
                match claim::<STOP>(ctx, &plain, len as u32, listener, flows) {
                    Claim::Unclaimed => {}
                    Claim::Decided => decided = FAST_PARSED.get(0).map(|parsed| parsed.decided),
                    Claim::Lookup => return Fast::Lookup,
                    Claim::Slow => return Fast::Slow,
                    Claim::Stop | Claim::Reentered => return Fast::Passed,
                }
            }
            (ProtoClass::from_ip_proto(plain.proto), None)
        }
        Quick::Slow => return Fast::Slow,
    };
    // A frame decided here is counted in the breakdown's counting stage.
    if STOP < stop::COUNTED {
        return Fast::Passed;
    }
    count_proto_class(class);
    if let Some(reason) = reason {
        count_reason(reason);
    }
    let Some(decided) = decided else {
        count_verdict(NO_SERVICE, Verdict::Pass, len);
        return Fast::Passed;
    };
    // As `finish` counts and logs a classified frame.
    count_reasons(decided.reasons);
    count_and_log(
        &XdpContext::new(ctx),
        decided.service_id,
        decided.verdict,
        len,
    );
    Fast::Decided(decided.xdp)
}

/// The length of the frame [`fast_path`] handed to [`migr_lookup_known`]
/// (`FAST_PARSED`): valid only in the run whose fast path returned
/// [`Fast::Lookup`].
#[inline(always)]
pub fn parsed_len() -> Option<u64> {
    FAST_PARSED.get(0).map(|parsed| u64::from(parsed.len))
}

/// May a learned flow have destination `port` (`FLOW_PORTS`)?
#[inline(always)]
pub fn flow_port(port: u16) -> bool {
    FLOW_PORTS
        .get(u32::from(port))
        .is_none_or(|mark| *mark != 0)
}

/// The `PORT_LISTENERS` entry of a UDP or TCP port
/// ([`migr_common::maps::PORT_LISTENERS_LEN`]): 0 if no listener has it.
#[inline(always)]
fn port_listener(port: u16, proto: u8) -> u32 {
    let Some(index) = port_listener_index(port, proto) else {
        return 0;
    };
    PORT_LISTENERS
        .get(index)
        .map_or(LISTENERS_ONLY, |entry| *entry)
}

/// The `L4Info` of the UDP header at `l4` (a frame's first, after its IP
/// header) to `dst_port`, as `parse_packet` gives it.
#[inline(always)]
fn udp_info(start: usize, end: usize, l4: usize, dst_port: u16) -> Option<L4Info> {
    let udp = header::<UdpHdr>(start, end, l4)?;
    Some(L4Info::Udp {
        src_port: be16(field!(udp, src)),
        dst_port,
        payload_offset: (l4 + UdpHdr::LEN) as u16,
        payload_len: be16(field!(udp, len)) - UdpHdr::LEN as u16,
    })
}

/// The context's `data` and `data_end`, read with volatile loads so that
/// they stay packet pointers for the verifier.
#[inline(always)]
fn data(ctx: *mut xdp_md) -> (usize, usize) {
    // SAFETY: `ctx` is the program's context.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data_end)) as usize,
        )
    }
}

/// A header of type `T` at `offset` (a constant), if the frame holds it all.
#[inline(always)]
fn header<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    // Opaque to LLVM, so that the check and the access use one register
    // (see `checked_pointer` in xdp_packet.rs).
    let at = core::hint::black_box(start + offset);
    if at + size_of::<T>() > end {
        return None;
    }
    Some(at as *const T)
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

const MALFORMED: Quick = Quick::Pass(ProtoClass::OtherIp, Some(Reason::Malformed));

/// `migr_common::wire::packet::parse_packet`'s checks for plain headers, with
/// its verdicts: a frame cut short or with an inconsistent length is
/// `Malformed` (class "other IP"), a fragment `Unsupported`, a non-IP
/// EtherType `NotIp`. Reads only what the checks need.
#[inline(always)]
fn quick_parse(start: usize, end: usize, len: usize) -> Quick {
    // A header not in the linear part: the frame may go on in fragments.
    let Some(eth) = header::<EthHdr>(start, end, 0) else {
        return Quick::Slow;
    };
    match u16::from_be(field!(eth, ether_type)) {
        ETHERTYPE_IPV4 => ipv4(start, end, len),
        ETHERTYPE_IPV6 => ipv6(start, end, len),
        // VLAN tags (802.1Q, 802.1ad, the old QinQ TPID) take the full parser.
        0x8100 | 0x88a8 | 0x9100 => Quick::Slow,
        _ => Quick::Pass(ProtoClass::NonIp, Some(Reason::NotIp)),
    }
}

const IPV4_L4: usize = EthHdr::LEN + Ipv4Hdr::LEN;
const IPV6_L4: usize = EthHdr::LEN + Ipv6Hdr::LEN;

#[inline(always)]
fn ipv4(start: usize, end: usize, len: usize) -> Quick {
    let Some(ip) = header::<Ipv4Hdr>(start, end, EthHdr::LEN) else {
        return Quick::Slow;
    };
    let vihl = field!(ip, vihl);
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return MALFORMED;
    }
    if vihl & 0x0f != 5 {
        return Quick::Slow; // options
    }
    let total = be16(field!(ip, tot_len)) as usize;
    if total < Ipv4Hdr::LEN {
        return MALFORMED;
    }
    if total > len - EthHdr::LEN {
        return Quick::Slow;
    }
    if be16(field!(ip, frags)) & IPV4_MF_AND_OFFSET != 0 {
        return Quick::Pass(ProtoClass::OtherIp, Some(Reason::Unsupported));
    }
    let l4_len = (total - Ipv4Hdr::LEN) as u16;
    transport(start, end, IpFamily::V4, field!(ip, proto), IPV4_L4, l4_len)
}

#[inline(always)]
fn ipv6(start: usize, end: usize, len: usize) -> Quick {
    let Some(ip) = header::<Ipv6Hdr>(start, end, EthHdr::LEN) else {
        return Quick::Slow;
    };
    if field!(ip, vcf)[0] >> 4 != 6 {
        return MALFORMED;
    }
    let payload = be16(field!(ip, payload_len));
    if payload as usize > len - IPV6_L4 {
        return Quick::Slow;
    }
    match field!(ip, next_hdr) {
        // Hop-by-Hop, Routing, Fragment, Destination Options: the full parser.
        0 | 43 | 44 | 60 => Quick::Slow,
        proto => transport(start, end, IpFamily::V6, proto, IPV6_L4, payload),
    }
}

/// Checks UDP, or TCP with options [`known_options`] reads, at `l4` (a
/// constant per family); the IP packet ends `l4_len` bytes later, inside the
/// frame.
#[inline(always)]
fn transport(
    start: usize,
    end: usize,
    family: IpFamily,
    proto: u8,
    l4: usize,
    l4_len: u16,
) -> Quick {
    let len = l4_len as usize;
    let mut tcp_header_len = 0;
    let mut tcp_flags = 0;
    let mut mptcp = None;
    let dst_port = match proto {
        IPPROTO_UDP => {
            if len < UdpHdr::LEN {
                return MALFORMED;
            }
            let Some(udp) = header::<UdpHdr>(start, end, l4) else {
                return MALFORMED;
            };
            let udp_len = be16(field!(udp, len)) as usize;
            if udp_len < UdpHdr::LEN || udp_len > len {
                return MALFORMED;
            }
            be16(field!(udp, dst))
        }
        IPPROTO_TCP => {
            if len < TcpHdr::LEN {
                return MALFORMED;
            }
            let Some(tcp) = header::<TcpHdr>(start, end, l4) else {
                return MALFORMED;
            };
            // The data offset: the high nibble of byte 12 (`TcpHdr`'s bitfield).
            let header_len = match field!(tcp, _bitfield_1).get(4, 4) {
                0..=4 => return MALFORMED,
                offset => offset as usize * 4,
            };
            if header_len > len {
                return Quick::Slow;
            }
            tcp_header_len = header_len;
            if header_len != TcpHdr::LEN {
                // Options: read here in the shapes most TCP has, else walked by the full parser.
                match known_options(start, end, l4, header_len) {
                    Some(option) => mptcp = option,
                    None => return Quick::Slow,
                }
            }
            tcp_flags = field!(tcp, _bitfield_1).get(8, 8) as u8;
            be16(field!(tcp, dest))
        }
        proto => return Quick::Pass(ProtoClass::from_ip_proto(proto), None),
    };
    Quick::Plain(Plain {
        family,
        proto,
        tcp_header_len: tcp_header_len as u8,
        tcp_flags,
        mptcp_offset: mptcp.map_or(0, |option: OptionRef| option.offset),
        mptcp_len: mptcp.map_or(0, |option: OptionRef| option.len),
        l4_len,
        dst_port,
    })
}
