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

#[cfg(test)]
mod tests {
    use super::*;

    const P: f64 = DEFAULT_PROBABILITY_OF_DECREASE;
    const Q: f64 = DEFAULT_QUANTILE_DISCARD;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn fit_matches_ordinary_least_squares_worked_by_hand() {
        // y = 1, 3, 2, 5 at x = 0..3: x̄ = 1.5, ȳ = 2.75, Sxy = 5.5, Sxx = 5, so slope 1.1,
        // intercept 2.75 - 1.1·1.5 = 1.1; residuals -0.1, 0.8, -1.3, 0.6 give RSS 2.7 and
        // se = sqrt(2.7 / 2 / 5). dlib's 1e6 prior moves these only around 1e-7.
        let mut g = RunningGradient::new();
        for y in [1.0, 3.0, 2.0, 5.0] {
            g.add(y);
        }
        assert_eq!(g.current_n(), 4.0);
        assert!(close(g.gradient(), 1.1, 1e-6), "{}", g.gradient());
        assert!(close(g.intercept(), 1.1, 1e-6), "{}", g.intercept());
        assert!(close(g.standard_error(), (0.27f64).sqrt(), 1e-6), "{}", g.standard_error());
        let z = 1.1 / 0.27f64.sqrt();
        assert!(close(g.probability_gradient_greater_than(0.0), normal_cdf(z, 0.0, 1.0), 1e-6));
    }

    #[test]
    fn normal_cdf_ties_and_values() {
        // Zero spread is a step function, with exactly 0.5 on the tie.
        assert_eq!(normal_cdf(1.0, 2.0, 0.0), 0.0);
        assert_eq!(normal_cdf(3.0, 2.0, 0.0), 1.0);
        assert_eq!(normal_cdf(2.0, 2.0, 0.0), 0.5);
        assert_eq!(normal_cdf(0.0, 0.0, 1.0), 0.5);
        assert!(close(normal_cdf(1.959963984540054, 0.0, 1.0), 0.975, 1e-12));
        assert!(close(normal_cdf(-1.0, 0.0, 1.0), 0.15865525393145707, 1e-12));
    }

    #[test]
    fn fewer_than_three_values_never_count() {
        // dlib only tests once the fit holds more than 2 values.
        for series in [&[][..], &[1.0], &[1.0, 2.0]] {
            assert_eq!(count_steps_without_decrease(series, P), 0);
            assert_eq!(count_steps_without_decrease_robust(series, P, Q), 0);
        }
        // Three increasing values: the first test (j = 3) already fails to see a decrease.
        assert_eq!(count_steps_without_decrease(&[1.0, 2.0, 3.0], P), 3);
    }

    #[test]
    fn straight_lines() {
        // Strictly decreasing: every suffix fits slope -1 with (almost) no residual, so
        // P(decrease) is 1 for every j and no step counts.
        let down: Vec<f64> = (0..50).map(|i| 100.0 - i as f64).collect();
        assert_eq!(count_steps_without_decrease(&down, P), 0);
        assert_eq!(count_steps_without_decrease_robust(&down, P, Q), 0);
        // Strictly increasing: P(decrease) is 0 for every j ≥ 3, so the count is the
        // largest j, the whole length.
        let up: Vec<f64> = down.iter().rev().copied().collect();
        assert_eq!(count_steps_without_decrease(&up, P), 50);
    }

    #[test]
    fn exact_ties_count_as_no_decrease() {
        // All zeros: the fit stays exactly w = 0 with zero residual, so the spread is 0 and
        // dlib's CDF returns its tie value 0.5 < 0.51: every step counts.
        assert_eq!(count_steps_without_decrease(&[0.0; 7], P), 7);
        assert_eq!(count_steps_without_decrease_robust(&[0.0; 7], P, Q), 7);
    }

