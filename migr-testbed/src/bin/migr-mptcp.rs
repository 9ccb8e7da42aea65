//! `migr-mptcp`: repeats the MPTCP scenarios of issue 7 on real kernel MPTCP
//! in network namespaces, with and without migr's steering, and writes the
//! results as JSON (schema: docs/mptcp.md).
//!
//! ```sh
//! cargo run -p migr-testbed --bin migr-mptcp -- --scenario mptcp-freeze [--runs N] [--freeze-ms T] [--out PATH]
//! cargo run -p migr-testbed --bin migr-mptcp -- --scenario mptcp-handover [--runs N] [--downtime-ms T] [--out PATH]
//! migr-mptcp serve --bind IP:PORT [--ready FILE]    # the MPTCP echo server the scenarios start
//! ```
//!
//! Needs root (namespaces, XDP), like the privileged tests.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use migr_testbed::mptcp::{freeze, handover, lab};
use serde_json::{Value, json};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let bind = flag(&args, "--bind")?.context("serve needs --bind IP:PORT")?;
        let ready = flag(&args, "--ready")?.map(PathBuf::from);
        let rcvbuf = flag(&args, "--rcvbuf")?.map(|v| v.parse()).transpose()?;
        return lab::serve(bind.parse()?, ready.as_deref(), rcvbuf);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") || args.is_empty() {
        println!(
            "usage: migr-mptcp --scenario mptcp-freeze|mptcp-handover [--runs N] \
             [--freeze-ms T] [--downtime-ms T] [--variant steering|steering-paced|no-steering|no-steering-reannounce] [--server-rcvbuf BYTES] [--out PATH]\n       migr-mptcp serve --bind IP:PORT [--ready FILE]"
        );
        return Ok(());
    }
    let scenario = flag(&args, "--scenario")?.context("--scenario is required")?;
    let runs: usize = flag(&args, "--runs")?.map_or(Ok(10), |v| v.parse())?;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let out = flag(&args, "--out")?
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("results").join(format!("{scenario}.json")));
    let only = flag(&args, "--variant")?;
    let rcvbuf: Option<u32> = flag(&args, "--server-rcvbuf")?
        .map(|v| v.parse())
        .transpose()?;
    let bins = lab::bins(std::env::current_exe()?);
    let result = match scenario.as_str() {
        "mptcp-freeze" => {
            let ms: u64 = flag(&args, "--freeze-ms")?.map_or(Ok(2000), |v| v.parse())?;
            freeze_scenario(
                bins,
                runs,
                Duration::from_millis(ms),
                only.as_deref(),
                rcvbuf,
            )?
        }
        "mptcp-handover" => {
            let ms: u64 = flag(&args, "--downtime-ms")?.map_or(Ok(1000), |v| v.parse())?;
            handover::scenario(
                bins,
                runs,
                Duration::from_millis(ms),
                only.as_deref(),
                rcvbuf,
            )?
        }
        "mptcp-join-race" => join_race(bins, runs)?,
        other => {
            bail!("unknown scenario {other:?} (mptcp-freeze, mptcp-handover, mptcp-join-race)")
        }
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn flag(args: &[String], name: &str) -> Result<Option<String>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .cloned()
            .map(Some)
            .with_context(|| format!("{name} needs a value")),
    }
}

const CONNECTIONS: u32 = 2;
const PERIOD: Duration = Duration::from_millis(5);

/// B's endpoint configured before the connections: how many joins does the
/// datapath classify (their token learned before the MP_JOIN SYN arrived)?
fn join_race(bins: &'static lab::Bins, runs: usize) -> Result<Value> {
    let mut list = Vec::new();
    let mut failures = Vec::new();
    for i in 0..runs {
        let once = || -> Result<Value> {
            let lab = freeze::FreezeLab::new(
                bins,
                &freeze::Options {
                    connections: CONNECTIONS,
                    replay_rate: None,
                    server_rcvbuf: None,
                    join: false,
                    period: PERIOD,
                    announce_first: true,
                    pause_agent: false,
                },
            )?;
            let stats = lab.agent.stats()?;
            let joins = lab.kernel()?.iter().map(|c| c.subflows - 1).sum::<u32>();
            Ok(json!({
                "joins": joins,
                "joins_learned_on_arrival": lab::num(&stats, &["reasons", "flows_learned"]),
                "joins_learned_late": lab::num(&stats, &["agent", "late_joins_learned"]),
                "joins_unknown_token": lab::num(&stats, &["reasons", "mptcp_unknown_token"]),
                "tokens_learned": lab.agent.tokens()?.len(),
            }))
        };
        match once() {
            Ok(v) => {
                println!(
                    "run {}/{runs}: {} joins, {} learned on arrival, {} learned late (token unknown on arrival: {})",
                    i + 1,
                    v["joins"],
                    v["joins_learned_on_arrival"],
                    v["joins_learned_late"],
                    v["joins_unknown_token"]
                );
                list.push(v);
            }
            Err(e) => {
                println!("run {}/{runs}: FAILED: {e:#}", i + 1);
                failures.push(json!({"run": i, "error": format!("{e:#}")}));
            }
        }
    }
    let joins: u64 = list.iter().filter_map(|v| v["joins"].as_u64()).sum();
    let sum = |key: &str| -> u64 { list.iter().filter_map(|v| v[key].as_u64()).sum() };
    let (on_arrival, late) = (sum("joins_learned_on_arrival"), sum("joins_learned_late"));
    Ok(json!({
        "schema": lab::SCHEMA,
        "scenario": "mptcp-join-race",
        "environment": lab::environment(),
        "params": {"runs": runs, "connections": CONNECTIONS},
        "total": {"joins": joins, "joins_learned_on_arrival": on_arrival, "joins_learned_late": late,
                  "joins_learned": on_arrival + late},
        "runs": list,
        "failures": failures,
    }))
}

