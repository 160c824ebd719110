//! The optimiser: SGD (the default) or AdamW (`adamw.rs`), with per-group learning rates
//! and weight decay. SGD has PyTorch's semantics (dampening 0, no Nesterov): `d = g + wd·p; buf = momentum·buf + d` (`buf = d` on a parameter's first
//! step); `p -= lr·buf`. Weight decay applies to every parameter of a group, BN and biases
//! included, as PyTorch's default and insightface do. The state is tensors we own: SGD's
//! momentum buffers named `<group>.<index>`, AdamW's moments and step count named
//! `<group>.<index>.exp_avg|exp_avg_sq|step`, so a checkpoint restores the optimiser exactly.
//!
//! tch cannot reset a gradient to "none", so `zero_grad` zeroes it (PyTorch's
//! `set_to_none=False`): a parameter with a zero gradient still decays and keeps its
//! momentum. Where a step trains only some heads (the seed's alternating Multi mode), use
//! `step_groups` so the other groups stay untouched, as `set_to_none=True` would leave them.

mod adamw;
pub mod flat;
mod flat_sgd;
mod scalars;
#[cfg(test)]
mod twin_test;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use adamw::{check_betas, parse_betas, AdamW};
use adamw::{Moments, PARTS};

/// `--optimizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    /// SGD with --momentum (insightface's IResNet and MobileFaceNet recipes).
    Sgd,
    /// torch.optim.AdamW with --betas and --eps (arcface_torch's ViT recipes).
    Adamw,
}

/// The update rule and its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    Sgd { momentum: f64 },
    AdamW(AdamW),
}

impl Rule {
    pub fn new(choice: OptimizerChoice, momentum: f64, betas: [f64; 2], eps: f64) -> Rule {
        match choice {
            OptimizerChoice::Sgd => Rule::Sgd { momentum },
            OptimizerChoice::Adamw => Rule::AdamW(AdamW { betas, eps }),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Rule::Sgd { .. } => "sgd",
            Rule::AdamW(_) => "adamw",
        }
    }
}

/// Parameters that share a learning rate and weight decay. `lr` is the configured rate;
/// the rate in effect is `lr × scale`, where `scale` is the product of every shrink the
/// group has had (plateau decays, rollback shrinks), saved with the optimiser state.
pub struct ParamGroup {
    pub name: String,
    params: Vec<Tensor>,
    pub lr: f64,
    pub weight_decay: f64,
    scale: f64,
}

impl ParamGroup {
    pub fn new(name: &str, params: Vec<Tensor>, lr: f64, weight_decay: f64) -> ParamGroup {
        ParamGroup { name: name.to_string(), params, lr, weight_decay, scale: 1.0 }
    }

    /// The learning rate in effect.
    pub fn current_lr(&self) -> f64 {
        self.lr * self.scale
    }
}

pub struct Optimizer {
    groups: Vec<ParamGroup>,
    rule: Rule,
    /// The schedule's factor on every group's rate this step (warm-up, poly); not part of
    /// the saved state, since it follows from the step.
    factor: f64,
    /// SGD's momentum, parallel to `groups[g].params`; `None` until that parameter's first step.
    buffers: Vec<Vec<Option<Tensor>>>,
    /// AdamW's moments, likewise.
    moments: Vec<Vec<Option<Moments>>>,
    /// SGD's factors per group, on the device.
    scalars: Vec<scalars::DeviceScalars>,
    /// Groups whose parameters and gradients lie in the flat buffers: stepped whole.
    flat: Vec<Option<flat_sgd::FlatGroup>>,
    /// A flag on the device (`--amp`'s inf/NaN check): where it is set, SGD's next step
    /// leaves every parameter and momentum as it was.
    skip: Option<Tensor>,
}

/// Where a state tensor's name says it holds a group's lr scale, not a momentum buffer.
const SCALE_PREFIX: &str = "lr_scale.";

