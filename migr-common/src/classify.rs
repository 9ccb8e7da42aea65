//! Which service a frame belongs to, and what to do with it.
//!
//! This is the datapath's decision, written once and generic over where the
//! tables live: the XDP program backs [`Tables`] with BPF maps, the host tests
//! with plain hash maps (`migr_testkit::host_tables`). The XDP program only
//! applies the returned [`Classification`] (park, rewrite, redirect, count).

use crate::{
    PacketBytes,
    maps::{
        Action, FAMILY_V4, FAMILY_V6, FlowKey, LISTENER_QUIC, LISTENER_QUIC_GREASE, ListenerEntry,
        ListenerKey, NO_SERVICE, ProtoClass, REPLAY_FRAME_MAX, Reason, SERVICE_ACTIVE,
        SERVICE_HOLD, SERVICE_MPTCP, ServiceEntry,
    },
    wire::{
        mptcp::{self, CapableKind, JoinKind, MptcpOption},
        packet::{self, IpFamily, L4Info, PacketInfo, ParseError},
        quic::{self, QuicHeader},
        tcp::OptionRef,
    },
};

/// Read access to the datapath's lookup tables.
pub trait Tables {
    /// A service's listening address (`LISTENERS`).
    fn listener(&self, key: &ListenerKey) -> Option<ListenerEntry>;
    /// A learned transport flow (`FLOWS`).
    fn flow(&self, key: &FlowKey) -> Option<u32>;
    /// QUIC server id → service (`SERVER_IDS`).
    fn server_id(&self, server_id: u32) -> Option<u32>;
    /// MPTCP token → service (`TOKENS`).
    fn token(&self, token: u32) -> Option<u32>;
    /// A service's state (`SERVICES`).
    fn service(&self, service_id: u32) -> Option<ServiceEntry>;
}

/// What the datapath should report to user space about this frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    None,
    /// MP_CAPABLE keys on a service's flow.
    MptcpKeys {
        sender_key: u64,
        receiver_key: u64,
    },
    /// An MP_JOIN SYN for a known token: learn its 5-tuple for the service.
    LearnFlow {
        token: u32,
    },
    /// An MP_JOIN SYN whose token is not installed (yet): a join can overtake
    /// the agent's learning of its connection's token, so the agent keeps these
    /// for a while and learns the subflow once the token is known.
    UnknownJoin {
        token: u32,
    },
}

/// Bit set of [`Reason`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reasons(pub u32);

impl Reasons {
    #[inline(always)]
    pub fn add(&mut self, reason: Reason) {
        self.0 |= 1 << reason as u32;
    }

    pub fn contains(&self, reason: Reason) -> bool {
        self.0 & (1 << reason as u32) != 0
    }
}

/// The outcome of [`classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    /// [`NO_SERVICE`] when the frame belongs to no service.
    pub service_id: u32,
    /// The service's action (always `Pass` for [`NO_SERVICE`]).
    pub action: Action,
    /// The service's entry, when there is one.
    pub service: Option<ServiceEntry>,
    pub reasons: Reasons,
    pub report: Report,
    /// The parsed headers, when L2-L4 parsed.
    pub packet: Option<PacketInfo>,
    /// The frame's 5-tuple (zero when it has none).
    pub flow: FlowKey,
}

impl Classification {
    /// A frame of no service, passed.
    pub const EMPTY: Self = Self {
        service_id: NO_SERVICE,
        action: Action::Pass,
        service: None,
        reasons: Reasons(0),
        report: Report::None,
        packet: None,
        flow: FlowKey {
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 0,
            dst_port: 0,
            proto: 0,
            family: 0,
            _pad: [0; 2],
        },
    };
}

