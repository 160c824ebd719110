//! One run per directory. A fresh `train` on a directory that already holds a run is
//! refused (two runs in one directory would share `log.txt`, `loss_debug/` and
//! `checkpoints/`); `--force` replaces it, keeping the old run in `replaced-run/` until the
//! new one's first checkpoint. A fresh run that fails while being set up leaves nothing
//! behind: no empty directory that looks like a run, and a replaced run comes back.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::run_lock::{take, RunLock, LOCK_FILE};
use crate::dist::Comm;

/// Where a replaced run waits for the new run's first checkpoint.
pub const REPLACED: &str = "replaced-run";

/// How `train` may use a directory that already holds files.
#[derive(Clone, Copy, Debug, Default)]
pub struct Claiming {
    /// `--resume` or `--auto-resume`: the directory's run is this one.
    pub continues: bool,
    /// `--force`: take over its lock, and replace a run a fresh start finds there.
    pub force: bool,
}

/// Rank 0's hold on a fresh run's directory while the run is set up.
pub struct Claim {
    dir: PathBuf,
    /// This process made the directory.
    created: bool,
    /// The old run, moved aside by `--force`.
    replaced: Option<PathBuf>,
    /// Undo on drop (the set-up failed).
    armed: bool,
}

/// Creates and locks the run directory, then rank 0 checks it and moves a replaced run
/// aside; every rank fails with rank 0's reason. Rank 0 creates the directory before the
/// lock's broadcast and the other ranks after it, so rank 0 knows whether it was there.
pub fn claim(comm: &dyn Comm, dir: &Path, how: Claiming) -> Result<(RunLock, Claim)> {
    let rank0 = comm.rank() == 0;
    let existed = dir.exists();
    let create = || std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()));
    if rank0 {
        create()?;
    }
    let lock = take(comm, dir, how.force)?;
    if !rank0 {
        create()?;
    }
    let mine = match rank0 {
        true => settle(dir, existed, how),
        false => Ok(Claim { dir: dir.to_path_buf(), created: false, replaced: None, armed: false }),
    };
    let mut verdict = mine.as_ref().err().map(|e| format!("{e:#}").into_bytes()).unwrap_or_default();
    comm.broadcast_bytes(&mut verdict, 0)?;
    if !verdict.is_empty() && !rank0 {
        bail!("{}", String::from_utf8_lossy(&verdict));
    }
    Ok((lock, mine?))
}

fn settle(dir: &Path, existed: bool, how: Claiming) -> Result<Claim> {
    let mut claim = Claim { dir: dir.to_path_buf(), created: !existed, replaced: None, armed: !how.continues };
    let held = run_files(dir)?;
    if how.continues || held.is_empty() {
        return Ok(claim);
    }
    if !how.force {
        claim.armed = false;
        bail!(
            "{} already holds a run ({}): continue it with --resume {}, or start a new one with another --run-id \
             (--force replaces it)",
            dir.display(),
            held.join(", "),
            dir.display()
        );
    }
    let aside = dir.join(REPLACED);
    std::fs::create_dir(&aside).with_context(|| format!("--force: creating {}", aside.display()))?;
    for name in &held {
        std::fs::rename(dir.join(name), aside.join(name))
            .with_context(|| format!("--force: moving {} aside", dir.join(name).display()))?;
    }
    tracing::warn!(
        "--force: the run in {} is replaced; its files wait in {REPLACED}/ until the new run's first checkpoint",
        dir.display()
    );
    claim.replaced = Some(aside);
    Ok(claim)
}

/// The directory's entries other than the lock this job holds.
fn run_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE)
        .collect();
    names.sort();
    Ok(names)
}

impl Claim {
    /// The set-up succeeded: the directory is the new run's.
    pub fn keep(mut self) -> Replaced {
        self.armed = false;
        Replaced(self.replaced.take())
    }

    /// Puts the directory back as it was: removes what this run wrote and returns a
    /// replaced run to its place.
    fn undo(&self) -> Result<()> {
        if self.created {
            return std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()));
        }
        let Some(aside) = &self.replaced else { return Ok(()) };
        for name in run_files(&self.dir)?.into_iter().filter(|n| n != REPLACED) {
            let path = self.dir.join(name);
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        for name in run_files(aside)? {
            std::fs::rename(aside.join(&name), self.dir.join(&name))?;
        }
        std::fs::remove_dir(aside).with_context(|| format!("removing {}", aside.display()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.undo() {
                tracing::warn!("the run failed before its first step, and cleaning up after it failed too: {e:#}");
            }
        }
    }
}

/// A run replaced by `--force`, deleted once the new run has a checkpoint.
#[derive(Default)]
pub struct Replaced(Option<PathBuf>);

impl Replaced {
    /// Called after each checkpoint; the first one removes the old run.
    pub fn checkpointed(&mut self) -> Result<()> {
        match self.0.take() {
            Some(aside) => std::fs::remove_dir_all(&aside)
                .with_context(|| format!("removing the replaced run in {}", aside.display())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle_in(dir: &Path, existed: bool, force: bool) -> Result<Claim> {
        settle(dir, existed, Claiming { continues: false, force })
    }

    #[test]
    fn a_failed_replacement_puts_the_old_run_back_and_a_kept_one_removes_it_at_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        std::fs::create_dir_all(dir.join("checkpoints/step-000000004")).unwrap();
        std::fs::write(dir.join("log.txt"), "old\n").unwrap();
        let msg = format!("{:#}", settle_in(&dir, true, false).err().unwrap());
        assert!(msg.contains("already holds a run (checkpoints, log.txt)") && msg.contains("--resume"), "{msg}");
        let claim = settle_in(&dir, true, true).unwrap();
        std::fs::write(dir.join("log.txt"), "new\n").unwrap();
        drop(claim);
        assert_eq!(std::fs::read_to_string(dir.join("log.txt")).unwrap(), "old\n");
        assert!(dir.join("checkpoints/step-000000004").exists() && !dir.join(REPLACED).exists());
        let mut replaced = settle_in(&dir, true, true).unwrap().keep();
        assert!(dir.join(REPLACED).join("log.txt").exists());
        replaced.checkpointed().unwrap();
        assert!(!dir.join(REPLACED).exists());
    }

    #[test]
    fn a_directory_made_for_a_run_that_fails_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        std::fs::create_dir_all(&dir).unwrap();
        drop(settle_in(&dir, false, false).unwrap());
        assert!(!dir.exists());
    }
}
