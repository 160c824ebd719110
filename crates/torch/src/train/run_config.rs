//! A run's one stored config: `<run>/config.json`, the resolved settings. It is written at
//! the start and rewritten at every resume, so a flag given with `--resume` (a new
//! `--max-steps`, `--lr`) is what the next resume, `eval`, `embed` and `export` read.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

use super::checkpoint;
use crate::config::TrainConfig;

pub const FILE: &str = "config.json";

/// The run's stored config.
pub fn read(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join(FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    TrainConfig::from_json(value).with_context(|| format!("{} is not a valid run config", path.display()))
}

/// Replaces the run's stored config (atomically, synced).
pub fn write(run_dir: &Path, cfg: &TrainConfig) -> Result<()> {
    checkpoint::write_synced(&run_dir.join(FILE), &serde_json::to_vec_pretty(cfg)?)
}

/// The settings that differ, each as `key: old → new` (nested keys joined by dots), in
/// key order.
pub fn overrides(before: &TrainConfig, after: &TrainConfig) -> Result<Vec<String>> {
    let mut out = Vec::new();
    diff("", &serde_json::to_value(before)?, &serde_json::to_value(after)?, &mut out);
    Ok(out)
}

fn diff(prefix: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                diff(&path, b.get(key).unwrap_or(&Value::Null), a.get(key).unwrap_or(&Value::Null), out);
            }
        }
        _ if before != after => out.push(format!("{prefix}: {before} → {after}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_name_each_changed_setting_with_both_values() {
        let mut before = TrainConfig::default();
        before.schedule.max_steps = Some(100);
        let mut after = before.clone();
        (after.schedule.max_steps, after.optim.lr, after.heads.s) = (Some(200), 0.05, 32.0);
        let got = overrides(&before, &after).unwrap();
        assert_eq!(got, ["heads.s: 64.0 → 32.0", "optim.lr: 0.1 → 0.05", "schedule.max_steps: 100 → 200"]);
        assert!(overrides(&before, &before).unwrap().is_empty());
    }
}
