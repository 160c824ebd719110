//! Validation metrics as pure functions over row-major f32 embeddings and labels.
//!
//! For face verification the caller passes, per image, embedding(image) +
//! embedding(horizontal mirror), as insightface does; both functions L2-normalise each
//! row themselves, so the sum need not be re-normalised first (doing so changes nothing).
//! Labels below 0 mean "unknown" and are left out.

mod confusion;
pub mod ijb;
pub mod verification;

pub use confusion::Confusion;
pub use verification::Verification;

use crate::rng::Rng;
use std::collections::{BTreeMap, HashSet};

/// With at most this many labelled embeddings the Gap uses every pair (about 2M pairs).
pub const GAP_ALL_PAIRS_MAX_N: usize = 2000;
/// Above it, the Gap samples this many same-identity and as many different-identity pairs.
pub const GAP_SAMPLED_PAIRS: usize = 1_000_000;
const GAP_SEED: u64 = 0x6A9;

/// The seed's separation score: (diff_mean - same_mean) / diff_std of the Euclidean
/// distances between normalised embeddings; higher is better, NaN when undefined.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Gap {
    pub value: f64,
    pub same_mean: f64,
    pub diff_mean: f64,
    /// Population standard deviation (numpy's default).
    pub diff_std: f64,
    pub same_pairs: usize,
    pub diff_pairs: usize,
    /// Whether pairs were sampled (more than `GAP_ALL_PAIRS_MAX_N` embeddings).
    pub sampled: bool,
}

pub fn gap(emb: &[f32], dim: usize, labels: &[i64]) -> Gap {
    gap_with(emb, dim, labels, GAP_ALL_PAIRS_MAX_N, GAP_SAMPLED_PAIRS, GAP_SEED)
}

/// [`gap`] with its limits explicit: all pairs up to `max_n` labelled embeddings, else
/// `pairs_per_kind` same and different pairs drawn with `seed` (the means are per kind,
/// so sampling the kinds separately keeps them unbiased).
pub fn gap_with(emb: &[f32], dim: usize, labels: &[i64], max_n: usize, pairs_per_kind: usize, seed: u64) -> Gap {
    let rows = normalised_rows(emb, dim);
    let known: Vec<usize> = (0..labels.len().min(rows.len())).filter(|&i| labels[i] >= 0).collect();
    let mut same = Moments::default();
    let mut diff = Moments::default();
    let sampled = known.len() > max_n;
    if !sampled {
        for (a, &i) in known.iter().enumerate() {
            for &j in &known[a + 1..] {
                let d = dist(&rows[i], &rows[j]);
                if labels[i] == labels[j] {
                    same.add(d)
                } else {
                    diff.add(d)
                }
            }
        }
    } else {
        for (i, j) in sample_same(labels, &known, pairs_per_kind, seed) {
            same.add(dist(&rows[i], &rows[j]));
        }
        for (i, j) in sample_diff(labels, &known, pairs_per_kind, seed ^ 1) {
            diff.add(dist(&rows[i], &rows[j]));
        }
    }
    let (same_mean, diff_mean, diff_std) = (same.mean(), diff.mean(), diff.std());
    let value = if diff_std > 0.0 { (diff_mean - same_mean) / diff_std } else { f64::NAN };
    Gap { value, same_mean, diff_mean, diff_std, same_pairs: same.n, diff_pairs: diff.n, sampled }
}

/// Balanced verification pairs `(i, j, same_identity)`, shuffled so contiguous folds
/// mix both kinds: `n_pairs / 2` distinct same-identity pairs (fewer if the labels do not
/// allow them) and exactly as many distinct different-identity pairs.
pub fn draw_pairs(labels: &[i64], n_pairs: usize, seed: u64) -> Vec<(usize, usize, bool)> {
    let known: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
    let mut same = sample_same(labels, &known, n_pairs / 2, seed);
    let diff = sample_diff(labels, &known, same.len(), seed ^ 1);
    same.truncate(diff.len());
    let mut pairs: Vec<_> = same.into_iter().map(|(i, j)| (i, j, true)).collect();
    pairs.extend(diff.into_iter().map(|(i, j)| (i, j, false)));
    Rng::derive(seed, 2, 0).shuffle(&mut pairs);
    pairs
}

