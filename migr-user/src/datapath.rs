//! Loading, attaching and reading the XDP datapath.

use std::{
    fmt,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, HashMap, Map, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunAttrs,
        TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
        xdp::{XdpLink, XdpLinkId},
    },
};
use migr_common::maps::{
    Action, Event, FlowKey, LISTENER_SLOTS_LEN, ListenerEntry, ListenerKey, MAX_SERVICES,
    NO_SERVICE, ParkedHeader, ProtoClass, REPLAY_BATCH, REPLAY_FRAME_MAX, Reason, ReplayMeta,
    ReplaySlot, SMALL_SERVER_ID_LIMIT, ServiceCounters, ServiceEntry, Verdict, full_path,
    map_names, map_sizes, port_listener_index,
};

use crate::datapath_log::{DatapathLog, LogLine, LogReader};

mod port_listeners;

/// The XDP object, built by this crate's build script from `migr-ebpf`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/migr"));

/// The main classifier program.
pub const MAIN_PROGRAM: &str = "migr";
/// The full classifier, which [`MAIN_PROGRAM`] tail-calls for what its fast
/// path cannot decide and for replay runs (`FULL_PATH`'s slot
/// [`full_path::FULL`]).
pub const FULL_PROGRAM: &str = "migr_full";
/// The cut-short copies of [`FULL_PROGRAM`] that the breakdown's copies from
/// `migr_upto_parsed` on tail-call: `FULL_PATH`'s slots from
/// [`full_path::FIRST_CUT`], in this order.
const FULL_CUT_PROGRAMS: [&str; 4] = [
    "migr_full_upto_parsed",
    "migr_full_upto_classified",
    "migr_full_upto_counted",
    "migr_full_upto_decided",
];
/// Where, in the pin directory, `FULL_PATH` is pinned: beside the links, not
/// with the state maps (`pin_layout.rs`), since it holds programs.
pub const FULL_PATH_PIN: &str = "full_path";
/// A program that only passes (for veth peers and as a benchmark baseline).
pub const PASS_PROGRAM: &str = "migr_pass";
/// The cut-short copies of [`MAIN_PROGRAM`] for the bench's cost breakdown
/// (migr-ebpf/src/breakdown.rs), in the order a frame meets their stages,
/// each with the stage it ends with. The whole program adds the action and
/// the verdict's counter. The agent never loads them.
pub const BREAKDOWN_PROGRAMS: [(&str, &str); 8] = [
    ("migr_upto_entry", "replay-batch check"),
    ("migr_upto_headers", "frame length, header reads"),
    ("migr_upto_words", "FLOW_PORTS, PORT_LISTENERS words"),
    ("migr_upto_listener", "LISTENERS lookup"),
    (
        "migr_upto_parsed",
        "FLOWS lookup, parse (slow: header copy too)",
    ),
    ("migr_upto_classified", "lookup stage"),
    ("migr_upto_counted", "class and reason counters"),
    ("migr_upto_decided", "final_action"),
];
/// What the whole program adds after the last of [`BREAKDOWN_PROGRAMS`].
pub const BREAKDOWN_LAST_STAGE: &str = "action, verdict counter";
/// The TC ingress program that sends on FORWARDs the classifier handed over
/// ([`migr_common::maps::ForwardPath::Tc`]).
pub const TC_PROGRAM: &str = "migr_tc";

/// XDP return codes (linux/bpf.h `enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Unknown(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Unknown(other),
        }
    }
}

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to skb mode if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic skb mode only.
    Skb,
}

impl std::str::FromStr for AttachMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "driver" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            other => bail!("unknown attach mode {other:?}: expected auto, native or skb"),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct TestRunOutcome {
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame_out: Vec<u8>,
    pub duration: std::time::Duration,
}

/// Sizes of the datapath's tables, fixed at load time.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Learned 5-tuples (LRU).
    pub flows: u32,
    /// QUIC server ids.
    pub server_ids: u32,
    /// MPTCP tokens.
    pub tokens: u32,
    /// Bytes of the park ring buffer (a power of two, multiple of the page size).
    pub park_ring_bytes: u32,
    /// The program's debug logs (see `crate::datapath_log`).
    pub log: DatapathLog,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            flows: map_sizes::FLOWS,
            server_ids: map_sizes::SERVER_IDS,
            tokens: map_sizes::TOKENS,
            park_ring_bytes: map_sizes::PARK_RING_BYTES,
            log: DatapathLog::Off,
        }
    }
}

/// The kernel's `struct xdp_md` (uapi linux/bpf.h), the context a
/// BPF_PROG_TEST_RUN of an XDP program takes: offsets into the input data
/// and the interfaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    fn to_bytes(self) -> [u8; size_of::<XdpMd>()] {
        let fields = [
            self.data,
            self.data_end,
            self.data_meta,
            self.ingress_ifindex,
            self.rx_queue_index,
            self.egress_ifindex,
        ];
        let mut out = [0u8; size_of::<XdpMd>()];
        for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&field.to_ne_bytes());
        }
        out
    }
}

