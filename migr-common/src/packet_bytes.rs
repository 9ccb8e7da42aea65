//! Bounds-checked byte access to a frame.
//!
//! Parsers are generic over [`PacketBytes`]: on the host it is a byte slice, in the
//! XDP program it reads packet memory directly after a check against
//! `data_end` that the verifier can follow. Every read either returns the bytes
//! or `None`; nothing reads past the end.

/// Largest offset a parser may read at. Keeps offsets provably bounded for the
/// verifier and covers every header chain we parse (L2 + VLAN + IPv6 with
/// extension headers + TCP with options + QUIC header).
pub const MAX_PARSE_OFFSET: usize = 512;

pub trait PacketBytes {
    /// Total length of the frame in bytes.
    fn len(&self) -> usize;

    /// `N` bytes starting at `offset`, or `None` if they are not all inside the frame.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locates TCP option `kind` in `[start, end)`: [`crate::wire::tcp::find_option`].
    /// A frame may run the same walk differently: the XDP frame drives it
    /// from `bpf_loop`, which keeps the verifier's work small.
    #[inline(always)]
    fn find_tcp_option(
        &self,
        start: usize,
        end: usize,
        kind: u8,
    ) -> Result<Option<crate::wire::tcp::OptionRef>, crate::wire::ParseError> {
        crate::wire::tcp::find_option(self, start, end, kind)
    }

    #[inline(always)]
    fn u8_at(&self, offset: usize) -> Option<u8> {
        self.load::<1>(offset).map(|b| b[0])
    }

    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        self.load::<2>(offset).map(u16::from_be_bytes)
    }

    #[inline(always)]
    fn be32_at(&self, offset: usize) -> Option<u32> {
        self.load::<4>(offset).map(u32::from_be_bytes)
    }

    #[inline(always)]
    fn be64_at(&self, offset: usize) -> Option<u64> {
        self.load::<8>(offset).map(u64::from_be_bytes)
    }
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// Write access to a frame, for the FORWARD rewrite.
pub trait PacketBytesMut: PacketBytes {
    /// Writes `bytes` at `offset`; `None` (and nothing written) if they do not fit.
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()>;
}

impl PacketBytesMut for [u8] {
    #[inline(always)]
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        let end = offset.checked_add(N)?;
        self.get_mut(offset..end)?.copy_from_slice(&bytes);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_are_bounded() {
        let bytes: &[u8] = &[1, 2, 3, 4, 5];
        assert_eq!(bytes.u8_at(4), Some(5));
        assert_eq!(bytes.u8_at(5), None);
        assert_eq!(bytes.be16_at(3), Some(0x0405));
        assert_eq!(bytes.be16_at(4), None);
        assert_eq!(bytes.be32_at(1), Some(0x0203_0405));
        assert_eq!(bytes.be32_at(2), None);
        assert_eq!(bytes.load::<2>(usize::MAX), None);
    }

    #[test]
    fn offsets_past_the_parse_limit_are_refused() {
        let big = [0u8; MAX_PARSE_OFFSET + 16];
        assert!(big[..].u8_at(MAX_PARSE_OFFSET).is_some());
        assert!(big[..].u8_at(MAX_PARSE_OFFSET + 1).is_none());
    }
}