/// insightface's 10-fold verification (see [`verification`]) on pairs `(i, j, same)` of
/// rows of `emb` (image + mirror embeddings, not yet normalised). Pairs naming a row past
/// the embeddings are left out; fewer than 10 pairs are an error.
pub fn verify_pairs(emb: &[f32], dim: usize, pairs: &[(usize, usize, bool)]) -> anyhow::Result<Verification> {
    let rows = emb.len() / dim.max(1);
    let pairs: Vec<_> = pairs.iter().filter(|p| p.0 < rows && p.1 < rows).collect();
    let row = |i: usize| emb[i * dim..(i + 1) * dim].iter().map(|&v| f64::from(v));
    let gathered: Vec<f64> = pairs.iter().flat_map(|&&(i, j, _)| row(i).chain(row(j))).collect();
    let issame: Vec<bool> = pairs.iter().map(|p| p.2).collect();
    verification::evaluate(&gathered, dim, &issame)
}

/// The seed's Gap on a pair set: (diff_mean - same_mean) / diff_std of the pairs'
/// Euclidean distances, from their squared distances.
pub fn pair_gap(squared: &[f64], issame: &[bool]) -> Gap {
    let (mut same, mut diff) = (Moments::default(), Moments::default());
    for (&d, &s) in squared.iter().zip(issame) {
        if s {
            same.add(d.max(0.0).sqrt())
        } else {
            diff.add(d.max(0.0).sqrt())
        }
    }
    let (same_mean, diff_mean, diff_std) = (same.mean(), diff.mean(), diff.std());
    let value = if diff_std > 0.0 { (diff_mean - same_mean) / diff_std } else { f64::NAN };
    Gap { value, same_mean, diff_mean, diff_std, same_pairs: same.n, diff_pairs: diff.n, sampled: false }
}

fn normalised_rows(emb: &[f32], dim: usize) -> Vec<Vec<f32>> {
    emb.chunks_exact(dim.max(1))
        .map(|row| {
            let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
            row.iter().map(|&x| x * scale).collect()
        })
        .collect()
}

/// Euclidean distance; eight partial sums let the compiler vectorise it.
fn dist(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += (x[k] - y[k]) * (x[k] - y[k]);
        }
    }
    (f64::from(acc.iter().sum::<f32>() + tail)).max(0.0).sqrt()
}

/// Up to `n` distinct same-identity pairs (i < j): all of them shuffled when there are
/// few, else identities drawn uniformly and two of their images.
fn sample_same(labels: &[i64], known: &[usize], n: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for &i in known {
        groups.entry(labels[i]).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    let total: usize = groups.iter().map(|g| g.len() * (g.len() - 1) / 2).sum();
    let mut rng = Rng::derive(seed, 0, 0);
    if total <= 4 * n {
        let mut all: Vec<(usize, usize)> = groups
            .iter()
            .flat_map(|g| (0..g.len()).flat_map(move |a| (a + 1..g.len()).map(move |b| (g[a], g[b]))))
            .collect();
        rng.shuffle(&mut all);
        all.truncate(n);
        return all;
    }
    distinct_pairs(n, &mut rng, |rng| {
        let g = &groups[rng.below(groups.len())];
        Some((g[rng.below(g.len())], g[rng.below(g.len())]))
    })
}

/// Up to `n` distinct different-identity pairs (i < j), drawn uniformly.
fn sample_diff(labels: &[i64], known: &[usize], n: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = Rng::derive(seed, 1, 0);
    let m = known.len();
    let same_pairs: usize = {
        let mut sizes: BTreeMap<i64, usize> = BTreeMap::new();
        known.iter().for_each(|&i| *sizes.entry(labels[i]).or_default() += 1);
        sizes.values().map(|c| c * c.saturating_sub(1) / 2).sum()
    };
    let total = (m * m.saturating_sub(1) / 2).saturating_sub(same_pairs);
    if total <= 4 * n {
        let mut all: Vec<(usize, usize)> = (0..m)
            .flat_map(|a| (a + 1..m).map(move |b| (known[a], known[b])))
            .filter(|&(i, j)| labels[i] != labels[j])
            .collect();
        rng.shuffle(&mut all);
        all.truncate(n);
        return all;
    }
    distinct_pairs(n, &mut rng, |rng| {
        let (i, j) = (known[rng.below(m)], known[rng.below(m)]);
        (labels[i] != labels[j]).then_some((i, j))
    })
}

/// Draws until `n` distinct unordered pairs of different indices (bounded attempts; the
/// callers only use this when at least 4n valid pairs exist, so it finishes quickly).
fn distinct_pairs(
    n: usize,
    rng: &mut Rng,
    mut draw: impl FnMut(&mut Rng) -> Option<(usize, usize)>,
) -> Vec<(usize, usize)> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.saturating_mul(50).max(1000) {
        if out.len() == n {
            break;
        }
        let Some((i, j)) = draw(rng) else { continue };
        if i != j && seen.insert((i.min(j), i.max(j))) {
            out.push((i.min(j), i.max(j)));
        }
    }
    out
}

