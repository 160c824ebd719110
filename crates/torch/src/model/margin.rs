//! Combined angular margins (`--margin arcface|cosface|combined --m1 --m2 --m3`), as in
//! insightface's combined margin loss: the true class y gets `s·(cos(m1·θ_y + m2) − m3)`,
//! every other class `s·cos θ_j`. ArcFace is (1, m, 0), CosFace (1, 0, m); m1 > 1 adds
//! SphereFace's multiplicative margin.
//!
//! **Fallback.** Past `θ* = (π − m2)/m1` the angle `m1·θ + m2` passes π and `cos` would rise
//! again with θ, rewarding a worse embedding. There the target logit becomes
//! `cos θ − u·sin u − m3` with `u = π − θ*`: the first-order size of the angular margin at θ*
//! (the margin adds `δ(θ) = (m1 − 1)·θ + m2` to the angle, `δ(θ*) = u`, and
//! `cos(θ + δ) ≈ cos θ − δ·sin θ` with `sin θ* = sin u`), applied as a CosFace-like shift,
//! so the logit keeps falling with θ. With (1, m, 0) this is exactly insightface's ArcFace
//! `easy_margin = False` branch, `cos θ − m·sin m` where `cos θ ≤ cos(π − m)`, and with
//! (1, 0, m) it is plain CosFace everywhere. insightface's PyTorch combined loss computes
//! only those two cases, and its older MXNet one applies `cos(m1·θ + m2)` past π with no
//! fallback; `validate` rejects settings where this fallback would step up.

use anyhow::{ensure, Result};
use std::f64::consts::PI;
use tch::Tensor;

/// Which margin `--margin` names; each has insightface's usual values as defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarginKind {
    /// Additive angular margin: (1, 0.5, 0).
    Arcface,
    /// Additive cosine margin: (1, 0, 0.35).
    Cosface,
    /// All three terms: (1, 0.3, 0.2) unless given.
    Combined,
    /// AdaFace: the margin moves with the feature norm (m = --m2, 0.4).
    Adaface,
    /// MagFace: the margin rises with the feature norm, plus its norm regulariser.
    Magface,
    /// CurricularFace: ArcFace's target (m = --m2, 0.5), hard negatives reweighted.
    Curricularface,
}

/// The three margin terms: multiplicative angular `m1`, additive angular `m2` (radians) and
/// additive cosine `m3`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Margin {
    pub m1: f64,
    pub m2: f64,
    pub m3: f64,
}

impl MarginKind {
    /// The name `--margin` takes.
    pub fn name(self) -> &'static str {
        match self {
            MarginKind::Arcface => "arcface",
            MarginKind::Cosface => "cosface",
            MarginKind::Combined => "combined",
            MarginKind::Adaface => "adaface",
            MarginKind::Magface => "magface",
            MarginKind::Curricularface => "curricularface",
        }
    }

    /// The terms of a fixed margin (None for the adaptive ones, `adaptive_margin.rs`).
    pub fn defaults(self) -> Option<Margin> {
        match self {
            MarginKind::Arcface => Some(Margin { m1: 1.0, m2: 0.5, m3: 0.0 }),
            MarginKind::Cosface => Some(Margin { m1: 1.0, m2: 0.0, m3: 0.35 }),
            MarginKind::Combined => Some(Margin { m1: 1.0, m2: 0.3, m3: 0.2 }),
            MarginKind::Adaface | MarginKind::Magface | MarginKind::Curricularface => None,
        }
    }
}

impl Margin {
    pub fn arcface(m: f64) -> Margin {
        Margin { m1: 1.0, m2: m, m3: 0.0 }
    }

    pub fn cosface(m: f64) -> Margin {
        Margin { m1: 1.0, m2: 0.0, m3: m }
    }

