//! arcface_torch's backbone files through the real binary: PyTorch's `torch.save` of an
//! insightface-layout IResNet state dict (benches/arcface_torch_twin.py) is imported without
//! Python, gives PyTorch's eval-mode embeddings (through `trainer export`'s TorchScript),
//! starts a training run (`train --init`), and comes back out of `trainer export --format
//! arcface-torch` as a file `torch.load` + a strict `load_state_dict` take, bit for bit.
//! Broken files fail naming the tensor, and leave no run directory.

mod common;

use common::{run_ok, run_script, s, text, torch_python, trainer};
use std::path::Path;

const TWIN: &str = "arcface_torch_twin.py";
const ARCH: [&str; 6] = ["--arch", "iresnet18", "--emb-dim", "64", "--seed", "5"];

fn import(file: &Path, out: &Path) -> std::process::Output {
    let args = ["import", "arcface-torch", s(file), "--arch", "iresnet18", "--out", s(out)];
    trainer().args(args).output().expect("spawn trainer")
}

fn check(py: &Path, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let reference = dir.join("backbone.pth");
    let mut args = vec!["check", "--arch", "iresnet18", "--emb-dim", "64", "--reference", s(&reference)];
    args.extend_from_slice(extra);
    serde_json::from_str(run_script(py, TWIN, &args).trim()).expect("the twin prints JSON")
}

#[test]
fn arcface_torch_backbone_round_trips_with_pytorch() {
    let Some(py) = torch_python("torch") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_script(&py, TWIN, &[&["save", "--dir", s(d)][..], &ARCH[..]].concat());

    let run = d.join("Model/r18");
    run_ok(&["import", "arcface-torch", s(&d.join("backbone.pth")), "--arch", "iresnet18", "--out", s(&run)]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).expect("config.json");
    assert_eq!((config["model"]["arch"].as_str(), config["heads"]["emb_dim"].as_u64()), (Some("iresnet18"), Some(64)));

    let (traced, exported) = (d.join("model.pt"), d.join("exported.pth"));
    run_ok(&["export", s(&run), "--out", s(&traced)]);
    run_ok(&["export", s(&run), "--format", "arcface-torch", "--out", s(&exported)]);
    let got = check(&py, d, &["--torchscript", s(&traced), "--pth", s(&exported)]);
    let scale = got["max_abs_embedding"].as_f64().unwrap().max(1.0);
    let ts = got["torchscript_diff"].as_f64().unwrap();
    assert!(ts <= 1e-4 * scale, "imported weights embed differently from PyTorch: {got}");
    assert_eq!(got["pth_diff"].as_f64(), Some(0.0), "{got}");
    assert_eq!(got["pth_identical"].as_bool(), Some(true), "{got}");

    // arcface_torch's training checkpoint: its backbone is taken.
    let from_ckpt = d.join("Model/ckpt");
    run_ok(&["import", "arcface-torch", s(&d.join("checkpoint.pth")), "--arch", "iresnet18", "--out", s(&from_ckpt)]);
    let ckpt_model = from_ckpt.join("checkpoints/step-000000000/model.safetensors");
    assert_eq!(
        common::safetensors(&ckpt_model),
        common::safetensors(&run.join("checkpoints/step-000000000/model.safetensors"))
    );

    // A training run starts from it: the backbone loads, the empty class centres do not.
    let faces = common::packed_synth(d, "faces", 4, 2, 1, 1);
    let out = d.join("Model");
    let train = [
        "train",
        "FR",
        "--arch",
        "iresnet18",
        "--emb-dim",
        "64",
        "--size",
        "112",
        "--batch-size",
        "2",
        "--threads",
        "2",
        "--workers",
        "1",
        "--max-steps",
        "1",
        "--train-sets",
        s(&faces),
        "--init",
        s(&run),
        "--out",
        s(&out),
        "--run-id",
        "tuned",
    ];
    let msg = text(&run_ok(&train));
    assert!(msg.contains("arcface.weight (shape [0, 64], this model [4, 64])"), "{msg}");
}

