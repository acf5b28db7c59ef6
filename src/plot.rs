//! The `eval` plot: decoded accuracy against K and against S, one line per layout (and one
//! for ParM), next to the base model's accuracy (SVG, drawn with plotters).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::eval::EvalRow;

const COLOURS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Draws two panels into `path`: accuracy against K at the smallest S evaluated, and against
/// S at the largest K.
pub fn accuracy_svg(rows: &[EvalRow], path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!rows.is_empty(), "nothing to plot");
    let s_min = rows.iter().map(|r| r.stragglers).min().unwrap_or(1);
    let k_max = rows.iter().map(|r| r.k).max().unwrap_or(1);
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let title = format!("{} on {}", rows[0].model, rows[0].dataset);
    panel(&left, rows, &format!("{title}: S = {s_min}"), "K (queries per group)", |r| {
        (r.stragglers == s_min).then_some(r.k)
    })?;
    panel(&right, rows, &format!("{title}: K = {k_max}"), "S (stragglers)", |r| {
        (r.k == k_max).then_some(r.stragglers)
    })?;
    root.present()?;
    Ok(())
}

/// One panel: x from `x_of` (rows it returns `None` for are left out).
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[EvalRow],
    caption: &str,
    x_label: &str,
    x_of: impl Fn(&EvalRow) -> Option<usize>,
) -> anyhow::Result<()> {
    let points: Vec<(&EvalRow, usize)> = rows.iter().filter_map(|r| x_of(r).map(|x| (r, x))).collect();
    let (x_min, x_max) = points.iter().fold((usize::MAX, 0), |(lo, hi), &(_, x)| (lo.min(x), hi.max(x)));
    let y_min = points.iter().map(|(r, _)| degraded(r).min(r.base_accuracy)).fold(1.0f64, f64::min);
    let y_min = ((y_min - 0.05).max(0.0) * 10.0).floor() / 10.0;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x_min as f64 - 0.5..x_max as f64 + 0.5, y_min..1.0)?;
    chart.configure_mesh().x_desc(x_label).y_desc("accuracy").draw()?;
    let mut series: Vec<String> = points.iter().map(|(r, _)| series_of(r)).collect();
    series.sort();
    series.dedup();
    for (i, name) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut line: Vec<(f64, f64)> =
            points.iter().filter(|(r, _)| series_of(r) == *name).map(|(r, x)| (*x as f64, degraded(r))).collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)).point_size(3))?
            .label(format!("degraded, {name}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    let mut base: Vec<(f64, f64)> = points.iter().map(|(r, x)| (*x as f64, r.base_accuracy)).collect();
    base.sort_by(|a, b| a.0.total_cmp(&b.0));
    base.dedup_by(|a, b| a.0 == b.0);
    chart
        .draw_series(LineSeries::new(base, BLACK.stroke_width(1)))?
        .label("base model")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}

/// A row's line: ApproxIFER's by layout, ParM's its own.
fn series_of(row: &EvalRow) -> String {
    if row.scheme == "parm" { "ParM (rebuilt)".into() } else { row.layout.clone() }
}

/// The degraded accuracy drawn: ApproxIFER's protocol for ApproxIFER, ParM's for ParM (the
/// paper's comparison).
fn degraded(row: &EvalRow) -> f64 {
    match (row.scheme.as_str(), row.degraded_accuracy_reconstructed) {
        ("parm", Some(rebuilt)) => rebuilt,
        _ => row.degraded_accuracy_paper,
    }
}

/// The latency CDF of every scheme of `serve-bench`, log-scaled in time.
pub fn latency_cdf_svg(reports: &[crate::serve::SchemeReport], path: &Path) -> anyhow::Result<()> {
    let max = reports.iter().filter_map(|r| r.latencies_ms.last().copied()).fold(1.0f64, f64::max);
    let min = reports.iter().filter_map(|r| r.latencies_ms.first().copied()).fold(max, f64::min).max(0.01);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("serve-bench: latency CDF", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((min..max * 1.1).log_scale(), 0.0..1.0)?;
    chart.configure_mesh().x_desc("latency (ms)").y_desc("fraction of queries").draw()?;
    for (i, r) in reports.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let count = r.latencies_ms.len().max(1) as f64;
        let points = r.latencies_ms.iter().enumerate().map(|(j, &ms)| (ms.max(min), (j + 1) as f64 / count));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(r.scheme.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The redundancy curve of `eval --byzantine --n ...`: per `A` (one panel each), the
/// calibrated locator's detection under every attack, and its false-positive rate with nobody
/// lying, against `N`.
pub fn redundancy_svg(rows: &[crate::eval::ByzantineRow], path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = rows.iter().filter(|r| r.locator == "calibrated").collect();
    anyhow::ensure!(!rows.is_empty(), "nothing to plot: the redundancy curve is the calibrated locator's");
    let mut byzantine: Vec<usize> = rows.iter().map(|r| r.byzantine).collect();
    byzantine.sort_unstable();
    byzantine.dedup();
    let (n_min, n_max) = rows.iter().fold((usize::MAX, 0), |(lo, hi), r| (lo.min(r.n), hi.max(r.n)));
    let root = SVGBackend::new(path, (420 * byzantine.len() as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut attacks: Vec<String> = rows.iter().filter(|r| r.attack != "none").map(|r| r.attack.clone()).collect();
    attacks.dedup();
    attacks.sort();
    attacks.dedup();
    for (area, &a) in root.split_evenly((1, byzantine.len())).iter().zip(&byzantine) {
        let caption = format!("{} on {}: K = {}, A = {a}", rows[0].model, rows[0].dataset, rows[0].k);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(n_min as f64 - 0.5..n_max as f64 + 0.5, 0.0..1.0)?;
        chart.configure_mesh().x_desc("N (workers)").y_desc("detection / false positives").draw()?;
        let line = |attack: &str, value: &dyn Fn(&crate::eval::ByzantineRow) -> Option<f64>| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.byzantine == a && r.attack == attack)
                .filter_map(|r| value(r).map(|v| (r.n as f64, v)))
                .collect();
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            points
        };
        for (i, attack) in attacks.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(
                    LineSeries::new(line(attack, &|r| r.detection_rate), colour.stroke_width(2)).point_size(3),
                )?
                .label(attack.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .draw_series(LineSeries::new(line("none", &|r| Some(r.false_positive_rate)), BLACK.stroke_width(1)))?
            .label("false positives, no attack")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        panel_legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    }
    root.present()?;
    Ok(())
}

/// The privacy trade-off (`eval --privacy --plot`): per `T`, decoded (degraded) accuracy
/// against the attacker's accuracy (the learnt one where trained, else the nearest-worker
/// attack), one line per mask placement through the mask scales, and the code without masks.
pub fn privacy_svg(rows: &[crate::eval::PrivacyRow], path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!rows.is_empty(), "nothing to plot: no privacy settings");
    let mut ts: Vec<usize> = rows.iter().map(|r| r.privacy).collect();
    ts.sort_unstable();
    ts.dedup();
    let learnt = rows.iter().all(|r| r.attacker_accuracy.is_some());
    let attack =
        |r: &crate::eval::PrivacyRow| if learnt { r.attacker_accuracy } else { Some(r.nearest_attack_accuracy) };
    let attack_unmasked = |r: &crate::eval::PrivacyRow| {
        if learnt { r.attacker_accuracy_unmasked } else { Some(r.nearest_attack_accuracy_unmasked) }
    };
    let root = SVGBackend::new(path, (460 * ts.len() as u32, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut placements: Vec<_> = rows.iter().map(|r| r.mask_placement).collect();
    placements.dedup();
    placements.sort_by_key(|p| p.name());
    placements.dedup();
    for (area, &t) in root.split_evenly((1, ts.len())).iter().zip(&ts) {
        let Some(first) = rows.iter().find(|r| r.privacy == t) else { continue };
        let caption = format!(
            "{} on {}: K = {}, S = {}, T = {t}",
            first.eval.model, first.eval.dataset, first.eval.k, first.eval.stragglers
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        let x_desc = if learnt { "learnt attacker's accuracy" } else { "nearest-worker attack's accuracy" };
        chart.configure_mesh().x_desc(x_desc).y_desc("decoded accuracy (S stragglers)").draw()?;
        for (i, &placement) in placements.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let mut points: Vec<(f64, f64, f64)> = rows
                .iter()
                .filter(|r| r.privacy == t && r.mask_placement == placement)
                .filter_map(|r| attack(r).map(|a| (r.mask_sigma, a, r.eval.degraded_accuracy_paper)))
                .collect();
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            chart
                .draw_series(LineSeries::new(points.iter().map(|p| (p.1, p.2)), colour.stroke_width(2)).point_size(3))?
                .label(format!("masks {placement} (sigma {})", sigmas_text(&points)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            chart.draw_series(points.iter().map(|&(sigma, a, d)| {
                Text::new(format!("{sigma}"), (a, d), ("sans-serif", 10).into_font().color(&BLACK))
            }))?;
        }
        let unmasked: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.privacy == t)
            .filter_map(|r| attack_unmasked(r).map(|a| (a, r.degraded_accuracy_unmasked)))
            .collect();
        chart
            .draw_series(unmasked.iter().map(|&p| Cross::new(p, 6, BLACK.stroke_width(2))))?
            .label("no masks")
            .legend(|(x, y)| Cross::new((x + 9, y), 5, BLACK));
        panel_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present()?;
    Ok(())
}

/// `0.5, 1, 2` from the scales of a series.
fn sigmas_text(points: &[(f64, f64, f64)]) -> String {
    points.iter().map(|p| format!("{}", p.0)).collect::<Vec<_>>().join(", ")
}

/// One panel's legend at `position`, over a translucent box (the panels of the Byzantine and
/// privacy plots).
fn panel_legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}
