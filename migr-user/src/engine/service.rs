//! One service as the engine keeps it, and the rules that decide for it
//! without I/O: whether a parked frame is stored or overflows, how fast a
//! backlog replay may go, which datapath entries its spec means, and whether
//! it may start forwarding over its link. Time and link states are passed in,
//! so all of it is unit-tested here without root.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use migr_common::{
    cid::CidConfig,
    maps::{
        Action, FAMILY_V4, FAMILY_V6, ForwardMode, ForwardPath, ForwardTarget, LISTENER_QUIC,
        LISTENER_QUIC_GREASE, ListenerEntry, ListenerKey, SERVICE_ACTIVE, SERVICE_HOLD,
        SERVICE_MPTCP, ServiceEntry,
    },
};
use migr_control::{
    api::{self, ForwardModeSpec, MigrationRecord, ParkLimit, ReplayStats, RuleProto, ServiceSpec},
    phase::{DatapathState, PhaseMachine, State},
};
use serde::{Deserialize, Serialize};

use super::retry::ReplayRetry;
use crate::{socket_room::SocketWatch, spool::Spool};

/// How the forward target resolved on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedForward {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The frames leave through the TC program ([`ForwardPath::Tc`]).
    #[serde(default)]
    pub tc: bool,
}

/// Counters the agent keeps itself (persisted with the state).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Totals {
    pub(super) stored_frames: u64,
    pub(super) stored_bytes: u64,
    pub(super) overflow_frames: u64,
    pub(super) overflow_bytes: u64,
    #[serde(default)]
    pub(super) checksums_completed: u64,
    #[serde(default)]
    pub(super) checksums_bad: u64,
    /// Writes to the store that failed (a full filesystem, say); their
    /// frames stayed in the ring and were stored again later.
    #[serde(default)]
    pub(super) store_failures: u64,
    pub(super) replay: ReplayStats,
}

/// A backlog replay under way: when it began and what had been replayed
/// before it (the token bucket and the "last replay" figures count from there).
pub(super) struct ReplayRun {
    pub(super) started: Instant,
    pub(super) replayed_before: u64,
    /// `Totals::stored_frames` when it began: what is stored later arrived
    /// during the replay.
    pub(super) stored_before: u64,
    /// `ReplayStats::replayed_frames` when it began.
    pub(super) replayed_frames_before: u64,
    /// The store's file size when it began (see `pump::reclaim_if_worth`).
    pub(super) file_bytes_before: u64,
}

impl ReplayRun {
    /// The pace of the replay now, with `handled` frames replayed (or given
    /// up) and `stored` stored in all. The bucket grants `rate` frames per
    /// second on top of the frames that arrived since the replay began: the
    /// backlog drains at `rate` however busy the service is (a service
    /// receiving more than `rate` would otherwise never finish), and the
    /// service gets no more than `rate` above what it would have received
    /// anyway.
    pub(super) fn pace(
        &self,
        now: Instant,
        handled: u64,
        stored: u64,
        burst: u64,
        rate: u64,
    ) -> Pace {
        let arrived = stored.saturating_sub(self.stored_before);
        let handled = handled.saturating_sub(self.replayed_before);
        match handled.checked_sub(arrived) {
            Some(done) => token_bucket(self.started, now, done, burst, rate),
            // Fewer handled than arrived: the arrivals not yet replayed are
            // granted on top of the bucket.
            None => match token_bucket(self.started, now, 0, burst, rate) {
                Pace::Go(n) => Pace::Go(n + (arrived - handled)),
                wait => wait,
            },
        }
    }
}

pub(super) struct Service {
    pub(super) spec: ServiceSpec,
    pub(super) forward: Option<ResolvedForward>,
    pub(super) machine: PhaseMachine,
    pub(super) totals: Totals,
    pub(super) spool: Spool,
    pub(super) limit: ParkLimit,
    pub(super) last_latency_us: Option<u64>,
    pub(super) replay_run: Option<ReplayRun>,
    /// The restored process CRIU named (`CRTOOLS_INIT_PID`), whose
    /// namespace's sockets a local replay watches; not persisted (after a
    /// restart the replay goes on paced by the token bucket alone).
    pub(super) init_pid: Option<u32>,
    pub(super) socket_watch: Option<SocketWatch>,
    /// Why this service's datapath entries could not be installed after a
    /// restart (its forward interface vanished, say): it then passes, fails
    /// open, and refuses phase commands until it is removed and added again.
    pub(super) fault: Option<String>,
    /// A replay that failed part-way and waits to try again (`retry.rs`).
    pub(super) replay_retry: Option<ReplayRetry>,
    /// Replayed bytes the store must hold before another compaction is
    /// tried while frames are pending (one failed: on a full filesystem a
    /// retry on every turn of the loop would only fail again).
    pub(super) compact_after: u64,
    /// Arrival (kernel monotonic ns) of the oldest frame stored since the
    /// last migration ended here; not persisted (after a restart the
    /// migration's client gap is unknown).
    pub(super) first_parked_ns: Option<u64>,
    pub(super) last_migration: Option<MigrationRecord>,
}

