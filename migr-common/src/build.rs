//! Frame builders for tests (host only: `cfg(test)` or feature `std`).
//!
//! ```ignore
//! // (needs feature `std`)
//! use migr_common::build::{FrameBuilder, quic, verify_checksums};
//! let frame = FrameBuilder::udp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 443)
//!     .vlan(10)
//!     .payload(&quic::short(&[1, 2, 3, 4, 5, 6, 7, 8], b"rest"))
//!     .build();
//! verify_checksums(&frame).unwrap();
//! ```
//!
//! Checksums are computed the plain way (sum every 16-bit word of pseudo
//! header and segment, fold, complement), independently of anything the XDP
//! program does, so [`verify_checksums`] can judge frames the kernel rewrote.
//! The builders panic on impossible requests (e.g. `.seq()` on a UDP frame,
//! more than 40 bytes of TCP options): they are test tools.

use std::format;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::string::String;
use std::vec::Vec;

pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

// ---------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------

/// RFC 1071 Internet checksum of `data`: the one's complement of the one's
/// complement sum of its 16-bit big-endian words (an odd last byte is padded
/// with zero). Over data that already holds a correct checksum, this is 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for pair in data.chunks(2) {
        let word = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            u16::from_be_bytes([pair[0], 0])
        };
        sum += word as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 pseudo header for TCP/UDP checksums (RFC 793 / RFC 768).
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src);
    p[4..8].copy_from_slice(&dst);
    p[9] = proto;
    p[10..12].copy_from_slice(&l4_len.to_be_bytes());
    p
}

/// The IPv6 pseudo header (RFC 8200 8.1).
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4_len: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0..16].copy_from_slice(&src);
    p[16..32].copy_from_slice(&dst);
    p[32..36].copy_from_slice(&l4_len.to_be_bytes());
    p[39] = next_header;
    p
}

/// Checksum of `pseudo` followed by `segment` (whose checksum field must be
/// zero when computing, or hold the checksum when verifying).
pub fn checksum_with_pseudo(pseudo: &[u8], segment: &[u8]) -> u16 {
    let mut all = Vec::with_capacity(pseudo.len() + segment.len());
    all.extend_from_slice(pseudo);
    all.extend_from_slice(segment);
    internet_checksum(&all)
}

/// TCP/UDP checksum over IPv4 (`segment` with its checksum field zeroed).
/// For UDP a computed 0 is sent as 0xffff (RFC 768).
pub fn l4_checksum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let pseudo = pseudo_header_v4(src, dst, proto, segment.len() as u16);
    let c = checksum_with_pseudo(&pseudo, segment);
    if proto == PROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// TCP/UDP/ICMPv6 checksum over IPv6 (`segment` with its checksum field zeroed).
pub fn l4_checksum_v6(src: [u8; 16], dst: [u8; 16], proto: u8, segment: &[u8]) -> u16 {
    let pseudo = pseudo_header_v6(src, dst, proto, segment.len() as u32);
    let c = checksum_with_pseudo(&pseudo, segment);
    if proto == PROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Where things are in a frame, as found by the independent walker below.
struct Layout {
    l3: usize,
    v4: bool,
    /// IPv4: header length; IPv6: 40.
    ip_header_len: usize,
    src: Vec<u8>,
    dst: Vec<u8>,
    proto: u8,
    l4: usize,
    ip_end: usize,
    fragment: bool,
}

fn be16(b: &[u8], at: usize) -> Result<u16, String> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(format!("frame too short for a 16-bit field at {at}")),
    }
}

fn layout(frame: &[u8]) -> Result<Layout, String> {
    let mut at = 12;
    let mut ethertype = be16(frame, at)?;
    // Any number of VLAN tags.
    while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
        at += 4;
        ethertype = be16(frame, at)?;
    }
    let l3 = at + 2;
    match ethertype {
        0x0800 => {
            let h = frame.get(l3..l3 + 20).ok_or("truncated IPv4 header")?;
            if h[0] >> 4 != 4 {
                return Err(format!("IPv4 version {}", h[0] >> 4));
            }
            let ihl = (h[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([h[2], h[3]]) as usize;
            if ihl < 20 || total < ihl || l3 + total > frame.len() {
                return Err(format!(
                    "IPv4 ihl {ihl} total {total} frame {}",
                    frame.len()
                ));
            }
            let frag = u16::from_be_bytes([h[6], h[7]]);
            Ok(Layout {
                l3,
                v4: true,
                ip_header_len: ihl,
                src: h[12..16].to_vec(),
                dst: h[16..20].to_vec(),
                proto: h[9],
                l4: l3 + ihl,
                ip_end: l3 + total,
                fragment: frag & 0x3fff != 0,
            })
        }
        0x86dd => {
            let h = frame.get(l3..l3 + 40).ok_or("truncated IPv6 header")?;
            if h[0] >> 4 != 6 {
                return Err(format!("IPv6 version {}", h[0] >> 4));
            }
            let ip_end = l3 + 40 + u16::from_be_bytes([h[4], h[5]]) as usize;
            if ip_end > frame.len() {
                return Err("IPv6 payload length past the frame".into());
            }
            let mut nh = h[6];
            let mut l4 = l3 + 40;
            let mut fragment = false;
            while matches!(nh, 0 | 43 | 44 | 60) {
                let e = frame.get(l4..l4 + 8).ok_or("truncated extension header")?;
                if nh == 43 && e[3] != 0 {
                    return Err("routing header with segments left: \
                                final destination not worked out"
                        .into());
                }
                if nh == 44 {
                    fragment = true;
                }
                let len = if nh == 44 { 8 } else { (e[1] as usize + 1) * 8 };
                nh = e[0];
                l4 += len;
                if l4 > ip_end {
                    return Err("extension header past the payload".into());
                }
            }
            Ok(Layout {
                l3,
                v4: false,
                ip_header_len: 40,
                src: h[8..24].to_vec(),
                dst: h[24..40].to_vec(),
                proto: nh,
                l4,
                ip_end,
                fragment,
            })
        }
        other => Err(format!("not IP: ethertype {other:#06x}")),
    }
}

/// Where the checksum field of `proto` sits in its header.
fn checksum_field(proto: u8, v4: bool) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        PROTO_ICMP if v4 => Some(2),
        PROTO_ICMPV6 if !v4 => Some(2),
        _ => None,
    }
}

