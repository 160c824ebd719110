//! The margins that adapt to the batch (`--margin adaface|magface|curricularface`), beside
//! the fixed combined margin of `margin.rs`, each its paper's published formula:
//!
//! - **AdaFace** (Kim et al. 2022): the embedding's norm ‖z‖, against the running mean μ and
//!   standard deviation σ of the norms, gives `ŝ = clip(h·(‖z‖ − μ)/(σ + ε), −1, 1)`; the
//!   target becomes `cos(clip(θ − m·ŝ, ε, π − ε)) − (m + m·ŝ)`: a high-norm (easy, good
//!   quality) face gets an angular margin, a low-norm one an additive one. μ and σ are
//!   updated from each batch first (`t_alpha`-weighted). Cosines are clamped to ±(1 − ε).
//! - **MagFace** (Meng et al. 2021): `a = clip(‖z‖, l_a, u_a)` sets the angular margin
//!   `m(a)`, linear from l_m at l_a to u_m at u_a, applied where cos θ > 0 (its
//!   `easy_margin`); the loss adds `λ_g·g(a)`, `g(a) = a/u_a² + 1/a`, which pulls the norm
//!   of a recognisable face up. The margin is differentiable in the norm.
//! - **CurricularFace** (Huang et al. 2020): ArcFace's target (with its fallback), and every
//!   other class whose cosine exceeds `cos(θ_y + m)` (a hard negative) becomes
//!   `cos·(t + cos)`, with t a running mean of the target cosines (0.01 per batch).
//!
//! The running statistics are VarStore buffers `margin.batch_mean`, `margin.batch_std`,
//! `margin.t` (the papers' buffer names): checkpointed with the weights, restored on resume
//! and rollback. They are folded from sums over every rank (or, under Partial FC, from the
//! gathered batch), so every rank holds the values one process would with the global batch.
//! Rows labelled -1 get no margin and do not count. A batch with no labelled row (AdaFace:
//! fewer than two) leaves the statistics as they were.

use anyhow::{ensure, Result};
use std::f64::consts::PI;
use tch::{nn, Device, Kind, Tensor};

use super::margin::Margin;
use crate::dist::{Comm, ReduceOp};
use crate::host_sync;

/// AdaFace's m, h and t_alpha.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaFace {
    pub m: f64,
    pub h: f64,
    pub alpha: f64,
}

/// MagFace's norm range (l_a, u_a), margin range (l_m, u_m) and λ_g.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MagFace {
    pub norms: [f64; 2],
    pub margins: [f64; 2],
    pub lambda: f64,
}

/// CurricularFace's angular margin m.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurricularFace {
    pub m: f64,
}

/// The FR head's margin: fixed (ArcFace, CosFace, combined) or adaptive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FrMargin {
    Fixed(Margin),
    AdaFace(AdaFace),
    MagFace(MagFace),
    Curricular(CurricularFace),
}

impl From<Margin> for FrMargin {
    fn from(m: Margin) -> FrMargin {
        FrMargin::Fixed(m)
    }
}

/// AdaFace's ε: the cosine and angle clamps and the guard on σ.
const ADA_EPS: f64 = 1e-3;
/// AdaFace's norms are clipped to this range before use.
const ADA_NORMS: (f64, f64) = (1e-3, 100.0);
/// AdaFace's starting μ and σ.
const ADA_START: [f64; 2] = [20.0, 100.0];
/// CurricularFace's weight of each batch in t.
const CURRICULAR_ALPHA: f64 = 0.01;

/// Where a batch's rows are.
#[derive(Clone, Copy)]
pub enum Spread<'a> {
    /// Each rank has its own rows and every centre: statistics are summed over ranks.
    Shares(&'a dyn Comm),
    /// Every rank has every row but only its own centres (Partial FC): the statistics are
    /// already global; a row's target cosine is summed from the rank that holds its centre.
    Gathered(&'a dyn Comm),
}

/// A batch as the margin sees it.
pub struct BatchRows<'a> {
    /// Cosines `[M, C]` to the centres scored here.
    pub cos: &'a Tensor,
    /// Each row's label as a column of `cos` (-1: none here).
    pub columns: &'a Tensor,
    /// Rows that have a label, here or elsewhere.
    pub valid: &'a Tensor,
    /// Each row's embedding norm `[M]`, with its graph.
    pub norms: &'a Tensor,
    pub spread: Spread<'a>,
}

impl AdaFace {
    pub fn new(m: f64, h: f64, alpha: f64) -> Result<AdaFace> {
        ensure!((0.0..PI / 2.0).contains(&m), "--margin adaface: m = {m} must be in [0, π/2)");
        Ok(AdaFace { m, h, alpha })
    }

    fn logits(&self, rows: &BatchRows, mean: &Tensor, std: &Tensor, s: f64) -> Tensor {
        let c = rows.cos.clamp(-1.0 + ADA_EPS, 1.0 - ADA_EPS);
        let scaler = ((safe_norms(rows.norms) - mean) / (std + ADA_EPS) * self.h).clamp(-1.0, 1.0).unsqueeze(1);
        let target = c.gather(1, &rows.columns.clamp_min(0).unsqueeze(1), false);
        let angle = (target.acos() - &scaler * self.m).clamp(ADA_EPS, PI - ADA_EPS);
        let with_margin = angle.cos() - (scaler * self.m + self.m);
        replace_targets(&c, rows.columns, &with_margin) * s
    }
}

