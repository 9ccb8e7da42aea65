//! The fast path: `migr`'s own code. For a frame with plain headers
//! (Ethernet without a tag, IPv4 without options or IPv6 without extension
//! headers, then UDP, TCP with options in a shape [`known_options`] reads
//! (none; the timestamps alone; a Linux SYN's; either followed by one MPTCP
//! option), or another protocol), all in the frame's linear part, the
//! headers are read
//! in place, with direct packet access through `network-types`' header
//! layouts:
//!
//! - a frame no table can claim (the common case on an edge node) is counted
//!   and passed at once, with no BPF call (the fast path is inlined into the
//!   program: on the bench machine two calls cost 16 ns, docs/benchmarks.md);
//! - a frame of a service that passes every frame (no migration under way)
//!   is decided in [`claim`], with the lookup stage's own functions
//!   (`listener_service`, `mptcp_stage`) on the headers read in place;
//! - another frame a listener or a learned flow may claim is classified
//!   here, by `migr_common::classify::lookup_stage` on the headers parsed in
//!   place (its QUIC header and MPTCP option read in place too,
//!   `in_place.rs`), without the header copy and the parse stage.
//!
//! Everything else goes to the full classifier, `migr_full` (main.rs), by a
//! tail call: VLAN tags, IP options, extension headers, TCP options of
//! other shapes, IP packets that go on into XDP fragments. What the fast path decides, it decides exactly
//! as `migr_common::classify` would, with the same counters (but one crafted
//! frame, see [`fast_path`]); the datapath corpus and storm tests compare
//! both on every frame.

use core::cell::Cell;

