//! `migr-agent`: the daemon shell around the [`crate::engine`]: command
//! line, bpffs, the control socket, the metrics endpoint and signals.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio::{
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use crate::{
    bpffs::ensure_bpffs,
    datapath::{AttachMode, DatapathConfig},
    engine::{Engine, EngineConfig, EngineHandle},
    forward_path::ForwardPathChoice,
    servers,
};
use migr_control::{
    api::{self, Op, ParkLimit},
    phase::Timing,
};

pub const DEFAULT_SOCKET: &str = "/run/migr/agent.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/migr";
pub const DEFAULT_STATE_DIR: &str = "/run/migr";

#[derive(Parser)]
#[command(
    name = "migr-agent",
    version,
    about = "migr's per-node agent: turns migration phases into XDP datapath state, keeps parked packets safe and replays them in order",
    long_about = None,
    after_help = "Operate it with migrctl; the control protocol is in docs/control-api.md, the design in docs/agent.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath, pin its state, and serve the control API until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Detach a datapath left attached (--keep-attached) and remove its pins and stored state.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true, value_name = "IF")]
    ifaces: Vec<String>,
    /// XDP mode: auto (native, else skb), native or skb.
    #[arg(long, default_value = "auto")]
    mode: AttachMode,
    /// How FORWARDs leave: auto (XDP_TX/redirect on a bus device attached
    /// natively, else the TC program, which also delivers through veths),
    /// xdp or tc.
    #[arg(long, default_value = "auto")]
    forward_path: ForwardPathChoice,
    /// Control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Let this group use the control socket too (mode 0660); by default only root can (0600).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Members of the socket group may only read (status, stats, service
    /// list and show); changes (service add and remove, phases, CRIU hook
    /// calls) are refused to any peer but root, told apart by SO_PEERCRED.
    #[arg(long, requires = "socket_group")]
    socket_group_read_only: bool,
    /// Where the maps and XDP links are pinned (on bpffs; /sys/fs/bpf is mounted if missing).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Where the service state and the parked-frame stores live (tmpfs).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Serve Prometheus metrics on this address (http://ADDR/metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT leave the XDP program attached (pinned) so that a restarted
    /// agent takes over without a gap; by default the agent detaches.
    #[arg(long)]
    keep_attached: bool,
    /// Default bound of a service's parked-frame store, in frames.
    #[arg(long, default_value_t = 65_536)]
    park_limit_frames: u64,
    /// Default bound of a service's parked-frame store, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    park_limit_bytes: u64,
    /// Bound of all services' parked-frame stores together, in bytes not
    /// replayed yet; a frame over it is dropped as over a service's bound.
    /// Default: a quarter of the size of the state directory's filesystem.
    #[arg(long, value_name = "BYTES")]
    park_max_total_bytes: Option<u64>,
    /// Size of the kernel park ring in bytes (a power of two; fixed when the maps are first created).
    #[arg(long, default_value_t = 16 << 20)]
    ring_bytes: u32,
    /// Default time a source keeps forwarding after `done`, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    drain_ms: u64,
    /// How long fresh frames stay held behind unconsumed parked records after a replay, in milliseconds.
    #[arg(long, default_value_t = 250)]
    settle_ms: u64,
    /// How long the datapath keeps parking and holding frames for an agent
    /// that stopped renewing its lease (it died), in milliseconds; then it
    /// passes them (fails open). A restart that takes longer loses the
    /// frames that arrive after the lease ran out to the frozen service.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    lease_ms: u64,
    /// Default pace of backlog replays, in frames per second (0: unpaced). A
    /// replay delivers a burst the receiving socket has to absorb; pacing keeps
    /// it from overflowing.
    #[arg(long, default_value_t = 10_000)]
    replay_rate: u64,
    /// Frames a paced replay sends at once.
    #[arg(long, default_value_t = 16)]
    replay_burst: u64,
    /// Print the datapath's per-protocol packet counters every SECS seconds.
    #[arg(long, value_name = "SECS")]
    interval: Option<f64>,
    /// Exit (as on SIGTERM) after printing the counters this many times.
    #[arg(long, requires = "interval")]
    count: Option<u64>,
}

/// The agent's `main`.
pub fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Cleanup { pin_dir, state_dir } => cleanup(&pin_dir, &state_dir),
    }
}

