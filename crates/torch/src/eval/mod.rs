//! `trainer eval`: a run's checkpoint on validation sets, with the same metrics as
//! validation during training, printed as a table with one row per set; `embed` writes a
//! model's embeddings, `pairs` scores insightface's verification pair sets.

pub mod embed;
pub mod pairs;
pub mod table;
pub mod validate;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Device;

use crate::eval::validate::Validator;
use crate::model::Net;
use crate::train::checkpoint;
use crate::train::config::TrainConfig;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run directory (Model/<run-id>).
    pub run: PathBuf,
    /// Validation sets: datasets (`DIR/NAME`) or insightface pair sets (`lfw.bin`,
    /// `cfp_fp.bin`, ...); default: the run's own valid sets.
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

/// A run's model as a checkpoint left it, ready for inference.
pub struct Loaded {
    pub net: Net,
    /// Owns the weights `net` uses.
    pub vs: VarStore,
    pub cfg: TrainConfig,
    pub checkpoint: PathBuf,
    pub step: u64,
    pub device: Device,
}

/// Loads `checkpoint` (best, latest or a directory) of the run in `run` onto `device`.
pub fn load(run: &Path, checkpoint: &str, device: &str) -> Result<Loaded> {
    let ckpt = match checkpoint {
        "latest" => checkpoint::latest(run)?,
        "best" if run.join("best").exists() => run.join("best"),
        "best" => checkpoint::latest(run).context("no best/ checkpoint (the run had no validation set)")?,
        dir => PathBuf::from(dir),
    };
    let saved = checkpoint::load_state(&ckpt)?.state;
    let cfg = saved.config.clone();
    let device = crate::device::resolve(device, &crate::dist::launch_info())?;
    let mut vs = VarStore::new(device);
    let net = Net::new(&vs.root(), cfg.arch, &cfg.heads, saved.num_classes, cfg.task.into());
    let model = ckpt.join(checkpoint::MODEL_FILE);
    vs.load(&model).with_context(|| format!("loading {}", model.display()))?;
    Ok(Loaded { net, vs, cfg, checkpoint: ckpt, step: saved.step, device })
}

pub fn run(args: EvalArgs) -> Result<()> {
    let Loaded { net, cfg, checkpoint: ckpt, step, device, .. } = load(&args.run, &args.checkpoint, &args.device)?;
    let mut cfg = cfg;
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
    let metrics = Validator::open(&cfg)?.run(&net, &cfg, device)?;
    for r in &metrics.reports {
        println!("{r}");
    }
    print!("{}", table::render(&metrics.rows));
    let mut line = serde_json::json!({"checkpoint": ckpt, "step": step});
    for (k, v) in &metrics.values {
        line[k] = serde_json::json!(v);
    }
    println!("{line}");
    Ok(())
}
