//! dlib's plateau test (`running_gradient`) and the learning-rate schedule built on it,
//! plus `trainer plateau FILE`, which runs the test on a `loss_debug` file.
//!
//! In a train loop (dlib's `dnn_trainer` order):
//! - every step: `guard.record(loss)` (true on a NaN/inf loss: reload at once), else
//!   `if let Some(f) = plateau.push(loss) { sgd.scale_lr(f) }`;
//! - at each save point: `guard.at_save_point()`: `Save` → write the checkpoint (with the
//!   `Plateau` in it); `Reload(failure)` → load the last checkpoint (its `Plateau` too);
//!   `Accept` → a rise that shrinking did not stop is the run's new level: undo those
//!   shrinks and save;
//! - on any reload: `if guard.reload(&failure) { sgd.scale_lr(plateau.shrink_now()) }`.
//!   The guard itself stays out of checkpoints (dlib keeps its threshold across reloads).
//!
//! Cost: `push` is O(1) except on check steps, one every `threshold / 200 + 1` steps as in
//! dlib, where the O(threshold) count runs (about 2 ms at 15000 losses here, so ~25 µs a
//! step amortised; the seed's per-suffix Python refit took seconds per check).

mod rise;
mod running_gradient;
mod schedule;

pub use rise::{RiseTest, RISE_FRACTION, RISE_SIGMAS};
pub use running_gradient::{
    count_steps_without_decrease, count_steps_without_decrease_robust, find_upper_quantile, normal_cdf,
    probability_values_are_increasing, probability_values_are_increasing_robust, RunningGradient,
    DEFAULT_PROBABILITY_OF_DECREASE, DEFAULT_QUANTILE_DISCARD,
};
pub use schedule::{
    Failure, Plateau, RollbackGuard, SaveDecision, DEFAULT_RISE_PROBABILITY, MAX_RISE_SHRINKS, MIN_STEPS_FOR_RISE_TEST,
};

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Prints `steps_without_decrease=N robust=M` for a loss file, then `losses=K`.
#[derive(clap::Args, Debug)]
pub struct PlateauArgs {
    /// Loss file: numbers separated by commas and/or white space (as loss_debug writes them).
    /// With several files, each gets its lines in turn.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Probability of decrease below which a step counts as "without decrease" (0.5 < p < 1).
    #[arg(long, default_value_t = DEFAULT_PROBABILITY_OF_DECREASE, value_parser = crate::bounds::real(0.0, 1.0, true))]
    pub p: f64,
    /// Fraction of the largest losses the robust count discards (0 to 1).
    #[arg(long, default_value_t = DEFAULT_QUANTILE_DISCARD, value_parser = crate::bounds::real(0.0, 1.0, false))]
    pub quantile: f64,
    /// Also print whether dlib's trainer, holding the last T losses, would shrink now.
    #[arg(long, value_name = "T", value_parser = crate::bounds::count::<usize>(crate::bounds::MAX_STEPS))]
    pub threshold: Option<usize>,
}

/// The report `trainer plateau` prints: the counts for each file in turn.
pub fn report(args: &PlateauArgs) -> anyhow::Result<String> {
    if !(args.p > 0.5 && args.p < 1.0) {
        bail!("--p must be in (0.5, 1), got {}", args.p);
    }
    if !(0.0..=1.0).contains(&args.quantile) {
        bail!("--quantile must be in [0, 1], got {}", args.quantile);
    }
    let mut report = String::new();
    for file in &args.files {
        report += &file_report(&read_losses(file)?, args);
    }
    Ok(report)
}

fn file_report(losses: &Losses, args: &PlateauArgs) -> String {
    let values = &losses.values;
    let plain = count_steps_without_decrease(values, args.p);
    let robust = count_steps_without_decrease_robust(values, args.p, args.quantile);
    let mut report = format!("steps_without_decrease={plain} robust={robust}\nlosses={}\n", values.len());
    if let Some(&(token, ref text)) = losses.non_finite.first() {
        report += &format!(
            "skipped_non_finite={} (first: token {token}, {text:?}; the trainer leaves such losses out of the plateau test too)\n",
            losses.non_finite.len()
        );
    }
    if let Some(t) = args.threshold {
        let window = &values[values.len().saturating_sub(t)..];
        let shrink = if would_shrink(window, t, args.p, args.quantile) { "yes" } else { "no" };
        report += &format!("shrink={shrink} (threshold={t}, window={})\n", window.len());
    }
    report
}

/// dlib's rule on a window: both counts must reach the threshold (so the window must
/// hold at least `threshold` losses).
pub fn would_shrink(window: &[f64], threshold: usize, p: f64, quantile: f64) -> bool {
    count_steps_without_decrease(window, p) >= threshold
        && count_steps_without_decrease_robust(window, p, quantile) >= threshold
}

/// A loss file's finite values, and the non-finite ones left out (1-based token, text).
#[derive(Debug, Default, PartialEq)]
pub struct Losses {
    pub values: Vec<f64>,
    pub non_finite: Vec<(usize, String)>,
}

/// Reads losses separated by commas and/or any white space; empty fields are skipped.
pub fn read_losses(path: &Path) -> anyhow::Result<Losses> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading loss file {}", path.display()))?;
    parse_losses(&text).with_context(|| format!("parsing loss file {}", path.display()))
}

/// `NaN` and `inf` (what a diverged step writes) are left out and counted, as the trainer
/// leaves them out of its plateau test; a number too large for f64 (`1e400`) is an error,
/// not an infinity.
pub fn parse_losses(text: &str) -> anyhow::Result<Losses> {
    let mut out = Losses::default();
    let tokens = text.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty());
    for (i, t) in tokens.enumerate() {
        let v = t.parse::<f64>().with_context(|| format!("token {} ({t:?}) is not a number", i + 1))?;
        if v.is_finite() {
            out.values.push(v);
        } else if v.is_nan() || t.trim_start_matches(['+', '-']).to_ascii_lowercase().starts_with("inf") {
            out.non_finite.push((i + 1, t.to_string()));
        } else {
            bail!("token {} ({t:?}) is too large for a 64-bit float", i + 1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_left_out_with_their_position_and_overflow_is_an_error() {
        let l = parse_losses("1.5, NaN,0.5\ninf,-inf 0.25,nan").unwrap();
        assert_eq!(l.values, [1.5, 0.5, 0.25]);
        assert_eq!(l.non_finite, [(2, "NaN".to_string()), (4, "inf".into()), (5, "-inf".into()), (7, "nan".into())]);
        let err = format!("{:#}", parse_losses("1,2,1e400").unwrap_err());
        assert!(err.contains("token 3") && err.contains("1e400"), "{err}");
    }
}
