//! arcface_torch's MobileFaceNet (`get_mbf`: blocks (1, 4, 6, 2), scale 2; `get_mbf_large`:
//! (2, 8, 12, 4), scale 4) with its module names, so our `backbone.*` tensors are its
//! `state_dict()`: `layers.{0..7}` (a ConvBlock stem, then depthwise stages), `conv_sep`
//! (1×1 to 512) and `features` (GDC: a 7×7 depthwise LinearBlock, Linear 512 → emb without
//! bias, BatchNorm1d). A ConvBlock is `layers.{0 conv, 1 BN, 2 PReLU}`, a LinearBlock the
//! same without the PReLU, a DepthWise block `layers.{0 1×1 ConvBlock, 1 depthwise
//! ConvBlock, 2 1×1 LinearBlock}`, plus its input when residual.

use super::iresnet::PRelu;
use super::layers::BatchNorm;
use super::stages::{forward_stages, Carry, Staged};
use anyhow::{ensure, Result};
use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

/// Blocks per residual stage and the width multiplier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MbfShape {
    pub blocks: [usize; 4],
    pub scale: i64,
}

/// `get_mbf`'s defaults.
pub const MBF: MbfShape = MbfShape { blocks: [1, 4, 6, 2], scale: 2 };
/// `get_mbf_large`'s.
pub const MBF_LARGE: MbfShape = MbfShape { blocks: [2, 8, 12, 4], scale: 4 };

/// Refuses any input side but 112: the GDC's 7×7 depthwise conv needs a 7×7 map.
pub fn check_input_side(side: usize) -> Result<()> {
    ensure!(
        side == 112,
        "mobilefacenet needs 112×112 inputs (its 7×7 GDC reads a 7×7 map), not {side}×{side}: use --size 112"
    );
    Ok(())
}

/// Kaiming normal, fan-out, ReLU gain: arcface_torch's `_initialize_weights`.
fn kaiming() -> Init {
    Init::Kaiming {
        dist: nn::init::NormalOrUniform::Normal,
        fan: nn::init::FanInOut::FanOut,
        non_linearity: nn::init::NonLinearity::ReLU,
    }
}

/// ConvBlock (with PReLU) or LinearBlock (without): conv without bias, BN.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: BatchNorm,
    prelu: Option<PRelu>,
}

impl ConvBn {
    /// `k`×`k` conv with padding `k/2` (0 for the GDC's 7×7).
    fn new(p: &nn::Path, c: (i64, i64), k: i64, stride: i64, groups: i64, prelu: bool) -> ConvBn {
        let p = p / "layers";
        let padding = if k == 7 { 0 } else { k / 2 };
        let cfg = nn::ConvConfig { stride, padding, groups, bias: false, ws_init: kaiming(), ..Default::default() };
        ConvBn {
            conv: nn::conv2d(&p / 0, c.0, c.1, k, cfg),
            bn: BatchNorm::new(&p / 1, c.1),
            prelu: prelu.then(|| PRelu::new(&p / 2, c.1)),
        }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv).apply_t(&self.bn, train);
        match &self.prelu {
            Some(prelu) => ys.apply(prelu),
            None => ys,
        }
    }
}

/// 1×1 to `groups` channels, `groups`-way 3×3 (carrying the stride), 1×1 linear to `c_out`.
#[derive(Debug)]
struct DepthWise {
    residual: bool,
    layers: [ConvBn; 3],
}

impl DepthWise {
    fn new(p: &nn::Path, c: (i64, i64), stride: i64, groups: i64, residual: bool) -> DepthWise {
        let p = p / "layers";
        let layers = [
            ConvBn::new(&(&p / 0), (c.0, groups), 1, 1, 1, true),
            ConvBn::new(&(&p / 1), (groups, groups), 3, stride, groups, true),
            ConvBn::new(&(&p / 2), (groups, c.1), 1, 1, 1, false),
        ];
        DepthWise { residual, layers }
    }
}

impl ModuleT for DepthWise {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.layers.iter().fold(xs.shallow_clone(), |ys, l| ys.apply_t(l, train));
        if self.residual {
            ys + xs
        } else {
            ys
        }
    }
}