/// `map`, checked to be an LRU hash map: aya's `HashMap` handle opens plain
/// and LRU hash maps alike, and FLOWS must be the LRU the program declares
/// (learned flows age out instead of filling the table).
fn lru<M: std::ops::Deref<Target = aya::maps::Map>>(map: M) -> Result<M> {
    match &*map {
        aya::maps::Map::LruHashMap(_) => Ok(map),
        other => bail!("expected an LRU hash map, found {other:?}"),
    }
}

/// A parked frame, as read from the `PARKED` ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedFrame {
    pub header: ParkedHeader,
    pub frame: Vec<u8>,
}

/// The maps that hold the datapath's state; [`Datapath::load_pinned`] pins
/// them (and re-opens them when they are pinned already).
pub const PINNED_MAPS: [&str; 19] = map_names::PINNED;

/// An XDP attachment that is pinned in bpffs: it stays attached when the
/// process ends (also on SIGKILL) until its pin is removed.
#[derive(Debug)]
pub struct AttachedLink {
    pub iface: String,
    pub mode: Option<XdpMode>,
    pub pin: PathBuf,
    /// Re-used from a previous agent (the program was replaced in place).
    pub reused: bool,
    link: FdLink,
}

impl AttachedLink {
    /// Removes the pin and closes the link: the program is detached.
    pub fn detach(self) -> Result<()> {
        std::fs::remove_file(&self.pin)
            .with_context(|| format!("removing the link pin {}", self.pin.display()))?;
        drop(self.link);
        Ok(())
    }

    /// Closes the link but keeps the pin: the program stays attached.
    pub fn keep(self) {
        drop(self.link);
    }
}

/// The loaded XDP object.
pub struct Datapath {
    ebpf: Ebpf,
    /// The program's debug logs, when on.
    logs: Option<LogReader>,
    /// `REPLAY_SLOTS` mapped, once a replay needed it (None: not yet, or
    /// the map cannot be mapped; see `crate::replay_slots`).
    replay_slots: Option<crate::replay_slots::ReplaySlots>,
    /// Mapping `REPLAY_SLOTS` was tried and refused: write slot by slot.
    replay_slots_unmappable: bool,
    /// Slots of the `REPLAY_SLOTS` this object uses, once asked
    /// ([`Self::replay_capacity`]).
    replay_capacity: Option<u32>,
    /// The `LISTENER_SLOTS` slots `PORT_LISTENERS` names (`port_listeners`).
    listener_slots: port_listeners::SlotAllocator,
}

impl Datapath {
    /// Loads the object with default table sizes (not attached).
    pub fn load() -> Result<Self> {
        Self::load_with(&DatapathConfig::default())
    }

    /// Loads the object and every program in it into the kernel (not attached).
    pub fn load_with(config: &DatapathConfig) -> Result<Self> {
        Self::load_inner(config, None).map_err(crate::features::explain)
    }

    /// Like [`Self::load_with`], but the state maps ([`PINNED_MAPS`]) live in
    /// this build's layout directory under `pin_dir` (on bpffs; see
    /// `pin_layout.rs`): maps pinned there already are re-used, with
    /// everything in them, and new ones are pinned there. The table sizes
    /// of re-used maps are the ones they were created with. Maps of another
    /// layout in `pin_dir` are refused, with what to do about them.
    pub fn load_pinned(config: &DatapathConfig, pin_dir: &Path) -> Result<Self> {
        Self::load_inner(config, Some(pin_dir)).map_err(crate::features::explain)
    }

