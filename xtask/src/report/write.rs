//! `results/README.md`: the tables and the plots, in order.

use super::*;

/// Writes `dir/README.md` and `dir/plots/*.svg`; returns the paths written
/// (relative to `dir`).
pub fn write_report(r: &Results, dir: &Path) -> Result<Vec<String>> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let mut written = Vec::new();
    let mut md = String::new();
    let runs: Vec<usize> = r.testbed.iter().map(|s| s.runs).collect();
    let (rmin, rmax) = (
        runs.iter().min().copied().unwrap_or(0),
        runs.iter().max().copied().unwrap_or(0),
    );
    md.push_str("# Results\n\n");
    md.push_str(
        "Written by `cargo xtask report` from the files here (`cargo xtask testbed --all --runs N` \
         writes them; docs/testbed.md describes the scenarios and every field). Means with the \
         half-width of their 95% confidence interval (Student's t: with few runs that interval \
         is wide). The testbed runs release builds on a 2-vCPU machine, veths with their \
         default offloads, the images moved over the links, the scenarios of one command \
         interleaved; the downtime varies with the load, read the ratios. Steering off is \
         no datapath with migr-quic's fast-probing client; the baseline (what users have \
         without migr) is no datapath with an RFC 9002 client.\n\n",
    );
    if let Some(guest) = &r.guest {
        let _ = writeln!(md, "Measured in a guest: {guest}.\n");
    }
    if let Some(t) = [12.71, 4.30, 3.18, 2.78, 2.57].get(rmin.wrapping_sub(2)) {
        let _ = writeln!(
            md,
            "With n = {rmin} the half-width is {t} standard errors.\n"
        );
    }
    let _ = writeln!(
        md,
        "{} testbed scenarios, {rmin}-{rmax} runs each.\n",
        r.testbed.len()
    );
    for n in &r.notes {
        let _ = writeln!(md, "- note: {n}");
    }
    if !r.notes.is_empty() {
        md.push('\n');
    }

    // Steering on versus off.
    md.push_str("## Steering on versus off\n\n");
    md.push_str("disruption/downtime: the mean of each run's ratio (1: the client waits only while the service is down). on/off: ratios of the means (below 1: steering on is better).\n\n");
    md.push_str("| experiment | downtime on | downtime off | disruption on | disruption off | disruption/downtime on | disruption/downtime off | disruption on/off | downtime on/off | client lost pkts on / off |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let mut groups = Vec::new();
    // Scenarios with only one side (baselines such as TCP+DNS) get a table of their own
    // below: next to each other on one scale they would squash the pairs.
    let mut unpaired = Vec::new();
    for (base, on, off) in pairs(r) {
        let st = |s: Option<&Scenario>, k: &str| s.and_then(|s| s.stat(k));
        if base.ends_with(BASELINE_SUFFIX) {
            continue;
        }
        if on.is_none() || off.is_none() {
            unpaired.push((base, on.or(off)));
            continue;
        }
        let lost = |s: Option<&Scenario>| {
            fmt_stat(
                st(s, "client_lost_packets").or_else(|| st(s, "client_tcp_retransmits")),
                1,
            )
        };
        let _ = writeln!(
            md,
            "| {base} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            fmt_stat(st(on, "downtime_ms"), 0),
            fmt_stat(st(off, "downtime_ms"), 0),
            fmt_stat(st(on, "disruption_ms"), 0),
            fmt_stat(st(off, "disruption_ms"), 0),
            fmt_stat(st(on, "disruption_over_downtime"), 2),
            fmt_stat(st(off, "disruption_over_downtime"), 2),
            ratio(st(on, "disruption_ms"), st(off, "disruption_ms")),
            ratio(st(on, "downtime_ms"), st(off, "downtime_ms")),
            lost(on),
            lost(off),
        );
        groups.push(Group {
            label: base.to_string(),
            bars: vec![
                st(on, "downtime_ms"),
                st(on, "disruption_ms"),
                st(off, "downtime_ms"),
                st(off, "disruption_ms"),
            ],
        });
    }
    hbars(
        &plots.join("steering.svg"),
        "Steering on versus off: downtime and client-perceived disruption (mean, 95% CI)",
        "ms",
        &[
            "downtime, steering on",
            "disruption, steering on",
            "downtime, steering off",
            "disruption, steering off",
        ],
        &groups,
    )?;
    written.push("plots/steering.svg".to_string());
    md.push_str("\n![steering on versus off](plots/steering.svg)\n");
    if !unpaired.is_empty() {
        md.push_str("\n## Scenarios without a steering counterpart\n\n");
        md.push_str("| scenario | steering | downtime | disruption | disruption/downtime |\n");
        md.push_str("| --- | --- | --- | --- | --- |\n");
        for (base, s) in unpaired {
            let st = |k: &str| s.and_then(|s| s.stat(k));
            let _ = writeln!(
                md,
                "| {base} | {} | {} | {} | {} |",
                if s.is_some_and(|s| s.steering) {
                    "on"
                } else {
                    "off"
                },
                fmt_stat(st("downtime_ms"), 0),
                fmt_stat(st("disruption_ms"), 0),
                fmt_stat(st("disruption_over_downtime"), 2),
            );
        }
    }

    with_and_without(r, &mut md);
    written.extend(techniques(r, &mut md, &plots)?);
    failed_runs(r, &mut md);
    freeze_hits(r, &mut md);
    delay_lines(r, &mut md);

    // Sporadic: the service time of the first request after the migration (Fig. 4).
    let sporadic: Vec<&Scenario> = r.testbed.iter().filter(|s| s.mode == "sporadic").collect();
    if !sporadic.is_empty() {
        let mut by: BTreeMap<String, [Option<Stat>; 2]> = BTreeMap::new();
        for s in &sporadic {
            let e = by
                .entry(s.strategy.clone().unwrap_or_else(|| s.protocol.clone()))
                .or_default();
            e[usize::from(!s.steering)] = s.stat("after_migration_service_ms");
        }
        md.push_str(
            "\n## Sporadic requests: service time of the first request after the migration\n\n",
        );
        md.push_str("| strategy | steering on, ms | steering off, ms |\n| --- | --- | --- |\n");
        let groups: Vec<Group> = by
            .into_iter()
            .map(|(k, v)| {
                let _ = writeln!(
                    md,
                    "| {k} | {} | {} |",
                    fmt_stat(v[0], 1),
                    fmt_stat(v[1], 1)
                );
                Group {
                    label: k,
                    bars: v.to_vec(),
                }
            })
            .collect();
        hbars(
            &plots.join("sporadic-service-time.svg"),
            "Sporadic (a request every 10 s): service time after the migration (mean, 95% CI)",
            "ms",
            &["steering on", "steering off"],
            &groups,
        )?;
        written.push("plots/sporadic-service-time.svg".into());
        md.push_str("\n![sporadic service time](plots/sporadic-service-time.svg)\n");
    }

    // Service time per request: run 1 of each back-to-back experiment, on and off.
    md.push_str("\n## Service time per request (run 1, steering on and off)\n\n");
    for (base, on, off) in pairs(r) {
        if on.or(off).is_none_or(|s| s.mode != "back-to-back") {
            continue;
        }
        let mut series = Vec::new();
        for (label, s) in [("steering on", on), ("steering off", off)] {
            if let Some(csv) = s.and_then(|s| s.csvs.first()) {
                series.push((label.to_string(), service_series(&read_csv(csv)?)));
            }
        }
        if series.is_empty() {
            let _ = writeln!(md, "- {base}: no CSV (results/NAME/run-1.csv), no plot");
            continue;
        }
        let file = format!("plots/service-time-{base}.svg");
        lines(
            &dir.join(&file),
            &format!("{base}: service time per request (run 1)"),
            "request, relative to the one that waited longest",
            "service time, ms",
            &series,
        )?;
        let _ = writeln!(md, "- [{base}]({file})");
        written.push(file);
    }

    // Phases.
    let phase_keys = ["dump_ms", "transfer_ms", "restore_ms", "downtime_ms"];
    let groups: Vec<Group> = r
        .testbed
        .iter()
        .map(|s| Group {
            label: s.name.clone(),
            bars: phase_keys.iter().map(|k| s.stat(k)).collect(),
        })
        .collect();
    hbars(
        &plots.join("phases.svg"),
        "Phases of each migration (mean, 95% CI)",
        "ms",
        &[
            "dump",
            "transfer (copy of the images)",
            "restore",
            "downtime",
        ],
        &groups,
    )?;
    written.push("plots/phases.svg".into());
    md.push_str("\n## Every scenario\n\n![phases](plots/phases.svg)\n\n");
    md.push_str("| scenario | n | downtime ms | disruption ms | ratio | dump ms | transfer ms | restore ms | total ms | images MB | req. lost | client lost pkts / retrans | parked | replayed | lost in datapath | dropped by the service's socket |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for s in &r.testbed {
        let mb = s.stat("image_bytes").map(|x| Stat {
            mean: x.mean / 1e6,
            ci95: x.ci95.map(|c| c / 1e6),
            ..x
        });
        let lost = s
            .stat("client_lost_packets")
            .or_else(|| s.stat("client_tcp_retransmits"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.runs,
            fmt_stat(s.stat("downtime_ms"), 0),
            fmt_stat(s.stat("disruption_ms"), 0),
            fmt_stat(s.stat("disruption_over_downtime"), 2),
            fmt_stat(s.stat("dump_ms"), 0),
            fmt_stat(s.stat("transfer_ms"), 0),
            fmt_stat(s.stat("restore_ms"), 0),
            fmt_stat(s.stat("total_migration_ms"), 0),
            fmt_stat(mb, 1),
            fmt_stat(s.stat("requests_lost"), 1),
            fmt_stat(lost, 1),
            fmt_stat(s.stat("frames_parked"), 0),
            fmt_stat(s.stat("frames_replayed"), 0),
            fmt_stat(s.stat("frames_lost"), 0),
            fmt_stat(s.stat("service_socket_drops"), 1),
        );
    }
    written.extend(mptcp_section(r, &mut md, &plots)?);
    guest_reports(dir, &mut md)?;
    std::fs::write(dir.join("README.md"), md)
        .with_context(|| format!("writing {}/README.md", dir.display()))?;
    written.insert(0, "README.md".into());
    Ok(written)
}

/// Links the reports of the results measured in guests (`vm-*/` beside these, each with
/// its `guest.txt`: `cargo xtask testbed --vm`), so that they sit beside this machine's.
fn guest_reports(dir: &Path, md: &mut String) -> Result<()> {
    let mut guests: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !name.starts_with("vm-") {
            continue;
        }
        if let Ok(guest) = std::fs::read_to_string(path.join(crate::vm::GUEST_FILE)) {
            guests.push((name, guest.trim().to_string()));
        }
    }
    if guests.is_empty() {
        return Ok(());
    }
    guests.sort();
    md.push_str("\n## Measured in a guest\n\n");
    for (name, guest) in guests {
        let _ = writeln!(
            md,
            "- [{name}/README.md]({name}/README.md): {guest} (`cargo xtask report --results \
             results/{name}` writes it)"
        );
    }
    Ok(())
}
