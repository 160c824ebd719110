//! ArcFace (additive angular margin, Deng et al. 2019): logits `s·cos θ_j` for every class
//! and `s·cos(θ_y + m)` for the true class y.
//!
//! Where `θ_y + m ≥ π` (i.e. `cos θ_y ≤ cos(π − m)`), `cos(θ + m)` would stop decreasing in θ,
//! so the target logit falls back to `cos θ_y − m·sin m`. This is exactly insightface's
//! `easy_margin = False` form (`arcface_torch` `ArcFace`: `where(cos > cos(π−m), cos(θ+m),
//! cos − sin(π−m)·m)`), since `sin(π − m) = sin m`.

use super::adaptive_margin::{BatchRows, FrMargin, MarginState, Spread};
use super::loss::cross_entropy;
use super::partial_fc::ClassSlice;
use crate::dist::{single::Single, Comm};
use anyhow::Result;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Margin logits from cosines `[N, C]` and labels `[N]` (i64). Rows with label `-1` keep
/// plain `s·cos θ` (no margin), so masked records can pass through unchanged.
pub fn arcface_logits(cos: &Tensor, labels: &Tensor, s: f64, m: f64) -> Tensor {
    let cos = cos.clamp(-1.0, 1.0);
    let valid = labels.ge(0);
    let index = labels.clamp_min(0).unsqueeze(1);
    let target = cos.gather(1, &index, false);
    // sqrt's gradient is infinite at 0, so keep 1 − cos² away from it.
    let sin = target.square().neg().g_add_scalar(1.0).clamp_min(1e-12).sqrt();
    let with_margin = &target * m.cos() - sin * m.sin();
    let fallback = &target - m * m.sin();
    let threshold = (std::f64::consts::PI - m).cos();
    let margin_target = with_margin.where_self(&target.gt(threshold), &fallback);
    let delta = (margin_target - &target) * valid.unsqueeze(1).to_kind(cos.kind());
    cos.scatter_add(1, &index, &delta) * s
}

/// The ArcFace layer: a class-centre matrix `weight [classes, emb_dim]` whose rows are
/// L2-normalised on use, so `emb · Wᵀ` is the cosine for normalised embeddings. The margin
/// is `--margin`'s (ArcFace's by default), with its running statistics if it has some.
#[derive(Debug)]
pub struct ArcFace {
    weight: Tensor,
    s: f64,
    margin: FrMargin,
    state: MarginState,
    /// Identities over all ranks (Partial FC holds only some of their centres).
    classes: usize,
    /// The dtype of the training cosine matmul (`cosine_in`).
    cos_kind: Kind,
}

impl ArcFace {
    /// insightface initialises the centres from N(0, 0.01).
    pub fn new(p: &nn::Path, classes: usize, emb_dim: usize, s: f64, margin: impl Into<FrMargin>) -> ArcFace {
        let weight = p.var("weight", &[classes as i64, emb_dim as i64], Init::Randn { mean: 0., stdev: 0.01 });
        let margin = margin.into();
        let state = MarginState::new(None, &margin, p.device());
        ArcFace { weight, s, margin, state, classes, cos_kind: Kind::Float }
    }

    /// Partial FC: only `slice` of the centres, drawn as the whole matrix would be (so a
    /// run starts from the same centres whatever the rank count), then cut.
    pub fn new_slice(
        p: &nn::Path,
        classes: usize,
        slice: ClassSlice,
        emb_dim: usize,
        s: f64,
        margin: impl Into<FrMargin>,
    ) -> ArcFace {
        let full = Tensor::randn([classes as i64, emb_dim as i64], (tch::Kind::Float, p.device())) * 0.01 + 0.0;
        let weight = p.var_copy("weight", &full.narrow(0, slice.start as i64, slice.len as i64));
        let margin = margin.into();
        let state = MarginState::new(None, &margin, p.device());
        ArcFace { weight, s, margin, state, classes, cos_kind: Kind::Float }
    }

    /// Keeps the margin's running statistics as buffers under `p` (`margin.*`), so
    /// checkpoints, resumes and rollbacks carry them.
    pub fn with_state(self, p: &nn::Path) -> ArcFace {
        ArcFace { state: MarginState::new(Some(p), &self.margin, p.device()), ..self }
    }

    /// Runs the training cosine matmul in `kind` (f16 or bf16 under `--amp` on CUDA).
    pub fn set_cosine_kind(&mut self, kind: Kind) {
        self.cos_kind = kind;
    }

