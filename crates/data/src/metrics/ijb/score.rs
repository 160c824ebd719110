//! Pair scores: the dot product of the two L2-normalised templates, in the pair file's order
//! (eval_ijbc.py's `verification`), over all pairs in parallel chunks.
//!
//! IJB-C's 15.6 M pairs touch 23 k template rows (47 MB) in no useful order, so taken as they
//! come nearly every row is a cache miss. The pairs are first bucketed (a counting sort) by
//! which tile of templates each side falls in, so that each stretch of work reads two tiles
//! that stay in cache; the scores are then put back in the pair file's order.

use rayon::prelude::*;

use super::meta::Pairs;
use super::pool::Templates;

/// Pairs per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;

/// Bytes of template rows per tile: two tiles sit in a core's L2 with room to spare.
const TILE_BYTES: usize = 256 << 10;

/// One f64 score per pair.
pub fn scores(templates: &Templates, pairs: &Pairs) -> Vec<f64> {
    let order = tiled_order(templates, pairs);
    let mut in_order = vec![0f64; pairs.len()];
    in_order.par_chunks_mut(CHUNK).zip(order.par_chunks(CHUNK)).for_each(|(out, idx)| {
        for (s, &i) in out.iter_mut().zip(idx) {
            *s = dot(templates.row(pairs.first[i as usize]), templates.row(pairs.second[i as usize]));
        }
    });
    let mut out = vec![0f64; pairs.len()];
    for (&i, &s) in order.iter().zip(&in_order) {
        out[i as usize] = s;
    }
    out
}

/// Pair indices grouped by (tile of the first template, tile of the second).
fn tiled_order(templates: &Templates, pairs: &Pairs) -> Vec<u32> {
    let per_tile = (TILE_BYTES / (4 * templates.dim.max(1))).max(1) as u32;
    let tiles = (templates.len() as u32).div_ceil(per_tile).max(1) as usize;
    let bucket = |i: usize| (pairs.first[i] / per_tile) as usize * tiles + (pairs.second[i] / per_tile) as usize;
    let mut starts = vec![0usize; tiles * tiles + 1];
    for i in 0..pairs.len() {
        starts[bucket(i) + 1] += 1;
    }
    for b in 0..tiles * tiles {
        starts[b + 1] += starts[b];
    }
    let mut order = vec![0u32; pairs.len()];
    for i in 0..pairs.len() {
        let b = bucket(i);
        order[starts[b]] = i as u32;
        starts[b] += 1;
    }
    order
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
