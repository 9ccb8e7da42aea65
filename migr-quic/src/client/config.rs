//! The client's settings: which strategy follows the moving server, how it
//! probes, and its timers. Apart from the state machine because callers
//! (the echo tool, the testbed, the tests) only build these values.

use std::time::Duration;

/// How the client follows a moving server (seed 000, sections 3.2 and 3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// P-Explicit: move to the announced address right after acknowledging it.
    ProactiveExplicit,
    /// R-Explicit: keep the old address until a packet loss, then probe the announced one.
    ReactiveExplicit,
    /// PoA: on a packet loss, probe every pool address plus the current one.
    PoolOfAddresses,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p-explicit" | "proactive" | "proactive-explicit" => Ok(Self::ProactiveExplicit),
            "r-explicit" | "reactive" | "reactive-explicit" => Ok(Self::ReactiveExplicit),
            "poa" | "pool" | "pool-of-addresses" => Ok(Self::PoolOfAddresses),
            other => Err(format!(
                "unknown strategy {other:?} (p-explicit, r-explicit, poa)"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ProactiveExplicit => "p-explicit",
            Self::ReactiveExplicit => "r-explicit",
            Self::PoolOfAddresses => "poa",
        })
    }
}

/// How the client keeps probing while the server does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProbeMode {
    /// A PING every `probe_interval` for as long as it probes: resumes
    /// within one interval of the server's return.
    #[default]
    Fast,
    /// Only quinn-proto's own loss recovery (RFC 9002: probe timeouts that
    /// double each time), as a client without this extension's help, such
    /// as the seed's aioquic, recovers. The baseline of the evaluation.
    Rfc9002,
}

impl std::str::FromStr for ProbeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Self::Fast),
            "rfc9002" => Ok(Self::Rfc9002),
            other => Err(format!("unknown probing {other:?} (fast, rfc9002)")),
        }
    }
}

impl std::fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Rfc9002 => "rfc9002",
        })
    }
}

/// Client-side settings of the extension.
#[derive(Clone, Debug)]
pub struct ClientMigrationConfig {
    pub strategy: Strategy,
    /// Whether the client sends its own PINGs while probing.
    pub probing: ProbeMode,
    /// Interval between PING probes while probing ([`ProbeMode::Fast`]).
    /// `None`: twice the smoothed RTT, clamped to 5..=500 ms.
    pub probe_interval: Option<Duration>,
    /// How long ack-eliciting data may stay unacknowledged before the client
    /// counts it as a packet loss. `None`: 3 x RTT + 35 ms, i.e. RFC 9002's
    /// first probe timeout with the initial RTT variance and the peer's
    /// default 25 ms ACK delay, plus 10 ms so that a delayed ACK on a
    /// very short path does not pass for a loss. A loss quinn-proto declares
    /// itself counts too.
    pub loss_timeout: Option<Duration>,
    /// Explicit strategies: when the announced address has not answered after
    /// this long, also probe the addresses validated before (seed 000, step 9).
    pub fallback_after: Duration,
    /// Send from a fresh local port whenever the client starts sending to a
    /// new server address. quinn-proto on the server then validates the new
    /// path with PATH_CHALLENGE/PATH_RESPONSE (seed 000, step 7).
    pub rebind_on_path_change: bool,
    /// Whether the client speaks the extension at all. `false`: a plain
    /// quinn-proto client (no control stream, no address mapping, no
    /// probing of its own; quinn-proto's RFC 9002 recovery only): what an
    /// unmodified QUIC client does, for same-IP moves and baselines.
    pub extension: bool,
}

impl ClientMigrationConfig {
    pub fn new(strategy: Strategy) -> Self {
        Self {
            extension: true,
            strategy,
            probing: ProbeMode::Fast,
            probe_interval: None,
            loss_timeout: None,
            fallback_after: Duration::from_secs(2),
            rebind_on_path_change: true,
        }
    }

    /// A client without the extension (see [`ClientMigrationConfig::extension`]).
    pub fn plain() -> Self {
        Self {
            extension: false,
            probing: ProbeMode::Rfc9002,
            rebind_on_path_change: false,
            ..Self::new(Strategy::ProactiveExplicit)
        }
    }
}
