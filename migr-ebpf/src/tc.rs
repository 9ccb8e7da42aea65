//! `migr_tc`: the TC ingress half of a FORWARD on [`ForwardPath::Tc`].
//!
//! On a veth whose peer runs no XDP program (containers, virtual nodes,
//! every namespace topology) a frame sent with XDP_TX or redirected as an
//! XDP frame never arrives, and frames a local sender left with a partial
//! checksum are dropped once they become XDP frames. So for such egress
//! devices the XDP program only decides: it passes the frame with a
//! [`ForwardMeta`] in front of it, and this program, at the same device's
//! TC ingress, rewrites it with the kernel's checksum helpers (which update
//! a full or a partial checksum as the skb says it is) and redirects it to
//! the egress device's transmit path, which delivers on any device.
//!
//! Frames without the tag pass untouched (the first check, a few
//! instructions). The verdict is counted here, once the frame is handed to
//! the egress device: the XDP program counted only `forward_via_tc`. GRO
//! may have merged frames between the two programs, so a merged skb counts
//! as the segments it holds.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_check_mtu, bpf_csum_diff, bpf_redirect, bpf_skb_change_head},
    macros::classifier,
    programs::TcContext,
};
use migr_common::maps::{
    FAMILY_V4, FAMILY_V6, FORWARD_META_MAGIC, ForwardMeta, ForwardMode, ForwardPath, ForwardTarget,
    Reason, ReplayedTag, SERVICE_ACTIVE, TC_HANDOVER_L4_BYTES, Verdict,
};

use crate::{SERVICES, TC_HANDOVERS, count_reason, count_verdicts};

/// TCX_NEXT (TC_ACT_UNSPEC to a legacy filter): frames that are not
/// migr's go on to the next program on the hook, so that migr_tc chains
/// with other TC programs instead of ending their turn (TC_ACT_OK would).
const TC_NEXT: i32 = -1;
const PROTO_UDP: u8 = 17;
const ETH_HLEN: u32 = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

#[classifier]
pub fn migr_tc(ctx: TcContext) -> i32 {
    let Some(meta) = take_forward_meta(&ctx) else {
        return TC_NEXT;
    };
    let bytes = u64::from(ctx.len());
    // SAFETY: `skb` is the program's context; a plain field read.
    let segments = unsafe { (*ctx.skb.skb).gso_segs }.max(1);
    let outcome = SERVICES
        .get(meta.service_id)
        .filter(|s| s.flags & SERVICE_ACTIVE != 0)
        .ok_or(Reason::NoRedirectTarget)
        .and_then(|s| rewrite_and_redirect(&ctx, &meta, &s.forward));
    match outcome {
        Ok(action) => {
            count_verdicts(meta.service_id, Verdict::Forward, segments, bytes);
            action
        }
        Err(reason) => {
            count_reason(reason);
            count_verdicts(meta.service_id, Verdict::ForwardFailed, segments, bytes);
            TC_ACT_SHOT
        }
    }
}

/// The frame's [`ForwardMeta`], if the XDP program left one; the tag is
/// cleared, so that the frame is never taken for a hand-over again.
#[inline(always)]
fn take_forward_meta(ctx: &TcContext) -> Option<ForwardMeta> {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; the verifier turns these loads
    // into packet pointers, checked against each other below.
    let meta = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*skb).data_meta)) } as usize;
    let data = ctx.data();
    if meta + size_of::<ForwardMeta>() > data {
        return take_handover(ctx);
    }
    let at = meta as *mut ForwardMeta;
    // SAFETY: the check above proves the metadata holds a whole ForwardMeta
    // (metadata is 4-byte aligned by the kernel).
    let found = unsafe { at.read() };
    if found.magic != FORWARD_META_MAGIC {
        return take_handover(ctx);
    }
    // SAFETY: as above; TC programs may write their metadata.
    unsafe { core::ptr::addr_of_mut!((*at).magic).write(0) };
    // A replayed frame's tag follows the ForwardMeta, right in front of the
    // frame, and the bytes would travel on in the headroom: cleared, so that
    // the XDP program of the node it reaches does not take the frame for one
    // it replayed itself.
    let tag_at = meta + size_of::<ForwardMeta>();
    if tag_at + size_of::<ReplayedTag>() <= data {
        // SAFETY: the check above proves the 8 bytes are metadata.
        unsafe { (tag_at as *mut ReplayedTag).write(ReplayedTag::default()) };
    }
    Some(found)
}

/// This CPU's pending [`TcHandover`], if it is this frame's (skb mode).
///
/// When generic XDP had to copy an skb (too little headroom, as for frames a
/// router forwarded into a veth), Linux 6.18 hands TC the copy with its MAC
/// header length lost: `data` is the IP header, the frame is [`ETH_HLEN`]
/// bytes short and the metadata is not where XDP put it. Such a frame gets an
/// Ethernet header in front again, so that the rewrite and the redirect see
/// the frame XDP saw (the MACs are written afterwards anyway).
#[inline(always)]
fn take_handover(ctx: &TcContext) -> Option<ForwardMeta> {
    let slot = TC_HANDOVERS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; the XDP hook that wrote it ran before us.
    let slot = unsafe { &mut *slot };
    let missing = slot.len.checked_sub(ctx.len())?;
    if slot.len == 0 || (missing != 0 && missing != ETH_HLEN) {
        return None;
    }
    let l4_at = usize::from(slot.meta.l4_offset).checked_sub(missing as usize)?;
    let head: [u8; TC_HANDOVER_L4_BYTES] = ctx.load(l4_at).ok()?;
    if head != slot.l4_head {
        return None;
    }
    slot.len = 0;
    let meta = slot.meta;
    if missing == ETH_HLEN {
        restore_ethernet(ctx, &meta)?;
    }
    Some(meta)
}

