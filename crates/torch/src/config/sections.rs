//! The sections of `TrainConfig`, one struct each: a section is a `[table]` of a recipe and
//! of `config.json`, a heading of `trainer train --help`, and what the part of the program
//! it configures receives. Each field carries its flag, its help, its one default and its
//! bounds (the flag's value parser, which `recipe_check` also runs on recipe values).
//! Field names are unique across sections: a field's name is its flag's id.

use clap::ArgAction;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::amp::AmpMode;
use crate::device::DeviceArg;
use crate::model::{Arch, Head, Task};
use crate::optim::OptimizerChoice;
use trainer_data::bounds;
use trainer_data::targets::{Column, SetSpec};

/// Largest learning rate accepted (anything above is a typo).
const MAX_LR: f64 = 1e6;

/// `--amp`'s first loss scale, as PyTorch's GradScaler.
pub const AMP_INIT_SCALE: f64 = 65536.0;

/// Implements `Default` from the clap attributes, so defaults are declared once.
macro_rules! clap_default {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                trainer_data::settings::clap_defaults()
            }
        }
    )*};
}
clap_default!(ModelConfig, DataConfig, OptimConfig, ScheduleConfig, CheckpointConfig, ValidConfig, RunConfig);

/// What the weights are: the task, the backbone, the input, and how the FR head is split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Task: FR (ArcFace), Gender, Age, or Multi (shared backbone, all three heads).
    #[arg(value_enum, default_value_t = Task::Fr)]
    pub task: Task,
    /// Backbone.
    #[arg(long, value_enum, default_value_t = Arch::Resnet50)]
    pub arch: Arch,
    /// Square input size in pixels (the seed used 224).
    #[arg(long, default_value_t = 112, value_parser = bounds::int::<usize>(16, bounds::MAX_SIDE))]
    pub size: usize,
    /// Convolutions in NHWC memory order (faster with tensor cores); checkpoints keep the
    /// usual layout.
    #[arg(long)]
    pub channels_last: bool,
    /// Start from these weights (a run dir, a checkpoint dir or .safetensors); matching names load,
    /// e.g. an FR backbone for a Gender run.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train only the heads (the seed's -is_s_t False).
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Partial FC: each rank holds a contiguous slice of the ArcFace class centres and the
    /// softmax is computed across ranks (embeddings and labels all-gathered), instead of
    /// every rank holding and all-reducing the whole matrix.
    #[arg(long)]
    pub partial_fc: bool,
    /// Partial FC's share of each rank's centres scored per step: the batch's positives
    /// plus uniformly drawn negatives (1 = all; arcface_torch uses 0.1 at ≥ 1 M identities).
    #[arg(long, default_value_t = 1.0, value_parser = bounds::real(0.0, 1.0, true))]
    pub sample_rate: f64,
    /// ViT only: stochastic depth of the last block (rising linearly from 0 at the first);
    /// default 0.1, arcface_torch's for vit_t/s/b (its WebFace42M `*_dp005_*` use 0.05).
    #[arg(long, value_parser = bounds::below(0.0, 1.0))]
    pub drop_path: Option<f64>,
    /// ViT only: share of each image's 144 tokens left out in training and replaced by the
    /// learned mask token before the head; default 0.1 as arcface_torch's vit_t/s/b (`*_mask0`: 0).
    #[arg(long, value_parser = bounds::below(0.0, 1.0))]
    pub mask_ratio: Option<f64>,
}

