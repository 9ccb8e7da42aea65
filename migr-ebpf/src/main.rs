//! migr's XDP programs.
//!
//! `migr` is the classifier attached to an edge node's NIC. It is thin by
//! design: it parses (`migr_common::wire`), decides with
//! `migr_common::classify` against the maps below, applies the service's
//! action, and counts. Policy lives in the agent, which writes the maps.
//!
//! It is two programs. `migr` itself is the fast path (`fast.rs`): it
//! decides plain frames with headers read in place. What it cannot decide,
//! and the agent's replay runs, it hands to `migr_full`, the full
//! classifier, by a tail call through `FULL_PATH`. The split is for the
//! stack: a call chain may use 512 bytes, the full parse stage takes 448 of
//! them, and as a program of its own it no longer leaves `migr` only 32.
//!
//! # Maps
//! | map | type | key | value | written by |
//! | --- | --- | --- | --- | --- |
//! | `SERVICES` | array, [`MAX_SERVICES`] | service id | [`ServiceEntry`]: action, flags, forward target | agent |
//! | `LISTENERS` | hash | [`ListenerKey`]: service address, port, protocol | [`ListenerEntry`]: service id, QUIC flag, CID config | agent |
//! | `SERVER_IDS` | hash (no prealloc) | QUIC server id (u32) at or above [`SMALL_SERVER_ID_LIMIT`] | service id | agent |
//! | `SMALL_SERVER_IDS` | array, [`SMALL_SERVER_ID_LIMIT`] | QUIC server id below it | service id (0: none) | agent |
//! | `TOKENS` | LRU hash | MPTCP token (u32) | service id | agent (from `EVENTS` keys) |
//! | `JOINS_LEARNED` | LRU hash | MPTCP token (u32) | subflows learned from its MP_JOINs (at most [`MAX_JOINS_PER_TOKEN`]) | this program |
//! | `FLOWS` | LRU hash | [`FlowKey`] (client → service 5-tuple) | service id | agent; this program for MP_JOIN subflows of known tokens |
//! | `FORWARD_DEVICES` | devmap, [`MAX_SERVICES`] | service id | egress ifindex for FORWARD | agent |
//! | `SERVICE_COUNTERS` | per-CPU array | service id (0: no service) | [`ServiceCounters`]: packets, bytes per [`Verdict`] | this program |
//! | `REASONS` | per-CPU array | [`Reason`] | count | this program |
//! | `PROTO_COUNTERS` | per-CPU array | [`ProtoClass`] | count | this program |
//! | `PARKED` | ring buffer | - | [`ParkedHeader`] + frame bytes | this program (agent consumes; a `SERVICE_HOLD` service parks while it is not empty) |
//! | `EVENTS` | ring buffer | - | [`Event`] (MPTCP keys, learned flows, joins of unknown tokens) | this program (agent consumes) |
//! | `EVENT_BUDGET` | per-CPU array, 1 | 0 | [`EventBudget`]: rate limit window, key reports apart from the rest | this program |
//! | `REPLAY_SLOTS` | array, [`REPLAY_BATCH`] | run index in a replay batch | [`ReplaySlot`]: frame bytes and the action to give it | agent (this program reads) |
//! | `REPLAY_NEXT` | array, 1 | 0 | runs of the current replay batch | agent zeroes it, this program counts |
//! | `HEADER_CACHE` | per-CPU array, 1 | 0 | the current packet's first 256 bytes (`xdp_packet.rs`) | this program |
//! | `SCRATCH` | per-CPU array, 1 | 0 | [`Classification`]: the current packet's decision (too large for the stack) | this program (scratch, not state) |
//! | `FAST_PARSED` | per-CPU array, 1 | 0 | the headers the fast path parsed in place, and the frame's listener (`fast.rs`) | this program (scratch, not state) |
//! | `FLOW_PORTS` | array, [`FLOW_PORTS_LEN`] | destination port | 1 if a learned flow may have that port: `FLOWS` is looked up only for these | agent before it writes a flow; this program before it learns one |
//! | `PORT_LISTENERS` | array, [`PORT_LISTENERS_LEN`] | port and protocol ([`migr_common::maps::port_listener_index`]) | 0: no listener; a `LISTENER_SLOTS` slot: one of its listeners; [`migr_common::maps::LISTENERS_ONLY`]: look up `LISTENERS` | agent |
//! | `LISTENER_SLOTS` | array, [`LISTENER_SLOTS_LEN`] | slot (0 unused) | [`ListenerSlot`]: a listener's key and entry, never rewritten while named | agent |
//! | `FULL_PATH` | program array, [`full_path::SLOTS`] | [`full_path`] slot | `migr_full` (and the bench's cut-short copies) | agent, before it attaches `migr`; pinned beside the links |
//! | `FULL_PATH_MISSED` | per-CPU array, 1 | 0 | frames passed because `FULL_PATH` held no program | this program |
//! | `AYA_LOGS` | ring buffer (aya-log) | - | debug log records, written only with `--datapath-log` (`log.rs`) | this program (agent reads) |
#![no_std]
#![no_main]

