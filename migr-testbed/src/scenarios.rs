//! Named experiments (docs/testbed.md): each is one [`RunConfig`], run N
//! times; the results go to `results/NAME.json` (schema `migr-testbed/1`)
//! and each run's client CSV to `results/NAME/run-K.csv` (the 1500 requests
//! either side of the one that ended the disruption).

use std::{path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins,
    migration::{self, Mode, Protocol, Run, RunConfig, Technique},
    placement::Runtime,
    results::{self, Config, FailedRun, Machine, Metric, ScenarioFile, Stat, Summary},
    stats::{FreezeHit, mean_ci95},
    topology::Preset,
};

pub struct Scenario {
    pub name: String,
    pub description: String,
    pub config: RunConfig,
    /// Runs when `--runs` is not given.
    pub default_runs: usize,
    /// Needs a kernel this host lacks (soft-dirty tracking for pre-dumps):
    /// runs in a Debian guest (`cargo xtask testbed --vm`), not in `all`.
    pub guest_only: bool,
}

/// The group of guest-only scenarios (`scenario techniques`): seed 000's
/// four CRIU techniques.
pub const TECHNIQUES: &str = "techniques";

const STRATEGIES: [&str; 3] = ["p-explicit", "r-explicit", "poa"];
/// The CSV of a run keeps the requests within this many of the one that
/// ended the disruption.
const CSV_WINDOW: usize = 1500;
/// Seed 000's container sizes, as touched memory of the server process.
const SIZES: [(&str, usize); 2] = [("small", 28), ("large", 280)];

