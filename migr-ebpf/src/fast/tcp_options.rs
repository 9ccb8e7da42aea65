//! The TCP option shapes the fast path reads itself (see [`known_options`]);
//! other options go to the full parser's walk.

use super::*;

/// The options of nearly every TCP segment of an established connection
/// with timestamps on (Linux, BSD, macOS): NOP, NOP, then the timestamps
/// option (kind 8, 10 bytes). The full parser's option walk finds them valid
/// and holding no MPTCP option, so such a frame is as plain as one without
/// options. Its first four bytes; eight bytes of timestamps follow.
const TIMESTAMPS_ONLY: [u8; 4] = [1, 1, 8, 10];

/// A TCP header with [`TIMESTAMPS_ONLY`] options.
const TCP_TIMESTAMPS_LEN: usize = TcpHdr::LEN + 12;

/// Are the TCP options at `l4` exactly [`TIMESTAMPS_ONLY`]'s, all in the
/// frame?
#[inline(always)]
fn timestamps_only(start: usize, end: usize, l4: usize) -> bool {
    header::<[u8; TCP_TIMESTAMPS_LEN - TcpHdr::LEN]>(start, end, l4 + TcpHdr::LEN).is_some_and(
        |options| {
            // SAFETY: `header` proved the options are in the frame.
            let first = unsafe { options.cast::<[u8; 4]>().read_unaligned() };
            first == TIMESTAMPS_ONLY
        },
    )
}

/// A Linux SYN's (and SYN-ACK's) options with the default settings: MSS,
/// SACK permitted, timestamps, NOP, window scale; the kinds and lengths, at
/// their offsets (the values between are the connection's).
const LINUX_SYN: [(usize, u8); 9] = [
    (0, 2),
    (1, 4),
    (4, 4),
    (5, 2),
    (6, 8),
    (7, 10),
    (16, 1),
    (17, 3),
    (18, 3),
];

const LINUX_SYN_LEN: usize = 20;

/// Reads the options of a TCP header at `l4` (`header_len` bytes, all in
/// the frame) if they have a shape the fast path knows: a head of nothing,
/// [`TIMESTAMPS_ONLY`]'s or [`LINUX_SYN`]'s, then nothing, or one MPTCP
/// option and at most 3 bytes of NOP padding or an end of list (an MPTCP
/// data segment's DSS, an MP_JOIN SYN's MP_JOIN). The full parser's walk
/// finds such options valid and the option after the head the first MPTCP
/// one. Some(the MPTCP option, if any); None: other options, which the full
/// parser walks.
#[inline(always)]
pub(super) fn known_options(
    start: usize,
    end: usize,
    l4: usize,
    header_len: usize,
) -> Option<Option<OptionRef>> {
    let options_end = l4 + header_len;
    let head = if header_len >= TCP_TIMESTAMPS_LEN && timestamps_only(start, end, l4) {
        TCP_TIMESTAMPS_LEN - TcpHdr::LEN
    } else if header_len >= TcpHdr::LEN + LINUX_SYN_LEN && linux_syn(start, end, l4) {
        LINUX_SYN_LEN
    } else {
        0
    };
    let at = l4 + TcpHdr::LEN + head;
    if at == options_end {
        return Some(None);
    }
    let kind_len = header::<[u8; 2]>(start, end, at)?;
    // SAFETY: `header` proved both bytes are in the frame.
    let [kind, len] = unsafe { kind_len.read_unaligned() };
    let after = at + len as usize;
    if kind != TCPOPT_MPTCP || len < 2 || after > options_end || options_end - after > 3 {
        return None;
    }
    for i in 0..3 {
        if after + i >= options_end {
            break;
        }
        // SAFETY: `header` proved the byte is in the frame.
        match unsafe { header::<u8>(start, end, after + i)?.read() } {
            TCPOPT_EOL => break,
            TCPOPT_NOP => {}
            _ => return None,
        }
    }
    Some(Some(OptionRef {
        offset: at as u16,
        len,
    }))
}

/// Do the TCP options at `l4` begin with [`LINUX_SYN`]'s, all in the frame?
#[inline(always)]
fn linux_syn(start: usize, end: usize, l4: usize) -> bool {
    header::<[u8; LINUX_SYN_LEN]>(start, end, l4 + TcpHdr::LEN).is_some_and(|options| {
        // SAFETY: `header` proved the options are in the frame.
        let options = unsafe { options.read_unaligned() };
        LINUX_SYN.iter().all(|&(at, byte)| options[at] == byte)
    })
}
