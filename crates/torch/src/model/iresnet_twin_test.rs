//! Weights interchange with insightface's IResNet, through its PyTorch twin
//! `benches/iresnet_twin.py`: the twin's state dict has exactly our names, shapes and dtypes,
//! loads into our VarStore and gives the same eval-mode embeddings; ours, after train-mode
//! passes and a perturbation, loads strictly into the twin and gives the same embeddings there.
//!
//! The python is `$TRAINER_TORCH_PYTHON`, else `$TORCH_VENV/bin/python` (the set-up's venv).
//! Without it, or without PyTorch in it, the test fails (`crate::test_tools::missing`).

use super::iresnet::IResNet;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/iresnet_twin.py");
/// The twin's exit status when its python has no PyTorch.
const NO_TORCH: i32 = 3;

pub(super) use crate::test_tools::{missing as unavailable, torch_python as python};

/// Runs the twin; `None` when its python has no PyTorch, a panic with its output on failure.
fn twin(py: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(py).arg(SCRIPT).args(args).output().expect("start python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(NO_TORCH) {
        return None;
    }
    assert!(out.status.success(), "iresnet_twin.py {args:?} failed:\n{text}");
    Some(text)
}

pub(super) type Layout = BTreeMap<String, (Vec<i64>, Kind)>;

pub(super) fn layout<I: IntoIterator<Item = (String, Tensor)>>(named: I) -> Layout {
    named.into_iter().map(|(k, t)| (k, (t.size(), t.kind()))).collect()
}

pub(super) fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

/// Max |a − b| and max |b|; fails above 1e-4 of the embedding scale (at least 1).
pub(super) fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) -> (f64, f64) {
    assert_eq!(ours.size(), theirs.size(), "{what}");
    let err = (ours - theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]);
    assert!(err <= 1e-4 * scale.max(1.0), "{what}: max abs difference {err:.3e} at scale {scale:.3e}");
    eprintln!("{what}: max abs difference {err:.3e}, max |embedding| {scale:.3e}");
    (err, scale)
}

pub(super) fn images(n: i64) -> Tensor {
    Tensor::rand([n, 3, 112, 112], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

/// Train-mode passes move BN statistics and counters, then every trainable tensor is
/// scaled by 1 ± ~5 %, so the weights we hand back are our own.
fn make_ours(net: &IResNet, vs: &VarStore) {
    tch::no_grad(|| {
        for _ in 0..2 {
            let _ = net.forward_t(&images(2), true);
        }
        for mut t in vs.trainable_variables() {
            let noise = Tensor::randn_like(&t) * 0.05 + 1.0;
            let _ = t.g_mul_(&noise);
        }
    });
}

fn check_against_twin(depth: usize) {
    let py = python();
    if !py.exists() {
        return unavailable(&format!("no python at {}", py.display()));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (w1, io1, w2, io2, out2) = (
        file("twin.safetensors"),
        file("io1.safetensors"),
        file("ours.safetensors"),
        file("io2.safetensors"),
        file("out2.safetensors"),
    );
    let d = depth.to_string();
    let made = twin(&py, &["make", "--depth", &d, "--seed", "5", "--batch", "2", "--weights", &w1, "--io", &io1]);
    let Some(made) = made else { return unavailable(&format!("{} has no PyTorch", py.display())) };
    eprintln!("{}", made.trim());

    tch::manual_seed(11);
    let mut vs = VarStore::new(Device::Cpu);
    let net = IResNet::new(&vs.root(), depth, 512, 0.0).unwrap();
    let theirs = Tensor::read_safetensors(&w1).unwrap();
    assert_eq!(layout(theirs), layout(vs.variables()), "state dict layout differs from the twin's");
    vs.load(&w1).unwrap();
    let io = read(Path::new(&io1));
    let ours = tch::no_grad(|| net.try_forward_t(&io["input"], false)).unwrap();
    assert_close(&ours, &io["embedding"], &format!("iresnet{depth}, twin's weights in Rust"));

    make_ours(&net, &vs);
    let input = images(2);
    let ours = tch::no_grad(|| net.try_forward_t(&input, false)).unwrap();
    vs.save(&w2).unwrap();
    Tensor::write_safetensors(&[("input", &input)], &io2).unwrap();
    twin(&py, &["embed", "--depth", &d, "--weights", &w2, "--io", &io2, "--out", &out2]).expect("PyTorch vanished");
    assert_close(&ours, &read(Path::new(&out2))["embedding"], &format!("iresnet{depth}, Rust's weights in the twin"));
}

#[test]
fn iresnet18_matches_the_pytorch_twin() {
    check_against_twin(18);
}

/// IResNet-200 (`--arch iresnet200`, arcface_torch's `r200`): our VarStore has exactly the
/// twin's state dict names, shapes and dtypes. Its blocks are those iresnet18's test runs
/// through the twin; the whole forward pass is `iresnet200_matches_the_pytorch_twin`.
#[test]
fn iresnet200_has_the_twins_layout() {
    let py = python();
    if !py.exists() {
        return unavailable(&format!("no python at {}", py.display()));
    }
    let Some(json) = twin(&py, &["layout", "--depth", "200"]) else {
        return unavailable(&format!("{} has no PyTorch", py.display()));
    };
    let theirs: BTreeMap<String, (Vec<i64>, String)> = serde_json::from_str(json.trim()).expect("layout JSON");
    let vs = VarStore::new(Device::Cpu);
    let _net = IResNet::new(&vs.root(), 200, 512, 0.0).unwrap();
    let dtype = |k: Kind| if k == Kind::Int64 { "I64" } else { "F32" }.to_string();
    let ours: BTreeMap<String, (Vec<i64>, String)> =
        vs.variables().into_iter().map(|(n, t)| (n, (t.size(), dtype(t.kind())))).collect();
    assert_eq!(ours.len(), 1807, "arcface_torch's r200 state dict has 1807 tensors");
    assert_eq!(ours, theirs, "iresnet200's state dict layout differs from the twin's");
}

/// Minutes of CPU (iresnet200: more): run by hand with
/// `cargo test --release iresnet200 -- --ignored --nocapture`.
#[test]
#[ignore]
fn iresnet200_matches_the_pytorch_twin() {
    check_against_twin(200);
}

/// Minutes of CPU: run by hand with `cargo test --release iresnet50 -- --ignored --nocapture`.
#[test]
#[ignore]
fn iresnet50_matches_the_pytorch_twin() {
    check_against_twin(50);
}
