//! Ethernet to L4 in one call.

use super::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, parse_ethernet};
use super::ip::{IPPROTO_TCP, IPPROTO_UDP, parse_ipv4, parse_ipv6};
use super::tcp::parse_tcp;
use super::udp::parse_udp;
use crate::PacketBytes;

pub use super::ip::IpFamily;
pub use super::tcp::{OptionRef, TcpInfo};
pub use super::{MalformedKind, ParseError, UnsupportedKind};

/// The transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Info {
    Udp {
        src_port: u16,
        dst_port: u16,
        /// PacketBytes offset of the UDP payload (the QUIC header, for QUIC).
        payload_offset: u16,
        /// UDP length minus 8.
        payload_len: u16,
    },
    Tcp(TcpInfo),
    /// Any other upper-layer protocol (ICMP, ESP, AH, ...): not looked into.
    Other,
}

/// Everything [`parse_packet`] learnt about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// VLAN id of the 802.1Q tag, if the frame had one.
    pub vlan: Option<u16>,
    /// The EtherType after the VLAN tag: 0x0800 or 0x86dd.
    pub ethertype: u16,
    /// PacketBytes offset of the IP header: 14, or 18 with a VLAN tag.
    pub l3_offset: u16,
    pub family: IpFamily,
    /// IPv4 in the first 4 bytes (the rest zero), or the IPv6 address.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Upper-layer protocol, after any IPv6 extension headers.
    pub ip_proto: u8,
    /// PacketBytes offset of the upper-layer header.
    pub l4_offset: u16,
    /// Bytes from `l4_offset` to the end of the IP packet (link-layer padding
    /// excluded).
    pub l4_len: u16,
    pub l4: L4Info,
}

impl PacketInfo {
    /// Source and destination ports for UDP and TCP.
    #[inline(always)]
    pub const fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4Info::Udp {
                src_port, dst_port, ..
            } => Some((src_port, dst_port)),
            L4Info::Tcp(t) => Some((t.src_port, t.dst_port)),
            L4Info::Other => None,
        }
    }

    /// `(payload_offset, payload_end)` of a UDP datagram: what
    /// [`parse_quic`](super::quic::parse_quic) wants.
    #[inline(always)]
    pub const fn udp_payload(&self) -> Option<(usize, usize)> {
        match self.l4 {
            L4Info::Udp {
                payload_offset,
                payload_len,
                ..
            } => Some((
                payload_offset as usize,
                payload_offset as usize + payload_len as usize,
            )),
            _ => None,
        }
    }

    #[inline(always)]
    pub const fn tcp(&self) -> Option<TcpInfo> {
        match self.l4 {
            L4Info::Tcp(t) => Some(t),
            _ => None,
        }
    }
}

/// Parses Ethernet II (at most one 802.1Q tag), IPv4 or IPv6 (extension
/// headers skipped), then UDP or TCP; other protocols are [`L4Info::Other`].
///
/// Errors, in the order they can happen:
/// - `Unsupported(Vlan)`: QinQ / a second tag;
/// - `NotIp { ethertype }`: not IPv4/IPv6 (pass it on);
/// - `Truncated`: the frame ends inside a header;
/// - `Malformed(..)`: a length or version field is inconsistent;
/// - `Unsupported(Fragment | ExtHeaders)`.
#[inline(always)]
pub fn parse_packet<F: PacketBytes + ?Sized>(f: &F) -> Result<PacketInfo, ParseError> {
    let eth = parse_ethernet(f)?;
    let ip = match eth.ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(f, eth.l3_offset)?,
        ETHERTYPE_IPV6 => parse_ipv6(f, eth.l3_offset)?,
        ethertype => return Err(ParseError::NotIp { ethertype }),
    };
    let l4 = match ip.ip_proto {
        IPPROTO_UDP => {
            let u = parse_udp(f, ip.l4_offset, ip.ip_end)?;
            L4Info::Udp {
                src_port: u.src_port,
                dst_port: u.dst_port,
                payload_offset: u.payload_offset,
                payload_len: u.payload_len,
            }
        }
        IPPROTO_TCP => L4Info::Tcp(parse_tcp(f, ip.l4_offset, ip.ip_end)?),
        _ => L4Info::Other,
    };
    Ok(PacketInfo {
        vlan: eth.vlan,
        ethertype: eth.ethertype,
        l3_offset: eth.l3_offset as u16,
        family: ip.family,
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        ip_proto: ip.ip_proto,
        // l4_offset <= 18 + 40 + 4 * 2048; l4_len <= the IP payload length (u16).
        l4_offset: ip.l4_offset as u16,
        l4_len: (ip.ip_end - ip.l4_offset) as u16,
        l4,
    })
}

#[cfg(test)]
mod tests {
    use super::super::ip::{IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ROUTING};
    use super::super::tcp::{TCP_ACK, TCP_SYN};
    use super::*;
    use migr_testkit::frames::{FrameBuilder, mptcp, tcp_opt};

