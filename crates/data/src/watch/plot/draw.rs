//! Draws a `Figure` with plotters, on any backend (bitmap for PNG, SVG).

use super::figure::{clip, Corner, Figure, Line, LineKind, Mark, MarkKind, Panel};
use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type Chart<'a, DB, Y> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>;

/// Dash and gap lengths in pixels; pattern 0 is a solid line.
const DASHES: [(u32, u32); 4] = [(0, 0), (10, 5), (3, 4), (16, 4)];

/// Text sizes in pixels, scaled with the panel.
struct Sizes {
    title: u32,
    label: u32,
}

fn failed<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

pub fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<()> {
    root.fill(&WHITE).map_err(failed)?;
    let cols = match fig.panels.len() {
        1 => 1,
        2..=8 => 2,
        _ => 3,
    };
    let rows = fig.panels.len().div_ceil(cols);
    for (panel, area) in fig.panels.iter().zip(root.split_evenly((rows, cols))) {
        let (w, h) = area.dim_in_pixel();
        let side = w.min(h * 2);
        let sizes = Sizes { title: (side / 28).clamp(11, 28), label: (side / 42).clamp(9, 18) };
        draw_panel(&area, panel, fig.x_range, &sizes)?;
    }
    root.present().map_err(failed)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x: (f64, f64),
    s: &Sizes,
) -> Result<()> {
    let Some(y) = panel.y_range() else {
        let inner = area.titled(&panel.title, ("sans-serif", s.title)).map_err(failed)?;
        let (w, h) = inner.dim_in_pixel();
        let style = TextStyle::from(("sans-serif", s.label).into_font())
            .color(&RGBColor(110, 110, 110))
            .pos(Pos::new(HPos::Center, VPos::Center));
        return inner.draw(&Text::new("no data", (w as i32 / 2, h as i32 / 2), style)).map_err(failed);
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", s.title))
        .margin(s.label)
        .x_label_area_size(s.label * 3)
        .y_label_area_size(s.label * 5);
    if panel.log_y {
        let chart = builder.build_cartesian_2d(x.0..x.1, (y.0..y.1).log_scale()).map_err(failed)?;
        fill(chart, panel, y, s)
    } else {
        let chart = builder.build_cartesian_2d(x.0..x.1, y.0..y.1).map_err(failed)?;
        fill(chart, panel, y, s)
    }
}

fn fill<'a, DB, Y>(mut chart: Chart<'a, DB, Y>, panel: &Panel, y: (f64, f64), s: &Sizes) -> Result<()>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let y_format = |v: &f64| if panel.log_y { format!("{v:.0e}") } else { short_number(*v) };
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", s.label))
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&y_format)
        .x_desc("step")
        .draw()
        .map_err(failed)?;
    for line in &panel.lines {
        draw_line(&mut chart, line, y)?;
    }
    draw_marks(&mut chart, &panel.marks, y, s.label)?;
    for (label, dash) in &panel.styles {
        let (dash, gap) = match DASHES[dash % DASHES.len()] {
            (0, _) => (24, 0),
            d => d,
        };
        let style = BLACK.stroke_width(2);
        let anno = chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>()).map_err(failed)?;
        anno.label(label).legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 24, y)], dash, gap, style));
    }
    let position = match panel.legend {
        Some(Corner::LowerLeft) => SeriesLabelPosition::LowerLeft,
        Some(Corner::LowerRight) => SeriesLabelPosition::LowerRight,
        _ => SeriesLabelPosition::UpperRight,
    };
    let labelled = panel.lines.iter().any(|l| l.label.is_some()) || !panel.styles.is_empty();
    if (panel.legend.is_some() && labelled) || !panel.marks.is_empty() {
        chart
            .configure_series_labels()
            .position(position)
            .label_font(("sans-serif", s.label))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(failed)?;
    }
    Ok(())
}

