//! Everything besides tensors that a resume needs to continue exactly, and that a rollback
//! returns to.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::pools::PoolKey;
use super::scaler::LossScale;
use crate::config::TrainConfig;
use crate::model::Head;
use trainer_data::pipeline::PoolPosition;
use trainer_data::plateau::Plateau;

/// What a resume continues from. A rollback returns to an earlier one, keeping `run`.
#[derive(Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// What belongs to the run rather than to the point it is at (stored in the same flat
    /// `state.json` object).
    #[serde(flatten)]
    pub run: RunProgress,
    /// dlib's plateau rule, one per trained head, each fed only its head's losses.
    pub plateaus: BTreeMap<Head, Plateau>,
    /// Every learning-rate change so far, in order.
    pub lr_changes: Vec<LrChange>,
    /// Training seconds before this process started (time limits span resumes).
    pub elapsed_secs: f64,
    /// The ranks of the run that wrote this state (a resume on another count rewrites it).
    pub world_size: usize,
    /// Identities the ArcFace layer was built for (over all ranks' shards).
    pub num_classes: usize,
    /// `--amp`'s dynamic loss scale.
    pub loss_scale: Option<LossScale>,
    /// Losses written to each head's `loss_debug` file up to this step: what a resume or
    /// a rollback cuts the file back to.
    pub loss_counts: BTreeMap<Head, u64>,
    /// The settings when this checkpoint was written (in either form, `config/legacy.rs`):
    /// what `eval` reads of a checkpoint copied out of its run.
    #[serde(deserialize_with = "TrainConfig::deserialize_any_form")]
    pub config: TrainConfig,
}

/// The run's own counts and position, which a rollback keeps: the retry takes fresh
/// batches (the same ones could fail again), and the best metric only ever improves.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct RunProgress {
    /// Each data pool's position ("all", or a task's name): its next batch, the rank layout
    /// it is read in, and the epoch's parts read in other layouts (`pipeline::redeal`).
    pub positions: BTreeMap<PoolKey, PoolPosition>,
    pub rollbacks: u64,
    /// The best validation metric recorded in the run; `best/` holds its checkpoint.
    pub best_metric: Option<f64>,
    pub skipped_records: u64,
}

impl TrainState {
    /// Returns to `good`, keeping the run's progress.
    pub fn roll_back_to(&mut self, good: &TrainState) {
        *self = TrainState { run: self.run.clone(), ..good.clone() };
    }
}

/// One change of learning rate: which parameter groups, by what factor, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrChange {
    pub step: u64,
    pub cause: LrCause,
    pub head: Head,
    pub groups: Vec<String>,
    pub factor: f64,
}

/// Why a learning rate changed; written as "plateau", "rollback" or "accepted".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrCause {
    /// dlib's plateau rule on `head`'s losses.
    Plateau,
    /// Reloads kept coming (the safeguard's shrink).
    Rollback,
    /// A rise that the shrinks did not stop was accepted: the shrinks are undone.
    Accepted,
}

impl TrainState {
    pub fn new(config: &TrainConfig, heads: &[Head], world_size: usize, num_classes: usize) -> TrainState {
        TrainState {
            step: 0,
            run: RunProgress::default(),
            plateaus: heads
                .iter()
                .map(|&h| (h, Plateau::new(config.schedule.plateau_steps, config.schedule.shrink)))
                .collect(),
            lr_changes: vec![],
            elapsed_secs: 0.0,
            world_size,
            num_classes,
            loss_scale: config.optim.amp.scales_loss().then(|| LossScale::new(config.optim.amp_init_scale)),
            loss_counts: heads.iter().map(|&h| (h, 0)).collect(),
            config: config.clone(),
        }
    }
}
