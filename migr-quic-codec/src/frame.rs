//! The frames of seed 000's server-side migration extension and the control
//! streams that carry them. The wire format is specified in
//! `docs/quic-extension.md`; this module is its only implementation.
//!
//! A control stream is a unidirectional QUIC stream that starts with the
//! varint [`STREAM_TYPE`] and then carries frames, each
//! `type (varint) | length (varint) | payload (length bytes)`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::varint;

/// First varint of every migration control stream ("migr" in ASCII).
pub const STREAM_TYPE: u64 = 0x6d69_6772;
/// [`STREAM_TYPE`] on the wire. It needs the 8-byte varint form, the only
/// encoding of a value above 2^30 - 1, so a stream is a control stream
/// exactly when its first 8 bytes are these.
pub const STREAM_TYPE_BYTES: [u8; 8] = [0xc0, 0x00, 0x00, 0x00, 0x6d, 0x69, 0x67, 0x72];
/// Extension version this implementation speaks.
pub const VERSION: u64 = 1;
/// Largest payload any frame of version 1 may declare.
pub const MAX_FRAME_PAYLOAD: u64 = 64;
/// Largest control stream a receiver buffers; longer streams are refused.
pub const MAX_CONTROL_STREAM_LEN: usize = 4096;

/// Frame type codes.
pub mod frame_type {
    pub const HELLO: u64 = 0x00;
    pub const TRIGGER: u64 = 0x01;
    pub const SERVER_MIGRATION: u64 = 0x02;
    pub const POOL_MIGRATION_ADDRESS: u64 = 0x03;
}

const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;

/// A frame of the migration extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Announces support for the extension (both directions; negotiation).
    Hello { version: u64 },
    /// Client to server: please migrate (seed 000, section 3.2).
    Trigger,
    /// Server to client: I am about to move to `address`.
    ServerMigration { sequence: u64, address: SocketAddr },
    /// Server to client: one address of the pool I may move to (section 3.3).
    PoolMigrationAddress { address: SocketAddr },
}

/// Why a frame or control stream could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The input ends before the frame (or stream header) does.
    Truncated,
    /// A frame type this version does not define. `frame_len` is the whole
    /// frame's length, so a receiver can skip it.
    UnknownType { frame_type: u64, frame_len: usize },
    /// The declared payload length exceeds [`MAX_FRAME_PAYLOAD`].
    Oversized { declared: u64 },
    /// The payload is longer than its fields.
    TrailingBytes { frame_type: u64 },
    /// An address family byte other than 4 or 6.
    BadAddressFamily(u8),
    /// Port 0 or an unspecified/multicast IP: not an address a server can move to.
    UnusableAddress(SocketAddr),
    /// The stream does not start with [`STREAM_TYPE`].
    NotAControlStream { stream_type: u64 },
    /// A control stream longer than [`MAX_CONTROL_STREAM_LEN`].
    StreamTooLong,
    /// A value too large for a varint (encoding only).
    ValueTooLarge(u64),
    /// A well-formed frame that this endpoint's peer must not send (e.g. a
    /// client sending POOL_MIGRATION_ADDRESS, or TRIGGER before HELLO).
    WrongDirection { frame_type: u64 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "truncated migration frame (input ends inside it)"),
            Self::UnknownType { frame_type, .. } => {
                write!(f, "unknown migration frame type {frame_type:#x}")
            }
            Self::Oversized { declared } => write!(
                f,
                "migration frame payload of {declared} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte limit"
            ),
            Self::TrailingBytes { frame_type } => write!(
                f,
                "migration frame {} has trailing bytes",
                frame_name(*frame_type)
            ),
            Self::BadAddressFamily(family) => write!(f, "unknown address family {family}"),
            Self::UnusableAddress(addr) => write!(f, "unusable migration address {addr}"),
            Self::NotAControlStream { stream_type } => {
                write!(
                    f,
                    "stream type {stream_type:#x} is not a migration control stream"
                )
            }
            Self::StreamTooLong => write!(
                f,
                "migration control stream longer than {MAX_CONTROL_STREAM_LEN} bytes"
            ),
            Self::ValueTooLarge(value) => write!(f, "{value} does not fit in a QUIC varint"),
            Self::WrongDirection { frame_type } => write!(
                f,
                "migration frame {} is not allowed from this peer",
                frame_name(*frame_type)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// "TRIGGER (0x01)" and so on, for messages.
fn frame_name(ty: u64) -> String {
    let name = match ty {
        frame_type::HELLO => "HELLO",
        frame_type::TRIGGER => "TRIGGER",
        frame_type::SERVER_MIGRATION => "SERVER_MIGRATION",
        frame_type::POOL_MIGRATION_ADDRESS => "POOL_MIGRATION_ADDRESS",
        _ => return format!("{ty:#x}"),
    };
    format!("{name} ({ty:#04x})")
}

impl Frame {
    pub fn frame_type(&self) -> u64 {
        match self {
            Self::Hello { .. } => frame_type::HELLO,
            Self::Trigger => frame_type::TRIGGER,
            Self::ServerMigration { .. } => frame_type::SERVER_MIGRATION,
            Self::PoolMigrationAddress { .. } => frame_type::POOL_MIGRATION_ADDRESS,
        }
    }

    /// Appends the encoded frame to `out`. Fails only for values that do not
    /// fit in a varint or addresses a receiver would reject.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut payload = Vec::with_capacity(24);
        match *self {
            Self::Hello { version } => put_varint(version, &mut payload)?,
            Self::Trigger => {}
            Self::ServerMigration { sequence, address } => {
                put_varint(sequence, &mut payload)?;
                put_address(address, &mut payload)?;
            }
            Self::PoolMigrationAddress { address } => put_address(address, &mut payload)?,
        }
        put_varint(self.frame_type(), out)?;
        put_varint(payload.len() as u64, out)?;
        out.extend_from_slice(&payload);
        Ok(())
    }

    /// Decodes one frame from the front of `input`; returns it and the bytes used.
    pub fn decode(input: &[u8]) -> Result<(Frame, usize), FrameError> {
        let (ty, ty_len) = varint::read(input).ok_or(FrameError::Truncated)?;
        let rest = &input[ty_len..];
        let (declared, len_len) = varint::read(rest).ok_or(FrameError::Truncated)?;
        if declared > MAX_FRAME_PAYLOAD {
            return Err(FrameError::Oversized { declared });
        }
        // `declared` <= 64, so the cast cannot truncate.
        let payload_len = declared as usize;
        let payload = rest[len_len..]
            .get(..payload_len)
            .ok_or(FrameError::Truncated)?;
        let frame_len = ty_len + len_len + payload_len;

        let mut reader = Reader { buf: payload };
        let frame = match ty {
            frame_type::HELLO => Self::Hello {
                version: reader.varint()?,
            },
            frame_type::TRIGGER => Self::Trigger,
            frame_type::SERVER_MIGRATION => Self::ServerMigration {
                sequence: reader.varint()?,
                address: reader.address()?,
            },
            frame_type::POOL_MIGRATION_ADDRESS => Self::PoolMigrationAddress {
                address: reader.address()?,
            },
            frame_type => {
                return Err(FrameError::UnknownType {
                    frame_type,
                    frame_len,
                });
            }
        };
        if !reader.buf.is_empty() {
            return Err(FrameError::TrailingBytes { frame_type: ty });
        }
        Ok((frame, frame_len))
    }
}

