//! Networks: ResNet backbones (torchvision names), FR/ArcFace, Gender and Age heads, and
//! the `Net` that puts them on one shared backbone for the chosen task(s).
//!
//! Variable paths: `backbone.*` (a torchvision ResNet state dict minus `fc`, or an
//! insightface IResNet's whole state dict), `fr.fc.*`, `fr.bn.*` (ResNets only),
//! `arcface.weight`, `gender.hidden.i.{fc,bn}.*`, `gender.out.*`, `age.*` alike.

pub mod adaptive_margin;
pub mod arcface;
pub mod backbone;
pub mod heads;
pub mod input;
pub mod iresnet;
#[cfg(test)]
mod iresnet_twin_test;
mod layers;
pub mod loss;
pub mod margin;
#[cfg(test)]
mod margin_twin_test;
pub mod mbf;
#[cfg(test)]
mod mbf_twin_test;
pub mod partial_fc;
pub mod pfc_sampling;
pub mod resnet;
pub mod stages;
#[cfg(test)]
mod torchvision_test;
pub mod vit;
#[cfg(test)]
mod vit_twin_test;
pub mod weights;

pub use adaptive_margin::FrMargin;
pub use arcface::ArcFace;
pub use backbone::{Backbone, BackboneSpec};
pub use heads::{ClassifierHead, FrHead, HeadConfig};
pub use margin::{Margin, MarginKind};
pub use partial_fc::ClassSlice;
pub use resnet::Arch;
pub use stages::{Carry, Staged};

use anyhow::{bail, Result};
use tch::nn::{self, ModuleT};
use tch::Tensor;

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

impl Task {
    /// Whether the task trains `head` (Multi trains all three).
    pub fn has(self, head: Head) -> bool {
        matches!(
            (self, head),
            (Task::Multi, _) | (Task::Fr, Head::Fr) | (Task::Gender, Head::Gender) | (Task::Age, Head::Age)
        )
    }

    /// The heads the task trains, in FR, Gender, Age order.
    pub fn heads(self) -> Vec<Head> {
        Head::ALL.into_iter().filter(|&h| self.has(h)).collect()
    }

    /// As in default run ids: `FR-20261129-080000`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Fr => "FR",
            Task::Gender => "Gender",
            Task::Age => "Age",
            Task::Multi => "Multi",
        }
    }
}

/// One of the net's heads (`Task::Multi` trains all three on one backbone). It lives
/// with the data, which knows what each record teaches each head.
pub use trainer_data::targets::Head;

/// Where the staged forward cut the graph: a stage's output, and the leaf (its detached
/// copy) the next stage read. The staged backward sends the leaf's gradient back through
/// the output.
pub struct Cut {
    pub output: Tensor,
    pub leaf: Tensor,
}

/// Backbone plus the heads of the chosen tasks. What the heads compute is here; the
/// losses on them are the training step's business.
#[derive(Debug)]
pub struct Net {
    backbone: Backbone,
    /// The embedding head (none on an IResNet, whose output is the embedding) and ArcFace.
    fr: Option<(Option<FrHead>, ArcFace)>,
    gender: Option<ClassifierHead>,
    age: Option<ClassifierHead>,
}

impl Net {
    pub fn new(
        root: &nn::Path,
        arch: impl Into<BackboneSpec>,
        cfg: &HeadConfig,
        num_classes: usize,
        task: Task,
    ) -> Result<Net> {
        Net::with_slice(root, arch, cfg, num_classes, task, None)
    }

    /// A net whose ArcFace layer holds only `slice` of the class centres (Partial FC).
    pub fn with_slice(
        root: &nn::Path,
        arch: impl Into<BackboneSpec>,
        cfg: &HeadConfig,
        num_classes: usize,
        task: Task,
        slice: Option<ClassSlice>,
    ) -> Result<Net> {
        let backbone = Backbone::new(&(root / "backbone"), arch.into(), cfg)?;
        let d = backbone.out_dim();
        let fr = match task.has(Head::Fr) {
            true => {
                let head = (!backbone.embeds()).then(|| FrHead::new(&(root / "fr"), d, cfg));
                let (p, margin) = (root / "arcface", cfg.margin()?);
                let arc = match slice {
                    Some(sl) => ArcFace::new_slice(&p, num_classes, sl, cfg.emb_dim, cfg.s, margin),
                    None => ArcFace::new(&p, num_classes, cfg.emb_dim, cfg.s, margin),
                };
                let arc = arc.with_state(&(root / "margin"));
                Some((head, arc))
            }
            false => None,
        };
        let gender = task.has(Head::Gender).then(|| ClassifierHead::gender(&(root / "gender"), d, cfg));
        let age = task.has(Head::Age).then(|| ClassifierHead::age(&(root / "age"), d, cfg));
        Ok(Net { backbone, fr, gender, age })
    }

    /// The heads the net has, in FR, Gender, Age order.
    pub fn heads(&self) -> Vec<Head> {
        let has = [self.fr.is_some(), self.gender.is_some(), self.age.is_some()];
        Head::ALL.into_iter().zip(has).filter_map(|(h, has)| has.then_some(h)).collect()
    }

