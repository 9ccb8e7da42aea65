//! The agent's core: one thread that owns the datapath, the park ring, the
//! parked-frame stores and the phase machines, and executes control
//! requests between pumping the ring and replaying frames.
//!
//! Everything that touches the datapath happens on this thread, in order, so
//! a phase change and the replay that follows it can never interleave with
//! another request. The control socket and the metrics endpoint (tokio) send
//! requests here over a channel and wake the thread through an eventfd.
//!
//! See docs/agent.md for the storage and replay design.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::XdpMode;
use migr_common::{
    checksum::{L4Checksum, complete_partial},
    cid::CidConfig,
    maps::{
        Action, EventKind, FAMILY_V4, FAMILY_V6, FlowKey, ForwardMode, ForwardPath, ForwardTarget,
        LISTENER_QUIC, LISTENER_QUIC_GREASE, ListenerEntry, ListenerKey, ProtoClass, REPLAY_BATCH,
        REPLAY_FRAME_MAX, Reason, SERVICE_ACTIVE, SERVICE_HOLD, SERVICE_MPTCP, ServiceEntry,
        Verdict,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::{
    datapath::{
        AttachMode, AttachedLink, Datapath, DatapathConfig, MAIN_PROGRAM, decode_parked, replayable,
    },
    early_joins::EarlyJoins,
    forward_path::{self, EgressFacts, ForwardPathChoice},
    netdev::{if_index, if_link, if_mac},
    parkring::{ParkRing, Peek},
    socket_room::SocketWatch,
    spool::{Spool, StoredFrame},
    statefile::StateFile,
    tables::mptcp_token,
};
use migr_control::{
    api::{
        self, AgentInfo, ApiError, Count, CriuArgs, ErrorCode, ForwardModeSpec, ForwardSpec, Op,
        ParkLimit, ParkedStats, PhaseArgs, PhaseResult, RemoveArgs, ReplayStats, RuleProto,
        ServiceRef, ServiceSpec, ServiceStatus, Stats,
    },
    phase::{CriuDecision, DatapathState, PhaseMachine, ReplayStage, State, Timing, criu_decision},
};

/// Everything the engine needs to start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub datapath: DatapathConfig,
    pub default_limit: ParkLimit,
    pub timing: Timing,
    /// Default pace of backlog replays, in frames per second (0: as fast as
    /// the kernel takes them). A service's `replay_rate` overrides it.
    pub replay_rate: u64,
    /// Frames a paced replay may send at once.
    pub replay_burst: u64,
    /// How FORWARDs leave the node (see `forward_path`).
    pub forward_path: ForwardPathChoice,
}

/// A request for the engine thread.
pub enum Call {
    Op {
        op: Box<Op>,
        /// When the request was read from the socket (for the latency figure).
        received: Instant,
        /// A `service.add`'s forward target, resolved off the engine thread.
        resolved: Option<Result<ResolvedForward, ApiError>>,
        reply: oneshot::Sender<Result<Value, ApiError>>,
    },
    Shutdown {
        /// Detach the XDP program (otherwise it stays attached, pinned).
        detach: bool,
        reply: oneshot::Sender<()>,
    },
}

/// The other threads' handle on the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Call>,
    wake: Arc<OwnedFd>,
}

impl EngineHandle {
    fn send(&self, call: Call) -> bool {
        if self.tx.send(call).is_err() {
            return false;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        true
    }

    /// Runs `op` on the engine thread.
    pub async fn call(&self, op: Op, received: Instant) -> Result<Value, ApiError> {
        // Finding a next hop's MAC may wait up to a second for ARP: not on
        // the engine thread, where it would hold up every other request.
        let resolved = match &op {
            Op::ServiceAdd(ServiceSpec {
                forward: Some(f), ..
            }) => {
                let f = f.clone();
                Some(
                    tokio::task::spawn_blocking(move || resolve_forward(&f))
                        .await
                        .unwrap_or_else(|e| Err(internal(e))),
                )
            }
            _ => None,
        };
        let (reply, rx) = oneshot::channel();
        if !self.send(Call::Op {
            op: Box::new(op),
            received,
            resolved,
            reply,
        }) {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the agent is shutting down",
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Internal,
                "the agent is shutting down",
            ))
        })
    }

    /// Stops the engine; returns when it has stopped.
    pub async fn shutdown(&self, detach: bool) {
        let (reply, rx) = oneshot::channel();
        if self.send(Call::Shutdown { detach, reply }) {
            let _ = rx.await;
        }
    }
}

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
struct Totals {
    stored_frames: u64,
    stored_bytes: u64,
    overflow_frames: u64,
    overflow_bytes: u64,
    #[serde(default)]
    checksums_completed: u64,
    #[serde(default)]
    checksums_bad: u64,
    replay: ReplayStats,
}

#[derive(Serialize, Deserialize)]
struct PersistedService {
    spec: ServiceSpec,
    forward: Option<ResolvedForward>,
    machine: PhaseMachine,
    totals: Totals,
    last_latency_us: Option<u64>,
    /// The store as it was when `totals` were saved.
    #[serde(default)]
    spool_mark: Option<SpoolMark>,
}

/// Where a service's store stood when the state was saved. The state is
/// saved at most once a second during a replay, the store's cursor on every
/// batch; a restarted agent counts the frames stored and replayed in
/// between from the store ([`catch_up_totals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SpoolMark {
    first_ring_pos: Option<u64>,
    len: u64,
    done: u64,
}

#[derive(Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    services: Vec<PersistedService>,
}

const STATE_VERSION: u32 = 1;

struct ReplayRun {
    started: Instant,
    replayed_before: u64,
}

struct Service {
    spec: ServiceSpec,
    forward: Option<ResolvedForward>,
    machine: PhaseMachine,
    totals: Totals,
    spool: Spool,
    limit: ParkLimit,
    last_latency_us: Option<u64>,
    replay_run: Option<ReplayRun>,
    /// The restored process CRIU named (`CRTOOLS_INIT_PID`), whose
    /// namespace's sockets a local replay watches; not persisted (after a
    /// restart the replay goes on paced by the token bucket alone).
    init_pid: Option<u32>,
    socket_watch: Option<SocketWatch>,
}

impl Service {
    fn mptcp(&self) -> bool {
        self.spec.rules.iter().any(|r| r.proto == RuleProto::Mptcp)
    }

    fn entry(&self, dps: DatapathState) -> ServiceEntry {
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
        }
    }
}

