//! What to draw, decided before any drawing: panels of lines and marks built from the
//! runs' logs. Kept apart from plotters so that the choices (smoothing, ranges, which
//! curves) are plain data.

use super::runlog::{RunLog, Series};
use plotters::style::RGBColor;
use std::collections::{BTreeMap, BTreeSet};

/// One colour per run, in the order the runs are given (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn run_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub struct Figure {
    pub panels: Vec<Panel>,
    /// Shared by every panel, so that a step lines up across them.
    pub x_range: (f64, f64),
}

#[derive(Default)]
pub struct Panel {
    pub title: String,
    pub log_y: bool,
    pub lines: Vec<Line>,
    pub marks: Vec<Mark>,
    /// Where the legend goes, in the corner the curves usually leave free; None: no
    /// legend (validation and throughput reuse the loss panel's colours).
    pub legend: Option<Corner>,
    /// Legend entries for a dash pattern alone (black), when the dash tells sets apart.
    pub styles: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corner {
    /// Falling curves (loss) leave it free.
    UpperRight,
    /// A learning rate that only decays leaves it free.
    LowerLeft,
    /// Rising curves (accuracy) leave it free.
    LowerRight,
}

pub struct Line {
    pub segments: Vec<Vec<(f64, f64)>>,
    pub color: RGBColor,
    pub kind: LineKind,
    /// 0 solid; 1.. a dash pattern, for a run's secondary curves (tasks, parameter groups).
    pub dash: usize,
    /// Sparse curves (validation) also get a dot at each point.
    pub dots: bool,
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LineKind {
    /// A curve as logged, that sets the y range.
    Plain,
    /// Logged points under a smoothed curve: drawn light; only their bulk sets the y
    /// range, so that one spike (a diverging step) does not flatten everything else.
    Raw,
    /// The moving average of a `Raw` line: drawn dark, and clipped to the raw's range.
    Smoothed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MarkKind {
    Decay,
    Rollback,
    /// The safeguard accepted a rise as the run's new level.
    Accepted,
}

pub struct Mark {
    pub kind: MarkKind,
    pub x: f64,
    /// Where on the curve the marker sits, when the log says (the learning rate).
    pub y: Option<f64>,
    pub color: RGBColor,
    /// Written beside the mark: why a rollback happened.
    pub note: Option<String>,
}

/// Builds every panel; `max_points` bounds the points drawn per segment (decimated).
pub fn build(runs: &[RunLog], max_points: usize) -> Figure {
    let mut panels = vec![loss_panel(runs), lr_panel(runs), images_panel(runs)];
    panels.extend(valid_panels(runs));
    for line in panels.iter_mut().flat_map(|p| p.lines.iter_mut()) {
        for seg in &mut line.segments {
            *seg = decimate(seg, max_points);
        }
    }
    Figure { x_range: x_range(runs), panels }
}

fn loss_panel(runs: &[RunLog]) -> Panel {
    let mut p = Panel {
        title: "loss (light: raw, dark: smoothed)".into(),
        legend: Some(Corner::UpperRight),
        ..Panel::default()
    };
    for (i, run) in runs.iter().enumerate() {
        let total = run.losses.get("loss");
        let mut dash = 0;
        for (key, series) in &run.losses {
            // A single task's loss is usually the total itself: one curve is enough.
            if key != "loss" && total.is_some_and(|t| t == series) {
                continue;
            }
            let label = if key == "loss" { run.name.clone() } else { format!("{} {key}", run.name) };
            p.lines.extend(smoothed(series, run_color(i), dash, label));
            dash += 1;
        }
    }
    raw_first(&mut p.lines);
    p
}

fn lr_panel(runs: &[RunLog]) -> Panel {
    let mut p = Panel {
        title: "learning rate (log scale)".into(),
        log_y: true,
        legend: Some(Corner::LowerLeft),
        ..Panel::default()
    };
    for (i, run) in runs.iter().enumerate() {
        let color = run_color(i);
        let total = run.lrs.get("lr");
        for (dash, (key, series)) in run.lrs.iter().filter(|(k, s)| *k == "lr" || total != Some(*s)).enumerate() {
            let label = Some(if key == "lr" { run.name.clone() } else { format!("{} {key}", run.name) });
            p.lines.push(Line {
                segments: series.segments.clone(),
                color,
                kind: LineKind::Plain,
                dash,
                dots: false,
                label,
            });
        }
        let mark = |kind, x, y, note| Mark { kind, x, y, color, note };
        p.marks.extend(run.decays.iter().map(|&(x, y)| mark(MarkKind::Decay, x, y, None)));
        p.marks.extend(run.rollbacks.iter().map(|r| mark(MarkKind::Rollback, r.step, r.lr, Some(r.note.clone()))));
        p.marks.extend(run.accepted.iter().map(|&(x, y)| mark(MarkKind::Accepted, x, y, None)));
    }
    p
}

fn images_panel(runs: &[RunLog]) -> Panel {
    let mut p = Panel { title: "images/s".into(), ..Panel::default() };
    for (i, run) in runs.iter().enumerate() {
        p.lines.extend(smoothed(&run.images_per_s, run_color(i), 0, run.name.clone()));
    }
    raw_first(&mut p.lines);
    p
}

/// One panel per validation metric with every set in it and a legend naming the sets. The
/// trainer names a packed set's keys by task, plainly for a task's first set
/// (`valid_fr_verif_acc`) and with the set's name after the metric for the others
/// (`valid_fr_verif_acc_faces-valid`); a pair set's by the set, before the metric
/// (`valid_lfw_verif_acc`, an FR metric). Standard deviations (`_verif_std`) are left out:
/// the accuracy panel stays readable with many sets. Same metric, same scale; and a
/// many-set run keeps few panels.
fn valid_panels(runs: &[RunLog]) -> Vec<Panel> {
    let keys: BTreeSet<&str> = runs.iter().flat_map(|r| r.valid.keys()).map(String::as_str).collect();
    if keys.is_empty() {
        return vec![Panel { title: "validation".into(), ..Panel::default() }];
    }
    let mut metrics: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    for &key in &keys {
        let (metric, set) = metric_and_set(key);
        if !metric.ends_with("verif_std") {
            metrics.entry(metric).or_default().push((key, set));
        }
    }
    metrics
        .into_iter()
        .map(|(metric, mut sets)| {
            sets.sort_by(|a, b| (!a.1.is_empty(), &a.1).cmp(&(!b.1.is_empty(), &b.1)));
            metric_panel(runs, &metric, &sets)
        })
        .collect()
}

/// The metrics a validation key can end in, longest first where one ends another.
const METRICS: [&str; 6] = ["verif_acc", "verif_std", "verif_tar", "acc", "mae", "gap"];
const TASKS: [&str; 3] = ["fr", "gender", "age"];

/// A validation key's panel (`valid_<task>_<metric>`) and set ("" for a task's first set).
pub fn metric_and_set(key: &str) -> (String, String) {
    let rest = key.strip_prefix("valid_").unwrap_or(key);
    for task in TASKS {
        let Some(after) = rest.strip_prefix(task).and_then(|r| r.strip_prefix('_')) else { continue };
        for m in METRICS {
            match after.strip_prefix(m) {
                Some("") => return (format!("valid_{task}_{m}"), String::new()),
                Some(set) if set.starts_with('_') => return (format!("valid_{task}_{m}"), set[1..].to_string()),
                _ => {}
            }
        }
    }
    // Logs from before keys named the task: `valid_verif_acc`, `valid_verif_acc_lfw`.
    let ends_in_metric = |s: &str| METRICS.iter().any(|m| s.strip_suffix(m).is_some_and(|r| r.ends_with('_')));
    for m in METRICS {
        match rest.strip_prefix(m) {
            Some("") => return (format!("valid_{m}"), String::new()),
            Some(set) if set.starts_with('_') && !ends_in_metric(set) => {
                return (format!("valid_{m}"), set[1..].to_string())
            }
            _ => {}
        }
    }
    for m in METRICS {
        if let Some(set) = rest.strip_suffix(m).and_then(|r| r.strip_suffix('_')).filter(|s| !s.is_empty()) {
            return (format!("valid_fr_{m}"), set.to_string());
        }
    }
    (key.to_string(), String::new())
}

/// One run: a colour per set, named in the legend. Several: the run's colour, a dash per
/// set, and the dashes named in the legend.
fn metric_panel(runs: &[RunLog], metric: &str, sets: &[(&str, String)]) -> Panel {
    let mut p = Panel { title: metric.to_string(), legend: Some(Corner::LowerRight), ..Panel::default() };
    let one_run = runs.len() == 1;
    for (j, (key, set)) in sets.iter().enumerate() {
        let name = if set.is_empty() { "first set".to_string() } else { set.clone() };
        for (i, run) in runs.iter().enumerate() {
            if let Some(s) = run.valid.get(*key) {
                let (color, dash) = if one_run { (run_color(j), 0) } else { (run_color(i), j) };
                let label = one_run.then(|| name.clone());
                p.lines.push(Line {
                    segments: s.segments.clone(),
                    color,
                    kind: LineKind::Plain,
                    dash,
                    dots: true,
                    label,
                });
            }
        }
        if !one_run && sets.len() > 1 {
            p.styles.push((name, j));
        }
    }
    p
}

fn raw_first(lines: &mut [Line]) {
    lines.sort_by_key(|l| l.kind != LineKind::Raw);
}

/// The raw curve (light) and its moving average, or the raw curve alone when it is too
/// short to need smoothing.
fn smoothed(series: &Series, color: RGBColor, dash: usize, label: String) -> Vec<Line> {
    if series.is_empty() {
        return vec![];
    }
    let weight = smoothing_weight(series.points().count());
    let line = |segments, kind, label| Line { segments, color, kind, dash, dots: false, label };
    if weight == 0.0 {
        return vec![line(series.segments.clone(), LineKind::Plain, Some(label))];
    }
    let smooth = series.segments.iter().map(|s| ema(s, weight)).collect();
    vec![line(series.segments.clone(), LineKind::Raw, None), line(smooth, LineKind::Smoothed, Some(label))]
}

/// An average over about 5% of the curve, at most 100 points unless a long curve needs
/// more to span a few pixels (n/250: ~2 px at 600 px wide): a visible trend on a short
/// run, and a decay's effect still sharp on a long one.
pub fn smoothing_weight(points: usize) -> f64 {
    let n = points as f64;
    let window = (n / 20.0).clamp(1.0, (n / 250.0).max(100.0));
    1.0 - 1.0 / window
}

/// Exponential moving average, debiased so that it starts at the first point instead
/// of at zero (TensorBoard does the same).
pub fn ema(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let (mut acc, mut norm) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            acc = weight * acc + (1.0 - weight) * y;
            norm = weight * norm + (1.0 - weight);
            (x, acc / norm)
        })
        .collect()
}

/// Keeps the lowest and highest point of each of `max_points / 2` equal slices, in
/// order: the drawn envelope is unchanged, and a long run stays cheap to draw.
pub fn decimate(points: &[(f64, f64)], max_points: usize) -> Vec<(f64, f64)> {
    let slices = (max_points / 2).max(1);
    if points.len() <= max_points {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(2 * slices);
    for chunk in points.chunks(points.len().div_ceil(slices)) {
        let lo = chunk.iter().enumerate().min_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).expect("chunks are not empty").0;
        let hi = chunk.iter().enumerate().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).expect("chunks are not empty").0;
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out
}

fn x_range(runs: &[RunLog]) -> (f64, f64) {
    let steps = runs.iter().flat_map(|r| {
        let curves = r.losses.values().chain(r.lrs.values()).chain(r.valid.values()).chain([&r.images_per_s]);
        let marks = r
            .decays
            .iter()
            .map(|d| d.0)
            .chain(r.rollbacks.iter().map(|b| b.step))
            .chain(r.accepted.iter().map(|a| a.0));
        curves.flat_map(|s| s.points().map(|p| p.0)).chain(marks).collect::<Vec<_>>()
    });
    let (lo, hi) = steps.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + 1.0)
    }
}

