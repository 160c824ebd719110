//! SGD on a group whose parameters and gradients each lie in one slice of the flat
//! buffers (optim/flat.rs), with its momentum in a third: the same three fused passes as
//! per parameter, but on three tensors per group instead of three per parameter (161 per
//! step on a ResNet-50). The per-parameter momentum buffers the optimiser saves and loads
//! stay views of the flat one; buffers loaded from a checkpoint are gathered into it.

use super::scalars::sgd_step;
use tch::Tensor;

pub struct FlatGroup {
    params: Tensor,
    grads: Tensor,
    momentum: Option<Tensor>,
}

/// SGD's factors for one group, as 0-dim tensors on its device (`None`: not applied).
pub struct Factors<'a> {
    pub weight_decay: Option<&'a Tensor>,
    pub momentum: Option<&'a Tensor>,
    pub neg_lr: &'a Tensor,
    /// `--amp`'s flag: where set, the step leaves parameters and momentum as they were.
    pub skip: Option<&'a Tensor>,
}

impl FlatGroup {
    /// `params` and `grads` are the group's slices of the flat buffers.
    pub fn new(params: Tensor, grads: Tensor) -> FlatGroup {
        FlatGroup { params, grads, momentum: None }
    }

    /// One step of the group's `params` (whose slices these are, in order); `bufs` are
    /// their momentum buffers, left as views of the flat one.
    pub fn step(&mut self, params: &[Tensor], bufs: &mut [Option<Tensor>], f: &Factors) {
        let mut d = match f.weight_decay {
            Some(wd) => self.grads.addcmul(&self.params, wd),
            None => self.grads.copy(),
        };
        let old = self.gathered(params, bufs);
        if let (Some(m), Some(buf)) = (f.momentum, &old) {
            let _ = d.addcmul_(buf, m);
        }
        let d = sgd_step(f.skip, &mut self.params, d, old.as_ref().map(Tensor::shallow_clone), f.neg_lr);
        match &mut self.momentum {
            Some(m) => {
                m.copy_(&d);
            }
            None => {
                for (buf, view) in bufs.iter_mut().zip(views(&d, params)) {
                    *buf = Some(view);
                }
                self.momentum = Some(d);
            }
        }
    }

    /// The flat momentum, after copying in any per-parameter buffer that is not a view of
    /// it (a resume or a rollback loaded them apart); `None` before the group's first step.
    fn gathered(&mut self, params: &[Tensor], bufs: &mut [Option<Tensor>]) -> Option<Tensor> {
        if bufs.iter().all(Option::is_none) {
            self.momentum = None;
            return None;
        }
        let flat = self.momentum.get_or_insert_with(|| self.params.zeros_like()).shallow_clone();
        for (buf, view) in bufs.iter_mut().zip(views(&flat, params)) {
            let apart = buf.as_ref().is_none_or(|b| b.data_ptr() != view.data_ptr());
            if apart {
                match buf {
                    Some(b) => view.shallow_clone().copy_(b),
                    None => {
                        let _ = view.shallow_clone().zero_();
                    }
                }
                *buf = Some(view);
            }
        }
        Some(flat)
    }
}

/// Each parameter's part of a flat tensor laid out as the group's slice (a tensor of its
/// own, starting its storage), shaped and strided as the parameter.
fn views(flat: &Tensor, params: &[Tensor]) -> Vec<Tensor> {
    let mut offset = 0;
    params
        .iter()
        .map(|p| {
            let view = flat.as_strided(p.size().as_slice(), p.stride().as_slice(), Some(offset));
            offset += p.numel() as i64;
            view
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::optim::flat::FlatGrads;
    use crate::optim::{Optimizer, ParamGroup};
    use tch::{Device, Kind, Tensor};

    /// A channels-last conv weight, a bias and a matrix.
    fn params() -> Vec<Tensor> {
        let conv = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = conv.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let others =
            [Tensor::randn([5], (Kind::Float, Device::Cpu)), Tensor::randn([7, 5], (Kind::Float, Device::Cpu))];
        std::iter::once(conv).chain(others).map(|t| t.set_requires_grad(true)).collect()
    }

    fn backward(ps: &[Tensor], step: i64) {
        let x = (step + 1) as f64;
        let loss = (&ps[0] * x).sin().sum(Kind::Float)
            + (&ps[1] * &ps[1]).sum(Kind::Float) * x
            + ps[2].matmul(&ps[1]).cos().sum(Kind::Float);
        loss.backward();
    }

    fn optimizer(ps: &[Tensor]) -> Optimizer {
        let groups = vec![
            ParamGroup::new("a", ps[..2].iter().map(Tensor::shallow_clone).collect(), 0.1, 5e-4),
            ParamGroup::new("b", vec![ps[2].shallow_clone()], 0.05, 0.0),
        ];
        Optimizer::sgd(groups, 0.9)
    }

    fn close(a: &Tensor, b: &Tensor) -> bool {
        let scale = a.abs().max().double_value(&[]).max(1.0);
        (a - b).abs().max().double_value(&[]) <= 1e-6 * scale
    }

    /// Stepping whole groups on flat slices gives every parameter and momentum buffer what
    /// stepping each parameter gives, across a reload of the state. Equal up to rounding:
    /// libtorch's CPU kernels round a tensor's vectorised body and its scalar tail
    /// differently, and a parameter's elements fall into one or the other by where it sits
    /// in the slice (every run of a configuration steps the same way, so resumes stay exact).
    #[test]
    fn flat_groups_step_as_parameters_do() {
        // A copy, not a second seeded draw: other tests share libtorch's global generator.
        let apart = params();
        let flat: Vec<Tensor> = apart.iter().map(|t| t.detach().copy().set_requires_grad(true)).collect();
        let (mut a, mut b) = (optimizer(&apart), optimizer(&flat));
        let mut kept = None;
        for step in 0..5 {
            a.zero_grad();
            b.zero_grad();
            backward(&apart, step);
            backward(&flat, step);
            if step == 0 {
                let f = FlatGrads::adopt(&flat, &[1, 0, 1]).unwrap();
                assert!(f.span(&flat[..2]).is_none(), "stages 1, 0 do not lay group a out as one run");
                assert!(f.span(&flat[2..]).is_some());
                let f = FlatGrads::adopt(&flat, &[0, 0, 1]).unwrap();
                b.attach_flat(|group| f.span(group));
                kept = Some(f);
            }
            if step == 3 {
                b.load_state(&a.state()).unwrap(); // a resume: buffers loaded apart
            }
            a.step();
            b.step();
            for (i, (p, q)) in apart.iter().zip(&flat).enumerate() {
                assert!(close(p, q), "step {step}: parameter {i} differs");
            }
            for ((n, s), (_, t)) in a.state().iter().zip(&b.state()) {
                assert!(close(s, t), "step {step}: {n} differs");
            }
        }
        // SGD stepped group a whole: its momentum buffers are one tensor's slices.
        let state = b.state();
        let ptr = |name: &str| state.iter().find(|(n, _)| n == name).map(|(_, t)| t.data_ptr() as usize).unwrap();
        assert_eq!(ptr("a.1"), ptr("a.0") + 4 * flat[0].numel());
        let f = kept.unwrap();
        let (values, _) = f.span(&flat[..2]).unwrap();
        assert_eq!(values.data_ptr(), flat[0].data_ptr(), "the parameters live in the flat buffer");
        assert_eq!(flat[0].stride(), apart[0].stride(), "the channels-last weight kept its layout");
    }
}
