//! A trained run's model, and the commands that read it: `eval`, `embed` and `export`
//! select it the same way (a run directory, one of its checkpoints, libtorch's threads),
//! with one definition of those flags and one way to load what they name.

pub mod arcface_torch;
pub mod embed;
pub mod eval;
pub mod export;

use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::config::TrainConfig;
use crate::device::DeviceArg;
use crate::model::{Head, Net};
use crate::train::checkpoint;
use trainer_data::bounds;

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The run directory (Model/<run-id>).
    pub run: PathBuf,
    /// best, latest, or a checkpoint directory.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// libtorch threads (default: the cores the image decoders leave, at least 1; all
    /// cores where nothing is decoded). Without it, libtorch takes every core and fights
    /// the decoders on a busy machine.
    #[arg(long, value_parser = bounds::count::<usize>(bounds::MAX_THREADS))]
    pub threads: Option<usize>,
}

/// A run's model as a checkpoint left it, ready for inference.
pub struct Loaded {
    pub run: PathBuf,
    pub net: Net,
    /// Owns the weights `net` uses.
    vs: VarStore,
    pub cfg: TrainConfig,
    pub checkpoint: PathBuf,
    pub step: u64,
    pub device: Device,
}

impl ModelArgs {
    /// Sets libtorch's threads, leaving `decoders` cores to image decoding, then loads the
    /// selected checkpoint onto `device`.
    pub fn load(&self, device: &DeviceArg, decoders: usize) -> Result<Loaded> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads(self.threads.unwrap_or(cores.saturating_sub(decoders).max(1)) as i32);
        self.load_onto(device.resolve(&crate::dist::launch_info()?)?)
    }

    fn load_onto(&self, device: Device) -> Result<Loaded> {
        let run = &self.run;
        anyhow::ensure!(run.is_dir(), "run folder {} does not exist (give Model/<run-id>)", run.display());
        let ckpt = match self.checkpoint.as_str() {
            "latest" => checkpoint::latest(run)?,
            "best" if run.join("best").exists() => run.join("best"),
            "best" => checkpoint::latest(run).context("no best/ checkpoint (the run had no validation set)")?,
            dir => PathBuf::from(dir),
        };
        let saved = checkpoint::load_state(&ckpt)?.state;
        // The run's stored config is the newest (a resume may have changed settings since
        // this checkpoint); a checkpoint copied out of its run carries its own.
        let cfg = match run.join(crate::train::run_config::FILE).is_file() {
            true => crate::train::run_config::read(run)?,
            false => saved.config.clone(),
        };
        let vs = VarStore::new(device);
        let net = Net::new(&vs.root(), cfg.model.arch, &cfg.heads, saved.num_classes, cfg.model.task)?;
        let model = ckpt.join(checkpoint::MODEL_FILE);
        let named = Tensor::read_safetensors(&model)
            .map_err(crate::errors::cut)
            .with_context(|| format!("loading {}", model.display()))?;
        crate::model::weights::copy_into(&vs, &named).with_context(|| format!("loading {}", model.display()))?;
        Ok(Loaded { run: run.clone(), net, vs, cfg, checkpoint: ckpt, step: saved.step, device })
    }
}

impl Loaded {
    /// The weights, by name.
    pub fn vars(&self) -> &VarStore {
        &self.vs
    }

    /// Weights that no longer require gradients: what a traced graph takes as constants.
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }

    /// What a result line says it was computed with: checkpoint, step, libtorch threads.
    pub fn identity(&self) -> serde_json::Value {
        serde_json::json!({"checkpoint": self.checkpoint, "step": self.step, "threads": tch::get_num_threads()})
    }

    /// Refuses a model without an FR head for a command that needs embeddings.
    pub fn require_fr(&self, what: &str) -> Result<()> {
        let task = self.cfg.model.task;
        anyhow::ensure!(task.has(Head::Fr), "{} has no FR head to {what} (task {})", self.run.display(), task.name());
        Ok(())
    }
}