impl Classification {
    /// The `PROTO_COUNTERS` class the frame is counted under.
    #[inline(always)]
    pub fn proto_class(&self) -> ProtoClass {
        match self.packet {
            Some(info) => ProtoClass::from_ip_proto(info.ip_proto),
            None if self.reasons.contains(Reason::NotIp) => ProtoClass::NonIp,
            None => ProtoClass::OtherIp,
        }
    }
}

/// The reasons [`classify`] itself sets (in [`Classification::reasons`]); the
/// datapath counts each of them once per frame that has it. (The others are
/// counted as the frame is handled: events, parking, forwarding, replays.)
pub const CLASSIFY_REASONS: [Reason; 7] = [
    Reason::NotIp,
    Reason::Malformed,
    Reason::Unsupported,
    Reason::QuicMalformed,
    Reason::QuicUnknownServerId,
    Reason::MptcpMalformed,
    Reason::MptcpUnknownToken,
];

/// A [`FlowKey`]'s family byte.
#[inline(always)]
pub fn family_tag(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => FAMILY_V4,
        IpFamily::V6 => FAMILY_V6,
    }
}

/// Decides which service `frame` belongs to and what to do with it.
///
/// The XDP program runs the two stages below as separate BPF functions,
/// writing into per-CPU scratch memory, to stay within the 512-byte stack.
#[inline(always)]
pub fn classify<F: PacketBytes + ?Sized, T: Tables>(frame: &F, tables: &T) -> Classification {
    let mut out = Classification::EMPTY;
    if parse_stage(frame, &mut out) {
        lookup_stage(frame, tables, &mut out);
    }
    out
}

/// Stage 1: parses L2-L4 into `out.packet` and `out.flow`. Returns whether
/// the frame can belong to a service (UDP or TCP); if not, `out` is final.
#[inline(always)]
pub fn parse_stage<F: PacketBytes + ?Sized>(frame: &F, out: &mut Classification) -> bool {
    let info = match packet::parse_packet(frame) {
        Ok(info) => info,
        Err(err) => {
            out.reasons.add(match err {
                ParseError::NotIp { .. } => Reason::NotIp,
                ParseError::Unsupported(_) => Reason::Unsupported,
                ParseError::Truncated | ParseError::Malformed(_) => Reason::Malformed,
            });
            return false;
        }
    };
    out.packet = Some(info);
    let (src_port, dst_port) = match &info.l4 {
        L4Info::Udp {
            src_port, dst_port, ..
        } => (*src_port, *dst_port),
        L4Info::Tcp(tcp) => (tcp.src_port, tcp.dst_port),
        L4Info::Other => return false,
    };
    out.flow = FlowKey {
        src_addr: info.src_addr,
        dst_addr: info.dst_addr,
        src_port,
        dst_port,
        proto: info.ip_proto,
        family: family_tag(info.family),
        _pad: [0; 2],
    };
    true
}

/// What [`parse_stage`] does once the headers parsed: `out.packet` and
/// `out.flow`, for the XDP program's fast path, which parses plain headers in
/// place. (`parse_stage` has the same lines inline: as a call, even an inlined
/// one, it took 16 more bytes of stack in the parse stage, and Linux 6.1 then
/// found the call chain over its 512 bytes.)
#[inline(always)]
pub fn set_parsed(info: &PacketInfo, out: &mut Classification) -> bool {
    out.packet = Some(*info);
    let (src_port, dst_port) = match &info.l4 {
        L4Info::Udp {
            src_port, dst_port, ..
        } => (*src_port, *dst_port),
        L4Info::Tcp(tcp) => (tcp.src_port, tcp.dst_port),
        L4Info::Other => return false,
    };
    out.flow = FlowKey {
        src_addr: info.src_addr,
        dst_addr: info.dst_addr,
        src_port,
        dst_port,
        proto: info.ip_proto,
        family: family_tag(info.family),
        _pad: [0; 2],
    };
    true
}

