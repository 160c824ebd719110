//! The rollback safeguard's test for a finite loss that rose since the last save.
//!
//! dlib (`dnn_trainer`) calls the loss "rising" when its slope over the last
//! 2 × (steps since the save) losses is positive with probability above 0.99. That window
//! straddles the save: a loss that fell fast before it and levels off after it fits a
//! line that is flat or rising, and dlib reloads a healthy run again and again. Here the
//! slope test is kept (with dlib's tightening threshold), but a rise must also be large
//! against the loss's own noise: the level of the newest losses must stand several
//! noise widths above the level before the save. A loss that levels off, wanders within
//! its noise or drifts down never passes that; a climb or a jump does.

use super::running_gradient::probability_values_are_increasing;
use serde::{Deserialize, Serialize};

/// The rise must exceed this many per-step noise widths (σ)...
pub const RISE_SIGMAS: f64 = 3.0;
/// ...and this fraction of the loss before the save, so that a nearly noiseless loss
/// (a large batch, a tiny head) is not rolled back for a wobble of a fraction of a percent.
pub const RISE_FRACTION: f64 = 0.02;
/// Converts a median absolute deviation into a standard deviation for normal noise.
const MAD_TO_SIGMA: f64 = 1.4826;

/// What the rise test compared and found: every number a rollback event reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RiseTest {
    /// Losses since the save, and before it, that were compared.
    pub steps_after: usize,
    pub steps_before: usize,
    /// Median of the k losses before the save (the first half of those after it when the
    /// run has no losses before the save yet).
    pub level_before: f64,
    /// Median of the newest half of the losses since the save: where the loss is now.
    pub level_after: f64,
    /// Per-step noise σ, from the median absolute successive difference, which neither a
    /// trend nor one level shift moves.
    pub noise: f64,
    /// `level_after - level_before`: the statistic.
    pub rise: f64,
    /// What `rise` must exceed: max(RISE_SIGMAS σ, RISE_FRACTION |level_before|).
    pub rise_threshold: f64,
    /// dlib's P(slope > 0) over the save's window (the losses before and after it).
    pub p_increasing: f64,
    /// What `p_increasing` must exceed (dlib's threshold, tightened by reloads in a row).
    pub p_threshold: f64,
}

impl RiseTest {
    /// Runs the test on the losses before the save and those since; `after` must hold at
    /// least two values.
    pub fn run(before: &[f64], after: &[f64], p_threshold: f64) -> RiseTest {
        let newest = &after[after.len() / 2..];
        let reference = if before.is_empty() { &after[..after.len() / 2] } else { before };
        let (level_before, level_after) = (median(reference), median(newest));
        let all: Vec<f64> = before.iter().chain(after).copied().collect();
        let noise = successive_difference_sigma(&all);
        let rise = level_after - level_before;
        let rise_threshold = (RISE_SIGMAS * noise).max(RISE_FRACTION * level_before.abs());
        RiseTest {
            steps_after: after.len(),
            steps_before: before.len(),
            level_before,
            level_after,
            noise,
            rise,
            rise_threshold,
            p_increasing: probability_values_are_increasing(&all),
            p_threshold,
        }
    }

    /// A rise both significant (dlib's slope test) and large against the noise.
    pub fn rose(&self) -> bool {
        self.rise > self.rise_threshold && self.p_increasing > self.p_threshold
    }

    /// The rise in noise widths (∞ for a rise of a noiseless loss).
    pub fn rise_sigmas(&self) -> f64 {
        if self.rise <= 0.0 {
            0.0
        } else {
            self.rise / self.noise
        }
    }

