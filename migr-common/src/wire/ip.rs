//! IPv4 (with options) and IPv6 (with up to four extension headers).

use super::{MalformedKind, ParseError, UnsupportedKind, field, read_bytes};
use crate::PacketBytes;

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 "more fragments" flag, in the flags/fragment-offset word.
pub const IPV4_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag.
pub const IPV4_DF: u16 = 0x4000;
/// IPv4 fragment offset bits.
pub const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Most IPv6 extension headers (Hop-by-Hop, Routing, Destination Options)
/// skipped before the upper-layer header; one more is `Unsupported(ExtHeaders)`.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

/// What the network layer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    pub family: IpFamily,
    /// Source address; IPv4 in the first 4 bytes, the rest zero.
    pub src_addr: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes, the rest zero.
    pub dst_addr: [u8; 16],
    /// The upper-layer protocol (after the IPv6 extension headers).
    pub ip_proto: u8,
    /// Where the upper-layer header starts.
    pub l4_offset: usize,
    /// One past the last byte of the IP packet (excludes Ethernet padding).
    /// Always `<= f.len()` and `>= l4_offset`.
    pub ip_end: usize,
}

#[inline(always)]
const fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Parses an IPv4 header at `l3`.
///
/// Version must be 4, IHL at least 5 (options are skipped), the total length
/// at least the header length and no more than the frame holds after `l3`.
/// Fragments (MF set or offset non-zero) are `Unsupported(Fragment)`.
#[inline(always)]
pub fn parse_ipv4<F: PacketBytes + ?Sized>(f: &F, l3: usize) -> Result<IpInfo, ParseError> {
    let h = read_bytes::<F, 16>(f, l3)?;
    let dst = read_bytes::<F, 4>(f, l3 + field::ipv4::DST)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::Malformed(MalformedKind::IpVersion));
    }
    let ihl = (h[0] & 0x0f) as usize;
    if ihl < 5 {
        return Err(ParseError::Malformed(MalformedKind::Ipv4Ihl));
    }
    let header_len = ihl * 4;
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if total_len < header_len || total_len > f.len().saturating_sub(l3) {
        return Err(ParseError::Malformed(MalformedKind::IpLength));
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if frag & (IPV4_MF | IPV4_FRAG_OFFSET_MASK) != 0 {
        return Err(ParseError::Unsupported(UnsupportedKind::Fragment));
    }
    Ok(IpInfo {
        family: IpFamily::V4,
        src_addr: v4_in_16([h[12], h[13], h[14], h[15]]),
        dst_addr: v4_in_16(dst),
        ip_proto: h[9],
        l4_offset: l3 + header_len,
        ip_end: l3 + total_len,
    })
}

/// Extension headers that are skipped: Hop-by-Hop, Routing, Destination Options.
#[inline(always)]
pub const fn is_skipped_ext_header(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS
    )
}