impl ModelConfig {
    /// The backbone these settings build.
    pub fn backbone(&self) -> crate::model::BackboneSpec {
        crate::model::BackboneSpec { arch: self.arch, drop_path: self.drop_path, mask_ratio: self.mask_ratio }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// dlib's plateau rule (the default): shrink by --shrink after --plateau-steps.
    Plateau,
    /// arcface_torch's PolyScheduler: lr × (1 − t/T)², T = --max-steps − --warmup-steps.
    Poly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerChoice {
    /// Every record once per epoch, shuffled.
    Uniform,
    /// P identities × K images per batch (`--pk`); the batch size becomes P×K.
    Pk,
}

/// What each rank reads, in which order, how many at a time, and how it is decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training datasets: `DIR/NAME` (all its shards, or a seed-format NAME.bin/.idx), for
    /// every task of the run; or per task, `fr=DIR/NAME gender=DIR/NAME age=DIR/NAME`;
    /// `...@label|gender|age` names the column that holds a Gender or Age class.
    #[arg(long, num_args = 1.., value_name = "[TASK=]DIR/NAME[@COLUMN]")]
    pub train_sets: Vec<SetSpec>,
    /// The column Gender and Age datasets read their class from, unless a dataset names
    /// its own (default: the task's own column where a dataset has it filled in, else —
    /// for a dataset that serves only that task, like the seed's Gender/Age bins — label).
    #[arg(long, value_enum)]
    pub target_column: Option<Column>,
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
    #[arg(long, value_parser = super::values::parse_pk, default_value = "30x5")]
    pub pk: [usize; 2],
    /// Image decode threads per rank.
    #[arg(long, default_value_t = 2, value_parser = bounds::count::<usize>(bounds::MAX_THREADS))]
    pub workers: usize,
    /// Batches decoded ahead of the training step.
    #[arg(long, default_value_t = 4, value_parser = bounds::count::<usize>(1024))]
    pub prefetch: usize,
    /// With fewer shards than ranks: every rank opens all shards and takes every N-th record.
    #[arg(long)]
    pub stripe_records: bool,
    /// Read records in order instead of a per-epoch shuffle (debugging, equivalence tests).
    #[arg(long = "no-shuffle", action = ArgAction::SetFalse)]
    pub shuffle: bool,
    /// No random horizontal flips.
    #[arg(long = "no-augment", action = ArgAction::SetFalse)]
    pub augment: bool,
}

/// How gradients become updates: learning rates, decay, clipping, loss weights, precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
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
    /// Optimiser: sgd (with --momentum) or adamw (torch.optim.AdamW: --betas, --eps, and the
    /// --wd-* weight decays decoupled, each group's weights scaled by 1 − lr·wd per step).
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Sgd)]
    pub optimizer: OptimizerChoice,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, value_parser = bounds::real(0.0, 1.0, false))]
    pub momentum: f64,
    /// AdamW's moment decays β1,β2.
    #[arg(long, value_parser = crate::optim::parse_betas, default_value = "0.9,0.999")]
    pub betas: [f64; 2],
    /// AdamW's ε, added to the root of the second moment.
    #[arg(long, default_value_t = 1e-8, value_parser = bounds::positive(1.0))]
    pub eps: f64,
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
    /// Clip the backbone's gradients to this global L2 norm (arcface_torch uses 5).
    #[arg(long, value_parser = bounds::positive(1e6))]
    pub clip_grad_norm: Option<f64>,
    /// Multi-task loss weights FR,Gender,Age (e.g. 1,0.5,0.5).
    #[arg(long, value_parser = super::values::parse_weights, default_value = "1,1,1")]
    pub loss_weights: [f64; 3],
    /// Multi: one task per step in turn (the seed's mode) instead of the weighted sum.
    #[arg(long)]
    pub alternate: bool,
    /// Gradient accumulation: optimiser step every K batches.
    #[arg(long, default_value_t = 1, value_parser = bounds::count::<usize>(1 << 16))]
    pub accum: usize,
    /// Linear learning-rate scaling: lr × world size × accum.
    #[arg(long)]
    pub scale_lr: bool,
    /// Mixed precision on CUDA: fp16 (what --amp alone means) or bf16 autocast of the
    /// backbone and of ArcFace's cosine matmul (margins and losses stay f32); fp16 with
    /// dynamic loss scaling, as PyTorch's autocast + GradScaler. On CPU only fp16's loss
    /// scaling runs, which changes no result. No speed-up on GPUs without tensor cores.
    #[arg(long, value_enum, num_args = 0..=1, default_value_t = AmpMode::Off, default_missing_value = "fp16")]
    pub amp: AmpMode,
    /// First loss scale of --amp fp16 (halved on overflow, doubled after 2000 good steps).
    #[arg(long, default_value_t = AMP_INIT_SCALE, value_parser = bounds::real(1.0, f32::MAX as f64, false))]
    pub amp_init_scale: f64,
}

