//! `cargo run --release -p trainer-data --example plot_demo -- --demo DIR --out curves.png`:
//! writes two synthetic runs (decays, a rollback, two validation sets, a Multi run with
//! parameter groups) into DIR and plots them, for checking the picture by eye without
//! training. Plain RUN arguments are plotted too; `--size WxH` (default 1600x1000).
//! Users plot with `trainer plot`.

#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let (mut runs, mut out, mut size) = (vec![], None, (1600, 1000));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            "--size" => {
                let s = args.next().context("--size WxH")?;
                let (w, h) = s.split_once('x').context("--size WxH")?;
                size = (w.parse()?, h.parse()?);
            }
            "--demo" => {
                let dir = PathBuf::from(args.next().context("--demo DIR")?);
                runs.push(support::write_run(
                    &dir,
                    "fr-resnet50",
                    &support::Synth { steps: 3000, every: 20, multi: false, seed: 1 },
                ));
                runs.push(support::write_run(
                    &dir,
                    "multi-resnet18",
                    &support::Synth { steps: 2400, every: 20, multi: true, seed: 2 },
                ));
            }
            _ => runs.push(PathBuf::from(a)),
        }
    }
    let Some(out) = out else { bail!("usage: plot RUN [RUN...] --out curves.png [--size WxH] [--demo DIR]") };
    trainer_data::watch::plot::plot_runs(&runs, &out, size.0, size.1)
}
