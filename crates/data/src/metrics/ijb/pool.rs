//! Image features → template features, as eval_ijbc.py's `image2template_feature`: within a
//! template, the images of one media averaged (one image: itself), the medias summed, the sum
//! L2-normalised (a zero sum stays zero, as `sklearn.preprocessing.normalize` leaves it).
//!
//! Done on flat arrays: one sort of the image indices by (template, media) and a parallel
//! pass over the templates, in f64, stored as f32 rows for the scoring pass.

use anyhow::{ensure, Result};
use rayon::prelude::*;

/// L2-normalised template features, row-major, one row per template index.
pub struct Templates {
    pub feats: Vec<f32>,
    pub dim: usize,
}

impl Templates {
    pub fn row(&self, t: u32) -> &[f32] {
        &self.feats[t as usize * self.dim..(t as usize + 1) * self.dim]
    }

    pub fn len(&self) -> usize {
        self.feats.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.feats.is_empty()
    }
}

/// Pools `feats` (one row of `dim` per image, already scaled by faceness) into `templates`
/// rows, given each image's template index and media id.
pub fn pool(feats: &[f32], dim: usize, template_of: &[u32], media_of: &[i64], templates: usize) -> Result<Templates> {
    let n = template_of.len();
    ensure!(dim > 0 && feats.len() == n * dim, "{} feature values for {n} images of dimension {dim}", feats.len());
    ensure!(media_of.len() == n, "{} media ids for {n} images", media_of.len());
    ensure!(template_of.iter().all(|&t| (t as usize) < templates), "a template index is not below {templates}");
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.par_sort_unstable_by_key(|&i| (template_of[i as usize], media_of[i as usize], i));
    let starts = group_starts(&order, |i| template_of[i as usize], templates);
    let mut out = vec![0f32; templates * dim];
    out.par_chunks_mut(dim).enumerate().for_each_init(
        || (vec![0f64; dim], vec![0f64; dim]),
        |(sum, media), (t, row)| {
            let members = &order[starts[t]..starts[t + 1]];
            pool_template(feats, dim, members, media_of, sum, media);
            normalise_into(sum, row);
        },
    );
    Ok(Templates { feats: out, dim })
}

/// `starts[t]..starts[t+1]` is template t's run in `order` (empty for a template no image has).
fn group_starts(order: &[u32], key: impl Fn(u32) -> u32, groups: usize) -> Vec<usize> {
    let mut starts = vec![0usize; groups + 1];
    for &i in order {
        starts[key(i) as usize + 1] += 1;
    }
    for t in 0..groups {
        starts[t + 1] += starts[t];
    }
    starts
}

/// Sum over the template's medias of each media's mean image feature, into `sum`.
fn pool_template(feats: &[f32], dim: usize, members: &[u32], media_of: &[i64], sum: &mut [f64], media: &mut [f64]) {
    sum.fill(0.0);
    let mut at = 0;
    while at < members.len() {
        let id = media_of[members[at] as usize];
        let end = at + members[at..].iter().take_while(|&&i| media_of[i as usize] == id).count();
        media.fill(0.0);
        for &i in &members[at..end] {
            for (m, &x) in media.iter_mut().zip(&feats[i as usize * dim..(i as usize + 1) * dim]) {
                *m += f64::from(x);
            }
        }
        let count = (end - at) as f64;
        for (s, m) in sum.iter_mut().zip(media.iter()) {
            *s += m / count;
        }
        at = end;
    }
}

fn normalise_into(sum: &[f64], row: &mut [f32]) {
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    for (r, s) in row.iter_mut().zip(sum) {
        *r = (s * scale) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medias_are_averaged_then_summed_then_normalised() {
        // Template 0: media 5 has images [1,0] and [3,0] (mean [2,0]); media 2 has [0,4].
        // Sum [2,4], normalised [1,2]/sqrt(5). Template 1: one image [0,-3] → [0,-1].
        let feats = [1.0, 0.0, 0.0, -3.0, 3.0, 0.0, 0.0, 4.0];
        let t = pool(&feats, 2, &[0, 1, 0, 0], &[5, 9, 5, 2], 3).unwrap();
        let r = 5f32.sqrt();
        assert!((t.row(0)[0] - 1.0 / r).abs() < 1e-7 && (t.row(0)[1] - 2.0 / r).abs() < 1e-7);
        assert_eq!(t.row(1), [0.0, -1.0]);
        assert_eq!(t.row(2), [0.0, 0.0], "a template without images, or with a zero sum, stays zero");
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        assert!(pool(&[1.0; 5], 2, &[0, 0], &[1, 1], 1).is_err());
        assert!(pool(&[1.0; 4], 2, &[0, 0], &[1], 1).is_err());
    }
}
