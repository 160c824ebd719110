//! `--arch vit_t` trains through the real binary at 112 px (its only size): a few AdamW steps
//! on synthetic faces with finite losses, and the learned mask token moved only by masked
//! tokens (`--mask-ratio`), so the masking is on in training exactly when asked. Its layout
//! and forward pass are checked against PyTorch in `crates/torch/src/model/vit_twin_test.rs`.

mod common;
use common::*;
use std::path::Path;

fn tensor(ckpt: &Path, name: &str) -> Vec<u8> {
    let all = safetensors(&ckpt.join("model.safetensors"));
    all.into_iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("{name} not in {}", ckpt.display())).2
}

/// Two runs of two steps (batch 2) without weight decay on the backbone: with `--mask-ratio 0`
/// the mask token never gets a gradient and stays as it was after step 1; with 0.25 it moves
/// in step 2, as the other weights do in both.
#[test]
fn vit_t_trains_and_masks_tokens_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 4, 4, 1, 1);
    let out = dir.path().join("Model");
    let run = |name: &'static str, mask: &'static str| {
        let flags = tiny_train("FR", &out, name)
            .set("--train-sets", s(&train))
            .set("--arch", "vit_t")
            .set("--size", "112")
            .set("--batch-size", "2")
            .set("--threads", "2")
            .set("--log-every", "1")
            .set("--mask-ratio", mask)
            .set("--drop-path", "0.05");
        let mut args = flags.args();
        args.extend(["--optimizer", "adamw", "--lr", "1e-3", "--wd-backbone", "0", "--max-steps", "2"]);
        args.extend(["--save-every", "1", "--seed", "3"]);
        run_ok(&args);
        let losses = losses(&out.join(name), "FR");
        assert!(losses.len() == 2 && losses.iter().all(|l| l.is_finite()), "{name}: losses {losses:?}");
        let ckpt = |step: &str| out.join(name).join("checkpoints").join(format!("step-00000000{step}"));
        let moved = |t: &str| tensor(&ckpt("1"), t) != tensor(&ckpt("2"), t);
        (moved("backbone.mask_token"), moved("backbone.pos_embed"))
    };
    assert_eq!(run("unmasked", "0"), (false, true), "mask ratio 0: only the other weights move");
    assert_eq!(run("masked", "0.25"), (true, true), "mask ratio 0.25: the mask token learns");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("masked/config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["model"]["drop_path"].as_f64(), config["model"]["mask_ratio"].as_f64()),
        (Some(0.05), Some(0.25))
    );
}

/// Another input size, or the ViT's flags on another backbone, are refused before any work.
#[test]
fn vit_refuses_other_sizes_and_its_flags_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("Model");
    let refused = |arch: &'static str, size: &'static str, expect: &str| {
        let flags = tiny_train("FR", &out, "r").set("--train-sets", "/nonexistent/ids").set("--arch", arch);
        let args = flags.set("--size", size).set("--drop-path", "0.1").args();
        let got = output(&args);
        assert!(!got.status.success() && text(&got).contains(expect), "{arch} at {size}: {}", text(&got));
        assert!(!out.join("r").exists());
    };
    refused("vit_t", "108", "--size 112");
    refused("iresnet18", "112", "--drop-path and --mask-ratio are the ViT's");
}
