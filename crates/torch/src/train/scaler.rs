//! Dynamic loss scaling for `--amp`, PyTorch's `GradScaler` rule: the loss is multiplied by
//! `scale` before backward so that small fp16 gradients do not flush to zero, and the
//! all-reduced gradients are divided back before the update. A step whose gradients hold
//! an inf or NaN is skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a
//! row it doubles. The scale is a power of two, so a step with finite gradients updates
//! the weights exactly as an unscaled step would.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

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
}

/// The loss scale kept on the device, so that a step under `--amp fp16` reads nothing:
/// one fused check-and-unscale per gradient tensor (`_amp_foreach_non_finite_check_and_unscale_`,
/// a flag on the device), PyTorch's `_amp_update_scale_` for the backoff and growth, and
/// the skipped count summed there too. The optimiser applies the step only where the flag
/// is clear (`Optimizer::skip_if`). The host's `LossScale` (logs, checkpoints) is brought
/// up to date from `values` in the read the loop makes once per log interval.
pub struct DeviceScale {
    /// `[1]` f32, a power of two, at least 1 (the shape PyTorch's kernels take).
    scale_buf: Tensor,
    /// The same storage as a 0-dim tensor, to multiply losses by.
    scale: Tensor,
    /// Good steps since the last change of scale, `[1]` i32 (PyTorch's growth tracker).
    growth: Tensor,
    /// Skipped steps over the whole run, `[1]` f64.
    skipped: Tensor,
    /// 1 when the latest unscale met an inf or NaN, `[1]` f32.
    found_inf: Tensor,
}

impl DeviceScale {
    pub fn new(host: &LossScale, device: Device) -> DeviceScale {
        let one = |v: f64, kind: Kind| Tensor::from_slice(&[v]).to_kind(kind).to_device(device);
        let scale_buf = one(host.scale, Kind::Float);
        DeviceScale {
            scale: scale_buf.view([]),
            scale_buf,
            growth: one(host.good_steps as f64, Kind::Int),
            skipped: one(host.skipped as f64, Kind::Double),
            found_inf: one(0.0, Kind::Float),
        }
    }

    /// The scale, 0-dim, on the device.
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// Divides the gradients by the scale in place and sets the flag where one holds an inf
    /// or NaN (a flagged step is skipped, so its gradients' values no longer matter). Every
    /// rank sees the same all-reduced gradients; Partial FC's centres are each rank's own,
    /// so there the ranks agree on the flag before `update`.
    pub fn unscale(&mut self, grads: &[Tensor]) -> &Tensor {
        tch::no_grad(|| {
            let _ = self.found_inf.zero_();
            let inv = self.scale_buf.reciprocal();
            for g in grads {
                g.shallow_clone().internal_amp_non_finite_check_and_unscale(&mut self.found_inf, &inv);
            }
        });
        &self.found_inf
    }

    /// Backs off after a flagged step (never below 1) and counts it skipped; grows after
    /// `GROWTH_INTERVAL` good steps in a row. Nothing is read.
    pub fn update(&mut self) {
        tch::no_grad(|| {
            let _ = self.scale_buf.internal_amp_update_scale_(
                &self.growth,
                &self.found_inf,
                2.0,
                0.5,
                GROWTH_INTERVAL as i64,
            );
            let _ = self.scale_buf.clamp_min_(1.0);
            let _ = self.skipped.g_add_(&self.found_inf);
        })
    }

    /// `[scale, good steps, skipped]` as f64 on the device, for the interval's one read.
    pub fn values(&self) -> Tensor {
        Tensor::cat(&[self.scale_buf.to_kind(Kind::Double), self.growth.to_kind(Kind::Double), self.skipped.copy()], 0)
    }
}

impl LossScale {
    /// Takes the values `DeviceScale::values` read back; true when steps were skipped since.
    pub fn read_back(&mut self, values: &[f64]) -> bool {
        let [scale, good, skipped] = values else { return false };
        let more = *skipped as u64 > self.skipped;
        (self.scale, self.good_steps, self.skipped) = (*scale, *good as u64, *skipped as u64);
        more
    }
}