fn l4_sum(lay: &Layout, segment: &[u8]) -> u16 {
    if lay.proto == PROTO_ICMP && lay.v4 {
        return internet_checksum(segment);
    }
    if lay.v4 {
        let pseudo = pseudo_header_v4(
            lay.src[..].try_into().unwrap(),
            lay.dst[..].try_into().unwrap(),
            lay.proto,
            segment.len() as u16,
        );
        checksum_with_pseudo(&pseudo, segment)
    } else {
        let pseudo = pseudo_header_v6(
            lay.src[..].try_into().unwrap(),
            lay.dst[..].try_into().unwrap(),
            lay.proto,
            segment.len() as u32,
        );
        checksum_with_pseudo(&pseudo, segment)
    }
}

/// Checks the IPv4 header checksum and the TCP / UDP (ICMP, ICMPv6) checksum
/// of an Ethernet frame (any number of VLAN tags). The UDP length must equal
/// the IP payload; an IPv4 UDP checksum of 0 ("none") is accepted, an IPv6 one
/// is not. Fragments get only their IPv4 header checked. IPv6 routing headers
/// with segments left are refused (the pseudo header would need the final
/// destination).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let lay = layout(frame)?;
    if lay.v4 {
        let header = &frame[lay.l3..lay.l3 + lay.ip_header_len];
        if internet_checksum(header) != 0 {
            return Err(format!(
                "IPv4 header checksum {:#06x} is wrong (want {:#06x})",
                u16::from_be_bytes([header[10], header[11]]),
                {
                    let mut h = header.to_vec();
                    h[10] = 0;
                    h[11] = 0;
                    internet_checksum(&h)
                }
            ));
        }
    }
    if lay.fragment {
        return Ok(());
    }
    let Some(field) = checksum_field(lay.proto, lay.v4) else {
        return Ok(());
    };
    let segment = &frame[lay.l4..lay.ip_end];
    if segment.len() < field + 2 {
        return Err(format!(
            "protocol {} segment of {} bytes has no checksum field",
            lay.proto,
            segment.len()
        ));
    }
    let stored = u16::from_be_bytes([segment[field], segment[field + 1]]);
    if lay.proto == PROTO_UDP {
        let udp_len = u16::from_be_bytes([segment[4], segment[5]]) as usize;
        if udp_len != segment.len() {
            return Err(format!(
                "UDP length {udp_len} but IP payload {}",
                segment.len()
            ));
        }
        if stored == 0 {
            return if lay.v4 {
                Ok(())
            } else {
                Err("UDP over IPv6 without a checksum".into())
            };
        }
    }
    if l4_sum(&lay, segment) != 0 {
        let mut zeroed = segment.to_vec();
        zeroed[field] = 0;
        zeroed[field + 1] = 0;
        let mut want = l4_sum(&lay, &zeroed);
        if lay.proto == PROTO_UDP && want == 0 {
            want = 0xffff;
        }
        return Err(format!(
            "protocol {} checksum {stored:#06x} is wrong (want {want:#06x})",
            lay.proto
        ));
    }
    Ok(())
}

