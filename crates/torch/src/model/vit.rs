//! arcface_torch's Vision Transformer (`backbones/vit.py`, `get_model("vit_t"|"vit_s"|"vit_b")`)
//! with its module names, so our `backbone.*` tensors are its `state_dict()`: `patch_embed.proj`
//! (a 9×9/9 conv: 144 tokens at 112 px), `pos_embed`, `mask_token`, `blocks.{i}` (`norm1`,
//! `attn.qkv` without bias, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`), `norm`, and the
//! `feature` head (`0` Linear tokens·dim → dim, `1` BatchNorm1d, `2` Linear dim → emb, `3`
//! BatchNorm1d; both Linears without bias, both BNs with eps 2e-5).
//!
//! In training, each block's residual branches are dropped per sample (stochastic depth,
//! rising linearly from 0 at the first block to `drop_path` at the last) and, with
//! `mask_ratio` > 0, that share of each image's tokens is left out of the blocks and the
//! learned mask token stands in for them before the head.

use super::layers::BatchNorm;
use super::stages::{forward_stages, Carry, Staged};
use anyhow::{ensure, Result};
use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

/// Width, depth and heads of one size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitShape {
    pub dim: i64,
    pub depth: usize,
    pub heads: i64,
}

pub const VIT_T: VitShape = VitShape { dim: 256, depth: 12, heads: 8 };
pub const VIT_S: VitShape = VitShape { dim: 512, depth: 12, heads: 8 };
pub const VIT_B: VitShape = VitShape { dim: 512, depth: 24, heads: 8 };

/// arcface_torch's `vit_t`, `vit_s` and `vit_b` all train with stochastic depth 0.1 and mask
/// ratio 0.1 (its `*_dp005_mask0`-style names change them; here `--drop-path`, `--mask-ratio`).
pub const DEFAULT_DROP_PATH: f64 = 0.1;
pub const DEFAULT_MASK_RATIO: f64 = 0.1;

const SIDE: i64 = 112;
const PATCH: i64 = 9;
/// 112 // 9 = 12 patches a side; the last 4 rows and columns are not read, as there.
const TOKENS: i64 = (SIDE / PATCH) * (SIDE / PATCH);

/// Training-time regularisation (no effect on the weights' shapes or on eval).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VitTraining {
    pub drop_path: f64,
    pub mask_ratio: f64,
}

impl Default for VitTraining {
    fn default() -> Self {
        VitTraining { drop_path: DEFAULT_DROP_PATH, mask_ratio: DEFAULT_MASK_RATIO }
    }
}

/// Refuses any input side but 112: the position embedding has one row per 9×9 patch of it.
pub fn check_input_side(side: usize) -> Result<()> {
    ensure!(
        side == SIDE as usize,
        "vit needs 112×112 inputs (its position embedding has one row for each of the 144 9×9 patches \
         of 112 px), not {side}×{side}: use --size 112"
    );
    Ok(())
}

/// Normal, std 0.02, bias 0: `_init_weights` (its truncation at ±2 never bites at that std).
fn linear(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let cfg =
        nn::LinearConfig { ws_init: Init::Randn { mean: 0.0, stdev: 0.02 }, bs_init: Some(Init::Const(0.0)), bias };
    nn::linear(p, c_in, c_out, cfg)
}

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], Default::default())
}

/// Multi-head self-attention; q·kᵀ, softmax and the weighted sum always in f32.
#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: &nn::Path, dim: i64, heads: i64) -> Attention {
        Attention { qkv: linear(p / "qkv", dim, 3 * dim, false), proj: linear(p / "proj", dim, dim, true), heads }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        // -1, not the batch size, so that a traced export takes any batch.
        let (_, n, c) = xs.size3().expect("tokens are [batch, tokens, dim]");
        let qkv = xs.apply(&self.qkv).reshape([-1, n, 3, self.heads, c / self.heads]).permute([2, 0, 3, 1, 4]);
        let scale = ((c / self.heads) as f64).powf(-0.5);
        let mix = || {
            let part = |i: i64| qkv.get(i).to_kind(Kind::Float);
            let attn = (part(0).matmul(&part(1).transpose(-2, -1)) * scale).softmax(-1, Kind::Float);
            attn.matmul(&part(2)).transpose(1, 2).reshape([-1, n, c])
        };
        // Under autocast qkv is f16: leave autocast for the scores, as arcface_torch does.
        let mixed = if qkv.kind() == Kind::Float { mix() } else { tch::autocast(false, mix) };
        mixed.apply(&self.proj)
    }
}

/// Pre-norm transformer block: x + attn(norm1 x), then x + mlp(norm2 x), with ReLU6 in the MLP.
#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    drop_path: f64,
}