    /// Backbone features `[N, out_dim]`: pooled (ResNet) or the embedding (IResNet).
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone.forward_t(x, train)
    }

    /// `features` with a cut after every backbone stage but the last, for the staged
    /// backward (train/backward.rs): the same operations, the same values.
    pub fn features_staged(&self, x: &Tensor, train: bool) -> (Tensor, Vec<Cut>) {
        let n = self.backbone.stage_count();
        let mut cuts = Vec::with_capacity(n - 1);
        let mut c = Carry::new(x);
        for i in 0..n {
            c = self.backbone.stage_t(i, c, train);
            if i + 1 < n {
                let leaf = c.x.detach().set_requires_grad(true);
                cuts.push(Cut { output: std::mem::replace(&mut c.x, leaf.shallow_clone()), leaf });
            }
        }
        (c.x, cuts)
    }

    /// Backbone stages (the heads' parameters count with the last).
    pub fn stage_count(&self) -> usize {
        self.backbone.stage_count()
    }

    /// The stage whose backward produces a variable's gradient (its full name).
    pub fn stage_of(&self, var: &str) -> usize {
        match var.strip_prefix("backbone.") {
            Some(name) => self.backbone.stage_of(name),
            None => self.backbone.stage_count() - 1,
        }
    }

    /// The FR embedding `[N, emb_dim]` before L2 normalisation (what verification sums
    /// with the mirror's and what an exported model outputs).
    pub fn embed(&self, feats: &Tensor, train: bool) -> Result<Tensor> {
        let Some((head, _)) = &self.fr else { bail!("this model has no FR head") };
        Ok(match head {
            Some(head) => head.forward_t(feats, train),
            None => feats.shallow_clone(),
        })
    }

    /// The FR embedding of a batch of images in inference mode: what `eval`, `embed`,
    /// `export` and validation compute.
    pub fn embed_batch(&self, x: &Tensor) -> Result<Tensor> {
        self.embed(&self.features(x, false), false)
    }

    /// A head's logits on backbone features: ArcFace's scaled margin logits for FR (the
    /// margin needs the identity `labels`; rows labelled -1 get none), class logits for
    /// Gender and Age.
    pub fn logits(&self, head: Head, feats: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        match head {
            Head::Fr => {
                let Some((_, arc)) = &self.fr else { bail!("this model has no FR head") };
                let emb = self.embed(feats, train)?;
                match labels {
                    Some(y) => arc.logits(&emb, y),
                    None => Ok(arc.cosine(&emb)),
                }
            }
            Head::Gender | Head::Age => {
                let classifier = if head == Head::Gender { &self.gender } else { &self.age };
                let Some(c) = classifier else { bail!("this model has no {} head", head.name()) };
                Ok(c.forward_t(feats, train))
            }
        }
    }

    /// The FR loss of the replicated head on backbone features (see `ArcFace::loss`).
    pub fn fr_loss(&self, feats: &Tensor, labels: &Tensor, comm: &dyn crate::dist::Comm) -> Result<Tensor> {
        let Some((_, arc)) = &self.fr else { bail!("this model has no FR head") };
        arc.loss(&self.embed(feats, true)?, labels, comm)
    }

    /// The dtype of ArcFace's training cosine matmul (see `arcface::cosine_in`).
    pub fn set_cosine_kind(&mut self, kind: tch::Kind) {
        if let Some((_, arc)) = &mut self.fr {
            arc.set_cosine_kind(kind);
        }
    }

    /// The ArcFace layer, if the net has an FR head.
    pub fn arcface(&self) -> Option<&ArcFace> {
        self.fr.as_ref().map(|(_, arc)| arc)
    }

    /// Classes of a head: identities for FR, buckets for Gender and Age (0 when absent).
    pub fn classes(&self, head: Head) -> usize {
        match head {
            Head::Fr => self.fr.as_ref().map_or(0, |(_, arc)| arc.classes()),
            Head::Gender => self.gender.as_ref().map_or(0, ClassifierHead::classes),
            Head::Age => self.age.as_ref().map_or(0, ClassifierHead::classes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn heads_follow_the_task() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = HeadConfig { emb_dim: 32, gender_hidden: vec![16], ..Default::default() };
        let net = Net::new(&vs.root(), Arch::Tiny, &cfg, 5, Task::Gender).unwrap();
        assert_eq!(net.heads(), [Head::Gender]);
        assert_eq!((net.classes(Head::Gender), net.classes(Head::Fr)), (2, 0));
        let vars = vs.variables();
        assert!(vars.contains_key("backbone.layer2.0.downsample.0.weight"));
        assert!(vars.contains_key("gender.hidden.0.fc.weight") && vars.contains_key("gender.out.bias"));
        assert!(!vars.keys().any(|k| k.starts_with("arcface") || k.starts_with("age")));
        let feats = net.features(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false);
        assert!(net.embed(&feats, false).unwrap_err().to_string().contains("no FR head"));
        assert_eq!(net.logits(Head::Gender, &feats, None, false).unwrap().size(), vec![2, 2]);
    }

    /// On an IResNet the backbone's output is the embedding: no `fr.*` layer, and the
    /// Gender head sits on the embedding.
    #[test]
    fn iresnet_embeds_without_an_fr_layer() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = HeadConfig { emb_dim: 64, gender_hidden: vec![16], fr_dropout: 0.0, ..Default::default() };
        let net = Net::new(&vs.root(), Arch::Iresnet18, &cfg, 7, Task::Multi).unwrap();
        let vars = vs.variables();
        assert!(
            vars.contains_key("backbone.features.running_mean") && vars.contains_key("backbone.layer4.1.prelu.weight")
        );
        assert!(!vars.keys().any(|k| k.starts_with("fr.")));
        assert_eq!(vars["gender.hidden.0.fc.weight"].size(), vec![16, 64]);
        let feats = net.features(&Tensor::randn([2, 3, 112, 112], (Kind::Float, Device::Cpu)), false);
        assert_eq!(feats.size(), vec![2, 64]);
        assert!(net.embed(&feats, false).unwrap().equal(&feats));
        assert_eq!(net.logits(Head::Fr, &feats, None, false).unwrap().size(), vec![2, 7]);
    }
}
