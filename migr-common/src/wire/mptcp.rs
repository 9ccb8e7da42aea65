//! MPTCP options (RFC 8684 section 3; RFC 6824 forms noted where accepted).
//!
//! [`parse_mptcp`] reads one option that the TCP option walk located
//! ([`TcpInfo::mptcp`](super::tcp::TcpInfo::mptcp)). Every length is checked
//! against the exact wire lengths of RFC 8684 for the subtype (and, for
//! MP_CAPABLE / MP_JOIN, against the TCP flags of the segment).

use super::ip::IpFamily;
use super::tcp::{OptionRef, TCP_ACK, TCP_SYN, TCPOPT_MPTCP};
use crate::PacketBytes;

pub const MPTCP_SUB_CAPABLE: u8 = 0;
pub const MPTCP_SUB_JOIN: u8 = 1;
pub const MPTCP_SUB_DSS: u8 = 2;
pub const MPTCP_SUB_ADD_ADDR: u8 = 3;
pub const MPTCP_SUB_REMOVE_ADDR: u8 = 4;
pub const MPTCP_SUB_PRIO: u8 = 5;
pub const MPTCP_SUB_FAIL: u8 = 6;
pub const MPTCP_SUB_FASTCLOSE: u8 = 7;
pub const MPTCP_SUB_TCPRST: u8 = 8;
pub const MPTCP_SUB_EXPERIMENTAL: u8 = 15;

/// MP_CAPABLE flag bits (the byte after subtype/version).
pub const CAPABLE_FLAG_A: u8 = 0x80; // checksum required
pub const CAPABLE_FLAG_B: u8 = 0x40; // extensibility
pub const CAPABLE_FLAG_C: u8 = 0x20; // do not connect to the source address
pub const CAPABLE_FLAG_H: u8 = 0x01; // HMAC-SHA256

/// DSS flag bits (low 5 bits of the 4th byte).
pub const DSS_FLAG_DATA_ACK: u8 = 0x01; // A
pub const DSS_FLAG_DATA_ACK_8: u8 = 0x02; // a
pub const DSS_FLAG_MAPPING: u8 = 0x04; // M
pub const DSS_FLAG_DSN_8: u8 = 0x08; // m
pub const DSS_FLAG_DATA_FIN: u8 = 0x10; // F
pub const DSS_FLAGS_MASK: u8 = 0x1f;

/// Which MP_CAPABLE form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapableKind {
    /// SYN: length 4 (v1, no key) or 12 (v0, the sender's key).
    Syn,
    /// SYN/ACK: length 12, the sender's key.
    SynAck,
    /// Third ACK: length 20, both keys.
    Ack,
    /// First data ACK: length 22 (or 24 with checksum), both keys and the
    /// data-level length.
    AckWithData,
}

