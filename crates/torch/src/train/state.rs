//! Everything besides tensors that a resume needs to continue exactly, and that a rollback
//! returns to.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::config::TrainConfig;
use super::scaler::LossScale;
use crate::model::Head;
use trainer_data::pipeline::SamplerPosition;
use trainer_data::plateau::Plateau;

#[derive(Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// The sampler position of each data pool's next batch ("all", or a task's name).
    pub positions: BTreeMap<String, SamplerPosition>,
    /// dlib's plateau rule, one per trained head, each fed only its head's losses.
    pub plateaus: BTreeMap<Head, Plateau>,
    /// Every learning-rate change so far, in order.
    pub lr_changes: Vec<LrChange>,
    pub rollbacks: u64,
    /// The best validation metric recorded in the run; `best/` holds its checkpoint.
    pub best_metric: Option<f64>,
    /// Training seconds before this process started (time limits span resumes).
    pub elapsed_secs: f64,
    pub skipped_records: u64,
    /// The ranks of the run that wrote this state (a resume on another count rewrites it).
    pub world_size: usize,
    /// Identities the ArcFace layer was built for (over all ranks' shards).
    pub num_classes: usize,
    /// `--amp`'s dynamic loss scale.
    pub loss_scale: Option<LossScale>,
    /// Losses written to each head's `loss_debug` file up to this step: what a resume or
    /// a rollback cuts the file back to.
    pub loss_counts: BTreeMap<Head, u64>,
    pub config: TrainConfig,
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
            positions: BTreeMap::new(),
            plateaus: heads.iter().map(|&h| (h, Plateau::new(config.plateau_steps, config.shrink))).collect(),
            lr_changes: vec![],
            rollbacks: 0,
            best_metric: None,
            elapsed_secs: 0.0,
            skipped_records: 0,
            world_size,
            num_classes,
            loss_scale: config.amp.then(|| LossScale::new(config.amp_init_scale)),
            loss_counts: heads.iter().map(|&h| (h, 0)).collect(),
            config: config.clone(),
        }
    }
}