    const A4: [u8; 4] = [10, 1, 2, 3];
    const B4: [u8; 4] = [10, 4, 5, 6];
    const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
    const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];

    #[test]
    fn udp_v4_with_vlan() {
        let f = FrameBuilder::udp_v4(A4, 5000, B4, 443)
            .vlan(42)
            .payload(&[0x40; 30])
            .build();
        let p = parse_packet(&f[..]).unwrap();
        assert_eq!(p.vlan, Some(42));
        assert_eq!(p.ethertype, ETHERTYPE_IPV4);
        assert_eq!(p.l3_offset, 18);
        assert_eq!(p.family, IpFamily::V4);
        assert_eq!(&p.src_addr[..4], &A4);
        assert_eq!(&p.dst_addr[..4], &B4);
        assert_eq!(p.ip_proto, IPPROTO_UDP);
        assert_eq!(p.l4_offset, 38);
        assert_eq!(p.l4_len, 38);
        assert_eq!(
            p.l4,
            L4Info::Udp {
                src_port: 5000,
                dst_port: 443,
                payload_offset: 46,
                payload_len: 30
            }
        );
        assert_eq!(p.ports(), Some((5000, 443)));
        assert_eq!(p.udp_payload(), Some((46, 76)));
        assert_eq!(p.tcp(), None);
    }

    #[test]
    fn tcp_v6_with_ext_headers_and_mptcp() {
        let mut opts = tcp_opt::mss(1400);
        opts.extend(mptcp::capable_synack(1, 0x81, 0x1122_3344_5566_7788));
        let f = FrameBuilder::tcp_v6(A6, 443, B6, 50000)
            .ipv6_ext(IPPROTO_HOPOPTS, &[0; 6])
            .ipv6_ext(IPPROTO_ROUTING, &[0; 14])
            .ipv6_ext(IPPROTO_DSTOPTS, &[0; 6])
            .flags(TCP_SYN | TCP_ACK)
            .seq(7)
            .ack(9)
            .tcp_options(&opts)
            .build();
        let p = parse_packet(&f[..]).unwrap();
        assert_eq!(p.vlan, None);
        assert_eq!(p.ethertype, ETHERTYPE_IPV6);
        assert_eq!(p.family, IpFamily::V6);
        assert_eq!(p.src_addr, A6);
        assert_eq!(p.dst_addr, B6);
        assert_eq!(p.ip_proto, IPPROTO_TCP);
        assert_eq!(p.l4_offset, 54 + 32);
        let t = p.tcp().unwrap();
        assert_eq!((t.src_port, t.dst_port, t.seq, t.ack), (443, 50000, 7, 9));
        assert_eq!(t.flags, TCP_SYN | TCP_ACK);
        assert_eq!(t.header_len, 36);
        assert_eq!(t.payload_offset, 54 + 32 + 36);
        assert_eq!(t.payload_len, 0);
        assert_eq!(
            t.mptcp,
            Some(OptionRef {
                offset: 54 + 32 + 24,
                len: 12
            })
        );
        assert_eq!(p.l4_len, 36);
    }

    #[test]
    fn other_protocols() {
        let f = FrameBuilder::ipv4(A4, B4, IPPROTO_ICMP)
            .payload(&[8, 0, 0, 0, 0, 1, 0, 1])
            .build();
        let p = parse_packet(&f[..]).unwrap();
        assert_eq!(p.ip_proto, IPPROTO_ICMP);
        assert_eq!(p.l4, L4Info::Other);
        assert_eq!(p.l4_len, 8);
        assert_eq!(p.ports(), None);
        assert_eq!(p.udp_payload(), None);
    }

    #[test]
    fn non_ip_passes() {
        for ethertype in [0x0806u16, 0x88cc, 0x0042, 0x8847] {
            let f = FrameBuilder::ethernet(ethertype).payload(&[0; 46]).build();
            assert_eq!(parse_packet(&f[..]), Err(ParseError::NotIp { ethertype }));
            let f = FrameBuilder::ethernet(ethertype)
                .vlan(9)
                .payload(&[0; 46])
                .build();
            assert_eq!(parse_packet(&f[..]), Err(ParseError::NotIp { ethertype }));
        }
    }

    #[test]
    fn errors_from_every_layer() {
        let vlan = FrameBuilder::udp_v4(A4, 1, B4, 2)
            .vlan_tag(0x8100, 1)
            .vlan_tag(0x8100, 2)
            .build();
        assert_eq!(
            parse_packet(&vlan[..]),
            Err(ParseError::Unsupported(UnsupportedKind::Vlan))
        );
        let frag = FrameBuilder::udp_v4(A4, 1, B4, 2)
            .more_fragments(true)
            .build();
        assert_eq!(
            parse_packet(&frag[..]),
            Err(ParseError::Unsupported(UnsupportedKind::Fragment))
        );
        let mut bad_udp = FrameBuilder::udp_v6(A6, 1, B6, 2).payload(&[1; 4]).build();
        bad_udp[54 + 5] = 13; // UDP length 13 > 12
        assert_eq!(
            parse_packet(&bad_udp[..]),
            Err(ParseError::Malformed(MalformedKind::UdpLength))
        );
        let mut bad_tcp = FrameBuilder::tcp_v4(A4, 1, B4, 2).build();
        bad_tcp[34 + 12] = 0x40;
        assert_eq!(
            parse_packet(&bad_tcp[..]),
            Err(ParseError::Malformed(MalformedKind::TcpDataOffset))
        );
        // IPv4 ethertype with an IPv6 header in it
        let mut wrong = FrameBuilder::udp_v6(A6, 1, B6, 2).build();
        wrong[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        assert_eq!(
            parse_packet(&wrong[..]),
            Err(ParseError::Malformed(MalformedKind::IpVersion))
        );
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let f = FrameBuilder::udp_v4(A4, 1, B4, 2)
            .payload(&[7; 2])
            .trailer(&[0; 16])
            .build();
        assert_eq!(f.len(), 60);
        let p = parse_packet(&f[..]).unwrap();
        assert_eq!(p.l4_len, 10);
        assert_eq!(p.udp_payload(), Some((42, 44)));
    }
}