mod breakdown;
mod fast;
mod in_place;
mod log;
mod tc;
mod xdp_packet;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
};
use migr_common::{
    classify::{
        Classification, FrameContext, Report, Tables, final_action, lookup_stage, parse_stage,
        settled_action,
    },
    maps::{
        Action, Event, EventBudget, EventKind, FAMILY_V4, FAMILY_V6, FLOW_PORTS_LEN,
        FORWARD_META_MAGIC, FlowKey, ForwardMeta, ForwardMode, ForwardPath, ForwardTarget,
        LISTENER_SLOTS_LEN, ListenerEntry, ListenerKey, ListenerSlot, MAX_JOINS_PER_TOKEN,
        MAX_SERVICES, NO_SERVICE, PARK_LARGE_MAX, PARK_SMALL_MAX, PORT_LISTENERS_LEN, ParkedHeader,
        ParkedRecord, ProtoClass, REPLAY_BATCH, REPLAY_FRAME_MAX, Reason, ReplayMeta, ReplaySlot,
        ReplayedTag, SMALL_SERVER_ID_LIMIT, ServiceCounters, ServiceEntry, TC_HANDOVER_L4_BYTES,
        TcHandover, Verdict, full_path, map_sizes,
    },
    rewrite::{Headers, RewriteError, rewrite_destination, rewrite_macs},
    wire::ip::IpFamily,
};

use crate::{
    breakdown::stop,
    fast::Fast,
    in_place::InPlace,
    xdp_packet::{XdpPacket, fill_header_cache},
};

/// Default sizes; the agent may override them at load time.
const BPF_F_NO_PREALLOC: u32 = 1;
/// The agent maps `REPLAY_SLOTS` and writes frames straight into it.
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `bpf_ringbuf_query` flag: bytes produced but not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;

#[map]
static SERVICES: Array<ServiceEntry> = Array::with_max_entries(MAX_SERVICES, 0);
#[map]
static LISTENERS: HashMap<ListenerKey, ListenerEntry> =
    HashMap::with_max_entries(map_sizes::LISTENERS, 0);
#[map]
static SERVER_IDS: HashMap<u32, u32> =
    HashMap::with_max_entries(map_sizes::SERVER_IDS, BPF_F_NO_PREALLOC);