use aya_ebpf::{
    bindings::xdp_md, helpers::generated::bpf_xdp_get_buff_len, macros::map, maps::PerCpuArray,
    programs::XdpContext,
};
use migr_common::{
    classify::{
        Classification, Reasons, Report, Tables, always_passes, family_tag, listener_service,
        lookup_stage, mptcp_stage, reset_parsed,
    },
    maps::{
        FlowKey, LISTENERS_ONLY, ListenerEntry, ListenerKey, NO_SERVICE, ProtoClass, Reason,
        ServiceEntry, Verdict,
    },
    wire::{
        packet::{IpFamily, L4Info, PacketInfo, TcpInfo},
        tcp::{OptionRef, TCPOPT_EOL, TCPOPT_MPTCP, TCPOPT_NOP},
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    FLOW_PORTS, FLOWS, LISTENER_SLOTS, LISTENERS, MapTables, PORT_LISTENERS, SERVICES,
    breakdown::stop, count_proto_class, count_reason, count_reasons, count_verdict,
    in_place::InPlace, log,
};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv4 flags and fragment offset: MF and the offset mark a fragment.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// Reads a field of a header that [`header`] returned.
macro_rules! field {
    ($header:expr, $field:ident) => {
        // SAFETY: `header` proved the whole header is in the frame; the read
        // is unaligned, like the frame's fields.
        unsafe { core::ptr::addr_of!((*$header).$field).read_unaligned() }
    };
}

/// What [`fast_path`] did with the frame.
pub enum Fast {
    /// Counted; the caller passes it.
    Passed,
    /// Parsed into [`FAST_PARSED`]; the lookup stage is next ([`migr_lookup_known`]).
    Lookup,
    /// Needs the full classifier.
    Slow,
}

/// What [`quick_parse`] found.
enum Quick {
    /// No service can own the frame: pass it, counted under this class (and
    /// reason, for a frame that is not IP or does not parse).
    Pass(ProtoClass, Option<Reason>),
    /// UDP, or TCP with options [`known_options`] reads, whose headers are
    /// all there and consistent.
    Plain(Plain),
    Slow,
}

/// What [`quick_parse`] learnt of a plain UDP or TCP frame: enough to decide
/// whether a table may claim it; [`packet_info`] reads the rest if one may.
#[derive(Clone, Copy)]
struct Plain {
    family: IpFamily,
    proto: u8,
    /// TCP's header length: 20, 32 with [`TIMESTAMPS_ONLY`] options, or
    /// another length [`known_options`] reads.
    tcp_header_len: u8,
    /// TCP's flags (byte 13 of its header).
    tcp_flags: u8,
    /// TCP's MPTCP option ([`known_options`]): its offset and length, length
    /// 0 for none. Not an `Option`: copied, a `None`'s undefined payload
    /// let LLVM store whatever register it liked, a packet pointer once,
    /// which the verifier refused.
    mptcp_offset: u16,
    mptcp_len: u8,
    /// Bytes from the transport header to the end of the IP packet.
    l4_len: u16,
    dst_port: u16,
}

impl Plain {
    #[inline(always)]
    fn mptcp(&self) -> Option<OptionRef> {
        (self.mptcp_len != 0).then_some(OptionRef {
            offset: self.mptcp_offset,
            len: self.mptcp_len,
        })
    }
}

/// The options of nearly every TCP segment of an established connection
/// with timestamps on (Linux, BSD, macOS): NOP, NOP, then the timestamps
/// option (kind 8, 10 bytes). The full parser's option walk finds them valid
/// and holding no MPTCP option, so such a frame is as plain as one without
/// options. Its first four bytes; eight bytes of timestamps follow.
const TIMESTAMPS_ONLY: [u8; 4] = [1, 1, 8, 10];
/// A TCP header with [`TIMESTAMPS_ONLY`] options.
const TCP_TIMESTAMPS_LEN: usize = TcpHdr::LEN + 12;

/// A frame [`fast_path`] parsed, for [`migr_lookup_known`].
pub struct FastParsed {
    plain: Plain,
    /// The frame's length: its linear part's (see [`fast_path`]).
    len: u32,
    /// The frame's listener entry; service id [`NO_SERVICE`]: none.
    listener: ListenerEntry,
    /// The service of the frame's learned flow; [`NO_SERVICE`]: none.
    flow: u32,
    /// The `SERVER_IDS` lookup [`claim`] made (the server id, its owner), so
    /// that the lookup stage does not make it again.
    server_id: Option<(u32, Option<u32>)>,
    /// The service and reasons (bits) of a frame [`claim`] found passing
    /// ([`Claim::Passes`]): in the slot, as the call returns one register.
    passes: (u32, u32),
    /// [`claim`]'s keys, built here rather than on its stack: with them on
    /// the stack, its frame took 464 bytes, and Linux 6.1 adds `migr`'s.
    listener_key: ListenerKey,
    flow_key: FlowKey,
}

/// Per-CPU scratch: [`fast_path`] and [`migr_lookup_known`] run one after the
/// other in one run of the program.
#[map]
static FAST_PARSED: PerCpuArray<FastParsed> = PerCpuArray::with_max_entries(1, 0);

/// Decides or parses the frame if it can (see the module). Inlined into the
/// program: a BPF call costs several ns, on every frame.
///
/// `STOP` is the stage a cost-breakdown copy stops after (`breakdown.rs`);
/// such a copy passes the frame uncounted.
///
/// The frame's length is its linear part's, `data_end - data` (a subtraction
/// of two packet pointers, which the verifier allows a privileged loader), not
/// `bpf_xdp_get_buff_len`'s: that helper call was 9-10 of the 16 ns a
/// pass-through cost. Of a multi-buffer frame (XDP fragments) only a linear
/// part is seen, so the fast path decides an IP frame only if its whole IP
/// packet lies in the linear part, and asks the helper for a non-IP frame's
/// length. The one frame it counts short: an IP packet in the linear part
/// followed by more than a buffer's worth of bytes that are not IP, in
/// fragments (only a crafted frame: a NIC pads frames under 60 bytes only,
/// within the first buffer).
#[inline(always)]
pub fn fast_path<const STOP: u32>(ctx: *mut xdp_md) -> Fast {
    let (start, end) = data(ctx);
    // Opaque to LLVM, so that the checks against it stay arithmetic on a
    // scalar, not on `data_end` (which the verifier refuses).
    let frame_len = core::hint::black_box(end - start);
    let mut len = frame_len as u64;
    let quick = quick_parse(start, end, frame_len);
    if STOP == stop::HEADERS {
        return Fast::Passed;
    }
    // A frame passed here is counted under its class, the reason `quick_parse`
    // gave it, and the service and reasons `claim` found (if it decided it).
    let mut decided = None;
    let (class, reason) = match quick {
        Quick::Pass(ProtoClass::NonIp, reason) => {
            // SAFETY: plain helper call on the program's context.
            len = unsafe { bpf_xdp_get_buff_len(ctx) };
            (ProtoClass::NonIp, reason)
        }
        Quick::Pass(class, reason) => (class, reason),
        Quick::Plain(plain) => {
            let flows = flow_port(plain.dst_port);
            let listener = port_listener(plain.dst_port, plain.proto);
            if STOP == stop::WORDS {
                return Fast::Passed;
            }
            // An MPTCP option can name a service by token, or be malformed.
            if listener != 0 || flows || plain.mptcp_len != 0 {
                match claim::<STOP>(ctx, &plain, len as u32, listener, flows) {
                    Claim::Unclaimed => {}
                    Claim::Passes => decided = FAST_PARSED.get(0).map(|parsed| parsed.passes),
                    Claim::Lookup => return Fast::Lookup,
                    Claim::Slow => return Fast::Slow,
                    Claim::Stop => return Fast::Passed,
                }
            }
            (ProtoClass::from_ip_proto(plain.proto), None)
        }
        Quick::Slow => return Fast::Slow,
    };
    // A frame decided here is counted in the breakdown's counting stage.
    if STOP < stop::COUNTED {
        return Fast::Passed;
    }
    count_proto_class(class);
    if let Some(reason) = reason {
        count_reason(reason);
    }
    let Some((service_id, reasons)) = decided else {
        count_verdict(NO_SERVICE, Verdict::Pass, len);
        return Fast::Passed;
    };
    // As `finish` counts and logs a classified frame.
    count_reasons(reasons);
    count_verdict(service_id, Verdict::Pass, len);
    log::verdict(&XdpContext::new(ctx), service_id, Verdict::Pass, len);
    Fast::Passed
}

/// The length of the frame [`fast_path`] handed to [`migr_lookup_known`]
/// (`FAST_PARSED`): valid only in the run whose fast path returned
/// [`Fast::Lookup`].
#[inline(always)]
pub fn parsed_len() -> Option<u64> {
    FAST_PARSED.get(0).map(|parsed| u64::from(parsed.len))
}

/// What [`claim`] found.
enum Claim {
    /// No listener and no learned flow: the frame passes.
    Unclaimed,
    /// The frame's service passes every fresh frame (`classify::always_passes`):
    /// the frame passes, counted as [`FastParsed::passes`] says.
    Passes,
    /// Parsed into [`FAST_PARSED`], with its listener and its learned flow.
    Lookup,
    Slow,
    /// A cut-short copy stops (`breakdown.rs`).
    Stop,
}

/// Looks up the listener (if its port and protocol have one: `listener`, its
/// `PORT_LISTENERS` entry) and the learned flow (if one may have its
/// destination port: `flows`) of a plain frame. A BPF call of its own,
/// made only for such frames: inlined, its stack (the entries it copies out)
/// would add to the program's, which Linux 6.1 adds to `migr_lookup_known`'s
/// in their chain of at most 512 bytes. Each key is built in the scratch
/// slot with only the addresses its lookup needs.
///
/// The flow is looked up here, not in the lookup stage, so that a frame no
/// table claims on a node with learned flows still passes on the fast path.
/// So is the service, so that a frame of a service that passes every frame
/// (`classify::always_passes`: every service that is not migrating) passes
/// here too, without the classification: the lookup stage's
/// `listener_service` and `SERVICES` lookup, then the counters.
#[inline(never)]
fn claim<const STOP: u32>(
    ctx: *mut xdp_md,
    plain: &Plain,
    len: u32,
    listener: u32,
    flows: bool,
) -> Claim {
    let Some(parsed) = FAST_PARSED.get_ptr_mut(0) else {
        return Claim::Slow;
    };
    // SAFETY: this CPU's slot; nothing else uses it during this run.
    let parsed = unsafe { &mut *parsed };
    let (start, end) = data(ctx);
    let family = family_tag(plain.family);
    let slot = listener;
    let mut listener = None;
    if slot != 0 {
        let key = &mut parsed.listener_key;
        if copy_addr(start, end, plain.family, Addr::Dst, &mut key.addr).is_none() {
            return Claim::Slow;
        }
        key.port = plain.dst_port;
        key.proto = plain.proto;
        key.family = family;
        listener = slotted_listener(slot, &parsed.listener_key);
        if listener.is_none() {
            // Borrowed on purpose: the key stays in the scratch slot.
            #[allow(clippy::needless_borrows_for_generic_args)]
            // SAFETY: the value is copied out at once (see `MapTables`).
            let found = unsafe { LISTENERS.get(&parsed.listener_key) }.copied();
            listener = found;
        }
    }
    if STOP == stop::LISTENER {
        return Claim::Stop;
    }
    let l4 = match plain.family {
        IpFamily::V4 => IPV4_L4,
        IpFamily::V6 => IPV6_L4,
    };
    let mut flow = None;
    if flows {
        // UDP's and TCP's source ports sit alike, in the header's first two bytes.
        let Some(ports) = header::<UdpHdr>(start, end, l4) else {
            return Claim::Slow;
        };
        let key = &mut parsed.flow_key;
        if copy_addr(start, end, plain.family, Addr::Src, &mut key.src_addr).is_none()
            || copy_addr(start, end, plain.family, Addr::Dst, &mut key.dst_addr).is_none()
        {
            return Claim::Slow;
        }
        key.src_port = be16(field!(ports, src));
        key.dst_port = plain.dst_port;
        key.proto = plain.proto;
        key.family = family;
        key._pad = [0; 2];
        #[allow(clippy::needless_borrows_for_generic_args)]
        // SAFETY: as above.
        let found = unsafe { FLOWS.get(&parsed.flow_key) }.copied();
        flow = found;
    }
    // `lookup_stage`'s choice of the service: the flow's, else the listener's,
    // then an MPTCP option's part.
    let mut reasons = Reasons(0);
    let server_ids = Remembered::default();
    let frame = InPlace::with_len(ctx, Some(len as usize));
    let mut service_id = NO_SERVICE;
    if let Some(learned) = flow {
        service_id = learned;
    } else if let Some(listener) = listener {
        let mut l4_info = L4Info::Other;
        if plain.proto == IPPROTO_UDP {
            let Some(udp) = header::<UdpHdr>(start, end, l4) else {
                return Claim::Slow;
            };
            l4_info = L4Info::Udp {
                src_port: be16(field!(udp, src)),
                dst_port: plain.dst_port,
                payload_offset: (l4 + UdpHdr::LEN) as u16,
                payload_len: be16(field!(udp, len)) - UdpHdr::LEN as u16,
            };
        }
        service_id = listener_service(&frame, &server_ids, &listener, &l4_info, &mut reasons);
    } else if plain.mptcp_len == 0 {
        return Claim::Unclaimed;
    }
    if let Some(option) = plain.mptcp() {
        let mut report = Report::None;
        let capable_keys = mptcp_stage(
            &frame,
            &server_ids,
            option,
            plain.tcp_flags,
            &mut service_id,
            &mut report,
            &mut reasons,
        );
        // Something to report: `finish` reports it.
        if report != Report::None || capable_keys.is_some() {
            return lookup_next(parsed, plain, len, listener, flow, &server_ids);
        }
    }
    // The entry read in place, not copied out (its forward target is 40 bytes).
    let entry = if service_id == NO_SERVICE {
        None
    } else {
        SERVICES.get(service_id)
    };
    if always_passes(entry) {
        parsed.passes = (service_id, reasons.0);
        return Claim::Passes;
    }
    lookup_next(parsed, plain, len, listener, flow, &server_ids)
}

/// Leaves what [`claim`] found in `parsed` for [`migr_lookup_known`].
#[inline(always)]
fn lookup_next(
    parsed: &mut FastParsed,
    plain: &Plain,
    len: u32,
    listener: Option<ListenerEntry>,
    flow: Option<u32>,
    server_ids: &Remembered,
) -> Claim {
    parsed.plain = *plain;
    parsed.len = len;
    parsed.listener = listener.unwrap_or_default();
    parsed.flow = flow.unwrap_or(NO_SERVICE);
    parsed.server_id = server_ids.asked.get();
    Claim::Lookup
}

/// The tables, remembering the `SERVER_IDS` lookup made through them.
#[derive(Default)]
struct Remembered {
    asked: Cell<Option<(u32, Option<u32>)>>,
}

impl Tables for Remembered {
    #[inline(always)]
    fn listener(&self, key: &ListenerKey) -> Option<ListenerEntry> {
        MapTables.listener(key)
    }
    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<u32> {
        MapTables.flow(key)
    }
    #[inline(always)]
    fn server_id(&self, server_id: u32) -> Option<u32> {
        let owner = MapTables.server_id(server_id);
        self.asked.set(Some((server_id, owner)));
        owner
    }
    #[inline(always)]
    fn token(&self, token: u32) -> Option<u32> {
        MapTables.token(token)
    }
    #[inline(always)]
    fn service(&self, service_id: u32) -> Option<ServiceEntry> {
        MapTables.service(service_id)
    }
}

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
        server_id: parsed.server_id,
    };
    // Only a QUIC listener has the lookup read the frame (the QUIC header, a
    // dozen small reads), straight from the linear frame: the fast path took
    // only linear frames.
    let frame = InPlace::with_len(ctx, Some(parsed.len as usize));
    lookup_stage(&frame, &known, out);
    1
}

