//! The FORWARD rewrite: new destination address and port with incremental
//! checksum updates (RFC 1624), and the MAC rewrite. Shared by the XDP program
//! and host tests; the tests check the results with an independent,
//! from-scratch checksum (`migr_testkit::frames::verify_checksums`).

use crate::{
    maps::{FAMILY_V4, FAMILY_V6, ForwardTarget},
    packet_bytes::PacketBytesMut,
    wire::{
        field,
        packet::{IpFamily, L4Info, PacketInfo},
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteError {
    /// The target's address family differs from the packet's.
    FamilyMismatch,
    /// Not UDP or TCP: no port to rewrite.
    NotTransport,
    /// A field to rewrite lies outside the readable frame.
    OutOfFrame,
}

/// `~m + m'` of RFC 1624's eqn. 3 (HC' = ~(~HC + ~m + m')) for one 16-bit
/// word changing from `old` to `new`, unfolded: changes add up, and a
/// checksum takes their sum in one update ([`apply_change`]).
#[inline(always)]
fn word_change(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// [`word_change`] summed over a run of `N` bytes (`N` even, at most 16).
#[inline(always)]
fn bytes_change<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut change = 0;
    let mut i = 0;
    while i + 1 < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        change += word_change(o, n);
        i += 2;
    }
    change
}

/// `check` after changes summing to `change` (at most nine words': an IPv6
/// address and a port, well inside 32 bits), folded once at the end.
#[inline(always)]
fn apply_change(check: u16, change: u32) -> u16 {
    let mut sum = u32::from(!check) + change;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The transport a FORWARD rewrites: its checksum and ports sit at known
/// offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where a frame's headers sit: all a FORWARD needs of the frame's parse,
/// from `parse_packet`'s [`PacketInfo`] or from the XDP fast path's own
/// reading of plain headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub family: IpFamily,
    pub ip_proto: u8,
    pub l3_offset: u16,
    pub l4_offset: u16,
    /// None: not a UDP or TCP header the parser read (another protocol, a
    /// fragment): nothing to rewrite.
    pub transport: Option<Transport>,
}

impl Headers {
    #[inline(always)]
    pub fn of(info: &PacketInfo) -> Self {
        Self {
            family: info.family,
            ip_proto: info.ip_proto,
            l3_offset: info.l3_offset,
            l4_offset: info.l4_offset,
            transport: match info.l4 {
                L4Info::Udp { .. } => Some(Transport::Udp),
                L4Info::Tcp(_) => Some(Transport::Tcp),
                L4Info::Other => None,
            },
        }
    }

    /// Offset of the transport checksum and whether 0 means "no checksum"
    /// (UDP over IPv4).
    #[inline(always)]
    pub fn l4_checksum(&self) -> Result<(usize, bool), RewriteError> {
        let l4 = self.l4_offset as usize;
        match self.transport {
            Some(Transport::Udp) => Ok((l4 + field::udp::CHECKSUM, self.family == IpFamily::V4)),
            Some(Transport::Tcp) => Ok((l4 + field::tcp::CHECKSUM, false)),
            None => Err(RewriteError::NotTransport),
        }
    }
}

/// [`Headers::l4_checksum`] of a parsed frame.
#[inline(always)]
pub fn l4_checksum_offset(info: &PacketInfo) -> Result<(usize, bool), RewriteError> {
    Headers::of(info).l4_checksum()
}

/// Rewrites the destination address (and port, unless `target.port == 0`) to
/// `target`'s, updating the IPv4 header checksum and the UDP/TCP checksum.
#[inline(always)]
pub fn rewrite_destination<F: PacketBytesMut + ?Sized>(
    frame: &mut F,
    headers: &Headers,
    target: &ForwardTarget,
) -> Result<(), RewriteError> {
    let (l4_check_at, zero_means_none) = headers.l4_checksum()?;
    let l3 = headers.l3_offset as usize;
    let l4_check = frame.be16_at(l4_check_at).ok_or(RewriteError::OutOfFrame)?;
    let l4_has_checksum = !(zero_means_none && l4_check == 0);

    // The address's change enters both checksums; the port's only UDP's or TCP's.
    let mut change = match (headers.family, target.family) {
        (IpFamily::V4, FAMILY_V4) => {
            let old: [u8; 4] = frame
                .load(l3 + field::ipv4::DST)
                .ok_or(RewriteError::OutOfFrame)?;
            let new = [
                target.addr[0],
                target.addr[1],
                target.addr[2],
                target.addr[3],
            ];
            let ip_check = frame
                .be16_at(l3 + field::ipv4::CHECKSUM)
                .ok_or(RewriteError::OutOfFrame)?;
            let change = bytes_change(&old, &new);
            frame
                .store(l3 + field::ipv4::DST, new)
                .ok_or(RewriteError::OutOfFrame)?;
            frame
                .store(
                    l3 + field::ipv4::CHECKSUM,
                    apply_change(ip_check, change).to_be_bytes(),
                )
                .ok_or(RewriteError::OutOfFrame)?;
            change
        }
        (IpFamily::V6, FAMILY_V6) => {
            let old: [u8; 16] = frame
                .load(l3 + field::ipv6::DST)
                .ok_or(RewriteError::OutOfFrame)?;
            frame
                .store(l3 + field::ipv6::DST, target.addr)
                .ok_or(RewriteError::OutOfFrame)?;
            bytes_change(&old, &target.addr)
        }
        _ => return Err(RewriteError::FamilyMismatch),
    };

    // The destination port sits at the same offset in UDP and TCP.
    let port_at = headers.l4_offset as usize + field::udp::DST_PORT;
    if target.port != 0 {
        let old = frame.be16_at(port_at).ok_or(RewriteError::OutOfFrame)?;
        change += word_change(old, target.port);
        frame
            .store(port_at, target.port.to_be_bytes())
            .ok_or(RewriteError::OutOfFrame)?;
    }
    if l4_has_checksum {
        let mut l4_check = apply_change(l4_check, change);
        // In UDP a computed 0 is sent as 0xffff (0 means "no checksum").
        if zero_means_none && l4_check == 0 {
            l4_check = 0xffff;
        }
        frame
            .store(l4_check_at, l4_check.to_be_bytes())
            .ok_or(RewriteError::OutOfFrame)?;
    }
    Ok(())
}

/// Sets the Ethernet destination and source MACs.
#[inline(always)]
pub fn rewrite_macs<F: PacketBytesMut + ?Sized>(
    frame: &mut F,
    dst: [u8; 6],
    src: [u8; 6],
) -> Result<(), RewriteError> {
    frame
        .store(field::ethernet::DST, dst)
        .ok_or(RewriteError::OutOfFrame)?;
    frame
        .store(field::ethernet::SRC, src)
        .ok_or(RewriteError::OutOfFrame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{maps::ForwardMode, wire::packet::parse_packet};
    use migr_testkit::frames::{FrameBuilder, verify_checksums};

    /// A small deterministic generator (xorshift32) from `state`, not 0.
    fn xorshift(mut state: u32) -> impl FnMut() -> u32 {
        move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        }
    }

    /// The rewrite of either family and transport, with and without a new
    /// port, to many addresses, leaves checksums that verify from scratch,
    /// and the new destination in place.
    #[test]
    fn rewritten_frames_verify_from_scratch() {
        let mut next = xorshift(0x9e37_79b9u32);
        let (v4_src, v4_dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (v6_src, v6_dst) = ([0x20; 16], [0x21; 16]);
        for round in 0..2_000 {
            let payload: Vec<u8> = (0..(round % 40)).map(|_| next() as u8).collect();
            let mut addr = [0u8; 16];
            for b in &mut addr {
                *b = next() as u8;
            }
            let port = if round % 3 == 0 { 0 } else { next() as u16 };
            let builder = match round % 4 {
                0 => FrameBuilder::udp_v4(v4_src, 4000, v4_dst, 443),
                1 => FrameBuilder::tcp_v4(v4_src, 4000, v4_dst, 443),
                2 => FrameBuilder::udp_v6(v6_src, 4000, v6_dst, 443),
                _ => FrameBuilder::tcp_v6(v6_src, 4000, v6_dst, 443),
            };
            let mut frame = builder.payload(&payload).build();
            let info = parse_packet(&frame[..]).unwrap();
            let family = match info.family {
                IpFamily::V4 => FAMILY_V4,
                IpFamily::V6 => FAMILY_V6,
            };
            let target = ForwardTarget {
                addr,
                port,
                mode: ForwardMode::AddressChanging as u8,
                family,
                ..Default::default()
            };
            rewrite_destination(&mut frame[..], &Headers::of(&info), &target).unwrap();
            verify_checksums(&frame).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let out = parse_packet(&frame[..]).unwrap();
            let expected_addr = match info.family {
                IpFamily::V4 => [&addr[..4], &[0; 12][..]].concat(),
                IpFamily::V6 => addr.to_vec(),
            };
            assert_eq!(out.dst_addr.to_vec(), expected_addr, "round {round}");
            let expected_port = if port == 0 { 443 } else { port };
            assert_eq!(out.ports().unwrap().1, expected_port, "round {round}");
        }
    }

    /// Reference: the checksum of `data` computed from scratch.
    fn full_checksum(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for chunk in data.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut next = xorshift(0x1234_5678u32);
        for _ in 0..10_000 {
            let mut data = [0u8; 20];
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            let check = full_checksum(&data);
            let word = (next() % 10) as usize * 2;
            let old = u16::from_be_bytes([data[word], data[word + 1]]);
            let new = next() as u16;
            data[word..word + 2].copy_from_slice(&new.to_be_bytes());
            let incremental = apply_change(check, word_change(old, new));
            let fresh = full_checksum(&data);
            // One's complement has two zeros; both encodings verify.
            assert!(
                incremental == fresh
                    || (incremental ^ fresh == 0xffff && (fresh == 0 || fresh == 0xffff)),
                "incremental {incremental:#06x} != recomputed {fresh:#06x}"
            );
        }
    }
}