/// The service ids of the server ids below [`SMALL_SERVER_ID_LIMIT`] (0: none).
#[map]
static SMALL_SERVER_IDS: Array<u32> = Array::with_max_entries(SMALL_SERVER_ID_LIMIT, 0);
#[map]
static TOKENS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(map_sizes::TOKENS, 0);
#[map]
static JOINS_LEARNED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(map_sizes::TOKENS, 0);
#[map]
static FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(map_sizes::FLOWS, 0);
#[map]
static FORWARD_DEVICES: DevMap = DevMap::with_max_entries(MAX_SERVICES, 0);
#[map]
static SERVICE_COUNTERS: PerCpuArray<ServiceCounters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
#[map]
static PROTO_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProtoClass::COUNT, 0);
#[map]
static PARKED: RingBuf = RingBuf::with_byte_size(map_sizes::PARK_RING_BYTES, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(map_sizes::EVENT_RING_BYTES, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);
/// The frames of the agent's current replay batch (see [`ReplayMeta`]).
#[map]
static REPLAY_SLOTS: Array<ReplaySlot> = Array::with_max_entries(REPLAY_BATCH, BPF_F_MMAPABLE);
/// [0]: runs of the current replay batch so far, i.e. the next slot. The
/// agent zeroes it before a batch; after a crash it tells how far one got.
#[map]
static REPLAY_NEXT: Array<u32> = Array::with_max_entries(1, 0);
/// Each CPU's last FORWARD hand-over, for TC in skb mode (see [`TcHandover`]).
/// Transient, so not pinned: the XDP and the TC program of one load share it.
#[map]
static TC_HANDOVERS: PerCpuArray<TcHandover> = PerCpuArray::with_max_entries(1, 0);
/// A listener of each port and protocol ([`PORT_LISTENERS_LEN`]).
#[map]
static PORT_LISTENERS: Array<u32> = Array::with_max_entries(PORT_LISTENERS_LEN, 0);
/// The listeners `PORT_LISTENERS` names ([`ListenerSlot`]).
#[map]
static LISTENER_SLOTS: Array<ListenerSlot> = Array::with_max_entries(LISTENER_SLOTS_LEN, 0);
/// The destination ports a learned flow may have ([`FLOW_PORTS_LEN`]).
#[map]
static FLOW_PORTS: Array<u32> = Array::with_max_entries(FLOW_PORTS_LEN, 0);
/// Per-CPU scratch for the classification: too large for the 512-byte stack.
#[map]
static SCRATCH: PerCpuArray<Classification> = PerCpuArray::with_max_entries(1, 0);
/// The full classifier's programs ([`full_path`]), which the agent puts in
/// before it attaches `migr`.
#[map]
static FULL_PATH: ProgramArray = ProgramArray::with_max_entries(full_path::SLOTS, 0);
/// [0]: frames `migr` passed because `FULL_PATH` held no program to take
/// them (an agent that did not fill it; never otherwise).
#[map]
static FULL_PATH_MISSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The tables `classify` reads, backed by the maps above.
struct MapTables;

impl Tables for MapTables {
    // Every key is copied onto this function's stack first: the callers' keys live in the
    // per-CPU scratch slot behind a global function's pointer argument, and Linux 6.1 refuses
    // such memory as a map key ("R2 type=mem expected=fp, ..."; 6.12 accepts it).
    #[inline(always)]
    fn listener(&self, key: &ListenerKey) -> Option<ListenerEntry> {
        let key = on_stack(key);
        // SAFETY: the value is copied out at once; a concurrent update can at
        // worst give a stale entry, which the next packet corrects.
        unsafe { LISTENERS.get(key) }.copied()
    }
    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<u32> {
        // An LRU lookup with a 40-byte key, skipped unless a flow to the port was learned.
        if !fast::flow_port(key.dst_port) {
            return None;
        }
        let key = on_stack(key);
        unsafe { FLOWS.get(key) }.copied()
    }
    #[inline(always)]
    fn server_id(&self, server_id: u32) -> Option<u32> {
        if server_id < SMALL_SERVER_ID_LIMIT {
            return SMALL_SERVER_IDS
                .get(server_id)
                .copied()
                .filter(|&service_id| service_id != NO_SERVICE);
        }
        let key = on_stack(&server_id);
        unsafe { SERVER_IDS.get(key) }.copied()
    }
    #[inline(always)]
    fn token(&self, token: u32) -> Option<u32> {
        let key = on_stack(&token);
        unsafe { TOKENS.get(key) }.copied()
    }
    #[inline(always)]
    fn service(&self, service_id: u32) -> Option<ServiceEntry> {
        SERVICES.get(service_id).copied()
    }
}

/// A copy of `value` that LLVM cannot fold back into a pointer to the original.
#[inline(always)]
fn on_stack<T: Copy>(value: &T) -> T {
    // SAFETY: `value` is a valid reference.
    unsafe { core::ptr::read_volatile(value) }
}

/// The classifier: PASS, PARK, FORWARD or DROP per the packet's service.
/// What the fast path cannot decide, and the agent's replay runs, go on to
/// the full classifier, `migr_full`, by a tail call.
#[xdp(frags)]
pub fn migr(ctx: XdpContext) -> u32 {
    run::<{ stop::NEVER }>(ctx)
}

/// The full classifier, `FULL_PATH`'s slot [`full_path::FULL`].
#[xdp(frags)]
pub fn migr_full(ctx: XdpContext) -> u32 {
    full::<{ stop::NEVER }>(ctx)
}

/// `migr`'s code, with a constant `STOP` for the bench's cut-short copies
/// (`breakdown.rs`): after the stage it names, a copy passes the frame.
/// `migr` never stops, and its checks of `STOP` compile to nothing.
#[inline(always)]
fn run<const STOP: u32>(ctx: XdpContext) -> u32 {
    // A run of one of the agent's replay batches: the full classifier takes
    // the batch's next slot.
    if carries_replay_meta(ctx.ctx) {
        return to_full_path::<STOP>(&ctx);
    }
    if STOP == stop::ENTRY {
        return xdp_action::XDP_PASS;
    }
    match fast::fast_path::<STOP>(ctx.ctx) {
        Fast::Passed => xdp_action::XDP_PASS,
        Fast::Decided(xdp) => xdp,
        _ if STOP <= stop::LISTENER => xdp_action::XDP_PASS,
        Fast::Lookup => {
            let Some(decision) = SCRATCH.get_ptr_mut(0) else {
                return xdp_action::XDP_PASS;
            };
            // SAFETY: this CPU's scratch slot; nothing else uses it during this run.
            let decision = unsafe { &mut *decision };
            if !fast::lookup_known::<STOP>(ctx.ctx, decision) {
                return to_full_path::<STOP>(&ctx);
            }
            if STOP < stop::COUNTED {
                return xdp_action::XDP_PASS;
            }
            finish::<STOP>(ctx.ctx, decision, None, true)
        }
        Fast::Slow => to_full_path::<STOP>(&ctx),
    }
}

/// Tail-calls the full classifier (the copy that stops where `STOP` says).
/// Returns only if `FULL_PATH` has no program there: the frame passes,
/// counted in `FULL_PATH_MISSED`.
#[inline(always)]
fn to_full_path<const STOP: u32>(ctx: &XdpContext) -> u32 {
    let slot = match STOP {
        stop::PARSED => full_path::FIRST_CUT,
        stop::CLASSIFIED => full_path::FIRST_CUT + 1,
        stop::COUNTED => full_path::FIRST_CUT + 2,
        stop::DECIDED => full_path::FIRST_CUT + 3,
        // The earlier copies stop before the full classifier.
        _ if STOP < stop::PARSED => return xdp_action::XDP_PASS,
        _ => full_path::FULL,
    };
    // SAFETY: a tail call with the program's own context; it does not return
    // when it happens.
    unsafe { FULL_PATH.tail_call(ctx, slot) };
    if let Some(missed) = FULL_PATH_MISSED.get_ptr_mut(0) {
        // SAFETY: this CPU's counter.
        unsafe { *missed += 1 };
    }
    xdp_action::XDP_PASS
}

/// `migr_full`'s code, cut short after `STOP` like [`run`]'s: a replay run
/// takes its slot, then every frame gets the full classifier.
#[inline(always)]
fn full<const STOP: u32>(ctx: XdpContext) -> u32 {
    // A run of one of the agent's replay batches: the frame is the next slot's,
    // classified like any other, and counted as replayed.
    let replay = if is_replay_batch(ctx.ctx) {
        let Some(action) = take_replay_slot(ctx.ctx) else {
            count_reason(Reason::ReplayFailed);
            log::replay_failed(&ctx);
            return xdp_action::XDP_DROP;
        };
        Some(action)
    } else {
        None
    };
    classify_in_full::<STOP>(&ctx, replay)
}

/// The full classifier (the header copy, the parse and lookup stages), then
/// [`finish`]; `replay` is the slot's action on a replay run.
#[inline(always)]
fn classify_in_full<const STOP: u32>(ctx: &XdpContext, replay: Option<Action>) -> u32 {
    let Some(decision) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it during this run.
    let decision = unsafe { &mut *decision };
    fill_header_cache(ctx.ctx);
    if !classify_into::<STOP>(ctx, decision) || STOP < stop::COUNTED {
        return xdp_action::XDP_PASS;
    }
    finish::<STOP>(ctx.ctx, decision, replay, false)
}

/// Counts, decides and acts on a classified frame: the rest of [`run`] and
/// of [`full`]. A BPF call of its own, so that its stack (and the actions',
/// `forward`'s 296 bytes) does not add to `migr`'s, which Linux 6.1 adds to
/// `migr_lookup_known`'s 392 in their chain (512 at most).
#[inline(never)]
fn finish<const STOP: u32>(
    ctx: *mut xdp_md,
    decision: &mut Classification,
    replay: Option<Action>,
    fast: bool,
) -> u32 {
    let ctx = XdpContext::new(ctx);
    // Asked once: a helper call, which a parked frame would otherwise make
    // four times (the tag, final_action, park, the verdict's counter). A
    // frame the fast path classified (`fast`) has its length in FAST_PARSED
    // already, a map read instead of a helper call.
    let len = match fast::parsed_len().filter(|_| fast) {
        Some(len) => len,
        None => buff_len(&ctx),
    };
    if replay.is_none() && replaying(decision) && take_replayed_tag(ctx.ctx, len as u32) {
        // Counted when it was replayed; a FORWARD's ForwardMeta is still in
        // the skb's metadata for `migr_tc`.
        count_reason(Reason::ReplayReentered);
        return xdp_action::XDP_PASS;
    }
    count_proto(decision);
    count_reasons(decision.reasons.0);
    if STOP == stop::COUNTED {
        return xdp_action::XDP_PASS;
    }

    let frame = LiveFrame { len };
    let (action, why) = final_action(decision, replay, &frame);
    if STOP == stop::DECIDED {
        return xdp_action::XDP_PASS;
    }
    if replay.is_some() {
        count_reason(Reason::Replayed);
    } else if let Some(why) = why {
        count_reason(why);
    }
    // `None`: a hand-over to `migr_tc`, which counts the verdict once the
    // frame has left.
    let (verdict, xdp) = match action {
        Action::Pass => {
            if replay.is_some() {
                tag_replayed(ctx.ctx);
            }
            (Some(Verdict::Pass), xdp_action::XDP_PASS)
        }
        Action::Drop => (Some(Verdict::Drop), xdp_action::XDP_DROP),
        Action::Park => park_outcome(&ctx, decision.service_id, len as u32),
        Action::Forward => match (&decision.service, &decision.packet) {
            (Some(service), Some(info)) => {
                let headers = Headers::of(info);
                let id = decision.service_id;
                let sent = forward(ctx.ctx, id, &service.forward, &headers, replay.is_some());
                forward_outcome(&ctx, id, sent)
            }
            _ => forward_outcome(&ctx, decision.service_id, Err(Reason::ForwardUnsupported)),
        },
    };
    if decision.report != Report::None {
        report(decision);
    }
    count_and_log(&ctx, decision.service_id, verdict, len);
    xdp
}

/// Counts and logs a frame's verdict; None: `migr_tc` counts it.
#[inline(always)]
fn count_and_log(ctx: &XdpContext, service_id: u32, verdict: Option<Verdict>, len: u64) {
    if let Some(verdict) = verdict {
        count_verdict(service_id, verdict, len);
        log::verdict(ctx, service_id, verdict, len);
    }
}

/// The frame being classified, for [`final_action`]'s questions.
struct LiveFrame {
    /// The whole frame's length (`bpf_xdp_get_buff_len`).
    len: u64,
}

impl FrameContext for LiveFrame {
    #[inline(always)]
    fn now_ns(&self) -> u64 {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() }
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len as usize
    }
    #[inline(always)]
    fn ring_backlog(&self) -> bool {
        PARKED.query(BPF_RB_AVAIL_DATA) != 0
    }
}