/// Encodes a whole control stream: the stream type, then `frames`.
pub fn encode_stream(frames: &[Frame]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(16 + 24 * frames.len());
    put_varint(STREAM_TYPE, &mut out)?;
    for frame in frames {
        frame.encode(&mut out)?;
    }
    Ok(out)
}

/// Decodes a complete control stream. Frames of unknown type are skipped (so
/// later versions can add frames); any other defect fails the whole stream.
pub fn decode_stream(input: &[u8]) -> Result<Vec<Frame>, FrameError> {
    if input.len() > MAX_CONTROL_STREAM_LEN {
        return Err(FrameError::StreamTooLong);
    }
    let (stream_type, mut pos) = varint::read(input).ok_or(FrameError::Truncated)?;
    if stream_type != STREAM_TYPE {
        return Err(FrameError::NotAControlStream { stream_type });
    }
    let mut frames = Vec::new();
    while pos < input.len() {
        match Frame::decode(&input[pos..]) {
            Ok((frame, used)) => {
                frames.push(frame);
                pos += used;
            }
            Err(FrameError::UnknownType { frame_len, .. }) => pos += frame_len,
            Err(e) => return Err(e),
        }
    }
    Ok(frames)
}

/// Whether a stream that begins with `first_bytes` can still be a control
/// stream: true while they are a prefix of [`STREAM_TYPE_BYTES`] (or start
/// with all of it).
pub fn may_be_control_stream(first_bytes: &[u8]) -> bool {
    let n = first_bytes.len().min(STREAM_TYPE_BYTES.len());
    first_bytes[..n] == STREAM_TYPE_BYTES[..n]
}

fn put_varint(value: u64, out: &mut Vec<u8>) -> Result<(), FrameError> {
    varint::write(value, out).map_err(|e| FrameError::ValueTooLarge(e.0))
}

fn put_address(address: SocketAddr, out: &mut Vec<u8>) -> Result<(), FrameError> {
    check_usable(address)?;
    match address.ip() {
        IpAddr::V4(ip) => {
            out.push(FAMILY_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(FAMILY_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&address.port().to_be_bytes());
    Ok(())
}

fn check_usable(address: SocketAddr) -> Result<(), FrameError> {
    let ip = address.ip();
    if address.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(FrameError::UnusableAddress(address));
    }
    Ok(())
}

/// Bounds-checked cursor over a frame payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let (value, used) = varint::read(self.buf).ok_or(FrameError::Truncated)?;
        self.buf = &self.buf[used..];
        Ok(value)
    }

    fn address(&mut self) -> Result<SocketAddr, FrameError> {
        let family = self.take(1)?[0];
        let ip = match family {
            FAMILY_IPV4 => {
                let mut octets = [0u8; 4];
                octets.copy_from_slice(self.take(4)?);
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            FAMILY_IPV6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            other => return Err(FrameError::BadAddressFamily(other)),
        };
        let port_bytes = self.take(2)?;
        let port = u16::from_be_bytes([port_bytes[0], port_bytes[1]]);
        let address = SocketAddr::new(ip, port);
        check_usable(address)?;
        Ok(address)
    }
}
