//! Everything besides tensors that a resume needs to continue exactly.

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::scaler::LossScale;
use crate::pipeline::SamplerPosition;
use crate::plateau::Plateau;

#[derive(Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// The sampler position of the next batch.
    pub position: SamplerPosition,
    pub plateau: Plateau,
    /// Product of every plateau shrink so far; each group's lr is its base lr × this.
    pub lr_scale: f64,
    pub decays: Vec<u64>,
    pub rollbacks: u64,
    pub best_metric: Option<f64>,
    /// Training seconds before this process started (time limits span resumes).
    pub elapsed_secs: f64,
    pub skipped_records: u64,
    pub world_size: usize,
    /// Identities the ArcFace layer was built for (over all ranks' shards).
    pub num_classes: usize,
    /// `--amp`'s dynamic loss scale (absent in checkpoints from before it existed).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
    /// The step of the newest checkpoint written.
    pub saved_step: Option<u64>,
    pub config: TrainConfig,
}

impl TrainState {
    pub fn new(config: &TrainConfig, world_size: usize, num_classes: usize) -> TrainState {
        TrainState {
            step: 0,
            position: SamplerPosition { epoch: 0, batch: 0 },
            plateau: Plateau::new(config.plateau_steps, config.shrink),
            lr_scale: 1.0,
            decays: vec![],
            rollbacks: 0,
            best_metric: None,
            elapsed_secs: 0.0,
            skipped_records: 0,
            world_size,
            num_classes,
            loss_scale: config.amp.then(|| LossScale::new(config.amp_init_scale)),
            saved_step: None,
            config: config.clone(),
        }
    }
}