fn draw_line<'a, DB, Y>(chart: &mut Chart<'a, DB, Y>, line: &Line, y: (f64, f64)) -> Result<()>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64>,
{
    let raw = line.kind == LineKind::Raw;
    let color = if raw { line.color.mix(0.25) } else { line.color.to_rgba() };
    let style = color.stroke_width(if raw { 1 } else { 2 });
    let pieces: Vec<Vec<(f64, f64)>> = line.segments.iter().flat_map(|seg| clip(seg, y.0, y.1)).collect();
    let (dash, gap) = DASHES[line.dash % DASHES.len()];
    let anno = if dash == 0 {
        chart.draw_series(pieces.iter().map(|p| PathElement::new(p.clone(), style))).map_err(failed)?
    } else {
        chart
            .draw_series(pieces.iter().map(|p| DashedPathElement::new(p.iter().copied(), dash, gap, style)))
            .map_err(failed)?
    };
    if let Some(label) = &line.label {
        let dash = if dash == 0 { 24 } else { dash };
        anno.label(label).legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 24, y)], dash, gap, style));
    }
    if line.dots {
        let in_range = |p: &&(f64, f64)| (y.0..=y.1).contains(&p.1);
        chart
            .draw_series(line.segments.iter().flatten().filter(in_range).map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(failed)?;
    }
    Ok(())
}

/// Decays: a thin solid vertical line and a dot at the new rate. Rollbacks: a dashed
/// vertical line and a cross, with what triggered it written beside. Accepted levels: a
/// triangle. All in the run's colour; the legend names the shapes.
fn draw_marks<'a, DB, Y>(chart: &mut Chart<'a, DB, Y>, marks: &[Mark], y: (f64, f64), label: u32) -> Result<()>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64>,
{
    for m in marks {
        let style = m.color.mix(0.6).stroke_width(1);
        let span = vec![(m.x, y.0), (m.x, y.1)];
        let on_curve = m.y.filter(|v| (y.0..=y.1).contains(v)).map(|v| (m.x, v));
        let at = on_curve.unwrap_or((m.x, y.1));
        match m.kind {
            MarkKind::Decay => {
                chart.draw_series([PathElement::new(span, style)]).map_err(failed)?;
                chart.draw_series(on_curve.map(|p| Circle::new(p, 4, m.color.filled()))).map_err(failed)?;
            }
            MarkKind::Rollback => {
                chart.draw_series([DashedPathElement::new(span, 4, 4, style)]).map_err(failed)?;
                chart.draw_series([Cross::new(at, 6, m.color.stroke_width(2))]).map_err(failed)?;
            }
            MarkKind::Accepted => {
                chart.draw_series([TriangleMarker::new(at, 6, m.color.filled())]).map_err(failed)?;
            }
        }
        if let Some(note) = &m.note {
            let font = ("sans-serif", label.saturating_sub(2).max(8)).into_font().color(&m.color);
            chart.draw_series([Text::new(note.clone(), at, font)]).map_err(failed)?;
        }
    }
    let kinds = [MarkKind::Decay, MarkKind::Rollback, MarkKind::Accepted];
    for kind in kinds.into_iter().filter(|k| marks.iter().any(|m| m.kind == *k)) {
        let anno = chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>()).map_err(failed)?;
        match kind {
            MarkKind::Decay => anno.label("lr decay").legend(|(x, y)| Circle::new((x + 12, y), 4, BLACK.filled())),
            MarkKind::Rollback => {
                anno.label("rollback").legend(|(x, y)| Cross::new((x + 12, y), 6, BLACK.stroke_width(2)))
            }
            MarkKind::Accepted => {
                anno.label("rise accepted").legend(|(x, y)| TriangleMarker::new((x + 12, y), 6, BLACK.filled()))
            }
        };
    }
    Ok(())
}

/// Axis numbers that stay short: 3.0e12, 1.2M, 150k, 0.94, 2.5e-5 (a 1e300 step from a
/// damaged log is a short label too).
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if a >= 1e9 {
        format!("{v:.1e}")
    } else if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 1.0 || a == 0.0 {
        trim(format!("{v:.2}"))
    } else if a >= 1e-3 {
        trim(format!("{v:.4}"))
    } else {
        format!("{v:.1e}")
    }
}
