//! A port of dlib's `running_gradient` (dlib/statistics/running_gradient.h) and the
//! counts built on it.
//!
//! The arithmetic follows dlib's matrix expressions term by term (same operands, same
//! order, glibc's `erfc`), so the probabilities are bit-identical to dlib's and the
//! integer counts agree exactly, even on knife-edge series.

use serde::{Deserialize, Serialize};

/// dlib's defaults for `count_steps_without_decrease*`.
pub const DEFAULT_PROBABILITY_OF_DECREASE: f64 = 0.51;
pub const DEFAULT_QUANTILE_DISCARD: f64 = 0.10;

extern "C" {
    // glibc's erfc, the function dlib's `std::erfc` resolves to (Rust's own is unstable).
    fn erfc(x: f64) -> f64;
}

/// Recursive least squares fit of `y = gradient * x + intercept` to values added at
/// x = 0, 1, 2, …: O(1) work and memory per value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningGradient {
    n: f64,
    /// Inverse-covariance-like 2×2 matrix, row-major; dlib starts it at 1e6·I.
    r: [f64; 4],
    /// (gradient, intercept).
    w: [f64; 2],
    residual_squared: f64,
}

impl Default for RunningGradient {
    fn default() -> Self {
        Self::new()
    }
}

impl RunningGradient {
    pub fn new() -> Self {
        RunningGradient { n: 0.0, r: [1e6, 0.0, 0.0, 1e6], w: [0.0, 0.0], residual_squared: 0.0 }
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }

    pub fn current_n(&self) -> f64 {
        self.n
    }

    pub fn add(&mut self, y: f64) {
        let n = self.n;
        let [r00, r01, r10, r11] = self.r;
        // temp = 1 + trans(x)*R*x with x = (n, 1).
        let xr0 = n * r00 + r10;
        let xr1 = n * r01 + r11;
        let temp = 1.0 + (xr0 * n + xr1);
        // R = R - (R x)(R x)' / temp, then symmetrised as dlib does for stability.
        let t0 = r00 * n + r01;
        let t1 = r10 * n + r11;
        let a00 = r00 - t0 * t0 / temp;
        let a01 = r01 - t0 * t1 / temp;
        let a10 = r10 - t1 * t0 / temp;
        let a11 = r11 - t1 * t1 / temp;
        let r = [0.5 * (a00 + a00), 0.5 * (a01 + a10), 0.5 * (a10 + a01), 0.5 * (a11 + a11)];
        // w = w + R x (y - x'w), with the updated R.
        let err = y - (n * self.w[0] + self.w[1]);
        let w = [self.w[0] + (r[0] * n + r[1]) * err, self.w[1] + (r[2] * n + r[3]) * err];
        // The a-posteriori error times temp keeps the exact residual sum of squares.
        let post = y - (n * w[0] + w[1]);
        self.residual_squared += post * post * temp;
        self.r = r;
        self.w = w;
        self.n = n + 1.0;
    }

    /// Slope of the fitted line; meaningful once `current_n() > 1`.
    pub fn gradient(&self) -> f64 {
        self.w[0]
    }

    pub fn intercept(&self) -> f64 {
        self.w[1]
    }

    /// Standard error of the slope; meaningful once `current_n() > 2`.
    pub fn standard_error(&self) -> f64 {
        let n = self.n;
        let s = self.residual_squared / (n - 2.0);
        let adjust = 12.0 / (n * n * n - n);
        (s * adjust).sqrt()
    }

    /// P(true slope < thresh) under a normal model of the slope estimate.
    pub fn probability_gradient_less_than(&self, thresh: f64) -> f64 {
        normal_cdf(thresh, self.gradient(), self.standard_error())
    }

    pub fn probability_gradient_greater_than(&self, thresh: f64) -> f64 {
        1.0 - self.probability_gradient_less_than(thresh)
    }
}

/// dlib's normal CDF, including its step function when the spread is exactly zero.
pub fn normal_cdf(value: f64, mean: f64, stddev: f64) -> f64 {
    if stddev == 0.0 {
        return if value < mean {
            0.0
        } else if value > mean {
            1.0
        } else {
            0.5
        };
    }
    let z = (value - mean) / stddev;
    // SAFETY: erfc is a pure libm function with no preconditions.
    0.5 * unsafe { erfc(-z / std::f64::consts::SQRT_2) }
}

/// The value at sorted position round((len-1)·(1-quantile)), as dlib's nth_element picks
/// it. NaN sorts above every number (dlib leaves NaN undefined). `None` when empty.
pub fn find_upper_quantile(values: &[f64], quantile: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    // f64::round rounds halves away from zero, like std::round.
    let idx = ((v.len() - 1) as f64 * (1.0 - quantile)).round() as usize;
    let idx = idx.min(v.len() - 1);
    let (_, nth, _) = v.select_nth_unstable_by(idx, nan_last);
    Some(*nth)
}

fn nan_last(a: &f64, b: &f64) -> std::cmp::Ordering {
    a.partial_cmp(b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// How many of the most recent steps show no confident decrease: walking back from the
/// newest value, the largest j whose last-j-values fit has P(decreasing) < p.
/// O(n) per call (one backward pass of O(1) updates).
pub fn count_steps_without_decrease(losses: &[f64], probability_of_decrease: f64) -> usize {
    count_backwards(losses.iter().rev().copied(), probability_of_decrease, None)
}

/// As [`count_steps_without_decrease`], but values above the (1 - quantile_discard)
/// quantile of the whole series are skipped (they neither enter the fit nor advance its
/// x), so a few bad mini-batches cannot hold the learning rate up.
pub fn count_steps_without_decrease_robust(
    losses: &[f64],
    probability_of_decrease: f64,
    quantile_discard: f64,
) -> usize {
    match find_upper_quantile(losses, quantile_discard) {
        None => 0,
        Some(q) => count_backwards(losses.iter().rev().copied(), probability_of_decrease, Some(q)),
    }
}

/// The shared backward pass. With `keep_at_most`, values not `<= q` are skipped (dlib's
/// test: NaN is skipped by the robust count, while the plain count adds it and its fit
/// turns NaN, so no later step counts).
pub(crate) fn count_backwards(
    newest_first: impl Iterator<Item = f64>,
    probability_of_decrease: f64,
    keep_at_most: Option<f64>,
) -> usize {
    let mut g = RunningGradient::new();
    let mut count = 0;
    for (i, y) in newest_first.enumerate() {
        if keep_at_most.is_none_or(|q| y <= q) {
            g.add(y);
        }
        // Walking backwards, a positive fitted slope means the loss went down over time.
        if g.current_n() > 2.0 && g.probability_gradient_greater_than(0.0) < probability_of_decrease {
            count = i + 1;
        }
    }
    count
}

/// P(the values trend upwards), fitted in their given order; 0.5 with fewer than 3.
pub fn probability_values_are_increasing(values: &[f64]) -> f64 {
    let mut g = RunningGradient::new();
    for &v in values {
        g.add(v);
    }
    if g.current_n() > 2.0 {
        g.probability_gradient_greater_than(0.0)
    } else {
        0.5
    }
}

/// As [`probability_values_are_increasing`], ignoring values above the quantile.
pub fn probability_values_are_increasing_robust(values: &[f64], quantile_discard: f64) -> f64 {
    let Some(q) = find_upper_quantile(values, quantile_discard) else { return 0.5 };
    let mut g = RunningGradient::new();
    for &v in values.iter().filter(|&&v| v <= q) {
        g.add(v);
    }
    if g.current_n() > 2.0 {
        g.probability_gradient_greater_than(0.0)
    } else {
        0.5
    }
}
