//! One job per run directory. Rank 0 creates `Model/<run>/trainer.lock` exclusively,
//! holding its host, pid and job; a second job on the same run directory is refused at
//! once, naming the holder. A lock left by a dead process on this host is taken over
//! with a warning, and so is one left by an earlier allocation of this same Slurm job (a
//! requeued job keeps its id, and Slurm runs one allocation of a job at a time); `--force`
//! takes any lock over (the holder is known to be gone).

use super::provenance;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::dist::Comm;

pub const LOCK_FILE: &str = "trainer.lock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// The scheduler's job id (Slurm, PBS, LSF) when there is one.
    pub job: Option<String>,
    pub since: String,
    /// Slurm's `SLURM_RESTART_COUNT`: how many times the job had been requeued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
}

impl Holder {
    fn me() -> Holder {
        let job = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID"].iter().find_map(|v| std::env::var(v).ok());
        let restarts = provenance::slurm_restart_count();
        Holder {
            host: provenance::hostname(),
            pid: std::process::id(),
            job,
            since: super::runlog::utc_stamp(),
            restarts,
        }
    }

    fn describe(&self) -> String {
        let job = self.job.as_ref().map(|j| format!("job {j}, ")).unwrap_or_default();
        format!("{job}pid {} on {}, since {}", self.pid, self.host, self.since)
    }

    /// True only when the holder is certainly gone: an earlier allocation of `me`'s own
    /// job, or a process on this host that no longer exists.
    fn is_gone(&self, me: &Holder) -> bool {
        let earlier_allocation =
            self.job.is_some() && self.job == me.job && self.restarts.unwrap_or(0) < me.restarts.unwrap_or(0);
        earlier_allocation || self.is_dead()
    }

    /// Same host, and no such process.
    fn is_dead(&self) -> bool {
        self.host == provenance::hostname()
            && unsafe { libc::kill(self.pid as libc::pid_t, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

/// Held by rank 0 for the whole run; removed when the run ends normally.
pub struct RunLock {
    path: Option<PathBuf>,
    me: Holder,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            // Only our own lock: a --force run may have taken it over.
            if read(path).is_some_and(|h| h == self.me) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn read(path: &Path) -> Option<Holder> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Rank 0 takes the lock; every rank learns whether it did, and fails with rank 0's reason.
pub fn take(comm: &dyn Comm, run_dir: &Path, force: bool) -> Result<RunLock> {
    let mine = if comm.rank() == 0 { acquire(run_dir, force) } else { Ok(RunLock { path: None, me: Holder::me() }) };
    let mut verdict = match &mine {
        Ok(_) => Vec::new(),
        Err(e) => format!("{e:#}").into_bytes(),
    };
    comm.broadcast_bytes(&mut verdict, 0)?;
    if !verdict.is_empty() && comm.rank() != 0 {
        bail!("{}", String::from_utf8_lossy(&verdict));
    }
    mine
}

/// Creates the lock file exclusively, taking over a dead holder's (or any, with `force`).
pub fn acquire(run_dir: &Path, force: bool) -> Result<RunLock> {
    let path = run_dir.join(LOCK_FILE);
    let me = Holder::me();
    for _ in 0..3 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(&serde_json::to_vec(&me)?)
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(RunLock { path: Some(path), me });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = read(&path);
                let who = holder.as_ref().map(Holder::describe).unwrap_or_else(|| "an unreadable lock".into());
                if force || holder.as_ref().is_some_and(|h| h.is_gone(&me)) {
                    let why = if force { "--force" } else { "its process is gone" };
                    tracing::warn!("{}: taking over the lock of {who} ({why})", run_dir.display());
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                bail!(
                    "{} is in use by another job ({who}; lock {}). Wait for it to end, choose another --run-id, \
                     or pass --force if that job is gone",
                    run_dir.display(),
                    path.display()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("{}: could not take the lock {} (another job keeps creating it)", run_dir.display(), path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), false).unwrap();
        let msg = format!("{:#}", acquire(dir.path(), false).err().unwrap());
        assert!(msg.contains(&format!("pid {}", std::process::id())) && msg.contains("--force"), "{msg}");
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists());
        let _again = acquire(dir.path(), false).unwrap();
    }

    #[test]
    fn a_dead_holder_on_this_host_or_force_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let dead = Holder {
            host: provenance::hostname(),
            pid: i32::MAX as u32,
            job: None,
            since: "then".into(),
            restarts: None,
        };
        std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_vec(&dead).unwrap()).unwrap();
        let lock = acquire(dir.path(), false).unwrap();
        assert_eq!(read(&dir.path().join(LOCK_FILE)).unwrap().pid, std::process::id());
        drop(lock);
        let elsewhere =
            Holder { host: "other-host".into(), pid: 1, job: Some("42".into()), since: "then".into(), restarts: None };
        std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_vec(&elsewhere).unwrap()).unwrap();
        let msg = format!("{:#}", acquire(dir.path(), false).err().unwrap());
        assert!(msg.contains("job 42, pid 1 on other-host"), "{msg}");
        acquire(dir.path(), true).unwrap();
    }

    #[test]
    fn an_earlier_allocation_of_the_same_job_is_gone() {
        let at = |job: &str, restarts| Holder {
            host: "other-host".into(),
            pid: 1,
            job: Some(job.into()),
            since: "then".into(),
            restarts,
        };
        assert!(at("42", None).is_gone(&at("42", Some(1))));
        assert!(at("42", Some(1)).is_gone(&at("42", Some(2))));
        assert!(!at("42", Some(1)).is_gone(&at("42", Some(1))), "the same allocation is alive");
        assert!(!at("41", None).is_gone(&at("42", Some(3))), "another job");
    }
}
