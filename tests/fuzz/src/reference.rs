//! Slow reference parsers, written for the fuzz targets from the RFCs and from
//! the choices migr-common *documents*, not from its code. Nothing here calls
//! (or imports) migr-common: the fuzz targets convert migr-common's results into
//! these types ([`crate::project`]) and demand equality.
//!
//! Style: read a header into a slice, then look at the slice. No `PacketBytes` trait,
//! no offsets into `u16`, no bounded-loop tricks.
//!
//! # Choices mirrored from migr-common
//!
//! Where the RFCs leave room (or say nothing, because it is a matter of what
//! this classifier supports), the reference does what migr-common's docs say:
//!
//! - **Error order.** When a header has several defects, the first check in
//!   this order wins: the frame must hold the header's fixed part (`Truncated`),
//!   then version, then length fields, then "unsupported". A layer is only
//!   judged when the layers before it are fine (`parse_packet` docs).
//! - **Ethernet**: one 802.1Q (0x8100) tag; a second tag, or an 802.1ad (0x88a8)
//!   or 0x9100 tag anywhere, is `Unsupported(Vlan)`.
//! - **IPv4**: fragments (MF or a non-zero offset) are unsupported; a total
//!   length shorter than the frame is fine (link-layer padding).
//! - **IPv6**: Hop-by-Hop, Routing and Destination Options headers are skipped,
//!   at most four of them and in any order (RFC 8200 4.1 wants Hop-by-Hop
//!   first; migr-common does not insist and neither does this); a fifth is
//!   `Unsupported(ExtHeaders)`, a Fragment header `Unsupported(Fragment)`;
//!   anything else ends the chain (ESP, AH, No Next Header, unknown).
//! - **UDP**: a UDP length shorter than the IP payload is accepted (as Linux).
//! - **TCP options**: EOL ends the walk (bytes after it are padding), at most
//!   40 options are looked at (`MAX_TCP_OPTION_STEPS`; it only matters for
//!   `find_option` windows wider than the 40-byte option space), the first
//!   option of the wanted kind is reported, and every option walked, before or
//!   after it, must have a sane length.
//! - **QUIC**: the long-header prefix (first byte, version, DCID length) must be
//!   there before the fixed bit is judged (version 0, Version Negotiation, does
//!   not need it); CID lengths above 20 are refused for every version, before
//!   the CID itself must be there; unknown versions read the packet type bits
//!   as v1; nothing after the SCID is looked at.
//! - **MPTCP**: the lengths of RFC 8684 section 3 per subtype, plus the RFC 6824
//!   forms migr-common accepts (MP_CAPABLE of length 12 on a SYN, MP_PRIO of
//!   length 4). MP_CAPABLE and MP_JOIN forms are told apart by length and the
//!   segment's SYN/ACK flags: the SYN forms need SYN without ACK, the SYN/ACK
//!   forms SYN and ACK, the ACK forms no SYN (ACK itself is not required).
//!   The option (kind and length) must be in the frame before its kind is
//!   judged, and the whole option before its subtype is.
//! - **Server id** (`CidConfig`): the id bytes are read where the config says,
//!   without checking the CID's length (the classifier checks that first).
//!
//! # The parse-offset limit
//!
//! migr-common refuses to read at offsets beyond `MAX_PARSE_OFFSET` (512), for
//! the BPF verifier. How that shows depends on how its reads are grouped, which
//! is no business of a reference. So this reference does *not* apply the
//! limit; instead [`Bytes`] remembers the deepest byte any read asked for, and
//! the targets accept a `Truncated` from migr-common where the reference
//! needed a byte past the limit. Everywhere else the results must be equal.

use std::cell::Cell;

/// Mirrors `migr_common::packet_bytes::MAX_PARSE_OFFSET`.
pub const MAX_PARSE_OFFSET: usize = 512;