impl Block {
    fn new(p: &nn::Path, shape: VitShape, drop_path: f64) -> Block {
        let (dim, mlp) = (shape.dim, p / "mlp");
        Block {
            norm1: layer_norm(p / "norm1", dim),
            attn: Attention::new(&(p / "attn"), dim, shape.heads),
            norm2: layer_norm(p / "norm2", dim),
            fc1: linear(&mlp / "fc1", dim, 4 * dim, true),
            fc2: linear(&mlp / "fc2", 4 * dim, dim, true),
            drop_path,
        }
    }

    /// Stochastic depth: in training, each sample keeps the branch with probability 1 − p,
    /// scaled by 1/(1 − p) (timm's `DropPath`).
    fn dropped(&self, branch: Tensor, train: bool) -> Tensor {
        if !train || self.drop_path <= 0.0 {
            return branch;
        }
        let keep = 1.0 - self.drop_path;
        let mask = Tensor::empty([branch.size()[0], 1, 1], (branch.kind(), branch.device())).bernoulli_p(keep);
        branch * (mask / keep)
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = xs + self.dropped(self.attn.forward(&xs.apply(&self.norm1)), train);
        let mlp = xs.apply(&self.norm2).apply(&self.fc1).clamp(0.0, 6.0).apply(&self.fc2);
        &xs + self.dropped(mlp, train)
    }
}

/// A ViT: `[N, 3, 112, 112]` → `[N, emb_dim]` embeddings (not normalised).
#[derive(Debug)]
pub struct VisionTransformer {
    patch_embed: nn::Conv2D,
    pos_embed: Tensor,
    mask_token: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    feature: (nn::Linear, BatchNorm, nn::Linear, BatchNorm),
    mask_ratio: f64,
    dim: i64,
}

impl VisionTransformer {
    pub fn new(p: &nn::Path, shape: VitShape, emb_dim: usize, training: VitTraining) -> Result<VisionTransformer> {
        ensure!(emb_dim > 0, "vit embedding size must be positive");
        for (name, v) in [("--drop-path", training.drop_path), ("--mask-ratio", training.mask_ratio)] {
            ensure!((0.0..1.0).contains(&v), "{name} {v}: must be in [0, 1)");
        }
        let (dim, emb) = (shape.dim, emb_dim as i64);
        let cfg = nn::ConvConfig { stride: PATCH, ..Default::default() };
        let std02 = Init::Randn { mean: 0.0, stdev: 0.02 };
        let rate = |i: usize| match shape.depth {
            1 => 0.0,
            d => training.drop_path * i as f64 / (d - 1) as f64,
        };
        let f = p / "feature";
        Ok(VisionTransformer {
            patch_embed: nn::conv2d(p / "patch_embed" / "proj", 3, dim, PATCH, cfg),
            pos_embed: p.var("pos_embed", &[1, TOKENS, dim], std02),
            mask_token: p.var("mask_token", &[1, 1, dim], std02),
            blocks: (0..shape.depth).map(|i| Block::new(&(p / "blocks" / i), shape, rate(i))).collect(),
            norm: layer_norm(p / "norm", dim),
            feature: (
                linear(&f / 0, TOKENS * dim, dim, false),
                BatchNorm::new(&f / 1, dim).with_eps(2e-5),
                linear(&f / 2, dim, emb, false),
                BatchNorm::new(&f / 3, emb).with_eps(2e-5),
            ),
            mask_ratio: training.mask_ratio,
            dim,
        })
    }

    pub fn emb_dim(&self) -> usize {
        self.feature.2.ws.size()[0] as usize
    }

    /// Per image, a random `1 − mask_ratio` of the tokens (in shuffled order) and the
    /// permutation that puts them back.
    fn keep_tokens(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let (n, l, _) = xs.size3().expect("tokens");
        let keep = (l as f64 * (1.0 - self.mask_ratio)) as i64;
        let shuffle = Tensor::rand([n, l], (Kind::Float, xs.device())).argsort(1, false);
        let restore = shuffle.argsort(1, false);
        let index = shuffle.narrow(1, 0, keep).unsqueeze(-1).expand([n, keep, self.dim], false);
        (xs.gather(1, &index, false), restore)
    }

    /// Back to every token in place: the kept ones from the blocks, the mask token elsewhere.
    fn restore_tokens(&self, xs: &Tensor, restore: &Tensor) -> Tensor {
        let (n, kept, _) = xs.size3().expect("tokens");
        let masked = self.mask_token.to_kind(xs.kind()).expand([n, TOKENS - kept, self.dim], false);
        let index = restore.unsqueeze(-1).expand([n, TOKENS, self.dim], false);
        Tensor::cat(&[xs, &masked], 1).gather(1, &index, false)
    }
}

/// Four stages of consecutive blocks; the first also embeds the patches (and masks
/// tokens), the last also restores them and runs the `feature` head.
const STAGES: usize = 4;