/// The engine; see the module docs.
pub struct Engine {
    cfg: EngineConfig,
    dp: Datapath,
    ring: ParkRing,
    events_fd: OwnedFd,
    links: Vec<AttachedLink>,
    /// The TC ingress links of `migr_tc`, one per interface in `links`.
    tc_links: Vec<AttachedLink>,
    /// Where the state is saved.
    state_file: StateFile,
    /// Why `migr_tc` could not be attached, if it could not (FORWARDs on
    /// the TC path are then refused).
    tc_error: Option<String>,
    services: BTreeMap<u32, Service>,
    started: Instant,
    dirty: bool,
    last_persist: Instant,
    unknown_records: u64,
    /// MP_JOINs that arrived before their token, kept until it is installed.
    early_joins: EarlyJoins,
    late_joins_learned: u64,
    rx: mpsc::Receiver<Call>,
    wake: Arc<OwnedFd>,
    error_backoff_until: Option<Instant>,
    /// A paced replay may go on at this time.
    next_replay_at: Option<Instant>,
    /// flock on the state directory: one agent per state directory.
    _lock: std::fs::File,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn to_value<T: Serialize>(v: Result<T, ApiError>) -> Result<Value, ApiError> {
    v.and_then(|x| serde_json::to_value(x).map_err(internal))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

fn datapath_err(e: anyhow::Error) -> ApiError {
    ApiError::new(ErrorCode::Datapath, format!("{e:#}"))
}

impl Engine {
    /// Loads (or re-opens) the datapath, attaches it, recovers the stored
    /// state, and starts the engine thread.
    pub fn start(cfg: EngineConfig) -> Result<(EngineHandle, std::thread::JoinHandle<()>)> {
        // SAFETY: plain eventfd creation.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            bail!("eventfd: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let (tx, rx) = mpsc::channel();
        let engine = Self::init(cfg, rx, wake.clone())?;
        let thread = std::thread::Builder::new()
            .name("migr-engine".into())
            .spawn(move || engine.run())?;
        Ok((EngineHandle { tx, wake }, thread))
    }

    fn init(cfg: EngineConfig, rx: mpsc::Receiver<Call>, wake: Arc<OwnedFd>) -> Result<Self> {
        std::fs::create_dir_all(&cfg.pin_dir)
            .with_context(|| format!("creating the pin directory {}", cfg.pin_dir.display()))?;
        let spool_dir = cfg.state_dir.join("spool");
        std::fs::create_dir_all(&spool_dir)
            .with_context(|| format!("creating {}", spool_dir.display()))?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let reused = cfg.pin_dir.join("PARKED").exists();
        let replay_counter_kept = cfg.pin_dir.join("REPLAY_NEXT").exists();
        let dp = Datapath::load_pinned(&cfg.datapath, &cfg.pin_dir)?;
        // Runs of the replay batch a killed agent left unfinished (see spool.rs).
        let batch_runs = match replay_counter_kept {
            true => Some(u64::from(dp.replay_progress()?)),
            false => None,
        };
        let (ring_fd, ring_size, ring_id) = dp.map_fd("PARKED")?;
        let ring = ParkRing::new(ring_fd, ring_size, ring_id)?;
        let (events_fd, _, _) = dp.map_fd("EVENTS")?;
        tracing::info!(
            pin_dir = %cfg.pin_dir.display(),
            maps = if reused { "re-opened" } else { "created" },
            ring_bytes = ring_size,
            ring_backlog = ring.backlog(),
            "datapath loaded"
        );

        let mut engine = Self {
            state_file: StateFile::new(&cfg.state_dir),
            cfg,
            dp,
            ring,
            events_fd,
            links: Vec::new(),
            tc_links: Vec::new(),
            tc_error: None,
            services: BTreeMap::new(),
            started: Instant::now(),
            dirty: false,
            last_persist: Instant::now(),
            unknown_records: 0,
            early_joins: EarlyJoins::default(),
            late_joins_learned: 0,
            rx,
            wake,
            error_backoff_until: None,
            next_replay_at: None,
            _lock: lock,
        };
        engine.recover_state(batch_runs)?;
        engine.deactivate_strangers()?;
        engine.attach_all()?;
        engine.refresh_forward_paths();
        engine.persist()?;
        Ok(engine)
    }

    fn spool_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("spool")
    }

    /// Re-reads the saved state and the stores, and re-installs every
    /// service's datapath entries (idempotent; needed if the pins were lost).
    fn recover_state(&mut self, batch_runs: Option<u64>) -> Result<()> {
        let dir = self.cfg.state_dir.clone();
        let Some(text) = self.state_file.load()? else {
            return Ok(());
        };
        let state: PersistedState = serde_json::from_slice(&text).with_context(|| {
            format!(
                "parsing the saved state in {} (`migr-agent cleanup` starts afresh)",
                dir.display()
            )
        })?;
        if state.version != STATE_VERSION {
            bail!(
                "the saved state in {} has version {}, this agent reads version {STATE_VERSION}",
                dir.display(),
                state.version
            );
        }
        for ps in state.services {
            let id = ps.spec.id;
            let (spool, recovered) =
                Spool::open(&self.spool_dir(), id, self.ring.map_id, batch_runs)?;
            let limit = ps.spec.park_limit.unwrap_or(self.cfg.default_limit);
            let mut svc = Service {
                spec: ps.spec,
                forward: ps.forward,
                machine: ps.machine,
                totals: ps.totals,
                spool,
                limit,
                last_latency_us: ps.last_latency_us,
                replay_run: None,
                init_pid: None,
                socket_watch: None,
            };
            if let Some(mark) = ps.spool_mark {
                catch_up_totals(&mut svc, mark, recovered.uncertain);
            }
            svc.totals.replay.uncertain_frames += recovered.uncertain;
            if svc.machine.replay == Some(ReplayStage::Backlog) {
                svc.replay_run = Some(ReplayRun {
                    started: Instant::now(),
                    replayed_before: svc.totals.replay.replayed_frames
                        + svc.totals.replay.failed_frames,
                });
            }
            // The interface may have been re-created: resolve its index again.
            if let (Some(fwd), Some(resolved)) = (&svc.spec.forward, svc.forward.as_mut())
                && let Ok(ifindex) = if_index(&fwd.iface)
            {
                resolved.ifindex = ifindex;
            }
            tracing::info!(
                service = %svc.spec.name, id,
                state = svc.machine.state.name(),
                stored = recovered.frames, pending = recovered.pending,
                torn_bytes = recovered.torn_bytes, uncertain = recovered.uncertain,
                "service recovered"
            );
            self.install(&svc)
                .map_err(|e| anyhow!("re-installing service {id}: {e}"))?;
            self.services.insert(id, svc);
        }
        Ok(())
    }

    /// Active datapath entries this agent has no state for (the state was
    /// lost, but the pins were not) would park or forward with nobody to
    /// replay: they are switched off (PASS), failing open.
    fn deactivate_strangers(&mut self) -> Result<()> {
        for id in 1..migr_common::maps::MAX_SERVICES {
            if self.services.contains_key(&id) {
                continue;
            }
            let entry = self.dp.service(id)?;
            if entry.flags & SERVICE_ACTIVE != 0 {
                tracing::warn!(
                    id,
                    action = entry.action,
                    "the datapath has a service this agent has no state for; switching it off (PASS)"
                );
                self.dp.set_service(id, &ServiceEntry::default())?;
            }
        }
        Ok(())
    }

    /// Picks the FORWARD path of every recovered service again: the saved
    /// one was chosen with another agent's attachments (or before paths
    /// existed), and the TC program may not have attached this time.
    fn refresh_forward_paths(&mut self) {
        let ids: Vec<u32> = self.services.keys().copied().collect();
        for id in ids {
            let svc = &self.services[&id];
            let (Some(spec), Some(resolved)) = (svc.spec.forward.clone(), svc.forward) else {
                continue;
            };
            let name = svc.spec.name.clone();
            let chosen = match self.with_forward_path(&spec, resolved) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(service = %name, error = %e,
                        "this service's FORWARDs cannot leave the node: its frames pass to the local stack unforwarded");
                    ResolvedForward {
                        tc: true,
                        ..resolved
                    }
                }
            };
            if chosen == resolved {
                continue;
            }
            let svc = self.services.get_mut(&id).expect("listed above");
            svc.forward = Some(chosen);
            let entry = svc.entry(svc.machine.datapath());
            match self.dp.set_service(id, &entry) {
                Ok(()) => {
                    tracing::info!(service = %name, path = if chosen.tc { "tc" } else { "xdp" },
                    "forward path chosen anew")
                }
                Err(e) => tracing::error!(service = %name, error = %format!("{e:#}"),
                    "could not update the forward path"),
            }
            self.dirty = true;
        }
    }

    fn attach_all(&mut self) -> Result<()> {
        let wanted: Vec<String> = self.cfg.ifaces.clone();
        for iface in &wanted {
            let pin = self.cfg.pin_dir.join(format!("link-{iface}"));
            let link = self
                .dp
                .attach_pinned(MAIN_PROGRAM, iface, self.cfg.mode, &pin)?;
            if link.reused {
                tracing::info!(%iface, "re-used the pinned XDP link (program replaced in place)");
            } else {
                tracing::info!(%iface, mode = ?link.mode, "attached");
            }
            self.links.push(link);
            let tc_pin = self.cfg.pin_dir.join(format!("tc-{iface}"));
            match self.dp.attach_tc_pinned(iface, &tc_pin) {
                Ok(link) => self.tc_links.push(link),
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(%iface, error = %e, "the TC forward program is not attached: FORWARDs through veths and in skb mode will be refused");
                    self.tc_error = Some(e);
                }
            }
        }
        // Links a previous agent left for interfaces no longer asked for.
        if let Ok(entries) = std::fs::read_dir(&self.cfg.pin_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(iface) = name.strip_prefix("link-").or(name.strip_prefix("tc-"))
                    && !wanted.iter().any(|w| w == iface)
                {
                    tracing::warn!(%iface, pin = %name, "detaching a pinned link left for an interface not in --iface");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    fn persist(&mut self) -> Result<()> {
        let state = PersistedState {
            version: STATE_VERSION,
            services: self
                .services
                .values()
                .map(|s| PersistedService {
                    spec: s.spec.clone(),
                    forward: s.forward,
                    machine: s.machine.clone(),
                    totals: s.totals.clone(),
                    last_latency_us: s.last_latency_us,
                    spool_mark: Some(SpoolMark {
                        first_ring_pos: s.spool.first_ring_pos(),
                        len: s.spool.len() as u64,
                        done: s.spool.done() as u64,
                    }),
                })
                .collect(),
        };
        self.state_file.save(&serde_json::to_vec(&state)?)?;
        self.dirty = false;
        self.last_persist = Instant::now();
        Ok(())
    }

    fn persist_or_log(&mut self) {
        if let Err(e) = self.persist() {
            tracing::error!(error = %format!("{e:#}"), "could not save the agent state");
        }
    }

    // -----------------------------------------------------------------
    // The loop

    fn run(mut self) {
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(Call::Op {
                        op,
                        received,
                        resolved,
                        reply,
                    }) => {
                        let result = self.handle(*op, received, resolved);
                        let _ = reply.send(result);
                    }
                    Ok(Call::Shutdown { detach, reply }) => {
                        self.shutdown(detach);
                        let _ = reply.send(());
                        return;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.shutdown(false);
                        return;
                    }
                }
            }
            let mut busy = false;
            if self.error_backoff_until.is_none_or(|t| Instant::now() >= t) {
                match self.pump_ring() {
                    Ok(n) => busy |= n > 0,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "storing parked frames failed; retrying in 100 ms (the frames stay in the ring)");
                        self.error_backoff_until =
                            Some(Instant::now() + Duration::from_millis(100));
                    }
                }
            }
            busy |= self.replay_backlogs(256);
            self.tick();
            if self.dirty && self.last_persist.elapsed() >= Duration::from_secs(1) {
                self.persist_or_log();
            }
            if !busy {
                self.wait();
            }
        }
    }

    /// Sleeps until the ring or the events ring has data, a request arrives,
    /// or the next timer is due.
    fn wait(&mut self) {
        let now = now_ms();
        let mut timeout: i64 = 1000;
        for svc in self.services.values() {
            if let Some(t) = svc.machine.next_deadline_ms() {
                // Clamped before the cast: a far deadline (drain_ms = u64::MAX)
                // would wrap negative and turn the poll below into a spin.
                timeout = timeout.min(t.saturating_sub(now).min(1000) as i64);
            }
        }
        for t in [self.error_backoff_until, self.next_replay_at]
            .into_iter()
            .flatten()
        {
            // Round up: waking early only spins.
            let us = t.saturating_duration_since(Instant::now()).as_micros() as i64;
            timeout = timeout.min((us + 999) / 1000);
        }
        let mut fds = [
            libc::pollfd {
                fd: self.ring.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.events_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if self.error_backoff_until.is_some() {
            // Do not spin on a ring we cannot drain right now.
            fds[0].events = 0;
        }
        // SAFETY: poll on three valid fds.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.max(0) as i32,
            )
        };
        if fds[2].revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reading the eventfd counter (non-blocking).
            unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
        if fds[1].revents & libc::POLLIN != 0 {
            self.pump_events();
        }
    }

    fn shutdown(&mut self, detach: bool) {
        self.persist_or_log();
        for svc in self.services.values() {
            let pending = svc.spool.pending();
            if pending > 0 {
                tracing::warn!(service = %svc.spec.name, pending,
                    "parked frames remain stored; a restarted agent replays them");
            }
        }
        let tc_links: Vec<AttachedLink> = self.tc_links.drain(..).collect();
        for link in self.links.drain(..).chain(tc_links) {
            let iface = link.iface.clone();
            if detach {
                match link.detach() {
                    Ok(()) => tracing::info!(%iface, "detached"),
                    Err(e) => tracing::error!(%iface, error = %format!("{e:#}"), "detach failed"),
                }
            } else {
                link.keep();
                tracing::info!(%iface, "left attached (pinned) for an in-place restart");
            }
        }
    }

    // -----------------------------------------------------------------
    // Parked frames

    /// Moves committed records from the ring into the stores (or, for a
    /// service that is not parking, replays them at once), and consumes them
    /// afterwards. Returns the number of records handled.
    fn pump_ring(&mut self) -> Result<usize> {
        let mut pos = self.ring.consumer_pos();
        let mut batch: BTreeMap<u32, Vec<StoredFrame>> = BTreeMap::new();
        let mut handled = 0usize;
        while handled < 4096 {
            let (record_pos, next, parsed) = match self.ring.peek(pos) {
                Peek::Empty | Peek::Busy => break,
                Peek::Record(r) => {
                    let parsed = if r.discarded {
                        None
                    } else {
                        Some(decode_parked(r.data))
                    };
                    (r.pos, r.next, parsed)
                }
            };
            handled += 1;
            let Some(parsed) = parsed else {
                pos = next;
                continue;
            };
            let frame = match parsed {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "skipping an unreadable parked record");
                    pos = next;
                    continue;
                }
            };
            let id = frame.header.service_id;
            let Some(svc) = self.services.get_mut(&id) else {
                self.unknown_records += 1;
                pos = next;
                continue;
            };
            let stored = StoredFrame {
                ring_pos: record_pos,
                ifindex: frame.header.ifindex,
                timestamp_ns: frame.header.timestamp_ns,
                frame: frame.frame,
            };
            // Stored already, but not consumed (the agent was killed, or a
            // write failed and the batch is being retried).
            let already = svc.spool.max_ring_pos().is_some_and(|p| p >= record_pos);
            if svc.machine.parking() {
                if already {
                    pos = next;
                    continue;
                }
                let queued = batch.get(&id);
                let queued_frames = queued.map_or(0, Vec::len) as u64;
                let queued_bytes: u64 =
                    queued.map_or(0, |q| q.iter().map(|f| f.frame.len() as u64).sum());
                let len = stored.frame.len() as u64;
                if svc.spool.pending() as u64 + queued_frames >= svc.limit.frames
                    || svc.spool.pending_bytes() + queued_bytes + len > svc.limit.bytes
                {
                    svc.totals.overflow_frames += 1;
                    svc.totals.overflow_bytes += len;
                    if svc.totals.overflow_frames.is_power_of_two() {
                        tracing::warn!(service = %svc.spec.name,
                            overflow_frames = svc.totals.overflow_frames,
                            limit_frames = svc.limit.frames, limit_bytes = svc.limit.bytes,
                            "parked-frame store full: dropping the newest frames");
                    }
                    self.dirty = true;
                } else {
                    batch.entry(id).or_default().push(stored);
                }
                pos = next;
                continue;
            }
            // Not parking (replay settling or over): this record must be
            // delivered now, behind everything older, and stay in the ring
            // (keeping held services parked) until it has been.
            self.flush_batch(&mut batch)?;
            self.ring.consume_to(record_pos);
            let svc = self.services.get_mut(&id).expect("checked above");
            if !already {
                let mut frames = vec![stored];
                complete_checksums(&mut svc.totals, &mut frames);
                svc.totals.stored_frames += 1;
                svc.totals.stored_bytes += frames[0].frame.len() as u64;
                svc.spool.append(frames)?;
            }
            let action = svc.machine.target_action();
            replay_pending(&mut self.dp, svc, action, usize::MAX);
            self.ring.consume_to(next);
            if svc.spool.pending() == 0 && svc.spool.len() >= 1024 {
                compact_if_consumed(svc, next);
            }
            self.dirty = true;
            pos = next;
        }
        self.flush_batch(&mut batch)?;
        self.ring.consume_to(pos);
        Ok(handled)
    }

    fn flush_batch(&mut self, batch: &mut BTreeMap<u32, Vec<StoredFrame>>) -> Result<()> {
        for (id, mut frames) in std::mem::take(batch) {
            if let Some(svc) = self.services.get_mut(&id) {
                complete_checksums(&mut svc.totals, &mut frames);
                svc.totals.stored_frames += frames.len() as u64;
                svc.totals.stored_bytes += frames.iter().map(|f| f.frame.len() as u64).sum::<u64>();
                svc.spool.append(frames)?;
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Replays up to `budget` stored frames of each service in the backlog
    /// stage; moves a service on when its store is empty. Returns whether it
    /// replayed anything.
    fn replay_backlogs(&mut self, budget: usize) -> bool {
        let ids: Vec<u32> = self
            .services
            .iter()
            .filter(|(_, s)| {
                s.machine.replay == Some(ReplayStage::Backlog)
                    && !matches!(s.machine.state, State::Frozen | State::Restoring)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut did = false;
        self.next_replay_at = None;
        for id in ids {
            let Some(svc) = self.services.get_mut(&id) else {
                continue;
            };
            let action = svc.machine.target_action();
            let rate = svc.spec.replay_rate.unwrap_or(self.cfg.replay_rate);
            if svc.replay_run.is_none() {
                // A new replay: watch the sockets of the process CRIU named now.
                svc.socket_watch = None;
                svc.replay_run = Some(ReplayRun {
                    started: Instant::now(),
                    replayed_before: svc.totals.replay.replayed_frames,
                });
            }
            let mut allowed = budget;
            // A local replay into sockets it can watch goes as fast as the
            // service reads; otherwise the token bucket paces it.
            let room = if action == Action::Pass {
                socket_room(svc)
            } else {
                usize::MAX
            };
            if room == 0 {
                // The service has not read what it got yet.
                svc.totals.replay.socket_waits += 1;
                let due = Instant::now() + SOCKET_FULL_RETRY;
                self.next_replay_at = Some(self.next_replay_at.map_or(due, |t| t.min(due)));
                continue;
            }
            allowed = allowed.min(room);
            let run = svc.replay_run.as_ref().expect("set above");
            if rate > 0 && room == usize::MAX {
                // Token bucket: `burst` at once, then `rate` per second.
                let elapsed = run.started.elapsed().as_secs_f64();
                let done = svc.totals.replay.replayed_frames + svc.totals.replay.failed_frames
                    - run.replayed_before;
                let total = self.cfg.replay_burst as f64 + rate as f64 * elapsed;
                allowed = allowed.min((total as u64).saturating_sub(done) as usize);
                if allowed == 0 {
                    let due = run.started
                        + Duration::from_secs_f64(
                            (done + 1).saturating_sub(self.cfg.replay_burst) as f64 / rate as f64,
                        );
                    self.next_replay_at = Some(self.next_replay_at.map_or(due, |t| t.min(due)));
                    continue;
                }
            }
            did |= replay_pending(&mut self.dp, svc, action, allowed) > 0;
            if svc.spool.pending() > 0 {
                continue;
            }
            let now = now_ms();
            let Some(dps) = svc.machine.backlog_drained(now) else {
                continue;
            };
            if action == Action::Pass {
                // Drops the last frames caused, for the record.
                socket_room(svc);
            }
            if let Some(run) = svc.replay_run.take() {
                let frames = svc.totals.replay.replayed_frames + svc.totals.replay.failed_frames
                    - run.replayed_before;
                let took = run.started.elapsed();
                let r = &mut svc.totals.replay;
                r.last_frames = frames;
                r.last_duration_us = took.as_micros() as u64;
                r.last_rate_fps = if took.as_secs_f64() > 0.0 {
                    frames as f64 / took.as_secs_f64()
                } else {
                    0.0
                };
                tracing::info!(service = %svc.spec.name, id, frames,
                    duration_ms = took.as_secs_f64() * 1e3,
                    rate_fps = r.last_rate_fps.round(),
                    action = action.name(),
                    "backlog replayed");
            }
            compact_if_consumed(svc, self.ring.consumer_pos());
            let entry = svc.entry(dps);
            let name = svc.spec.name.clone();
            if let Err(e) = self.dp.set_service(id, &entry) {
                tracing::error!(service = %name, error = %format!("{e:#}"), "datapath update failed");
            }
            tracing::info!(service = %name, id, at_ms = now, datapath = %describe(dps),
                "replay settling: fresh frames pass through, held behind any unconsumed parked record");
            self.persist_or_log();
        }
        did
    }

    fn tick(&mut self) {
        let now = now_ms();
        let mut changed = Vec::new();
        for (id, svc) in &mut self.services {
            let before = svc.machine.state;
            if let Some(dps) = svc.machine.tick(now) {
                changed.push((*id, svc.entry(dps), dps, before, svc.machine.state));
            }
        }
        for (id, entry, dps, before, after) in changed {
            let name = self.services[&id].spec.name.clone();
            if let Err(e) = self.dp.set_service(id, &entry) {
                tracing::error!(service = %name, error = %format!("{e:#}"), "datapath update failed");
            }
            if before != after {
                tracing::info!(service = %name, id, from = before.name(), to = after.name(),
                    at_ms = now, datapath = %describe(dps), cause = "drain time passed",
                    "phase transition");
            } else {
                tracing::info!(service = %name, id, at_ms = now, datapath = %describe(dps),
                    "replay done");
            }
            self.persist_or_log();
        }
    }

    /// MPTCP keys → tokens; joins that overtook their token → learned late.
    fn pump_events(&mut self) {
        let events = match self.dp.drain_events() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading datapath events failed");
                return;
            }
        };
        let now = Instant::now();
        for ev in events {
            if ev.kind == EventKind::UnknownJoin as u32 {
                // The token may have been installed since the SYN went by.
                match self.dp.token(ev.token) {
                    Ok(Some(service_id)) => self.learn_late_join(&ev.flow, service_id, ev.token),
                    _ => self.early_joins.note(now, ev.token, ev.flow),
                }
                continue;
            }
            if ev.kind != EventKind::MptcpKeys as u32 {
                continue;
            }
            let Some(svc) = self.services.get(&ev.service_id) else {
                continue;
            };
            if !svc.mptcp() || ev.receiver_key == 0 {
                continue;
            }
            let token = mptcp_token(ev.receiver_key);
            match self.dp.set_token(token, ev.service_id) {
                Ok(()) => {
                    tracing::debug!(service = %svc.spec.name, token = format!("{token:08x}"), "learned an MPTCP token");
                    for flow in self.early_joins.take(now, token) {
                        self.learn_late_join(&flow, ev.service_id, token);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "installing an MPTCP token failed")
                }
            }
        }
    }

    /// Learns the subflow of an MP_JOIN that arrived before its token.
    fn learn_late_join(&mut self, flow: &FlowKey, service_id: u32, token: u32) {
        match self.dp.set_flow(flow, service_id) {
            Ok(()) => {
                self.late_joins_learned += 1;
                tracing::debug!(
                    id = service_id,
                    token = format!("{token:08x}"),
                    "learned an MP_JOIN subflow that arrived before its token"
                );
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "learning an MP_JOIN subflow failed")
            }
        }
    }

    // -----------------------------------------------------------------
    // Requests

    fn handle(
        &mut self,
        op: Op,
        received: Instant,
        resolved: Option<Result<ResolvedForward, ApiError>>,
    ) -> Result<Value, ApiError> {
        match op {
            Op::Hello => Ok(serde_json::json!({
                "agent": "migr-agent",
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": api::PROTOCOL_VERSION,
                "ops": api::OPS,
            })),
            Op::ServiceAdd(spec) => to_value(self.service_add(spec, resolved)),
            Op::ServiceRemove(args) => to_value(self.service_remove(args)),
            Op::ServiceList => {
                let list: Vec<Value> = self
                    .services
                    .values()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.spec.id,
                            "name": s.spec.name,
                            "state": s.machine.state.name(),
                            "datapath": describe(s.machine.datapath()),
                            "rules": s.spec.rules.len(),
                            "pending_frames": s.spool.pending(),
                        })
                    })
                    .collect();
                Ok(Value::Array(list))
            }
            Op::ServiceShow(args) => {
                let id = self.resolve(&args.service)?;
                to_value(self.status_of(id))
            }
            Op::Phase(args) => to_value(self.phase(args, received)),
            Op::Criu(args) => to_value(self.criu(args, received)),
            Op::Stats => to_value(self.stats()),
        }
    }

    fn resolve(&self, r: &ServiceRef) -> Result<u32, ApiError> {
        let found = match r {
            ServiceRef::Id(id) => self.services.get(id).map(|s| s.spec.id),
            ServiceRef::Name(name) => self
                .services
                .values()
                .find(|s| &s.spec.name == name)
                .map(|s| s.spec.id)
                .or_else(|| {
                    name.parse::<u32>()
                        .ok()
                        .and_then(|id| self.services.get(&id).map(|s| s.spec.id))
                }),
        };
        found.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no service {r}")))
    }

    fn service_add(
        &mut self,
        spec: ServiceSpec,
        resolved: Option<Result<ResolvedForward, ApiError>>,
    ) -> Result<Value, ApiError> {
        api::validate_spec(&spec)?;
        if self.services.contains_key(&spec.id) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("service id {} is taken", spec.id),
            ));
        }
        if let Some(other) = self.services.values().find(|s| s.spec.name == spec.name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "service name {:?} is taken (id {})",
                    spec.name, other.spec.id
                ),
            ));
        }
        if let Some(key) = &spec.container
            && let Some(other) = self
                .services
                .values()
                .find(|s| s.spec.container.as_ref() == Some(key))
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "container {key:?} belongs to service {:?} already",
                    other.spec.name
                ),
            ));
        }
        for rule in &spec.rules {
            let (key, _) = listener_for(rule, spec.id);
            for other in self.services.values() {
                if other
                    .spec
                    .rules
                    .iter()
                    .any(|r| listener_for(r, other.spec.id).0 == key)
                {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "{} ({:?}) belongs to service {:?} already",
                            rule.addr, rule.proto, other.spec.name
                        ),
                    ));
                }
                for sid in &rule.server_ids {
                    if other.spec.rules.iter().any(|r| r.server_ids.contains(sid)) {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!(
                                "QUIC server id {sid} belongs to service {:?} already",
                                other.spec.name
                            ),
                        ));
                    }
                }
            }
        }
        let forward = match &spec.forward {
            Some(f) => {
                let found = match resolved {
                    Some(r) => r?,
                    None => resolve_forward(f)?,
                };
                Some(self.with_forward_path(f, found)?)
            }
            None => None,
        };
        let (mut spool, _) =
            Spool::open(&self.spool_dir(), spec.id, self.ring.map_id, None).map_err(internal)?;
        // Leftovers of a removed service with the same id are not ours.
        spool.discard().map_err(internal)?;
        let limit = spec.park_limit.unwrap_or(self.cfg.default_limit);
        let timing = Timing {
            drain_ms: spec.drain_ms.unwrap_or(self.cfg.timing.drain_ms),
            settle_ms: self.cfg.timing.settle_ms,
        };
        let svc = Service {
            machine: PhaseMachine::new(timing, now_ms()),
            spec,
            forward,
            totals: Totals::default(),
            spool,
            limit,
            last_latency_us: None,
            replay_run: None,
            init_pid: None,
            socket_watch: None,
        };
        if let Err(e) = self.install(&svc) {
            let _ = self.uninstall(&svc);
            return Err(datapath_err(e));
        }
        let id = svc.spec.id;
        tracing::info!(service = %svc.spec.name, id, rules = svc.spec.rules.len(),
            forward = ?svc.spec.forward.as_ref().map(|f| f.addr), state = "idle", at_ms = now_ms(),
            "service added");
        self.services.insert(id, svc);
        self.persist().map_err(internal)?;
        self.status_of(id)
            .and_then(|s| serde_json::to_value(s).map_err(internal))
    }

    /// Writes every datapath entry of a service (idempotent).
    fn install(&mut self, svc: &Service) -> Result<()> {
        let id = svc.spec.id;
        for rule in &svc.spec.rules {
            let (key, entry) = listener_for(rule, id);
            self.dp.set_listener(&key, &entry)?;
            for sid in &rule.server_ids {
                self.dp.set_server_id(*sid, id)?;
            }
        }
        if let Some(f) = svc.forward {
            self.dp.set_forward_device(id, f.ifindex)?;
        }
        self.dp
            .set_service(id, &svc.entry(svc.machine.datapath()))?;
        Ok(())
    }

    fn uninstall(&mut self, svc: &Service) -> Result<()> {
        let id = svc.spec.id;
        self.dp.set_service(id, &ServiceEntry::default())?;
        for rule in &svc.spec.rules {
            let (key, _) = listener_for(rule, id);
            if self
                .dp
                .listeners()?
                .iter()
                .any(|(k, e)| *k == key && e.service_id == id)
            {
                self.dp.remove_listener(&key)?;
            }
            for sid in &rule.server_ids {
                self.dp.remove_server_id(*sid)?;
            }
        }
        for (token, owner) in self.dp.tokens()? {
            if owner == id {
                self.dp.remove_token(token)?;
            }
        }
        Ok(())
    }

    fn service_remove(&mut self, args: RemoveArgs) -> Result<Value, ApiError> {
        let id = self.resolve(&args.service)?;
        let svc = &self.services[&id];
        let pending = svc.spool.pending();
        if pending > 0 && !args.force {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "service {:?} has {pending} parked frames that are not replayed yet; finish the migration (restored/abort) or remove with force to discard them",
                    svc.spec.name
                ),
            ));
        }
        let svc = self.services.remove(&id).expect("resolved");
        if let Err(e) = self.uninstall(&svc) {
            let err = datapath_err(e);
            self.services.insert(id, svc);
            return Err(err);
        }
        let name = svc.spec.name.clone();
        let _ = svc.spool.remove();
        tracing::info!(service = %name, id, discarded = pending, at_ms = now_ms(), "service removed");
        self.persist().map_err(internal)?;
        Ok(serde_json::json!({ "id": id, "name": name, "discarded_frames": pending }))
    }

    fn phase(&mut self, args: PhaseArgs, received: Instant) -> Result<PhaseResult, ApiError> {
        let id = self.resolve(&args.service)?;
        self.apply_phase(
            id,
            args.phase,
            args.role,
            args.drain_ms,
            received,
            "request",
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_phase(
        &mut self,
        id: u32,
        cmd: migr_control::phase::PhaseCommand,
        role: Option<migr_control::phase::Role>,
        drain_ms: Option<u64>,
        received: Instant,
        via: &str,
        note: Option<String>,
    ) -> Result<PhaseResult, ApiError> {
        let svc = self.services.get_mut(&id).expect("resolved");
        let now = now_ms();
        let mut machine = svc.machine.clone();
        let outcome = machine
            .command(cmd, role, drain_ms, now)
            .map_err(|e| ApiError::new(ErrorCode::InvalidTransition, e.message))?;
        if !outcome.unchanged && machine.target_action() == Action::Forward && svc.forward.is_none()
        {
            return Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "service {:?} has no forward target: it cannot forward to its new node (add it with a forward target)",
                    svc.spec.name
                ),
            ));
        }
        // A source starts forwarding (and replays its parked frames) only
        // over a link that delivers; otherwise they stay parked.
        if !outcome.unchanged
            && outcome.to == State::Restored
            && machine.target_action() == Action::Forward
            && let Some(link) = forward_link(svc).filter(|l| *l != "up")
        {
            let iface = svc.spec.forward.as_ref().map_or("?", |f| f.iface.as_str());
            let why = match link {
                "no-carrier" => "has no carrier (the link or its peer is down)",
                "down" => "is down",
                _ => "no longer exists (or was re-created since the service was added)",
            };
            return Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "service {:?} cannot forward: its forward interface {iface} {why}; the parked frames stay parked (fix the link and retry, or abort)",
                    svc.spec.name
                ),
            ));
        }
        let entry = svc.entry(outcome.datapath);
        self.dp.set_service(id, &entry).map_err(datapath_err)?;
        let latency = received.elapsed();
        svc.machine = machine;
        let latency_us = latency.as_micros() as u64;
        if !outcome.unchanged {
            svc.last_latency_us = Some(latency_us);
        }
        if outcome.replay.is_some() {
            svc.totals.replay.replays += 1;
            svc.replay_run = Some(ReplayRun {
                started: Instant::now(),
                replayed_before: svc.totals.replay.replayed_frames
                    + svc.totals.replay.failed_frames,
            });
        }
        if matches!(outcome.to, State::Frozen | State::Restoring) {
            svc.replay_run = None;
        }
        let name = svc.spec.name.clone();
        let pending = svc.spool.pending();
        if !outcome.unchanged
            && outcome.to == State::Restored
            && svc.machine.role == Some(migr_control::phase::Role::Destination)
            && svc.spec.announce
        {
            let mut addrs: Vec<std::net::IpAddr> =
                svc.spec.rules.iter().map(|r| r.addr.ip()).collect();
            addrs.sort();
            addrs.dedup();
            crate::announce::spawn(name.clone(), self.cfg.ifaces.clone(), addrs);
        }
        if outcome.unchanged {
            tracing::info!(service = %name, id, phase = cmd.name(), state = outcome.to.name(), via,
                "phase command: already there");
        } else {
            tracing::info!(
                service = %name, id, phase = cmd.name(),
                from = outcome.from.name(), to = outcome.to.name(),
                role = ?svc.machine.role.map(|r| r.name()),
                datapath = %describe(outcome.datapath),
                replay = ?outcome.replay.map(Action::name),
                parked_pending = pending,
                at_ms = now, latency_us, via,
                "phase transition"
            );
            self.persist_or_log();
        }
        Ok(PhaseResult {
            service: name,
            from: outcome.from.name().into(),
            to: outcome.to.name().into(),
            unchanged: outcome.unchanged,
            datapath: describe(outcome.datapath),
            latency_us,
            note,
        })
    }

    fn criu(&mut self, args: CriuArgs, received: Instant) -> Result<PhaseResult, ApiError> {
        let id = match &args.service {
            Some(r) => self.resolve(r)?,
            None if args.container_ids.is_empty() => {
                return Err(ApiError::bad(
                    "criu needs a service, or the container's ids (container_ids)",
                ));
            }
            None => {
                let mut found = self.services.iter().filter(|(_, svc)| {
                    svc.spec
                        .container
                        .as_deref()
                        .is_some_and(|key| crate::container::names(key, &args.container_ids))
                });
                match (found.next(), found.next()) {
                    (Some((id, _)), None) => *id,
                    (None, _) => {
                        return Ok(PhaseResult {
                            service: String::new(),
                            from: String::new(),
                            to: String::new(),
                            unchanged: true,
                            datapath: String::new(),
                            latency_us: received.elapsed().as_micros() as u64,
                            note: Some(format!(
                                "{}: no service is registered for this container",
                                args.action
                            )),
                        });
                    }
                    (Some((a, _)), Some((b, _))) => {
                        return Err(ApiError::bad(format!(
                            "services {a} and {b} are both registered for this container"
                        )));
                    }
                }
            }
        };
        if let Some(ms) = args.deadline_ms
            && received.elapsed() > Duration::from_millis(ms)
        {
            tracing::warn!(action = %args.action, waited_ms = received.elapsed().as_millis() as u64,
                "a CRIU action reached the engine after its hook had given up; not applied");
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "{}: the hook gave up after {ms} ms; not applied",
                    args.action
                ),
            ));
        }
        if let Some(pid) = args.init_pid
            && let Some(svc) = self.services.get_mut(&id)
        {
            svc.init_pid = Some(pid);
        }
        let state = self.services[&id].machine.state;
        match criu_decision(&args.action, state) {
            CriuDecision::Phase(cmd) => self.apply_phase(
                id,
                cmd,
                None,
                None,
                received,
                "criu",
                Some(format!("{} -> {}", args.action, cmd.name())),
            ),
            CriuDecision::Ignore(why) => {
                let svc = &self.services[&id];
                tracing::info!(service = %svc.spec.name, action = %args.action, why, "CRIU action: nothing to do");
                Ok(PhaseResult {
                    service: svc.spec.name.clone(),
                    from: state.name().into(),
                    to: state.name().into(),
                    unchanged: true,
                    datapath: describe(svc.machine.datapath()),
                    latency_us: received.elapsed().as_micros() as u64,
                    note: Some(format!("{}: {why}", args.action)),
                })
            }
        }
    }

    fn status_of(&self, id: u32) -> Result<ServiceStatus, ApiError> {
        let svc = &self.services[&id];
        let counters = self.dp.service_counters(id).map_err(datapath_err)?;
        let verdicts = Verdict::ALL
            .iter()
            .map(|v| {
                (
                    v.name().to_string(),
                    Count {
                        packets: counters.packets[*v as usize],
                        bytes: counters.bytes[*v as usize],
                    },
                )
            })
            .collect();
        Ok(ServiceStatus {
            spec: svc.spec.clone(),
            state: svc.machine.state.name().into(),
            role: svc.machine.role,
            replay_stage: svc.machine.replay.map(|r| {
                match r {
                    ReplayStage::Backlog => "backlog",
                    ReplayStage::Settling { .. } => "settling",
                }
                .to_string()
            }),
            datapath: describe(svc.machine.datapath()),
            verdicts,
            parked: ParkedStats {
                pending_frames: svc.spool.pending() as u64,
                pending_bytes: svc.spool.pending_bytes(),
                stored_frames: svc.totals.stored_frames,
                stored_bytes: svc.totals.stored_bytes,
                overflow_frames: svc.totals.overflow_frames,
                overflow_bytes: svc.totals.overflow_bytes,
                checksums_completed: svc.totals.checksums_completed,
                checksums_bad: svc.totals.checksums_bad,
                limit_frames: svc.limit.frames,
                limit_bytes: svc.limit.bytes,
            },
            replay: svc.totals.replay,
            forward_link: forward_link(svc).map(str::to_string),
            forward_path: svc
                .forward
                .map(|f| if f.tc { "tc" } else { "xdp" }.to_string()),
            last_phase_latency_us: svc.last_latency_us,
            timeline: svc.machine.timeline.clone(),
        })
    }

    fn stats(&self) -> Result<Stats, ApiError> {
        let reasons = self.dp.reasons().map_err(datapath_err)?;
        let protocols = self.dp.proto_counters().map_err(datapath_err)?;
        let mut services = Vec::new();
        for id in self.services.keys() {
            services.push(self.status_of(*id)?);
        }
        Ok(Stats {
            agent: AgentInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: api::PROTOCOL_VERSION,
                interfaces: self.cfg.ifaces.clone(),
                pin_dir: self.cfg.pin_dir.display().to_string(),
                uptime_s: self.started.elapsed().as_secs(),
                ring_backlog_bytes: self.ring.backlog(),
                unknown_service_records: self.unknown_records,
                late_joins_learned: self.late_joins_learned,
            },
            reasons: Reason::ALL
                .iter()
                .map(|r| (r.name().to_string(), reasons[*r as usize]))
                .collect(),
            protocols: ProtoClass::ALL
                .iter()
                .map(|c| (c.name().to_string(), protocols[*c as usize]))
                .collect(),
            services,
        })
    }
}

