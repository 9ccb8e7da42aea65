//! UDP.

use super::{MalformedKind, ParseError, read_bytes};
use crate::PacketBytes;

pub const UDP_HEADER_LEN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    /// Where the UDP payload starts (frame offset).
    pub payload_offset: u16,
    /// UDP length minus the header: the payload ends at
    /// `payload_offset + payload_len`, which is never past the IP packet.
    pub payload_len: u16,
}

/// Parses a UDP header at `l4`; the IP packet ends at `ip_end`.
///
/// The IP payload must hold the 8-byte header, and the UDP length must be at
/// least 8 and no more than the IP payload (a shorter UDP length is accepted,
/// as Linux does: the rest is ignored). The checksum is not verified.
#[inline(always)]
pub fn parse_udp<F: PacketBytes + ?Sized>(
    f: &F,
    l4: usize,
    ip_end: usize,
) -> Result<UdpInfo, ParseError> {
    if l4 + UDP_HEADER_LEN > ip_end {
        return Err(ParseError::Malformed(MalformedKind::UdpLength));
    }
    let h = read_bytes::<F, 8>(f, l4)?;
    let udp_len = u16::from_be_bytes([h[4], h[5]]);
    let len = udp_len as usize;
    if len < UDP_HEADER_LEN || len > ip_end - l4 {
        return Err(ParseError::Malformed(MalformedKind::UdpLength));
    }
    Ok(UdpInfo {
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        // l4 <= 18 + 40 + 4 * 2048: fits.
        payload_offset: (l4 + UDP_HEADER_LEN) as u16,
        payload_len: udp_len - UDP_HEADER_LEN as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use migr_testkit::frames::FrameBuilder;

    fn frame() -> Vec<u8> {
        FrameBuilder::udp_v4([10, 0, 0, 1], 4433, [10, 0, 0, 2], 443)
            .payload(&[9; 12])
            .build()
    }

    #[test]
    fn plain() {
        let f = frame();
        let u = parse_udp(&f[..], 34, f.len()).unwrap();
        assert_eq!(
            u,
            UdpInfo {
                src_port: 4433,
                dst_port: 443,
                payload_offset: 42,
                payload_len: 12
            }
        );
    }

    #[test]
    fn lengths() {
        let f = frame();
        let with_len = |len: u16| {
            let mut g = f.clone();
            g[38..40].copy_from_slice(&len.to_be_bytes());
            g
        };
        let bad = Err(ParseError::Malformed(MalformedKind::UdpLength));
        for len in [0u16, 1, 7, 21, 0xffff] {
            assert_eq!(parse_udp(&with_len(len)[..], 34, f.len()), bad, "len {len}");
        }
        // shorter than the IP payload is accepted; the payload is what UDP says
        let g = with_len(8);
        assert_eq!(parse_udp(&g[..], 34, f.len()).unwrap().payload_len, 0);
        // IP payload too short for a UDP header
        assert_eq!(parse_udp(&f[..], 34, 41), bad);
        assert_eq!(parse_udp(&f[..], 34, 30), bad);
    }

    #[test]
    fn truncated() {
        let f = frame();
        for len in 34..42 {
            assert_eq!(parse_udp(&f[..len], 34, 42), Err(ParseError::Truncated));
        }
    }
}
