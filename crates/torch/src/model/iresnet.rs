//! insightface's IResNet (arcface_torch `backbones/iresnet.py`, `--arch iresnet18/34/50/100`)
//! with its exact parameter and buffer names, so state dicts move both ways unchanged:
//! `conv1 bn1 prelu`, `layer{1..4}.{i}.{bn1 conv1 bn2 prelu conv2 bn3 downsample.0 downsample.1}`,
//! `bn2 fc features`.
//!
//! Unlike torchvision's ResNet there is no pooling: the stem keeps 112×112, every stage halves
//! the side (56, 28, 14, 7), and `fc` reads the whole 512×7×7 map. The output is the
//! embedding before L2 normalisation.

use super::layers::BatchNorm;
use super::stages::{forward_stages, layer_stage, Carry, Staged};
use anyhow::{bail, ensure, Result};
use tch::nn::{self, Init, Module, ModuleT};
use tch::Tensor;

/// The only input side the 512·7·7 `fc` fits (aligned 112×112 faces).
pub const INPUT_SIDE: i64 = 112;
const FINAL_SIDE: i64 = 7;
const STEM_WIDTH: i64 = 64;
const WIDTHS: [i64; 4] = [64, 128, 256, 512];

/// Blocks per stage of each depth insightface defines.
pub fn stage_blocks(depth: usize) -> Result<[usize; 4]> {
    Ok(match depth {
        18 => [2, 2, 2, 2],
        34 => [3, 4, 6, 3],
        50 => [3, 4, 14, 3],
        100 => [3, 13, 30, 3],
        200 => [6, 26, 60, 6],
        _ => bail!("iresnet depth {depth} is not one of 18, 34, 50, 100, 200"),
    })
}

/// Rejects an image side other than 112 before training starts (`--size`), instead of a
/// shape error deep inside libtorch at the first step.
pub fn check_input_side(side: usize) -> Result<()> {
    ensure!(
        side as i64 == INPUT_SIDE,
        "iresnet needs {INPUT_SIDE}×{INPUT_SIDE} inputs (its fc reads a {FINAL_SIDE}×{FINAL_SIDE} map), not {side}×{side}: use --size {INPUT_SIDE}"
    );
    Ok(())
}

/// Checks a batch's shape: `[N, 3, 112, 112]`.
pub fn check_input_shape(shape: &[i64]) -> Result<()> {
    match shape {
        [_, 3, h, w] if *h == INPUT_SIDE && *w == INPUT_SIDE => Ok(()),
        _ => bail!("iresnet expects images of shape [N, 3, {INPUT_SIDE}, {INPUT_SIDE}], got {shape:?}"),
    }
}

/// insightface draws every convolution from N(0, 0.1); none has a bias.
fn conv(p: nn::Path, c_in: i64, c_out: i64, ksize: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: ksize / 2,
        bias: false,
        ws_init: Init::Randn { mean: 0.0, stdev: 0.1 },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, ksize, cfg)
}

/// PyTorch's `nn.PReLU(c)`: one learned negative slope per channel, starting at 0.25.
#[derive(Debug)]
pub(super) struct PRelu {
    weight: Tensor,
}

impl PRelu {
    pub(super) fn new(p: nn::Path, channels: i64) -> PRelu {
        PRelu { weight: p.var("weight", &[channels], Init::Const(0.25)) }
    }
}

impl Module for PRelu {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.prelu(&self.weight)
    }
}

