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

/// One's-complement checksum update for a 16-bit word changing from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn checksum_replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`checksum_replace16`] for a run of `N` bytes (`N` even).
#[inline(always)]
fn checksum_replace_bytes<const N: usize>(mut check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut i = 0;
    while i + 1 < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        check = checksum_replace16(check, o, n);
        i += 2;
    }
    check
}

/// Offset of the transport checksum and whether 0 means "no checksum" (UDP over IPv4).
#[inline(always)]
pub fn l4_checksum_offset(info: &PacketInfo) -> Result<(usize, bool), RewriteError> {
    let l4 = info.l4_offset as usize;
    match info.l4 {
        L4Info::Udp { .. } => Ok((l4 + field::udp::CHECKSUM, info.family == IpFamily::V4)),
        L4Info::Tcp(_) => Ok((l4 + field::tcp::CHECKSUM, false)),
        L4Info::Other => Err(RewriteError::NotTransport),
    }
}

/// Rewrites the destination address (and port, unless `target.port == 0`) to
/// `target`'s, updating the IPv4 header checksum and the UDP/TCP checksum.
#[inline(always)]
pub fn rewrite_destination<F: PacketBytesMut + ?Sized>(
    frame: &mut F,
    info: &PacketInfo,
    target: &ForwardTarget,
) -> Result<(), RewriteError> {
    let (l4_check_at, zero_means_none) = l4_checksum_offset(info)?;
    let l3 = info.l3_offset as usize;
    let mut l4_check = frame.be16_at(l4_check_at).ok_or(RewriteError::OutOfFrame)?;
    let l4_has_checksum = !(zero_means_none && l4_check == 0);

    match (info.family, target.family) {
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
            let ip_check = checksum_replace_bytes(ip_check, &old, &new);
            l4_check = checksum_replace_bytes(l4_check, &old, &new);
            frame
                .store(l3 + field::ipv4::DST, new)
                .ok_or(RewriteError::OutOfFrame)?;
            frame
                .store(l3 + field::ipv4::CHECKSUM, ip_check.to_be_bytes())
                .ok_or(RewriteError::OutOfFrame)?;
        }
        (IpFamily::V6, FAMILY_V6) => {
            let old: [u8; 16] = frame
                .load(l3 + field::ipv6::DST)
                .ok_or(RewriteError::OutOfFrame)?;
            l4_check = checksum_replace_bytes(l4_check, &old, &target.addr);
            frame
                .store(l3 + field::ipv6::DST, target.addr)
                .ok_or(RewriteError::OutOfFrame)?;
        }
        _ => return Err(RewriteError::FamilyMismatch),
    }

    // The destination port sits at the same offset in UDP and TCP.
    let port_at = info.l4_offset as usize + field::udp::DST_PORT;
    if target.port != 0 {
        let old = frame.be16_at(port_at).ok_or(RewriteError::OutOfFrame)?;
        l4_check = checksum_replace16(l4_check, old, target.port);
        frame
            .store(port_at, target.port.to_be_bytes())
            .ok_or(RewriteError::OutOfFrame)?;
    }
    if l4_has_checksum {
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
        let mut state = 0x1234_5678u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
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
            let incremental = checksum_replace16(check, old, new);
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