/// The frame, and the deepest byte index asked for so far.
pub struct Bytes<'a> {
    data: &'a [u8],
    deepest: Cell<Option<usize>>,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            deepest: Cell::new(None),
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `n` bytes at `at`, or `None` if the frame ends before.
    pub fn get(&self, at: usize, n: usize) -> Option<&'a [u8]> {
        let last = at.saturating_add(n.max(1) - 1);
        if self.deepest.get().is_none_or(|d| last > d) {
            self.deepest.set(Some(last));
        }
        self.data.get(at..at.checked_add(n)?)
    }

    pub fn byte(&self, at: usize) -> Option<u8> {
        self.get(at, 1).map(|b| b[0])
    }

    /// Did any read so far ask for a byte beyond [`MAX_PARSE_OFFSET`]?
    pub fn went_past_limit(&self) -> bool {
        self.deepest.get().is_some_and(|d| d > MAX_PARSE_OFFSET)
    }

    /// Forgets the reads so far (to judge the next parse on the same frame).
    pub fn forget(&self) {
        self.deepest.set(None);
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut v = 0u64;
    for byte in &b[..8] {
        v = (v << 8) | *byte as u64;
    }
    v
}

// ---------------------------------------------------------------------------
// Ethernet, IP, UDP, TCP
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    NotIp(u16),
    Truncated,
    Malformed(Malformed),
    Unsupported(Unsupported),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    IpVersion,
    Ipv4Ihl,
    IpLength,
    Ipv6ExtHeader,
    UdpLength,
    TcpDataOffset,
    TcpOptionLength,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    Vlan,
    Fragment,
    ExtHeaders,
}

use PacketError::Truncated;

fn malformed<T>(m: Malformed) -> Result<T, PacketError> {
    Err(PacketError::Malformed(m))
}

fn unsupported<T>(u: Unsupported) -> Result<T, PacketError> {
    Err(PacketError::Unsupported(u))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eth {
    pub ethertype: u16,
    pub vlan: Option<u16>,
    pub l3: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub ipv6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub l4: usize,
    pub end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_offset: usize,
    pub payload_len: usize,
}

/// A TCP option's place: the offset of its kind byte and its length byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opt {
    pub offset: usize,
    pub len: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub header_len: usize,
    pub payload_offset: usize,
    pub payload_len: usize,
    pub mptcp: Option<Opt>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp(Udp),
    Tcp(Tcp),
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub vlan: Option<u16>,
    pub ethertype: u16,
    pub l3_offset: usize,
    pub ipv6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub l4_offset: usize,
    pub l4_len: usize,
    pub l4: Transport,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;

fn is_tag(ethertype: u16) -> bool {
    ethertype == TPID_8021Q || ethertype == 0x88a8 || ethertype == 0x9100
}

/// Ethernet II: destination, source, EtherType; one optional 802.1Q tag.
pub fn ethernet(b: &Bytes) -> Result<Eth, PacketError> {
    let ethertype = be16(b.get(12, 2).ok_or(Truncated)?);
    if ethertype == TPID_8021Q {
        // TCI and the encapsulated EtherType
        let tag = b.get(14, 4).ok_or(Truncated)?;
        let inner = be16(&tag[2..]);
        if is_tag(inner) {
            return unsupported(Unsupported::Vlan);
        }
        return Ok(Eth {
            ethertype: inner,
            vlan: Some(be16(tag) & 0x0fff),
            l3: 18,
        });
    }
    if is_tag(ethertype) {
        return unsupported(Unsupported::Vlan);
    }
    Ok(Eth {
        ethertype,
        vlan: None,
        l3: 14,
    })
}

fn widen(v4: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&v4[..4]);
    a
}

/// RFC 791.
pub fn ipv4(b: &Bytes, l3: usize) -> Result<Ip, PacketError> {
    let h = b.get(l3, 20).ok_or(Truncated)?;
    if h[0] >> 4 != 4 {
        return malformed(Malformed::IpVersion);
    }
    let header_len = (h[0] & 0x0f) as usize * 4;
    if header_len < 20 {
        return malformed(Malformed::Ipv4Ihl);
    }
    let total_len = be16(&h[2..]) as usize;
    if total_len < header_len || l3 + total_len > b.len() {
        return malformed(Malformed::IpLength);
    }
    let flags_and_offset = be16(&h[6..]);
    let more_fragments = flags_and_offset & 0x2000 != 0;
    let fragment_offset = flags_and_offset & 0x1fff;
    if more_fragments || fragment_offset != 0 {
        return unsupported(Unsupported::Fragment);
    }
    Ok(Ip {
        ipv6: false,
        src: widen(&h[12..16]),
        dst: widen(&h[16..20]),
        proto: h[9],
        l4: l3 + header_len,
        end: l3 + total_len,
    })
}

