//! One batch forward: the task losses of a batch, as the loop needs them.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::pools::Part;
use crate::config::TrainConfig;
use crate::dist::Comm;
use crate::model::loss::soft_cross_entropy;
use crate::model::partial_fc::PfcStep;
use crate::model::{Cut, Head, Net};
use trainer_data::pipeline::Batch;

/// The weighted total to backpropagate and each head's own loss (for logs).
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<(Head, Tensor)>,
    /// Where a staged forward cut the backbone (empty otherwise): see train/backward.rs.
    pub cuts: Vec<Cut>,
}

/// Which heads this step trains: all of the run's, or one in turn with `alternate`.
pub fn heads_for_step(cfg: &TrainConfig, step: u64) -> Vec<Head> {
    let all = cfg.heads();
    if cfg.optim.alternate && all.len() > 1 {
        vec![all[(step % all.len() as u64) as usize]]
    } else {
        all
    }
}

/// A batch's class indices for `head`, checked against the head's classes on the host
/// (an out-of-range index would abort inside libtorch). Ages above the last bucket clip
/// to it, as the seed does; -1 stays "unknown" (masked).
pub fn targets(net: &Net, head: Head, b: &Batch, device: Device) -> Result<Tensor> {
    let classes = net.classes(head);
    let (what, labels): (&str, Vec<i64>) = match head {
        Head::Fr => ("identity", b.labels.clone()),
        Head::Gender => ("gender", b.genders.clone()),
        Head::Age => ("age", b.ages.iter().map(|&a| a.min(classes as i64 - 1)).collect()),
    };
    if let Some(&bad) = labels.iter().find(|&&l| l < -1 || l >= classes as i64) {
        bail!("{what} label {bad} is outside 0..{classes} (or -1 for unknown)");
    }
    crate::model::input::upload(&Tensor::from_slice(&labels), device)
}

/// One head's loss on backbone features: the margin's loss for FR (its batch statistics
/// over every rank of `comm`), soft cross-entropy (the seed's 0.9 one-hot) for Gender and
/// Age. Rows labelled -1 are masked.
pub fn head_loss(
    net: &Net,
    cfg: &TrainConfig,
    head: Head,
    feats: &Tensor,
    y: &Tensor,
    comm: &dyn Comm,
) -> Result<Tensor> {
    Ok(match head {
        Head::Fr => net.fr_loss(feats, y, comm)?,
        Head::Gender | Head::Age => soft_cross_entropy(&net.logits(head, feats, None, true)?, y, cfg.heads.soft_target),
    })
}

/// Forward pass and losses of one step's parts (a batch and the heads it teaches). The
/// parts' images go through the backbone together; each head's loss is on its part's
/// rows. A frozen backbone runs without autograd in eval mode; with `--amp` on CUDA it runs
/// under autocast, while heads and losses stay f32 as in insightface, because s·cos θ with
/// s = 64 overflows half precision.
///
/// Under Partial FC (`pfc`), the FR loss's centre gradients are computed on the way (see
/// `PfcStep::loss`) and `total` carries, beside the loss values, a term that only feeds the
/// gathered embeddings' gradients back into this rank's backbone.
pub fn losses(
    net: &Net,
    cfg: &TrainConfig,
    parts: &[Part],
    device: Device,
    comm: &dyn Comm,
    pfc: Option<&PfcStep>,
    staged: bool,
) -> Result<Losses> {
    let x = Tensor::cat(
        &parts.iter().map(|p| crate::model::input::images(&p.batch, device)).collect::<Result<Vec<_>>>()?,
        0,
    );
    let x = if cfg.model.channels_last { crate::model::input::channels_last(&x) } else { x };
    let amp = cfg.optim.amp.enabled() && device.is_cuda();
    // libtorch 2.11 warns on every autocast toggle, so toggle only when asked to.
    let forward = |train| match staged {
        true => net.features_staged(&x, train),
        false => (net.features(&x, train), Vec::new()),
    };
    let backbone = |train| match amp {
        true => crate::amp::autocast(cfg.optim.amp, device, || forward(train))
            .map(|(feats, cuts)| (feats.to_kind(Kind::Float), cuts)),
        false => Ok(forward(train)),
    };
    let (feats, cuts) = if cfg.model.freeze_backbone { tch::no_grad(|| backbone(false))? } else { backbone(true)? };
    let mut losses = Vec::new();
    let mut feedback = Vec::new();
    let weights =
        if parts.iter().map(|p| p.heads.len()).sum::<usize>() > 1 { cfg.optim.loss_weights } else { [1.0; 3] };
    let mut row = 0;
    for part in parts {
        let rows = feats.narrow(0, row, part.batch.n as i64);
        row += part.batch.n as i64;
        for &head in &part.heads {
            let y = targets(net, head, &part.batch, device)?;
            match (head, pfc, net.arcface()) {
                (Head::Fr, Some(pfc), Some(arc)) => {
                    let step = PfcStep { grad_factor: pfc.grad_factor * weights[0], ..*pfc };
                    let (loss, term) = step.loss(arc, &net.embed(&rows, true)?, &y)?;
                    losses.push((head, loss));
                    feedback.push(term * weights[0]);
                }
                _ => losses.push((head, head_loss(net, cfg, head, &rows, &y, comm)?)),
            }
        }
    }
    // A feedback term adds its gradient and nothing to the value.
    let feedback = feedback.into_iter().map(|t| &t - t.detach());
    let total = losses
        .iter()
        .map(|(h, l)| l * weights[*h as usize])
        .chain(feedback)
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, device)));
    Ok(Losses { total, parts: losses, cuts })
}

