//! What a run is asked to do: the protocol that moves, the client's request
//! pattern, how CRIU moves the memory, and every knob of [`RunConfig`] with
//! its presets. Apart from the run because scenarios, benches and the CLI
//! build these values without running anything.

use std::path::PathBuf;

use crate::{placement::Runtime, topology::Preset};

/// What moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// QUIC to a new IP (migr-echo).
    Quic,
    /// QUIC at the same IP (route moved after the restore, as TCP's), an
    /// unmodified client: `migr-echo client --plain`, quinn-proto without
    /// the extension.
    QuicSameIp,
    /// TCP with `--tcp-established`, same IP (COAT).
    Tcp,
    /// Plain UDP request/response, same IP, a client that never retries
    /// (`udpecho`): an unmodified client.
    Udp,
    /// The TCP+DNS baseline (seed 000): no steering; the server moves to a
    /// new IP (dumped with `--tcp-close`), the DNS record is updated, and
    /// the client reconnects once its cached record expired.
    TcpDns,
}

impl Protocol {
    /// QUIC, with the extension or without.
    pub(super) fn quic(self) -> bool {
        matches!(self, Self::Quic | Self::QuicSameIp)
    }

    /// The service keeps its address; the route to it moves at the restore.
    pub(super) fn same_ip(self) -> bool {
        matches!(self, Self::QuicSameIp | Self::Tcp | Self::Udp)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::QuicSameIp => "quic-same-ip",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::TcpDns => "tcp-dns",
        }
    }
}

/// The client's request pattern (seed 000, sections 4.2 and 4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each request right after the previous response.
    BackToBack,
    /// One request every `period_ms` (QUIC only).
    Sporadic { period_ms: u64 },
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::BackToBack => "back-to-back",
            Self::Sporadic { .. } => "sporadic",
        }
    }
}

/// How CRIU moves the memory (seed 000's four techniques, plus the local
/// post-copy variant this host can run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Technique {
    /// Dump everything, copy, restore everything.
    Cold,
    /// Pre-copy: `criu pre-dump` while the service runs (its pages copied to
    /// the destination meanwhile), then the final dump with
    /// `--prev-images-dir`, which writes only the pages dirtied since.
    /// Needs soft-dirty tracking (a Debian kernel: `--vm`).
    PreCopy,
    /// Post-copy with CRIU's lazy pages, the local variant: a plain dump
    /// and copy, then `criu lazy-pages` at the destination serves the pages
    /// from the copied images while `criu restore --lazy-pages` starts the
    /// tasks without filling their memory (the remote page server fails
    /// on this host: shared/notes/criu.md).
    PostCopyLocal,
    /// Post-copy over the links: `criu dump --lazy-pages` keeps the memory
    /// at the source node and serves it from there; the destination's
    /// `criu lazy-pages --page-server` fetches each page on demand.
    PostCopy,
    /// Pre-copy, then a lazy final dump: what the pre-dump moved is restored
    /// from the copied images, the pages dirtied since are fetched from the
    /// source on demand.
    Hybrid,
}

impl Technique {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::PreCopy => "pre-copy",
            Self::PostCopyLocal => "post-copy-local",
            Self::PostCopy => "post-copy",
            Self::Hybrid => "hybrid",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        [
            Self::Cold,
            Self::PreCopy,
            Self::PostCopyLocal,
            Self::PostCopy,
            Self::Hybrid,
        ]
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| {
            anyhow::anyhow!("--technique cold|pre-copy|post-copy-local|post-copy|hybrid, not {s:?}")
        })
    }

    /// `criu pre-dump` iterations before the final dump.
    pub(super) fn pre_dumps(self) -> usize {
        match self {
            Self::PreCopy | Self::Hybrid => PRE_DUMPS,
            Self::Cold | Self::PostCopyLocal | Self::PostCopy => 0,
        }
    }

    /// The final dump leaves the memory at the source and serves it over the
    /// links (`--lazy-pages` with a page server).
    pub(super) fn remote_lazy(self) -> bool {
        matches!(self, Self::PostCopy | Self::Hybrid)
    }
}

/// Pre-dump iterations of pre-copy and hybrid: seed 000 dumps once ahead of
/// the final dump; a service that dirties little memory gains nothing from
/// a second round.
const PRE_DUMPS: usize = 1;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub protocol: Protocol,
    pub steering: bool,
    /// QUIC: p-explicit, r-explicit or poa (ignored for TCP).
    pub strategy: String,
    /// QUIC: how the client probes while the server is silent: `fast`
    /// (migr-quic's PINGs) or `rfc9002` (QUIC's own probe timeouts only, as
    /// a client without migr: the baseline).
    pub client_probing: String,
    /// The agents' XDP attach mode (`migr-agent run --mode`): `auto`
    /// (native on a veth), or `skb`.
    pub agent_xdp_mode: String,
    pub preset: Preset,
    pub mode: Mode,
    pub technique: Technique,
    /// MiB of touched memory in the server process (the container's size).
    pub ballast_mb: usize,
    /// Requests the client sends in all.
    pub requests: usize,
    /// Requests answered before the migration starts.
    pub migrate_after: usize,
    /// Bytes per request (TCP: the echo's size; 1 MiB for the bulk transfer).
    pub request_bytes: usize,
    /// Stop the client this long after the restore returned, instead of
    /// after `requests` (the TCP client; a fast transport would otherwise
    /// need millions of requests to be sure to outlast the migration).
    pub stop_after_restore_ms: Option<u64>,
    /// Where the run's work directory goes.
    pub work_base: PathBuf,
    /// Keep the work directory (logs, images, CSV) after the run.
    pub keep_files: bool,
    /// Print progress lines.
    pub verbose: bool,
    /// TCP+DNS: the TTL of the service's DNS record, in seconds.
    pub dns_ttl_s: u32,
    /// QUIC PoA: addresses in the server's pool (1: only the new address; more: addresses
    /// of the destination's subnet that nobody answers at, which the client probes too).
    pub pool_size: usize,
    /// UDP: how long the client waits for an echo before it gives the
    /// request up.
    pub udp_timeout_ms: u64,
    /// What checkpoints the service: CRIU on a bare process, or runc or
    /// podman on a container.
    pub runtime: Runtime,
    /// With steering: whether the service is registered with the agents.
    /// `false`: migr is installed (agents attached, the hook runs) but knows
    /// nothing of this service, which must pass untouched.
    pub registered: bool,
}