    fn load_inner(config: &DatapathConfig, pin_dir: Option<&Path>) -> Result<Self> {
        if !config.park_ring_bytes.is_power_of_two() || config.park_ring_bytes < 4096 {
            bail!(
                "park ring size {} must be a power of two of at least 4096 bytes",
                config.park_ring_bytes
            );
        }
        let log_level = config.log.aya_level();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::FLOWS, config.flows)
            .map_max_entries(map_names::SERVER_IDS, config.server_ids)
            .map_max_entries(map_names::TOKENS, config.tokens)
            .map_max_entries(map_names::PARKED, config.park_ring_bytes)
            .override_global(aya_log::LEVEL, &log_level, true);
        if let Some(dir) = pin_dir {
            crate::pin_layout::check(dir)?;
            let maps = crate::pin_layout::maps_dir(dir);
            std::fs::create_dir_all(&maps)
                .with_context(|| format!("creating the map pin directory {}", maps.display()))?;
            for name in PINNED_MAPS {
                loader.map_pin_path(name, maps.join(name));
            }
        }
        let mut ebpf = loader
            .load(XDP_OBJECT)
            .context("loading the migr XDP object into the kernel (needs root or CAP_BPF)")?;
        for name in [MAIN_PROGRAM, FULL_PROGRAM, PASS_PROGRAM] {
            load_once(&mut ebpf, name)?;
        }
        set_full_path(&mut ebpf, full_path::FULL, FULL_PROGRAM)?;
        let tc = tc_program_mut(&mut ebpf)?;
        verify(TC_PROGRAM, || tc.load())?;
        let logs = LogReader::start(&mut ebpf, config.log)?;
        let mut dp = Self {
            ebpf,
            logs,
            replay_slots: None,
            replay_slots_unmappable: false,
            replay_capacity: None,
            listener_slots: port_listeners::SlotAllocator::new(LISTENER_SLOTS_LEN),
        };
        dp.mark_tables_in_use()?;
        Ok(dp)
    }

    /// Sets the `FLOW_PORTS` mark of every learned flow's destination port and
    /// names a listener of every listener's port in `PORT_LISTENERS`, so that
    /// re-used pinned tables (or these maps created fresh beside them) are
    /// never skipped by the fast path.
    fn mark_tables_in_use(&mut self) -> Result<()> {
        self.rebuild_port_listeners()?;
        // (The program marks a port itself before it learns a flow from a token.)
        let ports: Vec<u16> =
            HashMap::<_, FlowKey, u32>::try_from(lru(self.map(map_names::FLOWS)?)?)?
                .keys()
                .map(|key| key.map(|key| key.dst_port))
                .collect::<Result<_, _>>()?;
        for port in ports {
            self.mark_flow_port(port)?;
        }
        Ok(())
    }

    /// Marks `port` in `FLOW_PORTS` ([`migr_common::maps::FLOW_PORTS_LEN`]):
    /// a store of the whole entry, never cleared.
    fn mark_flow_port(&mut self, port: u16) -> Result<()> {
        let mut map = Array::<_, u32>::try_from(self.map_mut(map_names::FLOW_PORTS)?)?;
        map.set(u32::from(port), 1, 0)?;
        Ok(())
    }

    /// Is `port` marked in `FLOW_PORTS` (may a learned flow have it)?
    pub fn flow_port(&self, port: u16) -> Result<bool> {
        let map = Array::<_, u32>::try_from(self.map(map_names::FLOW_PORTS)?)?;
        Ok(map.get(&u32::from(port), 0)? != 0)
    }

    /// Attaches [`TC_PROGRAM`] at `iface`'s TC ingress through a bpf_link
    /// (TCX, Linux >= 6.6) pinned at `pin`, like [`Self::attach_pinned`]. A
    /// link left at `pin` by a previous agent is detached only once the new
    /// one is attached: for that moment both run, and the first to see a
    /// hand-over takes it (it clears the tag), so none is lost.
    pub fn attach_tc_pinned(&mut self, iface: &str, pin: &Path) -> Result<AttachedLink> {
        let prog = tc_program_mut(&mut self.ebpf)?;
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| {
                format!(
                    "attaching {TC_PROGRAM} to the TC ingress of {iface} (TCX needs Linux >= 6.6)"
                )
            })?;
        let link = prog.take_link(id)?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| anyhow!("{iface}: the TC link is not a bpf_link ({e})"))?;
        if pin.exists() {
            std::fs::remove_file(pin)
                .with_context(|| format!("removing the previous TC link pin {}", pin.display()))?;
        }
        let pinned = fd_link
            .pin(pin)
            .with_context(|| format!("pinning the TC link of {iface} at {}", pin.display()))?;
        Ok(AttachedLink {
            iface: iface.to_string(),
            mode: None,
            pin: pin.to_path_buf(),
            reused: false,
            link: FdLink::from(pinned),
        })
    }

    /// What the kernel says about a loaded program (any of the object's).
    pub fn program_info(&self, name: &str) -> Result<aya::programs::ProgramInfo> {
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        Ok(program.info()?)
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        program_mut(&mut self.ebpf, name)
    }

    /// Loads another XDP program of the object (the [`BREAKDOWN_PROGRAMS`]),
    /// over the same maps; one already loaded is left as it is. A breakdown
    /// copy brings the full classifier's copies it tail-calls.
    pub fn load_program(&mut self, name: &str) -> Result<()> {
        let names: &[&str] = if BREAKDOWN_PROGRAMS.iter().any(|(n, _)| *n == name) {
            &FULL_CUT_PROGRAMS
        } else {
            &[]
        };
        for (slot, cut) in (full_path::FIRST_CUT..).zip(names) {
            if load_once(&mut self.ebpf, cut)? {
                set_full_path(&mut self.ebpf, slot, cut)?;
            }
        }
        load_once(&mut self.ebpf, name)?;
        Ok(())
    }

    /// Pins this load's `FULL_PATH` at `<pin_dir>/full_path`, in place of
    /// a previous agent's. The agent calls it once its `migr` is attached to
    /// every interface: the pin keeps the array filled after the agent exits,
    /// while its `migr` stays attached (a program array that no descriptor
    /// or pin holds is emptied). The previous agent's array, unpinned, is
    /// emptied then; only that agent's `migr` used it, and it has been
    /// replaced. (Re-using the pinned array instead would let a `migr` of one
    /// load call the full classifier of another, whose transient maps, such
    /// as `TC_HANDOVERS`, its `migr_tc` does not read.)
    pub fn pin_full_path(&self, pin_dir: &Path) -> Result<()> {
        let path = pin_dir.join(FULL_PATH_PIN);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the previous {}", path.display()))?;
        }
        self.map(map_names::FULL_PATH)?
            .pin(&path)
            .with_context(|| format!("pinning {} at {}", map_names::FULL_PATH, path.display()))
    }

    /// Frames `migr` passed because `FULL_PATH` held no full classifier to
    /// take them (all CPUs; 0 unless something emptied the slot).
    pub fn full_path_missed(&self) -> Result<u64> {
        let map = PerCpuArray::<_, u64>::try_from(self.map(map_names::FULL_PATH_MISSED)?)?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Attaches `program` to `iface` (in the calling thread's network namespace).
    /// Returns the mode that took.
    pub fn attach(&mut self, program: &str, iface: &str, mode: AttachMode) -> Result<XdpMode> {
        self.attach_with_id(program, iface, mode).map(|(m, _)| m)
    }

    fn attach_with_id(
        &mut self,
        program: &str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(XdpMode, XdpLinkId)> {
        let prog = self.program(program)?;
        let try_attach = |prog: &mut Xdp, m: XdpMode| {
            prog.attach(iface, m)
                .map(|id| (m, id))
                .with_context(|| format!("attaching {program} to {iface} in {m:?} mode"))
        };
        match mode {
            AttachMode::Native => try_attach(prog, XdpMode::Driver),
            AttachMode::Skb => try_attach(prog, XdpMode::Skb),
            AttachMode::Auto => match try_attach(prog, XdpMode::Driver) {
                Ok(took) => Ok(took),
                Err(native_err) => {
                    tracing::warn!(%iface, error = %format!("{native_err:#}"), "native XDP refused, falling back to skb mode");
                    try_attach(prog, XdpMode::Skb)
                }
            },
        }
    }

    /// Attaches `program` to `iface` through a bpf_link pinned at `pin`, so
    /// that it stays attached when this process ends. If `pin` holds a link
    /// already (left by a previous agent), the program in that link is
    /// replaced atomically (no moment without a program); if that link is
    /// dead (its interface went away), it is replaced by a new one.
    pub fn attach_pinned(
        &mut self,
        program: &str,
        iface: &str,
        mode: AttachMode,
        pin: &Path,
    ) -> Result<AttachedLink> {
        if pin.exists() {
            match self.replace_in_pinned_link(program, pin) {
                Ok(link) => {
                    return Ok(AttachedLink {
                        iface: iface.to_string(),
                        mode: None,
                        pin: pin.to_path_buf(),
                        reused: true,
                        link,
                    });
                }
                Err(e) => {
                    tracing::warn!(%iface, pin = %pin.display(), error = %format!("{e:#}"),
                        "the pinned link cannot be re-used; attaching anew");
                    std::fs::remove_file(pin)
                        .with_context(|| format!("removing the stale pin {}", pin.display()))?;
                }
            }
        }
        let (took, id) = self
            .attach_with_id(program, iface, mode)
            .map_err(|e| another_program(iface, e))?;
        // Out of aya's link set, so that dropping the program does not detach it.
        let link = self.program(program)?.take_link(id)?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            anyhow!("{iface}: the kernel attached XDP through netlink, not a bpf_link ({e}); a restart-safe agent needs Linux 5.9 or later")
        })?;
        let pinned = fd_link
            .pin(pin)
            .with_context(|| format!("pinning the XDP link of {iface} at {}", pin.display()))?;
        Ok(AttachedLink {
            iface: iface.to_string(),
            mode: Some(took),
            pin: pin.to_path_buf(),
            reused: false,
            link: FdLink::from(pinned),
        })
    }

    fn replace_in_pinned_link(&mut self, program: &str, pin: &Path) -> Result<FdLink> {
        let pinned = PinnedLink::from_pin(pin)
            .with_context(|| format!("opening the pinned link {}", pin.display()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| anyhow!("{} is not an XDP link: {e}", pin.display()))?;
        let prog = self.program(program)?;
        let id = prog
            .attach_to_link(link)
            .context("replacing the program in the pinned link")?;
        let link = prog.take_link(id)?;
        FdLink::try_from(link).map_err(|e| anyhow!("{e}"))
    }

    /// A duplicate of a map's file descriptor, and the map's `max_entries`
    /// and kernel id.
    pub fn map_fd(&self, name: &str) -> Result<(OwnedFd, u32, u32)> {
        let data = match self.map(name)? {
            Map::RingBuf(d) | Map::Array(d) | Map::HashMap(d) | Map::PerCpuArray(d) => d,
            Map::DevMap(d) | Map::LruHashMap(d) => d,
            _ => bail!("map {name} has an unexpected type"),
        };
        let info = data.info()?;
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        Ok((fd, info.max_entries(), info.id()))
    }

    /// Replays `frames` (all received on `ifindex`, resolved in the calling
    /// thread's network namespace) through the classifier again, for real, in
    /// one BPF_PROG_TEST_RUN call with XDP live frames: run `i` makes the frame
    /// `frames[i]` (from `REPLAY_SLOTS`) and gives it `action` (PASS: into the
    /// local stack; FORWARD: the service's rewrite and TX/REDIRECT), whatever
    /// the service's current state (see [`ReplayMeta`]). Returns how many runs
    /// took place; if the call fails, [`Self::replay_progress`] says how many.
    pub fn replay_batch(&mut self, frames: &[&[u8]], ifindex: u32, action: Action) -> Result<u32> {
        const META: usize = size_of::<ReplayMeta>();
        let capacity = self.replay_capacity()?;
        if frames.is_empty() || frames.len() > capacity as usize {
            bail!(
                "a replay batch holds 1..={capacity} frames, not {}",
                frames.len()
            );
        }
        if let Some(frame) = frames.iter().find(|f| !replayable(f.len())) {
            bail!(
                "a {}-byte frame cannot be replayed (live frames take {MIN_REPLAY_FRAME}..={REPLAY_FRAME_MAX} bytes)",
                frame.len()
            );
        }
        if self.replay_slots.is_none() && !self.replay_slots_unmappable {
            let (fd, _, _) = self.map_fd(map_names::REPLAY_SLOTS)?;
            match crate::replay_slots::ReplaySlots::map(&fd, capacity) {
                Ok(mapped) => self.replay_slots = Some(mapped),
                Err(e) => {
                    tracing::info!(error = %format!("{e:#}"), "REPLAY_SLOTS cannot be mapped (pinned by an older agent?); writing it slot by slot");
                    self.replay_slots_unmappable = true;
                }
            }
        }
        if let Some(slots) = self.replay_slots.as_mut() {
            for (i, frame) in frames.iter().enumerate() {
                slots.write(i as u32, frame, action)?;
            }
        } else {
            let mut slots =
                Array::<_, ReplaySlot>::try_from(self.map_mut(map_names::REPLAY_SLOTS)?)?;
            let mut slot = ReplaySlot {
                len: 0,
                action: action as u32,
                data: [0; REPLAY_FRAME_MAX],
            };
            for (i, frame) in frames.iter().enumerate() {
                slot.len = frame.len() as u32;
                slot.data[..frame.len()].copy_from_slice(frame);
                slots.set(i as u32, slot, 0)?;
            }
        }
        self.set_replay_progress(0)?;
        // The input frame only carries the tag: every run replaces its bytes,
        // growing it with `bpf_xdp_adjust_tail`. It is as short as the kernel
        // takes because the kernel copies it into every run's fresh page: a
        // full-size input made that copy 40 % of a replay's kernel time.
        let mut data = [0u8; META + MIN_REPLAY_FRAME];
        data[..META].copy_from_slice(&ReplayMeta::to_bytes());
        // `data` is the metadata's length: the frame starts after the tag.
        let ctx = XdpMd {
            data: META as u32,
            data_end: data.len() as u32,
            ingress_ifindex: ifindex,
            ..XdpMd::default()
        }
        .to_bytes();
        let n = frames.len() as u32;
        self.program(MAIN_PROGRAM)?
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ctx_in: Some(&ctx),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(n),
                ..Default::default()
            })
            .with_context(|| format!("replaying {n} frames (BPF_PROG_TEST_RUN, live frames)"))?;
        self.replay_progress()
    }

    /// The most frames one replay batch takes: the slots of the
    /// `REPLAY_SLOTS` in use, which a map pinned by an older agent may hold
    /// fewer of than this build's [`REPLAY_BATCH`].
    pub fn replay_capacity(&mut self) -> Result<u32> {
        if let Some(capacity) = self.replay_capacity {
            return Ok(capacity);
        }
        let (_, max_entries, _) = self.map_fd(map_names::REPLAY_SLOTS)?;
        let capacity = max_entries.min(REPLAY_BATCH);
        if capacity == 0 {
            bail!("REPLAY_SLOTS has no entries");
        }
        self.replay_capacity = Some(capacity);
        Ok(capacity)
    }

    /// The descriptor that is readable when the program's debug logs have
    /// records (None: logs are off).
    pub fn log_fd(&self) -> Option<i32> {
        self.logs.as_ref().map(LogReader::fd)
    }

    /// The program's debug log records that waited (none when logs are off).
    pub fn drain_logs(&mut self) -> Vec<LogLine> {
        self.logs.as_mut().map(LogReader::drain).unwrap_or_default()
    }

    /// Runs of the last (or the interrupted) replay batch.
    pub fn replay_progress(&self) -> Result<u32> {
        let map = Array::<_, u32>::try_from(self.map(map_names::REPLAY_NEXT)?)?;
        Ok(map.get(&0, 0)?)
    }

    fn set_replay_progress(&mut self, runs: u32) -> Result<()> {
        let mut map = Array::<_, u32>::try_from(self.map_mut(map_names::REPLAY_NEXT)?)?;
        map.set(0, runs, 0)?;
        Ok(())
    }

    /// Packets seen per protocol class, summed over CPUs.
    pub fn proto_counters(&self) -> Result<[u64; ProtoClass::COUNT as usize]> {
        let map = self
            .ebpf
            .map(map_names::PROTO_COUNTERS)
            .ok_or_else(|| anyhow!("map PROTO_COUNTERS missing from the object"))?;
        let counters = PerCpuArray::<_, u64>::try_from(map)?;
        let mut out = [0u64; ProtoClass::COUNT as usize];
        for class in ProtoClass::ALL {
            let per_cpu = counters.get(&(class as u32), 0)?;
            out[class as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Writes a service's entry (its action, flags and forward target).
    pub fn set_service(&mut self, service_id: u32, entry: &ServiceEntry) -> Result<()> {
        check_service_id(service_id)?;
        let mut map = Array::<_, ServiceEntry>::try_from(self.map_mut(map_names::SERVICES)?)?;
        map.set(service_id, entry, 0)?;
        Ok(())
    }

    pub fn service(&self, service_id: u32) -> Result<ServiceEntry> {
        check_service_id(service_id)?;
        let map = Array::<_, ServiceEntry>::try_from(self.map(map_names::SERVICES)?)?;
        Ok(map.get(&service_id, 0)?)
    }

    pub fn set_listener(&mut self, key: &ListenerKey, entry: &ListenerEntry) -> Result<()> {
        check_service_id(entry.service_id)?;
        // Named before the entry: the fast path must never skip a listener that exists.
        if let Some(index) = port_listener_index(key.port, key.proto) {
            self.name_listener(index, Some((*key, *entry)))?;
        }
        let mut map = HashMap::<_, ListenerKey, ListenerEntry>::try_from(
            self.map_mut(map_names::LISTENERS)?,
        )?;
        if let Err(e) = map.insert(key, entry, 0) {
            self.name_port_listener(key.port, key.proto)?;
            return Err(e.into());
        }
        Ok(())
    }

    pub fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        let mut map = HashMap::<_, ListenerKey, ListenerEntry>::try_from(
            self.map_mut(map_names::LISTENERS)?,
        )?;
        map.remove(key)?;
        // Another of the port's listeners, or none (the agent is the only writer of LISTENERS).
        self.name_port_listener(key.port, key.proto)
    }

    pub fn set_server_id(&mut self, server_id: u32, service_id: u32) -> Result<()> {
        check_service_id(service_id)?;
        if server_id < SMALL_SERVER_ID_LIMIT {
            return self.set_small_server_id(server_id, service_id);
        }
        let mut map = HashMap::<_, u32, u32>::try_from(self.map_mut(map_names::SERVER_IDS)?)?;
        map.insert(server_id, service_id, 0)?;
        Ok(())
    }

    pub fn remove_server_id(&mut self, server_id: u32) -> Result<()> {
        if server_id < SMALL_SERVER_ID_LIMIT {
            return self.set_small_server_id(server_id, NO_SERVICE);
        }
        let mut map = HashMap::<_, u32, u32>::try_from(self.map_mut(map_names::SERVER_IDS)?)?;
        match map.remove(&server_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `SMALL_SERVER_IDS`' entry of `server_id` (below
    /// [`SMALL_SERVER_ID_LIMIT`]): a service id, or [`NO_SERVICE`] for none.
    fn set_small_server_id(&mut self, server_id: u32, service_id: u32) -> Result<()> {
        let mut map = Array::<_, u32>::try_from(self.map_mut(map_names::SMALL_SERVER_IDS)?)?;
        map.set(server_id, service_id, 0)?;
        Ok(())
    }

    pub fn listeners(&self) -> Result<Vec<(ListenerKey, ListenerEntry)>> {
        let map =
            HashMap::<_, ListenerKey, ListenerEntry>::try_from(self.map(map_names::LISTENERS)?)?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    pub fn remove_token(&mut self, token: u32) -> Result<()> {
        let mut map = HashMap::<_, u32, u32>::try_from(self.map_mut(map_names::TOKENS)?)?;
        match map.remove(&token) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The service an MPTCP token is installed for.
    pub fn token(&self, token: u32) -> Result<Option<u32>> {
        let map = HashMap::<_, u32, u32>::try_from(self.map(map_names::TOKENS)?)?;
        match map.get(&token, 0) {
            Ok(id) => Ok(Some(id)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn set_token(&mut self, token: u32, service_id: u32) -> Result<()> {
        check_service_id(service_id)?;
        let mut map = HashMap::<_, u32, u32>::try_from(self.map_mut(map_names::TOKENS)?)?;
        map.insert(token, service_id, 0)?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<(u32, u32)>> {
        let map = HashMap::<_, u32, u32>::try_from(self.map(map_names::TOKENS)?)?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    pub fn set_flow(&mut self, key: &FlowKey, service_id: u32) -> Result<()> {
        check_service_id(service_id)?;
        self.mark_flow_port(key.dst_port)?;
        let mut map = HashMap::<_, FlowKey, u32>::try_from(lru(self.map_mut(map_names::FLOWS)?)?)?;
        map.insert(key, service_id, 0)?;
        Ok(())
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<u32>> {
        let map = HashMap::<_, FlowKey, u32>::try_from(lru(self.map(map_names::FLOWS)?)?)?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the egress device of a service's FORWARD (resolved in the calling
    /// thread's network namespace).
    pub fn set_forward_device(&mut self, service_id: u32, ifindex: u32) -> Result<()> {
        check_service_id(service_id)?;
        let mut map = DevMap::try_from(self.map_mut(map_names::FORWARD_DEVICES)?)?;
        map.set(service_id, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to FORWARD_DEVICES"))?;
        Ok(())
    }

    /// A service's verdict counters, summed over CPUs.
    pub fn service_counters(&self, service_id: u32) -> Result<ServiceCounters> {
        let map =
            PerCpuArray::<_, ServiceCounters>::try_from(self.map(map_names::SERVICE_COUNTERS)?)?;
        let mut total = ServiceCounters::default();
        for cpu in map.get(&service_id, 0)?.iter() {
            for v in 0..Verdict::COUNT {
                total.packets[v] += cpu.packets[v];
                total.bytes[v] += cpu.bytes[v];
            }
        }
        Ok(total)
    }

    /// Global reason counters, summed over CPUs.
    pub fn reasons(&self) -> Result<[u64; Reason::COUNT as usize]> {
        let map = PerCpuArray::<_, u64>::try_from(self.map(map_names::REASONS)?)?;
        let mut out = [0u64; Reason::COUNT as usize];
        for reason in Reason::ALL {
            out[reason as usize] = map.get(&(reason as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Takes every frame currently in the `PARKED` ring, oldest first.
    pub fn drain_parked(&mut self) -> Result<Vec<ParkedFrame>> {
        let mut ring = RingBuf::<&mut MapData>::try_from(self.map_mut(map_names::PARKED)?)?;
        let mut frames = Vec::new();
        while let Some(item) = ring.next() {
            frames.push(decode_parked(&item)?);
        }
        Ok(frames)
    }

    /// Takes every event currently in the `EVENTS` ring, oldest first.
    pub fn drain_events(&mut self) -> Result<Vec<Event>> {
        let mut ring = RingBuf::<&mut MapData>::try_from(self.map_mut(map_names::EVENTS)?)?;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                bail!("short event record ({} bytes)", item.len());
            }
            // SAFETY: the record holds an Event written by the XDP program;
            // read_unaligned copes with the ring's 8-byte alignment.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
        Ok(events)
    }

    /// Runs `frame` once through the TC program; returns its verdict.
    pub fn test_run_tc(&mut self, frame: &[u8]) -> Result<i32> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = tc_program_mut(&mut self.ebpf)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN of the TC program")?;
        Ok(result.return_value as i32)
    }

    /// Runs `frame` once through `program` with BPF_PROG_TEST_RUN.
    pub fn test_run(&mut self, program: &str, frame: &[u8]) -> Result<TestRunOutcome> {
        self.test_run_repeated(program, frame, 1)
    }

    /// Runs `frame` through `program` `repeat` times in one BPF_PROG_TEST_RUN
    /// call (in the kernel, back to back: a burst no user-space loop makes,
    /// even in an emulated VM). The outcome is the last run's.
    pub fn test_run_repeated(
        &mut self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        // Room for programs that grow the frame (none do today, but a short
        // buffer would make the kernel fail the run with ENOSPC).
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: XdpAction::from(result.return_value),
            frame_out: out,
            duration: result.duration,
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, in
/// which the datapath's deadlines (`ServiceEntry::lease_until_ns`) are kept.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Smallest frame a replay can make (`bpf_xdp_adjust_tail` keeps an Ethernet header).
pub const MIN_REPLAY_FRAME: usize = 14;

/// Can a frame of `len` bytes be replayed? (See [`REPLAY_FRAME_MAX`].)
pub const fn replayable(len: usize) -> bool {
    len >= MIN_REPLAY_FRAME && len <= REPLAY_FRAME_MAX
}

fn check_service_id(service_id: u32) -> Result<()> {
    if service_id == 0 || service_id >= MAX_SERVICES {
        bail!("service id {service_id} out of range 1..{MAX_SERVICES}");
    }
    Ok(())
}

/// Decodes one `PARKED` ring record: a header, then the frame's bytes.
pub fn decode_parked(record: &[u8]) -> Result<ParkedFrame> {
    let header_len = size_of::<ParkedHeader>();
    if record.len() < header_len {
        bail!("short parked record ({} bytes)", record.len());
    }
    // SAFETY: the record starts with a ParkedHeader written by the XDP program.
    let header = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<ParkedHeader>()) };
    let copied = header.copied as usize;
    let frame = record
        .get(header_len..header_len + copied)
        .ok_or_else(|| {
            anyhow!(
                "parked record claims {copied} bytes but holds {}",
                record.len() - header_len
            )
        })?
        .to_vec();
    Ok(ParkedFrame { header, frame })
}

/// The attach error, said plainly when another XDP program holds `iface`:
/// the kernel answers EBUSY (a bpf_link holds it, or netlink attached one
/// and a link may not replace it) or EEXIST (one in the other mode).
fn another_program(iface: &str, e: anyhow::Error) -> anyhow::Error {
    let busy = e.chain().any(|c| {
        let code = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error());
        matches!(code, Some(libc::EBUSY) | Some(libc::EEXIST))
    });
    if !busy {
        return e;
    }
    anyhow!(
        "another XDP program is attached to {iface} (`ip link show dev {iface}` shows its id; \
         `bpftool net show dev {iface}` its name). An interface holds one XDP program and migr \
         does not chain behind another: remove it (`ip link set dev {iface} xdp off`, or stop the \
         tool that attached it) or run migr on another interface, then start the agent again. \
         The other program was left as it is. ({e:#})"
    )
}

fn tc_program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(TC_PROGRAM)
        .ok_or_else(|| anyhow!("program {TC_PROGRAM} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {TC_PROGRAM} is not a TC classifier"))
}

/// Loads `name` unless it is loaded; true if it was loaded now.
fn load_once(ebpf: &mut Ebpf, name: &str) -> Result<bool> {
    let program = program_mut(ebpf, name)?;
    if program.fd().is_ok() {
        return Ok(false);
    }
    verify(name, || program.load())?;
    Ok(true)
}

/// Runs a program's `load`, again if the verifier was interrupted: it stops
/// with EAGAIN when the loading thread has a signal pending (libbpf retries
/// such loads too), and `migr_full` takes long enough to meet one.
fn verify(name: &str, mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<()> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            result => {
                return result.with_context(|| format!("the verifier refused program {name}"));
            }
        }
    }
}

/// Puts the loaded program `name` into `FULL_PATH`'s `slot`.
fn set_full_path(ebpf: &mut Ebpf, slot: u32, name: &str) -> Result<()> {
    let fd = program_mut(ebpf, name)?.fd()?.try_clone()?;
    let map = ebpf
        .map_mut(map_names::FULL_PATH)
        .ok_or_else(|| anyhow!("map {} missing from the object", map_names::FULL_PATH))?;
    ProgramArray::try_from(map)?
        .set(slot, &fd, 0)
        .with_context(|| format!("putting {name} into {}[{slot}]", map_names::FULL_PATH))?;
    Ok(())
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel side of the contract: the built object declares every map
    /// the agent opens by name, FLOWS as the LRU the agent expects.
    #[test]
    fn the_object_declares_every_map_the_agent_names() {
        let object = aya_obj::Object::parse(XDP_OBJECT).expect("the built XDP object parses");
        for name in map_names::PINNED.iter().chain(&[map_names::TC_HANDOVERS]) {
            assert!(
                object.maps.contains_key(*name),
                "map {name} is missing from the object"
            );
        }
        let flows = &object.maps[map_names::FLOWS];
        assert_eq!(
            flows.map_type(),
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
        );
        assert_eq!(flows.max_entries(), map_sizes::FLOWS);
    }
}
