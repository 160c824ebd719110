//! Validation during training and for `trainer eval`, per task: FR verification accuracy
//! and the seed's Gap on embeddings (image + mirror); accuracy, confusion and (Age) mean
//! absolute bucket error for Gender and Age; insightface's pair sets (`lfw.bin`, ...)
//! through `eval::pairs`.
//!
//! Keys name the task: `valid_fr_verif_acc`, `valid_fr_gap`, `valid_gender_acc`,
//! `valid_age_acc`, `valid_age_mae`. The first set that validates a task gets the plain
//! key; later ones add `_<set name>`. A pair set logs `valid_<set>_verif_acc` and friends.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Device, Tensor};

use super::ijb::IjbSet;
use super::metrics::Metrics;
use super::pairs;
use super::table::Row;
use crate::config::TrainConfig;
use crate::model::{Head, Net};
use trainer_data::interop::pairs::PairSet;
use trainer_data::metrics::ijb::Target;
use trainer_data::metrics::{draw_pairs, gap, verify_pairs, Confusion, Verification};
use trainer_data::pipeline::{Loader, RankView, ViewOptions};
use trainer_data::targets::SetSpec;

/// One validation set: the heads it validates and the suffix of its keys.
struct ValidSet {
    spec: SetSpec,
    name: String,
    view: Arc<RankView>,
    heads: Vec<Head>,
    /// "" for a task's first set, else `_<name>`.
    suffix: BTreeMap<Head, String>,
}

pub struct Validator {
    sets: Vec<ValidSet>,
    /// insightface's pair sets, by name (FR only).
    pair_sets: Vec<(String, PairSet)>,
    /// `--valid-ijb`: IJB-B/IJB-C 1:1 verification.
    ijb: Option<IjbSet>,
    /// The key that picks `best/`, and whether lower is better for it.
    best_key: String,
    lower_is_better: bool,
    /// A bar per set on a terminal (`trainer eval`; training has its own bar).
    progress: bool,
}

/// Per-image outputs of one pass over a set.
#[derive(Default)]
struct Outputs {
    emb: Vec<f32>,
    dim: usize,
    labels: Vec<i64>,
    gender: (Vec<i64>, Vec<i64>),
    age: (Vec<i64>, Vec<i64>),
}

impl Validator {
    /// Opens every validation set; a set without one labelled sample for the task it is
    /// given for is an error now, not NaN at the end.
    pub fn open(cfg: &TrainConfig) -> Result<Validator> {
        let run = cfg.heads();
        let (pair_specs, specs): (Vec<SetSpec>, Vec<SetSpec>) =
            cfg.sets(&cfg.valid.valid_sets).into_iter().partition(|s| pairs::is_pair_set(&s.path));
        let pair_sets = open_pair_sets(&pair_specs, &run)?;
        let mut sets: Vec<ValidSet> = Vec::new();
        for spec in specs {
            let opts = ViewOptions { gender_classes: cfg.heads.gender_classes, ..ViewOptions::whole(&run) };
            let view = RankView::open(std::slice::from_ref(&spec), &opts)
                .with_context(|| format!("opening validation set {spec}"))?;
            let heads = labelled_heads(&spec, &view)?;
            let name = unique_name(&spec, &sets);
            let suffix = heads
                .iter()
                .map(|&h| {
                    (h, if sets.iter().any(|s| s.heads.contains(&h)) { format!("_{name}") } else { String::new() })
                })
                .collect();
            sets.push(ValidSet { spec, name, view: Arc::new(view), heads, suffix });
        }
        let ijb = cfg.valid.valid_ijb.as_deref().map(IjbSet::open).transpose()?;
        let (best_key, lower_is_better) = best_key(cfg, &sets, &pair_sets, ijb.as_ref().map(IjbSet::target))?;
        Ok(Validator { sets, pair_sets, ijb, best_key, lower_is_better, progress: false })
    }