/// Runs `migr_common::classify`'s two stages as separate BPF functions, so
/// that each has the stack to itself. False: a breakdown copy stops here.
#[inline(always)]
fn classify_into<const STOP: u32>(ctx: &XdpContext, out: &mut Classification) -> bool {
    *out = Classification::EMPTY;
    // SAFETY: `out` is this CPU's scratch slot.
    unsafe {
        let more = migr_parse(ctx.ctx, out) != 0;
        if STOP == stop::PARSED {
            return false;
        }
        if more {
            migr_lookup(ctx.ctx, out);
        }
    }
    STOP != stop::CLASSIFIED
}

// The stages are BPF *global* functions (exported, `extern "C"`): the verifier
// checks each of them once, on its own, instead of re-walking every path
// through the parser for every path of its caller. That keeps the program
// far below the verifier's complexity limit. A global function may take the
// context and pointers to sized memory (here: the per-CPU scratch slot).

/// Stage 1 (`migr_common::classify::parse_stage`); returns 1 to go on.
#[unsafe(no_mangle)]
#[inline(never)]
/// # Safety
/// `out` must be null or point to a writable `Classification`.
pub unsafe extern "C" fn migr_parse(ctx: *mut xdp_md, out: *mut Classification) -> u32 {
    // SAFETY: `out` is the caller's scratch slot (sized by BTF for the
    // verifier, which also insists on the null check).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return 0;
    };
    u32::from(parse_stage(&XdpPacket::cached(ctx), out))
}