/// `IBasicBlock`: BN → 3×3 conv → BN → PReLU → 3×3 conv (carrying the stride) → BN, plus the
/// shortcut; nothing after the sum.
#[derive(Debug)]
struct IBasicBlock {
    bn1: BatchNorm,
    conv1: nn::Conv2D,
    bn2: BatchNorm,
    prelu: PRelu,
    conv2: nn::Conv2D,
    bn3: BatchNorm,
    /// `downsample.0` (1×1 conv with the stride) and `downsample.1` (BN) where the shape changes.
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl IBasicBlock {
    fn new(p: &nn::Path, c_in: i64, width: i64, stride: i64) -> IBasicBlock {
        let downsample = (stride != 1 || c_in != width).then(|| {
            (conv(p / "downsample" / "0", c_in, width, 1, stride), BatchNorm::new(p / "downsample" / "1", width))
        });
        IBasicBlock {
            bn1: BatchNorm::new(p / "bn1", c_in),
            conv1: conv(p / "conv1", c_in, width, 3, 1),
            bn2: BatchNorm::new(p / "bn2", width),
            prelu: PRelu::new(p / "prelu", width),
            conv2: conv(p / "conv2", width, width, 3, stride),
            bn3: BatchNorm::new(p / "bn3", width),
            downsample,
        }
    }
}

impl ModuleT for IBasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs
            .apply_t(&self.bn1, train)
            .apply(&self.conv1)
            .apply_t(&self.bn2, train)
            .apply(&self.prelu)
            .apply(&self.conv2)
            .apply_t(&self.bn3, train);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        ys + shortcut
    }
}

/// `fc` as PyTorch's `nn.Linear` initialises it: weight and bias from U(±1/√fan_in)
/// (tch's default weight init is √6 times wider).
fn linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    let uniform = Init::Uniform { lo: -bound, up: bound };
    nn::linear(p, c_in, c_out, nn::LinearConfig { ws_init: uniform, bs_init: Some(uniform), bias: true })
}

/// An IResNet: `[N, 3, 112, 112]` images → `[N, emb_dim]` embeddings (not normalised).
#[derive(Debug)]
pub struct IResNet {
    depth: usize,
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    prelu: PRelu,
    blocks: Vec<IBasicBlock>,
    /// Where each stage's blocks end in `blocks`.
    stage_ends: Vec<usize>,
    bn2: BatchNorm,
    dropout: f64,
    fc: nn::Linear,
    features: BatchNorm,
}

impl IResNet {
    /// `depth` is 18, 34, 50, 100 or 200; `dropout` (insightface's default 0) acts on the
    /// flattened map before `fc`.
    pub fn new(p: &nn::Path, depth: usize, emb_dim: usize, dropout: f64) -> Result<IResNet> {
        let blocks_per_stage = stage_blocks(depth)?;
        ensure!(emb_dim > 0, "iresnet embedding size must be positive");
        ensure!((0.0..1.0).contains(&dropout), "iresnet dropout {dropout} is not in [0, 1)");
        let mut blocks = Vec::new();
        let mut stage_ends = Vec::new();
        let mut c_in = STEM_WIDTH;
        for (s, (&n, &width)) in blocks_per_stage.iter().zip(&WIDTHS).enumerate() {
            let stage = p / format!("layer{}", s + 1);
            for b in 0..n {
                let stride = if b == 0 { 2 } else { 1 };
                blocks.push(IBasicBlock::new(&(&stage / b), c_in, width, stride));
                c_in = width;
            }
            stage_ends.push(blocks.len());
        }
        let flat = c_in * FINAL_SIDE * FINAL_SIDE;
        Ok(IResNet {
            depth,
            conv1: conv(p / "conv1", 3, STEM_WIDTH, 3, 1),
            bn1: BatchNorm::new(p / "bn1", STEM_WIDTH),
            prelu: PRelu::new(p / "prelu", STEM_WIDTH),
            blocks,
            stage_ends,
            bn2: BatchNorm::new(p / "bn2", c_in),
            dropout,
            fc: linear(p / "fc", flat, emb_dim as i64),
            features: BatchNorm::fixed_scale(p / "features", emb_dim as i64),
        })
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn emb_dim(&self) -> usize {
        self.fc.ws.size()[0] as usize
    }

    /// The forward pass for batches whose shape comes from outside: a wrong shape is an
    /// error naming the expected one.
    pub fn try_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        check_input_shape(&xs.size())?;
        Ok(self.forward_checked(xs, train))
    }

    fn forward_checked(&self, xs: &Tensor, train: bool) -> Tensor {
        forward_stages(self, xs, train)
    }