/// The tables, with the frame's listener, learned flow and server id looked
/// up already ([`claim`]).
struct Claimed {
    listener: Option<ListenerEntry>,
    flow: Option<u32>,
    server_id: Option<(u32, Option<u32>)>,
}

impl Tables for Claimed {
    // `lookup_stage` asks for the keys `claim` looked up.
    #[inline(always)]
    fn listener(&self, _key: &ListenerKey) -> Option<ListenerEntry> {
        self.listener
    }
    #[inline(always)]
    fn flow(&self, _key: &FlowKey) -> Option<u32> {
        self.flow
    }
    #[inline(always)]
    fn server_id(&self, server_id: u32) -> Option<u32> {
        match self.server_id {
            Some((asked, owner)) if asked == server_id => owner,
            _ => MapTables.server_id(server_id),
        }
    }
    #[inline(always)]
    fn token(&self, token: u32) -> Option<u32> {
        MapTables.token(token)
    }
    #[inline(always)]
    fn service(&self, service_id: u32) -> Option<ServiceEntry> {
        MapTables.service(service_id)
    }
}

/// May a learned flow have destination `port` (`FLOW_PORTS`)?
#[inline(always)]
pub fn flow_port(port: u16) -> bool {
    FLOW_PORTS
        .get(u32::from(port))
        .is_none_or(|mark| *mark != 0)
}

