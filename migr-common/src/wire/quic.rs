//! QUIC packet headers, up to and including the connection IDs (RFC 9000
//! section 17, RFC 8999 invariants, RFC 9369 packet types for v2).

use crate::PacketBytes;
use crate::cid::MAX_CID_LEN;
use crate::packet_bytes::MAX_PARSE_OFFSET;

pub const QUIC_V1: u32 = 0x0000_0001;
pub const QUIC_V2: u32 = 0x6b33_43cf;
/// Header Form bit: long header when set.
pub const LONG_HEADER_BIT: u8 = 0x80;
/// Fixed Bit ("QUIC bit").
pub const FIXED_BIT: u8 = 0x40;
/// First byte, version (4), DCID length: the fixed start of a long header.
pub const LONG_HEADER_PREFIX: usize = 6;

/// A connection ID inside the frame: `offset` is the frame offset of its first
/// byte, `len` its length (0..=20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CidRef {
    pub offset: u16,
    pub len: u8,
}

impl CidRef {
    /// One past the CID's last byte.
    #[inline(always)]
    pub const fn end(&self) -> usize {
        self.offset as usize + self.len as usize
    }

    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LongPacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

impl LongPacketType {
    /// Decodes the type bits (0x30 of the first byte) for `version`: QUIC v2
    /// permutes them (RFC 9369 3.2); every other version is read as v1.
    #[inline(always)]
    pub const fn from_first_byte(version: u32, first: u8) -> Self {
        let bits = (first >> 4) & 0x03;
        if version == QUIC_V2 {
            match bits {
                0 => Self::Retry,
                1 => Self::Initial,
                2 => Self::ZeroRtt,
                _ => Self::Handshake,
            }
        } else {
            match bits {
                0 => Self::Initial,
                1 => Self::ZeroRtt,
                2 => Self::Handshake,
                _ => Self::Retry,
            }
        }
    }