/// Adds to the saved counters what a killed agent stored and replayed after
/// its last save, as its store records it: frames appended since (stored),
/// and frames the cursor passed since (replayed, or failed if too large to
/// replay), less the `uncertain` ones of an interrupted batch. If the store
/// was emptied in between (all replayed, then compacted), the frames that
/// were pending at the save count as replayed (their sizes are gone).
fn catch_up_totals(svc: &mut Service, mark: SpoolMark, uncertain: u64) {
    let (len, done) = (svc.spool.len() as u64, svc.spool.done() as u64);
    let same_store = svc.spool.first_ring_pos() == mark.first_ring_pos && len >= mark.len;
    let (stored_from, replayed_from, earlier) = if same_store {
        (mark.len, mark.done.min(done), 0)
    } else {
        (0, 0, mark.len.saturating_sub(mark.done))
    };
    let t = &mut svc.totals;
    for f in svc.spool.frames_in(stored_from as usize, len as usize) {
        t.stored_frames += 1;
        t.stored_bytes += f.frame.len() as u64;
    }
    let passed = svc.spool.frames_in(replayed_from as usize, done as usize);
    let certain = passed.len().saturating_sub(uncertain as usize);
    for f in &passed[..certain] {
        if replayable(f.frame.len()) {
            t.replay.replayed_frames += 1;
            t.replay.replayed_bytes += f.frame.len() as u64;
        } else {
            t.replay.failed_frames += 1;
        }
    }
    t.replay.replayed_frames += earlier;
}