impl MagFace {
    pub fn new(norms: [f64; 2], margins: [f64; 2], lambda: f64) -> Result<MagFace> {
        check_range(norms, "--magface-norms", f64::INFINITY)?;
        check_range(margins, "--magface-margins", PI / 2.0)?;
        ensure!(lambda.is_finite() && lambda >= 0.0, "--magface-lambda {lambda} must be finite and ≥ 0");
        Ok(MagFace { norms, margins, lambda })
    }

    /// The clipped norm a, as both the margin and the regulariser see it.
    fn clipped(&self, norms: &Tensor) -> Tensor {
        norms.clamp(self.norms[0], self.norms[1])
    }

    fn logits(&self, rows: &BatchRows, s: f64) -> Tensor {
        let ([la, ua], [lm, um]) = (self.norms, self.margins);
        let c = rows.cos.clamp(-1.0, 1.0);
        let m = ((self.clipped(rows.norms) - la) * ((um - lm) / (ua - la)) + lm).unsqueeze(1);
        let target = c.gather(1, &rows.columns.clamp_min(0).unsqueeze(1), false);
        let sin = target.square().neg().g_add_scalar(1.0).clamp_min(1e-12).sqrt();
        let with_margin = &target * m.cos() - sin * m.sin();
        let easy = with_margin.where_self(&target.gt(0.0), &target);
        replace_targets(&c, rows.columns, &easy) * s
    }

    /// `λ_g·g(a)` per row (`[M]`, with its graph); the loss adds its mean over labelled rows.
    pub fn regulariser(&self, norms: &Tensor) -> Tensor {
        let a = self.clipped(norms);
        (&a / (self.norms[1] * self.norms[1]) + a.reciprocal()) * self.lambda
    }
}

impl CurricularFace {
    pub fn new(m: f64) -> Result<CurricularFace> {
        Margin::arcface(m).validate()?;
        Ok(CurricularFace { m })
    }

    fn logits(&self, rows: &BatchRows, targets: &Tensor, t: &Tensor, s: f64) -> Tensor {
        let c = rows.cos.clamp(-1.0, 1.0);
        let own = targets.unsqueeze(1);
        let sin = own.square().neg().g_add_scalar(1.0).clamp_min(0.0).sqrt();
        // cos(θ_y + m) without ArcFace's fallback: the published hard-negative threshold.
        let threshold = &own * self.m.cos() - sin * self.m.sin();
        let hard = c.gt_tensor(&threshold).logical_and(&rows.valid.unsqueeze(1));
        let reweighted = (&c * (&c + t)).where_self(&hard, &c);
        let target = c.gather(1, &rows.columns.clamp_min(0).unsqueeze(1), false);
        let with_margin = Margin::arcface(self.m).target_logit(&target);
        replace_targets(&reweighted, rows.columns, &with_margin) * s
    }
}

impl FrMargin {
    /// Scaled logits of a batch, with the running statistics as they are in `state`.
    pub fn logits(&self, state: &MarginState, rows: &BatchRows, s: f64) -> Result<Tensor> {
        Ok(match self {
            FrMargin::Fixed(m) => m.logits(rows.cos, rows.columns, s),
            FrMargin::AdaFace(a) => a.logits(rows, &state.values[0], &state.values[1], s),
            FrMargin::MagFace(g) => g.logits(rows, s),
            FrMargin::Curricular(c) => c.logits(rows, &targets(rows)?, &state.values[0], s),
        })
    }

    /// MagFace's regulariser, if this margin has one.
    pub fn magface(&self) -> Option<&MagFace> {
        match self {
            FrMargin::MagFace(g) => Some(g),
            _ => None,
        }
    }
}

/// Each row's clamped cos θ_y, without graph; 0 for unlabelled rows. Gathered, each rank
/// has only its own centres' targets, so they are summed over ranks.
fn targets(rows: &BatchRows) -> Result<Tensor> {
    let index = rows.columns.clamp_min(0).unsqueeze(1);
    let has = rows.columns.ge(0).to_kind(Kind::Float);
    let t = rows.cos.detach().clamp(-1.0, 1.0).gather(1, &index, false).squeeze_dim(1).to_kind(Kind::Float) * has;
    if let Spread::Gathered(comm) = rows.spread {
        comm.all_reduce(&t, ReduceOp::Sum)?;
    }
    Ok(t)
}

/// `c` with each row's label column replaced by `target [M, 1]`; rows at -1 keep theirs.
fn replace_targets(c: &Tensor, columns: &Tensor, target: &Tensor) -> Tensor {
    let index = columns.clamp_min(0).unsqueeze(1);
    let hit = c.zeros_like().scatter_value(1, &index, 1.0).gt(0.5).logical_and(&columns.ge(0).unsqueeze(1));
    target.expand_as(c).where_self(&hit, c)
}

