//! What migr's CRIU hook adds to a migration's downtime.
//!
//! The same back-to-back QUIC migration (cold, new IP, P-Explicit) with
//! steering on and off, in interleaved pairs (on-off, then off-on, ...).
//! Both arms run the same action script, `migrctl criu-hook` included
//! (without migr it finds no agent and returns), so the difference is what
//! the agent's work costs. Per CRIU step (the interval between two
//! consecutive actions, from the timestamps the action script writes first
//! thing) the median of each arm; and the downtime of each arm, with the
//! ratio on/off per pair. Failed runs are kept with their reason.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    Bins,
    migration::{self, RunConfig},
    stats::mean_ci95,
    topology::Preset,
};

/// `(step, milliseconds)` between consecutive actions of one side.
pub fn steps(actions: &[(String, f64)]) -> Vec<(String, f64)> {
    actions
        .windows(2)
        .map(|w| (format!("{} -> {}", w[0].0, w[1].0), (w[1].1 - w[0].1) * 1e3))
        .collect()
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// One run's record.
fn record(steering: bool, pair: usize, run: Result<migration::Run>) -> Value {
    match run {
        Ok(r) => {
            let side = |a: &[(String, f64)]| -> Value {
                steps(a)
                    .into_iter()
                    .map(|(s, ms)| json!({"step": s, "ms": ms}))
                    .collect()
            };
            json!({
                "pair": pair,
                "steering": steering,
                "ok": true,
                "downtime_ms": r.downtime_ms,
                "disruption_ms": r.disruption_ms,
                "requests_lost": r.lost,
                "dump_steps": side(&r.src_phases),
                "restore_steps": side(&r.dst_phases),
            })
        }
        Err(e) => json!({
            "pair": pair,
            "steering": steering,
            "ok": false,
            "error": format!("{e:#}"),
        }),
    }
}

/// Per-step medians of both arms, in the order the steps first appear.
fn step_table(runs: &[Value]) -> Vec<Value> {
    let mut order: Vec<String> = Vec::new();
    for r in runs {
        for side in ["dump_steps", "restore_steps"] {
            for s in r[side].as_array().into_iter().flatten() {
                let name = s["step"].as_str().unwrap_or_default().to_string();
                if !order.contains(&name) {
                    order.push(name);
                }
            }
        }
    }
    let samples = |name: &str, steering: bool| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["ok"] == true && r["steering"] == steering)
            .flat_map(|r| {
                ["dump_steps", "restore_steps"]
                    .into_iter()
                    .flat_map(move |side| r[side].as_array().into_iter().flatten())
            })
            .filter(|s| s["step"] == name)
            .filter_map(|s| s["ms"].as_f64())
            .collect()
    };
    order
        .iter()
        .map(|name| {
            let (on, off) = (samples(name, true), samples(name, false));
            let (n_on, n_off) = (on.len(), off.len());
            let (m_on, m_off) = (median(on), median(off));
            json!({
                "step": name,
                "on_median_ms": m_on,
                "off_median_ms": m_off,
                "added_ms": m_on.zip(m_off).map(|(a, b)| a - b),
                "n_on": n_on,
                "n_off": n_off,
            })
        })
        .collect()
}

/// Downtime per arm, and the on/off ratio of each pair whose runs both
/// succeeded.
fn downtime_summary(runs: &[Value], pairs: usize) -> Value {
    let arm = |steering: bool| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["ok"] == true && r["steering"] == steering)
            .filter_map(|r| r["downtime_ms"].as_f64())
            .collect()
    };
    let ratios: Vec<f64> = (0..pairs)
        .filter_map(|p| {
            let of = |steering: bool| {
                runs.iter()
                    .find(|r| r["pair"] == p && r["steering"] == steering && r["ok"] == true)
                    .and_then(|r| r["downtime_ms"].as_f64())
            };
            Some(of(true)? / of(false)?)
        })
        .collect();
    let stat = |xs: &[f64]| {
        let (mean, ci95) = mean_ci95(xs);
        json!({"n": xs.len(), "mean": mean, "ci95": ci95, "median": median(xs.to_vec())})
    };
    json!({
        "on_ms": stat(&arm(true)),
        "off_ms": stat(&arm(false)),
        "on_over_off": stat(&ratios),
    })
}

/// Runs `pairs` interleaved pairs and writes `out/hook-cost.json`.
pub fn run(bins: &Bins, pairs: usize, preset: Preset, out: &Path) -> Result<Value> {
    let mut runs = Vec::new();
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for steering in order {
            let mut cfg = RunConfig::back_to_back(steering, preset);
            cfg.verbose = false;
            let run = migration::run(bins, &cfg);
            if let Err(e) = &run {
                eprintln!("[hook-cost] pair {pair} steering {steering}: failed: {e:#}");
            }
            let rec = record(steering, pair, run);
            eprintln!(
                "[hook-cost] pair {pair} steering {}: downtime {} ms",
                if steering { "on " } else { "off" },
                rec["downtime_ms"]
                    .as_f64()
                    .map_or("-".into(), |d| format!("{d:.1}"))
            );
            runs.push(rec);
        }
    }
    let doc = json!({
        "schema": "migr-hook-cost/1",
        "experiment": "QUIC back-to-back, P-Explicit, cold CRIU to a new IP, 28 MB; steering on and off interleaved, the same action script in both arms",
        "preset": preset.name(),
        "pairs": pairs,
        "failed_runs": runs.iter().filter(|r| r["ok"] != true).count(),
        "steps": step_table(&runs),
        "downtime": downtime_summary(&runs, pairs),
        "runs": runs,
    });
    std::fs::create_dir_all(out)?;
    let path = out.join("hook-cost.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_the_intervals_between_consecutive_actions() {
        let a = [
            ("pre-dump".to_string(), 10.0),
            ("network-lock".to_string(), 10.004),
            ("post-dump".to_string(), 10.1),
        ];
        let s = steps(&a);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "pre-dump -> network-lock");
        assert!((s[0].1 - 4.0).abs() < 1e-6);
        assert!((s[1].1 - 96.0).abs() < 1e-6);
    }

    #[test]
    fn the_tables_compare_arms_and_pairs() {
        let run = |pair: usize, steering: bool, lock_ms: f64, downtime: f64| {
            json!({"pair": pair, "steering": steering, "ok": true, "downtime_ms": downtime,
                   "dump_steps": [{"step": "pre-dump -> network-lock", "ms": lock_ms}],
                   "restore_steps": []})
        };
        let runs = vec![
            run(0, true, 4.0, 101.0),
            run(0, false, 3.0, 100.0),
            run(1, false, 3.5, 100.0),
            run(1, true, 4.5, 102.0),
            json!({"pair": 2, "steering": true, "ok": false, "error": "x"}),
            run(2, false, 9.0, 100.0),
        ];
        let table = step_table(&runs);
        assert_eq!(table[0]["on_median_ms"], 4.25);
        assert_eq!(table[0]["off_median_ms"], 3.5);
        assert_eq!(table[0]["n_off"], 3);
        let d = downtime_summary(&runs, 3);
        assert_eq!(
            d["on_over_off"]["n"], 2,
            "the failed run's pair is left out"
        );
        assert!((d["on_over_off"]["mean"].as_f64().unwrap() - 1.015).abs() < 1e-9);
    }
}
