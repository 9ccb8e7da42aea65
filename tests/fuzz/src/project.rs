//! migr-common's results, projected onto the reference's types (field by field,
//! nothing dropped), so that the targets can compare with `==`.

use migr_common::wire::{
    CapableKind, EthInfo, IpFamily, IpInfo, JoinKind, L4Info, MalformedKind, MptcpError,
    MptcpOption, OptionRef, PacketInfo, ParseError, QuicError, QuicHeader, TcpInfo, UdpInfo,
    UnsupportedKind, quic::CidRef, quic::LongPacketType,
};

use crate::reference as r;

pub fn parse_error(e: ParseError) -> r::PacketError {
    match e {
        ParseError::NotIp { ethertype } => r::PacketError::NotIp(ethertype),
        ParseError::Truncated => r::PacketError::Truncated,
        ParseError::Malformed(m) => r::PacketError::Malformed(match m {
            MalformedKind::IpVersion => r::Malformed::IpVersion,
            MalformedKind::Ipv4Ihl => r::Malformed::Ipv4Ihl,
            MalformedKind::IpLength => r::Malformed::IpLength,
            MalformedKind::Ipv6ExtHeader => r::Malformed::Ipv6ExtHeader,
            MalformedKind::UdpLength => r::Malformed::UdpLength,
            MalformedKind::TcpDataOffset => r::Malformed::TcpDataOffset,
            MalformedKind::TcpOptionLength => r::Malformed::TcpOptionLength,
        }),
        ParseError::Unsupported(u) => r::PacketError::Unsupported(match u {
            UnsupportedKind::Vlan => r::Unsupported::Vlan,
            UnsupportedKind::Fragment => r::Unsupported::Fragment,
            UnsupportedKind::ExtHeaders => r::Unsupported::ExtHeaders,
        }),
    }
}

pub fn result<T, U>(
    res: Result<T, ParseError>,
    ok: impl FnOnce(T) -> U,
) -> Result<U, r::PacketError> {
    res.map(ok).map_err(parse_error)
}

pub fn opt(o: OptionRef) -> r::Opt {
    r::Opt {
        offset: o.offset as usize,
        len: o.len,
    }
}

pub fn eth(e: EthInfo) -> r::Eth {
    r::Eth {
        ethertype: e.ethertype,
        vlan: e.vlan,
        l3: e.l3_offset,
    }
}

pub fn ip(i: IpInfo) -> r::Ip {
    r::Ip {
        ipv6: i.family == IpFamily::V6,
        src: i.src_addr,
        dst: i.dst_addr,
        proto: i.ip_proto,
        l4: i.l4_offset,
        end: i.ip_end,
    }
}

pub fn udp(u: UdpInfo) -> r::Udp {
    r::Udp {
        src_port: u.src_port,
        dst_port: u.dst_port,
        payload_offset: u.payload_offset as usize,
        payload_len: u.payload_len as usize,
    }
}

pub fn tcp(t: TcpInfo) -> r::Tcp {
    r::Tcp {
        src_port: t.src_port,
        dst_port: t.dst_port,
        seq: t.seq,
        ack: t.ack,
        flags: t.flags,
        header_len: t.header_len as usize,
        payload_offset: t.payload_offset as usize,
        payload_len: t.payload_len as usize,
        mptcp: t.mptcp.map(opt),
    }
}

pub fn packet(p: PacketInfo) -> r::Packet {
    r::Packet {
        vlan: p.vlan,
        ethertype: p.ethertype,
        l3_offset: p.l3_offset as usize,
        ipv6: p.family == IpFamily::V6,
        src: p.src_addr,
        dst: p.dst_addr,
        proto: p.ip_proto,
        l4_offset: p.l4_offset as usize,
        l4_len: p.l4_len as usize,
        l4: match p.l4 {
            L4Info::Udp {
                src_port,
                dst_port,
                payload_offset,
                payload_len,
            } => r::Transport::Udp(r::Udp {
                src_port,
                dst_port,
                payload_offset: payload_offset as usize,
                payload_len: payload_len as usize,
            }),
            L4Info::Tcp(t) => r::Transport::Tcp(tcp(t)),
            L4Info::Other => r::Transport::Other,
        },
    }
}

fn cid(c: CidRef) -> r::Cid {
    r::Cid {
        offset: c.offset as usize,
        len: c.len,
    }
}