/// The `PORT_LISTENERS` entry of a UDP or TCP port
/// ([`migr_common::maps::PORT_LISTENERS_LEN`]): 0 if no listener has it.
#[inline(always)]
fn port_listener(port: u16, proto: u8) -> u32 {
    let index = u32::from(port) * 2 + u32::from(proto == IPPROTO_UDP);
    PORT_LISTENERS
        .get(index)
        .map_or(LISTENERS_ONLY, |entry| *entry)
}

/// The entry in `LISTENER_SLOTS`' slot `slot` (a `PORT_LISTENERS` entry,
/// not 0) if its key is `key`: an array lookup and a compare instead of the
/// `LISTENERS` hash lookup. None: look `key` up in `LISTENERS`.
#[inline(always)]
fn slotted_listener(slot: u32, key: &ListenerKey) -> Option<ListenerEntry> {
    if slot == LISTENERS_ONLY {
        return None;
    }
    let found = LISTENER_SLOTS.get(slot)?;
    same_key(&found.key, key).then_some(found.entry)
}

/// `a == b`, as five 4-byte words (a derived `==`, byte by byte, may become
/// a call to `bcmp`, which BPF does not have).
#[inline(always)]
fn same_key(a: &ListenerKey, b: &ListenerKey) -> bool {
    const WORDS: usize = size_of::<ListenerKey>() / 4;
    let (a, b) = (
        core::ptr::from_ref(a).cast::<[u32; WORDS]>(),
        core::ptr::from_ref(b).cast::<[u32; WORDS]>(),
    );
    // SAFETY: both are whole keys; the reads are unaligned, like the keys.
    let (a, b) = unsafe { (a.read_unaligned(), b.read_unaligned()) };
    let mut differ = 0;
    for i in 0..WORDS {
        differ |= a[i] ^ b[i];
    }
    differ == 0
}

