//! Networks: ResNet backbones (torchvision names), FR/ArcFace, Gender and Age heads, and
//! the `Net` that puts them on one shared backbone for the chosen task(s).
//!
//! Variable paths: `backbone.*` (a torchvision ResNet state dict minus `fc`), `fr.fc.*`,
//! `fr.bn.*`, `arcface.weight`, `gender.hidden.i.{fc,bn}.*`, `gender.out.*`, `age.*` alike.

pub mod arcface;
pub mod heads;
mod layers;
#[cfg(test)]
mod torchvision_test;
pub mod loss;
pub mod resnet;

pub use arcface::ArcFace;
pub use heads::{ClassifierHead, FrHead, HeadConfig};
pub use loss::{cross_entropy, soft_cross_entropy};
pub use resnet::{Arch, Backbone};

use anyhow::{bail, Result};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// What to train (`trainer train FR|Gender|Age|Multi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Task {
    #[value(name = "FR", alias = "fr")]
    #[serde(rename = "FR")]
    Fr,
    #[value(name = "Gender", alias = "gender")]
    Gender,
    #[value(name = "Age", alias = "age")]
    Age,
    /// All three heads on the shared backbone, losses summed with weights.
    #[value(name = "Multi", alias = "multi")]
    Multi,
}

/// Which heads a `Net` has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tasks {
    pub fr: bool,
    pub gender: bool,
    pub age: bool,
}

impl From<Task> for Tasks {
    fn from(t: Task) -> Tasks {
        let multi = t == Task::Multi;
        Tasks { fr: multi || t == Task::Fr, gender: multi || t == Task::Gender, age: multi || t == Task::Age }
    }
}

/// One value per task head; `None` where the head is absent or was not asked for.
#[derive(Debug, Default)]
pub struct PerTask<T> {
    pub fr: Option<T>,
    pub gender: Option<T>,
    pub age: Option<T>,
}

/// Labels as i64 tensors on the model's device; `-1` marks an unknown label (masked).
pub type Targets = PerTask<Tensor>;
pub type TaskLosses = PerTask<Tensor>;

impl TaskLosses {
    /// `w_fr·fr + w_gender·gender + w_age·age` over the losses present.
    pub fn weighted_sum(&self, w_fr: f64, w_gender: f64, w_age: f64) -> Option<Tensor> {
        [(&self.fr, w_fr), (&self.gender, w_gender), (&self.age, w_age)]
            .into_iter()
            .filter_map(|(l, w)| l.as_ref().map(|l| l * w))
            .reduce(|a, b| a + b)
    }
}

/// Losses and the logits they came from (for training accuracy).
pub struct TaskOutputs {
    pub losses: TaskLosses,
    pub logits: PerTask<Tensor>,
}

/// Backbone plus the heads of the chosen tasks.
#[derive(Debug)]
pub struct Net {
    pub backbone: Backbone,
    pub fr: Option<(FrHead, ArcFace)>,
    pub gender: Option<ClassifierHead>,
    pub age: Option<ClassifierHead>,
    pub cfg: HeadConfig,
    pub num_classes: usize,
}

impl Net {
    pub fn new(root: &nn::Path, arch: Arch, cfg: &HeadConfig, num_classes: usize, tasks: Tasks) -> Net {
        let backbone = Backbone::new(&(root / "backbone"), arch);
        let d = backbone.out_dim();
        let fr = tasks.fr.then(|| {
            (FrHead::new(&(root / "fr"), d, cfg), ArcFace::new(&(root / "arcface"), num_classes, cfg.emb_dim, cfg.s, cfg.m))
        });
        let gender = tasks.gender.then(|| ClassifierHead::gender(&(root / "gender"), d, cfg));
        let age = tasks.age.then(|| ClassifierHead::age(&(root / "age"), d, cfg));
        Net { backbone, fr, gender, age, cfg: cfg.clone(), num_classes }
    }

    pub fn tasks(&self) -> Tasks {
        Tasks { fr: self.fr.is_some(), gender: self.gender.is_some(), age: self.age.is_some() }
    }

    /// Pooled backbone features `[N, out_dim]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone.forward_t(x, train)
    }

    /// Checks label ranges on the host (an out-of-range index would abort inside libtorch)
    /// and builds target tensors for the heads this net has. Ages above the last class are
    /// clipped to it, as the seed does; `-1` stays "unknown".
    pub fn targets(&self, labels: &[i64], genders: &[i64], ages: &[i64], device: Device) -> Result<Targets> {
        let t = self.tasks();
        Ok(Targets {
            fr: t.fr.then(|| checked("identity", labels, self.num_classes, device)).transpose()?,
            gender: t.gender.then(|| checked("gender", genders, self.cfg.gender_classes, device)).transpose()?,
            age: t
                .age
                .then(|| {
                    let top = self.cfg.age_classes as i64 - 1;
                    let clipped: Vec<i64> = ages.iter().map(|&a| a.min(top)).collect();
                    checked("age", &clipped, self.cfg.age_classes, device)
                })
                .transpose()?,
        })
    }

    /// Forward through the backbone once and every head that has a target: ArcFace +
    /// cross-entropy for FR, soft cross-entropy (seed's 0.9 one-hot) for Gender and Age.
    pub fn forward_tasks(&self, x: &Tensor, targets: &Targets, train: bool) -> TaskOutputs {
        self.heads(&self.features(x, train), targets, train)
    }

    /// The heads that have a target, on features computed by the caller (a frozen or
    /// autocast backbone).
    pub fn heads(&self, feats: &Tensor, targets: &Targets, train: bool) -> TaskOutputs {
        let feats = feats.shallow_clone();
        let mut out = TaskOutputs { losses: PerTask::default(), logits: PerTask::default() };
        if let (Some((head, arc)), Some(y)) = (&self.fr, &targets.fr) {
            let logits = arc.logits(&head.forward_t(&feats, train), y);
            out.losses.fr = Some(cross_entropy(&logits, y));
            out.logits.fr = Some(logits);
        }
        let soft = self.cfg.soft_target;
        if let (Some(head), Some(y)) = (&self.gender, &targets.gender) {
            let logits = head.forward_t(&feats, train);
            out.losses.gender = Some(soft_cross_entropy(&logits, y, soft));
            out.logits.gender = Some(logits);
        }
        if let (Some(head), Some(y)) = (&self.age, &targets.age) {
            let logits = head.forward_t(&feats, train);
            out.losses.age = Some(soft_cross_entropy(&logits, y, soft));
            out.logits.age = Some(logits);
        }
        out
    }

    pub fn losses(&self, x: &Tensor, targets: &Targets, train: bool) -> TaskLosses {
        self.forward_tasks(x, targets, train).losses
    }
}

