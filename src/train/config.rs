//! Every training setting in one struct. Precedence: built-in defaults < recipe TOML
//! (`--config training/x.toml`) < command-line flags. The resolved struct is written to
//! `config.json` and stored in each checkpoint.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::model::Task;
use crate::model::{Arch, HeadConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerChoice {
    /// Every record once per epoch, shuffled.
    Uniform,
    /// P identities × K images per batch (`--pk`); the batch size becomes P×K.
    Pk,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub task: Task,
    pub train_sets: Vec<PathBuf>,
    pub valid_sets: Vec<PathBuf>,
    pub arch: Arch,
    pub size: usize,
    pub batch_size: usize,
    pub sampler: SamplerChoice,
    /// `[P, K]` for the P×K sampler (the seed used 30×5 for FR).
    pub pk: [usize; 2],
    pub lr: f64,
    pub lr_fr: Option<f64>,
    pub lr_gender: Option<f64>,
    pub lr_age: Option<f64>,
    pub momentum: f64,
    pub wd_backbone: f64,
    pub wd_fr: f64,
    pub wd_gender: f64,
    pub wd_age: f64,
    /// Multi-task loss weights, FR / Gender / Age.
    pub loss_weights: [f64; 3],
    /// Multi: train one task per step in turn (the seed's mode) instead of the weighted sum.
    pub alternate: bool,
    pub heads: HeadConfig,
    pub plateau_steps: usize,
    pub shrink: f64,
    pub min_lr: f64,
    pub max_steps: Option<u64>,
    pub time_limit: Option<f64>,
    pub device: String,
    pub workers: usize,
    pub threads: Option<usize>,
    pub prefetch: usize,
    pub seed: u64,
    pub init: Option<PathBuf>,
    pub freeze_backbone: bool,
    pub save_every: u64,
    pub valid_every: u64,
    pub log_every: u64,
    pub keep_checkpoints: usize,
    pub valid_pairs: usize,
    pub amp: bool,
    /// First loss scale of `--amp`'s dynamic loss scaling (a power of two).
    pub amp_init_scale: f64,
    pub out: PathBuf,
    pub run_id: Option<String>,
    pub accum: usize,
    pub scale_lr: bool,
    pub bucket_mb: f64,
    pub fp16_allreduce: bool,
    pub stripe_records: bool,
    pub collective_timeout: f64,
    /// Shuffle every epoch (off only for debugging and equivalence tests).
    pub shuffle: bool,
    /// Random horizontal flips.
    pub augment: bool,
    /// Roll back to the last good state when the loss turns NaN or clearly rises (dlib).
    pub rollback: bool,
    /// Test hook: make the loss NaN at this step, to exercise the rollback.
    pub inject_nan_at: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            task: Task::Fr,
            train_sets: vec![],
            valid_sets: vec![],
            arch: Arch::Resnet50,
            size: 112,
            batch_size: 50,
            sampler: SamplerChoice::Uniform,
            pk: [30, 5],
            lr: 0.1,
            lr_fr: None,
            lr_gender: None,
            lr_age: None,
            momentum: 0.9,
            wd_backbone: 5e-4,
            wd_fr: 5e-4,
            wd_gender: 5e-4,
            wd_age: 5e-4,
            loss_weights: [1.0, 1.0, 1.0],
            alternate: false,
            heads: HeadConfig::default(),
            plateau_steps: 15000,
            shrink: 0.1,
            min_lr: 1e-6,
            max_steps: None,
            time_limit: None,
            device: "auto".into(),
            workers: 2,
            threads: None,
            prefetch: 4,
            seed: 0,
            init: None,
            freeze_backbone: false,
            save_every: 2000,
            valid_every: 2000,
            log_every: 20,
            keep_checkpoints: 3,
            valid_pairs: 3000,
            amp: false,
            amp_init_scale: super::scaler::INIT_SCALE,
            out: PathBuf::from("Model"),
            run_id: None,
            accum: 1,
            scale_lr: false,
            bucket_mb: 25.0,
            fp16_allreduce: false,
            stripe_records: false,
            collective_timeout: 60.0,
            shuffle: true,
            augment: true,
            rollback: true,
            inject_nan_at: None,
        }
    }
}

impl TrainConfig {
    /// `base` (the defaults, or a resumed run's settings), overlaid by the recipe (if any),
    /// overlaid by the flags: a TOML table of only what the user typed.
    pub fn resolve_over(base: TrainConfig, recipe: Option<&Path>, flags: toml::Table) -> Result<TrainConfig> {
        let mut table = toml::Table::try_from(base)?;
        if let Some(path) = recipe {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading recipe {}", path.display()))?;
            let recipe: toml::Table = text
                .parse()
                .with_context(|| format!("parsing recipe {}", path.display()))?;
            merge(&mut table, recipe);
        }
        merge(&mut table, flags);
        let cfg: TrainConfig = toml::Value::Table(table)
            .try_into()
            .with_context(|| match recipe {
                Some(p) => format!("invalid setting in {} or on the command line", p.display()),
                None => "invalid setting on the command line".to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.train_sets.is_empty() {
            bail!("no training data: give --train-sets DIR/NAME (or train_sets in the recipe)");
        }
        if self.batch_size == 0 || self.accum == 0 || self.size < 16 {
            bail!("batch_size and accum must be > 0 and size >= 16");
        }
        if self.save_every == 0 || self.valid_every == 0 || self.log_every == 0 {
            bail!("save_every, valid_every and log_every must be at least 1");
        }
        if !(0.0..1.0).contains(&self.shrink) || self.shrink == 0.0 {
            bail!("shrink must be in (0, 1), got {}", self.shrink);
        }
        if !(self.amp_init_scale >= 1.0 && self.amp_init_scale.is_finite()) {
            bail!("amp_init_scale must be a finite number >= 1, got {}", self.amp_init_scale);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn flags_override_recipe_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("r.toml");
        std::fs::write(&recipe, "task = 'Gender'\nsize = 64\nlr = 0.5\ntrain_sets = ['a']\n[heads]\nemb_dim = 128\n").unwrap();
        let cfg = TrainConfig::resolve_over(TrainConfig::default(), Some(&recipe), table("lr = 0.01")).unwrap();
        assert_eq!(cfg.task, Task::Gender);
        assert_eq!(cfg.size, 64);
        assert_eq!(cfg.lr, 0.01);
        assert_eq!(cfg.heads.emb_dim, 128);
        assert_eq!(cfg.batch_size, 50);
    }

    #[test]
    fn unknown_recipe_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("bad.toml");
        std::fs::write(&recipe, "train_sets = ['a']\nlearning_rate = 0.1\n").unwrap();
        let err = TrainConfig::resolve_over(TrainConfig::default(), Some(&recipe), toml::Table::new()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("bad.toml") && msg.contains("learning_rate"), "{msg}");
    }

    #[test]
    fn missing_train_sets_is_explained() {
        let err = TrainConfig::resolve_over(TrainConfig::default(), None, toml::Table::new()).unwrap_err();
        assert!(err.to_string().contains("--train-sets"));
    }
}
