//! An IJB ROC as a picture: TAR against FAR on a log FAR axis, with the table's FARs marked.

use anyhow::{ensure, Result};
use plotters::prelude::*;
use std::path::Path;

use super::{draw::short_number, encode_png, register_font, write_atomically};

/// Lowest FAR drawn: below eval_ijbc.py's smallest column.
const MIN_FAR: f64 = 1e-7;

/// Draws `curve` ((FPR, TPR) points, FPR ascending) into the PNG `out`, `marks` as dots.
pub fn plot_roc(curve: &[(f64, f64)], marks: &[(f64, f64)], title: &str, out: &Path) -> Result<()> {
    ensure!(!curve.is_empty(), "no ROC points to plot");
    register_font()?;
    let (width, height) = (1000u32, 750u32);
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    draw(&BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area(), curve, marks, title)
        .map_err(|e| anyhow::anyhow!("drawing the ROC: {e}"))?;
    write_atomically(out, |w| encode_png(w, &rgb, width, height))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    curve: &[(f64, f64)],
    marks: &[(f64, f64)],
    title: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let lowest = curve.iter().map(|p| p.1).fold(1.0, f64::min);
    let y_low = (lowest * 10.0).floor() / 10.0;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((MIN_FAR..1.0).log_scale(), y_low.min(0.9)..1.0)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|v| format!("{v:.0e}"))
        .y_label_formatter(&|v| short_number(*v))
        .x_desc("False accept rate (FAR)")
        .y_desc("True accept rate (TAR)")
        .draw()?;
    let visible = curve.iter().filter(|p| p.0 >= MIN_FAR).copied();
    chart.draw_series(LineSeries::new(visible, BLUE.stroke_width(2)))?;
    let shown = marks.iter().filter(|p| p.0 >= MIN_FAR);
    chart.draw_series(shown.map(|&p| Circle::new(p, 5, RED.filled())))?;
    root.present()
}
