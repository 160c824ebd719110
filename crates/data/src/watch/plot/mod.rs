//! `trainer plot RUN [RUN...] --out curves.png`: a run's `log.txt` as curves (loss raw and
//! smoothed, learning rate with its decays and rollbacks, validation metrics, images/s),
//! several runs on shared axes, one colour each. PNG, or SVG when the name ends in `.svg`.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (plotters' ab_glyph backend):
//! no system font, fontconfig or freetype is needed, so plots work on bare CI machines.

mod draw;
mod figure;
mod roc;
mod runlog;
#[cfg(test)]
mod tests;

pub use roc::plot_roc;
pub use runlog::{Rollback, RunLog, Series};

use anyhow::{ensure, Context, Result};
use plotters::prelude::*;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `trainer plot`'s options.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each holding log.txt), or log files; several share the axes.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The picture to write: SVG when the name ends in .svg, PNG otherwise.
    #[arg(long, default_value = "curves.png")]
    pub out: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = 1600, value_parser = crate::bounds::int::<u32>(200, 16384))]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 1000, value_parser = crate::bounds::int::<u32>(150, 16384))]
    pub height: u32,
}

/// Plots as `args` says; returns the line to print.
pub fn plot(args: &PlotArgs) -> Result<String> {
    plot_runs(&args.runs, &args.out, args.width, args.height)?;
    Ok(format!(
        "wrote {} ({}x{}, {} run{})\n",
        args.out.display(),
        args.width,
        args.height,
        args.runs.len(),
        if args.runs.len() == 1 { "" } else { "s" }
    ))
}

/// Renders the runs (each a run directory holding `log.txt`, or a log file) to `out`.
pub fn plot_runs(runs: &[PathBuf], out: &Path, width: u32, height: u32) -> Result<()> {
    ensure!(!runs.is_empty(), "no run to plot");
    ensure!(
        (200..=16384).contains(&width) && (150..=16384).contains(&height),
        "plot size {width}x{height} is outside 200x150 to 16384x16384"
    );
    let mut logs = runs.iter().map(|r| RunLog::open(r)).collect::<Result<Vec<_>>>()?;
    disambiguate_names(&mut logs);
    register_font()?;
    let fig = figure::build(&logs, 2 * width as usize);
    let svg = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if svg {
        let mut text = String::new();
        draw::draw(&SVGBackend::with_string(&mut text, (width, height)).into_drawing_area(), &fig)?;
        write_atomically(out, |w| Ok(std::io::Write::write_all(w, text.as_bytes())?))
    } else {
        let mut rgb = vec![0u8; width as usize * height as usize * 3];
        draw::draw(&BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area(), &fig)?;
        write_atomically(out, |w| encode_png(w, &rgb, width, height))
    }
}

/// Runs are named by their directory; two directories of the same name (a/run, b/run)
/// are told apart by their whole path.
fn disambiguate_names(logs: &mut [RunLog]) {
    let names: Vec<String> = logs.iter().map(|l| l.name.clone()).collect();
    for log in logs.iter_mut() {
        if names.iter().filter(|n| **n == log.name).count() > 1 {
            log.name = log.path.parent().unwrap_or(&log.path).display().to_string();
        }
    }
}

fn register_font() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    ensure!(ok, "the embedded DejaVu Sans font could not be loaded");
    Ok(())
}

fn encode_png(w: &mut dyn std::io::Write, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let mut enc = png::Encoder::new(w, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// Writes `<out>.partial` and renames it over `out` under the output rule (`crate::output`),
/// so that a viewer refreshing the picture during training never reads half a file.
fn write_atomically(out: &Path, write: impl FnOnce(&mut dyn std::io::Write) -> Result<()>) -> Result<()> {
    let mut output = crate::output::Output::new();
    let (file, partial) = output.create(out)?;
    let mut w = BufWriter::new(file);
    write(&mut w)
        .and_then(|()| Ok(std::io::Write::flush(&mut w)?))
        .with_context(|| format!("writing {}", partial.display()))?;
    drop(w);
    output.commit()
}
