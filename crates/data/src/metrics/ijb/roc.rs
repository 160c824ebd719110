//! The ROC as eval_ijbc.py reads it: scikit-learn's `roc_curve(label, score)` (with its
//! default `drop_intermediate=True`), both arrays reversed, and for each FAR the point whose
//! FPR is nearest, the first in that reversed order on ties; plus `auc(fpr, tpr)`.
//!
//! Genuine and impostor scores are sorted once (descending) and merged in one pass; the ROC's
//! points stream through a three-point window that drops the intermediate ones as
//! scikit-learn does, and every FAR point, the AUC and a thinned curve for the plot are read
//! from that one pass: no per-FAR copy, no array of all points.

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

/// The FARs of eval_ijbc.py's table.
pub const FARS: [f64; 6] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1];

/// Their names in log keys (`ijbc_tar_far_1e-4`).
pub const FAR_NAMES: [&str; 6] = ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"];

/// eval_ijbc.py's column titles (Python's `str` of the floats).
pub const FAR_TITLES: [&str; 6] = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"];

/// Points kept for the plot: one per this FPR ratio step, plus the ends.
const PLOT_STEP: f64 = 1.02;

/// What the ROC gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Roc {
    /// TPR at the point chosen for each of `FARS`.
    pub tar: [f64; 6],
    /// The FPR of that point.
    pub far: [f64; 6],
    pub auc: f64,
    pub genuine: usize,
    pub impostor: usize,
    /// (FPR, TPR) of the curve, thinned on a log FPR scale, for plotting.
    pub curve: Vec<(f64, f64)>,
}

/// Reads the ROC of `scores` with `genuine` labels.
pub fn roc(scores: &[f64], genuine: &[bool]) -> Result<Roc> {
    ensure!(scores.len() == genuine.len(), "{} scores for {} labels", scores.len(), genuine.len());
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        bail!("the score of pair {} is NaN", i + 1);
    }
    let (pos, neg) = split_sorted(scores, genuine);
    ensure!(!pos.is_empty(), "no genuine pair (label 1): the ROC is undefined");
    ensure!(!neg.is_empty(), "no impostor pair (label 0): the ROC is undefined");
    let mut reader = Reader::new(pos.len(), neg.len());
    let mut window = DropIntermediate::default();
    for_each_threshold(&pos, &neg, |tp, fp| window.push((tp, fp), &mut |p| reader.point(p)));
    window.finish(&mut |p| reader.point(p));
    Ok(reader.finish())
}

/// Genuine and impostor scores, each sorted descending, -0.0 folded into 0.0 (NumPy's `diff`
/// sees them as one threshold).
fn split_sorted(scores: &[f64], genuine: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let pick = |want: bool| -> Vec<f64> {
        let mut v: Vec<f64> =
            scores.par_iter().zip(genuine.par_iter()).filter(|(_, &g)| g == want).map(|(&s, _)| s + 0.0).collect();
        v.par_sort_unstable_by(|a, b| b.total_cmp(a));
        v
    };
    rayon::join(|| pick(true), || pick(false))
}

/// Calls `f(tp, fp)` after each distinct score, from the highest down: the cumulative
/// counts of genuine and impostor pairs scoring at least that much.
fn for_each_threshold(pos: &[f64], neg: &[f64], mut f: impl FnMut(u64, u64)) {
    let (mut i, mut j) = (0, 0);
    while i < pos.len() || j < neg.len() {
        let v = match (pos.get(i), neg.get(j)) {
            (Some(&a), Some(&b)) => a.max(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => unreachable!(),
        };
        while i < pos.len() && pos[i] == v {
            i += 1;
        }
        while j < neg.len() && neg[j] == v {
            j += 1;
        }
        f(i as u64, j as u64);
    }
}

/// scikit-learn's `drop_intermediate`: of the threshold points, keeps the first, the last,
/// and those where the second difference of fps or of tps is non-zero (the corners), then
/// puts (0, 0) in front. Works on a sliding window of three points.
#[derive(Default)]
struct DropIntermediate {
    /// The last two points seen, oldest first.
    held: Vec<(u64, u64)>,
    seen: usize,
}

impl DropIntermediate {
    fn push(&mut self, p: (u64, u64), emit: &mut impl FnMut((u64, u64))) {
        if self.seen == 0 {
            emit((0, 0));
            emit(p);
        } else if self.held.len() == 2 {
            let (a, b) = (self.held[0], self.held[1]);
            let bend = |x: u64, y: u64, z: u64| (z as i128 - y as i128) != (y as i128 - x as i128);
            if bend(a.0, b.0, p.0) || bend(a.1, b.1, p.1) {
                emit(b);
            }
            self.held.remove(0);
        }
        self.held.push(p);
        self.seen += 1;
    }

    fn finish(self, emit: &mut impl FnMut((u64, u64))) {
        if self.seen > 1 {
            emit(*self.held.last().expect("a point is held"));
        }
    }
}

/// Consumes the kept points (tp, fp) in scikit-learn's order.
struct Reader {
    pos: f64,
    neg: f64,
    genuine: usize,
    impostor: usize,
    best: [(f64, f64, f64); 6],
    auc: f64,
    last: Option<(f64, f64)>,
    curve: Vec<(f64, f64)>,
}

impl Reader {
    fn new(genuine: usize, impostor: usize) -> Reader {
        Reader {
            pos: genuine as f64,
            neg: impostor as f64,
            genuine,
            impostor,
            best: [(f64::INFINITY, 0.0, 0.0); 6],
            auc: 0.0,
            last: None,
            curve: Vec::new(),
        }
    }

    fn point(&mut self, (tp, fp): (u64, u64)) {
        let (fpr, tpr) = (fp as f64 / self.neg, tp as f64 / self.pos);
        // Reversed order, first on ties: in this (forward) order the last of equal distances.
        for (b, far) in self.best.iter_mut().zip(FARS) {
            let d = (fpr - far).abs();
            if d <= b.0 {
                *b = (d, fpr, tpr);
            }
        }
        if let Some((x, y)) = self.last {
            self.auc += (fpr - x) * (tpr + y) / 2.0;
        }
        let far_enough = self.curve.last().is_none_or(|&(x, _)| fpr > x * PLOT_STEP);
        if far_enough && fpr > 0.0 {
            self.curve.push((fpr, tpr));
        }
        self.last = Some((fpr, tpr));
    }

    fn finish(mut self) -> Roc {
        if let Some(end) = self.last.filter(|&e| self.curve.last() != Some(&e)) {
            self.curve.push(end);
        }
        Roc {
            tar: self.best.map(|b| b.2),
            far: self.best.map(|b| b.1),
            auc: self.auc,
            genuine: self.genuine,
            impostor: self.impostor,
            curve: self.curve,
        }
    }
}