    /// The kind's defaults with the terms given on the command line. ArcFace takes only
    /// `--m2` and CosFace only `--m3`; another term is an error pointing at `combined`, not
    /// a silently different loss.
    pub fn from_flags(kind: MarginKind, m1: Option<f64>, m2: Option<f64>, m3: Option<f64>) -> Result<Margin> {
        let Some(d) = kind.defaults() else { anyhow::bail!("--margin {} is not a fixed margin", kind.name()) };
        let fixed: &[(&str, Option<f64>, f64)] = match kind {
            MarginKind::Arcface => &[("m1", m1, d.m1), ("m3", m3, d.m3)],
            MarginKind::Cosface => &[("m1", m1, d.m1), ("m2", m2, d.m2)],
            _ => &[],
        };
        for &(name, given, value) in fixed {
            if let Some(v) = given {
                ensure!(
                    v == value,
                    "--margin {} has {name} = {value}; for {name} = {v} use --margin combined",
                    kind.name()
                );
            }
        }
        let margin = Margin { m1: m1.unwrap_or(d.m1), m2: m2.unwrap_or(d.m2), m3: m3.unwrap_or(d.m3) };
        margin.validate()?;
        Ok(margin)
    }

    /// Rejects terms for which the target logit would not be a margin: one that rises above
    /// `cos θ`, or one that would rise as θ grows.
    pub fn validate(&self) -> Result<()> {
        let Margin { m1, m2, m3 } = *self;
        ensure!([m1, m2, m3].iter().all(|v| v.is_finite()), "margin terms must be finite: {self:?}");
        ensure!(m1 > 0.0, "m1 = {m1} must be positive");
        ensure!((0.0..PI).contains(&m2), "m2 = {m2} must be in [0, π)");
        ensure!((0.0..=1.0).contains(&m3), "m3 = {m3} must be in [0, 1]");
        // m1·θ + m2 ≥ θ on [0, π], else the "margin" would raise the target near θ = π.
        ensure!(
            m1 >= 1.0 || m2 >= (1.0 - m1) * PI,
            "m1 = {m1}, m2 = {m2}: m1·θ + m2 falls below θ before π; m2 must be at least (1 − m1)·π"
        );
        let u = self.fallback_angle();
        ensure!(
            u * u.sin() >= 1.0 - u.cos(),
            "m1 = {m1}, m2 = {m2}: past θ* = {:.3} the fallback would raise the target logit; use a smaller margin",
            PI - u
        );
        Ok(())
    }

    /// `u = π − θ*`, written so that m1 = 1 gives exactly m2 (and ArcFace exactly its
    /// `cos(π − m)` threshold and `m·sin m` shift).
    fn fallback_angle(&self) -> f64 {
        ((self.m1 - 1.0) * PI + self.m2) / self.m1
    }

    /// Scaled logits from cosines `[N, C]` and labels `[N]` (i64). Rows labelled `-1` keep
    /// `s·cos θ` (masked records pass through). Cosines are clamped to [−1, 1], and `sin θ`
    /// is kept ≥ 1e-6, so gradients stay finite at cos θ = ±1.
    pub fn logits(&self, cos: &Tensor, labels: &Tensor, s: f64) -> Tensor {
        let cos = cos.clamp(-1.0, 1.0);
        let valid = labels.ge(0);
        let index = labels.clamp_min(0).unsqueeze(1);
        let target = cos.gather(1, &index, false);
        let margin_target = self.target_logit(&target);
        let delta = (margin_target - &target) * valid.unsqueeze(1).to_kind(cos.kind());
        cos.scatter_add(1, &index, &delta) * s
    }