/// Empties a fully replayed store, but only once the ring has been consumed
/// past every record in it (else a restarted agent would store them again).
fn compact_if_consumed(svc: &mut Service, consumer_pos: u64) {
    if svc.spool.max_ring_pos().is_none_or(|p| p < consumer_pos)
        && let Err(e) = svc.spool.compact()
    {
        tracing::warn!(service = %svc.spec.name, error = %format!("{e:#}"), "compacting the parked-frame store failed");
    }
}

/// Completes the checksums that senders left to offload, so that the frames
/// survive replay (see `migr_common::checksum`), and counts what it found.
fn complete_checksums(totals: &mut Totals, frames: &mut [StoredFrame]) {
    for f in frames {
        match complete_partial(&mut f.frame) {
            L4Checksum::Completed => totals.checksums_completed += 1,
            L4Checksum::Bad => totals.checksums_bad += 1,
            L4Checksum::Valid | L4Checksum::Absent | L4Checksum::NotApplicable => {}
        }
    }
}

/// How soon a replay waiting for a full socket looks again.
const SOCKET_FULL_RETRY: Duration = Duration::from_micros(250);

/// Frames the service's UDP sockets take now without overflowing
/// (`socket_room`), counting the drops seen since the last look;
/// `usize::MAX` when no restored process is known or none of its sockets
/// is the service's (TCP, or another namespace): the token bucket alone
/// paces the replay then.
fn socket_room(svc: &mut Service) -> usize {
    let Some(pid) = svc.init_pid else {
        return usize::MAX;
    };
    if svc.socket_watch.is_none() {
        let ports: Vec<u16> = svc
            .spec
            .rules
            .iter()
            .filter(|r| matches!(r.proto, RuleProto::Udp | RuleProto::Quic))
            .map(|r| r.addr.port())
            .collect();
        if ports.is_empty() {
            svc.init_pid = None;
            return usize::MAX;
        }
        match SocketWatch::start(pid, ports) {
            Ok(watch) => svc.socket_watch = Some(watch),
            Err(e) => {
                tracing::warn!(service = %svc.spec.name, pid, error = %e,
                    "cannot watch the service's sockets; the replay is paced by the token bucket alone");
                svc.init_pid = None;
                return usize::MAX;
            }
        }
    }
    let Some(watch) = svc.socket_watch.as_mut() else {
        return usize::MAX;
    };
    match watch.read() {
        Ok(state) => {
            let dropped = state.drops.saturating_sub(watch.drops_seen);
            watch.drops_seen = state.drops.max(watch.drops_seen);
            if dropped > 0 {
                svc.totals.replay.socket_drops += dropped;
                tracing::warn!(service = %svc.spec.name, dropped,
                    "the service's sockets dropped datagrams (receive buffer full) during the replay");
            }
            state.frames_that_fit()
        }
        Err(e) => {
            tracing::warn!(service = %svc.spec.name, error = %e,
                "the service's sockets cannot be read any more; the replay is paced by the token bucket alone");
            svc.socket_watch = None;
            svc.init_pid = None;
            usize::MAX
        }
    }
}