/// The context's `data` and `data_end`, read with volatile loads so that
/// they stay packet pointers for the verifier.
#[inline(always)]
fn data(ctx: *mut xdp_md) -> (usize, usize) {
    // SAFETY: `ctx` is the program's context.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data_end)) as usize,
        )
    }
}

/// A header of type `T` at `offset` (a constant), if the frame holds it all.
#[inline(always)]
fn header<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    // Opaque to LLVM, so that the check and the access use one register
    // (see `checked_pointer` in xdp_packet.rs).
    let at = core::hint::black_box(start + offset);
    if at + size_of::<T>() > end {
        return None;
    }
    Some(at as *const T)
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

const MALFORMED: Quick = Quick::Pass(ProtoClass::OtherIp, Some(Reason::Malformed));

/// `migr_common::wire::packet::parse_packet`'s checks for plain headers, with
/// its verdicts: a frame cut short or with an inconsistent length is
/// `Malformed` (class "other IP"), a fragment `Unsupported`, a non-IP
/// EtherType `NotIp`. Reads only what the checks need.
#[inline(always)]
fn quick_parse(start: usize, end: usize, len: usize) -> Quick {
    // A header not in the linear part: the frame may go on in fragments.
    let Some(eth) = header::<EthHdr>(start, end, 0) else {
        return Quick::Slow;
    };
    match u16::from_be(field!(eth, ether_type)) {
        ETHERTYPE_IPV4 => ipv4(start, end, len),
        ETHERTYPE_IPV6 => ipv6(start, end, len),
        // VLAN tags (802.1Q, 802.1ad, the old QinQ TPID) take the full parser.
        0x8100 | 0x88a8 | 0x9100 => Quick::Slow,
        _ => Quick::Pass(ProtoClass::NonIp, Some(Reason::NotIp)),
    }
}

