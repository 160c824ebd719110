//! `trainer eval`: a run's checkpoint on validation sets, with the same metrics as
//! validation during training, printed as a table with one row per set; or on IJB-B/C.

use anyhow::Result;
use std::path::{Path, PathBuf};

use super::{Loaded, ModelArgs};
use crate::config::TrainConfig;
use crate::device::DeviceArg;
use crate::eval::validate::Validator;
use crate::eval::{ijb, pairs, table};
use crate::model::Head;
use trainer_data::metrics::ijb::Target;
use trainer_data::targets::SetSpec;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Validation sets: datasets (`[TASK=]DIR/NAME[@COLUMN]`, as for training) or
    /// insightface pair sets (`lfw.bin`, `cfp_fp.bin`, ...); default: the run's own.
    #[arg(long, num_args = 1.., value_name = "[TASK=]DIR/NAME[@COLUMN]|PAIRS.bin")]
    pub valid_sets: Vec<SetSpec>,
    /// Decode threads.
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(trainer_data::bounds::MAX_THREADS))]
    pub workers: Option<usize>,
    /// Same/different pairs drawn for verification.
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(1 << 26))]
    pub pairs: Option<usize>,
    /// IJB-B/IJB-C 1:1 verification on this folder (loose_crop/ and meta/, as insightface
    /// distributes it), computed as eval_ijbc.py does; alone unless --valid-sets is given too.
    #[arg(long, value_name = "DIR")]
    pub ijb: Option<PathBuf>,
    /// Which benchmark the --ijb folder holds (its meta files' prefix); default: the one whose
    /// pair file is there (IJBC when both are).
    #[arg(long, value_enum, requires = "ijb")]
    pub target: Option<Target>,
    /// With --ijb: write OUT/ijbc.npy (one float64 score per pair, in the pair file's order)
    /// and OUT/ijbc_roc.png (ijbb_… for IJB-B).
    #[arg(long, value_name = "OUT", requires = "ijb")]
    pub save_scores: Option<PathBuf>,
    /// Images per forward pass for --ijb (default: the run's batch size).
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(trainer_data::bounds::MAX_BATCH))]
    pub batch_size: Option<usize>,
}

/// Decoders assumed when choosing libtorch's threads before the run's own count is read.
const DEFAULT_DECODERS: usize = 1;

/// insightface's fold count for verification accuracy.
const FOLDS: usize = 10;

pub fn run(args: EvalArgs) -> Result<()> {
    let loaded = args.model.load(&args.device, args.workers.unwrap_or(DEFAULT_DECODERS))?;
    if let Some(dir) = &args.ijb {
        loaded.require_fr("embed with")?;
        if !args.valid_sets.is_empty() {
            run_sets(&args, &loaded)?;
        }
        return run_ijb(&args, &loaded, dir);
    }
    run_sets(&args, &loaded)
}

/// `--ijb`: the table, the JSON line, and with --save-scores the scores and the ROC.
fn run_ijb(args: &EvalArgs, model: &Loaded, dir: &Path) -> Result<()> {
    let opts = ijb::IjbOptions {
        target: args.target.map_or_else(|| Target::detect(dir), Ok)?,
        size: model.cfg.model.size,
        batch: args.batch_size.unwrap_or(model.cfg.data.batch_size).max(1),
        workers: args.workers.unwrap_or(model.cfg.data.workers).max(1),
        progress: true,
    };
    let outcome = ijb::evaluate(&model.net, dir, &opts, model.device)?;
    let mut out = ijb::render(&outcome, model.identity());
    if let Some(save) = &args.save_scores {
        let [scores, png] = trainer_data::metrics::ijb::output::save(&outcome, save)?;
        out += &format!("wrote {} and {}\n", scores.display(), png.display());
    }
    trainer_data::term::print(&out)
}

/// The validation sets (the run's own or --valid-sets), one table row each.
fn run_sets(args: &EvalArgs, model: &Loaded) -> Result<()> {
    let (net, device) = (&model.net, model.device);
    let mut cfg = model.cfg.clone();
    if !args.valid_sets.is_empty() {
        cfg.valid.valid_sets = args.valid_sets.clone();
    }
    if args.ijb.is_some() {
        cfg.valid.valid_ijb = None;
    }
    anyhow::ensure!(
        !cfg.valid.valid_sets.is_empty() || cfg.valid.valid_ijb.is_some(),
        "give --valid-sets: the run has none"
    );
    if let Some(w) = args.workers {
        cfg.data.workers = w;
    }
    if let Some(p) = args.pairs {
        cfg.valid.valid_pairs = p;
    }
    if cfg.heads().contains(&Head::Fr) {
        check_pairs(&cfg)?;
    }
    let metrics = Validator::open(&cfg)?.with_progress().run(net, &cfg, device)?;
    let mut out = String::new();
    for r in &metrics.reports {
        out += &format!("{r}\n");
    }
    out += &table::render(&metrics.rows);
    let mut line = model.identity();
    for (k, v) in &metrics.values {
        line[k] = serde_json::json!(v);
    }
    out += &format!("{line}\n");
    trainer_data::term::print(&out)
}

/// Refuses a packed FR validation set that cannot give every verification fold a pair (it
/// would print NaN).
fn check_pairs(cfg: &TrainConfig) -> Result<()> {
    use trainer_data::pipeline::{RankView, ViewOptions};
    let fr_sets = cfg
        .valid
        .valid_sets
        .iter()
        .filter(|s| s.serves(&cfg.heads()).contains(&Head::Fr) && !pairs::is_pair_set(&s.path));
    for set in fr_sets {
        let view = RankView::open(std::slice::from_ref(set), &ViewOptions::whole(&[Head::Fr]))?;
        let labels: Vec<i64> = view.labels().iter().map(|&l| l as i64).collect();
        let pairs = trainer_data::metrics::draw_pairs(&labels, cfg.valid.valid_pairs, cfg.run.seed).len();
        anyhow::ensure!(
            pairs >= FOLDS,
            "{set} gives {pairs} verification pairs ({} records), too few for {FOLDS}-fold verification: it needs identities with at least 2 images each, and at least {FOLDS} pairs",
            view.len()
        );
    }
    Ok(())
}
