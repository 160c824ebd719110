//! Validation during training and for `trainer eval`: FR verification accuracy and the
//! seed's Gap on embeddings (image + mirror), accuracy and confusion for Gender and Age.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Tensor};

use crate::train::config::TrainConfig;
use trainer_data::metrics::{draw_pairs, gap, verification_accuracy, Confusion};
use crate::model::{Head, Net, Tasks};
use trainer_data::pipeline::{Loader, RankView};

pub struct Validator {
    sets: Vec<(String, Arc<RankView>)>,
    /// A bar per set on a terminal (`trainer eval`; training has its own bar).
    progress: bool,
}

/// Metric values by log key, the one that picks the best checkpoint, and printable reports.
pub struct Metrics {
    pub values: BTreeMap<String, f64>,
    pub primary: Option<f64>,
    pub reports: Vec<String>,
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
    pub fn open(cfg: &TrainConfig) -> Result<Validator> {
        let sets = cfg
            .valid_sets
            .iter()
            .map(|p| {
                let view = RankView::open(std::slice::from_ref(p), 0, 1, false).with_context(|| format!("opening validation set {}", p.display()))?;
                Ok((set_name(p), Arc::new(view)))
            })
            .collect::<Result<_>>()?;
        Ok(Validator { sets, progress: false })
    }

    /// Shows a progress bar per set while it runs, when stderr is a terminal.
    pub fn with_progress(self) -> Validator {
        Validator { progress: true, ..self }
    }

    pub fn run(&self, net: &Net, cfg: &TrainConfig, device: Device) -> Result<Metrics> {
        let mut m = Metrics { values: BTreeMap::new(), primary: None, reports: vec![] };
        let tasks = Tasks::from(cfg.task);
        for (i, (name, view)) in self.sets.iter().enumerate() {
            let bar = self.bar(name, view.records.len());
            let out = tch::no_grad(|| infer(net, cfg, device, view, &bar))?;
            bar.finish_and_clear();
            // The first set names the plain keys; others get a suffix.
            let key = |k: &str| if i == 0 { k.to_string() } else { format!("{k}_{name}") };
            if tasks.fr && out.dim > 0 {
                let g = gap(&out.emb, out.dim, &out.labels);
                let pairs = draw_pairs(&out.labels, cfg.valid_pairs, cfg.seed);
                let v = verification_accuracy(&out.emb, out.dim, &pairs, 10);
                m.values.insert(key("valid_gap"), g.value);
                m.values.insert(key("valid_verif_acc"), v.accuracy);
                m.reports.push(format!("{name}: verification {:.4} ± {:.4} (threshold {:.3}), gap {:.3}", v.accuracy, v.accuracy_std, v.threshold, g.value));
                if i == 0 {
                    m.primary = Some(v.accuracy);
                }
            }
            let heads = [("gender", &out.gender, cfg.heads.gender_classes, tasks.gender), ("age", &out.age, cfg.heads.age_classes, tasks.age)];
            for (task, (pred, truth), classes, on) in heads {
                if !on {
                    continue;
                }
                let mut c = Confusion::new(classes);
                c.add(truth, pred)?;
                let acc_key = if cfg.task == crate::train::config::Task::Multi { format!("valid_{task}_acc") } else { "valid_acc".to_string() };
                m.values.insert(key(&acc_key), c.accuracy());
                m.reports.push(format!("{name} {task}:\n{c}"));
                if i == 0 && m.primary.is_none() {
                    m.primary = Some(c.accuracy());
                }
            }
        }
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

fn set_name(p: &std::path::Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| PathBuf::from(p).display().to_string())
}

fn infer(net: &Net, cfg: &TrainConfig, device: Device, view: &Arc<RankView>, bar: &indicatif::ProgressBar) -> Result<Outputs> {
    let mut loader = Loader::sequential(Arc::clone(view), cfg.size, cfg.batch_size.max(1), cfg.workers)?;
    let mut out = Outputs::default();
    while let Some(batch) = loader.next_batch()? {
        let x = crate::train::step::images(&batch, device);
        let feats = net.features(&x, false);
        let tasks = net.tasks();
        if tasks.fr {
            // insightface's protocol: the embedding plus its mirror's, normalised later.
            let e = net.embed(&feats, false)? + net.embed(&net.features(&x.flip([3]), false), false)?;
            out.dim = e.size()[1] as usize;
            out.emb.extend(to_vec_f32(&e));
        }
        if tasks.gender {
            out.gender.0.extend(argmax(&net.logits(Head::Gender, &feats, None, false)?));
            out.gender.1.extend(&batch.genders);
        }
        if tasks.age {
            out.age.0.extend(argmax(&net.logits(Head::Age, &feats, None, false)?));
            let top = net.classes(Head::Age) as i64 - 1;
            out.age.1.extend(batch.ages.iter().map(|&a| a.min(top)));
        }
        out.labels.extend(&batch.labels);
        bar.inc(batch.labels.len() as u64);
    }
    Ok(out)
}

fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).unwrap_or_default()
}

fn argmax(logits: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu)).unwrap_or_default()
}