    /// The type bits, already shifted into place (0x00..=0x30), for `version`.
    pub const fn to_first_byte_bits(self, version: u32) -> u8 {
        let bits = if version == QUIC_V2 {
            match self {
                Self::Retry => 0,
                Self::Initial => 1,
                Self::ZeroRtt => 2,
                Self::Handshake => 3,
            }
        } else {
            match self {
                Self::Initial => 0,
                Self::ZeroRtt => 1,
                Self::Handshake => 2,
                Self::Retry => 3,
            }
        };
        bits << 4
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuicHeader {
    Long {
        version: u32,
        packet_type: LongPacketType,
        dcid: CidRef,
        scid: CidRef,
    },
    Short {
        dcid: CidRef,
    },
    /// A long header with version 0.
    VersionNegotiation {
        dcid: CidRef,
        scid: CidRef,
    },
}

impl QuicHeader {
    /// The destination connection ID, whatever the header form.
    #[inline(always)]
    pub const fn dcid(&self) -> CidRef {
        match *self {
            Self::Long { dcid, .. }
            | Self::Short { dcid }
            | Self::VersionNegotiation { dcid, .. } => dcid,
        }
    }

    /// The source connection ID (long headers only).
    #[inline(always)]
    pub const fn scid(&self) -> Option<CidRef> {
        match *self {
            Self::Long { scid, .. } | Self::VersionNegotiation { scid, .. } => Some(scid),
            Self::Short { .. } => None,
        }
    }

    #[inline(always)]
    pub const fn is_long(&self) -> bool {
        !matches!(self, Self::Short { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuicError {
    /// The header does not fit before `payload_end` (or the frame's end).
    Truncated,
    /// The fixed bit (0x40) is clear on a short header or a non-zero-version
    /// long header: not QUIC v1/v2 (RFC 9000 17.2 says discard).
    FixedBitClear,
    /// A long-header DCID or SCID length above 20. QUIC v1 and v2 forbid it;
    /// the limit is applied to every version (and to Version Negotiation),
    /// since such CIDs cannot carry a routable server id anyway.
    CidTooLong,
    /// `short_dcid_len` is not 1..=20.
    InvalidShortCidLen,
}

/// Parses the QUIC header of the UDP payload `[payload_offset, payload_end)`.
///
/// - Long header (0x80 set): version; version 0 is Version Negotiation (fixed
///   bit not required), any other version needs the fixed bit; then DCID
///   length (<= 20) and DCID, SCID length (<= 20) and SCID. Nothing after the
///   SCID (token, length, packet number) is looked at.
/// - Short header: the fixed bit must be set; the DCID is `short_dcid_len`
///   bytes (1..=20, the length this node's CIDs have) right after the first byte.
///
/// Every byte the result refers to lies before `payload_end` and inside the
/// frame. Nothing is decrypted or authenticated.
#[inline(always)]
pub fn parse_quic<F: PacketBytes + ?Sized>(
    f: &F,
    payload_offset: usize,
    payload_end: usize,
    short_dcid_len: u8,
) -> Result<QuicHeader, QuicError> {
    parse_quic_with(f, payload_offset, payload_end, short_dcid_len, false)
}

/// [`parse_quic`], but with `grease_ok` a cleared fixed bit is accepted: a
/// server that advertised `grease_quic_bit` (RFC 9287) lets its peers clear
/// it, and quinn clients do.
#[inline(always)]
pub fn parse_quic_with<F: PacketBytes + ?Sized>(
    f: &F,
    payload_offset: usize,
    payload_end: usize,
    short_dcid_len: u8,
    grease_ok: bool,
) -> Result<QuicHeader, QuicError> {
    // Clamp the window to the frame, and bound the start so that every offset
    // below stays small.
    let frame_len = f.len();
    let end = if payload_end < frame_len {
        payload_end
    } else {
        frame_len
    };
    if payload_offset > MAX_PARSE_OFFSET || payload_offset >= end {
        return Err(QuicError::Truncated);
    }
    let first = f.u8_at(payload_offset).ok_or(QuicError::Truncated)?;

    if first & LONG_HEADER_BIT == 0 {
        if first & FIXED_BIT == 0 && !grease_ok {
            return Err(QuicError::FixedBitClear);
        }
        let len = short_dcid_len as usize;
        if len == 0 || len > MAX_CID_LEN {
            return Err(QuicError::InvalidShortCidLen);
        }
        let dcid_offset = payload_offset + 1;
        if dcid_offset + len > end {
            return Err(QuicError::Truncated);
        }
        return Ok(QuicHeader::Short {
            dcid: CidRef {
                offset: dcid_offset as u16,
                len: short_dcid_len,
            },
        });
    }

    if payload_offset + LONG_HEADER_PREFIX > end {
        return Err(QuicError::Truncated);
    }
    let head = f
        .load::<LONG_HEADER_PREFIX>(payload_offset)
        .ok_or(QuicError::Truncated)?;
    let version = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if version != 0 && first & FIXED_BIT == 0 && !grease_ok {
        return Err(QuicError::FixedBitClear);
    }
    let dcid_len = head[5];
    if dcid_len as usize > MAX_CID_LEN {
        return Err(QuicError::CidTooLong);
    }
    let dcid_offset = payload_offset + LONG_HEADER_PREFIX;
    let scid_len_offset = dcid_offset + dcid_len as usize;
    if scid_len_offset >= end {
        return Err(QuicError::Truncated);
    }
    let scid_len = f.u8_at(scid_len_offset).ok_or(QuicError::Truncated)?;
    if scid_len as usize > MAX_CID_LEN {
        return Err(QuicError::CidTooLong);
    }
    let scid_offset = scid_len_offset + 1;
    if scid_offset + scid_len as usize > end {
        return Err(QuicError::Truncated);
    }
    // payload_offset <= MAX_PARSE_OFFSET, so all of these fit in a u16.
    let dcid = CidRef {
        offset: dcid_offset as u16,
        len: dcid_len,
    };
    let scid = CidRef {
        offset: scid_offset as u16,
        len: scid_len,
    };
    if version == 0 {
        return Ok(QuicHeader::VersionNegotiation { dcid, scid });
    }
    Ok(QuicHeader::Long {
        version,
        packet_type: LongPacketType::from_first_byte(version, first),
        dcid,
        scid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use migr_testkit::frames::quic;

    /// The QUIC bytes at offset 10 of a buffer, with 3 bytes of junk after.
    fn at10(quic: &[u8]) -> (Vec<u8>, usize, usize) {
        let mut f = vec![0xaa; 10];
        f.extend_from_slice(quic);
        let end = f.len();
        f.extend_from_slice(&[0xbb; 3]);
        (f, 10, end)
    }

    #[test]
    fn long_header_every_type_v1_and_v2() {
        for version in [QUIC_V1, QUIC_V2, 0xff00_001d, 0x1a2a_3a4a] {
            for ty in [
                LongPacketType::Initial,
                LongPacketType::ZeroRtt,
                LongPacketType::Handshake,
                LongPacketType::Retry,
            ] {
                // As `quic::long` builds it (which takes the library's type, not this build's).
                let first = 0xc0 | ty.to_first_byte_bits(version);
                let q =
                    quic::long_raw(first, version, &[1, 2, 3, 4, 5, 6, 7, 8], &[9, 9], &[0; 20]);
                let (f, start, end) = at10(&q);
                let h = parse_quic(&f[..], start, end, 8).unwrap();
                assert_eq!(
                    h,
                    QuicHeader::Long {
                        version,
                        packet_type: ty,
                        dcid: CidRef { offset: 16, len: 8 },
                        scid: CidRef { offset: 25, len: 2 },
                    }
                );
                assert_eq!(h.dcid(), CidRef { offset: 16, len: 8 });
                assert_eq!(h.scid(), Some(CidRef { offset: 25, len: 2 }));
                assert!(h.is_long());
                assert_eq!(
                    f[h.dcid().offset as usize..h.dcid().end()],
                    [1, 2, 3, 4, 5, 6, 7, 8]
                );
            }
        }
    }

    #[test]
    fn v2_type_bits_are_permuted() {
        assert_eq!(
            LongPacketType::from_first_byte(QUIC_V2, 0xd0),
            LongPacketType::Initial
        );
        assert_eq!(
            LongPacketType::from_first_byte(QUIC_V1, 0xd0),
            LongPacketType::ZeroRtt
        );
        assert_eq!(
            LongPacketType::from_first_byte(QUIC_V2, 0xc0),
            LongPacketType::Retry
        );
    }

    #[test]
    fn long_header_cid_lengths_0_to_20() {
        for dl in 0..=20u8 {
            for sl in [0u8, 1, 20] {
                let dcid: Vec<u8> = (0..dl).collect();
                let scid: Vec<u8> = (100..100 + sl).collect();
                let q = quic::initial(&dcid, &scid, &[], &[0; 30]);
                let (f, start, end) = at10(&q);
                let h = parse_quic(&f[..], start, end, 8).unwrap();
                assert_eq!(
                    h.dcid(),
                    CidRef {
                        offset: 16,
                        len: dl
                    }
                );
                assert_eq!(
                    h.scid(),
                    Some(CidRef {
                        offset: 17 + dl as u16,
                        len: sl
                    })
                );
                // the header alone, with nothing after the SCID, is enough
                let hdr_end = 17 + dl as usize + sl as usize;
                assert_eq!(parse_quic(&f[..], start, hdr_end, 8), Ok(h));
                assert_eq!(
                    parse_quic(&f[..], start, hdr_end - 1, 8),
                    Err(QuicError::Truncated)
                );
            }
        }
    }

    #[test]
    fn cid_length_21_is_refused() {
        let q = quic::long_raw(0xc0, QUIC_V1, &[7; 21], &[1; 4], &[0; 10]);
        let (f, start, end) = at10(&q);
        assert_eq!(
            parse_quic(&f[..], start, end, 8),
            Err(QuicError::CidTooLong)
        );
        let q = quic::long_raw(0xc0, QUIC_V1, &[7; 4], &[1; 21], &[0; 10]);
        let (f, start, end) = at10(&q);
        assert_eq!(
            parse_quic(&f[..], start, end, 8),
            Err(QuicError::CidTooLong)
        );
        // 255 too, and in Version Negotiation
        let q = quic::long_raw(0x80, 0, &[7; 4], &[1; 255], &[]);
        let (f, start, end) = at10(&q);
        assert_eq!(
            parse_quic(&f[..], start, end, 8),
            Err(QuicError::CidTooLong)
        );
        // the length is refused before the CID is required to be there
        let q = [0xc0, 0, 0, 0, 1, 21];
        assert_eq!(parse_quic(&q[..], 0, 6, 8), Err(QuicError::CidTooLong));
    }

    #[test]
    fn version_negotiation() {
        let q = quic::version_negotiation(&[1, 2, 3], &[4, 5, 6, 7, 8], &[QUIC_V1, QUIC_V2]);
        assert_eq!(q[0] & FIXED_BIT, 0, "built without the fixed bit");
        let (f, start, end) = at10(&q);
        let h = parse_quic(&f[..], start, end, 8).unwrap();
        assert_eq!(
            h,
            QuicHeader::VersionNegotiation {
                dcid: CidRef { offset: 16, len: 3 },
                scid: CidRef { offset: 20, len: 5 },
            }
        );
        assert_eq!(h.dcid().len, 3);
        assert!(h.is_long());
    }

    #[test]
    fn greased_fixed_bit_is_accepted_when_allowed() {
        let mut q = quic::short(&[1; 8], &[0; 20]);
        q[0] &= !FIXED_BIT;
        let (f, start, end) = at10(&q);
        let h = parse_quic_with(&f[..], start, end, 8, true).unwrap();
        assert!(matches!(h, QuicHeader::Short { .. }));
        let q = quic::long_raw(0x80, QUIC_V1, &[1; 8], &[2; 8], &[0; 4]);
        let (f, start, end) = at10(&q);
        assert!(
            parse_quic_with(&f[..], start, end, 8, true)
                .unwrap()
                .is_long()
        );
    }

    #[test]
    fn fixed_bit() {
        let q = quic::long_raw(0x80, QUIC_V1, &[1; 8], &[2; 8], &[0; 4]);
        let (f, start, end) = at10(&q);
        assert_eq!(
            parse_quic(&f[..], start, end, 8),
            Err(QuicError::FixedBitClear)
        );
        let mut q = quic::short(&[1; 8], &[0; 20]);
        q[0] &= !FIXED_BIT;
        let (f, start, end) = at10(&q);
        assert_eq!(
            parse_quic(&f[..], start, end, 8),
            Err(QuicError::FixedBitClear)
        );
    }

    #[test]
    fn short_header() {
        let q = quic::short(&[5, 6, 7, 8, 9, 10, 11, 12], &[0x11; 25]);
        let (f, start, end) = at10(&q);
        let h = parse_quic(&f[..], start, end, 8).unwrap();
        assert_eq!(
            h,
            QuicHeader::Short {
                dcid: CidRef { offset: 11, len: 8 }
            }
        );
        assert_eq!(h.dcid(), CidRef { offset: 11, len: 8 });
        assert_eq!(h.scid(), None);
        assert!(!h.is_long());
        for len in 1..=20u8 {
            let h = parse_quic(&f[..], start, end, len).unwrap();
            assert_eq!(h.dcid(), CidRef { offset: 11, len });
        }
        for len in [0u8, 21, 255] {
            assert_eq!(
                parse_quic(&f[..], start, end, len),
                Err(QuicError::InvalidShortCidLen)
            );
        }
        // the DCID must end before payload_end
        assert!(parse_quic(&f[..], start, 19, 8).is_ok());
        assert_eq!(parse_quic(&f[..], start, 18, 8), Err(QuicError::Truncated));
    }

    #[test]
    fn window_edges() {
        let q = quic::short(&[1; 8], &[0; 4]);
        let (f, start, end) = at10(&q);
        // empty payload, reversed window, start past the frame or the parse limit
        assert_eq!(
            parse_quic(&f[..], start, start, 8),
            Err(QuicError::Truncated)
        );
        assert_eq!(parse_quic(&f[..], end, start, 8), Err(QuicError::Truncated));
        assert_eq!(parse_quic(&f[..], 1000, 2000, 8), Err(QuicError::Truncated));
        assert_eq!(
            parse_quic(&f[..], usize::MAX, usize::MAX, 8),
            Err(QuicError::Truncated)
        );
        // payload_end past the frame is clamped to the frame
        let g = &f[..start + 5];
        assert_eq!(
            parse_quic(g, start, usize::MAX, 8),
            Err(QuicError::Truncated)
        );
        assert!(parse_quic(&f[..], start, usize::MAX, 8).is_ok());
    }

    #[test]
    fn truncated_long_header_at_every_length() {
        let q = quic::initial(&[1; 20], &[2; 20], &[3; 4], &[0; 8]);
        let hdr_end = 10 + 6 + 20 + 1 + 20;
        let (f, start, _) = at10(&q);
        for end in 0..hdr_end {
            assert_eq!(
                parse_quic(&f[..], start, end, 8),
                Err(QuicError::Truncated),
                "end {end}"
            );
            assert_eq!(
                parse_quic(&f[..end], start, usize::MAX, 8),
                Err(QuicError::Truncated),
                "frame len {end}"
            );
        }
        assert!(parse_quic(&f[..], start, hdr_end, 8).is_ok());
        assert!(parse_quic(&f[..hdr_end], start, usize::MAX, 8).is_ok());
    }
}
