//! The set-up steps' details: the run directory and resume point rank 0 picks, the
//! threads, the learning-rate scaling, and what the logs say at the start.

use anyhow::{bail, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Device;

use crate::config::TrainConfig;
use crate::dist::{Comm, LaunchInfo, ReduceOp};
use crate::model::{ClassSlice, Head};
use crate::train::checkpoint;
use crate::train::pools::Pools;
use crate::train::provenance;
use crate::train::run_config;
use crate::train::runlog::{utc_stamp, RunLog};
use crate::train::state::TrainState;

/// What the start of the logs needs to know about the session being set up.
pub(super) struct Start<'a> {
    pub cfg: &'a TrainConfig,
    pub comm: &'a dyn Comm,
    pub launch: &'a LaunchInfo,
    pub device: Device,
    pub threads: usize,
    pub run_dir: &'a Path,
    pub checkpoint: Option<&'a Path>,
}

impl Start<'_> {
    /// The run's stored config (with the overrides of a resume), this rank's notes, and
    /// the `start` or `resume` event.
    pub fn open_logs(
        &self,
        log: &mut RunLog,
        pools: &Pools,
        state: &TrainState,
        slice: Option<ClassSlice>,
        datasets: serde_json::Value,
    ) -> Result<()> {
        let (cfg, comm) = (self.cfg, self.comm);
        if cfg.run.tensorboard {
            log.enable_tensorboard()?;
        }
        let overrides = match self.checkpoint {
            Some(_) => run_config::overrides(&run_config::read(self.run_dir)?, cfg)?,
            None => vec![],
        };
        if comm.rank() == 0 {
            run_config::write(self.run_dir, cfg)?;
        }
        if !overrides.is_empty() {
            log.rank_note(&format!("settings changed on resume: {}", overrides.join(", ")))?;
        }
        self.note_rank(log, pools, state, slice)?;
        let heads = cfg.heads();
        let effective_batch = pools.images_per_step(&heads) * cfg.optim.accum * comm.world();
        let mut event = json!({
            "event": if self.checkpoint.is_some() { "resume" } else { "start" }, "step": state.step,
            "checkpoint": self.checkpoint, "world_size": comm.world(), "ranks_per_node": self.launch.local_world,
            "effective_batch": effective_batch, "datasets": datasets,
            "device": format!("{:?}", self.device), "backend": comm.backend(), "num_classes": state.num_classes,
            "slurm_restart_count": crate::train::provenance::slurm_restart_count(),
            "command": std::env::args().collect::<Vec<_>>(), "version": env!("CARGO_PKG_VERSION"),
            "versions": provenance::versions(comm.backend()), "hosts": provenance::hosts(comm)?,
            "records_per_rank": provenance::records_per_rank(comm, pools)?, "config": cfg,
        });
        if self.checkpoint.is_some() {
            event["overrides"] = json!(overrides);
        }
        log.event(event)?;
        crate::dist::failure::set_memory_hint(format!(
            "batch size {} per rank (effective batch {effective_batch})",
            pools.images_per_step(&heads),
        ));
        Ok(())
    }

    /// What this rank reads and runs on, in its own log.
    fn note_rank(&self, log: &mut RunLog, pools: &Pools, state: &TrainState, slice: Option<ClassSlice>) -> Result<()> {
        let (comm, device, threads) = (self.comm, self.device, self.threads);
        for pool in pools.iter() {
            let shards: Vec<String> =
                pool.view.dataset.shards.iter().map(|s| s.bin_path().display().to_string()).collect();
            log.rank_note(&format!(
                "pid {}, device {device:?}, backend {}, world {}, threads {threads}, {} data: shards {shards:?}{}, {} records",
                std::process::id(),
                comm.backend(),
                comm.world(),
                pool.key,
                if pool.striped { " (record stripes)" } else { "" },
                pool.view.records.len()
            ))?;
        }
        if let Some(ckpt) = self.checkpoint {
            log.rank_note(&format!(
                "resuming from {} at step {} (rank 0's choice, state.json CRC checked)",
                ckpt.display(),
                state.step
            ))?;
        }
        if device.is_cuda() {
            crate::amp::check(self.cfg.optim.amp)?;
        }
        if self.cfg.optim.amp.enabled() && !device.is_cuda() {
            log.rank_note("--amp's autocast applies to CUDA devices only; training in f32 on the CPU")?;
        }
        if let Some(sl) = slice {
            log.rank_note(&format!(
                "Partial FC: identities {}..{} of {} on this rank, sample rate {}",
                sl.start,
                sl.start + sl.len,
                state.num_classes,
                self.cfg.model.sample_rate
            ))?;
        }
        if state.world_size != comm.world() {
            log.rank_note(&format!(
                "resumed with world size {}, checkpoint had {}: the rest of each data epoch is re-dealt to these ranks",
                comm.world(),
                state.world_size
            ))?;
        }
        Ok(())
    }
}

