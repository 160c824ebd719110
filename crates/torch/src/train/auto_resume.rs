//! `trainer train --auto-resume`: the same command, typed again (by a requeued Slurm job),
//! continues its own run. The run directory is `--out/--run-id`, the run id defaulting under
//! Slurm to `<task>-slurm-<job id>`, which a requeued job keeps. A directory with a
//! checkpoint is resumed as `--resume` would; one without is started fresh (the steps an
//! attempt logged before dying uncheckpointed are forgotten, so the history stays one);
//! a directory that holds another run is refused.

use anyhow::{bail, Context, Result};
use clap::ArgMatches;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use super::args::TrainArgs;
use super::checkpoint;
use super::{resume_rules, run_config};
use crate::config::TrainConfig;
use trainer_data::term::BadSettings;

/// The environment variable naming a file where rank 0 writes the run directory, so that
/// `launch/slurm.sbatch` can read the run's log when the job step ends.
pub const RUN_DIR_FILE_VAR: &str = "TRAINER_RUN_DIR_FILE";

/// Where a `train` command starts from.
pub enum Start {
    /// The settings, and the run directory to resume (`None`: a fresh run).
    Train(Box<TrainConfig>, Option<PathBuf>),
    /// The run to resume is already at `--max-steps`: nothing is left to train.
    Finished { run_dir: PathBuf, step: u64, max: u64 },
}

/// Without `--auto-resume`, the settings and `--resume` as typed.
pub fn start_point(args: &TrainArgs, matches: &ArgMatches) -> Result<Start> {
    if !args.auto_resume {
        let cfg = args.resolve(matches)?;
        if let Some(run_dir) = &args.resume {
            resume_rules::check(&run_config::read(run_dir)?, &cfg, run_dir).context(BadSettings)?;
            if let Some(step) = resume_rules::finished(run_dir, &cfg)? {
                return Ok(Start::Finished {
                    run_dir: run_dir.clone(),
                    step,
                    max: cfg.schedule.max_steps.unwrap_or(step),
                });
            }
        }
        return Ok(Start::Train(Box::new(cfg), args.resume.clone()));
    }
    let fresh = args.resolve_from(None, matches)?;
    let run_id = run_id(&fresh, |v| std::env::var(v).ok()).context(BadSettings)?;
    let run_dir = fresh.run.out.join(&run_id);
    note_run_dir(&run_dir)?;
    if checkpoint::list(&run_dir)?.is_empty() {
        same_run_or_none(&run_dir, &fresh).context(BadSettings)?;
        if crate::dist::env_rank().unwrap_or(0) == 0 {
            forget_uncheckpointed(&run_dir, args.force)?;
        }
        let mut cfg = fresh;
        cfg.run.run_id = Some(run_id);
        return Ok(Start::Train(Box::new(cfg), None));
    }
    same_run_or_none(&run_dir, &fresh).context(BadSettings)?;
    let cfg = args.resolve_from(Some(&run_dir), matches)?;
    resume_rules::check(&run_config::read(&run_dir)?, &cfg, &run_dir).context(BadSettings)?;
    if let Some(step) = resume_rules::finished(&run_dir, &cfg)? {
        return Ok(Start::Finished { run_dir, step, max: cfg.schedule.max_steps.unwrap_or(step) });
    }
    Ok(Start::Train(Box::new(cfg), Some(run_dir)))
}

/// `--run-id` when given; under Slurm, one derived from the job id.
fn run_id(cfg: &TrainConfig, env: impl Fn(&str) -> Option<String>) -> Result<String> {
    if let Some(id) = &cfg.run.run_id {
        return Ok(id.clone());
    }
    match env("SLURM_JOB_ID").filter(|j| !j.trim().is_empty()) {
        Some(job) => Ok(format!("{}-slurm-{}", cfg.model.task.name(), job.trim())),
        None => bail!(
            "--auto-resume needs to know which run to come back to: give --run-id (under Slurm it defaults to \
             <task>-slurm-<job id>)"
        ),
    }
}