    /// Decodes every image of every set once, before training starts: a set that is empty,
    /// an image that does not decode or a record that fails its checksum is an error naming
    /// the set and the image now, not after the last training step.
    pub fn check_all(&self, size: usize) -> Result<()> {
        for (name, set) in &self.pair_sets {
            anyhow::ensure!(
                !set.is_empty(),
                "validation pair set {name} holds 0 pairs: there is nothing to validate on"
            );
            decode_all(set.images.len(), size, |i| Ok(&set.images[i]))
                .with_context(|| format!("validation pair set {name}"))?;
        }
        for set in &self.sets {
            let view = &set.view;
            anyhow::ensure!(
                !view.is_empty(),
                "validation set {} holds 0 records: there is nothing to validate on",
                set.spec
            );
            decode_all(view.len(), size, |r| {
                let id = view.records[r];
                let shard = &view.dataset.shards[id.shard as usize];
                let (i, path) = (id.index as usize, shard.path_of(id.index as usize));
                let payload = shard.payload(i).with_context(|| format!("record {path}"))?;
                if shard.checksum(i).is_some_and(|want| crc32c::crc32c(payload) != want) {
                    bail!("record {path} of {} fails its crc32c (run `trainer verify`)", shard.bin_path().display());
                }
                Ok(payload)
            })
            .with_context(|| format!("validation set {}", set.spec))?;
        }
        Ok(())
    }

    /// Shows a progress bar per set while it runs, when stderr is a terminal.
    pub fn with_progress(self) -> Validator {
        Validator { progress: true, ..self }
    }

    /// True when `metric` beats the best so far (NaN never does).
    pub fn better(&self, metric: f64, best: Option<f64>) -> bool {
        metric.is_finite() && best.is_none_or(|b| if self.lower_is_better { metric < b } else { metric > b })
    }

    pub fn best_key(&self) -> &str {
        &self.best_key
    }

    pub fn run(&self, net: &Net, cfg: &TrainConfig, device: Device) -> Result<Metrics> {
        let mut m = Metrics::default();
        for set in &self.sets {
            let bar = self.bar(&set.name, set.view.len());
            let out = tch::no_grad(|| infer(net, cfg, device, &set.view, &bar))?;
            bar.finish_and_clear();
            for &head in &set.heads {
                let key = |k: &str| format!("valid_{}_{k}{}", head.key(), set.suffix[&head]);
                if head == Head::Fr {
                    record_fr(&set.name, &out, cfg, &key, &mut m);
                    continue;
                }
                let ((pred, truth), classes) = if head == Head::Gender {
                    (&out.gender, cfg.heads.gender_classes)
                } else {
                    (&out.age, cfg.heads.age_classes)
                };
                let mut c = Confusion::new(classes);
                c.add(truth, pred).with_context(|| format!("validation set {}", set.spec))?;
                m.values.insert(key("acc"), c.accuracy());
                if head == Head::Age {
                    m.values.insert(key("mae"), c.mean_abs_error());
                }
                m.reports.push(format!("{} {}:\n{c}", set.name, head.name()));
                m.rows.push(Row::new(&set.name).cell(head.key(), format!("{:.4}", c.accuracy())));
            }
        }
        for (name, set) in &self.pair_sets {
            let scores = pairs::evaluate(net, set, cfg.model.size, cfg.data.batch_size.max(1), device)
                .with_context(|| format!("pair set {name}"))?;
            pairs::record(name, &scores, &mut m);
        }
        if let Some(ijb) = &self.ijb {
            ijb.record(net, cfg, device, self.progress, &mut m).context("IJB validation")?;
        }
        m.primary = m.values.get(&self.best_key).copied();
        Ok(m)
    }

    fn bar(&self, set: &str, images: usize) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let template = "{msg} [{bar:30}] {pos}/{len} images ({elapsed}, eta {eta})";
        trainer_data::term::progress_bar(images as u64, template).with_message(set.to_string())
    }
}