fn cleanup(pin_dir: &Path, state_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        // Maps of every layout (maps-v<N>/) and the links.
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        tracing::info!(pin_dir = %pin_dir.display(), "removed the pins (links detached, maps freed)");
    }
    for state in crate::statefile::all_paths(state_dir) {
        if state.exists() {
            std::fs::remove_file(&state)?;
        }
    }
    let spool = state_dir.join("spool");
    if spool.exists() {
        std::fs::remove_dir_all(&spool)?;
    }
    tracing::info!(state_dir = %state_dir.display(), "removed the stored state");
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    if let Some(i) = args.interval
        && !(i.is_finite() && i > 0.0)
    {
        bail!("--interval must be a positive number of seconds, got {i}");
    }
    if args.park_limit_frames == 0 || args.park_limit_bytes == 0 {
        bail!("--park-limit-frames and --park-limit-bytes must be at least 1");
    }
    if args.park_max_total_bytes == Some(0) {
        bail!("--park-max-total-bytes must be at least 1");
    }
    let group = args.socket_group.as_deref().map(group_id).transpose()?;
    // Everything the agent writes (state, parked frames, the socket) is
    // owner-only; the socket group is let in on the socket alone, below.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    raise_open_file_limit();
    ensure_bpffs(&args.pin_dir)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    open_state_dir(&args.state_dir, group, &args.socket)?;
    let park_max_total_bytes = args
        .park_max_total_bytes
        .unwrap_or_else(|| default_park_max_total_bytes(&args.state_dir));
    let cfg = EngineConfig {
        ifaces: args.ifaces.clone(),
        mode: args.mode,
        pin_dir: args.pin_dir.clone(),
        state_dir: args.state_dir.clone(),
        datapath: DatapathConfig {
            park_ring_bytes: args.ring_bytes,
            ..Default::default()
        },
        default_limit: ParkLimit {
            frames: args.park_limit_frames,
            bytes: args.park_limit_bytes,
        },
        park_max_total_bytes,
        timing: Timing {
            drain_ms: args.drain_ms,
            settle_ms: args.settle_ms,
        },
        replay_rate: args.replay_rate,
        replay_burst: args.replay_burst.max(1),
        lease: Duration::from_millis(args.lease_ms),
        forward_path: args.forward_path,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The socket first: refuse to start next to a running agent before
    // touching its datapath.
    let listener = runtime.block_on(bind_socket(&args.socket, group))?;
    let (engine, thread) = match Engine::start(cfg) {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&args.socket);
            return Err(e);
        }
    };
    tracing::info!(socket = %args.socket.display(), ifaces = ?args.ifaces,
        version = env!("CARGO_PKG_VERSION"), "migr-agent serving");
    let result = runtime.block_on(async {
        // The engine thread ends only when told to; if it ends otherwise
        // (a panic), the agent must not live on answering every request
        // with an error: it exits non-zero, its supervisor restarts it, and
        // the pinned datapath carries on meanwhile (the lease, docs/agent.md).
        let mut engine_ended = tokio::task::spawn_blocking(move || thread.join());
        tokio::select! {
            served = serve(listener, engine.clone(), &args) => {
                engine.shutdown(!args.keep_attached).await;
                let _ = (&mut engine_ended).await;
                served
            }
            joined = &mut engine_ended => Err(match joined {
                Ok(Err(panic)) => anyhow::anyhow!("the engine thread panicked: {}", panic_message(&panic)),
                _ => anyhow::anyhow!("the engine thread ended unexpectedly"),
            }),
        }
    });
    let _ = std::fs::remove_file(&args.socket);
    result
}

/// The message a panic carried, if it was a string.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Used when the state directory's filesystem size cannot be read.
const FALLBACK_PARK_MAX_TOTAL_BYTES: u64 = 256 << 20;