/// When the learning rate changes and when the run stops; the safeguard that rolls back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Learning-rate schedule: plateau (dlib's rule, the default) or poly (arcface_torch's
    /// polynomial decay to 0 at --max-steps).
    #[arg(long, value_enum, default_value_t = Schedule::Plateau)]
    pub schedule: Schedule,
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
    /// Linear warm-up of every group's lr over this many steps (the plateau rule starts
    /// counting after it).
    #[arg(long, default_value_t = 0, value_parser = bounds::int::<u64>(0, bounds::MAX_STEPS))]
    pub warmup_steps: u64,
    /// Stop once the learning rate falls below this.
    #[arg(long, default_value_t = 1e-6, value_parser = bounds::real(0.0, MAX_LR, false))]
    pub min_lr: f64,
    /// Stop after this many optimiser steps.
    #[arg(long, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub max_steps: Option<u64>,
    /// Stop (validate, checkpoint) after this many seconds of wall time.
    #[arg(long, value_name = "SECONDS", value_parser = bounds::seconds)]
    pub time_limit: Option<f64>,
    /// Do not roll back to the last good state on NaN or rising loss.
    #[arg(long = "no-rollback", action = ArgAction::SetFalse)]
    pub rollback: bool,
    /// Rollbacks in a row without getting past the failing step before the run gives up.
    #[arg(long, default_value_t = 10, value_parser = bounds::int::<u32>(0, 1 << 20))]
    pub max_rollbacks: u32,
    /// Testing aid: force the loss to NaN from this step on to exercise the rollback ...
    #[arg(long, hide = true, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub inject_nan_at: Option<u64>,
    /// ... until the run has rolled back this many times.
    #[arg(long, hide = true, default_value_t = 1, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub inject_nan_times: u64,
}

/// When and how checkpoints are written and kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 2000, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub save_every: u64,
    /// Keep the last K checkpoints.
    #[arg(long, default_value_t = 3, value_parser = bounds::count::<usize>(1 << 20))]
    pub keep_checkpoints: usize,
    /// Seconds the other ranks wait for rank 0 to write a checkpoint (and copy `best/`)
    /// before the job is aborted; large checkpoints on NFS need more than a collective.
    #[arg(long, default_value_t = 1800.0, value_parser = bounds::seconds)]
    pub checkpoint_timeout: f64,
}

/// What is validated, how often, and which metric picks `best/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ValidConfig {
    /// Validation datasets, given as --train-sets are.
    #[arg(long, num_args = 1.., value_name = "[TASK=]DIR/NAME[@COLUMN]")]
    pub valid_sets: Vec<SetSpec>,
    /// Validate every N steps.
    #[arg(long, default_value_t = 2000, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub valid_every: u64,
    /// Same/different pairs drawn from each validation set for verification accuracy.
    #[arg(long, default_value_t = 3000, value_parser = bounds::count::<usize>(1 << 26))]
    pub valid_pairs: usize,
    /// IJB-B/IJB-C 1:1 verification at each validation: the folder (loose_crop/ and meta/,
    /// as for `trainer eval --ijb`); logs ijbc_tar_far_1e-6 … _1e-1, ijbc_auc (ijbb_… for IJB-B).
    #[arg(long, value_name = "DIR")]
    pub valid_ijb: Option<PathBuf>,
    /// The validation metric that picks `best/` (a log key such as valid_fr_verif_acc,
    /// valid_gender_acc or valid_age_mae; default: the trained task's main metric, FR
    /// verification for Multi). Keys ending in `mae` are better lower.
    #[arg(long)]
    pub best_metric: Option<String>,
}

/// Where the run lives, what it runs on, and what it writes as it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Where run directories go.
    #[arg(long, default_value = "Model")]
    pub out: PathBuf,
    /// Run directory name (default: <task>-<UTC time>).
    #[arg(long)]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// libtorch threads per rank (default: cores / ranks on this node).
    #[arg(long, value_parser = bounds::count::<usize>(bounds::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Seed for shuffling, augmentation and initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a log.txt line every N steps.
    #[arg(long, default_value_t = 20, value_parser = bounds::count::<u64>(bounds::MAX_STEPS))]
    pub log_every: u64,
    /// Also write log.txt's numbers as TensorBoard scalars under <run>/tensorboard/
    /// (rank 0; `tensorboard --logdir Model/`).
    #[arg(long)]
    pub tensorboard: bool,
}
