//! Task heads on the pooled backbone features: the FR embedding head (followed by ArcFace)
//! and the Gender/Age classifiers, all sized by `HeadConfig`.

use super::arcface::normalize_rows;
use super::layers::BatchNorm;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Every knob of the heads and the losses on them; defaults are the seed's and the issue's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HeadConfig {
    pub emb_dim: usize,
    pub fr_dropout: f64,
    /// BatchNorm on the embedding before normalising (insightface's `features` BN).
    pub emb_bn: bool,
    /// ArcFace scale and additive angular margin (radians).
    pub s: f64,
    pub m: f64,
    pub gender_hidden: Vec<usize>,
    pub gender_dropout: f64,
    pub gender_classes: usize,
    pub age_hidden: Vec<usize>,
    pub age_dropout: f64,
    pub age_classes: usize,
    /// Probability on the true class of the Gender/Age soft one-hot targets.
    pub soft_target: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            emb_dim: 512,
            fr_dropout: 0.4,
            emb_bn: false,
            s: 64.0,
            m: 0.5,
            gender_hidden: vec![512],
            gender_dropout: 0.5,
            gender_classes: 2,
            age_hidden: vec![512, 512],
            age_dropout: 0.5,
            age_classes: 7,
            soft_target: 0.9,
        }
    }
}

impl HeadConfig {
    /// Rejects settings that would fail deep inside libtorch (from a recipe or flags).
    pub fn validate(&self) -> anyhow::Result<()> {
        let dropouts = [("fr_dropout", self.fr_dropout), ("gender_dropout", self.gender_dropout), ("age_dropout", self.age_dropout)];
        for (name, p) in dropouts {
            anyhow::ensure!((0.0..1.0).contains(&p), "{name} = {p}: a dropout probability is in [0, 1)");
        }
        anyhow::ensure!(self.emb_dim > 0, "emb_dim must be positive");
        anyhow::ensure!(self.s > 0.0, "ArcFace scale s = {} must be positive", self.s);
        anyhow::ensure!((0.0..std::f64::consts::PI).contains(&self.m), "ArcFace margin m = {} must be in [0, π)", self.m);
        anyhow::ensure!(self.gender_classes >= 2 && self.age_classes >= 2, "Gender and Age need at least 2 classes");
        anyhow::ensure!(self.soft_target > 0.0 && self.soft_target <= 1.0, "soft_target = {} must be in (0, 1]", self.soft_target);
        let hidden = self.gender_hidden.iter().chain(&self.age_hidden);
        anyhow::ensure!(hidden.into_iter().all(|&h| h > 0), "hidden layer widths must be positive");
        Ok(())
    }
}

/// Dropout → `fc` (out_dim → emb_dim) → optional `bn` → L2 normalisation.
#[derive(Debug)]
pub struct FrHead {
    dropout: f64,
    fc: nn::Linear,
    bn: Option<BatchNorm>,
}

impl FrHead {
    pub fn new(p: &nn::Path, in_dim: usize, cfg: &HeadConfig) -> FrHead {
        let fc = nn::linear(p / "fc", in_dim as i64, cfg.emb_dim as i64, Default::default());
        let bn = cfg.emb_bn.then(|| BatchNorm::new(p / "bn", cfg.emb_dim as i64));
        FrHead { dropout: cfg.fr_dropout, fc, bn }
    }
}

impl ModuleT for FrHead {
    fn forward_t(&self, feats: &Tensor, train: bool) -> Tensor {
        let mut e = feats.dropout(self.dropout, train).apply(&self.fc);
        if let Some(bn) = &self.bn {
            e = e.apply_t(bn, train);
        }
        normalize_rows(&e)
    }
}

/// Dropout → `hidden.i.{fc,bn}` + ReLU for each hidden width → `out` (logits).
#[derive(Debug)]
pub struct ClassifierHead {
    dropout: f64,
    hidden: Vec<(nn::Linear, BatchNorm)>,
    out: nn::Linear,
}

impl ClassifierHead {
    pub fn new(p: &nn::Path, in_dim: usize, hidden: &[usize], dropout: f64, classes: usize) -> ClassifierHead {
        let mut layers = Vec::new();
        let mut width = in_dim as i64;
        for (i, &h) in hidden.iter().enumerate() {
            let hp = p / "hidden" / i.to_string();
            layers.push((nn::linear(&hp / "fc", width, h as i64, Default::default()), BatchNorm::new(&hp / "bn", h as i64)));
            width = h as i64;
        }
        let out = nn::linear(p / "out", width, classes as i64, Default::default());
        ClassifierHead { dropout, hidden: layers, out }
    }

    pub fn gender(p: &nn::Path, in_dim: usize, cfg: &HeadConfig) -> ClassifierHead {
        Self::new(p, in_dim, &cfg.gender_hidden, cfg.gender_dropout, cfg.gender_classes)
    }

    pub fn age(p: &nn::Path, in_dim: usize, cfg: &HeadConfig) -> ClassifierHead {
        Self::new(p, in_dim, &cfg.age_hidden, cfg.age_dropout, cfg.age_classes)
    }
}

impl ModuleT for ClassifierHead {
    fn forward_t(&self, feats: &Tensor, train: bool) -> Tensor {
        let mut x = feats.dropout(self.dropout, train);
        for (fc, bn) in &self.hidden {
            x = x.apply(fc).apply_t(bn, train).relu_();
        }
        x.apply(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        HeadConfig::default().validate().unwrap();
        let bad = HeadConfig { fr_dropout: 1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("fr_dropout"));
        let bad = HeadConfig { m: 4.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("margin"));
        let bad = HeadConfig { age_hidden: vec![512, 0], ..Default::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let cfg: HeadConfig = toml::from_str("emb_dim = 128\nage_hidden = [64]").unwrap();
        assert_eq!((cfg.emb_dim, cfg.age_hidden.clone(), cfg.s), (128, vec![64], 64.0));
    }
}