/// Records in `parts` with a known target for each head (a head that never sees one is a
/// silent no-op, which the loop reports).
pub fn labelled(parts: &[Part]) -> [f64; 3] {
    let mut n = [0.0; 3];
    for part in parts {
        for &head in &part.heads {
            let column = match head {
                Head::Fr => &part.batch.labels,
                Head::Gender => &part.batch.genders,
                Head::Age => &part.batch.ages,
            };
            n[head as usize] += column.iter().filter(|&&t| t >= 0).count() as f64;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, HeadConfig, Task};
    use crate::optim::{groups_by_prefix, Optimizer};
    use tch::nn;

    fn tiny_heads() -> HeadConfig {
        HeadConfig { emb_dim: 32, gender_hidden: vec![16], age_hidden: vec![16, 16], ..Default::default() }
    }

    fn batch(n: usize, labels: Vec<i64>, genders: Vec<i64>, ages: Vec<i64>) -> Batch {
        Batch { images: vec![0; n * 3 * 32 * 32], labels, genders, ages, n, size: 32, ..Default::default() }
    }

    #[test]
    fn targets_reject_out_of_range_and_clip_ages() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), Arch::Tiny, &tiny_heads(), 5, Task::Multi).unwrap();
        let b = batch(2, vec![0, 5], vec![0, 2], vec![9, -1]);
        assert!(targets(&net, Head::Fr, &b, Device::Cpu).unwrap_err().to_string().contains("identity label 5"));
        assert!(targets(&net, Head::Gender, &b, Device::Cpu).is_err());
        let age = targets(&net, Head::Age, &b, Device::Cpu).unwrap();
        assert_eq!(Vec::<i64>::try_from(age).unwrap(), vec![6, -1]);
    }

    /// A tiny Multi net memorises two fixed batches: every head's loss falls well below
    /// where it started.
    #[test]
    fn tiny_multi_net_overfits_fixed_batches() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let heads =
            HeadConfig { s: 16.0, m: 0.2, fr_dropout: 0.0, gender_dropout: 0.0, age_dropout: 0.0, ..tiny_heads() };
        let mut cfg = TrainConfig { heads: heads.clone(), ..TrainConfig::default() };
        cfg.model.task = Task::Multi;
        let net = Net::new(&vs.root(), Arch::Tiny, &heads, 4, Task::Multi).unwrap();
        let spec = [
            ("backbone.", 0.05, 5e-4),
            ("fr.", 0.05, 5e-4),
            ("arcface.", 0.05, 5e-4),
            ("gender.", 0.05, 5e-4),
            ("age.", 0.05, 5e-4),
        ];
        let mut opt = Optimizer::sgd(groups_by_prefix(&vs, &spec), 0.9);
        let batches: Vec<Batch> = (0..2)
            .map(|b| {
                let mut bt = batch(
                    8,
                    (0..8).map(|i| (i + b) % 4).collect(),
                    (0..8).map(|i| if i == 3 { -1 } else { i % 2 }).collect(),
                    (0..8).map(|i| (i * 3 + b) % 7).collect(),
                );
                bt.images =
                    Vec::<u8>::try_from(Tensor::randint(256, [8 * 3 * 32 * 32], (Kind::Uint8, Device::Cpu))).unwrap();
                bt
            })
            .collect();
        let all = Head::ALL;
        let measure = |net: &Net| -> Vec<f64> {
            let mut sum = vec![0.0; 3];
            for b in &batches {
                // Train-mode BN (batch statistics): what the steps optimised.
                let parts = [Part { batch: b.clone(), heads: all.to_vec() }];
                let l =
                    tch::no_grad(|| losses(net, &cfg, &parts, Device::Cpu, &crate::dist::single::Single, None, false))
                        .unwrap();
                for (s, (_, v)) in sum.iter_mut().zip(&l.parts) {
                    *s += v.double_value(&[]);
                }
            }
            sum
        };
        let before = measure(&net);
        for step in 0..100 {
            opt.zero_grad();
            let parts = [Part { batch: batches[step % 2].clone(), heads: all.to_vec() }];
            losses(&net, &cfg, &parts, Device::Cpu, &crate::dist::single::Single, None, false)
                .unwrap()
                .total
                .backward();
            opt.step();
        }
        let after = measure(&net);
        // Soft targets cannot go below their own entropy (summed over the two batches).
        let entropy = |c: f64| -(0.9f64 * 0.9f64.ln() + 0.1 * (0.1 / (c - 1.0)).ln()) * 2.0;
        let floors = [0.0, entropy(2.0), entropy(7.0)];
        for (i, head) in all.iter().enumerate() {
            let (b, a) = (before[i] - floors[i], after[i] - floors[i]);
            assert!(a < 0.5 * b, "{head:?}: loss above its floor {b} -> {a}");
        }
    }
}