    /// `fc` and `features` run in f32 with autocast off, as insightface does under fp16:
    /// a 25088-wide dot product in half precision loses too much.
    fn head(&self, flat: Tensor, train: bool) -> Tensor {
        tch::autocast(false, || {
            flat.to_kind(self.fc.ws.kind()).dropout(self.dropout, train).apply(&self.fc).apply_t(&self.features, train)
        })
    }
}

/// Stages: the stem with `layer1`, then one per `layerK`, the last one with the embedding.
impl Staged for IResNet {
    fn stage_count(&self) -> usize {
        self.stage_ends.len()
    }

    fn stage_t(&self, i: usize, c: Carry, train: bool) -> Carry {
        let mut ys = c.x;
        if i == 0 {
            ys = ys.apply(&self.conv1).apply_t(&self.bn1, train).apply(&self.prelu);
        }
        let start = if i == 0 { 0 } else { self.stage_ends[i - 1] };
        for block in &self.blocks[start..self.stage_ends[i]] {
            ys = ys.apply_t(block, train);
        }
        if i + 1 == self.stage_ends.len() {
            ys = self.head(ys.apply_t(&self.bn2, train).flatten(1, -1), train);
        }
        Carry { x: ys, ..c }
    }

    fn stage_of(&self, name: &str) -> usize {
        match layer_stage(name) {
            Some(k) => k,
            None if ["conv1.", "bn1.", "prelu."].iter().any(|p| name.starts_with(p)) => 0,
            None => self.stage_ends.len() - 1,
        }
    }
}