/// The MP_JOIN forms (RFC 8684 3.2), told apart by length and TCP flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JoinKind {
    /// On a SYN (length 12): the receiver's token and the sender's nonce.
    Syn {
        backup: bool,
        addr_id: u8,
        token: u32,
        nonce: u32,
    },
    /// On a SYN/ACK (length 16): the sender's truncated (64-bit) HMAC and nonce.
    SynAck {
        backup: bool,
        addr_id: u8,
        hmac: u64,
        nonce: u32,
    },
    /// On the third ACK (length 24): the first 8 of the 20 HMAC bytes.
    Ack { hmac: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MptcpOption {
    Capable {
        kind: CapableKind,
        version: u8,
        flags: u8,
        sender_key: Option<u64>,
        receiver_key: Option<u64>,
        data_len: Option<u16>,
    },
    /// MP_JOIN, one of its three forms.
    Join { kind: JoinKind },
    /// Data Sequence Signal. 4-byte data ACKs and DSNs are zero-extended;
    /// `flags` tells which width was on the wire.
    Dss {
        flags: u8,
        data_ack: Option<u64>,
        dsn: Option<u64>,
        subflow_seq: Option<u32>,
        data_len: Option<u16>,
        data_fin: bool,
    },
    /// ADD_ADDR; `echo` is the E bit (set: no HMAC). IPv4 in the first 4 bytes.
    AddAddr {
        echo: bool,
        addr_id: u8,
        family: IpFamily,
        addr: [u8; 16],
        port: Option<u16>,
    },
    /// REMOVE_ADDR with `count` address ids (length 3 + count).
    RemoveAddr { count: u8 },
    /// MP_PRIO: length 3 (RFC 8684) or 4 with an address id (RFC 6824).
    Prio { backup: bool, addr_id: Option<u8> },
    /// MP_FAIL: length 12.
    Fail { dsn: u64 },
    /// MP_FASTCLOSE: length 12.
    FastClose { receiver_key: u64 },
    /// MP_TCPRST: length 4; `flags` are the U/V/W/T bits.
    TcpRst { flags: u8, reason: u8 },
    /// A subtype this parser does not know (9..=14, or 15 experimental).
    Unknown { subtype: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MptcpError {
    /// The option does not lie entirely inside the frame.
    Truncated,
    /// The option's kind byte is not 30.
    NotMptcp { kind: u8 },
    /// The option's length byte differs from `OptionRef::len`.
    LengthMismatch { option_len: u8, frame_len: u8 },
    /// Shorter than 3 bytes: no subtype.
    TooShort { len: u8 },
    /// A length RFC 8684 does not define for this subtype (and these flags).
    BadLength { subtype: u8, len: u8 },
    /// A valid length, but for another kind of segment (e.g. an MP_CAPABLE of
    /// length 4 on a segment without SYN, or an MP_JOIN SYN form on a SYN/ACK).
    WrongSegment { subtype: u8, len: u8 },
}

#[inline(always)]
fn rd8<F: PacketBytes + ?Sized>(f: &F, offset: usize) -> Result<u8, MptcpError> {
    f.u8_at(offset).ok_or(MptcpError::Truncated)
}

#[inline(always)]
fn rd16<F: PacketBytes + ?Sized>(f: &F, offset: usize) -> Result<u16, MptcpError> {
    f.be16_at(offset).ok_or(MptcpError::Truncated)
}

#[inline(always)]
fn rd32<F: PacketBytes + ?Sized>(f: &F, offset: usize) -> Result<u32, MptcpError> {
    f.be32_at(offset).ok_or(MptcpError::Truncated)
}

#[inline(always)]
fn rd64<F: PacketBytes + ?Sized>(f: &F, offset: usize) -> Result<u64, MptcpError> {
    f.be64_at(offset).ok_or(MptcpError::Truncated)
}

/// Reads a 4- or 8-byte sequence number.
#[inline(always)]
fn rd_seq<F: PacketBytes + ?Sized>(f: &F, offset: usize, wide: bool) -> Result<u64, MptcpError> {
    if wide {
        rd64(f, offset)
    } else {
        rd32(f, offset).map(|v| v as u64)
    }
}

/// Expected DSS length for `flags`, without the optional 2-byte checksum.
#[inline(always)]
pub const fn dss_len(flags: u8) -> usize {
    let mut len = 4;
    if flags & DSS_FLAG_DATA_ACK != 0 {
        len += if flags & DSS_FLAG_DATA_ACK_8 != 0 {
            8
        } else {
            4
        };
    }
    if flags & DSS_FLAG_MAPPING != 0 {
        // DSN, subflow sequence number (4), data-level length (2)
        len += if flags & DSS_FLAG_DSN_8 != 0 { 8 } else { 4 };
        len += 6;
    }
    len
}

/// Parses the MPTCP option at `opt` of a segment whose TCP flags are `tcp_flags`.
///
/// Reads no more than `opt.len` bytes from `opt.offset`; the whole option must
/// be inside the frame. See [`MptcpOption`] for the forms and lengths accepted.
#[inline(always)]
pub fn parse_mptcp<F: PacketBytes + ?Sized>(
    f: &F,
    opt: OptionRef,
    tcp_flags: u8,
) -> Result<MptcpOption, MptcpError> {
    let off = opt.offset as usize;
    let kl = f.load::<2>(off).ok_or(MptcpError::Truncated)?;
    if kl[0] != TCPOPT_MPTCP {
        return Err(MptcpError::NotMptcp { kind: kl[0] });
    }
    let len8 = kl[1];
    if len8 != opt.len {
        return Err(MptcpError::LengthMismatch {
            option_len: opt.len,
            frame_len: len8,
        });
    }
    if len8 < 3 {
        return Err(MptcpError::TooShort { len: len8 });
    }
    let len = len8 as usize;
    // The last byte of the option must be in the frame.
    rd8(f, off + len - 1)?;
    let b2 = rd8(f, off + 2)?;
    let subtype = b2 >> 4;
    let bad_length = MptcpError::BadLength { subtype, len: len8 };
    let wrong_segment = MptcpError::WrongSegment { subtype, len: len8 };
    let syn = tcp_flags & TCP_SYN != 0;
    let ack = tcp_flags & TCP_ACK != 0;

    match subtype {
        MPTCP_SUB_CAPABLE => {
            let (kind, sender, receiver, data) = match len {
                4 => (CapableKind::Syn, false, false, false),
                12 if syn && ack => (CapableKind::SynAck, true, false, false),
                12 => (CapableKind::Syn, true, false, false),
                20 => (CapableKind::Ack, true, true, false),
                22 | 24 => (CapableKind::AckWithData, true, true, true),
                _ => return Err(bad_length),
            };
            let on_syn = matches!(kind, CapableKind::Syn);
            let on_synack = matches!(kind, CapableKind::SynAck);
            // SYN forms need SYN without ACK; the ACK forms need no SYN.
            if (on_syn && (!syn || ack)) || (!on_syn && !on_synack && syn) {
                return Err(wrong_segment);
            }
            let flags = rd8(f, off + 3)?;
            let sender_key = if sender {
                Some(rd64(f, off + 4)?)
            } else {
                None
            };
            let receiver_key = if receiver {
                Some(rd64(f, off + 12)?)
            } else {
                None
            };
            let data_len = if data { Some(rd16(f, off + 20)?) } else { None };
            Ok(MptcpOption::Capable {
                kind,
                version: b2 & 0x0f,
                flags,
                sender_key,
                receiver_key,
                data_len,
            })
        }
        MPTCP_SUB_JOIN => {
            let backup = b2 & 0x01 != 0;
            let kind = match len {
                12 => {
                    if !syn || ack {
                        return Err(wrong_segment);
                    }
                    JoinKind::Syn {
                        backup,
                        addr_id: rd8(f, off + 3)?,
                        token: rd32(f, off + 4)?,
                        nonce: rd32(f, off + 8)?,
                    }
                }
                16 => {
                    if !(syn && ack) {
                        return Err(wrong_segment);
                    }
                    JoinKind::SynAck {
                        backup,
                        addr_id: rd8(f, off + 3)?,
                        hmac: rd64(f, off + 4)?,
                        nonce: rd32(f, off + 12)?,
                    }
                }
                24 => {
                    if syn {
                        return Err(wrong_segment);
                    }
                    JoinKind::Ack {
                        hmac: rd64(f, off + 4)?,
                    }
                }
                _ => return Err(bad_length),
            };
            Ok(MptcpOption::Join { kind })
        }
        MPTCP_SUB_DSS => {
            if len < 4 {
                return Err(bad_length);
            }
            let flags = rd8(f, off + 3)? & DSS_FLAGS_MASK;
            let has_ack = flags & DSS_FLAG_DATA_ACK != 0;
            let has_map = flags & DSS_FLAG_MAPPING != 0;
            let expected = dss_len(flags);
            // The checksum (2 bytes) exists only with a mapping.
            if len != expected && !(has_map && len == expected + 2) {
                return Err(bad_length);
            }
            let mut at = off + 4;
            let mut data_ack = None;
            if has_ack {
                let wide = flags & DSS_FLAG_DATA_ACK_8 != 0;
                data_ack = Some(rd_seq(f, at, wide)?);
                at += if wide { 8 } else { 4 };
            }
            let mut dsn = None;
            let mut subflow_seq = None;
            let mut data_len = None;
            if has_map {
                let wide = flags & DSS_FLAG_DSN_8 != 0;
                dsn = Some(rd_seq(f, at, wide)?);
                at += if wide { 8 } else { 4 };
                subflow_seq = Some(rd32(f, at)?);
                data_len = Some(rd16(f, at + 4)?);
            }
            Ok(MptcpOption::Dss {
                flags,
                data_ack,
                dsn,
                subflow_seq,
                data_len,
                data_fin: flags & DSS_FLAG_DATA_FIN != 0,
            })
        }
        MPTCP_SUB_ADD_ADDR => {
            let echo = b2 & 0x01 != 0;
            // (family, port present) from the length; the HMAC is 8 bytes
            // unless echo.
            let hmac = if echo { 0 } else { 8 };
            let (family, port) = if len == 8 + hmac {
                (IpFamily::V4, false)
            } else if len == 10 + hmac {
                (IpFamily::V4, true)
            } else if len == 20 + hmac {
                (IpFamily::V6, false)
            } else if len == 22 + hmac {
                (IpFamily::V6, true)
            } else {
                return Err(bad_length);
            };
            let addr_id = rd8(f, off + 3)?;
            let mut addr = [0u8; 16];
            let port_at = match family {
                IpFamily::V4 => {
                    let a = f.load::<4>(off + 4).ok_or(MptcpError::Truncated)?;
                    addr[0] = a[0];
                    addr[1] = a[1];
                    addr[2] = a[2];
                    addr[3] = a[3];
                    off + 8
                }
                IpFamily::V6 => {
                    addr = f.load::<16>(off + 4).ok_or(MptcpError::Truncated)?;
                    off + 20
                }
            };
            let port = if port { Some(rd16(f, port_at)?) } else { None };
            Ok(MptcpOption::AddAddr {
                echo,
                addr_id,
                family,
                addr,
                port,
            })
        }
        MPTCP_SUB_REMOVE_ADDR => {
            if len < 4 {
                return Err(bad_length);
            }
            Ok(MptcpOption::RemoveAddr { count: len8 - 3 })
        }
        MPTCP_SUB_PRIO => match len {
            3 => Ok(MptcpOption::Prio {
                backup: b2 & 0x01 != 0,
                addr_id: None,
            }),
            4 => Ok(MptcpOption::Prio {
                backup: b2 & 0x01 != 0,
                addr_id: Some(rd8(f, off + 3)?),
            }),
            _ => Err(bad_length),
        },
        MPTCP_SUB_FAIL => {
            if len != 12 {
                return Err(bad_length);
            }
            Ok(MptcpOption::Fail {
                dsn: rd64(f, off + 4)?,
            })
        }
        MPTCP_SUB_FASTCLOSE => {
            if len != 12 {
                return Err(bad_length);
            }
            Ok(MptcpOption::FastClose {
                receiver_key: rd64(f, off + 4)?,
            })
        }
        MPTCP_SUB_TCPRST => {
            if len != 4 {
                return Err(bad_length);
            }
            Ok(MptcpOption::TcpRst {
                flags: b2 & 0x0f,
                reason: rd8(f, off + 3)?,
            })
        }
        _ => Ok(MptcpOption::Unknown { subtype }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tcp::{TCP_FIN, TCP_RST};
    use super::*;
    use migr_testkit::frames::mptcp as b;

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;

    /// Parses `opt` placed at offset 5 of a buffer with junk around it.
    fn parse(opt: &[u8], tcp_flags: u8) -> Result<MptcpOption, MptcpError> {
        let mut f = vec![0xee; 5];
        f.extend_from_slice(opt);
        f.extend_from_slice(&[0xdd; 7]);
        let len = opt.get(1).copied().unwrap_or(0);
        parse_mptcp(&f[..], OptionRef { offset: 5, len }, tcp_flags)
    }

    /// An option of subtype `subtype` and length `len`, third byte `b2_low`
    /// in the low nibble, the rest filled with a counter.
    fn raw(subtype: u8, b2_low: u8, len: u8) -> Vec<u8> {
        let mut v = vec![30, len, (subtype << 4) | (b2_low & 0x0f)];
        let mut x = 0x10u8;
        while v.len() < len.max(3) as usize {
            v.push(x);
            x = x.wrapping_add(1);
        }
        v.truncate(len.max(3) as usize);
        v
    }

    /// Lengths (3..=40) at which `subtype` parses, for these flags.
    fn valid_lengths(subtype: u8, b2_low: u8, b3: Option<u8>, tcp_flags: u8) -> Vec<u8> {
        (3..=40u8)
            .filter(|len| {
                let mut o = raw(subtype, b2_low, *len);
                if let (Some(b3), Some(slot)) = (b3, o.get_mut(3)) {
                    *slot = b3;
                }
                match parse(&o, tcp_flags) {
                    Ok(_) => true,
                    Err(MptcpError::BadLength { subtype: s, len: l }) => {
                        assert_eq!((s, l), (subtype, *len));
                        false
                    }
                    Err(MptcpError::WrongSegment { .. }) => false,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn capable_every_form() {
        assert_eq!(
            parse(&b::capable_syn(1, CAPABLE_FLAG_A | CAPABLE_FLAG_H), SYN),
            Ok(MptcpOption::Capable {
                kind: CapableKind::Syn,
                version: 1,
                flags: 0x81,
                sender_key: None,
                receiver_key: None,
                data_len: None
            })
        );
        assert_eq!(
            parse(
                &b::capable_syn_with_key(0, 0x01, 0xaabb_ccdd_eeff_0011),
                SYN
            ),
            Ok(MptcpOption::Capable {
                kind: CapableKind::Syn,
                version: 0,
                flags: 0x01,
                sender_key: Some(0xaabb_ccdd_eeff_0011),
                receiver_key: None,
                data_len: None
            })
        );
        assert_eq!(
            parse(&b::capable_synack(1, 0x01, 42), SYNACK),
            Ok(MptcpOption::Capable {
                kind: CapableKind::SynAck,
                version: 1,
                flags: 0x01,
                sender_key: Some(42),
                receiver_key: None,
                data_len: None
            })
        );
        assert_eq!(
            parse(&b::capable_ack(1, 0x01, 1, u64::MAX), ACK),
            Ok(MptcpOption::Capable {
                kind: CapableKind::Ack,
                version: 1,
                flags: 0x01,
                sender_key: Some(1),
                receiver_key: Some(u64::MAX),
                data_len: None
            })
        );
        for checksum in [None, Some(0xbeef)] {
            assert_eq!(
                parse(&b::capable_ack_data(1, 0x81, 3, 4, 1000, checksum), ACK),
                Ok(MptcpOption::Capable {
                    kind: CapableKind::AckWithData,
                    version: 1,
                    flags: 0x81,
                    sender_key: Some(3),
                    receiver_key: Some(4),
                    data_len: Some(1000)
                })
            );
        }
    }

    #[test]
    fn capable_lengths_and_segments() {
        assert_eq!(valid_lengths(0, 1, None, SYN), vec![4, 12]);
        assert_eq!(valid_lengths(0, 1, None, SYNACK), vec![12]);
        assert_eq!(valid_lengths(0, 1, None, ACK), vec![20, 22, 24]);
        assert_eq!(valid_lengths(0, 1, None, ACK | TCP_FIN), vec![20, 22, 24]);
        let wrong = |len| Err(MptcpError::WrongSegment { subtype: 0, len });
        assert_eq!(parse(&b::capable_syn(1, 0), SYNACK), wrong(4));
        assert_eq!(parse(&b::capable_syn(1, 0), ACK), wrong(4));
        assert_eq!(parse(&b::capable_synack(1, 0, 1), ACK), wrong(12));
        assert_eq!(parse(&b::capable_synack(1, 0, 1), 0), wrong(12));
        assert_eq!(parse(&b::capable_ack(1, 0, 1, 2), SYN), wrong(20));
        assert_eq!(parse(&b::capable_ack(1, 0, 1, 2), SYNACK), wrong(20));
        assert_eq!(
            parse(&b::capable_ack_data(1, 0, 1, 2, 3, None), SYNACK),
            wrong(22)
        );
        for len in [3u8, 5, 8, 11, 13, 16, 19, 21, 23, 25, 30, 40] {
            assert_eq!(
                parse(&raw(0, 1, len), ACK),
                Err(MptcpError::BadLength { subtype: 0, len })
            );
        }
    }

    #[test]
    fn join_every_form() {
        assert_eq!(
            parse(&b::join_syn(true, 3, 0x0102_0304, 0xa0b0_c0d0), SYN),
            Ok(MptcpOption::Join {
                kind: JoinKind::Syn {
                    backup: true,
                    addr_id: 3,
                    token: 0x0102_0304,
                    nonce: 0xa0b0_c0d0
                }
            })
        );
        assert_eq!(
            parse(&b::join_syn(false, 0, 1, 2), SYN),
            Ok(MptcpOption::Join {
                kind: JoinKind::Syn {
                    backup: false,
                    addr_id: 0,
                    token: 1,
                    nonce: 2
                }
            })
        );
        assert_eq!(
            parse(&b::join_synack(false, 9, 0x1122_3344_5566_7788, 77), SYNACK),
            Ok(MptcpOption::Join {
                kind: JoinKind::SynAck {
                    backup: false,
                    addr_id: 9,
                    hmac: 0x1122_3344_5566_7788,
                    nonce: 77
                }
            })
        );
        let mut hmac = [0u8; 20];
        for (i, b) in hmac.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        assert_eq!(
            parse(&b::join_ack(&hmac), ACK),
            Ok(MptcpOption::Join {
                kind: JoinKind::Ack {
                    hmac: 0x0102_0304_0506_0708
                }
            })
        );
        assert_eq!(valid_lengths(1, 0, None, SYN), vec![12]);
        assert_eq!(valid_lengths(1, 0, None, SYNACK), vec![16]);
        assert_eq!(valid_lengths(1, 0, None, ACK), vec![24]);
        let wrong = |len| Err(MptcpError::WrongSegment { subtype: 1, len });
        assert_eq!(parse(&b::join_syn(false, 1, 1, 1), SYNACK), wrong(12));
        assert_eq!(parse(&b::join_synack(false, 1, 1, 1), SYN), wrong(16));
        assert_eq!(parse(&b::join_ack(&hmac), SYN), wrong(24));
    }

    #[test]
    fn dss_every_flag_combination() {
        for flags in 0..32u8 {
            let has_ack = flags & DSS_FLAG_DATA_ACK != 0;
            let has_map = flags & DSS_FLAG_MAPPING != 0;
            for checksum in [None, Some(0x1234u16)] {
                if checksum.is_some() && !has_map {
                    continue;
                }
                let spec = b::Dss {
                    data_ack: has_ack.then_some(0x0102_0304_0506_0708),
                    data_ack_8: flags & DSS_FLAG_DATA_ACK_8 != 0,
                    mapping: has_map.then_some(b::DssMapping {
                        dsn: 0x1112_1314_1516_1718,
                        subflow_seq: 0xabcd_ef01,
                        data_len: 1400,
                        checksum,
                    }),
                    dsn_8: flags & DSS_FLAG_DSN_8 != 0,
                    data_fin: flags & DSS_FLAG_DATA_FIN != 0,
                };
                let opt = b::dss(&spec);
                assert_eq!(opt[3], flags, "builder flags");
                let extra = if checksum.is_some() { 2 } else { 0 };
                assert_eq!(opt.len(), dss_len(flags) + extra);
                let narrow = |v: u64, wide: bool| if wide { v } else { v & 0xffff_ffff };
                assert_eq!(
                    parse(&opt, ACK),
                    Ok(MptcpOption::Dss {
                        flags,
                        data_ack: has_ack.then(|| narrow(
                            0x0102_0304_0506_0708,
                            flags & DSS_FLAG_DATA_ACK_8 != 0
                        )),
                        dsn: has_map
                            .then(|| narrow(0x1112_1314_1516_1718, flags & DSS_FLAG_DSN_8 != 0)),
                        subflow_seq: has_map.then_some(0xabcd_ef01),
                        data_len: has_map.then_some(1400),
                        data_fin: flags & DSS_FLAG_DATA_FIN != 0,
                    }),
                    "flags {flags:#x} checksum {checksum:?}"
                );
            }
            // exactly the expected length, and +2 only with a mapping
            let exp = dss_len(flags) as u8;
            let mut want = vec![exp];
            if has_map {
                want.push(exp + 2);
            }
            assert_eq!(
                valid_lengths(2, 0, Some(flags), ACK),
                want,
                "flags {flags:#x}"
            );
        }
        // the reserved bits of the flags byte are ignored
        let mut opt = b::dss(&b::Dss {
            data_ack: Some(5),
            ..Default::default()
        });
        opt[3] |= 0xe0;
        assert!(matches!(
            parse(&opt, ACK),
            Ok(MptcpOption::Dss {
                flags: 0x01,
                data_ack: Some(5),
                ..
            })
        ));
        // the largest form: 4 + 8 + 8 + 4 + 2 + 2 = 28
        assert_eq!(dss_len(0x1f) + 2, 28);
    }

    #[test]
    fn add_addr_every_form() {
        let v4 = [192, 0, 2, 33];
        let v6 = [0x20, 0x01, 0xd, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let mut v4_16 = [0u8; 16];
        v4_16[..4].copy_from_slice(&v4);
        for (addr, family, addr16, base) in [
            (&v4[..], IpFamily::V4, v4_16, 8u8),
            (&v6[..], IpFamily::V6, v6, 20),
        ] {
            for port in [None, Some(8443u16)] {
                for hmac in [None, Some(0x0102_0304_0506_0708u64)] {
                    let opt = b::add_addr(7, addr, port, hmac);
                    let len = base
                        + if port.is_some() { 2 } else { 0 }
                        + if hmac.is_some() { 8 } else { 0 };
                    assert_eq!(opt.len(), len as usize);
                    assert_eq!(
                        parse(&opt, ACK),
                        Ok(MptcpOption::AddAddr {
                            echo: hmac.is_none(),
                            addr_id: 7,
                            family,
                            addr: addr16,
                            port
                        })
                    );
                }
            }
        }
        assert_eq!(valid_lengths(3, 1, None, ACK), vec![8, 10, 20, 22]);
        assert_eq!(valid_lengths(3, 0, None, ACK), vec![16, 18, 28, 30]);
    }

    #[test]
    fn remove_addr() {
        assert_eq!(
            parse(&b::remove_addr(&[1]), ACK),
            Ok(MptcpOption::RemoveAddr { count: 1 })
        );
        assert_eq!(
            parse(&b::remove_addr(&[1, 2, 3, 4, 5]), ACK),
            Ok(MptcpOption::RemoveAddr { count: 5 })
        );
        assert_eq!(
            valid_lengths(4, 0, None, ACK),
            (4..=40).collect::<Vec<u8>>()
        );
        assert_eq!(
            parse(&raw(4, 0, 3), ACK),
            Err(MptcpError::BadLength { subtype: 4, len: 3 })
        );
    }

    #[test]
    fn prio_fail_fastclose_tcprst() {
        assert_eq!(
            parse(&b::prio(true, None), ACK),
            Ok(MptcpOption::Prio {
                backup: true,
                addr_id: None
            })
        );
        assert_eq!(
            parse(&b::prio(false, Some(4)), ACK),
            Ok(MptcpOption::Prio {
                backup: false,
                addr_id: Some(4)
            })
        );
        assert_eq!(valid_lengths(5, 1, None, ACK), vec![3, 4]);
        assert_eq!(
            parse(&b::fail(0xdead_beef_0000_0001), ACK),
            Ok(MptcpOption::Fail {
                dsn: 0xdead_beef_0000_0001
            })
        );
        assert_eq!(valid_lengths(6, 0, None, ACK), vec![12]);
        assert_eq!(
            parse(&b::fastclose(0x0123_4567_89ab_cdef), ACK | TCP_RST),
            Ok(MptcpOption::FastClose {
                receiver_key: 0x0123_4567_89ab_cdef
            })
        );
        assert_eq!(valid_lengths(7, 0, None, ACK), vec![12]);
        assert_eq!(
            parse(&b::tcprst(0x0b, 3), TCP_RST),
            Ok(MptcpOption::TcpRst {
                flags: 0x0b,
                reason: 3
            })
        );
        assert_eq!(valid_lengths(8, 0, None, TCP_RST), vec![4]);
    }

    #[test]
    fn unknown_subtypes() {
        for subtype in 9..=15u8 {
            for len in 3..=40u8 {
                assert_eq!(
                    parse(&raw(subtype, 0, len), ACK),
                    Ok(MptcpOption::Unknown { subtype })
                );
            }
        }
    }

    #[test]
    fn option_framing_errors() {
        let opt = b::join_syn(false, 1, 2, 3);
        // not kind 30
        let mut o = opt.clone();
        o[0] = 29;
        assert_eq!(parse(&o, SYN), Err(MptcpError::NotMptcp { kind: 29 }));
        // OptionRef length disagrees with the frame
        let mut f = opt.clone();
        f.extend([0; 8]);
        assert_eq!(
            parse_mptcp(&f[..], OptionRef { offset: 0, len: 16 }, SYN),
            Err(MptcpError::LengthMismatch {
                option_len: 16,
                frame_len: 12
            })
        );
        // length 0, 1, 2
        for len in 0..3u8 {
            assert_eq!(
                parse(&[30, len, 0x10, 0], SYN),
                Err(MptcpError::TooShort { len })
            );
        }
        // every frame prefix that cuts the option is Truncated
        for form in [
            (b::capable_ack_data(1, 0, 1, 2, 3, Some(4)), ACK),
            (b::join_synack(true, 1, 2, 3), SYNACK),
            (b::add_addr(1, &[1; 16], Some(2), Some(3)), ACK),
            (b::dss(&b::Dss::full()), ACK),
            (b::prio(true, None), ACK),
        ] {
            let (opt, flags) = form;
            for cut in 0..opt.len() {
                assert_eq!(
                    parse_mptcp(
                        &opt[..cut],
                        OptionRef {
                            offset: 0,
                            len: opt[1]
                        },
                        flags
                    ),
                    Err(MptcpError::Truncated),
                    "{opt:?} cut at {cut}"
                );
            }
            assert!(
                parse_mptcp(
                    &opt[..],
                    OptionRef {
                        offset: 0,
                        len: opt[1]
                    },
                    flags
                )
                .is_ok()
            );
        }
        // an offset past the parse limit
        assert_eq!(
            parse_mptcp(
                &[0u8; 8][..],
                OptionRef {
                    offset: u16::MAX,
                    len: 4
                },
                ACK
            ),
            Err(MptcpError::Truncated)
        );
    }
}
