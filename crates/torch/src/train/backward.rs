//! The step's last backward and the gradient all-reduce, overlapped (`--overlap on`).
//!
//! The forward cut the backbone after each stage (`Net::features_staged`: the next stage
//! reads a detached leaf). The backward then runs one stage at a time, the heads and last
//! stage first; each stage's gradients are handed to the communicator as soon as its
//! backward is done, and reduced while the earlier stages' backward runs. A stage's
//! backward gets the leaf's gradient `g` as `(output · g).sum()`, whose gradient with
//! respect to the output is `g` exactly, so the gradients are bit-identical to the
//! one-shot backward's. `--overlap off` (and any step the groups are not known before the
//! backward) runs the one-shot backward, then hands over the same groups in the same
//! order: the same all-reduce calls, only later.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::replica::Replica;
use crate::dist::Comm;
use crate::model::Cut;

/// Backpropagates `loss` through the heads and the last stage, then through each cut
/// from the last to the first, calling `done(stage)` once a stage's gradients are complete.
pub fn staged(loss: &Tensor, cuts: &[Cut], mut done: impl FnMut(usize) -> Result<()>) -> Result<()> {
    loss.backward();
    done(cuts.len())?;
    for (stage, cut) in cuts.iter().enumerate().rev() {
        let g = cut.leaf.grad();
        if g.defined() {
            (&cut.output * g).sum(Kind::Float).backward();
        }
        done(stage)?;
    }
    Ok(())
}

/// Whether this step can overlap: asked for, a backend that reduces in the background
/// (not the single-process one), and every group known before the backward (from the
/// second step on).
pub fn can_overlap(overlap: bool, comm: &dyn Comm, replica: &Replica, frozen_backbone: bool) -> bool {
    overlap && comm.overlaps() && replica.flat_ready() && !frozen_backbone
}

/// The last micro-batch's backward of `loss` and the all-reduce of the step's gradients:
/// overlapped when `cuts` came from a staged forward, after the backward otherwise.
pub fn backward_and_reduce(loss: &Tensor, cuts: &[Cut], replica: &mut Replica, comm: &dyn Comm) -> Result<Reduced> {
    if cuts.is_empty() {
        // After the backward: a step's first gradients are what the flat buffer adopts.
        loss.backward();
        let groups = dropped_for_fault(replica.grad_groups());
        for group in groups.iter().rev() {
            comm.start_mean(group)?;
        }
    } else {
        let groups = dropped_for_fault(replica.grad_groups());
        staged(loss, cuts, |stage| comm.start_mean(&groups[stage]))?;
    }
    Ok(Reduced { waited: comm.finish_means()?, overlapped: !cuts.is_empty() })
}

/// How a step's all-reduce went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reduced {
    /// Seconds the step waited for communication after its backward ended.
    pub waited: f64,
    /// Whether the all-reduce ran during the backward.
    pub overlapped: bool,
}

/// `TRAINER_FAULT=…:layout` drops a gradient from the first group handed over.
fn dropped_for_fault(mut groups: Vec<Vec<Tensor>>) -> Vec<Vec<Tensor>> {
    if let Some(first) = groups.last_mut() {
        crate::dist::failure::maybe_drop_gradient(first);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::loss::cross_entropy;
    use crate::model::{Arch, BackboneSpec, Head, HeadConfig, Net, Task};
    use std::collections::BTreeSet;
    use tch::{nn::VarStore, Device};

    /// A forward and backward of `net` on `x`: each gradient by name, and with `staged`,
    /// which variables had one after each stage's backward.
    fn backward(vs: &VarStore, net: &Net, x: &Tensor, staged: bool) -> (Vec<(String, Tensor)>, Vec<BTreeSet<String>>) {
        let y = Tensor::from_slice(&[1i64, 3]);
        let (feats, cuts) = match staged {
            true => net.features_staged(x, true),
            false => (net.features(x, true), Vec::new()),
        };
        let loss = cross_entropy(&net.logits(Head::Fr, &feats, Some(&y), true).unwrap(), &y);
        let mut seen = Vec::new();
        let with_grad = || vs.variables().into_iter().filter(|(_, t)| t.grad().defined()).map(|(n, _)| n).collect();
        super::staged(&loss, &cuts, |_| {
            seen.push(with_grad());
            Ok(())
        })
        .unwrap();
        let mut grads: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.grad().defined()).map(|(n, t)| (n, t.grad().copy())).collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (grads, seen)
    }

    /// After stage k's backward exactly the variables of stages k.. have gradients.
    fn assert_stages_fill_in_order(arch: Arch, net: &Net, grads: &[(String, Tensor)], seen: &[BTreeSet<String>]) {
        for (i, names) in seen.iter().enumerate() {
            let k = seen.len() - 1 - i;
            let want: BTreeSet<String> =
                grads.iter().map(|(n, _)| n).filter(|n| net.stage_of(n) >= k).cloned().collect();
            assert_eq!(names, &want, "{arch:?}: variables with a gradient after stage {k}'s backward");
        }
    }

    /// The staged backward gives every gradient bit for bit, on every kind of backbone,
    /// and each backbone names the right stage for each of its variables.
    #[test]
    fn staged_backward_gives_the_one_shot_gradients_on_every_backbone() {
        // One libtorch thread: some multi-threaded CPU kernels (the depth-wise convolutions)
        // reduce in an order that varies run to run, so even two one-shot backwards could
        // differ; training ranks are compared the same way (`--threads 1` in the tests).
        tch::set_num_threads(1);
        for (arch, side) in
            [(Arch::Tiny, 32), (Arch::Resnet18, 32), (Arch::Iresnet18, 112), (Arch::Mbf, 112), (Arch::VitT, 112)]
        {
            // One net and one input for both backwards, and no dropout: other tests draw from
            // libtorch's global generator concurrently, so a re-seed could not replay a draw.
            let vs = VarStore::new(Device::Cpu);
            let cfg = HeadConfig { emb_dim: 16, fr_dropout: 0.0, ..Default::default() };
            // No stochastic depth or masking: the two forwards must draw nothing.
            let spec = match arch {
                Arch::VitT => BackboneSpec { arch, drop_path: Some(0.0), mask_ratio: Some(0.0) },
                _ => arch.into(),
            };
            let net = Net::new(&vs.root(), spec, &cfg, 5, Task::Fr).unwrap();
            let x = Tensor::randn([2, 3, side, side], (Kind::Float, Device::Cpu));
            let (staged, seen) = backward(&vs, &net, &x, true);
            assert!(seen.len() >= 2, "{arch:?}: {} stages", seen.len());
            assert_stages_fill_in_order(arch, &net, &staged, &seen);
            for (_, t) in vs.variables().into_iter().filter(|(_, t)| t.grad().defined()) {
                let _ = t.grad().zero_();
            }
            let (one_shot, _) = backward(&vs, &net, &x, false);
            let names = |g: &[(String, Tensor)]| g.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(names(&one_shot), names(&staged), "{arch:?}: the variables with a gradient");
            for ((name, a), (_, b)) in one_shot.iter().zip(&staged) {
                assert!(a.equal(b), "{arch:?}: {name}'s gradient differs");
            }
        }
    }
}
