//! Gradients in one flat buffer: each parameter's `.grad` is re-pointed (`set_`) at its
//! slice of one contiguous f32 tensor, so autograd accumulates straight into it (as DDP's
//! `gradient_as_bucket_view`). An all-reduce then works on slices of the buffer in place,
//! with no packing copy in and no write-back out, and zeroing is one call.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

pub struct FlatGrads {
    flat: Tensor,
    /// The parameters themselves, laid out as `flat` (each one's data re-pointed into it),
    /// so the optimiser can update a group with a few calls on slices (optim/flat_sgd.rs).
    values: Tensor,
    /// The parameters whose gradients live in `flat`, in the order given to `adopt`.
    params: Vec<Tensor>,
    /// Where each of `params` lies in both buffers (offset, length).
    at: Vec<(i64, i64)>,
    /// Each stage's slice of `flat` (offset, length), by stage.
    stages: Vec<(i64, i64)>,
}

impl FlatGrads {
    /// Moves the (defined, f32, same-device) gradients of `params` into one buffer and
    /// the parameters into another laid out alike, keeping values and each one's memory
    /// order (channels-last weights stay so), and points each `.grad` and each parameter
    /// at its slice. The buffers hold `stages[i]`'s parameters together (stage by stage,
    /// given order within one), so each stage's gradients are one slice that can be
    /// all-reduced on its own.
    pub fn adopt(params: &[Tensor], stages: &[usize]) -> Result<FlatGrads> {
        ensure!(params.len() == stages.len(), "a stage for each of {} parameters", params.len());
        ensure!(!params.is_empty(), "no gradients to flatten");
        let device = params[0].device();
        let mut total = 0i64;
        for (i, p) in params.iter().enumerate() {
            let g = p.grad();
            ensure!(g.defined(), "parameter {i} has no gradient yet");
            ensure!(
                g.kind() == Kind::Float && p.kind() == Kind::Float && g.device() == device && p.device() == device,
                "parameter {i} or its gradient is not f32 on {device:?}"
            );
            ensure!(dense(p), "parameter {i} is a strided view, not a whole tensor");
            total += p.numel() as i64;
        }
        let flat = Tensor::zeros([total], (Kind::Float, device));
        let values = Tensor::zeros([total], (Kind::Float, device));
        let count = stages.iter().max().map_or(0, |&s| s + 1);
        let mut slices = vec![(0i64, 0i64); count];
        let mut at = vec![(0i64, 0i64); params.len()];
        let mut offset = 0i64;
        let _no_grad = tch::no_grad_guard();
        for (stage, slice) in slices.iter_mut().enumerate() {
            slice.0 = offset;
            for (i, p) in params.iter().enumerate().filter(|&(i, _)| stages[i] == stage) {
                let n = p.numel() as i64;
                move_into(&p.grad(), &flat, offset, &p.stride());
                move_into(p, &values, offset, &p.stride());
                at[i] = (offset, n);
                offset += n;
            }
            slice.1 = offset - slice.0;
        }
        Ok(FlatGrads { flat, values, params: params.iter().map(Tensor::shallow_clone).collect(), at, stages: slices })
    }

    /// A group's parameters and gradients as one slice of each buffer, when the group's
    /// parameters (in its order) lie there one after another; `None` otherwise.
    pub fn span(&self, group: &[Tensor]) -> Option<(Tensor, Tensor)> {
        let mut run: Option<(i64, i64)> = None;
        for p in group {
            let i = self.params.iter().position(|q| q.data_ptr() == p.data_ptr())?;
            let (off, n) = self.at[i];
            run = match run {
                None => Some((off, n)),
                Some((start, len)) if start + len == off => Some((start, len + n)),
                Some(_) => return None,
            };
        }
        let (start, len) = run?;
        Some((self.values.narrow(0, start, len), self.flat.narrow(0, start, len)))
    }

    /// Stage `i`'s gradients: one slice of the buffer (empty for a stage without any).
    pub fn stage(&self, i: usize) -> Tensor {
        let (at, n) = self.stages.get(i).copied().unwrap_or((0, 0));
        self.flat.narrow(0, at, n)
    }

    pub fn buffer(&self) -> &Tensor {
        &self.flat
    }

