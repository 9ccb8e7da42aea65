//! Completing a transport checksum that a sender left to offload.
//!
//! A device with TX checksum offload (every veth by default, so containers
//! and pods on one host) carries locally sent UDP and TCP packets with
//! only the pseudo-header sum in the checksum field; the skb tells the
//! receiver to trust it. Parked bytes keep that field, but a replayed frame
//! is a new skb, which the receiver verifies, so the agent completes such
//! checksums before it replays a frame. The partial form is recognised
//! exactly: the checksum does not verify, and the field equals the folded
//! pseudo-header sum. Any other bad checksum is left alone (and counted by
//! the caller): the frame was damaged, and its receiver should drop it.

use crate::{
    rewrite::l4_checksum_offset,
    wire::{
        ip::IpFamily,
        packet::{L4Info, parse_packet},
    },
};

/// What [`complete_partial`] found (and did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    /// The checksum verifies: nothing to do.
    Valid,
    /// It held the pseudo-header sum of an offloaded checksum; now complete.
    Completed,
    /// It neither verifies nor is a partial checksum: left as it was.
    Bad,
    /// UDP over IPv4 without a checksum (0).
    Absent,
    /// Not a UDP or TCP frame this parser reads whole (fragment, truncated,
    /// other protocol): left as it was.
    NotApplicable,
}

/// Checks the UDP/TCP checksum of `frame` and completes it if it is partial.
pub fn complete_partial(frame: &mut [u8]) -> L4Checksum {
    let Ok(info) = parse_packet(&*frame) else {
        return L4Checksum::NotApplicable;
    };
    if matches!(info.l4, L4Info::Other) {
        return L4Checksum::NotApplicable;
    }
    let Ok((field_at, zero_means_none)) = l4_checksum_offset(&info) else {
        return L4Checksum::NotApplicable;
    };
    let (start, len) = (info.l4_offset as usize, info.l4_len as usize);
    let Some(segment) = frame.get(start..start + len) else {
        return L4Checksum::NotApplicable;
    };
    if field_at + 2 > start + len {
        return L4Checksum::NotApplicable;
    }
    let field = u16::from_be_bytes([frame[field_at], frame[field_at + 1]]);
    if zero_means_none && field == 0 {
        return L4Checksum::Absent;
    }
    let pseudo = pseudo_header_sum(
        info.family,
        &info.src_addr,
        &info.dst_addr,
        info.ip_proto,
        len as u32,
    );
    if fold(pseudo + sum_words(segment)) == 0xffff {
        return L4Checksum::Valid;
    }
    if field != fold(pseudo) {
        return L4Checksum::Bad;
    }
    // The field takes no part in the sum it will hold.
    let without_field = sum_words(segment) - u64::from(field);
    let mut check = !fold(pseudo + without_field);
    if zero_means_none && check == 0 {
        // In UDP a computed 0 is sent as 0xffff (0 means "no checksum").
        check = 0xffff;
    }
    frame[field_at..field_at + 2].copy_from_slice(&check.to_be_bytes());
    L4Checksum::Completed
}

/// One's-complement sum of the pseudo header (RFC 768/793, RFC 8200 8.1),
/// not yet folded.
fn pseudo_header_sum(family: IpFamily, src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u64 {
    let addr_len = match family {
        IpFamily::V4 => 4,
        IpFamily::V6 => 16,
    };
    sum_words(&src[..addr_len])
        + sum_words(&dst[..addr_len])
        + u64::from(proto)
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
}

/// Sum of the big-endian 16-bit words of `data` (an odd last byte padded with 0).
fn sum_words(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut pairs = data.chunks_exact(2);
    for pair in &mut pairs {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum into 16 bits with end-around carry.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use migr_testkit::frames::{FrameBuilder, verify_checksums};

    /// The frame as a sender with checksum offload leaves it: the checksum
    /// field holds the folded pseudo-header sum.
    fn as_offloaded(frame: &mut [u8]) -> usize {
        let info = parse_packet(&*frame).unwrap();
        let (at, _) = l4_checksum_offset(&info).unwrap();
        let partial = fold(pseudo_header_sum(
            info.family,
            &info.src_addr,
            &info.dst_addr,
            info.ip_proto,
            u32::from(info.l4_len),
        ));
        frame[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        at
    }

    fn frames() -> [Vec<u8>; 4] {
        [
            FrameBuilder::udp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 443)
                .payload(b"a request of odd length")
                .build(),
            FrameBuilder::udp_v6([0x20; 16], 5000, [0x30; 16], 443)
                .payload(&[7u8; 1200])
                .build(),
            FrameBuilder::tcp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 80)
                .vlan(10)
                .payload(b"GET / HTTP/1.1\r\n")
                .build(),
            FrameBuilder::udp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 443).build(),
        ]
    }

    #[test]
    fn full_checksums_are_left_alone() {
        for frame in frames() {
            let mut copy = frame.clone();
            assert_eq!(complete_partial(&mut copy), L4Checksum::Valid);
            assert_eq!(copy, frame);
        }
    }

    #[test]
    fn partial_checksums_are_completed_to_the_real_one() {
        for frame in frames() {
            let mut offloaded = frame.clone();
            as_offloaded(&mut offloaded);
            assert!(
                verify_checksums(&offloaded).is_err(),
                "the partial form does not verify"
            );
            assert_eq!(complete_partial(&mut offloaded), L4Checksum::Completed);
            verify_checksums(&offloaded).unwrap();
            assert_eq!(
                offloaded, frame,
                "the checksum the sender would have computed"
            );
        }
    }

    #[test]
    fn other_bad_checksums_and_udp_without_one_are_not_touched() {
        for frame in frames() {
            let mut damaged = frame.clone();
            let at = as_offloaded(&mut damaged);
            damaged[at] ^= 0x40;
            let before = damaged.clone();
            assert_eq!(complete_partial(&mut damaged), L4Checksum::Bad);
            assert_eq!(damaged, before);
        }
        let mut none = frames()[0].clone();
        let info = parse_packet(&none[..]).unwrap();
        let (at, _) = l4_checksum_offset(&info).unwrap();
        none[at..at + 2].copy_from_slice(&[0, 0]);
        assert_eq!(complete_partial(&mut none), L4Checksum::Absent);
    }

    #[test]
    fn anything_else_is_not_applicable_and_never_panics() {
        let frame = frames()[1].clone();
        for cut in 0..frame.len() {
            let mut prefix = frame[..cut].to_vec();
            let before = prefix.clone();
            let found = complete_partial(&mut prefix);
            assert!(
                matches!(found, L4Checksum::NotApplicable),
                "prefix of {cut} bytes: {found:?}"
            );
            assert_eq!(prefix, before);
        }
        let mut arp = [0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(complete_partial(&mut arp), L4Checksum::NotApplicable);
    }
}
