//! Ethernet II with at most one 802.1Q tag.

use super::{ParseError, UnsupportedKind, field, read_be16};
use crate::PacketBytes;

/// Destination MAC, source MAC, EtherType.
pub const ETH_HEADER_LEN: usize = 14;
/// TPID + TCI.
pub const VLAN_TAG_LEN: usize = 4;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// 802.1Q customer tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Pre-standard QinQ outer tag.
pub const ETHERTYPE_QINQ_LEGACY: u16 = 0x9100;
/// The VLAN id bits of the TCI.
pub const VLAN_ID_MASK: u16 = 0x0fff;

/// What the link layer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthInfo {
    /// EtherType of the payload (after the VLAN tag, if there is one).
    pub ethertype: u16,
    /// VLAN id (the low 12 bits of the TCI) of the single 802.1Q tag.
    pub vlan: Option<u16>,
    /// Where the L3 header starts: 14, or 18 with a VLAN tag.
    pub l3_offset: usize,
}

#[inline(always)]
const fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_LEGACY
    )
}

/// Parses the Ethernet II header and at most one 802.1Q (0x8100) tag.
///
/// A second tag, or an 802.1ad / 0x9100 outer tag, is
/// `Unsupported(UnsupportedKind::Vlan)`. The EtherType is not interpreted here
/// (an IEEE 802.3 length field simply comes back as a small `ethertype`).
#[inline(always)]
pub fn parse_ethernet<F: PacketBytes + ?Sized>(f: &F) -> Result<EthInfo, ParseError> {
    let outer = read_be16(f, field::ethernet::ETHER_TYPE)?;
    if outer == ETHERTYPE_VLAN {
        let tci = read_be16(f, ETH_HEADER_LEN)?;
        let inner = read_be16(f, ETH_HEADER_LEN + 2)?;
        if is_vlan_tpid(inner) {
            return Err(ParseError::Unsupported(UnsupportedKind::Vlan));
        }
        return Ok(EthInfo {
            ethertype: inner,
            vlan: Some(tci & VLAN_ID_MASK),
            l3_offset: ETH_HEADER_LEN + VLAN_TAG_LEN,
        });
    }
    if is_vlan_tpid(outer) {
        return Err(ParseError::Unsupported(UnsupportedKind::Vlan));
    }
    Ok(EthInfo {
        ethertype: outer,
        vlan: None,
        l3_offset: ETH_HEADER_LEN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use migr_testkit::frames::FrameBuilder;

    #[test]
    fn untagged() {
        let frame = FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2).build();
        let eth = parse_ethernet(&frame[..]).unwrap();
        assert_eq!(eth.ethertype, ETHERTYPE_IPV4);
        assert_eq!(eth.vlan, None);
        assert_eq!(eth.l3_offset, 14);
    }

    #[test]
    fn one_tag_keeps_only_the_vlan_id() {
        let frame = FrameBuilder::udp_v6([1u8; 16], 1, [2u8; 16], 2)
            .vlan_tag(ETHERTYPE_VLAN, 0xe000 | 0x123)
            .build();
        let eth = parse_ethernet(&frame[..]).unwrap();
        assert_eq!(eth.ethertype, ETHERTYPE_IPV6);
        assert_eq!(eth.vlan, Some(0x123));
        assert_eq!(eth.l3_offset, 18);
    }

    #[test]
    fn qinq_and_double_tags_are_unsupported() {
        let unsupported = Err(ParseError::Unsupported(UnsupportedKind::Vlan));
        for (outer, inner) in [
            (ETHERTYPE_VLAN, ETHERTYPE_VLAN),
            (ETHERTYPE_VLAN, ETHERTYPE_QINQ),
            (ETHERTYPE_VLAN, ETHERTYPE_QINQ_LEGACY),
            (ETHERTYPE_QINQ, ETHERTYPE_VLAN),
            (ETHERTYPE_QINQ_LEGACY, ETHERTYPE_VLAN),
        ] {
            let frame = FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
                .vlan_tag(outer, 5)
                .vlan_tag(inner, 6)
                .build();
            assert_eq!(
                parse_ethernet(&frame[..]),
                unsupported,
                "{outer:#x}/{inner:#x}"
            );
        }
        // a lone 802.1ad tag is refused too
        let frame = FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
            .vlan_tag(ETHERTYPE_QINQ, 7)
            .build();
        assert_eq!(parse_ethernet(&frame[..]), unsupported);
    }

    #[test]
    fn short_frames_are_truncated() {
        let frame = FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
            .vlan(3)
            .build();
        for len in 0..18 {
            assert_eq!(
                parse_ethernet(&frame[..len]),
                Err(ParseError::Truncated),
                "len {len}"
            );
        }
        assert!(parse_ethernet(&frame[..18]).is_ok());
    }
}