fn checked(what: &str, labels: &[i64], classes: usize, device: Device) -> Result<Tensor> {
    if let Some(&bad) = labels.iter().find(|&&l| l < -1 || l >= classes as i64) {
        bail!("{what} label {bad} is outside 0..{classes} (or -1 for unknown)");
    }
    Ok(Tensor::from_slice(labels).to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{groups_by_prefix, Sgd};
    use tch::Kind;

    fn tiny_cfg() -> HeadConfig {
        HeadConfig { emb_dim: 32, gender_hidden: vec![16], age_hidden: vec![16, 16], ..Default::default() }
    }

    #[test]
    fn heads_follow_the_task() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), Arch::Tiny, &tiny_cfg(), 5, Task::Gender.into());
        assert_eq!(net.tasks(), Tasks { fr: false, gender: true, age: false });
        let vars = vs.variables();
        assert!(vars.contains_key("backbone.layer2.0.downsample.0.weight"));
        assert!(vars.contains_key("gender.hidden.0.fc.weight") && vars.contains_key("gender.out.bias"));
        assert!(!vars.keys().any(|k| k.starts_with("arcface") || k.starts_with("age")));
    }

    #[test]
    fn targets_reject_out_of_range_and_clip_ages() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), Arch::Tiny, &tiny_cfg(), 5, Task::Multi.into());
        assert!(net.targets(&[0, 5], &[0, 1], &[0, 1], Device::Cpu).is_err());
        assert!(net.targets(&[0, 1], &[0, 2], &[0, 1], Device::Cpu).is_err());
        let t = net.targets(&[0, -1], &[-1, 1], &[9, -1], Device::Cpu).unwrap();
        assert_eq!(Vec::<i64>::try_from(t.age.unwrap()).unwrap(), vec![6, -1]);
    }

    /// A tiny Multi net memorises two fixed batches: every task's loss falls well below
    /// where it started.
    #[test]
    fn tiny_multi_net_overfits_fixed_batches() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = HeadConfig { s: 16.0, m: 0.2, fr_dropout: 0.0, gender_dropout: 0.0, age_dropout: 0.0, ..tiny_cfg() };
        let net = Net::new(&vs.root(), Arch::Tiny, &cfg, 4, Task::Multi.into());
        let spec = [("backbone.", 0.05, 5e-4), ("fr.", 0.05, 5e-4), ("arcface.", 0.05, 5e-4), ("gender.", 0.05, 5e-4), ("age.", 0.05, 5e-4)];
        let mut opt = Sgd::new(groups_by_prefix(&vs, &spec), 0.9);
        let batches: Vec<(Tensor, Targets)> = (0..2)
            .map(|b| {
                let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
                let labels: Vec<i64> = (0..8).map(|i| (i + b) % 4).collect();
                let genders: Vec<i64> = (0..8).map(|i| if i == 3 { -1 } else { i % 2 }).collect();
                let ages: Vec<i64> = (0..8).map(|i| (i * 3 + b) % 7).collect();
                (x, net.targets(&labels, &genders, &ages, Device::Cpu).unwrap())
            })
            .collect();
        let losses = |net: &Net| -> Vec<f64> {
            let mut sum = vec![0.0; 3];
            for (x, t) in &batches {
                // Train-mode BN (batch statistics): what the steps optimised.
                let l = tch::no_grad(|| net.losses(x, t, true));
                for (s, v) in sum.iter_mut().zip([&l.fr, &l.gender, &l.age]) {
                    *s += v.as_ref().unwrap().double_value(&[]);
                }
            }
            sum
        };
        let before = losses(&net);
        for step in 0..100 {
            let (x, t) = &batches[step % 2];
            opt.zero_grad();
            let total = net.losses(x, t, true).weighted_sum(1.0, 1.0, 1.0).unwrap();
            total.backward();
            opt.step();
        }
        let after = losses(&net);
        // Soft targets cannot go below their own entropy (summed over the two batches).
        let entropy = |c: f64| -(0.9f64 * 0.9f64.ln() + 0.1 * (0.1 / (c - 1.0)).ln()) * 2.0;
        let floors = [0.0, entropy(2.0), entropy(7.0)];
        for (i, task) in ["fr", "gender", "age"].iter().enumerate() {
            let (b, a) = (before[i] - floors[i], after[i] - floors[i]);
            assert!(a < 0.5 * b, "{task}: loss above its floor {b} -> {a}");
        }
    }
}