/// FR verification on pairs drawn from a packed set, and the seed's Gap.
fn record_fr(name: &str, out: &Outputs, cfg: &TrainConfig, key: &dyn Fn(&str) -> String, m: &mut Metrics) {
    let g = gap(&out.emb, out.dim, &out.labels);
    let pairs = draw_pairs(&out.labels, cfg.valid.valid_pairs, cfg.run.seed);
    let v = verify_pairs(&out.emb, out.dim, &pairs).unwrap_or_else(|e| {
        tracing::warn!("{name}: verification undefined: {e:#}");
        Verification::undefined()
    });
    let threshold = v.threshold_mean();
    m.values.insert(key("gap"), g.value);
    m.values.insert(key("verif_acc"), v.accuracy_mean);
    m.reports.push(format!(
        "{name} FR: verification {:.4} ± {:.4} (threshold {threshold:.3}), gap {:.3}",
        v.accuracy_mean, v.accuracy_std, g.value
    ));
    let row = Row::new(name)
        .cell("pairs", pairs.len())
        .cell("verification", format!("{:.4} ± {:.4}", v.accuracy_mean, v.accuracy_std));
    m.rows.push(row.cell("threshold", format!("{threshold:.3}")).cell("gap", format!("{:.3}", g.value)));
}

/// insightface's pair sets: FR verification only.
fn open_pair_sets(specs: &[SetSpec], run: &[Head]) -> Result<Vec<(String, PairSet)>> {
    if !specs.is_empty() && !run.contains(&Head::Fr) {
        bail!("pair sets ({}) need an FR model", specs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "));
    }
    let names = pairs::set_names(&specs.iter().map(|s| s.path.as_path()).collect::<Vec<_>>());
    specs
        .iter()
        .zip(names)
        .map(|(s, name)| {
            if let Some(h) = s.head.filter(|h| *h != Head::Fr) {
                bail!("{s}: a pair set validates FR, not {}", h.name());
            }
            let set = pairs::open(&s.path)?;
            anyhow::ensure!(!set.is_empty(), "pair set {s} holds 0 pairs: there is nothing to validate on");
            if name != pairs::set_name(&s.path) {
                tracing::info!("pair set {s} is named {name}: an earlier pair set has its file stem");
            }
            Ok((name, set))
        })
        .collect()
}

/// The heads a set validates: those it serves with at least one known target. A set given
/// for one task (`gender=...`) without one is an error; a shared set just skips that task.
fn labelled_heads(spec: &SetSpec, view: &RankView) -> Result<Vec<Head>> {
    let info = view.sets.first().context("a validation view has its set")?;
    let mut heads = Vec::new();
    for &(head, column, known) in &info.targets {
        if known > 0 {
            heads.push(head);
        } else if spec.head.is_some() {
            bail!(
                "validation set {spec} has no labelled sample for {} (column `{}` is -1 for all {} records)",
                head.name(),
                column.name(),
                info.records
            );
        } else {
            tracing::warn!(
                "validation set {spec} has no labelled sample for {} (column `{}`): it validates the other tasks only",
                head.name(),
                column.name()
            );
        }
    }
    if heads.is_empty() {
        bail!("validation set {spec} has no labelled sample for any task of this run");
    }
    Ok(heads)
}

/// The set's file name, made unique among the sets before it.
fn unique_name(spec: &SetSpec, before: &[ValidSet]) -> String {
    let base = spec
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.path.display().to_string());
    let taken = |n: &str| before.iter().any(|s| s.name == n);
    (1..).map(|i| if i == 1 { base.clone() } else { format!("{base}{i}") }).find(|n| !taken(n)).unwrap_or(base)
}