/// Stage 2 (`migr_common::classify::lookup_stage`).
#[unsafe(no_mangle)]
#[inline(never)]
/// # Safety
/// As for [`migr_parse`].
pub unsafe extern "C" fn migr_lookup(ctx: *mut xdp_md, out: *mut Classification) -> u32 {
    // SAFETY: as above.
    let Some(out) = (unsafe { out.as_mut() }) else {
        return 0;
    };
    lookup_stage(&XdpPacket::cached(ctx), &MapTables, out);
    0
}

/// Does the frame carry the agent's replay tag ([`ReplayMeta`]) as XDP
/// metadata? Inlined: every frame asks, and a BPF call costs more than the
/// few loads it does.
#[inline(always)]
fn carries_replay_meta(ctx: *mut xdp_md) -> bool {
    let (meta, data) = meta_and_data(ctx);
    if meta + size_of::<ReplayMeta>() > data {
        return false;
    }
    // SAFETY: the check above proves the metadata holds a whole ReplayMeta
    // (metadata is 4-byte aligned by the kernel).
    unsafe { (meta as *const ReplayMeta).read() }.is_replay()
}

/// [`carries_replay_meta`], and if so the tag is stripped: it must not leave
/// with the frame (a veth hands metadata on to the peer's XDP program, which
/// could be migr). The kernel restores a changed context before the batch's
/// next run.
#[inline(always)]
fn is_replay_batch(ctx: *mut xdp_md) -> bool {
    if !carries_replay_meta(ctx) {
        return false;
    }
    // SAFETY: plain helper call; a positive delta shrinks the metadata.
    unsafe { bpf_xdp_adjust_meta(ctx, size_of::<ReplayMeta>() as i32) };
    true
}

/// Grows the metadata by a [`ReplayedTag`] for this frame (see there). If the
/// driver keeps no metadata the frame leaves untagged: in skb mode it then
/// meets the program again as a fresh frame.
#[inline(never)]
fn tag_replayed(ctx: *mut xdp_md) {
    const TAG: i32 = size_of::<ReplayedTag>() as i32;
    // SAFETY: plain helper calls on the program's own context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx) } as u32;
    if unsafe { bpf_xdp_adjust_meta(ctx, -TAG) } != 0 {
        return;
    }
    let (meta, data) = meta_and_data(ctx);
    if meta + size_of::<ReplayedTag>() > data {
        return;
    }
    // SAFETY: the check above proves the metadata holds a whole tag.
    unsafe { (meta as *mut ReplayedTag).write(ReplayedTag::new(len)) };
}

/// Can the frame's service have replays under way? The agent replays only
/// while the service parks (the batches) or holds (settling), and a replayed
/// frame's second sight comes at once, within the replay call; in every other
/// state the look for a tag (three helper calls) is skipped. Those states are
/// the ones without a settled action (`classify::settled_action`), as in the
/// fast path's `claim`.
#[inline(always)]
fn replaying(decision: &Classification) -> bool {
    settled_action(decision.service.as_ref()).is_none()
}

/// Is this frame the skb-mode second sight of a frame the agent replayed (a
/// [`ReplayedTag`] right in front of it, where skb mode shows no metadata)?
/// Clears the tag it finds and leaves the metadata as it was.
#[inline(never)]
fn take_replayed_tag(ctx: *mut xdp_md, len: u32) -> bool {
    const TAG: i32 = size_of::<ReplayedTag>() as i32;
    // Only where the frame has no metadata is the grown metadata the tag's place.
    let (meta, data) = meta_and_data(ctx);
    if meta != data {
        return false;
    }
    // SAFETY: plain helper calls on the program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx, -TAG) } != 0 {
        return false;
    }
    let (meta, data) = meta_and_data(ctx);
    let mut found = false;
    if meta + size_of::<ReplayedTag>() <= data {
        let at = meta as *mut ReplayedTag;
        // SAFETY: the check above proves the 8 bytes lie in the headroom the
        // helper granted; metadata is 4-byte aligned.
        found = unsafe { at.read() }.marks(len);
        if found {
            unsafe { at.write(ReplayedTag::default()) };
        }
    }
    // SAFETY: as above; a positive delta shrinks the metadata back.
    unsafe { bpf_xdp_adjust_meta(ctx, TAG) };
    found
}

