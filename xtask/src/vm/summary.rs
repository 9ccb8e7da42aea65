//! The closing table over every kernel, and what failed.

use std::{fmt::Write as _, time::Duration};

use super::{PROGRAMS, console::KernelResult, kernel::Series, qemu::Accel};

pub(super) fn print_report(results: &[KernelResult], accel: Accel) {
    let accel = accel.name();
    println!();
    println!("[vm] results ({accel}):");
    let header = [
        "kernel",
        "btf",
        "loaded",
        "verified insns",
        "tests",
        "boot",
        "load",
        "tests",
        "result",
    ];
    let rows: Vec<[String; 9]> = results
        .iter()
        .map(|r| {
            let secs = |d: Option<Duration>| {
                d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
            };
            let yes_no = |b: Option<bool>| match b {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let (passed, failed) = r.totals();
            let insns = r
                .insns
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(" / ");
            [
                format!("{} ({})", r.name(), r.kver),
                yes_no(r.btf).to_string(),
                yes_no(r.loaded).to_string(),
                if insns.is_empty() { "-".into() } else { insns },
                if r.skipped.is_some() {
                    "not run".to_string()
                } else {
                    format!("{passed} passed, {failed} failed")
                },
                secs(r.boot),
                secs(r.load_time),
                secs(r.test_time),
                match (r.succeeded(), r.series.is_some_and(Series::expects_refusal)) {
                    (true, false) => "ok",
                    (true, true) => "ok (refused, as expected)",
                    (false, _) => "FAILED",
                }
                .to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::from("[vm] |");
        for (cell, w) in cells.iter().zip(&widths) {
            let pad = w - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        println!("{out}");
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    println!(
        "[vm] (verified insns: {}; boot: QEMU start to tests ready; load: the load check)",
        PROGRAMS.join(" / ")
    );
    for r in results
        .iter()
        .filter(|r| r.succeeded() && r.loaded == Some(false))
    {
        println!();
        println!(
            "[vm] Linux {} ({}): migr refused to load, as it must:",
            r.kver, r.version
        );
        println!("[vm]   {}", r.verdict.as_deref().unwrap_or_default());
        for m in &r.missing {
            println!("[vm]   feature {m}");
        }
    }
    for r in results.iter().filter(|r| !r.succeeded()) {
        println!();
        println!("[vm] Linux {} ({}) failed:", r.kver, r.version);
        if r.loaded == Some(false) {
            println!(
                "[vm]   the datapath did not load: {}",
                r.verdict.as_deref().unwrap_or("(no message)")
            );
            for m in &r.missing {
                println!("[vm]   feature {m}");
            }
            for l in &r.load_log {
                println!("[vm]   | {l}");
            }
        }
        if let Some(why) = &r.skipped {
            println!("[vm]   {why}");
        }
        for t in &r.tests {
            if t.rc != Some(0) || t.failed > 0 || t.passed == 0 {
                println!(
                    "[vm]   {}: exit {}, {} passed, {} failed {}",
                    t.name,
                    t.rc.map_or("-".to_string(), |c| c.to_string()),
                    t.passed,
                    t.failed,
                    t.failures.join(", ")
                );
            }
        }
        if r.skipped.is_none() && r.tests.len() != r.expected_tests {
            println!(
                "[vm]   {} of {} test binaries ran",
                r.tests.len(),
                r.expected_tests
            );
        }
        if let Some(e) = &r.error {
            println!("[vm]   {e}");
        }
    }
}