impl VisionTransformer {
    /// The blocks of stage `i`.
    fn stage_blocks(&self, i: usize) -> std::ops::Range<usize> {
        let d = self.blocks.len();
        d * i / STAGES..d * (i + 1) / STAGES
    }

    fn embed_tokens(&self, xs: &Tensor, train: bool) -> Carry {
        let tokens = xs.apply(&self.patch_embed).flatten(2, -1).transpose(1, 2) + &self.pos_embed;
        match train && self.mask_ratio > 0.0 {
            true => {
                let (kept, restore) = self.keep_tokens(&tokens);
                Carry { x: kept, aside: Some(restore) }
            }
            false => Carry { x: tokens, aside: None },
        }
    }

    fn feature_head(&self, c: &Carry, train: bool) -> Tensor {
        let ys = c.x.to_kind(Kind::Float).apply(&self.norm);
        let ys = match &c.aside {
            Some(restore) => self.restore_tokens(&ys, restore),
            None => ys,
        };
        let (l0, b1, l2, b3) = &self.feature;
        ys.reshape([-1, TOKENS * self.dim]).apply(l0).apply_t(b1, train).apply(l2).apply_t(b3, train)
    }
}

impl Staged for VisionTransformer {
    fn stage_count(&self) -> usize {
        STAGES
    }

    fn stage_t(&self, i: usize, c: Carry, train: bool) -> Carry {
        let mut c = if i == 0 { self.embed_tokens(&c.x, train) } else { c };
        for block in &self.blocks[self.stage_blocks(i)] {
            c.x = c.x.apply_t(block, train);
        }
        if i + 1 == STAGES {
            c.x = self.feature_head(&c, train);
        }
        c
    }

    fn stage_of(&self, name: &str) -> usize {
        let block = name.strip_prefix("blocks.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        match block {
            Some(b) => (0..STAGES).find(|&i| self.stage_blocks(i).contains(&b)).unwrap_or(STAGES - 1),
            None if name.starts_with("patch_embed.") || name == "pos_embed" => 0,
            None => STAGES - 1,
        }
    }
}

impl ModuleT for VisionTransformer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        forward_stages(self, xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn trainable(shape: VitShape) -> i64 {
        let vs = VarStore::new(Device::Cpu);
        let _ = VisionTransformer::new(&vs.root(), shape, 512, VitTraining::default()).unwrap();
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    /// Parameter counts of arcface_torch's vit_t/s/b at embedding 512, worked from its layer sizes.
    #[test]
    fn parameter_counts() {
        let count = |s: VitShape| {
            let d = s.dim;
            let block = 4 * d + 3 * d * d + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d);
            let head = TOKENS * d * d + 2 * d + d * 512 + 2 * 512;
            3 * d * 81 + d + TOKENS * d + d + s.depth as i64 * block + 2 * d + head
        };
        for shape in [VIT_T, VIT_S, VIT_B] {
            assert_eq!(trainable(shape), count(shape), "{shape:?}");
        }
        assert_eq!(count(VIT_T), 19_137_792);
    }

    #[test]
    fn masking_keeps_a_share_and_restores_every_position() {
        let vs = VarStore::new(Device::Cpu);
        let shape = VitShape { dim: 16, depth: 1, heads: 2 };
        let net =
            VisionTransformer::new(&vs.root(), shape, 8, VitTraining { drop_path: 0.0, mask_ratio: 0.1 }).unwrap();
        let tokens =
            Tensor::arange(TOKENS, (Kind::Float, Device::Cpu)).view([1, TOKENS, 1]).expand([2, TOKENS, 16], false);
        let (kept, restore) = net.keep_tokens(&tokens);
        assert_eq!(kept.size(), [2, 129, 16]);
        let back = net.restore_tokens(&kept, &restore);
        let is_mask = back.eq_tensor(&net.mask_token.expand([2, TOKENS, 16], false)).all_dim(-1, false);
        assert_eq!(is_mask.sum(Kind::Int64).int64_value(&[]), 2 * 15);
        let same = back.eq_tensor(&tokens).all_dim(-1, false);
        assert_eq!(same.logical_or(&is_mask).sum(Kind::Int64).int64_value(&[]), 2 * TOKENS, "a kept token moved");
    }

    #[test]
    fn other_sizes_and_rates_are_refused() {
        assert!(check_input_side(112).is_ok());
        assert!(check_input_side(108).unwrap_err().to_string().contains("--size 112"));
        let vs = VarStore::new(Device::Cpu);
        let bad = VitTraining { drop_path: 1.0, mask_ratio: 0.0 };
        assert!(VisionTransformer::new(&vs.root(), VIT_T, 512, bad).is_err());
    }
}
