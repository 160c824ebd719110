//! IJB-B/IJB-C 1:1 verification of a model, as insightface's eval_ijbc.py computes it: every
//! image aligned and embedded with its mirror (`trainer_data::pipeline::ijb`), the two
//! embeddings added unnormalised, then pooled, scored and read by
//! `trainer_data::metrics::ijb`. Used by `trainer eval --ijb` and `--valid-ijb`.

use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Tensor};

use super::metrics::Metrics;
use super::pairs;
use super::table::Row;
use crate::config::TrainConfig;
use crate::model::Net;
use trainer_data::metrics::ijb::{self, Meta, Outcome, Target, FAR_NAMES};
use trainer_data::pipeline::ijb::{jobs, IjbLoader};

/// How to run the benchmark.
#[derive(Clone, Debug)]
pub struct IjbOptions {
    pub target: Target,
    pub size: usize,
    pub batch: usize,
    pub workers: usize,
    /// A progress bar on a terminal (`trainer eval`; training has its own).
    pub progress: bool,
}

/// Reads the folder, embeds every image and evaluates.
pub fn evaluate(net: &Net, dir: &Path, opts: &IjbOptions, device: Device) -> Result<Outcome> {
    let meta = Meta::read(dir, opts.target)?;
    let (feats, dim) = embed(net, dir, &meta, opts, device)?;
    ijb::evaluate(&meta, feats, dim)
}

/// Per image, embedding(image) + embedding(mirror), f32, row-major.
pub fn embed(net: &Net, dir: &Path, meta: &Meta, opts: &IjbOptions, device: Device) -> Result<(Vec<f32>, usize)> {
    let jobs = jobs(dir, meta, opts.target)?;
    let list = opts.target.landmarks_file(dir);
    let bar = if opts.progress {
        trainer_data::term::progress_bar(jobs.len() as u64, "IJB images [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut loader = IjbLoader::start(jobs, list, opts.size as u32, opts.batch, opts.workers)?;
    let (mut feats, mut dim) = (Vec::new(), 0);
    while let Some(b) = loader.next_batch()? {
        let x = crate::model::input::pixels(&b.pixels, b.n, opts.size, &[], device)?;
        let sum = tch::no_grad(|| -> Result<Tensor> { Ok(net.embed_batch(&x)? + net.embed_batch(&x.flip([3]))?) })
            .with_context(|| format!("embedding images {}..{}", b.first + 1, b.first + b.n))?;
        dim = sum.size()[1] as usize;
        feats.extend(pairs::to_f32(&sum)?);
        bar.inc(b.n as u64);
    }
    bar.finish_and_clear();
    Ok((feats, dim))
}

/// The printed result: eval_ijbc.py's table, then the keys as one JSON line (merged into
/// `line`, which may already hold the checkpoint and step).
pub fn render(outcome: &Outcome, mut line: serde_json::Value) -> String {
    for (k, v) in outcome.values() {
        line[k] = serde_json::json!(v);
    }
    format!("{}{line}\n", outcome.table(outcome.target.prefix()))
}

/// `--valid-ijb`: the folder's meta data, read once, evaluated at each validation.
pub struct IjbSet {
    dir: std::path::PathBuf,
    meta: Meta,
}

impl IjbSet {
    pub fn open(dir: &Path) -> Result<IjbSet> {
        let meta = Meta::read(dir, Target::detect(dir)?).with_context(|| format!("--valid-ijb {}", dir.display()))?;
        Ok(IjbSet { dir: dir.to_path_buf(), meta })
    }

    pub fn target(&self) -> Target {
        self.meta.target
    }

    /// Embeds, scores and adds the keys, a report line and a table row to `m`.
    pub fn record(&self, net: &Net, cfg: &TrainConfig, device: Device, progress: bool, m: &mut Metrics) -> Result<()> {
        let opts = IjbOptions {
            target: self.meta.target,
            size: cfg.model.size,
            batch: cfg.data.batch_size.max(1),
            workers: cfg.data.workers.max(1),
            progress,
        };
        let (feats, dim) = embed(net, &self.dir, &self.meta, &opts, device)?;
        let outcome = ijb::evaluate(&self.meta, feats, dim)?;
        let name = outcome.target.prefix();
        let tar: Vec<String> =
            FAR_NAMES.iter().zip(outcome.roc.tar).map(|(f, t)| format!("{f} {}", ijb::percent(t))).collect();
        m.reports.push(format!(
            "{name}: TAR (%) at FAR {}, AUC {:.4}, {} pairs",
            tar.join(", "),
            outcome.roc.auc,
            outcome.scores.len()
        ));
        m.rows.push(
            Row::new(name)
                .cell("pairs", outcome.scores.len())
                .cell("TAR@FAR=1e-4", format!("{:.4}", outcome.roc.tar[2])),
        );
        m.values.extend(outcome.values());
        Ok(())
    }
}
