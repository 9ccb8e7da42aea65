//! TCP header and option walk.

use super::{MalformedKind, ParseError, field, read_bytes, read_u8};
use crate::PacketBytes;

pub const TCP_MIN_HEADER_LEN: usize = 20;
pub const TCP_MAX_HEADER_LEN: usize = 60;
/// Upper bound on option-walk iterations: each one consumes at least a byte of
/// the at most 40 option bytes.
pub const MAX_TCP_OPTION_STEPS: usize = 40;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOPT_WSCALE: u8 = 3;
pub const TCPOPT_SACK_PERMITTED: u8 = 4;
pub const TCPOPT_SACK: u8 = 5;
pub const TCPOPT_TIMESTAMPS: u8 = 8;
pub const TCPOPT_MPTCP: u8 = 30;

/// Where a TCP option sits: `offset` is the frame offset of its kind byte,
/// `len` its length byte (kind and length included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OptionRef {
    pub offset: u16,
    pub len: u8,
}

impl OptionRef {
    /// One past the option's last byte.
    #[inline(always)]
    pub const fn end(&self) -> usize {
        self.offset as usize + self.len as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// FIN (0x01) .. CWR (0x80), see the `TCP_*` constants.
    pub flags: u8,
    /// Data offset * 4: 20..=60.
    pub header_len: u8,
    /// Where the TCP payload starts (frame offset).
    pub payload_offset: u16,
    /// Payload bytes up to the end of the IP packet.
    pub payload_len: u16,
    /// The first MPTCP option (kind 30), if any; parse it with
    /// [`parse_mptcp`](super::mptcp::parse_mptcp).
    pub mptcp: Option<OptionRef>,
}

impl TcpInfo {
    #[inline(always)]
    pub const fn has_flags(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
}

/// Parses a TCP header at `l4`; the IP packet ends at `ip_end`.
///
/// The data offset must be at least 5 and the whole header (with options) must
/// fit inside the IP payload. The options are walked (see [`find_option`]) to
/// validate their lengths and to locate the first MPTCP option.
#[inline(always)]
pub fn parse_tcp<F: PacketBytes + ?Sized>(
    f: &F,
    l4: usize,
    ip_end: usize,
) -> Result<TcpInfo, ParseError> {
    if l4 + TCP_MIN_HEADER_LEN > ip_end {
        return Err(ParseError::Malformed(MalformedKind::TcpDataOffset));
    }
    let h = read_bytes::<F, 16>(f, l4)?;
    // The rest of the fixed header (window checksum, urgent pointer) must be
    // in the frame too, although we do not use it.
    read_bytes::<F, 4>(f, l4 + field::tcp::CHECKSUM)?;
    let data_offset = (h[12] >> 4) as usize;
    if data_offset < 5 {
        return Err(ParseError::Malformed(MalformedKind::TcpDataOffset));
    }
    let header_len = data_offset * 4;
    let header_end = l4 + header_len;
    if header_end > ip_end {
        return Err(ParseError::Malformed(MalformedKind::TcpDataOffset));
    }
    // The whole header, options included, must be in the frame.
    read_u8(f, header_end - 1)?;
    let mptcp = f.find_tcp_option(l4 + TCP_MIN_HEADER_LEN, header_end, TCPOPT_MPTCP)?;
    Ok(TcpInfo {
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        flags: h[13],
        header_len: header_len as u8,
        // header_end <= 18 + 40 + 4 * 2048 + 60: fits.
        payload_offset: header_end as u16,
        // ip_end - header_end is at most the IP payload length, a u16.
        payload_len: (ip_end - header_end) as u16,
        mptcp,
    })
}

/// Walks the TCP options in `[start, end)` and returns the first one of kind
/// `kind`, validating every option it passes and every option after it.
///
/// EOL (0) ends the list, NOP (1) is one byte, every other option has a length
/// byte that must be at least 2 and must not run past `end`
/// (`Malformed(TcpOptionLength)` otherwise). At most [`MAX_TCP_OPTION_STEPS`]
/// options are looked at, which covers any 40-byte option area. The loop only
/// locates; nothing inside an option is read.
#[inline(always)]
pub fn find_option<F: PacketBytes + ?Sized>(
    f: &F,
    start: usize,
    end: usize,
    kind: u8,
) -> Result<Option<OptionRef>, ParseError> {
    let mut walk = OptionWalk::new(start, end, kind);
    let mut i = 0;
    while i < MAX_TCP_OPTION_STEPS {
        if !walk.step(f) {
            break;
        }
        i += 1;
    }
    walk.result()
}

/// An option walk (see [`find_option`]) taken one option at a time, so that a
/// BPF program can drive it from `bpf_loop`, whose callback the verifier
/// checks once instead of once per iteration and path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionWalk {
    offset: usize,
    end: usize,
    found: Option<OptionRef>,
    kind: u8,
    malformed: bool,
    truncated: bool,
}

impl OptionWalk {
    #[inline(always)]
    pub const fn new(start: usize, end: usize, kind: u8) -> Self {
        Self {
            offset: start,
            end,
            found: None,
            kind,
            malformed: false,
            truncated: false,
        }
    }

