//! The Rust protocol against the NumPy twin (benches/insightface_verification.py) on the
//! same embeddings: distances, folds, per-fold accuracies and thresholds, mean and std,
//! and TAR at FAR = 1e-3, equal to 1e-9.

mod common;

use serde_json::Value;
use std::path::Path;
use trainer_data::interop::npy::{write_matrix, write_vector};
use trainer_data::metrics::verification::{evaluate, kfold, pair_distances, Verification};

/// A deterministic stream of uniform numbers in [0, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Pairs of noisy copies of a random identity vector (same) or of two (different).
fn random_set(pairs: usize, dim: usize, noise: f64, seed: u64) -> (Vec<f64>, Vec<bool>) {
    let mut rng = Rng(seed);
    let mut emb = Vec::new();
    let mut issame = Vec::new();
    for _ in 0..pairs {
        let same = rng.next() < 0.5;
        let a: Vec<f64> = (0..dim).map(|_| rng.next() - 0.5).collect();
        let b: Vec<f64> = if same { a.clone() } else { (0..dim).map(|_| rng.next() - 0.5).collect() };
        for base in [&a, &b] {
            emb.extend(base.iter().map(|v| v + noise * (rng.next() - 0.5)));
        }
        issame.push(same);
    }
    (emb, issame)
}

/// Rows drawn from a few exact vectors (axes, their negatives, a zero row), so distances
/// fall exactly on thresholds (0, 1, 2, 4) and many thresholds tie in accuracy.
fn tie_set(pairs: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
    let choices: [[f64; 4]; 6] = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 2.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.5],
        [-3.0, 0.0, 0.0, 0.0],
        [0.0; 4],
        [0.0, 0.0, 1.0, 0.0],
    ];
    let mut rng = Rng(seed);
    let mut emb = Vec::new();
    let mut issame = Vec::new();
    for _ in 0..pairs {
        let pick = |rng: &mut Rng| choices[(rng.next() * 6.0) as usize];
        let (a, b) = (pick(&mut rng), pick(&mut rng));
        emb.extend(a);
        emb.extend(b);
        issame.push(a == b || rng.next() < 0.3);
    }
    (emb, issame)
}

fn twin(python: &Path, dir: &Path, emb: &[f64], dim: usize, issame: &[bool]) -> Value {
    let (e, s) = (dir.join("emb.npy"), dir.join("issame.npy"));
    write_matrix(&e, dim, emb).unwrap();
    write_vector(&s, &issame.iter().map(|&b| b as u8).collect::<Vec<_>>()).unwrap();
    serde_json::from_str(&common::run_script(
        python,
        "insightface_verification.py",
        &[e.to_str().unwrap(), s.to_str().unwrap()],
    ))
    .unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(name: &str, got: &[f64], want: &[f64], exact: &mut usize) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-9, "{name}[{i}]: rust {g:?} numpy {w:?}");
        *exact += usize::from(g.to_bits() != w.to_bits());
    }
}

/// Asserts every number agrees to 1e-9 and returns how many were not bit-identical.
fn compare(case: &str, ours: &Verification, dist: &[f64], numpy: &Value) -> usize {
    let mut inexact = 0;
    close(&format!("{case} dist"), dist, &floats(&numpy["dist"]), &mut inexact);
    let folds: Vec<Vec<usize>> = kfold(dist.len(), 10).into_iter().map(|r| vec![r.start, r.end]).collect();
    assert_eq!(serde_json::to_value(&folds).unwrap(), numpy["folds"], "{case} folds");
    close(&format!("{case} fold_accuracy"), &ours.fold_accuracy, &floats(&numpy["fold_accuracy"]), &mut inexact);
    assert_eq!(ours.fold_threshold, floats(&numpy["fold_threshold"]), "{case}: the chosen thresholds");
    let summary = [ours.accuracy_mean, ours.accuracy_std];
    close(
        &format!("{case} mean/std"),
        &summary,
        &[numpy["accuracy_mean"].as_f64().unwrap(), numpy["accuracy_std"].as_f64().unwrap()],
        &mut inexact,
    );
    match (&ours.tar_at_far, &numpy["tar"]) {
        (None, Value::Null) => {}
        (Some(t), n) if !n.is_null() => {
            close(&format!("{case} fold_tar"), &t.fold_tar, &floats(&n["fold_tar"]), &mut inexact);
            close(&format!("{case} fold_far"), &t.fold_far, &floats(&n["fold_far"]), &mut inexact);
            close(&format!("{case} tar thresholds"), &t.fold_threshold, &floats(&n["fold_threshold"]), &mut inexact);
            let want =
                [n["tar_mean"].as_f64().unwrap(), n["tar_std"].as_f64().unwrap(), n["far_mean"].as_f64().unwrap()];
            close(&format!("{case} tar summary"), &[t.tar_mean, t.tar_std, t.far_mean], &want, &mut inexact);
        }
        (ours, theirs) => panic!("{case}: TAR rust {ours:?} numpy {theirs}"),
    }
    inexact
}

#[test]
fn rust_equals_the_numpy_twin() {
    let Some(python) = common::ref_python("numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Vec<f64>, usize, Vec<bool>)> = Vec::new();
    let (e, s) = random_set(600, 128, 1.6, 1);
    cases.push(("600 pairs, dim 128", e, 128, s));
    let (e, s) = random_set(37, 5, 1.0, 2);
    cases.push(("37 pairs, dim 5", e, 5, s));
    let (e, s) = tie_set(203, 3);
    cases.push(("203 pairs of exact vectors (ties)", e, 4, s));
    let (e, s) = random_set(6000, 16, 1.2, 4);
    cases.push(("6000 pairs, dim 16", e, 16, s));
    let (mut e, s) = random_set(40, 8, 0.3, 5);
    for (pair, &same) in s.iter().enumerate() {
        if !same {
            let a: Vec<f64> = e[2 * pair * 8..(2 * pair + 1) * 8].to_vec();
            e[(2 * pair + 1) * 8..(2 * pair + 2) * 8].iter_mut().zip(&a).for_each(|(b, a)| *b = -a);
        }
    }
    cases.push(("40 pairs, different ones antipodal (FAR never reaches 1e-3)", e, 8, s));
    let (e, mut s) = random_set(30, 8, 0.5, 6);
    s.iter_mut().enumerate().for_each(|(i, v)| *v = i >= 3);
    cases.push(("30 pairs, different ones only in fold 0 (no TAR)", e, 8, s));

    for (case, emb, dim, issame) in &cases {
        let ours = evaluate(emb, *dim, issame).unwrap();
        let dist = pair_distances(emb, *dim, issame.len()).unwrap();
        let numpy = twin(&python, dir.path(), emb, *dim, issame);
        let inexact = compare(case, &ours, &dist, &numpy);
        if inexact > 0 {
            common::notice(&format!("{case}: {inexact} values agree to 1e-9 but not to the bit"));
        }
        eprintln!(
            "{case}: accuracy {:.6} ± {:.6}, TAR {:?}",
            ours.accuracy_mean,
            ours.accuracy_std,
            ours.tar_at_far.as_ref().map(|t| (t.tar_mean, t.reliable))
        );
    }
    let antipodal = evaluate(&cases[4].1, 8, &cases[4].3).unwrap().tar_at_far.unwrap();
    assert!(antipodal.fold_threshold.iter().all(|&t| t == 0.0) && !antipodal.reliable);
    assert!(evaluate(&cases[5].1, 8, &cases[5].3).unwrap().tar_at_far.is_none());
    assert!(evaluate(&cases[3].1, 16, &cases[3].3).unwrap().tar_at_far.unwrap().reliable);
}
