//! Every training setting, defined once: each field of `TrainConfig` (and of the heads'
//! `HeadConfig`, flattened in) carries its flag, its help and its one default in clap's
//! attributes, and the same field is its recipe key and its `config.json` key through
//! serde. Precedence, as torchtitan's job config: flags typed on the command line (clap's
//! value source tells which) over the recipe (`--config training/x.toml`) over the
//! defaults; on `--resume`, over the run's saved `config.json` instead of the defaults.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use super::schedule::Schedule;
pub use crate::model::Task;
use crate::model::{Arch, Head, HeadConfig, Tasks};
use crate::optim::OptimizerChoice;
use trainer_data::bounds;
use trainer_data::targets::{Column, SetSpec};

/// Largest learning rate accepted (anything above is a typo).
const MAX_LR: f64 = 1e6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerChoice {
    /// Every record once per epoch, shuffled.
    Uniform,
    /// P identities × K images per batch (`--pk`); the batch size becomes P×K.
    Pk,
}

#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Task: FR (ArcFace), Gender, Age, or Multi (shared backbone, all three heads).
    #[arg(value_enum, default_value_t = Task::Fr)]
    pub task: Task,
    /// Training datasets: `DIR/NAME` (all its shards, or a seed-format NAME.bin/.idx), for
    /// every task of the run; or per task, `fr=DIR/NAME gender=DIR/NAME age=DIR/NAME`;
    /// `...@label|gender|age` names the column that holds a Gender or Age class.
    #[arg(long, num_args = 1.., value_name = "[TASK=]DIR/NAME[@COLUMN]")]
    pub train_sets: Vec<SetSpec>,
    /// Validation datasets, given as --train-sets are.
    #[arg(long, num_args = 1.., value_name = "[TASK=]DIR/NAME[@COLUMN]")]
    pub valid_sets: Vec<SetSpec>,
    /// The column Gender and Age datasets read their class from, unless a dataset names
    /// its own (default: the task's own column where a dataset has it filled in, else —
    /// for a dataset that serves only that task, like the seed's Gender/Age bins — label).
    #[arg(long, value_enum)]
    pub target_column: Option<Column>,
    /// Backbone.
    #[arg(long, value_enum, default_value_t = Arch::Resnet50)]
    pub arch: Arch,
    /// Square input size in pixels (the seed used 224).
    #[arg(long, default_value_t = 112, value_parser = bounds::int::<usize>(16, bounds::MAX_SIDE))]
    pub size: usize,
    /// Images per rank per step (per task, when tasks have their own datasets).
    #[arg(long, default_value_t = 50, value_parser = bounds::count::<usize>(bounds::MAX_BATCH))]
    pub batch_size: usize,
    /// Images per rank per step from the FR datasets (default: --batch-size).
    #[arg(long, value_parser = bounds::count::<usize>(bounds::MAX_BATCH))]
    pub batch_size_fr: Option<usize>,
    /// Images per rank per step from the Gender datasets (default: --batch-size).
    #[arg(long, value_parser = bounds::count::<usize>(bounds::MAX_BATCH))]
    pub batch_size_gender: Option<usize>,
    /// Images per rank per step from the Age datasets (default: --batch-size).
    #[arg(long, value_parser = bounds::count::<usize>(bounds::MAX_BATCH))]
    pub batch_size_age: Option<usize>,
    /// Batch sampler: uniform, or pk (P identities × K images, see --pk).
    #[arg(long, value_enum, default_value_t = SamplerChoice::Uniform)]
    pub sampler: SamplerChoice,
    /// P and K for the pk sampler (the seed used 30x5 for FR).
    #[arg(long, value_parser = parse_pk, default_value = "30x5")]
    pub pk: [usize; 2],
    /// Base learning rate (backbone, and every head without its own).
    #[arg(long, default_value_t = 0.1, value_parser = bounds::positive(MAX_LR))]
    pub lr: f64,
    /// Learning rate of the FR head and ArcFace weights (default: --lr).
    #[arg(long, value_parser = bounds::positive(MAX_LR))]
    pub lr_fr: Option<f64>,
    /// Learning rate of the Gender head (default: --lr).
    #[arg(long, value_parser = bounds::positive(MAX_LR))]
    pub lr_gender: Option<f64>,
    /// Learning rate of the Age head (default: --lr).
    #[arg(long, value_parser = bounds::positive(MAX_LR))]
    pub lr_age: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, value_parser = bounds::real(0.0, 1.0, false))]
    pub momentum: f64,
    /// Weight decay of the backbone.
    #[arg(long, default_value_t = 5e-4, value_parser = bounds::real(0.0, 1.0, false))]
    pub wd_backbone: f64,
    /// Weight decay of the FR head and ArcFace weights.
    #[arg(long, default_value_t = 5e-4, value_parser = bounds::real(0.0, 1.0, false))]
    pub wd_fr: f64,
    /// Weight decay of the Gender head.
    #[arg(long, default_value_t = 5e-4, value_parser = bounds::real(0.0, 1.0, false))]
    pub wd_gender: f64,
    /// Weight decay of the Age head.
    #[arg(long, default_value_t = 5e-4, value_parser = bounds::real(0.0, 1.0, false))]
    pub wd_age: f64,
    /// Multi-task loss weights FR,Gender,Age (e.g. 1,0.5,0.5).
    #[arg(long, value_parser = parse_weights, default_value = "1,1,1")]
    pub loss_weights: [f64; 3],
    /// Multi: one task per step in turn (the seed's mode) instead of the weighted sum.
    #[arg(long)]
    pub alternate: bool,
    #[command(flatten)]
    pub heads: HeadConfig,
    /// Plateau threshold: steps without decrease before the lr shrinks (the seed's -s).
    #[arg(long, default_value_t = 15000, value_parser = bounds::count::<usize>(bounds::MAX_STEPS))]
    pub plateau_steps: usize,
    /// The task whose plateau also shrinks the backbone's lr (default: FR, or the only task).
    /// Each task's own plateau shrinks its head's lr.
    #[arg(long, value_enum)]
    pub plateau_task: Option<Head>,
    /// Factor applied to the learning rate at each plateau.
    #[arg(long, default_value_t = 0.1, value_parser = bounds::open_unit)]
    pub shrink: f64,
    /// Learning-rate schedule: plateau (dlib's rule, the default) or poly (arcface_torch's
    /// polynomial decay to 0 at --max-steps).
    #[arg(long, value_enum, default_value_t = Schedule::Plateau)]
    pub schedule: Schedule,
    /// Linear warm-up of every group's lr over this many steps (the plateau rule starts
    /// counting after it).
    #[arg(long, default_value_t = 0, value_parser = bounds::int::<u64>(0, bounds::MAX_STEPS))]
    pub warmup_steps: u64,
    /// Clip the backbone's gradients to this global L2 norm (arcface_torch uses 5).
    #[arg(long, value_parser = bounds::positive(1e6))]
    pub clip_grad_norm: Option<f64>,
    /// Stop once the learning rate falls below this.
    #[arg(long, default_value_t = 1e-6, value_parser = bounds::real(0.0, MAX_LR, false))]
    pub min_lr: f64,
    /// Stop after this many optimiser steps.
    #[arg(long, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub max_steps: Option<u64>,
    /// Stop (validate, checkpoint) after this many seconds of wall time.
    #[arg(long, value_name = "SECONDS", value_parser = bounds::seconds)]
    pub time_limit: Option<f64>,
    /// auto (this rank's GPU when CUDA exists, else cpu), cpu, cuda (cuda:<local rank>), cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Image decode threads per rank.
    #[arg(long, default_value_t = 2, value_parser = bounds::count::<usize>(bounds::MAX_THREADS))]
    pub workers: usize,
    /// libtorch threads per rank (default: cores / ranks on this node).
    #[arg(long, value_parser = bounds::count::<usize>(bounds::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Batches decoded ahead of the training step.
    #[arg(long, default_value_t = 4, value_parser = bounds::count::<usize>(1024))]
    pub prefetch: usize,
    /// Seed for shuffling, augmentation and initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from these weights (a run dir, a checkpoint dir or .safetensors); matching names load,
    /// e.g. an FR backbone for a Gender run.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train only the heads (the seed's -is_s_t False).
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 2000, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub save_every: u64,
    /// Validate every N steps.
    #[arg(long, default_value_t = 2000, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub valid_every: u64,
    /// Write a log.txt line every N steps.
    #[arg(long, default_value_t = 20, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub log_every: u64,
    /// Also write log.txt's numbers as TensorBoard scalars under <run>/tensorboard/
    /// (rank 0; `tensorboard --logdir Model/`).
    #[arg(long)]
    pub tensorboard: bool,
    /// Keep the last K checkpoints.
    #[arg(long, default_value_t = 3, value_parser = bounds::count::<usize>(1 << 20))]
    pub keep_checkpoints: usize,
    /// The validation metric that picks `best/` (a log key such as valid_fr_verif_acc,
    /// valid_gender_acc or valid_age_mae; default: the trained task's main metric, FR
    /// verification for Multi). Keys ending in `mae` are better lower.
    #[arg(long)]
    pub best_metric: Option<String>,
    /// Same/different pairs drawn from each validation set for verification accuracy.
    #[arg(long, default_value_t = 3000, value_parser = bounds::count::<usize>(1 << 26))]
    pub valid_pairs: usize,
    /// IJB-B/IJB-C 1:1 verification at each validation: the folder (loose_crop/ and meta/,
    /// as for `trainer eval --ijb`); logs ijbc_tar_far_1e-6 … _1e-1, ijbc_auc (ijbb_… for IJB-B).
    #[arg(long, value_name = "DIR")]
    pub valid_ijb: Option<PathBuf>,
    /// Mixed precision: fp16 autocast of the backbone on CUDA (heads and losses stay f32)
    /// with dynamic loss scaling, as PyTorch's autocast + GradScaler. On CPU only the loss
    /// scaling runs, which changes no result. No speed-up on GPUs without tensor cores.
    #[arg(long)]
    pub amp: bool,
    /// First loss scale of --amp (halved on overflow, doubled after 2000 good steps).
    #[arg(long, default_value_t = super::scaler::INIT_SCALE, value_parser = bounds::real(1.0, f32::MAX as f64, false))]
    pub amp_init_scale: f64,
    /// Where run directories go.
    #[arg(long, default_value = "Model")]
    pub out: PathBuf,
    /// Run directory name (default: <task>-<UTC time>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Gradient accumulation: optimiser step every K batches.
    #[arg(long, default_value_t = 1, value_parser = bounds::count::<usize>(1 << 16))]
    pub accum: usize,
    /// Linear learning-rate scaling: lr × world size × accum.
    #[arg(long)]
    pub scale_lr: bool,
    /// All-reduce bucket size in MiB (DDP's bucket_cap_mb).
    #[arg(long, default_value_t = 25.0, value_parser = bounds::positive(65536.0))]
    pub bucket_mb: f64,
    /// Compress gradients to fp16 for the all-reduce.
    #[arg(long)]
    pub fp16_allreduce: bool,
    /// With fewer shards than ranks: every rank opens all shards and takes every N-th record.
    #[arg(long)]
    pub stripe_records: bool,
    /// Partial FC: each rank holds a contiguous slice of the ArcFace class centres and the
    /// softmax is computed across ranks (embeddings and labels all-gathered), instead of
    /// every rank holding and all-reducing the whole matrix.
    #[arg(long)]
    pub partial_fc: bool,
    /// Partial FC's share of each rank's centres scored per step: the batch's positives
    /// plus uniformly drawn negatives (1 = all; arcface_torch uses 0.1 at ≥ 1 M identities).
    #[arg(long, default_value_t = 1.0, value_parser = bounds::real(0.0, 1.0, true))]
    pub sample_rate: f64,
    /// Seconds a collective may wait for a peer before the job is aborted.
    #[arg(long, default_value_t = 60.0, value_parser = bounds::seconds)]
    pub collective_timeout: f64,
    /// Seconds the other ranks wait for rank 0 to write a checkpoint (and copy `best/`)
    /// before the job is aborted; large checkpoints on NFS need more than a collective.
    #[arg(long, default_value_t = 1800.0, value_parser = bounds::seconds)]
    pub checkpoint_timeout: f64,
    /// Read records in order instead of a per-epoch shuffle (debugging, equivalence tests).
    #[arg(long = "no-shuffle", action = ArgAction::SetFalse)]
    pub shuffle: bool,
    /// No random horizontal flips.
    #[arg(long = "no-augment", action = ArgAction::SetFalse)]
    pub augment: bool,
    /// Do not roll back to the last good state on NaN or rising loss.
    #[arg(long = "no-rollback", action = ArgAction::SetFalse)]
    pub rollback: bool,
    /// Rollbacks in a row without getting past the failing step before the run gives up.
    #[arg(long, default_value_t = 10)]
    pub max_rollbacks: u32,
    /// Testing aid: force the loss to NaN from this step on to exercise the rollback ...
    #[arg(long, hide = true, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub inject_nan_at: Option<u64>,
    /// ... until the run has rolled back this many times.
    #[arg(long, hide = true, default_value_t = 1, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub inject_nan_times: u64,
    // Issue 24, the model zoo: the optimiser.
    /// Optimiser: sgd (with --momentum) or adamw (torch.optim.AdamW: --betas, --eps, and the
    /// --wd-* weight decays decoupled, each group's weights scaled by 1 − lr·wd per step).
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Sgd)]
    pub optimizer: OptimizerChoice,
    /// AdamW's moment decays β1,β2.
    #[arg(long, value_parser = crate::optim::parse_betas, default_value = "0.9,0.999")]
    pub betas: [f64; 2],
    /// AdamW's ε, added to the root of the second moment.
    #[arg(long, default_value_t = 1e-8, value_parser = bounds::positive(1.0))]
    pub eps: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        trainer_data::settings::clap_defaults()
    }
}

