//! insightface's verification protocol (`calculate_roc` and `calculate_val` in its
//! `verification.py`), reproduced with numpy's order of arithmetic (pairwise summation,
//! `arange` thresholds as `i * step`) so results equal numpy's to the last bit.
//!
//! Rows are L2-normalised as `sklearn.preprocessing.normalize` does (a zero row stays zero);
//! the squared Euclidean distance of each pair is compared with `dist < threshold`.
//! Accuracy: 10 contiguous folds as `KFold(n_splits=10, shuffle=False)`; for each fold the
//! first threshold of `arange(0, 4, 0.01)` with the best accuracy on the other nine folds,
//! and the accuracy at it on the fold. TAR at FAR = 1e-3: thresholds `arange(0, 4, 0.001)`;
//! per fold, the training FAR curve is inverted by `interp1d(far, thresholds,
//! kind='slinear')` as SciPy ≤ 1.8 computes it (SciPy ≥ 1.9 raises on the curve's repeated
//! FAR values), or threshold 0 when the curve never reaches 1e-3.

use anyhow::{bail, ensure, Result};
use std::ops::Range;

pub const FOLDS: usize = 10;
pub const FAR_TARGET: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub fold_accuracy: Vec<f64>,
    pub accuracy_mean: f64,
    /// numpy's `std` (ddof 0) of the fold accuracies.
    pub accuracy_std: f64,
    /// The threshold each fold was scored at (chosen on the other nine).
    pub fold_threshold: Vec<f64>,
    /// `None` when a fold or a training split has no same or no different pair, where
    /// insightface's `calculate_val` divides by zero.
    pub tar_at_far: Option<TarAtFar>,
}

impl Verification {
    /// NaN scores, for a set whose pairs cannot make 10 folds (validation goes on).
    pub fn undefined() -> Verification {
        Verification {
            fold_accuracy: vec![],
            accuracy_mean: f64::NAN,
            accuracy_std: f64::NAN,
            fold_threshold: vec![],
            tar_at_far: None,
        }
    }

    /// The mean of the thresholds the folds were scored at.
    pub fn threshold_mean(&self) -> f64 {
        if self.fold_threshold.is_empty() {
            f64::NAN
        } else {
            mean_std(&self.fold_threshold).0
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TarAtFar {
    pub fold_tar: Vec<f64>,
    pub fold_far: Vec<f64>,
    pub fold_threshold: Vec<f64>,
    pub tar_mean: f64,
    pub tar_std: f64,
    pub far_mean: f64,
    /// Every training split has at least 1/FAR_TARGET = 1000 different pairs, so a FAR of
    /// 1e-3 can be resolved at all; below that the numbers are computed but mean little.
    pub reliable: bool,
}

/// insightface's input: embedding(image) + embedding(flipped image), added in f64 as its
/// numpy code does after widening the network's f32 outputs.
pub fn flip_sum(plain: &[f32], flipped: &[f32]) -> Vec<f64> {
    plain.iter().zip(flipped).map(|(&a, &b)| a as f64 + b as f64).collect()
}

/// Scores `embeddings` (row-major, 2 rows per pair, `dim` columns, not yet normalised).
pub fn evaluate(embeddings: &[f64], dim: usize, issame: &[bool]) -> Result<Verification> {
    let dist = pair_distances(embeddings, dim, issame.len())?;
    ensure!(issame.len() >= FOLDS, "{} pairs are too few for {FOLDS} folds", issame.len());
    let folds = kfold(issame.len(), FOLDS);
    let accuracy = Curves::new(&dist, issame, &folds, &thresholds(400, 0.01));
    let (fold_accuracy, fold_threshold): (Vec<f64>, Vec<f64>) =
        (0..folds.len()).map(|f| accuracy.best_accuracy(f)).unzip();
    let tar_at_far = tar_at_far(&dist, issame, &folds);
    let (accuracy_mean, accuracy_std) = mean_std(&fold_accuracy);
    Ok(Verification { fold_accuracy, accuracy_mean, accuracy_std, fold_threshold, tar_at_far })
}

/// Squared Euclidean distance of each pair after L2-normalising every row.
pub fn pair_distances(embeddings: &[f64], dim: usize, pairs: usize) -> Result<Vec<f64>> {
    ensure!(dim > 0, "embedding dimension 0");
    if embeddings.len() != 2 * pairs * dim {
        bail!("{} values are not {} rows (2 per pair) of {dim}", embeddings.len(), 2 * pairs);
    }
    if let Some(i) = embeddings.iter().position(|v| !v.is_finite()) {
        bail!("embedding row {} has a non-finite value ({})", i / dim, embeddings[i]);
    }
    let rows: Vec<Vec<f64>> = embeddings.chunks(dim).map(normalise).collect();
    let mut squares = vec![0.0; dim];
    let dist = rows
        .chunks(2)
        .map(|pair| {
            for (s, (a, b)) in squares.iter_mut().zip(pair[0].iter().zip(&pair[1])) {
                *s = (a - b) * (a - b);
            }
            np_sum(&squares)
        })
        .collect();
    Ok(dist)
}

fn normalise(row: &[f64]) -> Vec<f64> {
    let squares: Vec<f64> = row.iter().map(|v| v * v).collect();
    let norm = np_sum(&squares).sqrt();
    let norm = if norm == 0.0 { 1.0 } else { norm };
    row.iter().map(|v| v / norm).collect()
}

/// `np.arange(0, n * step, step)`: numpy fills element i as `start + i * step`.
fn thresholds(n: usize, step: f64) -> Vec<f64> {
    (0..n).map(|i| 0.0 + i as f64 * step).collect()
}

/// `KFold(n_splits=k, shuffle=False)`: contiguous, the first `n % k` folds one longer.
pub fn kfold(n: usize, k: usize) -> Vec<Range<usize>> {
    let mut start = 0;
    (0..k)
        .map(|f| {
            let len = n / k + usize::from(f < n % k);
            start += len;
            start - len..start
        })
        .collect()
}

/// numpy's pairwise summation (its `pairwise_sum`), so sums round as numpy's do.
pub fn np_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(-0.0, |acc, &v| acc + v);
    }
    if n <= 128 {
        let mut r: [f64; 8] = a[..8].try_into().expect("8 values");
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            r.iter_mut().zip(block).for_each(|(acc, &v)| *acc += v);
        }
        let head = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        return a[whole..].iter().fold(head, |acc, &v| acc + v);
    }
    let half = n / 2 - (n / 2) % 8;
    np_sum(&a[..half]) + np_sum(&a[half..])
}

