//! The backbone `--arch` names: a torchvision-style ResNet (pooled features, followed by
//! the FR head's `fc`) or insightface's IResNet (whose own `fc` → `features` BN gives the
//! embedding, so the FR head adds nothing but the ArcFace layer).

use super::iresnet::{self, IResNet};
use super::mbf::MobileFaceNet;
use super::resnet::{Arch, ResNet};
use super::HeadConfig;
use anyhow::Result;
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug)]
pub enum Backbone {
    ResNet(ResNet),
    IResNet(IResNet),
    Mbf(MobileFaceNet),
}

impl Backbone {
    /// An IResNet takes its embedding size from `--emb-dim` and its dropout from
    /// `--fr-dropout`, as insightface's `dropout` before `fc`.
    pub fn new(p: &nn::Path, arch: Arch, cfg: &HeadConfig) -> Result<Backbone> {
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
        }
    }

    /// True when the output already is the FR embedding.
    pub fn embeds(&self) -> bool {
        matches!(self, Backbone::IResNet(_) | Backbone::Mbf(_))
    }
}

/// Refuses an input size the architecture cannot take (an IResNet's `fc` and a
/// MobileFaceNet's 7×7 GDC read a 7×7 map).
pub fn check_input_side(arch: Arch, side: usize) -> Result<()> {
    match (arch.iresnet_depth(), arch.mbf_shape()) {
        (Some(_), _) => iresnet::check_input_side(side),
        (_, Some(_)) => super::mbf::check_input_side(side),
        _ => Ok(()),
    }
}

impl ModuleT for Backbone {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Backbone::ResNet(r) => r.forward_t(xs, train),
            Backbone::IResNet(r) => r.forward_t(xs, train),
            Backbone::Mbf(m) => m.forward_t(xs, train),
        }
    }
}