impl Service {
    pub(super) fn new(
        spec: ServiceSpec,
        forward: Option<ResolvedForward>,
        machine: PhaseMachine,
        spool: Spool,
        default_limit: ParkLimit,
    ) -> Self {
        Self {
            limit: spec.park_limit.unwrap_or(default_limit),
            spec,
            forward,
            machine,
            totals: Totals::default(),
            spool,
            last_latency_us: None,
            replay_run: None,
            init_pid: None,
            socket_watch: None,
            fault: None,
            replay_retry: None,
            compact_after: 0,
            first_parked_ns: None,
            last_migration: None,
        }
    }

    pub(super) fn mptcp(&self) -> bool {
        self.spec.rules.iter().any(|r| r.proto == RuleProto::Mptcp)
    }

    /// The SERVICES entry that makes the datapath do `dps` (a faulted
    /// service's is inactive: everything passes), with the agent's lease
    /// until `lease_until_ns` if frames are to wait for it (see `lease.rs`).
    pub(super) fn entry(&self, dps: DatapathState, lease_until_ns: u64) -> ServiceEntry {
        if self.fault.is_some() {
            return ServiceEntry::default();
        }
        let mut flags = SERVICE_ACTIVE;
        if self.mptcp() {
            flags |= SERVICE_MPTCP;
        }
        if dps.hold {
            flags |= SERVICE_HOLD;
        }
        ServiceEntry {
            action: dps.action as u32,
            flags,
            forward: forward_target(&self.spec, self.forward),
            lease_until_ns: if dps.waits_for_agent() {
                lease_until_ns
            } else {
                0
            },
        }
    }

    /// The overflow rule: a parked frame of `len` bytes is stored if the
    /// store, with `queued` frames and bytes not written yet, stays within
    /// the service's limit; otherwise the newest frame is the one dropped.
    pub(super) fn has_room(&self, queued: (u64, u64), len: u64) -> bool {
        self.spool.pending() as u64 + queued.0 < self.limit.frames
            && self.spool.pending_bytes() + queued.1 + len <= self.limit.bytes
    }

    /// Counts a frame there was no room for (logged at powers of two).
    pub(super) fn count_overflow(&mut self, len: u64, bound: Bound) {
        self.totals.overflow_frames += 1;
        self.totals.overflow_bytes += len;
        if !self.totals.overflow_frames.is_power_of_two() {
            return;
        }
        match bound {
            Bound::Service => tracing::warn!(service = %self.spec.name,
                overflow_frames = self.totals.overflow_frames,
                limit_frames = self.limit.frames, limit_bytes = self.limit.bytes,
                "parked-frame store full: dropping the newest frames"),
            Bound::Agent(max_total_bytes) => tracing::warn!(service = %self.spec.name,
                overflow_frames = self.totals.overflow_frames, max_total_bytes,
                "the parked-frame stores of all services together are full (--park-max-total-bytes): dropping the newest frames"),
        }
    }

    /// Frames a replay has handled so far (replayed or given up on).
    pub(super) fn replay_handled(&self) -> u64 {
        self.totals.replay.replayed_frames + self.totals.replay.failed_frames
    }

    /// Begins counting a backlog replay at `now`.
    pub(super) fn start_replay_run(&mut self, now: Instant) {
        self.replay_run = Some(ReplayRun {
            started: now,
            replayed_before: self.replay_handled(),
            stored_before: self.totals.stored_frames,
            replayed_frames_before: self.totals.replay.replayed_frames,
            file_bytes_before: self.spool.file_bytes(),
        });
    }
}

/// The bound a parked frame had no room under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bound {
    /// The service's own (`ParkLimit`).
    Service,
    /// The agent's, for all stores together: this many bytes.
    Agent(u64),
}

/// The agent-wide overflow rule: a parked frame of `len` bytes is stored if
/// all the stores together, holding `held` bytes not replayed yet (frames
/// not written yet included), stay within `max_total` bytes. Like the
/// per-service rule, it drops the newest frame.
pub(super) fn within_agent_bound(held: u64, len: u64, max_total: u64) -> bool {
    held.checked_add(len)
        .is_some_and(|total| total <= max_total)
}