impl RunConfig {
    /// A back-to-back QUIC run with P-Explicit, sized for about one second
    /// of requests before the migration and one after.
    pub fn back_to_back(steering: bool, preset: Preset) -> Self {
        let (requests, migrate_after) = match preset {
            Preset::None | Preset::Bandwidth => (3000, 1000),
            Preset::Latency => (300, 60),
        };
        Self {
            protocol: Protocol::Quic,
            steering,
            strategy: "p-explicit".into(),
            client_probing: "fast".into(),
            agent_xdp_mode: "auto".into(),
            preset,
            mode: Mode::BackToBack,
            technique: Technique::Cold,
            ballast_mb: 0,
            stop_after_restore_ms: None,
            requests,
            migrate_after,
            request_bytes: 1024,
            work_base: std::env::temp_dir(),
            keep_files: false,
            verbose: true,
            dns_ttl_s: 5,
            pool_size: 1,
            udp_timeout_ms: 1000,
            runtime: Runtime::Criu,
            registered: true,
        }
    }

    /// Seed 000's scenario 1: a request every 10 s, the migration between
    /// requests 2 and 3 (it is over long before request 3 is sent).
    pub fn sporadic(steering: bool, preset: Preset, strategy: &str) -> Self {
        Self {
            strategy: strategy.into(),
            mode: Mode::Sporadic { period_ms: 10_000 },
            requests: 4,
            migrate_after: 2,
            ..Self::back_to_back(steering, preset)
        }
    }

    /// The same, TCP (COAT case).
    pub fn tcp_back_to_back(steering: bool, preset: Preset) -> Self {
        Self {
            protocol: Protocol::Tcp,
            strategy: "tcp".into(),
            // About 30,000 requests a second here (45 with the latency
            // preset): a second or two before the migration, a second and a
            // half after the restore.
            requests: 10_000_000,
            migrate_after: match preset {
                Preset::Latency => 60,
                Preset::None | Preset::Bandwidth => 30_000,
            },
            stop_after_restore_ms: Some(1500),
            ..Self::back_to_back(steering, preset)
        }
    }

    /// The same, plain UDP with an unmodified client: one request at a time,
    /// each given up after `udp_timeout_ms` (never retried).
    pub fn udp_back_to_back(steering: bool, preset: Preset) -> Self {
        Self {
            protocol: Protocol::Udp,
            strategy: "udp".into(),
            ..Self::tcp_back_to_back(steering, preset)
        }
    }

    /// QUIC at the same IP with a plain client (no extension).
    pub fn quic_same_ip_back_to_back(steering: bool, preset: Preset) -> Self {
        Self {
            protocol: Protocol::QuicSameIp,
            strategy: "same-ip".into(),
            client_probing: "plain".into(),
            ..Self::back_to_back(steering, preset)
        }
    }

    /// The TCP+DNS baseline: back-to-back echo to the service's name, no
    /// steering, a cached DNS record with `ttl_s`.
    pub fn tcp_dns(ttl_s: u32, preset: Preset) -> Self {
        Self {
            protocol: Protocol::TcpDns,
            dns_ttl_s: ttl_s,
            // Two seconds after the restore returned beyond the TTL: the
            // client has reconnected by then.
            stop_after_restore_ms: Some(u64::from(ttl_s) * 1000 + 2000),
            ..Self::tcp_back_to_back(false, preset)
        }
    }

    pub(super) fn label(&self) -> String {
        format!(
            "{}-{}-{}-{}-{}-{}-{}",
            self.runtime.name(),
            self.protocol.name(),
            self.technique.name(),
            self.mode.name(),
            self.strategy,
            if self.steering { "on" } else { "off" },
            self.preset.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_technique_parses_from_its_name_and_nothing_else_does() {
        for t in [
            Technique::Cold,
            Technique::PreCopy,
            Technique::PostCopyLocal,
            Technique::PostCopy,
            Technique::Hybrid,
        ] {
            assert_eq!(Technique::parse(t.name()).unwrap(), t);
        }
        let e = Technique::parse("precopy").unwrap_err().to_string();
        assert!(e.contains("pre-copy") && e.contains("\"precopy\""), "{e}");
    }

    #[test]
    fn only_pre_copy_and_hybrid_pre_dump_and_only_the_remote_lazy_ones_serve_pages() {
        let pre: Vec<bool> = [
            Technique::Cold,
            Technique::PreCopy,
            Technique::PostCopy,
            Technique::Hybrid,
        ]
        .map(|t| t.pre_dumps() > 0)
        .into();
        assert_eq!(pre, [false, true, false, true]);
        assert!(Technique::Hybrid.remote_lazy() && Technique::PostCopy.remote_lazy());
        assert!(!Technique::PostCopyLocal.remote_lazy() && !Technique::PreCopy.remote_lazy());
    }
}