/// Puts an Ethernet header (MACs zero, for the rewrite to set) in front of
/// a frame that starts at its IP header; untagged frames only.
#[inline(always)]
fn restore_ethernet(ctx: &TcContext, meta: &ForwardMeta) -> Option<()> {
    if u32::from(meta.l3_offset) != ETH_HLEN {
        return None;
    }
    let ethertype: u16 = match meta.family {
        FAMILY_V4 => 0x0800,
        FAMILY_V6 => 0x86dd,
        _ => return None,
    };
    // SAFETY: plain helper call on the program's context.
    if unsafe { bpf_skb_change_head(ctx.skb.skb.cast(), ETH_HLEN, 0) } != 0 {
        return None;
    }
    ctx.store(12, &ethertype.to_be_bytes(), 0).ok()
}

#[inline(always)]
fn rewrite_and_redirect(
    ctx: &TcContext,
    meta: &ForwardMeta,
    target: &ForwardTarget,
) -> Result<i32, Reason> {
    if ForwardPath::from_u8(target.path) != Some(ForwardPath::Tc) || target.ifindex == 0 {
        return Err(Reason::NoRedirectTarget);
    }
    // `bpf_redirect` takes any index, and the frame is dropped later if no
    // device has it, or if it does not fit the device's MTU; `bpf_check_mtu`
    // looks the device up now (negative: none) and checks the size
    // (positive: too large, also per segment of a GSO frame).
    let mut mtu = 0u32;
    // SAFETY: plain helper call on the program's context and a stack u32.
    let fits = unsafe { bpf_check_mtu(ctx.skb.skb.cast(), target.ifindex, &mut mtu, 0, 0) };
    if fits < 0 {
        return Err(Reason::NoRedirectTarget);
    }
    if fits > 0 {
        return Err(Reason::Oversize);
    }
    match ForwardMode::from_u8(target.mode) {
        Some(ForwardMode::AddressChanging) => rewrite_destination(ctx, meta, target)?,
        Some(ForwardMode::SameIp) => {}
        None => return Err(Reason::ForwardUnsupported),
    }
    let macs = Macs {
        dst: target.dst_mac,
        src: target.src_mac,
    };
    ctx.store(0, &macs, 0).map_err(|_| Reason::Malformed)?;
    // SAFETY: plain helper call; flags 0: the egress device's transmit path.
    let action = unsafe { bpf_redirect(target.ifindex, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(action)
    } else {
        Err(Reason::NoRedirectTarget)
    }
}

#[repr(C)]
struct Macs {
    dst: [u8; 6],
    src: [u8; 6],
}

/// The address-changing rewrite through the kernel's checksum helpers:
/// `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` updates a partial checksum
/// as a partial one and a full one as a full one.
#[inline(always)]
fn rewrite_destination(
    ctx: &TcContext,
    meta: &ForwardMeta,
    target: &ForwardTarget,
) -> Result<(), Reason> {
    if meta.family != target.family {
        return Err(Reason::ForwardUnsupported);
    }
    // The XDP program measured the offsets on the frame as it came in; by
    // TC ingress the kernel has taken an 802.1Q tag out of the frame into
    // the skb (and a NIC with VLAN offload never showed it to XDP). So the
    // IP header starts where this frame's Ethernet header says.
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| Reason::Malformed)?);
    let l3 = if matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD) {
        18
    } else {
        14
    };
    let l4 = l3 + usize::from(meta.l4_offset.wrapping_sub(meta.l3_offset));
    let (check_at, mangled_0) = match meta.ip_proto {
        PROTO_UDP => (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0)),
        6 => (l4 + 16, 0),
        _ => return Err(Reason::ForwardUnsupported),
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled_0;
    let unreachable = |_| Reason::ChecksumUnreachable;
    match target.family {
        FAMILY_V4 => {
            let old: u32 = ctx.load(l3 + 16).map_err(unreachable)?;
            let new = u32::from_ne_bytes([
                target.addr[0],
                target.addr[1],
                target.addr[2],
                target.addr[3],
            ]);
            ctx.l4_csum_replace(check_at, u64::from(old), u64::from(new), pseudo | 4)
                .map_err(unreachable)?;
            ctx.l3_csum_replace(l3 + 10, u64::from(old), u64::from(new), 4)
                .map_err(unreachable)?;
            ctx.store(l3 + 16, &new, 0).map_err(unreachable)?;
        }
        FAMILY_V6 => {
            let mut old: [u8; 16] = ctx.load(l3 + 24).map_err(unreachable)?;
            let mut new = target.addr;
            // SAFETY: both buffers are 16 bytes on this stack.
            let diff = unsafe {
                bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0)
            };
            if diff < 0 {
                return Err(Reason::ChecksumUnreachable);
            }
            ctx.l4_csum_replace(check_at, 0, diff as u64, pseudo)
                .map_err(unreachable)?;
            ctx.store(l3 + 24, &new, 0).map_err(unreachable)?;
        }
        _ => return Err(Reason::ForwardUnsupported),
    }
    if target.port != 0 {
        let old: u16 = ctx.load(l4 + 2).map_err(unreachable)?;
        let new = target.port.to_be();
        ctx.l4_csum_replace(check_at, u64::from(old), u64::from(new), mangled_0 | 2)
            .map_err(unreachable)?;
        ctx.store(l4 + 2, &new, 0).map_err(unreachable)?;
    }
    Ok(())
}
