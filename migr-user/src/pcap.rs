//! Reads the classic capture file format (tcpdump -w, Wireshark "pcap"):
//! Ethernet frames only, which is what the datapath sees. pcapng files are
//! refused with the command that converts them.

use anyhow::{Result, bail};

/// Ethernet (LINKTYPE_ETHERNET).
const LINKTYPE_ETHERNET: u32 = 1;
/// The largest record we accept (a jumbo frame with room to spare).
const MAX_RECORD: usize = 256 << 10;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub data: Vec<u8>,
    /// The frame's length on the wire (more than `data` if the capture's
    /// snap length cut it).
    pub wire_len: u32,
}

impl Captured {
    pub fn truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.wire_len)
    }
}

/// The frames of a capture file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Vec<Captured>> {
    let Some(head) = bytes.get(..24) else {
        bail!(
            "not a capture file: {} bytes, shorter than a pcap header",
            bytes.len()
        );
    };
    let magic = [head[0], head[1], head[2], head[3]];
    let little = match magic {
        // Microseconds or nanoseconds; the timestamps are not used.
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        [0x0a, 0x0d, 0x0d, 0x0a] => bail!(
            "a pcapng file: convert it with `editcap -F pcap IN OUT` or capture with `tcpdump -w` (pcap)"
        ),
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link = u32_at(head, 20) & 0x0fff_ffff;
    if link != LINKTYPE_ETHERNET {
        bail!(
            "link type {link}, not Ethernet (1): capture on the interface the agent is attached to"
        );
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let Some(rec) = bytes.get(at..at + 16) else {
            bail!(
                "frame {}: record header cut short at byte {at}",
                frames.len() + 1
            );
        };
        let caplen = u32_at(rec, 8) as usize;
        let wire_len = u32_at(rec, 12);
        if caplen > MAX_RECORD {
            bail!(
                "frame {}: a record of {caplen} bytes at byte {at} (corrupt file?)",
                frames.len() + 1
            );
        }
        let start = at + 16;
        let Some(data) = bytes.get(start..start + caplen) else {
            bail!(
                "frame {}: {caplen} bytes announced at byte {at}, {} left",
                frames.len() + 1,
                bytes.len() - start
            );
        };
        frames.push(Captured {
            data: data.to_vec(),
            wire_len,
        });
        at = start + caplen;
    }
    Ok(frames)
}

/// The bytes of a capture file holding `frames` (little-endian, microseconds).
pub fn write(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for f in frames {
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_written_are_read_back() {
        let bytes = write(&[&[1, 2, 3], &[], &[9; 60]]);
        let frames = parse(&bytes).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].data, [1, 2, 3]);
        assert!(frames[1].data.is_empty());
        assert!(!frames[2].truncated());
    }

    #[test]
    fn big_endian_and_snapped_records_are_read() {
        let mut b = vec![0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&96u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&1500u32.to_be_bytes());
        b.extend_from_slice(&[7, 7]);
        let frames = parse(&b).unwrap();
        assert_eq!(frames[0].data, [7, 7]);
        assert!(frames[0].truncated());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(err(&[1, 2]).contains("shorter than a pcap header"));
        let mut ng = vec![0x0a, 0x0d, 0x0d, 0x0a];
        ng.resize(28, 0);
        assert!(err(&ng).contains("editcap"));
        let mut raw_ip = write(&[]);
        raw_ip[20] = 101;
        assert!(err(&raw_ip).contains("not Ethernet"));
        let mut cut = write(&[&[1, 2, 3, 4]]);
        cut.truncate(cut.len() - 1);
        assert!(
            err(&cut).contains("frame 1: 4 bytes announced"),
            "{}",
            err(&cut)
        );
        let mut half = write(&[]);
        half.extend_from_slice(&[0; 5]);
        assert!(err(&half).contains("record header cut short"));
        assert!(err(&[0u8; 24]).contains("not a pcap file"));
    }
}
