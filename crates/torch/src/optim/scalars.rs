//! SGD's update, skipped on the device by `--amp`'s flag (`sgd_step`, `skip_if`), and its
//! per-group factors (weight decay, momentum, −lr) as 0-dim tensors on the
//! parameters' device, kept from step to step and refilled only when a value changes (a
//! decay, a schedule step): a `fill_` is a kernel launch, where building them anew each
//! step was three pageable host-to-device copies per group.

use tch::Tensor;

#[derive(Default)]
pub struct DeviceScalars {
    tensors: Vec<Tensor>,
    values: Vec<f64>,
}

impl DeviceScalars {
    /// `values` as tensors of `like`'s dtype and device.
    pub fn get(&mut self, values: &[f64], like: &Tensor) -> &[Tensor] {
        let fits = self.tensors.first().is_some_and(|t| t.device() == like.device() && t.kind() == like.kind());
        if !fits || self.tensors.len() != values.len() {
            self.tensors = values.iter().map(|_| Tensor::zeros([], (like.kind(), like.device()))).collect();
            self.values = vec![f64::NAN; values.len()];
        }
        for ((t, old), &new) in self.tensors.iter_mut().zip(&mut self.values).zip(values) {
            // Bit equality: NaN never equals, so a NaN value is refilled every time.
            if old.to_bits() != new.to_bits() {
                let _ = t.fill_(new);
                *old = new;
            }
        }
        &self.tensors
    }
}

/// SGD's update `p += neg_lr·d`, returning the new momentum `d`; where `skip` (a 0-dim
/// bool on the device) is true, `p` and the momentum as they were (zero for a first step).
pub fn sgd_step(skip: Option<&Tensor>, p: &mut Tensor, d: Tensor, buf: Option<Tensor>, neg_lr: &Tensor) -> Tensor {
    let Some(skip) = skip else {
        let _ = p.addcmul_(&d, neg_lr);
        return d;
    };
    let stepped = p.addcmul(&d, neg_lr);
    p.copy_(&p.where_self(skip, &stepped));
    buf.unwrap_or_else(|| d.zeros_like()).where_self(skip, &d)
}

impl super::Optimizer {
    /// Whether `skip_if` is applied on the device (SGD); AdamW's step counts are host
    /// numbers, so its caller reads the flag and skips the step itself.
    pub fn skips_on_device(&self) -> bool {
        matches!(self.rule, super::Rule::Sgd { .. })
    }

    /// The steps from now on apply only where `flag` (a one-element f32 tensor) is 0;
    /// the selection is `where`, so an applied step is bit for bit the plain one.
    pub fn skip_if(&mut self, flag: Option<&Tensor>) {
        self.skip = flag.map(|f| f.reshape([]).gt(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn kept_until_a_value_changes_and_rounded_as_a_fresh_tensor() {
        let like = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let mut s = DeviceScalars::default();
        let first: Vec<usize> = s.get(&[5e-4, 0.9, -0.1], &like).iter().map(|t| t.data_ptr() as usize).collect();
        let again: Vec<usize> = s.get(&[5e-4, 0.9, -0.1], &like).iter().map(|t| t.data_ptr() as usize).collect();
        assert_eq!(first, again, "same values: the same tensors");
        let t = s.get(&[5e-4, 0.9, -0.01], &like);
        assert_eq!(t[2].data_ptr() as usize, first[2], "a new value is filled in, not reallocated");
        let fresh = Tensor::from(-0.01).to_kind(Kind::Float);
        assert!(t[2].equal(&fresh), "{:?} vs {:?}", t[2], fresh);
    }
}
