//! ResNet backbones with torchvision's layout and parameter names (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer1.0.downsample.0`, ...), without the final `fc`: the output is
//! the globally average-pooled feature vector. Saved weights load into
//! `torchvision.models.resnetNN` with `strict=False` missing only `fc.*`.

use super::layers::{conv2d, BatchNorm};
use super::stages::{forward_stages, layer_stage, Carry, Staged};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Backbone architecture (`--arch`). `tiny` is two small stages for tests and demos;
/// `tiny-nobn` is the same without BatchNorm, whose per-rank statistics would otherwise
/// keep a 2-rank run from equalling a 1-rank run at twice the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Tiny,
    #[value(name = "tiny-nobn")]
    #[serde(rename = "tiny-nobn")]
    TinyNobn,
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    /// insightface's IResNets (112×112 input; the backbone outputs the embedding).
    Iresnet18,
    Iresnet34,
    Iresnet50,
    Iresnet100,
    Iresnet200,
    /// arcface_torch's MobileFaceNet (`get_mbf`; 112×112 input, GDC head to the embedding).
    Mbf,
    /// Its large variant (`get_mbf_large`).
    #[value(name = "mbf_large")]
    #[serde(rename = "mbf_large")]
    MbfLarge,
    /// arcface_torch's Vision Transformers (`vit_t`, `vit_s`, `vit_b`; 112×112 input, 9×9
    /// patches, `feature` head to the embedding).
    #[value(name = "vit_t")]
    #[serde(rename = "vit_t")]
    VitT,
    #[value(name = "vit_s")]
    #[serde(rename = "vit_s")]
    VitS,
    #[value(name = "vit_b")]
    #[serde(rename = "vit_b")]
    VitB,
}

#[derive(Clone, Copy)]
enum BlockKind {
    Basic,
    Bottleneck,
}

/// Blocks per stage, stage widths and stem of one architecture.
struct Blueprint {
    kind: BlockKind,
    blocks: &'static [usize],
    widths: &'static [i64],
    stem_width: i64,
    /// torchvision's 7×7/2 conv + 3×3/2 max-pool; Tiny uses a 3×3/2 conv and no pool.
    full_stem: bool,
    norm: bool,
}

impl Arch {
    /// The IResNet depth, for the `iresnet*` architectures.
    pub fn iresnet_depth(self) -> Option<usize> {
        match self {
            Arch::Iresnet18 => Some(18),
            Arch::Iresnet34 => Some(34),
            Arch::Iresnet50 => Some(50),
            Arch::Iresnet100 => Some(100),
            Arch::Iresnet200 => Some(200),
            _ => None,
        }
    }

    /// The MobileFaceNet shape, for `mbf` and `mbf_large`.
    pub fn mbf_shape(self) -> Option<super::mbf::MbfShape> {
        match self {
            Arch::Mbf => Some(super::mbf::MBF),
            Arch::MbfLarge => Some(super::mbf::MBF_LARGE),
            _ => None,
        }
    }

    /// The name `--arch` takes.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    /// The ViT size, for `vit_t`, `vit_s` and `vit_b`.
    pub fn vit_shape(self) -> Option<super::vit::VitShape> {
        match self {
            Arch::VitT => Some(super::vit::VIT_T),
            Arch::VitS => Some(super::vit::VIT_S),
            Arch::VitB => Some(super::vit::VIT_B),
            _ => None,
        }
    }

    /// True for arcface_torch's backbones (its layout and names; 112×112 only).
    pub fn is_arcface_torch(self) -> bool {
        self.iresnet_depth().is_some() || self.mbf_shape().is_some() || self.vit_shape().is_some()
    }

    /// Torchvision-style layout; the IResNets have their own (see `iresnet.rs`).
    fn blueprint(self) -> Blueprint {
        const W: &[i64] = &[64, 128, 256, 512];
        let (kind, blocks): (BlockKind, &'static [usize]) = match self {
            Arch::Tiny | Arch::TinyNobn => {
                let norm = self == Arch::Tiny;
                return Blueprint {
                    kind: BlockKind::Basic,
                    blocks: &[1, 1],
                    widths: &[16, 32],
                    stem_width: 16,
                    full_stem: false,
                    norm,
                };
            }
            Arch::Resnet18 => (BlockKind::Basic, &[2, 2, 2, 2]),
            Arch::Resnet34 => (BlockKind::Basic, &[3, 4, 6, 3]),
            Arch::Resnet50 => (BlockKind::Bottleneck, &[3, 4, 6, 3]),
            Arch::Resnet101 => (BlockKind::Bottleneck, &[3, 4, 23, 3]),
            Arch::Iresnet18
            | Arch::Iresnet34
            | Arch::Iresnet50
            | Arch::Iresnet100
            | Arch::Iresnet200
            | Arch::Mbf
            | Arch::MbfLarge
            | Arch::VitT
            | Arch::VitS
            | Arch::VitB => {
                unreachable!("arcface_torch's backbones are built by iresnet.rs, mbf.rs and vit.rs")
            }
        };
        Blueprint { kind, blocks, widths: W, stem_width: 64, full_stem: true, norm: true }
    }

    /// Width of the pooled feature vector of a torchvision-style ResNet.
    fn out_dim(self) -> usize {
        let l = self.blueprint();
        let last = *l.widths.last().expect("blueprints have stages");
        (last * l.kind.expansion()) as usize
    }
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// `downsample.0` (1×1 conv) and `downsample.1` (BN) when the shortcut changes shape.
#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
    bn: Option<BatchNorm>,
}

