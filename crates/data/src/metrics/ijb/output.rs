//! What a benchmark run leaves: `OUT/<prefix>.npy` (one float64 score per pair, in the pair
//! file's order, as eval_ijbc.py saves it) and `OUT/<prefix>_roc.png`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use super::{Outcome, FARS};
use crate::interop::npy;
use crate::watch::plot::plot_roc;

/// Writes the scores and the ROC picture into `dir` (created if needed); returns their paths.
pub fn save(outcome: &Outcome, dir: &Path) -> Result<[PathBuf; 2]> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let prefix = outcome.target.prefix();
    let scores = dir.join(format!("{prefix}.npy"));
    npy::write_vector(&scores, &outcome.scores)?;
    let png = dir.join(format!("{prefix}_roc.png"));
    let marks: Vec<(f64, f64)> = outcome.roc.far.iter().copied().zip(outcome.roc.tar).collect();
    let title = format!(
        "{} 1:1 verification: {} pairs, TAR {:.2}% at FAR {:.0e}, AUC {:.4}",
        prefix.to_uppercase(),
        outcome.scores.len(),
        outcome.roc.tar[2] * 100.0,
        FARS[2],
        outcome.roc.auc
    );
    plot_roc(&outcome.roc.curve, &marks, &title, &png).with_context(|| format!("writing {}", png.display()))?;
    Ok([scores, png])
}
