//! What a `--resume` may change. A setting that decides what the weights are (their shapes,
//! or what the input means to them) is refused before any work, naming the flag and both
//! values: a checkpoint trained at 64 px and continued at 48 would leave `config.json`,
//! `export` and `eval` describing a model that no longer exists. Every other setting is a
//! legitimate change, honoured and recorded in the run's `config.json` (`run_config.rs`).
//! A run already at `--max-steps` is finished: resuming it does nothing.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::path::Path;

use super::checkpoint;
use crate::config::TrainConfig;

/// The settings a resume keeps, each with its flag: what the weights are.
fn fixed(cfg: &TrainConfig) -> [(&'static str, Value); 10] {
    let h = &cfg.heads;
    [
        ("the task", json!(cfg.model.task)),
        ("--arch", json!(cfg.model.arch)),
        ("--size", json!(cfg.model.size)),
        ("--emb-dim", json!(h.emb_dim)),
        ("--emb-bn", json!(h.emb_bn)),
        ("--margin", json!(h.margin)),
        ("--gender-hidden", json!(h.gender_hidden)),
        ("--gender-classes", json!(h.gender_classes)),
        ("--age-hidden", json!(h.age_hidden)),
        ("--age-classes", json!(h.age_classes)),
    ]
}

/// Refuses a resume whose settings change what the checkpoint's weights are.
pub fn check(saved: &TrainConfig, now: &TrainConfig, run_dir: &Path) -> Result<()> {
    let changed: Vec<String> = fixed(saved)
        .into_iter()
        .zip(fixed(now))
        .filter(|((_, was), (_, is))| was != is)
        .map(|((flag, was), (_, is))| format!("{flag} {} (the run has {})", shown(&is), shown(&was)))
        .collect();
    if !changed.is_empty() {
        bail!(
            "--resume {}: {} would change what the checkpoint's weights are; a resume keeps them. \
             Start a new run (--run-id, with --init to start from these weights) instead",
            run_dir.display(),
            changed.join(", ")
        );
    }
    Ok(())
}

/// A value as typed: strings without their JSON quotes.
fn shown(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The step of the newest checkpoint when it is at `--max-steps`: the run is finished (past
/// it is an error).
pub fn finished(run_dir: &Path, cfg: &TrainConfig) -> Result<Option<u64>> {
    let state = checkpoint::load_state(&checkpoint::latest(run_dir)?)?.state;
    checkpoint::check_resume_step(&state, cfg.schedule.max_steps)?;
    Ok(cfg.schedule.max_steps.filter(|&m| state.step >= m).map(|_| state.step))
}

/// Rank 0 says so on stderr; every rank logs it.
pub fn say_finished(run_dir: &Path, step: u64, max: u64) {
    let msg = format!(
        "{}: the run is finished: step {step} of --max-steps {max}; nothing left to train (give a larger \
         --max-steps to go on)",
        run_dir.display()
    );
    if crate::dist::env_rank().unwrap_or(0) == 0 {
        eprintln!("{msg}");
    }
    tracing::info!("{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_settings_are_refused_with_both_values_and_the_rest_allowed() {
        let mut saved = TrainConfig::default();
        saved.model.size = 64;
        let mut now = saved.clone();
        (now.optim.lr, now.schedule.max_steps, now.data.batch_size) = (0.01, Some(9), 7);
        check(&saved, &now, Path::new("Model/r")).unwrap();
        (now.model.size, now.heads.emb_dim) = (48, 16);
        let msg = format!("{:#}", check(&saved, &now, Path::new("Model/r")).unwrap_err());
        assert!(msg.contains("--size 48 (the run has 64)") && msg.contains("--emb-dim 16 (the run has 512)"), "{msg}");
        assert!(msg.contains("Model/r") && !msg.contains("--arch"), "{msg}");
    }
}
