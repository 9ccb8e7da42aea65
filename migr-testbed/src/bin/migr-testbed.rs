//! `migr-testbed`: the live-migration testbed from the command line
//! (docs/testbed.md). Needs root, CRIU 4.1.1 (`cargo xtask setup`), and
//! migr-agent, migrctl and migr-echo next to this binary.
//!
//! ```text
//! migr-testbed demo                       one migration with steering on, one off, a summary
//! migr-testbed quic [--steering on|off] [--strategy p-explicit|r-explicit|poa]
//!                   [--preset none|latency|bandwidth] [--requests N] [--migrate-after K]
//!                   [--json PATH] [--keep]
//! migr-testbed tcp [--steering on|off] [--preset P] [--requests N] [--migrate-after K]
//!                   [--json PATH] [--keep]         the same-IP TCP case (COAT)
//! migr-testbed quic-same-ip [--steering on|off] [--preset P] ...   QUIC at the same IP, a
//!                   plain quinn-proto client (no extension)
//! migr-testbed tcp-dns [--ttl S] [--preset P] [--json PATH] [--keep]
//!                   the TCP+DNS baseline: reconnect to the name once the TTL expired
//! migr-testbed topology [--preset P]      build the topology, check it, tear it down
//! migr-testbed scenarios                  list the named experiments
//! migr-testbed scenario NAME[,NAME...]|all [--runs N] [--out DIR]   run them, interleaved: DIR/NAME.json, DIR/NAME/*.csv
//! migr-testbed hook-cost [--pairs N] [--preset P] [--out DIR]   what the CRIU hook adds: DIR/hook-cost.json
//! migr-testbed tcp-server|tcp-client ...  the TCP workload (the runs start these)
//! migr-testbed udp-server|udp-client ...  the plain UDP workload
//! ```

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};
use migr_testbed::{
    self as testbed, Bins, Preset, Run, RunConfig, Topology, migration, scenarios, tcpecho, udpecho,
};