impl Downsample {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, norm: bool) -> Option<Downsample> {
        (stride != 1 || c_in != c_out).then(|| Downsample {
            conv: conv2d(&p / "0", c_in, c_out, 1, stride),
            bn: norm.then(|| BatchNorm::new(&p / "1", c_out)),
        })
    }

    fn shortcut(this: &Option<Downsample>, xs: &Tensor, train: bool) -> Tensor {
        match this {
            Some(d) => norm_t(xs.apply(&d.conv), &d.bn, train),
            None => xs.shallow_clone(),
        }
    }
}

fn norm_t(xs: Tensor, bn: &Option<BatchNorm>, train: bool) -> Tensor {
    match bn {
        Some(bn) => xs.apply_t(bn, train),
        None => xs,
    }
}

/// One residual block: convs+BNs in torchvision order (3×3,3×3 or 1×1,3×3/s,1×1).
#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, Option<BatchNorm>)>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(p: nn::Path, kind: BlockKind, c_in: i64, width: i64, stride: i64, norm: bool) -> Block {
        let c_out = width * kind.expansion();
        let shapes: Vec<(i64, i64, i64, i64)> = match kind {
            BlockKind::Basic => vec![(c_in, width, 3, stride), (width, width, 3, 1)],
            BlockKind::Bottleneck => {
                vec![(c_in, width, 1, 1), (width, width, 3, stride), (width, c_out, 1, 1)]
            }
        };
        let convs = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s))| {
                let n = i + 1;
                (conv2d(&p / format!("conv{n}"), ci, co, k, s), norm.then(|| BatchNorm::new(&p / format!("bn{n}"), co)))
            })
            .collect();
        Block { convs, downsample: Downsample::new(&p / "downsample", c_in, c_out, stride, norm) }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut ys = xs.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            ys = norm_t(ys.apply(conv), bn, train);
            if i < last {
                ys = ys.relu_();
            }
        }
        (ys + Downsample::shortcut(&self.downsample, xs, train)).relu_()
    }
}

/// A ResNet without its classifier: NCHW images → `[N, out_dim]` pooled features.
#[derive(Debug)]
pub struct ResNet {
    arch: Arch,
    conv1: nn::Conv2D,
    bn1: Option<BatchNorm>,
    full_stem: bool,
    stages: Vec<Vec<Block>>,
}

impl ResNet {
    pub fn new(p: &nn::Path, arch: Arch) -> ResNet {
        let l = arch.blueprint();
        let stem_k = if l.full_stem { 7 } else { 3 };
        let conv1 = conv2d(p / "conv1", 3, l.stem_width, stem_k, 2);
        let bn1 = l.norm.then(|| BatchNorm::new(p / "bn1", l.stem_width));
        let mut c_in = l.stem_width;
        let mut stages = Vec::new();
        for (s, (&n, &width)) in l.blocks.iter().zip(l.widths).enumerate() {
            let sp = p / format!("layer{}", s + 1);
            let mut blocks = Vec::new();
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(&sp / b.to_string(), l.kind, c_in, width, stride, l.norm));
                c_in = width * l.kind.expansion();
            }
            stages.push(blocks);
        }
        ResNet { arch, conv1, bn1, full_stem: l.full_stem, stages }
    }

    pub fn out_dim(&self) -> usize {
        self.arch.out_dim()
    }
}

/// Stages: the stem with `layer1`, then one per `layerK`, the last one pooling.
impl Staged for ResNet {
    fn stage_count(&self) -> usize {
        self.stages.len()
    }

    fn stage_t(&self, i: usize, c: Carry, train: bool) -> Carry {
        let mut ys = c.x;
        if i == 0 {
            ys = norm_t(ys.apply(&self.conv1), &self.bn1, train).relu_();
            if self.full_stem {
                ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            }
        }
        for block in &self.stages[i] {
            ys = ys.apply_t(block, train);
        }
        if i + 1 == self.stages.len() {
            ys = ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        }
        Carry { x: ys, ..c }
    }

    fn stage_of(&self, name: &str) -> usize {
        layer_stage(name).unwrap_or(0)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        forward_stages(self, xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn shape(arch: Arch, size: i64) -> Vec<i64> {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), arch);
        let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
        tch::no_grad(|| net.forward_t(&x, false)).size()
    }

    #[test]
    fn every_arch_pools_to_out_dim() {
        for (arch, size) in
            [(Arch::Tiny, 32), (Arch::Resnet18, 64), (Arch::Resnet34, 32), (Arch::Resnet50, 32), (Arch::Resnet101, 32)]
        {
            assert_eq!(shape(arch, size), vec![2, arch.out_dim() as i64], "{arch:?}");
        }
        assert_eq!(Arch::Resnet50.out_dim(), 2048);
        assert_eq!(Arch::Resnet18.out_dim(), 512);
    }

    #[test]
    fn torchvision_names_and_counts() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = ResNet::new(&vs.root(), Arch::Resnet50);
        let vars = vs.variables();
        for name in [
            "conv1.weight",
            "bn1.num_batches_tracked",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_var",
            "layer4.2.conv3.weight",
            "layer3.5.bn2.bias",
        ] {
            assert!(vars.contains_key(name), "missing {name}");
        }
        // torchvision resnet50 minus fc: 318 tensors (161 parameters − fc's 2, plus BN buffers).
        let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(params, 25_557_032 - (2048 * 1000 + 1000));
        assert_eq!(vars.len(), 318);
    }
}