/// Parses an IPv6 header at `l3` and skips up to [`MAX_IPV6_EXT_HEADERS`]
/// Hop-by-Hop / Routing / Destination Options headers.
///
/// The payload length must fit in the frame and every extension header inside
/// the payload. A Fragment header is `Unsupported(Fragment)`, a fifth skippable
/// header `Unsupported(ExtHeaders)`. Anything else (ESP, AH, No Next Header,
/// unknown) ends the chain and is reported as `ip_proto`.
#[inline(always)]
pub fn parse_ipv6<F: PacketBytes + ?Sized>(f: &F, l3: usize) -> Result<IpInfo, ParseError> {
    let h = read_bytes::<F, 8>(f, l3)?;
    let src = read_bytes::<F, 16>(f, l3 + field::ipv6::SRC)?;
    let dst = read_bytes::<F, 16>(f, l3 + field::ipv6::DST)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::Malformed(MalformedKind::IpVersion));
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    let l4_min = l3 + IPV6_HEADER_LEN;
    if payload_len > f.len().saturating_sub(l4_min) {
        return Err(ParseError::Malformed(MalformedKind::IpLength));
    }
    let ip_end = l4_min + payload_len;

    let mut next_header = h[6];
    let mut offset = l4_min;
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        if !is_skipped_ext_header(next_header) {
            break;
        }
        // Every extension header is at least 8 bytes.
        if offset + 8 > ip_end {
            return Err(ParseError::Malformed(MalformedKind::Ipv6ExtHeader));
        }
        let eh = read_bytes::<F, 2>(f, offset)?;
        let len = (eh[1] as usize + 1) * 8;
        if offset + len > ip_end {
            return Err(ParseError::Malformed(MalformedKind::Ipv6ExtHeader));
        }
        next_header = eh[0];
        offset += len;
        i += 1;
    }
    if next_header == IPPROTO_FRAGMENT {
        return Err(ParseError::Unsupported(UnsupportedKind::Fragment));
    }
    if is_skipped_ext_header(next_header) {
        return Err(ParseError::Unsupported(UnsupportedKind::ExtHeaders));
    }
    Ok(IpInfo {
        family: IpFamily::V6,
        src_addr: src,
        dst_addr: dst,
        ip_proto: next_header,
        l4_offset: offset,
        ip_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use migr_testkit::frames::FrameBuilder;

    const A4: [u8; 4] = [192, 0, 2, 1];
    const B4: [u8; 4] = [198, 51, 100, 7];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn malformed(kind: MalformedKind) -> Result<IpInfo, ParseError> {
        Err(ParseError::Malformed(kind))
    }

    #[test]
    fn ipv4_plain() {
        let frame = FrameBuilder::ipv4(A4, B4, 99).payload(&[1, 2, 3]).build();
        let ip = parse_ipv4(&frame[..], 14).unwrap();
        assert_eq!(ip.family, IpFamily::V4);
        assert_eq!(&ip.src_addr[..4], &A4);
        assert_eq!(&ip.dst_addr[..4], &B4);
        assert!(
            ip.src_addr[4..]
                .iter()
                .chain(&ip.dst_addr[4..])
                .all(|b| *b == 0)
        );
        assert_eq!(ip.ip_proto, 99);
        assert_eq!(ip.l4_offset, 34);
        assert_eq!(ip.ip_end, 37);
    }

    #[test]
    fn ipv4_options_are_honoured_and_padding_ignored() {
        let frame = FrameBuilder::ipv4(A4, B4, 99)
            .ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 1]) // record route, 8 bytes
            .payload(&[1, 2, 3])
            .trailer(&[0xee; 20])
            .build();
        let ip = parse_ipv4(&frame[..], 14).unwrap();
        assert_eq!(ip.l4_offset, 14 + 28);
        assert_eq!(ip.ip_end, 14 + 28 + 3);
        // maximal IHL
        let frame = FrameBuilder::ipv4(A4, B4, 99)
            .ipv4_options(&[1; 40])
            .build();
        assert_eq!(parse_ipv4(&frame[..], 14).unwrap().l4_offset, 14 + 60);
    }

    #[test]
    fn ipv4_bad_version_and_ihl() {
        let good = FrameBuilder::ipv4(A4, B4, 99).payload(&[0; 8]).build();
        for v in [0u8, 5, 6, 15] {
            let mut f = good.clone();
            f[14] = (v << 4) | 5;
            assert_eq!(parse_ipv4(&f[..], 14), malformed(MalformedKind::IpVersion));
        }
        for ihl in 0u8..5 {
            let mut f = good.clone();
            f[14] = 0x40 | ihl;
            assert_eq!(parse_ipv4(&f[..], 14), malformed(MalformedKind::Ipv4Ihl));
        }
        // IHL 7 with total length 28 (exactly the header) is fine
        let mut f = good.clone();
        f[14] = 0x47;
        assert_eq!(parse_ipv4(&f[..], 14).unwrap().l4_offset, 14 + 28);
        // IHL 8 with total length 28 is too short
        f[14] = 0x48;
        assert_eq!(parse_ipv4(&f[..], 14), malformed(MalformedKind::IpLength));
    }

    #[test]
    fn ipv4_total_length_bounds() {
        let good = FrameBuilder::ipv4(A4, B4, 99).payload(&[0; 8]).build();
        let set_len = |len: u16| {
            let mut f = good.clone();
            f[16..18].copy_from_slice(&len.to_be_bytes());
            f
        };
        for len in [0u16, 1, 19] {
            assert_eq!(
                parse_ipv4(&set_len(len)[..], 14),
                malformed(MalformedKind::IpLength)
            );
        }
        for len in [29u16, 100, 0xffff] {
            assert_eq!(
                parse_ipv4(&set_len(len)[..], 14),
                malformed(MalformedKind::IpLength)
            );
        }
        // shorter than the frame is fine: the rest is link-layer padding
        assert_eq!(parse_ipv4(&set_len(20)[..], 14).unwrap().ip_end, 34);
        assert_eq!(parse_ipv4(&set_len(28)[..], 14).unwrap().ip_end, 42);
    }

    #[test]
    fn ipv4_fragments() {
        let frag = Err(ParseError::Unsupported(UnsupportedKind::Fragment));
        let f = FrameBuilder::ipv4(A4, B4, 17).more_fragments(true).build();
        assert_eq!(parse_ipv4(&f[..], 14), frag);
        let f = FrameBuilder::ipv4(A4, B4, 17).fragment_offset(1).build();
        assert_eq!(parse_ipv4(&f[..], 14), frag);
        let f = FrameBuilder::ipv4(A4, B4, 17)
            .fragment_offset(0x1fff)
            .dont_fragment(true)
            .build();
        assert_eq!(parse_ipv4(&f[..], 14), frag);
        // DF alone is not a fragment
        let f = FrameBuilder::ipv4(A4, B4, 17).dont_fragment(true).build();
        assert!(parse_ipv4(&f[..], 14).is_ok());
    }

    #[test]
    fn ipv4_truncated() {
        let f = FrameBuilder::ipv4(A4, B4, 99).build();
        for len in 0..34 {
            assert_eq!(parse_ipv4(&f[..len], 14), Err(ParseError::Truncated));
        }
        assert!(parse_ipv4(&f[..], 14).is_ok());
    }

    #[test]
    fn ipv6_plain() {
        let frame = FrameBuilder::ipv6(A6, B6, 99).payload(&[1, 2, 3]).build();
        let ip = parse_ipv6(&frame[..], 14).unwrap();
        assert_eq!(ip.family, IpFamily::V6);
        assert_eq!(ip.src_addr, A6);
        assert_eq!(ip.dst_addr, B6);
        assert_eq!(ip.ip_proto, 99);
        assert_eq!(ip.l4_offset, 54);
        assert_eq!(ip.ip_end, 57);
    }

    #[test]
    fn ipv6_skips_up_to_four_ext_headers() {
        let frame = FrameBuilder::ipv6(A6, B6, IPPROTO_UDP)
            .ipv6_ext(IPPROTO_HOPOPTS, &[1, 4, 0, 0, 0, 0]) // 8 bytes
            .ipv6_ext(
                IPPROTO_DSTOPTS,
                &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ) // 16
            .ipv6_ext(IPPROTO_ROUTING, &[0, 0, 0, 0, 0, 0]) // 8
            .ipv6_ext(IPPROTO_DSTOPTS, &[0; 30]) // 32
            .payload(&[0; 8])
            .build();
        let ip = parse_ipv6(&frame[..], 14).unwrap();
        assert_eq!(ip.ip_proto, IPPROTO_UDP);
        assert_eq!(ip.l4_offset, 54 + 8 + 16 + 8 + 32);
        assert_eq!(ip.ip_end, ip.l4_offset + 8);
    }

    #[test]
    fn ipv6_five_ext_headers_are_unsupported() {
        let mut b = FrameBuilder::ipv6(A6, B6, IPPROTO_TCP);
        for _ in 0..5 {
            b = b.ipv6_ext(IPPROTO_DSTOPTS, &[0; 6]);
        }
        let frame = b.build();
        assert_eq!(
            parse_ipv6(&frame[..], 14),
            Err(ParseError::Unsupported(UnsupportedKind::ExtHeaders))
        );
    }

    #[test]
    fn ipv6_fragment_header_anywhere() {
        let frag = Err(ParseError::Unsupported(UnsupportedKind::Fragment));
        for before in 0..=4 {
            let mut b = FrameBuilder::ipv6(A6, B6, IPPROTO_UDP);
            for _ in 0..before {
                b = b.ipv6_ext(IPPROTO_HOPOPTS, &[0; 6]);
            }
            let frame = b.ipv6_fragment(0, true, 0x1234).payload(&[0; 8]).build();
            assert_eq!(parse_ipv6(&frame[..], 14), frag, "after {before} headers");
        }
    }

    #[test]
    fn ipv6_other_next_headers_are_just_other() {
        for proto in [IPPROTO_ESP, IPPROTO_AH, IPPROTO_NONE, IPPROTO_ICMPV6, 253] {
            let frame = FrameBuilder::ipv6(A6, B6, proto)
                .ipv6_ext(IPPROTO_HOPOPTS, &[0; 6])
                .payload(&[0; 4])
                .build();
            let ip = parse_ipv6(&frame[..], 14).unwrap();
            assert_eq!(ip.ip_proto, proto);
            assert_eq!(ip.l4_offset, 62);
        }
    }

    #[test]
    fn ipv6_bad_version_and_lengths() {
        let good = FrameBuilder::ipv6(A6, B6, IPPROTO_UDP)
            .ipv6_ext(IPPROTO_DSTOPTS, &[0; 6])
            .payload(&[0; 8])
            .build();
        let mut f = good.clone();
        f[14] = 0x40;
        assert_eq!(parse_ipv6(&f[..], 14), malformed(MalformedKind::IpVersion));
        // payload length past the frame
        let mut f = good.clone();
        f[18..20].copy_from_slice(&17u16.to_be_bytes());
        assert_eq!(parse_ipv6(&f[..], 14), malformed(MalformedKind::IpLength));
        // payload length too short for the extension header
        for len in [0u16, 7] {
            let mut f = good.clone();
            f[18..20].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                parse_ipv6(&f[..], 14),
                malformed(MalformedKind::Ipv6ExtHeader)
            );
        }
        // extension header length past the payload
        let mut f = good.clone();
        f[54 + 1] = 2; // 24 bytes, payload holds 16
        assert_eq!(
            parse_ipv6(&f[..], 14),
            malformed(MalformedKind::Ipv6ExtHeader)
        );
        // exactly fitting (8 + 8) is fine, and an empty L4 too
        let mut f = good.clone();
        f[54 + 1] = 1;
        let ip = parse_ipv6(&f[..], 14).unwrap();
        assert_eq!(ip.l4_offset, ip.ip_end);
    }

    #[test]
    fn ipv6_truncated() {
        let f = FrameBuilder::ipv6(A6, B6, IPPROTO_UDP)
            .ipv6_ext(IPPROTO_DSTOPTS, &[0; 6])
            .build();
        for len in 0..54 {
            assert_eq!(parse_ipv6(&f[..len], 14), Err(ParseError::Truncated));
        }
        for len in 54..f.len() {
            assert!(parse_ipv6(&f[..len], 14).is_err());
        }
        assert!(parse_ipv6(&f[..], 14).is_ok());
    }
}