/// The context's `data_meta` and `data`, read so that the verifier keeps their
/// packet-pointer types (volatile loads; see `XdpPacket::from_raw`).
#[inline(always)]
fn meta_and_data(ctx: *mut xdp_md) -> (usize, usize) {
    // SAFETY: `ctx` is the program's context.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data_meta)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data)) as usize,
        )
    }
}

/// Makes the frame the bytes of the batch's next [`ReplaySlot`]; returns the
/// slot's action, or None if there is no valid slot (the frame is dropped).
#[inline(never)]
fn take_replay_slot(ctx: *mut xdp_md) -> Option<Action> {
    let next = REPLAY_NEXT.get_ptr_mut(0)?;
    // SAFETY: the agent runs one replay call at a time, on one CPU, so this
    // read-modify-write of the shared counter does not race.
    let index = unsafe { *next };
    unsafe { *next = index.wrapping_add(1) };
    let slot = REPLAY_SLOTS.get(index)?;
    let action = slot.replay_action()?;
    let len = slot.len;
    // The store length must be provably in [1, REPLAY_FRAME_MAX]: clamp len-1,
    // and compare with len only afterwards (an earlier range check lets LLVM
    // drop the clamp, and the verifier then refuses the store).
    let mut last = len.wrapping_sub(1);
    if last > REPLAY_FRAME_MAX as u32 - 1 {
        last = REPLAY_FRAME_MAX as u32 - 1;
    }
    let copy = last + 1;
    // SAFETY: plain helper calls on the program's own context.
    let current = unsafe { bpf_xdp_get_buff_len(ctx) } as i64;
    if unsafe { bpf_xdp_adjust_tail(ctx, (i64::from(copy) - current) as i32) } != 0 {
        return None;
    }
    // SAFETY: `slot.data` is map memory of REPLAY_FRAME_MAX bytes; the frame
    // is `copy` bytes long now.
    let rc = unsafe { bpf_xdp_store_bytes(ctx, 0, slot.data.as_ptr() as *mut _, copy) };
    if copy != len {
        return None;
    }
    (rc == 0).then_some(action)
}

/// Passes everything. Attached to veth peers so that XDP_REDIRECT into them
/// delivers, and the baseline of the benchmarks.
#[xdp(frags)]
pub fn migr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn buff_len(ctx: &XdpContext) -> u64 {
    // SAFETY: plain helper call on the program's own context.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) }
}

/// [`park`]s the frame of `service_id` (`len` bytes): its verdict and XDP
/// action (a frame that could not be parked is counted, logged and dropped).
#[inline(always)]
fn park_outcome(ctx: &XdpContext, service_id: u32, len: u32) -> (Option<Verdict>, u32) {
    match park(ctx.ctx, service_id, len as usize) {
        Ok(()) => (Some(Verdict::Park), xdp_action::XDP_DROP),
        Err(reason) => {
            count_reason(reason);
            log::failed(ctx, service_id, Verdict::ParkFailed, reason);
            (Some(Verdict::ParkFailed), xdp_action::XDP_DROP)
        }
    }
}

/// Copies the frame into the `PARKED` ring; the caller drops the original.
/// Not inlined: its stack frame then overlaps with the other actions'.
#[inline(never)]
fn park(ctx: *mut xdp_md, service_id: u32, len: usize) -> Result<(), Reason> {
    let ctx = &XdpContext::new(ctx);
    if len <= PARK_SMALL_MAX {
        park_into::<PARK_SMALL_MAX>(ctx, service_id, len)
    } else if len <= PARK_LARGE_MAX {
        park_into::<PARK_LARGE_MAX>(ctx, service_id, len)
    } else {
        Err(Reason::Oversize)
    }
}

#[inline(always)]
fn park_into<const N: usize>(ctx: &XdpContext, service_id: u32, len: usize) -> Result<(), Reason> {
    let Some(mut entry) = PARKED.reserve::<ParkedRecord<N>>(0) else {
        return Err(Reason::ParkOverflow);
    };
    // The copy length must be provably in [1, N] for the verifier: clamp len-1.
    let mut last = (len as u32).wrapping_sub(1);
    if last > N as u32 - 1 {
        last = N as u32 - 1;
    }
    let copy = last + 1;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved ring slot of size_of::<ParkedRecord<N>>(),
    // and `copy` <= N bytes fit its data array.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            0,
            core::ptr::addr_of_mut!((*record).data).cast(),
            copy,
        )
    };
    if rc != 0 || copy as usize != len {
        entry.discard(0);
        return Err(Reason::Oversize);
    }
    // SAFETY: as above; the header is plain data.
    unsafe {
        core::ptr::addr_of_mut!((*record).header).write(ParkedHeader {
            service_id,
            ifindex: ctx.ingress_ifindex() as u32,
            frame_len: len as u32,
            copied: copy,
            timestamp_ns: bpf_ktime_get_ns(),
        });
    }
    entry.submit(0);
    Ok(())
}

