//! Weights interchange with PyTorch: a resnet18 VarStore saved as safetensors loads into
//! `torchvision.models.resnet18` (only `fc` missing) and gives the same eval-mode features.
//! Runs `benches/check_torchvision.py` with `$TORCH_VENV/bin/python`. Without that venv or
//! torchvision the test fails (`crate::test_tools::missing`).

use super::resnet::{Arch, ResNet};
use std::path::PathBuf;
use std::process::Command;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("TORCH_VENV")?;
    let py = PathBuf::from(venv).join("bin/python");
    py.exists().then_some(py)
}

use crate::test_tools::missing;

#[test]
fn resnet18_safetensors_load_into_torchvision() {
    let Some(py) = python() else {
        missing("TORCH_VENV is not set or has no bin/python");
        return;
    };
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let net = ResNet::new(&(vs.root() / "backbone"), Arch::Resnet18);
    // Train-mode passes give the BN running statistics values worth comparing.
    for _ in 0..2 {
        let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
        let _ = tch::no_grad(|| net.forward_t(&x, true));
    }
    let input = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let output = tch::no_grad(|| net.forward_t(&input, false));
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights.safetensors");
    let io = dir.path().join("io.safetensors");
    vs.save(&weights).unwrap();
    Tensor::write_safetensors(&[("input", &input), ("output", &output)], &io).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/check_torchvision.py");
    let out = Command::new(py)
        .args([script, weights.to_str().unwrap(), "--arch", "resnet18", "--io", io.to_str().unwrap()])
        .output()
        .expect("run python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(3) {
        missing(&text);
        return;
    }
    assert!(out.status.success(), "{text}");
    assert!(text.contains("missing only fc") && text.contains("OK"), "{text}");
}
