//! `migr-agent`: the daemon shell around the [`crate::engine`]: command
//! line, bpffs, the control socket, the metrics endpoint and signals.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use tokio::{
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use crate::{
    agent_config::{self, AgentConfig, DEFAULT_CONFIG, Settings},
    bpffs::ensure_bpffs,
    datapath::DatapathConfig,
    engine::{Engine, EngineConfig, EngineHandle},
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
    /// Check the config file and the flags as `run` would, print the settings
    /// `run` would use (as a config file), and exit.
    CheckConfig(Box<RunArgs>),
    /// Detach a datapath left attached (--keep-attached) and remove its pins and stored state.
    Cleanup {
        /// The config file whose pin-dir and state-dir to clean [default: /etc/migr/agent.toml, if it exists].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// [default: the config file's, else /sys/fs/bpf/migr]
        #[arg(long, value_name = "PATH")]
        pin_dir: Option<PathBuf>,
        /// [default: the config file's, else /run/migr]
        #[arg(long, value_name = "PATH")]
        state_dir: Option<PathBuf>,
    },
    /// Print a shell completion script for migr-agent (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print migr-agent's manual page (roff), or with --dir write it and one
    /// page per subcommand (migr-agent-run.8, ...) there.
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The config file (TOML): every setting below, as `key = value` with
    /// the flag's name [default: /etc/migr/agent.toml, if it exists]. A flag
    /// given here wins over the file's key.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl RunArgs {
    /// The file's settings under the flags', resolved.
    fn resolve(self) -> Result<AgentConfig> {
        let (file, path) = agent_config::load(self.config.as_deref())?;
        let cfg = self
            .settings
            .over(file)
            .resolve()
            .map_err(|e| match &path {
                Some(path) => anyhow::anyhow!("{e} (config file {})", path.display()),
                None => anyhow::anyhow!("{e} (no config file: {DEFAULT_CONFIG} is absent)"),
            })?;
        match &path {
            Some(path) => tracing::info!(config = %path.display(), "read the config file"),
            None => tracing::info!(
                "no config file ({DEFAULT_CONFIG} is absent): flags and defaults only"
            ),
        }
        Ok(cfg)
    }
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
        Command::Run(args) => run(args.resolve()?),
        Command::CheckConfig(args) => {
            print!("{}", args.resolve()?.to_toml());
            Ok(())
        }
        Command::Cleanup {
            config,
            pin_dir,
            state_dir,
        } => {
            let (file, _) = agent_config::load(config.as_deref())?;
            let pin_dir = pin_dir
                .or(file.pin_dir)
                .unwrap_or_else(|| DEFAULT_PIN_DIR.into());
            let state_dir = state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
            cleanup(&pin_dir, &state_dir)
        }
        Command::Completions { shell } => {
            crate::shell_files::completions(Cli::command(), shell, &mut std::io::stdout())
        }
        Command::Manpage { dir: None } => {
            crate::shell_files::manpage(Cli::command(), &mut std::io::stdout())
        }
        Command::Manpage { dir: Some(dir) } => {
            for page in crate::shell_files::manpages(Cli::command(), &dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
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

fn run(args: AgentConfig) -> Result<()> {
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
            log: args.datapath_log,
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

async fn serve(listener: UnixListener, engine: EngineHandle, args: &AgentConfig) -> Result<()> {
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