/// `None` for every parameter of every group.
fn empty<T>(groups: &[ParamGroup]) -> Vec<Vec<Option<T>>> {
    groups.iter().map(|g| g.params.iter().map(|_| None).collect()).collect()
}

impl Optimizer {
    pub fn new(groups: Vec<ParamGroup>, rule: Rule) -> Optimizer {
        let (buffers, moments) = (empty(&groups), empty(&groups));
        let scalars = groups.iter().map(|_| Default::default()).collect();
        let flat = groups.iter().map(|_| None).collect();
        Optimizer { groups, rule, factor: 1.0, buffers, moments, scalars, flat, skip: None }
    }

    /// Gives SGD each group's parameters and gradients as one slice each, where `span`
    /// finds them laid out so (optim/flat.rs); other groups step per parameter.
    pub fn attach_flat(&mut self, span: impl Fn(&[Tensor]) -> Option<(Tensor, Tensor)>) {
        self.flat = self.groups.iter().map(|g| span(&g.params).map(|(p, g)| flat_sgd::FlatGroup::new(p, g))).collect();
    }

    /// SGD with this momentum.
    pub fn sgd(groups: Vec<ParamGroup>, momentum: f64) -> Optimizer {
        Optimizer::new(groups, Rule::Sgd { momentum })
    }

    pub fn zero_grad(&mut self) {
        self.zero_grads_where(|_| true);
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.update(|_| true);
    }

    /// Updates only the named groups (e.g. `["backbone", "gender"]`).
    pub fn step_groups(&mut self, names: &[&str]) {
        self.update(|g| names.contains(&g.name.as_str()));
    }

    fn update(&mut self, selected: impl Fn(&ParamGroup) -> bool) {
        match self.rule {
            Rule::Sgd { momentum } => self.update_sgd(momentum, selected),
            Rule::AdamW(rule) => self.update_adamw(rule, selected),
        }
    }

    fn update_adamw(&mut self, rule: AdamW, selected: impl Fn(&ParamGroup) -> bool) {
        let schedule = self.factor;
        tch::no_grad(|| {
            for (group, states) in self.groups.iter_mut().zip(&mut self.moments) {
                if !selected(group) {
                    continue;
                }
                let (lr, wd) = (group.current_lr() * schedule, group.weight_decay);
                for (p, state) in group.params.iter_mut().zip(states.iter_mut()) {
                    let grad = p.grad();
                    if grad.defined() {
                        rule.update(p, &grad, state, lr, wd);
                    }
                }
            }
        });
    }

    /// Three fused passes per parameter (`addcmul` with 0-dim factors), each rounding
    /// exactly as PyTorch's `add(.., alpha=..)` does.
    fn update_sgd(&mut self, momentum: f64, selected: impl Fn(&ParamGroup) -> bool) {
        let schedule = self.factor;
        tch::no_grad(|| {
            let groups = self.groups.iter_mut().zip(&mut self.buffers).zip(&mut self.scalars).zip(&mut self.flat);
            for (((group, bufs), scalars), flat) in groups {
                let Some(first) = group.params.first() else { continue };
                if !selected(group) {
                    continue;
                }
                let values = [group.weight_decay, momentum, -group.current_lr() * schedule];
                let factors = scalars.get(&values, first);
                let (wd, m, neg_lr) = (&factors[0], &factors[1], &factors[2]);
                if let Some(flat) = flat {
                    let f = flat_sgd::Factors {
                        weight_decay: (group.weight_decay != 0.0).then_some(wd),
                        momentum: (momentum != 0.0).then_some(m),
                        neg_lr,
                        skip: self.skip.as_ref(),
                    };
                    flat.step(&group.params, bufs, &f);
                    continue;
                }
                for (p, buf) in group.params.iter_mut().zip(bufs.iter_mut()) {
                    let grad = p.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let mut d = if group.weight_decay != 0.0 { grad.addcmul(p, wd) } else { grad.copy() };
                    if let (Some(b), true) = (buf.as_ref(), momentum != 0.0) {
                        let _ = d.addcmul_(b, m);
                    }
                    *buf = Some(scalars::sgd_step(self.skip.as_ref(), p, d, buf.take(), neg_lr));
                }
            }
        });
    }

