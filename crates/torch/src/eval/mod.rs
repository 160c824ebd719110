//! `trainer eval`: a run's checkpoint on validation sets, with the same metrics as
//! validation during training.

pub mod validate;

use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::nn::VarStore;

use crate::model::Net;
use crate::eval::validate::Validator;
use crate::train::checkpoint;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run directory (Model/<run-id>).
    pub run: PathBuf,
    /// Validation datasets (`[TASK=]DIR/NAME[@COLUMN]`, as for training); default: the
    /// run's own.
    #[arg(long, num_args = 1.., value_name = "[TASK=]DIR/NAME[@COLUMN]")]
    pub valid_sets: Vec<trainer_data::targets::SetSpec>,
    /// best, latest, or a checkpoint directory.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Decode threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Same/different pairs drawn for verification.
    #[arg(long)]
    pub pairs: Option<usize>,
}

/// insightface's fold count for verification accuracy.
const FOLDS: usize = 10;

pub fn run(args: EvalArgs) -> Result<()> {
    anyhow::ensure!(args.run.is_dir(), "run folder {} does not exist (give Model/<run-id>)", args.run.display());
    let ckpt = match args.checkpoint.as_str() {
        "latest" => checkpoint::latest(&args.run)?,
        "best" if args.run.join("best").exists() => args.run.join("best"),
        "best" => checkpoint::latest(&args.run).context("no best/ checkpoint (the run had no validation set)")?,
        dir => PathBuf::from(dir),
    };
    let saved = checkpoint::load_state(&ckpt)?.state;
    let mut cfg = saved.config.clone();
    if !args.valid_sets.is_empty() {
        cfg.valid_sets = args.valid_sets.clone();
    }
    anyhow::ensure!(!cfg.valid_sets.is_empty(), "give --valid-sets: the run has none");
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    if let Some(p) = args.pairs {
        cfg.valid_pairs = p;
    }
    if crate::model::Tasks::from(cfg.task).fr {
        check_pairs(&cfg)?;
    }
    let device = crate::device::resolve(&args.device, &crate::dist::launch_info())?;
    let mut vs = VarStore::new(device);
    let net = Net::new(&vs.root(), cfg.arch, &cfg.heads, saved.num_classes, cfg.task.into());
    let model = ckpt.join(checkpoint::MODEL_FILE);
    vs.load(&model).with_context(|| format!("loading {}", model.display()))?;
    let metrics = Validator::open(&cfg)?.run(&net, &cfg, device)?;
    for r in &metrics.reports {
        trainer_data::term::print(&format!("{r}\n"))?;
    }
    let mut line = serde_json::json!({"checkpoint": ckpt, "step": saved.step});
    for (k, v) in &metrics.values {
        line[k] = serde_json::json!(v);
    }
    trainer_data::term::print(&format!("{line}\n"))
}

/// Refuses an FR validation set that cannot give every verification fold a pair (it would
/// print NaN).
fn check_pairs(cfg: &crate::train::config::TrainConfig) -> Result<()> {
    use trainer_data::pipeline::{RankView, ViewOptions};
    for set in cfg.valid_sets.iter().filter(|s| s.serves(&cfg.heads()).contains(&crate::model::Head::Fr)) {
        let view = RankView::open(std::slice::from_ref(set), &ViewOptions::whole(&[crate::model::Head::Fr]))?;
        let labels: Vec<i64> = view.labels().iter().map(|&l| l as i64).collect();
        let pairs = trainer_data::metrics::draw_pairs(&labels, cfg.valid_pairs, cfg.seed).len();
        anyhow::ensure!(
            pairs >= FOLDS,
            "{set} gives {pairs} verification pairs ({} records), too few for {FOLDS}-fold verification: it needs identities with at least 2 images each, and at least {FOLDS} pairs",
            view.len()
        );
    }
    Ok(())
}
