//! Frame builders for tests. They allocate and panic on impossible requests,
//! so they live here and not in the `no_std`, panic-free migr-common.
//!
//! ```ignore
//! use migr_testkit::frames::{FrameBuilder, quic, verify_checksums};
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

mod checksum;
pub mod mptcp;
pub mod quic;
pub mod tcp_opt;
#[cfg(test)]
mod tests;

pub use checksum::{
    checksum_with_pseudo, fix_checksums, internet_checksum, l4_checksum_v4, l4_checksum_v6,
    pseudo_header_v4, pseudo_header_v6, verify_checksums,
};

use std::net::{Ipv4Addr, Ipv6Addr};

use migr_common::wire::field;

pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

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
                (s, Some(field::udp::CHECKSUM))
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
                (s, Some(field::tcp::CHECKSUM))
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
                let at = field::ipv4::CHECKSUM;
                h[at..at + 2].copy_from_slice(&c.to_be_bytes());
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
