//! The agent's settings from two sources: the config file (TOML, default
//! `/etc/migr/agent.toml`) and the `migr-agent run` flags. [`Settings`] is
//! both: one field per setting, `None` where a source says nothing, a key
//! spelled as its flag without the dashes. A flag given wins over the file's
//! key, then the default applies ([`Settings::over`], [`Settings::resolve`]).
//! Everything here is pure; reading the file is [`load`], at the edge.

mod values;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    agent::{DEFAULT_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    datapath::AttachMode,
    datapath_log::DatapathLog,
    forward_path::ForwardPathChoice,
};
pub use values::{AtLeastOne, Bounded, IfName, LeaseMs, RingBytes, Seconds};

/// Where `migr-agent run` looks for its config file when `--config` names none.
pub const DEFAULT_CONFIG: &str = "/etc/migr/agent.toml";

pub const DEFAULT_PARK_LIMIT_FRAMES: u64 = 65_536;
pub const DEFAULT_PARK_LIMIT_BYTES: u64 = 64 << 20;
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;
pub const DEFAULT_DRAIN_MS: u64 = 2_000;
pub const DEFAULT_SETTLE_MS: u64 = 250;
pub const DEFAULT_LEASE_MS: u64 = 2_000;
pub const DEFAULT_REPLAY_RATE: u64 = 10_000;
pub const DEFAULT_REPLAY_BURST: u64 = 16;

/// Every `migr-agent run` setting, from the command line or from the file.
/// The defaults are in [`Settings::resolve`]; the help texts name them.
#[derive(Args, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Interface to attach to (repeat for several; in the file, a list).
    /// Given on the command line, the list replaces the file's.
    #[arg(long, value_name = "IF")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<Vec<IfName>>,
    /// XDP mode: auto (native, else skb), native or skb [default: auto].
    #[arg(long)]
    #[serde(
        default,
        with = "values::as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<AttachMode>,
    /// How FORWARDs leave: auto (XDP_TX/redirect on a bus device attached
    /// natively, else the TC program, which also delivers through veths),
    /// xdp or tc [default: auto].
    #[arg(long)]
    #[serde(
        default,
        with = "values::as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub forward_path: Option<ForwardPathChoice>,
    /// The XDP program's debug logs, in the agent's log: off, warn (frames
    /// that failed to park or forward, failed replay runs) or debug (also
    /// every verdict on a frame of a service; for debugging, not for
    /// traffic). Off, the program runs without them [default: off].
    #[arg(long, value_name = "LEVEL")]
    #[serde(
        default,
        with = "values::as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub datapath_log: Option<DatapathLog>,
    /// Control socket [default: /run/migr/agent.sock].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Let this group use the control socket too (mode 0660); by default only root can (0600).
    #[arg(long, value_name = "GROUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Members of the socket group may only read (status, stats, service
    /// list and show); changes (service add and remove, phases, CRIU hook
    /// calls) are refused to any peer but root, told apart by SO_PEERCRED.
    /// Needs a socket group. `=false` turns off what the file turns on.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group_read_only: Option<bool>,
    /// Where the maps and XDP links are pinned (on bpffs; /sys/fs/bpf is
    /// mounted if missing) [default: /sys/fs/bpf/migr].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
    /// Where the service state and the parked-frame stores live (tmpfs)
    /// [default: /run/migr].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (http://ADDR/metrics).
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT leave the XDP program attached (pinned) so that a restarted
    /// agent takes over without a gap; by default the agent detaches.
    /// `=false` turns off what the file turns on.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_attached: Option<bool>,
    /// Default bound of a service's parked-frame store, in frames [default: 65536].
    #[arg(long, value_name = "FRAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub park_limit_frames: Option<AtLeastOne>,
    /// Default bound of a service's parked-frame store, in bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub park_limit_bytes: Option<AtLeastOne>,
    /// Bound of all services' parked-frame stores together, in bytes not
    /// replayed yet; a frame over it is dropped as over a service's bound.
    /// Default: a quarter of the size of the state directory's filesystem.
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub park_max_total_bytes: Option<AtLeastOne>,
    /// Size of the kernel park ring in bytes (a power of two, at least 4096;
    /// fixed when the maps are first created) [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_bytes: Option<RingBytes>,
    /// Default time a source keeps forwarding after `done`, in milliseconds [default: 2000].
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
    /// How long fresh frames stay held behind unconsumed parked records after
    /// a replay, in milliseconds [default: 250].
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_ms: Option<u64>,
    /// How long the datapath keeps parking and holding frames for an agent
    /// that stopped renewing its lease (it died), in milliseconds (100 to
    /// 3600000); then it passes them (fails open). A restart that takes longer
    /// loses the frames that arrive after the lease ran out to the frozen
    /// service [default: 2000].
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<LeaseMs>,
    /// Default pace of backlog replays, in frames per second (0: unpaced). A
    /// replay delivers a burst the receiving socket has to absorb; pacing keeps
    /// it from overflowing [default: 10000].
    #[arg(long, value_name = "FPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_rate: Option<u64>,
    /// Frames a paced replay sends at once (0 counts as 1) [default: 16].
    #[arg(long, value_name = "FRAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_burst: Option<u64>,
    /// Print the datapath's per-protocol packet counters every SECS seconds.
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Seconds>,
    /// Exit (as on SIGTERM) after printing the counters this many times (needs an interval).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The settings the agent runs with: every default applied, every
