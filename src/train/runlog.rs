//! The run's files besides checkpoints: `log.txt` (JSON lines, rank 0), the seed's
//! `loss_debug/<task>_loss.txt` (comma-separated per-step losses, rank 0) and
//! `rank<k>.log` (every rank's own events).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct RunLog {
    rank: usize,
    log: Option<BufWriter<File>>,
    losses: Vec<(String, BufWriter<File>)>,
    rank_log: BufWriter<File>,
}

impl RunLog {
    /// Opens the run's logs for appending. On resume, the loss files are cut back to
    /// `keep_losses` values so they line up with the checkpoint's step again.
    pub fn open(run_dir: &Path, rank: usize, tasks: &[&str], keep_losses: Option<u64>) -> Result<RunLog> {
        let rank_log = BufWriter::new(append(&run_dir.join(format!("rank{rank}.log")))?);
        let (log, losses) = if rank == 0 {
            let dir = run_dir.join("loss_debug");
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut losses = vec![];
            for task in tasks {
                let path = dir.join(format!("{task}_loss.txt"));
                if let Some(n) = keep_losses {
                    truncate_losses(&path, n as usize)?;
                }
                losses.push((task.to_string(), BufWriter::new(append(&path)?)));
            }
            (Some(BufWriter::new(append(&run_dir.join("log.txt"))?)), losses)
        } else {
            (None, vec![])
        };
        Ok(RunLog { rank, log, losses, rank_log })
    }

    /// One JSON line in `log.txt` (rank 0 only), stamped with the wall time.
    pub fn event(&mut self, mut value: Value) -> Result<()> {
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        if let Value::Object(map) = &mut value {
            map.insert("time".into(), json!(unix_time()));
        }
        writeln!(log, "{value}")?;
        log.flush()?;
        Ok(())
    }

    /// A line in this rank's own log, also sent to tracing.
    pub fn rank_note(&mut self, msg: &str) -> Result<()> {
        tracing::info!("rank {}: {msg}", self.rank);
        writeln!(self.rank_log, "{:.3} rank {} {msg}", unix_time(), self.rank)?;
        self.rank_log.flush()?;
        Ok(())
    }

    /// One step's loss for `task`, in the seed's `0.1234,` format.
    pub fn loss(&mut self, task: &str, loss: f64) -> Result<()> {
        if let Some((_, w)) = self.losses.iter_mut().find(|(t, _)| t == task) {
            write!(w, "{loss:.6},")?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        for (_, w) in &mut self.losses {
            w.flush()?;
        }
        self.rank_log.flush()?;
        Ok(())
    }
}

fn append(path: &PathBuf) -> Result<File> {
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))
}

fn truncate_losses(path: &Path, keep: usize) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).take(keep).collect();
    let mut out = kept.join(",");
    if !out.is_empty() {
        out.push(',');
    }
    fs::write(path, out).with_context(|| format!("rewriting {}", path.display()))
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

    #[test]
    fn resume_cuts_the_loss_file_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = RunLog::open(dir.path(), 0, &["FR"], None).unwrap();
            for l in [3.0, 2.0, 1.0, 0.5] {
                log.loss("FR", l).unwrap();
            }
            log.flush().unwrap();
        }
        RunLog::open(dir.path(), 0, &["FR"], Some(2)).unwrap();
        let text = fs::read_to_string(dir.path().join("loss_debug/FR_loss.txt")).unwrap();
        assert_eq!(text, "3.000000,2.000000,");
    }

    #[test]
    fn stamp_has_the_expected_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