fn freeze_scenario(
    bins: &'static lab::Bins,
    runs: usize,
    freeze: Duration,
    only: Option<&str>,
    rcvbuf: Option<u32>,
) -> Result<Value> {
    let mut per = handover::variants(only)?;
    // Re-announcing is a handover matter.
    per.retain(|v| !v.reannounce);
    if per.is_empty() {
        bail!("that variant is for the handover only");
    }
    let mut failures = Vec::new();
    for i in 0..runs {
        for v in per.iter_mut() {
            let once = || -> Result<Value> {
                let mut lab = freeze::FreezeLab::new(
                    bins,
                    &freeze::Options {
                        connections: CONNECTIONS,
                        replay_rate: v.replay_rate,
                        server_rcvbuf: rcvbuf,
                        join: true,
                        period: PERIOD,
                        announce_first: false,
                        pause_agent: false,
                    },
                )?;
                let r = freeze::freeze_once(&mut lab, v.steering, freeze)?;
                Ok(json!({
                    "freeze_ms": r.freeze_ms,
                    "recovery_ms": r.recovery_ms,
                    "first_echo_ms": r.first_echo_ms,
                    "steps_ms": r.steps_ms,
                    "stall_ms": r.stall_ms,
                    "records": r.records,
                    "client": r.client,
                    "server": r.server,
                    "parked_frames": r.parked,
                    "replayed_frames": r.replayed,
                    "park_failed": r.park_failed,
                    "overflow_frames": r.overflow,
                    "replay_failed": r.replay_failed,
                    "xdp_drops": r.xdp_drops,
                    "subflows_after": r.subflows_after,
                    "replay_ms": r.replay_ms,
                    "lost_in_datapath": r.parked.saturating_sub(r.replayed) + r.park_failed,
                }))
            };
            match once() {
                Ok(r) => {
                    println!(
                        "run {}/{runs} {}: recovery {:.1} ms, stall {:.0} ms, client retrans {}, RTOs {}, parked {} replayed {}",
                        i + 1,
                        v.name,
                        r["recovery_ms"].as_f64().unwrap_or(f64::NAN),
                        r["stall_ms"].as_f64().unwrap_or(f64::NAN),
                        r["client"]["TcpRetransSegs"],
                        r["client"]["TcpExtTCPTimeouts"],
                        r["parked_frames"],
                        r["replayed_frames"]
                    );
                    v.runs.push(r);
                }
                Err(e) => {
                    println!("run {}/{runs} {}: FAILED: {e:#}", i + 1, v.name);
                    failures.push(json!({"run": i, "variant": v.name, "error": format!("{e:#}")}));
                }
            }
        }
    }
    let metrics: &[(&str, &[&str])] = &[
        ("recovery_ms", &["recovery_ms"]),
        ("first_echo_ms", &["first_echo_ms"]),
        ("steps_ms", &["steps_ms"]),
        ("stall_ms", &["stall_ms"]),
        ("client_retrans_segs", &["client", "TcpRetransSegs"]),
        ("client_rto_timeouts", &["client", "TcpExtTCPTimeouts"]),
        ("server_retrans_segs", &["server", "TcpRetransSegs"]),
        (
            "server_duplicate_data",
            &["server", "MPTcpExtDuplicateData"],
        ),
        ("parked_frames", &["parked_frames"]),
        ("replayed_frames", &["replayed_frames"]),
        ("lost_in_datapath", &["lost_in_datapath"]),
        ("replay_ms", &["replay_ms"]),
    ];
    let mut variants = serde_json::Map::new();
    for v in &per {
        variants.insert(
            v.name.into(),
            json!({
                "steering": v.steering,
                "replay_rate": v.replay_rate,
                "summary": lab::summarize(&v.runs, metrics),
                "runs": v.runs,
            }),
        );
    }
    Ok(json!({
        "schema": lab::SCHEMA,
        "scenario": "mptcp-freeze",
        "environment": lab::environment(),
        "params": {
            "runs": runs,
            "freeze_ms": freeze.as_millis() as u64,
            "server_rcvbuf": rcvbuf,
            "connections": CONNECTIONS,
            "subflows_per_connection": 2,
            "record_bytes": lab::RECORD,
            "record_period_ms": PERIOD.as_millis() as u64,
            "thaw_phase": "abort",
        },
        "variants": variants,
        "failures": failures,
    }))
}
