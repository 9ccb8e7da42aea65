//! migr's XDP programs.
//!
//! # Maps (key → value, who writes it)
//! | map | type | key | value | written by |
//! | --- | --- | --- | --- | --- |
//! | `PROTO_COUNTERS` | per-CPU array | [`ProtoClass`] index | packets seen (u64) | this program |
#![no_std]
#![no_main]

mod frame;

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use migr_common::{Frame, maps::ProtoClass};

use crate::frame::XdpFrame;

#[map]
static PROTO_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProtoClass::COUNT, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;

/// The main program: classifies and counts, and never drops.
#[xdp]
pub fn migr(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    count(proto_class(&frame));
    xdp_action::XDP_PASS
}

/// A program that only passes. Attached to veth peers so that XDP_REDIRECT
/// into them delivers, and used as the benchmark baseline.
#[xdp]
pub fn migr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn proto_class<F: Frame>(frame: &F) -> ProtoClass {
    let mut l3 = 14;
    let mut ethertype = match frame.be16_at(12) {
        Some(t) => t,
        None => return ProtoClass::NonIp,
    };
    if ethertype == ETH_P_8021Q {
        l3 += 4;
        ethertype = match frame.be16_at(16) {
            Some(t) => t,
            None => return ProtoClass::NonIp,
        };
    }
    let proto = match ethertype {
        ETH_P_IPV4 => frame.u8_at(l3 + 9),
        ETH_P_IPV6 => frame.u8_at(l3 + 6),
        _ => return ProtoClass::NonIp,
    };
    match proto {
        Some(p) => ProtoClass::from_ip_proto(p),
        None => ProtoClass::OtherIp,
    }
}

#[inline(always)]
fn count(class: ProtoClass) {
    if let Some(counter) = PROTO_COUNTERS.get_ptr_mut(class as u32) {
        // Per-CPU slot: no other CPU writes it, so a plain add is race-free.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
