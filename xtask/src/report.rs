//! `cargo xtask report`: plots and a Markdown summary from `results/*.json`
//! (schema `migr-testbed/1`, docs/testbed.md) and their per-run CSVs, in the
//! style of seed 000's Fig. 4-6: service time per request, the phases of each
//! migration, steering on versus off. The MPTCP runner's files
//! (`results/mptcp-*.json`, docs/mptcp.md) are summarised when present.
//!
//! Output: `results/README.md` (the tables) and `results/plots/*.svg`
//! (plotters' SVG backend: text stays SVG text, no system fonts needed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use migr_testbed::results::{self, Metric, ScenarioFile, Summary};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// One `migr-testbed/1` file.
#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub protocol: String,
    pub strategy: Option<String>,
    pub steering: bool,
    pub mode: String,
    pub runs: usize,
    /// `(run number, reason)` of the runs that failed (`failed_runs`).
    pub failed: Vec<(u64, String)>,
    summary: Summary,
    /// `NAME/run-K.csv`, in run order (those that exist).
    pub csvs: Vec<PathBuf>,
}

/// A metric's mean and 95% CI half-width over runs (`None`: not measured;
/// the half-width is `None` with one run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    pub ci95: Option<f64>,
}

impl Scenario {
    pub fn stat(&self, key: &str) -> Option<Stat> {
        let Some(Some(Metric::Stat(s))) = self.summary.get(key) else {
            return None;
        };
        Some(Stat {
            n: s.n as usize,
            mean: s.mean?,
            ci95: s.ci95,
        })
    }

    /// The scenario's name without `-steering-on|off`: steering on and off
    /// of the same experiment share it.
    pub fn base(&self) -> &str {
        self.name
            .strip_suffix("-steering-on")
            .or_else(|| self.name.strip_suffix("-steering-off"))
            .unwrap_or(&self.name)
    }
}

/// One MPTCP runner file (`migr-mptcp-result/1`), kept as JSON.
#[derive(Debug)]
pub struct Mptcp {
    pub file: String,
    pub doc: Value,
}

#[derive(Debug, Default)]
pub struct Results {
    pub testbed: Vec<Scenario>,
    pub mptcp: Vec<Mptcp>,
    /// Files skipped, with why.
    pub notes: Vec<String>,
}

/// One row of a run's client CSV.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub index: u64,
    pub send_ms: f64,
    pub service_ms: f64,
}

const CSV_HEADER: &str = "index,send_time_ms,response_time_ms,service_time_ms";

/// Parses one `migr-testbed/1` document read from `file` (whose directory
/// holds the CSVs).
pub fn parse_scenario(doc: Value, file: &Path) -> Result<Scenario> {
    let doc: ScenarioFile = serde_json::from_value(doc).map_err(|e| {
        anyhow!(
            "{}: {e} (schema {}, docs/testbed.md)",
            file.display(),
            results::SCHEMA
        )
    })?;
    let runs = doc.runs.len();
    if runs == 0 {
        bail!("{}: `runs` is empty", file.display());
    }
    let dir = file.parent().unwrap_or(Path::new(".")).join(&doc.scenario);
    let csvs = (1..=runs)
        .map(|k| dir.join(format!("run-{k}.csv")))
        .filter(|p| p.exists())
        .collect();
    Ok(Scenario {
        protocol: doc.config.protocol,
        strategy: doc.config.strategy,
        steering: doc.config.steering,
        mode: doc.config.mode,
        runs,
        failed: doc
            .failed_runs
            .into_iter()
            .map(|f| (f.run, f.error))
            .collect(),
        summary: doc.summary,
        csvs,
        name: doc.scenario,
    })
}