/// Rewrites the IPv4 header checksum and the TCP / UDP / ICMP checksum of a
/// frame in place (after a test mutated it, say). Same coverage as
/// [`verify_checksums`].
pub fn fix_checksums(frame: &mut [u8]) -> Result<(), String> {
    let lay = layout(frame)?;
    if lay.v4 {
        let header = &mut frame[lay.l3..lay.l3 + lay.ip_header_len];
        header[10] = 0;
        header[11] = 0;
        let c = internet_checksum(header);
        header[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if lay.fragment {
        return Ok(());
    }
    let Some(field) = checksum_field(lay.proto, lay.v4) else {
        return Ok(());
    };
    let segment = &mut frame[lay.l4..lay.ip_end];
    if segment.len() < field + 2 {
        return Err("segment too short for its checksum field".into());
    }
    segment[field] = 0;
    segment[field + 1] = 0;
    let mut c = l4_sum(&lay, segment);
    if lay.proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    segment[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Ipv4Spec {
    src: [u8; 4],
    dst: [u8; 4],
    tos: u8,
    id: u16,
    ttl: u8,
    df: bool,
    mf: bool,
    frag_offset: u16,
    options: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Ipv6Spec {
    src: [u8; 16],
    dst: [u8; 16],
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
    /// (header type, bytes after the next-header and length bytes).
    ext: Vec<(u8, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum Net {
    Raw { ethertype: u16 },
    V4(Ipv4Spec),
    V6(Ipv6Spec),
}

#[derive(Clone, Debug)]
struct TcpSpec {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    urgent: u16,
    options: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Transport {
    /// Raw protocol number: the payload follows the IP header as is.
    Raw(u8),
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp(TcpSpec),
}

/// Builds an Ethernet frame layer by layer, with correct lengths and checksums.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    tags: Vec<(u16, u16)>,
    net: Net,
    transport: Transport,
    payload: Vec<u8>,
    trailer: Vec<u8>,
}

impl FrameBuilder {
    fn new(net: Net, transport: Transport) -> Self {
        Self {
            dst_mac: DEFAULT_DST_MAC,
            src_mac: DEFAULT_SRC_MAC,
            tags: Vec::new(),
            net,
            transport,
            payload: Vec::new(),
            trailer: Vec::new(),
        }
    }

    fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Net {
        Net::V4(Ipv4Spec {
            src: src.octets(),
            dst: dst.octets(),
            tos: 0,
            id: 0x1234,
            ttl: 64,
            df: false,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
        })
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> Net {
        Net::V6(Ipv6Spec {
            src: src.octets(),
            dst: dst.octets(),
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            ext: Vec::new(),
        })
    }

    fn tcp(sport: u16, dport: u16) -> Transport {
        Transport::Tcp(TcpSpec {
            sport,
            dport,
            seq: 1,
            ack: 0,
            flags: 0x10,
            window: 65535,
            urgent: 0,
            options: Vec::new(),
        })
    }

    /// A non-IP frame: Ethernet header, `ethertype`, then the payload.
    pub fn ethernet(ethertype: u16) -> Self {
        Self::new(Net::Raw { ethertype }, Transport::Raw(0))
    }

    /// IPv4 carrying protocol `proto`; the payload follows the IP header.
    pub fn ipv4(src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>, proto: u8) -> Self {
        Self::new(Self::v4(src.into(), dst.into()), Transport::Raw(proto))
    }

    /// IPv6 carrying `next_header` (after any extension headers added).
    pub fn ipv6(src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>, next_header: u8) -> Self {
        Self::new(
            Self::v6(src.into(), dst.into()),
            Transport::Raw(next_header),
        )
    }

    pub fn udp_v4(
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Self {
        Self::new(
            Self::v4(src.into(), dst.into()),
            Transport::Udp { sport, dport },
        )
    }

    pub fn udp_v6(
        src: impl Into<Ipv6Addr>,
        sport: u16,
        dst: impl Into<Ipv6Addr>,
        dport: u16,
    ) -> Self {
        Self::new(
            Self::v6(src.into(), dst.into()),
            Transport::Udp { sport, dport },
        )
    }

    /// TCP, flags ACK, seq 1, ack 0, window 65535 unless set.
    pub fn tcp_v4(
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Self {
        Self::new(Self::v4(src.into(), dst.into()), Self::tcp(sport, dport))
    }

    pub fn tcp_v6(
        src: impl Into<Ipv6Addr>,
        sport: u16,
        dst: impl Into<Ipv6Addr>,
        dport: u16,
    ) -> Self {
        Self::new(Self::v6(src.into(), dst.into()), Self::tcp(sport, dport))
    }

    // -- link layer ---------------------------------------------------------

    pub fn src_mac(mut self, mac: [u8; 6]) -> Self {
        self.src_mac = mac;
        self
    }

    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    /// Adds an 802.1Q tag with VLAN id `id` (priority 0).
    pub fn vlan(self, id: u16) -> Self {
        self.vlan_tag(0x8100, id & 0x0fff)
    }

    /// Adds a tag with any TPID and TCI; call twice for QinQ (outer first).
    pub fn vlan_tag(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push((tpid, tci));
        self
    }

    /// Bytes after the IP packet (link-layer padding), not counted in any length.
    pub fn trailer(mut self, bytes: &[u8]) -> Self {
        self.trailer = bytes.to_vec();
        self
    }

    /// The bytes after the last header (UDP/TCP payload, or after IP/Ethernet).
    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    // -- IP -----------------------------------------------------------------

    fn v4_spec(&mut self, what: &str) -> &mut Ipv4Spec {
        match &mut self.net {
            Net::V4(s) => s,
            _ => panic!("{what} needs an IPv4 frame"),
        }
    }

    fn v6_spec(&mut self, what: &str) -> &mut Ipv6Spec {
        match &mut self.net {
            Net::V6(s) => s,
            _ => panic!("{what} needs an IPv6 frame"),
        }
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match &mut self.net {
            Net::V4(s) => s.ttl = ttl,
            Net::V6(s) => s.hop_limit = ttl,
            Net::Raw { .. } => panic!("ttl needs an IP frame"),
        }
        self
    }

    /// IPv4 TOS or IPv6 traffic class.
    pub fn tos(mut self, tos: u8) -> Self {
        match &mut self.net {
            Net::V4(s) => s.tos = tos,
            Net::V6(s) => s.traffic_class = tos,
            Net::Raw { .. } => panic!("tos needs an IP frame"),
        }
        self
    }

    pub fn ip_id(mut self, id: u16) -> Self {
        self.v4_spec("ip_id").id = id;
        self
    }

    pub fn dont_fragment(mut self, df: bool) -> Self {
        self.v4_spec("dont_fragment").df = df;
        self
    }

    pub fn more_fragments(mut self, mf: bool) -> Self {
        self.v4_spec("more_fragments").mf = mf;
        self
    }

    /// IPv4 fragment offset in 8-byte units (13 bits).
    pub fn fragment_offset(mut self, offset: u16) -> Self {
        assert!(offset <= 0x1fff, "fragment offset is 13 bits");
        self.v4_spec("fragment_offset").frag_offset = offset;
        self
    }

    /// IPv4 options, zero-padded (EOL) to a multiple of 4; at most 40 bytes.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        let mut o = options.to_vec();
        while !o.len().is_multiple_of(4) {
            o.push(0);
        }
        assert!(o.len() <= 40, "IPv4 options are at most 40 bytes");
        self.v4_spec("ipv4_options").options = o;
        self
    }

    pub fn flow_label(mut self, label: u32) -> Self {
        self.v6_spec("flow_label").flow_label = label & 0xf_ffff;
        self
    }

    /// Appends an IPv6 extension header of type `kind` whose body (after the
    /// next-header and length bytes) is `body`, zero-padded to a multiple of 8
    /// bytes in all. The next-header chain is filled in by `build`.
    pub fn ipv6_ext(mut self, kind: u8, body: &[u8]) -> Self {
        let mut b = body.to_vec();
        while !(b.len() + 2).is_multiple_of(8) {
            b.push(0);
        }
        assert!((b.len() + 2) / 8 - 1 <= 255, "extension header too long");
        self.v6_spec("ipv6_ext").ext.push((kind, b));
        self
    }

    /// Appends an IPv6 Fragment header.
    pub fn ipv6_fragment(self, offset: u16, more: bool, id: u32) -> Self {
        assert!(offset <= 0x1fff, "fragment offset is 13 bits");
        let word = (offset << 3) | more as u16;
        let mut body = word.to_be_bytes().to_vec();
        body.extend_from_slice(&id.to_be_bytes());
        self.ipv6_ext(44, &body)
    }

    // -- TCP ----------------------------------------------------------------

    fn tcp_spec(&mut self, what: &str) -> &mut TcpSpec {
        match &mut self.transport {
            Transport::Tcp(t) => t,
            _ => panic!("{what} needs a TCP frame"),
        }
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_spec("seq").seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.tcp_spec("ack").ack = ack;
        self
    }

    /// TCP flags byte (FIN 0x01 .. CWR 0x80).
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_spec("flags").flags = flags;
        self
    }

    pub fn window(mut self, window: u16) -> Self {
        self.tcp_spec("window").window = window;
        self
    }

    pub fn urgent(mut self, urgent: u16) -> Self {
        self.tcp_spec("urgent").urgent = urgent;
        self
    }

    /// TCP options, exactly these bytes, zero-padded (EOL) to a multiple of 4;
    /// at most 40 bytes.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        let mut o = options.to_vec();
        while !o.len().is_multiple_of(4) {
            o.push(0);
        }
        assert!(o.len() <= 40, "TCP options are at most 40 bytes");
        self.tcp_spec("tcp_options").options = o;
        self
    }

    // -- output -------------------------------------------------------------

    fn proto(&self) -> u8 {
        match self.transport {
            Transport::Raw(p) => p,
            Transport::Udp { .. } => PROTO_UDP,
            Transport::Tcp(_) => PROTO_TCP,
        }
    }

    /// The transport header and payload, checksum field zero.
    fn segment(&self) -> (Vec<u8>, Option<usize>) {
        match &self.transport {
            Transport::Raw(_) => (self.payload.clone(), None),
            Transport::Udp { sport, dport } => {
                let len = 8 + self.payload.len();
                assert!(len <= 0xffff, "UDP datagram too long");
                let mut s = Vec::with_capacity(len);
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&(len as u16).to_be_bytes());
                s.extend_from_slice(&[0, 0]);
                s.extend_from_slice(&self.payload);
                (s, Some(6))
            }
            Transport::Tcp(t) => {
                let hlen = 20 + t.options.len();
                let mut s = Vec::with_capacity(hlen + self.payload.len());
                s.extend_from_slice(&t.sport.to_be_bytes());
                s.extend_from_slice(&t.dport.to_be_bytes());
                s.extend_from_slice(&t.seq.to_be_bytes());
                s.extend_from_slice(&t.ack.to_be_bytes());
                s.push(((hlen / 4) as u8) << 4);
                s.push(t.flags);
                s.extend_from_slice(&t.window.to_be_bytes());
                s.extend_from_slice(&[0, 0]);
                s.extend_from_slice(&t.urgent.to_be_bytes());
                s.extend_from_slice(&t.options);
                s.extend_from_slice(&self.payload);
                (s, Some(16))
            }
        }
    }

    /// The frame bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.tags {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        let proto = self.proto();
        let (mut segment, csum_at) = self.segment();
        match &self.net {
            Net::Raw { ethertype } => {
                out.extend_from_slice(&ethertype.to_be_bytes());
                out.extend_from_slice(&segment);
            }
            Net::V4(ip) => {
                if let Some(at) = csum_at {
                    let c = l4_checksum_v4(ip.src, ip.dst, proto, &segment);
                    segment[at..at + 2].copy_from_slice(&c.to_be_bytes());
                }
                let hlen = 20 + ip.options.len();
                let total = hlen + segment.len();
                assert!(total <= 0xffff, "IPv4 packet too long");
                let mut h = Vec::with_capacity(hlen);
                h.push(0x40 | (hlen / 4) as u8);
                h.push(ip.tos);
                h.extend_from_slice(&(total as u16).to_be_bytes());
                h.extend_from_slice(&ip.id.to_be_bytes());
                let frag = (ip.df as u16) << 14 | (ip.mf as u16) << 13 | ip.frag_offset;
                h.extend_from_slice(&frag.to_be_bytes());
                h.push(ip.ttl);
                h.push(proto);
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&ip.src);
                h.extend_from_slice(&ip.dst);
                h.extend_from_slice(&ip.options);
                let c = internet_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                out.extend_from_slice(&h);
                out.extend_from_slice(&segment);
            }
            Net::V6(ip) => {
                if let Some(at) = csum_at {
                    let c = l4_checksum_v6(ip.src, ip.dst, proto, &segment);
                    segment[at..at + 2].copy_from_slice(&c.to_be_bytes());
                }
                let mut ext = Vec::new();
                for (i, (_, body)) in ip.ext.iter().enumerate() {
                    let next = match ip.ext.get(i + 1) {
                        Some((k, _)) => *k,
                        None => proto,
                    };
                    ext.push(next);
                    ext.push(((body.len() + 2) / 8 - 1) as u8);
                    ext.extend_from_slice(body);
                }
                let first = match ip.ext.first() {
                    Some((k, _)) => *k,
                    None => proto,
                };
                let payload_len = ext.len() + segment.len();
                assert!(payload_len <= 0xffff, "IPv6 payload too long");
                let word = 0x6000_0000u32 | (ip.traffic_class as u32) << 20 | ip.flow_label;
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                out.extend_from_slice(&word.to_be_bytes());
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
                out.push(first);
                out.push(ip.hop_limit);
                out.extend_from_slice(&ip.src);
                out.extend_from_slice(&ip.dst);
                out.extend_from_slice(&ext);
                out.extend_from_slice(&segment);
            }
        }
        out.extend_from_slice(&self.trailer);
        out
    }
}

// ---------------------------------------------------------------------------
// TCP options
// ---------------------------------------------------------------------------

/// Common TCP options, each as its full bytes.
pub mod tcp_opt {
    use std::vec::Vec;

    pub fn nop() -> Vec<u8> {
        [1].to_vec()
    }

    pub fn eol() -> Vec<u8> {
        [0].to_vec()
    }

    pub fn mss(mss: u16) -> Vec<u8> {
        let m = mss.to_be_bytes();
        [2, 4, m[0], m[1]].to_vec()
    }

    pub fn wscale(shift: u8) -> Vec<u8> {
        [3, 3, shift].to_vec()
    }

    pub fn sack_permitted() -> Vec<u8> {
        [4, 2].to_vec()
    }

    pub fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
        let mut v = [8, 10].to_vec();
        v.extend_from_slice(&val.to_be_bytes());
        v.extend_from_slice(&ecr.to_be_bytes());
        v
    }
}

// ---------------------------------------------------------------------------
// MPTCP options
// ---------------------------------------------------------------------------

/// MPTCP options (RFC 8684), each as its full bytes (kind 30, length, ...).
pub mod mptcp {
    use std::vec::Vec;

    fn option(subtype: u8, low_nibble: u8, rest: &[u8]) -> Vec<u8> {
        let len = 3 + rest.len();
        assert!(len <= 40, "MPTCP option longer than the TCP option space");
        let mut v = Vec::with_capacity(len);
        v.push(30);
        v.push(len as u8);
        v.push((subtype << 4) | (low_nibble & 0x0f));
        v.extend_from_slice(rest);
        v
    }

    /// MP_CAPABLE on a SYN, RFC 8684 (length 4, no key).
    pub fn capable_syn(version: u8, flags: u8) -> Vec<u8> {
        option(0, version, &[flags])
    }

    /// MP_CAPABLE on a SYN, RFC 6824 style (length 12, the sender's key).
    pub fn capable_syn_with_key(version: u8, flags: u8, key: u64) -> Vec<u8> {
        let mut rest = [flags].to_vec();
        rest.extend_from_slice(&key.to_be_bytes());
        option(0, version, &rest)
    }

    /// MP_CAPABLE on a SYN/ACK (length 12).
    pub fn capable_synack(version: u8, flags: u8, key: u64) -> Vec<u8> {
        capable_syn_with_key(version, flags, key)
    }

    /// MP_CAPABLE on the third ACK (length 20).
    pub fn capable_ack(version: u8, flags: u8, sender_key: u64, receiver_key: u64) -> Vec<u8> {
        let mut rest = [flags].to_vec();
        rest.extend_from_slice(&sender_key.to_be_bytes());
        rest.extend_from_slice(&receiver_key.to_be_bytes());
        option(0, version, &rest)
    }

    /// MP_CAPABLE with data (length 22, or 24 with a checksum).
    pub fn capable_ack_data(
        version: u8,
        flags: u8,
        sender_key: u64,
        receiver_key: u64,
        data_len: u16,
        checksum: Option<u16>,
    ) -> Vec<u8> {
        let mut rest = [flags].to_vec();
        rest.extend_from_slice(&sender_key.to_be_bytes());
        rest.extend_from_slice(&receiver_key.to_be_bytes());
        rest.extend_from_slice(&data_len.to_be_bytes());
        if let Some(c) = checksum {
            rest.extend_from_slice(&c.to_be_bytes());
        }
        option(0, version, &rest)
    }

    /// MP_JOIN on a SYN (length 12).
    pub fn join_syn(backup: bool, addr_id: u8, token: u32, nonce: u32) -> Vec<u8> {
        let mut rest = [addr_id].to_vec();
        rest.extend_from_slice(&token.to_be_bytes());
        rest.extend_from_slice(&nonce.to_be_bytes());
        option(1, backup as u8, &rest)
    }

    /// MP_JOIN on a SYN/ACK (length 16).
    pub fn join_synack(backup: bool, addr_id: u8, hmac: u64, nonce: u32) -> Vec<u8> {
        let mut rest = [addr_id].to_vec();
        rest.extend_from_slice(&hmac.to_be_bytes());
        rest.extend_from_slice(&nonce.to_be_bytes());
        option(1, backup as u8, &rest)
    }

    /// MP_JOIN on the third ACK (length 24).
    pub fn join_ack(hmac: &[u8; 20]) -> Vec<u8> {
        let mut rest = [0u8].to_vec();
        rest.extend_from_slice(hmac);
        option(1, 0, &rest)
    }

    /// The mapping part of a DSS.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DssMapping {
        /// Written as 8 bytes with `Dss::dsn_8`, else its low 4 bytes.
        pub dsn: u64,
        pub subflow_seq: u32,
        pub data_len: u16,
        pub checksum: Option<u16>,
    }

    /// A DSS option. The flag bits are set exactly from these fields, so
    /// `data_ack_8` / `dsn_8` without the matching field give a stray flag.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Dss {
        /// Written as 8 bytes with `data_ack_8`, else its low 4 bytes.
        pub data_ack: Option<u64>,
        pub data_ack_8: bool,
        pub mapping: Option<DssMapping>,
        pub dsn_8: bool,
        pub data_fin: bool,
    }

    impl Dss {
        /// Every field present, 8-byte numbers, a checksum: the longest form (28).
        pub fn full() -> Self {
            Self {
                data_ack: Some(0x0102_0304_0506_0708),
                data_ack_8: true,
                mapping: Some(DssMapping {
                    dsn: 0x1112_1314_1516_1718,
                    subflow_seq: 0x2122_2324,
                    data_len: 1000,
                    checksum: Some(0xabcd),
                }),
                dsn_8: true,
                data_fin: true,
            }
        }
    }

    pub fn dss(d: &Dss) -> Vec<u8> {
        let flags = (d.data_ack.is_some() as u8)
            | (d.data_ack_8 as u8) << 1
            | (d.mapping.is_some() as u8) << 2
            | (d.dsn_8 as u8) << 3
            | (d.data_fin as u8) << 4;
        let mut rest = [flags].to_vec();
        if let Some(a) = d.data_ack {
            if d.data_ack_8 {
                rest.extend_from_slice(&a.to_be_bytes());
            } else {
                rest.extend_from_slice(&(a as u32).to_be_bytes());
            }
        }
        if let Some(m) = d.mapping {
            if d.dsn_8 {
                rest.extend_from_slice(&m.dsn.to_be_bytes());
            } else {
                rest.extend_from_slice(&(m.dsn as u32).to_be_bytes());
            }
            rest.extend_from_slice(&m.subflow_seq.to_be_bytes());
            rest.extend_from_slice(&m.data_len.to_be_bytes());
            if let Some(c) = m.checksum {
                rest.extend_from_slice(&c.to_be_bytes());
            }
        }
        option(2, 0, &rest)
    }

    /// ADD_ADDR: `addr` is 4 (IPv4) or 16 (IPv6) bytes; no `hmac` means an
    /// echo (E bit set).
    pub fn add_addr(addr_id: u8, addr: &[u8], port: Option<u16>, hmac: Option<u64>) -> Vec<u8> {
        assert!(addr.len() == 4 || addr.len() == 16, "4 or 16 address bytes");
        let mut rest = [addr_id].to_vec();
        rest.extend_from_slice(addr);
        if let Some(p) = port {
            rest.extend_from_slice(&p.to_be_bytes());
        }
        if let Some(h) = hmac {
            rest.extend_from_slice(&h.to_be_bytes());
        }
        option(3, hmac.is_none() as u8, &rest)
    }

    /// REMOVE_ADDR with these address ids (length 3 + n).
    pub fn remove_addr(ids: &[u8]) -> Vec<u8> {
        option(4, 0, ids)
    }

    /// MP_PRIO: length 3, or 4 with an address id (RFC 6824).
    pub fn prio(backup: bool, addr_id: Option<u8>) -> Vec<u8> {
        match addr_id {
            Some(id) => option(5, backup as u8, &[id]),
            None => option(5, backup as u8, &[]),
        }
    }

    /// MP_FAIL (length 12).
    pub fn fail(dsn: u64) -> Vec<u8> {
        let mut rest = [0u8].to_vec();
        rest.extend_from_slice(&dsn.to_be_bytes());
        option(6, 0, &rest)
    }

    /// MP_FASTCLOSE (length 12).
    pub fn fastclose(receiver_key: u64) -> Vec<u8> {
        let mut rest = [0u8].to_vec();
        rest.extend_from_slice(&receiver_key.to_be_bytes());
        option(7, 0, &rest)
    }

    /// MP_TCPRST (length 4); `flags` are U/V/W/T (low nibble).
    pub fn tcprst(flags: u8, reason: u8) -> Vec<u8> {
        option(8, flags, &[reason])
    }

    /// Any subtype with arbitrary bytes after the subtype byte.
    pub fn raw(subtype: u8, low_nibble: u8, rest: &[u8]) -> Vec<u8> {
        option(subtype, low_nibble, rest)
    }
}

// ---------------------------------------------------------------------------
// QUIC headers
// ---------------------------------------------------------------------------

/// QUIC packets (header plus arbitrary bytes), for UDP payloads.
pub mod quic {
    use crate::wire::quic::{LongPacketType, QUIC_V1};
    use std::vec::Vec;

    /// QUIC variable-length integer (RFC 9000 16).
    pub fn varint(v: u64) -> Vec<u8> {
        if v < 1 << 6 {
            [v as u8].to_vec()
        } else if v < 1 << 14 {
            ((v as u16) | 0x4000).to_be_bytes().to_vec()
        } else if v < 1 << 30 {
            ((v as u32) | 0x8000_0000).to_be_bytes().to_vec()
        } else {
            assert!(v < 1 << 62, "varint out of range");
            (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec()
        }
    }

    /// A long header with this exact first byte: first byte, version, DCID
    /// length and DCID, SCID length and SCID, then `rest`. CIDs of any length
    /// up to 255 (to build invalid ones).
    pub fn long_raw(first: u8, version: u32, dcid: &[u8], scid: &[u8], rest: &[u8]) -> Vec<u8> {
        assert!(dcid.len() <= 255 && scid.len() <= 255);
        let mut v = [first].to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        v.push(dcid.len() as u8);
        v.extend_from_slice(dcid);
        v.push(scid.len() as u8);
        v.extend_from_slice(scid);
        v.extend_from_slice(rest);
        v
    }

    /// A long header packet of type `ty` (type bits for `version`, so v2 is
    /// permuted), header form and fixed bit set, 1-byte packet number.
    pub fn long(
        version: u32,
        ty: LongPacketType,
        dcid: &[u8],
        scid: &[u8],
        rest: &[u8],
    ) -> Vec<u8> {
        long_raw(
            0xc0 | ty.to_first_byte_bits(version),
            version,
            dcid,
            scid,
            rest,
        )
    }

    /// A v1 Initial: token length and token, length, a 1-byte packet number
    /// and `payload`.
    pub fn initial(dcid: &[u8], scid: &[u8], token: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut rest = varint(token.len() as u64);
        rest.extend_from_slice(token);
        rest.extend(varint(1 + payload.len() as u64));
        rest.push(0); // packet number
        rest.extend_from_slice(payload);
        long(QUIC_V1, LongPacketType::Initial, dcid, scid, &rest)
    }

    /// A short header packet: 0x40 (fixed bit, 1-byte packet number), DCID, `rest`.
    pub fn short(dcid: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut v = [0x40u8].to_vec();
        v.extend_from_slice(dcid);
        v.extend_from_slice(rest);
        v
    }

    /// A Version Negotiation packet (fixed bit clear, version 0).
    pub fn version_negotiation(dcid: &[u8], scid: &[u8], versions: &[u32]) -> Vec<u8> {
        let mut rest = Vec::new();
        for v in versions {
            rest.extend_from_slice(&v.to_be_bytes());
        }
        long_raw(0x80 | 0x2a, 0, dcid, scid, &rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_reference_vectors() {
        // RFC 1071 section 3 example: sum 0xddf2, checksum !0xddf2
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(internet_checksum(&[]), 0xffff);
        // odd length pads with a zero byte
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
        // a well-known IPv4 header (checksum 0xb861)
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xb861);
        let mut with = h;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&with), 0);
    }

    #[test]
    fn pseudo_headers() {
        let p = pseudo_header_v4([1, 2, 3, 4], [5, 6, 7, 8], 17, 0x0102);
        assert_eq!(p, [1, 2, 3, 4, 5, 6, 7, 8, 0, 17, 1, 2]);
        let p = pseudo_header_v6([1; 16], [2; 16], 6, 0x0001_0203);
        assert_eq!(&p[..16], &[1; 16]);
        assert_eq!(&p[16..32], &[2; 16]);
        assert_eq!(&p[32..], &[0, 1, 2, 3, 0, 0, 0, 6]);
    }

    #[test]
    fn built_frames_verify() {
        let frames = [
            FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
                .payload(b"odd")
                .build(),
            FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
                .vlan(7)
                .ipv4_options(&[1, 1, 1])
                .payload(&[0xff; 100])
                .trailer(&[0; 9])
                .build(),
            FrameBuilder::tcp_v4([192, 168, 0, 1], 80, [192, 168, 0, 2], 9999)
                .flags(0x12)
                .tcp_options(&mptcp::capable_synack(1, 1, 99))
                .payload(b"x")
                .build(),
            FrameBuilder::udp_v6(Ipv6Addr::LOCALHOST, 443, Ipv6Addr::LOCALHOST, 443)
                .payload(&quic::short(&[1; 8], b"data"))
                .build(),
            FrameBuilder::tcp_v6([0xfe; 16], 1, [0xfd; 16], 2)
                .ipv6_ext(0, &[1, 4, 0, 0, 0, 0])
                .ipv6_ext(60, &[0; 10])
                .payload(&[1, 2, 3])
                .build(),
            FrameBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1)
                .payload(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0])
                .build(),
            FrameBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 17)
                .more_fragments(true)
                .payload(&[0; 16])
                .build(),
        ];
        for f in &frames {
            verify_checksums(f).unwrap();
        }
    }

    #[test]
    fn verify_catches_corruption_and_fix_repairs_it() {
        let good = FrameBuilder::tcp_v6([0xfe; 16], 1, [0xfd; 16], 2)
            .payload(b"payload")
            .build();
        let mut f = good.clone();
        *f.last_mut().unwrap() ^= 1;
        assert!(verify_checksums(&f).unwrap_err().contains("checksum"));
        fix_checksums(&mut f).unwrap();
        verify_checksums(&f).unwrap();

        let good = FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
            .payload(b"abcd")
            .build();
        let mut f = good.clone();
        f[14 + 8] -= 1; // TTL
        assert!(verify_checksums(&f).unwrap_err().contains("IPv4 header"));
        fix_checksums(&mut f).unwrap();
        verify_checksums(&f).unwrap();
        // the UDP checksum covers the addresses
        let mut f = good.clone();
        f[14 + 15] ^= 0x80;
        f[14 + 10] = 0;
        f[14 + 11] = 0;
        let c = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(verify_checksums(&f).unwrap_err().contains("protocol 17"));
        // no UDP checksum is fine over IPv4, not over IPv6
        let mut f = good.clone();
        f[40] = 0;
        f[41] = 0;
        verify_checksums(&f).unwrap();
        let mut f = FrameBuilder::udp_v6([1; 16], 1, [2; 16], 2).build();
        f[60] = 0;
        f[61] = 0;
        assert!(verify_checksums(&f).is_err());
        // inconsistent UDP length
        let mut f = good.clone();
        f[39] -= 1;
        assert!(verify_checksums(&f).unwrap_err().contains("UDP length"));
        assert!(verify_checksums(&FrameBuilder::ethernet(0x0806).build()).is_err());
    }

    #[test]
    fn frame_layout_is_as_documented() {
        let f = FrameBuilder::udp_v4(Ipv4Addr::new(10, 0, 0, 1), 0x1111, [10, 0, 0, 2], 0x2222)
            .src_mac([1; 6])
            .dst_mac([2; 6])
            .vlan(0x123)
            .ttl(9)
            .tos(0x10)
            .ip_id(0xbeef)
            .dont_fragment(true)
            .payload(&[0xaa, 0xbb])
            .build();
        assert_eq!(&f[0..6], &[2; 6]);
        assert_eq!(&f[6..12], &[1; 6]);
        assert_eq!(&f[12..18], &[0x81, 0x00, 0x01, 0x23, 0x08, 0x00]);
        assert_eq!(f[18], 0x45);
        assert_eq!(f[19], 0x10);
        assert_eq!(&f[20..22], &30u16.to_be_bytes());
        assert_eq!(&f[22..24], &[0xbe, 0xef]);
        assert_eq!(&f[24..26], &[0x40, 0x00]);
        assert_eq!(f[26], 9);
        assert_eq!(f[27], 17);
        assert_eq!(&f[38..42], &[0x11, 0x11, 0x22, 0x22]);
        assert_eq!(&f[42..44], &10u16.to_be_bytes());
        assert_eq!(&f[46..], &[0xaa, 0xbb]);

        let f = FrameBuilder::tcp_v6([1; 16], 1, [2; 16], 2)
            .flow_label(0xabcde)
            .tos(0xff)
            .ttl(3)
            .ipv6_fragment(0x10, true, 0x01020304)
            .seq(5)
            .ack(6)
            .window(100)
            .urgent(1)
            .flags(0x18)
            .build();
        assert_eq!(&f[14..18], &[0x6f, 0xfa, 0xbc, 0xde]);
        assert_eq!(&f[18..20], &(8u16 + 20).to_be_bytes());
        assert_eq!(f[20], 44);
        assert_eq!(f[21], 3);
        assert_eq!(&f[54..62], &[6, 0, 0x00, 0x81, 1, 2, 3, 4]);
        assert_eq!(f[62 + 12], 5 << 4);
        assert_eq!(f[62 + 13], 0x18);
        verify_checksums(&f).unwrap();
    }

    #[test]
    fn quic_builders() {
        assert_eq!(quic::varint(37), [0x25]);
        assert_eq!(quic::varint(15293), [0x7b, 0xbd]);
        assert_eq!(quic::varint(494_878_333), [0x9d, 0x7f, 0x3e, 0x7d]);
        assert_eq!(
            quic::varint(151_288_809_941_952_652),
            [0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]
        );
        let q = quic::initial(&[1, 2], &[3], &[9; 70], &[0; 5]);
        assert_eq!(&q[..10], &[0xc0, 0, 0, 0, 1, 2, 1, 2, 1, 3]);
        assert_eq!(&q[10..12], &[0x40, 70]);
        assert_eq!(q[82], 6);
        assert_eq!(q.len(), 83 + 1 + 5);
        let s = quic::short(&[7; 4], &[1]);
        assert_eq!(s, [0x40, 7, 7, 7, 7, 1]);
    }

    #[test]
    #[should_panic(expected = "needs a TCP frame")]
    fn tcp_setters_refuse_udp() {
        let _ = FrameBuilder::udp_v4([1, 1, 1, 1], 1, [2, 2, 2, 2], 2).seq(1);
    }
}