/// `Residual(c, n, groups)`: n residual DepthWise blocks of width c.
fn residual(p: &nn::Path, c: i64, n: usize, groups: i64) -> Vec<DepthWise> {
    let p = p / "layers";
    (0..n).map(|i| DepthWise::new(&(&p / i), (c, c), 1, groups, true)).collect()
}

#[derive(Debug)]
enum Stage {
    Conv(ConvBn),
    Blocks(Vec<DepthWise>),
}

/// A MobileFaceNet: `[N, 3, 112, 112]` → `[N, emb_dim]` embeddings (not normalised).
#[derive(Debug)]
pub struct MobileFaceNet {
    stages: Vec<Stage>,
    conv_sep: ConvBn,
    gdc: ConvBn,
    linear: nn::Linear,
    features: BatchNorm,
}

impl MobileFaceNet {
    pub fn new(p: &nn::Path, shape: MbfShape, emb_dim: usize) -> Result<MobileFaceNet> {
        ensure!(emb_dim > 0, "mobilefacenet embedding size must be positive");
        let (c1, c2) = (64 * shape.scale, 128 * shape.scale);
        let [b0, b1, b2, b3] = shape.blocks;
        let l = p / "layers";
        let second = match b0 {
            1 => Stage::Conv(ConvBn::new(&(&l / 1), (c1, c1), 3, 1, 64, true)),
            n => Stage::Blocks(residual(&(&l / 1), c1, n, 128)),
        };
        let dw = |i: usize, c: (i64, i64), groups| Stage::Blocks(vec![DepthWise::new(&(&l / i), c, 2, groups, false)]);
        let stages = vec![
            Stage::Conv(ConvBn::new(&(&l / 0), (3, c1), 3, 2, 1, true)),
            second,
            dw(2, (c1, c1), 128),
            Stage::Blocks(residual(&(&l / 3), c1, b1, 128)),
            dw(4, (c1, c2), 256),
            Stage::Blocks(residual(&(&l / 5), c2, b2, 256)),
            dw(6, (c2, c2), 512),
            Stage::Blocks(residual(&(&l / 7), c2, b3, 256)),
        ];
        let f = p / "features" / "layers";
        let no_bias = nn::LinearConfig { ws_init: kaiming(), bs_init: None, bias: false };
        Ok(MobileFaceNet {
            stages,
            conv_sep: ConvBn::new(&(p / "conv_sep"), (c2, 512), 1, 1, 1, true),
            gdc: ConvBn::new(&(&f / 0), (512, 512), 7, 1, 512, false),
            linear: nn::linear(&f / 2, 512, emb_dim as i64, no_bias),
            features: BatchNorm::new(&f / 3, emb_dim as i64),
        })
    }

    pub fn emb_dim(&self) -> usize {
        self.linear.ws.size()[0] as usize
    }
}

/// Where each of the four overlap stages ends in `layers` (the third and the last two
/// stride-2 depth-wise blocks start a new one); the last also runs the embedding.
const STAGE_ENDS: [usize; 4] = [3, 5, 7, 8];

impl Staged for MobileFaceNet {
    fn stage_count(&self) -> usize {
        STAGE_ENDS.len()
    }

    fn stage_t(&self, i: usize, c: Carry, train: bool) -> Carry {
        let start = if i == 0 { 0 } else { STAGE_ENDS[i - 1] };
        let mut ys = c.x;
        for stage in &self.stages[start..STAGE_ENDS[i]] {
            ys = match stage {
                Stage::Conv(c) => ys.apply_t(c, train),
                Stage::Blocks(blocks) => blocks.iter().fold(ys, |ys, b| ys.apply_t(b, train)),
            };
        }
        if i + 1 == STAGE_ENDS.len() {
            let flat = ys.apply_t(&self.conv_sep, train).apply_t(&self.gdc, train).flatten(1, -1);
            ys = flat.apply(&self.linear).apply_t(&self.features, train);
        }
        Carry { x: ys, ..c }
    }

    fn stage_of(&self, name: &str) -> usize {
        let layer = name.strip_prefix("layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        match layer {
            Some(l) => STAGE_ENDS.iter().position(|&end| l < end).unwrap_or(STAGE_ENDS.len() - 1),
            None => STAGE_ENDS.len() - 1,
        }
    }
}

impl ModuleT for MobileFaceNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        forward_stages(self, xs, train)
    }
}
