//! Task heads on the pooled backbone features: the FR embedding head (followed by ArcFace)
//! and the Gender/Age classifiers, all sized by `HeadConfig`.

use super::adaptive_margin::{self, AdaFace, CurricularFace, FrMargin, MagFace};
use super::layers::BatchNorm;
use super::margin::{Margin, MarginKind};
use tch::nn::{self, ModuleT};
use tch::Tensor;
use trainer_data::bounds;

/// Every knob of the heads and the losses on them; defaults are the seed's. Each field is
/// a `trainer train` flag and a `[heads]` recipe key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// Embedding size of the FR head.
    #[arg(long, default_value_t = 512, value_parser = bounds::count::<usize>(1 << 16))]
    pub emb_dim: usize,
    /// Dropout before the FR embedding layer.
    #[arg(long, default_value_t = 0.4, value_parser = bounds::below(0.0, 1.0))]
    pub fr_dropout: f64,
    /// BatchNorm on the embedding before normalising (insightface's `features` BN).
    #[arg(long)]
    pub emb_bn: bool,
    /// ArcFace scale s.
    #[arg(long = "arc-s", default_value_t = 64.0, value_parser = bounds::positive(1e4))]
    pub s: f64,
    /// ArcFace additive angular margin m (radians); the same as --m2 with --margin arcface.
    #[arg(long = "arc-m", default_value_t = 0.5, value_parser = bounds::below(0.0, std::f64::consts::PI))]
    pub m: f64,
    /// Margin on the true class, cos(m1·θ + m2) − m3: arcface (1, --arc-m, 0), cosface
    /// (1, 0, 0.35) or combined (1, 0.3, 0.2); --m1/--m2/--m3 override the terms. Adaptive:
    /// adaface (m = --m2, 0.4), magface (--magface-*), curricularface (m = --m2, 0.5).
    #[arg(long, value_enum)]
    pub margin: Option<MarginKind>,
    /// Multiplicative angular margin m1 (combined only).
    #[arg(long, value_parser = bounds::positive(16.0))]
    pub m1: Option<f64>,
    /// Additive angular margin m2, radians (arcface, combined; adaface's and
    /// curricularface's m).
    #[arg(long, value_parser = bounds::below(0.0, std::f64::consts::PI))]
    pub m2: Option<f64>,
    /// Additive cosine margin m3 (cosface, combined).
    #[arg(long, value_parser = bounds::real(0.0, 2.0, false))]
    pub m3: Option<f64>,
    /// AdaFace's h: how far one standard deviation of the feature norm moves its margin.
    #[arg(long, default_value_t = 0.333, value_parser = bounds::real(0.0, 100.0, true))]
    pub adaface_h: f64,
    /// AdaFace's t_alpha: each batch's weight in the running mean and std of the norms.
    #[arg(long, default_value_t = 0.01, value_parser = bounds::real(0.0, 1.0, true))]
    pub adaface_alpha: f64,
    /// MagFace's feature-norm range l_a,u_a over which its margin rises.
    #[arg(long, value_parser = adaptive_margin::parse_pair, default_value = "10,110")]
    pub magface_norms: [f64; 2],
    /// MagFace's margin range l_m,u_m (radians) at l_a and u_a.
    #[arg(long, value_parser = adaptive_margin::parse_pair, default_value = "0.45,0.8")]
    pub magface_margins: [f64; 2],
    /// MagFace's λ_g: weight of its feature-norm regulariser g(a) = 1/a + a/u_a².
    #[arg(long, default_value_t = 35.0, value_parser = bounds::real(0.0, 1e4, false))]
    pub magface_lambda: f64,
    /// Hidden layer widths of the Gender head, e.g. 512 or 512,256.
    #[arg(long, value_delimiter = ',', default_values_t = [512], value_parser = bounds::count::<usize>(1 << 16))]
    pub gender_hidden: Vec<usize>,
    /// Dropout before the Gender head.
    #[arg(long, default_value_t = 0.5, value_parser = bounds::below(0.0, 1.0))]
    pub gender_dropout: f64,
    /// Gender classes.
    #[arg(long, default_value_t = trainer_data::settings::GENDER_CLASSES, value_parser = bounds::int::<usize>(2, 1 << 16))]
    pub gender_classes: usize,
    /// Hidden layer widths of the Age head.
    #[arg(long, value_delimiter = ',', default_values_t = [512, 512], value_parser = bounds::count::<usize>(1 << 16))]
    pub age_hidden: Vec<usize>,
    /// Dropout before the Age head.
    #[arg(long, default_value_t = 0.5, value_parser = bounds::below(0.0, 1.0))]
    pub age_dropout: f64,
    /// Age buckets; ages above the last are clipped to it (the seed's 7).
    #[arg(long, default_value_t = trainer_data::settings::AGE_CLASSES, value_parser = bounds::int::<usize>(2, 1 << 16))]
    pub age_classes: usize,
    /// Probability on the true class of the Gender/Age soft one-hot targets.
    #[arg(long, default_value_t = 0.9, value_parser = bounds::real(0.0, 1.0, true))]
    pub soft_target: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        trainer_data::settings::clap_defaults()
    }
}