    /// The margin's running statistics (empty for a margin without any).
    pub fn margin_state(&self) -> Vec<f64> {
        self.state.values()
    }

    /// Training logits `[N, rows]` of embeddings `emb` (unnormalised: their norms feed the
    /// adaptive margins), labels as `columns` of the centres scored, `valid` the rows
    /// labelled anywhere. The running statistics take the batch in first.
    pub fn train_logits(
        &self,
        emb: &Tensor,
        columns: &Tensor,
        valid: &Tensor,
        rows: Option<&Tensor>,
        spread: Spread,
    ) -> Result<Tensor> {
        let (cos, norms) = (self.cosine_on(emb, rows), row_norms(emb));
        let batch = BatchRows { cos: &cos, columns, valid, norms: &norms, spread };
        self.state.observe(&self.margin, &batch)?;
        self.margin.logits(&self.state, &batch, self.s)
    }

    /// The replicated head's FR loss on this rank's rows (global labels): cross-entropy on
    /// the margin logits, plus MagFace's regulariser, each a mean over labelled rows.
    pub fn loss(&self, emb: &Tensor, labels: &Tensor, comm: &dyn Comm) -> Result<Tensor> {
        let valid = labels.ge(0);
        let logits = self.train_logits(emb, labels, &valid, None, Spread::Shares(comm))?;
        let ce = cross_entropy(&logits, labels);
        Ok(match self.regulariser(emb, &valid) {
            Some(sum) => ce + sum / valid.to_kind(Kind::Float).sum(Kind::Float).clamp_min(1.0),
            None => ce,
        })
    }

    /// MagFace's λ_g·g(‖z‖) summed over `valid` rows of `emb`, with its graph.
    pub fn regulariser(&self, emb: &Tensor, valid: &Tensor) -> Option<Tensor> {
        let g = self.margin.magface()?.regulariser(&row_norms(emb));
        Some(g.where_self(valid, &g.zeros_like()).sum(Kind::Float))
    }

    /// Margin logits `[N, rows]` against some of the centres (`rows`, or all), for labels
    /// given as columns of those rows (-1: no margin in this row set).
    /// The running statistics are used as they are, not updated.
    pub fn logits_on(&self, emb: &Tensor, labels: &Tensor, rows: Option<&Tensor>) -> Result<Tensor> {
        let (cos, norms) = (self.cosine_on(emb, rows), row_norms(emb));
        let batch = BatchRows {
            cos: &cos,
            columns: labels,
            valid: &labels.ge(0),
            norms: &norms,
            spread: Spread::Shares(&Single),
        };
        self.margin.logits(&self.state, &batch, self.s)
    }

    /// Cosines `[N, rows]` of embeddings to some centres (or all).
    fn cosine_on(&self, emb: &Tensor, rows: Option<&Tensor>) -> Tensor {
        let w = match rows {
            Some(r) => self.weight.index_select(0, r),
            None => self.weight.shallow_clone(),
        };
        cosine_in(emb, &w, self.cos_kind)
    }

    /// Cosine of every embedding to every class centre (both normalised here).
    pub fn cosine(&self, emb: &Tensor) -> Tensor {
        let w = normalize_rows(&self.weight.to_kind(emb.kind()));
        normalize_rows(emb).matmul(&w.tr())
    }

    /// Scaled margin logits `[N, classes]` (running statistics as they are).
    pub fn logits(&self, emb: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.logits_on(emb, labels, None)
    }