/// Reads every `*.json` in `dir`. A file that is not JSON, or a testbed
/// file without the schema's fields, is an error naming the file; files of
/// an unknown schema are skipped with a note.
pub fn load(dir: &Path) -> Result<Results> {
    if !dir.is_dir() {
        bail!(
            "{} does not exist or is not a directory: run `cargo xtask testbed --all` first",
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Results::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        let schema = doc
            .get("schema")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{}: no `schema` string field", file.display()))?;
        let short = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if schema == results::SCHEMA {
            out.testbed.push(parse_scenario(doc, &file)?);
        } else if schema.starts_with("migr-mptcp-result/") {
            out.mptcp.push(Mptcp { file: short, doc });
        } else {
            out.notes.push(format!(
                "{short}: schema `{schema}` is not one the report reads; skipped"
            ));
        }
    }
    if out.testbed.is_empty() {
        bail!(
            "no migr-testbed/1 results in {}: run `cargo xtask testbed --all` first",
            dir.display()
        );
    }
    Ok(out)
}

/// Reads a run's client CSV (`index,send_time_ms,response_time_ms,service_time_ms,...`).
pub fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with(CSV_HEADER) => {}
        _ => bail!(
            "{}: the first line is not `{CSV_HEADER},...`",
            path.display()
        ),
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || anyhow!("{}:{}: malformed row {line:?}", path.display(), i + 2);
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() < 4 {
            return Err(bad());
        }
        rows.push(Row {
            index: cols[0].parse().map_err(|_| bad())?,
            send_ms: cols[1].parse().map_err(|_| bad())?,
            service_ms: cols[3].parse().map_err(|_| bad())?,
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------- plots

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// A group of bars (one per series) with its label.
struct Group {
    label: String,
    bars: Vec<Option<Stat>>,
}

/// Horizontal grouped bars with 95% CI whiskers.
fn hbars(path: &Path, title: &str, xdesc: &str, series: &[&str], groups: &[Group]) -> Result<()> {
    let per = series.len().max(1);
    let height = 110 + groups.len() as u32 * (per as u32 * 9 + 10);
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let xmax = groups
        .iter()
        .flat_map(|g| g.bars.iter().flatten())
        .map(|s| s.mean + s.ci95.unwrap_or(0.0))
        .fold(1.0f64, f64::max)
        * 1.08;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(380)
        .build_cartesian_2d(0f64..xmax, 0f64..n.max(1.0))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .y_labels(0)
        .disable_y_mesh()
        .x_desc(xdesc)
        .draw()
        .map_err(plot_err)?;
    let h = 0.84 / per as f64;
    for (j, name) in series.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let mut rects = Vec::new();
        let mut whiskers = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let Some(Some(s)) = g.bars.get(j) else {
                continue;
            };
            let top = n - i as f64 - 0.08 - j as f64 * h;
            let (y0, y1) = (top - h * 0.92, top);
            rects.push(Rectangle::new(
                [(0.0, y0), (s.mean.max(0.0), y1)],
                color.filled(),
            ));
            if let Some(ci) = s.ci95.filter(|c| *c > 0.0) {
                let ym = (y0 + y1) / 2.0;
                let (lo, hi) = ((s.mean - ci).max(0.0), s.mean + ci);
                whiskers.push(PathElement::new(vec![(lo, ym), (hi, ym)], BLACK));
                for x in [lo, hi] {
                    whiskers.push(PathElement::new(vec![(x, y0), (x, y1)], BLACK));
                }
            }
        }
        chart
            .draw_series(rects)
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    let style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, g) in groups.iter().enumerate() {
        let p = chart.backend_coord(&(0.0, n - i as f64 - 0.5));
        root.draw(&Text::new(g.label.clone(), (p.0 - 6, p.1), style.clone()))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

/// Lines of (x, y) points.
fn lines(
    path: &Path,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 1.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        (x0, x1) = (0.0, 1.0);
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0f64..y1 * 1.08)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .draw()
        .map_err(plot_err)?;
    // The first series last, on top (steering on: its peak is the lower one).
    for (j, (name, p)) in series.iter().enumerate().rev() {
        let color = COLORS[j % COLORS.len()];
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// A run's service time per request, the request that waited longest at
/// index 0, from 300 requests before it to 300 after (back to back, the
/// next request leaves when the previous answer arrives: nothing is sent
/// during the gap, so the disruption is one request's service time).
fn service_series(rows: &[Row]) -> Vec<(f64, f64)> {
    let Some(peak) = rows
        .iter()
        .max_by(|a, b| a.service_ms.total_cmp(&b.service_ms))
    else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| (r.index as f64 - peak.index as f64, r.service_ms))
        .filter(|(x, _)| x.abs() <= 300.0)
        .collect()
}

// --------------------------------------------------------------- tables

fn fmt_stat(s: Option<Stat>, digits: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) => match s.ci95 {
            Some(ci) if s.n > 1 => format!("{:.digits$} ± {:.digits$}", s.mean, ci),
            _ => format!("{:.digits$}", s.mean),
        },
    }
}

fn ratio(a: Option<Stat>, b: Option<Stat>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.mean > 0.0 => format!("{:.2}", a.mean / b.mean),
        _ => "-".into(),
    }
}

