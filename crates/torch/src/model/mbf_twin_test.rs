//! Weights interchange with arcface_torch's MobileFaceNet through its PyTorch twin
//! `benches/mbf_twin.py`, as `iresnet_twin_test.rs` does for the IResNets: the twin's state
//! dict has exactly our names, shapes and dtypes, loads into our VarStore and gives the same
//! eval-mode embeddings; ours, after train-mode passes and a perturbation, loads strictly
//! into the twin and gives the same embeddings there.

use super::iresnet_twin_test::{assert_close, images, layout, python, read, unavailable};
use super::mbf::{MbfShape, MobileFaceNet, MBF, MBF_LARGE};
use std::path::Path;
use std::process::Command;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Tensor};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/mbf_twin.py");

/// Runs the twin; `None` when its python has no PyTorch (exit status 3).
fn twin(py: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(py).arg(SCRIPT).args(args).output().expect("start python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(out.status.success(), "mbf_twin.py {args:?} failed:\n{text}");
    Some(text)
}

fn check_against_twin(arch: &str, shape: MbfShape) {
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
    let made = twin(&py, &["make", "--arch", arch, "--seed", "5", "--batch", "2", "--weights", &w1, "--io", &io1]);
    let Some(made) = made else { return unavailable(&format!("{} has no PyTorch", py.display())) };
    eprintln!("{}", made.trim());

    tch::manual_seed(11);
    let mut vs = VarStore::new(Device::Cpu);
    let net = MobileFaceNet::new(&vs.root(), shape, 512).unwrap();
    assert_eq!(layout(Tensor::read_safetensors(&w1).unwrap()), layout(vs.variables()), "{arch}: layout");
    vs.load(&w1).unwrap();
    let io = read(Path::new(&io1));
    let ours = tch::no_grad(|| net.forward_t(&io["input"], false));
    assert_close(&ours, &io["embedding"], &format!("{arch}, twin's weights in Rust"));

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
    twin(&py, &["embed", "--arch", arch, "--weights", &w2, "--io", &io2, "--out", &out2]).expect("PyTorch vanished");
    assert_close(&ours, &read(Path::new(&out2))["embedding"], &format!("{arch}, Rust's weights in the twin"));
}

#[test]
fn mbf_matches_the_pytorch_twin() {
    check_against_twin("mbf", MBF);
}

#[test]
fn mbf_large_matches_the_pytorch_twin() {
    check_against_twin("mbf_large", MBF_LARGE);
}
