//! A store file's layout: a header, then one record per frame, each with a
//! CRC-32, so that a torn or damaged record is found and cut, never read as
//! a frame.
//!
//! Format 2 (`MIGRSPL2`), little-endian:
//!
//! - header (40 bytes): magic (8), ring map id (u32), flags (u32: bit 0,
//!   the max ring position is set), base sequence number (u64: the number
//!   of the file's first frame), max ring position (u64: the highest ever
//!   stored in the store, compactions included), CRC-32 of the 32 bytes
//!   before it (u32), zero (u32);
//! - record (28 bytes + frame): CRC-32 of everything after it up to the
//!   record's end (u32), frame length (u32), ingress ifindex (u32), ring
//!   position (u64), arrival time (u64, `bpf_ktime_get_ns`), the frame.
//!
//! Format 1 (`MIGRSPL1`, before checksums): a 16-byte header (magic, ring
//! map id, zero) and records of a 24-byte header (length, ifindex, ring
//! position, arrival time) and the frame. It is still read, so that frames
//! an older agent stored survive an upgrade; the store then rewrites it in
//! format 2.

pub(super) const MAGIC: &[u8; 8] = b"MIGRSPL2";
pub(super) const FILE_HEADER: usize = 40;
pub(super) const RECORD_HEADER: usize = 28;

const MAGIC_V1: &[u8; 8] = b"MIGRSPL1";
const V1_FILE_HEADER: usize = 16;
const V1_RECORD_HEADER: usize = 24;
const HAS_MAX_RING_POS: u32 = 1;

/// One stored frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFrame {
    pub ring_pos: u64,
    pub ifindex: u32,
    pub timestamp_ns: u64,
    pub frame: Vec<u8>,
}

impl StoredFrame {
    /// Appends the frame's record (format 2) to `out`.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]); // the CRC, once the rest is there
        out.extend_from_slice(&(self.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.ifindex.to_le_bytes());
        out.extend_from_slice(&self.ring_pos.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ns.to_le_bytes());
        out.extend_from_slice(&self.frame);
        let crc = crc32fast::hash(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Bytes of its record in a format 2 file.
    #[cfg(test)]
    pub(super) fn record_len(&self) -> u64 {
        (RECORD_HEADER + self.frame.len()) as u64
    }
}

/// What a store file's header says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct FileHeader {
    /// The park ring the file's positions came from.
    pub(super) ring_id: u32,
    /// Sequence number of the file's first frame.
    pub(super) base: u64,
    /// Highest ring position the store has held, if any.
    pub(super) max_ring_pos: Option<u64>,
}

impl FileHeader {
    pub(super) fn encode(&self) -> [u8; FILE_HEADER] {
        let mut h = [0u8; FILE_HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&self.ring_id.to_le_bytes());
        let flags = if self.max_ring_pos.is_some() {
            HAS_MAX_RING_POS
        } else {
            0
        };
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&self.base.to_le_bytes());
        h[24..32].copy_from_slice(&self.max_ring_pos.unwrap_or(0).to_le_bytes());
        let crc = crc32fast::hash(&h[..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> Option<Self> {
        let h = h.get(..FILE_HEADER)?;
        if &h[..8] != MAGIC || crc32fast::hash(&h[..32]) != u32_at(h, 32) {
            return None;
        }
        Some(Self {
            ring_id: u32_at(h, 8),
            base: u64_at(h, 16),
            max_ring_pos: (u32_at(h, 12) & HAS_MAX_RING_POS != 0).then(|| u64_at(h, 24)),
        })
    }
}

/// How a file was laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Empty, or shorter than a header it was being given: a new store.
    New,
    /// Format 1: to be rewritten in format 2.
    V1,
    V2,
    /// Not a store this agent can read (another format, a damaged header).
    Unreadable,
}

/// Where reading stopped before the end of the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Cut {
    #[default]
    None,
    /// The last record runs past the end of the file (the agent died
    /// writing it): these many bytes.
    Torn(u64),
    /// A whole record failed its checksum: it and everything after it,
    /// these many bytes.
    Corrupt(u64),
}

/// A store file as read.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) layout: Layout,
    pub(super) header: FileHeader,
    pub(super) frames: Vec<StoredFrame>,
    /// Bytes of the header and the whole, good records: the file's length
    /// once the rest is cut.
    pub(super) good_len: u64,
    pub(super) cut: Cut,
}