    /// Multiplies the learning rate of the named groups (a plateau decay, a rollback
    /// shrink); names the optimiser does not have are ignored (a frozen backbone).
    pub fn scale_lr(&mut self, names: &[&str], factor: f64) {
        for g in self.groups.iter_mut().filter(|g| names.contains(&g.name.as_str())) {
            g.scale *= factor;
        }
    }

    /// Sets the schedule's factor (warm-up, poly) for the next steps.
    pub fn set_lr_factor(&mut self, factor: f64) {
        self.factor = factor;
    }

    /// The learning rate in effect for a group, if the optimiser has it.
    pub fn lr(&self, name: &str) -> Option<f64> {
        self.groups.iter().find(|g| g.name == name).map(|g| g.current_lr() * self.factor)
    }

    /// The largest rate any group has after its shrinks, without the schedule's factor (a
    /// warm-up or a poly decay never stops a run): training stops once it is below min-lr.
    pub fn max_lr(&self) -> f64 {
        self.groups.iter().map(ParamGroup::current_lr).fold(0.0, f64::max)
    }

    /// Every group's learning rate in effect, by name.
    pub fn lrs(&self) -> Vec<(&str, f64)> {
        self.groups.iter().map(|g| (g.name.as_str(), g.current_lr() * self.factor)).collect()
    }

