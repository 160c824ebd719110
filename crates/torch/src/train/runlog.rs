//! The run's files besides checkpoints: `log.txt` (JSON lines, rank 0), the seed's
//! `loss_debug/<task>_loss.txt` (comma-separated per-step losses, rank 0) and
//! `rank<k>.log` (every rank's own events); with `--tensorboard`, `log.txt`'s events are
//! mirrored as TensorBoard scalars in `tensorboard/` (rank 0).
//!
//! One history: the files describe the path training actually took. A rollback cuts them
//! back to the state it returns to (the discarded losses go into its `rollback` event),
//! and a resume cuts them back to the checkpoint's step, so every step appears once.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::Head;
use trainer_data::watch::tensorboard::RunScalars;

/// Events that record what happened to the run rather than a step of its path; a
/// rollback keeps them (a resume replays the path, so it keeps only the start events).
const ROLLBACK_KEEPS: [&str; 3] = ["start", "resume", "rollback"];
const RESUME_KEEPS: [&str; 2] = ["start", "resume"];

pub struct RunLog {
    rank: usize,
    dir: PathBuf,
    /// `log.txt`, rank 0 only.
    log: Option<BufWriter<File>>,
    /// Rank 0 writes the loss files; every rank counts, so the state agrees everywhere.
    losses: BTreeMap<Head, LossFile>,
    rank_log: BufWriter<File>,
    /// `--tensorboard`, rank 0 only.
    tensorboard: Option<RunScalars>,
}

struct LossFile {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    count: u64,
}

impl RunLog {
    /// Opens the run's logs for appending. On resume (`cut_to` = the checkpoint's step and
    /// its loss counts) the files are first cut back to that state.
    pub fn open(
        run_dir: &Path,
        rank: usize,
        heads: &[Head],
        cut_to: Option<(u64, &BTreeMap<Head, u64>)>,
    ) -> Result<RunLog> {
        let rank_log_path = run_dir.join(format!("rank{rank}.log"));
        let rank_log = BufWriter::new(append(&rank_log_path)?);
        crate::errors::set_rank_log(rank_log_path);
        let dir = run_dir.join("loss_debug");
        let log_path = run_dir.join("log.txt");
        if rank == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut losses = BTreeMap::new();
        for &head in heads {
            let path = dir.join(format!("{}_loss.txt", head.name()));
            let count = match cut_to {
                Some((_, counts)) => counts.get(&head).copied().unwrap_or(0),
                None => 0,
            };
            if rank == 0 && cut_to.is_some() {
                cut_loss_file(&path, count)?;
            }
            let writer = if rank == 0 { Some(BufWriter::new(append(&path)?)) } else { None };
            losses.insert(head, LossFile { path, writer, count });
        }
        let log = if rank == 0 {
            if let Some((step, _)) = cut_to {
                cut_log(&log_path, step, &RESUME_KEEPS)?;
            }
            Some(BufWriter::new(append(&log_path)?))
        } else {
            None
        };
        Ok(RunLog { rank, dir: run_dir.to_path_buf(), log, losses, rank_log, tensorboard: None })
    }

    /// From now on every `log.txt` event is also written as TensorBoard scalars, into a
    /// new event file in `<run>/tensorboard/` (rank 0; a resume adds a file).
    pub fn enable_tensorboard(&mut self) -> Result<()> {
        if self.log.is_some() {
            self.tensorboard = Some(RunScalars::create(&self.dir.join("tensorboard"))?);
        }
        Ok(())
    }

    /// One JSON line in `log.txt` (rank 0 only), stamped with the wall time.
    pub fn event(&mut self, mut value: Value) -> Result<()> {
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        if let Value::Object(map) = &mut value {
            map.insert("time".into(), json!(unix_time()));
        }
        writeln!(log, "{value}")?;
        log.flush()?;
        if let Some(tb) = self.tensorboard.as_mut() {
            tb.event(&value)?;
        }
        Ok(())
    }

    /// A line in this rank's own log, also sent to tracing.
    pub fn rank_note(&mut self, msg: &str) -> Result<()> {
        tracing::info!("rank {}: {msg}", self.rank);
        writeln!(self.rank_log, "{:.3} rank {} {msg}", unix_time(), self.rank)?;
        self.rank_log.flush()?;
        Ok(())
    }

    /// One step's loss for `head`, in the seed's `0.1234,` format.
    pub fn loss(&mut self, head: Head, loss: f64) -> Result<()> {
        if let Some(f) = self.losses.get_mut(&head) {
            f.count += 1;
            if let Some(w) = f.writer.as_mut() {
                write!(w, "{loss:.6},")?;
            }
        }
        Ok(())
    }

    /// Losses written per head so far (saved in checkpoints and snapshots).
    pub fn counts(&self) -> BTreeMap<Head, u64> {
        self.losses.iter().map(|(&h, f)| (h, f.count)).collect()
    }