    /// `cos(m1·θ + m2) − m3` before θ*, the fallback after it; `target` holds cos θ.
    pub(super) fn target_logit(&self, target: &Tensor) -> Tensor {
        let sin = target.square().neg().g_add_scalar(1.0).clamp_min(1e-12).sqrt();
        let angular = if self.m1 == 1.0 {
            // cos(θ + m2) without an arccos: ArcFace's form, exact for it.
            target * self.m2.cos() - sin * self.m2.sin()
        } else {
            // atan2 of the clamped sine keeps dθ/dcos finite where arccos's is not.
            (sin.atan2(target) * self.m1).g_add_scalar(self.m2).cos()
        };
        let u = self.fallback_angle();
        let with_margin = angular - self.m3;
        let fallback = target - (u * u.sin() + self.m3);
        with_margin.where_self(&target.gt((PI - u).cos()), &fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arcface::arcface_logits;
    use tch::{Device, Kind};

    const ARC: Margin = Margin { m1: 1.0, m2: 0.5, m3: 0.0 };
    const COS: Margin = Margin { m1: 1.0, m2: 0.0, m3: 0.35 };
    /// insightface's MXNet combined example (m1 < 1) and one with a SphereFace factor.
    const COMB: Margin = Margin { m1: 0.9, m2: 0.4, m3: 0.15 };
    const SPHERE: Margin = Margin { m1: 1.2, m2: 0.2, m3: 0.1 };

    fn tensor(v: &[f32], cols: i64) -> Tensor {
        Tensor::from_slice(v).view([-1, cols])
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// The target logit (s = 1) of a single-class row with cosine c.
    fn target(m: Margin, c: f32) -> f64 {
        values(&m.logits(&tensor(&[c], 1), &Tensor::from_slice(&[0i64]), 1.0))[0]
    }

    fn close(got: f64, want: f64, what: &str) {
        assert!((got - want).abs() < 2e-6, "{what}: got {got}, want {want}");
    }

    #[test]
    fn hand_computed_targets_before_and_past_the_fallback() {
        // (margin, cos θ, expected); θ* = (π − m2)/m1, u = π − θ*, fallback cos θ − u·sin u − m3.
        let (arc_u, comb_u, sph_u) = (0.5f64, (PI - (PI - 0.4) / 0.9), (PI - (PI - 0.2) / 1.2));
        let cases: &[(Margin, f64, f64)] = &[
            (ARC, 0.5, (PI / 3.0 + 0.5).cos()),
            (ARC, -0.8, ((-0.8f64).acos() + 0.5).cos()), // θ + m just below π
            (ARC, -0.95, -0.95 - arc_u * arc_u.sin()),   // θ ≈ 2.82: fallback
            (COS, 0.3, 0.3 - 0.35),
            (COS, -1.0, -1.35),
            (COMB, 0.5, (0.9 * PI / 3.0 + 0.4).cos() - 0.15),
            (COMB, -0.99, (0.9 * (-0.99f64).acos() + 0.4).cos() - 0.15), // θ = 3.0 < θ* = 3.046
            (COMB, -0.999, -0.999 - comb_u * comb_u.sin() - 0.15),       // θ = 3.097: fallback
            (SPHERE, 0.866, (1.2 * 0.866f64.acos() + 0.2).cos() - 0.1),
            (SPHERE, -0.5, (1.2 * 2.0 * PI / 3.0 + 0.2).cos() - 0.1), // θ = 2.094 < θ* = 2.451
            (SPHERE, -0.866, -0.866 - sph_u * sph_u.sin() - 0.1),     // θ = 2.618: fallback
        ];
        for &(m, c, want) in cases {
            close(target(m, c as f32), want, &format!("{m:?} at cos θ = {c}"));
        }
    }

    #[test]
    fn other_classes_and_masked_rows_stay_scaled_cosines() {
        for m in [ARC, COS, COMB, SPHERE] {
            let cos = tensor(&[0.5, 0.2, -0.3, 0.1, 0.4, 0.9], 3);
            let out = values(&m.logits(&cos, &Tensor::from_slice(&[-1i64, 2]), 10.0));
            assert_eq!(&out[..3], &values(&(&cos * 10.0).narrow(0, 0, 1))[..], "{m:?}: masked row");
            close(out[3], 1.0, "non-target");
            close(out[4], 4.0, "non-target");
            close(out[5], 10.0 * target(m, 0.9), "target");
        }
    }

    #[test]
    fn targets_fall_as_theta_grows_and_never_exceed_cos() {
        let c = Tensor::linspace(-1.0, 1.0, 4001, (Kind::Float, Device::Cpu)).view([-1, 1]);
        let labels = Tensor::zeros([4001], (Kind::Int64, Device::Cpu));
        for m in [ARC, COS, COMB, SPHERE, MarginKind::Combined.defaults().unwrap()] {
            let t = values(&m.logits(&c, &labels, 1.0));
            let cs = values(&c);
            assert!(t.windows(2).all(|w| w[1] >= w[0] - 1e-6), "{m:?}: not monotone in cos θ");
            assert!(t.iter().zip(&cs).all(|(t, c)| *t <= c + 1e-6), "{m:?}: above cos θ");
        }
    }

    #[test]
    fn gradients_are_finite_at_the_clamp_limits() {
        for m in [ARC, COS, COMB, SPHERE] {
            for edge in [1.0f32, -1.0, 1.5, -2.0] {
                let cos = tensor(&[edge, 0.3, 0.2, edge], 2).set_requires_grad(true);
                let out = m.logits(&cos, &Tensor::from_slice(&[0i64, 1]), 64.0);
                out.sum(Kind::Float).backward();
                let g = values(&cos.grad());
                assert!(g.iter().all(|v| v.is_finite()), "{m:?} at {edge}: {g:?}");
            }
        }
    }

    #[test]
    fn arcface_equals_the_current_arcface_logits() {
        tch::manual_seed(3);
        let cos = Tensor::rand([64, 10], (Kind::Float, Device::Cpu)) * 2.4 - 1.2;
        let labels = Tensor::randint_low(-1, 10, [64], (Kind::Int64, Device::Cpu));
        for m in [0.5, 0.35, 0.1] {
            let (a, b) = (cos.copy().set_requires_grad(true), cos.copy().set_requires_grad(true));
            let new = Margin::arcface(m).logits(&a, &labels, 64.0);
            let old = arcface_logits(&b, &labels, 64.0, m);
            assert!(new.equal(&old), "m = {m}: values differ");
            (new.square().sum(Kind::Float)).backward();
            (old.square().sum(Kind::Float)).backward();
            assert!(a.grad().equal(&b.grad()), "m = {m}: gradients differ");
        }
    }

    #[test]
    fn flags_fill_defaults_and_refuse_other_terms() {
        let f = Margin::from_flags;
        assert_eq!(f(MarginKind::Arcface, None, None, None).unwrap(), ARC);
        assert_eq!(f(MarginKind::Arcface, Some(1.0), Some(0.4), None).unwrap(), Margin::arcface(0.4));
        assert_eq!(f(MarginKind::Cosface, None, None, Some(0.4)).unwrap(), Margin::cosface(0.4));
        assert_eq!(f(MarginKind::Combined, Some(0.9), Some(0.4), Some(0.15)).unwrap(), COMB);
        let err = f(MarginKind::Arcface, Some(1.2), None, None).unwrap_err().to_string();
        assert!(err.contains("--margin arcface has m1 = 1") && err.contains("--margin combined"), "{err}");
        assert!(f(MarginKind::Cosface, None, Some(0.5), None).is_err());
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let bad = [
            (Margin { m1: 0.0, m2: 0.5, m3: 0.0 }, "m1"),
            (Margin { m1: 1.0, m2: -0.1, m3: 0.0 }, "m2"),
            (Margin { m1: 1.0, m2: PI, m3: 0.0 }, "m2"),
            (Margin { m1: 1.0, m2: 0.5, m3: f64::NAN }, "finite"),
            (Margin { m1: 1.0, m2: 0.0, m3: -0.1 }, "m3"),
            (Margin { m1: 0.5, m2: 0.1, m3: 0.0 }, "(1 − m1)·π"),
            (Margin { m1: 4.0, m2: 0.0, m3: 0.0 }, "fallback"),
            (Margin::arcface(2.5), "fallback"),
        ];
        for (m, word) in bad {
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(word), "{m:?}: {err}");
        }
        for m in [ARC, COS, COMB, SPHERE, Margin::arcface(2.0), Margin { m1: 2.0, m2: 0.0, m3: 0.0 }] {
            m.validate().unwrap();
        }
    }
}
