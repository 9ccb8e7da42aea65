//! [`claim`]: the listener, learned flow and service of a plain frame, and
//! its decision and action unless it has something to report.

use super::*;

/// What [`claim`] found.
pub(super) enum Claim {
    /// No listener and no learned flow: the frame passes.
    Unclaimed,
    /// The frame's action is decided, and carried out if it is a PARK or a
    /// FORWARD: [`FastParsed::decided`] says how to count the frame and what
    /// to return.
    Decided,
    /// Parsed into [`FAST_PARSED`], with its listener and its learned flow.
    Lookup,
    Slow,
    /// A cut-short copy stops (`breakdown.rs`).
    Stop,
    /// The second sight of a frame the agent replayed (skb mode): counted
    /// (`replay_reentered`) and passed, as `finish` passes it.
    Reentered,
}

/// Looks up the listener (if its port and protocol have one: `port_listener`,
/// their `PORT_LISTENERS` entry) and the learned flow (if one may have its
/// destination port: `flows`) of a plain frame. A BPF call of its own,
/// made only for such frames: inlined, its stack (the entries it copies out)
/// would add to the program's, which Linux 6.1 adds to `migr_lookup_known`'s
/// in their chain of at most 512 bytes. Each key is built in the scratch
/// slot with only the addresses its lookup needs.
///
/// The flow is looked up here, not in the lookup stage, so that a frame no
/// table claims on a node with learned flows still passes on the fast path.
/// So is the service (the lookup stage's `listener_service` and `SERVICES`
/// lookup), so that the frame is decided and acted on here, without the
/// classification: at once for a service that gives every fresh frame one
/// action (`classify::settled_action`: PASS for every service that is not
/// migrating, FORWARD once its new place has taken over), else with
/// `finish`'s steps (the replay-tag look, the final action). Only a frame
/// with something to report goes on to [`migr_lookup_known`] and `finish`.
#[inline(never)]
pub(super) fn claim<const STOP: u32>(
    ctx: *mut xdp_md,
    plain: &Plain,
    len: u32,
    port_listener: u32,
    flows: bool,
) -> Claim {
    let Some(parsed) = FAST_PARSED.get_ptr_mut(0) else {
        return Claim::Slow;
    };
    // SAFETY: this CPU's slot; nothing else uses it during this run.
    let parsed = unsafe { &mut *parsed };
    let (start, end) = data(ctx);
    let family = family_tag(plain.family);
    let mut listener = None;
    if port_listener != 0 {
        listener = slotted_listener(port_listener, start, end, plain);
        if listener.is_none() {
            let key = &mut parsed.listener_key;
            if copy_addr(start, end, plain.family, Addr::Dst, &mut key.addr).is_none() {
                return Claim::Slow;
            }
            key.port = plain.dst_port;
            key.proto = plain.proto;
            key.family = family;
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
    let known = Claimed {
        listener,
        flow,
        server_id: Cell::new(None),
    };
    let frame = InPlace::with_len(ctx, Some(len as usize));
    let mut service_id = NO_SERVICE;
    if let Some(learned) = flow {
        service_id = learned;
    } else if let Some(listener) = listener {
        let mut l4_info = L4Info::Other;
        if plain.proto == IPPROTO_UDP {
            let Some(udp) = udp_info(start, end, l4, plain.dst_port) else {
                return Claim::Slow;
            };
            l4_info = udp;
        }
        service_id = listener_service(&frame, &known, &listener, &l4_info, &mut reasons);
    } else if plain.mptcp_len == 0 {
        return Claim::Unclaimed;
    }
    if let Some(option) = plain.mptcp() {
        let mut report = Report::None;
        let capable_keys = mptcp_stage(
            &frame,
            &known,
            option,
            plain.tcp_flags,
            &mut service_id,
            &mut report,
            &mut reasons,
        );
        // Something to report: `finish` reports it.
        if report != Report::None || capable_keys.is_some() {
            return lookup_next(parsed, plain, len, &known);
        }
    }
    // The entry read in place, not copied out (its forward target is 40 bytes).
    let entry = if service_id == NO_SERVICE {
        None
    } else {
        SERVICES.get(service_id)
    };
    let action = match settled_action(entry) {
        Some(action) => action,
        // The service parks, or holds: `finish`'s steps, as it takes them.
        None => {
            if take_replayed_tag(ctx, len) {
                count_reason(Reason::ReplayReentered);
                return Claim::Reentered;
            }
            let frame = LiveFrame {
                len: u64::from(len),
            };
            let (action, why) = service_final_action(classified_action(entry), entry, None, &frame);
            if let Some(why) = why {
                count_reason(why);
            }
            action
        }
    };
    let (verdict, xdp) = match (action, entry) {
        // A cut-short copy stops before the action.
        _ if STOP != stop::NEVER => (Some(Verdict::Pass), xdp_action::XDP_PASS),
        (Action::Pass, _) => (Some(Verdict::Pass), xdp_action::XDP_PASS),
        (Action::Drop, _) => (Some(Verdict::Drop), xdp_action::XDP_DROP),
        (Action::Park, _) => park_outcome(&XdpContext::new(ctx), service_id, len),
        // Forwarded here, with the entry read in place: a BPF call fewer
        // than through `forward`.
        (Action::Forward, Some(entry)) => {
            let sent = forward_now(ctx, service_id, &entry.forward, &plain.headers(), false);
            forward_outcome(&XdpContext::new(ctx), service_id, sent)
        }
        (Action::Forward, None) => forward_outcome(
            &XdpContext::new(ctx),
            service_id,
            Err(Reason::ForwardUnsupported),
        ),
    };
    parsed.decided = Decided {
        service_id,
        reasons: reasons.0,
        verdict,
        xdp,
    };
    Claim::Decided
}

/// Leaves what [`claim`] found in `parsed` for [`migr_lookup_known`].
#[inline(always)]
fn lookup_next(parsed: &mut FastParsed, plain: &Plain, len: u32, known: &Claimed) -> Claim {
    parsed.plain = *plain;
    parsed.len = len;
    parsed.listener = known.listener.unwrap_or_default();
    parsed.flow = known.flow.unwrap_or(NO_SERVICE);
    parsed.server_id = known.server_id.get();
    Claim::Lookup
}

/// The tables as [`claim`] found them: the frame's listener and learned flow
/// looked up already (the lookup stage asks for those keys only), and the
/// `SERVER_IDS` answer kept once asked, so that a frame asks it once.
pub(super) struct Claimed {
    pub(super) listener: Option<ListenerEntry>,
    pub(super) flow: Option<u32>,
    /// The server id asked, and its owner.
    pub(super) server_id: Cell<Option<(u32, Option<u32>)>>,
}

impl Tables for Claimed {
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
        if let Some((asked, owner)) = self.server_id.get()
            && asked == server_id
        {
            return owner;
        }
        let owner = MapTables.server_id(server_id);
        self.server_id.set(Some((server_id, owner)));
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

/// The entry in `LISTENER_SLOTS`' slot `slot` (a `PORT_LISTENERS` entry,
/// not 0) if its key is the plain frame's: an array lookup and a compare
/// instead of the `LISTENERS` hash lookup. None: look the frame's key up in
/// `LISTENERS`.
#[inline(always)]
fn slotted_listener(slot: u32, start: usize, end: usize, plain: &Plain) -> Option<ListenerEntry> {
    if slot == LISTENERS_ONLY {
        return None;
    }
    let found = LISTENER_SLOTS.get(slot)?;
    frame_has_key(start, end, plain, &found.key).then_some(found.entry)
}

/// Is `key` the plain frame's listener key? Compared with the frame's own
/// fields as five 4-byte words (the slot's key read as words; a derived `==`,
/// byte by byte, may become a call to `bcmp`, which BPF does not have), so
/// that a frame whose slot holds its key builds no key.
#[inline(always)]
fn frame_has_key(start: usize, end: usize, plain: &Plain, key: &ListenerKey) -> bool {
    const WORDS: usize = size_of::<ListenerKey>() / 4;
    const {
        assert!(align_of::<ListenerKey>() >= 4 && WORDS == 5);
        assert!(core::mem::offset_of!(ListenerKey, port) == 16);
        assert!(core::mem::offset_of!(ListenerKey, proto) == 18);
        assert!(core::mem::offset_of!(ListenerKey, family) == 19);
    };
    // SAFETY: a whole key, 4-byte aligned (asserted above).
    let words = unsafe { core::ptr::from_ref(key).cast::<[u32; WORDS]>().read() };
    let [p0, p1] = plain.dst_port.to_ne_bytes();
    let tail = u32::from_ne_bytes([p0, p1, plain.proto, family_tag(plain.family)]);
    let mut differ = words[4] ^ tail;
    match plain.family {
        IpFamily::V4 => {
            let Some(ip) = header::<Ipv4Hdr>(start, end, EthHdr::LEN) else {
                return false;
            };
            differ |= words[0] ^ u32::from_ne_bytes(field!(ip, dst_addr));
            differ |= words[1] | words[2] | words[3];
        }
        IpFamily::V6 => {
            let Some(ip) = header::<Ipv6Hdr>(start, end, EthHdr::LEN) else {
                return false;
            };
            let addr = field!(ip, dst_addr);
            for (i, word) in words.iter().take(4).enumerate() {
                let at = i * 4;
                let bytes = [addr[at], addr[at + 1], addr[at + 2], addr[at + 3]];
                differ |= word ^ u32::from_ne_bytes(bytes);
            }
        }
    }
    differ == 0
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
/// `to` is a key's address: 4-byte aligned (asserted below), so the zeros
/// go in as three words.
#[inline(always)]
fn copy_addr(
    start: usize,
    end: usize,
    family: IpFamily,
    which: Addr,
    to: &mut [u8; 16],
) -> Option<()> {
    const {
        assert!(align_of::<ListenerKey>() >= 4 && align_of::<FlowKey>() >= 4);
        assert!(core::mem::offset_of!(ListenerKey, addr) % 4 == 0);
        assert!(core::mem::offset_of!(FlowKey, src_addr) % 4 == 0);
        assert!(core::mem::offset_of!(FlowKey, dst_addr) % 4 == 0);
    };
    // SAFETY (both arms): `header` proved the whole IP header, and with it
    // the address, is in the frame.
    match family {
        IpFamily::V4 => {
            let ip = header::<Ipv4Hdr>(start, end, EthHdr::LEN)?;
            // Word by word, volatile: a zeroing of the array is a call to `memset`.
            let words = to.as_mut_ptr().cast::<u32>();
            for i in 1..4 {
                // SAFETY: a word of `to`, which is 4-byte aligned (see above).
                unsafe { core::ptr::write_volatile(words.add(i), 0) };
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
