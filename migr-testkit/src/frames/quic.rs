//! QUIC packets (header plus arbitrary bytes), for UDP payloads.

use migr_common::wire::quic::{LongPacketType, QUIC_V1};
use migr_quic_codec::varint;

/// QUIC variable-length integer (RFC 9000 16), in the encoding migr-quic
/// writes (the one implementation, `migr_quic_codec::varint`).
pub fn varint(v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    varint::write(v, &mut out).expect("varint out of range");
    out
}

/// A long header with this exact first byte: first byte, version, DCID
/// length and DCID, SCID length and SCID, then `rest`. CIDs of any length
/// up to 255 (to build invalid ones).
pub fn long_raw(first: u8, version: u32, dcid: &[u8], scid: &[u8], rest: &[u8]) -> Vec<u8> {
    assert!(dcid.len() <= 255 && scid.len() <= 255);
    let mut v = [first].to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v.push(dcid.len() as u8);
    v.extend_from_slice(dcid);
    v.push(scid.len() as u8);
    v.extend_from_slice(scid);
    v.extend_from_slice(rest);
    v
}

/// A long header packet of type `ty` (type bits for `version`, so v2 is
/// permuted), header form and fixed bit set, 1-byte packet number.
pub fn long(version: u32, ty: LongPacketType, dcid: &[u8], scid: &[u8], rest: &[u8]) -> Vec<u8> {
    long_raw(
        0xc0 | ty.to_first_byte_bits(version),
        version,
        dcid,
        scid,
        rest,
    )
}

/// A v1 Initial: token length and token, length, a 1-byte packet number
/// and `payload`.
pub fn initial(dcid: &[u8], scid: &[u8], token: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut rest = varint(token.len() as u64);
    rest.extend_from_slice(token);
    rest.extend(varint(1 + payload.len() as u64));
    rest.push(0); // packet number
    rest.extend_from_slice(payload);
    long(QUIC_V1, LongPacketType::Initial, dcid, scid, &rest)
}

/// A short header packet: 0x40 (fixed bit, 1-byte packet number), DCID, `rest`.
pub fn short(dcid: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = [0x40u8].to_vec();
    v.extend_from_slice(dcid);
    v.extend_from_slice(rest);
    v
}

/// A Version Negotiation packet (fixed bit clear, version 0).
pub fn version_negotiation(dcid: &[u8], scid: &[u8], versions: &[u32]) -> Vec<u8> {
    let mut rest = Vec::new();
    for v in versions {
        rest.extend_from_slice(&v.to_be_bytes());
    }
    long_raw(0x80 | 0x2a, 0, dcid, scid, &rest)
}