/// RFC 8200: fixed header, then Hop-by-Hop (0), Routing (43) and Destination
/// Options (60) headers, each `(Hdr Ext Len + 1) * 8` bytes.
pub fn ipv6(b: &Bytes, l3: usize) -> Result<Ip, PacketError> {
    const SKIPPED: [u8; 3] = [0, 43, 60];
    const FRAGMENT: u8 = 44;
    let h = b.get(l3, 40).ok_or(Truncated)?;
    if h[0] >> 4 != 6 {
        return malformed(Malformed::IpVersion);
    }
    let payload_start = l3 + 40;
    let end = payload_start + be16(&h[4..]) as usize;
    if end > b.len() {
        return malformed(Malformed::IpLength);
    }
    let mut next = h[6];
    let mut at = payload_start;
    for _ in 0..4 {
        if !SKIPPED.contains(&next) {
            break;
        }
        if at + 8 > end {
            return malformed(Malformed::Ipv6ExtHeader);
        }
        let e = b.get(at, 2).ok_or(Truncated)?;
        let len = (e[1] as usize + 1) * 8;
        if at + len > end {
            return malformed(Malformed::Ipv6ExtHeader);
        }
        next = e[0];
        at += len;
    }
    if next == FRAGMENT {
        return unsupported(Unsupported::Fragment);
    }
    if SKIPPED.contains(&next) {
        return unsupported(Unsupported::ExtHeaders);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    Ok(Ip {
        ipv6: true,
        src,
        dst,
        proto: next,
        l4: at,
        end,
    })
}

/// RFC 768, inside an IP packet that ends at `ip_end`.
pub fn udp(b: &Bytes, l4: usize, ip_end: usize) -> Result<Udp, PacketError> {
    if l4 + 8 > ip_end {
        return malformed(Malformed::UdpLength);
    }
    let h = b.get(l4, 8).ok_or(Truncated)?;
    let len = be16(&h[4..]) as usize;
    if len < 8 || l4 + len > ip_end {
        return malformed(Malformed::UdpLength);
    }
    Ok(Udp {
        src_port: be16(h),
        dst_port: be16(&h[2..]),
        payload_offset: l4 + 8,
        payload_len: len - 8,
    })
}

/// RFC 9293 3.1, inside an IP packet that ends at `ip_end`.
pub fn tcp(b: &Bytes, l4: usize, ip_end: usize) -> Result<Tcp, PacketError> {
    if l4 + 20 > ip_end {
        return malformed(Malformed::TcpDataOffset);
    }
    let h = b.get(l4, 20).ok_or(Truncated)?;
    let header_len = (h[12] >> 4) as usize * 4;
    if header_len < 20 || l4 + header_len > ip_end {
        return malformed(Malformed::TcpDataOffset);
    }
    // The whole header, options included, is read.
    b.get(l4, header_len).ok_or(Truncated)?;
    let mptcp = find_option(b, l4 + 20, l4 + header_len, 30)?;
    Ok(Tcp {
        src_port: be16(h),
        dst_port: be16(&h[2..]),
        seq: be32(&h[4..]),
        ack: be32(&h[8..]),
        flags: h[13],
        header_len,
        payload_offset: l4 + header_len,
        payload_len: ip_end - (l4 + header_len),
        mptcp,
    })
}

/// The first option of kind `kind` among the TCP options in `[start, end)`.
pub fn find_option(
    b: &Bytes,
    start: usize,
    end: usize,
    kind: u8,
) -> Result<Option<Opt>, PacketError> {
    const EOL: u8 = 0;
    const NOP: u8 = 1;
    let mut at = start;
    let mut found = None;
    for _ in 0..40 {
        if at >= end {
            break;
        }
        let k = b.byte(at).ok_or(Truncated)?;
        if k == EOL {
            break;
        }
        if k == NOP {
            at += 1;
            continue;
        }
        if at + 1 >= end {
            return malformed(Malformed::TcpOptionLength);
        }
        let len = b.byte(at + 1).ok_or(Truncated)?;
        if len < 2 || at + len as usize > end {
            return malformed(Malformed::TcpOptionLength);
        }
        if k == kind && found.is_none() {
            found = Some(Opt { offset: at, len });
        }
        at += len as usize;
    }
    Ok(found)
}

/// Ethernet, IP, then UDP or TCP.
pub fn packet(b: &Bytes) -> Result<Packet, PacketError> {
    let eth = ethernet(b)?;
    let ip = match eth.ethertype {
        ETH_IPV4 => ipv4(b, eth.l3)?,
        ETH_IPV6 => ipv6(b, eth.l3)?,
        other => return Err(PacketError::NotIp(other)),
    };
    let l4 = match ip.proto {
        17 => Transport::Udp(udp(b, ip.l4, ip.end)?),
        6 => Transport::Tcp(tcp(b, ip.l4, ip.end)?),
        _ => Transport::Other,
    };
    Ok(Packet {
        vlan: eth.vlan,
        ethertype: eth.ethertype,
        l3_offset: eth.l3,
        ipv6: ip.ipv6,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        l4_offset: ip.l4,
        l4_len: ip.end - ip.l4,
        l4,
    })
}

// ---------------------------------------------------------------------------
// QUIC (RFC 8999, RFC 9000 17, RFC 9369 3.2)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cid {
    pub offset: usize,
    pub len: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicHeader {
    Long {
        version: u32,
        packet_type: PacketType,
        dcid: Cid,
        scid: Cid,
    },
    Short {
        dcid: Cid,
    },
    VersionNegotiation {
        dcid: Cid,
        scid: Cid,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicError {
    Truncated,
    FixedBitClear,
    CidTooLong,
    InvalidShortCidLen,
}

pub const QUIC_V2: u32 = 0x6b33_43cf;

/// The long packet type from the two type bits.
fn packet_type(version: u32, bits: u8) -> PacketType {
    use PacketType::*;
    // RFC 9369 3.2: Initial 0b01, 0-RTT 0b10, Handshake 0b11, Retry 0b00.
    const V2: [PacketType; 4] = [Retry, Initial, ZeroRtt, Handshake];
    // RFC 9000 17.2: Initial 0x0, 0-RTT 0x1, Handshake 0x2, Retry 0x3.
    const V1: [PacketType; 4] = [Initial, ZeroRtt, Handshake, Retry];
    if version == QUIC_V2 {
        V2[bits as usize]
    } else {
        V1[bits as usize]
    }
}

/// The QUIC header in the UDP payload `[start, end)` (`end` clamped to the frame).
pub fn quic(
    b: &Bytes,
    start: usize,
    end: usize,
    short_dcid_len: u8,
    grease_ok: bool,
) -> Result<QuicHeader, QuicError> {
    const MAX_CID: u8 = 20;
    let end = end.min(b.len());
    if start >= end {
        return Err(QuicError::Truncated);
    }
    let first = b.byte(start).ok_or(QuicError::Truncated)?;
    let long = first & 0x80 != 0;
    let fixed_bit = first & 0x40 != 0;
    if !long {
        if !fixed_bit && !grease_ok {
            return Err(QuicError::FixedBitClear);
        }
        if short_dcid_len == 0 || short_dcid_len > MAX_CID {
            return Err(QuicError::InvalidShortCidLen);
        }
        if start + 1 + short_dcid_len as usize > end {
            return Err(QuicError::Truncated);
        }
        return Ok(QuicHeader::Short {
            dcid: Cid {
                offset: start + 1,
                len: short_dcid_len,
            },
        });
    }
    // first byte, version (4), DCID length
    if start + 6 > end {
        return Err(QuicError::Truncated);
    }
    let h = b.get(start, 6).ok_or(QuicError::Truncated)?;
    let version = be32(&h[1..5]);
    if version != 0 && !fixed_bit && !grease_ok {
        return Err(QuicError::FixedBitClear);
    }
    let dcid_len = h[5];
    if dcid_len > MAX_CID {
        return Err(QuicError::CidTooLong);
    }
    let dcid = Cid {
        offset: start + 6,
        len: dcid_len,
    };
    let scid_len_at = dcid.offset + dcid_len as usize;
    if scid_len_at >= end {
        return Err(QuicError::Truncated);
    }
    let scid_len = b.byte(scid_len_at).ok_or(QuicError::Truncated)?;
    if scid_len > MAX_CID {
        return Err(QuicError::CidTooLong);
    }
    let scid = Cid {
        offset: scid_len_at + 1,
        len: scid_len,
    };
    if scid.offset + scid_len as usize > end {
        return Err(QuicError::Truncated);
    }
    if version == 0 {
        return Ok(QuicHeader::VersionNegotiation { dcid, scid });
    }
    Ok(QuicHeader::Long {
        version,
        packet_type: packet_type(version, (first >> 4) & 0x03),
        dcid,
        scid,
    })
}

// ---------------------------------------------------------------------------
// QUIC-LB style server id
// ---------------------------------------------------------------------------

/// Is (CID length, id offset, id length) a usable config?
pub fn cid_config_ok(cid_len: u8, id_offset: u8, id_len: u8) -> bool {
    (1..=20).contains(&cid_len)
        && (1..=4).contains(&id_len)
        && id_offset as usize + id_len as usize <= cid_len as usize
}

/// The big-endian server id of a CID starting at `cid_at` in `b`.
pub fn server_id(b: &Bytes, cid_at: usize, cid_len: u8, id_offset: u8, id_len: u8) -> Option<u32> {
    if !cid_config_ok(cid_len, id_offset, id_len) {
        return None;
    }
    let id = b.get(cid_at + id_offset as usize, id_len as usize)?;
    Some(id.iter().fold(0u32, |v, byte| (v << 8) | *byte as u32))
}

// ---------------------------------------------------------------------------
// MPTCP (RFC 8684 section 3)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapableKind {
    Syn,
    SynAck,
    Ack,
    AckWithData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mptcp {
    Capable {
        kind: CapableKind,
        version: u8,
        flags: u8,
        sender_key: Option<u64>,
        receiver_key: Option<u64>,
        data_len: Option<u16>,
    },
    JoinSyn {
        backup: bool,
        addr_id: u8,
        token: u32,
        nonce: u32,
    },
    JoinSynAck {
        backup: bool,
        addr_id: u8,
        hmac: u64,
        nonce: u32,
    },
    JoinAck {
        hmac: u64,
    },
    Dss {
        flags: u8,
        data_ack: Option<u64>,
        dsn: Option<u64>,
        subflow_seq: Option<u32>,
        data_len: Option<u16>,
        data_fin: bool,
    },
    AddAddr {
        echo: bool,
        addr_id: u8,
        ipv6: bool,
        addr: [u8; 16],
        port: Option<u16>,
    },
    RemoveAddr {
        count: u8,
    },
    Prio {
        backup: bool,
        addr_id: Option<u8>,
    },
    Fail {
        dsn: u64,
    },
    FastClose {
        receiver_key: u64,
    },
    TcpRst {
        flags: u8,
        reason: u8,
    },
    Unknown {
        subtype: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MptcpError {
    Truncated,
    NotMptcp { kind: u8 },
    LengthMismatch { option_len: u8, frame_len: u8 },
    TooShort { len: u8 },
    BadLength { subtype: u8, len: u8 },
    WrongSegment { subtype: u8, len: u8 },
}

/// The MPTCP option the TCP walk found at `opt` (its length as the walk saw it),
/// on a segment with TCP flags `tcp_flags`.
pub fn mptcp(b: &Bytes, opt: Opt, tcp_flags: u8) -> Result<Mptcp, MptcpError> {
    let kind_len = b.get(opt.offset, 2).ok_or(MptcpError::Truncated)?;
    if kind_len[0] != 30 {
        return Err(MptcpError::NotMptcp { kind: kind_len[0] });
    }
    let len = kind_len[1];
    if len != opt.len {
        return Err(MptcpError::LengthMismatch {
            option_len: opt.len,
            frame_len: len,
        });
    }
    if len < 3 {
        return Err(MptcpError::TooShort { len });
    }
    let o = b
        .get(opt.offset, len as usize)
        .ok_or(MptcpError::Truncated)?;
    mptcp_body(o, tcp_flags)
}

/// `o` is the whole option: kind, length, subtype, ...
fn mptcp_body(o: &[u8], tcp_flags: u8) -> Result<Mptcp, MptcpError> {
    let len = o.len();
    let subtype = o[2] >> 4;
    let low = o[2] & 0x0f;
    let bad_length = Err(MptcpError::BadLength {
        subtype,
        len: len as u8,
    });
    let wrong_segment = Err(MptcpError::WrongSegment {
        subtype,
        len: len as u8,
    });
    let syn = tcp_flags & 0x02 != 0;
    let ack = tcp_flags & 0x10 != 0;
    let on_syn = syn && !ack;
    let on_synack = syn && ack;
    match subtype {
        // MP_CAPABLE (3.1)
        0 => {
            let kind = match len {
                4 if on_syn => CapableKind::Syn,
                12 if on_syn => CapableKind::Syn, // RFC 6824: the sender's key
                12 if on_synack => CapableKind::SynAck,
                20 if !syn => CapableKind::Ack,
                22 | 24 if !syn => CapableKind::AckWithData,
                4 | 12 | 20 | 22 | 24 => return wrong_segment,
                _ => return bad_length,
            };
            Ok(Mptcp::Capable {
                kind,
                version: low,
                flags: o[3],
                sender_key: (len >= 12).then(|| be64(&o[4..])),
                receiver_key: (len >= 20).then(|| be64(&o[12..])),
                data_len: (len >= 22).then(|| be16(&o[20..])),
            })
        }
        // MP_JOIN (3.2)
        1 => {
            let backup = low & 0x01 != 0;
            match len {
                12 if on_syn => Ok(Mptcp::JoinSyn {
                    backup,
                    addr_id: o[3],
                    token: be32(&o[4..]),
                    nonce: be32(&o[8..]),
                }),
                16 if on_synack => Ok(Mptcp::JoinSynAck {
                    backup,
                    addr_id: o[3],
                    hmac: be64(&o[4..]),
                    nonce: be32(&o[12..]),
                }),
                24 if !syn => Ok(Mptcp::JoinAck {
                    hmac: be64(&o[4..]),
                }),
                12 | 16 | 24 => wrong_segment,
                _ => bad_length,
            }
        }
        // DSS (3.3)
        2 => {
            if len < 4 {
                return bad_length;
            }
            let flags = o[3] & 0x1f;
            let data_ack_present = flags & 0x01 != 0;
            let data_ack_8 = flags & 0x02 != 0;
            let mapping_present = flags & 0x04 != 0;
            let dsn_8 = flags & 0x08 != 0;
            let data_fin = flags & 0x10 != 0;
            let mut fields = &o[4..];
            let mut take = |n: usize| -> Option<&[u8]> {
                let (head, tail) = fields.split_at_checked(n)?;
                fields = tail;
                Some(head)
            };
            let seq = |bytes: &[u8]| {
                if bytes.len() == 8 {
                    be64(bytes)
                } else {
                    be32(bytes) as u64
                }
            };
            let data_ack = match data_ack_present {
                true => match take(if data_ack_8 { 8 } else { 4 }) {
                    Some(v) => Some(seq(v)),
                    None => return bad_length,
                },
                false => None,
            };
            let (dsn, subflow_seq, data_len) = match mapping_present {
                true => {
                    let Some(dsn) = take(if dsn_8 { 8 } else { 4 }).map(seq) else {
                        return bad_length;
                    };
                    let Some(ssn) = take(4).map(be32) else {
                        return bad_length;
                    };
                    let Some(dl) = take(2).map(be16) else {
                        return bad_length;
                    };
                    // then an optional 2-byte checksum
                    if !matches!(fields.len(), 0 | 2) {
                        return bad_length;
                    }
                    (Some(dsn), Some(ssn), Some(dl))
                }
                false => (None, None, None),
            };
            if !mapping_present && !fields.is_empty() {
                return bad_length;
            }
            Ok(Mptcp::Dss {
                flags,
                data_ack,
                dsn,
                subflow_seq,
                data_len,
                data_fin,
            })
        }
        // ADD_ADDR (3.4.1): address id, address, optional port, HMAC unless echo
        3 => {
            let echo = low & 0x01 != 0;
            let hmac_len = if echo { 0 } else { 8 };
            let Some(rest) = len.checked_sub(4 + hmac_len) else {
                return bad_length;
            };
            let (addr_len, port) = match rest {
                4 => (4, false),
                6 => (4, true),
                16 => (16, false),
                18 => (16, true),
                _ => return bad_length,
            };
            let mut addr = [0u8; 16];
            addr[..addr_len].copy_from_slice(&o[4..4 + addr_len]);
            Ok(Mptcp::AddAddr {
                echo,
                addr_id: o[3],
                ipv6: addr_len == 16,
                addr,
                port: port.then(|| be16(&o[4 + addr_len..])),
            })
        }
        // REMOVE_ADDR (3.4.2): one or more address ids
        4 => match len {
            3 => bad_length,
            _ => Ok(Mptcp::RemoveAddr {
                count: (len - 3) as u8,
            }),
        },
        // MP_PRIO (3.3.8), RFC 6824 with an address id
        5 => match len {
            3 => Ok(Mptcp::Prio {
                backup: low & 0x01 != 0,
                addr_id: None,
            }),
            4 => Ok(Mptcp::Prio {
                backup: low & 0x01 != 0,
                addr_id: Some(o[3]),
            }),
            _ => bad_length,
        },
        // MP_FAIL (3.7)
        6 => match len {
            12 => Ok(Mptcp::Fail { dsn: be64(&o[4..]) }),
            _ => bad_length,
        },
        // MP_FASTCLOSE (3.5)
        7 => match len {
            12 => Ok(Mptcp::FastClose {
                receiver_key: be64(&o[4..]),
            }),
            _ => bad_length,
        },
        // MP_TCPRST (3.6)
        8 => match len {
            4 => Ok(Mptcp::TcpRst {
                flags: low,
                reason: o[3],
            }),
            _ => bad_length,
        },
        _ => Ok(Mptcp::Unknown { subtype }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9000_and_9369_type_bits() {
        assert_eq!(packet_type(1, 0), PacketType::Initial);
        assert_eq!(packet_type(1, 3), PacketType::Retry);
        assert_eq!(packet_type(QUIC_V2, 1), PacketType::Initial);
        assert_eq!(packet_type(QUIC_V2, 0), PacketType::Retry);
    }

    #[test]
    fn deepest_read_is_remembered() {
        let data = [0u8; 600];
        let b = Bytes::new(&data);
        assert!(!b.went_past_limit());
        b.get(500, 13);
        assert!(!b.went_past_limit());
        b.get(500, 14);
        assert!(b.went_past_limit());
        b.forget();
        assert!(!b.went_past_limit());
        assert_eq!(b.get(usize::MAX, 4), None);
        assert!(b.went_past_limit());
    }

    #[test]
    fn dss_lengths() {
        // A + a + M + m + checksum: 4 + 8 + 8 + 4 + 2 + 2
        let mut o = vec![30, 28, 0x20, 0x0f];
        o.resize(28, 0);
        assert!(mptcp_body(&o, 0x10).is_ok());
        o.truncate(26);
        o[1] = 26;
        assert!(mptcp_body(&o, 0x10).is_ok());
        o.truncate(25);
        o[1] = 25;
        assert_eq!(
            mptcp_body(&o, 0x10),
            Err(MptcpError::BadLength {
                subtype: 2,
                len: 25
            })
        );
        // no mapping: no checksum either
        let o = [30, 10, 0x20, 0x01, 0, 0, 0, 1, 0, 0];
        assert!(mptcp_body(&o, 0x10).is_err());
    }
}
