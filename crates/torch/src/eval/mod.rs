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
    /// Validation datasets (`DIR/NAME`); default: the run's own valid sets.
    #[arg(long, num_args = 1..)]
    pub valid_sets: Vec<PathBuf>,
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

pub fn run(args: EvalArgs) -> Result<()> {
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
    let device = crate::device::resolve(&args.device, &crate::dist::launch_info())?;
    let mut vs = VarStore::new(device);
    let net = Net::new(&vs.root(), cfg.arch, &cfg.heads, saved.num_classes, cfg.task.into());
    let model = ckpt.join(checkpoint::MODEL_FILE);
    vs.load(&model).with_context(|| format!("loading {}", model.display()))?;
    let metrics = Validator::open(&cfg)?.with_progress().run(&net, &cfg, device)?;
    for r in &metrics.reports {
        println!("{r}");
    }
    let mut line = serde_json::json!({"checkpoint": ckpt, "step": saved.step});
    for (k, v) in &metrics.values {
        line[k] = serde_json::json!(v);
    }
    println!("{line}");
    Ok(())
}