/// cross-setting rule checked.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub forward_path: ForwardPathChoice,
    pub datapath_log: DatapathLog,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub socket_group_read_only: bool,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub keep_attached: bool,
    pub park_limit_frames: u64,
    pub park_limit_bytes: u64,
    /// `None`: sized from the state directory's filesystem when the agent starts.
    pub park_max_total_bytes: Option<u64>,
    pub ring_bytes: u32,
    pub drain_ms: u64,
    pub settle_ms: u64,
    pub lease_ms: u64,
    pub replay_rate: u64,
    pub replay_burst: u64,
    pub interval: Option<f64>,
    pub count: Option<u64>,
}

impl Settings {
    /// These settings (the command line's) over `file`'s: each one given
    /// here wins, whole (an interface list replaces the file's).
    pub fn over(self, file: Settings) -> Settings {
        Settings {
            iface: self.iface.or(file.iface),
            mode: self.mode.or(file.mode),
            forward_path: self.forward_path.or(file.forward_path),
            datapath_log: self.datapath_log.or(file.datapath_log),
            socket: self.socket.or(file.socket),
            socket_group: self.socket_group.or(file.socket_group),
            socket_group_read_only: self.socket_group_read_only.or(file.socket_group_read_only),
            pin_dir: self.pin_dir.or(file.pin_dir),
            state_dir: self.state_dir.or(file.state_dir),
            metrics: self.metrics.or(file.metrics),
            keep_attached: self.keep_attached.or(file.keep_attached),
            park_limit_frames: self.park_limit_frames.or(file.park_limit_frames),
            park_limit_bytes: self.park_limit_bytes.or(file.park_limit_bytes),
            park_max_total_bytes: self.park_max_total_bytes.or(file.park_max_total_bytes),
            ring_bytes: self.ring_bytes.or(file.ring_bytes),
            drain_ms: self.drain_ms.or(file.drain_ms),
            settle_ms: self.settle_ms.or(file.settle_ms),
            lease_ms: self.lease_ms.or(file.lease_ms),
            replay_rate: self.replay_rate.or(file.replay_rate),
            replay_burst: self.replay_burst.or(file.replay_burst),
            interval: self.interval.or(file.interval),
            count: self.count.or(file.count),
        }
    }

