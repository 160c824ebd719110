//! Pair scores: the dot product of the two L2-normalised templates, in the pair file's order
//! (eval_ijbc.py's `verification`), over all pairs in parallel chunks.

use rayon::prelude::*;

use super::meta::Pairs;
use super::pool::Templates;

/// Pairs per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;

/// One f64 score per pair.
pub fn scores(templates: &Templates, pairs: &Pairs) -> Vec<f64> {
    let mut out = vec![0f64; pairs.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let base = c * CHUNK;
        for (k, s) in chunk.iter_mut().enumerate() {
            let i = base + k;
            *s = dot(templates.row(pairs.first[i]), templates.row(pairs.second[i]));
        }
    });
    out
}

/// Lanes summed separately so the compiler keeps them in vector registers.
const LANES: usize = 16;

/// Dot product of two equal-length rows, f32 products in `LANES` partial sums.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_dot_products_in_pair_order() {
        let dim = 37;
        let feats: Vec<f32> = (0..3 * dim).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5).collect();
        let t = Templates { feats, dim };
        let pairs = Pairs { first: vec![0, 2, 1], second: vec![1, 2, 0], genuine: vec![true, false, true] };
        let s = scores(&t, &pairs);
        for (k, (&a, &b)) in pairs.first.iter().zip(&pairs.second).enumerate() {
            let exact: f64 = t.row(a).iter().zip(t.row(b)).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((s[k] - exact).abs() < 1e-6, "pair {k}: {} vs {exact}", s[k]);
        }
        assert_eq!(s[0], s[2]);
    }
}
