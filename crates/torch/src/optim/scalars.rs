//! SGD's per-group factors (weight decay, momentum, −lr) as 0-dim tensors on the
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

/// SGD's update `p += neg_lr·d`, `buf = d` where `skip` (a 0-dim bool on the device) is
/// false; `p` and the returned buffer as they were (zero for a first step) where it is true.
pub fn step_unless(skip: &Tensor, p: &mut Tensor, d: Tensor, buf: Option<Tensor>, neg_lr: &Tensor) -> Tensor {
    let stepped = p.addcmul(&d, neg_lr);
    p.copy_(&p.where_self(skip, &stepped));
    buf.unwrap_or_else(|| d.zeros_like()).where_self(skip, &d)
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