/// How [`forward`] sent a frame on.
enum Forwarded {
    /// Rewritten here; the XDP action (XDP_TX or XDP_REDIRECT) sends it.
    Sent(u32),
    /// Passed with a [`ForwardMeta`] for `migr_tc` ([`ForwardPath::Tc`]).
    ViaTc,
}

/// The verdict (None: a hand-over to `migr_tc`, which counts the verdict
/// once the frame has left) and the XDP action of a frame [`forward`] `sent`
/// (or failed to send: counted, logged and dropped).
#[inline(always)]
fn forward_outcome(
    ctx: &XdpContext,
    service_id: u32,
    sent: Result<Forwarded, Reason>,
) -> (Option<Verdict>, u32) {
    match sent {
        Ok(Forwarded::Sent(action)) => (Some(Verdict::Forward), action),
        Ok(Forwarded::ViaTc) => {
            count_reason(Reason::ForwardViaTc);
            (None, xdp_action::XDP_PASS)
        }
        Err(reason) => {
            count_reason(reason);
            log::failed(ctx, service_id, Verdict::ForwardFailed, reason);
            (Some(Verdict::ForwardFailed), xdp_action::XDP_DROP)
        }
    }
}

/// [`forward_now`] as a BPF function of its own, so that its stack does not
/// add to `finish`'s.
#[inline(never)]
fn forward(
    ctx: *mut xdp_md,
    service_id: u32,
    target: &ForwardTarget,
    headers: &Headers,
    replayed: bool,
) -> Result<Forwarded, Reason> {
    forward_now(ctx, service_id, target, headers, replayed)
}

/// Rewrites the frame toward `target`, the new place of service
/// `service_id`, and returns the XDP action, or hands it to the TC program.
/// Inlined where it is called: in the fast path's `claim`, for a frame of a
/// service that forwards every fresh frame, and in [`forward`].
#[inline(always)]
fn forward_now(
    ctx: *mut xdp_md,
    service_id: u32,
    target: &ForwardTarget,
    headers: &Headers,
    replayed: bool,
) -> Result<Forwarded, Reason> {
    let ctx = &XdpContext::new(ctx);
    if ForwardPath::from_u8(target.path) == Some(ForwardPath::Tc) {
        return hand_to_tc(ctx.ctx, service_id, headers, replayed).map(|()| Forwarded::ViaTc);
    }
    // Read and written in place: the rewrite's few reads at known offsets
    // cost a helper call each through `XdpPacket`. Its stores were direct
    // already, so the headers had to be in the linear part before too.
    let mut frame = InPlace::new(ctx.ctx);
    let rewritten = match ForwardMode::from_u8(target.mode) {
        Some(ForwardMode::AddressChanging) => rewrite_destination(&mut frame, headers, target),
        Some(ForwardMode::SameIp) => Ok(()),
        None => Err(RewriteError::NotTransport),
    };
    match rewritten {
        Ok(()) => {}
        Err(RewriteError::OutOfFrame) => return Err(Reason::ChecksumUnreachable),
        Err(_) => return Err(Reason::ForwardUnsupported),
    }
    if rewrite_macs(&mut frame, target.dst_mac, target.src_mac).is_err() {
        return Err(Reason::Malformed);
    }
    if target.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(Forwarded::Sent(xdp_action::XDP_TX));
    }
    FORWARD_DEVICES
        .redirect(service_id, 0)
        .map(Forwarded::Sent)
        .map_err(|_| Reason::NoRedirectTarget)
}

/// Puts a [`ForwardMeta`] in front of the frame for `migr_tc`, and behind it
/// a [`ReplayedTag`] if the frame is `replayed`. On a replay run it takes the
/// place of the stripped `ReplayMeta` (and more): safe because every run of a
/// replay call has its own page (batch = repeat).
#[inline(always)]
fn hand_to_tc(
    ctx: *mut xdp_md,
    service_id: u32,
    headers: &Headers,
    replayed: bool,
) -> Result<(), Reason> {
    if replayed {
        tag_replayed(ctx);
    }
    let size = size_of::<ForwardMeta>() as i32;
    // SAFETY: plain helper call; a negative delta grows the metadata.
    if unsafe { bpf_xdp_adjust_meta(ctx, -size) } != 0 {
        return Err(Reason::NoRedirectTarget);
    }
    let (meta, data) = meta_and_data(ctx);
    if meta + size_of::<ForwardMeta>() > data {
        return Err(Reason::NoRedirectTarget);
    }
    let family = match headers.family {
        IpFamily::V4 => FAMILY_V4,
        IpFamily::V6 => FAMILY_V6,
    };
    let forward_meta = ForwardMeta {
        magic: FORWARD_META_MAGIC,
        service_id,
        l3_offset: headers.l3_offset,
        l4_offset: headers.l4_offset,
        family,
        ip_proto: headers.ip_proto,
        _pad: [0; 2],
    };
    // SAFETY: the check above proves the metadata holds a whole ForwardMeta.
    unsafe { (meta as *mut ForwardMeta).write(forward_meta) };
    leave_handover(ctx, &forward_meta);
    Ok(())
}

