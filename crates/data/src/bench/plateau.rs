//! `trainer bench plateau`: the cost of dlib's plateau check at n losses, and of the
//! schedule per training step. benches/plateau.sh puts it beside the seed's Python.

use crate::plateau::{
    count_steps_without_decrease, count_steps_without_decrease_robust, Plateau, DEFAULT_PROBABILITY_OF_DECREASE as P,
    DEFAULT_QUANTILE_DISCARD as Q,
};
use crate::rng::Rng;
use crate::stats::median;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

/// Times one plateau check (plain + robust count) over n losses, and the schedule's
/// amortised cost per step with threshold n.
#[derive(clap::Args, Debug)]
pub struct PlateauBenchArgs {
    /// Losses in the window (the seed's threshold is 15000).
    #[arg(long, default_value_t = 15000, value_parser = crate::bounds::count::<usize>(1 << 26))]
    pub n: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 7, value_parser = crate::bounds::count::<usize>(10_000))]
    pub runs: usize,
    /// Also write the synthetic losses here (comma-separated), for the Python baseline.
    #[arg(long, value_name = "FILE")]
    pub write_losses: Option<PathBuf>,
}

/// The median cost of one plateau check over `n` losses, and of the schedule per step.
pub struct PlateauReport {
    pub n: usize,
    pub runs: usize,
    pub check_secs: f64,
    pub secs_per_step: f64,
}

impl std::fmt::Display for PlateauReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "rust_check n={} runs={} median_s={:.6}", self.n, self.runs, self.check_secs)?;
        writeln!(
            f,
            "rust_schedule threshold={} runs={} median_ns_per_step={:.1} (one check every {} steps)",
            self.n,
            self.runs,
            self.secs_per_step * 1e9,
            self.n / 200 + 1
        )
    }
}

pub fn run(args: &PlateauBenchArgs) -> anyhow::Result<PlateauReport> {
    anyhow::ensure!(args.n > 0 && args.runs > 0, "--n and --runs must be at least 1");
    let losses = synthetic_losses(args.n, 1);
    if let Some(path) = &args.write_losses {
        let text = losses.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let check_secs = median(&(0..args.runs).map(|_| time_check(&losses)).collect::<Vec<_>>());
    let secs_per_step = median(&(0..args.runs).map(|_| time_schedule(args.n)).collect::<Vec<_>>());
    Ok(PlateauReport { n: args.n, runs: args.runs, check_secs, secs_per_step })
}

/// A training-like curve: a decay into a noisy plateau with occasional bad batches.
pub fn synthetic_losses(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let t = i as f64 / n.max(1) as f64;
            let spike = if rng.unit() < 0.01 { 1.0 } else { 0.0 };
            2.0 * (-6.0 * t).exp() + 0.5 + 0.2 * (rng.unit() - 0.5) + spike
        })
        .collect()
}

fn time_check(losses: &[f64]) -> f64 {
    let t = Instant::now();
    let plain = count_steps_without_decrease(std::hint::black_box(losses), P);
    let robust = count_steps_without_decrease_robust(std::hint::black_box(losses), P, Q);
    std::hint::black_box((plain, robust));
    t.elapsed().as_secs_f64()
}

/// Seconds per `push` over 3 windows' worth of steps (fill, then plateau checks).
fn time_schedule(threshold: usize) -> f64 {
    let steps = 3 * threshold.max(1);
    let losses = synthetic_losses(steps, 2);
    let mut p = Plateau::new(threshold, 0.1);
    let t = Instant::now();
    let mut shrinks = 0;
    for &l in &losses {
        shrinks += p.push(l).is_some() as usize;
    }
    std::hint::black_box(shrinks);
    t.elapsed().as_secs_f64() / steps as f64
}
