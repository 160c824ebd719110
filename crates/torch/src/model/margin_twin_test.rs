//! AdaFace, MagFace and CurricularFace against `benches/margin_twin.py`, PyTorch twins of
//! their papers' heads: on hand-made embeddings that reach every branch of the formulas
//! (norms below and above MagFace's range, a negative target cosine, one past ArcFace's
//! fallback angle, hard negatives), the same loss, the same gradients with respect to the
//! embeddings and the centres, and the same running statistics after each of three steps.

use super::adaptive_margin::{AdaFace, CurricularFace, FrMargin, MagFace};
use super::arcface::{normalize_rows, ArcFace};
use super::iresnet_twin_test::{python, read, unavailable};
use crate::dist::single::Single;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/margin_twin.py");
const STEPS: usize = 3;
const LABELS: [i64; 6] = [0, 1, 2, 3, 4, 0];

/// Five centres, two of them close (3 leans towards 0 and 1), at different lengths.
fn centres() -> Tensor {
    let w: [[f32; 4]; 5] =
        [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.6, 0.8, 0.0, 0.0], [-0.5, 0.0, 0.5, 0.7]];
    let scale = Tensor::from_slice(&[0.02f32, 0.5, 3.0, 0.01, 1.0]).view([5, 1]);
    Tensor::from_slice(w.as_flattened()).view([5, 4]) * scale
}

/// Step k's embeddings: row i leans on its centre by `lean[i]` (row 4 points away from
/// it), plus a step-dependent part, at norm `norm[i]·(1 + k/10)`.
fn embeddings(k: usize) -> Tensor {
    let lean = [0.9f32, 0.5, 0.2, 0.7, -5.0, 0.95];
    let norm = [5.0f32, 22.0, 47.0, 73.0, 130.0, 31.0];
    let w = normalize_rows(&centres());
    let rows: Vec<Tensor> = (0..6)
        .map(|i| {
            let side: Vec<f32> = (0..4).map(|j| (((i * 7 + j * 3 + k * 5) as f32) * 0.37).sin() * 0.4).collect();
            let dir = w.get(LABELS[i]) * lean[i] as f64 + Tensor::from_slice(&side);
            normalize_rows(&dir.unsqueeze(0)) * (norm[i] as f64 * (1.0 + k as f64 / 10.0))
        })
        .collect();
    Tensor::cat(&rows, 0)
}

/// The inputs reach every branch: norms past both ends of MagFace's (10, 110), a negative
/// target cosine, one below cos(π − 0.5), and a negative above cos(θ_y + 0.5).
fn assert_branches_reached(k: usize) {
    let e = embeddings(k);
    let cos = normalize_rows(&e).matmul(&normalize_rows(&centres()).tr());
    let norms = Vec::<f64>::try_from(e.norm_scalaropt_dim(2, [1i64].as_slice(), false).to_kind(Kind::Double)).unwrap();
    assert!(norms.iter().any(|&n| n < 10.0) && norms.iter().any(|&n| n > 110.0), "step {k}: norms {norms:?}");
    let (mut negative, mut fallback, mut hard) = (false, false, false);
    for (i, &y) in LABELS.iter().enumerate() {
        let row = Vec::<f64>::try_from(cos.get(i as i64).to_kind(Kind::Double)).unwrap();
        let t = row[y as usize];
        negative |= t < 0.0;
        fallback |= t < (std::f64::consts::PI - 0.5).cos();
        let shifted = (t.acos() + 0.5).cos();
        hard |= row.iter().enumerate().any(|(j, &c)| j != y as usize && c > shifted);
    }
    assert!(negative && fallback && hard, "step {k}: negative {negative}, fallback {fallback}, hard {hard}");
}

/// Runs the twin; None when its python has no PyTorch.
fn twin(py: &Path, args: &[&str]) -> Option<BTreeMap<String, Tensor>> {
    let dir = tempfile::tempdir().unwrap();
    let (io, out) = (dir.path().join("io.safetensors"), dir.path().join("out.safetensors"));
    let mut named = vec![("weight".to_string(), centres())];
    for k in 0..STEPS {
        named.push((format!("emb.{k}"), embeddings(k)));
        named.push((format!("labels.{k}"), Tensor::from_slice(&LABELS)));
    }
    Tensor::write_safetensors(&named, &io).unwrap();
    let res = Command::new(py)
        .arg(SCRIPT)
        .args(args)
        .args(["--io", io.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .expect("start python");
    let text = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    if res.status.code() == Some(3) {
        return None;
    }
    assert!(res.status.success(), "margin_twin.py {args:?} failed:\n{text}");
    eprintln!("{}", text.trim());
    Some(read(&out))
}

fn close(ours: &Tensor, theirs: &Tensor, rel: f64, what: &str) {
    assert_eq!(ours.size(), theirs.size(), "{what}");
    let err = (ours - theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]).max(1e-3);
    assert!(err <= rel * scale, "{what}: max abs difference {err:.3e} at scale {scale:.3e}");
}

fn check(rule: FrMargin, args: &[&str]) {
    let py = python();
    if !py.exists() {
        return unavailable(&format!("no python at {}", py.display()));
    }
    (0..STEPS).for_each(assert_branches_reached);
    let Some(want) = twin(&py, args) else { return unavailable(&format!("{} has no PyTorch", py.display())) };
    let vs = VarStore::new(Device::Cpu);
    let arc = ArcFace::new(&(vs.root() / "arcface"), 5, 4, 64.0, rule).with_state(&(vs.root() / "margin"));
    let weight = vs.variables()["arcface.weight"].shallow_clone();
    tch::no_grad(|| weight.shallow_clone().copy_(&centres()));
    for k in 0..STEPS {
        let emb = embeddings(k).set_requires_grad(true);
        let loss = arc.loss(&emb, &Tensor::from_slice(&LABELS), &Single).unwrap();
        loss.backward();
        let what = |x: &str| format!("{args:?}, step {k}: {x}");
        close(&loss.view([1]), &want[&format!("loss.{k}")], 1e-5, &what("loss"));
        close(&emb.grad(), &want[&format!("grad_emb.{k}")], 1e-4, &what("gradient w.r.t. the embeddings"));
        close(&weight.grad(), &want[&format!("grad_weight.{k}")], 1e-4, &what("gradient w.r.t. the centres"));
        let state = Tensor::from_slice(&arc.margin_state()).to_kind(Kind::Float);
        match want.get(&format!("state.{k}")) {
            Some(s) => close(&state, s, 1e-6, &what("running statistics")),
            None => assert_eq!(state.numel(), 0, "{}", what("MagFace keeps no statistics")),
        }
        let _ = weight.grad().zero_();
    }
}

#[test]
fn adaface_matches_its_pytorch_twin() {
    let rule = FrMargin::AdaFace(AdaFace::new(0.4, 0.5, 0.3).unwrap());
    check(rule, &["--kind", "adaface", "--m", "0.4", "--h", "0.5", "--alpha", "0.3"]);
}

#[test]
fn magface_matches_its_pytorch_twin() {
    check(FrMargin::MagFace(MagFace::new([10.0, 110.0], [0.45, 0.8], 35.0).unwrap()), &["--kind", "magface"]);
}

#[test]
fn curricularface_matches_its_pytorch_twin() {
    check(FrMargin::Curricular(CurricularFace::new(0.5).unwrap()), &["--kind", "curricularface"]);
}