pub fn quic(res: Result<QuicHeader, QuicError>) -> Result<r::QuicHeader, r::QuicError> {
    match res {
        Ok(QuicHeader::Long {
            version,
            packet_type,
            dcid: d,
            scid: s,
        }) => Ok(r::QuicHeader::Long {
            version,
            packet_type: match packet_type {
                LongPacketType::Initial => r::PacketType::Initial,
                LongPacketType::ZeroRtt => r::PacketType::ZeroRtt,
                LongPacketType::Handshake => r::PacketType::Handshake,
                LongPacketType::Retry => r::PacketType::Retry,
            },
            dcid: cid(d),
            scid: cid(s),
        }),
        Ok(QuicHeader::Short { dcid: d }) => Ok(r::QuicHeader::Short { dcid: cid(d) }),
        Ok(QuicHeader::VersionNegotiation { dcid: d, scid: s }) => {
            Ok(r::QuicHeader::VersionNegotiation {
                dcid: cid(d),
                scid: cid(s),
            })
        }
        Err(QuicError::Truncated) => Err(r::QuicError::Truncated),
        Err(QuicError::FixedBitClear) => Err(r::QuicError::FixedBitClear),
        Err(QuicError::CidTooLong) => Err(r::QuicError::CidTooLong),
        Err(QuicError::InvalidShortCidLen) => Err(r::QuicError::InvalidShortCidLen),
    }
}

pub fn mptcp(res: Result<MptcpOption, MptcpError>) -> Result<r::Mptcp, r::MptcpError> {
    let option = match res {
        Ok(o) => o,
        Err(e) => {
            return Err(match e {
                MptcpError::Truncated => r::MptcpError::Truncated,
                MptcpError::NotMptcp { kind } => r::MptcpError::NotMptcp { kind },
                MptcpError::LengthMismatch {
                    option_len,
                    frame_len,
                } => r::MptcpError::LengthMismatch {
                    option_len,
                    frame_len,
                },
                MptcpError::TooShort { len } => r::MptcpError::TooShort { len },
                MptcpError::BadLength { subtype, len } => r::MptcpError::BadLength { subtype, len },
                MptcpError::WrongSegment { subtype, len } => {
                    r::MptcpError::WrongSegment { subtype, len }
                }
            });
        }
    };
    Ok(match option {
        MptcpOption::Capable {
            kind,
            version,
            flags,
            sender_key,
            receiver_key,
            data_len,
        } => r::Mptcp::Capable {
            kind: match kind {
                CapableKind::Syn => r::CapableKind::Syn,
                CapableKind::SynAck => r::CapableKind::SynAck,
                CapableKind::Ack => r::CapableKind::Ack,
                CapableKind::AckWithData => r::CapableKind::AckWithData,
            },
            version,
            flags,
            sender_key,
            receiver_key,
            data_len,
        },
        MptcpOption::Join { kind } => match kind {
            JoinKind::Syn {
                backup,
                addr_id,
                token,
                nonce,
            } => r::Mptcp::JoinSyn {
                backup,
                addr_id,
                token,
                nonce,
            },
            JoinKind::SynAck {
                backup,
                addr_id,
                hmac,
                nonce,
            } => r::Mptcp::JoinSynAck {
                backup,
                addr_id,
                hmac,
                nonce,
            },
            JoinKind::Ack { hmac } => r::Mptcp::JoinAck { hmac },
        },
        MptcpOption::Dss {
            flags,
            data_ack,
            dsn,
            subflow_seq,
            data_len,
            data_fin,
        } => r::Mptcp::Dss {
            flags,
            data_ack,
            dsn,
            subflow_seq,
            data_len,
            data_fin,
        },
        MptcpOption::AddAddr {
            echo,
            addr_id,
            family,
            addr,
            port,
        } => r::Mptcp::AddAddr {
            echo,
            addr_id,
            ipv6: family == IpFamily::V6,
            addr,
            port,
        },
        MptcpOption::RemoveAddr { count } => r::Mptcp::RemoveAddr { count },
        MptcpOption::Prio { backup, addr_id } => r::Mptcp::Prio { backup, addr_id },
        MptcpOption::Fail { dsn } => r::Mptcp::Fail { dsn },
        MptcpOption::FastClose { receiver_key } => r::Mptcp::FastClose { receiver_key },
        MptcpOption::TcpRst { flags, reason } => r::Mptcp::TcpRst { flags, reason },
        MptcpOption::Unknown { subtype } => r::Mptcp::Unknown { subtype },
    })
}
