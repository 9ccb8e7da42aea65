//! `migr-mptcp`: repeats the MPTCP scenarios of issue 7 on real kernel MPTCP
//! in network namespaces, with and without migr's steering, and writes the
//! results as JSON (schema: docs/mptcp.md).
//!
//! ```sh
//! cargo run -p migr-tests --bin migr-mptcp -- --scenario mptcp-freeze [--runs N] [--freeze-ms T] [--out PATH]
//! cargo run -p migr-tests --bin migr-mptcp -- --scenario mptcp-handover [--runs N] [--downtime-ms T] [--out PATH]
//! migr-mptcp serve --bind IP:PORT [--ready FILE]    # the MPTCP echo server the scenarios start
//! ```
//!
//! Needs root (namespaces, XDP), like the privileged tests.

#[path = "../mptcp/freeze.rs"]
mod freeze;
#[path = "../mptcp/handover.rs"]
mod handover;
#[path = "../mptcp/lab.rs"]
mod lab;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let bind = flag(&args, "--bind")?.context("serve needs --bind IP:PORT")?;
        let ready = flag(&args, "--ready")?.map(PathBuf::from);
        return lab::serve(bind.parse()?, ready.as_deref());
    }
    if args.iter().any(|a| a == "--help" || a == "-h") || args.is_empty() {
        println!(
            "usage: migr-mptcp --scenario mptcp-freeze|mptcp-handover [--runs N] \
             [--freeze-ms T] [--downtime-ms T] [--out PATH]\n       migr-mptcp serve --bind IP:PORT [--ready FILE]"
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
    let bins = lab::bins(std::env::current_exe()?);
    let result = match scenario.as_str() {
        "mptcp-freeze" => {
            let ms: u64 = flag(&args, "--freeze-ms")?.map_or(Ok(2000), |v| v.parse())?;
            freeze_scenario(bins, runs, Duration::from_millis(ms))?
        }
        "mptcp-handover" => {
            let ms: u64 = flag(&args, "--downtime-ms")?.map_or(Ok(1000), |v| v.parse())?;
            handover::scenario(bins, runs, Duration::from_millis(ms))?
        }
        other => bail!("unknown scenario {other:?} (mptcp-freeze, mptcp-handover)"),
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

fn freeze_scenario(bins: &'static lab::Bins, runs: usize, freeze: Duration) -> Result<Value> {
    let mut per: [(bool, Vec<Value>); 2] = [(true, Vec::new()), (false, Vec::new())];
    let mut failures = Vec::new();
    for i in 0..runs {
        for (steering, list) in per.iter_mut() {
            let tag = if *steering { "steering" } else { "no-steering" };
            let once = || -> Result<Value> {
                let mut lab = freeze::FreezeLab::new(
                    bins,
                    &freeze::Options {
                        connections: CONNECTIONS,
                        join: true,
                        period: PERIOD,
                    },
                )?;
                let r = freeze::freeze_once(&mut lab, *steering, freeze)?;
                Ok(json!({
                    "freeze_ms": r.freeze_ms,
                    "recovery_ms": r.recovery_ms,
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
                Ok(v) => {
                    println!(
                        "run {}/{runs} {tag}: recovery {:.1} ms, stall {:.0} ms, client retrans {}, RTOs {}, parked {} replayed {}",
                        i + 1,
                        v["recovery_ms"].as_f64().unwrap_or(f64::NAN),
                        v["stall_ms"].as_f64().unwrap_or(f64::NAN),
                        v["client"]["TcpRetransSegs"],
                        v["client"]["TcpExtTCPTimeouts"],
                        v["parked_frames"],
                        v["replayed_frames"]
                    );
                    list.push(v);
                }
                Err(e) => {
                    println!("run {}/{runs} {tag}: FAILED: {e:#}", i + 1);
                    failures.push(json!({"run": i, "variant": tag, "error": format!("{e:#}")}));
                }
            }
        }
    }
    let metrics: &[(&str, &[&str])] = &[
        ("recovery_ms", &["recovery_ms"]),
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
    for (steering, list) in &per {
        let tag = if *steering { "steering" } else { "no-steering" };
        variants.insert(
            tag.into(),
            json!({"summary": summarize(list, metrics), "runs": list}),
        );
    }
    Ok(json!({
        "schema": SCHEMA,
        "scenario": "mptcp-freeze",
        "environment": environment(),
        "params": {
            "runs": runs,
            "freeze_ms": freeze.as_millis() as u64,
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

pub const SCHEMA: &str = "migr-mptcp-result/1";

pub fn environment() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "kernel": kernel,
        "cpus": cpus,
        "unix_time": unix,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "congestion_control": std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .unwrap_or_default().trim(),
    })
}

/// mean, sample standard deviation and the 95% confidence interval of the
/// mean (Student's t) of each metric over the runs.
pub fn summarize(runs: &[Value], metrics: &[(&str, &[&str])]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, path) in metrics {
        let xs: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                let mut v = r;
                for p in *path {
                    v = &v[*p];
                }
                v.as_f64()
            })
            .filter(|x| x.is_finite())
            .collect();
        out.insert((*name).into(), stats(&xs));
    }
    Value::Object(out)
}

pub fn stats(xs: &[f64]) -> Value {
    let n = xs.len();
    if n == 0 {
        return json!({"n": 0});
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let (sd, half) = if n > 1 {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        (sd, t975(n - 1) * sd / (n as f64).sqrt())
    } else {
        (0.0, f64::NAN)
    };
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "n": n,
        "mean": r(mean),
        "sd": r(sd),
        "ci95_low": if half.is_finite() { json!(r(mean - half)) } else { Value::Null },
        "ci95_high": if half.is_finite() { json!(r(mean + half)) } else { Value::Null },
        "min": r(min),
        "max": r(max),
    })
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}