impl Panel {
    /// The y range to show, or None when there is nothing to draw. A log axis keeps
    /// only positive values.
    pub fn y_range(&self) -> Option<(f64, f64)> {
        // Beyond 1e300 the padded range would overflow; no training curve goes there.
        let keep = |v: &f64| v.abs() < 1e300 && (!self.log_y || *v > 1e-300);
        let mut values: Vec<f64> = self.marks.iter().filter_map(|m| m.y).filter(keep).collect();
        for line in self.lines.iter().filter(|l| l.kind != LineKind::Smoothed) {
            let ys: Vec<f64> = line.segments.iter().flatten().map(|p| p.1).filter(keep).collect();
            if line.kind == LineKind::Raw {
                values.extend(bulk(ys));
            } else {
                values.extend(ys);
            }
        }
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return None;
        }
        Some(if self.log_y {
            let pad = if hi / lo < 1.01 { 2.0 } else { 1.3 };
            (lo / pad, hi * pad)
        } else {
            let pad = if hi - lo > 1e-12 * hi.abs().max(1.0) { (hi - lo) * 0.05 } else { hi.abs().max(1e-3) * 0.1 };
            (lo - pad, hi + pad)
        })
    }
}

/// The extremes of `ys` that are not outliers: within three times the 1%-99% spread
/// beyond those quantiles. A loss falling from 40 to 2 keeps its start; a 1e6 spike
/// does not stretch the axis.
fn bulk(mut ys: Vec<f64>) -> Vec<f64> {
    if ys.len() < 20 {
        return ys;
    }
    ys.sort_by(f64::total_cmp);
    let at = |q: f64| ys[((ys.len() - 1) as f64 * q).round() as usize];
    let (q1, q99) = (at(0.01), at(0.99));
    let fence = 3.0 * (q99 - q1);
    let inside = |v: &&f64| (q1 - fence..=q99 + fence).contains(*v);
    let lo = ys.iter().find(inside).copied().unwrap_or(q1);
    let hi = ys.iter().rev().find(inside).copied().unwrap_or(q99);
    vec![lo, hi]
}

/// Splits a polyline where it leaves [lo, hi] vertically, ending each piece on the
/// border: plotters draws outside the plotting area rather than clipping.
pub fn clip(points: &[(f64, f64)], lo: f64, hi: f64) -> Vec<Vec<(f64, f64)>> {
    let inside = |y: f64| (lo..=hi).contains(&y);
    let mut pieces = vec![];
    let mut current = vec![];
    for (i, &(x, y)) in points.iter().enumerate() {
        if let Some(&(px, py)) = i.checked_sub(1).and_then(|j| points.get(j)) {
            let mut crossings: Vec<f64> = [lo, hi].into_iter().filter(|b| (py - b) * (y - b) < 0.0).collect();
            if y < py {
                crossings.reverse(); // going down meets hi first
            }
            let mut was_inside = inside(py);
            for border in crossings {
                let t = (border - py) / (y - py);
                current.push((px + t * (x - px), border));
                if was_inside {
                    pieces.push(std::mem::take(&mut current));
                }
                was_inside = !was_inside;
            }
        }
        if inside(y) {
            current.push((x, y));
        } else if !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
    }
    pieces.push(current);
    pieces.retain(|p| !p.is_empty());
    pieces
}