    /// One line for logs: what rose, against what.
    pub fn describe(&self) -> String {
        format!(
            "median loss {:.4} over the newest {} steps vs {:.4} before the save: rise {:.4} ({:.1}σ, σ {:.4}) \
             against a threshold of {:.4}; P(increasing) {:.5} against {:.5}",
            self.level_after,
            self.steps_after - self.steps_after / 2,
            self.level_before,
            self.rise,
            self.rise_sigmas(),
            self.noise,
            self.rise_threshold,
            self.p_increasing,
            self.p_threshold
        )
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// σ of i.i.d. noise from successive differences: each has σ√2, and their median
/// absolute value is 0.6745 of that, whatever the trend (which shifts each difference
/// only by the slope) or a single jump (one outlier among many differences).
fn successive_difference_sigma(values: &[f64]) -> f64 {
    let diffs: Vec<f64> = values.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    if diffs.is_empty() {
        return 0.0;
    }
    MAD_TO_SIGMA * median(&diffs) / std::f64::consts::SQRT_2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plateau::DEFAULT_RISE_PROBABILITY;
    use crate::rng::Rng;

    /// Unit-variance noise scaled by `sigma`: a sum of 12 uniforms minus 6.
    fn noise(rng: &mut Rng, sigma: f64) -> f64 {
        sigma * ((0..12).map(|_| rng.unit()).sum::<f64>() - 6.0)
    }

    /// The standard error of `rise` if both levels were pure noise (the median of n normal
    /// values has a standard error of about 1.2533 σ / √n).
    fn chance_rise(t: &RiseTest) -> f64 {
        let n_after = (t.steps_after - t.steps_after / 2) as f64;
        let n_before = if t.steps_before == 0 { (t.steps_after / 2) as f64 } else { t.steps_before as f64 };
        1.2533 * t.noise * (1.0 / n_after + 1.0 / n_before).sqrt()
    }

    fn test(before: &[f64], after: &[f64]) -> RiseTest {
        RiseTest::run(before, after, DEFAULT_RISE_PROBABILITY)
    }

    #[test]
    fn the_noise_estimate_ignores_a_trend_and_a_jump() {
        let mut rng = Rng::new(1);
        let mut v: Vec<f64> = (0..2000).map(|i| 10.0 - 0.002 * i as f64 + noise(&mut rng, 0.5)).collect();
        v[1000..].iter_mut().for_each(|x| *x += 20.0);
        let sigma = successive_difference_sigma(&v);
        assert!((sigma - 0.5).abs() < 0.05, "{sigma}");
    }

    #[test]
    fn a_level_off_after_a_fast_fall_is_not_a_rise() {
        // The run: a fall to 15.4, then flat at about 16 with less noise.
        let mut rng = Rng::new(2);
        let before: Vec<f64> = (0..100).map(|i| 20.0 - 0.046 * i as f64 + noise(&mut rng, 1.0)).collect();
        let after: Vec<f64> = (0..100).map(|_| 16.0 + noise(&mut rng, 0.6)).collect();
        let t = test(&before, &after);
        assert!(!t.rose(), "{}", t.describe());
        // The level decides: the newest losses are not above those before the save.
        assert!(t.rise < t.rise_threshold, "{}", t.describe());
    }

    #[test]
    fn a_real_climb_is_a_rise_and_its_threshold_is_far_above_chance() {
        let mut rng = Rng::new(3);
        let before: Vec<f64> = (0..100).map(|_| 15.0 + noise(&mut rng, 1.0)).collect();
        let after: Vec<f64> = (0..100).map(|i| 15.0 + 0.1 * i as f64 + noise(&mut rng, 1.0)).collect();
        let t = test(&before, &after);
        assert!(t.rose(), "{}", t.describe());
        assert!(t.rise_threshold > 8.0 * chance_rise(&t), "{t:?}");
    }

    #[test]
    fn a_noiseless_loss_needs_a_rise_of_two_percent() {
        let flat = [1.0; 40];
        let up: Vec<f64> = (0..40).map(|i| 1.0 + 0.0005 * i as f64).collect();
        let t = test(&flat, &up);
        assert!(!t.rose() && t.rise > 0.0 && t.noise < 1e-3, "{}", t.describe());
        let steep: Vec<f64> = (0..40).map(|i| 1.0 + 0.005 * i as f64).collect();
        assert!(test(&flat, &steep).rose());
    }

    #[test]
    fn without_losses_before_the_save_the_first_half_is_the_reference() {
        let climb: Vec<f64> = (0..60).map(|i| 1.0 + 0.05 * i as f64 + 0.01 * (i % 3) as f64).collect();
        let t = test(&[], &climb);
        assert_eq!((t.steps_before, t.steps_after), (0, 60));
        assert!(t.rose(), "{}", t.describe());
        assert!(!test(&[], &climb.iter().rev().copied().collect::<Vec<_>>()).rose());
    }
}
