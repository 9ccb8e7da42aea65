//! The report's Markdown tables.

use super::*;

pub(super) fn fmt_stat(s: Option<Stat>, digits: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) => match s.ci95 {
            Some(ci) if s.n > 1 => format!("{:.digits$} ± {:.digits$}", s.mean, ci),
            _ => format!("{:.digits$}", s.mean),
        },
    }
}

pub(super) fn ratio(a: Option<Stat>, b: Option<Stat>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.mean > 0.0 => format!("{:.2}", a.mean / b.mean),
        _ => "-".into(),
    }
}

/// The suffix of the scenarios that run what users have without migr: no
/// datapath and a client with QUIC's own loss recovery (docs/testbed.md).
pub(super) const BASELINE_SUFFIX: &str = "-baseline";

/// The arm that runs what users have without migr for the experiment `on`
/// belongs to: for QUIC to a new IP `X-baseline` (no datapath, an RFC 9002
/// client); for TCP, UDP and same-IP QUIC, whose clients are unmodified in
/// both arms, `X-steering-off`.
pub(super) fn without_migr<'a>(r: &'a Results, on: &Scenario) -> Option<&'a Scenario> {
    let base = on.name.strip_suffix("-steering-on")?;
    let name = match on.protocol.as_str() {
        "tcp" | "udp" | "quic-same-ip" => format!("{base}-steering-off"),
        _ => format!("{base}{BASELINE_SUFFIX}"),
    };
    r.testbed.iter().find(|s| s.name == name)
}

/// `a - b` with the half-width of its 95% CI (normal approximation from the
/// arms' own half-widths: independent arms).
pub(super) fn difference(a: Option<Stat>, b: Option<Stat>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => match (a.ci95, b.ci95) {
            (Some(ca), Some(cb)) => {
                format!(
                    "{:+.0} ± {:.0}",
                    a.mean - b.mean,
                    (ca * ca + cb * cb).sqrt()
                )
            }
            _ => format!("{:+.0}", a.mean - b.mean),
        },
        _ => "-".into(),
    }
}