/// `np.mean` and `np.std` (ddof 0).
pub fn mean_std(a: &[f64]) -> (f64, f64) {
    let mean = np_sum(a) / a.len() as f64;
    let squares: Vec<f64> = a.iter().map(|v| (v - mean) * (v - mean)).collect();
    (mean, (np_sum(&squares) / a.len() as f64).sqrt())
}

/// Per fold, how many same and different pairs are accepted (`dist < t`) at each threshold.
struct Curves {
    thresholds: Vec<f64>,
    /// accepted[fold][same as usize][threshold index]
    accepted: Vec<[Vec<u64>; 2]>,
    totals: Vec<[u64; 2]>,
}

impl Curves {
    fn new(dist: &[f64], issame: &[bool], folds: &[Range<usize>], thresholds: &[f64]) -> Curves {
        let t = thresholds.len();
        let mut accepted = Vec::with_capacity(folds.len());
        let mut totals = Vec::with_capacity(folds.len());
        for fold in folds {
            let mut first = [vec![0u64; t + 1], vec![0u64; t + 1]];
            let mut total = [0u64; 2];
            for p in fold.clone() {
                // The first threshold that accepts this pair; every later one does too.
                first[issame[p] as usize][thresholds.partition_point(|&th| th <= dist[p])] += 1;
                total[issame[p] as usize] += 1;
            }
            for counts in first.iter_mut() {
                let mut running = 0;
                for c in counts.iter_mut() {
                    running += *c;
                    *c = running;
                }
                counts.pop();
            }
            accepted.push(first);
            totals.push(total);
        }
        Curves { thresholds: thresholds.to_vec(), accepted, totals }
    }

    /// (accepted same, accepted different, same, different) over every fold but `test`.
    fn train(&self, test: usize, i: usize) -> (u64, u64, u64, u64) {
        let mut sums = (0, 0, 0, 0);
        for (_, (acc, tot)) in self.accepted.iter().zip(&self.totals).enumerate().filter(|(f, _)| *f != test) {
            sums = (sums.0 + acc[1][i], sums.1 + acc[0][i], sums.2 + tot[1], sums.3 + tot[0]);
        }
        sums
    }

    fn accuracy(&self, ta: u64, fa: u64, same: u64, diff: u64) -> f64 {
        (ta + (diff - fa)) as f64 / (same + diff) as f64
    }

    /// The fold's accuracy at the first threshold best on the other folds, and that threshold.
    fn best_accuracy(&self, test: usize) -> (f64, f64) {
        let mut best = (f64::NEG_INFINITY, 0);
        for i in 0..self.thresholds.len() {
            let (ta, fa, same, diff) = self.train(test, i);
            let acc = self.accuracy(ta, fa, same, diff);
            if acc > best.0 {
                best = (acc, i);
            }
        }
        let (acc, tot) = (&self.accepted[test], self.totals[test]);
        (self.accuracy(acc[1][best.1], acc[0][best.1], tot[1], tot[0]), self.thresholds[best.1])
    }
}