/// The loss to call `backward` on: `loss / accum`, then scaled (in that order, so the
/// scaled run differs from the unscaled one by the power of two alone).
pub fn scaled_loss(loss: &Tensor, accum: usize, scale: Option<&Tensor>) -> Tensor {
    let l = loss / accum as f64;
    match scale {
        Some(s) => l * s,
        None => l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Optimizer, ParamGroup};

    fn grads(values: &[f32]) -> Tensor {
        Tensor::from_slice(values)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    #[test]
    fn unscales_finite_gradients_exactly() {
        let host = LossScale::new(100_000.0);
        assert_eq!(host.scale, 65536.0, "rounded down to a power of two");
        let mut s = DeviceScale::new(&host, Device::Cpu);
        let g = [grads(&[65536.0, -3.0 * 65536.0]), grads(&[1.5])];
        assert_eq!(values(s.unscale(&g)), [0.0]);
        assert_eq!((values(&g[0]), values(&g[1])), (vec![1.0, -3.0], vec![1.5 / 65536.0]));
    }

    /// One bad tensor among good ones raises the flag, whichever comes last.
    #[test]
    fn non_finite_gradients_are_reported() {
        let mut s = DeviceScale::new(&LossScale::new(1024.0), Device::Cpu);
        for bad in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY] {
            let g = [grads(&[2048.0]), grads(&[1.0, bad]), grads(&[4.0])];
            assert_eq!(values(s.unscale(&g)), [1.0], "{bad}");
            assert_eq!(values(s.unscale(&[grads(&[1.0])])), [0.0], "the flag starts clear each time");
        }
    }

    #[test]
    fn backs_off_on_overflow_and_grows_after_an_interval() {
        let mut s = DeviceScale::new(&LossScale::new(1024.0), Device::Cpu);
        s.unscale(&[grads(&[f32::INFINITY])]);
        s.update();
        assert_eq!(values(&s.values()), [512.0, 0.0, 1.0]);
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.unscale(&[grads(&[1.0])]);
            s.update();
        }
        assert_eq!(values(&s.values()), [512.0, (GROWTH_INTERVAL - 1) as f64, 1.0]);
        s.unscale(&[grads(&[1.0])]);
        s.update();
        assert_eq!(values(&s.values()), [1024.0, 0.0, 1.0]);
        let mut host = LossScale::new(1.0);
        let mut floor = DeviceScale::new(&host, Device::Cpu);
        floor.unscale(&[grads(&[f32::NAN])]);
        floor.update();
        assert!(host.read_back(&values(&floor.values())), "a skip since the last read");
        assert_eq!((host.scale, host.good_steps, host.skipped), (1.0, 0, 1), "never below 1");
        assert!(!host.read_back(&values(&floor.values())));
    }

    /// A step whose gradient holds an inf leaves the weights and the momentum as they were
    /// and halves the scale, and this thread reads nothing from the device on the way; the
    /// next good step updates as SGD would.
    #[test]
    fn an_inf_step_is_skipped_on_the_device() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = Optimizer::sgd(vec![ParamGroup::new("g", vec![p.shallow_clone()], 0.1, 0.01)], 0.9);
        let mut amp = DeviceScale::new(&LossScale::new(8.0), Device::Cpu);
        let backward = |g: [f32; 2]| (&p * Tensor::from_slice(&g)).sum(Kind::Float).backward();
        let step = |opt: &mut Optimizer, amp: &mut DeviceScale, g: [f32; 2]| {
            opt.zero_grad();
            backward(g);
            let found = amp.unscale(&[p.grad()]).shallow_clone();
            amp.update();
            opt.skip_if(Some(&found));
            opt.step();
        };
        step(&mut opt, &mut amp, [8.0, 16.0]);
        let (weights, momentum) = (values(&p), values(&opt.state()[1].1));
        let before = crate::host_sync::on_this_thread();
        step(&mut opt, &mut amp, [f32::INFINITY, 8.0]);
        assert_eq!(crate::host_sync::on_this_thread(), before, "a host read in the skipped step");
        assert_eq!((values(&p), values(&opt.state()[1].1)), (weights.clone(), momentum.clone()));
        assert_eq!(values(&amp.values()), [4.0, 0.0, 1.0]);
        step(&mut opt, &mut amp, [4.0, 4.0]);
        let d: Vec<f64> = weights.iter().map(|w| 1.0 + 0.01 * w).collect();
        let buf: Vec<f64> = momentum.iter().zip(&d).map(|(m, d)| 0.9 * m + d).collect();
        let want: Vec<f64> = weights.iter().zip(&buf).map(|(w, b)| w - 0.1 * b).collect();
        assert!(values(&p).iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?} vs {want:?}", values(&p));
    }

    /// A skip on a parameter's first step leaves it as it was, with a zero momentum (the
    /// same next step as no momentum at all).
    #[test]
    fn a_skipped_first_step_leaves_zero_momentum() {
        let p = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let mut opt = Optimizer::sgd(vec![ParamGroup::new("g", vec![p.shallow_clone()], 0.1, 0.0)], 0.9);
        (&p * f64::INFINITY).sum(Kind::Float).backward();
        let mut amp = DeviceScale::new(&LossScale::new(1.0), Device::Cpu);
        let found = amp.unscale(&[p.grad()]).shallow_clone();
        opt.skip_if(Some(&found));
        opt.step();
        assert_eq!((values(&p), values(&opt.state()[1].1)), (vec![3.0], vec![0.0]));
    }
}