/// migr (`X-steering-on`) against what users have without it.
pub(super) fn with_and_without(r: &Results, md: &mut String) {
    let rows: Vec<(&str, &Scenario, &Scenario)> = r
        .testbed
        .iter()
        .filter(|s| s.steering)
        .filter_map(|on| Some((on.base(), on, without_migr(r, on)?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    md.push_str(
        "
## With migr versus without it

",
    );
    md.push_str("Without migr, for QUIC: no datapath, and a client that recovers with QUIC's own probe timeouts (RFC 9002), as the seed's client does (`X-baseline`); for TCP, plain UDP and same-IP QUIC (a plain quinn-proto client), whose clients are unmodified in both arms: no datapath (`X-steering-off`). disruption - downtime: how much longer than the service was down the client waited (mean of the runs' differences is the difference of the means). The service's own downtime: from the server's last answer before the freeze to its first after the restore (its `answer-gap` log line, server side; `-` in runs from before servers logged it). The difference of disruptions carries a 95% CI (normal approximation, independent arms).

");
    md.push_str("| experiment | n with / without | downtime with | downtime without | service's own downtime with / without | disruption - downtime with | without | disruption with - without (ms) | requests lost with / without |
");
    md.push_str(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |
",
    );
    for (base, on, off) in rows {
        let st = |s: &Scenario, k: &str| s.stat(k);
        let excess = |s: &Scenario| match (st(s, "disruption_ms"), st(s, "downtime_ms")) {
            (Some(d), Some(t)) => format!("{:+.0} ms", d.mean - t.mean),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {base} | {} / {} | {} | {} | {} / {} | {} | {} | {} | {} / {} |",
            on.runs,
            off.runs,
            fmt_stat(st(on, "downtime_ms"), 0),
            fmt_stat(st(off, "downtime_ms"), 0),
            fmt_stat(st(on, "service_downtime_ms"), 0),
            fmt_stat(st(off, "service_downtime_ms"), 0),
            excess(on),
            excess(off),
            difference(st(on, "disruption_ms"), st(off, "disruption_ms")),
            fmt_stat(st(on, "requests_lost"), 1),
            fmt_stat(st(off, "requests_lost"), 1),
        );
    }
}

/// Every failed run, with its reason: a scenario's statistics leave them out.
pub(super) fn failed_runs(r: &Results, md: &mut String) {
    let failed: Vec<&Scenario> = r.testbed.iter().filter(|s| !s.failed.is_empty()).collect();
    md.push_str(
        "
## Failed runs

",
    );
    if failed.is_empty() {
        md.push_str(
            "None recorded.
",
        );
        return;
    }
    for s in failed {
        for (k, why) in &s.failed {
            let why = why.lines().next().unwrap_or_default();
            let _ = writeln!(md, "- {} run {k}: {why}", s.name);
        }
    }
}

/// Bulk TCP: the runs whose freeze fell in the upload (the client's segments
/// held up) apart from those where only the echo was outstanding.
pub(super) fn freeze_hits(r: &Results, md: &mut String) {
    let (upload, echo) = (
        "disruption_ms_freeze_in_upload",
        "disruption_ms_freeze_in_echo",
    );
    let bulk: Vec<&Scenario> = r
        .testbed
        .iter()
        .filter(|s| s.stat(upload).is_some() || s.stat(echo).is_some())
        .collect();
    if bulk.is_empty() {
        return;
    }
    md.push_str(
        "\n## Bulk TCP: where the freeze hit\n\nFrom the client's send queue (SIOCOUTQ sampled every 250 us) at the source's network lock: \
         upload: request bytes were unacknowledged (the client's segments were held up); echo: only the server's echo was outstanding. \
         Disruption per kind, ms.\n\n| scenario | n upload | disruption, upload | n echo | disruption, echo |\n| --- | --- | --- | --- | --- |\n",
    );
    for s in bulk {
        let n = |k| s.stat(k).map_or(0, |st| st.n);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.name,
            n(upload),
            fmt_stat(s.stat(upload), 0),
            n(echo),
            fmt_stat(s.stat(echo), 0)
        );
    }
}

/// The latency preset's delay lines: whether they held their delay (frames
/// more than 1 ms late, the latest) and what they lost, per scenario.
pub(super) fn delay_lines(r: &Results, md: &mut String) {
    let shaped: Vec<&Scenario> = r
        .testbed
        .iter()
        .filter(|s| s.stat("delay_line_max_late_ms").is_some())
        .collect();
    if shaped.is_empty() {
        return;
    }
    md.push_str(
        "\n## Delay lines (latency preset)\n\nPer run, over the whole run (the dump's image transfer included): frames that left more than 1 ms after their due time, \
         the latest one, frames the kernel dropped before the delay line read them, frames it failed to send.\n\n\
         | scenario | n | frames late > 1 ms | latest, ms | dropped | failed |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for s in shaped {
        let st = |k| fmt_stat(s.stat(k), 1);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            s.stat("delay_line_max_late_ms").map_or(0, |x| x.n),
            st("delay_line_late_frames"),
            st("delay_line_max_late_ms"),
            st("delay_line_dropped"),
            st("delay_line_failed"),
        );
    }
}

/// Steering on and off of each base name, in the order of first appearance.
pub(super) fn pairs(r: &Results) -> Vec<(&str, Option<&Scenario>, Option<&Scenario>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut map: BTreeMap<&str, (Option<&Scenario>, Option<&Scenario>)> = BTreeMap::new();
    for s in &r.testbed {
        let e = map.entry(s.base()).or_insert_with(|| {
            order.push(s.base());
            (None, None)
        });
        if s.steering {
            e.0 = Some(s)
        } else {
            e.1 = Some(s)
        }
    }
    order.into_iter().map(|b| (b, map[b].0, map[b].1)).collect()
}

pub(super) fn mptcp_stat(summary: &Value, key: &str) -> Option<Stat> {
    let v = summary.get(key)?;
    let mean = v.get("mean")?.as_f64()?;
    Some(Stat {
        n: v.get("n")?.as_u64()? as usize,
        mean,
        ci95: v.get("ci95_high").and_then(Value::as_f64).map(|h| h - mean),
    })
}

pub(super) fn mptcp_section(r: &Results, md: &mut String, plots: &Path) -> Result<Vec<String>> {
    md.push_str("\n## MPTCP (migr-mptcp, docs/mptcp.md)\n\n");
    if r.mptcp.is_empty() {
        md.push_str(
            "No `results/mptcp-*.json` here: run the MPTCP runner (docs/mptcp.md) to add them.\n",
        );
        return Ok(Vec::new());
    }
    let keys = [
        "stall_ms",
        "recovery_ms",
        "downtime_ms",
        "freeze_ms",
        "join_ms",
    ];
    md.push_str("| file | variant | n | stall ms | recovery ms | downtime ms | freeze ms | join ms | lost in datapath |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let mut groups = Vec::new();
    for m in &r.mptcp {
        let Some(variants) = m.doc.get("variants").and_then(Value::as_object) else {
            let total = m
                .doc
                .get("total")
                .map(Value::to_string)
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                md,
                "| {} | (no variants) | - | totals: `{total}` | | | | | |",
                m.file
            );
            continue;
        };
        for (name, v) in variants {
            let s = v.get("summary").cloned().unwrap_or(Value::Null);
            let n = keys
                .iter()
                .find_map(|k| mptcp_stat(&s, k))
                .map_or(0, |x| x.n);
            let cols: Vec<String> = keys
                .iter()
                .map(|k| fmt_stat(mptcp_stat(&s, k), 1))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {name} | {n} | {} | {} |",
                m.file,
                cols.join(" | "),
                fmt_stat(mptcp_stat(&s, "lost_in_datapath"), 1)
            );
            groups.push(Group {
                label: format!("{} {name}", m.file.trim_end_matches(".json")),
                bars: vec![mptcp_stat(&s, "stall_ms")],
            });
        }
    }
    if groups.iter().all(|g| g.bars[0].is_none()) {
        return Ok(Vec::new());
    }
    hbars(
        &plots.join("mptcp-stall.svg"),
        "MPTCP: the longest stall of the client's stream (mean, 95% CI)",
        "ms",
        &["stall"],
        &groups,
    )?;
    md.push_str("\n![MPTCP stall](plots/mptcp-stall.svg)\n");
    Ok(vec!["plots/mptcp-stall.svg".into()])
}

/// The prefix of the scenarios of seed 000's four CRIU techniques (`migr-testbed scenario
/// techniques`; they run in a guest: `cargo xtask testbed --vm 6.12`).
const TECHNIQUES_PREFIX: &str = "techniques-";
/// Seed 000's techniques, in its order.
const TECHNIQUES: [&str; 4] = ["cold", "pre-copy", "post-copy", "hybrid"];

/// The techniques side by side, per protocol and arm, with each one's downtime against cold's;
/// a plot of downtime and disruption per technique. Nothing when no technique scenario ran.
pub(super) fn techniques(r: &Results, md: &mut String, plots: &Path) -> Result<Vec<String>> {
    let find = |name: String| r.testbed.iter().find(|s| s.name == name);
    let mut rows = Vec::new();
    for (protocol, arms) in [
        ("quic-p-explicit", ["steering-on", "baseline"]),
        ("tcp", ["steering-on", "steering-off"]),
    ] {
        for arm in arms {
            let cold = find(format!("{TECHNIQUES_PREFIX}{protocol}-cold-{arm}"));
            for t in TECHNIQUES {
                if let Some(s) = find(format!("{TECHNIQUES_PREFIX}{protocol}-{t}-{arm}")) {
                    rows.push((protocol, arm, t, s, cold));
                }
            }
        }
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    md.push_str(
        "\n## CRIU techniques (seed 000: cold, pre-copy, post-copy, hybrid)\n\n\
         Downtime: CRIU's `pre-dump` action of the final dump to the restore's `post-resume`; \
         pre-dumps run before it while the service answers (pre-dump ms: `criu pre-dump` run \
         time; longest gap: the QUIC server's longest pause in answering during it, 0 when it \
         never paused over 20 ms). Post-copy and hybrid: the final dump keeps the memory at the \
         source node and serves it over the links; lazy ms: post-resume until the last page \
         arrived. Images: the final dump's (the pre-dump's moved before). vs cold: this \
         technique's mean downtime over cold's, same protocol and arm.\n\n",
    );
    md.push_str("| protocol | arm | technique | n (failed) | downtime ms | disruption ms | disruption/downtime | downtime vs cold | pre-dump ms | longest gap in pre-dump ms | lazy ms | images MB | req. lost |\n");
    md.push_str(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut groups = Vec::new();
    for (protocol, arm, t, s, cold) in &rows {
        let mb = s.stat("image_bytes").map(|x| Stat {
            mean: x.mean / 1e6,
            ci95: x.ci95.map(|c| c / 1e6),
            ..x
        });
        let _ = writeln!(
            md,
            "| {protocol} | {arm} | {t} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.runs,
            s.failed.len(),
            fmt_stat(s.stat("downtime_ms"), 0),
            fmt_stat(s.stat("disruption_ms"), 0),
            fmt_stat(s.stat("disruption_over_downtime"), 2),
            ratio(
                s.stat("downtime_ms"),
                cold.and_then(|c| c.stat("downtime_ms"))
            ),
            fmt_stat(s.stat("pre_dump_ms"), 0),
            fmt_stat(s.stat("pre_copy_longest_answer_gap_ms"), 0),
            fmt_stat(s.stat("lazy_pages_ms"), 0),
            fmt_stat(mb, 2),
            fmt_stat(s.stat("requests_lost"), 1),
        );
        groups.push(Group {
            label: format!("{protocol} {t} {arm}"),
            bars: vec![s.stat("downtime_ms"), s.stat("disruption_ms")],
        });
    }
    let file = "plots/techniques.svg";
    hbars(
        &plots.join("techniques.svg"),
        "CRIU techniques: downtime and client-perceived disruption (mean, 95% CI)",
        "ms",
        &["downtime", "disruption"],
        &groups,
    )?;
    let _ = writeln!(md, "\n![CRIU techniques]({file})");
    Ok(vec![file.to_string()])
}