    /// Scales the named group's gradients so their global L2 norm is at most `max_norm`,
    /// as `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, at
    /// most 1), on the device: nothing is read. Returns the norm before clipping (a 0-dim
    /// f64 tensor); None when the group has no gradient.
    pub fn clip_grad_norm(&mut self, name: &str, max_norm: f64) -> Option<Tensor> {
        let group = self.groups.iter().find(|g| g.name == name)?;
        let grads: Vec<Tensor> = group.params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return None;
        }
        tch::no_grad(|| {
            let squares: Vec<Tensor> =
                grads.iter().map(|g| g.to_kind(tch::Kind::Double).square().sum(tch::Kind::Double)).collect();
            let norm = Tensor::stack(&squares, 0).sum(tch::Kind::Double).sqrt();
            // Times exactly 1 below the limit: the gradients keep their bits.
            let coef = (norm.full_like(max_norm) / (&norm + 1e-6)).clamp_max(1.0).to_kind(grads[0].kind());
            for g in &grads {
                let _ = g.shallow_clone().g_mul_(&coef);
            }
            Some(norm)
        })
    }

    /// The gradients to all-reduce: those of parameters that received one.
    pub fn grads(&self) -> Vec<Tensor> {
        self.grads_except(&[])
    }

    /// The gradients of every group but the named ones (Partial FC's local centres).
    pub fn grads_except(&self, names: &[&str]) -> Vec<Tensor> {
        self.params_with_grad_except(names).iter().map(Tensor::grad).collect()
    }

    /// The parameters that received a gradient, in every group but the named ones.
    pub fn params_with_grad_except(&self, names: &[&str]) -> Vec<Tensor> {
        self.params_with_grad(|g| !names.contains(&g))
    }

    /// The parameters that received a gradient, in the named groups.
    pub fn params_with_grad_in(&self, names: &[&str]) -> Vec<Tensor> {
        self.params_with_grad(|g| names.contains(&g))
    }

    fn params_with_grad(&self, keep: impl Fn(&str) -> bool) -> Vec<Tensor> {
        let groups = self.groups.iter().filter(|g| keep(&g.name));
        groups.flat_map(|g| &g.params).filter(|p| p.grad().defined()).map(Tensor::shallow_clone).collect()
    }

    /// `zero_grad` of the named groups only.
    pub fn zero_grad_groups(&mut self, names: &[&str]) {
        self.zero_grads_where(|g| names.contains(&g));
    }

    fn zero_grads_where(&mut self, keep: impl Fn(&str) -> bool) {
        for p in self.groups.iter_mut().filter(|g| keep(&g.name)).flat_map(|g| g.params.iter_mut()) {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// Everything a resume needs: the state of each parameter that has stepped (SGD's
    /// momentum as `<group>.<index>`, AdamW's `<group>.<index>.exp_avg|exp_avg_sq|step`),
    /// and each group's lr scale as a 0-dim f64 tensor `lr_scale.<group>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> =
            self.groups.iter().map(|g| (format!("{SCALE_PREFIX}{}", g.name), Tensor::from(g.scale))).collect();
        for ((g, bufs), moments) in self.groups.iter().zip(&self.buffers).zip(&self.moments) {
            for (i, b) in bufs.iter().enumerate() {
                if let Some(b) = b {
                    out.push((format!("{}.{i}", g.name), b.shallow_clone()));
                }
            }
            for (i, m) in moments.iter().enumerate() {
                for (part, t) in m.iter().flat_map(Moments::parts) {
                    out.push((format!("{}.{i}.{part}", g.name), t));
                }
            }
        }
        out
    }

    /// Restores what `state` saved (copied to each parameter's device); parameters absent
    /// from `named` start without state, and groups without a scale at 1, as they would
    /// have. State written by the other rule is refused, naming both.
    pub fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let mut buffers = empty(&self.groups);
        let mut adam_parts: Vec<Vec<[Option<&Tensor>; 3]>> =
            self.groups.iter().map(|g| vec![[None; 3]; g.params.len()]).collect();
        let mut scales = vec![1.0; self.groups.len()];
        for (name, t) in named {
            if let Some(group) = name.strip_prefix(SCALE_PREFIX) {
                let gi = self.groups.iter().position(|g| g.name == group);
                let Some(gi) = gi else { bail!("optimizer state {name:?}: no parameter group {group:?}") };
                scales[gi] = crate::host_sync::try_f64_of(t)?;
                continue;
            }
            let part = PARTS.iter().position(|part| name.ends_with(&format!(".{part}")));
            let written_by = if part.is_some() { "adamw" } else { "sgd" };
            if written_by != self.rule.name() {
                bail!(
                    "optimizer state {name}: written by --optimizer {written_by}, this run uses {}",
                    self.rule.name()
                );
            }
            if let Some(k) = part {
                let (gi, i) = self.locate(&name[..name.len() - PARTS[k].len() - 1])?;
                adam_parts[gi][i][k] = Some(t);
                continue;
            }
            let (gi, i) = self.locate(name)?;
            let p = &self.groups[gi].params[i];
            if t.size() != p.size() {
                bail!("optimizer state {name}: shape {:?} but the parameter is {:?}", t.size(), p.size());
            }
            if t.kind() != p.kind() {
                bail!("optimizer state {name}: dtype {:?} but the parameter is {:?}", t.kind(), p.kind());
            }
            buffers[gi][i] = Some(t.to_device(p.device()).to_kind(p.kind()).detach().copy());
        }
        let mut moments = empty(&self.groups);
        for (gi, group) in self.groups.iter().enumerate() {
            for (i, parts) in adam_parts[gi].iter().enumerate().filter(|(_, parts)| parts.iter().any(Option::is_some)) {
                let name = format!("{}.{i}", group.name);
                moments[gi][i] = Some(Moments::from_parts(&name, &group.params[i], *parts)?);
            }
        }
        (self.buffers, self.moments) = (buffers, moments);
        for (g, scale) in self.groups.iter_mut().zip(scales) {
            g.scale = scale;
        }
        Ok(())
    }

    fn locate(&self, name: &str) -> Result<(usize, usize)> {
        let parsed = name.rsplit_once('.').and_then(|(g, i)| Some((g, i.parse::<usize>().ok()?)));
        let Some((group, index)) = parsed else { bail!("optimizer state name {name:?} is not <group>.<index>") };
        let Some(gi) = self.groups.iter().position(|g| g.name == group) else {
            bail!("optimizer state {name:?}: no parameter group {group:?}")
        };
        if index >= self.groups[gi].params.len() {
            bail!("optimizer state {name:?}: group {group:?} has {} parameters", self.groups[gi].params.len());
        }
        Ok((gi, index))
    }
}