/// Reads a store file. Never fails: what cannot be read is reported.
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    let unread = |layout| Parsed {
        layout,
        header: FileHeader::default(),
        frames: Vec::new(),
        good_len: 0,
        cut: Cut::None,
    };
    match bytes.get(..8) {
        Some(m) if m == MAGIC => match FileHeader::decode(bytes) {
            Some(header) => parse_records(bytes, header),
            None if bytes.len() < FILE_HEADER => unread(Layout::New),
            None => unread(Layout::Unreadable),
        },
        Some(m) if m == MAGIC_V1 && bytes.len() >= V1_FILE_HEADER => parse_v1(bytes),
        Some(m) if m == MAGIC_V1 => unread(Layout::New),
        Some(_) => unread(Layout::Unreadable),
        // A header being written when the agent died is a prefix of one.
        None if MAGIC.starts_with(bytes) || MAGIC_V1.starts_with(bytes) => unread(Layout::New),
        None => unread(Layout::Unreadable),
    }
}

fn parse_records(bytes: &[u8], header: FileHeader) -> Parsed {
    let mut frames = Vec::new();
    let mut at = FILE_HEADER;
    let mut cut = Cut::None;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let left = rest.len() as u64;
        let len = u32_at(rest, 4) as usize;
        if rest.len() < RECORD_HEADER || rest.len() - RECORD_HEADER < len {
            cut = Cut::Torn(left);
            break;
        }
        let end = RECORD_HEADER + len;
        if crc32fast::hash(&rest[4..end]) != u32_at(rest, 0) {
            cut = Cut::Corrupt(left);
            break;
        }
        frames.push(StoredFrame {
            ifindex: u32_at(rest, 8),
            ring_pos: u64_at(rest, 12),
            timestamp_ns: u64_at(rest, 20),
            frame: rest[RECORD_HEADER..end].to_vec(),
        });
        at += end;
    }
    Parsed {
        layout: Layout::V2,
        header,
        frames,
        good_len: at as u64,
        cut,
    }
}

/// Format 1 has no checksums: only a torn last record can be told.
fn parse_v1(bytes: &[u8]) -> Parsed {
    let mut frames = Vec::new();
    let mut at = V1_FILE_HEADER;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let len = u32_at(rest, 0) as usize;
        if rest.len() < V1_RECORD_HEADER || rest.len() - V1_RECORD_HEADER < len {
            break;
        }
        frames.push(StoredFrame {
            ifindex: u32_at(rest, 4),
            ring_pos: u64_at(rest, 8),
            timestamp_ns: u64_at(rest, 16),
            frame: rest[V1_RECORD_HEADER..V1_RECORD_HEADER + len].to_vec(),
        });
        at += V1_RECORD_HEADER + len;
    }
    let torn = (bytes.len() - at) as u64;
    Parsed {
        layout: Layout::V1,
        header: FileHeader {
            ring_id: u32_at(bytes, 8),
            base: 0,
            max_ring_pos: None,
        },
        frames,
        good_len: at as u64,
        cut: if torn > 0 { Cut::Torn(torn) } else { Cut::None },
    }
}