#[test]
fn broken_arcface_torch_files_name_the_tensor_and_write_nothing() {
    let Some(py) = torch_python("torch") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_script(&py, TWIN, &[&["save", "--dir", s(d)][..], &ARCH[..]].concat());
    let good = std::fs::read(d.join("backbone.pth")).unwrap();
    std::fs::write(d.join("truncated.pth"), &good[..good.len() / 2]).unwrap();
    std::fs::write(d.join("tail_cut.pth"), &good[..good.len() - 10]).unwrap();
    let cases = [
        ("not_a_state_dict.pth", "tensor \"epoch\": is a int 3, not a tensor"),
        ("extra.pth", "tensor \"head.weight\" is not in this backbone"),
        ("shape.pth", "tensor \"fc.weight\" has shape [64, 25087], this backbone's is [64, 25088]"),
        ("double.pth", "tensor \"bn1.weight\" is F64, this backbone's is Float"),
        ("truncated.pth", "not a zip archive"),
        ("tail_cut.pth", "not a zip archive"),
    ];
    for (file, want) in cases {
        let out = d.join("Model").join(file);
        let res = import(&d.join(file), &out);
        let msg = text(&res);
        assert!(!res.status.success() && msg.contains(want), "{file}: expected {want:?} in:\n{msg}");
        assert!(
            !out.exists() && !d.join("Model").join(format!("{file}.partial")).exists(),
            "{file}: a run was written"
        );
    }
    let pth = d.join("backbone.pth");
    let args = ["import", "arcface-torch", s(&pth), "--arch", "resnet50", "--out", "unused"];
    let torchvision = trainer().args(args).output().unwrap();
    assert!(text(&torchvision).contains("--arch resnet50 has torchvision's layout"), "{}", text(&torchvision));
    let first = import(&d.join("backbone.pth"), &d.join("Model/r18"));
    assert!(first.status.success(), "{}", text(&first));
    let again = import(&d.join("backbone.pth"), &d.join("Model/r18"));
    assert!(!again.status.success() && text(&again).contains("already exists"), "{}", text(&again));
}

/// `train --init backbone.pth` names the format it got and the way in (import, then
/// `--init` the imported run), not a safetensors parse error.
#[test]
fn init_from_a_pytorch_file_says_how_to_import_it() {
    let Some(py) = torch_python("torch") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_script(&py, TWIN, &[&["save", "--dir", s(d)][..], &ARCH[..]].concat());
    let faces = common::packed_synth(d, "faces", 4, 2, 1, 1);
    let (out, pth) = (d.join("Model"), d.join("backbone.pth"));
    let tiny = common::tiny_train("FR", &out, "tuned").set("--train-sets", s(&faces)).set("--init", s(&pth));
    let res = trainer().args(tiny.args()).output().unwrap();
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    for want in ["is a PyTorch torch.save file", "trainer import arcface-torch", "docs/model-zoo.md#importing"] {
        assert!(msg.contains(want), "expected {want:?} in:\n{msg}");
    }
    assert!(!msg.contains("HeaderTooLarge"), "{msg}");
}

/// arcface_torch's MobileFaceNet (`--arch mbf`, twin `benches/mbf_twin.py`): imported from
/// `torch.save`, it embeds as PyTorch does (through the TorchScript export), and `export
/// --format arcface-torch` loads strictly back into the twin, bit for bit.
#[test]
fn mbf_backbone_round_trips_with_pytorch() {
    round_trip("mbf");
}

/// The same for arcface_torch's ViT-T (`--arch vit_t`, twin `benches/vit_twin.py`).
#[test]
fn vit_t_backbone_round_trips_with_pytorch() {
    round_trip("vit_t");
}

fn round_trip(name: &str) {
    let Some(py) = torch_python("torch") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = ["--arch", name, "--emb-dim", "64"];
    run_script(&py, TWIN, &[&["save", "--dir", s(d), "--seed", "5"][..], &arch[..]].concat());
    let run = d.join("Model").join(name);
    run_ok(&["import", "arcface-torch", s(&d.join("backbone.pth")), "--arch", name, "--out", s(&run)]);
    let (traced, exported) = (d.join("model.pt"), d.join("exported.pth"));
    run_ok(&["export", s(&run), "--out", s(&traced)]);
    run_ok(&["export", s(&run), "--format", "arcface-torch", "--out", s(&exported)]);
    let reference = d.join("backbone.pth");
    let mut args = vec!["check", "--reference", s(&reference), "--torchscript", s(&traced), "--pth", s(&exported)];
    args.extend(arch);
    let got: serde_json::Value = serde_json::from_str(run_script(&py, TWIN, &args).trim()).expect("JSON");
    let scale = got["max_abs_embedding"].as_f64().unwrap().max(1.0);
    assert!(got["torchscript_diff"].as_f64().unwrap() <= 1e-4 * scale, "{got}");
    assert_eq!((got["pth_diff"].as_f64(), got["pth_identical"].as_bool()), (Some(0.0), Some(true)), "{got}");
    eprintln!("{name} through import and export: {got}");
}