const IPV4_L4: usize = EthHdr::LEN + Ipv4Hdr::LEN;
const IPV6_L4: usize = EthHdr::LEN + Ipv6Hdr::LEN;

#[inline(always)]
fn ipv4(start: usize, end: usize, len: usize) -> Quick {
    let Some(ip) = header::<Ipv4Hdr>(start, end, EthHdr::LEN) else {
        return Quick::Slow;
    };
    let vihl = field!(ip, vihl);
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return MALFORMED;
    }
    if vihl & 0x0f != 5 {
        return Quick::Slow; // options
    }
    let total = be16(field!(ip, tot_len)) as usize;
    if total < Ipv4Hdr::LEN {
        return MALFORMED;
    }
    if total > len - EthHdr::LEN {
        return Quick::Slow;
    }
    if be16(field!(ip, frags)) & IPV4_MF_AND_OFFSET != 0 {
        return Quick::Pass(ProtoClass::OtherIp, Some(Reason::Unsupported));
    }
    let l4_len = (total - Ipv4Hdr::LEN) as u16;
    transport(start, end, IpFamily::V4, field!(ip, proto), IPV4_L4, l4_len)
}

#[inline(always)]
fn ipv6(start: usize, end: usize, len: usize) -> Quick {
    let Some(ip) = header::<Ipv6Hdr>(start, end, EthHdr::LEN) else {
        return Quick::Slow;
    };
    if field!(ip, vcf)[0] >> 4 != 6 {
        return MALFORMED;
    }
    let payload = be16(field!(ip, payload_len));
    if payload as usize > len - IPV6_L4 {
        return Quick::Slow;
    }
    match field!(ip, next_hdr) {
        // Hop-by-Hop, Routing, Fragment, Destination Options: the full parser.
        0 | 43 | 44 | 60 => Quick::Slow,
        proto => transport(start, end, IpFamily::V6, proto, IPV6_L4, payload),
    }
}