    /// Looks at one option. Returns `false` once the walk is over.
    #[inline(always)]
    pub fn step<F: PacketBytes + ?Sized>(&mut self, f: &F) -> bool {
        let offset = self.offset;
        if offset >= self.end {
            return false;
        }
        let Some(k) = f.u8_at(offset) else {
            self.truncated = true;
            return false;
        };
        if k == TCPOPT_EOL {
            return false;
        }
        if k == TCPOPT_NOP {
            self.offset = offset + 1;
            return true;
        }
        if offset + 1 >= self.end {
            self.malformed = true;
            return false;
        }
        let Some(len) = f.u8_at(offset + 1) else {
            self.truncated = true;
            return false;
        };
        if len < 2 || offset + len as usize > self.end {
            self.malformed = true;
            return false;
        }
        if k == self.kind && self.found.is_none() {
            self.found = Some(OptionRef {
                offset: offset as u16,
                len,
            });
        }
        self.offset = offset + len as usize;
        true
    }

    #[inline(always)]
    pub fn result(&self) -> Result<Option<OptionRef>, ParseError> {
        if self.truncated {
            Err(ParseError::Truncated)
        } else if self.malformed {
            Err(ParseError::Malformed(MalformedKind::TcpOptionLength))
        } else {
            Ok(self.found)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migr_testkit::frames::{FrameBuilder, mptcp, tcp_opt};

    fn with_options(options: &[u8]) -> Vec<u8> {
        FrameBuilder::tcp_v4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80)
            .seq(0x0102_0304)
            .ack(0x0a0b_0c0d)
            .flags(TCP_SYN | TCP_ACK)
            .tcp_options(options)
            .payload(b"hello")
            .build()
    }

    #[test]
    fn plain_header() {
        let f = with_options(&[]);
        let t = parse_tcp(&f[..], 34, f.len()).unwrap();
        assert_eq!(t.src_port, 40000);
        assert_eq!(t.dst_port, 80);
        assert_eq!(t.seq, 0x0102_0304);
        assert_eq!(t.ack, 0x0a0b_0c0d);
        assert_eq!(t.flags, TCP_SYN | TCP_ACK);
        assert!(t.has_flags(TCP_SYN));
        assert!(!t.has_flags(TCP_FIN));
        assert_eq!(t.header_len, 20);
        assert_eq!(t.payload_offset, 54);
        assert_eq!(t.payload_len, 5);
        assert_eq!(t.mptcp, None);
    }

    #[test]
    fn finds_the_first_mptcp_option_among_others() {
        let mut opts = Vec::new();
        opts.extend(tcp_opt::mss(1460));
        opts.extend(tcp_opt::sack_permitted());
        opts.push(TCPOPT_NOP);
        opts.extend(mptcp::capable_syn(1, 0x01));
        opts.extend(mptcp::prio(true, None)); // a second MPTCP option
        let f = with_options(&opts);
        let t = parse_tcp(&f[..], 34, f.len()).unwrap();
        assert_eq!(t.header_len, 36);
        assert_eq!(
            t.mptcp,
            Some(OptionRef {
                offset: 54 + 7,
                len: 4
            })
        );
        assert_eq!(t.mptcp.unwrap().end(), 54 + 11);
    }

    #[test]
    fn eol_stops_the_walk() {
        // MPTCP after an EOL is not looked at
        let mut opts = vec![TCPOPT_NOP, TCPOPT_EOL, 0, 0];
        opts.extend(mptcp::capable_syn(1, 0));
        let f = with_options(&opts);
        assert_eq!(parse_tcp(&f[..], 34, f.len()).unwrap().mptcp, None);
        // nor is garbage after it
        let f = with_options(&[TCPOPT_EOL, 0xff, 0, 0]);
        assert!(parse_tcp(&f[..], 34, f.len()).is_ok());
    }

    #[test]
    fn forty_nops_then_nothing() {
        let f = with_options(&[TCPOPT_NOP; 40]);
        let t = parse_tcp(&f[..], 34, f.len()).unwrap();
        assert_eq!(t.header_len, 60);
        assert_eq!(t.mptcp, None);
        // 36 NOPs then an MPTCP option of 4 is found on the 37th step
        let mut opts = vec![TCPOPT_NOP; 36];
        opts.extend(mptcp::capable_syn(1, 0));
        let f = with_options(&opts);
        assert_eq!(
            parse_tcp(&f[..], 34, f.len()).unwrap().mptcp,
            Some(OptionRef {
                offset: 54 + 36,
                len: 4
            })
        );
    }

    #[test]
    fn bad_option_lengths() {
        let bad = Some(ParseError::Malformed(MalformedKind::TcpOptionLength));
        // length 0 and 1
        for opts in [
            &[TCPOPT_MSS, 0, 0, 0][..],
            &[TCPOPT_MSS, 1, 0, 0][..],
            &[TCPOPT_MPTCP, 0, 0, 0][..],
            &[TCPOPT_NOP, TCPOPT_NOP, 99, 1][..],
            // past the header end
            &[TCPOPT_NOP, TCPOPT_MSS, 4, 0][..],
            &[TCPOPT_MPTCP, 5, 0, 0][..],
            &[TCPOPT_TIMESTAMPS, 255, 0, 0][..],
            // length byte missing: the kind is the last header byte
            &[TCPOPT_NOP, TCPOPT_NOP, TCPOPT_NOP, TCPOPT_MSS][..],
        ] {
            let f = with_options(opts);
            assert_eq!(parse_tcp(&f[..], 34, f.len()).err(), bad, "{opts:?}");
        }
        // an MPTCP option found first does not excuse a broken one later
        let mut opts = mptcp::capable_syn(1, 0);
        opts.extend([TCPOPT_MSS, 1, 0, 0]);
        let f = with_options(&opts);
        assert_eq!(parse_tcp(&f[..], 34, f.len()).err(), bad);
    }

    #[test]
    fn bad_data_offset() {
        let bad = Err(ParseError::Malformed(MalformedKind::TcpDataOffset));
        let good = with_options(&[TCPOPT_NOP; 4]);
        for doff in [0u8, 1, 4] {
            let mut f = good.clone();
            f[34 + 12] = doff << 4;
            assert_eq!(parse_tcp(&f[..], 34, f.len()), bad, "doff {doff}");
        }
        // past the IP payload: header 24 + payload 5 = 29 bytes
        let mut f = good.clone();
        f[34 + 12] = 8 << 4; // 32 bytes
        assert_eq!(parse_tcp(&f[..], 34, f.len()), bad);
        f[34 + 12] = 15 << 4;
        assert_eq!(parse_tcp(&f[..], 34, f.len()), bad);
        // a header exactly up to the end of the IP packet is fine
        let mut f = FrameBuilder::tcp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
            .tcp_options(&[TCPOPT_NOP; 8])
            .build();
        let t = parse_tcp(&f[..], 34, f.len()).unwrap();
        assert_eq!((t.header_len, t.payload_len), (28, 0));
        f[34 + 12] = 8 << 4;
        assert_eq!(parse_tcp(&f[..], 34, f.len()), bad);
        // IP payload shorter than a fixed header
        assert_eq!(parse_tcp(&good[..], 34, 34 + 19), bad);
    }

    #[test]
    fn truncated() {
        let f = with_options(&mptcp::capable_syn(1, 0));
        let end = f.len();
        for len in 34..58 {
            assert_eq!(
                parse_tcp(&f[..len], 34, end),
                Err(ParseError::Truncated),
                "len {len}"
            );
        }
        assert!(parse_tcp(&f[..58], 34, end).is_ok());
    }

    #[test]
    fn find_option_other_kinds() {
        let mut opts = tcp_opt::mss(1400);
        opts.extend(tcp_opt::wscale(7));
        opts.push(TCPOPT_NOP);
        opts.extend(tcp_opt::timestamps(1, 2));
        let f = with_options(&opts);
        let end = 54 + opts.len();
        assert_eq!(
            find_option(&f[..], 54, end, TCPOPT_TIMESTAMPS),
            Ok(Some(OptionRef {
                offset: 54 + 8,
                len: 10
            }))
        );
        assert_eq!(
            find_option(&f[..], 54, end, TCPOPT_WSCALE),
            Ok(Some(OptionRef {
                offset: 54 + 4,
                len: 3
            }))
        );
        assert_eq!(find_option(&f[..], 54, end, TCPOPT_SACK), Ok(None));
        assert_eq!(find_option(&f[..], 54, 54, TCPOPT_MSS), Ok(None));
    }
}
