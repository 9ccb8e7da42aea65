//! The lookup stage for a frame the fast path parsed and [`super::claim`]
//! did not decide: `migr_lookup_known`, a BPF global function.

use super::{claim::Claimed, *};

/// `migr_common::classify::lookup_stage` for the frame [`fast_path`] found
/// plain ([`FAST_PARSED`]), with the listener it looked up: a BPF global
/// function (verified once, on its own stack), like the full classifier's
/// stages. Returns 1 if `out` holds the classification (0: the caller takes
/// the full way, which cannot happen for a frame the fast path checked).
///
/// # Safety
/// `out` must be null or point to a writable `Classification`.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn migr_lookup_known(ctx: *mut xdp_md, out: *mut Classification) -> u32 {
    // SAFETY: as this function's.
    unsafe { lookup_known_until::<{ stop::NEVER }>(ctx, out) }
}

/// [`migr_lookup_known`] cut short after [`stop::PARSED`] (`breakdown.rs`).
///
/// # Safety
/// As for [`migr_lookup_known`].
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn migr_lookup_known_upto_parsed(
    ctx: *mut xdp_md,
    out: *mut Classification,
) -> u32 {
    // SAFETY: as this function's.
    unsafe { lookup_known_until::<{ stop::PARSED }>(ctx, out) }
}

/// Classifies the frame [`fast_path`] found plain into `out` (this CPU's
/// scratch slot) through the global function for a copy that stops at
/// `STOP`; false if the caller must take the full way (or stop).
#[inline(always)]
pub fn lookup_known<const STOP: u32>(ctx: *mut xdp_md, out: &mut Classification) -> bool {
    // SAFETY: `out` is the caller's scratch slot.
    let done = unsafe {
        match STOP {
            stop::PARSED => migr_lookup_known_upto_parsed(ctx, out),
            _ => migr_lookup_known(ctx, out),
        }
    };
    done == 1
}

/// [`migr_lookup_known`]'s body, cut short after `STOP` (`breakdown.rs`).
#[inline(always)]
unsafe fn lookup_known_until<const STOP: u32>(ctx: *mut xdp_md, out: *mut Classification) -> u32 {
    // A cut-short copy tests its stop at run time (two instructions): with
    // the stop a constant, LLVM reshaped the cut function into code the
    // verifier refused (a map pointer shifted as an integer).
    let until = if STOP == stop::NEVER {
        STOP
    } else {
        core::hint::black_box(STOP)
    };
    // SAFETY: the caller's scratch slot (the verifier insists on the null check).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return 0;
    };
    let Some(parsed) = FAST_PARSED.get(0) else {
        return 0;
    };
    let (start, end) = data(ctx);
    let Some(info) = packet_info(start, end, &parsed.plain) else {
        return 0;
    };
    reset_parsed(&info, out);
    // The MPTCP option apart, on TCP's path only: with the option in
    // `packet_info`'s `L4Info`, LLVM merged its bytes with the ones UDP's
    // variant leaves undefined, and stored for them, on UDP's path, a
    // register that held a packet pointer there, which the verifier refused.
    if let Some(PacketInfo {
        l4: L4Info::Tcp(tcp),
        ..
    }) = out.packet.as_mut()
    {
        tcp.mptcp = parsed.plain.mptcp();
    }
    if until == stop::PARSED {
        return 1;
    }
    let listener = parsed.listener;
    let known = Claimed {
        listener: (listener.service_id != NO_SERVICE).then_some(listener),
        flow: (parsed.flow != NO_SERVICE).then_some(parsed.flow),
        server_id: Cell::new(parsed.server_id),
    };
    // Only a QUIC listener has the lookup read the frame (the QUIC header, a
    // dozen small reads), straight from the linear frame: the fast path took
    // only linear frames.
    let frame = InPlace::with_len(ctx, Some(parsed.len as usize));
    lookup_stage(&frame, &known, out);
    1
}

/// The [`PacketInfo`] `parse_packet` gives a frame [`quick_parse`] found
/// plain (None only if the frame changed in between, which it cannot).
#[inline(always)]
fn packet_info(start: usize, end: usize, plain: &Plain) -> Option<PacketInfo> {
    let (ethertype, l4, src_addr, dst_addr) = match plain.family {
        IpFamily::V4 => {
            let ip = header::<Ipv4Hdr>(start, end, EthHdr::LEN)?;
            let (src, dst) = (field!(ip, src_addr), field!(ip, dst_addr));
            (ETHERTYPE_IPV4, IPV4_L4, v4_in_16(src), v4_in_16(dst))
        }
        IpFamily::V6 => {
            let ip = header::<Ipv6Hdr>(start, end, EthHdr::LEN)?;
            let (src, dst) = (field!(ip, src_addr), field!(ip, dst_addr));
            (ETHERTYPE_IPV6, IPV6_L4, src, dst)
        }
    };
    let len = plain.l4_len;
    let l4_info = if plain.proto == IPPROTO_UDP {
        udp_info(start, end, l4, plain.dst_port)?
    } else {
        let tcp = header::<TcpHdr>(start, end, l4)?;
        let header_len = u16::from(plain.tcp_header_len);
        L4Info::Tcp(TcpInfo {
            src_port: be16(field!(tcp, source)),
            dst_port: plain.dst_port,
            seq: u32::from_be_bytes(field!(tcp, seq)),
            ack: u32::from_be_bytes(field!(tcp, ack_seq)),
            flags: plain.tcp_flags,
            header_len: header_len as u8,
            payload_offset: l4 as u16 + header_len,
            payload_len: len - header_len,
            // Set by `lookup_known_until`, see there.
            mptcp: None,
        })
    };
    Some(PacketInfo {
        vlan: None,
        ethertype,
        l3_offset: EthHdr::LEN as u16,
        family: plain.family,
        src_addr,
        dst_addr,
        ip_proto: plain.proto,
        l4_offset: l4 as u16,
        l4_len: len,
        l4: l4_info,
    })
}

#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}