/// `*out = Classification::EMPTY` and then [`set_parsed`], written field by
/// field: the XDP program's fast path does this for every frame a table may
/// claim, and the whole-struct assignment is a 216-byte copy from read-only
/// data that `set_parsed` then overwrites for the most part.
#[inline(always)]
pub fn reset_parsed(info: &PacketInfo, out: &mut Classification) -> bool {
    out.service_id = NO_SERVICE;
    out.action = Action::Pass;
    out.service = None;
    out.reasons = Reasons(0);
    out.report = Report::None;
    if set_parsed(info, out) {
        return true;
    }
    out.flow = Classification::EMPTY.flow;
    false
}

/// Stage 2: finds the service (learned flow, listener, QUIC server id, MPTCP
/// token) and its action. Needs a successful [`parse_stage`].
#[inline(always)]
pub fn lookup_stage<F: PacketBytes + ?Sized, T: Tables>(
    frame: &F,
    tables: &T,
    out: &mut Classification,
) {
    let Some(info) = out.packet else {
        return;
    };
    let mut service_id = NO_SERVICE;
    if let Some(learned) = tables.flow(&out.flow) {
        service_id = learned;
    } else {
        let key = ListenerKey {
            addr: out.flow.dst_addr,
            port: out.flow.dst_port,
            proto: out.flow.proto,
            family: out.flow.family,
        };
        if let Some(listener) = tables.listener(&key) {
            service_id = listener_service(frame, tables, &listener, &info.l4, &mut out.reasons);
        }
    }

    // MPTCP: joins find their service by token; MP_CAPABLE keys are reported.
    let mut capable_keys = None;
    if let L4Info::Tcp(tcp) = &info.l4
        && let Some(opt) = tcp.mptcp
    {
        capable_keys = mptcp_stage(
            frame,
            tables,
            opt,
            tcp.flags,
            &mut service_id,
            &mut out.report,
            &mut out.reasons,
        );
    }

    out.service_id = service_id;
    if service_id == NO_SERVICE {
        return;
    }
    out.service = tables.service(service_id);
    if let Some(entry) = out.service
        && entry.flags & SERVICE_ACTIVE != 0
    {
        if let Some((sender_key, receiver_key)) = capable_keys
            && entry.flags & SERVICE_MPTCP != 0
        {
            out.report = Report::MptcpKeys {
                sender_key,
                receiver_key,
            };
        }
        out.action = classified_action(Some(&entry));
    }
}

/// The action `lookup_stage` gives a frame of a service with `entry` (None:
/// no service): the service's while it is active (PASS for a value no
/// [`Action`] has), else PASS.
#[inline(always)]
pub fn classified_action(entry: Option<&ServiceEntry>) -> Action {
    match entry {
        Some(entry) if entry.flags & SERVICE_ACTIVE != 0 => {
            Action::from_u32(entry.action).unwrap_or(Action::Pass)
        }
        _ => Action::Pass,
    }
}

/// What [`final_action`] may ask about the frame beyond its classification.
/// Each answer is a helper call in the kernel, so it is asked only when it
/// matters.
pub trait FrameContext {
    /// Now, in `bpf_ktime_get_ns` time.
    fn now_ns(&self) -> u64;
    /// The frame's full length.
    fn frame_len(&self) -> usize;
    /// Does the park ring hold records the agent has not consumed yet?
    fn ring_backlog(&self) -> bool;
}