const USAGE: &str = "usage:
  migr-testbed demo
  migr-testbed quic [--steering on|off] [--strategy p-explicit|r-explicit|poa]
                    [--preset none|latency|bandwidth] [--mode back-to-back|sporadic]
                    [--ballast-mb MB] [--technique cold|pre-copy|post-copy|post-copy-local|hybrid]
                    [--requests N] [--migrate-after K]
                    [--json PATH] [--keep] [--quiet]
  migr-testbed tcp [--steering on|off] [--preset none|latency|bandwidth] [--requests N]
                   [--migrate-after K] [--json PATH] [--keep] [--quiet]
  migr-testbed udp [--steering on|off] [--preset none|latency|bandwidth] [--requests N]
                   [--migrate-after K] [--json PATH] [--keep] [--quiet]
  migr-testbed quic-same-ip [--steering on|off] [--preset none|latency|bandwidth]
                   [--requests N] [--migrate-after K] [--json PATH] [--keep] [--quiet]
  migr-testbed tcp-dns [--ttl SECONDS] [--preset none|latency|bandwidth]
                       [--requests N] [--migrate-after K] [--json PATH] [--keep] [--quiet]
  migr-testbed topology [--preset none|latency|bandwidth]
  migr-testbed scenarios
  migr-testbed scenario NAME[,NAME...]|all [--runs N] [--out DIR]
  migr-testbed hook-cost [--pairs N] [--preset none|latency|bandwidth] [--out DIR]
  migr-testbed tcp-server --listen ADDR
  migr-testbed tcp-client --server ADDR --count N --csv PATH [--size BYTES]
  migr-testbed udp-server --listen ADDR
  migr-testbed udp-client --server ADDR --count N --csv PATH [--size BYTES] [--timeout-ms MS]
  migr-testbed dns-client --dns ADDR:PORT --port PORT --count N --csv PATH [--name NAME]
                          [--size BYTES] [--stop-file PATH]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("quic") => run_cmd(&args[1..], testbed::Protocol::Quic),
        Some("tcp") => run_cmd(&args[1..], testbed::Protocol::Tcp),
        Some("udp") => run_cmd(&args[1..], testbed::Protocol::Udp),
        Some("quic-same-ip") => run_cmd(&args[1..], testbed::Protocol::QuicSameIp),
        Some("tcp-dns") => run_cmd(&args[1..], testbed::Protocol::TcpDns),
        Some("scenarios") => {
            for sc in scenarios::all() {
                let guest = if sc.guest_only {
                    " [a Debian guest: cargo xtask testbed --vm 6.12]"
                } else {
                    ""
                };
                println!("{:<48} {}{guest}", sc.name, sc.description);
            }
            Ok(())
        }
        Some("scenario") => scenario_cmd(&args[1..]),
        Some("hook-cost") => hook_cost_cmd(&args[1..]),
        Some("tcp-server") => tcpecho::main_server(&args[1..]),
        Some("tcp-client") => tcpecho::main_client(&args[1..]),
        Some("udp-server") => udpecho::main_server(&args[1..]),
        Some("udp-client") => udpecho::main_client(&args[1..]),
        Some("dns-client") => testbed::dns::main_client(&args[1..]),
        Some("topology") => topology_cmd(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migr-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bins() -> Result<Bins> {
    Bins::in_dir(&migr_testkit::process::profile_dir()?)
}

/// `--name value` pairs and `--flag`s.
struct Opts(Vec<String>);

impl Opts {
    fn value(&self, name: &str) -> Result<Option<&str>> {
        match self.0.iter().position(|a| a == name) {
            Some(i) => self
                .0
                .get(i + 1)
                .map(|v| Some(v.as_str()))
                .with_context(|| format!("{name} needs a value")),
            None => Ok(None),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn check(&self, known_values: &[&str], known_flags: &[&str]) -> Result<()> {
        let mut i = 0;
        while i < self.0.len() {
            let a = self.0[i].as_str();
            if known_values.contains(&a) {
                i += 2;
            } else if known_flags.contains(&a) {
                i += 1;
            } else {
                bail!("unknown argument {a:?}\n{USAGE}");
            }
        }
        Ok(())
    }
}

fn run_cmd(args: &[String], protocol: testbed::Protocol) -> Result<()> {
    let o = Opts(args.to_vec());
    o.check(
        &[
            "--steering",
            "--strategy",
            "--preset",
            "--requests",
            "--migrate-after",
            "--json",
            "--mode",
            "--ballast-mb",
            "--technique",
            "--ttl",
            "--runtime",
        ],
        &["--keep", "--quiet"],
    )?;
    let default_steering = if protocol == testbed::Protocol::TcpDns {
        "off"
    } else {
        "on"
    };
    let steering = match o.value("--steering")?.unwrap_or(default_steering) {
        "on" => true,
        "off" => false,
        other => bail!("--steering on|off, not {other:?}"),
    };
    let preset = Preset::parse(o.value("--preset")?.unwrap_or("none"))?;
    let mut cfg = match protocol {
        testbed::Protocol::Quic => RunConfig::back_to_back(steering, preset),
        testbed::Protocol::Tcp => RunConfig::tcp_back_to_back(steering, preset),
        testbed::Protocol::Udp => RunConfig::udp_back_to_back(steering, preset),
        testbed::Protocol::QuicSameIp => RunConfig::quic_same_ip_back_to_back(steering, preset),
        testbed::Protocol::TcpDns => {
            if steering {
                bail!("tcp-dns is the baseline without steering: --steering off");
            }
            let ttl = o.value("--ttl")?.unwrap_or("5").parse().context("--ttl")?;
            RunConfig::tcp_dns(ttl, preset)
        }
    };
    if let Some(s) = o.value("--strategy")? {
        if protocol != testbed::Protocol::Quic {
            bail!("--strategy is for QUIC runs");
        }
        if !["p-explicit", "r-explicit", "poa"].contains(&s) {
            bail!("--strategy p-explicit|r-explicit|poa, not {s:?}");
        }
        cfg.strategy = s.to_string();
    }
    match o.value("--mode")? {
        None | Some("back-to-back") => {}
        Some("sporadic") => {
            let strategy = cfg.strategy.clone();
            cfg = RunConfig {
                protocol: cfg.protocol,
                ..RunConfig::sporadic(steering, preset, &strategy)
            };
        }
        Some(other) => bail!("--mode back-to-back|sporadic, not {other:?}"),
    }
    if let Some(t) = o.value("--technique")? {
        cfg.technique = migration::Technique::parse(t)?;
    }
    if let Some(r) = o.value("--runtime")? {
        cfg.runtime = migr_testbed::placement::Runtime::parse(r)?;
    }
    if let Some(n) = o.value("--ballast-mb")? {
        cfg.ballast_mb = n.parse().context("--ballast-mb")?;
    }
    if let Some(n) = o.value("--requests")? {
        cfg.requests = n.parse().context("--requests")?;
    }
    if let Some(n) = o.value("--migrate-after")? {
        cfg.migrate_after = n.parse().context("--migrate-after")?;
    }
    if cfg.migrate_after >= cfg.requests {
        bail!("--migrate-after must be below --requests");
    }
    cfg.keep_files = o.flag("--keep");
    cfg.verbose = !o.flag("--quiet");
    let run = migration::run(&bins()?, &cfg)?;
    println!("{}", run.summary());
    if cfg.keep_files {
        println!("files kept in {}", run.work_dir.display());
    }
    if let Some(path) = o.value("--json")? {
        std::fs::write(path, serde_json::to_string_pretty(&run.to_json())? + "\n")
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

fn scenario_cmd(args: &[String]) -> Result<()> {
    let name = args
        .first()
        .context("scenario NAME[,NAME...]|all|techniques")?;
    let o = Opts(args[1..].to_vec());
    o.check(&["--runs", "--out"], &[])?;
    let out = PathBuf::from(o.value("--out")?.unwrap_or("results"));
    let chosen = if name == "all" {
        scenarios::host()
    } else if name == scenarios::TECHNIQUES {
        scenarios::guest()
    } else {
        name.split(',')
            .map(scenarios::find)
            .collect::<Result<Vec<_>>>()?
    };
    let runs = match o.value("--runs")? {
        Some(n) => n.parse().context("--runs")?,
        None => chosen.iter().map(|s| s.default_runs).max().unwrap_or(1),
    };
    // One run of each per round: arms to compare share the machine's state.
    let docs = scenarios::run_interleaved(&bins()?, &chosen, runs, &out)?;
    for doc in &docs {
        let m = |k: &str| {
            let s = doc.stat(k);
            format!(
                "{:.1} ± {:.1}",
                s.and_then(|s| s.mean).unwrap_or(f64::NAN),
                s.and_then(|s| s.ci95).unwrap_or(f64::NAN)
            )
        };
        println!(
            "[testbed] {}: {} runs ({} failed); downtime {} ms, disruption {} ms, ratio {}, requests lost {}",
            doc.scenario,
            doc.runs.len(),
            doc.failed_runs.len(),
            m("downtime_ms"),
            m("disruption_ms"),
            m("disruption_over_downtime"),
            m("requests_lost")
        );
    }
    Ok(())
}

fn hook_cost_cmd(args: &[String]) -> Result<()> {
    let o = Opts(args.to_vec());
    o.check(&["--pairs", "--preset", "--out"], &[])?;
    let pairs: usize = o
        .value("--pairs")?
        .unwrap_or("10")
        .parse()
        .context("--pairs")?;
    let preset = Preset::parse(o.value("--preset")?.unwrap_or("none"))?;
    let out = PathBuf::from(o.value("--out")?.unwrap_or("results"));
    let doc = testbed::hook_cost::run(&bins()?, pairs, preset, &out)?;
    println!(
        "[hook-cost] {pairs} pairs, {} failed runs",
        doc["failed_runs"]
    );
    println!(
        "  {:<44} {:>9} {:>9} {:>9}",
        "step", "on ms", "off ms", "added"
    );
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    for s in doc["steps"].as_array().into_iter().flatten() {
        println!(
            "  {:<44} {:>9} {:>9} {:>9}",
            s["step"].as_str().unwrap_or_default(),
            ms(&s["on_median_ms"]),
            ms(&s["off_median_ms"]),
            ms(&s["added_ms"])
        );
    }
    let d = &doc["downtime"];
    let stat =
        |v: &serde_json::Value| format!("{} ± {} (n {})", ms(&v["mean"]), ms(&v["ci95"]), v["n"]);
    println!("  downtime on  {} ms", stat(&d["on_ms"]));
    println!("  downtime off {} ms", stat(&d["off_ms"]));
    println!("  on / off     {}", stat(&d["on_over_off"]));
    Ok(())
}

fn topology_cmd(args: &[String]) -> Result<()> {
    let o = Opts(args.to_vec());
    o.check(&["--preset"], &[])?;
    testbed::check_environment()?;
    let preset = Preset::parse(o.value("--preset")?.unwrap_or("none"))?;
    let t = Instant::now();
    let topo = Topology::build(preset)?;
    println!(
        "[testbed] built in {:.0} ms ({} preset): {}",
        t.elapsed().as_secs_f64() * 1e3,
        preset.name(),
        topo.names().join(", ")
    );
    let names: Vec<String> = topo.names().iter().map(|s| s.to_string()).collect();
    drop(topo);
    let left: Vec<&String> = names
        .iter()
        .filter(|n| PathBuf::from("/run/netns").join(n).exists())
        .collect();
    if !left.is_empty() {
        bail!("namespaces left after teardown: {left:?}");
    }
    println!("[testbed] torn down: no namespace left");
    Ok(())
}

fn demo() -> Result<()> {
    let bins = bins()?;
    let started = Instant::now();
    println!(
        "[demo] two services in podman containers, each moved once with migr and once as \
         users have it today (no datapath): podman container checkpoint --export and restore \
         --import (runc and CRIU, cold) at the same IP between two nodes with their own podman \
         storage, migr's hook in the CRIU config file the container's annotation names, \
         finding the service by container id, and clients that know nothing of migr: a QUIC \
         client (quinn-proto, no extension, QUIC's own loss recovery) and a plain UDP \
         request/response client that gives a request up after 3 s"
    );
    let mut pairs = Vec::new();
    for (title, config) in [
        (
            "QUIC, unmodified client",
            RunConfig::quic_same_ip_back_to_back as fn(bool, Preset) -> RunConfig,
        ),
        ("UDP, unmodified client", RunConfig::udp_back_to_back),
    ] {
        let in_podman = |steering| RunConfig {
            runtime: migr_testbed::placement::Runtime::Podman,
            // podman's export and import add about half a second to the
            // downtime: the UDP client waits longer than that.
            udp_timeout_ms: 3000,
            ..config(steering, Preset::None)
        };
        let on = migration::run(&bins, &in_podman(true))?;
        println!("[demo] {title}, with migr: {}", on.summary());
        let off = migration::run(&bins, &in_podman(false))?;
        println!("[demo] {title}, without migr: {}", off.summary());
        pairs.push((title, on, off));
    }
    println!("[demo] summary");
    for (title, on, off) in &pairs {
        demo_table(title, on, off);
    }
    println!(
        "[demo] done in {:.0} s; every namespace, process and CRIU lock table is removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn demo_table(title: &str, on: &Run, off: &Run) {
    println!("  {title:<38} {:>12} {:>12}", "with migr", "without");
    let row = |name: &str, a: String, b: String| println!("  {name:<38} {a:>12} {b:>12}");
    row(
        "downtime (CRIU pre-dump..post-resume)",
        format!("{:.0} ms", on.downtime_ms),
        format!("{:.0} ms", off.downtime_ms),
    );
    row(
        "disruption (longest gap, client)",
        format!("{:.0} ms", on.disruption_ms),
        format!("{:.0} ms", off.disruption_ms),
    );
    row(
        "disruption - downtime",
        format!("{:+.0} ms", on.disruption_ms - on.downtime_ms),
        format!("{:+.0} ms", off.disruption_ms - off.downtime_ms),
    );
    row("requests lost", on.lost.to_string(), off.lost.to_string());
    let frames = |r: &Run| {
        r.src_frames
            .as_ref()
            .zip(r.dst_frames.as_ref())
            .map(|(s, d)| (s.parked + d.parked, s.replayed + d.replayed))
    };
    row(
        "frames parked / replayed by migr",
        frames(on).map_or("-".into(), |(p, r)| format!("{p} / {r}")),
        frames(off).map_or("- (no agent)".into(), |(p, r)| format!("{p} / {r}")),
    );
}