    /// A rollback to `step`, whose loss files held `counts`: cuts every file back to that
    /// state and returns the losses it discarded, per head (rank 0; empty elsewhere).
    pub fn rewind(&mut self, step: u64, counts: &BTreeMap<Head, u64>) -> Result<BTreeMap<Head, Vec<f64>>> {
        self.flush()?;
        let mut discarded = BTreeMap::new();
        for (head, f) in &mut self.losses {
            let keep = counts.get(head).copied().unwrap_or(0);
            f.count = keep;
            if f.writer.is_some() {
                f.writer = None;
                discarded.insert(*head, cut_loss_file(&f.path, keep)?);
                f.writer = Some(BufWriter::new(append(&f.path)?));
            }
        }
        if self.log.take().is_some() {
            let path = self.dir.join("log.txt");
            cut_log(&path, step, &ROLLBACK_KEEPS)?;
            self.log = Some(BufWriter::new(append(&path)?));
        }
        Ok(discarded)
    }

    pub fn flush(&mut self) -> Result<()> {
        for w in self.losses.values_mut().filter_map(|f| f.writer.as_mut()) {
            w.flush()?;
        }
        if let Some(log) = self.log.as_mut() {
            log.flush()?;
        }
        self.rank_log.flush()?;
        Ok(())
    }
}

/// Cuts a run's files back to before its first step: what a fresh start in a directory that
/// an attempt without any checkpoint left behind begins with.
pub fn forget_steps(run_dir: &Path) -> Result<()> {
    cut_log(&run_dir.join("log.txt"), 0, &RESUME_KEEPS)?;
    let Ok(entries) = fs::read_dir(run_dir.join("loss_debug")) else { return Ok(()) };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_name().to_string_lossy().ends_with("_loss.txt") {
            cut_loss_file(&entry.path(), 0)?;
        }
    }
    Ok(())
}

fn append(path: &Path) -> Result<File> {
    trainer_data::output::open_append(path)
}

/// Keeps the first `keep` losses of a loss file; returns the ones after them.
fn cut_loss_file(path: &Path, keep: u64) -> Result<Vec<f64>> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(vec![]) };
    let values: Vec<&str> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    let keep = (keep as usize).min(values.len());
    let mut out = values[..keep].join(",");
    if !out.is_empty() {
        out.push(',');
    }
    replace(path, out.as_bytes())?;
    Ok(values[keep..].iter().map(|v| v.parse().unwrap_or(f64::NAN)).collect())
}

/// Drops the lines of `log.txt` about steps after `step`, except the events named in
/// `keep`. Lines that are not JSON are kept as they are.
fn cut_log(path: &Path, step: u64, keep: &[&str]) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| {
            let Ok(v) = serde_json::from_str::<Value>(line) else { return true };
            let later = v.get("step").and_then(Value::as_u64).is_some_and(|s| s > step);
            !later || v.get("event").and_then(Value::as_str).is_some_and(|e| keep.contains(&e))
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    replace(path, kept.as_bytes())
}

/// Replaces a file's contents atomically (a crash leaves the old or the new file), under
/// the output rule.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    trainer_data::output::write_file(path, bytes)
}

pub fn unix_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `YYYYmmdd-HHMMSS` in UTC, for default run ids.
pub fn utc_stamp() -> String {
    let secs = unix_time() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(dir: &Path) -> Vec<Value> {
        fs::read_to_string(dir.join("log.txt")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn resume_cuts_the_files_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = RunLog::open(dir.path(), 0, &[Head::Fr], None).unwrap();
            log.event(json!({"event": "start", "step": 0})).unwrap();
            for (step, l) in [3.0, 2.0, 1.0, 0.5].into_iter().enumerate() {
                log.loss(Head::Fr, l).unwrap();
                log.event(json!({"step": step + 1, "loss": l})).unwrap();
            }
            log.flush().unwrap();
        }
        let counts = BTreeMap::from([(Head::Fr, 2)]);
        let log = RunLog::open(dir.path(), 0, &[Head::Fr], Some((2, &counts))).unwrap();
        assert_eq!(log.counts()[&Head::Fr], 2);
        let text = fs::read_to_string(dir.path().join("loss_debug/FR_loss.txt")).unwrap();
        assert_eq!(text, "3.000000,2.000000,");
        let steps: Vec<Value> = lines(dir.path()).iter().map(|v| v["step"].clone()).collect();
        assert_eq!(steps, vec![json!(0), json!(1), json!(2)]);
    }

    #[test]
    fn rewind_returns_the_discarded_losses_and_keeps_rollback_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path(), 0, &[Head::Fr], None).unwrap();
        for step in 1..=4u64 {
            log.loss(Head::Fr, step as f64).unwrap();
            log.event(json!({"step": step, "loss": step})).unwrap();
        }
        log.event(json!({"event": "rollback", "step": 4, "to_step": 2})).unwrap();
        let gone = log.rewind(2, &BTreeMap::from([(Head::Fr, 2)])).unwrap();
        assert_eq!(gone[&Head::Fr], vec![3.0, 4.0]);
        log.loss(Head::Fr, 9.0).unwrap();
        log.flush().unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("loss_debug/FR_loss.txt")).unwrap(),
            "1.000000,2.000000,9.000000,"
        );
        let kept: Vec<Value> = lines(dir.path());
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(kept[2]["event"], "rollback");
    }

    #[test]
    fn stamp_has_the_expected_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
