//! A run's `log.txt` (one JSON object a line, written by rank 0) turned into curves.
//! Keys this does not know are ignored, so the log can grow without breaking plots.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Points of one curve, (step, value). A new segment starts wherever the step goes back
/// (a rollback, or a resume from an older checkpoint), so that the retried steps are not
/// joined to the abandoned ones by a line running backwards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub segments: Vec<Vec<(f64, f64)>>,
    open: Option<usize>,
}

impl Series {
    fn push(&mut self, segment: usize, point: (f64, f64)) {
        if self.open != Some(segment) {
            self.segments.push(Vec::new());
            self.open = Some(segment);
        }
        self.segments.last_mut().expect("just pushed").push(point);
    }

    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.segments.iter().flatten().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub step: f64,
    pub to_step: Option<f64>,
    pub lr: Option<f64>,
    /// What triggered it, short: "NaN", or the rise against its threshold.
    pub note: String,
}

/// Everything plotted of one run. Curves are keyed by their log key (`loss`,
/// `loss_FR`, `lr`, `lr_backbone`, `images_per_s`, `valid_verif_acc`, ...).
#[derive(Debug, Clone, Default)]
pub struct RunLog {
    /// The legend label: the run directory's name.
    pub name: String,
    pub path: PathBuf,
    pub losses: BTreeMap<String, Series>,
    pub lrs: BTreeMap<String, Series>,
    pub images_per_s: Series,
    pub valid: BTreeMap<String, Series>,
    /// Step and new learning rate of each decay.
    pub decays: Vec<(f64, Option<f64>)>,
    pub rollbacks: Vec<Rollback>,
    /// Rises the safeguard accepted as the run's new level: step and the lr it went on at.
    pub accepted: Vec<(f64, Option<f64>)>,
}

impl RunLog {
    /// Reads `RUN/log.txt` (or a log file named directly).
    pub fn open(run: &Path) -> Result<RunLog> {
        let path = if run.is_dir() { run.join("log.txt") } else { run.to_path_buf() };
        if !path.is_file() {
            if run.is_dir() {
                bail!("{}: no log.txt in this run directory", run.display());
            }
            bail!("{}: no such run directory or log file", run.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut log = RunLog::parse(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        log.name = run_name(run, &path);
        log.path = path;
        Ok(log)
    }

    /// Parses a whole log. The last line is skipped if it is unfinished (no newline) and
    /// does not parse: the trainer may be writing it right now.
    pub fn parse(text: &str) -> Result<RunLog> {
        let mut log = RunLog::default();
        let (mut segment, mut last_step, mut lines) = (0, f64::NEG_INFINITY, 0);
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let obj = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(obj)) => obj,
                Ok(_) => bail!("line {}: not a JSON object", i + 1),
                Err(_) if !line.ends_with('\n') && lines > 0 => break,
                Err(e) => bail!("line {}: malformed JSON ({e})", i + 1),
            };
            lines += 1;
            let Some(step) = num(&obj, "step") else { continue };
            match obj.get("event").and_then(Value::as_str) {
                None => {
                    if step <= last_step {
                        segment += 1;
                    }
                    last_step = step;
                    log.add_progress(&obj, step, segment);
                }
                Some("decay") => log.decays.push((step, num(&obj, "lr"))),
                Some("rollback") => log.rollbacks.push(Rollback {
                    step,
                    to_step: num(&obj, "to_step"),
                    lr: num(&obj, "lr"),
                    note: rollback_note(&obj),
                }),
                Some("rise_accepted") => log.accepted.push((step, num(&obj, "lr"))),
                Some("valid") => log.add_valid(&obj, step, segment),
                Some(_) => {}
            }
        }
        if lines == 0 {
            bail!("empty log: no JSON lines");
        }
        Ok(log)
    }

    fn add_progress(&mut self, obj: &Map<String, Value>, step: f64, segment: usize) {
        for (key, value) in obj {
            let Some(v) = value.as_f64().filter(|v| v.is_finite()) else { continue };
            let series = if key == "loss" || key.starts_with("loss_") && key != "loss_scale" {
                self.losses.entry(key.clone()).or_default()
            } else if key == "lr" || key.starts_with("lr_") {
                self.lrs.entry(key.clone()).or_default()
            } else if key == "images_per_s" {
                &mut self.images_per_s
            } else {
                continue;
            };
            series.push(segment, (step, v));
        }
    }

    fn add_valid(&mut self, obj: &Map<String, Value>, step: f64, segment: usize) {
        for (key, value) in obj {
            if let Some(v) = value.as_f64().filter(|v| key.starts_with("valid_") && v.is_finite()) {
                self.valid.entry(key.clone()).or_default().push(segment, (step, v));
            }
        }
    }
}

/// A finite number under `key`; null (how serde_json writes NaN) and other types are None.
/// "NaN", or "rise 1.23 > 0.45" from the event's `rise_test` (older logs: the reason).
fn rollback_note(obj: &Map<String, Value>) -> String {
    let test = obj.get("rise_test").and_then(Value::as_object);
    let rise = test.and_then(|t| Some((num(t, "rise")?, num(t, "rise_threshold")?)));
    match rise {
        Some((rise, threshold)) => format!("rise {rise:.3} > {threshold:.3}"),
        None => obj.get("reason").and_then(Value::as_str).unwrap_or("rollback").to_string(),
    }
}

fn num(obj: &Map<String, Value>, key: &str) -> Option<f64> {
    obj.get(key).and_then(Value::as_f64).filter(|v| v.is_finite())
}

fn run_name(run: &Path, log: &Path) -> String {
    let dir = if run.is_dir() { run } else { log.parent().unwrap_or(log) };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}
