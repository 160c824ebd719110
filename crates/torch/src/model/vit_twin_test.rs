//! Weights interchange with arcface_torch's ViT through its PyTorch twin `benches/vit_twin.py`,
//! as `mbf_twin_test.rs` does for MobileFaceNet: the twin's state dict has exactly our names,
//! shapes and dtypes (vit_t, vit_s, vit_b), loads into our VarStore and gives the same
//! eval-mode embeddings; ours, after train-mode passes (stochastic depth and token masking on)
//! and a perturbation, loads strictly into the twin and gives the same embeddings there.

use super::iresnet_twin_test::{assert_close, images, layout, python, read, unavailable};
use super::vit::{VisionTransformer, VitShape, VitTraining, VIT_B, VIT_S, VIT_T};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/vit_twin.py");

/// Runs the twin; `None` when its python has no PyTorch (exit status 3).
fn twin(py: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(py).arg(SCRIPT).args(args).output().expect("start python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(out.status.success(), "vit_twin.py {args:?} failed:\n{text}");
    Some(text)
}

fn vit(vs: &VarStore, shape: VitShape) -> VisionTransformer {
    VisionTransformer::new(&vs.root(), shape, 512, VitTraining::default()).unwrap()
}

#[test]
fn vit_t_matches_the_pytorch_twin() {
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
    let made = twin(&py, &["make", "--arch", "vit_t", "--seed", "5", "--batch", "2", "--weights", &w1, "--io", &io1]);
    let Some(made) = made else { return unavailable(&format!("{} has no PyTorch", py.display())) };
    eprintln!("{}", made.trim());

    tch::manual_seed(11);
    let mut vs = VarStore::new(Device::Cpu);
    let net = vit(&vs, VIT_T);
    assert_eq!(layout(Tensor::read_safetensors(&w1).unwrap()), layout(vs.variables()), "vit_t: layout");
    vs.load(&w1).unwrap();
    let io = read(Path::new(&io1));
    let ours = tch::no_grad(|| net.forward_t(&io["input"], false));
    assert_close(&ours, &io["embedding"], "vit_t, twin's weights in Rust");

    tch::no_grad(|| {
        for _ in 0..2 {
            let _ = net.forward_t(&images(2), true);
        }
        for mut t in vs.trainable_variables() {
            let _ = t.g_mul_(&(Tensor::randn_like(&t) * 0.05 + 1.0));
        }
    });
    let input = images(2);
    let ours = tch::no_grad(|| net.forward_t(&input, false));
    vs.save(&w2).unwrap();
    Tensor::write_safetensors(&[("input", &input)], &io2).unwrap();
    twin(&py, &["embed", "--arch", "vit_t", "--weights", &w2, "--io", &io2, "--out", &out2]).expect("PyTorch vanished");
    assert_close(&ours, &read(Path::new(&out2))["embedding"], "vit_t, Rust's weights in the twin");
}

/// vit_s and vit_b by layout alone (their forward pass is vit_t's at other sizes): names,
/// shapes, dtypes and the trainable parameter count equal the twin's.
#[test]
fn vit_s_and_vit_b_have_the_twins_layout() {
    let py = python();
    if !py.exists() {
        return unavailable(&format!("no python at {}", py.display()));
    }
    for (arch, shape) in [("vit_t", VIT_T), ("vit_s", VIT_S), ("vit_b", VIT_B)] {
        let Some(json) = twin(&py, &["layout", "--arch", arch]) else {
            return unavailable(&format!("{} has no PyTorch", py.display()));
        };
        let theirs: serde_json::Value = serde_json::from_str(json.trim()).expect("layout JSON");
        let theirs: BTreeMap<String, (Vec<i64>, String)> = serde_json::from_value(theirs["tensors"].clone()).unwrap();
        let vs = VarStore::new(Device::Cpu);
        let _net = vit(&vs, shape);
        let dtype = |k: Kind| if k == Kind::Int64 { "I64" } else { "F32" }.to_string();
        let ours: BTreeMap<String, (Vec<i64>, String)> =
            vs.variables().into_iter().map(|(n, t)| (n, (t.size(), dtype(t.kind())))).collect();
        assert_eq!(ours, theirs, "{arch}'s state dict layout differs from the twin's");
        let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(Some(trainable), json_count(&json), "{arch}: trainable parameters");
        eprintln!("{arch}: {} tensors, {trainable} trainable parameters", ours.len());
    }
}

fn json_count(json: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(json.trim()).ok()?["trainable"].as_i64()
}