/// The default bound of all parked-frame stores together: a quarter of the
/// state directory's filesystem (a tmpfs /run is often a tenth of RAM, and
/// the rest of the system uses it too). A quarter because the store files
/// hold more than what is pending: replayed frames until a compaction gives
/// them back (up to as much again, plus 1 MiB a store), and the copy a
/// compaction writes before its rename; with the bound at a quarter, all of
/// that stays within the filesystem with room to spare.
fn default_park_max_total_bytes(state_dir: &Path) -> u64 {
    match filesystem_bytes(state_dir) {
        Ok(size) if size >= 4 => {
            tracing::info!(state_dir = %state_dir.display(), filesystem_bytes = size,
                park_max_total_bytes = size / 4, "parked frames of all services bounded by a quarter of the state directory's filesystem");
            size / 4
        }
        outcome => {
            let error = outcome.map_or_else(|e| format!("{e:#}"), |size| format!("{size} bytes"));
            tracing::warn!(state_dir = %state_dir.display(), error,
                park_max_total_bytes = FALLBACK_PARK_MAX_TOTAL_BYTES,
                "cannot size the state directory's filesystem; parked frames of all services bounded by a fixed amount");
            FALLBACK_PARK_MAX_TOTAL_BYTES
        }
    }
}

/// Size of the filesystem that holds `path` (statvfs).
fn filesystem_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs with a valid path and a zeroed struct it fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // The field types are narrower on some targets.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_blocks).saturating_mul(u64::from(st.f_frsize)))
}

/// The state directory is the owner's (0700). When it holds the socket and
/// a socket group is given, the group may pass through it to the socket
/// (0710: enter, not list); the files in it stay owner-only.
fn open_state_dir(dir: &Path, group: Option<u32>, socket: &Path) -> Result<()> {
    let mode = match group {
        Some(gid) if socket.parent() == Some(dir) => {
            chown_group(dir, gid)?;
            0o710
        }
        _ => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

fn chown_group(path: &Path, gid: u32) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: chown with a valid path; uid -1 keeps the owner.
    if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
        bail!(
            "chown of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Each service holds two files (its store and its cursor) besides the
/// maps' descriptors: the default soft limit (often 1024, lower under some
/// supervisors) would refuse services long before MAX_SERVICES. The soft
/// limit goes up to the hard one, which only the administrator sets.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::info!(
                from = before,
                to = lim.rlim_max,
                "raised the open-file limit"
            );
        } else {
            tracing::warn!(limit = before, error = %std::io::Error::last_os_error(),
                "could not raise the open-file limit; services may be refused for want of files");
        }
    }
}

fn group_id(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name)?;
    // SAFETY: getgrnam with a valid C string; the result is read at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!("--socket-group: no group {name:?}");
    }
    // SAFETY: non-null group entry.
    Ok(unsafe { (*gr).gr_gid })
}

async fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another agent is serving on {} (stop it first, or use --socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Bind under a umask that leaves the socket owner-only from its first
    // moment; the group, if any, is let in only after the chown below.
    // SAFETY: umask has no preconditions; nothing else creates files yet.
    let old_umask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old_umask) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    let mode = if let Some(gid) = group {
        chown_group(path, gid)?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

async fn serve(listener: UnixListener, engine: EngineHandle, args: &RunArgs) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Some(addr) = args.metrics {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        tokio::spawn(servers::serve_metrics(tcp, engine.clone()));
    }
    let mut ticker = args
        .interval
        .map(|i| tokio::time::interval(Duration::from_secs_f64(i)));
    if let Some(t) = ticker.as_mut() {
        t.tick().await;
    }
    let mut printed = 0u64;
    let access = match args.socket_group_read_only {
        true => servers::Access::RootChanges,
        false => servers::Access::AnyPeer,
    };
    let control = servers::serve_control(listener, engine.clone(), access);
    tokio::pin!(control);
    loop {
        tokio::select! {
            _ = &mut control => bail!("the control socket stopped serving"),
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                print_counters(&engine).await;
                printed += 1;
                if args.count.is_some_and(|c| printed >= c) {
                    tracing::info!("printed the counters {printed} times; exiting");
                    return Ok(());
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT"); return Ok(()); }
        }
    }
}

async fn print_counters(engine: &EngineHandle) {
    match engine.call(Op::Stats, Instant::now()).await {
        Ok(v) => match serde_json::from_value::<api::Stats>(v) {
            Ok(stats) => {
                let line: Vec<String> = stats
                    .protocols
                    .iter()
                    .map(|(class, n)| format!("{class}={n}"))
                    .collect();
                println!("packets: {}", line.join(" "));
            }
            Err(e) => println!("stats failed: {e}"),
        },
        Err(e) => println!("stats failed: {e}"),
    }
}