/// The action a classified frame finally gets, and the reason to count when
/// it is not simply its service's action. `replay` is the action the agent
/// asked for if it is replaying the frame ([`crate::maps::ReplayMeta`]).
///
/// - A frame of no service, or of an inactive service: its classified action (PASS).
/// - A replayed frame: the action the agent asked for.
/// - A frame that would wait for the agent (its service parks, or holds with
///   a ring backlog) after the agent's lease ran out: fail open, PASS for a
///   parking service, the action without the hold for a held one
///   ([`Reason::LeaseExpired`]).
/// - A frame to park that a replay could never send ([`REPLAY_FRAME_MAX`]):
///   the service's action without parking, PASS for a parking service
///   ([`Reason::TooLargeToPark`]).
/// - A fresh frame of a held service whose action is PASS or FORWARD, while
///   the ring has a backlog: PARK, so it queues behind the older parked
///   frames ([`Reason::HeldBehindBacklog`]).
/// - Anything else: the service's action.
#[inline(always)]
pub fn final_action(
    c: &Classification,
    replay: Option<Action>,
    frame: &impl FrameContext,
) -> (Action, Option<Reason>) {
    let entry = if c.service_id == NO_SERVICE {
        None
    } else {
        c.service.as_ref()
    };
    service_final_action(c.action, entry, replay, frame)
}

/// [`final_action`] of a frame whose service has `entry` (None: no service)
/// and that `lookup_stage` gave `action` ([`classified_action`]).
#[inline(always)]
pub fn service_final_action(
    action: Action,
    entry: Option<&ServiceEntry>,
    replay: Option<Action>,
    frame: &impl FrameContext,
) -> (Action, Option<Reason>) {
    let Some(entry) = entry else {
        return (action, None);
    };
    if entry.flags & SERVICE_ACTIVE == 0 {
        return (action, None);
    }
    if let Some(action) = replay {
        return (action, None);
    }
    let parks = action == Action::Park;
    let held = !parks
        && entry.flags & SERVICE_HOLD != 0
        && matches!(action, Action::Pass | Action::Forward)
        && frame.ring_backlog();
    if !parks && !held {
        return (action, None);
    }
    let unparked = if parks { Action::Pass } else { action };
    if entry.lease_until_ns != 0 && frame.now_ns() >= entry.lease_until_ns {
        return (unparked, Some(Reason::LeaseExpired));
    }
    if frame.frame_len() > REPLAY_FRAME_MAX {
        return (unparked, Some(Reason::TooLargeToPark));
    }
    if held {
        return (Action::Park, Some(Reason::HeldBehindBacklog));
    }
    (Action::Park, None)
}

/// The service a frame on `listener` belongs to: on a QUIC listener, a UDP
/// datagram's is the one the server id in its DCID routes to, if any;
/// otherwise the listener's.
#[inline(always)]
pub fn listener_service<F: PacketBytes + ?Sized, T: Tables>(
    frame: &F,
    tables: &T,
    listener: &ListenerEntry,
    l4: &L4Info,
    reasons: &mut Reasons,
) -> u32 {
    if listener.flags & LISTENER_QUIC != 0
        && let L4Info::Udp {
            payload_offset,
            payload_len,
            ..
        } = *l4
    {
        return quic_service(
            frame,
            tables,
            listener,
            payload_offset as usize,
            payload_len as usize,
            reasons,
        )
        .unwrap_or(listener.service_id);
    }
    listener.service_id
}

/// The lookup stage's part for a TCP frame's MPTCP option `opt`: an MP_JOIN
/// SYN of a frame no table claimed (`service_id` still [`NO_SERVICE`]) finds
/// its service by token, with a report to learn the subflow (or, for an
/// unknown token, to keep the join); a malformed option is a reason. Returns
/// an MP_CAPABLE's keys, which the caller reports once it knows the service.
#[inline(always)]
pub fn mptcp_stage<F: PacketBytes + ?Sized, T: Tables>(
    frame: &F,
    tables: &T,
    opt: OptionRef,
    tcp_flags: u8,
    service_id: &mut u32,
    report: &mut Report,
    reasons: &mut Reasons,
) -> Option<(u64, u64)> {
    match mptcp::parse_mptcp(frame, opt, tcp_flags) {
        Ok(MptcpOption::Join {
            kind: JoinKind::Syn { token, .. },
        }) => {
            if *service_id == NO_SERVICE {
                match tables.token(token) {
                    Some(owner) => {
                        *service_id = owner;
                        *report = Report::LearnFlow { token };
                    }
                    None => {
                        reasons.add(Reason::MptcpUnknownToken);
                        *report = Report::UnknownJoin { token };
                    }
                }
            }
            None
        }
        Ok(MptcpOption::Capable {
            kind: CapableKind::Ack | CapableKind::AckWithData,
            sender_key: Some(sender_key),
            receiver_key: Some(receiver_key),
            ..
        }) => Some((sender_key, receiver_key)),
        Ok(_) => None,
        Err(_) => {
            reasons.add(Reason::MptcpMalformed);
            None
        }
    }
}

