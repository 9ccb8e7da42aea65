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

mod events;
mod handle;
mod health;
mod lease;
mod links;
mod migrations;
mod persist;
mod phases;
mod pump;
mod replay;
mod requests;
mod retry;
mod service;
mod status;

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use migr_common::maps::map_names;
use migr_control::{
    api::{self, ApiError, ErrorCode, Op, ParkLimit},
    phase::Timing,
};
use serde::Serialize;
use serde_json::Value;

pub use self::{
    handle::{Call, EngineHandle},
    service::{LinkState, ResolvedForward, describe},
};
use self::{
    persist::lock_state_dir,
    pump::{pump_ring, reclaim_stores},
    service::Service,
};
use crate::{
    datapath::{AttachMode, AttachedLink, Datapath, DatapathConfig},
    early_joins::EarlyJoins,
    forward_path::ForwardPathChoice,
    parkring::ParkRing,
    statefile::StateFile,
    token_quota::TokenQuota,
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
    /// Bound of all parked-frame stores together, in bytes not replayed yet.
    pub park_max_total_bytes: u64,
    pub timing: Timing,
    /// Default pace of backlog replays, in frames per second (0: as fast as
    /// the kernel takes them). A service's `replay_rate` overrides it.
    pub replay_rate: u64,
    /// Frames a paced replay may send at once.
    pub replay_burst: u64,
    /// How long the datapath honours PARK and hold after the last renewal
    /// (see `lease.rs`).
    pub lease: Duration,
    /// How FORWARDs leave the node (see `forward_path`).
    pub forward_path: ForwardPathChoice,
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
    /// MPTCP tokens each client address may have learned.
    token_quota: TokenQuota,
    rx: mpsc::Receiver<Call>,
    wake: Arc<OwnedFd>,
    pump_paused_until: Option<Instant>,
    /// A paced replay may go on at this time.
    next_replay_at: Option<Instant>,
    /// Histograms of the migrations that ended here (`migrations.rs`).
    migrations: api::MigrationStats,
    /// When the park ring was last seen empty (`health.rs`).
    ring_empty_at: Instant,
    /// When the leases on PARK and hold entries were last renewed.
    leases_renewed: Instant,
    hooks: TestHooks,
    /// What the start could not recover (`persist.rs`), for `stats`.
    recovery_problems: Vec<String>,
    /// flock on the state directory: one agent per state directory.
    _lock: std::fs::File,
}

/// Requests the engine serves before it turns to the rings again.
const REQUESTS_PER_TURN: usize = 16;

/// Fault injection for the test suite, read from the environment once at
/// start; never set in production.
#[derive(Clone, Copy, Debug, Default)]
struct TestHooks {
    /// `MIGR_TEST_ENGINE_PANIC`: panic on the first `stats` request, to
    /// check that a panic ends the agent (exit status 1).
    panic_on_stats: bool,
    /// `MIGR_TEST_ENGINE_NEVER_IDLE`: every turn of the loop counts as busy
    /// (it never sleeps), as under a flood or a long unpaced replay, to
    /// check that events are read all the same.
    never_idle: bool,
}

impl TestHooks {
    fn from_env() -> Self {
        Self {
            panic_on_stats: std::env::var_os("MIGR_TEST_ENGINE_PANIC").is_some(),
            never_idle: std::env::var_os("MIGR_TEST_ENGINE_NEVER_IDLE").is_some(),
        }
    }
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
        let (tx, rx) = mpsc::sync_channel(handle::CALL_QUEUE);
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
        let maps_dir = crate::pin_layout::maps_dir(&cfg.pin_dir);
        let reused = maps_dir.join(map_names::PARKED).exists();
        let replay_counter_kept = maps_dir.join(map_names::REPLAY_NEXT).exists();
        let dp = Datapath::load_pinned(&cfg.datapath, &cfg.pin_dir)?;
        // Runs of the replay batch a killed agent left unfinished (see spool/mod.rs).
        let batch_runs = match replay_counter_kept {
            true => Some(u64::from(dp.replay_progress()?)),
            false => None,
        };
        let (ring_fd, ring_size, ring_id) = dp.map_fd(map_names::PARKED)?;
        let ring = ParkRing::new(ring_fd, ring_size, ring_id)?;
        let (events_fd, _, _) = dp.map_fd(map_names::EVENTS)?;
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
            token_quota: TokenQuota::default(),
            rx,
            wake,
            pump_paused_until: None,
            next_replay_at: None,
            leases_renewed: Instant::now(),
            ring_empty_at: Instant::now(),
            migrations: Default::default(),
            hooks: TestHooks::from_env(),
            recovery_problems: Vec::new(),
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

