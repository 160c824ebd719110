//! The backbone `--arch` names: a torchvision-style ResNet (pooled features, followed by
//! the FR head's `fc`) or insightface's IResNet (whose own `fc` → `features` BN gives the
//! embedding, so the FR head adds nothing but the ArcFace layer), as arcface_torch's
//! MobileFaceNet and ViT do.

use super::iresnet::{self, IResNet};
use super::mbf::MobileFaceNet;
use super::resnet::{Arch, ResNet};
use super::stages::{Carry, Staged};
use super::vit::{VisionTransformer, VitTraining};
use super::HeadConfig;
use anyhow::Result;
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug)]
pub enum Backbone {
    ResNet(ResNet),
    IResNet(IResNet),
    Mbf(MobileFaceNet),
    Vit(VisionTransformer),
}

/// The backbone to build: its `--arch`, and for a ViT its training-time regularisation
/// (`--drop-path`, `--mask-ratio`; `None` is the arch's arcface_torch default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackboneSpec {
    pub arch: Arch,
    pub drop_path: Option<f64>,
    pub mask_ratio: Option<f64>,
}

impl From<Arch> for BackboneSpec {
    fn from(arch: Arch) -> BackboneSpec {
        BackboneSpec { arch, drop_path: None, mask_ratio: None }
    }
}

impl BackboneSpec {
    /// The ViT settings in effect; `--drop-path` or `--mask-ratio` on another arch is refused.
    pub fn vit_training(&self) -> Result<Option<VitTraining>> {
        if self.arch.vit_shape().is_none() {
            anyhow::ensure!(
                self.drop_path.is_none() && self.mask_ratio.is_none(),
                "--drop-path and --mask-ratio are the ViT's (--arch vit_t, vit_s, vit_b), not {}'s",
                self.arch.name()
            );
            return Ok(None);
        }
        let d = VitTraining::default();
        Ok(Some(VitTraining {
            drop_path: self.drop_path.unwrap_or(d.drop_path),
            mask_ratio: self.mask_ratio.unwrap_or(d.mask_ratio),
        }))
    }
}

impl Backbone {
    /// An IResNet takes its embedding size from `--emb-dim` and its dropout from
    /// `--fr-dropout`, as insightface's `dropout` before `fc`.
    pub fn new(p: &nn::Path, spec: BackboneSpec, cfg: &HeadConfig) -> Result<Backbone> {
        let arch = spec.arch;
        if let (Some(shape), Some(training)) = (arch.vit_shape(), spec.vit_training()?) {
            return Ok(Backbone::Vit(VisionTransformer::new(p, shape, cfg.emb_dim, training)?));
        }
        if let Some(shape) = arch.mbf_shape() {
            return Ok(Backbone::Mbf(MobileFaceNet::new(p, shape, cfg.emb_dim)?));
        }
        Ok(match arch.iresnet_depth() {
            Some(depth) => Backbone::IResNet(IResNet::new(p, depth, cfg.emb_dim, cfg.fr_dropout)?),
            None => Backbone::ResNet(ResNet::new(p, arch)),
        })
    }

    /// Width of the backbone's output.
    pub fn out_dim(&self) -> usize {
        match self {
            Backbone::ResNet(r) => r.out_dim(),
            Backbone::IResNet(r) => r.emb_dim(),
            Backbone::Mbf(m) => m.emb_dim(),
            Backbone::Vit(v) => v.emb_dim(),
        }
    }

    /// True when the output already is the FR embedding.
    pub fn embeds(&self) -> bool {
        matches!(self, Backbone::IResNet(_) | Backbone::Mbf(_) | Backbone::Vit(_))
    }
}

/// Refuses an input size the architecture cannot take (an IResNet's `fc` and a
/// MobileFaceNet's 7×7 GDC read a 7×7 map; a ViT has one position per 9×9 patch of 112 px).
pub fn check_input_side(arch: Arch, side: usize) -> Result<()> {
    match (arch.iresnet_depth(), arch.mbf_shape(), arch.vit_shape()) {
        (Some(_), _, _) => iresnet::check_input_side(side),
        (_, Some(_), _) => super::mbf::check_input_side(side),
        (_, _, Some(_)) => super::vit::check_input_side(side),
        _ => Ok(()),
    }
}

impl Backbone {
    fn staged(&self) -> &dyn Staged {
        match self {
            Backbone::ResNet(r) => r,
            Backbone::IResNet(r) => r,
            Backbone::Mbf(m) => m,
            Backbone::Vit(v) => v,
        }
    }
}

impl Staged for Backbone {
    fn stage_count(&self) -> usize {
        self.staged().stage_count()
    }

    fn stage_t(&self, i: usize, c: Carry, train: bool) -> Carry {
        self.staged().stage_t(i, c, train)
    }

    fn stage_of(&self, name: &str) -> usize {
        self.staged().stage_of(name)
    }
}

impl ModuleT for Backbone {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Backbone::ResNet(r) => r.forward_t(xs, train),
            Backbone::IResNet(r) => r.forward_t(xs, train),
            Backbone::Mbf(m) => m.forward_t(xs, train),
            Backbone::Vit(v) => v.forward_t(xs, train),
        }
    }
}