/// Groups from a VarStore's trainable variables by name prefix, in sorted-name order (so
/// buffer indices are stable across runs). Each `(prefix, lr, wd)` is a group named after
/// its prefix without a trailing dot; a variable goes to the first matching prefix, one
/// matching none is left out (frozen), and a group with no variable is dropped. Example: `[("backbone.", lr, wd), ("fr.", ..),
/// ("arcface.", ..)]`.
pub fn groups_by_prefix(vs: &tch::nn::VarStore, spec: &[(&str, f64, f64)]) -> Vec<ParamGroup> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: Vec<ParamGroup> = spec
        .iter()
        .map(|(prefix, lr, wd)| ParamGroup::new(prefix.trim_end_matches('.'), Vec::new(), *lr, *wd))
        .collect();
    for (name, t) in named {
        if let Some(gi) = spec.iter().position(|(prefix, _, _)| name.starts_with(prefix)) {
            groups[gi].params.push(t);
        }
    }
    // A head the model lacks has no parameters; its lr must not keep `max_lr` up.
    groups.retain(|g| !g.params.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn param(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).set_requires_grad(true)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).detach()).unwrap()
    }

    /// loss = Σ c_i·p_i, so the gradient is c whatever p is.
    fn backward_linear(p: &Tensor, c: &[f32]) {
        (p * Tensor::from_slice(c)).sum(Kind::Float).backward();
    }

    fn sgd(p: &Tensor, lr: f64, wd: f64) -> Optimizer {
        Optimizer::sgd(vec![ParamGroup::new("g", vec![p.shallow_clone()], lr, wd)], 0.9)
    }

    #[test]
    fn two_steps_match_hand_computation() {
        let p = param(&[1.0, -2.0]);
        let mut opt = sgd(&p, 0.1, 0.01);
        let c = [0.5f32, 1.0];
        backward_linear(&p, &c);
        opt.step();
        // d = c + 0.01·p = [0.51, 0.98]; buf = d; p = p − 0.1·d
        let p1 = [1.0 - 0.1 * 0.51, -2.0 - 0.1 * 0.98];
        assert!(values(&p).iter().zip(&p1).all(|(a, b)| (a - b).abs() < 1e-6));
        opt.zero_grad();
        backward_linear(&p, &c);
        opt.step();
        let d2 = [0.5 + 0.01 * p1[0], 1.0 + 0.01 * p1[1]];
        let buf = [0.9 * 0.51 + d2[0], 0.9 * 0.98 + d2[1]];
        let p2 = [p1[0] - 0.1 * buf[0], p1[1] - 0.1 * buf[1]];
        assert!(values(&p).iter().zip(&p2).all(|(a, b)| (a - b).abs() < 1e-6), "{:?} vs {p2:?}", values(&p));
        assert!(values(&opt.state()[1].1).iter().zip(&buf).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn clip_grad_norm_scales_to_the_limit_only_above_it() {
        let p = param(&[0.0, 0.0]);
        let mut opt = sgd(&p, 0.1, 0.0);
        backward_linear(&p, &[3.0, 4.0]);
        let mut clip = |max| opt.clip_grad_norm("g", max).map(|n| n.double_value(&[]));
        assert_eq!(clip(10.0), Some(5.0));
        assert_eq!(values(&p.grad()), vec![3.0, 4.0]);
        assert_eq!(clip(1.0), Some(5.0));
        let g = values(&p.grad());
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        assert!(opt.clip_grad_norm("other", 1.0).is_none());
    }

    #[test]
    fn lr_factor_scales_the_step_but_not_max_lr() {
        let p = param(&[1.0]);
        let mut opt = sgd(&p, 0.1, 0.0);
        opt.set_lr_factor(0.5);
        backward_linear(&p, &[1.0]);
        opt.step();
        assert!((values(&p)[0] - 0.95).abs() < 1e-7);
        assert_eq!((opt.lr("g"), opt.max_lr()), (Some(0.05), 0.1));
    }

    #[test]
    fn zero_grad_and_params_without_grad() {
        let p = param(&[1.0, 1.0]);
        let q = param(&[3.0, 3.0]);
        let g = ParamGroup::new("g", vec![p.shallow_clone(), q.shallow_clone()], 1.0, 0.5);
        let mut opt = Optimizer::sgd(vec![g], 0.9);
        backward_linear(&p, &[1.0, 1.0]);
        opt.step();
        assert_eq!(values(&q), vec![3.0, 3.0], "q had no gradient");
        assert_eq!(opt.state().len(), 2, "one momentum buffer and the group's lr scale");
        opt.zero_grad();
        assert_eq!(values(&p.grad()), vec![0.0, 0.0]);
    }

    #[test]
    fn step_groups_leaves_other_groups_alone() {
        let p = param(&[1.0]);
        let q = param(&[1.0]);
        let group = |name: &str, t: &Tensor| ParamGroup::new(name, vec![t.shallow_clone()], 0.5, 0.1);
        let mut opt = Optimizer::sgd(vec![group("a", &p), group("b", &q)], 0.9);
        backward_linear(&p, &[1.0]);
        backward_linear(&q, &[1.0]);
        opt.step_groups(&["b"]);
        assert_eq!(values(&p), vec![1.0]);
        assert!((values(&q)[0] - (1.0 - 0.5 * 1.1)).abs() < 1e-6);
        assert_eq!(
            opt.state().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["lr_scale.a", "lr_scale.b", "b.0"]
        );
    }

    #[test]
    fn state_roundtrip_continues_identically() {
        let run = |split: bool| {
            let p = param(&[0.3, -0.7]);
            let mut opt = sgd(&p, 0.05, 5e-4);
            for step in 0..4 {
                if split && step == 2 {
                    let saved: Vec<(String, Tensor)> = opt.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
                    opt = sgd(&p, 0.05, 5e-4);
                    opt.load_state(&saved).unwrap();
                }
                opt.zero_grad();
                backward_linear(&p, &[1.0, -3.0]);
                opt.step();
            }
            values(&p)
        };
        assert_eq!(run(false), run(true));
        // and a fresh optimiser (no momentum) would differ
        let p = param(&[0.3, -0.7]);
        let mut opt = sgd(&p, 0.05, 5e-4);
        for step in 0..4 {
            if step == 2 {
                opt = sgd(&p, 0.05, 5e-4);
            }
            opt.zero_grad();
            backward_linear(&p, &[1.0, -3.0]);
            opt.step();
        }
        assert_ne!(values(&p), run(false));
    }

    fn adamw(p: &Tensor) -> Optimizer {
        let rule = Rule::AdamW(AdamW { betas: [0.9, 0.999], eps: 1e-8 });
        Optimizer::new(vec![ParamGroup::new("g", vec![p.shallow_clone()], 0.1, 0.5)], rule)
    }

    /// First step by hand: m = 0.1·g, v = 0.001·g², corrected to g and g², so the step is
    /// lr·g/(|g| + ε) after the decoupled decay p·(1 − lr·wd).
    #[test]
    fn adamw_first_step_by_hand_and_state_roundtrip() {
        let p = param(&[1.0, -2.0]);
        let mut opt = adamw(&p);
        backward_linear(&p, &[0.5, -4.0]);
        opt.step();
        let want = [1.0 * 0.95 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 * 0.95 + 0.1 * 4.0 / (4.0 + 1e-8)];
        assert!(values(&p).iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6), "{:?} vs {want:?}", values(&p));
        let names: Vec<String> = opt.state().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["lr_scale.g", "g.0.exp_avg", "g.0.exp_avg_sq", "g.0.step"]);
        let run = |split: bool| {
            let p = param(&[0.3, -0.7]);
            let mut opt = adamw(&p);
            for step in 0..4 {
                if split && step == 2 {
                    let saved: Vec<(String, Tensor)> = opt.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
                    opt = adamw(&p);
                    opt.load_state(&saved).unwrap();
                }
                opt.zero_grad();
                backward_linear(&p, &[1.0, -3.0 + step as f32]);
                opt.step();
            }
            values(&p)
        };
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn state_of_the_other_rule_is_refused_naming_both() {
        let p = param(&[1.0, 2.0]);
        let (mut a, mut s) = (adamw(&p), sgd(&p, 0.1, 0.0));
        backward_linear(&p, &[1.0, 1.0]);
        a.step();
        s.step();
        let msg = format!("{:#}", s.load_state(&a.state()).unwrap_err());
        assert!(msg.contains("g.0.exp_avg") && msg.contains("adamw") && msg.contains("uses sgd"), "{msg}");
        let msg = format!("{:#}", a.load_state(&s.state()).unwrap_err());
        assert!(msg.contains("written by --optimizer sgd"), "{msg}");
        let partial: Vec<(String, Tensor)> = a.state().into_iter().filter(|(n, _)| !n.ends_with(".step")).collect();
        assert!(format!("{:#}", a.load_state(&partial).unwrap_err()).contains("missing"));
    }

    #[test]
    fn load_state_rejects_wrong_names_and_shapes() {
        let p = param(&[1.0, 2.0]);
        let mut opt = sgd(&p, 0.1, 0.0);
        assert!(opt.load_state(&[("h.0".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))]).is_err());
        assert!(opt.load_state(&[("g.1".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))]).is_err());
        assert!(opt.load_state(&[("g.0".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu)))]).is_err());
        assert!(opt.load_state(&[("g.0".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))]).is_ok());
    }

    #[test]
    fn scale_lr_and_groups_by_prefix() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _a = root.sub("backbone").zeros("w", &[2]);
        let _b = root.sub("fr").zeros("w", &[2]);
        let _c = root.sub("backbone").zeros_no_train("running_mean", &[2]);
        let _d = root.sub("other").zeros("w", &[2]);
        let groups = groups_by_prefix(&vs, &[("backbone.", 0.1, 5e-4), ("fr.", 0.2, 0.0), ("age.", 9.0, 0.0)]);
        let sizes: Vec<(String, usize)> = groups.iter().map(|g| (g.name.clone(), g.params.len())).collect();
        assert_eq!(sizes, vec![("backbone".to_string(), 1), ("fr".to_string(), 1)]);
        let mut opt = Optimizer::sgd(groups, 0.9);
        opt.scale_lr(&["backbone", "fr"], 0.1);
        opt.scale_lr(&["fr", "frozen"], 0.5);
        assert!((opt.lr("backbone").unwrap() - 0.01).abs() < 1e-12 && (opt.lr("fr").unwrap() - 0.01).abs() < 1e-12);
        let mut again = Optimizer::sgd(groups_by_prefix(&vs, &[("backbone.", 0.1, 5e-4), ("fr.", 0.2, 0.0)]), 0.9);
        again.load_state(&opt.state()).unwrap();
        assert_eq!(again.lrs(), opt.lrs(), "the lr scales travel with the optimiser state");
    }
}
