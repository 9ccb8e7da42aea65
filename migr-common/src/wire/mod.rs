//! Packet parsers: Ethernet (+ one 802.1Q tag), IPv4/IPv6 (+ extension headers),
//! UDP, TCP (+ option walk), QUIC invariant headers and MPTCP options.
//!
//! The same code runs in the XDP program and on the host, so every parser:
//! - is generic over [`PacketBytes`](crate::PacketBytes) and reads only through it;
//! - never indexes slices, never allocates, never panics;
//! - loops only with a constant bound (`while i < CONST`);
//! - returns small `Copy` structs and enums by value.
//!
//! Offsets handed back are absolute frame offsets (from the first byte of the
//! Ethernet header). They are stored as `u16` and are always far below
//! `u16::MAX`: the deepest one is `18 + 40 + 4 * 2048 + 60` (VLAN, IPv6 with
//! four maximal extension headers, TCP with options).
//!
//! Entry points:
//! - [`packet::parse_packet`]: L2 to L4 in one call, giving a [`PacketInfo`];
//! - [`quic::parse_quic`]: the QUIC header inside a UDP payload;
//! - [`mptcp::parse_mptcp`]: the MPTCP option that `parse_packet` located.

pub mod ethernet;
pub mod field;
pub mod ip;
pub mod mptcp;
pub mod packet;
pub mod quic;
pub mod tcp;
pub mod udp;

#[cfg(test)]
mod tests;

pub use ethernet::EthInfo;
pub use ip::{IpFamily, IpInfo};
pub use mptcp::{CapableKind, JoinKind, MptcpError, MptcpOption};
pub use packet::{L4Info, PacketInfo};
pub use quic::{CidRef, LongPacketType, QuicError, QuicHeader};
pub use tcp::{OptionRef, TcpInfo};
pub use udp::UdpInfo;

use crate::PacketBytes;

/// Why [`packet::parse_packet`] (or one of the layer parsers) gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 or IPv6. `ethertype` is the one after the VLAN tag, if any.
    /// Not an error as such: the packet is simply none of our business.
    NotIp { ethertype: u16 },
    /// The frame ends before a header field we need (or the field lies beyond
    /// [`MAX_PARSE_OFFSET`](crate::packet_bytes::MAX_PARSE_OFFSET)).
    Truncated,
    /// A header contradicts itself or the frame (bad version, bad length field).
    Malformed(MalformedKind),
    /// Well formed, but something this parser deliberately does not handle.
    Unsupported(UnsupportedKind),
}

/// Which field of which header was inconsistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedKind {
    /// IPv4 header whose version is not 4, or IPv6 header whose version is not 6.
    IpVersion,
    /// IPv4 IHL below 5.
    Ipv4Ihl,
    /// IPv4 total length shorter than the header, or (IPv4 and IPv6) longer
    /// than the bytes the frame holds after the L3 offset.
    IpLength,
    /// An IPv6 extension header that does not fit inside the IPv6 payload.
    Ipv6ExtHeader,
    /// UDP length below 8, larger than the IP payload, or an IP payload too
    /// short for the 8-byte UDP header.
    UdpLength,
    /// TCP data offset below 5, or a TCP header (fixed part or with options)
    /// that does not fit inside the IP payload.
    TcpDataOffset,
    /// A TCP option whose length byte is missing, below 2, or runs past the
    /// end of the TCP header.
    TcpOptionLength,
}

/// What was recognised but is not handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsupportedKind {
    /// A second VLAN tag (QinQ), or an outer 802.1ad / 0x9100 tag.
    Vlan,
    /// An IPv4 fragment (MF set or non-zero offset) or an IPv6 Fragment header.
    Fragment,
    /// More than [`ip::MAX_IPV6_EXT_HEADERS`] IPv6 extension headers.
    ExtHeaders,
}

#[inline(always)]
pub(crate) fn read_u8<F: PacketBytes + ?Sized>(f: &F, offset: usize) -> Result<u8, ParseError> {
    f.u8_at(offset).ok_or(ParseError::Truncated)
}

#[inline(always)]
pub(crate) fn read_be16<F: PacketBytes + ?Sized>(f: &F, offset: usize) -> Result<u16, ParseError> {
    f.be16_at(offset).ok_or(ParseError::Truncated)
}

#[inline(always)]
pub(crate) fn read_bytes<F: PacketBytes + ?Sized, const N: usize>(
    f: &F,
    offset: usize,
) -> Result<[u8; N], ParseError> {
    f.load::<N>(offset).ok_or(ParseError::Truncated)
}
