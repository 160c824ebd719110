//! IJB-B / IJB-C 1:1 verification as insightface's `eval_ijbc.py` computes it, from per-image
//! features onwards (the images, alignment and model are `trainer-torch`'s side):
//! `meta` reads the folder's three files, `pool` forms the templates, `score` scores every
//! pair, `roc` reads TAR at the table's FARs and the AUC.

mod lines;
pub mod meta;
pub mod output;
pub mod pool;
pub mod roc;
pub mod score;
#[cfg(test)]
mod tests;

pub use meta::{ImageLine, Meta, Pairs, Target};
pub use roc::{Roc, FARS, FAR_NAMES, FAR_TITLES};

use anyhow::{ensure, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A benchmark's result: every pair's score and the ROC read from them.
pub struct Outcome {
    pub target: Target,
    pub scores: Vec<f64>,
    pub roc: Roc,
    pub templates: usize,
    pub images: usize,
    /// Wall time of pooling, scoring and the ROC.
    pub timings: [(&'static str, Duration); 3],
}

/// Pools, scores and reads the ROC. `feats` holds, per image of `meta`, its embedding plus
/// that of its mirror, unnormalised (`dim` values); each is scaled by the image's faceness
/// score here, as eval_ijbc.py does.
pub fn evaluate(meta: &Meta, mut feats: Vec<f32>, dim: usize) -> Result<Outcome> {
    ensure!(
        dim > 0 && feats.len() == meta.images.len() * dim,
        "{} feature values for {} images of dimension {dim}",
        feats.len(),
        meta.images.len()
    );
    let t0 = Instant::now();
    for (row, img) in feats.chunks_mut(dim).zip(&meta.images) {
        row.iter_mut().for_each(|x| *x *= img.faceness);
    }
    let templates = pool::pool(&feats, dim, &meta.template_of, &meta.media_of, meta.template_ids.len())?;
    drop(feats);
    let t1 = Instant::now();
    let scores = score::scores(&templates, &meta.pairs);
    let t2 = Instant::now();
    let roc = roc::roc(&scores, &meta.pairs.genuine)?;
    let timings = [("pool", t1 - t0), ("score", t2 - t1), ("roc", t2.elapsed())];
    Ok(Outcome {
        target: meta.target,
        scores,
        roc,
        templates: meta.template_ids.len(),
        images: meta.images.len(),
        timings,
    })
}

impl Outcome {
    /// Log keys: `<prefix>_tar_far_1e-6` … `_1e-1` (fractions), `_auc`, `_pairs`,
    /// `_templates`, `_images`.
    pub fn values(&self) -> BTreeMap<String, f64> {
        let p = self.target.prefix();
        let mut v: BTreeMap<String, f64> =
            FAR_NAMES.iter().zip(self.roc.tar).map(|(n, t)| (format!("{p}_tar_far_{n}"), t)).collect();
        v.insert(format!("{p}_auc"), self.roc.auc);
        v.insert(format!("{p}_pairs"), self.scores.len() as f64);
        v.insert(format!("{p}_templates"), self.templates as f64);
        v.insert(format!("{p}_images"), self.images as f64);
        v
    }

    /// eval_ijbc.py's table (PrettyTable's layout): TAR in percent, two decimals, per FAR.
    pub fn table(&self, method: &str) -> String {
        table(method, &self.roc.tar)
    }
}

/// The table for one method's TARs.
pub fn table(method: &str, tar: &[f64; 6]) -> String {
    let mut cells: Vec<Vec<String>> =
        vec![std::iter::once("Methods".to_string()).chain(FAR_TITLES.iter().map(|t| t.to_string())).collect()];
    cells.push(std::iter::once(method.to_string()).chain(tar.iter().map(|t| percent(*t))).collect());
    let widths: Vec<usize> = (0..7).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |row: &[String]| -> String {
        row.iter().zip(&widths).map(|(c, &w)| format!("| {} ", centre(c, w))).collect::<String>() + "|\n"
    };
    format!("{rule}{}{rule}{}{rule}", line(&cells[0]), line(&cells[1]))
}

/// `'%.2f' % (tpr * 100)`: Python rounds the exact binary value half to even, as Rust does.
pub fn percent(tpr: f64) -> String {
    format!("{:.2}", tpr * 100.0)
}

/// PrettyTable's centring: an odd space goes right of odd-length text, left of even-length.
fn centre(s: &str, w: usize) -> String {
    let len = s.chars().count();
    let pad = w.saturating_sub(len);
    let left = if !pad.is_multiple_of(2) && len.is_multiple_of(2) { pad / 2 + 1 } else { pad / 2 };
    format!("{}{s}{}", " ".repeat(left), " ".repeat(pad - left))
}
