//! QUIC variable-length integers (RFC 9000, section 16), written so that
//! decoding can never panic: every read is bounds-checked.

/// Largest value a QUIC varint can carry (2^62 - 1).
pub const MAX_VARINT: u64 = (1 << 62) - 1;

/// The value does not fit in 62 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarIntTooLarge(pub u64);

/// Number of bytes `value` takes on the wire, or `None` when it is out of range.
pub fn encoded_len(value: u64) -> Option<usize> {
    match value {
        0..=0x3f => Some(1),
        0x40..=0x3fff => Some(2),
        0x4000..=0x3fff_ffff => Some(4),
        0x4000_0000..=MAX_VARINT => Some(8),
        _ => None,
    }
}

/// Appends `value` in the shortest encoding.
pub fn write(value: u64, out: &mut Vec<u8>) -> Result<(), VarIntTooLarge> {
    match encoded_len(value) {
        Some(1) => out.push(value as u8),
        Some(2) => out.extend_from_slice(&(value as u16 | 0x4000).to_be_bytes()),
        Some(4) => out.extend_from_slice(&(value as u32 | 0x8000_0000).to_be_bytes()),
        Some(_) => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
        None => return Err(VarIntTooLarge(value)),
    }
    Ok(())
}

/// Reads one varint from the front of `input`; returns the value and the bytes used,
/// or `None` when `input` ends inside the integer.
pub fn read(input: &[u8]) -> Option<(u64, usize)> {
    let first = *input.first()?;
    let len = 1usize << (first >> 6);
    let bytes = input.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for byte in &bytes[1..] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_length_boundary() {
        for value in [
            0,
            0x3f,
            0x40,
            0x3fff,
            0x4000,
            0x3fff_ffff,
            0x4000_0000,
            MAX_VARINT,
        ] {
            let mut buf = Vec::new();
            write(value, &mut buf).unwrap();
            assert_eq!(buf.len(), encoded_len(value).unwrap());
            assert_eq!(read(&buf), Some((value, buf.len())));
        }
    }

    #[test]
    fn rfc_9000_examples_decode() {
        assert_eq!(
            read(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(read(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(read(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(read(&[0x25]), Some((37, 1)));
    }

    #[test]
    fn truncated_and_oversized_are_errors() {
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[0x40]), None);
        assert_eq!(read(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(
            write(MAX_VARINT + 1, &mut Vec::new()),
            Err(VarIntTooLarge(MAX_VARINT + 1))
        );
    }
}