/// Records the hand-over in this CPU's [`TcHandover`] slot too (skb mode).
#[inline(never)]
fn leave_handover(ctx: *mut xdp_md, meta: &ForwardMeta) {
    let Some(slot) = TC_HANDOVERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else uses it during this run.
    let slot = unsafe { &mut *slot };
    slot.len = 0;
    slot.meta = *meta;
    // SAFETY: plain helper calls on the program's own context; the copy
    // goes to the slot's array of exactly that many bytes.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx,
            u32::from(meta.l4_offset),
            slot.l4_head.as_mut_ptr().cast(),
            TC_HANDOVER_L4_BYTES as u32,
        )
    };
    if rc == 0 {
        slot.len = unsafe { bpf_xdp_get_buff_len(ctx) } as u32;
    }
}

/// Sends reports to user space, within the per-CPU event budget.
#[inline(never)]
fn report(decision: &Classification) {
    let (kind, sender_key, receiver_key, token) = match decision.report {
        Report::None => return,
        Report::MptcpKeys {
            sender_key,
            receiver_key,
        } => (EventKind::MptcpKeys, sender_key, receiver_key, 0),
        Report::LearnFlow { token } => {
            // Only MP_JOINs whose token the agent installed get here, and FLOWS is an LRU;
            // a token learns a bounded number of subflows.
            if !take_join(token) {
                count_reason(Reason::JoinLimit);
                return;
            }
            // Before the flow exists, so that no lookup skips it.
            if let Some(mark) = FLOW_PORTS.get_ptr_mut(u32::from(decision.flow.dst_port)) {
                // SAFETY: a value of this map; a plain store of a word, to 1 only.
                unsafe { *mark = 1 };
            }
            // Borrowed on purpose: the key stays in scratch memory, not on the stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            if FLOWS
                .insert(&decision.flow, &decision.service_id, 0)
                .is_ok()
            {
                count_reason(Reason::FlowsLearned);
            }
            (EventKind::FlowLearned, 0, 0, token)
        }
        Report::UnknownJoin { token } => (EventKind::UnknownJoin, 0, 0, token),
    };
    if !take_event_budget(kind) {
        count_reason(Reason::EventsRateLimited);
        return;
    }
    let event = Event {
        kind: kind as u32,
        service_id: decision.service_id,
        flow: decision.flow,
        sender_key,
        receiver_key,
        token,
        _pad: 0,
    };
    match EVENTS.output::<Event>(&event, 0) {
        Ok(()) => {
            if kind == EventKind::MptcpKeys {
                count_reason(Reason::MptcpKeysReported);
            }
        }
        Err(_) => count_reason(Reason::EventsDropped),
    }
}

#[inline(always)]
fn take_event_budget(kind: EventKind) -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, only this CPU touches it.
    let budget = unsafe { &mut *budget };
    budget.take(unsafe { bpf_ktime_get_ns() }, kind)
}

/// Counts one more subflow learned for `token`; false once it has had
/// [`MAX_JOINS_PER_TOKEN`]. The count is not atomic: joins of one token on
/// several CPUs at once may each pass, so the bound holds to within the
/// number of CPUs, which is all it needs (FLOWS is far larger).
#[inline(always)]
fn take_join(token: u32) -> bool {
    let key = on_stack(&token);
    match JOINS_LEARNED.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: a value of this map, valid while the program runs.
            let count = unsafe { &mut *count };
            if *count >= MAX_JOINS_PER_TOKEN {
                return false;
            }
            *count += 1;
            true
        }
        None => JOINS_LEARNED.insert(key, 1, 0).is_ok(),
    }
}

#[inline(always)]
fn count_proto(decision: &Classification) {
    count_proto_class(decision.proto_class());
}

#[inline(always)]
fn count_proto_class(class: ProtoClass) {
    if let Some(counter) = PROTO_COUNTERS.get_ptr_mut(class as u32) {
        // SAFETY: per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn count_reason(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn count_reasons(mut bits: u32) {
    let mut i = 0;
    while i < Reason::COUNT && bits != 0 {
        if bits & 1 != 0
            && let Some(counter) = REASONS.get_ptr_mut(i)
        {
            // SAFETY: per-CPU slot.
            unsafe { *counter += 1 };
        }
        bits >>= 1;
        i += 1;
    }
}

#[inline(always)]
fn count_verdict(service_id: u32, verdict: Verdict, bytes: u64) {
    count_verdicts(service_id, verdict, 1, bytes);
}

/// `packets` frames (a GRO-merged skb's segments) of `bytes` in all.
#[inline(always)]
fn count_verdicts(service_id: u32, verdict: Verdict, packets: u32, bytes: u64) {
    if let Some(counters) = SERVICE_COUNTERS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        let counters = unsafe { &mut *counters };
        // Through the stack: LLVM would drop the range check (a Verdict is
        // always in range) and the verifier, which cannot know that, refuse
        // the index.
        let v = on_stack(&(verdict as u32)) as usize;
        if v < Verdict::COUNT {
            counters.packets[v] += u64::from(packets);
            counters.bytes[v] += bytes;
        }
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