/// The settings that make a run that run: a directory trained with other ones is another
/// run, which a resume would silently corrupt.
fn identity(cfg: &TrainConfig) -> [(&'static str, Value); 6] {
    [
        ("task", json!(cfg.model.task)),
        ("train_sets", json!(cfg.data.train_sets)),
        ("arch", json!(cfg.model.arch)),
        ("size", json!(cfg.model.size)),
        ("emb_dim", json!(cfg.heads.emb_dim)),
        ("seed", json!(cfg.run.seed)),
    ]
}

/// Refuses `run_dir` when its `config.json` belongs to a run with another identity.
fn same_run_or_none(run_dir: &Path, cfg: &TrainConfig) -> Result<()> {
    let path = run_dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) if !checkpoint::list(run_dir)?.is_empty() => {
            bail!(
                "--auto-resume: {} holds checkpoints but no config.json: not a run this command can continue",
                run_dir.display()
            )
        }
        Err(_) => return Ok(()),
    };
    let saved: TrainConfig = serde_json::from_str(&text)
        .with_context(|| format!("--auto-resume: {} is not a valid run config", path.display()))?;
    let differs: Vec<String> = identity(&saved)
        .into_iter()
        .zip(identity(cfg))
        .filter(|((_, was), (_, now))| was != now)
        .map(|((key, was), (_, now))| format!("{key} {was} there, {now} here"))
        .collect();
    if !differs.is_empty() {
        bail!(
            "--auto-resume: {} holds another run ({}); choose another --run-id or --out",
            run_dir.display(),
            differs.join("; ")
        );
    }
    Ok(())
}

/// Rank 0 tells the batch script which run directory it trains in.
fn note_run_dir(run_dir: &Path) -> Result<()> {
    let Some(file) = std::env::var_os(RUN_DIR_FILE_VAR) else { return Ok(()) };
    if crate::dist::env_rank().unwrap_or(0) != 0 {
        return Ok(());
    }
    let path = PathBuf::from(file);
    std::fs::write(&path, format!("{}\n", run_dir.display()))
        .with_context(|| format!("writing the run directory to {} ({RUN_DIR_FILE_VAR})", path.display()))
}

/// Forgets what an attempt that never checkpointed logged, before the fresh start (rank 0
/// only, holding the run's lock meanwhile, so a live job's files are never touched).
fn forget_uncheckpointed(run_dir: &Path, force: bool) -> Result<()> {
    if !run_dir.join("log.txt").exists() || !checkpoint::list(run_dir)?.is_empty() {
        return Ok(());
    }
    let _lock = super::run_lock::acquire(run_dir, force)?;
    tracing::warn!("{}: an earlier attempt left no checkpoint; starting the run again from step 0", run_dir.display());
    super::runlog::forget_steps(run_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |v| vars.iter().find(|(k, _)| *k == v).map(|(_, x)| x.to_string())
    }

    #[test]
    fn run_id_comes_from_the_flag_or_the_slurm_job() {
        let mut cfg = TrainConfig::default();
        assert_eq!(run_id(&cfg, env(&[("SLURM_JOB_ID", "4242")])).unwrap(), "FR-slurm-4242");
        let msg = format!("{:#}", run_id(&cfg, env(&[])).unwrap_err());
        assert!(msg.contains("--run-id"), "{msg}");
        cfg.run.run_id = Some("mine".into());
        assert_eq!(run_id(&cfg, env(&[("SLURM_JOB_ID", "4242")])).unwrap(), "mine");
    }

    #[test]
    fn another_run_is_refused_and_the_same_one_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig::default();
        same_run_or_none(dir.path(), &cfg).unwrap();
        std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let mut same = cfg.clone();
        (same.schedule.max_steps, same.optim.lr) = (Some(99), 0.5);
        same_run_or_none(dir.path(), &same).unwrap();
        let mut other = cfg.clone();
        (other.model.size, other.run.seed) = (64, 7);
        let msg = format!("{:#}", same_run_or_none(dir.path(), &other).unwrap_err());
        assert!(
            msg.contains("another run") && msg.contains("size 112 there, 64 here") && msg.contains("seed"),
            "{msg}"
        );
    }

    #[test]
    fn checkpoints_without_a_config_are_not_continued() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(checkpoint::step_dir(dir.path(), 5)).unwrap();
        let msg = format!("{:#}", same_run_or_none(dir.path(), &TrainConfig::default()).unwrap_err());
        assert!(msg.contains("no config.json"), "{msg}");
    }
}