/// Checks UDP, or TCP with options [`known_options`] reads, at `l4` (a
/// constant per family); the IP packet ends `l4_len` bytes later, inside the
/// frame.
#[inline(always)]
fn transport(
    start: usize,
    end: usize,
    family: IpFamily,
    proto: u8,
    l4: usize,
    l4_len: u16,
) -> Quick {
    let len = l4_len as usize;
    let mut tcp_header_len = 0;
    let mut tcp_flags = 0;
    let mut mptcp = None;
    let dst_port = match proto {
        IPPROTO_UDP => {
            if len < UdpHdr::LEN {
                return MALFORMED;
            }
            let Some(udp) = header::<UdpHdr>(start, end, l4) else {
                return MALFORMED;
            };
            let udp_len = be16(field!(udp, len)) as usize;
            if udp_len < UdpHdr::LEN || udp_len > len {
                return MALFORMED;
            }
            be16(field!(udp, dst))
        }
        IPPROTO_TCP => {
            if len < TcpHdr::LEN {
                return MALFORMED;
            }
            let Some(tcp) = header::<TcpHdr>(start, end, l4) else {
                return MALFORMED;
            };
            // The data offset: the high nibble of byte 12 (`TcpHdr`'s bitfield).
            let header_len = match field!(tcp, _bitfield_1).get(4, 4) {
                0..=4 => return MALFORMED,
                offset => offset as usize * 4,
            };
            if header_len > len {
                return Quick::Slow;
            }
            tcp_header_len = header_len;
            if header_len != TcpHdr::LEN {
                // Options: read here in the shapes most TCP has, else walked by the full parser.
                match known_options(start, end, l4, header_len) {
                    Some(option) => mptcp = option,
                    None => return Quick::Slow,
                }
            }
            tcp_flags = field!(tcp, _bitfield_1).get(8, 8) as u8;
            be16(field!(tcp, dest))
        }
        proto => return Quick::Pass(ProtoClass::from_ip_proto(proto), None),
    };
    Quick::Plain(Plain {
        family,
        proto,
        tcp_header_len: tcp_header_len as u8,
        tcp_flags,
        mptcp_offset: mptcp.map_or(0, |option: OptionRef| option.offset),
        mptcp_len: mptcp.map_or(0, |option: OptionRef| option.len),
        l4_len,
        dst_port,
    })
}

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
fn known_options(
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

/// An IP header's address.
#[derive(Clone, Copy)]
enum Addr {
    Src,
    Dst,
}

/// Copies an address of a frame [`quick_parse`] found plain into `to`, as
/// `ListenerKey` and `FlowKey` hold it (IPv4 in the first 4 bytes, then
/// zeros). Straight from the frame to its place: read into values first,
/// the 32 bytes of two addresses were 32 values, each spilled to the stack.
#[inline(always)]
fn copy_addr(
    start: usize,
    end: usize,
    family: IpFamily,
    which: Addr,
    to: &mut [u8; 16],
) -> Option<()> {
    // SAFETY (both arms): `header` proved the whole IP header, and with it
    // the address, is in the frame.
    match family {
        IpFamily::V4 => {
            let ip = header::<Ipv4Hdr>(start, end, EthHdr::LEN)?;
            // Byte by byte: a zeroing of the array is a call to `memset`.
            for byte in &mut to[4..] {
                // SAFETY: a byte of `to`.
                unsafe { core::ptr::write_volatile(byte, 0) };
            }
            let at = match which {
                Addr::Src => unsafe { &raw const (*ip).src_addr },
                Addr::Dst => unsafe { &raw const (*ip).dst_addr },
            };
            unsafe { core::ptr::copy_nonoverlapping(at.cast::<u8>(), to.as_mut_ptr(), 4) };
        }
        IpFamily::V6 => {
            let ip = header::<Ipv6Hdr>(start, end, EthHdr::LEN)?;
            let at = match which {
                Addr::Src => unsafe { &raw const (*ip).src_addr },
                Addr::Dst => unsafe { &raw const (*ip).dst_addr },
            };
            unsafe { core::ptr::copy_nonoverlapping(at.cast::<u8>(), to.as_mut_ptr(), 16) };
        }
    }
    Some(())
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
        let udp = header::<UdpHdr>(start, end, l4)?;
        L4Info::Udp {
            src_port: be16(field!(udp, src)),
            dst_port: plain.dst_port,
            payload_offset: (l4 + UdpHdr::LEN) as u16,
            payload_len: be16(field!(udp, len)) - UdpHdr::LEN as u16,
        }
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