/// The action [`final_action`] gives every fresh frame of a service with
/// this entry (None: no service) at every moment, with no reason of its own,
/// when no replay of the service can be under way; None if the frame's
/// moment or the ring's backlog can change it. So PASS for no service and for
/// an inactive one, and the service's own action for an active service
/// without `SERVICE_HOLD` whose action is not PARK. The XDP program's fast
/// path carries out such actions without building the classification.
#[inline(always)]
pub fn settled_action(entry: Option<&ServiceEntry>) -> Option<Action> {
    if entry.is_some_and(|entry| entry.flags & SERVICE_HOLD != 0) {
        return None;
    }
    match classified_action(entry) {
        Action::Park => None,
        action => Some(action),
    }
}

/// The service a QUIC packet on a QUIC listener routes to by the server id in
/// its DCID, if any.
#[inline(always)]
fn quic_service<F: PacketBytes + ?Sized, T: Tables>(
    frame: &F,
    tables: &T,
    listener: &ListenerEntry,
    payload_offset: usize,
    payload_len: usize,
    reasons: &mut Reasons,
) -> Option<u32> {
    let header = match quic::parse_quic_with(
        frame,
        payload_offset,
        payload_offset + payload_len,
        listener.cid.cid_len,
        listener.flags & LISTENER_QUIC_GREASE != 0,
    ) {
        Ok(header) => header,
        Err(_) => {
            reasons.add(Reason::QuicMalformed);
            return None;
        }
    };
    let dcid = header.dcid();
    let owner = if dcid.len == listener.cid.cid_len {
        listener
            .cid
            .server_id_in(frame, dcid.offset as usize)
            .and_then(|id| tables.server_id(id))
    } else {
        None
    };
    // Initial DCIDs are client-chosen: only a short header must route.
    if owner.is_none() && matches!(header, QuicHeader::Short { .. }) {
        reasons.add(Reason::QuicUnknownServerId);
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(action: Action, flags: u32) -> Classification {
        Classification {
            service_id: 7,
            action,
            service: Some(ServiceEntry {
                action: action as u32,
                flags,
                ..Default::default()
            }),
            ..Classification::EMPTY
        }
    }

    /// A frame's surroundings for [`final_action`]; `None` answers panic
    /// (the question must not be asked).
    #[derive(Clone, Copy)]
    struct Moment {
        now_ns: Option<u64>,
        len: Option<usize>,
        backlog: Option<bool>,
    }

    const UNASKED: Moment = Moment {
        now_ns: None,
        len: None,
        backlog: None,
    };

    impl FrameContext for Moment {
        fn now_ns(&self) -> u64 {
            self.now_ns.expect("the time was not to be asked")
        }
        fn frame_len(&self) -> usize {
            self.len.expect("the length was not to be asked")
        }
        fn ring_backlog(&self) -> bool {
            self.backlog.expect("the ring was not to be asked")
        }
    }

    fn at(now_ns: u64, len: usize, backlog: bool) -> Moment {
        Moment {
            now_ns: Some(now_ns),
            len: Some(len),
            backlog: Some(backlog),
        }
    }

    fn leased(action: Action, flags: u32, until: u64) -> Classification {
        let mut c = classified(action, flags);
        if let Some(entry) = c.service.as_mut() {
            entry.lease_until_ns = until;
        }
        c
    }

    #[test]
    fn set_parsed_is_what_parse_stage_does_after_the_parse() {
        use migr_testkit::frames::FrameBuilder;
        let frames = [
            FrameBuilder::udp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 443).build(),
            FrameBuilder::tcp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 80).build(),
            FrameBuilder::udp_v6([0xfd; 16], 1, [0xfe; 16], 2).build(),
            FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1).build(),
        ];
        for frame in frames {
            let mut staged = Classification::EMPTY;
            let going_on = parse_stage(&frame[..], &mut staged);
            let info = packet::parse_packet(&frame[..]).unwrap();
            let mut set = Classification::EMPTY;
            assert_eq!(set_parsed(&info, &mut set), going_on);
            assert_eq!(set, staged);
        }
    }

    #[test]
    fn reset_parsed_is_the_empty_classification_then_set_parsed() {
        use migr_testkit::frames::FrameBuilder;
        let frames = [
            FrameBuilder::udp_v4([10, 0, 0, 1], 5000, [10, 0, 0, 2], 443).build(),
            FrameBuilder::tcp_v6([0xfd; 16], 1, [0xfe; 16], 2).build(),
            FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1).build(),
        ];
        // What the scratch slot may hold from the frame before.
        let mut used = classified(Action::Forward, SERVICE_ACTIVE | SERVICE_HOLD);
        used.reasons.add(Reason::QuicUnknownServerId);
        used.report = Report::LearnFlow { token: 9 };
        used.flow.src_port = 77;
        used.flow.src_addr = [3; 16];
        for frame in frames {
            let info = packet::parse_packet(&frame[..]).unwrap();
            let mut expected = Classification::EMPTY;
            let going_on = set_parsed(&info, &mut expected);
            let mut reset = used;
            assert_eq!(reset_parsed(&info, &mut reset), going_on);
            assert_eq!(reset, expected);
        }
    }

    /// `settled_action` names an action exactly for the entries whose fresh
    /// frames `final_action` gives that action at every moment, without a
    /// reason, and for which the datapath looks for no replayed frame (no
    /// `SERVICE_HOLD`, no PARK).
    #[test]
    fn settled_action_is_final_actions_at_every_moment() {
        let moments = [
            at(0, 100, false),
            at(0, 100, true),
            at(5, REPLAY_FRAME_MAX + 1, true),
            at(u64::MAX, 100, true),
        ];
        let actions = [Action::Pass, Action::Park, Action::Forward, Action::Drop];
        // An action value no `Action` has: `lookup_stage` makes it PASS.
        let values = actions.map(|a| a as u32).into_iter().chain([99]);
        for value in values {
            for flags in 0..8 {
                for lease in [0, 10] {
                    let entry = ServiceEntry {
                        action: value,
                        flags,
                        lease_until_ns: lease,
                        ..Default::default()
                    };
                    // What `lookup_stage` makes of a frame of this service.
                    let c = Classification {
                        service_id: 7,
                        action: if flags & SERVICE_ACTIVE != 0 {
                            Action::from_u32(value).unwrap_or(Action::Pass)
                        } else {
                            Action::Pass
                        },
                        service: Some(entry),
                        ..Classification::EMPTY
                    };
                    let first = final_action(&c, None, &moments[0]);
                    let same_always = first.1.is_none()
                        && moments.iter().all(|m| final_action(&c, None, m) == first);
                    let looks_for_replays = c.action == Action::Park || flags & SERVICE_HOLD != 0;
                    let expected = (same_always && !looks_for_replays).then_some(first.0);
                    assert_eq!(
                        settled_action(Some(&entry)),
                        expected,
                        "action {value}, flags {flags:#b}, lease {lease}"
                    );
                }
            }
        }
        assert_eq!(settled_action(None), Some(Action::Pass));
        assert_eq!(
            final_action(&Classification::EMPTY, None, &UNASKED),
            (Action::Pass, None)
        );
    }

    #[test]
    fn final_action_without_hold_or_replay_is_the_services() {
        for action in [Action::Pass, Action::Forward, Action::Drop] {
            let c = classified(action, SERVICE_ACTIVE);
            assert_eq!(final_action(&c, None, &UNASKED), (action, None));
        }
        let park = classified(Action::Park, SERVICE_ACTIVE);
        assert_eq!(
            final_action(&park, None, &at(5, 100, false)),
            (Action::Park, None)
        );
        assert_eq!(
            final_action(&Classification::EMPTY, Some(Action::Forward), &UNASKED),
            (Action::Pass, None),
            "a replayed frame of no service passes"
        );
    }

    #[test]
    fn replayed_frames_get_the_agents_action() {
        let parked = leased(Action::Park, SERVICE_ACTIVE | SERVICE_HOLD, 1);
        for action in [Action::Forward, Action::Pass] {
            assert_eq!(
                final_action(&parked, Some(action), &UNASKED),
                (action, None),
                "even after the lease: the agent is there, replaying"
            );
        }
        let inactive = classified(Action::Park, 0);
        assert_eq!(
            final_action(&inactive, Some(Action::Forward), &UNASKED),
            (Action::Park, None),
            "inactive entries are ignored (their classified action stands)"
        );
    }

    #[test]
    fn held_services_park_fresh_frames_while_the_ring_has_a_backlog() {
        for action in [Action::Pass, Action::Forward] {
            let c = leased(action, SERVICE_ACTIVE | SERVICE_HOLD, 1_000);
            assert_eq!(
                final_action(&c, None, &at(999, 100, true)),
                (Action::Park, Some(Reason::HeldBehindBacklog))
            );
            let no_backlog = Moment {
                backlog: Some(false),
                ..UNASKED
            };
            assert_eq!(final_action(&c, None, &no_backlog), (action, None));
        }
        let drop = classified(Action::Drop, SERVICE_ACTIVE | SERVICE_HOLD);
        assert_eq!(final_action(&drop, None, &UNASKED), (Action::Drop, None));
    }

    #[test]
    fn once_the_agents_lease_ran_out_nothing_waits_for_it() {
        let parking = leased(Action::Park, SERVICE_ACTIVE, 1_000);
        assert_eq!(
            final_action(&parking, None, &at(999, 100, true)),
            (Action::Park, None)
        );
        assert_eq!(
            final_action(&parking, None, &at(1_000, 100, true)),
            (Action::Pass, Some(Reason::LeaseExpired))
        );
        for action in [Action::Pass, Action::Forward] {
            let held = leased(action, SERVICE_ACTIVE | SERVICE_HOLD, 1_000);
            assert_eq!(
                final_action(&held, None, &at(1_001, 100, true)),
                (action, Some(Reason::LeaseExpired))
            );
        }
        let unleased = leased(Action::Park, SERVICE_ACTIVE, 0);
        assert_eq!(
            final_action(&unleased, None, &at(u64::MAX, 100, true)),
            (Action::Park, None),
            "0 is no lease"
        );
    }

    #[test]
    fn frames_a_replay_could_not_send_are_not_parked() {
        let parking = leased(Action::Park, SERVICE_ACTIVE, 1_000);
        assert_eq!(
            final_action(&parking, None, &at(0, REPLAY_FRAME_MAX, true)),
            (Action::Park, None)
        );
        assert_eq!(
            final_action(&parking, None, &at(0, REPLAY_FRAME_MAX + 1, true)),
            (Action::Pass, Some(Reason::TooLargeToPark))
        );
        let held = leased(Action::Forward, SERVICE_ACTIVE | SERVICE_HOLD, 1_000);
        assert_eq!(
            final_action(&held, None, &at(0, 9_000, true)),
            (Action::Forward, Some(Reason::TooLargeToPark))
        );
    }
}
