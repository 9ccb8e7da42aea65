//! The report's SVG plots (plotters' SVG backend).

use super::*;

pub(super) const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

pub(super) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// A group of bars (one per series) with its label.
pub(super) struct Group {
    pub(super) label: String,
    pub(super) bars: Vec<Option<Stat>>,
}

/// Horizontal grouped bars with 95% CI whiskers.
pub(super) fn hbars(
    path: &Path,
    title: &str,
    xdesc: &str,
    series: &[&str],
    groups: &[Group],
) -> Result<()> {
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
pub(super) fn lines(
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
pub(super) fn service_series(rows: &[Row]) -> Vec<(f64, f64)> {
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