    #[test]
    fn flat_tail_after_a_descent() {
        // Backwards the series is 0,0,0,0,1,2,3,4. j = 3, 4 see only zeros (tie, 0.5:
        // counted). At j = 5 the fit of 0,0,0,0,1 has slope 0.2 and se sqrt(0.4/3/10),
        // z = 1.73, P(decrease) = 0.958: not counted, and longer suffixes slope up more.
        let s = [4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(count_steps_without_decrease(&s, P), 4);
        assert_eq!(count_steps_without_decrease_robust(&s, P, Q), 4);
    }

    #[test]
    fn a_final_spike_fools_only_the_plain_count() {
        // Backwards: 9,0,0,0,1,2,3,4. With the 9 first every suffix slopes down in
        // reverse (slopes -1.6, -0.91, -0.46, -0.15 for j = 5..8), so all 8 count.
        // The robust threshold is sorted[round(7·0.9) = 6] = 4, so the 9 is skipped (it
        // still advances j): j = 4 fits 0,0,0 (tie, counted), j = 5 fits 0,0,0,1 with
        // slope 0.3, se sqrt(0.15/5), P(decrease) = 0.958, not counted: robust = 4.
        let s = [4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 9.0];
        assert_eq!(count_steps_without_decrease(&s, P), 8);
        assert_eq!(count_steps_without_decrease_robust(&s, P, Q), 4);
    }

    #[test]
    fn nan_poisons_the_plain_fit_and_is_skipped_by_the_robust_one() {
        // Newest value NaN: the plain fit is NaN from the start, NaN < p is false, count 0.
        // The robust quantile sorts NaN last: with 11 zeros before it, index
        // round(11·0.9) = 10 is a zero, `NaN <= 0` is false, and the zeros tie (0.5): 12.
        let mut s = vec![0.0; 11];
        s.push(f64::NAN);
        assert_eq!(count_steps_without_decrease(&s, P), 0);
        assert_eq!(count_steps_without_decrease_robust(&s, P, Q), 12);
        // With fewer values the quantile index lands on the NaN itself: nothing is kept.
        assert_eq!(count_steps_without_decrease_robust(&s[6..], P, Q), 0);
    }

    #[test]
    fn upper_quantile_picks_dlibs_index() {
        // 5 values: round(4·0.9) = round(3.6) = 4, the maximum; round(4·0.75) = 3.
        assert_eq!(find_upper_quantile(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.1), Some(5.0));
        assert_eq!(find_upper_quantile(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.25), Some(4.0));
        // 6 values, q = 0.5: round(2.5) = 3 (halves away from zero, as std::round).
        assert_eq!(find_upper_quantile(&[6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 0.5), Some(4.0));
        assert_eq!(find_upper_quantile(&[2.0, 1.0], 1.0), Some(1.0));
        assert_eq!(find_upper_quantile(&[], 0.1), None);
    }

    #[test]
    fn robust_without_discard_equals_plain() {
        // quantile_discard = 0 keeps values up to the maximum, i.e. all of them.
        let mut rng = crate::rng::Rng::new(11);
        for _ in 0..20 {
            let s: Vec<f64> = (0..200).map(|i| 1.0 / (1.0 + i as f64 * 0.01) + rng.unit()).collect();
            assert_eq!(count_steps_without_decrease_robust(&s, P, 0.0), count_steps_without_decrease(&s, P));
        }
    }

    #[test]
    fn probability_values_are_increasing_cases() {
        assert_eq!(probability_values_are_increasing(&[]), 0.5);
        assert_eq!(probability_values_are_increasing(&[1.0, 9.0]), 0.5);
        assert_eq!(probability_values_are_increasing(&[0.0, 0.0, 0.0]), 0.5);
        assert!(probability_values_are_increasing(&[1.0, 2.0, 3.0, 4.0]) > 0.99);
        assert!(probability_values_are_increasing(&[4.0, 3.0, 2.0, 1.0]) < 0.01);
        // A single huge outlier at the end drags the plain fit up; the robust one drops it.
        let s = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 100.0];
        assert!(probability_values_are_increasing(&s) > 0.5);
        assert!(probability_values_are_increasing_robust(&s, 0.1) < 0.01);
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let mut a = RunningGradient::new();
        for y in [3.0, 1.0, 4.0, 1.0, 5.0] {
            a.add(y);
        }
        let mut b: RunningGradient = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        a.add(9.0);
        b.add(9.0);
        assert_eq!(a, b);
    }
}
