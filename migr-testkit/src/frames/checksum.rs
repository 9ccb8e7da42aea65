//! The checksum oracle: checksums computed the plain way, by a frame walker
//! of its own, to judge frames that the builder or the kernel produced.

use super::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

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
