//! Every training setting, defined once, in sections (`sections.rs`): each field carries
//! its flag, its help, its one default and its bounds in clap's attributes, and the same
//! field is its recipe key and its `config.json` key, in the `[table]` of its section.
//! Precedence, as torchtitan's job config: flags typed on the command line (clap's value
//! source tells which) over the recipe (`--config training/x.toml`) over the defaults; on
//! `--resume`, over the run's saved `config.json` instead of the defaults. Recipes and
//! `config.json` files written before the sections existed (one flat table) are read too
//! (`legacy.rs`).

mod legacy;
mod recipe_check;
pub mod sections;
mod values;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use crate::dist::CommArgs;
pub use crate::model::Task;
use crate::model::{Head, HeadConfig};
pub use sections::{
    CheckpointConfig, DataConfig, ModelConfig, OptimConfig, RunConfig, SamplerChoice, Schedule, ScheduleConfig,
    ValidConfig,
};
use trainer_data::targets::SetSpec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    #[command(flatten, next_help_heading = "Model")]
    pub model: ModelConfig,
    #[command(flatten, next_help_heading = "Heads and losses")]
    pub heads: HeadConfig,
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataConfig,
    #[command(flatten, next_help_heading = "Optimiser")]
    pub optim: OptimConfig,
    #[command(flatten, next_help_heading = "Schedule and safeguard")]
    pub schedule: ScheduleConfig,
    #[command(flatten, next_help_heading = "Collectives")]
    pub comm: CommArgs,
    #[command(flatten, next_help_heading = "Checkpoints")]
    pub checkpoint: CheckpointConfig,
    #[command(flatten, next_help_heading = "Validation")]
    pub valid: ValidConfig,
    #[command(flatten, next_help_heading = "Run")]
    pub run: RunConfig,
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
            merge(&mut table, read_recipe(path)?);
        }
        merge(&mut table, given_on_command_line(typed, matches)?);
        let cfg: TrainConfig = toml::Value::Table(table).try_into().with_context(|| match recipe {
            Some(p) => format!("invalid setting in {} or on the command line", p.display()),
            None => "invalid setting on the command line".to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a stored config (`config.json`, a checkpoint's `state.json`) in either form.
    pub fn from_json(value: serde_json::Value) -> Result<TrainConfig> {
        Ok(serde_json::from_value(legacy::sectioned(value).0)?)
    }

    /// As `from_json`, for a config inside another stored value (`#[serde(deserialize_with)]`).
    pub fn deserialize_any_form<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }

    /// What no single flag's parser can see: settings that must agree with each other,
    /// and the two values a recipe spells as arrays, which no flag parser reads.
    fn validate(&self) -> Result<()> {
        let (data, model) = (&self.data, &self.model);
        if data.train_sets.is_empty() {
            bail!("no training data: give --train-sets DIR/NAME (or train_sets in the recipe's [data])");
        }
        values::check_pk(data.pk).map_err(|e| anyhow::anyhow!("pk: {e}"))?;
        values::check_weights(self.optim.loss_weights).map_err(|e| anyhow::anyhow!("loss_weights: {e}"))?;
        crate::optim::check_betas(self.optim.betas).map_err(|e| anyhow::anyhow!("betas: {e}"))?;
        SetSpec::check_coverage(&data.train_sets, &self.heads(), "training set")?;
        if let Some(h) = self.valid.valid_sets.iter().find_map(|s| s.head.filter(|h| !self.heads().contains(h))) {
            bail!("--valid-sets {}=...: this run does not train {}", h.key(), h.name());
        }
        crate::model::backbone::check_input_side(model.arch, model.size)?;
        model.backbone().vit_training()?;
        let sched = &self.schedule;
        if sched.schedule == Schedule::Poly && sched.max_steps.is_none_or(|m| m <= sched.warmup_steps) {
            bail!(
                "--schedule poly decays to 0 at --max-steps: give --max-steps above --warmup-steps ({})",
                sched.warmup_steps
            );
        }
        if model.partial_fc && !self.heads().contains(&Head::Fr) {
            bail!("--partial-fc shards the ArcFace centres: it needs an FR task");
        }
        if model.sample_rate < 1.0 && !model.partial_fc {
            bail!("--sample-rate {} samples Partial FC's centres: add --partial-fc", model.sample_rate);
        }
        self.heads.margin().map(|_| ())
    }

    /// Images per rank per optimiser step (before accumulation).
    pub fn rank_batch(&self) -> usize {
        match self.data.sampler {
            SamplerChoice::Uniform => self.data.batch_size,
            SamplerChoice::Pk => self.data.pk[0] * self.data.pk[1],
        }
    }

    /// The learning rate of the FR head and ArcFace, Gender head and Age head.
    pub fn head_lrs(&self) -> [f64; 3] {
        let o = &self.optim;
        [o.lr_fr, o.lr_gender, o.lr_age].map(|lr| lr.unwrap_or(o.lr))
    }

    /// Images per rank per step from a task's own datasets.
    pub fn head_batch(&self, head: Head) -> usize {
        let d = &self.data;
        let own = [d.batch_size_fr, d.batch_size_gender, d.batch_size_age][head as usize];
        own.unwrap_or(d.batch_size)
    }

    /// The heads the run trains, in FR, Gender, Age order.
    pub fn heads(&self) -> Vec<Head> {
        self.model.task.heads()
    }

    /// The datasets as given, with `--target-column` filled in where a Gender or Age
    /// dataset names no column of its own.
    pub fn sets(&self, sets: &[SetSpec]) -> Vec<SetSpec> {
        sets.iter()
            .map(|s| match (s.column, self.data.target_column, s.serves(&self.heads()).contains(&Head::Fr)) {
                (None, Some(c), false) => SetSpec { column: Some(c), ..s.clone() },
                _ => s.clone(),
            })
            .collect()
    }
}

/// A recipe's table, in sections; a flat recipe is read with a note of its sectioned form.
fn read_recipe(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read the recipe", path.display()))?;
    let flat: toml::Table = text.parse().with_context(|| format!("parsing recipe {}", path.display()))?;
    let (value, was_flat) = legacy::sectioned(serde_json::to_value(flat)?);
    let recipe = toml::Table::try_from(value)?;
    if was_flat {
        tracing::warn!(
            "{} is a flat recipe (read as before); recipes now have one table per section:\n{}",
            path.display(),
            toml::to_string(&recipe).unwrap_or_default()
        );
    }
    recipe_check::check(&recipe, &TrainConfig::augment_args(clap::Command::new("train")))
        .with_context(|| format!("recipe {}", path.display()))?;
    Ok(recipe)
}

/// The settings the user typed, as a table shaped like the config (in sections).
fn given_on_command_line(typed: &TrainConfig, matches: &ArgMatches) -> Result<toml::Table> {
    let typed_here = |key: &str| {
        matches.ids().any(|id| id.as_str() == key) && matches.value_source(key) == Some(ValueSource::CommandLine)
    };
    let mut all = toml::Table::try_from(typed)?;
    for (_, section) in all.iter_mut() {
        if let toml::Value::Table(t) = section {
            t.retain(|k, _| typed_here(k));
        }
    }
    all.retain(|_, section| section.as_table().is_some_and(|t| !t.is_empty()));
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

#[cfg(test)]
mod tests;
