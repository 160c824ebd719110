//! `trainer bench ijb DIR --features FILE.npy`: IJB-B/IJB-C's template pooling, pair scoring
//! and TAR table on given per-image features (no images, no model), timed per stage.
//! benches/ijb_speed.sh puts it beside eval_ijbc.py's own NumPy/scikit-learn code.

use anyhow::{ensure, Result};
use std::path::PathBuf;
use std::time::Instant;

use crate::interop::npy::read_f32_matrix;
use crate::metrics::ijb::{self, Meta, Target};

#[derive(clap::Args, Debug)]
pub struct IjbBenchArgs {
    /// The IJB folder (its meta/ files are read; loose_crop/ is not).
    pub dir: PathBuf,
    /// Per-image features: a float32 (images, dim) .npy, one row per line of the landmark
    /// file, each the embedding of the image plus that of its mirror, unnormalised.
    #[arg(long, value_name = "FILE.npy")]
    pub features: PathBuf,
    /// Which benchmark's files to read (default: the one whose pair file is there).
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// Write OUT/<target>.npy (the scores) and OUT/<target>_roc.png.
    #[arg(long, value_name = "OUT")]
    pub save_scores: Option<PathBuf>,
}

/// Runs the benchmark; returns the table and a JSON line with the keys and stage times.
pub fn run(args: &IjbBenchArgs) -> Result<String> {
    let t0 = Instant::now();
    let target = args.target.map_or_else(|| Target::detect(&args.dir), Ok)?;
    let meta = Meta::read(&args.dir, target)?;
    let t1 = Instant::now();
    let (rows, dim, feats) = read_f32_matrix(&args.features)?;
    ensure!(
        rows == meta.images.len(),
        "{} has {rows} rows but {} lists {} images",
        args.features.display(),
        target.landmarks_file(&args.dir).display(),
        meta.images.len()
    );
    let t2 = Instant::now();
    let outcome = ijb::evaluate(&meta, feats, dim)?;
    let evaluated = t2.elapsed().as_secs_f64();
    if let Some(out) = &args.save_scores {
        ijb::output::save(&outcome, out)?;
    }
    let mut line = serde_json::json!({
        "meta_s": (t1 - t0).as_secs_f64(),
        "features_s": (t2 - t1).as_secs_f64(),
        "evaluate_s": evaluated,
        "total_s": t0.elapsed().as_secs_f64(),
    });
    for (stage, d) in outcome.timings {
        line[format!("{stage}_s")] = serde_json::json!(d.as_secs_f64());
    }
    for (k, v) in outcome.values() {
        line[k] = serde_json::json!(v);
    }
    Ok(format!("{}{line}\n", outcome.table(target.prefix())))
}