    // -----------------------------------------------------------------
    // The loop

    fn run(mut self) {
        loop {
            // A bounded number of requests per turn, then the rings: a burst
            // of requests must not leave parked frames or MPTCP keys unread.
            let mut more_requests = true;
            for _ in 0..REQUESTS_PER_TURN {
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
                    Err(mpsc::TryRecvError::Empty) => {
                        more_requests = false;
                        break;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.shutdown(false);
                        return;
                    }
                }
            }
            let mut busy = more_requests;
            if self.pump_paused_until.is_none_or(|t| Instant::now() >= t) {
                let pumped = pump_ring(
                    &self.ring,
                    &mut self.services,
                    &mut self.dp,
                    self.cfg.park_max_total_bytes,
                );
                busy |= pumped.records > 0 && !pumped.stalled && pumped.retry_at.is_none();
                self.unknown_records += pumped.unknown;
                self.dirty |= pumped.changed;
                // A store that cannot be written (a full filesystem) is not
                // retried at once: its records wait in the ring. Nor is a
                // failed replay (pumping on would only find its record first).
                self.pump_paused_until = match pumped.stalled {
                    true => Some(Instant::now() + Duration::from_millis(100)),
                    false => pumped.retry_at,
                };
                if self.ring.backlog() == 0 {
                    self.ring_empty_at = Instant::now();
                }
            }
            // Every turn, not only when idle: a flood to a frozen service or
            // a long replay keeps the loop busy, and MPTCP keys reported
            // meanwhile would fill the events ring and be lost.
            if self.events_ready() {
                self.pump_events();
            }
            busy |= self.replay_backlogs(256);
            for line in self.dp.drain_logs() {
                line.emit();
            }
            reclaim_stores(&mut self.services, self.ring.consumer_pos());
            self.tick();
            self.renew_leases_if_due();
            if self.dirty && self.last_persist.elapsed() >= Duration::from_secs(1) {
                self.persist_or_log();
            }
            if !busy && !self.hooks.never_idle {
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
            // A deadline passed already waits for something else (a hold
            // for the ring to drain), which wakes the loop itself.
            if let Some(t) = svc.machine.next_deadline_ms().filter(|t| *t > now) {
                // Clamped before the cast: a far deadline (drain_ms = u64::MAX)
                // would wrap negative and turn the poll below into a spin.
                timeout = timeout.min(t.saturating_sub(now).min(1000) as i64);
            }
        }
        for t in [
            self.pump_paused_until,
            self.next_replay_at,
            Some(self.next_lease_renewal()),
        ]
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
            // The datapath's debug logs; poll skips a negative fd (logs off).
            libc::pollfd {
                fd: self.dp.log_fd().unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if self.pump_paused_until.is_some() {
            // Do not spin on a ring we cannot drain right now.
            fds[0].events = 0;
        }
        // SAFETY: poll on valid fds (and a negative one, which it skips).
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
    }

    /// Does the events ring hold records? (A poll that does not wait: far
    /// cheaper than mapping the ring to look.)
    fn events_ready(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.events_fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid fd, without waiting.
        unsafe { libc::poll(&mut fd, 1, 0) > 0 && fd.revents & libc::POLLIN != 0 }
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
            Op::Stats => {
                if self.hooks.panic_on_stats {
                    panic!("MIGR_TEST_ENGINE_PANIC is set: panicking on a stats request");
                }
                to_value(self.stats())
            }
            Op::Health => to_value(Ok::<_, ApiError>(self.health(Instant::now()))),
        }
    }
}
