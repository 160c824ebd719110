//! One batch forward: the task losses of a batch, as the loop and the validator need them.

use anyhow::{bail, Result};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use super::config::{Task, TrainConfig};
use crate::model::{soft_cross_entropy, Net};
use crate::pipeline::Batch;

/// A batch moved to the device.
pub struct DeviceBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub genders: Tensor,
    pub ages: Tensor,
}

impl DeviceBatch {
    pub fn new(b: &Batch, device: Device) -> DeviceBatch {
        let s = b.size as i64;
        let images = Tensor::from_slice(&b.images).view([b.n as i64, 3, s, s]).to_device(device);
        let col = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        DeviceBatch { images, labels: col(&b.labels), genders: col(&b.genders), ages: col(&b.ages) }
    }
}

/// The weighted total to backpropagate and each task's own loss (for logs).
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<(&'static str, Tensor)>,
}

/// Which tasks this step trains: all of the run's, or one in turn with `alternate`.
pub fn tasks_for_step(cfg: &TrainConfig, step: u64) -> Vec<Task> {
    let all: Vec<Task> = match cfg.task {
        Task::Multi => [(cfg.has_fr(), Task::Fr), (cfg.has_gender(), Task::Gender), (cfg.has_age(), Task::Age)]
            .into_iter()
            .filter_map(|(on, t)| on.then_some(t))
            .collect(),
        t => vec![t],
    };
    if cfg.alternate && all.len() > 1 {
        vec![all[(step % all.len() as u64) as usize]]
    } else {
        all
    }
}

pub fn task_name(t: Task) -> &'static str {
    match t {
        Task::Fr => "FR",
        Task::Gender => "Gender",
        Task::Age => "Age",
        Task::Multi => "Multi",
    }
}

/// Forward pass and losses. A frozen backbone runs without autograd and in eval mode.
/// With `--amp` on CUDA the backbone runs under autocast; heads and losses stay f32, as
/// insightface does, because s·cos θ with s = 64 overflows half precision.
pub fn losses(net: &Net, cfg: &TrainConfig, b: &DeviceBatch, tasks: &[Task], train: bool) -> Result<Losses> {
    let amp = cfg.amp && b.images.device().is_cuda();
    // libtorch 2.11 warns on every autocast toggle, so toggle only when asked to.
    let backbone = |train| match amp {
        true => tch::autocast(true, || net.features(&b.images, train)).to_kind(Kind::Float),
        false => net.features(&b.images, train),
    };
    let feats = if cfg.freeze_backbone { tch::no_grad(|| backbone(false)) } else { backbone(train) };
    let mut parts = vec![];
    let mut total: Option<Tensor> = None;
    for &task in tasks {
        let (loss, weight) = match task {
            Task::Fr => (fr_loss(net, &feats, &b.labels, train)?, cfg.loss_weights[0]),
            Task::Gender => {
                let head = net.gender.as_ref().ok_or_else(|| anyhow::anyhow!("model has no Gender head"))?;
                (soft_cross_entropy(&head.forward_t(&feats, train), &b.genders, cfg.heads.soft_target), cfg.loss_weights[1])
            }
            Task::Age => {
                let head = net.age.as_ref().ok_or_else(|| anyhow::anyhow!("model has no Age head"))?;
                (soft_cross_entropy(&head.forward_t(&feats, train), &b.ages, cfg.heads.soft_target), cfg.loss_weights[2])
            }
            Task::Multi => bail!("Multi is a set of tasks, not one"),
        };
        let weighted = if tasks.len() > 1 { &loss * weight } else { loss.shallow_clone() };
        total = Some(match total {
            Some(t) => t + weighted,
            None => weighted,
        });
        parts.push((task_name(task), loss));
    }
    let total = total.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, b.images.device())));
    Ok(Losses { total, parts })
}

fn fr_loss(net: &Net, feats: &Tensor, labels: &Tensor, train: bool) -> Result<Tensor> {
    let (head, arcface) = net.fr.as_ref().ok_or_else(|| anyhow::anyhow!("model has no FR head"))?;
    let emb = head.forward_t(feats, train);
    Ok(arcface.logits(&emb, labels).cross_entropy_for_logits(labels))
}
