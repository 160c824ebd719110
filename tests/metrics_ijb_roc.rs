//! The IJB ROC reading (`trainer_data::metrics::ijb::roc`) against scikit-learn's `roc_curve`
//! read as eval_ijbc.py reads it (benches/ijb_twin.py table): hand-made score lists with ties,
//! FARs hit exactly, FARs equally near two points, collinear runs that scikit-learn drops.
//! The chosen FPR and TPR must be identical, the AUC equal to rounding.

mod common;
use common::*;
use trainer_data::interop::npy::write_vector;
use trainer_data::metrics::ijb::roc::roc;

struct Case {
    name: &'static str,
    scores: Vec<f64>,
    genuine: Vec<bool>,
}

fn case(name: &'static str, genuine: &[f64], impostor: &[f64]) -> Case {
    Case {
        name,
        scores: genuine.iter().chain(impostor).copied().collect(),
        genuine: genuine.iter().map(|_| true).chain(impostor.iter().map(|_| false)).collect(),
    }
}

/// Deterministic scores on a coarse grid (many ties), `n` pairs, one in `every` genuine.
fn grid(name: &'static str, n: usize, every: usize, levels: u64, seed: u64) -> Case {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    let genuine: Vec<bool> = (0..n).map(|i| i % every == 0).collect();
    let scores = genuine
        .iter()
        .map(|&g| {
            let v = (next() % levels) as f64 / levels as f64;
            if g {
                (v + 0.3).min(1.0)
            } else {
                v - 0.2
            }
        })
        .collect();
    Case { name, scores, genuine }
}

fn cases() -> Vec<Case> {
    let ladder: Vec<f64> = (0..20).map(|k| (20 - k) as f64 / 20.0).collect();
    let thousand: Vec<f64> = (0..1000).map(|k| k as f64 / 1000.0).collect();
    let genuine_hits: Vec<f64> = (0..50).map(|k| 0.999 - k as f64 * 0.0037).collect();
    // Impostors at 0.9 and 0.8 only: FPR .05 and .15 around FAR .1, equally near.
    let mut around: Vec<f64> = vec![0.9, 0.8, 0.8];
    around.extend(std::iter::repeat_n(0.1, 17));
    vec![
        case("ties", &[0.9, 0.8, 0.8, 0.5], &[0.8, 0.7, 0.5, 0.1]),
        case("collinear", &ladder, &ladder),
        case("exact-fars", &genuine_hits, &thousand),
        case("equidistant", &[0.95, 0.85, 0.85, 0.5], &around),
        case("one-each", &[0.2], &[0.7]),
        grid("grid-ties", 220_000, 11, 200, 7),
        grid("fine-grid", 150_000, 3, 100_000, 9),
    ]
}

#[test]
fn roc_reading_matches_scikit_learn() {
    let Some(python) = ref_python("sklearn") else { return };
    let dir = tempfile::tempdir().unwrap();
    for c in cases() {
        let (scores, labels) = (dir.path().join("s.npy"), dir.path().join("l.npy"));
        write_vector(&scores, &c.scores).unwrap();
        write_vector(&labels, &c.genuine.iter().map(|&g| u8::from(g)).collect::<Vec<u8>>()).unwrap();
        let out = run_script(&python, "ijb_twin.py", &["table", "--scores", s(&scores), "--labels", s(&labels)]);
        let want: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let got = roc(&c.scores, &c.genuine).unwrap();
        for k in 0..6 {
            let (far, tar) = (want["far_tar"][k][0].as_f64().unwrap(), want["far_tar"][k][1].as_f64().unwrap());
            assert_eq!((got.far[k], got.tar[k]), (far, tar), "{}: FAR column {k}", c.name);
            assert_eq!(trainer_data::metrics::ijb::percent(got.tar[k]), want["tar_pct"][k].as_str().unwrap());
        }
        let auc = want["auc"].as_f64().unwrap();
        assert!((got.auc - auc).abs() < 1e-12, "{}: AUC {} vs {auc}", c.name, got.auc);
    }
}
