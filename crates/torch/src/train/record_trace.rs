//! `TRAINER_TRACE_RECORDS=DIR`: each rank appends one JSON line per batch it trains on to
//! `DIR/rank<R>.jsonl` — the pool, its epoch and batch, and the records as (shard file,
//! index) — so which records an epoch took can be checked across resumes and rank counts.
//! A debugging aid; off unless the variable is set.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use trainer_data::pipeline::{RankView, SamplerPosition};

pub struct RecordTrace {
    file: File,
    path: PathBuf,
}

impl RecordTrace {
    pub fn from_env(rank: usize) -> Result<Option<RecordTrace>> {
        let Some(dir) = std::env::var_os("TRAINER_TRACE_RECORDS").filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("TRAINER_TRACE_RECORDS: creating {}", dir.display()))?;
        let path = dir.join(format!("rank{rank}.jsonl"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("TRAINER_TRACE_RECORDS: opening {}", path.display()))?;
        Ok(Some(RecordTrace { file, path }))
    }

    /// The batch at `at` of `pool`, holding view records `records`.
    pub fn batch(&mut self, pool: &str, at: SamplerPosition, view: &RankView, records: &[u32]) -> Result<()> {
        let named: Vec<(String, u32)> = records
            .iter()
            .map(|&i| {
                let r = view.records[i as usize];
                let bin = view.dataset.shards[r.shard as usize].bin_path();
                (
                    bin.file_name().map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into_owned()),
                    r.index,
                )
            })
            .collect();
        let line = serde_json::json!({"pool": pool, "epoch": at.epoch, "batch": at.batch, "records": named});
        writeln!(self.file, "{line}").with_context(|| format!("TRAINER_TRACE_RECORDS: writing {}", self.path.display()))
    }
}