    /// The defaults applied and the rules between settings checked. The
    /// error names the key and the flag, since either may be at fault.
    pub fn resolve(self) -> Result<AgentConfig, String> {
        let ifaces: Vec<String> = self
            .iface
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.0)
            .collect();
        if ifaces.is_empty() {
            return Err("no interface to attach to: give --iface IF, or `iface = [\"IF\"]` in the config file".into());
        }
        let read_only = self.socket_group_read_only.unwrap_or(false);
        if read_only && self.socket_group.is_none() {
            return Err("socket-group-read-only needs a socket group: give --socket-group GROUP, or `socket-group = \"GROUP\"` in the config file".into());
        }
        if self.count.is_some() && self.interval.is_none() {
            return Err("count needs an interval: give --interval SECS, or `interval = SECS` in the config file".into());
        }
        Ok(AgentConfig {
            ifaces,
            mode: self.mode.unwrap_or_default(),
            forward_path: self.forward_path.unwrap_or_default(),
            datapath_log: self.datapath_log.unwrap_or_default(),
            socket: self.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            socket_group: self.socket_group,
            socket_group_read_only: read_only,
            pin_dir: self.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            state_dir: self.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            metrics: self.metrics,
            keep_attached: self.keep_attached.unwrap_or(false),
            park_limit_frames: self
                .park_limit_frames
                .map_or(DEFAULT_PARK_LIMIT_FRAMES, |v| v.0),
            park_limit_bytes: self
                .park_limit_bytes
                .map_or(DEFAULT_PARK_LIMIT_BYTES, |v| v.0),
            park_max_total_bytes: self.park_max_total_bytes.map(|v| v.0),
            ring_bytes: self.ring_bytes.map_or(DEFAULT_RING_BYTES, |v| v.0),
            drain_ms: self.drain_ms.unwrap_or(DEFAULT_DRAIN_MS),
            settle_ms: self.settle_ms.unwrap_or(DEFAULT_SETTLE_MS),
            lease_ms: self.lease_ms.map_or(DEFAULT_LEASE_MS, |v| v.0),
            replay_rate: self.replay_rate.unwrap_or(DEFAULT_REPLAY_RATE),
            replay_burst: self.replay_burst.unwrap_or(DEFAULT_REPLAY_BURST),
            interval: self.interval.map(|v| v.0),
            count: self.count,
        })
    }
}

impl AgentConfig {
    /// The config as a file would say it (every setting, defaults too):
    /// what `migr-agent check-config` prints.
    pub fn to_toml(&self) -> String {
        let settings = Settings {
            iface: Some(self.ifaces.iter().cloned().map(IfName).collect()),
            mode: Some(self.mode),
            forward_path: Some(self.forward_path),
            datapath_log: Some(self.datapath_log),
            socket: Some(self.socket.clone()),
            socket_group: self.socket_group.clone(),
            socket_group_read_only: Some(self.socket_group_read_only),
            pin_dir: Some(self.pin_dir.clone()),
            state_dir: Some(self.state_dir.clone()),
            metrics: self.metrics,
            keep_attached: Some(self.keep_attached),
            park_limit_frames: Some(Bounded(self.park_limit_frames)),
            park_limit_bytes: Some(Bounded(self.park_limit_bytes)),
            park_max_total_bytes: self.park_max_total_bytes.map(Bounded),
            ring_bytes: Some(RingBytes(self.ring_bytes)),
            drain_ms: Some(self.drain_ms),
            settle_ms: Some(self.settle_ms),
            lease_ms: Some(Bounded(self.lease_ms)),
            replay_rate: Some(self.replay_rate),
            replay_burst: Some(self.replay_burst),
            interval: self.interval.map(Seconds),
            count: self.count,
        };
        toml::to_string(&settings).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// A config file refused: where and why.
#[derive(Debug, PartialEq, Eq)]
pub struct FileError {
    /// 1-based; 0 when the parser names no place.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => f.write_str(&self.message),
            line => write!(f, "line {line}, column {}: {}", self.column, self.message),
        }
    }
}

/// Parses a config file's text. Unknown keys, values of the wrong type and
/// values out of range are refused with the place of the key or value.
pub fn parse_file(text: &str) -> Result<Settings, FileError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((0, 0), |span| line_and_column(text, span.start));
        FileError {
            line,
            column,
            message: e.message().trim_end().to_string(),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Reads the settings of the config file: `given` (`--config`), which must
/// exist, or else the default file, whose absence means no settings.
pub fn load(given: Option<&Path>) -> Result<(Settings, Option<PathBuf>)> {
    let path = given.unwrap_or(Path::new(DEFAULT_CONFIG));
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if given.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Settings::default(), None));
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the config file {}", path.display()));
        }
    };
    let settings = parse_file(&text).map_err(|e| match e.line {
        0 => anyhow::anyhow!("{}: {}", path.display(), e.message),
        line => anyhow::anyhow!("{}:{line}:{}: {}", path.display(), e.column, e.message),
    })?;
    Ok((settings, Some(path.to_path_buf())))
}

#[cfg(test)]
mod tests;
