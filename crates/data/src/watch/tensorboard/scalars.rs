//! `--tensorboard`: a run's `log.txt` events mirrored as TensorBoard scalars, so the
//! curves in TensorBoard are the log's, point for point (same steps, same wall times).
//!
//! Tags (docs/watching.md): progress lines give `loss`, `loss/<task>`, `lr`,
//! `lr/<group>`, `speed/images_per_s`, `speed/data_wait_frac`,
//! `plateau/steps_without_decrease[_robust][/<task>]`, `amp/loss_scale`,
//! `amp/skipped_steps`, `comm/<key>` for the byte counters and `run/<key>` for the rest; `valid` events
//! give `valid/<metric>[_<set>]`; a decay gives `events/decay/<task>` (the run's lr after
//! it), a rollback `events/rollback` (the step returned to) and a rise the safeguard
//! accepted `events/rise_accepted` (the lr the run goes on at). A resume or a rollback
//! also writes a restart marker at the first step run again.

use super::{now, EventWriter};
use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Writes one run's scalars into a new event file of a directory (rank 0's).
pub struct RunScalars {
    writer: EventWriter,
}

/// Progress-line keys that are neither plotted nor counted: the step itself and its time.
const NOT_SCALARS: [&str; 2] = ["step", "time"];

impl RunScalars {
    /// A new event file in `dir` (created if needed); an earlier one, from before a
    /// resume, is left as it is and TensorBoard reads both.
    pub fn create(dir: &Path) -> Result<RunScalars> {
        Ok(RunScalars { writer: EventWriter::create(dir)? })
    }

    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// Mirrors one `log.txt` event; flushed at once so TensorBoard shows it while the
    /// run goes on. Events without a step, and kinds without numbers, write nothing.
    pub fn event(&mut self, event: &Value) -> Result<()> {
        let Value::Object(ev) = event else { return Ok(()) };
        let Some(step) = ev.get("step").and_then(Value::as_i64) else { return Ok(()) };
        let time = ev.get("time").and_then(Value::as_f64).unwrap_or_else(now);
        let restart_from = match ev.get("event").and_then(Value::as_str) {
            Some("resume") => Some(step),
            Some("rollback") => ev.get("to_step").and_then(Value::as_i64),
            _ => None,
        };
        if let Some(back_to) = restart_from {
            self.writer.restart_at(back_to + 1, time)?;
        }
        let scalars = scalars_of(ev);
        if !scalars.is_empty() {
            let values: Vec<(&str, f64)> = scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
            self.writer.scalars_at(step, &values, time)?;
        }
        self.writer.flush().with_context(|| format!("TensorBoard scalars of step {step}"))
    }
}

/// The scalars (tag, value) of one `log.txt` event. Non-finite values (NaN is logged as
/// null) and non-numbers are left out.
pub fn scalars_of(ev: &Map<String, Value>) -> Vec<(String, f64)> {
    let num = |key: &str| ev.get(key).and_then(Value::as_f64).filter(|v| v.is_finite());
    match ev.get("event").and_then(Value::as_str) {
        None => ev
            .iter()
            .filter(|(k, _)| !NOT_SCALARS.contains(&k.as_str()))
            .filter_map(|(k, _)| Some((tag_of(k), num(k)?)))
            .collect(),
        // Pair sets and packed sets log `valid_<metric>`, IJB its own `ijbc_…`/`ijbb_…` keys.
        Some("valid") => ev
            .iter()
            .filter(|(k, _)| !NOT_SCALARS.contains(&k.as_str()))
            .filter_map(|(k, _)| Some((format!("valid/{}", k.strip_prefix("valid_").unwrap_or(k)), num(k)?)))
            .collect(),
        Some("decay") => {
            let task = ev.get("head").and_then(Value::as_str).unwrap_or("all");
            num("lr").map(|lr| (format!("events/decay/{task}"), lr)).into_iter().collect()
        }
        Some("rollback") => num("to_step").map(|to| ("events/rollback".to_string(), to)).into_iter().collect(),
        Some("rise_accepted") => num("lr").map(|lr| ("events/rise_accepted".to_string(), lr)).into_iter().collect(),
        Some(_) => vec![],
    }
}

/// The TensorBoard tag of a progress-line key: grouped by what it measures (TensorBoard
/// groups tags by the part before the first `/`), with the task or parameter group last.
pub fn tag_of(key: &str) -> String {
    const FIXED: [(&str, &str); 12] = [
        // The bytes a step moves between ranks, and the head each rank holds: one group.
        ("allreduce_bytes", "comm/allreduce_bytes"),
        ("allgather_bytes", "comm/allgather_bytes"),
        ("head_bytes_per_rank", "comm/head_bytes_per_rank"),
        ("images_per_s", "speed/images_per_s"),
        ("data_wait_frac", "speed/data_wait_frac"),
        ("host_syncs", "speed/host_syncs"),
        ("loss_scale", "amp/loss_scale"),
        ("amp_skipped_steps", "amp/skipped_steps"),
        ("epoch", "run/epoch"),
        ("world_size", "run/world_size"),
        ("effective_batch", "run/effective_batch"),
        ("skipped_records", "run/skipped_records"),
    ];
    // Longest first: `steps_without_decrease_robust_FR` is the robust count of FR.
    const FAMILIES: [(&str, &str); 4] = [
        ("steps_without_decrease_robust", "plateau/steps_without_decrease_robust"),
        ("steps_without_decrease", "plateau/steps_without_decrease"),
        ("loss", "loss"),
        ("lr", "lr"),
    ];
    if let Some((_, tag)) = FIXED.iter().find(|(k, _)| *k == key) {
        return tag.to_string();
    }
    for (prefix, tag) in FAMILIES {
        if key == prefix {
            return tag.to_string();
        }
        if let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) {
            return format!("{tag}/{rest}");
        }
    }
    key.to_string()
}