impl ModuleT for IResNet {
    /// Panics with `check_input_shape`'s message on a wrong shape; code that takes shapes from
    /// users calls `check_input_side` at set-up or uses `try_forward_t`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if let Err(e) = check_input_shape(&xs.size()) {
            panic!("{e:#}");
        }
        self.forward_checked(xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tch::{Device, Kind};

    fn build(depth: usize, dropout: f64) -> (nn::VarStore, IResNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = IResNet::new(&vs.root(), depth, 512, dropout).unwrap();
        (vs, net)
    }

    fn shapes(vs: &nn::VarStore) -> HashMap<String, Vec<i64>> {
        vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect()
    }

    fn images(n: i64, side: i64) -> Tensor {
        Tensor::randn([n, 3, side, side], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn names_and_shapes_follow_insightface() {
        let (vs, _) = build(18, 0.0);
        let s = shapes(&vs);
        let want: &[(&str, &[i64])] = &[
            ("conv1.weight", &[64, 3, 3, 3]),
            ("prelu.weight", &[64]),
            ("layer1.0.bn1.running_var", &[64]),
            ("layer1.0.downsample.0.weight", &[64, 64, 1, 1]),
            ("layer2.0.conv1.weight", &[128, 64, 3, 3]),
            ("layer2.0.conv2.weight", &[128, 128, 3, 3]),
            ("layer2.1.prelu.weight", &[128]),
            ("layer4.1.bn3.num_batches_tracked", &[]),
            ("bn2.weight", &[512]),
            ("fc.weight", &[512, 512 * 7 * 7]),
            ("fc.bias", &[512]),
            ("features.running_mean", &[512]),
        ];
        for (name, shape) in want {
            assert_eq!(s.get(*name).map(Vec::as_slice), Some(*shape), "{name}");
        }
        // Only the first block of a stage changes shape; 7 stem + 8·18 block + 4·6 shortcut
        // + 12 head tensors.
        assert!(!s.contains_key("layer1.1.downsample.0.weight"));
        assert_eq!(s.len(), 7 + 8 * 18 + 4 * 6 + 12);
    }

    #[test]
    fn initialised_as_insightface() {
        tch::manual_seed(2);
        let (vs, _) = build(18, 0.0);
        let v = vs.variables();
        let std = v["layer3.1.conv2.weight"].std(true).double_value(&[]);
        assert!((std - 0.1).abs() < 0.005, "conv std {std}");
        // U(±1/√25088), the bound as f32 holds it.
        let bound = (1.0 / (512.0f64 * 49.0).sqrt()) as f32 as f64;
        for name in ["fc.weight", "fc.bias"] {
            let max = v[name].abs().max().double_value(&[]);
            assert!(max <= bound && max > 0.9 * bound, "{name}: max {max}, bound {bound}");
        }
        for (name, want) in [("prelu.weight", 0.25), ("layer2.0.bn3.weight", 1.0), ("layer2.0.bn3.bias", 0.0)] {
            let t = &v[name];
            assert_eq!((t.min().double_value(&[]), t.max().double_value(&[])), (want, want), "{name}");
        }
    }

    /// Under autocast the trunk yields f16; `fc` and `features` still compute in f32.
    #[test]
    fn head_computes_in_f32() {
        let (_, net) = build(18, 0.0);
        let flat = Tensor::randn([2, 512 * 49], (Kind::Float, Device::Cpu));
        let half = tch::no_grad(|| net.head(flat.to_kind(Kind::Half), false));
        assert_eq!(half.kind(), Kind::Float);
        let full = tch::no_grad(|| net.head(flat.to_kind(Kind::Half).to_kind(Kind::Float), false));
        assert!(half.equal(&full));
    }

    #[test]
    fn features_scale_is_fixed_at_one() {
        let (vs, net) = build(18, 0.0);
        let vars = vs.variables();
        let (w, b) = (&vars["features.weight"], &vars["features.bias"]);
        assert!(!w.requires_grad() && b.requires_grad());
        assert!(vs.trainable_variables().iter().all(|t| t.data_ptr() != w.data_ptr()));
        net.forward_t(&images(2, 112), true).square().sum(Kind::Float).backward();
        assert!(!w.grad().defined() && vars["fc.weight"].grad().defined());
        assert_eq!(w.min().double_value(&[]), 1.0);
        assert_eq!(w.max().double_value(&[]), 1.0);
    }

    /// Every depth's trainable-parameter count (`features.weight` excluded), as the Python twin
    /// of insightface's network counts them (`benches/iresnet_twin.py count`).
    #[test]
    fn parameter_counts() {
        let counts = [(18, 24_025_088), (34, 34_138_816), (50, 43_590_336), (100, 65_155_648), (200, 118_833_408)];
        for (depth, want) in counts {
            let (vs, _) = build(depth, 0.0);
            let got: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
            assert_eq!(got, want, "iresnet{depth}");
        }
    }

    #[test]
    fn embeds_112_images_and_names_other_sizes() {
        let (_, net) = build(18, 0.0);
        let out = tch::no_grad(|| net.try_forward_t(&images(2, 112), false)).unwrap();
        assert_eq!(out.size(), [2, 512]);
        for bad in [images(2, 96), images(1, 128), Tensor::zeros([2, 1, 112, 112], (Kind::Float, Device::Cpu))] {
            let err = net.try_forward_t(&bad, false).unwrap_err().to_string();
            assert!(err.contains("[N, 3, 112, 112]"), "{err}");
        }
        assert!(check_input_side(112).is_ok());
        assert!(check_input_side(224).unwrap_err().to_string().contains("--size 112"));
    }

    #[test]
    #[should_panic(expected = "iresnet expects images of shape [N, 3, 112, 112], got [1, 3, 64, 64]")]
    fn module_forward_panics_with_the_same_message() {
        let (_, net) = build(18, 0.0);
        let _ = net.forward_t(&images(1, 64), false);
    }

    #[test]
    fn rejects_bad_settings() {
        let vs = nn::VarStore::new(Device::Cpu);
        for (depth, emb, p) in [(101, 512, 0.0), (50, 0, 0.0), (50, 512, 1.0), (50, 512, -0.1)] {
            assert!(IResNet::new(&vs.root(), depth, emb, p).is_err(), "{depth} {emb} {p}");
        }
    }

    #[test]
    fn dropout_only_in_training_and_bn_counts_batches() {
        let (vs, net) = build(18, 0.5);
        let x = images(2, 112);
        let run = |train| tch::no_grad(|| net.forward_t(&x, train));
        assert!(run(false).equal(&run(false)));
        assert!(!run(true).allclose(&run(true), 1e-3, 1e-3, false));
        let tracked = vs.variables()["features.num_batches_tracked"].int64_value(&[]);
        assert_eq!(tracked, 2);
    }
}
