//! Cut-short copies of `migr`, for the cost breakdown of `cargo xtask bench`.
//!
//! BPF has no profiler that splits one program's time by stage, so the bench
//! measures the classifier cut short after each stage and prints the
//! differences. Each copy is `migr`'s own code ([`crate::run`]) with a
//! constant stop: it runs every stage up to and including its own, then
//! passes the frame, and the compiler drops the rest. `migr` itself is the
//! copy that never stops, so the cut points cost it nothing. The agent never
//! loads these programs; `migr_user::datapath::BREAKDOWN_PROGRAMS` names them
//! for the bench.

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Where a copy stops, in the order a frame meets the stages. Constants, not
/// an enum: they are const generic arguments.
pub mod stop {
    /// The replay-batch check (XDP metadata).
    pub const ENTRY: u32 = 1;
    /// The fast path's header reads: the frame's length (a helper call),
    /// then Ethernet, IP and UDP/TCP read in place and checked.
    pub const HEADERS: u32 = 2;
    /// The fast path's two words: the port's `FLOW_PORTS` mark and its
    /// `PORT_LISTENERS` entry (a frame no table can claim is decided here).
    pub const WORDS: u32 = 3;
    /// The listener of a frame whose port has one: its `LISTENER_SLOTS` slot,
    /// else the `LISTENERS` lookup.
    pub const LISTENER: u32 = 4;
    /// The parse into the classification: for a plain frame its `FLOWS`
    /// lookup (once flows exist) and the rest of its headers, read in place
    /// (`migr_lookup_known`); for any other frame the header copy
    /// (`bpf_xdp_load_bytes` into the header cache) and the full parse stage.
    pub const PARSED: u32 = 5;
    /// The lookup stage: learned flows (other than plain frames'), the QUIC
    /// header and `SERVER_IDS`, MPTCP tokens, `SERVICES`.
    pub const CLASSIFIED: u32 = 6;
    /// The protocol-class and reason counters (for a frame the fast path
    /// decides, all of its counters, the verdict's too).
    pub const COUNTED: u32 = 7;
    /// `final_action` (the lease, the ring backlog, the frame's size).
    pub const DECIDED: u32 = 8;
    /// Never: the whole program (the action and the verdict's counter).
    pub const NEVER: u32 = u32::MAX;
}

#[xdp(frags)]
pub fn migr_upto_entry(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::ENTRY }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_headers(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::HEADERS }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_words(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::WORDS }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_listener(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::LISTENER }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_parsed(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::PARSED }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_classified(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::CLASSIFIED }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_counted(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::COUNTED }>(ctx)
}

#[xdp(frags)]
pub fn migr_upto_decided(ctx: XdpContext) -> u32 {
    crate::run::<{ stop::DECIDED }>(ctx)
}

// The full classifier's copies, which the copies from `migr_upto_parsed` on
// tail-call (`FULL_PATH` slots from `full_path::FIRST_CUT`, in this order).

#[xdp(frags)]
pub fn migr_full_upto_parsed(ctx: XdpContext) -> u32 {
    crate::full::<{ stop::PARSED }>(ctx)
}

#[xdp(frags)]
pub fn migr_full_upto_classified(ctx: XdpContext) -> u32 {
    crate::full::<{ stop::CLASSIFIED }>(ctx)
}

#[xdp(frags)]
pub fn migr_full_upto_counted(ctx: XdpContext) -> u32 {
    crate::full::<{ stop::COUNTED }>(ctx)
}

#[xdp(frags)]
pub fn migr_full_upto_decided(ctx: XdpContext) -> u32 {
    crate::full::<{ stop::DECIDED }>(ctx)
}