fn safe_norms(norms: &Tensor) -> Tensor {
    norms.detach().clamp(ADA_NORMS.0, ADA_NORMS.1)
}

fn check_range(r: [f64; 2], flag: &str, hi: f64) -> Result<()> {
    ensure!(
        r.iter().all(|v| v.is_finite()) && r[0] > 0.0 && r[0] < r[1] && r[1] < hi,
        "{flag} {},{}: needs 0 < low < high{}",
        r[0],
        r[1],
        if hi.is_finite() { " < π/2" } else { "" }
    );
    Ok(())
}

/// `--magface-norms L,U` and `--magface-margins L,U`: two numbers (their order is checked
/// with the margin, so a recipe's array meets the same rule).
pub fn parse_pair(s: &str) -> Result<[f64; 2], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [a, b] = parts.as_slice() else { return Err(format!("expected two numbers LOW,HIGH, got {s:?}")) };
    let num = |v: &str| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()).ok_or(format!("{v:?} is not a number"));
    let pair = [num(a)?, num(b)?];
    (pair[0] > 0.0 && pair[0] < pair[1]).then_some(pair).ok_or(format!("needs 0 < LOW < HIGH, got {s:?}"))
}

/// The running statistics of a margin: AdaFace's μ and σ, CurricularFace's t.
#[derive(Debug)]
pub struct MarginState {
    values: Vec<Tensor>,
}

impl MarginState {
    /// Buffers for `rule` under `p` (the model's `margin.*`), or plain tensors without `p`.
    pub fn new(p: Option<&nn::Path>, rule: &FrMargin, device: Device) -> MarginState {
        let start: &[(&str, f64)] = match rule {
            FrMargin::AdaFace(_) => &[("batch_mean", ADA_START[0]), ("batch_std", ADA_START[1])],
            FrMargin::Curricular(_) => &[("t", 0.0)],
            _ => &[],
        };
        let buffer = |(name, v): &(&str, f64)| {
            let mut t = match p {
                Some(p) => p.zeros_no_train(name, &[1]),
                None => Tensor::zeros([1], (Kind::Float, device)),
            };
            tch::no_grad(|| t.fill_(*v))
        };
        MarginState { values: start.iter().map(buffer).collect() }
    }

    /// The values, in the order above.
    pub fn values(&self) -> Vec<f64> {
        self.values.iter().map(host_sync::f64_of).collect()
    }

    /// Folds a training batch into the statistics, before its logits (as the papers do).
    pub fn observe(&self, rule: &FrMargin, rows: &BatchRows) -> Result<()> {
        match rule {
            FrMargin::AdaFace(a) => {
                if let Some((mean, std)) = moments(&safe_norms(rows.norms), rows.valid, rows.spread)? {
                    self.blend(0, mean, a.alpha);
                    self.blend(1, std, a.alpha);
                }
            }
            FrMargin::Curricular(_) => {
                let t = targets(rows)?;
                let mut sums = [masked_sum(&t, rows.valid), count(rows.valid)];
                if let Spread::Shares(comm) = rows.spread {
                    comm.all_reduce_f64(&mut sums, ReduceOp::Sum)?;
                }
                if sums[1] > 0.0 {
                    self.blend(0, sums[0] / sums[1], CURRICULAR_ALPHA);
                }
            }
            FrMargin::Fixed(_) | FrMargin::MagFace(_) => {}
        }
        Ok(())
    }

    fn blend(&self, i: usize, batch: f64, alpha: f64) {
        let was = host_sync::f64_of(&self.values[i]);
        let _ = tch::no_grad(|| self.values[i].shallow_clone().fill_(alpha * batch + (1.0 - alpha) * was));
    }
}

/// Mean and unbiased standard deviation of `x` over valid rows (of every rank when
/// `Shares`), in f64 and in two passes; None below two rows.
fn moments(x: &Tensor, valid: &Tensor, spread: Spread) -> Result<Option<(f64, f64)>> {
    let comm = match spread {
        Spread::Shares(comm) => Some(comm),
        Spread::Gathered(_) => None,
    };
    let mut first = [masked_sum(x, valid), count(valid)];
    if let Some(c) = comm {
        c.all_reduce_f64(&mut first, ReduceOp::Sum)?;
    }
    let [sum, n] = first;
    if n < 2.0 {
        return Ok(None);
    }
    let mean = sum / n;
    let mut second = [masked_sum(&(x.to_kind(Kind::Double) - mean).square(), valid)];
    if let Some(c) = comm {
        c.all_reduce_f64(&mut second, ReduceOp::Sum)?;
    }
    Ok(Some((mean, (second[0] / (n - 1.0)).sqrt())))
}

fn masked_sum(x: &Tensor, valid: &Tensor) -> f64 {
    host_sync::f64_of(
        &x.to_kind(Kind::Double).where_self(valid, &x.zeros_like().to_kind(Kind::Double)).sum(Kind::Double),
    )
}

fn count(valid: &Tensor) -> f64 {
    host_sync::f64_of(&valid.to_kind(Kind::Double).sum(Kind::Double))
}