    /// Whether `params` are still exactly the adopted ones, each `.grad` still in the buffer
    /// (a parameter set that changed, or autograd replacing a gradient, needs a new adopt).
    pub fn holds(&self, params: &[Tensor]) -> bool {
        let base = self.flat.data_ptr() as usize;
        let end = base + self.flat.numel() * 4;
        params.len() == self.params.len()
            && params.iter().zip(&self.params).all(|(p, q)| {
                let g = p.grad();
                let at = g.data_ptr() as usize;
                p.data_ptr() == q.data_ptr() && g.defined() && (base..end).contains(&at)
            })
    }

    pub fn zero(&self) {
        let _ = self.flat.shallow_clone().zero_();
    }
}

/// Copies `t` into `buffer` at `offset` in its own memory order and re-points `t` there.
fn move_into(t: &Tensor, buffer: &Tensor, offset: i64, strides: &[i64]) {
    let size = t.size();
    buffer.as_strided(size.as_slice(), strides, Some(offset)).copy_(t);
    let _ = t.shallow_clone().set_source_tensor_storage_offset_(buffer, offset, size.as_slice(), strides);
}

/// Whether `t`'s elements fill exactly `numel` places of memory (any dimension order).
fn dense(t: &Tensor) -> bool {
    let span: i64 = t.size().iter().zip(t.stride()).map(|(&d, s)| (d - 1).max(0) * s).sum::<i64>() + 1;
    t.numel() == 0 || (span == t.numel() as i64 && t.stride().iter().all(|&s| s > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn params() -> (Tensor, Tensor) {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32, -1.0]).set_requires_grad(true);
        (a, b)
    }

    fn loss(a: &Tensor, b: &Tensor, x: f64) -> Tensor {
        (a * x).pow_tensor_scalar(2).sum(Kind::Float) + (b * a.sum(Kind::Float)).sum(Kind::Float)
    }

    /// Autograd accumulates into the buffer in place: the same values as ordinary
    /// `.grad` tensors, bit for bit, over several backwards and a zeroing.
    #[test]
    fn backward_accumulates_into_the_buffer_with_the_same_values() {
        let (a, b) = params();
        let (a2, b2) = params();
        loss(&a, &b, 1.0).backward();
        loss(&a2, &b2, 1.0).backward();
        let flat = FlatGrads::adopt(&[a.shallow_clone(), b.shallow_clone()], &[0, 0]).unwrap();
        assert!(flat.holds(&[a.shallow_clone(), b.shallow_clone()]));
        for x in [0.5, -2.0] {
            loss(&a, &b, x).backward();
            loss(&a2, &b2, x).backward();
        }
        assert!(flat.holds(&[a.shallow_clone(), b.shallow_clone()]), "autograd replaced a gradient");
        let want = Tensor::cat(&[a2.grad().reshape([-1]), b2.grad().reshape([-1])], 0);
        assert!(flat.buffer().equal(&want), "{:?} vs {:?}", flat.buffer(), want);
        flat.zero();
        assert_eq!(a.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        let _ = a2.grad().zero_();
        let _ = b2.grad().zero_();
        loss(&a, &b, 3.0).backward();
        loss(&a2, &b2, 3.0).backward();
        assert!(flat.buffer().equal(&Tensor::cat(&[a2.grad().reshape([-1]), b2.grad().reshape([-1])], 0)));
        assert_eq!(flat.buffer().device(), Device::Cpu);
    }

    /// Each stage's gradients are one slice, in stage order, whatever the parameters' order.
    #[test]
    fn stages_are_slices_in_stage_order() {
        let (a, b) = params();
        loss(&a, &b, 1.0).backward();
        let flat = FlatGrads::adopt(&[a.shallow_clone(), b.shallow_clone()], &[1, 0]).unwrap();
        assert!(flat.stage(0).equal(&b.grad()) && flat.stage(1).equal(&a.grad().reshape([-1])));
        assert_eq!(flat.buffer().narrow(0, 0, 2).data_ptr(), b.grad().data_ptr());
        assert_eq!(flat.stage(2).numel(), 0);
    }

    #[test]
    fn a_parameter_without_a_gradient_is_an_error() {
        let (a, _) = params();
        assert!(FlatGrads::adopt(&[a], &[0]).err().unwrap().to_string().contains("no gradient yet"));
    }
}
