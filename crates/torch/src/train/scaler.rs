//! Dynamic loss scaling for `--amp`, PyTorch's `GradScaler` rule: the loss is multiplied by
//! `scale` before backward so that small fp16 gradients do not flush to zero, and the
//! all-reduced gradients are divided back before the update. A step whose gradients hold
//! an inf or NaN is skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a
//! row it doubles. The scale is a power of two, so a step with finite gradients updates
//! the weights exactly as an unscaled step would.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// PyTorch's defaults (insightface's arcface_torch grows every 100 steps instead; the first
/// scale is `--amp-init-scale`).
pub const GROWTH_INTERVAL: u64 = 2000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Good steps since the last change of scale.
    pub good_steps: u64,
    /// Steps skipped for non-finite gradients over the whole run.
    pub skipped: u64,
}

impl LossScale {
    /// Rounds `init` down to a power of two (exact scaling needs one).
    pub fn new(init: f64) -> LossScale {
        LossScale { scale: 2f64.powi(init.log2().floor() as i32), good_steps: 0, skipped: 0 }
    }

    /// True when every gradient is finite; then divides them by the scale in place.
    /// Every rank sees the same all-reduced gradients, so every rank agrees.
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        tch::no_grad(|| {
            let bad: Vec<Tensor> = grads.iter().map(|g| g.isfinite().logical_not().any()).collect();
            if !bad.is_empty() && crate::host_sync::i64_of(&Tensor::stack(&bad, 0).any()) != 0 {
                return false;
            }
            for g in grads {
                let _ = g.shallow_clone().g_mul_scalar_(1.0 / self.scale);
            }
            true
        })
    }

    /// Halves the scale after an overflow, doubles it after a run of good steps.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

/// The loss to call `backward` on: `loss / accum`, then scaled (in that order, so the
/// scaled run differs from the unscaled one by the power of two alone).
pub fn scaled_loss(loss: &Tensor, accum: usize, scale: Option<&LossScale>) -> Tensor {
    let l = loss / accum as f64;
    match scale {
        Some(s) => l * s.scale,
        None => l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn grads(values: &[f32]) -> Vec<Tensor> {
        vec![Tensor::from_slice(values).to_kind(Kind::Float).to_device(Device::Cpu)]
    }

    #[test]
    fn unscales_finite_gradients_exactly() {
        let s = LossScale::new(100_000.0);
        assert_eq!(s.scale, 65536.0, "rounded down to a power of two");
        let g = grads(&[65536.0, -3.0 * 65536.0, 1.5]);
        assert!(s.unscale(&g));
        assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap(), vec![1.0, -3.0, 1.5 / 65536.0]);
    }

    #[test]
    fn non_finite_gradients_are_left_alone_and_reported() {
        let s = LossScale::new(1024.0);
        for bad in [f32::INFINITY, f32::NAN] {
            let g = grads(&[2048.0, bad]);
            assert!(!s.unscale(&g));
            assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap()[0], 2048.0);
        }
    }

    #[test]
    fn backs_off_on_overflow_and_grows_after_an_interval() {
        let mut s = LossScale::new(1024.0);
        s.update(false);
        assert_eq!((s.scale, s.skipped, s.good_steps), (512.0, 1, 0));
        (0..GROWTH_INTERVAL - 1).for_each(|_| s.update(true));
        assert_eq!(s.scale, 512.0);
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (1024.0, 0));
        let mut floor = LossScale::new(1.0);
        floor.update(false);
        assert_eq!(floor.scale, 1.0, "never below 1");
    }
}