/// Welford's running mean and variance.
#[derive(Default)]
struct Moments {
    n: usize,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.mean
        }
    }

    /// Population standard deviation.
    fn std(&self) -> f64 {
        (self.m2 / self.n as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors at the given angles (radians), as 2-d embeddings.
    fn on_circle(angles: &[f64]) -> Vec<f32> {
        angles.iter().flat_map(|a| [a.cos() as f32, a.sin() as f32]).collect()
    }

    /// `classes` tight clusters around random unit directions in `dim` dimensions.
    fn clusters(classes: usize, per: usize, dim: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = Rng::new(seed);
        let centres: Vec<Vec<f32>> =
            (0..classes).map(|_| (0..dim).map(|_| rng.unit() as f32 - 0.5).collect()).collect();
        let mut emb = Vec::new();
        let mut labels = Vec::new();
        for (c, centre) in centres.iter().enumerate() {
            for _ in 0..per {
                emb.extend(centre.iter().map(|x| x + spread * (rng.unit() as f32 - 0.5)));
                labels.push(c as i64);
            }
        }
        (emb, labels)
    }

    #[test]
    fn gap_on_four_points_worked_by_hand() {
        // a = (1, 0), b = (0.6, 0.8) are class 0; c = (-1, 0), d = (-0.6, 0.8) class 1.
        // Same pairs ab, cd: both sqrt(0.4² + 0.8²) = sqrt(0.8).
        // Different pairs: ac = 2, ad = bc = sqrt(1.6² + 0.8²) = sqrt(3.2), bd = 1.2.
        let emb = [1.0, 0.0, 0.6, 0.8, -1.0, 0.0, -0.6, 0.8];
        // Scaling rows must not matter: the metric normalises them.
        let scaled: Vec<f32> = emb.iter().enumerate().map(|(i, x)| x * (1 + i / 2) as f32).collect();
        let g = gap(&scaled, 2, &[0, 0, 1, 1]);
        let diffs = [2.0, 3.2f64.sqrt(), 3.2f64.sqrt(), 1.2];
        let diff_mean = diffs.iter().sum::<f64>() / 4.0;
        let diff_std = (diffs.iter().map(|d| (d - diff_mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!((g.same_mean - 0.8f64.sqrt()).abs() < 1e-6, "{g:?}");
        assert!((g.diff_mean - diff_mean).abs() < 1e-6, "{g:?}");
        assert!((g.diff_std - diff_std).abs() < 1e-6, "{g:?}");
        assert!((g.value - (diff_mean - 0.8f64.sqrt()) / diff_std).abs() < 1e-5, "{g:?}");
        assert!((g.value - 2.6829).abs() < 1e-3);
        assert_eq!((g.same_pairs, g.diff_pairs, g.sampled), (2, 4, false));
        // Labelled the other way round (a with c, b with d) the same pairs are the far
        // ones (2 and 1.2) and the Gap turns negative.
        let swapped = gap(&emb, 2, &[0, 1, 0, 1]);
        assert!(swapped.value < 0.0, "{swapped:?}");
    }

    #[test]
    fn gap_ignores_unknown_labels_and_is_nan_without_pairs() {
        let emb = on_circle(&[0.0, 0.1, 3.0, 3.1, 1.5]);
        let with_unknown = gap(&emb, 2, &[0, 0, 1, 1, -1]);
        let without = gap(&emb[..8], 2, &[0, 0, 1, 1]);
        assert_eq!(with_unknown, without);
        assert!(gap(&emb[..4], 2, &[0, 0]).value.is_nan());
    }

    #[test]
    fn sampled_gap_estimates_the_full_one() {
        let (emb, labels) = clusters(20, 15, 16, 0.6, 1);
        let full = gap(&emb, 16, &labels);
        let sampled = gap_with(&emb, 16, &labels, 100, 3000, 9);
        assert!(!full.sampled && sampled.sampled);
        assert_eq!((sampled.same_pairs, sampled.diff_pairs), (2100, 3000));
        assert!((full.value - sampled.value).abs() < 0.05 * full.value.abs(), "{full:?} {sampled:?}");
    }

    #[test]
    fn pairs_are_balanced_distinct_valid_and_seeded() {
        let (_, labels) = clusters(30, 4, 2, 0.1, 2);
        let pairs = draw_pairs(&labels, 200, 5);
        assert_eq!(pairs.len(), 200);
        assert_eq!(pairs.iter().filter(|p| p.2).count(), 100);
        for &(i, j, same) in &pairs {
            assert!(i < j);
            assert_eq!(labels[i] == labels[j], same);
        }
        let distinct: HashSet<_> = pairs.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(distinct.len(), 200);
        assert_eq!(pairs, draw_pairs(&labels, 200, 5));
        assert_ne!(pairs, draw_pairs(&labels, 200, 6));
        // Shuffled: the first tenth (one fold) holds both kinds.
        assert!(pairs[..20].iter().any(|p| p.2) && pairs[..20].iter().any(|p| !p.2));
        // 30 classes of 4 allow only 30·6 = 180 same pairs: balance caps the total.
        let capped = draw_pairs(&labels, 1000, 5);
        assert_eq!(capped.len(), 360);
        // Unknown labels never appear.
        let mut masked = labels.clone();
        masked[..60].iter_mut().for_each(|l| *l = -1);
        assert!(draw_pairs(&masked, 100, 1).iter().all(|p| p.0 >= 60 && p.1 >= 60));
    }

    #[test]
    fn separable_embeddings_verify_perfectly() {
        let (emb, labels) = clusters(40, 5, 32, 0.05, 3);
        let pairs = draw_pairs(&labels, 600, 1);
        let v = verify_pairs(&emb, 32, &pairs).unwrap();
        assert_eq!((v.accuracy_mean, v.accuracy_std, v.fold_accuracy.len()), (1.0, 0.0, 10));
        assert!(v.fold_threshold.iter().all(|&t| t > 0.0 && t < 4.0));
        // Out-of-range pairs are dropped; fewer than 10 pairs cannot make 10 folds.
        let mut short = pairs[..9].to_vec();
        short.push((0, 10_000, false));
        assert!(verify_pairs(&emb, 32, &short).is_err());
    }

    #[test]
    fn random_embeddings_verify_at_chance() {
        let mut rng = Rng::new(4);
        let emb: Vec<f32> = (0..400 * 16).map(|_| rng.unit() as f32 - 0.5).collect();
        let labels: Vec<i64> = (0..400).map(|_| rng.below(50) as i64).collect();
        let pairs = draw_pairs(&labels, 2000, 1);
        let v = verify_pairs(&emb, 16, &pairs).unwrap();
        assert!((v.accuracy_mean - 0.5).abs() < 0.06, "{v:?}");
    }

    #[test]
    fn pair_gap_worked_by_hand() {
        // Same pairs at distances 1 and 3, different pairs at 4 and 6: (5 - 2) / 1 = 3.
        let g = pair_gap(&[1.0, 16.0, 9.0, 36.0], &[true, false, true, false]);
        assert_eq!((g.same_mean, g.diff_mean, g.diff_std, g.value), (2.0, 5.0, 1.0, 3.0));
        assert_eq!((g.same_pairs, g.diff_pairs), (2, 2));
        assert!(pair_gap(&[1.0], &[true]).value.is_nan());
    }
}