/// Replays up to `max` of the service's pending frames with `action`, in
/// order, in batches of frames that arrived on the same interface. Returns
/// how many it handled (replayed, or dropped as not replayable).
fn replay_pending(dp: &mut Datapath, svc: &mut Service, action: Action, max: usize) -> usize {
    let mut handled = 0;
    while handled < max {
        let limit = (max - handled).min(REPLAY_BATCH as usize);
        let pending = svc.spool.pending_frames();
        let Some(first) = pending.first() else {
            break;
        };
        let (ifindex, first_len) = (first.ifindex, first.frame.len());
        let n = pending
            .iter()
            .take(limit)
            .take_while(|f| f.ifindex == ifindex && replayable(f.frame.len()))
            .count();
        let marked = svc.spool.start_batch(n.max(1));
        if let Err(e) = marked {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot mark frames for replay");
            break;
        }
        let r = &mut svc.totals.replay;
        if n == 0 {
            r.failed_frames += 1;
            if r.failed_frames.is_power_of_two() {
                tracing::warn!(service = %svc.spec.name, len = first_len, failed = r.failed_frames,
                    "a parked frame is too large to replay (live frames take at most {REPLAY_FRAME_MAX} bytes); dropped");
            }
        } else {
            let batch: Vec<&[u8]> = svc.spool.pending_frames()[..n]
                .iter()
                .map(|f| f.frame.as_slice())
                .collect();
            let bytes: u64 = batch.iter().map(|f| f.len() as u64).sum();
            match dp.replay_batch(&batch, ifindex, action) {
                Ok(runs) if runs as usize >= n => {
                    r.replayed_frames += n as u64;
                    r.replayed_bytes += bytes;
                }
                outcome => {
                    // Interrupted or refused: the runs that took place are done.
                    let runs = match &outcome {
                        Ok(runs) => *runs as usize,
                        Err(_) => dp.replay_progress().unwrap_or(0) as usize,
                    };
                    r.replayed_frames += runs as u64;
                    r.failed_frames += (n - runs) as u64;
                    let error = match outcome {
                        Ok(runs) => format!("only {runs} of {n} runs took place"),
                        Err(e) => format!("{e:#}"),
                    };
                    tracing::warn!(service = %svc.spec.name, error, failed = r.failed_frames,
                        "parked frames could not be replayed; dropped");
                }
            }
        }
        if let Err(e) = svc.spool.finish_batch(n.max(1)) {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot record replayed frames");
            break;
        }
        handled += n.max(1);
    }
    handled
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

fn listener_for(rule: &api::MatchRule, service_id: u32) -> (ListenerKey, ListenerEntry) {
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

fn forward_target(spec: &ServiceSpec, resolved: Option<ResolvedForward>) -> ForwardTarget {
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

/// The state of a service's forward interface (see `ServiceStatus::forward_link`).
fn forward_link(svc: &Service) -> Option<&'static str> {
    let (spec, resolved) = (svc.spec.forward.as_ref()?, svc.forward?);
    Some(match if_index(&spec.iface) {
        Ok(index) if index == resolved.ifindex => match if_link(&spec.iface) {
            Some((false, _)) => "down",
            Some((true, false)) => "no-carrier",
            Some((true, true)) => "up",
            None => "missing",
        },
        _ => "missing",
    })
}

impl Engine {
    /// Picks the path a resolved forward target's frames take.
    fn with_forward_path(
        &self,
        f: &ForwardSpec,
        mut resolved: ResolvedForward,
    ) -> Result<ResolvedForward, ApiError> {
        // Frames come in on any attached interface: a veth among them
        // brings partial checksums that only the TC path handles.
        let facts = EgressFacts {
            on_a_bus: forward_path::on_a_bus(&f.iface)
                && self.links.iter().all(|l| forward_path::on_a_bus(&l.iface)),
            all_native: !self.links.is_empty()
                && self.links.iter().all(|l| l.mode == Some(XdpMode::Driver)),
        };
        let path = forward_path::choose(self.cfg.forward_path, facts);
        if path == ForwardPath::Tc
            && let Some(e) = &self.tc_error
        {
            return Err(ApiError::bad(format!(
                "forward.iface {}: frames to it must leave through the TC program ({facts:?}), which could not be attached ({e}); start the agent with --forward-path xdp only if this device transmits XDP frames",
                f.iface
            )));
        }
        resolved.tc = path == ForwardPath::Tc;
        Ok(resolved)
    }
}

fn resolve_forward(f: &ForwardSpec) -> Result<ResolvedForward, ApiError> {
    let ifindex = if_index(&f.iface).map_err(|e| ApiError::bad(format!("forward.iface: {e}")))?;
    let src_mac = if_mac(&f.iface).map_err(|e| ApiError::bad(format!("forward.iface: {e:#}")))?;
    let dst_mac = match &f.next_hop_mac {
        Some(m) => api::parse_mac(m).map_err(ApiError::bad)?,
        None => {
            let hop = f
                .next_hop
                .or(f.addr.map(|a| a.ip()))
                .ok_or_else(|| ApiError::bad("give forward.next_hop_mac or forward.next_hop"))?;
            neighbour_mac(hop, &f.iface).map_err(|e| {
                ApiError::bad(format!(
                    "forward: the next hop's MAC is unknown ({e:#}); give next_hop_mac"
                ))
            })?
        }
    };
    Ok(ResolvedForward {
        ifindex,
        src_mac,
        dst_mac,
        tc: false,
    })
}

/// Looks `ip` up in the neighbour table of `iface`; if it is not there,
/// provokes a resolution with one empty UDP datagram (port 9, discard) and
/// waits up to a second.
fn neighbour_mac(ip: IpAddr, iface: &str) -> Result<[u8; 6]> {
    if let Some(mac) = lookup_neighbour(ip, iface) {
        return Ok(mac);
    }
    let probe = match ip {
        IpAddr::V4(_) => UdpSocket::bind("0.0.0.0:0"),
        IpAddr::V6(_) => UdpSocket::bind("[::]:0"),
    }?;
    let _ = probe.send_to(&[], SocketAddr::new(ip, 9));
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup_neighbour(ip, iface) {
            return Ok(mac);
        }
    }
    bail!("no neighbour entry for {ip} on {iface}")
}

fn lookup_neighbour(ip: IpAddr, iface: &str) -> Option<[u8; 6]> {
    match ip {
        IpAddr::V4(v4) => {
            // /proc/net is the reading thread's network namespace.
            let text = std::fs::read_to_string("/proc/net/arp").ok()?;
            parse_proc_arp(&text, v4, iface)
        }
        IpAddr::V6(_) => {
            let out = std::process::Command::new("ip")
                .args(["-6", "neigh", "show", &ip.to_string(), "dev", iface])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut words = text.split_whitespace();
            while let Some(w) = words.next() {
                if w == "lladdr" {
                    return words.next().and_then(|m| api::parse_mac(m).ok());
                }
            }
            None
        }
    }
}

fn parse_proc_arp(text: &str, ip: std::net::Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 6 || cols[5] != iface {
            continue;
        }
        if cols[0].parse::<std::net::Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        let flags = u32::from_str_radix(cols[2].trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & 0x2 == 0 {
            continue; // incomplete
        }
        return api::parse_mac(cols[3]).ok();
    }
    None
}

fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another migr-agent uses the state directory {} ({})",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `pin_dir` can be created on bpffs: mounts bpffs on
/// /sys/fs/bpf if the pin directory is under it and it is not mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root)?;
        let src = std::ffi::CString::new("bpf")?;
        let target = std::ffi::CString::new("/sys/fs/bpf")?;
        // SAFETY: mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            );
        }
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        bail!(
            "the pin directory {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_arp_lines_parse() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    10.40.2.2        0x1         0x2         aa:bb:cc:dd:ee:01     *        v-sd\n\
                    10.40.2.3        0x1         0x0         00:00:00:00:00:00     *        v-sd\n\
                    10.40.1.1        0x1         0x2         aa:bb:cc:dd:ee:02     *        v-sc\n";
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            parse_proc_arp(text, ip("10.40.2.2"), "v-sd"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1])
        );
        assert_eq!(
            parse_proc_arp(text, ip("10.40.2.3"), "v-sd"),
            None,
            "incomplete"
        );
        assert_eq!(
            parse_proc_arp(text, ip("10.40.1.1"), "v-sd"),
            None,
            "other device"
        );
    }

    #[test]
    fn forward_targets_follow_the_spec() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"id":1,"name":"a","rules":[{"proto":"udp","addr":"10.0.0.1:7"}],
                "forward":{"addr":"10.0.1.1:8","iface":"eth1","next_hop_mac":"02:00:00:00:00:09"}}"#,
        )
        .unwrap();
        let r = ResolvedForward {
            ifindex: 5,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 9],
            tc: false,
        };
        let t = forward_target(&spec, Some(r));
        assert_eq!(&t.addr[..4], &[10, 0, 1, 1]);
        assert_eq!((t.port, t.family, t.ifindex), (8, FAMILY_V4, 5));
        assert_eq!(t.mode, ForwardMode::AddressChanging as u8);
        assert_eq!(t.path, ForwardPath::Xdp as u8);
        let t = forward_target(&spec, Some(ResolvedForward { tc: true, ..r }));
        assert_eq!(t.path, ForwardPath::Tc as u8);
        assert_eq!(forward_target(&spec, None), ForwardTarget::default());
        let (key, entry) = listener_for(&spec.rules[0], 1);
        assert_eq!((key.port, key.proto, entry.service_id), (7, 17, 1));
    }
}