/// The little-endian u32 at `at`, 0 past the end (callers check lengths).
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// A format 1 file, for the tests that read one.
#[cfg(test)]
pub(super) fn encode_v1(ring_id: u32, frames: &[StoredFrame]) -> Vec<u8> {
    let mut out = MAGIC_V1.to_vec();
    out.extend_from_slice(&ring_id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for f in frames {
        out.extend_from_slice(&(f.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&f.ifindex.to_le_bytes());
        out.extend_from_slice(&f.ring_pos.to_le_bytes());
        out.extend_from_slice(&f.timestamp_ns.to_le_bytes());
        out.extend_from_slice(&f.frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u8) -> StoredFrame {
        StoredFrame {
            ring_pos: 1000 + u64::from(i),
            ifindex: 2,
            timestamp_ns: 7,
            frame: vec![i; 50 + i as usize],
        }
    }

    fn file(header: FileHeader, frames: &[StoredFrame]) -> Vec<u8> {
        let mut out = header.encode().to_vec();
        for f in frames {
            f.encode_into(&mut out);
        }
        out
    }

    const HEADER: FileHeader = FileHeader {
        ring_id: 4,
        base: 17,
        max_ring_pos: Some(2000),
    };

    #[test]
    fn a_file_reads_back_as_written() {
        let frames: Vec<StoredFrame> = (0..3).map(frame).collect();
        let bytes = file(HEADER, &frames);
        let p = parse(&bytes);
        assert_eq!((p.layout, p.header, p.cut), (Layout::V2, HEADER, Cut::None));
        assert_eq!(p.frames, frames);
        assert_eq!(p.good_len, bytes.len() as u64);
        let none = FileHeader {
            max_ring_pos: None,
            ..HEADER
        };
        assert_eq!(parse(&file(none, &[])).header, none);
    }

    #[test]
    fn every_byte_of_a_record_is_checked() {
        let frames: Vec<StoredFrame> = (0..2).map(frame).collect();
        let bytes = file(HEADER, &frames);
        let second = FILE_HEADER as u64 + frames[0].record_len();
        for at in second as usize..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            let p = parse(&bad);
            assert_eq!(p.frames, frames[..1], "byte {at}");
            assert_eq!(p.good_len, second, "byte {at}");
            // A flipped length bit may make the record look torn instead.
            assert_ne!(p.cut, Cut::None, "byte {at}");
        }
    }

    #[test]
    fn a_torn_record_is_told_from_a_corrupt_one() {
        let frames: Vec<StoredFrame> = (0..2).map(frame).collect();
        let bytes = file(HEADER, &frames);
        let p = parse(&bytes[..bytes.len() - 5]);
        assert_eq!(p.cut, Cut::Torn(frames[1].record_len() - 5));
        let mut zeroed = bytes.clone();
        zeroed.extend_from_slice(&[0; 100]); // a hole of zeros is no record
        assert_eq!(parse(&zeroed).cut, Cut::Corrupt(100));
    }

    #[test]
    fn headers_that_cannot_be_read_are_told_apart() {
        let bytes = file(HEADER, &[frame(0)]);
        assert_eq!(parse(&[]).layout, Layout::New);
        assert_eq!(parse(&bytes[..5]).layout, Layout::New);
        assert_eq!(parse(&bytes[..FILE_HEADER - 1]).layout, Layout::New);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert_eq!(parse(&bad).layout, Layout::Unreadable);
        assert_eq!(parse(b"MIGRSPL9 and more bytes").layout, Layout::Unreadable);
        assert_eq!(parse(b"something else entirely").layout, Layout::Unreadable);
    }

    #[test]
    fn format_1_is_read_with_its_torn_tail() {
        let frames: Vec<StoredFrame> = (0..2).map(frame).collect();
        let mut bytes = encode_v1(9, &frames);
        let p = parse(&bytes);
        assert_eq!(
            (p.layout, p.header.ring_id, p.header.base),
            (Layout::V1, 9, 0)
        );
        assert_eq!((p.frames.as_slice(), p.cut), (frames.as_slice(), Cut::None));
        bytes.extend_from_slice(&[1, 2, 3]);
        let p = parse(&bytes);
        assert_eq!((p.frames.len(), p.cut), (2, Cut::Torn(3)));
        assert_eq!(p.good_len, bytes.len() as u64 - 3);
    }
}