/// The suffix of the scenarios that run what users have without migr: no
/// datapath and a client with QUIC's own loss recovery (docs/testbed.md).
const BASELINE_SUFFIX: &str = "-baseline";

/// The arm that runs what users have without migr for the experiment `on`
/// belongs to: for QUIC to a new IP `X-baseline` (no datapath, an RFC 9002
/// client); for TCP, UDP and same-IP QUIC, whose clients are unmodified in
/// both arms, `X-steering-off`.
fn without_migr<'a>(r: &'a Results, on: &Scenario) -> Option<&'a Scenario> {
    let base = on.name.strip_suffix("-steering-on")?;
    let name = match on.protocol.as_str() {
        "tcp" | "udp" | "quic-same-ip" => format!("{base}-steering-off"),
        _ => format!("{base}{BASELINE_SUFFIX}"),
    };
    r.testbed.iter().find(|s| s.name == name)
}

/// `a - b` with the half-width of its 95% CI (normal approximation from the
/// arms' own half-widths: independent arms).
fn difference(a: Option<Stat>, b: Option<Stat>) -> String {
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
fn with_and_without(r: &Results, md: &mut String) {
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
fn failed_runs(r: &Results, md: &mut String) {
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
fn freeze_hits(r: &Results, md: &mut String) {
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
fn delay_lines(r: &Results, md: &mut String) {
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
fn pairs(r: &Results) -> Vec<(&str, Option<&Scenario>, Option<&Scenario>)> {
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

fn mptcp_stat(summary: &Value, key: &str) -> Option<Stat> {
    let v = summary.get(key)?;
    let mean = v.get("mean")?.as_f64()?;
    Some(Stat {
        n: v.get("n")?.as_u64()? as usize,
        mean,
        ci95: v.get("ci95_high").and_then(Value::as_f64).map(|h| h - mean),
    })
}

fn mptcp_section(r: &Results, md: &mut String, plots: &Path) -> Result<Vec<String>> {
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
    std::fs::write(dir.join("README.md"), md)
        .with_context(|| format!("writing {}/README.md", dir.display()))?;
    written.insert(0, "README.md".into());
    Ok(written)
}

/// `cargo xtask report [--results DIR]`.
pub fn report(dir: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(|| crate::run::workspace_root().join("results"));
    let r = load(&dir)?;
    for n in &r.notes {
        println!("[report] {n}");
    }
    if r.mptcp.is_empty() {
        println!("[report] no MPTCP results (results/mptcp-*.json): that section says so");
    }
    let written = write_report(&r, &dir)?;
    for f in &written {
        println!("[report] wrote {}", dir.join(f).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("migr-report-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn scenario_json(name: &str, steering: bool) -> String {
        serde_json::json!({
            "schema": "migr-testbed/1",
            "scenario": name,
            "description": "test",
            "config": {"protocol": "quic", "strategy": "p-explicit", "steering": steering,
                       "technique": "cold", "preset": "none", "mode": "back-to-back",
                       "ballast_mb": 28},
            "summary": {
                "downtime_ms": {"n": 2, "mean": 150.0, "ci95": 10.0, "min": 140.0, "max": 160.0},
                "disruption_ms": {"n": 2, "mean": 155.0, "ci95": 12.0, "min": 140.0, "max": 170.0},
                "dump_ms": {"n": 1, "mean": 50.0, "ci95": null, "min": 50.0, "max": 50.0},
                "lazy_pages_ms": null,
            },
            "runs": [{}, {}],
        })
        .to_string()
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = load(Path::new("/nonexistent/migr-results"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not exist") && e.contains("cargo xtask testbed"),
            "{e}"
        );
    }

    #[test]
    fn no_results_is_a_clear_error() {
        let d = tmpdir("empty");
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("no migr-testbed/1 results"), "{e}");
    }

    #[test]
    fn bad_json_names_the_file() {
        let d = tmpdir("bad");
        std::fs::write(d.join("broken.json"), "{ not json").unwrap();
        let e = format!("{:#}", load(&d).unwrap_err());
        assert!(
            e.contains("broken.json") && e.contains("not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn missing_field_names_the_field() {
        let d = tmpdir("field");
        let mut v: Value = serde_json::from_str(&scenario_json("x-steering-on", true)).unwrap();
        v["config"].as_object_mut().unwrap().remove("steering");
        std::fs::write(d.join("x-steering-on.json"), v.to_string()).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(
            e.contains("x-steering-on.json") && e.contains("missing field `steering`"),
            "{e}"
        );
        std::fs::write(d.join("x-steering-on.json"), r#"{"scenario": "x"}"#).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("no `schema`"), "{e}");
    }

    #[test]
    fn reads_stats_csvs_and_writes_the_report() {
        let d = tmpdir("ok");
        for (name, on) in [("q-steering-on", true), ("q-steering-off", false)] {
            std::fs::write(d.join(format!("{name}.json")), scenario_json(name, on)).unwrap();
            std::fs::create_dir_all(d.join(name)).unwrap();
            let mut csv = String::from(
                "index,send_time_ms,response_time_ms,service_time_ms,server_address\n",
            );
            for i in 0..50 {
                let st = if i == 20 { 150.0 } else { 0.3 };
                let _ = writeln!(
                    csv,
                    "{i},{}.0,{},{st},10.60.11.2:4433",
                    i * 2,
                    i as f64 * 2.0 + st
                );
            }
            std::fs::write(d.join(name).join("run-1.csv"), csv).unwrap();
        }
        std::fs::write(d.join("other.json"), r#"{"schema": "something-else/1"}"#).unwrap();
        let mut baseline: Value =
            serde_json::from_str(&scenario_json("q-baseline", false)).unwrap();
        baseline["summary"]["disruption_ms"]["mean"] = 450.0.into();
        baseline["failed_runs"] =
            serde_json::json!([{"run": 3, "error": "criu dump failed\nmore"}]);
        std::fs::write(d.join("q-baseline.json"), baseline.to_string()).unwrap();
        let r = load(&d).unwrap();
        assert_eq!(r.testbed.len(), 3);
        assert_eq!(r.notes.len(), 1);
        let s = r
            .testbed
            .iter()
            .find(|s| s.name == "q-steering-on")
            .unwrap();
        assert_eq!(s.base(), "q");
        assert_eq!(s.stat("downtime_ms").map(|x| x.mean), Some(150.0));
        assert_eq!(s.stat("dump_ms").and_then(|x| x.ci95), None);
        assert_eq!(s.stat("lazy_pages_ms"), None);
        assert_eq!(s.csvs.len(), 1);
        let rows = read_csv(&s.csvs[0]).unwrap();
        assert_eq!(rows.len(), 50);
        let written = write_report(&r, &d).unwrap();
        assert!(written.contains(&"plots/steering.svg".to_string()));
        assert!(written.contains(&"plots/service-time-q.svg".to_string()));
        let md = std::fs::read_to_string(d.join("README.md")).unwrap();
        assert!(
            md.contains("| q | 150 ± 10 | 150 ± 10 | 155 ± 12 | 155 ± 12 | - | - | 1.00 | 1.00 |"),
            "{md}"
        );
        assert!(md.contains("No `results/mptcp-*.json` here"), "{md}");
        assert!(
            md.contains(
                "| q | 2 / 2 | 150 ± 10 | 150 ± 10 | - / - | +5 ms | +300 ms | -295 ± 17 |"
            ),
            "migr against the baseline: {md}"
        );
        assert!(
            md.contains("- q-baseline run 3: criu dump failed\n"),
            "{md}"
        );
        assert!(
            !md.contains("| q-baseline | off |"),
            "the baseline is not an unpaired scenario: {md}"
        );
        let svg = std::fs::read_to_string(d.join("plots/phases.svg")).unwrap();
        assert!(svg.contains("q-steering-on"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn malformed_csv_row_names_the_line() {
        let d = tmpdir("csv");
        let p = d.join("run-1.csv");
        std::fs::write(&p, "index,send_time_ms,response_time_ms,service_time_ms,server_address\n1,2,3,4,a\n2,x,3,4,a\n").unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("run-1.csv:3"), "{e}");
        std::fs::write(&p, "wrong\n").unwrap();
        assert!(read_csv(&p).unwrap_err().to_string().contains("first line"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