/// What a paced replay may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pace {
    /// Replay up to this many frames.
    Go(u64),
    /// Nothing until then.
    WaitUntil(Instant),
}

/// The token bucket of a backlog replay: `burst` frames at once, then
/// `rate` per second from `started`, of which `done` are spent.
pub(super) fn token_bucket(
    started: Instant,
    now: Instant,
    done: u64,
    burst: u64,
    rate: u64,
) -> Pace {
    let elapsed = now.saturating_duration_since(started).as_secs_f64();
    let total = burst as f64 + rate as f64 * elapsed;
    match (total as u64).saturating_sub(done) {
        0 => Pace::WaitUntil(
            started
                + Duration::from_secs_f64((done + 1).saturating_sub(burst) as f64 / rate as f64),
        ),
        n => Pace::Go(n),
    }
}

/// "park", "forward+hold", ...
pub fn describe(dps: DatapathState) -> String {
    if dps.hold {
        format!("{}+hold", dps.action.name())
    } else {
        dps.action.name().to_string()
    }
}

fn ip_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The LISTENERS entry of one of a service's rules.
pub(super) fn listener_for(rule: &api::MatchRule, service_id: u32) -> (ListenerKey, ListenerEntry) {
    let (addr, family) = ip_bytes(rule.addr.ip());
    let key = ListenerKey {
        addr,
        port: rule.addr.port(),
        proto: api::rule_ip_proto(rule.proto),
        family,
    };
    let mut entry = ListenerEntry {
        service_id,
        ..Default::default()
    };
    if rule.proto == RuleProto::Quic {
        entry.flags |= LISTENER_QUIC;
        if rule.grease {
            entry.flags |= LISTENER_QUIC_GREASE;
        }
        if let Some(c) = rule.cid
            && let Ok(cfg) = CidConfig::new(c.len, c.offset, c.id_len)
        {
            entry.cid = cfg;
        }
    }
    (key, entry)
}

pub(super) fn forward_target(
    spec: &ServiceSpec,
    resolved: Option<ResolvedForward>,
) -> ForwardTarget {
    let (Some(fwd), Some(r)) = (&spec.forward, resolved) else {
        return ForwardTarget::default();
    };
    let (addr, family, port) = match fwd.addr {
        Some(a) => {
            let (addr, family) = ip_bytes(a.ip());
            (addr, family, a.port())
        }
        None => {
            let family = match spec.rules.first().map(|r| r.addr) {
                Some(SocketAddr::V6(_)) => FAMILY_V6,
                _ => FAMILY_V4,
            };
            ([0; 16], family, 0)
        }
    };
    ForwardTarget {
        addr,
        port,
        mode: match fwd.mode {
            ForwardModeSpec::AddressChanging => ForwardMode::AddressChanging,
            ForwardModeSpec::SameIp => ForwardMode::SameIp,
        } as u8,
        family,
        dst_mac: r.dst_mac,
        src_mac: r.src_mac,
        ifindex: r.ifindex,
        path: if r.tc {
            ForwardPath::Tc
        } else {
            ForwardPath::Xdp
        } as u8,
        _pad: [0; 3],
    }
}

/// The state of a service's forward interface (`ServiceStatus::forward_link`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Up,
    /// Up, but the link or its peer is down.
    NoCarrier,
    Down,
    /// Gone, or re-created (another index) since the service was added.
    Missing,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::NoCarrier => "no-carrier",
            LinkState::Down => "down",
            LinkState::Missing => "missing",
        }
    }

    fn why(self) -> &'static str {
        match self {
            LinkState::Up => "is up",
            LinkState::NoCarrier => "has no carrier (the link or its peer is down)",
            LinkState::Down => "is down",
            LinkState::Missing => {
                "no longer exists (or was re-created since the service was added)"
            }
        }
    }
}

/// The forward rules of a phase change that would enter `to` with
/// `target`: a service forwards only with a forward target, and a source
/// starts forwarding (and replays its parked frames to the destination) only
/// over a link that delivers; otherwise its frames stay parked. `link` is
/// the forward interface's state, if it has one.
pub(super) fn forward_refusal(
    svc: &Service,
    to: State,
    target: Action,
    link: Option<LinkState>,
) -> Option<String> {
    if target != Action::Forward {
        return None;
    }
    let name = &svc.spec.name;
    if svc.forward.is_none() {
        return Some(format!(
            "service {name:?} has no forward target: it cannot forward to its new node (add it with a forward target)"
        ));
    }
    let link = link.filter(|l| *l != LinkState::Up)?;
    if to != State::Restored {
        return None;
    }
    let iface = svc.spec.forward.as_ref().map_or("?", |f| f.iface.as_str());
    Some(format!(
        "service {name:?} cannot forward: its forward interface {iface} {}; the parked frames stay parked (fix the link and retry, or abort)",
        link.why()
    ))
}