impl HeadConfig {
    /// The margin the FR loss applies: `--margin`'s kind (ArcFace by default, whose m2 is
    /// `--arc-m` unless `--m2` is given) with the terms typed.
    pub fn margin(&self) -> anyhow::Result<FrMargin> {
        let kind = self.margin.unwrap_or(MarginKind::Arcface);
        let terms = |allowed: &[&str]| {
            let given = [("m1", self.m1), ("m2", self.m2), ("m3", self.m3)];
            match given.iter().find(|(n, v)| v.is_some() && !allowed.contains(n)) {
                Some((n, _)) => anyhow::bail!("--margin {} takes no --{n}", kind.name()),
                None => Ok(()),
            }
        };
        Ok(match kind {
            MarginKind::Adaface => {
                terms(&["m2"])?;
                FrMargin::AdaFace(AdaFace::new(self.m2.unwrap_or(0.4), self.adaface_h, self.adaface_alpha)?)
            }
            MarginKind::Magface => {
                terms(&[])?;
                FrMargin::MagFace(MagFace::new(self.magface_norms, self.magface_margins, self.magface_lambda)?)
            }
            MarginKind::Curricularface => {
                terms(&["m2"])?;
                FrMargin::Curricular(CurricularFace::new(self.m2.unwrap_or(0.5))?)
            }
            _ => {
                let m2 = self.m2.or((kind == MarginKind::Arcface).then_some(self.m));
                FrMargin::Fixed(Margin::from_flags(kind, self.m1, m2, self.m3)?)
            }
        })
    }
}

/// Dropout → `fc` (out_dim → emb_dim) → optional `bn`: the embedding, before the L2
/// normalisation that ArcFace and verification apply.
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
        e
    }
}

/// Dropout → `hidden.i.{fc,bn}` + ReLU for each hidden width → `out` (logits).
#[derive(Debug)]
pub struct ClassifierHead {
    dropout: f64,
    hidden: Vec<(nn::Linear, BatchNorm)>,
    out: nn::Linear,
    classes: usize,
}

impl ClassifierHead {
    pub fn new(p: &nn::Path, in_dim: usize, hidden: &[usize], dropout: f64, classes: usize) -> ClassifierHead {
        let mut layers = Vec::new();
        let mut width = in_dim as i64;
        for (i, &h) in hidden.iter().enumerate() {
            let hp = p / "hidden" / i.to_string();
            layers.push((
                nn::linear(&hp / "fc", width, h as i64, Default::default()),
                BatchNorm::new(&hp / "bn", h as i64),
            ));
            width = h as i64;
        }
        let out = nn::linear(p / "out", width, classes as i64, Default::default());
        ClassifierHead { dropout, hidden: layers, out, classes }
    }

    pub fn classes(&self) -> usize {
        self.classes
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

    /// Each bound is the flag's (and, through `recipe_check`, the recipe key's).
    #[test]
    fn bad_values_are_refused_at_the_flag() {
        use clap::{Args, FromArgMatches};
        let parse = |args: &[&str]| {
            let cmd = HeadConfig::augment_args(clap::Command::new("heads").no_binary_name(true));
            cmd.try_get_matches_from(args).map(|m| HeadConfig::from_arg_matches(&m).unwrap())
        };
        for bad in [&["--fr-dropout", "1"][..], &["--arc-m", "4"], &["--age-hidden", "512,0"], &["--age-classes", "1"]]
        {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad[0]), "{bad:?}: {err}");
        }
        let cos = parse(&["--margin", "cosface", "--m2", "0.5"]).unwrap();
        assert!(cos.margin().unwrap_err().to_string().contains("combined"));
    }

    #[test]
    fn margin_kinds_and_the_arc_m_alias() {
        assert_eq!(HeadConfig { m: 0.3, ..Default::default() }.margin().unwrap(), Margin::arcface(0.3).into());
        let cos = HeadConfig { margin: Some(MarginKind::Cosface), m3: Some(0.4), ..Default::default() };
        assert_eq!(cos.margin().unwrap(), Margin::cosface(0.4).into());
        let comb = HeadConfig {
            margin: Some(MarginKind::Combined),
            m1: Some(0.9),
            m2: Some(0.4),
            m3: Some(0.15),
            ..Default::default()
        };
        assert_eq!(comb.margin().unwrap(), Margin { m1: 0.9, m2: 0.4, m3: 0.15 }.into());
    }

    /// The adaptive kinds take their published defaults, --m2 where it is their m, and
    /// refuse the terms they do not have.
    #[test]
    fn adaptive_kinds_and_their_defaults() {
        let kind = |k, m2| HeadConfig { margin: Some(k), m2, ..Default::default() }.margin();
        assert_eq!(
            kind(MarginKind::Adaface, None).unwrap(),
            FrMargin::AdaFace(AdaFace { m: 0.4, h: 0.333, alpha: 0.01 })
        );
        assert_eq!(
            kind(MarginKind::Magface, None).unwrap(),
            FrMargin::MagFace(MagFace { norms: [10.0, 110.0], margins: [0.45, 0.8], lambda: 35.0 })
        );
        assert_eq!(kind(MarginKind::Curricularface, None).unwrap(), FrMargin::Curricular(CurricularFace { m: 0.5 }));
        assert_eq!(
            kind(MarginKind::Curricularface, Some(0.3)).unwrap(),
            FrMargin::Curricular(CurricularFace { m: 0.3 })
        );
        let err = kind(MarginKind::Magface, Some(0.3)).unwrap_err().to_string();
        assert!(err.contains("magface takes no --m2"), "{err}");
        let bad = HeadConfig { margin: Some(MarginKind::Magface), magface_norms: [110.0, 10.0], ..Default::default() };
        assert!(bad.margin().unwrap_err().to_string().contains("--magface-norms"));
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let cfg: HeadConfig = toml::from_str("emb_dim = 128\nage_hidden = [64]").unwrap();
        assert_eq!((cfg.emb_dim, cfg.age_hidden.clone(), cfg.s), (128, vec![64], 64.0));
    }
}