impl TrainConfig {
    /// Resolves the settings of a run: `base` (the defaults, or a resumed run's saved
    /// settings), overlaid by the recipe if any, overlaid by the flags actually typed.
    /// Every error is the user's settings (`BadSettings`: exit status 2).
    pub fn resolve(
        base: TrainConfig,
        recipe: Option<&Path>,
        typed: &TrainConfig,
        matches: &ArgMatches,
    ) -> Result<TrainConfig> {
        Self::resolve_inner(base, recipe, typed, matches).context(trainer_data::term::BadSettings)
    }

    fn resolve_inner(
        base: TrainConfig,
        recipe: Option<&Path>,
        typed: &TrainConfig,
        matches: &ArgMatches,
    ) -> Result<TrainConfig> {
        let mut table = toml::Table::try_from(base)?;
        if let Some(path) = recipe {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config {}: cannot read the recipe", path.display()))?;
            let recipe: toml::Table = text.parse().with_context(|| format!("parsing recipe {}", path.display()))?;
            super::recipe_check::check(&recipe).with_context(|| format!("recipe {}", path.display()))?;
            merge(&mut table, recipe);
        }
        merge(&mut table, given_on_command_line(typed, matches)?);
        let cfg: TrainConfig = toml::Value::Table(table).try_into().with_context(|| match recipe {
            Some(p) => format!("invalid setting in {} or on the command line", p.display()),
            None => "invalid setting on the command line".to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// What no single flag's parser can see: settings that must agree with each other.
    /// (Each value's own bounds are checked by its flag's parser, for flags and recipe keys
    /// alike; `recipe_check.rs`.)
    fn validate(&self) -> Result<()> {
        if self.train_sets.is_empty() {
            bail!("no training data: give --train-sets DIR/NAME (or train_sets in the recipe)");
        }
        check_pk(self.pk).map_err(|e| anyhow::anyhow!("pk: {e}"))?;
        check_weights(self.loss_weights).map_err(|e| anyhow::anyhow!("loss_weights: {e}"))?;
        crate::optim::check_betas(self.betas).map_err(|e| anyhow::anyhow!("betas: {e}"))?;
        SetSpec::check_coverage(&self.train_sets, &self.heads(), "training set")?;
        if let Some(h) = self.valid_sets.iter().find_map(|s| s.head.filter(|h| !self.heads().contains(h))) {
            bail!("--valid-sets {}=...: this run does not train {}", h.key(), h.name());
        }
        crate::model::backbone::check_input_side(self.arch, self.size)?;
        if self.schedule == Schedule::Poly && self.max_steps.is_none_or(|m| m <= self.warmup_steps) {
            bail!(
                "--schedule poly decays to 0 at --max-steps: give --max-steps above --warmup-steps ({})",
                self.warmup_steps
            );
        }
        if self.partial_fc && !self.heads().contains(&Head::Fr) {
            bail!("--partial-fc shards the ArcFace centres: it needs an FR task");
        }
        if self.sample_rate < 1.0 && !self.partial_fc {
            bail!("--sample-rate {} samples Partial FC's centres: add --partial-fc", self.sample_rate);
        }
        self.heads.validate()
    }

    /// Images per rank per optimiser step (before accumulation).
    pub fn rank_batch(&self) -> usize {
        match self.sampler {
            SamplerChoice::Uniform => self.batch_size,
            SamplerChoice::Pk => self.pk[0] * self.pk[1],
        }
    }

    /// The learning rate of the FR head and ArcFace, Gender head and Age head.
    pub fn head_lrs(&self) -> [f64; 3] {
        [self.lr_fr, self.lr_gender, self.lr_age].map(|lr| lr.unwrap_or(self.lr))
    }

    /// Images per rank per step from a task's own datasets.
    pub fn head_batch(&self, head: Head) -> usize {
        let own = [self.batch_size_fr, self.batch_size_gender, self.batch_size_age][head as usize];
        own.unwrap_or(self.batch_size)
    }

    /// The heads the run trains, in FR, Gender, Age order.
    pub fn heads(&self) -> Vec<Head> {
        Tasks::from(self.task).heads()
    }

    /// The datasets as given, with `--target-column` filled in where a Gender or Age
    /// dataset names no column of its own.
    pub fn sets(&self, sets: &[SetSpec]) -> Vec<SetSpec> {
        sets.iter()
            .map(|s| match (s.column, self.target_column, s.serves(&self.heads()).contains(&Head::Fr)) {
                (None, Some(c), false) => SetSpec { column: Some(c), ..s.clone() },
                _ => s.clone(),
            })
            .collect()
    }
}

/// The settings the user typed, as a table shaped like the config (heads nested).
fn given_on_command_line(typed: &TrainConfig, matches: &ArgMatches) -> Result<toml::Table> {
    let typed_here = |key: &str| {
        matches.ids().any(|id| id.as_str() == key) && matches.value_source(key) == Some(ValueSource::CommandLine)
    };
    let mut all = toml::Table::try_from(typed)?;
    let mut heads = match all.remove("heads") {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    all.retain(|k, _| typed_here(k));
    heads.retain(|k, _| typed_here(k));
    if !heads.is_empty() {
        all.insert("heads".into(), toml::Value::Table(heads));
    }
    Ok(all)
}

/// Recursive table overlay: values in `over` replace those in `base`; tables merge.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_pk(s: &str) -> Result<[usize; 2], String> {
    let (p, k) = s.split_once(['x', 'X']).ok_or("expected PxK, e.g. 30x5")?;
    let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    let pk = [num(p)?, num(k)?];
    check_pk(pk)?;
    Ok(pk)
}

/// P identities and K images each: both at least 1, and a batch of P×K that fits.
fn check_pk([p, k]: [usize; 2]) -> Result<(), String> {
    let batch = p.checked_mul(k).filter(|&b| p >= 1 && k >= 1 && b as u64 <= bounds::MAX_BATCH);
    batch
        .map(|_| ())
        .ok_or_else(|| format!("P and K must be at least 1 and P×K at most {}, got {p}x{k}", bounds::MAX_BATCH))
}

fn parse_weights(s: &str) -> Result<[f64; 3], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [fr, gender, age] = parts.as_slice() else {
        return Err("expected three weights FR,Gender,Age, e.g. 1,0.5,0.5".into());
    };
    let num = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let w = [num(fr)?, num(gender)?, num(age)?];
    check_weights(w)?;
    Ok(w)
}

/// Loss weights: finite, at least 0, at most 1000, not all 0.
fn check_weights(w: [f64; 3]) -> Result<(), String> {
    let fine = w.iter().all(|x| x.is_finite() && (0.0..=1000.0).contains(x)) && w.iter().any(|&x| x > 0.0);
    fine.then_some(()).ok_or_else(|| format!("weights must be finite, in [0, 1000] and not all 0, got {w:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: TrainConfig,
    }

    fn parse(args: &[&str]) -> (TrainConfig, ArgMatches) {
        let m = Cli::command().try_get_matches_from(std::iter::once("train").chain(args.iter().copied())).unwrap();
        (Cli::from_arg_matches(&m).unwrap().cfg, m)
    }

    fn resolve(recipe: Option<&Path>, args: &[&str]) -> Result<TrainConfig> {
        let (typed, m) = parse(args);
        TrainConfig::resolve(TrainConfig::default(), recipe, &typed, &m)
    }

    #[test]
    fn flags_override_recipe_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("r.toml");
        std::fs::write(
            &recipe,
            "task = 'Gender'\nsize = 64\nlr = 0.5\ntrain_sets = ['a']\n[heads]\nemb_dim = 128\ns = 32.0\n",
        )
        .unwrap();
        let cfg = resolve(Some(&recipe), &["--lr", "0.01", "--arc-s", "16"]).unwrap();
        assert_eq!(cfg.task, Task::Gender, "a default on the command line does not override the recipe");
        assert_eq!((cfg.size, cfg.lr, cfg.batch_size), (64, 0.01, 50));
        assert_eq!((cfg.heads.emb_dim, cfg.heads.s), (128, 16.0));
    }

    #[test]
    fn negated_flags_and_parsed_values() {
        let cfg = resolve(
            None,
            &["Multi", "--train-sets", "a", "--no-shuffle", "--pk", "4x2", "--loss-weights", "1,0.5,0.25"],
        )
        .unwrap();
        assert!(!cfg.shuffle && cfg.augment && cfg.rollback);
        assert_eq!((cfg.task, cfg.pk, cfg.loss_weights), (Task::Multi, [4, 2], [1.0, 0.5, 0.25]));
    }

    /// What makes "typed on the command line" work: a flag's id is its config key.
    #[test]
    fn every_flag_is_a_config_key() {
        let keys = serde_json::to_value(TrainConfig::default()).unwrap();
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert!(keys.get(id).is_some() || keys["heads"].get(id).is_some(), "flag {id} is not a config key");
        }
    }

    #[test]
    fn unknown_recipe_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("bad.toml");
        std::fs::write(&recipe, "train_sets = ['a']\nlearning_rate = 0.1\n").unwrap();
        let msg = format!("{:#}", resolve(Some(&recipe), &[]).unwrap_err());
        assert!(msg.contains("bad.toml") && msg.contains("learning_rate"), "{msg}");
    }

