//! `trainer train` flags. Every flag is optional so a recipe's value survives unless the
//! user types the flag; `TrainArgs::overrides` turns what was typed into a TOML table.

use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

use super::config::{SamplerChoice, Task};
use crate::model::Arch;

#[derive(clap::Args, Debug, Serialize)]
#[command(after_help = "The seed's flags work too: -train_sets -valid_sets -img_w -lr_f -lr_g -lr_a \
-w_s -w_f -w_g -w_a -fr_dim -s -model -is_s_t.\n\
Distributed: mpirun -n 4 trainer train FR --train-sets shards/ms1m ... (one rank per GPU).")]
pub struct TrainArgs {
    /// Task: FR (ArcFace), Gender, Age, or Multi (shared backbone, summed weighted losses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Recipe TOML (see training/); flags given here override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue a run from its latest checkpoint: the run directory (Model/<run-id>).
    #[arg(long, value_name = "RUN_DIR")]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Training datasets (`DIR/NAME`: all its shards, or a seed-format NAME.bin/.idx).
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_sets: Option<Vec<PathBuf>>,
    /// Validation datasets.
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_sets: Option<Vec<PathBuf>>,
    /// Backbone.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Square input size in pixels (default 112; the seed used 224).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Images per rank per step (default 50).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Batch sampler: uniform, or pk (P identities × K images, see --pk).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerChoice>,
    /// P and K for the pk sampler, e.g. 30x5.
    #[arg(long, value_parser = parse_pk)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pk: Option<[usize; 2]>,
    /// Base learning rate (backbone, and every head without its own).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Learning rate of the FR head and ArcFace weights.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_fr: Option<f64>,
    /// Learning rate of the Gender head.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_gender: Option<f64>,
    /// Learning rate of the Age head.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_age: Option<f64>,
    /// Weight decay of the backbone (default 5e-4).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wd_backbone: Option<f64>,
    /// Weight decay of the FR head and ArcFace weights.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wd_fr: Option<f64>,
    /// Weight decay of the Gender head.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wd_gender: Option<f64>,
    /// Weight decay of the Age head.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wd_age: Option<f64>,
    /// Multi-task loss weights FR,Gender,Age (e.g. 1,0.5,0.5).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<Vec<f64>>,
    /// Multi: one task per step in turn (the seed's mode) instead of the weighted sum.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub alternate: bool,
    /// Embedding size of the FR head (default 512).
    #[arg(long)]
    #[serde(skip)]
    pub emb_dim: Option<usize>,
    /// ArcFace scale s (default 64).
    #[arg(long = "arc-s")]
    #[serde(skip)]
    pub arc_s: Option<f64>,
    /// ArcFace additive angular margin m (default 0.5).
    #[arg(long = "arc-m")]
    #[serde(skip)]
    pub arc_m: Option<f64>,
    /// Dropout before the FR embedding layer (default 0.4).
    #[arg(long)]
    #[serde(skip)]
    pub fr_dropout: Option<f64>,
    /// Plateau threshold: steps without decrease before the lr shrinks (the seed's -s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_steps: Option<usize>,
    /// Factor applied to the learning rate at each plateau (default 0.1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrink: Option<f64>,
    /// Stop once the learning rate falls below this (default 1e-6).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// Stop after this many optimiser steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Stop (validate, checkpoint) after this many seconds of wall time.
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
    /// auto (cuda:<local rank> when CUDA exists, else cpu), cpu, or cuda:N.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Image decode threads per rank.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// libtorch threads per rank (default: cores / ranks on this node).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Seed for shuffling, augmentation and initialisation.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Start from these weights (a checkpoint dir or .safetensors); matching names load,
    /// e.g. an FR backbone for a Gender run.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Train only the heads (the seed's -is_s_t False).
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub freeze_backbone: bool,
    /// Checkpoint every N steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_every: Option<u64>,
    /// Validate every N steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_every: Option<u64>,
    /// Write a log.txt line every N steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_every: Option<u64>,
    /// Keep the last K checkpoints.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_checkpoints: Option<usize>,
    /// Same/different pairs drawn from each validation set for verification accuracy.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_pairs: Option<usize>,
    /// Mixed precision: fp16 autocast of the backbone on CUDA (heads and losses stay f32)
    /// with dynamic loss scaling, as PyTorch's autocast + GradScaler. On CPU only the loss
    /// scaling runs, which changes no result. No speed-up on GPUs without tensor cores.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub amp: bool,
    /// First loss scale of --amp (default 65536; halved on overflow, doubled after 2000 good steps).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amp_init_scale: Option<f64>,
    /// Where run directories go (default Model).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Run directory name (default: <task>-<UTC time>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Gradient accumulation: optimiser step every K batches.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accum: Option<usize>,
    /// Linear learning-rate scaling: lr × world size × accum.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub scale_lr: bool,
    /// All-reduce bucket size in MB (default 25).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_mb: Option<f64>,
    /// Compress gradients to fp16 for the all-reduce.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub fp16_allreduce: bool,
    /// With fewer shards than ranks: every rank opens all shards and takes every N-th record.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub stripe_records: bool,
    /// Seconds a collective may wait for a peer before the job is aborted (default 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collective_timeout: Option<f64>,
    /// Read records in order instead of a per-epoch shuffle (debugging, equivalence tests).
    #[arg(long)]
    #[serde(skip)]
    pub no_shuffle: bool,
    /// No random horizontal flips.
    #[arg(long)]
    #[serde(skip)]
    pub no_augment: bool,
    /// Do not roll back to the last good state on NaN or rising loss.
    #[arg(long)]
    #[serde(skip)]
    pub no_rollback: bool,
    /// Testing aid: force the loss to NaN at this step to exercise the rollback.
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inject_nan_at: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn parse_pk(s: &str) -> Result<[usize; 2], String> {
    let (p, k) = s.split_once(['x', 'X']).ok_or("expected PxK, e.g. 30x5")?;
    let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    Ok([num(p)?, num(k)?])
}

impl TrainArgs {
    /// What the user typed, as a TOML table to lay over the recipe.
    pub fn overrides(&self) -> Result<toml::Table> {
        let mut table = toml::Table::try_from(self)?;
        let mut heads = toml::Table::new();
        if let Some(v) = self.emb_dim {
            heads.insert("emb_dim".into(), toml::Value::Integer(v as i64));
        }
        if let Some(v) = self.arc_s {
            heads.insert("s".into(), toml::Value::Float(v));
        }
        if let Some(v) = self.fr_dropout {
            heads.insert("fr_dropout".into(), toml::Value::Float(v));
        }
        if let Some(v) = self.arc_m {
            heads.insert("m".into(), toml::Value::Float(v));
        }
        if !heads.is_empty() {
            table.insert("heads".into(), toml::Value::Table(heads));
        }
        for (off, key) in [(self.no_shuffle, "shuffle"), (self.no_augment, "augment")] {
            if off {
                table.insert(key.into(), toml::Value::Boolean(false));
            }
        }
        if self.no_rollback {
            table.insert("rollback".into(), toml::Value::Boolean(false));
        }
        Ok(table)
    }
}