/// What the engine's unit tests share: services whose stores live in a
/// scratch directory that is removed when it is dropped.
#[cfg(test)]
pub(super) mod testing {
    use std::path::PathBuf;

    use migr_control::{
        api::{ParkLimit, ServiceSpec},
        phase::PhaseMachine,
    };

    use super::{ResolvedForward, Service};
    use crate::spool::Spool;

    pub(in crate::engine) struct Scratch(pub(in crate::engine) PathBuf);

    impl Scratch {
        pub(in crate::engine) fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("migr-engine-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating a scratch directory");
            Self(dir)
        }

        /// Service 1 (`a`, one UDP rule), its store in this directory.
        pub(in crate::engine) fn service(
            &self,
            forward: Option<ResolvedForward>,
            machine: PhaseMachine,
            limit: ParkLimit,
        ) -> Service {
            let spec: ServiceSpec = serde_json::from_str(
                r#"{"id":1,"name":"a","rules":[{"proto":"udp","addr":"10.0.0.1:7"}],
                    "forward":{"addr":"10.0.1.1:8","iface":"eth1","next_hop_mac":"02:00:00:00:00:09"}}"#,
            )
            .expect("the test spec parses");
            let (spool, _) = Spool::open(&self.0, 1, 9, None).expect("opening a scratch store");
            Service::new(spec, forward, machine, spool, limit)
        }

        /// Service `id` (`s<id>`, one UDP rule, no forward target).
        pub(in crate::engine) fn another_service(
            &self,
            id: u32,
            machine: PhaseMachine,
            limit: ParkLimit,
        ) -> Service {
            let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
                "id": id, "name": format!("s{id}"),
                "rules": [{"proto": "udp", "addr": format!("10.0.0.{id}:7")}],
            }))
            .expect("the test spec parses");
            let (spool, _) = Spool::open(&self.0, id, 9, None).expect("opening a scratch store");
            Service::new(spec, None, machine, spool, limit)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Scratch, *};
    use migr_control::phase::Timing;

    const RESOLVED: ResolvedForward = ResolvedForward {
        ifindex: 5,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 9],
        tc: false,
    };

    fn service(forward: Option<ResolvedForward>, limit: ParkLimit) -> (Service, Scratch) {
        let scratch = Scratch::new(&format!("{:?}", std::thread::current().id()));
        let machine = PhaseMachine::new(Timing::default(), 0);
        (scratch.service(forward, machine, limit), scratch)
    }

    #[test]
    fn forward_targets_follow_the_spec() {
        let (svc, _dir) = service(
            None,
            ParkLimit {
                frames: 1,
                bytes: 1,
            },
        );
        let spec = svc.spec.clone();
        let t = forward_target(&spec, Some(RESOLVED));
        assert_eq!(&t.addr[..4], &[10, 0, 1, 1]);
        assert_eq!((t.port, t.family, t.ifindex), (8, FAMILY_V4, 5));
        assert_eq!(t.mode, ForwardMode::AddressChanging as u8);
        assert_eq!(t.path, ForwardPath::Xdp as u8);
        let t = forward_target(
            &spec,
            Some(ResolvedForward {
                tc: true,
                ..RESOLVED
            }),
        );
        assert_eq!(t.path, ForwardPath::Tc as u8);
        assert_eq!(forward_target(&spec, None), ForwardTarget::default());
        let (key, entry) = listener_for(&spec.rules[0], 1);
        assert_eq!((key.port, key.proto, entry.service_id), (7, 17, 1));
    }

    #[test]
    fn the_store_takes_frames_up_to_either_limit() {
        let limit = ParkLimit {
            frames: 3,
            bytes: 1000,
        };
        let (mut svc, _dir) = service(None, limit);
        assert!(svc.has_room((0, 0), 1000), "exactly the byte limit fits");
        assert!(!svc.has_room((0, 0), 1001), "one byte over does not");
        assert!(svc.has_room((2, 500), 500), "the third frame fits");
        assert!(!svc.has_room((3, 300), 1), "a fourth does not");
        svc.count_overflow(40, Bound::Service);
        svc.count_overflow(60, Bound::Agent(1000));
        assert_eq!(
            (svc.totals.overflow_frames, svc.totals.overflow_bytes),
            (2, 100),
            "either bound counts the same"
        );
    }

    #[test]
    fn all_stores_together_take_frames_up_to_the_agent_bound() {
        assert!(within_agent_bound(0, 1000, 1000), "exactly the bound fits");
        assert!(within_agent_bound(600, 400, 1000));
        assert!(
            !within_agent_bound(600, 401, 1000),
            "one byte over does not"
        );
        assert!(!within_agent_bound(1000, 1, 1000));
        assert!(!within_agent_bound(u64::MAX, 1, u64::MAX), "no wrap-around");
    }

    #[test]
    fn the_token_bucket_gives_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(token_bucket(t0, t0, 0, 16, 1000), Pace::Go(16));
        // The burst spent: the 17th frame is due 1 ms after the start.
        assert_eq!(token_bucket(t0, t0, 16, 16, 1000), Pace::WaitUntil(ms(1)));
        assert_eq!(token_bucket(t0, ms(10), 16, 16, 1000), Pace::Go(10));
        assert_eq!(
            token_bucket(t0, ms(10), 26, 16, 1000),
            Pace::WaitUntil(ms(11))
        );
    }

    #[test]
    fn a_replay_drains_at_its_rate_above_what_arrives_meanwhile() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        // 100 frames replayed and 500 stored before this replay began.
        let run = ReplayRun {
            started: t0,
            replayed_before: 100,
            stored_before: 500,
            replayed_frames_before: 100,
            file_bytes_before: 0,
        };
        // A service receiving 5,000 frames/s, replayed at 1,000 frames/s:
        // after 1 s, 6,000 handled (1,000 of the backlog, 5,000 new).
        assert_eq!(run.pace(s(1), 6_100, 5_500, 16, 1_000), Pace::Go(16));
        // After 2 s a further 6,000 go: the backlog shrinks by 1,000 a second.
        assert_eq!(run.pace(s(2), 6_100, 10_500, 16, 1_000), Pace::Go(6_016));
        // Nothing arrived: the plain bucket.
        assert_eq!(
            run.pace(s(1), 1_116, 500, 16, 1_000),
            Pace::WaitUntil(s(1) + Duration::from_millis(1))
        );
    }

    #[test]
    fn forwarding_needs_a_target_and_a_link_that_delivers() {
        let limit = ParkLimit {
            frames: 10,
            bytes: 10_000,
        };
        {
            let (svc, _dir) = service(None, limit);
            let no_target = forward_refusal(&svc, State::Restored, Action::Forward, None);
            assert!(no_target.is_some_and(|e| e.contains("no forward target")));
            assert_eq!(
                forward_refusal(&svc, State::Restored, Action::Pass, None),
                None
            );
        }
        let (svc, _dir) = service(Some(RESOLVED), limit);
        for (link, refused) in [
            (LinkState::Up, false),
            (LinkState::NoCarrier, true),
            (LinkState::Down, true),
            (LinkState::Missing, true),
        ] {
            let e = forward_refusal(&svc, State::Restored, Action::Forward, Some(link));
            assert_eq!(e.is_some(), refused, "{link:?}");
            if let Some(e) = e {
                assert!(e.contains("eth1") && e.contains(link.why()), "{e}");
            }
        }
        // Draining goes on forwarding whatever the link does.
        let draining = forward_refusal(
            &svc,
            State::Draining,
            Action::Forward,
            Some(LinkState::Down),
        );
        assert_eq!(draining, None);
    }

    #[test]
    fn entries_carry_the_flags_of_the_state() {
        let limit = ParkLimit {
            frames: 10,
            bytes: 10_000,
        };
        let (svc, _dir) = service(Some(RESOLVED), limit);
        let held = svc.entry(
            DatapathState {
                action: Action::Forward,
                hold: true,
            },
            77,
        );
        assert_eq!(held.action, Action::Forward as u32);
        assert_eq!(held.flags, SERVICE_ACTIVE | SERVICE_HOLD);
        assert_eq!(held.forward.ifindex, 5);
        assert_eq!(held.lease_until_ns, 77, "a hold waits for the agent");
        let parking = DatapathState {
            action: Action::Park,
            hold: false,
        };
        assert_eq!(svc.entry(parking, 77).lease_until_ns, 77);
        let forwarding = DatapathState {
            action: Action::Forward,
            hold: false,
        };
        assert_eq!(
            svc.entry(forwarding, 77).lease_until_ns,
            0,
            "nothing waits for the agent: no lease to run out"
        );
        assert_eq!(
            describe(DatapathState {
                action: Action::Forward,
                hold: true
            }),
            "forward+hold"
        );
    }
}