fn tar_at_far(dist: &[f64], issame: &[bool], folds: &[Range<usize>]) -> Option<TarAtFar> {
    let curves = Curves::new(dist, issame, folds, &thresholds(4000, 0.001));
    let (mut fold_tar, mut fold_far, mut fold_threshold) = (Vec::new(), Vec::new(), Vec::new());
    let mut min_train_diff = u64::MAX;
    for (f, fold) in folds.iter().enumerate() {
        let (_, _, train_same, train_diff) = curves.train(f, 0);
        let [test_diff, test_same] = curves.totals[f];
        if train_same == 0 || train_diff == 0 || test_diff == 0 || test_same == 0 {
            return None;
        }
        min_train_diff = min_train_diff.min(train_diff);
        let far: Vec<f64> =
            (0..curves.thresholds.len()).map(|i| curves.train(f, i).1 as f64 / train_diff as f64).collect();
        let reached = far.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v)) >= FAR_TARGET;
        let threshold = if reached { slinear(&far, &curves.thresholds, FAR_TARGET) } else { 0.0 };
        let accepted = |same: bool| fold.clone().filter(|&p| issame[p] == same && dist[p] < threshold).count() as f64;
        fold_tar.push(accepted(true) / test_same as f64);
        fold_far.push(accepted(false) / test_diff as f64);
        fold_threshold.push(threshold);
    }
    let (tar_mean, tar_std) = mean_std(&fold_tar);
    let far_mean = mean_std(&fold_far).0;
    let reliable = min_train_diff as f64 >= 1.0 / FAR_TARGET;
    Some(TarAtFar { fold_tar, fold_far, fold_threshold, tar_mean, tar_std, far_mean, reliable })
}

/// `scipy.interpolate.interp1d(x, y, kind='slinear')(at)` for a non-decreasing `x` as SciPy
/// ≤ 1.8 evaluates it: a degree-1 B-spline on knots `[x0, x..., xn]`, evaluated in the
/// interval `x[p-1] ≤ at < x[p]` (p the first index past `at`, kept within 1..n-1) by de
/// Boor's recursion; an interval of zero width gives 0.
fn slinear(x: &[f64], y: &[f64], at: f64) -> f64 {
    let n = x.len();
    let p = x.partition_point(|&v| v <= at).clamp(1, n - 1);
    let (xa, xb) = (x[p - 1], x[p]);
    if xb == xa {
        return 0.0;
    }
    let w = 1.0 / (xb - xa);
    let (h0, h1) = (0.0 + w * (xb - at), w * (at - xa));
    (0.0 + y[p - 1] * h0) + y[p] * h1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfold_puts_the_remainder_first() {
        let folds = kfold(23, 10);
        assert_eq!(folds.iter().map(|r| r.len()).collect::<Vec<_>>(), vec![3, 3, 3, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!((folds[0].start, folds[9].end), (0, 23));
    }

    #[test]
    fn pairwise_sum_rounds_as_numpy_does() {
        // 1e16 absorbs a 1.0 added to it alone (its ulp is 2) but not partial sums of them;
        // numpy 1.23 gives np.sum(a) - 1e16 == 14.0 and 292.0 for these.
        for (ones, numpy) in [(15, 14.0), (300, 292.0)] {
            let mut a = vec![1e16];
            a.extend(std::iter::repeat_n(1.0, ones));
            assert_eq!(a.iter().fold(0.0, |s, v| s + v), 1e16);
            assert_eq!(np_sum(&a) - 1e16, numpy);
        }
    }

    #[test]
    fn slinear_interpolates_inside_the_step_and_gives_zero_on_a_flat_end() {
        let x = [0.0, 0.0, 0.5, 0.5, 1.0];
        let y = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(slinear(&x, &y, 0.25), 1.5);
        assert_eq!(slinear(&x, &y, 0.5), 3.0);
        assert_eq!(slinear(&[0.0, 1.0, 1.0], &[0.0, 1.0, 2.0], 1.0), 0.0);
    }

    #[test]
    fn perfect_separation_scores_one() {
        let mut emb = Vec::new();
        let issame: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        for &same in &issame {
            emb.extend([1.0, 0.0, 0.0]);
            emb.extend(if same { [2.0, 0.0, 0.0] } else { [0.0, 3.0, 0.0] });
        }
        let v = evaluate(&emb, 3, &issame).unwrap();
        assert_eq!((v.accuracy_mean, v.accuracy_std), (1.0, 0.0));
        assert!(v.fold_threshold.iter().all(|&t| t == 0.01), "{:?}", v.fold_threshold);
        assert!(evaluate(&emb, 3, &issame[..19]).is_err());
        assert!(evaluate(&emb[..18 * 3 * 2], 3, &issame[..9]).is_err());
    }
}