/// Every scenario, in the order `--list` prints them.
pub fn all() -> Vec<Scenario> {
    let mut out = Vec::new();
    let onoff = |s: bool| if s { "on" } else { "off" };
    for (size, mb) in SIZES {
        for strategy in STRATEGIES {
            for steering in [true, false] {
                let mut config = RunConfig::back_to_back(steering, Preset::None);
                config.strategy = strategy.into();
                config.ballast_mb = mb;
                out.push(Scenario {
                    name: format!("quic-b2b-{strategy}-{size}-steering-{}", onoff(steering)),
                    description: format!(
                        "QUIC, back-to-back 1 kB requests, {strategy}, cold CRIU migration to a new IP, \
                         {mb} MB container, steering {}",
                        onoff(steering)
                    ),
                    config,
                    default_runs: 10,
                    guest_only: false,
                });
            }
        }
    }
    // The baseline (what users have without migr): no datapath, and a client
    // that recovers as RFC 9002 says, with backed-off probe timeouts (the
    // seed's aioquic client does). The steering-off scenarios above keep
    // migr-quic's fast probing: they show what the client side alone buys.
    for (size, mb) in SIZES {
        for strategy in STRATEGIES {
            let mut config = RunConfig::back_to_back(false, Preset::None);
            config.strategy = strategy.into();
            config.ballast_mb = mb;
            config.client_probing = "rfc9002".into();
            out.push(Scenario {
                name: format!("quic-b2b-{strategy}-{size}-baseline"),
                description: format!(
                    "as quic-b2b-{strategy}-{size}-steering-off, with a client that recovers \
                     with QUIC's own probe timeouts (RFC 9002, no fast probing): what users \
                     have without migr"
                ),
                config,
                default_runs: 10,
                guest_only: false,
            });
        }
    }
    // The agents in generic (skb) XDP mode: native XDP on a veth copies
    // every frame and turns off its peer's segmentation offload, which slows
    // the node's own bulk traffic (the images) about threefold; skb mode
    // leaves GSO/GRO alone.
    for (name, mut config) in [
        (
            "quic-b2b-p-explicit-small-skb-steering-on",
            RunConfig::back_to_back(true, Preset::None),
        ),
        (
            "quic-b2b-p-explicit-large-skb-steering-on",
            RunConfig::back_to_back(true, Preset::None),
        ),
        (
            "tcp-b2b-small-skb-steering-on",
            RunConfig::tcp_back_to_back(true, Preset::None),
        ),
    ] {
        config.ballast_mb = if name.contains("large") { 280 } else { 28 };
        config.agent_xdp_mode = "skb".into();
        out.push(Scenario {
            name: name.into(),
            description: format!(
                "as {}, the agents' XDP in generic (skb) mode instead of native",
                name.replace("-skb", "")
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    // PoA with larger pools: the new address and 1 or 2 that never answer.
    for pool_size in [2, 3] {
        for steering in [true, false] {
            let mut config = RunConfig::back_to_back(steering, Preset::None);
            config.strategy = "poa".into();
            config.ballast_mb = 28;
            config.pool_size = pool_size;
            out.push(Scenario {
                name: format!("quic-b2b-poa{pool_size}-small-steering-{}", onoff(steering)),
                description: format!(
                    "QUIC, back-to-back 1 kB requests, poa with a pool of {pool_size} (the new \
                     address and {} that never answer), cold, 28 MB container, steering {}",
                    pool_size - 1,
                    onoff(steering)
                ),
                config,
                default_runs: 10,
                guest_only: false,
            });
        }
    }
    for strategy in STRATEGIES {
        for steering in [true, false] {
            out.push(Scenario {
                name: format!("quic-sporadic-{strategy}-steering-{}", onoff(steering)),
                description: format!(
                    "QUIC, a request every 10 s, migration between requests 2 and 3 (seed 000 \
                     scenario 1), {strategy}, cold, 28 MB container, steering {}",
                    onoff(steering)
                ),
                config: RunConfig {
                    ballast_mb: 28,
                    ..RunConfig::sporadic(steering, Preset::None, strategy)
                },
                default_runs: 10,
                guest_only: false,
            });
        }
    }
    for (size, mb) in SIZES {
        for steering in [true, false] {
            let mut config = RunConfig::tcp_back_to_back(steering, Preset::None);
            config.ballast_mb = mb;
            out.push(Scenario {
                name: format!("tcp-b2b-{size}-steering-{}", onoff(steering)),
                description: format!(
                    "TCP (COAT: same IP, --tcp-established, route moved after the restore), \
                     back-to-back 1 kB echo, cold, {mb} MB container, steering {}",
                    onoff(steering)
                ),
                config,
                default_runs: 10,
                guest_only: false,
            });
        }
    }
    // The baseline under the shaped links, where QUIC's probe timeouts are
    // longer (latency) or the transfer is (bandwidth).
    for preset in [Preset::Bandwidth, Preset::Latency] {
        let mut config = RunConfig::back_to_back(false, preset);
        config.ballast_mb = 28;
        config.client_probing = "rfc9002".into();
        out.push(Scenario {
            name: format!("quic-b2b-p-explicit-small-{}-baseline", preset.name()),
            description: format!(
                "as quic-b2b-p-explicit-small-{0}-steering-off, with a client that recovers with \
                 QUIC's own probe timeouts (RFC 9002): what users have without migr",
                preset.name()
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    for steering in [true, false] {
        let mut config = RunConfig::back_to_back(steering, Preset::Bandwidth);
        config.ballast_mb = 28;
        out.push(Scenario {
            name: format!(
                "quic-b2b-p-explicit-small-bandwidth-steering-{}",
                onoff(steering)
            ),
            description: format!(
                "as quic-b2b-p-explicit-small-steering-{0}, links shaped as seed 002's bandwidth \
                 setting (100 Mbit/s at the source node, 500 Mbit/s elsewhere)",
                onoff(steering)
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    for (size, mb) in SIZES {
        for steering in [true, false] {
            let mut config = RunConfig::back_to_back(steering, Preset::None);
            config.ballast_mb = mb;
            config.technique = Technique::PostCopyLocal;
            out.push(Scenario {
                name: format!(
                    "quic-b2b-p-explicit-{size}-postcopy-steering-{}",
                    onoff(steering)
                ),
                description: format!(
                    "as quic-b2b-p-explicit-{size}-steering-{0}, post-copy: CRIU lazy pages, the \
                     local daemon at the destination serving the copied images",
                    onoff(steering)
                ),
                config,
                default_runs: 10,
                guest_only: false,
            });
        }
    }
    for steering in [true, false] {
        let mut config = RunConfig::back_to_back(steering, Preset::Latency);
        config.ballast_mb = 28;
        out.push(Scenario {
            name: format!(
                "quic-b2b-p-explicit-small-latency-steering-{}",
                onoff(steering)
            ),
            description: format!(
                "as quic-b2b-p-explicit-small-steering-{0}, with seed 002's latency setting \
                 (20 ms at the source node, 2 ms elsewhere; delay lines, no netem here)",
                onoff(steering)
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
        let mut config = RunConfig::tcp_back_to_back(steering, Preset::Latency);
        config.ballast_mb = 28;
        out.push(Scenario {
            name: format!("tcp-b2b-small-latency-steering-{}", onoff(steering)),
            description: format!(
                "as tcp-b2b-small-steering-{0}, with seed 002's latency setting",
                onoff(steering)
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    for steering in [true, false] {
        // An unmodified UDP client: a request lost while the service is down
        // is given up after the client's timeout (1 s) and never retried.
        let mut config = RunConfig::udp_back_to_back(steering, Preset::None);
        config.ballast_mb = 28;
        out.push(Scenario {
            name: format!("udp-b2b-small-steering-{}", onoff(steering)),
            description: format!(
                "plain UDP request/response (same IP, route moved after the restore), an \
                 unmodified client that gives a request up after 1 s and never retries, \
                 back-to-back 1 kB, cold, 28 MB container, steering {}",
                onoff(steering)
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    for steering in [true, false] {
        // QUIC with an unmodified client: quinn-proto without the extension
        // follows nobody, so the service keeps its IP (as TCP's and UDP's).
        let mut config = RunConfig::quic_same_ip_back_to_back(steering, Preset::None);
        config.ballast_mb = 28;
        out.push(Scenario {
            name: format!("quic-same-ip-small-steering-{}", onoff(steering)),
            description: format!(
                "QUIC at the same IP (route moved after the restore), an unmodified client \
                 (quinn-proto without the extension: RFC 9002 recovery only), back-to-back 1 kB \
                 requests, cold, 28 MB container, steering {}",
                onoff(steering)
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    // Real containers (runc drives CRIU over RPC, under podman too; the
    // hook comes from the CRIU config file the container's annotation
    // names and finds the service by container): the same-IP moves with
    // unmodified clients.
    for runtime in [Runtime::Runc, Runtime::Podman] {
        let rt = runtime.name();
        let how = match runtime {
            Runtime::Podman => {
                "podman container checkpoint --export and restore --import, each node its own podman storage"
            }
            _ => "runc checkpoint and restore",
        };
        for (proto, config) in [
            (
                "tcp",
                RunConfig::tcp_back_to_back as fn(bool, Preset) -> RunConfig,
            ),
            ("udp", RunConfig::udp_back_to_back),
            ("quic-same-ip", RunConfig::quic_same_ip_back_to_back),
        ] {
            for steering in [true, false] {
                let mut config = config(steering, Preset::None);
                config.ballast_mb = 28;
                config.runtime = runtime;
                // podman's export and import add about half a second to
                // the downtime: the UDP client waits longer for an echo.
                config.udp_timeout_ms = 3000;
                out.push(Scenario {
                    name: format!("{rt}-{proto}-b2b-small-steering-{}", onoff(steering)),
                    description: format!(
                        "a {rt} container (busybox rootfs, {how}, the hook from a CRIU config \
                         file) moved at the same IP with an unmodified {proto} client, back to \
                         back, cold, 28 MB, steering {}",
                        onoff(steering)
                    ),
                    config,
                    default_runs: 10,
                    guest_only: false,
                });
            }
        }
        // QUIC to a new IP (the restore puts the container into the
        // destination's namespace): migr's datapath and client against the
        // baseline (no datapath, an RFC 9002 client).
        for (suffix, steering, probing) in [
            ("steering-on", true, "fast"),
            ("baseline", false, "rfc9002"),
        ] {
            let mut config = RunConfig::back_to_back(steering, Preset::None);
            config.ballast_mb = 28;
            config.runtime = runtime;
            config.client_probing = probing.into();
            out.push(Scenario {
                name: format!("{rt}-quic-b2b-p-explicit-small-{suffix}"),
                description: format!(
                    "a {rt} container moved to a new IP (P-Explicit, back to back, cold, 28 MB): \
                     {}",
                    if steering {
                        "migr's datapath and the migr-quic client"
                    } else {
                        "no datapath and a client with QUIC's own loss recovery (RFC 9002): the baseline"
                    }
                ),
                config,
                default_runs: 10,
                guest_only: false,
            });
        }
    }
    for steering in [true, false] {
        // The bulk transfer: 1 MiB requests echoed back to back (a window's
        // worth of segments in flight in both directions when the dump
        // starts); the migration after 50 of them.
        let mut config = RunConfig::tcp_back_to_back(steering, Preset::None);
        config.ballast_mb = 28;
        config.request_bytes = 1 << 20;
        config.migrate_after = 50;
        out.push(Scenario {
            name: format!("tcp-bulk-small-steering-{}", onoff(steering)),
            description: format!(
                "TCP (COAT) bulk transfer: 1 MiB requests echoed back to back, cold, 28 MB \
                 container, steering {}",
                onoff(steering)
            ),
            config,
            default_runs: 10,
            guest_only: false,
        });
    }
    for ttl in [1, 5, 60] {
        // The TCP+DNS baseline (seed 000): what users have without migr and
        // without QUIC's connection migration.
        let mut config = RunConfig::tcp_dns(ttl, Preset::None);
        config.ballast_mb = 28;
        out.push(Scenario {
            name: format!("tcp-dns-ttl{ttl}"),
            description: format!(
                "TCP+DNS baseline (seed 000): back-to-back 1 kB echo to a name (dnsmasq in the \
                 router, A record TTL {ttl} s); cold CRIU migration to a new IP (--tcp-close), the \
                 record updated at the restore; the client reconnects once its cached record \
                 expired; 28 MB container, no steering"
            ),
            config,
            default_runs: 3,
            guest_only: false,
        });
    }
    out.extend(techniques());
    out
}

/// Seed 000's four CRIU techniques (section 5: 28 MB for cold and
/// post-copy, about 50 MB for pre-copy and hybrid), QUIC P-Explicit to a new
/// IP and TCP at the same IP, migr against what users have without it.
/// Pre-dumps need soft-dirty tracking: guest-only.
fn techniques() -> Vec<Scenario> {
    let mut out = Vec::new();
    for technique in [
        Technique::Cold,
        Technique::PreCopy,
        Technique::PostCopy,
        Technique::Hybrid,
    ] {
        let mb = match technique {
            Technique::PreCopy | Technique::Hybrid => 50,
            _ => 28,
        };
        let t = technique.name();
        for (arm, steering) in [("steering-on", true), ("baseline", false)] {
            let mut config = RunConfig::back_to_back(steering, Preset::None);
            config.technique = technique;
            config.ballast_mb = mb;
            if !steering {
                config.client_probing = "rfc9002".into();
            }
            out.push(Scenario {
                name: format!("{TECHNIQUES}-quic-p-explicit-{t}-{arm}"),
                description: format!(
                    "QUIC, back-to-back 1 kB requests, P-Explicit to a new IP, {t} CRIU migration, \
                     {mb} MB server; {}",
                    match steering {
                        true => "migr's datapath and client",
                        false =>
                            "no datapath, a client recovering with RFC 9002's probe timeouts \
                                  (what users have without migr)",
                    }
                ),
                config,
                default_runs: 10,
                guest_only: true,
            });
        }
        for steering in [true, false] {
            let mut config = RunConfig::tcp_back_to_back(steering, Preset::None);
            config.technique = technique;
            config.ballast_mb = mb;
            // The guest runs under emulation, some ten times slower.
            config.migrate_after = 3000;
            let arm = if steering {
                "steering-on"
            } else {
                "steering-off"
            };
            out.push(Scenario {
                name: format!("{TECHNIQUES}-tcp-{t}-{arm}"),
                description: format!(
                    "TCP (COAT, --tcp-established, same IP), back-to-back 1 kB echo, {t} CRIU \
                     migration, {mb} MB server, steering {}",
                    if steering {
                        "on"
                    } else {
                        "off (an unmodified TCP client and server)"
                    }
                ),
                config,
                default_runs: 10,
                guest_only: true,
            });
        }
    }
    out
}

/// The scenarios `all` runs: those this host can.
pub fn host() -> Vec<Scenario> {
    all().into_iter().filter(|s| !s.guest_only).collect()
}

/// The guest-only scenarios ([`TECHNIQUES`]).
pub fn guest() -> Vec<Scenario> {
    all().into_iter().filter(|s| s.guest_only).collect()
}

pub fn find(name: &str) -> Result<Scenario> {
    all()
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no scenario {name:?}; `--list` shows them"))
}

fn stat(xs: &[f64]) -> Option<Metric> {
    if xs.is_empty() {
        return None;
    }
    let (mean, ci95) = mean_ci95(xs);
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Non-finite numbers are null in JSON, as serde_json writes them.
    let finite = |x: f64| x.is_finite().then_some(x);
    Some(Metric::Stat(Stat {
        n: xs.len() as u64,
        mean: finite(mean),
        ci95: finite(ci95),
        min: finite(min),
        max: finite(max),
    }))
}

/// The per-metric summary over runs.
pub fn summarize(runs: &[Run]) -> Summary {
    let f = |g: &dyn Fn(&Run) -> Option<f64>| -> Option<Metric> {
        stat(&runs.iter().filter_map(g).collect::<Vec<_>>())
    };
    let frames = |g: &dyn Fn(&migration::Frames) -> u64| -> Option<Metric> {
        f(&|r: &Run| {
            r.src_frames
                .as_ref()
                .zip(r.dst_frames.as_ref())
                .map(|(s, d)| (g(s) + g(d)) as f64)
        })
    };
    [
        ("downtime_ms", f(&|r| Some(r.downtime_ms))),
        ("disruption_ms", f(&|r| Some(r.disruption_ms))),
        ("disruption_over_downtime", f(&|r| Some(r.ratio()))),
        ("dump_ms", f(&|r| Some(r.dump_ms))),
        ("transfer_ms", f(&|r| Some(r.transfer_ms))),
        ("restore_ms", f(&|r| Some(r.restore_ms))),
        ("total_migration_ms", f(&|r| Some(r.total_migration_ms))),
        ("announce_to_ack_ms", f(&|r| Some(r.announce_to_ack_ms))),
        ("service_downtime_ms", f(&|r| r.service_gap.map(|g| g.ms))),
        (
            "last_answer_before_pre_dump_ms",
            f(&|r| r.service_gap.map(|g| g.last_answer_before_pre_dump_ms)),
        ),
        (
            "first_answer_after_post_resume_ms",
            f(&|r| r.service_gap.map(|g| g.first_answer_after_post_resume_ms)),
        ),
        ("median_service_ms", f(&|r| Some(r.median_service_ms))),
        ("max_service_ms", f(&|r| Some(r.max_service_ms))),
        (
            "after_migration_service_ms",
            f(&|r| r.after_migration_service_ms),
        ),
        ("lazy_pages_ms", f(&|r| r.lazy_pages_ms)),
        (
            "pre_dump_ms",
            f(&|r| {
                (!r.pre_dump_rounds.is_empty())
                    .then(|| r.pre_dump_rounds.iter().map(|p| p.dump_ms).sum())
            }),
        ),
        (
            "pre_copy_transfer_ms",
            f(&|r| {
                (!r.pre_dump_rounds.is_empty())
                    .then(|| r.pre_dump_rounds.iter().map(|p| p.transfer_ms).sum())
            }),
        ),
        (
            "pre_copy_longest_answer_gap_ms",
            f(&|r| {
                let gaps = r.pre_copy_answer_gaps_ms.as_ref()?;
                (!r.pre_dump_rounds.is_empty()).then(|| gaps.iter().copied().fold(0.0, f64::max))
            }),
        ),
        ("image_bytes", f(&|r| Some(r.image_bytes as f64))),
        ("requests_lost", f(&|r| Some(r.lost as f64))),
        (
            "client_lost_packets",
            f(&|r| r.lost_packets().map(|v| v as f64)),
        ),
        ("client_pto_count", f(&|r| r.pto_count().map(|v| v as f64))),
        (
            "client_tcp_retransmits",
            f(&|r| r.tcp_retransmits().map(|v| v as f64)),
        ),
        ("frames_parked", frames(&|x| x.parked)),
        ("frames_forwarded", frames(&|x| x.forwarded)),
        ("frames_replayed", frames(&|x| x.replayed)),
        ("frames_lost", frames(&|x| x.lost())),
        (
            "service_socket_drops",
            f(&|r| r.service_socket_drops.map(|v| v as f64)),
        ),
        (
            "client_ok",
            Some(Metric::Flag(runs.iter().all(|r| r.client_ok))),
        ),
        (
            "delay_line_dropped",
            f(&|r| r.delay_line.map(|d| d.dropped as f64)),
        ),
        (
            "delay_line_failed",
            f(&|r| r.delay_line.map(|d| d.failed as f64)),
        ),
        (
            "delay_line_late_frames",
            f(&|r| r.delay_line.map(|d| d.late as f64)),
        ),
        (
            "delay_line_max_late_ms",
            f(&|r| r.delay_line.map(|d| d.max_late_us as f64 / 1e3)),
        ),
        (
            "disruption_ms_freeze_in_upload",
            f(&|r| (r.freeze_hit == Some(FreezeHit::Upload)).then_some(r.disruption_ms)),
        ),
        (
            "disruption_ms_freeze_in_echo",
            f(&|r| (r.freeze_hit == Some(FreezeHit::Echo)).then_some(r.disruption_ms)),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let criu = std::process::Command::new(super::CRIU_PATH)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    Machine {
        kernel,
        cpus: cpus as u64,
        criu,
    }
}

/// Runs `scenario` `runs` times, writes `out/NAME.json` and the CSVs, and
/// returns what it wrote.
pub fn run(bins: &Bins, scenario: &Scenario, runs: usize, out: &Path) -> Result<ScenarioFile> {
    let mut docs = run_interleaved(bins, std::slice::from_ref(scenario), runs, out)?;
    Ok(docs.remove(0))
}

/// What one scenario has so far.
struct Progress {
    started: Instant,
    started_at: f64,
    runs: Vec<Run>,
    /// `(run number, error)` of the runs that failed.
    failed: Vec<(usize, String)>,
}

/// Runs `runs` rounds of every scenario in `scenarios`, one run of each
/// per round (so that arms meant to be compared share the machine's ups
/// and downs), writes each scenario's JSON after every round, and returns
/// them. A failed run is recorded with its reason and the rounds go on.
pub fn run_interleaved(
    bins: &Bins,
    scenarios: &[Scenario],
    runs: usize,
    out: &Path,
) -> Result<Vec<ScenarioFile>> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut progress: Vec<Progress> = scenarios
        .iter()
        .map(|_| Progress {
            started: Instant::now(),
            started_at: super::now_s(),
            runs: Vec::new(),
            failed: Vec::new(),
        })
        .collect();
    let mut docs = Vec::new();
    for k in 1..=runs {
        docs.clear();
        for (scenario, p) in scenarios.iter().zip(&mut progress) {
            println!("[testbed] {} run {k}/{runs}", scenario.name);
            match migration::run(bins, &scenario.config) {
                Ok(run) => {
                    println!("[testbed] {}", run.summary());
                    write_csv(out, &scenario.name, k, &run)?;
                    p.runs.push(run);
                }
                Err(e) => {
                    println!("[testbed] {} run {k} failed: {e:#}", scenario.name);
                    p.failed.push((k, format!("{e:#}")));
                }
            }
            docs.push(write_doc(scenario, p, out)?);
        }
    }
    for (scenario, p) in scenarios.iter().zip(&progress) {
        if p.runs.is_empty() {
            bail!(
                "every run of {} failed; the first: {}",
                scenario.name,
                p.failed.first().map_or("", |(_, e)| e.as_str())
            );
        }
    }
    Ok(docs)
}

/// The client's requests around the disruption (a TCP run answers tens of
/// thousands of requests): `out/NAME/run-K.csv`.
fn write_csv(out: &Path, name: &str, k: usize, run: &Run) -> Result<()> {
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let around = run.disruption_at.unwrap_or(0);
    let mut csv =
        String::from("index,send_time_ms,response_time_ms,service_time_ms,server_address\n");
    for r in run
        .requests_detail
        .iter()
        .filter(|r| r.index + CSV_WINDOW >= around && r.index <= around + CSV_WINDOW)
    {
        csv.push_str(&format!(
            "{},{:.3},{:.3},{:.3},{}\n",
            r.index, r.send_ms, r.response_ms, r.service_ms, r.server
        ));
    }
    std::fs::write(dir.join(format!("run-{k}.csv")), csv)?;
    Ok(())
}

/// Writes `out/NAME.json` with what `p` has so far; returns it.
fn write_doc(scenario: &Scenario, p: &Progress, out: &Path) -> Result<ScenarioFile> {
    let (started, started_at, results) = (p.started, p.started_at, &p.runs);
    let c = &scenario.config;
    let quic = c.protocol == Protocol::Quic;
    let doc = ScenarioFile {
        schema: results::SCHEMA.to_string(),
        scenario: scenario.name.to_string(),
        description: scenario.description.to_string(),
        config: Config {
            protocol: c.protocol.name().to_string(),
            runtime: Some(c.runtime.name().to_string()),
            strategy: quic.then(|| c.strategy.clone()),
            client_probing: matches!(c.protocol, Protocol::Quic | Protocol::QuicSameIp)
                .then(|| c.client_probing.clone()),
            agent_xdp_mode: c.steering.then(|| c.agent_xdp_mode.clone()),
            steering: c.steering,
            technique: c.technique.name().to_string(),
            preset: c.preset.name().to_string(),
            mode: c.mode.name().to_string(),
            period_ms: match c.mode {
                Mode::Sporadic { period_ms } => Some(period_ms),
                Mode::BackToBack => None,
            },
            ballast_mb: c.ballast_mb as u64,
            requests: c.requests as u64,
            migrate_after: c.migrate_after as u64,
            request_bytes: c.request_bytes as u64,
            dns_ttl_s: (c.protocol == Protocol::TcpDns).then_some(u64::from(c.dns_ttl_s)),
            udp_timeout_ms: (c.protocol == Protocol::Udp).then_some(c.udp_timeout_ms),
            pool_size: (c.strategy == "poa" && quic).then_some(c.pool_size as u64),
        },
        machine: machine(),
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        summary: summarize(results),
        runs: results.iter().map(Run::to_json).collect(),
        failed_runs: p
            .failed
            .iter()
            .map(|(k, e)| FailedRun {
                run: *k as u64,
                error: e.clone(),
            })
            .collect(),
    };
    let path = out.join(format!("{}.json", scenario.name));
    std::fs::write(&path, doc.to_json_pretty()?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("[testbed] wrote {}", path.display());
    Ok(doc)
}