/// `--scale-lr`: every learning rate × world size × accumulation.
pub(super) fn scale_lr(cfg: &mut TrainConfig, factor: f64) {
    cfg.optim.lr *= factor;
    for lr in [&mut cfg.optim.lr_fr, &mut cfg.optim.lr_gender, &mut cfg.optim.lr_age].into_iter().flatten() {
        *lr *= factor;
    }
}

/// The checkpoint rank 0 chose and its state as rank 0 read it, with `--amp` as given now
/// (the flag wins; a running scale carries on).
pub(super) fn resume_point(comm: &dyn Comm, run_dir: &Path, cfg: &TrainConfig) -> Result<(PathBuf, TrainState)> {
    let ckpt = checkpoint::agree_latest(comm, run_dir)?;
    let mut state = checkpoint::load_state(&ckpt)?.state;
    checkpoint::check_resume_step(&state, cfg.schedule.max_steps)?;
    state.loss_scale = match (cfg.optim.amp.scales_loss(), state.loss_scale.take()) {
        (true, kept) => kept.or_else(|| Some(crate::train::scaler::LossScale::new(cfg.optim.amp_init_scale))),
        (false, _) => None,
    };
    tracing::info!("resuming {} at step {}", ckpt.display(), state.step);
    Ok((ckpt, broadcast_state(comm, state)?))
}

/// Rank 0 picks the run directory (a new timestamped one, or the resumed one) for all.
pub(super) fn agree_run_dir(comm: &dyn Comm, cfg: &TrainConfig, resume: Option<&Path>) -> Result<PathBuf> {
    let mut bytes = match resume {
        Some(dir) => dir.to_string_lossy().into_owned().into_bytes(),
        None => {
            let id = cfg.run.run_id.clone().unwrap_or_else(|| format!("{}-{}", cfg.model.task.name(), utc_stamp()));
            cfg.run.out.join(id).to_string_lossy().into_owned().into_bytes()
        }
    };
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(PathBuf::from(String::from_utf8(bytes)?))
}

fn broadcast_state(comm: &dyn Comm, state: TrainState) -> Result<TrainState> {
    if comm.world() == 1 {
        return Ok(state);
    }
    let mut bytes = serde_json::to_vec(&state)?;
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// For the start event, each pool's datasets and, per task, the column it reads and the
/// records (over all ranks) that have a known target. A task with none in its training
/// data is an error before step 1, naming the datasets and columns.
pub(super) fn describe_targets(comm: &dyn Comm, pools: &Pools) -> Result<serde_json::Value> {
    let mut out = Vec::new();
    for pool in pools.iter() {
        let mut counts: Vec<f64> = pool
            .view
            .sets
            .iter()
            .flat_map(|s| std::iter::once(s.records as f64).chain(s.targets.iter().map(|t| t.2 as f64)))
            .collect();
        comm.all_reduce_f64(&mut counts, ReduceOp::Sum)?;
        let mut counts = counts.into_iter();
        let mut sets = Vec::new();
        let mut known_per_head: BTreeMap<Head, (f64, Vec<String>)> = BTreeMap::new();
        for set in &pool.view.sets {
            let records = counts.next().unwrap_or(0.0);
            let mut targets = Vec::new();
            for &(head, column, _) in &set.targets {
                let known = counts.next().unwrap_or(0.0);
                if pool.heads.contains(&head) {
                    let entry = known_per_head.entry(head).or_default();
                    entry.0 += known;
                    entry.1.push(format!("{} (column {})", set.spec, column.name()));
                    targets.push(json!({"task": head, "column": column, "known": known as u64}));
                    tracing::info!(
                        "{} learns from {} (column `{}`): {} of {} records labelled",
                        head.name(),
                        set.spec,
                        column.name(),
                        known,
                        records
                    );
                }
            }
            sets.push(json!({"dataset": set.spec.to_string(), "records": records as u64, "targets": targets}));
        }
        for (head, (known, where_)) in known_per_head {
            if known == 0.0 {
                bail!("{} has no labelled record in its training data: {} (unknown is -1; give @label/@gender/@age or --target-column if another column holds the class)", head.name(), where_.join(", "));
            }
        }
        out.push(json!({"pool": pool.key, "striped": pool.striped, "sets": sets}));
    }
    Ok(json!(out))
}
