//! AdamW as `torch.optim.AdamW` computes it (its single-tensor path, no AMSGrad): per
//! parameter, `step += 1; p *= 1 − lr·wd; m = lerp(m, g, 1 − β1); v = β2·v + (1 − β2)·g²;
//! p −= lr / (1 − β1^step) · m / (√v / √(1 − β2^step) + ε)`. The weight decay is decoupled
//! (it scales the weights, it is not added to the gradient), so it never passes through
//! the moments.

use anyhow::{bail, Result};
use tch::Tensor;

/// β1, β2 and ε, as `torch.optim.AdamW(betas=.., eps=..)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub betas: [f64; 2],
    pub eps: f64,
}

/// One parameter's moments and its own step count (a parameter skipped in a step, such
/// as a head not trained that step, does not count it), as PyTorch keeps them.
pub struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: f64,
}

/// The names a parameter's state is saved under: `<group>.<index>.<part>`.
pub const PARTS: [&str; 3] = ["exp_avg", "exp_avg_sq", "step"];

impl AdamW {
    /// One update of `p` from its gradient at learning rate `lr` and weight decay `wd`;
    /// `state` is created on the parameter's first step.
    pub fn update(&self, p: &mut Tensor, grad: &Tensor, state: &mut Option<Moments>, lr: f64, wd: f64) {
        let [beta1, beta2] = self.betas;
        let m = state.get_or_insert_with(|| Moments { exp_avg: p.zeros_like(), exp_avg_sq: p.zeros_like(), step: 0.0 });
        m.step += 1.0;
        if wd != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * wd);
        }
        let _ = m.exp_avg.lerp_(grad, 1.0 - beta1);
        let _ = m.exp_avg_sq.g_mul_scalar_(beta2);
        let _ = m.exp_avg_sq.addcmul_(grad, &grad.g_mul_scalar(1.0 - beta2));
        let step_size = lr / (1.0 - beta1.powf(m.step));
        let correction2_sqrt = (1.0 - beta2.powf(m.step)).sqrt();
        let denom = (m.exp_avg_sq.sqrt() / correction2_sqrt) + self.eps;
        let _ = p.addcdiv_(&m.exp_avg.g_mul_scalar(-step_size), &denom);
    }
}

impl Moments {
    /// `(part, tensor)` for each of [`PARTS`]; the step as a 0-dim f64 tensor.
    pub fn parts(&self) -> [(&'static str, Tensor); 3] {
        [
            (PARTS[0], self.exp_avg.shallow_clone()),
            (PARTS[1], self.exp_avg_sq.shallow_clone()),
            (PARTS[2], Tensor::from(self.step)),
        ]
    }

    /// Rebuilds a parameter's state from its saved parts, each checked against `p`.
    pub fn from_parts(name: &str, p: &Tensor, parts: [Option<&Tensor>; 3]) -> Result<Moments> {
        let [Some(avg), Some(sq), Some(step)] = parts else {
            bail!("optimizer state {name}: needs all of {PARTS:?}, some are missing")
        };
        let moment = |t: &Tensor, part: &str| -> Result<Tensor> {
            if t.size() != p.size() || t.kind() != p.kind() {
                bail!(
                    "optimizer state {name}.{part}: {:?} {:?} but the parameter is {:?} {:?}",
                    t.kind(),
                    t.size(),
                    p.kind(),
                    p.size()
                );
            }
            Ok(t.to_device(p.device()).detach().copy())
        };
        let step = crate::host_sync::try_f64_of(step)?;
        if !(step.is_finite() && step >= 1.0) {
            bail!("optimizer state {name}.step: {step} is not a step count");
        }
        Ok(Moments { exp_avg: moment(avg, PARTS[0])?, exp_avg_sq: moment(sq, PARTS[1])?, step })
    }
}

/// `--betas B1,B2`: each in [0, 1).
pub fn parse_betas(s: &str) -> Result<[f64; 2], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [b1, b2] = parts.as_slice() else { return Err("expected two betas B1,B2, e.g. 0.9,0.999".into()) };
    let num = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let betas = [num(b1)?, num(b2)?];
    check_betas(betas)?;
    Ok(betas)
}

/// Both betas in [0, 1), as `torch.optim.AdamW` requires.
pub fn check_betas(betas: [f64; 2]) -> Result<(), String> {
    let fine = betas.iter().all(|b| (0.0..1.0).contains(b));
    fine.then_some(()).ok_or_else(|| format!("betas must be in [0, 1), got {betas:?}"))
}