    #[test]
    fn iresnet_needs_112_and_margins_parse() {
        let msg =
            format!("{:#}", resolve(None, &["--train-sets", "a", "--arch", "iresnet50", "--size", "224"]).unwrap_err());
        assert!(msg.contains("--size 112"), "{msg}");
        let cfg = resolve(None, &["--train-sets", "a", "--arch", "iresnet100", "--margin", "cosface", "--m3", "0.4"])
            .unwrap();
        assert_eq!((cfg.arch, cfg.heads.margin().unwrap()), (Arch::Iresnet100, crate::model::Margin::cosface(0.4)));
        assert!(resolve(None, &["--train-sets", "a", "--margin", "arcface", "--m1", "1.2"]).is_err());
        assert!(format!("{:#}", resolve(None, &["--train-sets", "a", "--schedule", "poly"]).unwrap_err())
            .contains("--max-steps"));
        assert!(Cli::command().try_get_matches_from(["train", "--train-sets", "a", "--clip-grad-norm", "0"]).is_err());
    }

    #[test]
    fn the_arcface_torch_recipe_resolves() {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../training/fr-iresnet50-pfc.toml");
        assert!(format!("{:#}", resolve(Some(&recipe), &["--train-sets", "a"]).unwrap_err()).contains("--max-steps"));
        let cfg =
            resolve(Some(&recipe), &["--train-sets", "a", "--max-steps", "1000", "--sample-rate", "0.1"]).unwrap();
        assert_eq!(
            (cfg.arch, cfg.schedule, cfg.partial_fc, cfg.sample_rate, cfg.clip_grad_norm),
            (Arch::Iresnet50, Schedule::Poly, true, 0.1, Some(5.0))
        );
        assert_eq!(
            (cfg.batch_size, cfg.heads.margin().unwrap(), cfg.heads.fr_dropout),
            (128, crate::model::Margin::arcface(0.5), 0.0)
        );
    }

    #[test]
    fn missing_train_sets_is_explained() {
        let err = resolve(None, &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("--train-sets")
                && err.downcast_ref::<trainer_data::term::BadSettings>().is_some(),
            "{err:#}"
        );
    }
}