/// `--best-metric`, or the main metric of the run's leading task (FR verification for
/// Multi); it must be a key validation will log.
fn best_key(
    cfg: &TrainConfig,
    sets: &[ValidSet],
    pair_sets: &[(String, PairSet)],
    ijb: Option<Target>,
) -> Result<(String, bool)> {
    let mut keys: Vec<String> = sets
        .iter()
        .flat_map(|s| {
            s.heads.iter().flat_map(move |&h| {
                metric_keys(h).iter().map(move |k| format!("valid_{}_{k}{}", h.key(), s.suffix[&h]))
            })
        })
        .collect();
    keys.extend(
        pair_sets.iter().flat_map(|(name, _)| [format!("valid_{name}_verif_acc"), format!("valid_{name}_gap")]),
    );
    let ijb_key = ijb.map(|t| format!("{}_tar_far_1e-4", t.prefix()));
    keys.extend(ijb_key.clone());
    let key = match &cfg.valid.best_metric {
        Some(k) => k.clone(),
        // The first set given leads: a pair set's accuracy, or the lead task's main metric.
        None if cfg.valid.valid_sets.first().is_some_and(|s| pairs::is_pair_set(&s.path)) => {
            format!("valid_{}_verif_acc", pair_sets[0].0)
        }
        // IJB alone: TAR at FAR 1e-4, the benchmark's headline number.
        None if cfg.valid.valid_sets.is_empty() && ijb_key.is_some() => ijb_key.clone().unwrap_or_default(),
        None => {
            let lead = cfg
                .heads()
                .into_iter()
                .find(|h| sets.iter().any(|s| s.heads.contains(h)))
                .context("no validation set validates a task of this run")?;
            format!("valid_{}_{}", lead.key(), metric_keys(lead)[0])
        }
    };
    if !keys.contains(&key) {
        bail!("--best-metric {key}: validation logs {}", keys.join(", "));
    }
    let lower = key.contains("_mae");
    Ok((key, lower))
}

/// A head's metric keys, its main one first.
fn metric_keys(head: Head) -> &'static [&'static str] {
    match head {
        Head::Fr => &["verif_acc", "gap"],
        Head::Gender => &["acc"],
        Head::Age => &["acc", "mae"],
    }
}

fn infer(
    net: &Net,
    cfg: &TrainConfig,
    device: Device,
    view: &Arc<RankView>,
    bar: &indicatif::ProgressBar,
) -> Result<Outputs> {
    let mut loader =
        Loader::sequential(Arc::clone(view), cfg.model.size, cfg.data.batch_size.max(1), cfg.data.workers)?;
    let mut out = Outputs::default();
    let heads = net.heads();
    while let Some(batch) = loader.next_batch()? {
        let x = crate::model::input::images(&batch, device)?;
        let feats = net.features(&x, false);
        if heads.contains(&Head::Fr) {
            // insightface's protocol: the embedding plus its mirror's, normalised later.
            let e = net.embed(&feats, false)? + net.embed(&net.features(&x.flip([3]), false), false)?;
            out.dim = e.size()[1] as usize;
            out.emb.extend(pairs::to_f32(&e)?);
        }
        if heads.contains(&Head::Gender) {
            out.gender.0.extend(argmax(&net.logits(Head::Gender, &feats, None, false)?)?);
            out.gender.1.extend(&batch.genders);
        }
        if heads.contains(&Head::Age) {
            out.age.0.extend(argmax(&net.logits(Head::Age, &feats, None, false)?)?);
            let top = net.classes(Head::Age) as i64 - 1;
            out.age.1.extend(batch.ages.iter().map(|&a| a.min(top)));
        }
        out.labels.extend(&batch.labels);
        bar.inc(batch.labels.len() as u64);
    }
    Ok(out)
}

fn argmax(logits: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu))?)
}

/// Decodes images `0..n` (bytes from `get`) at `size`, on all cores; the first failure names its image.
fn decode_all<'a>(n: usize, size: usize, get: impl Fn(usize) -> Result<&'a [u8]> + Sync) -> Result<()> {
    use rayon::prelude::*;
    use trainer_data::codec::Decoder;
    (0..n).into_par_iter().try_for_each_init(
        || (Decoder::new(), vec![0u8; 3 * size * size]),
        |(d, buf), i| {
            let bytes = get(i)?;
            d.decode_into(bytes, size, buf).with_context(|| format!("image {i} does not decode"))
        },
    )
}