    /// Identities over all ranks.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

/// Cosines `[N, R]` of the rows of `emb` to the rows of `centres`, each normalised in its
/// own dtype. The matmul runs in `kind` and comes back in `emb`'s dtype, so the clamp and
/// the margin after it see f32: arcface_torch's `PartialFC_V2` under `--fp16` (the linear
/// under autocast, then `logits.float()`). With `kind` f32 it is the plain f32 product.
pub fn cosine_in(emb: &Tensor, centres: &Tensor, kind: Kind) -> Tensor {
    let (e, w) = (normalize_rows(emb), normalize_rows(&centres.to_kind(emb.kind())));
    if kind == emb.kind() {
        return e.matmul(&w.tr());
    }
    e.to_kind(kind).matmul(&w.to_kind(kind).tr()).to_kind(emb.kind())
}

/// ‖x‖₂ per row `[N]`.
fn row_norms(x: &Tensor) -> Tensor {
    x.norm_scalaropt_dim(2, [1i64].as_slice(), false)
}

/// `x / max(‖x‖₂, 1e-12)` per row, as `torch.nn.functional.normalize`.
pub fn normalize_rows(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn logits(cos: &[f32], classes: i64, labels: &[i64], s: f64, m: f64) -> Vec<f32> {
        let cos = Tensor::from_slice(cos).view([-1, classes]);
        let out = arcface_logits(&cos, &Tensor::from_slice(labels), s, m);
        Vec::<f32>::try_from(out.to_kind(Kind::Float).flatten(0, -1)).unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn target_gets_angular_margin() {
        // θ = 60°, m = 0.5: cos(π/3 + 0.5) computed by hand; others stay s·cos.
        let out = logits(&[0.5, 0.2, -0.3], 3, &[0], 2.0, 0.5);
        let want = (std::f64::consts::FRAC_PI_3 + 0.5).cos();
        close(&out, &[2.0 * want, 0.4, -0.6]);
    }

    #[test]
    fn fallback_when_theta_plus_m_passes_pi() {
        // cos θ = −0.95 → θ ≈ 2.8240 rad; θ + 0.5 > π, so cos θ − m·sin m.
        let out = logits(&[0.1, -0.95], 2, &[1], 1.0, 0.5);
        close(&out, &[0.1, -0.95 - 0.5 * 0.5f64.sin()]);
    }

    #[test]
    fn masked_rows_and_clamping() {
        let out = logits(&[0.5, 0.2, 1.5, -2.0], 2, &[-1, 0], 10.0, 0.5);
        // row 0 unchanged, row 1: cos clamped to 1 → θ = 0 → cos(0.5); other clamped to −1.
        close(&out, &[5.0, 2.0, 10.0 * 0.5f64.cos(), -10.0]);
    }

    /// The fp16 cosine matmul (`--amp` on CUDA) agrees with the f32 one within fp16's
    /// rounding, comes back f32, and passes f32 gradients to the embeddings and centres.
    #[test]
    fn half_cosines_agree_with_f32_and_come_back_f32() {
        tch::manual_seed(4);
        let emb = Tensor::randn([6, 64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let w = (Tensor::randn([10, 64], (Kind::Float, tch::Device::Cpu)) * 0.01).set_requires_grad(true);
        let (full, half) = (cosine_in(&emb, &w, Kind::Float), cosine_in(&emb, &w, Kind::Half));
        assert_eq!(half.kind(), Kind::Float);
        let gap = (&half - &full).abs().max().double_value(&[]);
        assert!(gap > 0.0 && gap < 2e-3, "largest difference {gap}");
        half.sum(Kind::Float).backward();
        assert_eq!((emb.grad().kind(), w.grad().kind()), (Kind::Float, Kind::Float));
    }

    /// Under an f16 cosine the margin still computes in f32: the head's logits are f32 and
    /// equal, bit for bit, the margin applied to the f16 product cast to f32; the loss stays
    /// within fp16 rounding of the all-f32 head's.
    #[test]
    fn the_margin_sees_f32_cosines() {
        tch::manual_seed(6);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let mut arc = ArcFace::new(&vs.root(), 10, 16, 64.0, crate::model::Margin::arcface(0.5));
        let emb = Tensor::randn([5, 16], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::from_slice(&[1i64, 9, -1, 4, 1]);
        let f32_loss = arc.loss(&emb, &y, &Single).unwrap().double_value(&[]);
        arc.set_cosine_kind(Kind::Half);
        let valid = y.ge(0);
        let logits = arc.train_logits(&emb, &y, &valid, None, Spread::Shares(&Single)).unwrap();
        assert_eq!(logits.kind(), Kind::Float);
        let cos =
            normalize_rows(&emb).to_kind(Kind::Half).matmul(&normalize_rows(&arc.weight).to_kind(Kind::Half).tr());
        let want = crate::model::Margin::arcface(0.5).logits(&cos.to_kind(Kind::Float), &y, 64.0);
        assert!(logits.equal(&want), "the margin did not run on the f32 cast of the f16 product");
        let half_loss = arc.loss(&emb, &y, &Single).unwrap().double_value(&[]);
        assert!((half_loss - f32_loss).abs() < 0.05 * f32_loss.abs().max(1.0), "{half_loss} vs {f32_loss}");
    }

    #[test]
    fn gradient_is_finite_at_cos_one() {
        let cos = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]).set_requires_grad(true);
        let out = arcface_logits(&cos, &Tensor::from_slice(&[0i64]), 64.0, 0.5);
        out.sum(Kind::Float).backward();
        let g = Vec::<f32>::try_from(cos.grad().flatten(0, -1)).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
}
